"""The MAC-key reserve as immutable chunks, and its saves as blobs (qcinode.core.authentication, qcinode.node.runtime).

The rules checked: the chunked reserve hands out exactly the keys of the flat
definition (key i = bytes [32i, 32i+32) of bootstrap ‖ refills) under any
sequence of operations; its state round-trips inline and as blobs, and a
state saved before the chunks (one flat hex buffer) still loads; a chunk is
dropped once the cursor has passed its last byte, and then leaves the disk;
a save after a change of the pool alone writes no MAC-key blob.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest

from qcinode.core.authentication import AUTH_BLOB_PREFIX, KEY_BYTES, AuthKeyReserve
from qcinode.errors import InsufficientKeyMaterial, KeyNotFound, KeyStoreError, LocalProtocolError
from qcinode.keys.linkstore import DATABASE_FILE, LinkSave, LinkStore
from qcinode.node.runtime import LinkRuntime
from qcinode.topology import parse_topology


class _FlatReserve:
    """The reserve's definition, written the obvious way: one growing byte string and a cursor."""

    def __init__(self, bootstrap: bytes) -> None:
        self.stream = bytearray(bootstrap)
        self.cursor = 0
        self.staged: dict[int, bytes] = {}

    @property
    def available_keys(self) -> int:
        return len(self.stream) // KEY_BYTES - self.cursor

    def keys(self, first: int, n: int) -> list[bytes]:
        return [bytes(self.stream[KEY_BYTES * i : KEY_BYTES * (i + 1)]) for i in range(first, first + n)]


def _round_trip(reserve: AuthKeyReserve, inline: bool) -> AuthKeyReserve:
    """Through JSON, as a store would keep it."""
    state = json.loads(json.dumps(reserve.to_state(inline=inline)))
    blobs = None if inline else {name: reserve.blob(name) for name in reserve.blob_names()}
    return AuthKeyReserve.from_state(state, blobs)


def _apply(rng: np.random.Generator, reserve: AuthKeyReserve, flat: _FlatReserve, seq: list[int]) -> AuthKeyReserve:
    """One random operation on both; returns the reserve to go on with (it may be a restored one)."""
    op = rng.integers(0, 9)
    if op == 0:  # take
        n = int(rng.integers(0, 5))
        if n > flat.available_keys:
            with pytest.raises(InsufficientKeyMaterial):
                reserve.take(n)
        else:
            assert reserve.take(n) == flat.keys(flat.cursor, n)
            flat.cursor += n
    elif op == 1:  # refill, any length (a trailing partial key; sometimes nothing)
        data = rng.bytes(int(rng.choice([0, 1, 31, 32, 33, 64, 100])))
        reserve.refill(data)
        flat.stream += data
    elif op == 2:  # stage the refill of a new block
        data = rng.bytes(int(rng.choice([0, 32, 70])))
        reserve.stage(seq[0], data)
        flat.staged[seq[0]] = data
        seq[0] += 1
    elif op == 3:  # promote
        upto = int(rng.integers(0, seq[0] + 1))
        reserve.promote_before(upto)
        for s in sorted(s for s in flat.staged if s < upto):
            flat.stream += flat.staged.pop(s)
    elif op == 4:  # skip forward
        target = flat.cursor + int(rng.integers(0, 4))
        if target - flat.cursor > flat.available_keys:
            with pytest.raises(InsufficientKeyMaterial):
                reserve.skip_to(target)
        else:
            reserve.skip_to(target)
            flat.cursor = target
    elif op == 5:  # peek anywhere ahead
        first = flat.cursor + int(rng.integers(0, 3))
        n = int(rng.integers(0, 4))
        if first + n > flat.cursor + flat.available_keys:
            with pytest.raises(InsufficientKeyMaterial):
                reserve.peek(first, n)
        else:
            assert reserve.peek(first, n) == flat.keys(first, n)
    elif op == 6:  # try a change on a copy; keep it or not
        twin = reserve.copy()
        n = min(int(rng.integers(0, 3)), flat.available_keys)
        data = rng.bytes(int(rng.integers(0, 80)))
        twin.refill(data)
        got = twin.take(n)
        if rng.integers(0, 2):
            reserve.adopt(twin)
            assert got == flat.keys(flat.cursor, n)
            flat.stream += data
            flat.cursor += n
    elif op == 7:  # resynchronisation drops staged refills the peer lacks
        keep = {s for s in flat.staged if rng.integers(0, 2)}
        reserve.retain_staged(keep)
        flat.staged = {s: d for s, d in flat.staged.items() if s in keep}
    else:  # saved and restored, inline or as blobs
        reserve = _round_trip(reserve, inline=bool(rng.integers(0, 2)))
    assert reserve.cursor == flat.cursor and reserve.available_keys == flat.available_keys
    assert reserve.staged_block_seqs == tuple(sorted(flat.staged))
    return reserve


@pytest.mark.parametrize("seed", range(6))
def test_chunked_reserve_gives_the_keys_of_the_flat_definition(seed: int) -> None:
    rng = np.random.default_rng(seed)
    bootstrap = rng.bytes(int(rng.choice([0, 40, 96, 200])))
    reserve, flat, seq = AuthKeyReserve(bootstrap), _FlatReserve(bootstrap), [0]
    for _ in range(400):
        reserve = _apply(rng, reserve, flat, seq)
    # What is left, key by key, is still the definition's.
    assert reserve.take(flat.available_keys) == flat.keys(flat.cursor, flat.available_keys)


def test_chunks_wholly_used_are_dropped_and_a_key_may_span_two() -> None:
    rng = np.random.default_rng(1)
    boot, refill = rng.bytes(100), rng.bytes(60)  # key 3 = boot[96:100] + refill[:28]
    reserve = AuthKeyReserve(boot)
    reserve.refill(refill)
    assert reserve.blob_names() == {f"{AUTH_BLOB_PREFIX}0", f"{AUTH_BLOB_PREFIX}100"}
    reserve.take(3)
    assert f"{AUTH_BLOB_PREFIX}0" in reserve.blob_names()  # 4 bytes of it still unused: kept whole
    assert reserve.blob(f"{AUTH_BLOB_PREFIX}0") == boot
    assert reserve.take(1) == [boot[96:] + refill[:28]]
    assert reserve.blob_names() == {f"{AUTH_BLOB_PREFIX}100"}
    with pytest.raises(KeyNotFound) as caught:
        reserve.blob(f"{AUTH_BLOB_PREFIX}0")
    assert boot.hex()[:16] not in str(caught.value)
    reserve.take(1)  # bytes 128..160: the end of the refill
    assert reserve.blob_names() == set() and reserve.available_keys == 0
    reserve.refill(rng.bytes(32))
    assert reserve.blob_names() == {f"{AUTH_BLOB_PREFIX}160"}


def test_blob_state_holds_no_key_bytes_and_round_trips() -> None:
    rng = np.random.default_rng(2)
    reserve = AuthKeyReserve(rng.bytes(32 * 64))
    for _ in range(20):
        reserve.refill(rng.bytes(32 * 64))
    reserve.stage(4, rng.bytes(64))
    reserve.take(70)
    state = reserve.to_state(inline=False)
    text = json.dumps(state)
    assert len(text) < 1000  # offsets and numbers, not 40 kB of hex
    assert all(name.startswith(AUTH_BLOB_PREFIX) for name in reserve.blob_names())
    assert all(reserve.blob(name).hex()[:32] not in text for name in reserve.blob_names())
    for inline in (True, False):
        restored = _round_trip(reserve, inline)
        assert restored.to_state(inline=False) == state
        restored.promote_before(5)
        twin = reserve.copy()
        twin.promote_before(5)
        assert restored.take(restored.available_keys) == twin.take(twin.available_keys)


def test_a_state_saved_before_the_chunks_still_loads() -> None:
    rng = np.random.default_rng(3)
    stream, staged = rng.bytes(32 * 10 + 5), rng.bytes(64)
    # Version 1, as saved by the flat reserve: the bytes from the cursor on, staged refills by block.
    old = {"version": 1, "cursor": 3, "buffer": stream[96:].hex(), "staged": {"4": staged.hex()}, "promoted_before": 2}
    reserve = AuthKeyReserve.from_state(old)
    assert (reserve.cursor, reserve.available_keys, reserve.promoted_before) == (3, 7, 2)
    assert reserve.staged_block_seqs == (4,)
    assert reserve.peek(3, 2) == [stream[96:128], stream[128:160]]
    reserve.promote_before(5)
    assert reserve.take(9)[-2:] == [stream[320:325] + staged[:27], staged[27:59]]
    with pytest.raises(KeyStoreError):
        AuthKeyReserve.from_state({**old, "staged": {"-1": "00"}})
    # Saved again in the new form, it goes on from the same offsets.
    again = _round_trip(reserve, inline=False)
    assert again.cursor == 12 and again.available_keys == 0


def test_from_state_rejects_inconsistent_chunk_states() -> None:
    reserve = AuthKeyReserve(bytes(100))
    reserve.refill(bytes(60))
    good = reserve.to_state(inline=False)
    blobs = {name: reserve.blob(name) for name in reserve.blob_names()}
    assert AuthKeyReserve.from_state(good, blobs).available_keys == 5
    with pytest.raises(KeyStoreError, match="does not hold"):
        AuthKeyReserve.from_state(good)  # the blobs are missing
    for change in (
        {"chunks": [[0, "blob"], [96, "blob"]]},  # a gap / overlap
        {"end": 200},
        {"cursor": 6},  # beyond the end
        {"next_serial": -1},
        {"staged": [[1, 0, "zz"]]},
    ):
        with pytest.raises(KeyStoreError):
            AuthKeyReserve.from_state({**good, **change}, blobs)
    with pytest.raises(KeyStoreError, match="used"):
        reserve.take(4)  # the first chunk (bytes 0..100) is still partly unused
        stale = reserve.to_state(inline=False)
        stale["chunks"] = [[0, "blob"], *stale["chunks"]]  # a wholly used chunk must not be named
        AuthKeyReserve.from_state(stale, {**blobs, f"{AUTH_BLOB_PREFIX}0": bytes(100)})
    with pytest.raises(LocalProtocolError):
        reserve.refill("00")  # type: ignore[arg-type]


# -- the link's saves -----------------------------------------------------------

_TOPOLOGY = """
name: pair
nodes: [{name: alpha}, {name: beta}]
links: [{between: [alpha, beta], length_km: 10}]
"""


class _SpyStore:
    """A LinkStore that records which parts each save asked bytes of."""

    def __init__(self, store: LinkStore) -> None:
        self.store = store
        self.asked: list[set[str]] = []

    def save_many(self, saves: Sequence[LinkSave]) -> None:
        asked: list[set[str]] = [set() for _ in saves]

        def spy(blob: Callable[[str], bytes] | None, names: set[str]) -> Callable[[str], bytes]:
            assert blob is not None

            def asking(name: str) -> bytes:
                names.add(name)
                return blob(name)

            return asking

        self.store.save_many([dataclasses.replace(save, blob=spy(save.blob, names)) for save, names in zip(saves, asked, strict=True)])
        self.asked.extend(asked)


def _runtime(data_dir: Path, bootstrap: bytes) -> LinkRuntime:
    link = parse_topology(_TOPOLOGY).links_of("alpha")[0]
    return LinkRuntime(link, "alpha", bootstrap, LinkStore(data_dir, "alpha"))


def _auth_blob_rows(data_dir: Path) -> dict[str, bytes]:
    with contextlib.closing(sqlite3.connect(data_dir / DATABASE_FILE)) as conn:
        rows = conn.execute("SELECT name, nonce FROM link_blobs WHERE name LIKE ?", (AUTH_BLOB_PREFIX + "%",)).fetchall()
    return {str(name): bytes(nonce) for name, nonce in rows}


def test_a_link_saves_and_restores_its_reserve_as_blobs(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    boot = rng.bytes(32 * 8)
    rt = _runtime(tmp_path, boot)
    rt.pool.add_block(f"{rt.link_id}/0", rng.bytes(4096))
    for _ in range(3):
        rt.auth.refill(rng.bytes(32 * 4))
    rt.auth.stage(0, rng.bytes(64))
    rt.auth.take(5)
    rt.persist()
    assert set(_auth_blob_rows(tmp_path)) == rt.auth.blob_names()
    expected = rt.auth.copy()
    assert rt.store is not None
    rt.store.close()

    back = _runtime(tmp_path, b"another bootstrap, ignored: the saved reserve wins")
    assert back.auth.to_state() == expected.to_state()
    assert back.pool.available_bytes == rt.pool.available_bytes
    assert back.auth.take(back.auth.available_keys) == expected.take(expected.available_keys)
    # Every chunk is used up now: they left the disk in the save that passed them; the staged refill stays.
    back.persist()
    assert set(_auth_blob_rows(tmp_path)) == back.auth.blob_names() == {f"{AUTH_BLOB_PREFIX}staged/0"}
    assert back.store is not None
    back.store.close()


def test_a_relay_like_save_writes_no_mac_key_blob(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    rt = _runtime(tmp_path, rng.bytes(32 * 64))
    for _ in range(27):
        rt.auth.refill(rng.bytes(32 * 64))
    rt.pool.add_block(f"{rt.link_id}/0", rng.bytes(12_500))
    assert rt.store is not None
    spy = _SpyStore(rt.store)
    rt.store = spy  # type: ignore[assignment]
    rt.persist()
    assert {n for n in spy.asked[0] if n.startswith(AUTH_BLOB_PREFIX)} == rt.auth.blob_names()
    on_disk = _auth_blob_rows(tmp_path)

    rt.pool.commit(rt.pool.reserve(40))  # a relay hop's pad: the ledger changes, the MAC keys do not
    rt.persist()
    assert spy.asked[1] == set()
    assert _auth_blob_rows(tmp_path) == on_disk  # same rows, same nonces: nothing rewritten

    rt.auth.take(64)  # a whole refill's worth: the bootstrap chunk is used up
    rt.persist()
    assert spy.asked[2] == set()
    assert set(_auth_blob_rows(tmp_path)) == set(on_disk) - {f"{AUTH_BLOB_PREFIX}0"}
    spy.store.close()
