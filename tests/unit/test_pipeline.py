"""Both ends of a link, in one process, through the full post-processing."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qcinode.core import messages as m
from qcinode.core.cascade import CascadeResponder, CascadeSession
from qcinode.core.estimation import NoDecoyStatistics, no_decoy_key_length, plob_bound, predicted_leak
from qcinode.core.pair import make_pair, pump
from qcinode.core.physics import LinkPhysics, exact_error_rate, expected_gain, fibre_transmittance
from qcinode.core.pipeline import BlockAborted, BlockAccepted, LinkProtocolConfig
from qcinode.core.verification import verification_tag

BOOTSTRAP = bytes(range(256)) * 16  # 128 one-time MAC keys


def physics(length_km: float = 10.0, **overrides: float) -> LinkPhysics:
    values = dict(
        intensities=(0.5, 0.2, 0.0),
        class_probabilities=(0.4, 0.3, 0.3),
        z_basis_probability=0.6,
        fibre_transmittance=fibre_transmittance(0.2, length_km),
        detector_efficiency=0.1,
        dark_count_probability=1e-6,
        misalignment_error=0.01,
    )
    values.update(overrides)
    return LinkPhysics(**values)  # type: ignore[arg-type]


def config(block_bits: int = 50_000, **overrides: float) -> LinkProtocolConfig:
    return LinkProtocolConfig(link_id="a-b", physics=physics(**overrides), block_bits=block_bits)


def frame_slots_for(cfg: LinkProtocolConfig, frames_per_block: int = 4) -> int:
    from qcinode.node.runtime import expected_key_bits_per_slot

    return int(cfg.block_bits / frames_per_block / expected_key_bits_per_slot(cfg.physics))


def accepted(events: list) -> list[BlockAccepted]:
    return [e for e in events if isinstance(e, BlockAccepted)]


def test_honest_link_grows_identical_blocks() -> None:
    cfg = config()
    alice, bob = make_pair(cfg, BOOTSTRAP, seed=1)
    result = pump(alice, bob, frame_slots=frame_slots_for(cfg), blocks=3)
    a, b = accepted(result.alice_events), accepted(result.bob_events)
    assert len(a) == len(b) == 3
    for ours, theirs in zip(a, b):
        assert ours.block_id == theirs.block_id
        assert ours.key == theirs.key and len(ours.key) > 0
        assert ours.stats == theirs.stats
        assert ours.stats.key_bits >= cfg.block_bits
        # The leak really is what the key-length function was fed.
        assert ours.stats.estimate is not None and ours.stats.estimate.leak_ec_bits == ours.stats.leak_bits
    assert len({e.key for e in a}) == 3, "blocks must differ"


def test_measured_qber_matches_the_channel_model() -> None:
    from qcinode.core.physics import expected_error_rate, expected_gain

    cfg = config(block_bits=50_000)
    alice, bob = make_pair(cfg, BOOTSTRAP, seed=2)
    result = pump(alice, bob, frame_slots=frame_slots_for(cfg), blocks=1)
    (block,) = accepted(result.alice_events)
    p = cfg.physics
    weights = [p.class_probabilities[c] * expected_gain(p, c) for c in range(3)]
    expected = sum(w * expected_error_rate(p, c) for c, w in enumerate(weights)) / sum(weights)
    n = block.stats.key_bits
    sigma = math.sqrt(expected * (1 - expected) / n)
    assert abs(block.stats.qber - expected) < 5 * sigma + 1e-4


def test_secret_bits_per_pulse_never_beat_plob() -> None:
    cfg = config(length_km=25.0)
    alice, bob = make_pair(cfg, BOOTSTRAP, seed=3)
    result = pump(alice, bob, frame_slots=frame_slots_for(cfg), blocks=2)
    blocks = accepted(result.alice_events)
    assert blocks
    pulses = sum(b.stats.pulses for b in blocks)
    secret = sum(b.stats.secret_bits for b in blocks)
    assert 0 < secret / pulses < plob_bound(cfg.physics.eta)


def test_intercept_resend_on_every_pulse_gives_25_percent_and_no_key() -> None:
    cfg = config(block_bits=20_000, intercept_resend_fraction=1.0, misalignment_error=0.0, dark_count_probability=0.0)
    alice, bob = make_pair(cfg, BOOTSTRAP, seed=4)
    result = pump(alice, bob, frame_slots=frame_slots_for(cfg), blocks=2)
    assert not accepted(result.alice_events) and not accepted(result.bob_events)
    aborted = [e for e in result.alice_events if isinstance(e, BlockAborted)]
    assert len(aborted) == 2
    for event in aborted:
        qber = event.stats.test_qber
        n = event.stats.test_bits
        assert abs(qber - 0.25) < 5 * math.sqrt(0.25 * 0.75 / n)


def _flip_first_parity(direction: str, msg: m.Message) -> m.Message | None:
    if isinstance(msg, m.CascadeReply) and msg.block_seq == 0 and msg.reply.round == 0 and len(msg.reply.parities):
        parities = msg.reply.parities.copy()
        parities[0] ^= 1
        return m.CascadeReply(msg.block_seq, dataclasses.replace(msg.reply, parities=parities))
    return msg


@pytest.mark.parametrize(
    "tamper",
    [
        _flip_first_parity,
        lambda d, msg: (
            dataclasses.replace(msg, pa_seed=bytes([msg.pa_seed[0] ^ 1]) + msg.pa_seed[1:])
            if isinstance(msg, m.Confirm) and msg.accepted and msg.block_seq == 0
            else msg
        ),
        lambda d, msg: dataclasses.replace(msg, auth_tag=bytes(16)) if isinstance(msg, m.Verdict) and msg.block_seq == 0 else msg,
        lambda d, msg: m.SiftReply(msg.frame_id, msg.basis_match, (msg.classes + 1) % 2) if isinstance(msg, m.SiftReply) and msg.frame_id == 0 else msg,
    ],
    ids=["parity", "amplification-seed", "bob-tag", "sift-classes"],
)
def test_tampered_transcript_discards_the_block_and_the_link_recovers(tamper) -> None:
    cfg = config()
    alice, bob = make_pair(cfg, BOOTSTRAP, seed=5)
    cursor_before = alice.auth.cursor
    result = pump(alice, bob, frame_slots=frame_slots_for(cfg), blocks=2, tamper=tamper)
    a = {e.block_seq: e for e in result.alice_events}
    b = {e.block_seq: e for e in result.bob_events}
    assert isinstance(a[0], BlockAborted) and isinstance(b[0], BlockAborted)
    assert isinstance(a[1], BlockAccepted) and isinstance(b[1], BlockAccepted)
    assert a[1].key == b[1].key
    # A block costs at most its own three one-time keys; the ends stay in step.
    assert alice.auth.cursor == bob.auth.cursor
    assert cursor_before + 3 <= alice.auth.cursor <= cursor_before + 6


def test_lost_commit_leaves_bob_pending_until_settled() -> None:
    cfg = config()
    alice, bob = make_pair(cfg, BOOTSTRAP, seed=6)

    def drop_commit(direction: str, msg: m.Message) -> m.Message | None:
        return None if isinstance(msg, m.Commit) else msg

    result = pump(alice, bob, frame_slots=frame_slots_for(cfg), blocks=1, tamper=drop_commit)
    (a,) = accepted(result.alice_events)
    assert not result.bob_events and bob.pending_block_seq == 0
    (b,) = bob.settle_pending(accepted=True)
    assert isinstance(b, BlockAccepted) and b.key == a.key


def test_mac_keys_are_refilled_from_grown_key() -> None:
    cfg = dataclasses.replace(config(), auth_low_water_keys=1000, auth_refill_keys=8)
    alice, bob = make_pair(cfg, BOOTSTRAP[:32 * 9], seed=7)  # 9 keys: three blocks without refill
    result = pump(alice, bob, frame_slots=frame_slots_for(cfg), blocks=5)
    assert len(accepted(result.alice_events)) == 5
    assert alice.auth.cursor == bob.auth.cursor == 15
    assert alice.auth.available_keys == bob.auth.available_keys


def test_exhausted_mac_keys_abort_without_key() -> None:
    cfg = config()
    alice, bob = make_pair(cfg, BOOTSTRAP[:32 * 2], seed=8)
    result = pump(alice, bob, frame_slots=frame_slots_for(cfg), blocks=1)
    assert [e.reason for e in result.alice_events] == ["authentication_keys_exhausted"]
    assert not accepted(result.bob_events)


def test_out_of_order_messages_are_protocol_errors() -> None:
    from qcinode.errors import RemoteProtocolError

    alice, bob = make_pair(config(), BOOTSTRAP, seed=9)
    with pytest.raises(RemoteProtocolError):
        alice.receive(m.TestBits(0, np.zeros(3, np.uint8)))
    with pytest.raises(RemoteProtocolError):
        bob.receive(m.Commit(0, True))
    with pytest.raises(RemoteProtocolError):
        alice.receive(m.DetectionReport(7, 10, np.array([1]), np.array([0], np.uint8)))


@settings(max_examples=25, deadline=None)
@given(qber=st.floats(0.0, 0.11), n=st.integers(2_000, 20_000), seed=st.integers(0, 2**32 - 1))
def test_cascade_then_verification_ends_identical_or_detected(qber: float, n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    alice_key = rng.integers(0, 2, n, dtype=np.uint8)
    bob_key = alice_key ^ (rng.random(n) < qber).astype(np.uint8)
    responder = CascadeResponder(alice_key)
    session = CascadeSession(bob_key, qber_estimate=max(qber, 1e-3), rng=rng)
    query = session.start()
    for _ in range(10_000):
        reply = responder.receive(query)
        nxt = session.receive(reply)
        if nxt is None:
            break
        query = nxt
    assert session.is_done
    assert session.leak_bits == responder.leak_bits
    seed_bytes = rng.bytes(32)
    same_tag = verification_tag(alice_key, seed_bytes) == verification_tag(session.corrected_key, seed_bytes)
    identical = bool(np.array_equal(alice_key, session.corrected_key))
    assert same_tag == identical


def no_decoy_config(block_bits: int, mu: float = 0.1, length_km: float = 10.0, **overrides: object) -> LinkProtocolConfig:
    """A signal-only source (topology ``decoy_states: false``)."""
    phys = physics(length_km, intensities=(mu, 0.0, 0.0), class_probabilities=(1.0, 0.0, 0.0))  # type: ignore[arg-type]
    return LinkProtocolConfig(link_id="a-b", physics=phys, block_bits=block_bits, **overrides)  # type: ignore[arg-type]


def test_an_honest_no_decoy_gllp_link_grows_identical_keys_of_the_predicted_length() -> None:
    # mu 0.1 at 10 km: P_multi = 4.7e-3 against a gain of 6.3e-3, so about a quarter of the
    # detections are provably untagged (GLLP); 4e5-bit blocks leave ~9 % of them as key.
    cfg = no_decoy_config(block_bits=400_000)
    assert cfg.no_decoy_bound == "gllp" and not cfg.has_decoy_states
    alice, bob = make_pair(cfg, BOOTSTRAP, seed=11)
    result = pump(alice, bob, frame_slots=frame_slots_for(cfg), blocks=1)
    (a,), (b,) = accepted(result.alice_events), accepted(result.bob_events)
    assert a.block_id == b.block_id and a.key == b.key and len(a.key) > 0
    assert a.stats == b.stats  # the same statistics and the same estimate at both ends
    stats, estimate = a.stats, a.stats.estimate
    assert estimate is not None and estimate.reason == ""
    assert 8 * len(a.key) == estimate.length_bits // 8 * 8

    # Exactly the finite-size formula on the block's own counts and measured Cascade leak.
    phys = cfg.physics
    measured = NoDecoyStatistics(0.1, phys.z_basis_probability, stats.pulses, stats.key_bits, stats.test_bits, stats.test_errors)
    assert no_decoy_key_length(measured, stats.leak_bits, cfg.verification_tag_bits, cfg.security_epsilon) == estimate

    # Within 5 sigma of the formula on the closed-form counts of the same pulses (leak at the
    # measured Cascade f). Sigma: each count moved by one standard deviation, in quadrature.
    gain, error = expected_gain(phys, 0), exact_error_rate(phys, 0)
    pz, px = phys.z_basis_probability, 1.0 - phys.z_basis_probability
    f_ec = stats.ec_efficiency
    n_z, n_x = stats.pulses * pz * pz * gain, stats.pulses * px * px * gain

    def length(n_z: float, n_x: float, m_x: float, key_error: float) -> int:
        block = NoDecoyStatistics(0.1, pz, stats.pulses, round(n_z), round(n_x), round(m_x))
        leak = predicted_leak(block.key_bits, key_error, f_ec)
        return no_decoy_key_length(block, leak, cfg.verification_tag_bits, cfg.security_epsilon).length_bits

    mean = (n_z, n_x, n_x * error, error)
    sigmas = (
        math.sqrt(n_z),
        math.sqrt(n_x),
        math.sqrt(n_x * error * (1 - error)),
        math.sqrt(error * (1 - error) / n_z),
    )
    expected = length(*mean)
    spread = math.sqrt(
        sum((length(*(v + s if i == j else v for j, v in enumerate(mean))) - expected) ** 2 for i, s in enumerate(sigmas))
    )
    assert expected > 20_000 and spread < 0.05 * expected
    assert abs(estimate.length_bits - expected) <= 5 * spread
    assert 0 < stats.secret_bits / stats.pulses < plob_bound(phys.eta)


def test_a_no_decoy_gllp_link_with_a_decoy_state_intensity_makes_no_key() -> None:
    # mu 0.5 (the decoy-state default): multi-photon pulses (P_multi = 0.09) outnumber the
    # detections (gain 0.03), so GLLP leaves nothing; the block aborts before Cascade.
    cfg = no_decoy_config(block_bits=50_000, mu=0.5)
    alice, bob = make_pair(cfg, BOOTSTRAP, seed=10)
    result = pump(alice, bob, frame_slots=frame_slots_for(cfg), blocks=1)
    (event,) = result.alice_events
    assert isinstance(event, BlockAborted) and "s_Z1<=0" in event.reason
    assert event.stats.cascade_rounds == 0 and event.stats.estimate is not None
    assert event.stats.estimate.single_photon_bits == 0.0
    (bob_event,) = result.bob_events
    assert isinstance(bob_event, BlockAborted) and bob_event.stats.estimate == event.stats.estimate
    # The insecure assumption trusts every click and makes key from the same link.
    naive = no_decoy_config(block_bits=50_000, mu=0.5, no_decoy_bound="single-photon")
    alice, bob = make_pair(naive, BOOTSTRAP, seed=10)
    (naive_event,) = pump(alice, bob, frame_slots=frame_slots_for(naive), blocks=1).alice_events
    assert isinstance(naive_event, BlockAccepted) and naive_event.stats.secret_bits > 0


def test_a_source_the_bounds_cannot_describe_aborts_with_a_reason_instead_of_failing() -> None:
    # Decoy pulses but no vacuum class: Lim et al.'s bounds need all three classes.
    cfg = config(class_probabilities=(0.8, 0.2, 0.0))  # type: ignore[arg-type]
    alice, bob = make_pair(cfg, BOOTSTRAP, seed=12)
    result = pump(alice, bob, frame_slots=frame_slots_for(cfg), blocks=1)
    (event,) = result.alice_events
    assert isinstance(event, BlockAborted) and event.reason.startswith("no_usable_statistics")
    assert not result.bob_events or isinstance(result.bob_events[0], BlockAborted)


def test_no_decoy_bound_is_validated() -> None:
    from qcinode.errors import ConfigError

    with pytest.raises(ConfigError, match="no_decoy_bound"):
        no_decoy_config(block_bits=1000, no_decoy_bound="trust-me")
    assert config().has_decoy_states


def test_cascade_lookahead_takes_fewer_round_trips_for_more_leak_and_the_same_key() -> None:
    # Same seeds, same block: asking three bisection levels per round trip in
    # the thin tail (cascade_lookahead) takes fewer round trips and discloses
    # more parities, which the key length pays for; both ends keep one key.
    stats = {}
    for lookahead in (1, 3):
        cfg = dataclasses.replace(config(block_bits=200_000, misalignment_error=0.03), cascade_lookahead=lookahead)
        alice, bob = make_pair(cfg, BOOTSTRAP, seed=5)
        out = pump(alice, bob, frame_slots=frame_slots_for(cfg), blocks=1)
        (a,), (b,) = accepted(out.alice_events), accepted(out.bob_events)
        assert a.key == b.key
        stats[lookahead] = a.stats
    assert stats[3].cascade_rounds < stats[1].cascade_rounds
    assert stats[3].leak_bits > stats[1].leak_bits
    assert stats[3].secret_bits < stats[1].secret_bits


def test_each_end_hashes_after_its_message_of_step_6_and_the_keys_do_not_depend_on_when() -> None:
    # Neither Confirm nor Verdict depends on privacy amplification's hash:
    # each end sends first and hashes when its driver works ahead, or at the
    # latest when it accepts the block. Same seed, same keys either way.
    cfg = config()
    keys = {}
    for ahead in (True, False):
        alice, bob = make_pair(cfg, BOOTSTRAP, seed=11)
        out = pump(alice, bob, frame_slots=frame_slots_for(cfg), blocks=2, work_ahead=ahead)
        a, b = accepted(out.alice_events), accepted(out.bob_events)
        assert [e.key for e in a] == [e.key for e in b] and len(a) == 2
        keys[ahead] = [(e.key, e.stats) for e in a]
    assert keys[True] == keys[False]

    # Step by step: the hash is still to do once each end has sent its message.
    alice, bob = make_pair(cfg, BOOTSTRAP, seed=11)
    seen: dict[type, tuple[bool, bool]] = {}

    def watch(direction: str, msg: m.Message) -> m.Message:
        if isinstance(msg, m.Confirm | m.Verdict):
            end = alice if isinstance(msg, m.Confirm) else bob
            # Bob's block waits aside for the Commit once his Verdict is out (rule 6b).
            block = alice.block if isinstance(msg, m.Confirm) else bob._confirming
            assert block is not None
            pending = block.unhashed is not None
            seen[type(msg)] = (pending, end.work_ahead())
            assert block.unhashed is None and not end.work_ahead()  # nothing left to do
            if isinstance(msg, m.Confirm):
                assert len(block.secret) == msg.key_bits // 8
            else:
                assert alice.block is not None and block.secret == alice.block.secret
        return msg

    out = pump(alice, bob, frame_slots=frame_slots_for(cfg), blocks=1, tamper=watch, work_ahead=False)
    assert seen == {m.Confirm: (True, True), m.Verdict: (True, True)}
    (a,), (b,) = accepted(out.alice_events), accepted(out.bob_events)
    assert a.key == b.key == keys[True][0][0]
