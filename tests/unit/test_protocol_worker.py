"""Link sessions run in a protocol runner (qcinode.node.protocol_worker), the node keeping the MAC-key reserve.

Checked: a link run through a runner makes exactly the keys, events and
reserve of the same link run in place; a step that raises hands back what it
changed before; a cancelled caller's step still changes the reserve and keeps
its events; a session holding a block pending Alice's Commit outlives its
abandonment until it is settled; a frame step may not touch the reserve;
each session gets generators of its own.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from qcinode.core.authentication import AuthKeyReserve
from qcinode.core.pair import make_pair, pump
from qcinode.core.pipeline import AliceLink, BlockAborted, BlockAccepted, BobLink, LinkProtocolConfig
from qcinode.core.randomness import CsprngGenerator
from qcinode.errors import LocalProtocolError, RemoteProtocolError
from qcinode.node.protocol_worker import InlineRunner, LinkSteps, ProtocolRunner, SessionSpec, ThreadRunner, session_rng
from qcinode.transport.pb import link_pb2 as pb
from tests.support.remote_pair import RemotePair, open_pair, pump_remote
from tests.unit.test_pipeline import BOOTSTRAP, config, frame_slots_for


@pytest.fixture(params=["inline", "thread"])
def runner(request: pytest.FixtureRequest) -> Iterator[ProtocolRunner]:
    made: ProtocolRunner = InlineRunner() if request.param == "inline" else ThreadRunner("test")
    yield made
    made.close()


def _keys(events: list[Any]) -> list[tuple[str, bytes]]:
    return [(e.block_id, e.key) for e in events if isinstance(e, BlockAccepted)]


def test_a_link_run_through_a_runner_makes_the_keys_and_reserve_of_one_run_in_place(runner: ProtocolRunner) -> None:
    cfg = config(block_bits=20_000)
    slots = frame_slots_for(cfg)
    alice, bob = make_pair(cfg, BOOTSTRAP, seed=5)
    in_place = pump(alice, bob, frame_slots=slots, blocks=3)

    async def remote() -> RemotePair:
        return await pump_remote(await open_pair(runner, cfg, BOOTSTRAP, seed=5), frame_slots=slots, blocks=3)

    pair = asyncio.run(remote())
    assert len(_keys(in_place.alice_events)) == 3
    assert _keys(pair.alice_events) == _keys(in_place.alice_events) == _keys(pair.bob_events)
    assert [e.stats for e in pair.bob_events] == [e.stats for e in in_place.bob_events]
    # The node's reserves moved exactly as the sessions' own did in place (three MAC keys a block).
    assert pair.alice_reserve.to_state() == alice.auth.to_state()
    assert pair.bob_reserve.to_state() == bob.auth.to_state()
    assert pair.alice_reserve.cursor == 9
    assert pair.alice.mirror.next_block_seq == alice.next_block_seq == 3


async def _until_confirm(pair: RemotePair, slots: int) -> pb.ClassicalMessage:
    """Drives the pair until Alice sends Confirm; returns it undelivered."""
    while True:
        frame_id, _, payload = await pair.alice.emit_frame(slots, None, False, False)
        pending = [("B>A", out) for out in await pair.bob.receive_frame(frame_id, payload, None)]
        while pending:
            direction, envelope = pending.pop(0)
            if direction == "A>B" and envelope.WhichOneof("body") == "confirm":
                return envelope
            target = pair.alice if direction == "B>A" else pair.bob
            pending += [("A>B" if direction == "B>A" else "B>A", out) for out in await target.receive(envelope)]


def test_a_rejected_confirm_spends_the_keys_that_checked_it(runner: ProtocolRunner) -> None:
    cfg = config(block_bits=20_000)

    async def scenario() -> tuple[int, int, list[str]]:
        pair = await open_pair(runner, cfg, BOOTSTRAP, seed=8)
        confirm = await _until_confirm(pair, frame_slots_for(cfg))
        before = pair.bob_reserve.cursor
        confirm.confirm.auth_tag = bytes(b ^ 0xFF for b in confirm.confirm.auth_tag)
        answers = await pair.bob.receive(confirm)
        return before, pair.bob_reserve.cursor, [a.WhichOneof("body") for a in answers]

    before, after, answers = asyncio.run(scenario())
    assert answers == ["verdict"]
    assert after == before + 3  # Bob took the block's three keys to check the tag: they are spent


def test_a_step_that_raises_hands_back_what_it_changed_before(runner: ProtocolRunner, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = config(block_bits=20_000)

    def spends_then_breaks(self: BobLink, msg: Any) -> Any:
        self.auth.take(2)
        assert self.block is not None  # Confirm comes while Bob's block is open
        self.events.append(BlockAborted(41, "protocol_error", self.block.stats()))
        raise RemoteProtocolError("a message that breaks the protocol")

    async def scenario() -> tuple[int, int, list[Any]]:
        pair = await open_pair(runner, cfg, BOOTSTRAP, seed=8)
        confirm = await _until_confirm(pair, frame_slots_for(cfg))
        before = pair.bob_reserve.cursor
        monkeypatch.setattr(BobLink, "receive", spends_then_breaks)
        with pytest.raises(RemoteProtocolError, match="breaks the protocol"):
            await pair.bob.receive(confirm)
        return before, pair.bob_reserve.cursor, pair.bob.take_events()

    before, after, events = asyncio.run(scenario())
    assert after == before + 2 and [e.block_seq for e in events] == [41]


class _GatedRunner(InlineRunner):
    """Runs each request only when the test opens the gate (to cancel a caller while its step runs)."""

    def __init__(self) -> None:
        super().__init__()
        self.gated = False
        self.held: list[tuple[asyncio.Future[Any], str, tuple[Any, ...]]] = []

    def submit(self, op: str, *args: Any) -> asyncio.Future[Any]:
        if not self.gated:
            return super().submit(op, *args)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.held.append((future, op, args))
        return future

    def release(self) -> None:
        for future, op, args in self.held:
            future.set_result(self.steps.handle(op, args))
        self.held.clear()


def test_a_cancelled_callers_step_still_changes_the_reserve_and_keeps_its_events() -> None:
    cfg = config(block_bits=20_000)
    runner = _GatedRunner()

    async def scenario() -> tuple[int, int, list[Any], list[Any]]:
        pair = await open_pair(runner, cfg, BOOTSTRAP, seed=8)
        confirm = await _until_confirm(pair, frame_slots_for(cfg))
        before = pair.bob_reserve.cursor
        runner.gated = True
        step = asyncio.ensure_future(pair.bob.receive(confirm))  # Bob checks Confirm: takes three keys
        await asyncio.sleep(0)
        step.cancel()
        await asyncio.sleep(0)
        assert not step.done(), "a cancelled caller waits for its step to end"
        assert pair.bob_reserve.cursor == before, "the reserve changes only when the step's outcome is back"
        runner.release()
        with pytest.raises(asyncio.CancelledError):
            await step
        after = pair.bob_reserve.cursor
        # Bob's session now holds the block pending Alice's Commit; abandoning it keeps it in the runner.
        abandoned: list[Any] = []
        runner.gated = False
        pair.bob.abandon("session_lost", abandoned.append)
        pending = pair.bob.pending_block_seq
        settled = await pair.bob.settle_pending(True)
        return before, after, [pending, len(runner.steps)], [abandoned, settled]

    before, after, (pending, left), (abandoned, settled) = asyncio.run(scenario())
    assert after == before + 3
    assert pending == 0 and abandoned == [[]]
    assert [type(e).__name__ for e in settled] == ["BlockAccepted"]
    assert left == 1, "only Alice's session is left in the runner once Bob's pending block is settled"


def test_a_frame_step_may_not_touch_the_mac_key_reserve(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg: LinkProtocolConfig = config(block_bits=20_000)
    original = AliceLink.emit_frame_later

    def greedy(self: AliceLink, *args: Any, **kwargs: Any) -> Any:
        self.auth.take(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(AliceLink, "emit_frame_later", greedy)
    steps = LinkSteps()
    from qcinode.core.authentication import AuthKeyReserve

    steps.handle("open", (1, SessionSpec(True, cfg, np.random.default_rng(1), np.random.default_rng(2), 0), AuthKeyReserve(BOOTSTRAP)))
    with pytest.raises(LocalProtocolError, match="frame step changed the MAC-key reserve"):
        steps.handle("emit", (1, 1000, None, False, False))


def test_unknown_requests_and_sessions_are_refused_by_name() -> None:
    steps = LinkSteps()
    with pytest.raises(LocalProtocolError, match="unknown request 'explode'"):
        steps.handle("explode", ())
    with pytest.raises(LocalProtocolError, match="no session 7"):
        steps.handle("abandon", (7, "x"))


def test_each_session_gets_generators_of_its_own() -> None:
    parent = np.random.default_rng(np.random.SeedSequence(3))
    first, second = session_rng(parent), session_rng(parent)
    assert first.integers(1 << 62) != second.integers(1 << 62)
    unseeded = np.random.Generator(np.random.PCG64(5))
    assert session_rng(unseeded).integers(1 << 62) != session_rng(unseeded).integers(1 << 62)
    csprng = CsprngGenerator()
    assert session_rng(csprng) is not csprng
    with pytest.raises(LocalProtocolError, match="cannot hand a Random"):
        import random

        session_rng(random.Random(1))


def test_a_frame_whose_header_passes_but_body_does_not_is_refused_where_it_is_parsed(runner: ProtocolRunner) -> None:
    from qcinode.core.physics import PhotonFrame

    cfg = config(block_bits=20_000)

    async def scenario() -> tuple[int, int, str]:
        pair = await open_pair(runner, cfg, BOOTSTRAP, seed=4)
        frame_id, slots, payload = await pair.alice.emit_frame(frame_slots_for(cfg), None, False, False)
        header = 21  # magic, flags, n_slots, count; the first gap follows
        bad = payload[:header] + b"\xff" * 8 + payload[header + 8 :]  # the first slots land outside the frame
        checked = PhotonFrame.header_slots(bad)  # what the loop checks: the header and the length
        with pytest.raises(RemoteProtocolError, match="PhotonFrame"):
            await pair.bob.receive_frame(frame_id, bad, None)
        with pytest.raises(RemoteProtocolError, match="truncated|expected"):
            PhotonFrame.header_slots(payload[:-1])
        return slots, checked, pair.bob.mirror.state.value

    slots, checked, state = asyncio.run(scenario())
    assert checked == slots
    assert state == "quantum"  # nothing was measured


# -- the protocol process's framing (no socket: the reads are fed by hand) ----------------------


def _framed(*payloads: bytes) -> bytes:
    return b"".join(len(p).to_bytes(8, "big") + p for p in payloads)


def _feed(messages: Any, stream: bytes, chunk: int) -> list[bytes]:
    """Feeds ``stream`` to ``messages`` ``chunk`` bytes per read, as recv_into would; the messages taken."""
    taken: list[bytes] = []
    at = 0
    while at < len(stream):
        space = messages.free()
        n = min(chunk, len(space), len(stream) - at)
        assert n > 0
        space[:n] = stream[at : at + n]
        messages.filled(n)
        at += n
        taken += [bytes(m) for m in messages.take()]
    return taken


@pytest.mark.parametrize("chunk", [1, 3, 8, 9, 1000, 1 << 30])
def test_messages_split_over_reads_and_several_in_one_read_come_out_whole_and_in_order(chunk: int) -> None:
    from qcinode.node.protocol_worker import _Messages

    rng = np.random.default_rng(chunk % 1000)
    payloads = [b"", b"x", rng.bytes(7), rng.bytes(8), rng.bytes(5000), b"", rng.bytes(3)]
    assert _feed(_Messages(64), _framed(*payloads), chunk) == payloads


def test_a_message_longer_than_the_buffer_grows_it_and_what_follows_still_comes_out() -> None:
    from qcinode.node.protocol_worker import _MIN_READ, _Messages

    rng = np.random.default_rng(9)
    big = rng.bytes(3 * _MIN_READ + 17)  # a pulse frame: several buffers long
    payloads = [rng.bytes(100), big, rng.bytes(50), big, rng.bytes(1)]
    messages = _Messages(64)
    # Reads of odd sizes: the big message's first part arrives behind a small message (it moves to the front).
    assert _feed(messages, _framed(*payloads), 40_001) == payloads
    space = messages.free()
    assert len(space) >= len(big), "the grown buffer is kept"


def test_a_partial_message_waits_for_its_end() -> None:
    from qcinode.node.protocol_worker import _Messages

    messages = _Messages(64)
    stream = _framed(b"first", b"second")  # 13 bytes, then 14
    at = 0
    assert not messages.partial
    for n, expected, partial in ((4, [], True), (9, [b"first"], False), (7, [], True), (7, [b"second"], False)):
        space = messages.free()
        space[:n] = stream[at : at + n]
        messages.filled(n)
        at += n
        assert [bytes(m) for m in messages.take()] == expected, (at, expected)
        assert messages.partial is partial, at
    assert at == len(stream)


def test_the_start_of_a_message_at_the_end_of_the_buffer_moves_to_its_front_without_a_new_buffer() -> None:
    from qcinode.node.protocol_worker import _MIN_READ, _Messages

    messages = _Messages(2 * _MIN_READ)
    first, second = b"a" * (2 * _MIN_READ - 8 - 11), b"b" * 100
    stream = _framed(first, second)
    space = messages.free()
    assert len(space) == 2 * _MIN_READ
    space[:] = stream[: len(space)]  # the first message, and 11 bytes of the second (its header, 3 bytes)
    messages.filled(len(space))
    assert [bytes(m) for m in messages.take()] == [first]
    buffer = messages._buffer
    space = messages.free()
    assert messages._buffer is buffer and len(space) == 2 * _MIN_READ - 11
    rest = stream[2 * _MIN_READ :]
    space[: len(rest)] = rest
    messages.filled(len(rest))
    assert [bytes(m) for m in messages.take()] == [second]


class _Recorder:
    """What the answer reader hands to its runner."""

    def __init__(self) -> None:
        self.answers: list[tuple[int, bool, Any]] = []
        self.lost: list[str] = []
        self._held: dict[int, dict[str, bytes]] = {5: {"auth/chunk/0": b"k"}, 6: {}}

    def _answer(self, rid: int, ok: bool, value: Any) -> None:
        self.answers.append((rid, ok, value))

    def _connection_lost(self, why: str) -> None:
        self.lost.append(why)


@pytest.mark.parametrize("chunk", [1, 5, 4096, 1 << 30])
def test_the_loops_reader_unpickles_each_answer_once_whole(chunk: int) -> None:
    import pickle

    from qcinode.core.authentication import AuthKeyReserve
    from qcinode.core.pipeline import LinkState
    from qcinode.node.protocol_worker import Mirror, StepResult, _Answers

    reserve = AuthKeyReserve(BOOTSTRAP)
    reserve.take(2)
    mirror = Mirror(LinkState.QUANTUM, 3, 7, True, False, 1000, None)
    step = StepResult([b"\x01" * 70_000, b"wire"], mirror, [], [], reserve, None)
    values: list[Any] = [step, (5, 9, b"\x00" * 300_000, mirror), None]
    recorder = _Recorder()
    reader = _Answers(recorder)  # type: ignore[arg-type]
    # The last answer ends session 5: the reader forgets what that session's reserve left.
    ended = [None, None, 5]
    stream = _framed(*(pickle.dumps((rid, True, v, ended[rid]), protocol=pickle.HIGHEST_PROTOCOL) for rid, v in enumerate(values)))
    at = 0
    while at < len(stream):
        space = reader.get_buffer(-1)
        n = min(chunk, len(space), len(stream) - at)
        space[:n] = stream[at : at + n]
        reader.buffer_updated(n)
        at += n
    assert [rid for rid, _, _ in recorder.answers] == [0, 1, 2]
    got = recorder.answers[0][2]
    assert (got.outs, got.mirror, got.reserve.to_state()) == (step.outs, mirror, reserve.to_state())
    assert recorder.answers[1][2] == values[1] and recorder.answers[2][2] is None
    assert list(recorder._held) == [6]
    reader.connection_lost(None)
    assert recorder.lost == ["its socket closed"]


class _ShortSocket:
    """A blocking socket whose sendmsg takes at most ``limit`` bytes (as one interrupted by a signal may)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.sent = bytearray()

    def sendmsg(self, parts: list[memoryview]) -> int:
        data = b"".join(parts)[: self.limit]
        self.sent += data
        return len(data)

    def sendall(self, data: bytes) -> None:
        self.sent += data


@pytest.mark.parametrize("limit", [1, 3, 8, 11, 1 << 30])
def test_an_answer_cut_short_by_the_kernel_is_sent_whole(limit: int) -> None:
    from qcinode.node.protocol_worker import _send

    sock = _ShortSocket(limit)
    _send(sock, [b"HEADER!!", b"the answer", b"", b"!"])  # type: ignore[arg-type]
    assert bytes(sock.sent) == b"HEADER!!the answer!"


def test_a_large_payload_is_sent_as_it_is_not_copied_into_the_message() -> None:
    import pickle

    from qcinode.node.protocol_worker import _JOIN_BELOW, _dumps, _framed

    payload = np.random.default_rng(1).bytes(3 << 20)  # a pulse frame's wire form
    message = (4, "frame", (2, 17, payload, None))
    parts = _framed(_dumps(message, {}, 2))
    assert any(part is payload for part in parts)
    assert all(len(part) < _JOIN_BELOW for part in parts if part is not payload)
    stream = b"".join(parts)
    assert int.from_bytes(stream[:8], "big") == len(stream) - 8
    assert pickle.loads(stream[8:]) == message
    small = _framed(_dumps((5, "drop", (2,)), {}, 2))
    assert len(small) == 1 and pickle.loads(small[0][8:]) == (5, "drop", (2,))


def test_a_large_array_crosses_as_a_view_of_its_memory_and_comes_out_equal() -> None:
    # An LDPC decode job's frame (16,384 float64 log-likelihoods, 128 KiB) pickles to a PickleBuffer, which
    # the pickler hands to the stream by itself: it goes out as a byte view of the array, not copied.
    from qcinode.node.protocol_worker import _dumps, _framed, _loads

    llr = np.random.default_rng(2).normal(size=16_384)
    bits = np.random.default_rng(3).integers(0, 2, 200_000, dtype=np.uint8)
    message = (6, True, [(0, 1, llr, bits)], None)
    parts = _framed(_dumps(message, {}, None))
    assert any(isinstance(part, memoryview) and part.nbytes == llr.nbytes for part in parts)
    rid, ok, ((a, b, llr_back, bits_back),), ended = _loads(b"".join(parts)[8:], {})
    assert (rid, ok, a, b, ended) == (6, True, 0, 1, None)
    assert np.array_equal(llr_back, llr) and np.array_equal(bits_back, bits) and bits_back.dtype == np.uint8


def test_mirrors_and_step_results_cross_pickling_unchanged() -> None:
    import pickle

    from qcinode.core.authentication import AuthKeyReserve
    from qcinode.core.pipeline import LinkState
    from qcinode.node.protocol_worker import Mirror, StepResult

    mirror = Mirror(LinkState.QUANTUM, 3, 7, True, False, 1000, 2)
    assert pickle.loads(pickle.dumps(mirror, protocol=pickle.HIGHEST_PROTOCOL)) == mirror
    step = StepResult([b"a"], mirror, [], [], AuthKeyReserve(BOOTSTRAP), LocalProtocolError("x"))
    back = pickle.loads(pickle.dumps(step, protocol=pickle.HIGHEST_PROTOCOL))
    assert (back.outs, back.mirror, back.events, back.jobs) == (step.outs, mirror, [], [])
    assert back.reserve is not None and back.reserve.to_state() == AuthKeyReserve(BOOTSTRAP).to_state()
    assert isinstance(back.error, LocalProtocolError) and str(back.error) == "x"


def _dumps(obj: Any, held: dict[int, dict[str, bytes]], scope: int | None) -> bytes:
    from qcinode.node.protocol_worker import _dumps as in_parts

    return b"".join(in_parts(obj, held, scope))


def test_a_reserve_crosses_whole_once_then_as_its_state_and_its_new_parts_both_ways() -> None:
    from qcinode.core.authentication import AuthKeyReserve
    from qcinode.node.protocol_worker import _Held, _loads

    node: _Held = {}
    child: _Held = {}
    reserve = AuthKeyReserve(bytes(range(256)) * 256)  # 64 KiB, as a node's bootstrap key
    first = _dumps((1, "receive", (7, b"wire", reserve.copy())), node, 7)
    assert len(first) > 65_536
    _, _, (_, _, there) = _loads(first, child)
    assert there.to_state() == reserve.to_state()
    # The child takes keys and stages a refill: the answer carries the state and the new part only.
    there.take(3)
    there.stage(4, b"\x07" * 2048)
    answer = _dumps((1, True, there, None), child, 7)
    assert 2048 < len(answer) < 4096
    _, _, back, _ = _loads(answer, node)
    assert back.to_state() == there.to_state()
    reserve.adopt(back)
    # The next request names every part: both ends hold them.
    second = _dumps((2, "receive", (7, b"wire", reserve.copy())), node, 7)
    assert len(second) < 1024
    _, _, (_, _, again) = _loads(second, child)
    assert again.to_state() == reserve.to_state()
    assert again.take(1) == reserve.take(1)
    # A promoted refill is a new part (a chunk, named by its offset): it crosses once more.
    reserve.promote_before(5)
    third = _dumps((3, "receive", (7, b"wire", reserve.copy())), node, 7)
    assert 2048 < len(third) < 4096
    assert _loads(third, child)[2][2].to_state() == reserve.to_state()
    assert len(_dumps((4, "receive", (7, b"wire", reserve.copy())), node, 7)) < 1024
    # Another session's memory is its own: its reserve crosses whole.
    assert len(_dumps((3, "receive", (8, b"", AuthKeyReserve(b"k" * 4096))), node, 8)) > 4096


def test_a_reserve_naming_a_part_the_other_end_lacks_is_refused_by_name() -> None:
    from qcinode.core.authentication import AuthKeyReserve
    from qcinode.node.protocol_worker import _Held, _loads

    node: _Held = {}
    reserve = AuthKeyReserve(b"k" * 4096)
    _dumps(reserve, node, 3)
    with pytest.raises(LocalProtocolError, match="session 3's MAC-key reserve names part 'auth/"):
        _loads(_dumps(reserve, node, 3), {})  # an end that never saw the first message
    whole = _dumps(reserve, node, None)  # no session: the reserve crosses whole
    assert _loads(whole, {}).to_state() == reserve.to_state()


def test_both_ends_hold_only_the_parts_the_reserve_still_has() -> None:
    """A session that runs for days spends its chunks and promotes refill after refill: neither end keeps spent parts."""
    from qcinode.core.authentication import AuthKeyReserve
    from qcinode.node.protocol_worker import _Held, _loads

    node: _Held = {}
    child: _Held = {}
    reserve = AuthKeyReserve(bytes(range(256)) * 16)  # 4 KiB: spent within the run
    for block in range(300):
        _, _, (_, _, there) = _loads(_dumps((block, "receive", (7, b"wire", reserve.copy())), node, 7), child)
        there.take(4)  # four one-time keys spent, four staged: the reserve stays its size
        there.stage(block, bytes([block % 256]) * 128)
        _, _, back, _ = _loads(_dumps((block, True, there, None), child, 7), node)
        assert set(node[7]) == set(child[7]) == back.blob_names()
        reserve.adopt(back)
        reserve.promote_before(block)
    assert "auth/0" not in node[7]  # the bootstrap chunk is spent and forgotten
    assert sum(map(len, node[7].values())) <= 4096 + 2 * 128  # the reserve's size, not 300 refills
    # And the next crossing still names what both hold.
    assert len(_dumps((301, "receive", (7, b"wire", reserve.copy())), node, 7)) < 1024 + 512


def test_the_process_that_opens_a_session_tunes_its_own_allocator_for_the_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    # The blocks' arrays live where the session runs: a protocol process
    # spawned to replace a crashed one inherits nothing from the node, so
    # opening a session must tune that process itself (for large blocks).
    import qcinode.node.protocol_worker as worker

    asked: list[int] = []
    monkeypatch.setattr(worker, "tune_allocator_for_links", lambda block_bits: asked.append(block_bits) or True)
    steps = LinkSteps()
    rng = np.random.default_rng(1)
    for handle, (alice, block_bits) in enumerate([(True, 1_000_000), (False, 50_000)]):
        spec = SessionSpec(alice=alice, config=config(block_bits=block_bits), key_rng=rng, noise_rng=rng, next_block_seq=0)
        steps.open(handle, spec, AuthKeyReserve(BOOTSTRAP))
    assert asked == [1_000_000, 50_000]


class _RecordedSteps:
    """A protocol process's steps with Alice's block confirmed and its hash still to do; notes how many
    requests had been answered each time the loop asked for work ahead."""

    def __init__(self) -> None:
        cfg = config(block_bits=20_000)
        runner = InlineRunner()  # works nothing ahead itself: Alice's block waits with its hash to do

        async def to_confirm() -> None:
            await _until_confirm(await open_pair(runner, cfg, BOOTSTRAP, seed=8), frame_slots_for(cfg))

        asyncio.run(to_confirm())
        (self.alice,) = [link for link in runner.steps._links.values() if isinstance(link, AliceLink)]
        assert self.alice.block is not None and self.alice.block.unhashed is not None
        self.answered: list[int] = []
        self.ahead_after: list[int] = []
        self.steps = steps = runner.steps
        handle, work_ahead = steps.handle, steps.work_ahead

        def recording_handle(op: str, args: tuple[Any, ...]) -> Any:
            self.answered.append(len(self.answered))
            return handle(op, args)

        def recording_work_ahead() -> bool:
            self.ahead_after.append(len(self.answered))
            return work_ahead()

        steps.handle, steps.work_ahead = recording_handle, recording_work_ahead  # type: ignore[method-assign]

    def wait_for_the_hash(self) -> None:
        """Until the block is hashed: a node end closed at once would be a request (the end) waiting, and the
        loop rightly answers it before working ahead."""
        block = self.alice.block
        assert block is not None
        deadline = time.monotonic() + 30
        while block.unhashed is not None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert block.unhashed is None and len(block.secret) > 0


def test_the_protocol_process_hashes_a_confirmed_block_while_it_waits_and_answers_requests_first() -> None:
    """The loop a protocol process runs (`_answer`) works ahead once every request it was sent is answered."""
    from qcinode.node.protocol_worker import _dumps, _framed

    recorded = _RecordedSteps()
    # Two requests waiting before the process reads: both are answered before any work ahead.
    requests = [part for rid in (1, 2) for part in _framed(_dumps((rid, "drop", (999,)), {}, 999))]
    loop = _ServingLoop(recorded.steps, sent_first=b"".join(requests))
    got = [loop.answer(), loop.answer()]
    recorded.wait_for_the_hash()
    loop.close()
    assert [(rid, ok) for rid, ok, *_ in got] == [(1, True), (2, True)]
    assert recorded.answered == [0, 1] and recorded.ahead_after and recorded.ahead_after[0] == 2


def test_the_protocol_process_works_nothing_ahead_while_a_request_is_half_read() -> None:
    """A request the node wrote in parts (its large payloads are written as they are) is read in parts;
    the loop waits for its end instead of starting a computation it would then have to wait for."""
    from qcinode.node.protocol_worker import _dumps, _framed

    recorded = _RecordedSteps()
    request = b"".join(_framed(_dumps((1, "drop", (999,)), {}, 999)))
    loop = _ServingLoop(recorded.steps, sent_first=request[:10])
    time.sleep(0.3)  # the loop has read the first part by now
    loop.node_end.sendall(request[10:])
    (rid, ok, *_) = loop.answer()
    recorded.wait_for_the_hash()
    loop.close()
    assert (rid, ok) == (1, True)
    assert recorded.ahead_after and recorded.ahead_after[0] == 1  # the first work ahead came after the answer


class _GatedChannel:
    """The emulated channel, whose source (``gated="transmit"``) or detector (``"detect"``) waits for the
    test's ``gate``; it notes the threads that ran the gated side."""

    def __init__(self, gated: str) -> None:
        import threading

        self.gated = gated
        self.gate = threading.Event()
        self.threads: list[str] = []

    def _wait(self, side: str) -> None:
        import threading

        if side == self.gated:
            self.threads.append(threading.current_thread().name)
            assert self.gate.wait(30)

    def transmit(self, *args: Any) -> Any:
        from qcinode.core.physics import EMULATED_CHANNEL

        self._wait("transmit")
        return EMULATED_CHANNEL.transmit(*args)

    def detect(self, *args: Any) -> Any:
        from qcinode.core.physics import EMULATED_CHANNEL

        self._wait("detect")
        return EMULATED_CHANNEL.detect(*args)


class _ServingLoop:
    """The protocol process's request loop (`_answer`) on a thread, with the node's end of its socket."""

    def __init__(self, steps: LinkSteps, *, sent_first: bytes = b"") -> None:
        import socket
        import threading

        from qcinode.node.protocol_worker import _answer, _Messages

        self.node_end, self._process_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.node_end.sendall(sent_first)  # waiting before the process reads
        self.serving = threading.Thread(target=_answer, args=(self._process_end, steps))
        self.serving.start()
        self._answers = _Messages()
        self._held: dict[int, dict[str, bytes]] = {}  # the reserve parts both ends hold, as the node keeps them
        self._taken: list[Any] = []  # answers read and not yet asked for

    def ask(self, rid: int, op: str, *args: Any) -> None:
        from qcinode.node.protocol_worker import _dumps, _framed

        self.node_end.sendall(b"".join(_framed(_dumps((rid, op, args), self._held, args[0]))))

    def answer(self) -> Any:
        """The next answer (one read may hold several: the later ones wait for the next call)."""
        from qcinode.node.protocol_worker import _loads

        while not self._taken:
            self._taken += [_loads(answer, self._held) for answer in self._answers.take()]
            if not self._taken:
                self._answers.filled(self.node_end.recv_into(self._answers.free()))
        return self._taken.pop(0)

    def close(self) -> None:
        self.node_end.close()
        self.serving.join(timeout=30)
        self._process_end.close()
        assert not self.serving.is_alive()


def test_a_frame_is_measured_beside_the_requests_that_come_after_it_and_answered_when_it_ends() -> None:
    """The protocol process's loop (`_answer`) measures Bob's frame on a thread of its own (pipeline rule 1a)."""
    cfg = config(block_bits=20_000)
    runner = InlineRunner()
    pair = asyncio.run(open_pair(runner, cfg, BOOTSTRAP, seed=8))
    frame_id, _, payload = asyncio.run(pair.alice.emit_frame(frame_slots_for(cfg), None, False, False))
    (bob,) = [link for link in runner.steps._links.values() if isinstance(link, BobLink)]
    channel = _GatedChannel("detect")
    bob.quantum = channel
    loop = _ServingLoop(runner.steps)
    try:
        loop.ask(1, "frame", pair.bob.handle, frame_id, payload, None)
        loop.ask(2, "drop", 999)
        rid, ok, *_ = loop.answer()  # the later request, while the frame is still being measured
        assert (rid, ok) == (2, True) and not channel.gate.is_set()
        channel.gate.set()
        rid, ok, result, _ = loop.answer()
        assert (rid, ok) == (1, True) and result.error is None
        (report,) = [pb.ClassicalMessage.FromString(wire) for wire in result.outs]
        assert report.WhichOneof("body") == "detection_report"
    finally:
        channel.gate.set()
        loop.close()
    assert channel.threads and channel.threads[0].startswith("physics")


def test_a_frame_is_drawn_beside_the_requests_that_come_after_it_and_sent_when_it_ends() -> None:
    """The protocol process's loop (`_answer`) draws Alice's frame on a thread of its own (pipeline rule 1b)."""
    cfg = config(block_bits=20_000)
    runner = InlineRunner()
    pair = asyncio.run(open_pair(runner, cfg, BOOTSTRAP, seed=8))
    (alice,) = [link for link in runner.steps._links.values() if isinstance(link, AliceLink)]
    channel = _GatedChannel("transmit")
    alice.quantum = channel
    loop = _ServingLoop(runner.steps)
    slots = frame_slots_for(cfg)
    try:
        loop.ask(1, "emit", pair.alice.handle, slots, None, False, False)
        loop.ask(2, "drop", 999)
        rid, ok, *_ = loop.answer()  # the later request, while the frame is still being drawn
        assert (rid, ok) == (2, True) and not channel.gate.is_set()
        assert not alice.can_sift_ahead  # the frame is in flight already
        channel.gate.set()
        rid, ok, (frame_id, n_slots, payload, mirror), _ = loop.answer()
        assert (rid, ok, frame_id, n_slots) == (1, True, 0, slots) and not mirror.can_sift_ahead
        # The frame reaches Bob, and Alice sifts his report of it.
        report = asyncio.run(pair.bob.receive_frame(frame_id, payload, None))
        assert [r.WhichOneof("body") for r in report] == ["detection_report"]
        loop.ask(3, "receive", pair.alice.handle, report[0].SerializeToString(), pair.alice.reserve.copy())
        rid, ok, result, _ = loop.answer()
        assert (rid, ok) == (3, True) and result.error is None
        assert [pb.ClassicalMessage.FromString(wire).WhichOneof("body") for wire in result.outs] == ["sift_reply"]
        # A session that ends while its frame is drawn sends no frame: the answer says why.
        channel.gate.clear()
        loop.ask(4, "emit", pair.alice.handle, slots, None, False, True)
        loop.ask(5, "abandon", pair.alice.handle, "peer lost")
        rid, ok, *_ = loop.answer()
        assert (rid, ok) == (5, True)
        channel.gate.set()
        rid, ok, error, _ = loop.answer()
        assert (rid, ok) == (4, False) and isinstance(error, LocalProtocolError) and "ended while frame 1" in str(error)
    finally:
        channel.gate.set()
        loop.close()
    assert channel.threads and all(name.startswith("physics") for name in channel.threads)
