#!/usr/bin/env bash
# The reference program on one GPU: traind against JAX and PyTorch.
#   bash bench/gpu_race.sh [OUTDIR]        (from anywhere; default $OUT, else bench/results)
#
# Meant for a fresh GPU machine with CUDA (nvcc), cmake, a C compiler and a
# python3 that has jax (with its CUDA plugin), optax, torch and numpy, but
# neither network nor traind's Debian build dependencies. Run
# bench/gpu/prepare.sh on a Debian 12 machine first and carry the two
# git-ignored folders it makes:
#   .debs/   .deb files unpacked here into a sysroot (/tmp/sysroot) that
#            cmake, pkg-config, protoc-c and the linker are pointed at;
#   .mnist/  a data root holding mnist/*.gz, used when neither
#            $TRAIND_DATA_DIR nor ../shared/data holds MNIST.
# A machine that has the build dependencies installed needs neither .debs
# nor this sysroot.
#
# Steps, each recorded whether it works or not:
#   env     nvidia-smi, nvcc, gcc, cmake, python, jax and torch versions
#   build   build-gpu/ (Release, TRAIND_CUDA=ON) with the sysroot
#   ctest   ctest -L gpu in build-gpu (the CUDA backend against the CPU's)
#   races   the reference program for 10 epochs, each epoch timed:
#             traind-gpu    traind run bench/gpu/mnist_mlp_gpu.yaml (CUDA graph)
#             jax-loop      bench/gpu/jax_mnist.py (a jitted step per batch)
#             jax-scan      bench/gpu/jax_mnist.py --scan (an epoch per call)
#             torch-eager   bench/gpu/torch_mnist.py
#             torch-graphs  bench/gpu/torch_mnist.py --cuda-graphs
#             traind-cpu    traind run config/jobs/mnist_mlp.yaml on the host CPU
#             jax-scan-tf32 jax-scan with JAX's default matmul precision (TF32)
# Writes OUTDIR/gpu_race-DATE.jsonl (one JSON object per step: part,
# status, seconds, and for a race epoch_sec, steady_epoch_sec = the median
# of epochs 2.., test_accuracy, device) and gpu_race-DATE-{env,build,ctest,
# runs}.log, appending; prints a table. Everything stays within
# $TRAIND_RACE_BUDGET seconds (default 540): a step that would start too
# late is recorded as skipped, and each runs under a timeout.
set -u
cd "$(dirname "$0")/.." || exit 1

outdir="${1:-${OUT:-bench/results}}"
mkdir -p "$outdir" || { echo "gpu_race.sh: cannot create $outdir" >&2; exit 1; }
day="$(date -u +%Y-%m-%d)"
jsonl="$outdir/gpu_race-$day.jsonl"
envlog="$outdir/gpu_race-$day-env.log"
buildlog="$outdir/gpu_race-$day-build.log"
ctestlog="$outdir/gpu_race-$day-ctest.log"
runlog="$outdir/gpu_race-$day-runs.log"
budget="${TRAIND_RACE_BUDGET:-540}"
py="${PYTHON:-python3}"
sysroot=/tmp/sysroot
build="build-gpu"
for f in "$envlog" "$buildlog" "$ctestlog" "$runlog"; do
  printf '\n===== gpu_race.sh %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" >> "$f"
done

gpu_name="$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)"
export RACE_DATE RACE_COMMIT RACE_GPU RACE_CPU RACE_HOST
RACE_DATE="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
RACE_COMMIT="${TRAIND_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}"
RACE_GPU="${gpu_name:-none}"
RACE_CPU="$(lscpu 2>/dev/null | sed -n 's/^Model name:[[:space:]]*//p' | head -1)"
RACE_HOST="$(hostname 2>/dev/null || echo unknown)"

# record PART STATUS RC SECONDS NOTE [RESULT]: appends one JSON line; RESULT
# is the JSON object a race printed, merged in.
record() {
  "$py" - "$@" >> "$jsonl" 2>/dev/null <<'PY' ||
import json, os, sys
part, status, rc, sec, note = sys.argv[1:6]
rec = {"bench": "gpu_race", "part": part, "status": status, "rc": int(rc),
       "sec": float(sec), "date": os.environ["RACE_DATE"],
       "commit": os.environ["RACE_COMMIT"], "gpu": os.environ["RACE_GPU"],
       "host": os.environ["RACE_HOST"]}
if note:
    rec["note"] = note
if len(sys.argv) > 6 and sys.argv[6]:
    res = json.loads(sys.argv[6])
    if "impl" not in res:  # traind's summary: lift the common fields
        rec.update({k: res[k] for k in ("epoch_sec", "steady_epoch_sec", "test_accuracy",
                                         "train_loss", "batch_size") if k in res})
        rec["steps_per_epoch"] = res.get("steps", 0) // max(res.get("epochs", 1), 1)
        rec["device"] = (f"gpu: {os.environ['RACE_GPU']}" if part.endswith("-gpu")
                         else f"cpu: {os.environ['RACE_CPU']}")
        rec["traind"] = res
    else:
        rec.update(res)
print(json.dumps(rec))
PY
    printf '{"bench":"gpu_race","part":"%s","status":"%s","rc":%d,"sec":%d,"note":"record failed"}\n' \
      "$1" "$2" "$3" "$4" >> "$jsonl"
}

# left: the seconds of the budget still free, less a reserve for the table.
left() { echo $((budget - SECONDS - 15)); }

# race PART CAP CMD...: runs CMD under a timeout of CAP seconds (less when
# the budget is short), its output to the run log, and records the last
# JSON object it printed on stdout, or else its last line on stderr.
errfile="$(mktemp)"
trap 'rm -f "$errfile"' EXIT
race() {
  local part="$1" cap="$2" t0=$SECONDS out rc json status note=""
  shift 2
  if [ "$(left)" -lt 20 ]; then
    record "$part" skipped 0 0 "time budget"
    return
  fi
  [ "$cap" -gt "$(left)" ] && cap="$(left)"
  echo "== $part: $*" >> "$runlog"
  out="$(timeout -k 10 "$cap" "$@" 2>"$errfile")"
  rc=$?
  cat "$errfile" >> "$runlog"
  printf '%s\n' "$out" >> "$runlog"
  json="$(printf '%s\n' "$out" | grep '^{' | tail -1)"
  if [ "$rc" -eq 0 ] && [ -n "$json" ]; then
    status=ok
  elif [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
    status=timeout note="killed after ${cap}s" json=""
  else
    status=failed json=""
    note="exit $rc: $(tr '\r' '\n' < "$errfile" | grep -v '^[[:space:]]*$' | tail -1 | cut -c1-240)"
  fi
  echo "== $part: $status in $((SECONDS - t0)) s" >> "$runlog"
  record "$part" "$status" "$rc" $((SECONDS - t0)) "$note" "$json"
}

# ---- env: the machine and the software under test
{
  echo "## nvidia-smi"; nvidia-smi 2>&1
  echo "## nvcc"; { command -v nvcc >/dev/null && nvcc --version; } ||
    /usr/local/cuda/bin/nvcc --version 2>&1
  echo "## gcc"; gcc --version 2>&1 | head -1
  echo "## cmake"; cmake --version 2>&1 | head -1
  echo "## os"; uname -a; sed -n 's/^PRETTY_NAME=//p' /etc/os-release 2>/dev/null
  ldd --version 2>&1 | head -1
  echo "## cpu"; lscpu 2>/dev/null | grep -E '^(Model name|CPU\(s\)):'
  echo "## python"; "$py" - <<'PY' 2>&1
import sys
print("python", sys.version.split()[0])
for m in ("numpy", "jax", "jaxlib", "optax", "torch"):
    try:
        mod = __import__(m)
        print(m, mod.__version__)
    except Exception as e:  # recorded, not fatal
        print(m, "unavailable:", e)
PY
} >> "$envlog" 2>&1
record env ok 0 "$SECONDS" ""

# ---- the data root: $TRAIND_DATA_DIR, ../shared/data, or the carried .mnist
data=""
for d in "${TRAIND_DATA_DIR:-}" ../shared/data .mnist; do
  if [ -n "$d" ] && [ -f "$d/mnist/train-images-idx3-ubyte.gz" ]; then
    data="$(cd "$d" && pwd)"
    break
  fi
done
[ -n "$data" ] || record data failed 1 0 "no mnist/ under \$TRAIND_DATA_DIR, ../shared/data or .mnist"

# ---- the sysroot: the carried .debs, unpacked, for the build only
# sysenv runs a command with the sysroot's tools, pkg-config files and
# libraries; the framework races run without it.
sysenv=(env)
if compgen -G ".debs/*.deb" >/dev/null; then
  t0=$SECONDS
  (
    rm -rf "$sysroot" && mkdir -p "$sysroot" || exit 1
    for deb in .debs/*.deb; do dpkg-deb -x "$deb" "$sysroot" || exit 1; done
  ) >> "$buildlog" 2>&1
  rc=$?
  lib="$sysroot/usr/lib/x86_64-linux-gnu"
  if [ "$rc" -eq 0 ]; then
    # The .pc files say prefix=/usr: point them into the sysroot, and drop
    # Requires.private (only static linking needs it; the packages behind
    # it are not carried).
    find "$sysroot" -name '*.pc' -type f -exec sed -i -E \
      -e "s#(^|[=[:space:]]|-I|-L)/usr(/|\$)#\\1$sysroot/usr\\2#g" \
      -e '/^Requires\.private:/d' {} +
    # Debian's absolute links (libz.so -> /lib/x86_64-linux-gnu/libz.so.1.2.13)
    # would leave the sysroot: point them into it.
    find "$sysroot" -type l -lname '/*' | while read -r l; do
      ln -sfn "$sysroot$(readlink "$l")" "$l"
    done
    # Debian's alternatives links (hdf5.pc, openblas.pc, libopenblas.so.0),
    # which only dpkg's maintainer scripts would create.
    if [ -f .debs/alternatives.txt ]; then
      while read -r link target; do
        [ -e "$sysroot$target" ] || continue
        mkdir -p "$(dirname "$sysroot$link")"
        ln -sfn "$sysroot$target" "$sysroot$link"
      done < .debs/alternatives.txt
    fi
    # Run-time libraries, by SONAME: only those the machine itself lacks, so
    # that the image's own copies (libssl, libcurl, ...) serve everything else.
    mkdir -p "$sysroot/runtime"
    cache="$(ldconfig -p 2>/dev/null | grep 'x86-64')"
    while IFS= read -r -d '' so; do
      name="$(readelf -d "$so" 2>/dev/null | sed -n 's/.*(SONAME).*\[\(.*\)\]$/\1/p')"
      if [ -z "$name" ] || [ -e "$sysroot/runtime/$name" ]; then continue; fi
      sys="$(awk -v n="$name" '$1 == n { print $NF; exit }' <<< "$cache")"
      if [ -z "$sys" ] || [ ! -s "$sys" ]; then
        ln -s "$so" "$sysroot/runtime/$name"
      fi
    done < <(find "$sysroot/lib/x86_64-linux-gnu" "$lib" -type f -name 'lib*.so*' -print0 2>/dev/null)
    # The root CMakeLists.txt reads the protobuf well-known types from
    # /usr/include/google/protobuf (Debian's libprotobuf-dev): lend it the
    # sysroot's where the image has none.
    if [ ! -e /usr/include/google/protobuf/wrappers.proto ]; then
      mkdir -p /usr/include/google &&
        ln -sfn "$sysroot/usr/include/google/protobuf" /usr/include/google/protobuf
    fi
    sysenv=(env
      "PATH=$sysroot/usr/bin:$PATH"
      "PKG_CONFIG_PATH=$lib/pkgconfig:$sysroot/usr/share/pkgconfig:$sysroot/usr/lib/pkgconfig${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}"
      "CMAKE_PREFIX_PATH=$sysroot/usr${CMAKE_PREFIX_PATH:+:$CMAKE_PREFIX_PATH}"
      "LIBRARY_PATH=$lib:$sysroot/lib/x86_64-linux-gnu:$lib/openblas-pthread${LIBRARY_PATH:+:$LIBRARY_PATH}"
      "CPATH=$sysroot/usr/include${CPATH:+:$CPATH}"
      "LD_LIBRARY_PATH=$sysroot/runtime${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}")
    debs=(.debs/*.deb)
    runtime=("$sysroot"/runtime/*)
    echo "sysroot: ${#debs[@]} packages in $sysroot; ${#runtime[@]} run-time libraries" \
         "the machine lacks: ${runtime[*]##*/}" >> "$buildlog"
    record sysroot ok 0 $((SECONDS - t0)) ""
  else
    record sysroot failed "$rc" $((SECONDS - t0)) "dpkg-deb -x failed; see $(basename "$buildlog")"
  fi
fi

# ---- build: Release, with the CUDA backend
t0=$SECONDS
n0="$(wc -l < "$buildlog")"
(
  gen=()
  command -v ninja >/dev/null && gen=(-G Ninja)
  cuda=()
  if [ ! -x /usr/local/cuda/bin/nvcc ] && command -v nvcc >/dev/null; then
    cuda=(-DCMAKE_CUDA_COMPILER="$(command -v nvcc)")
  fi
  keep_going=()
  [ ${#gen[@]} -gt 0 ] && keep_going=(-- -k 0)
  if [ ! -f "$build/CMakeCache.txt" ]; then
    timeout 120 "${sysenv[@]}" cmake -S . -B "$build" "${gen[@]}" -DCMAKE_BUILD_TYPE=Release \
      -DTRAIND_CUDA=ON "${cuda[@]}" || exit 1
  fi
  cap=$(($(left) > 300 ? 300 : $(left)))
  timeout "$((cap > 30 ? cap : 30))" \
    "${sysenv[@]}" cmake --build "$build" -j "$(nproc)" "${keep_going[@]}"
) >> "$buildlog" 2>&1
rc=$?
traind=""
for t in "$build/traind" "$build/daemon/traind"; do [ -x "$t" ] && traind="$t" && break; done
if [ "$rc" -eq 0 ]; then
  record build ok 0 $((SECONDS - t0)) ""
else
  err="$(tail -n +"$((n0 + 1))" "$buildlog" | grep -m1 -E 'error|Error' | cut -c1-200)"
  record build failed "$rc" $((SECONDS - t0)) \
    "${err:-see $(basename "$buildlog")}${traind:+ (traind itself was built)}"
fi

# ---- ctest -L gpu: the CUDA backend against the CPU backend
if [ -f "$build/CTestTestfile.cmake" ] && [ "$(left)" -ge 30 ]; then
  t0=$SECONDS
  cap=$(($(left) > 150 ? 150 : $(left)))
  out="$(cd "$build" && timeout -k 10 "$cap" "${sysenv[@]}" TRAIND_DATA_DIR="$data" \
    ctest -L gpu --output-on-failure --timeout $((cap - 10)) 2>&1)"
  rc=$?
  printf '%s\n' "$out" >> "$ctestlog"
  summary="$(grep -E 'tests passed|No tests were found' <<< "$out" | tail -1)"
  ran="$(grep -cE '^ *[0-9]+/[0-9]+ Test +#' <<< "$out")"
  skipped="$(grep -cE '^ *[0-9]+/[0-9]+ Test +#.*Skipped' <<< "$out")"
  status=failed
  [ "$rc" -eq 0 ] && status=ok
  # Every GPU test skips itself where it finds no usable GPU.
  [ "$rc" -eq 0 ] && [ "$ran" -gt 0 ] && [ "$skipped" -eq "$ran" ] && status=skipped
  record ctest-gpu "$status" "$rc" $((SECONDS - t0)) "$summary; $skipped of $ran skipped"
else
  record ctest-gpu skipped 0 0 "no build or no time"
fi

# ---- the races, most telling first
if [ -n "$data" ]; then
  if [ -n "$traind" ]; then
    race traind-gpu 120 "${sysenv[@]}" "$traind" run bench/gpu/mnist_mlp_gpu.yaml --json \
      --data-dir "$data"
  else
    record traind-gpu skipped 0 0 "traind was not built"
  fi
  race jax-scan 120 "$py" bench/gpu/jax_mnist.py --scan --data-dir "$data"
  race torch-graphs 120 "$py" bench/gpu/torch_mnist.py --cuda-graphs --data-dir "$data"
  race jax-loop 120 "$py" bench/gpu/jax_mnist.py --data-dir "$data"
  race torch-eager 120 "$py" bench/gpu/torch_mnist.py --data-dir "$data"
  if [ -n "$traind" ]; then
    race traind-cpu 90 "${sysenv[@]}" "$traind" run config/jobs/mnist_mlp.yaml --json \
      --data-dir "$data"
  fi
  race jax-scan-tf32 90 "$py" bench/gpu/jax_mnist.py --scan --matmul-precision default \
    --data-dir "$data"
else
  record races skipped 0 0 "no MNIST data root"
fi

# ---- the table: this run's records
"$py" - "$jsonl" "$RACE_DATE" <<'PY' | tee -a "$runlog"
import json, sys
path, date = sys.argv[1:3]
rows = [json.loads(l) for l in open(path) if l.strip()]
rows = [r for r in rows if r.get("date") == date]
gpu = rows[0].get("gpu", "?") if rows else "?"
print(f"gpu_race {date}  gpu: {gpu}  commit: {rows[0].get('commit', '?') if rows else '?'}")
ref = next((r["steady_epoch_sec"] for r in rows
            if r.get("part") == "traind-gpu" and r.get("status") == "ok"), None)
print(f"{'part':<15}{'status':<9}{'steady s/epoch':>15}{'epoch 1 s':>11}"
      f"{'examples/s':>12}{'test acc':>10}{'vs traind':>11}")
for r in rows:
    if r.get("steady_epoch_sec"):
        s = r["steady_epoch_sec"]
        ex = r.get("steps_per_epoch", 0) * r.get("batch_size", 0) / s
        rel = f"{s / ref:.2f}x" if ref else "-"
        print(f"{r['part']:<15}{r['status']:<9}{s:>15.4f}{r['epoch_sec'][0]:>11.3f}"
              f"{ex:>12,.0f}{r.get('test_accuracy', 0):>10.4f}{rel:>11}")
    else:
        note = r.get("note", "")
        print(f"{r['part']:<15}{r['status']:<9}  {r['sec']:.0f} s  {note}"[:160])
print("(vs traind: steady epoch time over traind-gpu's; above 1 is slower)")
PY
echo "gpu_race.sh: $jsonl and logs in $outdir ($SECONDS s)"
