#!/usr/bin/env bash
# PyTorch cross-check of the MoE-teacher distillation methods (kd.method = topk | all | ka | sar, src/distill.c):
# tests/tools/kd_methods_dump builds a small MoE teacher (written as a checkpoint) and a dense student, runs every
# method through the distill.c API on one process (targets per pass, the KD + CE loss and logits gradient for
# forward / reverse KL and full / top-k targets; ka's chosen experts; sar's router loss, gate gradient and one
# AdamW router step) and writes it all to HDF5; tests/python/kd_methods_check.py recomputes everything with an
# independent float64 torch implementation and exits 1 on any difference beyond its stated tolerances.
# Needs torch, h5py and numpy under $PYTHON. A few seconds.
source "$MOME_SOURCE_DIR/tests/lib/reference.sh"
timeout 120 "$MOME_TOOLS_DIR/kd_methods_dump" "$tmp/kd_methods_dump.h5" "$tmp"
"$PYTHON" "$MOME_SOURCE_DIR/tests/python/kd_methods_check.py" "$tmp/kd_methods_dump.h5"
