"""What every relay machine of one node shares, and sending one share over one hop (pure).

Theory of operation:
    * **The node's view** (:class:`RelayContext`): its name, its links
      (:class:`Neighbours`: the pool of each link, looked up at each use
      because the driver may replace a pool object), the routing database
      (:class:`RouteView`), a source of random bytes, the settings, the
      counters, and the table of actions waiting for a result. Every action
      that expects a result gets a fresh ``ref`` from :meth:`RelayContext.wait`,
      registered with the continuation that handles the result and the owner
      (a request or an incoming hop) it belongs to, so an abandoned owner's
      waits can be dropped together.
    * **One outgoing hop** (:func:`send_share`), the same at the source and
      at a transit node, in this order:

      1. the link to the next node must exist and not be cut — else refused
         before any pad is spent;
      2. the pad is reserved from *our* half of the link pool and committed at
         once: from here on it is used, whatever happens (the peer may use
         it), never released;
      3. the hop is sealed (one-time pad and tag, :mod:`~qcinode.core.relay.hop`);
      4. :class:`~.messages.SaveLink`: the link's ledger goes to disk; a save
         that fails ends the hop (``STORAGE_FAILED``) and nothing is sent —
         the pad stays used in memory, wasted, never reused;
      5. only then :class:`~.messages.SendHop`; its answer ends the hop.

      Steps 1-3 run without the driver in between, so concurrent hops never
      reserve the same byte.
    * **Pad stock: a save ahead, not one per hop.** Step 4 puts a save on
      every hop's path, at the source and at every transit node. So each
      link keeps a stock of pad (:data:`PAD_STOCK_BYTES`, at most a
      sixteenth of what the link has free): a reservation of our half that
      snapshots record as used (``saved_as_used``,
      :mod:`qcinode.core.pool`). It is taken with the pad of a hop that
      saves anyway, and becomes *saved* when that save succeeds. A hop whose
      pad comes from a saved stock needs no save of its own — its bytes are
      on disk as used already — and is sent at once (step 4 is skipped).
      The rules still hold: a pad is on disk as used before it leaves; a
      stopped or crashed node loses its stock (recorded used, never reused);
      a stock whose save failed, or whose save's owner gave up before the
      answer, is released — nothing of it left the process — and the next
      hop takes a new one; a node that stops cleanly releases its stocks
      (:meth:`RelayContext.release_stocks`) before its last save, so the two
      ends' ledgers agree again. A stock belongs to one pool object: if the
      driver replaced the link's pool, the old stock is dropped. A node's
      routing advert counts its stocks with what its pools have free: both
      are what its relay hops can spend.
"""

from __future__ import annotations

import math
import uuid
from collections import Counter
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from qcinode.core.pool import LinkKeyPool, Reservation
from qcinode.core.relay.hop import MAX_SHARES, RelayHeader, pad_bytes_needed, seal_hop
from qcinode.core.relay.messages import (
    HopAnswered,
    KeyStored,
    LinkSaved,
    Refusal,
    RefusalReason,
    RelayAction,
    SaveLink,
    SealedHop,
    SendHop,
)
from qcinode.errors import InsufficientKeyMaterial, KeyNotFound, LocalProtocolError

__all__ = [
    "PAD_STOCK_BYTES",
    "LinkEnd",
    "Neighbours",
    "RelayContext",
    "RelaySettings",
    "RelayStats",
    "RouteView",
    "prepare_share",
    "send_prepared",
    "send_share",
    "storage_refusal",
]


#: Pad a link keeps saved ahead for hops that need no save of their own (the module docstring):
#: 128 hops of a 256-bit key, or 8 requests of 16 such keys.
PAD_STOCK_BYTES = 8192

#: The stock is at most this fraction of what the link has free, so that a scarce pool is not tied up.
_STOCK_SHARE = 16


@dataclass(frozen=True, slots=True)
class LinkEnd:
    """Our end of the link to one neighbour, as it is now.

    Attributes:
        link_id: The link.
        peer: The neighbour.
        pool: Our end's key pool of the link (its role says which half is ours).
        cut: No hop may cross the link now (a partition): refused before any
            pad is spent.
    """

    link_id: str
    peer: str
    pool: LinkKeyPool
    cut: bool = False


class Neighbours(Protocol):
    """The node's links, looked up by neighbour at each use."""

    def link_to(self, peer: str) -> LinkEnd | None:
        """Our end of the link to ``peer``, or None if ``peer`` is not a neighbour."""
        ...


class RouteView(Protocol):
    """What the relay needs of the link-state database (:class:`~qcinode.core.routing.LinkStateDatabase`)."""

    def paths(self, source: str, destination: str, need_bytes: int, limit: int = 4) -> list[list[str]]:
        """Up to ``limit`` loop-free paths able to carry ``need_bytes`` per hop, best first."""
        ...

    def disjoint_paths(self, source: str, destination: str, need_bytes: int, count: int) -> list[list[str]]:
        """Up to ``count`` node-disjoint such paths."""
        ...

    def usable_edges(self, need_bytes: int) -> dict[str, dict[str, int]]:
        """``u → {v: bytes u can spend towards v}`` for every edge able to carry ``need_bytes``."""
        ...

    def debit(self, path: Sequence[str], need_bytes: int) -> None:
        """Count ``need_bytes`` as spent on every hop of ``path`` until the next adverts."""
        ...


@dataclass(frozen=True, slots=True)
class RelaySettings:
    """How the node relays.

    Attributes:
        multipath_shares: XOR shares per key, each over its own node-disjoint
            path (1: one path, no split), ``1..8``.
        concurrency: Keys of one request in flight at the same time, ``≥ 1``.
            The default covers a whole ``enc_keys`` request (the KME's
            ``max_key_per_request``): every key of it starts at once, so
            the driver carries them over each hop as one multi-key message
            with one save and one store (the request's capacity was checked
            up front, so starting them together spends no pad in vain).
        path_attempts: Attempts per key and destination, each over paths not
            tried before (with shares: the best disjoint set again), ``≥ 1``.
        share_ttl_s: How long a destination waits for the other shares of a
            key, and remembers a completed one; positive.
    """

    multipath_shares: int = 1
    concurrency: int = 128
    path_attempts: int = 3
    share_ttl_s: float = 30.0

    def __post_init__(self) -> None:
        for name, low, high in (("multipath_shares", 1, MAX_SHARES), ("concurrency", 1, None), ("path_attempts", 1, None)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
                bound = f"{low}..{high}" if high is not None else f">= {low}"
                raise LocalProtocolError(f"{name}: must be an int {bound}, got {value!r}")
        ttl = self.share_ttl_s
        if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or not math.isfinite(ttl) or ttl <= 0:
            raise LocalProtocolError(f"share_ttl_s: must be positive and finite, got {ttl!r}")


@dataclass(slots=True)
class RelayStats:
    """The node's relay counters (``qcinode status`` and ``/metrics`` read them).

    Attributes:
        started: Keys (per destination node) this node started to relay as source.
        delivered: Of those, delivered.
        failed: Of those, failed; plus hops refused here and hops this node
            could not forward.
        forwarded: Hops this node carried on to the next node, delivered.
        received: Hops accepted here (tag verified, pad consumed and saved).
        hops_sent: Hops sent by this node (source and transit).
        failures_by_reason: Every failure counted in ``failed``, and every
            failed hop of the source's attempts, by reason.
    """

    started: int = 0
    delivered: int = 0
    failed: int = 0
    forwarded: int = 0
    received: int = 0
    hops_sent: int = 0
    failures_by_reason: Counter[RefusalReason] = field(default_factory=Counter)


Continuation = Callable[[LinkSaved | HopAnswered | KeyStored], list[RelayAction]]


@dataclass(slots=True)
class _Stock:
    """A link's pad stock: ``saved`` once a save holding it succeeded; ``ref`` is that save while due."""

    pool: LinkKeyPool
    reservation: Reservation
    saved: bool = False
    ref: int | None = None


@dataclass(slots=True)
class _Wait:
    owner: Hashable
    expects: type[LinkSaved | HopAnswered | KeyStored]
    then: Continuation


class RelayContext:
    """The node's view shared by its relay machines (see the module docstring)."""

    __slots__ = ("node", "neighbours", "routes", "random_bytes", "settings", "stats", "_waits", "_next_ref", "_stocks", "_stock_saves")

    def __init__(
        self,
        node: str,
        neighbours: Neighbours,
        routes: RouteView,
        random_bytes: Callable[[int], bytes],
        settings: RelaySettings,
    ) -> None:
        self.node = node
        self.neighbours = neighbours
        self.routes = routes
        self.random_bytes = random_bytes
        self.settings = settings
        self.stats = RelayStats()
        self._waits: dict[int, _Wait] = {}
        self._next_ref = 1
        self._stocks: dict[str, _Stock] = {}  # link ID -> its pad stock
        self._stock_saves: dict[int, tuple[str, ...]] = {}  # a due save's ref -> the links whose stock it saves

    def new_id(self) -> str:
        """A fresh UUID4 string from the injected random bytes (key and relay IDs)."""
        raw = self.random_bytes(16)
        if not isinstance(raw, (bytes, bytearray)) or len(raw) != 16:
            raise LocalProtocolError("random_bytes(16) returned the wrong length or type")
        return str(uuid.UUID(bytes=bytes(raw), version=4))

    def wait(self, owner: Hashable, expects: type[LinkSaved | HopAnswered | KeyStored], then: Continuation) -> int:
        """A fresh ref for an action of ``owner`` whose result (of type ``expects``) goes to ``then``."""
        ref = self._next_ref
        self._next_ref += 1
        self._waits[ref] = _Wait(owner, expects, then)
        return ref

    def resume(self, event: LinkSaved | HopAnswered | KeyStored) -> list[RelayAction]:
        """Hands a result to the continuation waiting for its ref.

        Raises:
            LocalProtocolError: Nothing waits for this ref (never issued,
                answered already, or its owner abandoned), or the result is of
                the wrong kind.
        """
        waiting = self._waits.get(event.ref)
        if waiting is None:
            raise LocalProtocolError(f"no action waits for a result with ref {event.ref}")
        if not isinstance(event, waiting.expects):
            raise LocalProtocolError(
                f"ref {event.ref} waits for {waiting.expects.__name__}, got {type(event).__name__}"
            )
        del self._waits[event.ref]
        if isinstance(event, LinkSaved):
            self._stock_save_ended(event.ref, saved=event.failure is None)
        return waiting.then(event)

    def abandon(self, owner: Hashable) -> int:
        """Drops every wait of ``owner``; returns how many. Their results must not be fed any more."""
        refs = [ref for ref, w in self._waits.items() if w.owner == owner]
        for ref in refs:
            del self._waits[ref]
            self._stock_save_ended(ref, saved=False)  # its outcome will never be known here
        return len(refs)

    def wait_save(self, owner: Hashable, then: Continuation, link_ids: Sequence[str]) -> int:
        """:meth:`wait` for a :class:`~.messages.SaveLink` of ``link_ids``; the save also makes their new stocks saved."""
        ref = self.wait(owner, LinkSaved, then)
        stocked = tuple(i for i in link_ids if (s := self._stocks.get(i)) is not None and not s.saved and s.ref is None)
        for link_id in stocked:
            self._stocks[link_id].ref = ref
        if stocked:
            self._stock_saves[ref] = stocked
        return ref

    def take_pad(self, link: LinkEnd, length_bytes: int) -> tuple[bytes, Reservation, bool]:
        """A hop's pad on ``link``, committed (used from now on): its bytes, ranges, and whether it still needs a save.

        From the link's saved stock if it holds enough (no save needed);
        else reserved from the pool, with a new stock set aside beside it
        when the link has none, which the hop's save will save too.

        Raises:
            InsufficientKeyMaterial: The pool (stock aside) has too few bytes; nothing is used.
        """
        stock = self._stocks.get(link.link_id)
        if stock is not None and (stock.pool is not link.pool or (stock.saved and stock.reservation.length_bytes < length_bytes)):
            self._drop_stock(link.link_id)  # a replaced pool (the stock is not in it), or too little left: a new one
            stock = None
        if stock is not None and stock.saved:
            head, rest = link.pool.split(stock.reservation, length_bytes)
            if rest is None:
                del self._stocks[link.link_id]
            else:
                stock.reservation = rest
            try:
                return link.pool.commit(head), head, False
            except KeyNotFound:  # a block of it went in a resync: the rest of the stock too, and this hop saves
                self._stocks.pop(link.link_id, None)
                if rest is not None:
                    link.pool.release(rest)
                stock = None
        reservation = link.pool.reserve(length_bytes)
        pad = link.pool.commit(reservation)
        if stock is None:
            size = min(PAD_STOCK_BYTES, link.pool.available_bytes // _STOCK_SHARE)
            if size >= length_bytes:
                self._stocks[link.link_id] = _Stock(link.pool, link.pool.reserve(size, saved_as_used=True))
        return pad, reservation, True

    def release_stocks(self) -> int:
        """Releases every link's pad stock (a node stopping cleanly, before its last save); returns the bytes."""
        released = sum(s.reservation.length_bytes for s in self._stocks.values())
        for link_id in list(self._stocks):
            self._drop_stock(link_id)
        self._stock_saves.clear()
        return released

    @property
    def stocked_bytes(self) -> dict[str, int]:
        """Each link's pad stock in bytes, saved or not (for status and tests)."""
        return {link_id: s.reservation.length_bytes for link_id, s in self._stocks.items()}

    def _stock_save_ended(self, ref: int, *, saved: bool) -> None:
        """The save ``ref`` ended: the stocks it was to save are saved, or released if not (nothing of them was sent)."""
        for link_id in self._stock_saves.pop(ref, ()):
            stock = self._stocks.get(link_id)
            if stock is not None and stock.ref == ref:
                stock.ref = None
                stock.saved = saved
                if not saved:
                    self._drop_stock(link_id)

    def _drop_stock(self, link_id: str) -> None:
        stock = self._stocks.pop(link_id)
        stock.pool.release(stock.reservation)

    @property
    def waiting(self) -> int:
        """Actions whose result is still due."""
        return len(self._waits)


def prepare_share(ctx: RelayContext, header: RelayHeader, share: bytes) -> tuple[LinkEnd, SealedHop, bool] | Refusal:
    """Steps 1-3 of one outgoing hop (see the module docstring): the link, the sealed hop and whether it needs a save; or why not.

    Once this returns a hop, its pad is used (committed), whatever happens
    next. A hop whose pad came from the link's saved stock needs no save.
    """
    peer = header.path[header.hop_index + 1]
    link = ctx.neighbours.link_to(peer)
    if link is None:
        return Refusal(RefusalReason.PEER_UNAVAILABLE, f"{peer} is not a neighbour of {ctx.node}")
    if link.cut:
        return Refusal(RefusalReason.PEER_UNAVAILABLE, f"link {link.link_id} to {peer} is cut")
    try:
        # Used from now on, whatever happens next (see the module docstring).
        pad, reservation, needs_save = ctx.take_pad(link, pad_bytes_needed(len(share)))
    except InsufficientKeyMaterial as exc:
        return Refusal(RefusalReason.INSUFFICIENT_KEY, str(exc))
    ciphertext, tag = seal_hop(header, share, pad)
    return link, SealedHop(header, reservation.ranges, ciphertext, tag), needs_save


def send_prepared(
    ctx: RelayContext, owner: Hashable, link: LinkEnd, hop: SealedHop, done: Callable[[Refusal | None], list[RelayAction]]
) -> list[RelayAction]:
    """Step 5 of one outgoing hop, once its pad is saved: :class:`~.messages.SendHop`; ``done`` gets the answer."""

    def answered(event: LinkSaved | HopAnswered | KeyStored) -> list[RelayAction]:
        assert isinstance(event, HopAnswered)
        return done(event.refusal)

    ctx.stats.hops_sent += 1
    return [SendHop(ctx.wait(owner, HopAnswered, answered), link.link_id, link.peer, hop)]


def storage_refusal(ctx: RelayContext, failure: str) -> Refusal:
    """The refusal of a hop whose pad could not be saved."""
    return Refusal(RefusalReason.STORAGE_FAILED, f"node {ctx.node} cannot save key material: {failure}")


def send_share(
    ctx: RelayContext,
    owner: Hashable,
    header: RelayHeader,
    share: bytes,
    done: Callable[[Refusal | None], list[RelayAction]],
) -> list[RelayAction]:
    """Carries ``share`` over hop ``header.hop_index`` (see the module docstring); ``done`` gets the outcome.

    ``done(None)`` once the rest of the path delivered it, ``done(refusal)``
    on any failure — possibly at once, within this call, if nothing could be
    sent.
    """
    prepared = prepare_share(ctx, header, share)
    if isinstance(prepared, Refusal):
        return done(prepared)
    link, hop, needs_save = prepared
    if not needs_save:  # a pad from the saved stock: on disk as used already
        return send_prepared(ctx, owner, link, hop, done)

    def saved(event: LinkSaved | HopAnswered | KeyStored) -> list[RelayAction]:
        assert isinstance(event, LinkSaved)
        if event.failure is not None:
            return done(storage_refusal(ctx, event.failure))
        return send_prepared(ctx, owner, link, hop, done)

    return [SaveLink(ctx.wait_save(owner, saved, (link.link_id,)), link.link_id)]
