# Shared by tests/scripts/*.sh: a scratch directory, the mome binary, a small corpus and assertions.
# Sourced, not run. Expects MOME_BIN, MOME_SOURCE_DIR (set by ctest) and PYTHON.
set -euo pipefail
: "${MOME_BIN:?run through ctest}" "${MOME_SOURCE_DIR:?run through ctest}"
PYTHON=${PYTHON:-/usr/bin/python3}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cd "$tmp"

fail() { echo "FAIL: $*" >&2; exit 1; }
pass() { echo "ok: $*"; }

# make_corpus DIR: two small domains of Python standard library sources (text from the corpus's own sources),
# vocabulary 512. Fast enough to rebuild in every test.
make_corpus() {
  local out=$1 src
  src=$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_paths()["stdlib"])')
  mkdir -p "$tmp/src/alpha" "$tmp/src/beta"
  cp -r "$src"/email "$tmp/src/alpha/"
  cp -r "$src"/json "$src"/http "$src"/logging "$src"/urllib "$tmp/src/beta/"
  "$MOME_BIN" data build --out "$out" --vocab 512 --val-fraction 0.2 \
    --domain alpha="$tmp/src/alpha" --domain beta="$tmp/src/beta" > "$tmp/data_build.log" 2>&1 \
    || { cat "$tmp/data_build.log"; fail "mome data build"; }
}

# expect_fail "pattern" cmd...: the command must exit non-zero and print pattern (grep -E) on stderr/stdout.
expect_fail() {
  local pattern=$1; shift
  local out rc=0
  out=$("$@" 2>&1) || rc=$?
  [ "$rc" -ne 0 ] || fail "expected failure of: $* (exit 0). Output: $out"
  echo "$out" | grep -qE -- "$pattern" || fail "expected /$pattern/ in the output of: $* ; got: $out"
  pass "refused ($rc): $(echo "$out" | grep -E -- "$pattern" | head -n 1)"
}
