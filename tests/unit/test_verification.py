"""Error-verification tags: equal keys agree, any difference is caught."""

from __future__ import annotations

import numpy as np
import pytest

from qcinode.core.verification import (
    DEFAULT_TAG_BITS,
    MIN_SEED_BYTES,
    tags_match,
    verification_tag,
)
from qcinode.errors import LocalProtocolError


def _key(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.integers(0, 2, n, dtype=np.uint8)


def _seed(rng: np.random.Generator) -> bytes:
    return rng.bytes(32)


def test_equal_keys_give_equal_tags() -> None:
    rng = np.random.default_rng(1)
    for n in (1, 7, 64, 1000, 100_000):
        key = _key(rng, n)
        seed = _seed(rng)
        ours = verification_tag(key, seed)
        theirs = verification_tag(key.copy(), bytes(seed))
        assert len(ours) == DEFAULT_TAG_BITS // 8
        assert tags_match(ours, theirs)


def test_a_single_flipped_bit_changes_the_tag() -> None:
    rng = np.random.default_rng(2)
    for _ in range(300):
        n = int(rng.integers(1, 5000))
        key = _key(rng, n)
        seed = _seed(rng)
        other = key.copy()
        other[int(rng.integers(0, n))] ^= 1
        assert not tags_match(verification_tag(key, seed), verification_tag(other, seed))


def test_random_error_patterns_change_the_tag() -> None:
    rng = np.random.default_rng(3)
    n = 10_000
    for _ in range(100):
        key = _key(rng, n)
        errors = (rng.random(n) < 0.001).astype(np.uint8)
        errors[int(rng.integers(0, n))] = 1
        seed = _seed(rng)
        assert verification_tag(key, seed) != verification_tag(key ^ errors, seed)


def test_different_seeds_give_independent_looking_tags() -> None:
    rng = np.random.default_rng(4)
    key = _key(rng, 4096)
    tags = [verification_tag(key, _seed(rng)) for _ in range(500)]
    assert len(set(tags)) == len(tags)
    bits = np.unpackbits(np.frombuffer(b"".join(tags), dtype=np.uint8)).reshape(len(tags), 64)
    per_position = bits.mean(axis=0)
    assert per_position.min() > 0.4 and per_position.max() < 0.6  # σ ≈ 0.022
    # Pairwise Hamming distance between consecutive tags ≈ Binomial(64, 1/2).
    distances = (bits[1:] ^ bits[:-1]).sum(axis=1)
    assert abs(distances.mean() - 32) < 1.0  # σ of the mean ≈ 0.18


def test_tag_length_follows_tag_bits() -> None:
    rng = np.random.default_rng(5)
    key = _key(rng, 500)
    seed = _seed(rng)
    assert len(verification_tag(key, seed, tag_bits=128)) == 16
    short = verification_tag(key, seed, tag_bits=12)
    assert len(short) == 2 and short[1] & 0x0F == 0  # zero padding


def test_validation() -> None:
    rng = np.random.default_rng(6)
    key = _key(rng, 100)
    with pytest.raises(LocalProtocolError):
        verification_tag(key, b"\x00" * (MIN_SEED_BYTES - 1))
    with pytest.raises(LocalProtocolError):
        verification_tag(np.zeros(0, dtype=np.uint8), _seed(rng))
    with pytest.raises(LocalProtocolError):
        verification_tag(key, _seed(rng), tag_bits=0)
    with pytest.raises(LocalProtocolError):
        verification_tag(np.full(10, 5, dtype=np.uint8), _seed(rng))


def test_tags_match_is_exact() -> None:
    assert tags_match(b"\x01\x02", b"\x01\x02")
    assert not tags_match(b"\x01\x02", b"\x01\x03")
    assert not tags_match(b"\x01\x02", b"\x01\x02\x00")
