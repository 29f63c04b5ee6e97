#!/usr/bin/env python3
"""The layers of convolutional nets against JAX and Flax, op by op: conv,
max_pool, avg_pool, global_avg_pool, batch_norm and layer_norm, forward
and backward, on random inputs of several shapes, strides, paddings,
dilations and channel counts.

Each case is a small model: the op under test, usually after a layer
with parameters (a "stem"), so that the op's gradient with respect to
its input reaches a parameter gradient, then a dense head and softmax
cross-entropy. traind runs one training step of it through
layer_ref_tool (forward in training mode, loss, backward) from random
parameters written with h5py under traind's names; the reference is the
same model in flax.linen (nn.Conv, nn.max_pool, nn.avg_pool, jnp.mean
over the image for global_avg_pool, nn.BatchNorm with mutable
batch_stats, nn.LayerNorm, nn.Dense), differentiated with jax.vjp. The
model's output, the mean loss, every parameter's gradient and the batch
norms' running statistics after the step agree with a relative error
(norm-wise, ||traind - jax|| / ||jax||) below 1e-5, in float32.

Usage: layers_jax.py LAYER_REF_TOOL
Exit 77 (skip) when JAX, flax or h5py is missing, unless CI=true (then 1).
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
except ImportError as e:  # pragma: no cover
    print(f"SKIP: {e}")
    sys.exit(1 if os.environ.get("CI") == "true" else 77)

# The reference runs in float64 from the same float32 parameters and
# inputs traind gets: JAX's own float32 result can be farther from the
# exact one than 1e-5 where a gradient is a sum with much cancellation
# (a stem's bias summed over every position), so it is no fair bar.
jax.config.update("jax_enable_x64", True)

CLASSES = 10
TOL = 1e-5
# A max_pool input is redrawn until the two largest values of every window
# differ by this much (relative to the values' spread), so that rounding
# differences upstream cannot change which one a window picks.
TIE_GAP = 1e-3
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

PARAM_KINDS = ("dense", "conv", "batch_norm", "layer_norm")


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


def pair(v, default):
    """A spatial argument: absent, one value for both dimensions, or two."""
    if not v:
        return (default, default)
    return (v[0], v[0]) if len(v) == 1 else (v[0], v[1])


def padding_of(args, default):
    ep = args.get("explicit_padding")
    if ep:
        return ((ep[0], ep[1]), (ep[0], ep[1])) if len(ep) == 2 else ((ep[0], ep[1]), (ep[2], ep[3]))
    return args.get("padding") or default


class Ref(nn.Module):
    """The model in Flax, layer by layer as the job lists them (sequential);
    modules named as traind names the layers. Each max_pool's input is
    sown into "pool_inputs" for the tie check."""
    layers: tuple
    input_shape: tuple

    @nn.compact
    def __call__(self, x):
        h = x.reshape((x.shape[0],) + tuple(self.input_shape))
        for l, name in zip(self.layers, layer_names(self.layers)):
            kind = kind_of(l)
            a = l[kind]
            if kind == "conv":
                h = nn.Conv(a["features"], pair(a["kernel_size"], 1), strides=pair(a.get("strides"), 1),
                            padding=padding_of(a, "SAME"),
                            kernel_dilation=pair(a.get("kernel_dilation"), 1),
                            use_bias=a.get("use_bias", True), name=name)(h)
            elif kind in ("max_pool", "avg_pool"):
                win, strides, pad = pool_geometry(l)
                if kind == "max_pool":
                    self.sow("pool_inputs", name, h)
                    h = nn.max_pool(h, win, strides, pad)
                else:
                    h = nn.avg_pool(h, win, strides, pad,
                                    count_include_pad=a.get("count_include_pad", True))
            elif kind == "global_avg_pool":
                h = jnp.mean(h, axis=(1, 2))
            elif kind == "batch_norm":
                h = nn.BatchNorm(use_running_average=False, momentum=a.get("momentum", 0.99),
                                 epsilon=a.get("epsilon", 1e-5), use_scale=a.get("use_scale", True),
                                 use_bias=a.get("use_bias", True), name=name)(h)
            elif kind == "layer_norm":
                h = nn.LayerNorm(epsilon=a.get("epsilon", 1e-6), use_scale=a.get("use_scale", True),
                                 use_bias=a.get("use_bias", True), name=name)(h)
            elif kind == "dense":
                h = nn.Dense(a["features"], use_bias=a.get("use_bias", True), name=name)(h)
            elif kind == "flatten":
                h = h.reshape((h.shape[0], -1))
            elif kind == "relu":
                h = jax.nn.relu(h)
            elif kind == "tanh":
                h = jnp.tanh(h)
            else:
                raise ValueError("no reference for layer kind " + kind)
        return h


# Flax's leaf names -> traind's: kernels and biases of dense and conv
# layers are w and b; the norms keep scale and bias.
def traind_leaf(kind, leaf):
    if kind in ("dense", "conv"):
        return {"kernel": "w", "bias": "b"}[leaf]
    return leaf


def pool_geometry(layer):
    """A pool layer's window, strides and padding, as Flax takes them."""
    a = layer[kind_of(layer)]
    return pair(a["window_shape"], 1), pair(a.get("strides"), 1), padding_of(a, "VALID")


def min_window_gap(h, win, strides, pad):
    """The smallest difference between the two largest values of a max_pool
    window, over every window, channel and example."""
    h = np.asarray(h, np.float64)
    if isinstance(pad, str):
        pad = jax.lax.padtype_to_pads(h.shape[1:3], win, strides, pad)
    hp = np.pad(h, ((0, 0), tuple(pad[0]), tuple(pad[1]), (0, 0)), constant_values=-np.inf)
    w = np.lib.stride_tricks.sliding_window_view(hp, win, axis=(1, 2))
    w = w[:, ::strides[0], ::strides[1]].reshape(w.shape[0], -1, w.shape[3], win[0] * win[1])
    top = np.sort(w, axis=-1)[..., -2:]
    gap = top[..., 1] - top[..., 0]
    return float(np.min(gap[np.isfinite(gap)], initial=np.inf)) / max(float(np.std(h)), 1e-12)


# ---- the cases -------------------------------------------------------------

def stem(features, k=1, use_bias=True, name="stem"):
    return {"name": name, "conv": {"features": features, "kernel_size": [k], "use_bias": use_bias}}


HEAD = [{"flatten": {}}, {"name": "head", "dense": {"features": CLASSES}}]


def conv(features, kernel_size, **kw):
    return {"name": "c", "conv": dict(features=features, kernel_size=kernel_size, **kw)}


def pool(kind, window, **kw):
    return {"name": "p", kind: dict(window_shape=window, **kw)}


# (label, input shape (H, W, C) or (features,), batch, layers)
CASES = [
    # conv: channels 1, 3, 16; SAME, VALID, explicit; strides 1 and 2;
    # dilation; 1x1, 5x5 and non-square kernels. The first case leaves its
    # layers unnamed (layer1, layer2, layer3).
    ("conv_same_3x3_c1", (10, 10, 1), 4,
     [{"conv": {"features": 1, "kernel_size": [1]}},
      {"conv": {"features": 8, "kernel_size": [3, 3]}},
      {"flatten": {}}, {"dense": {"features": CLASSES}}]),
    ("conv_valid_3x3_s2_c3", (11, 11, 2), 4,
     [stem(3), conv(4, [3], padding="VALID", strides=[2])] + HEAD),
    ("conv_same_5x5_s2_c16", (9, 9, 3), 3,
     [stem(16), conv(8, [5], strides=[2])] + HEAD),
    ("conv_valid_5x5_c1", (12, 12, 1), 3,
     [stem(1), conv(3, [5], padding="VALID")] + HEAD),
    ("conv_1x1_c3", (7, 7, 2), 4,
     [stem(3), conv(16, [1], padding="VALID")] + HEAD),
    ("conv_2x3_explicit_s21", (8, 9, 2), 4,
     [stem(3), conv(5, [2, 3], explicit_padding=[1, 0, 2, 1], strides=[2, 1])] + HEAD),
    ("conv_explicit_3x3_s2_c16", (9, 8, 2), 3,
     [stem(16), conv(3, [3], explicit_padding=[1, 2], strides=[2])] + HEAD),
    ("conv_same_dil2_c3", (12, 12, 3), 3,
     [stem(3), conv(6, [3], kernel_dilation=[2])] + HEAD),
    ("conv_valid_3x5_dil21_s12_nobias", (12, 13, 2), 4,
     [stem(3), conv(4, [3, 5], padding="VALID", kernel_dilation=[2, 1], strides=[1, 2],
                    use_bias=False)] + HEAD),
    ("conv_same_4x4_s2_even", (8, 8, 1), 4,
     [stem(3), conv(4, [4], strides=[2])] + HEAD),
    # The MNIST CNN's first layer at batch 32: its bias gradient is a sum
    # over 25,088 positions.
    ("conv_mnist_first_layer_b32", (28, 28, 1), 32,
     [{"name": "conv1", "conv": {"features": 32, "kernel_size": [3, 3]}}, {"relu": {}},
      {"global_avg_pool": {}}, {"name": "head", "dense": {"features": CLASSES}}]),
    # max_pool: windows 2 and 3, strides 1 and 2, VALID, SAME, explicit.
    ("max_2x2_s2_valid", (10, 10, 2), 4, [stem(3, 3), pool("max_pool", [2], strides=[2])] + HEAD),
    ("max_3x3_s1_same", (7, 7, 2), 4,
     [stem(3, 3), pool("max_pool", [3], strides=[1], padding="SAME")] + HEAD),
    ("max_3x3_s2_same", (9, 9, 1), 4,
     [stem(4, 3), pool("max_pool", [3], strides=[2], padding="SAME")] + HEAD),
    ("max_2x3_s12_valid", (8, 9, 2), 4,
     [stem(3, 3), pool("max_pool", [2, 3], strides=[1, 2])] + HEAD),
    ("max_2x2_s2_explicit", (7, 7, 2), 4,
     [stem(3, 3), pool("max_pool", [2], strides=[2], explicit_padding=[0, 1, 1, 0])] + HEAD),
    # avg_pool: the same, with count_include_pad true and false.
    ("avg_2x2_s2_valid", (10, 10, 2), 4, [stem(3, 3), pool("avg_pool", [2], strides=[2])] + HEAD),
    ("avg_3x3_s1_same_incl", (7, 7, 2), 4,
     [stem(3, 3), pool("avg_pool", [3], strides=[1], padding="SAME")] + HEAD),
    ("avg_3x3_s2_same_excl", (9, 9, 2), 4,
     [stem(3, 3), pool("avg_pool", [3], strides=[2], padding="SAME", count_include_pad=False)]
     + HEAD),
    ("avg_3x3_s1_explicit_excl", (6, 7, 1), 4,
     [stem(2, 3), pool("avg_pool", [3], strides=[1], explicit_padding=[1, 2],
                       count_include_pad=False)] + HEAD),
    ("avg_2x3_s21_same_incl", (8, 9, 2), 4,
     [stem(3, 3), pool("avg_pool", [2, 3], strides=[2, 1], padding="SAME")] + HEAD),
    # global_avg_pool, straight into the head.
    ("global_avg_pool", (6, 5, 3), 4,
     [stem(16, 3), {"relu": {}}, {"global_avg_pool": {}},
      {"name": "head", "dense": {"features": CLASSES}}]),
    # batch_norm on images and on vectors, with and without scale and bias,
    # several momenta (0: the running values are the batch's). A conv or
    # dense before a batch norm has no bias (its gradient is zero: the norm
    # removes the mean).
    ("bn_image", (6, 6, 2), 4,
     [stem(4, 3, use_bias=False), {"name": "bn", "batch_norm": {}}, {"relu": {}}] + HEAD),
    ("bn_image_m0_noscale", (5, 7, 3), 3,
     [stem(8, 3, use_bias=False), {"name": "bn", "batch_norm": {"momentum": 0.0,
                                                               "use_scale": False}},
      {"relu": {}}] + HEAD),
    ("bn_image_m09_eps_nobias", (6, 6, 1), 4,
     [stem(3, 3, use_bias=False), {"name": "bn", "batch_norm": {"momentum": 0.9, "epsilon": 1e-3,
                                                               "use_bias": False}},
      {"tanh": {}}] + HEAD),
    ("bn_vector", (12,), 16,
     [{"name": "d", "dense": {"features": 8, "use_bias": False}},
      {"name": "bn", "batch_norm": {"momentum": 0.5}}, {"tanh": {}},
      {"name": "head", "dense": {"features": CLASSES}}]),
    ("bn_vector_plain", (12,), 16,
     [{"name": "d", "dense": {"features": 8, "use_bias": False}},
      {"name": "bn", "batch_norm": {"momentum": 0.0, "use_scale": False, "use_bias": False}},
      {"tanh": {}}, {"name": "head", "dense": {"features": CLASSES}}]),
    # layer_norm on images (over the channels of each position) and vectors.
    ("ln_image", (5, 5, 1), 4,
     [stem(6, 3), {"name": "ln", "layer_norm": {}}, {"relu": {}}] + HEAD),
    ("ln_image_noscale", (4, 6, 2), 4,
     [stem(4, 3), {"name": "ln", "layer_norm": {"use_scale": False, "epsilon": 1e-5}}] + HEAD),
    ("ln_vector", (12,), 8,
     [{"name": "d", "dense": {"features": 16}}, {"name": "ln", "layer_norm": {"use_bias": False}},
      {"tanh": {}}, {"name": "head", "dense": {"features": CLASSES}}]),
    ("ln_vector_plain", (12,), 8,
     [{"name": "d", "dense": {"features": 16}},
      {"name": "ln", "layer_norm": {"use_scale": False, "use_bias": False}},
      {"name": "head", "dense": {"features": CLASSES}}]),
    # Everything in one net: conv, batch norm, max pool, conv, layer norm,
    # avg pool, global average. (A max_pool never follows a relu: windows
    # of zeros are ties.)
    ("mixed", (12, 12, 1), 4,
     [{"name": "c1", "conv": {"features": 8, "kernel_size": [3], "use_bias": False}},
      {"name": "bn", "batch_norm": {"momentum": 0.9}},
      {"name": "p1", "max_pool": {"window_shape": [2], "strides": [2]}}, {"relu": {}},
      {"name": "c2", "conv": {"features": 16, "kernel_size": [3], "strides": [1]}},
      {"name": "ln", "layer_norm": {}}, {"relu": {}},
      {"name": "p2", "avg_pool": {"window_shape": [2], "strides": [2], "padding": "SAME"}},
      {"global_avg_pool": {}}, {"name": "head", "dense": {"features": CLASSES}}]),
]


def random_params(rng, shapes, layers):
    """Random values for every parameter (flax's tree), nonzero biases and
    scales away from 1 so that every term of the gradients matters."""
    kinds = dict(zip(layer_names(layers), (kind_of(l) for l in layers)))
    out = {}
    for name, leaves in shapes.items():
        out[name] = {}
        for leaf, s in leaves.items():
            if leaf == "kernel":
                fan_in = int(np.prod(s.shape[:-1]))
                v = rng.normal(size=s.shape) / np.sqrt(fan_in)
            elif leaf == "scale":
                v = 1.0 + 0.3 * rng.normal(size=s.shape)
            else:
                v = (0.2 if kinds[name] in ("batch_norm", "layer_norm") else 0.1) * rng.normal(size=s.shape)
            out[name][leaf] = v.astype(np.float32)
    return out


def run_case(tool, tmp, label, input_shape, batch, layers, seed):
    root = os.path.join(tmp, label)
    os.makedirs(root)
    model = Ref(layers=tuple(layers), input_shape=tuple(input_shape))
    kinds = dict(zip(layer_names(layers), (kind_of(l) for l in layers)))
    n_in = int(np.prod(input_shape))
    pools = {n: l for n, l in zip(layer_names(layers), layers) if kind_of(l) == "max_pool"}
    rng = np.random.default_rng(seed)

    def apply(variables, x):
        return model.apply(variables, x, mutable=["batch_stats", "pool_inputs"])

    # Inputs and parameters (float32, as traind gets them), redrawn while a
    # max_pool window is nearly tied.
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((batch, n_in)))
    # Running statistics start at mean 0, variance 1, in both.
    stats = {n: {"mean": np.zeros(s["mean"].shape), "var": np.ones(s["var"].shape)}
             for n, s in shapes.get("batch_stats", {}).items()}
    # (numpy, not jnp: each jnp conversion outside a jitted function is a
    # compilation of its own)
    f64 = lambda t: jax.tree_util.tree_map(lambda v: np.asarray(v, np.float64), t)

    def loss_fn(p, x, y):
        variables = {"params": p, **({"batch_stats": f64(stats)} if stats else {})}
        logits, upd = apply(variables, x)
        loss = -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(batch), y])
        return loss, (logits, upd.get("batch_stats", {}), upd.get("pool_inputs", {}))

    # The step's values and the pullback of the loss alone (a cotangent of
    # zero for the logits and statistics also returned).
    def step(p, x, y):
        out, pull = jax.vjp(lambda q: loss_fn(q, x, y), p)
        return out, pull((jnp.ones_like(out[0]), jax.tree_util.tree_map(jnp.zeros_like, out[1])))[0]

    step = jax.jit(step)
    for attempt in range(20):
        x = rng.normal(size=(batch, n_in)).astype(np.float32)
        y = rng.integers(0, CLASSES, size=batch).astype(np.int32)
        params = random_params(rng, shapes["params"], layers)
        (want_loss, (want_out, want_stats, sown)), want_grads = step(f64(params), f64(x), y)
        gaps = [min_window_gap(v[0], *pool_geometry(pools[n])) for n, v in sown.items()]
        if min(gaps, default=np.inf) > TIE_GAP:
            break
    else:
        check(False, "%s: no draw without nearly tied max_pool windows" % label)
        return

    spec = {
        "name": "layers-" + label,
        "model": {"input_shape": list(input_shape), "layers": layers,
                  "loss": "SOFTMAX_CROSS_ENTROPY"},
        "optimizer": {"chain": [{"sgd": {"learning_rate": {"constant": 0.1}}}]},
        "dataset": {"hdf5": {"train_file": "unused.h5"}},
        "training": {"epochs": 1, "batch_size": batch},
    }
    job, inp, out = (os.path.join(root, n) for n in ("job.json", "in.h5", "out.h5"))
    with open(job, "w") as f:
        json.dump(spec, f)
    with h5py.File(inp, "w") as f:
        f["x"] = x
        f["labels"] = y
        for name, leaves in params.items():
            for leaf, v in leaves.items():
                f["params/%s/%s" % (name, traind_leaf(kinds[name], leaf))] = np.asarray(v)
    p = subprocess.run([tool, job, inp, out], capture_output=True, text=True, timeout=120)
    check(p.returncode == 0, "%s: layer_ref_tool exited %d: %s" % (label, p.returncode, p.stderr[-2000:]))
    if p.returncode:
        return

    errs = {}
    with h5py.File(out, "r") as f:
        errs["output"] = relerr(f["output"][()], want_out)
        errs["loss"] = relerr(f["loss_sum"][()] / batch, want_loss)
        for name, leaves in want_grads.items():
            for leaf, g in leaves.items():
                key = "%s/%s" % (name, traind_leaf(kinds[name], leaf))
                check(key in f["grads"], "%s: no gradient %s from traind" % (label, key))
                errs["grad " + key] = relerr(f["grads"][key][()], g) if key in f["grads"] else np.inf
        check(len(f["grads"]) == len(want_grads), "%s: traind has parameter groups %s, flax %s"
              % (label, sorted(f["grads"]), sorted(want_grads)))
        for name, leaves in want_stats.items():
            for leaf, v in leaves.items():
                key = "%s/%s" % (name, leaf)
                check(key in f["stats"], "%s: no running statistic %s from traind" % (label, key))
                errs["stat " + key] = relerr(f["stats"][key][()], v) if key in f["stats"] else np.inf
        check(len(f.get("stats", {})) == len(want_stats), "%s: traind has statistics %s, flax %s"
              % (label, sorted(f.get("stats", {})), sorted(want_stats)))
    for what, e in errs.items():
        check(e < TOL, "%s: %s differs from JAX's by %.3g" % (label, what, e))
    worst = max(errs, key=errs.get)
    print("%-32s loss %.4f, %d comparisons, worst %s %.2e"
          % (label, float(want_loss), len(errs), worst, errs[worst]))


def main():
    tool = sys.argv[1]
    with tempfile.TemporaryDirectory(prefix="td-layers-") as tmp:
        for i, (label, shape, batch, layers) in enumerate(CASES):
            run_case(tool, tmp, label, shape, batch, layers, 100 + i)
    print("%d cases: %s" % (len(CASES), "ok" if not failures else "%d failed" % failures))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
