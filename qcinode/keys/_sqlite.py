"""SQLite plumbing shared by the node's durable stores (private).

:class:`~qcinode.keys.linkstore.LinkStore` and
:class:`~qcinode.keys.keystore.SaeKeyStore` keep their rows the same way: one
file in the node's data directory (created mode 0700), in WAL mode with
``synchronous=FULL``, schema created under ``BEGIN IMMEDIATE`` and versioned
by ``PRAGMA user_version`` (a newer version is refused), one connection
guarded by a lock, and every SQLite failure raised as
:class:`~qcinode.errors.KeyStoreError` naming the file. What the rows hold,
and how they are encrypted, is each store's own business.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar, Self

from qcinode.errors import KeyStoreError, LocalProtocolError

_BUSY_TIMEOUT_S = 10.0


class SqliteStore:
    """One node's SQLite database file: opening, locking, transactions, closing.

    Subclasses call ``__init__``, then set ``self._conn`` from
    :func:`open_database`, and do all their reads in :meth:`_reading` and all
    their writes in :meth:`_transaction`.
    """

    __slots__ = ("_node_name", "_path", "_conn", "_lock")

    #: What the store is called in "... is closed" messages.
    _KIND: ClassVar[str]

    def __init__(self, data_dir: Path, node_name: str, database_file: str) -> None:
        """Check the node name and create the data directory (mode 0700) if missing.

        The database is not opened yet: ``self._conn`` is None.

        Raises:
            KeyStoreError: If the directory cannot be created.
            LocalProtocolError: If ``node_name`` is not a non-empty str.
        """
        require_name(node_name, "node_name")
        data_dir = Path(data_dir)
        self._node_name = node_name
        self._path = data_dir / database_file
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        make_dir(data_dir)

    @property
    def path(self) -> Path:
        """The database file."""
        return self._path

    @property
    def node_name(self) -> str:
        """The node whose rows this store holds; bound into every row."""
        return self._node_name

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
        with self._lock:
            conn = self._require_open()
            try:
                yield conn
            except sqlite3.Error as exc:
                raise KeyStoreError(f"{failure}: {exc}") from exc

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
                raise KeyStoreError(f"{failure}: {exc}") from exc
            except BaseException:
                _rollback(conn)
                raise

    def _require_open(self) -> sqlite3.Connection:
        if self._conn is None:
            raise KeyStoreError(f"{self._KIND} {self._path} is closed")
        return self._conn


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
    try:
        # isolation_level=None: we issue BEGIN/COMMIT ourselves.
        conn = sqlite3.connect(
            path,
            timeout=_BUSY_TIMEOUT_S,
            isolation_level=None,
            check_same_thread=False,  # serialised by the store's lock
        )
    except sqlite3.Error as exc:
        raise KeyStoreError(f"cannot open {path}: {exc}") from exc
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
        raise KeyStoreError(f"cannot open {path}: {exc}") from exc
    except BaseException:
        conn.close()
        raise
    return conn


def make_dir(path: Path) -> None:
    """Create a data directory (mode 0700) and its parents if missing.

    Raises:
        KeyStoreError: Naming the directory, if it cannot be created.
    """
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise KeyStoreError(f"cannot create data directory {path}: {os_reason(exc)}") from None


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
