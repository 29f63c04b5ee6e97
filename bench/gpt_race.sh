#!/usr/bin/env bash
# The GPT race: traind's character-level GPT (config/jobs/shakespeare_char.yaml)
# against the same model in PyTorch, written as nanoGPT's model.py, and in
# JAX (flax.linen and optax), on this machine's CPUs, alternating.
#   bench/gpt_race.sh                              (from anywhere)
#   ROUNDS=1 CONTESTANTS="traind torch_eager" bench/gpt_race.sh
#
# Contestants, each a separate process that trains from scratch:
#   traind         `traind run JOB --metrics FILE --threads T` on a copy of
#                  the job with training.max_steps MAX_STEPS,
#                  eval_every_steps EVAL_EVERY, log_every_steps 1 and
#                  dataset.test_limit EVAL_TILES;
#   torch_eager    bench/gpt_race_torch.py --style eager (nanoGPT's model,
#                  torch.set_num_threads(T));
#   torch_compile  bench/gpt_race_torch.py --style compile (the model in
#                  torch.compile; each run gets an empty
#                  TORCHINDUCTOR_CACHE_DIR, so that every run compiles
#                  afresh, and TORCHINDUCTOR_COMPILE_THREADS=1, so that
#                  Inductor compiles in the process itself rather than in a
#                  pool of worker processes that would run beside the
#                  training steps on the same cores and whose CPU time the
#                  runner cannot count as the contestant's); if
#                  torch.compile fails the run's line records the error and
#                  the race goes on;
#   jax            bench/gpt_race_jax.py: one jitted step in a Python loop.
# CONTESTANTS="..." runs a subset. The model, the batch, the seed and the
# optimizer's figures are read from the job file and passed to the Python
# programs (the race stops if the job's layers are not the ones they
# write); every contestant reports its parameter count and the race stops
# if one differs.
#
# Each run trains until the validation loss (the mean cross-entropy, nats
# per character, over the first EVAL_TILES (default 200) tiles of 64
# characters of the held-out 10%) read every EVAL_EVERY (default 100)
# steps is below TARGET (default 2.0), or for MAX_STEPS (default 1500)
# steps. The Python programs stop themselves; traind is stopped with
# SIGTERM when its evaluation line on stderr reads below the target.
# Figures of a run:
#   tokens_per_sec       steady state: the tokens (batch x 64 a step) of
#                        the steps after the first SKIP_STEPS (default 20:
#                        compilation and warm-up) over those steps' time
#                        (traind: the step_ms of its per-step metric lines);
#   sec_to_target        training seconds up to the end of the step whose
#                        evaluation first reads below TARGET, evaluations
#                        left out, the first steps (and what they compile)
#                        in (traind: the mid-epoch point's epoch_sec);
#   wall_to_target_sec   seconds from the process's start to the line
#                        that reports that evaluation: start-up, data,
#                        compilation and evaluations in;
#   target_step          that step; null figures when not reached.
#
# Rounds: ROUNDS (default 2); in each the contestants run one after the
# other in an order that rotates from round to round, so that load from
# other work falls on all alike. Each run is pinned with taskset to cores
# 0..T-1 (T: $THREADS, default 2); JAX gets XLA_FLAGS
# --xla_cpu_multi_thread_eigen=true intra_op_parallelism_threads=T.
#
# Quiet machine, as bench/cpu_race.sh: before each run the race waits, up
# to QUIET_WAIT seconds (default 180), until the busy fraction of all CPUs
# over a 1 s window of /proc/stat is below QUIET_BUSY (default 0.15); if it
# never is, the run goes ahead and its line says "quiet": false. Each line
# records wait_sec, busy_before, other_cpu_sec (the busy jiffies of
# /proc/stat over the run less the contestant's own user and system time
# and the runner's), own_cpu_sec and run_sec. Work that starts during a
# run is not waited for; so a run whose other_cpu_sec is above DISTURBED
# (default 0.05) CPU-seconds per second of its run_sec is "disturbed" and
# is run again after a new quiet wait, up to RETRIES (default 2) times; every
# attempt has its line (attempt 0, 1, ...), and "kept": true marks the one
# the summary uses: the first undisturbed one, or the last. (PyTorch's and
# XLA's two threads slow down several times when another process takes a
# core.) A run still going after RUN_LIMIT seconds (default 600) is
# killed; its line has "timed_out": true, an error and no figures.
#
# Output: one JSON line per run to OUT (default
# bench/results/gpt_race-DATE.jsonl, started afresh): bench, date, commit
# (-dirty when the tree has changes), machine (cpu model, cores, load1 at
# the start), round, contestant, threads, the figures above, the
# evaluations (step, val_loss, train_sec), final_val_loss, the runner's
# fields and the program's own (traind: params, steps, steady_step_ms;
# the Python programs' JSON). Then a summary table, per contestant, of the
# kept runs: the medians over the rounds of tokens/s, sec_to_target,
# wall_to_target_sec and target_step, how many reached the target, how
# many were not quiet at the start or disturbed, how many attempts were
# run again, and traind's ratio to the best of the others (tokens/s:
# traind / the highest, above 1 traind is faster; seconds: traind / the
# lowest, below 1 traind is faster); printed, written to SUMMARY (default
# OUT with .txt for .jsonl) and appended to OUT as one JSON line
# {"bench": "gpt_race", "summary": ...}.
#
# Needs $TRAIND_DATA_DIR/shakespeare/shakespeare.txt (scripts/fetch-shakespeare).
# Builds traind (build/, scripts/build) unless $TRAIND names a traind binary;
# the binary is copied for the race, so that a rebuild during it changes
# nothing. PyTorch, JAX, flax, optax and numpy come from the venv that
# bench/cpu_race.sh makes (RACE_VENV, default bench/.race-venv, pinned in
# bench/race-requirements.txt; this script only checks that it imports
# them: run bench/cpu_race.sh once, or make it by hand with pip install -r
# bench/race-requirements.txt). A whole race (2 rounds) takes 20 to 40
# minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."

all_contestants="traind torch_eager torch_compile jax"
contestants="${CONTESTANTS:-$all_contestants}"
rounds="${ROUNDS:-2}"
threads="${THREADS:-2}"
max_steps="${MAX_STEPS:-1500}"
eval_every="${EVAL_EVERY:-100}"
eval_tiles="${EVAL_TILES:-200}"
skip_steps="${SKIP_STEPS:-20}"
target="${TARGET:-2.0}"
quiet_wait="${QUIET_WAIT:-180}"
quiet_busy="${QUIET_BUSY:-0.15}"
disturbed="${DISTURBED:-0.05}"
retries="${RETRIES:-2}"
run_limit="${RUN_LIMIT:-600}"
job="${JOB:-config/jobs/shakespeare_char.yaml}"
out="${OUT:-bench/results/gpt_race-$(date -u +%F).jsonl}"
summary="${SUMMARY:-${out%.jsonl}.txt}"
venv="${RACE_VENV:-bench/.race-venv}"
: "${TRAIND_DATA_DIR:?set TRAIND_DATA_DIR to a directory holding shakespeare/shakespeare.txt}"
export TRAIND_DATA_DIR

die() { echo "gpt_race.sh: $*" >&2; exit 1; }
whole() { case "$2" in '' | *[!0-9]*) die "$1 must be a whole number (got '$2')" ;; esac; }
fraction() { case "$2" in '' | . | *[!0-9.]* | *.*.*) die "$1 must be a number such as $3 (got '$2')" ;; esac; }
whole ROUNDS "$rounds"
whole THREADS "$threads"
whole MAX_STEPS "$max_steps"
whole EVAL_EVERY "$eval_every"
whole EVAL_TILES "$eval_tiles"
whole SKIP_STEPS "$skip_steps"
whole QUIET_WAIT "$quiet_wait"
whole RETRIES "$retries"
whole RUN_LIMIT "$run_limit"
fraction DISTURBED "$disturbed" 0.05
fraction QUIET_BUSY "$quiet_busy" 0.15
fraction TARGET "$target" 2.0
[ "$rounds" -ge 1 ] || die "ROUNDS must be at least 1"
[ "$run_limit" -ge 1 ] || die "RUN_LIMIT must be at least 1"
[ "$eval_every" -ge 1 ] || die "EVAL_EVERY must be at least 1"
[ "$eval_tiles" -ge 1 ] || die "EVAL_TILES must be at least 1"
[ "$skip_steps" -lt "$max_steps" ] || die "SKIP_STEPS must be below MAX_STEPS"
if [ "$threads" -lt 1 ] || [ "$threads" -gt "$(nproc)" ]; then die "THREADS must be between 1 and $(nproc)"; fi
[ -n "$contestants" ] || die "CONTESTANTS is empty"
for c in $contestants; do
  case " $all_contestants " in *" $c "*) ;; *) die "unknown contestant '$c' (contestants: $all_contestants)" ;; esac
done
[ -f "$job" ] || die "JOB $job: no such job file"
text="$TRAIND_DATA_DIR/shakespeare/shakespeare.txt"
[ -f "$text" ] || die "$text is missing (scripts/fetch-shakespeare $TRAIND_DATA_DIR/shakespeare)"

py="$venv/bin/python"
"$py" -c 'import flax, jax, numpy, optax, torch, yaml' 2>/dev/null ||
  die "the venv $venv does not import flax, jax, numpy, optax, torch and yaml: set RACE_VENV to bench/cpu_race.sh's venv, or make one with pip install -r bench/race-requirements.txt"

if [ -z "${TRAIND:-}" ]; then
  ./scripts/build >/dev/null
  traind_src=build/traind
else
  traind_src="$TRAIND"
fi
[ -x "$traind_src" ] || die "$traind_src is not an executable traind"

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
cp "$traind_src" "$tmp/traind"
traind="$tmp/traind"

# traind's job (JSON, the proto3 mapping) with the race's schedule, and the
# model's and optimizer's figures as the Python programs' options.
"$py" - "$job" "$tmp/job.json" "$tmp/pyargs" "$max_steps" "$eval_every" "$eval_tiles" <<'EOF'
import json, sys
import yaml
src, dst, pyargs, max_steps, eval_every, eval_tiles = sys.argv[1:]
spec = yaml.safe_load(open(src))

def fail(msg):
    print(f"gpt_race.sh: {src}: {msg}", file=sys.stderr)
    sys.exit(1)

try:
    layers = spec["model"]["layers"]
    kinds = [next(k for k in l if k not in ("name", "inputs")) for l in layers]
    if kinds != ["embed", "position_embedding", "repeat", "layer_norm", "dense"]:
        fail(f"model.layers are {kinds}: the Python programs write embed, "
             "position_embedding, repeat, layer_norm, dense")
    rep = layers[2]["repeat"]
    inner = [next(k for k in l if k not in ("name", "inputs")) for l in rep["layers"]]
    want = ["layer_norm", "causal_self_attention", "add", "layer_norm", "dense", "gelu",
            "dense", "add"]
    if inner != want:
        fail(f"model.layers[2].repeat.layers are {inner}: the Python programs write {want}")
    embed = layers[0]["embed"]
    attn = rep["layers"][1]["causal_self_attention"]
    features = embed["features"]
    if rep["layers"][4]["dense"]["features"] != 4 * features or \
            rep["layers"][6]["dense"]["features"] != features:
        fail("the blocks' dense layers must be 4 x and 1 x embed.features wide")
    if attn.get("dropout_rate", 0) or layers[4]["dense"]["features"] != embed["num_embeddings"]:
        fail("the attention must have no dropout and the head embed.num_embeddings features")
    for l in rep["layers"] + layers:
        for k in ("kernel_init", "embedding_init", "bias_init"):
            if any(isinstance(v, dict) and k in v for v in l.values()):
                fail(f"layer {l.get('name')}: {k} is set; the Python programs draw the defaults")
    chain = spec["optimizer"]["chain"]
    clip = chain[0]["clip_by_global_norm"]
    adamw = chain[1]["adamw"]
    sched = adamw["learning_rate"]["warmup_cosine_decay"]
    block = spec["model"]["input_shape"][0]
    tr = spec["training"]
    args = ["--batch", tr["batch_size"], "--seed", tr.get("seed", 0), "--block", block,
            "--vocab-size", embed["num_embeddings"], "--n-layer", rep["count"],
            "--n-head", attn["num_heads"], "--n-embd", features,
            "--init-value", sched.get("init_value", 0.0), "--peak-value", sched["peak_value"],
            "--warmup-steps", sched["warmup_steps"], "--decay-steps", sched["decay_steps"],
            "--end-value", sched.get("end_value", 0.0), "--b2", adamw.get("b2", 0.999),
            "--weight-decay", adamw.get("weight_decay", 1e-4),
            "--max-norm", clip["max_norm"],
            "--val-fraction", spec["dataset"]["text"].get("val_fraction", 0.1)]
    if adamw.get("b1", 0.9) != 0.9 or adamw.get("eps", 1e-8) != 1e-8:
        fail("optimizer adamw: the Python programs use b1 0.9 and eps 1e-8")
    if spec["dataset"]["text"].get("tokens", "char") != "char":
        fail("dataset.text.tokens: the Python programs read characters")
except (KeyError, IndexError, TypeError, StopIteration) as e:
    fail(f"not the GPT the race's Python programs write ({type(e).__name__}: {e})")
tr.update({"max_steps": int(max_steps), "eval_every_steps": int(eval_every),
           "log_every_steps": 1, "epochs": 1})
spec["dataset"]["test_limit"] = int(eval_tiles)
json.dump(spec, open(dst, "w"), indent=1)
open(pyargs, "w").write("\n".join(str(v) for v in args) + "\n")
EOF
mapfile -t pyargs < "$tmp/pyargs"

commit="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
git diff --quiet HEAD 2>/dev/null || commit="$commit-dirty"
cpu="$(lscpu | sed -n 's/^Model name:\s*//p' | head -1)"
cores="0-$((threads - 1))"
mkdir -p "$(dirname "$out")"
: > "$out"

# The runner: waits for a quiet machine, runs the command with its stderr
# read line by line (kept in a file), notes when an evaluation line ("...
# test loss V ...") first reads below the target and, with stop=1, then
# sends the program SIGTERM; writes what it saw as JSON.
cat > "$tmp/runner.py" <<'EOF'
import json, os, re, resource, signal, subprocess, sys, time
wait_max, busy_max, result, stdout, stderr, target, stop, limit = sys.argv[1:9]
cmd = sys.argv[10:]  # after "--"
from race_quiet import HZ as hz, cpu, jiffies, wait_quiet

quiet, wait_sec, busy = wait_quiet(wait_max, busy_max)

loss_re = re.compile(rb"test loss (\S+)")
child0, self0 = cpu(resource.RUSAGE_CHILDREN), cpu(resource.RUSAGE_SELF)
b0, _ = jiffies()
t0 = time.monotonic()
wall_to_target = None
stopped = timed_out = False
with open(stdout, "wb") as o, open(stderr, "wb") as e:
    p = subprocess.Popen(cmd, stdout=o, stderr=subprocess.PIPE)

    def overtime(signum, frame):
        global timed_out
        timed_out = True
        p.kill()

    signal.signal(signal.SIGALRM, overtime)
    signal.alarm(int(limit))
    for line in p.stderr:
        e.write(line)
        e.flush()  # so that the run can be followed in the file
        m = loss_re.search(line)
        if m and wall_to_target is None:
            try:
                v = float(m.group(1))
            except ValueError:
                continue
            if v < float(target):
                wall_to_target = time.monotonic() - t0
                if stop == "1":
                    p.send_signal(signal.SIGTERM)
                    stopped = True
    rc = p.wait()
    signal.alarm(0)
run_sec = time.monotonic() - t0
b1, _ = jiffies()
own = cpu(resource.RUSAGE_CHILDREN) - child0
runner = cpu(resource.RUSAGE_SELF) - self0
json.dump({"wait_sec": round(wait_sec, 2), "quiet": quiet, "busy_before": round(busy, 3),
           "other_cpu_sec": round((b1 - b0) / hz - own - runner, 2),
           "own_cpu_sec": round(own, 2), "run_sec": round(run_sec, 2), "rc": rc,
           "stopped": stopped, "timed_out": timed_out,
           "wall_to_target_sec": None if wall_to_target is None else round(wall_to_target, 2)},
          open(result, "w"))
EOF

# One contestant's run: the runner's JSON in $tmp/run.json, the program's
# stdout and stderr in $tmp/stdout and $tmp/err.log, traind's metrics in
# $tmp/metrics.jsonl. Returns 0; 3 for a torch.compile that failed (its
# JSON line says why); 4 for a run killed at RUN_LIMIT seconds (its line
# has "timed_out": true and no figures); any other failure ends the race.
measure() { # contestant
  local c="$1" rc=0 stop=0 env=()
  local common=(--data "$text" --threads "$threads" --max-steps "$max_steps"
    --eval-every "$eval_every" --eval-tiles "$eval_tiles" --target "$target"
    --skip-steps "$skip_steps" "${pyargs[@]}")
  local cmd
  rm -f "$tmp/metrics.jsonl" "$tmp/stdout" "$tmp/err.log"
  case "$c" in
    traind)
      cmd=("$traind" run "$tmp/job.json" --metrics "$tmp/metrics.jsonl" --threads "$threads")
      stop=1 ;;
    torch_eager) cmd=("$py" bench/gpt_race_torch.py --style eager "${common[@]}") ;;
    torch_compile)
      rm -rf "$tmp/inductor"
      env=(TORCHINDUCTOR_CACHE_DIR="$tmp/inductor" TORCHINDUCTOR_COMPILE_THREADS=1)
      cmd=("$py" bench/gpt_race_torch.py --style compile "${common[@]}") ;;
    jax) cmd=("$py" bench/gpt_race_jax.py "${common[@]}") ;;
  esac
  env "${env[@]}" \
    XLA_FLAGS="--xla_cpu_multi_thread_eigen=true intra_op_parallelism_threads=$threads" \
    PYTHONPATH=bench "$py" "$tmp/runner.py" "$quiet_wait" "$quiet_busy" "$tmp/run.json" "$tmp/stdout" \
    "$tmp/err.log" "$target" "$stop" "$run_limit" -- taskset -c "$cores" "${cmd[@]}" || rc=$?
  [ "$rc" -eq 0 ] && rc="$("$py" -c 'import json, sys; r = json.load(open(sys.argv[1])); print(4 if r["timed_out"] else 0 if r["stopped"] else r["rc"])' "$tmp/run.json")"
  if [ "$rc" -eq 4 ]; then
    echo "gpt_race.sh: $c ran past RUN_LIMIT ($run_limit s) and was killed: ${cmd[*]}" >&2
    tail -5 "$tmp/err.log" >&2
    return 4
  fi
  if [ "$c" = torch_compile ] && [ "$rc" -eq 3 ] && grep -q '^{.*"error"' "$tmp/stdout"; then
    tail -5 "$tmp/err.log" >&2
    return 3
  fi
  if [ "$rc" -ne 0 ] || { [ "$c" != traind ] && ! grep -q '^{' "$tmp/stdout"; }; then
    echo "gpt_race.sh: $c failed (exit $rc): ${cmd[*]}" >&2
    tail -20 "$tmp/err.log" >&2
    exit 1
  fi
}

# The run's line: the common fields, the figures, the runner's, then the
# program's; and the check that every contestant has the same parameter count.
emit() { # round contestant load start attempt
  "$py" - "$@" "$tmp" "$cpu" "$(nproc)" "$threads" "$commit" "$target" "$skip_steps" \
    "$job" "$disturbed" "$retries" >> "$out" <<'EOF'
import json, os, re, sys
(rnd, contestant, load, start, attempt, tmp, cpu, cores, threads, commit, target, skip,
 job, disturbed, retries) = sys.argv[1:]
target, skip, attempt = float(target), int(skip), int(attempt)
run = json.load(open(os.path.join(tmp, "run.json")))
line = {"bench": "gpt_race", "date": start, "commit": commit,
        "machine": {"cpu": cpu, "cores": int(cores), "load1": float(load)},
        "round": int(rnd), "contestant": contestant, "attempt": attempt, "job": job,
        "threads": int(threads), "target": target}
# Disturbed: other work took more than DISTURBED CPU-seconds a second of
# the run; such a run is run again, up to RETRIES times, and only the last
# attempt of a round is kept for the summary.
line["disturbed"] = run["other_cpu_sec"] > float(disturbed) * run["run_sec"]
line["kept"] = not line["disturbed"] or attempt >= int(retries)
open(os.path.join(tmp, "again"), "w").write("0" if line["kept"] else "1")
if run["timed_out"]:
    r = {"error": "ran past RUN_LIMIT seconds and was killed", "evals": []}
elif contestant == "traind":
    err = open(os.path.join(tmp, "err.log")).read()
    m = re.search(r"(\d+) parameters", err)
    points = [json.loads(l) for l in open(os.path.join(tmp, "metrics.jsonl")) if l.strip()]
    steps = [p for p in points if "step_ms" in p]
    ep = [p for p in points if "test_loss" in p]
    spec = json.load(open(os.path.join(tmp, "job.json")))
    tokens = spec["training"]["batch_size"] * spec["model"]["input_shape"][0]
    steady = [p["step_ms"] for p in steps if p["step"] > skip]
    hit = next((p for p in ep if p["test_loss"] < target), None)
    ms = sorted(steady)
    r = {"params": int(m.group(1)) if m else None,
         "steps": steps[-1]["step"] if steps else 0,
         "evals": [{"step": p["step"], "val_loss": round(p["test_loss"], 6),
                    "train_sec": round(p["epoch_sec"], 4)} for p in ep],
         "target_step": hit["step"] if hit else None,
         "train_sec_to_target": round(hit["epoch_sec"], 4) if hit else None,
         "steady_tokens_per_sec":
             round(len(steady) * tokens / (sum(steady) / 1e3), 1) if steady else None,
         "steady_step_ms": round(ms[len(ms) // 2], 4) if ms else None,
         "first_step_sec": round(steps[0]["step_ms"] / 1e3, 4) if steps else None}
else:
    r = json.loads([l for l in open(os.path.join(tmp, "stdout")) if l.startswith("{")][-1])
if "error" in r:
    line.update({"tokens_per_sec": None, "sec_to_target": None, "wall_to_target_sec": None,
                 "target_step": None, "error": r["error"]})
else:
    line.update({"tokens_per_sec": r["steady_tokens_per_sec"],
                 "sec_to_target": r["train_sec_to_target"],
                 "wall_to_target_sec": run["wall_to_target_sec"],
                 "target_step": r["target_step"],
                 "final_val_loss": r["evals"][-1]["val_loss"] if r["evals"] else None})
line.update({k: run[k] for k in ("wait_sec", "other_cpu_sec", "quiet", "busy_before",
                                 "own_cpu_sec", "run_sec", "stopped", "timed_out")})
for k, v in r.items():
    if k not in line:
        line[k] = v
path = os.path.join(tmp, "params.json")
seen = json.loads(open(path).read()) if os.path.exists(path) else None
if "error" not in r:
    if seen and seen["params"] != r.get("params"):
        print(f"gpt_race.sh: {contestant} has {r.get('params')} parameters; {seen['by']} has "
              f"{seen['params']}: not the same model", file=sys.stderr)
        sys.exit(3)
    if not seen:
        open(path, "w").write(json.dumps({"params": r.get("params"), "by": contestant}))
print(json.dumps(line))
fmt = lambda v: "-" if v is None else v  # noqa: E731
print(f"round {rnd} {contestant} (attempt {attempt}): tokens/s {fmt(line['tokens_per_sec'])}"
      f" sec_to_target {fmt(line['sec_to_target'])} (step {fmt(line['target_step'])})"
      f" wall_to_target {fmt(line['wall_to_target_sec'])}"
      f" wait_sec {run['wait_sec']} other_cpu_sec {run['other_cpu_sec']}"
      f"{'' if run['quiet'] else ' (not quiet)'}"
      f"{' (disturbed' + (', run again)' if not line['kept'] else ')') if line['disturbed'] else ''}"
      f"{' error: ' + r['error'] if 'error' in r else ''}", file=sys.stderr)
EOF
}

read -r -a cs <<< "$contestants"
n="${#cs[@]}"
for r in $(seq 1 "$rounds"); do
  for i in $(seq 0 $((n - 1))); do
    c="${cs[$(((i + r - 1) % n))]}"
    for attempt in $(seq 0 "$retries"); do
      load="$(cut -d' ' -f1 /proc/loadavg)"
      start="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
      rc=0
      measure "$c" || rc=$?
      [ "$rc" -eq 0 ] || [ "$rc" -eq 3 ] || [ "$rc" -eq 4 ] || exit 1
      emit "$r" "$c" "$load" "$start" "$attempt"
      [ "$(cat "$tmp/again")" = 1 ] || break
    done
  done
done

# Summary: per contestant the medians over the rounds, and traind's ratio
# to the best of the others; printed, written to $summary, appended to $out.
"$py" - "$out" "$contestants" "$summary" "$target" <<'EOF'
import json, statistics, sys
path, contestants, summary_path, target = sys.argv[1], sys.argv[2].split(), sys.argv[3], sys.argv[4]
every = [json.loads(l) for l in open(path) if l.strip()]
runs = [l for l in every if l["kept"]]

def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None

rows = {}
for c in contestants:
    mine = [l for l in runs if l["contestant"] == c]
    rows[c] = {"runs": len(mine),
               "tokens_per_sec": med([l["tokens_per_sec"] for l in mine]),
               "sec_to_target": med([l["sec_to_target"] for l in mine]),
               "wall_to_target_sec": med([l["wall_to_target_sec"] for l in mine]),
               "target_step": med([l["target_step"] for l in mine]),
               "reached": sum(1 for l in mine if l["target_step"] is not None),
               "final_val_loss": med([l.get("final_val_loss") for l in mine]),
               "not_quiet_runs": sum(1 for l in mine if not l["quiet"]),
               "disturbed_runs": sum(1 for l in mine if l["disturbed"]),
               "runs_again": sum(1 for l in every if l["contestant"] == c and not l["kept"]),
               "other_cpu_sec_max": max((l["other_cpu_sec"] for l in mine), default=0),
               "errors": sorted({l["error"] for l in mine if "error" in l})}
others = [c for c in contestants if c != "traind"]
ratio = {}
t = rows.get("traind")

def best(key, pick):
    have = [(rows[c][key], c) for c in others if rows[c][key] is not None]
    return pick(have) if have else (None, None)

if t:
    for key, pick in (("tokens_per_sec", max), ("sec_to_target", min),
                      ("wall_to_target_sec", min)):
        v, c = best(key, pick)
        if v and t[key]:
            ratio[key] = {"best": c, "best_value": v, "traind_over_best": round(t[key] / v, 3)}

def f(v, d=1):
    return "-" if v is None else f"{v:.{d}f}"

head = ["contestant", "tokens/s", f"s_to_{target}", f"wall_s_to_{target}", "step",
        "reached", "final_val", "not_quiet", "disturbed", "again", "other_cpu_max"]
table = [head]
for c in contestants:
    s = rows[c]
    table.append([c, f(s["tokens_per_sec"], 0), f(s["sec_to_target"]),
                  f(s["wall_to_target_sec"]), f(s["target_step"], 0),
                  f"{s['reached']}/{s['runs']}", f(s["final_val_loss"], 4),
                  str(s["not_quiet_runs"]), str(s["disturbed_runs"]), str(s["runs_again"]),
                  f(s["other_cpu_sec_max"])])
widths = [max(len(r[i]) for r in table) for i in range(len(head))]
lines = ["  ".join(v.rjust(w) if i else v.ljust(w) for i, (v, w) in enumerate(zip(r, widths)))
         for r in table]
names = {"tokens_per_sec": "tokens/s", "sec_to_target": f"s_to_{target}",
         "wall_to_target_sec": f"wall_s_to_{target}"}
for key, v in ratio.items():
    lines.append(f"traind / best other ({v['best']}) {names[key]}: {v['traind_over_best']:.3f}")
for c in contestants:
    for e in rows[c]["errors"]:
        lines.append(f"{c}: {e}")
first = runs[0] if runs else {}
m = first.get("machine", {})
lines.insert(0, f"gpt_race {first.get('date')} commit {first.get('commit')}: {m.get('cpu')}, "
                f"{m.get('cores')} cores, {first.get('threads')} threads, medians over "
                f"{max((l['round'] for l in runs), default=0)} rounds")
text = "\n".join(lines) + "\n"
print(text, end="")
open(summary_path, "w").write(text)
with open(path, "a") as fh:
    fh.write(json.dumps({"bench": "gpt_race", "date": first.get("date"),
                         "commit": first.get("commit"), "machine": first.get("machine"),
                         "threads": first.get("threads"), "target": float(target),
                         "summary": rows, "ratio": ratio}) + "\n")
EOF
echo "wrote $out and $summary"
