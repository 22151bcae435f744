"""SQLite plumbing shared by the node's durable stores (private).

:class:`~qcinode.keys.linkstore.LinkStore` and
:class:`~qcinode.keys.keystore.SaeKeyStore` keep their rows the same way: one
file in the node's data directory (created mode 0700), in WAL mode with
``synchronous=FULL``, created mode 0600 (its WAL files follow), schema created under ``BEGIN IMMEDIATE`` and versioned
by ``PRAGMA user_version`` (a newer version is refused), one connection
guarded by a lock, and every SQLite failure raised as
:class:`~qcinode.errors.KeyStoreError` naming the file. What the rows hold,
and how they are encrypted, is each store's own business.

Storage faults (a full disk, a read-only or unwritable directory, an I/O
error, a damaged file) are :class:`StorageFailure`, with the file and the
reason as attributes:

* **At start-up** a store refuses to open unless the data directory takes a
  small probe file (:func:`probe_data_dir`), so a node with nowhere to write
  stops with one line naming the directory and the reason rather than
  starting and refusing every key.
* **At run time** a failed transaction rolls back (the database is exactly as
  before) and the store remembers the failure (:attr:`SqliteStore.failure`)
  until a later write or :meth:`SqliteStore.check_writable` succeeds. The
  owner learns of every change through :attr:`SqliteStore.on_health`
  (failing, another reason, recovered), to log it and report health; the
  store itself does no logging. What a caller must not do after a failed
  write (send what depends on it) is the caller's rule.
"""

from __future__ import annotations

import os
import secrets
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar, Self

from qcinode.errors import KeyStoreError, LocalProtocolError, StorageFailure

_BUSY_TIMEOUT_S = 10.0

#: Bytes the data directory must take at start-up and in :meth:`SqliteStore.check_writable`.
PROBE_BYTES = 64 * 1024

# SQLite primary result codes that mean "the storage cannot do this now":
# full, read-only, unopenable, I/O error, no permission, locked by another
# process, damaged. Other errors (misuse, constraint) are bugs or rules.
_STORAGE_CODES = frozenset(
    {
        sqlite3.SQLITE_FULL,
        sqlite3.SQLITE_IOERR,
        sqlite3.SQLITE_READONLY,
        sqlite3.SQLITE_CANTOPEN,
        sqlite3.SQLITE_PERM,
        sqlite3.SQLITE_BUSY,
        sqlite3.SQLITE_LOCKED,
        sqlite3.SQLITE_CORRUPT,
        sqlite3.SQLITE_NOTADB,
        sqlite3.SQLITE_NOLFS,
        sqlite3.SQLITE_PROTOCOL,
    }
)


#: Told of every change of a store's health: the database file, and the failure or None (recovered).
HealthListener = Callable[[Path, "StorageFailure | None"], None]


class SqliteStore:
    """One node's SQLite database file: opening, locking, transactions, closing.

    Subclasses call ``__init__``, then set ``self._conn`` from
    :func:`open_database`, and do all their reads in :meth:`_reading` and all
    their writes in :meth:`_transaction`.
    """

    __slots__ = ("_node_name", "_path", "_conn", "_lock", "_failure", "_health_lock", "failure_count", "on_health")

    #: What the store is called in "... is closed" messages.
    _KIND: ClassVar[str]

    def __init__(self, data_dir: Path, node_name: str, database_file: str) -> None:
        """Check the node name and create the data directory (mode 0700) if missing.

        The database is not opened yet: ``self._conn`` is None.

        Raises:
            StorageFailure: If the directory cannot be created or does not
                take a probe file of ``PROBE_BYTES`` (full, read-only, no
                permission); the message names the directory and the reason.
            LocalProtocolError: If ``node_name`` is not a non-empty str.
        """
        require_name(node_name, "node_name")
        data_dir = Path(data_dir)
        self._node_name = node_name
        self._path = data_dir / database_file
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._failure: StorageFailure | None = None
        self._health_lock = threading.Lock()  # health changes come from the loop and from worker threads
        #: Storage failures (of reads and writes) since the store was opened.
        self.failure_count = 0
        #: Called outside the store's lock on every health change (see the module docstring).
        self.on_health: HealthListener | None = None
        make_dir(data_dir)
        probe_data_dir(data_dir)

    @property
    def path(self) -> Path:
        """The database file."""
        return self._path

    @property
    def node_name(self) -> str:
        """The node whose rows this store holds; bound into every row."""
        return self._node_name

    @property
    def failure(self) -> StorageFailure | None:
        """The last storage failure, until a write or :meth:`check_writable` succeeds; else None."""
        return self._failure

    def check_writable(self) -> bool:
        """Probe the data directory again (a ``PROBE_BYTES`` file); True if it took it.

        For health checks while :attr:`failure` is set: success clears it (the
        next real write tells whether SQLite can write again); a failure keeps
        the failure already recorded (SQLite's reason), or records the
        probe's if there was none. Never raises for a storage fault.
        """
        try:
            probe_data_dir(self._path.parent)
        except StorageFailure as exc:
            if self._failure is None:
                self._set_health(exc)
            return False
        self._set_health(None)
        return True

    def close(self) -> None:
        """Close the database. Idempotent; later reads and writes raise KeyStoreError."""
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except sqlite3.Error as exc:
                raise KeyStoreError(f"cannot close {self._path}: {exc}") from exc

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @contextmanager
    def _reading(self, failure: str) -> Iterator[sqlite3.Connection]:
        """Hold the lock and yield the open connection.

        An :class:`sqlite3.Error` in the body becomes
        ``KeyStoreError(f"{failure}: {exc}")``, chained to it.

        Raises:
            KeyStoreError: If the store is closed, or as above.
        """
        error: KeyStoreError | None = None
        with self._lock:
            conn = self._require_open()
            try:
                yield conn
            except sqlite3.Error as exc:
                error = self._map(failure, exc)
        if error is not None:
            self._failed(error)
            raise error from error.__cause__

    @contextmanager
    def _transaction(
        self, failure: str, *, integrity_failure: str | None = None
    ) -> Iterator[sqlite3.Connection]:
        """Hold the lock and run the body in one ``BEGIN IMMEDIATE`` transaction.

        Commits when the body completes; rolls back if anything raises, so
        the database is then exactly as before. An :class:`sqlite3.Error`
        becomes ``KeyStoreError(f"{failure}: {exc}")``, chained to it; if
        ``integrity_failure`` is given, an :class:`sqlite3.IntegrityError`
        becomes ``KeyStoreError(integrity_failure)`` instead, unchained. Any
        other exception propagates as it is.

        Raises:
            KeyStoreError: If the store is closed, or as above.
        """
        error: KeyStoreError | None = None
        with self._lock:
            conn = self._require_open()
            try:
                conn.execute("BEGIN IMMEDIATE")
                yield conn
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                _rollback(conn)
                if integrity_failure is not None and isinstance(exc, sqlite3.IntegrityError):
                    raise KeyStoreError(integrity_failure) from None
                error = self._map(failure, exc)
            except BaseException:
                _rollback(conn)
                raise
        # Health is reported outside the lock: the listener may log or read the store.
        if error is not None:
            self._failed(error)
            raise error from error.__cause__
        self._set_health(None)

    def _require_open(self) -> sqlite3.Connection:
        if self._conn is None:
            raise KeyStoreError(f"{self._KIND} {self._path} is closed")
        return self._conn

    def _map(self, failure: str, exc: sqlite3.Error) -> KeyStoreError:
        """The error to raise for a SQLite error: StorageFailure for storage faults."""
        error = sqlite_error(self._path, failure, exc)
        error.__cause__ = exc
        return error

    def _failed(self, error: KeyStoreError) -> None:
        if isinstance(error, StorageFailure):
            self.failure_count += 1
            self._set_health(error)

    def _set_health(self, failure: StorageFailure | None) -> None:
        """Record the store's health; tell the listener when it changed."""
        with self._health_lock:
            before, self._failure = self._failure, failure
        changed = (before is None) != (failure is None) or (
            before is not None and failure is not None and before.reason != failure.reason
        )
        if changed and self.on_health is not None:
            self.on_health(self._path, failure)


def open_database(
    path: Path, schema: Sequence[str], schema_version: int, *, foreign_keys: bool = False
) -> sqlite3.Connection:
    """Open ``path`` in WAL mode with ``synchronous=FULL`` and bring its schema up.

    The ``schema`` statements (``CREATE ... IF NOT EXISTS``) and the new
    ``user_version`` are applied in one ``BEGIN IMMEDIATE`` transaction. The
    connection is in autocommit mode (callers issue BEGIN/COMMIT) and may be
    used from any thread, serialised by the caller's lock.

    Raises:
        KeyStoreError: If the file cannot be opened or put in WAL mode, is
            corrupt, or has a ``user_version`` above ``schema_version``.
    """
    _create_private(path)
    try:
        # isolation_level=None: we issue BEGIN/COMMIT ourselves.
        conn = sqlite3.connect(
            path,
            timeout=_BUSY_TIMEOUT_S,
            isolation_level=None,
            check_same_thread=False,  # serialised by the store's lock
        )
    except sqlite3.Error as exc:
        raise sqlite_error(path, f"cannot open {path}", exc) from exc
    try:
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise KeyStoreError(f"cannot put {path} in WAL mode (got {mode!r})")
        conn.execute("PRAGMA synchronous = FULL")
        if foreign_keys:
            conn.execute("PRAGMA foreign_keys = ON")
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > schema_version:
            raise KeyStoreError(
                f"{path} has schema version {version}; this qcinode reads up to "
                f"{schema_version}"
            )
        conn.execute("BEGIN IMMEDIATE")
        for statement in schema:
            conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {schema_version}")
        conn.execute("COMMIT")
    except sqlite3.Error as exc:
        conn.close()
        raise sqlite_error(path, f"cannot open {path}", exc) from exc
    except BaseException:
        conn.close()
        raise
    return conn


def _create_private(path: Path) -> None:
    """Create the database file 0600 if it does not exist yet.

    SQLite creates a new file with the process umask (often 0644) and its
    ``-wal`` and ``-shm`` files with the database file's mode: made 0600
    first, none of them is readable by other users. A failure is left to
    SQLite's own open to report.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError:
        return
    os.close(fd)


def sqlite_error(path: Path, failure: str, exc: sqlite3.Error) -> KeyStoreError:
    """``f"{failure}: {exc}"`` as :class:`StorageFailure` if SQLite blames the storage, else KeyStoreError.

    Storage faults are the primary result codes in ``_STORAGE_CODES`` (full,
    I/O error, read-only, cannot open, permission, busy or locked, damaged);
    an error without a code (a closed connection, misuse) is a plain
    :class:`KeyStoreError`.
    """
    code = getattr(exc, "sqlite_errorcode", None)
    reason = str(exc) or type(exc).__name__
    if isinstance(code, int) and code & 0xFF in _STORAGE_CODES:
        return StorageFailure(f"{failure}: {reason}", path=path, reason=reason)
    return KeyStoreError(f"{failure}: {reason}")


def probe_data_dir(path: Path) -> None:
    """Check that the directory takes a file of ``PROBE_BYTES`` (written, then removed).

    Catches a full disk, a read-only file system and missing permission
    before a store is used (SQLite's own "unable to open database file"
    does not say which).

    Raises:
        StorageFailure: Naming the directory and the reason, e.g.
            ``data directory /srv/qcinode is not writable: No space left on device``.
    """
    probe = path / f".qcinode-probe-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            remaining = PROBE_BYTES
            chunk = bytes(min(PROBE_BYTES, 16 * 1024))
            while remaining > 0:
                remaining -= os.write(fd, chunk[:remaining])
        finally:
            os.close(fd)
    except OSError as exc:
        reason = os_reason(exc)
        raise StorageFailure(f"data directory {path} is not writable: {reason}", path=path, reason=reason) from None
    finally:
        try:
            probe.unlink()
        except OSError:
            pass


def make_dir(path: Path) -> None:
    """Create a data directory (mode 0700) and its parents if missing.

    Raises:
        StorageFailure: Naming the directory and the reason, if it cannot be created.
    """
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        reason = os_reason(exc)
        raise StorageFailure(f"cannot create data directory {path}: {reason}", path=path, reason=reason) from None


def os_reason(exc: OSError) -> str:
    """The reason in an OSError, without its file name or errno."""
    return exc.strerror or type(exc).__name__


def require_name(value: Any, what: str) -> None:
    """Raise LocalProtocolError unless ``value`` is a non-empty str."""
    if not isinstance(value, str) or not value:
        raise LocalProtocolError(f"{what} must be a non-empty str, got {value!r}")


def _rollback(conn: sqlite3.Connection) -> None:
    # SQLite may already have rolled back (e.g. on SQLITE_FULL).
    if conn.in_transaction:
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass
