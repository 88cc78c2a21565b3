#!/usr/bin/env bash
# Expert-parallel row exchange (MPI_Alltoall counts, MPI_Alltoallv rows, and back) on 1-4 ranks, with experts
# spread evenly and unevenly, and ranks that send nothing to some experts.
source "$MOME_SOURCE_DIR/tests/lib/common.sh"
for np in 1 2 3 4; do
  for experts in 4 7; do
    [ "$experts" -ge "$np" ] || continue
    timeout 120 mpirun -np $np --oversubscribe --bind-to none "$MOME_TOOLS_DIR/dispatch_check" $experts 60 $np \
      || fail "dispatch_check on $np ranks with $experts experts"
  done
done
pass "dispatch on 1-4 ranks"
