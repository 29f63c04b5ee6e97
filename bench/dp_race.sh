#!/usr/bin/env bash
# The cost of DP-SGD: traind's DP-SGD epoch against its plain one on the
# same model and batch, and against Opacus (PyTorch) and JAX's vmap(grad)
# DP-SGD, on one machine, in one run, alternating.
#   bench/dp_race.sh                    (from anywhere; ROUNDS=3 default)
#
# The model: the reference MLP (784-256-128-10, ReLU) on MNIST, batch 256,
# SGD at learning rate 0.25; DP-SGD with clip 1.0 and noise multiplier 1.1.
# Contestants, each a separate process training 2 epochs and timing the
# second, pinned with taskset to cores 0..T-1 (T: $THREADS, default 2):
#   traind_plain    the job without training.dp_sgd
#   traind_poisson  DP-SGD with Poisson sampling (the batch padded to the
#                   step's capacity, 376 for 256 expected of 60,000)
#   traind_shuffle  DP-SGD with batches of exactly 256 from a shuffle
#   opacus          bench/dp_race.py opacus: PrivacyEngine, Poisson batches
#   jax             bench/dp_race.py jax: vmap(grad), clip, noise, one jitted
#                   step per batch of 256 (fixed batches)
# Before each run the race waits up to QUIET_WAIT s (default 120) for the
# machine to be quiet (bench/race_quiet.py). Output: one JSON line per run
# to OUT (default bench/results/dp_race-DATE.jsonl), then a summary: the
# median epoch_sec per contestant and the ratios dp/plain for traind and
# opacus/traind_poisson, jax/traind_shuffle.
#
# Needs MNIST under $TRAIND_DATA_DIR and the race venv of bench/cpu_race.sh
# (RACE_VENV, default bench/.race-venv; bench/race-requirements.txt has
# Opacus). Uses build/traind unless $TRAIND names another.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${TRAIND_DATA_DIR:?set TRAIND_DATA_DIR to a directory holding mnist/}"
venv="${RACE_VENV:-bench/.race-venv}"
py="$venv/bin/python"
traind="${TRAIND:-build/traind}"
threads="${THREADS:-2}"
rounds="${ROUNDS:-3}"
out="${OUT:-bench/results/dp_race-$(date -u +%Y-%m-%d).jsonl}"
mkdir -p "$(dirname "$out")"
: > "$out"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
# The job files: config/jobs/mnist_dp.yaml's training with the MLP.
"$py" - "$tmp" <<'PY'
import sys, yaml
root = sys.argv[1]
spec = {"name": "dp-race", "model": {"input_shape": [784], "layers": [
    {"dense": {"features": 256}}, {"relu": {}}, {"dense": {"features": 128}}, {"relu": {}},
    {"dense": {"features": 10}}], "loss": "SOFTMAX_CROSS_ENTROPY"},
    "optimizer": {"chain": [{"sgd": {"learning_rate": {"constant": 0.25}}}]},
    "dataset": {"idx": {"dir": "mnist"}},
    "training": {"epochs": 2, "batch_size": 256, "seed": 0}}
yaml.safe_dump(spec, open(root + "/plain.yaml", "w"))
for s in ("POISSON", "SHUFFLE"):
    spec["training"]["dp_sgd"] = {"l2_norm_clip": 1.0, "noise_multiplier": 1.1,
                                  "target_delta": 1e-5, "sampling": s}
    yaml.safe_dump(spec, open(root + "/%s.yaml" % s.lower(), "w"))
PY
commit="$(git rev-parse --short HEAD)$(git diff --quiet || echo -dirty)"
cpu_model="$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
cores="$(seq -s, 0 $((threads - 1)))"
contestants=(traind_plain traind_poisson traind_shuffle opacus jax)
for ((r = 0; r < rounds; r++)); do
  for ((k = 0; k < ${#contestants[@]}; k++)); do
    c="${contestants[$(((k + r) % ${#contestants[@]}))]}"
    "$py" -c "import sys; sys.path.insert(0, 'bench'); from race_quiet import wait_quiet; wait_quiet(${QUIET_WAIT:-120}, ${QUIET_BUSY:-0.15})" >/dev/null
    case "$c" in
      traind_plain) line="$(taskset -c "$cores" "$traind" run "$tmp/plain.yaml" --json --threads "$threads" 2>/dev/null | tail -1)" ;;
      traind_poisson) line="$(taskset -c "$cores" "$traind" run "$tmp/poisson.yaml" --json --threads "$threads" 2>/dev/null | tail -1)" ;;
      traind_shuffle) line="$(taskset -c "$cores" "$traind" run "$tmp/shuffle.yaml" --json --threads "$threads" 2>/dev/null | tail -1)" ;;
      opacus | jax) line="$(XLA_FLAGS="--xla_cpu_multi_thread_eigen=true intra_op_parallelism_threads=$threads" taskset -c "$cores" "$py" bench/dp_race.py "$c" --threads "$threads" 2>/dev/null | tail -1)" ;;
    esac
    "$py" - "$line" "$c" "$r" "$commit" "$cpu_model" >>"$out" <<'PY'
import json, sys, datetime
d = json.loads(sys.argv[1])
epoch = d.get("steady_epoch_sec", d.get("epoch_sec"))
print(json.dumps({"bench": "dp_race", "date": datetime.datetime.utcnow().isoformat() + "Z",
                  "commit": sys.argv[4], "machine": sys.argv[5], "round": int(sys.argv[3]),
                  "contestant": sys.argv[2], "epoch_sec": epoch,
                  "test_accuracy": d.get("test_accuracy"), "raw": d}))
PY
    tail -1 "$out" | "$py" -c "import json,sys; d=json.loads(sys.stdin.read()); print('round %d %-15s %.3f s' % (d['round'], d['contestant'], d['epoch_sec']))"
  done
done
"$py" - "$out" <<'PY'
import json, sys, statistics
rows = [json.loads(l) for l in open(sys.argv[1])]
med = {}
for c in sorted({r["contestant"] for r in rows}):
    med[c] = statistics.median(r["epoch_sec"] for r in rows if r["contestant"] == c)
for c, v in med.items():
    print("%-15s %.3f s" % (c, v))
s = {"bench": "dp_race", "summary": med,
     "poisson_over_plain": med["traind_poisson"] / med["traind_plain"],
     "shuffle_over_plain": med["traind_shuffle"] / med["traind_plain"],
     "opacus_over_traind_poisson": med["opacus"] / med["traind_poisson"],
     "jax_over_traind_shuffle": med["jax"] / med["traind_shuffle"]}
for k, v in s.items():
    if k.endswith(("plain", "poisson", "shuffle")) and k != "summary":
        print("%-28s %.2f" % (k, v))
print(json.dumps(s))
PY
