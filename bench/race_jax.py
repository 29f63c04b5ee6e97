#!/usr/bin/env python3
"""One row of bench/cpu_race.sh in JAX: a model's training epoch, timed.

Usage: race_jax.py MODEL --style scan|loop [--batch B] [--limit N]
                   [--steps S] [--epochs E] [--threads T] [--seed K]

MODEL is one of the race's models, written in flax.linen and optax as a
JAX user writes them, each the model and optimizer of its traind job file:
  mlp               784-256-128-10 (config/jobs/mnist_mlp.yaml and
                    bench/race/mlp_b*.yaml), optax.adam(1e-3)
  wide              784-2048-2048-10 (bench/race/wide.yaml), optax.adam(1e-3)
  deep              784, eight hidden layers of 128, 10
                    (bench/race/deep.yaml), optax.adam(1e-3)
  mlp_adamw_cosine  784-256-128-10 (config/jobs/mnist_mlp_adamw_cosine.yaml),
                    optax.chain(optax.clip_by_global_norm(1.0),
                    optax.adamw(schedule, weight_decay=0.01)) with
                    schedule = optax.warmup_cosine_decay_schedule(0.0, 1e-3,
                    warmup_steps=1000, decay_steps=50000)
  cnn               Flax's MNIST CNN (config/jobs/mnist_cnn.yaml): Conv 32
                    3x3, relu, avg_pool 2x2/2, Conv 64 3x3, relu, avg_pool,
                    flatten, Dense 256, relu, Dense 10; optax.sgd(0.1, 0.9)
  resnet            config/jobs/mnist_resnet.yaml: stem Conv 16 + BatchNorm
                    + relu, Conv 32 stride 2 + BatchNorm + relu, a residual
                    block (Conv-BN-relu-Conv-BN, plus its input, relu),
                    avg_pool 2x2/2, a second block, the mean over the image,
                    Dense 10; convolutions without bias, BatchNorm momentum
                    0.9 and epsilon 1e-5; optax.sgd(0.1, 0.9)
All MLP layers are relu; every convolution has SAME padding (Flax's
default). Weights are drawn as traind draws them (docs in
proto/traind/v1/job.proto): plain normal, He (sqrt(2/fan_in)) for the MLPs,
LeCun (sqrt(1/fan_in)) for the CNN and the ResNet; biases are zero.
Softmax cross-entropy; MNIST as traind reads it (bench/mnist_idx.py),
flat (N, 784) for the MLPs and NHWC (N, 28, 28, 1) for the others; the
first N training examples with --limit N (the job's train_limit); batch B
(the job's batch_size); the last partial batch of an epoch dropped. In
training BatchNorm normalizes by the batch's statistics and updates its
running averages; the test accuracy uses the running averages.

Two ways to drive an epoch (--style):
  scan  the epoch is one jitted function: the shuffled order from the
        epoch's key and a lax.scan of the training step over its batches,
        with the dataset on the device (as bench/jax_epoch.py);
  loop  the reference program's style: a jitted training step called from
        a Python loop over the batches; the step gathers its batch on the
        device from the epoch's permutation (jax.random.permutation) and
        the step index; the epoch ends by blocking on the last results.
Both donate the training state (parameters, batch statistics, optimizer
state) to the jitted call, so that it is updated in its own buffers.
The jitted function is compiled ahead once to time compilation apart
(compile_sec); the first epoch is the warm-up and is left out; each later
epoch is timed to block_until_ready on its results.

--steps S runs and times S steps of each epoch instead of all of them
(JAX's CPU convolutions take a long time a step): epoch_sec is then the
measured time scaled to the whole epoch's steps, and measured_epoch_sec
keeps the measured one.

XLA's CPU backend gets T threads (default 2: XLA_FLAGS
--xla_cpu_multi_thread_eigen=true intra_op_parallelism_threads=T, set
before JAX is imported unless XLA_FLAGS is set already); bench/cpu_race.sh
also pins the process to the cores with taskset.

Prints one JSON object: framework, style, model, batch, train_examples,
steps_per_epoch (the whole epoch's), steps (those run each epoch),
epoch_sec (the median of the timed epochs, scaled with --steps),
measured_epoch_sec, every epoch's measured seconds, compile_sec,
train_loss (the mean over the last epoch), test_accuracy after the last
epoch, params (the number of trainable parameters), threads, xla_flags
and the versions.
"""
import argparse
import json
import os
import sys
import time
from functools import partial

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

MODELS = ("mlp", "wide", "deep", "mlp_adamw_cosine", "cnn", "resnet")
# Hidden and output widths of the MLP models.
MLP_WIDTHS = {
    "mlp": (256, 128, 10),
    "wide": (2048, 2048, 10),
    "deep": (128,) * 8 + (10,),
    "mlp_adamw_cosine": (256, 128, 10),
}


def median(xs):
    s = sorted(xs)
    n = len(s)
    return s[n // 2] if n % 2 else 0.5 * (s[n // 2 - 1] + s[n // 2])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model", choices=MODELS)
    ap.add_argument("--style", choices=("scan", "loop"), required=True)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--limit", type=int, default=0,
                    help="use the first N training examples (0: all)")
    ap.add_argument("--steps", type=int, default=0,
                    help="steps run and timed per epoch, scaled to the whole epoch "
                    "(0: the whole epoch)")
    ap.add_argument("--epochs", type=int, default=2, help="at least 2: the first warms up")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    if a.epochs < 2:
        ap.error("--epochs must be at least 2 (the first epoch warms up and is not timed)")
    if a.batch < 1 or a.limit < 0 or a.steps < 0 or a.threads < 1:
        ap.error("--batch and --threads must be positive; --limit and --steps not negative")
    os.environ.setdefault(
        "XLA_FLAGS",
        f"--xla_cpu_multi_thread_eigen=true intra_op_parallelism_threads={a.threads}")

    import flax
    import flax.linen as nn
    import jax
    import jax.numpy as jnp
    import jaxlib
    import numpy as np
    import optax
    from jax import lax

    import mnist_idx

    he = nn.initializers.variance_scaling(2.0, "fan_in", "normal")
    lecun = nn.initializers.variance_scaling(1.0, "fan_in", "normal")

    class MLP(nn.Module):
        widths: tuple

        @nn.compact
        def __call__(self, x, train: bool):
            for w in self.widths[:-1]:
                x = nn.relu(nn.Dense(w, kernel_init=he)(x))
            return nn.Dense(self.widths[-1], kernel_init=he)(x)

    class CNN(nn.Module):
        @nn.compact
        def __call__(self, x, train: bool):
            x = nn.relu(nn.Conv(32, (3, 3), kernel_init=lecun)(x))
            x = nn.avg_pool(x, window_shape=(2, 2), strides=(2, 2))
            x = nn.relu(nn.Conv(64, (3, 3), kernel_init=lecun)(x))
            x = nn.avg_pool(x, window_shape=(2, 2), strides=(2, 2))
            x = x.reshape((x.shape[0], -1))
            x = nn.relu(nn.Dense(256, kernel_init=lecun)(x))
            return nn.Dense(10, kernel_init=lecun)(x)

    class ResidualBlock(nn.Module):
        features: int

        @nn.compact
        def __call__(self, x, train: bool):
            conv = partial(nn.Conv, self.features, (3, 3), use_bias=False, kernel_init=lecun)
            norm = partial(nn.BatchNorm, use_running_average=not train, momentum=0.9,
                           epsilon=1e-5)
            y = nn.relu(norm()(conv()(x)))
            y = norm()(conv()(y))
            return nn.relu(y + x)

    class ResNet(nn.Module):
        @nn.compact
        def __call__(self, x, train: bool):
            conv = partial(nn.Conv, kernel_size=(3, 3), use_bias=False, kernel_init=lecun)
            norm = partial(nn.BatchNorm, use_running_average=not train, momentum=0.9,
                           epsilon=1e-5)
            x = nn.relu(norm()(conv(16)(x)))
            x = nn.relu(norm()(conv(32, strides=(2, 2))(x)))
            x = ResidualBlock(32)(x, train)
            x = nn.avg_pool(x, window_shape=(2, 2), strides=(2, 2))
            x = ResidualBlock(32)(x, train)
            x = jnp.mean(x, axis=(1, 2))
            return nn.Dense(10, kernel_init=lecun)(x)

    if a.model in MLP_WIDTHS:
        model = MLP(MLP_WIDTHS[a.model])
    elif a.model == "cnn":
        model = CNN()
    else:
        model = ResNet()
    if a.model == "mlp_adamw_cosine":
        schedule = optax.warmup_cosine_decay_schedule(
            init_value=0.0, peak_value=1e-3, warmup_steps=1000, decay_steps=50000)
        tx = optax.chain(optax.clip_by_global_norm(1.0),
                         optax.adamw(learning_rate=schedule, weight_decay=0.01))
    elif a.model in MLP_WIDTHS:
        tx = optax.adam(learning_rate=1e-3, b1=0.9, b2=0.999, eps=1e-8)
    else:
        tx = optax.sgd(learning_rate=0.1, momentum=0.9)

    x_train, y_train = mnist_idx.load("train")
    x_test, y_test = mnist_idx.load("t10k")
    if a.limit:
        x_train, y_train = x_train[:a.limit], y_train[:a.limit]
    if a.model in MLP_WIDTHS:
        x_train = x_train.reshape(len(x_train), -1)
        x_test = x_test.reshape(len(x_test), -1)
    n_train = len(y_train)
    batch = a.batch
    steps_per_epoch = n_train // batch
    if steps_per_epoch == 0:
        ap.error(f"--batch {batch} is larger than the {n_train} training examples")
    if a.steps > steps_per_epoch:
        ap.error(f"--steps must be at most {steps_per_epoch} (0: the whole epoch)")
    steps = a.steps or steps_per_epoch

    device = jax.devices()[0]
    x_train, y_train = jax.device_put(x_train, device), jax.device_put(y_train, device)

    key = jax.random.PRNGKey(a.seed)
    init_key, shuffle_key = jax.random.split(key)
    variables = model.init(init_key, x_train[:1], train=False)
    params = variables["params"]
    batch_stats = variables.get("batch_stats", {})
    # Committed to the device like the step's outputs, so that the second
    # epoch does not compile the step again for differently placed inputs.
    state = jax.device_put((params, batch_stats, tx.init(params)), device)
    n_params = sum(int(np.prod(p.shape)) for p in jax.tree_util.tree_leaves(params))

    def loss_fn(params, batch_stats, x, y):
        logits, updates = model.apply({"params": params, "batch_stats": batch_stats}, x,
                                      train=True, mutable=["batch_stats"])
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        return loss, updates.get("batch_stats", {})

    def train_step(state, x, y):
        params, batch_stats, opt_state = state
        (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            params, batch_stats, x, y)
        updates, opt_state = tx.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), batch_stats, opt_state), loss

    # scan: the whole epoch in one program.
    @partial(jax.jit, donate_argnums=0)
    def scan_epoch(state, key, x, y):
        order = jax.random.permutation(key, x.shape[0])[:steps * batch].reshape(steps, batch)

        def body(state, idx):
            return train_step(state, x[idx], y[idx])

        state, losses = lax.scan(body, state, order)
        return state, losses.mean()

    # loop: one step, its batch rows perm[i*B : (i+1)*B] gathered on the device.
    @partial(jax.jit, donate_argnums=0)
    def loop_step(state, x, y, perm, i):
        idx = lax.dynamic_slice_in_dim(perm, i * batch, batch)
        return train_step(state, x[idx], y[idx])

    @jax.jit
    def correct(params, batch_stats, x, y):
        logits = model.apply({"params": params, "batch_stats": batch_stats}, x, train=False)
        return jnp.sum(jnp.argmax(logits, -1) == y)

    # Compiled ahead (lowering does not consume the donated state), so that
    # its time is known apart from the first epoch's.
    t0 = time.perf_counter()
    if a.style == "scan":
        run_epoch = scan_epoch.lower(state, shuffle_key, x_train, y_train).compile()
    else:
        perm0 = jax.random.permutation(shuffle_key, n_train)
        loop_step.lower(state, x_train, y_train, perm0, 0).compile()
    compile_sec = time.perf_counter() - t0

    times = []
    train_loss = float("nan")
    for e in range(a.epochs):
        k = jax.random.fold_in(shuffle_key, e)
        t0 = time.perf_counter()
        if a.style == "scan":
            state, loss = run_epoch(state, k, x_train, y_train)
            jax.block_until_ready((state, loss))
            times.append(time.perf_counter() - t0)
            train_loss = float(loss)
        else:
            perm = jax.random.permutation(k, n_train)
            losses = []
            for i in range(steps):
                state, loss = loop_step(state, x_train, y_train, perm, i)
                losses.append(loss)
            jax.block_until_ready((state, losses[-1]))
            times.append(time.perf_counter() - t0)
            train_loss = float(np.mean(jax.device_get(losses)))

    params, batch_stats, _ = state
    hits = 0
    for i in range(0, len(y_test), 1000):
        hits += int(correct(params, batch_stats, x_test[i:i + 1000], y_test[i:i + 1000]))
    measured = median(times[1:])
    print(json.dumps({
        "framework": "jax", "style": a.style, "model": a.model, "batch": batch,
        "train_examples": n_train, "steps_per_epoch": steps_per_epoch, "steps": steps,
        "epoch_sec": round(measured * steps_per_epoch / steps, 4),
        "measured_epoch_sec": round(measured, 4), "epochs_sec": [round(t, 4) for t in times],
        "compile_sec": round(compile_sec, 4), "train_loss": round(train_loss, 6),
        "test_accuracy": hits / len(y_test), "params": n_params, "threads": a.threads,
        "xla_flags": os.environ.get("XLA_FLAGS", ""), "device": str(device),
        "versions": {"jax": jax.__version__, "jaxlib": jaxlib.__version__,
                     "flax": flax.__version__, "optax": optax.__version__,
                     "numpy": np.__version__},
    }))


if __name__ == "__main__":
    main()
