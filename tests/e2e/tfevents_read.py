#!/usr/bin/python3
"""traind's TensorBoard event files read without traind's code.

Usage: tfevents_read.py TEST_TFEVENTS_BINARY PROTO_DIR

`TEST_TFEVENTS_BINARY write DIR` writes one event file of known scalars and
texts and prints what it wrote as JSON. This script then

1. checks the file name (events.out.tfevents.<secs>.<host>.<pid>.<suffix>);
2. splits the file into records from the format alone (uint64 length, masked
   CRC-32C of the length, data, masked CRC-32C of the data), checking both
   CRCs with its own CRC-32C (Debian's python3-crc32c when importable, and a
   pure-Python table implementation checked against it and against the
   published check value);
3. decodes every record with Python protobuf classes generated at test time
   from PROTO_DIR/tensorboard/*.proto (grpc_tools.protoc) and compares each
   Event with what the binary says it wrote;
4. checks that a flipped byte or a cut file is caught;
5. when the `tensorboard` package is importable, loads the directory with
   TensorBoard's own EventAccumulator and with the plugin accumulator that
   `tensorboard --logdir` serves from (in a separate interpreter, so that its
   tensorboard.* protos and the generated ones never meet) and compares the
   scalars and texts; without it, says so and skips this part.

Exit 77 (skip) when grpc_tools or protobuf is missing, unless CI=true.
"""
import json
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import tempfile

try:
    import google.protobuf  # noqa: F401
    import grpc_tools  # noqa: F401
except ImportError as e:  # pragma: no cover
    print(f"SKIP: {e}")
    sys.exit(1 if os.environ.get("CI") == "true" else 77)

try:
    import crc32c as crc32c_lib
except ImportError:  # pragma: no cover
    crc32c_lib = None

failures = 0


def check(cond, what):
    global failures
    if not cond:
        failures += 1
        print(f"FAIL: {what}")


# ------------------------------------------------------------------ CRC-32C


def _table():
    t = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        t.append(c)
    return t


_TABLE = _table()


def crc32c_py(data):
    c = 0xFFFFFFFF
    for b in data:
        c = _TABLE[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


def crc32c(data):
    return crc32c_lib.crc32c(data) if crc32c_lib else crc32c_py(data)


def masked(crc):
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


class RecordError(Exception):
    pass


def read_records(data):
    """The data of every record in an event file; RecordError at the first
    bad one."""
    out, pos = [], 0
    while pos < len(data):
        if len(data) - pos < 12:
            raise RecordError(f"truncated header at offset {pos}")
        (length,) = struct.unpack_from("<Q", data, pos)
        (length_crc,) = struct.unpack_from("<I", data, pos + 8)
        if length_crc != masked(crc32c(data[pos:pos + 8])):
            raise RecordError(f"bad length CRC at offset {pos}")
        start, end = pos + 12, pos + 12 + length
        if end + 4 > len(data):
            raise RecordError(f"truncated record at offset {pos}")
        (data_crc,) = struct.unpack_from("<I", data, end)
        if data_crc != masked(crc32c(data[start:end])):
            raise RecordError(f"bad data CRC at offset {pos}")
        out.append(data[start:end])
        pos = end + 4
    return out


def f32_bits(x):
    return struct.unpack("<I", struct.pack("<f", x))[0]


# ------------------------------------------------- generated protobuf classes


def compile_protos(proto_dir, out):
    os.makedirs(out)
    files = [os.path.join(proto_dir, "tensorboard", f) for f in ("summary.proto", "event.proto")]
    cmd = [sys.executable, "-m", "grpc_tools.protoc", "-I" + proto_dir,
           "--python_out=" + out] + files
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError("protoc failed: %s\n%s" % (" ".join(cmd), p.stderr))
    # A regular package, so that it is found before any installed
    # `tensorboard` distribution.
    open(os.path.join(out, "tensorboard", "__init__.py"), "w").close()
    sys.path.insert(0, out)
    from tensorboard import event_pb2, summary_pb2
    return event_pb2, summary_pb2


# TensorFlow's numbers (tensorboard/compat/proto/{event,summary,tensor,
# tensor_shape,types}.proto): the .proto files must keep them for TensorBoard
# to read the files, whatever the generated code agrees on with itself.
TF_FIELDS = {
    "Event": {"wall_time": 1, "step": 2, "file_version": 3, "summary": 5},
    "Summary": {"value": 1},
    "Summary.Value": {"tag": 1, "simple_value": 2, "tensor": 8, "metadata": 9},
    "SummaryMetadata": {"plugin_data": 1},
    "SummaryMetadata.PluginData": {"plugin_name": 1, "content": 2},
    "TensorProto": {"dtype": 1, "tensor_shape": 2, "string_val": 8},
    "TensorShapeProto": {"dim": 2},
    "TensorShapeProto.Dim": {"size": 1},
}


def check_field_numbers(event_pb2, summary_pb2):
    for name, fields in TF_FIELDS.items():
        top, _, nested = name.partition(".")
        module = event_pb2 if top == "Event" else summary_pb2
        desc = getattr(module, top).DESCRIPTOR
        if nested:
            desc = desc.nested_types_by_name[nested]
        check(desc.full_name == "tensorboard." + name, f"message {desc.full_name}")
        for field, number in fields.items():
            got = desc.fields_by_name[field].number if field in desc.fields_by_name else None
            check(got == number, f"tensorboard.{name}.{field} is {got}, TensorFlow's is {number}")
    check(summary_pb2.DT_STRING == 7, f"DT_STRING is {summary_pb2.DT_STRING}")


# --------------------------------------------------- TensorBoard, if present

ACCUMULATOR = r"""
import json, struct, sys
try:
    from tensorboard.backend.event_processing import event_accumulator as ea
except ImportError as e:
    print(json.dumps({"missing": str(e)}))
    sys.exit(0)
acc = ea.EventAccumulator(sys.argv[1], size_guidance={ea.SCALARS: 0, ea.TENSORS: 0})
acc.Reload()
tags = acc.Tags()
bits = lambda x: struct.unpack("<I", struct.pack("<f", x))[0]
try:
    text_tags = sorted(acc.PluginTagToContent("text"))
except KeyError:
    text_tags = []
# What `tensorboard --logdir` serves: values migrated to plugin tensors.
from tensorboard.backend.event_processing import plugin_event_accumulator as pea
from tensorboard.util import tensor_util
pacc = pea.EventAccumulator(sys.argv[1], size_guidance={pea.TENSORS: 0})
pacc.Reload()
server = {}
for t in pacc.Tags()[pea.TENSORS]:
    md = pacc.SummaryMetadata(t)
    vals = []
    for e in pacc.Tensors(t):
        a = tensor_util.make_ndarray(e.tensor_proto)
        vals.append([e.step, e.wall_time, list(a.shape),
                     a.item().decode("utf-8") if a.dtype == object else bits(float(a))])
    server[t] = [md.plugin_data.plugin_name, int(md.data_class), vals]
print(json.dumps({
    "file_version": acc.file_version,
    "scalars": {t: [[e.step, e.wall_time, bits(e.value)] for e in acc.Scalars(t)]
                for t in tags[ea.SCALARS]},
    "texts": {t: [[e.step, e.wall_time, e.tensor_proto.dtype,
                   len(e.tensor_proto.tensor_shape.dim),
                   [s.decode("utf-8") for s in e.tensor_proto.string_val]]
                  for e in acc.Tensors(t)]
              for t in tags[ea.TENSORS]},
    "text_plugin_tags": text_tags,
    "server": server,
}))
"""


def check_with_tensorboard(logdir, events):
    p = subprocess.run([sys.executable, "-c", ACCUMULATOR, logdir],
                       capture_output=True, text=True, cwd=logdir)
    if p.returncode != 0:
        check(False, f"EventAccumulator failed: {p.stderr[-2000:]}")
        return
    got = json.loads(p.stdout)
    if "missing" in got:
        print(f"NOTE: tensorboard is not installed ({got['missing']}); "
              "skipped the EventAccumulator check")
        return
    check(got["file_version"] == 2.0, f"EventAccumulator file_version {got['file_version']}")
    want_scalars, want_texts = {}, {}
    for e in events:
        if "bits" in e:
            want_scalars.setdefault(e["tag"], []).append([e["step"], e["wall_time"], e["bits"]])
        else:
            want_texts.setdefault(e["tag"], []).append(
                [e["step"], e["wall_time"], 7, 0, [e["text"]]])
    check(got["scalars"] == want_scalars,
          f"EventAccumulator scalars differ: {sorted(got['scalars'])} vs {sorted(want_scalars)}")
    check(got["texts"] == want_texts,
          f"EventAccumulator texts differ: {sorted(got['texts'])} vs {sorted(want_texts)}")
    check(got["text_plugin_tags"] == sorted(want_texts),
          f"text plugin tags {got['text_plugin_tags']}")
    # As served: scalars under the "scalars" plugin (DATA_CLASS_SCALAR = 1),
    # texts under "text" (DATA_CLASS_TENSOR = 2), all rank 0.
    want_server = {t: ["scalars", 1, [[s, w, [], b] for s, w, b in v]]
                   for t, v in want_scalars.items()}
    want_server.update({t: ["text", 2, [[s, w, [], x[0]] for s, w, _, _, x in v]]
                        for t, v in want_texts.items()})
    for t in sorted(set(want_server) | set(got["server"])):
        check(got["server"].get(t) == want_server.get(t),
              f"served tag {t}: {str(got['server'].get(t))[:200]}")
    print(f"EventAccumulator: {sum(len(v) for v in got['scalars'].values())} scalars, "
          f"{sum(len(v) for v in got['texts'].values())} texts")


# --------------------------------------------------------------------- main


def main():
    binary, proto_dir = sys.argv[1], sys.argv[2]

    check(crc32c_py(b"123456789") == 0xE3069283, "pure-Python CRC-32C check value")
    if crc32c_lib:
        check(crc32c_lib.crc32c(b"123456789") == 0xE3069283, "crc32c module check value")
        sample = bytes(range(256)) * 7 + b"tail"
        check(crc32c_lib.crc32c(sample) == crc32c_py(sample), "crc32c module vs pure Python")
        print("CRC-32C: python3-crc32c module")
    else:
        print("CRC-32C: pure-Python table (python3-crc32c is not installed)")

    tmp = tempfile.mkdtemp(prefix="td-tfevents-")
    try:
        event_pb2, summary_pb2 = compile_protos(proto_dir, os.path.join(tmp, "stubs"))
        check_field_numbers(event_pb2, summary_pb2)
        logdir = os.path.join(tmp, "logs", "run")
        p = subprocess.Popen([binary, "write", logdir], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
        out, err = p.communicate(timeout=60)
        check(p.returncode == 0, f"write exited {p.returncode}: {err}")
        if p.returncode:
            return
        manifest = json.loads(out)
        path, events = manifest["path"], manifest["events"]

        check(os.listdir(logdir) == [os.path.basename(path)],
              f"{logdir} holds {os.listdir(logdir)}")
        m = re.fullmatch(r"events\.out\.tfevents\.(\d+)\.(.+)\.(\d+)\.e2e",
                         os.path.basename(path))
        check(m is not None, f"file name {os.path.basename(path)}")
        if m:
            check(m.group(2) == socket.gethostname(), f"host {m.group(2)}")
            check(int(m.group(3)) == p.pid, f"pid {m.group(3)}, want {p.pid}")

        with open(path, "rb") as f:
            data = f.read()
        try:
            records = read_records(data)
        except RecordError as e:
            check(False, f"{path}: {e}")
            return
        check(len(records) == 1 + len(events),
              f"{len(records)} records, want {1 + len(events)}")

        first = event_pb2.Event.FromString(records[0])
        check(first.WhichOneof("what") == "file_version"
              and first.file_version == "brain.Event:2", f"first event {first}")
        check(abs(first.wall_time - int(m.group(1) if m else 0)) < 2,
              f"first wall_time {first.wall_time}")

        for i, (rec, want) in enumerate(zip(records[1:], events), 1):
            ev = event_pb2.Event.FromString(rec)
            where = f"record {i} ({want['tag']} @ {want['step']})"
            check(ev.wall_time == want["wall_time"], f"{where}: wall_time {ev.wall_time!r}")
            check(ev.step == want["step"], f"{where}: step {ev.step}")
            check(ev.WhichOneof("what") == "summary", f"{where}: {ev.WhichOneof('what')}")
            check(len(ev.summary.value) == 1, f"{where}: {len(ev.summary.value)} values")
            if not ev.summary.value:
                continue
            v = ev.summary.value[0]
            check(v.tag == want["tag"], f"{where}: tag {v.tag!r}")
            if "bits" in want:
                check(v.WhichOneof("value") == "simple_value", f"{where}: {v.WhichOneof('value')}")
                check(f32_bits(v.simple_value) == want["bits"],
                      f"{where}: value bits {f32_bits(v.simple_value):#010x}, "
                      f"want {want['bits']:#010x}")
                check(not v.HasField("metadata"), f"{where}: scalar has metadata")
            else:
                t = v.tensor
                check(v.WhichOneof("value") == "tensor", f"{where}: {v.WhichOneof('value')}")
                check(v.metadata.plugin_data.plugin_name == "text",
                      f"{where}: plugin {v.metadata.plugin_data.plugin_name!r}")
                check(t.dtype == summary_pb2.DT_STRING, f"{where}: dtype {t.dtype}")
                check(t.HasField("tensor_shape") and len(t.tensor_shape.dim) == 0,
                      f"{where}: shape {t.tensor_shape}")
                check(list(t.string_val) == [want["text"].encode("utf-8")],
                      f"{where}: string_val {list(t.string_val)[:1]!r:.80}")

        # A flipped bit in any record and a cut file are caught.
        missed = 0
        step = max(1, len(data) // 97)
        for pos in range(0, len(data), step):
            bad = bytearray(data)
            bad[pos] ^= 0x04
            try:
                read_records(bytes(bad))
                missed += 1
            except RecordError:
                pass
        check(missed == 0, f"{missed} flipped bytes not caught")
        try:
            read_records(data[:-1])
            check(False, "a cut file was not caught")
        except RecordError:
            pass

        check_with_tensorboard(logdir, events)
        print(f"{len(records)} records, {len(data)} bytes read from {os.path.basename(path)}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
    print("FAILED" if failures else "PASS")
    sys.exit(1 if failures else 0)
