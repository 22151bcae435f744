"""Cascade and LDPC reconciliation side by side: efficiency, round trips, failures, CPU.

What is measured
----------------
For each QBER (``--qber``, default 1, 2, 3 and 5 %) and each method, ``--blocks``
blocks of ``--bits`` key bits (default 10^6): Alice's key is uniform, Bob's is
it with independent bit flips of probability QBER (a binary symmetric
channel, as the emulated link's key basis). Both ends are the reconcilers the
pipeline uses (:func:`qcinode.core.reconciliation.make_alice_reconciler` and
``make_bob_reconciler``), fed the true QBER as their estimate, exchanging
messages in process until Bob is done. Columns:

* ``f``: leak / sum over blocks of ``n h(e)`` with ``e`` the block's actual
  error rate (the leak each end charges to privacy amplification: parities,
  or syndromes less the filler still punctured, plus discarded bits and the
  error count);
* ``rounds``: round trips per block (Cascade: query/reply pairs; LDPC: the
  syndrome flight plus retries);
* ``FER``: for LDPC, the share of frames that did not decode at the first
  attempt / were discarded after the last; for Cascade, the share of blocks
  left with a residual error (verification would discard them);
* ``residual``: blocks whose kept keys still differ (caught by verification);
* ``CPU s/1e6``: process CPU seconds of both ends per 10^6 key bits.

How to run
----------
::

    python bench/reconciliation.py                    # 1, 2, 3, 5 %, 3 blocks of 1e6 bits
    python bench/reconciliation.py --qber 0.02 --blocks 10 --bits 2e5
    python bench/reconciliation.py --methods ldpc --ldpc-profile fast
    python bench/reconciliation.py --methods cascade --cascade-lookahead 1   # textbook Cascade

Nothing is asserted.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import time
from collections.abc import Sequence

import numpy as np

from qcinode.core import messages as m
from qcinode.core.reconciliation import (
    ERROR_CORRECTION_METHODS,
    LDPC_PROFILES,
    make_alice_reconciler,
    make_bob_reconciler,
)
from qcinode.topology import PostprocessingConfig

#: The links' default (``postprocessing.cascade_lookahead``).
CASCADE_LOOKAHEAD = PostprocessingConfig().cascade_lookahead


def h2(p: float) -> float:
    return 0.0 if p <= 0.0 or p >= 1.0 else -p * math.log2(p) - (1 - p) * math.log2(1 - p)


@dataclasses.dataclass(slots=True)
class Run:
    method: str
    qber: float
    blocks: int = 0
    bits: int = 0
    leak: int = 0
    ideal: float = 0.0
    rounds: int = 0
    frames: int = 0
    first_failures: int = 0
    discarded: int = 0
    residual: int = 0
    cpu_s: float = 0.0

    @property
    def f(self) -> float:
        return self.leak / self.ideal if self.ideal else math.nan


def one_block(
    method: str, qber: float, n: int, rng: np.random.Generator, run: Run, profile: str = "efficient", lookahead: int = CASCADE_LOOKAHEAD
) -> None:
    key = rng.integers(0, 2, n).astype(np.uint8)
    noisy = key ^ (rng.random(n) < qber).astype(np.uint8)
    start = time.process_time()
    alice = make_alice_reconciler(method, 0, key, qber, rng, profile)
    bob = make_bob_reconciler(method, 0, noisy, qber, rng, 6, ldpc_profile=profile, cascade_lookahead=lookahead)
    to_bob: list[m.Message] = alice.opening()
    to_alice: list[m.Message] = bob.opening()
    first_failed: int | None = None
    while to_bob or to_alice:
        to_bob = [reply for msg in to_alice for reply in alice.receive(msg)] + to_bob
        to_alice = [reply for msg in to_bob for reply in bob.receive(msg)]
        to_bob = []
        if first_failed is None and method == "ldpc":
            first_failed = len(to_alice[0].frames) if to_alice and isinstance(to_alice[0], m.LdpcRetry) else 0
    corrected, kept, errors, leak, discarded = bob.result()
    _, alice_leak = alice.finish(m.Reconciled(0, b"", b"", errors, discarded))
    run.cpu_s += time.process_time() - start
    assert alice_leak == leak, "both ends must count the same leak"
    run.blocks += 1
    run.bits += n
    run.leak += leak
    run.ideal += n * h2(float(np.count_nonzero(key != noisy)) / n)
    run.rounds += bob.rounds
    run.residual += int(not np.array_equal(corrected, key[kept]))
    if method == "ldpc":
        plan = bob.plan  # type: ignore[attr-defined]
        run.frames += len(plan.key_bits)
        run.first_failures += first_failed or 0
        run.discarded += len(discarded)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--qber", default="0.01,0.02,0.03,0.05", help="comma-separated error rates")
    p.add_argument("--bits", type=float, default=1e6, help="key bits per block")
    p.add_argument("--blocks", type=int, default=3, help="blocks per QBER and method")
    p.add_argument("--methods", default=",".join(ERROR_CORRECTION_METHODS))
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--ldpc-profile", default="efficient", choices=list(LDPC_PROFILES), help="postprocessing.ldpc_profile")
    p.add_argument("--cascade-lookahead", type=int, default=CASCADE_LOOKAHEAD, help="postprocessing.cascade_lookahead (1: textbook Cascade)")
    args = p.parse_args(argv)
    rates = [float(q) for q in args.qber.split(",") if q.strip()]
    methods = [x for x in args.methods.split(",") if x.strip()]
    n = int(args.bits)
    rng = np.random.default_rng(args.seed)
    runs: list[Run] = []
    for qber in rates:
        for method in methods:
            run = Run(method, qber)
            for index in range(args.blocks):
                one_block(method, qber, n, rng, run, args.ldpc_profile, args.cascade_lookahead)
                print(f"QBER {100 * qber:.1f} % {method}: block {index + 1}/{args.blocks}, f so far {run.f:.3f}", file=sys.stderr, flush=True)
            runs.append(run)
    print(
        f"{args.blocks} blocks of {n:.3g} key bits per row; binary symmetric channel; estimate = true QBER; "
        f"LDPC profile {args.ldpc_profile}; Cascade lookahead {args.cascade_lookahead}"
    )
    header = f"{'QBER':>5} {'method':>8} {'f':>6} {'rounds':>7} {'FER first/final':>16} {'residual':>9} {'CPU s/1e6':>10}"
    print(header)
    print("-" * len(header))
    for run in runs:
        if run.method == "ldpc":
            fer = f"{run.first_failures / run.frames:.3f}/{run.discarded / run.frames:.4f}" if run.frames else "-"
        else:
            fer = f"{run.residual / run.blocks:.3f} (blocks)"
        print(
            f"{100 * run.qber:4.1f}% {run.method:>8} {run.f:6.3f} {run.rounds / run.blocks:7.1f} {fer:>16} "
            f"{run.residual:>9} {run.cpu_s / run.bits * 1e6:10.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
