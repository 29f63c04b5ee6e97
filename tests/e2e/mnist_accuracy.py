#!/usr/bin/python3
"""Trains a shipped job on real MNIST with `traind run` and checks the test
accuracy it reports.

usage: mnist_accuracy.py TRAIND JOBFILE MIN_ACCURACY [EPOCHS]

With EPOCHS the job is run with training.epochs replaced (a copy of the job
file in a temporary directory). MNIST is found under $TRAIND_DATA_DIR; when it
is missing the test fails under CI=true and is skipped (exit 77) otherwise.
"""
import json
import os
import re
import subprocess
import sys
import tempfile


def main():
    traind, job, min_acc = sys.argv[1], sys.argv[2], float(sys.argv[3])
    epochs = int(sys.argv[4]) if len(sys.argv) > 4 else None
    root = os.environ.get("TRAIND_DATA_DIR", "")
    if not root or not os.path.isdir(os.path.join(root, "mnist")):
        msg = "MNIST not found: set TRAIND_DATA_DIR to a directory holding mnist/"
        if os.environ.get("CI") == "true":
            print("FAIL: " + msg)
            return 1
        print("SKIP: " + msg)
        return 77
    with tempfile.TemporaryDirectory() as tmp:
        if epochs is not None:
            with open(job) as f:
                text = f.read()
            text, n = re.subn(r"(?m)^(\s*epochs:\s*)\d+", r"\g<1>%d" % epochs, text)
            assert n == 1, "could not find training.epochs in " + job
            job = os.path.join(tmp, os.path.basename(job))
            with open(job, "w") as f:
                f.write(text)
        proc = subprocess.run([traind, "run", job, "--json"], capture_output=True,
                              text=True, timeout=1800)
    sys.stderr.write(proc.stderr)
    if proc.returncode != 0:
        print("FAIL: traind exited %d" % proc.returncode)
        return 1
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    print(json.dumps(summary))
    want_epochs = epochs if epochs is not None else summary["epochs"]
    ok = True
    if summary["epochs"] != want_epochs:
        print("FAIL: ran %d epochs, expected %d" % (summary["epochs"], want_epochs))
        ok = False
    if summary["steps"] != want_epochs * (60000 // summary["batch_size"]):
        print("FAIL: ran %d steps" % summary["steps"])
        ok = False
    acc = summary.get("test_accuracy", 0.0)
    if acc < min_acc:
        print("FAIL: test accuracy %.4f < %.4f" % (acc, min_acc))
        ok = False
    else:
        print("test accuracy %.4f >= %.4f" % (acc, min_acc))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
