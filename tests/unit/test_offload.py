"""Link work off the event loop: saves in a storage thread, protocol steps in a runner (qcinode.node.offload).

The rules checked: a caller of ``persist_async`` returns only once its state
(or a newer one) is on disk; saves asked for during a write share the next
write; an older snapshot is never written over a newer one; a cancelled
caller still waits for its thread's work to end. (Protocol steps themselves: tests/unit/test_protocol_worker.py.)
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import gc
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from qcinode.errors import StorageFailure
from qcinode.keys.linkstore import LinkSave, LinkStore
from qcinode.node.offload import SWITCH_INTERVAL_S, AsyncGroupCommit, GroupCommit, Offload
from qcinode.node.protocol_worker import InlineRunner, ThreadRunner
from qcinode.node.runtime import LinkRuntime, finish_in_thread, persist_together
from qcinode.topology import parse_topology

_TOPOLOGY = """
name: pair
nodes: [{name: alpha}, {name: beta}]
links: [{between: [alpha, beta], length_km: 10}]
"""


def _random_bytes(seed: int, n: int) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


class _GatedStore:
    """A LinkStore whose saves are counted and can be held at a gate (to make writes overlap on purpose)."""

    def __init__(self, store: LinkStore) -> None:
        self.store = store
        self.saved: list[int] = []  # the pool's available bytes in each write, in write order
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.fail_next = False

    def save_many(self, saves: Sequence[LinkSave]) -> None:
        self.entered.set()
        assert self.gate.wait(10)
        if self.fail_next:
            self.fail_next = False
            raise StorageFailure("disk full", path=Path("x"), reason="database or disk is full")
        self.store.save_many(saves)
        self.saved.extend(len(save.state["pool"]["blocks"]) for save in saves)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)


@pytest.fixture
def storage() -> Iterator[concurrent.futures.ThreadPoolExecutor]:
    executor = concurrent.futures.ThreadPoolExecutor(1)
    yield executor
    executor.shutdown(wait=True)


def _runtime(tmp_path: Path) -> tuple[LinkRuntime, _GatedStore]:
    link = parse_topology(_TOPOLOGY).links_of("alpha")[0]
    store = LinkStore(tmp_path, "alpha")
    rt = LinkRuntime(link, "alpha", _random_bytes(9, 32 * 16), store)
    gated = _GatedStore(store)
    rt.store = gated  # type: ignore[assignment]
    return rt, gated


def _reloaded_blocks(tmp_path: Path, link_id: str) -> int:
    rt = LinkRuntime(parse_topology(_TOPOLOGY).links_of("alpha")[0], "alpha", _random_bytes(9, 32 * 16), LinkStore(tmp_path, "alpha"))
    assert rt.link_id == link_id
    return len(rt.pool.block_ids)


def test_saves_asked_for_during_a_write_share_the_next_one(tmp_path: Path, storage: concurrent.futures.Executor) -> None:
    rt, gated = _runtime(tmp_path)

    async def scenario() -> None:
        gated.gate.clear()
        rt.pool.add_block(f"{rt.link_id}/0", _random_bytes(1, 256))
        first = asyncio.ensure_future(rt.persist_async(storage))
        await asyncio.to_thread(gated.entered.wait, 10)  # the first write is running, held at the gate
        later = []
        for seq in range(1, 6):
            rt.pool.add_block(f"{rt.link_id}/{seq}", _random_bytes(seq + 1, 256))
            later.append(asyncio.ensure_future(rt.persist_async(storage)))
        await asyncio.sleep(0.05)
        assert not any(task.done() for task in [first, *later])  # nobody returns before its state is on disk
        gated.gate.set()
        await asyncio.gather(first, *later)

    asyncio.run(scenario())
    # One write for the first save, one for the five that waited: the newest of them.
    assert gated.saved == [1, 6]
    assert _reloaded_blocks(tmp_path, rt.link_id) == 6


def test_an_older_snapshot_is_never_written_over_a_newer_one(tmp_path: Path) -> None:
    rt, gated = _runtime(tmp_path)
    rt.pool.add_block(f"{rt.link_id}/0", _random_bytes(1, 256))
    old = rt._snapshot()
    rt.pool.add_block(f"{rt.link_id}/1", _random_bytes(2, 256))
    rt.persist()  # writes the newer state
    rt._write_through(old)  # a writer that comes late with the older snapshot: nothing to do
    assert gated.saved == [2]
    assert _reloaded_blocks(tmp_path, rt.link_id) == 2


def test_a_failed_write_raises_to_its_callers_and_the_next_save_retries(tmp_path: Path, storage: concurrent.futures.Executor) -> None:
    rt, gated = _runtime(tmp_path)
    rt.pool.add_block(f"{rt.link_id}/0", _random_bytes(1, 256))
    gated.fail_next = True

    async def save() -> None:
        await rt.persist_async(storage)

    with pytest.raises(StorageFailure):
        asyncio.run(save())
    assert rt.storage_failure == "database or disk is full"
    asyncio.run(save())
    assert rt.storage_failure is None and gated.saved == [1]


async def _cancelled_while_it_runs(work: Callable[[], Any]) -> None:
    """Runs ``work`` in a thread for a caller (``finish_in_thread``) that is cancelled 20 ms in; returns when the
    caller has ended, cancelled."""
    loop = asyncio.get_running_loop()
    with concurrent.futures.ThreadPoolExecutor(1) as executor:
        task = asyncio.ensure_future(finish_in_thread(loop.run_in_executor(executor, work)))
        await asyncio.sleep(0.02)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


def test_a_cancelled_caller_waits_for_its_thread_to_finish() -> None:
    finished = threading.Event()

    def work() -> str:
        time.sleep(0.2)
        finished.set()
        return "done"

    async def scenario() -> bool:
        await _cancelled_while_it_runs(work)
        return finished.is_set()

    assert asyncio.run(scenario()) is True


def test_work_that_fails_after_its_caller_was_cancelled_is_not_reported_as_unretrieved() -> None:
    # A link's step cancelled as the node stops, whose protocol process then ends: the step's failure is the
    # expected end of it, not an "exception was never retrieved" in the node's log.
    reported: list[dict[str, object]] = []

    def work() -> str:
        time.sleep(0.2)
        raise RuntimeError("protocol process ended")

    async def scenario() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda _loop, context: reported.append(context))
        await _cancelled_while_it_runs(work)
        gc.collect()
        await asyncio.sleep(0)

    asyncio.run(scenario())
    gc.collect()
    assert [context.get("message") for context in reported] == []


def test_a_node_in_a_test_process_steps_in_a_thread_and_sets_the_switch_interval() -> None:
    interval = sys.getswitchinterval()
    offload = Offload.threads("alpha")
    try:
        assert sys.getswitchinterval() == pytest.approx(SWITCH_INTERVAL_S)
        assert isinstance(offload.runner, ThreadRunner) and offload.storage is not None
        inline = Offload.inline()
        assert isinstance(inline.runner, InlineRunner) and inline.storage is None
    finally:
        offload.close()
        sys.setswitchinterval(interval)


# -- several links in one transaction; group commit ------------------------------------------


_THREE = """
name: trio
nodes: [{name: alpha}, {name: beta}, {name: gamma}]
links: [{between: [alpha, beta], length_km: 10}, {between: [alpha, gamma], length_km: 10}]
"""


def test_links_persisted_together_share_one_transaction(tmp_path: Path, storage: concurrent.futures.Executor) -> None:
    store = LinkStore(tmp_path, "alpha")
    runtimes = [LinkRuntime(link, "alpha", _random_bytes(9, 32 * 16), store) for link in parse_topology(_THREE).links_of("alpha")]
    for i, rt in enumerate(runtimes):
        rt.pool.add_block(f"{rt.link_id}/0", _random_bytes(i, 256))
    conn = store._conn
    assert conn is not None
    commits: list[str] = []
    conn.set_trace_callback(lambda sql: commits.append(sql) if sql.strip().upper() == "COMMIT" else None)
    asyncio.run(persist_together(runtimes, storage))
    assert len(commits) == 1
    asyncio.run(persist_together(runtimes, storage))
    assert len(commits) == 2, "a new save writes the state again"
    runtimes[0].pool.add_block(f"{runtimes[0].link_id}/1", _random_bytes(5, 256))
    runtimes[0].persist()
    again = [LinkRuntime(link, "alpha", _random_bytes(9, 32 * 16), store) for link in parse_topology(_THREE).links_of("alpha")]
    assert [len(rt.pool.block_ids) for rt in again] == [2, 1]
    assert all(rt.storage_failure is None for rt in runtimes)


def _gated_writer() -> tuple[list[list[int]], threading.Event, threading.Event, Any]:
    writes: list[list[int]] = []
    gate, entered = threading.Event(), threading.Event()

    def write(items: list[int]) -> list[int]:
        entered.set()
        assert gate.wait(10)
        writes.append(list(items))
        return [10 * item for item in items]

    return writes, gate, entered, write


def test_group_commit_writes_what_was_asked_for_meanwhile_in_one_write(storage: concurrent.futures.Executor) -> None:
    writes, gate, entered, write = _gated_writer()
    commit: GroupCommit[int, int] = GroupCommit(write, storage)

    async def scenario() -> list[list[int]]:
        first = asyncio.ensure_future(commit.submit([1]))
        await asyncio.to_thread(entered.wait, 10)  # the first write is running, held at the gate
        later = [asyncio.ensure_future(commit.submit([2 + i, 20 + i])) for i in range(4)]
        await asyncio.sleep(0.05)
        assert not any(task.done() for task in [first, *later]), "nobody returns before its items are written"
        gate.set()
        return await asyncio.gather(first, *later)

    outcomes = asyncio.run(scenario())
    assert outcomes == [[10], [20, 200], [30, 210], [40, 220], [50, 230]], "each caller gets its own items' outcomes"
    assert writes == [[1], [2, 20, 3, 21, 4, 22, 5, 23]] and (commit.writes, commit.items) == (2, 9)


def test_group_commit_a_cancelled_writer_finishes_its_write_and_the_others_still_get_theirs(storage: concurrent.futures.Executor) -> None:
    writes, gate, entered, write = _gated_writer()
    commit: GroupCommit[int, int] = GroupCommit(write, storage)

    async def scenario() -> list[int]:
        first = asyncio.ensure_future(commit.submit([1]))
        await asyncio.to_thread(entered.wait, 10)
        waiter = asyncio.ensure_future(commit.submit([2]))
        await asyncio.sleep(0.01)
        first.cancel()
        await asyncio.sleep(0.05)
        assert not first.done(), "a cancelled writer waits for its write to end"
        gate.set()
        with pytest.raises(asyncio.CancelledError):
            await first
        return await waiter

    assert asyncio.run(scenario()) == [20]
    assert writes == [[1], [2]], "the cancelled writer's items were written; the waiter became the next writer"


def test_group_commit_hands_a_failed_write_to_every_caller_of_its_batch() -> None:
    def write(items: list[int]) -> list[int]:
        raise StorageFailure("disk full", path=Path("x"), reason="database or disk is full")

    commit: GroupCommit[int, int] = GroupCommit(write, threaded=False)
    with pytest.raises(StorageFailure, match="disk full"):
        asyncio.run(commit.submit([1, 2]))


def _gated_async_writer() -> tuple[list[list[int]], Callable[[list[int]], Awaitable[list[int]]], Callable[[], asyncio.Event]]:
    """An async write that records its batches and, while the gate is shut, waits at it; outcome 10 x item."""
    writes: list[list[int]] = []
    gates: list[asyncio.Event] = []

    def gate() -> asyncio.Event:
        if not gates:
            gates.append(asyncio.Event())
        return gates[0]

    async def write(items: list[int]) -> list[int]:
        writes.append(list(items))
        await gate().wait()
        return [10 * i for i in items]

    return writes, write, gate


def test_async_group_commit_shares_one_write_among_what_was_asked_for_meanwhile() -> None:
    writes, write, gate = _gated_async_writer()
    commit: AsyncGroupCommit[int, int] = AsyncGroupCommit(write)

    async def scenario() -> list[list[int]]:
        first = asyncio.ensure_future(commit.submit([1]))
        await asyncio.sleep(0.01)  # the first write runs, held at the gate
        later = [asyncio.ensure_future(commit.submit([2 + i])) for i in range(3)]
        await asyncio.sleep(0.01)
        assert writes == [[1]] and not any(task.done() for task in [first, *later]), "nobody returns before its write ends"
        gate().set()
        return await asyncio.gather(first, *later)

    assert asyncio.run(scenario()) == [[10], [20], [30], [40]]
    assert writes == [[1], [2, 3, 4]] and (commit.writes, commit.items) == (2, 4)


def test_async_group_commit_a_cancelled_writer_finishes_its_write_and_hands_the_queue_on() -> None:
    writes, write, gate = _gated_async_writer()
    commit: AsyncGroupCommit[int, int] = AsyncGroupCommit(write)

    async def scenario() -> list[int]:
        first = asyncio.ensure_future(commit.submit([1]))
        await asyncio.sleep(0.01)
        waiter = asyncio.ensure_future(commit.submit([2]))
        await asyncio.sleep(0.01)
        first.cancel()
        await asyncio.sleep(0.02)
        assert not first.done(), "a cancelled writer waits for its write to end"
        gate().set()
        with pytest.raises(asyncio.CancelledError):
            await first
        return await waiter

    assert asyncio.run(scenario()) == [20]
    assert writes == [[1], [2]]


def test_async_group_commit_hands_a_failed_write_to_every_caller_of_its_batch() -> None:
    async def write(items: list[int]) -> list[int]:
        raise StorageFailure("disk full", path=Path("x"), reason="database or disk is full")

    commit: AsyncGroupCommit[int, int] = AsyncGroupCommit(write)

    async def scenario() -> list[BaseException | list[int]]:
        return await asyncio.gather(commit.submit([1]), commit.submit([2]), return_exceptions=True)

    outcomes = asyncio.run(scenario())
    assert all(isinstance(o, StorageFailure) for o in outcomes) and commit.writes == 2
