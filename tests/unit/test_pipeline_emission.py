"""Alice's frames drawn beside her other steps (pipeline rule 1b): in flight from the start, keys unchanged."""

from __future__ import annotations

from collections import deque

import numpy as np
import pytest

from qcinode.core import messages as m
from qcinode.core.pair import make_pair
from qcinode.core.physics import PhotonFrame
from qcinode.core.pipeline import AliceLink, BlockAccepted, BobLink, Emission
from qcinode.errors import ConfigError, LocalProtocolError, RemoteProtocolError

from .test_pipeline import BOOTSTRAP, config, frame_slots_for


def run_beside(alice: AliceLink, bob: BobLink, frame_slots: int, blocks: int, draw_lag: int) -> tuple[list[bytes], list[bytes], int]:
    """A node pair whose Alice sifts ahead and draws each frame ``draw_lag`` deliveries after it starts.

    Meanwhile every message keeps flowing both ways. Returns the keys Alice
    and Bob accepted, and how many messages Alice took while a frame of hers
    was being drawn.
    """
    to_bob: deque[tuple[str, object]] = deque()
    to_alice: deque[m.Message] = deque()
    a_keys: list[bytes] = []
    b_keys: list[bytes] = []
    drawing: tuple[Emission, int] | None = None
    taken_while_drawing = 0
    steps = 0
    while len(a_keys) < blocks or len(b_keys) < blocks:
        steps += 1
        assert steps < 20_000, "the pair stalled"
        if drawing is None and alice.can_sift_ahead:
            drawing = (alice.emit_frame_later(frame_slots, ahead=True), steps + draw_lag)
        if drawing is not None and steps >= drawing[1]:
            emission = drawing[0]
            frame = alice.emitted(emission, *emission.run())
            assert frame is not None
            to_bob.append(("frame", (emission.frame_id, PhotonFrame.from_bytes(frame.to_bytes()))))
            drawing = None
        if to_bob:
            kind, item = to_bob.popleft()
            if kind == "frame":
                to_alice.extend(bob.receive_frame(*item))  # type: ignore[misc]
            else:
                to_alice.extend(bob.receive(item))  # type: ignore[arg-type]
        if to_alice:
            taken_while_drawing += drawing is not None
            to_bob.extend(("message", out) for out in alice.receive(to_alice.popleft()))
        a_keys += [e.key for e in alice.take_events() if isinstance(e, BlockAccepted)]
        b_keys += [e.key for e in bob.take_events() if isinstance(e, BlockAccepted)]
    return a_keys, b_keys, taken_while_drawing


def test_keys_are_the_same_whether_frames_are_drawn_at_once_or_beside_the_open_block() -> None:
    cfg = config(block_bits=20_000)
    slots = frame_slots_for(cfg)
    at_once = run_beside(*make_pair(cfg, BOOTSTRAP, seed=5), slots, blocks=3, draw_lag=0)
    beside = run_beside(*make_pair(cfg, BOOTSTRAP, seed=5), slots, blocks=3, draw_lag=4)
    assert at_once[0][:3] == at_once[1][:3] and all(at_once[0])
    assert beside[0][:3] == at_once[0][:3] and beside[1][:3] == at_once[1][:3]
    assert at_once[2] == 0 and beside[2] > 10  # the open block's messages did come while frames were drawn


def test_a_frame_is_in_flight_from_the_start_of_its_emission() -> None:
    cfg = config(block_bits=20_000)
    alice, bob = make_pair(cfg, BOOTSTRAP, seed=2)
    slots = frame_slots_for(cfg)
    emission = alice.emit_frame_later(slots)
    assert not alice.is_ready_for_frame and not alice.can_sift_ahead
    with pytest.raises(LocalProtocolError, match="already in flight"):
        alice.emit_frame(slots, ahead=True)
    frame, record = emission.run()
    (report,) = bob.receive_frame(emission.frame_id, frame)
    # A report of a frame Alice has not sent yet cannot be Bob's: the session breaks.
    with pytest.raises(RemoteProtocolError, match="not been sent yet"):
        alice.receive(report)


def test_an_emission_that_ends_after_its_session_broke_sends_nothing() -> None:
    cfg = config(block_bits=20_000)
    alice, _ = make_pair(cfg, BOOTSTRAP, seed=2)
    emission = alice.emit_frame_later(frame_slots_for(cfg))
    alice.abandon("peer lost")
    assert alice.emitted(emission, *emission.run()) is None
    other = make_pair(cfg, BOOTSTRAP, seed=2)[0].emit_frame_later(10)
    assert alice.emitted(other, *other.run()) is None  # not this end's emission either


@pytest.mark.parametrize("n_slots", [-1, 1.5, True, 1 << 60])
def test_a_bad_frame_size_is_refused_by_name_and_changes_nothing(n_slots: object) -> None:
    cfg = config(block_bits=20_000)
    alice, _ = make_pair(cfg, BOOTSTRAP, seed=2)
    with pytest.raises(ConfigError, match="n_slots"):
        alice.emit_frame_later(n_slots)  # type: ignore[arg-type]
    assert alice.is_ready_for_frame and alice.next_frame_id == 0
    frame_id, frame = alice.emit_frame(1000)
    assert frame_id == 0 and frame.n_slots == 1000


def test_emission_draws_from_generators_of_its_own() -> None:
    """The session's generators do not move while frames are drawn, so seeds drawn beside stay the same."""
    cfg = config(block_bits=20_000)
    alice, _ = make_pair(cfg, BOOTSTRAP, seed=2)
    assert isinstance(alice.key_rng, np.random.Generator)
    before = alice.key_rng.bit_generator.state
    alice.emit_frame(frame_slots_for(cfg))
    assert alice.key_rng.bit_generator.state == before
