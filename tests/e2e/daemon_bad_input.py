#!/usr/bin/python3
"""Bad input over RPC: each refused with the right status code and a message
that says what is wrong, and the daemon keeps serving afterwards.

usage: daemon_bad_input.py TRAIND TRAINCTL SOURCE_DIR [CASE...]

A real traind on a temporary unix socket, driven by Python grpcio (stubs
generated from proto/, plus generic calls that send raw bytes). The data
root holds a synthetic HDF5 set, so MNIST is not needed. After every refused
call the daemon must still answer a health Check (SERVING) and a GetJob for
a job it knows.

  malformed_bytes        bytes that are not the request message, on unary,
                         streaming and health methods: INVALID_ARGUMENT
  empty_submit           SubmitJobRequest without a spec: INVALID_ARGUMENT
                         naming "spec"
  invalid_specs          invalid specs: INVALID_ARGUMENT naming the field
  graph_errors           models as graphs that do not compile (unknown input,
                         cycle, unused layer, duplicate name, shape mismatch,
                         arity, reserved name, unknown output, reshape
                         sizes): INVALID_ARGUMENT
                         naming the layer and what to fix
  spec_not_matching_data a spec that does not fit its data (batch larger
                         than the set, wrong input shape) is accepted and
                         the job FAILS with code 3 naming the field
  unknown_job            an unknown id for GetJob, CancelJob, GetMetrics and
                         WatchMetrics: NOT_FOUND naming the id; a malformed
                         one ("", "../../etc/passwd", 300 x's):
                         INVALID_ARGUMENT
  oversized              requests over 2 MiB (raw and a valid message):
                         RESOURCE_EXHAUSTED; under it, a name over 1 KiB:
                         INVALID_ARGUMENT with the sizes
  unknown_method         methods and services the daemon lacks: UNIMPLEMENTED
  paths_outside_roots    "..", absolute and symlinked dataset paths:
                         PERMISSION_DENIED; a missing file: NOT_FOUND
  too_many_devices       devices.count above --cpu-devices: FAILED_PRECONDITION;
                         a batch that does not split across the devices,
                         malformed or repeated devices.ids, ids that
                         disagree with count: INVALID_ARGUMENT; an id the
                         daemon does not have, a GPU job on a daemon
                         without GPUs (with the reason): FAILED_PRECONDITION
  cancel_finished        CancelJob on a finished job: FAILED_PRECONDITION
  bad_page_token         ListJobs with a token it never gave: INVALID_ARGUMENT
  watch_cancel_loop      50 WatchMetrics streams cancelled by the client
                         midway: the daemon keeps running and its RSS stays
                         bounded
  watch_deadline         a WatchMetrics with a short deadline ends with
                         DEADLINE_EXCEEDED on the client, promptly

Every daemon is stopped with SIGTERM and must exit 0 with no sanitizer
report. Prints one line per case, then "N passed, N failed".
"""
import os
import sys
import time

import grpc

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import traind_harness as th  # noqa: E402
from traind_harness import check, expect_status, rpc_error  # noqa: E402

args = th.parse_args(__doc__.splitlines()[1])
suite = th.Suite(args)
pb = suite.pb
S = pb.JobState
C = grpc.StatusCode
LONG = 20000  # epochs of 16 steps: minutes; cancelled by the tests


def spec(epochs=1, **kw):
    return th.synthetic_spec(suite.source_dir, epochs=epochs, **kw)


class Ctx:
    """A daemon and one job it knows, to check that it keeps serving."""

    def __init__(self, s, cpu_devices=1, env=None):
        th.make_synthetic(s.tmp)
        self.s = s
        self.d = s.daemon(data_dirs=[s.tmp], cpu_devices=cpu_devices, env=env)
        self.known = s.submit(self.d, spec(1), name="known")
        s.wait_state(self.d, self.known.id, S.SUCCEEDED, 120)

    def alive(self, after):
        d = self.d
        check(d.alive(), "the daemon exited after %s:\n%s", after, th.tail(d.log()))
        try:
            h = d.health.Check(self.s.stubs.health.HealthCheckRequest(), timeout=5)
            j = d.stub.GetJob(pb.GetJobRequest(id=self.known.id), timeout=5)
        except grpc.RpcError as e:
            raise th.TestFailure("the daemon stopped serving after %s: %s %s"
                                 % (after, e.code().name, e.details()))
        check(h.status == self.s.stubs.health.HealthCheckResponse.SERVING,
              "health is %d after %s", h.status, after)
        check(j.id == self.known.id and j.state == S.SUCCEEDED,
              "GetJob of the known job after %s: %s %s", after, j.id, S.Name(j.state))

    def raw_unary(self, path, data, timeout=10):
        f = self.d.channel().unary_unary(path, request_serializer=lambda b: b,
                                         response_deserializer=lambda b: b)
        return f(data, timeout=timeout)

    def raw_stream(self, path, data, timeout=10):
        f = self.d.channel().unary_stream(path, request_serializer=lambda b: b,
                                          response_deserializer=lambda b: b)
        return list(f(data, timeout=timeout))

    def submit_error(self, sp, code, *words):
        e = rpc_error(self.d.stub.SubmitJob,
                      pb.SubmitJobRequest(spec=th.spec_msg(self.s.stubs, sp)), timeout=10,
                      what="SubmitJob (expecting %s %s)" % (code.name, " ".join(words)))
        expect_status(e, code, *words)
        return e


@suite.case
def malformed_bytes(s):
    c = Ctx(s)
    # A length-delimited field whose length runs past the end, and a
    # truncated varint: neither parses as any message.
    for data in (b"\x0a\xff\xff\xff\xff\x0f", b"\x08\xff\xff", b"\xff\xff\xff\xff"):
        for method in ("SubmitJob", "GetJob", "ListJobs", "CancelJob", "GetMetrics"):
            e = rpc_error(c.raw_unary, "/traind.v1.Trainer/" + method, data)
            expect_status(e, C.INVALID_ARGUMENT, "not a valid", "traind.v1.")
            c.alive("malformed bytes to %s" % method)
        e = rpc_error(c.raw_stream, "/traind.v1.Trainer/WatchMetrics", data)
        expect_status(e, C.INVALID_ARGUMENT, "not a valid", "WatchMetricsRequest")
        e = rpc_error(c.raw_unary, "/grpc.health.v1.Health/Check", data)
        expect_status(e, C.INVALID_ARGUMENT, "not a valid", "HealthCheckRequest")
        c.alive("malformed bytes to the streaming and health methods")
    r = c.d.stub.ListJobs(pb.ListJobsRequest(), timeout=10)
    check(len(r.jobs) == 1, "malformed SubmitJob calls created jobs: %d listed", len(r.jobs))


@suite.case
def empty_submit(s):
    c = Ctx(s)
    e = rpc_error(c.d.stub.SubmitJob, pb.SubmitJobRequest(), timeout=10)
    expect_status(e, C.INVALID_ARGUMENT, "spec")
    c.alive("an empty SubmitJobRequest")
    e = rpc_error(c.raw_unary, "/traind.v1.Trainer/SubmitJob", b"")
    expect_status(e, C.INVALID_ARGUMENT, "spec")
    c.alive("zero bytes to SubmitJob")
    # A spec that is present but empty names what it lacks.
    e = rpc_error(c.d.stub.SubmitJob, pb.SubmitJobRequest(spec=s.stubs.job.JobSpec()),
                  timeout=10)
    expect_status(e, C.INVALID_ARGUMENT, "model")
    c.alive("an empty JobSpec")


@suite.case
def invalid_specs(s):
    c = Ctx(s)

    def bad(path, value):
        sp = spec()
        node = sp
        keys = path.split(".")
        for k in keys[:-1]:
            node = node[int(k)] if isinstance(node, list) else node.setdefault(k, {})
        last = int(keys[-1]) if isinstance(node, list) else keys[-1]
        if value is None:
            del node[last]
        else:
            node[last] = value
        return sp

    cases = [
        (bad("model.layers.0.dense.features", 0), "model.layers[0].dense.features"),
        (bad("optimizer.chain.0.adam.b1", 1.5), "optimizer.chain[0].adam.b1"),
        (bad("training.batch_size", 0), "training.batch_size"),
        (bad("model", None), "model"),
        (bad("optimizer.chain", []), "optimizer.chain"),
        (bad("model.input_shape", []), "model.input_shape"),
        (bad("optimizer.chain.0.adam.eps", -1.0), "optimizer.chain[0].adam.eps"),
        (bad("training.epochs", 0), "training.epochs"),
        (bad("model.layers.1", {}), "model.layers[1]"),
        (bad("dataset.hdf5.train_file", ""), "dataset.hdf5.train_file"),
    ]
    for sp, field in cases:
        c.submit_error(sp, C.INVALID_ARGUMENT, field)
        c.alive("an invalid spec (%s)" % field)
    r = c.d.stub.ListJobs(pb.ListJobsRequest(), timeout=10)
    check(len(r.jobs) == 1, "refused specs created jobs: %d listed", len(r.jobs))


@suite.case
def graph_errors(s):
    """Models as graphs that do not compile: INVALID_ARGUMENT naming the
    layer and what to fix, and the daemon serving on."""
    c = Ctx(s)

    def model(layers, **kw):
        sp = spec()
        sp["model"]["layers"] = layers
        sp["model"].update(kw)
        return sp

    d = lambda n, **kw: dict(dense={"features": n}, **kw)
    cases = [
        (model([d(32, name="a"), d(10, inputs=["nope"])]),
         "model.layers[1]", "inputs[0]", "no layer is named 'nope'"),
        (model([d(32, name="a", inputs=["b"]), d(10, name="b", inputs=["a"])]),
         "the inputs make a cycle", "'a'", "'b'"),
        (model([d(32, name="a", inputs=["a"]), d(10)]),
         "model.layers[0] ('a')", "its own output"),
        (model([d(32, name="a"), d(16, name="unused"), d(10, inputs=["a"])]),
         "model.layers[1] ('unused')", "not used", "remove the layer"),
        (model([d(32, name="a"), d(10, name="a")]),
         "two layers are both named 'a'"),
        (model([d(32, name="a"), d(16, name="b"), {"add": {}, "inputs": ["a", "b"]}, d(10)]),
         "add needs inputs of one shape", "(32,)", "(16,)"),
        (model([d(32, name="a"), {"add": {}}, d(10)]),
         "model.layers[1]", "add takes 2 to 8 inputs, not 1"),
        (model([d(32, name="a"), d(10, inputs=["a", "a"])]),
         "model.layers[1]", "dense takes 1 input, not 2"),
        (model([d(32, name="input"), d(10)]),
         "model.layers[0].name", "'input' names the model's input"),
        (model([d(32), d(10)], output="nothing"),
         "model.output", "no layer is named 'nothing'"),
        (model([d(32, name="a")] + [{"add": {}, "inputs": ["a"] * 9}] + [d(10)]),
         "model.layers[1].inputs", "9 inputs; at most 8"),
        (model([{"relu": {}}, {"dropout": {"rate": 0.1}}]),
         "model.layers", "at least one dense layer"),
        (model([{"name": "v", "reshape": {"shape": [5, -1]}}, d(10)]),
         "model.layers[0] ('v')", "reshape of (784,) (784 values) to (5, -1)",
         "the sizes differ"),
        (model([{"reshape": {"shape": [28, 0]}}, d(10)]),
         "model.layers[0].reshape.shape[1]", "each dimension is > 0"),
        (model([{"name": "img", "reshape": {"shape": [28, 28]}}, d(16, name="h"),
                {"name": "c", "concatenate": {}, "inputs": ["img", "h"]}, d(10)]),
         "model.layers[2] ('c')", "concatenate needs inputs that agree but along axis -1",
         "(28, 28)", "(16,)"),
    ]
    for sp, *words in cases:
        c.submit_error(sp, C.INVALID_ARGUMENT, *words)
        c.alive("a graph that does not compile (%s)" % words[0])
    r = c.d.stub.ListJobs(pb.ListJobsRequest(), timeout=10)
    check(len(r.jobs) == 1, "refused graphs created jobs: %d listed", len(r.jobs))


@suite.case
def spec_not_matching_data(s):
    # SubmitJob checks the spec and the paths but does not read the data:
    # a spec that does not fit the data fails the job when it starts, with
    # the field named, and the daemon goes on.
    c = Ctx(s)
    big_batch = spec()
    big_batch["training"]["batch_size"] = 4096
    narrow = spec()
    narrow["model"]["input_shape"] = [100]
    for sp, field in ((big_batch, "training.batch_size"), (narrow, "model.input_shape")):
        j = s.submit(c.d, sp)
        r = s.wait_state(c.d, j.id, (S.FAILED, S.SUCCEEDED), 120)
        check(r.state == S.FAILED, "a job with a bad %s ended %s", field, S.Name(r.state))
        check(r.error_code == C.INVALID_ARGUMENT.value[0] and field in r.error,
              "failed job: error_code %d error %r, expected 3 naming %s", r.error_code,
              r.error, field)
        check(not r.devices, "a failed job holds devices")
        c.alive("a job that did not fit its data")
    ok = s.submit(c.d, spec(1))
    s.wait_state(c.d, ok.id, S.SUCCEEDED, 120, "a good job to run after the failed ones")


@suite.case
def unknown_job(s):
    c = Ctx(s)
    st = c.d.stub
    for jid in ("j-0000000000dead", "", "../../etc/passwd", "x" * 300):
        malformed = not jid.startswith("j-")
        for name, call in (
                ("GetJob", lambda: st.GetJob(pb.GetJobRequest(id=jid), timeout=10)),
                ("CancelJob", lambda: st.CancelJob(pb.CancelJobRequest(id=jid), timeout=10)),
                ("GetMetrics", lambda: st.GetMetrics(pb.GetMetricsRequest(id=jid),
                                                     timeout=10)),
                ("WatchMetrics", lambda: list(st.WatchMetrics(
                    pb.WatchMetricsRequest(id=jid), timeout=10)))):
            e = rpc_error(call, what="%s of %r" % (name, jid[:20]))
            if malformed:
                expect_status(e, C.INVALID_ARGUMENT, "id", jid[:20])
            else:
                expect_status(e, C.NOT_FOUND, jid[:40])
            c.alive("%s of an unknown id %r" % (name, jid[:20]))
    # A known id with more after a NUL byte is not that job: a C string
    # cannot hold it, so the request is refused as malformed.
    jid = c.known.id + "\x00x"
    e = rpc_error(lambda: st.GetJob(pb.GetJobRequest(id=jid), timeout=10),
                  what="GetJob of an id with a NUL byte")
    expect_status(e, C.INVALID_ARGUMENT, "'id' holds a NUL byte")
    c.alive("GetJob of an id with a NUL byte")


@suite.case
def oversized(s):
    c = Ctx(s)
    big = 5 << 20
    e = rpc_error(c.raw_unary, "/traind.v1.Trainer/SubmitJob", b"\x00" * big, timeout=30)
    expect_status(e, C.RESOURCE_EXHAUSTED)
    c.alive("5 MiB of raw bytes")
    # A well-formed request: a 5 MiB name.
    req = pb.SubmitJobRequest(spec=th.spec_msg(s.stubs, spec()), name="n" * big)
    e = rpc_error(c.d.stub.SubmitJob, req, timeout=30)
    expect_status(e, C.RESOURCE_EXHAUSTED, "larger than")
    c.alive("a 5 MiB SubmitJobRequest")
    e = rpc_error(c.raw_stream, "/traind.v1.Trainer/WatchMetrics", b"\x0a" + b"\x00" * big,
                  timeout=30)
    expect_status(e, C.RESOURCE_EXHAUSTED)
    c.alive("a 5 MiB WatchMetricsRequest")
    e = rpc_error(c.d.stub.SubmitJob, pb.SubmitJobRequest(spec=th.spec_msg(s.stubs, spec()),
                                                          name="n" * (3 << 20)), timeout=30)
    expect_status(e, C.RESOURCE_EXHAUSTED, "larger than")
    c.alive("a 3 MiB SubmitJobRequest (the daemon reads at most 2 MiB)")
    # Just under the limit is read (and refused for what it says).
    req = pb.SubmitJobRequest(spec=th.spec_msg(s.stubs, spec()), name="n" * (3 << 19))
    e = rpc_error(c.d.stub.SubmitJob, req, timeout=30)
    expect_status(e, C.INVALID_ARGUMENT, "name: %d bytes" % (3 << 19), "at most 1024 bytes")
    c.alive("a 1.5 MiB request")


@suite.case
def unknown_method(s):
    c = Ctx(s)
    for path in ("/traind.v1.Trainer/NoSuchMethod", "/traind.v1.Trainer/getjob",
                 "/traind.v2.Trainer/GetJob", "/grpc.health.v1.Health/List",
                 "/no.such.Service/Call"):
        e = rpc_error(c.raw_unary, path, b"")
        expect_status(e, C.UNIMPLEMENTED, path)
        c.alive("a call to %s" % path)
        e = rpc_error(c.raw_stream, path, b"")
        expect_status(e, C.UNIMPLEMENTED)
        c.alive("a streaming call to %s" % path)


@suite.case
def paths_outside_roots(s):
    c = Ctx(s)
    th.make_synthetic(os.path.dirname(s.tmp), name=os.path.basename(s.tmp) + "-out.h5")
    os.makedirs(os.path.join(s.tmp, "outside"))
    # The daemon's root is s.tmp; a symlink inside it leads out of it.
    os.symlink("/etc", os.path.join(s.tmp, "etc-link"))
    for path in ("../" + os.path.basename(s.tmp) + "-out.h5", "/etc/passwd", "etc-link/passwd",
                 "outside/../../x.h5", "/" + "../" * 8 + "etc/passwd"):
        c.submit_error(spec(file=path), C.PERMISSION_DENIED, "escapes the data roots")
        c.alive("dataset path %s" % path)
    sp = th.reference_spec(s.source_dir)
    sp["dataset"]["idx"]["dir"] = "../../../etc"
    c.submit_error(sp, C.PERMISSION_DENIED, "escapes the data roots")
    c.alive("an IDX dir outside the roots")
    sp = spec(file="synthetic.h5", test_file="/etc/hostname")
    c.submit_error(sp, C.PERMISSION_DENIED, "/etc/hostname")
    c.alive("a test file outside the roots")
    e = c.submit_error(spec(file="no-such-file.h5"), C.NOT_FOUND, "no-such-file.h5")
    check(s.tmp in e.details(), "the not-found message does not list the roots: %r",
          e.details())
    c.alive("a missing dataset file")


@suite.case
def too_many_devices(s):
    c = Ctx(s, cpu_devices=2)
    c.submit_error(spec(devices={"count": 3}), C.FAILED_PRECONDITION, "devices.count", "2")
    c.alive("devices.count 3 of 2")
    c.submit_error(spec(devices={"count": 1000}), C.FAILED_PRECONDITION, "devices")
    c.alive("devices.count 1000 of 2")
    uneven = spec(devices={"count": 2})
    uneven["training"]["batch_size"] = 127
    c.submit_error(uneven, C.INVALID_ARGUMENT, "training.batch_size",
                   "127 does not split evenly across 2 devices")
    c.alive("batch 127 on 2 devices")
    c.submit_error(spec(devices={"ids": ["cpu:2"]}), C.FAILED_PRECONDITION, "devices.ids[0]",
                   "cpu:2 does not exist", "cpu:0 to cpu:1")
    c.submit_error(spec(devices={"ids": ["gpu:0"]}), C.INVALID_ARGUMENT, "devices.ids[0]",
                   "not a cpu device id")
    c.submit_error(spec(devices={"ids": ["cpu:1", "cpu:1"]}), C.INVALID_ARGUMENT,
                   "devices.ids[1]", "named twice")
    c.submit_error(spec(devices={"ids": ["cpu:0"], "count": 2}), C.INVALID_ARGUMENT,
                   "devices.count: 2, but devices.ids names 1 device")
    c.alive("bad devices.ids")
    # GPUs: none on a machine without a GPU or driver (or in a build without
    # CUDA): GPU jobs are refused with the reason, and ListDevices says it.
    devs = c.d.stub.ListDevices(pb.ListDevicesRequest(), timeout=10)
    if not [x for x in devs.devices if x.kind == "gpu"]:
        check(devs.gpus_unavailable, "no GPUs listed and no reason given")
        c.submit_error(spec(devices={"kind": "gpu"}), C.FAILED_PRECONDITION,
                       "asks for GPUs, but this daemon has none", devs.gpus_unavailable[:40])
        c.alive("a GPU job without GPUs")
    r = c.d.stub.ListJobs(pb.ListJobsRequest(), timeout=10)
    check(len(r.jobs) == 1, "refused jobs were listed: %d", len(r.jobs))


@suite.case
def cancel_finished(s):
    c = Ctx(s)
    e = rpc_error(c.d.stub.CancelJob, pb.CancelJobRequest(id=c.known.id), timeout=10)
    expect_status(e, C.FAILED_PRECONDITION, c.known.id, "SUCCEEDED")
    c.alive("cancelling a finished job")
    j = s.submit(c.d, spec(LONG))
    s.wait_state(c.d, j.id, S.RUNNING)
    r = c.d.stub.CancelJob(pb.CancelJobRequest(id=j.id), timeout=10)
    check(r.state == S.CANCELLED, "cancel returned %s", S.Name(r.state))
    e = rpc_error(c.d.stub.CancelJob, pb.CancelJobRequest(id=j.id), timeout=10)
    expect_status(e, C.FAILED_PRECONDITION, "CANCELLED")
    c.alive("cancelling a cancelled job")
    check(s.state(c.d, j.id) == S.CANCELLED, "a second cancel changed the job")


@suite.case
def bad_page_token(s):
    c = Ctx(s)
    # "\x00..." is not empty: it must not read as "no token".
    for tok in ("zzz", "j-0000000000dead", "\x00", "\x00" + c.known.id, "t" * 1000):
        e = rpc_error(c.d.stub.ListJobs, pb.ListJobsRequest(page_token=tok, page_size=1),
                      timeout=10, what="ListJobs with page_token %r" % tok[:20])
        expect_status(e, C.INVALID_ARGUMENT, "page_token")
        c.alive("page_token %r" % tok[:10])


@suite.case
def watch_cancel_loop(s):
    # A small ASan quarantine, so that RSS reflects live memory there too.
    env = None
    if th.sanitized(s.traind):
        env = {"ASAN_OPTIONS": os.environ.get("ASAN_OPTIONS", "") + ":quarantine_size_mb=16"}
    c = Ctx(s, env=env)
    j = s.submit(c.d, spec(LONG))
    s.wait_steps(c.d, j.id, 2000)
    req = pb.WatchMetricsRequest(id=j.id)
    rss = []
    for i in range(50):
        call = c.d.stub.WatchMetrics(req, timeout=30)
        first = next(call)
        check(first.steps and first.steps[0].step == 1 and first.job.id == j.id,
              "stream %d: first message starts at step %s", i,
              first.steps[0].step if first.steps else None)
        next(call)
        call.cancel()
        e = rpc_error(lambda: list(call))
        check(e.code() == C.CANCELLED, "stream %d ended %s after cancel", i, e.code().name)
        if i in (9, 49):
            # The daemon may still be freeing the last few streams: a few
            # hundred KiB at most, far below the limit, so no wait here.
            c.alive("%d cancelled streams" % (i + 1))
            rss.append(c.d.rss_kb())
    check(s.state(c.d, j.id) == S.RUNNING, "the watched job stopped")
    grow = (rss[1] - rss[0]) / 1024.0
    limit = 24.0
    print("  RSS after 10 streams %.1f MiB, after 50 %.1f MiB" % (rss[0] / 1024.0,
                                                                  rss[1] / 1024.0))
    check(grow < limit, "RSS grew %.1f MiB over 40 cancelled streams (limit %.0f)", grow,
          limit)
    # A watcher that stays till the end still gets the end.
    c.d.stub.CancelJob(pb.CancelJobRequest(id=j.id), timeout=10)
    last = None
    for m in c.d.stub.WatchMetrics(req, timeout=60):
        last = m
    check(last is not None and last.job.state == S.CANCELLED,
          "a full watch after the loop did not end with the CANCELLED record")


@suite.case
def watch_deadline(s):
    c = Ctx(s)
    j = s.submit(c.d, spec(LONG))
    # Points to stream: a watch sends what the job has at once, so each
    # stream below gets some before its deadline however slow the machine.
    s.wait_steps(c.d, j.id, 0)
    deadline = 1.0
    for i in range(5):
        got = 0
        t0 = time.monotonic()
        try:
            for m in c.d.stub.WatchMetrics(pb.WatchMetricsRequest(id=j.id), timeout=deadline):
                got += len(m.steps)
            raise th.TestFailure("a %.1f s WatchMetrics on a running job ended without error"
                                 % deadline)
        except grpc.RpcError as e:
            took = time.monotonic() - t0
            check(e.code() == C.DEADLINE_EXCEEDED, "stream ended %s (%s), expected "
                  "DEADLINE_EXCEEDED", e.code().name, e.details())
        check(got > 0, "no step points arrived before the deadline")
        check(took < deadline + 4.0, "the %.1f s deadline ended the stream after %.2f s",
              deadline, took)
        c.alive("a stream that hit its deadline")
    check(s.state(c.d, j.id) == S.RUNNING, "the watched job stopped")
    # Unary calls with a tiny deadline fail on the client, not in the daemon.
    for _ in range(20):
        try:
            c.d.stub.ListJobs(pb.ListJobsRequest(), timeout=0.0005)
        except grpc.RpcError as e:
            check(e.code() == C.DEADLINE_EXCEEDED, "tiny deadline: %s", e.code().name)
    c.alive("unary calls past their deadline")
    c.d.stub.CancelJob(pb.CancelJobRequest(id=j.id), timeout=10)


if __name__ == "__main__":
    sys.exit(suite.run())
