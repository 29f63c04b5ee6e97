#!/usr/bin/env bash
# Training throughput of the reference program under RPC load.
#   bench/rpc_load.sh [CLIENTS] [THREADS]
# Builds traind (build/), then runs bench/rpc_load.py: one long run of the
# reference program (config/jobs/mnist_mlp.yaml) during which CLIENTS
# (default 32) grpcio client threads calling GetJob, GetMetrics and ListJobs
# are switched on and off every 3 epochs, 6 times at each load: a closed
# loop (each thread calls again as soon as it has its answer), then 1000
# and 100 calls/s in all. THREADS is traind's --threads (default: the
# daemon's own choice). Prints one JSON object (examples/s of the loaded and
# unloaded epochs, the drop, RPC count, errors, p50/p99/max latency per
# method) and writes it to bench/results/rpc_load-DATE-tTHREADS.json. Takes
# 2-3 minutes on 2 cores. Needs MNIST under $TRAIND_DATA_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
clients="${1:-32}"
threads="${2:-0}"
./scripts/build >/dev/null
: "${TRAIND_DATA_DIR:?set TRAIND_DATA_DIR to a directory holding mnist/}"
mkdir -p bench/results
/usr/bin/python3 bench/rpc_load.py --traind build/traind --clients "$clients" \
  --rates 0,1000,100 --cycles 6 --phase-epochs 3 --threads "$threads" \
  --out bench/results
