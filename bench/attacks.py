"""Eavesdroppers on the quantum channel: what they do to QBER, the Y1 bound and the key.

Two tables, GYS link (MQZL, PRA 72, 012326, Table I: alpha 0.21 dB/km,
eta_Bob 0.045, Y0 1.7e-6, e_det 0.033), signal mu = 0.48, class
probabilities 0.4 / 0.3 / 0.3, Z-basis probability 0.5.

1. **Channel level** (photon-number splitting, decoy nu = 0.05, vacuum 0, as in
   docs/physics.md §4): one large frame per distance through
   :func:`qcinode.core.physics.transmit` / :func:`~qcinode.core.physics.detect`
   with and without the attack. Printed: Eve's forwarding fraction ``s``;
   measured gain ratios ``Q_mu / Q_mu,honest`` and ``Q_nu / Q_nu,honest``
   (closed form in brackets); measured signal QBER ``E_mu`` of the sifted
   signal clicks; ``Y1^L``, the vacuum+weak decoy lower bound (MQZL Eq. 34)
   computed from the *measured* gains (the honest ``Y_1 = Y0 + eta`` next to
   it); the asymptotic decoy rate (MQZL Eq. 1 with Eqs. 34-37, q = 1/2,
   f = 1.22) from the measured figures; the "naive" rate that trusts every
   click as a single photon, ``q Q_mu [1 - (1 + f) h(E_mu)]`` (what a link
   without decoys is fooled into). ``ref`` is docs/physics.md §4's worked example.

2. **Full stack** (decoy nu = 0.1, the finite-size-friendly choice): both
   ends through :func:`qcinode.core.pair.pump` (sifting, Lim et al. 2014
   decoy estimate, Cascade, verification, privacy amplification), honest and
   attacked, intercept-resend at p = 0.25 / 0.5 / 1.0 (at 25 km) and PNS at
   25 / 50 / 100 km. Printed: QBER (Cascade's on reconciled blocks; a
   trailing ``t`` = test-basis QBER when no block was reconciled) next to the
   textbook value, from the honest closed-form QBER ``e`` over all classes
   (``e + (p/4)(1 - 2e)``, i.e. p/4 without noise, for intercept-resend;
   ``e`` itself for PNS, which adds no errors);
   ``s_Z1``, the key-length result's lower bound on single-photon key-basis
   events per block (0 = could not be bounded above 0), next to the honest
   expectation; secret key per pulse with the attack and without it (the
   honest link at the same distance), and the finite-size prediction under
   the attack (``expected_key_length`` on the attacked closed forms); the
   abort reasons.

3. **Without decoy states** (signal pulses only, topology
   ``decoy_states: false``): the full stack with each no-decoy bound
   (:func:`qcinode.core.estimation.no_decoy_key_length`), honest and under
   PNS at 50 km, mu = 0.48, plus GLLP at 25 km at its optimal mu (MQZL's
   no-decoy optimum, mu ~ eta). Printed: QBER; ``s_Z1``, the bound's
   untagged (``gllp``) or trusted (``single-photon``) key-basis detections
   per block; measured key per pulse; the finite-size prediction
   (``expected_no_decoy_key_length`` on the closed forms, f = 1.16); the
   textbook asymptotic rate (q = 1/2, f = 1.22): GLLP's no-decoy rate
   (docs/physics.md §1) for ``gllp``, ``q Q_mu [1 - (1 + f) h(E_mu)]`` for
   ``single-photon``; and **Eve's known share** of the sifted key-basis bits,
   from the sampler's ground truth (``AliceRecord.eve_knows_bit``: every
   forwarded multi-photon pulse, of which she keeps a photon), with the
   number of sifted key bits she does not hold next to the Cascade leak. The
   ground truth is read by wrapping the sampler the pipeline calls; nothing
   of it crosses the wire.

Run: ``python bench/attacks.py`` (block 1e6, 2 blocks, ~2-3 min) or
``--quick`` (block 5e5, 1 block, smaller frames, ~1 min). Nothing is asserted.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import time
from collections import Counter
from typing import Any

import numpy as np

from qcinode.core import messages as m
from qcinode.core.estimation import (
    NO_DECOY_GLLP,
    NO_DECOY_SINGLE_PHOTON,
    AsymptoticParams,
    expected_key_length,
    expected_no_decoy_key_length,
    h2,
    no_decoy_rate,
    optimise_mu,
)
from qcinode.core.pair import make_pair, pump
from qcinode.core.physics import (
    CLASS_DECOY,
    CLASS_SIGNAL,
    EMULATED_CHANNEL,
    AliceRecord,
    Clicks,
    LinkPhysics,
    PhotonFrame,
    detect,
    exact_error_rate,
    expected_gain,
    expected_qber_intercept_resend,
    fibre_transmittance,
    transmit,
)
from qcinode.core.pipeline import BlockAccepted, LinkProtocolConfig
from qcinode.node.runtime import expected_key_bits_per_slot

BOOTSTRAP = bytes(range(256)) * 64
F_TEXTBOOK = 1.22
Q_SIFT = 0.5
# docs/physics.md §4 worked example (nu = 0.05): s, Q_nu ratio, Y1^L; None = infeasible.
REFERENCE = {25.0: None, 50.0: (0.44, 0.13, -1.9e-4), 100.0: (0.039, 0.20, -1.5e-5)}


def gys(length_km: float, nu: float, **attack: object) -> LinkPhysics:
    return LinkPhysics(
        intensities=(0.48, nu, 0.0),
        class_probabilities=(0.4, 0.3, 0.3),
        z_basis_probability=0.5,
        fibre_transmittance=fibre_transmittance(0.21, length_km),
        detector_efficiency=0.045,
        dark_count_probability=1.7e-6,
        misalignment_error=0.033,
        **attack,  # type: ignore[arg-type]
    )


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- channel level


@dataclasses.dataclass
class ChannelMeasurement:
    gains: tuple[float, float, float]
    errors: tuple[float, float, float]  # sifted error rate per class


def measure_channel(phys: LinkPhysics, n_slots: int, seed: int) -> ChannelMeasurement:
    a_key, a_noise, b_key, b_noise = (np.random.default_rng([seed, s]) for s in range(4))
    frame, record = transmit(phys, n_slots, a_key, a_noise)
    clicks = detect(phys, frame, b_key, b_noise)
    classes, bases, bits = record.reveal(clicks.slots)
    gains, errors = [], []
    for cls in range(3):
        mask = classes == cls
        gains.append(int(np.count_nonzero(mask)) / (n_slots * phys.class_probabilities[cls]))
        sifted = mask & (bases == clicks.bases)
        m = int(np.count_nonzero(sifted))
        errors.append(float(np.count_nonzero(clicks.bits[sifted] != bits[sifted])) / m if m else 0.0)
    return ChannelMeasurement((gains[0], gains[1], gains[2]), (errors[0], errors[1], errors[2]))


def y1_lower(mu: float, nu: float, q_mu: float, q_nu: float, y0: float) -> float:
    """MQZL Eq. (34), vacuum + weak decoy."""
    return mu / (mu * nu - nu * nu) * (
        q_nu * math.exp(nu) - (nu * nu / (mu * mu)) * q_mu * math.exp(mu) - (mu * mu - nu * nu) / (mu * mu) * y0
    )


def decoy_rate(mu: float, nu: float, m: ChannelMeasurement) -> float:
    """MQZL Eq. (1) with Eqs. (34), (35), (37) on measured gains and error rates."""
    q_mu, q_nu, y0 = m.gains
    e_mu, e_nu, _ = m.errors
    y1 = y1_lower(mu, nu, q_mu, q_nu, y0)
    if y1 <= 0.0:
        return 0.0
    q1 = y1 * mu * math.exp(-mu)
    e1 = min((e_nu * q_nu * math.exp(nu) - 0.5 * y0) / (y1 * nu), 0.5)
    return max(Q_SIFT * (-q_mu * F_TEXTBOOK * h2(e_mu) + q1 * (1.0 - h2(max(e1, 0.0)))), 0.0)


def naive_rate(m: ChannelMeasurement) -> float:
    q_mu, e_mu = m.gains[0], m.errors[0]
    return max(Q_SIFT * q_mu * (1.0 - (1.0 + F_TEXTBOOK) * h2(e_mu)), 0.0)


def channel_table(distances: list[float], slots_at_50km: float, seed: int) -> None:
    nu = 0.05
    print(f"\n== Photon-number splitting, channel level (mu 0.48, nu {nu}, vacuum 0; GYS) ==")
    print(
        f"{'L km':>5} {'s':>6} {'feasible':>8} {'Qmu/hon':>16} {'Qnu/hon':>16} {'E_mu':>14} "
        f"{'Y1^L':>10} {'Y1 hon':>8} {'R decoy':>9} {'R naive':>9} {'R hon':>9} {'clicks':>8}  ref (docs/physics.md §4)"
    )
    for length in distances:
        honest = gys(length, nu)
        attacked = gys(length, nu, photon_number_splitting=True)
        # Same statistical weight at each distance: scale the frame with the loss.
        n_slots = int(slots_at_50km * fibre_transmittance(0.21, 50.0) / fibre_transmittance(0.21, length))
        mh = measure_channel(honest, n_slots, seed)
        ma = measure_channel(attacked, n_slots, seed + 1)
        ratio = [ma.gains[k] / mh.gains[k] for k in (CLASS_SIGNAL, CLASS_DECOY)]
        pred = [expected_gain(attacked, k) / expected_gain(honest, k) for k in (CLASS_SIGNAL, CLASS_DECOY)]
        y1l = y1_lower(0.48, nu, ma.gains[0], ma.gains[1], ma.gains[2])
        ref = REFERENCE.get(length)
        ref_text = (
            "infeasible at mu 0.48" if ref is None else f"s {ref[0]}, Qnu ratio {ref[1]}, Y1^L {ref[2]:.1e}"
        )
        clicks = round(n_slots * sum(p * q for p, q in zip(attacked.class_probabilities, ma.gains)))
        print(
            f"{length:5.0f} {attacked.pns_forwarding:6.3f} {str(attacked.pns_feasible):>8} "
            f"{ratio[0]:7.3f} [{pred[0]:6.3f}] {ratio[1]:7.3f} [{pred[1]:6.3f}] "
            f"{100 * ma.errors[0]:5.2f}% [{100 * exact_error_rate(honest, CLASS_SIGNAL):4.2f}%] "
            f"{y1l:10.2e} {1.7e-6 + honest.eta:8.1e} {decoy_rate(0.48, nu, ma):9.2e} {naive_rate(ma):9.2e} "
            f"{decoy_rate(0.48, nu, mh):9.2e} {clicks:8d}  {ref_text}"
        )
    print("  [..] closed form; E_mu bracket = honest E_mu; R = asymptotic rate per pulse (q 1/2, f 1.22) from the")
    print("  measured figures: 'decoy' = vacuum+weak GLLP under attack, 'naive' = every click trusted, 'hon' = decoy, no Eve.")


# --------------------------------------------------------------------------- full stack


@dataclasses.dataclass
class StackResult:
    pulses: int
    secret: int
    qber: float
    qber_is_test: bool
    s_z1: float
    reasons: Counter[str]


def run_stack(phys: LinkPhysics, block_bits: int, blocks: int, seed: int) -> StackResult:
    cfg = LinkProtocolConfig(link_id="a-b", physics=phys, block_bits=block_bits)
    alice, bob = make_pair(cfg, BOOTSTRAP, seed=seed)
    slots = int(block_bits / 4 / expected_key_bits_per_slot(phys))
    result = pump(alice, bob, frame_slots=slots, blocks=blocks)
    events = result.alice_events
    pulses = sum(e.stats.pulses for e in events)
    secret = sum(e.stats.secret_bits for e in events if isinstance(e, BlockAccepted))
    reconciled = [e.stats for e in events if e.stats.key_bits and e.stats.cascade_rounds]
    if reconciled:
        qber = sum(s.errors_corrected for s in reconciled) / sum(s.key_bits for s in reconciled)
        is_test = False
    else:
        qber = sum(e.stats.test_errors for e in events) / max(sum(e.stats.test_bits for e in events), 1)
        is_test = True
    s_z1 = [e.stats.estimate.single_photon_bits for e in events if e.stats.estimate is not None]
    reasons = Counter("accepted" if isinstance(e, BlockAccepted) else e.reason.split(":")[0][:60] for e in events)
    return StackResult(pulses, secret, qber, is_test, sum(s_z1) / len(s_z1) if s_z1 else float("nan"), reasons)


def all_class_qber(phys: LinkPhysics) -> float:
    """Closed-form key-basis QBER over every intensity class (what Cascade measures)."""
    weights = [p * expected_gain(phys, k) for k, p in enumerate(phys.class_probabilities)]
    return sum(w * exact_error_rate(phys, k) for k, w in enumerate(weights)) / sum(weights)


def predicted_per_pulse(phys: LinkPhysics, block_bits: int) -> tuple[float, float]:
    """Finite-size key per pulse and s_Z1 of the mean block (Lim et al. on the closed forms)."""
    result = expected_key_length(phys, block_bits)
    per_pulse_key = expected_key_bits_per_slot(phys)
    return result.length_bits / block_bits * per_pulse_key, result.single_photon_bits


def stack_table(distances: list[float], ir_distance: float, block_bits: int, blocks: int, seed: int) -> None:
    nu = 0.1
    print(f"\n== Full stack (mu 0.48, nu {nu}, vacuum 0; GYS; blocks of {block_bits:.0e} key bits x {blocks}) ==")
    print(
        f"{'attack':>20} {'L km':>5} {'QBER':>8} {'textbook':>11} {'s_Z1/blk':>9} {'s_Z1 hon':>9} "
        f"{'key/pulse':>10} {'honest':>10} {'predicted':>10}  outcome"
    )
    honest_cache: dict[float, StackResult] = {}

    def honest(length: float) -> StackResult:
        if length not in honest_cache:
            log(f"honest {length} km")
            honest_cache[length] = run_stack(gys(length, nu), block_bits, blocks, seed)
        return honest_cache[length]

    rows: list[tuple[str, float, LinkPhysics, str]] = []
    for p in (0.25, 0.5, 1.0):
        phys = gys(ir_distance, nu, intercept_resend_fraction=p)
        e_honest = all_class_qber(gys(ir_distance, nu))
        rows.append((f"intercept-resend {p}", ir_distance, phys, f"{100 * expected_qber_intercept_resend(e_honest, p):.2f}%"))
    for length in distances:
        phys = gys(length, nu, photon_number_splitting=True)
        name = f"PNS s={phys.pns_forwarding:.3f}" + ("" if phys.pns_feasible else "*")
        textbook = f"{100 * all_class_qber(gys(length, nu)):.2f}%|{100 * all_class_qber(phys):.2f}"
        rows.append((name, length, phys, textbook))
    for length in sorted({ir_distance, *distances}):
        h = honest(length)
        print(
            f"{'none':>20} {length:5.0f} {100 * h.qber:7.2f}{'t' if h.qber_is_test else '%'} "
            f"{100 * all_class_qber(gys(length, nu)):10.2f}% {h.s_z1:9.0f} "
            f"{predicted_per_pulse(gys(length, nu), block_bits)[1]:9.0f} {h.secret / h.pulses:10.2e} "
            f"{h.secret / h.pulses:10.2e} {predicted_per_pulse(gys(length, nu), block_bits)[0]:10.2e}  "
            + ", ".join(f"{k} x{v}" for k, v in h.reasons.items())
        )
    for name, length, phys, textbook in rows:
        log(f"{name} {length} km")
        r = run_stack(phys, block_bits, blocks, seed + 1)
        h = honest(length)
        pred_key, _ = predicted_per_pulse(phys, block_bits)
        _, hon_s1 = predicted_per_pulse(gys(length, nu), block_bits)
        print(
            f"{name:>20} {length:5.0f} {100 * r.qber:7.2f}{'t' if r.qber_is_test else '%'} {textbook:>11} "
            f"{r.s_z1:9.0f} {hon_s1:9.0f} {r.secret / r.pulses:10.2e} {h.secret / h.pulses:10.2e} "
            f"{pred_key:10.2e}  " + ", ".join(f"{k} x{v}" for k, v in r.reasons.items())
        )
    print("  textbook QBER: e = honest closed-form QBER over all classes (signal E_mu plus the few decoy/vacuum clicks);")
    print("  intercept-resend e + (p/4)(1 - 2e) (= p/4 without noise); PNS: the honest e (no errors added) | the")
    print("  attacked closed form, which differs only because decoy clicks become rarer and dark-count heavy.")
    print("  s_Z1/blk is per closed block, and blocks close up to 25 % past the nominal size (frame boundary).")
    print("  * PNS infeasible (multi-photon gain below the honest gain): Eve forwards every multi-photon pulse and")
    print("    Bob's signal gain drops. s_Z1 hon / predicted: Lim et al. key length of the mean block (closed forms).")


# --------------------------------------------------------------------------- without decoys


class EveLedger:
    """Counts the sifted key-basis bits whose value Eve knows, from the sampler's ground truth.

    It is the pair's quantum channel (``make_pair(..., quantum=ledger)``): the
    emulated one, collecting Alice's records, which carry the ground truth;
    the sifting messages are read, unchanged, through the pump's tamper hook.
    """

    def __init__(self) -> None:
        self.records: list[AliceRecord] = []
        self.reports: dict[int, m.DetectionReport] = {}
        self.key_bits = 0
        self.known = 0

    def transmit(self, phys: LinkPhysics, n_slots: int, key_rng: Any, noise_rng: np.random.Generator) -> tuple[PhotonFrame, AliceRecord]:
        frame, record = EMULATED_CHANNEL.transmit(phys, n_slots, key_rng, noise_rng)
        self.records.append(record)
        return frame, record

    def detect(self, phys: LinkPhysics, frame: PhotonFrame, key_rng: Any, noise_rng: np.random.Generator) -> Clicks:
        return EMULATED_CHANNEL.detect(phys, frame, key_rng, noise_rng)

    def tamper(self, direction: str, msg: m.Message) -> m.Message:
        if isinstance(msg, m.DetectionReport):
            self.reports[msg.frame_id] = msg
        elif isinstance(msg, m.SiftReply):
            report, record = self.reports.pop(msg.frame_id), self.records[msg.frame_id]
            key_slots = report.slots[msg.basis_match.astype(bool) & (report.bases == 0)]
            self.key_bits += len(key_slots)
            self.known += int(np.count_nonzero(record.eve_knows_bit(key_slots)))
        return msg


def _short(reason: str) -> str:
    """The parenthesised gist of an estimation reason (``s_Z1<=0, ...``), else its start."""
    if "(" in reason:
        return reason[reason.index("(") + 1 :].rstrip(")")
    return reason.split(":")[0][:50]


def gys_no_decoy(length_km: float, mu: float, **attack: object) -> LinkPhysics:
    return dataclasses.replace(gys(length_km, 0.0, **attack), intensities=(mu, 0.0, 0.0), class_probabilities=(1.0, 0.0, 0.0))


def no_decoy_table(block_bits: int, blocks: int, seed: int) -> None:
    gllp_mu_25, _ = optimise_mu(no_decoy_rate, AsymptoticParams(length_km=25.0))
    print(f"\n== Without decoy states (signal pulses only; GYS; blocks of {block_bits:.0e} key bits x {blocks}) ==")
    print(
        f"{'bound':>13} {'attack':>6} {'L km':>5} {'mu':>7} {'QBER':>7} {'f':>5} {'s_Z1/blk':>9} {'key/pulse':>10} "
        f"{'predicted':>10} {'textbook':>10} {'secret':>8} {'Eve knows':>10} {'lacks':>7} {'leak':>7}  outcome"
    )
    rows = [
        (NO_DECOY_GLLP, False, 50.0, 0.48),
        (NO_DECOY_GLLP, True, 50.0, 0.48),
        (NO_DECOY_GLLP, False, 25.0, gllp_mu_25),
        (NO_DECOY_SINGLE_PHOTON, False, 50.0, 0.48),
        (NO_DECOY_SINGLE_PHOTON, True, 50.0, 0.48),
    ]
    for bound, pns, length, mu in rows:
        phys = gys_no_decoy(length, mu, photon_number_splitting=pns)
        log(f"no decoys, {bound}, {'PNS' if pns else 'honest'} {length} km")
        cfg = LinkProtocolConfig(link_id="a-b", physics=phys, block_bits=block_bits, no_decoy_bound=bound)
        ledger = EveLedger()
        alice, bob = make_pair(cfg, BOOTSTRAP, seed=seed, quantum=ledger)
        events = pump(
            alice, bob, frame_slots=int(block_bits / 4 / expected_key_bits_per_slot(phys)),
            blocks=blocks, tamper=ledger.tamper,
        ).alice_events
        pulses = sum(e.stats.pulses for e in events)
        secret = sum(e.stats.secret_bits for e in events if isinstance(e, BlockAccepted))
        leak = sum(e.stats.leak_bits for e in events)
        qber = sum(e.stats.test_errors for e in events) / max(sum(e.stats.test_bits for e in events), 1)
        s_z1 = [e.stats.estimate.single_photon_bits for e in events if e.stats.estimate is not None]
        reasons = Counter("accepted" if isinstance(e, BlockAccepted) else _short(e.reason) for e in events)
        reconciled = [e.stats for e in events if e.stats.cascade_rounds and e.stats.ec_efficiency > 0]
        f_ec = sum(r.ec_efficiency for r in reconciled) / len(reconciled) if reconciled else 1.16
        predicted = expected_no_decoy_key_length(phys, block_bits, bound=bound, f_ec=f_ec)
        per_pulse = predicted.length_bits / block_bits * expected_key_bits_per_slot(phys)
        gain, error = expected_gain(phys, CLASS_SIGNAL), exact_error_rate(phys, CLASS_SIGNAL)
        if bound == NO_DECOY_GLLP:
            textbook = no_decoy_rate(AsymptoticParams(length_km=length, mu=mu))
        else:
            textbook = max(Q_SIFT * gain * (1.0 - (1.0 + F_TEXTBOOK) * h2(error)), 0.0)
        share = ledger.known / ledger.key_bits if ledger.key_bits else 0.0
        print(
            f"{bound:>13} {'PNS' if pns else 'none':>6} {length:5.0f} {mu:7.4f} {100 * qber:6.2f}% {f_ec:5.3f} "
            f"{sum(s_z1) / len(s_z1):9.0f} {secret / pulses:10.2e} {per_pulse:10.2e} {textbook:10.2e} {secret:8d} "
            f"{100 * share:9.2f}% {ledger.key_bits - ledger.known:7d} {leak:7d}  "
            + ", ".join(f"{k} x{v}" for k, v in reasons.items())
        )
    print("  QBER: test basis; f: measured Cascade efficiency (1.16 assumed when nothing was reconciled).")
    print("  s_Z1/blk: untagged (gllp) or trusted (single-photon) key-basis detections per block.")
    print("  predicted: finite-size no-decoy bound on the closed-form mean block at that f; textbook: asymptotic")
    print("  (q 1/2, f 1.22), GLLP no-decoy rate for gllp, q Q [1 - (1 + f) h(E)] for single-photon. The stack")
    print("  keys Z-Z matches only (p_Z^2 = 1/4 against q = 1/2), so it sits near half the textbook figure.")
    print("  secret: secret bits accepted over all blocks. Eve knows: share of the sifted key-basis bits from pulses")
    print("  Eve kept a photon of (ground truth; a lower bound, dark-count-only clicks count as unknown); lacks: the")
    print("  other sifted key bits; leak: Cascade's disclosed bits. The final key is a function of the sifted key and")
    print("  public data, so Eve's uncertainty about it is at most 'lacks' bits, however long 'secret' claims to be.")
    print(f"  GLLP's optimal mu at 25 km: {gllp_mu_25:.4f} (MQZL no-decoy optimum, mu ~ eta).")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller blocks and frames, < 1 min")
    parser.add_argument("--block-bits", type=float, default=None)
    parser.add_argument("--blocks", type=int, default=None)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    block_bits = int(args.block_bits or (5e5 if args.quick else 1e6))
    blocks = args.blocks or (1 if args.quick else 2)
    slots_at_50km = 2e8 if args.quick else 1e9
    distances = [25.0, 50.0, 100.0]
    start = time.monotonic()
    channel_table(distances, slots_at_50km, args.seed)
    stack_table(distances, 25.0, block_bits, blocks, args.seed)
    no_decoy_table(block_bits, blocks, args.seed)
    print(f"\n(elapsed {time.monotonic() - start:.0f} s)")


if __name__ == "__main__":
    main()
