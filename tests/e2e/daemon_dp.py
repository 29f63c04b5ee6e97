#!/usr/bin/python3
"""Differentially private training (training.dp_sgd) through the daemon.

usage: daemon_dp.py TRAIND TRAINCTL SOURCE_DIR [CASE...]

A real traind on a temporary unix socket and state directory, driven with
Python grpcio; checkpoints opened with h5py; the privacy accountant's
reference is Google's dp-accounting in the source tree's .venv:

  epsilon_reported   a DP-SGD MLP on 6,000 MNIST examples (Poisson batches of
                     64 expected examples, 2 epochs): epsilon after each
                     epoch in GetMetrics and in the job record equals
                     dp-accounting's RDP epsilon for those steps (1e-6
                     relative), grows from epoch to epoch, and equals what
                     `trainctl dp-budget` computes for the job file before
                     it is submitted; `trainctl get` prints it
  target_epsilon     the same job with a target epsilon below what its 2
                     epochs would spend: it stops before exceeding it,
                     SUCCEEDED with a note naming target_epsilon, at the
                     step `trainctl dp-budget` predicts, its epsilon at most
                     the target
  two_devices        the DP job on 2 CPU devices equals it on 1 (the noise
                     is drawn once for the batch, from the same key): after
                     10 steps every parameter within a relative error of
                     1e-5, the same epsilon
  kill9_bitwise      SIGKILL of the daemon while a DP job runs, once it has a
                     checkpoint; after the restart the job resumes and its
                     end is bit for bit the uninterrupted run's
  mnist_dp_60_epochs (long) config/jobs/mnist_dp.yaml as shipped (the
                     TensorFlow Privacy tutorial's CNN and setting, 60
                     epochs): at least 95% test accuracy, at the epsilon
                     dp-accounting gives for its 14,040 steps (about 2.6)
  example_report     training.per_example_report on an MLP at learning rate
                     0 (so that every step's parameters are the initial
                     ones): the report's norms equal float64 per-example
                     gradient norms computed with numpy from the
                     checkpoint's parameters (1e-5 relative), its top-k are
                     the k largest of the training set (each once, with
                     its label and its input), its histogram counts every
                     norm in the right bucket, TensorBoard's events hold the
                     same histogram; training is unchanged (bitwise the
                     losses of the job without the report); `trainctl
                     examples --top 5 --png` prints them and writes a PNG
                     whose tiles are those MNIST images (read back with
                     zlib); with DP-SGD the report counts the norms above
                     the clip (exactly, with SHUFFLE), and with Poisson
                     sampling (examples drawn twice) names each once; GetExamples before an epoch's end is
                     NOT_FOUND, for a job without the report
                     FAILED_PRECONDITION; the report outlives a restart
  bad_input          a negative clip, a negative noise multiplier, a delta of
                     1 or more, an unknown sampling, batch_norm, attention,
                     clip_by_global_norm in the chain: INVALID_ARGUMENT (or
                     UNIMPLEMENTED for attention) at submission, each saying
                     what to fix; delta at or above 1 / (training examples)
                     fails the job with a message naming target_delta; the
                     daemon keeps serving

MNIST comes from $TRAIND_DATA_DIR (skipped without it, exit 77; a failure
under CI=true). Needs h5py, numpy and yaml (Debian python3-h5py,
python3-numpy, python3-yaml). Prints one line per case, then "N passed, N
failed".
"""
import copy
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import zlib

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import traind_harness as th  # noqa: E402
from traind_harness import check  # noqa: E402

import grpc  # noqa: E402
import tfevents_read as tr  # noqa: E402

h5py, np, yaml = th.require("python3-h5py, python3-numpy and python3-yaml", "h5py", "numpy",
                            "yaml")

args = th.parse_args(__doc__.splitlines()[1])
suite = th.Suite(args, needs_mnist=True)
pb = suite.pb
S = pb.JobState
FINAL = (S.SUCCEEDED, S.FAILED, S.CANCELLED)
N, BATCH, DELTA, SIGMA = 6000, 64, 1e-5, 1.1


def dp_spec(epochs=2, devices=1, max_steps=0, **dp):
    with open(os.path.join(suite.source_dir, "config/jobs/mnist_dp.yaml")) as f:
        spec = yaml.safe_load(f)
    spec["training"]["epochs"] = epochs
    spec["training"]["batch_size"] = BATCH
    spec["dataset"]["train_limit"] = N
    spec["dataset"]["test_limit"] = 1000
    spec["training"]["dp_sgd"].update(dp)
    if max_steps:
        spec["training"]["max_steps"] = max_steps
    if devices > 1:
        spec["devices"] = {"count": devices}
    return spec


def reference_eps(steps, q=BATCH / N):
    """dp-accounting's epsilon (RDP accountant, Opacus's orders) after steps
    of sampling rate q."""
    code = ("import sys, numpy as np\n"
            "from dp_accounting.rdp import rdp_privacy_accountant as r\n"
            "o = np.array([1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64)), float)\n"
            "q, s, d = %r, %r, %r\n"
            "for n in sys.argv[1:]:\n"
            "    print(r.compute_epsilon(o, r._compute_rdp_poisson_subsampled_gaussian(q, s, o)"
            " * int(n), d)[0])\n" % (q, SIGMA, DELTA))
    py = os.path.join(suite.source_dir, ".venv/bin/python")
    p = subprocess.run([py, "-c", code] + [str(n) for n in steps], capture_output=True, text=True,
                       timeout=120)
    if p.returncode:
        raise th.TestFailure("dp-accounting in %s: %s" % (py, p.stderr[-500:]))
    return [float(v) for v in p.stdout.split()]


def report_spec(n=512, batch=64, top_k=16, **training):
    """A small MLP at learning rate 0 with the per-example report."""
    spec = {"name": "pe-report", "model": {"input_shape": [784], "layers": [
        {"dense": {"features": 32}}, {"relu": {}}, {"dense": {"features": 10}}],
        "loss": "SOFTMAX_CROSS_ENTROPY"},
        "optimizer": {"chain": [{"sgd": {"learning_rate": {"constant": 0.0}}}]},
        "dataset": {"idx": {"dir": "mnist"}, "train_limit": n, "test_limit": 256},
        "training": {"epochs": 1, "batch_size": batch, "seed": 3,
                     "per_example_report": {"top_k": top_k}}}
    spec["training"].update(training)
    return spec


def mnist_train(n):
    d = os.path.join(suite.mnist, "mnist")
    x = th.read_idx(os.path.join(d, "train-images-idx3-ubyte.gz"))[:n]
    y = th.read_idx(os.path.join(d, "train-labels-idx1-ubyte.gz"))[:n]
    return x, y.astype(np.int64)


def reference_norms(params, x, y):
    """Each example's gradient norm of its softmax cross-entropy, float64."""
    w1, b1 = params["layer1/w"].astype(np.float64), params["layer1/b"].astype(np.float64)
    w2, b2 = params["layer2/w"].astype(np.float64), params["layer2/b"].astype(np.float64)
    x = x.reshape(len(x), -1).astype(np.float64) / 255.0
    h = x @ w1 + b1
    a = np.maximum(h, 0.0)
    z = a @ w2 + b2
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    dz = p - np.eye(10)[y]
    dh = (dz @ w2.T) * (h > 0)
    sq = ((a * a).sum(1) * (dz * dz).sum(1) + (dz * dz).sum(1) + (x * x).sum(1) * (dh * dh).sum(1)
          + (dh * dh).sum(1))
    return np.sqrt(sq)


def read_png(path):
    """(height, width, channels, pixels) of an 8-bit gray or RGB PNG."""
    with open(path, "rb") as f:
        data = f.read()
    check(data[:8] == b"\x89PNG\r\n\x1a\n", "%s is not a PNG", path)
    at, idat, hdr = 8, b"", None
    while at < len(data):
        n, kind = struct.unpack(">I4s", data[at:at + 8])
        body = data[at + 8:at + 8 + n]
        check(zlib.crc32(kind + body) == struct.unpack(">I", data[at + 8 + n:at + 12 + n])[0],
              "%s: chunk %s CRC", path, kind)
        if kind == b"IHDR":
            hdr = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        at += 12 + n
    w, h, depth, ctype = hdr[0], hdr[1], hdr[2], hdr[3]
    check(depth == 8 and ctype in (0, 2), "%s: depth %d colour type %d", path, depth, ctype)
    c = 1 if ctype == 0 else 3
    raw, stride = zlib.decompress(idat), w * c
    out = np.zeros((h, stride), np.int64)
    prev = np.zeros(stride, np.int64)
    for r in range(h):  # the PNG filters, undone
        ft, line = raw[r * (stride + 1)], np.frombuffer(raw, np.uint8, stride,
                                                       r * (stride + 1) + 1).astype(np.int64)
        cur = np.zeros(stride, np.int64)
        for i in range(stride):
            left = cur[i - c] if i >= c else 0
            up, ul = prev[i], prev[i - c] if i >= c else 0
            if ft == 0:
                pred = 0
            elif ft == 1:
                pred = left
            elif ft == 2:
                pred = up
            elif ft == 3:
                pred = (left + up) // 2
            else:
                pa, pb, pc = abs(up - ul), abs(left - ul), abs(left + up - 2 * ul)
                pred = left if pa <= pb and pa <= pc else up if pb <= pc else ul
            cur[i] = (line[i] + pred) & 0xFF
        out[r], prev = cur, cur
    return h, w, c, out.reshape(h, w, c)


def tb_histograms(d, job_id):
    """{step: HistogramProto} of the job's per-example norms."""
    pbdir = tempfile.mkdtemp(prefix="td-tbpb-")
    try:
        event_pb2, _ = tr.compile_protos(os.path.join(suite.source_dir, "proto"),
                                         os.path.join(pbdir, "pb"))
        path = os.path.join(d.state_dir, "tensorboard", job_id)
        out = {}
        for name in sorted(os.listdir(path)):
            with open(os.path.join(path, name), "rb") as f:
                for rec in tr.read_records(f.read())[1:]:
                    e = event_pb2.Event.FromString(rec)
                    for v in e.summary.value:
                        if v.tag == "epoch/grad_norm_per_example":
                            out[e.step] = v.histo
        return out
    finally:
        shutil.rmtree(pbdir, ignore_errors=True)


def epoch_points(d, job_id):
    """The job's epoch points (not those inside an epoch), every page."""
    epochs, since = [], 0
    while True:
        m = d.stub.GetMetrics(pb.GetMetricsRequest(id=job_id, since_step=since), timeout=30)
        epochs += [e for e in m.epochs if not e.mid_epoch]
        if not m.more:
            return epochs
        since = m.last_step


def run_to_end(s, d, spec, timeout=600):
    j = s.submit(d, spec)
    j = s.wait_state(d, j.id, FINAL, timeout)
    check(j.state == S.SUCCEEDED, "job %s is %s: %s", j.id, S.Name(j.state), j.error)
    return j


def leaves(path, group=None):
    out = {}
    with h5py.File(path, "r") as f:
        (f[group] if group else f).visititems(
            lambda n, o: out.__setitem__(n, o[()]) if isinstance(o, h5py.Dataset) else None)
    return out


def budget(s, spec, *extra):
    path = os.path.join(s.workdir("jobs"), "budget.yaml")
    th.write_job(path, spec)
    p = s.trainctl("dp-budget", path, "-o", "json", *extra)
    check(p.returncode == 0, "trainctl dp-budget exited %d: %s", p.returncode, p.stderr)
    return json.loads(p.stdout)


@suite.case
def epsilon_reported(s):
    d = s.daemon(cpu_devices=1)
    spec = dp_spec()
    plan = budget(s, spec)
    j = run_to_end(s, d, spec)
    steps_per_epoch = N // BATCH
    epochs = epoch_points(d, j.id)
    check(len(epochs) == 2, "%d epoch points", len(epochs))
    want = reference_eps([steps_per_epoch * (k + 1) for k in range(len(epochs))])
    for e, w, b in zip(epochs, want, plan["epochs"]):
        check(e.dp and e.delta == DELTA, "epoch %d: dp %s delta %g", e.epoch, e.dp, e.delta)
        check(abs(e.epsilon - w) <= 1e-6 * w, "epoch %d: epsilon %.9g, dp-accounting %.9g",
              e.epoch, e.epsilon, w)
        check(abs(b["epsilon"] - w) <= 1e-6 * w, "epoch %d: dp-budget %.9g, dp-accounting %.9g",
              e.epoch, b["epsilon"], w)
    check(epochs[1].epsilon > epochs[0].epsilon, "epsilon does not grow: %s",
          [e.epsilon for e in epochs])
    check(j.metrics.dp and j.metrics.epsilon == epochs[-1].epsilon,
          "the job record's epsilon %g, the last epoch's %g", j.metrics.epsilon,
          epochs[-1].epsilon)
    check(plan["steps"] == 2 * steps_per_epoch and not plan["stops_early"], "dp-budget: %s", plan)
    check(j.metrics.test_accuracy > 0.5, "test accuracy %.3f after 2 DP epochs",
          j.metrics.test_accuracy)
    p = s.trainctl("get", j.id, addr=d.addr)
    check(p.returncode == 0 and "epsilon" in p.stdout, "trainctl get: %s", p.stdout)
    print("  epsilon %.4f, %.4f after epochs 1, 2 (dp-accounting %.4f, %.4f); test accuracy %.3f"
          % (epochs[0].epsilon, epochs[1].epsilon, want[0], want[1], j.metrics.test_accuracy))


@suite.case
def target_epsilon(s):
    d = s.daemon(cpu_devices=1)
    full = reference_eps([2 * (N // BATCH)])[0]
    target = round(full * 0.8, 3)
    spec = dp_spec(target_epsilon=target)
    plan = budget(s, spec)
    check(plan["stops_early"], "dp-budget does not stop the job early: %s", plan)
    j = run_to_end(s, d, spec)
    check(j.progress.step == plan["steps"], "stopped at step %d, dp-budget said %d",
          j.progress.step, plan["steps"])
    check(j.progress.step < 2 * (N // BATCH), "ran all %d steps", j.progress.step)
    check("target_epsilon" in j.note, "the note %r does not name target_epsilon", j.note)
    at, after = reference_eps([j.progress.step, j.progress.step + 1])
    check(at <= target < after, "epsilon %g at the stop, %g one step on; target %g", at, after,
          target)
    print("  target %.3f: stopped after step %d (epsilon %.4f): %s"
          % (target, j.progress.step, at, j.note))


@suite.case
def two_devices(s):
    d = s.daemon(cpu_devices=2)
    # 10 steps: the two sum the batch in different orders, and once a ReLU
    # or a pooling choice of one example flips on such a rounding the runs
    # part (on MNIST's CNN about step 35, to 1e-4).
    one = run_to_end(s, d, dp_spec(epochs=1, max_steps=10))
    two = run_to_end(s, d, dp_spec(epochs=1, devices=2, max_steps=10))
    a, b = leaves(one.last_checkpoint.path, "params"), leaves(two.last_checkpoint.path, "params")
    check(sorted(a) == sorted(b), "different parameters: %s vs %s", sorted(a), sorted(b))
    worst = 0.0
    for k in a:
        x, y = a[k].astype(np.float64), b[k].astype(np.float64)
        err = float(np.linalg.norm(x - y) / max(np.linalg.norm(x), 1e-30))
        check(err < 1e-5, "%s: 2 devices differ from 1 by %.3g", k, err)
        worst = max(worst, err)
    check(one.metrics.epsilon == two.metrics.epsilon, "epsilon %g vs %g", one.metrics.epsilon,
          two.metrics.epsilon)
    print("  %d steps: worst relative difference %.3g" % (one.progress.step, worst))


@suite.case
def kill9_bitwise(s):
    d = s.daemon(cpu_devices=1)
    spec = dp_spec(epochs=3)
    spec["checkpoint"] = {"every_steps": 20}
    want = run_to_end(s, d, spec)
    j = s.submit(d, spec)
    th.wait_for(lambda: s.get(d, j.id).last_checkpoint.step >= 40, 300,
                "a checkpoint at step 40 or later of job %s" % j.id, 0.005)
    os.kill(d.pid(), signal.SIGKILL)
    d.kill()
    d.start()
    jj = s.wait_state(d, j.id, FINAL, 600)
    check(jj.state == S.SUCCEEDED, "after the kill the job is %s: %s", S.Name(jj.state), jj.error)
    check(len(jj.resumes) == 1 and jj.resumes[0].step > 0, "resumes: %s", list(jj.resumes))
    a, b = leaves(jj.last_checkpoint.path), leaves(want.last_checkpoint.path)
    check(sorted(a) == sorted(b), "leaves differ: %s / %s", sorted(a), sorted(b))
    differ = [k for k in sorted(b) if a[k].tobytes() != b[k].tobytes()]
    check(not differ, "resumed at step %d, %d of %d leaves differ from the uninterrupted run: %s",
          jj.resumes[0].step, len(differ), len(b), differ[:4])
    for f in ("train_loss", "test_loss", "test_accuracy", "epsilon"):
        check(getattr(jj.metrics, f) == getattr(want.metrics, f), "final %s %r, uninterrupted %r",
              f, getattr(jj.metrics, f), getattr(want.metrics, f))
    print("  resumed at step %d: bitwise the uninterrupted run" % jj.resumes[0].step)


@suite.case
def example_report(s):
    d = s.daemon(cpu_devices=1)
    n = 512
    x, y = mnist_train(n)
    # A job without the report: FAILED_PRECONDITION.
    plain_spec = report_spec()
    del plain_spec["training"]["per_example_report"]
    plain = run_to_end(s, d, plain_spec)
    e = th.rpc_error(d.stub.GetExamples, pb.GetExamplesRequest(id=plain.id), timeout=10)
    th.expect_status(e, grpc.StatusCode.FAILED_PRECONDITION, "per_example_report")
    j = run_to_end(s, d, report_spec())
    params = leaves(j.last_checkpoint.path, "params")
    ref = reference_norms(params, x, y)
    r = d.stub.GetExamples(pb.GetExamplesRequest(id=j.id, with_inputs=True), timeout=10)
    check(r.job_id == j.id and r.epoch == 1 and r.step == 8 and r.count == n,
          "report: job %s epoch %d step %d count %d", r.job_id, r.epoch, r.step, r.count)
    want = np.argsort(-ref, kind="stable")[:16]
    got = [t.index for t in r.top]
    check(got == list(want), "top 16 indices %s, float64 reference %s", got, list(want))
    worst = 0.0
    for t in r.top:
        rel = abs(t.grad_norm - ref[t.index]) / ref[t.index]
        worst = max(worst, rel)
        check(rel < 1e-5, "example %d: norm %.8g, float64 %.8g", t.index, t.grad_norm,
              ref[t.index])
        check(t.label == y[t.index], "example %d: label %d, the dataset's %d", t.index, t.label,
              y[t.index])
        check(np.array_equal(np.array(t.input, np.float32),
                             x[t.index].reshape(-1).astype(np.float32) / np.float32(255.0)),
              "example %d: its input is not the dataset's image", t.index)
    check(list(r.input_shape) == [28, 28], "input_shape %s (the dataset's)", list(r.input_shape))
    check(abs(r.min - ref.min()) <= 1e-5 * ref.min() and abs(r.max - ref.max()) <= 1e-5 *
          ref.max() and abs(r.mean - ref.mean()) <= 1e-5 * ref.mean(),
          "min/mean/max %g %g %g, float64 %g %g %g", r.min, r.mean, r.max, ref.min(),
          ref.mean(), ref.max())
    edges, counts = np.array(r.bucket_edges), np.array(r.bucket_counts)
    check(len(edges) == 31 and len(counts) == 30 and counts.sum() == n and edges[0] == r.min and
          edges[-1] == r.max and np.all(np.diff(edges) > 0), "histogram: %d edges %s, counts %s",
          len(edges), edges[[0, -1]], counts)
    # Each reference norm in its bucket, except those within rounding of an
    # edge (which may fall on either side).
    lo = np.searchsorted(edges, ref * (1 - 1e-5), side="right") - 1
    hi = np.searchsorted(edges, ref * (1 + 1e-5), side="right") - 1
    lo, hi = np.clip(lo, 0, 29), np.clip(hi, 0, 29)
    sure = np.bincount(lo[lo == hi], minlength=30)
    maybe = np.bincount(np.concatenate([np.arange(a, b + 1) for a, b in zip(lo, hi) if a != b]
                                       or [np.zeros(0, int)]).astype(int), minlength=30)
    check(np.all(counts >= sure) and np.all(counts <= sure + maybe),
          "histogram counts %s; float64 %s (+ up to %s at edges)", counts, sure, maybe)
    check(r.l2_norm_clip == 0 and r.clipped == 0, "without DP-SGD: clip %g, clipped %d",
          r.l2_norm_clip, r.clipped)
    h = tb_histograms(d, j.id).get(r.step)
    check(h is not None and h.num == n and list(h.bucket) == list(counts.astype(float)) and
          h.min == r.min and h.max == r.max and h.bucket_limit[-1] == r.max,
          "TensorBoard histogram at step %d: %s", r.step, h)
    # The report leaves training as it is: the same losses bit for bit.
    a, b = leaves(plain.last_checkpoint.path, "params"), params
    check(all(a[k].tobytes() == b[k].tobytes() for k in a), "parameters differ with the report")
    check(plain.metrics.train_loss == j.metrics.train_loss and
          plain.metrics.test_loss == j.metrics.test_loss,
          "losses with the report %r %r, without %r %r", j.metrics.train_loss,
          j.metrics.test_loss, plain.metrics.train_loss, plain.metrics.test_loss)
    # trainctl: the table, and the images as a PNG grid.
    png = os.path.join(s.tmp, "top.png")
    p = s.trainctl("examples", j.id, "--top", "5", "--png", png, "--columns", "3", addr=d.addr)
    check(p.returncode == 0, "trainctl examples exited %d: %s", p.returncode, p.stderr)
    out = p.stdout
    for t in r.top[:5]:
        check(" %d " % t.index in out and "%.6g" % t.grad_norm in out,
              "trainctl examples misses example %d (%.6g):\n%s", t.index, t.grad_norm, out)
    check("wrote " + png in out, "trainctl examples: %s", out)
    ri = d.stub.GetExamples(pb.GetExamplesRequest(id=j.id, top=5), timeout=10)
    check([t.index for t in ri.top] == got[:5] and not any(t.input for t in ri.top),
          "top=5 without with_inputs: %s", ri.top)
    ph, pw, pc, img = read_png(png)
    check((ph, pw, pc) == (2 * 28 + 3 * 2, 3 * 28 + 4 * 2, 1), "PNG of %dx%dx%d", ph, pw, pc)
    for k, t in enumerate(ri.top):
        y0, x0 = 2 + (k // 3) * 30, 2 + (k % 3) * 30
        check(np.array_equal(img[y0:y0 + 28, x0:x0 + 28, 0], x[t.index]),
              "PNG tile %d is not example %d", k, t.index)
    # DP-SGD with Poisson sampling: the norms above the clip counted, each
    # example once in the top, each norm its example's.
    dp = report_spec(n=n, dp_sgd={"l2_norm_clip": 1.0, "noise_multiplier": 1.0,
                                  "target_delta": 1e-4})
    jd = run_to_end(s, d, dp)
    rd = d.stub.GetExamples(pb.GetExamplesRequest(id=jd.id), timeout=10)
    idx = [t.index for t in rd.top]
    check(len(set(idx)) == len(idx) == 16, "DP top: %s", idx)
    check(all(abs(t.grad_norm - ref[t.index]) < 1e-5 * ref[t.index] for t in rd.top),
          "DP top norms differ from the float64 ones")
    check([t.grad_norm for t in rd.top] == sorted((t.grad_norm for t in rd.top), reverse=True),
          "DP top not largest first")
    check(rd.l2_norm_clip == 1.0 and rd.count > 0, "DP report: clip %g, %d norms",
          rd.l2_norm_clip, rd.count)
    # With batches from a shuffle every example counts once: a clip between
    # the 256th and 257th largest norms clips 256.
    srt = np.sort(ref)[::-1]
    clip = float((srt[255] + srt[256]) / 2)
    ds = report_spec(n=n, dp_sgd={"l2_norm_clip": clip, "noise_multiplier": 1.0,
                                  "target_delta": 1e-4, "sampling": "SHUFFLE"})
    rs = d.stub.GetExamples(pb.GetExamplesRequest(id=run_to_end(s, d, ds).id), timeout=10)
    check(rs.count == n and rs.clipped == 256 and rs.l2_norm_clip == clip,
          "DP (shuffled) report: %d norms, %d above the clip %g (want 256 of %d)", rs.count,
          rs.clipped, rs.l2_norm_clip, n)
    # A job that has not run an epoch (queued behind one that holds the
    # daemon's one device): NOT_FOUND; trainctl exits 4. After a restart
    # the report stands.
    long = report_spec(n=n)
    long["training"]["epochs"] = 100000
    jl = s.submit(d, long)
    s.wait_state(d, jl.id, (S.RUNNING,))
    jq = s.submit(d, report_spec(n=n))
    check(s.get(d, jq.id).state == S.QUEUED, "the second job is not queued")
    e = th.rpc_error(d.stub.GetExamples, pb.GetExamplesRequest(id=jq.id), timeout=10)
    th.expect_status(e, grpc.StatusCode.NOT_FOUND, "epoch")
    p = s.trainctl("examples", jq.id, addr=d.addr)
    check(p.returncode == 4 and "epoch" in p.stderr, "trainctl examples of a queued job: %d %s",
          p.returncode, p.stderr)
    p = s.trainctl("examples", plain.id, addr=d.addr)
    check(p.returncode != 0 and "per_example_report" in p.stderr,
          "trainctl examples of a job without the report: %d %s", p.returncode, p.stderr)
    for x_ in (jq, jl):
        d.stub.CancelJob(pb.CancelJobRequest(id=x_.id), timeout=10)
        s.wait_state(d, x_.id, FINAL)
    d.stop()
    d.start()
    again = d.stub.GetExamples(pb.GetExamplesRequest(id=j.id, with_inputs=True), timeout=10)
    check(again == r, "the report after a restart differs")
    print("  %d norms: worst relative difference %.3g of the top 16; Poisson: %d norms, the "
          "top each once" % (n, worst, rd.count))


@suite.case
def bad_input(s):
    d = s.daemon(cpu_devices=1)

    def refused(spec, code, *words):
        e = th.rpc_error(s.submit, d, spec)
        th.expect_status(e, code, *words)

    refused(dp_spec(l2_norm_clip=-1.0), grpc.StatusCode.INVALID_ARGUMENT, "l2_norm_clip",
            "positive")
    refused(dp_spec(noise_multiplier=-0.5), grpc.StatusCode.INVALID_ARGUMENT,
            "noise_multiplier", ">= 0")
    refused(dp_spec(target_delta=1.0), grpc.StatusCode.INVALID_ARGUMENT, "target_delta")
    refused(dp_spec(noise_multiplier=0.0, target_epsilon=1.0), grpc.StatusCode.INVALID_ARGUMENT,
            "target_epsilon", "noise")
    spec = dp_spec()
    spec["model"]["layers"].insert(1, {"batch_norm": {}})
    refused(spec, grpc.StatusCode.INVALID_ARGUMENT, "batch_norm mixes the examples",
            "layer_norm")
    spec = dp_spec()
    spec["optimizer"]["chain"].insert(0, {"clip_by_global_norm": {"max_norm": 1.0}})
    refused(spec, grpc.StatusCode.INVALID_ARGUMENT, "clip_by_global_norm", "l2_norm_clip")
    spec = dp_spec()
    spec["model"] = th.gpt_spec()["model"]
    refused(spec, grpc.StatusCode.UNIMPLEMENTED, "causal_self_attention", "per-example")
    # Delta must be below 1 / N, which the daemon learns from the data.
    j = s.submit(d, dp_spec(target_delta=1e-3))
    j = s.wait_state(d, j.id, FINAL, 120)
    check(j.state == S.FAILED and "target_delta" in j.error and "1 / 6000" in j.error,
          "delta 1e-3 of 6000 examples: %s %r", S.Name(j.state), j.error)
    # Still serving: a good job runs.
    run_to_end(s, d, dp_spec(epochs=1))
    print("  7 refusals at submission, 1 at the start; the daemon still serves")


@suite.case(long=True)
def mnist_dp_60_epochs(s):
    d = s.daemon(cpu_devices=1, threads=os.cpu_count() or 1)
    with open(os.path.join(suite.source_dir, "config/jobs/mnist_dp.yaml")) as f:
        spec = yaml.safe_load(f)
    j = run_to_end(s, d, spec, timeout=3600)
    epochs = epoch_points(d, j.id)
    check(len(epochs) == 60 and all(e.dp for e in epochs), "%d epoch points with epsilon",
          len(epochs))
    steps = 60 * (60000 // 256)
    want = reference_eps([steps], q=256 / 60000)[0]
    check(abs(j.metrics.epsilon - want) <= 1e-6 * want, "epsilon %.6f after 60 epochs, "
          "dp-accounting %.6f", j.metrics.epsilon, want)
    check(j.metrics.test_accuracy >= 0.95, "test accuracy %.4f after 60 epochs (want >= 0.95)",
          j.metrics.test_accuracy)
    print("  60 epochs (%d steps): test accuracy %.4f at epsilon %.4f (delta %g)"
          % (steps, j.metrics.test_accuracy, j.metrics.epsilon, j.metrics.delta))


sys.exit(suite.run())
