#!/usr/bin/env bash
# PyTorch cross-check of the distillation losses (src/kd.c): tests/tools/kd_dump writes random student/teacher
# logits, targets, the top-k targets and the fused KD + CE loss parts and gradients for (forward, reverse) x
# (full, top-k) to HDF5; tests/python/kd_check.py recomputes all of it with torch autograd in float64 and exits 1
# on any difference beyond its stated tolerances. Needs torch, h5py and numpy under $PYTHON.
source "$MOME_SOURCE_DIR/tests/lib/reference.sh"
"$MOME_TOOLS_DIR/kd_dump" "$tmp/kd_dump.h5"
"$PYTHON" "$MOME_SOURCE_DIR/tests/python/kd_check.py" "$tmp/kd_dump.h5"
