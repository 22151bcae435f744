"""Where a node's CPU-heavy and blocking work runs, so that its event loop stays free.

Theory of operation:
    * **The event loop answers.** The ETSI 014 KME, relay hops and routing
      adverts run on the node's one event loop and must answer within
      milliseconds. A link at full speed computes for tens to hundreds of
      milliseconds per protocol message (sifting, estimation, Cascade,
      privacy amplification) and writes its state with an fsync'ed SQLite
      transaction; run on the loop, that work held every request behind it.
    * **One protocol runner per node** runs the links' pure protocol steps
      (:mod:`qcinode.node.protocol_worker`): in a running node a process of
      its own, niced, so that the loop never waits for the interpreter lock
      a step holds; in nodes that tests run inside their own process, one
      niced thread (with the GIL hand-over below).
    * **GIL hand-over** (protocol thread only). A thread that waits for the
      GIL asks for it after :data:`SWITCH_INTERVAL_S` (CPython's default is
      5 ms); such a node sets 0.2 ms (measured: 5-hop enc_keys p50 fell from
      270 to 215 ms against 1 ms), so the loop waits at most about that per
      wake-up while a step computes.
    * **One storage thread per node** writes link states
      (:meth:`~qcinode.node.runtime.LinkRuntime.persist_async`): the state
      is snapshotted on the loop, written there, and the caller goes on only
      once it is on disk (persistence order is unchanged: a tag or Commit
      still leaves only after the state it depends on is saved).
    * **Group commit** (:class:`GroupCommit`): writes that callers on the
      loop ask for while an earlier one runs wait for it, then go to disk
      together in the next one (one transaction, one fsync): concurrent
      relays' keys at a destination share a write. Each caller gets its own
      items' outcomes, and returns only once they are on disk.
      :class:`AsyncGroupCommit` does the same for a write that is a
      coroutine (a relay's link-ledger save: the links' snapshots are taken
      on the loop, the transaction runs in the storage thread), so that
      concurrent relays through the same links share one snapshot and one
      transaction instead of taking one each.
    * Without threads (:meth:`Offload.inline`, what link workers built by
      tests get by default) every step and write runs inline on the loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Generic, TypeVar

from .protocol_worker import InlineRunner, ProcessRunner, ProtocolRunner, ThreadRunner

__all__ = ["SWITCH_INTERVAL_S", "AsyncGroupCommit", "GroupCommit", "Offload"]

T = TypeVar("T")
R = TypeVar("R")

#: The interpreter's GIL switch interval in a node process whose protocol steps run in a thread (seconds).
SWITCH_INTERVAL_S = 0.0002


class Offload:
    """A node's protocol runner and storage thread (the module docstring)."""

    def __init__(self, runner: ProtocolRunner, storage: concurrent.futures.Executor | None) -> None:
        self.runner = runner
        self.storage = storage

    @classmethod
    def process(cls, name: str) -> Offload:
        """Node ``name``'s protocol process (started now: call before gRPC or any thread starts) and storage thread."""
        return cls(ProcessRunner(name), cls._storage(name))

    @classmethod
    def threads(cls, name: str) -> Offload:
        """Node ``name``'s protocol thread and storage thread; also sets this process's GIL switch interval."""
        sys.setswitchinterval(SWITCH_INTERVAL_S)
        return cls(ThreadRunner(name), cls._storage(name))

    @classmethod
    def inline(cls) -> Offload:
        """Everything on the caller's thread (link workers built without a node)."""
        return cls(InlineRunner(), None)

    @staticmethod
    def _storage(name: str) -> concurrent.futures.Executor:
        return concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"{name}-storage")

    def close(self) -> None:
        """Ends the runner and lets the storage thread finish what it runs (the node's last saves are synchronous)."""
        self.runner.close()
        if self.storage is not None:
            self.storage.shutdown(wait=False, cancel_futures=True)


class GroupCommit(Generic[T, R]):
    """One writer at a time; what is asked for meanwhile goes to disk together in the next write.

    ``write(items) -> outcomes`` (one outcome per item, in order) runs in
    ``executor`` (None: the event loop's default executor), or on the
    caller's thread if ``threaded`` is False, one call at a time. A
    caller that finds no write running becomes the writer: it writes what is
    queued, and again while more was queued meanwhile; the others wait for
    their items' outcomes. A writer that is cancelled still waits for the
    write it started (its items are on disk or not, never half), hands the
    outcomes out, and leaves the queue to the next waiter. No task is
    created.
    """

    def __init__(
        self, write: Callable[[list[T]], list[R]], executor: concurrent.futures.Executor | None = None, *, threaded: bool = True
    ) -> None:
        self._write = write
        self._executor = executor
        self._threaded = threaded
        self._queue: list[tuple[list[T], asyncio.Future[list[R]]]] = []
        self._writing = False
        self._wake: asyncio.Event | None = None
        #: Writes done, and items written (for tests and status).
        self.writes = 0
        self.items = 0

    async def submit(self, items: Sequence[T]) -> list[R]:
        """Writes ``items`` (with whatever else is queued); their outcomes in order.

        Raises:
            Exception: Whatever ``write`` raised for the batch holding them.
        """
        mine: asyncio.Future[list[R]] = asyncio.get_running_loop().create_future()
        self._queue.append((list(items), mine))
        while not mine.done():
            if self._writing:
                if self._wake is None:
                    self._wake = asyncio.Event()
                await self._wake.wait()
                continue
            self._writing = True
            try:
                while self._queue:
                    batch, self._queue = self._queue, []
                    await self._write_batch(batch)
            finally:
                self._writing = False
                self._wake_waiters()
        return mine.result()

    async def _write_batch(self, batch: list[tuple[list[T], asyncio.Future[list[R]]]]) -> None:
        items = [item for part, _ in batch for item in part]
        if not self._threaded:
            self._resolve(batch, self._run(items))
            return
        await self._finish(batch, asyncio.get_running_loop().run_in_executor(self._executor, self._run, items))

    async def _finish(self, batch: list[tuple[list[T], asyncio.Future[list[R]]]], write: asyncio.Future[list[R] | Exception]) -> None:
        """Hands out the outcomes of ``write`` (running in a thread or a task) to ``batch``'s callers.

        If the caller that runs the write is cancelled, the write still runs
        to its end and its outcomes still go out; then the cancellation goes on.
        """
        try:
            outcome = await asyncio.shield(write)
        except asyncio.CancelledError:
            while not write.done():
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.wait([write])
            self._resolve(batch, write.result())
            raise
        self._resolve(batch, outcome)

    def _run(self, items: list[T]) -> list[R] | Exception:
        try:
            return _checked(items, self._write(items))
        except Exception as exc:  # handed to every caller of the batch
            return exc

    def _resolve(self, batch: list[tuple[list[T], asyncio.Future[list[R]]]], outcome: list[R] | Exception) -> None:
        self.writes += 1
        start = 0
        for part, future in batch:
            mine, start = slice(start, start + len(part)), start + len(part)
            self.items += len(part)
            if future.done():  # its caller was cancelled while it waited
                continue
            if isinstance(outcome, Exception):
                future.set_exception(outcome)
            else:
                future.set_result(outcome[mine])
        self._wake_waiters()

    def _wake_waiters(self) -> None:
        if self._wake is not None:
            self._wake.set()
            self._wake = None


class AsyncGroupCommit(GroupCommit[T, R]):
    """:class:`GroupCommit` whose write is a coroutine run on the event loop (it may hand work to a thread itself).

    Same rules: one write at a time, what is submitted meanwhile goes in
    the next one, each caller gets its items' outcomes. A writer that is
    cancelled still waits for the write it started (in a task of its own,
    shielded), hands the outcomes out, and re-raises.
    """

    def __init__(self, write: Callable[[list[T]], Awaitable[list[R]]]) -> None:
        super().__init__(_never, threaded=False)
        self._write_async = write

    async def _write_batch(self, batch: list[tuple[list[T], asyncio.Future[list[R]]]]) -> None:
        items = [item for part, _ in batch for item in part]
        await self._finish(batch, asyncio.ensure_future(self._run_async(items)))

    async def _run_async(self, items: list[T]) -> list[R] | Exception:
        try:
            return _checked(items, await self._write_async(items))
        except Exception as exc:  # handed to every caller of the batch
            return exc


def _checked(items: list[Any], outcomes: list[R]) -> list[R]:
    """``outcomes`` if there is one per item.

    Raises:
        RuntimeError: A write returned another number of outcomes.
    """
    if len(outcomes) != len(items):
        raise RuntimeError(f"group write returned {len(outcomes)} outcomes for {len(items)} items")
    return outcomes


def _never(items: list[Any]) -> list[Any]:
    raise AssertionError("AsyncGroupCommit writes with its coroutine")
