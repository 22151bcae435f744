"""Structured concurrency for the drivers: no task outlives the code that started it.

Theory of operation:
    1. A node is one :class:`asyncio.TaskGroup` (:meth:`qcinode.node.node.Node.run`):
       link workers, routing, the contact followers and the KME's timers are its
       children; stopping the node cancels them and waits for every one.
    2. Inside a link session, some work runs beside the session's own loop:
       draining the quantum stream's acknowledgements, pumping a gRPC request
       stream into an inbox, watching for a partition. :class:`Companions`
       starts such tasks and, however the block is left, cancels them and
       waits for them before it is: none outlives its session, none is
       forgotten. Unlike a TaskGroup it neither wraps the block's own
       exception in an ExceptionGroup (the link workers sort errors by type)
       nor depends on the task that entered it (a gRPC servicer is an async
       generator, which Python may finalise from another task). A companion
       must not fail; if one does anyway, that is logged when the block ends.
    3. :func:`cancelled_when` runs a block until an event is set (a partition
       cuts the link), then cancels it and leaves with the caller's error
       instead of :class:`asyncio.CancelledError`. A cancellation from outside
       (the node stopping) still leaves as CancelledError: none is swallowed.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Coroutine
from types import TracebackType
from typing import Any, Self

import structlog

__all__ = ["Companions", "cancelled_when"]

log = structlog.get_logger(__name__)


class Companions:
    """Tasks that live exactly as long as an ``async with`` block (rule 2 of the module docstring)."""

    def __init__(self) -> None:
        self._tasks: list[asyncio.Task[Any]] = []

    def start(self, coro: Coroutine[Any, Any, Any], *, name: str) -> asyncio.Task[Any]:
        """Runs ``coro`` beside the block, until the block ends."""
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.append(task)
        return task

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        if tasks:
            # asyncio.wait raises nothing of the tasks'; if *we* are cancelled meanwhile, that propagates.
            await asyncio.wait(tasks)
        for task in tasks:
            if not task.cancelled() and task.exception() is not None:
                log.error("task.crashed", task=task.get_name(), exc_info=task.exception())


@contextlib.asynccontextmanager
async def cancelled_when(event: asyncio.Event, error: Callable[[], BaseException]) -> AsyncIterator[None]:
    """Runs the block until ``event`` is set; then cancels it and raises ``error()`` (rule 3).

    Args:
        event: Set when the block must stop (it may be set already).
        error: What the block leaves with when the event stopped it.
    """
    task = asyncio.current_task()
    assert task is not None, "cancelled_when runs inside a task"
    fired = False

    async def watch() -> None:
        nonlocal fired
        await event.wait()
        fired = True
        task.cancel()

    async with Companions() as companions:
        companions.start(watch(), name="cancelled_when")
        try:
            yield
        except asyncio.CancelledError:
            # Ours only if the watcher fired and nobody else asked to cancel this task too.
            if fired and task.uncancel() == 0:
                raise error() from None
            raise
