#!/usr/bin/env python3
"""Models as graphs against JAX: a residual block, where a value feeds two
layers (its gradient is the sum of theirs), a branch from the model's
input with an add of three, an image-shaped input through reshape and
flatten into a skip connection, and a concatenation of a block's output
with its input, each trained by `traind run` for 20 SGD steps
(momentum 0.9) and by the same model written in JAX (jax.grad, optax's sgd
formulas), from the same initial parameters (written with h5py and given
to traind as checkpoint.init_from). The loss of every step and every
parameter after the last agree within a relative error of 1e-4.

The dataset is one batch (64 examples, batch_size 64), so every step sees
the same examples in whatever order traind shuffles them.

Usage: graph_jax.py TRAIND
Exit 77 (skip) when JAX or h5py is missing, unless CI=true (then 1).
"""
import json
import os
import subprocess
import sys
import tempfile

try:
    import h5py
    import jax
    import jax.numpy as jnp
    import numpy as np
except ImportError as e:  # pragma: no cover
    print(f"SKIP: {e}")
    sys.exit(1 if os.environ.get("CI") == "true" else 77)

jax.config.update("jax_enable_x64", False)

N, IN, CLASSES = 64, 20, 10
STEPS, LR, MOMENTUM = 20, 0.1, 0.9
TOL = 1e-4
failures = 0


def check(cond, what):
    global failures
    if not cond:
        failures += 1
        print("FAIL " + what)


def relerr(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-12))


# The models: the job's layers, and the same function in JAX over a dict
# of parameters named as traind names them.
RESIDUAL = [
    {"name": "stem", "dense": {"features": 32}},
    {"name": "a", "relu": {}},
    {"name": "f1", "dense": {"features": 32}},
    {"relu": {}},
    {"name": "f2", "dense": {"features": 32}},
    {"name": "sum", "add": {}, "inputs": ["f2", "a"]},
    {"relu": {}},
    {"name": "head", "dense": {"features": CLASSES}},
]


def residual(p, x):
    dense = lambda n, h: h @ p[n]["w"] + p[n]["b"]
    a = jax.nn.relu(dense("stem", x))
    f = dense("f2", jax.nn.relu(dense("f1", a)))
    return dense("head", jax.nn.relu(f + a))


BRANCHES = [
    {"name": "p", "dense": {"features": 24}, "inputs": ["input"]},
    {"name": "pt", "tanh": {}},
    {"name": "q", "dense": {"features": 24}, "inputs": ["input"]},
    {"name": "r", "sigmoid": {}, "inputs": ["q"]},
    {"name": "t", "add": {}, "inputs": ["pt", "r", "q"]},
    {"name": "out", "dense": {"features": CLASSES}},
]


def branches(p, x):
    dense = lambda n, h: h @ p[n]["w"] + p[n]["b"]
    q = dense("q", x)
    t = jnp.tanh(dense("p", x)) + jax.nn.sigmoid(q) + q
    return dense("out", t)


# An image-shaped input (4, 5, 1), an activation on it, its values viewed
# as (5, 4) and flattened, and a skip over a block.
IMAGE = [
    {"name": "img", "tanh": {}},
    {"name": "v", "reshape": {"shape": [5, -1]}},
    {"name": "flat", "flatten": {}},
    {"name": "b1", "dense": {"features": IN}},
    {"name": "g", "gelu": {}},
    {"name": "skip", "add": {}, "inputs": ["g", "flat"]},
    {"name": "out", "dense": {"features": CLASSES}},
]


def image(p, x):
    dense = lambda n, h: h @ p[n]["w"] + p[n]["b"]
    flat = jnp.tanh(x.reshape(-1, 4, 5, 1)).reshape(x.shape[0], 5, 4).reshape(x.shape[0], -1)
    h = jax.nn.gelu(dense("b1", flat), approximate=True)
    return dense("out", h + flat)


# A dense block whose output is concatenated with its input (DenseNet's
# way), feeding the head.
CONCAT = [
    {"name": "h", "dense": {"features": 16}},
    {"name": "hr", "relu": {}},
    {"name": "cat", "concatenate": {}, "inputs": ["hr", "input"]},
    {"name": "out", "dense": {"features": CLASSES}},
]


def concat(p, x):
    dense = lambda n, h: h @ p[n]["w"] + p[n]["b"]
    return dense("out", jnp.concatenate([jax.nn.relu(dense("h", x)), x], axis=-1))


def shapes(layers):
    """(name, fan_in, features) of each dense layer, following the graph."""
    feat, out, prev = {"input": IN}, [], "input"
    for i, l in enumerate(layers):
        name = l.get("name", "_%d" % i)
        srcs = l.get("inputs", [prev])
        f = feat[srcs[0]]
        if "concatenate" in l:
            f = sum(feat[x] for x in srcs)
        if "dense" in l:
            out.append((name, f, l["dense"]["features"]))
            f = l["dense"]["features"]
        feat[name] = f
        prev = name
    return out


def loss_fn(model):
    def loss(p, x, y):
        logits = model(p, x)
        return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(x.shape[0]), y])
    return loss


def run_case(traind, tmp, label, layers, model, seed, input_shape=(IN,)):
    rng = np.random.default_rng(seed)
    root = os.path.join(tmp, label)
    os.makedirs(root)
    x = rng.normal(size=(N, IN)).astype(np.float32)
    y = rng.integers(0, CLASSES, size=N)
    with h5py.File(os.path.join(root, "train.h5"), "w") as f:
        f["features"] = x
        f["labels"] = y.astype(np.int64)
    params = {}
    with h5py.File(os.path.join(root, "init.h5"), "w") as f:
        for name, fan_in, out in shapes(layers):
            w = (rng.normal(size=(fan_in, out)) / np.sqrt(fan_in)).astype(np.float32)
            b = (0.1 * rng.normal(size=(out,))).astype(np.float32)
            f["params/%s/w" % name] = w
            f["params/%s/b" % name] = b
            params[name] = {"w": w, "b": b}

    spec = {
        "name": "graph-" + label,
        "model": {"input_shape": list(input_shape), "layers": layers,
                  "loss": "SOFTMAX_CROSS_ENTROPY"},
        "optimizer": {"chain": [{"sgd": {"learning_rate": {"constant": LR},
                                         "momentum": MOMENTUM}}]},
        "dataset": {"hdf5": {"train_file": "train.h5"}},
        "training": {"epochs": STEPS, "batch_size": N},
        "checkpoint": {"init_from": "init.h5"},
    }
    job = os.path.join(root, "job.json")
    with open(job, "w") as f:
        json.dump(spec, f)
    metrics, ck = os.path.join(root, "metrics.jsonl"), os.path.join(root, "ck")
    p = subprocess.run([traind, "run", job, "--data-dir", root, "--metrics", metrics,
                        "--checkpoint-dir", ck, "--threads", "1"],
                       capture_output=True, text=True, timeout=300)
    check(p.returncode == 0, "%s: traind run exited %d: %s" % (label, p.returncode, p.stderr[-2000:]))
    if p.returncode:
        return
    losses = [json.loads(l)["loss"] for l in open(metrics) if '"loss"' in l]
    with h5py.File(os.path.join(ck, "ckpt-%012d.h5" % STEPS), "r") as f:
        got = {n: {k: f["params/%s/%s" % (n, k)][()] for k in ("w", "b")} for n in params}

    # JAX: optax.sgd(LR, momentum): trace t = g + MOMENTUM t; p -= LR t.
    loss = jax.jit(loss_fn(model))
    grad = jax.jit(jax.grad(loss_fn(model)))
    p_j = jax.tree_util.tree_map(jnp.asarray, params)
    t_j = jax.tree_util.tree_map(jnp.zeros_like, p_j)
    want_losses = []
    for _ in range(STEPS):
        want_losses.append(float(loss(p_j, x, y)))
        g = grad(p_j, x, y)
        t_j = jax.tree_util.tree_map(lambda t, gi: gi + MOMENTUM * t, t_j, g)
        p_j = jax.tree_util.tree_map(lambda pi, t: pi - LR * t, p_j, t_j)

    check(len(losses) == STEPS, "%s: %d step losses, want %d" % (label, len(losses), STEPS))
    e = relerr(losses, want_losses)
    check(e < TOL, "%s: losses differ from JAX's by %.3g (traind %s, JAX %s)"
          % (label, e, losses[:3], want_losses[:3]))
    check(want_losses[-1] < 0.7 * want_losses[0], "%s: the loss did not fall (%s)"
          % (label, want_losses))
    worst = 0.0
    for n in params:
        for k in ("w", "b"):
            e = relerr(got[n][k], np.asarray(p_j[n][k]))
            worst = max(worst, e)
            check(e < TOL, "%s: %s/%s differs from JAX's by %.3g after %d steps"
                  % (label, n, k, e, STEPS))
    print("%s: %d steps, loss %.4f -> %.4f, worst parameter relative error %.2e"
          % (label, STEPS, losses[0], losses[-1], worst))


def main():
    traind = sys.argv[1]
    with tempfile.TemporaryDirectory(prefix="td-graph-") as tmp:
        run_case(traind, tmp, "residual", RESIDUAL, residual, 1)
        run_case(traind, tmp, "branches", BRANCHES, branches, 2)
        run_case(traind, tmp, "image", IMAGE, image, 3, input_shape=(4, 5, 1))
        run_case(traind, tmp, "concat", CONCAT, concat, 4)
    print("%s" % ("ok" if not failures else "%d failed" % failures))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
