"""The link store's ledger rows: a save writes the open blocks that changed, and a load puts them back.

Each open block's ledger is a row of its own, rewritten only when the block
changed and deleted when it closes or folds; the link row holds the rest. These
tests reload from a fresh store on the same file after every save (a store's
own memory of what it wrote is exactly what could go stale), tamper with the
ledger rows, fail saves, and open a file the schema version 1 store wrote.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import qcinode.core.pool as pool_module
from qcinode.core.pool import KeyRange, LinkKeyPool, Reservation
from qcinode.core.roles import Role
from qcinode.errors import InsufficientKeyMaterial, KeyStoreError, LocalProtocolError
from qcinode.keys.linkstore import DATABASE_FILE, SCHEMA_VERSION, LinkSave, LinkStore, StorageFailure
from qcinode.node.runtime import LinkRuntime
from qcinode.topology import parse_topology

LINK = "alpha-beta"
V1_FIXTURE = Path(__file__).parent / "data" / "linkstore_v1"
_TOPOLOGY = """
name: pair
nodes: [{name: alpha}, {name: beta}]
links: [{between: [alpha, beta], length_km: 10}]
"""


def _tables(data_dir: Path) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table, as stored (ciphertexts and nonces included)."""
    with contextlib.closing(sqlite3.connect(data_dir / DATABASE_FILE)) as conn:
        return {
            table: sorted(conn.execute(f"SELECT * FROM {table}").fetchall())  # noqa: S608 - fixed table names
            for table in ("links", "link_blobs", "link_ledgers")
        }


def _ledger_rows(data_dir: Path, link_id: str = LINK) -> dict[str, bytes]:
    """Each ledger row's nonce by block ID (a new nonce: the row was rewritten)."""
    with contextlib.closing(sqlite3.connect(data_dir / DATABASE_FILE)) as conn:
        rows = conn.execute("SELECT block_id, nonce FROM link_ledgers WHERE link_id = ?", (link_id,)).fetchall()
    return {str(block_id): bytes(nonce) for block_id, nonce in rows}


def _link_row_nonce(data_dir: Path, link_id: str = LINK) -> bytes:
    with contextlib.closing(sqlite3.connect(data_dir / DATABASE_FILE)) as conn:
        return bytes(conn.execute("SELECT nonce FROM links WHERE link_id = ?", (link_id,)).fetchone()[0])


def _execute(data_dir: Path, sql: str, *args: Any) -> None:
    with contextlib.closing(sqlite3.connect(data_dir / DATABASE_FILE)) as conn, conn:
        conn.execute(sql, args)


def _reloaded(data_dir: Path, link_id: str = LINK) -> tuple[dict[str, Any] | None, dict[str, bytes]]:
    with LinkStore(data_dir, "alpha") as store:
        return store.load(link_id), store.load_blobs(link_id)


# -- random pool histories, each save reloaded from a fresh store ------------------


class _Link:
    """Both ends of one link's pools, driven at random; ``ours`` is the end whose state is saved."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        self.ours = LinkKeyPool(LINK, Role.ALICE)
        self.peer = LinkKeyPool(LINK, Role.BOB)
        self.next_seq = 0
        self.stock: list[Reservation] = []  # our open saved-as-used reservations (a relay's pad stock)
        self.counter = 0  # stands for the link row's other contents

    def step(self) -> str:
        """One random operation; its name."""
        op = str(self.rng.choice(["add", "use", "peer_use", "stock", "stock_use", "stock_release", "discard", "count"],
                                 p=[0.16, 0.22, 0.2, 0.1, 0.12, 0.06, 0.04, 0.1]))
        try:
            getattr(self, f"_{op}")()
        except InsufficientKeyMaterial:
            pass  # nothing left to use: the step changed nothing
        return op

    def state(self) -> dict[str, Any]:
        return {"pool": self.ours.to_state(inline=False), "counter": self.counter}

    def _add(self) -> None:
        data = self.rng.bytes(int(self.rng.choice([32, 64, 96])))
        for pool in (self.ours, self.peer):
            pool.add_block(f"{LINK}/{self.next_seq}", data)
        self.next_seq += 1

    def _use(self) -> None:
        self.ours.commit(self.ours.reserve(int(self.rng.integers(1, 40))))

    def _peer_use(self) -> None:
        reservation = self.peer.reserve(int(self.rng.integers(1, 40)))
        self.peer.commit(reservation)
        self.ours.consume_ranges(reservation.ranges, Role.BOB)

    def _stock(self) -> None:
        self.stock.append(self.ours.reserve(int(self.rng.integers(1, 24)), saved_as_used=True))

    def _stock_use(self) -> None:
        if self.stock:
            reservation = self.stock.pop(0)
            head, rest = self.ours.split(reservation, int(self.rng.integers(1, reservation.length_bytes + 1)))
            self.ours.commit(head)
            if rest is not None:
                self.stock.insert(0, rest)

    def _stock_release(self) -> None:
        if self.stock:
            self.ours.release(self.stock.pop())

    def _discard(self) -> None:
        """A resynchronisation drops one block at both ends (it closes as discarded)."""
        if self.ours.block_ids:
            gone = str(self.rng.choice(list(self.ours.block_ids)))
            for pool in (self.ours, self.peer):
                pool.retain_only([b for b in pool.block_ids if b != gone])
            self.stock = [r for r in self.stock if all(x.block_id != gone for x in r.ranges)]

    def _count(self) -> None:
        self.counter += 1


@pytest.mark.parametrize("seed", range(3))
def test_every_save_reloads_as_the_state_in_memory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seed: int) -> None:
    monkeypatch.setattr(pool_module, "CLOSED_BLOCKS_KEPT", 4)  # closed blocks fold within the run
    link = _Link(np.random.default_rng(seed))
    store = LinkStore(tmp_path, "alpha")
    rewritten: set[str] = set()
    kept: set[str] = set()
    for step in range(160):
        op = link.step()
        before = _ledger_rows(tmp_path)
        row_before = _link_row_nonce(tmp_path) if step else b""
        state = link.state()
        store.save(LINK, state, blob_names=link.ours.blob_names(), blob=link.ours.blob)
        loaded, blobs = _reloaded(tmp_path)
        assert loaded == state, f"after {op}: the disk holds another state"
        restored = LinkKeyPool.from_state(loaded["pool"], blobs)
        # Key bytes from the blobs, the pad stock as used: what a restart would hold.
        assert restored.to_state() == link.ours.to_state() and restored.folded == link.ours.folded
        # One ledger row per open block: none left behind by a closed or folded block.
        after = _ledger_rows(tmp_path)
        assert set(after) == set(link.ours.block_ids), f"after {op}: ledger rows of closed blocks stayed"
        for block_id in set(before) & set(after):
            (rewritten if before[block_id] != after[block_id] else kept).add(op)
        if op == "count" and row_before:
            assert after == before, "a save that changed no block rewrote a ledger"
            assert _link_row_nonce(tmp_path) != row_before, "the link row's change was not written"
    store.close()
    assert link.ours.folded.blocks > 0, "the history should fold blocks"
    assert {"use", "peer_use", "stock", "stock_use"} & rewritten and "count" in kept


def test_a_hop_rewrites_one_ledger_row_and_not_the_link_row(tmp_path: Path) -> None:
    link = _Link(np.random.default_rng(7))
    for _ in range(6):
        link._add()
    with LinkStore(tmp_path, "alpha") as store:
        store.save(LINK, link.state(), blob_names=link.ours.blob_names(), blob=link.ours.blob)
        ledgers, row = _ledger_rows(tmp_path), _link_row_nonce(tmp_path)
        used = link.ours.reserve(5)
        link.ours.commit(used)  # what a relay hop does to a link: one block's ledger
        store.save(LINK, link.state(), blob_names=link.ours.blob_names(), blob=link.ours.blob)
        after = _ledger_rows(tmp_path)
    changed = {block_id for block_id in after if after[block_id] != ledgers[block_id]}
    assert changed == {used.ranges[0].block_id}
    assert _link_row_nonce(tmp_path) == row, "the link row did not change, so it is not rewritten"
    assert _reloaded(tmp_path)[0] == link.state()


def test_states_without_a_pools_blocks_are_one_row_and_their_old_ledgers_go(tmp_path: Path) -> None:
    link = _Link(np.random.default_rng(3))
    link._add()
    with LinkStore(tmp_path, "alpha") as store:
        store.save(LINK, link.state())
        assert set(_ledger_rows(tmp_path)) == {f"{LINK}/0"}
        for whole in ({"pool": {"blocks": [1, 2]}}, {"pool": {"blocks": [{"block_id": "x"}, {"block_id": "x"}]}}, {"pool": "state"}, {"v": 1}):
            store.save(LINK, whole)
            assert _ledger_rows(tmp_path) == {}
            assert _reloaded(tmp_path)[0] == whole
        with pytest.raises(LocalProtocolError, match="given twice"):
            store.save_many([LinkSave(LINK, {"v": 2}), LinkSave(LINK, {"v": 3})])
    assert _reloaded(tmp_path)[0] == {"v": 1}


def test_a_store_reopened_on_its_file_rewrites_what_changed_since(tmp_path: Path) -> None:
    """A new store knows the rows on disk but not their contents: its first save rewrites them all, and deletes stale ones."""
    link = _Link(np.random.default_rng(5))
    for _ in range(3):
        link._add()
    with LinkStore(tmp_path, "alpha") as store:
        store.save(LINK, link.state())
    link.ours.retain_only(link.ours.block_ids[1:])
    link._use()
    with LinkStore(tmp_path, "alpha") as store:
        store.save(LINK, link.state())
    assert set(_ledger_rows(tmp_path)) == set(link.ours.block_ids)
    assert _reloaded(tmp_path)[0] == link.state()


# -- tampering with ledger rows fails loudly ------------------------------------------


@pytest.fixture
def saved_links(tmp_path: Path) -> Iterator[Path]:
    """Two links, each with three open blocks, some used."""
    with LinkStore(tmp_path, "alpha") as store:
        for link_id in (LINK, "alpha-gamma"):
            pool = LinkKeyPool(link_id, Role.ALICE)
            for seq in range(3):
                pool.add_block(f"{link_id}/{seq}", np.random.default_rng(seq).bytes(64))
            pool.commit(pool.reserve(40))
            store.save(link_id, {"pool": pool.to_state(inline=False)})
    yield tmp_path


def _load(data_dir: Path, link_id: str = LINK) -> dict[str, Any] | None:
    with LinkStore(data_dir, "alpha") as store:
        return store.load(link_id)


def test_two_blocks_ledger_rows_swapped_fail_authentication(saved_links: Path) -> None:
    _execute(saved_links, "UPDATE link_ledgers SET block_id = 'swap' WHERE link_id = ? AND block_id = ?", LINK, f"{LINK}/0")
    _execute(saved_links, "UPDATE link_ledgers SET block_id = ? WHERE link_id = ? AND block_id = ?", f"{LINK}/0", LINK, f"{LINK}/1")
    _execute(saved_links, "UPDATE link_ledgers SET block_id = ? WHERE link_id = ? AND block_id = 'swap'", f"{LINK}/1", LINK)
    with pytest.raises(KeyStoreError, match=rf"ledger of block '{LINK}/[01]' of link '{LINK}' in .*{DATABASE_FILE} failed authentication"):
        _load(saved_links)


def test_a_ledger_row_moved_to_another_link_fails_at_both(saved_links: Path) -> None:
    _execute(saved_links, "UPDATE link_ledgers SET link_id = 'alpha-gamma' WHERE link_id = ? AND block_id = ?", LINK, f"{LINK}/2")
    with pytest.raises(KeyStoreError, match=rf"names the ledger of block\(s\) '{LINK}/2', whose row is missing"):
        _load(saved_links)
    with pytest.raises(KeyStoreError, match=f"ledger of block '{LINK}/2' of link 'alpha-gamma'.*failed authentication"):
        _load(saved_links, "alpha-gamma")


def test_a_ledger_row_deleted_altered_or_added_fails(saved_links: Path) -> None:
    clean = saved_links.parent / "clean"
    shutil.copytree(saved_links, clean)
    _execute(saved_links, "DELETE FROM link_ledgers WHERE link_id = ? AND block_id = ?", LINK, f"{LINK}/1")
    with pytest.raises(KeyStoreError, match="whose row is missing"):
        _load(saved_links)

    shutil.rmtree(saved_links)
    shutil.copytree(clean, saved_links)
    with contextlib.closing(sqlite3.connect(saved_links / DATABASE_FILE)) as conn:
        (ciphertext,) = conn.execute("SELECT ciphertext FROM link_ledgers WHERE block_id = ?", (f"{LINK}/1",)).fetchone()
    flipped = ciphertext[:5] + bytes([ciphertext[5] ^ 1]) + ciphertext[6:]
    _execute(saved_links, "UPDATE link_ledgers SET ciphertext = ? WHERE block_id = ?", flipped, f"{LINK}/1")
    with pytest.raises(KeyStoreError, match="failed authentication"):
        _load(saved_links)

    shutil.rmtree(saved_links)
    shutil.copytree(clean, saved_links)
    # A row copied under a block ID the state does not name: refused (and it fails authentication).
    _execute(saved_links, "INSERT INTO link_ledgers SELECT link_id, ?, nonce, ciphertext FROM link_ledgers WHERE block_id = ?", f"{LINK}/9", f"{LINK}/1")
    with pytest.raises(KeyStoreError, match=f"'{LINK}/9'"):
        _load(saved_links)
    assert _load(clean) is not None


# -- failed saves --------------------------------------------------------------------


def _set_read_only(store: LinkStore, read_only: bool) -> None:
    """Every write now fails as on a read-only file system (SQLITE_READONLY), or works again."""
    conn = store._conn
    assert conn is not None
    conn.execute(f"PRAGMA query_only = {'ON' if read_only else 'OFF'}")


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(lambda link: link._use(), id="ledger"),
        pytest.param(lambda link: link._add(), id="new-block"),
        pytest.param(lambda link: link._discard(), id="closed-block"),
        pytest.param(lambda link: link._count(), id="link-row"),
    ],
)
def test_a_failed_save_changes_nothing_on_disk_and_the_next_one_writes_it_all(tmp_path: Path, change: Callable[[_Link], None]) -> None:
    link = _Link(np.random.default_rng(11))
    for _ in range(3):
        link._add()
    with LinkStore(tmp_path, "alpha") as store:
        store.save(LINK, link.state(), blob_names=link.ours.blob_names(), blob=link.ours.blob)
        before = _tables(tmp_path)
        change(link)
        _set_read_only(store, True)
        with pytest.raises(StorageFailure, match="readonly"):
            store.save(LINK, link.state(), blob_names=link.ours.blob_names(), blob=link.ours.blob)
        assert _tables(tmp_path) == before, "a failed save changed a row"
        _set_read_only(store, False)
        # The same store, which must not believe the failed save's rows are on disk.
        store.save(LINK, link.state(), blob_names=link.ours.blob_names(), blob=link.ours.blob)
    assert _tables(tmp_path) != before
    loaded, blobs = _reloaded(tmp_path)
    assert loaded == link.state()
    assert set(_ledger_rows(tmp_path)) == set(link.ours.block_ids)


def test_a_runtime_whose_save_failed_restarts_on_the_last_saved_ledgers(tmp_path: Path) -> None:
    link = parse_topology(_TOPOLOGY).links_of("alpha")[0]
    rng = np.random.default_rng(12)
    bootstrap = rng.bytes(32 * 16)
    store = LinkStore(tmp_path, "alpha")
    rt = LinkRuntime(link, "alpha", bootstrap, store)
    for seq in range(3):
        rt.pool.add_block(f"{link.link_id}/{seq}", rng.bytes(128))
    rt.persist()
    rt.pool.commit(rt.pool.reserve(10))
    rt.persist()
    saved_audit = rt.pool.audit()
    rt.pool.commit(rt.pool.reserve(10))  # used in memory only
    _set_read_only(store, True)
    with pytest.raises(StorageFailure):
        rt.persist()
    store.close()
    again = LinkRuntime(link, "alpha", bootstrap, LinkStore(tmp_path, "alpha"))
    assert again.pool.audit() == saved_audit != rt.pool.audit()
    assert again.store is not None
    again.store.close()


# -- a file the schema version 1 store wrote ---------------------------------------


def test_a_version_1_file_loads_and_its_first_save_brings_its_rows_up(tmp_path: Path) -> None:
    """The fixture is what the store before ledger rows wrote (``make_fixture.py`` beside it)."""
    for name in ("links.sqlite3", "storage.key"):
        shutil.copyfile(V1_FIXTURE / name, tmp_path / name)
    expected = json.loads((V1_FIXTURE / "expected.json").read_text())
    with contextlib.closing(sqlite3.connect(tmp_path / DATABASE_FILE)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
    topology_link = parse_topology(_TOPOLOGY).links_of("alpha")[0]
    store = LinkStore(tmp_path, "alpha")
    with contextlib.closing(sqlite3.connect(tmp_path / DATABASE_FILE)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 2
    assert store.load(LINK) == expected[LINK] and store.load("alpha-gamma") == expected["alpha-gamma"]
    rt = LinkRuntime(topology_link, "alpha", b"\x00" * 32 * 16, store)  # the saved MAC-key reserve wins
    assert rt.pool.block_ids == tuple(b["block_id"] for b in expected[LINK]["pool"]["blocks"])
    assert (rt.next_block_seq, rt.next_frame_id, rt.counters.blocks_done) == (5, 11, 5)
    v1_row = _link_row_nonce(tmp_path)
    assert _ledger_rows(tmp_path) == {}

    rt.persist()  # the first save writes the new layout
    assert _link_row_nonce(tmp_path) != v1_row
    assert set(_ledger_rows(tmp_path)) == set(rt.pool.block_ids)
    store.close()
    assert _reloaded(tmp_path)[0] == expected[LINK]  # the same state, now from ledger rows
    again = LinkRuntime(topology_link, "alpha", b"\x00" * 32 * 16, LinkStore(tmp_path, "alpha"))
    assert again.pool.audit() == rt.pool.audit() and again.auth.take(2) == rt.auth.take(2)
    peer_range = [KeyRange(f"{LINK}/2", 128, 16)]
    assert again.pool.consume_ranges(peer_range, Role.BOB) == rt.pool.consume_ranges(peer_range, Role.BOB)
    assert again.store is not None
    again.store.close()
