"""The durable, encrypted-at-rest store of keys waiting for their slave SAEs.

Theory of operation:
    * **What is stored.** When a master SAE gets keys from ``enc_keys``, the
      same keys must later be handed, once each, to the slave SAE(s) that
      redeem them with ``dec_keys`` at their own node. Each node keeps the
      keys meant for its attached slaves here, until every one of those
      slaves has redeemed them, across restarts of the node.
    * **Layout.** ``data_dir/sae_keys.sqlite3`` with two tables:
      ``sae_keys(key_id PRIMARY KEY, master_sae, slave_saes, nonce,
      ciphertext, created_at)``, one row per key, where ``slave_saes`` is the
      JSON list of every slave the key was stored for (it never changes); and
      ``pending(key_id, slave_sae)``, one row per slave that has not yet
      redeemed the key. A key's row goes when its last pending slave redeems
      it. ``PRAGMA user_version`` records the schema version.
    * **Encryption.** Key bytes are ``AES-256-GCM`` encrypted under the
      node's :class:`~qcinode.keys.linkstore.StorageKey` (the same
      ``storage.key`` file as the link store), with a fresh random nonce per
      key. The associated data binds the schema version, the node name, the
      key ID, the master SAE and the original slave list, so a row edited to
      name another master or other slaves, or copied to another key ID or
      another node, fails to decrypt instead of reaching the wrong SAE.
    * **Redemption rules** (:meth:`SaeKeyStore.take`), all in one
      ``BEGIN IMMEDIATE`` transaction, all or nothing:

      1. duplicate IDs in one request: :class:`~qcinode.errors.RequestError`;
      2. any unknown ID (never stored, or already gone): :class:`KeyNotFound`
         naming every unknown ID;
      3. a key whose master is not the named master, or whose slaves do not
         include the requester: :class:`Unauthorized` (the key stays for its
         rightful owner);
      4. a key the requester already redeemed while other slaves still wait
         for it: :class:`KeyNotFound` (for the requester it is gone, as a
         single-slave key would be);
      5. otherwise every key is decrypted, the requester leaves each key's
         pending set, keys with nobody left are deleted, and the transaction
         commits before anything is returned.

      If any rule fails, or decryption fails (tampering, wrong storage key),
      the transaction rolls back and the store is exactly as before.
    * **Crash safety.** WAL mode with ``synchronous=FULL``: a ``put`` or
      ``take`` is durable once it returns, and a process killed at any moment
      leaves each key either stored or redeemed, never half of either.
    * **Failures are loud.** An unwritable or full disk, a corrupt database
      or a tampered row raises :class:`~qcinode.errors.KeyStoreError` naming
      the file; storage faults (full, read-only, I/O error, no permission,
      damaged file) raise its subclass :class:`StorageFailure`. Either way
      the transaction rolled back: a ``put`` that raised stored nothing, and
      a ``take`` that raised handed out nothing and every key is still
      there, so a redemption that cannot be recorded never lets a key be
      handed out twice. Exception messages name key IDs and SAE IDs, never
      key bytes.
    * **Idempotent arrival.** Storing a key ID that is already stored
      raises :class:`~qcinode.errors.DuplicateKey` and changes nothing; its
      ``identical`` says whether the stored row holds the same key for the
      same master and slaves (a retried relay delivered it twice: storing it
      is done) or another one (a conflict). Callers tell the two apart by
      type and attribute, never by message text.
    * **Bounded growth.** ``put(..., max_waiting=n)`` refuses a key when one
      of its slaves already has ``n`` keys waiting from that master, so a
      master whose slaves never redeem cannot fill the slaves' node's disk;
      :meth:`SaeKeyStore.expire` deletes keys older than the topology's
      ``relay.key_ttl_s``, so keys nobody can redeem do not stay forever.
    * **Threads.** One connection guarded by a lock: callers may use
      ``asyncio.to_thread``. Separate processes on the same file are
      serialised by SQLite's write lock (``BEGIN IMMEDIATE``).
"""

from __future__ import annotations

import hmac
import json
import sqlite3
import struct
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag

from qcinode.errors import (
    DuplicateKey,
    InsufficientKeyMaterial,
    KeyNotFound,
    KeyStoreError,
    LocalProtocolError,
    QcinodeError,
    RequestError,
    StorageFailure,
    Unauthorized,
)
from qcinode.keys._sqlite import SqliteStore, open_database, require_name
from qcinode.keys.linkstore import NONCE_BYTES, StorageKey

__all__ = ["DATABASE_FILE", "SCHEMA_VERSION", "SaeKeyStore", "StorageFailure", "WaitingKey"]

#: Database file name in the data directory.
DATABASE_FILE = "sae_keys.sqlite3"

#: Row format version; part of every row's associated data.
SCHEMA_VERSION = 1

_AAD_DOMAIN = b"qcinode/saekeystore\x00"
# Well under SQLite's default limit of bound parameters per statement.
_IDS_PER_STATEMENT = 500

_SCHEMA = (
    """
    CREATE TABLE IF NOT EXISTS sae_keys (
        key_id TEXT PRIMARY KEY,
        master_sae TEXT NOT NULL,
        slave_saes TEXT NOT NULL,
        nonce BLOB NOT NULL,
        ciphertext BLOB NOT NULL,
        created_at REAL NOT NULL
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS pending (
        key_id TEXT NOT NULL REFERENCES sae_keys (key_id) ON DELETE CASCADE,
        slave_sae TEXT NOT NULL,
        PRIMARY KEY (key_id, slave_sae)
    ) WITHOUT ROWID
    """,
    "CREATE INDEX IF NOT EXISTS pending_by_slave ON pending (slave_sae, key_id)",
    "CREATE INDEX IF NOT EXISTS sae_keys_by_master ON sae_keys (master_sae)",
)


@dataclass(frozen=True, slots=True)
class WaitingKey:
    """One key to store with :meth:`SaeKeyStore.put_many` (the arguments of :meth:`SaeKeyStore.put`)."""

    key_id: str
    master_sae: str
    slave_saes: tuple[str, ...]
    key: bytes = field(repr=False)


class SaeKeyStore(SqliteStore):
    """Keys waiting for slave SAEs at one node, in ``data_dir/sae_keys.sqlite3``, encrypted."""

    __slots__ = ("_key", "_clock")

    _KIND = "SAE key store"

    def __init__(
        self,
        data_dir: Path,
        node_name: str,
        storage_key: StorageKey,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """Open (creating if needed) the node's SAE key store.

        Args:
            data_dir: The node's data directory; created if missing.
            node_name: This node's name; bound into every row.
            storage_key: The node's storage key (``StorageKey.load_or_create``).
            clock: Wall clock for the ``created_at`` column.

        Raises:
            StorageFailure: If the directory or database cannot be created or
                opened (full, read-only, no permission, I/O error, damaged
                file), or the directory does not take a probe file.
            KeyStoreError: If the database is of a newer schema.
            LocalProtocolError: If ``node_name`` is not a non-empty str.
        """
        super().__init__(data_dir, node_name, DATABASE_FILE)
        self._key = storage_key
        self._clock = clock
        self._conn = open_database(self._path, _SCHEMA, SCHEMA_VERSION, foreign_keys=True)

    def put(
        self,
        key_id: str,
        master_sae: str,
        slave_saes: Sequence[str],
        key: bytes,
        *,
        max_waiting: int | None = None,
    ) -> None:
        """Store one key for its slave SAE(s), durably (one transaction).

        Args:
            key_id: The key's ID (the ETSI ``key_ID``, a UUID string).
            master_sae: The SAE that got the key from ``enc_keys``.
            slave_saes: The SAEs attached to this node that may redeem it,
                each once. Must be non-empty and distinct.
            key: The key bytes (non-empty).
            max_waiting: If given, refuse the key when any of its slaves
                already has this many keys waiting from ``master_sae``.

        Raises:
            StorageFailure: The database cannot be written (full or
                unwritable disk, I/O error); nothing was stored.
            DuplicateKey: ``key_id`` is already stored (``identical`` says
                whether with the same key, master and slaves); nothing changed.
            KeyStoreError: The store is closed.
            InsufficientKeyMaterial: ``max_waiting`` would be exceeded.
            LocalProtocolError: Malformed arguments.
        """
        if isinstance(slave_saes, str):
            raise LocalProtocolError("slave_saes must be a sequence of SAE IDs, not a str")
        (outcome,) = self.put_many([WaitingKey(key_id, master_sae, tuple(slave_saes), key)], max_waiting=max_waiting)
        if outcome is not None:
            raise outcome

    def put_many(self, keys: Sequence[WaitingKey], *, max_waiting: int | None = None) -> list[QcinodeError | None]:
        """Store several keys durably in ONE transaction (one fsync), each accepted or refused on its own.

        The group commit of the relay's destination: the keys of a multi-key
        hop, and those of concurrent relays that arrived while the previous
        write ran, cost one fsync together. Each key gets the outcome
        :meth:`put` would give it alone, in order: a key refused (malformed,
        a duplicate ID, ``max_waiting`` reached) does not stop the others; a
        key ID given twice in ``keys`` is judged against the first, as if
        that one had been stored before.

        Args:
            keys: The keys to store.
            max_waiting: As :meth:`put`, counting the keys of this call
                stored before.

        Returns:
            Per key, None if it is stored now, else the exception :meth:`put`
            would have raised for it (:class:`DuplicateKey`,
            :class:`InsufficientKeyMaterial`, :class:`LocalProtocolError`).

        Raises:
            StorageFailure: The transaction could not be written; none of the
                keys is stored.
            KeyStoreError: The store is closed.
        """
        outcomes: list[QcinodeError | None] = [None] * len(keys)
        rows: list[tuple[int, WaitingKey, str, bytes, bytes]] = []  # index, key, slaves JSON, nonce, ciphertext
        for index, item in enumerate(keys):
            try:
                slaves_json = self._checked(item)
            except LocalProtocolError as exc:
                outcomes[index] = exc
                continue
            nonce, ciphertext = self._key.encrypt(bytes(item.key), self._associated_data(item.key_id, item.master_sae, slaves_json))
            rows.append((index, item, slaves_json, nonce, ciphertext))
        if not rows:
            return outcomes
        what = rows[0][1].key_id if len(rows) == 1 else f"{len(rows)} keys"
        with self._transaction(
            f"cannot store key {what!r} in {self._path}" if len(rows) == 1 else f"cannot store {what} in {self._path}",
            integrity_failure=f"key {what!r} is already stored in {self._path}",
        ) as conn:
            counts: dict[tuple[str, str], int] = {}
            batch: dict[str, tuple[str, str, bytes]] = {}  # key ID -> (master, slaves JSON, key) stored by this call
            inserts: list[tuple[str, str, str, bytes, bytes, float]] = []
            pending: list[tuple[str, str]] = []
            now = float(self._clock())
            for index, item, slaves_json, nonce, ciphertext in rows:
                # Under BEGIN IMMEDIATE: no other writer can store the ID between this check and the insert.
                earlier = batch.get(item.key_id)
                if earlier is not None:
                    identical = earlier[:2] == (item.master_sae, slaves_json) and hmac.compare_digest(earlier[2], bytes(item.key))
                    outcomes[index] = DuplicateKey(f"key {item.key_id!r} is already stored in {self._path}", identical=identical)
                    continue
                stored = conn.execute(
                    "SELECT master_sae, slave_saes, nonce, ciphertext FROM sae_keys WHERE key_id = ?", (item.key_id,)
                ).fetchone()
                if stored is not None:
                    outcomes[index] = DuplicateKey(
                        f"key {item.key_id!r} is already stored in {self._path}",
                        identical=self._holds(item.key_id, stored, item.master_sae, slaves_json, bytes(item.key)),
                    )
                    continue
                if max_waiting is not None:
                    full = [sae for sae in item.slave_saes if self._waiting(conn, counts, item.master_sae, sae) >= max_waiting]
                    if full:
                        outcomes[index] = InsufficientKeyMaterial(
                            f"SAE {full[0]!r} already has {max_waiting} keys from {item.master_sae!r} "
                            "waiting at node "
                            f"{self._node_name!r}; it must redeem some before more are stored"
                        )
                        continue
                    for sae in item.slave_saes:
                        counts[(item.master_sae, sae)] += 1
                batch[item.key_id] = (item.master_sae, slaves_json, bytes(item.key))
                inserts.append((item.key_id, item.master_sae, slaves_json, nonce, ciphertext, now))
                pending += [(item.key_id, sae) for sae in item.slave_saes]
            conn.executemany(
                "INSERT INTO sae_keys (key_id, master_sae, slave_saes, nonce, ciphertext, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                inserts,
            )
            conn.executemany("INSERT INTO pending (key_id, slave_sae) VALUES (?, ?)", pending)
        return outcomes

    def take(
        self, requester_sae: str, master_sae: str, key_ids: Sequence[str]
    ) -> list[tuple[str, bytes]]:
        """Redeem keys for one slave SAE: all of them, or none (see the module rules).

        Args:
            requester_sae: The slave SAE asking (from its client certificate).
            master_sae: The master SAE the keys came from (the URL's ``master_SAE_ID``).
            key_ids: The keys, at least one, no duplicates.

        Returns:
            ``(key_id, key)`` pairs in the order of ``key_ids``.

        Raises:
            RequestError: ``key_ids`` is empty or names a key twice.
            KeyNotFound: Some keys are unknown or already redeemed by the
                requester; the message names them. Nothing changed.
            Unauthorized: Some keys are not for the requester or not from
                ``master_sae``. Nothing changed.
            StorageFailure: The database cannot be read or written (full or
                unwritable disk, I/O error): the redemption is not recorded,
                so no key is returned and every key stays. Nothing changed.
            KeyStoreError: A row fails authentication, or the store is
                closed. Nothing changed.
        """
        require_name(requester_sae, "requester_sae")
        require_name(master_sae, "master_sae")
        if isinstance(key_ids, str):
            raise LocalProtocolError("key_ids must be a sequence of key IDs, not a str")
        ids = list(key_ids)
        for key_id in ids:
            require_name(key_id, "key_id")
        if not ids:
            raise RequestError("no key_ID given")
        duplicates = _duplicates(ids)
        if duplicates:
            raise RequestError(
                "a key_ID appears more than once in the request",
                [f"duplicate key_ID {key_id}" for key_id in duplicates],
            )
        with self._transaction(f"cannot redeem {len(ids)} key(s) from {self._path}") as conn:
            result = self._take_locked(conn, requester_sae, master_sae, ids)
        return result

    def expire(self, older_than: float) -> int:
        """Deletes every key stored before ``older_than`` (a ``clock`` time); returns how many.

        Keys no slave redeemed in time, among them keys whose IDs no master
        ever got (a request that failed after some of its keys arrived),
        go; their pending rows go with them. One transaction.

        Raises:
            StorageFailure: The deletion could not be written (nothing was deleted).
            KeyStoreError: The store is closed.
        """
        with self._transaction(f"cannot expire keys in {self._path}") as conn:
            cursor = conn.execute("DELETE FROM sae_keys WHERE created_at < ?", (float(older_than),))
            return int(cursor.rowcount)

    def discard(self, key_ids: Sequence[str]) -> list[str]:
        """Deletes keys by ID whoever they wait for (a key voided before anyone redeemed it); returns those that were here.

        One transaction; unknown IDs are ignored.

        Raises:
            StorageFailure: The deletion could not be written (nothing was deleted).
            KeyStoreError: The store is closed.
        """
        ids = list(key_ids)
        for key_id in ids:
            require_name(key_id, "key_id")
        deleted: list[str] = []
        with self._transaction(f"cannot discard keys in {self._path}") as conn:
            for chunk in _chunks(ids):
                marks = ",".join("?" * len(chunk))
                deleted += [k for (k,) in conn.execute(f"SELECT key_id FROM sae_keys WHERE key_id IN ({marks})", chunk)]
                conn.execute(f"DELETE FROM sae_keys WHERE key_id IN ({marks})", chunk)
        return deleted

    def contains(self, key_id: str) -> bool:
        """Whether a key with this ID waits here.

        Raises:
            KeyStoreError: The database cannot be read or the store is closed.
        """
        with self._reading(f"cannot read {self._path}") as conn:
            return conn.execute("SELECT 1 FROM sae_keys WHERE key_id = ?", (key_id,)).fetchone() is not None

    def count(self, master_sae: str, slave_sae: str) -> int:
        """How many keys from ``master_sae`` wait here for ``slave_sae``.

        Raises:
            KeyStoreError: The database cannot be read or the store is closed.
        """
        with self._reading(f"cannot read {self._path}") as conn:
            return self._count(conn, master_sae, slave_sae)

    def total(self) -> int:
        """How many keys are stored (each counted once, whatever its number of slaves).

        Raises:
            KeyStoreError: The database cannot be read or the store is closed.
        """
        with self._reading(f"cannot read {self._path}") as conn:
            n: int = conn.execute("SELECT count(*) FROM sae_keys").fetchone()[0]
        return n

    def __repr__(self) -> str:
        return f"SaeKeyStore(path={str(self._path)!r}, node_name={self._node_name!r})"

    # -- internals -------------------------------------------------------

    def _take_locked(
        self, conn: sqlite3.Connection, requester: str, master: str, ids: list[str]
    ) -> list[tuple[str, bytes]]:
        rows: dict[str, tuple[str, str, bytes, bytes]] = {}
        pending_for_requester: set[str] = set()
        for chunk in _chunks(ids):
            marks = ",".join("?" * len(chunk))
            for key_id, row_master, slaves_json, nonce, ciphertext in conn.execute(
                "SELECT key_id, master_sae, slave_saes, nonce, ciphertext FROM sae_keys "
                f"WHERE key_id IN ({marks})",
                chunk,
            ):
                rows[key_id] = (row_master, slaves_json, nonce, ciphertext)
            pending_for_requester.update(
                key_id
                for (key_id,) in conn.execute(
                    f"SELECT key_id FROM pending WHERE slave_sae = ? AND key_id IN ({marks})",
                    (requester, *chunk),
                )
            )

        unknown = [key_id for key_id in ids if key_id not in rows]
        if unknown:
            raise KeyNotFound(f"unknown key_ID(s): {', '.join(unknown)}")

        foreign: list[str] = []
        redeemed: list[str] = []
        for key_id in ids:
            row_master, slaves_json, _, _ = rows[key_id]
            slaves = self._decode_slaves(key_id, slaves_json)
            if row_master != master or requester not in slaves:
                foreign.append(key_id)
            elif key_id not in pending_for_requester:
                redeemed.append(key_id)
        if foreign:
            raise Unauthorized(
                f"SAE {requester!r} may not redeem key_ID(s) {', '.join(foreign)} "
                f"as keys from master SAE {master!r}"
            )
        if redeemed:
            raise KeyNotFound(
                f"key_ID(s) already redeemed by SAE {requester!r}: {', '.join(redeemed)}"
            )

        result: list[tuple[str, bytes]] = []
        for key_id in ids:
            row_master, slaves_json, nonce, ciphertext = rows[key_id]
            if not (isinstance(nonce, bytes) and len(nonce) == NONCE_BYTES and isinstance(ciphertext, bytes)):
                raise KeyStoreError(f"row of key {key_id!r} in {self._path} is malformed")
            try:
                key = self._key.decrypt(
                    nonce, ciphertext, self._associated_data(key_id, row_master, slaves_json)
                )
            except InvalidTag:
                raise KeyStoreError(
                    f"key {key_id!r} in {self._path} failed authentication: the row was altered "
                    f"or copied from another key or node, or {self._key.path} is not the storage "
                    "key it was written with"
                ) from None
            result.append((key_id, key))

        for chunk in _chunks(ids):
            marks = ",".join("?" * len(chunk))
            conn.execute(
                f"DELETE FROM pending WHERE slave_sae = ? AND key_id IN ({marks})",
                (requester, *chunk),
            )
            conn.execute(
                f"DELETE FROM sae_keys WHERE key_id IN ({marks}) AND NOT EXISTS "
                "(SELECT 1 FROM pending WHERE pending.key_id = sae_keys.key_id)",
                chunk,
            )
        return result

    def _holds(self, key_id: str, row: tuple[Any, ...], master_sae: str, slaves_json: str, key: bytes) -> bool:
        """Whether a stored ``row`` of ``key_id`` is this key, for this master and these slaves."""
        row_master, row_slaves, nonce, ciphertext = row
        if row_master != master_sae or row_slaves != slaves_json:
            return False
        try:
            stored = self._key.decrypt(nonce, ciphertext, self._associated_data(key_id, row_master, row_slaves))
        except (InvalidTag, ValueError, TypeError):
            return False  # an altered row is not the key we have
        return hmac.compare_digest(stored, key)

    def _waiting(self, conn: sqlite3.Connection, counts: dict[tuple[str, str], int], master: str, slave: str) -> int:
        """Keys from ``master`` waiting for ``slave``, counted once per transaction, then kept up to date by the caller."""
        if (master, slave) not in counts:
            counts[(master, slave)] = self._count(conn, master, slave)
        return counts[(master, slave)]

    def _checked(self, item: WaitingKey) -> str:
        """The slaves' JSON of a well-formed key to store.

        Raises:
            LocalProtocolError: Naming what is malformed.
        """
        key_id, master_sae, slave_saes, key = item.key_id, item.master_sae, item.slave_saes, item.key
        require_name(key_id, "key_id")
        require_name(master_sae, "master_sae")
        if isinstance(slave_saes, str):
            raise LocalProtocolError("slave_saes must be a sequence of SAE IDs, not a str")
        slaves = list(slave_saes)
        if not slaves:
            raise LocalProtocolError(f"key {key_id!r} has no slave SAE to store it for")
        for sae in slaves:
            require_name(sae, "slave SAE ID")
        if len(set(slaves)) != len(slaves):
            raise LocalProtocolError(f"key {key_id!r}: duplicate slave SAE IDs {slaves!r}")
        if master_sae in slaves:
            raise LocalProtocolError(f"key {key_id!r}: master SAE {master_sae!r} is also a slave")
        if not isinstance(key, (bytes, bytearray)) or not key:
            raise LocalProtocolError(f"key {key_id!r}: key must be non-empty bytes")
        return _encode_slaves(slaves)

    @staticmethod
    def _count(conn: sqlite3.Connection, master: str, slave: str) -> int:
        n: int = conn.execute(
            "SELECT count(*) FROM pending JOIN sae_keys USING (key_id) "
            "WHERE pending.slave_sae = ? AND sae_keys.master_sae = ?",
            (slave, master),
        ).fetchone()[0]
        return n

    def _decode_slaves(self, key_id: str, slaves_json: Any) -> list[str]:
        try:
            slaves = json.loads(slaves_json) if isinstance(slaves_json, str) else None
        except ValueError:
            slaves = None
        if not isinstance(slaves, list) or not all(isinstance(s, str) for s in slaves):
            raise KeyStoreError(f"row of key {key_id!r} in {self._path} is malformed")
        return slaves

    def _associated_data(self, key_id: str, master_sae: str, slaves_json: str) -> bytes:
        # Length-prefixed fields, so ("ab", "c") and ("a", "bc") differ.
        parts = [_AAD_DOMAIN, struct.pack(">H", SCHEMA_VERSION)]
        for text in (self._node_name, key_id, master_sae, slaves_json):
            data = text.encode("utf-8")
            parts += [struct.pack(">I", len(data)), data]
        return b"".join(parts)


def _encode_slaves(slaves: list[str]) -> str:
    return json.dumps(slaves, separators=(",", ":"), ensure_ascii=True)


def _chunks(ids: list[str]) -> Iterator[list[str]]:
    for start in range(0, len(ids), _IDS_PER_STATEMENT):
        yield ids[start : start + _IDS_PER_STATEMENT]


def _duplicates(ids: list[str]) -> list[str]:
    seen: set[str] = set()
    repeated: list[str] = []
    for key_id in ids:
        if key_id in seen and key_id not in repeated:
            repeated.append(key_id)
        seen.add(key_id)
    return repeated
