# Sourced by the kernel benchmarks (conv_kernels.sh, gemm_kernels.sh):
# installs the candidate libraries' Debian packages (not needed to build
# traind) and sets blis_inc, BLIS's OpenMP header directory.
missing=()
for p in libdnnl-dev libxsmm-dev libblis-dev libopenblas-dev; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
blis_inc=/usr/include/x86_64-linux-gnu/blis-openmp
