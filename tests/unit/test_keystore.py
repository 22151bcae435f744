"""The durable SAE key store: redemption rules, atomicity, encryption at rest, crash safety, storage faults.

These tests touch the filesystem (``tmp_path``): the store is a file.
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from qcinode.errors import (
    DuplicateKey,
    InsufficientKeyMaterial,
    KeyNotFound,
    KeyStoreError,
    LocalProtocolError,
    RequestError,
    Unauthorized,
)
from qcinode.keys.keystore import DATABASE_FILE, SaeKeyStore, StorageFailure, WaitingKey
from qcinode.keys.linkstore import StorageKey

NODE = "alpha"


def _kid() -> str:
    return str(uuid.uuid4())


def _key(i: int, n: int = 32) -> bytes:
    # Distinctive, incompressible-looking bytes we can search the file for.
    return bytes((i * 37 + j * 101 + 7) % 256 for j in range(n))


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SaeKeyStore]:
    with SaeKeyStore(tmp_path, NODE, StorageKey.load_or_create(tmp_path)) as s:
        yield s


def _snapshot(data_dir: Path) -> tuple[list[tuple[object, ...]], list[tuple[object, ...]]]:
    with contextlib.closing(sqlite3.connect(data_dir / DATABASE_FILE)) as conn:
        keys = conn.execute("SELECT * FROM sae_keys ORDER BY key_id").fetchall()
        pending = conn.execute("SELECT * FROM pending ORDER BY key_id, slave_sae").fetchall()
    return keys, pending


# -- redemption rules ------------------------------------------------------------


def test_put_then_take_returns_the_keys_in_request_order_once(store: SaeKeyStore) -> None:
    ids = [_kid() for _ in range(3)]
    for i, key_id in enumerate(ids):
        store.put(key_id, "m", ["s"], _key(i))
    assert store.count("m", "s") == 3 and store.total() == 3
    order = [ids[2], ids[0]]
    assert store.take("s", "m", order) == [(ids[2], _key(2)), (ids[0], _key(0))]
    assert store.count("m", "s") == 1 and store.total() == 1
    with pytest.raises(KeyNotFound, match=ids[0]):
        store.take("s", "m", [ids[0]])


def test_duplicate_key_id_is_refused_and_the_first_key_kept(store: SaeKeyStore) -> None:
    key_id = _kid()
    store.put(key_id, "m", ["s"], _key(1))
    for master, slaves, key in (("m", ["s"], _key(2)), ("m2", ["s"], _key(1)), ("m", ["s", "t"], _key(1))):
        with pytest.raises(DuplicateKey, match="already stored") as info:
            store.put(key_id, master, slaves, key)
        assert info.value.identical is False, (master, slaves)
    assert store.take("s", "m", [key_id]) == [(key_id, _key(1))]


def test_the_same_key_stored_twice_is_a_typed_identical_duplicate(store: SaeKeyStore) -> None:
    # A retried relay delivers the same key again: the caller learns it by type, not by message text.
    key_id = _kid()
    store.put(key_id, "m", ["s"], _key(1))
    with pytest.raises(DuplicateKey) as info:
        store.put(key_id, "m", ["s"], _key(1))
    assert info.value.identical is True
    assert store.total() == 1 and store.take("s", "m", [key_id]) == [(key_id, _key(1))]


def test_multi_slave_key_is_redeemed_once_by_each_slave(store: SaeKeyStore) -> None:
    key_id = _kid()
    store.put(key_id, "m", ["s1", "s2"], _key(3))
    assert store.count("m", "s1") == store.count("m", "s2") == 1
    assert store.take("s1", "m", [key_id]) == [(key_id, _key(3))]
    with pytest.raises(KeyNotFound, match="already redeemed"):
        store.take("s1", "m", [key_id])
    assert store.count("m", "s1") == 0 and store.count("m", "s2") == 1
    assert store.take("s2", "m", [key_id]) == [(key_id, _key(3))]
    assert store.total() == 0
    with pytest.raises(KeyNotFound):
        store.take("s2", "m", [key_id])


def test_wrong_slave_or_master_is_unauthorized_and_the_key_stays(store: SaeKeyStore, tmp_path: Path) -> None:
    key_id = _kid()
    store.put(key_id, "m", ["s"], _key(4))
    before = _snapshot(tmp_path)
    with pytest.raises(Unauthorized, match=key_id):
        store.take("intruder", "m", [key_id])
    with pytest.raises(Unauthorized):
        store.take("s", "other-master", [key_id])
    with pytest.raises(Unauthorized):
        store.take("m", "m", [key_id])  # the master itself is no slave
    assert _snapshot(tmp_path) == before
    assert store.take("s", "m", [key_id]) == [(key_id, _key(4))]


def test_duplicate_ids_in_one_request_are_a_request_error(store: SaeKeyStore) -> None:
    key_id = _kid()
    store.put(key_id, "m", ["s"], _key(5))
    with pytest.raises(RequestError, match="more than once"):
        store.take("s", "m", [key_id, key_id])
    with pytest.raises(RequestError):
        store.take("s", "m", [])
    assert store.count("m", "s") == 1


def test_bad_arguments_are_refused(store: SaeKeyStore) -> None:
    for args in [
        ("", "m", ["s"], b"k"),
        (_kid(), "", ["s"], b"k"),
        (_kid(), "m", [], b"k"),
        (_kid(), "m", "s", b"k"),
        (_kid(), "m", ["s", "s"], b"k"),
        (_kid(), "m", ["m"], b"k"),
        (_kid(), "m", ["s"], b""),
    ]:
        with pytest.raises(LocalProtocolError):
            store.put(*args)
    assert store.total() == 0


def test_max_waiting_bounds_keys_waiting_per_pair(store: SaeKeyStore) -> None:
    for i in range(2):
        store.put(_kid(), "m", ["s"], _key(i), max_waiting=2)
    with pytest.raises(InsufficientKeyMaterial, match="'s'"):
        store.put(_kid(), "m", ["s", "t"], _key(9), max_waiting=2)
    store.put(_kid(), "other", ["s"], _key(9), max_waiting=2)  # another master's pair
    assert store.count("m", "s") == 2 and store.count("m", "t") == 0 and store.total() == 3


# -- atomicity -----------------------------------------------------------------------


def test_request_with_one_unknown_id_changes_nothing(store: SaeKeyStore, tmp_path: Path) -> None:
    ids = [_kid() for _ in range(3)]
    for i, key_id in enumerate(ids):
        store.put(key_id, "m", ["s"], _key(i))
    before = _snapshot(tmp_path)
    missing = _kid()
    with pytest.raises(KeyNotFound) as info:
        store.take("s", "m", [ids[0], missing, ids[1]])
    assert missing in str(info.value) and ids[0] not in str(info.value)
    assert _snapshot(tmp_path) == before
    assert [k for _, k in store.take("s", "m", ids)] == [_key(0), _key(1), _key(2)]


def test_request_with_one_foreign_key_changes_nothing(store: SaeKeyStore, tmp_path: Path) -> None:
    mine, theirs = _kid(), _kid()
    store.put(mine, "m", ["s"], _key(1))
    store.put(theirs, "m", ["t"], _key(2))
    before = _snapshot(tmp_path)
    with pytest.raises(Unauthorized, match=theirs):
        store.take("s", "m", [mine, theirs])
    assert _snapshot(tmp_path) == before
    assert store.take("t", "m", [theirs]) == [(theirs, _key(2))]
    assert store.take("s", "m", [mine]) == [(mine, _key(1))]


def test_tampered_row_fails_authentication_and_changes_nothing(store: SaeKeyStore, tmp_path: Path) -> None:
    a, b = _kid(), _kid()
    store.put(a, "m", ["s"], _key(1))
    store.put(b, "m", ["s"], _key(2))
    with contextlib.closing(sqlite3.connect(tmp_path / DATABASE_FILE)) as conn, conn:
        # Redirect key a to another master: the AEAD binds the master, so it must not decrypt.
        conn.execute("UPDATE sae_keys SET master_sae = 'mallory' WHERE key_id = ?", (a,))
        # Move b's ciphertext under a new ID.
        conn.execute("UPDATE sae_keys SET key_id = ? WHERE key_id = ?", ("x" + b[1:], b))
        conn.execute("UPDATE pending SET key_id = ? WHERE key_id = ?", ("x" + b[1:], b))
    before = _snapshot(tmp_path)
    with pytest.raises(KeyStoreError, match="failed authentication"):
        store.take("s", "mallory", [a])
    with pytest.raises(KeyStoreError, match="failed authentication"):
        store.take("s", "m", ["x" + b[1:]])
    assert _snapshot(tmp_path) == before


# -- encryption at rest ------------------------------------------------------------


def test_key_bytes_never_reach_the_disk(tmp_path: Path) -> None:
    keys = [_key(i, 64) for i in range(20)]
    with SaeKeyStore(tmp_path, NODE, StorageKey.load_or_create(tmp_path)) as store:
        for key in keys:
            store.put(_kid(), "m", ["s"], key)
        raw = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith(DATABASE_FILE))
    assert raw  # something was written
    for key in keys:
        for start in range(0, 64, 16):
            assert key[start : start + 16] not in raw


def test_another_node_or_storage_key_cannot_read_the_rows(tmp_path: Path) -> None:
    key_id = _kid()
    with SaeKeyStore(tmp_path, NODE, StorageKey.load_or_create(tmp_path)) as store:
        store.put(key_id, "m", ["s"], _key(1))
    with SaeKeyStore(tmp_path, "beta", StorageKey.load_or_create(tmp_path)) as other_node:
        with pytest.raises(KeyStoreError, match="failed authentication"):
            other_node.take("s", "m", [key_id])
    with SaeKeyStore(tmp_path, NODE, StorageKey(os.urandom(32))) as other_key:
        with pytest.raises(KeyStoreError, match="failed authentication"):
            other_key.take("s", "m", [key_id])
    with SaeKeyStore(tmp_path, NODE, StorageKey.load_or_create(tmp_path)) as store:
        assert store.take("s", "m", [key_id]) == [(key_id, _key(1))]


def test_repr_of_store_shows_no_key(store: SaeKeyStore, tmp_path: Path) -> None:
    assert "SaeKeyStore(path=" in repr(store) and str(tmp_path) in repr(store)


# -- unwritable, full or closed ------------------------------------------------------


def test_data_dir_that_cannot_be_created_names_the_path(tmp_path: Path) -> None:
    blocker = tmp_path / "node-data"
    blocker.write_text("not a directory")
    key = StorageKey(os.urandom(32))
    for data_dir in (blocker, blocker / "sub"):
        with pytest.raises(KeyStoreError, match=re.escape(str(data_dir))):
            SaeKeyStore(data_dir, NODE, key)


def test_full_database_raises_naming_the_path_and_keeps_the_store(store: SaeKeyStore) -> None:
    first = _kid()
    store.put(first, "m", ["s"], _key(1))
    conn = store._conn
    assert conn is not None
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.execute(f"PRAGMA max_page_count = {pages}")  # as on a full disk
    with pytest.raises(KeyStoreError, match=f"{re.escape(str(store.path))}.*full"):
        for _ in range(200):
            store.put(_kid(), "m", ["s"], os.urandom(4096))
    assert store.take("s", "m", [first]) == [(first, _key(1))]


def _set_read_only(store: SaeKeyStore, read_only: bool) -> None:
    """Every write now fails as on a read-only file system (SQLITE_READONLY), or works again."""
    conn = store._conn
    assert conn is not None
    conn.execute(f"PRAGMA query_only = {'ON' if read_only else 'OFF'}")


def test_full_disk_stores_nothing_and_says_why(store: SaeKeyStore) -> None:
    stored = [_kid()]
    store.put(stored[0], "m", ["s"], _key(1))
    conn = store._conn
    assert conn is not None
    conn.execute(f"PRAGMA max_page_count = {conn.execute('PRAGMA page_count').fetchone()[0]}")  # as on a full disk
    refused = None
    for _ in range(200):
        key_id = _kid()
        try:
            store.put(key_id, "m", ["s"], os.urandom(4096))
        except StorageFailure as exc:
            refused = (key_id, exc)
            break
        stored.append(key_id)
    assert refused is not None, "the capped database never filled up"
    key_id, exc = refused
    assert exc.reason == "database or disk is full" and exc.path == store.path
    assert store.failure is exc
    # Exactly the keys put() reported as stored are there; the refused one is not.
    assert sorted(row[0] for row in _snapshot(store.path.parent)[0]) == sorted(stored)
    conn.execute("PRAGMA max_page_count = 1000000")
    store.put(key_id, "m", ["s"], _key(2))  # once there is room the same key can be stored
    assert store.failure is None


def test_redemption_that_cannot_be_recorded_hands_out_nothing_and_keeps_the_keys(
    store: SaeKeyStore, tmp_path: Path
) -> None:
    ids = [_kid(), _kid()]
    for i, key_id in enumerate(ids):
        store.put(key_id, "m", ["s"], _key(i))
    before = _snapshot(tmp_path)
    _set_read_only(store, True)  # as on a read-only or failing disk
    with pytest.raises(StorageFailure, match=f"{re.escape(str(store.path))}.*readonly"):
        store.take("s", "m", ids)
    assert _snapshot(tmp_path) == before
    _set_read_only(store, False)
    assert store.take("s", "m", ids) == [(ids[0], _key(0)), (ids[1], _key(1))]
    with pytest.raises(KeyNotFound):
        store.take("s", "m", ids)  # once only


def test_kme_answers_503_naming_the_fault_and_the_key_stays(store: SaeKeyStore) -> None:
    from qcinode.kme.handlers import Kme

    kme = Kme(NODE, lambda sae: NODE if sae in ("master-app", "slave-app") else None, store)
    key_id = _kid()
    store.put(key_id, "master-app", ["slave-app"], _key(7))
    _set_read_only(store, True)
    with pytest.raises(StorageFailure) as info:
        kme.dec_keys("slave-app", "master-app", {}, {"key_IDs": [{"key_ID": key_id}]})
    status, body = Kme.error_body(info.value)
    assert status == 503
    assert body["message"] == (
        "the key store of this KME cannot be written (attempt to write a readonly database): "
        "no key was handed out and waiting keys are kept; retry later"
    )
    assert str(store.path) not in body["message"]  # the node's files are not the client's business
    _set_read_only(store, False)
    answer = kme.dec_keys("slave-app", "master-app", {}, {"key_IDs": [{"key_ID": key_id}]})
    assert [k["key_ID"] for k in answer["keys"]] == [key_id]


def test_closed_store_raises(tmp_path: Path) -> None:
    store = SaeKeyStore(tmp_path, NODE, StorageKey.load_or_create(tmp_path))
    store.close()
    store.close()  # idempotent
    with pytest.raises(KeyStoreError, match="closed"):
        store.put(_kid(), "m", ["s"], b"k")
    with pytest.raises(KeyStoreError, match="closed"):
        store.count("m", "s")


# -- crashes -------------------------------------------------------------------------

_WRITER = """
import sys, uuid
from pathlib import Path
from qcinode.keys.keystore import SaeKeyStore
from qcinode.keys.linkstore import StorageKey

data_dir = Path(sys.argv[1])
store = SaeKeyStore(data_dir, "alpha", StorageKey.load_or_create(data_dir))
i = 0
while True:
    key_id = str(uuid.UUID(int=i + 1))
    store.put(key_id, "m", ["s"], i.to_bytes(4, "big") * 8)
    print(key_id, flush=True)   # reported only once put() returned: durable
    i += 1
"""


def test_killed_writer_keeps_every_key_it_reported(tmp_path: Path) -> None:
    with subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(tmp_path)],
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
            select.select([], [], [], 0.05)
        finally:
            proc.kill()
        reported = [first.strip(), *proc.stdout.read().split()]
        proc.wait()
    assert proc.returncode == -9
    with SaeKeyStore(tmp_path, NODE, StorageKey.load_or_create(tmp_path)) as store:
        # Everything reported is there; at most the put in flight is extra.
        assert store.total() in (len(reported), len(reported) + 1)
        taken = store.take("s", "m", reported)
        assert [key for _, key in taken] == [i.to_bytes(4, "big") * 8 for i in range(len(reported))]
        store.put(_kid(), "m", ["s"], b"still writable")


def test_expire_deletes_only_keys_stored_before_the_cut_with_their_pending_rows(tmp_path: Path) -> None:
    now = [1000.0]
    with SaeKeyStore(tmp_path, NODE, StorageKey.load_or_create(tmp_path), clock=lambda: now[0]) as store:
        old, multi, fresh = _kid(), _kid(), _kid()
        store.put(old, "m", ["s"], _key(1))
        store.put(multi, "m", ["s", "t"], _key(2))
        store.take("s", "m", [multi])  # t still waits for it
        now[0] = 2000.0
        store.put(fresh, "m", ["s"], _key(3))
        assert store.expire(older_than=1500.0) == 2
        assert store.total() == 1 and store.count("m", "s") == 1 and store.count("m", "t") == 0
        with pytest.raises(KeyNotFound, match=old):
            store.take("s", "m", [old])
        with pytest.raises(KeyNotFound, match=multi):
            store.take("t", "m", [multi])
        assert store.expire(older_than=1500.0) == 0
        assert store.take("s", "m", [fresh]) == [(fresh, _key(3))]
    keys, pending = _snapshot(tmp_path)
    assert keys == [] and pending == []


def test_discard_deletes_keys_whoever_waits_for_them_and_ignores_unknown_ids(store: SaeKeyStore) -> None:
    kept, voided, other = _kid(), _kid(), _kid()
    store.put(kept, "m", ["s"], _key(1))
    store.put(voided, "m", ["s", "t"], _key(2))
    assert store.contains(voided) and not store.contains(other)
    assert store.discard([voided, other]) == [voided]
    assert not store.contains(voided) and store.contains(kept)
    with pytest.raises(KeyNotFound):
        store.take("s", "m", [voided])
    assert store.take("s", "m", [kept]) == [(kept, _key(1))]


# -- several keys in one transaction (the relay destination's group commit) -------------------


def _count_commits(store: SaeKeyStore) -> list[str]:
    """The COMMITs the store's connection runs from now on."""
    commits: list[str] = []
    conn = store._conn
    assert conn is not None
    conn.set_trace_callback(lambda sql: commits.append(sql) if sql.strip().upper() == "COMMIT" else None)
    return commits


def test_put_many_stores_every_key_in_one_transaction_each_judged_on_its_own(store: SaeKeyStore) -> None:
    held, other = _kid(), _kid()
    store.put(held, "m", ["s"], _key(1))
    store.put(other, "m", ["s"], _key(2))
    fresh = [_kid() for _ in range(3)]
    commits = _count_commits(store)
    outcomes = store.put_many(
        [
            WaitingKey(fresh[0], "m", ("s",), _key(10)),
            WaitingKey(held, "m", ("s",), _key(1)),  # a retried relay: the same key again
            WaitingKey(other, "m", ("s",), _key(3)),  # the ID with another key: a conflict
            WaitingKey(fresh[1], "m", (), _key(11)),  # malformed: no slave
            WaitingKey(fresh[2], "m", ("s", "t"), _key(12)),
            WaitingKey(fresh[0], "m", ("s",), _key(10)),  # twice in one call: judged against the first
        ]
    )
    assert len(commits) == 1, "one transaction, one fsync"
    assert outcomes[0] is None and outcomes[4] is None
    assert isinstance(outcomes[1], DuplicateKey) and outcomes[1].identical
    assert isinstance(outcomes[2], DuplicateKey) and not outcomes[2].identical
    assert isinstance(outcomes[3], LocalProtocolError) and "no slave SAE" in str(outcomes[3])
    assert isinstance(outcomes[5], DuplicateKey) and outcomes[5].identical
    assert store.take("s", "m", [fresh[0], fresh[2], held, other]) == [(fresh[0], _key(10)), (fresh[2], _key(12)), (held, _key(1)), (other, _key(2))]
    assert store.take("t", "m", [fresh[2]]) == [(fresh[2], _key(12))]
    assert store.total() == 0


def test_put_many_counts_its_own_keys_against_max_waiting(store: SaeKeyStore) -> None:
    store.put(_kid(), "m", ["s"], _key(0))
    ids = [_kid() for _ in range(4)]
    outcomes = store.put_many([WaitingKey(key_id, "m", ("s",), _key(i)) for i, key_id in enumerate(ids)], max_waiting=3)
    assert outcomes[:2] == [None, None]
    assert all(isinstance(o, InsufficientKeyMaterial) for o in outcomes[2:])
    assert store.count("m", "s") == 3
    assert store.put_many([WaitingKey(_kid(), "m2", ("s",), _key(9))], max_waiting=3) == [None], "another master has its own bound"


def test_put_many_that_cannot_be_written_stores_none_of_its_keys(store: SaeKeyStore, tmp_path: Path) -> None:
    store.put(_kid(), "m", ["s"], _key(0))
    before = _snapshot(tmp_path)
    _set_read_only(store, True)
    with pytest.raises(StorageFailure, match="cannot store 3 keys"):
        store.put_many([WaitingKey(_kid(), "m", ("s",), _key(i)) for i in range(3)])
    assert _snapshot(tmp_path) == before
    _set_read_only(store, False)
