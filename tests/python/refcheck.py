"""refcheck.py — the comparison every PyTorch cross-check uses: prints the max absolute and relative error of
a result against its reference with the tolerance, and records failures in `failures` (the caller exits 1 when
it is not empty)."""
import sys

import numpy as np

failures = []


def check(what, got, ref, rtol, atol, width=40):
    """Passes when |got - ref| <= atol + rtol * |ref| elementwise and got is finite."""
    got = np.asarray(got, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    if got.shape != ref.shape:
        print(f"{what:{width}s} shape {got.shape} != {ref.shape}  FAIL")
        failures.append(what)
        return
    diff = np.abs(got - ref)
    max_abs = float(diff.max()) if diff.size else 0.0
    nz = np.abs(ref) > 0
    max_rel = float((diff[nz] / np.abs(ref[nz])).max()) if nz.any() else 0.0
    ok = bool(np.all(diff <= atol + rtol * np.abs(ref))) and bool(np.all(np.isfinite(got)))
    print(f"{what:{width}s} max abs {max_abs:.3e}  max rel {max_rel:.3e}  (rtol {rtol:.0e}, atol {atol:.1e})"
          f"  {'ok' if ok else 'FAIL'}")
    if not ok:
        failures.append(what)
        worst = float((diff - rtol * np.abs(ref)).max()) if diff.size else 0.0
        print(f"    {what}: worst excess over rtol*|ref|: {worst:.3e} > atol {atol:.1e}", file=sys.stderr)
