"""A neighbour from before the batched calls (a rolling upgrade): keys and adverts still reach it, one call each.

Beta plays an older qcinode: its ``RelayKeys`` and ``AdvertiseMany`` answer
UNIMPLEMENTED, as a server without those methods does. Alpha's first batched
call to it is refused that way; alpha notes it, sends the same hops (or
adverts) one call each, and keeps doing so; everything arrives.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from structlog.testing import capture_logs

from qcinode.core.routing import LinkAdvert
from qcinode.kme.handlers import EncRequest
from qcinode.node.node import Node, NodeSettings
from qcinode.pki import cert_plan, make_certificates
from qcinode.topology import load_topology
from qcinode.transport.network import advert_to_pb
from tests.support.waiting import until


async def _unimplemented(request: Any, context: grpc.aio.ServicerContext) -> Any:
    await context.abort(grpc.StatusCode.UNIMPLEMENTED, "Method not found!")


@pytest.mark.asyncio
async def test_hops_and_adverts_reach_a_neighbour_without_batched_calls(tmp_path: Path, two_node_topology: Path) -> None:
    topology = load_topology(two_node_topology)
    certs = tmp_path / "certs"
    make_certificates(cert_plan(topology), certs, bootstrap_key_bytes=8192)
    common: dict[str, Any] = dict(topology=topology, certs_dir=certs, stage_timeout_s=2.0)
    beta_peers: dict[str, str] = {}
    beta = Node(NodeSettings(name="beta", seed=41, data_dir=tmp_path / "beta", peers=beta_peers, **common))
    beta.network.RelayKeys = _unimplemented  # type: ignore[method-assign]  # registered as the server starts
    beta.network.AdvertiseMany = _unimplemented  # type: ignore[method-assign]
    alpha = Node(NodeSettings(name="alpha", seed=42, data_dir=tmp_path / "alpha", peers={"beta": f"127.0.0.1:{await beta.start()}"}, **common))
    beta_peers["alpha"] = f"127.0.0.1:{await alpha.start()}"
    await beta.network.aclose()
    request = EncRequest(master_sae="alpha-app", slave_saes=("beta-app",), number=3, size_bits=256)
    try:
        await until(lambda: alpha.network.available_keys("alpha-app", "beta-app", 256) >= 10, timeout_s=90)
        with capture_logs() as logs:
            keys = await alpha.network.deliver(request)
            again = await alpha.network.deliver(request)
        assert beta.keystore is not None
        for batch in (keys, again):
            assert beta.keystore.take("beta-app", "alpha-app", [k.key_id for k in batch]) == [(k.key_id, k.key) for k in batch]
        assert alpha.network.single_calls == {"beta"}
        # One RelayKeys refused, then a RelayKey per hop, and no second try of RelayKeys.
        assert alpha.network.relay_calls == {"RelayKeys": 1, "RelayKey": 6, "hops": 6}
        (noted,) = [e for e in logs if e["event"] == "network.peer_without_batched_calls"]
        assert noted["peer_id"] == "beta" and noted["log_level"] == "warning"

        # Adverts: several for beta go as one Advertise each, and beta takes them all.
        net = alpha.network
        links = [LinkAdvert("alpha-beta", "beta", True, 1000)]
        net.schedule.sent(links, 1e12)  # alpha originates nothing more by itself meanwhile
        older, newer = (advert_to_pb(net.db.originate(links, time.time() + dt)) for dt in (1.0, 2.0))
        calls = net.advert_counts["calls"]
        assert await net._send_adverts("beta", [older, newer]) is True
        assert net.advert_counts["calls"] == calls + 1
        await until(lambda: beta.network.db.adverts["alpha"].sequence == newer.sequence)
    finally:
        await alpha.stop(0)
        await beta.stop(0)
