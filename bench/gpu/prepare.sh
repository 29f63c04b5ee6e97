#!/usr/bin/env bash
# Prepares the carried inputs of bench/gpu_race.sh, on a Debian 12 machine
# with scripts/setup's packages installed and the Debian archive reachable.
#   bench/gpu/prepare.sh
# The GPU machine has CUDA, Python and a compiler but none of traind's
# Debian build dependencies and no network, so this collects:
#   .debs/   the .deb files that building traind needs and the image may
#            lack: scripts/setup's -dev packages that the build links
#            against, protoc-c, the packages behind every library on their
#            link lines (pkg-config) and every shared library those load,
#            found with ldd here. libc6, libstdc++6 and libgcc-s1 are the
#            image's own and never carried. Plus alternatives.txt: the
#            Debian alternatives links (hdf5.pc, openblas.pc, ...) that
#            dpkg -x does not create.
#   .mnist/  a data root holding mnist/ (the four gzipped IDX files), from
#            ${TRAIND_DATA_DIR:-../shared/data}.
# Both are git-ignored through .git/info/exclude and travel to the GPU
# machine as carried paths; bench/gpu_race.sh unpacks the first into a
# sysroot and uses the second when no other data root exists. Prints the
# total size: the working tree plus carried paths must stay under 64 MiB.
set -euo pipefail
cd "$(dirname "$0")/../.."

# The pkg-config modules of the root CMakeLists.txt and cmake/*.cmake.
modules=(libprotobuf-c yaml-0.1 zlib hdf5 openblas grpc libuv libmicrohttpd libsystemd)
# Headers, .proto files and programs the build uses directly.
seeds=(libgrpc-dev libprotobuf-c-dev protobuf-c-compiler libprotobuf-dev libuv1-dev
       libhdf5-dev libopenblas-dev zlib1g-dev libyaml-dev libmicrohttpd-dev libsystemd-dev)
# The C and C++ runtime belong to the image's compiler; never carried.
base_re='^(libc6|libc6-dev|libgcc-s1|libstdc\+\+6|gcc-[0-9]+-base)$'

die() { echo "prepare.sh: $*" >&2; exit 1; }
if ! command -v apt-get >/dev/null || ! command -v dpkg-query >/dev/null; then
  die "needs Debian's apt-get and dpkg (run it on the Debian 12 build machine)"
fi
for m in "${modules[@]}"; do
  pkg-config --exists "$m" || die "pkg-config module $m is missing: run scripts/setup first"
done

# The package owning a file, trying both spellings of a merged /usr.
owner() {
  local f="$1" o
  for g in "$f" "${f#/usr}" "/usr$f"; do
    o="$(dpkg-query -S "$g" 2>/dev/null | grep -v '^diversion' | head -1)" || true
    if [ -n "$o" ]; then echo "${o%%:*}"; return; fi
  done
}

# The packages to carry, as keys.
declare -A want=()
add() {
  if [ -n "$1" ] && ! [[ "$1" =~ $base_re ]]; then want["$1"]=1; fi
}
for p in "${seeds[@]}"; do add "$p"; done
# The .pc files reached through public Requires (Requires.private are
# stripped on the GPU machine: nothing is linked statically).
declare -A seen=()
queue=("${modules[@]}")
while [ ${#queue[@]} -gt 0 ]; do
  m="${queue[0]}"; queue=("${queue[@]:1}")
  [ -n "${seen[$m]:-}" ] && continue
  seen["$m"]=1
  add "$(owner "$(readlink -f "$(pkg-config --path "$m")")")"
  while read -r r _; do
    [ -n "$r" ] && queue+=("$r")
  done < <(pkg-config --print-requires "$m")
done

# Every library on the link lines (the -dev package of its lib*.so, which
# also picks the installed flavour of OpenBLAS), then every shared object
# those load.
libs=()
ldirs=()
for f in $(pkg-config --libs-only-L "${modules[@]}"); do ldirs+=("$(realpath -s "${f#-L}")"); done
ldirs+=(/usr/lib/x86_64-linux-gnu /lib/x86_64-linux-gnu)
for f in $(pkg-config --libs-only-l "${modules[@]}"); do
  for d in "${ldirs[@]}"; do
    if [ -e "$d/lib${f#-l}.so" ]; then
      add "$(owner "$d/lib${f#-l}.so")"
      libs+=("$(readlink -f "$d/lib${f#-l}.so")")
      break
    fi
  done
done
libs+=("$(command -v protoc-c)")
for f in "${libs[@]}"; do
  add "$(owner "$f")"
  while read -r so; do
    add "$(owner "$so")"
  done < <(ldd "$f" | awk '$3 ~ /^\// {print $3}')
done

# The alternatives links into those packages' files.
mapfile -t packages < <(printf '%s\n' "${!want[@]}" | sort)
rm -rf .debs
mkdir -p .debs
find /usr/lib/x86_64-linux-gnu /usr/include -maxdepth 3 -lname '/etc/alternatives/*' |
  while read -r l; do
    t="$(readlink -f "$l")"
    o="$(owner "$t")"
    if [ -n "$o" ] && [ -n "${want[$o]:-}" ]; then echo "$l $t"; fi
  done > .debs/alternatives.txt

echo "prepare.sh: downloading ${#packages[@]} packages: ${packages[*]}"
# As root, apt's download sandbox user could not write here.
sandbox=()
[ "$(id -u)" -eq 0 ] && sandbox=(-o APT::Sandbox::User=root)
(cd .debs && apt-get download -q "${sandbox[@]}" "${packages[@]}" >/dev/null) ||
  die "apt-get download failed (is the Debian archive reachable?)"

# The newest glibc symbol version the carried objects ask for: the GPU
# machine's glibc must be at least as new.
glibc="$(
  tmp="$(mktemp -d)"
  for d in .debs/*.deb; do dpkg-deb -x "$d" "$tmp"; done
  find "$tmp" -type f \( -name '*.so*' -o -path '*/bin/*' \) -exec objdump -T {} + 2>/dev/null |
    grep -o 'GLIBC_[0-9.]*' | sort -Vu | tail -1
  rm -rf "$tmp")"

# MNIST, as a data root of its own.
src="${TRAIND_DATA_DIR:-../shared/data}/mnist"
[ -f "$src/train-images-idx3-ubyte.gz" ] || die "no MNIST in $src (set TRAIND_DATA_DIR)"
rm -rf .mnist
mkdir -p .mnist/mnist
cp "$src"/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz .mnist/mnist/

# Never committed.
exclude="$(git rev-parse --git-path info/exclude)"
mkdir -p "$(dirname "$exclude")"
for p in /.debs/ /.mnist/; do
  grep -qxF "$p" "$exclude" 2>/dev/null || echo "$p" >> "$exclude"
done

mib() { awk -v b="$1" 'BEGIN { printf "%.1f", b / 1048576 }'; }
debs=$(du -cb .debs/*.deb | tail -1 | cut -f1)
mnist=$(du -cb .mnist/mnist/* | tail -1 | cut -f1)
tree=$(git ls-files -z --cached --others --exclude-standard | du -cb --files0-from=- 2>/dev/null |
       tail -1 | cut -f1)
total=$((debs + mnist + tree))
echo "prepare.sh: .debs $(mib "$debs") MiB (${#packages[@]} packages; needs glibc >= ${glibc#GLIBC_})," \
     ".mnist $(mib "$mnist") MiB, working tree $(mib "$tree") MiB: $(mib "$total") MiB of 64"
if [ "$total" -gt $((64 * 1048576)) ]; then
  echo "prepare.sh: over the 64 MiB carry limit; the largest packages:" >&2
  du -b .debs/*.deb | sort -rn | head -8 >&2
  exit 1
fi
echo "prepare.sh: ready; on the GPU machine run: TRAIND_COMMIT=$(git rev-parse --short HEAD) bash bench/gpu_race.sh \"\$OUT\"" \
     "(carrying .debs and .mnist)"
