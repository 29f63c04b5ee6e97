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

import sys
import time

import numpy as np

from mnist_common import BATCH, WIDTHS, arg_parser, load_mnist, parse_checked, report

# Eager steps run on a side stream before capture, as torch.cuda.graphs
# requires; they are real training steps of epoch 1.
WARMUP_STEPS = 3


def parse_args():
    p = arg_parser(__doc__.split("\n")[0])
    p.add_argument("--cuda-graphs", action="store_true",
                   help="capture the whole step as one CUDA graph and replay it")
    p.add_argument("--device", default=None,
                   help="torch device (default: cuda when available, else cpu)")
    return parse_checked(p)


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

    train_x, train_y, test_x, test_y = load_mnist(args.data_dir, np.int64)
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
    cuda = f", CUDA {torch.version.cuda}" if torch.version.cuda else ""
    report("torch-graphs" if args.cuda_graphs else "torch-eager", epoch_sec, test_accuracy,
           train_loss[-1], args.epochs, steps, "highest", f"{dev.type}: {name}",
           f"torch {torch.__version__}{cuda}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
