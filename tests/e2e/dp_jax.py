#!/usr/bin/env python3
"""DP-SGD's per-example gradient norms and clipped gradient against JAX.

For small models of every layer kind with per-example support (dense, over
flat examples and over a sequence's positions; conv with SAME and VALID
padding and a stride of 2; layer_norm; embed and position_embedding; the
layers without parameters between them: activations, pooling, flatten, a
residual add), traind runs one DP-SGD backward pass through layer_ref_tool
from random parameters and a random batch, and JAX computes each example's
gradient with jax.vmap(jax.grad(loss of one example)) in float64 from the
same float32 values:

- each example's gradient norm over all parameters together (traind:
  without forming per-example gradients: Goodfellow's product of norms for
  flat dense layers, the ghost norm or the formed gradient for dense layers
  over sequences and for convolutions, per-id sums for embeddings) agrees
  within a relative error of 1e-5;
- the clipped gradient, (1/B) sum_i min(1, C / (||g_i|| + 1e-6)) g_i (the
  JAX DP-SGD example's and Opacus's formula, no noise), agrees per
  parameter within 1e-5 norm-wise; C is the batch's median norm, so that
  about half the examples are clipped.

Both forms run, for a sequence's dense layer and for a convolution: cases
with many positions and few features (the gradient formed) and with few
positions and many features (the ghost norm). Then a DP job with batch_norm, and one with
causal_self_attention, are refused with messages that say why.

Usage: dp_jax.py LAYER_REF_TOOL
Exit 77 (skip) when JAX or h5py is missing, unless CI=true (then 1).
"""
import json
import os
import subprocess
import sys
import tempfile

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_backend_optimization_level=0").strip()

try:
    import h5py
    import jax
    import jax.numpy as jnp
    import numpy as np
except ImportError as e:
    print("missing a reference library (%s); scripts/setup installs them" % e)
    sys.exit(1 if os.environ.get("CI") == "true" else 77)

jax.config.update("jax_enable_x64", True)

TOL = 1e-5
failures = 0


def check(cond, what):
    global failures
    if not cond:
        failures += 1
        print("FAIL " + what)


def relerr(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300))


def kind_of(layer):
    (kind,) = [k for k in layer if k not in ("name", "inputs")]
    return kind


def pair(v, default):
    if not v:
        return (default, default)
    return (v[0], v[0]) if len(v) == 1 else (v[0], v[1])


# ---- the model in JAX, layer by layer (each layer named in the job) -------

def param_shapes(layers, input_shape):
    """traind's parameters of each layer, by name and leaf, with shapes."""
    shapes, shape = {}, tuple(input_shape)
    out = {}
    for l in layers:
        kind, a, name = kind_of(l), l[kind_of(l)], l.get("name")
        src = out[l["inputs"][0]] if "inputs" in l else shape
        if kind == "dense":
            shapes[name] = {"w": (src[-1], a["features"])}
            if a.get("use_bias", True):
                shapes[name]["b"] = (a["features"],)
            shape = src[:-1] + (a["features"],)
        elif kind == "conv":
            kh, kw = pair(a["kernel_size"], 1)
            shapes[name] = {"w": (kh, kw, src[-1], a["features"])}
            if a.get("use_bias", True):
                shapes[name]["b"] = (a["features"],)
            sh, sw = pair(a.get("strides"), 1)
            if a.get("padding", "SAME") == "SAME":
                shape = (-(-src[0] // sh), -(-src[1] // sw), a["features"])
            else:
                shape = ((src[0] - kh) // sh + 1, (src[1] - kw) // sw + 1, a["features"])
        elif kind == "layer_norm":
            shapes[name] = {"scale": (src[-1],), "bias": (src[-1],)}
            shape = src
        elif kind == "embed":
            shapes[name] = {"embedding": (a["num_embeddings"], a["features"])}
            shape = src + (a["features"],)
        elif kind == "position_embedding":
            shapes[name] = {"embedding": src}
            shape = src
        elif kind in ("avg_pool", "max_pool"):
            wh, ww = pair(a["window_shape"], 1)
            sh, sw = pair(a.get("strides"), 1)
            shape = ((src[0] - wh) // sh + 1, (src[1] - ww) // sw + 1, src[2])
        elif kind == "flatten":
            shape = (int(np.prod(src)),)
        elif kind == "add":
            shape = out[l["inputs"][0]]
        else:
            shape = src
        if name:
            out[name] = shape
    return shapes


def forward(layers, input_shape, params, x):
    """One example's logits: x of input_shape (token ids as floats)."""
    h, out = x.reshape(tuple(input_shape)), {}
    for l in layers:
        kind, a, name = kind_of(l), l[kind_of(l)], l.get("name")
        if "inputs" in l and kind != "add":
            h = out[l["inputs"][0]]
        p = params.get(name, {})
        if kind == "dense":
            h = h @ p["w"] + (p["b"] if "b" in p else 0.0)
        elif kind == "conv":
            sh, sw = pair(a.get("strides"), 1)
            h = jax.lax.conv_general_dilated(h[None], p["w"], (sh, sw), a.get("padding", "SAME"),
                                             dimension_numbers=("NHWC", "HWIO", "NHWC"))[0]
            h = h + (p["b"] if "b" in p else 0.0)
        elif kind in ("avg_pool", "max_pool"):
            wh, ww = pair(a["window_shape"], 1)
            sh, sw = pair(a.get("strides"), 1)
            init, op = (0.0, jax.lax.add) if kind == "avg_pool" else (-jnp.inf, jax.lax.max)
            h = jax.lax.reduce_window(h, init, op, (wh, ww, 1), (sh, sw, 1), "VALID")
            if kind == "avg_pool":
                h = h / (wh * ww)
        elif kind == "layer_norm":
            mu = h.mean(-1, keepdims=True)
            var = ((h - mu) ** 2).mean(-1, keepdims=True)
            h = (h - mu) / jnp.sqrt(var + a.get("epsilon", 1e-6)) * p["scale"] + p["bias"]
        elif kind == "embed":
            h = p["embedding"][h.astype(jnp.int32)]
        elif kind == "position_embedding":
            h = h + p["embedding"]
        elif kind == "flatten":
            h = h.reshape(-1)
        elif kind == "relu":
            h = jax.nn.relu(h)
        elif kind == "tanh":
            h = jnp.tanh(h)
        elif kind == "gelu":
            h = jax.nn.gelu(h, approximate=True)
        elif kind == "add":
            h = sum(out[i] for i in l["inputs"])
        else:
            raise ValueError("no reference for " + kind)
        if name:
            out[name] = h
    return h


def example_loss(layers, input_shape, params, x, y):
    """Softmax cross-entropy of one example: the mean over its positions."""
    logits = forward(layers, input_shape, params, x)
    logits = logits.reshape(-1, logits.shape[-1])
    lp = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.mean(jnp.take_along_axis(lp, y.reshape(-1, 1), axis=-1))


def run_case(tool, root, label, input_shape, layers, batch, rng, tokens=0, classes=4, reps=0):
    shapes = param_shapes(layers, input_shape)
    params = {n: {k: (rng.normal(size=s) * (0.5 if k != "w" else 1.0 / np.sqrt(np.prod(s[:-1]))))
                  .astype(np.float32) for k, s in leaves.items()} for n, leaves in shapes.items()}
    for n, leaves in params.items():
        if "scale" in leaves:
            leaves["scale"] = (1.0 + 0.2 * rng.normal(size=leaves["scale"].shape)).astype(np.float32)
    if tokens:
        x = rng.integers(0, tokens, size=(batch,) + tuple(input_shape))
        for i in range(batch):  # some ids repeat in every example
            x[i, :reps] = x[i, -1]
        x = x.astype(np.float32)
        y = rng.integers(0, classes, size=(batch,) + tuple(input_shape)).astype(np.int32)
    else:
        x = rng.normal(size=(batch,) + tuple(input_shape)).astype(np.float32)
        y = rng.integers(0, classes, size=batch).astype(np.int32)

    f64 = jax.tree_util.tree_map(lambda v: jnp.asarray(v, jnp.float64), params)
    per_grad = jax.jit(jax.vmap(jax.grad(lambda p, xi, yi: example_loss(layers, input_shape, p, xi, yi)),
                                in_axes=(None, 0, 0)))
    g = per_grad(f64, jnp.asarray(x, jnp.float64), jnp.asarray(y))
    leaves = jax.tree_util.tree_leaves(g)
    norms = np.sqrt(sum(np.sum(np.asarray(v).reshape(batch, -1) ** 2, axis=1) for v in leaves))
    clip = float(np.median(norms))
    factor = np.minimum(1.0, clip / (norms + 1e-6))
    want = jax.tree_util.tree_map(
        lambda v: np.tensordot(factor, np.asarray(v), axes=(0, 0)) / batch, g)

    spec = {
        "name": "dp-" + label,
        "model": {"input_shape": list(input_shape), "layers": layers,
                  "loss": "SOFTMAX_CROSS_ENTROPY"},
        "optimizer": {"chain": [{"sgd": {"learning_rate": {"constant": 0.1}}}]},
        "dataset": {"hdf5": {"train_file": "unused.h5"}},
        "training": {"epochs": 1, "batch_size": batch,
                     "dp_sgd": {"l2_norm_clip": clip, "noise_multiplier": 0.0,
                                "target_delta": 1e-5}},
    }
    job, inp, out = (os.path.join(root, n) for n in ("job.json", "in.h5", "out.h5"))
    with open(job, "w") as f:
        json.dump(spec, f)
    with h5py.File(inp, "w") as f:
        f["x"] = x
        f["labels"] = y
        for name, lv in params.items():
            for leaf, v in lv.items():
                f["params/%s/%s" % (name, leaf)] = v
    p = subprocess.run([tool, job, inp, out], capture_output=True, text=True, timeout=120)
    check(p.returncode == 0, "%s: layer_ref_tool exited %d: %s" % (label, p.returncode, p.stderr[-2000:]))
    if p.returncode:
        return
    with h5py.File(out, "r") as f:
        got_norms = f["pe_norms"][()]
        norm_err = float(np.max(np.abs(got_norms - norms) / norms))
        errs = {"norms": norm_err}
        for name, lv in want.items():
            for leaf, v in lv.items():
                key = "%s/%s" % (name, leaf)
                check(key in f["grads"], "%s: no gradient %s from traind" % (label, key))
                errs["clipped " + key] = relerr(f["grads"][key][()], v) if key in f["grads"] else np.inf
    for what, e in errs.items():
        check(e < TOL, "%s: %s differs from JAX's by %.3g" % (label, what, e))
    clipped = int(np.sum(factor < 1.0))
    worst = max(errs, key=errs.get)
    print("%-28s B=%2d, %2d clipped, norms err %.2e, worst %s %.2e"
          % (label, batch, clipped, norm_err, worst, errs[worst]))


def refused(tool, root, label, layers, input_shape, want):
    spec = {"model": {"input_shape": input_shape, "layers": layers, "loss": "SOFTMAX_CROSS_ENTROPY"},
            "optimizer": {"chain": [{"sgd": {"learning_rate": {"constant": 0.1}}}]},
            "dataset": {"hdf5": {"train_file": "unused.h5"}},
            "training": {"epochs": 1, "batch_size": 4,
                         "dp_sgd": {"l2_norm_clip": 1.0, "noise_multiplier": 1.0,
                                    "target_delta": 1e-5}}}
    job, inp = os.path.join(root, "bad.json"), os.path.join(root, "bad.h5")
    with open(job, "w") as f:
        json.dump(spec, f)
    with h5py.File(inp, "w") as f:
        f["x"] = np.zeros((4,) + tuple(input_shape), np.float32)
        f["labels"] = np.zeros((4,) + (tuple(input_shape) if len(input_shape) == 1 and
                                       kind_of(layers[0]) == "embed" else ()), np.int32)
    p = subprocess.run([tool, job, inp, os.path.join(root, "bad_out.h5")], capture_output=True,
                       text=True, timeout=60)
    check(p.returncode == 1 and want in p.stderr,
          "%s: exit %d, stderr %r; want exit 1 and %r" % (label, p.returncode, p.stderr, want))
    print("%-28s refused: %s" % (label, p.stderr.strip()[:110]))


def main():
    tool = sys.argv[1]
    rng = np.random.default_rng(7)
    D = lambda n, f, **kw: {"name": n, "dense": dict(features=f, **kw)}
    cases = [
        ("mlp", (20,), [D("l1", 16), {"relu": {}}, D("l2", 8), {"tanh": {}}, D("l3", 4)], 9, {}),
        ("dense_no_bias", (12,), [D("l1", 10, use_bias=False), {"relu": {}}, D("l2", 4)], 7, {}),
        ("conv_same_pool", (8, 8, 1),
         [{"name": "c1", "conv": {"features": 4, "kernel_size": [3, 3]}}, {"relu": {}},
          {"avg_pool": {"window_shape": [2, 2], "strides": [2, 2]}},
          {"name": "c2", "conv": {"features": 3, "kernel_size": [3, 3], "padding": "VALID",
                                  "use_bias": False}}, {"relu": {}},
          {"flatten": {}}, D("head", 4)], 6, {}),
        ("conv_stride2_maxpool", (7, 7, 2),
         [{"name": "c1", "conv": {"features": 5, "kernel_size": [3, 3], "strides": [2, 2]}},
          {"tanh": {}}, {"max_pool": {"window_shape": [2, 2], "strides": [1, 1]}},
          {"flatten": {}}, D("head", 4)], 8, {}),
        ("conv_ghost", (4, 4, 6),
         [{"name": "c1", "conv": {"features": 12, "kernel_size": [3, 3], "padding": "VALID"}},
          {"relu": {}}, {"flatten": {}}, D("head", 4)], 7, {}),
        ("layer_norm", (10,), [D("l1", 12), {"name": "ln", "layer_norm": {}}, {"relu": {}},
                               D("l2", 4)], 10, {}),
        ("residual", (10,), [D("a", 10), {"name": "r", "relu": {}}, D("b", 10),
                             {"name": "s", "add": {}, "inputs": ["b", "r"]}, {"relu": {}},
                             D("head", 4)], 8, {}),
        ("seq_direct", (12,), [{"name": "emb", "embed": {"num_embeddings": 11, "features": 4}},
                               {"name": "pos", "position_embedding": {}},
                               {"name": "ln", "layer_norm": {}}, D("mix", 4), {"gelu": {}},
                               D("head", 11)], 5, {"tokens": 11, "classes": 11, "reps": 4}),
        ("seq_ghost", (3,), [{"name": "emb", "embed": {"num_embeddings": 11, "features": 16}},
                             {"name": "pos", "position_embedding": {}},
                             {"name": "ln", "layer_norm": {}}, D("mix", 16), {"gelu": {}},
                             D("head", 11)], 16, {"tokens": 11, "classes": 11, "reps": 2}),
    ]
    with tempfile.TemporaryDirectory() as root:
        for label, shape, layers, batch, kw in cases:
            run_case(tool, root, label, shape, layers, batch, rng, **kw)
        refused(tool, root, "batch_norm", [D("l1", 8), {"batch_norm": {}}, D("l2", 4)], [6],
                "batch_norm mixes the examples")
        refused(tool, root, "attention",
                [{"embed": {"num_embeddings": 8, "features": 8}},
                 {"causal_self_attention": {"num_heads": 2}}, D("head", 8)], [4],
                "causal_self_attention has no per-example")
    print("%d failure(s)" % failures)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
