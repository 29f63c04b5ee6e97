#!/usr/bin/python3
"""Limits on what a client can make traind hold or print, against a real
traind over real sockets:

  utf8_requests         request strings that are not UTF-8 (top level, nested,
                        in a repeated message) are refused INVALID_ARGUMENT with
                        the field path; ListJobs stays readable; job files
                        that are not UTF-8 are refused by trainctl and traind run
  log_escaping          a job name with a newline and " peer=" forges no log
                        record; the value reads back unchanged
  spec_size_boundary    a JobSpec of exactly 1 MiB packed is accepted (and read
                        back by GetJob with grpcio's default limits), one byte
                        more is refused with both sizes, a request over 2 MiB
                        is RESOURCE_EXHAUSTED, and the job file loader refuses
                        the same spec
  list_pages_by_bytes   ListJobs with page_size 100000 over many large jobs
                        pages by bytes: every reply under 1 MiB (or one job),
                        every job once, newest first
  slow_watch_readers    200 WatchMetrics streams from a client that never reads
                        (raw HTTP/2, a 1 KiB window): the daemon's RSS stays
                        bounded and comes back when the client goes
  slow_export_readers   the same with 300 ExportCheckpoint streams
  idle_connections      more idle connections than max_connections: the excess
                        are closed at once, the open client submits and
                        checkpoints, a new client is refused until idle ones
                        leave; the descriptor limit was raised to the hard one
  idle_timeout          an idle connection is closed after connection_idle_sec

Usage: daemon_limits.py TRAIND TRAINCTL SOURCE_DIR [CASE...]
"""
import json
import os
import socket
import struct
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import traind_harness as th  # noqa: E402

import grpc  # noqa: E402

args = th.parse_args(__doc__.splitlines()[0])
suite = th.Suite(args)
pb = suite.pb
MiB = 1 << 20
# Under AddressSanitizer memory costs about twice as much, and freed memory
# goes back to the system only when the allocator is told to keep no
# quarantine and to release promptly.
SANITIZED = th.sanitized(args.traind)
RSS_SCALE = 2.0 if SANITIZED else 1.0
RSS_ENV = {"ASAN_OPTIONS": ":".join(filter(None, [
    os.environ.get("ASAN_OPTIONS", ""), "quarantine_size_mb=0",
    "allocator_release_to_os_interval_ms=100"]))} if SANITIZED else None


# ------------------------------------------------------------- helpers


def synthetic(s, n=512, **extra):
    """A synthetic dataset in the case's directory and a spec that trains on
    it: one epoch of the reference model unless extra says otherwise."""
    th.make_synthetic(s.tmp, n=n)
    spec = th.synthetic_spec(s.source_dir, **extra)
    return spec


def raw_unary(d, method, payload, timeout=10):
    """Calls a method with hand-made request bytes; returns the reply bytes
    or raises grpc.RpcError."""
    call = d.channel().unary_unary(method)
    return call(payload, timeout=timeout)


def spliced(msg, marker, bad):
    """The encoding of msg with the bytes `marker` (which it must hold once)
    replaced by `bad` of the same length."""
    raw = msg.SerializeToString()
    assert len(marker) == len(bad) and raw.count(marker) == 1, (marker, raw.count(marker))
    return raw.replace(marker, bad)


def padded_spec(stubs, spec, packed):
    """spec as a JobSpec padded to exactly `packed` bytes: model.input_shape
    gets trailing 1s (the feature count stays the same)."""
    m = th.spec_msg(stubs, spec)
    base = m.ByteSize()
    k = packed - base
    m.model.input_shape.extend([1] * k)
    for _ in range(8):
        diff = packed - m.ByteSize()
        if diff == 0:
            return m
        if diff > 0:
            m.model.input_shape.extend([1] * diff)
        else:
            del m.model.input_shape[len(m.model.input_shape) + diff:]
    raise th.TestFailure("could not pad the spec to %d bytes (got %d)" % (packed, m.ByteSize()))


def logfmt(line):
    """The fields of one logfmt record (Go's quoting rules)."""
    out, i, n = [], 0, len(line)
    while i < n:
        while i < n and line[i] == " ":
            i += 1
        if i >= n:
            break
        j = line.index("=", i)
        key = line[i:j]
        i = j + 1
        if i < n and line[i] == '"':
            i += 1
            val = bytearray()
            while line[i] != '"':
                c = line[i]
                if c == "\\":
                    e = line[i + 1]
                    if e in '"\\':
                        val += e.encode()
                        i += 2
                    elif e in "nrt":
                        val += {"n": b"\n", "r": b"\r", "t": b"\t"}[e]
                        i += 2
                    elif e == "x":
                        val.append(int(line[i + 2:i + 4], 16))
                        i += 4
                    elif e == "u":
                        val += chr(int(line[i + 2:i + 6], 16)).encode()
                        i += 6
                    else:
                        raise ValueError("bad escape in %r" % line)
                else:
                    val += c.encode("utf-8", "surrogateescape")
                    i += 1
            i += 1
            out.append((key, bytes(val).decode("utf-8", "surrogateescape")))
        else:
            j = line.find(" ", i)
            j = n if j < 0 else j
            out.append((key, line[i:j]))
            i = j
    return out


# A client that never reads: HTTP/2 by hand, so that nothing on the client
# side takes the server's bytes (no window updates, no reads).


def h2_frame(ftype, flags, stream, payload):
    return struct.pack(">I", len(payload))[1:] + bytes([ftype, flags]) + \
        struct.pack(">I", stream) + payload


def hpack_int(v, prefix_bits, first=0):
    limit = (1 << prefix_bits) - 1
    if v < limit:
        return bytes([first | v])
    out = bytearray([first | limit])
    v -= limit
    while v >= 128:
        out.append((v & 0x7F) | 0x80)
        v >>= 7
    out.append(v)
    return bytes(out)


def hpack_literal(name, value):
    """A literal header field without indexing, with a literal name."""
    n, v = name.encode(), value.encode()
    return b"\x00" + hpack_int(len(n), 7) + n + hpack_int(len(v), 7) + v


def raw_connect(d):
    path = d.unix_addr[len("unix:"):]
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(path)
    return s


def open_never_reading(d, method, request, streams, per_conn=50, window=1024):
    """Opens `streams` server-streaming calls of `method` with `request`,
    `per_conn` per connection, announcing a `window`-byte stream window and
    never reading a byte. Returns the sockets (close them to end it all)."""
    body = request.SerializeToString()
    grpc_msg = b"\x00" + struct.pack(">I", len(body)) + body
    socks = []
    left = streams
    while left > 0:
        s = raw_connect(d)
        out = bytearray(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        # SETTINGS: ENABLE_PUSH 0, INITIAL_WINDOW_SIZE window; and an ACK of
        # the server's SETTINGS, which is never read.
        out += h2_frame(4, 0, 0, struct.pack(">HI", 2, 0) + struct.pack(">HI", 4, window))
        out += h2_frame(4, 1, 0, b"")
        for k in range(min(per_conn, left)):
            sid = 1 + 2 * k
            hdr = (hpack_literal(":method", "POST") + hpack_literal(":scheme", "http") +
                   hpack_literal(":path", method) + hpack_literal(":authority", "traind") +
                   hpack_literal("content-type", "application/grpc") +
                   hpack_literal("te", "trailers"))
            out += h2_frame(1, 0x4, sid, hdr)           # HEADERS, END_HEADERS
            out += h2_frame(0, 0x1, sid, grpc_msg)      # DATA, END_STREAM
        s.sendall(out)
        socks.append(s)
        left -= per_conn
    return socks


def close_all(socks):
    for s in socks:
        s.close()


def count_log(d, text):
    return d.log().count(text)


def fd_count(pid):
    return len(os.listdir("/proc/%d/fd" % pid))


def rss_mb(d):
    return d.rss_kb() / 1024.0


def rss_after_work_mb(s, d):
    """The daemon's RSS after it served a call: AddressSanitizer's allocator
    gives freed memory back to the system only from inside its allocation
    calls (at most every allocator_release_to_os_interval_ms), so an idle
    sanitized daemon keeps what it freed until it does something."""
    if SANITIZED:
        d.health.Check(s.stubs.health.HealthCheckRequest(), timeout=5)
    return rss_mb(d)


def settle_rss(d, seconds=2.0):
    """The daemon's RSS once it has stopped moving by more than 2 MiB over
    half a second (at most `seconds`)."""
    end = time.monotonic() + seconds
    last = rss_mb(d)
    while time.monotonic() < end:
        time.sleep(0.5)
        now = rss_mb(d)
        if abs(now - last) < 2:
            return now
        last = now
    return last


# --------------------------------------------------------------- cases


@suite.case
def utf8_requests(s):
    spec = synthetic(s)
    d = s.daemon(data_dirs=[s.tmp])
    # A job name that is not UTF-8, at the top of the spec.
    spec["name"] = "abcX"
    req = pb.SubmitJobRequest(spec=th.spec_msg(s.stubs, spec))
    e = th.rpc_error(raw_unary, d, "/traind.v1.Trainer/SubmitJob",
                     spliced(req, b"abcX", b"abc\xff"), what="SubmitJob of a name that is not UTF-8")
    th.expect_status(e, grpc.StatusCode.INVALID_ARGUMENT)
    th.check(e.details() == "spec.name: not valid UTF-8 (byte 0xff at offset 3)",
             "message %r", e.details())
    # The request's own name: an overlong encoding of '/'.
    spec["name"] = "fine"
    req = pb.SubmitJobRequest(spec=th.spec_msg(s.stubs, spec), name="xyQQ")
    e = th.rpc_error(raw_unary, d, "/traind.v1.Trainer/SubmitJob",
                     spliced(req, b"xyQQ", b"xy\xc0\xaf"), what="SubmitJob of an overlong name")
    th.check(e.code() == grpc.StatusCode.INVALID_ARGUMENT and
             e.details() == "name: not valid UTF-8 (byte 0xc0 at offset 2)",
             "%s %r", e.code(), e.details())
    # Nested in a repeated message: a surrogate (U+D800) in a layer's name.
    spec["model"]["layers"][1]["name"] = "LAYR"
    req = pb.SubmitJobRequest(spec=th.spec_msg(s.stubs, spec))
    e = th.rpc_error(raw_unary, d, "/traind.v1.Trainer/SubmitJob",
                     spliced(req, b"LAYR", b"L\xed\xa0\x80"), what="SubmitJob of a surrogate")
    th.check(e.code() == grpc.StatusCode.INVALID_ARGUMENT and
             e.details() == "spec.model.layers[1].name: not valid UTF-8 (byte 0xed at offset 1)",
             "%s %r", e.code(), e.details())
    del spec["model"]["layers"][1]["name"]
    # Beyond U+10FFFF, in another method's request.
    e = th.rpc_error(raw_unary, d, "/traind.v1.Trainer/GetJob",
                     spliced(pb.GetJobRequest(id="j-WXYZ"), b"WXYZ", b"\xf4\x90\x80\x80"),
                     what="GetJob of an id beyond U+10FFFF")
    th.check(e.code() == grpc.StatusCode.INVALID_ARGUMENT and
             e.details() == "id: not valid UTF-8 (byte 0xf4 at offset 2)",
             "%s %r", e.code(), e.details())

    # Valid UTF-8 beyond ASCII is a name like any other, and every reply
    # still parses in a protobuf client (grpcio) and in trainctl.
    name = "caf\u00e9 \U0001F600 \u65e5\u672c"
    spec["name"] = name
    job = s.submit(d, spec)
    r = d.stub.ListJobs(pb.ListJobsRequest(), timeout=10)
    th.check([j.name for j in r.jobs] == [name], "listed names %r", [j.name for j in r.jobs])
    p = s.trainctl("list", "-o", "json", addr=d.addr)
    th.check(p.returncode == 0, "trainctl list: %s", p.stderr)
    listed = json.loads(p.stdout)
    th.check([j["name"] for j in listed.get("jobs", [])] == [name], "trainctl list %r", listed)
    s.wait_state(d, job.id, pb.SUCCEEDED, timeout=120)

    # Job files that are not UTF-8: trainctl refuses before calling, traind
    # run before running.
    good = json.dumps(spec, indent=2, ensure_ascii=False)
    bad = good.encode("utf-8").replace(name.encode("utf-8"), b"caf\xc3(")
    path = os.path.join(s.tmp, "bad-utf8.json")
    with open(path, "wb") as f:
        f.write(bad)
    offset = bad.index(b"\xc3(")
    p = s.trainctl("submit", path, addr=d.addr)
    th.check(p.returncode != 0 and "not valid UTF-8 (byte 0xc3 at offset %d)" % offset in p.stderr,
             "trainctl submit of a file that is not UTF-8: %d %s", p.returncode, p.stderr)
    import subprocess
    r2 = subprocess.run([s.traind, "run", path, "--data-dir", s.tmp], capture_output=True,
                        text=True, errors="replace", timeout=60)
    th.check(r2.returncode != 0 and "not valid UTF-8 (byte 0xc3 at offset %d)" % offset in r2.stderr,
             "traind run of a file that is not UTF-8: %d %s", r2.returncode, r2.stderr[-2000:])
    th.check(len(d.stub.ListJobs(pb.ListJobsRequest(), timeout=10).jobs) == 1,
             "no job was added by the refused requests")


@suite.case
def log_escaping(s):
    spec = synthetic(s)
    d = s.daemon(data_dirs=[s.tmp])
    forged = 'evil\ntime=2020-01-01T00:00:00.000Z level=error msg="forged" peer=unix:/x\\"'
    job = s.submit(d, spec, name=forged)
    s.wait_state(d, job.id, pb.SUCCEEDED, timeout=120)
    lines = d.log().splitlines()
    th.check(all(l.startswith("time=") for l in lines),
             "a log line does not start a record:\n%s",
             "\n".join(l for l in lines if not l.startswith("time="))[:2000])
    queued = [l for l in lines if 'msg="job queued"' in l]
    th.check(len(queued) == 1, "%d 'job queued' records", len(queued))
    fields = logfmt(queued[0])
    keys = [k for k, _ in fields]
    th.check(keys == ["time", "level", "msg", "job", "name", "owner", "peer"], "keys %r in %s", keys,
             queued[0])
    got = dict(fields)
    th.check(got["name"] == forged, "name read back as %r", got["name"])
    th.check(got["job"] == job.id and got["peer"].startswith("unix:"), "fields %r", got)
    started = [l for l in lines if 'msg="job started"' in l]
    th.check(len(started) == 1 and dict(logfmt(started[0]))["name"] == forged,
             "'job started' record %r", started)


@suite.case
def spec_size_boundary(s):
    spec = synthetic(s, n=256)
    d = s.daemon(data_dirs=[s.tmp])
    at = padded_spec(s.stubs, spec, MiB)
    th.check(at.ByteSize() == MiB, "padded to %d", at.ByteSize())
    r = d.stub.SubmitJob(pb.SubmitJobRequest(spec=at), timeout=60)
    # GetJob of it through grpcio's default 4 MiB receive limit.
    got = d.stub.GetJob(pb.GetJobRequest(id=r.job.id), timeout=30)
    th.check(got.spec.ByteSize() == MiB and got.ByteSize() < 4 * MiB,
             "GetJob: spec %d bytes, reply %d", got.spec.ByteSize(), got.ByteSize())

    over = padded_spec(s.stubs, spec, MiB + 1)
    e = th.rpc_error(d.stub.SubmitJob, pb.SubmitJobRequest(spec=over), timeout=60,
                     what="SubmitJob of a spec one byte over the limit")
    th.expect_status(e, grpc.StatusCode.INVALID_ARGUMENT, "spec:", "%d bytes" % (MiB + 1),
                     "%d bytes (1 MiB)" % MiB)
    # A request over the daemon's 2 MiB receive limit never reaches it.
    huge = padded_spec(s.stubs, spec, 2 * MiB + 4096)
    e = th.rpc_error(d.stub.SubmitJob, pb.SubmitJobRequest(spec=huge), timeout=60,
                     what="SubmitJob of a request over 2 MiB")
    th.expect_status(e, grpc.StatusCode.RESOURCE_EXHAUSTED)
    # A name over 1 KiB.
    e = th.rpc_error(d.stub.SubmitJob, pb.SubmitJobRequest(spec=th.spec_msg(s.stubs, spec),
                                                           name="n" * 1025),
                     timeout=30, what="SubmitJob of a 1025-byte name")
    th.expect_status(e, grpc.StatusCode.INVALID_ARGUMENT, "name: 1025 bytes", "1024")
    r2 = d.health.Check(s.stubs.health.HealthCheckRequest(service=""), timeout=5)
    th.check(r2.status == s.stubs.health.HealthCheckResponse.SERVING, "health after the refusals")

    # The job file loader: a spec one byte over, as JSON (padded with a long
    # name: a file holds at most 100 000 values).
    from google.protobuf import json_format
    m = th.spec_msg(s.stubs, spec)
    m.name = "n" * (MiB - m.ByteSize())
    m.name = "n" * (len(m.name) + MiB + 1 - m.ByteSize())
    th.check(m.ByteSize() == MiB + 1, "name-padded spec of %d bytes", m.ByteSize())
    path = os.path.join(s.tmp, "over.json")
    with open(path, "w") as f:
        f.write(json_format.MessageToJson(m, indent=None))
    import subprocess
    p = subprocess.run([s.traind, "run", path, "--data-dir", s.tmp], capture_output=True,
                       text=True, timeout=120)
    th.check(p.returncode != 0 and "%d bytes packed" % (MiB + 1) in p.stderr and
             "%d bytes (1 MiB)" % MiB in p.stderr,
             "traind run of a spec over 1 MiB: %d %s", p.returncode, p.stderr[-2000:])
    s.wait_state(d, r.job.id, (pb.SUCCEEDED,), timeout=180)


@suite.case
def list_pages_by_bytes(s):
    spec = synthetic(s, n=256)
    d = s.daemon(data_dirs=[s.tmp])
    big = padded_spec(s.stubs, spec, 300 * 1024)
    ids = []
    for i in range(20):
        big.name = "big-%02d" % i
        ids.append(d.stub.SubmitJob(pb.SubmitJobRequest(spec=big), timeout=60).job.id)
    # One job that fills a page by itself.
    whole = padded_spec(s.stubs, spec, MiB)
    ids.append(d.stub.SubmitJob(pb.SubmitJobRequest(spec=whole), timeout=60).job.id)
    for i in range(5):
        big.name = "after-%d" % i
        ids.append(d.stub.SubmitJob(pb.SubmitJobRequest(spec=big), timeout=60).job.id)
    total = sum(d.stub.GetJob(pb.GetJobRequest(id=i), timeout=30).ByteSize() for i in ids)
    th.check(total > 6 * MiB, "the jobs hold %d bytes, more than one reply may", total)

    # Every page through a client with grpcio's default limits.
    seen, token, pages, sizes = [], "", 0, []
    while True:
        r = d.stub.ListJobs(pb.ListJobsRequest(page_size=100000, page_token=token), timeout=30)
        pages += 1
        size = r.ByteSize()
        sizes.append((size, len(r.jobs)))
        th.check(len(r.jobs) >= 1, "page %d is empty", pages)
        th.check(size <= MiB or len(r.jobs) == 1, "page %d: %d bytes with %d jobs", pages, size,
                 len(r.jobs))
        th.check(size < 4 * MiB, "page %d: %d bytes", pages, size)
        seen += [j.id for j in r.jobs]
        token = r.next_page_token
        if not token:
            break
        th.check(pages < 100, "ListJobs does not end")
    th.check(seen == list(reversed(ids)), "paged ids %r, want %r", seen, list(reversed(ids)))
    th.check(any(n == 1 and sz > MiB for sz, n in sizes), "the 1 MiB job had a page of its own: %r",
             sizes)
    th.check(pages >= 8, "%d pages (sizes %r)", pages, sizes)
    # trainctl list reads them all too.
    p = s.trainctl("list", "-o", "json", addr=d.addr)
    th.check(p.returncode == 0, "trainctl list: %s", p.stderr[-2000:])
    listed = [j["id"] for j in json.loads(p.stdout).get("jobs", [])]
    th.check(listed == seen, "trainctl list shows %d jobs of %d", len(listed), len(seen))
    for i in ids:
        s.wait_state(d, i, (pb.SUCCEEDED,), timeout=300)


@suite.case
def slow_watch_readers(s):
    spec = synthetic(s, n=2048, epochs=100000)
    spec["training"]["batch_size"] = 32
    d = s.daemon(data_dirs=[s.tmp], threads=1, env=RSS_ENV)
    job = s.submit(d, spec)
    s.wait_state(d, job.id, pb.RUNNING, timeout=60)
    th.wait_for(lambda: d.stub.GetMetrics(pb.GetMetricsRequest(id=job.id), timeout=5).last_step
                > 200, 60, "the job to run 200 steps")
    base = settle_rss(d, 4)
    fds = fd_count(d.pid())
    socks = open_never_reading(d, "/traind.v1.Trainer/WatchMetrics",
                               pb.WatchMetricsRequest(id=job.id), 200)
    # While the job runs on, the streams get nothing past their windows.
    peak = base
    t_end = time.monotonic() + 12
    while time.monotonic() < t_end:
        peak = max(peak, rss_mb(d))
        time.sleep(0.25)
    step_then = d.stub.GetMetrics(pb.GetMetricsRequest(id=job.id), timeout=5).last_step
    print("  watch: RSS %.0f MiB before, peak %.0f MiB with 200 streams" % (base, peak))
    th.check(peak - base < 64 * RSS_SCALE, "RSS grew %.0f MiB with 200 never-reading streams (from %.0f)",
             peak - base, base)
    th.check(fd_count(d.pid()) <= fds + 4 + len(socks), "descriptors %d (before %d)",
             fd_count(d.pid()), fds)
    close_all(socks)
    th.wait_for(lambda: rss_after_work_mb(s, d) < base + 24 * RSS_SCALE, 30,
                "RSS back near %.0f MiB (now %.0f)" % (base, rss_mb(d)), 0.25)
    th.wait_for(lambda: fd_count(d.pid()) <= fds + 1, 15, "the connections' descriptors freed")
    # The daemon serves on, and the job ran on.
    r = d.stub.GetMetrics(pb.GetMetricsRequest(id=job.id), timeout=5)
    th.check(r.last_step >= step_then, "the job's steps %d after %d", r.last_step, step_then)
    w = d.stub.WatchMetrics(pb.WatchMetricsRequest(id=job.id, since_step=r.last_step), timeout=30)
    first = next(iter(w))
    th.check(first.steps and first.steps[0].step > r.last_step, "a reading watcher gets new steps")
    w.cancel()
    d.stub.CancelJob(pb.CancelJobRequest(id=job.id), timeout=30)


@suite.case
def slow_export_readers(s):
    spec = synthetic(s, n=2048)
    d = s.daemon(data_dirs=[s.tmp], threads=1, env=RSS_ENV)
    job = s.submit(d, spec)
    j = s.wait_state(d, job.id, pb.SUCCEEDED, timeout=120)
    th.check(j.last_checkpoint.bytes > 1 * MiB, "a checkpoint of %d bytes",
             j.last_checkpoint.bytes)
    base = settle_rss(d, 4)
    fds = fd_count(d.pid())
    socks = open_never_reading(d, "/traind.v1.Trainer/ExportCheckpoint",
                               pb.ExportCheckpointRequest(id=job.id), 300)
    th.wait_for(lambda: count_log(d, 'msg="exporting a checkpoint"') >= 300, 60,
                "300 exports started")
    peak = base
    t_end = time.monotonic() + 4
    while time.monotonic() < t_end:
        peak = max(peak, rss_mb(d))
        time.sleep(0.25)
    print("  export: RSS %.0f MiB before, peak %.0f MiB with 300 streams of a %.1f MiB file"
          % (base, peak, j.last_checkpoint.bytes / MiB))
    th.check(peak - base < 80 * RSS_SCALE, "RSS grew %.0f MiB with 300 never-reading exports (from %.0f)",
             peak - base, base)
    close_all(socks)
    th.wait_for(lambda: rss_after_work_mb(s, d) < base + 24 * RSS_SCALE, 30,
                "RSS back near %.0f MiB (now %.0f)" % (base, rss_mb(d)), 0.25)
    th.wait_for(lambda: fd_count(d.pid()) <= fds + 1, 15, "the connections' descriptors freed")
    # A client that reads gets the whole file.
    data = b"".join(c.data for c in d.stub.ExportCheckpoint(
        pb.ExportCheckpointRequest(id=job.id), timeout=60))
    th.check(len(data) == j.last_checkpoint.bytes, "exported %d bytes of %d", len(data),
             j.last_checkpoint.bytes)


@suite.case
def idle_connections(s):
    spec = synthetic(s, n=512)
    cfg = os.path.join(s.tmp, "traind.yaml")
    with open(cfg, "w") as f:
        f.write("max_connections: 20\n")
    d = s.daemon(data_dirs=[s.tmp], listen="both", config=cfg)
    pid = d.pid()
    with open("/proc/%d/limits" % pid) as f:
        row = [l for l in f if l.startswith("Max open files")][0].split()
    th.check(row[3] == row[4], "the descriptor limit is raised to the hard one: %s", row)
    # The client in use (one connection, shared by the harness's channels).
    r = d.health.Check(s.stubs.health.HealthCheckRequest(service=""), timeout=5)
    th.check(r.status == s.stubs.health.HealthCheckResponse.SERVING, "health")
    port = int(d.tcp_addr.rsplit(":", 1)[1])
    idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(40)]
    # Connections beyond the limit are closed at once: they read EOF; the
    # others get the server's SETTINGS and stay open.
    closed = []

    def poll_idle():
        for sk in idle:
            if sk in closed:
                continue
            sk.settimeout(0.05)
            try:
                while True:
                    b = sk.recv(4096)
                    if not b:
                        closed.append(sk)
                        break
            except (socket.timeout, BlockingIOError):
                pass
            except ConnectionResetError:
                closed.append(sk)
        return len(closed) >= 21
    th.wait_for(poll_idle, 20, "the connections beyond max_connections to be closed")
    open_idle = 40 - len(closed)
    th.check(open_idle <= 19, "%d idle connections kept with max_connections 20", open_idle)
    th.check('msg="connection refused: max_connections reached' in d.log(),
             "the refusal is logged")
    # The client already connected keeps working: health, a job, its
    # checkpoint.
    job = s.submit(d, spec)
    j = s.wait_state(d, job.id, pb.SUCCEEDED, timeout=120)
    th.check(j.last_checkpoint.file and os.path.exists(j.last_checkpoint.path),
             "the job's checkpoint %r", j.last_checkpoint)
    # A new client (another process) is refused while the idle ones stay.
    p = s.trainctl("health", addr=d.tcp_addr, timeout=60)
    th.check(p.returncode != 0, "a client beyond max_connections was served: %s", p.stdout)
    th.check(fd_count(pid) < 20 + 40, "the daemon holds %d descriptors", fd_count(pid))
    close_all(idle)
    th.wait_for(lambda: s.trainctl("health", addr=d.tcp_addr, timeout=60).returncode == 0, 30,
                "a new client served once the idle connections left")


@suite.case
def idle_timeout(s):
    cfg = os.path.join(s.tmp, "traind.yaml")
    with open(cfg, "w") as f:
        f.write("connection_idle_sec: 1\n")
    d = s.daemon(data_dirs=[s.tmp], config=cfg)
    sk = raw_connect(d)
    sk.settimeout(10)
    t0 = time.monotonic()
    got = b""
    while True:
        b = sk.recv(4096)
        if not b:
            break
        got += b
    dt = time.monotonic() - t0
    sk.close()
    # The server's SETTINGS, then GOAWAY (type 7), then the end.
    types, i = [], 0
    while i + 9 <= len(got):
        n = int.from_bytes(got[i:i + 3], "big")
        types.append(got[i + 3])
        i += 9 + n
    th.check(types[:1] == [4] and 7 in types, "frame types before the close: %r", types)
    th.check(0.5 < dt < 8, "an idle connection closed after %.1f s (connection_idle_sec 1)", dt)
    r = d.health.Check(s.stubs.health.HealthCheckRequest(service=""), timeout=5)
    th.check(r.status == s.stubs.health.HealthCheckResponse.SERVING, "health after")


sys.exit(suite.run())
