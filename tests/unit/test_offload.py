"""Link work off the event loop: saves in a storage thread, protocol steps in a protocol thread (qcinode.node.offload).

The rules checked: a caller of ``persist_async`` returns only once its state
(or a newer one) is on disk; saves asked for during a write share the next
write; an older snapshot is never written over a newer one; a snapshot taken
while a protocol step runs holds the MAC-key reserve as it was before the
step; a cancelled caller still waits for its thread's work to end.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from qcinode.errors import StorageFailure
from qcinode.keys.linkstore import LinkStore
from qcinode.node.offload import SWITCH_INTERVAL_S, Offload
from qcinode.node.runtime import LinkRuntime, finish_in_thread
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

    def save(self, link_id: str, state: dict[str, Any], **kwargs: Any) -> None:
        self.entered.set()
        assert self.gate.wait(10)
        if self.fail_next:
            self.fail_next = False
            raise StorageFailure("disk full", path=Path("x"), reason="database or disk is full")
        self.store.save(link_id, state, **kwargs)
        self.saved.append(len(state["pool"]["blocks"]))

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


def test_a_save_during_a_protocol_step_takes_the_mac_keys_as_before_the_step(tmp_path: Path) -> None:
    rt, _ = _runtime(tmp_path)
    before = rt.auth.to_state()

    async def scenario() -> tuple[dict[str, Any], bool]:
        async with rt.stepping():
            rt.auth.take(2)  # what a step in the protocol thread may be doing meanwhile
            during = rt._snapshot().state["auth"]
            held = rt.step_lock.locked()  # a Hello exchange waits meanwhile
        return during, held

    during, held = asyncio.run(scenario())
    after = rt._snapshot().state["auth"]
    assert during == before and held
    assert after["cursor"] == before["cursor"] + 2 and not rt.step_lock.locked()


def test_a_cancelled_caller_waits_for_its_thread_to_finish() -> None:
    finished = threading.Event()

    def work() -> str:
        time.sleep(0.2)
        finished.set()
        return "done"

    async def scenario() -> bool:
        loop = asyncio.get_running_loop()
        with concurrent.futures.ThreadPoolExecutor(1) as executor:
            task = asyncio.ensure_future(finish_in_thread(loop.run_in_executor(executor, work)))
            await asyncio.sleep(0.02)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            return finished.is_set()

    assert asyncio.run(scenario()) is True


def test_protocol_steps_run_in_the_protocol_thread_or_inline() -> None:
    interval = sys.getswitchinterval()
    offload = Offload.threads("alpha")
    try:
        assert sys.getswitchinterval() == pytest.approx(SWITCH_INTERVAL_S)

        async def where(runner: Offload) -> int:
            return await runner.step(threading.get_ident)

        assert asyncio.run(where(offload)) != threading.get_ident()
        assert asyncio.run(where(Offload.inline())) == threading.get_ident()
    finally:
        offload.close()
        sys.setswitchinterval(interval)
