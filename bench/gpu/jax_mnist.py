#!/usr/bin/env python3
"""The reference program in JAX + Optax, timed per epoch.

    python3 bench/gpu/jax_mnist.py [--scan] [--epochs N] [--data-dir ROOT]
                                   [--matmul-precision highest|default]

784 -> 256 -> 128 -> 10 MLP, ReLU, He-normal weights (std sqrt(2/fan_in)),
zero biases, softmax cross-entropy, optax.adam(1e-3) (b1 0.9, b2 0.999,
eps 1e-8), batch 128 with the last partial batch dropped (468 steps per
epoch), reshuffled every epoch from an explicit PRNG key: the program
config/jobs/mnist_mlp.yaml describes, written the way JAX users write it.

The whole dataset goes to the device once (jax.device_put). Two ways to
drive an epoch:
  default  a Python loop over the batches; each step is one jitted call that
           gathers its batch on the device by indexing the epoch's
           permutation (jax-loop).
  --scan   the whole epoch is one jitted lax.scan over the batches
           (jax-scan), which leaves Python out of the step loop.
Each epoch is timed from its first dispatch to block_until_ready on the
parameters at its end; epoch 1 includes compilation. Prints one JSON line:
impl, epoch_sec, steady_epoch_sec (the median of epochs 2..N), test
accuracy, device and versions.

--matmul-precision highest (the default here) keeps float32 matmuls in
float32, as traind's cuBLAS gemm and PyTorch's default do; "default" is
JAX's own default, which lets XLA use TF32 tensor cores on Ampere and later.

MNIST is read from the four gzipped IDX files under ROOT/mnist/ (ROOT:
--data-dir, else $TRAIND_DATA_DIR); pixels are scaled to [0, 1].
"""

import sys
import time
from functools import partial

import numpy as np

from mnist_common import BATCH, WIDTHS, arg_parser, load_mnist, parse_checked, report


def parse_args():
    p = arg_parser(__doc__.split("\n")[0])
    p.add_argument("--scan", action="store_true",
                   help="run each epoch as one jitted lax.scan")
    p.add_argument("--matmul-precision", choices=("highest", "default"),
                   default="highest")
    return parse_checked(p)


def main():
    args = parse_args()
    import jax
    import jax.numpy as jnp
    import optax
    from jax import lax

    if args.matmul_precision == "highest":
        jax.config.update("jax_default_matmul_precision", "highest")

    train_x, train_y, test_x, test_y = load_mnist(args.data_dir, np.int32)
    n_train = train_x.shape[0]
    steps = n_train // BATCH

    def init_params(key):
        """He-normal weights (std sqrt(2/fan_in)), zero biases."""
        params = []
        for k, (fan_in, fan_out) in zip(jax.random.split(key, len(WIDTHS) - 1),
                                        zip(WIDTHS[:-1], WIDTHS[1:])):
            w = jax.random.normal(k, (fan_in, fan_out), jnp.float32) * np.sqrt(2.0 / fan_in)
            params.append({"w": w, "b": jnp.zeros((fan_out,), jnp.float32)})
        return params

    def forward(params, x):
        for layer in params[:-1]:
            x = jax.nn.relu(x @ layer["w"] + layer["b"])
        return x @ params[-1]["w"] + params[-1]["b"]

    def loss_fn(params, x, y):
        logits = forward(params, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    optimizer = optax.adam(1e-3, b1=0.9, b2=0.999, eps=1e-8)

    def update(params, opt_state, x, y):
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    # One training step: the batch is rows perm[i*B : (i+1)*B] of the
    # device-resident dataset, gathered inside the jitted call. Parameters
    # and optimizer state are donated: updated in their own buffers.
    @partial(jax.jit, donate_argnums=(0, 1))
    def train_step(params, opt_state, xs, ys, perm, i):
        idx = lax.dynamic_slice_in_dim(perm, i * BATCH, BATCH)
        return update(params, opt_state, xs[idx], ys[idx])

    # One whole epoch: permutation, batching and every step in one program.
    @partial(jax.jit, donate_argnums=(0, 1))
    def train_epoch(params, opt_state, xs, ys, key):
        perm = jax.random.permutation(key, n_train)[:steps * BATCH]

        def body(carry, idx):
            p, s = carry
            p, s, loss = update(p, s, xs[idx], ys[idx])
            return (p, s), loss

        (params, opt_state), losses = lax.scan(body, (params, opt_state),
                                               perm.reshape(steps, BATCH))
        return params, opt_state, losses.mean()

    @jax.jit
    def accuracy(params, x, y):
        return jnp.mean(jnp.argmax(forward(params, x), axis=-1) == y)

    device = jax.devices()[0]
    xs, ys = jax.device_put(train_x, device), jax.device_put(train_y, device)
    tx, ty = jax.device_put(test_x, device), jax.device_put(test_y, device)

    key = jax.random.key(args.seed)
    key, init_key = jax.random.split(key)
    # Committed to the device like the step's outputs, so that epoch 2
    # does not compile the step again for differently placed inputs.
    params = jax.device_put(init_params(init_key), device)
    opt_state = jax.device_put(optimizer.init(params), device)
    jax.block_until_ready((xs, ys, tx, ty, params, opt_state))

    epoch_sec, train_loss = [], []
    for _ in range(args.epochs):
        key, epoch_key = jax.random.split(key)
        t0 = time.perf_counter()
        if args.scan:
            params, opt_state, loss = train_epoch(params, opt_state, xs, ys, epoch_key)
            jax.block_until_ready(params)
            epoch_sec.append(time.perf_counter() - t0)
            train_loss.append(float(loss))
        else:
            perm = jax.random.permutation(epoch_key, n_train)
            losses = []
            for i in range(steps):
                params, opt_state, loss = train_step(params, opt_state, xs, ys, perm, i)
                losses.append(loss)
            jax.block_until_ready(params)
            epoch_sec.append(time.perf_counter() - t0)
            train_loss.append(float(np.mean(jax.device_get(losses))))

    report("jax-scan" if args.scan else "jax-loop", epoch_sec, accuracy(params, tx, ty),
           train_loss[-1], args.epochs, steps, args.matmul_precision,
           f"{device.platform}: {getattr(device, 'device_kind', str(device))}",
           f"jax {jax.__version__}, optax {optax.__version__}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
