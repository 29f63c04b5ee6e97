#!/usr/bin/env python3
"""bench/gpt_race.sh's JAX contestant: config/jobs/shakespeare_char.yaml's
character-level GPT in flax.linen and optax, trained until its validation
loss falls below a target.

Usage: gpt_race_jax.py [--style step] [--data FILE] [--threads T]
                       [--max-steps N] [--eval-every N] [--eval-tiles N]
                       [--target LOSS] [--skip-steps N] [--seed K]
                       [model and optimizer options]

The options, the data and the report are bench/gpt_race_torch.py's (its
docstring says them; the helpers are shared): the same nanoGPT-shaped model
(token and position embeddings; n_layer blocks of nn.LayerNorm(epsilon
1e-5), causal self-attention written out as GPT-2's (one fused nn.Dense to
queries, keys and values, heads of n_embd / n_head, scores scaled by
1/sqrt(head size), the causal mask, softmax, an output nn.Dense), a
residual add, nn.LayerNorm, nn.Dense 4 n_embd, nn.gelu (its default is
the tanh approximation), nn.Dense n_embd, a residual add; the final
nn.LayerNorm and a dense head with bias over --vocab-size), drawn as
traind draws the job's layers: LeCun normal (stddev sqrt(1 / fan_in), not
truncated) for every kernel and both embeddings, biases zero.

The optimizer: optax.chain(optax.clip_by_global_norm(max_norm),
optax.adamw(schedule, b1=0.9, b2=b2, eps=1e-8, weight_decay=wd)) with
schedule = optax.warmup_cosine_decay_schedule(init_value, peak_value,
warmup_steps, decay_steps, end_value). Loss: optax's
softmax_cross_entropy_with_integer_labels, the mean over every position.

One jitted training step (params and optimizer state donated), called from
a Python loop with a batch drawn on the host as nanoGPT's get_batch draws
it (numpy offsets in [0, n_train - block), the windows at them and one
further); the first call compiles it, inside the training time. The
validation loss is one jitted call on the --eval-tiles tiles, kept on the
device. Steps are timed in stretches that end with block_until_ready: the
first --skip-steps (default 20), then each stretch up to an evaluation; the
steady tokens/s is the tokens of the steps after the first --skip-steps
over the stretches' time (steady_step_ms is that time over those steps,
not a median).

XLA's CPU backend gets T threads (default 2: XLA_FLAGS
--xla_cpu_multi_thread_eigen=true intra_op_parallelism_threads=T, set
before JAX is imported unless XLA_FLAGS is set already); bench/gpt_race.sh
also pins the process to the cores with taskset.
"""
import json
import math
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from gpt_race_torch import load_text, parse_args  # noqa: E402


def main():
    ap, a = parse_args(__doc__, ("step",))
    if a.init != "traind":
        ap.error("--init nanogpt is bench/gpt_race_torch.py's only")
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

    train_ids, val_ids, chars = load_text(a.data, a.val_fraction)
    if len(chars) > a.vocab_size:
        ap.error(f"the text has {len(chars)} characters, more than --vocab-size {a.vocab_size}")
    train_data = np.asarray(train_ids, dtype=np.int32)
    val = np.asarray(val_ids, dtype=np.int32)
    tiles = min(a.eval_tiles, (len(val) - 1) // a.block)
    if tiles < 1 or len(train_data) <= a.block:
        ap.error(f"--data {a.data}: too short for windows of {a.block} characters")
    device = jax.devices()[0]
    x_val = jax.device_put(val[:tiles * a.block].reshape(tiles, a.block), device)
    y_val = jax.device_put(val[1:tiles * a.block + 1].reshape(tiles, a.block), device)

    lecun = nn.initializers.variance_scaling(1.0, "fan_in", "normal")
    embed_init = nn.initializers.normal(stddev=math.sqrt(1.0 / a.n_embd))
    dense = lambda f: nn.Dense(f, kernel_init=lecun)  # noqa: E731
    C, H = a.n_embd, a.n_head

    class CausalSelfAttention(nn.Module):
        @nn.compact
        def __call__(self, x):
            B, T, _ = x.shape
            q, k, v = jnp.split(dense(3 * C)(x), 3, axis=-1)
            heads = lambda t: t.reshape(B, T, H, C // H).transpose(0, 2, 1, 3)  # noqa: E731
            q, k, v = heads(q), heads(k), heads(v)
            att = (q @ k.transpose(0, 1, 3, 2)) * (1.0 / math.sqrt(C // H))
            mask = jnp.tril(jnp.ones((T, T), dtype=bool))
            att = jax.nn.softmax(jnp.where(mask, att, -jnp.inf), axis=-1)
            y = (att @ v).transpose(0, 2, 1, 3).reshape(B, T, C)
            return dense(C)(y)

    class Block(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = x + CausalSelfAttention()(nn.LayerNorm(epsilon=1e-5)(x))
            h = nn.LayerNorm(epsilon=1e-5)(x)
            return x + dense(C)(nn.gelu(dense(4 * C)(h), approximate=True))

    class GPT(nn.Module):
        @nn.compact
        def __call__(self, idx):
            wpe = self.param("wpe", embed_init, (a.block, C))
            x = nn.Embed(a.vocab_size, C, embedding_init=embed_init)(idx) + wpe[:idx.shape[1]]
            for _ in range(a.n_layer):
                x = Block()(x)
            return dense(a.vocab_size)(nn.LayerNorm(epsilon=1e-5)(x))

    model = GPT()
    params = model.init(jax.random.PRNGKey(a.seed), jnp.zeros((1, a.block), jnp.int32))["params"]
    n_params = sum(int(np.prod(p.shape)) for p in jax.tree_util.tree_leaves(params))
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=a.init_value, peak_value=a.peak_value, warmup_steps=a.warmup_steps,
        decay_steps=a.decay_steps, end_value=a.end_value)
    tx = optax.chain(optax.clip_by_global_norm(a.max_norm),
                     optax.adamw(learning_rate=schedule, b1=0.9, b2=a.b2, eps=1e-8,
                                 weight_decay=a.weight_decay))
    state = jax.device_put((params, tx.init(params)), device)

    def loss_fn(params, x, y):
        logits = model.apply({"params": params}, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    def train_step(state, x, y):
        params, opt_state = state
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
        updates, opt_state = tx.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), loss

    train_step = jax.jit(train_step, donate_argnums=0)
    eval_loss = jax.jit(loss_fn)

    rng = np.random.default_rng(a.seed)
    offsets = np.arange(a.block)

    def get_batch():
        ix = rng.integers(0, len(train_data) - a.block, size=a.batch)
        return train_data[ix[:, None] + offsets], train_data[ix[:, None] + offsets + 1]

    tokens_per_step = a.batch * a.block
    losses, evals = [], []
    train_sec = eval_sec = steady_sec = 0.0
    first_step_sec = None
    target_step = train_sec_to_target = None
    step = 0
    t0 = time.perf_counter()
    while step < a.max_steps:
        x, y = get_batch()
        state, loss = train_step(state, x, y)
        losses.append(loss)
        step += 1
        at_eval = step % a.eval_every == 0 or step == a.max_steps
        if step == 1 or step == a.skip_steps or at_eval:
            jax.block_until_ready((state, loss))
            dt = time.perf_counter() - t0
            train_sec += dt
            if step > a.skip_steps:
                steady_sec += dt
            if step == 1:
                first_step_sec = dt
            if at_eval:
                v0 = time.perf_counter()
                val_loss = float(eval_loss(state[0], x_val, y_val))
                eval_sec += time.perf_counter() - v0
                recent = float(np.mean(jax.device_get(losses[-a.eval_every:])))
                evals.append({"step": step, "val_loss": round(val_loss, 6),
                              "train_sec": round(train_sec, 4)})
                print(f"step {step}  train loss {recent:.4f}  test loss {val_loss:.4f}  "
                      f"{train_sec:.2f} s", file=sys.stderr, flush=True)
                if val_loss < a.target:
                    target_step, train_sec_to_target = step, train_sec
                    break
            t0 = time.perf_counter()

    steady_steps = step - a.skip_steps
    print(json.dumps({
        "framework": "jax", "style": a.style, "params": n_params, "init": a.init,
        "vocab_chars": len(chars), "train_tokens": len(train_data), "val_tiles": tiles,
        "batch": a.batch, "block": a.block, "steps": step, "evals": evals,
        "target": a.target, "target_step": target_step,
        "train_sec_to_target": None if train_sec_to_target is None
        else round(train_sec_to_target, 4),
        "steady_tokens_per_sec": round(steady_steps * tokens_per_step / steady_sec, 1)
        if steady_steps > 0 else None,
        "steady_step_ms": round(steady_sec / steady_steps * 1e3, 4) if steady_steps > 0 else None,
        "first_step_sec": round(first_step_sec, 4), "train_sec": round(train_sec, 4),
        "eval_sec": round(eval_sec, 4),
        "train_loss": round(float(np.mean(jax.device_get(losses[-100:]))), 6),
        "threads": a.threads, "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "device": str(device),
        "versions": {"jax": jax.__version__, "jaxlib": jaxlib.__version__,
                     "flax": flax.__version__, "optax": optax.__version__,
                     "numpy": np.__version__},
    }))


if __name__ == "__main__":
    main()
