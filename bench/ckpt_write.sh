#!/usr/bin/env bash
# Checkpoint writing and reading: the training stall, write and read rates.
#   bench/ckpt_write.sh [DIR]
# Builds ckpt_write_bench (build-bench/, Release, no tests) and runs it on
# the reference program's model (784-256-128-10, Adam), on 784-512-512-10
# (Adam, 5 repetitions each) and on a 107M-parameter MLP
# (784-8192-8192-4096-10, Adam, a 1.3 GB file, 3 repetitions), writing into
# DIR (default out/ckpt-bench; it should be on the disk checkpoints go to).
# The large model runs once more in a tmpfs directory under /dev/shm, where
# fsync costs nothing, to separate building the file from writing it.
# Prints one JSON object per repetition and a summary per model (see
# bench/ckpt_write.c) after a line naming the machine, and writes them all
# to bench/results/ckpt_write-DATE.jsonl. Needs about 7 GB of memory and
# 2.6 GB of free disk; takes about a minute on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
dir="${1:-out/ckpt-bench}"
cmake -S . -B build-bench -DCMAKE_BUILD_TYPE=Release -DBUILD_TESTING=OFF >/dev/null
cmake --build build-bench --target ckpt_write_bench >/dev/null
bin=build-bench/bench/ckpt_write_bench
mkdir -p "$dir" bench/results
shm=""
if [ -d /dev/shm ]; then
  shm="$(mktemp -d /dev/shm/ckpt-bench.XXXXXX)"
fi
trap 'rm -f "$dir/ckpt-bench.h5"; [ -z "$shm" ] || rm -rf "$shm"' EXIT
out="bench/results/ckpt_write-$(date +%F).jsonl"
large=784,8192,8192,4096,10
{
  cpu="$(lscpu | sed -n 's/^Model name:\s*//p' | head -1)"
  hdf5="$(dpkg-query -W -f '${Version}' libhdf5-dev 2>/dev/null || echo unknown)"
  printf '{"bench":"ckpt_write_env","date":"%s","cpu":"%s","cores":%d,"mem_gib":%d,"commit":"%s","hdf5":"%s","dir":"%s","fs":"%s"}\n' \
    "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$cpu" "$(nproc)" \
    "$(awk '/^MemTotal/ {print int($2 / 1048576)}' /proc/meminfo)" \
    "$(git rev-parse --short HEAD 2>/dev/null || echo unknown)" "$hdf5" "$dir" \
    "$(findmnt -no FSTYPE,SOURCE -T "$dir" | tr -s ' ' ' ')"
  "$bin" --widths 784,256,128,10 --dir "$dir" --reps 5
  "$bin" --widths 784,512,512,10 --dir "$dir" --reps 5
  "$bin" --widths "$large" --dir "$dir" --reps 3
  "$bin" --widths "$large" --dir "$dir" --reps 3 --fresh-memory
  if [ -n "$shm" ]; then
    "$bin" --widths "$large" --dir "$shm" --reps 3
  fi
} | tee "$out"
