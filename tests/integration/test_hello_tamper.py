"""A tampered reconnection Hello on a real two-node link is refused and changes nothing.

The attack: when a link reconnects, the Hello tells the other end which
blocks to keep. A Hello changed in transit to say "I hold nothing" would make
the receiver drop its whole pool (and a pending block). The Hello is tagged
with a one-time MAC key from the link's reserve, so the receiver refuses it
with pools, cursor and pending block untouched, and the next genuine Hello
resynchronises the link.
"""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from qcinode.node.faults import NO_FAULT
from qcinode.node.node import Node, NodeSettings
from qcinode.node.runtime import LinkRuntime
from qcinode.pki import cert_plan, make_certificates
from qcinode.topology import FaultConfig, load_topology
from qcinode.transport.pb import link_pb2 as pb
from tests.support.waiting import until


def _state(rt: LinkRuntime) -> dict[str, Any]:
    return {
        "blocks": tuple(rt.pool.block_ids),
        "used_bytes": rt.pool.used_bytes,
        "cursor": rt.auth.cursor,
        "staged": rt.auth.staged_block_seqs,
        "pending": rt.pending_bob.pending_block_seq if rt.pending_bob is not None else None,
        "next_block_seq": rt.next_block_seq,
    }


@dataclasses.dataclass
class HelloTamperer:
    """Once armed, empties the held blocks of Alice's next Hello; notes Bob's state when the next one leaves."""

    bob: LinkRuntime
    armed: bool = False
    tampered: int = 0
    bob_after_refusal: dict[str, Any] | None = None

    async def __call__(self, link_id: str, direction: str, message: pb.ClassicalMessage) -> list[pb.ClassicalMessage]:
        if direction != "A>B" or message.WhichOneof("body") != "hello":
            return [message]
        if self.armed:
            self.armed = False
            self.tampered += 1
            changed = pb.ClassicalMessage()
            changed.CopyFrom(message)
            del changed.hello.held_block_seqs[:]  # "I hold nothing": drop everything
            return [changed]
        if self.tampered and self.bob_after_refusal is None:
            # Bob has answered the tampered Hello (Alice waited for it): this is his state after it.
            self.bob_after_refusal = _state(self.bob)
        return [message]


@pytest.mark.asyncio
async def test_a_tampered_hello_is_refused_and_the_pools_are_unchanged(tmp_path: Path, two_node_topology: Path) -> None:
    topology = load_topology(two_node_topology)
    certs = tmp_path / "certs"
    make_certificates(cert_plan(topology), certs, bootstrap_key_bytes=8192)
    placeholder: list[HelloTamperer] = []

    async def hook(link_id: str, direction: str, message: pb.ClassicalMessage) -> list[pb.ClassicalMessage]:
        return await placeholder[0](link_id, direction, message)

    common = dict(topology=topology, certs_dir=certs, classical_fault=hook, stage_timeout_s=2.0)
    beta = Node(NodeSettings(name="beta", seed=41, data_dir=tmp_path / "beta", **common))
    port = await beta.start()
    alpha = Node(NodeSettings(name="alpha", seed=42, data_dir=tmp_path / "alpha", peers={"beta": f"127.0.0.1:{port}"}, **common))
    a_link, b_link = alpha.links["alpha-beta"], beta.links["alpha-beta"]
    tamperer = HelloTamperer(b_link)
    placeholder.append(tamperer)
    await alpha.start()
    try:
        await until(lambda: b_link.counters.blocks_done >= 2)
        alpha.faults.set("alpha-beta", FaultConfig(kind="partition"))
        await until(lambda: a_link.state != "up" and b_link.state != "up", timeout_s=10)
        await asyncio.sleep(0.3)  # let both sessions finish cleaning up
        before = _state(b_link)
        assert before["blocks"], "the test needs blocks for the forged Hello to make Bob drop"
        tamperer.armed = True
        with capture_logs() as logs:
            alpha.faults.set("alpha-beta", NO_FAULT)
            await until(lambda: tamperer.bob_after_refusal is not None, timeout_s=30)
            # Refused, and nothing changed: pools, cursor, staged refills, pending block.
            assert tamperer.bob_after_refusal == before
            # The next, genuine Hello resynchronises the link, which grows key again.
            done = b_link.counters.blocks_done
            await until(lambda: b_link.counters.blocks_done >= done + 1)
        refusals = [e for e in logs if e["event"] == "link.hello_refused"]
        assert refusals and refusals[0]["reason"] == "authentication_failed"
        await until(lambda: a_link.auth.cursor == b_link.auth.cursor, timeout_s=10)
        await until(lambda: set(b_link.pool.block_ids) <= set(a_link.pool.block_ids))
    finally:
        await alpha.stop(0)
        await beta.stop(0)
