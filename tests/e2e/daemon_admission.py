#!/usr/bin/python3
"""Memory admission and the cost of a submission, against a real traind.

  too_big_for_the_limit      a job above memory_limit_bytes: RESOURCE_EXHAUSTED
                             at submission with the figures and the largest parts
  waits_for_memory           a job that fits only once another ends waits QUEUED
                             (with a device free), and starts when it ends
  restart_lower_limit        a queued job that no longer fits after a restart
                             with a smaller limit fails instead of starting
  default_limit              no config: the limit is the cgroup's or MemAvailable;
                             1 TiB of activations is refused, the daemon serves on;
                             a 784-2^20-2048-10 Adam model hits the
                             parameter limit
  cgroup_limit               a daemon in a 256 MiB memory cgroup (v2 or v1) takes
                             the cgroup's limit (skipped where none can be made)
  traind_run                 `traind run` refuses the same jobs, exit status 2
  deep_model_refused         64,000 dense layers (a 0.38 MB request): refused at
                             once with INVALID_ARGUMENT naming the limit
  health_during_submission   while a submission of the largest allowed model is
                             being checked (held at the test gate once the daemon
                             logged its start), health and ListJobs answer; then
                             the job is accepted and its compile time logged

Synthetic HDF5 data: no MNIST needed."""
import os
import re
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from traind_harness import (Suite, check, expect_status, make_synthetic, parse_args,  # noqa: E402
                            rpc_error, spec_msg, tail, wait_for, write_job)

import grpc  # noqa: E402

MiB = 1 << 20


def mlp(widths, epochs=1000000, batch=32, file="synthetic.h5", optimizer="adam", input_dim=784):
    """A dense model input_dim -> widths... on the synthetic set, long
    enough to be cancelled while it runs."""
    layers = []
    for i, w in enumerate(widths):
        layers.append({"dense": {"features": w}})
        if i + 1 < len(widths):
            layers.append({"relu": {}})
    return {
        "name": "mlp-" + "-".join(str(w) for w in widths),
        "model": {"input_shape": [input_dim], "layers": layers, "loss": "SOFTMAX_CROSS_ENTROPY"},
        "optimizer": {"chain": [{optimizer: {"learning_rate": {"constant": 0.001}}}]},
        "dataset": {"hdf5": {"train_file": file}},
        "training": {"epochs": epochs, "batch_size": batch, "seed": 1},
    }


def config(path, **kv):
    with open(path, "w") as f:
        for k, v in kv.items():
            f.write("%s: %s\n" % (k, v))
    return path


def footprint_of(d, job_id):
    """The host bytes the daemon sized a job at, from its debug log (the
    line the accepted submission logged just before "job queued")."""
    text = d.log()
    i = text.find("job=%s" % job_id)
    m = re.findall(r'msg="submission checked" check_ms=\S+ mem_bytes=(\d+)', text[:i])
    check(m, "no 'submission checked' line before job %s in the log:\n%s", job_id, tail(text))
    return int(m[-1])


def main():
    args = parse_args(__doc__.splitlines()[0])
    suite = Suite(args)
    S = suite.pb.JobState
    RE = grpc.StatusCode.RESOURCE_EXHAUSTED

    def data(s):
        make_synthetic(s.tmp, n=2048)
        return [s.tmp]

    def alive(d):
        r = d.health.Check(suite.stubs.health.HealthCheckRequest(service=""), timeout=5)
        check(r.status == suite.stubs.health.HealthCheckResponse.SERVING,
              "health %s after the refusal", r.status)
        check(d.alive(), "the daemon died")

    @suite.case
    def too_big_for_the_limit(s):
        cfg = config(os.path.join(s.tmp, "traind.yaml"), memory_limit_bytes=64 * MiB)
        d = s.daemon(data_dirs=data(s), config=cfg, cpu_devices=2)
        # 784 -> 8192 -> 10 with Adam: 6.5 M parameters, 104 MB of them
        # with gradients and two moments, more again for checkpoints.
        e = rpc_error(s.submit, d, mlp([8192, 10]), what="a 104 MB model into 64 MiB")
        expect_status(e, RE, "memory: the job needs", "may use 64.0 MiB",
                      "memory_limit_bytes in the config",
                      "for the parameters, gradients and optimizer state on 1 CPU device",
                      "for checkpoints", "for the training and test sets (2048 + 0 examples)",
                      "layer1/w (784, 8192)", "raise memory_limit_bytes")
        need = float(re.search(r"needs ([0-9.]+) MiB", e.details()).group(1))
        check(need > 64, "the job is said to need %.1f MiB", need)
        alive(d)
        check(not s.jobs(d), "the refused job was recorded: %s", s.jobs(d))
        # A job that fits is accepted by the same daemon.
        j = s.submit(d, mlp([16, 10], epochs=1))
        s.wait_state(d, j.id, S.SUCCEEDED, timeout=120)

    @suite.case
    def waits_for_memory(s):
        roots = data(s)
        spec = mlp([256, 10])
        # The job's size, from a daemon that admits anything.
        big = config(os.path.join(s.tmp, "big.yaml"), memory_limit_bytes=1 << 40)
        d = s.daemon(data_dirs=roots, config=big, cpu_devices=2, extra=["--log-level", "debug"])
        j = s.submit(d, dict(spec, training=dict(spec["training"], epochs=1)))
        one = footprint_of(d, j.id)
        s.wait_state(d, j.id, S.SUCCEEDED, timeout=120)
        d.stop()
        # Room for one such job, not two.
        cfg = config(os.path.join(s.tmp, "traind.yaml"), memory_limit_bytes=one * 3 // 2)
        d = s.daemon(data_dirs=roots, config=cfg, cpu_devices=2)
        a = s.submit(d, spec, name="a")
        s.wait_running(d, a.id)
        b = s.submit(d, spec, name="b")
        # One snapshot: a runs on one of the two devices, b waits for memory.
        jobs = s.jobs(d)
        check(jobs[a.id].state == S.RUNNING and jobs[b.id].state == S.QUEUED,
              "a %s, b %s: b should wait for a's memory", S.Name(jobs[a.id].state),
              S.Name(jobs[b.id].state))
        check(len(jobs[a.id].devices) == 1, "a holds %s", list(jobs[a.id].devices))
        devices = d.stub.ListDevices(s.pb.ListDevicesRequest(), timeout=10)
        free = [x for x in devices.devices if not x.job_id]
        check(free, "no device is free while b waits: %s", devices)
        d.stub.CancelJob(s.pb.CancelJobRequest(id=a.id), timeout=30)
        s.wait_running(d, b.id)
        d.stub.CancelJob(s.pb.CancelJobRequest(id=b.id), timeout=30)
        s.wait_state(d, b.id, S.CANCELLED)

    @suite.case
    def restart_lower_limit(s):
        roots = data(s)
        cfg = os.path.join(s.tmp, "traind.yaml")
        config(cfg, memory_limit_bytes=1 << 40)
        d = s.daemon(data_dirs=roots, config=cfg, cpu_devices=1)
        small = s.submit(d, mlp([16, 10]), name="small")
        s.wait_running(d, small.id)
        big = s.submit(d, mlp([8192, 10]), name="big")
        check(s.state(d, big.id) == S.QUEUED, "big should wait for the device")
        d.stop()
        # The records say QUEUED; the next start has less memory for jobs.
        config(cfg, memory_limit_bytes=64 * MiB)
        d.start()
        s.wait_running(d, small.id)
        check(s.state(d, big.id) == S.QUEUED, "big should still wait for the device")
        # At its turn, big is sized against the new limit and fails instead
        # of starting (a job that would be OOM-killed with the daemon).
        d.stub.CancelJob(s.pb.CancelJobRequest(id=small.id), timeout=30)
        j = s.wait_state(d, big.id, (S.FAILED, S.RUNNING), timeout=60)
        check(j.state == S.FAILED and "memory: the job needs" in j.error and
              "may use 64.0 MiB" in j.error and "layer1/w (784, 8192)" in j.error,
              "big is %s: %r", S.Name(j.state), j.error)
        check(j.error_code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0],
              "big failed with code %d", j.error_code)
        check(not j.started.seconds, "big was started")
        alive(d)

    @suite.case
    def default_limit(s):
        d = s.daemon(data_dirs=data(s))
        m = re.search(r'msg="memory for jobs" bytes=(\d+) source="([^"]+)"', d.log())
        check(m, "the daemon did not log its memory for jobs:\n%s", tail(d.log()))
        check("MemAvailable" in m.group(2) or "cgroup" in m.group(2), "source %r", m.group(2))
        # 2^17 examples per step through 2^20 features: a terabyte of
        # activations and their gradients, on any machine.
        spec = mlp([1 << 20, 10], batch=1 << 17, optimizer="sgd")
        t0 = time.monotonic()
        e = rpc_error(s.submit, d, spec, what="1 TiB of activations")
        expect_status(e, RE, "memory: the job needs", "TiB", "of activations for 131072 examples",
                      "training.batch_size")
        check("MemAvailable" in e.details() or "cgroup" in e.details(), "no source in %r",
              e.details())
        check(time.monotonic() - t0 < 30, "the refusal took %.1f s", time.monotonic() - t0)
        alive(d)
        # The CPU job: 784-2^20-2048-10 with Adam, 47 GB.
        e = rpc_error(s.submit, d, mlp([1 << 20, 2048, 10], batch=128), what="47 GB")
        expect_status(e, grpc.StatusCode.INVALID_ARGUMENT, "2970638346 parameters",
                      "at most 2147483648")
        alive(d)

    @suite.case
    def cgroup_limit(s):
        # A memory cgroup of 256 MiB for the daemon: v2 where the memory
        # controller is there, else v1.
        name = "traind-admission-%d" % os.getpid()
        made = None
        for base, limit_file in (("/sys/fs/cgroup", "memory.max"),
                                 ("/sys/fs/cgroup/memory", "memory.limit_in_bytes")):
            path = os.path.join(base, name)
            if limit_file == "memory.max" and not os.path.exists(
                    os.path.join(base, "cgroup.controllers")):
                continue
            try:
                os.mkdir(path)
            except OSError:
                continue
            try:
                with open(os.path.join(path, limit_file), "w") as f:
                    f.write(str(256 * MiB))
                made = (path, limit_file)
                break
            except OSError:
                os.rmdir(path)
        if not made:
            print("  (no memory cgroup can be made here: case skipped)")
            return
        path, limit_file = made
        wrapper = os.path.join(s.tmp, "in-cgroup.sh")
        with open(wrapper, "w") as f:
            f.write("#!/bin/sh\necho $$ > %s/cgroup.procs && exec %s \"$@\"\n"
                    % (path, s.traind))
        os.chmod(wrapper, 0o755)
        from traind_harness import Daemon
        d = Daemon(wrapper, s.tmp, data_dirs=data(s), stubs=s.stubs)
        try:
            d.start()
            m = re.search(r'msg="memory for jobs" bytes=(\d+) source="([^"]+)"', d.log())
            check(m, "the daemon did not log its memory for jobs:\n%s", tail(d.log()))
            limit = int(m.group(1))
            # The cgroup's 256 MiB less what the daemon holds, unless the
            # machine had even less available at that moment.
            check(limit < 256 * MiB, "jobs may use %d bytes in a 256 MiB cgroup", limit)
            check(("cgroup limit of 256.0 MiB" in m.group(2) and limit_file in m.group(2))
                  or "MemAvailable" in m.group(2), "the daemon in the cgroup logged %s",
                  m.group(0))
            # 784 -> 32768 -> 10 with Adam: 412 MB of model state alone.
            e = rpc_error(s.submit, d, mlp([32768, 10]), what="a 412 MB model into 256 MiB")
            expect_status(e, RE, "memory: the job needs", m.group(2), "layer1/w (784, 32768)")
            j = s.submit(d, mlp([64, 10], epochs=1))
            s.wait_state(d, j.id, S.SUCCEEDED, timeout=120)
            d.stop()
        finally:
            if d.alive():
                d.kill()
            wait_for(lambda: _rmdir(path), 30, "the test cgroup to be removed", 0.1)

    @suite.case
    def traind_run(s):
        roots = data(s)
        cfg = config(os.path.join(s.tmp, "traind.yaml"), memory_limit_bytes=64 * MiB)
        job = write_job(os.path.join(s.tmp, "big.yaml"), mlp([8192, 10], epochs=1))
        p = subprocess.run([s.traind, "run", job, "--config", cfg, "--data-dir", roots[0]],
                           capture_output=True, text=True, timeout=120)
        check(p.returncode == 2, "traind run exited %d (want 2):\n%s", p.returncode, p.stderr)
        check("memory: the job needs" in p.stderr and "memory_limit_bytes in the config" in
              p.stderr and "layer1/w (784, 8192)" in p.stderr, "stderr: %s", p.stderr)
        huge = write_job(os.path.join(s.tmp, "huge.yaml"),
                         mlp([1 << 20, 10], batch=1 << 17, optimizer="sgd", epochs=1))
        p = subprocess.run([s.traind, "run", huge, "--data-dir", roots[0]],
                           capture_output=True, text=True, timeout=120)
        check(p.returncode == 2 and "of activations for 131072 examples" in p.stderr,
              "traind run of 1 TiB exited %d: %s", p.returncode, p.stderr)
        # What fits still runs.
        ok = write_job(os.path.join(s.tmp, "ok.yaml"), mlp([16, 10], epochs=1))
        p = subprocess.run([s.traind, "run", ok, "--config", cfg, "--data-dir", roots[0]],
                           capture_output=True, text=True, timeout=300)
        check(p.returncode == 0, "traind run of a small job exited %d: %s", p.returncode,
              p.stderr[-2000:])

    @suite.case
    def deep_model_refused(s):
        d = s.daemon(data_dirs=data(s))
        spec = mlp([1] * 63999 + [10], batch=8)
        spec["name"] = "deep"
        spec["model"]["layers"] = [x for x in spec["model"]["layers"] if "dense" in x]
        msg = spec_msg(s.stubs, spec)
        req = s.pb.SubmitJobRequest(spec=msg)
        size = req.ByteSize()
        check(300000 < size < (1 << 20), "the request is %d bytes", size)
        t0 = time.monotonic()
        e = rpc_error(d.stub.SubmitJob, req, timeout=20, what="64,000 layers")
        took = time.monotonic() - t0
        expect_status(e, grpc.StatusCode.INVALID_ARGUMENT, "model.layers: 64000 layers",
                      "at most 4096")
        print("  (64,000 layers, %d bytes: refused in %.3f s)" % (size, took))
        alive(d)

    @suite.case
    def health_during_submission(s):
        gate = os.path.join(s.tmp, "gate")
        open(gate, "w").close()
        d = s.daemon(data_dirs=data(s), extra=["--log-level", "debug"],
                     env={"TRAIND_TEST_SUBMIT_GATE": gate})
        # The largest model the limits allow: 4096 layers.
        spec = mlp([32] * 4095 + [10], epochs=1, batch=64)
        spec["model"]["layers"] = [x for x in spec["model"]["layers"] if "dense" in x]
        spec["name"] = "deepest"
        req = s.pb.SubmitJobRequest(spec=spec_msg(s.stubs, spec))
        fut = d.stub.SubmitJob.future(req, timeout=120)
        # The submission is being checked (its start is logged before the
        # gate), so everything after this point happens while it is.
        wait_for(lambda: 'msg="checking a submission" layers=4096' in d.log(), 60,
                 "the daemon to log the submission's start")
        r = d.health.Check(s.stubs.health.HealthCheckRequest(service=""), timeout=5)
        check(r.status == s.stubs.health.HealthCheckResponse.SERVING, "health %s", r.status)
        listed = s.jobs(d)
        check(not fut.done(), "the submission finished while held at the gate")
        check(not listed, "a job is listed before its submission was answered: %s", listed)
        os.unlink(gate)
        job = fut.result(timeout=120).job
        s.wait_running(d, job.id, timeout=120)
        j = wait_for(lambda: (lambda g: g if g.compile_ms > 0 else None)(s.get(d, job.id)), 120,
                     "the worker to report its compile")
        m = re.search(r'msg="submission checked" check_ms=(\S+)', d.log())
        print("  (4096 layers: submission checks %s ms, compile %.2f ms in the worker)"
              % (m.group(1) if m else "?", j.compile_ms))
        d.stub.CancelJob(s.pb.CancelJobRequest(id=job.id), timeout=30)
        s.wait_state(d, job.id, (S.CANCELLED, S.SUCCEEDED))

    return suite.run()


def _rmdir(path):
    try:
        os.rmdir(path)
        return True
    except FileNotFoundError:
        return True
    except OSError:
        return False


if __name__ == "__main__":
    sys.exit(main())
