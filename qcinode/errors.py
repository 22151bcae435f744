"""The exception taxonomy.

"Expected" errors are outcomes a healthy system meets in normal operation
(an eavesdropper raises the QBER, a pool runs dry); "unexpected" ones mean a
bug or a misbehaving peer.
"""

from __future__ import annotations

from pathlib import Path


class QcinodeError(Exception):
    """Root of every error qcinode raises on purpose."""


class ConfigError(QcinodeError):
    """Invalid configuration (topology file, command-line options). Expected.

    The message names the offending field, e.g. ``links[1].length_km``.
    """


class ProtocolError(QcinodeError):
    """A protocol rule was broken. Unexpected."""


class LocalProtocolError(ProtocolError):
    """We were asked to do something the protocol does not allow."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something the protocol does not allow."""


class OutOfSequence(RemoteProtocolError):
    """The peer sent a message the protocol does not allow at this point (a session that does not open with Hello)."""


class SessionAborted(ProtocolError):
    """A running post-processing session ended on a protocol error (either end's); the ends start over with a Hello."""


class DuplicateShare(RemoteProtocolError):
    """A relay share arrived twice, or after its key was completed: refused, nothing changes."""


class SecurityAbort(QcinodeError):
    """Something was refused for a security reason. Expected under attack.

    A block that makes no key is not an error: it ends as
    :class:`~qcinode.core.pipeline.BlockAborted`, its reason saying why.
    """


class AuthenticationFailed(SecurityAbort):
    """A one-time tag did not verify (a block's transcript, a Hello, a relay hop): what it covers is refused."""


class KeyStoreError(QcinodeError):
    """Key pool or key store problem."""


class InsufficientKeyMaterial(KeyStoreError):
    """Not enough unused key in the pool. Expected (callers answer 503)."""


class KeyNotFound(KeyStoreError):
    """No such key / block / range. Expected."""


class DuplicateKey(KeyStoreError):
    """A key ID that is already stored was stored again. Expected when a relay is retried.

    Attributes:
        identical: Whether the stored key has the same bytes, master and slave
            SAEs: then the second arrival is the same key delivered twice (a
            retried relay) and storing it is done already; otherwise it is a
            conflict and the stored key stays as it is.
    """

    def __init__(self, message: str, *, identical: bool) -> None:
        super().__init__(message)
        self.identical = identical


class StorageFailure(KeyStoreError):
    """The node's data directory cannot take a write (or read) now. Expected under faults.

    A full disk (``SQLITE_FULL``, ``ENOSPC``), a read-only file system
    (``EROFS``), missing permission, an I/O error (``EIO``) or a damaged
    database. Nothing was changed by the operation that raised it. Callers
    refuse what depends on it (the KME answers 503) and retry later.

    Attributes:
        path: The file or directory that failed.
        reason: What the operating system or SQLite said, e.g.
            ``"database or disk is full"`` (never key material).
    """

    def __init__(self, message: str, *, path: Path, reason: str) -> None:
        super().__init__(message)
        self.path = path
        self.reason = reason


class KeyAlreadyUsed(KeyStoreError):
    """A range that was already consumed was named again. Unexpected."""


class TransportError(QcinodeError):
    """The classical channel failed.

    Attributes:
        code: The gRPC status code's name when a call failed (``"UNAVAILABLE"``), else "".
        details: What the peer or gRPC said about it ("" if nothing).
    """

    def __init__(self, message: str, *, code: str = "", details: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.details = details


class PeerUnavailable(TransportError):
    """The peer could not be reached, or the link to it is cut. Expected while a neighbour is down."""


class PeerTimeout(TransportError):
    """The peer did not answer in time. Expected under faults."""


class PeerRefused(TransportError):
    """The peer answered and refused the call (a bad argument, no permission, the wrong state). Expected."""


class Unauthorized(QcinodeError):
    """The caller may not do this (an SAE asking for another SAE's key, a node calling as a neighbour it is not).

    Expected; ETSI 014 answers 401, gRPC PERMISSION_DENIED.
    """


class NotFound(QcinodeError):
    """What a request names does not exist here (a link this node is not an end of). Expected."""


class RequestError(QcinodeError):
    """A malformed or out-of-limits request from an application. Expected; ETSI 014 answers 400.

    Attributes:
        details: further messages for the ``details`` list of the ETSI 014 error body.
    """

    def __init__(self, message: str, details: list[str] | None = None) -> None:
        super().__init__(message)
        self.details = details or []


class NotRunning(QcinodeError):
    """The cluster, or the node, a command talks to is not running. Expected (after Ctrl-C or ``qcinode down``)."""
