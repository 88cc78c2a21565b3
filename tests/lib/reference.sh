# Shared by the PyTorch cross-checks tests/scripts/*_reference.sh (a tool of tests/tools dumps to HDF5, a check of
# tests/python recomputes it): a scratch directory $tmp, removed on exit, and the Python modules the checks import.
# Sourced, not run. Expects MOME_TOOLS_DIR, MOME_SOURCE_DIR (set by ctest) and PYTHON.
set -euo pipefail
: "${MOME_TOOLS_DIR:?run through ctest}" "${MOME_SOURCE_DIR:?run through ctest}"
PYTHON=${PYTHON:-/usr/bin/python3}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$PYTHON" -c 'import torch, h5py, numpy' || { echo "FAIL: $PYTHON lacks torch, h5py or numpy" >&2; exit 1; }
