"""The kernels: the keyed permutation, and the compiled twins against the numpy paths (bit for bit)."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from qcinode.core import kernels
from qcinode.core.cascade import CascadeResponder, CascadeSession
from qcinode.core.kernels import FeistelPermutation, FeistelStack, lookup_sorted, permuted_bits, permuted_prefix_parity
from qcinode.errors import ConfigError


@pytest.fixture
def restore_mode() -> Iterator[None]:
    before = kernels.mode()
    yield
    kernels.set_mode(before)


def _both(fn, *args):  # type: ignore[no-untyped-def]
    """``fn(*args)`` with the numpy path, then with the compiled twin."""
    kernels.set_mode("numpy")
    first = fn(*args)
    kernels.set_mode("numba")
    return first, fn(*args)


# --------------------------------------------------------------------------- the permutation


@pytest.mark.parametrize("n", [1, 2, 3, 5, 64, 1000, 4097, (1 << 17) + 3])
def test_feistel_is_a_permutation_and_inverse_undoes_it(n: int) -> None:
    perm = FeistelPermutation.from_seed(12345, n)
    forward = perm.array()
    assert np.array_equal(np.sort(forward), np.arange(n))
    assert np.array_equal(perm.inverse(forward), np.arange(n))
    picks = np.random.default_rng(n).integers(0, n, 50)
    assert np.array_equal(perm.forward(perm.inverse(picks)), picks)


def test_feistel_depends_on_the_seed_only() -> None:
    a = FeistelPermutation.from_seed(7, 5000).array()
    assert np.array_equal(a, FeistelPermutation.from_seed(7, 5000).array())
    assert not np.array_equal(a, FeistelPermutation.from_seed(8, 5000).array())


def test_feistel_rejects_a_bad_size() -> None:
    with pytest.raises(ValueError, match="n must be"):
        FeistelPermutation.from_seed(1, 0)


def test_feistel_sends_each_position_anywhere_uniformly() -> None:
    # Over many seeds, position i lands at each j with probability 1/n:
    # each of the n*n counts is Binomial(seeds, 1/n); 5 sigma either side.
    n, seeds = 12, 3000
    counts = np.zeros((n, n), np.int64)
    for seed in range(seeds):
        counts[np.arange(n), FeistelPermutation.from_seed(seed, n).array()] += 1
    mean = seeds / n
    sigma = np.sqrt(seeds * (1 / n) * (1 - 1 / n))
    assert np.abs(counts - mean).max() < 5 * sigma


def test_feistel_separates_neighbours() -> None:
    # Cascade relies on it: two errors in one small block of a pass land in
    # different blocks of the next. Neighbours i, i+1 map to independent
    # places: their distance is spread like that of two random positions.
    n = 1 << 16
    perm = FeistelPermutation.from_seed(3, n).array()
    gaps = np.abs(np.diff(perm))
    # For two uniform positions E|a - b| = n/3 with sd about n/4.2; over n-1 pairs.
    assert abs(gaps.mean() / n - 1 / 3) < 5 * 0.236 / np.sqrt(n - 1) + 0.01
    assert (gaps < 64).mean() < 0.01


# --------------------------------------------------------------------------- twins, bit for bit


@pytest.mark.parametrize("n", [1, 7, 1000, (1 << 17) + 11])
def test_permuted_bits_numba_equals_numpy(n: int, restore_mode: None) -> None:
    bits = np.random.default_rng(n).integers(0, 2, n, dtype=np.uint8)
    perm = FeistelPermutation.from_seed(99, n)

    def run() -> np.ndarray:
        out = np.empty(n, np.uint8)
        permuted_bits(bits, perm, out)
        return out

    slow, fast = _both(run)
    assert np.array_equal(slow, bits[perm.array()])
    assert np.array_equal(slow, fast)


@pytest.mark.parametrize("n", [1, 7, 1000, (1 << 17) + 11])
def test_permuted_prefix_parity_numba_equals_numpy(n: int, restore_mode: None) -> None:
    bits = np.random.default_rng(n + 1).integers(0, 2, n, dtype=np.uint8)
    perm = FeistelPermutation.from_seed(5, n)

    def run() -> np.ndarray:
        out = np.full(n + 1, 7, np.uint8)
        permuted_prefix_parity(bits, perm, out)
        return out

    slow, fast = _both(run)
    assert slow[0] == 0 and np.array_equal(slow[1:], np.bitwise_xor.accumulate(bits[perm.array()]))
    assert np.array_equal(slow, fast)


def _lookup_cases() -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(0)
    values = np.unique(rng.integers(0, 10**9, 200_000))
    dense = np.sort(np.concatenate([values[::3], rng.integers(-5, 10**9 + 5, 100_000)]))
    return [
        (values, dense),  # sorted, half hits, duplicates, values off both ends
        (values, rng.permutation(dense)),  # unsorted
        (values, np.sort(rng.choice(values, 40))),  # sparse sorted: galloping
        (values, np.array([values[-1] + 1, values[0], values[0] - 1, values[-1]])),
        (values[:1], np.array([-1, values[0], values[0] + 1])),
        (values, np.empty(0, np.int64)),
        (np.empty(0, np.int64), np.array([1, 2, 3])),
    ]


@pytest.mark.parametrize("case", range(7))
def test_lookup_sorted_numba_equals_numpy(case: int, restore_mode: None) -> None:
    values, query = _lookup_cases()[case]
    (found_np, index_np), (found_nb, index_nb) = _both(lookup_sorted, values, query)
    assert np.array_equal(found_np, found_nb) and np.array_equal(index_np, index_nb)
    if values.size:
        assert np.array_equal(found_np, np.isin(query, values))
        assert np.array_equal(values[index_np[found_np]], query[found_np])


def test_cascade_gives_the_same_transcript_with_either_path(restore_mode: None) -> None:
    rng = np.random.default_rng(17)
    n = (1 << 17) + 5
    alice_key = rng.integers(0, 2, n, dtype=np.uint8)
    bob_key = alice_key ^ (rng.random(n) < 0.03).astype(np.uint8)

    def run() -> tuple[list[bytes], np.ndarray]:
        alice = CascadeResponder(alice_key)
        bob = CascadeSession(bob_key, 0.03, np.random.default_rng(1))
        seen: list[bytes] = []
        query = bob.start()
        while query is not None:
            reply = alice.receive(query)
            seen += [query.starts.tobytes(), query.ends.tobytes(), reply.parities.tobytes()]
            query = bob.receive(reply)
        return seen, bob.corrected_key

    (slow_msgs, slow_key), (fast_msgs, fast_key) = _both(run)
    assert np.array_equal(slow_key, alice_key)
    assert slow_msgs == fast_msgs and np.array_equal(slow_key, fast_key)


def _merge_cases() -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(3)
    photons = np.unique(rng.integers(0, 10**7, 300_000))
    dark0 = np.unique(np.concatenate([rng.integers(-0, 10**7, 500), photons[:: 997]]))
    dark1 = np.unique(np.concatenate([rng.integers(0, 10**7, 500), dark0[::7], [10**7 + 3]]))
    empty = np.empty(0, np.int64)
    return [
        (photons, dark0, dark1),  # darks on photon slots, on each other, past the last photon
        (photons, empty, empty),
        (empty, dark0, dark1),
        (photons[:1], np.array([0, photons[0], photons[0] + 1]), empty),
    ]


@pytest.mark.parametrize("case", range(4))
def test_merge_clicks_numba_equals_numpy(case: int, restore_mode: None) -> None:
    photons, dark0, dark1 = _merge_cases()[case]
    slow, fast = _both(kernels.merge_clicks, photons, dark0, dark1)
    relevant, photon_at, dark0_at, dark1_at = slow
    assert np.array_equal(relevant, np.union1d(photons, np.union1d(dark0, dark1)))
    assert np.array_equal(relevant[photon_at], photons)
    assert np.array_equal(relevant[dark0_at], dark0) and np.array_equal(relevant[dark1_at], dark1)
    assert all(np.array_equal(a, b) and a.dtype == b.dtype for a, b in zip(slow, fast, strict=True))


def test_click_kernels_numba_equal_numpy(restore_mode: None) -> None:
    rng = np.random.default_rng(4)
    size, count = 400_000, 300_000
    photon_at = np.sort(rng.choice(size, count, replace=False)).astype(np.int64)
    bases = rng.integers(0, 2, size, dtype=np.uint8)
    state_bases = rng.integers(0, 2, count, dtype=np.uint8)
    state_bits = rng.integers(0, 2, count, dtype=np.uint8)
    u = rng.random(count)
    slow_on, fast_on = _both(kernels.first_photon_on_one, bases, photon_at, state_bases, state_bits, u, 0.05)
    same = bases[photon_at] == state_bases
    assert np.array_equal(slow_on[same], state_bits[same] ^ (u[same] < 0.05))
    assert np.array_equal(slow_on[~same], u[~same] < 0.5)
    assert np.array_equal(slow_on, fast_on) and slow_on.dtype == fast_on.dtype == np.int32

    photons = rng.integers(1, 4, count).astype(np.uint16)
    on_one = np.minimum(slow_on + rng.integers(0, 3, count), photons).astype(np.int32)
    dark0_at = np.unique(rng.integers(0, size, 3000))
    dark1_at = np.unique(rng.integers(0, size, 3000))
    (slow_bits, slow_double), (fast_bits, fast_double) = _both(
        kernels.click_bits, size, photon_at, on_one, photons, dark0_at, dark1_at
    )
    fire0 = np.zeros(size, np.bool_)
    fire1 = np.zeros(size, np.bool_)
    fire0[photon_at], fire1[photon_at] = on_one < photons, on_one > 0
    fire0[dark0_at] = fire1[dark1_at] = True
    assert np.array_equal(slow_bits, fire1) and np.array_equal(slow_double, np.flatnonzero(fire0 & fire1))
    assert np.array_equal(slow_bits, fast_bits) and np.array_equal(slow_double, fast_double)
    assert slow_bits.dtype == fast_bits.dtype == np.uint8


def test_detect_gives_the_same_clicks_with_either_path(restore_mode: None) -> None:
    from qcinode.core.physics import LinkPhysics, PhotonFrame, detect, transmit

    phys = LinkPhysics(
        intensities=(0.6, 0.2, 0.0), class_probabilities=(0.7, 0.2, 0.1), z_basis_probability=0.9,
        fibre_transmittance=0.6, detector_efficiency=0.3, dark_count_probability=1e-4,
        misalignment_error=0.02,
    )
    frame, _ = transmit(phys, 3_000_000, np.random.default_rng(1), np.random.default_rng(2))
    frame = PhotonFrame.from_bytes(frame.to_bytes())

    def run() -> tuple[np.ndarray, ...]:
        clicks = detect(phys, frame, np.random.default_rng(3), np.random.default_rng(4))
        return clicks.slots, clicks.bases, clicks.bits

    slow, fast = _both(run)
    assert len(slow[0]) > kernels.NUMBA_MIN_SIZE
    assert all(np.array_equal(a, b) for a, b in zip(slow, fast, strict=True))


def _gap_cases() -> list[np.ndarray]:
    rng = np.random.default_rng(5)
    dense = np.unique(rng.integers(0, 10**7, 300_000))
    return [
        dense,  # every gap below 2**16
        np.concatenate([dense, [10**11]]),  # one wide gap
        np.concatenate([[0], dense]),  # first slot 0
        rng.integers(-(10**9), 10**9, 200_000),  # unsorted, negative gaps
        np.array([5]),
    ]


@pytest.mark.parametrize("case", range(5))
def test_gap_coding_numba_equals_numpy(case: int, restore_mode: None) -> None:
    values = _gap_cases()[case]
    gaps = np.diff(values, prepend=0)
    for mode in ("numpy", "numba"):
        kernels.set_mode(mode)
        low, high, held = kernels.gap_bounds(values)
        assert (low, high) == (gaps.min(), gaps.max())
        for width in ("<u2", "<u4", "<u8"):
            assert kernels.gap_bytes(values, held, width) == gaps.astype(width).tobytes()


def _slot_gap_cases() -> list[tuple[np.ndarray, int, str]]:
    rng = np.random.default_rng(6)
    slots = np.unique(rng.integers(0, 10**8, 300_000))
    gaps = np.diff(slots, prepend=0).astype("<u4")
    zero = gaps.copy()
    zero[1000] = 0
    wrap = np.concatenate([gaps.astype("<u8"), np.array([2**64 - 1, 5], "<u8")])
    late_zero = np.concatenate([gaps.astype("<u8"), np.array([10**9, 0], "<u8")])
    first_zero = np.minimum(gaps, 7).astype("<u2")
    first_zero[0] = 0
    return [
        (gaps, 10**8, ""),
        (gaps, int(slots[-1]), "outside"),  # the last slot is the frame size
        (gaps, int(slots[-1]) + 1, ""),
        (zero, 10**8, "unsorted"),
        (wrap, 10**8, "outside"),  # the running sum wraps past 2**64
        (late_zero, 10**8, "unsorted"),  # a zero gap after a slot outside: still unsorted
        (first_zero, 2**40, ""),  # slot 0 first
    ]


@pytest.mark.parametrize("case", range(7))
def test_slots_from_gaps_numba_equals_numpy(case: int, restore_mode: None) -> None:
    gaps, n_slots, problem = _slot_gap_cases()[case]
    (slow, slow_problem), (fast, fast_problem) = _both(kernels.slots_from_gaps, gaps, n_slots)
    assert slow_problem == fast_problem == problem
    if not problem:
        assert np.array_equal(slow, np.cumsum(gaps, dtype=np.int64)) and np.array_equal(slow, fast)


def test_emission_kernels_numba_equal_numpy(restore_mode: None) -> None:
    rng = np.random.default_rng(7)
    u = rng.random(300_000)
    u[:3] = [0.0, 0.7, 0.9]  # on the edges
    edges = np.array([0.7, 0.9])
    slow, fast = _both(kernels.categorical, u, edges)
    assert np.array_equal(slow, (u >= 0.7).astype(np.uint8) + (u >= 0.9)) and np.array_equal(slow, fast)
    assert slow.dtype == fast.dtype == np.uint8
    for classes in (slow, np.zeros(200_000, np.uint8), np.full(200_000, 2, np.uint8)):
        (order, bounds), (fast_order, fast_bounds) = _both(kernels.class_order, classes, 3)
        for c in range(3):
            assert np.array_equal(order[bounds[c] : bounds[c + 1]], np.flatnonzero(classes == c))
        assert np.array_equal(order, fast_order) and np.array_equal(bounds, fast_bounds)


def test_transmit_gives_the_same_frame_with_either_path(restore_mode: None) -> None:
    from qcinode.core.physics import LinkPhysics, transmit

    phys = LinkPhysics(
        intensities=(0.6, 0.2, 0.0), class_probabilities=(0.7, 0.2, 0.1), z_basis_probability=0.9,
        fibre_transmittance=0.6, detector_efficiency=0.3, dark_count_probability=1e-4,
        misalignment_error=0.02,
    )

    def run() -> bytes:
        frame, record = transmit(phys, 3_000_000, np.random.default_rng(1), np.random.default_rng(2))
        assert len(frame) > kernels.NUMBA_MIN_SIZE
        return frame.to_bytes() + record.classes.tobytes()

    slow, fast = _both(run)
    assert slow == fast


def test_stack_flips_like_the_numpy_path(restore_mode: None) -> None:
    n = (1 << 17) + 9
    rng = np.random.default_rng(8)
    stack = FeistelStack([FeistelPermutation.from_seed(s, n) for s in (11, 12, 13)])
    bits = np.unique(rng.integers(0, n, 300))
    key = rng.integers(0, 2, n, dtype=np.uint8)
    views = rng.integers(0, 2, 4 * n, dtype=np.uint8)
    leaf_of = (np.arange(4 * n) // 64 * 64).astype(np.int32)
    leaf_odd = rng.random(4 * n) < 0.5

    def run() -> tuple[np.ndarray, ...]:
        state = key.copy(), views.copy(), leaf_of.copy(), leaf_odd.copy()
        hit = stack.flip_everywhere(bits, *state)
        return (hit, *state)

    slow, fast = _both(run)
    assert all(np.array_equal(a, b) for a, b in zip(slow, fast, strict=True))
    hit, new_key, new_views, _, new_odd = slow
    places = [bits] + [(p + 1) * n + stack.inverse(np.full(bits.size, p), bits) for p in range(3)]
    flat = np.concatenate(places)
    assert np.array_equal(hit, leaf_of[flat]) and np.array_equal(np.flatnonzero(new_key != key), bits)
    assert np.array_equal(np.flatnonzero(new_views != views), np.sort(flat))
    toggles = np.bincount(hit, minlength=4 * n) % 2 == 1
    assert np.array_equal(new_odd, leaf_odd ^ toggles)


# --------------------------------------------------------------------------- mode, laziness, cache


def test_an_unknown_mode_is_a_config_error_naming_it(restore_mode: None) -> None:
    with pytest.raises(ConfigError, match=r"kernels: must be one of auto, numba, numpy, got 'fast'"):
        kernels.set_mode("fast")


def _run(code: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("QCINODE_KERNELS", "NUMBA_"))}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_small_blocks_never_import_numba_and_a_bad_environment_value_is_named() -> None:
    code = """
        import sys
        import numpy as np
        from qcinode.core.cascade import CascadeResponder, CascadeSession
        key = np.random.default_rng(0).integers(0, 2, 50_000, dtype=np.uint8)
        alice, bob = CascadeResponder(key), CascadeSession(key ^ 1, 0.02, np.random.default_rng(0))
        query = bob.start()
        while query is not None:
            query = bob.receive(alice.receive(query))
        assert "numba" not in sys.modules, "numba imported for a small block"
    """
    done = _run(code, {"QCINODE_KERNELS": "auto"})
    assert done.returncode == 0, done.stderr
    bad = _run(code, {"QCINODE_KERNELS": "fastest"})
    assert bad.returncode != 0
    assert "QCINODE_KERNELS: must be one of auto, numba, numpy, got 'fastest'" in bad.stderr


def test_whether_a_size_would_use_numba_is_told_without_importing_it() -> None:
    code = """
        import sys
        from qcinode.core import kernels
        n = kernels.NUMBA_MIN_SIZE
        assert (kernels.would_use_numba(n - 1), kernels.would_use_numba(n)) == (False, True)
        kernels.set_mode("numpy")
        assert not kernels.would_use_numba(10 * n)
        kernels.set_mode("numba")
        assert kernels.would_use_numba(1)
        assert "numba" not in sys.modules, "numba imported to answer"
        assert kernels.warm_up() and "numba" in sys.modules
    """
    done = _run(code, {"QCINODE_KERNELS": "auto"})
    assert done.returncode == 0, done.stderr


def test_a_blocks_sifted_size_counts_its_test_bits_beside_its_key_bits() -> None:
    from qcinode.core.pipeline import LinkProtocolConfig
    from tests.unit.test_pipeline import config

    cfg = config(block_bits=100_000)
    for p, expected in ((0.5, 200_000), (0.9, 100_000 * (0.81 + 0.01) / 0.81), (1.0, 100_000)):
        physics = dataclasses.replace(cfg.physics, z_basis_probability=p)
        sized = LinkProtocolConfig(link_id="l", physics=physics, block_bits=100_000)
        assert sized.sifted_block_bits == pytest.approx(expected, abs=1)


def test_kernels_cache_under_the_temporary_directory_when_no_default_place_is_writable(tmp_path: Path) -> None:
    # numba finds no usable cache location (only locators that decline), as
    # for a read-only install without a home directory: the kernels still
    # run, and cache their code under TMPDIR.
    code = """
        import numpy as np
        from qcinode.core import kernels
        kernels.set_mode("numba")
        perm = kernels.FeistelPermutation.from_seed(1, 1000)
        out = np.empty(1000, np.uint8)
        bits = np.arange(1000, dtype=np.uint8) & 1
        kernels.permuted_bits(bits, perm, out)
        assert np.array_equal(out, bits[perm.array()])
    """
    env = {"NUMBA_CACHE_LOCATOR_CLASSES": "IPythonCacheLocator,UserProvidedCacheLocator", "TMPDIR": str(tmp_path)}
    done = _run(code, env)
    assert done.returncode == 0, done.stderr
    cached = list(tmp_path.glob("qcinode-numba-*/**/*.nbi"))
    assert cached, f"no cache index under {tmp_path}: {list(tmp_path.rglob('*'))}"


def test_a_stack_maps_like_its_members() -> None:
    members = [FeistelPermutation.from_seed(seed, 3001) for seed in (1, 2, 3)]
    stack = FeistelStack(members)
    rng = np.random.default_rng(4)
    which, x = rng.integers(0, 3, 500), rng.integers(0, 3001, 500)
    expect = np.array([members[w].forward(np.array([v]))[0] for w, v in zip(which, x)])
    assert np.array_equal(stack.forward(which, x), expect)
    assert np.array_equal(stack.inverse(which, expect), x)
    with pytest.raises(ValueError, match="one size"):
        FeistelStack([members[0], FeistelPermutation.from_seed(1, 3000)])


@pytest.mark.parametrize("case", range(4))
def test_select_kept_numba_equals_numpy(case: int, restore_mode: None) -> None:
    rng = np.random.default_rng(case)
    size = [0, 1, 1000, 300_001][case]
    mask = (rng.random(size) < [0.5, 1.0, 0.0, 0.3][case]).view(np.uint8)
    columns = [rng.integers(0, 256, size).astype(np.uint8) for _ in range(3)]
    if case == 3:
        mask.setflags(write=False)  # as a received message's array
    numpy_path, numba_path = _both(kernels.select_kept, mask, *columns)
    keep = mask.astype(bool)
    for got_numpy, got_numba, column in zip(numpy_path, numba_path, columns):
        assert got_numpy.dtype == got_numba.dtype == np.uint8
        assert np.array_equal(got_numpy, column[keep]) and np.array_equal(got_numba, column[keep])


@pytest.mark.parametrize("case", range(4))
def test_compress_bytes_numba_equals_numpy(case: int, restore_mode: None) -> None:
    rng = np.random.default_rng(case)
    size = [0, 1, 1000, 300_001][case]
    mask = rng.random(size) < [0.5, 1.0, 0.0, 0.5][case]
    column = rng.integers(0, 256, size).astype(np.uint8)
    masks = [mask, mask.view(np.uint8)]
    for given in masks:
        numpy_path, numba_path = _both(kernels.compress_bytes, given, column)
        assert numpy_path.dtype == numba_path.dtype == np.uint8
        assert np.array_equal(numpy_path, column[mask]) and np.array_equal(numba_path, column[mask])


@pytest.mark.parametrize("rate", [1.0, 0.37, 1e-3, 1e-7])
def test_geometric_positions_numba_equals_numpy(rate: float, restore_mode: None) -> None:
    draws = np.random.default_rng(3).standard_exponential(200_003)
    draws[:3] = [0.0, 1e-300, 5.0]  # a zero gap draw, a denormal-size one, a plain one
    inverse = 1.0 / rate
    numpy_path, numba_path = _both(kernels.geometric_positions, draws, inverse, -1)
    expected = -1 + np.cumsum(np.floor(draws * inverse).astype(np.int64) + 1)
    assert numpy_path.dtype == numba_path.dtype == np.int64
    assert np.array_equal(numpy_path, expected) and np.array_equal(numba_path, expected)
    assert np.array_equal(_both(kernels.geometric_positions, draws[:0], inverse, 7)[1], np.empty(0, np.int64))
