"""The durable link-state store: round trip, encryption at rest, tamper and crash safety, storage faults.

These tests touch the filesystem (``tmp_path``): the store is a file.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import select
import shutil
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qcinode.core.authentication import AuthKeyReserve
from qcinode.core.pool import KeyRange, LinkKeyPool
from qcinode.core.roles import Role
from qcinode.errors import KeyStoreError, LocalProtocolError
from qcinode.keys._sqlite import probe_data_dir, sqlite_error
from qcinode.keys.linkstore import DATABASE_FILE, KEY_FILE, LinkSave, LinkStore, StorageFailure, StorageKey

LINK = "alpha-beta"


def _random_bytes(seed: int, n: int) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


def _realistic(seed: int = 1) -> tuple[LinkKeyPool, AuthKeyReserve, dict[str, Any], bytes]:
    """A used pool and MAC reserve, their state, and one block's bytes."""
    pool = LinkKeyPool(LINK, Role.ALICE)
    blocks = {f"{LINK}/{i}": _random_bytes(seed * 100 + i, size) for i, size in enumerate((4096, 2048, 64))}
    for block_id, data in blocks.items():
        pool.add_block(block_id, data)
    pool.commit(pool.reserve(1500))  # spans blocks 0 and 1 of our half
    pool.release(pool.reserve(100))
    pool.consume_ranges([KeyRange(f"{LINK}/0", 2048, 300), KeyRange(f"{LINK}/2", 32, 32)], Role.BOB)
    pool.consume_ranges([KeyRange(f"{LINK}/1", 1024, 1024)], Role.BOB)
    reserve = AuthKeyReserve(_random_bytes(seed * 100 + 50, 32 * 10))
    reserve.take(3)
    reserve.refill(_random_bytes(seed * 100 + 51, 100))
    state = {"pool": pool.to_state(), "auth": reserve.to_state(), "next_block_seq": 7, "next_frame_id": 3}
    return pool, reserve, state, blocks[f"{LINK}/0"]


def _raw_files(data_dir: Path) -> bytes:
    return b"".join(p.read_bytes() for p in data_dir.iterdir() if p.name.startswith(DATABASE_FILE))


def _rows(data_dir: Path) -> dict[str, tuple[bytes, bytes]]:
    with contextlib.closing(sqlite3.connect(data_dir / DATABASE_FILE)) as conn:
        return {r[0]: (r[1], r[2]) for r in conn.execute("SELECT link_id, nonce, ciphertext FROM links")}


def _set_row(data_dir: Path, link_id: str, nonce: bytes, ciphertext: bytes) -> None:
    with contextlib.closing(sqlite3.connect(data_dir / DATABASE_FILE)) as conn, conn:
        conn.execute("UPDATE links SET nonce = ?, ciphertext = ? WHERE link_id = ?", (nonce, ciphertext, link_id))


# -- round trip --------------------------------------------------------------


def test_realistic_state_round_trips_through_a_reopened_store(tmp_path: Path) -> None:
    pool, reserve, state, _ = _realistic()
    with LinkStore(tmp_path, "alpha") as store:
        store.save(LINK, state)

    with LinkStore(tmp_path, "alpha") as reopened:
        loaded = reopened.load(LINK)
        assert reopened.load("alpha-gamma") is None
    assert loaded == state
    assert loaded is not None

    restored_pool = LinkKeyPool.from_state(loaded["pool"])
    restored_auth = AuthKeyReserve.from_state(loaded["auth"])
    assert restored_pool.audit() == pool.audit()
    assert restored_pool.available_bytes == pool.available_bytes
    assert restored_pool.peer_available_bytes == pool.peer_available_bytes
    assert restored_pool.block_ids == pool.block_ids
    assert restored_auth.cursor == reserve.cursor
    assert restored_auth.available_keys == reserve.available_keys
    # Both continue identically: same next pad, same next MAC keys.
    assert restored_pool.commit(restored_pool.reserve(200)) == pool.commit(pool.reserve(200))
    assert restored_auth.take(2) == reserve.take(2)
    assert (loaded["next_block_seq"], loaded["next_frame_id"]) == (7, 3)


def test_save_replaces_only_that_link(tmp_path: Path) -> None:
    with LinkStore(tmp_path, "alpha") as store:
        store.save("a", {"v": 1})
        store.save("b", {"v": 1})
        store.save("a", {"v": 2})
        assert store.load("a") == {"v": 2}
        assert store.load("b") == {"v": 1}


_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63) | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4),
    max_leaves=20,
)


def test_any_json_object_round_trips(tmp_path: Path) -> None:
    with LinkStore(tmp_path, "nöde") as store:

        @settings(max_examples=40, deadline=None)
        @given(state=st.dictionaries(st.text(), _json, max_size=5), link_id=st.text(min_size=1, max_size=20))
        def round_trip(state: dict[str, Any], link_id: str) -> None:
            store.save(link_id, state)
            assert store.load(link_id) == state

        round_trip()


def test_bad_arguments_are_refused(tmp_path: Path) -> None:
    with LinkStore(tmp_path, "alpha") as store:
        with pytest.raises(LocalProtocolError, match="not JSON-able"):
            store.save(LINK, {"key": b"\x00"})
        with pytest.raises(LocalProtocolError, match="not JSON-able"):
            store.save(LINK, {"qber": float("nan")})
        with pytest.raises(LocalProtocolError, match="link_id"):
            store.save("", {})
        assert store.load(LINK) is None
    with pytest.raises(KeyStoreError, match="closed"):
        store.load(LINK)
    store.close()  # idempotent


# -- encryption at rest --------------------------------------------------------


def test_key_file_is_private_reused_and_key_bytes_never_reach_disk(tmp_path: Path) -> None:
    _, _, state, block = _realistic()
    with LinkStore(tmp_path, "alpha") as store:
        store.save(LINK, state)
        # While open, with the write-ahead log still present.
        raw_open = _raw_files(tmp_path)
    key_path = tmp_path / KEY_FILE
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    key = key_path.read_bytes()
    assert len(key) == 32
    with LinkStore(tmp_path, "alpha") as store:
        assert store.load(LINK) == state
    assert key_path.read_bytes() == key
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(KEY_FILE) or ".tmp" in p.name) == [KEY_FILE]

    raw = raw_open + _raw_files(tmp_path)
    needles = [block, block[:16], block[2048:2064], block.hex().encode(), block.hex().upper().encode(),
               block[:16].hex().encode(), key, key.hex().encode()]
    for needle in needles:
        assert needle not in raw
    assert repr(StorageKey.load_or_create(tmp_path)).count(key.hex()) == 0


def test_storage_key_of_wrong_length_is_refused(tmp_path: Path) -> None:
    (tmp_path / KEY_FILE).write_bytes(b"short")
    with pytest.raises(KeyStoreError, match=f"{KEY_FILE}.*32 bytes"):
        LinkStore(tmp_path, "alpha")


def test_missing_storage_key_with_saved_links_is_refused_not_replaced(tmp_path: Path) -> None:
    with LinkStore(tmp_path, "alpha") as store:
        store.save(LINK, {"v": 1})
    (tmp_path / KEY_FILE).unlink()
    with pytest.raises(KeyStoreError, match="missing"):
        LinkStore(tmp_path, "alpha")
    assert not (tmp_path / KEY_FILE).exists()


# -- tampering -------------------------------------------------------------


@pytest.mark.parametrize("column", ["nonce", "ciphertext"])
def test_tampered_row_is_refused(tmp_path: Path, column: str) -> None:
    _, _, state, block = _realistic()
    with LinkStore(tmp_path, "alpha") as store:
        store.save(LINK, state)
    nonce, ciphertext = _rows(tmp_path)[LINK]
    if column == "nonce":
        nonce = bytes([nonce[0] ^ 1]) + nonce[1:]
    else:
        middle = len(ciphertext) // 2
        ciphertext = ciphertext[:middle] + bytes([ciphertext[middle] ^ 0x80]) + ciphertext[middle + 1 :]
    _set_row(tmp_path, LINK, nonce, ciphertext)
    with LinkStore(tmp_path, "alpha") as store, pytest.raises(KeyStoreError) as info:
        store.load(LINK)
    message = str(info.value)
    assert LINK in message and str(tmp_path / DATABASE_FILE) in message
    assert block.hex()[:32] not in message


def test_rows_swapped_between_links_are_refused(tmp_path: Path) -> None:
    with LinkStore(tmp_path, "alpha") as store:
        store.save("alpha-beta", {"pad": "00" * 64})
        store.save("alpha-gamma", {"pad": "ff" * 64})
    rows = _rows(tmp_path)
    _set_row(tmp_path, "alpha-beta", *rows["alpha-gamma"])
    _set_row(tmp_path, "alpha-gamma", *rows["alpha-beta"])
    with LinkStore(tmp_path, "alpha") as store:
        for link_id in ("alpha-beta", "alpha-gamma"):
            with pytest.raises(KeyStoreError, match=f"link '{link_id}'.*failed authentication"):
                store.load(link_id)


def test_another_nodes_key_or_name_is_refused(tmp_path: Path) -> None:
    ours, theirs = tmp_path / "alpha", tmp_path / "beta"
    with LinkStore(ours, "alpha") as store:
        store.save(LINK, {"v": 1})
    LinkStore(theirs, "alpha").close()  # its own, different storage key
    assert (ours / KEY_FILE).read_bytes() != (theirs / KEY_FILE).read_bytes()
    shutil.copyfile(ours / DATABASE_FILE, theirs / DATABASE_FILE)
    with LinkStore(theirs, "alpha") as store, pytest.raises(KeyStoreError, match="storage key"):
        store.load(LINK)
    # Same key file, but the rows were written for node "alpha".
    with LinkStore(ours, "beta") as store, pytest.raises(KeyStoreError, match="failed authentication"):
        store.load(LINK)


def test_corrupt_database_is_refused(tmp_path: Path) -> None:
    (tmp_path / DATABASE_FILE).write_bytes(_random_bytes(7, 8192))
    with pytest.raises(KeyStoreError, match=DATABASE_FILE):
        LinkStore(tmp_path, "alpha")


def test_database_damaged_in_place_is_refused(tmp_path: Path) -> None:
    with LinkStore(tmp_path, "alpha") as store:
        store.save(LINK, {"pad": _random_bytes(3, 40_000).hex()})
    path = tmp_path / DATABASE_FILE
    raw = bytearray(path.read_bytes())
    start = len(raw) // 2  # inside the row's overflow pages
    raw[start : start + 4096] = _random_bytes(4, 4096)
    path.write_bytes(bytes(raw))
    with pytest.raises(KeyStoreError, match=DATABASE_FILE):
        with LinkStore(tmp_path, "alpha") as store:
            store.load(LINK)


# -- unwritable or full ----------------------------------------------------------


def test_data_dir_that_cannot_be_created_names_the_path(tmp_path: Path) -> None:
    # Works as root too: no permission bit stops mkdir over a regular file.
    blocker = tmp_path / "node-data"
    blocker.write_text("not a directory")
    for data_dir in (blocker, blocker / "sub"):
        with pytest.raises(KeyStoreError, match=re.escape(str(data_dir))):
            LinkStore(data_dir, "alpha")


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_read_only_data_dir_names_the_path(tmp_path: Path) -> None:
    data_dir = tmp_path / "node-data"
    data_dir.mkdir()
    data_dir.chmod(0o500)
    try:
        with pytest.raises(KeyStoreError, match=re.escape(str(data_dir))):
            LinkStore(data_dir, "alpha")
    finally:
        data_dir.chmod(0o700)


def test_full_database_raises_and_keeps_the_old_state(tmp_path: Path) -> None:
    with LinkStore(tmp_path, "alpha") as store:
        store.save(LINK, {"v": 1})
        # Cap the file at its current size: the next large write hits SQLITE_FULL,
        # as on a full disk.
        conn = store._conn
        assert conn is not None
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        conn.execute(f"PRAGMA max_page_count = {pages}")
        with pytest.raises(KeyStoreError, match=f"link '{LINK}'.*{DATABASE_FILE}.*full"):
            store.save(LINK, {"v": 2, "pad": _random_bytes(5, 100_000).hex()})
        assert store.load(LINK) == {"v": 1}
        store.save(LINK, {"v": 3})  # still usable once there is room
        assert store.load(LINK) == {"v": 3}


# -- crashes ---------------------------------------------------------------

_WRITER = """
import hashlib, sys
from pathlib import Path
from qcinode.keys.linkstore import LinkStore

store = LinkStore(Path(sys.argv[1]), "alpha")
seq = int(sys.argv[2])
while True:
    for link_id in ("alpha-beta", "alpha-gamma"):
        pad = hashlib.shake_256(f"{link_id}/{seq}".encode()).hexdigest(60_000)
        store.save(link_id, {"seq": seq, "pad": pad, "sha256": hashlib.sha256(pad.encode()).hexdigest()})
    print(seq, flush=True)
    seq += 1
"""


def _run_writer_and_kill(data_dir: Path, first_seq: int, delay_s: float) -> int:
    """Start a writer, SIGKILL it ``delay_s`` after its first full round; the last seq it reported."""
    with subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(data_dir), str(first_seq)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        try:
            ready, _, _ = select.select([proc.stdout], [], [], 20.0)
            assert ready, "writer did not start"
            first = proc.stdout.readline()
            assert first, proc.stderr.read()
            if delay_s:
                select.select([], [], [], delay_s)
        finally:
            proc.kill()
        reported = [first, *proc.stdout.read().split()]
        proc.wait()
    assert proc.returncode == -9
    return int(reported[-1])


def test_killed_writer_leaves_old_or_new_state_of_each_link(tmp_path: Path) -> None:
    # Kills land at different points of the write loop: right away, then later.
    for round_no, delay_s in enumerate((0.0, 0.003, 0.011, 0.029, 0.05)):
        first_seq = 1000 * round_no
        last_reported = _run_writer_and_kill(tmp_path, first_seq, delay_s)
        with LinkStore(tmp_path, "alpha") as store:
            for link_id in ("alpha-beta", "alpha-gamma"):
                state = store.load(link_id)
                assert state is not None
                seq = state["seq"]
                # Everything reported was durable; at most the round in flight is newer.
                assert seq in (last_reported, last_reported + 1)
                pad = hashlib.shake_256(f"{link_id}/{seq}".encode()).hexdigest(60_000)
                assert state == {"seq": seq, "pad": pad, "sha256": hashlib.sha256(pad.encode()).hexdigest()}
            # The store stays writable after recovery.
            store.save("alpha-delta", {"round": round_no})
            assert store.load("alpha-delta") == {"round": round_no}



# -- storage faults: mapping, health, what a failed save leaves behind ------------------


def _sqlite_exc(kind: type[sqlite3.Error], message: str, code: int | None) -> sqlite3.Error:
    exc = kind(message)
    if code is not None:
        exc.sqlite_errorcode = code
    return exc


def _disk_full(fd: int, data: Any) -> int:
    raise OSError(28, "No space left on device")


def _set_read_only(store: LinkStore, read_only: bool) -> None:
    """Every write now fails as on a read-only file system (SQLITE_READONLY), or works again."""
    conn = store._conn
    assert conn is not None
    conn.execute(f"PRAGMA query_only = {'ON' if read_only else 'OFF'}")


@pytest.mark.parametrize(
    ("code", "message"),
    [
        (sqlite3.SQLITE_FULL, "database or disk is full"),  # ENOSPC
        (sqlite3.SQLITE_IOERR_WRITE, "disk I/O error"),  # an extended code: EIO on write
        (sqlite3.SQLITE_IOERR_FSYNC, "disk I/O error"),
        (sqlite3.SQLITE_READONLY, "attempt to write a readonly database"),  # EROFS
        (sqlite3.SQLITE_CANTOPEN, "unable to open database file"),
        (sqlite3.SQLITE_CORRUPT, "database disk image is malformed"),
    ],
)
def test_storage_faults_become_storage_failure_naming_file_and_reason(tmp_path: Path, code: int, message: str) -> None:
    path = tmp_path / DATABASE_FILE
    error = sqlite_error(path, f"cannot save link 'a-b' to {path}", _sqlite_exc(sqlite3.OperationalError, message, code))
    assert isinstance(error, StorageFailure)
    assert error.path == path and error.reason == message
    assert str(error) == f"cannot save link 'a-b' to {path}: {message}"


@pytest.mark.parametrize(
    "exc",
    [
        _sqlite_exc(sqlite3.IntegrityError, "UNIQUE constraint failed: links.link_id", sqlite3.SQLITE_CONSTRAINT),
        _sqlite_exc(sqlite3.ProgrammingError, "Cannot operate on a closed database.", None),
        _sqlite_exc(sqlite3.OperationalError, "no such table: links", sqlite3.SQLITE_ERROR),
    ],
)
def test_other_sqlite_errors_stay_plain_keystore_errors(tmp_path: Path, exc: sqlite3.Error) -> None:
    error = sqlite_error(tmp_path / DATABASE_FILE, "cannot save", exc)
    assert type(error) is KeyStoreError  # a bug or a rule, not a fault to wait out


def test_full_database_is_a_storage_failure_reported_once_until_a_save_succeeds(tmp_path: Path) -> None:
    events: list[tuple[Path, str | None]] = []
    with LinkStore(tmp_path, "alpha") as store:
        store.on_health = lambda path, failure: events.append((path, failure.reason if failure else None))
        store.save(LINK, {"v": 1})
        conn = store._conn
        assert conn is not None
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        conn.execute(f"PRAGMA max_page_count = {pages}")  # as on a full disk
        big = {"v": 2, "pad": _random_bytes(5, 100_000).hex()}
        for _ in range(3):
            with pytest.raises(StorageFailure) as info:
                store.save(LINK, big)
            assert info.value.reason == "database or disk is full" and info.value.path == store.path
        assert store.failure is not None and store.failure.reason == "database or disk is full"
        assert store.failure_count == 3
        assert events == [(store.path, "database or disk is full")]  # one event while it keeps failing
        assert store.load(LINK) == {"v": 1}  # the disk holds the last saved state
        conn.execute("PRAGMA max_page_count = 1000000")  # space again
        store.save(LINK, big)
        assert store.failure is None
        assert events[-1] == (store.path, None)
        assert store.load(LINK) == big


def test_probe_refuses_a_data_dir_that_takes_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data_dir = tmp_path / "node-data"
    data_dir.mkdir()
    monkeypatch.setattr(os, "write", _disk_full)
    with pytest.raises(StorageFailure) as info:
        LinkStore(data_dir, "alpha")
    monkeypatch.undo()
    assert str(info.value) == f"data directory {data_dir} is not writable: No space left on device"
    assert info.value.path == data_dir and info.value.reason == "No space left on device"
    assert list(data_dir.iterdir()) == [], "the probe file is removed and no database was created"


def test_probe_leaves_nothing_and_check_writable_clears_a_failure(tmp_path: Path) -> None:
    probe_data_dir(tmp_path)
    assert list(tmp_path.iterdir()) == []
    events: list[str | None] = []
    with LinkStore(tmp_path, "alpha") as store:
        store.on_health = lambda path, failure: events.append(failure.reason if failure else None)
        _set_read_only(store, True)
        with pytest.raises(StorageFailure):
            store.save(LINK, {"v": 1})
        assert store.check_writable() is True  # the directory takes files again
        assert store.failure is None
        assert events == ["attempt to write a readonly database", None]


def test_check_writable_keeps_the_recorded_reason_while_the_dir_still_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    events: list[str | None] = []
    with LinkStore(tmp_path, "alpha") as store:
        store.on_health = lambda path, failure: events.append(failure.reason if failure else None)
        _set_read_only(store, True)
        with pytest.raises(StorageFailure):
            store.save(LINK, {"v": 1})
        monkeypatch.setattr(os, "write", _disk_full)
        assert store.check_writable() is False
        monkeypatch.undo()
        assert store.failure is not None and store.failure.reason == "attempt to write a readonly database"
        assert events == ["attempt to write a readonly database"]


# -- a link whose state cannot be saved ------------------------------------------------

_TOPOLOGY = """
name: pair
nodes: [{name: alpha}, {name: beta}]
links: [{between: [alpha, beta], length_km: 10}]
"""


def _runtime(tmp_path: Path) -> Any:
    from qcinode.node.runtime import LinkRuntime
    from qcinode.topology import parse_topology

    link = parse_topology(_TOPOLOGY).links_of("alpha")[0]
    rt = LinkRuntime(link, "alpha", _random_bytes(9, 32 * 16), LinkStore(tmp_path, "alpha"))
    for i, size in enumerate((4096, 2048)):
        rt.pool.add_block(f"{link.link_id}/{i}", _random_bytes(20 + i, size))
    rt.state = "up"
    rt.persist()
    return rt


def test_failed_save_of_a_relay_pad_wastes_it_and_never_reuses_it(tmp_path: Path) -> None:
    rt = _runtime(tmp_path)
    store = rt.store
    available, ledger = rt.pool.available_bytes, rt.pool.audit()
    _set_read_only(store, True)
    rt.pool.commit(rt.pool.reserve(1000))  # the relay engine commits a hop's pad, then asks for the save
    with pytest.raises(StorageFailure):
        rt.persist()
    # Nothing was sent (the caller sends only after a save); the bytes stay
    # used in memory, so no later reservation can hand them out again.
    assert rt.pool.available_bytes == available - 1000
    assert rt.state == "storage_failed" and rt.storage_failure == "attempt to write a readonly database"
    assert rt.try_persist() is False
    assert LinkKeyPool.from_state(store.load(rt.link_id)["pool"], store.load_blobs(rt.link_id)).audit() == ledger  # the disk holds the last saved state
    _set_read_only(store, False)
    pad = rt.pool.commit(rt.pool.reserve(1000))
    rt.persist()
    assert len(pad) == 1000 and rt.state == "up" and rt.storage_failure is None
    saved = LinkKeyPool.from_state(store.load(rt.link_id)["pool"], store.load_blobs(rt.link_id))
    assert saved.audit() == rt.pool.audit() != ledger
    assert saved.available_bytes == available - 2000


def test_failed_save_keeps_the_disk_at_the_last_saved_state(tmp_path: Path) -> None:
    rt = _runtime(tmp_path)
    store = rt.store
    before = store.load(rt.link_id)
    rt.pool.add_block(f"{rt.link_id}/2", _random_bytes(30, 300))  # accepted in memory only
    _set_read_only(store, True)
    with pytest.raises(StorageFailure, match=f"link '{rt.link_id}'.*{DATABASE_FILE}.*readonly"):
        rt.persist()
    assert store.load(rt.link_id) == before
    assert rt.status().state == "storage_failed"
    _set_read_only(store, False)
    rt.persist()
    assert rt.status().state == "up"
    assert f"{rt.link_id}/2" in LinkKeyPool.from_state(store.load(rt.link_id)["pool"], store.load_blobs(rt.link_id)).block_ids


# -- blobs: the immutable parts, written once ---------------------------------


def test_blobs_are_written_once_deleted_when_unnamed_and_round_trip(tmp_path: Path) -> None:
    pool, reserve, _, block0 = _realistic()
    asked: list[str] = []

    def blob(name: str) -> bytes:
        asked.append(name)
        return pool.blob(name)

    def save() -> None:
        state = {"pool": pool.to_state(inline=False), "auth": reserve.to_state(), "next_block_seq": 7, "next_frame_id": 3}
        store.save(LINK, state, blob_names=pool.blob_names(), blob=blob)

    with LinkStore(tmp_path, "alpha") as store:
        save()
        first = sorted(asked)
        assert first == sorted(pool.blob_names()) and "data/alpha-beta/0/alice" in first
        asked.clear()
        pool.commit(pool.reserve(10))
        save()
        assert asked == [], "an unchanged blob was written again"
        # Using up our halves drops their bytes: those blobs go; blocks 1 and 2,
        # whose other halves the peer used up, close, and their summaries come.
        pool.commit(pool.reserve(pool.available_bytes))
        save()
        assert sorted(asked) == [f"closed/{LINK}/1", f"closed/{LINK}/2"]
    assert block0.hex() not in _raw_files(tmp_path).hex(), "key bytes reached the disk in the clear"

    with LinkStore(tmp_path, "alpha") as reopened:
        blobs = reopened.load_blobs(LINK)
        loaded = reopened.load(LINK)
    assert set(blobs) == pool.blob_names()
    assert loaded is not None
    restored = LinkKeyPool.from_state(loaded["pool"], blobs)
    assert restored.audit() == pool.audit() and restored.block_ids == pool.block_ids
    assert restored.available_bytes == pool.available_bytes == 0
    # The peer's half of block 0 is still there, byte for byte.
    peer_range = [KeyRange(f"{LINK}/0", 2348, 100)]
    assert restored.consume_ranges(peer_range, Role.BOB) == pool.consume_ranges(peer_range, Role.BOB) == block0[2348:2448]


def test_a_failed_save_leaves_blobs_as_they_were(tmp_path: Path) -> None:
    pool, reserve, _, _ = _realistic()
    with LinkStore(tmp_path, "alpha") as store:
        store.save(LINK, {"pool": pool.to_state(inline=False)}, blob_names=pool.blob_names(), blob=pool.blob)
        before = store.load_blobs(LINK)
        pool.commit(pool.reserve(pool.available_bytes))  # blobs go, others come
        _set_read_only(store, True)
        with pytest.raises(StorageFailure):
            store.save(LINK, {"pool": pool.to_state(inline=False)}, blob_names=pool.blob_names(), blob=pool.blob)
        _set_read_only(store, False)
        assert store.load_blobs(LINK) == before
        # The next save still writes what the failed one could not.
        store.save(LINK, {"pool": pool.to_state(inline=False)}, blob_names=pool.blob_names(), blob=pool.blob)
        assert set(store.load_blobs(LINK)) == pool.blob_names() != set(before)


def test_a_blob_moved_to_another_name_or_link_fails_authentication(tmp_path: Path) -> None:
    pool, _, _, _ = _realistic()
    with LinkStore(tmp_path, "alpha") as store:
        store.save(LINK, {"pool": pool.to_state(inline=False)}, blob_names=pool.blob_names(), blob=pool.blob)
    with contextlib.closing(sqlite3.connect(tmp_path / DATABASE_FILE)) as conn, conn:
        conn.execute("UPDATE link_blobs SET name = 'data/alpha-beta/9/alice' WHERE name = 'data/alpha-beta/0/alice'")
    with LinkStore(tmp_path, "alpha") as store, pytest.raises(KeyStoreError, match="failed authentication"):
        store.load_blobs(LINK)
    with pytest.raises(LocalProtocolError, match="needs blob"):
        with LinkStore(tmp_path, "alpha") as store:
            store.save(LINK, {}, blob_names=["x"])


# -- a link that runs for weeks: folded blocks leave the store ------------------------


def _pool_blobs(store: LinkStore, link_id: str) -> set[str]:
    return {name for name in store.load_blobs(link_id) if not name.startswith("auth/")}


def _retire(rt: Any, peer: LinkKeyPool, seqs: range) -> None:
    """Blocks of ``seqs`` come, both ends use them up (the peer's uses reach us), the runtime saves."""
    for seq in seqs:
        data = _random_bytes(seq, 64)
        rt.pool.add_block(f"{rt.link_id}/{seq}", data)
        peer.add_block(f"{rt.link_id}/{seq}", data)
        rt.persist()
        mine = rt.pool.reserve(32)
        rt.pool.commit(mine)
        peer.consume_ranges(mine.ranges, rt.role)
        theirs = peer.reserve(32)
        peer.commit(theirs)
        rt.pool.consume_ranges(theirs.ranges, peer.role)
        rt.persist()


def test_a_link_retiring_blocks_for_ever_keeps_a_bounded_store(tmp_path: Path) -> None:
    from qcinode.core.pool import CLOSED_BLOCKS_KEPT
    from qcinode.node.runtime import LinkRuntime
    from qcinode.topology import parse_topology

    link = parse_topology(_TOPOLOGY).links_of("alpha")[0]
    store = LinkStore(tmp_path, "alpha")
    rt = LinkRuntime(link, "alpha", _random_bytes(9, 32 * 16), store)
    peer = LinkKeyPool(link.link_id, rt.role.peer)
    counts = []
    for start in range(0, 4 * CLOSED_BLOCKS_KEPT, CLOSED_BLOCKS_KEPT // 2):
        _retire(rt, peer, range(start, start + CLOSED_BLOCKS_KEPT // 2))
        counts.append(len(_pool_blobs(store, rt.link_id)))
    # One closed summary per kept block, none per folded one: the store stopped growing.
    assert counts == [CLOSED_BLOCKS_KEPT // 2] + [CLOSED_BLOCKS_KEPT] * (len(counts) - 1)
    assert _pool_blobs(store, rt.link_id) == set(rt.pool.blob_names())
    assert rt.pool.folded.blocks == 3 * CLOSED_BLOCKS_KEPT
    saved = store.load(rt.link_id)
    assert saved is not None and len(saved["pool"]["closed"]) == CLOSED_BLOCKS_KEPT
    store.close()
    # A restart finds the same ledger, fold included, and still refuses a folded block.
    again = LinkRuntime(link, "alpha", _random_bytes(9, 32 * 16), LinkStore(tmp_path, "alpha"))
    assert again.pool.folded == rt.pool.folded == peer.folded
    assert again.pool.audit() == rt.pool.audit() == peer.audit()
    assert again.pool.used_bytes == 4 * CLOSED_BLOCKS_KEPT * 64
    with pytest.raises(KeyStoreError, match="folded"):
        again.pool.add_block(f"{rt.link_id}/0", _random_bytes(0, 64))
    again.store.close()


def test_a_node_restarted_on_a_version_2_state_deletes_the_folded_blocks_blobs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import qcinode.core.pool as pool_module
    from qcinode.core.pool import CLOSED_BLOCKS_KEPT
    from qcinode.node.runtime import LinkRuntime
    from qcinode.topology import parse_topology

    link = parse_topology(_TOPOLOGY).links_of("alpha")[0]
    monkeypatch.setattr(pool_module, "CLOSED_BLOCKS_KEPT", 10**9)  # the version 2 writer kept every closed block
    store = LinkStore(tmp_path, "alpha")
    rt = LinkRuntime(link, "alpha", _random_bytes(9, 32 * 16), store)
    peer = LinkKeyPool(link.link_id, rt.role.peer)
    _retire(rt, peer, range(CLOSED_BLOCKS_KEPT + 30))
    saved = store.load(rt.link_id)
    assert saved is not None
    assert saved["pool"].pop("folded")["blocks"] == 0
    saved["pool"]["version"] = 2
    store.save(rt.link_id, saved)  # what version 2 left on disk: its state, every closed block's blob
    assert len(_pool_blobs(store, rt.link_id)) == CLOSED_BLOCKS_KEPT + 30
    store.close()
    monkeypatch.undo()

    store = LinkStore(tmp_path, "alpha")
    restarted = LinkRuntime(link, "alpha", _random_bytes(9, 32 * 16), store)
    assert restarted.pool.folded.blocks == 30 and restarted.pool.used_bytes == rt.pool.used_bytes
    restarted.persist()
    assert _pool_blobs(store, rt.link_id) == set(restarted.pool.blob_names())
    assert len(_pool_blobs(store, rt.link_id)) == CLOSED_BLOCKS_KEPT
    store.close()


# -- several links in one transaction (a transit relay hop) -----------------------------------


def test_save_many_writes_every_link_in_one_transaction_or_none(tmp_path: Path) -> None:
    with LinkStore(tmp_path, "alpha") as store:
        store.save("alpha-beta", {"v": 1})
        store.save("alpha-gamma", {"v": 1})
        conn = store._conn
        assert conn is not None
        commits: list[str] = []
        conn.set_trace_callback(lambda sql: commits.append(sql) if sql.strip().upper() == "COMMIT" else None)
        store.save_many([LinkSave("alpha-beta", {"v": 2}), LinkSave("alpha-gamma", {"v": 2}, blob_names=["b/1"], blob=lambda name: b"x" * 64)])
        assert len(commits) == 1, "one transaction, one fsync"
        assert (store.load("alpha-beta"), store.load("alpha-gamma"), store.load_blobs("alpha-gamma")) == ({"v": 2}, {"v": 2}, {"b/1": b"x" * 64})
        # One link cannot be written: neither is.
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        conn.execute(f"PRAGMA max_page_count = {pages}")
        with pytest.raises(StorageFailure, match="links 'alpha-beta', 'alpha-gamma'.*full"):
            store.save_many([LinkSave("alpha-beta", {"v": 3}), LinkSave("alpha-gamma", {"v": 3, "pad": _random_bytes(6, 100_000).hex()})])
        assert (store.load("alpha-beta"), store.load("alpha-gamma")) == ({"v": 2}, {"v": 2})
        with pytest.raises(LocalProtocolError, match="not JSON-able"):
            store.save_many([LinkSave("alpha-beta", {"v": 4}), LinkSave("alpha-gamma", {"v": float("nan")})])
        assert store.load("alpha-beta") == {"v": 2}
