#!/usr/bin/python3
"""traind under a service manager's notification socket (sd_notify).

usage: daemon_sdnotify.py TRAIND TRAINCTL SOURCE_DIR [CASE...]

A real traind is started with NOTIFY_SOCKET pointing at a datagram socket
this script listens on, as systemd does for Type=notify services (and with
WATCHDOG_USEC, as WatchdogSec= sets it):

  ready_watchdog_reload_stop  READY=1 (with a STATUS) only once the daemon
                              answers health checks SERVING; WATCHDOG=1
                              keep-alives at about half the interval;
                              RELOADING=1 then READY=1 on SIGHUP; STOPPING=1
                              on SIGTERM, and the daemon exits 0
  quiet_without_socket        without NOTIFY_SOCKET the daemon runs as usual

Prints one line per case, then "N passed, N failed".
"""
import os
import signal
import socket
import struct
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import traind_harness as th  # noqa: E402
from traind_harness import check  # noqa: E402

args = th.parse_args(__doc__.splitlines()[1])
suite = th.Suite(args)

# WatchdogSec=1s: keep-alives every half second, so a ping may come up to
# half a second late before a service manager would see a missed one.
WATCHDOG_USEC = 1000000
# Linux's SO_TIMESTAMPNS (asm-generic; Python's socket module lacks the
# name): each datagram carries the kernel's arrival time as a timespec, so
# the gaps measured are the daemon's, not this script's scheduling on a
# loaded machine.
SO_TIMESTAMPNS = 35
TIMESPEC = struct.Struct("@qq")


def listen(path):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    sock.settimeout(0.05)
    return sock


def recv(sock):
    """(arrival time, text) of the next datagram; socket.timeout if none."""
    data, anc, _, _ = sock.recvmsg(4096, socket.CMSG_SPACE(TIMESPEC.size))
    t = time.time()
    for level, kind, raw in anc:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(raw) >= TIMESPEC.size:
            sec, nsec = TIMESPEC.unpack(raw[:TIMESPEC.size])
            t = sec + nsec / 1e9
    return t, data.decode()


def drain(sock, into, seconds):
    """Collects datagrams (with their arrival times) for a while."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            into.append(recv(sock))
        except socket.timeout:
            pass
    return into


def drain_until(sock, pred, timeout, what):
    """Collects datagrams until pred(collected) holds; fails after
    `timeout` seconds with what was collected."""
    got = []
    end = time.monotonic() + timeout
    while not pred(got):
        if time.monotonic() > end:
            raise th.TestFailure("timed out after %.0f s waiting for %s; got %s"
                                 % (timeout, what, [m for _, m in got if "WATCHDOG=1" not in m]))
        try:
            got.append(recv(sock))
        except socket.timeout:
            pass
    return got


def messages(got, key):
    return [(t, m) for t, m in got if key in m.split("\n")]


@suite.case
def ready_watchdog_reload_stop(s):
    path = os.path.join(s.tmp, "notify.sock")
    sock = listen(path)
    env = dict(os.environ, NOTIFY_SOCKET=path, WATCHDOG_USEC=str(WATCHDOG_USEC))
    th.make_synthetic(s.tmp)
    d = s.daemon(data_dirs=[s.tmp], env=env)  # returns once health says SERVING
    got = drain(sock, [], 2.6)
    ready = messages(got, "READY=1")
    check(len(ready) == 1, "READY=1 sent %d times: %s", len(ready), got[:5])
    check(any(line.startswith("STATUS=serving on ") for line in ready[0][1].split("\n")),
          "READY without a STATUS: %r", ready[0][1])
    pings = [t for t, _ in messages(got, "WATCHDOG=1")]
    check(len(pings) >= 3, "%d watchdog pings in 2.6 s with WatchdogSec 1 s", len(pings))
    gaps = [b - a for a, b in zip(pings, pings[1:])]
    check(gaps and max(gaps) < WATCHDOG_USEC / 1e6,
          "a watchdog gap of %.3f s exceeds the interval", max(gaps) if gaps else -1)
    d.signal(signal.SIGHUP)

    def reloaded(got):
        rel = [m for _, m in got if "WATCHDOG=1" not in m.split("\n")]
        return rel and any("READY=1" in m.split("\n") for m in rel[1:])
    got = drain_until(sock, reloaded, 60, "RELOADING=1 and READY=1 after SIGHUP")
    rel = [m for _, m in got if "WATCHDOG=1" not in m.split("\n")]
    check("RELOADING=1" in rel[0].split("\n"), "SIGHUP: %s", rel)
    d.signal(signal.SIGTERM)
    drain_until(sock, lambda got: messages(got, "STOPPING=1"), 60, "STOPPING=1 after SIGTERM")
    # The SIGTERM above stops it: wait for the exit without signalling again.
    th.wait_for(lambda: not d.alive(), th.STOP_TIMEOUT, "the daemon to exit after SIGTERM")
    check(d.proc.returncode == 0, "the daemon exited %s after SIGTERM", d.proc.returncode)
    d.stop()  # reaps, checks the log for sanitizer reports
    sock.close()


@suite.case
def quiet_without_socket(s):
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC")}
    th.make_synthetic(s.tmp)
    d = s.daemon(data_dirs=[s.tmp], env=env)
    check("systemd watchdog" not in d.log(), "a watchdog without WATCHDOG_USEC")
    check(d.alive(), "the daemon is not running")


if __name__ == "__main__":
    sys.exit(suite.run())
