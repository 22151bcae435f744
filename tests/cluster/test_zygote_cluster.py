"""Nodes forked from the launcher's zygote, as ``qcinode up`` starts them: detach, a dead zygote, exec mode.

(tests/integration/test_zygote.py tests the zygote's protocol itself.)
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from qcinode.cluster.admin import health_check
from qcinode.cluster.launcher import Cluster, running_cluster
from qcinode.cluster.zygote import EXIT_STATUS_UNKNOWN, ForkedProcess, pid_alive

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the zygote is Linux-only")


def _cmdline(pid: int) -> bytes:
    return Path(f"/proc/{pid}/cmdline").read_bytes()


def _parent(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def _comm(pid: int) -> str:
    return Path(f"/proc/{pid}/comm").read_text().strip()


def _zygotes_of(state_dir: Path) -> list[int]:
    """PIDs of live processes with a zygote's command line for ``state_dir``: its zygote (and a process it forked
    that has not yet shown its own command line)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                argv = _cmdline(int(entry)).split(b"\0")
            except OSError:
                continue
            if b"zygote" in argv and str(state_dir).encode() in argv and pid_alive(int(entry)):
                found.append(int(entry))
    return found


def _children_of(parents: set[int]) -> list[int]:
    """PIDs of the live processes whose parent is one of ``parents``."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                parent = _parent(int(entry))
            except OSError:
                continue
            if parent in parents and pid_alive(int(entry)):
                found.append(int(entry))
    return found


def test_detached_nodes_are_forked_outlive_their_zygote_and_stop_with_down(two_node_topology: Path, tmp_path: Path) -> None:
    state = tmp_path / "state"
    env = {**os.environ, "QCINODE_LAUNCH": "fork"}

    def qcinode(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "qcinode", *args], capture_output=True, text=True, timeout=120, check=False, env=env)

    up = qcinode("up", str(two_node_topology), "--state-dir", str(state), "--detach", "--timeout", "90")
    try:
        assert up.returncode == 0, up.stderr
        pids = {name: int(info["pid"]) for name, info in json.loads((state / "cluster.json").read_text())["nodes"].items()}
        for name, pid in pids.items():
            # Forked from the zygote, each shows its own command in `ps`, its name first (and still names qcinode).
            argv = _cmdline(pid).rstrip(b"\0").split(b"\0")
            assert argv[:3] == [b"qcinode", b"node", name.encode()] and b"--topology" in argv and b"zygote" not in argv
        # `up --detach` has returned and its zygote with it; the nodes run on, each with its protocol process.
        others = _children_of(set(pids.values()))
        assert sorted(_parent(pid) for pid in others) == sorted(pids.values())
        assert {_comm(pid) for pid in others} == {"qcinode-proto"}
        node_of = {pid: name for name, pid in pids.items()}
        assert all(_cmdline(pid).rstrip(b"\0").split(b"\0") == [b"qcinode-proto", node_of[_parent(pid)].encode()] for pid in others)
        assert all(pid_alive(pid) for pid in pids.values())
        # Each node made its own storage key after the fork (os.urandom): no two alike.
        keys = {name: (state / "data" / name / "storage.key").read_bytes() for name in pids}
        assert len(set(keys.values())) == len(keys) and all(len(k) >= 32 for k in keys.values())
        status = qcinode("status", "--state-dir", str(state), "--json")
        assert status.returncode == 0, status.stderr
    finally:
        down = qcinode("down", "--state-dir", str(state))
    assert down.returncode == 0, down.stderr
    assert "stopped 2 node(s)" in down.stderr
    assert not any(pid_alive(pid) for pid in pids.values())


def test_a_killed_zygote_leaves_the_nodes_running_and_the_next_node_gets_a_new_one(
    two_node_topology: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("QCINODE_LAUNCH", "fork")
    with running_cluster(two_node_topology, tmp_path / "state") as cluster:
        first = cluster.zygote
        assert first is not None
        alpha, beta = cluster.processes["alpha"], cluster.processes["beta"]
        assert isinstance(alpha, ForkedProcess) and _parent(alpha.pid) == first.pid
        os.kill(first.pid, signal.SIGKILL)
        first.process.wait(timeout=10)
        assert health_check(f"127.0.0.1:{cluster.ports['alpha']}", "alpha", cluster.certs_dir, timeout_s=10)
        assert alpha.poll() is None and beta.poll() is None
        os.kill(alpha.pid, signal.SIGKILL)
        assert alpha.wait(timeout=10) == EXIT_STATUS_UNKNOWN  # only its dead parent knew how it ended
        restarted = cluster.start_node("alpha")
        cluster.wait_healthy(timeout_s=60)
        second = cluster.zygote
        assert second is not None and second.pid != first.pid
        assert _parent(restarted.pid) == second.pid
        os.kill(restarted.pid, signal.SIGKILL)
        assert restarted.wait(timeout=10) == -signal.SIGKILL
    assert beta.returncode is not None and not pid_alive(beta.pid)


def test_exec_mode_and_another_start_time_environment_start_new_interpreters(
    two_node_topology: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cluster = Cluster(two_node_topology, tmp_path / "state")
    cluster.prepare()
    try:
        monkeypatch.setenv("QCINODE_LAUNCH", "exec")
        alpha = cluster.start_node("alpha")
        assert isinstance(alpha, subprocess.Popen) and cluster.zygote is None
        monkeypatch.setenv("QCINODE_LAUNCH", "fork")
        beta = cluster.start_node("beta")
        assert isinstance(beta, ForkedProcess) and cluster.zygote is not None
        cluster.wait_healthy(timeout_s=60)
        # glibc reads MALLOC_ARENA_MAX as the process starts: a fork would keep the zygote's.
        os.kill(beta.pid, signal.SIGKILL)
        beta.wait(timeout=10)
        monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
        beta = cluster.start_node("beta")
        assert isinstance(beta, subprocess.Popen)
        cluster.wait_healthy(timeout_s=60)
        for proc in (alpha, beta):  # (read once exec has finished)
            assert _cmdline(proc.pid).split(b"\0")[1:4] == [b"-m", b"qcinode", b"node"]
        assert b"MALLOC_ARENA_MAX=4" in Path(f"/proc/{beta.pid}/environ").read_bytes().split(b"\0")
    finally:
        cluster.stop()
    assert alpha.returncode == 0 and beta.returncode == 0


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_or_sigterm_to_a_foreground_up_stops_the_nodes_and_the_zygote(
    two_node_topology: Path, tmp_path: Path, stop_signal: signal.Signals
) -> None:
    """Ctrl-C, or SIGTERM from a process manager or ``timeout``: the nodes (in sessions of their own) go too."""
    state = tmp_path / "state"
    env = {**os.environ, "QCINODE_LAUNCH": "fork"}
    command = [sys.executable, "-m", "qcinode", "up", str(two_node_topology), "--state-dir", str(state), "--refresh", "0.5"]
    up = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 90
        while not (state / "cluster.json").exists():  # written once every node is started
            assert up.poll() is None and time.monotonic() < deadline, "qcinode up exited or never started its nodes"
            time.sleep(0.2)
        pids = [int(info["pid"]) for info in json.loads((state / "cluster.json").read_text())["nodes"].values()]
        # A node's protocol process is its child: told apart by its parent, not its name or command line,
        # which a busy machine may not have set yet.
        protocol = _children_of(set(pids))
        zygotes = [pid for pid in _zygotes_of(state.resolve()) if pid not in pids and pid not in protocol]
        assert len(zygotes) == 1 and all(_comm(pid) != "qcinode-proto" for pid in zygotes)
    finally:
        up.send_signal(stop_signal)
        _, err = up.communicate(timeout=60)
    assert up.returncode == 0, err
    assert "stopping" in err
    assert not any(pid_alive(pid) for pid in [*pids, *zygotes, *protocol])
