#!/usr/bin/python3
"""The daemon's Prometheus endpoint, scraped during real training jobs.

usage: daemon_prometheus.py TRAIND TRAINCTL SOURCE_DIR [CASE...]

A real traind with --metrics-listen 127.0.0.1:0 (the port from its log)
trains the reference program on real MNIST; /metrics is fetched over HTTP
and parsed with prometheus_client's exposition-format parser (Debian
python3-prometheus-client):

  scrape_while_training  every family present with its type; the running
                         job's gauges agree with GetJob (epochs, test
                         accuracy, loss, step no later than GetJob's);
                         device busy as ListDevices says
  counters_agree         after the jobs: jobs by state as ListJobs says,
                         the step-time histogram counts every step, RPC
                         counts by method and code equal the calls made
                         (GetJob OK and NOT_FOUND), checkpoints written as
                         the job records say, compile cache as
                         GetDaemonInfo says
  off_by_default         without --metrics-listen nothing listens

MNIST comes from $TRAIND_DATA_DIR (skipped without it, exit 77; a failure
under CI=true). Prints one line per case, then "N passed, N failed".
"""
import os
import re
import sys
import time
import urllib.request

import grpc

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import traind_harness as th  # noqa: E402
from traind_harness import check  # noqa: E402

parser, = th.require("python3-prometheus-client", "prometheus_client.parser")
text_string_to_metric_families = parser.text_string_to_metric_families

args = th.parse_args(__doc__.splitlines()[1])
suite = th.Suite(args, needs_mnist=True)
pb = suite.pb
S = pb.JobState

FAMILIES = {
    "traind_build_info": "gauge", "traind_uptime_seconds": "gauge", "traind_jobs": "gauge",
    "traind_job_step": "gauge", "traind_job_total_steps": "gauge",
    "traind_job_epochs_completed": "gauge", "traind_job_examples_per_second": "gauge",
    "traind_job_loss": "gauge", "traind_job_train_accuracy": "gauge",
    "traind_job_test_accuracy": "gauge", "traind_job_test_loss": "gauge",
    "traind_step_seconds": "histogram", "traind_checkpoint_write_seconds": "histogram",
    "traind_checkpoints": "counter", "traind_rpc_requests": "counter",
    "traind_rpc_seconds": "histogram", "traind_compile_cache_hits": "counter",
    "traind_compile_cache_misses": "counter", "traind_compile_cache_entries": "gauge",
    "traind_device_busy": "gauge",
}


def ref(epochs, **kw):
    return th.reference_spec(suite.source_dir, epochs, **kw)


def metrics_daemon(s, workdir=None):
    extra = ["--metrics-listen", "127.0.0.1:0"]
    if workdir:
        d = th.Daemon(s.traind, s.workdir(workdir), data_dirs=[s.mnist], stubs=s.stubs,
                      extra=extra).start()
    else:
        d = s.daemon(extra=extra)
    m = th.wait_for(lambda: re.search(r'msg="metrics listening".* port=(\d+)', d.log()), 60,
                    "the metrics port in the log")
    d.metrics_port = int(m.group(1))
    return d


def scrape(d):
    url = "http://127.0.0.1:%d/metrics" % d.metrics_port
    with urllib.request.urlopen(url, timeout=10) as r:
        check(r.status == 200, "GET /metrics: %d", r.status)
        ctype = r.headers.get("Content-Type", "")
        check(ctype.startswith("text/plain") and "version=0.0.4" in ctype,
              "Content-Type %r", ctype)
        text = r.read().decode()
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    return fams


def samples(fam, name=None, **labels):
    """The values of fam's samples named name (default: the family's) whose
    labels include the given ones."""
    name = name or fam.name
    return [sm.value for sm in fam.samples
            if sm.name == name and all(sm.labels.get(k) == v for k, v in labels.items())]


def one(fam, name=None, **labels):
    v = samples(fam, name, **labels)
    check(len(v) == 1, "%s %s: %d samples", name or fam.name, labels, len(v))
    return v[0]


def wait_published(d, pred, what, timeout=60):
    """Scrapes until pred(families) holds (the daemon publishes every
    second)."""
    return th.wait_for(lambda: (lambda f: f if pred(f) else None)(scrape(d)), timeout, what,
                       interval=0.2)


@suite.case
def scrape_while_training(s):
    d = metrics_daemon(s)
    # Batch 32: epochs of 1875 steps, several seconds each, so that the
    # once-a-second rendering and GetJob usually see the same epoch.
    sp = ref(20)
    sp["training"]["batch_size"] = 32
    j = s.submit(d, sp, name="scraped")

    def first_epoch():
        g = s.get(d, j.id)
        check(g.state in (S.QUEUED, S.RUNNING), "the job ended %s before its first epoch "
              "was seen: %s", S.Name(g.state), g.error)
        return g.progress.epoch >= 1
    th.wait_for(first_epoch, 300, "the first epoch")
    fams = wait_published(d, lambda f: "traind_job_test_accuracy" in f and
                          samples(f["traind_job_test_accuracy"], job=j.id) and
                          one(f["traind_job_epochs_completed"], job=j.id) >= 1,
                          "the job's first epoch in /metrics")
    for name, typ in FAMILIES.items():
        check(name in fams, "family %s missing (have %s)", name, sorted(fams))
        check(fams[name].type == typ, "%s is a %s, want %s", name, fams[name].type, typ)
    # Epoch-level values change once per epoch: compare them when the
    # scrape and GetJob see the same epoch.
    for _ in range(100):
        f = scrape(d)
        g = s.get(d, j.id)
        check(g.state == S.RUNNING, "the job ended (%s) before /metrics and GetJob agreed on "
              "an epoch; make it longer", S.Name(g.state))
        epochs = one(f["traind_job_epochs_completed"], job=j.id)
        if epochs != g.progress.epoch:
            time.sleep(0.2)
            continue
        check(one(f["traind_job_test_accuracy"], job=j.id) == g.metrics.test_accuracy,
              "test accuracy %r in /metrics, %r from GetJob",
              one(f["traind_job_test_accuracy"], job=j.id), g.metrics.test_accuracy)
        check(one(f["traind_job_test_loss"], job=j.id) == g.metrics.test_loss, "test loss")
        check(one(f["traind_job_train_accuracy"], job=j.id) == g.metrics.train_accuracy,
              "train accuracy")
        check(one(f["traind_job_step"], job=j.id) <= g.progress.step,
              "step %r in /metrics is ahead of GetJob's %d", one(f["traind_job_step"], job=j.id),
              g.progress.step)
        check(one(f["traind_job_total_steps"], job=j.id) == g.progress.total_steps,
              "total steps")
        check(one(f["traind_device_busy"], device="cpu:0", job=j.id) == 1, "cpu:0 not busy")
        check(one(f["traind_jobs"], state="RUNNING") == 1, "running jobs")
        break
    else:
        raise th.TestFailure("/metrics and GetJob never agreed on the epoch")
    d.stub.CancelJob(pb.CancelJobRequest(id=j.id), timeout=10)


@suite.case
def counters_agree(s):
    d = metrics_daemon(s)
    a = s.submit(d, ref(1, train_limit=6000), name="a")
    b = s.submit(d, ref(1, train_limit=6000, checkpoint={"every_steps": 10}), name="b")
    s.wait_state(d, a.id, S.SUCCEEDED, 120)
    jb = s.wait_state(d, b.id, S.SUCCEEDED, 120)
    ja = s.get(d, a.id)
    gets_ok = 5
    for _ in range(gets_ok - 1):
        s.get(d, a.id)  # with the one above: gets_ok GetJob calls answered OK
    for _ in range(3):
        try:
            d.stub.GetJob(pb.GetJobRequest(id="j-nosuchjob"), timeout=10)
        except grpc.RpcError as e:
            check(e.code() == grpc.StatusCode.NOT_FOUND, "unknown job: %s", e.code())
    steps = ja.progress.step + jb.progress.step
    written = ja.checkpoints_written + jb.checkpoints_written
    # At least a's final checkpoint and b's first periodic and last one:
    # more periodic ones when the writer keeps up (a busy one delays them).
    check(written >= 3, "the job records say %d checkpoints were written", written)
    info = d.stub.GetDaemonInfo(pb.GetDaemonInfoRequest(), timeout=10)
    get = "/traind.v1.Trainer/GetJob"

    def problems(f):
        """What the rendering f does not (yet) agree with. The loop renders
        its state once a second, and the daemon counts a call when the call
        ends on its side, which can be just after the client has the
        answer: the figures settle within a rendering or two."""
        out = []

        def want(value, what, ok):
            if not ok:
                out.append("%s is %r" % (what, value))
        v = one(f["traind_step_seconds"], "traind_step_seconds_count")
        want(v, "the step-time count (every step: %d)" % steps, v == steps)
        # The wait_state polls above made GetJob calls too: count them all
        # from the daemon's side is what /metrics does; the NOT_FOUNDs are
        # exact.
        nf = samples(f["traind_rpc_requests"], "traind_rpc_requests_total", method=get,
                     code="NOT_FOUND")
        want(nf, "GetJob NOT_FOUND count (3)", nf == [3])
        ok = samples(f["traind_rpc_requests"], "traind_rpc_requests_total", method=get,
                     code="OK")
        want(ok, "GetJob OK count (>= %d)" % gets_ok, len(ok) == 1 and ok[0] >= gets_ok)
        lat = samples(f["traind_rpc_seconds"], "traind_rpc_seconds_count", method=get)
        want(lat, "GetJob latency count (OK + NOT_FOUND: %s + %s)" % (ok, nf),
             len(ok) == 1 and len(nf) == 1 and lat == [ok[0] + nf[0]])
        v = samples(f["traind_rpc_requests"], "traind_rpc_requests_total",
                    method="/traind.v1.Trainer/SubmitJob", code="OK")
        want(v, "SubmitJob count (2)", v == [2])
        v = (samples(f["traind_jobs"], state="SUCCEEDED"), samples(f["traind_jobs"],
                                                                   state="RUNNING"))
        want(v, "jobs SUCCEEDED, RUNNING (2, 0)", v == ([2], [0]))
        v = samples(f["traind_checkpoints"], "traind_checkpoints_total", result="ok")
        want(v, "checkpoints written (the job records: %d)" % written, v == [written])
        v = samples(f["traind_checkpoint_write_seconds"], "traind_checkpoint_write_seconds_count")
        want(v, "checkpoint histogram count (%d)" % written, v == [written])
        v = (samples(f["traind_compile_cache_hits"], "traind_compile_cache_hits_total"),
             samples(f["traind_compile_cache_misses"], "traind_compile_cache_misses_total"))
        want(v, "compile cache hits, misses (GetDaemonInfo: %d, %d)"
             % (info.compile_cache_hits, info.compile_cache_misses),
             v == ([info.compile_cache_hits], [info.compile_cache_misses]))
        v = samples(f["traind_device_busy"], device="cpu:0", job="")
        want(v, "cpu:0 busy after the jobs", v == [0])
        return out

    last = [None]

    def settled():
        f = scrape(d)
        last[0] = problems(f)
        return f if not last[0] else None
    try:
        f = th.wait_for(settled, 60, "/metrics to agree with the API", interval=0.2)
    except th.TestFailure as e:
        raise th.TestFailure("%s; in the last rendering: %s" % (e, "; ".join(last[0])))
    # Buckets are cumulative and end with +Inf = count.
    buckets = [(sm.labels["le"], sm.value) for sm in f["traind_step_seconds"].samples
               if sm.name == "traind_step_seconds_bucket"]
    check(buckets[-1] == ("+Inf", steps) and
          all(buckets[i][1] <= buckets[i + 1][1] for i in range(len(buckets) - 1)),
          "step buckets %s", buckets)


def listening_tcp(pid):
    """The TCP ports the process listens on (from /proc)."""
    inodes = set()
    fd_dir = "/proc/%d/fd" % pid
    for fd in os.listdir(fd_dir):
        try:
            m = re.match(r"socket:\[(\d+)\]", os.readlink(os.path.join(fd_dir, fd)))
        except OSError:
            continue
        if m:
            inodes.add(m.group(1))
    ports = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(table):
            continue
        for line in open(table).read().splitlines()[1:]:
            f = line.split()
            if f[3] == "0A" and f[9] in inodes:  # LISTEN
                ports.append(int(f[1].rsplit(":", 1)[1], 16))
    return ports


@suite.case
def off_by_default(s):
    d = s.daemon()
    check('msg="metrics listening"' not in d.log(), "metrics listening without the option")
    check(listening_tcp(d.pid()) == [], "the daemon listens on TCP ports %s",
          listening_tcp(d.pid()))
    d2 = metrics_daemon(s, "with-metrics")
    check(listening_tcp(d2.pid()) == [d2.metrics_port], "with --metrics-listen: %s, want [%d]",
          listening_tcp(d2.pid()), d2.metrics_port)
    # An address that cannot be served stops the start with a message.
    bad = th.Daemon(s.traind, s.workdir("bad"), data_dirs=[s.mnist], stubs=s.stubs,
                    extra=["--metrics-listen", "256.1.1.1:80"])
    p = __import__("subprocess").run(bad.argv(), capture_output=True, text=True, timeout=30)
    check(p.returncode != 0 and "metrics_listen" in p.stderr, "a bad metrics address: exit %d: %s",
          p.returncode, p.stderr[-300:])


if __name__ == "__main__":
    sys.exit(suite.run())
