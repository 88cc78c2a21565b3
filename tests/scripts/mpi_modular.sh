#!/usr/bin/env bash
# The modular student with its expert trunks spread over 1-4 ranks (whole sequences dispatched to their trunk's
# rank and back) against the same model on one process: logits and every gradient, with and without a common
# trunk, for routed, averaged and common-only sequences, with even and uneven partitions of the trunks.
source "$MOME_SOURCE_DIR/tests/lib/common.sh"
for np in 1 2 3 4; do
  for common in 0 1; do
    for experts in 4 5; do
      [ "$experts" -ge "$np" ] || continue
      timeout 120 mpirun -np $np --oversubscribe --bind-to none "$MOME_TOOLS_DIR/modular_dispatch_check" \
        $experts $common 3 > "$tmp/out.txt" 2>&1 || { cat "$tmp/out.txt"; fail "$np ranks, $experts trunks, common $common"; }
    done
  done
done
pass "modular student on 1-4 ranks matches one process"
