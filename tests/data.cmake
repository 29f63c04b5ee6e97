# Keyed randomness and datasets. Both link only td_data, so they build while
# other modules are in flux.
td_test(test_prng SOURCES test_prng.c LIBS td_data)
# test_data checks real MNIST too when TRAIND_DATA_DIR is set (and fails
# without it under CI=true).
td_test(test_data SOURCES test_data.c LIBS td_data LABELS "unit;mnist")

# scripts/fetch-mnist, on the paths that need no network: usage, a corrupt
# copy already present (refused, left alone), an unreachable mirror (one clear
# line, no partial file), and, with TRAIND_DATA_DIR and curl, a file:// mirror.
file(WRITE ${CMAKE_CURRENT_BINARY_DIR}/test_data_fetch_mnist.sh [=[
set -u
fetch="$1"
t="$(mktemp -d)"
trap 'rm -rf "$t"' EXIT
fail() { echo "FAIL: $*"; exit 1; }

"$fetch" >/dev/null 2>&1
rc=$?; [ $rc -eq 2 ] || fail "no arguments: exit $rc, want 2"

mkdir -p "$t/mnist"
echo junk >"$t/mnist/train-images-idx3-ubyte.gz"
out="$(MNIST_MIRROR=file:///nonexistent/ "$fetch" "$t" 2>&1)"
rc=$?; [ $rc -eq 1 ] || fail "corrupt copy: exit $rc, want 1"
case "$out" in *"has md5"*"expected f68b3c2dcbeaaa9fbdd348bbdeb94873"*"$t/mnist"*) ;; *) fail "corrupt copy: $out" ;; esac
[ "$(cat "$t/mnist/train-images-idx3-ubyte.gz")" = junk ] || fail "the corrupt copy was replaced"

rm "$t/mnist/train-images-idx3-ubyte.gz"
out="$(MNIST_MIRROR=file:///nonexistent/ "$fetch" "$t" 2>&1)"
rc=$?; [ $rc -eq 1 ] || fail "unreachable mirror: exit $rc, want 1"
[ "$(printf '%s\n' "$out" | wc -l)" -eq 1 ] || fail "unreachable mirror: more than one line: $out"
case "$out" in "fetch-mnist: cannot download"*"put the four original MNIST .gz files"*"$t/mnist") ;; *) fail "unreachable mirror: $out" ;; esac
[ -z "$(ls -A "$t/mnist")" ] || fail "left files behind: $(ls -A "$t/mnist")"

if [ -n "${TRAIND_DATA_DIR:-}" ] && command -v curl >/dev/null; then
  out="$(MNIST_MIRROR="file://$TRAIND_DATA_DIR/mnist/" "$fetch" "$t" 2>&1)" || fail "file:// mirror: $out"
  [ "$(printf '%s\n' "$out" | grep -c '^downloaded ')" -eq 4 ] || fail "file:// mirror: $out"
  out="$("$fetch" "$t" 2>&1)" || fail "second run: $out"
  [ "$(printf '%s\n' "$out" | grep -c '^ok ')" -eq 4 ] || fail "second run: $out"
else
  echo "SKIP: file:// mirror (needs TRAIND_DATA_DIR and curl)"
fi
echo PASS
]=])
add_test(NAME test_data_fetch_mnist
  COMMAND bash ${CMAKE_CURRENT_BINARY_DIR}/test_data_fetch_mnist.sh ${CMAKE_SOURCE_DIR}/scripts/fetch-mnist)
set_tests_properties(test_data_fetch_mnist PROPERTIES LABELS unit TIMEOUT 120)
