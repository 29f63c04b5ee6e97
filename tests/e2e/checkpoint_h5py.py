#!/usr/bin/python3
"""traind checkpoints seen from h5py and numpy.

Usage: checkpoint_h5py.py TEST_CHECKPOINT_BINARY

1. The binary trains a small MLP for a few steps and writes a checkpoint plus
   the logits its engine computes for a batch. h5py opens the file; the
   attributes, shapes, dtypes, the SHA-256 digest and the spec hash (from
   the job_spec attribute, with protobuf messages generated from proto/)
   are checked against docs/checkpoint-format.md, and a numpy forward pass
   from /params alone reproduces the engine's logits.
2. numpy writes a parameters-only file with h5py; traind loads it
   (td_ckpt_load_params) and writes it back, bit for bit. A file with a
   wrong shape and a missing leaf is refused with a message listing both.

Exit 77 (skip) when h5py, numpy or grpc_tools is missing, unless CI=true.
"""
import json
import os
import subprocess
import sys
import tempfile

try:
    import h5py
    import numpy as np
    from google.protobuf import json_format
    from h5ckpt import digest, spec_hash
    import traind_harness as th
except ImportError as e:  # pragma: no cover
    print(f"SKIP: {e}")
    sys.exit(1 if os.environ.get("CI") == "true" else 77)

BATCH, IN, OUT, HIDDEN = 16, 20, 3, 32
failures = 0


def check(cond, what):
    global failures
    if not cond:
        failures += 1
        print(f"FAIL: {what}")


def load_params(f):
    return {layer: {leaf: np.asarray(f["params"][layer][leaf][()])
                    for leaf in f["params"][layer]}
            for layer in f["params"]}


def forward(params, x):
    h = np.maximum(x @ params["layer1"]["w"] + params["layer1"]["b"], 0.0)
    return h @ params["layer2"]["w"] + params["layer2"]["b"]


def main():
    binary = sys.argv[1]
    source_dir = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    job_pb2 = th.Stubs(source_dir).job
    with tempfile.TemporaryDirectory() as d:
        r = subprocess.run([binary, "e2e-write", d], capture_output=True, text=True)
        check(r.returncode == 0, f"e2e-write exited {r.returncode}: {r.stderr}")
        if r.returncode:
            return
        path = os.path.join(d, "ckpt.h5")
        with h5py.File(path, "r") as f:
            a = f.attrs
            check(a["format"] == "traind-checkpoint", f"format {a['format']!r}")
            check(int(a["version"]) == 2, f"version {a['version']}")
            check(int(a["step"]) == 5, f"step {a['step']}")
            check(int(a["epoch"]) == 1 and int(a["step_in_epoch"]) == 5,
                  f"epoch {a['epoch']} step_in_epoch {a['step_in_epoch']}")
            check(int(a["seed"]) == 42, f"seed {a['seed']}")
            # jax.random.PRNGKey(42) is [0, 42].
            check(list(a["prng_key"]) == [0, 42] and a["prng_key"].dtype == np.uint32,
                  f"prng_key {a['prng_key']!r}")
            check(int(json.loads(a["job_spec"])["training"]["seed"]) == 42, "job_spec")
            check(a["job_id"] == "e2e-job", f"job_id {a['job_id']!r}")
            check(a["digest"] == digest(f), f"digest {a['digest']}, recomputed {digest(f)}")
            # The spec hash, recomputed from the job_spec attribute through
            # protobuf's own encoder.
            spec = json_format.Parse(a["job_spec"], job_pb2.JobSpec())
            check(a["spec_hash"] == spec_hash(spec),
                  f"spec_hash {a['spec_hash']}, recomputed {spec_hash(spec)}")
            check("checksum" not in a, "a version 2 file has the CRC-32 'checksum' attribute")
            shapes = {"layer1/w": (IN, HIDDEN), "layer1/b": (HIDDEN,),
                      "layer2/w": (HIDDEN, OUT), "layer2/b": (OUT,)}
            for name, shape in shapes.items():
                ds = f["params"][name]
                check(ds.shape == shape and ds.dtype == np.float32,
                      f"/params/{name}: {ds.shape} {ds.dtype}, want {shape} float32")
                for slot in ("mu", "nu"):
                    o = f["opt_state"]["0_adam"][slot][name]
                    check(o.shape == shape and o.dtype == np.float32,
                          f"/opt_state/0_adam/{slot}/{name}: {o.shape} {o.dtype}")
            check(set(f["params"]) == {"layer1", "layer2"}, f"layers {list(f['params'])}")
            check(set(f["opt_state"]) == {"0_adam", "count"}, f"opt_state {list(f['opt_state'])}")
            count = f["opt_state"]["count"]
            check(count.shape == () and count.dtype == np.int64 and count[()] == 5,
                  f"count {count.shape} {count.dtype} {count[()]}")
            # After five Adam steps the moments are nonzero and nu is not negative.
            nu = f["opt_state"]["0_adam"]["nu"]["layer1"]["w"][()]
            check((nu >= 0).all() and (nu > 0).any(), "nu")
            params = load_params(f)

        x = np.fromfile(os.path.join(d, "x.bin"), dtype="<f4").reshape(BATCH, IN)
        want = np.fromfile(os.path.join(d, "logits.bin"), dtype="<f4").reshape(BATCH, OUT)
        got = forward({k: {l: v.astype(np.float64) for l, v in leaves.items()}
                       for k, leaves in params.items()}, x.astype(np.float64))
        err = np.max(np.abs(got - want) / np.maximum(np.abs(want), 1.0))
        check(err <= 1e-5, f"numpy forward differs from the engine's logits: max err {err:.3g}")
        print(f"numpy forward vs engine logits: max rel err {err:.3g}")

        # A parameters-only file written by numpy, as from JAX params.
        rng = np.random.default_rng(0)
        mine = {"layer1": {"w": rng.standard_normal((IN, HIDDEN), dtype=np.float32),
                           "b": rng.standard_normal(HIDDEN, dtype=np.float32)},
                "layer2": {"w": rng.standard_normal((HIDDEN, OUT), dtype=np.float32),
                           "b": rng.standard_normal(OUT, dtype=np.float32)}}
        warm = os.path.join(d, "warm.h5")
        with h5py.File(warm, "w") as f:
            for layer, leaves in mine.items():
                for leaf, v in leaves.items():
                    f.create_dataset(f"params/{layer}/{leaf}", data=v)
        back = os.path.join(d, "back.h5")
        r = subprocess.run([binary, "e2e-load", warm, back], capture_output=True, text=True)
        check(r.returncode == 0, f"e2e-load of an h5py file exited {r.returncode}: {r.stderr}")
        if r.returncode == 0:
            with h5py.File(back, "r") as f:
                for layer, leaves in mine.items():
                    for leaf, v in leaves.items():
                        got = f["params"][layer][leaf][()]
                        check(got.tobytes() == v.tobytes(), f"{layer}/{leaf} changed on load")
                check(f.attrs["digest"] == digest(f), "digest of the reloaded file")

        # float64 parameters (numpy's default) are converted.
        with h5py.File(warm, "w") as f:
            for layer, leaves in mine.items():
                for leaf, v in leaves.items():
                    f.create_dataset(f"params/{layer}/{leaf}", data=v.astype(np.float64))
        r = subprocess.run([binary, "e2e-load", warm, back], capture_output=True, text=True)
        check(r.returncode == 0, f"e2e-load of float64 params exited {r.returncode}: {r.stderr}")

        # A wrong shape and a missing leaf: refused, both listed.
        bad = os.path.join(d, "bad.h5")
        with h5py.File(bad, "w") as f:
            f.create_dataset("params/layer1/w", data=np.zeros((IN, 64), np.float32))
            f.create_dataset("params/layer1/b", data=mine["layer1"]["b"])
            f.create_dataset("params/layer2/w", data=mine["layer2"]["w"])
        r = subprocess.run([binary, "e2e-load", bad, back], capture_output=True, text=True)
        msg = r.stderr
        check(r.returncode == 2, f"e2e-load of a mismatched file exited {r.returncode}: {msg}")
        for want in ("2 problems", "/params/layer1/w has shape (20, 64) in the file, (20, 32)",
                     "missing dataset /params/layer2/b (3,)"):
            check(want in msg, f"refusal does not say {want!r}: {msg}")
        print(f"refused as expected: {msg.strip()}")

        # Not HDF5.
        with open(bad, "w") as f:
            f.write("layer1/w: [1, 2]\n")
        r = subprocess.run([binary, "e2e-load", bad, back], capture_output=True, text=True)
        check(r.returncode == 2 and "not an HDF5 file" in r.stderr, f"text file: {r.stderr}")


main()
print("PASS" if failures == 0 else f"{failures} failures")
sys.exit(1 if failures else 0)
