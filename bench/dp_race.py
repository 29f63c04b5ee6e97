#!/usr/bin/env python3
"""One contestant of bench/dp_race.sh: a DP-SGD training epoch of the
reference MLP (784-256-128-10, ReLU), timed, in PyTorch with Opacus or in
JAX with vmap(grad).

Usage: dp_race.py opacus|jax [--batch B] [--epochs E] [--threads T]

Both train with DP-SGD as traind's config/jobs/mnist_dp.yaml does (each
example's gradient clipped to norm 1.0, Gaussian noise of 1.1 times that
added to the sum, divided by the expected batch, SGD at learning rate 0.25):

  opacus  Opacus 1.6's PrivacyEngine.make_private on an nn.Sequential MLP,
          its DPDataLoader (Poisson sampling, batch B expected) over a
          TensorDataset of MNIST (bench/mnist_idx.py), the eager loop:
          zero_grad, forward, loss, backward (Opacus's hooks form per-sample
          gradients, then clip, noise and average), step.
          torch.set_num_threads(T).
  jax     the JAX DP-SGD example's formula: jax.vmap(jax.grad(loss of one
          example)) over a batch, each per-example gradient clipped, summed,
          Gaussian noise from jax.random.normal added, divided by B, the SGD
          update, all in one jitted step called from a Python loop over the
          batches of an epoch's permutation (fixed batches of B: JAX cannot
          vary a jitted step's batch without recompiling).

The first epoch is the warm-up; the later ones are timed. Prints one JSON
object: framework, batch, steps_per_epoch, epoch_sec (median of the timed
epochs), epochs_sec, test_accuracy, versions.
"""
import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mnist_idx  # noqa: E402

CLIP, SIGMA, LR = 1.0, 1.1, 0.25


def run_opacus(a, x, y, xt, yt):
    import torch
    from opacus import PrivacyEngine
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(784, 256), torch.nn.ReLU(),
                                torch.nn.Linear(256, 128), torch.nn.ReLU(),
                                torch.nn.Linear(128, 10))
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    ds = torch.utils.data.TensorDataset(torch.from_numpy(x), torch.from_numpy(y).long())
    loader = torch.utils.data.DataLoader(ds, batch_size=a.batch, shuffle=True)
    engine = PrivacyEngine(accountant="rdp")
    model, opt, loader = engine.make_private(module=model, optimizer=opt, data_loader=loader,
                                             noise_multiplier=SIGMA, max_grad_norm=CLIP,
                                             poisson_sampling=True)
    lossf = torch.nn.CrossEntropyLoss()
    times = []
    for _ in range(a.epochs):
        t0 = time.perf_counter()
        for xb, yb in loader:
            opt.zero_grad()
            lossf(model(xb), yb).backward()
            opt.step()
        times.append(time.perf_counter() - t0)
    with torch.no_grad():
        acc = float((model(torch.from_numpy(xt)).argmax(1).numpy() == yt).mean())
    import opacus
    return {"framework": "opacus", "epochs_sec": times, "steps_per_epoch": len(loader),
            "test_accuracy": acc, "versions": {"torch": torch.__version__,
                                               "opacus": opacus.__version__}}


def run_jax(a, x, y, xt, yt):
    os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=true")
    import jax
    import jax.numpy as jnp
    import numpy as np

    def init(key):
        ks = jax.random.split(key, 3)
        dims = [(784, 256), (256, 128), (128, 10)]
        return [(jax.random.normal(k, d) * jnp.sqrt(2.0 / d[0]), jnp.zeros(d[1]))
                for k, d in zip(ks, dims)]

    def loss(p, xi, yi):
        h = xi
        for i, (w, b) in enumerate(p):
            h = h @ w + b
            if i < len(p) - 1:
                h = jax.nn.relu(h)
        return -jax.nn.log_softmax(h)[yi]

    @jax.jit
    def step(p, xb, yb, key):
        g = jax.vmap(jax.grad(loss), in_axes=(None, 0, 0))(p, xb, yb)
        leaves = jax.tree_util.tree_leaves(g)
        norms = jnp.sqrt(sum(jnp.sum(v.reshape(v.shape[0], -1) ** 2, axis=1) for v in leaves))
        f = jnp.minimum(1.0, CLIP / (norms + 1e-6))
        summed = jax.tree_util.tree_map(lambda v: jnp.tensordot(f, v, axes=(0, 0)), g)
        flat, tree = jax.tree_util.tree_flatten(summed)
        keys = jax.random.split(key, len(flat))
        noised = [s + SIGMA * CLIP * jax.random.normal(k, s.shape) for s, k in zip(flat, keys)]
        mean = jax.tree_util.tree_unflatten(tree, [v / xb.shape[0] for v in noised])
        return jax.tree_util.tree_map(lambda w, d: w - LR * d, p, mean)

    key = jax.random.PRNGKey(0)
    p = init(key)
    xd, yd = jnp.asarray(x), jnp.asarray(y)
    steps = x.shape[0] // a.batch
    times = []
    for e in range(a.epochs):
        perm = np.asarray(jax.random.permutation(jax.random.fold_in(key, e), x.shape[0]))
        t0 = time.perf_counter()
        for s in range(steps):
            idx = perm[s * a.batch:(s + 1) * a.batch]
            p = step(p, xd[idx], yd[idx], jax.random.fold_in(key, e * steps + s + 1000))
        jax.block_until_ready(p)
        times.append(time.perf_counter() - t0)
    h = jnp.asarray(xt)
    for i, (w, b) in enumerate(p):
        h = h @ w + b
        if i < len(p) - 1:
            h = jax.nn.relu(h)
    acc = float((np.asarray(h.argmax(1)) == yt).mean())
    return {"framework": "jax", "epochs_sec": times, "steps_per_epoch": steps,
            "test_accuracy": acc, "versions": {"jax": jax.__version__}}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("framework", choices=("opacus", "jax"))
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    x, y = mnist_idx.load("train")
    xt, yt = mnist_idx.load("t10k")
    x, xt = x.reshape(len(x), -1), xt.reshape(len(xt), -1)
    r = (run_opacus if a.framework == "opacus" else run_jax)(a, x, y, xt, yt)
    timed = sorted(r["epochs_sec"][1:] or r["epochs_sec"])
    r.update(batch=a.batch, threads=a.threads, epoch_sec=timed[len(timed) // 2])
    print(json.dumps(r))


if __name__ == "__main__":
    main()
