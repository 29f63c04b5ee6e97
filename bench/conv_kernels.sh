#!/usr/bin/env bash
# Candidate CPU kernels for the convolution and dense layers of the MNIST
# CNN: oneDNN (format any + reorders, and NHWC direct),
# im2col + OpenBLAS sgemm, im2col + BLIS sgemm, libxsmm's DNN convolution.
#   bench/conv_kernels.sh [ROUNDS] [OUT]
# Builds build-bench/conv_kernels from bench/conv_kernels.c with a plain cc
# command, then:
#   1. a checking pass: each candidate at 1 and 2 threads with --check
#      (float64 reference, max relative error; first run of each op against
#      its last run, bit for bit);
#   2. ROUNDS timing rounds (default 5): in each, every candidate at 1 and 2
#      threads, one process per candidate and thread count, in an order that
#      rotates from round to round so that load from other work falls on
#      all alike; each process reports the median of 15 timed runs per op;
#   3. two replica threads, each with OpenMP 1 thread and its own oneDNN
#      primitives, running conv2's ops alone and then at the same time
#      (3 repetitions for each oneDNN variant);
#   4. a summary: per op, candidate and thread count, the median over the
#      rounds of the per-process medians, and whether every process of a
#      (candidate, threads) pair produced bitwise the same outputs.
# Writes everything to OUT (default bench/results/conv_kernels-DATE.txt).
# Takes about 2 minutes (5 rounds) on 2 idle cores; run it on a quiet machine.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${1:-5}"
out="${2:-bench/results/conv_kernels-$(date -u +%F).txt}"
mkdir -p build-bench bench/results
. bench/kernel_libs.sh
bin=build-bench/conv_kernels
# -isystem: blis.h itself does not build with -Wextra -Werror.
cc -Wall -Wextra -Werror -O3 -march=native -fopenmp -isystem "$blis_inc" \
  -o "$bin" bench/conv_kernels.c $(pkg-config --libs openblas) -lblis -ldnnl \
  -lxsmm -lxsmmnoblas -lpthread -lrt -ldl -lm

cands=(dnnl-any dnnl-nhwc im2col-openblas im2col-blis xsmm)
run() { # threads, then conv_kernels arguments
  local t="$1"
  shift
  OMP_NUM_THREADS="$t" OPENBLAS_NUM_THREADS="$t" BLIS_NUM_THREADS="$t" "$bin" --threads "$t" "$@"
}
load() {
  printf 'load %s soak=%s\n' "$(uptime | sed 's/.*load average: //')" \
    "$(pgrep -f scripts/soak >/dev/null && echo running || echo none)"
}

{
  printf 'date %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  printf 'machine cpu="%s" family=%s model=%s cores=%d\n' "$(lscpu | sed -n 's/^Model name:\s*//p' | head -1)" \
    "$(lscpu | sed -n 's/^CPU family:\s*//p')" "$(lscpu | sed -n 's/^Model:\s*//p')" "$(nproc)"
  printf 'cc %s\n' "$(cc --version | head -1)"
  for p in libdnnl-dev libopenblas0-pthread libblis4-openmp libxsmm-dev; do
    printf 'package %s %s\n' "$p" "$(dpkg-query -W -f '${Version}' "$p" 2>/dev/null || echo absent)"
  done
  "$bin" --env
  load
  echo "# pass 1: checks"
  for t in 1 2; do
    for c in "${cands[@]}"; do
      run "$t" --cand "$c" --check --iters 3 --warmup 1
    done
  done
  echo "# pass 2: timing, $rounds rounds"
  for r in $(seq 1 "$rounds"); do
    load
    for t in 1 2; do
      for i in "${!cands[@]}"; do
        c="${cands[$(((i + r) % ${#cands[@]}))]}"
        run "$t" --cand "$c" --iters 15 --warmup 3 | sed "s/^/round=$r /"
      done
    done
  done
  echo "# pass 3: two replica threads, OpenMP 1 thread each"
  for r in 1 2 3; do
    for c in dnnl-any dnnl-nhwc; do
      run 1 --concurrent 1 --cand "$c" --iters 15 | sed "s/^/round=$r /"
    done
  done
  load
  printf 'end %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
} | tee "$out.tmp"

# Summary from the timing lines: key=value fields, medians over rounds.
awk '
function med(s,   a, n, i, j, t) {
  n = split(s, a, " ")
  for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] + 0 < a[i] + 0) { t = a[i]; a[i] = a[j]; a[j] = t }
  return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
}
/^round=[0-9]+ result / {
  delete f
  for (i = 1; i <= NF; i++) { split($i, kv, "="); f[kv[1]] = kv[2] }
  k = f["cand"] SUBSEP f["threads"] SUBSEP f["op"]
  ms[k] = ms[k] " " f["median_ms"]; ro[k] = ro[k] " " f["reorder_ms"]
  if (!(k in hash)) hash[k] = f["hash"]; else if (hash[k] != f["hash"]) diff[k] = 1
  if (f["bitwise"] != "yes") nonrep[k] = 1
  if (!(k in seen)) { seen[k] = 1; order[++nk] = k }
}
/^round=[0-9]+ concurrent .*together_ms/ {
  delete f
  for (i = 1; i <= NF; i++) { split($i, kv, "="); f[kv[1]] = kv[2] }
  ck = f["cand"] SUBSEP f["op"]
  alone[ck] = alone[ck] " " f["alone_ms"]; tog[ck] = tog[ck] " " f["together_ms"]
  if (!(ck in cseen)) { cseen[ck] = 1; corder[++nc] = ck }
}
END {
  print "# summary: median over rounds of per-process median ms"
  for (i = 1; i <= nk; i++) {
    split(order[i], p, SUBSEP)
    m = med(ms[order[i]])
    printf "summary cand=%s threads=%s op=%s median_ms=%.3f reorder_ms=%.3f same_bits_every_process=%s\n", p[1], p[2], p[3], m,
      med(ro[order[i]]), (order[i] in diff || order[i] in nonrep) ? "NO" : "yes"
    tot[p[1] SUBSEP p[2]] += m
    if (p[3] ~ /^conv/) ctot[p[1] SUBSEP p[2]] += m
  }
  for (i = 1; i <= nk; i++) {
    split(order[i], p, SUBSEP)
    if (p[2] != 1) continue
    k2 = p[1] SUBSEP 2 SUBSEP p[3]
    if (k2 in hash) printf "threads_invariant cand=%s op=%s same_bits_1_vs_2_threads=%s\n", p[1], p[3], hash[order[i]] == hash[k2] ? "yes" : "no"
  }
  for (k in tot) { split(k, p, SUBSEP); printf "total cand=%s threads=%s conv_ms=%.3f all_ops_ms=%.3f\n", p[1], p[2], ctot[k], tot[k] }
  for (i = 1; i <= nc; i++) {
    split(corder[i], p, SUBSEP)
    printf "concurrent_summary cand=%s op=%s alone_ms=%.3f together_ms=%.3f\n", p[1], p[2], med(alone[corder[i]]), med(tog[corder[i]])
  }
}' "$out.tmp" | sort -s -k1,1 | tee -a "$out.tmp"
mv "$out.tmp" "$out"
echo "wrote $out"
