"""Wegman–Carter authentication: transcript framing, one-time tags, key reserve."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qcinode.core.authentication import (
    KEY_BYTES,
    TAG_BYTES,
    AuthKeyReserve,
    Transcript,
    one_time_tag,
    verify_one_time_tag,
)
from qcinode.errors import (
    AuthenticationFailed,
    InsufficientKeyMaterial,
    KeyStoreError,
    LocalProtocolError,
)


def _digest(*entries: tuple[str, bytes]) -> bytes:
    transcript = Transcript()
    for direction, payload in entries:
        transcript.append(direction, payload)  # type: ignore[arg-type]
    return transcript.digest_input()


# -- transcript ------------------------------------------------------------


def test_framing_separates_message_boundaries() -> None:
    assert _digest(("A>B", b"ab"), ("A>B", b"c")) != _digest(("A>B", b"a"), ("A>B", b"bc"))
    assert _digest(("A>B", b"abc")) != _digest(("A>B", b"ab"), ("A>B", b"c"))
    assert _digest(("A>B", b"")) != _digest()


def test_direction_matters() -> None:
    assert _digest(("A>B", b"x")) != _digest(("B>A", b"x"))
    assert _digest(("A>B", b"x"), ("B>A", b"y")) != _digest(("B>A", b"x"), ("A>B", b"y"))


def test_order_matters_and_equal_sequences_agree() -> None:
    assert _digest(("A>B", b"x"), ("A>B", b"y")) != _digest(("A>B", b"y"), ("A>B", b"x"))
    assert _digest(("A>B", b"x"), ("B>A", b"y")) == _digest(("A>B", b"x"), ("B>A", b"y"))


_entries = st.lists(st.tuples(st.sampled_from(["A>B", "B>A"]), st.binary(max_size=8)), max_size=6)


@settings(max_examples=300, deadline=None)
@given(_entries, _entries)
def test_framing_is_injective(a: list[tuple[str, bytes]], b: list[tuple[str, bytes]]) -> None:
    assert (_digest(*a) == _digest(*b)) == (a == b)


def test_digest_input_is_stable_and_incremental() -> None:
    transcript = Transcript()
    transcript.append("A>B", b"one")
    first = transcript.digest_input()
    assert transcript.digest_input() == first
    transcript.append("B>A", b"two")
    assert transcript.digest_input().startswith(first)
    assert len(transcript) == 2


def test_transcript_rejects_bad_direction() -> None:
    with pytest.raises(LocalProtocolError):
        Transcript().append("A->B", b"x")  # type: ignore[arg-type]
    with pytest.raises(LocalProtocolError):
        Transcript().append("A>B", "text")  # type: ignore[arg-type]


# -- one-time tags -----------------------------------------------------------


def test_tag_round_trip() -> None:
    rng = np.random.default_rng(1)
    key = rng.bytes(KEY_BYTES)
    data = _digest(("A>B", b"bases"), ("B>A", b"parities"))
    tag = one_time_tag(key, data)
    assert len(tag) == TAG_BYTES
    verify_one_time_tag(key, data, tag)


def test_tampered_data_fails() -> None:
    rng = np.random.default_rng(2)
    for _ in range(100):
        key = rng.bytes(KEY_BYTES)
        data = bytearray(rng.bytes(int(rng.integers(1, 300))))
        tag = one_time_tag(key, bytes(data))
        data[int(rng.integers(0, len(data)))] ^= 1 << int(rng.integers(0, 8))
        with pytest.raises(AuthenticationFailed):
            verify_one_time_tag(key, bytes(data), tag)


def test_tampered_tag_and_wrong_key_fail() -> None:
    rng = np.random.default_rng(3)
    key, data = rng.bytes(KEY_BYTES), b"transcript"
    tag = bytearray(one_time_tag(key, data))
    tag[5] ^= 0x10
    with pytest.raises(AuthenticationFailed):
        verify_one_time_tag(key, data, bytes(tag))
    with pytest.raises(AuthenticationFailed):
        verify_one_time_tag(rng.bytes(KEY_BYTES), data, one_time_tag(key, data))
    with pytest.raises(AuthenticationFailed):
        verify_one_time_tag(key, data, one_time_tag(key, data)[:8])


def test_dropped_or_reordered_messages_fail() -> None:
    rng = np.random.default_rng(4)
    key = rng.bytes(KEY_BYTES)
    tag = one_time_tag(key, _digest(("A>B", b"m1"), ("B>A", b"m2")))
    with pytest.raises(AuthenticationFailed):
        verify_one_time_tag(key, _digest(("A>B", b"m1")), tag)
    with pytest.raises(AuthenticationFailed):
        verify_one_time_tag(key, _digest(("B>A", b"m2"), ("A>B", b"m1")), tag)


def test_key_length_is_checked() -> None:
    with pytest.raises(LocalProtocolError):
        one_time_tag(b"\x00" * 31, b"data")
    with pytest.raises(LocalProtocolError):
        verify_one_time_tag(b"\x00" * 33, b"data", b"\x00" * 16)


# -- key reserve -------------------------------------------------------------


def test_keys_never_repeat_and_follow_the_byte_stream() -> None:
    rng = np.random.default_rng(5)
    bootstrap = rng.bytes(10 * KEY_BYTES + 5)
    refill = rng.bytes(7 * KEY_BYTES - 5)
    reserve = AuthKeyReserve(bootstrap)
    assert reserve.available_keys == 10
    taken = reserve.take(3) + reserve.take(7)
    assert reserve.available_keys == 0 and reserve.cursor == 10
    reserve.refill(refill)  # completes the partial key
    taken += reserve.take(7)
    stream = bootstrap + refill
    assert taken == [stream[i * KEY_BYTES : (i + 1) * KEY_BYTES] for i in range(17)]
    assert len(set(taken)) == len(taken)
    assert reserve.cursor == 17


def test_both_ends_draw_the_same_keys() -> None:
    rng = np.random.default_rng(6)
    psk = rng.bytes(8 * KEY_BYTES)
    alice, bob = AuthKeyReserve(psk), AuthKeyReserve(psk)
    for step in range(20):
        block = rng.bytes(3 * KEY_BYTES)
        alice.refill(block)
        bob.refill(block)
        n = step % 4
        assert alice.take(n) == bob.take(n)
        assert alice.cursor == bob.cursor


def test_take_beyond_available_consumes_nothing() -> None:
    reserve = AuthKeyReserve(bytes(range(256)) * 1)  # 8 keys
    with pytest.raises(InsufficientKeyMaterial):
        reserve.take(9)
    assert reserve.available_keys == 8 and reserve.cursor == 0
    assert reserve.take(8)[0] == bytes(range(32))
    with pytest.raises(InsufficientKeyMaterial):
        reserve.take(1)
    assert reserve.take(0) == []
    with pytest.raises(LocalProtocolError):
        reserve.take(-1)


def test_skip_to_only_moves_forward() -> None:
    rng = np.random.default_rng(7)
    stream = rng.bytes(10 * KEY_BYTES)
    reserve = AuthKeyReserve(stream)
    reserve.take(2)
    reserve.skip_to(5)
    assert reserve.cursor == 5
    assert reserve.take(1) == [stream[5 * KEY_BYTES : 6 * KEY_BYTES]]
    reserve.skip_to(6)  # no-op
    with pytest.raises(LocalProtocolError):
        reserve.skip_to(3)
    with pytest.raises(InsufficientKeyMaterial):
        reserve.skip_to(11)
    assert reserve.cursor == 6 and reserve.available_keys == 4


def test_state_round_trip() -> None:
    rng = np.random.default_rng(8)
    reserve = AuthKeyReserve(rng.bytes(5 * KEY_BYTES + 3))
    reserve.take(2)
    state = json.loads(json.dumps(reserve.to_state()))
    restored = AuthKeyReserve.from_state(state)
    assert restored.cursor == 2 and restored.available_keys == 3
    tail = rng.bytes(29)
    reserve.refill(tail)
    restored.refill(tail)
    assert restored.take(4) == reserve.take(4)


def test_from_state_rejects_garbage() -> None:
    with pytest.raises(KeyStoreError):
        AuthKeyReserve.from_state({"version": 1, "cursor": 0})
    with pytest.raises(KeyStoreError):
        AuthKeyReserve.from_state({"version": 1, "cursor": -1, "buffer": ""})
    with pytest.raises(KeyStoreError):
        AuthKeyReserve.from_state({"version": 1, "cursor": 0, "buffer": "zz"})
    with pytest.raises(KeyStoreError):
        AuthKeyReserve.from_state({"version": 99, "cursor": 0, "buffer": ""})


def test_repr_hides_key_material() -> None:
    key = bytes(range(KEY_BYTES))
    text = repr(AuthKeyReserve(key))
    assert key.hex() not in text and key.hex()[:8] not in text


def test_transcript_tag_is_the_one_time_tag_of_its_digest_input() -> None:
    rng = np.random.default_rng(3)
    transcript = Transcript()
    transcript.append("A>B", b"hello")
    transcript.append_parts("B>A", [b"he", b"", b"llo", rng.bytes(1000)])
    key = rng.bytes(KEY_BYTES)
    tag = transcript.tag(key)
    assert tag == one_time_tag(key, transcript.digest_input())
    transcript.verify(key, tag)
    with pytest.raises(AuthenticationFailed):
        transcript.verify(key, bytes(16))
    with pytest.raises(AuthenticationFailed):
        transcript.verify(key, tag[:8])
    # Pieces frame as one payload: the same bytes split differently give the same transcript.
    other = Transcript()
    other.append("A>B", b"hello")
    other.append("B>A", b"hello" + transcript.digest_input()[-1000:])
    assert other.digest_input() == transcript.digest_input()
    with pytest.raises(LocalProtocolError):
        transcript.append_parts("A>B", ["text"])  # type: ignore[list-item]
