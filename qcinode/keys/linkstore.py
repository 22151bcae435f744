"""The durable, encrypted-at-rest store of every link's state at one node.

Theory of operation:
    * **What is stored.** Per link, the JSON-able dict the node builds from
      :meth:`LinkKeyPool.to_state`, :meth:`AuthKeyReserve.to_state` and its
      counters, in three kinds of rows (below): the link row, one ledger row
      per open block, and blobs. It holds secret key material, so it never
      reaches the disk in the clear and never appears in an exception message.
    * **Blobs.** The parts of a state that never change once written — a
      pool's key halves and closed-block summaries
      (:meth:`LinkKeyPool.to_state` with ``inline=False``), the MAC-key
      reserve's chunks — are stored apart, one row per named blob, written
      once and deleted when the state no longer names them, in the same
      transaction as the state. A save then costs what the open blocks'
      ledgers and the closed blocks' IDs cost, not what the pool holds
      (measured, 12.5 kB blocks: 800 blocks 283 ms per save inline, 9.8 ms
      with blobs; 100 blocks 35 ms and 1.6 ms).
    * **Ledger rows: a save writes what changed.** A relay hop uses pad of a
      link, which changes one open block's ledger and nothing else of the
      link's state; rewriting every open block's ledger and the rest of the
      state for it cost most of the save. So each entry of a pool state's
      ``"blocks"`` (an open block: its ledger, its halves named) is a row of
      its own keyed by link and block ID, and the link row holds the rest,
      with the blocks' IDs in their order. The store remembers, per link,
      what its rows hold as it last wrote them, and a save writes only

      - the ledger rows whose entry is not the one last written: the pool
        builds a block's entry anew only when its ledger changes
        (:meth:`LinkKeyPool.to_state` caches it until then), so an
        unchanged block is the same object, found by identity (or an equal
        one, rebuilt, e.g. a block under the pad stock's reservations);
      - the link row, if its JSON differs from the last written;
      - deletions of the ledger rows of blocks no longer in the state
        (closed, discarded, folded) and of unnamed blobs,

      all in the one transaction of the save. The memory changes only once
      that transaction has committed, so after a failed save the next one
      writes everything the failed one would have. A store opened on an
      existing file knows which ledger rows are on disk but not what they
      hold: its first save of a link rewrites them all. :meth:`LinkStore.load`
      puts the ledgers back in their places and returns exactly the state
      that was saved. A state whose ``"pool"`` has no such ``"blocks"`` (a
      list of objects with distinct ``"block_id"`` strings) is one row.
    * **Layout.** ``data_dir/links.sqlite3``, tables
      ``links(link_id TEXT PRIMARY KEY, nonce BLOB, ciphertext BLOB, updated_at REAL)``
      (``updated_at``: when the link row was last written),
      ``link_ledgers(link_id, block_id, nonce, ciphertext)`` and
      ``link_blobs(link_id, name, nonce, ciphertext)``.
      ``PRAGMA user_version`` records the schema version, now 2; an older
      qcinode refuses the file rather than misread it.
    * **Schema version 1** files (no ledger rows; each link row the whole
      state) are brought up on open: the ``link_ledgers`` table is created
      and the version set, their link rows still load as they are, and each
      link's first save rewrites its row in the new form, with its ledger
      rows. Blobs are unchanged.
    * **Encryption.** Each row is ``AES-256-GCM(zlib(json(...)))`` (a blob:
      its bytes) under the node's :class:`StorageKey`, with a fresh random
      96-bit nonce per write (random nonces stay safe for far more than 2^32
      writes' worth of a node's lifetime would ever need, NIST SP 800-38D
      §8.3). The associated data binds the row format's version, the node
      name and the link ID, so a row copied to another link, another node or
      another format fails to decrypt instead of loading the wrong link's
      ledger; a ledger row's adds its block ID and a blob's its name, so a
      row moved to another block or name fails too. Link and ledger rows
      are format 2; blobs, never rewritten, keep format 1; a link row of
      format 1 is one schema version 1 wrote (the whole state). A ledger
      row the link row does not name, or one it names that is missing, is
      refused on load.
    * **Compression.** The JSON is compressed before encryption (ciphertext
      does not compress). Pools are mostly hex, which has no repeats for
      LZ77 to find but only 16 symbols, so Huffman-only deflate halves it at
      about twice the speed of zlib level 1 (and a smaller output).
    * **Crash safety.** SQLite in WAL mode with ``synchronous=FULL``: a
      :meth:`LinkStore.save` is one transaction that is durable once it
      returns, and a process killed at any moment leaves each link's rows
      either as they were or as the new state, never a mix. The AEAD tag would
      refuse a torn row anyway.
    * **Failures are loud.** Anything that stops a state from being saved or
      read back faithfully (unwritable or full directory, corrupt database,
      tampered row, wrong storage key) raises
      :class:`~qcinode.errors.KeyStoreError` naming the link and the file;
      storage faults (full, read-only, I/O error, no permission) raise its
      subclass :class:`StorageFailure`, which the node retries. A failed
      save changes nothing on disk, and the node must not send anything that
      depends on it: key bytes used on the wire but not recorded could be
      used twice.
    * **Limits.** By default the key lives next to the database, so this
      protects copies of the database file (backups) and detects tampering,
      not an attacker who can read the whole data directory. With the key
      outside the data directory (``qcinode node --storage-key-file``, a
      Kubernetes Secret in the rendered manifests) a copy of the data
      volume alone reveals nothing. Integrity is per
      row, not freshness: replacing the whole file, or one of its rows, with
      an older copy of itself is not detectable from inside it (no more
      than it was when each link was one row).
    * **Threads.** One connection, guarded by a lock, so a node may call
      :meth:`LinkStore.save` from ``asyncio.to_thread`` workers; saves run one
      at a time, each comparing with what the last one wrote.
"""

from __future__ import annotations

import json
import os
import secrets
import struct
import threading
import time
import zlib
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from qcinode.errors import KeyStoreError, LocalProtocolError, StorageFailure
from qcinode.keys._sqlite import (
    SqliteStore,
    make_dir,
    open_database,
    os_reason,
    require_name,
)

__all__ = [
    "DATABASE_FILE",
    "KEY_FILE",
    "SCHEMA_VERSION",
    "STORAGE_KEY_BYTES",
    "LinkSave",
    "LinkStore",
    "StorageFailure",
    "StorageKey",
]

#: Storage key file name in the data directory.
KEY_FILE = "storage.key"

#: Database file name in the data directory.
DATABASE_FILE = "links.sqlite3"

#: The database layout's version (``PRAGMA user_version``): 2 added ``link_ledgers`` and the
#: link row's envelope. A version 1 file is brought up on open; its rows are read as they are and
#: rewritten in the new form by their link's first save.
SCHEMA_VERSION = 2

# The format version each kind of row binds in its associated data. Link rows: 1 held the whole
# state, 2 the envelope whose open blocks' ledgers are rows of their own (still read: a version 1
# file's rows until their first save). Blobs never change once written, so they keep version 1.
_LINK_ROW_VERSION = 2
_LINK_ROW_READ_VERSIONS = (2, 1)
_BLOB_ROW_VERSION = 1
_LEDGER_ROW_VERSION = 2

STORAGE_KEY_BYTES = 32  # AES-256-GCM
NONCE_BYTES = 12  # AES-GCM, one random nonce per row
_AAD_DOMAIN = b"qcinode/linkstore\x00"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS links (
    link_id TEXT PRIMARY KEY,
    nonce BLOB NOT NULL,
    ciphertext BLOB NOT NULL,
    updated_at REAL NOT NULL
)
"""

# Immutable named parts of a link's state (a pool's key halves, closed-block
# summaries), written once each rather than with every save. Added without a
# schema bump: CREATE IF NOT EXISTS brings an older file up.
_BLOB_SCHEMA = """
CREATE TABLE IF NOT EXISTS link_blobs (
    link_id TEXT NOT NULL,
    name TEXT NOT NULL,
    nonce BLOB NOT NULL,
    ciphertext BLOB NOT NULL,
    PRIMARY KEY (link_id, name)
)
"""
_BLOB_AAD_DOMAIN = b"qcinode/linkstore/blob\x00"

# Each open block's ledger (its entry in the pool state's "blocks"), one row per block, rewritten
# only when that block changed and deleted with the save whose state no longer holds the block.
_LEDGER_SCHEMA = """
CREATE TABLE IF NOT EXISTS link_ledgers (
    link_id TEXT NOT NULL,
    block_id TEXT NOT NULL,
    nonce BLOB NOT NULL,
    ciphertext BLOB NOT NULL,
    PRIMARY KEY (link_id, block_id)
)
"""
_LEDGER_AAD_DOMAIN = b"qcinode/linkstore/ledger\x00"


class StorageKey:
    """A node's 256-bit storage key. The bytes never leave this object."""

    __slots__ = ("_aead", "_path")

    def __init__(self, key: bytes, path: Path | None = None) -> None:
        """Wrap raw key bytes.

        Args:
            key: 32 secret bytes.
            path: The file it came from (for messages only).

        Raises:
            KeyStoreError: If ``key`` is not 32 bytes.
        """
        if not isinstance(key, (bytes, bytearray)) or len(key) != STORAGE_KEY_BYTES:
            where = f" in {path}" if path is not None else ""
            raise KeyStoreError(f"storage key{where} must be {STORAGE_KEY_BYTES} bytes")
        self._aead = AESGCM(bytes(key))
        self._path = path

    @property
    def path(self) -> Path | None:
        """The key file, if the key was loaded from or written to one."""
        return self._path

    @classmethod
    def load_or_create(cls, data_dir: Path) -> StorageKey:
        """Read ``data_dir/storage.key``, creating it (mode 0600) if absent.

        Creation is atomic: the key is written and synced under a temporary
        name, then hard-linked into place, so a crash never leaves a short
        key file and two processes racing to create it agree on one key.

        Raises:
            StorageFailure: If the directory or file cannot be created or read.
            KeyStoreError: If the file does not hold exactly 32 bytes.
        """
        path = Path(data_dir) / KEY_FILE
        try:
            return cls(path.read_bytes(), path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            reason = os_reason(exc)
            raise StorageFailure(f"cannot read storage key {path}: {reason}", path=path, reason=reason) from None
        make_dir(path.parent)
        return cls._create(path)

    @classmethod
    def load_or_create_file(cls, path: Path) -> StorageKey:
        """Read the key file ``path`` (anywhere, e.g. a mounted Kubernetes Secret), creating it (mode 0600) if absent.

        Keeping the key outside the data directory means a copy of the data
        volume alone reveals nothing. Creation is atomic as in
        :meth:`load_or_create`; a missing parent directory is created 0700.

        Raises:
            StorageFailure: If the file cannot be read or created.
            KeyStoreError: If the file does not hold exactly 32 bytes.
        """
        path = Path(path)
        try:
            return cls(path.read_bytes(), path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            reason = os_reason(exc)
            raise StorageFailure(f"cannot read storage key {path}: {reason}", path=path, reason=reason) from None
        make_dir(path.parent)
        return cls._create(path)

    @classmethod
    def _create(cls, path: Path) -> StorageKey:
        key = os.urandom(STORAGE_KEY_BYTES)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.fchmod(fd, 0o600)  # in case of an unusual umask or ACL default
                with os.fdopen(fd, "wb", closefd=False) as f:
                    f.write(key)
                    f.flush()
                    os.fsync(f.fileno())
            finally:
                os.close(fd)
            try:
                os.link(tmp, path)  # atomic and never replaces an existing key
            except FileExistsError:
                # Another process created it first: use theirs.
                return cls(path.read_bytes(), path)
            _fsync_dir(path.parent)
        except OSError as exc:
            reason = os_reason(exc)
            raise StorageFailure(f"cannot create storage key {path}: {reason}", path=path, reason=reason) from None
        finally:
            try:
                tmp.unlink()
            except OSError:
                pass
        return cls(key, path)

    def encrypt(self, plaintext: bytes, associated_data: bytes) -> tuple[bytes, bytes]:
        """Encrypt under a fresh random nonce; returns ``(nonce, ciphertext)``."""
        nonce = os.urandom(NONCE_BYTES)
        return nonce, self._aead.encrypt(nonce, plaintext, associated_data)

    def decrypt(self, nonce: bytes, ciphertext: bytes, associated_data: bytes) -> bytes:
        """Decrypt and authenticate.

        Raises:
            cryptography.exceptions.InvalidTag: If the ciphertext, nonce or
                associated data differ from what was encrypted, or the key is
                another one.
        """
        return self._aead.decrypt(nonce, ciphertext, associated_data)

    def __repr__(self) -> str:
        # Never show key material.
        return f"StorageKey(path={str(self._path)!r})"


@dataclass(frozen=True, slots=True)
class LinkSave:
    """One link's state to write with :meth:`LinkStore.save_many` (the arguments of :meth:`LinkStore.save`)."""

    link_id: str
    state: dict[str, Any]
    blob_names: Collection[str] | None = None
    blob: Callable[[str], bytes] | None = None


class LinkStore(SqliteStore):
    """Every link's state at one node, in ``data_dir/links.sqlite3``, encrypted."""

    __slots__ = ("_key", "_clock", "_blob_names", "_on_disk", "_save_lock")

    _KIND = "link store"

    def __init__(
        self,
        data_dir: Path,
        node_name: str,
        *,
        clock: Callable[[], float] = time.time,
        storage_key: StorageKey | None = None,
    ) -> None:
        """Open (creating if needed) the node's link store.

        Args:
            data_dir: The node's data directory; created if missing.
            node_name: This node's name; bound into every row.
            clock: Wall clock for the ``updated_at`` column.
            storage_key: The node's storage key, if it lives outside the
                data directory; None: ``data_dir/storage.key`` (created if
                absent and the database holds no rows).

        Raises:
            StorageFailure: If the directory, database or storage key cannot
                be created or opened (full, read-only, no permission, I/O
                error, damaged file), or the directory does not take a probe
                file.
            KeyStoreError: If the database is of a newer schema, or the
                storage key is missing while the database holds rows (a new
                key could never read them).
            LocalProtocolError: If ``node_name`` is not a non-empty str.
        """
        data_dir = Path(data_dir)
        super().__init__(data_dir, node_name, DATABASE_FILE)
        self._clock = clock
        self._blob_names: dict[str, set[str]] = {}  # per link: the blobs on disk, once known
        self._on_disk: dict[str, _OnDisk] = {}  # per link: its rows as this store last wrote them
        self._save_lock = threading.Lock()  # one save at a time: each compares with what the last one wrote
        key_existed = storage_key is not None or (data_dir / KEY_FILE).exists()
        self._conn = open_database(self._path, (_SCHEMA, _BLOB_SCHEMA, _LEDGER_SCHEMA), SCHEMA_VERSION)
        try:
            if storage_key is not None:
                self._key = storage_key
                return
            if not key_existed:
                rows = self._row_count()
                if rows:
                    raise KeyStoreError(
                        f"storage key {data_dir / KEY_FILE} is missing but {self._path} holds "
                        f"{rows} link state(s) that only it can decrypt; restore the key file"
                    )
            self._key = StorageKey.load_or_create(data_dir)
        except BaseException:
            self.close()
            raise

    def save(
        self,
        link_id: str,
        state: dict[str, Any],
        *,
        blob_names: Collection[str] | None = None,
        blob: Callable[[str], bytes] | None = None,
    ) -> None:
        """Replace one link's state, atomically and durably (one transaction).

        When this returns the state is on disk; if it raises, the previous
        state of the link is unchanged.

        With ``blob_names``, the link's blobs become exactly those names in
        the same transaction: a name not on disk yet is written once, with
        the bytes ``blob(name)`` gives, and a blob on disk whose name is not
        listed is deleted. A blob's bytes never change under its name.

        A pool state's open blocks (``state["pool"]["blocks"]``, entries with
        distinct ``"block_id"`` strings) are rows of their own, and only the
        rows that differ from what this store last wrote are written (module
        docstring, *What a save writes*). The store keeps references to the
        state's parts to compare the next save's with: pass a new object for
        a part that changed, never the same one changed in place (the pool's
        stored forms and the runtime's snapshots are built new).

        Args:
            link_id: The link.
            state: A JSON-able dict (no NaN or infinities).
            blob_names: The names of the link's immutable parts, or None to
                leave its blobs as they are.
            blob: The bytes of a named part (required with ``blob_names``).

        Raises:
            StorageFailure: If the state could not be written (full or
                unwritable directory, I/O error, corrupt database).
            KeyStoreError: If the store is closed.
            LocalProtocolError: If ``link_id`` is not a non-empty str or
                ``state`` is not a JSON-able dict.
        """
        self.save_many([LinkSave(link_id, state, blob_names, blob)])

    def save_many(self, saves: Sequence[LinkSave]) -> None:
        """Replace several links' states in ONE transaction (one fsync): all of them, or none.

        Each entry as :meth:`save`, each link at most once. A relay hop
        through this node uses pad of two links (the one it came in on, the
        one it goes out on); both ledgers go to disk together, before the hop
        is sent on (unless its pad came from the link's pad stock, on disk as
        used already).

        Raises:
            StorageFailure, KeyStoreError, LocalProtocolError: As :meth:`save`;
                if it raises, no link's state changed.
        """
        with self._save_lock:
            seen: set[str] = set()
            writes: list[_Write] = []
            for entry in saves:
                if entry.link_id in seen:
                    raise LocalProtocolError(f"save_many: link {entry.link_id!r} given twice")
                writes.append(self._prepare(entry))
                seen.add(entry.link_id)
            if not writes:
                return
            what = f"link {writes[0].link_id!r}" if len(writes) == 1 else "links " + ", ".join(repr(w.link_id) for w in writes)
            with self._transaction(f"cannot save {what} to {self._path}") as conn:
                for w in writes:
                    # A hop's save has one ledger row to write and nothing else: skip the empty statements.
                    if w.blobs_added:
                        conn.executemany("INSERT INTO link_blobs (link_id, name, nonce, ciphertext) VALUES (?, ?, ?, ?)", w.blobs_added)
                    if w.blobs_gone:
                        conn.executemany("DELETE FROM link_blobs WHERE link_id = ? AND name = ?", w.blobs_gone)
                    if w.ledgers_gone:
                        conn.executemany("DELETE FROM link_ledgers WHERE link_id = ? AND block_id = ?", w.ledgers_gone)
                    if w.ledgers_written:
                        conn.executemany(
                            "INSERT INTO link_ledgers (link_id, block_id, nonce, ciphertext) VALUES (?, ?, ?, ?) "
                            "ON CONFLICT (link_id, block_id) DO UPDATE SET nonce = excluded.nonce, ciphertext = excluded.ciphertext",
                            w.ledgers_written,
                        )
                    if w.row is not None:
                        conn.execute(
                            "INSERT INTO links (link_id, nonce, ciphertext, updated_at) VALUES (?, ?, ?, ?) "
                            "ON CONFLICT (link_id) DO UPDATE SET nonce = excluded.nonce, "
                            "ciphertext = excluded.ciphertext, updated_at = excluded.updated_at",
                            (w.link_id, *w.row, float(self._clock())),
                        )
            # Committed: the rows are now what these saves wrote.
            for w in writes:
                self._on_disk[w.link_id] = _OnDisk(w.document, dict(w.ledgers))
                if w.blob_names is not None:
                    self._blob_names[w.link_id] = w.blob_names

    def load_blobs(self, link_id: str) -> dict[str, bytes]:
        """Every blob of one link, by name (see :meth:`save`); empty if none.

        Raises:
            KeyStoreError: If a blob fails authentication (altered, or moved
                from another name, link or node), the database is corrupt, or
                the store is closed.
        """
        require_name(link_id, "link_id")
        with self._reading(f"cannot read the blobs of link {link_id!r} from {self._path}") as conn:
            rows = conn.execute("SELECT name, nonce, ciphertext FROM link_blobs WHERE link_id = ?", (link_id,)).fetchall()
        blobs: dict[str, bytes] = {}
        for name, nonce, ciphertext in rows:
            if not (isinstance(name, str) and isinstance(nonce, bytes) and len(nonce) == NONCE_BYTES and isinstance(ciphertext, bytes)):
                raise KeyStoreError(f"a blob row of link {link_id!r} in {self._path} is malformed")
            try:
                blobs[name] = self._key.decrypt(nonce, ciphertext, self._blob_associated_data(link_id, name))
            except InvalidTag:
                raise KeyStoreError(
                    f"blob {name!r} of link {link_id!r} in {self._path} failed authentication: it was altered "
                    f"or moved from another name, link or node, or {self._key.path} is not the storage key it was written with"
                ) from None
        self._blob_names[link_id] = set(blobs)
        return blobs

    def load(self, link_id: str) -> dict[str, Any] | None:
        """One link's last saved state, or None if it was never saved.

        The state is the one :meth:`save` was given, its open blocks'
        ledgers put back in their places from their own rows.

        Raises:
            KeyStoreError: If a row fails authentication (tampered, copied
                from another link, block or node, or a different storage
                key), a block's ledger row is missing or not named by the
                state, the database is corrupt, or the store is closed.
            LocalProtocolError: If ``link_id`` is not a non-empty str.
        """
        require_name(link_id, "link_id")
        with self._reading(f"cannot read link {link_id!r} from {self._path}") as conn:
            row = conn.execute(
                "SELECT nonce, ciphertext FROM links WHERE link_id = ?", (link_id,)
            ).fetchone()
            ledger_rows = conn.execute(
                "SELECT block_id, nonce, ciphertext FROM link_ledgers WHERE link_id = ?", (link_id,)
            ).fetchall()
        if row is None:
            if ledger_rows:
                raise KeyStoreError(f"{self._path} holds ledger rows of link {link_id!r} but no state of it")
            return None
        nonce, ciphertext = row
        if not (
            isinstance(nonce, bytes)
            and len(nonce) == NONCE_BYTES
            and isinstance(ciphertext, bytes)
        ):
            raise KeyStoreError(f"row of link {link_id!r} in {self._path} is malformed")
        version, plaintext = self._decrypt_link_row(link_id, nonce, ciphertext)
        document = self._decode(plaintext, f"state of link {link_id!r}")
        state: Any = document
        split: Any = False  # schema version 1 wrote the whole state, and no ledger rows
        if version != 1:
            state, split = document.get("state"), document.get("ledgers")
        if not isinstance(state, dict) or not isinstance(split, bool):
            raise KeyStoreError(f"state of link {link_id!r} in {self._path} is authentic but not a valid document")
        ledgers = {block_id: self._ledger(link_id, block_id, nonce, ciphertext) for block_id, nonce, ciphertext in ledger_rows}
        if not split:
            if ledgers:
                raise KeyStoreError(
                    f"{self._path} holds ledger rows of link {link_id!r} that its state does not name: "
                    f"{', '.join(sorted(map(repr, ledgers)))}"
                )
            return state
        return self._reassembled(link_id, state, ledgers)

    def __repr__(self) -> str:
        return f"LinkStore(path={str(self._path)!r}, node_name={self._node_name!r})"

    # -- internals -------------------------------------------------------

    def _prepare(self, entry: LinkSave) -> _Write:
        """Encrypt what differs from the link's rows on disk (no I/O but, once, listing them)."""
        link_id, state = entry.link_id, entry.state
        require_name(link_id, "link_id")
        if not isinstance(state, dict):
            raise LocalProtocolError(f"state must be a dict, got {type(state).__name__}")
        on_disk = self._rows_on_disk(link_id)
        split = _split(state)
        row_state, ledgers = split if split is not None else (state, {})
        document = _json(link_id, {"ledgers": split is not None, "state": row_state})
        row = None
        if document != on_disk.document:
            row = self._key.encrypt(_compress(document.encode("utf-8")), self._associated_data(link_id, _LINK_ROW_VERSION))
        ledgers_written: list[tuple[str, str, bytes, bytes]] = []
        for block_id, ledger in ledgers.items():
            before = on_disk.ledgers.get(block_id)
            # The pool builds a block's entry anew when its ledger changes, so an unchanged
            # block is the same object as last time (or, rebuilt, an equal one).
            if before is not None and (ledger is before or ledger == before):
                continue
            plaintext = _compress(_json(link_id, ledger).encode("utf-8"))
            ledgers_written.append((link_id, block_id, *self._key.encrypt(plaintext, self._ledger_associated_data(link_id, block_id))))
        ledgers_gone = [(link_id, block_id) for block_id in on_disk.ledgers if block_id not in ledgers]
        names = set(entry.blob_names) if entry.blob_names is not None else None
        blobs_added: list[tuple[str, str, bytes, bytes]] = []
        blobs_gone: list[tuple[str, str]] = []
        if names is not None:
            blob = entry.blob
            if blob is None:
                raise LocalProtocolError("save: blob_names needs blob")
            stored = self._stored_blob_names(link_id)
            for name in sorted(names - stored):
                require_name(name, "blob name")
                blobs_added.append((link_id, name, *self._key.encrypt(blob(name), self._blob_associated_data(link_id, name))))
            blobs_gone = [(link_id, name) for name in stored - names]
        return _Write(
            link_id, document, row, dict(ledgers), ledgers_written, ledgers_gone, names, blobs_added, blobs_gone
        )

    def _rows_on_disk(self, link_id: str) -> _OnDisk:
        """What the link's rows hold; listed from disk (contents unknown) before this store's first save of it."""
        known = self._on_disk.get(link_id)
        if known is None:
            with self._reading(f"cannot read the ledgers of link {link_id!r} from {self._path}") as conn:
                rows = conn.execute("SELECT block_id FROM link_ledgers WHERE link_id = ?", (link_id,)).fetchall()
            known = self._on_disk[link_id] = _OnDisk(None, {str(block_id): None for (block_id,) in rows})
        return known

    def _decrypt_link_row(self, link_id: str, nonce: bytes, ciphertext: bytes) -> tuple[int, bytes]:
        """(format version, plaintext) of a link row: this version's, else one schema version 1 wrote."""
        for version in _LINK_ROW_READ_VERSIONS:
            try:
                return version, self._key.decrypt(nonce, ciphertext, self._associated_data(link_id, version))
            except InvalidTag:
                continue
        raise KeyStoreError(
            f"state of link {link_id!r} in {self._path} failed authentication: the row was "
            f"altered or copied from another link or node, or {self._key.path} is not the "
            "storage key it was written with"
        )

    def _ledger(self, link_id: str, block_id: Any, nonce: Any, ciphertext: Any) -> dict[str, Any]:
        """One block's ledger row, authenticated and decoded."""
        if not (isinstance(block_id, str) and isinstance(nonce, bytes) and len(nonce) == NONCE_BYTES and isinstance(ciphertext, bytes)):
            raise KeyStoreError(f"a ledger row of link {link_id!r} in {self._path} is malformed")
        try:
            plaintext = self._key.decrypt(nonce, ciphertext, self._ledger_associated_data(link_id, block_id))
        except InvalidTag:
            raise KeyStoreError(
                f"ledger of block {block_id!r} of link {link_id!r} in {self._path} failed authentication: it was "
                f"altered or moved from another block, link or node, or {self._key.path} is not the storage key "
                "it was written with"
            ) from None
        ledger = self._decode(plaintext, f"ledger of block {block_id!r} of link {link_id!r}")
        if ledger.get("block_id") != block_id:  # authentic, so a writer bug: say so rather than load it
            raise KeyStoreError(f"ledger of block {block_id!r} of link {link_id!r} in {self._path} holds another block")
        return ledger

    def _reassembled(self, link_id: str, state: dict[str, Any], ledgers: dict[str, dict[str, Any]]) -> dict[str, Any]:
        """``state`` with each block ID of its pool's "blocks" replaced by that block's ledger row."""
        pool = state.get("pool")
        block_ids = pool.get("blocks") if isinstance(pool, dict) else None
        if not isinstance(pool, dict) or not isinstance(block_ids, list) or not all(isinstance(b, str) for b in block_ids):
            raise KeyStoreError(f"state of link {link_id!r} in {self._path} is authentic but not a valid document")
        missing = [block_id for block_id in block_ids if block_id not in ledgers]
        if missing:
            raise KeyStoreError(
                f"state of link {link_id!r} in {self._path} names the ledger of block(s) "
                f"{', '.join(map(repr, missing))}, whose row is missing"
            )
        extra = set(ledgers) - set(block_ids)
        if extra:
            raise KeyStoreError(
                f"{self._path} holds ledger rows of link {link_id!r} that its state does not name: "
                f"{', '.join(sorted(map(repr, extra)))}"
            )
        return {**state, "pool": {**pool, "blocks": [ledgers[block_id] for block_id in block_ids]}}

    def _decode(self, plaintext: bytes, what: str) -> dict[str, Any]:
        try:
            document = json.loads(zlib.decompress(plaintext).decode("utf-8"))
        except (zlib.error, UnicodeDecodeError, ValueError):
            # Authentic but unreadable: a writer bug, not tampering. Chain
            # nothing: the exceptions may quote the decrypted plaintext.
            raise KeyStoreError(f"{what} in {self._path} is authentic but not a valid document") from None
        if not isinstance(document, dict):
            raise KeyStoreError(f"{what} in {self._path} is not a JSON object")
        return document

    def _row_count(self) -> int:
        with self._reading(f"cannot read {self._path}") as conn:
            count: int = conn.execute("SELECT count(*) FROM links").fetchone()[0]
        return count

    def _stored_blob_names(self, link_id: str) -> set[str]:
        known = self._blob_names.get(link_id)
        if known is None:
            with self._reading(f"cannot read the blobs of link {link_id!r} from {self._path}") as conn:
                rows = conn.execute("SELECT name FROM link_blobs WHERE link_id = ?", (link_id,)).fetchall()
            known = self._blob_names[link_id] = {str(name) for (name,) in rows}
        return known

    def _blob_associated_data(self, link_id: str, name: str) -> bytes:
        return _BLOB_AAD_DOMAIN + self._associated_data(link_id, _BLOB_ROW_VERSION) + _length_prefixed(name)

    def _ledger_associated_data(self, link_id: str, block_id: str) -> bytes:
        return _LEDGER_AAD_DOMAIN + self._associated_data(link_id, _LEDGER_ROW_VERSION) + _length_prefixed(block_id)

    def _associated_data(self, link_id: str, version: int) -> bytes:
        # Length-prefixed, so ("ab", "c") and ("a", "bc") differ.
        node = self._node_name.encode("utf-8")
        return b"".join((_AAD_DOMAIN, struct.pack(">HI", version, len(node)), node, _length_prefixed(link_id)))


@dataclass(slots=True)
class _OnDisk:
    """One link's rows as this store last wrote them (what a save compares with)."""

    document: str | None  # the link row's JSON; None: not written since the store opened
    ledgers: dict[str, dict[str, Any] | None]  # block ID -> its ledger as written (None: on disk, not known)


@dataclass(slots=True)
class _Write:
    """One link's share of a transaction: the rows that changed, encrypted."""

    link_id: str
    document: str
    row: tuple[bytes, bytes] | None  # (nonce, ciphertext) of the link row, None: unchanged
    ledgers: dict[str, dict[str, Any] | None]  # every open block's ledger once this is written
    ledgers_written: list[tuple[str, str, bytes, bytes]]
    ledgers_gone: list[tuple[str, str]]
    blob_names: set[str] | None
    blobs_added: list[tuple[str, str, bytes, bytes]]
    blobs_gone: list[tuple[str, str]]


def _split(state: dict[str, Any]) -> tuple[dict[str, Any], dict[str, dict[str, Any]]] | None:
    """(the state with its pool's blocks as IDs, each block's entry by ID), or None if it holds no pool's blocks.

    A pool state's ``"blocks"`` is a list of entries with distinct non-empty
    ``"block_id"`` strings; any other state is stored whole.
    """
    pool = state.get("pool")
    if not isinstance(pool, dict):
        return None
    blocks = pool.get("blocks")
    if not isinstance(blocks, list):
        return None
    ledgers: dict[str, dict[str, Any]] = {}
    for entry in blocks:
        block_id = entry.get("block_id") if isinstance(entry, dict) else None
        if not isinstance(block_id, str) or not block_id or block_id in ledgers:
            return None
        ledgers[block_id] = entry
    return {**state, "pool": {**pool, "blocks": list(ledgers)}}, ledgers


def _json(link_id: str, document: dict[str, Any]) -> str:
    try:
        return json.dumps(document, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        # The message names a type or a float, never a value of the state.
        raise LocalProtocolError(f"state of link {link_id!r} is not JSON-able: {exc}") from None


def _length_prefixed(text: str) -> bytes:
    encoded = text.encode("utf-8")
    return struct.pack(">I", len(encoded)) + encoded


def _compress(data: bytes) -> bytes:
    """Huffman-only deflate in a standard zlib stream (see the module docstring)."""
    compressor = zlib.compressobj(1, zlib.DEFLATED, zlib.MAX_WBITS, 9, zlib.Z_HUFFMAN_ONLY)
    return compressor.compress(data) + compressor.flush()


def _fsync_dir(path: Path) -> None:
    """Make a new directory entry durable (best effort where unsupported)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
