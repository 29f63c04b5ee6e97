#!/usr/bin/python3
"""grpc.health.v1 from another gRPC implementation.

Python's grpcio (Debian's python3-grpcio, stubs generated here from
proto/grpc/health/v1/health.proto with grpc_tools.protoc) calls Check and
Watch on rpc_test_server over TCP and over a unix socket:

  * Check of "", "traind.v1.Trainer" and an unknown service (NOT_FOUND);
  * Watch sees SERVING, then NOT_SERVING and SERVING again as the server is
    toggled with SIGUSR1, and SERVICE_UNKNOWN for an unknown service;
  * a Watch the client cancels, and one that is open when the server gets
    SIGTERM (it must end, and the server must exit 0).

Run with Debian's interpreter: the python3 first on PATH may not see
python3-grpcio.
"""
import argparse
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time


def generate_stubs(proto, out):
    # The proto is compiled from its own directory, so that the generated
    # modules are "health_pb2" and do not shadow the grpc package.
    from grpc_tools import protoc
    rc = protoc.main(["protoc", "-I" + os.path.dirname(proto),
                      "--python_out=" + out, "--grpc_python_out=" + out,
                      os.path.basename(proto)])
    if rc != 0:
        sys.exit("grpc_tools.protoc failed on %s" % proto)
    sys.path.insert(0, out)


class Watcher:
    """A Watch stream read by a thread into a queue."""

    def __init__(self, stub, service):
        self.call = stub.Watch(health_pb2.HealthCheckRequest(service=service),
                               timeout=60)
        self.q = queue.Queue()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        try:
            for msg in self.call:
                self.q.put(msg.status)
            self.q.put(("end", self.call.code()))
        except grpc.RpcError as e:
            self.q.put(("end", e.code()))

    def next(self, timeout=60):
        return self.q.get(timeout=timeout)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--server", required=True)
    ap.add_argument("--proto", required=True)
    args = ap.parse_args()

    failures = []

    def check(cond, what):
        print(("ok    " if cond else "FAIL  ") + what, flush=True)
        if not cond:
            failures.append(what)

    tmp = tempfile.mkdtemp(prefix="td-rpc-interop-")
    generate_stubs(args.proto, tmp)
    global grpc, health_pb2
    import grpc
    import health_pb2
    import health_pb2_grpc
    S = health_pb2.HealthCheckResponse

    sock = os.path.join(tmp, "health.sock")
    srv = subprocess.Popen([args.server, "127.0.0.1:0", "unix:" + sock],
                           stdout=subprocess.PIPE, text=True)
    try:
        ports = []
        for line in srv.stdout:
            if line.strip() == "ready":
                break
            ports.append(int(line.split()[1]))
        check(len(ports) == 2 and ports[0] > 0 and ports[1] == 0,
              "server reports its ports %s" % ports)
        targets = ["127.0.0.1:%d" % ports[0], "unix:" + sock]

        for target in targets:
            with grpc.insecure_channel(target) as ch:
                stub = health_pb2_grpc.HealthStub(ch)
                r = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
                check(r.status == S.SERVING, "%s: Check('') is SERVING" % target)
                r = stub.Check(health_pb2.HealthCheckRequest(service="traind.v1.Trainer"),
                               timeout=5)
                check(r.status == S.SERVING,
                      "%s: Check('traind.v1.Trainer') is SERVING" % target)
                try:
                    stub.Check(health_pb2.HealthCheckRequest(service="no.Such"), timeout=5)
                    check(False, "%s: Check of an unknown service fails" % target)
                except grpc.RpcError as e:
                    check(e.code() == grpc.StatusCode.NOT_FOUND
                          and e.details() == "unknown service",
                          "%s: unknown service is NOT_FOUND 'unknown service' (%s %r)"
                          % (target, e.code(), e.details()))

        # Watch over TCP: the current status, then every change.
        with grpc.insecure_channel(targets[0]) as ch:
            stub = health_pb2_grpc.HealthStub(ch)
            w = Watcher(stub, "traind.v1.Trainer")
            check(w.next() == S.SERVING, "Watch starts with SERVING")
            srv.send_signal(signal.SIGUSR1)
            check(w.next() == S.NOT_SERVING, "Watch sees NOT_SERVING")
            srv.send_signal(signal.SIGUSR1)
            check(w.next() == S.SERVING, "Watch sees SERVING again")
            w.call.cancel()
            end = w.next()
            check(end == ("end", grpc.StatusCode.CANCELLED),
                  "cancelled Watch ends CANCELLED (%s)" % (end,))

            u = Watcher(stub, "no.Such")
            check(u.next() == S.SERVICE_UNKNOWN, "Watch of an unknown service")
            u.call.cancel()
            u.next()

            # A Check still works on the same channel after the cancels.
            r = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
            check(r.status == S.SERVING, "Check after cancelled watches")

        # A Watch left open over the unix socket while the server stops.
        with grpc.insecure_channel(targets[1]) as ch:
            stub = health_pb2_grpc.HealthStub(ch)
            w = Watcher(stub, "")
            check(w.next() == S.SERVING, "unix Watch starts with SERVING")
            t0 = time.monotonic()
            srv.send_signal(signal.SIGTERM)
            got = [w.next()]
            while not isinstance(got[-1], tuple):
                got.append(w.next())
            check(got[0] == S.NOT_SERVING and got[-1][1] == grpc.StatusCode.UNAVAILABLE,
                  "open Watch hears NOT_SERVING, then UNAVAILABLE (%s)" % (got,))
            rc = srv.wait(timeout=60)
            check(rc == 0, "server exits 0 after SIGTERM (%s) in %.2f s"
                  % (rc, time.monotonic() - t0))
            check(not os.path.exists(sock), "socket file removed at exit")
    finally:
        if srv.poll() is None:
            srv.kill()
            srv.wait()
        shutil.rmtree(tmp, ignore_errors=True)

    if failures:
        print("%d check(s) failed" % len(failures))
        return 1
    print("all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
