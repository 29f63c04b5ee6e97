#!/usr/bin/env python3
"""The reference program in PyTorch, timed per epoch.

    python3 bench/gpu/torch_mnist.py [--cuda-graphs] [--epochs N]
                                     [--data-dir ROOT] [--device cuda|cpu]

The same program as bench/gpu/jax_mnist.py and config/jobs/mnist_mlp.yaml:
784 -> 256 -> 128 -> 10 MLP, ReLU, kaiming_normal_(fan_in, relu) weights
(std sqrt(2/fan_in)), zero biases, cross-entropy, Adam(lr 1e-3, betas
(0.9, 0.999), eps 1e-8; eps outside the square root as in Optax), batch 128
with the last partial batch dropped (468 steps per epoch), a fresh
permutation every epoch drawn on the device from a seeded generator. The
whole dataset is on the device; batches are gathered there.

  default        eager mode, as PyTorch users write it (torch-eager).
  --cuda-graphs  the whole training step -- batch gather, forward, backward
                 and Adam (capturable=True) -- captured once as a CUDA graph
                 and replayed (torch-graphs). The graph reads its batch
                 indices from a static permutation buffer at a step counter
                 it advances itself, so a step costs one replay. Needs CUDA.

Each epoch is timed from its first launch to torch.cuda.synchronize() at its
end; epoch 1 includes warm-up and capture. Float32 matmuls stay float32
(PyTorch's default; TF32 off), as in traind. Prints one JSON line: impl,
epoch_sec, steady_epoch_sec (the median of epochs 2..N), test accuracy,
device and versions.

MNIST is read from the four gzipped IDX files under ROOT/mnist/ (ROOT:
--data-dir, else $TRAIND_DATA_DIR); pixels are scaled to [0, 1].
"""

import argparse
import gzip
import json
import os
import statistics
import struct
import sys
import time

import numpy as np

BATCH = 128
WIDTHS = (784, 256, 128, 10)
FILES = {
    "train_x": "train-images-idx3-ubyte.gz",
    "train_y": "train-labels-idx1-ubyte.gz",
    "test_x": "t10k-images-idx3-ubyte.gz",
    "test_y": "t10k-labels-idx1-ubyte.gz",
}
# Eager steps run on a side stream before capture, as torch.cuda.graphs
# requires; they are real training steps of epoch 1.
WARMUP_STEPS = 3


def read_idx(path):
    """One gzipped IDX file as a uint8 array of the shape its header gives."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    zero, dtype, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file")
    dims = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise ValueError(f"{path}: {body.size} bytes of data for shape {dims}")
    return body.reshape(dims)


def load_mnist(root):
    """(train_x, train_y, test_x, test_y): images (N, 784) float32 in [0, 1],
    labels (N,) int64."""
    d = os.path.join(root, "mnist")
    a = {k: read_idx(os.path.join(d, v)) for k, v in FILES.items()}

    def pixels(x):
        return x.reshape(x.shape[0], -1).astype(np.float32) / 255.0

    return (pixels(a["train_x"]), a["train_y"].astype(np.int64),
            pixels(a["test_x"]), a["test_y"].astype(np.int64))


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-dir", default=os.environ.get("TRAIND_DATA_DIR"),
                   help="data root holding mnist/ (default $TRAIND_DATA_DIR)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cuda-graphs", action="store_true",
                   help="capture the whole step as one CUDA graph and replay it")
    p.add_argument("--device", default=None,
                   help="torch device (default: cuda when available, else cpu)")
    args = p.parse_args()
    if not args.data_dir:
        p.error("no data root: pass --data-dir or set TRAIND_DATA_DIR")
    if args.epochs < 1:
        p.error("--epochs must be at least 1")
    return args


def main():
    args = parse_args()
    import torch
    import torch.nn.functional as F
    from torch import nn

    dev = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.cuda_graphs and dev.type != "cuda":
        why = (f"the device is {dev}" if torch.cuda.is_available()
               else "torch.cuda.is_available() is False")
        print(f"torch_mnist: --cuda-graphs needs a CUDA device ({why}); "
              "drop --cuda-graphs to run eagerly", file=sys.stderr)
        return 2
    # Float32 matmuls in float32, whatever the environment asked for.
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(args.seed)

    train_x, train_y, test_x, test_y = load_mnist(args.data_dir)
    n_train = train_x.shape[0]
    steps = n_train // BATCH

    # The dataset, resident on the device: (60000, 784) float32 and (60000,).
    xs, ys = torch.from_numpy(train_x).to(dev), torch.from_numpy(train_y).to(dev)
    tx, ty = torch.from_numpy(test_x).to(dev), torch.from_numpy(test_y).to(dev)

    layers = []
    for fan_in, fan_out in zip(WIDTHS[:-1], WIDTHS[1:]):
        lin = nn.Linear(fan_in, fan_out)
        nn.init.kaiming_normal_(lin.weight, mode="fan_in", nonlinearity="relu")
        nn.init.zeros_(lin.bias)
        layers += [lin, nn.ReLU()]
    model = nn.Sequential(*layers[:-1]).to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.9, 0.999), eps=1e-8,
                           capturable=args.cuda_graphs)

    gen = torch.Generator(device=dev)
    gen.manual_seed(args.seed)
    # This epoch's permutation of the training rows (n_train,) and its loss
    # sum: static buffers, so that a captured step can read and write them.
    perm = torch.empty(n_train, dtype=torch.int64, device=dev)
    loss_sum = torch.zeros((), dtype=torch.float32, device=dev)

    def step_on(idx):
        """One training step on the rows idx (B,) of the device dataset."""
        logits = model(xs.index_select(0, idx))
        loss = F.cross_entropy(logits, ys.index_select(0, idx))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        loss_sum.add_(loss.detach())

    # The captured step finds its batch itself: the offsets 0..B-1 within
    # the permutation plus B times a step counter (a device scalar) that it
    # advances, so a replay needs no input from the host.
    step_idx = torch.zeros((), dtype=torch.int64, device=dev)
    offsets = torch.arange(BATCH, dtype=torch.int64, device=dev)

    def graph_step():
        step_on(perm.index_select(0, offsets + step_idx * BATCH))
        step_idx.add_(1)

    def capture():
        """Warm up on a side stream (which allocates Adam's state), then
        capture one step. The warm-up steps are real steps of epoch 1;
        capture records the step without running it. zero_grad(set_to_none)
        before backward lets the captured backward allocate the gradients
        in the graph's pool, where every replay writes them again."""
        side = torch.cuda.Stream(dev)
        side.wait_stream(torch.cuda.current_stream(dev))
        with torch.cuda.stream(side):
            for _ in range(WARMUP_STEPS):
                graph_step()
        torch.cuda.current_stream(dev).wait_stream(side)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            graph_step()
        return g, WARMUP_STEPS

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    graph = None
    epoch_sec, train_loss = [], []
    for _ in range(args.epochs):
        t0 = time.perf_counter()
        perm.copy_(torch.randperm(n_train, generator=gen, device=dev))
        loss_sum.zero_()
        if args.cuda_graphs:
            step_idx.zero_()
            done = 0
            if graph is None:
                graph, done = capture()
            for _ in range(done, steps):
                graph.replay()
        else:
            # Eager, as users write it: the batch is a slice of the
            # permutation (a view), gathered from the device dataset.
            for i in range(steps):
                step_on(perm[i * BATCH:(i + 1) * BATCH])
        sync()
        epoch_sec.append(time.perf_counter() - t0)
        train_loss.append(loss_sum.item() / steps)

    model.eval()
    with torch.no_grad():
        test_accuracy = (model(tx).argmax(dim=1) == ty).float().mean().item()

    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    print(json.dumps({
        "impl": "torch-graphs" if args.cuda_graphs else "torch-eager",
        "epoch_sec": [round(s, 5) for s in epoch_sec],
        "steady_epoch_sec": round(statistics.median(epoch_sec[1:] or epoch_sec), 5),
        "test_accuracy": round(test_accuracy, 6),
        "train_loss": round(train_loss[-1], 6),
        "epochs": args.epochs,
        "batch_size": BATCH,
        "steps_per_epoch": steps,
        "matmul_precision": "highest",
        "device": f"{dev.type}: {name}",
        "framework": f"torch {torch.__version__}"
                     + (f", CUDA {torch.version.cuda}" if torch.version.cuda else ""),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
