"""Cancellation leaves every store consistent (real nodes over grpc.aio on port 0, in the style of httpcore's tests).

* ``enc_keys`` cancelled mid-relay, while its hop waits at the transit node:
  the engines at every node forget it, the transit node sends nothing on,
  no key waits at the destination, and both links' ledgers pass the audit
  (the pads already committed are spent by their initiator, never reused);
  the next request is delivered, and a 4-key request after it travels as
  one message per hop and is stored in one transaction.
* A link session cancelled mid-block, with Alice holding a block Bob has
  not been told to commit: after a restart the Hello settles it, both
  pools hold the same blocks with the same bytes, the MAC-key cursors agree
  and the ledgers pass the audit.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from qcinode.cluster.audit import audit_link
from qcinode.kme.handlers import EncRequest
from qcinode.node.node import Node, NodeSettings
from qcinode.pki import cert_plan, make_certificates
from qcinode.status import LinkState
from qcinode.topology import FaultConfig, load_topology
from qcinode.transport.pb import link_pb2 as pb
from tests.support.waiting import until

CHAIN = """
name: chain
defaults:
  source: {rate_hz: 1.0e9}
  detector: {efficiency: 0.1, dark_count_probability: 1.0e-6, misalignment_error: 0.01}
  postprocessing: {block_bits: 50000}
emulation: {speed: max}
nodes:
  - {name: alpha, saes: [alpha-app]}
  - {name: beta}
  - {name: gamma, saes: [gamma-app]}
links:
  - {between: [alpha, beta], length_km: 10}
  - {between: [beta, gamma], length_km: 10}
"""


async def _until(predicate: Callable[[], Any], timeout_s: float = 60.0) -> None:
    await until(predicate, timeout_s)


def _ledgers(nodes: list[Node], link_id: str) -> dict[str, list[Any]]:
    out = {}
    for node in nodes:
        for link in node.status(include_ledger=True).links:
            if link.link_id == link_id:
                out[link.role.value] = [entry.to_json() for entry in link.ledger or ()]
    return out


def _audit(nodes: list[Node], link_id: str) -> tuple[int, int]:
    """(bytes used at both ends, bytes spent by their initiator alone) on the link; fails on any violation."""
    audit = audit_link(link_id, _ledgers(nodes, link_id))
    assert audit.violations == [], audit.violations
    return audit.bytes_both, audit.bytes_initiator_only


@pytest.mark.asyncio
async def test_enc_keys_cancelled_mid_relay_leaves_no_key_and_consistent_ledgers(tmp_path: Path) -> None:
    (tmp_path / "chain.yaml").write_text(CHAIN)
    topology = load_topology(tmp_path / "chain.yaml")
    certs = tmp_path / "certs"
    make_certificates(cert_plan(topology), certs, bootstrap_key_bytes=8192)
    ports: dict[str, str] = {}
    nodes: dict[str, Node] = {}
    for name, seed in (("gamma", 31), ("beta", 32), ("alpha", 33)):  # receivers first: their ports go to the transmitters
        settings = NodeSettings(topology=topology, name=name, certs_dir=certs, seed=seed, data_dir=tmp_path / name, peers=ports, stage_timeout_s=2.0)
        nodes[name] = Node(settings)
        ports[name] = f"127.0.0.1:{await nodes[name].start()}"
    await asyncio.gather(*(node.network.aclose() for node in nodes.values()))  # drop channels dialled before every port was known
    alpha, beta, gamma = nodes["alpha"], nodes["beta"], nodes["gamma"]
    everyone = list(nodes.values())
    request = EncRequest(master_sae="alpha-app", slave_saes=("gamma-app",), number=1, size_bits=256)
    try:
        await _until(lambda: alpha.network.available_keys("alpha-app", "gamma-app", 256) >= 4, timeout_s=120)
        (first,) = await alpha.network.deliver(request)
        assert first.paths == (("alpha", "beta", "gamma"),)
        assert gamma.keystore is not None and gamma.keystore.total() == 1
        assert _audit(everyone, "alpha-beta") == (64, 0) and _audit(everyone, "beta-gamma") == (64, 0)

        # The hop waits at beta, on its way to gamma, when the KME's caller goes away at alpha.
        beta.faults.set("beta-gamma", FaultConfig(kind="delay", delay_ms=10_000, probability=1.0, channel="relay"))
        task = asyncio.create_task(alpha.network.deliver(request))
        await _until(lambda: beta.faults.affected["beta-gamma"] >= 1, timeout_s=10)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

        # Every engine forgets it: the request at alpha, the incoming hop at beta (its call was cancelled).
        assert alpha.network.engine.open_requests == () and alpha.network.engine.waiting == 0
        await _until(lambda: beta.network.engine.waiting == 0, timeout_s=10)
        # Nothing reached gamma: no orphan key, no pad consumed there.
        assert gamma.keystore.total() == 1
        # alpha-beta: the pad was used at both ends (beta consumed it before forwarding);
        # beta-gamma: beta committed and saved its pad before the (never sent) hop: spent by beta alone.
        assert _audit(everyone, "alpha-beta") == (2 * 64, 0)
        assert _audit(everyone, "beta-gamma") == (64, 64)

        # The links carry the next request; no byte of the cancelled one is used again.
        beta.faults.set("beta-gamma", FaultConfig(kind="none"))
        (second,) = await alpha.network.deliver(request)
        assert gamma.keystore.take("gamma-app", "alpha-app", [first.key_id, second.key_id]) == [(first.key_id, first.key), (second.key_id, second.key)]
        assert _audit(everyone, "alpha-beta") == (3 * 64, 0) and _audit(everyone, "beta-gamma") == (2 * 64, 64)

        # A request's keys travel together: one RelayKeys message per hop, one ledger transaction
        # at beta for both links, one key-store transaction at gamma; each key its own pad.
        await _until(lambda: alpha.network.available_keys("alpha-app", "gamma-app", 256) >= 4, timeout_s=120)
        calls = (dict(alpha.network.relay_calls), dict(beta.network.relay_calls), gamma.network.key_writes)
        four = await alpha.network.deliver(EncRequest(master_sae="alpha-app", slave_saes=("gamma-app",), number=4, size_bits=256))
        assert alpha.network.relay_calls["RelayKeys"] - calls[0].get("RelayKeys", 0) == 1
        assert beta.network.relay_calls["RelayKeys"] - calls[1].get("RelayKeys", 0) == 1
        assert (gamma.network.key_writes[0] - calls[2][0], gamma.network.key_writes[1] - calls[2][1]) == (1, 4)
        assert gamma.keystore.take("gamma-app", "alpha-app", [k.key_id for k in four]) == [(k.key_id, k.key) for k in four]
        assert _audit(everyone, "alpha-beta") == (7 * 64, 0) and _audit(everyone, "beta-gamma") == (6 * 64, 64)
    finally:
        for node in everyone:
            await node.stop(0)


class _HoldCommit:
    """A classical-channel hook that, once armed, holds Alice's next Commit forever: the block is accepted at Alice, pending at Bob."""

    def __init__(self) -> None:
        self.armed = False
        self.holding = asyncio.Event()

    async def __call__(self, link_id: str, direction: str, message: pb.ClassicalMessage) -> list[pb.ClassicalMessage]:
        if self.armed and direction == "A>B" and message.WhichOneof("body") == "commit":
            self.armed = False
            self.holding.set()
            await asyncio.Event().wait()  # until cancelled
        return [message]


@pytest.mark.asyncio
async def test_a_session_cancelled_mid_block_resynchronises_to_identical_pools(tmp_path: Path, two_node_topology: Path) -> None:
    topology = load_topology(two_node_topology)
    certs = tmp_path / "certs"
    make_certificates(cert_plan(topology), certs, bootstrap_key_bytes=8192)
    hold = _HoldCommit()
    beta_peers: dict[str, str] = {}

    def settings(name: str, seed: int, peers: dict[str, str]) -> NodeSettings:
        return NodeSettings(
            topology=topology, name=name, certs_dir=certs, seed=seed, data_dir=tmp_path / name, peers=peers, stage_timeout_s=2.0, classical_fault=hold
        )

    beta = Node(settings("beta", 41, beta_peers))
    port = await beta.start()
    alpha = Node(settings("alpha", 42, {"beta": f"127.0.0.1:{port}"}))
    alpha_ready: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    alpha_run = asyncio.create_task(alpha.run(ready=alpha_ready.set_result))
    restarted: Node | None = None
    try:
        # Beta's adverts must reach alpha for alpha to route: the channel it may have dialled before alpha's port was known goes.
        beta_peers["alpha"] = f"127.0.0.1:{await alpha_ready}"
        await beta.network.aclose()
        b_link = beta.links["alpha-beta"]
        await _until(lambda: b_link.counters.blocks_done >= 2 and alpha.network.available_keys("alpha-app", "beta-app", 256) >= 2)
        await alpha.network.deliver(EncRequest(master_sae="alpha-app", slave_saes=("beta-app",), number=1, size_bits=256))

        # Mid-block: Alice accepted it and holds it; Bob waits for her Commit. Cancel the node's run (and so the session).
        hold.armed = True
        await _until(lambda: hold.holding.is_set())
        held_by_alice = set(alpha.links["alpha-beta"].pool.block_ids)
        task_cancelled = alpha_run.cancel()
        await asyncio.wait([alpha_run])
        assert task_cancelled and alpha_run.cancelled()
        await _until(lambda: b_link.state is LinkState.DOWN, timeout_s=10)
        assert b_link.pending_bob is not None, "Bob holds the block pending the Commit that never came"
        pending = f"alpha-beta/{b_link.pending_bob.pending_block_seq}"
        assert pending in held_by_alice and pending not in b_link.pool.block_ids

        # Restarted from its data directory, alpha's Hello settles the pending block; the link grows key again.
        restarted = Node(settings("alpha", 43, {"beta": f"127.0.0.1:{port}"}))
        beta_peers["alpha"] = f"127.0.0.1:{await restarted.start()}"
        await beta.network.aclose()
        a_link = restarted.links["alpha-beta"]
        done = b_link.counters.blocks_done
        await _until(lambda: b_link.counters.blocks_done >= done + 2)
        assert pending in b_link.pool.block_ids and pending in a_link.pool.block_ids
        await _until(lambda: set(b_link.pool.block_ids) <= set(a_link.pool.block_ids) and a_link.auth.cursor == b_link.auth.cursor, timeout_s=10)
        common = set(a_link.pool.block_ids) & set(b_link.pool.block_ids)
        assert all(a_link.pool.block_digest(b) == b_link.pool.block_digest(b) for b in common)
        both, initiator_only = _audit([restarted, beta], "alpha-beta")
        assert both == 64 and initiator_only == 0  # the relayed key's pad, used once at each end
        assert beta.keystore is not None and beta.keystore.total() == 1
    finally:
        if not alpha_run.done():
            alpha_run.cancel()
            await asyncio.wait([alpha_run])
        if restarted is not None:
            await restarted.stop(0)
        await beta.stop(0)
