#!/usr/bin/env bash
# RPC latency over mTLS + bearer token against plaintext, and training
# throughput under that load.
#   bench/rpc_tls.sh [TRAIND]
# Builds traind (build/) unless TRAIND names a binary, then runs
# bench/rpc_load.py over four transports in one training job of the
# reference program (config/jobs/mnist_mlp.yaml): the unix socket, plaintext
# TCP on 127.0.0.1, and a TLS listener on 127.0.0.1 requiring a client
# certificate, to which the client presents one and sends a bearer token,
# either as grpcio call credentials (mtls) or as call metadata (mtls-md).
# Every channel has its own connection on every transport.
# 32 client threads calling GetJob, GetMetrics and ListJobs are switched on
# over one transport at a time for 2 epochs, with 2 epochs without load in
# between; 3 cycles over all transports at each load: a closed loop, then
# 200 calls/s in all. Prints a table and one JSON object (per load and
# transport: p50/p99/max latency per method, calls/s, errors, examples/s
# loaded and unloaded, daemon CPU; latency ratios between transports) and
# writes it to bench/results/rpc_tls-DATE.json. Takes about 5 minutes on 2
# cores. Needs MNIST under $TRAIND_DATA_DIR and the openssl CLI.
set -euo pipefail
cd "$(dirname "$0")/.."
traind="${1:-}"
if [ -z "$traind" ]; then
  ./scripts/build >/dev/null
  traind=build/traind
fi
: "${TRAIND_DATA_DIR:?set TRAIND_DATA_DIR to a directory holding mnist/}"
command -v openssl >/dev/null || { echo "rpc_tls.sh: needs the openssl CLI" >&2; exit 2; }
mkdir -p bench/results
/usr/bin/python3 bench/rpc_load.py --traind "$traind" --clients 32 \
  --transports unix,tcp,mtls,mtls-md --own-connections --rates 0,200 --cycles 3 \
  --phase-epochs 2 \
  --out "bench/results/rpc_tls-$(date -u +%F).json"
