"""MNIST from its IDX files (gzip-compressed or raw), as traind reads it:
images as float32 x / 255 in NHWC (N, 28, 28, 1), labels as int32.
Shared by bench/jax_epoch.py and bench/torch_epoch.py."""
import gzip
import os

import numpy as np


def _open(path):
    if os.path.exists(path + ".gz"):
        return gzip.open(path + ".gz", "rb")
    return open(path, "rb")


def _idx(path):
    with _open(path) as f:
        data = f.read()
    if data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise SystemExit(f"{path}: not an IDX file of unsigned bytes")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load(split):
    """split: "train" or "t10k". Returns (images (N, 28, 28, 1) float32,
    labels (N,) int32) from $TRAIND_DATA_DIR/mnist."""
    root = os.environ.get("TRAIND_DATA_DIR")
    if not root:
        raise SystemExit("set TRAIND_DATA_DIR to a directory holding mnist/")
    base = os.path.join(root, "mnist", split)
    x = _idx(base + "-images-idx3-ubyte").astype(np.float32) / np.float32(255.0)
    y = _idx(base + "-labels-idx1-ubyte").astype(np.int32)
    return x.reshape(x.shape[0], 28, 28, 1), y
