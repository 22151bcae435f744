"""The link key pool and its ledger (pure; no I/O).

Theory of operation:
    * **Blocks.** Each post-processed block of secret key enters the pools at
      both ends of its link with the same ID and bytes (docs/design.md §1 step 8).
      Blocks are kept oldest first.
    * **Halves.** Both ends draw from the same blocks, possibly at the same
      time, with no lock between them. To make collisions impossible, each
      block of ``size`` bytes is split at ``boundary = size // 2``: bytes
      ``[0, boundary)`` can be *initiated* (used on our own initiative) only by
      Alice, bytes ``[boundary, size)`` only by Bob. An end reserves only from
      its own half; the peer's half is consumed only when the peer names the
      ranges it used (:meth:`LinkKeyPool.consume_ranges`). This is the
      "initiator split" of docs/design.md §1 (Key pool ledger).
    * **Every consuming message names its ranges** (block, offset, length), so
      the receiving end takes exactly the same bytes and both ledgers stay
      equal. :meth:`LinkKeyPool.consume_ranges` is all-or-nothing: a range in
      the wrong half, out of bounds, already used, overlapping another range
      of the same call, or in an unknown block raises and consumes nothing.
    * **Reserve → commit / release** (docs/design.md §4). :meth:`LinkKeyPool.reserve`
      sets bytes aside (our half, oldest block first, lowest offset first,
      possibly spanning blocks); :meth:`LinkKeyPool.commit` marks them used
      and returns them; :meth:`LinkKeyPool.release` returns them to the pool.
      **Release only while no message that depends on the bytes may have
      left the process.** Once key bytes may have been used on the wire (a
      one-time pad sent, ranges named to the peer), they must be committed
      even if the operation then fails or is cancelled: releasing them would
      let a later reservation reuse a pad the peer has already consumed.
      Commit (and persist) before sending.
    * **Ledger.** Used bytes are kept per block and per initiating half as
      sorted, merged ``[start, end)`` intervals, so memory per block stays
      small whatever the consumption pattern, and two ends that used the
      same bytes have identical ledgers regardless of the order of use.
      :meth:`LinkKeyPool.audit` lists them. A half that is fully used drops
      its bytes; a block whose halves are both fully used is *retired*: its
      bytes leave memory and only a summary (size, digest, used ranges)
      remains, which also stops the same block ID from being added again.
    * **Block IDs carry a sequence number.** Every block ID is
      ``f"{link_id}/{seq}"`` (:func:`qcinode.core.pipeline.block_id_for`), the
      seq a non-negative decimal in canonical form; :meth:`LinkKeyPool.add_block`
      refuses any other. Both ends number blocks alike and the numbers only
      grow: a session starts at the saved ``next_block_seq``, a
      resynchronisation takes the larger of the two ends' (never less), and
      the one block that can arrive after newer ones were numbered — Bob's
      block pending Alice's Commit — is the newest there is.
    * **Folding: a link that runs for weeks keeps bounded history.** Only the
      :data:`CLOSED_BLOCKS_KEPT` closed blocks with the highest seqs keep their
      summary; every older one is *folded* into one :class:`FoldedLedger`
      per pool: a watermark seq, counters (blocks, discarded blocks, size,
      used bytes) and an order-free digest of the folded summaries (XOR of
      their SHA-256). The kept set is a function of the set of closed blocks
      alone (the highest seqs), not of the order they closed in, so two ends
      that closed the same blocks with the same ledgers fold to equal
      aggregates. The watermark is the highest folded seq, and means "no
      block at or below it may be added any more": seqs only grow, so such
      an ID is a replay (a live block below the watermark is unaffected, and
      folds as soon as it closes). Totals stay exact: :attr:`LinkKeyPool.used_bytes`
      is the live ledgers, the kept summaries and the fold's ``used_bytes``;
      :meth:`LinkKeyPool.audit` lists the ranges of live and kept blocks only.
    * **Resynchronisation.** After a reconnection the ends exchange
      :attr:`LinkKeyPool.block_ids` and each calls
      :meth:`LinkKeyPool.retain_only` with the peer's set; blocks only one
      end holds are discarded (their used ranges stay in the ledger).
    * **Persistence.** :meth:`LinkKeyPool.to_state` is a JSON-able dict (key
      bytes as hex; it holds secrets). Open reservations are not persisted: a
      process that stops before committing never sent the bytes (see above),
      so they come back as available — except a reservation made with
      ``saved_as_used``, which a snapshot records as used: bytes set aside to
      be sent later without a save in between (the relay's pad stock,
      :mod:`qcinode.core.relay.context`). Once a snapshot holding it is on
      disk, any part of it may be committed and sent at once; a process that
      stops before using it all loses the rest (never reuses it), and one
      that releases it (nothing of it left the process) frees it again with
      the next save. :meth:`LinkKeyPool.split` cuts such a reservation in two. ``to_state(inline=False)`` leaves out
      the parts that never change once written — each half's key bytes and
      each closed block's summary — and names them; :meth:`blob_names` and
      :meth:`blob` hand them to a store that writes each once, so a save
      costs what the open blocks' ledgers and the closed blocks' IDs cost,
      not what the pool holds. Folded blocks are no longer named (the store
      deletes their blobs with the next save), so the names, the snapshot and
      the store stay bounded however long the link runs. :meth:`blob_names`
      is cached until a block is added, closed or drops a half.
"""

from __future__ import annotations

import bisect
import hashlib
import heapq
import json
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from qcinode.core.roles import Role
from qcinode.errors import (
    InsufficientKeyMaterial,
    KeyAlreadyUsed,
    KeyNotFound,
    KeyStoreError,
    LocalProtocolError,
    RemoteProtocolError,
)

__all__ = ["CLOSED_BLOCKS_KEPT", "FoldedLedger", "KeyRange", "LedgerEntry", "LinkKeyPool", "Reservation"]

#: Closed blocks whose summary (size, digest, used ranges) a pool keeps in full: the highest seqs.
#: Older ones are folded into the pool's :class:`FoldedLedger` (module docstring). 64 blocks are
#: minutes of a busy link's history, enough to audit a recent relay hop or resync.
CLOSED_BLOCKS_KEPT = 64

# 2: halves and closed blocks may be stored apart (to_state(inline=False)); 3: "folded", the aggregate
# of closed blocks beyond CLOSED_BLOCKS_KEPT. A version 1 or 2 state folds its excess closed blocks on load.
_STATE_VERSION = 3
_READABLE_STATE_VERSIONS = (1, 2, 3)
_NO_DIGEST = bytes(32)
_EXTERNAL = "blob"  # a half's "data" kept by the store as a blob
_DATA_BLOB = "data/"  # + block_id + "/" + role
_CLOSED_BLOB = "closed/"  # + block_id
_ROLE_VALUES = frozenset(role.value for role in Role)

Interval = tuple[int, int]


@dataclass(frozen=True, slots=True)
class KeyRange:
    """Bytes ``[offset_bytes, offset_bytes + length_bytes)`` of one block."""

    block_id: str
    offset_bytes: int
    length_bytes: int

    @property
    def end_bytes(self) -> int:
        """One past the last byte of the range."""
        return self.offset_bytes + self.length_bytes


@dataclass(frozen=True, slots=True)
class Reservation:
    """Bytes set aside by :meth:`LinkKeyPool.reserve`, not yet used.

    Attributes:
        link_id: The pool's link.
        reservation_id: Unique within the pool's lifetime.
        ranges: The reserved ranges in key order; the key is their
            concatenation. Name these to the peer.
    """

    link_id: str
    reservation_id: int
    ranges: tuple[KeyRange, ...]

    @property
    def length_bytes(self) -> int:
        """Total reserved length."""
        return sum(r.length_bytes for r in self.ranges)


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    """A maximal run of used bytes in one block, initiated by one end."""

    block_id: str
    offset_bytes: int
    length_bytes: int
    initiator: Role


@dataclass(frozen=True, slots=True)
class FoldedLedger:
    """The closed blocks a pool folded out of its ledger, in aggregate (module docstring, Folding).

    Attributes:
        watermark_seq: The highest folded seq; no block at or below it may be
            added. -1 while nothing is folded.
        blocks: Blocks folded.
        discarded_blocks: Of these, blocks discarded by a resynchronisation.
        size_bytes: Their total size.
        used_bytes: Their used bytes, both halves.
        digest: XOR of the SHA-256 of each folded block's summary (ID, size,
            digest, discarded, used ranges): equal at two ends that folded
            the same blocks with the same ledgers, whatever the order.
    """

    watermark_seq: int = -1
    blocks: int = 0
    discarded_blocks: int = 0
    size_bytes: int = 0
    used_bytes: int = 0
    digest: bytes = _NO_DIGEST


class _Block:
    """A live block: its bytes per half, used and reserved intervals."""

    __slots__ = ("block_id", "size", "boundary", "digest", "data", "used", "reserved", "_saved_form")

    def __init__(self, block_id: str, data: bytes) -> None:
        self.block_id = block_id
        self.size = len(data)
        self.boundary = len(data) // 2
        self.digest = hashlib.sha256(data).digest()
        # Per half; None once the half is fully used (bytes dropped).
        self.data: dict[Role, bytes | None] = {
            Role.ALICE: data[: self.boundary],
            Role.BOB: data[self.boundary :],
        }
        self.used: dict[Role, list[Interval]] = {Role.ALICE: [], Role.BOB: []}
        # Only ever in our own half.
        self.reserved: list[Interval] = []
        # saved_form(), until the ledger or the bytes held change (mark_used).
        self._saved_form: dict[str, Any] | None = None

    def half(self, role: Role) -> Interval:
        """Absolute ``[start, end)`` of the half ``role`` may initiate."""
        return (0, self.boundary) if role is Role.ALICE else (self.boundary, self.size)

    def free_bytes(self, role: Role) -> int:
        """Bytes of ``role``'s half that are neither used nor reserved here."""
        lo, hi = self.half(role)
        return hi - lo - _total(self.used[role]) - _total(self.reserved_in(role))

    def reserved_in(self, role: Role) -> list[Interval]:
        lo, hi = self.half(role)
        return [iv for iv in self.reserved if lo <= iv[0] and iv[1] <= hi]

    def read(self, role: Role, start: int, end: int) -> bytes:
        data = self.data[role]
        if data is None:
            raise KeyStoreError(f"block {self.block_id}: bytes of a fully used half requested")
        lo = self.half(role)[0]
        return data[start - lo : end - lo]

    def mark_used(self, role: Role, start: int, end: int) -> bool:
        """Mark ``[start, end)`` of ``role``'s half used; True if that used the half up (its bytes dropped)."""
        _add(self.used[role], start, end)
        self._saved_form = None
        lo, hi = self.half(role)
        if self.used[role] == [(lo, hi)]:
            self.data[role] = None
            return True
        return False

    def saved_form(self) -> dict[str, Any]:
        """The block in :meth:`LinkKeyPool.to_state` with ``inline=False``: its ledger, its halves named.

        Built once per change of the ledger, not once per snapshot: a relay
        hop saves its link's pool, and all but the block it used are as they
        were. Shared by the snapshots taken meanwhile, so never to be mutated.
        """
        if self._saved_form is None:
            self._saved_form = self.state(self.used, inline=False)
        return self._saved_form

    def state(self, used: dict[Role, list[Interval]], *, inline: bool) -> dict[str, Any]:
        """The block as :meth:`LinkKeyPool.to_state` writes it, with ``used`` as its ledger."""
        return {
            "block_id": self.block_id,
            "size": self.size,
            "digest": self.digest.hex(),
            "data": {role.value: (None if (d := self.data[role]) is None else d.hex() if inline else _EXTERNAL) for role in Role},
            "used": {role.value: [[s, e] for s, e in used[role]] for role in Role},
        }

    def is_fully_used(self) -> bool:
        return all(
            _total(self.used[role]) == self.half(role)[1] - self.half(role)[0] for role in Role
        )


@dataclass(frozen=True, slots=True)
class _ClosedBlock:
    """Ledger summary of a block whose bytes are gone (retired or discarded)."""

    seq: int
    size: int
    digest: bytes
    discarded: bool
    used: tuple[tuple[int, int, Role], ...]

    @property
    def used_bytes(self) -> int:
        return sum(end - start for start, end, _ in self.used)


class LinkKeyPool:
    """The key pool of one link at one end, with its ledger of used bytes."""

    __slots__ = (
        "_link_id", "_role", "_blocks", "_closed", "_folded", "_open", "_saved_as_used", "_next_reservation_id", "_names"
    )

    def __init__(self, link_id: str, role: Role) -> None:
        """Create an empty pool.

        Args:
            link_id: The link's identifier (same at both ends).
            role: Which end we are; decides which half of each block we initiate.
        """
        if not isinstance(role, Role):
            raise LocalProtocolError(f"role must be a Role, got {role!r}")
        self._link_id = link_id
        self._role = role
        self._blocks: dict[str, _Block] = {}
        self._closed: dict[str, _ClosedBlock] = {}  # at most CLOSED_BLOCKS_KEPT, the highest seqs
        self._folded = FoldedLedger()
        self._names: frozenset[str] | None = None  # blob_names(), until a block is added, closed or drops a half
        self._open: dict[int, Reservation] = {}
        self._saved_as_used: set[int] = set()  # open reservations a snapshot records as used
        self._next_reservation_id = 1

    # -- queries ---------------------------------------------------------

    @property
    def link_id(self) -> str:
        """The link this pool belongs to."""
        return self._link_id

    @property
    def role(self) -> Role:
        """Our end of the link."""
        return self._role

    @property
    def available_bytes(self) -> int:
        """Bytes we can still reserve (our halves, minus used and reserved)."""
        return sum(block.free_bytes(self._role) for block in self._blocks.values())

    @property
    def peer_available_bytes(self) -> int:
        """Bytes of the peer's halves not yet consumed (as far as we know)."""
        return sum(block.free_bytes(self._role.peer) for block in self._blocks.values())

    @property
    def total_available_bytes(self) -> int:
        """``available_bytes + peer_available_bytes``."""
        return self.available_bytes + self.peer_available_bytes

    @property
    def reserved_bytes(self) -> int:
        """Bytes held by open reservations."""
        return sum(_total(block.reserved) for block in self._blocks.values())

    @property
    def used_bytes(self) -> int:
        """Bytes used so far by either end, over all blocks ever added."""
        live = sum(_total(b.used[r]) for b in self._blocks.values() for r in Role)
        return live + sum(closed.used_bytes for closed in self._closed.values()) + self._folded.used_bytes

    @property
    def folded(self) -> FoldedLedger:
        """The closed blocks folded out of :meth:`audit`, in aggregate."""
        return self._folded

    @property
    def block_ids(self) -> tuple[str, ...]:
        """IDs of the blocks still holding unused bytes, oldest first."""
        return tuple(self._blocks)

    def block_digest(self, block_id: str) -> bytes:
        """SHA-256 of a block's bytes (for tests and resync diagnostics).

        Raises:
            KeyNotFound: If the block was never added, or is folded.
        """
        if block_id in self._blocks:
            return self._blocks[block_id].digest
        if block_id in self._closed:
            return self._closed[block_id].digest
        if self._is_folded(block_id):
            raise KeyNotFound(f"block {block_id!r} of link {self._link_id!r} is folded: its digest is gone")
        raise KeyNotFound(f"no block {block_id!r} in link {self._link_id!r}")

    def audit(self) -> list[LedgerEntry]:
        """Every used range of the live and kept closed blocks, merged and sorted by (block_id, offset).

        Two ends that used the same bytes return equal lists. Entries never
        overlap, and each lies inside its initiator's half. Folded blocks
        are counted in :attr:`folded` instead: the entries' lengths plus
        ``folded.used_bytes`` are :attr:`used_bytes`.
        """
        entries: list[LedgerEntry] = []
        for block_id, block in self._blocks.items():
            for role in Role:
                entries.extend(
                    LedgerEntry(block_id, start, end - start, role)
                    for start, end in block.used[role]
                )
        for block_id, closed in self._closed.items():
            entries.extend(
                LedgerEntry(block_id, start, end - start, role)
                for start, end, role in closed.used
            )
        entries.sort(key=lambda e: (e.block_id, e.offset_bytes))
        return entries

    # -- blocks ----------------------------------------------------------

    def add_block(self, block_id: str, data: bytes) -> None:
        """Add a committed secret block (same ID and bytes at both ends).

        Raises:
            KeyStoreError: If ``block_id`` was already added (even if retired,
                discarded or folded since), or lies at or below the folded
                watermark.
            LocalProtocolError: On an ID that is not ``f"{link_id}/{seq}"``
                or empty data.
        """
        if not isinstance(block_id, str) or not block_id:
            raise LocalProtocolError("block_id must be a non-empty str")
        if self._seq(block_id) is None:
            raise LocalProtocolError(
                f"block_id must be '{self._link_id}/<seq>' (seq a non-negative decimal, no leading zeros), got {block_id!r}"
            )
        if not isinstance(data, (bytes, bytearray)) or not data:
            raise LocalProtocolError("block data must be non-empty bytes")
        if block_id in self._blocks or block_id in self._closed:
            raise KeyStoreError(f"block {block_id!r} already in link {self._link_id!r}")
        if self._is_folded(block_id):
            raise KeyStoreError(
                f"block {block_id!r} already in link {self._link_id!r}: every block up to seq "
                f"{self._folded.watermark_seq} is closed and folded"
            )
        self._blocks[block_id] = _Block(block_id, bytes(data))
        self._names = None

    def retain_only(self, block_ids: Collection[str]) -> None:
        """Discard the live blocks whose IDs are not in ``block_ids``.

        Used after a reconnection with the peer's :attr:`block_ids`. Their
        unused bytes are dropped; their used ranges stay in the ledger. Open
        reservations touching a discarded block become void (commit raises
        :class:`~qcinode.errors.KeyNotFound`).
        """
        keep = set(block_ids)
        for block_id in [b for b in self._blocks if b not in keep]:
            self._close(self._blocks.pop(block_id), discarded=True)

    # -- our own use: reserve, commit, release ------------------------------

    def reserve(self, length_bytes: int, *, saved_as_used: bool = False) -> Reservation:
        """Set aside ``length_bytes`` from our halves, oldest block first.

        Args:
            length_bytes: How many bytes.
            saved_as_used: Snapshots (:meth:`to_state`) record the bytes as
                used while the reservation is open (see the module docstring).

        Raises:
            InsufficientKeyMaterial: If fewer bytes are available (nothing is reserved).
            LocalProtocolError: If ``length_bytes`` is not a positive int.
        """
        if isinstance(length_bytes, bool) or not isinstance(length_bytes, int) or length_bytes < 1:
            raise LocalProtocolError(f"length_bytes must be a positive int, got {length_bytes!r}")
        # The gaps are found oldest block first and the scan stops once enough is found: a
        # relay reserves pad for every key, and summing every block's free bytes first
        # (available_bytes) cost about a millisecond per key with a hundred blocks held.
        # Only a refusal scans every block (what it found is what is available).
        ranges: list[KeyRange] = []
        remaining = length_bytes
        for block in self._blocks.values():
            lo, hi = block.half(self._role)
            for start, end in _gaps(lo, hi, block.used[self._role], block.reserved):
                take = min(remaining, end - start)
                ranges.append(KeyRange(block.block_id, start, take))
                remaining -= take
                if remaining == 0:
                    break
            if remaining == 0:
                break
        if remaining > 0:
            available = sum(r.length_bytes for r in ranges)
            raise InsufficientKeyMaterial(
                f"link {self._link_id!r}: {length_bytes} bytes requested, {available} available"
            )
        for r in ranges:
            _add(self._blocks[r.block_id].reserved, r.offset_bytes, r.end_bytes)
        return self._open_reservation(tuple(ranges), saved_as_used)

    def split(self, reservation: Reservation, length_bytes: int) -> tuple[Reservation, Reservation | None]:
        """Cut an open reservation after its first ``length_bytes``: the head and the rest (None if nothing is left).

        Both parts are open reservations like the original, which closes;
        the bytes stay set aside throughout.

        Raises:
            LocalProtocolError: If the reservation is not open in this pool,
                or ``length_bytes`` is not an int in ``1..reservation.length_bytes``.
        """
        if isinstance(length_bytes, bool) or not isinstance(length_bytes, int) or not 1 <= length_bytes <= reservation.length_bytes:
            raise LocalProtocolError(f"length_bytes must be an int in 1..{reservation.length_bytes}, got {length_bytes!r}")
        self._take_open(reservation)
        saved = reservation.reservation_id in self._saved_as_used
        self._saved_as_used.discard(reservation.reservation_id)
        head: list[KeyRange] = []
        rest: list[KeyRange] = []
        remaining = length_bytes
        for r in reservation.ranges:
            take = min(remaining, r.length_bytes)
            if take > 0:
                head.append(KeyRange(r.block_id, r.offset_bytes, take))
                remaining -= take
            if take < r.length_bytes:
                rest.append(KeyRange(r.block_id, r.offset_bytes + take, r.length_bytes - take))
        first = self._open_reservation(tuple(head), saved)
        return first, (self._open_reservation(tuple(rest), saved) if rest else None)

    def commit(self, reservation: Reservation) -> bytes:
        """Mark a reservation's bytes used and return them (concatenated).

        Raises:
            LocalProtocolError: If the reservation is not open in this pool
                (already committed or released, or from another pool).
            KeyNotFound: If one of its blocks was discarded by
                :meth:`retain_only`; the reservation is then void and its
                surviving bytes return to the pool.
        """
        self._take_open(reservation)
        self._saved_as_used.discard(reservation.reservation_id)
        if any(r.block_id not in self._blocks for r in reservation.ranges):
            self._unreserve(reservation)
            raise KeyNotFound("a block of this reservation was discarded during resync")
        parts: list[bytes] = []
        for r in reservation.ranges:
            block = self._blocks[r.block_id]
            _remove(block.reserved, r.offset_bytes, r.end_bytes)
            parts.append(block.read(self._role, r.offset_bytes, r.end_bytes))
            if block.mark_used(self._role, r.offset_bytes, r.end_bytes):
                self._names = None
        self._retire_full({r.block_id for r in reservation.ranges})
        return b"".join(parts)

    def release(self, reservation: Reservation) -> None:
        """Return a reservation's bytes to the pool.

        Idempotent: releasing a reservation that is no longer open (already
        committed or released) does nothing, so cleanup paths may call it
        unconditionally. See the module docstring for when *not* to release.

        Raises:
            LocalProtocolError: If the ID is open but the reservation differs
                (it belongs to another pool).
        """
        stored = self._open.get(reservation.reservation_id)
        if stored is None:
            return
        self._take_open(reservation)
        self._saved_as_used.discard(reservation.reservation_id)
        self._unreserve(reservation)

    # -- the peer's use ----------------------------------------------------

    def consume_ranges(self, ranges: Sequence[KeyRange], initiator: Role) -> bytes:
        """Consume ranges the peer used and named; all-or-nothing.

        Args:
            ranges: The ranges from the peer's message, in key order.
            initiator: The peer's role (ranges must lie in its half).

        Returns:
            The bytes of the ranges, concatenated in the given order.

        Raises:
            LocalProtocolError: If ``initiator`` is our own role.
            KeyNotFound: A block we do not hold (never added, or discarded).
            KeyAlreadyUsed: A range overlapping bytes already used.
            RemoteProtocolError: A malformed range: non-positive length,
                out of the block, outside the initiator's half, or
                overlapping another range of the same call.
        """
        data = self.peek_ranges(ranges, initiator)
        for r in ranges:
            if self._blocks[r.block_id].mark_used(initiator, r.offset_bytes, r.end_bytes):
                self._names = None
        self._retire_full({r.block_id for r in ranges})
        return data

    def peek_ranges(self, ranges: Sequence[KeyRange], initiator: Role) -> bytes:
        """The bytes of ranges the peer named, checked exactly as :meth:`consume_ranges` does, without using them.

        For checking a message's one-time MAC before its pad is marked used:
        a forged message then leaves both ledgers as they were.

        Raises:
            The same errors as :meth:`consume_ranges`.
        """
        if initiator is not self._role.peer:
            raise LocalProtocolError(f"consume_ranges is for the peer's ranges, not {initiator!r}")
        ranges = list(ranges)
        claimed: dict[str, list[Interval]] = {}
        for r in ranges:
            self._check_peer_range(r, initiator, claimed)
        return b"".join(self._blocks[r.block_id].read(initiator, r.offset_bytes, r.end_bytes) for r in ranges)

    # -- persistence -----------------------------------------------------

    def to_state(self, *, inline: bool = True) -> dict[str, Any]:
        """A JSON-able snapshot, ledger included.

        With ``inline`` (the default) the snapshot holds everything, key
        bytes as hex (it holds secrets). With ``inline=False`` it holds only
        what changes as key is used — each open block's used ranges — and
        names the immutable parts instead: each half's key bytes
        (``"data": {"alice": "blob", ...}``) and each closed block's summary
        (``"closed": [block_id, ...]``), which :meth:`blob_names` and
        :meth:`blob` provide, so a store writes them once (see
        :class:`~qcinode.keys.linkstore.LinkStore`). Its size then grows with
        the open blocks' ledgers and one ID per kept closed block (at most
        :data:`CLOSED_BLOCKS_KEPT`), not with the key they hold or the
        blocks folded.

        Open reservations are not included: restored, their bytes are
        available — but for those made ``saved_as_used``, recorded as used.
        """
        saved_as_used: dict[str, list[Interval]] = {}
        for reservation_id in self._saved_as_used:
            for r in self._open[reservation_id].ranges:
                _add(saved_as_used.setdefault(r.block_id, []), r.offset_bytes, r.end_bytes)
        blocks = []
        for block in self._blocks.values():
            if not inline and block.block_id not in saved_as_used:
                blocks.append(block.saved_form())
                continue
            used = block.used
            if block.block_id in saved_as_used:  # our half only: reservations are never in the peer's
                ours = list(used[self._role])
                for start, end in saved_as_used[block.block_id]:
                    _add(ours, start, end)
                used = {**used, self._role: ours}
            blocks.append(block.state(used, inline=inline))
        closed: list[Any] = (
            [_closed_to_state(block_id, c) for block_id, c in self._closed.items()] if inline else list(self._closed)
        )
        folded = self._folded
        return {
            "version": _STATE_VERSION,
            "link_id": self._link_id,
            "role": self._role.value,
            "blocks": blocks,
            "closed": closed,
            "folded": {
                "watermark_seq": folded.watermark_seq,
                "blocks": folded.blocks,
                "discarded_blocks": folded.discarded_blocks,
                "size_bytes": folded.size_bytes,
                "used_bytes": folded.used_bytes,
                "digest": folded.digest.hex(),
            },
        }

    def blob_names(self) -> frozenset[str]:
        """The names of the immutable parts :meth:`to_state` (``inline=False``) leaves out.

        At most two per live block and one per kept closed block: folded
        blocks are not named. Cached until a block is added, closed or drops
        a half (a save asks for it every time; key use rarely changes it).
        """
        if self._names is None:
            names = {
                f"{_DATA_BLOB}{block.block_id}/{role.value}"
                for block in self._blocks.values()
                for role in Role
                if block.data[role] is not None
            }
            names.update(f"{_CLOSED_BLOB}{block_id}" for block_id in self._closed)
            self._names = frozenset(names)
        return self._names

    def blob(self, name: str) -> bytes:
        """One immutable part, by a name from :meth:`blob_names` (key bytes: secret).

        Raises:
            KeyNotFound: No such part (any more).
        """
        if name.startswith(_CLOSED_BLOB):
            block_id = name[len(_CLOSED_BLOB) :]
            closed = self._closed.get(block_id)
            if closed is not None:
                return json.dumps(_closed_to_state(block_id, closed), separators=(",", ":")).encode()
        elif name.startswith(_DATA_BLOB):
            block_id, _, role = name[len(_DATA_BLOB) :].rpartition("/")
            block = self._blocks.get(block_id)
            if block is not None and role in _ROLE_VALUES and (data := block.data[Role(role)]) is not None:
                return data
        raise KeyNotFound(f"no stored part {name!r} in the pool of link {self._link_id!r}")

    @classmethod
    def from_state(cls, state: dict[str, Any], blobs: Mapping[str, bytes] | None = None) -> LinkKeyPool:
        """Rebuild a pool from :meth:`to_state` output (and, if it was not inline, its blobs).

        Raises:
            KeyStoreError: If the state is malformed or inconsistent, or names
                a blob that ``blobs`` lacks.
        """
        try:
            return cls._from_state(state, blobs or {})
        except KeyStoreError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise KeyStoreError(f"malformed key pool state: {exc!r}") from None

    @classmethod
    def _from_state(cls, state: dict[str, Any], blobs: Mapping[str, bytes]) -> LinkKeyPool:
        if state["version"] not in _READABLE_STATE_VERSIONS:
            raise KeyStoreError(f"unsupported key pool state version {state['version']!r}")
        pool = cls(str(state["link_id"]), Role(state["role"]))
        for item in state["blocks"]:
            block_id = str(item["block_id"])
            size = _nonneg_int(item["size"])
            block = _Block.__new__(_Block)
            block.block_id = block_id
            block.size = size
            block.boundary = size // 2
            block.digest = bytes.fromhex(item["digest"])
            block.reserved = []
            block.data = {}
            block.used = {}
            block._saved_form = None
            for role in Role:
                lo, hi = block.half(role)
                used = _intervals_from_state(item["used"][role.value], lo, hi)
                raw = item["data"][role.value]
                if raw is None:
                    if used != ([(lo, hi)] if hi > lo else []):
                        raise KeyStoreError(f"block {block_id}: bytes missing for a half in use")
                    block.data[role] = None
                else:
                    data = _blob(blobs, f"{_DATA_BLOB}{block_id}/{role.value}") if raw == _EXTERNAL else bytes.fromhex(raw)
                    if len(data) != hi - lo:
                        raise KeyStoreError(f"block {block_id}: half has the wrong length")
                    block.data[role] = data
                block.used[role] = used
            halves = [block.data[role] for role in Role]
            if all(h is not None for h in halves):
                if hashlib.sha256(b"".join(h for h in halves if h is not None)).digest() != block.digest:
                    raise KeyStoreError(f"block {block_id}: digest mismatch")
            if block_id in pool._blocks:
                raise KeyStoreError(f"duplicate block {block_id!r} in state")
            pool._blocks[block_id] = block
        if state["version"] >= 3:
            pool._folded = _folded_from_state(state["folded"])
        for entry in state["closed"]:
            item = json.loads(_blob(blobs, f"{_CLOSED_BLOB}{entry}")) if isinstance(entry, str) else entry
            block_id = str(item["block_id"])
            seq = pool._seq(block_id)
            if seq is None:
                raise KeyStoreError(f"closed block {block_id!r} in state is not '{pool._link_id}/<seq>'")
            if block_id in pool._blocks or block_id in pool._closed:
                raise KeyStoreError(f"duplicate block {block_id!r} in state")
            size = _nonneg_int(item["size"])
            used_runs: list[tuple[int, int, Role]] = []
            for role in Role:
                lo, hi = (0, size // 2) if role is Role.ALICE else (size // 2, size)
                runs = [[s, e] for s, e, r in item["used"] if r == role.value]
                used_runs.extend((s, e, role) for s, e in _intervals_from_state(runs, lo, hi))
            if any(r not in {role.value for role in Role} for _, _, r in item["used"]):
                raise KeyStoreError(f"block {block_id}: unknown initiator in ledger")
            discarded = item["discarded"]
            if not isinstance(discarded, bool):
                raise KeyStoreError(f"block {block_id}: 'discarded' must be a bool")
            pool._closed[block_id] = _ClosedBlock(
                seq=seq,
                size=size,
                digest=bytes.fromhex(item["digest"]),
                discarded=discarded,
                used=tuple(sorted(used_runs, key=lambda t: t[0])),
            )
        for block_id in pool._blocks:
            if pool._seq(block_id) is None:
                raise KeyStoreError(f"block {block_id!r} in state is not '{pool._link_id}/<seq>'")
        pool._fold_excess()  # a version 1 or 2 state holds every closed block
        return pool

    def __repr__(self) -> str:
        # Never show key material.
        return (
            f"LinkKeyPool(link_id={self._link_id!r}, role={self._role.value}, "
            f"blocks={len(self._blocks)}, available_bytes={self.available_bytes}, "
            f"peer_available_bytes={self.peer_available_bytes})"
        )

    # -- internals -------------------------------------------------------

    def _open_reservation(self, ranges: tuple[KeyRange, ...], saved_as_used: bool) -> Reservation:
        reservation = Reservation(self._link_id, self._next_reservation_id, ranges)
        self._next_reservation_id += 1
        self._open[reservation.reservation_id] = reservation
        if saved_as_used:
            self._saved_as_used.add(reservation.reservation_id)
        return reservation

    def _take_open(self, reservation: Reservation) -> None:
        """Remove an open reservation from the open set, checking it is ours."""
        stored = self._open.get(reservation.reservation_id)
        if stored is None:
            raise LocalProtocolError(
                f"reservation {reservation.reservation_id} is not open (committed or released)"
            )
        if stored != reservation:
            raise LocalProtocolError(
                f"reservation {reservation.reservation_id} does not belong to this pool"
            )
        del self._open[reservation.reservation_id]

    def _unreserve(self, reservation: Reservation) -> None:
        for r in reservation.ranges:
            block = self._blocks.get(r.block_id)
            if block is not None:
                _remove(block.reserved, r.offset_bytes, r.end_bytes)

    def _check_peer_range(
        self, r: KeyRange, initiator: Role, claimed: dict[str, list[Interval]]
    ) -> None:
        """Validate one peer-named range without changing anything."""
        if not isinstance(r, KeyRange):
            raise RemoteProtocolError(f"not a KeyRange: {r!r}")
        for value in (r.offset_bytes, r.length_bytes):
            if isinstance(value, bool) or not isinstance(value, int):
                raise RemoteProtocolError(f"range {r!r} has a non-integer field")
        if r.offset_bytes < 0 or r.length_bytes < 1:
            raise RemoteProtocolError(f"range {r!r} is empty or negative")
        block = self._blocks.get(r.block_id)
        if block is None:
            closed = self._closed.get(r.block_id)
            if closed is None and self._is_folded(r.block_id):
                raise KeyAlreadyUsed(f"block {r.block_id!r} is closed and folded (used up or discarded)")
            if closed is None or closed.discarded:
                raise KeyNotFound(f"no block {r.block_id!r} in link {self._link_id!r}")
            lo, hi = (0, closed.size // 2) if initiator is Role.ALICE else (closed.size // 2, closed.size)
            if not (lo <= r.offset_bytes and r.end_bytes <= hi):
                raise RemoteProtocolError(f"range {r!r} lies outside the {initiator.value} half")
            raise KeyAlreadyUsed(f"block {r.block_id!r} is fully used")
        lo, hi = block.half(initiator)
        if not (lo <= r.offset_bytes and r.end_bytes <= hi):
            raise RemoteProtocolError(f"range {r!r} lies outside the {initiator.value} half")
        if _overlaps(block.used[initiator], r.offset_bytes, r.end_bytes):
            raise KeyAlreadyUsed(f"range {r!r} overlaps bytes already used")
        if _overlaps(block.reserved, r.offset_bytes, r.end_bytes):
            raise KeyAlreadyUsed(f"range {r!r} overlaps bytes we reserved")
        seen = claimed.setdefault(r.block_id, [])
        if _overlaps(seen, r.offset_bytes, r.end_bytes):
            raise RemoteProtocolError(f"range {r!r} overlaps another range of the same message")
        _add(seen, r.offset_bytes, r.end_bytes)

    def _retire_full(self, block_ids: set[str]) -> None:
        for block_id in block_ids:
            block = self._blocks.get(block_id)
            if block is not None and block.is_fully_used() and not block.reserved:
                self._close(self._blocks.pop(block_id), discarded=False)

    def _close(self, block: _Block, *, discarded: bool) -> None:
        runs = [(s, e, role) for role in Role for s, e in block.used[role]]
        seq = self._seq(block.block_id)
        assert seq is not None  # add_block and from_state take no other ID
        self._closed[block.block_id] = _ClosedBlock(
            seq=seq,
            size=block.size,
            digest=block.digest,
            discarded=discarded,
            used=tuple(sorted(runs, key=lambda t: t[0])),
        )
        self._names = None
        self._fold_excess()

    def _fold_excess(self) -> None:
        """Fold every closed block but the CLOSED_BLOCKS_KEPT with the highest seqs.

        Keeping the highest seqs (not the latest to close) makes the kept
        set, hence the fold, a function of the set of closed blocks: both
        ends of a link agree whatever order their blocks closed in.
        """
        excess = len(self._closed) - CLOSED_BLOCKS_KEPT
        if excess <= 0:
            return
        oldest = sorted(self._closed.items(), key=lambda item: item[1].seq)[:excess]
        f = self._folded
        watermark, blocks, discarded, size, used = f.watermark_seq, f.blocks, f.discarded_blocks, f.size_bytes, f.used_bytes
        digest = int.from_bytes(f.digest, "big")
        for block_id, closed in oldest:
            del self._closed[block_id]
            watermark = max(watermark, closed.seq)
            blocks += 1
            discarded += closed.discarded
            size += closed.size
            used += closed.used_bytes
            summary = json.dumps(_closed_to_state(block_id, closed), separators=(",", ":"), sort_keys=True)
            digest ^= int.from_bytes(hashlib.sha256(summary.encode()).digest(), "big")
        self._folded = FoldedLedger(watermark, blocks, discarded, size, used, digest.to_bytes(32, "big"))
        self._names = None

    def _seq(self, block_id: str) -> int | None:
        """The seq of ``f"{link_id}/{seq}"`` (canonical decimal), or None for any other ID."""
        prefix = self._link_id + "/"
        if not isinstance(block_id, str) or not block_id.startswith(prefix):
            return None
        digits = block_id[len(prefix) :]
        if not (digits.isascii() and digits.isdigit()) or (len(digits) > 1 and digits[0] == "0"):
            return None
        return int(digits)

    def _is_folded(self, block_id: str) -> bool:
        """Whether ``block_id`` is not live and at or below the watermark (closed for good)."""
        seq = self._seq(block_id)
        return seq is not None and seq <= self._folded.watermark_seq and block_id not in self._blocks


# -- sorted, disjoint, merged [start, end) interval lists ----------------------


def _start(interval: Interval) -> int:
    return interval[0]


def _total(intervals: list[Interval]) -> int:
    return sum(end - start for start, end in intervals)


def _overlaps(intervals: list[Interval], start: int, end: int) -> bool:
    """Whether ``[start, end)`` meets any interval of the list."""
    # Intervals are disjoint and sorted, so ends increase with starts: only the
    # last interval starting before ``end`` can reach past ``start``.
    i = bisect.bisect_left(intervals, end, key=_start)
    return i > 0 and intervals[i - 1][1] > start


def _add(intervals: list[Interval], start: int, end: int) -> None:
    """Insert ``[start, end)`` (disjoint from the list), merging neighbours."""
    if _overlaps(intervals, start, end):
        raise KeyStoreError(f"ledger invariant broken: [{start}, {end}) overlaps")
    i = bisect.bisect_left(intervals, start, key=_start)
    if i > 0 and intervals[i - 1][1] == start:
        i -= 1
        start = intervals.pop(i)[0]
    if i < len(intervals) and intervals[i][0] == end:
        end = intervals.pop(i)[1]
    intervals.insert(i, (start, end))


def _remove(intervals: list[Interval], start: int, end: int) -> None:
    """Remove ``[start, end)``, which must lie inside one interval of the list."""
    i = bisect.bisect_right(intervals, start, key=_start) - 1
    if i < 0 or intervals[i][1] < end:
        raise KeyStoreError(f"ledger invariant broken: [{start}, {end}) is not reserved")
    lo, hi = intervals[i]
    intervals[i : i + 1] = [iv for iv in ((lo, start), (end, hi)) if iv[1] > iv[0]]


def _gaps(lo: int, hi: int, *taken: list[Interval]) -> Iterator[Interval]:
    """The parts of ``[lo, hi)`` covered by none of the ``taken`` lists, in order."""
    cursor = lo
    for start, end in heapq.merge(*taken):
        if end <= cursor:
            continue
        if start >= hi:
            break
        if start > cursor:
            yield (cursor, min(start, hi))
        cursor = max(cursor, end)
        if cursor >= hi:
            return
    if cursor < hi:
        yield (cursor, hi)


def _nonneg_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise KeyStoreError(f"expected a non-negative int, got {value!r}")
    return value


def _intervals_from_state(raw: Any, lo: int, hi: int) -> list[Interval]:
    """Parse ``[[start, end], ...]`` and check it is sorted, disjoint and in ``[lo, hi)``."""
    intervals: list[Interval] = []
    for pair in raw:
        start, end = (_nonneg_int(v) for v in pair)
        if not (lo <= start < end <= hi):
            raise KeyStoreError(f"ledger range [{start}, {end}) outside [{lo}, {hi})")
        if _overlaps(intervals, start, end):
            raise KeyStoreError(f"ledger ranges overlap at [{start}, {end})")
        _add(intervals, start, end)
    return intervals


def _closed_to_state(block_id: str, closed: _ClosedBlock) -> dict[str, Any]:
    return {
        "block_id": block_id,
        "size": closed.size,
        "digest": closed.digest.hex(),
        "discarded": closed.discarded,
        "used": [[s, e, role.value] for s, e, role in closed.used],
    }


def _folded_from_state(raw: Any) -> FoldedLedger:
    watermark = raw["watermark_seq"]
    if isinstance(watermark, bool) or not isinstance(watermark, int) or watermark < -1:
        raise KeyStoreError(f"folded watermark_seq must be an int >= -1, got {watermark!r}")
    digest = bytes.fromhex(raw["digest"])
    if len(digest) != len(_NO_DIGEST):
        raise KeyStoreError("folded digest must be 32 bytes")
    blocks, discarded, size, used = (_nonneg_int(raw[name]) for name in ("blocks", "discarded_blocks", "size_bytes", "used_bytes"))
    if (watermark < 0) != (blocks == 0) or discarded > blocks or used > size:
        raise KeyStoreError("folded ledger counters are inconsistent")
    return FoldedLedger(watermark, blocks, discarded, size, used, digest)


def _blob(blobs: Mapping[str, bytes], name: str) -> bytes:
    data = blobs.get(name)
    if data is None:
        raise KeyStoreError(f"key pool state names stored part {name!r}, which is missing")
    return data
