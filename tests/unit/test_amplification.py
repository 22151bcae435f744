"""Toeplitz hashing by FFT: exactness, linearity, uniformity, validation."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qcinode.core.amplification import (
    MAX_SEED_BITS,
    WORDS_MAX_OUT_BITS,
    _toeplitz_fft,
    _toeplitz_words,
    pack_bits,
    seed_bits_needed,
    toeplitz_hash,
    toeplitz_hash_packed,
    unpack_bits,
)
from qcinode.errors import LocalProtocolError


def _dense_hash(bits: np.ndarray, seed: np.ndarray, m: int) -> np.ndarray:
    n = bits.size
    rows = np.arange(m)[:, None]
    cols = np.arange(n)[None, :]
    matrix = seed[rows - cols + n - 1].astype(np.int64)
    product: np.ndarray = (matrix @ bits.astype(np.int64)) % 2
    return product.astype(np.uint8)


def _bits(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.integers(0, 2, n, dtype=np.uint8)


def test_convention_on_a_small_explicit_matrix() -> None:
    # n = 3, m = 2: T = [[s2, s1, s0], [s3, s2, s1]].
    seed = np.array([1, 0, 1, 1], dtype=np.uint8)  # s0..s3
    assert seed_bits_needed(3, 2) == 4
    assert toeplitz_hash(np.array([1, 0, 0], dtype=np.uint8), seed, 2).tolist() == [1, 1]
    assert toeplitz_hash(np.array([0, 1, 0], dtype=np.uint8), seed, 2).tolist() == [0, 1]
    assert toeplitz_hash(np.array([0, 0, 1], dtype=np.uint8), seed, 2).tolist() == [1, 0]
    assert toeplitz_hash(np.array([1, 1, 1], dtype=np.uint8), seed, 2).tolist() == [0, 0]


@settings(max_examples=200, deadline=None)
@given(
    n=st.integers(min_value=1, max_value=200),
    m=st.integers(min_value=1, max_value=200),
    seed=st.integers(min_value=0, max_value=2**32 - 1),
)
def test_equals_dense_matrix_product(n: int, m: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    bits = _bits(rng, n)
    seed_bits = _bits(rng, seed_bits_needed(n, m))
    result = toeplitz_hash(bits, seed_bits, m)
    assert result.dtype == np.uint8
    assert result.shape == (m,)
    np.testing.assert_array_equal(result, _dense_hash(bits, seed_bits, m))


def test_accepts_bool_arrays() -> None:
    rng = np.random.default_rng(7)
    bits = _bits(rng, 50)
    seed_bits = _bits(rng, seed_bits_needed(50, 20))
    np.testing.assert_array_equal(
        toeplitz_hash(bits.astype(bool), seed_bits.astype(bool), 20),
        toeplitz_hash(bits, seed_bits, 20),
    )


@settings(max_examples=50, deadline=None)
@given(
    n=st.integers(min_value=1, max_value=3000),
    data=st.data(),
    seed=st.integers(min_value=0, max_value=2**32 - 1),
)
def test_linearity(n: int, data: st.DataObject, seed: int) -> None:
    m = data.draw(st.integers(min_value=1, max_value=n + 10))
    rng = np.random.default_rng(seed)
    x, y = _bits(rng, n), _bits(rng, n)
    seed_bits = _bits(rng, seed_bits_needed(n, m))
    np.testing.assert_array_equal(
        toeplitz_hash(x ^ y, seed_bits, m),
        toeplitz_hash(x, seed_bits, m) ^ toeplitz_hash(y, seed_bits, m),
    )


def test_zero_input_hashes_to_zero() -> None:
    rng = np.random.default_rng(3)
    out = toeplitz_hash(np.zeros(1000, dtype=np.uint8), _bits(rng, 1499), 500)
    assert not out.any()


def test_output_is_balanced_over_random_seeds() -> None:
    # For a fixed non-zero input, each output bit is uniform over the seed.
    rng = np.random.default_rng(11)
    n, m, trials = 256, 128, 400
    x = _bits(rng, n)
    x[0] = 1
    outputs = np.array([toeplitz_hash(x, _bits(rng, n + m - 1), m) for _ in range(trials)])
    overall = outputs.mean()
    assert abs(overall - 0.5) < 0.01  # σ ≈ 0.0016
    per_position = outputs.mean(axis=0)
    assert per_position.min() > 0.4 and per_position.max() < 0.6  # σ ≈ 0.025


def test_output_is_balanced_over_random_inputs() -> None:
    rng = np.random.default_rng(12)
    n, m = 20000, 8000
    seed_bits = _bits(rng, n + m - 1)
    out = toeplitz_hash(_bits(rng, n), seed_bits, m)
    assert abs(out.mean() - 0.5) < 0.03  # σ ≈ 0.0056


@pytest.mark.parametrize(
    ("n", "m", "seed_len"),
    [
        (10, 5, 13),  # seed one bit short
        (10, 5, 15),  # seed one bit long
        (10, 0, 9),  # no output
        (10, -1, 8),
    ],
)
def test_size_validation(n: int, m: int, seed_len: int) -> None:
    with pytest.raises(LocalProtocolError):
        toeplitz_hash(np.ones(n, dtype=np.uint8), np.ones(seed_len, dtype=np.uint8), m)


def test_rejects_bad_arrays() -> None:
    seed = np.ones(14, dtype=np.uint8)
    with pytest.raises(LocalProtocolError):
        toeplitz_hash(np.zeros(0, dtype=np.uint8), np.ones(4, dtype=np.uint8), 5)
    with pytest.raises(LocalProtocolError):
        toeplitz_hash(np.full(10, 2, dtype=np.uint8), seed, 5)
    with pytest.raises(LocalProtocolError):
        toeplitz_hash(np.ones((2, 5), dtype=np.uint8), seed, 5)
    with pytest.raises(LocalProtocolError):
        toeplitz_hash(np.ones(10, dtype=np.float64), seed, 5)
    with pytest.raises(LocalProtocolError):
        toeplitz_hash([1, 0, 1], np.ones(7, dtype=np.uint8), 5)  # type: ignore[arg-type]
    with pytest.raises(LocalProtocolError):
        seed_bits_needed(0, 5)
    with pytest.raises(LocalProtocolError):
        seed_bits_needed(5, True)


def test_refuses_sizes_beyond_the_exactness_bound() -> None:
    n = MAX_SEED_BITS // 2 + 1
    m = MAX_SEED_BITS - n + 2  # n + m - 1 = MAX_SEED_BITS + 1
    # Only the lengths are inspected before refusing; use cheap broadcast views.
    bits = np.broadcast_to(np.uint8(0), (n,))
    seed = np.broadcast_to(np.uint8(0), (n + m - 1,))
    with pytest.raises(LocalProtocolError, match="MAX_SEED_BITS"):
        toeplitz_hash(bits, seed, m)


def test_megabit_input_is_exact_on_sampled_rows() -> None:
    rng = np.random.default_rng(2024)
    n, m = 1_000_000, 500_000
    bits = _bits(rng, n)
    seed_bits = _bits(rng, seed_bits_needed(n, m))
    out = toeplitz_hash(bits, seed_bits, m)
    assert out.shape == (m,)
    x = bits.astype(np.int64)
    for i in [0, 1, m // 2, m - 2, m - 1, *rng.integers(0, m, 20).tolist()]:
        row = seed_bits[i : i + n][::-1].astype(np.int64)  # T[i, j] = seed[i - j + n - 1]
        assert int(row @ x) % 2 == out[i]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=1), max_size=100))
def test_pack_unpack_round_trip(raw: list[int]) -> None:
    bits = np.array(raw, dtype=np.uint8)
    packed = pack_bits(bits)
    assert len(packed) == (len(raw) + 7) // 8
    np.testing.assert_array_equal(unpack_bits(packed, len(raw)), bits)


def test_pack_bits_is_big_endian_and_zero_padded() -> None:
    assert pack_bits(np.array([1, 0, 0, 0, 0, 0, 0, 1, 1], dtype=np.uint8)) == b"\x81\x80"
    assert unpack_bits(b"\x81\x80", 9).tolist() == [1, 0, 0, 0, 0, 0, 0, 1, 1]


def test_unpack_validation() -> None:
    with pytest.raises(LocalProtocolError):
        unpack_bits(b"\x00", 9)
    with pytest.raises(LocalProtocolError):
        unpack_bits(b"\x00", -1)
    with pytest.raises(LocalProtocolError):
        pack_bits(np.array([0, 3], dtype=np.uint8))


@pytest.mark.parametrize(("n", "m"), [(1, 1), (3, 2), (63, 64), (64, 64), (65, 65), (200, 130), (1000, 257), (4097, 7)])
def test_word_method_equals_dense_matrix_product(n: int, m: int) -> None:
    rng = np.random.default_rng(n * 1000 + m)
    bits, seed = _bits(rng, n), _bits(rng, n + m - 1)
    assert np.array_equal(_toeplitz_words(bits, np.packbits(seed), m), _dense_hash(bits, seed, m))


def test_word_method_and_fft_agree_on_a_megabit_key() -> None:
    # The two evaluations of the same matrix, on the verification tag's size and past the switch.
    rng = np.random.default_rng(8)
    bits = _bits(rng, 1_000_003)
    for m in (64, WORDS_MAX_OUT_BITS + 1):
        seed = _bits(rng, bits.size + m - 1)
        assert np.array_equal(_toeplitz_words(bits, np.packbits(seed), m), _toeplitz_fft(bits, seed, m))


def test_packed_seed_ignores_bits_past_the_matrix() -> None:
    rng = np.random.default_rng(9)
    bits, seed = _bits(rng, 100), _bits(rng, 100 + 64 - 1)
    want = toeplitz_hash(bits, seed, 64)
    for tail in (np.zeros(1 + 64, np.uint8), np.ones(1 + 64, np.uint8)):  # 163 bits: a padded byte, then a spare word
        packed = np.packbits(np.concatenate([seed, tail])).tobytes()
        assert np.array_equal(toeplitz_hash_packed(bits, packed, 64), want)
    with pytest.raises(LocalProtocolError, match="at least 163 bits"):
        toeplitz_hash_packed(bits, np.packbits(seed).tobytes()[:-1], 64)
