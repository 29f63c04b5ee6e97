#!/usr/bin/python3
"""Checkpoints that must not be resumed from, and checkpoints that cannot be written.

usage: daemon_ckpt_faults.py TRAIND TRAINCTL SOURCE_DIR [CASE...]

A real traind (and `traind run`) on synthetic HDF5 data (no MNIST needed),
real checkpoint files edited with h5py, real file-size limits
(RLIMIT_FSIZE set on the running daemon with prlimit) and, where the test
runs as root, a real full file system (a small tmpfs as the state
directory):

  foreign_edited_and_old_refused
                  two jobs of the same spec stopped by SIGTERM; one gets the
                  other's newest checkpoint (same shapes, seed and position
                  rules) in its directory, the other gets a copy of its own
                  newest with step, epoch and /opt_state/count moved on by
                  one epoch (consistently) and a version-1 copy (no binding).
                  After the restart each resumes from its own newest genuine
                  file, the Resume note names every refused file and why
                  (another job's id; digest mismatch; format version 1), the
                  refused files are *.refused, and both end bit for bit
                  equal. The version-1 file still warm-starts a job through
                  checkpoint.init_from.
  run_binds_to_spec
                  `traind run --checkpoint-dir`: files bound to job id "run"
                  and the spec hash (recomputed with protobuf); more epochs
                  of the same spec resume; another learning rate refuses
                  every file ("written for another spec") and starts over.
  efbig_then_final_retried
                  RLIMIT_FSIZE below a checkpoint's size: the daemon is not
                  killed by SIGXFSZ; periodic checkpoints fail with
                  checkpoint_error "File too large (EFBIG)" while training
                  goes on to the end; the job then stays RUNNING, retrying
                  its final checkpoint, claiming no checkpoint; once the
                  limit is raised the final checkpoint is written and the
                  job SUCCEEDED. Another job's record and file are intact.
  final_lost_fails_job
                  the same limit for good, with final_checkpoint_retry_sec
                  2: the job FAILED with the step, the attempts, the errno,
                  the path and "none" on disk; it stays FAILED after a
                  restart; the daemon serves on and runs the next job; the
                  other job is intact. `traind run --checkpoint-dir` under
                  the same limit exits 1 with the same reason.
  enospc_tmpfs    the state directory on a 4 MiB tmpfs: the first checkpoint
                  fits, the next fail with "No space left on device
                  (ENOSPC)", training goes on, the final checkpoint fails
                  the job naming the newest file on disk (step 4), which is
                  intact. Needs root to mount (skipped otherwise, a failure
                  under CI=true).

Every daemon is stopped with SIGTERM and must exit 0 with no sanitizer
report. Prints one line per case, then "N passed, N failed".
"""
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import zlib

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import traind_harness as th  # noqa: E402
from traind_harness import check  # noqa: E402

h5py, np, h5ckpt = th.require("python3-h5py and python3-numpy", "h5py", "numpy", "h5ckpt")

args = th.parse_args(__doc__.splitlines()[1])
suite = th.Suite(args)
pb = suite.pb
S = pb.JobState
SLOW = th.sanitized(args.traind)
CKPT_RE = re.compile(r"^ckpt-(\d{12})\.h5$")
STEPS_PER_EPOCH = 16  # make_synthetic's 2048 examples, batch 128
# Below one checkpoint of the reference model (2.8 MB), above the records,
# TensorBoard files and log the tests write.
FSIZE = 1 << 20
TIMEOUT = 600 if SLOW else 180


# -------------------------------------------------------------- helpers


def data_root(s):
    root = s.workdir("data")
    th.make_synthetic(root)
    return root


def spec(s, epochs, **checkpoint):
    sp = th.synthetic_spec(s.source_dir, epochs)
    if checkpoint:
        sp["checkpoint"] = checkpoint
    return sp


def config(s, **kv):
    path = os.path.join(s.tmp, "traind.yaml")
    with open(path, "w") as f:
        for k, v in kv.items():
            f.write("%s: %s\n" % (k, v))
    return path


def ckpt_dir(d, job_id):
    return os.path.join(d.state_dir, "checkpoints", job_id)


def name(step):
    return "ckpt-%012d.h5" % step


def steps_in(dirpath):
    if not os.path.isdir(dirpath):
        return []
    return sorted(int(m.group(1)) for m in map(CKPT_RE.match, os.listdir(dirpath)) if m)


def set_fsize(d, limit):
    """RLIMIT_FSIZE of the running daemon (soft limit; the hard one stays)."""
    _, hard = resource.prlimit(d.pid(), resource.RLIMIT_FSIZE)
    resource.prlimit(d.pid(), resource.RLIMIT_FSIZE, (limit, hard))


def serving(d):
    r = d.health.Check(suite.stubs.health.HealthCheckRequest(service=""), timeout=10)
    check(r.status == suite.stubs.health.HealthCheckResponse.SERVING,
          "health is %s, not SERVING", r.status)
    check(d.alive(), "the daemon is gone")


def ended(s, d, job_id, timeout=TIMEOUT):
    return s.wait_state(d, job_id, (S.SUCCEEDED, S.FAILED, S.CANCELLED), timeout)


def succeeded(s, d, job_id, timeout=TIMEOUT):
    j = ended(s, d, job_id, timeout)
    check(j.state == S.SUCCEEDED, "job %s ended %s: %s", job_id, S.Name(j.state), j.error)
    return j


def tensors(path):
    """/params and /opt_state as raw bytes by path (the binding aside)."""
    out = {}
    with h5py.File(path, "r") as f:
        for top in ("params", "opt_state"):
            f[top].visititems(lambda n, o, t=top: out.__setitem__(
                "%s/%s" % (t, n), o[()].tobytes()) if isinstance(o, h5py.Dataset) else None)
    return out


def valid(path, job_id, sp):
    """The file's digest and binding, recomputed; returns its step."""
    with h5py.File(path, "r") as f:
        a = f.attrs
        check(int(a["version"]) == 2, "%s: version %s", path, a["version"])
        check(a["digest"] == h5ckpt.digest(f), "%s: digest %s, recomputed %s", path,
              a["digest"], h5ckpt.digest(f))
        check(a["job_id"] == job_id, "%s: job_id %r, want %r", path, a["job_id"], job_id)
        want = h5ckpt.spec_hash(th.spec_msg(suite.stubs, sp))
        check(a["spec_hash"] == want, "%s: spec_hash %s, recomputed %s", path, a["spec_hash"],
              want)
        return int(a["step"])


def move_position(src, dst, steps):
    """A copy of src with step, /opt_state/count and epoch moved on by
    `steps` (a whole number of epochs), consistently with each other and
    with the epoch length: every check but the digest still holds."""
    shutil.copyfile(src, dst)
    with h5py.File(dst, "r+") as f:
        a = f.attrs
        a.modify("step", np.int64(int(a["step"]) + steps))
        a.modify("epoch", np.uint32(int(a["epoch"]) + steps // STEPS_PER_EPOCH))
        f["opt_state/count"][()] = np.int64(int(f["opt_state/count"][()]) + steps)
    return dst


def make_version1(src, dst, steps):
    """A copy of src as traind wrote version 1 files: no job_id, spec_hash
    or digest, a CRC-32 'checksum' of the float data; moved on like
    move_position so that its name fits its step."""
    move_position(src, dst, steps)
    with h5py.File(dst, "r+") as f:
        for k in ("job_id", "spec_hash", "digest"):
            del f.attrs[k]
        f.attrs.modify("version", np.int32(1))
        crc = 0
        for leaf in h5ckpt.float_leaves(f):
            crc = zlib.crc32(np.ascontiguousarray(f[leaf][()], dtype="<f4").tobytes(), crc)
        f.attrs.create("checksum", crc, dtype=np.uint32)
    return dst


def traind_run(s, job_file, ckdir, root, cfg=None, fsize=None):
    argv = [s.traind, "run", job_file, "--data-dir", root, "--checkpoint-dir", ckdir,
            "--threads", "2"]
    if cfg:
        argv += ["--config", cfg]

    def limit():
        if fsize:
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, resource.RLIM_INFINITY))
    p = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT,
                       stdin=subprocess.DEVNULL, preexec_fn=limit)
    for mark in th.SANITIZER_MARKS:
        check(mark not in p.stderr, "sanitizer report from traind run:\n%s", p.stderr[-6000:])
    return p


def retries_logged(d, job_id=None):
    return [ln for ln in d.log().splitlines()
            if 'msg="checkpoint failed; trying again"' in ln and "reason=final" in ln and
            (job_id is None or job_id in ln)]


# ----------------------------------------------------------------- cases


@suite.case
def foreign_edited_and_old_refused(s):
    root = data_root(s)
    d = s.daemon(cpu_devices=2, data_dirs=[root])
    epochs = 40
    total = epochs * STEPS_PER_EPOCH
    sp = spec(s, epochs, every_steps=10, keep_last=30)
    a = s.submit(d, sp, name="a")
    b = s.submit(d, sp, name="b")
    th.wait_for(lambda: len(steps_in(ckpt_dir(d, a.id))) >= 3 and
                len(steps_in(ckpt_dir(d, b.id))) >= 3, TIMEOUT, "three checkpoints of each job")
    d.stop()
    recs = d.records()
    for j in (a, b):
        check(recs[j.id].state == S.QUEUED, "job %s was saved %s after SIGTERM (it ended before "
              "the stop: make it longer)", j.id, S.Name(recs[j.id].state))
    sa, sb = steps_in(ckpt_dir(d, a.id)), steps_in(ckpt_dir(d, b.id))
    victim, other = (a, b) if sa[-1] <= sb[-1] else (b, a)
    vdir, odir = ckpt_dir(d, victim.id), ckpt_dir(d, other.id)
    vsteps, osteps = steps_in(vdir), steps_in(odir)
    planted = osteps[-1]
    # The victim's newest own file before the planted one (a file of the
    # same step is replaced by it).
    v_expect = max(x for x in vsteps if x < planted)
    shutil.copyfile(os.path.join(odir, name(planted)), os.path.join(vdir, name(planted)))
    edited = planted + STEPS_PER_EPOCH
    old = planted + 2 * STEPS_PER_EPOCH
    move_position(os.path.join(odir, name(planted)), os.path.join(odir, name(edited)),
                  STEPS_PER_EPOCH)
    make_version1(os.path.join(odir, name(planted)), os.path.join(odir, name(old)),
                  2 * STEPS_PER_EPOCH)

    d.start()
    jv, jo = succeeded(s, d, victim.id), succeeded(s, d, other.id)
    check(len(jv.resumes) == 1 and jv.resumes[0].checkpoint == name(v_expect) and
          jv.resumes[0].step == v_expect,
          "job %s (given %s of job %s) resumed %s; expected from its own %s",
          victim.id, name(planted), other.id, list(jv.resumes), name(v_expect))
    note = jv.resumes[0].note
    for w in (name(planted), "belongs to job '%s'" % other.id,
              "not to this job '%s'" % victim.id):
        check(w in note, "the victim's resume note %r does not say %r", note, w)
    check(len(jo.resumes) == 1 and jo.resumes[0].checkpoint == name(planted) and
          jo.resumes[0].step == planted,
          "job %s resumed %s; expected from its own %s", other.id, list(jo.resumes),
          name(planted))
    note = jo.resumes[0].note
    for w in (name(old), "format version 1", name(edited), "digest mismatch"):
        check(w in note, "the resume note %r does not say %r", note, w)
    for path in (os.path.join(vdir, name(planted)), os.path.join(odir, name(edited)),
                 os.path.join(odir, name(old))):
        check(os.path.isfile(path + ".refused") and not os.path.exists(path),
              "%s was not set aside as .refused: %s", path, sorted(os.listdir(
                  os.path.dirname(path))))
    # Both continued their own run: the same spec ends bit for bit equal.
    fv, fo = os.path.join(vdir, name(total)), os.path.join(odir, name(total))
    check(valid(fv, victim.id, sp) == total and valid(fo, other.id, sp) == total,
          "final checkpoints")
    tv, to = tensors(fv), tensors(fo)
    differ = sorted(k for k in to if tv.get(k) != to[k])
    check(sorted(tv) == sorted(to) and not differ,
          "the two runs of one spec differ at the end in %s", differ[:4])
    check(jv.metrics.train_loss == jo.metrics.train_loss,
          "final train loss %r vs %r", jv.metrics.train_loss, jo.metrics.train_loss)

    # A version-1 file cannot be resumed from, but warm-starts a job.
    shutil.copyfile(os.path.join(odir, name(old)) + ".refused", os.path.join(root, "old.h5"))
    w = s.submit(d, spec(s, 1, init_from="old.h5"), name="warm")
    succeeded(s, d, w.id)
    serving(d)


@suite.case
def run_binds_to_spec(s):
    root = data_root(s)
    ck = os.path.join(s.tmp, "ck")
    sp2 = spec(s, 2, every_steps=8, keep_last=3)
    job = th.write_job(os.path.join(s.tmp, "job.yaml"), sp2)
    p = traind_run(s, job, ck, root)
    check(p.returncode == 0, "traind run exited %d: %s", p.returncode, p.stderr[-3000:])
    # (A due checkpoint waits while the writer is busy: the steps between
    # vary, the newest is the final state.)
    check(steps_in(ck)[-1] == 32 and len(steps_in(ck)) <= 3, "checkpoints %s", os.listdir(ck))
    for x in steps_in(ck):
        valid(os.path.join(ck, name(x)), "run", sp2)

    # More epochs of the same spec: the state at step 32 is the same, so
    # the run continues from it.
    sp3 = spec(s, 3, every_steps=8, keep_last=3)
    job = th.write_job(os.path.join(s.tmp, "job3.yaml"), sp3)
    p = traind_run(s, job, ck, root)
    check(p.returncode == 0 and "resumed from %s/%s at step 32" % (ck, name(32)) in p.stderr,
          "traind run with more epochs exited %d: %s", p.returncode, p.stderr[-3000:])
    check(steps_in(ck)[-1] == 48, "checkpoints %s", os.listdir(ck))
    valid(os.path.join(ck, name(48)), "run", sp3)

    # Another learning rate: every file is of another spec.
    other = spec(s, 3, every_steps=8, keep_last=3)
    other["optimizer"]["chain"] = [{"adam": {"learning_rate": {"constant": 0.002}}}]
    job = th.write_job(os.path.join(s.tmp, "other.yaml"), other)
    before = steps_in(ck)
    p = traind_run(s, job, ck, root)
    check(p.returncode == 0, "traind run of another spec exited %d: %s", p.returncode,
          p.stderr[-3000:])
    check("resumed from" not in p.stderr, "another spec resumed: %s", p.stderr[-3000:])
    for x in before:
        check("%s refused" % name(x) in p.stderr and os.path.isfile(os.path.join(
            ck, name(x) + ".refused")), "%s was not refused: %s", name(x), p.stderr[-3000:])
    notes = [ln for ln in p.stderr.splitlines() if ln.startswith("traind: %s refused" % name(48))]
    check(len(notes) == 1 and notes[0].count("was written for another spec") == len(before),
          "the resume note does not say why each file was refused: %s", p.stderr[-3000:])
    check(steps_in(ck)[-1] == 48, "checkpoints %s", os.listdir(ck))
    valid(os.path.join(ck, name(48)), "run", other)


@suite.case
def efbig_then_final_retried(s):
    root = data_root(s)
    d = s.daemon(data_dirs=[root], config=config(s, final_checkpoint_retry_sec=300))
    sx = spec(s, 2)
    x = succeeded(s, d, s.submit(d, sx, name="before").id)
    x_bytes = open(x.last_checkpoint.path, "rb").read()

    set_fsize(d, FSIZE)
    epochs = 6
    total = epochs * STEPS_PER_EPOCH
    y = s.submit(d, spec(s, epochs, every_steps=4), name="limited")
    # Periodic checkpoints fail; training goes on to its end, and the job
    # keeps retrying its final checkpoint with the state in memory.
    th.wait_for(lambda: len(retries_logged(d, y.id)) >= 2, TIMEOUT,
                "two retries of the final checkpoint in the log")
    j = s.get(d, y.id)
    check(j.state == S.RUNNING and j.progress.step == total,
          "while its final checkpoint is retried the job is %s at step %d (want RUNNING at %d)",
          S.Name(j.state), j.progress.step, total)
    for w in ("step %d (final)" % total, "File too large (EFBIG)",
              "/.%s.tmp" % name(total)):
        check(w in j.checkpoint_error, "checkpoint_error %r does not say %r",
              j.checkpoint_error, w)
    check(j.last_checkpoint.file == "" and steps_in(ckpt_dir(d, y.id)) == [],
          "a checkpoint is claimed or on disk: %s, %s", j.last_checkpoint,
          os.listdir(ckpt_dir(d, y.id)))
    log = d.log()
    check(re.search(r'msg="checkpoint failed" job=%s step=4 reason=periodic' % y.id, log),
          "the periodic checkpoint's failure is not logged")
    serving(d)

    set_fsize(d, resource.RLIM_INFINITY)
    j = succeeded(s, d, y.id)
    lc = j.last_checkpoint
    check(lc.step == total and lc.reason == "final" and lc.file == name(total),
          "after the limit was raised: last checkpoint %s", lc)
    check(j.checkpoint_error == "", "checkpoint_error %r after the final checkpoint was written",
          j.checkpoint_error)
    check(valid(lc.path, y.id, spec(s, epochs, every_steps=4)) == total, "the final file")
    check(open(x.last_checkpoint.path, "rb").read() == x_bytes and
          s.get(d, x.id).state == S.SUCCEEDED, "the other job's checkpoint or record changed")


@suite.case
def final_lost_fails_job(s):
    root = data_root(s)
    cfg = config(s, final_checkpoint_retry_sec=2)
    d = s.daemon(data_dirs=[root], config=cfg)
    x = succeeded(s, d, s.submit(d, spec(s, 2), name="before").id)
    x_bytes = open(x.last_checkpoint.path, "rb").read()

    set_fsize(d, FSIZE)
    total = 2 * STEPS_PER_EPOCH
    z = ended(s, d, s.submit(d, spec(s, 2), name="lost").id)
    check(z.state == S.FAILED, "a job whose final checkpoint cannot be written ended %s: %s",
          S.Name(z.state), z.error)
    for w in ("final checkpoint of step %d could not be written in" % total, "attempts",
              "File too large (EFBIG)", "%s/.%s.tmp" % (ckpt_dir(d, z.id), name(total)),
              "newest checkpoint on disk", "is none"):
        check(w in z.error, "the job's error %r does not say %r", z.error, w)
    check(z.last_checkpoint.file == "" and steps_in(ckpt_dir(d, z.id)) == [],
          "a checkpoint is claimed or on disk: %s", z.last_checkpoint)
    check(len(retries_logged(d, z.id)) >= 1, "no retry was logged")
    serving(d)

    set_fsize(d, resource.RLIM_INFINITY)
    w = succeeded(s, d, s.submit(d, spec(s, 1), name="after").id)
    d.restart()
    recs = d.records()
    check(recs[z.id].state == S.FAILED and recs[z.id].error == z.error,
          "after a restart the lost job is %s: %s", S.Name(recs[z.id].state), recs[z.id].error)
    check(recs[x.id].state == S.SUCCEEDED and recs[w.id].state == S.SUCCEEDED and
          open(x.last_checkpoint.path, "rb").read() == x_bytes,
          "other jobs' records or checkpoints changed")
    check(s.get(d, z.id).state == S.FAILED, "the lost job runs again after a restart")

    # traind run under the same limit: exit 1 with the reason.
    ck = os.path.join(s.tmp, "run-ck")
    job = th.write_job(os.path.join(s.tmp, "job.yaml"), spec(s, 2))
    p = traind_run(s, job, ck, root, cfg=cfg, fsize=FSIZE)
    check(p.returncode == 1, "traind run whose final checkpoint fails exited %d (want 1): %s",
          p.returncode, p.stderr[-3000:])
    for w in ("final checkpoint of step %d could not be written" % total,
              "File too large (EFBIG)", "%s/.%s.tmp" % (ck, name(total))):
        check(w in p.stderr, "traind run's stderr does not say %r: %s", w, p.stderr[-3000:])


@suite.case
def enospc_tmpfs(s):
    state = s.workdir("state")
    mounted = os.geteuid() == 0 and subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", state],
        capture_output=True).returncode == 0
    if not mounted:
        check(os.environ.get("CI") != "true", "cannot mount a tmpfs (needs root) under CI=true")
        print("  skipped enospc_tmpfs: mounting a tmpfs needs root")
        return
    try:
        root = data_root(s)
        d = s.daemon(data_dirs=[root], state_dir=state,
                     config=config(s, final_checkpoint_retry_sec=2))
        epochs = 6
        total = epochs * STEPS_PER_EPOCH
        sp = spec(s, epochs, every_steps=4, keep_last=1)
        j = ended(s, d, s.submit(d, sp, name="full").id)
        cdir = ckpt_dir(d, j.id)
        check(j.state == S.FAILED and j.progress.step == total,
              "on a full disk the job ended %s at step %d: %s", S.Name(j.state),
              j.progress.step, j.error)
        for w in ("No space left on device (ENOSPC)", "final checkpoint of step %d" % total,
                  "%s (step 4)" % name(4)):
            check(w in j.error, "the job's error %r does not say %r", j.error, w)
        check("No space left on device (ENOSPC)" in j.checkpoint_error,
              "checkpoint_error %r", j.checkpoint_error)
        check(j.last_checkpoint.step == 4 and steps_in(cdir) == [4],
              "last checkpoint %s, files %s", j.last_checkpoint, os.listdir(cdir))
        check(valid(os.path.join(cdir, name(4)), j.id, sp) == 4, "the file of step 4")
        check(not [n for n in os.listdir(cdir) if n.endswith(".tmp")],
              "temporaries left: %s", os.listdir(cdir))
        serving(d)
        d.stop()
        check(d.records()[j.id].state == S.FAILED, "the record does not say FAILED")
    finally:
        for live in list(th._live):
            live.kill()
        subprocess.run(["umount", state], capture_output=True)


if __name__ == "__main__":
    sys.exit(suite.run())
