#!/usr/bin/python3
"""TensorBoard event files written by real daemon jobs, on real MNIST.

usage: daemon_tensorboard.py TRAIND TRAINCTL SOURCE_DIR [CASE...]

A real traind trains a short job; its events under
STATE_DIR/tensorboard/JOB are read with the independent reader of
tests/e2e/tfevents_read.py (record framing and CRC-32C checked, Events
decoded with Python classes generated from proto/tensorboard):

  events_match_metrics   every step point of GetMetrics has its loss,
                         learning rate, grad norm and examples/s in the
                         events, bit for bit as float32; every epoch its
                         train and test figures; the spec is there as text
  resume_adds_a_file     a job stopped by SIGTERM and resumed has a second
                         events file whose steps go on from the resume

MNIST comes from $TRAIND_DATA_DIR (skipped without it, exit 77; a failure
under CI=true). Prints one line per case, then "N passed, N failed".
"""
import atexit
import os
import shutil
import struct
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import traind_harness as th  # noqa: E402
import tfevents_read as tr  # noqa: E402
from traind_harness import check  # noqa: E402

args = th.parse_args(__doc__.splitlines()[1])
suite = th.Suite(args, needs_mnist=True)
pb = suite.pb
S = pb.JobState
_pb_dir = tempfile.mkdtemp(prefix="td-tbpb-")
atexit.register(shutil.rmtree, _pb_dir, True)
event_pb2, _ = tr.compile_protos(os.path.join(suite.source_dir, "proto"),
                                 os.path.join(_pb_dir, "pb"))


def ref(epochs=2, train_limit=2560, **kw):
    return th.reference_spec(suite.source_dir, epochs, train_limit=train_limit, **kw)


def f32(x):
    return struct.unpack("<f", struct.pack("<f", x))[0]


def read_events(d, job_id):
    """{tag: {step: value}}, the texts, and the files, from the job's dir."""
    path = os.path.join(d.state_dir, "tensorboard", job_id)
    files = sorted(f for f in os.listdir(path) if f.startswith("events.out.tfevents."))
    scalars, texts = {}, {}
    for name in files:
        with open(os.path.join(path, name), "rb") as f:
            records = tr.read_records(f.read())
        first = event_pb2.Event.FromString(records[0])
        check(first.file_version == "brain.Event:2", "%s: first record %s", name, first)
        for rec in records[1:]:
            e = event_pb2.Event.FromString(rec)
            for v in e.summary.value:
                if v.HasField("simple_value"):
                    scalars.setdefault(v.tag, {})[e.step] = v.simple_value
                else:
                    texts[v.tag] = v.tensor.string_val[0].decode()
    return scalars, texts, files


def all_metrics(d, job_id):
    m = d.stub.GetMetrics(pb.GetMetricsRequest(id=job_id, max_points=10000), timeout=10)
    return m.steps, m.epochs


def check_points(scalars, steps, epochs):
    pairs = [("loss", "loss"), ("learning_rate", "learning_rate"), ("grad_norm", "grad_norm"),
             ("examples_per_sec", "examples_per_sec")]
    for p in steps:
        for tag, field in pairs:
            got = scalars.get(tag, {}).get(p.step)
            check(got is not None and got == f32(getattr(p, field)),
                  "step %d: %s in the events %r, GetMetrics %r", p.step, tag, got,
                  getattr(p, field))
    for e in epochs:
        for tag, field in [("epoch/train_loss", "train_loss"),
                           ("epoch/train_accuracy", "train_accuracy"),
                           ("epoch/test_loss", "test_loss"),
                           ("epoch/test_accuracy", "test_accuracy")]:
            got = scalars.get(tag, {}).get(e.step)
            check(got is not None and got == f32(getattr(e, field)),
                  "epoch %d: %s in the events %r, GetMetrics %r", e.epoch, tag, got,
                  getattr(e, field))


@suite.case
def events_match_metrics(s):
    d = s.daemon()
    j = s.submit(d, ref(), name="tb")
    j = s.wait_state(d, j.id, S.SUCCEEDED, 300)
    steps, epochs = all_metrics(d, j.id)
    check(len(steps) == j.progress.total_steps and len(epochs) == 2,
          "GetMetrics: %d steps, %d epochs", len(steps), len(epochs))
    scalars, texts, files = read_events(d, j.id)
    check(len(files) == 1, "events files %s", files)
    check(len(scalars.get("loss", {})) == len(steps), "%d loss points for %d steps",
          len(scalars.get("loss", {})), len(steps))
    check_points(scalars, steps, epochs)
    check("job_spec" in texts and '"batch_size":128' in texts["job_spec"],
          "the spec text: %r", texts.get("job_spec", "")[:300])


@suite.case
def resume_adds_a_file(s):
    d = s.daemon()
    # 800 steps (a small test set for quick evaluations): the stop lands
    # long before the end even when the test runs slowly.
    j = s.submit(d, ref(epochs=40, test_limit=1000), name="tb-resume")
    s.wait_steps(d, j.id, 30)
    d.stop()
    rec = d.records()[j.id]
    check(rec.state == S.QUEUED, "the job was saved %s at the stop, not QUEUED (it ended "
          "first: make it longer)", S.Name(rec.state))
    d.start()
    j = s.wait_state(d, j.id, S.SUCCEEDED, 300)
    at = j.resumes[0].step if j.resumes else -1
    check(at > 0, "no resume recorded: %s", list(j.resumes))
    scalars, _, files = read_events(d, j.id)
    check(len(files) == 2, "events files after a resume: %s", files)
    loss_steps = sorted(scalars["loss"])
    check(loss_steps == list(range(1, j.progress.total_steps + 1)),
          "loss steps %s..%s (%d), want 1..%d", loss_steps[:3], loss_steps[-3:],
          len(loss_steps), j.progress.total_steps)
    steps, epochs = all_metrics(d, j.id)
    check(steps and steps[0].step == at + 1, "metrics after the resume start at %d",
          steps[0].step if steps else -1)
    check_points(scalars, steps, epochs)


if __name__ == "__main__":
    sys.exit(suite.run())
