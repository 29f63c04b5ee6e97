#!/usr/bin/python3
"""Runs every bad job file through `traind run` and checks how it is refused.

usage: bad_jobs.py TRAIND CASES_DIR [CASE...]

Each case is a job file in CASES_DIR (*.yaml, *.yml, *.json). Its expectations
are comment lines at the top of the file, or, for JSON (which has no comments),
in a sidecar file with the same stem and the suffix .expect:

  # expect-exit: N        the exit status traind must return (required)
  # expect: TEXT          a substring of the one-line error (repeatable; all
                          must appear). {job}, {root} and {outside} stand for
                          the job path passed to traind, the data root passed
                          with --data-dir, and the directory that a fixture's
                          symlinks point into.
  # data-root: FIXTURE    the data root to run with (default: the MNIST root
                          when there is one, else an empty scratch root)
  # run-as: missing|empty|padded N
                          run traind on a path that does not exist, on an
                          empty file, or on this file padded with comment
                          lines to N bytes, instead of on the file itself
  # max-seconds: S        the longest the case may take (default 10)

Fixtures: mnist ($TRAIND_DATA_DIR), scratch (a temporary root holding a text
file not-hdf5.h5, a FIFO fifo.h5 and a symlink loop loop-a.h5 <-> loop-b.h5),
symlink-file and symlink-dir (roots whose mnist files or
directory are symlinks to a directory outside the root), and truncated-gz,
truncated-raw and wrong-magic (copies of MNIST with one file damaged). Fixtures
built from MNIST, and cases that use them, need $TRAIND_DATA_DIR/mnist: without
it they fail when CI=true and are skipped otherwise.

A case passes when traind exits with the expected status, prints nothing on
stdout, writes its error as the last line of stderr in the form "traind: ...",
containing every expected substring, writes no other line to stderr unless the
job failed while training (exit 1, where the job's banner comes first), shows
no sanitizer report, and finishes within the time limit. Prints one line per
case and ends with "N passed, N failed". Exit status: 0 when all ran cases
pass, 1 when any fails, 77 when every case was skipped.
"""
import gzip
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

MNIST_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
               "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
SANITIZER_MARKS = ("AddressSanitizer", "LeakSanitizer", "UndefinedBehaviorSanitizer",
                   "runtime error:", "ThreadSanitizer")
DEFAULT_MAX_SECONDS = 10.0
# A case that hangs is killed after this long (it fails either way).
HARD_TIMEOUT = 120


class Skip(Exception):
    pass


class CaseError(Exception):
    pass


def mnist_root():
    """The first TRAIND_DATA_DIR entry holding the four MNIST files, or None."""
    for d in os.environ.get("TRAIND_DATA_DIR", "").split(":"):
        if d and all(os.path.isfile(os.path.join(d, "mnist", f)) for f in MNIST_FILES):
            return os.path.realpath(d)
    return None


class Fixtures:
    """Data roots, built on first use inside one temporary directory."""

    def __init__(self, tmp):
        self.tmp = tmp
        self.mnist = mnist_root()
        self.built = {}

    def need_mnist(self, what):
        if self.mnist is None:
            raise Skip("%s needs MNIST: set TRAIND_DATA_DIR to a directory holding "
                       "mnist/ with the four IDX files" % what)

    def new_root(self, name):
        root = os.path.join(self.tmp, "roots", name)
        os.makedirs(root)
        return root

    def copy_mnist(self, root, skip=()):
        os.makedirs(os.path.join(root, "mnist"))
        for f in MNIST_FILES:
            if f not in skip:
                shutil.copyfile(os.path.join(self.mnist, "mnist", f),
                                os.path.join(root, "mnist", f))

    def outside_dir(self):
        """A directory outside every root, holding files with MNIST's names."""
        out = os.path.join(self.tmp, "outside")
        if not os.path.isdir(out):
            os.makedirs(out)
            for f in MNIST_FILES:
                with open(os.path.join(out, f), "wb") as fh:
                    fh.write(b"not inside the data root\n")
        return out

    def get(self, name):
        """Returns (root, outside) for a fixture name."""
        if name not in self.built:
            self.built[name] = self.build(name)
        return self.built[name]

    def build(self, name):
        if name == "mnist":
            self.need_mnist("data-root mnist")
            return self.mnist, ""
        if name == "scratch":
            root = self.new_root(name)
            with open(os.path.join(root, "not-hdf5.h5"), "w") as fh:
                fh.write("this is a text file, not HDF5\n")
            os.mkfifo(os.path.join(root, "fifo.h5"))
            os.symlink("loop-b.h5", os.path.join(root, "loop-a.h5"))
            os.symlink("loop-a.h5", os.path.join(root, "loop-b.h5"))
            return root, ""
        if name == "symlink-file":
            out = self.outside_dir()
            root = self.new_root(name)
            os.makedirs(os.path.join(root, "mnist"))
            for f in MNIST_FILES:
                os.symlink(os.path.join(out, f), os.path.join(root, "mnist", f))
            return root, out
        if name == "symlink-dir":
            out = self.outside_dir()
            root = self.new_root(name)
            os.symlink(out, os.path.join(root, "mnist"))
            return root, out
        if name == "truncated-gz":
            self.need_mnist("data-root truncated-gz")
            root = self.new_root(name)
            f = "train-images-idx3-ubyte.gz"
            self.copy_mnist(root, skip=(f,))
            with open(os.path.join(self.mnist, "mnist", f), "rb") as fh:
                data = fh.read()
            with open(os.path.join(root, "mnist", f), "wb") as fh:
                fh.write(data[:len(data) // 2])
            return root, ""
        if name == "truncated-raw":
            self.need_mnist("data-root truncated-raw")
            root = self.new_root(name)
            f = "t10k-labels-idx1-ubyte.gz"
            self.copy_mnist(root, skip=(f,))
            with gzip.open(os.path.join(self.mnist, "mnist", f), "rb") as fh:
                data = fh.read()
            # The 8-byte header promises 10000 labels; keep 5000.
            with open(os.path.join(root, "mnist", f[:-3]), "wb") as fh:
                fh.write(data[:8 + 5000])
            return root, ""
        if name == "wrong-magic":
            self.need_mnist("data-root wrong-magic")
            root = self.new_root(name)
            f = "train-images-idx3-ubyte.gz"
            self.copy_mnist(root, skip=(f,))
            with gzip.open(os.path.join(self.mnist, "mnist", f), "rb") as fh:
                data = bytearray(fh.read())
            data[2] = 0x0D  # IDX type code: float32 instead of unsigned byte
            with open(os.path.join(root, "mnist", f[:-3]), "wb") as fh:
                fh.write(data)
            return root, ""
        raise CaseError("unknown data-root fixture '%s'" % name)


def read_directives(path):
    """The expectations of a case, from its leading comments or its sidecar."""
    stem, ext = os.path.splitext(path)
    source = stem + ".expect" if ext == ".json" else path
    if not os.path.isfile(source):
        raise CaseError("no expectations: write them in %s" % os.path.basename(source))
    d = {"expect": [], "exit": None, "data-root": None, "run-as": None,
         "max-seconds": DEFAULT_MAX_SECONDS}
    with open(source, encoding="utf-8") as fh:
        for line in fh:
            if not line.startswith("#"):
                if source == path:
                    break  # expectations live only in the leading comments
                if line.strip():
                    raise CaseError("%s: a line that is not a comment: %r" % (source, line))
                continue
            m = re.match(r"#\s*(expect-exit|expect|data-root|run-as|max-seconds):\s?(.*?)\s*$", line)
            if not m:
                continue
            key, val = m.group(1), m.group(2)
            if key == "expect":
                d["expect"].append(val)
            elif key == "expect-exit":
                d["exit"] = int(val)
            elif key == "max-seconds":
                d["max-seconds"] = float(val)
            else:
                d[key] = val
    if d["exit"] is None:
        raise CaseError("%s: no '# expect-exit: N' line" % os.path.basename(source))
    if not d["expect"]:
        raise CaseError("%s: no '# expect: TEXT' line" % os.path.basename(source))
    return d


def job_path_for(path, d, tmp):
    """The path traind is given: the case file, or one made from it."""
    run_as = d["run-as"]
    if not run_as:
        return path
    base = os.path.basename(path)
    if run_as == "missing":
        return os.path.join(tmp, "missing", base)  # the directory is never made
    if run_as == "empty":
        p = os.path.join(tmp, "empty-" + base)
        open(p, "wb").close()
        return p
    m = re.fullmatch(r"padded (\d+)", run_as)
    if m:
        size = int(m.group(1))
        p = os.path.join(tmp, "padded-" + base)
        with open(path, "rb") as fh:
            data = fh.read()
        filler = b"# padding to make this job file larger than traind accepts\n"
        data += filler * ((size - len(data)) // len(filler) + 1)
        with open(p, "wb") as fh:
            fh.write(data[:size])
        return p
    raise CaseError("unknown run-as '%s'" % run_as)


def run_case(traind, path, fixtures, tmp):
    """Returns (ok, detail)."""
    d = read_directives(path)
    root_name = d["data-root"] or ("mnist" if fixtures.mnist else "scratch")
    root, outside = fixtures.get(root_name)
    job = job_path_for(path, d, tmp)
    env = {k: v for k, v in os.environ.items() if k != "TRAIND_DATA_DIR"}
    cmd = [traind, "run", job, "--data-dir", root]
    t0 = time.monotonic()
    try:
        proc = subprocess.run(cmd, capture_output=True, cwd=tmp, env=env,
                              timeout=HARD_TIMEOUT)
    except subprocess.TimeoutExpired:
        return False, "did not finish in %d s: %s" % (HARD_TIMEOUT, " ".join(cmd))
    secs = time.monotonic() - t0
    out = proc.stdout.decode("utf-8", "replace")
    err = proc.stderr.decode("utf-8", "replace")
    lines = [ln for ln in err.splitlines() if ln.strip()]
    last = lines[-1] if lines else ""
    problems = []
    if any(mark in err for mark in SANITIZER_MARKS):
        problems.append("sanitizer report")
    if proc.returncode < 0:
        problems.append("killed by signal %d" % -proc.returncode)
    elif proc.returncode != d["exit"]:
        problems.append("exit %d, expected %d" % (proc.returncode, d["exit"]))
    if out.strip():
        problems.append("wrote to stdout")
    if not last.startswith("traind: "):
        problems.append("the last line of stderr is not a 'traind: ' error")
    if d["exit"] != 1 and len(lines) != 1:
        problems.append("stderr has %d lines, expected the one error line" % len(lines))
    subs = {"{job}": job, "{root}": root, "{outside}": outside}
    for e in d["expect"]:
        want = e
        for k, v in subs.items():
            want = want.replace(k, v)
        if want not in last:
            problems.append("error line lacks: %s" % want)
    if secs > d["max-seconds"]:
        problems.append("took %.1f s, limit %.0f s" % (secs, d["max-seconds"]))
    if problems:
        detail = "; ".join(problems) + "\n    command: %s\n" % " ".join(cmd)
        detail += "".join("    stderr: %s\n" % ln for ln in err.splitlines()[-40:])
        if out.strip():
            detail += "".join("    stdout: %s\n" % ln for ln in out.splitlines()[-5:])
        return False, detail.rstrip("\n")
    return True, "exit %d in %.2f s: %s" % (proc.returncode, secs, last[len("traind: "):])


def main():
    if len(sys.argv) < 3:
        print(__doc__.strip().splitlines()[2])
        return 2
    traind, cases_dir = os.path.abspath(sys.argv[1]), os.path.abspath(sys.argv[2])
    if not os.access(traind, os.X_OK):
        print("FAIL: %s is not an executable" % traind)
        return 1
    names = sys.argv[3:] or sorted(
        f for f in os.listdir(cases_dir) if f.endswith((".yaml", ".yml", ".json")))
    if not names:
        print("FAIL: no job files in %s" % cases_dir)
        return 1
    ci = os.environ.get("CI") == "true"
    passed = failed = skipped = 0
    with tempfile.TemporaryDirectory(prefix="traind-bad-jobs-") as tmp:
        tmp = os.path.realpath(tmp)
        fixtures = Fixtures(tmp)
        for i, name in enumerate(names):
            path = os.path.join(cases_dir, name)
            case_tmp = os.path.join(tmp, "case%d" % i)
            os.makedirs(case_tmp)
            try:
                ok, detail = run_case(traind, path, fixtures, case_tmp)
            except Skip as s:
                if ci:
                    ok, detail = False, "%s (CI=true, so this is a failure)" % s
                else:
                    skipped += 1
                    print("SKIP %s: %s" % (name, s))
                    continue
            except (CaseError, OSError) as e:
                ok, detail = False, "bad case: %s" % e
            if ok:
                passed += 1
                print("PASS %s: %s" % (name, detail))
            else:
                failed += 1
                print("FAIL %s: %s" % (name, detail))
            sys.stdout.flush()
    if skipped:
        print("%d skipped (no MNIST under $TRAIND_DATA_DIR)" % skipped)
    print("%d passed, %d failed" % (passed, failed))
    if failed:
        return 1
    return 77 if passed == 0 else 0


if __name__ == "__main__":
    sys.exit(main())
