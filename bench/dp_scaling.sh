#!/usr/bin/env bash
# Data parallelism on CPU devices: examples/s with 1 and 2 devices, and the
# gradient allreduce's time per step.
#   bench/dp_scaling.sh [ROUNDS]
# Builds traind (build/) and trains, with `traind run --json` and every
# core in use, (a) the reference program (config/jobs/mnist_mlp.yaml,
# 3 epochs) and (b) a wider MLP, 784-2048-2048-10 with the same optimizer
# (the first 12800 training examples, 2 epochs), each on devices.count 1
# and 2, alternating, ROUNDS times (default 2). With 1 device OpenBLAS uses
# every core for one sgemm; with 2 each replica has its share of the cores.
# Prints one JSON object per run (traind's summary: epoch times, steady
# examples/s, allreduce_ms_per_step) and writes them to
# bench/results/dp_scaling-DATE.jsonl. Needs MNIST under $TRAIND_DATA_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${1:-2}"
./scripts/build >/dev/null
: "${TRAIND_DATA_DIR:?set TRAIND_DATA_DIR to a directory holding mnist/}"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
# job NAME EPOCHS DEVICES WIDTH1 WIDTH2 [TRAIN_LIMIT]
job() {
  local out="$tmp/$1-$3.yaml"
  sed -e "s/^\(\s*epochs:\s*\)[0-9]*/\1$2/" \
      -e "s/features: 256/features: $4/" -e "s/features: 128/features: $5/" \
      -e "s/^name: .*/name: $1/" config/jobs/mnist_mlp.yaml > "$out"
  if [ -n "${6:-}" ]; then
    sed -i "s/^\(\s*idx: {dir: mnist}\)/\1\n  train_limit: $6/" "$out"
  fi
  printf 'devices:\n  count: %d\n' "$3" >> "$out"
  echo "$out"
}
out="bench/results/dp_scaling-$(date +%F).jsonl"
mkdir -p bench/results
cpu="$(lscpu | sed -n 's/^Model name:\s*//p' | head -1)"
{
  for r in $(seq "$rounds"); do
    for d in 1 2; do
      for spec in "reference 3 $d 256 128" "wide-2048 2 $d 2048 2048 12800"; do
        # shellcheck disable=SC2086
        path="$(job $spec)"
        summary="$(./build/traind run "$path" --threads "$(nproc)" --cpu-devices 2 --json \
          2>/dev/null)"
        printf '{"bench":"dp_scaling","date":"%s","cpu":"%s","cores":%d,"round":%d,"commit":"%s","traind":%s}\n' \
          "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$cpu" "$(nproc)" "$r" \
          "$(git rev-parse --short HEAD 2>/dev/null || echo unknown)" "$summary"
      done
    done
  done
} | tee "$out"
