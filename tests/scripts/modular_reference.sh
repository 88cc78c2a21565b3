#!/usr/bin/env bash
# PyTorch cross-check of the modular student: tests/tools/modular_dump writes a small model (3 expert trunks of 2
# blocks, with and without a common trunk), a batch routed to single experts and to all of them, its logits, loss
# and every gradient; tests/python/modular_check.py recomputes them with autograd in float64 and exits 1 on any
# difference beyond its tolerances.
source "$MOME_SOURCE_DIR/tests/lib/reference.sh"
"$MOME_TOOLS_DIR/modular_dump" "$tmp/modular.h5"
"$PYTHON" "$MOME_SOURCE_DIR/tests/python/modular_check.py" "$tmp/modular.h5"
