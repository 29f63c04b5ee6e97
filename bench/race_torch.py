#!/usr/bin/env python3
"""One row of bench/cpu_race.sh in PyTorch: a model's training epoch, timed.

Usage: race_torch.py MODEL [--batch B] [--limit N] [--steps S]
                     [--epochs E] [--threads T] [--seed K]

MODEL is one of the race's models (the same as bench/race_jax.py's), in
torch.nn and torch.optim as a PyTorch user writes them, each the model and
optimizer of its traind job file:
  mlp               784-256-128-10, Adam(1e-3, betas (0.9, 0.999), eps 1e-8)
  wide              784-2048-2048-10, Adam(1e-3)
  deep              784, eight hidden layers of 128, 10, Adam(1e-3)
  mlp_adamw_cosine  784-256-128-10; clip_grad_norm_(1.0), then AdamW(peak
                    1e-3, weight_decay 0.01) with a LambdaLR that follows
                    optax.warmup_cosine_decay_schedule(0.0, 1e-3,
                    warmup_steps=1000, decay_steps=50000) step by step
                    (torch's AdamW decays the weights by lr * weight_decay
                    as optax.adamw does)
  cnn               Conv2d 32 3x3 (padding 1), ReLU, AvgPool2d 2, Conv2d 64
                    3x3, ReLU, AvgPool2d 2, Flatten, Linear 256, ReLU,
                    Linear 10; SGD(0.1, momentum 0.9)
  resnet            stem Conv2d 16 + BatchNorm2d + ReLU, Conv2d 32 stride 2
                    + BatchNorm2d + ReLU, a residual block (Conv-BN-ReLU-
                    Conv-BN, plus its input, ReLU), AvgPool2d 2, a second
                    block, AdaptiveAvgPool2d(1), Linear 10; convolutions
                    without bias, BatchNorm2d(momentum=0.1, eps=1e-5) (torch's
                    momentum is the weight of the new value: Flax's 0.9);
                    SGD(0.1, momentum 0.9)
Convolutions are 3x3 with padding 1, the same output shapes as Flax's
SAME (for the stride-2 one torch pads both sides by one where SAME pads
only the far side; the work is the same). Images are turned once from
NHWC into the NCHW that torch's convolutions take. Weights are drawn as
traind draws them: plain normal, He (sqrt(2/fan_in)) for the MLPs, LeCun
(sqrt(1/fan_in)) for the CNN and the ResNet; biases zero; BatchNorm scale
one and bias zero. Cross-entropy on integer labels; MNIST as traind reads
it (bench/mnist_idx.py); the first N training examples with --limit N
(the job's train_limit); batch B (the job's batch_size); the last partial
batch of an epoch dropped. model.train() in training (BatchNorm uses the
batch's statistics), model.eval() for the test accuracy (the running
averages).

The eager loop: each epoch draws torch.randperm, and each step indexes
its batch, zero_grad, forward, loss, backward, step (the loss is summed
on the side without a synchronizing .item()). torch.set_num_threads(T)
(default 2); bench/cpu_race.sh also pins the process to the cores with
taskset. The first epoch is the warm-up and is left out; each later epoch
is timed.

--steps S runs and times S steps of each epoch instead of all of them
(CPU convolutions take a long time a step): epoch_sec is then the measured
time scaled to the whole epoch's steps, and measured_epoch_sec keeps the
measured one.

Prints one JSON object: framework, style, model, batch, train_examples,
steps_per_epoch (the whole epoch's), steps (those run each epoch),
epoch_sec (the median of the timed epochs, scaled with --steps),
measured_epoch_sec, every epoch's measured seconds, train_loss (the mean
over the last epoch), test_accuracy after the last epoch, params (the
number of trainable parameters), threads, torch's own thread count, its
MKL and oneDNN availability and the versions.
"""
import argparse
import json
import math
import os
import sys
import time

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


def warmup_cosine_decay(step, init_value=0.0, peak_value=1e-3, warmup_steps=1000,
                        decay_steps=50000, end_value=0.0):
    """optax.warmup_cosine_decay_schedule at update count `step`: linear
    from init_value to peak_value over warmup_steps, then a cosine from
    peak_value to end_value until decay_steps (which count the warmup)."""
    if step < warmup_steps:
        return init_value + (peak_value - init_value) * step / warmup_steps
    t = min(step - warmup_steps, decay_steps - warmup_steps) / (decay_steps - warmup_steps)
    return end_value + (peak_value - end_value) * 0.5 * (1.0 + math.cos(math.pi * t))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model", choices=MODELS)
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

    import numpy as np
    import torch
    import torch.nn.functional as F
    from torch import nn

    import mnist_idx

    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)

    class ResidualBlock(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
            self.bn1 = nn.BatchNorm2d(c, eps=1e-5, momentum=0.1)
            self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
            self.bn2 = nn.BatchNorm2d(c, eps=1e-5, momentum=0.1)

        def forward(self, x):
            y = F.relu(self.bn1(self.conv1(x)))
            y = self.bn2(self.conv2(y))
            return F.relu(y + x)

    if a.model in MLP_WIDTHS:
        layers, fan_in = [], 784
        for w in MLP_WIDTHS[a.model]:
            layers += [nn.Linear(fan_in, w), nn.ReLU()]
            fan_in = w
        model = nn.Sequential(*layers[:-1])
        gain = 2.0  # He normal
    elif a.model == "cnn":
        model = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2, 2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2, 2),
            nn.Flatten(), nn.Linear(7 * 7 * 64, 256), nn.ReLU(), nn.Linear(256, 10))
        gain = 1.0  # LeCun normal
    else:
        model = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16, momentum=0.1),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(32, momentum=0.1), nn.ReLU(),
            ResidualBlock(32), nn.AvgPool2d(2, 2), ResidualBlock(32),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))
        gain = 1.0  # LeCun normal
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.normal_(m.weight, std=math.sqrt(gain / m.weight[0].numel()))
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    n_params = sum(p.numel() for p in model.parameters())

    scheduler = None
    clip = None
    if a.model == "mlp_adamw_cosine":
        peak = 1e-3
        opt = torch.optim.AdamW(model.parameters(), lr=peak, betas=(0.9, 0.999), eps=1e-8,
                                weight_decay=0.01)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda step: warmup_cosine_decay(step, peak_value=peak) / peak)
        clip = 1.0
    elif a.model in MLP_WIDTHS:
        opt = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.9, 0.999), eps=1e-8)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)

    def tensors(split, limit=0):
        x, y = mnist_idx.load(split)
        if limit:
            x, y = x[:limit], y[:limit]
        if a.model in MLP_WIDTHS:
            x = x.reshape(len(x), -1)
        else:
            # NHWC -> NCHW, once, contiguous.
            x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
        return torch.from_numpy(x), torch.from_numpy(y.astype(np.int64))

    x_train, y_train = tensors("train", a.limit)
    x_test, y_test = tensors("t10k")
    n_train = len(y_train)
    batch = a.batch
    steps_per_epoch = n_train // batch
    if steps_per_epoch == 0:
        ap.error(f"--batch {batch} is larger than the {n_train} training examples")
    if a.steps > steps_per_epoch:
        ap.error(f"--steps must be at most {steps_per_epoch} (0: the whole epoch)")
    steps = a.steps or steps_per_epoch

    times = []
    loss_sum = None
    for _ in range(a.epochs):
        model.train()
        t0 = time.perf_counter()
        order = torch.randperm(n_train)
        loss_sum = torch.zeros(())
        for i in range(steps):
            idx = order[i * batch:(i + 1) * batch]
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(x_train[idx]), y_train[idx])
            loss.backward()
            if clip is not None:
                nn.utils.clip_grad_norm_(model.parameters(), clip)
            opt.step()
            if scheduler is not None:
                scheduler.step()
            loss_sum += loss.detach()
        times.append(time.perf_counter() - t0)

    model.eval()
    with torch.no_grad():
        hits = sum(int((model(x_test[i:i + 1000]).argmax(-1) == y_test[i:i + 1000]).sum())
                   for i in range(0, len(y_test), 1000))
    measured = median(times[1:])
    print(json.dumps({
        "framework": "torch", "style": "eager loop", "model": a.model, "batch": batch,
        "train_examples": n_train, "steps_per_epoch": steps_per_epoch, "steps": steps,
        "epoch_sec": round(measured * steps_per_epoch / steps, 4),
        "measured_epoch_sec": round(measured, 4), "epochs_sec": [round(t, 4) for t in times],
        "train_loss": round(float(loss_sum) / steps, 6), "test_accuracy": hits / len(y_test),
        "params": n_params, "threads": a.threads, "torch_threads": torch.get_num_threads(),
        "mkl": torch.backends.mkl.is_available(), "mkldnn": torch.backends.mkldnn.is_available(),
        "versions": {"torch": torch.__version__, "numpy": np.__version__},
    }))


if __name__ == "__main__":
    main()
