# The short form of the fuzzing check (docs/reliability.md, "Fuzzing"): builds the libFuzzer targets of
# tests/fuzz with clang into $MOME_BUILD_DIR/fuzz, replays every saved crash input of
# tests/fuzz/regressions/<target>/ (each must now pass), then fuzzes each target for a few thousand runs from
# its seeds. Fails on a build warning, a regression or a new crash (the input and the command that reproduces
# it are printed). Under 2 minutes on 2 cores, build included; `tests/fuzz/run --runs 1000000` is the full check.
set -euo pipefail
: "${MOME_SOURCE_DIR:?run through ctest}" "${MOME_BUILD_DIR:?run through ctest}"
command -v clang >/dev/null || { echo "FAIL: clang is not installed (launch/install-deps test)" >&2; exit 1; }
"$MOME_SOURCE_DIR/tests/fuzz/run" --runs "${MOME_FUZZ_RUNS:-3000}" --build-dir "$MOME_BUILD_DIR/fuzz"
echo "ok: every fuzz target ran without a crash; saved crash inputs replayed"
