#!/usr/bin/python3
"""Job records across daemon restarts, on real MNIST.

usage: daemon_restart.py TRAIND TRAINCTL SOURCE_DIR [CASE...]

A real traind on a temporary unix socket and state directory, driven with
Python grpcio (stubs generated from proto/), stopped and started again on
the same state directory:

  finished_jobs_survive      a SUCCEEDED, a FAILED (NaN loss) and a
                             CANCELLED job are listed after a restart in the
                             same order, each record equal to what GetJob
                             said before (state, final metrics, progress,
                             times, error)
  sigterm_requeues_running   SIGTERM while a job runs: the daemon exits 0
                             promptly, an open WatchMetrics ends UNAVAILABLE,
                             the running and the queued job are saved QUEUED;
                             after the restart both run, in order, to the end
  sigterm_ends_watches_with_reason
                             (10 rounds) WatchMetrics streams open at SIGTERM,
                             on a running and on a queued job, end UNAVAILABLE
                             with the daemon's "shutting down" message
  sigkill_recovers           SIGKILL while a job runs: after the restart the
                             job is queued again and runs to the end
  fewer_devices_after_restart
                             a queued 2-device job when the daemon comes
                             back with 1 CPU device: FAILED with
                             FAILED_PRECONDITION naming the devices; the
                             queue behind it goes on
  bad_records_skipped        an unreadable record and a leftover temporary
                             file in the state directory do not stop the
                             daemon; the good records load

MNIST comes from $TRAIND_DATA_DIR (skipped without it, exit 77; a failure
under CI=true). Every daemon is stopped with SIGTERM and must exit 0 with no
sanitizer report. Prints one line per case, then "N passed, N failed".
"""
import os
import sys
import threading
import time

import grpc

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import traind_harness as th  # noqa: E402
from traind_harness import check  # noqa: E402

args = th.parse_args(__doc__.splitlines()[1])
suite = th.Suite(args, needs_mnist=True)
pb = suite.pb
S = pb.JobState
# SIGTERM with a running job: it stops at its next step and writes a
# shutdown checkpoint (fsynced), far sooner than the job's end or the 60 s
# stop timeout, also on a loaded machine.
STOP_PROMPT = 20.0 if th.sanitized(args.traind) else 10.0


def ref(epochs=1, train_limit=6000, **kw):
    return th.reference_spec(suite.source_dir, epochs, train_limit=train_limit, **kw)


def nan_spec():
    sp = ref()
    sp["name"] = "diverges"
    sp["optimizer"]["chain"] = [{"sgd": {"learning_rate": {"constant": 1e6}}}]
    return sp


def ts(t):
    return t.seconds + t.nanos / 1e9


def listed(d):
    return [j.id for j in d.stub.ListJobs(pb.ListJobsRequest(), timeout=10).jobs]


@suite.case
def finished_jobs_survive(s):
    d = s.daemon(cpu_devices=1)
    ok = s.submit(d, ref(1), name="good")
    bad = s.submit(d, nan_spec())
    stopped = s.submit(d, ref(50, train_limit=0), name="stopped")
    jok = s.wait_state(d, ok.id, S.SUCCEEDED, 120)
    jbad = s.wait_state(d, bad.id, S.FAILED, 120)
    s.wait_steps(d, stopped.id, 20)
    jstop = d.stub.CancelJob(pb.CancelJobRequest(id=stopped.id), timeout=10)
    check(jok.metrics.test_accuracy > 0.8, "6000-example run reached test accuracy %.3f",
          jok.metrics.test_accuracy)
    check(jok.progress.step == 46, "good job ran %d steps, expected 46", jok.progress.step)
    check(jbad.error_code != 0 and "NaN" in jbad.error, "diverging job: %d %r",
          jbad.error_code, jbad.error)
    check(jstop.state == S.CANCELLED, "cancelled job is %s", S.Name(jstop.state))
    before = {j.id: s.get(d, j.id) for j in (ok, bad, stopped)}
    order = listed(d)
    d.stop()
    on_disk = d.records()
    for jid, j in before.items():
        check(on_disk.get(jid) == j, "the record of %s on disk differs from GetJob", j.name)
    d.start()
    check(listed(d) == order, "after restart ListJobs gives %s, before %s", listed(d), order)
    for jid, j in before.items():
        after = s.get(d, jid)
        check(after == j, "%s after restart differs:\nbefore %s\nafter %s", j.name, j, after)
    for j in d.stub.ListJobs(pb.ListJobsRequest(), timeout=10).jobs:
        check(j == before[j.id], "ListJobs entry of %s differs from before the restart",
              j.name)
    # The metrics of a finished job are in its record.
    r = s.get(d, ok.id)
    check(r.metrics.test_accuracy == jok.metrics.test_accuracy and r.metrics.train_loss > 0,
          "final metrics lost: %s", r.metrics)
    # A second restart changes nothing either.
    d.restart()
    check(all(s.get(d, jid) == j for jid, j in before.items()), "second restart changed records")


@suite.case
def sigterm_requeues_running(s):
    d = s.daemon(cpu_devices=1)
    # 2808 steps: many seconds, so that the SIGTERM below lands long before
    # the end even when the test runs slowly.
    epochs = 6
    total = 468 * epochs
    a = s.submit(d, ref(epochs, train_limit=0), name="interrupted")
    b = s.submit(d, ref(1), name="waiting")
    s.wait_steps(d, a.id, 100)
    check(s.state(d, b.id) == S.QUEUED, "the second job is not QUEUED")
    # A watcher sees the stream end, not hang, when the daemon stops (its
    # message: sigterm_ends_watches_with_reason).
    watch = {}

    def follow():
        try:
            for m in d.stub.WatchMetrics(pb.WatchMetricsRequest(id=a.id), timeout=120):
                watch["last"] = m
            watch["end"] = "OK"
        except grpc.RpcError as e:
            watch["end"] = e.code()
            watch["details"] = e.details()
    t = threading.Thread(target=follow)
    t.start()
    th.wait_for(lambda: "last" in watch, 60, "the watcher's first message")
    step_at_stop = s.get(d, a.id).progress.step
    stop_wall = time.time()
    took = d.stop(close_channels=False)
    t.join(60)
    check(took < STOP_PROMPT, "SIGTERM with a running job took %.2f s to exit (limit %.0f)",
          took, STOP_PROMPT)
    check(watch.get("end") == grpc.StatusCode.UNAVAILABLE,
          "the open WatchMetrics ended %s (%s), expected UNAVAILABLE", watch.get("end"),
          watch.get("details"))
    log = d.log()
    check("interrupted by shutdown" in log, "the log does not say the job was interrupted")
    recs = d.records()
    check(recs[a.id].state == S.QUEUED and recs[b.id].state == S.QUEUED,
          "saved states after SIGTERM: %s %s (expected QUEUED twice)",
          S.Name(recs[a.id].state), S.Name(recs[b.id].state))
    check(not recs[a.id].HasField("started") or ts(recs[a.id].started) == 0,
          "the interrupted job keeps a start time")
    check(not recs[a.id].devices, "the interrupted job keeps devices")
    d.start()
    ja = s.wait_state(d, a.id, S.SUCCEEDED, 300)
    jb = s.wait_state(d, b.id, S.SUCCEEDED, 300)
    check(ts(ja.started) > stop_wall, "the job's start time is not from after the restart")
    check(ts(jb.started) >= ts(ja.finished), "the queued job started before the first ended")
    check(ja.progress.step == total and ja.progress.step > step_at_stop,
          "the interrupted job ran %d steps after the restart, expected %d",
          ja.progress.step, total)
    check(ja.metrics.test_accuracy > 0.95, "test accuracy %.4f after %d epochs",
          ja.metrics.test_accuracy, epochs)
    # The stop checkpointed the job where it stood; the rerun went on from
    # there (docs/checkpoint-format.md).
    check(len(ja.resumes) == 1 and ja.resumes[0].checkpoint.startswith("ckpt-"),
          "resume history after the restart: %s", list(ja.resumes))
    at = ja.resumes[0].step
    check(at >= step_at_stop and ja.resumes[0].checkpoint == "ckpt-%012d.h5" % at,
          "resumed at step %d from %s; the stop came after step %d", at,
          ja.resumes[0].checkpoint, step_at_stop)
    m = d.stub.GetMetrics(pb.GetMetricsRequest(id=a.id, max_points=10000), timeout=10)
    steps = [p.step for p in m.steps]
    check(steps == list(range(at + 1, total + 1)), "metrics after the rerun: %d points, %s..%s",
          len(steps), steps[:3], steps[-3:])
    check([e.epoch for e in m.epochs] == list(range(at // 468 + 1, epochs + 1)),
          "epoch points %s", [e.epoch for e in m.epochs])


@suite.case
def sigterm_ends_watches_with_reason(s):
    # Streams open when the daemon stops end with UNAVAILABLE and the
    # daemon's reason, whether their job was running (points still being
    # sent) or queued. Several rounds: the end of a stream races the stop.
    for round_ in range(10):
        d = th.Daemon(s.traind, s.workdir("r%d" % round_), data_dirs=[s.mnist],
                      cpu_devices=1, stubs=s.stubs).start()
        running = s.submit(d, ref(20, train_limit=0))
        queued = s.submit(d, ref(1))
        s.wait_state(d, running.id, S.RUNNING)
        ends = {}
        # Set once the daemon has each stream: the running job's watch has
        # had a message; the queued job's (which gets none until its job
        # runs) has the daemon's initial metadata, sent when it takes the
        # call, the nearest signal there is.
        taken = {"running": threading.Event(), "queued": threading.Event()}

        def follow(jid, key):
            n = 0
            try:
                call = d.stub.WatchMetrics(pb.WatchMetricsRequest(id=jid), timeout=120)
                call.initial_metadata()
                if key == "queued":
                    taken[key].set()
                for _ in call:
                    n += 1
                    taken[key].set()
                ends[key] = ("OK", "", n)
            except grpc.RpcError as e:
                ends[key] = (e.code().name, e.details(), n)
            taken[key].set()
        threads = [threading.Thread(target=follow, args=(running.id, "running")),
                   threading.Thread(target=follow, args=(queued.id, "queued"))]
        for t in threads:
            t.start()
        s.wait_steps(d, running.id, 100)
        for key, ev in taken.items():
            check(ev.wait(60), "round %d: the watch of the %s job was not taken in 60 s",
                  round_ + 1, key)
        d.stop(close_channels=False)
        for t in threads:
            t.join(60)
        for key in ("running", "queued"):
            code, details, _ = ends.get(key, ("none", "", 0))
            check(code == "UNAVAILABLE" and "shutting down" in details,
                  "round %d: the watch of the %s job ended %s %r; expected UNAVAILABLE "
                  "with the daemon's reason", round_ + 1, key, code, details)


@suite.case
def fewer_devices_after_restart(s):
    d = s.daemon(cpu_devices=2)
    # Long: it holds cpu:0 until cancelled, so the 2-device job is queued
    # by construction, however slow the test.
    busy = s.submit(d, ref(50, train_limit=0), name="busy")
    s.wait_state(d, busy.id, S.RUNNING)
    two = s.submit(d, ref(1, devices={"count": 2}), name="two")
    one = s.submit(d, ref(1), name="one")
    check(s.state(d, two.id) == S.QUEUED, "the 2-device job started beside a running job")
    d.stop()
    d.cpu_devices = 1
    d.start()
    # The interrupted long job runs again first (the oldest); the scheduler
    # comes to the 2-device job when the device is free again.
    d.stub.CancelJob(pb.CancelJobRequest(id=busy.id), timeout=10)
    j = s.wait_state(d, two.id, S.FAILED, 120)
    check(j.error_code == grpc.StatusCode.FAILED_PRECONDITION.value[0] and
          "devices this daemon does not have" in j.error, "the job failed with %d: %s",
          j.error_code, j.error)
    # The queue behind the failed job goes on.
    s.wait_state(d, one.id, S.SUCCEEDED, 120)


@suite.case
def sigkill_recovers(s):
    d = s.daemon(cpu_devices=1)
    # 1872 steps: the kill lands long before the end even when the test
    # runs slowly.
    a = s.submit(d, ref(4, train_limit=0), name="killed")
    s.wait_steps(d, a.id, 50)
    d.kill()
    check(d.records()[a.id].state == S.RUNNING, "the record of a killed running job says %s "
          "(it ended before the kill: make it longer)", S.Name(d.records()[a.id].state))
    d.start()
    j = s.wait_state(d, a.id, S.SUCCEEDED, 300, "the killed job to run again after restart")
    check(j.progress.step == 4 * 468, "rerun made %d steps", j.progress.step)
    check("was running when the daemon stopped" in d.log(),
          "the restart does not log the requeued job")


@suite.case
def bad_records_skipped(s):
    d = s.daemon(cpu_devices=1)
    good = s.submit(d, ref(1), name="good")
    s.wait_state(d, good.id, S.SUCCEEDED, 60)
    d.stop()
    jobs = os.path.join(d.state_dir, "jobs")
    with open(os.path.join(jobs, "j-00000000000bad.pb"), "wb") as f:
        f.write(b"\xff\xff\xff\xffnot a record")
    with open(os.path.join(jobs, ".j-0000000000tmp.pb.tmp"), "wb") as f:
        f.write(b"half a write")
    with open(os.path.join(jobs, "j-000000000empty.pb"), "wb"):
        pass
    d.start()
    check(listed(d) == [good.id], "jobs after restart: %s", listed(d))
    check(s.get(d, good.id).state == S.SUCCEEDED, "the good record did not load")
    check(not os.path.exists(os.path.join(jobs, ".j-0000000000tmp.pb.tmp")),
          "the leftover temporary file was not removed")
    check("skipping a job record" in d.log() and "j-00000000000bad.pb" in d.log(),
          "the bad record is not named in the log")
    again = s.submit(d, ref(1))
    s.wait_state(d, again.id, S.SUCCEEDED, 60, "a new job after loading bad records")


if __name__ == "__main__":
    sys.exit(suite.run())
