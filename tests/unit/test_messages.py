"""Canonical bytes of the classical messages: injective, and compact for bit arrays and sorted slots."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qcinode.core import messages as m

_DTYPES = [np.uint8, np.int8, np.bool_, np.int32, np.int64, np.uint64]


@st.composite
def _arrays(draw: st.DrawFn) -> np.ndarray:
    dtype = np.dtype(draw(st.sampled_from(_DTYPES)))
    if dtype == np.bool_:
        values = draw(st.lists(st.booleans(), max_size=12))
    else:
        info = np.iinfo(dtype)
        # Mostly small or sorted values (the compact forms), sometimes anything.
        pick = draw(st.sampled_from(["bits", "sorted", "any"]))
        if pick == "bits":
            values = draw(st.lists(st.integers(0, 1), max_size=12))
        elif pick == "sorted":
            values = sorted(draw(st.lists(st.integers(max(0, int(info.min)), min(int(info.max), 2**33)), max_size=12)))
        else:
            values = draw(st.lists(st.integers(int(info.min), int(info.max)), max_size=12))
    return np.array(values, dtype=dtype)


@settings(max_examples=400, deadline=None)
@given(_arrays(), _arrays())
def test_array_encoding_is_injective(a: np.ndarray, b: np.ndarray) -> None:
    same = a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b)
    assert (m.canonical_bytes(m.TestBits(1, a)) == m.canonical_bytes(m.TestBits(1, b))) == same


def test_bits_are_packed_and_sorted_slots_are_gap_coded() -> None:
    bits = np.random.default_rng(1).integers(0, 2, 8000, dtype=np.uint8)
    slots = np.cumsum(np.random.default_rng(2).integers(1, 1000, 4000)).astype(np.int64)
    assert len(m.canonical_bytes(m.TestBits(1, bits))) < 8000 / 8 + 100
    report = m.DetectionReport(1, int(slots[-1]) + 1, slots, bits[:4000])
    assert len(m.canonical_bytes(report)) < 4000 * 4 + 4000 / 8 + 200
    # An array that fits neither form keeps its raw bytes.
    unsorted = slots[::-1].copy()
    assert len(m.canonical_bytes(m.TestBits(1, unsorted))) > 4000 * 8


@pytest.mark.parametrize(
    "values",
    [np.array([0, 2**32 - 1], np.int64), np.array([0, 2**32], np.int64), np.array([2**63 - 1, -(2**63)], np.int64), np.array([5, 5, 5], np.int64)],
)
def test_gap_form_edges(values: np.ndarray) -> None:
    # Distinct from every neighbour that differs in one value.
    for i in range(values.size):
        other = values.copy()
        other[i] = other[i] - 1 if other[i] > np.iinfo(np.int64).min else other[i] + 1
        assert m.canonical_bytes(m.TestBits(1, values)) != m.canonical_bytes(m.TestBits(1, other))


def test_parts_join_to_the_canonical_bytes() -> None:
    msg = m.SiftReply(3, np.array([1, 0, 1], np.uint8), np.array([0, 2, 1], np.uint8), close_block=True)
    assert b"".join(m.canonical_parts(msg)) == m.canonical_bytes(msg)
