#!/usr/bin/python3
"""The daemon's transport security, credentials and roles, end to end over real sockets.

usage: daemon_security.py TRAIND TRAINCTL SOURCE_DIR [CASE...]

Python grpcio (stubs generated from proto/) is the client; every
certificate is made with the openssl CLI in a temporary directory (two CAs,
server certificates, client certificates by common name, an expired one)
with `openssl req -x509 -CA` and `openssl ca`.
Jobs are tiny (2 steps on a synthetic HDF5 dataset), so no MNIST is needed.

  mtls_every_rpc       mutual TLS: with a listed client certificate every
                       Trainer and Health RPC answers as it does on the
                       unix socket without security (same status, same
                       replies), SaveCheckpoint and CancelJob of a running
                       job too; GetDaemonInfo shows the certificate's CN
                       (or, without a CN, its first SAN) and its role; a
                       token composed with the TLS credentials
                       (access_token_call_credentials) wins over the
                       certificate; the unix socket's caller is
                       unix:USERNAME
  handshake_failures   no client certificate (client_cert defaults to
                       require with a CA), one from another CA, an expired
                       one, a server name the certificate does not have, a
                       server CA the client does not trust: each UNAVAILABLE
                       while good clients keep being served; an unlisted CN
                       passes the handshake and gets PERMISSION_DENIED "has
                       no role" until it is listed and SIGHUP; a server
                       certificate for another name is accepted only under
                       that name
  tokens_reload        TLS with client_cert none (and request) plus a token
                       file: no token, a wrong one, malformed authorization
                       headers are UNAUTHENTICATED on every RPC; a token
                       deleted from the file is refused after SIGHUP while
                       the others keep working; a token file that does not
                       parse fails the reload and keeps the tokens in use
  role_matrix          every RPC x admin, user, user with users_read_all,
                       viewer x own job / another principal's job against
                       the table of docs/security.md (printed); ListJobs of
                       a user holds only its jobs; Job.owner is the
                       submitter; a running job is cancelled by its owner
                       only; a record without an owner is changed by admins
                       only
  cert_rotation        new server certificate and key on disk + SIGHUP: a
                       new connection gets the new certificate (read with
                       Python's ssl), the old connection stays up and
                       works, the pid is the same; a key that does not
                       match keeps the previous pair; a new client CA
                       (both CAs, then the new one alone) applies to new
                       handshakes
  secure_by_default    plaintext on 0.0.0.0 is refused (flag and listeners
                       entry) naming tls/insecure; insecure: true starts
                       with a warning, shows in GetDaemonInfo.insecure_listen
                       and in /metrics (traind_insecure_listener),
                       and a token sent to the host's non-loopback address
                       is UNAUTHENTICATED (accepted over loopback)
  refused_configs      TLS without client certificates and without a token
                       file, client_cert require without a CA, a key that is
                       not the certificate's, an encrypted key (refused,
                       never prompted for), a certificate that does not
                       parse, a CA file without certificates, a missing
                       certificate or CA file, a malformed token file: the
                       daemon does not start and names the field or file
  health_listener      health_listen answers grpc.health.v1.Health without
                       credentials while the API is mutual TLS only; Trainer
                       methods there are UNIMPLEMENTED
  data_roots           a principal limited to data root A (its own
                       data_dirs over its role's B): datasets and init_from
                       files in B are PERMISSION_DENIED, in A accepted;
                       another user has its role's root B only; an admin
                       has both; another user may not export the job, the
                       owner and an admin may (the same bytes)
  trainctl_mtls        the built trainctl over mutual TLS (--tls-ca,
                       --tls-cert, --tls-key) and over TLS with
                       --token-file: info shows the caller, submit
                       records the owner, list shows only the caller's
                       jobs with their OWNER; a wrong token and no
                       credentials exit 2 with the daemon's message
  local_role_none      auth.local_role none: the unix socket without a token
                       is UNAUTHENTICATED on every RPC, with one it serves
                       as the token's principal (the job's owner)

Every daemon is stopped with SIGTERM and must exit 0 with no sanitizer
report. Prints one line per case, then "N passed, N failed".
"""
import atexit
import fcntl
import hashlib
import os
import pwd
import re
import secrets
import signal
import shutil
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import urllib.request

import grpc
import yaml

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import traind_harness as th  # noqa: E402
from traind_harness import check  # noqa: E402

args = th.parse_args(__doc__.splitlines()[0])
suite = th.Suite(args)
pb = suite.pb
hpb = suite.stubs.health
S = pb.JobState
C = grpc.StatusCode

TRAINER_METHODS = ("SubmitJob", "GetJob", "ListJobs", "CancelJob", "GetMetrics", "WatchMetrics",
                   "ListDevices", "GetDaemonInfo", "SaveCheckpoint", "ExportCheckpoint", "Sample",
                   "GetExamples")
HEALTH_METHODS = ("Health/Check", "Health/Watch")
ALL_METHODS = TRAINER_METHODS + HEALTH_METHODS
READS = {"GetJob", "GetMetrics", "WatchMetrics", "GetExamples"}
WRITES = {"CancelJob", "SaveCheckpoint", "ExportCheckpoint", "Sample"}
DENIALS = (C.PERMISSION_DENIED, C.UNAUTHENTICATED)
SHORT = {C.OK: "OK", C.PERMISSION_DENIED: "DENIED", C.UNAUTHENTICATED: "UNAUTH",
         C.FAILED_PRECONDITION: "PRECOND", C.NOT_FOUND: "NOTFOUND", C.UNAVAILABLE: "UNAVAIL",
         C.UNIMPLEMENTED: "UNIMPL", C.INVALID_ARGUMENT: "INVALID"}


# ---------------------------------------------------------- certificates


class Pki:
    """Certificates made with the openssl CLI in one directory: name.crt
    and name.key per certificate, EC P-256, serials counted up."""

    def __init__(self, root):
        self.dir = root
        self.serial = 0x5000

    def path(self, name, ext):
        return os.path.join(self.dir, "%s.%s" % (name, ext))

    def read(self, name, ext):
        with open(self.path(name, ext), "rb") as f:
            return f.read()

    def _openssl(self, *argv):
        p = subprocess.run(("openssl",) + argv, capture_output=True, text=True, cwd=self.dir,
                           stdin=subprocess.DEVNULL)
        check(p.returncode == 0, "openssl %s failed (%d): %s", " ".join(argv), p.returncode,
              p.stderr[-2000:])

    def _new_key(self, name):
        return ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                "-keyout", self.path(name, "key"))

    def ca(self, name, cn):
        self._openssl("req", "-x509", "-new", *self._new_key(name), "-out", self.path(name, "crt"),
                      "-days", "3650", "-subj", "/CN=" + cn,
                      "-addext", "basicConstraints=critical,CA:TRUE",
                      "-addext", "keyUsage=critical,keyCertSign,cRLSign")
        return name

    def leaf(self, name, ca, cn, server=False, san=None, subj=None):
        """A certificate signed by ca (server or client usage); subj
        replaces the subject /CN=cn."""
        self.serial += 1
        argv = ["req", "-x509", "-new", *self._new_key(name), "-out", self.path(name, "crt"),
                "-CA", self.path(ca, "crt"), "-CAkey", self.path(ca, "key"), "-days", "30",
                "-set_serial", str(self.serial), "-subj", subj or "/CN=" + cn,
                "-addext", "basicConstraints=critical,CA:FALSE",
                "-addext", "keyUsage=critical,digitalSignature" + (
                    ",keyEncipherment" if server else ""),
                "-addext", "extendedKeyUsage=" + ("serverAuth" if server else "clientAuth")]
        if san:
            argv += ["-addext", "subjectAltName=" + san]
        self._openssl(*argv)
        return name

    def dated(self, name, ca, cn, start, end):
        """A client certificate valid from start to end (YYYYMMDDHHMMSSZ):
        `openssl ca` takes both dates (OpenSSL 3.0's x509 -req and req
        -x509 have no start date)."""
        d = os.path.join(self.dir, "ca-db-" + name)
        os.makedirs(d)
        open(os.path.join(d, "index.txt"), "w").close()
        self.serial += 1
        with open(os.path.join(d, "serial"), "w") as f:
            f.write("%X\n" % self.serial)
        cnf = os.path.join(d, "ca.cnf")
        with open(cnf, "w") as f:
            f.write("[ca]\ndefault_ca = this\n[this]\ndir = %s\ndatabase = $dir/index.txt\n"
                    "new_certs_dir = $dir\nserial = $dir/serial\ndefault_md = sha256\n"
                    "policy = any\nunique_subject = no\ncopy_extensions = none\n"
                    "[any]\ncommonName = supplied\n[client]\n"
                    "basicConstraints = critical, CA:FALSE\n"
                    "keyUsage = critical, digitalSignature\nextendedKeyUsage = clientAuth\n" % d)
        csr = os.path.join(d, name + ".csr")
        self._openssl("req", "-new", *self._new_key(name), "-out", csr, "-subj", "/CN=" + cn)
        self._openssl("ca", "-batch", "-config", cnf, "-cert", self.path(ca, "crt"),
                      "-keyfile", self.path(ca, "key"), "-in", csr, "-out", self.path(name, "crt"),
                      "-startdate", start, "-enddate", end,
                      "-extensions", "client", "-notext")
        return name

    def der(self, name):
        return ssl.PEM_cert_to_DER_cert(self.read(name, "crt").decode())

    def fingerprint(self, name):
        return hashlib.sha256(self.der(name)).hexdigest()


_pki = None


def pki():
    """The script's certificates, made once on first use."""
    global _pki
    if _pki:
        return _pki
    root = tempfile.mkdtemp(prefix="td-pki-", dir="/tmp")
    atexit.register(shutil.rmtree, root, True)
    p = Pki(root)
    p.ca("ca", "traind test CA")
    p.ca("ca2", "another CA")
    p.leaf("server", "ca", "traind", server=True, san="DNS:localhost,IP:127.0.0.1")
    p.leaf("server-new", "ca", "traind", server=True, san="DNS:localhost,IP:127.0.0.1")
    p.leaf("server-other", "ca", "other.example", server=True, san="DNS:other.example")
    for cn in ("alice", "bob", "viewer1", "admin1", "mallory"):
        p.leaf(cn, "ca", cn)
    p.leaf("alice-ca2", "ca2", "alice")
    # No common name: the principal is the first subject alternative name.
    p.leaf("robot", "ca", None, subj="/O=traind robots",
           san="DNS:robot.example,DNS:second.example")
    p.dated("alice-expired", "ca", "alice", "20200101000000Z", "20210101000000Z")
    # The same way with dates around now: accepted (the control).
    p.dated("alice-dated", "ca", "alice", "20200101000000Z", "20990101000000Z")
    out = subprocess.run(["openssl", "x509", "-noout", "-checkend", "0", "-in",
                          p.path("alice-expired", "crt")], capture_output=True, text=True)
    check(out.returncode == 1, "the expired certificate is not expired: %s", out.stdout)
    _pki = p
    return p


# --------------------------------------------------------------- daemons


def daemon_env():
    """The environment of a daemon: its data roots come from its config
    file alone (TRAIND_DATA_DIR would override them)."""
    env = {k: v for k, v in os.environ.items() if k not in ("TRAIND_ADDR", "TRAIND_DATA_DIR")}
    return env


class SecDaemon(th.Daemon):
    """A traind whose listeners all come from its config file: the bound
    addresses are read from the log ('listening' with tls=off|server|mutual,
    'health listening')."""

    def __init__(self, s, cfg, name="d"):
        work = s.workdir(name)
        self.cfg = dict(cfg)
        self.cfg.setdefault("state_dir", os.path.join(work, "state"))
        self.config_path = os.path.join(work, "traind.yaml")
        self.write_config()
        super().__init__(s.traind, work, data_dirs=(), listen="config", config=self.config_path,
                         state_dir=self.cfg["state_dir"], stubs=s.stubs)
        self.tls_addr = self.health_addr = None
        self.tls_addrs = []
        self.plain = []

    def write_config(self, **changes):
        self.cfg.update(changes)
        with open(self.config_path + ".tmp", "w") as f:
            yaml.safe_dump(self.cfg, f, sort_keys=False)
        os.replace(self.config_path + ".tmp", self.config_path)

    def start(self, timeout=th.START_TIMEOUT):
        assert self.proc is None, "daemon already running"
        self.runs += 1
        self.log_path = os.path.join(self.workdir, "traind-%d.log" % self.runs)
        self._log = open(self.log_path, "w+b")
        self.proc = subprocess.Popen(self.argv(), stdin=subprocess.DEVNULL, stdout=self._log,
                                     stderr=subprocess.STDOUT, env=daemon_env())
        th._live.append(self)
        text = th.wait_for(lambda: self._ready(), timeout, "traind to log 'traind ready'")
        self.unix_addr = self.tls_addr = self.health_addr = None
        self.tls_addrs = []
        self.plain = []
        for addr, tls in re.findall(r'msg="listening" addr=(\S+) tls=(\S+)', text):
            if addr.startswith("unix:"):
                self.unix_addr = addr
            elif tls == "off":
                self.plain.append(addr)
            else:
                self.tls_addrs.append(addr)
        self.tls_addr = self.tls_addrs[0] if self.tls_addrs else None
        m = re.search(r'msg="health listening" addr=(\S+)', text)
        self.health_addr = m.group(1) if m else None
        self._stub = self._health = None
        return self

    def _ready(self):
        text = self.log()
        if 'msg="traind ready"' in text:
            return text
        if self.proc.poll() is not None:
            raise th.TestFailure("traind exited %d while starting:\n%s"
                                 % (self.proc.returncode, th.tail(text)))
        return None

    def port(self, addr):
        return int(addr.rsplit(":", 1)[1])

    def reload(self, timeout=30, ok=True):
        """SIGHUP; returns the log lines written since, once they hold
        'configuration reloaded' (fails on 'reload failed'; with ok=False
        the other way round)."""
        before = len(self.log())
        self.signal(signal.SIGHUP)

        def new_lines():
            new = self.log()[before:]
            done = 'msg="configuration reloaded"' in new or 'msg="reload failed' in new
            return new if done else None
        new = th.wait_for(new_lines, timeout, "the daemon to log 'configuration reloaded'")
        if ok:
            check('msg="configuration reloaded"' in new, "the reload failed:\n%s", new)
        else:
            check('msg="reload failed' in new, "the reload did not fail:\n%s", new)
        return new


def tls_listener(addr="127.0.0.1:0", cert="server", ca="ca", client_cert=None):
    """A listeners entry with the certificates `cert` (server) and `ca`
    (client CA; None: no client_ca_file)."""
    p = pki()
    t = {"cert_file": p.path(cert, "crt"), "key_file": p.path(cert, "key")}
    if ca:
        t["client_ca_file"] = p.path(ca, "crt")
    if client_cert:
        t["client_cert"] = client_cert
    return {"address": addr, "tls": t}


def principals(*rows):
    return [{"name": n, "role": r} for n, r in rows]


def token_file(path, rows):
    """rows: (token, name, role); returns path."""
    with open(path, "w") as f:
        f.write("# test tokens\n\n")
        for t, n, r in rows:
            f.write("%s,%s,%s\n" % (t, n, r))
    os.chmod(path, 0o600)
    return path


# --------------------------------------------------------------- clients


class Client:
    """The Trainer and Health stubs on one channel, with metadata for
    every call."""

    def __init__(self, ch, md=()):
        self.ch = ch
        self.trainer = suite.stubs.grpc.TrainerStub(ch)
        self.health = suite.stubs.health_grpc.HealthStub(ch)
        self.md = list(md)

    def with_md(self, md):
        return Client(self.ch, md)

    def call(self, method, req, timeout=20):
        """(code, details, reply): reply is the message, a stream's list of
        messages, or Health/Watch's first message."""
        if method.startswith("Health/"):
            fn = getattr(self.health, method.split("/")[1])
        else:
            fn = getattr(self.trainer, method)
        try:
            if method == "Health/Watch":
                it = fn(req, metadata=self.md, timeout=timeout)
                first = next(it)
                it.cancel()
                return C.OK, "", first
            if method in ("WatchMetrics", "ExportCheckpoint"):
                return C.OK, "", list(fn(req, metadata=self.md, timeout=timeout))
            return C.OK, "", fn(req, metadata=self.md, timeout=timeout)
        except grpc.RpcError as e:
            return e.code(), e.details() or "", None

    def ok(self, method, req, timeout=20):
        code, details, reply = self.call(method, req, timeout)
        check(code == C.OK, "%s: %s %r (expected OK)", method, code.name, details)
        return reply

    def info(self):
        return self.ok("GetDaemonInfo", pb.GetDaemonInfoRequest())

    def submit(self, spec, name=""):
        r = self.ok("SubmitJob", pb.SubmitJobRequest(spec=th.spec_msg(suite.stubs, spec),
                                                     name=name))
        check(r.job.id, "SubmitJob returned no job id")
        return r.job

    def get(self, job_id):
        return self.ok("GetJob", pb.GetJobRequest(id=job_id))

    def wait_final(self, job_id, timeout=120):
        final = (S.SUCCEEDED, S.FAILED, S.CANCELLED)

        def pred():
            j = self.get(job_id)
            return j if j.state in final else None
        return th.wait_for(pred, timeout, "job %s to end" % job_id, 0.01)

    def wait_all_final(self, timeout=120):
        def pred():
            r = self.ok("ListJobs", pb.ListJobsRequest(page_size=1000))
            return all(j.state in (S.SUCCEEDED, S.FAILED, S.CANCELLED) for j in r.jobs)
        th.wait_for(pred, timeout, "every job to end", 0.02)

    def export(self, job_id):
        chunks = self.ok("ExportCheckpoint", pb.ExportCheckpointRequest(id=job_id))
        check(chunks, "ExportCheckpoint of %s sent nothing", job_id)
        return b"".join(c.data for c in chunks)


def channel_options(name=None):
    # Each channel its own connection: a test of handshakes or of a
    # rotation must not reuse another channel's.
    opts = [("grpc.enable_http_proxy", 0), ("grpc.use_local_subchannel_pool", 1)]
    if name:
        opts.append(("grpc.ssl_target_name_override", name))
    return opts


def tls_creds(cert=None, ca="ca"):
    p = pki()
    if cert:
        return grpc.ssl_channel_credentials(root_certificates=p.read(ca, "crt"),
                                            private_key=p.read(cert, "key"),
                                            certificate_chain=p.read(cert, "crt"))
    return grpc.ssl_channel_credentials(root_certificates=p.read(ca, "crt"))


def tls_client(d, cert=None, ca="ca", name=None, token=None, creds=None, addr=None):
    """A client of d's TLS listener with the client certificate `cert`
    (none when None), trusting the server CA `ca`."""
    ch = grpc.secure_channel(addr or d.tls_addr, creds or tls_creds(cert, ca),
                             options=channel_options(name))
    d._channels.append(ch)
    md = [("authorization", "Bearer " + token)] if token else []
    return Client(ch, md)


def plain_client(d, addr, token=None):
    ch = grpc.insecure_channel(addr, options=channel_options())
    d._channels.append(ch)
    return Client(ch, [("authorization", "Bearer " + token)] if token else [])


def every_rpc(job_id, spec):
    """One request of every method (job_id for those that name a job)."""
    return [
        ("SubmitJob", pb.SubmitJobRequest(spec=th.spec_msg(suite.stubs, spec))),
        ("GetJob", pb.GetJobRequest(id=job_id)),
        ("ListJobs", pb.ListJobsRequest(page_size=1000)),
        ("CancelJob", pb.CancelJobRequest(id=job_id)),
        ("GetMetrics", pb.GetMetricsRequest(id=job_id)),
        ("WatchMetrics", pb.WatchMetricsRequest(id=job_id)),
        ("ListDevices", pb.ListDevicesRequest()),
        ("GetDaemonInfo", pb.GetDaemonInfoRequest()),
        ("SaveCheckpoint", pb.SaveCheckpointRequest(id=job_id)),
        ("ExportCheckpoint", pb.ExportCheckpointRequest(id=job_id)),
        ("Sample", pb.SampleRequest(id=job_id, prompt="A", tokens=1)),
        ("GetExamples", pb.GetExamplesRequest(id=job_id)),
        ("Health/Check", hpb.HealthCheckRequest(service="")),
        ("Health/Watch", hpb.HealthCheckRequest(service="")),
    ]


def methods_covered():
    """The test's method list is the proto's: a new RPC fails the script
    until it is tested here."""
    svc = pb.DESCRIPTOR.services_by_name["Trainer"]
    names = {m.name for m in svc.methods}
    check(names == set(TRAINER_METHODS), "traind.v1.Trainer has %s; this test covers %s",
          sorted(names), sorted(TRAINER_METHODS))


def data_root(s, name="data", n=256):
    root = s.workdir(name)
    th.make_synthetic(root, n=n)
    return os.path.realpath(root)


def tiny_spec(file="synthetic.h5", epochs=1, **extra):
    """The reference model on 256 synthetic examples: 2 steps an epoch."""
    spec = th.synthetic_spec(suite.source_dir, epochs=epochs, file=file, **extra)
    spec["dataset"]["train_limit"] = 256
    return spec


def expect(code_details, code, *words, what=""):
    code_, details, _ = code_details
    check(code_ == code, "%s: %s %r, expected %s", what, code_.name, details, code.name)
    for w in words:
        check(w.lower() in details.lower(), "%s: the message %r does not mention %r", what,
              details, w)


def unix_user():
    return pwd.getpwuid(os.getuid()).pw_name


# ---------------------------------------------------------------- cases


@suite.case
def mtls_every_rpc(s):
    methods_covered()
    root = data_root(s)
    tok = secrets.token_hex(32)
    d = SecDaemon(s, {
        "data_dirs": [root],
        "listen": ["unix:" + os.path.join(s.tmp, "t.sock")],
        "listeners": [tls_listener(client_cert="require")],
        "auth": {"principals": principals(("admin1", "admin"), ("alice", "user"),
                                          ("robot.example", "viewer")),
                 "token_file": token_file(os.path.join(s.tmp, "tokens"),
                                          [(tok, "carol", "viewer")])},
    }).start()
    check(d.tls_addr and d.unix_addr, "no TLS or unix address in the log")
    check(re.search(r'msg="listening" addr=%s tls=mutual' % re.escape(d.tls_addr), d.log()),
          "the TLS listener is not logged as mutual")
    admin = tls_client(d, "admin1")
    local = Client(d.channel(d.unix_addr))

    info = admin.info()
    check(info.caller == "admin1" and info.caller_role == "admin",
          "GetDaemonInfo over mutual TLS as admin1: caller %r role %r", info.caller,
          info.caller_role)
    check(list(info.insecure_listen) == [], "insecure_listen %s on a secure daemon",
          list(info.insecure_listen))
    li = local.info()
    check(li.caller == "unix:" + unix_user() and li.caller_role == "admin",
          "GetDaemonInfo on the unix socket: caller %r role %r (expected unix:%s, admin)",
          li.caller, li.caller_role, unix_user())

    job = admin.submit(tiny_spec(), name="mtls")
    check(job.owner == "admin1", "SubmitJob over mutual TLS: owner %r, expected admin1",
          job.owner)
    done = admin.wait_final(job.id)
    check(done.state == S.SUCCEEDED, "the job %s: %s", S.Name(done.state), done.error)

    # Every RPC over mutual TLS answers as over the unix socket (no
    # credentials, local_role admin): same status and same replies.
    rows = []
    for method, req in every_rpc(job.id, tiny_spec()):
        a = admin.call(method, req)
        b = local.call(method, req)
        rows.append("  %-16s mTLS %-8s unix %-8s" % (method, SHORT.get(a[0], a[0].name),
                                                    SHORT.get(b[0], b[0].name)))
        check(a[0] == b[0], "%s: %s %r over mutual TLS, %s %r on the unix socket", method,
              a[0].name, a[1], b[0].name, b[1])
        check(a[0] not in DENIALS, "%s refused to an admin: %s %r", method, a[0].name, a[1])
        if method == "SubmitJob":
            check(a[2].job.owner == "admin1" and b[2].job.owner == "unix:" + unix_user(),
                  "owners %r and %r", a[2].job.owner, b[2].job.owner)
            # Both jobs end before the next call, so that ListDevices
            # reads the same idle pool on either transport.
            for j in (a[2].job, b[2].job):
                check(admin.wait_final(j.id).state == S.SUCCEEDED, "the job %s did not succeed",
                      j.id)
        elif method in ("GetJob", "ListDevices"):
            check(a[2] == b[2], "%s differs over mutual TLS:\n%s\nunix:\n%s", method, a[2],
                  b[2])
        elif method == "ExportCheckpoint":
            check(a[0] == C.OK and b"".join(c.data for c in a[2]) == b"".join(
                c.data for c in b[2]) and a[2][0].total_bytes > 0,
                "ExportCheckpoint differs over mutual TLS (or is empty)")
        elif method in HEALTH_METHODS:
            check(a[2].status == hpb.HealthCheckResponse.SERVING, "%s: %s", method, a[2])
        elif method == "WatchMetrics":
            check(a[2] and a[2][-1].job.state == S.SUCCEEDED and
                  [p.step for m in a[2] for p in m.steps] == [1, 2],
                  "WatchMetrics over mutual TLS: %s", [(m.job.state, len(m.steps)) for m in a[2]])
        elif method == "ListJobs":
            check(job.id in {j.id for j in a[2].jobs}, "ListJobs misses %s", job.id)
    print("\n".join(rows))
    # SaveCheckpoint and CancelJob of a running job, over mutual TLS.
    run = admin.submit(tiny_spec(epochs=100000), name="long")

    def running():
        j = admin.get(run.id)
        check(j.state in (S.QUEUED, S.RUNNING), "the long job ended: %s", S.Name(j.state))
        return j.state == S.RUNNING and j.progress.step > 0
    th.wait_for(running, 120, "the long job to run")
    ck = admin.ok("SaveCheckpoint", pb.SaveCheckpointRequest(id=run.id))
    check(ck.file and ck.step > 0 and ck.reason == "requested", "SaveCheckpoint: %s", ck)
    admin.ok("CancelJob", pb.CancelJobRequest(id=run.id))
    check(admin.wait_final(run.id).state == S.CANCELLED, "the long job was not cancelled")

    # A user's certificate: the principal is the CN, the role its entry.
    alice = tls_client(d, "alice")
    ai = alice.info()
    check(ai.caller == "alice" and ai.caller_role == "user", "alice: caller %r role %r",
          ai.caller, ai.caller_role)
    aj = alice.submit(tiny_spec())
    check(aj.owner == "alice", "alice's job's owner is %r", aj.owner)
    ri = tls_client(d, "robot").info()
    check(ri.caller == "robot.example" and ri.caller_role == "viewer",
          "a certificate without a CN (SAN DNS:robot.example first): caller %r role %r",
          ri.caller, ri.caller_role)

    # A third-party client's idiom: TLS credentials composed with an access
    # token. The token's principal wins over the certificate's.
    creds = grpc.composite_channel_credentials(tls_creds("alice"),
                                               grpc.access_token_call_credentials(tok))
    carol = tls_client(d, creds=creds)
    ci = carol.info()
    check(ci.caller == "carol" and ci.caller_role == "viewer",
          "alice's certificate plus carol's token: caller %r role %r (the token must win)",
          ci.caller, ci.caller_role)
    expect(carol.call("SubmitJob", pb.SubmitJobRequest(spec=th.spec_msg(s.stubs, tiny_spec()))),
           C.PERMISSION_DENIED, "carol", "viewer", what="SubmitJob as carol (viewer) by token")
    check(carol.get(job.id).id == job.id, "carol cannot read the job")
    admin.wait_all_final()


@suite.case
def handshake_failures(s):
    root = data_root(s)
    d = SecDaemon(s, {
        "data_dirs": [root],
        "listeners": [tls_listener()],
        "auth": {"principals": principals(("admin1", "admin"), ("alice", "user"))},
    }).start()
    good = tls_client(d, "admin1")
    check(good.info().caller == "admin1", "the good client is not admin1")
    check(tls_client(d, "alice-dated").info().caller == "alice",
          "a certificate made like the expired one but valid now is refused")
    bad = [
        ("no client certificate", dict(cert=None)),
        ("a client certificate of another CA", dict(cert="alice-ca2")),
        ("an expired client certificate", dict(cert="alice-expired")),
        ("a server name the certificate does not have", dict(cert="alice",
                                                             name="wrong.example")),
        ("a server CA the client does not trust", dict(cert="alice", ca="ca2")),
    ]
    for what, kw in bad:
        c = tls_client(d, **kw)
        for method, req in (("GetDaemonInfo", pb.GetDaemonInfoRequest()),
                            ("Health/Check", hpb.HealthCheckRequest())):
            code, details, _ = c.call(method, req, timeout=20)
            check(code == C.UNAVAILABLE, "%s with %s: %s %r, expected UNAVAILABLE", method, what,
                  code.name, details)
        c.ch.close()
        check(d.alive(), "traind exited after a client with %s", what)
        # Good clients are still served, on the open connection and on a
        # new one.
        check(good.info().caller == "admin1", "the open good connection after %s", what)
        fresh = tls_client(d, "alice")
        check(fresh.info().caller == "alice", "a new good connection after %s", what)
        fresh.ch.close()

    # A certificate of the CA whose CN is not in auth.principals passes the
    # handshake, and every call is refused as having no role.
    m = tls_client(d, "mallory")
    expect(m.call("GetDaemonInfo", pb.GetDaemonInfoRequest()), C.PERMISSION_DENIED, "mallory",
           "has no role", "auth.principals", what="GetDaemonInfo as mallory (unlisted)")
    expect(m.call("Health/Check", hpb.HealthCheckRequest()), C.PERMISSION_DENIED, "has no role",
           what="Health/Check as mallory (unlisted)")
    # Principals are read again at SIGHUP: listed as a viewer, the same
    # connection now gets that role.
    d.write_config(auth={"principals": principals(("admin1", "admin"), ("alice", "user"),
                                                  ("mallory", "viewer"))})
    d.reload()
    mi = m.info()
    check(mi.caller == "mallory" and mi.caller_role == "viewer",
          "mallory after being listed and SIGHUP: caller %r role %r", mi.caller, mi.caller_role)
    expect(m.call("SubmitJob", pb.SubmitJobRequest(spec=th.spec_msg(s.stubs, tiny_spec()))),
           C.PERMISSION_DENIED, "viewer", what="SubmitJob as mallory (viewer)")

    # A server certificate for another name: clients dialling 127.0.0.1
    # refuse it; under that name (target name override) they accept it.
    d2 = SecDaemon(s, {"data_dirs": [root], "listeners": [tls_listener(cert="server-other")],
                       "auth": {"principals": principals(("admin1", "admin"))}},
                   name="d2").start()
    expect(tls_client(d2, "admin1").call("GetDaemonInfo", pb.GetDaemonInfoRequest()),
           C.UNAVAILABLE, what="dialling 127.0.0.1 with a certificate for other.example")
    check(tls_client(d2, "admin1", name="other.example").info().caller == "admin1",
          "a client naming other.example is not served")
    check(good.info().caller == "admin1", "the first daemon stopped serving")


@suite.case
def tokens_reload(s):
    methods_covered()
    root = data_root(s)
    t_tina, t_ops, t_gone = (secrets.token_hex(32) for _ in range(3))
    tf = os.path.join(s.tmp, "tokens")
    rows = [(t_tina, "tina", "user"), (t_ops, "ops", "admin"), (t_gone, "temp", "admin")]
    token_file(tf, rows)
    # Server-only TLS (the case of this test), and TLS that verifies a
    # client certificate when one is sent (callers without one need a
    # token there too).
    d = SecDaemon(s, {
        "data_dirs": [root],
        "listeners": [tls_listener(ca=None, client_cert="none"),
                      tls_listener(client_cert="request")],
        "auth": {"token_file": tf, "principals": principals(("alice", "user"))},
    }).start()
    check(len(d.tls_addrs) == 2 and len(re.findall(r'msg="listening" addr=\S+ tls=server',
                                                   d.log())) == 2,
          "two TLS listeners without required client certificates not logged: %s", d.tls_addrs)
    check(re.search(r'msg="bearer tokens loaded" tokens=3', d.log()), "3 tokens not logged")
    none_addr, request_addr = d.tls_addrs
    ops = tls_client(d, token=t_ops, addr=none_addr)
    check(ops.info().caller == "ops", "the ops token is not principal ops")
    job = ops.submit(tiny_spec())
    check(job.owner == "ops", "owner %r, expected ops", job.owner)
    ops.wait_final(job.id)
    calls = every_rpc(job.id, tiny_spec())

    def variants(addr):
        anon = tls_client(d, addr=addr)
        near = t_ops[:-1] + ("0" if t_ops[-1] != "0" else "1")
        return [
            ("no token", anon, "no credentials"),
            ("a wrong token", anon.with_md([("authorization", "Bearer " + secrets.token_hex(32))]),
             "unknown bearer token"),
            ("a token one character off", anon.with_md([("authorization", "Bearer " + near)]),
             "unknown bearer token"),
            ("'Basic' credentials", anon.with_md([("authorization", "Basic " + t_ops)]),
             "Bearer TOKEN"),
            ("a token without 'Bearer '", anon.with_md([("authorization", t_ops)]),
             "Bearer TOKEN"),
            ("'Bearer' and nothing", anon.with_md([("authorization", "Bearer")]), "Bearer TOKEN"),
            ("two authorization headers", anon.with_md([("authorization", "Bearer " + t_ops),
                                                        ("authorization", "Bearer " + t_tina)]),
             "Bearer TOKEN"),
        ]
    for addr, mode in ((none_addr, "client_cert none"), (request_addr, "client_cert request")):
        for what, cl, word in variants(addr):
            for method, req in calls:
                expect(cl.call(method, req), C.UNAUTHENTICATED, word,
                       what="%s with %s (%s)" % (method, what, mode))
    check(d.alive(), "traind exited")
    # On the request listener a client certificate is a credential; an
    # unknown token next to it is still refused (no fall back to the
    # certificate).
    alice = tls_client(d, "alice", addr=request_addr)
    ai = alice.info()
    check(ai.caller == "alice" and ai.caller_role == "user", "alice's certificate: %r %r",
          ai.caller, ai.caller_role)
    expect(alice.with_md([("authorization", "Bearer " + secrets.token_hex(32))]).call(
        "GetDaemonInfo", pb.GetDaemonInfoRequest()), C.UNAUTHENTICATED, "unknown bearer token",
        what="alice's certificate with an unknown token")

    temps = [tls_client(d, token=t_gone, addr=a) for a in d.tls_addrs]
    for t in temps:
        check(t.info().caller == "temp", "the temp token is not principal temp")
    # The token leaves the file; SIGHUP reads it again.
    token_file(tf, rows[:2])
    d.reload()
    check(re.search(r'msg="configuration reloaded" .*tokens=2', d.log()),
          "the reload did not log 2 tokens")
    for t in temps:
        for method, req in calls:
            expect(t.call(method, req), C.UNAUTHENTICATED, "unknown bearer token",
                   what="%s with the deleted token after SIGHUP" % method)
    # The remaining tokens work as before, on open and on new connections.
    for cl in [ops] + [tls_client(d, token=t_ops, addr=a) for a in d.tls_addrs]:
        for method, req in calls:
            code, details, _ = cl.call(method, req)
            check(code not in DENIALS, "%s with the ops token after the reload: %s %r", method,
                  code.name, details)
    for a in d.tls_addrs:
        ti = tls_client(d, token=t_tina, addr=a).info()
        check(ti.caller == "tina" and ti.caller_role == "user", "tina's token: %r %r",
              ti.caller, ti.caller_role)
    tj = tls_client(d, token=t_tina, addr=none_addr).submit(tiny_spec())
    check(tj.owner == "tina", "owner %r", tj.owner)
    # A token file that does not parse: the reload keeps the tokens in use.
    with open(tf, "w") as f:
        f.write("%s,temp,admin\nnot a token line\n" % t_gone)
    new = d.reload(ok=False)
    check(tf in new and "line 2" in new, "the failed reload does not name %s line 2:\n%s", tf,
          new)
    check(ops.info().caller == "ops", "the ops token after a failed reload")
    expect(temps[0].call("GetDaemonInfo", pb.GetDaemonInfoRequest()), C.UNAUTHENTICATED,
           what="the deleted token after a failed reload that lists it")
    ops.wait_all_final()


def code_cell(code, want_allowed, baseline):
    """(cell text, whether it agrees): an allowed call answers as the
    local admin's did; a refused one is PERMISSION_DENIED."""
    good = code == baseline if want_allowed else code == C.PERMISSION_DENIED
    return ("%s%s" % (SHORT.get(code, code.name), "" if good else "!"), good)


def allowed(role, read_all, method, own):
    """docs/security.md's role table."""
    if role == "admin":
        return True
    if method in ("ListJobs", "ListDevices", "GetDaemonInfo") or method in HEALTH_METHODS:
        return True
    if role == "viewer":
        return method in READS
    if method == "SubmitJob":
        return True
    if method in READS:
        return own or read_all
    return own


@suite.case
def role_matrix(s):
    methods_covered()
    root = data_root(s)
    d = SecDaemon(s, {
        "data_dirs": [root],
        "listen": ["unix:" + os.path.join(s.tmp, "t.sock")],
        "listeners": [tls_listener()],
        "auth": {"principals": principals(("admin1", "admin"), ("alice", "user"),
                                          ("bob", "user"), ("viewer1", "viewer"))},
    }).start()
    cl = {n: tls_client(d, n) for n in ("admin1", "alice", "bob", "viewer1")}
    local = Client(d.channel(d.unix_addr))
    for n, role in (("admin1", "admin"), ("alice", "user"), ("bob", "user"),
                    ("viewer1", "viewer")):
        i = cl[n].info()
        check(i.caller == n and i.caller_role == role, "%s: caller %r role %r", n, i.caller,
              i.caller_role)
    jobs = {}
    for n in ("alice", "bob", "admin1"):
        jobs[n] = cl[n].submit(tiny_spec(), name="job-of-" + n)
        check(jobs[n].owner == n, "%s's job has owner %r", n, jobs[n].owner)
    for n, j in jobs.items():
        done = local.wait_final(j.id)
        check(done.state == S.SUCCEEDED and done.owner == n, "%s's job: %s (%s), owner %r", n,
              S.Name(done.state), done.error, done.owner)
    expect(cl["viewer1"].call("SubmitJob",
                              pb.SubmitJobRequest(spec=th.spec_msg(s.stubs, tiny_spec()))),
           C.PERMISSION_DENIED, "viewer1", "role viewer", "SubmitJob",
           what="SubmitJob as a viewer")

    # The columns: (label, client, role, users_read_all, own job, other job).
    columns = [
        ("admin1/own", "admin1", "admin", False, "admin1"),
        ("admin1/other", "admin1", "admin", False, "alice"),
        ("alice/own", "alice", "user", False, "alice"),
        ("alice/other", "alice", "user", False, "bob"),
        ("viewer1/other", "viewer1", "viewer", False, "alice"),
        ("alice+ra/own", "alice", "user", True, "alice"),
        ("alice+ra/other", "alice", "user", True, "bob"),
    ]
    # The local admin's answer to each request: what an allowed call gets.
    baseline = {}
    for owner in ("admin1", "alice", "bob"):
        for method, req in every_rpc(jobs[owner].id, tiny_spec()):
            code, details, _ = local.call(method, req)
            check(code not in DENIALS, "the local admin's %s: %s %r", method, code.name, details)
            baseline[(method, owner)] = code
    cells = {}
    bad = []

    def run_columns(read_all):
        for label, who, role, ra, owner in columns:
            if ra != read_all:
                continue
            own = owner == who
            for method, req in every_rpc(jobs[owner].id, tiny_spec()):
                code, details, reply = cl[who].call(method, req)
                want = allowed(role, read_all, method, own)
                text, good = code_cell(code, want, baseline[(method, owner)])
                cells[(method, label)] = text
                if not good:
                    bad.append("%s as %s (%s%s) on %s's job: %s %r, expected %s" % (
                        method, who, role, ", users_read_all" if read_all else "", owner,
                        code.name, details,
                        baseline[(method, owner)].name if want else "PERMISSION_DENIED"))
                if code == C.PERMISSION_DENIED and (who not in details or not re.search(
                        r"role|belongs|owner", details)):
                    bad.append("%s as %s: the refusal %r does not say who and why" % (
                        method, who, details))
                if method == "ListJobs" and code == C.OK:
                    owners = {j.owner for j in reply.jobs}
                    ids = {j.id for j in reply.jobs}
                    if role == "user" and not read_all:
                        if owners != {who} or jobs[who].id not in ids:
                            bad.append("ListJobs as %s lists owners %s" % (who, sorted(owners)))
                    elif not {jobs["alice"].id, jobs["bob"].id, jobs["admin1"].id} <= ids:
                        bad.append("ListJobs as %s%s misses jobs of others: owners %s" % (
                            who, " (users_read_all)" if read_all else "", sorted(owners)))
                if method == "SubmitJob" and code == C.OK and reply.job.owner != who:
                    bad.append("SubmitJob as %s: owner %r" % (who, reply.job.owner))

    run_columns(False)
    d.write_config(auth=dict(d.cfg["auth"], users_read_all=True))
    d.reload()
    run_columns(True)
    width = max(len(c[0]) for c in columns) + 1
    print("  %-17s" % "method" + "".join("%*s" % (width, c[0]) for c in columns))
    for method in ALL_METHODS:
        print("  %-17s" % method + "".join("%*s" % (width, cells.get((method, c[0]), "-"))
                                          for c in columns))
    print("  (an allowed call answers as the local admin's; '!' marks a disagreement)")
    check(not bad, "%d cells disagree with the role table:\n  %s", len(bad), "\n  ".join(bad))

    # A running (or queued) job: another user and a viewer may not cancel
    # it, its owner may.
    long_job = cl["alice"].submit(tiny_spec(epochs=100000), name="long")
    for who in ("bob", "viewer1"):
        expect(cl[who].call("CancelJob", pb.CancelJobRequest(id=long_job.id)),
               C.PERMISSION_DENIED, who, what="CancelJob of alice's running job as " + who)
    check(cl["alice"].get(long_job.id).state in (S.QUEUED, S.RUNNING),
          "alice's long job ended before its owner cancelled it")
    cl["alice"].ok("CancelJob", pb.CancelJobRequest(id=long_job.id))
    ended = cl["alice"].wait_final(long_job.id)
    check(ended.state == S.CANCELLED, "the long job is %s after its owner's cancel",
          S.Name(ended.state))
    local.wait_all_final()

    # A record from before owners were kept: only admins may change it.
    a_id = jobs["alice"].id
    d.stop()
    rec = os.path.join(d.state_dir, "jobs", a_id + ".pb")
    j = pb.Job()
    with open(rec, "rb") as f:
        j.ParseFromString(f.read())
    check(j.owner == "alice", "the record of %s has owner %r", a_id, j.owner)
    j.ClearField("owner")
    with open(rec, "wb") as f:
        f.write(j.SerializeToString())
    d.start()
    cl = {n: tls_client(d, n) for n in ("admin1", "alice", "viewer1")}
    check(cl["viewer1"].get(a_id).owner == "", "the record still has an owner")
    for method, req in (("CancelJob", pb.CancelJobRequest(id=a_id)),
                        ("SaveCheckpoint", pb.SaveCheckpointRequest(id=a_id)),
                        ("ExportCheckpoint", pb.ExportCheckpointRequest(id=a_id))):
        expect(cl["alice"].call(method, req), C.PERMISSION_DENIED, "no recorded owner", "admin",
               what="%s of an ownerless job as a user" % method)
        code, details, _ = cl["admin1"].call(method, req)
        check(code == baseline[(method, "alice")], "%s of an ownerless job as an admin: %s %r",
              method, code.name, details)


def peer_cert(addr, cert):
    """The DER certificate a new TLS connection to addr presents (Python's
    ssl, with a client certificate)."""
    p = pki()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(p.path("ca", "crt"))
    ctx.load_cert_chain(p.path(cert, "crt"), p.path(cert, "key"))
    ctx.set_alpn_protocols(["h2"])
    host, port = addr.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=20) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as t:
            return t.getpeercert(binary_form=True)


def established_from(port):
    """Local ports of established TCP connections to 127.0.0.1:port, over
    IPv4 or IPv4-mapped IPv6 (this machine's /proc/net/tcp and tcp6)."""
    out = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                rem_ip, rem_port = fields[2].split(":")
                if fields[3] == "01" and int(rem_port, 16) == port and rem_ip.endswith(
                        "0100007F"):
                    out.add(int(fields[1].split(":")[1], 16))
    return out


@suite.case
def cert_rotation(s):
    root = data_root(s)
    p = pki()
    work = s.workdir("tls")
    cert, key = os.path.join(work, "server.crt"), os.path.join(work, "server.key")
    shutil.copy(p.path("server", "crt"), cert)
    shutil.copy(p.path("server", "key"), key)
    client_ca = os.path.join(work, "client-ca.crt")
    shutil.copy(p.path("ca", "crt"), client_ca)
    lst = tls_listener()
    lst["tls"].update(cert_file=cert, key_file=key, client_ca_file=client_ca)
    d = SecDaemon(s, {"data_dirs": [root], "listeners": [lst],
                      "auth": {"principals": principals(("admin1", "admin"),
                                                        ("alice", "user"))}}).start()
    pid = d.pid()
    old = tls_client(d, "admin1")
    started = old.info().started
    port = d.port(d.tls_addr)
    conns = established_from(port)
    check(len(conns) == 1, "expected one connection to the daemon, found %s", conns)
    check(peer_cert(d.tls_addr, "admin1") == p.der("server"),
          "the daemon does not present server.crt at first")

    # Replace both files (as a Secret update does: new files renamed in).
    for src, dst in ((p.path("server-new", "crt"), cert), (p.path("server-new", "key"), key)):
        shutil.copy(src, dst + ".tmp")
        os.replace(dst + ".tmp", dst)
    d.reload()
    got = peer_cert(d.tls_addr, "admin1")
    check(got == p.der("server-new"),
          "a new connection after SIGHUP gets the certificate with sha256 %s; the new one is %s "
          "(the old %s)", hashlib.sha256(got).hexdigest(), p.fingerprint("server-new"),
          p.fingerprint("server"))
    new = tls_client(d, "admin1")
    check(new.info().caller == "admin1", "a new gRPC connection after the rotation")
    info = old.info()
    check(info.caller == "admin1" and info.started == started,
          "the old connection after the rotation: %s", info)
    check(conns <= established_from(port), "the old connection was closed by the rotation")
    check(d.alive() and d.pid() == pid, "the daemon restarted")

    # A key that is not the certificate's: the reload keeps the pair in use.
    shutil.copy(p.path("alice", "key"), key + ".tmp")
    os.replace(key + ".tmp", key)
    n = d.log().count("TLS certificates not reloaded")
    d.reload()
    check(d.log().count("TLS certificates not reloaded") > n and key in d.log().split(
        "TLS certificates not reloaded")[-1][:2000], "the bad key is not reported by name:\n%s",
        th.tail(d.log(), 5))
    check(peer_cert(d.tls_addr, "admin1") == p.der("server-new"),
          "a bad key replaced the certificate in use")
    check(tls_client(d, "admin1").info().caller == "admin1", "no service after the bad reload")
    shutil.copy(p.path("server-new", "key"), key + ".tmp")
    os.replace(key + ".tmp", key)

    # A new client CA, the documented way: both CAs, then the new one only.
    def write_ca(*names):
        with open(client_ca + ".tmp", "wb") as f:
            for n in names:
                f.write(p.read(n, "crt"))
        os.replace(client_ca + ".tmp", client_ca)
    expect(tls_client(d, "alice-ca2").call("GetDaemonInfo", pb.GetDaemonInfoRequest()),
           C.UNAVAILABLE, what="a certificate of the second CA before it is trusted")
    write_ca("ca", "ca2")
    d.reload()
    check(tls_client(d, "alice-ca2").info().caller == "alice",
          "a certificate of the second CA with both CAs in client_ca_file")
    check(tls_client(d, "admin1").info().caller == "admin1",
          "a certificate of the first CA with both CAs in client_ca_file")
    write_ca("ca2")
    d.reload()
    expect(tls_client(d, "admin1").call("GetDaemonInfo", pb.GetDaemonInfoRequest()),
           C.UNAVAILABLE, what="a new connection with a certificate of the CA taken out")
    check(tls_client(d, "alice-ca2").info().caller == "alice",
          "a certificate of the second CA alone in client_ca_file")
    check(old.info().caller == "admin1" and conns <= established_from(port),
          "the connection opened before every rotation stopped working")
    check(d.pid() == pid and d.alive(), "the daemon restarted")


def non_loopback_ipv4():
    """An IPv4 address of this machine on an interface that is not
    loopback, or None."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for _, name in socket.if_nameindex():
            try:
                r = fcntl.ioctl(s.fileno(), 0x8915,  # SIOCGIFADDR
                                struct.pack("256s", name[:15].encode()))
            except OSError:
                continue
            ip = socket.inet_ntoa(r[20:24])
            if not ip.startswith("127."):
                return ip
    finally:
        s.close()
    return None


def refused(s, argv, *words, what):
    """traind argv must exit non-zero before serving, its output naming
    every word."""
    p = subprocess.run([s.traind] + argv, capture_output=True, text=True, timeout=60,
                       stdin=subprocess.DEVNULL, env=daemon_env())
    out = p.stdout + p.stderr
    for mark in th.SANITIZER_MARKS:
        check(mark not in out, "sanitizer report from traind (%s):\n%s", what, out[-6000:])
    check(p.returncode > 0, "%s: traind exited %d (expected an error exit):\n%s", what,
          p.returncode, th.tail(out))
    check('msg="traind ready"' not in out, "%s: traind got ready before exiting", what)
    for w in words:
        check(w.lower() in out.lower(), "%s: the message does not name %r:\n%s", what, w,
              th.tail(out, 8))
    return out


def config_file(s, name, cfg):
    path = os.path.join(s.tmp, name)
    cfg = dict(cfg)
    cfg.setdefault("state_dir", os.path.join(s.tmp, "state-" + name))
    with open(path, "w") as f:
        yaml.safe_dump(cfg, f)
    return path


@suite.case
def secure_by_default(s):
    root = data_root(s)
    state = os.path.join(s.tmp, "state0")
    refused(s, ["serve", "--state-dir", state, "--data-dir", root, "--listen", "0.0.0.0:0"],
            "0.0.0.0:0", "tls", "insecure", what="--listen 0.0.0.0:0")
    refused(s, ["serve", "--config", config_file(s, "plain.yaml", {
        "data_dirs": [root], "listeners": [{"address": "0.0.0.0:0"}]})],
        "0.0.0.0:0", "tls", "insecure", what="a listeners entry on 0.0.0.0 without tls")

    ip = non_loopback_ipv4()
    check(ip, "this machine has no non-loopback IPv4 address: the case needs one to send a "
          "token over plaintext to a network address")
    tok = secrets.token_hex(32)
    d = SecDaemon(s, {"data_dirs": [root],
                      "listeners": [{"address": "0.0.0.0:0", "insecure": True}],
                      "metrics_listen": "127.0.0.1:0",
                      "auth": {"token_file": token_file(os.path.join(s.tmp, "tokens"),
                                                        [(tok, "dave", "user")])}}).start()
    check(len(d.plain) == 1 and d.plain[0].startswith("0.0.0.0:"), "listening on %s", d.plain)
    addr = d.plain[0]
    check(re.search(r'level=warn msg="insecure listener[^"]*" addr=%s' % re.escape(addr),
                    d.log()), "no warning about the insecure listener:\n%s", th.tail(d.log(), 8))
    port = d.port(addr)
    net = plain_client(d, "%s:%d" % (ip, port))
    info = net.info()
    check(list(info.insecure_listen) == [addr], "GetDaemonInfo.insecure_listen is %s, expected "
          "[%s]", list(info.insecure_listen), addr)
    check(info.caller == "anonymous" and info.caller_role == "admin",
          "plaintext at %s: caller %r role %r (expected anonymous, admin)", ip, info.caller,
          info.caller_role)
    for method, req in (("GetDaemonInfo", pb.GetDaemonInfoRequest()),
                        ("ListJobs", pb.ListJobsRequest()),
                        ("SubmitJob", pb.SubmitJobRequest(spec=th.spec_msg(s.stubs,
                                                                           tiny_spec())))):
        expect(plain_client(d, "%s:%d" % (ip, port), token=tok).call(method, req),
               C.UNAUTHENTICATED, "plaintext", "TLS",
               what="%s with a valid token over plaintext to %s" % (method, ip))
    # /metrics names it too.
    m = re.search(r'msg="metrics listening" addr=\S+ port=(\d+)', d.log())
    check(m, "no 'metrics listening' line:\n%s", th.tail(d.log(), 8))
    url = "http://127.0.0.1:%s/metrics" % m.group(1)

    def scraped():
        with urllib.request.urlopen(url, timeout=10) as r:
            text = r.read().decode()
        return text if "traind_insecure_listener" in text else None
    text = th.wait_for(scraped, 30, "/metrics to show traind_insecure_listener")
    check('traind_insecure_listener{addr="%s"} 1' % addr in text,
          "/metrics does not list %s as insecure:\n%s", addr,
          "\n".join(l for l in text.splitlines() if "insecure" in l))
    # The same token over loopback is fine: it never left the machine.
    lo = plain_client(d, "127.0.0.1:%d" % port, token=tok).info()
    check(lo.caller == "dave" and lo.caller_role == "user",
          "the token over loopback: caller %r role %r", lo.caller, lo.caller_role)
    lo = plain_client(d, "127.0.0.1:%d" % port).info()
    check(lo.caller == "local" and lo.caller_role == "admin",
          "loopback without credentials: caller %r role %r", lo.caller, lo.caller_role)


@suite.case
def refused_configs(s):
    root = data_root(s)
    p = pki()
    tf = token_file(os.path.join(s.tmp, "tokens"), [(secrets.token_hex(32), "x", "admin")])
    missing = os.path.join(s.tmp, "no-such-cert.pem")
    encrypted = os.path.join(s.tmp, "encrypted.key")
    out = subprocess.run(["openssl", "pkey", "-in", p.path("server", "key"), "-aes256",
                          "-passout", "pass:secret", "-out", encrypted],
                         capture_output=True, text=True, stdin=subprocess.DEVNULL)
    check(out.returncode == 0, "openssl pkey -aes256: %s", out.stderr)
    broken = os.path.join(s.tmp, "broken.crt")
    with open(broken, "w") as f:
        f.write("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")

    def with_tls(**files):
        return {"listeners": [dict(tls_listener(), tls=dict(tls_listener()["tls"], **files))]}

    cases = [
        ("TLS without client certificates and without a token file",
         {"listeners": [tls_listener(ca=None, client_cert="none")]},
         ("token_file", "client_ca_file")),
        ("TLS without client certificates (no CA given) and without a token file",
         {"listeners": [tls_listener(ca=None)]}, ("token_file",)),
        ("client_cert require without client_ca_file",
         {"listeners": [tls_listener(ca=None, client_cert="require")],
          "auth": {"token_file": tf}}, ("client_cert", "client_ca_file")),
        ("a key that is not the certificate's",
         {"listeners": [dict(tls_listener(), tls=dict(tls_listener()["tls"],
                                                      key_file=p.path("alice", "key")))]},
         ("key_file", p.path("alice", "key"), p.path("server", "crt"))),
        ("an encrypted key", with_tls(key_file=encrypted),
         ("key_file", encrypted, "is encrypted", "openssl pkey")),
        ("a certificate that does not parse", with_tls(cert_file=broken),
         ("cert_file", broken, "does not parse")),
        ("a CA file without certificates", with_tls(client_ca_file=p.path("ca", "key")),
         ("client_ca_file", p.path("ca", "key"), "holds no PEM certificate")),
        ("a missing certificate file",
         {"listeners": [dict(tls_listener(), tls=dict(tls_listener()["tls"],
                                                      cert_file=missing))]},
         ("cert_file", missing)),
        ("a missing client CA file",
         {"listeners": [dict(tls_listener(), tls=dict(tls_listener()["tls"],
                                                      client_ca_file=missing))]},
         ("client_ca_file", missing)),
    ]
    bad_tokens = os.path.join(s.tmp, "bad-tokens")
    with open(bad_tokens, "w") as f:
        f.write("%s,alice\n" % secrets.token_hex(32))
    cases.append(("a token file line without a role",
                  {"listen": ["unix:" + os.path.join(s.tmp, "t.sock")],
                   "auth": {"token_file": bad_tokens}},
                  (bad_tokens, "line 1", "TOKEN,NAME,ROLE")))
    for i, (what, cfg, words) in enumerate(cases):
        cfg = dict(cfg, data_dirs=[root])
        refused(s, ["serve", "--config", config_file(s, "c%d.yaml" % i, cfg)], *words, what=what)


@suite.case
def health_listener(s):
    root = data_root(s)
    d = SecDaemon(s, {"data_dirs": [root], "listeners": [tls_listener()],
                      "health_listen": "127.0.0.1:0",
                      "auth": {"principals": principals(("admin1", "admin"))}}).start()
    check(d.health_addr and d.health_addr != d.tls_addr and not d.health_addr.endswith(":0"),
          "health address %r", d.health_addr)
    h = plain_client(d, d.health_addr)
    SERVING = hpb.HealthCheckResponse.SERVING
    for svc in ("", "traind.v1.Trainer"):
        r = h.ok("Health/Check", hpb.HealthCheckRequest(service=svc))
        check(r.status == SERVING, "Check(%r) on the health listener: %s", svc, r)
    r = h.ok("Health/Watch", hpb.HealthCheckRequest(service=""))
    check(r.status == SERVING, "Watch on the health listener: %s", r)
    for method, req in every_rpc("j-none", tiny_spec()):
        if method in HEALTH_METHODS:
            continue
        expect(h.call(method, req), C.UNIMPLEMENTED, "grpc.health.v1.Health",
               what="%s on the health listener" % method)
    # The API itself is mutual TLS only.
    expect(plain_client(d, d.tls_addr).call("Health/Check", hpb.HealthCheckRequest()),
           C.UNAVAILABLE, what="plaintext to the mutual TLS listener")
    expect(tls_client(d).call("Health/Check", hpb.HealthCheckRequest()), C.UNAVAILABLE,
           what="TLS without a client certificate to the API")
    check(tls_client(d, "admin1").info().caller == "admin1", "the API with a certificate")
    check(h.ok("Health/Check", hpb.HealthCheckRequest()).status == SERVING,
          "the health listener after the other calls")


@suite.case
def data_roots(s):
    ra, rb = os.path.realpath(s.workdir("roots/A")), os.path.realpath(s.workdir("roots/B"))
    th.make_synthetic(ra, n=256, name="a.h5", seed=1)
    th.make_synthetic(rb, n=256, name="b.h5", seed=2)
    d = SecDaemon(s, {
        "data_dirs": [ra, rb],
        "listeners": [tls_listener()],
        # alice's own roots take precedence over her role's; bob has his
        # role's; an admin has all.
        "auth": {"principals": [{"name": "alice", "role": "user", "data_dirs": [ra]},
                                {"name": "bob", "role": "user"},
                                {"name": "admin1", "role": "admin"}],
                 "roles": [{"role": "user", "data_dirs": [rb]}]},
    }).start()
    alice, bob, admin = (tls_client(d, n) for n in ("alice", "bob", "admin1"))

    def submit_req(spec):
        return pb.SubmitJobRequest(spec=th.spec_msg(s.stubs, spec))
    for f in ("b.h5", os.path.join(rb, "b.h5")):
        expect(alice.call("SubmitJob", submit_req(tiny_spec(file=f))), C.PERMISSION_DENIED,
               "alice", "data roots", what="alice's job reading %s (root B)" % f)
    for f in ("a.h5", os.path.join(ra, "a.h5")):
        expect(bob.call("SubmitJob", submit_req(tiny_spec(file=f))), C.PERMISSION_DENIED,
               "bob", "data roots", what="bob's job reading %s (root A; his role has B)" % f)
    bj = bob.submit(tiny_spec(file="b.h5"))
    aj = alice.submit(tiny_spec(file="a.h5"))
    check(aj.owner == "alice" and bj.owner == "bob", "owners %r %r", aj.owner, bj.owner)
    xa = admin.submit(tiny_spec(file="a.h5"))
    xb = admin.submit(tiny_spec(file=os.path.join(rb, "b.h5")))
    for j in (aj, bj, xa, xb):
        done = admin.wait_final(j.id)
        check(done.state == S.SUCCEEDED, "job %s: %s (%s)", j.id, S.Name(done.state), done.error)

    # Exports: the owner and an admin, not another user.
    expect(bob.call("ExportCheckpoint", pb.ExportCheckpointRequest(id=aj.id)),
           C.PERMISSION_DENIED, "bob", "alice", what="bob exporting alice's job")
    mine = alice.export(aj.id)
    check(mine == admin.export(aj.id) and len(mine) > 0,
          "alice's and the admin's exports of alice's job differ")

    # init_from: the same checkpoint in A and in B.
    for r, name in ((ra, "warm.h5"), (rb, "warm-b.h5")):
        with open(os.path.join(r, name), "wb") as f:
            f.write(mine)
    for f in ("warm-b.h5", os.path.join(rb, "warm-b.h5")):
        expect(alice.call("SubmitJob", submit_req(tiny_spec(file="a.h5",
                                                            checkpoint={"init_from": f}))),
               C.PERMISSION_DENIED, "alice", "data roots",
               what="alice's job warm-starting from %s (root B)" % f)
    wj = alice.submit(tiny_spec(file="a.h5", checkpoint={"init_from": "warm.h5"}))
    done = admin.wait_final(wj.id)
    check(done.state == S.SUCCEEDED, "alice's warm-started job: %s (%s)", S.Name(done.state),
          done.error)
    expect(bob.call("SubmitJob", submit_req(tiny_spec(file="b.h5",
                                                      checkpoint={"init_from": "warm.h5"}))),
           C.PERMISSION_DENIED, "bob", "data roots", what="bob warm-starting from root A")
    bw = bob.submit(tiny_spec(file="b.h5", checkpoint={"init_from": "warm-b.h5"}))
    done = admin.wait_final(bw.id)
    check(done.state == S.SUCCEEDED, "bob's warm start from root B: %s (%s)",
          S.Name(done.state), done.error)


@suite.case
def local_role_none(s):
    root = data_root(s)
    tok = secrets.token_hex(32)
    d = SecDaemon(s, {
        "data_dirs": [root],
        "listen": ["unix:" + os.path.join(s.tmp, "t.sock")],
        "auth": {"local_role": "none",
                 "token_file": token_file(os.path.join(s.tmp, "tokens"),
                                          [(tok, "erin", "user")])},
    }).start()
    anon = Client(d.channel(d.unix_addr))
    for method, req in every_rpc("j-none", tiny_spec()):
        expect(anon.call(method, req), C.UNAUTHENTICATED, "local_role",
               what="%s on the unix socket without a token (local_role none)" % method)
    erin = anon.with_md([("authorization", "Bearer " + tok)])
    info = erin.info()
    check(info.caller == "erin" and info.caller_role == "user", "caller %r role %r",
          info.caller, info.caller_role)
    j = erin.submit(tiny_spec())
    check(j.owner == "erin", "the job's owner is %r, expected erin", j.owner)
    done = erin.wait_final(j.id)
    check(done.state == S.SUCCEEDED and done.owner == "erin", "erin's job %s, owner %r",
          S.Name(done.state), done.owner)
    expect(anon.with_md([("authorization", "Bearer " + secrets.token_hex(32))]).call(
        "GetDaemonInfo", pb.GetDaemonInfoRequest()), C.UNAUTHENTICATED, "unknown bearer token",
        what="a wrong token on the unix socket")


@suite.case
def trainctl_mtls(s):
    """The built trainctl against the daemon: mutual TLS with a client
    certificate, then a token over TLS without one; owners in `list`."""
    p = pki()
    root = data_root(s)
    tok = secrets.token_hex(32)
    d = SecDaemon(s, {
        "data_dirs": [root],
        "listeners": [tls_listener(client_cert="request")],
        "auth": {"principals": principals(("alice", "user"), ("admin1", "admin")),
                 "token_file": token_file(os.path.join(s.tmp, "tokens"),
                                          [(tok, "ci-bot", "user")])},
    }).start()
    job_file = os.path.join(s.tmp, "job.yaml")
    th.write_job(job_file, tiny_spec())
    tls = ["--tls-ca", p.path("ca", "crt")]
    cert = tls + ["--tls-cert", p.path("alice", "crt"), "--tls-key", p.path("alice", "key")]
    tok_path = os.path.join(s.tmp, "client-token")
    with open(tok_path, "w") as f:
        f.write(tok + "\n")
    os.chmod(tok_path, 0o600)
    for who, creds in (("alice", cert), ("ci-bot", tls + ["--token-file", tok_path])):
        r = s.trainctl(*creds, "info", "-o", "json", addr=d.tls_addr)
        check(r.returncode == 0, "trainctl info as %s: %d %s", who, r.returncode, r.stderr)
        check('"caller": "%s"' % who in r.stdout and '"callerRole": "user"' in r.stdout,
              "trainctl info as %s shows: %s", who, r.stdout)
        r = s.trainctl(*creds, "submit", job_file, "--name", who, addr=d.tls_addr)
        check(r.returncode == 0, "trainctl submit as %s: %d %s", who, r.returncode, r.stderr)
    tls_client(d, cert="admin1").wait_all_final()
    r = s.trainctl(*cert, "list", addr=d.tls_addr)
    check(r.returncode == 0 and "OWNER" in r.stdout, "trainctl list: %s %s", r.stdout, r.stderr)
    rows = [l.split() for l in r.stdout.splitlines()[1:] if l.strip()]
    check(len(rows) == 1 and "alice" in rows[0], "alice lists only her job, owner shown: %s",
          r.stdout)
    # A wrong token: the daemon's message, exit status 2.
    with open(tok_path, "w") as f:
        f.write(secrets.token_hex(32) + "\n")
    r = s.trainctl(*tls, "--token-file", tok_path, "info", addr=d.tls_addr)
    check(r.returncode == 2 and "unknown bearer token" in r.stderr,
          "a wrong token: %d %s", r.returncode, r.stderr)
    # No credentials at all over TLS.
    r = s.trainctl(*tls, "info", addr=d.tls_addr)
    check(r.returncode == 2 and "no credentials" in r.stderr, "no credentials: %d %s",
          r.returncode, r.stderr)


if __name__ == "__main__":
    sys.exit(suite.run())
