#!/usr/bin/env python3
"""One model's training epoch in PyTorch, timed: a baseline of
bench/model_epoch.sh.

Usage: torch_epoch.py cnn|mlp [--epochs N] [--threads T]

The models and optimizers of config/jobs/mnist_cnn.yaml and
config/jobs/mnist_mlp.yaml in torch.nn, trained by the eager loop a
PyTorch user writes: the CNN (Conv2d 32 3x3 SAME, ReLU, AvgPool2d 2, Conv2d
64 3x3 SAME, ReLU, AvgPool2d 2, flatten, Linear 256, ReLU, Linear 10; SGD
lr 0.1, momentum 0.9) with the images turned once from NHWC into the NCHW
that torch's convolutions take, and the MLP 784-256-128-10 (ReLU,
He-normal weights, zero biases; Adam 1e-3); softmax cross-entropy, batch
128, 468 steps an epoch (the last partial batch dropped, as traind does).
Weights are drawn as Flax draws them (LeCun normal for the CNN, He normal
for the MLP; zero biases); the flatten order differs from NHWC's, which
permutes the first Linear layer's inputs and changes no timing.

torch.set_num_threads(T) (default 2). The first epoch is the warm-up and
is left out; each later epoch is timed. Prints one JSON object:
framework, model, epoch_sec (the median of the timed epochs), every
epoch's seconds, test_accuracy after the last epoch, and the versions.
"""
import argparse
import json
import math
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

BATCH = 128


def blas_libraries():
    """The BLAS libraries this process has loaded (Debian's torch calls
    the system's libblas.so.3, whichever library that alternative names)."""
    libs = set()
    with open("/proc/self/maps") as f:
        for line in f:
            path = line.split()[-1]
            if "blas" in os.path.basename(path) or "blis" in os.path.basename(path):
                libs.add(os.path.realpath(path))
    return sorted(libs)


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

    import numpy as np
    import torch
    import torch.nn.functional as F
    from torch import nn

    import mnist_idx

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)

    if a.model == "cnn":
        model = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2, 2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2, 2),
            nn.Flatten(), nn.Linear(7 * 7 * 64, 256), nn.ReLU(), nn.Linear(256, 10))
        gain = 1.0  # LeCun normal
    else:
        model = nn.Sequential(
            nn.Flatten(), nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU(),
            nn.Linear(128, 10))
        gain = 2.0  # He normal
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            fan_in = m.weight[0].numel()
            # Flax's variance_scaling(gain, fan_in, truncated_normal).
            std = math.sqrt(gain / fan_in) / 0.87962566103423978
            nn.init.trunc_normal_(m.weight, std=std, a=-2 * std, b=2 * std)
            nn.init.zeros_(m.bias)
    if a.model == "cnn":
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    else:
        opt = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.9, 0.999), eps=1e-8)

    def tensors(split):
        x, y = mnist_idx.load(split)
        # NHWC -> NCHW, once, contiguous.
        x = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
        return x, torch.from_numpy(y.astype(np.int64))

    x_train, y_train = tensors("train")
    x_test, y_test = tensors("t10k")
    steps = len(y_train) // BATCH
    if a.steps < 0 or a.steps > steps:
        ap.error(f"--steps must be between 1 and {steps} (0: the whole epoch)")
    steps = a.steps or steps

    times = []
    loss_sum = None
    for _ in range(a.epochs):
        model.train()
        t0 = time.perf_counter()
        order = torch.randperm(len(y_train))
        loss_sum = torch.zeros(())
        for i in range(steps):
            idx = order[i * BATCH:(i + 1) * BATCH]
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(x_train[idx]), y_train[idx])
            loss.backward()
            opt.step()
            loss_sum += loss.detach()
        times.append(time.perf_counter() - t0)

    model.eval()
    with torch.no_grad():
        hits = sum(int((model(x_test[i:i + 1000]).argmax(-1) == y_test[i:i + 1000]).sum())
                   for i in range(0, len(y_test), 1000))
    timed = sorted(times[1:])
    n = len(timed)
    med = timed[n // 2] if n % 2 else 0.5 * (timed[n // 2 - 1] + timed[n // 2])
    print(json.dumps({
        "framework": "torch", "model": a.model, "style": "eager loop",
        "epoch_sec": round(med, 4), "epochs_sec": [round(t, 4) for t in times],
        "train_loss": round(float(loss_sum) / steps, 6), "test_accuracy": hits / len(y_test),
        "threads": a.threads, "steps_per_epoch": steps, "torch_threads": torch.get_num_threads(),
        "versions": {"torch": torch.__version__, "numpy": np.__version__},
        "blas": blas_libraries(),
    }))


if __name__ == "__main__":
    main()
