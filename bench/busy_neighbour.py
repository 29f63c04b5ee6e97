#!/usr/bin/python3
"""Epoch time of one job under two traind binaries, on a quiet machine and
next to one busy process, alternating in rounds.

usage: busy_neighbour.py JOB NAME=TRAIND [NAME=TRAIND ...] [--epochs E]
                         [--threads T] [--rounds R] [--limit N]

For each load (quiet, then one `while :; do :; done` shell beside it) and
each of R rounds (default 3), runs `TRAIND run JOB --threads T` for every
binary in turn, with the job's epochs set to E (default 3) and its
training set cut to N examples when --limit is given. Each run's epochs but
the first (the compile and first-touch one) count. Prints one JSON object:
the median epoch seconds per binary and load, each binary's slowdown next
to the busy process, and every epoch's time. MNIST comes from
$TRAIND_DATA_DIR.
"""
import argparse
import datetime
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("job")
    ap.add_argument("binaries", nargs="+", help="NAME=PATH of a traind")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--limit", type=int, default=0)
    a = ap.parse_args()
    bins = dict(b.split("=", 1) for b in a.binaries)
    text = open(a.job).read()
    text = re.sub(r"(?m)^(\s*epochs:\s*)\d+", r"\g<1>%d" % a.epochs, text)
    if a.limit:
        text = text.replace("dataset:\n", "dataset:\n  train_limit: %d\n" % a.limit, 1)
    tmp = tempfile.mkdtemp(prefix="busy-")
    job = os.path.join(tmp, "job.yaml")
    with open(job, "w") as f:
        f.write(text)
    env = dict(os.environ)
    times = {}
    for busy in (0, 1):
        hog = subprocess.Popen(["sh", "-c", "while :; do :; done"]) if busy else None
        try:
            for _ in range(a.rounds):
                for name, b in bins.items():
                    m = os.path.join(tmp, "m.jsonl")
                    subprocess.run([b, "run", job, "--threads", str(a.threads), "--metrics", m],
                                   capture_output=True, check=True, env=env)
                    with open(m) as f:
                        ep = [json.loads(l)["epoch_sec"] for l in f if "epoch_sec" in l]
                    times.setdefault((name, busy), []).extend(ep[1:])
        finally:
            if hog:
                hog.kill()
    out = {"bench": "busy_neighbour", "job": a.job, "threads": a.threads,
           "epochs": a.epochs, "limit": a.limit, "rounds": a.rounds,
           "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
           "median_epoch_sec": {}, "slowdown": {}, "epoch_sec": {}}
    for (name, busy), v in times.items():
        key = "%s %s" % (name, "busy" if busy else "quiet")
        out["median_epoch_sec"][key] = round(statistics.median(v), 4)
        out["epoch_sec"][key] = [round(x, 4) for x in v]
    for name in bins:
        q, b = out["median_epoch_sec"]["%s quiet" % name], out["median_epoch_sec"]["%s busy" % name]
        out["slowdown"][name] = round(b / q, 3)
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
