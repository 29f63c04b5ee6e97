"""The checkpoint digest and spec hash recomputed from a file opened with
h5py and from a JobSpec message (docs/checkpoint-format.md), shared by the
checkpoint tests."""
import hashlib
import struct

import h5py
import numpy as np

# The root attributes the digest covers, in its order, each with the type
# its value is hashed as (None: a UTF-8 string).
DIGEST_ATTRS = (("format", None), ("version", "<i4"), ("job_id", None), ("spec_hash", None),
                ("step", "<i8"), ("epoch", "<u4"), ("step_in_epoch", "<u4"),
                ("epoch_loss_sum", "<f8"), ("epoch_correct_sum", "<f8"), ("seed", "<u8"),
                ("prng_key", "<u4"), ("job_spec", None))


def float_leaves(f):
    """Every float dataset under /params and /opt_state, in digest order."""
    names = []

    def visit(name, obj):
        if isinstance(obj, h5py.Dataset) and obj.dtype.kind == "f":
            names.append(name)

    for top in ("params", "opt_state"):
        f[top].visititems(lambda n, o, t=top: visit(f"{t}/{n}", o))
    return sorted(names, key=lambda n: n.split("/"))


def digest(f):
    """SHA-256 (hex) of every item, each as its length (uint64 LE) and its
    bytes: name and value of each attribute of DIGEST_ATTRS, then
    /opt_state/count (int64), then each float leaf's path and float32 bytes."""
    h = hashlib.sha256()

    def put(b):
        h.update(struct.pack("<Q", len(b)))
        h.update(b)

    for name, dtype in DIGEST_ATTRS:
        v = f.attrs[name]
        put(name.encode())
        if dtype is None:
            put((v.decode() if isinstance(v, bytes) else str(v)).encode())
        else:
            put(np.asarray(v, dtype=dtype).tobytes())
    put(b"/opt_state/count")
    put(np.asarray(f["opt_state/count"][()], dtype="<i8").tobytes())
    for name in float_leaves(f):
        put(("/" + name).encode())
        put(np.ascontiguousarray(f[name][()], dtype="<f4").tobytes())
    return h.hexdigest()


def spec_hash(spec):
    """SHA-256 (hex) of the protobuf encoding of a traind.v1.JobSpec that
    holds only what determines the training state: model, optimizer, the
    dataset without its test files and test_limit, training.batch_size and
    training.seed, checkpoint.init_from."""
    s = type(spec)()
    for field in ("model", "optimizer", "dataset"):
        if spec.HasField(field):
            getattr(s, field).CopyFrom(getattr(spec, field))
    if s.HasField("dataset"):
        s.dataset.ClearField("test_limit")
        if s.dataset.HasField("idx"):
            s.dataset.idx.ClearField("test_images")
            s.dataset.idx.ClearField("test_labels")
        if s.dataset.HasField("hdf5"):
            s.dataset.hdf5.ClearField("test_file")
    if spec.HasField("training"):
        s.training.SetInParent()
        s.training.batch_size = spec.training.batch_size
        s.training.seed = spec.training.seed
    if spec.checkpoint.init_from:
        s.checkpoint.init_from = spec.checkpoint.init_from
    return hashlib.sha256(s.SerializeToString(deterministic=True)).hexdigest()
