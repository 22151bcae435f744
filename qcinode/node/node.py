"""The node process: its servers, and one asyncio TaskGroup holding every worker.

Theory of operation:
    * :meth:`Node.run` is the node. It opens the servers (the mTLS gRPC
      server with the link, network, admin, health and reflection services;
      the ETSI 014 KME; ``/metrics``; the plaintext health listener), then
      runs one :class:`asyncio.TaskGroup` whose children are all the node
      does on its own: an Alice worker per link this node transmits on,
      routing (:meth:`NetworkService.run_adverts`, which owns the forwarding
      of neighbours' adverts), a contact follower per satellite link that
      has one, and the KME's storage watch and key expiry. RPC handlers are
      gRPC's and aiohttp's tasks, bounded by their calls.
    * A child that fails is logged (``node.worker_crashed``) and the rest go
      on; cancellation always propagates.
    * :meth:`Node.stop` (or cancelling :meth:`Node.run`) stops taking
      requests (health NOT_SERVING, the web servers closed), cancels the
      children and waits for every one, then closes the gRPC servers, the
      channels and the stores, saving each link's state once more.
    * :meth:`Node.start` runs :meth:`Node.run` as the node's one task, owned
      by the object and awaited by :meth:`Node.stop` (tests and embedders);
      :func:`run_node` (``qcinode node``) awaits :meth:`Node.run` itself.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import math
import os
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from ..core import kernels
from ..core.clock import NetworkClock
from ..core.randomness import CsprngGenerator, KeyRandomness
from ..core.roles import Role
from ..errors import ConfigError, KeyStoreError, NotFound, StorageFailure, Unauthorized
from ..keys.keystore import SaeKeyStore
from ..keys.linkstore import LinkStore, StorageKey
from ..kme.fairness import Admission
from ..kme.handlers import Kme, KmeLimits
from ..kme.server import make_app, start_kme_server, tls_context
from ..pki import ADMIN_COMMON_NAME, NodeAdvertSigner, NodeCertificateVerifier, node_bundle, read_bytes
from ..status import NodeStatus
from ..topology import EavesdropperConfig, Topology
from ..transport.admin import status_to_pb
from ..transport.errors import DomainErrors
from ..transport.guard import MalformedRequestGuard
from ..transport.pb import admin_pb2, admin_pb2_grpc, link_pb2, link_pb2_grpc, network_pb2, network_pb2_grpc
from .access import LazyReflection, ReflectionAccess, caller_common_name
from .faults import FaultInjector, fault_from_request
from .link import STAGE_TIMEOUT_S, AliceWorker, BobEndpoint, ClassicalFault
from .metrics import NodeMetrics, start_metrics_server
from .network import NetworkService
from .offload import Offload
from .runtime import LinkRuntime, link_channel

log = structlog.get_logger(__name__)

MAX_MESSAGE_BYTES = 64 * 1024 * 1024
# grpc.health.v1 service name of the ETSI 014 KME: NOT_SERVING while the data
# directory fails (the KME then refuses keys); "" stays SERVING, as a restart
# would not give the disk space back.
KME_HEALTH_SERVICE = "qcinode.etsi014"
STORAGE_CHECK_INTERVAL_S = 1.0
KEY_EXPIRY_CHECK_MAX_S = 60.0


def _log_storage_health(path: Path, failure: StorageFailure | None) -> None:
    """The stores' health listener: one event when a store starts failing (or fails otherwise), one when it recovers."""
    if failure is None:
        log.info("storage.recovered", path=str(path))
    else:
        log.warning("storage.write_failed", path=str(failure.path), reason=failure.reason)


@dataclasses.dataclass(frozen=True, slots=True)
class NodeSettings:
    """Everything one node process needs."""

    topology: Topology
    name: str
    certs_dir: Path
    listen: str = "127.0.0.1:0"
    peers: dict[str, str] = dataclasses.field(default_factory=dict)  # node name -> host:port
    peer_template: str = "{name}:50051"
    data_dir: Path | None = None
    storage_key_file: Path | None = None  # the storage key outside the data directory; None: data_dir/storage.key
    kme_listen: str | None = "127.0.0.1:0"  # ETSI 014 HTTPS host:port; None: no KME
    metrics_listen: str | None = "127.0.0.1:0"  # Prometheus /metrics host:port; None: not served
    health_listen: str | None = None  # plaintext grpc.health.v1-only host:port (kubelet probes); None: not served
    etsi004_listen: str | None = None  # ETSI GS QKD 004 (JSON over TLS) host:port; None: not served
    skip_listen: str | None = None  # SKIP (HTTPS) host:port; None: not served
    multipath_shares: int | None = None  # override of the topology's relay.paths
    seed: int | None = None  # test-only: deterministic channel noise
    stage_timeout_s: float = STAGE_TIMEOUT_S  # how long a link waits for its peer's next message
    classical_fault: ClassicalFault | None = None  # tests only: a hook in place of the fault injector's
    #: Where the links' protocol steps run (node/protocol_worker.py): "process" (a node process;
    #: ``qcinode node`` and clusters) or "thread" (nodes that tests run inside their own process).
    protocol_runner: str = "thread"

    def __post_init__(self) -> None:
        if self.protocol_runner not in ("process", "thread"):
            raise ConfigError(f"protocol runner: expected process or thread, got {self.protocol_runner!r}")
        try:
            self.topology.node(self.name)
        except (KeyError, ConfigError):
            raise ConfigError(f"--name: node {self.name!r} is not in topology {self.topology.name!r}") from None

    def peer_address(self, peer: str) -> str:
        return self.peers.get(peer) or self.peer_template.format(name=peer)


class _LinkServicer(link_pb2_grpc.QuantumChannelServicer, link_pb2_grpc.PostProcessingServicer):
    def __init__(self, endpoint: BobEndpoint) -> None:
        self.endpoint = endpoint

    # grpc.aio recognises streaming handlers by their being async generator functions.
    async def Transmit(self, request_iterator: Any, context: Any) -> AsyncIterator[link_pb2.FrameAck]:
        async for ack in self.endpoint.transmit(request_iterator, context):
            yield ack

    async def Session(self, request_iterator: Any, context: Any) -> AsyncIterator[link_pb2.ClassicalMessage]:
        async for message in self.endpoint.session(request_iterator, context):
            yield message


def _require_admin(context: grpc.aio.ServicerContext, what: str) -> None:
    if caller_common_name(context) != ADMIN_COMMON_NAME:
        raise Unauthorized(f"{what} the admin certificate")


class _AdminServicer(admin_pb2_grpc.AdminServicer):
    """``qcinode status``, ``eve`` and ``fault``: admin certificate only (errors: :data:`~qcinode.transport.errors.SERVER_STATUS`)."""

    def __init__(self, node: Node) -> None:
        self.node = node

    async def Status(self, request: admin_pb2.StatusRequest, context: grpc.aio.ServicerContext) -> admin_pb2.NodeStatus:
        _require_admin(context, "status needs")
        return status_to_pb(self.node.status(include_digests=request.include_block_digests, include_ledger=request.include_ledger))

    async def SetEavesdropper(self, request: admin_pb2.EavesdropperRequest, context: grpc.aio.ServicerContext) -> admin_pb2.EavesdropperReply:
        _require_admin(context, "eavesdroppers need")
        rt = self.node.links.get(request.link_id)
        if rt is None or rt.role is not Role.ALICE:
            raise NotFound(f"{self.node.settings.name} does not transmit on link {request.link_id!r}")
        eve = EavesdropperConfig.from_mapping({"attack": request.attack, "fraction": request.fraction}, "eavesdropper")
        rt.set_eavesdropper(eve)
        self.node.log.warning("eve.changed", link_id=rt.link_id, attack=eve.attack, fraction=eve.fraction)
        return admin_pb2.EavesdropperReply(link_id=rt.link_id, attack=eve.attack, fraction=eve.fraction if eve.attack != "none" else 0.0)

    async def SetFault(self, request: admin_pb2.FaultRequest, context: grpc.aio.ServicerContext) -> admin_pb2.FaultReply:
        _require_admin(context, "faults need")
        if request.link_id not in self.node.links:
            raise NotFound(f"{self.node.settings.name} is not an end of link {request.link_id!r}")
        spec = fault_from_request(request.kind, request.probability, request.delay_ms, request.channel)
        self.node.faults.set(request.link_id, spec)
        self.node.log.warning("fault.changed", link_id=request.link_id, **dataclasses.asdict(spec))
        return admin_pb2.FaultReply(link_id=request.link_id, **dataclasses.asdict(spec))


def _in_contact(rt: LinkRuntime, clock: NetworkClock | None) -> bool:
    """Whether the satellite of free-space link ``rt`` is in a pass now (its classical channel is up in ``contact`` mode)."""
    assert clock is not None
    return rt.channel.conditions(clock.now(time.time())).transmitting


class Node:
    """One qcinode node."""

    def __init__(self, settings: NodeSettings) -> None:
        self.settings = settings
        topo = settings.topology
        self.bundle = node_bundle(settings.certs_dir, topo, settings.name)
        self.log = log.bind(node_id=settings.name)
        storage_key = self._storage_key()
        self.store = LinkStore(settings.data_dir, settings.name, storage_key=storage_key) if settings.data_dir is not None else None
        self.keystore = (
            SaeKeyStore(settings.data_dir, settings.name, storage_key or StorageKey.load_or_create(settings.data_dir))
            if settings.data_dir is not None
            else None
        )
        for store in (self.store, self.keystore):
            if store is not None:
                store.on_health = _log_storage_health
        # One network clock: every node derives the same emulated UTC from the topology.
        self.clock = topo.emulation.clock(fallback_wall_start_utc=time.time())
        self.links: dict[str, LinkRuntime] = {}
        for link in topo.links_of(settings.name):
            psk = read_bytes(self.bundle.link_key(link.alice, link.bob))
            self.links[link.link_id] = LinkRuntime(
                link, settings.name, psk, self.store, channel=link_channel(topo, link), clock=self.clock
            )
        self._seeds = np.random.SeedSequence(settings.seed)
        self._key_source = CsprngGenerator()
        self.faults = FaultInjector({link.link_id: link.fault for link in topo.links_of(settings.name) if link.fault is not None}, seed=settings.seed)
        # The links' protocol steps and state writes run off the event loop (node/offload.py); a
        # protocol process is started here, before gRPC or any thread of this process starts.
        self.offload = Offload.process(settings.name) if settings.protocol_runner == "process" else Offload.threads(settings.name)
        self.network = NetworkService(
            settings.name,
            topo,
            self.links,
            self._channel,
            self.keystore,
            random_bytes=self._key_source.bytes,
            multipath_shares=settings.multipath_shares or topo.relay.paths,
            faults=self.faults,
            # Adverts are signed with this node's certificate key and believed
            # only when signed by their origin's node certificate.
            advert_signer=NodeAdvertSigner.from_bundle(self.bundle, settings.name),
            advert_verifier=NodeCertificateVerifier(read_bytes(self.bundle.ca_cert)),
            offload=self.offload,
        )
        self.kme_requests: Counter[str] = Counter()
        kme = topo.kme
        self.kme_admission = Admission(
            rate_per_s=kme.max_keys_per_sae_per_s, burst=kme.burst, fair_share=kme.fair_share, window_s=kme.fair_share_window_s
        )
        self.keys_expired = 0
        self.kme_runner: Any = None
        self.kme_port: int | None = None
        self.kme_limits = KmeLimits()
        self.interfaces: Any = None  # node/interfaces.py: interworking, 004, SKIP
        self.metrics = NodeMetrics(self.status, lambda: self.network.advert_counts)
        self.metrics_runner: Any = None
        self.metrics_port: int | None = None
        self.server: grpc.aio.Server | None = None
        self._bob_endpoint: BobEndpoint | None = None
        self.port: int | None = None
        self.health_server: grpc.aio.Server | None = None
        self.health_port: int | None = None
        self.health = health.aio.HealthServicer()
        self._tasks: list[asyncio.Task[None]] = []  # the children of run()'s TaskGroup
        self._stopping = asyncio.Event()
        self._grace_s = 2.0
        self._runner: asyncio.Task[None] | None = None  # start()'s task
        self.started = time.monotonic()

    def _storage_key(self) -> StorageKey | None:
        """The storage key from ``storage_key_file`` (None: the stores use data_dir/storage.key)."""
        path = self.settings.storage_key_file
        if path is None or self.settings.data_dir is None:
            return None
        key = StorageKey.load_or_create_file(path)
        left_behind = self.settings.data_dir / "storage.key"
        if left_behind.exists():
            # A copy of the data directory would still carry the key.
            self.log.warning("storage.key_in_data_dir", path=str(left_behind), details="the storage key is also in the data directory; remove it")
        return key

    def _storage_problem(self) -> str | None:
        """Why this node cannot save its state now (None if it can): named in the KME's 503 bodies."""
        reasons = {rt.storage_failure for rt in self.links.values() if rt.storage_failure is not None}
        reasons |= {store.failure.reason for store in (self.store, self.keystore) if store is not None and store.failure is not None}
        return "; ".join(sorted(reasons)) or None

    def _rngs(self) -> tuple[KeyRandomness, np.random.Generator]:
        """A session's (key randomness, channel noise): a CSPRNG for keys, unless a test seeds the node."""
        noise = np.random.default_rng(self._seeds.spawn(1)[0])
        key: KeyRandomness = np.random.default_rng(self._seeds.spawn(1)[0]) if self.settings.seed is not None else CsprngGenerator()
        return key, noise

    def _credentials(self) -> tuple[bytes, bytes, bytes]:
        b = self.bundle
        name = self.settings.name
        return read_bytes(b.node_key(name)), read_bytes(b.node_cert(name)), read_bytes(b.ca_cert)

    def _channel(self, peer: str) -> grpc.aio.Channel:
        key, cert, ca = self._credentials()
        creds = grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)
        options = [
            ("grpc.ssl_target_name_override", peer),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.keepalive_time_ms", 10_000),
            ("grpc.keepalive_timeout_ms", 5_000),
            # A neighbour that restarts (maybe at a new address) is found again
            # within seconds, not after gRPC's default back-off of up to 2 minutes.
            ("grpc.initial_reconnect_backoff_ms", 200),
            ("grpc.min_reconnect_backoff_ms", 200),
            ("grpc.max_reconnect_backoff_ms", 2_000),
        ]
        return grpc.aio.secure_channel(self.settings.peer_address(peer), creds, options=options)

    async def _open(self) -> int:
        """Opens the servers (gRPC, KME, metrics, health listener); returns the bound gRPC port."""
        key, cert, ca = self._credentials()
        # Reflection describes the API to node and admin certificates only, not to SAEs.
        reflection_readers = [node.name for node in self.settings.topology.nodes] + [ADMIN_COMMON_NAME]
        server = grpc.aio.server(
            # DomainErrors first: it answers what the servicers and the other interceptors raise.
            interceptors=[DomainErrors(), MalformedRequestGuard(), ReflectionAccess(reflection_readers)],
            options=[
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.so_reuseport", 0),
            ]
        )
        endpoint = self._bob_endpoint = BobEndpoint({k: v for k, v in self.links.items()}, self._rngs, **self._link_options())
        servicer = _LinkServicer(endpoint)
        link_pb2_grpc.add_QuantumChannelServicer_to_server(servicer, server)
        link_pb2_grpc.add_PostProcessingServicer_to_server(servicer, server)
        admin_pb2_grpc.add_AdminServicer_to_server(_AdminServicer(self), server)
        network_pb2_grpc.add_NetworkServicer_to_server(self.network, server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        names = (
            link_pb2.DESCRIPTOR.services_by_name["QuantumChannel"].full_name,
            link_pb2.DESCRIPTOR.services_by_name["PostProcessing"].full_name,
            admin_pb2.DESCRIPTOR.services_by_name["Admin"].full_name,
            network_pb2.DESCRIPTOR.services_by_name["Network"].full_name,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
        )
        server.add_generic_rpc_handlers((LazyReflection(names),))
        creds = grpc.ssl_server_credentials([(key, cert)], root_certificates=ca, require_client_auth=True)
        port = server.add_secure_port(self.settings.listen, creds)
        if port == 0:
            raise ConfigError(f"--listen: cannot bind {self.settings.listen}")
        await server.start()
        self.server, self.port = server, port
        for rt in self._contact_links():  # before any link worker dials or answers
            self.faults.set_contact(rt.link_id, functools.partial(_in_contact, rt, self.clock))
        if not self.settings.topology.emulation.is_anchored:
            self.log.warning(
                "clock.unanchored",
                details="emulation.wall_start is not set: this node's network clock starts when it does; "
                "give every node the same wall_start (qcinode up and qcinode deploy k8s set it) so that they agree",
            )
        if self.settings.kme_listen is not None and self.keystore is not None:
            await self._start_kme()
        await self._start_interfaces()
        if self.settings.metrics_listen is not None:
            host, _, mport = self.settings.metrics_listen.rpartition(":")
            self.metrics_runner, self.metrics_port = await start_metrics_server(self.metrics, host.strip("[]") or "0.0.0.0", int(mport))
        await self.health.set("", health_pb2.HealthCheckResponse.SERVING)
        for service in names[:4]:
            await self.health.set(service, health_pb2.HealthCheckResponse.SERVING)
        if self.settings.health_listen is not None:
            # Kubelet gRPC probes cannot do TLS: the same health servicer, alone, in plaintext;
            # started last, so a probe's first answer already means the node is up.
            health_server = grpc.aio.server(interceptors=[DomainErrors(), MalformedRequestGuard()], options=[("grpc.so_reuseport", 0)])
            health_pb2_grpc.add_HealthServicer_to_server(self.health, health_server)
            try:
                self.health_port = health_server.add_insecure_port(self.settings.health_listen)
            except RuntimeError:  # grpcio raises where older versions returned 0
                self.health_port = 0
            if self.health_port == 0:
                raise ConfigError(f"--health-listen: cannot bind {self.settings.health_listen}")
            await health_server.start()
            self.health_server = health_server
        return int(port)

    def _link_options(self) -> dict[str, Any]:
        return {
            "stage_timeout_s": self.settings.stage_timeout_s,
            "faults": self.faults,
            "fault": self.settings.classical_fault,
            "offload": self.offload,
        }

    def _workers(self) -> list[tuple[str, Coroutine[Any, Any, None]]]:
        """What the node does on its own, as (name, coroutine): the children of its TaskGroup."""
        workers: list[tuple[str, Coroutine[Any, Any, None]]] = []
        for rt in self.links.values():
            if rt.role is Role.ALICE:
                key_rng, noise_rng = self._rngs()
                worker = AliceWorker(rt, functools.partial(self._channel, rt.peer), self.clock, key_rng, noise_rng, **self._link_options())
                workers.append((f"link {rt.link_id}", worker.run()))
        if any(kernels.would_use_numba(rt.config.sifted_block_bits) for rt in self.links.values()):
            workers.append(("kernels", self._warm_kernels()))
        workers.append(("routing", self.network.run_adverts()))
        for rt in self._contact_links():
            assert self.clock is not None
            workers.append((f"contact {rt.link_id}", self._follow_contact(rt, self.clock)))
        if self.kme_runner is not None:
            workers += [("storage", self._watch_storage()), ("key expiry", self._expire_keys())]
        return workers

    async def run(self, *, ready: Callable[[int], None] | None = None) -> None:
        """Runs the node until :meth:`stop` is called or this is cancelled (the module docstring).

        Args:
            ready: Called with the gRPC port once the servers and every worker run.

        Raises:
            ConfigError: A listen address cannot be bound.
        """
        try:
            port = await self._open()
            async with asyncio.TaskGroup() as group:
                for name, coro in self._workers():
                    self._tasks.append(group.create_task(self._guard(coro, name), name=f"{self.settings.name}: {name}"))
                self.log.info("node.started", port=port, links=len(self.links), protocol=self.offload.runner.describe())
                if ready is not None:
                    ready(port)
                await self._stopping.wait()
                await self._stop_serving()
                for task in self._tasks:
                    task.cancel()
        finally:
            await self._close()

    async def start(self) -> int:
        """Runs :meth:`run` as the node's own task (stop it with :meth:`stop`); returns the bound gRPC port once it serves."""
        ready: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        runner = self._runner = asyncio.create_task(self.run(ready=ready.set_result), name=f"node {self.settings.name}")
        try:
            waiting: list[asyncio.Future[Any]] = [ready, runner]
            await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            runner.cancel()
            await asyncio.wait({runner})
            raise
        if not ready.done():
            runner.result()  # the reason it could not start
            raise RuntimeError(f"node {self.settings.name} ended before it served")  # pragma: no cover
        return ready.result()

    async def _start_kme(self) -> None:
        assert self.keystore is not None and self.settings.kme_listen is not None
        topo = self.settings.topology

        def sae_node(sae: str) -> str | None:
            return topo.sae_site(sae)  # another network's SAE: the interworking node that hands keys over

        def on_request(endpoint: str, status: int, latency_s: float) -> None:
            self.kme_requests[f"{endpoint} {status}"] += 1
            self.metrics.observe_request(endpoint, status, latency_s)

        kme = Kme(self.settings.name, sae_node, self.keystore, self.kme_limits)
        app = make_app(
            kme, self.network, on_request=on_request, config=topo.kme, admission=self.kme_admission, storage_problem=self._storage_problem
        )
        b = self.bundle
        context = tls_context(b.node_cert(self.settings.name), b.node_key(self.settings.name), b.ca_cert)
        host, _, port = self.settings.kme_listen.rpartition(":")
        self.kme_runner, self.kme_port = await start_kme_server(app, host.strip("[]") or "0.0.0.0", int(port), context)
        self.log.info("kme.started", port=self.kme_port)

    async def _start_interfaces(self) -> None:
        """The interworking KME (ETSI 020) of an interworking node, and the 004 and SKIP servers (kme/etsi004.py, kme/skip.py)."""
        from .interfaces import start_interfaces

        self.interfaces = await start_interfaces(
            self.settings.name,
            self.settings.topology,
            self.bundle,
            self.network,
            self.keystore,
            self.kme_limits,
            etsi004_listen=self.settings.etsi004_listen,
            skip_listen=self.settings.skip_listen,
        )

    async def _expire_keys(self) -> None:
        """Deletes keys that waited longer than ``relay.key_ttl_s`` for their slave, checking every ``ttl / 10`` (at most a minute)."""
        assert self.keystore is not None
        ttl = self.settings.topology.relay.key_ttl_s
        while True:
            await asyncio.sleep(min(KEY_EXPIRY_CHECK_MAX_S, ttl / 10))
            try:
                expired = await asyncio.to_thread(self.keystore.expire, time.time() - ttl)
            except KeyStoreError as exc:  # a full disk: tried again next time (and reported by the store)
                self.log.warning("kme.expiry_failed", details=str(exc))
                continue
            if expired:
                self.keys_expired += expired
                self.log.info("kme.keys_expired", count=expired, ttl_s=ttl)

    async def _watch_storage(self) -> None:
        """Keeps the KME's health (``KME_HEALTH_SERVICE``) NOT_SERVING while a store of the data directory fails.

        A failing store is probed again every ``STORAGE_CHECK_INTERVAL_S``
        (link saves retry on their own; the key store writes only when asked).
        """
        stores = [store for store in (self.store, self.keystore) if store is not None]
        serving: bool | None = None
        while True:
            for store in stores:
                if store.failure is not None:
                    await asyncio.to_thread(store.check_writable)
            healthy = all(store.failure is None for store in stores)
            if healthy is not serving:
                status = health_pb2.HealthCheckResponse.SERVING if healthy else health_pb2.HealthCheckResponse.NOT_SERVING
                await self.health.set(KME_HEALTH_SERVICE, status)
                serving = healthy
            await asyncio.sleep(STORAGE_CHECK_INTERVAL_S)

    def _contact_links(self) -> list[LinkRuntime]:
        """The free-space links whose classical channel runs only during passes."""
        if self.clock is None:
            return []
        return [rt for rt in self.links.values() if rt.link.free_space is not None and rt.link.free_space.classical == "contact"]

    async def _warm_kernels(self) -> None:
        """Loads the compiled kernels where the links' steps run, as the node starts rather than at its first block.

        A link whose blocks are large enough for them would otherwise load
        them inside its first block (about a second of CPU, more on a busy
        machine), which can cost a satellite link in ``contact`` mode most
        of a short pass.
        """
        started = time.monotonic()
        ready = await self.offload.runner.call("warm_up")
        self.log.info("kernels.warmed", compiled=ready, seconds=round(time.monotonic() - started, 3))

    async def _follow_contact(self, rt: LinkRuntime, clock: NetworkClock) -> None:
        """A ``classical: contact`` link's classical channel exists only during passes.

        Outside them the link is cut as by a partition (sessions end, adverts
        say down, relay hops are refused); at each pass's rise and set the
        cut is lifted or made, at the wall-clock instant the network clock
        reaches it.
        """

        while True:
            conditions = rt.channel.conditions(clock.now(time.time()))
            self.faults.refresh_cut(rt.link_id)
            self.log.info("link.contact", link_id=rt.link_id, in_contact=conditions.transmitting)
            if not math.isfinite(conditions.until_utc):
                return
            await asyncio.sleep(max(0.0, clock.wall_delay_s(conditions.until_utc, time.time())) + 0.01)

    async def _guard(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        """A child of the node's group: a crash is logged and the rest of the node goes on; cancellation propagates."""
        try:
            await coro
        except asyncio.CancelledError:
            raise
        except Exception:
            self.log.exception("node.worker_crashed", worker=name)

    def request_stop(self, grace_s: float = 2.0) -> None:
        """Asks :meth:`run` to stop (a signal handler may call this)."""
        self._grace_s = grace_s
        self._stopping.set()

    async def stop(self, grace_s: float = 2.0) -> None:
        """Stops the node :meth:`start` started and waits until it has (the module docstring)."""
        self.request_stop(grace_s)
        if self._runner is not None:
            await self._runner

    async def _stop_serving(self) -> None:
        """Stops taking requests: health NOT_SERVING, the KME and /metrics closed."""
        await self.health.enter_graceful_shutdown()
        if self.interfaces is not None:
            await self.interfaces.stop()
            self.interfaces = None
        for runner in (self.kme_runner, self.metrics_runner):
            if runner is not None:
                await runner.cleanup()
        self.kme_runner = self.metrics_runner = None

    async def _close(self) -> None:
        """After the workers ended: the gRPC servers, the channels and the stores, each link's state saved once more."""
        await self._stop_serving()
        if self._bob_endpoint is not None:
            self._bob_endpoint.end_streams()  # within the grace period, not cancelled after it
        if self.server is not None:
            await self.server.stop(self._grace_s)
        if self._bob_endpoint is not None:
            self._bob_endpoint.close()
        if self.health_server is not None:
            await self.health_server.stop(0)
        await self.network.aclose()
        if self.keystore is not None:
            self.keystore.close()
        for rt in self.links.values():
            rt.try_persist()  # on a full disk the last saved state stands: nothing sent depends on the rest
            rt.store = None  # a session handler still unwinding must not write to a closed store
        self.offload.close()
        if self.store is not None:
            self.store.close()
        self.log.info("node.stopped")

    def status(self, include_digests: bool = False, include_ledger: bool = False) -> NodeStatus:
        """What this node reports: ``Admin.Status``, ``/metrics`` and the logs read this one model."""
        links = tuple(
            dataclasses.replace(
                rt.status(include_digests, include_ledger), fault=self.faults.get(rt.link_id).describe(), fault_affected=self.faults.affected[rt.link_id]
            )
            for rt in self.links.values()
        )
        network = dataclasses.replace(
            self.network.status(),
            kme_port=self.kme_port,
            metrics_port=self.metrics_port,
            etsi014_requests=dict(self.kme_requests),
            kme_refusals_by_reason=dict(self.kme_admission.refusals),
            keys_expired=self.keys_expired,
            **(self.interfaces.status() if self.interfaces is not None else {}),
        )
        return NodeStatus(node=self.settings.name, uptime_s=time.monotonic() - self.started, links=links, network=network)


async def run_node(settings: NodeSettings, port_file: Path | None = None) -> None:
    """Runs a node until SIGTERM or SIGINT, then stops it cleanly."""
    node = Node(settings)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, node.request_stop)

    def ready(port: int) -> None:
        if port_file is not None:
            tmp = port_file.with_suffix(".tmp")
            tmp.write_text(f"{port}\n")
            os.replace(tmp, port_file)

    with structlog.contextvars.bound_contextvars(node_id=settings.name):
        await node.run(ready=ready)
