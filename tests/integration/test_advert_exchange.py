"""Database exchange over real grpc.aio: a node that comes up late learns what was flooded before it was up.

A chain alpha — beta — gamma. Alpha and beta start and flood their adverts;
gamma is not up, so beta's forward to it fails. Every refresh is pushed out
of reach (10,000 s), so the only way gamma can learn alpha's advert is the
database exchange: gamma asks beta when it starts, and beta owes gamma the
flood it missed.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from qcinode.cluster.launcher import free_ports
from qcinode.core.routing import AdvertSchedule, LinkAdvert, RejectReason
from qcinode.node.node import Node, NodeSettings
from qcinode.pki import cert_plan, make_certificates
from qcinode.topology import load_topology
from qcinode.transport.network import advert_to_pb
from tests.support.waiting import until

CHAIN = """
name: chain
defaults:
  source: {rate_hz: 1.0e5}
  postprocessing: {block_bits: 50000}
emulation: {speed: 1.0}
nodes:
  - name: alpha
  - name: beta
  - name: gamma
links:
  - between: [alpha, beta]
    length_km: 20
  - between: [beta, gamma]
    length_km: 20
"""


def _chain_nodes(tmp_path: Path, names: list[str]) -> dict[str, Node]:
    """The chain's nodes ``names`` (not started), on free ports, with no advert refresh within a test."""
    source = tmp_path / "chain.yaml"
    source.write_text(CHAIN)
    topology = load_topology(source)
    certs = tmp_path / "certs"
    make_certificates(cert_plan(topology), certs)
    ports = dict(zip(names, free_ports(len(names))))
    peers = {name: f"127.0.0.1:{port}" for name, port in ports.items()}
    nodes = {
        name: Node(
            NodeSettings(
                topology=topology, name=name, certs_dir=certs, listen=peers[name], peers=peers,
                data_dir=tmp_path / name, kme_listen=None, metrics_listen=None, seed=i,
            )
        )  # fmt: skip
        for i, name in enumerate(names)
    }
    for node in nodes.values():
        node.network.schedule = AdvertSchedule(np.random.default_rng(0), refresh_s=10_000.0, min_interval_s=1.0)
    return nodes


@pytest.mark.asyncio
async def test_a_node_that_starts_late_gets_the_adverts_flooded_before_it_was_up(tmp_path: Path) -> None:
    # No refresh within the test: what gamma learns, it learns by the exchange (or a change).
    nodes = _chain_nodes(tmp_path, ["alpha", "beta", "gamma"])
    started: list[Node] = []
    try:
        for name in ("alpha", "beta"):
            await nodes[name].start()
            started.append(nodes[name])
        alpha, beta, gamma = nodes["alpha"], nodes["beta"], nodes["gamma"]
        await until(lambda: "alpha" in beta.network.db.nodes() and "beta" in alpha.network.db.nodes())
        # Beta's forward of alpha's advert to gamma failed (gamma is down): it owes gamma an exchange.
        await until(lambda: "gamma" in beta.network.sync.pending)
        sequence = beta.network.db.adverts["alpha"].sequence
        await gamma.start()
        started.append(gamma)
        await until(lambda: "alpha" in gamma.network.db.nodes())
        assert gamma.network.db.adverts["alpha"].sequence >= sequence
        assert beta.network.advert_counts["exchanges"] >= 1
        await until(lambda: not gamma.network.sync.needs_database)  # its ask got through to beta
        await until(lambda: "gamma" in alpha.network.db.nodes())  # and gamma's own advert went the other way
    finally:
        for node in reversed(started):
            await node.stop()


@pytest.mark.asyncio
async def test_adverts_queued_for_a_neighbour_go_in_one_call_and_a_forged_one_fails_alone(tmp_path: Path) -> None:
    """AdvertiseMany: the callee takes each advert as if it came alone; the caller's queue keeps the newest per origin."""
    nodes = _chain_nodes(tmp_path, ["alpha", "beta"])
    try:
        for node in nodes.values():
            await node.start()
        alpha, beta = nodes["alpha"].network, nodes["beta"].network
        await until(lambda: "alpha" in beta.db.nodes())
        links = [LinkAdvert("alpha-beta", "beta", True, 1000)]
        alpha.schedule.sent(links, 1e12)  # alpha originates nothing more by itself: the test's adverts are the newest
        older, newer = (advert_to_pb(alpha.db.originate(links, time.time() + dt)) for dt in (1.0, 2.0))
        forged = advert_to_pb(alpha.db.originate(links, time.time() + 3.0))
        forged.links[0].available_out_bytes = 10**9  # altered after signing
        # A call to beta is in flight: what floods meanwhile queues, the newer advert replacing the older.
        alpha._draining.add("beta")
        await alpha._flood(older, exclude=set())
        await alpha._flood(newer, exclude=set())
        assert list(alpha._outbox["beta"].values()) == [newer]
        alpha._draining.discard("beta")
        calls = alpha.advert_counts["calls"]
        assert await alpha._send_adverts("beta", [forged, newer]) is True  # one call, both taken one by one
        assert alpha.advert_counts["calls"] == calls + 1
        assert beta.db.adverts["alpha"].sequence == newer.sequence  # the genuine one is held
        assert beta.db.rejections.get(RejectReason.BAD_SIGNATURE) == 1  # the forged one refused alone
    finally:
        for node in nodes.values():
            await node.stop()
