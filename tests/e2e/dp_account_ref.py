#!/usr/bin/env python3
"""traind's DP-SGD accountant (engine/dp_account.c, through dp_account_tool)
against Google's dp-accounting: the RDP of the Poisson-subsampled Gaussian
mechanism at Opacus's orders (1.1 .. 10.9 by 0.1, then 12 .. 63), composed
over the steps, and epsilon at delta in dp-accounting's conversion
(compute_epsilon) and the classic one (min over orders of rdp - log(delta) /
(order - 1)), on a grid of sampling rates, noise multipliers, steps and
deltas and on the published settings. Epsilons agree within 1e-3 relative
(1e-9 absolute near 0).

Usage: dp_account_ref.py DP_ACCOUNT_TOOL
Exit 77 (skip) when dp_accounting is missing, unless CI=true (then 1).
"""
import math
import os
import subprocess
import sys

try:
    import numpy as np
    from dp_accounting.rdp import rdp_privacy_accountant as rdp_acc
except ImportError as e:
    print(f"dp_accounting is missing ({e}); scripts/setup installs it")
    sys.exit(1 if os.environ.get("CI") == "true" else 77)

ORDERS = np.array([1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64)), dtype=float)


def reference(q, sigma, steps, delta):
    rdp = rdp_acc._compute_rdp_poisson_subsampled_gaussian(q, sigma, ORDERS) * steps
    cur, _ = rdp_acc.compute_epsilon(ORDERS, rdp, delta)
    with np.errstate(invalid="ignore"):
        classic = float(np.nanmin(rdp - math.log(delta) / (ORDERS - 1)))
    return float(cur), classic


def traind(tool, q, sigma, steps, delta):
    out = subprocess.run([tool, repr(q), repr(sigma), str(steps), repr(delta)],
                         capture_output=True, text=True, check=True).stdout.split()
    return float(out[0]), float(out[2])


def rel(a, b):
    if math.isinf(a) or math.isinf(b):
        return 0.0 if a == b else math.inf
    if abs(b) < 1e-9:
        return 0.0 if abs(a - b) < 1e-9 else math.inf
    return abs(a - b) / abs(b)


def main():
    tool = sys.argv[1]
    cases = [(q, s, n, d)
             for q in (1e-5, 1e-3, 256 / 60000, 0.01, 0.1, 0.5, 1.0)
             for s in (0.5, 0.6, 0.8, 1.0, 1.1, 2.0, 5.0)
             for n in (1, 10, 1000, 14062, 100000)
             for d in (1e-5, 1e-7)]
    cases += [(256 / 60000, 1.1, 14062, 1e-5), (256 / 60000, 0.6, 7031, 1e-5), (1e-5, 1.0, 10, 1e-5)]
    worst = (0.0, None)
    bad = 0
    for c in cases:
        want = reference(*c)
        got = traind(tool, *c)
        for name, g, w in (("current", got[0], want[0]), ("classic", got[1], want[1])):
            e = rel(g, w)
            if e > worst[0]:
                worst = (e, (c, name, g, w))
            if e > 1e-3:
                bad += 1
                print(f"q={c[0]} sigma={c[1]} steps={c[2]} delta={c[3]} {name}: traind {g}, "
                      f"dp-accounting {w} (rel err {e:.3g})")
    print(f"{len(cases)} settings, both conversions; worst relative error {worst[0]:.3g}"
          + (f" at {worst[1]}" if worst[1] else ""))
    for c in cases[-3:]:
        print("published", c, "->", traind(tool, *c))
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
