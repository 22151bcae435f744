"""Faults on the classical channel of a real two-node link: flipped, dropped,
replayed, reordered and delayed post-processing messages, and a partition.
Tampered blocks are discarded at both ends, no key is accepted from a tampered
transcript, and the link recovers with both pools identical."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import pytest

from qcinode.node.faults import NO_FAULT
from qcinode.node.node import Node, NodeSettings
from qcinode.pki import cert_plan, make_certificates
from qcinode.topology import FaultConfig, load_topology
from qcinode.transport.pb import link_pb2 as pb
from tests.support.waiting import until


@dataclasses.dataclass
class Injector:
    """Does ``action`` once to the first message of ``kind`` going ``direction``, once armed."""

    direction: str
    kind: str
    action: str
    armed: bool = False
    fired_in_block: int | None = None

    async def __call__(self, link_id: str, direction: str, message: pb.ClassicalMessage) -> list[pb.ClassicalMessage]:
        if not self.armed or direction != self.direction or message.WhichOneof("body") != self.kind:
            if self.action == "delay" and self.armed:
                await asyncio.sleep(0.002)
            return [message]
        body = getattr(message, self.kind)
        if self.action == "delay":
            await asyncio.sleep(0.002)
            return [message]
        self.armed = False
        self.fired_in_block = getattr(body, "block_seq", None)
        if self.action == "drop":
            return []
        if self.action == "replay":
            return [message, message]
        changed = pb.ClassicalMessage()
        changed.CopyFrom(message)
        field = {"confirm": "pa_seed", "verdict": "auth_tag", "parity_reply": "parities", "commit": "auth_tag", "sift_reply": "classes"}[self.kind]
        data = bytearray(getattr(getattr(changed, self.kind), field))
        data[0] ^= 0x01
        setattr(getattr(changed, self.kind), field, bytes(data))
        return [changed]


def _digests(node: Node) -> dict[str, str]:
    (link,) = node.status(include_digests=True).links
    return {b.block_id: b.sha256.hex() for b in link.blocks or ()}


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("direction", "kind", "action", "discarded_reason"),
    [
        ("A>B", "confirm", "flip", ("authentication_failed", "authentication_failed")),  # Bob checks Alice's tag
        ("B>A", "verdict", "flip", ("authentication_failed", "authentication_failed_at_peer")),  # Alice checks Bob's
        ("A>B", "parity_reply", "flip", None),  # caught by verification or authentication
        ("A>B", "commit", "flip", None),  # Bob cannot tell Alice's decision: resynchronised on reconnection
        ("B>A", "reconciled", "drop", None),
        ("A>B", "sift_reply", "replay", None),
        ("A>B", "parity_reply", "delay", None),
    ],
)
async def test_tampered_block_is_discarded_and_the_link_recovers(
    tmp_path: Path, two_node_topology: Path, direction: str, kind: str, action: str, discarded_reason: tuple[str, str] | None
) -> None:
    topology = load_topology(two_node_topology)
    certs = tmp_path / "certs"
    make_certificates(cert_plan(topology), certs, bootstrap_key_bytes=8192)
    injector = Injector(direction, kind, action)
    common = dict(topology=topology, certs_dir=certs, classical_fault=injector, stage_timeout_s=2.0)
    beta = Node(NodeSettings(name="beta", seed=21, data_dir=tmp_path / "beta", **common))
    port = await beta.start()
    alpha = Node(NodeSettings(name="alpha", seed=22, data_dir=tmp_path / "alpha", peers={"beta": f"127.0.0.1:{port}"}, **common))
    await alpha.start()
    a_link, b_link = alpha.links["alpha-beta"], beta.links["alpha-beta"]
    try:
        await until(lambda: b_link.counters.blocks_done >= 1)
        injector.armed = True
        await until(lambda: not injector.armed or action == "delay", timeout_s=30)
        if action == "delay":
            done = b_link.counters.blocks_done
            await until(lambda: b_link.counters.blocks_done >= done + 2)
            injector.armed = False
        done = b_link.counters.blocks_done
        await until(lambda: b_link.counters.blocks_done >= done + 2)
        await until(lambda: set(_digests(beta)) <= set(_digests(alpha)))
        a, b = _digests(alpha), _digests(beta)
        assert all(a[block] == b[block] for block in set(a) & set(b)), "a block differs between the ends"
        if injector.fired_in_block is not None and action == "flip" and kind in ("confirm", "verdict", "parity_reply"):
            tampered = f"alpha-beta/{injector.fired_in_block}"
            assert tampered not in a and tampered not in b, "a block was accepted from a tampered transcript"
        if discarded_reason is not None:
            at_alice, at_bob = discarded_reason
            assert a_link.counters.aborts_by_reason[at_alice] >= 1
            assert b_link.counters.aborts_by_reason[at_bob] >= 1
        # Both ends spent the same one-time MAC keys.
        await until(lambda: a_link.auth.cursor == b_link.auth.cursor, timeout_s=10)
    finally:
        await alpha.stop(0)
        await beta.stop(0)


async def _two_nodes(tmp_path: Path, two_node_topology: Path, **extra) -> tuple[Node, Node]:  # type: ignore[no-untyped-def]
    topology = load_topology(two_node_topology)
    certs = tmp_path / "certs"
    make_certificates(cert_plan(topology), certs, bootstrap_key_bytes=8192)
    common = dict(topology=topology, certs_dir=certs, stage_timeout_s=2.0, **extra)
    beta = Node(NodeSettings(name="beta", seed=31, data_dir=tmp_path / "beta", **common))
    port = await beta.start()
    alpha = Node(NodeSettings(name="alpha", seed=32, data_dir=tmp_path / "alpha", peers={"beta": f"127.0.0.1:{port}"}, **common))
    await alpha.start()
    return alpha, beta


async def _consistent(alpha: Node, beta: Node) -> None:
    """Both ends hold the same bytes for every block both hold, and spent the same MAC keys."""
    a_link, b_link = alpha.links["alpha-beta"], beta.links["alpha-beta"]
    await until(lambda: set(_digests(beta)) <= set(_digests(alpha)))
    a, b = _digests(alpha), _digests(beta)
    assert all(a[block] == b[block] for block in set(a) & set(b)), "a block differs between the ends"
    await until(lambda: a_link.auth.cursor == b_link.auth.cursor, timeout_s=10)


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "fault",
    [
        FaultConfig(kind="reorder", probability=0.05),
        FaultConfig(kind="flip", probability=0.01),
        FaultConfig(kind="drop", probability=0.01),
        FaultConfig(kind="replay", probability=0.02),
        FaultConfig(kind="delay", delay_ms=20, probability=1.0),  # a slow peer
    ],
    ids=lambda f: f.kind,
)
async def test_random_faults_at_both_ends_never_fork_the_pools(tmp_path: Path, two_node_topology: Path, fault: FaultConfig) -> None:
    alpha, beta = await _two_nodes(tmp_path, two_node_topology)
    a_link, b_link = alpha.links["alpha-beta"], beta.links["alpha-beta"]
    try:
        await until(lambda: b_link.counters.blocks_done >= 1)
        for node in (alpha, beta):
            node.faults.set("alpha-beta", fault)
        # Run until both ends have tampered with messages. A block hit by one
        # is discarded (or, for a delay, merely slow); a slow peer still makes key.
        done = b_link.counters.blocks_done
        # (A dropped or held message stalls its session until the stage
        # timeout, so one hit per end is enough to wait for.)
        await until(lambda: alpha.faults.affected["alpha-beta"] >= 1 and beta.faults.affected["alpha-beta"] >= 1, timeout_s=60)
        if fault.kind == "delay":
            await until(lambda: b_link.counters.blocks_done >= done + 1, timeout_s=90)
        for node in (alpha, beta):
            node.faults.set("alpha-beta", NO_FAULT)
        done = b_link.counters.blocks_done
        await until(lambda: b_link.counters.blocks_done >= done + 2)
        await _consistent(alpha, beta)
        assert a_link.pool.used_bytes == b_link.pool.used_bytes
    finally:
        await alpha.stop(0)
        await beta.stop(0)


@pytest.mark.asyncio
async def test_partition_cuts_the_link_and_it_resynchronises_when_restored(tmp_path: Path, two_node_topology: Path) -> None:
    alpha, beta = await _two_nodes(tmp_path, two_node_topology)
    a_link, b_link = alpha.links["alpha-beta"], beta.links["alpha-beta"]
    try:
        await until(lambda: b_link.counters.blocks_done >= 1)
        alpha.faults.set("alpha-beta", FaultConfig(kind="partition"))  # one end's firewall cuts both directions
        await until(lambda: a_link.state != "up" and b_link.state != "up", timeout_s=10)
        assert not any(advert.up for advert in alpha.network._local_adverts())
        frozen = (a_link.counters.blocks_done, b_link.counters.blocks_done)
        await asyncio.sleep(1.5)  # no block can complete while the channel is cut
        assert (a_link.counters.blocks_done, b_link.counters.blocks_done) == frozen
        assert a_link.state != "up" and b_link.state != "up"
        alpha.faults.set("alpha-beta", NO_FAULT)
        await until(lambda: b_link.counters.blocks_done >= frozen[1] + 2, timeout_s=60)
        assert a_link.state == "up"
        await _consistent(alpha, beta)
    finally:
        await alpha.stop(0)
        await beta.stop(0)
