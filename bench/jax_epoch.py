#!/usr/bin/env python3
"""One model's training epoch in JAX, timed: the baseline of
bench/model_epoch.sh.

Usage: jax_epoch.py cnn|mlp [--epochs N] [--threads T]

The models and optimizers of config/jobs/mnist_cnn.yaml and
config/jobs/mnist_mlp.yaml, written in flax.linen as a JAX user writes
them: the CNN of Flax's MNIST example (Conv 32 3x3, relu, avg_pool 2x2
stride 2, Conv 64 3x3, relu, avg_pool, flatten, Dense 256, relu, Dense 10;
optax.sgd(0.1, momentum 0.9)) and the MLP 784-256-128-10 (relu, He-normal
kernels, zero biases; optax.adam(1e-3)), softmax cross-entropy, batch 128,
468 steps an epoch (the last partial batch dropped, as traind does).

An epoch is one jitted function: the shuffled order from the epoch's key
and a lax.scan of the training step over its batches, with the dataset on
the device. It is compiled ahead (timed apart); the first epoch is the
warm-up and is left out; each later epoch is timed to block_until_ready on
its results. XLA's CPU backend gets T
threads (default 2: XLA_FLAGS --xla_cpu_multi_thread_eigen=true
intra_op_parallelism_threads=T, set before JAX is imported unless
XLA_FLAGS is set already); bench/model_epoch.sh also pins the process to
the cores with taskset.

Prints one JSON object: framework, model, epoch_sec (the median of the
timed epochs), every epoch's seconds, compile_sec (tracing and compiling
the epoch's function, ahead of the first epoch), test_accuracy after the
last epoch, and the versions.
"""
import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

BATCH = 128


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model", choices=["cnn", "mlp"])
    ap.add_argument("--epochs", type=int, default=2, help="at least 2: the first warms up")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=0,
                    help="steps per epoch (default: the whole epoch, 468); fewer only to "
                    "check that the program runs")
    a = ap.parse_args()
    if a.epochs < 2:
        ap.error("--epochs must be at least 2 (the first epoch warms up and is not timed)")
    os.environ.setdefault(
        "XLA_FLAGS",
        f"--xla_cpu_multi_thread_eigen=true intra_op_parallelism_threads={a.threads}")

    import flax
    import flax.linen as nn
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    import mnist_idx

    class CNN(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.Conv(features=32, kernel_size=(3, 3))(x)
            x = nn.relu(x)
            x = nn.avg_pool(x, window_shape=(2, 2), strides=(2, 2))
            x = nn.Conv(features=64, kernel_size=(3, 3))(x)
            x = nn.relu(x)
            x = nn.avg_pool(x, window_shape=(2, 2), strides=(2, 2))
            x = x.reshape((x.shape[0], -1))
            x = nn.Dense(features=256)(x)
            x = nn.relu(x)
            return nn.Dense(features=10)(x)

    class MLP(nn.Module):
        @nn.compact
        def __call__(self, x):
            he = nn.initializers.he_normal()
            x = x.reshape((x.shape[0], -1))
            x = nn.relu(nn.Dense(256, kernel_init=he)(x))
            x = nn.relu(nn.Dense(128, kernel_init=he)(x))
            return nn.Dense(10, kernel_init=he)(x)

    if a.model == "cnn":
        model, tx = CNN(), optax.sgd(learning_rate=0.1, momentum=0.9)
    else:
        model, tx = MLP(), optax.adam(learning_rate=1e-3)

    x_train, y_train = mnist_idx.load("train")
    x_test, y_test = mnist_idx.load("t10k")
    if a.model == "mlp":
        x_train = x_train.reshape(len(x_train), -1)
        x_test = x_test.reshape(len(x_test), -1)
    x_train, y_train = jax.device_put(x_train), jax.device_put(y_train)
    steps = len(y_train) // BATCH
    if a.steps < 0 or a.steps > steps:
        ap.error(f"--steps must be between 1 and {steps} (0: the whole epoch)")
    steps = a.steps or steps

    key = jax.random.PRNGKey(0)
    init_key, shuffle_key = jax.random.split(key)
    params = model.init(init_key, x_train[:1])["params"]
    opt_state = tx.init(params)

    def loss_fn(p, xb, yb):
        logits = model.apply({"params": p}, xb)
        return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()

    @jax.jit
    def epoch(params, opt_state, key, x, y):
        order = jax.random.permutation(key, x.shape[0])[:steps * BATCH].reshape(steps, BATCH)

        def step(carry, idx):
            p, s = carry
            loss, grads = jax.value_and_grad(loss_fn)(p, x[idx], y[idx])
            updates, s = tx.update(grads, s, p)
            return (optax.apply_updates(p, updates), s), loss

        (params, opt_state), losses = jax.lax.scan(step, (params, opt_state), order)
        return params, opt_state, losses.mean()

    @jax.jit
    def correct(params, x, y):
        return jnp.sum(jnp.argmax(model.apply({"params": params}, x), -1) == y)

    # Compiled ahead, so that its time is known apart from the first epoch's.
    t0 = time.perf_counter()
    run_epoch = epoch.lower(params, opt_state, shuffle_key, x_train, y_train).compile()
    compile_sec = time.perf_counter() - t0
    times = []
    for e in range(a.epochs):
        k = jax.random.fold_in(shuffle_key, e)
        t0 = time.perf_counter()
        params, opt_state, loss = run_epoch(params, opt_state, k, x_train, y_train)
        jax.block_until_ready((params, opt_state, loss))
        times.append(time.perf_counter() - t0)

    hits = 0
    for i in range(0, len(y_test), 1000):
        hits += int(correct(params, x_test[i:i + 1000], y_test[i:i + 1000]))
    timed = sorted(times[1:])
    n = len(timed)
    med = timed[n // 2] if n % 2 else 0.5 * (timed[n // 2 - 1] + timed[n // 2])
    print(json.dumps({
        "framework": "jax", "model": a.model, "style": "jit(lax.scan) epoch",
        "epoch_sec": round(med, 4), "epochs_sec": [round(t, 4) for t in times],
        "compile_sec": round(compile_sec, 4), "first_epoch_sec": round(times[0], 4),
        "train_loss": round(float(loss), 6),
        "test_accuracy": hits / len(y_test), "threads": a.threads, "steps_per_epoch": steps,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "versions": {"jax": jax.__version__, "flax": flax.__version__,
                     "optax": optax.__version__, "numpy": np.__version__},
    }))


if __name__ == "__main__":
    main()
