#!/usr/bin/env bash
# The fault-injection harness (tests/faults/run, docs/reliability.md) in its short form: 2 trials of every
# fault class (kill -9 of a rank, kill during a checkpoint write, SIGTERM/SIGUSR1 on a rank, damaged checkpoints,
# a full disk, NaN/Inf, two hosts in network namespaces with a cut link), random points from a printed seed.
# Each trial must end with nothing lost: the restarted run bit-identical to an uninterrupted one. disk_full
# and multihost need root (mount, ip netns) and are reported as skipped otherwise. About 2 minutes on 2 cores.
# A failed trial prints the command that replays it; `tests/faults/run --trials 10` is the long form.
source "$MOME_SOURCE_DIR/tests/lib/common.sh"
"$PYTHON" "$MOME_SOURCE_DIR/tests/faults/run" --trials 2 --bin "$MOME_BIN" --work "$tmp/faults" \
  || fail "fault harness (see the trial lines above)"
pass "fault harness, short form"
