"""The source of a relay: one ``enc_keys`` request at the master's node (pure; no I/O).

Theory of operation (rules of :class:`SourceRelay`):
    * **Refused up front, not part-way.** Before any key is drawn, every
      slave's node must be reachable with at least ``number`` keys' worth of
      pad on every hop of its best path (or best set of disjoint paths), as
      the routing database counts it now (:func:`capacity`); otherwise the
      request fails with ``INSUFFICIENT_KEY`` and nothing is spent. The
      answer is all or nothing (ETSI GS QKD 014), so keys relayed before a
      later one is refused would only strand pad.
    * **Keys.** ``number`` keys of ``key_bytes`` random bytes, each with a
      fresh UUID4 key ID, from the injected random source (a CSPRNG in a
      running node) — or, when the request carries ``keys``, exactly those
      (IDs and bytes given by the caller: a key handed over by another
      network, a key stream's chunk).
    * **Concurrency.** Up to ``settings.concurrency`` keys travel at the same
      time (by default every key of a request: they then share each hop's
      message, save and store); the next starts when one ends. Once a key has failed, keys not
      yet started are not started (they would only spend pad); keys in
      flight run to their end.
    * **Per key, per destination node** (sorted by name), one after the other:
      a destination that is this node is a :class:`~.messages.StoreKey` here;
      any other gets up to ``settings.path_attempts`` attempts. An attempt
      picks a path not tried before for this key (or, with
      ``multipath_shares > 1``, the best set of that many node-disjoint
      paths — fewer is no attempt), draws a fresh ``relay_id``, splits the key
      into XOR shares (one per path), **debits** the pad it will spend on
      every hop of every path from the routing database at once (so the
      next keys and requests do not count the same bytes), and sends every
      share (:func:`~.context.send_share`). The attempt succeeds when every
      share was delivered; any share failing fails the attempt, and the next
      attempt starts once all its shares have answered. No path left, or
      attempts used up: the key fails — ``NO_PATH`` if no attempt could be
      made, else ``RELAY_FAILED`` listing every hop failure.
    * **Retries reuse the key ID, never the relay ID.** A retried attempt
      carries the same key (and ID) with a new ``relay_id``, so the
      destination never mixes shares of two splits, and a key that did
      arrive on an attempt the source believes failed (a timed-out answer) is
      stored once: the destination's store recognises the same key ID and
      key as a duplicate and answers delivered.
    * **The answer.** When every key ended: :class:`~.messages.DeliverKeys`
      with every key in order, or :class:`~.messages.FailRequest` with the
      first failure. A key that failed after others were stored leaves those
      as orphans at their destinations (nobody learnt their IDs; they
      expire).
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass, field

from qcinode.core.relay.context import RelayContext, send_share
from qcinode.core.relay.hop import RelayHeader, pad_bytes_needed, split_shares
from qcinode.core.relay.messages import (
    DeliverKeys,
    FailRequest,
    HopAnswered,
    KeysRequested,
    KeyStored,
    LinkSaved,
    PathFailed,
    Refusal,
    RefusalReason,
    RelayAction,
    RelayedKey,
    StoreKey,
)
from qcinode.errors import LocalProtocolError

__all__ = ["LOCAL_CAPACITY", "SourceRelay", "capacity"]

#: What :func:`capacity` answers for a destination that is the node itself (no pad needed).
LOCAL_CAPACITY = 10**6


def capacity(ctx: RelayContext, destination: str | None, key_bytes: int) -> int:
    """How many keys of ``key_bytes`` the best current path(s) to ``destination`` could carry now.

    With ``multipath_shares > 1`` every key needs that many node-disjoint
    paths; the answer is the smallest bottleneck among them, in keys. 0 for
    an unknown destination or no path; :data:`LOCAL_CAPACITY` for this node.
    """
    if destination is None:
        return 0
    if destination == ctx.node:
        return LOCAL_CAPACITY
    need = pad_bytes_needed(key_bytes)
    shares = ctx.settings.multipath_shares
    if shares > 1:
        paths = ctx.routes.disjoint_paths(ctx.node, destination, need, shares)
        if len(paths) < shares:
            return 0
    else:
        paths = ctx.routes.paths(ctx.node, destination, need, limit=1)
        if not paths:
            return 0
    edges = ctx.routes.usable_edges(need)
    return min(min(edges[u][v] for u, v in itertools.pairwise(path)) for path in paths) // need


@dataclass(slots=True)
class _Key:
    """One key's journey to every destination."""

    key_id: str
    key: bytes = field(repr=False)
    destination_index: int = 0
    paths: list[tuple[str, ...]] = field(default_factory=list)  # delivered, all destinations
    # The current destination's attempts:
    attempts: int = 0
    tried: set[tuple[str, ...]] = field(default_factory=set)
    errors: list[str] = field(default_factory=list)
    # The current attempt:
    attempt_paths: tuple[tuple[str, ...], ...] = ()
    outstanding: int = 0
    attempt_refusals: list[Refusal] = field(default_factory=list)


class SourceRelay:
    """One request at the master's node: draw the keys, carry each to every slave's node, answer.

    Created and fed by :class:`~qcinode.core.relay.engine.RelayEngine`;
    results of its actions reach it through the context's continuations.
    See the module docstring for the rules.
    """

    __slots__ = ("_ctx", "request", "outcome", "_owner", "_targets", "_keys", "_queue", "_active", "_failure")

    def __init__(self, ctx: RelayContext, request: KeysRequested) -> None:
        if request.number < 1 or request.key_bytes < 1:
            raise LocalProtocolError(f"a request needs number >= 1 and key_bytes >= 1, got {request!r}")
        if request.keys and (
            len(request.keys) != request.number
            or any(len(key) != request.key_bytes for _, key in request.keys)
            or len({key_id for key_id, _ in request.keys}) != request.number
        ):
            raise LocalProtocolError(
                f"request {request.request_id!r}: given keys must be {request.number} distinct IDs "
                f"with {request.key_bytes}-byte keys"
            )
        self._ctx = ctx
        self.request = request
        #: The final answer, once given.
        self.outcome: DeliverKeys | FailRequest | None = None
        self._owner: Hashable = ("request", request.request_id)
        self._targets = sorted({node for _, node in request.destinations if node is not None})
        self._keys: list[_Key] = []
        self._queue: deque[_Key] = deque()
        self._active = 0
        self._failure: Refusal | None = None

    @property
    def owner(self) -> Hashable:
        """The owner of this request's waits in the context."""
        return self._owner

    def start(self) -> list[RelayAction]:
        """Refuse up front, or draw the keys and start the first ones."""
        ctx, request = self._ctx, self.request
        for slave, node in request.destinations:
            if capacity(ctx, node, request.key_bytes) < request.number:
                ctx.stats.failures_by_reason[RefusalReason.INSUFFICIENT_KEY] += 1
                self._failure = Refusal(
                    RefusalReason.INSUFFICIENT_KEY,
                    f"the network cannot carry {request.number} key(s) of {8 * request.key_bytes} bits to {slave} now",
                )
                return self._finish()
        if request.keys:
            self._keys.extend(_Key(key_id, key) for key_id, key in request.keys)
        else:
            for _ in range(request.number):
                key_id = ctx.new_id()
                self._keys.append(_Key(key_id, ctx.random_bytes(request.key_bytes)))
        self._queue.extend(self._keys)
        return self._fill() + self._finish()

    # -- keys ----------------------------------------------------------------

    def _fill(self) -> list[RelayAction]:
        """Starts queued keys while there is room and nothing failed."""
        actions: list[RelayAction] = []
        while self._queue and self._failure is None and self._active < self._ctx.settings.concurrency:
            self._active += 1
            actions += self._next_destination(self._queue.popleft())
        return actions

    def _key_ended(self, key: _Key, failure: Refusal | None) -> list[RelayAction]:
        self._active -= 1
        if failure is not None and self._failure is None:
            self._failure = failure  # the first failure says why
        return self._fill() + self._finish()

    def _finish(self) -> list[RelayAction]:
        if self.outcome is not None or self._active or (self._queue and self._failure is None):
            return []
        if self._failure is not None:
            self.outcome = FailRequest(self.request.request_id, self._failure)
        else:
            keys = tuple(RelayedKey(k.key_id, k.key, tuple(k.paths)) for k in self._keys)
            self.outcome = DeliverKeys(self.request.request_id, keys)
        return [self.outcome]

    # -- one destination -------------------------------------------------------

    def _next_destination(self, key: _Key) -> list[RelayAction]:
        ctx = self._ctx
        if key.destination_index == len(self._targets):
            return self._key_ended(key, None)
        destination = self._targets[key.destination_index]
        ctx.stats.started += 1
        key.attempts, key.tried, key.errors = 0, set(), []
        if destination != ctx.node:
            return self._attempt(key, destination)

        def stored(event: LinkSaved | HopAnswered | KeyStored) -> list[RelayAction]:
            assert isinstance(event, KeyStored)
            if event.refusal is not None:
                ctx.stats.failed += 1
                ctx.stats.failures_by_reason[event.refusal.reason] += 1
                return self._key_ended(key, event.refusal)
            return self._delivered(key, ())

        ref = ctx.wait(self._owner, KeyStored, stored)
        return [StoreKey(ref, key.key_id, self.request.master_sae, self.request.slave_saes, key.key)]

    def _delivered(self, key: _Key, paths: tuple[tuple[str, ...], ...]) -> list[RelayAction]:
        self._ctx.stats.delivered += 1
        key.paths += paths
        key.destination_index += 1
        return self._next_destination(key)

    def _attempt(self, key: _Key, destination: str) -> list[RelayAction]:
        ctx, settings = self._ctx, self._ctx.settings
        need = pad_bytes_needed(self.request.key_bytes)
        paths: list[tuple[str, ...]] = []
        if key.attempts < settings.path_attempts:
            if settings.multipath_shares > 1:
                found = ctx.routes.disjoint_paths(ctx.node, destination, need, settings.multipath_shares)
                paths = [tuple(p) for p in found] if len(found) == settings.multipath_shares else []
            else:
                candidates = ctx.routes.paths(ctx.node, destination, need, limit=settings.path_attempts + 1)
                paths = [tuple(p) for p in candidates if tuple(p) not in key.tried][:1]
        if not paths:
            return self._destination_failed(key, destination, need)
        key.attempts += 1
        relay_id = ctx.new_id()
        shares = split_shares(key.key, len(paths), ctx.random_bytes)
        key.tried.update(paths)
        for path in paths:  # spent now, not at these nodes' next adverts
            ctx.routes.debit(path, need)
        key.attempt_paths, key.outstanding, key.attempt_refusals = tuple(paths), len(paths), []

        def share_done(refusal: Refusal | None) -> list[RelayAction]:
            return self._share_done(key, destination, refusal)

        actions: list[RelayAction] = []
        for index, (path, share) in enumerate(zip(paths, shares, strict=True)):
            header = RelayHeader(
                relay_id=relay_id,
                key_id=key.key_id,
                master_sae=self.request.master_sae,
                slave_saes=self.request.slave_saes,
                source=ctx.node,
                destination=destination,
                path=path,
                hop_index=0,
                share_index=index,
                share_count=len(paths),
                key_bytes=self.request.key_bytes,
            )
            actions += send_share(ctx, self._owner, header, share, share_done)
        return actions

    def _share_done(self, key: _Key, destination: str, refusal: Refusal | None) -> list[RelayAction]:
        key.outstanding -= 1
        if refusal is not None:
            key.attempt_refusals.append(refusal)
            self._ctx.stats.failures_by_reason[refusal.reason] += 1
        if key.outstanding:
            return []  # the attempt ends when every share has answered
        if not key.attempt_refusals:
            return self._delivered(key, key.attempt_paths)
        key.errors += [r.detail or r.reason.value for r in key.attempt_refusals]
        notice = PathFailed(key.key_id, key.attempt_paths, tuple(key.attempt_refusals))
        return [notice, *self._attempt(key, destination)]

    def _destination_failed(self, key: _Key, destination: str, need: int) -> list[RelayAction]:
        stats = self._ctx.stats
        stats.failed += 1
        if key.errors:
            refusal = Refusal(RefusalReason.RELAY_FAILED, f"no path to {destination} delivered the key: {'; '.join(key.errors)}")
        else:
            stats.failures_by_reason[RefusalReason.NO_PATH] += 1
            refusal = Refusal(
                RefusalReason.NO_PATH, f"no path from {self._ctx.node} to {destination} has {need} bytes of key on every hop"
            )
        return self._key_ended(key, refusal)
