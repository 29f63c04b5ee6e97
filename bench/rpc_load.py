#!/usr/bin/python3
"""Training throughput of the reference program under RPC load.

usage: rpc_load.py --traind BIN [--source-dir DIR] [--data-dir DIR]
                   [--clients N] [--rates R,...] [--phase-epochs K]
                   [--cycles C] [--threads N] [--out FILE|DIR]

Starts traind (one CPU device, a temporary unix socket and state directory)
and trains the reference program (config/jobs/mnist_mlp.yaml, its epochs
raised to cover the run) once. While it trains, --clients client threads
(grpcio, stubs generated from proto/, one channel each) are switched on and
off at epoch boundaries: K epochs without load, K epochs with load, C times
for each rate in --rates, then K epochs without load. Loaded, the threads
call GetJob, GetMetrics (the newest 100 points, as a dashboard would) and
ListJobs in turn; rate 0 is a closed loop (each thread calls again as soon
as it has its answer: the most load the clients can make), rate R is R
calls a second in all.

Loaded and unloaded epochs alternate within one job because the throughput
of a small virtual machine can change by itself for tens of seconds (two
vCPUs that sometimes share a core): separate baseline runs would measure
that as well. Throughput is EpochPoint.examples_per_sec from GetMetrics; an
epoch counts only when it ran entirely inside one phase (the epoch in which
the load was switched is left out). For each rate: the median examples/s of
its loaded epochs and of the unloaded epochs of the same cycles, the drop in
percent, the drop from the median of per-cycle ratios (each loaded phase
against the unloaded phases before and after it), the RPC count, errors,
calls/s, p50/p99/max latency per method, and the CPU seconds the daemon and
the clients used while loaded. Prints, and writes to --out, one JSON
object; --out DIR names the file rpc_load-DATE-tTHREADS.json, with the
compute threads the daemon used. MNIST comes from $TRAIND_DATA_DIR (or
--data-dir).
"""
import argparse
import datetime
import json
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "e2e"))
import traind_harness as th  # noqa: E402

import grpc  # noqa: E402

METHODS = ("GetJob", "GetMetrics", "ListJobs")


def ts(t):
    return t.seconds + t.nanos / 1e9


def lscpu():
    out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model = re.search(r"^Model name:\s*(.+)$", out, re.M)
    return {"cpu": model.group(1).strip() if model else platform.processor(),
            "cores": os.cpu_count(), "kernel": platform.release()}


def proc_cpu_sec(pid):
    """utime + stime of a process, in seconds."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def self_cpu_sec():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def percentile(sorted_vals, q):
    if not sorted_vals:
        return None
    k = (len(sorted_vals) - 1) * q
    lo = int(k)
    hi = min(lo + 1, len(sorted_vals) - 1)
    return sorted_vals[lo] + (sorted_vals[hi] - sorted_vals[lo]) * (k - lo)


def median(v):
    return statistics.median(v) if v else None


class Clients:
    """Client threads that call the Trainer service while a phase is on."""

    def __init__(self, d, stubs, job_id, n):
        self.d, self.stubs, self.job_id, self.n = d, stubs, job_id, n
        self.cv = threading.Condition()
        self.phase = None    # the rate of the phase that is on, or None
        self.gen = 0         # phase number, to tag the calls
        self.quit = False
        self.records = {}    # gen -> {method: [latency]}, {method: errors}
        self.samples = {}
        self.channels = [d.channel() for _ in range(n)]
        self.threads = [threading.Thread(target=self._run, args=(i,)) for i in range(n)]
        for t in self.threads:
            t.start()

    def set_phase(self, rate):
        with self.cv:
            self.gen += 1
            self.phase = rate
            if rate is not None:
                self.records[self.gen] = ({m: [] for m in METHODS}, {m: 0 for m in METHODS})
            self.cv.notify_all()
        return self.gen

    def close(self):
        with self.cv:
            self.quit = True
            self.cv.notify_all()
        for t in self.threads:
            t.join()
        for ch in self.channels:
            ch.close()

    def _run(self, i):
        pb = self.stubs.pb
        stub = self.stubs.grpc.TrainerStub(self.channels[i])
        last_step, k = 0, i
        while True:
            with self.cv:
                while self.phase is None and not self.quit:
                    self.cv.wait()
                if self.quit:
                    return
                gen, rate = self.gen, self.phase
            gap = self.n / rate if rate else 0.0
            due = time.monotonic() + gap * i / self.n
            lat, errs = {m: [] for m in METHODS}, {m: 0 for m in METHODS}
            while True:
                with self.cv:
                    if self.gen != gen or self.quit:
                        break
                if gap:
                    due += gap
                    pause = due - time.monotonic()
                    if pause > 0:
                        with self.cv:
                            if self.cv.wait_for(lambda: self.gen != gen or self.quit, pause):
                                break
                method = METHODS[k % 3]
                k += 1
                t0 = time.perf_counter()
                try:
                    if method == "GetJob":
                        j = stub.GetJob(pb.GetJobRequest(id=self.job_id), timeout=10)
                        last_step = j.progress.step
                    elif method == "GetMetrics":
                        stub.GetMetrics(pb.GetMetricsRequest(
                            id=self.job_id, since_step=max(0, last_step - 100),
                            max_points=100), timeout=10)
                    else:
                        stub.ListJobs(pb.ListJobsRequest(), timeout=10)
                except grpc.RpcError as e:
                    errs[method] += 1
                    with self.cv:
                        self.samples.setdefault(e.code().name, e.details())
                lat[method].append(time.perf_counter() - t0)
            with self.cv:
                rec_lat, rec_err = self.records[gen]
                for m in METHODS:
                    rec_lat[m] += lat[m]
                    rec_err[m] += errs[m]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--traind", required=True)
    ap.add_argument("--source-dir", default=os.path.join(HERE, ".."))
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--rates", default="0,1000,100",
                    help="comma-separated total calls/s, one set of phases each (0: closed loop)")
    ap.add_argument("--phase-epochs", type=int, default=3)
    ap.add_argument("--cycles", type=int, default=4)
    ap.add_argument("--threads", type=int, default=0,
                    help="traind --threads (0: the daemon's default)")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    source = os.path.abspath(a.source_dir)
    data = a.data_dir or th.mnist_root()
    if not data:
        sys.exit("rpc_load: MNIST not found: set TRAIND_DATA_DIR or --data-dir")
    rates = [float(r) for r in a.rates.split(",")]
    K = a.phase_epochs
    # (rate or None, rate index) per phase; None is a phase without load.
    phases = []
    for ri, r in enumerate(rates):
        for _ in range(a.cycles):
            phases += [(None, ri), (r, ri)]
    phases.append((None, len(rates) - 1))
    epochs = len(phases) * K + 1

    stubs = th.Stubs(source)
    pb = stubs.pb
    work = tempfile.mkdtemp(prefix="traind-bench-")
    d = th.Daemon(os.path.abspath(a.traind), work, data_dirs=[data], cpu_devices=1,
                  threads=a.threads or None, stubs=stubs).start()
    try:
        # The compute threads the daemon gives the job (one device).
        threads = d.stub.ListDevices(pb.ListDevicesRequest(), timeout=10).devices[0].threads
        spec = th.reference_spec(source, epochs=epochs)
        job = d.stub.SubmitJob(pb.SubmitJobRequest(spec=th.spec_msg(stubs, spec)),
                               timeout=30).job
        clients = Clients(d, stubs, job.id, a.clients)
        # Phase switches, as wall-clock times: [(time, phase index)].
        switches = [(time.time(), 0)]
        cpu = []     # (phase index, daemon cpu s, client cpu s, seconds)
        marks = (proc_cpu_sec(d.pid()), self_cpu_sec(), time.monotonic())
        pi, done_epochs, final = 0, 0, None
        print("rpc_load: %d epochs, %d phases of %d epochs, rates %s, %d clients"
              % (epochs, len(phases), K, rates, a.clients), file=sys.stderr)
        for m in d.stub.WatchMetrics(pb.WatchMetricsRequest(id=job.id), timeout=3600):
            final = m.job
            done_epochs += len(m.epochs)
            want = min(done_epochs // K, len(phases))
            while pi < want:
                now = (proc_cpu_sec(d.pid()), self_cpu_sec(), time.monotonic())
                cpu.append((pi, now[0] - marks[0], now[1] - marks[1], now[2] - marks[2]))
                marks = now
                pi += 1
                rate = phases[pi][0] if pi < len(phases) else None
                clients.set_phase(rate)
                switches.append((time.time(), pi))
                print("rpc_load: epoch %d: phase %d/%d (%s)" % (
                    done_epochs, pi + 1, len(phases),
                    "no load" if rate is None else "closed loop" if rate == 0
                    else "%g calls/s" % rate), file=sys.stderr)
        clients.set_phase(None)
        clients.close()
        if final is None or final.state != pb.SUCCEEDED:
            sys.exit("rpc_load: the job did not succeed: %s" % (final and final.error))
        points, since = [], 0
        while True:
            r = d.stub.GetMetrics(pb.GetMetricsRequest(id=job.id, since_step=since,
                                                       max_points=10000), timeout=30)
            points += list(r.epochs)
            since = r.last_step
            if not r.more:
                break
    finally:
        d.stop()

    # Each epoch's phase: the one it ran inside of entirely, or None.
    bounds = [t for t, _ in switches[1:]]

    def phase_of(start, end):
        p = 0
        for b in bounds:
            if b <= start:
                p += 1
        if any(start < b < end for b in bounds):
            return None
        return p if p < len(phases) else None

    rows = []
    for e in points:
        end = ts(e.time)
        p = phase_of(end - e.epoch_sec, end)
        rows.append({"epoch": e.epoch, "phase": p,
                     "load": None if p is None else
                     ("none" if phases[p][0] is None else phases[p][0]),
                     "epoch_sec": round(e.epoch_sec, 4),
                     "examples_per_sec": round(e.examples_per_sec, 1)})
    by_phase = {}
    for r in rows:
        if r["phase"] is not None:
            by_phase.setdefault(r["phase"], []).append(r["examples_per_sec"])

    results = []
    for ri, rate in enumerate(rates):
        on = [p for p, (r, i) in enumerate(phases) if i == ri and r is not None]
        # The unloaded phases around this rate's loaded ones.
        off = sorted({q for p in on for q in (p - 1, p + 1)
                      if 0 <= q < len(phases) and phases[q][0] is None})
        loaded = [v for p in on for v in by_phase.get(p, [])]
        unloaded = [v for p in off for v in by_phase.get(p, [])]
        ratios = []
        for p in on:
            around = [median(by_phase[q]) for q in (p - 1, p + 1) if by_phase.get(q)]
            if by_phase.get(p) and around:
                ratios.append(median(by_phase[p]) / statistics.mean(around))
        lat = {m: [] for m in METHODS}
        errs = {m: 0 for m in METHODS}
        for p in on:
            gen = p  # set_phase numbers the phases it switches to
            if gen in clients.records:
                rl, re_ = clients.records[gen]
                for m in METHODS:
                    lat[m] += rl[m]
                    errs[m] += re_[m]
        secs = sum(c[3] for c in cpu if c[0] in on)
        count = sum(len(v) for v in lat.values())
        base, load_v = median(unloaded), median(loaded)
        results.append({
            "rate": "closed loop" if rate == 0 else rate,
            "loaded_examples_per_sec": round(load_v, 1) if load_v else None,
            "baseline_examples_per_sec": round(base, 1) if base else None,
            "drop_percent": round(100 * (base - load_v) / base, 2) if base and load_v else None,
            "drop_percent_paired": round(100 * (1 - median(ratios)), 2) if ratios else None,
            "loaded_epochs": len(loaded), "baseline_epochs": len(unloaded),
            "loaded_seconds": round(secs, 2),
            "rpc_count": count, "rpc_errors": sum(errs.values()),
            "rpc_per_sec": round(count / secs, 1) if secs else None,
            "daemon_cpu_sec": round(sum(c[1] for c in cpu if c[0] in on), 2),
            "client_cpu_sec": round(sum(c[2] for c in cpu if c[0] in on), 2),
            "per_method": {m: {
                "count": len(lat[m]), "errors": errs[m],
                "p50_ms": round(percentile(sorted(lat[m]), 0.50) * 1e3, 3) if lat[m] else None,
                "p99_ms": round(percentile(sorted(lat[m]), 0.99) * 1e3, 3) if lat[m] else None,
                "max_ms": round(max(lat[m]) * 1e3, 3) if lat[m] else None}
                for m in METHODS},
        })
    first = results[0]
    result = {
        "bench": "rpc_load",
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": lscpu(),
        "command": " ".join(["bench/rpc_load.py"] + sys.argv[1:]),
        "job": {"file": "config/jobs/mnist_mlp.yaml", "epochs": epochs, "batch_size": 128,
                "cpu_devices": 1, "threads": threads, "id": job.id,
                "test_accuracy": round(final.metrics.test_accuracy, 4)},
        "clients": a.clients,
        "phase_epochs": K, "cycles": a.cycles,
        "baseline_examples_per_sec": first["baseline_examples_per_sec"],
        "loaded_examples_per_sec": first["loaded_examples_per_sec"],
        "drop_percent": first["drop_percent"],
        "rpc_count": sum(r["rpc_count"] for r in results),
        "rpc_errors": sum(r["rpc_errors"] for r in results),
        "error_samples": clients.samples,
        "by_rate": results,
        "epochs": rows,
    }
    text = json.dumps(result, indent=2)
    print(text)
    if a.out:
        out = a.out
        if os.path.isdir(out):
            out = os.path.join(out, "rpc_load-%s-t%d.json" % (result["date"][:10], threads))
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        with open(out, "w") as f:
            f.write(text + "\n")
        print("rpc_load: wrote %s" % out, file=sys.stderr)
    return 0 if result["rpc_errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
