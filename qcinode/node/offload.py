"""Where a node's CPU-heavy and blocking work runs, so that its event loop stays free.

Theory of operation:
    * **The event loop answers.** The ETSI 014 KME, relay hops and routing
      adverts run on the node's one event loop and must answer within
      milliseconds. A link at full speed computes for tens to hundreds of
      milliseconds per protocol message (sifting, estimation, Cascade,
      privacy amplification) and writes its state with an fsync'ed SQLite
      transaction; run on the loop, that work held every request behind it.
    * **One protocol thread per node** runs the links' pure protocol steps
      (:class:`~qcinode.core.pipeline.AliceLink`,
      :class:`~qcinode.core.pipeline.BobLink`: ``emit_frame``,
      ``receive_frame``, ``receive``), one step at a time, in the order the
      link sessions ask. One thread, not one per link: the steps hold the GIL
      most of the time, and each more thread would take another share of it
      from the loop. Its OS scheduling priority is lowered (nice
      :data:`PROTOCOL_NICE`), so that when the machine is saturated the
      event-loop threads of every node on it run first when they wake; the
      protocol threads get all the CPU the loops leave.
    * **GIL hand-over.** A thread that waits for the GIL asks for it after
      :data:`SWITCH_INTERVAL_S` (CPython's default is 5 ms); the node sets
      0.2 ms (measured: 5-hop enc_keys p50 fell from 270 to 215 ms against 1 ms),
      so the loop waits at most about that per wake-up while a step computes.
    * **One storage thread per node** writes link states
      (:meth:`~qcinode.node.runtime.LinkRuntime.persist_async`): the state
      is snapshotted on the loop, written there, and the caller goes on only
      once it is on disk (persistence order is unchanged: a tag or Commit
      still leaves only after the state it depends on is saved).
    * **A step ends before its caller goes on.** A session cancelled while a
      step runs (a partition, the node stopping) waits for the step to return
      before its clean-up touches the same objects
      (:func:`~qcinode.node.runtime.finish_in_thread`); the step's outcome is
      dropped.
    * Without threads (:meth:`Offload.inline`, what link workers built by
      tests get by default) every step runs inline on the loop, as before.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import sys
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from .runtime import finish_in_thread

__all__ = ["PROTOCOL_NICE", "SWITCH_INTERVAL_S", "Offload"]

T = TypeVar("T")

#: How much the protocol thread's scheduling priority is lowered (Linux ``nice`` units).
PROTOCOL_NICE = 10
#: The interpreter's GIL switch interval in a node process (seconds).
SWITCH_INTERVAL_S = 0.0002


def _lower_priority() -> None:
    """Runs in the protocol thread: lowers this thread's priority (Linux: per-thread nice; elsewhere nothing)."""
    with contextlib.suppress(AttributeError, OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), PROTOCOL_NICE)


class Offload:
    """A node's protocol thread and storage thread (the module docstring)."""

    def __init__(self, protocol: concurrent.futures.Executor | None, storage: concurrent.futures.Executor | None) -> None:
        self.protocol = protocol
        self.storage = storage

    @classmethod
    def threads(cls, name: str) -> Offload:
        """The two threads of node ``name``; also sets this process's GIL switch interval."""
        sys.setswitchinterval(SWITCH_INTERVAL_S)
        protocol = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"{name}-protocol", initializer=_lower_priority)
        storage = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"{name}-storage")
        return cls(protocol, storage)

    @classmethod
    def inline(cls) -> Offload:
        """Everything on the caller's thread (link workers built without a node)."""
        return cls(None, None)

    async def step(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` in the protocol thread; if cancelled, returns only after it ended (module docstring)."""
        if self.protocol is None:
            return fn(*args)
        future = asyncio.get_running_loop().run_in_executor(self.protocol, fn, *args)
        result: T = await finish_in_thread(future)
        return result

    def close(self) -> None:
        """Lets the threads finish what they run and end (the node's last saves are synchronous)."""
        for executor in (self.protocol, self.storage):
            if executor is not None:
                executor.shutdown(wait=False, cancel_futures=True)
