"""Information-theoretic authentication of the classical transcript.

Theory of operation:
    * **Why.** QKD is secure only if Eve cannot impersonate either end on the
      classical channel; TLS alone would reduce it to computational security.
      Each block's whole classical transcript (every sifting, estimation,
      Cascade, verification and amplification message, in order) is
      authenticated with a Wegman–Carter one-time MAC (Wegman & Carter,
      "New hash functions and their use in authentication and set
      equality", JCSS 22 (1981)); a tag that fails discards the block
      (docs/design.md §1 step 7).
    * **Transcript.** :class:`Transcript` frames every message as
      ``direction (3 ASCII bytes, "A>B" or "B>A") ‖ length (8 bytes,
      big-endian) ‖ payload`` after a fixed domain header. The framing is
      prefix-free, so distinct message sequences always give distinct inputs
      (``("ab", "c")`` ≠ ``("a", "bc")``, and the direction of each message
      is bound). Both ends append the same canonical bytes in the same
      order, so their digest inputs are equal unless a message was altered.
    * **MAC.** Poly1305 (D. J. Bernstein, "The Poly1305-AES
      message-authentication code", FSE 2005) with a fresh uniformly random
      32-byte key ``(r, s)`` per message: ``r`` selects a polynomial hash
      that is ε-almost-Δ-universal and ``s`` one-time-pads its output. For
      any single message of ``L`` bytes, an adversary who sees one tag
      forges another (message, tag) pair with probability at most
      ``8⌈L/16⌉ / 2^106`` (Bernstein 2005, §3; ``r`` is clamped to
      106 free bits) — unconditionally, with no computational assumption.
      A 10 MB transcript gives about ``6·10^-26``.
    * **One key, one use.** The bound holds only if each key authenticates
      exactly one message. Two tags under the same key reveal ``r``. Keys
      therefore come from :class:`AuthKeyReserve`, which hands out each
      32-byte key once and advances a cursor that both ends can compare.
      Keys drawn from ε_sec-secret QKD blocks add ε_sec per use to the
      failure probability (composability; Portmann, IEEE TIT 60 (2014)).
    * **Reserve.** The link's first keys come from a pre-shared bootstrap
      key (made by ``qcinode certs``); later ones are refilled from freshly
      grown secret blocks, so the link needs pre-shared material only once
      ("key growing"). Both ends hold identical reserves and take keys in the
      same order; :meth:`AuthKeyReserve.skip_to` lets the ends resynchronise
      forward after a failure, never backward. :attr:`AuthKeyReserve.promoted_before`
      records how far staged refills were promoted, so that the other end can
      reproduce the same key indices after a crash
      (:mod:`qcinode.core.resync`).
    * **Storage.** The reserve's bytes are immutable chunks (the bootstrap
      key, then each refill), each named by its absolute byte offset; the
      link's store writes a chunk once and deletes it when the cursor has
      passed its last byte, so a save of the link (before every relay hop)
      writes the cursor and a few offsets, not the unused keys as hex. A
      partly used chunk stays whole on disk, its used prefix behind the
      saved cursor, which alone says which keys were used.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.poly1305 import Poly1305

from qcinode.errors import (
    AuthenticationFailed,
    InsufficientKeyMaterial,
    KeyNotFound,
    KeyStoreError,
    LocalProtocolError,
)

__all__ = [
    "AUTH_BLOB_PREFIX",
    "KEY_BYTES",
    "TAG_BYTES",
    "AuthKeyReserve",
    "Direction",
    "Transcript",
    "one_time_tag",
    "verify_one_time_tag",
]

#: Poly1305 one-time key length.
KEY_BYTES = 32

#: Poly1305 tag length.
TAG_BYTES = 16

Direction = Literal["A>B", "B>A"]

_DIRECTIONS: frozenset[str] = frozenset({"A>B", "B>A"})
_TRANSCRIPT_HEADER = b"qcinode/transcript/v2\x00"  # v2: compact array forms in the canonical bytes
_STATE_VERSION = 2  # 2: the bytes as chunks, which may be stored apart (to_state(inline=False))
_READABLE_STATE_VERSIONS = (1, 2)  # 1: one flat hex buffer starting at the cursor
_EXTERNAL = "blob"  # a chunk's bytes kept by the store as a blob
#: Every blob name of the reserve starts with this (a link's store also holds its pool's blobs).
AUTH_BLOB_PREFIX = "auth/"
_CHUNK_BLOB = AUTH_BLOB_PREFIX  # + absolute byte offset
_STAGED_BLOB = AUTH_BLOB_PREFIX + "staged/"  # + serial number


#: Pieces shorter than this are joined with their neighbours before hashing (:class:`Transcript`).
_JOIN_BELOW = 4096


class Transcript:
    """The canonical bytes of every classical message of one block, in order.

    Kept as a list of pieces: the one-time MAC hashes them in order
    (:meth:`tag`, :meth:`verify`) without joining them, so the three tags of
    a block cost three passes over the bytes and no copy of a large piece.
    Runs of small pieces (below :data:`_JOIN_BELOW` bytes each: headers,
    scalars, short arrays) are joined as they are appended, since one MAC
    update per piece costs more than the copy (a block has tens of thousands
    of them).
    """

    __slots__ = ("_parts", "_entries")

    def __init__(self) -> None:
        """Start an empty transcript."""
        self._parts: list[bytes] = [_TRANSCRIPT_HEADER]
        self._entries = 0

    def append(self, direction: Direction, payload: bytes) -> None:
        """Record one message.

        Args:
            direction: ``"A>B"`` (Alice to Bob) or ``"B>A"``.
            payload: The message's canonical bytes.

        Raises:
            LocalProtocolError: On an unknown direction or a non-bytes payload.
        """
        if not isinstance(payload, (bytes, bytearray, memoryview)):
            raise LocalProtocolError(f"payload must be bytes, got {type(payload).__name__}")
        self.append_parts(direction, [bytes(payload)])

    def append_parts(self, direction: Direction, parts: list[bytes]) -> None:
        """Record one message given as the pieces of its canonical bytes (framed as one payload).

        Raises:
            LocalProtocolError: On an unknown direction or a piece that is not bytes.
        """
        if direction not in _DIRECTIONS:
            raise LocalProtocolError(f"direction must be 'A>B' or 'B>A', got {direction!r}")
        if not all(type(part) is bytes for part in parts):
            raise LocalProtocolError("payload pieces must be bytes")
        small = [direction.encode("ascii") + sum(map(len, parts)).to_bytes(8, "big")]
        for part in parts:
            if len(part) < _JOIN_BELOW:
                small.append(part)
                continue
            self._parts.append(b"".join(small))
            self._parts.append(part)
            small = []
        if small:
            self._parts.append(b"".join(small))
        self._entries += 1

    def digest_input(self) -> bytes:
        """The framed transcript, the input of the one-time MAC (joined: :meth:`tag` avoids the copy)."""
        return b"".join(self._parts)

    def tag(self, key: bytes) -> bytes:
        """:func:`one_time_tag` of :meth:`digest_input`, hashed piece by piece."""
        _require_key(key)
        mac = Poly1305(bytes(key))
        for part in self._parts:
            mac.update(part)
        tag: bytes = mac.finalize()
        return tag

    def verify(self, key: bytes, tag: bytes) -> None:
        """:func:`verify_one_time_tag` of :meth:`digest_input`, hashed piece by piece.

        Raises:
            AuthenticationFailed: The tag does not verify (or has the wrong length).
            LocalProtocolError: If ``key`` is not 32 bytes.
        """
        _require_key(key)
        if not isinstance(tag, (bytes, bytearray)) or len(tag) != TAG_BYTES:
            raise AuthenticationFailed("authentication tag has the wrong length")
        mac = Poly1305(bytes(key))
        for part in self._parts:
            mac.update(part)
        try:
            mac.verify(bytes(tag))
        except InvalidSignature:
            raise AuthenticationFailed("authentication tag does not match the transcript") from None

    def __len__(self) -> int:
        """Number of messages appended."""
        return self._entries


def one_time_tag(key: bytes, data: bytes) -> bytes:
    """Poly1305 tag of ``data`` under a one-time key.

    Forgery probability ≤ ``8⌈L/16⌉ / 2^106`` for ``L = len(data)``, provided
    ``key`` is uniformly random and never used for another message.

    Args:
        key: A fresh 32-byte key from :class:`AuthKeyReserve`.
        data: The message, usually :meth:`Transcript.digest_input`.

    Returns:
        The 16-byte tag.

    Raises:
        LocalProtocolError: If ``key`` is not 32 bytes.
    """
    _require_key(key)
    return Poly1305.generate_tag(bytes(key), bytes(data))


def verify_one_time_tag(key: bytes, data: bytes, tag: bytes) -> None:
    """Check a tag made by :func:`one_time_tag`, in constant time.

    Args:
        key: The same one-time key the peer used.
        data: The message as we saw it.
        tag: The tag the peer sent.

    Raises:
        AuthenticationFailed: If the tag does not verify (including a tag of
            the wrong length).
        LocalProtocolError: If ``key`` is not 32 bytes.
    """
    _require_key(key)
    if not isinstance(tag, (bytes, bytearray)) or len(tag) != TAG_BYTES:
        raise AuthenticationFailed("authentication tag has the wrong length")
    try:
        Poly1305.verify_tag(bytes(key), bytes(data), bytes(tag))
    except InvalidSignature:
        raise AuthenticationFailed("authentication tag does not match the transcript") from None


class AuthKeyReserve:
    """A link's supply of one-time MAC keys, identical at both ends.

    Key ``i`` is bytes ``[32·i, 32·i + 32)`` of the concatenation of the
    bootstrap key and every refill, in order; :attr:`cursor` counts the keys
    taken or skipped. The concatenation is held as immutable chunks (the
    bootstrap key, then each refill), each with its absolute byte offset.
    Taking keys moves the cursor; a chunk is dropped once every byte of it is
    behind the cursor. A partly used chunk stays whole: the cursor skips its
    used prefix. A trailing partial key waits for the next refill (a key may
    span two chunks).

    ``to_state(inline=False)`` names the chunks and the staged refills
    instead of holding their bytes (:meth:`blob_names`, :meth:`blob`), so a
    store writes each once and deletes it when the state stops naming it: a
    save then costs a few numbers, not the whole reserve as hex. A name never
    changes its bytes: a chunk is named by its offset, which only a refill at
    the end of the reserve ever has; a staged refill by a serial number that
    is never reused.
    """

    __slots__ = ("_chunks", "_end", "_cursor", "_staged", "_promoted_before", "_next_serial")

    def __init__(self, bootstrap: bytes) -> None:
        """Create the reserve from the link's pre-shared bootstrap key.

        Args:
            bootstrap: Pre-shared secret bytes (any length; every full
                32 bytes is one key).
        """
        if not isinstance(bootstrap, (bytes, bytearray)):
            raise LocalProtocolError("bootstrap must be bytes")
        #: ``(absolute offset, bytes)``, contiguous and in order; the first holds the cursor's byte.
        self._chunks: list[tuple[int, bytes]] = []
        self._end = 0  # absolute offset one past the last byte held
        self._cursor = 0
        #: block_seq -> (serial, bytes)
        self._staged: dict[int, tuple[int, bytes]] = {}
        self._promoted_before = 0
        self._next_serial = 0
        self._append(bytes(bootstrap))

    def _append(self, data: bytes) -> None:
        # An empty chunk would share its offset (its name) with the next one: skip it.
        if data:
            self._chunks.append((self._end, data))
            self._end += len(data)

    def _slice(self, start: int, end: int) -> bytes:
        """Bytes ``[start, end)`` of the concatenation; the caller checks they are held."""
        parts = []
        for offset, data in self._chunks:
            if offset >= end:
                break
            if offset + len(data) > start:
                parts.append(data[max(0, start - offset) : end - offset])
        return b"".join(parts)

    @property
    def available_keys(self) -> int:
        """Number of whole keys that can still be taken."""
        return (self._end - self._cursor * KEY_BYTES) // KEY_BYTES

    @property
    def cursor(self) -> int:
        """Index of the next key to be taken (keys taken or skipped so far)."""
        return self._cursor

    def take(self, n_keys: int) -> list[bytes]:
        """Take the next ``n_keys`` unused keys, in order.

        Args:
            n_keys: How many keys, ``≥ 0``.

        Returns:
            ``n_keys`` distinct 32-byte keys; they are never returned again.

        Raises:
            InsufficientKeyMaterial: If fewer keys are available (nothing is consumed).
            LocalProtocolError: If ``n_keys`` is negative.
        """
        _require_count(n_keys, "n_keys")
        if n_keys > self.available_keys:
            raise InsufficientKeyMaterial(
                f"{n_keys} authentication keys requested, {self.available_keys} available"
            )
        start = self._cursor * KEY_BYTES
        end = start + n_keys * KEY_BYTES
        data = self._slice(start, end)
        keys = [data[i : i + KEY_BYTES] for i in range(0, len(data), KEY_BYTES)]
        self._cursor += n_keys
        drop = 0
        for offset, chunk in self._chunks:
            if offset + len(chunk) > end:
                break
            drop += 1
        if drop:
            del self._chunks[:drop]  # wholly behind the cursor: gone from memory, and from disk at the next save
        return keys

    def refill(self, data: bytes) -> None:
        """Append fresh secret bytes (from a newly grown block) at the end.

        Args:
            data: Secret bytes, identical at both ends.
        """
        if not isinstance(data, (bytes, bytearray)):
            raise LocalProtocolError("refill data must be bytes")
        self._append(bytes(data))

    def stage(self, block_seq: int, data: bytes) -> None:
        """Set aside refill bytes from block ``block_seq`` until both ends surely hold it.

        A block one end accepted may still be dropped at the other (a lost
        Commit, a crash); refilling from it at once would make the two
        reserves differ for ever. Staged bytes join the reserve only through
        :meth:`promote_before`, at a point both ends reach in lock-step.
        """
        _require_count(block_seq, "block_seq")
        if not isinstance(data, (bytes, bytearray)):
            raise LocalProtocolError("staged data must be bytes")
        self._staged[block_seq] = (self._next_serial, bytes(data))
        self._next_serial += 1

    def promote_before(self, block_seq: int) -> None:
        """Appends, in block order, every staged refill of a block older than ``block_seq``."""
        for seq in sorted(s for s in self._staged if s < block_seq):
            self._append(self._staged.pop(seq)[1])
        self._promoted_before = max(self._promoted_before, block_seq)

    @property
    def promoted_before(self) -> int:
        """The highest ``block_seq`` :meth:`promote_before` was called with (0 if never)."""
        return self._promoted_before

    def peek(self, cursor: int, n_keys: int) -> list[bytes]:
        """The keys at indices ``[cursor, cursor + n_keys)``, without taking them.

        Raises:
            LocalProtocolError: If ``cursor`` is behind :attr:`cursor` (those
                keys are gone) or a count is negative.
            InsufficientKeyMaterial: If the reserve does not reach that far.
        """
        _require_count(cursor, "cursor")
        _require_count(n_keys, "n_keys")
        if cursor < self._cursor:
            raise LocalProtocolError(f"key {cursor} was already used (cursor {self._cursor})")
        start = cursor * KEY_BYTES
        end = start + n_keys * KEY_BYTES
        if cursor + n_keys > self._cursor + self.available_keys:
            raise InsufficientKeyMaterial(
                f"keys {cursor}..{cursor + n_keys - 1} requested, the reserve reaches key {self._cursor + self.available_keys - 1}"
            )
        data = self._slice(start, end)
        return [data[i : i + KEY_BYTES] for i in range(0, len(data), KEY_BYTES)]

    def copy(self) -> AuthKeyReserve:
        """An independent copy (to try a change and keep it only if it works).

        Cheap: the chunks are immutable, so the copy shares them.
        """
        twin = AuthKeyReserve(b"")
        twin._chunks = list(self._chunks)
        twin._end = self._end
        twin._cursor = self._cursor
        twin._staged = dict(self._staged)
        twin._promoted_before = self._promoted_before
        twin._next_serial = self._next_serial
        return twin

    def adopt(self, changed: AuthKeyReserve) -> None:
        """Become ``changed`` (a :meth:`copy` on which a change worked), in place.

        The link's sessions hold this object; adopting keeps them pointing at
        the one reserve. ``changed`` must not be used afterwards.
        """
        self._chunks = changed._chunks
        self._end = changed._end
        self._cursor = changed._cursor
        self._staged = changed._staged
        self._promoted_before = changed._promoted_before
        self._next_serial = changed._next_serial

    def retain_staged(self, block_seqs: set[int]) -> None:
        """Drops staged refills of blocks the peer does not hold (resynchronisation)."""
        for seq in [s for s in self._staged if s not in block_seqs]:
            del self._staged[seq]

    @property
    def staged_block_seqs(self) -> tuple[int, ...]:
        return tuple(sorted(self._staged))

    def skip_to(self, cursor: int) -> None:
        """Discard keys until :attr:`cursor` equals ``cursor``.

        Used when the two ends resynchronise: both skip to the larger of
        their cursors, so no key is ever used twice.

        Args:
            cursor: Target key index, ``≥`` the current cursor.

        Raises:
            LocalProtocolError: If ``cursor`` is behind the current cursor.
            InsufficientKeyMaterial: If we do not hold keys up to ``cursor``
                (nothing is consumed).
        """
        _require_count(cursor, "cursor")
        if cursor < self._cursor:
            raise LocalProtocolError(f"cannot move the cursor back from {self._cursor} to {cursor}")
        self.take(cursor - self._cursor)

    def to_state(self, *, inline: bool = True) -> dict[str, Any]:
        """A JSON-able snapshot.

        With ``inline`` (the default) it holds every byte, hex-encoded (it
        holds secrets). With ``inline=False`` it holds only the cursor, the
        chunks' offsets and the staged refills' block numbers, and names the
        bytes instead (:meth:`blob_names`, :meth:`blob`).
        """
        return {
            "version": _STATE_VERSION,
            "cursor": self._cursor,
            "chunks": [[offset, data.hex() if inline else _EXTERNAL] for offset, data in self._chunks],
            "end": self._end,
            "staged": [
                [seq, serial, data.hex() if inline else _EXTERNAL] for seq, (serial, data) in sorted(self._staged.items())
            ],
            "next_serial": self._next_serial,
            "promoted_before": self._promoted_before,
        }

    def blob_names(self) -> set[str]:
        """The names of the immutable parts ``to_state(inline=False)`` leaves out (all start ``auth/``)."""
        names = {f"{_CHUNK_BLOB}{offset}" for offset, _ in self._chunks}
        names.update(f"{_STAGED_BLOB}{serial}" for serial, _ in self._staged.values())
        return names

    def blob(self, name: str) -> bytes:
        """One immutable part, by a name from :meth:`blob_names` (key bytes: secret).

        Raises:
            KeyNotFound: No such part (any more).
        """
        if name.startswith(_STAGED_BLOB):
            for serial, data in self._staged.values():
                if name == f"{_STAGED_BLOB}{serial}":
                    return data
        elif name.startswith(_CHUNK_BLOB):
            for offset, data in self._chunks:
                if name == f"{_CHUNK_BLOB}{offset}":
                    return data
        raise KeyNotFound(f"no stored part {name!r} in the authentication key reserve")

    @classmethod
    def from_state(cls, state: dict[str, Any], blobs: Mapping[str, bytes] | None = None) -> AuthKeyReserve:
        """Rebuild a reserve from :meth:`to_state` output (and, if it was not inline, its blobs).

        Also reads the flat form saved before the reserve was chunked
        (version 1: the unused bytes as one hex ``buffer``).

        Raises:
            KeyStoreError: If the state is malformed or inconsistent, or names
                a blob that ``blobs`` lacks.
        """
        try:
            version = state["version"]
            if version not in _READABLE_STATE_VERSIONS:
                raise KeyStoreError(f"unsupported auth reserve state version {version!r}")
            cursor = state["cursor"]
            promoted_before = state.get("promoted_before", 0)  # absent in states saved before it existed
            for name, value in (("cursor", cursor), ("promoted_before", promoted_before)):
                if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                    raise KeyStoreError(f"malformed auth reserve state: bad {name}")
            reserve = cls(b"")
            reserve._cursor = cursor
            reserve._promoted_before = promoted_before
            if version == 1:
                reserve._end = cursor * KEY_BYTES  # the flat buffer started at the cursor
                reserve._append(bytes.fromhex(state["buffer"]))
                for seq, data in sorted((int(s), d) for s, d in state.get("staged", {}).items()):
                    reserve.stage(_count(seq), bytes.fromhex(data))
                return reserve
            parts = blobs or {}
            chunks = [(_count(offset), _bytes(raw, f"{_CHUNK_BLOB}{offset}", parts)) for offset, raw in state["chunks"]]
            end = _count(state["end"])
            reserve._chunks = chunks
            reserve._end = end
            reserve._next_serial = _count(state["next_serial"])
            for seq, serial, raw in state["staged"]:
                if _count(serial) >= reserve._next_serial:
                    raise KeyStoreError("malformed auth reserve state: bad staged serial")
                reserve._staged[_count(seq)] = (serial, _bytes(raw, f"{_STAGED_BLOB}{serial}", parts))
        except KeyStoreError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise KeyStoreError(f"malformed auth reserve state: {exc}") from None
        # The chunks must tile [first offset, end) and hold the cursor's byte (unless all used).
        position = cursor * KEY_BYTES
        expected = chunks[0][0] if chunks else end
        for offset, data in chunks:
            if offset != expected or not data:
                raise KeyStoreError("malformed auth reserve state: chunks are not contiguous")
            expected += len(data)
        if expected != end or not (chunks[0][0] if chunks else end) <= position <= end:
            raise KeyStoreError("malformed auth reserve state: the cursor is outside the chunks")
        if chunks and chunks[0][0] + len(chunks[0][1]) <= position:
            raise KeyStoreError("malformed auth reserve state: holds a chunk already used")
        if len(reserve._staged) != len(state["staged"]) or len({s for s, _ in reserve._staged.values()}) != len(reserve._staged):
            raise KeyStoreError("malformed auth reserve state: duplicate staged refill")
        return reserve

    def __repr__(self) -> str:
        # Never show key material.
        return f"AuthKeyReserve(cursor={self._cursor}, available_keys={self.available_keys})"


def _count(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise KeyStoreError("malformed auth reserve state: a count is not a non-negative int")
    return value


def _bytes(raw: Any, name: str, blobs: Mapping[str, bytes]) -> bytes:
    """A chunk's bytes: inline hex, or the blob ``name``."""
    if raw == _EXTERNAL:
        data = blobs.get(name)
        if data is None:
            raise KeyStoreError(f"auth reserve state names part {name!r}, which the store does not hold")
        return bytes(data)
    if not isinstance(raw, str):
        raise KeyStoreError("malformed auth reserve state: chunk bytes are not hex")
    return bytes.fromhex(raw)


def _require_key(key: bytes) -> None:
    if not isinstance(key, (bytes, bytearray)) or len(key) != KEY_BYTES:
        raise LocalProtocolError(f"a one-time key must be {KEY_BYTES} bytes")


def _require_count(value: int, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise LocalProtocolError(f"{name} must be a non-negative int, got {value!r}")
