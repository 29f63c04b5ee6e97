#!/usr/bin/env python3
"""A residual CNN with batch norm trained by traind and by the same model
in Flax and optax, from the same initial parameters.

The model: conv 8 3x3 -> batch_norm -> relu, a residual block (conv ->
batch_norm -> relu -> conv -> batch_norm, plus the block's input) ->
relu, avg_pool 2x2/2, global_avg_pool, dense 10; the convolutions have no
bias (batch norm follows each), the three batch norms have momenta 0.9,
0.99 (Flax's default) and 0.8. `traind run` trains it for 20 SGD steps
(learning rate 0.1, momentum 0.9) on 64 random 8x8x1 images (a random
pattern per class plus noise), batch 64,
from parameters written with h5py (checkpoint.init_from); the reference is
flax.linen (nn.Conv, nn.BatchNorm with mutable batch_stats, nn.avg_pool,
nn.Dense) with optax.sgd, in float64 from the same float32 values. Checked
within a relative error of 1e-4: the loss of every step, every parameter
after the last step, the batch norms' running means and variances in
traind's last checkpoint (/batch_stats), and the test loss and accuracy
traind reports after the last epoch (evaluation normalizes by the running
statistics) against the Flax model's evaluation (use_running_average).

The dataset is one batch, so every step sees the same examples in
whatever order traind shuffles them.

Usage: resnet_jax.py TRAIND
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
    import optax
except ImportError as e:  # pragma: no cover
    print(f"SKIP: {e}")
    sys.exit(1 if os.environ.get("CI") == "true" else 77)

# The reference runs in float64 from traind's float32 starting values (see
# layers_jax.py: JAX's float32 is not always within traind's tolerance of
# the exact result).
jax.config.update("jax_enable_x64", True)

N, H, W, CLASSES, F = 64, 8, 8, 10, 8
STEPS, LR, MOMENTUM = 20, 0.1, 0.9
TOL = 1e-4
BN_MOMENTA = {"bn0": 0.9, "bn1": 0.99, "bn2": 0.8}
failures = 0


def check(cond, what):
    global failures
    if not cond:
        failures += 1
        print("FAIL " + what)


def relerr(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-12))


LAYERS = [
    {"name": "c0", "conv": {"features": F, "kernel_size": [3], "use_bias": False}},
    {"name": "bn0", "batch_norm": {"momentum": BN_MOMENTA["bn0"]}},
    {"name": "a0", "relu": {}},
    {"name": "c1", "conv": {"features": F, "kernel_size": [3], "use_bias": False}},
    {"name": "bn1", "batch_norm": {}},
    {"relu": {}},
    {"name": "c2", "conv": {"features": F, "kernel_size": [3], "use_bias": False}},
    {"name": "bn2", "batch_norm": {"momentum": BN_MOMENTA["bn2"]}},
    {"name": "skip", "add": {}, "inputs": ["bn2", "a0"]},
    {"relu": {}},
    {"name": "pool", "avg_pool": {"window_shape": [2], "strides": [2]}},
    {"global_avg_pool": {}},
    {"name": "head", "dense": {"features": CLASSES}},
]


class ResNet(nn.Module):
    @nn.compact
    def __call__(self, x, train):
        def bn(name):
            return nn.BatchNorm(use_running_average=not train, momentum=BN_MOMENTA[name],
                                epsilon=1e-5, name=name)

        x = x.reshape((-1, H, W, 1))
        a0 = nn.relu(bn("bn0")(nn.Conv(F, (3, 3), use_bias=False, name="c0")(x)))
        h = nn.relu(bn("bn1")(nn.Conv(F, (3, 3), use_bias=False, name="c1")(a0)))
        h = bn("bn2")(nn.Conv(F, (3, 3), use_bias=False, name="c2")(h))
        h = nn.relu(h + a0)
        h = nn.avg_pool(h, (2, 2), strides=(2, 2))
        h = jnp.mean(h, axis=(1, 2))
        return nn.Dense(CLASSES, name="head")(h)


# flax's leaves -> traind's names.
def traind_name(layer, leaf):
    if layer.startswith("bn"):
        return "%s/%s" % (layer, leaf)
    return "%s/%s" % (layer, {"kernel": "w", "bias": "b"}[leaf])


def xent(logits, y):
    return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(logits.shape[0]), y])


def main():
    traind = sys.argv[1]
    rng = np.random.default_rng(13)
    model = ResNet()
    # Each class is a random pattern; an example is its class's pattern
    # plus noise, so that the net can learn (and the loss falls).
    patterns = rng.normal(size=(CLASSES, H * W))

    def draw():
        y = rng.integers(0, CLASSES, size=N)
        return (2.0 * patterns[y] + 0.5 * rng.normal(size=(N, H * W))).astype(np.float32), y

    (x, y), (xt, yt) = draw(), draw()
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((N, H * W)),
                                               train=True))
    params = {}
    for layer, leaves in shapes["params"].items():
        params[layer] = {}
        for leaf, s in leaves.items():
            if leaf == "kernel":
                v = rng.normal(size=s.shape) / np.sqrt(np.prod(s.shape[:-1]))
            elif leaf == "scale":
                v = 1.0 + 0.1 * rng.normal(size=s.shape)
            else:
                v = 0.1 * rng.normal(size=s.shape)
            params[layer][leaf] = v.astype(np.float32)
    stats = {n: {"mean": np.zeros(s["mean"].shape), "var": np.ones(s["var"].shape)}
             for n, s in shapes["batch_stats"].items()}

    with tempfile.TemporaryDirectory(prefix="td-resnet-") as root:
        with h5py.File(os.path.join(root, "train.h5"), "w") as f:
            f["features"] = x
            f["labels"] = y.astype(np.int64)
        with h5py.File(os.path.join(root, "test.h5"), "w") as f:
            f["features"] = xt
            f["labels"] = yt.astype(np.int64)
        with h5py.File(os.path.join(root, "init.h5"), "w") as f:
            for layer, leaves in params.items():
                for leaf, v in leaves.items():
                    f["params/" + traind_name(layer, leaf)] = v
        spec = {
            "name": "resnet-bn",
            "model": {"input_shape": [H, W, 1], "layers": LAYERS,
                      "loss": "SOFTMAX_CROSS_ENTROPY"},
            "optimizer": {"chain": [{"sgd": {"learning_rate": {"constant": LR},
                                             "momentum": MOMENTUM}}]},
            "dataset": {"hdf5": {"train_file": "train.h5", "test_file": "test.h5"}},
            "training": {"epochs": STEPS, "batch_size": N, "eval_every_epochs": STEPS},
            "checkpoint": {"init_from": "init.h5"},
        }
        job = os.path.join(root, "job.json")
        with open(job, "w") as f:
            json.dump(spec, f)
        metrics, ck = os.path.join(root, "metrics.jsonl"), os.path.join(root, "ck")
        p = subprocess.run([traind, "run", job, "--data-dir", root, "--metrics", metrics,
                            "--checkpoint-dir", ck, "--threads", "1"],
                           capture_output=True, text=True, timeout=240)
        check(p.returncode == 0, "traind run exited %d: %s" % (p.returncode, p.stderr[-2000:]))
        if p.returncode:
            return 1
        points = [json.loads(l) for l in open(metrics)]
        losses = [pt["loss"] for pt in points if "loss" in pt]
        evals = [pt for pt in points if "test_loss" in pt]
        with h5py.File(os.path.join(ck, "ckpt-%012d.h5" % STEPS), "r") as f:
            got = {n: f["params/" + n][()] for n in
                   (traind_name(l, k) for l in params for k in params[l])}
            got_stats = {"%s/%s" % (n, k): f["batch_stats/%s/%s" % (n, k)][()]
                         for n in stats for k in ("mean", "var")}

    # Flax + optax.sgd, in float64 from the same values.
    # (numpy, not jnp: each jnp conversion outside a jitted function is a
    # compilation of its own)
    f64 = lambda t: jax.tree_util.tree_map(lambda v: np.asarray(v, np.float64), t)

    def loss_fn(p, s, x, y):
        logits, upd = model.apply({"params": p, "batch_stats": s}, x, train=True,
                                  mutable=["batch_stats"])
        return xent(logits, y), upd["batch_stats"]

    tx = optax.sgd(LR, momentum=MOMENTUM)

    @jax.jit
    def step(p, s, o, x, y):
        (loss, s), g = jax.value_and_grad(loss_fn, has_aux=True)(p, s, x, y)
        u, o = tx.update(g, o, p)
        return optax.apply_updates(p, u), s, o, loss

    p_j, s_j = f64(params), f64(stats)
    o_j = tx.init(p_j)
    want_losses = []
    for _ in range(STEPS):
        p_j, s_j, o_j, loss = step(p_j, s_j, o_j, f64(x), y)
        want_losses.append(float(loss))
    logits = model.apply({"params": p_j, "batch_stats": s_j}, f64(xt), train=False)
    want_test_loss = float(xent(logits, yt))
    want_test_acc = float(np.mean(np.argmax(np.asarray(logits), axis=1) == yt))

    check(len(losses) == STEPS, "%d step losses, want %d" % (len(losses), STEPS))
    e = relerr(losses, want_losses)
    check(e < TOL, "losses differ from Flax's by %.3g (traind %s, Flax %s)"
          % (e, losses[:3], want_losses[:3]))
    check(want_losses[-1] < 0.7 * want_losses[0], "the loss did not fall (%s)" % want_losses)
    worst = ("losses", e)
    for layer, leaves in p_j.items():
        for leaf, v in leaves.items():
            n = traind_name(layer, leaf)
            e = relerr(got[n], v)
            worst = max(worst, (n, e), key=lambda t: t[1])
            check(e < TOL, "%s differs from Flax's by %.3g after %d steps" % (n, e, STEPS))
    for layer, leaves in s_j.items():
        for leaf, v in leaves.items():
            n = "%s/%s" % (layer, leaf)
            e = relerr(got_stats[n], v)
            worst = max(worst, ("batch_stats/" + n, e), key=lambda t: t[1])
            check(e < TOL, "batch_stats/%s differs from Flax's by %.3g after %d steps"
                  % (n, e, STEPS))
    check(len(evals) == 1, "%d evaluations, want 1 after the last epoch" % len(evals))
    if evals:
        e = relerr(evals[-1]["test_loss"], want_test_loss)
        check(e < TOL, "test loss %.6f, Flax's (running statistics) %.6f"
              % (evals[-1]["test_loss"], want_test_loss))
        check(abs(evals[-1]["test_accuracy"] - want_test_acc) < 1e-9,
              "test accuracy %.4f, Flax's %.4f" % (evals[-1]["test_accuracy"], want_test_acc))
    print("resnet_bn: %d steps, loss %.4f -> %.4f, test loss %.4f; worst relative error %.2e (%s)"
          % (STEPS, losses[0], losses[-1], want_test_loss, worst[1], worst[0]))
    print("ok" if not failures else "%d failed" % failures)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
