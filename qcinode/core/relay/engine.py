"""One node's relay engine: every relay decision, driven by events (pure; no I/O).

Theory of operation:
    * **One object per node**, :class:`RelayEngine`, with one entry point:
      ``receive(event) -> list[action]`` (the types are in
      :mod:`~qcinode.core.relay.messages`). It is synchronous and
      deterministic given its injected parts: the node's links and their
      pools (:class:`~.context.Neighbours`), the routing database
      (:class:`~.context.RouteView`) and a source of random bytes. The driver
      (the node over gRPC, or :mod:`~qcinode.core.relay.harness` in one
      process) performs each action and feeds its result back as an event.
    * **Inside:** a :class:`~.source.SourceRelay` per request this node is the
      source of (``KeysRequested``), and the steps of each incoming hop
      (:func:`~.sink.receive_hop`, ``HopArrived``) — as transit node or
      destination, with the destination's share collector. Results
      (``LinkSaved``, ``HopAnswered``, ``KeyStored``) are routed by their
      ``ref`` to the step that waits for them.
    * **The pad rules** (every key bit used once, both ends of every link
      agree):

      - a hop's pad is reserved from *our* half of the link pool and
        committed before anything can interleave, on disk as used
        (``SaveLink``, or taken from the link's saved pad stock) before the
        hop is sent, and never released once committed;
      - a received hop's ranges are consumed only after its tag verified
        with them, and saved before the hop is answered (beside the next
        hop or the key's store when nothing else waits for that save);
      - a failed save means nothing that depends on it is sent.
    * **The answer to a request** comes once (``DeliverKeys`` or
      ``FailRequest``) after every key of it ended; the master gets keys only
      after every slave's node stored them.
    * **Giving up.** ``RequestAbandoned``/``HopAbandoned`` drop what a request
      or an incoming hop still waits for (used pad stays used); the driver
      then feeds no more results for it.
    * **Counters** (:attr:`RelayEngine.stats`) count by
      :class:`~.messages.RefusalReason`, a closed vocabulary.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from qcinode.core.relay.context import Neighbours, RelayContext, RelaySettings, RelayStats, RouteView
from qcinode.core.relay.hop import ShareCollector
from qcinode.core.relay.messages import (
    DeliverKeys,
    FailRequest,
    HopAbandoned,
    HopAnswered,
    HopArrived,
    KeysRequested,
    KeyStored,
    LinkSaved,
    RelayAction,
    RelayEvent,
    RequestAbandoned,
)
from qcinode.core.relay.sink import receive_hop
from qcinode.core.relay.source import SourceRelay, capacity
from qcinode.errors import LocalProtocolError

__all__ = ["RelayEngine"]


class RelayEngine:
    """The relay decisions of one node (see the module docstring)."""

    __slots__ = ("_ctx", "_collector", "_sources", "_next_expiry")

    def __init__(
        self,
        node: str,
        *,
        neighbours: Neighbours,
        routes: RouteView,
        random_bytes: Callable[[int], bytes],
        settings: RelaySettings | None = None,
    ) -> None:
        """Create the engine of ``node``.

        Args:
            node: This node's name.
            neighbours: Our end of each link, by neighbour.
            routes: The routing database (paths, capacities, debits).
            random_bytes: Uniform random bytes for keys, shares and IDs (a
                CSPRNG in a running node; seeded in tests).
            settings: Multipath, concurrency, attempts, share lifetime.
        """
        settings = settings or RelaySettings()
        self._ctx = RelayContext(node, neighbours, routes, random_bytes, settings)
        self._collector = ShareCollector(settings.share_ttl_s)
        self._sources: dict[str, SourceRelay] = {}
        self._next_expiry = -math.inf

    @property
    def node(self) -> str:
        """This node's name."""
        return self._ctx.node

    @property
    def settings(self) -> RelaySettings:
        """How this node relays."""
        return self._ctx.settings

    @property
    def stats(self) -> RelayStats:
        """The relay counters."""
        return self._ctx.stats

    @property
    def stocked_bytes(self) -> dict[str, int]:
        """Each link's pad stock in bytes (:mod:`~qcinode.core.relay.context`), saved or not."""
        return self._ctx.stocked_bytes

    def release_stocks(self) -> int:
        """Releases every link's pad stock, for a node stopping cleanly before its last save; returns the bytes."""
        return self._ctx.release_stocks()

    @property
    def open_requests(self) -> tuple[str, ...]:
        """IDs of requests not answered yet, sorted."""
        return tuple(sorted(self._sources))

    @property
    def waiting(self) -> int:
        """Actions whose result is still due."""
        return self._ctx.waiting

    @property
    def pending_keys(self) -> tuple[str, ...]:
        """Multipath keys waiting here for more shares (``key_id#relay_id``), sorted."""
        return self._collector.pending

    def capacity(self, destination: str | None, key_bytes: int) -> int:
        """How many keys of ``key_bytes`` the best current path(s) to ``destination`` could carry now."""
        return capacity(self._ctx, destination, key_bytes)

    def receive(self, event: RelayEvent) -> list[RelayAction]:
        """Take one event; return what the driver must do, in order.

        Raises:
            LocalProtocolError: On an event that is not one of
                :data:`~.messages.RelayEvent`, a request ID already open, or a
                result for a ref nothing waits for.
        """
        match event:
            case KeysRequested():
                if event.request_id in self._sources:
                    raise LocalProtocolError(f"request {event.request_id!r} is already open")
                source = SourceRelay(self._ctx, event)
                self._sources[event.request_id] = source
                return self._forget_answered(source.start())
            case HopArrived():
                if event.now >= self._next_expiry:  # a scan of every held key: not on every hop
                    self._collector.expire(event.now)
                    self._next_expiry = event.now + min(1.0, self._collector.ttl_s / 10)
                return receive_hop(self._ctx, self._collector, event)
            case LinkSaved() | HopAnswered() | KeyStored():
                return self._forget_answered(self._ctx.resume(event))
            case RequestAbandoned():
                abandoned = self._sources.pop(event.request_id, None)
                if abandoned is not None:
                    self._ctx.abandon(abandoned.owner)
                return []
            case HopAbandoned():
                self._ctx.abandon(("hop", event.token))
                return []
            case _:
                raise LocalProtocolError(f"not a relay event: {type(event).__name__}")

    def _forget_answered(self, actions: list[RelayAction]) -> list[RelayAction]:
        for action in actions:
            if isinstance(action, (DeliverKeys, FailRequest)):
                del self._sources[action.request_id]
        return actions
