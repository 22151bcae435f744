"""The node's relay driver over real grpc.aio: a relayed key, concurrent requests, and a request cancelled mid-relay.

The relay engine's decisions are tested without sockets (tests/unit/test_relay_engine.py);
here the driver performs them: saves, gRPC hops, the key store, and cancellation.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from qcinode.cluster.audit import audit_link
from qcinode.kme.handlers import EncRequest
from qcinode.node.node import Node, NodeSettings
from qcinode.pki import cert_plan, make_certificates
from qcinode.topology import FaultConfig, load_topology
from tests.support.waiting import until


def _audit(alpha: Node, beta: Node) -> tuple[int, int]:
    """(bytes used at both ends, bytes spent by their initiator alone) on the link; fails on any violation."""
    ledgers = {}
    for node in (alpha, beta):
        (link,) = node.status(include_ledger=True).links
        ledgers[link.role.value] = [entry.to_json() for entry in link.ledger or ()]
    audit = audit_link("alpha-beta", ledgers)
    assert audit.violations == [], audit.violations
    return audit.bytes_both, audit.bytes_initiator_only


async def _pair(tmp_path: Path, two_node_topology: Path) -> tuple[Node, Node, NodeSettings]:
    """Alpha and beta started and routing to each other; and alpha's settings (to start it again)."""
    topology = load_topology(two_node_topology)
    certs = tmp_path / "certs"
    make_certificates(cert_plan(topology), certs, bootstrap_key_bytes=8192)
    common = dict(topology=topology, certs_dir=certs, stage_timeout_s=2.0)
    beta_peers: dict[str, str] = {}
    beta = Node(NodeSettings(name="beta", seed=41, data_dir=tmp_path / "beta", peers=beta_peers, **common))  # type: ignore[arg-type]
    port = await beta.start()
    alpha_settings = NodeSettings(name="alpha", seed=42, data_dir=tmp_path / "alpha", peers={"beta": f"127.0.0.1:{port}"}, **common)  # type: ignore[arg-type]
    alpha = Node(alpha_settings)
    # Beta's adverts must reach alpha, for alpha to route: give beta alpha's port, and drop the
    # channel it may have opened to the default address meanwhile.
    beta_peers["alpha"] = f"127.0.0.1:{await alpha.start()}"
    await beta.network.aclose()
    return alpha, beta, alpha_settings


@pytest.mark.asyncio
async def test_a_relayed_key_is_stored_and_a_cancelled_request_leaves_nothing_waiting(
    tmp_path: Path, two_node_topology: Path
) -> None:
    alpha, beta, _ = await _pair(tmp_path, two_node_topology)
    request = EncRequest(master_sae="alpha-app", slave_saes=("beta-app",), number=2, size_bits=256)
    try:
        # Enough key for the first request to set a pad stock aside (a sixteenth of what the link has
        # free, at least its pad), which the concurrent requests below need: with only 10 keys the
        # stock came only if the link made more meanwhile, which a loaded machine's did not.
        await until(lambda: alpha.network.available_keys("alpha-app", "beta-app", 256) >= 40, timeout_s=90)
        keys = await alpha.network.deliver(request)
        assert [k.paths for k in keys] == [(("alpha", "beta"),)] * 2
        assert beta.keystore is not None and beta.keystore.take("beta-app", "alpha-app", [k.key_id for k in keys]) == [
            (k.key_id, k.key) for k in keys
        ]
        assert _audit(alpha, beta) == (2 * 64, 0)
        # The request's two keys went as one message, and were stored in one transaction.
        assert alpha.network.relay_calls == {"RelayKeys": 1, "hops": 2}
        assert beta.network.key_writes == (1, 2)

        # Concurrent requests share the source's ledger saves: the first one's save runs, the
        # two asked for meanwhile go to disk together in the next transaction. (With no pad
        # stock: the first request's would spare the next ones their saves.)
        assert alpha.network.engine.stocked_bytes
        alpha.network.engine.release_stocks()
        saves = alpha.network.link_saves
        batches = await asyncio.gather(*(alpha.network.deliver(request) for _ in range(3)))
        assert (alpha.network.link_saves[0] - saves[0], alpha.network.link_saves[1] - saves[1]) == (2, 3)
        for batch in batches:
            assert beta.keystore.take("beta-app", "alpha-app", [k.key_id for k in batch]) == [(k.key_id, k.key) for k in batch]
        assert _audit(alpha, beta) == (8 * 64, 0)

        # The hop waits at alpha (a slow relay channel) when the KME's caller gives up.
        alpha.faults.set("alpha-beta", FaultConfig(kind="delay", delay_ms=5000, probability=1.0, channel="relay"))
        task = asyncio.create_task(alpha.network.deliver(request))
        await until(lambda: alpha.network.engine.stats.hops_sent >= 10, timeout_s=10)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        engine = alpha.network.engine
        assert engine.open_requests == () and engine.waiting == 0, "the engine forgot the cancelled request"
        # Its two pads stay used at alpha (committed and saved before the hops would have left); beta never saw them.
        assert _audit(alpha, beta) == (8 * 64, 2 * 64)
        assert beta.keystore.total() == 0
        assert beta.network.engine.waiting == 0
    finally:
        await alpha.stop(0)
        await beta.stop(0)


@pytest.mark.asyncio
async def test_a_saved_pad_stock_sends_the_next_hops_without_a_save_and_a_clean_stop_releases_it(
    tmp_path: Path, two_node_topology: Path
) -> None:
    alpha, beta, alpha_settings = await _pair(tmp_path, two_node_topology)
    request = EncRequest(master_sae="alpha-app", slave_saes=("beta-app",), number=2, size_bits=256)
    try:
        # Enough key for a stock (a sixteenth of what the link has free, at least one pad).
        await until(lambda: alpha.network.available_keys("alpha-app", "beta-app", 256) >= 40, timeout_s=90)
        await alpha.network.deliver(request)
        assert alpha.network.engine.stocked_bytes, "set aside with the first request's pads, saved with them"
        saves = alpha.network.link_saves
        keys = await alpha.network.deliver(request)
        assert alpha.network.link_saves == saves, "the source sent both hops without a save of its own"
        assert beta.keystore is not None
        assert beta.keystore.take("beta-app", "alpha-app", [k.key_id for k in keys]) == [(k.key_id, k.key) for k in keys]
        assert _audit(alpha, beta) == (4 * 64, 0)
    finally:
        await alpha.stop(0)
    (link,) = alpha.status(include_ledger=True).links
    ledger = [entry.to_json() for entry in link.ledger or ()]
    # Restarted from its disk, alpha's ledger is what it used: the released stock is not recorded as used.
    again = Node(alpha_settings)
    await again.start()
    try:
        (link,) = again.status(include_ledger=True).links
        assert [entry.to_json() for entry in link.ledger or ()] == ledger
    finally:
        await again.stop(0)
        await beta.stop(0)
