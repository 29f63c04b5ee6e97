"""Shared pieces of the daemon tests (tests/e2e/daemon_*.py) and of
bench/rpc_load.py: a real traind on a temporary unix socket and/or
127.0.0.1:0, Python gRPC stubs generated from proto/, job specs, and a tiny
test runner.

Every daemon started here is stopped with SIGTERM at the end of its test;
the test fails when the daemon does not exit 0 within the drain timeout or
when its stderr holds a sanitizer report. Tests use Debian's interpreter
(/usr/bin/python3) with python3-grpcio, python3-grpc-tools, python3-protobuf,
python3-yaml and, for the synthetic dataset, python3-h5py and python3-numpy.
"""
import argparse
import atexit
import importlib
import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback

import grpc
from google.protobuf import json_format

SANITIZER_MARKS = ("AddressSanitizer", "LeakSanitizer", "UndefinedBehaviorSanitizer",
                   "runtime error:", "ThreadSanitizer", "MemorySanitizer")
MNIST_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
               "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
SKIP = 77
# How long a stopped daemon may take to drain and exit: its default
# stop_timeout_sec (60 s; a daemon past it exits 1, which fails the test
# anyway), so that a slow shutdown checkpoint on a loaded machine is not
# taken for a hang.
STOP_TIMEOUT = 60.0
# How long a daemon may take to start serving (a sanitizer build is slow).
START_TIMEOUT = 60.0


class TestFailure(Exception):
    """A check that did not hold; the message says what was expected."""


def check(cond, msg, *args):
    if not cond:
        raise TestFailure(msg % args if args else msg)


def require(packages, *modules):
    """Imports the modules (dotted names) and returns them, or ends the
    script: skipped (exit 77), or failed under CI=true. packages names
    what to install."""
    try:
        return [importlib.import_module(m) for m in modules]
    except ImportError as e:
        print("SKIP: %s (install %s)" % (e, packages))
        print("0 passed, 0 failed")
        sys.exit(1 if os.environ.get("CI") == "true" else SKIP)


def wait_for(pred, timeout, what, interval=0.02):
    """Polls pred() until it returns a true value, which is returned."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise TestFailure("timed out after %.1f s waiting for %s" % (timeout, what))
        time.sleep(interval)


# ------------------------------------------------------------ arguments


def parse_args(description):
    """The common command line: TRAIND TRAINCTL SOURCE_DIR [CASE...]."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("traind")
    ap.add_argument("trainctl")
    ap.add_argument("source_dir")
    ap.add_argument("cases", nargs="*", help="run only these cases")
    args = ap.parse_args()
    args.traind = os.path.abspath(args.traind)
    args.trainctl = os.path.abspath(args.trainctl)
    args.source_dir = os.path.abspath(args.source_dir)
    return args


def mnist_root():
    """The first $TRAIND_DATA_DIR entry holding the four MNIST files, or None."""
    for d in os.environ.get("TRAIND_DATA_DIR", "").split(":"):
        if d and all(os.path.isfile(os.path.join(d, "mnist", f)) for f in MNIST_FILES):
            return os.path.realpath(d)
    return None


def read_idx(path):
    """An IDX file (gzipped) as numpy uint8: images (n, rows, cols), labels
    (n,)."""
    import gzip
    import numpy as np
    with gzip.open(path, "rb") as f:
        data = f.read()
    magic, n = int.from_bytes(data[0:4], "big"), int.from_bytes(data[4:8], "big")
    if magic == 2051:
        rows, cols = int.from_bytes(data[8:12], "big"), int.from_bytes(data[12:16], "big")
        return np.frombuffer(data, np.uint8, n * rows * cols, 16).reshape(n, rows, cols)
    check(magic == 2049, "%s: IDX magic %d", path, magic)
    return np.frombuffer(data, np.uint8, n, 8)


def require_mnist():
    """The MNIST data root; without one the script exits 77 (skipped), or
    fails when CI=true."""
    root = mnist_root()
    if root:
        return root
    msg = "MNIST not found: set TRAIND_DATA_DIR to a directory holding mnist/"
    if os.environ.get("CI") == "true":
        print("FAIL: " + msg + " (CI=true: a missing dataset is a failure)")
        print("0 passed, 1 failed")
        sys.exit(1)
    print("SKIP: " + msg)
    print("0 passed, 0 failed")
    sys.exit(SKIP)


# ---------------------------------------------------------------- stubs


class Stubs:
    """Python modules generated from proto/ with grpc_tools.protoc.

    traind/v1/*.proto keep their layout (package traind.v1). The health proto
    is compiled from its own directory, so that its module is `health_pb2`
    and does not shadow the installed `grpc` package; it is loaded under the
    name `traind_test_health_pb2`."""

    def __init__(self, source_dir):
        proto = os.path.join(source_dir, "proto")
        self.dir = tempfile.mkdtemp(prefix="traind-stubs-")
        atexit.register(shutil.rmtree, self.dir, True)
        import grpc_tools
        wkt = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
        self._protoc(["-I" + proto, "-I" + wkt,
                      os.path.join(proto, "traind/v1/job.proto"),
                      os.path.join(proto, "traind/v1/trainer.proto")])
        hdir = os.path.join(proto, "grpc/health/v1")
        hout = os.path.join(self.dir, "health")
        os.makedirs(hout)
        self._protoc(["-I" + hdir, os.path.join(hdir, "health.proto")], out=hout)
        sys.path.insert(0, self.dir)
        from traind.v1 import job_pb2, trainer_pb2, trainer_pb2_grpc
        self.job = job_pb2
        self.pb = trainer_pb2
        self.grpc = trainer_pb2_grpc
        self.health = self._load("traind_test_health_pb2", os.path.join(hout, "health_pb2.py"))
        # health_pb2_grpc imports `health_pb2`: give it the module loaded above.
        sys.modules["health_pb2"] = self.health
        self.health_grpc = self._load("traind_test_health_pb2_grpc",
                                      os.path.join(hout, "health_pb2_grpc.py"))

    def _protoc(self, args, out=None):
        out = out or self.dir
        cmd = [sys.executable, "-m", "grpc_tools.protoc", "--python_out=" + out,
               "--grpc_python_out=" + out] + args
        p = subprocess.run(cmd, capture_output=True, text=True)
        if p.returncode != 0:
            raise RuntimeError("protoc failed: %s\n%s" % (" ".join(cmd), p.stderr))

    @staticmethod
    def _load(name, path):
        spec = importlib.util.spec_from_file_location(name, path)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
        return mod

    def state_name(self, v):
        return self.pb.JobState.Name(v)


# ----------------------------------------------------------------- jobs


def reference_spec(source_dir, epochs=1, train_limit=None, test_limit=None, **extra):
    """config/jobs/mnist_mlp.yaml as a dict (proto3 JSON mapping), with
    training.epochs and the dataset limits replaced."""
    import yaml
    with open(os.path.join(source_dir, "config/jobs/mnist_mlp.yaml")) as f:
        spec = yaml.safe_load(f)
    spec["training"]["epochs"] = epochs
    if train_limit:
        spec["dataset"]["train_limit"] = train_limit
    if test_limit:
        spec["dataset"]["test_limit"] = test_limit
    for k, v in extra.items():
        spec[k] = v
    return spec


def gpt_spec(devices=1, steps=20, block=16, features=32, heads=2, data=None):
    """One block of a GPT, small enough to train in a second. Its attention
    has no biases: the keys' bias has a gradient of exactly zero (softmax
    ignores a constant added to every score), so its computed gradient is
    rounding noise that Adam scales up to full-size steps, different for
    every summation order."""
    return {
        "name": "small-gpt",
        "model": {
            "input_shape": [block],
            "layers": [
                {"name": "tok", "embed": {"num_embeddings": 128, "features": features}},
                {"name": "pos", "position_embedding": {}},
                {"name": "b", "repeat": {"count": 1, "layers": [
                    {"name": "ln1", "layer_norm": {}},
                    {"name": "attn", "causal_self_attention": {"num_heads": heads,
                                                                "use_bias": False}},
                    {"name": "r1", "add": {}, "inputs": ["b", "attn"]},
                    {"name": "ln2", "layer_norm": {}},
                    {"name": "fc", "dense": {"features": 4 * features}},
                    {"gelu": {}},
                    {"name": "proj", "dense": {"features": features}},
                    {"name": "r2", "add": {}, "inputs": ["r1", "proj"]},
                ]}},
                {"name": "ln_f", "layer_norm": {}},
                {"name": "head", "dense": {"features": 128}},
            ],
            "loss": "SOFTMAX_CROSS_ENTROPY",
        },
        "optimizer": {"chain": [{"clip_by_global_norm": {"max_norm": 1.0}},
                                {"adamw": {"learning_rate": {"constant": 1e-3}}}]},
        "dataset": {"text": {"file": data or "shakespeare/shakespeare.txt"},
                    "test_limit": 64},
        "training": {"epochs": 1, "batch_size": 8, "seed": 3, "max_steps": steps},
        "devices": {"count": devices},
    }


def synthetic_spec(source_dir, epochs=1, file="synthetic.h5", test_file=None, **extra):
    """The reference program's model and optimizer on a synthetic HDF5
    dataset (see make_synthetic): runs without MNIST."""
    spec = reference_spec(source_dir, epochs)
    spec["name"] = "synthetic-mlp"
    spec["dataset"] = {"hdf5": {"train_file": file}}
    if test_file:
        spec["dataset"]["hdf5"]["test_file"] = test_file
    for k, v in extra.items():
        spec[k] = v
    return spec


def make_synthetic(root, n=2048, name="synthetic.h5", seed=0):
    """Writes ROOT/NAME: n random (784,) uint8 examples with labels 0..9."""
    import h5py
    import numpy as np
    rng = np.random.default_rng(seed)
    path = os.path.join(root, name)
    with h5py.File(path, "w") as f:
        f["features"] = rng.integers(0, 256, size=(n, 784), dtype=np.uint8)
        f["labels"] = rng.integers(0, 10, size=(n,), dtype=np.int64)
    return path


def spec_msg(stubs, spec):
    return json_format.ParseDict(spec, stubs.job.JobSpec())


def write_job(path, spec):
    """A job file (JSON when the name ends in .json, else YAML)."""
    with open(path, "w") as f:
        if path.endswith(".json"):
            json.dump(spec, f, indent=2)
        else:
            import yaml
            yaml.safe_dump(spec, f, sort_keys=False)
    return path


# --------------------------------------------------------------- daemon


class Daemon:
    """A real traind process.

    listen: "unix", "tcp" or "both" (a socket in the work directory and
    127.0.0.1:0); client: "tcp" to make the stubs use TCP when both are
    open. extra: more flags. The state directory is kept across
    restart() so a test can stop and start the daemon on the same records."""

    def __init__(self, binary, workdir, data_dirs=(), listen="unix", cpu_devices=1,
                 threads=None, extra=(), config=None, env=None, state_dir=None, stubs=None,
                 client=None):
        self.binary = binary
        self.client = client
        self.stubs = stubs
        self.workdir = workdir
        self.state_dir = state_dir or os.path.join(workdir, "state")
        self.data_dirs = list(data_dirs)
        self.listen = listen
        self.cpu_devices = cpu_devices
        self.threads = threads
        self.extra = list(extra)
        self.config = config
        self.env = env
        self.proc = None
        self.runs = 0
        self.unix_addr = None
        self.tcp_addr = None
        self._channels = []
        self._stub = None
        self._health = None

    # The target the stubs use: the unix socket when there is one, unless
    # client="tcp" was asked for.
    @property
    def addr(self):
        if self.client == "tcp":
            return self.tcp_addr
        return self.unix_addr or self.tcp_addr

    def argv(self):
        a = [self.binary, "serve", "--state-dir", self.state_dir]
        if self.listen in ("unix", "both"):
            # Short path: sun_path holds 108 bytes.
            sock = os.path.join(self.workdir, "t.sock")
            a += ["--listen", "unix:" + sock]
        if self.listen in ("tcp", "both"):
            a += ["--listen", "127.0.0.1:0"]
        for d in self.data_dirs:
            a += ["--data-dir", d]
        if self.cpu_devices:
            a += ["--cpu-devices", str(self.cpu_devices)]
        if self.threads:
            a += ["--threads", str(self.threads)]
        if self.config:
            a += ["--config", self.config]
        return a + self.extra

    def start(self, timeout=START_TIMEOUT):
        assert self.proc is None, "daemon already running"
        self.runs += 1
        self.log_path = os.path.join(self.workdir, "traind-%d.log" % self.runs)
        env = dict(os.environ)
        env.pop("TRAIND_ADDR", None)
        if self.env:
            env.update(self.env)
        self._log = open(self.log_path, "w+b")
        self.started_at = time.monotonic()
        self.proc = subprocess.Popen(self.argv(), stdin=subprocess.DEVNULL,
                                     stdout=self._log, stderr=subprocess.STDOUT, env=env)
        _live.append(self)
        self.unix_addr = self.tcp_addr = None
        want = 2 if self.listen == "both" else 1
        deadline = time.monotonic() + timeout
        addrs = []
        while True:
            text = self.log()
            addrs = re.findall(r'msg="listening" addr=(\S+)', text)
            if len(addrs) >= want and 'msg="traind ready"' in text:
                break
            if self.proc.poll() is not None:
                raise TestFailure("traind exited %d while starting:\n%s"
                                  % (self.proc.returncode, tail(text)))
            if time.monotonic() > deadline:
                raise TestFailure("traind did not log 'listening' within %.0f s:\n%s"
                                  % (timeout, tail(text)))
            time.sleep(0.02)
        for a in addrs:
            if a.startswith("unix:"):
                self.unix_addr = a
            else:
                check(re.fullmatch(r"127\.0\.0\.1:\d+", a) and not a.endswith(":0"),
                      "the logged TCP address %r has no bound port", a)
                self.tcp_addr = a
        self._stub = self._health = None
        if self.stubs:
            h = self.stubs.health_grpc.HealthStub(self.channel())
            wait_for(lambda: self._serving(h, self.stubs), timeout, "health SERVING")
        return self

    @staticmethod
    def _serving(h, stubs):
        try:
            r = h.Check(stubs.health.HealthCheckRequest(service=""), timeout=2)
            return r.status == stubs.health.HealthCheckResponse.SERVING
        except grpc.RpcError:
            return False

    def channel(self, addr=None, **options):
        # Loopback calls never go through a proxy from the environment.
        options.setdefault("grpc.enable_http_proxy", 0)
        opts = list(options.items())
        ch = grpc.insecure_channel(addr or self.addr, options=opts)
        self._channels.append(ch)
        return ch

    @property
    def stub(self):
        if self._stub is None:
            self._stub = self.stubs.grpc.TrainerStub(self.channel())
        return self._stub

    @property
    def health(self):
        if self._health is None:
            self._health = self.stubs.health_grpc.HealthStub(self.channel())
        return self._health

    def log(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def pid(self):
        return self.proc.pid

    def rss_kb(self):
        with open("/proc/%d/status" % self.proc.pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0

    def signal(self, sig):
        self.proc.send_signal(sig)

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def _close_channels(self):
        for ch in self._channels:
            ch.close()
        self._channels = []
        self._stub = self._health = None

    def stop(self, timeout=STOP_TIMEOUT, close_channels=True):
        """SIGTERM; the daemon must exit 0 within `timeout` with no sanitizer
        report. Returns the seconds it took. With close_channels=False the
        clients' channels stay open, so that open calls see the daemon go."""
        if self.proc is None:
            return 0.0
        if close_channels:
            self._close_channels()
        t0 = time.monotonic()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            self._finish()
            raise TestFailure("traind did not exit within %.0f s of SIGTERM:\n%s"
                              % (timeout, tail(self.log())))
        took = time.monotonic() - t0
        self._close_channels()
        self._finish()
        text = self.log()
        check(rc == 0, "traind exited %d after SIGTERM (expected 0):\n%s", rc, tail(text))
        self.check_clean(text)
        return took

    def check_clean(self, text=None):
        text = self.log() if text is None else text
        for mark in SANITIZER_MARKS:
            if mark in text:
                i = text.index(mark)
                raise TestFailure("sanitizer report in traind's stderr:\n"
                                  + text[max(0, i - 2000):i + 6000])

    def kill(self):
        """SIGKILL (no checks): for tests of a crash, and for cleanup."""
        if self.proc is None:
            return
        self._close_channels()
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self._finish()

    def _finish(self):
        if self in _live:
            _live.remove(self)
        self.proc = None
        self._log.close()

    def restart(self, **kw):
        self.stop(**kw)
        return self.start()

    def records(self):
        """The job records in the state directory, as traind.v1.Job by id."""
        out = {}
        jobs = os.path.join(self.state_dir, "jobs")
        for name in os.listdir(jobs):
            if name.endswith(".pb") and not name.startswith("."):
                j = self.stubs.pb.Job()
                with open(os.path.join(jobs, name), "rb") as f:
                    j.ParseFromString(f.read())
                out[j.id] = j
        return out


_live = []


def tail(text, n=40):
    return "\n".join(text.rstrip().splitlines()[-n:])


# ----------------------------------------------------------- trainctl


def trainctl(binary, *args, addr=None, env=None, timeout=120):
    """Runs trainctl; returns the CompletedProcess (text)."""
    e = {k: v for k, v in os.environ.items()
         if k != "TRAIND_ADDR" and not k.lower().endswith("_proxy")}
    if env:
        e.update(env)
    argv = [binary] + ([] if addr is None else ["--addr", addr]) + list(args)
    return subprocess.run(argv, capture_output=True, text=True, env=e, timeout=timeout,
                          stdin=subprocess.DEVNULL)


# --------------------------------------------------------------- runner


class Suite:
    """Runs named cases, each a function of the Suite. A case passes when
    it returns; it fails on TestFailure, grpc.RpcError or any other
    exception, and when a daemon it started does not stop cleanly.

    Prints one line per case and ends with "N passed, N failed"."""

    def __init__(self, args, needs_mnist=False):
        self.args = args
        self.source_dir = args.source_dir
        self.traind = args.traind
        self.trainctl_bin = args.trainctl
        self.mnist = require_mnist() if needs_mnist else mnist_root()
        self.stubs = Stubs(args.source_dir)
        self.pb = self.stubs.pb
        self.cases = []
        self.passed = self.failed = 0
        self.tmp = None

    def case(self, fn=None, long=False):
        """Registers a case. A long case runs only when named on the command
        line."""
        def add(f):
            f.long = long
            self.cases.append(f)
            return f
        return add(fn) if fn else add

    def daemon(self, data_dirs=None, **kw):
        """A started daemon in the case's temporary directory."""
        if data_dirs is None:
            data_dirs = [self.mnist] if self.mnist else [self.tmp]
        d = Daemon(self.traind, self.tmp, data_dirs=data_dirs, stubs=self.stubs, **kw)
        return d.start()

    def workdir(self, name):
        p = os.path.join(self.tmp, name)
        os.makedirs(p, exist_ok=True)
        return p

    def trainctl(self, *args, **kw):
        """Runs trainctl; fails on a sanitizer report in its stderr."""
        p = trainctl(self.trainctl_bin, *args, **kw)
        for mark in SANITIZER_MARKS:
            check(mark not in p.stderr, "sanitizer report from trainctl %s:\n%s",
                  " ".join(args), p.stderr[-6000:])
        return p

    # Common RPC helpers.

    def submit(self, d, spec, name="", timeout=30):
        r = d.stub.SubmitJob(self.pb.SubmitJobRequest(spec=spec_msg(self.stubs, spec),
                                                      name=name), timeout=timeout)
        check(r.job.id, "SubmitJob returned no job id")
        return r.job

    def get(self, d, job_id):
        return d.stub.GetJob(self.pb.GetJobRequest(id=job_id), timeout=10)

    def state(self, d, job_id):
        return self.get(d, job_id).state

    def wait_state(self, d, job_id, states, timeout=120, what=None):
        if isinstance(states, int):
            states = (states,)
        names = "/".join(self.stubs.state_name(s) for s in states)

        def pred():
            j = self.get(d, job_id)
            return j if j.state in states else None
        return wait_for(pred, timeout, what or "job %s to be %s" % (job_id, names), 0.01)

    # Observing a job that runs. A test on a loaded machine can be slower
    # than the job it watches, so each helper below either reads one
    # consistent reply or fails with a message that says the job ended too
    # soon, never with a wrong value read after the job moved on.

    def jobs(self, d):
        """Every job as one ListJobs reply: {id: Job}. One reply is built on
        the daemon's loop in one go, so states, devices and progress in it
        are one consistent snapshot."""
        r = d.stub.ListJobs(self.pb.ListJobsRequest(page_size=1000), timeout=10)
        check(not r.next_page_token, "more jobs than one ListJobs page: not one snapshot")
        return {j.id: j for j in r.jobs}

    def wait_steps(self, d, job_id, steps, timeout=120, what=None):
        """Waits for the job to have taken more than `steps` steps while
        RUNNING; returns that GetJob reply (state and progress together).
        Fails at once when the job ends first."""
        S = self.pb.JobState
        what = what or "job %s to pass step %d" % (job_id, steps)

        def pred():
            j = self.get(d, job_id)
            if j.state not in (S.QUEUED, S.RUNNING):
                raise TestFailure("job %s ended %s at step %d before the test saw %s; make it "
                                  "longer (%s)" % (job_id, S.Name(j.state), j.progress.step,
                                                   what, j.error))
            return j if j.state == S.RUNNING and j.progress.step > steps else None
        return wait_for(pred, timeout, what, 0.01)

    def wait_running(self, d, job_id, timeout=120):
        """Waits for the job to be RUNNING (returns that GetJob reply);
        fails at once when it ends before the test saw it run."""
        return self.wait_steps(d, job_id, -1, timeout, "job %s RUNNING" % job_id)

    def while_running(self, d, job_id, read, what):
        """read() bracketed by two GetJob replies that both say RUNNING, so
        that its result was read while the job ran (a job never goes back
        to RUNNING within one daemon run). Fails when the job is no longer
        RUNNING, naming `what` the test wanted to observe."""
        S = self.pb.JobState
        before = self.get(d, job_id)
        v = read()
        after = self.get(d, job_id)
        if before.state != S.RUNNING or after.state != S.RUNNING:
            raise TestFailure("job %s was %s / %s (step %d) around the reading of %s; it must "
                              "be RUNNING throughout: make it longer"
                              % (job_id, S.Name(before.state), S.Name(after.state),
                                 after.progress.step, what))
        return v

    def run(self):
        only = set(self.args.cases)
        unknown = only - {c.__name__ for c in self.cases}
        if unknown:
            print("unknown case(s): " + ", ".join(sorted(unknown)))
            print("0 passed, 1 failed")
            return 1
        for fn in self.cases:
            if (only and fn.__name__ not in only) or (not only and fn.long):
                continue
            self.tmp = tempfile.mkdtemp(prefix="td-", dir="/tmp")
            t0 = time.monotonic()
            err = None
            try:
                fn(self)
            except TestFailure as e:
                err = str(e)
            except grpc.RpcError as e:
                err = "unexpected RPC error %s: %s\n%s" % (
                    e.code().name if hasattr(e, "code") else "?",
                    e.details() if hasattr(e, "details") else e, traceback.format_exc())
            except Exception:
                err = traceback.format_exc()
            # Daemons the case left running are stopped and checked here.
            for d in list(_live):
                try:
                    d.stop()
                except TestFailure as e:
                    err = (err + "\n" if err else "") + str(e)
                except Exception:
                    d.kill()
                    err = (err + "\n" if err else "") + traceback.format_exc()
            dt = time.monotonic() - t0
            if err:
                self.failed += 1
                print("FAIL %s (%.1f s): %s" % (fn.__name__, dt, err), flush=True)
                print("  (files kept in %s)" % self.tmp, flush=True)
            else:
                self.passed += 1
                print("ok   %s (%.1f s)" % (fn.__name__, dt), flush=True)
                shutil.rmtree(self.tmp, ignore_errors=True)
        print("%d passed, %d failed" % (self.passed, self.failed))
        return 1 if self.failed or not self.passed else 0


def rpc_error(fn, *args, what=None, **kw):
    """Calls fn and returns the grpc.RpcError it raises; fails when it
    succeeds. `what` names the call in that failure."""
    try:
        r = fn(*args, **kw)
    except grpc.RpcError as e:
        return e
    raise TestFailure("%s succeeded (%s) where an error was expected"
                      % (what or "the call", " ".join(str(r).split())[:200]))


def expect_status(e, code, *words):
    """The error has status `code` and a message holding every word
    (case-insensitive)."""
    check(e.code() == code, "status %s (%r), expected %s", e.code().name, e.details(),
          code.name)
    details = e.details() or ""
    for w in words:
        check(w.lower() in details.lower(), "message %r does not mention %r", details, w)


def sanitized(binary):
    """Whether the binary was built with AddressSanitizer."""
    with open(binary, "rb") as f:
        return b"__asan_init" in f.read()


def free_port():
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port
