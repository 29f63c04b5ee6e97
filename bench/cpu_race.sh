#!/usr/bin/env bash
# The CPU race: traind against JAX and PyTorch, model by model, on one
# machine, in one run, alternating.
#   bench/cpu_race.sh                        (from anywhere)
#   ROWS="mlp_b32 wide" ROUNDS=1 bench/cpu_race.sh
#
# Rows: a traind job file and the same model in JAX (bench/race_jax.py)
# and PyTorch (bench/race_torch.py); the batch size and train_limit are
# read from the job file and passed to both.
#   mlp_b32       bench/race/mlp_b32.yaml        784-256-128-10, Adam, batch 32
#   mlp_b128      config/jobs/mnist_mlp.yaml     the reference program, batch 128
#   mlp_b1024     bench/race/mlp_b1024.yaml      batch 1024
#   wide          bench/race/wide.yaml           784-2048-2048-10, 12,800 examples
#   deep          bench/race/deep.yaml           784, 8 x 128, 10
#   adamw_cosine  config/jobs/mnist_mlp_adamw_cosine.yaml  the reference MLP,
#                 clip_by_global_norm(1) + adamw with warmup_cosine_decay
#   cnn           config/jobs/mnist_cnn.yaml     Flax's MNIST CNN, SGD
#   resnet        config/jobs/mnist_resnet.yaml  small ResNet with batch norm
# (config/jobs/mnist_mlp.yaml is mlp_b128.) ROWS="..." runs a subset, in
# the order given; the default is all of them, in the order above.
#
# Contestants, each a separate process, each training 2 epochs and timing
# the second (the first warms up):
#   traind    `traind run JOB --json --threads T` on the job file rewritten
#             with epochs: 2; its figure is steady_epoch_sec (the second
#             epoch's training steps);
#   jax_scan  race_jax.py --style scan: an epoch is one jitted lax.scan over
#             the batches, with the dataset on the device (as jax_epoch.py);
#   jax_loop  race_jax.py --style loop: the reference program's style, a
#             jitted step called from a Python loop over the batches of the
#             epoch's permutation, blocking on the last result at its end;
#   torch     race_torch.py: the eager loop, torch.set_num_threads(T).
# CONTESTANTS="traind torch" runs a subset. For the conv rows (cnn, resnet)
# JAX and PyTorch run and time STEPS_CONV steps of each epoch (default 60;
# 0: the whole epoch), since their CPU convolutions take seconds a step; the
# epoch's time is scaled to the whole epoch (the line keeps the measured
# time as measured_epoch_sec). traind always runs whole epochs. Each
# program reports its model's parameter count; the race stops if a
# contestant's differs from the others' on a row.
#
# Rounds: ROUNDS (default 3) rounds; in each, for each row, the contestants
# run one after the other in an order that rotates from round to round, so
# that load from other work falls on all alike. Each run is pinned with
# taskset to cores 0..T-1 (T: $THREADS, default 2); JAX gets XLA_FLAGS
# --xla_cpu_multi_thread_eigen=true intra_op_parallelism_threads=T.
#
# Quiet machine: before each run the race waits, up to QUIET_WAIT seconds
# (default 120), until the busy fraction of all CPUs over a 1 s window of
# /proc/stat is below QUIET_BUSY (default 0.15); if it never is, the run
# goes ahead and its line says "quiet": false. Each line records wait_sec
# (the wait), busy_before (the last window's busy fraction) and
# other_cpu_sec: the CPU time of everything else during the whole run (the
# busy jiffies of /proc/stat over the run minus the contestant's own user
# and system time from its rusage, and the small runner's), with
# own_cpu_sec and run_sec (the run's wall time). A quiet machine is one
# where other_cpu_sec is near zero (to /proc/stat's 1/100 s resolution, so
# it can read a hundredth or two below zero).
#
# Output: one JSON line per run to OUT (default
# bench/results/cpu_race-DATE.jsonl, started afresh): bench, date (the
# run's start), commit (-dirty when the tree has changes), machine (cpu
# model, cores, load1 at the start), round, row, job (the job file),
# contestant, threads, epoch_sec, wait_sec, other_cpu_sec, quiet, and the
# program's own fields: traind's summary (its epoch_sec list as epochs_sec,
# job as job_name, steps as steps_total, and steps_per_epoch), or the
# Python program's (JAX's compile_sec; test_accuracy, params, steps and
# versions for both). Then a summary table on stdout, per row: the
# parameter count, the median epoch_sec of each contestant over the rounds
# and the ratios jax_scan/traind, jax_loop/traind and torch/traind (above 1:
# traind is faster); the same as a final JSON line
# {"bench": "cpu_race", "summary": [...]}.
#
# Needs MNIST under $TRAIND_DATA_DIR. Builds traind (build/, scripts/build)
# unless $TRAIND names a traind binary to use. JAX, flax, optax, PyTorch and
# numpy come from PyPI, pinned in bench/race-requirements.txt, in a venv at
# RACE_VENV (default bench/.race-venv), made with $RACE_BASE_PYTHON (default
# python3) the first time and reused while it imports the pinned versions;
# PyPI's torch pulls its CUDA wheels: about 6 GB, a one-time install of a
# few minutes. The venv's python also runs the runner and the summary.
#
# On the 2-core AMD EPYC machines (2026-12-02) JAX's convolutions are about
# ten times slower a step inside lax.scan than in a step jitted alone (cnn:
# 1.0 s against 0.10 s), so on the conv rows jax_loop is JAX's better
# figure; and PyTorch's two threads slow down by tens of times when another
# process holds a core, which the quiet wait is there to avoid.
# A whole race (3 rounds, all rows) takes most of an hour on 2 cores, the
# conv rows most of it; run it on a quiet machine.
set -euo pipefail
cd "$(dirname "$0")/.."

all_rows="mlp_b32 mlp_b128 mlp_b1024 wide deep adamw_cosine cnn resnet"
all_contestants="traind jax_scan jax_loop torch"
rows="${ROWS:-$all_rows}"
contestants="${CONTESTANTS:-$all_contestants}"
rounds="${ROUNDS:-3}"
threads="${THREADS:-2}"
steps_conv="${STEPS_CONV:-60}"
quiet_wait="${QUIET_WAIT:-120}"
quiet_busy="${QUIET_BUSY:-0.15}"
out="${OUT:-bench/results/cpu_race-$(date -u +%F).jsonl}"
venv="${RACE_VENV:-bench/.race-venv}"
req=bench/race-requirements.txt
: "${TRAIND_DATA_DIR:?set TRAIND_DATA_DIR to a directory holding mnist/}"
export TRAIND_DATA_DIR

die() { echo "cpu_race.sh: $*" >&2; exit 1; }
whole() { case "$2" in '' | *[!0-9]*) die "$1 must be a whole number (got '$2')" ;; esac; }
whole ROUNDS "$rounds"
whole THREADS "$threads"
whole STEPS_CONV "$steps_conv"
whole QUIET_WAIT "$quiet_wait"
case "$quiet_busy" in '' | .| *[!0-9.]* | *.*.*) die "QUIET_BUSY must be a fraction such as 0.15 (got '$quiet_busy')" ;; esac
[ "$rounds" -ge 1 ] || die "ROUNDS must be at least 1"
if [ "$threads" -lt 1 ] || [ "$threads" -gt "$(nproc)" ]; then die "THREADS must be between 1 and $(nproc)"; fi
[ -n "$rows" ] || die "ROWS is empty"
[ -n "$contestants" ] || die "CONTESTANTS is empty"

# The rows: job file and the model's name in race_jax.py and race_torch.py.
declare -A row_job row_model
row_job[mlp_b32]=bench/race/mlp_b32.yaml;    row_model[mlp_b32]=mlp
row_job[mlp_b128]=config/jobs/mnist_mlp.yaml; row_model[mlp_b128]=mlp
row_job[mlp_b1024]=bench/race/mlp_b1024.yaml; row_model[mlp_b1024]=mlp
row_job[wide]=bench/race/wide.yaml;           row_model[wide]=wide
row_job[deep]=bench/race/deep.yaml;           row_model[deep]=deep
row_job[adamw_cosine]=config/jobs/mnist_mlp_adamw_cosine.yaml; row_model[adamw_cosine]=mlp_adamw_cosine
row_job[cnn]=config/jobs/mnist_cnn.yaml;      row_model[cnn]=cnn
row_job[resnet]=config/jobs/mnist_resnet.yaml; row_model[resnet]=resnet
for row in $rows; do
  [ -n "${row_job[$row]:-}" ] || die "unknown row '$row' (rows: $all_rows)"
done
for c in $contestants; do
  case " $all_contestants " in *" $c "*) ;; *) die "unknown contestant '$c' (contestants: $all_contestants)" ;; esac
done

# The race venv: made once, reused while it holds the pinned versions.
venv_ok() {
  [ -x "$venv/bin/python" ] && "$venv/bin/python" - "$req" <<'EOF'
import re, sys
from importlib.metadata import PackageNotFoundError, version
wrong = []
for line in open(sys.argv[1]):
    line = line.split("#")[0].strip()
    if not line:
        continue
    name, want = (s.strip() for s in line.split("=="))
    name = re.sub(r"\[.*\]", "", name)
    try:
        have = version(name).split("+")[0]
    except PackageNotFoundError:
        have = None
    if have != want:
        wrong.append(f"{name} {have or 'missing'} (pinned {want})")
if wrong:
    print("cpu_race.sh: the race venv has " + ", ".join(wrong), file=sys.stderr)
    sys.exit(1)
import flax, jax, numpy, optax, torch  # and each of them imports
EOF
}
if ! venv_ok; then
  echo "cpu_race.sh: making the race venv $venv from $req (one time; PyPI's torch brings about 6 GB of CUDA wheels)" >&2
  "${RACE_BASE_PYTHON:-python3}" -m venv "$venv"
  "$venv/bin/python" -m pip install -q -r "$req"
  venv_ok || die "the race venv $venv does not hold the versions of $req"
fi
py="$venv/bin/python"

if [ -z "${TRAIND:-}" ]; then
  ./scripts/build >/dev/null
  traind=build/traind
else
  traind="$TRAIND"
fi
[ -x "$traind" ] || die "$traind is not an executable traind"

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

# Each row's job with epochs: 2, and the batch size and train_limit it sets.
declare -A row_batch row_limit
for row in $rows; do
  job="${row_job[$row]}"
  sed "s/^\(\s*epochs:\s*\)[0-9]*/\12/" "$job" > "$tmp/$row.yaml"
  grep -q '^\s*epochs:\s*2$' "$tmp/$row.yaml" || die "cannot set epochs in $job"
  row_batch[$row]="$(sed -n 's/^\s*batch_size:\s*\([0-9][0-9]*\)\s*$/\1/p' "$job")"
  row_limit[$row]="$(sed -n 's/^\s*train_limit:\s*\([0-9][0-9]*\)\s*$/\1/p' "$job")"
  [ -n "${row_batch[$row]}" ] || die "$job: no training.batch_size"
  : "${row_limit[$row]:=0}"
done

cores="0-$((threads - 1))"
commit="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
git diff --quiet HEAD 2>/dev/null || commit="$commit-dirty"
cpu="$(lscpu | sed -n 's/^Model name:\s*//p' | head -1)"
mkdir -p "$(dirname "$out")"
: > "$out"
: > "$tmp/params.json"

# The runner: waits for a quiet machine, runs the command, and writes what
# it saw as JSON (wait_sec, quiet, busy_before, other_cpu_sec, own_cpu_sec,
# run_sec, rc).
cat > "$tmp/runner.py" <<'EOF'
import json, os, resource, subprocess, sys, time
wait_max, busy_max, result, stdout, stderr = sys.argv[1:6]
cmd = sys.argv[7:]  # after "--"
from race_quiet import HZ as hz, cpu, jiffies, wait_quiet

quiet, wait_sec, busy = wait_quiet(wait_max, busy_max)

child0, self0 = cpu(resource.RUSAGE_CHILDREN), cpu(resource.RUSAGE_SELF)
b0, _ = jiffies()
t0 = time.monotonic()
with open(stdout, "wb") as o, open(stderr, "wb") as e:
    rc = subprocess.run(cmd, stdout=o, stderr=e).returncode
run_sec = time.monotonic() - t0
b1, _ = jiffies()
own = cpu(resource.RUSAGE_CHILDREN) - child0
runner = cpu(resource.RUSAGE_SELF) - self0
json.dump({"wait_sec": round(wait_sec, 2), "quiet": quiet, "busy_before": round(busy, 3),
           "other_cpu_sec": round((b1 - b0) / hz - own - runner, 2),
           "own_cpu_sec": round(own, 2), "run_sec": round(run_sec, 2), "rc": rc},
          open(result, "w"))
EOF

# One contestant's run on a row: its JSON (the last line of its stdout that
# is an object) into $tmp/last.json, the runner's into $tmp/run.json; its
# stderr in $tmp/err.log, shown when it fails.
measure() { # contestant row
  local c="$1" row="$2" m="${row_model[$2]}" rc=0
  local data=(--batch "${row_batch[$row]}" --limit "${row_limit[$row]}" --threads "$threads")
  if [ "$m" = cnn ] || [ "$m" = resnet ]; then
    if [ "$steps_conv" -gt 0 ]; then data+=(--steps "$steps_conv"); fi
  fi
  local cmd
  case "$c" in
    traind) cmd=("$traind" run "$tmp/$row.yaml" --json --threads "$threads") ;;
    jax_scan) cmd=("$py" bench/race_jax.py "$m" --style scan "${data[@]}") ;;
    jax_loop) cmd=("$py" bench/race_jax.py "$m" --style loop "${data[@]}") ;;
    torch) cmd=("$py" bench/race_torch.py "$m" "${data[@]}") ;;
  esac
  XLA_FLAGS="--xla_cpu_multi_thread_eigen=true intra_op_parallelism_threads=$threads" \
    PYTHONPATH=bench "$py" "$tmp/runner.py" "$quiet_wait" "$quiet_busy" "$tmp/run.json" "$tmp/stdout" "$tmp/err.log" \
    -- taskset -c "$cores" "${cmd[@]}" || rc=$?
  [ "$rc" -eq 0 ] && rc="$("$py" -c 'import json, sys; print(json.load(open(sys.argv[1]))["rc"])' "$tmp/run.json")"
  if [ "$rc" -ne 0 ] || ! grep '^{' "$tmp/stdout" | tail -1 > "$tmp/last.json" || [ ! -s "$tmp/last.json" ]; then
    echo "cpu_race.sh: $c on $row failed (exit $rc): ${cmd[*]}" >&2
    tail -20 "$tmp/err.log" >&2
    exit 1
  fi
}

# The run's line: the common fields, the runner's, then the program's; and
# the check that the row's parameter count is the same for every contestant.
emit() { # round contestant row load start
  "$py" - "$@" "${row_job[$3]}" "$tmp" "$cpu" "$(nproc)" "$threads" "$commit" >> "$out" <<'EOF'
import json, os, sys
rnd, contestant, row, load, start, job, tmp, cpu, cores, threads, commit = sys.argv[1:]
r = json.load(open(os.path.join(tmp, "last.json")))
run = json.load(open(os.path.join(tmp, "run.json")))
line = {"bench": "cpu_race", "date": start, "commit": commit,
        "machine": {"cpu": cpu, "cores": int(cores), "load1": float(load)},
        "round": int(rnd), "row": row, "job": job, "contestant": contestant,
        "threads": int(threads)}
if contestant == "traind":
    line["epoch_sec"] = r["steady_epoch_sec"]
else:
    line["epoch_sec"] = r["epoch_sec"]
line.update({k: run[k] for k in ("wait_sec", "other_cpu_sec", "quiet", "busy_before",
                                 "own_cpu_sec", "run_sec")})
if contestant == "traind":
    # Its summary's names that would collide with the line's own.
    rename = {"epoch_sec": "epochs_sec", "job": "job_name", "steps": "steps_total"}
    r = {rename.get(k, k): v for k, v in r.items()}
    r["steps_per_epoch"] = r["steps_total"] // max(r["epochs"], 1)
for k, v in r.items():
    if k not in line:
        line[k] = v
path = os.path.join(tmp, "params.json")
seen = json.loads(open(path).read() or "{}")
if row in seen and seen[row]["params"] != r.get("params"):
    print(f"cpu_race.sh: {contestant} on {row} has {r.get('params')} parameters; "
          f"{seen[row]['by']} has {seen[row]['params']}: not the same model", file=sys.stderr)
    sys.exit(3)
seen.setdefault(row, {"params": r.get("params"), "by": contestant})
open(path, "w").write(json.dumps(seen))
print(json.dumps(line))
print(f"round {rnd} {row} {contestant}: epoch_sec {line['epoch_sec']:.4f}"
      f" test_accuracy {r.get('test_accuracy')} params {r.get('params')}"
      f" wait_sec {run['wait_sec']} other_cpu_sec {run['other_cpu_sec']}"
      f"{'' if run['quiet'] else ' (not quiet)'}", file=sys.stderr)
EOF
}

read -r -a cs <<< "$contestants"
n="${#cs[@]}"
for r in $(seq 1 "$rounds"); do
  for row in $rows; do
    for i in $(seq 0 $((n - 1))); do
      c="${cs[$(((i + r - 1) % n))]}"
      load="$(cut -d' ' -f1 /proc/loadavg)"
      start="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
      measure "$c" "$row"
      emit "$r" "$c" "$row" "$load" "$start"
    done
  done
done

# Summary: the median over the rounds per row and contestant, and its
# ratio to traind's; printed as a table and appended as one JSON line.
"$py" - "$out" "$rows" "$contestants" <<'EOF'
import json, statistics, sys
path, rows, contestants = sys.argv[1], sys.argv[2].split(), sys.argv[3].split()
lines = [json.loads(l) for l in open(path) if l.strip()]
runs = [l for l in lines if "contestant" in l]
summary = []
for row in rows:
    mine = [l for l in runs if l["row"] == row]
    med = {}
    for c in contestants:
        xs = [l["epoch_sec"] for l in mine if l["contestant"] == c]
        if xs:
            med[c] = statistics.median(xs)
    t = med.get("traind")
    ratio = {f"{c}/traind": round(med[c] / t, 3) for c in med if c != "traind" and t}
    acc = {c: statistics.median([l["test_accuracy"] for l in mine if l["contestant"] == c])
           for c in med}
    summary.append({"row": row, "params": mine[0].get("params") if mine else None,
                    "rounds": max((l["round"] for l in mine), default=0),
                    "median_epoch_sec": {c: round(v, 4) for c, v in med.items()},
                    "ratio": ratio, "test_accuracy": acc,
                    "not_quiet_runs": sum(1 for l in mine if not l["quiet"]),
                    "other_cpu_sec_max": max((l["other_cpu_sec"] for l in mine), default=0)})
others = [c for c in contestants if c != "traind"]
head = (["row", "params"] + [f"{c}_s" for c in contestants] + [f"{c}/traind" for c in others]
        + ["not_quiet", "other_cpu_max"])
table = [head]
for s in summary:
    m = s["median_epoch_sec"]
    table.append([s["row"], str(s["params"])]
                 + [f"{m[c]:.4f}" if c in m else "-" for c in contestants]
                 + [f"{s['ratio'][c + '/traind']:.2f}" if c + "/traind" in s["ratio"] else "-"
                    for c in others]
                 + [str(s["not_quiet_runs"]), f"{s['other_cpu_sec_max']:.1f}"])
widths = [max(len(r[i]) for r in table) for i in range(len(head))]
for r in table:
    print("  ".join(v.rjust(w) if i else v.ljust(w) for i, (v, w) in enumerate(zip(r, widths))))
first = runs[0] if runs else {}
with open(path, "a") as f:
    f.write(json.dumps({"bench": "cpu_race", "date": first.get("date"),
                        "commit": first.get("commit"), "machine": first.get("machine"),
                        "threads": first.get("threads"), "summary": summary}) + "\n")
EOF
echo "wrote $out"
