#!/usr/bin/python3
"""trainctl against a real traind, on MNIST.

usage: daemon_trainctl.py TRAIND TRAINCTL SOURCE_DIR [CASE...]

  follow_unix            `trainctl submit config/jobs/mnist_mlp.yaml --follow`
  follow_tcp             (1 epoch) over a unix socket and over 127.0.0.1:PORT:
                         exit 0, plain lines (not a tty: no \\r, no escape
                         codes) ending with SUCCEEDED, test accuracy >= 95%
  reference_10_epochs    (long; only when named) the reference program as
                         shipped, 10 epochs, test accuracy >= 97%
  json_output            -o json of get, list, metrics, devices, info and
                         health parses as JSON with proto3 JSON names
                         (lowerCamelCase) and equals what Python grpcio gets;
                         -o csv of metrics has one row per point; list --state
  exit_codes             0 ok, 1 followed job FAILED, 2 bad input (flag, job
                         file, refused by the daemon), 3 unreachable, 4 not
                         found, 5 followed job CANCELLED
  unreachable_one_line   an unreachable daemon: exit 3, one line on stderr
                         naming the address, nothing on stdout
  bad_job_file           a job file that does not parse: exit 2, the line
                         number in the message, and the daemon never called
  env_addr               TRAIND_ADDR is used; --addr overrides it
  cancel_queued_running  `trainctl cancel` of a queued and of a running job
                         (stops within seconds, not at its end)
  restart_list_get       finished jobs are listed with their final metrics
                         by `trainctl list` / `get` after a daemon restart

MNIST comes from $TRAIND_DATA_DIR (skipped without it, exit 77; a failure
under CI=true). Every daemon is stopped with SIGTERM and must exit 0 with no
sanitizer report. Prints one line per case, then "N passed, N failed".
"""
import csv
import io
import json
import os
import re
import subprocess
import sys
import threading
import time

from google.protobuf import json_format

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import traind_harness as th  # noqa: E402
from traind_harness import check  # noqa: E402

args = th.parse_args(__doc__.splitlines()[1])
suite = th.Suite(args, needs_mnist=True)
pb = suite.pb
S = pb.JobState
ID_RE = re.compile(r"\bj-[0-9a-f]{8,}\b")
ESCAPES = re.compile(r"\x1b\[|\r")
# `trainctl cancel` of a running job (a process start, the call, the job
# stopping at its next step) and a followed job's end reaching trainctl:
# seconds at most, also on a loaded machine, against minutes of job left.
CANCEL_PROMPT = 5.0
FOLLOW_PROMPT = 5.0


def ctl(s, *argv, addr=None, ok=(0,), **kw):
    """Runs trainctl; checks the exit status is in `ok` (None: any)."""
    p = s.trainctl(*argv, addr=addr, **kw)
    if ok is not None:
        check(p.returncode in ok, "trainctl %s exited %d (expected %s)\nstdout: %s\nstderr: %s",
              " ".join(argv), p.returncode, "/".join(map(str, ok)), p.stdout[-2000:],
              p.stderr[-2000:])
    return p


def job_file(s, name, spec):
    return th.write_job(os.path.join(s.tmp, name), spec)


def ref(s, epochs=1, **kw):
    return th.reference_spec(s.source_dir, epochs, **kw)


def shipped_with_epochs(s, epochs, devices=0):
    """config/jobs/mnist_mlp.yaml as shipped, with training.epochs replaced
    in the text (so the file trainctl reads is the real one otherwise), and
    a devices section when devices is set."""
    with open(os.path.join(s.source_dir, "config/jobs/mnist_mlp.yaml")) as f:
        text = f.read()
    text, n = re.subn(r"(?m)^(\s*epochs:\s*)\d+", r"\g<1>%d" % epochs, text)
    check(n == 1, "could not find training.epochs in mnist_mlp.yaml")
    if devices:
        text += "\ndevices:\n  count: %d\n" % devices
    path = os.path.join(s.tmp, "mnist_mlp.yaml")
    with open(path, "w") as f:
        f.write(text)
    return path


def camel_keys_only(obj, where="$"):
    """Every object key is lowerCamelCase (no '_'), recursively."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            check("_" not in k, "key %r at %s is not a proto3 JSON name", k, where)
            camel_keys_only(v, where + "." + k)
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            camel_keys_only(v, "%s[%d]" % (where, i))


def parse_json(text, msg_type, what):
    try:
        obj = json.loads(text)
    except ValueError as e:
        raise th.TestFailure("%s -o json is not JSON (%s): %r" % (what, e, text[:300]))
    camel_keys_only(obj)
    try:
        m = json_format.ParseDict(obj, msg_type())
    except json_format.ParseError as e:
        raise th.TestFailure("%s -o json is not the proto3 JSON of %s: %s"
                             % (what, msg_type.DESCRIPTOR.full_name, e))
    return obj, m


def follow_and_check(s, addr, epochs, min_acc, devices=0):
    path = shipped_with_epochs(s, epochs, devices)
    t0 = time.monotonic()
    p = ctl(s, "submit", path, "--follow", addr=addr, timeout=1800)
    took = time.monotonic() - t0
    check(not ESCAPES.search(p.stdout), "--follow output off a tty has \\r or escape codes")
    lines = [ln for ln in p.stdout.splitlines() if ln.strip()]
    check(lines and ID_RE.search(lines[0]), "first line is not the job id: %r", lines[:1])
    jid = ID_RE.search(lines[0]).group(0)
    check("SUCCEEDED" in lines[-1] and jid in lines[-1],
          "last line does not give the final state: %r", lines[-1])
    epoch_lines = [ln for ln in lines if re.match(r"epoch \d+/%d\b" % epochs, ln)]
    check(len(epoch_lines) == epochs, "%d epoch lines for %d epochs:\n%s", len(epoch_lines),
          epochs, p.stdout[-1500:])
    g = ctl(s, "-o", "json", "get", jid, addr=addr)
    obj, job = parse_json(g.stdout, pb.Job, "get")
    check(job.state == S.SUCCEEDED, "job is %s", S.Name(job.state))
    check(job.progress.step == epochs * 468 and job.progress.epoch == epochs,
          "progress %d steps, %d epochs", job.progress.step, job.progress.epoch)
    acc = job.metrics.test_accuracy
    check(acc >= min_acc, "test accuracy %.4f < %.2f", acc, min_acc)
    if devices:
        check(job.spec.devices.count == devices, "the job asked for %d devices",
              job.spec.devices.count)
    print("  %s: %d epochs, test accuracy %.4f, %.1f s" % (addr.split(":")[0], epochs, acc,
                                                          took))
    return jid


@suite.case
def follow_unix(s):
    d = s.daemon(listen="both")
    follow_and_check(s, d.unix_addr, 1, 0.95)


@suite.case
def follow_tcp(s):
    d = s.daemon(listen="both")
    follow_and_check(s, d.tcp_addr, 1, 0.95)


@suite.case(long=True)
def reference_10_epochs(s):
    d = s.daemon(listen="both")
    follow_and_check(s, d.unix_addr, 10, 0.97)


@suite.case(long=True)
def reference_2_devices_10_epochs(s):
    # Data parallel over two CPU devices: the global batch of 128 is split
    # 64 + 64, the gradients averaged every step.
    d = s.daemon(listen="both", cpu_devices=2)
    jid = follow_and_check(s, d.unix_addr, 10, 0.97, devices=2)
    check(re.search(r"job started.*job=%s.*devices=2" % jid, d.log()),
          "the log does not show the job starting on 2 devices")


@suite.case
def two_devices_1_epoch(s):
    d = s.daemon(cpu_devices=2)
    jid = follow_and_check(s, d.unix_addr, 1, 0.95, devices=2)
    check(re.search(r"job started.*job=%s.*devices=2" % jid, d.log()),
          "the log does not show the job starting on 2 devices")


@suite.case
def json_output(s):
    d = s.daemon(cpu_devices=1)
    a = d.addr
    path = job_file(s, "small.yaml", ref(s, 2, train_limit=6000))
    p = ctl(s, "submit", path, "--follow", addr=a)
    jid = ID_RE.search(p.stdout).group(0)
    long_path = job_file(s, "long.yaml", ref(s, 50))
    p = ctl(s, "-o", "json", "submit", long_path, addr=a)
    _, resp = parse_json(p.stdout, pb.SubmitJobResponse, "submit")
    long_id = resp.job.id
    check(ID_RE.fullmatch(long_id), "submit -o json gave id %r", long_id)
    ctl(s, "cancel", long_id, addr=a)
    # get: the same message Python's client receives.
    obj, job = parse_json(ctl(s, "-o", "json", "get", jid, addr=a).stdout, pb.Job, "get")
    check(job == s.get(d, jid), "get -o json differs from GetJob")
    for key in ("id", "state", "spec", "created", "started", "finished", "progress",
                "metrics", "compileMs"):
        check(key in obj, "get -o json lacks %r (keys %s)", key, sorted(obj))
    check("totalSteps" in obj["progress"] and "testAccuracy" in obj["metrics"] and
          "inputShape" in obj["spec"]["model"], "camelCase names missing in get -o json")
    check(obj["state"] == "SUCCEEDED" and isinstance(obj["progress"]["step"], str),
          "enum or int64 not in the proto3 JSON form: %r %r", obj["state"],
          obj["progress"]["step"])
    check(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", obj["created"]),
          "timestamp %r is not RFC 3339", obj["created"])
    # list, with and without a state filter.
    _, lst = parse_json(ctl(s, "-o", "json", "list", addr=a).stdout, pb.ListJobsResponse,
                        "list")
    check([j.id for j in lst.jobs] == [long_id, jid], "list -o json ids %s",
          [j.id for j in lst.jobs])
    want = d.stub.ListJobs(pb.ListJobsRequest(), timeout=10)
    check(list(lst.jobs) == list(want.jobs), "list -o json differs from ListJobs")
    _, lst = parse_json(ctl(s, "-o", "json", "list", "--state", "cancelled", addr=a).stdout,
                        pb.ListJobsResponse, "list --state cancelled")
    check([j.id for j in lst.jobs] == [long_id], "list --state cancelled: %s",
          [j.id for j in lst.jobs])
    t = ctl(s, "list", "--state", "succeeded", addr=a).stdout
    check(jid in t and long_id not in t, "list --state succeeded (table):\n%s", t)
    # metrics, devices, info, health.
    _, m = parse_json(ctl(s, "-o", "json", "metrics", jid, addr=a).stdout,
                      pb.GetMetricsResponse, "metrics")
    check([p.step for p in m.steps] == list(range(1, 93)) and len(m.epochs) == 2,
          "metrics -o json: %d steps %d epochs", len(m.steps), len(m.epochs))
    rows = list(csv.DictReader(io.StringIO(ctl(s, "-o", "csv", "metrics", jid,
                                               addr=a).stdout)))
    steps = [int(r["step"]) for r in rows if r.get("kind") == "step"]
    check(steps == list(range(1, 93)), "metrics -o csv step rows %s..%s (%d)", steps[:2],
          steps[-2:], len(steps))
    check(len([r for r in rows if r.get("kind") == "epoch"]) == 2, "metrics -o csv epochs")
    _, dv = parse_json(ctl(s, "-o", "json", "devices", addr=a).stdout,
                       pb.ListDevicesResponse, "devices")
    check([x.id for x in dv.devices] == ["cpu:0"], "devices -o json %s", dv)
    _, info = parse_json(ctl(s, "-o", "json", "info", addr=a).stdout, pb.DaemonInfo, "info")
    check(info.jobs_total == 2 and list(info.listen) == [d.unix_addr], "info -o json %s", info)
    _, h = parse_json(ctl(s, "-o", "json", "health", addr=a).stdout,
                      s.stubs.health.HealthCheckResponse, "health")
    check(h.status == s.stubs.health.HealthCheckResponse.SERVING, "health -o json %s", h)


@suite.case
def exit_codes(s):
    d = s.daemon(cpu_devices=1)
    a = d.addr
    ok_path = job_file(s, "ok.yaml", ref(s, 1, train_limit=6000))
    jid = ID_RE.search(ctl(s, "submit", ok_path, "--follow", addr=a, ok=(0,)).stdout).group(0)
    ctl(s, "get", jid, addr=a, ok=(0,))
    ctl(s, "health", addr=a, ok=(0,))
    # 1: the followed job failed.
    nan = ref(s, 1, train_limit=6000)
    nan["optimizer"]["chain"] = [{"sgd": {"learning_rate": {"constant": 1e6}}}]
    p = ctl(s, "submit", job_file(s, "nan.yaml", nan), "--follow", addr=a, ok=(1,))
    check("FAILED" in p.stdout.strip().splitlines()[-1], "last line after a failure: %r",
          p.stdout.strip().splitlines()[-1:])
    check("NaN" in p.stdout + p.stderr, "the failure's reason is not shown")
    # 2: bad usage, a bad file, and input the daemon refuses.
    ctl(s, "list", "--no-such-flag", addr=a, ok=(2,))
    ctl(s, "get", addr=a, ok=(2,))
    ctl(s, "submit", os.path.join(s.tmp, "missing.yaml"), addr=a, ok=(2,))
    outside = ref(s, 1)
    outside["dataset"]["idx"]["dir"] = "../../etc"
    p = ctl(s, "submit", job_file(s, "outside.yaml", outside), addr=a, ok=(2,))
    check("escapes the data roots" in p.stderr, "refusal message: %r", p.stderr)
    p = ctl(s, "cancel", jid, addr=a, ok=(2, 6))
    check(p.returncode == 2, "cancel of a finished job exited %d; the help says 2 for "
          "FAILED_PRECONDITION", p.returncode)
    # 3: nobody listening.
    ctl(s, "list", addr="unix:" + os.path.join(s.tmp, "nobody.sock"), ok=(3,))
    # 4: unknown ids.
    for cmd in ("get", "cancel", "metrics"):
        p = ctl(s, cmd, "j-0000000000dead", addr=a, ok=(4,))
        check("j-0000000000dead" in p.stderr, "%s: message %r", cmd, p.stderr)
    # 5: the followed job is cancelled by someone else.
    long_path = job_file(s, "long.yaml", ref(s, 50))
    f = subprocess.Popen([s.trainctl_bin, "--addr", a, "submit", long_path, "--follow"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         stdin=subprocess.DEVNULL)
    # trainctl flushes each line: its first epoch line shows that it is
    # following the stream (not still starting) when the cancel comes.
    lines, following = [], threading.Event()

    def read_stdout():
        for ln in f.stdout:
            lines.append(ln)
            if re.match(r"epoch \d+/50\b", ln):
                following.set()
    reader = threading.Thread(target=read_stdout, daemon=True)
    reader.start()
    try:
        long_id = th.wait_for(lambda: [j.id for j in d.stub.ListJobs(
            pb.ListJobsRequest(states=[S.RUNNING]), timeout=10).jobs], 60,
            "the followed job to run")[0]
        check(following.wait(120), "trainctl --follow printed no epoch line: %r", lines)
        ctl(s, "cancel", long_id, addr=a, ok=(0,))
        t0 = time.monotonic()
        f.wait(timeout=30)
        took = time.monotonic() - t0
        reader.join(30)
        err = f.stderr.read()
    finally:
        if f.poll() is None:
            f.kill()
            f.wait()
    out = "".join(lines)
    check(f.returncode == 5, "follow of a cancelled job exited %d\n%s\n%s", f.returncode,
          out[-1000:], err[-1000:])
    check("CANCELLED" in out.strip().splitlines()[-1], "last line after cancel: %r",
          out.strip().splitlines()[-1:])
    check(not ESCAPES.search(out), "follow output has \\r or escape codes")
    check(took < FOLLOW_PROMPT, "follow took %.2f s to end after the cancel (limit %.0f s)",
          took, FOLLOW_PROMPT)


@suite.case
def unreachable_one_line(s):
    for addr in ("unix:" + os.path.join(s.tmp, "nobody.sock"),
                 "127.0.0.1:%d" % th.free_port()):
        for argv in (["list"], ["get", "j-0000000000dead"], ["health"], ["devices"],
                     ["submit", th.write_job(os.path.join(s.tmp, "j.yaml"),
                                             ref(s, 1)), "--follow"]):
            t0 = time.monotonic()
            p = ctl(s, *argv, addr=addr, ok=(3,), timeout=60)
            took = time.monotonic() - t0
            lines = p.stderr.splitlines()
            check(len(lines) == 1, "%s: stderr has %d lines: %r", argv[0], len(lines),
                  p.stderr)
            check(lines[0].startswith("trainctl:") and addr in lines[0],
                  "%s: the error does not name %s: %r", argv[0], addr, lines[0])
            check(p.stdout == "", "%s: stdout %r", argv[0], p.stdout)
            check(took < 15, "%s: took %.1f s to give up", argv[0], took)


@suite.case
def bad_job_file(s):
    d = s.daemon()
    nowhere = "unix:" + os.path.join(s.tmp, "nobody.sock")
    good = th.reference_spec(s.source_dir, 1)
    import yaml
    text = yaml.safe_dump(good, sort_keys=False).splitlines()
    # An unknown key on a known line.
    i = next(n for n, ln in enumerate(text) if ln.startswith("training:"))
    unknown = text[:i + 1] + ["  epochz: 3"] + text[i + 1:]
    # A value of the wrong type.
    wrong = [ln.replace("batch_size: 128", "batch_size: lots") for ln in text]
    j = next(n for n, ln in enumerate(wrong) if "batch_size" in ln)
    # YAML that does not parse: an unclosed flow sequence.
    broken = text[:3] + ["  input_shape: [784,"] + text[4:]
    cases = [("unknown.yaml", unknown, i + 2, "epochz"),
             ("wrong.yaml", wrong, j + 1, "batch_size"),
             ("broken.yaml", broken, None, None)]
    for name, lines, line_no, word in cases:
        path = os.path.join(s.tmp, name)
        with open(path, "w") as f:
            f.write("\n".join(lines) + "\n")
        for addr in (d.addr, nowhere):
            p = ctl(s, "submit", path, addr=addr, ok=(2,))
            err = p.stderr.strip()
            check(len(err.splitlines()) == 1, "%s: stderr %r", name, err)
            m = re.search(r"line (\d+)", err)
            check(m, "%s: no line number in %r", name, err)
            if line_no:
                check(int(m.group(1)) == line_no, "%s: line %s, expected %d: %r", name,
                      m.group(1), line_no, err)
                check(word in err, "%s: %r does not name %s", name, err, word)
            else:
                check(1 <= int(m.group(1)) <= len(lines) + 1, "%s: line %s", name,
                      m.group(1))
            check(name in err, "%s: the message does not name the file: %r", name, err)
    jobs = d.stub.ListJobs(pb.ListJobsRequest(), timeout=10).jobs
    check(len(jobs) == 0, "bad job files reached the daemon: %d jobs", len(jobs))
    check("job queued" not in d.log(), "the daemon queued a job from a bad file")


@suite.case
def env_addr(s):
    d = s.daemon(listen="both")
    nowhere = "unix:" + os.path.join(s.tmp, "nobody.sock")
    for addr in (d.unix_addr, d.tcp_addr):
        p = ctl(s, "health", env={"TRAIND_ADDR": addr})
        check("SERVING" in p.stdout, "health via TRAIND_ADDR=%s: %r", addr, p.stdout)
        p = ctl(s, "info", "-o", "json", env={"TRAIND_ADDR": addr})
        check(json.loads(p.stdout)["version"], "info via TRAIND_ADDR")
    p = ctl(s, "health", env={"TRAIND_ADDR": nowhere}, ok=(3,))
    check(nowhere in p.stderr, "the error does not name TRAIND_ADDR's value: %r", p.stderr)
    ctl(s, "health", addr=d.unix_addr, env={"TRAIND_ADDR": nowhere}, ok=(0,))
    p = ctl(s, "health", addr=nowhere, env={"TRAIND_ADDR": d.unix_addr}, ok=(3,))
    check(nowhere in p.stderr, "--addr did not override TRAIND_ADDR: %r", p.stderr)


@suite.case
def cancel_queued_running(s):
    d = s.daemon(cpu_devices=1)
    a = d.addr
    long_path = job_file(s, "long.yaml", ref(s, 50))
    first = ID_RE.search(ctl(s, "submit", long_path, addr=a).stdout).group(0)
    second = ID_RE.search(ctl(s, "submit", long_path, addr=a).stdout).group(0)
    s.wait_state(d, first, S.RUNNING)
    check(s.state(d, second) == S.QUEUED, "second job not QUEUED")
    p = ctl(s, "cancel", second, addr=a)
    check("CANCELLED" in p.stdout, "cancel of a queued job printed %r", p.stdout)
    check(s.state(d, second) == S.CANCELLED, "queued job not cancelled")
    s.wait_steps(d, first, 20)
    t0 = time.monotonic()
    p = ctl(s, "-o", "json", "cancel", first, addr=a)
    took = time.monotonic() - t0
    _, j = parse_json(p.stdout, pb.Job, "cancel")
    check(j.state == S.CANCELLED, "cancel -o json state %s", S.Name(j.state))
    check(took < CANCEL_PROMPT, "cancelling the running job took %.2f s (limit %.0f s)", took,
          CANCEL_PROMPT)


@suite.case
def restart_list_get(s):
    d = s.daemon(cpu_devices=1)
    a = d.addr
    ok_id = ID_RE.search(ctl(s, "submit", job_file(s, "ok.yaml", ref(s, 1, train_limit=6000)),
                             "--follow", addr=a).stdout).group(0)
    gone = ID_RE.search(ctl(s, "submit", job_file(s, "l.yaml", ref(s, 50)),
                            addr=a).stdout).group(0)
    s.wait_state(d, gone, S.RUNNING)
    ctl(s, "cancel", gone, addr=a)
    before = json.loads(ctl(s, "-o", "json", "list", addr=a).stdout)
    d.restart()
    a = d.addr
    after = json.loads(ctl(s, "-o", "json", "list", addr=a).stdout)
    check(after == before, "list -o json changed across the restart")
    ids = [j["id"] for j in after["jobs"]]
    check(ids == [gone, ok_id], "listed after restart: %s", ids)
    ok = after["jobs"][1]
    check(ok["state"] == "SUCCEEDED" and ok["metrics"]["testAccuracy"] > 0.8,
          "finished job after restart: %s %s", ok["state"], ok.get("metrics"))
    t = ctl(s, "list", addr=a).stdout
    check(ok_id in t and gone in t and "SUCCEEDED" in t and "CANCELLED" in t,
          "list table after restart:\n%s", t)
    g = ctl(s, "get", ok_id, addr=a).stdout
    acc = "%.2f%%" % (100 * ok["metrics"]["testAccuracy"])
    check("SUCCEEDED" in g and acc in g, "get after restart does not show %s:\n%s", acc, g)


if __name__ == "__main__":
    sys.exit(suite.run())
