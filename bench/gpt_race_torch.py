#!/usr/bin/env python3
"""bench/gpt_race.sh's PyTorch contestant: config/jobs/shakespeare_char.yaml's
character-level GPT written as nanoGPT's model.py writes it, trained until
its validation loss falls below a target.

Usage: gpt_race_torch.py --style eager|compile [--data FILE] [--threads T]
                         [--max-steps N] [--eval-every N] [--eval-tiles N]
                         [--target LOSS] [--skip-steps N] [--seed K]
                         [model and optimizer options, below]

The model (nanoGPT's GPT with its defaults replaced by the job's): token
and position embeddings (wte, wpe) summed; n_layer Blocks of LayerNorm
(with bias) -> CausalSelfAttention (one fused c_attn Linear to queries,
keys and values, n_head heads, F.scaled_dot_product_attention with
is_causal, the c_proj Linear) -> residual add -> LayerNorm -> MLP (c_fc to
4 n_embd, GELU with the tanh approximation as traind's gelu, c_proj) ->
residual add; ln_f; an lm_head Linear with bias that is not tied to wte
(traind's head is a dense layer of its own), over a vocabulary of
--vocab-size (the job's num_embeddings: 128; the corpus has fewer
characters, the rest of the rows are never read as inputs), LayerNorm
epsilon 1e-5, no dropout. The parameter count is then traind's.

Weights are drawn as traind draws the job's layers (its defaults, documented
in proto/traind/v1/job.proto): every Linear's weight and both embeddings
normal with stddev sqrt(1 / fan_in) (LeCun; for the embeddings fan_in is
n_embd), biases zero, LayerNorm scale one and shift zero; so that the steps
to the target compare like for like. --init nanogpt draws nanoGPT's
instead (normal 0.02, the c_proj weights 0.02 / sqrt(2 n_layer)).

The optimizer: torch.nn.utils.clip_grad_norm_(max_norm), then
torch.optim.AdamW(betas (0.9, b2), eps 1e-8, weight_decay) over every
parameter (optax.adamw without a mask, as traind: nanoGPT's
configure_optimizers would exempt the biases and norms); the learning rate
set before each step as nanoGPT's get_lr does, to
optax.warmup_cosine_decay_schedule(init_value, peak_value, warmup_steps,
decay_steps, end_value) at the update count (torch's AdamW decays the
weights by lr * weight_decay, as optax.adamw does).

The data: the text file's characters (UTF-8 code points) as ids, the
index of each in the sorted set of the file's characters (the vocabulary
traind builds); the first floor((1 - val_fraction) N) for training, the
rest held out. A training batch is drawn as nanoGPT's get_batch:
torch.randint offsets in [0, n_train - block), x the windows of block ids
at them and y the windows one further. The validation set is the first
--eval-tiles tiles of the held-out part (windows of block ids at
multiples of block), as traind's test_limit; its loss is the mean
cross-entropy over every position in nats, evaluated in one batch under
torch.no_grad (model.eval()) every --eval-every steps. Training stops at
the first evaluation below --target, or after --max-steps.

--style eager runs the model as it is; --style compile wraps it in
torch.compile (as nanoGPT's compile=True), so that the first steps (and the
first evaluation) also compile. If torch.compile fails, the program prints
one JSON object with "error" and exits with status 3.

torch.set_num_threads(T) (default 2); bench/gpt_race.sh also pins the
process to the cores with taskset.

Each evaluation is also written to stderr as traind run writes its own,
"step N  train loss L  test loss V  S s", S the training seconds so far.
At the end one JSON object goes to stdout: framework, style, params,
steps, the evaluations (step, val_loss, train_sec: the seconds spent in
training steps up to it, evaluations left out, the first steps' compile
included), target, target_step and train_sec_to_target (null when not
reached), steady_tokens_per_sec (the tokens of the steps after the first
--skip-steps, default 20, over their time), steady_step_ms (their median
step time), first_step_sec, eval_sec (all evaluations), train_loss (the
mean of the last 100 steps), threads and the versions.
"""
import argparse
import json
import math
import os
import sys
import time


def warmup_cosine_decay(step, init_value, peak_value, warmup_steps, decay_steps, end_value):
    """optax.warmup_cosine_decay_schedule at update count `step`."""
    if step < warmup_steps:
        return init_value + (peak_value - init_value) * step / warmup_steps
    t = min(step - warmup_steps, decay_steps - warmup_steps) / max(decay_steps - warmup_steps, 1)
    return end_value + (peak_value - end_value) * 0.5 * (1.0 + math.cos(math.pi * t))


def median(xs):
    s = sorted(xs)
    n = len(s)
    return s[n // 2] if n % 2 else 0.5 * (s[n // 2 - 1] + s[n // 2])


def load_text(path, val_fraction):
    """(train ids, val ids, vocabulary) as traind's text dataset makes them."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    chars = sorted(set(text))
    index = {c: i for i, c in enumerate(chars)}
    ids = [index[c] for c in text]
    split = math.floor((1.0 - val_fraction) * len(ids))
    return ids[:split], ids[split:], chars


def parse_args(doc, framework_styles):
    ap = argparse.ArgumentParser(description=doc.split("\n")[0])
    if len(framework_styles) > 1:
        ap.add_argument("--style", choices=framework_styles, required=True)
    else:
        ap.add_argument("--style", choices=framework_styles, default=framework_styles[0])
    ap.add_argument("--data", default=os.path.join(os.environ.get("TRAIND_DATA_DIR", ""),
                                                   "shakespeare", "shakespeare.txt"))
    ap.add_argument("--val-fraction", type=float, default=0.1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-steps", type=int, default=1500)
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--eval-tiles", type=int, default=200)
    ap.add_argument("--target", type=float, default=2.0)
    ap.add_argument("--skip-steps", type=int, default=20,
                    help="steps left out of the steady tokens/s (compile, warm-up)")
    ap.add_argument("--seed", type=int, default=1337)
    ap.add_argument("--init", choices=("traind", "nanogpt"), default="traind")
    # The model and the optimizer: config/jobs/shakespeare_char.yaml's.
    ap.add_argument("--batch", type=int, default=12)
    ap.add_argument("--block", type=int, default=64)
    ap.add_argument("--vocab-size", type=int, default=128)
    ap.add_argument("--n-layer", type=int, default=4)
    ap.add_argument("--n-head", type=int, default=4)
    ap.add_argument("--n-embd", type=int, default=128)
    ap.add_argument("--init-value", type=float, default=0.0)
    ap.add_argument("--peak-value", type=float, default=1e-3)
    ap.add_argument("--warmup-steps", type=int, default=100)
    ap.add_argument("--decay-steps", type=int, default=2000)
    ap.add_argument("--end-value", type=float, default=1e-4)
    ap.add_argument("--b2", type=float, default=0.99)
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--max-norm", type=float, default=1.0)
    a = ap.parse_args()
    for name in ("threads", "max_steps", "eval_every", "eval_tiles", "batch", "block",
                 "vocab_size", "n_layer", "n_head", "n_embd"):
        if getattr(a, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be at least 1")
    if a.n_embd % a.n_head:
        ap.error("--n-embd must be a multiple of --n-head")
    if not 0.0 < a.val_fraction < 1.0:
        ap.error("--val-fraction must be in (0, 1)")
    if a.skip_steps < 0 or a.skip_steps >= a.max_steps:
        ap.error("--skip-steps must be at least 0 and below --max-steps")
    if not os.path.isfile(a.data):
        ap.error(f"--data {a.data}: no such file (set TRAIND_DATA_DIR or pass --data)")
    return ap, a


def main():
    ap, a = parse_args(__doc__, ("eager", "compile"))

    import numpy as np
    import torch
    import torch.nn.functional as F
    from torch import nn

    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)

    train_ids, val_ids, chars = load_text(a.data, a.val_fraction)
    if len(chars) > a.vocab_size:
        ap.error(f"the text has {len(chars)} characters, more than --vocab-size {a.vocab_size}")
    train_data = torch.tensor(train_ids, dtype=torch.long)
    val = torch.tensor(val_ids, dtype=torch.long)
    tiles = min(a.eval_tiles, (len(val) - 1) // a.block)
    if tiles < 1 or len(train_data) <= a.block:
        ap.error(f"--data {a.data}: too short for windows of {a.block} characters")
    x_val = val[:tiles * a.block].view(tiles, a.block)
    y_val = val[1:tiles * a.block + 1].view(tiles, a.block)

    class CausalSelfAttention(nn.Module):
        def __init__(self):
            super().__init__()
            self.c_attn = nn.Linear(a.n_embd, 3 * a.n_embd, bias=True)
            self.c_proj = nn.Linear(a.n_embd, a.n_embd, bias=True)

        def forward(self, x):
            B, T, C = x.size()
            q, k, v = self.c_attn(x).split(a.n_embd, dim=2)
            k = k.view(B, T, a.n_head, C // a.n_head).transpose(1, 2)
            q = q.view(B, T, a.n_head, C // a.n_head).transpose(1, 2)
            v = v.view(B, T, a.n_head, C // a.n_head).transpose(1, 2)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=None, dropout_p=0.0,
                                               is_causal=True)
            y = y.transpose(1, 2).contiguous().view(B, T, C)
            return self.c_proj(y)

    class MLP(nn.Module):
        def __init__(self):
            super().__init__()
            self.c_fc = nn.Linear(a.n_embd, 4 * a.n_embd, bias=True)
            self.gelu = nn.GELU(approximate="tanh")
            self.c_proj = nn.Linear(4 * a.n_embd, a.n_embd, bias=True)

        def forward(self, x):
            return self.c_proj(self.gelu(self.c_fc(x)))

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln_1 = nn.LayerNorm(a.n_embd, eps=1e-5, bias=True)
            self.attn = CausalSelfAttention()
            self.ln_2 = nn.LayerNorm(a.n_embd, eps=1e-5, bias=True)
            self.mlp = MLP()

        def forward(self, x):
            x = x + self.attn(self.ln_1(x))
            x = x + self.mlp(self.ln_2(x))
            return x

    class GPT(nn.Module):
        def __init__(self):
            super().__init__()
            self.transformer = nn.ModuleDict(dict(
                wte=nn.Embedding(a.vocab_size, a.n_embd),
                wpe=nn.Embedding(a.block, a.n_embd),
                h=nn.ModuleList([Block() for _ in range(a.n_layer)]),
                ln_f=nn.LayerNorm(a.n_embd, eps=1e-5, bias=True),
            ))
            # Not tied to wte: traind's head is a dense layer of its own.
            self.lm_head = nn.Linear(a.n_embd, a.vocab_size, bias=True)
            for name, p in self.named_parameters():
                if name.endswith(".bias"):
                    nn.init.zeros_(p)
                elif "ln_" in name:
                    nn.init.ones_(p)
                elif a.init == "nanogpt":
                    std = 0.02 / math.sqrt(2 * a.n_layer) if name.endswith("c_proj.weight") else 0.02
                    nn.init.normal_(p, std=std)
                elif "wte" in name or "wpe" in name:
                    nn.init.normal_(p, std=math.sqrt(1.0 / a.n_embd))
                else:  # a Linear's (out, in) weight
                    nn.init.normal_(p, std=math.sqrt(1.0 / p.shape[1]))

        def forward(self, idx, targets):
            b, t = idx.size()
            pos = torch.arange(0, t, dtype=torch.long)
            x = self.transformer.wte(idx) + self.transformer.wpe(pos)
            for block in self.transformer.h:
                x = block(x)
            logits = self.lm_head(self.transformer.ln_f(x))
            return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))

    model = GPT()
    n_params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=a.init_value, betas=(0.9, a.b2), eps=1e-8,
                            weight_decay=a.weight_decay)
    run = model
    if a.style == "compile":
        run = torch.compile(model)

    def get_batch():
        ix = torch.randint(len(train_data) - a.block, (a.batch,))
        x = torch.stack([train_data[i:i + a.block] for i in ix])
        y = torch.stack([train_data[i + 1:i + 1 + a.block] for i in ix])
        return x, y

    def lr_at(it):
        return warmup_cosine_decay(it, a.init_value, a.peak_value, a.warmup_steps,
                                   a.decay_steps, a.end_value)

    tokens_per_step = a.batch * a.block
    step_sec, losses, evals = [], [], []
    train_sec = eval_sec = 0.0
    target_step = train_sec_to_target = None

    def fail(e):
        print(json.dumps({"framework": "torch", "style": a.style,
                          "error": f"{type(e).__name__}: {e}".splitlines()[0][:500],
                          "versions": {"torch": torch.__version__}}))
        print(f"gpt_race_torch.py: {a.style} failed: {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(3)

    step = 0
    while step < a.max_steps:
        model.train()
        t0 = time.perf_counter()
        lr = lr_at(step)
        for g in opt.param_groups:
            g["lr"] = lr
        x, y = get_batch()
        try:
            loss = run(x, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
        except Exception as e:  # torch.compile's failures surface at the first call
            if a.style == "compile" and step == 0:
                fail(e)
            raise
        torch.nn.utils.clip_grad_norm_(model.parameters(), a.max_norm)
        opt.step()
        losses.append(loss.detach())
        dt = time.perf_counter() - t0
        step += 1
        step_sec.append(dt)
        train_sec += dt
        if step % a.eval_every == 0 or step == a.max_steps:
            v0 = time.perf_counter()
            model.eval()
            try:
                with torch.no_grad():
                    val_loss = float(run(x_val, y_val))
            except Exception as e:
                if a.style == "compile" and not evals:
                    fail(e)
                raise
            eval_sec += time.perf_counter() - v0
            recent = float(torch.stack(losses[-a.eval_every:]).mean())
            evals.append({"step": step, "val_loss": round(val_loss, 6),
                          "train_sec": round(train_sec, 4)})
            print(f"step {step}  train loss {recent:.4f}  test loss {val_loss:.4f}  "
                  f"{train_sec:.2f} s", file=sys.stderr, flush=True)
            if val_loss < a.target:
                target_step, train_sec_to_target = step, train_sec
                break

    steady = step_sec[a.skip_steps:]
    print(json.dumps({
        "framework": "torch", "style": a.style, "params": n_params, "init": a.init,
        "vocab_chars": len(chars), "train_tokens": len(train_data), "val_tiles": tiles,
        "batch": a.batch, "block": a.block, "steps": step, "evals": evals,
        "target": a.target, "target_step": target_step,
        "train_sec_to_target": None if train_sec_to_target is None
        else round(train_sec_to_target, 4),
        "steady_tokens_per_sec": round(len(steady) * tokens_per_step / sum(steady), 1)
        if steady else None,
        "steady_step_ms": round(median(steady) * 1e3, 4) if steady else None,
        "first_step_sec": round(step_sec[0], 4), "train_sec": round(train_sec, 4),
        "eval_sec": round(eval_sec, 4),
        "train_loss": round(float(torch.stack(losses[-100:]).mean()), 6),
        "threads": a.threads, "torch_threads": torch.get_num_threads(),
        "mkldnn": torch.backends.mkldnn.is_available(),
        "versions": {"torch": torch.__version__, "numpy": np.__version__},
    }))


if __name__ == "__main__":
    main()
