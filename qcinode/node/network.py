"""Routing adverts and trusted-node key relay, wired to grpc.aio.

The link-state database, path computation and hop cryptography are pure
(:mod:`qcinode.core.routing`, :mod:`qcinode.core.relay`); this module floods
adverts to the neighbours, forwards relay hops, and implements the KME's
key supplier: generate a key, carry it to each slave SAE's node, and only
then hand it to the master SAE.

Rules that keep every key bit single-use and both ends consistent:

* A hop's pad is reserved from *our* half of the link pool, committed and
  written to disk before the ciphertext leaves; a failure afterwards
  discards those bits, it never releases them (the peer may have used them).
* The receiving end checks the hop's tag with the named ranges, then
  consumes exactly those ranges, from the sender's half, and writes that
  through before the share goes on; a forged hop uses nothing.
* The master gets a key only after every slave's node stored it; a failed
  relay leaves at most an orphan at a destination, which nobody can redeem
  because nobody learnt its key ID.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

import grpc
import structlog

from ..core.relay.hop import (
    RelayHeader,
    ShareCollector,
    next_header,
    open_hop,
    pad_bytes_needed,
    seal_hop,
    split_shares,
    validate_header,
)
from ..core.routing import LinkAdvert, LinkStateAdvert, LinkStateDatabase
from ..errors import (
    InsufficientKeyMaterial,
    KeyStoreError,
    PeerTimeout,
    PeerUnavailable,
    ProtocolError,
    QcinodeError,
    SecurityAbort,
)
from ..keys.keystore import SaeKeyStore, StorageFailure
from ..keys.linkstore import LinkStore
from ..core.pool import KeyRange
from ..kme.handlers import DeliveredKey, EncRequest, KmeLimits
from ..topology import Topology
from ..transport.pb import network_pb2 as pb
from ..transport.pb import network_pb2_grpc as pb_grpc
from .faults import FaultInjector
from .link import peer_common_name
from .runtime import LinkRuntime

log = structlog.get_logger(__name__)

ADVERT_INTERVAL_S = 1.0
ADVERT_TIMEOUT_S = 2.0
HOP_TIMEOUT_S = 5.0
RELAY_CONCURRENCY = 8  # keys of one request relayed at the same time
PATH_ATTEMPTS = 3


def _advert_to_pb(advert: LinkStateAdvert) -> pb.LinkStateAdvert:
    return pb.LinkStateAdvert(
        origin=advert.origin,
        sequence=advert.sequence,
        links=[pb.LinkAdvert(link_id=a.link_id, peer=a.peer, up=a.up, available_out_bytes=a.available_out_bytes) for a in advert.links],
    )


def _advert_from_pb(msg: pb.LinkStateAdvert) -> LinkStateAdvert:
    return LinkStateAdvert(
        origin=msg.origin,
        sequence=msg.sequence,
        links=tuple(LinkAdvert(link_id=a.link_id, peer=a.peer, up=a.up, available_out_bytes=a.available_out_bytes) for a in msg.links),
    )


def _header_from_pb(msg: pb.RelayHop) -> RelayHeader:
    return RelayHeader(
        relay_id=msg.relay_id,
        key_id=msg.key_id,
        master_sae=msg.master_sae,
        slave_saes=tuple(msg.slave_saes),
        source=msg.source,
        destination=msg.destination,
        path=tuple(msg.path),
        hop_index=msg.hop_index,
        share_index=msg.share_index,
        share_count=msg.share_count,
        key_bytes=msg.key_bytes,
    )


@dataclasses.dataclass(slots=True)
class RelayCounters:
    started: int = 0
    delivered: int = 0
    failed: int = 0
    forwarded: int = 0
    received: int = 0
    hops_total: int = 0
    failures_by_reason: Counter[str] = dataclasses.field(default_factory=Counter)


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
    ) -> None:
        self.faults = faults or FaultInjector()
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
        self.db = LinkStateDatabase(node_name)
        self.collector = ShareCollector()
        self.counters = RelayCounters()
        self._channels: dict[str, grpc.aio.Channel] = {}
        self.log = log.bind(node_id=node_name)

    # -- plumbing ------------------------------------------------------
    def _stub(self, peer: str) -> pb_grpc.NetworkStub:
        channel = self._channels.get(peer)
        if channel is None:
            channel = self._channels[peer] = self.channel_for(peer)
        return pb_grpc.NetworkStub(channel)

    async def aclose(self) -> None:
        for channel in self._channels.values():
            await channel.close()
        self._channels.clear()

    def _local_adverts(self) -> list[LinkAdvert]:
        return [
            LinkAdvert(
                link_id=rt.link_id,
                peer=rt.peer,
                up=rt.state == "up" and not self.faults.partitioned(rt.link_id),
                available_out_bytes=rt.pool.available_bytes,
            )
            for rt in self.links.values()
        ]

    # -- routing -------------------------------------------------------
    async def run_adverts(self) -> None:
        """Originates our advert every second, floods it, and ages out dead nodes."""
        while True:
            now = self.clock()
            advert = self.db.originate(self._local_adverts(), now)
            await self._flood(_advert_to_pb(advert), exclude=set())
            for origin in self.db.expire(now):
                self.log.info("routing.origin_expired", origin=origin)
            await asyncio.sleep(ADVERT_INTERVAL_S)

    async def _flood(self, advert: pb.LinkStateAdvert, exclude: set[str]) -> None:
        async def send(peer: str) -> None:
            with contextlib.suppress(grpc.aio.AioRpcError, asyncio.TimeoutError):
                await self._stub(peer).Advertise(advert, timeout=ADVERT_TIMEOUT_S)

        await asyncio.gather(
            *(send(peer) for peer, rt in self.by_peer.items() if peer not in exclude and not self.faults.partitioned(rt.link_id))
        )

    async def Advertise(self, request: pb.LinkStateAdvert, context: grpc.aio.ServicerContext) -> pb.AdvertAck:
        caller = peer_common_name(context)
        if caller not in self.by_peer:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, f"{caller!r} is not a neighbour of {self.node_name}")
        if self.faults.partitioned(self.by_peer[caller].link_id):
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"link to {caller} cut by a partition fault")
        try:
            is_new = self.db.receive(_advert_from_pb(request), self.clock())
        except ProtocolError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        if is_new:
            asyncio.get_running_loop().create_task(self._flood(request, exclude={caller, request.origin}))
        return pb.AdvertAck()

    # -- relay: sending ------------------------------------------------
    async def _send_hop(self, header: RelayHeader, share: bytes) -> None:
        """Encrypts ``share`` for hop ``header.hop_index`` and waits for the rest of the path."""
        nxt = header.path[header.hop_index + 1]
        rt = self.by_peer.get(nxt)
        if rt is None:
            raise PeerUnavailable(f"{nxt} is not a neighbour of {self.node_name}")
        if self.faults.partitioned(rt.link_id):
            raise PeerUnavailable(f"link to {nxt} cut by a partition fault")  # before any pad is spent
        reservation = rt.pool.reserve(pad_bytes_needed(len(share)))
        # Used from now on, whatever happens next; if it cannot be saved, the
        # pool is as before and nothing is sent (StorageFailure).
        pad = rt.commit_and_persist(reservation)
        ciphertext, tag = seal_hop(header, share, pad)
        hop = pb.RelayHop(
            relay_id=header.relay_id,
            key_id=header.key_id,
            master_sae=header.master_sae,
            slave_saes=list(header.slave_saes),
            source=header.source,
            destination=header.destination,
            path=list(header.path),
            hop_index=header.hop_index,
            share_index=header.share_index,
            share_count=header.share_count,
            key_bytes=header.key_bytes,
            pad=[pb.KeyRange(block_id=r.block_id, offset_bytes=r.offset_bytes, length_bytes=r.length_bytes) for r in reservation.ranges],
            ciphertext=ciphertext,
            tag=tag,
        )
        self.counters.hops_total += 1
        sent = await self.faults.relay(rt.link_id, hop)
        if not sent:
            raise PeerTimeout(f"relay hop to {nxt} lost on the way (fault injected)")
        timeout = HOP_TIMEOUT_S * (len(header.path) - header.hop_index)
        try:
            result = await self._stub(nxt).RelayKey(sent[0], timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                raise PeerTimeout(f"relay hop to {nxt} timed out") from None
            raise PeerUnavailable(f"relay hop to {nxt}: {exc.code().name} {exc.details()}") from None
        for replayed in sent[1:]:  # a replayed hop must be refused downstream
            with contextlib.suppress(grpc.aio.AioRpcError):
                again = await self._stub(nxt).RelayKey(replayed, timeout=timeout)
                self.log.info("relay.replay_answered", relay_id=header.relay_id, peer_id=nxt, delivered=again.delivered, details=again.error)
        if not result.delivered:
            raise PeerUnavailable(f"relay refused downstream of {self.node_name}: {result.error}")

    # -- relay: receiving ----------------------------------------------
    async def RelayKey(self, request: pb.RelayHop, context: grpc.aio.ServicerContext) -> pb.RelayResult:
        caller = peer_common_name(context)
        rt = self.by_peer.get(caller)
        if rt is None:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, f"{caller!r} is not a neighbour of {self.node_name}")
        assert rt is not None
        if self.faults.partitioned(rt.link_id):
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"link to {caller} cut by a partition fault")
        header = _header_from_pb(request)
        try:
            validate_header(header, self.node_name, caller)
            ranges = [KeyRange(r.block_id, r.offset_bytes, r.length_bytes) for r in request.pad]
            # Check the tag before using the pad: a forged hop must not make
            # this end's ledger differ from the sender's.
            share = open_hop(header, request.ciphertext, request.tag, rt.pool.peek_ranges(ranges, initiator=rt.role.peer))
            rt.pool.consume_ranges(ranges, initiator=rt.role.peer)
            rt.persist()
        except (ProtocolError, SecurityAbort, QcinodeError) as exc:
            self.counters.failed += 1
            self.counters.failures_by_reason[type(exc).__name__] += 1
            self.log.warning("relay.hop_refused", relay_id=header.relay_id, key_id=header.key_id, peer_id=caller, error=type(exc).__name__, details=str(exc))
            return pb.RelayResult(delivered=False, error=self._refusal(exc))
        self.counters.received += 1
        if header.destination == self.node_name:
            return self._arrive(header, share)
        try:
            await self._send_hop(next_header(header), share)
        except QcinodeError as exc:
            self.counters.failed += 1
            self.counters.failures_by_reason[type(exc).__name__] += 1
            self.log.info("relay.hop_failed", relay_id=header.relay_id, key_id=header.key_id, error=type(exc).__name__, details=str(exc))
            return pb.RelayResult(delivered=False, error=self._refusal(exc))
        self.counters.forwarded += 1
        return pb.RelayResult(delivered=True)

    def _arrive(self, header: RelayHeader, share: bytes) -> pb.RelayResult:
        # Shares are collected per relay attempt: a retried attempt (new
        # relay_id, same key_id) never mixes with shares of a failed one.
        attempt = dataclasses.replace(header, key_id=f"{header.key_id}#{header.relay_id}")
        key = self.collector.add(attempt, share, self.clock())
        if key is None:
            return pb.RelayResult(delivered=True)  # a share; the key completes with the last one
        try:
            self._store(header.key_id, header.master_sae, header.slave_saes, key)
        except QcinodeError as exc:
            return pb.RelayResult(delivered=False, error=self._refusal(exc))
        self.log.info("relay.delivered", key_id=header.key_id, source=header.source, hops=len(header.path) - 1)
        return pb.RelayResult(delivered=True)

    def _store(self, key_id: str, master_sae: str, slave_saes: tuple[str, ...], key: bytes) -> None:
        if self.keystore is None:
            raise InsufficientKeyMaterial(f"node {self.node_name} has no key store (no data directory)")
        ours = [s for s in slave_saes if self._sae_node(s) == self.node_name]
        try:
            self.keystore.put(key_id, master_sae, ours, key, max_waiting=self.max_waiting_keys)
        except KeyStoreError as exc:
            if not isinstance(exc, StorageFailure) and ("already" in str(exc) or "duplicate" in str(exc).lower()):
                return  # the same key arrived again (a retried relay): delivered once is delivered
            raise

    def _refusal(self, exc: QcinodeError) -> str:
        """The error text of a refused hop; a storage fault names this node and the reason, not its files."""
        if isinstance(exc, StorageFailure):
            return f"StorageFailure: node {self.node_name} cannot save key material: {exc.reason}"
        return f"{type(exc).__name__}: {exc}"

    def _storage_note(self) -> str:
        """Why this node's own links cannot carry key now, if their state cannot be saved ("" otherwise)."""
        reasons = sorted({rt.storage_failure for rt in self.links.values() if rt.storage_failure is not None})
        return f" (node {self.node_name} cannot save its link state: {'; '.join(reasons)})" if reasons else ""

    def _sae_node(self, sae: str) -> str | None:
        try:
            return self.topology.sae_node(sae).name
        except (KeyError, QcinodeError):
            return None

    # -- the KME's key supplier ----------------------------------------
    def available_keys(self, master_sae: str, slave_sae: str, size_bits: int) -> int:
        """How many keys of ``size_bits`` the best current path could carry now."""
        destination = self._sae_node(slave_sae)
        if destination is None:
            return 0
        if destination == self.node_name:
            return 10**6
        need = pad_bytes_needed(size_bits // 8)
        if self.multipath_shares > 1:
            paths = self.db.disjoint_paths(self.node_name, destination, need, self.multipath_shares)
            if len(paths) < self.multipath_shares:
                return 0
        else:
            paths = self.db.paths(self.node_name, destination, need, limit=1)
            if not paths:
                return 0
        edges = self.db.usable_edges(need)
        return min(min(edges[u][v] for u, v in zip(path, path[1:])) for path in paths) // need

    async def deliver(self, request: EncRequest) -> list[DeliveredKey]:
        destinations = sorted({node for s in request.slave_saes if (node := self._sae_node(s)) is not None})
        # Refuse up front what the current paths cannot carry, rather than
        # spending pads on the first keys of a request that then fails (the
        # answer is all or nothing, so those keys would be stranded).
        for slave in request.slave_saes:
            if self.available_keys(request.master_sae, slave, request.size_bits) < request.number:
                self.counters.failures_by_reason["InsufficientKeyMaterial"] += 1
                raise InsufficientKeyMaterial(
                    f"the network cannot carry {request.number} key(s) of {request.size_bits} bits to {slave} now"
                    + self._storage_note()
                )
        # The keys of one request travel concurrently (up to RELAY_CONCURRENCY
        # at a time): each hop's pad is reserved, committed and saved without
        # an await in between, so concurrent relays never share a byte.
        # Once one key fails, keys not yet started are not sent: the answer is
        # all or nothing (ETSI 014), so they would only spend pads.
        slots = asyncio.Semaphore(RELAY_CONCURRENCY)
        failures: list[BaseException] = []

        async def carry(key: DeliveredKey) -> DeliveredKey | None:
            async with slots:
                if failures:
                    return None
                paths: list[tuple[str, ...]] = []
                try:
                    for destination in destinations:
                        paths += await self._deliver_one(key, request, destination)
                except BaseException as exc:
                    failures.append(exc)
                    raise
                return dataclasses.replace(key, paths=tuple(paths))

        keys = [DeliveredKey(str(uuid.uuid4()), self.random_bytes(request.size_bits // 8)) for _ in range(request.number)]
        results = await asyncio.gather(*(carry(key) for key in keys), return_exceptions=True)
        if failures:
            raise failures[0]  # the first failure says why
        return [r for r in results if isinstance(r, DeliveredKey)]

    async def _deliver_one(self, key: DeliveredKey, request: EncRequest, destination: str) -> list[tuple[str, ...]]:
        """Carries ``key`` to ``destination`` and stores it there; returns the paths used."""
        self.counters.started += 1
        if destination == self.node_name:
            self._store(key.key_id, request.master_sae, request.slave_saes, key.key)
            self.counters.delivered += 1
            return []
        need = pad_bytes_needed(len(key.key))
        errors: list[str] = []
        tried: set[tuple[str, ...]] = set()
        for _attempt in range(PATH_ATTEMPTS):
            if self.multipath_shares > 1:
                paths = self.db.disjoint_paths(self.node_name, destination, need, self.multipath_shares)
                if len(paths) < self.multipath_shares:
                    paths = []
            else:
                paths = [p for p in self.db.paths(self.node_name, destination, need, limit=PATH_ATTEMPTS + 1) if tuple(p) not in tried][:1]
            if not paths:
                break
            relay_id = str(uuid.uuid4())
            shares = split_shares(key.key, len(paths), self.random_bytes)
            headers = [
                RelayHeader(
                    relay_id=relay_id,
                    key_id=key.key_id,
                    master_sae=request.master_sae,
                    slave_saes=request.slave_saes,
                    source=self.node_name,
                    destination=destination,
                    path=tuple(path),
                    hop_index=0,
                    share_index=index,
                    share_count=len(paths),
                    key_bytes=len(key.key),
                )
                for index, path in enumerate(paths)
            ]
            tried.update(tuple(p) for p in paths)
            for path in paths:  # count these bytes as spent now, not at the hops' next adverts
                self.db.debit(path, need)
            results = await asyncio.gather(*(self._send_hop(h, s) for h, s in zip(headers, shares)), return_exceptions=True)
            failures = [r for r in results if isinstance(r, BaseException)]
            if not failures:
                self.counters.delivered += 1
                return [tuple(p) for p in paths]
            for failure in failures:
                if not isinstance(failure, QcinodeError):
                    raise failure
                errors.append(self._refusal(failure) if isinstance(failure, StorageFailure) else str(failure))
                self.counters.failures_by_reason[type(failure).__name__] += 1
            self.log.info("relay.path_failed", key_id=key.key_id, paths=[list(p) for p in paths], errors=errors[-len(failures):])
        self.counters.failed += 1
        if errors:
            raise PeerUnavailable(f"no path to {destination} delivered the key: {'; '.join(errors)}")
        self.counters.failures_by_reason["NoPath"] += 1
        raise InsufficientKeyMaterial(f"no path from {self.node_name} to {destination} has {need} bytes of key on every hop")

    def status(self) -> dict[str, Any]:
        c = self.counters
        return {
            "relays_started": c.started,
            "relays_delivered": c.delivered,
            "relays_failed": c.failed,
            "relays_forwarded": c.forwarded,
            "relay_hops_received": c.received,
            "relay_hops_sent": c.hops_total,
            "relay_failures_by_reason": dict(c.failures_by_reason),
            "routing": self.db.snapshot(),
            "storage": self._storage_status(),
        }

    def _storage_status(self) -> dict[str, Any]:
        """Per database file: healthy (its last read or write worked), the last failure's reason, failures so far."""
        stores: list[LinkStore | SaeKeyStore] = []
        for store in [rt.store for rt in self.links.values()] + [self.keystore]:
            if store is not None and all(store is not seen for seen in stores):
                stores.append(store)
        return {
            store.path.name: {
                "healthy": store.failure is None,
                "error": store.failure.reason if store.failure is not None else "",
                "failures": store.failure_count,
            }
            for store in stores
        }
