"""trainctl's TLS, client certificates, bearer tokens and contexts, end to end.

A CA, a server certificate (SAN DNS:localhost, IP:127.0.0.1), client
certificates (good, expired, from another CA) are made with the openssl
command in a temporary directory. A Python grpcio server (Debian's
python3-grpcio: another gRPC implementation than trainctl's C core client)
serves traind.v1.Trainer's GetDaemonInfo, ListJobs, GetJob, CancelJob and
WatchMetrics with protobuf classes generated from proto/, on four
listeners: mutual TLS (client certificate required), TLS without client
certificates, plaintext 127.0.0.1 and a plaintext unix socket. It records
every call's listener, method, authorization metadata and client
certificate, so that each case can check what trainctl sent, or that it
sent nothing at all when it had to refuse before connecting.

Usage: trainctl_tls.py TRAINCTL SOURCE_DIR [CASE...]
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from concurrent import futures

# The Python server's own gRPC log lines (the handshakes refused on purpose)
# would only clutter the output; trainctl runs without this variable.
os.environ.setdefault("GRPC_VERBOSITY", "NONE")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from traind_harness import SANITIZER_MARKS, SKIP, Suite, check  # noqa: E402

import grpc  # noqa: E402

TOKEN = "s3cr3t-t0ken.for-ci"
TOKEN_NAME = "ci-bot"


# ------------------------------------------------------------ certificates


def openssl(*args, cwd):
    p = subprocess.run(["openssl"] + list(args), cwd=cwd, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError("openssl %s failed:\n%s" % (" ".join(args), p.stderr))


def make_certs(d):
    """Writes into d: ca.pem/ca.key (the test CA), other-ca.pem (another
    CA), server.pem/server.key, client.pem/client.key (CN alice),
    expired.pem/expired.key (CN alice, valid in January 2020 only),
    stranger.pem/stranger.key (signed by the other CA)."""
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    for name, cn in (("ca", "traind test CA"), ("other-ca", "another CA")):
        openssl("req", "-x509", *ec, "-keyout", name + ".key", "-out", name + ".pem",
                "-days", "30", "-subj", "/CN=" + cn, cwd=d)
    with open(os.path.join(d, "server.ext"), "w") as f:
        f.write("subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    with open(os.path.join(d, "client.ext"), "w") as f:
        f.write("extendedKeyUsage=clientAuth\n")

    def leaf(name, cn, ca, ext):
        openssl("req", *ec, "-keyout", name + ".key", "-out", name + ".csr", "-subj", "/CN=" + cn,
                cwd=d)
        openssl("x509", "-req", "-in", name + ".csr", "-CA", ca + ".pem", "-CAkey", ca + ".key",
                "-CAcreateserial", "-out", name + ".pem", "-days", "30", "-extfile", ext, cwd=d)

    leaf("server", "traind", "ca", "server.ext")
    leaf("client", "alice", "ca", "client.ext")
    leaf("stranger", "mallory", "other-ca", "client.ext")
    # openssl 3.0's x509 has no start date option; `openssl ca` has
    # -startdate/-enddate, with a minimal CA database.
    os.makedirs(os.path.join(d, "db"))
    open(os.path.join(d, "db/index.txt"), "w").close()
    with open(os.path.join(d, "db/serial"), "w") as f:
        f.write("1000\n")
    with open(os.path.join(d, "ca.cnf"), "w") as f:
        f.write("[ca]\ndefault_ca = d\n[d]\ndatabase = db/index.txt\nnew_certs_dir = db\n"
                "serial = db/serial\ndefault_md = sha256\npolicy = p\n[p]\n"
                "commonName = supplied\n")
    openssl("req", *ec, "-keyout", "expired.key", "-out", "expired.csr", "-subj", "/CN=alice",
            cwd=d)
    openssl("ca", "-batch", "-config", "ca.cnf", "-cert", "ca.pem", "-keyfile", "ca.key",
            "-in", "expired.csr", "-out", "expired.pem", "-startdate", "20200101000000Z",
            "-enddate", "20200201000000Z", "-extfile", "client.ext", cwd=d)


# ------------------------------------------------------------ the server


class Recorder:
    """Every call the servers took: (listener, method, authorization,
    client certificate CN)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.calls = []

    def add(self, call):
        with self.lock:
            self.calls.append(call)

    def count(self):
        with self.lock:
            return len(self.calls)

    def since(self, n):
        with self.lock:
            return list(self.calls[n:])


def handler(pb, listener, rec):
    """A generic handler answering as a daemon with tokens and roles would,
    enough for trainctl's side: the caller comes from the token, else the
    client certificate's CN, else the transport."""

    def who(ctx):
        md = dict(ctx.invocation_metadata())
        auth = md.get("authorization")
        cn = ctx.auth_context().get("x509_common_name")
        cn = cn[0].decode() if cn else None
        return auth, cn

    def record(method, ctx):
        auth, cn = who(ctx)
        rec.add((listener, method, auth, cn))
        if auth is not None and auth != "Bearer " + TOKEN:
            ctx.abort(grpc.StatusCode.UNAUTHENTICATED,
                      "unknown bearer token; check the token file given with --token-file "
                      "(or TRAINCTL_TOKEN_FILE) against the daemon's auth.token_file")
        if auth:
            return TOKEN_NAME, "user"
        if cn:
            return cn, "admin"
        return ("unix:tester" if listener == "unix" else "local"), "admin"

    def job(pb, jid, owner, state):
        return pb.Job(id=jid, name="mnist-mlp", owner=owner, state=state,
                      progress=pb.Progress(step=10, total_steps=10, epoch=1, total_epochs=1))

    def info(req, ctx):
        caller, role = record("GetDaemonInfo", ctx)
        return pb.DaemonInfo(version="tls-test", caller=caller, caller_role=role)

    def list_jobs(req, ctx):
        record("ListJobs", ctx)
        return pb.ListJobsResponse(jobs=[job(pb, "j-2", "alice", pb.JobState.SUCCEEDED),
                                         job(pb, "j-1", "", pb.JobState.SUCCEEDED)])

    def get_job(req, ctx):
        record("GetJob", ctx)
        return job(pb, req.id, "alice", pb.JobState.SUCCEEDED)

    def cancel(req, ctx):
        caller, role = record("CancelJob", ctx)
        ctx.abort(grpc.StatusCode.PERMISSION_DENIED,
                  "%s (role %s) may cancel only its own jobs, and job %s belongs to alice; ask "
                  "alice or an admin" % (caller, role, req.id))

    def watch(req, ctx):
        record("WatchMetrics", ctx)
        yield pb.WatchMetricsResponse(job=job(pb, req.id, "alice", pb.JobState.SUCCEEDED))

    unary = {
        "GetDaemonInfo": (info, pb.GetDaemonInfoRequest, pb.DaemonInfo),
        "ListJobs": (list_jobs, pb.ListJobsRequest, pb.ListJobsResponse),
        "GetJob": (get_job, pb.GetJobRequest, pb.Job),
        "CancelJob": (cancel, pb.CancelJobRequest, pb.Job),
    }

    class Handler(grpc.GenericRpcHandler):
        def service(self, details):
            m = details.method
            if not m.startswith("/traind.v1.Trainer/"):
                return None
            name = m.split("/")[-1]
            if name in unary:
                fn, req, resp = unary[name]
                return grpc.unary_unary_rpc_method_handler(
                    fn, request_deserializer=req.FromString,
                    response_serializer=resp.SerializeToString)
            if name == "WatchMetrics":
                return grpc.unary_stream_rpc_method_handler(
                    watch, request_deserializer=pb.WatchMetricsRequest.FromString,
                    response_serializer=pb.WatchMetricsResponse.SerializeToString)
            return None

    return Handler()


class Servers:
    """The four listeners, each its own grpc.server so that every call is
    recorded with the listener it came in on."""

    def __init__(self, pb, certs, sock):
        def read(name):
            with open(os.path.join(certs, name), "rb") as f:
                return f.read()

        pair = [(read("server.key"), read("server.pem"))]
        self.rec = Recorder()
        self.servers = []
        mtls = grpc.ssl_server_credentials(pair, root_certificates=read("ca.pem"),
                                           require_client_auth=True)
        tls = grpc.ssl_server_credentials(pair)
        self.mtls = self._start(pb, "mtls", lambda s: s.add_secure_port("127.0.0.1:0", mtls))
        self.tls = self._start(pb, "tls", lambda s: s.add_secure_port("127.0.0.1:0", tls))
        self.plain = self._start(pb, "plain", lambda s: s.add_insecure_port("127.0.0.1:0"))
        self.unix = "unix:" + sock
        self._start(pb, "unix", lambda s: s.add_insecure_port(self.unix))

    def _start(self, pb, name, bind):
        s = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        s.add_generic_rpc_handlers((handler(pb, name, self.rec),))
        port = bind(s)
        check(port, "cannot bind the %s listener", name)
        s.start()
        self.servers.append(s)
        return port

    def stop(self):
        for s in self.servers:
            s.stop(None)


# ------------------------------------------------------------ running trainctl


class Ctx:
    """What every case shares: the certificates, the servers, trainctl."""

    def __init__(self, trainctl_bin, source_dir):
        self.bin = trainctl_bin
        self.dir = tempfile.mkdtemp(prefix="td-tls-", dir="/tmp")
        self.certs = os.path.join(self.dir, "certs")
        os.makedirs(self.certs)
        make_certs(self.certs)
        self.token = os.path.join(self.dir, "token")
        with open(self.token, "w") as f:
            f.write("\n%s\n" % TOKEN)
        self.config = os.path.join(self.dir, "no-such-config.yaml")
        self.srv = None
        # Under the sanitizers: Debian 12's c-ares (1.18.1, gRPC's DNS
        # resolver) leaks 10 bytes whenever it resolves "localhost", with any
        # gRPC client; that one library's leaks are not trainctl's.
        self.lsan = os.path.join(self.dir, "lsan.supp")
        with open(self.lsan, "w") as f:
            f.write("leak:libcares.so\n")

    def cert(self, name):
        return os.path.join(self.certs, name)

    def mtls_flags(self, cert="client", ca="ca.pem", token=True):
        f = ["--addr", "localhost:%d" % self.srv.mtls, "--tls-ca", self.cert(ca)]
        if cert:
            f += ["--tls-cert", self.cert(cert + ".pem"), "--tls-key", self.cert(cert + ".key")]
        if token:
            f += ["--token-file", self.token]
        return f

    def run(self, *args, env=None, ok=(0,), cwd=None, config=None):
        """Runs trainctl with a clean environment (no TRAINCTL_* or
        TRAIND_ADDR from outside, the config file of the case) and checks
        its exit status; a failure must be one line on stderr."""
        e = {k: v for k, v in os.environ.items()
             if not k.startswith("TRAINCTL_") and k not in ("TRAIND_ADDR", "GRPC_VERBOSITY",
                                                             "GRPC_DEFAULT_SSL_ROOTS_FILE_PATH")
             and not k.lower().endswith("_proxy")}
        e["TRAINCTL_CONFIG"] = config or self.config
        e["LSAN_OPTIONS"] = ":".join(x for x in (os.environ.get("LSAN_OPTIONS"),
                                                  "suppressions=" + self.lsan,
                                                  "print_suppressions=0") if x)
        if env:
            e.update(env)
        p = subprocess.run([self.bin] + list(args), capture_output=True, text=True, env=e,
                           timeout=60, stdin=subprocess.DEVNULL, cwd=cwd or self.dir)
        for mark in SANITIZER_MARKS:
            check(mark not in p.stderr, "sanitizer report from trainctl %s:\n%s",
                  " ".join(args), p.stderr[-6000:])
        check(p.returncode in ok, "trainctl %s: exit %d, want %s\nstdout: %s\nstderr: %s",
              " ".join(args), p.returncode, ok, p.stdout[-2000:], p.stderr[-2000:])
        if p.returncode != 0:
            lines = p.stderr.strip().split("\n")
            check(len(lines) == 1 and lines[0].startswith("trainctl: "),
                  "trainctl %s: the error is not one 'trainctl: ' line:\n%s", " ".join(args),
                  p.stderr)
        return p

    def refused(self, args, exit_code, *phrases, env=None, sent_nothing=True):
        """Runs a command that must fail with exit_code and a message that
        holds every phrase; with sent_nothing, no call reached a server."""
        n = self.srv.rec.count()
        p = self.run(*args, env=env, ok=(exit_code,))
        for ph in phrases:
            check(ph in p.stderr, "trainctl %s: the message lacks %r:\n%s", " ".join(args), ph,
                  p.stderr)
        if sent_nothing:
            calls = self.srv.rec.since(n)
            check(not calls, "trainctl %s should have refused before connecting, but the "
                  "server saw %s", " ".join(args), calls)
        return p.stderr

    def calls_of(self, args, **kw):
        """Runs a command that must succeed; returns (output, the calls the
        servers saw meanwhile)."""
        n = self.srv.rec.count()
        p = self.run(*args, **kw)
        return p.stdout, self.srv.rec.since(n)


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("trainctl")
    ap.add_argument("source_dir")
    ap.add_argument("cases", nargs="*")
    a = ap.parse_args()
    a.trainctl = os.path.abspath(a.trainctl)
    a.source_dir = os.path.abspath(a.source_dir)
    a.traind = None  # no daemon here: the server is Python's
    return a


if not shutil.which("openssl"):
    print("SKIP: the openssl command is not installed (apt-get install openssl)")
    print("0 passed, 0 failed")
    sys.exit(1 if os.environ.get("CI") == "true" else SKIP)

args = parse_args()
suite = Suite(args)
X = Ctx(args.trainctl, args.source_dir)
X.srv = Servers(suite.pb, X.certs, os.path.join(X.dir, "plain.sock"))


# ------------------------------------------------------------ cases


@suite.case
def mtls_with_token(s):
    """The right CA, client certificate and token: the server saw the
    certificate and "Bearer TOKEN"; by name and by IP address."""
    out, calls = X.calls_of(["info"] + X.mtls_flags())
    check(calls == [("mtls", "GetDaemonInfo", "Bearer " + TOKEN, "alice")], "calls %s", calls)
    check("you are:        %s (role user)" % TOKEN_NAME in out, "info output:\n%s", out)
    flags = X.mtls_flags()
    flags[1] = "127.0.0.1:%d" % X.srv.mtls
    out, calls = X.calls_of(["-o", "json", "version"] + flags)
    check(calls == [("mtls", "GetDaemonInfo", "Bearer " + TOKEN, "alice")], "calls %s", calls)
    check('"server": "tls-test"' in out, "version -o json:\n%s", out)
    # Without a token, the certificate is the caller.
    out, calls = X.calls_of(["info"] + X.mtls_flags(token=False))
    check(calls == [("mtls", "GetDaemonInfo", None, "alice")], "calls %s", calls)
    check("you are:        alice (role admin)" in out, "info output:\n%s", out)


@suite.case
def token_on_streams(s):
    """The token goes with a server-streaming call (WatchMetrics) too."""
    out, calls = X.calls_of(["metrics", "j-2", "--follow"] + X.mtls_flags())
    check(calls == [("mtls", "WatchMetrics", "Bearer " + TOKEN, "alice")], "calls %s", calls)
    check("SUCCEEDED" in out, "metrics --follow output:\n%s", out)


@suite.case
def owners_shown(s):
    """list has an OWNER column ("-" for jobs without one), get an owner
    line."""
    out, calls = X.calls_of(["list"] + X.mtls_flags())
    lines = out.strip().split("\n")
    check(lines[0].split()[:4] == ["ID", "NAME", "OWNER", "STATE"], "list header: %s", lines[0])
    check(lines[1].split()[:3] == ["j-2", "mnist-mlp", "alice"] and
          lines[2].split()[:3] == ["j-1", "mnist-mlp", "-"], "list rows:\n%s", out)
    check([c[1] for c in calls] == ["ListJobs"] and calls[0][2] == "Bearer " + TOKEN,
          "calls %s", calls)
    out, _ = X.calls_of(["get", "j-2"] + X.mtls_flags())
    check("owner:         alice\n" in out, "get output:\n%s", out)
    out, _ = X.calls_of(["get", "j-2", "-o", "json"] + X.mtls_flags())
    check('"owner": "alice"' in out, "get -o json:\n%s", out)


@suite.case
def daemon_refusals(s):
    """UNAUTHENTICATED and PERMISSION_DENIED: the daemon's message, exit 2."""
    bad = os.path.join(s.tmp, "bad.token")
    with open(bad, "w") as f:
        f.write("not-the-token\n")
    flags = X.mtls_flags(token=False) + ["--token-file", bad]
    X.refused(["info"] + flags, 2, "get daemon info: unknown bearer token; check the token file",
              sent_nothing=False)
    X.refused(["cancel", "j-2"] + X.mtls_flags(), 2,
              "cancel job j-2: ci-bot (role user) may cancel only its own jobs, and job j-2 "
              "belongs to alice; ask alice or an admin", sent_nothing=False)


@suite.case
def wrong_ca(s):
    err = X.refused(["info"] + X.mtls_flags(ca="other-ca.pem"), 3,
                    "did not verify against the CA in %s (from --tls-ca)" % X.cert("other-ca.pem"),
                    "give --tls-ca the CA that signed")
    check("certificate verify failed" in err, "gRPC's detail is kept: %s", err)


@suite.case
def wrong_server_name(s):
    err = X.refused(["info"] + X.mtls_flags() + ["--tls-server-name", "wrong.example"], 3,
                    "not for the name 'wrong.example'", "(from --tls-server-name)",
                    "give --tls-server-name a name the certificate holds")
    # A name the certificate holds, checked instead of the address's.
    flags = X.mtls_flags() + ["--tls-server-name", "localhost"]
    flags[1] = "127.0.0.1:%d" % X.srv.mtls
    out, calls = X.calls_of(["info"] + flags)
    check(len(calls) == 1 and calls[0][3] == "alice", "calls %s", calls)


@suite.case
def expired_client_cert(s):
    X.refused(["info"] + X.mtls_flags(cert="expired"), 2,
              "client certificate %s expired on 2020-02-01 00:00:00 UTC; renew it"
              % X.cert("expired.pem"))


@suite.case
def missing_or_refused_client_cert(s):
    X.refused(["info"] + X.mtls_flags(cert=None), 3,
              "wants a client certificate", "give --tls-cert and --tls-key")
    X.refused(["info"] + X.mtls_flags(cert="stranger"), 3,
              "refused the client certificate %s (from --tls-cert)" % X.cert("stranger.pem"),
              "client_ca_file")
    # One half of a pair, a key that is not the certificate's.
    X.refused(["info", "--addr", "localhost:%d" % X.srv.mtls, "--tls-ca", X.cert("ca.pem"),
               "--tls-cert", X.cert("client.pem")], 2, "needs --tls-key too")
    X.refused(["info", "--addr", "localhost:%d" % X.srv.mtls, "--tls-ca", X.cert("ca.pem"),
               "--tls-cert", X.cert("client.pem"), "--tls-key", X.cert("stranger.key")], 2,
              "the key %s does not belong to the client certificate" % X.cert("stranger.key"))
    # A server certificate is not a client certificate.
    X.refused(["info", "--addr", "localhost:%d" % X.srv.mtls, "--tls-ca", X.cert("ca.pem"),
               "--tls-cert", X.cert("server.pem"), "--tls-key", X.cert("server.key")], 2,
              "may not be used by a TLS client")


@suite.case
def bad_ca_file(s):
    X.refused(["info", "--addr", "localhost:%d" % X.srv.tls, "--tls-ca",
               os.path.join(s.tmp, "none.pem")], 2, "cannot read the CA file", "check the path")
    X.refused(["info", "--addr", "localhost:%d" % X.srv.tls, "--tls-ca", X.cert("ca.key")], 2,
              "holds no PEM certificate")


@suite.case
def token_file_problems(s):
    X.refused(["info"] + X.mtls_flags(token=False) +
              ["--token-file", os.path.join(s.tmp, "none.token")], 2,
              "cannot read the token file %s (--token-file)" % os.path.join(s.tmp, "none.token"))
    empty = os.path.join(s.tmp, "empty.token")
    with open(empty, "w") as f:
        f.write("\n   \n")
    X.refused(["info"] + X.mtls_flags(token=False) + ["--token-file", empty], 2,
              "the token file %s (--token-file) is empty" % empty)


@suite.case
def token_over_plaintext(s):
    """A token is refused before connecting in plain text to an address
    that is not loopback (0.0.0.0 reaches this machine's listeners, so the
    server would have seen it); to loopback and over a unix socket it goes."""
    X.refused(["info", "--addr", "0.0.0.0:%d" % X.srv.plain, "--token-file", X.token], 2,
              "refusing to send the token", "in plain text to 0.0.0.0:%d" % X.srv.plain,
              "--tls-ca")
    # The same address without a token is a plain call (the daemon decides).
    _, calls = X.calls_of(["info", "--addr", "0.0.0.0:%d" % X.srv.plain])
    check(calls == [("plain", "GetDaemonInfo", None, None)], "calls %s", calls)
    _, calls = X.calls_of(["info", "--addr", "127.0.0.1:%d" % X.srv.plain, "--token-file",
                           X.token])
    check(calls == [("plain", "GetDaemonInfo", "Bearer " + TOKEN, None)], "calls %s", calls)
    _, calls = X.calls_of(["info", "--addr", X.srv.unix, "--token-file", X.token])
    check(calls == [("unix", "GetDaemonInfo", "Bearer " + TOKEN, None)], "calls %s", calls)
    _, calls = X.calls_of(["metrics", "j-2", "--follow", "--addr", X.srv.unix, "--token-file",
                           X.token])
    check(calls == [("unix", "WatchMetrics", "Bearer " + TOKEN, None)], "calls %s", calls)


@suite.case
def tls_system_roots(s):
    """--tls verifies against gRPC's default roots: the system's, or the
    file GRPC_DEFAULT_SSL_ROOTS_FILE_PATH names."""
    addr = "localhost:%d" % X.srv.tls
    X.refused(["info", "--addr", addr, "--tls"], 3, "against the system's CA roots",
              "--tls-ca")
    _, calls = X.calls_of(["info", "--addr", addr, "--tls", "--token-file", X.token],
                          env={"GRPC_DEFAULT_SSL_ROOTS_FILE_PATH": X.cert("ca.pem")})
    check(calls == [("tls", "GetDaemonInfo", "Bearer " + TOKEN, None)], "calls %s", calls)
    # TLS to a plaintext listener, and plaintext to a TLS one.
    X.refused(["info", "--addr", "localhost:%d" % X.srv.plain, "--tls-ca", X.cert("ca.pem")], 3,
              "the TLS handshake failed", "serves TLS at this address")
    X.refused(["info", "--addr", "127.0.0.1:%d" % X.srv.tls], 3,
              "the daemon closed the connection; if it serves TLS there, connect with --tls-ca")


@suite.case
def environment(s):
    """TRAINCTL_* variables, and flags over them."""
    env = {"TRAIND_ADDR": "localhost:%d" % X.srv.mtls,
           "TRAINCTL_TLS_CA": X.cert("ca.pem"),
           "TRAINCTL_TLS_CERT": X.cert("client.pem"),
           "TRAINCTL_TLS_KEY": X.cert("client.key"),
           "TRAINCTL_TOKEN_FILE": X.token}
    _, calls = X.calls_of(["info"], env=env)
    check(calls == [("mtls", "GetDaemonInfo", "Bearer " + TOKEN, "alice")], "calls %s", calls)
    env["TRAINCTL_TLS_CA"] = X.cert("other-ca.pem")
    X.refused(["info"], 3, "(from TRAINCTL_TLS_CA)", env=env)
    _, calls = X.calls_of(["info", "--tls-ca", X.cert("ca.pem")], env=env)
    check(len(calls) == 1 and calls[0][3] == "alice", "the flag beats the variable: %s", calls)
    env["TRAINCTL_TLS_CA"] = X.cert("ca.pem")
    env["TRAINCTL_TLS_SERVER_NAME"] = "wrong.example"
    X.refused(["info"], 3, "'wrong.example'", "(from TRAINCTL_TLS_SERVER_NAME)", env=env)


@suite.case
def contexts(s):
    """A contexts file with paths relative to its directory, chosen by
    current_context, --context and TRAINCTL_CONTEXT; flags beat it."""
    home = s.workdir("conf")
    shutil.copytree(X.certs, os.path.join(home, "pki"))
    shutil.copy(X.token, os.path.join(home, "ci.token"))
    cfg = os.path.join(home, "config.yaml")
    with open(cfg, "w") as f:
        f.write("current_context: prod\n"
                "contexts:\n"
                "- name: prod\n"
                "  address: localhost:%d\n"
                "  tls_ca: pki/ca.pem\n"
                "  tls_cert: pki/client.pem\n"
                "  tls_key: pki/client.key\n"
                "  token_file: ci.token\n"
                "- name: stale\n"
                "  address: localhost:1\n"
                "  tls_ca: pki/ca.pem\n"
                "- name: local\n"
                "  address: %s\n" % (X.srv.mtls, X.srv.unix))
    elsewhere = s.workdir("elsewhere")
    _, calls = X.calls_of(["info"], config=cfg, cwd=elsewhere)
    check(calls == [("mtls", "GetDaemonInfo", "Bearer " + TOKEN, "alice")], "calls %s", calls)
    _, calls = X.calls_of(["info", "--context", "local"], config=cfg, cwd=elsewhere)
    check(calls == [("unix", "GetDaemonInfo", None, None)], "calls %s", calls)
    _, calls = X.calls_of(["info"], config=cfg, cwd=elsewhere,
                          env={"TRAINCTL_CONTEXT": "local"})
    check(calls == [("unix", "GetDaemonInfo", None, None)], "calls %s", calls)
    # --addr beats the stale context's address; its CA still applies.
    _, calls = X.calls_of(["info", "--context", "stale", "--addr", "localhost:%d" % X.srv.tls],
                          config=cfg, cwd=elsewhere)
    check(calls == [("tls", "GetDaemonInfo", None, None)], "calls %s", calls)
    # An unknown context: a usage error naming the ones there are.
    X.refused(["info", "--context", "nope"], 2, "no context 'nope'",
              "(contexts: prod, stale, local)", env={"TRAINCTL_CONFIG": cfg})
    # config get-contexts / current-context / use-context.
    p = X.run("config", "get-contexts", config=cfg)
    rows = [ln.split() for ln in p.stdout.strip().split("\n")]
    check(rows[0][:2] == ["CURRENT", "NAME"] and rows[1][:2] == ["*", "prod"] and
          rows[2][0] == "stale", "get-contexts:\n%s", p.stdout)
    check(X.run("config", "current-context", config=cfg).stdout == "prod\n", "current-context")
    X.run("config", "use-context", "local", config=cfg)
    check(X.run("config", "current-context", config=cfg).stdout == "local\n", "after use")
    check(os.stat(cfg).st_mode & 0o777 == 0o600, "mode %o", os.stat(cfg).st_mode & 0o777)
    check(sorted(os.listdir(home)) == ["ci.token", "config.yaml", "pki"], "left behind: %s",
          os.listdir(home))
    # The rewritten file keeps the relative paths, which still work.
    X.run("config", "use-context", "prod", config=cfg)
    with open(cfg) as f:
        text = f.read()
    check("tls_ca: pki/ca.pem" in text, "rewritten file:\n%s", text)
    _, calls = X.calls_of(["info"], config=cfg, cwd=elsewhere)
    check(len(calls) == 1 and calls[0][0] == "mtls", "calls %s", calls)
    X.refused(["config", "use-context", "nope"], 2, "no context 'nope'", "prod, stale, local",
              env={"TRAINCTL_CONFIG": cfg})
    # set-context from the command line: relative paths stored absolute.
    new = os.path.join(s.tmp, "new", "config.yaml")
    X.run("config", "set-context", "ci", "--addr", "localhost:%d" % X.srv.mtls,
          "--tls-ca", "certs/ca.pem", "--tls-cert", "certs/client.pem",
          "--tls-key", "certs/client.key", "--token-file", "token", config=new, cwd=X.dir)
    X.run("config", "use-context", "ci", config=new)
    _, calls = X.calls_of(["info"], config=new, cwd=elsewhere)
    check(calls == [("mtls", "GetDaemonInfo", "Bearer " + TOKEN, "alice")], "calls %s", calls)
    # --tls=false turns the context's TLS off: plaintext to a TLS port fails.
    X.refused(["info", "--tls=false", "--token-file", X.token], 3, "cannot reach traind",
              env={"TRAINCTL_CONFIG": new}, sent_nothing=True)


if __name__ == "__main__":
    try:
        rc = suite.run()
    finally:
        X.srv.stop()
        shutil.rmtree(X.dir, True)
    sys.exit(rc)
