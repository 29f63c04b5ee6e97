#!/usr/bin/python3
"""Checks traind's proto3 JSON converter (proto/pbjson.c) against Google's own
implementation, google.protobuf.json_format from Debian's python3-protobuf.

For fixed and random messages of tests/proto/pbjson_test.proto and
traind/v1/job.proto:
  (a) pbjson's JSON (every flag combination) is parsed by json_format.Parse into
      a message whose encoding equals both the original bytes and what pbjson
      itself packs from that JSON;
  (b) json_format.MessageToJson's output (every option combination) is accepted
      by pbjson and packs to exactly the original bytes;
  (c) pbjson's JSON and MessageToJson's denote the same JSON value.

The C side is reached through tests/pbjson_tool.c. Run with Debian's
interpreter (/usr/bin/python3); the _pb2 modules are generated with protoc
into a temporary directory.
"""
import argparse
import importlib
import json
import math
import os
import random
import struct
import subprocess
import sys
import tempfile

FLAG_SETS = [[], ["--indent"], ["--proto-names"], ["--emit-defaults"],
             ["--indent", "--proto-names", "--emit-defaults"]]

failures = []


def fail(msg):
    failures.append(msg)
    print("FAIL: " + msg, file=sys.stderr)


def tool(args, data):
    """Runs pbjson_tool; returns (exit status, stdout bytes, stderr text)."""
    p = subprocess.run([TOOL] + args, input=data, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       timeout=60)
    return p.returncode, p.stdout, p.stderr.decode("utf-8", "replace")


def drop_nulls(v):
    """pbjson writes unset messages as null under --emit-defaults; json_format
    leaves them out. Both mean the same."""
    if isinstance(v, dict):
        return {k: drop_nulls(x) for k, x in v.items() if x is not None}
    if isinstance(v, list):
        return [drop_nulls(x) for x in v]
    return v


def f32(v):
    return struct.unpack("<f", struct.pack("<f", v))[0]


def same_json(a, b):
    """Equality of JSON values where NaN equals NaN, and two numbers that
    name the same float32 are equal too: json_format writes float fields with
    at least 6 digits (1.4013e-45 where pbjson writes 1e-45). Exact equality
    of the values is checked through the encodings in (a) and (b)."""
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool) \
            and not isinstance(b, bool):
        if a == b or (math.isnan(a) and math.isnan(b)):
            return True
        try:
            return abs(a) < 3.5e38 and f32(a) == f32(b)
        except OverflowError:
            return False
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_json(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same_json(x, y) for x, y in zip(a, b))
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    return a == b


def check(name, msg):
    full = msg.DESCRIPTOR.full_name
    want = msg.SerializeToString()
    cls = type(msg)

    # (a) pbjson -> json_format
    for flags in FLAG_SETS:
        rc, out, err = tool(["to-json", full] + flags, want)
        if rc != 0:
            fail("%s: pbjson_tool to-json %s failed: %s" % (name, flags, err))
            continue
        text = out.decode("utf-8")
        try:
            parsed = json_format.Parse(text, cls())
        except Exception as e:  # json_format raises several types
            fail("%s: json_format.Parse refused pbjson's output (%s): %s\n%s" % (name, flags, e, text))
            continue
        if parsed.SerializeToString() != want:
            fail("%s: json_format read pbjson's JSON (%s) as a different message\n%s" % (name, flags, text))
        rc, packed, err = tool(["to-bin", full], out)
        if rc != 0:
            fail("%s: pbjson refused its own output (%s): %s" % (name, flags, err))
        elif packed != want:
            fail("%s: pbjson packed its own JSON (%s) differently" % (name, flags))

    # (b) json_format -> pbjson
    for defaults in (False, True):
        for proto_names in (False, True):
            for indent in (None, 2):
                text = json_format.MessageToJson(msg, including_default_value_fields=defaults,
                                                 preserving_proto_field_name=proto_names, indent=indent)
                rc, packed, err = tool(["to-bin", full], text.encode("utf-8"))
                what = "defaults=%s proto_names=%s indent=%s" % (defaults, proto_names, indent)
                if rc != 0:
                    fail("%s: pbjson refused json_format's output (%s): %s\n%s" % (name, what, err, text))
                elif packed != want:
                    fail("%s: pbjson read json_format's JSON (%s) as a different message\n%s"
                         % (name, what, text))

    # (c) the same JSON value, field for field
    for flags, kw in (([], {}), (["--proto-names"], {"preserving_proto_field_name": True}),
                      (["--emit-defaults"], {"including_default_value_fields": True})):
        rc, out, err = tool(["to-json", full] + flags, want)
        if rc != 0:
            continue  # reported under (a)
        ours = drop_nulls(json.loads(out))
        theirs = json.loads(json_format.MessageToJson(msg, **kw))
        if not same_json(ours, theirs):
            fail("%s: pbjson %s and json_format %s differ:\n%s\n%s" % (name, flags, kw, json.dumps(ours),
                                                                      json.dumps(theirs)))


AWKWARD = ["\x01", "\t", "\n", "\r", "\x1f", '"', "\\", "/", "\x7f", "\x85", "\xa0", "\u2028", "\u2029",
           "\ufeff", "\ufffd", "\ufffe", "\uffff", "\U00010000", "\U0001F600", "\U0010FFFF", ":", "#", "'",
           "é", "日本"]


def rand_string(r):
    out = []
    for _ in range(r.randrange(12)):
        k = r.randrange(3)
        if k == 0:
            out.append(r.choice(AWKWARD))
        elif k == 1:
            out.append(chr(r.randrange(0x20, 0x7f)))
        else:
            cp = r.randrange(1, 0x110000)
            while 0xD800 <= cp <= 0xDFFF:
                cp = r.randrange(1, 0x110000)
            out.append(chr(cp))
    return "".join(out)


def rand_f32(r):
    v = struct.unpack("<f", struct.pack("<I", r.getrandbits(32)))[0]
    return float("nan") if math.isnan(v) else v


def rand_f64(r):
    v = struct.unpack("<d", struct.pack("<Q", r.getrandbits(64)))[0]
    return float("nan") if math.isnan(v) else v


def nonneg_zero(v):
    # protobuf-c does not encode a singular -0.0 (it compares with 0); other
    # runtimes do. The difference is in encoders, not in the JSON mapping.
    return 0.0 if v == 0 else v


def rand_scalars(r, m):
    m.i32 = r.randrange(-2**31, 2**31)
    m.s32 = r.randrange(-2**31, 2**31)
    m.sf32 = r.randrange(-2**31, 2**31)
    m.u32 = r.randrange(2**32)
    m.f32 = r.randrange(2**32)
    m.i64 = r.randrange(-2**63, 2**63)
    m.s64 = r.randrange(-2**63, 2**63)
    m.sf64 = r.randrange(-2**63, 2**63)
    m.u64 = r.randrange(2**64)
    m.f64 = r.randrange(2**64)
    m.flt = nonneg_zero(rand_f32(r))
    m.dbl = nonneg_zero(rand_f64(r))
    m.flag = r.random() < 0.5
    m.str = rand_string(r)
    m.raw = bytes(r.getrandbits(8) for _ in range(r.randrange(10)))
    m.color = r.choice([-1, 0, 1, 2, 7])
    if r.random() < 0.3:  # some zero fields, which are left out
        m.i32 = 0
        m.u64 = 0
        m.flt = 0.0
        m.str = ""


def rand_timestamp(r, ts):
    ts.seconds = r.randrange(-62135596800, 253402300800)
    ts.nanos = r.choice([0, r.randrange(1000) * 1000000, r.randrange(1000000) * 1000, r.randrange(10**9)])


def rand_duration(r, d):
    s = r.randrange(0, 315576000001)
    n = r.choice([0, r.randrange(1000) * 1000000, r.randrange(10**9)])
    if r.random() < 0.5:
        s, n = -s, -n
    d.seconds, d.nanos = s, n


def rand_node(r, node, depth):
    node.name = rand_string(r)
    if depth < 3:
        for _ in range(r.randrange(3)):
            rand_node(r, node.children.add(), depth + 1)
        if r.random() < 0.3:
            rand_node(r, node.child, depth + 1)


def rand_everything(r, T):
    e = T.Everything()
    rand_scalars(r, e.scalars)
    rp = e.repeats
    for _ in range(r.randrange(4)):
        rp.i32.append(r.randrange(-2**31, 2**31))
        rp.s32.append(r.randrange(-2**31, 2**31))
        rp.sf32.append(r.randrange(-2**31, 2**31))
        rp.u32.append(r.randrange(2**32))
        rp.f32.append(r.randrange(2**32))
        rp.i64.append(r.randrange(-2**63, 2**63))
        rp.s64.append(r.randrange(-2**63, 2**63))
        rp.sf64.append(r.randrange(-2**63, 2**63))
        rp.u64.append(r.randrange(2**64))
        rp.f64.append(r.randrange(2**64))
        rp.flt.append(rand_f32(r))
        rp.dbl.append(rand_f64(r))
        rp.flag.append(r.random() < 0.5)
        rp.str.append(rand_string(r))
        rp.raw.append(bytes(r.getrandbits(8) for _ in range(r.randrange(6))))
        rp.color.append(r.choice([-1, 0, 1, 2, 9]))
    w = e.wrappers
    if r.random() < 0.5:
        w.dbl.value = nonneg_zero(rand_f64(r))
    if r.random() < 0.5:
        w.flt.value = nonneg_zero(rand_f32(r))
    if r.random() < 0.5:
        w.i64.value = r.randrange(-2**63, 2**63)
    if r.random() < 0.5:
        w.u64.value = r.randrange(2**64)
    if r.random() < 0.5:
        w.i32.value = r.choice([0, r.randrange(-2**31, 2**31)])
    if r.random() < 0.5:
        w.u32.value = r.randrange(2**32)
    if r.random() < 0.5:
        w.flag.value = r.random() < 0.5
    if r.random() < 0.5:
        w.str.value = rand_string(r)
    if r.random() < 0.5:
        w.raw.value = bytes(r.getrandbits(8) for _ in range(r.randrange(6)))
    if r.random() < 0.7:
        rand_timestamp(r, e.created_at)
    if r.random() < 0.7:
        rand_duration(r, e.time_limit)
    for _ in range(r.randrange(3)):
        rand_timestamp(r, e.stamps.add())
        rand_duration(r, e.durations.add())
        e.double_list.add().value = rand_f64(r)
        rand_scalars(r, e.scalar_list.add())
    k = r.randrange(6)
    if k == 0:
        e.choice_int = r.choice([0, r.randrange(-2**31, 2**31)])
    elif k == 1:
        e.choice_str = rand_string(r)
    elif k == 2:
        e.choice_msg.SetInParent()
        if r.random() < 0.5:
            rand_scalars(r, e.choice_msg)
    elif k == 3:
        e.choice_color = r.choice([0, 1, -1, 5])
    elif k == 4:
        e.choice_wrapped.value = r.choice([0.0, rand_f64(r)])
    if r.random() < 0.5:
        rand_node(r, e.tree, 0)
    e.multi_word_field_name_2x = rand_string(r)
    return e


def fixed_messages(T, J):
    out = []
    e = T.Everything()
    s = e.scalars
    s.i32, s.s32, s.sf32, s.u32, s.f32 = -2**31, 2**31 - 1, -1, 2**32 - 1, 1
    s.i64, s.s64, s.sf64, s.u64, s.f64 = -2**63, 2**63 - 1, -1, 2**64 - 1, 2**53 + 1
    s.flt, s.dbl = 1e-45, 5e-324
    s.flag, s.str, s.raw, s.color = True, "".join(AWKWARD), bytes(range(256)), 2
    rp = e.repeats
    rp.flt.extend([0.1, -0.0, float("inf"), float("-inf"), float("nan"), 3.4e38, 1.17549435e-38, 16777216.0])
    rp.dbl.extend([0.1, -0.0, float("inf"), float("nan"), 1e300, 1e16, 123456789012345.0, 1 / 3])
    rp.flag.extend([True, False])
    rp.str.extend(["", "a", "\U0001F600"])
    rp.raw.extend([b"", b"\xff", b"\x00\x01\x02"])
    e.wrappers.dbl.value = 0.0
    e.wrappers.i64.value = 0
    e.wrappers.flag.value = False
    e.wrappers.str.value = ""
    e.wrappers.raw.value = b""
    e.created_at.seconds, e.created_at.nanos = 63108020, 21000000
    e.time_limit.seconds, e.time_limit.nanos = -1, -500000000
    for secs, nanos in ((-62135596800, 0), (253402300799, 999999999), (-1, 999999999), (0, 1000)):
        t = e.stamps.add()
        t.seconds, t.nanos = secs, nanos
    for secs, nanos in ((0, -1), (315576000000, 0), (-315576000000, -999999999), (0, 0)):
        d = e.durations.add()
        d.seconds, d.nanos = secs, nanos
    e.choice_msg.SetInParent()
    e.tree.name = "root"
    e.tree.children.add().name = "a"
    e.tree.children.add().child.name = "b"
    out.append(("everything", e))
    out.append(("empty", T.Everything()))
    for field, value in (("choice_int", 0), ("choice_str", ""), ("choice_color", 0)):
        m = T.Everything()
        setattr(m, field, value)
        out.append(("oneof " + field, m))
    m = T.Everything()
    m.choice_wrapped.value = 0
    out.append(("oneof choice_wrapped", m))

    j = J.JobSpec()
    j.name = "mnist-mlp"
    j.model.input_shape.extend([28, 28])
    l0 = j.model.layers.add()
    l0.name = "hidden"
    l0.dense.features = 128
    l0.dense.kernel_init = J.HE_NORMAL
    j.model.layers.add().relu.SetInParent()
    j.model.layers.add().dropout.rate = 0.1
    l3 = j.model.layers.add()
    l3.dense.features = 10
    l3.dense.use_bias.value = False
    j.model.loss = J.SOFTMAX_CROSS_ENTROPY
    j.optimizer.chain.add().clip_by_global_norm.max_norm = 1.0
    aw = j.optimizer.chain.add().adamw
    wc = aw.learning_rate.warmup_cosine_decay
    wc.peak_value, wc.warmup_steps, wc.decay_steps = 1e-3, 100, 1000
    aw.b2.value = 0.98
    aw.weight_decay.value = 0
    j.dataset.idx.dir = "mnist"
    j.dataset.train_limit = 1000
    j.training.epochs, j.training.batch_size, j.training.seed = 2, 64, 2**64 - 1
    j.checkpoint.every_steps = 500
    j.priority = -1
    out.append(("jobspec", j))
    return out


# Documents that hold a JSON-style surrogate pair escape in places where YAML
# reads no escapes (single-quoted and plain scalars, comments), after double
# quotes that do not start a double-quoted scalar. pbjson must read each name
# exactly as PyYAML does. Double-quoted pairs in JSON text are read as JSON
# readers do (one character beyond U+FFFF), and json.loads is the reference.
YAML_SURROGATE_DOCS = [
    "{name: '\\uD83D\\uDE00'}",
    "{dataset: {idx: {dir: 'say \"x'}}, name: '\\uD83D\\uDE00'}",
    "{dataset: {idx: {dir: 'it''s \"'}}, name: 'a\\uD83D\\uDE00b'}",
    "{dataset: {idx: {dir: a\"b}}, name: '\\uD83D\\uDE00'}",
    "{dataset: {idx: {dir: a \"b}}, name: x\\uD83D\\uDE00}",
    "{ # a \"comment\n name: '\\uD83D\\uDE00'}",
    "{dataset: {idx: {dir: \"x\"}}, name: 'a\\uD83D\\uDE00''\"'}",
    "name: '\\uD83D\\uDE00'\ndataset: {idx: {dir: '\"'}}\n",
    "{\"dataset\": {\"idx\": {\"dir\": \"q\\\"\"}}, \"name\": '\\ud83d\\ude00'}",
]
JSON_SURROGATE_DOCS = [
    '{"name": "\\ud83d\\ude00"}',
    '{"dataset": {"idx": {"dir": "a\\"b"}}, "name": "x\\uD83D\\uDE00y"}',
    '{"name":"\\ud83d\\ude00\\ud83d\\ude01"}',
]


def pbjson_job(J, text):
    """(JobSpec, None) when pbjson_tool reads text as a JobSpec, else
    (None, its error)."""
    rc, out, err = tool(["to-bin", "traind.v1.JobSpec"], text)
    if rc != 0:
        return None, err
    j = J.JobSpec()
    j.ParseFromString(out)
    return j, None


def check_yaml_readers(J):
    import yaml
    for doc in YAML_SURROGATE_DOCS:
        want = yaml.safe_load(doc)["name"]
        j, err = pbjson_job(J, doc.encode("utf-8"))
        if j is None:
            fail("pbjson refused %r, which PyYAML reads: %s" % (doc, err))
        elif j.name != want:
            fail("pbjson read the name of %r as %r; PyYAML reads %r" % (doc, j.name, want))
    for doc in JSON_SURROGATE_DOCS:
        want = json.loads(doc)["name"]
        j, err = pbjson_job(J, doc.encode("utf-8"))
        if j is None:
            fail("pbjson refused the JSON %r: %s" % (doc, err))
        elif j.name != want:
            fail("pbjson read the name of the JSON %r as %r; json.loads reads %r"
                 % (doc, j.name, want))


def utf8_cases():
    """Byte strings around every edge of UTF-8: each lead byte followed by
    continuation bytes at the edges that decide overlongs, surrogates and
    the U+10FFFF limit, cut short, and random mixtures."""
    conts = [0x80, 0x8F, 0x90, 0x9F, 0xA0, 0xBF]
    out = []
    for lead in range(0x80, 0x100):
        out.append(bytes([lead]))
        out.append(bytes([lead, 0x41]))
        if lead < 0xC0:
            continue  # a continuation byte cannot start anything
        for c in conts:
            out.append(bytes([lead, c]))
            if lead >= 0xE0:
                out.append(bytes([lead, c, 0x80]))
            if lead >= 0xF0:
                out.append(bytes([lead, c, 0xBF, 0x80]))
    r = random.Random(7)
    for _ in range(200):
        out.append(bytes(r.choice([0x41, 0xC2, 0xE0, 0xED, 0xEF, 0xF0, 0xF4, 0xF5, 0x80, 0xBF,
                                   0xA0, 0x90, 0xC0])
                         for _ in range(r.randrange(1, 7))))
    return out


def check_utf8(J):
    """pbjson accepts exactly the job files PyYAML accepts (PyYAML decodes
    strict UTF-8 and refuses the characters YAML does not allow), reads the
    same name, and names the first bad byte where Python's own decoder
    does."""
    import yaml
    checked = 0
    for seq in utf8_cases():
        doc = b'name: "x' + seq + b'"\n'
        try:
            want = yaml.safe_load(doc)["name"]
        except yaml.YAMLError:
            want = None
        j, err = pbjson_job(J, doc)
        checked += 1
        if want is not None:
            if j is None:
                fail("pbjson refused %r, which PyYAML reads: %s" % (doc, err))
            elif j.name != want:
                fail("pbjson read %r as %r; PyYAML reads %r" % (doc, j.name, want))
            continue
        if j is not None:
            fail("pbjson accepted %r, which PyYAML refuses" % doc)
            continue
        try:
            doc.decode("utf-8")
        except UnicodeDecodeError as e:
            expect = "not valid UTF-8 (byte 0x%02x at offset %d)" % (doc[e.start], e.start)
            if expect not in err:
                fail("pbjson's error for %r is %r; expected it to say %r" % (doc, err, expect))
    if checked < 1000:
        fail("only %d UTF-8 cases checked" % checked)


def main():
    global TOOL, json_format
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tool", required=True, help="path of pbjson_tool")
    ap.add_argument("--protoc", required=True, help="path of protoc")
    ap.add_argument("--proto-path", action="append", required=True,
                    help="directory holding pbjson_test.proto or traind/v1/job.proto")
    ap.add_argument("--random", type=int, default=150, help="random messages to check")
    args = ap.parse_args()
    TOOL = args.tool
    try:
        from google.protobuf import json_format as jf
    except ImportError:
        print("google.protobuf is missing for %s: install Debian's python3-protobuf "
              "(scripts/setup does)" % sys.executable, file=sys.stderr)
        return 1
    json_format = jf

    with tempfile.TemporaryDirectory(prefix="pbjson_interop") as tmp:
        protos = ["pbjson_test.proto", "traind/v1/job.proto"]
        cmd = [args.protoc] + ["-I" + p for p in args.proto_path] + ["-I/usr/include",
                                                                    "--python_out=" + tmp] + protos
        p = subprocess.run(cmd, stderr=subprocess.PIPE)
        if p.returncode != 0:
            print("protoc failed: %s\n%s" % (" ".join(cmd), p.stderr.decode()), file=sys.stderr)
            return 1
        sys.path.insert(0, tmp)
        T = importlib.import_module("pbjson_test_pb2")
        J = importlib.import_module("traind.v1.job_pb2")

        messages = fixed_messages(T, J)
        # json_format escapes characters beyond U+FFFF as surrogate pairs;
        # make sure that path is exercised.
        if "\\ud83d" not in json_format.MessageToJson(messages[0][1]):
            fail("the fixed message does not exercise surrogate pairs")
        r = random.Random(20240501)
        messages += [("random %d" % i, rand_everything(r, T)) for i in range(args.random)]
        for name, msg in messages:
            check(name, msg)

        check_yaml_readers(J)
        check_utf8(J)

        # Errors reach the caller as text naming the place.
        rc, _, err = tool(["to-bin", "traind.v1.JobSpec"], b"training:\n  batch_size: -1\n")
        if rc != 1 or "line 2: training.batch_size" not in err:
            fail("bad job not refused as expected: rc=%d %s" % (rc, err))

    print("%d messages checked, %d failures" % (len(messages), len(failures)))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
