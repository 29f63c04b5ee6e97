"""What the Python contestants of bench/gpu_race.sh share: the reference
program's sizes, MNIST from its gzipped IDX files, the common command-line
options and the JSON line each prints."""

import argparse
import gzip
import json
import os
import statistics
import struct

import numpy as np

BATCH = 128
WIDTHS = (784, 256, 128, 10)
FILES = {
    "train_x": "train-images-idx3-ubyte.gz",
    "train_y": "train-labels-idx1-ubyte.gz",
    "test_x": "t10k-images-idx3-ubyte.gz",
    "test_y": "t10k-labels-idx1-ubyte.gz",
}


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


def load_mnist(root, label_dtype):
    """(train_x, train_y, test_x, test_y): images (N, 784) float32 in [0, 1],
    labels (N,) of label_dtype."""
    d = os.path.join(root, "mnist")
    a = {k: read_idx(os.path.join(d, v)) for k, v in FILES.items()}

    def pixels(x):
        return x.reshape(x.shape[0], -1).astype(np.float32) / 255.0

    return (pixels(a["train_x"]), a["train_y"].astype(label_dtype),
            pixels(a["test_x"]), a["test_y"].astype(label_dtype))


def arg_parser(description):
    """The options every contestant takes: --data-dir, --epochs, --seed."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--data-dir", default=os.environ.get("TRAIND_DATA_DIR"),
                   help="data root holding mnist/ (default $TRAIND_DATA_DIR)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    return p


def parse_checked(p):
    args = p.parse_args()
    if not args.data_dir:
        p.error("no data root: pass --data-dir or set TRAIND_DATA_DIR")
    if args.epochs < 1:
        p.error("--epochs must be at least 1")
    return args


def report(impl, epoch_sec, test_accuracy, train_loss, epochs, steps, precision, device,
           framework):
    """The JSON line: steady_epoch_sec is the median of epochs 2..N."""
    print(json.dumps({
        "impl": impl,
        "epoch_sec": [round(s, 5) for s in epoch_sec],
        "steady_epoch_sec": round(statistics.median(epoch_sec[1:] or epoch_sec), 5),
        "test_accuracy": round(float(test_accuracy), 6),
        "train_loss": round(train_loss, 6),
        "epochs": epochs,
        "batch_size": BATCH,
        "steps_per_epoch": steps,
        "matmul_precision": precision,
        "device": device,
        "framework": framework,
    }))
