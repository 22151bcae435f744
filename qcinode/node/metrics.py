"""Prometheus metrics of one node, served at ``/metrics`` (``qcinode_`` prefix).

Link, relay and routing figures are read at scrape time (a custom
collector) from :class:`~qcinode.status.NodeStatus`, the model ``qcinode
status`` reads too, so the two always agree. Label values come from closed
vocabularies (link state, role, :class:`~qcinode.core.aborts.AbortReason`,
relay refusal and advert rejection reasons), so label sets stay bounded. ETSI 014 request latencies
are observed as they happen. Process metrics (CPU, memory, file
descriptors) come from prometheus-client's process collector.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from ..core.routing import ORIGINATION_REASONS
from ..status import LinkState, NodeStatus

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class _NodeCollector(Collector):
    def __init__(self, status: Callable[[], NodeStatus], adverts: Callable[[], Mapping[str, int]]) -> None:
        self.status = status
        self.adverts = adverts

    def collect(self) -> Iterator[Any]:
        status = self.status()
        labels = ["link", "peer", "role"]

        def gauge(name: str, doc: str) -> GaugeMetricFamily:
            return GaugeMetricFamily(f"qcinode_link_{name}", doc, labels=labels)

        def counter(name: str, doc: str) -> CounterMetricFamily:
            return CounterMetricFamily(f"qcinode_link_{name}", doc, labels=labels)

        up = gauge("up", "1 while the link's post-processing session is up")
        qber = gauge("qber", "Key-basis QBER of the latest block (fraction)")
        efficiency = gauge("ec_efficiency", "Cascade efficiency f = leak / (n h(QBER)), cumulative")
        pool = gauge("pool_bits", "Unused key in the link pool, both halves (bits)")
        rate = gauge("secret_key_rate_bps", "Secret key rate per emulated second")
        emulated = gauge("emulated_seconds", "Emulated time the link has run")
        pulses = counter("pulses", "Pulses sent (or received) in finished blocks")
        detections = counter("detections", "Detector clicks in finished blocks")
        sifted = counter("sifted_bits", "Sifted bits in finished blocks")
        secret = counter("secret_bits", "Secret bits added to the pool")
        leak = counter("ec_leak_bits", "Bits disclosed by error correction")
        done = counter("blocks_done", "Blocks accepted into the pool")
        aborted = CounterMetricFamily(
            "qcinode_link_blocks_aborted", "Blocks discarded, by cause (qcinode.core.aborts.AbortReason)", labels=[*labels, "reason"]
        )
        stage_seconds = CounterMetricFamily(
            "qcinode_link_block_stage_seconds",
            "Transmitting end: wall seconds accepted blocks spent in each post-processing stage (estimation, reconciliation, confirmation)",
            labels=[*labels, "stage"],
        )
        stage_blocks = counter("block_stage_blocks", "Transmitting end: accepted blocks whose stages block_stage_seconds sums")
        lag = gauge("lag_seconds", "Emulated seconds the transmitter is behind the network clock (the CPU cannot keep up)")
        in_pass = gauge("in_pass", "Free-space link: 1 while the satellite is above the elevation mask")
        elevation = gauge("elevation_degrees", "Free-space link: the satellite's elevation seen from the ground station")
        slant = gauge("range_km", "Free-space link: slant range from the ground station to the satellite")
        loss = gauge("loss_db", "Free-space link: channel loss now, detector excluded (absent outside passes)")
        next_pass = gauge("next_pass_seconds", "Free-space link: emulated seconds until the next pass rises (absent during a pass)")
        for link in status.links:
            values = [link.link_id, link.peer, link.role.value]
            up.add_metric(values, 1.0 if link.state is LinkState.UP else 0.0)
            qber.add_metric(values, link.qber)
            efficiency.add_metric(values, link.ec_efficiency)
            pool.add_metric(values, float(link.pool_bits))
            rate.add_metric(values, link.secret_key_rate_bps)
            emulated.add_metric(values, link.emulated_s)
            pulses.add_metric(values, float(link.pulses_sent))
            detections.add_metric(values, float(link.detections))
            sifted.add_metric(values, float(link.sifted_bits))
            secret.add_metric(values, float(link.secret_bits))
            leak.add_metric(values, float(link.ec_leak_bits))
            done.add_metric(values, float(link.blocks_done))
            for reason, count in sorted(link.aborts_by_reason.items()):
                aborted.add_metric([*values, reason.value], float(count))
            if link.block_stage_blocks:
                stage_blocks.add_metric(values, float(link.block_stage_blocks))
                for stage, seconds in link.block_stage_seconds.items():
                    stage_seconds.add_metric([*values, stage], seconds)
            channel = link.channel
            if channel is not None and channel.lag_s is not None:
                lag.add_metric(values, channel.lag_s)
            if channel is not None and channel.in_pass is not None:
                in_pass.add_metric(values, 1.0 if channel.in_pass else 0.0)
                figures = ((elevation, channel.elevation_deg), (slant, channel.range_km), (loss, channel.loss_db), (next_pass, channel.next_pass_in_s))
                for family, value in figures:
                    if value is not None:
                        family.add_metric(values, value)
        yield from (up, qber, efficiency, pool, rate, emulated, pulses, detections, sifted, secret, leak, done, aborted, stage_seconds, stage_blocks)
        yield from (lag, in_pass, elevation, slant, loss, next_pass)

        net = status.network
        relays = CounterMetricFamily("qcinode_relay_requests", "End-to-end key relays started at this node, by outcome", labels=["outcome"])
        relays.add_metric(["delivered"], float(net.relays_delivered))
        relays.add_metric(["failed"], float(net.relays_failed))
        yield relays
        hops = CounterMetricFamily("qcinode_relay_hops", "Relay hops, by direction", labels=["direction"])
        hops.add_metric(["sent"], float(net.relay_hops_sent))
        hops.add_metric(["received"], float(net.relay_hops_received))
        hops.add_metric(["forwarded"], float(net.relays_forwarded))
        yield hops
        failures = CounterMetricFamily("qcinode_relay_failures", "Relay failures, by cause", labels=["reason"])
        for refusal, count in sorted(net.relay_failures_by_reason.items(), key=lambda item: item[0].value):
            failures.add_metric([refusal.value], float(count))
        yield failures
        kme_refused = CounterMetricFamily(
            "qcinode_kme_refusals",
            "enc_keys requests refused by the per-SAE limits before any key was spent, by reason (rate_limit, fair_share)",
            labels=["reason"],
        )
        for name, count in sorted(net.kme_refusals_by_reason.items()):
            kme_refused.add_metric([name], float(count))
        yield kme_refused
        expired = CounterMetricFamily(
            "qcinode_kme_keys_expired", "Keys deleted unredeemed after relay.key_ttl_s (their slave never asked, or their IDs never reached a master)"
        )
        expired.add_metric([], float(net.keys_expired))
        yield expired
        routing = net.routing
        nodes = GaugeMetricFamily("qcinode_routing_known_nodes", "Nodes in the link-state database (this one included)")
        nodes.add_metric([], float(routing.known_nodes if routing is not None else 1))
        yield nodes
        both = GaugeMetricFamily(
            "qcinode_routing_links_up", "Links in the link-state database that both ends advertise as up (what routing can use)"
        )
        both.add_metric([], float(routing.links_up_both_ways if routing is not None else 0))
        yield both
        rejected = CounterMetricFamily(
            "qcinode_routing_adverts_rejected",
            "Routing adverts refused (forged, altered, replayed, unsigned, out of the sequence window), by reason",
            labels=["reason"],
        )
        for rejection, count in sorted((routing.rejected if routing is not None else {}).items(), key=lambda item: item[0].value):
            rejected.add_metric([rejection.value], float(count))
        yield rejected
        adverts = CounterMetricFamily(
            "qcinode_routing_adverts",
            "Routing adverts: originated here, sent (to a neighbour), calls (Advertise and AdvertiseMany calls made, each carrying "
            "one advert or several), received (answered), new (stored and flooded on), "
            "exchanges (database exchanges started with a neighbour that started or missed adverts)",
            labels=["kind"],
        )
        counts = self.adverts()
        for kind in ("originated", "sent", "calls", "received", "new", "exchanges"):
            adverts.add_metric([kind], float(counts.get(kind, 0)))
        yield adverts
        originations = CounterMetricFamily(
            "qcinode_routing_originations",
            f"Adverts this node originated, by why: {', '.join(ORIGINATION_REASONS)}",
            labels=["reason"],
        )
        for why in ORIGINATION_REASONS:
            originations.add_metric([why], float(counts.get(f"originated_{why}", 0)))
        yield originations
        healthy = GaugeMetricFamily(
            "qcinode_storage_healthy",
            "1 while the database file takes reads and writes, 0 from a failed one (full or unwritable disk, I/O error) until one succeeds",
            labels=["file"],
        )
        storage_failures = CounterMetricFamily(
            "qcinode_storage_failures", "Failed reads and writes of the database file (full or unwritable disk, I/O errors)", labels=["file"]
        )
        for file, store in net.storage.items():
            healthy.add_metric([file], 1.0 if store.healthy else 0.0)
            storage_failures.add_metric([file], float(store.failures))
        yield from (healthy, storage_failures)


class NodeMetrics:
    """The registry of one node and the hooks that feed it."""

    def __init__(self, status: Callable[[], NodeStatus], adverts: Callable[[], Mapping[str, int]] = dict) -> None:
        """A registry whose node figures are read at each scrape.

        Args:
            status: The node's status.
            adverts: The routing advert message counts by kind.
        """
        self.registry = CollectorRegistry(auto_describe=False)
        ProcessCollector(registry=self.registry)
        self.registry.register(_NodeCollector(status, adverts))
        self.etsi_requests = Counter(
            "qcinode_etsi014_requests", "ETSI GS QKD 014 requests, by endpoint and HTTP status", ["endpoint", "status"], registry=self.registry
        )
        self.etsi_latency = Histogram(
            "qcinode_etsi014_request_seconds",
            "ETSI GS QKD 014 request latency",
            ["endpoint"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
            registry=self.registry,
        )

    def observe_request(self, endpoint: str, status: int, latency_s: float) -> None:
        self.etsi_requests.labels(endpoint, str(status)).inc()
        self.etsi_latency.labels(endpoint).observe(latency_s)

    def render(self) -> bytes:
        out: bytes = generate_latest(self.registry)
        return out

    def app(self) -> web.Application:
        async def metrics(_request: web.Request) -> web.Response:
            return web.Response(body=self.render(), headers={"Content-Type": CONTENT_TYPE})

        application = web.Application()
        application.router.add_get("/metrics", metrics)
        return application


async def start_metrics_server(metrics: NodeMetrics, host: str, port: int) -> tuple[web.AppRunner, int]:
    """Serves ``/metrics`` over plain HTTP (Prometheus scrapes inside the cluster network)."""
    runner = web.AppRunner(metrics.app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    server = site._server  # noqa: SLF001 - aiohttp exposes the bound port only here
    sockets = getattr(server, "sockets", None) or []
    bound = int(sockets[0].getsockname()[1]) if sockets else port
    return runner, bound
