"""Trusted-node key relay, one hop: one-time-pad hops and XOR secret sharing (pure; no I/O).

Theory of operation:
    * **Hop by hop** (ITU-T Y.3803 trusted-node relay; docs/relay.md). To give
      nodes ``source`` and ``destination`` a shared key, ``source`` draws the
      key and sends it along ``path``. Hop ``i`` goes from ``path[i]`` to
      ``path[i + 1]`` and is protected with key from that link's pool: the
      sender spends :func:`pad_bytes_needed` bytes of its own initiator half
      (:mod:`qcinode.core.pool`), names the ranges to the receiver, and the
      receiver takes the same bytes. Each intermediate node opens the hop it
      received and seals the next one with a different link's pad, so the
      key exists in clear only inside the memory of the trusted nodes on the
      path, and never on a wire.
    * **Pad layout.** ``pad_material = mac_key (32 bytes) ‖ pad (key_bytes)``.
      The ciphertext is ``share ⊕ pad``, a one-time pad (Vernam 1926; perfect
      secrecy, Shannon 1949): for a uniformly random pad used once, the
      ciphertext is uniform and independent of the share. The tag is
      ``Poly1305(mac_key, header_bytes(header) ‖ ciphertext)`` with the
      one-time key (:func:`qcinode.core.authentication.one_time_tag`), so an
      adversary forges a hop with probability at most ``8⌈L/16⌉ / 2^106``,
      unconditionally. Pad and MAC key are disjoint parts of fresh key and
      are never reused (the pool ledger guarantees it), so secrecy and
      authenticity hold information-theoretically (Wegman & Carter 1981).
    * **The header is authenticated, not encrypted.** :func:`header_bytes`
      is a canonical, prefix-free encoding (a domain string, then every field
      length-prefixed or fixed width), so header and ciphertext are bound
      together unambiguously: a changed SAE, path, hop index or share index
      makes the tag fail. The hop index in the header also stops a hop's
      message from being replayed as another hop (and its pad differs anyway).
    * **Validation before use.** A receiving node calls
      :func:`validate_header` first (the message really comes from the
      previous node on the path and is addressed to us; the path is simple and
      runs from source to destination; the numbers are within limits), then
      :func:`open_hop`; an intermediate node forwards with
      :func:`next_header`. Bad headers raise :class:`RemoteProtocolError`,
      bad tags :class:`AuthenticationFailed`; our own mistakes (wrong pad
      length, forwarding past the destination) :class:`LocalProtocolError`.
    * **Several paths.** With :func:`split_shares` the key is split into
      ``share_count ≤ 8`` XOR shares (``count − 1`` uniformly random, the last
      the key XOR all of them), each relayed over its own path with its own
      ``share_index``. Any ``count − 1`` shares are jointly uniform and
      independent of the key, so a trusted node that sees fewer than all
      shares learns nothing; over node-disjoint paths
      (:meth:`qcinode.core.routing.LinkStateDatabase.disjoint_paths`) no
      single trusted node sees them all. :class:`ShareCollector` at the
      destination reassembles the key.
    * **Shares of one key are never mixed with another split.** The collector
      keys shares by ``key_id`` and requires every share of a key to agree on
      ``relay_id``, SAEs, endpoints, ``share_count`` and ``key_bytes``. A
      relay that is retried after a failure must therefore use a fresh
      ``key_id`` (or wait for the partial one to expire): combining shares of
      two different splits would yield a wrong key with no error. A completed
      key is remembered for ``ttl_s`` so that a late duplicate share is
      refused rather than starting a collection that can only expire.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from qcinode.core.authentication import KEY_BYTES as _POLY1305_KEY_BYTES
from qcinode.core.authentication import one_time_tag, verify_one_time_tag
from qcinode.errors import DuplicateShare, LocalProtocolError, ProtocolError, RemoteProtocolError

__all__ = [
    "MAC_KEY_BYTES",
    "MAX_KEY_BYTES",
    "MAX_PATH_NODES",
    "MAX_SHARES",
    "RelayHeader",
    "ShareCollector",
    "combine_shares",
    "header_bytes",
    "next_header",
    "open_hop",
    "pad_bytes_needed",
    "seal_hop",
    "split_shares",
    "validate_header",
]

#: One-time Poly1305 key at the start of every hop's pad material.
MAC_KEY_BYTES = _POLY1305_KEY_BYTES

#: Largest relayed key.
MAX_KEY_BYTES = 4096

#: Most XOR shares (paths) per key.
MAX_SHARES = 8

#: Longest path, source and destination included.
MAX_PATH_NODES = 64

#: Most slave SAEs a key may name.
MAX_SLAVE_SAES = 16

#: Longest identifier (relay, key, SAE or node), in characters.
MAX_NAME_CHARS = 256

_HEADER_DOMAIN = b"qcinode/relay-header/v1\x00"


@dataclass(frozen=True, slots=True)
class RelayHeader:
    """What every hop of one share says about it; authenticated, sent in clear.

    Attributes:
        relay_id: This relay operation, the same for every share of the key.
        key_id: The ETSI key ID of the relayed key.
        master_sae: The SAE that asked for the key (at ``source``).
        slave_saes: The SAE(s) that may redeem it (at ``destination``).
        source: The node that drew the key.
        destination: The node that receives it.
        path: Every node from ``source`` to ``destination``.
        hop_index: This hop goes ``path[hop_index] → path[hop_index + 1]``.
        share_index: Which XOR share this is, ``0 ≤ share_index < share_count``.
        share_count: How many shares the key was split into (1 = no split).
        key_bytes: Length of the key, and of every share.
    """

    relay_id: str
    key_id: str
    master_sae: str
    slave_saes: tuple[str, ...]
    source: str
    destination: str
    path: tuple[str, ...]
    hop_index: int
    share_index: int
    share_count: int
    key_bytes: int


# -- one hop ---------------------------------------------------------------------


def pad_bytes_needed(key_bytes: int) -> int:
    """Link key one hop spends: the one-time MAC key plus a pad as long as the share.

    Args:
        key_bytes: Length of the relayed key (and of each share), ``≥ 0``.

    Raises:
        LocalProtocolError: If ``key_bytes`` is negative or not an int.
    """
    if not _is_int(key_bytes) or key_bytes < 0:
        raise LocalProtocolError(f"key_bytes must be a non-negative int, got {key_bytes!r}")
    return MAC_KEY_BYTES + key_bytes


def header_bytes(header: RelayHeader) -> bytes:
    """The canonical encoding of ``header``, authenticated with every hop.

    Layout: a domain string; then ``relay_id``, ``key_id``, ``master_sae``,
    each as a 4-byte big-endian length and UTF-8 bytes; the number of slave
    SAEs (4 bytes) and each one; ``source``, ``destination``; the number of
    path nodes and each one; then ``hop_index``, ``share_index``,
    ``share_count``, ``key_bytes`` as 8-byte big-endian unsigned integers.
    Distinct headers give distinct bytes, and no encoding is a prefix of
    another.

    Raises:
        LocalProtocolError: If a field cannot be encoded (wrong type, negative
            number, unencodable text). Received headers pass
            :func:`validate_header` first.
    """
    if not isinstance(header, RelayHeader):
        raise LocalProtocolError(f"expected a RelayHeader, got {type(header).__name__}")
    parts = [_HEADER_DOMAIN]
    try:
        for text in (header.relay_id, header.key_id, header.master_sae):
            parts.append(_text(text))
        parts.append(_sequence(header.slave_saes))
        for text in (header.source, header.destination):
            parts.append(_text(text))
        parts.append(_sequence(header.path))
        for number in (header.hop_index, header.share_index, header.share_count, header.key_bytes):
            if not _is_int(number):
                raise TypeError(f"expected an int, got {type(number).__name__}")
            parts.append(number.to_bytes(8, "big"))
    except (TypeError, ValueError, OverflowError) as exc:  # UnicodeEncodeError is a ValueError
        raise LocalProtocolError(f"relay header cannot be encoded: {exc}") from None
    return b"".join(parts)


def seal_hop(header: RelayHeader, share: bytes, pad_material: bytes) -> tuple[bytes, bytes]:
    """Encrypt and authenticate one share for one hop.

    Args:
        header: The header of this hop (``hop_index`` already set).
        share: The share, ``header.key_bytes`` long.
        pad_material: ``pad_bytes_needed(header.key_bytes)`` fresh link-key
            bytes from the sender's half of the hop's link pool: the MAC key,
            then the pad. Never reuse them.

    Returns:
        ``(ciphertext, tag)``: ``share ⊕ pad`` and the 16-byte Poly1305 tag of
        ``header_bytes(header) ‖ ciphertext``.

    Raises:
        LocalProtocolError: On a share or pad of the wrong length or type.
    """
    data = header_bytes(header)
    share = _require_bytes(share, "share")
    pad_material = _require_bytes(pad_material, "pad_material")
    if len(share) != header.key_bytes:
        raise LocalProtocolError(f"share is {len(share)} bytes, header says {header.key_bytes}")
    if len(pad_material) != pad_bytes_needed(len(share)):
        raise LocalProtocolError(
            f"pad_material is {len(pad_material)} bytes, need {pad_bytes_needed(len(share))}"
        )
    mac_key, pad = pad_material[:MAC_KEY_BYTES], pad_material[MAC_KEY_BYTES:]
    ciphertext = _xor(share, pad)
    return ciphertext, one_time_tag(mac_key, data + ciphertext)


def open_hop(header: RelayHeader, ciphertext: bytes, tag: bytes, pad_material: bytes) -> bytes:
    """Verify and decrypt one hop.

    Args:
        header: The received header, already checked by :func:`validate_header`.
        ciphertext: The received ciphertext.
        tag: The received tag.
        pad_material: The same link-key bytes the sender used (the ranges it
            named), ``pad_bytes_needed(header.key_bytes)`` long.

    Returns:
        The share.

    Raises:
        AuthenticationFailed: If the tag does not verify (header, ciphertext or
            tag altered, or different pad material).
        RemoteProtocolError: If the ciphertext is not ``header.key_bytes`` long.
        LocalProtocolError: On pad material of the wrong length or type.
    """
    data = header_bytes(header)
    pad_material = _require_bytes(pad_material, "pad_material")
    if not isinstance(ciphertext, (bytes, bytearray)):
        raise RemoteProtocolError("ciphertext must be bytes")
    ciphertext = bytes(ciphertext)
    if len(pad_material) != pad_bytes_needed(header.key_bytes):
        raise LocalProtocolError(
            f"pad_material is {len(pad_material)} bytes, need {pad_bytes_needed(header.key_bytes)}"
        )
    if len(ciphertext) != header.key_bytes:
        raise RemoteProtocolError(
            f"ciphertext is {len(ciphertext)} bytes, header says {header.key_bytes}"
        )
    mac_key, pad = pad_material[:MAC_KEY_BYTES], pad_material[MAC_KEY_BYTES:]
    verify_one_time_tag(mac_key, data + ciphertext, tag)
    return _xor(ciphertext, pad)


def next_header(header: RelayHeader) -> RelayHeader:
    """The header of the following hop (an intermediate node forwards with it).

    Raises:
        LocalProtocolError: If ``header``'s hop already ends at the
            destination, or its path or hop index is inconsistent.
    """
    if not isinstance(header, RelayHeader):
        raise LocalProtocolError(f"expected a RelayHeader, got {type(header).__name__}")
    try:
        _check_path(header)
    except RemoteProtocolError as exc:
        raise LocalProtocolError(str(exc)) from None
    if header.hop_index + 1 >= len(header.path) - 1:
        raise LocalProtocolError(
            f"hop {header.hop_index} already reaches the destination {header.destination!r}"
        )
    return replace(header, hop_index=header.hop_index + 1)


def validate_header(header: RelayHeader, local_node: str, previous_node: str) -> None:
    """Check a received header before using it.

    Args:
        header: As received.
        local_node: Our name: the hop must end here.
        previous_node: The authenticated neighbour it came from: the hop must
            start there.

    Raises:
        RemoteProtocolError: On a wrong type, an empty or overlong name, a
            path that is too short or long, repeats a node, does not run from
            ``source`` to ``destination``, or whose hop ``hop_index`` is not
            ``previous_node → local_node``; ``share_index ≥ share_count``,
            ``share_count`` outside ``1..8``, ``key_bytes`` outside ``1..4096``,
            no or repeated slave SAEs.
    """
    if not isinstance(header, RelayHeader):
        raise RemoteProtocolError(f"expected a RelayHeader, got {type(header).__name__}")
    for what in ("relay_id", "key_id", "master_sae", "source", "destination"):
        _check_name(getattr(header, what), what, RemoteProtocolError)
    if not isinstance(header.slave_saes, tuple):
        raise RemoteProtocolError("slave_saes must be a tuple")
    if not 1 <= len(header.slave_saes) <= MAX_SLAVE_SAES:
        raise RemoteProtocolError(f"slave_saes must name 1 to {MAX_SLAVE_SAES} SAEs")
    for index, sae in enumerate(header.slave_saes):
        _check_name(sae, f"slave_saes[{index}]", RemoteProtocolError)
    if len(set(header.slave_saes)) != len(header.slave_saes):
        raise RemoteProtocolError("slave_saes repeats an SAE")
    _check_path(header)
    if header.path[header.hop_index] != previous_node:
        raise RemoteProtocolError(
            f"hop {header.hop_index} starts at {header.path[header.hop_index]!r}, "
            f"but came from {previous_node!r}"
        )
    if header.path[header.hop_index + 1] != local_node:
        raise RemoteProtocolError(
            f"hop {header.hop_index} ends at {header.path[header.hop_index + 1]!r}, not here"
        )
    if not _is_int(header.share_count) or not 1 <= header.share_count <= MAX_SHARES:
        raise RemoteProtocolError(f"share_count must be 1 to {MAX_SHARES}")
    if not _is_int(header.share_index) or not 0 <= header.share_index < header.share_count:
        raise RemoteProtocolError("share_index must be in [0, share_count)")
    if not _is_int(header.key_bytes) or not 1 <= header.key_bytes <= MAX_KEY_BYTES:
        raise RemoteProtocolError(f"key_bytes must be 1 to {MAX_KEY_BYTES}")


# -- secret sharing ----------------------------------------------------------------


def split_shares(key: bytes, count: int, random_bytes: Callable[[int], bytes]) -> list[bytes]:
    """Split ``key`` into ``count`` XOR shares.

    Shares ``0 .. count − 2`` are ``random_bytes(len(key))``; the last is the
    key XOR all of them. Any ``count − 1`` shares are uniform and independent
    of the key if ``random_bytes`` is a CSPRNG (``os.urandom``).

    Args:
        key: The secret.
        count: Number of shares, ``1 ≤ count ≤ 8``; 1 returns ``[key]``.
        random_bytes: Source of uniform random bytes.

    Raises:
        LocalProtocolError: On a bad ``count``, or ``random_bytes`` returning
            the wrong length or type.
    """
    key = _require_bytes(key, "key")
    if not _is_int(count) or not 1 <= count <= MAX_SHARES:
        raise LocalProtocolError(f"count must be 1 to {MAX_SHARES}, got {count!r}")
    shares: list[bytes] = []
    last = key
    for _ in range(count - 1):
        share = random_bytes(len(key))
        if not isinstance(share, (bytes, bytearray)) or len(share) != len(key):
            raise LocalProtocolError(f"random_bytes({len(key)}) returned the wrong length or type")
        share = bytes(share)
        shares.append(share)
        last = _xor(last, share)
    shares.append(last)
    return shares


def combine_shares(shares: Sequence[bytes]) -> bytes:
    """XOR of all shares: the key, if they are every share of one split.

    Raises:
        LocalProtocolError: On no shares or shares of different lengths.
    """
    if isinstance(shares, (bytes, bytearray, str)) or len(shares) == 0:
        raise LocalProtocolError("combine_shares needs a non-empty sequence of shares")
    first = _require_bytes(shares[0], "shares[0]")
    result = first
    for index, share in enumerate(shares[1:], start=1):
        share = _require_bytes(share, f"shares[{index}]")
        if len(share) != len(first):
            raise LocalProtocolError("shares have different lengths")
        result = _xor(result, share)
    return result


@dataclass(frozen=True, slots=True)
class _KeyIdentity:
    """The header fields every share of one key must agree on."""

    relay_id: str
    master_sae: str
    slave_saes: tuple[str, ...]
    source: str
    destination: str
    share_count: int
    key_bytes: int

    @classmethod
    def of(cls, header: RelayHeader) -> _KeyIdentity:
        return cls(
            relay_id=header.relay_id,
            master_sae=header.master_sae,
            slave_saes=header.slave_saes,
            source=header.source,
            destination=header.destination,
            share_count=header.share_count,
            key_bytes=header.key_bytes,
        )


class _Pending:
    """Shares of one key received so far."""

    __slots__ = ("identity", "shares", "first_seen")

    def __init__(self, identity: _KeyIdentity, first_seen: float) -> None:
        self.identity = identity
        self.shares: dict[int, bytes] = {}
        self.first_seen = first_seen


class ShareCollector:
    """At the destination: collects the shares of one key (by key_id) from several paths.

    A key is complete when all ``share_count`` shares arrived; incomplete ones
    are dropped by :meth:`expire` after ``ttl_s`` seconds from their first share.
    Headers are expected to have passed :func:`validate_header` and shares
    :func:`open_hop`.
    """

    __slots__ = ("_ttl_s", "_pending", "_completed")

    def __init__(self, ttl_s: float = 30.0) -> None:
        """Create an empty collector.

        Args:
            ttl_s: How long an incomplete key waits for its other shares, and
                how long a completed key ID is remembered; positive, finite.

        Raises:
            LocalProtocolError: On a bad ``ttl_s``.
        """
        if not _is_number(ttl_s) or ttl_s <= 0:
            raise LocalProtocolError(f"ttl_s must be positive and finite, got {ttl_s!r}")
        self._ttl_s = float(ttl_s)
        self._pending: dict[str, _Pending] = {}
        self._completed: dict[str, float] = {}  # key_id -> completion time

    @property
    def ttl_s(self) -> float:
        """Lifetime of an incomplete key."""
        return self._ttl_s

    @property
    def pending(self) -> tuple[str, ...]:
        """Key IDs still waiting for shares, sorted."""
        return tuple(sorted(self._pending))

    def add(self, header: RelayHeader, share: bytes, now: float) -> bytes | None:
        """Add one share that reached the destination.

        Args:
            header: Its header (the last hop's).
            share: The opened share, ``header.key_bytes`` long.
            now: Current time in seconds.

        Returns:
            The combined key once every share arrived (the key is then
            forgotten here), else ``None``.

        Raises:
            DuplicateShare: If the share index arrived before or the key was
                already completed (a :class:`RemoteProtocolError`). Nothing
                changes.
            RemoteProtocolError: If the header disagrees with earlier shares of
                the same key (other relay, SAEs, endpoints, count or length),
                the hop does not end at the destination, or the share has the
                wrong length. Nothing changes.
            LocalProtocolError: On a bad ``now``.
        """
        if not _is_number(now):
            raise LocalProtocolError(f"now must be a finite number, got {now!r}")
        if not isinstance(header, RelayHeader):
            raise RemoteProtocolError(f"expected a RelayHeader, got {type(header).__name__}")
        _check_name(header.key_id, "key_id", RemoteProtocolError)
        _check_path(header)
        if header.hop_index != len(header.path) - 2:
            raise RemoteProtocolError("share has not reached its destination")
        if not _is_int(header.share_count) or not 1 <= header.share_count <= MAX_SHARES:
            raise RemoteProtocolError(f"share_count must be 1 to {MAX_SHARES}")
        if not _is_int(header.share_index) or not 0 <= header.share_index < header.share_count:
            raise RemoteProtocolError("share_index must be in [0, share_count)")
        if not isinstance(share, (bytes, bytearray)) or len(share) != header.key_bytes:
            raise RemoteProtocolError("share length differs from key_bytes")
        key_id = header.key_id
        if key_id in self._completed:
            raise DuplicateShare(f"key {key_id!r} was already completed")
        identity = _KeyIdentity.of(header)
        pending = self._pending.get(key_id)
        if pending is not None:
            if pending.identity != identity:
                raise RemoteProtocolError(
                    f"share {header.share_index} of key {key_id!r} disagrees with earlier shares"
                )
            if header.share_index in pending.shares:
                raise DuplicateShare(f"share {header.share_index} of key {key_id!r} arrived twice")
        else:
            pending = _Pending(identity, float(now))
        pending.shares[header.share_index] = bytes(share)
        if len(pending.shares) < identity.share_count:
            self._pending[key_id] = pending
            return None
        self._pending.pop(key_id, None)
        self._completed[key_id] = float(now)
        return combine_shares([pending.shares[i] for i in range(identity.share_count)])

    def expire(self, now: float) -> list[str]:
        """Drop keys still incomplete ``ttl_s`` after their first share.

        Also forgets completed key IDs older than ``ttl_s``.

        Args:
            now: Current time in seconds.

        Returns:
            The key IDs of the dropped incomplete keys, sorted.
        """
        if not _is_number(now):
            raise LocalProtocolError(f"now must be a finite number, got {now!r}")
        dropped = sorted(
            key_id for key_id, p in self._pending.items() if now - p.first_seen > self._ttl_s
        )
        for key_id in dropped:
            del self._pending[key_id]
        for key_id in [k for k, t in self._completed.items() if now - t > self._ttl_s]:
            del self._completed[key_id]
        return dropped

    def __repr__(self) -> str:
        # Never show key material.
        return f"ShareCollector(pending={len(self._pending)}, ttl_s={self._ttl_s})"


# -- helpers -----------------------------------------------------------------------


def _check_path(header: RelayHeader) -> None:
    """Path shape and hop index; raises RemoteProtocolError."""
    path = header.path
    if not isinstance(path, tuple) or not 2 <= len(path) <= MAX_PATH_NODES:
        raise RemoteProtocolError(f"path must be a tuple of 2 to {MAX_PATH_NODES} nodes")
    for index, node in enumerate(path):
        _check_name(node, f"path[{index}]", RemoteProtocolError)
    if len(set(path)) != len(path):
        raise RemoteProtocolError("path repeats a node")
    if path[0] != header.source or path[-1] != header.destination:
        raise RemoteProtocolError("path must run from source to destination")
    if not _is_int(header.hop_index) or not 0 <= header.hop_index < len(path) - 1:
        raise RemoteProtocolError(f"hop_index must be in [0, {len(path) - 1})")


def _check_name(value: object, what: str, error: type[ProtocolError]) -> None:
    if not isinstance(value, str) or not value or len(value) > MAX_NAME_CHARS:
        raise error(f"{what} must be a non-empty string of at most {MAX_NAME_CHARS} characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise error(f"{what} is not valid text") from None


def _text(value: str) -> bytes:
    if not isinstance(value, str):
        raise TypeError(f"expected a str, got {type(value).__name__}")
    data = value.encode("utf-8")
    return len(data).to_bytes(4, "big") + data


def _sequence(values: Sequence[str]) -> bytes:
    if not isinstance(values, (tuple, list)):
        raise TypeError(f"expected a tuple, got {type(values).__name__}")
    return len(values).to_bytes(4, "big") + b"".join(_text(v) for v in values)


def _xor(a: bytes, b: bytes) -> bytes:
    return (int.from_bytes(a, "big") ^ int.from_bytes(b, "big")).to_bytes(len(a), "big")


def _require_bytes(value: object, what: str) -> bytes:
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise LocalProtocolError(f"{what} must be bytes, got {type(value).__name__}")
    return bytes(value)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
