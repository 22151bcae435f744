"""Link workers: the pure link sessions wired to grpc.aio.

Alice's end is a client task with reconnection and back-off; Bob's end is two
servicer methods (the quantum-channel stream and the classical session).
They translate, pace, enforce deadlines and log; every protocol decision is
made by :mod:`qcinode.core.pipeline`, and the reconnection Hello (what the two
ends keep after a break, and the one-time MAC keys that authenticate it) by
:mod:`qcinode.core.resync`. The protocol steps run in the node's protocol
thread and the state is written in its storage thread
(:mod:`qcinode.node.offload`), so that the event loop keeps serving keys.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import math
import multiprocessing
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import numpy as np
import structlog

from ..core.channel import Idle, SlotClock, next_frame
from ..core.clock import NetworkClock
from ..core.physics import PhotonFrame
from ..core.pipeline import LinkState as Phase
from ..core.randomness import KeyRandomness
from ..core.resync import CursorBehind, HelloExchange, HelloRefused, LinkSnapshot, Reconciliation
from ..core.roles import Role
from ..errors import (
    AuthenticationFailed,
    OutOfSequence,
    PeerUnavailable,
    ProtocolError,
    QcinodeError,
    RemoteProtocolError,
    SessionAborted,
    StorageFailure,
    TransportError,
    Unauthorized,
)
from ..status import LinkState
from ..transport import codec
from ..transport.errors import rpc_errors
from ..transport.pb import link_pb2 as pb
from ..transport.pb import link_pb2_grpc as pb_grpc
from .access import caller_common_name
from .faults import FaultInjector
from .offload import Offload
from .protocol_worker import RemoteLink, SessionSpec
from .runtime import LinkRuntime, next_frame_slots
from .tasks import Companions, cancelled_when

log = structlog.get_logger(__name__)

STAGE_TIMEOUT_S = 30.0
#: Worker processes of the LDPC decoding pool (the machines qcinode targets have 2+ cores).
LDPC_DECODE_WORKERS = 2
#: How long Alice waits for Bob's answer while he decodes LDPC frames: a block's
#: decoding is tens of CPU-seconds on a loaded machine, past the stage timeout.
LDPC_DECODE_TIMEOUT_S = 120.0

# A fault hook on the classical channel: given the link, the direction ("A>B"
# or "B>A") and an outgoing message, returns what to send instead — the
# message, a changed copy, nothing (drop), or several (replay). Delays are the
# hook's to await. Nodes use `FaultInjector.classical`; tests may pass their own.
ClassicalFault = Callable[[str, str, pb.ClassicalMessage], Awaitable[list[pb.ClassicalMessage]]]

HELLO_TIMEOUT_S = 10.0
SUPERSEDE_WAIT_S = 2.0  # how long a new session waits for the one it replaces to clean up
CONNECT_TIMEOUT_S = 10.0
BACKOFF_INITIAL_S = 0.2
BACKOFF_MAX_S = 5.0


def link_snapshot(rt: LinkRuntime) -> LinkSnapshot:
    """What this end of the link holds, as its Hello says (everything in it is saved first)."""
    pending = rt.pending_bob.pending_block_seq if rt.pending_bob is not None else None
    return LinkSnapshot(
        link_id=rt.link_id,
        role=rt.role,
        next_block_seq=rt.next_block_seq,
        next_frame_id=rt.next_frame_id,
        auth_cursor=rt.auth.cursor,
        promoted_before=rt.auth.promoted_before,
        held_block_seqs=tuple(int(block_id.rsplit("/", 1)[1]) for block_id in rt.pool.block_ids),
        staged_block_seqs=rt.auth.staged_block_seqs,
        pending_block_seq=None if pending is None else int(pending),
    )


async def apply_reconciliation(rt: LinkRuntime, plan: Reconciliation) -> None:
    """This end's side of an authenticated Hello exchange (its MAC-key reserve is already done).

    Settles the block held pending Alice's Commit, keeps only the blocks both
    ends hold, and moves the sequence numbers on; the caller saves. Call it
    holding the link's ``step_lock`` (settling may stage a MAC-key refill).
    """
    pending, rt.pending_bob = rt.pending_bob, None
    if pending is not None:
        if plan.accept_pending is not None:
            rt.record(await pending.settle_pending(plan.accept_pending))
        else:
            pending.drop()
    keep = {f"{rt.link_id}/{seq}" for seq in plan.keep_block_seqs}
    rt.pool.retain_only(keep & set(rt.pool.block_ids))
    rt.next_block_seq = max(rt.next_block_seq, plan.next_block_seq)
    rt.next_frame_id = max(rt.next_frame_id, plan.next_frame_id)


class AliceWorker:
    """The transmitting end of one link: connects to Bob and runs blocks forever."""

    def __init__(
        self,
        rt: LinkRuntime,
        channel_factory: Callable[[], grpc.aio.Channel],
        clock: NetworkClock | None,
        key_rng: KeyRandomness,
        noise_rng: np.random.Generator,
        *,
        faults: FaultInjector | None = None,
        fault: ClassicalFault | None = None,
        stage_timeout_s: float = STAGE_TIMEOUT_S,
        offload: Offload | None = None,
    ) -> None:
        self.faults = faults or FaultInjector()
        self.fault = fault or self.faults.classical
        self.stage_timeout_s = stage_timeout_s
        self.offload = offload or Offload.inline()
        self.rt = rt
        self.channel_factory = channel_factory
        self.clock = clock
        self.speed = clock.speed if clock is not None else None
        self.key_rng = key_rng
        self.noise_rng = noise_rng
        self.log = log.bind(link_id=rt.link_id, peer_id=rt.peer, role="alice")

    async def run(self) -> None:
        backoff = BACKOFF_INITIAL_S
        while True:
            if self.faults.partitioned(self.rt.link_id):
                self.rt.state = LinkState.DOWN
                self.log.warning("link.partitioned", details="classical channel cut by a fault; waiting for it to be restored")
                while self.faults.partitioned(self.rt.link_id):
                    await asyncio.sleep(0.2)
                self.log.info("link.partition_healed")
            self.rt.state = LinkState.CONNECTING
            try:
                with rpc_errors(f"session with {self.rt.peer}"):
                    async with self.channel_factory() as channel:
                        await self._connect(channel)
                        await self._session_until_cut(channel)
            except asyncio.CancelledError:
                raise
            except TransportError as exc:
                if exc.code:  # a failed call: the peer went away, refused, or timed out
                    self.log.info("link.session_failed", code=exc.code, details=exc.details)
                else:
                    self.log.warning("link.session_failed", error=type(exc).__name__, details=str(exc))
            except (QcinodeError, TimeoutError) as exc:
                self.log.warning("link.session_failed", error=type(exc).__name__, details=str(exc))
            except Exception:
                self.log.exception("link.session_crashed")
            self.rt.state = LinkState.DOWN
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX_S)
            if self.rt.counters.blocks_done:
                backoff = min(backoff, 1.0)

    async def _connect(self, channel: grpc.aio.Channel) -> None:
        """Waits until the channel is connected, name resolution included.

        The channel retries resolution and connection on its own back-off
        while we wait; a call made at once would fail fast instead, and a new
        channel would start resolving from scratch (a peer whose DNS name
        appears only once its pod is ready could then stay unreachable).
        """
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                await channel.channel_ready()
        except TimeoutError:
            raise TransportError(f"cannot connect to {self.rt.peer} within {CONNECT_TIMEOUT_S:g} s") from None

    async def _session_until_cut(self, channel: grpc.aio.Channel) -> None:
        """Runs a session; a partition fault ends it at once, as a cut cable would (its clean-up runs first)."""
        cut = self.faults.cut_event(self.rt.link_id)
        async with cancelled_when(cut, lambda: PeerUnavailable("classical channel cut by a partition fault")):
            await self._session(channel)

    async def _session(self, channel: grpc.aio.Channel) -> None:
        rt = self.rt
        exchange = HelloExchange(link_snapshot(rt), rt.auth)
        opening = exchange.start()
        # The Hello reveals only saved state, and its two MAC keys are saved
        # as used before it leaves (a failed save leaves memory ahead of the disk).
        await rt.persist_async(self.offload.storage)
        call = pb_grpc.PostProcessingStub(channel).Session()
        try:
            for wire in await self.fault(rt.link_id, "A>B", codec.encode_hello(opening)):
                await call.write(wire)
            async with asyncio.timeout(HELLO_TIMEOUT_S):
                first = await call.read()
            if first is grpc.aio.EOF or first.WhichOneof("body") != "hello":
                raise RemoteProtocolError("peer did not answer with hello")
            try:
                exchange.receive(codec.decode_hello(first.hello))
            except HelloRefused as exc:
                self.log.warning("link.hello_refused", reason=exc.reason.value, details=str(exc))
                raise
        except BaseException:
            call.cancel()
            raise
        result = exchange.result
        if isinstance(result, CursorBehind):
            await rt.persist_async(self.offload.storage)
            call.cancel()
            self.log.warning(
                "link.cursor_behind",
                auth_cursor=result.auth_cursor,
                details="our MAC-key cursor was behind the peer's (state lost or rolled back): skipped forward, dialling again",
            )
            raise TransportError("MAC-key cursor was behind the peer's; dialling again")
        assert isinstance(result, Reconciliation)
        async with rt.step_lock:
            await apply_reconciliation(rt, result)
        await rt.persist_async(self.offload.storage)
        quantum = pb_grpc.QuantumChannelStub(channel).Transmit()
        try:
            spec = SessionSpec(True, rt.config, self.key_rng, self.noise_rng, rt.next_block_seq, rt.next_frame_id)
            alice = await RemoteLink.open(self.offload.runner, spec, rt.auth)
        except BaseException:
            quantum.cancel()
            call.cancel()
            raise
        rt.alice_session = alice
        rt.state = LinkState.UP
        self.log.info("link.session_started", next_block_seq=rt.next_block_seq, auth_cursor=rt.auth.cursor)
        rate_hz = rt.link.source.rate_hz
        # The link's emulated position: it starts where the network clock stands
        # (nothing crossed the channel while the session was down) and never runs
        # ahead of it; without a clock (speed max) it is the time its pulses took.
        position = SlotClock(self.clock.now(time.time()) if self.clock is not None else rt.emulated_s, rate_hz)
        try:
            async with Companions() as companions:
                companions.start(self._drain_acks(quantum), name=f"{rt.link_id} acks")
                await self._run_blocks(alice, call, quantum, position)
        finally:
            if rt.alice_session is alice:
                rt.alice_session = None
            alice.abandon(_lost_reason(rt, self.faults), functools.partial(_record_last, rt, self.log))
            quantum.cancel()
            call.cancel()

    async def _run_blocks(self, alice: RemoteLink, call: Any, quantum: Any, position: SlotClock) -> None:
        """The session's loop: frames out, classical messages in and out, until the session breaks.

        Alice sifts ahead (the pipeline's rule 2a): while a block is post-processed
        (Cascade's round trips, LDPC's decoding, privacy amplification) the next
        block's frames go out, as a real link's source does not stop for its
        post-processing. A frame that must wait for the clock (or for the channel's
        next window) waits *beside* the open block's messages, never in front of
        them: whichever comes first is handled first. A frame's pulses are drawn
        beside them too (the protocol process draws them on a thread of their
        own, the pipeline's rule 1b): the frame goes out when they are drawn,
        and the messages that come meanwhile are handled meanwhile.
        """
        rt = self.rt
        rate_hz = rt.link.source.rate_hz
        incoming: asyncio.Task[Any] | None = None  # the next message, while a frame waits or is drawn beside it
        emitting: asyncio.Task[tuple[int, int, bytes]] | None = None  # the frame being drawn
        emitting_at: float | None = None  # the instant it is sampled at
        try:
            while True:
                envelope: Any = None
                if emitting is None and alice.mirror.can_sift_ahead:
                    block_open = not alice.mirror.is_ready_for_frame
                    t = position.now_utc
                    want = next_frame_slots(rt.config, rate_hz, self.speed, alice.mirror.key_bits_needed, at_utc=t)
                    plan = next_frame(rt.channel, t, rate_hz, want)
                    if isinstance(plan, Idle):
                        if not block_open:
                            position.jump_to(await self._idle(plan, t))
                            continue
                        # The channel is dark: the open block is finished first.
                    else:
                        rt.channel_idle = None
                        delay = 0.0
                        if self.clock is not None:
                            rt.link_utc = plan.end_utc
                            delay = self.clock.wall_delay_s(plan.end_utc, time.time())
                            rt.lag_s = max(0.0, -delay * self.clock.speed)
                        if delay > 0 and block_open:
                            incoming = incoming or asyncio.ensure_future(call.read())
                            done, _ = await asyncio.wait({incoming}, timeout=delay)
                            if done:  # a message of the open block came first: it is handled, the frame planned again
                                envelope, incoming = incoming.result(), None
                        elif delay > 0:
                            await asyncio.sleep(delay)
                        if envelope is None:
                            at_utc = plan.at_utc if rt.config.channel is not None else None
                            # emit_frame draws pulses and touches no MAC key: no snapshot of the reserve needed.
                            emitting = asyncio.ensure_future(alice.emit_frame(plan.n_slots, at_utc, plan.close_block, True))
                            emitting_at = at_utc
                            position.advance(plan.n_slots)
                            rt.note_frame(plan.n_slots)
                if envelope is None:
                    waiting = self.stage_timeout_s
                    if rt.config.error_correction == "ldpc" and alice.mirror.state is Phase.RECONCILING:
                        waiting = max(waiting, LDPC_DECODE_TIMEOUT_S)  # Bob is decoding
                    if emitting is None:  # the common case: no task, no wait set
                        async with asyncio.timeout(waiting):
                            envelope = await (incoming or call.read())
                        incoming = None
                    else:
                        incoming = incoming or asyncio.ensure_future(call.read())
                        async with asyncio.timeout(waiting):
                            await asyncio.wait({incoming, emitting}, return_when=asyncio.FIRST_COMPLETED)
                        if emitting.done():
                            frame_id, n_slots, payload = emitting.result()
                            emitting = None
                            rt.next_frame_id = alice.mirror.next_frame_id
                            await quantum.write(
                                pb.PulseFrame(link_id=rt.link_id, frame_id=frame_id, n_slots=n_slots, payload=payload, at_utc=emitting_at or 0.0)
                            )
                        if not incoming.done():
                            continue  # the frame is out; its detection report (or a message of the open block) comes next
                        envelope, incoming = incoming.result(), None
                if envelope is grpc.aio.EOF:
                    raise TransportError("peer closed the classical channel")
                cursor = rt.auth.cursor
                async with rt.step_lock:
                    outs = await alice.receive(envelope)
                rt.next_block_seq = alice.mirror.next_block_seq
                events = rt.record(alice.take_events())
                rt.stages.step(alice.mirror.state, events, time.monotonic())
                if events or rt.auth.cursor != cursor:
                    await rt.persist_async(self.offload.storage)  # before the tag or the Commit leaves
                self._log_events(events)
                for out in outs:
                    for wire in await self.fault(rt.link_id, "A>B", out):
                        await call.write(wire)
        finally:
            if incoming is not None:
                incoming.cancel()
            if emitting is not None:
                emitting.cancel()

    async def _idle(self, idle: Idle, t: float) -> float:
        """The channel carries nothing until ``idle.until_utc`` (between passes): wait for the clock.

        Returns the link's new emulated position. A link that lags the clock
        skips the idle stretch at once (no pulse crossed it); one that keeps
        pace sleeps until the clock reaches the next window.
        """
        rt = self.rt
        rt.channel_idle = idle
        rt.lag_s = 0.0
        if self.clock is None or not math.isfinite(idle.until_utc):
            # No clock, or no window ever again: nothing more will cross this channel.
            self.log.info("link.channel_idle", note=idle.note, until="never")
            await asyncio.Event().wait()
        assert self.clock is not None
        delay = self.clock.wall_delay_s(idle.until_utc, time.time())
        if delay > 0:
            await asyncio.sleep(delay)
        rt.link_utc = max(t, idle.until_utc)
        return rt.link_utc

    async def _drain_acks(self, quantum: Any) -> None:
        """Reads the quantum stream's acknowledgements (flow control) until it ends; a broken stream ends the session elsewhere."""
        with contextlib.suppress(grpc.aio.AioRpcError):
            async for _ack in quantum:
                pass

    def _log_events(self, events: list[Any]) -> None:
        for event in events:
            _log_block(self.log, event)


def _record_last(rt: LinkRuntime, logger: Any, events: list[Any]) -> None:
    """A broken session's last block events (its open block aborted): recorded, logged and saved."""
    for event in rt.record(events):
        _log_block(logger, event)
    rt.try_persist()


def _lost_reason(rt: LinkRuntime, faults: FaultInjector) -> str:
    """Why a session's open block is abandoned: its state could not be saved, the satellite's contact ended, or the session broke."""
    if rt.storage_failure is not None:
        return "storage_write_failed"
    return "contact_ended" if faults.out_of_contact(rt.link_id) else "session_lost"


def _storage_refusal(rt: LinkRuntime, exc: StorageFailure) -> StorageFailure:
    """What the peer is told when this end cannot save the link's state (UNAVAILABLE): which node and why, no file names."""
    local = rt.link.bob if rt.role is Role.BOB else rt.link.alice
    return StorageFailure(f"{local} cannot save the state of link {rt.link_id}: {exc.reason}", path=exc.path, reason=exc.reason)


def _log_block(logger: Any, event: Any) -> None:
    s = event.stats
    if hasattr(event, "key"):
        logger.info(
            "link.block_done",
            block_seq=event.block_seq,
            key_bits=s.key_bits,
            qber=round(s.qber, 5),
            leak_bits=s.leak_bits,
            ec_efficiency=round(s.ec_efficiency, 4),
            secret_bits=s.secret_bits,
            cascade_rounds=s.cascade_rounds,
        )
    else:
        logger.info("link.block_aborted", block_seq=event.block_seq, reason=event.reason, key_bits=s.key_bits, test_qber=round(s.test_qber, 5))


class BobEndpoint:
    """Bob's side of every link where this node receives: two gRPC servicers share it."""

    def __init__(
        self,
        links: dict[str, LinkRuntime],
        rng_factory: Callable[[], tuple[KeyRandomness, np.random.Generator]],
        *,
        faults: FaultInjector | None = None,
        fault: ClassicalFault | None = None,
        stage_timeout_s: float = STAGE_TIMEOUT_S,
        offload: Offload | None = None,
    ) -> None:
        self.faults = faults or FaultInjector()
        self.fault = fault or self.faults.classical
        self.stage_timeout_s = stage_timeout_s
        self.offload = offload or Offload.inline()
        self.links = links
        self.rng_factory = rng_factory
        self.frames: dict[str, asyncio.Queue[tuple[int, bytes, float | None]]] = {
            link_id: asyncio.Queue(maxsize=4) for link_id, rt in links.items()
        }
        self.inboxes: dict[str, asyncio.Queue[tuple[str, Any]]] = {}
        self.ended: dict[str, asyncio.Event] = {}  # per link: set once its current session has cleaned up
        self._decode_pool: concurrent.futures.Executor | None = None
        self._ending = asyncio.Event()  # set as the node stops: the peers' streams end here (end_streams)

    def decode_pool(self) -> concurrent.futures.Executor:
        """The process pool that decodes LDPC frames, shared by this node's links (made on first use).

        Processes, since the decoder holds the GIL; spawned, not forked, since
        grpc's threads make fork unsafe. Its workers end with the process.
        """
        if self._decode_pool is None:
            self._decode_pool = concurrent.futures.ProcessPoolExecutor(
                max_workers=LDPC_DECODE_WORKERS, mp_context=multiprocessing.get_context("spawn")
            )
        return self._decode_pool

    def end_streams(self) -> None:
        """Ends every peer's pulse and session stream here, with status OK, as the node stops.

        Called before the gRPC server's grace period: a stream still open when
        it ran out would be cancelled inside gRPC, which logs that as an
        unhandled error, while the peer is simply told the session is over.
        """
        self._ending.set()
        for inbox in self.inboxes.values():
            inbox.put_nowait(("stopping", None))

    def close(self) -> None:
        """Stops the decoding pool: queued frames are dropped, workers exit after their frame."""
        if self._decode_pool is not None:
            self._decode_pool.shutdown(wait=False, cancel_futures=True)
            self._decode_pool = None

    def _runtime(self, link_id: str, peer_cn: str) -> LinkRuntime | None:
        rt = self.links.get(link_id)
        if rt is None or rt.role.value != "bob" or rt.peer != peer_cn:
            return None
        return rt

    async def transmit(self, request_iterator: AsyncIterator[pb.PulseFrame], context: grpc.aio.ServicerContext) -> AsyncIterator[pb.FrameAck]:
        peer_cn = caller_common_name(context)
        # The stream's headers go out at once: the transmitter (and a test) can
        # tell a stream this end serves from one gRPC has not dispatched yet.
        await context.send_initial_metadata(())
        arrivals = aiter(request_iterator)
        ending = asyncio.ensure_future(self._ending.wait())
        arriving: asyncio.Future[pb.PulseFrame | None] | None = None
        try:
            while True:
                arriving = asyncio.ensure_future(anext(arrivals, None))
                await asyncio.wait((arriving, ending), return_when=asyncio.FIRST_COMPLETED)
                if not arriving.done():  # the node stops
                    arriving.cancel()
                    return
                frame = arriving.result()
                if frame is None:
                    return
                yield await self._take_frame(frame, peer_cn)
        finally:
            ending.cancel()
            if arriving is not None:
                arriving.cancel()

    async def _take_frame(self, frame: pb.PulseFrame, peer_cn: str) -> pb.FrameAck:
        """One pulse frame of a peer's stream: checked, queued for Bob's session; its acknowledgement."""
        rt = self._runtime(frame.link_id, peer_cn)
        if rt is None:
            raise Unauthorized(f"{peer_cn!r} is not the transmitter of link {frame.link_id!r}")
        try:
            n_slots = PhotonFrame.header_slots(frame.payload)  # the rest is checked where it is parsed
        except ProtocolError as exc:
            raise RemoteProtocolError(f"malformed pulse frame: {exc}") from exc
        if n_slots != frame.n_slots:
            raise RemoteProtocolError("pulse frame n_slots does not match its payload")
        await self.frames[rt.link_id].put((frame.frame_id, frame.payload, frame.at_utc or None))
        rt.note_frame(n_slots)
        return pb.FrameAck(frame_id=frame.frame_id)

    async def session(self, request_iterator: AsyncIterator[pb.ClassicalMessage], context: grpc.aio.ServicerContext) -> AsyncIterator[pb.ClassicalMessage]:
        peer_cn = caller_common_name(context)
        iterator = request_iterator.__aiter__()
        try:
            async with asyncio.timeout(HELLO_TIMEOUT_S):
                first = await anext(iterator)
        except (StopAsyncIteration, TimeoutError):
            return
        if first.WhichOneof("body") != "hello":
            raise OutOfSequence("a session starts with hello")
        rt = self._runtime(first.hello.link_id, peer_cn)
        if rt is None:
            raise Unauthorized(f"{peer_cn!r} is not the transmitter of link {first.hello.link_id!r}")
        if self.faults.partitioned(rt.link_id):
            raise PeerUnavailable(f"classical channel of {rt.link_id} cut by a partition fault")
        bound = log.bind(link_id=rt.link_id, peer_id=rt.peer, role="bob")
        try:
            hello = codec.decode_hello(first.hello)
            # Checked on a copy first: a Hello that fails (tampered, forged,
            # replayed) changes nothing, not even the session that is running
            # (copied between two of its protocol steps, never during one).
            async with rt.step_lock:
                reserve = rt.auth.copy()
            HelloExchange(link_snapshot(rt), reserve).receive(hello)
        except (HelloRefused, RemoteProtocolError) as exc:
            reason = exc.reason.value if isinstance(exc, HelloRefused) else "malformed"
            bound.warning("link.hello_refused", reason=reason, details=str(exc))
            raise AuthenticationFailed(f"hello refused: {reason}") from None
        old = self.inboxes.get(rt.link_id)
        if old is not None:
            old.put_nowait(("superseded", None))
            ended = self.ended.get(rt.link_id)
            if ended is not None:
                # The old session settles its open block (and may leave one
                # pending) before this one takes the link's state.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(SUPERSEDE_WAIT_S):
                        await ended.wait()
        # An old session that outlived the wait may be inside a protocol step (on a copy of
        # the reserve, adopted when it ends): the exchange waits for it to end.
        async with rt.step_lock:
            exchange = HelloExchange(link_snapshot(rt), rt.auth)
            try:
                answers = exchange.receive(hello)
            except HelloRefused as exc:  # the old session moved the cursor past the Hello's keys
                bound.warning("link.hello_refused", reason=exc.reason.value, details=str(exc))
                raise AuthenticationFailed(f"hello refused: {exc.reason.value}") from None
            result = exchange.result
            if isinstance(result, Reconciliation):
                await apply_reconciliation(rt, result)
        try:
            await rt.persist_async(self.offload.storage)  # before the answer, whose tag uses a key this saves as used
        except StorageFailure as exc:
            raise _storage_refusal(rt, exc) from exc
        if isinstance(result, CursorBehind):
            bound.warning("link.peer_cursor_behind", auth_cursor=result.auth_cursor, details="the peer's MAC-key cursor is behind ours: told it where we are")
            for answer in answers:
                for wire in await self.fault(rt.link_id, "B>A", codec.encode_hello(answer)):
                    yield wire
            return
        frames = self.frames[rt.link_id]
        while not frames.empty():  # frames of a previous session are stale
            frames.get_nowait()
        inbox: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self.inboxes[rt.link_id] = inbox
        ended_event = self.ended[rt.link_id] = asyncio.Event()
        key_rng, noise_rng = self.rng_factory()
        ldpc = rt.config.error_correction == "ldpc"
        bob = await RemoteLink.open(
            self.offload.runner, SessionSpec(False, rt.config, key_rng, noise_rng, rt.next_block_seq, defer_decoding=ldpc), rt.auth
        )
        rt.state = LinkState.UP
        bound.info("link.session_started", next_block_seq=rt.next_block_seq, auth_cursor=rt.auth.cursor)

        async def pump_messages() -> None:
            try:
                async for envelope in iterator:
                    await inbox.put(("message", envelope))
            except grpc.aio.AioRpcError:
                pass  # the peer's stream broke: the session ends at the eof below
            finally:
                inbox.put_nowait(("eof", None))

        async def pump_frames() -> None:
            while True:
                await inbox.put(("frame", await frames.get()))

        async def watch_cut() -> None:
            await self.faults.cut_event(rt.link_id).wait()
            inbox.put_nowait(("cut", None))

        async def measure(item: tuple[int, bytes, float | None]) -> None:
            # A frame's step runs beside the messages that come meanwhile (a protocol
            # process measures it on a thread of its own, the pipeline's rule 1a):
            # its report comes back through the inbox.
            try:
                outs = await bob.receive_frame(*item)  # touches no MAC key
            except Exception as exc:  # noqa: BLE001 - the session ends on it, in the loop below
                inbox.put_nowait(("frame_failed", exc))
                return
            inbox.put_nowait(("measured", outs))

        async def decode(jobs: list[tuple[int, int, np.ndarray, np.ndarray]]) -> None:
            # The block's frames decode in the pool while the loop goes on taking
            # frames and sifting messages of the next block; the results come
            # back through the inbox, in job order.
            from ..core.ldpc_reconciliation import decode_frame  # noqa: PLC0415 - the ldpc extra

            loop = asyncio.get_running_loop()
            pool = self.decode_pool()
            try:
                results = await asyncio.gather(*(loop.run_in_executor(pool, decode_frame, *job) for job in jobs))
            except Exception as exc:  # noqa: BLE001 - a broken pool ends the session, it must not crash the companion
                inbox.put_nowait(("decode_failed", exc))
                return
            inbox.put_nowait(("decoded", list(results)))

        try:
            async with Companions() as companions:
                companions.start(pump_messages(), name=f"{rt.link_id} messages")
                companions.start(pump_frames(), name=f"{rt.link_id} frames")
                companions.start(watch_cut(), name=f"{rt.link_id} cut")
                for answer in answers:
                    for wire in await self.fault(rt.link_id, "B>A", codec.encode_hello(answer)):
                        yield wire
                while True:
                    kind, item = await inbox.get()
                    if kind in ("eof", "superseded", "stopping"):
                        break
                    if kind == "cut":
                        bound.warning("link.partitioned", details="classical channel cut by a fault")
                        raise PeerUnavailable(f"classical channel of {rt.link_id} cut by a partition fault")
                    if kind == "decode_failed":
                        bound.warning("link.decode_failed", details=str(item))
                        raise SessionAborted(f"LDPC decoding failed: {item}")
                    if kind == "frame":
                        companions.start(measure(item), name=f"{rt.link_id} frame {item[0]}")
                        continue
                    cursor = rt.auth.cursor
                    try:
                        if kind == "frame_failed":
                            raise item
                        if kind == "measured":
                            outs = item
                        elif kind == "decoded":
                            # The block's decodes came back from the pool (LDPC): meanwhile
                            # the loop went on taking frames and sifting the next block.
                            async with rt.step_lock:
                                outs = await bob.decoded(item)
                        else:
                            async with rt.step_lock:
                                outs = await bob.receive(item)
                    except ProtocolError as exc:
                        bound.warning("link.protocol_error", details=str(exc))
                        raise SessionAborted(f"protocol error: {exc}") from exc
                    jobs = bob.take_decode_jobs()
                    if jobs:
                        companions.start(decode(jobs), name=f"{rt.link_id} decode")
                    rt.next_block_seq = bob.mirror.next_block_seq
                    events = rt.record(bob.take_events())
                    if events or rt.auth.cursor != cursor:
                        try:
                            await rt.persist_async(self.offload.storage)  # before the tag leaves
                        except StorageFailure as exc:
                            raise _storage_refusal(rt, exc) from exc  # nothing that depends on the unsaved state is sent
                    for event in events:
                        _log_block(bound, event)
                    for out in outs:
                        for wire in await self.fault(rt.link_id, "B>A", out):
                            yield wire
        finally:
            bob.abandon(_lost_reason(rt, self.faults), functools.partial(_record_last, rt, bound))
            if bob.pending_block_seq is not None:
                if rt.pending_bob is not None and rt.pending_bob is not bob:
                    rt.pending_bob.drop()
                rt.pending_bob = bob
            if self.inboxes.get(rt.link_id) is inbox:
                del self.inboxes[rt.link_id]
                rt.state = LinkState.DOWN
            ended_event.set()
            bound.info("link.session_ended")
