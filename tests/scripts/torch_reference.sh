#!/usr/bin/env bash
# PyTorch cross-check of the dense GPT, the fused cross-entropy and AdamW: tests/tools/gpt_dump writes a small
# model, a batch, its logits, loss, every gradient and 10 AdamW steps to HDF5; tests/python/torch_check.py
# recomputes all of it with an independent PyTorch implementation and exits 1 on any difference beyond its
# stated tolerances. Needs torch, h5py and numpy under $PYTHON.
source "$MOME_SOURCE_DIR/tests/lib/reference.sh"
"$MOME_TOOLS_DIR/gpt_dump" "$tmp/gpt_dump.h5"
"$PYTHON" "$MOME_SOURCE_DIR/tests/python/torch_check.py" "$tmp/gpt_dump.h5"
