#!/usr/bin/env bash
# Steady-state epoch time of the reference program on this machine's CPU.
#   bench/epoch_time.sh [EPOCHS] [THREADS]
# Builds traind (build/), trains config/jobs/mnist_mlp.yaml for EPOCHS
# (default 5) and prints one JSON object: the machine, the date, and
# traind's summary (every epoch's time, the median of epochs 2.., examples
# per second, accuracy). Needs MNIST under $TRAIND_DATA_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
epochs="${1:-5}"
threads="${2:-$(nproc)}"
./scripts/build >/dev/null
: "${TRAIND_DATA_DIR:?set TRAIND_DATA_DIR to a directory holding mnist/}"
job="$(mktemp --suffix=.yaml)"
trap 'rm -f "$job"' EXIT
sed "s/^\(\s*epochs:\s*\)[0-9]*/\1$epochs/" config/jobs/mnist_mlp.yaml > "$job"
summary="$(./build/traind run "$job" --threads "$threads" --json 2>/dev/null)"
cpu="$(lscpu | sed -n 's/^Model name:\s*//p' | head -1)"
printf '{"bench":"cpu_epoch_time","date":"%s","cpu":"%s","cores":%d,"threads":%d,"commit":"%s","traind":%s}\n' \
  "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$cpu" "$(nproc)" "$threads" \
  "$(git rev-parse --short HEAD 2>/dev/null || echo unknown)" "$summary"
