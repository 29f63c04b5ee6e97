#!/usr/bin/python3
"""Checkpoints of daemon jobs, on real MNIST, checked with h5py and numpy.

usage: daemon_checkpoint.py TRAIND TRAINCTL SOURCE_DIR [CASE...]

A real traind on a temporary unix socket and state directory, driven with
Python grpcio (stubs generated from proto/) and trainctl; every checkpoint
file is opened with h5py and checked against docs/checkpoint-format.md
(attributes and their types, the pytree's shapes, float32, the SHA-256
digest and the spec hash recomputed, the job id, step == /opt_state/count,
a position that fits the step):

  periodic_and_retention     every_steps 50, keep_last 2, keep_every_steps 200
                             over 300 steps: one file per multiple of 50
                             (delayed while the writer is busy), exactly the
                             2 newest and those at multiples of 200 remain
                             (idle: steps 200, 250 and 300), and the record's
                             last_checkpoint is the newest file
  save_and_export            `trainctl checkpoint` of a running job (reason
                             "requested"), FAILED_PRECONDITION for a queued or
                             finished job, NOT_FOUND for an unknown one,
                             `trainctl export` while running and after the end
                             (a byte copy of the daemon's file), --step that
                             does not exist; a numpy forward pass from the
                             exported /params reproduces the job's test
                             accuracy on the 10k MNIST test set
  sigterm_resume_bitwise     SIGTERM mid-run with stop_timeout_sec set: exit 0
                             in time, the job saved QUEUED with one
                             "shutdown" checkpoint; after the restart it
                             resumes from it and ends bit for bit where an
                             uninterrupted run of the same spec ends
                             (/params, /opt_state, final metrics)
  kill9_bitwise              every_steps 1, SIGKILL while a checkpoint's
                             temporary file exists, mid-epoch, and right
                             after a resume: one resume per kill, no
                             temporary or refused files left, every file
                             valid, the end bit for bit as uninterrupted
  warm_start                 checkpoint.init_from: float64 /params written
                             with h5py from an exported checkpoint start a
                             job at the trained loss (and, with a zero
                             learning rate, keep them exactly); a file with a
                             wrong shape and a missing leaf, and a file that
                             is not HDF5, are refused at SubmitJob with
                             INVALID_ARGUMENT naming the problems
  corrupt_newest_falls_back  SIGKILL, then the newest checkpoint gets flipped
                             bytes and the one before is truncated: the job
                             resumes from the third newest, the Resume note
                             names both files and why, they are renamed
                             *.refused, and the end is bit for bit as
                             uninterrupted

MNIST comes from $TRAIND_DATA_DIR (skipped without it, exit 77; a failure
under CI=true). Needs h5py and numpy (Debian python3-h5py, python3-numpy).
Every daemon is stopped with SIGTERM and must exit 0 with no sanitizer
report. Prints one line per case, then "N passed, N failed".
"""
import json
import math
import os
import re
import signal
import sys
import time

import grpc
from google.protobuf import json_format

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import traind_harness as th  # noqa: E402
from traind_harness import check  # noqa: E402

h5py, np, h5ckpt = th.require("python3-h5py and python3-numpy", "h5py", "numpy", "h5ckpt")
digest = h5ckpt.digest

args = th.parse_args(__doc__.splitlines()[1])
suite = th.Suite(args, needs_mnist=True)
pb = suite.pb
S = pb.JobState
SLOW = th.sanitized(args.traind)
CKPT_RE = re.compile(r"^ckpt-(\d{12})\.h5$")


def ref(epochs=1, train_limit=6000, checkpoint=None, **kw):
    sp = th.reference_spec(suite.source_dir, epochs, train_limit=train_limit, **kw)
    if checkpoint is not None:
        sp["checkpoint"] = checkpoint
    return sp


# ------------------------------------------------------------ job files


def ckpt_dir(d, job_id):
    return os.path.join(d.state_dir, "checkpoints", job_id)


def ckpt_name(step):
    return "ckpt-%012d.h5" % step


def ckpts(dirpath):
    """Checkpoint file names in the directory, oldest first."""
    names = [n for n in os.listdir(dirpath) if CKPT_RE.match(n)] if os.path.isdir(dirpath) else []
    return sorted(names, key=lambda n: int(CKPT_RE.match(n).group(1)))


def ckpt_steps(dirpath):
    return [int(CKPT_RE.match(n).group(1)) for n in ckpts(dirpath)]


def leftovers(dirpath):
    """Files in the directory that are not checkpoints (temporaries,
    refused files)."""
    return sorted(n for n in os.listdir(dirpath) if not CKPT_RE.match(n))


# ------------------------------------------------------- checkpoint files


def model_shapes(spec):
    """{"layer1/w": (784, 256), ...} of a spec's dense layers."""
    shapes = {}
    fan_in = int(np.prod(spec["model"]["input_shape"]))
    n = 0
    for layer in spec["model"]["layers"]:
        if "dense" in layer:
            n += 1
            name = layer["dense"].get("name") or "layer%d" % n
            out = int(layer["dense"]["features"])
            shapes[name + "/w"] = (fan_in, out)
            if layer["dense"].get("use_bias", True):
                shapes[name + "/b"] = (out,)
            fan_in = out
    return shapes


def attr_str(v):
    return v.decode() if isinstance(v, bytes) else str(v)


def validate(path, spec, steps_per_epoch, total_steps=None):
    """Checks one checkpoint file of a job with the reference model and
    Adam; returns its root attributes as a dict."""
    what = os.path.basename(path)
    shapes = model_shapes(spec)
    with h5py.File(path, "r") as f:
        a = f.attrs
        want_types = {"version": np.int32, "step": np.int64, "epoch": np.uint32,
                      "step_in_epoch": np.uint32, "epoch_loss_sum": np.float64,
                      "epoch_correct_sum": np.float64, "seed": np.uint64}
        for k in ("format", "job_spec", "prng_key", "job_id", "spec_hash",
                  "digest") + tuple(want_types):
            check(k in a, "%s: no root attribute %r (has %s)", what, k, sorted(a))
        for k, t in want_types.items():
            check(np.asarray(a[k]).dtype == t and np.asarray(a[k]).shape == (),
                  "%s: attribute %s is %s %s, want a %s scalar", what, k,
                  np.asarray(a[k]).dtype, np.asarray(a[k]).shape, np.dtype(t))
        check(attr_str(a["format"]) == "traind-checkpoint", "%s: format %r", what, a["format"])
        check(int(a["version"]) == 2, "%s: version %s", what, a["version"])
        # Bound to its job: the id (the directory's name for a file in a job's
        # checkpoint directory) and the hash of the spec, recomputed here.
        parent = os.path.dirname(os.path.abspath(path))
        if os.path.basename(os.path.dirname(parent)) == "checkpoints":
            check(attr_str(a["job_id"]) == os.path.basename(parent), "%s: job_id %r in %s",
                  what, a["job_id"], parent)
        check(attr_str(a["job_id"]).startswith("j-"), "%s: job_id %r", what, a["job_id"])
        want_hash = h5ckpt.spec_hash(th.spec_msg(suite.stubs, spec))
        check(attr_str(a["spec_hash"]) == want_hash, "%s: spec_hash %s, recomputed %s", what,
              a["spec_hash"], want_hash)
        seed = int(spec["training"].get("seed", 0))
        check(int(a["seed"]) == seed, "%s: seed %s, the job's is %d", what, a["seed"], seed)
        key = np.asarray(a["prng_key"])
        check(key.dtype == np.uint32 and list(key) == [0, seed],
              "%s: prng_key %r, want PRNGKey(%d) = [0, %d] uint32", what, key, seed, seed)
        js = json.loads(attr_str(a["job_spec"]))
        check(js["training"].get("seed", 0) == seed and
              len(js["model"]["layers"]) == len(spec["model"]["layers"]),
              "%s: job_spec attribute is not the job's spec: %s", what, js)
        step = int(a["step"])
        check(what == ckpt_name(step) or not what.startswith("ckpt-"), "%s holds step %d",
              what, step)
        count = f["opt_state/count"]
        check(count.shape == () and count.dtype == np.int64 and int(count[()]) == step,
              "%s: /opt_state/count %s %s %s, the step attribute %d", what, count.shape,
              count.dtype, count[()], step)
        epoch, sie = int(a["epoch"]), int(a["step_in_epoch"])
        last = total_steps is not None and step == total_steps
        check(epoch >= 1 and (sie < steps_per_epoch or (last and sie == steps_per_epoch)) and
              (epoch - 1) * steps_per_epoch + sie == step,
              "%s: epoch %d, step_in_epoch %d do not fit step %d at %d steps per epoch",
              what, epoch, sie, step, steps_per_epoch)
        check(math.isfinite(float(a["epoch_loss_sum"])) and float(a["epoch_loss_sum"]) >= 0 and
              0 <= float(a["epoch_correct_sum"]) <= sie * spec["training"]["batch_size"],
              "%s: epoch sums %s %s after %d steps of the epoch", what, a["epoch_loss_sum"],
              a["epoch_correct_sum"], sie)
        # The pytree: /params and each Adam slot hold exactly the model's leaves.
        check(set(f) == {"params", "opt_state"}, "%s: top-level groups %s", what, sorted(f))
        check(set(f["opt_state"]) == {"0_adam", "count"}, "%s: /opt_state holds %s", what,
              sorted(f["opt_state"]))
        check(set(f["opt_state/0_adam"]) == {"mu", "nu"}, "%s: Adam slots %s", what,
              sorted(f["opt_state/0_adam"]))
        for prefix in ("params", "opt_state/0_adam/mu", "opt_state/0_adam/nu"):
            got = []
            f[prefix].visititems(lambda n, o, got=got: got.append(n)
                                 if isinstance(o, h5py.Dataset) else None)
            check(sorted(got) == sorted(shapes), "%s: /%s holds %s, want %s", what, prefix,
                  sorted(got), sorted(shapes))
            for name, shape in shapes.items():
                ds = f[prefix + "/" + name]
                check(ds.shape == shape and ds.dtype == np.dtype("<f4"),
                      "%s: /%s/%s is %s %s, want %s float32", what, prefix, name, ds.shape,
                      ds.dtype, shape)
        nu = f["opt_state/0_adam/nu/layer1/w"][()]
        check(np.isfinite(f["params/layer1/w"][()]).all() and (nu >= 0).all() and
              (step == 0 or (nu > 0).any()), "%s: parameters or Adam's nu are not sane", what)
        dg = digest(f)
        check(attr_str(a["digest"]) == dg, "%s: digest attribute %s, recomputed %s", what,
              a["digest"], dg)
        return {k: a[k] for k in a}


def state_of(path):
    """Every dataset of /params and /opt_state as raw bytes, by path."""
    out = {}
    with h5py.File(path, "r") as f:
        for top in ("params", "opt_state"):
            f[top].visititems(lambda n, o, t=top: out.__setitem__(
                "%s/%s" % (t, n), (o.dtype.str, o.shape, o[()].tobytes()))
                if isinstance(o, h5py.Dataset) else None)
    return out


def check_same_state(path, want_path, what):
    got, want = state_of(path), state_of(want_path)
    check(sorted(got) == sorted(want), "%s: datasets %s, the uninterrupted run has %s", what,
          sorted(got), sorted(want))
    differ = [k for k in sorted(want) if got[k] != want[k]]
    if differ:
        k = differ[0]
        a = np.frombuffer(got[k][2], dtype=got[k][0])
        b = np.frombuffer(want[k][2], dtype=want[k][0])
        raise th.TestFailure("%s: %d of %d datasets differ from the uninterrupted run (%s); "
                             "%s: max abs diff %.3g, %d of %d elements differ"
                             % (what, len(differ), len(want), ", ".join(differ[:4]), k,
                                float(np.max(np.abs(a.astype(np.float64) - b))),
                                int(np.sum(a != b)), a.size))


def check_same_metrics(job, want, what):
    for field in ("train_loss", "train_accuracy", "test_accuracy", "test_loss"):
        g, w = getattr(job.metrics, field), getattr(want.metrics, field)
        check(g == w, "%s: final %s %r, the uninterrupted run's %r", what, field, g, w)


# -------------------------------------------------------------- MNIST


def read_idx(path):
    x = th.read_idx(path)
    return x.reshape(-1, 784) if x.ndim == 3 else x


def mnist_test():
    d = os.path.join(suite.mnist, "mnist")
    x = read_idx(os.path.join(d, "t10k-images-idx3-ubyte.gz"))
    y = read_idx(os.path.join(d, "t10k-labels-idx1-ubyte.gz"))
    check(x.shape == (10000, 784) and y.shape == (10000,), "MNIST test set %s %s", x.shape,
          y.shape)
    return x, y


def accuracy_from_params(path, x, y):
    """float32 forward pass of the reference MLP from /params alone."""
    with h5py.File(path, "r") as f:
        p = {k: f["params"][k][()] for k in ("layer1/w", "layer1/b", "layer2/w", "layer2/b",
                                             "layer3/w", "layer3/b")}
    h = x.astype(np.float32) / np.float32(255.0)
    for name in ("layer1", "layer2"):
        h = np.maximum(h @ p[name + "/w"] + p[name + "/b"], np.float32(0))
    logits = h @ p["layer3/w"] + p["layer3/b"]
    return float(np.mean(np.argmax(logits, axis=1) == y))


# -------------------------------------------------------------- helpers


def run_to_end(s, d, spec, name="", timeout=300):
    j = s.submit(d, spec, name=name)
    return s.wait_state(d, j.id, (S.SUCCEEDED, S.FAILED, S.CANCELLED), timeout)


def succeeded(s, d, job_id, timeout=300):
    j = s.wait_state(d, job_id, (S.SUCCEEDED, S.FAILED, S.CANCELLED), timeout)
    check(j.state == S.SUCCEEDED, "job %s ended %s: %s", job_id, S.Name(j.state), j.error)
    return j


def ctl(s, d, *argv):
    return s.trainctl(*argv, addr=d.addr)


def first_loss(d, job_id):
    m = d.stub.GetMetrics(pb.GetMetricsRequest(id=job_id, max_points=10), timeout=10)
    check(m.steps and m.steps[0].step == 1, "no metrics of step 1 for %s: %s", job_id,
          [p.step for p in m.steps])
    return m.steps[0].loss


def write_params(path, params, dtype=np.float64, drop=(), reshape=None):
    """A parameters-only HDF5 file as a numpy/JAX user writes one."""
    with h5py.File(path, "w") as f:
        for name, v in params.items():
            if name in drop:
                continue
            if reshape and name in reshape:
                v = np.zeros(reshape[name], np.float32)
            f.create_dataset("params/" + name, data=np.asarray(v, dtype))


def read_params(path):
    with h5py.File(path, "r") as f:
        out = {}
        f["params"].visititems(lambda n, o: out.__setitem__(n, o[()])
                               if isinstance(o, h5py.Dataset) else None)
    return out


# ----------------------------------------------------------------- cases


@suite.case
def periodic_and_retention(s):
    d = s.daemon(cpu_devices=1)
    spec = ref(3, train_limit=12800, checkpoint={"every_steps": 50, "keep_last": 2,
                                                 "keep_every_steps": 200})
    j = run_to_end(s, d, spec)
    check(j.state == S.SUCCEEDED, "job ended %s: %s", S.Name(j.state), j.error)
    check(j.progress.step == 300 and j.progress.steps_per_epoch == 100,
          "the job ran %d steps at %d per epoch, expected 300 at 100", j.progress.step,
          j.progress.steps_per_epoch)
    cdir = ckpt_dir(d, j.id)
    check(j.checkpoint_dir == cdir, "checkpoint_dir %r, expected %r", j.checkpoint_dir, cdir)
    written = [int(w) for w in re.findall(r'msg="checkpoint written" job=%s \S+ step=(\d+)'
                                          % j.id, d.log())]
    # A periodic checkpoint comes at the first boundary at or after each
    # multiple of 50 at which the writer is free: one still being written
    # when the next falls due delays that one (docs/checkpoint-format.md),
    # which a busy disk does. Idle, that is steps 50, 100, ..., 300; in any
    # case at most one per multiple, none before its multiple, the last at
    # step 300 (a final one only when the newest is not of the final state).
    check(written and written[-1] == 300 and
          all(w // 50 > p // 50 for p, w in zip([0] + written, written)),
          "the log says checkpoints of steps %s were written; expected one at or after each "
          "multiple of 50 at most, in order, the last at step 300", written)
    if written != [50, 100, 150, 200, 250, 300]:
        print("  a busy writer delayed periodic checkpoints: written at steps %s" % written)
    # Retention keeps the 2 newest and those at multiples of 200: idle,
    # steps 200, 250 and 300.
    keep = sorted(set(written[-2:]) | {w for w in written if w % 200 == 0})
    check(ckpt_steps(cdir) == keep,
          "after retention (keep_last 2, keep_every_steps 200) the directory holds %s; "
          "expected the checkpoints of steps %s (the log says steps %s were written)",
          os.listdir(cdir), keep, written)
    check(leftovers(cdir) == [], "files left beside the checkpoints: %s", leftovers(cdir))
    check(j.checkpoints_written == len(written), "checkpoints_written %d; the log says %d "
          "were written", j.checkpoints_written, len(written))
    check(j.checkpoint_error == "", "checkpoint_error %r", j.checkpoint_error)
    lc = j.last_checkpoint
    newest = os.path.join(cdir, ckpt_name(300))
    check(lc.file == ckpt_name(300) and lc.step == 300 and lc.epochs_completed == 3,
          "last_checkpoint %s", lc)
    check(lc.path == newest and lc.bytes == os.path.getsize(newest),
          "last_checkpoint path %r, %d bytes; the file %r has %d", lc.path, lc.bytes, newest,
          os.path.getsize(newest))
    check(lc.reason in ("periodic", "final") and lc.write_sec > 0 and lc.time.seconds > 0,
          "last_checkpoint reason %r, write_sec %r, time %s", lc.reason, lc.write_sec, lc.time)
    for name in ckpts(cdir):
        validate(os.path.join(cdir, name), spec, 100, 300)
    # The record on disk says the same.
    check(d.records()[j.id] == s.get(d, j.id), "the record on disk differs from GetJob")


@suite.case
def save_and_export(s):
    d = s.daemon(cpu_devices=1)
    out = s.workdir("out")
    # 6 epochs, 2808 steps: many seconds, so that the checks of a running
    # job below fit in while it runs even on a loaded machine.
    epochs = 6
    total = 468 * epochs
    spec = ref(epochs, train_limit=0)
    a = s.submit(d, spec, name="long")
    b = s.submit(d, ref(1, train_limit=1280), name="queued")
    s.wait_steps(d, a.id, 20)
    cdir = ckpt_dir(d, a.id)

    # trainctl checkpoint of the running job.
    p = ctl(s, d, "-o", "json", "checkpoint", a.id)
    check(p.returncode == 0, "trainctl checkpoint exited %d: %s", p.returncode, p.stderr)
    info = json_format.Parse(p.stdout, pb.CheckpointInfo())
    check(info.reason == "requested" and info.step > 0 and info.file == ckpt_name(info.step),
          "trainctl checkpoint printed %s", info)
    check(info.path == os.path.join(cdir, info.file) and os.path.isfile(info.path),
          "the requested checkpoint %r is not in %s (%s)", info.path, cdir,
          os.listdir(cdir) if os.path.isdir(cdir) else "no directory")
    check(info.bytes == os.path.getsize(info.path), "CheckpointInfo.bytes %d, the file has %d",
          info.bytes, os.path.getsize(info.path))
    attrs = validate(info.path, spec, 468, total)
    check(int(attrs["step"]) == info.step, "the file holds step %s, CheckpointInfo says %d",
          attrs["step"], info.step)
    # The table output names the file too.
    p = ctl(s, d, "checkpoint", a.id)
    check(p.returncode == 0 and "ckpt-" in p.stdout and cdir in p.stdout,
          "trainctl checkpoint (table) exited %d: %r %r", p.returncode, p.stdout, p.stderr)

    # A queued job and an unknown one (queued while the first runs: one
    # reply says both).
    jobs = s.jobs(d)
    check(jobs[a.id].state == S.RUNNING, "the long job ended (%s) during the checks; make it "
          "longer", S.Name(jobs[a.id].state))
    check(jobs[b.id].state == S.QUEUED, "the second job is %s", S.Name(jobs[b.id].state))
    e = th.rpc_error(d.stub.SaveCheckpoint, pb.SaveCheckpointRequest(id=b.id), timeout=10,
                     what="SaveCheckpoint of a queued job")
    th.expect_status(e, grpc.StatusCode.FAILED_PRECONDITION, "QUEUED")
    p = ctl(s, d, "checkpoint", b.id)
    check(p.returncode == 2 and p.stderr.strip(), "trainctl checkpoint of a queued job exited "
          "%d (expected 2): %r", p.returncode, p.stderr)
    p = ctl(s, d, "export", b.id, os.path.join(out, "queued.h5"))
    check(p.returncode == 4 and "no checkpoint" in p.stderr and
          not os.path.exists(os.path.join(out, "queued.h5")),
          "trainctl export of a queued job with no checkpoint exited %d (expected 4): %r",
          p.returncode, p.stderr)
    e = th.rpc_error(d.stub.SaveCheckpoint, pb.SaveCheckpointRequest(id="j-0000000000none"),
                     timeout=10, what="SaveCheckpoint of an unknown job")
    th.expect_status(e, grpc.StatusCode.NOT_FOUND, "j-0000000000none")
    p = ctl(s, d, "checkpoint", "j-0000000000none")
    check(p.returncode == 4, "trainctl checkpoint of an unknown job exited %d (expected 4): %r",
          p.returncode, p.stderr)
    p = ctl(s, d, "export", "j-0000000000none", os.path.join(out, "none.h5"))
    check(p.returncode == 4 and not os.path.exists(os.path.join(out, "none.h5")),
          "trainctl export of an unknown job exited %d (expected 4): %r", p.returncode, p.stderr)

    # trainctl export of the running job: a fresh checkpoint, copied whole.
    before = s.get(d, a.id).progress.step
    running_h5 = os.path.join(out, "running.h5")
    p = ctl(s, d, "-o", "json", "export", a.id, running_h5)
    check(p.returncode == 0, "trainctl export of a running job exited %d: %s", p.returncode,
          p.stderr)
    chunk = json_format.Parse(p.stdout, pb.FileChunk())
    check(chunk.step >= before and chunk.step > info.step and
          chunk.file == ckpt_name(chunk.step) and
          chunk.total_bytes == os.path.getsize(running_h5),
          "export while running printed %s (the job was at step %d, the earlier checkpoint "
          "at %d); the file has %d bytes", chunk, before, info.step,
          os.path.getsize(running_h5))
    attrs = validate(running_h5, spec, 468, total)
    check(int(attrs["step"]) == chunk.step, "the exported file holds step %s, trainctl said %d",
          attrs["step"], chunk.step)
    check(s.state(d, a.id) == S.RUNNING, "the job ended during the checks; make it longer")

    # --step that the job does not have.
    p = ctl(s, d, "export", a.id, os.path.join(out, "nope.h5"), "--step", "999999")
    check(p.returncode == 4 and "999999" in p.stderr, "trainctl export --step 999999 exited %d "
          "(expected 4): %r", p.returncode, p.stderr)
    check(sorted(os.listdir(out)) == ["running.h5"], "files in the export directory: %s",
          os.listdir(out))
    e = th.rpc_error(lambda: list(d.stub.ExportCheckpoint(
        pb.ExportCheckpointRequest(id=a.id, step=999999), timeout=10)),
        what="ExportCheckpoint of a missing step")
    th.expect_status(e, grpc.StatusCode.NOT_FOUND, "999999")

    d.stub.CancelJob(pb.CancelJobRequest(id=b.id), timeout=10)
    ja = succeeded(s, d, a.id, 300)

    # A finished job cannot be checkpointed; its newest file can be exported.
    p = ctl(s, d, "checkpoint", a.id)
    check(p.returncode == 2, "trainctl checkpoint of a finished job exited %d (expected 2): %r",
          p.returncode, p.stderr)
    check(ja.last_checkpoint.reason == "final" and ja.last_checkpoint.step == total,
          "the finished job's last checkpoint: %s", ja.last_checkpoint)
    final_h5 = os.path.join(out, "final.h5")
    p = ctl(s, d, "export", a.id, final_h5)
    check(p.returncode == 0 and "step %d" % total in p.stdout, "trainctl export of the finished "
          "job exited %d: %r %r", p.returncode, p.stdout, p.stderr)
    with open(final_h5, "rb") as f1, open(ja.last_checkpoint.path, "rb") as f2:
        check(f1.read() == f2.read(), "the exported file differs from %s",
              ja.last_checkpoint.path)
    validate(final_h5, spec, 468, total)
    check(not [n for n in os.listdir(out) if n.endswith(".part")],
          "partial exports left: %s", os.listdir(out))

    # /params alone reproduce the job's test accuracy (10k examples).
    check("test_limit" not in spec["dataset"], "the spec limits the test set")
    x, y = mnist_test()
    acc = accuracy_from_params(final_h5, x, y)
    check(abs(acc - ja.metrics.test_accuracy) <= 2e-4 + 1e-6,
          "numpy from the exported /params: test accuracy %.4f; the job reported %.4f",
          acc, ja.metrics.test_accuracy)
    check(acc > 0.95, "test accuracy %.4f after %d epochs", acc, epochs)


@suite.case
def sigterm_resume_bitwise(s):
    # The daemon must drain and exit by itself (exit 0) before its stop
    # timer ends it (exit 1); generous, since the shutdown checkpoint is
    # fsynced on a machine that may be busy.
    stop_timeout = 60 if SLOW else 30
    cfg = os.path.join(s.tmp, "traind.yaml")
    with open(cfg, "w") as f:
        f.write("stop_timeout_sec: %d\n" % stop_timeout)
    d = s.daemon(cpu_devices=1, config=cfg)
    # 1000 steps, 100 per epoch, no periodic checkpoints: the SIGTERM lands
    # hundreds of steps before the end even when the test runs slowly.
    epochs = 10
    total = 100 * epochs
    spec = ref(epochs, train_limit=12800)
    want = run_to_end(s, d, spec, name="uninterrupted", timeout=300)
    check(want.state == S.SUCCEEDED and want.last_checkpoint.step == total,
          "the uninterrupted run: %s, last checkpoint %s", S.Name(want.state),
          want.last_checkpoint)

    j = s.submit(d, spec, name="interrupted")
    at_signal = s.wait_steps(d, j.id, 129).progress.step
    check(at_signal < total // 2, "the job was at step %d of %d at SIGTERM; too late to test",
          at_signal, total)
    took = d.stop(timeout=stop_timeout + 5)
    check(took < stop_timeout, "the daemon took %.2f s to exit after SIGTERM "
          "(stop_timeout_sec %d)", took, stop_timeout)
    rec = d.records()[j.id]
    check(rec.state == S.QUEUED, "the interrupted job was saved %s, expected QUEUED",
          S.Name(rec.state))
    cdir = ckpt_dir(d, j.id)
    steps = ckpt_steps(cdir)
    check(len(steps) == 1 and steps[0] >= at_signal and steps[0] < total,
          "after SIGTERM at step %d the checkpoint directory holds %s", at_signal,
          os.listdir(cdir))
    at = steps[0]
    lc = rec.last_checkpoint
    check(lc.reason == "shutdown" and lc.step == at and lc.file == ckpt_name(at) and
          rec.checkpoints_written == 1,
          "the record's last checkpoint %s (%d written); the file is at step %d",
          lc, rec.checkpoints_written, at)
    validate(os.path.join(cdir, ckpt_name(at)), spec, 100, total)

    d.start()
    jj = succeeded(s, d, j.id, 300)
    check(len(jj.resumes) == 1 and jj.resumes[0].checkpoint == ckpt_name(at) and
          jj.resumes[0].step == at and jj.resumes[0].note == "",
          "resume history %s; expected one resume from %s at step %d",
          list(jj.resumes), ckpt_name(at), at)
    check(jj.progress.step == total and jj.last_checkpoint.step == total and
          jj.last_checkpoint.reason == "final",
          "after the restart: step %d, last checkpoint %s", jj.progress.step,
          jj.last_checkpoint)
    m = d.stub.GetMetrics(pb.GetMetricsRequest(id=j.id, max_points=10000), timeout=10)
    check([p.step for p in m.steps] == list(range(at + 1, total + 1)),
          "step points after the resume at %d: %s..%s", at, [p.step for p in m.steps][:3],
          [p.step for p in m.steps][-3:])
    final = os.path.join(cdir, ckpt_name(total))
    validate(final, spec, 100, total)
    check_same_state(final, want.last_checkpoint.path, "resumed after SIGTERM at step %d" % at)
    check_same_metrics(jj, want, "resumed after SIGTERM at step %d" % at)


@suite.case
def kill9_bitwise(s):
    # Up to ten kills of the same job, some before it writes a checkpoint:
    # past the default crash-loop limit (job_crash_limit 2).
    cfg = os.path.join(s.tmp, "traind.yaml")
    with open(cfg, "w") as f:
        f.write("job_crash_limit: 20\n")
    d = s.daemon(cpu_devices=1, config=cfg)
    # 600 steps, 100 per epoch: the three kills below come well before the
    # end even when the test runs slowly (each kill must find the job
    # RUNNING).
    epochs = 6
    total = 100 * epochs
    spec = ref(epochs, train_limit=12800)
    want = run_to_end(s, d, spec, name="uninterrupted", timeout=300)
    check(want.state == S.SUCCEEDED, "the uninterrupted run %s", S.Name(want.state))
    spec = ref(epochs, train_limit=12800, checkpoint={"every_steps": 1})
    j = s.submit(d, spec, name="killed")
    cdir = ckpt_dir(d, j.id)
    kills = []

    def kill(how, restart=True):
        """SIGKILL now (the record on disk must still say RUNNING), then a
        restart."""
        os.kill(d.pid(), signal.SIGKILL)
        d.kill()
        rec = d.records()[j.id]
        check(rec.state == S.RUNNING, "kill %d (%s): the job's record says %s, not RUNNING",
              len(kills) + 1, how, S.Name(rec.state))
        kills.append((how, rec.last_checkpoint.step))
        if restart:
            d.start()

    def resumed(n):
        """Waits for the n-th resume to be recorded; returns its step."""
        r = th.wait_for(lambda: (lambda g: g if len(g.resumes) >= n else None)(
            s.get(d, j.id)), 60, "resume %d to be recorded" % n, 0.002)
        check(len(r.resumes) == n, "%d resumes recorded after %d kills", len(r.resumes), n)
        return r.resumes[n - 1].step

    def tmp_now():
        try:
            return [n for n in os.listdir(cdir) if n.startswith(".ckpt-") and
                    n.endswith(".tmp")]
        except FileNotFoundError:
            return None

    # 1: while a checkpoint's temporary file exists (the file is written
    # in a few milliseconds: a kill that comes after its rename is a plain
    # kill, and the next attempt follows).
    s.wait_steps(d, j.id, 19)
    caught = None
    for attempt in range(8):
        tmps = th.wait_for(tmp_now, 60, "a .ckpt-*.tmp file in %s" % cdir, 0)
        kill("with %s being written" % tmps[0], restart=False)
        left = tmp_now()
        written = int(tmps[0][len(".ckpt-"):-len(".h5.tmp")])
        if tmps[0] in left and not os.path.exists(os.path.join(cdir, ckpt_name(written))):
            caught = written
        d.start()
        r = resumed(len(kills))
        if caught is not None:
            check(r < caught, "killed while %s was being written, the job resumed at step %d",
                  tmps[0], r)
            break
    check(caught is not None, "%d kills did not catch a checkpoint's temporary file",
          len(kills))
    r1 = r
    # 2: mid-epoch, at an arbitrary moment.
    s.wait_steps(d, j.id, r1 + 36)
    time.sleep(0.013)  # an arbitrary moment, not a condition
    kill("mid-epoch")
    r2 = resumed(len(kills))
    # 3: as soon as the resume is recorded.
    kill("right after a resume")
    resumed(len(kills))
    jj = succeeded(s, d, j.id, 300)

    check(len(jj.resumes) == len(kills), "%d resumes after %d kills: %s", len(jj.resumes),
          len(kills), list(jj.resumes))
    prev = 0
    for i, r in enumerate(jj.resumes):
        # A kill while the first checkpoint is still being written (its
        # writer can lag the steps on a loaded machine) leaves none: that
        # resume starts from step 0, without a file.
        fresh = r.step == 0 and r.checkpoint == "" and kills[i][1] == 0
        check((fresh or r.checkpoint == ckpt_name(r.step)) and r.step >= prev and r.note == "",
              "resume %d (after the kill %s; the record's newest checkpoint was at step %d): "
              "%s", i + 1, kills[i][0], kills[i][1], r)
        prev = r.step
    check(r2 >= r1, "resumed at %d after resuming at %d", r2, r1)
    check(leftovers(cdir) == [], "files left in the checkpoint directory after the end: %s",
          leftovers(cdir))
    names = ckpts(cdir)
    check(names and names[-1] == ckpt_name(total) and len(names) <= 3,
          "checkpoints after the end (keep_last 3): %s", names)
    for name in names:
        validate(os.path.join(cdir, name), spec, 100, total)
    what = "after %d kills (%s)" % (len(kills), ", ".join(
        "%s, resumed at %d" % (k[0], r.step) for k, r in zip(kills, jj.resumes)))
    check_same_state(os.path.join(cdir, ckpt_name(total)), want.last_checkpoint.path, what)
    check_same_metrics(jj, want, what)


@suite.case
def warm_start(s):
    root = s.workdir("warm-root")
    d = s.daemon(cpu_devices=1, data_dirs=[s.mnist, root])
    a = run_to_end(s, d, ref(1, train_limit=0), name="pretrain")
    check(a.state == S.SUCCEEDED, "the first job %s: %s", S.Name(a.state), a.error)
    exported = os.path.join(s.tmp, "a.h5")
    p = ctl(s, d, "export", a.id, exported)
    check(p.returncode == 0, "trainctl export exited %d: %s", p.returncode, p.stderr)
    params = read_params(exported)
    shapes = model_shapes(ref())
    check({k: v.shape for k, v in params.items()} == shapes, "exported /params %s",
          {k: v.shape for k, v in params.items()})
    write_params(os.path.join(root, "warm.h5"), params, np.float64)

    short = 1280  # 10 steps
    b = run_to_end(s, d, ref(1, train_limit=short, checkpoint={"init_from": "warm.h5"}),
                   name="warm")
    c = run_to_end(s, d, ref(1, train_limit=short), name="cold")
    check(b.state == S.SUCCEEDED and c.state == S.SUCCEEDED, "warm %s (%s), cold %s (%s)",
          S.Name(b.state), b.error, S.Name(c.state), c.error)
    lb, lc = first_loss(d, b.id), first_loss(d, c.id)
    check(lb < 1.5 * a.metrics.train_loss and lb < 0.25 * math.log(10),
          "the warm-started job's first loss is %.4f; the first job ended its epoch at %.4f",
          lb, a.metrics.train_loss)
    check(abs(lc - math.log(10)) < 0.5, "a cold start's first loss is %.4f, not near ln 10",
          lc)

    # With a zero learning rate the loaded parameters come out unchanged:
    # the float64 file was converted to exactly the float32 values.
    frozen = ref(1, train_limit=short, checkpoint={"init_from": "warm.h5"})
    frozen["optimizer"]["chain"] = [{"sgd": {"learning_rate": {"constant": 0.0}}}]
    f = run_to_end(s, d, frozen, name="frozen")
    check(f.state == S.SUCCEEDED, "the zero-learning-rate job %s: %s", S.Name(f.state), f.error)
    got = read_params(f.last_checkpoint.path)
    for k, v in params.items():
        check(got[k].dtype == np.float32 and got[k].tobytes() == v.tobytes(),
              "/params/%s after a warm start with learning rate 0 differs from the file", k)
    check(f.metrics.test_accuracy == a.metrics.test_accuracy,
          "warm-started frozen params: test accuracy %.4f, the source job's %.4f",
          f.metrics.test_accuracy, a.metrics.test_accuracy)

    # Files that do not fit are refused at submission.
    write_params(os.path.join(root, "bad.h5"), params, np.float32, drop=("layer3/b",),
                 reshape={"layer1/w": (784, 64)})
    e = th.rpc_error(s.submit, d, ref(1, checkpoint={"init_from": "bad.h5"}),
                     what="SubmitJob with a mismatched init_from")
    th.expect_status(e, grpc.StatusCode.INVALID_ARGUMENT, "2 problems",
                     "/params/layer1/w has shape (784, 64) in the file, (784, 256) in the model",
                     "missing dataset /params/layer3/b (10,)")
    check(e.details().startswith("checkpoint.init_from"), "the refusal %r does not start "
          "with the field's name", e.details())
    with open(os.path.join(root, "notes.txt"), "w") as fh:
        fh.write("layer1/w: [1, 2]\n")
    e = th.rpc_error(s.submit, d, ref(1, checkpoint={"init_from": "notes.txt"}),
                     what="SubmitJob with a text file as init_from")
    th.expect_status(e, grpc.StatusCode.INVALID_ARGUMENT, "not an HDF5 file")
    check(e.details().startswith("checkpoint.init_from"), "the refusal %r does not start "
          "with the field's name", e.details())
    n = len(d.stub.ListJobs(pb.ListJobsRequest(), timeout=10).jobs)
    check(n == 4, "%d jobs listed; the refused submissions must not create any", n)


@suite.case
def corrupt_newest_falls_back(s):
    d = s.daemon(cpu_devices=1)
    # 1000 steps: the kill after the third checkpoint (step 60) comes long
    # before the end even when the test runs slowly.
    epochs = 10
    total = 100 * epochs
    spec = ref(epochs, train_limit=12800)
    want = run_to_end(s, d, spec, name="uninterrupted", timeout=300)
    check(want.state == S.SUCCEEDED, "the uninterrupted run %s", S.Name(want.state))
    spec = ref(epochs, train_limit=12800, checkpoint={"every_steps": 20, "keep_last": 10})
    j = s.submit(d, spec, name="corrupted")
    cdir = ckpt_dir(d, j.id)
    th.wait_for(lambda: len(ckpt_steps(cdir)) >= 3, 120, "three checkpoints", 0.005)
    d.kill()
    check(d.records()[j.id].state == S.RUNNING, "the job was not running at the kill (it "
          "ended first: make it longer)")
    names = ckpts(cdir)
    check(len(names) >= 3, "checkpoints at the kill: %s", names)
    newest, second, third = names[-1], names[-2], names[-3]
    # Flip bytes in the middle of the newest (float data)...
    p1 = os.path.join(cdir, newest)
    with open(p1, "r+b") as f:
        size = os.path.getsize(p1)
        f.seek(size // 2)
        data = f.read(64)
        f.seek(size // 2)
        f.write(bytes(x ^ 0x5A for x in data))
    # ... and cut the one before in half.
    p2 = os.path.join(cdir, second)
    half = os.path.getsize(p2) // 2
    os.truncate(p2, half)

    d.start()
    jj = succeeded(s, d, j.id, 300)
    check(len(jj.resumes) == 1, "resume history %s", list(jj.resumes))
    r = jj.resumes[0]
    check(r.checkpoint == third and r.step == int(CKPT_RE.match(third).group(1)),
          "resumed from %r at step %d; expected %s (the two newer ones are damaged)",
          r.checkpoint, r.step, third)
    check(newest in r.note and "digest mismatch" in r.note,
          "the resume note does not say that %s has a digest mismatch: %r", newest, r.note)
    check(second in r.note and "truncated" in r.note,
          "the resume note does not say that %s is truncated: %r", second, r.note)
    check(os.path.isfile(p1 + ".refused") and os.path.isfile(p2 + ".refused"),
          "the refused files were not set aside as *.refused: %s", sorted(os.listdir(cdir)))
    check(os.path.getsize(p2 + ".refused") == half, "%s.refused has %d bytes, the truncated "
          "file had %d", second, os.path.getsize(p2 + ".refused"), half)
    check(sorted(leftovers(cdir)) == sorted([newest + ".refused", second + ".refused"]),
          "other files in the checkpoint directory: %s", leftovers(cdir))
    for name in ckpts(cdir):
        validate(os.path.join(cdir, name), spec, 100, total)
    what = "resumed from %s after two damaged checkpoints" % third
    check_same_state(os.path.join(cdir, ckpt_name(total)), want.last_checkpoint.path, what)
    check_same_metrics(jj, want, what)


if __name__ == "__main__":
    sys.exit(suite.run())
