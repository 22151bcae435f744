"""Measured secret key rate against distance, printed next to the formulas.

What is measured
----------------
For each fibre length the real protocol stack (sifting, decoy-state parameter
estimation, Cascade, verification, Toeplitz privacy amplification, one-time
MAC authentication) runs in this process: both ends are built with
:func:`qcinode.core.pair.make_pair` (seeded) and driven by
:func:`qcinode.core.pair.pump`, which moves every frame and classical message
through its byte encoding, as the gRPC link does. Link: the GYS parameter set
of MQZL Table I (alpha 0.21 dB/km, eta_Bob 0.045, Y0 1.7e-6, e_det 0.033) with
a finite-size-friendly source (mu 0.48 / 0.2 / 0, class probabilities
0.4 / 0.3 / 0.3, Z-basis probability ``--pz``, default 0.5).

Columns of the table (all rates are secret bits per emitted pulse):

* ``measured``: sum of secret bits of accepted blocks / sum of pulses of all
  blocks, aborted ones included. Secret bits are what goes into the key pool;
  the 3 one-time MAC keys (768 bits) each accepted block consumes from the
  authentication reserve are not subtracted (the bootstrap reserve of 2048
  keys is never refilled in a run this short).
* ``QBER``: errors Cascade corrected / key bits, over reconciled blocks (a
  trailing ``t`` means no block was reconciled and the test-basis error rate
  is shown).
* ``f``: Cascade efficiency, leak / sum(n h(QBER_block)), over reconciled blocks.
* ``n/blk``: key-basis bits per block the stack actually closed. A block
  closes at the first frame boundary past ``--block-bits`` and a frame is
  about a quarter block (``qcinode.node.runtime.frame_slots``, as in a node),
  so blocks run 0-25 % over the nominal size.
* ``finite``: the finite-size formula of the link's analysis
  (``--finite-key``, default ``chernoff``) on the same parameters and block
  size: ``expected_key_length(phys, n, f_ec=f, analysis=...).length_bits / n``
  on the mean block (``n`` = ``n/blk``) times the expected key-basis bits per
  pulse ``pz^2 sum_k p_k Q_k`` (closed-form gains). ``f`` is the measured f
  of that distance, or 1.1 when nothing was reconciled.
* ``other``: the same with the other analysis (``lim2014`` when the link
  runs ``chernoff`` and vice versa), for comparison; not run.
* ``Lim-inf``: the block-size -> infinity limit of the same formula,
  ``asymptotic_key_fraction(phys, f) * pz^2 sum_k p_k Q_k`` (every class
  contributes, vacuum emissions count as secure, true Y_1 and e_1).
* ``GLLP-src``: infinite-decoy GLLP with this source and basis choice,
  ``p_signal * pz^2 * {Q_1 [1 - h(e_1)] - Q_mu f h(E_mu)}`` at mu = 0.48,
  i.e. ``p_signal * infinite_decoy_rate(AsymptoticParams(mu=0.48, q=pz^2, f_ec=f))``
  (MQZL first-order channel model; only signal pulses give key).
* ``MQZL``: the textbook curve, ``optimise_mu(infinite_decoy_rate, ...)`` with
  q = 1/2, mu optimised per distance (shown as ``mu*``), f = 1.22.
* ``PLOB``: ``-log2(1 - eta)`` with eta = eta_Bob * 10^(-alpha L / 10).

Then the maximum distance: the last distance of the table with key and the
first without (probing further out in 25 km steps if every distance had key),
refined by ``--bisect-steps`` single-block probes; and the finite-size
formula's maximum distance for the same block size (bisection on
``expected_key_length(...).length_bits > 0``), plus the asymptotic ones.

How to run
----------
::

    python bench/keyrate.py --quick            # block 2e5, 0/50/100 km, < 2 min
    python bench/keyrate.py                    # block 1e6, 0..150 km, 2 blocks each
    python bench/keyrate.py --blocks 10 --block-bits 4e6 --distances 0,50,100,140
    python bench/keyrate.py --csv docs/data/keyrate-measured.csv   # the points of docs/keyrate.svg
    python bench/keyrate.py --textbook-source --distances 10,25 --block-bits 1e6   # 0.48/0.1/0, 0.8/0.1/0.1
    python bench/keyrate.py --finite-key lim2014 --error-correction ldpc

Progress goes to stderr, the tables to stdout. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from qcinode.core.estimation import (
    AsymptoticParams,
    asymptotic_key_fraction,
    expected_key_length,
    h2,
    infinite_decoy_rate,
    max_distance,
    optimise_mu,
    plob_bound,
)
from qcinode.core.finite_key import FINITE_KEY_ANALYSES
from qcinode.core.pair import make_pair, pump
from qcinode.core.physics import LinkPhysics, fibre_transmittance
from qcinode.core.pipeline import BlockAborted, BlockAccepted, BlockEvent, LinkProtocolConfig
from qcinode.node.runtime import expected_key_bits_per_slot, frame_slots

# GYS (Gobby, Yuan, Shields 2004), MQZL Table I.
GYS_ATTENUATION_DB_PER_KM = 0.21
GYS_DETECTOR_EFFICIENCY = 0.045
GYS_DARK_COUNT_PROBABILITY = 1.7e-6
GYS_MISALIGNMENT_ERROR = 0.033
# Finite-size-friendly source (Lim et al. bounds need decoy and vacuum statistics).
INTENSITIES = (0.48, 0.2, 0.0)
CLASS_PROBABILITIES = (0.4, 0.3, 0.3)
#: MQZL-style source of most commercial systems (``--textbook-source``).
TEXTBOOK_INTENSITIES = (0.48, 0.1, 0.0)
TEXTBOOK_CLASS_PROBABILITIES = (0.8, 0.1, 0.1)
#: The finite-key analysis and reconciliation of the runs (set from the command line).
ANALYSIS = "chernoff"
ERROR_CORRECTION = "cascade"
#: f assumed by the formulas when no block was reconciled.
DEFAULT_F_EC = 1.1
#: Same size as a node's bootstrap key (qcinode.pki default): 2048 one-time MAC keys.
BOOTSTRAP_KEY_BYTES = 65536
RATE_HZ = 1e9  # only sets emulated time; frame size at speed "max" does not depend on it
PROBE_STEP_KM = 25.0
PROBE_LIMIT_KM = 300.0


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def gys_physics(length_km: float, pz: float) -> LinkPhysics:
    return LinkPhysics(
        intensities=INTENSITIES,
        class_probabilities=CLASS_PROBABILITIES,
        z_basis_probability=pz,
        fibre_transmittance=fibre_transmittance(GYS_ATTENUATION_DB_PER_KM, length_km),
        detector_efficiency=GYS_DETECTOR_EFFICIENCY,
        dark_count_probability=GYS_DARK_COUNT_PROBABILITY,
        misalignment_error=GYS_MISALIGNMENT_ERROR,
    )


def gys_asymptotic(length_km: float, **overrides: float) -> AsymptoticParams:
    return dataclasses.replace(
        AsymptoticParams(
            attenuation_db_per_km=GYS_ATTENUATION_DB_PER_KM,
            length_km=length_km,
            detector_efficiency=GYS_DETECTOR_EFFICIENCY,
            dark_count_probability=GYS_DARK_COUNT_PROBABILITY,
            misalignment_error=GYS_MISALIGNMENT_ERROR,
        ),
        **overrides,
    )


# --------------------------------------------------------------------------- running the stack


@dataclasses.dataclass(slots=True)
class DistanceRun:
    """What the stack did at one distance."""

    length_km: float
    block_bits: int
    frame_slots: int = 0
    pulses: int = 0
    key_bits: int = 0
    secret_bits: int = 0
    accepted: int = 0
    aborted: int = 0
    reconciled_key_bits: int = 0
    errors_corrected: int = 0
    leak_bits: int = 0
    ideal_leak_bits: float = 0.0
    test_bits: int = 0
    test_errors: int = 0
    cascade_rounds: int = 0
    frames: int = 0
    messages: int = 0
    key_mismatches: int = 0
    bob_missing: int = 0
    stalled: bool = False
    wall_s: float = 0.0
    abort_reasons: Counter[str] = dataclasses.field(default_factory=Counter)

    @property
    def blocks(self) -> int:
        return self.accepted + self.aborted

    @property
    def mean_block_key_bits(self) -> int:
        """Key-basis bits per block actually closed (a block closes at a frame boundary)."""
        return round(self.key_bits / self.blocks) if self.blocks else self.block_bits

    @property
    def rate(self) -> float:
        return self.secret_bits / self.pulses if self.pulses else 0.0

    @property
    def f_ec(self) -> float | None:
        return self.leak_bits / self.ideal_leak_bits if self.ideal_leak_bits > 0 else None

    @property
    def qber(self) -> tuple[float, bool]:
        """(QBER, measured by Cascade?); the test-basis rate when nothing was reconciled."""
        if self.reconciled_key_bits:
            return self.errors_corrected / self.reconciled_key_bits, True
        return (self.test_errors / self.test_bits if self.test_bits else 0.0), False

    def add(self, alice_events: list[BlockEvent], bob_events: list[BlockEvent]) -> None:
        bob_keys = {e.block_seq: e.key for e in bob_events if isinstance(e, BlockAccepted)}
        for event in alice_events:
            s = event.stats
            self.pulses += s.pulses
            self.key_bits += s.key_bits
            self.frames += s.frames
            self.test_bits += s.test_bits
            self.test_errors += s.test_errors
            self.cascade_rounds += s.cascade_rounds
            if s.leak_bits and s.key_bits:
                self.reconciled_key_bits += s.key_bits
                self.errors_corrected += s.errors_corrected
                self.leak_bits += s.leak_bits
                self.ideal_leak_bits += s.key_bits * h2(s.qber)
            if isinstance(event, BlockAccepted):
                self.accepted += 1
                self.secret_bits += 8 * len(event.key)
                if event.block_seq not in bob_keys:
                    self.bob_missing += 1
                elif bob_keys[event.block_seq] != event.key:
                    self.key_mismatches += 1
            elif isinstance(event, BlockAborted):
                self.aborted += 1
                self.abort_reasons[event.reason] += 1


def run_distance(length_km: float, *, pz: float, block_bits: int, blocks: int, seed: int, label: str = "") -> DistanceRun:
    """Runs ``blocks`` blocks of the real stack at ``length_km``."""
    phys = gys_physics(length_km, pz)
    config = LinkProtocolConfig(
        link_id="alice-bob", physics=phys, block_bits=block_bits, finite_key=ANALYSIS, error_correction=ERROR_CORRECTION
    )
    bootstrap = np.random.default_rng(seed).bytes(BOOTSTRAP_KEY_BYTES)
    alice, bob = make_pair(config, bootstrap, seed=seed)
    run = DistanceRun(length_km=length_km, block_bits=block_bits, frame_slots=frame_slots(config, RATE_HZ, None))
    start = time.perf_counter()
    for index in range(blocks):
        t0 = time.perf_counter()
        result = pump(alice, bob, frame_slots=run.frame_slots, blocks=1)
        run.messages += result.classical_messages
        if not result.alice_events:
            run.stalled = True
            log(f"{label}{length_km:7.2f} km  block {index + 1}/{blocks}: the link stalled (no block ended)")
            break
        run.add(result.alice_events, result.bob_events)
        event = result.alice_events[-1]
        what = f"{event.stats.secret_bits} secret bits" if isinstance(event, BlockAccepted) else f"aborted ({event.reason})"
        log(
            f"{label}{length_km:7.2f} km  block {index + 1}/{blocks}: {what}, "
            f"{event.stats.pulses:.3g} pulses, {time.perf_counter() - t0:.1f} s"
        )
    run.wall_s = time.perf_counter() - start
    return run


# --------------------------------------------------------------------------- formulas


def formula_f(f_measured: float | None) -> float:
    return max(1.0, f_measured) if f_measured is not None else DEFAULT_F_EC


def finite_rate(length_km: float, pz: float, block_bits: int, f_ec: float, analysis: str | None = None) -> float:
    phys = gys_physics(length_km, pz)
    result = expected_key_length(phys, block_bits, f_ec=f_ec, analysis=analysis or ANALYSIS)
    return result.length_bits / block_bits * expected_key_bits_per_slot(phys)


def lim_asymptotic_rate(length_km: float, pz: float, f_ec: float) -> float:
    phys = gys_physics(length_km, pz)
    return asymptotic_key_fraction(phys, f_ec) * expected_key_bits_per_slot(phys)


def gllp_same_source_rate(length_km: float, pz: float, f_ec: float) -> float:
    params = gys_asymptotic(length_km, mu=INTENSITIES[0], q=pz * pz, f_ec=f_ec)
    return CLASS_PROBABILITIES[0] * infinite_decoy_rate(params)


def mqzl_rate(length_km: float) -> tuple[float, float]:
    """(mu*, rate): the textbook infinite-decoy GLLP, q = 1/2, f = 1.22."""
    return optimise_mu(infinite_decoy_rate, gys_asymptotic(length_km))


def bisect_km(has_key: Callable[[float], bool], low: float, high: float, tolerance_km: float = 0.01) -> float:
    """Largest distance with key, given key at ``low`` and none at ``high``."""
    while high - low > tolerance_km:
        mid = 0.5 * (low + high)
        if has_key(mid):
            low = mid
        else:
            high = mid
    return low


def formula_max_distance(pz: float, block_bits: int, f_ec: float) -> float:
    def has_key(length_km: float) -> bool:
        return expected_key_length(gys_physics(length_km, pz), block_bits, f_ec=f_ec, analysis=ANALYSIS).length_bits > 0

    if not has_key(0.0):
        return 0.0
    if has_key(PROBE_LIMIT_KM):
        return PROBE_LIMIT_KM
    return bisect_km(has_key, 0.0, PROBE_LIMIT_KM)


# --------------------------------------------------------------------------- output


def fmt(x: float) -> str:
    return f"{x:.3e}" if x > 0 else "0"


def print_table(runs: Sequence[DistanceRun], pz: float) -> None:
    header = (
        f"{'L km':>6} {'ok/ab':>6} {'pulses':>9} {'n/blk':>8} {'measured':>10} {'QBER':>7} {'f':>6} "
        f"{'finite':>10} {'meas/fin':>8} {'other':>10} {'Lim-inf':>10} {'GLLP-src':>10} {'MQZL':>10} {'mu*':>5} {'PLOB':>10} {'wall s':>7}"
    )
    print(header)
    print("-" * len(header))
    for run in runs:
        f_meas = run.f_ec
        f_use = formula_f(f_meas)
        qber, by_cascade = run.qber
        finite = finite_rate(run.length_km, pz, run.mean_block_key_bits, f_use)
        mu_star, mqzl = mqzl_rate(run.length_km)
        eta = gys_physics(run.length_km, pz).eta
        ratio = f"{run.rate / finite:8.3f}" if finite > 0 else f"{'-':>8}"
        other = finite_rate(run.length_km, pz, run.mean_block_key_bits, f_use, next(a for a in FINITE_KEY_ANALYSES if a != ANALYSIS))
        print(
            f"{run.length_km:6.1f} {run.accepted:>3}/{run.aborted:<2} {run.pulses:9.2e} {run.mean_block_key_bits:8d} {fmt(run.rate):>10} "
            f"{100 * qber:6.2f}{'%' if by_cascade else 't'} {(f'{f_meas:.3f}' if f_meas else '-'):>6} "
            f"{fmt(finite):>10} {ratio} {fmt(other):>10} {fmt(lim_asymptotic_rate(run.length_km, pz, f_use)):>10} "
            f"{fmt(gllp_same_source_rate(run.length_km, pz, f_use)):>10} {fmt(mqzl):>10} {(f'{mu_star:.3f}' if mqzl > 0 else '-'):>5} "
            f"{fmt(plob_bound(eta)):>10} {run.wall_s:7.1f}"
        )
    notes = []
    for run in runs:
        if run.abort_reasons:
            reasons = ", ".join(f"{n}x {r!r}" for r, n in run.abort_reasons.most_common())
            notes.append(f"  {run.length_km:g} km aborted: {reasons}")
        if run.key_mismatches or run.bob_missing:
            notes.append(f"  {run.length_km:g} km PROBLEM: {run.key_mismatches} key mismatches, {run.bob_missing} blocks Bob did not accept")
        if run.stalled:
            notes.append(f"  {run.length_km:g} km PROBLEM: the link stalled")
    if notes:
        print("\n".join(notes))


def write_csv(path: Path, runs: Sequence[DistanceRun], pz: float) -> None:
    """The measured rows, with the finite-size formula on the same block size and measured f."""
    with path.open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["length_km", "pz", "blocks_accepted", "blocks_aborted", "pulses", "block_key_bits", "secret_bits",
                         "measured_bits_per_pulse", "qber", "f_ec", "finite_formula_bits_per_pulse"])  # fmt: skip
        for run in runs:
            f_use = formula_f(run.f_ec)
            writer.writerow([
                f"{run.length_km:g}", f"{pz:g}", run.accepted, run.aborted, run.pulses, run.mean_block_key_bits, run.secret_bits,
                f"{run.rate:.6e}", f"{run.qber[0]:.6f}", f"{run.f_ec:.4f}" if run.f_ec else "",
                f"{finite_rate(run.length_km, pz, run.mean_block_key_bits, f_use):.6e}",
            ])  # fmt: skip
    log(f"measured rows written to {path}")


def stack_max_distance(
    runs: Sequence[DistanceRun], *, pz: float, block_bits: int, seed: int, steps: int
) -> tuple[float | None, float | None, list[DistanceRun]]:
    """(last km with key, first km without, probe runs): from the table, then probes."""
    ordered = sorted(runs, key=lambda r: r.length_km)
    probes: list[DistanceRun] = []
    with_key = [r.length_km for r in ordered if r.secret_bits > 0]
    if not with_key:
        return None, (ordered[0].length_km if ordered else None), probes
    last = max(with_key)
    beyond = [r.length_km for r in ordered if r.length_km > last and r.secret_bits == 0]
    first_without = min(beyond) if beyond else None
    probe_seed = seed + 10_000

    def probe(length_km: float) -> bool:
        nonlocal probe_seed
        probe_seed += 1
        run = run_distance(length_km, pz=pz, block_bits=block_bits, blocks=1, seed=probe_seed, label="probe ")
        probes.append(run)
        return run.secret_bits > 0

    while first_without is None:
        candidate = last + PROBE_STEP_KM
        if candidate > PROBE_LIMIT_KM:
            return last, None, probes
        if probe(candidate):
            last = candidate
        else:
            first_without = candidate
    for _ in range(steps):
        mid = 0.5 * (last + first_without)
        if probe(mid):
            last = mid
        else:
            first_without = mid
    return last, first_without, probes


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--distances", default="0,25,50,75,100,125,150", help="comma-separated fibre lengths in km")
    p.add_argument("--blocks", type=int, default=2, help="blocks per distance")
    p.add_argument("--block-bits", type=float, default=1e6, help="sifted key-basis bits per block")
    p.add_argument("--pz", type=float, default=0.5, help="Z (key) basis probability of both parties")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--bisect-steps", type=int, default=5, help="single-block probes refining the stack's maximum distance (0: table only; negative: skip)")
    p.add_argument("--quick", action="store_true", help="smoke run: block 2e5, distances 0,50,100")
    p.add_argument("--csv", type=Path, help="also write the measured rows here (docs/figures.py plots docs/data/keyrate-measured.csv)")
    p.add_argument("--finite-key", default="chernoff", choices=list(FINITE_KEY_ANALYSES))
    p.add_argument("--error-correction", default="cascade", choices=["cascade", "ldpc"])
    p.add_argument("--textbook-source", action="store_true", help="source mu 0.48/0.1/0, p 0.8/0.1/0.1 instead of 0.48/0.2/0, 0.4/0.3/0.3")
    args = p.parse_args(argv)
    global ANALYSIS, ERROR_CORRECTION, INTENSITIES, CLASS_PROBABILITIES
    ANALYSIS, ERROR_CORRECTION = args.finite_key, args.error_correction
    if args.textbook_source:
        INTENSITIES, CLASS_PROBABILITIES = TEXTBOOK_INTENSITIES, TEXTBOOK_CLASS_PROBABILITIES
    if args.quick:
        args.block_bits = 2e5
        args.distances = "0,50,100"
    block_bits = int(args.block_bits)
    distances = [float(x) for x in args.distances.split(",") if x.strip()]
    if args.blocks < 1 or block_bits < 1 or not distances or not 0.0 < args.pz < 1.0:
        p.error("need --blocks >= 1, --block-bits >= 1, at least one distance and 0 < --pz < 1")
    started = time.perf_counter()

    runs = [
        run_distance(km, pz=args.pz, block_bits=block_bits, blocks=args.blocks, seed=args.seed + i)
        for i, km in enumerate(distances)
    ]
    print(
        f"GYS link (alpha {GYS_ATTENUATION_DB_PER_KM} dB/km, eta_Bob {GYS_DETECTOR_EFFICIENCY}, Y0 {GYS_DARK_COUNT_PROBABILITY:g}, "
        f"e_det {GYS_MISALIGNMENT_ERROR}); source mu {INTENSITIES}, p {CLASS_PROBABILITIES}, pz {args.pz}; "
        f"block {block_bits:.3g} key bits, {args.blocks} blocks per distance, seed {args.seed}; eps_sec 1e-10, 64-bit tag; "
        f"finite-key analysis {ANALYSIS}, reconciliation {ERROR_CORRECTION}"
    )
    print("rates in secret bits per pulse; measured = sum secret / sum pulses (aborted blocks' pulses included)")
    print_table(runs, args.pz)
    if args.csv is not None:
        write_csv(args.csv, runs, args.pz)
    print(
        "n/blk = key bits per closed block (nominal + up to one frame); "
        f"finite = {ANALYSIS} key length / n of the mean block of n/blk bits (f = measured, 1.1 if none) x pz^2 sum p_k Q_k; "
        "other = the same with the other finite-key analysis; "
        "Lim-inf = its infinite-block limit;\n"
        "GLLP-src = p_signal pz^2 {Q1[1-h(e1)] - Q_mu f h(E_mu)} at mu 0.48 (infinite decoys); "
        "MQZL = q 1/2, mu optimised (mu*), f 1.22; PLOB = -log2(1-eta), eta incl. eta_Bob"
    )

    reconciled = [r for r in runs if r.f_ec is not None]
    pooled_f = (
        sum(r.leak_bits for r in reconciled) / sum(r.ideal_leak_bits for r in reconciled) if reconciled else None
    )
    print("\nmaximum distance")
    if args.bisect_steps >= 0:
        last, first_without, probes = stack_max_distance(
            runs, pz=args.pz, block_bits=block_bits, seed=args.seed, steps=args.bisect_steps
        )
        if last is None:
            print("  stack: no key at any distance")
        elif first_without is None:
            print(f"  stack: key at every distance tried, up to {last:g} km")
        else:
            print(
                f"  stack: key at {last:.2f} km, none at {first_without:.2f} km "
                f"({len(probes)} single-block probes of {block_bits:.3g} bits; near the edge the outcome is statistical)"
            )
    f_values = [(DEFAULT_F_EC, "f 1.1")]
    if pooled_f is not None:
        f_values.append((max(1.0, pooled_f), f"measured f {pooled_f:.3f}"))
    closed = sum(r.key_bits for r in runs) / max(1, sum(r.blocks for r in runs))
    sizes = [block_bits] + ([round(closed)] if round(closed) != block_bits else [])
    for size in sizes:
        for f_ec, name in f_values:
            what = "nominal block" if size == block_bits else "mean closed block"
            km = formula_max_distance(args.pz, size, f_ec)
            print(f"  finite-size formula, {what} {size:.4g} bits, {name}: {km:.2f} km")
    f_src = max(1.0, pooled_f) if pooled_f is not None else DEFAULT_F_EC
    src_km = max_distance(infinite_decoy_rate, gys_asymptotic(0.0, mu=INTENSITIES[0], q=args.pz**2, f_ec=f_src))
    print(f"  GLLP-src (infinite block, infinite decoys, mu 0.48, f {f_src:.3f}): {src_km:.2f} km")
    print(f"  MQZL (q 1/2, mu optimised, f 1.22): {max_distance(infinite_decoy_rate, gys_asymptotic(0.0), optimise=True):.2f} km")
    log(f"total {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
