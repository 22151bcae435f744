"""Trusted-node relay: one-time-pad hops, header authentication, XOR shares, collector."""

from __future__ import annotations

import collections
import itertools
import random
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qcinode.core.relay.hop import (
    MAC_KEY_BYTES,
    MAX_KEY_BYTES,
    RelayHeader,
    ShareCollector,
    combine_shares,
    header_bytes,
    next_header,
    open_hop,
    pad_bytes_needed,
    seal_hop,
    split_shares,
    validate_header,
)
from qcinode.errors import AuthenticationFailed, LocalProtocolError, RemoteProtocolError


def _header(**changes: Any) -> RelayHeader:
    base = RelayHeader(
        relay_id="r-1",
        key_id="0f8c6a57-8d7e-4d0a-9c1b-2f5e6a7b8c9d",
        master_sae="alpha-app",
        slave_saes=("gamma-app",),
        source="alpha",
        destination="gamma",
        path=("alpha", "beta", "delta", "gamma"),
        hop_index=0,
        share_index=0,
        share_count=1,
        key_bytes=32,
    )
    return replace(base, **changes)


class _Pools:
    """Each link's pad stream, identical at both ends, each byte used once (simulated pools)."""

    def __init__(self, seed: int) -> None:
        self._rng = random.Random(seed)
        self.drawn: dict[tuple[str, str], list[bytes]] = collections.defaultdict(list)

    def take(self, sender: str, receiver: str, n: int) -> bytes:
        material = self._rng.randbytes(n)
        self.drawn[(sender, receiver)].append(material)
        return material


def _relay(header: RelayHeader, share: bytes, pools: _Pools) -> tuple[RelayHeader, bytes]:
    """Carry one share hop by hop to the destination; returns (last header, share there)."""
    n = pad_bytes_needed(header.key_bytes)
    current = header
    while True:
        sender, receiver = current.path[current.hop_index], current.path[current.hop_index + 1]
        pad = pools.take(sender, receiver, n)
        ciphertext, tag = seal_hop(current, share, pad)
        assert ciphertext != share  # (with overwhelming probability)
        # The receiver: check, then open with the same link-key bytes.
        validate_header(current, receiver, sender)
        share = open_hop(current, ciphertext, tag, pad)
        if receiver == current.destination:
            return current, share
        current = next_header(current)


# -- one hop and a whole path --------------------------------------------------------


def test_pad_bytes_needed() -> None:
    assert MAC_KEY_BYTES == 32
    assert pad_bytes_needed(32) == 64
    assert pad_bytes_needed(0) == 32
    with pytest.raises(LocalProtocolError):
        pad_bytes_needed(-1)


def test_multi_hop_round_trip_with_independent_pads() -> None:
    key = random.Random(1).randbytes(32)
    pools = _Pools(2)
    last, received = _relay(_header(), key, pools)
    assert received == key
    assert last.hop_index == 2
    assert list(pools.drawn) == [("alpha", "beta"), ("beta", "delta"), ("delta", "gamma")]
    pads = [chunks[0] for chunks in pools.drawn.values()]
    assert len(set(pads)) == 3 and all(len(p) == 64 for p in pads)


def test_split_key_over_disjoint_paths_reassembles_at_the_destination() -> None:
    rng = random.Random(3)
    key = rng.randbytes(64)
    paths = [("alpha", "beta", "gamma"), ("alpha", "delta", "gamma"), ("alpha", "gamma")]
    shares = split_shares(key, 3, rng.randbytes)
    pools = _Pools(4)
    collector = ShareCollector()
    results = []
    for index in (2, 0, 1):
        header = _header(path=paths[index], share_index=index, share_count=3, key_bytes=64)
        last, share = _relay(header, shares[index], pools)
        results.append(collector.add(last, share, now=10.0 + index))
    assert results[:2] == [None, None]
    assert results[2] == key
    assert collector.pending == ()


@settings(max_examples=200, deadline=None)
@given(share=st.binary(min_size=1, max_size=64), seed=st.integers(0, 2**32))
def test_ciphertext_xor_pad_is_the_share(share: bytes, seed: int) -> None:
    header = _header(key_bytes=len(share))
    material = random.Random(seed).randbytes(pad_bytes_needed(len(share)))
    ciphertext, tag = seal_hop(header, share, material)
    pad = material[MAC_KEY_BYTES:]
    assert bytes(c ^ p for c, p in zip(ciphertext, pad)) == share
    assert len(ciphertext) == len(share) and len(tag) == 16
    assert open_hop(header, ciphertext, tag, material) == share


def test_ciphertext_is_independent_of_the_key() -> None:
    """Same key, fresh pads: ciphertexts are uniform, and so for any other key."""
    header = _header(key_bytes=1)
    rng = random.Random(5)
    n = 256 * 64
    counts = {}
    for key in (b"\x00", b"\xa5"):
        seen = collections.Counter(
            seal_hop(header, key, rng.randbytes(pad_bytes_needed(1)))[0] for _ in range(n)
        )
        assert len(seen) == 256
        chi2 = sum((c - n / 256) ** 2 / (n / 256) for c in seen.values())
        assert chi2 < 400  # 255 degrees of freedom: mean 255, sd 22.6
        counts[key] = seen
    # Exactly: over all 256 pads, each key yields each ciphertext once.
    mac_key = bytes(MAC_KEY_BYTES)
    for key in (b"\x00", b"\xa5"):
        assert sorted(seal_hop(header, key, mac_key + bytes([p]))[0] for p in range(256)) == [
            bytes([c]) for c in range(256)
        ]


# -- authentication ------------------------------------------------------------------


def _sealed(key_bytes: int = 16, seed: int = 9) -> tuple[RelayHeader, bytes, bytes, bytes, bytes]:
    rng = random.Random(seed)
    header = _header(key_bytes=key_bytes)
    share = rng.randbytes(key_bytes)
    material = rng.randbytes(pad_bytes_needed(key_bytes))
    ciphertext, tag = seal_hop(header, share, material)
    return header, share, material, ciphertext, tag


def _flip(data: bytes, bit: int) -> bytes:
    out = bytearray(data)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


def test_every_ciphertext_and_tag_bit_is_authenticated() -> None:
    header, _, material, ciphertext, tag = _sealed()
    for bit in range(len(ciphertext) * 8):
        with pytest.raises(AuthenticationFailed):
            open_hop(header, _flip(ciphertext, bit), tag, material)
    for bit in range(len(tag) * 8):
        with pytest.raises(AuthenticationFailed):
            open_hop(header, ciphertext, _flip(tag, bit), material)
    with pytest.raises(AuthenticationFailed):
        open_hop(header, ciphertext, tag[:-1], material)


@pytest.mark.parametrize(
    "changes",
    [
        {"relay_id": "r-2"},
        {"key_id": "0f8c6a57-8d7e-4d0a-9c1b-2f5e6a7b8c9e"},
        {"master_sae": "alpha-ap"},
        {"slave_saes": ("gamma-app", "other-app")},
        {"slave_saes": ("gamma-apq",)},
        {"source": "alphb", "path": ("alphb", "beta", "delta", "gamma")},
        {"path": ("alpha", "delta", "beta", "gamma")},
        {"hop_index": 1},
        {"share_index": 1, "share_count": 2},
        {"share_count": 2},
    ],
)
def test_a_changed_header_fails_authentication(changes: dict[str, Any]) -> None:
    header, _, material, ciphertext, tag = _sealed()
    with pytest.raises(AuthenticationFailed):
        open_hop(replace(header, **changes), ciphertext, tag, material)


@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_any_flipped_bit_fails(data: st.DataObject) -> None:
    header, _, material, ciphertext, tag = _sealed(seed=data.draw(st.integers(0, 1000)))
    which = data.draw(st.sampled_from(["ciphertext", "tag", "mac_key"]))
    if which == "ciphertext":
        ciphertext = _flip(ciphertext, data.draw(st.integers(0, len(ciphertext) * 8 - 1)))
    elif which == "tag":
        tag = _flip(tag, data.draw(st.integers(0, len(tag) * 8 - 1)))
    else:
        # Only the s half of the Poly1305 key: r is clamped, so 22 of its bits do not count.
        material = _flip(material, data.draw(st.integers(128, MAC_KEY_BYTES * 8 - 1)))
    with pytest.raises(AuthenticationFailed):
        open_hop(header, ciphertext, tag, material)


def test_a_wrong_pad_gives_a_wrong_share_but_a_wrong_mac_key_fails() -> None:
    header, share, material, ciphertext, tag = _sealed()
    other_pad = material[:MAC_KEY_BYTES] + bytes(len(share))
    # The pad is not authenticated material: both ends must take the same
    # ranges (the pool ledger's job); only the MAC key is checked here.
    assert open_hop(header, ciphertext, tag, other_pad) != share


_names = st.text(alphabet="ab\x00é", max_size=3)
_headers = st.builds(
    RelayHeader,
    relay_id=_names,
    key_id=_names,
    master_sae=_names,
    slave_saes=st.lists(_names, max_size=3).map(tuple),
    source=_names,
    destination=_names,
    path=st.lists(_names, max_size=3).map(tuple),
    hop_index=st.integers(0, 2),
    share_index=st.integers(0, 2),
    share_count=st.integers(0, 2),
    key_bytes=st.integers(0, 2),
)


@settings(max_examples=300, deadline=None)
@given(_headers, _headers)
def test_header_encoding_is_injective(a: RelayHeader, b: RelayHeader) -> None:
    assert (header_bytes(a) == header_bytes(b)) == (a == b)


@settings(max_examples=200, deadline=None)
@given(_headers, _headers, st.binary(max_size=4), st.binary(max_size=4))
def test_header_and_ciphertext_are_bound_unambiguously(
    a: RelayHeader, b: RelayHeader, ca: bytes, cb: bytes
) -> None:
    assert (header_bytes(a) + ca == header_bytes(b) + cb) == (a == b and ca == cb)


def test_header_encoding_separates_fields() -> None:
    assert header_bytes(_header(relay_id="ab", key_id="c")) != header_bytes(_header(relay_id="a", key_id="bc"))
    assert header_bytes(_header(slave_saes=("a", "b"))) != header_bytes(_header(slave_saes=("ab",)))
    with pytest.raises(LocalProtocolError):
        header_bytes(_header(hop_index=-1))
    with pytest.raises(LocalProtocolError):
        header_bytes(_header(relay_id=None))
    with pytest.raises(LocalProtocolError):
        header_bytes(_header(key_id="\udc80"))


def test_wrong_lengths() -> None:
    header, share, material, ciphertext, tag = _sealed(key_bytes=16)
    with pytest.raises(LocalProtocolError):
        seal_hop(header, share, material[:-1])
    with pytest.raises(LocalProtocolError):
        seal_hop(header, share + b"\x00", material + b"\x00")  # share longer than key_bytes
    with pytest.raises(LocalProtocolError):
        seal_hop(header, share, material + b"\x00")
    with pytest.raises(LocalProtocolError):
        seal_hop(header, "text", material)  # type: ignore[arg-type]
    with pytest.raises(LocalProtocolError):
        open_hop(header, ciphertext, tag, material[:-1])
    with pytest.raises(RemoteProtocolError):
        open_hop(header, ciphertext[:-1], tag, material)
    with pytest.raises(RemoteProtocolError):
        open_hop(header, ciphertext + b"\x00", tag, material)


# -- headers -------------------------------------------------------------------------


def test_next_header_walks_the_path_and_stops_at_the_destination() -> None:
    header = _header()
    assert next_header(header) == replace(header, hop_index=1)
    assert next_header(next_header(header)).hop_index == 2
    with pytest.raises(LocalProtocolError):
        next_header(_header(hop_index=2))
    with pytest.raises(LocalProtocolError):
        next_header(_header(hop_index=3))
    with pytest.raises(LocalProtocolError):
        next_header(_header(path=("alpha", "gamma")))


def test_valid_headers_pass() -> None:
    validate_header(_header(), "beta", "alpha")
    validate_header(_header(hop_index=1), "delta", "beta")
    validate_header(_header(hop_index=2), "gamma", "delta")
    validate_header(_header(path=("alpha", "gamma")), "gamma", "alpha")
    validate_header(_header(share_index=7, share_count=8, key_bytes=MAX_KEY_BYTES), "beta", "alpha")
    validate_header(_header(slave_saes=("gamma-app", "gamma-2")), "beta", "alpha")


@pytest.mark.parametrize(
    ("changes", "local", "previous"),
    [
        ({}, "delta", "alpha"),  # not addressed to us
        ({}, "beta", "delta"),  # not from the node before us on the path
        ({"hop_index": 1}, "beta", "alpha"),
        ({"hop_index": 3}, "gamma", "delta"),  # past the destination
        ({"hop_index": -1}, "alpha", "gamma"),
        ({"hop_index": True}, "delta", "beta"),
        ({"path": ("beta", "delta", "gamma")}, "delta", "beta"),  # does not start at the source
        ({"path": ("alpha", "beta", "delta")}, "beta", "alpha"),  # does not end at the destination
        ({"path": ("alpha", "beta", "alpha", "gamma")}, "beta", "alpha"),  # repeats a node
        ({"path": ("alpha",)}, "alpha", "alpha"),
        ({"path": ["alpha", "beta", "delta", "gamma"]}, "beta", "alpha"),  # not a tuple
        ({"path": ("alpha", "", "gamma")}, "", "alpha"),
        ({"path": ("alpha",) + tuple(f"n{i}" for i in range(70)) + ("gamma",)}, "n0", "alpha"),
        ({"source": "gamma", "path": ("gamma", "beta", "delta", "gamma")}, "beta", "gamma"),
        ({"share_index": 1}, "beta", "alpha"),  # share_index >= share_count
        ({"share_index": -1}, "beta", "alpha"),
        ({"share_index": 8, "share_count": 9}, "beta", "alpha"),
        ({"share_count": 0}, "beta", "alpha"),
        ({"key_bytes": 0}, "beta", "alpha"),
        ({"key_bytes": MAX_KEY_BYTES + 1}, "beta", "alpha"),
        ({"key_bytes": 32.0}, "beta", "alpha"),
        ({"relay_id": ""}, "beta", "alpha"),
        ({"key_id": None}, "beta", "alpha"),
        ({"key_id": "\udc80"}, "beta", "alpha"),
        ({"master_sae": "x" * 1000}, "beta", "alpha"),
        ({"slave_saes": ()}, "beta", "alpha"),
        ({"slave_saes": ("a", "a")}, "beta", "alpha"),
        ({"slave_saes": ["gamma-app"]}, "beta", "alpha"),
        ({"slave_saes": ("",)}, "beta", "alpha"),
    ],
)
def test_invalid_headers_are_rejected(changes: dict[str, Any], local: str, previous: str) -> None:
    with pytest.raises(RemoteProtocolError):
        validate_header(_header(**changes), local, previous)


def test_validate_rejects_a_non_header() -> None:
    with pytest.raises(RemoteProtocolError):
        validate_header({"relay_id": "r"}, "beta", "alpha")  # type: ignore[arg-type]


# -- secret sharing ------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(key=st.binary(max_size=64), count=st.integers(1, 8), seed=st.integers(0, 2**32))
def test_split_and_combine(key: bytes, count: int, seed: int) -> None:
    shares = split_shares(key, count, random.Random(seed).randbytes)
    assert len(shares) == count
    assert all(len(s) == len(key) for s in shares)
    assert combine_shares(shares) == key
    assert combine_shares(list(reversed(shares))) == key
    if count == 1:
        assert shares == [key]


def _exhaustive_splits(key: bytes, count: int) -> list[list[bytes]]:
    """Every split of a 1-byte key: random_bytes runs over all 256^(count-1) inputs."""
    splits = []
    for randoms in itertools.product(range(256), repeat=count - 1):
        feed = iter(bytes([r]) for r in randoms)
        splits.append(split_shares(key, count, lambda n: next(feed)))  # noqa: B023 - used before the next iteration
    return splits


@pytest.mark.parametrize("count", [2, 3])
def test_every_strict_subset_of_shares_is_exactly_uniform(count: int) -> None:
    for key in (b"\x00", b"\x5a")[: 4 - count]:
        splits = _exhaustive_splits(key, count)
        for size in range(1, count):
            for subset in itertools.combinations(range(count), size):
                seen = collections.Counter(tuple(s[i] for i in subset) for s in splits)
                # Each value of the subset's shares occurs equally often: they
                # are uniform, whatever the key.
                assert len(seen) == 256**size
                assert set(seen.values()) == {256 ** (count - 1 - size)}


@pytest.mark.parametrize("count", [4, 8])
def test_strict_subsets_look_uniform_statistically(count: int) -> None:
    rng = random.Random(count)
    n = 256 * 24
    for key in (b"\x00", b"\xff"):
        splits = [split_shares(key, count, rng.randbytes) for _ in range(n)]
        subsets = [s for size in range(1, count) for s in itertools.combinations(range(count), size)]
        for subset in rng.sample(subsets, 10) + [tuple(range(count - 1)), tuple(range(1, count))]:
            # Any linear leak of the key would show in the XOR of the subset.
            seen = collections.Counter(combine_shares([s[i] for i in subset]) for s in splits)
            chi2 = sum((seen.get(bytes([v]), 0) - n / 256) ** 2 / (n / 256) for v in range(256))
            assert chi2 < 400, subset
        # ... while all the shares together always give the key.
        assert {combine_shares(s) for s in splits} == {key}


def test_split_and_combine_errors() -> None:
    with pytest.raises(LocalProtocolError):
        split_shares(b"k", 0, random.Random(0).randbytes)
    with pytest.raises(LocalProtocolError):
        split_shares(b"k", 9, random.Random(0).randbytes)
    with pytest.raises(LocalProtocolError):
        split_shares(b"key", 2, lambda n: b"\x00")
    with pytest.raises(LocalProtocolError):
        combine_shares([])
    with pytest.raises(LocalProtocolError):
        combine_shares([b"ab", b"a"])


# -- collector -----------------------------------------------------------------------


def _final(share_index: int, share_count: int, **changes: Any) -> RelayHeader:
    path = (("alpha", "beta", "gamma"), ("alpha", "delta", "gamma"), ("alpha", "gamma"))[share_index % 3]
    return _header(
        path=path,
        hop_index=len(path) - 2,
        share_index=share_index,
        share_count=share_count,
        key_bytes=8,
        **changes,
    )


@settings(max_examples=100, deadline=None)
@given(count=st.integers(1, 8), seed=st.integers(0, 2**32), data=st.data())
def test_collector_completes_in_any_order(count: int, seed: int, data: st.DataObject) -> None:
    rng = random.Random(seed)
    key = rng.randbytes(8)
    shares = split_shares(key, count, rng.randbytes)
    order = data.draw(st.permutations(range(count)))
    collector = ShareCollector()
    for step, index in enumerate(order):
        result = collector.add(_final(index, count), shares[index], now=1.0)
        assert result == (key if step == count - 1 else None)
    assert collector.pending == ()


def test_collector_rejects_duplicates_and_inconsistent_shares() -> None:
    collector = ShareCollector()
    shares = split_shares(b"12345678", 3, random.Random(0).randbytes)
    assert collector.add(_final(0, 3), shares[0], now=0.0) is None
    with pytest.raises(RemoteProtocolError):
        collector.add(_final(0, 3), shares[0], now=0.0)
    for changes in ({"relay_id": "r-2"}, {"master_sae": "m"}, {"slave_saes": ("x",)}, {"source": "zeta"}):
        bad = _final(1, 3, **changes)
        if "source" in changes:
            bad = replace(bad, path=("zeta",) + bad.path[1:])
        with pytest.raises(RemoteProtocolError):
            collector.add(bad, shares[1], now=0.0)
    with pytest.raises(RemoteProtocolError):
        collector.add(_final(1, 4), shares[1], now=0.0)
    with pytest.raises(RemoteProtocolError):
        collector.add(_final(1, 3), shares[1] + b"\x00", now=0.0)
    with pytest.raises(RemoteProtocolError):
        collector.add(replace(_final(1, 3), hop_index=0), shares[1], now=0.0)  # not at the destination
    with pytest.raises(RemoteProtocolError):
        collector.add(_final(3, 3), shares[1], now=0.0)
    # Nothing above changed the pending key.
    assert collector.add(_final(1, 3), shares[1], now=0.0) is None
    assert collector.add(_final(2, 3), shares[2], now=0.0) == b"12345678"
    # A late duplicate of a completed key is refused, not collected again.
    with pytest.raises(RemoteProtocolError):
        collector.add(_final(2, 3), shares[2], now=1.0)


def test_collector_expires_incomplete_keys() -> None:
    collector = ShareCollector(ttl_s=30.0)
    shares = split_shares(b"abcdefgh", 2, random.Random(1).randbytes)
    assert collector.add(_final(0, 2), shares[0], now=100.0) is None
    assert collector.add(_final(0, 2, key_id="other"), shares[0], now=120.0) is None
    assert set(collector.pending) == {"0f8c6a57-8d7e-4d0a-9c1b-2f5e6a7b8c9d", "other"}
    assert collector.expire(130.0) == []
    assert collector.expire(130.5) == ["0f8c6a57-8d7e-4d0a-9c1b-2f5e6a7b8c9d"]
    assert collector.pending == ("other",)
    # The late second share starts afresh and can only wait for its partner.
    assert collector.add(_final(1, 2), shares[1], now=131.0) is None
    assert collector.add(_final(1, 2, key_id="other"), shares[1], now=131.0) == b"abcdefgh"
    # Completed IDs are remembered for ttl_s, then forgotten.
    with pytest.raises(RemoteProtocolError):
        collector.add(_final(0, 2, key_id="other"), shares[0], now=140.0)
    assert collector.expire(200.0) == ["0f8c6a57-8d7e-4d0a-9c1b-2f5e6a7b8c9d"]
    assert collector.add(_final(0, 2, key_id="other"), shares[0], now=201.0) is None


def test_collector_single_share_and_bad_arguments() -> None:
    collector = ShareCollector()
    assert collector.add(_final(0, 1), b"abcdefgh", now=0.0) == b"abcdefgh"
    with pytest.raises(LocalProtocolError):
        ShareCollector(ttl_s=0)
    with pytest.raises(LocalProtocolError):
        collector.add(_final(0, 1, key_id="k2"), b"abcdefgh", now=float("nan"))
    assert "abcdefgh" not in repr(collector)
