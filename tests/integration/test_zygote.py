"""The zygote's protocol with real processes: start, fork, report exits, end on EOF, survive a dead zygote.

Most tests run tests/support/zygote_target.py, the real fork server with the
node's imports and small programs in place of a node; the first runs
``python -m qcinode zygote`` itself. Linux only (the launcher uses exec
elsewhere).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from qcinode.cluster.zygote import EXIT_STATUS_UNKNOWN, ForkedProcess, Zygote, ZygoteError, launch_mode, pid_alive
from qcinode.errors import ConfigError

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the zygote is Linux-only")

ROOT = Path(__file__).resolve().parents[2]
TARGET = [sys.executable, "-m", "tests.support.zygote_target"]


def until(what: str, predicate: Callable[[], object], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _sockets(pid: int) -> list[str]:
    links = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            links.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:
            continue
    return [link for link in links if link.startswith("socket:")]


def _start(command: list[str], tmp_path: Path) -> Zygote:
    fd = os.open(tmp_path / "zygote.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        return Zygote.start(command, {**os.environ, "PYTHONPATH": str(ROOT), "OPENBLAS_NUM_THREADS": "1"}, fd)
    finally:
        os.close(fd)


@pytest.fixture
def zygote(tmp_path: Path) -> Iterator[Zygote]:
    z = _start(TARGET, tmp_path)
    try:
        yield z
    finally:
        z.close()
        for child in list(z._children.values()):
            if child.returncode is None and pid_alive(child.pid):
                os.kill(child.pid, signal.SIGKILL)


def _spawn(zygote: Zygote, tmp_path: Path, *argv: str, log: str = "child.log", env: dict[str, str] | None = None) -> ForkedProcess:
    fd = os.open(tmp_path / log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        return zygote.spawn(list(argv), fd, cwd=str(tmp_path), env=env)
    finally:
        os.close(fd)


def test_the_real_zygote_is_one_thread_and_one_socket_when_ready(tmp_path: Path) -> None:
    z = _start([sys.executable, "-m", "qcinode", "zygote"], tmp_path)
    try:
        assert z.threads == 1  # threading.active_count() and /proc/self/task, as the zygote counted them
        assert os.listdir(f"/proc/{z.pid}/task") == [str(z.pid)]
        assert len(_sockets(z.pid)) == 1  # its control channel, nothing else
        assert b"qcinode" in Path(f"/proc/{z.pid}/cmdline").read_bytes()
        # It has imported the node's modules.
        maps = Path(f"/proc/{z.pid}/maps").read_text()
        assert "cygrpc" in maps and "numpy" in maps
    finally:
        z.close()
    assert z.process.returncode == 0


def test_a_zygote_whose_imports_start_a_thread_refuses_to_fork(tmp_path: Path) -> None:
    with pytest.raises(ZygoteError, match="2 threads after the imports.*left-running"):
        _start([*TARGET, "--thread"], tmp_path)


def test_a_forked_child_is_set_up_as_a_new_process_would_be(zygote: Zygote, tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    env = {**zygote.env, "QCINODE_TEST_VALUE": "the launcher's, now"}
    assert zygote.can_fork(env)
    child = _spawn(zygote, tmp_path, "report", str(out), env=env)
    assert child.wait(timeout=30) == 0
    seen = json.loads(out.read_text())
    assert seen["pid"] == child.pid
    assert seen["sid"] == child.pid  # a session of its own, as start_new_session=True gave
    log = str(tmp_path / "child.log")
    assert seen["fds"] == {"0": "/dev/null", "1": log, "2": log}  # no control channel, no zygote pipe
    assert seen["signals"] == {"SIGCHLD": "SIG_DFL", "SIGINT": "default_int_handler", "SIGTERM": "SIG_DFL", "SIGPIPE": "SIG_IGN"}
    assert seen["wakeup_fd"] == -1
    assert seen["cwd"] == str(tmp_path)
    assert seen["argv"] == ["report", str(out)]
    assert seen["env"] == {"QCINODE_TEST_VALUE": "the launcher's, now"}
    assert seen["threads"] == 1
    assert seen["frozen_objects"] > 10_000  # the imports' objects, frozen out of the collector's reach
    text = (tmp_path / "child.log").read_text()
    assert f"stdout of {child.pid}" in text and f"stderr of {child.pid}" in text


def test_two_children_draw_different_random_values_from_every_source(zygote: Zygote, tmp_path: Path) -> None:
    reports = []
    for i in range(2):
        out = tmp_path / f"report{i}.json"
        assert _spawn(zygote, tmp_path, "report", str(out)).wait(timeout=30) == 0
        reports.append(json.loads(out.read_text())["random"])
    first, second = reports
    assert set(first) == set(second)
    same = [source for source in first if first[source] == second[source]]
    assert not same, f"forked children share the state of {same}"


def test_exit_codes_and_signals_are_reported_as_popen_does(zygote: Zygote, tmp_path: Path) -> None:
    assert _spawn(zygote, tmp_path, "exit", "3").wait(timeout=30) == 3
    sleeper = _spawn(zygote, tmp_path, "sleep", "60")
    assert sleeper.poll() is None and sleeper.returncode is None
    with pytest.raises(subprocess.TimeoutExpired):
        sleeper.wait(timeout=0.2)
    os.kill(sleeper.pid, signal.SIGKILL)
    assert sleeper.wait(timeout=10) == -signal.SIGKILL
    terminated = _spawn(zygote, tmp_path, "sleep", "60")
    terminated.terminate()
    assert terminated.wait(timeout=10) == -signal.SIGTERM
    assert not pid_alive(terminated.pid)  # reaped by the zygote


def test_end_of_file_ends_the_zygote_and_not_its_children(zygote: Zygote, tmp_path: Path) -> None:
    child = _spawn(zygote, tmp_path, "sleep", "60")
    zygote.close()
    assert zygote.process.returncode == 0
    assert not zygote.connected
    assert pid_alive(child.pid) and child.poll() is None
    os.kill(child.pid, signal.SIGKILL)
    # Its parent has gone, so no one can tell the launcher how it ended; its end is seen all the same.
    assert child.wait(timeout=10) == EXIT_STATUS_UNKNOWN
    with pytest.raises(ZygoteError, match="closed"):
        _spawn(zygote, tmp_path, "exit", "0")


def test_a_killed_zygote_leaves_its_children_running(zygote: Zygote, tmp_path: Path) -> None:
    child = _spawn(zygote, tmp_path, "sleep", "60")
    done = _spawn(zygote, tmp_path, "exit", "5")
    until("the exit report", lambda: done.poll() is not None, timeout_s=30)
    os.kill(zygote.pid, signal.SIGKILL)
    until("the launcher to see the zygote gone", lambda: (child.poll(), not zygote.connected)[1], timeout_s=10)
    assert done.returncode == 5
    assert pid_alive(child.pid) and child.returncode is None
    os.kill(child.pid, signal.SIGKILL)
    assert child.wait(timeout=10) == EXIT_STATUS_UNKNOWN


def test_what_a_process_reads_as_it_starts_must_be_the_zygotes(zygote: Zygote) -> None:
    assert zygote.can_fork({**zygote.env, "QCINODE_KERNELS": "numpy", "PYTEST_CURRENT_TEST": "x"})
    for name, value in (("MALLOC_ARENA_MAX", "7"), ("OPENBLAS_NUM_THREADS", "4"), ("PYTHONHASHSEED", "1"), ("LD_PRELOAD", "x.so")):
        assert not zygote.can_fork({**zygote.env, name: value}), name
    assert not zygote.can_fork({k: v for k, v in zygote.env.items() if k != "OPENBLAS_NUM_THREADS"})


@pytest.mark.parametrize(
    ("value", "expected"), [("fork", "fork"), ("exec", "exec"), (" EXEC ", "exec"), ("", "fork")]
)  # fmt: skip
def test_launch_mode(value: str, expected: str) -> None:
    assert launch_mode({"QCINODE_LAUNCH": value}) == expected


def test_launch_mode_names_a_bad_value() -> None:
    with pytest.raises(ConfigError, match="QCINODE_LAUNCH: expected fork or exec, got 'spawn'"):
        launch_mode({"QCINODE_LAUNCH": "spawn"})
