#!/usr/bin/env bash
# PyTorch cross-check of the token-level MoE layer (moe.h): tests/tools/moe_dump runs the layer forward and
# backward for two cases (top-1 with capacity dropping; top-2 dropless with a shared expert) and writes inputs,
# weights, outputs, routing, aux and z-loss and every gradient to HDF5; tests/python/moe_check.py recomputes all
# of it with an independent float64 PyTorch implementation and exits 1 on any difference beyond its stated
# tolerances. Needs torch, h5py and numpy under $PYTHON.
source "$MOME_SOURCE_DIR/tests/lib/reference.sh"
"$MOME_TOOLS_DIR/moe_dump" "$tmp/moe_dump.h5"
"$PYTHON" "$MOME_SOURCE_DIR/tests/python/moe_check.py" "$tmp/moe_dump.h5"
