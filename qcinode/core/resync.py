"""Reconnection resynchronisation of a link's two ends: the authenticated Hello (pure; no I/O).

When a link's session breaks (a lost message, a crash, a partition), the two
ends may disagree on which blocks they hold, where their one-time MAC keys
stand and which sequence numbers come next. On reconnection each end sends a
:class:`Hello` describing what it holds (a :class:`LinkSnapshot`), both
compute the same :class:`Reconciliation` from the two snapshots with
:func:`reconcile`, and each applies its side. :class:`HelloExchange` is one
end's side of that exchange as a message-driven object; the node's link
workers and :func:`qcinode.core.pair.reconnect` drive it.

Theory of operation (the rules):

1. **What a snapshot says.** The blocks an end holds (its pool's live
   blocks), the block it holds *pending* Alice's Commit (Bob only), the
   blocks whose MAC-key refills it has *staged* and how far it has
   *promoted* staged refills (:attr:`AuthKeyReserve.promoted_before`), its
   MAC-key cursor, and its next block sequence and frame ID. Everything a
   Hello reveals is on disk first (the driver saves before it sends).
2. **Blocks.** Each end keeps exactly the blocks both hold; Bob's pending
   block counts as held, and Bob accepts it iff Alice holds it (she accepts
   a block before she sends its Commit, so a lost Commit leaves it at both
   ends), else drops it. Sequence numbers and frame IDs go to the larger.
3. **Refills.** Staged refills of blocks below the larger ``promoted_before``
   are promoted into the reserve (the other end already did: it signed a
   later block, which it can only do once both hold the earlier ones);
   staged refills at or above it are kept iff the other end staged the same
   block too (counting Bob's pending block that rule 2 accepts). Both
   reserves thus stay the same concatenation of bootstrap key and refills,
   in block order, which is what makes key *i* the same bytes at both ends.
4. **Which MAC keys tag the Hello.** The initiator (Alice, who dials) takes
   the next *two* keys of her reserve, ``K[c]`` and ``K[c+1]`` where ``c``
   is her cursor, saves, and sends her Hello (saying ``c``) tagged with
   ``K[c]``; ``K[c+1]`` is set aside for the answer. The responder (Bob)
   checks the tag with key ``c`` of his own reserve after promoting what
   Alice's ``promoted_before`` says she promoted (on a copy: a Hello that
   fails changes nothing), skips his cursor to ``c + 2`` and answers with
   his own Hello tagged with ``K[c+1]``. Both cursors end at ``c + 2``.
   Alice's cursor is never behind Bob's: she takes a block's MAC keys and
   saves before Bob can take them (a Confirm lost in transit leaves her
   ahead, and Bob simply skips forward to her Hello's key), and the Hello
   keys themselves are saved as used before the Hello leaves.
5. **A key is never used twice.** ``K[c]`` tags Alice's Hello only;
   ``K[c+1]`` tags Bob's answer only; both are past both cursors afterwards
   and a failed or lost exchange never moves a cursor back (a retry starts
   at ``c + 2``). Bob refuses a Hello whose key is behind his cursor: he may
   have used it.
6. **An end that is behind.** If Alice's cursor is behind Bob's (only if
   her state was lost or rolled back), Bob answers ``BEHIND`` tagged with
   ``K[b]``, his own next key (``b`` his cursor), changing nothing else;
   Alice checks it, skips her cursor past ``b`` and dials again, so the next
   Hello is at a key neither end has used.
7. **Refusal.** A Hello that is malformed, names another link or role,
   fails its tag, or needs keys the reserve does not reach raises
   :class:`HelloRefused` with a reason from :class:`HelloRefusal`, and
   changes nothing at the refusing end (pools, cursors, pending blocks).
   An attacker who is not the peer cannot make a Hello that verifies
   (Poly1305 one-time forgery bound, :mod:`qcinode.core.authentication`);
   the peer itself cannot make the other end drop blocks it holds, except
   by claiming, in an authenticated Hello, not to hold them — which only
   throws key away, never reuses it.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Iterable

from qcinode.errors import (
    AuthenticationFailed,
    InsufficientKeyMaterial,
    LocalProtocolError,
    RemoteProtocolError,
)

from .authentication import AuthKeyReserve, one_time_tag, verify_one_time_tag
from .roles import Role

__all__ = [
    "HELLO_KEYS",
    "CursorBehind",
    "Hello",
    "HelloExchange",
    "HelloKind",
    "HelloRefusal",
    "HelloRefused",
    "LinkSnapshot",
    "Reconciliation",
    "hello_bytes",
    "reconcile",
]

#: One-time MAC keys one Hello exchange uses (the initiator's tag, the answer's tag).
HELLO_KEYS = 2

_DOMAIN = b"qcinode/hello/v1\x00"
_MAX_SEQ = 2**64 - 1


class HelloKind(enum.Enum):
    """What a Hello is in the exchange."""

    OPEN = "open"
    """The initiator's Hello (Alice's, on every connection)."""
    ANSWER = "answer"
    """The responder's answer to an OPEN it accepted."""
    BEHIND = "behind"
    """The responder's answer to an OPEN whose MAC key is behind its cursor (rule 6)."""


class HelloRefusal(enum.Enum):
    """Why a Hello was refused: a closed vocabulary (log field)."""

    MALFORMED = "malformed"
    """Wrong kind for this point of the exchange, another link, the wrong role, impossible numbers."""
    AUTHENTICATION_FAILED = "authentication_failed"
    """The one-time MAC tag does not verify: tampered, or not from the peer."""
    KEYS_UNAVAILABLE = "keys_unavailable"
    """The MAC key the Hello needs is beyond our reserve (or already used)."""


class HelloRefused(RemoteProtocolError):
    """A Hello was refused; nothing changed at the refusing end. Expected under faults or attack.

    Attributes:
        reason: Why, from :class:`HelloRefusal`.
    """

    def __init__(self, reason: HelloRefusal, detail: str) -> None:
        super().__init__(f"hello refused ({reason.value}): {detail}")
        self.reason = reason


@dataclasses.dataclass(frozen=True, slots=True)
class LinkSnapshot:
    """What one end of a link holds, as its Hello says (rule 1).

    Attributes:
        link_id: The link.
        role: Which end.
        next_block_seq: The sequence number its next block would get.
        next_frame_id: The ID its next frame would get (Alice's counter; Bob follows).
        auth_cursor: Index of its next unused one-time MAC key.
        promoted_before: How far its staged MAC-key refills were promoted.
        held_block_seqs: Blocks in its pool (sorted, distinct).
        staged_block_seqs: Blocks whose MAC-key refill it has staged (sorted, distinct).
        pending_block_seq: Bob: the block held pending Alice's Commit; None otherwise.
    """

    link_id: str
    role: Role
    next_block_seq: int
    next_frame_id: int
    auth_cursor: int
    promoted_before: int
    held_block_seqs: tuple[int, ...]
    staged_block_seqs: tuple[int, ...] = ()
    pending_block_seq: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "held_block_seqs", tuple(sorted(set(self.held_block_seqs))))
        object.__setattr__(self, "staged_block_seqs", tuple(sorted(set(self.staged_block_seqs))))

    @property
    def holds(self) -> frozenset[int]:
        """Every block it holds, its pending block included."""
        pending = () if self.pending_block_seq is None else (self.pending_block_seq,)
        return frozenset((*self.held_block_seqs, *pending))


@dataclasses.dataclass(frozen=True, slots=True)
class Hello:
    """One end's snapshot, tagged with a one-time MAC key (rule 4)."""

    kind: HelloKind
    snapshot: LinkSnapshot
    auth_tag: bytes = dataclasses.field(default=b"", repr=False)


@dataclasses.dataclass(frozen=True, slots=True)
class Reconciliation:
    """One end's side of what both ends agreed (rules 2 and 3).

    Attributes:
        keep_block_seqs: The blocks both hold: drop every other block of the pool.
        accept_pending: Bob: whether to accept (True) or drop (False) the
            block held pending Alice's Commit; None if there is none.
        promote_before: Staged refills of blocks below this are promoted.
        keep_staged_seqs: Staged refills at or above it that are kept.
        next_block_seq: The next block sequence of both ends.
        next_frame_id: The next frame ID of both ends.
        auth_cursor: Both ends' MAC-key cursor once the exchange is done
            (filled in by :class:`HelloExchange`; -1 from :func:`reconcile`).
    """

    keep_block_seqs: frozenset[int]
    accept_pending: bool | None
    promote_before: int
    keep_staged_seqs: frozenset[int]
    next_block_seq: int
    next_frame_id: int
    auth_cursor: int = -1


@dataclasses.dataclass(frozen=True, slots=True)
class CursorBehind:
    """The initiator was behind (rule 6): its cursor moved to ``auth_cursor``; dial again."""

    auth_cursor: int


def reconcile(ours: LinkSnapshot, theirs: LinkSnapshot) -> Reconciliation:
    """What our end does to agree with theirs: the same decisions at both ends.

    Pure and symmetric: ``reconcile(a, b)`` and ``reconcile(b, a)`` keep the
    same blocks and the same staged refills, and name the same sequence
    numbers (rules 2 and 3).
    """
    ours_hold, theirs_hold = ours.holds, theirs.holds
    accept_pending = None if ours.pending_block_seq is None else ours.pending_block_seq in theirs_hold
    promote_before = max(ours.promoted_before, theirs.promoted_before)
    # The peer's pending block becomes held (and its refill staged) iff we hold it.
    their_staged = set(theirs.staged_block_seqs)
    if theirs.pending_block_seq is not None and theirs.pending_block_seq in ours_hold:
        their_staged.add(theirs.pending_block_seq)
    if ours.pending_block_seq is not None and accept_pending:
        ours_staged = set(ours.staged_block_seqs) | {ours.pending_block_seq}
    else:
        ours_staged = set(ours.staged_block_seqs)
    keep_staged = frozenset(seq for seq in ours_staged & their_staged if seq >= promote_before)
    return Reconciliation(
        keep_block_seqs=ours_hold & theirs_hold,
        accept_pending=accept_pending,
        promote_before=promote_before,
        keep_staged_seqs=keep_staged,
        next_block_seq=max(ours.next_block_seq, theirs.next_block_seq),
        next_frame_id=max(ours.next_frame_id, theirs.next_frame_id),
    )


def hello_bytes(hello: Hello) -> bytes:
    """The canonical bytes a Hello's tag covers: kind and every snapshot field, prefix-free.

    Layout: a domain string; kind, link ID and role as 4-byte-length-prefixed
    UTF-8; next block sequence, next frame ID, cursor and ``promoted_before``
    as 8-byte big-endian integers; held and staged block sequences each as a
    4-byte count and 8-byte integers; the pending block as one byte (0/1)
    and 8 bytes.

    Raises:
        LocalProtocolError: A field cannot be encoded.
    """
    s = hello.snapshot
    try:
        parts = [_DOMAIN, _text(hello.kind.value), _text(s.link_id), _text(s.role.value)]
        parts += [n.to_bytes(8, "big") for n in (s.next_block_seq, s.next_frame_id, s.auth_cursor, s.promoted_before)]
        for seqs in (s.held_block_seqs, s.staged_block_seqs):
            parts.append(len(seqs).to_bytes(4, "big"))
            parts += [seq.to_bytes(8, "big") for seq in seqs]
        pending = s.pending_block_seq
        parts.append(b"\x00" + bytes(8) if pending is None else b"\x01" + pending.to_bytes(8, "big"))
    except (AttributeError, TypeError, ValueError, OverflowError) as exc:
        raise LocalProtocolError(f"hello cannot be encoded: {exc}") from None
    return b"".join(parts)


def _text(value: str) -> bytes:
    data = value.encode("utf-8")
    return len(data).to_bytes(4, "big") + data


def _check_numbers(values: Iterable[object]) -> bool:
    return all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= _MAX_SEQ for v in values)


class HelloExchange:
    """One end's side of the reconnection Hello (rules 4-7).

    The initiator (``Role.ALICE``) calls :meth:`start` and sends the Hello
    it returns; each end feeds the peer's Hello to :meth:`receive` and sends
    what it returns. :attr:`result` is then the :class:`Reconciliation` to
    apply (its reserve changes are already made), or :class:`CursorBehind`
    at the initiator. The driver saves the reserve before it sends anything
    this object returned.
    """

    __slots__ = ("_answer_key", "_opened_at", "_reserve", "_snapshot", "result")

    def __init__(self, snapshot: LinkSnapshot, reserve: AuthKeyReserve) -> None:
        """Prepare one end's side.

        Args:
            snapshot: What this end holds now (its cursor and
                ``promoted_before`` must be the reserve's).
            reserve: This end's MAC-key reserve; changed only by an exchange
                that succeeds (and by :meth:`start`, which uses two keys).

        Raises:
            LocalProtocolError: The snapshot does not match the reserve.
        """
        if snapshot.auth_cursor != reserve.cursor or snapshot.promoted_before != reserve.promoted_before:
            raise LocalProtocolError("the snapshot's MAC-key cursor does not match the reserve")
        self._snapshot = snapshot
        self._reserve = reserve
        self._answer_key: bytes | None = None
        self._opened_at: int | None = None
        self.result: Reconciliation | CursorBehind | None = None

    @property
    def snapshot(self) -> LinkSnapshot:
        """This end's snapshot, as its Hello states it."""
        return self._snapshot

    def start(self) -> Hello:
        """The initiator's Hello; takes its two MAC keys (rule 4). Save before sending it.

        Raises:
            LocalProtocolError: Called at the responder, or twice.
            InsufficientKeyMaterial: Fewer than two MAC keys are left (the
                link cannot authenticate anything any more).
        """
        if self._snapshot.role is not Role.ALICE or self._opened_at is not None:
            raise LocalProtocolError("only the initiator (Alice) opens a Hello exchange, once")
        cursor = self._reserve.cursor
        tag_key, self._answer_key = self._reserve.take(HELLO_KEYS)
        self._opened_at = cursor
        unsigned = Hello(HelloKind.OPEN, self._snapshot)
        return dataclasses.replace(unsigned, auth_tag=one_time_tag(tag_key, hello_bytes(unsigned)))

    def receive(self, hello: Hello) -> list[Hello]:
        """Take in the peer's Hello; returns the Hello to send back (if any).

        Raises:
            HelloRefused: Refused (rule 7); nothing changed.
        """
        self._check_shape(hello)
        if self._snapshot.role is Role.BOB:
            return self._answer(hello)
        self._finish(hello)
        return []

    # -- responder ---------------------------------------------------------

    def _answer(self, hello: Hello) -> list[Hello]:
        if hello.kind is not HelloKind.OPEN or self.result is not None:
            raise HelloRefused(HelloRefusal.MALFORMED, f"expected an opening hello, got {hello.kind.value}")
        theirs = hello.snapshot
        reserve = self._reserve
        if theirs.auth_cursor < reserve.cursor:
            # Rule 6: that key may be used already; tell the initiator where we are, with our next key.
            behind = Hello(HelloKind.BEHIND, self._snapshot)
            try:
                key = reserve.take(1)[0]
            except InsufficientKeyMaterial as exc:
                raise HelloRefused(HelloRefusal.KEYS_UNAVAILABLE, str(exc)) from None
            self.result = CursorBehind(reserve.cursor)
            return [dataclasses.replace(behind, auth_tag=one_time_tag(key, hello_bytes(behind)))]
        candidate = reserve.copy()
        candidate.promote_before(theirs.promoted_before)
        tag_key, answer_key = self._keys(candidate, theirs.auth_cursor, HELLO_KEYS)
        self._verify(tag_key, hello)
        # Authentic: from here on, change things.
        candidate.skip_to(theirs.auth_cursor + HELLO_KEYS)
        plan = reconcile(self._snapshot, theirs)
        _apply_refills(candidate, plan)
        _replace_reserve(reserve, candidate)
        self.result = dataclasses.replace(plan, auth_cursor=reserve.cursor)
        answer = Hello(HelloKind.ANSWER, self._snapshot)
        return [dataclasses.replace(answer, auth_tag=one_time_tag(answer_key, hello_bytes(answer)))]

    # -- initiator ---------------------------------------------------------

    def _finish(self, hello: Hello) -> None:
        if self._opened_at is None or self._answer_key is None or self.result is not None:
            raise HelloRefused(HelloRefusal.MALFORMED, "an answer before our hello, or a second one")
        theirs = hello.snapshot
        if hello.kind is HelloKind.ANSWER:
            self._verify(self._answer_key, hello)
            plan = reconcile(self._snapshot, theirs)
            candidate = self._reserve.copy()
            _apply_refills(candidate, plan)
            _replace_reserve(self._reserve, candidate)
            self.result = dataclasses.replace(plan, auth_cursor=self._reserve.cursor)
            return
        if hello.kind is not HelloKind.BEHIND:
            raise HelloRefused(HelloRefusal.MALFORMED, f"expected an answer, got {hello.kind.value}")
        # Rule 6: the responder's cursor is ahead of the key we tagged with.
        theirs_cursor = theirs.auth_cursor
        if theirs_cursor <= self._opened_at:
            raise HelloRefused(HelloRefusal.MALFORMED, f"'behind' from cursor {theirs_cursor}, which is not ahead of {self._opened_at}")
        candidate = self._reserve.copy()
        if theirs_cursor == self._opened_at + 1:
            key = self._answer_key  # the key set aside for the answer: this is the answer
        else:
            candidate.promote_before(theirs.promoted_before)
            (key,) = self._keys(candidate, theirs_cursor, 1)
        self._verify(key, hello)
        if theirs_cursor + 1 > candidate.cursor:
            try:
                candidate.skip_to(theirs_cursor + 1)
            except InsufficientKeyMaterial:
                raise HelloRefused(HelloRefusal.KEYS_UNAVAILABLE, f"cannot skip to key {theirs_cursor + 1}") from None
        _replace_reserve(self._reserve, candidate)
        self.result = CursorBehind(self._reserve.cursor)

    # -- shared -----------------------------------------------------------

    def _check_shape(self, hello: Hello) -> None:
        if not isinstance(hello, Hello) or not isinstance(hello.snapshot, LinkSnapshot) or not isinstance(hello.kind, HelloKind):
            raise HelloRefused(HelloRefusal.MALFORMED, f"expected a Hello, got {type(hello).__name__}")
        theirs = hello.snapshot
        if theirs.link_id != self._snapshot.link_id:
            raise HelloRefused(HelloRefusal.MALFORMED, f"hello for link {str(theirs.link_id)[:80]!r}, this is {self._snapshot.link_id!r}")
        if theirs.role is not self._snapshot.role.peer:
            role = getattr(theirs.role, "value", theirs.role)
            raise HelloRefused(HelloRefusal.MALFORMED, f"hello from the {role!r} end, expected {self._snapshot.role.peer.value!r}")
        numbers = (theirs.next_block_seq, theirs.next_frame_id, theirs.auth_cursor, theirs.promoted_before, *theirs.held_block_seqs, *theirs.staged_block_seqs)
        if not _check_numbers(numbers) or (theirs.pending_block_seq is not None and not _check_numbers((theirs.pending_block_seq,))):
            raise HelloRefused(HelloRefusal.MALFORMED, "hello numbers out of range")
        if theirs.role is Role.ALICE and theirs.pending_block_seq is not None:
            raise HelloRefused(HelloRefusal.MALFORMED, "Alice never holds a block pending")

    @staticmethod
    def _keys(reserve: AuthKeyReserve, cursor: int, count: int) -> list[bytes]:
        try:
            return reserve.peek(cursor, count)
        except (InsufficientKeyMaterial, LocalProtocolError) as exc:
            raise HelloRefused(HelloRefusal.KEYS_UNAVAILABLE, str(exc)) from None

    @staticmethod
    def _verify(key: bytes, hello: Hello) -> None:
        try:
            verify_one_time_tag(key, hello_bytes(dataclasses.replace(hello, auth_tag=b"")), hello.auth_tag)
        except AuthenticationFailed:
            raise HelloRefused(HelloRefusal.AUTHENTICATION_FAILED, "the hello's one-time MAC tag does not verify") from None
        except LocalProtocolError as exc:  # an unencodable field
            raise HelloRefused(HelloRefusal.MALFORMED, str(exc)) from None


def _apply_refills(reserve: AuthKeyReserve, plan: Reconciliation) -> None:
    """Rule 3 on ``reserve``: promote below ``promote_before``, keep the agreed staged refills."""
    reserve.promote_before(plan.promote_before)
    reserve.retain_staged(set(plan.keep_staged_seqs))


def _replace_reserve(reserve: AuthKeyReserve, changed: AuthKeyReserve) -> None:
    """Make ``reserve`` (the object the link's sessions share) equal to ``changed``, a private copy, in place."""
    reserve.adopt(changed)
