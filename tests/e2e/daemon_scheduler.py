#!/usr/bin/python3
"""The daemon's job queue, devices and paging, through its gRPC API.

usage: daemon_scheduler.py TRAIND TRAINCTL SOURCE_DIR [CASE...]

Each case starts a real traind on a temporary unix socket with a synthetic
HDF5 dataset (the reference program's model on random data, so MNIST is not
needed) and drives it with Python grpcio stubs generated from proto/:

  cancel_queued_and_running  CancelJob on a queued job (immediate) and on a
                             running one (stops at its next step, within
                             seconds of minutes left; the reply carries
                             CANCELLED; the device is freed)
  one_device_in_turn         --cpu-devices 1: the second job is QUEUED while
                             the first RUNS and starts after it finished
  priority_first             with the device busy, a later higher-priority
                             job starts before earlier lower-priority ones
  two_devices_together       --cpu-devices 2: two jobs RUN at once;
                             ListDevices and Job.devices agree on who holds
                             which device; a freed device goes to the next job
  two_device_job             --cpu-devices 2: a job asking for both waits
                             while a one-device job runs, then holds both
                             (ListDevices, Job.devices) and trains; a
                             one-device job queued behind it waits
  explicit_devices           devices.ids: a job naming cpu:1 runs there while
                             cpu:0 is busy; one naming cpu:0 waits for it,
                             and the jobs behind it wait in order
  sighup_reload              max_concurrent_jobs changed in the config file
                             and SIGHUP: GetDaemonInfo shows it and a queued
                             job starts; a broken config is refused and the
                             old one kept
  list_jobs_paging           ListJobs page_size / page_token (newest first,
                             each job once) and the state filter
  get_metrics_paging         GetMetrics since_step / max_points / more over a
                             finished and a running job; the 10000-point cap
  metrics_retention          metrics_retention 1000 in the config file: the
                             oldest points go, oldest_step says so, and
                             GetMetrics and WatchMetrics start there

Every daemon is stopped with SIGTERM and must exit 0 with no sanitizer
report. Prints one line per case, then "N passed, N failed".
"""
import os
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import traind_harness as th  # noqa: E402
from traind_harness import check  # noqa: E402

args = th.parse_args(__doc__.splitlines()[1])
suite = th.Suite(args)
pb = suite.pb
S = pb.JobState

# The synthetic set has 2048 examples: 16 steps of 128 per epoch, about
# 1.5 ms a step on one core. LONG runs for minutes; tests cancel it.
STEPS_PER_EPOCH = 16
LONG = 20000
# A cancelled running job stops at its next step boundary: well within this
# on a loaded machine, where LONG has minutes left.
CANCEL_PROMPT = 5.0


def spec(epochs, **kw):
    return th.synthetic_spec(suite.source_dir, epochs=epochs, **kw)


def daemon(**kw):
    th.make_synthetic(suite.tmp)
    return suite.daemon(data_dirs=[suite.tmp], **kw)


def ts(t):
    return t.seconds + t.nanos / 1e9


def devices_of(d):
    r = d.stub.ListDevices(pb.ListDevicesRequest(), timeout=10)
    return {dev.id: dev.job_id for dev in r.devices}


def cancel(d, job_id):
    return d.stub.CancelJob(pb.CancelJobRequest(id=job_id), timeout=10)


@suite.case
def cancel_queued_and_running(s):
    d = daemon(cpu_devices=1)
    a = s.submit(d, spec(LONG), name="long")
    b = s.submit(d, spec(1), name="waiting")
    check(b.state == S.QUEUED, "second job is %s, expected QUEUED", S.Name(b.state))
    s.wait_state(d, a.id, S.RUNNING)
    # The queued one: answered at once, never started.
    r = cancel(d, b.id)
    check(r.state == S.CANCELLED, "CancelJob on a queued job returned %s", S.Name(r.state))
    check(not r.HasField("started") or ts(r.started) == 0,
          "a job cancelled while queued has a start time")
    check(r.error_code == 1, "error_code %d, expected 1 (CANCELLED)", r.error_code)
    check(s.state(d, b.id) == S.CANCELLED, "GetJob disagrees with CancelJob's reply")
    # The running one: let it make progress first.
    s.wait_steps(d, a.id, 50)
    t0 = time.monotonic()
    r = cancel(d, a.id)
    took = time.monotonic() - t0
    check(r.state == S.CANCELLED, "CancelJob on a running job returned %s", S.Name(r.state))
    check(took < CANCEL_PROMPT, "the running job took %.2f s to stop (limit %.0f s)", took,
          CANCEL_PROMPT)
    check(r.error_code == 1 and r.error, "a cancelled job has error_code %d error %r",
          r.error_code, r.error)
    check(r.HasField("finished") and ts(r.finished) >= ts(r.started),
          "a cancelled job has no finish time after its start")
    check(0 < r.progress.step < LONG * STEPS_PER_EPOCH,
          "cancelled job's progress %d", r.progress.step)
    check(not r.devices, "a cancelled job still holds %s", list(r.devices))
    # It stays stopped: no step after the reply (the reply comes after the
    # worker was joined; the pause gives a wrong step a chance to show).
    time.sleep(0.2)
    j = s.get(d, a.id)
    check(j.state == S.CANCELLED and j.progress.step == r.progress.step,
          "the job moved after its cancel: %s step %d -> %d", S.Name(j.state),
          r.progress.step, j.progress.step)
    m = d.stub.GetMetrics(pb.GetMetricsRequest(id=a.id, since_step=r.progress.step - 1),
                          timeout=10)
    check(m.state == S.CANCELLED and [p.step for p in m.steps] == [r.progress.step],
          "metrics after the cancel: state %s steps %s", S.Name(m.state),
          [p.step for p in m.steps])
    check(devices_of(d) == {"cpu:0": ""}, "device not freed: %s", devices_of(d))
    info = d.stub.GetDaemonInfo(pb.GetDaemonInfoRequest(), timeout=10)
    check(info.jobs_running == 0 and info.jobs_queued == 0 and info.jobs_total == 2,
          "daemon info: running %d queued %d total %d", info.jobs_running,
          info.jobs_queued, info.jobs_total)


@suite.case
def one_device_in_turn(s):
    d = daemon(cpu_devices=1)
    # 960 steps: seconds, so that five looks fit in while it runs even on a
    # loaded machine, and it still ends by itself.
    a = s.submit(d, spec(60), name="first")
    b = s.submit(d, spec(3), name="second")
    s.wait_running(d, a.id)
    saw = 0
    while saw < 5:
        # Both jobs' states and devices from one reply: one moment.
        jobs = s.jobs(d)
        ja, jb = jobs[a.id], jobs[b.id]
        check(ja.state == S.RUNNING, "the first job is %s after %d looks; make it longer",
              S.Name(ja.state), saw)
        check(jb.state == S.QUEUED and not jb.devices,
              "second job is %s holding %s while the first RUNS", S.Name(jb.state),
              list(jb.devices))
        check(list(ja.devices) == ["cpu:0"], "the running job holds %s", list(ja.devices))
        # The device table is another reply: read while the first job was
        # RUNNING both before and after it.
        devs = s.while_running(d, a.id, lambda: devices_of(d), "the device table")
        check(devs == {"cpu:0": a.id}, "devices while the first runs: %s", devs)
        saw += 1
        time.sleep(0.05)
    ja = s.wait_state(d, a.id, S.SUCCEEDED, 120)
    jb = s.wait_state(d, b.id, S.SUCCEEDED, 120)
    check(ts(jb.started) >= ts(ja.finished),
          "second started at %.6f, before the first finished at %.6f",
          ts(jb.started), ts(ja.finished))
    check(ja.progress.step == 60 * STEPS_PER_EPOCH and jb.progress.step == 3 * STEPS_PER_EPOCH,
          "steps %d and %d", ja.progress.step, jb.progress.step)


@suite.case
def priority_first(s):
    d = daemon(cpu_devices=1)
    blocker = s.submit(d, spec(LONG), name="blocker")
    s.wait_state(d, blocker.id, S.RUNNING)
    low1 = s.submit(d, spec(2), name="low1")
    low2 = s.submit(d, spec(2), name="low2")
    high = s.submit(d, spec(2, priority=5), name="high")
    low3 = s.submit(d, spec(2, priority=-1), name="low3")
    for j in (low1, low2, high, low3):
        check(s.state(d, j.id) == S.QUEUED, "%s is not QUEUED behind the blocker", j.name)
    cancel(d, blocker.id)
    done = [s.wait_state(d, j.id, S.SUCCEEDED, 120) for j in (high, low1, low2, low3)]
    order = sorted(done, key=lambda j: ts(j.started))
    names = [j.name for j in order]
    check(names == ["high", "low1", "low2", "low3"],
          "start order %s, expected high, low1, low2, low3 (priority, then submission)",
          names)
    for prev, nxt in zip(order, order[1:]):
        check(ts(nxt.started) >= ts(prev.finished), "%s started before %s finished",
              nxt.name, prev.name)


@suite.case
def two_devices_together(s):
    d = daemon(cpu_devices=2)
    a = s.submit(d, spec(LONG), name="a")
    b = s.submit(d, spec(LONG), name="b")
    c = s.submit(d, spec(LONG), name="c")
    ja = s.wait_state(d, a.id, S.RUNNING)
    jb = s.wait_state(d, b.id, S.RUNNING)
    check(s.state(d, c.id) == S.QUEUED, "third job is not QUEUED with both devices busy")
    # Both advance at the same time: a later snapshot in which both are
    # still RUNNING and both have moved on.
    first = s.jobs(d)
    step_a, step_b = first[a.id].progress.step, first[b.id].progress.step

    def both_moved():
        now = s.jobs(d)
        ja, jb = now[a.id], now[b.id]
        check(ja.state == S.RUNNING and jb.state == S.RUNNING,
              "both jobs should be RUNNING: a %s, b %s", S.Name(ja.state), S.Name(jb.state))
        return (ja, jb) if ja.progress.step > step_a and jb.progress.step > step_b else None
    ja, jb = th.wait_for(both_moved, 60, "both jobs to take steps (a past %d, b past %d)"
                         % (step_a, step_b), 0.05)
    devs = devices_of(d)
    check(sorted(devs) == ["cpu:0", "cpu:1"], "devices %s", devs)
    check(sorted(devs.values()) == sorted([a.id, b.id]), "device holders %s", devs)
    check(len(ja.devices) == 1 and len(jb.devices) == 1 and ja.devices[0] != jb.devices[0],
          "job devices a %s b %s", list(ja.devices), list(jb.devices))
    check(devs[ja.devices[0]] == a.id and devs[jb.devices[0]] == b.id,
          "ListDevices %s disagrees with Job.devices a %s b %s", devs, list(ja.devices),
          list(jb.devices))
    info = d.stub.GetDaemonInfo(pb.GetDaemonInfoRequest(), timeout=10)
    check(info.jobs_running == 2 and info.jobs_queued == 1 and info.max_concurrent_jobs == 2,
          "info running %d queued %d max %d", info.jobs_running, info.jobs_queued,
          info.max_concurrent_jobs)
    # Freeing a's device lets c start on it.
    freed = ja.devices[0]
    cancel(d, a.id)
    jc = s.wait_state(d, c.id, S.RUNNING, 60)
    check(list(jc.devices) == [freed], "c got %s, expected the freed %s", list(jc.devices),
          freed)
    devs = devices_of(d)
    check(devs == {freed: c.id, jb.devices[0]: b.id}, "devices after the swap: %s", devs)
    cancel(d, b.id)
    cancel(d, c.id)
    check(devices_of(d) == {"cpu:0": "", "cpu:1": ""}, "devices not freed")


@suite.case
def two_device_job(s):
    d = daemon(cpu_devices=2)
    one = s.submit(d, spec(LONG), name="one")
    s.wait_state(d, one.id, S.RUNNING)
    # 480 steps on two devices: seconds, so that it is seen running on a
    # loaded machine, and it still ends by itself.
    both = s.submit(d, spec(30, devices={"count": 2}), name="both")
    after = s.submit(d, spec(1), name="after")
    time.sleep(0.3)  # a chance for a wrong start to show; nothing should happen
    check(s.state(d, both.id) == S.QUEUED, "the two-device job started with one device busy")
    check(s.state(d, after.id) == S.QUEUED, "a later job overtook the two-device job")
    cancel(d, one.id)
    s.wait_running(d, both.id, 60)
    # One reply: the two-device job's devices and the next job's state.
    jobs = s.jobs(d)
    jb, ja = jobs[both.id], jobs[after.id]
    check(jb.state == S.RUNNING, "the two-device job ended before it was observed (%s); make "
          "it longer", S.Name(jb.state))
    check(sorted(jb.devices) == ["cpu:0", "cpu:1"], "the job holds %s", list(jb.devices))
    check(ja.state == S.QUEUED, "a job started while both devices were held: %s",
          S.Name(ja.state))
    devs = s.while_running(d, both.id, lambda: devices_of(d), "the device table")
    check(devs == {"cpu:0": both.id, "cpu:1": both.id}, "ListDevices %s", devs)
    jb = s.wait_state(d, both.id, S.SUCCEEDED, 120)
    check(jb.progress.step == 30 * STEPS_PER_EPOCH, "two-device job ran %d steps",
          jb.progress.step)
    s.wait_state(d, after.id, S.SUCCEEDED, 120)
    check(devices_of(d) == {"cpu:0": "", "cpu:1": ""}, "devices not freed")


@suite.case
def explicit_devices(s):
    d = daemon(cpu_devices=2)
    a = s.submit(d, spec(LONG, devices={"ids": ["cpu:0"]}), name="a")
    ja = s.wait_state(d, a.id, S.RUNNING)
    check(list(ja.devices) == ["cpu:0"], "a holds %s", list(ja.devices))
    b = s.submit(d, spec(LONG, devices={"ids": ["cpu:1"]}), name="b")
    jb = s.wait_state(d, b.id, S.RUNNING, 60)
    check(list(jb.devices) == ["cpu:1"], "b holds %s", list(jb.devices))
    cancel(d, b.id)
    c = s.submit(d, spec(1, devices={"ids": ["cpu:0"]}), name="c")
    e = s.submit(d, spec(1), name="e")
    time.sleep(0.3)  # a chance for a wrong start to show; nothing should happen
    check(s.state(d, c.id) == S.QUEUED, "c started although cpu:0 is busy")
    check(s.state(d, e.id) == S.QUEUED, "e overtook c (cpu:1 is free, but c is first)")
    cancel(d, a.id)
    jc = s.wait_state(d, c.id, S.SUCCEEDED, 120)
    check(jc.state == S.SUCCEEDED, "c did not finish")
    s.wait_state(d, e.id, S.SUCCEEDED, 120)
    check(devices_of(d) == {"cpu:0": "", "cpu:1": ""}, "devices not freed")


@suite.case
def sighup_reload(s):
    cfg = os.path.join(s.tmp, "traind.yaml")
    with open(cfg, "w") as f:
        f.write("cpu_devices: 2\nmax_concurrent_jobs: 1\nlog_level: info\n")
    d = daemon(cpu_devices=None, config=cfg)
    info = d.stub.GetDaemonInfo(pb.GetDaemonInfoRequest(), timeout=10)
    check(info.max_concurrent_jobs == 1, "max_concurrent_jobs %d at start, expected 1",
          info.max_concurrent_jobs)
    check(len(devices_of(d)) == 2, "cpu_devices from the config file not applied")
    a = s.submit(d, spec(LONG), name="a")
    b = s.submit(d, spec(LONG), name="b")
    s.wait_state(d, a.id, S.RUNNING)
    time.sleep(0.3)  # a chance for a wrong start to show; nothing should happen
    check(s.state(d, b.id) == S.QUEUED, "second job runs despite max_concurrent_jobs 1")
    # A broken file is refused; the daemon keeps its configuration.
    with open(cfg, "w") as f:
        f.write("cpu_devices: 2\nmax_concurrent_jobs: 1\nno_such_key: 3\n")
    d.signal(signal.SIGHUP)
    th.wait_for(lambda: "reload failed" in d.log(), 60, "the failed reload to be logged")
    check(d.alive(), "the daemon died on a bad config reload")
    info = d.stub.GetDaemonInfo(pb.GetDaemonInfoRequest(), timeout=10)
    check(info.max_concurrent_jobs == 1, "a refused reload changed max_concurrent_jobs")
    with open(cfg, "w") as f:
        f.write("cpu_devices: 2\nmax_concurrent_jobs: 2\nlog_level: info\n")
    d.signal(signal.SIGHUP)
    th.wait_for(lambda: d.stub.GetDaemonInfo(pb.GetDaemonInfoRequest(), timeout=10)
                .max_concurrent_jobs == 2, 60, "GetDaemonInfo to show max_concurrent_jobs 2")
    s.wait_state(d, b.id, S.RUNNING, 60, "the queued job to start after the reload")
    check(s.state(d, a.id) == S.RUNNING, "the first job stopped on reload")
    check(len(devices_of(d)) == 2, "device count changed on reload")


@suite.case
def list_jobs_paging(s):
    d = daemon(cpu_devices=1)
    jobs = [s.submit(d, spec(LONG), name="j0")]
    s.wait_state(d, jobs[0].id, S.RUNNING)
    for i in range(1, 7):
        jobs.append(s.submit(d, spec(1), name="j%d" % i))
    for j in (jobs[2], jobs[4]):
        cancel(d, j.id)
    ids = [j.id for j in jobs]
    newest_first = ids[::-1]
    want_state = {j.id: S.QUEUED for j in jobs}
    want_state[ids[0]] = S.RUNNING
    want_state[ids[2]] = want_state[ids[4]] = S.CANCELLED

    def pages(states=(), size=0):
        got, token, sizes = [], "", []
        for _ in range(100):
            r = d.stub.ListJobs(pb.ListJobsRequest(states=states, page_size=size,
                                                   page_token=token), timeout=10)
            got += [j.id for j in r.jobs]
            sizes.append(len(r.jobs))
            for j in r.jobs:
                check(j.state == want_state[j.id], "job %s listed as %s, expected %s",
                      j.name, S.Name(j.state), S.Name(want_state[j.id]))
            token = r.next_page_token
            if not token:
                return got, sizes
        raise th.TestFailure("ListJobs paging does not end")

    got, sizes = pages()
    check(got == newest_first and sizes == [7], "one page: %s (sizes %s)", got, sizes)
    got, sizes = pages(size=2)
    check(got == newest_first, "paged by 2: %s, expected %s", got, newest_first)
    check(sizes == [2, 2, 2, 1], "page sizes %s, expected [2, 2, 2, 1]", sizes)
    got, sizes = pages(size=7)
    check(got == newest_first and sizes == [7], "page of exactly 7: sizes %s", sizes)
    queued = [i for i in newest_first if want_state[i] == S.QUEUED]
    got, sizes = pages(states=[S.QUEUED])
    check(got == queued, "QUEUED filter: %s, expected %s", got, queued)
    got, sizes = pages(states=[S.QUEUED], size=1)
    check(got == queued and sizes == [1] * len(queued), "QUEUED filter by 1: %s %s", got,
          sizes)
    two = [i for i in newest_first if want_state[i] in (S.CANCELLED, S.RUNNING)]
    got, sizes = pages(states=[S.CANCELLED, S.RUNNING], size=2)
    check(got == two and sizes == [2, 1], "CANCELLED+RUNNING by 2: %s %s", got, sizes)
    got, sizes = pages(states=[S.FAILED])
    check(got == [] and sizes == [0], "FAILED filter: %s", got)
    for j in jobs:
        if want_state[j.id] in (S.QUEUED, S.RUNNING):
            cancel(d, j.id)


@suite.case
def get_metrics_paging(s):
    d = daemon(cpu_devices=1)
    epochs = 10
    total = epochs * STEPS_PER_EPOCH
    j = s.submit(d, spec(epochs))
    s.wait_state(d, j.id, S.SUCCEEDED, 120)

    def page(since, n):
        return d.stub.GetMetrics(pb.GetMetricsRequest(id=j.id, since_step=since,
                                                      max_points=n), timeout=10)

    steps, epoch_pts, since, mores = [], [], 0, []
    for _ in range(20):
        r = page(since, 50)
        check(r.state == S.SUCCEEDED, "GetMetrics state %s", S.Name(r.state))
        check(len(r.steps) <= 50, "page of %d step points, asked for 50", len(r.steps))
        got = [p.step for p in r.steps]
        check(not got or r.last_step == got[-1], "last_step %d, last point %s",
              r.last_step, got[-1:])
        for e in r.epochs:
            check(e.step <= r.last_step, "epoch point at step %d past the page's end %d",
                  e.step, r.last_step)
        steps += got
        epoch_pts += [(e.epoch, e.step) for e in r.epochs]
        mores.append(r.more)
        since = r.last_step
        if not r.more:
            break
    check(steps == list(range(1, total + 1)), "step points %s..%s (%d), expected 1..%d once",
          steps[:3], steps[-3:], len(steps), total)
    check(mores == [True, True, True, False], "more flags %s, expected [T, T, T, F]", mores)
    want_epochs = [(e, e * STEPS_PER_EPOCH) for e in range(1, epochs + 1)]
    check(epoch_pts == want_epochs, "epoch points %s, expected %s", epoch_pts, want_epochs)
    r = page(total, 50)
    check(not r.steps and not r.epochs and not r.more and r.last_step == total,
          "past the end: %d steps %d epochs more %s last %d", len(r.steps), len(r.epochs),
          r.more, r.last_step)
    r = page(0, 0)
    check(len(r.steps) == total and not r.more and r.oldest_step <= 1,
          "default page: %d points more %s oldest %d", len(r.steps), r.more, r.oldest_step)
    r = page(37, 3)
    check([p.step for p in r.steps] == [38, 39, 40] and r.more,
          "since 37, 3 points: %s", [p.step for p in r.steps])
    # The cap: 10000 points a page, asked for 20000 (a small model, fast).
    capped = s.submit(d, tiny_spec(10500))
    s.wait_state(d, capped.id, S.SUCCEEDED, 300)
    r = d.stub.GetMetrics(pb.GetMetricsRequest(id=capped.id, max_points=20000), timeout=10)
    check(len(r.steps) == 10000 and r.more and r.last_step == 10000,
          "max_points 20000 gave %d points (more %s, last %d); the cap is 10000",
          len(r.steps), r.more, r.last_step)
    check([p.step for p in r.steps] == list(range(1, 10001)), "capped page is not 1..10000")
    r = d.stub.GetMetrics(pb.GetMetricsRequest(id=capped.id, since_step=10000,
                                               max_points=20000), timeout=10)
    check([p.step for p in r.steps] == list(range(10001, 10501)) and not r.more,
          "the page after the cap: %d points, more %s", len(r.steps), r.more)
    # Paging a running job: contiguous pages while points keep coming.
    run = s.submit(d, spec(LONG))
    s.wait_steps(d, run.id, 300)
    since, seen = 0, 0
    for _ in range(1000):
        r = d.stub.GetMetrics(pb.GetMetricsRequest(id=run.id, since_step=since,
                                                   max_points=100), timeout=10)
        got = [p.step for p in r.steps]
        check(got == list(range(since + 1, since + 1 + len(got))),
              "running job: page after %d is not contiguous: %s", since, got[:5])
        check(len(got) == 100 or not r.more, "a short page says more")
        check(r.state == S.RUNNING, "running job's metrics say %s", S.Name(r.state))
        seen += len(got)
        since = r.last_step
        if not r.more:
            break
    check(seen > 300, "paged %d points of a job past step 300", seen)
    cancel(d, run.id)


def tiny_spec(max_steps):
    """784 -> dense(10) with batch 8: thousands of steps a second."""
    sp = spec(LONG)
    sp["model"]["layers"] = [{"dense": {"features": 10}}]
    sp["training"]["batch_size"] = 8
    sp["training"]["max_steps"] = max_steps
    return sp


@suite.case
def metrics_retention(s):
    cfg = os.path.join(s.tmp, "traind.yaml")
    with open(cfg, "w") as f:
        f.write("metrics_retention: 1000\n")
    d = daemon(config=cfg)
    j = s.submit(d, tiny_spec(5000))
    s.wait_state(d, j.id, S.SUCCEEDED, 300)
    r = d.stub.GetMetrics(pb.GetMetricsRequest(id=j.id, max_points=10000), timeout=10)
    steps = [p.step for p in r.steps]
    check(steps == list(range(4001, 5001)) and r.oldest_step == 4001 and not r.more,
          "with retention 1000: points %s..%s (%d), oldest_step %d", steps[:1], steps[-1:],
          len(steps), r.oldest_step)
    msgs = list(d.stub.WatchMetrics(pb.WatchMetricsRequest(id=j.id), timeout=60))
    wsteps = [p.step for m in msgs for p in m.steps]
    check(wsteps == list(range(4001, 5001)), "watch with retention 1000: %d points from %s",
          len(wsteps), wsteps[:1])
    check(msgs[-1].job.state == S.SUCCEEDED, "the watch did not end with the final record")


if __name__ == "__main__":
    sys.exit(suite.run())
