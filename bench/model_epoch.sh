#!/usr/bin/env bash
# Epoch time of the MNIST CNN and MLP: traind against JAX and PyTorch, in
# one run, alternating.
#   bench/model_epoch.sh [ROUNDS] [OUT]
# For each of ROUNDS rounds (default 3) and each model (mlp, then cnn), runs
# the three programs one after the other, in an order that rotates from
# round to round so that load from other work falls on all alike:
#   traind   `traind run JOB --json --threads T` on config/jobs/mnist_MODEL.yaml
#            with epochs: 2; its steady_epoch_sec is the second epoch's
#            time (training steps only), with compile_ms, the arena's bytes
#            (planned and unplanned), step_flops and test_accuracy;
#   jax      bench/jax_epoch.py MODEL: the same model in flax.linen, an
#            epoch as one jitted lax.scan, the second epoch timed;
#   torch    bench/torch_epoch.py MODEL: the same model in torch.nn, an
#            eager loop, the second epoch timed.
# Each runs pinned to cores 0..T-1 (taskset) with T threads (T: $THREADS,
# default 2). Appends one JSON line per measurement to OUT (default
# bench/results/model_epoch-DATE.jsonl): machine (with the load average
# at the start), date (the start), commit, round, model, framework,
# epoch_sec and the program's own fields; then prints
# the median epoch_sec over the rounds for each model and program, and
# its ratio to JAX's.
# Needs MNIST under $TRAIND_DATA_DIR, the test venv with JAX and flax
# (.venv, made by scripts/setup; $JAX_PYTHON to use another) and Debian's
# python3-torch (installed here when missing). Builds traind (build/,
# scripts/build) unless $TRAIND names a traind binary to use.
# JAX's CPU convolutions make its CNN epochs most of a round (tens of
# minutes on a loaded machine: 1.9 s a step against traind's 0.33 s at a
# load average of 6 on 2 cores); run it on a quiet machine.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${1:-3}"
out="${2:-bench/results/model_epoch-$(date -u +%F).jsonl}"
threads="${THREADS:-2}"
: "${TRAIND_DATA_DIR:?set TRAIND_DATA_DIR to a directory holding mnist/}"
export TRAIND_DATA_DIR
case "$rounds" in '' | *[!0-9]* | 0) echo "model_epoch.sh: ROUNDS must be a whole number of at least 1" >&2; exit 2 ;; esac

# PyTorch from Debian (not needed to build or test traind).
if ! dpkg -s python3-torch >/dev/null 2>&1; then
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends python3-torch
fi
torch_py=/usr/bin/python3
jax_py="${JAX_PYTHON:-.venv/bin/python}"
if ! "$jax_py" -c 'import jax, flax, optax' 2>/dev/null; then
  echo "model_epoch.sh: $jax_py cannot import jax, flax and optax; run scripts/setup (or set JAX_PYTHON)" >&2
  exit 1
fi
if [ -z "${TRAIND:-}" ]; then
  ./scripts/build >/dev/null
  traind=build/traind
else
  traind="$TRAIND"
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
for m in mlp cnn; do
  sed "s/^\(\s*epochs:\s*\)[0-9]*/\12/" "config/jobs/mnist_$m.yaml" > "$tmp/$m.yaml"
  grep -q '^\s*epochs:\s*2$' "$tmp/$m.yaml" || { echo "model_epoch.sh: cannot set epochs in config/jobs/mnist_$m.yaml" >&2; exit 1; }
done

cores="0-$((threads - 1))"
commit="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
git diff --quiet HEAD 2>/dev/null || commit="$commit-dirty"
cpu="$(lscpu | sed -n 's/^Model name:\s*//p' | head -1)"
mkdir -p "$(dirname "$out")"
: > "$out"

# CNN_STEPS=N: JAX and PyTorch time N steps of each CNN epoch instead of
# all 468 (their CPU convolutions take seconds a step), and the epoch's
# time is scaled to 468 steps (the line keeps the measured time too).
steps_arg() { # model
  if [ "$1" = cnn ] && [ "${CNN_STEPS:-0}" -gt 0 ]; then echo "--steps $CNN_STEPS"; fi
}

# One program's run: its JSON (the last line of its stdout that is an
# object) into $tmp/last.json; its stderr in $tmp/err.log, shown when it fails.
measure() { # framework model
  local f="$1" m="$2" rc=0
  case "$f" in
    traind) taskset -c "$cores" "$traind" run "$tmp/$m.yaml" --json --threads "$threads" > "$tmp/stdout" 2> "$tmp/err.log" || rc=$? ;;
    jax) XLA_FLAGS="--xla_cpu_multi_thread_eigen=true intra_op_parallelism_threads=$threads" \
      taskset -c "$cores" "$jax_py" bench/jax_epoch.py "$m" --threads "$threads" $(steps_arg "$m") > "$tmp/stdout" 2> "$tmp/err.log" || rc=$? ;;
    torch) taskset -c "$cores" "$torch_py" bench/torch_epoch.py "$m" --threads "$threads" $(steps_arg "$m") > "$tmp/stdout" 2> "$tmp/err.log" || rc=$? ;;
  esac
  if [ "$rc" -ne 0 ] || ! grep '^{' "$tmp/stdout" | tail -1 > "$tmp/last.json" || [ ! -s "$tmp/last.json" ]; then
    echo "model_epoch.sh: $f on $m failed (exit $rc):" >&2
    tail -20 "$tmp/err.log" >&2
    exit 1
  fi
}

# The measurement's line: the common fields, then the program's.
emit() { # round framework model load start
  "$torch_py" - "$1" "$2" "$3" "$4" "$5" "$tmp/last.json" "$cpu" "$(nproc)" "$threads" "$commit" >> "$out" <<'EOF'
import json, sys
rnd, fw, model, load, start, path, cpu, cores, threads, commit = sys.argv[1:]
r = json.load(open(path))
line = {"bench": "model_epoch", "date": start,
        "machine": {"cpu": cpu, "cores": int(cores), "load1": float(load)}, "commit": commit,
        "round": int(rnd), "model": model, "framework": fw, "threads": int(threads)}
if fw == "traind":
    line["epoch_sec"] = r["steady_epoch_sec"]
    for k in ("steady_epoch_sec", "epoch_sec", "compile_ms", "arena_bytes",
              "arena_unplanned_bytes", "step_flops", "test_accuracy", "params"):
        line["epochs_sec" if k == "epoch_sec" else k] = r.get(k)
else:
    line.update({k: v for k, v in r.items() if k not in ("framework", "model", "threads")})
    steps = r.get("steps_per_epoch") or 468
    if steps < 468:
        line["measured_epoch_sec"] = r["epoch_sec"]
        line["epoch_sec"] = r["epoch_sec"] * 468 / steps
        line["scaled_from_steps"] = steps
print(json.dumps(line))
EOF
  tail -1 "$out"
}

frameworks=(traind jax torch)
for r in $(seq 1 "$rounds"); do
  for m in mlp cnn; do
    for i in 0 1 2; do
      f="${frameworks[$(((i + r - 1) % 3))]}"
      load="$(cut -d' ' -f1 /proc/loadavg)"
      start="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
      measure "$f" "$m"
      emit "$r" "$f" "$m" "$load" "$start"
    done
  done
done

# Summary: median over the rounds, and the ratio to JAX's median.
"$torch_py" - "$out" <<'EOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
med = {}
for m in ("mlp", "cnn"):
    for f in ("traind", "jax", "torch"):
        xs = [r["epoch_sec"] for r in rows if r["model"] == m and r["framework"] == f]
        if xs:
            med[m, f] = statistics.median(xs)
print("model framework rounds median_epoch_sec min max jax/this")
for (m, f), v in med.items():
    xs = [r["epoch_sec"] for r in rows if r["model"] == m and r["framework"] == f]
    j = med.get((m, "jax"))
    print(f"{m} {f} {len(xs)} {v:.4f} {min(xs):.4f} {max(xs):.4f} {j / v if j else float('nan'):.2f}")
for r in rows:
    if r["framework"] == "traind" and r["round"] == 1:
        print(f"{r['model']} traind compile_ms={r['compile_ms']} arena_bytes={r['arena_bytes']} "
              f"arena_unplanned_bytes={r['arena_unplanned_bytes']} step_flops={r['step_flops']}")
EOF
echo "wrote $out"
