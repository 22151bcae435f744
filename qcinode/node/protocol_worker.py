"""Where a node's link sessions compute: a protocol process of its own, beside the event loop's.

A link at full speed computes for tens to hundreds of milliseconds per
protocol message (detection, sifting, estimation, Cascade, privacy
amplification). Run in a thread of the node's process, that work holds the
interpreter's lock (GIL) most of the time, and the event loop that serves
the KME, relays and routing waits for it: measured with a chain's links at
full speed, 5-hop relays took 5-20x their cost on an idle chain, most of it
spent waiting for a protocol thread that held the GIL while the scheduler
had preempted it. A process has its own interpreter, so the loop never waits
for it, and the kernel's ``nice`` ranks it below the loop's process.

Theory of operation:
    * **Sessions live in the runner.** Each link session's protocol object
      (:class:`~qcinode.core.pipeline.AliceLink` or
      :class:`~qcinode.core.pipeline.BobLink`) is created in the node's
      *protocol runner* and stays there: the node holds a
      :class:`RemoteLink` (a handle and a mirror of the few attributes its
      link worker reads between steps). A runner serves every link of the
      node, one step at a time, in the order asked (:class:`LinkSteps`).
    * **Steps carry bytes.** A classical message goes in as its wire form and
      the answers come back as wire forms; a pulse frame goes in and out as
      its payload (parsed and checked where it is used: a 10^6-bit block's
      frame is 2 MB on the wire, 8 MB as arrays, and parsing it costs
      milliseconds the loop does not spend); block events (with accepted keys) and LDPC decode jobs
      come back as values. The node keeps everything else: the key pool, the
      link state on disk, gRPC.
    * **The MAC-key reserve stays the node's.** A step that may take, stage
      or promote one-time MAC keys (a classical message, LDPC decode results,
      settling a pending block) takes a copy of the link's reserve with it and
      brings the changed reserve back; the node adopts it on the event loop
      in the same instant as it learns the step's outcome, and
      :attr:`~qcinode.node.runtime.LinkRuntime.step_lock` keeps those steps
      of one link, and a reconnection Hello (which changes the reserve on the
      loop), one at a time. So the reserve is changed in one place at a time,
      and a save never sees half a step. A frame step (Alice's emission,
      Bob's detection) touches no MAC key; the runner checks that.
    * **A step's outcome is never lost.** If the session that asked is
      cancelled meanwhile (a partition, the node stopping), the step still
      ends, its reserve is adopted and its block events are kept for the
      session's clean-up (as a step run in place would have left them in
      the protocol object), and only its outgoing messages are dropped.
    * **Clean-up is a message.** A broken session's ``abandon`` is posted
      (no await: clean-up paths may be cancelled) and its block events are
      recorded when the answer comes; a session whose block waits for
      Alice's Commit stays in the runner as the link's pending block, to be
      settled at the next Hello.
    * **Working ahead.** A protocol process that has answered every request
      it was sent does, while it waits, the computations its sessions' next
      messages would start with (:meth:`LinkSteps.work_ahead`: privacy
      amplification's hash, which each end of a link owes only once its
      Confirm or Verdict is out), one at a time, looking for a request
      between them. Both ends of a link then hash at once, and the block
      waits for one hash, not for two in turn. The other runners leave that
      work to the step that needs it; the keys are the same.
    * **Physics beside.** A pulse frame's physics (Alice's emission and
      Bob's measurement, ~23 ms each for a quarter of a 10^6-bit block) runs
      on a thread of the protocol process (:class:`_BesideThread`) while its
      main thread answers the requests that come meanwhile, most of them the
      open block's Cascade messages, which would otherwise wait behind it;
      the frame's answer goes out when the physics ends (the node matches
      answers to requests by their IDs). Only the physics (and the encoding
      of Alice's frame) runs on that thread, with generators of its own (the
      pipeline's rules 1a and 1b); everything that touches a session runs on
      the main thread. The other runners draw and measure in the step.
    * **Runners.** :class:`ProcessRunner` (a running node): a child process
      forked before the node starts gRPC or any thread (where the process is
      still one thread; otherwise a fresh interpreter is spawned), named
      ``qcinode-proto``, scheduled behind the event loops: where Linux's
      autogroup scheduler is on (it shares the CPU between sessions first,
      and applies ``nice`` only inside each), in a session of its own under
      the SCHED_IDLE policy, which any task that wakes preempts at once,
      and that session's group niced by :data:`PROTOCOL_NICE`, so that it
      weighs about a tenth of a loop's session: a loop that runs for more
      than a time slice is not shared out with the protocol processes, and
      they still take every cycle the loops leave; elsewhere at ``nice``
      :data:`PROTOCOL_NICE`. (Measured on a 6-node chain with every link at
      full speed, alternated runs: 5-hop ``enc_keys``→``dec_keys`` p99 103-151
      ms against 198-235 ms with the steps in a niced thread; with the
      group niced, p99 55 and 67 ms against 72 and 102 ms, and 16-key
      requests 1288 and 1339 keys/s against 816 and 985: see
      docs/operations.md.) Requests and answers are
      length-prefixed pickles over a Unix socket pair (*Crossing*); the
      answers are read by an asyncio protocol on the loop, the requests are
      written without blocking it. The child ends when the node's end of the socket closes
      (and, on Linux, when the node dies). If the child dies, every step
      waiting for it fails (:class:`ProtocolRunnerLost`), the link sessions
      end and reconnect, and the next session starts a new child (spawned).
      :class:`ThreadRunner`: one niced thread of the node's process, as
      nodes ran before (in-process nodes of tests, where a fork would copy
      gRPC's threads half-alive). :class:`InlineRunner`: every step on the
      caller's thread (link workers built by tests). All three run the same
      :class:`LinkSteps`, and the node passes copies either way, so nothing
      is shared between the loop and a step.
    * **Crossing.** What a step costs beyond its own work is copying and
      waking, so each crossing copies as little as it can: both ends read
      into one reused buffer, grown to the longest message and sized from
      each message's header (:class:`_Messages`: the loop through
      :class:`asyncio.BufferedProtocol`, the child with ``recv_into``), and
      unpickle each message where it landed; a message is pickled in parts
      (:class:`_Parts`), a large payload (a pulse frame, a detection report)
      kept by reference and sent as it is, with the rest, in one ``sendmsg``
      (the child) or a few transport writes (the loop); the socket's kernel
      buffers hold a whole frame, so it crosses in one write and one wake-up.
      A MAC-key reserve crosses by difference (:func:`_dumps`): its immutable,
      named parts once per session, then its state and its new parts only.
      This rests on the reserve's own rule that a part's name never changes
      its bytes. A message naming a part the reading end does not hold (a
      bug) does not unpickle: the process is lost and replaced, as if it had
      died.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import ctypes
import dataclasses
import multiprocessing
import os
import pickle
import select
import signal
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..core import kernels
from ..core.authentication import AuthKeyReserve
from ..core.physics import Clicks, PhotonFrame
from ..core.pipeline import AliceLink, BlockEvent, BobLink, Emission, LinkProtocolConfig, Measurement
from ..core.pipeline import LinkState as Phase
from ..core.randomness import CsprngGenerator, KeyRandomness, spawn_generator
from ..errors import LocalProtocolError, TransportError
from ..transport import codec
from ..transport.pb import link_pb2 as pb
from .proctitle import retitle
from .runtime import M_ARENA_MAX, finish_in_thread, set_malloc_options, tune_allocator_for_links

__all__ = [
    "PROTOCOL_NICE",
    "InlineRunner",
    "LinkSteps",
    "Mirror",
    "ProcessRunner",
    "ProtocolRunner",
    "ProtocolRunnerLost",
    "RemoteLink",
    "SessionSpec",
    "StepResult",
    "ThreadRunner",
    "session_rng",
]

#: How much the protocol runner's scheduling priority is lowered (Linux ``nice`` units).
PROTOCOL_NICE = 10
#: How long closing a runner waits for its process to end its step before killing it (seconds).
CLOSE_WAIT_S = 2.0
#: Bytes of the length prefix of each request and answer on the runner's socket.
_HEADER = struct.Struct("!Q")
#: Kernel send and receive buffers asked for on both ends of the runner's socket (bytes; Linux caps them at
#: ``net.core.wmem_max``/``rmem_max``): room for a whole pulse frame, so one ``send`` takes it and the loop
#: wakes once per frame, not once per 200 kB.
SOCKET_BUFFER_BYTES = 8 << 20
#: Free bytes a read into a :class:`_Messages` buffer is offered at least (fewer, larger reads).
_MIN_READ = 256 << 10
#: A part of a message at least this long is sent as it is, not joined to the parts around it (a copy saved).
_JOIN_BELOW = 64 << 10
#: An LDPC decode job: the arguments of :func:`qcinode.core.ldpc_reconciliation.decode_frame`.
DecodeJob = tuple[int, int, np.ndarray, np.ndarray]


class ProtocolRunnerLost(TransportError):
    """The protocol process ended (killed, out of memory): the steps it had are lost, the sessions reconnect."""


@dataclasses.dataclass(frozen=True, slots=True)
class Mirror:
    """What a link worker reads of its session between steps (the session itself is in the runner)."""

    state: Phase
    next_block_seq: int
    next_frame_id: int
    is_ready_for_frame: bool
    can_sift_ahead: bool
    key_bits_needed: int
    pending_block_seq: int | None

    def __reduce__(self) -> tuple[type[Mirror], tuple[Any, ...]]:
        # Every answer carries one: pickled as its constructor's arguments, not through the slotted
        # dataclass's generic __getstate__/__setstate__ (a few microseconds each way, per message).
        return Mirror, (
            self.state, self.next_block_seq, self.next_frame_id, self.is_ready_for_frame, self.can_sift_ahead, self.key_bits_needed, self.pending_block_seq
        )

    @classmethod
    def of(cls, link: AliceLink | BobLink) -> Mirror:
        if isinstance(link, AliceLink):
            return cls(
                link.state, link.next_block_seq, link.next_frame_id, link.is_ready_for_frame, link.can_sift_ahead, link.key_bits_needed, None
            )
        return cls(link.state, link.next_block_seq, 0, False, False, 0, link.pending_block_seq)


@dataclasses.dataclass(frozen=True, slots=True)
class SessionSpec:
    """What a new session of one end of a link starts from (besides the reserve)."""

    alice: bool
    config: LinkProtocolConfig
    key_rng: KeyRandomness
    noise_rng: np.random.Generator
    next_block_seq: int
    next_frame_id: int = 0
    defer_decoding: bool = False  # Bob with LDPC: the node runs the decodes (take_decode_jobs, decoded)


@dataclasses.dataclass(frozen=True, slots=True)
class StepResult:
    """What a step sends back: the wire forms of the messages to send, the session's new mirror, and what
    else the step left: block events, LDPC decode jobs, the reserve it was handed (changed or not).

    A step that raised sends back the same, with ``error`` (and no message):
    what it changed before it raised stands, as it would have in place.
    """

    outs: list[bytes]
    mirror: Mirror
    events: list[BlockEvent]
    jobs: list[DecodeJob]
    reserve: AuthKeyReserve | None = None
    error: Exception | None = None

    def __reduce__(self) -> tuple[type[StepResult], tuple[Any, ...]]:
        # As Mirror's: most answers are one of these.
        return StepResult, (self.outs, self.mirror, self.events, self.jobs, self.reserve, self.error)


def _fingerprint(reserve: AuthKeyReserve) -> tuple[Any, ...]:
    """What changes whenever a reserve changes (the cursor, the end, the staged refills, the promotion mark)."""
    return (reserve.cursor, reserve.available_keys, reserve.staged_block_seqs, reserve.promoted_before)


class LinkSteps:
    """The runner's side: the node's link sessions by handle, and one method per kind of step.

    Synchronous and single-threaded: a runner calls :meth:`handle` for one
    request at a time. Every method returns plain values (picklable), never
    a session object.
    """

    def __init__(self) -> None:
        self._links: dict[int, AliceLink | BobLink] = {}

    def __len__(self) -> int:
        return len(self._links)

    def holds(self, handle: int) -> bool:
        """Whether session ``handle`` is here."""
        return handle in self._links

    def handle(self, op: str, args: tuple[Any, ...]) -> Any:
        """Runs request ``op`` with ``args``.

        Raises:
            LocalProtocolError: An unknown request or session handle.
            ProtocolError: What the session's step raised (a message that breaks the protocol).
        """
        method = _OPS.get(op)
        if method is None:
            raise LocalProtocolError(f"protocol runner: unknown request {op!r}")
        return method(self, *args)

    def _link(self, handle: int) -> AliceLink | BobLink:
        try:
            return self._links[handle]
        except KeyError:
            raise LocalProtocolError(f"protocol runner: no session {handle}") from None

    def open(self, handle: int, spec: SessionSpec, reserve: AuthKeyReserve) -> Mirror:
        """A new session of one end of a link (the reserve as the node holds it now)."""
        if handle in self._links:
            raise LocalProtocolError(f"protocol runner: session {handle} exists")
        # The blocks' arrays live in this process: it tunes its allocator for
        # them itself (a forked child inherits the node's tuning, a spawned
        # replacement after a crash would otherwise run with glibc's defaults).
        tune_allocator_for_links(spec.config.block_bits)
        link: AliceLink | BobLink
        if spec.alice:
            link = AliceLink(spec.config, reserve, spec.key_rng, spec.noise_rng, next_block_seq=spec.next_block_seq)
            link.next_frame_id = spec.next_frame_id
        else:
            link = BobLink(
                spec.config, reserve, spec.key_rng, spec.noise_rng, next_block_seq=spec.next_block_seq, defer_decoding=spec.defer_decoding
            )
        self._links[handle] = link
        return Mirror.of(link)

    def emit(self, handle: int, n_slots: int, at_utc: float | None, close_block: bool, ahead: bool) -> tuple[int, int, bytes, Mirror]:
        """Alice's next frame: (frame ID, slots, payload, mirror)."""
        answer: tuple[int, int, bytes, Mirror] = self._in_step(self.emit_beside(handle, n_slots, at_utc, close_block, ahead))
        return answer

    def emit_beside(self, handle: int, n_slots: int, at_utc: float | None, close_block: bool, ahead: bool) -> _Beside:
        """As :meth:`emit`, but the frame's pulses are handed back to be drawn beside later requests (then
        :meth:`emitted` finishes the step)."""
        link = self._link(handle)
        if not isinstance(link, AliceLink):
            raise LocalProtocolError(f"protocol runner: session {handle} does not transmit")
        with self._untouched(link):
            emission = link.emit_frame_later(n_slots, at_utc=at_utc, close_block=close_block, ahead=ahead)
        return _Beside(handle, link, emission)

    def emitted(self, emitting: _Beside, drawn: Any, error: BaseException | None = None) -> tuple[int, int, bytes, Mirror]:
        """Ends a frame step whose emission ran beside (:meth:`emit_beside`): its answer.

        Raises:
            LocalProtocolError: The session ended meanwhile (nothing is sent).
            Exception: What the emission raised (the node ends the session).
        """
        link, emission = emitting.link, emitting.job
        assert isinstance(link, AliceLink) and isinstance(emission, Emission)
        if error is not None:
            raise error
        frame, record, payload = drawn
        with self._untouched(link):
            sent = link.emitted(emission, frame, record) if self._links.get(emitting.handle) is link else None
        if sent is None:
            raise LocalProtocolError(f"protocol runner: session {emitting.handle} ended while frame {emission.frame_id} was drawn")
        return emission.frame_id, frame.n_slots, payload, Mirror.of(link)

    def frame(self, handle: int, frame_id: int, payload: bytes, at_utc: float | None) -> StepResult:
        """A pulse frame (its wire form, parsed and checked here) reached Bob's detectors."""
        started = self.frame_beside(handle, frame_id, payload, at_utc)
        result: StepResult = started if not isinstance(started, _Beside) else self._in_step(started)
        return result

    def _in_step(self, beside: _Beside) -> Any:
        """Runs a frame's physics in the step itself (the other runners) and finishes the step as
        :meth:`finish_beside` does: what the physics raised is the step's error."""
        try:
            result = beside.run()
        except Exception as exc:  # noqa: BLE001 - handed back as the step's error
            return self.finish_beside(beside, None, exc)
        return self.finish_beside(beside, result, None)

    def frame_beside(self, handle: int, frame_id: int, payload: bytes, at_utc: float | None) -> StepResult | _Beside:
        """As :meth:`frame`, but the frame's measurement, if it is its turn, is handed back to run beside later
        requests (then :meth:`measured` finishes the step)."""
        link = self._link(handle)
        if not isinstance(link, BobLink):
            raise LocalProtocolError(f"protocol runner: session {handle} does not receive frames")
        started: list[Measurement] = []

        def step() -> list[Any]:
            measurement = link.receive_frame_later(frame_id, PhotonFrame.from_bytes(payload), at_utc)
            if measurement is not None:
                started.append(measurement)
            return []

        with self._untouched(link):
            result = self._run(link, None, step)
        return _Beside(handle, link, started[0]) if started else result

    def measured(self, measuring: _Beside, clicks: Clicks | None, error: BaseException | None = None) -> StepResult:
        """Ends a frame step whose measurement ran beside (:meth:`frame_beside`): its answer. A session that
        ended meanwhile sends nothing; a measurement that raised ends the session as the step would have."""
        link, measurement = measuring.link, measuring.job
        assert isinstance(link, BobLink) and isinstance(measurement, Measurement)
        if self._links.get(measuring.handle) is not link:
            return StepResult(outs=[], mirror=Mirror.of(link), events=[], jobs=[])

        def step() -> list[Any]:
            if error is not None:
                raise error
            assert clicks is not None
            return link.measured(measurement, clicks)

        with self._untouched(link):
            return self._run(link, None, step)

    def start_beside(self, op: str, args: tuple[Any, ...]) -> Any:
        """Request ``op`` as :meth:`handle` runs it, except that a frame's physics (Alice's emission, Bob's
        measurement) is handed back as a :class:`_Beside` to run on another thread; :meth:`finish_beside`
        then gives the answer."""
        if op == "emit":
            return self.emit_beside(*args)
        if op == "frame":
            return self.frame_beside(*args)
        return self.handle(op, args)

    def finish_beside(self, beside: _Beside, result: Any, error: BaseException | None) -> Any:
        """The answer of a request whose physics ran beside (:meth:`start_beside`), given what it returned or raised."""
        if isinstance(beside.job, Emission):
            return self.emitted(beside, result, error)
        return self.measured(beside, result, error)

    def receive(self, handle: int, wire: bytes, reserve: AuthKeyReserve) -> StepResult:
        """A classical message from the peer, with the link's reserve as the node holds it."""
        link = self._link(handle)
        return self._run(link, reserve, lambda: link.receive(codec.decode(pb.ClassicalMessage.FromString(wire))))

    def decoded(self, handle: int, results: list[np.ndarray | None], reserve: AuthKeyReserve) -> StepResult:
        """The results of the LDPC decode jobs a step handed out."""
        link = self._link(handle)
        if not isinstance(link, BobLink):
            raise LocalProtocolError(f"protocol runner: session {handle} does not decode")
        return self._run(link, reserve, lambda: link.decoded(results))

    def abandon(self, handle: int, reason: str) -> tuple[list[BlockEvent], Mirror]:
        """The session broke: its open block ends; it stays only if it holds a block pending Alice's Commit."""
        link = self._link(handle)
        events = link.abandon(reason)
        mirror = Mirror.of(link)
        if mirror.pending_block_seq is None:
            del self._links[handle]
        return events, mirror

    def settle(self, handle: int, accepted: bool, reserve: AuthKeyReserve) -> tuple[list[BlockEvent], AuthKeyReserve]:
        """Accepts or drops the block a broken session of Bob's held pending Alice's Commit; the session ends."""
        link = self._link(handle)
        if not isinstance(link, BobLink):
            raise LocalProtocolError(f"protocol runner: session {handle} holds no pending block")
        del self._links[handle]
        link.auth = reserve
        events = link.settle_pending(accepted)
        return events, link.auth.copy()

    def work_ahead(self) -> bool:
        """One computation a session's later step would do (:meth:`~qcinode.core.pipeline.AliceLink.work_ahead`),
        done now; whether there was one. Results are the same whether it runs or not."""
        return any(link.work_ahead() for link in self._links.values())

    def warm_up(self) -> bool:
        """Loads the compiled kernels now (:func:`qcinode.core.kernels.warm_up`), so a first large block does not wait for them.

        Returns whether they are ready.
        """
        return kernels.warm_up()

    def configure(self, handle: int, config: LinkProtocolConfig) -> None:
        """The link's configuration changed (an eavesdropper switched on or off): from the next frame on."""
        self._link(handle).config = config

    def drop(self, handle: int) -> None:
        """Forgets a session (its pending block is lost)."""
        self._links.pop(handle, None)

    @staticmethod
    def _run(link: AliceLink | BobLink, reserve: AuthKeyReserve | None, step: Callable[[], list[Any]]) -> StepResult:
        """Runs ``step`` on ``link`` with ``reserve`` (None: the step takes no MAC key)."""
        if reserve is not None:
            link.auth = reserve
        outs: list[bytes] = []
        error: Exception | None = None
        try:
            outs = [codec.encode(out).SerializeToString() for out in step()]
        except Exception as exc:  # handed back with what the step changed before it raised
            error = exc
        return StepResult(
            outs=outs,
            mirror=Mirror.of(link),
            events=link.take_events(),
            jobs=link.take_decode_jobs() if isinstance(link, BobLink) else [],
            reserve=None if reserve is None else link.auth.copy(),
            error=error,
        )

    @staticmethod
    @contextlib.contextmanager
    def _untouched(link: AliceLink | BobLink) -> Any:
        """A frame step must not change the reserve (the node does not hand it one)."""
        before = _fingerprint(link.auth)
        yield
        if _fingerprint(link.auth) != before:
            raise LocalProtocolError("protocol runner: a frame step changed the MAC-key reserve")


_OPS: dict[str, Callable[..., Any]] = {
    "open": LinkSteps.open,
    "emit": LinkSteps.emit,
    "frame": LinkSteps.frame,
    "receive": LinkSteps.receive,
    "decoded": LinkSteps.decoded,
    "abandon": LinkSteps.abandon,
    "settle": LinkSteps.settle,
    "configure": LinkSteps.configure,
    "warm_up": LinkSteps.warm_up,
    "drop": LinkSteps.drop,
}


# -- runners -------------------------------------------------------------------------------


class ProtocolRunner:
    """Runs :class:`LinkSteps` requests for the event loop (the module docstring's runners)."""

    #: Whether requests and answers cross a process boundary (the node then sends copies of nothing it keeps).
    remote = False

    def describe(self) -> str:
        """How this runner runs (the node's start-up log line)."""
        return "inline"

    async def call(self, op: str, *args: Any) -> Any:
        """Runs a request; its result, or the exception it raised.

        The request runs whether or not the caller is still waiting; a
        caller cancelled meanwhile still waits for its end (so that what the
        step changed is known before the caller's clean-up), then re-raises.
        """
        return await finish_in_thread(self.submit(op, *args))

    def submit(self, op: str, *args: Any) -> asyncio.Future[Any]:
        """Queues a request after those already asked; a future of its result."""
        raise NotImplementedError

    def close(self) -> None:
        """Ends the runner (its sessions are lost)."""


class InlineRunner(ProtocolRunner):
    """Every step on the caller's thread, at once (link workers built without a node)."""

    def __init__(self) -> None:
        self.steps = LinkSteps()

    def submit(self, op: str, *args: Any) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        try:
            future.set_result(self.steps.handle(op, args))
        except Exception as exc:  # handed to the caller
            future.set_exception(exc)
        return future


def _lower_priority(thread: bool) -> None:
    """Lowers this thread's (``thread``) or this process's priority by :data:`PROTOCOL_NICE` (Linux; elsewhere nothing)."""
    with contextlib.suppress(AttributeError, OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id() if thread else 0, PROTOCOL_NICE)


class ThreadRunner(ProtocolRunner):
    """One thread of the node's process, niced (in-process nodes)."""

    def __init__(self, name: str) -> None:
        self.steps = LinkSteps()
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"{name}-protocol", initializer=_lower_priority, initargs=(True,))

    def describe(self) -> str:
        return "thread"

    def submit(self, op: str, *args: Any) -> asyncio.Future[Any]:
        return asyncio.get_running_loop().run_in_executor(self._executor, self.steps.handle, op, args)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def _widen(sock: socket.socket) -> None:
    """Asks for :data:`SOCKET_BUFFER_BYTES` of kernel buffer each way (what the kernel grants is enough either way)."""
    for option in (socket.SO_SNDBUF, socket.SO_RCVBUF):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER_BYTES)


def _threads() -> int:
    """Threads of this process: the kernel's count where there is ``/proc`` (threads started by C code included)."""
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return threading.active_count()


class ProcessRunner(ProtocolRunner):
    """A child process that runs the steps (the module docstring): forked now if this process is one thread, else spawned."""

    remote = True

    def __init__(self, name: str, *, fork: bool | None = None) -> None:
        """Starts node ``name``'s protocol process.

        Args:
            fork: Fork it (the default where this process is one thread, on
                Linux), or spawn a fresh interpreter (False; tests, whose
                process runs gRPC's threads).
        """
        self.name = name
        self.starts = 0
        self.method = ""
        self._sock: socket.socket | None = None
        self._pid: int | None = None
        self._process: Any = None  # a spawned child's multiprocessing.Process
        self._transport: asyncio.Transport | None = None
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._held: _Held = {}  # the MAC-key reserve parts this end and the child hold (_dumps)
        self._unsent: list[_Part] = []  # requests asked for before the loop's connection to the child
        self._connecting: asyncio.Future[None] | None = None
        self._next_id = 0
        self.lost: str | None = None  # why the child ended, once it did
        self._start(fork=sys.platform == "linux" and _threads() == 1 if fork is None else fork)

    def _start(self, *, fork: bool) -> None:
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        for end in (parent, child):
            _widen(end)
        if fork:
            pid = os.fork()
            if pid == 0:  # the protocol process
                code = 0
                try:
                    parent.close()
                    _serve(child, self.name)
                except BaseException:  # noqa: BLE001 - a child of a fork must never return into the node's code
                    code = 1
                finally:
                    os._exit(code)
            self._pid = pid
            self.method = "fork"
        else:
            context = multiprocessing.get_context("spawn")
            self._process = context.Process(target=_serve, args=(child, self.name), name=f"{self.name}-protocol", daemon=True)
            self._process.start()
            self._pid = self._process.pid
            self.method = "spawn"
        child.close()
        parent.setblocking(False)
        self._sock = parent
        self._held = {}  # a new child holds nothing
        self._transport = None
        self.lost = None
        self.starts += 1

    @property
    def pid(self) -> int | None:
        return self._pid

    def describe(self) -> str:
        return f"process ({self.method}, pid {self.pid})"

    def submit(self, op: str, *args: Any) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._next_id += 1
        rid = self._next_id
        scope = _scope(args)
        parts = _framed(_dumps((rid, op, args), self._held, scope))
        self._pending[rid] = future
        if self._transport is not None:
            for part in parts:
                self._transport.write(part)
            return future
        # First request, or the child ended: requests wait, in order, for the one connection.
        self._unsent += parts
        if self._connecting is None:
            self._connecting = asyncio.ensure_future(self._connect())
        return future

    async def _connect(self) -> None:
        """Connects the loop to the child (a new child first if the last one ended), then sends what waited."""
        try:
            if self.lost is not None:  # the child ended: a new one (spawned: this process has threads by now)
                self._reap()
                self._start(fork=False)
            assert self._sock is not None
            transport, _ = await asyncio.get_running_loop().create_unix_connection(lambda: _Answers(self), sock=self._sock)
        except BaseException as exc:  # cancelled (the node stops) or failed: the waiting requests fail
            self._connecting = None
            self._unsent = []
            for rid in list(self._pending):
                self._fail(rid, ProtocolRunnerLost(f"protocol process of {self.name} cannot be reached: {exc!r}"))
            if not isinstance(exc, Exception):
                raise
            return
        self._connecting = None
        if self.lost is not None:  # it ended while we connected: its requests failed with it
            return
        self._transport = transport
        unsent, self._unsent = self._unsent, []
        for data in unsent:
            transport.write(data)

    def _answer(self, rid: int, ok: bool, value: Any) -> None:
        future = self._pending.pop(rid, None)
        if future is None or future.done():
            return
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)

    def _fail(self, rid: int, exc: Exception) -> None:
        future = self._pending.pop(rid, None)
        if future is not None and not future.done():
            future.set_exception(exc)

    def _connection_lost(self, why: str) -> None:
        self.lost = why
        self._transport = None
        self._sock = None
        self._unsent = []
        for rid in list(self._pending):
            self._fail(rid, ProtocolRunnerLost(f"protocol process of {self.name} ended ({why})"))

    def _reap(self, wait_s: float = 0.0) -> None:
        """Collects the child's exit status (it ends once its socket closed), killing it after ``wait_s``."""
        pid, self._pid, self._process = self._pid, None, None
        if pid is None:
            return
        deadline = time.monotonic() + wait_s
        with contextlib.suppress(ChildProcessError, OSError):
            while os.waitpid(pid, os.WNOHANG) == (0, 0):
                if time.monotonic() >= deadline:
                    os.kill(pid, signal.SIGKILL)  # still in a step after the wait: the step is lost anyway
                    os.waitpid(pid, 0)
                    return
                time.sleep(0.01)

    def close(self) -> None:
        """Closes the socket: the child ends after the step it runs (killed if that takes over :data:`CLOSE_WAIT_S`)."""
        if self._connecting is not None:
            self._connecting.cancel()
        if self._transport is not None:
            self._transport.close()
        elif self._sock is not None:
            self._sock.close()
        self._transport = None
        self._sock = None
        self.lost = self.lost or "closed"
        self._reap(CLOSE_WAIT_S)


#: What one end of the runner's socket holds of the MAC-key reserves that crossed it: per session handle, the
#: reserve's immutable parts (the chunks and staged refills, by :meth:`AuthKeyReserve.blob_names` name).
_Held = dict[int, dict[str, bytes]]
#: The receiving end's :data:`_Held` while it unpickles a message (:func:`_loads`).
_RECEIVING: contextvars.ContextVar[_Held | None] = contextvars.ContextVar("qcinode_protocol_held", default=None)


class _Pickler(pickle.Pickler):
    """Pickles a message of session ``scope``; a MAC-key reserve crosses as its state and only the parts
    the other end does not hold yet (:func:`_dumps`)."""

    def __init__(self, file: _Parts, held: dict[str, bytes] | None, scope: int | None) -> None:
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self._held = held if held is not None else {}
        self._scope = scope
        self.crossed: dict[str, bytes] | None = None  # every part of the reserve pickled (the message carries one)

    def reducer_override(self, obj: Any) -> Any:
        if type(obj) is not AuthKeyReserve or self._scope is None:
            return NotImplemented
        parts: dict[str, bytes | int] = {}
        self.crossed = {}
        for name in obj.blob_names():
            data = self.crossed[name] = obj.blob(name)
            if self._held.get(name) is data:
                parts[name] = len(data)  # the other end holds it: named, with its length as a check
            else:
                parts[name] = data
        return _held_reserve, (self._scope, obj.to_state(inline=False), parts)


#: A piece of a pickled message: bytes, or a view of an array's memory (:class:`_Parts`).
_Part = bytes | memoryview


class _Parts:
    """Where a message is pickled to: the pickler's writes, kept as they come.

    The pickler writes a bytes object of 64 KiB or more (a pulse frame, a
    detection report) by itself, as the object: kept by reference, it goes
    to the socket without being copied into the message first. A contiguous
    numpy array that large (an LDPC decode job's frame) comes as the
    :class:`pickle.PickleBuffer` it reduces to, and is kept as a byte view
    of the array's memory.
    """

    def __init__(self) -> None:
        self.parts: list[_Part] = []

    def write(self, data: bytes | pickle.PickleBuffer) -> int:
        part = data.raw() if isinstance(data, pickle.PickleBuffer) else data
        self.parts.append(part)
        return len(part)


def _framed(parts: list[_Part]) -> list[_Part]:
    """A message's parts behind its length prefix, runs of small parts joined (large ones are not copied)."""
    out: list[_Part] = []
    run: list[_Part] = [_HEADER.pack(sum(len(part) for part in parts))]
    for part in parts:
        if len(part) < _JOIN_BELOW:
            run.append(part)
            continue
        out.append(b"".join(run))
        out.append(part)
        run = []
    if run:
        out.append(b"".join(run))
    return out


def _dumps(obj: Any, held: _Held, scope: int | None) -> list[_Part]:
    """``obj`` pickled for the other end, a MAC-key reserve of session ``scope`` by difference (module docstring).

    A link's reserve (64 KiB of bootstrap key in a running node) went out
    whole with every classical message and came back whole with its answer,
    though its parts (immutable, and named for good) rarely change: each end
    remembers, per session, the parts that crossed in either direction, and a
    reserve crosses as its state (a few numbers) and the parts not yet held.
    Both ends learn a part in the same order as the messages that carry it,
    so a part named by one end is held by the other when the message is read;
    and both then hold exactly the parts of the reserve that crossed (a part
    the reserve no longer has, a spent chunk, is forgotten at both ends):
    a session's reserve crosses one way at a time, each step's answer before
    the next step that carries it, so the two memories stay equal and no
    larger than the reserve.

    Returns:
        The pickle in parts (:class:`_Parts`), to be sent in order.
    """
    stream = _Parts()
    pickler = _Pickler(stream, held.get(scope) if scope is not None else None, scope)
    pickler.dump(obj)
    if pickler.crossed is not None and scope is not None:  # only once the whole message is made
        held[scope] = pickler.crossed
    return stream.parts


def _loads(data: memoryview | bytes, held: _Held) -> Any:
    """Unpickles a message from the other end, whose reserves' parts are resolved from ``held`` (:func:`_dumps`)."""
    token = _RECEIVING.set(held)
    try:
        return pickle.loads(data)
    finally:
        _RECEIVING.reset(token)


def _held_reserve(scope: int, state: dict[str, Any], parts: dict[str, bytes | int]) -> AuthKeyReserve:
    """A reserve of session ``scope`` as :class:`_Pickler` sent it: its new parts are learned, the others looked up.

    Raises:
        LocalProtocolError: A part named is not held here (the two ends' memories differ: a bug).
    """
    held = _RECEIVING.get()
    known = held.get(scope, {}) if held is not None else {}
    blobs: dict[str, bytes] = {}
    for name, part in parts.items():
        if isinstance(part, int):
            data = known.get(name)
            if data is None or len(data) != part:
                raise LocalProtocolError(f"protocol runner: session {scope}'s MAC-key reserve names part {name!r}, which this end does not hold")
        else:
            data = part
        blobs[name] = data
    if held is not None:
        held[scope] = dict(blobs)  # what the sender now holds too (_dumps)
    return AuthKeyReserve.from_state(state, blobs)


def _scope(args: tuple[Any, ...]) -> int | None:
    """The session a request is about (its first argument), if any."""
    return args[0] if args and type(args[0]) is int else None


#: Requests after whose answer the session may be gone from the runner (its reserve's parts are then forgotten).
_ENDING = frozenset({"abandon", "settle", "drop"})


class _Messages:
    """Length-prefixed messages read from a stream into one reused buffer (both ends of the runner's socket).

    A reader asks for :meth:`free` space, reads into it (``recv_into``, or
    asyncio's :class:`~asyncio.BufferedProtocol`), says how much came with
    :meth:`filled`, then takes the complete messages with :meth:`take`: each
    a view of the buffer, valid until the next :meth:`free` (unpickle it
    before). So a 3 MB pulse frame lands once, where it is unpickled,
    instead of being appended to a growing buffer and sliced out of it.
    A message may arrive in many reads and a read may hold several
    messages. The buffer grows to the longest message seen and is never
    resized in place (a reader may still hold a view of it): a larger one
    replaces it.
    """

    def __init__(self, size: int = _MIN_READ) -> None:
        self._buffer = bytearray(size)
        self._view = memoryview(self._buffer)
        self._start = 0  # first byte not yet taken
        self._end = 0  # one past the last byte read

    def free(self) -> memoryview:
        """Where the next read goes: at least :data:`_MIN_READ` bytes, and room for the whole message begun."""
        pending = self._end - self._start
        need = _MIN_READ
        if pending >= _HEADER.size:
            (length,) = _HEADER.unpack_from(self._buffer, self._start)
            need = max(need, _HEADER.size + length - pending)
        if len(self._buffer) - self._end < need:
            if pending + need > len(self._buffer):  # a longer message than any before: a larger buffer
                buffer = bytearray(max(pending + need, 2 * len(self._buffer)))
                buffer[:pending] = self._view[self._start : self._end]
                self._buffer, self._view = buffer, memoryview(buffer)
            else:  # the unread bytes (part of one message) move to the front
                self._buffer[:pending] = self._view[self._start : self._end]
            self._start, self._end = 0, pending
        return self._view[self._end :]

    def filled(self, n_bytes: int) -> None:
        """``n_bytes`` were read into the view :meth:`free` returned."""
        self._end += n_bytes

    @property
    def partial(self) -> bool:
        """Whether part of a message has been read and its end not yet (after :meth:`take`)."""
        return self._end > self._start

    def take(self) -> list[memoryview]:
        """The complete messages read so far (views of the buffer, valid until the next :meth:`free`)."""
        messages = []
        while self._end - self._start >= _HEADER.size:
            (length,) = _HEADER.unpack_from(self._buffer, self._start)
            end = self._start + _HEADER.size + length
            if end > self._end:
                break
            messages.append(self._view[self._start + _HEADER.size : end])
            self._start = end
        if self._start == self._end:
            self._start = self._end = 0
        return messages


class _Answers(asyncio.BufferedProtocol):
    """Reads the protocol process's answers on the event loop: length-prefixed pickles, read in place (:class:`_Messages`)."""

    def __init__(self, runner: ProcessRunner) -> None:
        self.runner = runner
        self.messages = _Messages()

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.messages.free()

    def buffer_updated(self, nbytes: int) -> None:
        self.messages.filled(nbytes)
        for message in self.messages.take():
            rid, ok, value, ended = _loads(message, self.runner._held)
            if ended is not None:  # the session is gone from the child, which forgot its reserve's parts
                self.runner._held.pop(ended, None)
            self.runner._answer(rid, ok, value)

    def connection_lost(self, exc: Exception | None) -> None:
        self.runner._connection_lost("its socket closed" if exc is None else repr(exc))


# -- the protocol process ----------------------------------------------------------------


#: The protocol process's name as ``ps -o comm`` and ``top`` show it (Linux; a fork keeps the node's command line).
PROCESS_NAME = b"qcinode-proto"


def _linux_identity() -> None:
    """Linux: the kernel sends SIGKILL to this process when its parent (the node) ends, however it ends;
    and the process is named :data:`PROCESS_NAME`."""
    with contextlib.suppress(Exception):
        # The C library is already loaded: its symbols are the process's own (CDLL(None)), found at once.
        # find_library would run ldconfig in a subprocess first, which on a loaded machine left the new
        # process unnamed, and its death signal unset, for a noticeable while after the fork.
        libc = ctypes.CDLL(None)
        if hasattr(libc, "prctl"):
            pr_set_pdeathsig, pr_set_name = 1, 15
            libc.prctl(pr_set_pdeathsig, signal.SIGKILL)
            libc.prctl(pr_set_name, ctypes.c_char_p(PROCESS_NAME))


AUTOGROUP_SETTING = "/proc/sys/kernel/sched_autogroup_enabled"
#: This process's autogroup (sched(7)): reading it gives the group and its nice value, writing a number sets that nice value.
AUTOGROUP_SELF = "/proc/self/autogroup"
#: Environment variable: ``idle`` (the default where autogroups are on) or ``nice`` (see :func:`_yield_to_loops`).
SCHEDULING_ENV = "QCINODE_PROTOCOL_SCHED"


def _yield_to_loops() -> None:
    """Schedules this process behind the event loops (module docstring, *Runners*).

    Where Linux groups processes by session (autogroups), this process takes
    a session of its own, niced by :data:`PROTOCOL_NICE` as a group (a tenth
    of a loop's session's weight: the group's fair share when the loops are
    busy, every cycle they leave otherwise), and the SCHED_IDLE policy, under
    which a task that wakes (an event loop with a request) preempts it at
    once. At nice 0 the group would weigh as much as a loop's session, and a
    loop callback longer than a time slice would be shared out with the
    protocol processes on its core, delaying whatever waits behind it
    (measured: the module docstring). Without
    autogroups SCHED_IDLE would weigh this process at 3/1024 of a loop and
    starve the links of a busy machine, so it is only niced
    (:data:`PROTOCOL_NICE`), in its node's session; :data:`SCHEDULING_ENV`
    ``nice`` asks for that everywhere.
    """
    try:
        grouped = Path(AUTOGROUP_SETTING).read_text().strip() == "1"
    except OSError:
        grouped = False
    if grouped and os.environ.get(SCHEDULING_ENV, "idle").strip().lower() != "nice":
        with contextlib.suppress(OSError):
            os.setsid()
            # The new session's group runs niced (any process may lower its
            # own group's weight, as its own priority).
            Path(AUTOGROUP_SELF).write_text(f"{PROTOCOL_NICE}\n")
        with contextlib.suppress(AttributeError, OSError):
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
            return
    _lower_priority(thread=False)


def _serve(sock: socket.socket, node: str = "") -> None:
    """The protocol process of node ``node``: answers requests until the node closes its end (or dies)."""
    # The node handles Ctrl-C and SIGTERM; the child ends when the node does.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    with contextlib.suppress(ValueError):
        signal.set_wakeup_fd(-1)
    _linux_identity()
    retitle([PROCESS_NAME.decode(), node])  # in `ps`: whose protocol process, not the node's command line
    _yield_to_loops()
    _one_arena()
    _answer(sock, LinkSteps())


def _one_arena() -> None:
    """glibc: every thread of this process allocates from the main heap (``M_ARENA_MAX`` 1).

    The physics thread (:class:`_BesideThread`) allocates a frame's arrays
    and the main thread frees them; with an arena of its own, the thread's
    freed frames stayed in it, beside those the main heap keeps (the link
    allocator's tuning): measured, ~20 MiB more peak RSS per protocol process
    on 10^6-bit blocks. Two threads contend little for one arena's lock.
    Elsewhere, nothing.
    """
    set_malloc_options({M_ARENA_MAX: 1})


def _answer(sock: socket.socket, steps: LinkSteps, *, beside: bool = True) -> None:
    """Answers the requests that come on ``sock`` with ``steps`` until the other end closes it; works
    ahead (:meth:`LinkSteps.work_ahead`) whenever no request waits.

    With ``beside``, a frame's physics (Alice's emission, Bob's measurement)
    runs on a thread of its own (:class:`_BesideThread`) while later
    requests are answered; the frame's answer goes out when it ends (the
    node matches answers to requests by their IDs).
    """
    sock.setblocking(True)
    requests = _Messages()
    held: _Held = {}
    thread = _BesideThread() if beside else None
    try:
        while True:
            waiting = [sock] if thread is None else [sock, thread.wakeup]
            ready = select.select(waiting, [], [])[0]
            if thread is not None and thread.wakeup in ready:
                for rid, answer, failure in thread.finished(steps):
                    if not _answer_one(sock, held, rid, answer, failure, None):
                        return
            if sock in ready:
                try:
                    n_bytes = sock.recv_into(requests.free())
                except OSError:
                    return
                if n_bytes == 0:
                    return  # the node closed its end
                requests.filled(n_bytes)
                for request in requests.take():
                    rid, op, args = _loads(request, held)
                    scope = _scope(args)
                    # After a request that may end its session, the parts its reserve left here are forgotten, and
                    # the answer says so (the node forgets them as it reads it).
                    ended = scope if op in _ENDING and scope is not None else None
                    value: Any = None
                    try:
                        value = steps.handle(op, args) if thread is None else steps.start_beside(op, args)
                        if isinstance(value, _Beside):
                            assert thread is not None
                            thread.start(rid, value)
                            continue  # answered when the physics ends
                    except Exception as exc:  # noqa: BLE001 - handed to the node, which ends the session
                        error: Exception | None = exc
                    else:
                        error = None
                    if ended is not None and steps.holds(ended):
                        ended = None
                    if not _answer_one(sock, held, rid, value, error, ended, scope):
                        return
            # Waiting for the node: computations later messages will need, one at a time, until a request comes.
            # Not while a request is half read: the node writes a message's large payloads as they are, in
            # parts, and its end comes in microseconds; a computation begun meanwhile (a block's hash is tens
            # of milliseconds) would hold that request up.
            while not requests.partial and not _readable(sock, thread) and steps.work_ahead():
                pass
    finally:
        if thread is not None:
            thread.close()


def _answer_one(
    sock: socket.socket, held: _Held, rid: int, value: Any, error: Exception | None, ended: int | None, scope: int | None = None
) -> bool:
    """Sends the answer to request ``rid`` (its value, or the exception it raised); False if the node is gone."""
    try:
        answer: list[_Part] = _dumps((rid, True, value, ended), held, scope) if error is None else [_pickled_error(rid, error, ended)]
    except Exception as exc:  # noqa: BLE001 - a value that does not pickle: the node ends the session
        answer = [_pickled_error(rid, exc, ended)]
    if ended is not None:
        held.pop(ended, None)
    try:
        _send(sock, _framed(answer))
    except OSError:
        return False  # the node is gone
    return True


@dataclasses.dataclass(frozen=True, slots=True)
class _Beside:
    """A frame step whose physics was handed out to run beside later requests: Alice's emission
    (:meth:`LinkSteps.emit_beside`) or Bob's measurement (:meth:`LinkSteps.frame_beside`)."""

    handle: int
    link: AliceLink | BobLink
    job: Emission | Measurement

    def run(self) -> Any:
        """The physics, touching nothing of the session: Bob's clicks, or Alice's frame, record and the
        frame's wire form (encoded here too)."""
        if isinstance(self.job, Emission):
            frame, record = self.job.run()
            return frame, record, frame.to_bytes()
        return self.job.run()


class _BesideThread:
    """The protocol process's physics thread: one frame's emission or measurement at a time, beside the
    requests the main thread answers (pipeline rules 1a and 1b). Only :meth:`_Beside.run` runs on it
    (numpy and compiled kernels that release the GIL); everything that touches a session runs on the
    main thread, which learns of an ended job through :attr:`wakeup`."""

    def __init__(self) -> None:
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None  # started at the first job
        self.wakeup, self._wake = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.wakeup.setblocking(False)
        self._lock = threading.Lock()
        self._done: list[tuple[int, _Beside, concurrent.futures.Future[Any]]] = []

    def start(self, rid: int, beside: _Beside) -> None:
        if self._pool is None:
            self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="physics")
        future = self._pool.submit(beside.run)
        future.add_done_callback(lambda done: self._ended(rid, beside, done))

    def _ended(self, rid: int, beside: _Beside, future: concurrent.futures.Future[Any]) -> None:
        with self._lock:
            self._done.append((rid, beside, future))
        with contextlib.suppress(OSError):
            self._wake.send(b"\0")

    def finished(self, steps: LinkSteps) -> list[tuple[int, Any, Exception | None]]:
        """The frame steps whose physics ended, finished on this (the main) thread: (request, answer, error)."""
        with contextlib.suppress(OSError):
            while self.wakeup.recv(4096):
                pass
        with self._lock:
            done, self._done = self._done, []
        out: list[tuple[int, Any, Exception | None]] = []
        for rid, beside, future in done:
            exc = future.exception()
            try:
                value = steps.finish_beside(beside, None if exc is not None else future.result(), exc)
            except Exception as error:  # noqa: BLE001 - handed to the node, which ends the session
                out.append((rid, None, error))
            else:
                out.append((rid, value, None))
        return out

    @property
    def pending(self) -> bool:
        """Whether an ended job waits for the main thread."""
        with self._lock:
            return bool(self._done)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        self.wakeup.close()
        self._wake.close()


def _readable(sock: socket.socket, thread: _BesideThread | None = None) -> bool:
    """Whether ``sock`` has bytes to read (or an end), or a frame's physics has ended, now."""
    return bool(select.select([sock], [], [], 0)[0]) or (thread is not None and thread.pending)


def _send(sock: socket.socket, parts: list[_Part]) -> None:
    """Sends ``parts`` in order on a blocking socket, with one ``sendmsg`` unless a signal cuts it short."""
    views = [memoryview(part) for part in parts]
    while views:
        sent = sock.sendmsg(views)
        while views and sent >= len(views[0]):
            sent -= len(views[0])
            del views[0]
        if sent:
            views[0] = views[0][sent:]


def _pickled_error(rid: int, exc: Exception, ended: int | None = None) -> bytes:
    """An exception as an answer; one that does not survive pickling becomes a LocalProtocolError naming it."""
    try:
        answer = pickle.dumps((rid, False, exc, ended), protocol=pickle.HIGHEST_PROTOCOL)
        pickle.loads(answer)
        return answer
    except Exception:  # noqa: BLE001
        error = LocalProtocolError(f"protocol runner: {type(exc).__name__}: {exc}")
        return pickle.dumps((rid, False, error, ended), protocol=pickle.HIGHEST_PROTOCOL)


# -- the node's side of one session ------------------------------------------------------------


class RemoteLink:
    """One link session, as the node's link worker sees it: a handle on the runner, and a mirror.

    :attr:`mirror` holds what the session was after its last step (state,
    sequence numbers, whether a frame may go out, key bits still needed).

    Steps are coroutines; what they change of the node's state (the
    link's MAC-key reserve, the mirror, block events and LDPC decode jobs
    waiting to be taken) is applied when the step ends, even if the caller
    was cancelled meanwhile (the module docstring).
    """

    _handles = 0

    def __init__(self, runner: ProtocolRunner, reserve: AuthKeyReserve, handle: int, mirror: Mirror, config: LinkProtocolConfig) -> None:
        self.runner = runner
        self.reserve = reserve
        self.handle = handle
        self.mirror = mirror
        self._config = config
        self._events: list[BlockEvent] = []
        self._jobs: list[DecodeJob] = []
        self.closed = False

    @classmethod
    async def open(cls, runner: ProtocolRunner, spec: SessionSpec, reserve: AuthKeyReserve) -> RemoteLink:
        """A new session in ``runner``, taking ``reserve`` (the link's, which it keeps up to date) as it is now."""
        cls._handles += 1
        handle = cls._handles
        if runner.remote:
            # The runner gets copies: the node's generators must move on, or every session would repeat the first's draws.
            spec = dataclasses.replace(spec, key_rng=session_rng(spec.key_rng), noise_rng=session_rng(spec.noise_rng))
        mirror = await runner.call("open", handle, spec, reserve.copy())
        return cls(runner, reserve, handle, mirror, spec.config)

    # -- what the mirror does not say ---------------------------------------------------
    @property
    def pending_block_seq(self) -> int | None:
        """The block Bob holds pending Alice's Commit (None once settled, or lost with the runner)."""
        if self.closed or (isinstance(self.runner, ProcessRunner) and self.runner.lost is not None):
            return None
        return self.mirror.pending_block_seq

    @property
    def config(self) -> LinkProtocolConfig:
        return self._config

    @config.setter
    def config(self, config: LinkProtocolConfig) -> None:
        """Takes effect from the session's next frame (the request queues behind those already asked)."""
        self._config = config
        if not self.closed:
            _ignore_outcome(self.runner.submit("configure", self.handle, config))

    def take_events(self) -> list[BlockEvent]:
        events, self._events = self._events, []
        return events

    def take_decode_jobs(self) -> list[DecodeJob]:
        jobs, self._jobs = self._jobs, []
        return jobs

    # -- steps -----------------------------------------------------------------------------
    async def emit_frame(self, n_slots: int, at_utc: float | None, close_block: bool, ahead: bool) -> tuple[int, int, bytes]:
        """Alice's next frame: (frame ID, slots, payload)."""
        frame_id, slots, payload, mirror = await self.runner.call("emit", self.handle, n_slots, at_utc, close_block, ahead)
        self.mirror = mirror
        return frame_id, slots, payload

    async def receive_frame(self, frame_id: int, payload: bytes, at_utc: float | None) -> list[pb.ClassicalMessage]:
        """A frame (its wire form) reached Bob: what he sends (a detection report, or nothing while a block is in the way).

        Raises:
            RemoteProtocolError: The frame is malformed (checked where it is parsed, in the runner).
        """
        return await self._step("frame", frame_id, payload, at_utc)

    async def receive(self, envelope: pb.ClassicalMessage) -> list[pb.ClassicalMessage]:
        """A classical message from the peer: the answers to send. Takes the reserve (hold the link's ``step_lock``)."""
        return await self._step("receive", envelope.SerializeToString(), self.reserve.copy())

    async def decoded(self, results: list[np.ndarray | None]) -> list[pb.ClassicalMessage]:
        """LDPC decode results: the answers to send. Takes the reserve (hold the link's ``step_lock``)."""
        return await self._step("decoded", results, self.reserve.copy())

    async def _step(self, op: str, *args: Any) -> list[pb.ClassicalMessage]:
        """Runs a step; applies what it changed as soon as this task learns of it, cancelled or not.

        Raises:
            ProtocolError: What the step raised (what it changed before is applied).
        """
        future = self.runner.submit(op, self.handle, *args)
        try:
            result: StepResult = await finish_in_thread(future)
        except asyncio.CancelledError:  # the step has ended (finish_in_thread waited): what it changed stands
            if not future.cancelled() and future.exception() is None:
                self._apply(future.result())
            raise
        self._apply(result)
        if result.error is not None:
            raise result.error
        return [pb.ClassicalMessage.FromString(wire) for wire in result.outs]

    def _apply(self, result: StepResult) -> None:
        if result.reserve is not None:
            self.reserve.adopt(result.reserve)
        self.mirror = result.mirror
        self._events += result.events
        self._jobs += result.jobs

    async def settle_pending(self, accepted: bool) -> list[BlockEvent]:
        """Accepts or drops the block held pending Alice's Commit (after a Hello); the session ends.

        Takes the reserve (a refill may be staged): hold the link's ``step_lock``.
        """
        if self.pending_block_seq is None:
            return []
        self.closed = True
        events, reserve = await self.runner.call("settle", self.handle, accepted, self.reserve.copy())
        self.reserve.adopt(reserve)
        return list(events)

    def abandon(self, reason: str, on_events: Callable[[list[BlockEvent]], None]) -> None:
        """The session broke: posts its clean-up; ``on_events`` gets the block events it ends with (events
        of a step that ended as the session was cancelled come first).

        Returns at once (clean-up paths may be cancelled themselves); the
        session stays in the runner as long as it holds a pending block.
        """
        held = self.take_events()
        if self.closed:
            on_events(held)
            return
        future = self.runner.submit("abandon", self.handle, reason)

        def done(finished: asyncio.Future[Any]) -> None:
            events = list(held)
            if not finished.cancelled() and finished.exception() is None:
                more, mirror = finished.result()
                events += more
                self.mirror = mirror
                self.closed = mirror.pending_block_seq is None
            else:
                self.closed = True
            on_events(events)

        if future.done():
            done(future)
        else:
            future.add_done_callback(done)

    def drop(self) -> None:
        """Forgets the session in the runner (a pending block that will never be settled)."""
        if not self.closed:
            self.closed = True
            _ignore_outcome(self.runner.submit("drop", self.handle))


def session_rng(rng: Any) -> Any:
    """A generator for one session, drawn from ``rng`` (which moves on): numpy's are spawned, a CSPRNG is new.

    Raises:
        LocalProtocolError: ``rng`` is neither (it could not be copied into a protocol process safely).
    """
    if isinstance(rng, CsprngGenerator | np.random.Generator):
        return spawn_generator(rng)
    raise LocalProtocolError(f"protocol runner: cannot hand a {type(rng).__name__} to another process")


def _ignore_outcome(future: asyncio.Future[Any]) -> None:
    """A posted request whose result nobody needs: its exception is retrieved, so asyncio does not report it."""
    future.add_done_callback(lambda done: done.cancelled() or done.exception())


