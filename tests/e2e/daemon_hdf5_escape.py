#!/usr/bin/python3
"""Files that would lead traind outside its data roots, block it, or make it
allocate what they do not hold, through a real daemon.

usage: daemon_hdf5_escape.py TRAIND TRAINCTL SOURCE_DIR [CASE...]

A real traind on a temporary unix socket whose one data root holds hostile
HDF5 files built here with h5py: their data stored externally (in a
root-only file outside the roots, and in /etc/passwd), reached through an
external link (the dataset itself, a group on its path, a soft link to one)
or mapped as a virtual dataset from outside. Each daemon first runs a good
"known" job to its final checkpoint; after every hostile request the daemon
must still answer health (SERVING) and GetJob, and at the end the known
job's record and checkpoint files are as they were and `trainctl export`
returns its checkpoint byte for byte.

  dataset_escapes        each mechanism as a dataset: refused at SubmitJob
                         (INVALID_ARGUMENT or FAILED_PRECONDITION) or the job
                         FAILED with that code, the message naming the
                         dataset and the mechanism; the job took no step and
                         wrote no checkpoint (`trainctl export` finds
                         nothing), and no file in the state directory holds
                         the outside bytes
  init_from_escapes      each mechanism in checkpoint.init_from (a
                         learning rate of 0 would hand the outside bytes
                         back through export): INVALID_ARGUMENT at
                         SubmitJob naming checkpoint.init_from, the leaf and
                         the mechanism; no job is created
  swapped_after_submit   files valid at SubmitJob replaced while the job
                         waits in the queue (a dataset by one with external
                         storage, by a FIFO; a warm start by an external
                         link): the job FAILS when it starts, promptly,
                         with the reason, and never reads from outside
  resume_refuses_escape  the newest checkpoint of a running job rewritten so
                         that a leaf is stored in an outside file: at the
                         restart it is refused (*.refused, the reason in the
                         Resume note) and the job resumes from the one
                         before
  bad_paths              a FIFO named as the HDF5 file, as an IDX file and
                         as init_from, a symlink loop, and a name longer
                         than the file system allows: INVALID_ARGUMENT
                         naming the path, at once
  declared_sizes         a small file declaring (2^31, 1) float32 features
                         in unwritten chunks, and one declaring 2^31 uint8
                         values held only as a fill value: refused with
                         the reason, before any allocation (the daemon's
                         memory stays small)

Every daemon is stopped with SIGTERM and must exit 0 with no sanitizer
report. Needs h5py and numpy (Debian python3-h5py, python3-numpy); no
MNIST. Prints one line per case, then "N passed, N failed".
"""
import os
import shutil
import sys
import time

import grpc

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import traind_harness as th  # noqa: E402
from traind_harness import check, expect_status, rpc_error  # noqa: E402

h5py, np = th.require("python3-h5py and python3-numpy", "h5py", "numpy")

args = th.parse_args(__doc__.splitlines()[1])
suite = th.Suite(args)
pb = suite.pb
S = pb.JobState
C = grpc.StatusCode
INSIDE = "traind reads only data stored inside the file"
REFUSED_CODES = (C.INVALID_ARGUMENT, C.FAILED_PRECONDITION)
SLOW = th.sanitized(args.traind)


# ------------------------------------------------------------- specs


def small_spec(file="synthetic.h5", init_from=None, epochs=1, lr=0.001, checkpoint=None):
    """784 -> 10 on the synthetic set: /params/layer1/w (784, 10) and
    /params/layer1/b (10)."""
    sp = {
        "name": "small",
        "model": {"input_shape": [784], "layers": [{"dense": {"features": 10}}],
                  "loss": "SOFTMAX_CROSS_ENTROPY"},
        "optimizer": {"chain": [{"sgd": {"learning_rate": {"constant": lr}}}]},
        "dataset": {"hdf5": {"train_file": file}},
        "training": {"epochs": epochs, "batch_size": 128},
    }
    ck = dict(checkpoint or {})
    if init_from:
        ck["init_from"] = init_from
    if ck:
        sp["checkpoint"] = ck
    return sp


# ------------------------------------------------------------ hostile files


class Files:
    """The data root and an outside directory with the bytes that must never
    come back: a root-only file of random bytes, and /etc/passwd."""

    def __init__(self, s):
        self.root = s.workdir("root")
        self.outside = s.workdir("outside")
        th.make_synthetic(self.root)
        rng = np.random.default_rng(7)
        self.secret = rng.integers(0, 256, size=784 * 10 * 4 + 4096, dtype=np.uint8).tobytes()
        self.secret_path = os.path.join(self.outside, "secret")
        with open(self.secret_path, "wb") as f:
            f.write(self.secret)
        os.chmod(self.secret_path, 0o600)
        with open("/etc/passwd", "rb") as f:
            self.passwd = f.read()
        # A valid dataset and a valid warm start, outside the roots.
        self.real = os.path.join(self.outside, "real.h5")
        with h5py.File(self.real, "w") as f:
            f["features"] = np.resize(np.frombuffer(self.secret, np.uint8), (2048, 784))
            f["labels"] = np.arange(2048, dtype=np.int64) % 10
            f.create_group("grp")
            f["grp/features"] = f["features"][()]
            f["params/layer1/w"] = np.frombuffer(self.secret[:784 * 10 * 4], np.float32)\
                .reshape(784, 10)
            f["params/layer1/b"] = np.zeros(10, np.float32)

    def p(self, name):
        return os.path.join(self.root, name)

    def labels(self, f, n=2048):
        f["labels"] = np.arange(n, dtype=np.int64) % 10

    # Datasets, one mechanism each; the features are (2048, 784) uint8.
    def dataset(self, how):
        name = "ds_%s.h5" % how
        with h5py.File(self.p(name), "w") as f:
            if how == "external_secret":
                f.create_dataset("features", (2048, 784), np.uint8,
                                 external=[(self.secret_path, 0, 2048 * 784)])
            elif how == "external_passwd":
                n = len(self.passwd)
                f.create_dataset("features", (2048, 784), np.uint8,
                                 external=[("/etc/passwd", 0, n),
                                           (self.secret_path, 0, 2048 * 784 - n)])
            elif how == "external_link":
                f["features"] = h5py.ExternalLink(self.real, "/features")
            elif how == "external_group":
                f["train"] = h5py.ExternalLink(self.real, "/grp")
            elif how == "soft_to_external":
                f["ext"] = h5py.ExternalLink(self.real, "/features")
                f["features"] = h5py.SoftLink("/ext")
            elif how == "virtual":
                layout = h5py.VirtualLayout((2048, 784), np.uint8)
                layout[:] = h5py.VirtualSource(self.real, "features", (2048, 784))
                f.create_virtual_dataset("features", layout)
            self.labels(f)
        return name

    # Warm starts, one mechanism each.
    def init(self, how):
        name = "init_%s.h5" % how
        with h5py.File(self.p(name), "w") as f:
            if how == "params_link":
                f["params"] = h5py.ExternalLink(self.real, "/params")
                return name
            g = f.create_group("params/layer1")
            g["b"] = np.zeros(10, np.float32)
            if how == "external_secret":
                g.create_dataset("w", (784, 10), np.float32,
                                 external=[(self.secret_path, 0, 784 * 40)])
            elif how == "external_passwd":
                n = min(len(self.passwd), 784 * 40)
                ext = [("/etc/passwd", 0, n)]
                if n < 784 * 40:
                    ext.append((self.secret_path, 0, 784 * 40 - n))
                g.create_dataset("w", (784, 10), np.float32, external=ext)
            elif how == "external_link":
                g["w"] = h5py.ExternalLink(self.real, "/params/layer1/w")
            elif how == "soft_to_external":
                f["ext"] = h5py.ExternalLink(self.real, "/params/layer1/w")
                g["w"] = h5py.SoftLink("/ext")
            elif how == "virtual":
                layout = h5py.VirtualLayout((784, 10), np.float32)
                layout[:] = h5py.VirtualSource(self.real, "params/layer1/w", (784, 10))
                g.create_virtual_dataset("w", layout)
            else:
                g["w"] = np.zeros((784, 10), np.float32)
        return name


# ------------------------------------------------------------ the daemon


class Ctx:
    """A daemon on the root, with a finished "known" job whose record and
    checkpoint must come through every hostile request intact."""

    def __init__(self, s, **kw):
        self.s = s
        self.files = Files(s)
        self.d = s.daemon(data_dirs=[self.files.root], **kw)
        self.known = s.submit(self.d, small_spec(checkpoint={"every_steps": 8}), name="known")
        j = s.wait_state(self.d, self.known.id, (S.SUCCEEDED, S.FAILED), 120)
        check(j.state == S.SUCCEEDED, "the known job ended %s: %s", S.Name(j.state), j.error)
        self.known_record = j
        self.known_ckpts = self.ckpt_files(j.id)
        check(self.known_ckpts, "the known job wrote no checkpoint")

    def ckpt_dir(self, job_id):
        return os.path.join(self.d.state_dir, "checkpoints", job_id)

    def ckpt_files(self, job_id):
        d = self.ckpt_dir(job_id)
        out = {}
        if os.path.isdir(d):
            for n in sorted(os.listdir(d)):
                with open(os.path.join(d, n), "rb") as f:
                    out[n] = f.read()
        return out

    def alive(self, after):
        d = self.d
        check(d.alive(), "the daemon exited after %s:\n%s", after, th.tail(d.log()))
        try:
            h = d.health.Check(self.s.stubs.health.HealthCheckRequest(), timeout=10)
            j = d.stub.GetJob(pb.GetJobRequest(id=self.known.id), timeout=10)
        except grpc.RpcError as e:
            raise th.TestFailure("the daemon stopped serving after %s: %s %s"
                                 % (after, e.code().name, e.details()))
        check(h.status == self.s.stubs.health.HealthCheckResponse.SERVING,
              "health is %d after %s", h.status, after)
        check(j.state == S.SUCCEEDED, "the known job is %s after %s", S.Name(j.state), after)

    def known_intact(self):
        """The known job's record and checkpoints as they were, and its
        export a byte copy of its newest checkpoint, free of outside bytes."""
        rec = self.d.records()[self.known.id]
        want = self.known_record
        check(rec.state == want.state and rec.last_checkpoint.file == want.last_checkpoint.file
              and rec.checkpoints_written == want.checkpoints_written,
              "the known job's record changed: %s / %s", rec.last_checkpoint, want.last_checkpoint)
        check(self.ckpt_files(self.known.id) == self.known_ckpts,
              "the known job's checkpoint files changed")
        out = os.path.join(self.s.tmp, "known-export.h5")
        p = self.s.trainctl("export", self.known.id, out, "--no-save", addr=self.d.addr)
        check(p.returncode == 0, "trainctl export of the known job exited %d: %s",
              p.returncode, p.stderr)
        with open(out, "rb") as f:
            data = f.read()
        check(data == self.known_ckpts[want.last_checkpoint.file],
              "the export of the known job is not its newest checkpoint")
        self.no_outside_bytes(data, "the known job's export")

    def no_outside_bytes(self, data, what):
        fs = self.files
        for i in range(0, 784 * 40, 997):
            check(fs.secret[i:i + 64] not in data, "%s holds bytes of %s", what, fs.secret_path)
        for line in fs.passwd.splitlines():
            if len(line) >= 16:
                check(line not in data, "%s holds a line of /etc/passwd", what)

    def state_free_of_outside(self):
        for dirpath, _, names in os.walk(self.d.state_dir):
            for n in names:
                p = os.path.join(dirpath, n)
                if os.path.isfile(p):
                    with open(p, "rb") as f:
                        self.no_outside_bytes(f.read(), p)

    def submit_refused(self, sp, code, *words):
        e = rpc_error(self.d.stub.SubmitJob, pb.SubmitJobRequest(spec=th.spec_msg(self.s.stubs, sp)),
                      timeout=15, what="SubmitJob (expecting %s)" % code.name)
        expect_status(e, code, *words)
        return e

    def refused_or_failed(self, sp, *words):
        """The job is refused at SubmitJob with INVALID_ARGUMENT or
        FAILED_PRECONDITION, or accepted and FAILED with that code, before
        any step and any checkpoint; the message holds every word. Returns
        the failed job, or None when refused."""
        try:
            r = self.d.stub.SubmitJob(pb.SubmitJobRequest(spec=th.spec_msg(self.s.stubs, sp)),
                                      timeout=15)
        except grpc.RpcError as e:
            check(e.code() in REFUSED_CODES, "SubmitJob: %s %r, expected one of %s",
                  e.code().name, e.details(), [c.name for c in REFUSED_CODES])
            expect_status(e, e.code(), *words)
            return None
        j = self.s.wait_state(self.d, r.job.id, (S.SUCCEEDED, S.FAILED, S.CANCELLED), 60)
        check(j.state == S.FAILED, "a job on %s ended %s", words, S.Name(j.state))
        check(j.error_code in (3, 9), "error_code %d (%r), expected 3 or 9", j.error_code,
              j.error)
        for w in words:
            check(w.lower() in j.error.lower(), "the job's error %r does not mention %r",
                  j.error, w)
        m = self.d.stub.GetMetrics(pb.GetMetricsRequest(id=j.id), timeout=10)
        check(not m.steps, "the refused job took %d steps", len(m.steps))
        check(not self.ckpt_files(j.id), "the refused job wrote checkpoints")
        p = self.s.trainctl("export", j.id, os.path.join(self.s.tmp, "x.h5"), "--no-save",
                            addr=self.d.addr)
        check(p.returncode != 0 and "no checkpoint" in p.stderr,
              "trainctl export of the refused job exited %d: %s", p.returncode, p.stderr)
        check(not os.path.exists(os.path.join(self.s.tmp, "x.h5")), "export left a file")
        return j

    def jobs(self):
        return {j.id for j in self.d.stub.ListJobs(pb.ListJobsRequest(), timeout=10).jobs}


# ----------------------------------------------------------------- cases


@suite.case
def dataset_escapes(s):
    c = Ctx(s)
    fs = c.files
    cases = [
        ("external_secret", "features", ["features 'features' uses external storage",
                                         fs.secret_path, INSIDE]),
        ("external_passwd", "features", ["features 'features' uses external storage",
                                         "/etc/passwd", INSIDE]),
        ("external_link", "features", ["features 'features' leads through 'features', an "
                                       "external link to '/features'", fs.real, INSIDE]),
        ("external_group", "train/features", ["leads through 'train', an external link",
                                              fs.real, INSIDE]),
        ("soft_to_external", "features", ["features 'features' leads through an external link",
                                          fs.real, INSIDE]),
        ("virtual", "features", ["features 'features' is a virtual dataset", fs.real, INSIDE]),
    ]
    for how, features, words in cases:
        sp = small_spec(file=fs.dataset(how))
        sp["dataset"]["hdf5"]["features"] = features
        c.refused_or_failed(sp, fs.p("ds_%s.h5" % how), *words)
        c.alive("a dataset with %s" % how)
    c.state_free_of_outside()
    c.known_intact()


@suite.case
def init_from_escapes(s):
    c = Ctx(s)
    fs = c.files
    before = c.jobs()
    cases = [
        ("external_secret", ["'/params/layer1/w' uses external storage", fs.secret_path]),
        ("external_passwd", ["'/params/layer1/w' uses external storage", "/etc/passwd"]),
        ("external_link", ["'/params/layer1/w' leads through '/params/layer1/w', an external "
                           "link", fs.real]),
        ("params_link", ["leads through '/params', an external link to '/params'", fs.real]),
        ("soft_to_external", ["'/params/layer1/w' leads through an external link", fs.real]),
        ("virtual", ["'/params/layer1/w' is a virtual dataset", fs.real]),
    ]
    for how, words in cases:
        name = fs.init(how)
        c.submit_refused(small_spec(init_from=name, lr=0.0), C.INVALID_ARGUMENT,
                         "checkpoint.init_from", fs.p(name), INSIDE, *words)
        c.alive("init_from with %s" % how)
    check(c.jobs() == before, "refused warm starts created jobs: %s", c.jobs() - before)
    # A plain warm start from the same root still works, with lr 0 keeping
    # it exactly: the export holds its zeros.
    j = s.submit(c.d, small_spec(init_from=fs.init("plain"), lr=0.0))
    j = s.wait_state(c.d, j.id, (S.SUCCEEDED, S.FAILED), 120)
    check(j.state == S.SUCCEEDED, "a plain warm start ended %s: %s", S.Name(j.state), j.error)
    out = os.path.join(s.tmp, "plain.h5")
    p = s.trainctl("export", j.id, out, "--no-save", addr=c.d.addr)
    check(p.returncode == 0, "export of the plain warm start: %s", p.stderr)
    with h5py.File(out, "r") as f:
        check(not f["params/layer1/w"][()].any(), "lr 0 from zeros did not keep zeros")
    c.state_free_of_outside()
    c.known_intact()


@suite.case
def swapped_after_submit(s):
    c = Ctx(s, cpu_devices=1)
    fs = c.files
    # A long job holds the one device, so the next ones wait in the queue.
    blocker = s.submit(c.d, small_spec(epochs=100000), name="blocker")
    s.wait_state(c.d, blocker.id, S.RUNNING, 60)
    shutil.copy(fs.p("synthetic.h5"), fs.p("swap_ext.h5"))
    shutil.copy(fs.p("synthetic.h5"), fs.p("swap_fifo.h5"))
    fs.init("plain")
    shutil.copy(fs.p("init_plain.h5"), fs.p("swap_init.h5"))
    a = s.submit(c.d, small_spec(file="swap_ext.h5"), name="ext")
    b = s.submit(c.d, small_spec(file="swap_fifo.h5"), name="fifo")
    w = s.submit(c.d, small_spec(init_from="swap_init.h5", lr=0.0), name="init")
    # Replaced while queued.
    with h5py.File(fs.p("swap_ext.h5"), "w") as f:
        f.create_dataset("features", (2048, 784), np.uint8,
                         external=[(fs.secret_path, 0, 2048 * 784)])
        fs.labels(f)
    os.unlink(fs.p("swap_fifo.h5"))
    os.mkfifo(fs.p("swap_fifo.h5"))
    with h5py.File(fs.p("swap_init.h5"), "w") as f:
        f["params/layer1/b"] = np.zeros(10, np.float32)
        f["params/layer1/w"] = h5py.ExternalLink(fs.real, "/params/layer1/w")
    c.d.stub.CancelJob(pb.CancelJobRequest(id=blocker.id), timeout=30)
    t0 = time.monotonic()
    want = {a.id: ["features 'features' uses external storage", fs.secret_path, INSIDE],
            b.id: ["swap_fifo.h5", "FIFO", "not a regular file"],
            w.id: ["'/params/layer1/w' leads through '/params/layer1/w', an external link",
                   fs.real, INSIDE]}
    for job_id, words in want.items():
        j = s.wait_state(c.d, job_id, (S.SUCCEEDED, S.FAILED, S.CANCELLED), 60)
        check(j.state == S.FAILED, "the swapped job %s ended %s", j.name, S.Name(j.state))
        check(j.error_code in (3, 9), "the swapped job %s: error_code %d (%r)", j.name,
              j.error_code, j.error)
        for word in words:
            check(word.lower() in j.error.lower(), "the swapped job %s: error %r does not "
                  "mention %r", j.name, j.error, word)
        check(not c.ckpt_files(job_id), "the swapped job %s wrote checkpoints", j.name)
        check(not j.devices, "the failed job %s holds devices", j.name)
    print("  (the swapped jobs failed within %.1f s)" % (time.monotonic() - t0))
    c.alive("datasets and warm starts swapped after SubmitJob")
    c.state_free_of_outside()
    c.known_intact()


@suite.case
def resume_refuses_escape(s):
    c = Ctx(s, cpu_devices=1)
    fs = c.files
    sp = small_spec(epochs=100000, checkpoint={"every_steps": 4, "keep_last": 5})
    j = s.submit(c.d, sp, name="resumed")
    cdir = c.ckpt_dir(j.id)

    def names():
        return sorted(n for n in (os.listdir(cdir) if os.path.isdir(cdir) else [])
                      if n.startswith("ckpt-") and n.endswith(".h5"))
    th.wait_for(lambda: len(names()) >= 3, 120, "three checkpoints", 0.01)
    c.d.kill()
    ns = names()
    newest, previous = ns[-1], ns[-2]
    # The newest: its w moved into a file outside the roots, same bytes.
    path = os.path.join(cdir, newest)
    with h5py.File(path, "r+") as f:
        w = f["params/layer1/w"][()]
        wpath = os.path.join(fs.outside, "w.bin")
        with open(wpath, "wb") as out:
            out.write(w.astype("<f4").tobytes())
        del f["params/layer1/w"]
        f.create_dataset("params/layer1/w", w.shape, "<f4", external=[(wpath, 0, w.nbytes)])
    c.d.start()
    jj = s.wait_state(c.d, j.id, (S.RUNNING, S.FAILED, S.SUCCEEDED), 60)
    check(jj.state == S.RUNNING, "the job is %s after the restart: %s", S.Name(jj.state),
          jj.error)
    jj = th.wait_for(lambda: (lambda g: g if g.resumes else None)(s.get(c.d, j.id)), 60,
                     "the job's resume record")
    r = jj.resumes[-1]
    check(r.checkpoint == previous, "resumed from %r; expected %s (the newest uses external "
          "storage)", r.checkpoint, previous)
    for word in (newest, "'/params/layer1/w' uses external storage", wpath, INSIDE):
        check(word in r.note, "the resume note %r does not mention %r", r.note, word)
    # Set aside as it was (the job may since have written a new file of
    # that step under the old name).
    check(os.path.isfile(path + ".refused"), "the refused checkpoint was not set aside: %s",
          sorted(os.listdir(cdir)))
    with h5py.File(path + ".refused", "r") as f:
        check(f["params/layer1/w"].external, "%s.refused is not the rewritten file", newest)
    c.d.stub.CancelJob(pb.CancelJobRequest(id=j.id), timeout=30)
    s.wait_state(c.d, j.id, S.CANCELLED, 60)
    c.alive("a checkpoint with external storage at resume")
    c.known_intact()


@suite.case
def bad_paths(s):
    c = Ctx(s)
    fs = c.files
    os.mkfifo(fs.p("fifo.h5"))
    os.makedirs(fs.p("fifo-mnist"))
    for n in th.MNIST_FILES:
        os.mkfifo(os.path.join(fs.p("fifo-mnist"), n))
    os.mkfifo(fs.p("fifo-init.h5"))
    os.symlink("loop-b.h5", fs.p("loop-a.h5"))
    os.symlink("loop-a.h5", fs.p("loop-b.h5"))
    long_name = "n" * 300 + ".h5"
    idx = th.reference_spec(s.source_dir)
    idx["dataset"]["idx"]["dir"] = "fifo-mnist"
    cases = [
        (small_spec(file="fifo.h5"), ["dataset path 'fifo.h5'", fs.p("fifo.h5"),
                                      "is a FIFO (named pipe), not a regular file"]),
        (idx, ["dataset path 'fifo-mnist/train-images-idx3-ubyte.gz'", "FIFO"]),
        (small_spec(init_from="fifo-init.h5"), ["checkpoint.init_from", "'fifo-init.h5'",
                                                "FIFO"]),
        (small_spec(file="loop-a.h5"), ["dataset path 'loop-a.h5'", "a loop of symbolic links"]),
        (small_spec(file="sub/../loop-b.h5"), ["'sub/../loop-b.h5'", "loop of symbolic links"]),
        (small_spec(file=long_name), [long_name[:40], "longer than the file system allows"]),
        (small_spec(init_from=long_name), ["checkpoint.init_from",
                                           "longer than the file system allows"]),
    ]
    os.makedirs(fs.p("sub"))
    for sp, words in cases:
        t0 = time.monotonic()
        c.submit_refused(sp, C.INVALID_ARGUMENT, *words)
        took = time.monotonic() - t0
        check(took < 10, "refusing %s took %.1f s", words[0], took)
        c.alive("a bad path (%s)" % words[0])
    c.known_intact()


@suite.case
def declared_sizes(s):
    c = Ctx(s)
    fs = c.files
    with h5py.File(fs.p("huge_chunked.h5"), "w") as f:
        f.create_dataset("features", (2 ** 31, 1), np.float32, chunks=(2 ** 20, 1))
        f.create_dataset("labels", (2 ** 31,), np.uint8, chunks=(2 ** 20,))
    with h5py.File(fs.p("huge_fill.h5"), "w") as f:
        f.create_dataset("features", (2 ** 31, 1), np.uint8, fillvalue=3)
        f.create_dataset("labels", (2 ** 31,), np.uint8, fillvalue=1)
    for name in ("huge_chunked.h5", "huge_fill.h5"):
        check(os.path.getsize(fs.p(name)) < 1 << 20, "%s is %d bytes", name,
              os.path.getsize(fs.p(name)))
    rss0 = c.d.rss_kb()
    for name, words in (("huge_chunked.h5", ["features 'features' declares 8589934592 bytes "
                                             "but stores none"]),
                        ("huge_fill.h5", ["features 'features' declares 2147483648 bytes but "
                                          "stores none", "fill value"])):
        sp = small_spec(file=name)
        sp["model"]["input_shape"] = [1]
        c.refused_or_failed(sp, fs.p(name), *words)
        c.alive("a dataset declaring more than its file holds (%s)" % name)
    grew = c.d.rss_kb() - rss0
    check(grew < 512 * 1024, "the daemon grew by %d MiB over the refused datasets", grew >> 10)
    c.known_intact()


if __name__ == "__main__":
    sys.exit(suite.run())
