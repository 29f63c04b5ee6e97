#!/usr/bin/python3
"""Character-level GPTs on Shakespeare through the daemon.

usage: daemon_gpt.py TRAIND TRAINCTL SOURCE_DIR [CASE...]

A real traind on a temporary unix socket and state directory, driven with
Python grpcio; checkpoints opened with h5py:

  char_100_steps     config/jobs/shakespeare_char.yaml (nanoGPT's baby GPT:
                     4 blocks, 4 heads, 128 features, windows of 64
                     characters) cut to 100 iterations: the validation loss
                     per character falls below 2.8 (from ln 65 = 4.2); its
                     checkpoint holds the vocabulary (/vocab: the corpus's
                     characters, sorted) and every parameter by name;
                     `trainctl sample` continues "ROMEO:" with characters of
                     the vocabulary, the same text for a seed and another for
                     another seed, and refuses a prompt with a character
                     outside the vocabulary (INVALID_ARGUMENT) and a job
                     that is no language model (FAILED_PRECONDITION)
  char_2000_steps    (long) the same job as shipped, its 2,000 iterations:
                     validation loss at most 1.95 nats per character
  two_devices        a small GPT on 2 CPU devices equals the same job on 1
                     device after 20 steps: every parameter within a
                     relative error of 1e-5
  kill9_bitwise      SIGKILL of a small GPT's job mid-run, once it has a
                     checkpoint (every 10 steps, attention dropout on), a
                     restart, a resume: its
                     end is bit for bit the uninterrupted run's (/params,
                     /opt_state, /vocab, final metrics)
  bad_input          heads that do not divide the features, an empty text
                     file, a text shorter than one window, a vocabulary
                     larger than the embedding, a token id out of range in
                     an HDF5 token dataset: each a clear status or job
                     error, and the daemon still serves; an HDF5 token
                     dataset in range trains

The corpus comes from $TRAIND_DATA_DIR/shakespeare (skipped without it, exit
77; a failure under CI=true). Needs h5py, numpy and yaml (Debian
python3-h5py, python3-numpy, python3-yaml). Prints one line per case, then
"N passed, N failed".
"""
import os
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import traind_harness as th  # noqa: E402
from traind_harness import check  # noqa: E402

import grpc  # noqa: E402

h5py, np, yaml = th.require("python3-h5py, python3-numpy and python3-yaml", "h5py", "numpy",
                            "yaml")

args = th.parse_args(__doc__.splitlines()[1])
suite = th.Suite(args, needs_mnist=True)
pb = suite.pb
S = pb.JobState
FINAL = (S.SUCCEEDED, S.FAILED, S.CANCELLED)
CORPUS = os.path.join(suite.mnist or "", "shakespeare", "shakespeare.txt")
if not os.path.isfile(CORPUS):
    if os.environ.get("CI") == "true":
        sys.exit("FAIL: %s is missing (CI=true)" % CORPUS)
    print("SKIP: %s is missing" % CORPUS)
    sys.exit(77)


def shipped(name):
    with open(os.path.join(suite.source_dir, "config/jobs", name)) as f:
        return yaml.safe_load(f)


def mlp_job():
    return {"name": "mlp", "model": {"input_shape": [784], "layers": [{"dense": {"features": 10}}],
                                     "loss": "SOFTMAX_CROSS_ENTROPY"},
            "optimizer": {"chain": [{"sgd": {"learning_rate": {"constant": 0.1}}}]},
            "dataset": {"idx": {"dir": "mnist"}, "train_limit": 256, "test_limit": 256},
            "training": {"epochs": 1, "batch_size": 128}}


def run_to_end(s, d, spec, timeout=600):
    j = s.submit(d, spec)
    j = s.wait_state(d, j.id, FINAL, timeout)
    check(j.state == S.SUCCEEDED, "job %s is %s: %s", j.id, S.Name(j.state), j.error)
    return j


def params(path):
    out = {}
    with h5py.File(path, "r") as f:
        f["params"].visititems(lambda n, o: out.__setitem__(n, o[()])
                               if isinstance(o, h5py.Dataset) else None)
    return out


@suite.case
def char_100_steps(s):
    d = s.daemon(cpu_devices=1, threads=os.cpu_count() or 1)
    spec = shipped("shakespeare_char.yaml")
    spec["training"]["max_steps"] = 100
    spec["dataset"]["test_limit"] = 200
    j = run_to_end(s, d, spec)
    check(j.progress.step == 100, "progress %d steps", j.progress.step)
    loss = j.metrics.test_loss
    check(0.0 < loss < 2.8, "validation loss %.4f per character after 100 steps (want < 2.8)",
          loss)
    print("  100 steps: validation loss %.4f nats per character" % loss)
    with open(CORPUS, encoding="utf-8") as f:
        chars = sorted(set(f.read()))
    path = j.last_checkpoint.path
    with h5py.File(path, "r") as f:
        check("vocab" in f, "no /vocab in %s", path)
        vocab = "".join(chr(c) for c in f["vocab"][()])
        tokens = f["vocab"].attrs["tokens"]
        tokens = tokens.decode() if isinstance(tokens, bytes) else tokens
    check(vocab == "".join(chars), "/vocab holds %d characters, the corpus %d", len(vocab),
          len(chars))
    check(tokens == "char", "/vocab tokens attribute %r", tokens)
    got = params(path)
    want = ["tok/embedding", "pos/embedding", "ln_f/scale", "ln_f/bias", "head/w", "head/b"]
    for k in range(4):
        for leaf in ("ln1/scale", "ln1/bias", "attn/qkv/w", "attn/qkv/b", "attn/proj/w",
                     "attn/proj/b", "ln2/scale", "fc/w", "fc/b", "proj/w", "proj/b"):
            want.append("h.%d.%s" % (k, leaf))
    missing = [n for n in want if n not in got]
    check(not missing, "parameters missing from the checkpoint: %s (it has %s)", missing,
          sorted(got))
    check(got["tok/embedding"].shape == (128, 128), "tok/embedding %s", got["tok/embedding"].shape)
    check(got["h.3.attn/qkv/w"].shape == (128, 384), "h.3.attn/qkv/w %s",
          got["h.3.attn/qkv/w"].shape)

    def sample(*extra):
        p = s.trainctl("sample", j.id, "--prompt", "ROMEO:", "--tokens", "120",
                       "--temperature", "0.8", *extra, addr=d.addr, timeout=300)
        check(p.returncode == 0, "trainctl sample exited %d: %s", p.returncode, p.stderr)
        return p.stdout.rstrip("\n")
    a, b, c = sample("--seed", "5"), sample("--seed", "5"), sample("--seed", "6", "--top-k", "5")
    check(a.startswith("ROMEO:"), "the text does not begin with the prompt: %r", a[:80])
    check(len(a) == len("ROMEO:") + 120, "%d characters after the prompt, want 120",
          len(a) - len("ROMEO:"))
    outside = sorted(set(a) - set(chars))
    check(not outside, "characters outside the vocabulary: %r", outside)
    check(a == b, "the same seed gave two texts:\n%s\n%s", a, b)
    check(a != c, "another seed and top-k gave the same text")
    print("  sample: %r" % a[:70])
    p = s.trainctl("sample", j.id, "--prompt", "ROMEO\u20ac", addr=d.addr)
    check(p.returncode != 0 and "vocabulary" in p.stderr and "INVALID_ARGUMENT" in p.stderr,
          "a prompt outside the vocabulary: exit %d, %r", p.returncode, p.stderr)
    e = th.rpc_error(d.stub.Sample, pb.SampleRequest(id=j.id, prompt="ROMEO", temperature=-1.0),
                     timeout=60)
    th.expect_status(e, grpc.StatusCode.INVALID_ARGUMENT, "temperature")
    e = th.rpc_error(d.stub.Sample, pb.SampleRequest(id="j-00000000", prompt="A"), timeout=10)
    check(e.code() == grpc.StatusCode.NOT_FOUND, "an unknown job: %s", e.code())


@suite.case(long=True)
def char_2000_steps(s):
    d = s.daemon(cpu_devices=1, threads=os.cpu_count() or 1)
    j = run_to_end(s, d, shipped("shakespeare_char.yaml"), timeout=3600)
    check(j.progress.step == 2000, "progress %d steps", j.progress.step)
    loss = j.metrics.test_loss
    check(0.0 < loss <= 1.95, "validation loss %.4f per character after 2,000 steps (want <= 1.95)",
          loss)
    print("  2000 steps: validation loss %.4f nats per character" % loss)


@suite.case
def two_devices(s):
    d = s.daemon(cpu_devices=2)
    one = run_to_end(s, d, th.gpt_spec(devices=1))
    two = run_to_end(s, d, th.gpt_spec(devices=2))
    a, b = params(one.last_checkpoint.path), params(two.last_checkpoint.path)
    check(sorted(a) == sorted(b), "different parameters: %s vs %s", sorted(a), sorted(b))
    worst = 0.0
    for k in a:
        x, y = a[k].astype(np.float64), b[k].astype(np.float64)
        err = float(np.linalg.norm(x - y) / max(np.linalg.norm(x), 1e-30))
        check(err < 1e-5, "%s: 2 devices differ from 1 by %.3g", k, err)
        worst = max(worst, err)
    print("  20 steps: worst relative difference %.3g" % worst)


def leaves(path):
    out = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda n, o: out.__setitem__(n, o[()]) if isinstance(o, h5py.Dataset)
                     else None)
    return out


@suite.case
def kill9_bitwise(s):
    d = s.daemon(cpu_devices=1)
    spec = th.gpt_spec(steps=1500)
    spec["model"]["layers"][2]["repeat"]["layers"][1]["causal_self_attention"][
        "dropout_rate"] = 0.1
    spec["checkpoint"] = {"every_steps": 10}
    want = run_to_end(s, d, spec)
    j = s.submit(d, spec)
    # The kill comes once a checkpoint is complete (its writer may lag the
    # steps on a loaded machine), so that the restart resumes from one.
    th.wait_for(lambda: s.get(d, j.id).last_checkpoint.step >= 20, 300,
                "a checkpoint at step 20 or later of job %s" % j.id, 0.005)
    os.kill(d.pid(), signal.SIGKILL)
    d.kill()
    rec = d.records()[j.id]
    check(rec.state == S.RUNNING, "the record says %s after the kill", S.Name(rec.state))
    d.start()
    jj = s.wait_state(d, j.id, FINAL, 600)
    check(jj.state == S.SUCCEEDED, "after the kill the job is %s: %s", S.Name(jj.state), jj.error)
    check(len(jj.resumes) == 1 and jj.resumes[0].step > 0, "resumes: %s", list(jj.resumes))
    a, b = leaves(jj.last_checkpoint.path), leaves(want.last_checkpoint.path)
    check(sorted(a) == sorted(b), "leaves differ: %s / %s", sorted(a), sorted(b))
    check("vocab" in a, "no /vocab in the resumed run's checkpoint")
    differ = [k for k in sorted(b) if a[k].tobytes() != b[k].tobytes()]
    check(not differ, "resumed at step %d, %d of %d leaves differ from the uninterrupted run: %s",
          jj.resumes[0].step, len(differ), len(b), differ[:4])
    for f in ("train_loss", "test_loss", "test_accuracy"):
        check(getattr(jj.metrics, f) == getattr(want.metrics, f), "final %s %r, uninterrupted %r",
              f, getattr(jj.metrics, f), getattr(want.metrics, f))
    print("  resumed at step %d: bitwise the uninterrupted run" % jj.resumes[0].step)


def refused_or_failed(s, d, spec, *words):
    """The job is refused at submission (INVALID_ARGUMENT) or fails when it
    loads its data; either way the message holds every word."""
    try:
        j = s.submit(d, spec)
    except grpc.RpcError as e:
        th.expect_status(e, grpc.StatusCode.INVALID_ARGUMENT, *words)
        return
    j = s.wait_state(d, j.id, FINAL, 120)
    check(j.state == S.FAILED, "job %s is %s", j.id, S.Name(j.state))
    for w in words:
        check(w.lower() in j.error.lower(), "error %r does not mention %r", j.error, w)


@suite.case
def bad_input(s):
    data = s.workdir("data")
    with open(os.path.join(data, "empty.txt"), "w"):
        pass
    with open(os.path.join(data, "short.txt"), "w") as f:
        f.write("To be, or not to be\n")
    d = s.daemon(cpu_devices=1, data_dirs=[suite.mnist, data])
    refused_or_failed(s, d, th.gpt_spec(heads=3), "num_heads", "divide")
    refused_or_failed(s, d, th.gpt_spec(data="empty.txt"), "empty")
    refused_or_failed(s, d, th.gpt_spec(data="short.txt"), "block")
    spec = th.gpt_spec()
    spec["model"]["layers"][0]["embed"]["num_embeddings"] = 16
    refused_or_failed(s, d, spec, "num_embeddings")
    # Token ids from HDF5 (a tokenizer's output): one out of range.
    ids = (np.arange(4000) * 7919 % 100).astype(np.int32)
    ids[1234] = 300
    with h5py.File(os.path.join(data, "tokens.h5"), "w") as f:
        f["train"] = ids
    spec = th.gpt_spec()
    spec["dataset"] = {"hdf5_tokens": {"file": "tokens.h5", "vocab_size": 128},
                       "test_limit": 16}
    refused_or_failed(s, d, spec, "300", "1234", "vocab_size")
    ids[1234] = 3
    with h5py.File(os.path.join(data, "tokens.h5"), "w") as f:
        f["train"] = ids
    run_to_end(s, d, spec)
    # Still serving: a good job runs to the end.
    run_to_end(s, d, th.gpt_spec(steps=2))
    # Sampling a model that is not a language model.
    j = run_to_end(s, d, mlp_job())
    e = th.rpc_error(d.stub.Sample, pb.SampleRequest(id=j.id, prompt="A"), timeout=60)
    th.expect_status(e, grpc.StatusCode.FAILED_PRECONDITION, "text dataset")


sys.exit(suite.run())
