#!/usr/bin/python3
"""Training throughput of the reference program under RPC load, and the
latency of those RPCs over each transport.

usage: rpc_load.py --traind BIN [--source-dir DIR] [--data-dir DIR]
                   [--clients N] [--rates R,...] [--phase-epochs K]
                   [--cycles C] [--threads N] [--transports LIST]
                   [--own-connections] [--out FILE|DIR]

Starts traind (one CPU device, a temporary unix socket and state directory)
and trains the reference program (config/jobs/mnist_mlp.yaml, its epochs
raised to cover the run) once. While it trains, --clients client threads
(grpcio, stubs generated from proto/, one channel per transport each) are
switched on and off at epoch boundaries: for each rate in --rates, C
cycles of (K epochs without load, K epochs with load over the first
transport, K without load, K with load over the second transport, ...),
then K epochs without load. Loaded, the threads call GetJob, GetMetrics
(the newest 100 points, as a dashboard would) and ListJobs in turn; rate 0
is a closed loop (each thread calls again as soon as it has its answer:
the most load the clients can make), rate R is R calls a second in all.

--transports (default unix) is a comma-separated list of:
  unix  the daemon's unix socket, no credentials;
  tcp   a plaintext listener on 127.0.0.1, no credentials;
  mtls  a TLS listener on 127.0.0.1 that requires a client certificate;
        the client presents one and also sends a bearer token
        (authorization: Bearer ...) through grpc.access_token_call_credentials
        composed with grpc.ssl_channel_credentials, as a remote client would;
  mtls-md  the same listener, certificate and token, the token passed as
        call metadata instead of call credentials (grpcio runs call
        credentials as a Python plugin on each call; this transport shows
        what the client pays for that).
With tcp or mtls(-md) the script writes, in its temporary directory, a daemon
config (`listeners`, and for mtls `auth` with a token file and the client
certificate's principal, both role admin) and, for mtls(-md), a CA, a server
certificate (SAN DNS:localhost, IP:127.0.0.1) and a client certificate
made with the openssl CLI (ECDSA P-256). Every channel is made, and makes
one GetDaemonInfo call, before the job starts, so that connections are warm
and each transport's caller is checked (over mtls(-md) it must be the
token's principal). With one transport the phases are those of earlier
versions. grpcio lets plaintext channels with the same target and options
share one connection, while each TLS channel has its own; --own-connections
gives every channel its own connection, so that the transports are compared
on as many connections each. The JSON records the connections the daemon
held on each listener after the warm-up calls (from `ss`).

Loaded and unloaded epochs alternate within one job because the throughput
of a small virtual machine can change by itself for tens of seconds (two
vCPUs that sometimes share a core): separate baseline runs would measure
that as well; transports interleave within each cycle for the same reason.
Throughput is EpochPoint.examples_per_sec from GetMetrics; an epoch counts
only when it ran entirely inside one phase (the epoch in which the load was
switched is left out). For each rate and transport: the median examples/s
of its loaded epochs and of the unloaded epochs around them, the drop in
percent, the drop from the median of per-cycle ratios (each loaded phase
against the unloaded phases before and after it), the RPC count, errors,
calls/s, p50/p99/max latency per method, and the CPU seconds the daemon and
the clients used while loaded. With several transports, latency ratios
between them per rate and method: of the percentiles over all calls, and
the median of the per-cycle ratios. Prints, and writes to --out, one JSON
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
import secrets
import shutil
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
TRANSPORTS = ("unix", "tcp", "mtls", "mtls-md")
# The client certificate's common name and the token's principal (mtls).
CLIENT_CN = "bench-client"
TOKEN_NAME = "bench-token"


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


def ms(v):
    return round(v * 1e3, 3) if v is not None else None


# ------------------------------------------------------------ TLS setup


def openssl(work, *args):
    p = subprocess.run(["openssl"] + list(args), cwd=work, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit("rpc_load: openssl %s failed:\n%s" % (" ".join(args), p.stderr))
    return p.stdout


def make_certs(work):
    """A CA, a server certificate for localhost/127.0.0.1 and a client
    certificate with common name CLIENT_CN, all ECDSA P-256, in work/.
    Returns their paths by name."""
    key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    openssl(work, "req", "-x509", *key, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
            "-subj", "/CN=traind-bench-ca", "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    exts = {"server": "subjectAltName=DNS:localhost,IP:127.0.0.1\n"
                      "extendedKeyUsage=serverAuth\n",
            "client": "subjectAltName=DNS:%s\nextendedKeyUsage=clientAuth\n" % CLIENT_CN}
    for name, cn in (("server", "localhost"), ("client", CLIENT_CN)):
        with open(os.path.join(work, name + ".ext"), "w") as f:
            f.write("basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n"
                    + exts[name])
        openssl(work, "req", *key, "-keyout", name + ".key", "-out", name + ".csr",
                "-subj", "/CN=" + cn)
        openssl(work, "x509", "-req", "-in", name + ".csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                "-CAcreateserial", "-days", "2", "-out", name + ".crt",
                "-extfile", name + ".ext")
    paths = {n: os.path.join(work, n) for n in
             ("ca.crt", "server.crt", "server.key", "client.crt", "client.key")}
    for n in ("server.key", "client.key", "ca.key"):
        os.chmod(os.path.join(work, n), 0o600)
    return paths


def tls_session(addr, certs, work):
    """The protocol and cipher the daemon's TLS listener agrees with
    `openssl s_client` (presenting the client certificate), as its summary
    lines say."""
    p = subprocess.run(["openssl", "s_client", "-connect", addr, "-alpn", "h2",
                        "-CAfile", certs["ca.crt"], "-cert", certs["client.crt"],
                        "-key", certs["client.key"], "-verify_return_error", "-brief"],
                       cwd=work, input=b"", capture_output=True, timeout=30)
    # stdout holds the daemon's first HTTP/2 frames; the summary is on stderr.
    out = p.stderr.decode("utf-8", "replace")
    proto = re.search(r"^Protocol version:\s*(\S+)", out, re.M)
    cipher = re.search(r"^Ciphersuite:\s*(\S+)", out, re.M)
    return {"client": "openssl s_client", "protocol": proto and proto.group(1),
            "cipher": cipher and cipher.group(1)}


def write_config(work, transports, certs):
    """The daemon config for the tcp and mtls(-md) transports; returns
    (path, token) (token None without TLS)."""
    import yaml
    listeners, cfg, token = [], {}, None
    if "tcp" in transports:
        listeners.append({"address": "127.0.0.1:0"})
    if tls_wanted(transports):
        listeners.append({"address": "127.0.0.1:0",
                          "tls": {"cert_file": certs["server.crt"],
                                  "key_file": certs["server.key"],
                                  "client_ca_file": certs["ca.crt"],
                                  "client_cert": "require"}})
        token = secrets.token_hex(32)
        token_file = os.path.join(work, "tokens")
        fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write("# TOKEN,NAME,ROLE\n%s,%s,admin\n" % (token, TOKEN_NAME))
        cfg["auth"] = {"token_file": token_file,
                       "principals": [{"name": CLIENT_CN, "role": "admin"}]}
    cfg["listeners"] = listeners
    path = os.path.join(work, "traind.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(cfg, f, sort_keys=False)
    return path, token


def server_connections(addrs):
    """The connections the daemon holds open on each listener, as `ss`
    lists them: {"unix" | "tcp" | "tls": count}."""
    out = {}
    for t, addr in addrs.items():
        if t == "mtls-md":
            continue
        if t == "unix":
            text = subprocess.run(["ss", "-xnH"], capture_output=True, text=True).stdout
            path = addr[len("unix:"):]
            n = sum(1 for line in text.splitlines()
                    if len(line.split()) > 4 and line.split()[4] == path)
        else:
            port = addr.rsplit(":", 1)[1]
            text = subprocess.run(["ss", "-tnH", "state", "established",
                                   "( sport = :%s )" % port],
                                  capture_output=True, text=True).stdout
            n = len(text.strip().splitlines())
        out["tls" if t == "mtls" else t] = n
    return out


def tls_wanted(transports):
    return "mtls" in transports or "mtls-md" in transports


def listener_addrs(d):
    """The bound addresses by transport, from the daemon's 'listening' lines."""
    out = {}
    for addr, tls in re.findall(r'msg="listening" addr=(\S+) tls=(\S+)', d.log()):
        if addr.startswith("unix:"):
            out["unix"] = addr
        elif tls == "off":
            out["tcp"] = addr
        elif tls == "mutual":
            out["mtls"] = out["mtls-md"] = addr
    return out


def channel_factory(d, transport, addrs, certs, token, own_connection):
    """A function that makes one new channel over the transport; it returns
    (channel, metadata for each call or None). grpcio lets plaintext
    channels with the same target and arguments share one connection;
    own_connection gives each channel its own (TLS channels never share)."""
    opts = [("grpc.enable_http_proxy", 0)]
    if own_connection:
        opts.append(("grpc.use_local_subchannel_pool", 1))
    if transport in ("unix", "tcp"):
        return lambda: (d.channel(addrs[transport], **dict(opts)), None)
    with open(certs["ca.crt"], "rb") as f:
        ca = f.read()
    with open(certs["client.key"], "rb") as f:
        key = f.read()
    with open(certs["client.crt"], "rb") as f:
        crt = f.read()
    ssl = grpc.ssl_channel_credentials(root_certificates=ca, private_key=key,
                                       certificate_chain=crt)
    if transport == "mtls-md":
        md = (("authorization", "Bearer " + token),)
        return lambda: (grpc.secure_channel(addrs[transport], ssl, options=opts), md)
    creds = grpc.composite_channel_credentials(ssl, grpc.access_token_call_credentials(token))
    return lambda: (grpc.secure_channel(addrs[transport], creds, options=opts), None)


# -------------------------------------------------------------- clients


class Clients:
    """Client threads that call the Trainer service while a phase is on,
    each with one channel per transport."""

    def __init__(self, stubs, job_id, n, factories):
        self.stubs, self.job_id, self.n = stubs, job_id, n
        self.cv = threading.Condition()
        self.phase = None    # (rate, transport) of the phase that is on, or None
        self.gen = 0         # phase number, to tag the calls
        self.quit = False
        self.records = {}    # gen -> {method: [latency]}, {method: errors}
        self.samples = {}
        # [{transport: (channel, metadata)}] per thread.
        self.channels = [{t: f() for t, f in factories.items()} for _ in range(n)]
        self.threads = [threading.Thread(target=self._run, args=(i,)) for i in range(n)]

    def warm(self):
        """One GetDaemonInfo call on every channel; returns the caller and
        role each transport's daemon saw (the same on all of its channels)."""
        seen = {}
        for chans in self.channels:
            for t, (ch, md) in chans.items():
                r = self.stubs.grpc.TrainerStub(ch).GetDaemonInfo(
                    self.stubs.pb.GetDaemonInfoRequest(), timeout=30, metadata=md)
                seen.setdefault(t, set()).add((r.caller, r.caller_role))
        for t, s in seen.items():
            if len(s) != 1:
                sys.exit("rpc_load: %s channels saw different callers: %s" % (t, sorted(s)))
        return {t: {"caller": s.copy().pop()[0], "role": s.copy().pop()[1]}
                for t, s in seen.items()}

    def start(self):
        for t in self.threads:
            t.start()

    def set_phase(self, rate, transport=None):
        with self.cv:
            self.gen += 1
            self.phase = None if rate is None else (rate, transport)
            if rate is not None:
                self.records[self.gen] = ({m: [] for m in METHODS}, {m: 0 for m in METHODS})
            self.cv.notify_all()
        return self.gen

    def close(self):
        with self.cv:
            self.quit = True
            self.cv.notify_all()
        for t in self.threads:
            if t.ident is not None:
                t.join()
        for chans in self.channels:
            for ch, _ in chans.values():
                ch.close()

    def _run(self, i):
        pb = self.stubs.pb
        stubs = {t: (self.stubs.grpc.TrainerStub(ch), md)
                 for t, (ch, md) in self.channels[i].items()}
        last_step, k = 0, i
        while True:
            with self.cv:
                while self.phase is None and not self.quit:
                    self.cv.wait()
                if self.quit:
                    return
                gen, (rate, transport) = self.gen, self.phase
            stub, md = stubs[transport]
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
                        j = stub.GetJob(pb.GetJobRequest(id=self.job_id), timeout=10, metadata=md)
                        last_step = j.progress.step
                    elif method == "GetMetrics":
                        stub.GetMetrics(pb.GetMetricsRequest(
                            id=self.job_id, since_step=max(0, last_step - 100),
                            max_points=100), timeout=10, metadata=md)
                    else:
                        stub.ListJobs(pb.ListJobsRequest(), timeout=10, metadata=md)
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


def latency_stats(lat):
    s = sorted(lat)
    return {"p50": percentile(s, 0.50), "p99": percentile(s, 0.99),
            "max": s[-1] if s else None}


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
    ap.add_argument("--transports", default="unix",
                    help="comma-separated, loaded in turn within each cycle: unix, tcp "
                         "(plaintext 127.0.0.1), mtls (client certificate and bearer token "
                         "as call credentials), mtls-md (the token as call metadata)")
    ap.add_argument("--own-connections", action="store_true",
                    help="one connection per channel also over unix and tcp (grpcio's "
                         "default shares one among a transport's plaintext channels)")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    source = os.path.abspath(a.source_dir)
    data = a.data_dir or th.mnist_root()
    if not data:
        sys.exit("rpc_load: MNIST not found: set TRAIND_DATA_DIR or --data-dir")
    rates = [float(r) for r in a.rates.split(",")]
    transports = [t.strip() for t in a.transports.split(",") if t.strip()]
    bad = [t for t in transports if t not in TRANSPORTS]
    if bad or not transports or len(set(transports)) != len(transports):
        sys.exit("rpc_load: --transports %r: give each of %s at most once"
                 % (a.transports, ", ".join(TRANSPORTS)))
    K = a.phase_epochs
    # (rate or None, rate index, transport or None, cycle) per phase; a
    # rate of None is a phase without load.
    phases = []
    for ri, r in enumerate(rates):
        for c in range(a.cycles):
            for t in transports:
                phases += [(None, ri, None, c), (r, ri, t, c)]
    phases.append((None, len(rates) - 1, None, a.cycles - 1))
    epochs = len(phases) * K + 1

    stubs = th.Stubs(source)
    pb = stubs.pb
    work = tempfile.mkdtemp(prefix="traind-bench-")
    certs = token = config = None
    if tls_wanted(transports):
        certs = make_certs(work)
    if "tcp" in transports or certs:
        config, token = write_config(work, transports, certs)
    d = th.Daemon(os.path.abspath(a.traind), work, data_dirs=[data], cpu_devices=1,
                  threads=a.threads or None, stubs=stubs, config=config).start()
    clients, closed = None, False
    try:
        addrs = listener_addrs(d)
        missing = [t for t in transports if t not in addrs]
        if missing:
            sys.exit("rpc_load: the daemon logged no listener for %s:\n%s"
                     % (", ".join(missing), th.tail(d.log())))
        tls = tls_session(addrs["mtls"], certs, work) if certs else None
        factories = {t: channel_factory(d, t, addrs, certs, token, a.own_connections)
                     for t in transports}
        # The compute threads the daemon gives the job (one device).
        threads = d.stub.ListDevices(pb.ListDevicesRequest(), timeout=10).devices[0].threads
        clients = Clients(stubs, None, a.clients, factories)
        callers = clients.warm()
        conns = server_connections({t: addrs[t] for t in transports})
        for t in ("mtls", "mtls-md"):
            if t in callers and callers[t]["caller"] != TOKEN_NAME:
                sys.exit("rpc_load: over %s the daemon saw caller %r, not the token's principal "
                         "%r: the token was not used" % (t, callers[t]["caller"], TOKEN_NAME))
        spec = th.reference_spec(source, epochs=epochs)
        job = d.stub.SubmitJob(pb.SubmitJobRequest(spec=th.spec_msg(stubs, spec)),
                               timeout=30).job
        clients.job_id = job.id
        clients.start()
        # Phase switches, as wall-clock times: [(time, phase index)].
        switches = [(time.time(), 0)]
        cpu = []     # (phase index, daemon cpu s, client cpu s, seconds)
        marks = (proc_cpu_sec(d.pid()), self_cpu_sec(), time.monotonic())
        pi, done_epochs, final = 0, 0, None
        print("rpc_load: %d epochs, %d phases of %d epochs, rates %s, transports %s, %d clients"
              % (epochs, len(phases), K, rates, ",".join(transports), a.clients),
              file=sys.stderr)
        for m in d.stub.WatchMetrics(pb.WatchMetricsRequest(id=job.id), timeout=3600):
            final = m.job
            done_epochs += len(m.epochs)
            want = min(done_epochs // K, len(phases))
            while pi < want:
                now = (proc_cpu_sec(d.pid()), self_cpu_sec(), time.monotonic())
                cpu.append((pi, now[0] - marks[0], now[1] - marks[1], now[2] - marks[2]))
                marks = now
                pi += 1
                rate, _, transport, _ = phases[pi] if pi < len(phases) else (None,) * 4
                clients.set_phase(rate, transport)
                switches.append((time.time(), pi))
                print("rpc_load: epoch %d: phase %d/%d (%s)" % (
                    done_epochs, pi + 1, len(phases),
                    "no load" if rate is None else
                    ("closed loop" if rate == 0 else "%g calls/s" % rate) + " over " + transport),
                    file=sys.stderr)
        clients.set_phase(None)
        clients.close()
        closed = True
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
        if clients is not None and not closed:
            clients.set_phase(None)
            clients.close()
        d.stop()
    # The job's records, the daemon's log and the run's keys and token go;
    # a run that failed above keeps them for a look.
    shutil.rmtree(work, ignore_errors=True)

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
                     "transport": None if p is None else phases[p][2],
                     "epoch_sec": round(e.epoch_sec, 4),
                     "examples_per_sec": round(e.examples_per_sec, 1)})
    by_phase = {}
    for r in rows:
        if r["phase"] is not None:
            by_phase.setdefault(r["phase"], []).append(r["examples_per_sec"])
    cpu_of = {c[0]: c for c in cpu}

    def loaded_phases(ri, t):
        return [p for p, (r, i, tp, _) in enumerate(phases)
                if i == ri and tp == t and r is not None]

    def phase_latency(p):
        """{method: [latency]} and {method: errors} of phase p (set_phase
        numbers the phases it switches to, so the phase is the record's key)."""
        return clients.records.get(p, ({m: [] for m in METHODS}, {m: 0 for m in METHODS}))

    results = []
    for ri, rate in enumerate(rates):
        for t in transports:
            on = loaded_phases(ri, t)
            # The unloaded phases around this rate's and transport's loaded ones.
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
                rl, re_ = phase_latency(p)
                for m in METHODS:
                    lat[m] += rl[m]
                    errs[m] += re_[m]
            secs = sum(cpu_of[p][3] for p in on if p in cpu_of)
            dcpu = sum(cpu_of[p][1] for p in on if p in cpu_of)
            off_secs = sum(cpu_of[q][3] for q in off if q in cpu_of)
            off_dcpu = sum(cpu_of[q][1] for q in off if q in cpu_of)
            count = sum(len(v) for v in lat.values())
            base, load_v = median(unloaded), median(loaded)
            stats = {m: latency_stats(lat[m]) for m in METHODS}
            results.append({
                "rate": "closed loop" if rate == 0 else rate,
                "transport": t,
                "loaded_examples_per_sec": round(load_v, 1) if load_v else None,
                "baseline_examples_per_sec": round(base, 1) if base else None,
                "drop_percent": round(100 * (base - load_v) / base, 2)
                if base and load_v else None,
                "drop_percent_paired": round(100 * (1 - median(ratios)), 2) if ratios else None,
                "loaded_epochs": len(loaded), "baseline_epochs": len(unloaded),
                "loaded_seconds": round(secs, 2),
                "rpc_count": count, "rpc_errors": sum(errs.values()),
                "rpc_per_sec": round(count / secs, 1) if secs else None,
                "daemon_cpu_sec": round(dcpu, 2),
                # Cores the daemon used (training and serving), loaded and in
                # the unloaded phases around.
                "daemon_cores_loaded": round(dcpu / secs, 3) if secs else None,
                "daemon_cores_unloaded": round(off_dcpu / off_secs, 3) if off_secs else None,
                "client_cpu_sec": round(sum(cpu_of[p][2] for p in on if p in cpu_of), 2),
                "per_method": {m: {
                    "count": len(lat[m]), "errors": errs[m],
                    "p50_ms": ms(stats[m]["p50"]), "p99_ms": ms(stats[m]["p99"]),
                    "max_ms": ms(stats[m]["max"])} for m in METHODS},
                # The same for each loaded phase alone (one per cycle).
                "per_cycle": [{
                    "cycle": phases[p][3], "phase": p,
                    "examples_per_sec": median(by_phase.get(p, [])),
                    "per_method": {m: {
                        "count": len(phase_latency(p)[0][m]),
                        "p50_ms": ms(latency_stats(phase_latency(p)[0][m])["p50"]),
                        "p99_ms": ms(latency_stats(phase_latency(p)[0][m])["p99"])}
                        for m in METHODS}} for p in on],
            })

    # Latency ratios between transports (each later one in the list against
    # each earlier one): of the percentiles over all calls of the rate, and
    # the median over cycles of the ratio within one cycle.
    ratios_out = []
    for ri, rate in enumerate(rates):
        row = {x["transport"]: x for x in results if x["rate"] == ("closed loop" if rate == 0
                                                                    else rate)}
        for j, ta in enumerate(transports):
            for tb in transports[:j]:
                per = {}
                for m in METHODS:
                    entry = {}
                    for q in ("p50", "p99"):
                        va, vb = (row[ta]["per_method"][m][q + "_ms"],
                                  row[tb]["per_method"][m][q + "_ms"])
                        entry[q] = round(va / vb, 3) if va and vb else None
                        cyc = []
                        for pa, pb_ in zip(loaded_phases(ri, ta), loaded_phases(ri, tb)):
                            la = latency_stats(phase_latency(pa)[0][m])[q]
                            lb = latency_stats(phase_latency(pb_)[0][m])[q]
                            if la and lb:
                                cyc.append(la / lb)
                        entry[q + "_paired"] = round(median(cyc), 3) if cyc else None
                    per[m] = entry
                ratios_out.append({"rate": "closed loop" if rate == 0 else rate,
                                   "ratio": "%s/%s" % (ta, tb), "per_method": per})

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
        "transports": transports,
        "listeners": {t: addrs[t] for t in transports},
        "callers": callers,
        "own_connections": a.own_connections,
        # Open connections on each listener after the channels were warmed.
        "server_connections": conns,
        "baseline_examples_per_sec": first["baseline_examples_per_sec"],
        "loaded_examples_per_sec": first["loaded_examples_per_sec"],
        "drop_percent": first["drop_percent"],
        "rpc_count": sum(r["rpc_count"] for r in results),
        "rpc_errors": sum(r["rpc_errors"] for r in results),
        "error_samples": clients.samples,
        "by_rate": results,
    }
    if tls:
        result["tls"] = dict(tls, key="ECDSA P-256", client_cert="require",
                             token="authorization: Bearer (64 hex digits)")
    if ratios_out:
        result["latency_ratios"] = ratios_out
    result["epochs"] = rows
    text = json.dumps(result, indent=2)
    print(text)
    if len(transports) > 1:
        print_summary(results, ratios_out)
    if a.out:
        out = a.out
        if os.path.isdir(out):
            out = os.path.join(out, "rpc_load-%s-t%d.json" % (result["date"][:10], threads))
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        with open(out, "w") as f:
            f.write(text + "\n")
        print("rpc_load: wrote %s" % out, file=sys.stderr)
    return 0 if result["rpc_errors"] == 0 else 1


def print_summary(results, ratios):
    """A table of the figures on stderr (the JSON on stdout has them all)."""
    w = sys.stderr.write
    w("\nrate         transport  ex/s loaded/unloaded  drop(paired)  calls/s  "
      + "  ".join("%-10s p50/p99 ms" % m for m in METHODS) + "\n")
    for r in results:
        w("%-12s %-9s  %8s / %-8s  %6s (%s)  %7s  " % (
            r["rate"], r["transport"], r["loaded_examples_per_sec"],
            r["baseline_examples_per_sec"], r["drop_percent"], r["drop_percent_paired"],
            r["rpc_per_sec"])
          + "  ".join("%8s / %-8s   " % (r["per_method"][m]["p50_ms"], r["per_method"][m]["p99_ms"])
                      for m in METHODS) + "\n")
    for x in ratios:
        w("%-12s %-9s  " % (x["rate"], x["ratio"]) + "  ".join(
            "%s p50 %s (paired %s) p99 %s (paired %s)" % (
                m, x["per_method"][m]["p50"], x["per_method"][m]["p50_paired"],
                x["per_method"][m]["p99"], x["per_method"][m]["p99_paired"])
            for m in METHODS) + "\n")


if __name__ == "__main__":
    sys.exit(main())
