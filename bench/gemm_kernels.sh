#!/usr/bin/env bash
# Candidate single-threaded SGEMMs for the CPU backend (OpenBLAS, BLIS,
# oneDNN's dnnl_sgemm, libxsmm) on the GEMMs of the dense layers of the race
# MLPs: the reference 784-256-128-10 at batch 32, 128 and 1024, the wide
# 784-2048-2048-10 and the deep 784, 8 x 128, 10 at batch 128.
#   bench/gemm_kernels.sh [--quick] [ROUNDS] [OUT]
# Builds build-bench/gemm_kernels from bench/gemm_kernels.c with a plain cc
# command, then:
#   1. a checking pass: one process, every candidate on every shape, whole
#      and as 2 tiles on 2 threads, plus tiles of 16 one after the other;
#      C against a float64 reference (max |c - ref| / max |ref|) and every
#      tiled C against the whole C, bit for bit;
#   2. ROUNDS timing rounds (default 3): in each, one process per candidate,
#      in an order that rotates from round to round so that load from other
#      work falls on all alike; each process times every shape whole (one
#      thread) and as 2 tiles on 2 threads (cut as kernels/cpu/cpu_backend.c
#      cpu_gemm cuts C), at least 15 runs and 40 ms each, and reports medians;
#   3. a summary: per shape, candidate and mode the median over the rounds
#      of the per-process medians; whether every process's tiled C equalled
#      its whole C bit for bit (and, from pass 1, tiles of 16); and per step
#      row the sum of its GEMMs' medians (each GEMM times its count in the
#      step: the deep MLP has seven 128x128 layers).
# --quick: 1 round with few repetitions, to check the script while working on
# it; it writes build-bench/gemm_kernels-quick.txt unless OUT is given.
# Writes everything to OUT (default bench/results/gemm_kernels-DATE.txt).
# Takes about 1.5 minutes (3 rounds) on 2 idle cores; run it on a quiet machine.
set -euo pipefail
cd "$(dirname "$0")/.."
quick=0
if [ "${1:-}" = "--quick" ]; then
  quick=1
  shift
fi
if [ "$quick" -eq 1 ]; then
  rounds="${1:-1}"
  out="${2:-build-bench/gemm_kernels-quick.txt}"
  timing=(--iters 3 --warmup 1 --min-ms 2)
else
  rounds="${1:-3}"
  out="${2:-bench/results/gemm_kernels-$(date -u +%F).txt}"
  timing=(--iters 15 --warmup 3 --min-ms 40)
fi
mkdir -p build-bench "$(dirname "$out")"
. bench/kernel_libs.sh
bin=build-bench/gemm_kernels
# -isystem: blis.h itself does not build with -Wextra -Werror. libxsmm comes
# before OpenBLAS, and without libxsmmnoblas, so that libxsmm's BLAS calls
# reach OpenBLAS's sgemm_ (the program counts them).
cc -Wall -Wextra -Werror -O3 -march=native -fopenmp -isystem "$blis_inc" \
  -o "$bin" bench/gemm_kernels.c -lxsmm $(pkg-config --libs openblas) -lblis -ldnnl \
  -lpthread -lrt -ldl -lm

cands=(openblas blis dnnl xsmm)
run() { # gemm_kernels arguments; every library single-threaded
  OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 BLIS_NUM_THREADS=1 "$bin" "$@"
}
load() {
  printf 'load %s soak=%s\n' "$(uptime | sed 's/.*load average: //')" \
    "$(pgrep -f scripts/soak >/dev/null && echo running || echo none)"
}

{
  printf 'date %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  printf 'command bench/gemm_kernels.sh%s %s %s\n' "$([ "$quick" -eq 1 ] && echo ' --quick')" "$rounds" "$out"
  printf 'machine cpu="%s" family=%s model=%s cores=%d\n' "$(lscpu | sed -n 's/^Model name:\s*//p' | head -1)" \
    "$(lscpu | sed -n 's/^CPU family:\s*//p')" "$(lscpu | sed -n 's/^Model:\s*//p')" "$(nproc)"
  printf 'cc %s\n' "$(cc --version | head -1)"
  for p in libopenblas0-pthread libblis4-openmp libdnnl-dev libxsmm-dev; do
    printf 'package %s %s\n' "$p" "$(dpkg-query -W -f '${Version}' "$p" 2>/dev/null || echo absent)"
  done
  run --env
  run --list
  load
  echo "# pass 1: checks"
  run --cand all --check --iters 3 --warmup 1 --min-ms 1
  echo "# pass 2: timing, $rounds rounds"
  for r in $(seq 1 "$rounds"); do
    load
    for i in "${!cands[@]}"; do
      c="${cands[$(((i + r) % ${#cands[@]}))]}"
      run --cand "$c" "${timing[@]}" | sed "s/^/round=$r /"
    done
  done
  load
  printf 'end %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
} | tee "$out.tmp"

# Summary from the result lines: key=value fields, shape="..." quoted.
awk '
function med(s,   a, n, i, j, t) {
  n = split(s, a, " ")
  for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] + 0 < a[i] + 0) { t = a[i]; a[i] = a[j]; a[j] = t }
  return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
}
function fields(   i, kv) {
  delete f
  for (i = 1; i <= NF; i++) if (split($i, kv, "=") == 2) f[kv[1]] = kv[2]
  match($0, /shape="[^"]*"/); f["shape"] = substr($0, RSTART + 7, RLENGTH - 8)
}
BEGIN { nc = split("openblas blis dnnl xsmm", cand, " ") }
/^shape name=/ { match($0, /name="[^"]*"/); s = substr($0, RSTART + 6, RLENGTH - 7); shp[++ns] = s
  match($0, /mflop=[0-9.]+/); mflop[s] = substr($0, RSTART + 6, RLENGTH - 6) }
/^step row=/ { fields(); split($2, kv, "="); r = kv[2]
  if (!(r in rseen)) { rseen[r] = 1; rows[++nr] = r }
  item[r] = item[r] SUBSEP f["shape"]; cnt[r SUBSEP f["shape"]] = f["count"] }
/^result / { fields(); k = f["shape"] SUBSEP f["cand"] SUBSEP f["mode"]
  err[k] = f["relerr"]; impl[k] = f["impl"]; if (f["bitwise"] != "yes") bad[k] = 1
  if (f["mode"] == "whole") hash[k] = f["hash"] }
/^tiles16 / { fields(); k = f["shape"] SUBSEP f["cand"]; t16[k] = f["bitwise"] }
/^round=[0-9]+ result / { fields(); k = f["shape"] SUBSEP f["cand"] SUBSEP f["mode"]
  us[k] = us[k] " " f["median_us"]; if (f["bitwise"] != "yes") bad[k] = 1
  if (f["mode"] == "whole") { if (!(k in hash)) hash[k] = f["hash"]; else if (hash[k] != f["hash"]) bad[k] = 1 } }
END {
  print "# summary: median over rounds of per-process median us; gflops from it;"
  print "# bitwise: every process C(2tiles) == C(whole) (and whole C the same in every process);"
  print "# tiles16: C as tiles of 16 == C(whole) (pass 1); relerr: max |c-ref|/max |ref| vs float64 (pass 1)"
  for (i = 1; i <= ns; i++) for (c = 1; c <= nc; c++) for (mo = 1; mo <= 2; mo++) {
    m = mo == 1 ? "whole" : "2tiles"; k = shp[i] SUBSEP cand[c] SUBSEP m
    if (!(k in us)) continue
    v = med(us[k]); M[k] = v
    printf "summary shape=\"%s\" cand=%s mode=%s median_us=%.2f gflops=%.2f relerr=%s bitwise=%s tiles16=%s impl=%s\n",
      shp[i], cand[c], m, v, mflop[shp[i]] / v * 1e3, err[k], (k in bad) ? "NO" : "yes",
      t16[shp[i] SUBSEP cand[c]], impl[k]
  }
  print ""
  print "# table: median us whole / 2tiles; * = tiled C not bitwise equal to whole C (2 tiles or tiles of 16)"
  printf "%-20s %8s", "shape", "MFLOP"
  for (c = 1; c <= nc; c++) printf "  %21s", cand[c] " whole/2tiles"
  printf "\n"
  for (i = 1; i <= ns; i++) {
    printf "%-20s %8.2f", shp[i], mflop[shp[i]]
    for (c = 1; c <= nc; c++) {
      kw = shp[i] SUBSEP cand[c] SUBSEP "whole"; kt = shp[i] SUBSEP cand[c] SUBSEP "2tiles"
      mark = ((kt in bad) || t16[shp[i] SUBSEP cand[c]] == "NO") ? "*" : " "
      printf "  %9.1f / %8.1f%s", M[kw], M[kt], mark
    }
    printf "\n"
  }
  print ""
  print "# step rows: sum over the step GEMMs (count x median us); not_bitwise = GEMMs of the row whose tiled C differs"
  printf "%-10s", "row"
  for (c = 1; c <= nc; c++) printf "  %26s", cand[c] " whole/2tiles (not_bitwise)"
  printf "  %s\n", "fastest whole, 2tiles"
  for (r = 1; r <= nr; r++) {
    row = rows[r]; n = split(substr(item[row], 2), its, SUBSEP)
    printf "%-10s", row
    bw = ""; bt = ""; vw = 1e30; vt = 1e30
    for (c = 1; c <= nc; c++) {
      sw = 0; st = 0; nb = 0
      for (j = 1; j <= n; j++) {
        q = cnt[row SUBSEP its[j]]
        kw = its[j] SUBSEP cand[c] SUBSEP "whole"; kt = its[j] SUBSEP cand[c] SUBSEP "2tiles"
        sw += q * M[kw]; st += q * M[kt]
        if ((kt in bad) || t16[its[j] SUBSEP cand[c]] == "NO") nb++
      }
      printf "  %10.1f / %10.1f (%d/%d)", sw, st, nb, n
      lines = lines sprintf("step_total row=%s cand=%s whole_us=%.1f tiles2_us=%.1f gemms=%d not_bitwise=%d\n", row, cand[c], sw, st, n, nb)
      if (sw < vw) { vw = sw; bw = cand[c] }
      if (st < vt) { vt = st; bt = cand[c] }
    }
    printf "  %s, %s\n", bw, bt
  }
  printf "%s", lines
}' "$out.tmp" | tee -a "$out.tmp"
mv "$out.tmp" "$out"
echo "wrote $out"
