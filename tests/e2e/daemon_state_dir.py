#!/usr/bin/python3
"""The state directory under hostile records, crashes and many devices.

usage: daemon_state_dir.py TRAIND TRAINCTL SOURCE_DIR [CASE...]

A real traind on a temporary unix socket and state directory, with a
synthetic HDF5 dataset (no MNIST needed), driven with Python grpcio (stubs
generated from proto/); records are written into STATE_DIR/jobs/ with the
same generated protobuf classes:

  bad_records              records that are QUEUED or RUNNING without
                           training, without dataset, with a dataset without
                           a source, with state 99 or UNSPECIFIED: the daemon
                           starts, each job is listed FAILED with the reason
                           and CancelJob answers at once; the record is set
                           aside as ID.pb.bad. Records that name no job of
                           their own (id ../../victim, an empty id, the
                           hidden jobs/.pb, a copy under another name, not
                           protobuf), a FIFO, a symbolic link, a directory
                           and an oversized file are set aside and logged;
                           nothing outside the state directory is touched;
                           a good job's record and checkpoints stay byte for
                           byte; a second restart changes nothing
  ids_unique               200 concurrent submissions get 200 distinct ids,
                           each with its own record; after a restart with a
                           record whose id is far ahead of the clock, new
                           ids come after it; a record file put in the way
                           of the next id is not overwritten
  malformed_ids            every RPC taking a job id: malformed ids are
                           INVALID_ARGUMENT, unknown well-formed ones
                           NOT_FOUND; the daemon serves on
  crash_loop               a job that kills the daemon when it runs: with a
                           real OOM kill in a memory cgroup where this
                           machine allows one, otherwise kill -9 at the same
                           point (the output says which); after 2 such stops
                           the restarted daemon lists it FAILED with "the
                           daemon stopped 2 times while running this job;
                           last ...", the other jobs' records and checkpoints
                           are intact, and the queue behind it runs
  crash_limit_config       job_crash_limit 1 in the config file: one kill -9
                           fails the job; a drain (SIGTERM) while a job runs
                           does not count
  many_devices             --cpu-devices 80 and a job on 65 devices: it runs
                           on 65 distinct devices (Job.devices, ListDevices)
                           and trains to the end; 81 devices are refused

Every daemon is stopped with SIGTERM and must exit 0 with no sanitizer
report. Prints one line per case, then "N passed, N failed".
"""
import concurrent.futures
import hashlib
import os
import re
import signal
import stat
import sys
import time

import grpc

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import traind_harness as th  # noqa: E402
from traind_harness import check, expect_status, rpc_error  # noqa: E402

args = th.parse_args(__doc__.splitlines()[1])
suite = th.Suite(args)
pb = suite.pb
S = pb.JobState
C = grpc.StatusCode
ID_RE = re.compile(r"j-[0-9a-f]{14}")
LONG = 20000  # epochs: minutes of training; cases cancel or stop it


def spec(epochs=1, **kw):
    return th.synthetic_spec(suite.source_dir, epochs=epochs, **kw)


def tiny(epochs=1, **kw):
    """784 -> dense(10), batch 8: fast steps."""
    sp = spec(epochs, **kw)
    sp["model"]["layers"] = [{"dense": {"features": 10}}]
    sp["training"]["batch_size"] = 8
    return sp


def daemon(**kw):
    th.make_synthetic(suite.tmp)
    return suite.daemon(data_dirs=[suite.tmp], **kw)


def jobs_dir(d):
    return os.path.join(d.state_dir, "jobs")


def listed(d):
    return {j.id: j for j in d.stub.ListJobs(pb.ListJobsRequest(page_size=1000),
                                              timeout=10).jobs}


def alive(d, what):
    check(d.alive(), "the daemon died after %s:\n%s", what, th.tail(d.log()))
    r = d.health.Check(suite.stubs.health.HealthCheckRequest(service=""), timeout=10)
    check(r.status == suite.stubs.health.HealthCheckResponse.SERVING,
          "health is %s after %s", r.status, what)


def digest_tree(path):
    """{relative path: sha256} of every file under path."""
    out = {}
    for root, _, files in os.walk(path):
        for f in files:
            p = os.path.join(root, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, path)] = hashlib.sha256(fh.read()).hexdigest()
    return out


def record_bytes(d, job_id):
    with open(os.path.join(jobs_dir(d), job_id + ".pb"), "rb") as f:
        return f.read()


def write_record(d, name, job):
    with open(os.path.join(jobs_dir(d), name), "wb") as f:
        f.write(job.SerializeToString())


def good_job(s, d):
    """A finished job with checkpoints: what must stay intact."""
    j = s.submit(d, tiny(2, checkpoint={"every_steps": 100}), name="good")
    s.wait_state(d, j.id, S.SUCCEEDED, 120)
    return j.id


def intact(d, job_id, rec, ckpts):
    check(record_bytes(d, job_id) == rec, "the record of %s changed", job_id)
    now = digest_tree(os.path.join(d.state_dir, "checkpoints", job_id))
    check(now == ckpts and ckpts, "the checkpoints of %s changed: %s -> %s", job_id,
          sorted(ckpts), sorted(now))


# ------------------------------------------------------------ bad records


@suite.case
def bad_records(s):
    d = daemon(cpu_devices=1)
    gid = good_job(s, d)
    d.stop()
    rec, ckpts = record_bytes(d, gid), digest_tree(os.path.join(d.state_dir, "checkpoints", gid))
    jdir = jobs_dir(d)
    base = th.spec_msg(s.stubs, tiny(1))

    def rec_of(jid, state=S.QUEUED, sp=None, drop=None):
        j = pb.Job(id=jid, name="bad-" + jid[-2:], state=state)
        j.spec.CopyFrom(sp if sp is not None else base)
        if drop == "spec":
            j.ClearField("spec")
        elif drop == "source":
            j.spec.dataset.ClearField("hdf5")
            j.spec.dataset.SetInParent()
            check(j.spec.HasField("dataset"), "test setup: the dataset must stay present")
        elif drop:
            j.spec.ClearField(drop)
        return j

    # Records that name their own job but cannot run as they are: listed
    # FAILED, with the reason.
    failed = {
        "j-00000000000a01": (rec_of("j-00000000000a01", drop="training"), "training"),
        "j-00000000000a02": (rec_of("j-00000000000a02", drop="dataset"), "dataset"),
        "j-00000000000a03": (rec_of("j-00000000000a03", drop="source"), "dataset"),
        "j-00000000000a04": (rec_of("j-00000000000a04", S.RUNNING, drop="training"),
                             "training"),
        "j-00000000000a05": (rec_of("j-00000000000a05", 99), "state"),
        "j-00000000000a06": (rec_of("j-00000000000a06", S.JOB_STATE_UNSPECIFIED), "state"),
        "j-00000000000a07": (rec_of("j-00000000000a07", S.RUNNING, drop="spec"), "spec"),
    }
    for jid, (j, _) in failed.items():
        write_record(d, jid + ".pb", j)
    # Records that name no job of their own: set aside and logged only.
    work = os.path.dirname(d.state_dir)
    os.makedirs(os.path.join(work, "victim"))
    precious = os.path.join(work, "victim", ".precious.tmp")
    with open(precious, "w") as f:
        f.write("outside the state directory")
    with open(os.path.join(work, "victim.pb"), "w") as f:
        f.write("outside the state directory")
    aside_only = {
        "j-00000000000b01.pb": rec_of("../../victim"),
        "j-00000000000b02.pb": rec_of(""),
        ".pb": rec_of(""),
        "j-00000000000b03.pb": pb.Job.FromString(rec),  # a copy of the good record
        "j-00000000000b04.pb": b"\xff\xff\xff\xffnot a record",
        "J-UPPER.pb": rec_of("J-UPPER"),
        # A name that is not UTF-8 would break every ListJobs reply.
        "j-00000000000b05.pb": rec_of("j-00000000000b05").SerializeToString().replace(
            b"bad-05", b"bad\xff\xfe5"),
    }
    for name, j in aside_only.items():
        with open(os.path.join(jdir, name), "wb") as f:
            f.write(j if isinstance(j, bytes) else j.SerializeToString())
    os.mkfifo(os.path.join(jdir, "j-00000000000c01.pb"))
    os.symlink("/etc/passwd", os.path.join(jdir, "j-00000000000c02.pb"))
    os.mkdir(os.path.join(jdir, "j-00000000000c03.pb"))
    with open(os.path.join(jdir, "j-00000000000c04.pb"), "wb") as f:
        f.truncate((8 << 20) + 1)
    outside = os.path.join(work, "victim")

    t0 = time.monotonic()
    d.start()
    check(time.monotonic() - t0 < th.START_TIMEOUT, "the start took %.1f s",
          time.monotonic() - t0)
    alive(d, "loading the bad records")
    jobs = listed(d)
    check(set(jobs) == {gid} | set(failed), "jobs listed: %s; expected the good one and %s",
          sorted(jobs), sorted(failed))
    for jid, (_, word) in failed.items():
        j = jobs[jid]
        check(j.state == S.FAILED, "%s is %s, expected FAILED", jid, S.Name(j.state))
        check(j.error_code == C.INVALID_ARGUMENT.value[0], "%s: error_code %d", jid,
              j.error_code)
        check("set aside as jobs/%s.pb.bad" % jid in j.error and word in j.error,
              "%s: the error %r does not name %r and the file set aside", jid, j.error, word)
        check(os.path.isfile(os.path.join(jdir, jid + ".pb.bad")), "%s.pb.bad is missing", jid)
        # No limbo: CancelJob answers at once.
        e = rpc_error(d.stub.CancelJob, pb.CancelJobRequest(id=jid), timeout=10,
                      what="CancelJob of %s" % jid)
        expect_status(e, C.FAILED_PRECONDITION, "already ended")
    log = d.log()
    for name in list(aside_only) + ["j-00000000000c0%d.pb" % i for i in range(1, 5)]:
        check(os.path.lexists(os.path.join(jdir, name + ".bad")),
              "%s was not set aside as %s.bad", name, name)
        check(not os.path.lexists(os.path.join(jdir, name)), "%s is still in jobs/", name)
        check("file=jobs/%s " % name in log,
              "the log does not name %s", name)
    for name, why in (("j-00000000000c01.pb", "a FIFO"), ("j-00000000000c02.pb", "symbolic link"),
                      ("j-00000000000c03.pb", "a directory"), ("j-00000000000c04.pb", "bytes"),
                      ("j-00000000000b03.pb", "holds job %s" % gid),
                      ("j-00000000000b01.pb", "not a job id"),
                      ("j-00000000000b05.pb", "record.name: not valid UTF-8")):
        line = [x for x in log.splitlines() if "file=jobs/%s " % name in x]
        check(line and why in line[0], "the log line for %s does not say %r: %s", name, why, line)
    check(os.path.isfile(precious) and os.path.isfile(os.path.join(work, "victim.pb")),
          "files outside the state directory were removed")
    check(sorted(os.listdir(outside)) == [".precious.tmp"], "the outside directory changed")
    intact(d, gid, rec, ckpts)
    # A new job runs, and everything stays as it is over a second restart.
    n = s.submit(d, tiny(1), name="after")
    s.wait_state(d, n.id, S.SUCCEEDED, 120, "a job submitted after the bad records")
    before = {k: v for k, v in listed(d).items()}
    entries = sorted(os.listdir(jdir))
    d.restart()
    after = listed(d)
    check(after == before, "a second restart changed the listing")
    check(sorted(os.listdir(jdir)) == entries, "a second restart changed jobs/: %s -> %s",
          entries, sorted(os.listdir(jdir)))
    intact(d, gid, rec, ckpts)


# ---------------------------------------------------------------- ids


@suite.case
def ids_unique(s):
    d = daemon(cpu_devices=1)
    blocker = s.submit(d, tiny(LONG), name="blocker")
    s.wait_state(d, blocker.id, S.RUNNING)
    n = 200
    sp = tiny(1)

    def one(i):
        return s.submit(d, sp, name="q%d" % i).id
    with concurrent.futures.ThreadPoolExecutor(8) as ex:
        ids = list(ex.map(one, range(n)))
    check(len(set(ids)) == n, "%d distinct ids for %d submissions", len(set(ids)), n)
    check(all(ID_RE.fullmatch(i) for i in ids), "ids not of the form j-<14 hex>: %s",
          [i for i in ids if not ID_RE.fullmatch(i)][:5])
    names = [x for x in os.listdir(jobs_dir(d)) if x.endswith(".pb")]
    check(sorted(names) == sorted(i + ".pb" for i in ids + [blocker.id]),
          "%d records on disk for %d jobs", len(names), n + 1)
    check(len(listed(d)) == n + 1, "%d jobs listed", len(listed(d)))
    d.stop()
    # A record with an id far ahead of the clock: ids made after it pass it.
    ahead = "j-7fffffff000005"
    r = pb.Job.FromString(record_bytes(d, ids[0]))
    r.id = ahead
    r.state = S.CANCELLED
    write_record(d, ahead + ".pb", r)
    d.start()
    check(len(listed(d)) == n + 2, "%d jobs listed after the restart", len(listed(d)))
    # The next id would be j-7fffffff000006: a file put there first is not
    # overwritten, the job takes the one after.
    in_the_way = os.path.join(jobs_dir(d), "j-7fffffff000006.pb")
    r.id = "j-7fffffff000006"
    with open(in_the_way, "wb") as f:
        f.write(r.SerializeToString())
    planted = r.SerializeToString()
    new = s.submit(d, sp, name="after-restart")
    check(new.id > ahead and len(new.id) == len(ahead),
          "the id made after loading %s is %s", ahead, new.id)
    check(new.id != "j-7fffffff000006", "the new job took the name of a file in the way")
    with open(in_the_way, "rb") as f:
        check(f.read() == planted, "the record file in the way was overwritten")
    check(os.path.isfile(os.path.join(jobs_dir(d), new.id + ".pb")), "no record for %s", new.id)
    d.restart()
    jobs = listed(d)
    check(len(jobs) == n + 4 and ahead in jobs and "j-7fffffff000006" in jobs and new.id in jobs,
          "after a second restart %d jobs listed", len(jobs))


@suite.case
def malformed_ids(s):
    d = daemon(cpu_devices=1)
    j = s.submit(d, tiny(LONG), name="known")
    s.wait_state(d, j.id, S.RUNNING)
    st = d.stub
    calls = (
        ("GetJob", lambda i: st.GetJob(pb.GetJobRequest(id=i), timeout=10)),
        ("CancelJob", lambda i: st.CancelJob(pb.CancelJobRequest(id=i), timeout=10)),
        ("GetMetrics", lambda i: st.GetMetrics(pb.GetMetricsRequest(id=i), timeout=10)),
        ("WatchMetrics", lambda i: list(st.WatchMetrics(pb.WatchMetricsRequest(id=i),
                                                        timeout=10))),
        ("SaveCheckpoint", lambda i: st.SaveCheckpoint(pb.SaveCheckpointRequest(id=i),
                                                       timeout=10)),
        ("ExportCheckpoint", lambda i: list(st.ExportCheckpoint(
            pb.ExportCheckpointRequest(id=i), timeout=10))),
        ("Sample", lambda i: st.Sample(pb.SampleRequest(id=i, prompt="A", tokens=1),
                                       timeout=10)),
        ("GetExamples", lambda i: st.GetExamples(pb.GetExamplesRequest(id=i), timeout=10)),
    )
    bad = ["", "../../victim", "j-", "J-ABC", "j-abc/../x", "j-" + "a" * 30, "x" * 300,
           j.id + "/", j.id.upper(), "j-ab cd", "j-\u00e9"]
    for name, call in calls:
        for i in bad:
            e = rpc_error(call, i, what="%s of %r" % (name, i[:20]))
            expect_status(e, C.INVALID_ARGUMENT, "id")
            check("required" in e.details() if not i else "not a job id" in e.details(),
                  "%s of %r: message %r", name, i[:20], e.details())
        for i in ("j-00000000000000", "j-nosuchjob", "j-" + "z" * 29):
            e = rpc_error(call, i, what="%s of %r" % (name, i))
            expect_status(e, C.NOT_FOUND, i)
        alive(d, name + " with malformed ids")
    check(s.state(d, j.id) == S.RUNNING, "the running job was disturbed")
    st.CancelJob(pb.CancelJobRequest(id=j.id), timeout=30)


# ---------------------------------------------------------- crash loops


def _cgroup_mounts():
    """{'v1': memory hierarchy mount, 'v2': cgroup2 mount} from mountinfo."""
    out = {}
    with open("/proc/self/mountinfo") as f:
        for line in f:
            parts = line.split()
            sep = parts.index("-")
            fstype, opts = parts[sep + 1], parts[sep + 3] if len(parts) > sep + 3 else ""
            mnt = parts[4]
            if fstype == "cgroup2" and "v2" not in out:
                out["v2"] = mnt
            elif fstype == "cgroup" and "memory" in opts.split(",") + parts[5].split(","):
                out["v1"] = mnt
    return out


def memory_cgroup(limit):
    """A new memory cgroup limited to `limit` bytes with no swap, that this
    process may move a child into: (path, kind), or (None, why not).
    TRAIND_TEST_NO_CGROUP=1 in the environment says no (to run the kill -9
    path where a cgroup would work)."""
    if os.environ.get("TRAIND_TEST_NO_CGROUP") == "1":
        return None, "TRAIND_TEST_NO_CGROUP=1"
    with open("/proc/self/cgroup") as f:
        mine = dict((c, p) for _, c, p in (line.rstrip("\n").split(":", 2) for line in f))
    mounts = _cgroup_mounts()
    tries = []
    if "v2" in mounts and "" in mine:
        tries.append(("v2", os.path.join(mounts["v2"], mine[""].lstrip("/"))))
    if "v1" in mounts:
        for key in mine:
            if "memory" in key.split(","):
                tries.append(("v1", os.path.join(mounts["v1"], mine[key].lstrip("/"))))
    why = []
    for kind, parent in tries:
        path = os.path.join(parent, "traind-test-%d" % os.getpid())
        try:
            os.mkdir(path)
        except OSError as e:
            why.append("%s: cannot create a cgroup under %s (%s)" % (kind, parent, e.strerror))
            continue
        try:
            if kind == "v2":
                with open(os.path.join(path, "memory.max"), "w") as f:
                    f.write(str(limit))
                if os.path.exists(os.path.join(path, "memory.swap.max")):
                    with open(os.path.join(path, "memory.swap.max"), "w") as f:
                        f.write("0")
            else:
                with open(os.path.join(path, "memory.limit_in_bytes"), "w") as f:
                    f.write(str(limit))
                sw = os.path.join(path, "memory.memsw.limit_in_bytes")
                if os.path.exists(sw):
                    with open(sw, "w") as f:
                        f.write(str(limit))
                with open(os.path.join(path, "memory.oom_control")) as f:
                    check("oom_kill_disable 0" in f.read(), "OOM killer disabled")
            return path, kind
        except (OSError, th.TestFailure) as e:
            why.append("%s: %s has no usable memory limit (%s)" % (kind, path, e))
            os.rmdir(path)
    return None, "; ".join(why) or "no memory cgroup hierarchy is mounted"


def oom_kills(path, kind):
    name = "memory.events" if kind == "v2" else "memory.oom_control"
    with open(os.path.join(path, name)) as f:
        for line in f:
            if line.startswith("oom_kill "):
                return int(line.split()[1])
    return 0


class CgroupDaemon(th.Daemon):
    """A daemon that starts inside the cgroup at `cgroup` (its pid written
    to cgroup.procs before the exec, so the pid stays the daemon's)."""
    cgroup = None

    def argv(self):
        a = super().argv()
        if not self.cgroup:
            return a
        return ["/bin/sh", "-c", 'echo $$ > "$0/cgroup.procs" && exec "$@"', self.cgroup] + a


def crash_sequence(s, d, victim_id, crash, n_crashes):
    """Restarts the daemon and lets `crash` stop it while the victim runs,
    n_crashes times; each time the record must say RUNNING when it dies."""
    for k in range(n_crashes):
        crash(k)
        rec = d.records()[victim_id]
        check(rec.state == S.RUNNING, "crash %d: the victim's record says %s, not RUNNING",
              k + 1, S.Name(rec.state))
        check(rec.crash_count == k, "crash %d: the record counts %d earlier stops", k + 1,
              rec.crash_count)


@suite.case
def crash_loop(s):
    th.make_synthetic(s.tmp)
    limit = 512 << 20
    cg, kind = memory_cgroup(limit)
    # The memory the daemon admits jobs against, set far above the cgroup's
    # limit (a misconfiguration, or an estimate that falls short): the
    # kernel's OOM killer, not admission, stops the job.
    cfg = None
    with open(os.path.join(s.source_dir, "proto/traind/v1/config.proto")) as f:
        if cg and "memory_limit_bytes" in f.read():
            cfg = os.path.join(s.tmp, "traind.yaml")
            with open(cfg, "w") as f:
                f.write("memory_limit_bytes: %d\n" % (16 << 30))
    d = CgroupDaemon(s.traind, s.tmp, data_dirs=[s.tmp], cpu_devices=1, stubs=s.stubs,
                     config=cfg).start()
    gid = good_job(s, d)
    blocker = s.submit(d, tiny(LONG), name="blocker")
    s.wait_state(d, blocker.id, S.RUNNING)
    th.wait_for(lambda: s.get(d, blocker.id).progress.step > 10, 60, "the blocker's steps")
    if cg:
        # About 850 MB of parameters, gradients and Adam state, written in
        # the first step: past the cgroup's limit.
        hog = spec(1)
        hog["model"]["layers"] = [{"dense": {"features": 1 << 16}}, {"relu": {}},
                                  {"dense": {"features": 10}}]
        print("crash_loop: a real OOM kill: the daemon runs in a memory cgroup (%s, %d MiB) "
              "and the job needs about 850 MB" % (kind, limit >> 20), flush=True)
    else:
        hog = tiny(LONG)
        print("crash_loop: kill -9 once the job runs (no memory cgroup here: %s)" % kind,
              flush=True)
    hog["priority"] = 10
    victim = s.submit(d, hog, name="victim")
    behind = s.submit(d, tiny(1), name="behind")
    check(s.state(d, victim.id) == S.QUEUED, "the victim did not wait for the blocker")
    d.stop()
    rec, ckpts = record_bytes(d, gid), digest_tree(os.path.join(d.state_dir, "checkpoints", gid))
    blocker_ckpts = digest_tree(os.path.join(d.state_dir, "checkpoints", blocker.id))
    check(blocker_ckpts, "the drained blocker wrote no shutdown checkpoint")
    blocker_spec = d.records()[blocker.id].spec

    def oom(k):
        before = oom_kills(cg, kind)
        d.cgroup = cg
        # Started without waiting for health: the job may kill it first.
        d.stubs = None
        try:
            d.start()
        finally:
            d.stubs = s.stubs
        th.wait_for(lambda: d.proc.poll() is not None, 120, "crash %d: the OOM kill" % (k + 1),
                    0.05)
        rc = d.proc.returncode
        d.kill()
        check(rc == -signal.SIGKILL, "crash %d: the daemon exited %s, expected SIGKILL by the "
              "OOM killer", k + 1, rc)
        check(oom_kills(cg, kind) > before, "crash %d: the cgroup counts no OOM kill", k + 1)

    def kill9(k):
        d.start()
        s.wait_state(d, victim.id, S.RUNNING, 60)
        th.wait_for(lambda: d.records()[victim.id].state == S.RUNNING, 10,
                    "the RUNNING record on disk")
        d.kill()

    try:
        crash_sequence(s, d, victim.id, oom if cg else kill9, 2)
    finally:
        if cg:
            d.cgroup = None
            d.kill()

            def removed():
                try:
                    os.rmdir(cg)
                    return True
                except OSError:
                    return False
            th.wait_for(removed, 10, "the test's cgroup to be removed")
    d.start()
    j = s.get(d, victim.id)
    check(j.state == S.FAILED, "after 2 crashes the victim is %s", S.Name(j.state))
    check(j.error.startswith("the daemon stopped 2 times while running this job; last"),
          "the victim's error: %r", j.error)
    check("run started" in j.error and "no checkpoint written" in j.error,
          "the error does not say what was reached last: %r", j.error)
    check(j.error_code == C.ABORTED.value[0] and j.crash_count == 2,
          "error_code %d, crash_count %d", j.error_code, j.crash_count)
    check(not j.devices, "the failed victim holds devices")
    alive(d, "the crash loop")
    intact(d, gid, rec, ckpts)
    r = d.records()
    check(r[blocker.id].spec == blocker_spec and r[blocker.id].state in (S.QUEUED, S.RUNNING),
          "the blocker's record changed: %s", S.Name(r[blocker.id].state))
    now = digest_tree(os.path.join(d.state_dir, "checkpoints", blocker.id))
    check(all(now.get(k) == v for k, v in blocker_ckpts.items()),
          "the blocker's shutdown checkpoint changed")
    # The queue goes on: the blocker resumes; cancelled, the job behind runs.
    b = th.wait_for(lambda: (lambda g: g if g.resumes else None)(s.get(d, blocker.id)), 60,
                    "the blocker to resume")
    check(b.resumes[-1].checkpoint, "the blocker did not resume from its checkpoint: %s",
          list(b.resumes))
    d.stub.CancelJob(pb.CancelJobRequest(id=blocker.id), timeout=30)
    s.wait_state(d, behind.id, S.SUCCEEDED, 120, "the job behind the crash loop")
    d.restart()
    check(s.get(d, victim.id) == j, "the failed victim changed over a restart")


@suite.case
def crash_limit_config(s):
    cfg = os.path.join(s.tmp, "traind.yaml")
    with open(cfg, "w") as f:
        f.write("job_crash_limit: 1\n")
    d = daemon(cpu_devices=1, config=cfg)
    drained = s.submit(d, tiny(LONG), name="drained")
    s.wait_state(d, drained.id, S.RUNNING)
    # Two drains while it runs: not crashes.
    for k in range(2):
        th.wait_for(lambda: s.get(d, drained.id).progress.step > 10, 60, "steps")
        d.restart()
        j = s.wait_state(d, drained.id, S.RUNNING, 60, "the drained job to run again")
        check(j.crash_count == 0, "drain %d counted as a crash (%d)", k + 1, j.crash_count)
    th.wait_for(lambda: d.records()[drained.id].state == S.RUNNING, 10, "RUNNING on disk")
    d.kill()
    d.start()
    j = s.get(d, drained.id)
    check(j.state == S.FAILED and
          j.error.startswith("the daemon stopped 1 time while running this job; last") and
          "job_crash_limit 1" in j.error, "after one kill -9 with job_crash_limit 1: %s %r",
          S.Name(j.state), j.error)
    check("checkpoint ckpt-" in j.error, "the error does not name the last checkpoint: %r",
          j.error)
    alive(d, "the crash limit")


# ------------------------------------------------------------- devices


@suite.case
def many_devices(s):
    d = daemon(cpu_devices=80)
    big = tiny(LONG, devices={"count": 65})
    big["training"]["batch_size"] = 130
    j = s.submit(d, big, name="sixty-five")
    r = th.wait_for(lambda: (lambda g: g if g.state == S.RUNNING and g.progress.step > 2
                             else None)(s.get(d, j.id)), 120, "the 65-device job to train")
    check(len(r.devices) == 65 and len(set(r.devices)) == 65 and
          all(re.fullmatch(r"cpu:\d+", x) and int(x[4:]) < 80 for x in r.devices),
          "the job holds %d devices: %s", len(r.devices), list(r.devices)[:5])
    owners = {dev.id: dev.job_id for dev in
              d.stub.ListDevices(pb.ListDevicesRequest(), timeout=10).devices}
    check(len(owners) == 80, "ListDevices lists %d devices", len(owners))
    held = sorted(k for k, v in owners.items() if v == j.id)
    check(s.state(d, j.id) == S.RUNNING, "the job ended while devices were listed")
    check(held == sorted(r.devices), "ListDevices: the job holds %d devices", len(held))
    c = d.stub.CancelJob(pb.CancelJobRequest(id=j.id), timeout=60)
    check(c.state == S.CANCELLED and not c.devices, "cancelled: %s, devices %d",
          S.Name(c.state), len(c.devices))
    # Runs to the end on 65 devices.
    done = tiny(1, devices={"count": 65})
    done["training"]["batch_size"] = 130
    done["training"]["max_steps"] = 5
    k = s.submit(d, done, name="sixty-five-done")
    f = s.wait_state(d, k.id, (S.SUCCEEDED, S.FAILED), 300)
    check(f.state == S.SUCCEEDED and f.progress.step == 5, "65-device job: %s at step %d: %s",
          S.Name(f.state), f.progress.step, f.error)
    e = rpc_error(s.submit, d, tiny(1, devices={"count": 81}), what="a job of 81 devices")
    expect_status(e, C.FAILED_PRECONDITION, "81", "80")
    alive(d, "jobs of many devices")


if __name__ == "__main__":
    sys.exit(suite.run())
