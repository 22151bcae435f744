"""Every error a user can cause through the CLI: one line on stderr, a non-zero exit code, no traceback, nothing half-made.

The inputs are the ones a new user meets in the first hour: commands
against a cluster that has stopped (its ``cluster.json`` stays after Ctrl-C or
``qcinode down``), ``qcinode status`` piped into a reader that leaves,
``--speed`` values that are not speeds, a fraction of pulses for an attack
that acts on every pulse, and ``up --detach`` on a topology that makes no key.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

NO_KEY = """
name: nokey
defaults:
  # An 80 % signal source with 1e4-bit blocks: Lim et al.'s finite-size
  # corrections swamp the decoy counts and every block aborts (s_Z1<=0).
  source:
    intensities: {signal: 0.5, decoy: 0.1, vacuum: 0.0}
    probabilities: {signal: 0.8, decoy: 0.1, vacuum: 0.1}
    basis_probabilities: {z: 0.8, x: 0.2}
  postprocessing: {block_bits: 10000, finite_key: lim2014}
emulation: {speed: max}
nodes:
  - {name: alpha, saes: [alpha-app]}
  - {name: beta, saes: [beta-app]}
links:
  - {between: [alpha, beta], length_km: 20}
"""


def qcinode(*args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "qcinode", *args], capture_output=True, text=True, timeout=timeout, check=False)


def assert_one_line_error(result: subprocess.CompletedProcess[str], code: int, *needles: str, progress: int = 0) -> str:
    """The command failed with ``code`` and said so in one line naming every needle; returns the line.

    ``progress``: lines of progress the command printed before it failed.
    """
    assert result.returncode == code, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()[progress:]
    assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def files(directory: Path) -> set[str]:
    return {str(p.relative_to(directory)) for p in directory.rglob("*")}


@pytest.fixture
def state_dir(tmp_path: Path) -> Iterator[Path]:
    state = tmp_path / "state"
    yield state
    if (state / "cluster.json").exists():
        qcinode("down", "--state-dir", str(state))


@pytest.mark.slow
def test_a_stopped_cluster_says_it_is_not_running(two_node_topology: Path, state_dir: Path) -> None:
    state = str(state_dir)
    up = qcinode("up", str(two_node_topology), "--state-dir", state, "--detach", "--timeout", "60")
    assert up.returncode == 0, up.stderr

    # While it runs: `qcinode status | head` whose reader has gone is silent.
    for extra in ([], ["--json"]):
        reader_gone = subprocess.Popen(
            [sys.executable, "-m", "qcinode", "status", "--state-dir", state, *extra],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert reader_gone.stdout is not None
        reader_gone.stdout.close()  # before the command can write: its first write meets a closed pipe
        _, err = reader_gone.communicate(timeout=60)
        assert err == "" and reader_gone.returncode == 141, (reader_gone.returncode, err)

    # A photon-number-splitting attack on half the pulses is not modelled: refused, and nothing switched on.
    pns = qcinode("eve", "--link", "alpha-beta", "--attack", "photon-number-splitting", "--fraction", "0.5", "--state-dir", state)
    assert_one_line_error(pns, 2, "--fraction", "every pulse")
    status = json.loads(qcinode("status", "--state-dir", state, "--json").stdout)
    assert status["links"]["alpha-beta"]["attacks"] == ""
    # Counts are numbers in the JSON document, not strings.
    link = status["links"]["alpha-beta"]
    assert all(isinstance(link[k], int) for k in ("pulses_sent", "detections", "sifted_bits", "secret_bits", "blocks_done", "pool_bits"))

    # A second `up` on the same state directory is refused in one line.
    again = qcinode("up", str(two_node_topology), "--state-dir", state, "--detach")
    assert_one_line_error(again, 2, "already running", str(state_dir.resolve()))

    down = qcinode("down", "--state-dir", state)
    assert down.returncode == 0, down.stderr
    before = files(state_dir)
    for command in (
        ["status"],
        ["status", "--json"],
        ["keys", "--from", "alpha-app", "--to", "beta-app"],
        ["eve", "--link", "alpha-beta", "--attack", "intercept-resend"],
        ["fault", "--link", "alpha-beta", "--kind", "partition"],
    ):
        result = qcinode(*command, "--state-dir", state)
        assert_one_line_error(result, 1, "not running", str(state_dir.resolve()))
        assert result.stdout == "", command
    assert files(state_dir) == before
    again = qcinode("down", "--state-dir", state)
    assert again.returncode == 0 and "no node" in again.stderr


@pytest.mark.parametrize("speed", ["fast", "0", "-1", "nan", "inf"])
def test_a_bad_speed_is_refused_before_anything_is_made(two_node_topology: Path, tmp_path: Path, speed: str) -> None:
    state = tmp_path / "state"
    result = qcinode("up", str(two_node_topology), "--state-dir", str(state), "--speed", speed, "--detach")
    assert_one_line_error(result, 2, "--speed", repr(speed))
    assert str(two_node_topology) not in result.stderr  # the user's file is not blamed
    assert not state.exists()


def test_commands_without_a_cluster_name_the_state_dir(tmp_path: Path) -> None:
    state = tmp_path / "nothing-here"
    for command in (["status"], ["keys", "--from", "a", "--to", "b"], ["eve", "--link", "a-b", "--off"], ["down"]):
        result = qcinode(*command, "--state-dir", str(state))
        assert_one_line_error(result, 2, "--state-dir", str(state / "cluster.json"))
    assert not state.exists()


def test_bad_option_values_are_one_line_and_list_the_choices(tmp_path: Path) -> None:
    result = qcinode("eve", "--link", "a-b", "--attack", "man-in-the-middle", "--state-dir", str(tmp_path))
    assert_one_line_error(result, 2, "--attack", "intercept-resend", "photon-number-splitting")
    assert "flip | drop | delay | reorder | replay | partition" in " ".join(qcinode("fault", "--help").stdout.split())
    assert "--state-dir" in qcinode("up", "--help").stdout and "cluster.json" in qcinode("up", "--help").stdout


@pytest.mark.slow
def test_detach_timeout_names_each_link_without_key_and_why(tmp_path: Path) -> None:
    topology = tmp_path / "nokey.yaml"
    topology.write_text(NO_KEY)
    state = tmp_path / "state"
    result = qcinode("up", str(topology), "--state-dir", str(state), "--detach", "--timeout", "5")
    # After the one line of progress ("2 nodes ... running"), one line of error.
    line = assert_one_line_error(result, 1, "--timeout", "alpha-beta", "s_Z1<=0", str(state / "logs"), progress=1)
    assert "0 blocks done" in line
    cluster = json.loads((state / "cluster.json").read_text())
    status = qcinode("status", "--state-dir", str(state))  # the cluster was stopped, not left running
    assert_one_line_error(status, 1, "not running")
    assert cluster["nodes"].keys() == {"alpha", "beta"}
