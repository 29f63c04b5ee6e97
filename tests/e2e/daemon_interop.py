#!/usr/bin/python3
"""Another gRPC implementation against the daemon: Python grpcio with stubs
generated from proto/ by grpc_tools.protoc, over loopback TCP, on MNIST.

usage: daemon_interop.py TRAIND TRAINCTL SOURCE_DIR [CASE...]

  submit_watch_list    SubmitJob the reference program (2 epochs of 6000
                       examples), WatchMetrics from the start: every step
                       point exactly once and in order, every epoch point
                       once, a job record on every message, the last one
                       SUCCEEDED; watchers from a later step and after the
                       end; the points equal GetMetrics'; ListJobs has it
  watch_many_points    a job of 1875 steps: streamed in messages of at most
                       1000 points, each point once
  health_check_watch   grpc.health.v1 Check (SERVING for "" and the Trainer,
                       NOT_FOUND for an unknown service) and Watch (SERVING
                       first; SERVICE_UNKNOWN for an unknown service;
                       NOT_SERVING when the daemon drains)
  info_and_devices     GetDaemonInfo (version, listen addresses as bound,
                       data roots, job counts, compile cache hits) and
                       ListDevices
  concurrent_clients   32 client threads, each on its own channel, make 60
                       GetJob/GetMetrics/ListJobs calls while a job trains:
                       every call succeeds and answers about that job, the
                       job still succeeds, and the daemon stops clean (under
                       the sanitizers: no leak, no error report)

MNIST comes from $TRAIND_DATA_DIR (skipped without it, exit 77; a failure
under CI=true). Every daemon is stopped with SIGTERM and must exit 0 with no
sanitizer report. Prints one line per case, then "N passed, N failed".
"""
import os
import queue
import subprocess
import sys
import threading

import grpc

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import traind_harness as th  # noqa: E402
from traind_harness import check, expect_status, rpc_error  # noqa: E402

args = th.parse_args(__doc__.splitlines()[1])
suite = th.Suite(args, needs_mnist=True)
pb = suite.pb
hpb = suite.stubs.health
S = pb.JobState
HS = hpb.HealthCheckResponse


def tcp_daemon(s, **kw):
    d = s.daemon(listen="both", client="tcp", **kw)
    check(d.addr == d.tcp_addr and d.unix_addr, "no TCP or unix address")
    return d


def collect(stream):
    msgs = []
    for m in stream:
        msgs.append(m)
    return msgs


def point_key(p):
    return (p.step, p.epoch, p.loss, p.grad_norm, p.learning_rate)


@suite.case
def submit_watch_list(s):
    d = tcp_daemon(s)
    spec = th.reference_spec(s.source_dir, epochs=2, train_limit=6000)
    job = s.submit(d, spec, name="interop")
    check(job.name == "interop" and job.spec.training.epochs == 2,
          "SubmitJob's reply does not carry the request: %s", job.name)
    msgs = collect(d.stub.WatchMetrics(pb.WatchMetricsRequest(id=job.id), timeout=120))
    check(msgs, "WatchMetrics sent nothing")
    steps = [p.step for m in msgs for p in m.steps]
    total = 2 * (6000 // 128)
    check(steps == list(range(1, total + 1)),
          "watched steps: %d points %s..%s, expected 1..%d each once in order", len(steps),
          steps[:3], steps[-3:], total)
    epochs = [(e.epoch, e.step) for m in msgs for e in m.epochs]
    check(epochs == [(1, 46), (2, 92)], "watched epoch points %s", epochs)
    check(all(m.HasField("job") and m.job.id == job.id for m in msgs),
          "a streamed message lacks the job record")
    last = msgs[-1].job
    check(last.state == S.SUCCEEDED, "last message's job is %s", S.Name(last.state))
    check(last.progress.step == total and last.metrics.test_accuracy > 0.8,
          "final record: step %d test accuracy %.3f", last.progress.step,
          last.metrics.test_accuracy)
    states = [m.job.state for m in msgs]
    check(all(st in (S.QUEUED, S.RUNNING) for st in states[:-1]),
          "a message before the last says the job ended: %s", [S.Name(x) for x in states])
    ev = [e for m in msgs for e in m.epochs]
    check(all(e.evaluated and 0.5 < e.test_accuracy <= 1 for e in ev),
          "epoch points lack test figures")
    # The same points through GetMetrics.
    g = d.stub.GetMetrics(pb.GetMetricsRequest(id=job.id), timeout=10)
    check([point_key(p) for p in g.steps] == [point_key(p) for m in msgs for p in m.steps],
          "GetMetrics and WatchMetrics disagree on the step points")
    check(list(g.epochs) == ev, "GetMetrics and WatchMetrics disagree on the epoch points")
    # From a later step, and after the end: the rest, then the end.
    later = collect(d.stub.WatchMetrics(pb.WatchMetricsRequest(id=job.id, since_step=60),
                                        timeout=60))
    lsteps = [p.step for m in later for p in m.steps]
    check(lsteps == list(range(61, total + 1)), "since_step 60: %s..%s", lsteps[:2],
          lsteps[-2:])
    check([e.epoch for m in later for e in m.epochs] == [2],
          "since_step 60: epoch points %s", [e.epoch for m in later for e in m.epochs])
    check(later[-1].job.state == S.SUCCEEDED, "late watcher's last job state")
    end = collect(d.stub.WatchMetrics(pb.WatchMetricsRequest(id=job.id, since_step=total),
                                      timeout=60))
    check(len(end) == 1 and not end[0].steps and end[0].job.state == S.SUCCEEDED,
          "a watch from the last step should be one final message: %d messages", len(end))
    lst = d.stub.ListJobs(pb.ListJobsRequest(), timeout=10)
    check([j.id for j in lst.jobs] == [job.id] and lst.jobs[0] == s.get(d, job.id),
          "ListJobs: %s", [j.id for j in lst.jobs])


@suite.case
def watch_many_points(s):
    d = tcp_daemon(s)
    spec = th.reference_spec(s.source_dir, epochs=1)
    spec["training"]["batch_size"] = 32
    job = s.submit(d, spec)
    s.wait_state(d, job.id, S.SUCCEEDED, 300)
    msgs = collect(d.stub.WatchMetrics(pb.WatchMetricsRequest(id=job.id), timeout=60))
    sizes = [len(m.steps) for m in msgs]
    steps = [p.step for m in msgs for p in m.steps]
    check(steps == list(range(1, 1876)), "%d points, %s..%s", len(steps), steps[:2],
          steps[-2:])
    check(max(sizes) <= 1000 and len(msgs) >= 2, "message sizes %s", sizes)
    check(msgs[-1].job.state == S.SUCCEEDED and msgs[-1].job.metrics.test_accuracy > 0.95,
          "final message: %s %.4f", S.Name(msgs[-1].job.state),
          msgs[-1].job.metrics.test_accuracy)


@suite.case
def health_check_watch(s):
    d = tcp_daemon(s)
    req = hpb.HealthCheckRequest
    for svc in ("", "traind.v1.Trainer"):
        r = d.health.Check(req(service=svc), timeout=5)
        check(r.status == HS.SERVING, "Check(%r) = %s", svc, HS.ServingStatus.Name(r.status))
    e = rpc_error(d.health.Check, req(service="no.such.Service"), timeout=5)
    expect_status(e, grpc.StatusCode.NOT_FOUND)
    # Watches: one per service, read on threads.
    got = {svc: queue.Queue() for svc in ("", "traind.v1.Trainer", "no.such.Service")}

    def watch(svc):
        try:
            for m in d.health.Watch(req(service=svc), timeout=60):
                got[svc].put(m.status)
            got[svc].put("end OK")
        except grpc.RpcError as e:
            got[svc].put("end %s" % e.code().name)
    threads = [threading.Thread(target=watch, args=(svc,)) for svc in got]
    for t in threads:
        t.start()

    def first(svc):
        try:
            return got[svc].get(timeout=60)
        except queue.Empty:
            raise th.TestFailure("Watch(%r) sent nothing in 60 s" % svc)
    check(first("") == HS.SERVING, "Watch('') first status")
    check(first("traind.v1.Trainer") == HS.SERVING, "Watch(Trainer) first status")
    check(first("no.such.Service") == HS.SERVICE_UNKNOWN, "Watch(unknown) first status")
    # A job runs while the daemon stops, so that draining takes a moment.
    j = s.submit(d, th.reference_spec(s.source_dir, epochs=20))
    s.wait_state(d, j.id, S.RUNNING)
    d.stop(close_channels=False)
    for t in threads:
        t.join(60)
    for svc in ("", "traind.v1.Trainer"):
        rest = []
        while not got[svc].empty():
            rest.append(got[svc].get())
        check(HS.NOT_SERVING in rest, "Watch(%r) after SIGTERM: %s, expected NOT_SERVING",
              svc, rest)
        check(rest and isinstance(rest[-1], str), "Watch(%r) did not end: %s", svc, rest)


@suite.case
def info_and_devices(s):
    d = tcp_daemon(s, cpu_devices=3)
    version = subprocess.run([s.traind, "--version"], capture_output=True,
                             text=True).stdout.split()[-1]
    i1 = d.stub.GetDaemonInfo(pb.GetDaemonInfoRequest(), timeout=10)
    check(i1.version == version, "version %r, traind --version says %r", i1.version, version)
    check(sorted(i1.listen) == sorted([d.unix_addr, d.tcp_addr]),
          "listen %s, logged %s", list(i1.listen), [d.unix_addr, d.tcp_addr])
    check(list(i1.data_dirs) == [s.mnist], "data_dirs %s", list(i1.data_dirs))
    check(i1.max_concurrent_jobs == 3 and i1.jobs_total == 0, "fresh daemon info %s", i1)
    spec = th.reference_spec(s.source_dir, epochs=1, train_limit=6000)
    a = s.submit(d, spec)
    s.wait_state(d, a.id, S.SUCCEEDED, 120)
    b = s.submit(d, spec)
    jb = s.wait_state(d, b.id, S.SUCCEEDED, 120)
    check(jb.compile_cache_hit, "the second identical job missed the compile cache")
    # Two jobs ran since i1: its uptime is behind by their run times.
    i2 = d.stub.GetDaemonInfo(pb.GetDaemonInfoRequest(), timeout=10)
    check(i2.uptime_sec > i1.uptime_sec and i2.started == i1.started, "uptime/started")
    check(i2.compile_cache_hits >= 1 and i2.compile_cache_entries >= 1 and
          i2.jobs_total == 2 and i2.jobs_running == 0 and i2.jobs_queued == 0,
          "info after two jobs: %s", i2)
    devs = d.stub.ListDevices(pb.ListDevicesRequest(), timeout=10).devices
    check([x.id for x in devs] == ["cpu:0", "cpu:1", "cpu:2"], "device ids %s",
          [x.id for x in devs])
    check(all(x.kind == "cpu" and x.threads >= 1 and not x.job_id and x.description
              for x in devs), "devices %s", devs)


@suite.case
def concurrent_clients(s):
    d = tcp_daemon(s)
    # 1872 steps: seconds, so that the load below meets it running even
    # when the clients start slowly on a loaded machine.
    spec = th.reference_spec(s.source_dir, epochs=4)
    job = s.submit(d, spec, name="under-load")
    s.wait_running(d, job.id, 60)
    n_clients, n_calls = 32, 60
    errors, answered, seen = [], [], set()
    lock = threading.Lock()

    def client(k):
        ch = grpc.insecure_channel(d.tcp_addr, options=[("grpc.enable_http_proxy", 0)])
        stub = s.stubs.grpc.TrainerStub(ch)
        ok = 0
        try:
            for i in range(n_calls):
                which = (k + i) % 3
                if which == 0:
                    r = stub.GetJob(pb.GetJobRequest(id=job.id), timeout=30)
                    good = r.id == job.id
                    with lock:
                        seen.add(r.state)
                elif which == 1:
                    r = stub.GetMetrics(pb.GetMetricsRequest(id=job.id, max_points=100),
                                        timeout=30)
                    good = all(p.step > 0 for p in r.steps)
                else:
                    r = stub.ListJobs(pb.ListJobsRequest(page_size=10), timeout=30)
                    good = any(j.id == job.id for j in r.jobs)
                ok += good
        except grpc.RpcError as e:
            with lock:
                errors.append("%s: %s" % (e.code(), e.details()))
        finally:
            ch.close()
        with lock:
            answered.append(ok)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(n_clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    check(not errors, "%d calls failed, first: %s", len(errors), errors[:1])
    check(sum(answered) == n_clients * n_calls, "%d of %d calls answered correctly",
          sum(answered), n_clients * n_calls)
    check(S.RUNNING in seen, "no call saw the job running: the load missed the training")
    s.wait_state(d, job.id, S.SUCCEEDED, 300, "the job trained under load to succeed")



if __name__ == "__main__":
    sys.exit(suite.run())
