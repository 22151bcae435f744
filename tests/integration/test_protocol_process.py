"""The node's protocol process (qcinode.node.protocol_worker.ProcessRunner): real child processes.

Checked: a link run in a protocol process makes the keys and reserves of the
same link run in place; a step that raises comes back as its own exception
class; when the process dies, the steps waiting for it fail with
ProtocolRunnerLost and the next session starts a new process; closing the
runner ends the process.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from qcinode.core.authentication import AuthKeyReserve
from qcinode.core.pair import pump
from qcinode.core.pipeline import AliceLink, BlockAccepted, BobLink, LinkProtocolConfig
from qcinode.errors import RemoteProtocolError
from qcinode.node.protocol_worker import PROTOCOL_NICE, ProcessRunner, ProtocolRunnerLost, RemoteLink, SessionSpec, session_rng
from qcinode.transport.pb import link_pb2 as pb
from tests.support.remote_pair import open_pair, pump_remote
from tests.unit.test_pipeline import BOOTSTRAP, config, frame_slots_for


@pytest.fixture
def runner() -> Iterator[ProcessRunner]:
    # Spawned: the test process runs gRPC's threads, which a fork would copy half-alive.
    made = ProcessRunner("test", fork=False)
    yield made
    made.close()


def _spec(cfg: LinkProtocolConfig) -> SessionSpec:
    """Alice's session with seeded generators."""
    return SessionSpec(True, cfg, np.random.default_rng(1), np.random.default_rng(2), 0)


def _gone(pid: int, timeout_s: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


def test_a_link_run_in_the_protocol_process_makes_the_keys_of_one_run_in_place(runner: ProcessRunner) -> None:
    cfg = config(block_bits=20_000)
    slots = frame_slots_for(cfg)
    # A process gets each session's generators drawn from the node's (session_rng): so does this twin.
    gens = [session_rng(np.random.default_rng(s)) for s in np.random.SeedSequence(12).spawn(4)]
    alice = AliceLink(cfg, AuthKeyReserve(BOOTSTRAP), gens[0], gens[2])
    bob = BobLink(cfg, AuthKeyReserve(BOOTSTRAP), gens[1], gens[3])
    in_place = pump(alice, bob, frame_slots=slots, blocks=2)

    async def remote() -> tuple[list[tuple[str, bytes]], list[tuple[str, bytes]], AuthKeyReserve, AuthKeyReserve, type[Exception]]:
        pair = await pump_remote(await open_pair(runner, cfg, BOOTSTRAP, seed=12), frame_slots=slots, blocks=2)
        keys = [(e.block_id, e.key) for e in pair.alice_events if isinstance(e, BlockAccepted)]
        bob_keys = [(e.block_id, e.key) for e in pair.bob_events if isinstance(e, BlockAccepted)]
        # A message Alice does not take comes back as the protocol's own error.
        stray = pb.ClassicalMessage(confirm=pb.Confirm(block_seq=9))
        try:
            await pair.alice.receive(stray)
        except RemoteProtocolError as exc:
            error: type[Exception] = type(exc)
        runner.close()  # on the loop its socket was opened on
        return keys, bob_keys, pair.alice_reserve, pair.bob_reserve, error

    keys, bob_keys, a_res, b_res, error = asyncio.run(remote())
    expected = [(e.block_id, e.key) for e in in_place.alice_events if isinstance(e, BlockAccepted)]
    assert len(expected) == 2 and keys == expected == bob_keys
    assert a_res.to_state() == alice.auth.to_state() and b_res.to_state() == bob.auth.to_state()
    assert error is RemoteProtocolError
    assert runner.method == "spawn" and runner.starts == 1


def test_sessions_that_start_together_share_one_connection_and_keep_their_answers_apart(runner: ProcessRunner) -> None:
    """Several links' first requests come before the loop is connected to the process: they wait, in order, for one connection."""
    cfg = config(block_bits=20_000)
    slots = frame_slots_for(cfg)

    def twin(seed: int) -> list[tuple[str, bytes]]:
        gens = [session_rng(np.random.default_rng(s)) for s in np.random.SeedSequence(seed).spawn(4)]
        alice = AliceLink(cfg, AuthKeyReserve(BOOTSTRAP), gens[0], gens[2])
        bob = BobLink(cfg, AuthKeyReserve(BOOTSTRAP), gens[1], gens[3])
        return [(e.block_id, e.key) for e in pump(alice, bob, frame_slots=slots, blocks=1).alice_events if isinstance(e, BlockAccepted)]

    async def together() -> list[list[tuple[str, bytes]]]:
        pairs = await asyncio.gather(*(open_pair(runner, cfg, BOOTSTRAP, seed=seed) for seed in (21, 22, 23)))
        done = await asyncio.gather(*(pump_remote(pair, frame_slots=slots, blocks=1) for pair in pairs))
        runner.close()
        return [[(e.block_id, e.key) for e in pair.bob_events if isinstance(e, BlockAccepted)] for pair in done]

    assert asyncio.run(together()) == [twin(21), twin(22), twin(23)]


def test_a_dead_protocol_process_fails_its_steps_and_the_next_session_gets_a_new_one(runner: ProcessRunner) -> None:
    cfg = config(block_bits=20_000)

    async def scenario() -> tuple[str, int]:
        pair = await open_pair(runner, cfg, BOOTSTRAP, seed=3)
        first = runner.pid
        assert first is not None
        os.kill(first, signal.SIGKILL)
        with pytest.raises(ProtocolRunnerLost, match="protocol process of test ended"):
            await pair.alice.emit_frame(frame_slots_for(cfg), None, False, False)
        assert pair.bob.pending_block_seq is None  # nothing pending survives the process
        fresh = await RemoteLink.open(runner, _spec(cfg), AuthKeyReserve(BOOTSTRAP))
        frame_id, slots, _ = await fresh.emit_frame(1000, None, False, False)
        assert (frame_id, slots) == (0, 1000)
        lost, starts = str(runner.lost), runner.starts
        runner.close()
        return lost, starts

    lost, starts = asyncio.run(scenario())
    assert lost == "None" and starts == 2


def test_closing_the_runner_ends_its_process() -> None:
    runner = ProcessRunner("test", fork=False)

    async def touch() -> None:
        await RemoteLink.open(runner, _spec(config()), AuthKeyReserve(BOOTSTRAP))
        assert runner.pid is not None
        pids.append(runner.pid)
        runner.close()

    pids: list[int] = []
    asyncio.run(touch())
    assert _gone(pids[0])


@pytest.mark.parametrize("choice", ["idle", "nice"])
def test_the_protocol_process_is_scheduled_behind_the_loops(choice: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QCINODE_PROTOCOL_SCHED", choice)
    runner = ProcessRunner("test", fork=False)

    async def scheduling() -> tuple[int, int, int, int, str]:
        await RemoteLink.open(runner, _spec(config()), AuthKeyReserve(BOOTSTRAP))  # answered: the process has set its scheduling
        pid = runner.pid
        assert pid is not None
        try:
            group = Path(f"/proc/{pid}/autogroup").read_text() if Path(f"/proc/{pid}/autogroup").exists() else ""
            return pid, os.sched_getscheduler(pid), os.getpriority(os.PRIO_PROCESS, pid), os.getsid(pid), group
        finally:
            runner.close()

    pid, policy, nice, session, group = asyncio.run(scheduling())
    grouped = Path("/proc/sys/kernel/sched_autogroup_enabled").read_text().strip() == "1"
    if grouped and choice == "idle":
        assert policy == os.SCHED_IDLE and session == pid  # a session of its own, preempted by any loop that wakes
        # ... whose group is niced: it weighs a tenth of a loop's session, so a
        # loop's long callback is not time-sliced with it (sched(7), autogroup).
        assert group.split()[-1] == str(PROTOCOL_NICE), group
    else:
        assert policy == os.SCHED_OTHER and nice >= 10 and session == os.getsid(0)


def test_an_ldpc_link_whose_decodes_the_node_runs_makes_the_keys_of_one_run_in_place(runner: ProcessRunner) -> None:
    # Bob's session hands its LDPC decodes to the node, as a node's Bob does: each job carries a frame's
    # log-likelihoods (128 KiB of float64), which cross from the process as arrays, and come back decoded.
    import dataclasses

    from qcinode.core.ldpc_reconciliation import decode_frame
    cfg = dataclasses.replace(config(block_bits=60_000), error_correction="ldpc", ldpc_profile="fast")
    slots = frame_slots_for(cfg)
    gens = [session_rng(np.random.default_rng(s)) for s in np.random.SeedSequence(4).spawn(4)]  # as the process draws them
    alice = AliceLink(cfg, AuthKeyReserve(BOOTSTRAP), gens[0], gens[2])
    bob = BobLink(cfg, AuthKeyReserve(BOOTSTRAP), gens[1], gens[3])
    in_place = pump(alice, bob, frame_slots=slots, blocks=1)
    expected = [(e.block_id, e.key) for e in in_place.alice_events if isinstance(e, BlockAccepted)]

    async def _until_one_block(a: RemoteLink, b: RemoteLink) -> tuple[list[tuple[str, bytes]], list[tuple[str, bytes]], int]:
        a_events: list[object] = []
        b_events: list[object] = []
        decodes = 0
        while not a_events:
            frame_id, _, payload = await a.emit_frame(slots, None, False, False)
            pending = [("B>A", out) for out in await b.receive_frame(frame_id, payload, None)]
            while pending:
                direction, envelope = pending.pop(0)
                if direction == "B>A":
                    pending += [("A>B", out) for out in await a.receive(envelope)]
                    continue
                pending += [("B>A", out) for out in await b.receive(envelope)]
                jobs = b.take_decode_jobs()
                if jobs:
                    decodes += len(jobs)
                    pending += [("B>A", out) for out in await b.decoded([decode_frame(*job) for job in jobs])]
            a_events += a.take_events()
            b_events += b.take_events()
        keys = [(e.block_id, e.key) for e in a_events if isinstance(e, BlockAccepted)]
        return keys, [(e.block_id, e.key) for e in b_events if isinstance(e, BlockAccepted)], decodes

    async def remote() -> tuple[list[tuple[str, bytes]], list[tuple[str, bytes]], int]:
        seeds = np.random.SeedSequence(4).spawn(4)
        a_res, b_res = AuthKeyReserve(BOOTSTRAP), AuthKeyReserve(BOOTSTRAP)
        a = await RemoteLink.open(runner, SessionSpec(True, cfg, np.random.default_rng(seeds[0]), np.random.default_rng(seeds[2]), 0), a_res)
        b = await RemoteLink.open(
            runner, SessionSpec(False, cfg, np.random.default_rng(seeds[1]), np.random.default_rng(seeds[3]), 0, defer_decoding=True), b_res
        )
        try:
            return await _until_one_block(a, b)
        finally:
            runner.close()  # on the loop its socket was opened on

    keys, bob_keys, decodes = asyncio.run(remote())
    assert decodes > 0
    assert len(expected) == 1 and keys == expected == bob_keys
