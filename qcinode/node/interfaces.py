"""The node's key interfaces besides ETSI 014: interworking (ETSI 020), ETSI 004 key streams, SKIP.

Wiring only: each server is built from the node's KME logic, relay driver
and key store, started on its ``--*-listen`` address, stopped with the node,
and its counters are added to the node's status under ``network``. The HTTPS
servers (ETSI 020, SKIP) get the same TLS and slow-client guards as the ETSI
014 server, with the topology's ``kme:`` timeouts (:mod:`qcinode.kme.guarded`).
"""

from __future__ import annotations

import asyncio
import math
from typing import TYPE_CHECKING, Any

import structlog
from aiohttp import web

from ..errors import KeyNotFound, KeyStoreError
from ..kme.etsi004 import StreamService, serve
from ..kme.handlers import Kme, KmeLimits
from ..kme.server import tls_context
from ..kme.skip import make_app as skip_app
from ..kme.skip import start_server as skip_server
from ..status import StreamsStatus
from .interworking import Interworking

if TYPE_CHECKING:
    from ..keys.keystore import SaeKeyStore
    from ..pki import CertBundle
    from ..topology import Topology
    from .network import NetworkService

__all__ = ["Interfaces", "start_interfaces"]

log = structlog.get_logger(__name__)


class _NodeStreams:
    """The :class:`~qcinode.kme.etsi004.StreamBackend` of a node: its relay and key store."""

    def __init__(self, topology: Topology, network: NetworkService, keystore: SaeKeyStore) -> None:
        self._topology, self._network, self._keystore = topology, network, keystore

    def node_of(self, sae: str) -> str | None:
        return self._topology.sae_site(sae) if self._topology.has_sae(sae) else None

    async def relay(self, master_sae: str, slave_sae: str, keys: list[tuple[str, bytes]]) -> None:
        await self._network.relay_keys(master_sae, (slave_sae,), keys)

    def take(self, slave_sae: str, master_sae: str, key_id: str) -> bytes | None:
        store = self._keystore
        try:
            return store.take(slave_sae, master_sae, [key_id])[0][1]
        except KeyNotFound:
            return None
        except KeyStoreError:
            return None

    def capacity_bps(self, master_sae: str, slave_sae: str) -> tuple[str, float]:
        network = self._network
        destination = self.node_of(slave_sae)
        if destination is None:
            return "", 0.0
        if destination == network.node_name:
            return "", math.inf
        paths = network.db.paths(network.node_name, destination, 64, limit=1)
        if not paths:
            return "", 0.0
        rt = network.by_peer.get(paths[0][1])
        if rt is None:
            return "", 0.0
        emulated_per_wall, _ = rt.recent.emulation_rate()
        return rt.link_id, rt.recent.key_rate_bps() * emulated_per_wall


class Interfaces:
    """What :func:`start_interfaces` started on one node."""

    def __init__(self) -> None:
        self.interworking: Interworking | None = None
        self.streams: StreamService | None = None
        self.etsi004_server: asyncio.Server | None = None
        self.etsi004_port: int | None = None
        self.skip_runner: web.AppRunner | None = None
        self.skip_port: int | None = None

    async def stop(self) -> None:
        if self.skip_runner is not None:
            await self.skip_runner.cleanup()
        if self.etsi004_server is not None:
            self.etsi004_server.close()
        if self.interworking is not None:
            await self.interworking.stop()

    def status(self) -> dict[str, Any]:
        """This node's interfaces, as fields of :class:`qcinode.status.NetworkStatus`."""
        out: dict[str, Any] = {"etsi004_port": self.etsi004_port, "skip_port": self.skip_port}
        if self.streams is not None:
            streams = self.streams.status()
            out["etsi004"] = StreamsStatus(streams_open=streams.pop("streams_open"), counters=streams)
        if self.interworking is not None:
            out["interworking"] = tuple(self.interworking.status())
        return out


async def start_interfaces(
    name: str,
    topo: Topology,
    bundle: CertBundle,
    network: NetworkService,
    keystore: SaeKeyStore | None,
    kme_limits: KmeLimits,
    *,
    etsi004_listen: str | None,
    skip_listen: str | None,
) -> Interfaces:
    """Starts the interworking KME (at an interworking node) and the 004 and SKIP servers node ``name`` is asked for.

    Raises:
        ConfigError: A certificate or the other operator's CA cannot be read, or an address cannot be bound.
    """
    out = Interfaces()
    if keystore is None:
        return out
    try:
        interworking = Interworking.for_node(name, topo, network, keystore, bundle.node_cert(name), bundle.node_key(name))
        if interworking is not None:
            await interworking.start()
            out.interworking = interworking
            network.hand_off = interworking.hand_off
        kme = Kme(name, lambda sae: topo.sae_site(sae), keystore, kme_limits)
        context = tls_context(bundle.node_cert(name), bundle.node_key(name), bundle.ca_cert)
        if etsi004_listen is not None and topo.interfaces.etsi004:
            limits = kme.limits
            out.streams = StreamService(
                name,
                _NodeStreams(topo, network, keystore),
                min_chunk_bytes=limits.min_key_size // 8,
                max_chunk_bytes=limits.max_key_size // 8,
                ttl_max_s=topo.interfaces.stream_ttl_max_s,
            )
            out.etsi004_server, out.etsi004_port = await serve(out.streams, etsi004_listen, context, topo.kme)  # the HTTPS interfaces' limits
        if skip_listen is not None and topo.interfaces.skip:
            app = skip_app(kme, network, remote_systems=lambda caller: sorted(s for s in _all_saes(topo) if s != caller))
            # The same connection limits (TLS handshake, headers, idle) as the node's ETSI 014 server.
            out.skip_runner, out.skip_port = await skip_server(app, skip_listen, context, topo.kme)
    except BaseException:
        await out.stop()
        raise
    log.info("interfaces.started", etsi004_port=out.etsi004_port, skip_port=out.skip_port, interworking=out.interworking is not None)
    return out


def _all_saes(topo: Any) -> list[str]:
    saes = [sae for node in topo.nodes for sae in node.saes]
    saes += [sae for site in topo.interworking for sae in site.peer.saes]
    return saes
