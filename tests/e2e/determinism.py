#!/usr/bin/python3
"""Reproducibility of `traind run` from the seed alone, on real MNIST.

usage: determinism.py TRAIND JOBFILE

Runs the job (cut to one epoch over the first 6000 training examples)
through the binary: with seed 0 on two compute threads twice, on one and on
three threads once each, and with seed 1 on two threads. The per-step loss
sequences (printed with 9 significant digits, which round-trips float32),
the epoch's figures and the final checkpoint's every array (parameters,
optimizer state, step counters) read with h5py and compared byte for byte
must be identical for seed 0 at every thread count (the CPU backend's work
is split by shape, never by thread count) and differ for the other seed. MNIST comes from $TRAIND_DATA_DIR (fail under CI=true when
missing, skip otherwise).
"""
import glob
import json
import os
import re
import subprocess
import sys
import tempfile

import h5py


def run(traind, job_text, seed, tmp, threads=2):
    job = os.path.join(tmp, "job-%d-t%d.yaml" % (seed, threads))
    with open(job, "w") as f:
        f.write(re.sub(r"(?m)^(\s*seed:\s*)\d+", r"\g<1>%d" % seed, job_text))
    metrics = job + ".jsonl"
    ckpt = tempfile.mkdtemp(dir=tmp)
    proc = subprocess.run([traind, "run", job, "--threads", str(threads), "--metrics", metrics,
                           "--checkpoint-dir", ckpt],
                          capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        raise SystemExit("FAIL: traind exited %d" % proc.returncode)
    with open(metrics) as f:
        points = [json.loads(line) for line in f]
    epochs = [(p["train_loss"], p["test_loss"], p["test_accuracy"])
              for p in points if "test_accuracy" in p]
    return [p["loss"] for p in points if "loss" in p], epochs, arrays(ckpt)


def arrays(ckpt_dir):
    """Every dataset of the newest checkpoint in ckpt_dir: name -> (dtype,
    shape, raw bytes)."""
    files = sorted(glob.glob(os.path.join(ckpt_dir, "*.h5")), key=os.path.getmtime)
    if not files:
        raise SystemExit("FAIL: no checkpoint written in %s" % ckpt_dir)
    out = {}

    def visit(name, obj):
        if isinstance(obj, h5py.Dataset):
            v = obj[()]
            out[name] = (str(obj.dtype), obj.shape,
                         v.tobytes() if hasattr(v, "tobytes") else bytes(str(v), "utf-8"))

    with h5py.File(files[-1], "r") as f:
        f.visititems(visit)
    return out


def params_differ(x, y):
    """Names of the arrays in which two checkpoints differ, bit for bit."""
    names = sorted(set(x) | set(y))
    return [n for n in names if x.get(n) != y.get(n)]


def main():
    traind, job = sys.argv[1], sys.argv[2]
    root = os.environ.get("TRAIND_DATA_DIR", "")
    if not root or not os.path.isdir(os.path.join(root, "mnist")):
        msg = "MNIST not found: set TRAIND_DATA_DIR to a directory holding mnist/"
        print(("FAIL: " if os.environ.get("CI") == "true" else "SKIP: ") + msg)
        return 1 if os.environ.get("CI") == "true" else 77
    with open(job) as f:
        text = f.read()
    text = re.sub(r"(?m)^(\s*epochs:\s*)\d+", r"\g<1>1", text)
    text = text.replace("dataset:\n", "dataset:\n  train_limit: 6000\n", 1)
    assert "train_limit: 6000" in text
    with tempfile.TemporaryDirectory() as tmp:
        a, ea, pa = run(traind, text, 0, tmp)
        b, eb, pb = run(traind, text, 0, tmp)
        c, _, pc = run(traind, text, 1, tmp)
        by_threads = {t: run(traind, text, 0, tmp, threads=t) for t in (1, 3)}
    ok = True
    batch = int(re.search(r"(?m)^\s*batch_size:\s*(\d+)", text).group(1))
    if len(a) != 6000 // batch:
        print("FAIL: %d step points, expected %d" % (len(a), 6000 // batch))
        ok = False
    if a != b or ea != eb:
        first = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None)
        print("FAIL: same seed, different losses (first at step %s)" % first)
        ok = False
    if params_differ(pa, pb):
        print("FAIL: same seed, different checkpoint arrays: %s" % params_differ(pa, pb))
        ok = False
    for t, (lt, et, pt) in sorted(by_threads.items()):
        if lt != a or et != ea:
            first = next((i for i, (x, y) in enumerate(zip(a, lt)) if x != y), None)
            print("FAIL: %d threads give other losses than 2 threads (first at step %s: %r vs %r)"
                  % (t, first, lt[first] if first is not None else None,
                     a[first] if first is not None else None))
            ok = False
        if params_differ(pa, pt):
            print("FAIL: %d threads give other checkpoint arrays than 2 threads: %s"
                  % (t, params_differ(pa, pt)))
            ok = False
    weights = [n for n in pa if n.endswith("/w") or n.endswith("/kernel") or "/w" in n]
    if not weights:
        print("FAIL: no weight arrays found in the checkpoint: %s" % sorted(pa))
        ok = False
    elif all(pa[n] == pc.get(n) for n in weights):
        print("FAIL: seed 1 ends with the same weights as seed 0")
        ok = False
    same = sum(x == y for x, y in zip(a, c))
    if same > len(a) // 10:
        print("FAIL: seed 1 repeats %d of %d losses of seed 0" % (same, len(a)))
        ok = False
    if ok:
        print("%d steps: seed 0 identical twice and on 1, 2 and 3 threads, losses and all %d "
              "checkpoint arrays bit for bit; seed 1 differs in %d losses"
              % (len(a), len(pa), len(a) - same))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
