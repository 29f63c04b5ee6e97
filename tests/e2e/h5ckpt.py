"""The checkpoint checksum recomputed from a file opened with h5py
(docs/checkpoint-format.md), shared by the checkpoint tests."""
import zlib

import h5py
import numpy as np


def float_leaves(f):
    """Every float dataset under /params and /opt_state, in checksum order."""
    names = []

    def visit(name, obj):
        if isinstance(obj, h5py.Dataset) and obj.dtype.kind == "f":
            names.append(name)

    for top in ("params", "opt_state"):
        f[top].visititems(lambda n, o, t=top: visit(f"{t}/{n}", o))
    return sorted(names, key=lambda n: n.split("/"))


def checksum(f):
    """zlib CRC-32 of every float leaf's little-endian float32 bytes."""
    crc = 0
    for name in float_leaves(f):
        crc = zlib.crc32(np.ascontiguousarray(f[name][()], dtype="<f4").tobytes(), crc)
    return crc
