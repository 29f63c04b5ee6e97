#!/usr/bin/env python3
"""The sequence layers (embed, position_embedding, causal_self_attention, a
dense layer over a sequence's positions, the loss over every position)
against JAX, Flax and optax.

1. Op by op: small models, each run for one training step (forward in
   training mode, loss, backward) by traind through layer_ref_tool from
   random parameters written with h5py under traind's names, and as the
   same model in flax.linen (nn.Embed, a learned (T, F) table added,
   nn.LayerNorm, GPT-2's attention written out: a fused query, key and
   value projection, heads of F / H columns, scores scaled by 1/sqrt(D),
   the causal mask, softmax, the output projection; nn.Dense over the last
   axis, nn.gelu), differentiated with jax.vjp. The cases: an embedding
   and a dense head (T of 6 and of 1); embedding, position embedding,
   layer norm, attention with 2 and 4 heads, with and without biases, and
   a residual add, then a dense head; a whole GPT block (layer norm,
   attention, add, layer norm, dense 4F, gelu, dense F, add, final layer
   norm, dense over the vocabulary). The loss is softmax cross-entropy
   averaged over every position of every example (labels (B, T)). The
   model's output, the loss and every parameter's gradient agree with a
   relative error (norm-wise, ||traind - jax|| / ||jax||) below 1e-5.

2. A small GPT (2 blocks, 2 heads, 32 features, block 16, a character
   vocabulary of 65 from a text file written here, batch 4) trained by
   `traind run` on a text dataset (random windows, the first 40 of the
   training part, so 10 steps an epoch) for 2 epochs = 20 steps with
   clip_by_global_norm(1.0) and AdamW (learning rate 1e-3, b2 0.99, weight
   decay 0.1), and by the same model in Flax with
   optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(...)) from the
   same initial parameters: traind's own initialization, exported by a run
   of the same job for one step at learning rate 0. The Flax side draws the
   same windows in the same order: the epoch's order is
   jax.random.permutation(fold_in(split(PRNGKey(seed), 3)[1], epoch - 1),
   windows), as traind draws it (threefry in its partitionable mode). The
   20 step losses and gradient norms, every parameter after the last step
   (traind's final checkpoint) and the test loss of the evaluations after
   each epoch (the validation part's tiles) agree within 1e-4, and the
   checkpoint's /vocab is the file's sorted set of characters. One part of
   the parameters is held to a bound instead: the keys' third of each
   attention's qkv/b, whose gradient is zero in exact arithmetic (softmax
   ignores a shift common to a row's scores), so that Adam's normalized
   steps follow rounding (see run_gpt).

The reference runs in float64 from the same float32 values traind gets (as
in layers_jax.py and resnet_jax.py).

Usage: seq_jax.py LAYER_REF_TOOL TRAIND
Exit 77 (skip) when JAX, flax, optax or h5py is missing, unless CI=true (then 1).
"""
import json
import os
import subprocess
import sys
import tempfile

# Each model is compiled once and run on tiny inputs: XLA's compile, not the
# run, is the time, and without its backend optimizations it takes half.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_backend_optimization_level=0").strip()

try:
    import h5py
    import jax
    import jax.numpy as jnp
    import numpy as np
    import flax.linen as nn
    from flax import traverse_util
    import optax
except ImportError as e:  # pragma: no cover
    print(f"SKIP: {e}")
    sys.exit(1 if os.environ.get("CI") == "true" else 77)

jax.config.update("jax_enable_x64", True)
# traind's PRNG is jax.random in its partitionable threefry mode (the
# default from JAX 0.5.0 on; earlier versions need it set).
jax.config.update("jax_threefry_partitionable", True)

OP_TOL = 1e-5
TRAIN_TOL = 1e-4
failures = 0


def check(cond, what):
    global failures
    if not cond:
        failures += 1
        print("FAIL " + what)


def relerr(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-12))


# ---- the reference: a job's layers as a flax.linen module -----------------

PARAM_KINDS = ("dense", "layer_norm", "embed", "position_embedding", "causal_self_attention")


def kind_of(layer):
    (kind,) = [k for k in layer if k not in ("name", "inputs")]
    return kind


def layer_names(layers):
    """traind's name of each layer: its own, or layerK for the K-th layer
    with parameters (from 1) when it has none."""
    names, k = [], 0
    for i, l in enumerate(layers):
        kind = kind_of(l)
        if kind in PARAM_KINDS:
            k += 1
        names.append(l.get("name") or ("layer%d" % k if kind in PARAM_KINDS else "_%d" % i))
    return names


class PositionEmbedding(nn.Module):
    """x + a learned (T, F) table, "embedding"."""
    @nn.compact
    def __call__(self, x):
        table = self.param("embedding", nn.initializers.normal(1.0), x.shape[1:])
        return x + table


class CausalSelfAttention(nn.Module):
    """GPT-2's attention: qkv (F, 3F) with columns [q | k | v], head k at
    columns k D of each; softmax(q k^T / sqrt(D)) over positions <= t; the
    heads' mixes side by side, then proj (F, F)."""
    num_heads: int
    use_bias: bool = True

    @nn.compact
    def __call__(self, x):
        b, t, f = x.shape
        h = self.num_heads
        d = f // h
        qkv = nn.Dense(3 * f, use_bias=self.use_bias, name="qkv")(x)
        q, k, v = (a.reshape(b, t, h, d) for a in jnp.split(qkv, 3, axis=-1))
        s = jnp.einsum("bihd,bjhd->bhij", q, k) / np.sqrt(d)
        s = jnp.where(jnp.tril(jnp.ones((t, t), bool)), s, -jnp.inf)
        o = jnp.einsum("bhij,bjhd->bihd", jax.nn.softmax(s, axis=-1), v).reshape(b, t, f)
        return nn.Dense(f, use_bias=self.use_bias, name="proj")(o)


class Ref(nn.Module):
    """The model in Flax: the job's layers as a graph (`inputs` by name,
    else the layer before), modules named as traind names the layers. The
    input is (B, T) token ids held as floats."""
    layers: tuple

    @nn.compact
    def __call__(self, x):
        outs, h = {}, x
        for l, name in zip(self.layers, layer_names(self.layers)):
            kind = kind_of(l)
            a = l[kind]
            ins = [outs[n] for n in l.get("inputs", [])] or [h]
            if kind == "embed":
                h = nn.Embed(a["num_embeddings"], a["features"], name=name)(
                    ins[0].astype(jnp.int32))
            elif kind == "position_embedding":
                h = PositionEmbedding(name=name)(ins[0])
            elif kind == "causal_self_attention":
                h = CausalSelfAttention(a["num_heads"], a.get("use_bias", True), name=name)(ins[0])
            elif kind == "layer_norm":
                h = nn.LayerNorm(epsilon=a.get("epsilon", 1e-6), use_scale=a.get("use_scale", True),
                                 use_bias=a.get("use_bias", True), name=name)(ins[0])
            elif kind == "dense":
                h = nn.Dense(a["features"], use_bias=a.get("use_bias", True), name=name)(ins[0])
            elif kind == "gelu":
                h = nn.gelu(ins[0], approximate=a.get("approximate", True))
            elif kind == "relu":
                h = jax.nn.relu(ins[0])
            elif kind == "add":
                h = sum(ins[1:], ins[0])
            else:
                raise ValueError("no reference for layer kind " + kind)
            outs[name] = h
        return h


def traind_names(tree, layers):
    """Flax's parameter paths -> traind's names: a dense layer's (and the
    attention's projections') kernel and bias are w and b; embeddings and
    norms keep their leaves' names. {traind name: flax path}."""
    kinds = dict(zip(layer_names(layers), (kind_of(l) for l in layers)))
    out = {}
    for path in traverse_util.flatten_dict(tree):
        leaf = path[-1]
        if kinds[path[0]] in ("dense", "causal_self_attention"):
            leaf = {"kernel": "w", "bias": "b"}[leaf]
        out["/".join(path[:-1] + (leaf,))] = path
    return out


def xent(logits, y):
    """Softmax cross-entropy averaged over every position of every example:
    logits (B, T, C), labels (B, T)."""
    logp = jax.nn.log_softmax(logits)
    return -jnp.mean(jnp.take_along_axis(logp, y[..., None], axis=-1))


# (numpy, not jnp: each jnp conversion outside a jitted function is a
# compilation of its own)
def f64(t):
    return jax.tree_util.tree_map(lambda v: np.asarray(v, np.float64), t)


# ---- 1. op by op, through layer_ref_tool ------------------------------------

def attn_case(label, T, B, V, F, H, use_bias, classes=10):
    attn = {"num_heads": H}
    if not use_bias:
        attn["use_bias"] = False
    return (label, T, B, V,
            [{"name": "tok", "embed": {"num_embeddings": V, "features": F}},
             {"name": "pos", "position_embedding": {}},
             {"name": "ln", "layer_norm": {}},
             {"name": "attn", "causal_self_attention": attn},
             {"name": "res", "add": {}, "inputs": ["attn", "pos"]},
             {"name": "head", "dense": {"features": classes}}])


def gpt_block(F, H, prefix="h0", resid="pos"):
    p = prefix + "_"
    return [{"name": p + "ln1", "layer_norm": {}},
            {"name": p + "attn", "causal_self_attention": {"num_heads": H}},
            {"name": p + "add1", "add": {}, "inputs": [p + "attn", resid]},
            {"name": p + "ln2", "layer_norm": {}},
            {"name": p + "fc", "dense": {"features": 4 * F}},
            {"name": p + "gelu", "gelu": {}},
            {"name": p + "proj", "dense": {"features": F}},
            {"name": p + "add2", "add": {}, "inputs": [p + "proj", p + "add1"]}]


def gpt(T, V, F, H, blocks):
    layers = [{"name": "tok", "embed": {"num_embeddings": V, "features": F}},
              {"name": "pos", "position_embedding": {}}]
    resid = "pos"
    for b in range(blocks):
        layers += gpt_block(F, H, "h%d" % b, resid)
        resid = "h%d_add2" % b
    return layers + [{"name": "ln_f", "layer_norm": {}},
                     {"name": "head", "dense": {"features": V}}]


# (label, T, batch, vocabulary, layers); the ids are drawn from the
# vocabulary, so that most batches repeat some (their embedding gradients
# are sums).
CASES = [
    ("embed_dense", 6, 3, 11,
     [{"name": "tok", "embed": {"num_embeddings": 11, "features": 8}},
      {"name": "head", "dense": {"features": 10}}]),
    ("embed_dense_t1", 1, 5, 7,
     [{"name": "tok", "embed": {"num_embeddings": 7, "features": 6}},
      {"name": "head", "dense": {"features": 7}}]),
    attn_case("attn_h2", 5, 3, 13, 8, 2, True),
    attn_case("attn_h4", 7, 2, 13, 16, 4, True),
    attn_case("attn_h2_nobias", 6, 3, 9, 12, 2, False),
    attn_case("attn_h4_nobias", 8, 2, 17, 16, 4, False),
    ("gpt_block", 8, 3, 17, gpt(8, 17, 16, 2, 1)),
]


def random_params(rng, shapes):
    """Random values for every parameter (flax's tree): kernels of variance
    1/fan_in (twice that for the attention's qkv, so that the weights are
    far from uniform), embeddings of about unit size, nonzero biases and scales away from
    1, so that every term of the gradients matters."""
    out = {}
    for path, s in traverse_util.flatten_dict(shapes).items():
        leaf = path[-1]
        if leaf == "kernel":
            v = rng.normal(size=s.shape) / np.sqrt(s.shape[0])
            if path[-2] == "qkv":
                v *= np.sqrt(2.0)
        elif leaf == "embedding":
            v = 0.7 * rng.normal(size=s.shape)
        elif leaf == "scale":
            v = 1.0 + 0.3 * rng.normal(size=s.shape)
        else:
            v = 0.1 * rng.normal(size=s.shape)
        out[path] = v.astype(np.float32)
    return traverse_util.unflatten_dict(out)


def run_case(tool, tmp, label, T, batch, vocab, layers, seed):
    root = os.path.join(tmp, label)
    os.makedirs(root)
    model = Ref(layers=tuple(layers))
    classes = layers[-1]["dense"]["features"]
    rng = np.random.default_rng(seed)
    x = rng.integers(0, vocab, size=(batch, T)).astype(np.float32)
    y = rng.integers(0, classes, size=(batch, T)).astype(np.int32)
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((batch, T)))["params"]
    params = random_params(rng, shapes)
    names = traind_names(params, layers)

    def loss_fn(p):
        logits = model.apply({"params": p}, f64(x))
        return xent(logits, y), logits

    # The step's values and the pullback of the loss alone.
    def step(p):
        out, pull = jax.vjp(loss_fn, p)
        return out, pull((jnp.ones_like(out[0]), jnp.zeros_like(out[1])))[0]

    (want_loss, want_out), want_grads = jax.jit(step)(f64(params))
    flat_grads = traverse_util.flatten_dict(want_grads)

    spec = {
        "name": "seq-" + label,
        "model": {"input_shape": [T], "layers": layers, "loss": "SOFTMAX_CROSS_ENTROPY"},
        "optimizer": {"chain": [{"sgd": {"learning_rate": {"constant": 0.1}}}]},
        "dataset": {"hdf5": {"train_file": "unused.h5"}},
        "training": {"epochs": 1, "batch_size": batch},
    }
    job, inp, out = (os.path.join(root, n) for n in ("job.json", "in.h5", "out.h5"))
    with open(job, "w") as f:
        json.dump(spec, f)
    flat = traverse_util.flatten_dict(params)
    with h5py.File(inp, "w") as f:
        f["x"] = x
        f["labels"] = y
        for name, path in names.items():
            f["params/" + name] = flat[path]
    p = subprocess.run([tool, job, inp, out], capture_output=True, text=True, timeout=120)
    check(p.returncode == 0, "%s: layer_ref_tool exited %d: %s"
          % (label, p.returncode, p.stderr[-2000:]))
    if p.returncode:
        return None

    errs = {}
    with h5py.File(out, "r") as f:
        got = f["output"][()]
        check(got.size == want_out.size, "%s: traind's output has shape %s, flax's %s"
              % (label, got.shape, want_out.shape))
        errs["output"] = relerr(got.reshape(want_out.shape), want_out) \
            if got.size == want_out.size else np.inf
        errs["loss"] = relerr(f["loss_sum"][()] / (batch * T), want_loss)
        for name, path in names.items():
            check(name in f["grads"], "%s: no gradient %s from traind" % (label, name))
            errs["grad " + name] = relerr(f["grads"][name][()], flat_grads[path]) \
                if name in f["grads"] else np.inf
        got_names = set()
        f["grads"].visititems(lambda n, o: got_names.add(n)
                              if isinstance(o, h5py.Dataset) else None)
        check(got_names == set(names), "%s: traind has parameters %s, flax %s"
              % (label, sorted(got_names), sorted(names)))
    for what, e in errs.items():
        check(e < OP_TOL, "%s: %s differs from JAX's by %.3g" % (label, what, e))
    worst = max(errs, key=errs.get)
    print("%-16s T %d, B %d: loss %.4f, %d comparisons, worst %s %.2e"
          % (label, T, batch, float(want_loss), len(errs), worst, errs[worst]))
    return errs[worst]


# ---- 2. a small GPT trained 20 steps by traind and by Flax + optax --------

BLOCK, FEATURES, HEADS, BLOCKS, BATCH = 16, 32, 2, 2, 4
TRAIN_WINDOWS, TEST_WINDOWS, EPOCHS, SEED = 40, 8, 2, 7
LR, B2, WEIGHT_DECAY, MAX_NORM = 1e-3, 0.99, 0.1, 1.0
# 65 characters: the newline, the space, 11 marks and digits, both cases.
CHARSET = "\n !$&',-.3:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
LINES = [
    "The river ran high that spring, and the mill by the ford was quiet.",
    "Nobody crossed after dark; the planks were loose, the rope was old.",
    "She counted the sacks twice: thirty-three, and one more torn open.",
    "What would the baker say? He wanted flour by Monday, not excuses!",
    "Bring the lantern, Tom, and mind the step - it's wet again.",
    "A dog barked across the water; another answered, far off.",
    "They spent $3 on nails & rope, and it was still not enough.",
    "Quiet now. Listen: the wheel is turning, slowly, by itself.",
    "Jack found the key under a flat grey stone near the gate.",
    "Vines grew over the wall; the yard smelled of rain and hay.",
    "Zeal is no substitute for sense, the old miller would say.",
    "Keep the fire low; we have wood for six days, maybe seven.",
]


def write_corpus(path, rng):
    """About 2,400 characters of lines in a random order, ending with every
    character of CHARSET (so that the vocabulary is the whole set)."""
    text = ""
    while len(text) < 2400:
        text += LINES[rng.integers(len(LINES))] + "\n"
    text += "".join(sorted(set(CHARSET) - {"\n"})) + "\n"
    assert set(text) == set(CHARSET)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return text


def traind_run(traind, root, spec, tag, ckdir):
    job, metrics = os.path.join(root, tag + ".json"), os.path.join(root, tag + ".jsonl")
    with open(job, "w") as f:
        json.dump(spec, f)
    p = subprocess.run([traind, "run", job, "--data-dir", root, "--metrics", metrics,
                        "--checkpoint-dir", ckdir, "--threads", "1"],
                       capture_output=True, text=True, timeout=240)
    check(p.returncode == 0, "traind run (%s) exited %d: %s"
          % (tag, p.returncode, p.stderr[-2000:]))
    if p.returncode:
        return None
    return [json.loads(l) for l in open(metrics)]


def read_params(path):
    with h5py.File(path, "r") as f:
        out = {}
        f["params"].visititems(lambda n, o: out.__setitem__(n, o[()])
                               if isinstance(o, h5py.Dataset) else None)
        vocab = f["vocab"][()] if "vocab" in f else None
    return out, vocab


def run_gpt(traind, tmp):
    root = os.path.join(tmp, "gpt")
    os.makedirs(root)
    rng = np.random.default_rng(29)
    text = write_corpus(os.path.join(root, "corpus.txt"), rng)
    chars = sorted(set(text))
    V = len(chars)
    ids = np.array([chars.index(c) for c in text], np.int64)
    ntr = int(np.floor(0.9 * len(ids)))
    train_ids, val_ids = ids[:ntr], ids[ntr:]
    layers = gpt(BLOCK, V, FEATURES, HEADS, BLOCKS)
    steps_per_epoch = TRAIN_WINDOWS // BATCH
    steps = EPOCHS * steps_per_epoch

    spec = {
        "name": "seq-gpt",
        "model": {"input_shape": [BLOCK], "layers": layers, "loss": "SOFTMAX_CROSS_ENTROPY"},
        "optimizer": {"chain": [
            {"clip_by_global_norm": {"max_norm": MAX_NORM}},
            {"adamw": {"learning_rate": {"constant": LR}, "b2": B2,
                       "weight_decay": WEIGHT_DECAY}}]},
        "dataset": {"text": {"file": "corpus.txt", "sampling": "random"},
                    "train_limit": TRAIN_WINDOWS, "test_limit": TEST_WINDOWS},
        "training": {"epochs": EPOCHS, "batch_size": BATCH, "seed": SEED},
    }
    # traind's initial parameters: the same job (same seed, so the same
    # initialization) for one step at learning rate 0.
    init_spec = json.loads(json.dumps(spec))
    init_spec["optimizer"] = {"chain": [{"sgd": {"learning_rate": {"constant": 0.0}}}]}
    init_spec["training"]["max_steps"] = 1
    if traind_run(traind, root, init_spec, "init", os.path.join(root, "ck0")) is None:
        return None
    init, _ = read_params(os.path.join(root, "ck0", "ckpt-%012d.h5" % 1))
    points = traind_run(traind, root, spec, "train", os.path.join(root, "ck"))
    if points is None:
        return None
    final, vocab = read_params(os.path.join(root, "ck", "ckpt-%012d.h5" % steps))
    step_points = [pt for pt in points if "loss" in pt]
    losses = [pt["loss"] for pt in step_points]
    norms = [pt["grad_norm"] for pt in step_points]
    evals = [pt for pt in points if "test_loss" in pt]

    check(vocab is not None and [chr(c) for c in vocab] == chars,
          "the checkpoint's /vocab is %s, not the file's sorted characters"
          % (None if vocab is None else "".join(chr(c) for c in vocab)[:80]))

    model = Ref(layers=tuple(layers))
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0),
                            jnp.zeros((BATCH, BLOCK)))["params"]
    names = traind_names(shapes, layers)
    check(set(init) == set(names), "traind's parameters %s, flax's %s"
          % (sorted(init), sorted(names)))
    if set(init) != set(names):
        return None
    params = traverse_util.unflatten_dict({path: init[n] for n, path in names.items()})

    def loss_fn(p, x, y):
        return xent(model.apply({"params": p}, x), y)

    tx = optax.chain(optax.clip_by_global_norm(MAX_NORM),
                     optax.adamw(LR, b2=B2, weight_decay=WEIGHT_DECAY))

    @jax.jit
    def step(p, o, x, y):
        loss, g = jax.value_and_grad(loss_fn)(p, x, y)
        u, o = tx.update(g, o, p)
        return optax.apply_updates(p, u), o, loss, optax.global_norm(g)

    def windows(tokens, starts):
        x = np.stack([tokens[s:s + BLOCK] for s in starts]).astype(np.float64)
        y = np.stack([tokens[s + 1:s + BLOCK + 1] for s in starts]).astype(np.int32)
        return x, y

    # The validation part's tiles, the first TEST_WINDOWS.
    n_val = min((len(val_ids) - 1) // BLOCK, TEST_WINDOWS)
    xv, yv = windows(val_ids, [k * BLOCK for k in range(n_val)])
    evaluate = jax.jit(lambda p: loss_fn(p, xv, yv))

    shuffle_key = jax.random.split(jax.random.PRNGKey(SEED), 3)[1]
    p_j = f64(params)
    o_j = tx.init(p_j)
    want_losses, want_norms, want_evals = [], [], []
    for epoch in range(1, EPOCHS + 1):
        order = np.asarray(jax.random.permutation(jax.random.fold_in(shuffle_key, epoch - 1),
                                                  TRAIN_WINDOWS))
        for s in range(steps_per_epoch):
            x, y = windows(train_ids, order[s * BATCH:(s + 1) * BATCH])
            p_j, o_j, loss, norm = step(p_j, o_j, x, y)
            want_losses.append(float(loss))
            want_norms.append(float(norm))
        want_evals.append(float(evaluate(p_j)))

    check(len(losses) == steps, "%d step losses, want %d" % (len(losses), steps))
    if len(losses) != steps:
        return None
    errs = {"losses": relerr(losses, want_losses), "grad norms": relerr(norms, want_norms)}
    step_worst = max(abs(a - b) / abs(b) for a, b in zip(losses, want_losses))
    check(want_losses[-1] < want_losses[0] - 0.1, "the loss did not fall (%s)" % want_losses)
    flat_final = traverse_util.flatten_dict(p_j)
    key_bias = 0.0
    for n, path in names.items():
        if not n.endswith("attn/qkv/b"):
            errs[n] = relerr(final[n], flat_final[path])
            continue
        # The keys' bias adds the same amount to every score of a query's
        # row, which softmax ignores: its gradient is zero but for rounding
        # (about 1e-17 in float64, 1e-9 in float32), which Adam divides by
        # its own root mean square and so turns into steps of up to about
        # the learning rate in any direction. Its queries' and values'
        # parts are compared; the keys' must stay far below what a real
        # gradient moves a bias in 20 steps (the others move about
        # 0.8 * LR * steps).
        q_v = np.r_[0:FEATURES, 2 * FEATURES:3 * FEATURES]
        errs[n + " (queries, values)"] = relerr(final[n][q_v], flat_final[path][q_v])
        key_bias = max(key_bias, float(np.max(np.abs(final[n][FEATURES:2 * FEATURES]))))
    check(key_bias < 0.25 * LR * steps, "gpt: an attention's key bias moved to %.3g, more than "
          "rounding can move it" % key_bias)
    check(len(evals) == EPOCHS, "%d evaluations, want one after each of %d epochs"
          % (len(evals), EPOCHS))
    for k, (ev, want) in enumerate(zip(evals, want_evals)):
        errs["test loss after epoch %d" % (k + 1)] = relerr(ev["test_loss"], want)
    for what, e in errs.items():
        check(e < TRAIN_TOL, "gpt: %s differ%s from Flax's by %.3g"
              % (what, "" if what in ("losses", "grad norms") else "s", e))
    worst = max(errs, key=errs.get)
    print("gpt: vocab %d, %d steps, loss %.4f -> %.4f (traind %.4f -> %.4f), test loss %.4f; "
          "losses %.2e (worst step %.2e), grad norms %.2e, worst of %d comparisons %s %.2e"
          % (V, steps, want_losses[0], want_losses[-1], losses[0], losses[-1], want_evals[-1],
             errs["losses"], step_worst, errs["grad norms"], len(errs), worst, errs[worst]))
    print("gpt: gradient norm above %g (clipped) at %d of %d steps; the attentions' key biases "
          "(zero gradient but for rounding) at most %.2e"
          % (MAX_NORM, sum(n > MAX_NORM for n in want_norms), steps, key_bias))
    return errs[worst]


def main():
    tool, traind = sys.argv[1], sys.argv[2]
    worst = []
    with tempfile.TemporaryDirectory(prefix="td-seq-") as tmp:
        for i, (label, T, batch, vocab, layers) in enumerate(CASES):
            worst.append(run_case(tool, tmp, label, T, batch, vocab, layers, 300 + i))
        worst.append(run_gpt(traind, tmp))
    ok = [w for w in worst[:-1] if w is not None]
    print("%d op cases (worst %.2e), gpt %s: %s"
          % (len(CASES), max(ok, default=np.nan),
             "%.2e" % worst[-1] if worst[-1] is not None else "not compared",
             "ok" if not failures else "%d failed" % failures))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
