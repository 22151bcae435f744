"""Lim et al. (2014) Fig. 1 recomputed with qcinode's finite-key analyses.

What is computed
----------------
On the dedicated-fibre system of Lim, Curty, Walenta, Xu, Zbinden,
PRA 89, 022307 (2014), Sec. IV (:mod:`qcinode.core.lim2014_system`: after-pulsing
detectors, ``eps_sec = kappa l``, the five free source parameters optimised at
every point), for each analysis of ``postprocessing.finite_key``:

* the optimised secret key rate per pulse at 100 km for ``n_X = 10^7`` and
  ``10^9``, and their ratio (the paper: "about 1.75" for ``lim2014``);
* the largest fibre length with key for ``n_X = 10^4 ... 10^9`` (the paper:
  ``n_X = 10^4`` still makes key at 135 km).

How to run
----------
::

    python bench/lim2014_fig1.py                 # every analysis, about a minute per analysis
    python bench/lim2014_fig1.py --analysis lim2014 --no-afterpulses

Nothing is asserted here; ``tests/unit/test_lim2014_system.py`` pins the
reproduced figure.
"""

from __future__ import annotations

import argparse
import time

from qcinode.core.finite_key import FINITE_KEY_ANALYSES, FINITE_KEY_LIM2014
from qcinode.core.lim2014_system import LIM2014_SYSTEM, LimSystem, max_distance, optimise_rate


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--analysis", action="append", choices=list(FINITE_KEY_ANALYSES), help="repeatable; default all")
    p.add_argument("--no-afterpulses", action="store_true", help="p_ap = 0 instead of the paper's 4 %%")
    args = p.parse_args()
    system = LimSystem(afterpulse_probability=0.0) if args.no_afterpulses else LIM2014_SYSTEM
    analyses = args.analysis or [FINITE_KEY_LIM2014, *(a for a in FINITE_KEY_ANALYSES if a != FINITE_KEY_LIM2014)]
    print(f"Lim et al. (2014) Sec. IV system{' without after-pulses' if args.no_afterpulses else ''}; rates optimised per point")
    for analysis in analyses:
        started = time.process_time()
        r7, s7 = optimise_rate(system, 100.0, 1e7, analysis)
        r9, s9 = optimise_rate(system, 100.0, 1e9, analysis)
        ratio = r9 / r7 if r7 > 0 else float("nan")
        print(f"\n{analysis}: at 100 km, R(1e7) = {r7:.4g}, R(1e9) = {r9:.4g} per pulse, ratio {ratio:.3f} (paper, lim2014: about 1.75)")
        for n, settings in ((1e7, s7), (1e9, s9)):
            if settings is not None:
                qx, p1, p2, mu1, mu2 = settings.as_tuple()
                print(f"  n_X {n:.0e}: q_x {qx:.3f}, p {p1:.3f}/{p2:.3f}/{1 - p1 - p2:.3f}, mu {mu1:.3f}/{mu2:.3f}/{system.vacuum_intensity:g}")
        distances = [(s, max_distance(system, 10.0**s, analysis)) for s in range(4, 10)]
        print("  largest distance with key (km): " + ", ".join(f"n_X 1e{s}: {d:.1f}" for s, d in distances))
        print(f"  ({time.process_time() - started:.0f} CPU-s)")


if __name__ == "__main__":
    main()
