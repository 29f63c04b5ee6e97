#!/usr/bin/python3
"""Language-model metrics through the daemon: per token, in bits and tokens.

usage: daemon_lm_metrics.py TRAIND TRAINCTL SOURCE_DIR [CASE...]

A real traind on a temporary unix socket and state directory trains small
character GPTs on Shakespeare (windows of T = 16 characters) with
training.eval_every_steps, driven with Python grpcio and trainctl:

  points_and_events    a 60-step GPT evaluated every 20 steps: every
                       GetMetrics step point has tokens_per_sec =
                       examples_per_sec x T and bits_per_token = loss / ln 2;
                       the epoch points are the evaluations at steps 20 and
                       40 (mid_epoch) and the epoch's end, each per_token
                       with its losses in bits and its rate in tokens; the
                       job's LatestMetrics likewise; the TensorBoard events
                       hold step/tokens_per_sec, step/bits_per_token,
                       epoch/train_bits_per_token and
                       epoch/test_bits_per_token equal to GetMetrics as
                       float32; the figures survive a daemon restart;
                       `trainctl get` shows bits per character and tokens/s,
                       `trainctl metrics --follow` the evaluations as
                       "step N/60" lines in bpc and tok/s and one
                       "epoch 1/1" line
  prometheus_and_mlp   /metrics scraped while a GPT and the MNIST MLP (also
                       with eval_every_steps) run side by side:
                       traind_job_tokens_per_second and
                       traind_job_bits_per_token{set="train"|"test"} for the
                       GPT, with values among its GetMetrics points, and
                       none for the MLP; the MLP's points and record do not
                       set per_token (no bits, no tokens), its evaluations
                       inside an epoch are mid_epoch points that do not
                       count as epochs, and `trainctl get` shows no bits

The corpus and MNIST come from $TRAIND_DATA_DIR (skipped without them, exit
77; a failure under CI=true). Needs yaml and prometheus_client (Debian
python3-yaml, python3-prometheus-client). Prints one line per case, then "N passed, N failed".
"""
import atexit
import math
import os
import re
import shutil
import struct
import sys
import tempfile
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import traind_harness as th  # noqa: E402
import tfevents_read as tr  # noqa: E402
from traind_harness import check  # noqa: E402

yaml, parser = th.require("python3-yaml and python3-prometheus-client", "yaml",
                          "prometheus_client.parser")

args = th.parse_args(__doc__.splitlines()[1])
suite = th.Suite(args, needs_mnist=True)
pb = suite.pb
S = pb.JobState
FINAL = (S.SUCCEEDED, S.FAILED, S.CANCELLED)
CORPUS = os.path.join(suite.mnist or "", "shakespeare", "shakespeare.txt")
if not os.path.isfile(CORPUS):
    if os.environ.get("CI") == "true":
        sys.exit("FAIL: %s is missing (CI=true)" % CORPUS)
    print("SKIP: %s is missing" % CORPUS)
    sys.exit(77)

_pb_dir = tempfile.mkdtemp(prefix="td-lmpb-")
atexit.register(shutil.rmtree, _pb_dir, True)
event_pb2, _ = tr.compile_protos(os.path.join(suite.source_dir, "proto"),
                                 os.path.join(_pb_dir, "pb"))

LN2 = math.log(2.0)
BLOCK = 16


def lm_job(steps, eval_steps, log_steps=1):
    spec = th.gpt_spec(steps=steps)
    spec["training"]["eval_every_steps"] = eval_steps
    spec["training"]["log_every_steps"] = log_steps
    return spec


def f32(x):
    return struct.unpack("<f", struct.pack("<f", x))[0]


def close(got, want, what, rel=1e-6):
    """got (a float32 or double from the daemon) equals want within float
    rounding."""
    check(math.isfinite(got) and abs(got - want) <= rel * max(abs(want), 1e-30),
          "%s: %r, want %r", what, got, want)


def all_metrics(d, job_id):
    """Every step and epoch point the job has, page after page (a running
    job adds points meanwhile)."""
    steps, epochs, since = [], {}, 0
    while True:
        m = d.stub.GetMetrics(pb.GetMetricsRequest(id=job_id, since_step=since,
                                                   max_points=10000), timeout=10)
        steps += m.steps
        for e in m.epochs:
            epochs[e.step] = e
        if not m.more:
            return steps, [epochs[k] for k in sorted(epochs)]
        check(m.last_step > since, "GetMetrics: a page with more points did not move on")
        since = m.last_step


def check_lm_points(steps, epochs):
    check(steps, "no step points")
    for p in steps:
        check(p.examples_per_sec > 0, "step %d: examples_per_sec %r", p.step, p.examples_per_sec)
        close(p.tokens_per_sec, p.examples_per_sec * BLOCK, "step %d: tokens_per_sec" % p.step,
              1e-12)
        close(p.bits_per_token, p.loss / LN2, "step %d: bits_per_token" % p.step)
    for e in epochs:
        what = "epoch point at step %d" % e.step
        check(e.per_token, "%s: per_token not set", what)
        close(e.train_bits_per_token, e.train_loss / LN2, what + ": train_bits_per_token")
        close(e.tokens_per_sec, e.examples_per_sec * BLOCK, what + ": tokens_per_sec", 1e-12)
        check(e.evaluated, "%s: not evaluated", what)
        close(e.test_bits_per_token, e.test_loss / LN2, what + ": test_bits_per_token")


def check_latest(j):
    m = j.metrics
    check(m.per_token, "job %s: LatestMetrics.per_token not set", j.id)
    check(m.test_loss > 0, "job %s: no test loss", j.id)
    close(m.test_bits_per_token, m.test_loss / LN2, "LatestMetrics.test_bits_per_token")
    close(m.train_bits_per_token, m.train_loss / LN2, "LatestMetrics.train_bits_per_token")
    close(m.tokens_per_sec, m.examples_per_sec * BLOCK, "LatestMetrics.tokens_per_sec", 1e-12)


def read_scalars(d, job_id):
    """{tag: {step: value}} from the job's TensorBoard events."""
    path = os.path.join(d.state_dir, "tensorboard", job_id)
    scalars = {}
    for name in sorted(f for f in os.listdir(path) if f.startswith("events.out.tfevents.")):
        with open(os.path.join(path, name), "rb") as f:
            records = tr.read_records(f.read())
        for rec in records[1:]:
            e = event_pb2.Event.FromString(rec)
            for v in e.summary.value:
                if v.HasField("simple_value"):
                    scalars.setdefault(v.tag, {})[e.step] = v.simple_value
    return scalars


def ctl(s, *argv, addr=None):
    p = s.trainctl(*argv, addr=addr)
    check(p.returncode == 0, "trainctl %s exited %d\nstdout: %s\nstderr: %s", " ".join(argv),
          p.returncode, p.stdout[-2000:], p.stderr[-2000:])
    return p.stdout


@suite.case
def points_and_events(s):
    d = s.daemon(cpu_devices=1)
    j = s.submit(d, lm_job(60, 20), name="lm")
    j = s.wait_state(d, j.id, FINAL, 600)
    check(j.state == S.SUCCEEDED, "job %s is %s: %s", j.id, S.Name(j.state), j.error)
    steps, epochs = all_metrics(d, j.id)
    check([p.step for p in steps] == list(range(1, 61)), "step points %s",
          [p.step for p in steps])
    check([(e.step, e.mid_epoch) for e in epochs] == [(20, True), (40, True), (60, False)],
          "epoch points (step, mid_epoch) %s", [(e.step, e.mid_epoch) for e in epochs])
    check(all(e.epoch == 1 for e in epochs), "epoch points' epochs %s",
          [e.epoch for e in epochs])
    check_lm_points(steps, epochs)
    check_latest(j)
    check(j.progress.epoch == 1, "epochs completed %d", j.progress.epoch)
    check(j.metrics.test_loss == epochs[-1].test_loss, "LatestMetrics.test_loss %r, the last "
          "evaluation's %r", j.metrics.test_loss, epochs[-1].test_loss)
    check(j.metrics.train_loss == epochs[-1].train_loss, "LatestMetrics.train_loss %r, the "
          "epoch's %r", j.metrics.train_loss, epochs[-1].train_loss)

    # TensorBoard: the new tags, equal to GetMetrics as float32.
    sc = read_scalars(d, j.id)
    for p in steps:
        for tag, want in (("step/tokens_per_sec", p.tokens_per_sec),
                          ("step/bits_per_token", p.bits_per_token)):
            got = sc.get(tag, {}).get(p.step)
            check(got is not None and got == f32(want), "step %d: %s in the events %r, "
                  "GetMetrics %r", p.step, tag, got, want)
    for e in epochs:
        for tag, want in (("epoch/train_bits_per_token", e.train_bits_per_token),
                          ("epoch/test_bits_per_token", e.test_bits_per_token)):
            got = sc.get(tag, {}).get(e.step)
            check(got is not None and got == f32(want), "epoch point at step %d: %s in the "
                  "events %r, GetMetrics %r", e.step, tag, got, want)

    # trainctl: bits per character and tokens/s.
    out = ctl(s, "get", j.id, addr=d.addr)
    bits = "%.4f bpc" % j.metrics.test_bits_per_token
    check(re.search(r"^test: .*" + re.escape(bits), out, re.M),
          "`trainctl get` shows no test line with %r:\n%s", bits, out)
    check(re.search(r"^throughput: .* tokens/s", out, re.M),
          "`trainctl get` shows no tokens/s:\n%s", out)
    out = ctl(s, "metrics", j.id, "--follow", addr=d.addr)
    lines = out.splitlines()
    mids = [ln for ln in lines if re.match(r"step \d+/60\b", ln)]
    check([ln.split()[1] for ln in mids] == ["20/60", "40/60"],
          "evaluation lines %s in:\n%s", mids, out)
    ends = [ln for ln in lines if re.match(r"epoch \d+/1\b", ln)]
    check(len(ends) == 1, "epoch lines %s in:\n%s", ends, out)
    for ln, e in zip(mids + ends, epochs):
        for want in ("test loss %.4f (%.4f bpc)" % (e.test_loss, e.test_bits_per_token),
                     "train loss %.4f (%.4f bpc)" % (e.train_loss, e.train_bits_per_token),
                     " tok/s"):
            check(want in ln, "no %r in %r", want, ln)

    # The job record keeps the figures across a restart.
    before = j.metrics
    d.restart()
    after = s.get(d, j.id).metrics
    for f in ("per_token", "test_bits_per_token", "train_bits_per_token", "tokens_per_sec",
              "test_loss", "train_loss"):
        check(getattr(after, f) == getattr(before, f), "after a restart %s is %r, before %r",
              f, getattr(after, f), getattr(before, f))


def metrics_daemon(s, **kw):
    d = s.daemon(extra=["--metrics-listen", "127.0.0.1:0"], **kw)
    m = th.wait_for(lambda: re.search(r'msg="metrics listening".* port=(\d+)', d.log()), 60,
                    "the metrics port in the log")
    d.metrics_port = int(m.group(1))
    return d


def scrape(d):
    url = "http://127.0.0.1:%d/metrics" % d.metrics_port
    with urllib.request.urlopen(url, timeout=10) as r:
        check(r.status == 200, "GET /metrics: %d", r.status)
        text = r.read().decode()
    return {f.name: f for f in parser.text_string_to_metric_families(text)}


def samples(fams, family, **labels):
    fam = fams.get(family)
    if fam is None:
        return []
    return [sm.value for sm in fam.samples
            if sm.name == family and all(sm.labels.get(k) == v for k, v in labels.items())]


@suite.case
def prometheus_and_mlp(s):
    d = metrics_daemon(s, cpu_devices=2)
    # Both run until cancelled; the GPT is evaluated every 20 steps (a step
    # point every 5), the MLP (20 steps an epoch) every 7.
    lm = s.submit(d, lm_job(1000000, 20, 5), name="lm")
    mlp_spec = th.reference_spec(suite.source_dir, 100000, train_limit=2560, test_limit=512)
    mlp_spec["training"]["eval_every_steps"] = 7
    mlp = s.submit(d, mlp_spec, name="mlp")
    s.wait_steps(d, lm.id, 40)
    s.wait_steps(d, mlp.id, 45)

    def scraped_lm(f):
        return (samples(f, "traind_job_tokens_per_second", job=lm.id) and
                samples(f, "traind_job_bits_per_token", job=lm.id, set="test") and
                samples(f, "traind_job_loss", job=mlp.id))
    fams = th.wait_for(lambda: (lambda f: f if scraped_lm(f) else None)(
        s.while_running(d, mlp.id, lambda: s.while_running(d, lm.id, lambda: scrape(d),
                                                           "/metrics"), "/metrics")),
        60, "the GPT's per-token gauges in /metrics", interval=0.2)
    for name in ("traind_job_tokens_per_second", "traind_job_bits_per_token"):
        check(fams[name].type == "gauge", "%s is a %s", name, fams[name].type)
    tps = samples(fams, "traind_job_tokens_per_second", job=lm.id)
    train = samples(fams, "traind_job_bits_per_token", job=lm.id, set="train")
    test = samples(fams, "traind_job_bits_per_token", job=lm.id, set="test")
    check(len(tps) == 1 and len(train) == 1 and len(test) == 1,
          "GPT samples: tokens/s %s, train bits %s, test bits %s", tps, train, test)
    check(samples(fams, "traind_job_tokens_per_second", job=mlp.id) == [] and
          samples(fams, "traind_job_bits_per_token", job=mlp.id) == [],
          "the MLP has per-token gauges in /metrics")
    # The scraped values are the GPT's points as GetMetrics gives them.
    steps, epochs = all_metrics(d, lm.id)
    check_lm_points(steps, epochs)
    check(any(e.mid_epoch for e in epochs), "the GPT has no evaluation inside its epoch")
    rates = {p.tokens_per_sec for p in steps} | {e.tokens_per_sec for e in epochs}
    check(tps[0] in rates, "tokens/s %r in /metrics is no GetMetrics point's", tps[0])
    check(train[0] in {p.bits_per_token for p in steps},
          "train bits %r in /metrics is no step point's", train[0])
    check(test[0] in {e.test_bits_per_token for e in epochs},
          "test bits %r in /metrics is no evaluation's", test[0])

    # The MLP's figures are not per token.
    g = s.while_running(d, mlp.id, lambda: s.get(d, mlp.id), "the MLP's record")
    steps, epochs = all_metrics(d, mlp.id)
    check(steps and epochs, "MLP: %d step points, %d epoch points", len(steps), len(epochs))
    for p in steps:
        check(p.tokens_per_sec == 0 and p.bits_per_token == 0,
              "MLP step %d: tokens_per_sec %r, bits_per_token %r", p.step, p.tokens_per_sec,
              p.bits_per_token)
    for e in epochs:
        check(not e.per_token and e.tokens_per_sec == 0 and e.train_bits_per_token == 0 and
              e.test_bits_per_token == 0, "MLP epoch point at step %d is per token: %s", e.step, e)
    mids = [e for e in epochs if e.mid_epoch]
    ends = [e for e in epochs if not e.mid_epoch]
    check(mids and ends, "MLP: %d evaluations inside epochs, %d epoch ends", len(mids),
          len(ends))
    check(all(e.step % 7 == 0 and e.step % 20 != 0 for e in mids),
          "MLP mid-epoch points at steps %s", [e.step for e in mids])
    check(all(e.step % 20 == 0 for e in ends), "MLP epoch ends at steps %s",
          [e.step for e in ends])
    # Read before the points: the epochs completed count the ends only.
    check(g.progress.epoch <= len(ends), "MLP: %d epochs completed, %d epoch ends",
          g.progress.epoch, len(ends))
    check(not g.metrics.per_token and g.metrics.tokens_per_sec == 0 and
          g.metrics.test_bits_per_token == 0 and g.metrics.train_bits_per_token == 0,
          "the MLP's LatestMetrics are per token: %s", g.metrics)
    out = ctl(s, "get", mlp.id, addr=d.addr)
    check("bpc" not in out and "bits" not in out and "tokens/s" not in out,
          "`trainctl get` of the MLP shows per-token figures:\n%s", out)
    check(re.search(r"^throughput: +\S+ examples/s$", out, re.M),
          "`trainctl get` of the MLP: no examples/s line:\n%s", out)
    for jid in (lm.id, mlp.id):
        d.stub.CancelJob(pb.CancelJobRequest(id=jid), timeout=10)
        s.wait_state(d, jid, FINAL, 120)


sys.exit(suite.run())
