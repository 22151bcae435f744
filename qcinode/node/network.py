"""Routing adverts and trusted-node key relay, wired to grpc.aio.

The link-state database and every relay decision are pure
(:mod:`qcinode.core.routing`, :class:`qcinode.core.relay.engine.RelayEngine`);
this module floods adverts to the neighbours and drives the relay engine.
Adverts to one neighbour go one call at a time (a task per neighbour drains
its queue): those that queue while a call is in flight go together in the
next, one ``AdvertiseMany`` call, a newer advert of an origin replacing a
queued older one, because the call, not the advert, is what costs (measured
on one core: about 0.6 ms of CPU per call at both ends together, and 0.06 ms
for the signature check of a new advert); a database exchange goes the same
way, up to :data:`MAX_ADVERTS_PER_CALL` adverts a call. For the relay it
turns ``RelayKey`` calls and the KME's requests into engine events, performs
the actions the engine returns — save a link's state, store a key, send a
hop over gRPC — and feeds each result back, until the engine answers the hop
or the request. It makes no relay decision of its own; it awaits, saves,
converts between protobuf and core types, and logs the engine's notices.

Rules that keep every key bit single-use and both ends consistent (the
engine decides them; the driver performs the actions in the order given):

* A hop's pad is reserved from *our* half of the link pool, committed and
  on disk as used before the ciphertext leaves (saved with the hop, or
  ahead as the link's pad stock); a failure afterwards
  discards those bits, it never releases them (the peer may have used them).
* The receiving end checks the hop's tag with the named ranges, then
  consumes exactly those ranges, from the sender's half, and writes that
  through before it answers the hop; a forged hop uses nothing.
* The master gets a key only after every slave's node stored it; a failed
  relay leaves at most an orphan at a destination, which nobody can redeem
  because nobody learnt its key ID.

How the driver performs each action, in waves (:meth:`NetworkService._drive`),
the actions of a wave side by side: every ``SaveLink`` of a wave in one
transaction (a transit hop's two ledgers included,
:func:`~.runtime.persist_together`), shared with the saves that concurrent
relays ask for meanwhile (:class:`~.offload.AsyncGroupCommit`), every
``StoreKey`` of a wave in one key-store transaction shared with concurrent
relays' keys (:class:`~.offload.GroupCommit`), their results fed back to
make the next wave (a failed save or store is fed back as such, so nothing
that depends on it happens), the writes in the node's storage thread or a
worker thread (:mod:`qcinode.node.offload`), so that the event loop serves
other requests during the fsync; and the ``SendHop`` actions — the engine
asks for one only once its pad is on disk as used, after the hop's own save
or from the link's saved pad stock beside the incoming ledger's save
(:mod:`qcinode.core.relay.context`) — one message per link for
all hops that go over it (``RelayKey`` for one, ``RelayKeys`` for several:
a request's keys travel as one multi-key hop message, each key with its own
pad and tag), each link's in a task of one :class:`asyncio.TaskGroup` that
feeds the answers back and performs what follows. A caller that goes away
(the KME's deadline, an upstream hop's deadline) cancels its tasks, and the
engine is told to forget what they waited for; pad already committed stays
used. With ``--log-level debug`` every stage logs its duration
(``relay.stage``: save, store, send, receive, request).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import grpc
import numpy as np
import structlog

from ..core.relay.context import LinkEnd, RelaySettings
from ..core.relay.engine import RelayEngine
from ..core.relay.messages import (
    AnswerHop,
    DeliverKeys,
    FailRequest,
    ForwardFailed,
    HopAbandoned,
    HopAnswered,
    HopArrived,
    HopRefused,
    KeyArrived,
    KeysRequested,
    KeyStored,
    LinkSaved,
    PathFailed,
    Refusal,
    RefusalReason,
    RelayAction,
    RequestAbandoned,
    SaveLink,
    SendHop,
    StoreKey,
)
from ..core.routing import (
    AdvertRejected,
    AdvertSchedule,
    AdvertSigner,
    AdvertVerifier,
    DatabaseSync,
    LinkAdvert,
    LinkStateDatabase,
    RejectReason,
    advert_timing,
    links_change,
)
from ..errors import (
    DuplicateKey,
    InsufficientKeyMaterial,
    PeerRefused,
    PeerTimeout,
    PeerUnavailable,
    ProtocolError,
    QcinodeError,
    RemoteProtocolError,
    StorageFailure,
    TransportError,
    Unauthorized,
)
from ..keys.keystore import SaeKeyStore, WaitingKey
from ..keys.linkstore import LinkStore
from ..kme.handlers import DeliveredKey, EncRequest, KmeLimits
from ..status import AdvertisedLink, HeldAdvert, LinkState, NetworkStatus, RoutingStatus, StorageStatus
from ..topology import Topology
from ..transport.errors import rpc_errors
from ..transport.network import advert_from_pb, advert_to_pb, answer_from_pb, answer_to_pb, hop_from_pb, hop_to_pb
from ..transport.pb import network_pb2 as pb
from ..transport.pb import network_pb2_grpc as pb_grpc
from .access import caller_common_name
from .faults import FaultInjector
from .offload import AsyncGroupCommit, GroupCommit, Offload
from .runtime import LinkRuntime, persist_together

log = structlog.get_logger(__name__)

T = TypeVar("T")

#: Hands a key over to another network: ``(key_id, master_sae, remote_slaves, key) -> refusal or None``.
HandOff = Callable[[str, str, tuple[str, ...], bytes], Awaitable["Refusal | None"]]

#: How often the routing loop looks at the local links (and ages out dead origins); adverts follow AdvertSchedule.
ADVERT_TICK_S = 1.0
#: An Advertise call's deadline: generous, as on a saturated machine (a hundred nodes on two cores)
#: a call that times out is dropped unserved and must be repaired by an exchange.
ADVERT_TIMEOUT_S = 10.0
#: Metadata of an Advertise call that asks the callee for its whole database (the caller started or missed adverts).
SYNC_METADATA_KEY = "qcinode-advert-sync"
SYNC_ASK = "ask"
#: A refresh (an advert whose paths did not change: the same links up, each able to carry a key or not
#: as before) is forwarded after a random delay up to this: copies that arrive meanwhile from other
#: neighbours spare the messages back to them (a quarter of a grid's flood). Changes are forwarded at once.
REFRESH_FORWARD_DELAY_S = 0.5
#: Most adverts one ``AdvertiseMany`` call carries (each a few hundred bytes, its origin's certificate included).
MAX_ADVERTS_PER_CALL = 128
HOP_TIMEOUT_S = 5.0
#: Most hops one ``RelayKeys`` call carries (a request's keys, each hop a few hundred bytes plus the key).
MAX_HOPS_PER_CALL = 1024


# Rejections a healthy network also meets (an older copy overtaken in a flood
# race) are logged at info; the others mean a forged, altered or broken advert.
_ROUTINE_REJECTIONS = frozenset({RejectReason.STALE})


def _chunked(items: list[T], size: int) -> list[list[T]]:
    return [items[start : start + size] for start in range(0, len(items), size)]


class _Links:
    """The relay engine's view of this node's links: each neighbour's pool, and whether a partition cuts it."""

    def __init__(self, by_peer: dict[str, LinkRuntime], faults: FaultInjector) -> None:
        self._by_peer = by_peer
        self._faults = faults

    def link_to(self, peer: str) -> LinkEnd | None:
        rt = self._by_peer.get(peer)
        if rt is None:
            return None
        # rt.pool is read at each use: a restored or resynchronised link may hold a new pool object.
        return LinkEnd(rt.link_id, rt.peer, rt.pool, cut=self._faults.partitioned(rt.link_id))


class NetworkService(pb_grpc.NetworkServicer):
    """Routing and relay for one node."""

    def __init__(
        self,
        node_name: str,
        topology: Topology,
        links: dict[str, LinkRuntime],
        channel_for: Callable[[str], grpc.aio.Channel],
        keystore: SaeKeyStore | None,
        random_bytes: Callable[[int], bytes],
        *,
        multipath_shares: int = 1,
        clock: Callable[[], float] = time.time,
        faults: FaultInjector | None = None,
        advert_signer: AdvertSigner | None = None,
        advert_verifier: AdvertVerifier | None = None,
        offload: Offload | None = None,
    ) -> None:
        self.faults = faults or FaultInjector()
        self.offload = offload or Offload.inline()
        self.node_name = node_name
        self.topology = topology
        self.links = links
        self.by_peer = {rt.peer: rt for rt in links.values()}
        self.channel_for = channel_for
        self.keystore = keystore
        self.random_bytes = random_bytes
        self.multipath_shares = multipath_shares
        self.clock = clock
        self.max_waiting_keys = KmeLimits().max_key_count
        # Every node derives the same periods from the topology's size (core/routing.py).
        timing = advert_timing(len(topology.nodes))
        self.db = LinkStateDatabase(node_name, signer=advert_signer, verifier=advert_verifier, max_age_s=timing.max_age_s)
        # The refresh jitter needs no secrecy, only to differ between nodes started together.
        self.schedule = AdvertSchedule(
            np.random.default_rng(),
            refresh_s=timing.refresh_s,
            min_interval_s=timing.min_interval_s,
            first_interval_s=timing.first_interval_s,
            capacity_interval_s=timing.capacity_interval_s,
            first_wait_s=timing.first_wait_s,
        )
        # Database exchange with each neighbour when it (or we) started, or after it missed adverts.
        self.sync = DatabaseSync(sorted(self.by_peer), retry_max_s=min(16.0, timing.refresh_s))
        # peer -> origin -> the highest sequence the peer is known to hold (it sent it to us, or we to it):
        # a flood or an exchange does not send a neighbour what it already has.
        self._peer_holds: dict[str, dict[str, int]] = {peer: {} for peer in self.by_peer}
        # peer -> origin -> the newest advert waiting to be flooded to it. One call per neighbour is in
        # flight at a time; what a flood queues meanwhile goes in the next call, a newer advert of an
        # origin replacing the older one (each call costs far more than the adverts it carries).
        self._outbox: dict[str, dict[str, pb.LinkStateAdvert]] = {peer: {} for peer in self.by_peer}
        self._draining: set[str] = set()  # neighbours whose outbox a task is sending
        #: Advert messages: "originated" (and "originated_<reason>", ORIGINATION_REASONS), "sent" (adverts sent),
        #: "calls" (Advertise and AdvertiseMany calls made), "received" (adverts answered), "new" (stored and
        #: flooded on), "exchanges".
        self.advert_counts: Counter[str] = Counter()
        self.engine = RelayEngine(
            node_name,
            neighbours=_Links(self.by_peer, self.faults),
            routes=self.db,
            random_bytes=random_bytes,
            settings=RelaySettings(multipath_shares=multipath_shares),
        )
        # The interworking driver (node/interworking.py) at a node serving another
        # network's SAEs: a StoreKey for them is handed over instead of stored.
        self.hand_off: HandOff | None = None
        # Keys arriving here go to the key store together: one transaction for
        # a multi-key hop, shared with concurrent relays' keys (group commit).
        self._key_writer: GroupCommit[WaitingKey, QcinodeError | None] = GroupCommit(
            self._put_keys, threaded=self.offload.storage is not None
        )  # a worker thread, not the storage thread: link saves do not wait behind key writes
        # A wave's link saves, shared with concurrent relays' saves (group commit): each
        # write takes one snapshot per link and writes the union in one transaction.
        self._link_saver: AsyncGroupCommit[frozenset[str], str | None] = AsyncGroupCommit(self._save_links)
        #: Relay calls this node made: "RelayKey" (one hop), "RelayKeys" (several), "hops" they carried.
        self.relay_calls: Counter[str] = Counter()
        #: Neighbours that answered ``AdvertiseMany`` or ``RelayKeys`` with UNIMPLEMENTED (a qcinode from
        #: before those calls, during a rolling upgrade): from then on they get one call per advert or hop.
        self.single_calls: set[str] = set()
        self._ids = itertools.count(1)  # request IDs and incoming hops' tokens
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._forwarding: asyncio.TaskGroup | None = None  # run_adverts' group, while it runs
        self.log = log.bind(node_id=node_name)

    # -- plumbing ------------------------------------------------------
    def _stub(self, peer: str) -> pb_grpc.NetworkStub:
        channel = self._channels.get(peer)
        if channel is None:
            channel = self._channels[peer] = self.channel_for(peer)
        return pb_grpc.NetworkStub(channel)

    async def aclose(self) -> None:
        """Closes the channels and releases the links' pad stocks (the node saves every link once more after this)."""
        self.engine.release_stocks()  # nothing of them left the node: the last save records them free, as the peers do
        for channel in self._channels.values():
            await channel.close()
        self._channels.clear()

    def _local_adverts(self) -> list[LinkAdvert]:
        stocked = self.engine.stocked_bytes  # set aside for relay hops, which is what adverts are for
        return [
            LinkAdvert(
                link_id=rt.link_id,
                peer=rt.peer,
                up=rt.state is LinkState.UP and not self.faults.partitioned(rt.link_id),
                available_out_bytes=rt.pool.available_bytes + stocked.get(rt.link_id, 0),
            )
            for rt in self.links.values()
        ]

    # -- routing -------------------------------------------------------
    async def run_adverts(self) -> None:
        """Originates and floods our advert when :class:`AdvertSchedule` says so, synchronises neighbours, ages out dead nodes.

        It looks at the local links every ``ADVERT_TICK_S``: an advert goes out
        when they changed (up or down, or the key they can carry by a
        quarter) and otherwise as the schedule's jittered slow refresh. A
        neighbour that started, restarted or missed a flood gets every advert
        we hold once (:class:`DatabaseSync`). The new adverts neighbours send
        are forwarded, and the exchanges run, as tasks of this loop's group
        (:meth:`Advertise` must answer at once), so they end with it.
        """
        async with asyncio.TaskGroup() as forwarding:
            self._forwarding = forwarding
            try:
                while True:
                    now = self.clock()
                    links = self._local_adverts()
                    reason = self.schedule.due(links, now)
                    if reason is not None:
                        advert = self.db.originate(links, now)
                        self.schedule.sent(links, now)
                        self.advert_counts["originated"] += 1
                        self.advert_counts[f"originated_{reason}"] += 1
                        await self._flood(advert_to_pb(advert), exclude=set())
                    for peer, ask in self.sync.due(now):
                        forwarding.create_task(self._exchange(peer, ask))
                    for origin in self.db.expire(now):
                        self.log.info("routing.origin_expired", origin=origin)
                    await asyncio.sleep(ADVERT_TICK_S)
            finally:
                self._forwarding = None

    async def _send_adverts(self, peer: str, adverts: list[pb.LinkStateAdvert], *, ask: bool = False) -> bool | None:
        """One call carrying ``adverts`` (``Advertise`` for one, ``AdvertiseMany`` for several; one
        ``Advertise`` each to a peer without ``AdvertiseMany``, :attr:`single_calls`).

        Returns:
            True if it reached ``peer`` (a refusal did: the peer answered), None
            if it timed out, False if the peer is away.
        """
        self.advert_counts["calls"] += 1
        self.advert_counts["sent"] += len(adverts)
        sent = adverts
        metadata = ((SYNC_METADATA_KEY, SYNC_ASK),) if ask else None
        what = f"advert to {peer}"
        try:
            if len(adverts) > 1 and peer not in self.single_calls:
                try:
                    with rpc_errors(what):
                        await self._stub(peer).AdvertiseMany(
                            pb.LinkStateAdverts(adverts=adverts), timeout=ADVERT_TIMEOUT_S, metadata=metadata, wait_for_ready=ask
                        )
                    adverts = []
                except PeerRefused as exc:
                    if not self._lacks_batches(peer, exc):
                        raise
            for advert in adverts:  # one call each: a single advert, or a peer without AdvertiseMany
                # A refusal of one (below) leaves the others to be answered on their own, as AdvertiseMany's are.
                with contextlib.suppress(PeerRefused), rpc_errors(what):
                    await self._stub(peer).Advertise(advert, timeout=ADVERT_TIMEOUT_S, metadata=metadata, wait_for_ready=ask)
        except PeerRefused:
            # It answered and refused this copy (one overtaken in a flood race: it holds a newer one;
            # or one it will never take): sending it again would change nothing.
            return True
        except (PeerTimeout, TimeoutError):
            # Slow, not away (a saturated machine): the call may have been dropped unserved. Owed,
            # but the exchange waits out its back-off (DatabaseSync.send_failed).
            self.sync.send_failed(peer, away=False)
            return None
        except TransportError:
            # Away (refused connection, link cut): the exchange when it is back repairs what it missed.
            self.sync.send_failed(peer)
            return False
        holds = self._peer_holds[peer]
        for advert in sent:
            holds[advert.origin] = max(holds.get(advert.origin, -1), advert.sequence)
        return True

    def _lacks_batches(self, peer: str, refused: PeerRefused) -> bool:
        """Whether ``refused`` says that ``peer`` has no batched call (UNIMPLEMENTED): then it is noted in :attr:`single_calls`."""
        if refused.code != grpc.StatusCode.UNIMPLEMENTED.name:
            return False
        if peer not in self.single_calls:
            self.single_calls.add(peer)
            self.log.warning("network.peer_without_batched_calls", peer_id=peer, details=refused.details[:200])
        return True

    async def _flood(self, advert: pb.LinkStateAdvert, exclude: set[str]) -> None:
        """Queues ``advert`` for every neighbour not in ``exclude`` whose link is not cut and that lacks it.

        Each neighbour's queue is sent by one task, one call at a time: adverts
        that queue while a call is in flight go together in the next.
        """
        for peer, rt in self.by_peer.items():
            if peer in exclude or self.faults.partitioned(rt.link_id):
                continue
            if self._peer_holds[peer].get(advert.origin, -1) >= advert.sequence:
                continue  # it sent us this copy (or a newer one) itself
            queued = self._outbox[peer].get(advert.origin)
            if queued is None or queued.sequence < advert.sequence:
                self._outbox[peer][advert.origin] = advert
            if peer not in self._draining:
                self._draining.add(peer)
                if self._forwarding is not None:
                    self._forwarding.create_task(self._drain(peer))
                else:  # not routing (a test driving the service by hand): send now
                    await self._drain(peer)

    async def _drain(self, peer: str) -> None:
        """Sends ``peer`` its outbox, a call at a time, until it is empty (a task of the routing loop's group)."""
        try:
            outbox = self._outbox[peer]
            while outbox:
                holds = self._peer_holds[peer]
                for origin in [o for o, a in outbox.items() if holds.get(o, -1) >= a.sequence]:
                    del outbox[origin]  # it sent us that one (or a newer) meanwhile
                batch = list(outbox.values())[:MAX_ADVERTS_PER_CALL]
                for advert in batch:
                    del outbox[advert.origin]
                if batch and await self._send_adverts(peer, batch) is not True:
                    # Away or too slow: the exchange it is now owed (DatabaseSync) sends what it lacks,
                    # after its back-off; sending the rest now would feed the load that made it slow.
                    outbox.clear()
        except Exception:
            self.log.exception("routing.flood_failed", peer_id=peer)
        finally:
            self._draining.discard(peer)

    async def _exchange(self, peer: str, ask: bool) -> None:
        """Sends ``peer`` every advert we hold that it is not known to hold (the first call asks for its database if ``ask``)."""
        ok = delivered = False
        try:
            if self.faults.partitioned(self.by_peer[peer].link_id):
                return
            holds = self._peer_holds[peer]
            adverts = [a for a in self.db.signed_adverts() if a.origin != peer and holds.get(a.origin, -1) < a.sequence]
            if ask and not adverts:
                own = self.db.signed_advert(self.node_name)  # the ask needs a call to ride on
                adverts = [own] if own is not None else []
            self.advert_counts["exchanges"] += 1
            ok = not ask  # nothing originated yet to carry the ask: the next tick tries again
            if adverts:
                # Up to MAX_ADVERTS_PER_CALL adverts a call, one call after another; the first carries
                # the ask (and waits for the connection). A call that timed out fails the exchange as
                # one that found the peer away does: it is tried again after the back-off. (Counted as
                # sent, a timed-out exchange ended "ok", but its timeouts left the debt standing, so the
                # next tick sent it all again: on a saturated machine, 100 nodes each sent twice the
                # adverts their neighbours could answer.)
                calls = _chunked([advert_to_pb(a) for a in adverts], MAX_ADVERTS_PER_CALL)
                delivered = await self._send_adverts(peer, calls[0], ask=ask) is True
                ok = delivered
                for batch in calls[1:]:
                    if not ok:
                        break
                    ok = await self._send_adverts(peer, batch) is True
        except Exception:
            ok = False
            self.log.exception("routing.exchange_failed", peer_id=peer)
        finally:
            self.sync.done(peer, ok, self.clock(), asked=ask, ask_delivered=ask and delivered)

    async def _forward(self, advert: pb.LinkStateAdvert, exclude: set[str], delay_s: float = 0.0) -> None:
        """Floods a neighbour's new advert on, after ``delay_s`` (a task of the routing loop's group; a bug is logged, routing goes on)."""
        try:
            if delay_s > 0:
                await asyncio.sleep(delay_s)
                current = self.db.signed_advert(advert.origin)
                if current is None or current.sequence != advert.sequence:
                    return  # overtaken by a newer advert meanwhile (which floods on its own), or aged out
            await self._flood(advert, exclude)
        except Exception:
            self.log.exception("routing.forward_failed", origin=advert.origin[:80])

    def _neighbour(self, context: grpc.aio.ServicerContext) -> LinkRuntime:
        """The link to the caller, a neighbour whose link is not cut.

        Raises:
            Unauthorized: The caller is not a neighbour.
            PeerUnavailable: The link to it is cut (a partition, or a satellite out of contact).
        """
        caller = caller_common_name(context)
        rt = self.by_peer.get(caller)
        if rt is None:
            raise Unauthorized(f"{caller!r} is not a neighbour of {self.node_name}")
        if self.faults.partitioned(rt.link_id):
            raise PeerUnavailable(f"link to {caller} cut by a partition fault")
        return rt

    async def Advertise(self, request: pb.LinkStateAdvert, context: grpc.aio.ServicerContext) -> pb.AdvertAck:
        refused = self._take(self._called_by(context), request)
        if refused is not None:
            raise RemoteProtocolError(f"advert rejected: {refused.value}")
        return pb.AdvertAck()

    async def AdvertiseMany(self, request: pb.LinkStateAdverts, context: grpc.aio.ServicerContext) -> pb.AdvertAck:
        """Several adverts in one call: each taken as if it came alone, in order; refusals fail only themselves."""
        if len(request.adverts) > MAX_ADVERTS_PER_CALL:
            raise RemoteProtocolError(f"an AdvertiseMany call carries at most {MAX_ADVERTS_PER_CALL} adverts, got {len(request.adverts)}")
        caller = self._called_by(context)
        for advert in request.adverts:
            self._take(caller, advert)
        return pb.AdvertAck()

    def _called_by(self, context: grpc.aio.ServicerContext) -> str:
        """The neighbour calling Advertise or AdvertiseMany; an ask in the metadata resets what we know it holds."""
        caller = self._neighbour(context).peer
        if (SYNC_METADATA_KEY, SYNC_ASK) in tuple(context.invocation_metadata() or ()):
            # The caller started (it knows nothing) or missed adverts: it gets our whole database, from scratch.
            self._peer_holds[caller] = {}
            self.sync.asked(caller, self.clock())
        else:
            self.sync.heard(caller)  # it is up: what we owe it goes at the next tick
        return caller

    def _take(self, caller: str, request: pb.LinkStateAdvert) -> RejectReason | None:
        """One advert from ``caller`` into the database, flooded on if new; why it was refused (logged and counted), if it was."""
        self.advert_counts["received"] += 1
        advert = advert_from_pb(request)
        held = self.db.signed_advert(advert.origin)
        try:
            is_new = self.db.receive(advert, self.clock())
        except AdvertRejected as exc:
            emit = self.log.info if exc.reason in _ROUTINE_REJECTIONS else self.log.warning
            emit(
                "routing.advert_rejected",
                reason=exc.reason.value,
                origin=request.origin[:80],
                sequence=request.sequence,
                peer_id=caller,
                details=str(exc)[:300],
            )
            return exc.reason
        holds = self._peer_holds[caller]
        holds[request.origin] = max(holds.get(request.origin, -1), request.sequence)
        if is_new:
            self.advert_counts["new"] += 1
        if is_new and self._forwarding is not None:  # not yet routing (starting) or no longer (stopping): the next advert will do
            # The same paths (a refresh, or only their capacity moved): no hurry.
            same_paths = held is not None and links_change(held.links, advert.links) in (None, "available_changed")
            delay = random.uniform(0.0, REFRESH_FORWARD_DELAY_S) if same_paths else 0.0
            self._forwarding.create_task(self._forward(request, exclude={caller, request.origin}, delay_s=delay))
        return None

    # -- relay: driving the engine ------------------------------------
    async def _drive(self, actions: list[RelayAction]) -> list[RelayAction]:
        """Performs the engine's actions and everything that follows from them; returns the final answers.

        The answers are the :class:`AnswerHop`, :class:`DeliverKeys` and
        :class:`FailRequest` actions reached from ``actions``. Actions are
        performed in waves, side by side within a wave: every
        :class:`SaveLink` of a wave in one transaction, every
        :class:`StoreKey` in one (shared with concurrent relays' keys,
        :class:`~.offload.GroupCommit`), whose results fed back make the next
        wave, and the :class:`SendHop` actions, one message per link for all
        hops that go over it, each performing what follows its answer.
        """
        answers: list[RelayAction] = []
        todo = list(actions)
        held: list[SendHop] = []
        while todo:
            saves: list[SaveLink] = []
            stores: list[StoreKey] = []
            sends: list[SendHop] = []
            handoffs: list[StoreKey] = []
            arrived: list[KeyArrived] = []
            for action in todo:
                match action:
                    case SaveLink():
                        saves.append(action)
                    case StoreKey() if self._remote_slaves(action.slave_saes):
                        handoffs.append(action)
                    case StoreKey():
                        stores.append(action)
                    case SendHop():
                        sends.append(action)
                    case AnswerHop() | DeliverKeys() | FailRequest():
                        answers.append(action)
                    case KeyArrived():
                        arrived.append(action)
                    case _:
                        self._note(action)
            if arrived:  # one line per wave: a 16-key request's keys arrive together
                self._note_arrived(arrived)
            # A wave's saves, stores and sends run side by side: the engine asks for a
            # send only once what it depends on is on disk (a hop whose pad came from
            # the saved stock goes on beside its incoming ledger's save). But sends over
            # a link this wave also saves wait for the save, to go in one message with
            # the hops it releases (a request's keys split between the stock's end and
            # new pad still travel together).
            saving = {link_id for action in saves for link_id in action.link_ids}
            sends, held = held + [a for a in sends if a.link_id not in saving], [a for a in sends if a.link_id in saving]
            batches: dict[tuple[str, str], list[SendHop]] = {}
            for send in sends:
                batches.setdefault((send.link_id, send.peer), []).append(send)
            async with asyncio.TaskGroup() as group:
                saved = group.create_task(self._save_wave(saves, frozenset(saving))) if saves else None
                stored = group.create_task(self._store_wave(stores)) if stores else None
                tasks = [group.create_task(self._send(batch)) for batch in batches.values()]
                tasks += [group.create_task(self._hand_off(action)) for action in handoffs]
            todo = (saved.result() if saved else []) + (stored.result() if stored else [])
            for task in tasks:
                answers += task.result()
            if held and not todo:
                todo, held = list(held), []
        return answers

    async def _save_wave(self, saves: list[SaveLink], link_ids: frozenset[str]) -> list[RelayAction]:
        """A wave's link saves (of ``link_ids``, all they name) in one transaction, shared with concurrent relays'; what the engine does next."""
        started = time.perf_counter()
        (failure,) = await self._link_saver.submit([link_ids])
        self._timed("save", started, len(saves))
        follow: list[RelayAction] = []
        for action in saves:
            follow += self.engine.receive(LinkSaved(action.ref, failure))
        return follow

    async def _store_wave(self, stores: list[StoreKey]) -> list[RelayAction]:
        """A wave's keys in one key-store transaction (shared with concurrent relays'); what the engine does next."""
        started = time.perf_counter()
        results = await self._store_off_loop(stores)
        self._timed("store", started, len(stores))
        follow: list[RelayAction] = []
        for result in results:
            follow += self.engine.receive(result)
        return follow

    def _remote_slaves(self, slaves: tuple[str, ...]) -> tuple[str, ...]:
        """The slaves another network serves (handed over at an interworking node)."""
        if not self.topology.interworking:
            return ()
        return tuple(s for s in slaves if not self.topology.has_sae(s) and self.topology.interworking_for(s) is not None)

    async def _hand_off(self, action: StoreKey) -> list[RelayAction]:
        """Stores the key for our own slaves, then hands it to the other network for its slaves; feeds the outcome back."""
        remote = self._remote_slaves(action.slave_saes)
        result = (await self._store_off_loop([action]))[0] if len(remote) < len(action.slave_saes) else KeyStored(action.ref)
        if result.refusal is None:
            if self.hand_off is None:
                refusal: Refusal | None = Refusal(
                    RefusalReason.STORE_REFUSED, f"node {self.node_name} does not interwork with the network of {', '.join(remote)}"
                )
            else:
                refusal = await self.hand_off(action.key_id, action.master_sae, remote, action.key)
            if refusal is not None:
                result = KeyStored(action.ref, refusal)
        return await self._drive(self.engine.receive(result))

    async def _send(self, batch: list[SendHop]) -> list[RelayAction]:
        """Sends hops over one link in one message; feeds every answer back and performs what follows."""
        started = time.perf_counter()
        refusals = await self._transmit(batch)
        self._timed("send", started, len(batch), peer=batch[0].peer)
        follow: list[RelayAction] = []
        for action, refusal in zip(batch, refusals, strict=True):
            follow += self.engine.receive(HopAnswered(action.ref, refusal))
        return await self._drive(follow)

    def _timed(self, stage: str, started: float, actions: int, **fields: str) -> None:
        """A debug line per relay stage: how long it took on this node (``--log-level debug``: where a hop's time goes).

        Stages: ``save`` (the ledgers' transaction, waiting for the storage
        thread included), ``store`` (the key-store transaction, group commit
        included), ``send`` (a hop message until the rest of the path
        answered), ``request`` (an ``enc_keys`` delivery at its source),
        ``receive`` (a neighbour's hop message until answered).
        """
        self.log.debug("relay.stage", stage=stage, ms=round(1e3 * (time.perf_counter() - started), 2), actions=actions, **fields)

    async def _save(self, link_ids: set[str]) -> str | None:
        """Writes these links' states through in one transaction; why not, if it could not be (then nothing depending on it is sent)."""
        try:
            await persist_together([self.links[link_id] for link_id in sorted(link_ids)], self.offload.storage)
        except StorageFailure as exc:
            return exc.reason
        return None

    async def _save_links(self, wanted: list[frozenset[str]]) -> list[str | None]:
        """The link saver's write: the union of the links asked for, in one transaction; the same outcome for every part."""
        failure = await self._save(set().union(*wanted))
        return [failure] * len(wanted)

    @property
    def link_saves(self) -> tuple[int, int]:
        """Link-ledger transactions this node's relay made, and the saves asked for that they carried."""
        return self._link_saver.writes, self._link_saver.items

    async def _store_off_loop(self, actions: list[StoreKey]) -> list[KeyStored]:
        """Stores keys for the slaves attached here, in one transaction with whatever concurrent relays store (group commit)."""
        if self.keystore is None:
            refusal = Refusal(RefusalReason.STORE_REFUSED, f"node {self.node_name} has no key store (no data directory)")
            return [KeyStored(action.ref, refusal) for action in actions]
        waiting = [WaitingKey(action.key_id, action.master_sae, self._our_slaves(action.slave_saes), action.key) for action in actions]
        try:
            outcomes = await self._key_writer.submit(waiting)
        except StorageFailure as exc:  # its message names our files: the reason only
            return [KeyStored(action.ref, Refusal(RefusalReason.STORAGE_FAILED, exc.reason)) for action in actions]
        except QcinodeError as exc:
            return [KeyStored(action.ref, Refusal(RefusalReason.STORE_REFUSED, str(exc))) for action in actions]
        return [self._stored(action, outcome) for action, outcome in zip(actions, outcomes, strict=True)]

    def _our_slaves(self, slaves: tuple[str, ...]) -> tuple[str, ...]:
        """The slaves attached to this node (not another network's, handed over here)."""
        return tuple(s for s in slaves if self.topology.has_sae(s) and self._sae_node(s) == self.node_name)

    @property
    def key_writes(self) -> tuple[int, int]:
        """Key-store transactions this node's relay made, and the keys they stored or refused."""
        return self._key_writer.writes, self._key_writer.items

    def _put_keys(self, keys: list[WaitingKey]) -> list[QcinodeError | None]:
        """The key writer's write (a worker thread): one transaction for every key queued."""
        assert self.keystore is not None
        return self.keystore.put_many(keys, max_waiting=self.max_waiting_keys)

    def _stored(self, action: StoreKey, outcome: QcinodeError | None) -> KeyStored:
        """The key store's outcome for one key, in the engine's vocabulary."""
        match outcome:
            case None:
                return KeyStored(action.ref)
            case DuplicateKey(identical=True):  # the same key again (a retried relay): delivered once is delivered
                return KeyStored(action.ref, duplicate=True)
            case DuplicateKey():
                detail = f"key {action.key_id} is already stored at node {self.node_name} with another key"
                return KeyStored(action.ref, Refusal(RefusalReason.DUPLICATE, detail))
            case StorageFailure():
                return KeyStored(action.ref, Refusal(RefusalReason.STORAGE_FAILED, outcome.reason))
            case InsufficientKeyMaterial():
                return KeyStored(action.ref, Refusal(RefusalReason.INSUFFICIENT_KEY, str(outcome)))
            case _:
                return KeyStored(action.ref, Refusal(RefusalReason.STORE_REFUSED, str(outcome)))

    async def _transmit(self, batch: list[SendHop]) -> list[Refusal | None]:
        """Sends hops over one link (through its fault injector) and waits for the rest of their paths; per hop None if delivered.

        One hop goes as ``RelayKey``, several as one ``RelayKeys`` message
        (up to :data:`MAX_HOPS_PER_CALL` each); each hop is answered on its own.
        """
        link_id, peer = batch[0].link_id, batch[0].peer
        refusals: list[Refusal | None] = [None] * len(batch)
        faulted = await self._through_faults(link_id, batch)
        first = [(index, sent[0]) for index, sent in enumerate(faulted) if sent]
        for index, sent in enumerate(faulted):
            if not sent:
                refusals[index] = Refusal(RefusalReason.LOST, f"relay hop to {peer} lost on the way (fault injected)")
        timeout = max(
            HOP_TIMEOUT_S * (len(a.hop.header.path) - a.hop.header.hop_index)
            + self._interworking_wait_s(a.hop.header.destination, a.hop.header.slave_saes)
            for a in batch
        )
        what = f"relay hop to {peer}"
        for chunk in _chunked(first, MAX_HOPS_PER_CALL):
            try:
                with rpc_errors(what):
                    answers = await self._call(peer, [hop for _, hop in chunk], timeout)
            except PeerTimeout as exc:
                for index, _ in chunk:
                    refusals[index] = Refusal(RefusalReason.TIMEOUT, str(exc))
                continue
            except TransportError as exc:
                for index, _ in chunk:
                    refusals[index] = Refusal(RefusalReason.PEER_UNAVAILABLE, str(exc))
                continue
            for (index, _), refused in zip(chunk, answers, strict=True):
                if refused is not None:
                    refusals[index] = Refusal(RefusalReason.PEER_REFUSED, f"relay refused downstream of {self.node_name}: {refused}")
        replays = [(batch[index], hop) for index, sent in enumerate(faulted) for hop in sent[1:]]
        for action, replayed in replays:  # a replayed hop must be refused downstream
            with contextlib.suppress(TransportError), rpc_errors(what):
                (again,) = await self._call(peer, [replayed], timeout)
                header = action.hop.header
                self.log.info("relay.replay_answered", relay_id=header.relay_id, peer_id=peer, delivered=again is None, details=again or "")
        return refusals

    async def _through_faults(self, link_id: str, batch: list[SendHop]) -> list[list[pb.RelayHop]]:
        """Each hop as the link's fault injector lets it go: [] lost, two copies replayed, altered, delayed."""
        if len(batch) == 1:
            return [await self.faults.relay(link_id, hop_to_pb(batch[0].hop))]
        async with asyncio.TaskGroup() as group:  # delays of a batch's hops overlap, as separate calls' would
            tasks = [group.create_task(self.faults.relay(link_id, hop_to_pb(action.hop))) for action in batch]
        return [task.result() for task in tasks]

    async def _call(self, peer: str, hops: list[pb.RelayHop], timeout: float) -> list[str | None]:
        """One ``RelayKey`` (one hop) or ``RelayKeys`` call; per hop None (delivered) or the peer's refusal text.

        A peer without ``RelayKeys`` (:attr:`single_calls`) gets one ``RelayKey``
        call per hop instead, side by side.

        Raises:
            TransportError: The call failed (inside :func:`rpc_errors`), or the
                peer answered a different number of results.
        """
        stub = self._stub(peer)
        if len(hops) > 1 and peer not in self.single_calls:
            self.relay_calls["RelayKeys"] += 1
            try:
                with rpc_errors(f"relay hops to {peer}"):
                    results = await stub.RelayKeys(pb.RelayHops(hops=hops), timeout=timeout)
            except PeerRefused as exc:
                if not self._lacks_batches(peer, exc):
                    raise
            else:
                self.relay_calls["hops"] += len(hops)
                if len(results.results) != len(hops):
                    raise PeerRefused(f"{peer} answered {len(results.results)} results for {len(hops)} relay hops")
                return [answer_from_pb(result) for result in results.results]
        # One hop, or a peer without RelayKeys: one RelayKey call each, side by side (each its own answer).
        self.relay_calls["RelayKey"] += len(hops)
        self.relay_calls["hops"] += len(hops)
        calls = [stub.RelayKey(hop, timeout=timeout) for hop in hops]
        return [answer_from_pb(answer) for answer in await asyncio.gather(*calls)]

    def _note(self, notice: RelayAction) -> None:
        """Logs one of the engine's notices."""
        match notice:
            case HopRefused(header=header, previous_node=previous, refusal=refusal):
                self.log.warning(
                    "relay.hop_refused", relay_id=header.relay_id, key_id=header.key_id, peer_id=previous,
                    error=refusal.reason.value, details=refusal.detail,
                )  # fmt: skip
            case ForwardFailed(header=header, refusal=refusal):
                self.log.info("relay.hop_failed", relay_id=header.relay_id, key_id=header.key_id, error=refusal.reason.value, details=refusal.detail)
            case PathFailed(key_id=key_id, paths=paths, refusals=refusals):
                self.log.info("relay.path_failed", key_id=key_id, paths=[list(p) for p in paths], errors=[str(r) for r in refusals])
            case KeyArrived():
                self._note_arrived([notice])

    def _note_arrived(self, arrived: list[KeyArrived]) -> None:
        """Logs keys that reached their destination here together, in one line (one per key cost a tenth of
        a loop's time at 1500 keys/s)."""
        self.log.info(
            "relay.delivered",
            count=len(arrived),
            key_ids=[a.key_id for a in arrived],
            sources=sorted({a.source for a in arrived}),
            hops=sorted({a.hops for a in arrived}),
            duplicates=sum(a.duplicate for a in arrived),
        )

    # -- relay: receiving ----------------------------------------------
    async def RelayKey(self, request: pb.RelayHop, context: grpc.aio.ServicerContext) -> pb.RelayResult:
        (result,) = await self._receive_hops(self._neighbour(context).peer, [request])
        return result

    async def RelayKeys(self, request: pb.RelayHops, context: grpc.aio.ServicerContext) -> pb.RelayResults:
        caller = self._neighbour(context).peer
        if len(request.hops) > MAX_HOPS_PER_CALL:
            raise RemoteProtocolError(f"a RelayKeys call carries at most {MAX_HOPS_PER_CALL} hops, got {len(request.hops)}")
        return pb.RelayResults(results=await self._receive_hops(caller, list(request.hops)))

    async def _receive_hops(self, caller: str, hops: list[pb.RelayHop]) -> list[pb.RelayResult]:
        """Hands each hop to the engine as its own ``HopArrived``, performs everything together; one answer per hop."""
        sealed = [hop_from_pb(hop) for hop in hops]  # all converted before any reaches the engine
        tokens = [next(self._ids) for _ in sealed]
        now, started = self.clock(), time.perf_counter()
        try:
            actions: list[RelayAction] = []
            for token, hop in zip(tokens, sealed, strict=True):
                actions += self.engine.receive(HopArrived(token, caller, hop, now))
            answers = await self._drive(actions)
        except BaseException:
            for token in tokens:
                self.engine.receive(HopAbandoned(token))  # pad it consumed stays used
            raise
        by_token = {a.token: a for a in answers if isinstance(a, AnswerHop)}
        self._timed("receive", started, len(tokens), peer=caller)
        return [answer_to_pb(by_token[token].refusal) for token in tokens]

    # -- the KME's key supplier ----------------------------------------
    def available_keys(self, master_sae: str, slave_sae: str, size_bits: int) -> int:
        """How many keys of ``size_bits`` the best current path could carry now."""
        return self.engine.capacity(self._sae_node(slave_sae), size_bits // 8)

    async def deliver(self, request: EncRequest) -> list[DeliveredKey]:
        return await self._request(request.master_sae, request.slave_saes, request.number, request.size_bits // 8, ())

    async def _request(
        self, master_sae: str, slave_saes: tuple[str, ...], number: int, key_bytes: int, keys: tuple[tuple[str, bytes], ...]
    ) -> list[DeliveredKey]:
        request_id = f"{self.node_name}/{next(self._ids)}"
        event = KeysRequested(
            request_id=request_id,
            master_sae=master_sae,
            slave_saes=slave_saes,
            destinations=tuple((slave, self._sae_node(slave)) for slave in slave_saes),
            number=number,
            key_bytes=key_bytes,
            keys=keys,
        )
        started = time.perf_counter()
        try:
            answers = await self._drive(self.engine.receive(event))
        except BaseException:
            self.engine.receive(RequestAbandoned(request_id))  # pads already committed stay used
            raise
        self._timed("request", started, number)
        (answer,) = [a for a in answers if isinstance(a, (DeliverKeys, FailRequest)) and a.request_id == request_id]
        if isinstance(answer, FailRequest):
            raise self._request_error(answer.refusal)
        return [DeliveredKey(key.key_id, key.key, key.paths) for key in answer.keys]

    def _request_error(self, refusal: Refusal) -> QcinodeError:
        """The KME's error for a failed request (the one table; every one of them is a 503)."""
        match refusal.reason:
            case RefusalReason.INSUFFICIENT_KEY | RefusalReason.NO_PATH:
                return InsufficientKeyMaterial(refusal.detail + self._storage_note())
            case RefusalReason.STORAGE_FAILED:  # our own key store: the KME says so, without file names
                path = self.keystore.path if self.keystore is not None else Path(".")
                return StorageFailure(f"node {self.node_name} cannot store the key: {refusal.detail}", path=path, reason=refusal.detail)
            case RefusalReason.TIMEOUT:
                return PeerTimeout(refusal.detail)
            case _:
                return PeerUnavailable(refusal.detail or refusal.reason.value)

    def _storage_note(self) -> str:
        """Why this node's own links cannot carry key now, if their state cannot be saved ("" otherwise)."""
        reasons = sorted({rt.storage_failure for rt in self.links.values() if rt.storage_failure is not None})
        return f" (node {self.node_name} cannot save its link state: {'; '.join(reasons)})" if reasons else ""

    def _sae_node(self, sae: str) -> str | None:
        """The node serving ``sae``: its own, or the interworking node for another network's SAE."""
        return self.topology.sae_site(sae)

    def _interworking_wait_s(self, destination: str, slaves: tuple[str, ...]) -> float:
        """Extra time a hop may take when its destination hands the key to another network (0 otherwise)."""
        waits = [
            site.ack_timeout_s * (site.retries + 2)
            for s in self._remote_slaves(slaves)
            if (site := self.topology.interworking_for(s)) is not None and site.node == destination
        ]
        return max(waits, default=0.0)

    async def relay_keys(self, master_sae: str, slave_saes: tuple[str, ...], keys: list[tuple[str, bytes]]) -> list[DeliveredKey]:
        """Relays given keys (IDs and bytes chosen by the caller) from this node to every slave's node.

        The master SAE may live in another network (a key handed over at this
        interworking node) or be a key stream's initiator. All or nothing, as
        :meth:`deliver`.

        Raises:
            InsufficientKeyMaterial, PeerUnavailable, PeerTimeout, StorageFailure: As :meth:`deliver`.
        """
        if not keys:
            return []
        sizes = {len(key) for _, key in keys}
        if len(sizes) != 1:
            raise ProtocolError("relay_keys: every key of one request has the same size")
        return await self._request(master_sae, slave_saes, len(keys), sizes.pop(), tuple(keys))

    def status(self) -> NetworkStatus:
        """Relay counters, the routing database and storage health (the node adds its KME's figures)."""
        s = self.engine.stats
        db = self.db
        received = db.received_at
        return NetworkStatus(
            relays_started=s.started,
            relays_delivered=s.delivered,
            relays_failed=s.failed,
            relays_forwarded=s.forwarded,
            relay_hops_received=s.received,
            relay_hops_sent=s.hops_sent,
            # Label values from a closed vocabulary (RefusalReason), so /metrics stays bounded.
            relay_failures_by_reason=dict(s.failures_by_reason),
            routing=RoutingStatus(
                local_node=db.local_node,
                max_age_s=db.max_age_s,
                rejected=db.rejections,
                origins={
                    origin: HeldAdvert(
                        sequence=advert.sequence,
                        received_at=received[origin],
                        links=tuple(AdvertisedLink(a.link_id, a.peer, a.up, a.available_out_bytes) for a in advert.links),
                    )
                    for origin, advert in db.adverts.items()
                },
            ),
            storage=self._storage_status(),
        )

    def _storage_status(self) -> dict[str, StorageStatus]:
        """Per database file: healthy (its last read or write worked), the last failure's reason, failures so far."""
        stores: list[LinkStore | SaeKeyStore] = []
        for store in [rt.store for rt in self.links.values()] + [self.keystore]:
            if store is not None and all(store is not seen for seen in stores):
                stores.append(store)
        return {
            store.path.name: StorageStatus(
                healthy=store.failure is None,
                error=store.failure.reason if store.failure is not None else "",
                failures=store.failure_count,
            )
            for store in stores
        }
