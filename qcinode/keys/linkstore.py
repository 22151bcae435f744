"""The durable, encrypted-at-rest store of every link's state at one node.

Theory of operation:
    * **What is stored.** One row per link: the JSON-able dict the node builds
      from :meth:`LinkKeyPool.to_state`, :meth:`AuthKeyReserve.to_state` and
      its counters. It holds secret key material (hex), so it never reaches
      the disk in the clear and never appears in an exception message.
    * **Blobs.** The parts of a state that never change once written — a
      pool's key halves and closed-block summaries
      (:meth:`LinkKeyPool.to_state` with ``inline=False``) — are stored apart,
      one row per named blob, written once and deleted when the state no
      longer names them, in the same transaction as the state. A save then
      costs what the open blocks' ledgers and the closed blocks' IDs cost, not
      what the pool holds (measured, 12.5 kB blocks: 800 blocks 283 ms per save inline, 9.8 ms
      with blobs; 100 blocks 35 ms and 1.6 ms).
    * **Layout.** ``data_dir/links.sqlite3``, tables
      ``links(link_id TEXT PRIMARY KEY, nonce BLOB, ciphertext BLOB, updated_at REAL)``
      and ``link_blobs(link_id, name, nonce, ciphertext)``.
      ``PRAGMA user_version`` records the schema version.
    * **Encryption.** Each row is ``AES-256-GCM(zlib(json(state)))`` under the
      node's :class:`StorageKey`, with a fresh random 96-bit nonce per write
      (random nonces stay safe for far more than 2^32 writes' worth of a
      node's lifetime would ever need, NIST SP 800-38D §8.3). The associated
      data binds the schema version, the node name and the link ID, so a row
      copied to another link, another node or another schema fails to
      decrypt instead of loading the wrong link's ledger. A blob's associated
      data adds its name, so a blob moved to another name fails too.
    * **Compression.** The JSON is compressed before encryption (ciphertext
      does not compress). Pools are mostly hex, which has no repeats for
      LZ77 to find but only 16 symbols, so Huffman-only deflate halves it at
      about twice the speed of zlib level 1 (and a smaller output).
    * **Crash safety.** SQLite in WAL mode with ``synchronous=FULL``: a
      :meth:`LinkStore.save` is one transaction that is durable once it
      returns, and a process killed at any moment leaves each link's row
      either as it was or as the new state, never a mix. The AEAD tag would
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
      row, not freshness: replacing the whole file with an older copy of
      itself is not detectable from inside it.
    * **Threads.** One connection, guarded by a lock, so a node may call
      :meth:`LinkStore.save` from ``asyncio.to_thread`` workers.
"""

from __future__ import annotations

import json
import os
import secrets
import struct
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

#: Row format version; part of every row's associated data.
SCHEMA_VERSION = 1

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

    __slots__ = ("_key", "_clock", "_blob_names")

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
        key_existed = storage_key is not None or (data_dir / KEY_FILE).exists()
        self._conn = open_database(self._path, (_SCHEMA, _BLOB_SCHEMA), SCHEMA_VERSION)
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

        Each entry as :meth:`save`. A relay hop through this node uses pad
        of two links (the one it came in on, the one it goes out on); both
        ledgers go to disk together, before the hop is sent on (unless its
        pad came from the link's pad stock, on disk as used already).

        Raises:
            StorageFailure, KeyStoreError, LocalProtocolError: As :meth:`save`;
                if it raises, no link's state changed.
        """
        prepared: list[tuple[str, bytes, bytes, list[tuple[str, str, bytes, bytes]], list[tuple[str, str]], set[str] | None]] = []
        for entry in saves:
            link_id, state = entry.link_id, entry.state
            require_name(link_id, "link_id")
            if not isinstance(state, dict):
                raise LocalProtocolError(f"state must be a dict, got {type(state).__name__}")
            try:
                document = json.dumps(state, separators=(",", ":"), allow_nan=False)
            except (TypeError, ValueError) as exc:
                # The message names a type or a float, never a value of the state.
                raise LocalProtocolError(f"state of link {link_id!r} is not JSON-able: {exc}") from None
            plaintext = _compress(document.encode("utf-8"))
            nonce, ciphertext = self._key.encrypt(plaintext, self._associated_data(link_id))
            names = set(entry.blob_names) if entry.blob_names is not None else None
            added: list[tuple[str, str, bytes, bytes]] = []
            gone: list[tuple[str, str]] = []
            if names is not None:
                blob = entry.blob
                if blob is None:
                    raise LocalProtocolError("save: blob_names needs blob")
                on_disk = self._stored_blob_names(link_id)
                for name in sorted(names - on_disk):
                    require_name(name, "blob name")
                    added.append((link_id, name, *self._key.encrypt(blob(name), self._blob_associated_data(link_id, name))))
                gone = [(link_id, name) for name in on_disk - names]
            prepared.append((link_id, nonce, ciphertext, added, gone, names))
        if not prepared:
            return
        what = f"link {prepared[0][0]!r}" if len(prepared) == 1 else "links " + ", ".join(repr(p[0]) for p in prepared)
        with self._transaction(f"cannot save {what} to {self._path}") as conn:
            for link_id, nonce, ciphertext, added, gone, _ in prepared:
                conn.executemany("INSERT INTO link_blobs (link_id, name, nonce, ciphertext) VALUES (?, ?, ?, ?)", added)
                conn.executemany("DELETE FROM link_blobs WHERE link_id = ? AND name = ?", gone)
                conn.execute(
                    "INSERT INTO links (link_id, nonce, ciphertext, updated_at) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT (link_id) DO UPDATE SET nonce = excluded.nonce, "
                    "ciphertext = excluded.ciphertext, updated_at = excluded.updated_at",
                    (link_id, nonce, ciphertext, float(self._clock())),
                )
        for link_id, _, _, _, _, names in prepared:
            if names is not None:
                self._blob_names[link_id] = names

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

        Raises:
            KeyStoreError: If the row fails authentication (tampered, copied
                from another link or node, or a different storage key), the
                database is corrupt, or the store is closed.
            LocalProtocolError: If ``link_id`` is not a non-empty str.
        """
        require_name(link_id, "link_id")
        with self._reading(f"cannot read link {link_id!r} from {self._path}") as conn:
            row = conn.execute(
                "SELECT nonce, ciphertext FROM links WHERE link_id = ?", (link_id,)
            ).fetchone()
        if row is None:
            return None
        nonce, ciphertext = row
        if not (
            isinstance(nonce, bytes)
            and len(nonce) == NONCE_BYTES
            and isinstance(ciphertext, bytes)
        ):
            raise KeyStoreError(f"row of link {link_id!r} in {self._path} is malformed")
        try:
            plaintext = self._key.decrypt(nonce, ciphertext, self._associated_data(link_id))
        except InvalidTag:
            raise KeyStoreError(
                f"state of link {link_id!r} in {self._path} failed authentication: the row was "
                f"altered or copied from another link or node, or {self._key.path} is not the "
                "storage key it was written with"
            ) from None
        try:
            state = json.loads(zlib.decompress(plaintext).decode("utf-8"))
        except (zlib.error, UnicodeDecodeError, ValueError):
            # Authentic but unreadable: a writer bug, not tampering. Chain
            # nothing: the exceptions may quote the decrypted plaintext.
            raise KeyStoreError(
                f"state of link {link_id!r} in {self._path} is authentic but not a valid document"
            ) from None
        if not isinstance(state, dict):
            raise KeyStoreError(f"state of link {link_id!r} in {self._path} is not a JSON object")
        return state

    def __repr__(self) -> str:
        return f"LinkStore(path={str(self._path)!r}, node_name={self._node_name!r})"

    # -- internals -------------------------------------------------------

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
        encoded = name.encode("utf-8")
        return b"".join((_BLOB_AAD_DOMAIN, self._associated_data(link_id), struct.pack(">I", len(encoded)), encoded))

    def _associated_data(self, link_id: str) -> bytes:
        # Length-prefixed, so ("ab", "c") and ("a", "bc") differ.
        node = self._node_name.encode("utf-8")
        link = link_id.encode("utf-8")
        return b"".join(
            (
                _AAD_DOMAIN,
                struct.pack(">HI", SCHEMA_VERSION, len(node)),
                node,
                struct.pack(">I", len(link)),
                link,
            )
        )


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
