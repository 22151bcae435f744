"""Real node processes started through the CLI, as a user would."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REQUIRED_LINK_FIELDS = {
    "state", "pulses_sent", "detections", "sifted_bits", "qber", "ec_leak_bits", "ec_efficiency",
    "secret_bits", "blocks_done", "blocks_aborted", "pool_bits", "emulated_s",
}  # fmt: skip


def qcinode(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "qcinode", *args], capture_output=True, text=True, timeout=timeout, check=False)


@pytest.fixture
def state_dir(tmp_path: Path):
    state = tmp_path / "state"
    yield state
    if (state / "cluster.json").exists():
        qcinode("down", "--state-dir", str(state))


def test_up_detach_status_down(two_node_topology: Path, state_dir: Path) -> None:
    up = qcinode("up", str(two_node_topology), "--state-dir", str(state_dir), "--detach", "--timeout", "90")
    assert up.returncode == 0, up.stderr
    assert "alpha-beta" in up.stdout

    cluster = json.loads((state_dir / "cluster.json").read_text())
    assert cluster["topology"] == "pair" and cluster["ca"] == "certs/ca.pem"
    assert set(cluster["nodes"]) == {"alpha", "beta"}
    for node in cluster["nodes"].values():
        assert {"pid", "grpc", "etsi014", "metrics"} <= set(node)
    assert cluster["saes"]["alpha-app"]["node"] == "alpha"
    assert (state_dir / cluster["saes"]["alpha-app"]["cert"]).exists()

    status = qcinode("status", "--state-dir", str(state_dir), "--json", "--digests")
    assert status.returncode == 0, status.stderr
    doc = json.loads(status.stdout)
    link = doc["links"]["alpha-beta"]
    assert REQUIRED_LINK_FIELDS <= set(link)
    assert link["blocks_done"] >= 1 and link["secret_bits"] > 0 and 0 < link["qber"] < 0.05
    # Test-only comparison of the two pools: every block both ends hold has the same bytes.
    views = {n["links"][0]["role"]: n["links"][0] for n in doc["nodes"].values()}
    alice = {b["block_id"]: b["sha256"] for b in views["alice"]["blocks"]}
    bob = {b["block_id"]: b["sha256"] for b in views["bob"]["blocks"]}
    common = set(alice) & set(bob)
    assert common, "no block held at both ends"
    assert all(alice[b] == bob[b] for b in common)
    # Bob commits after Alice, never before. Alice was asked first, so Bob
    # may show blocks she committed after answering, never older ones.
    seq = lambda block_id: int(block_id.rsplit("/", 1)[1])  # noqa: E731
    assert all(seq(b) > max(map(seq, alice)) for b in set(bob) - set(alice))

    # Prometheus metrics agree with `qcinode status --json`.
    check_metrics_against_status(state_dir, cluster)

    down = qcinode("down", "--state-dir", str(state_dir))
    assert down.returncode == 0, down.stderr
    after = qcinode("status", "--state-dir", str(state_dir), "--json")
    assert after.returncode == 1 and "not running" in after.stderr and after.stdout == ""


def test_bad_topology_is_reported_by_field(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nnodes: [{name: a}]\nlinks: [{between: [a, b], length_km: -3}]\n")
    result = qcinode("up", str(bad), "--state-dir", str(tmp_path / "s"), "--detach")
    assert result.returncode == 2
    assert "links[0]" in result.stderr


def _pool_digests(state_dir: Path) -> dict[str, dict[str, str]]:
    from qcinode.cluster.launcher import cluster_status

    doc = cluster_status(state_dir, digests=True)
    out: dict[str, dict[str, str]] = {}
    for node in doc["nodes"].values():
        for link in node["links"]:
            out[link["role"]] = {b["block_id"]: b["sha256"] for b in link.get("blocks", [])}
    return out


def test_kill_9_and_restart_keeps_both_ends_identical(two_node_topology: Path, tmp_path: Path) -> None:
    import os
    import signal
    import time

    from qcinode.cluster.launcher import running_cluster

    def wait_for(predicate, timeout_s: float = 60.0):
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                value = predicate()
            except KeyError:
                value = None
            if value:
                return value
            time.sleep(0.3)
        raise AssertionError("timed out")

    with running_cluster(two_node_topology, tmp_path / "state") as cluster:
        state = cluster.state_dir
        wait_for(lambda: len(_pool_digests(state).get("bob", {})) >= 3)
        for victim in ("alpha", "beta"):
            os.kill(cluster.processes[victim].pid, signal.SIGKILL)
            cluster.processes[victim].wait(timeout=10)
            time.sleep(0.5)
            cluster.start_node(victim)
            cluster.write_cluster_file()
            cluster.wait_healthy()
            grown = len(_pool_digests(state)["bob"]) + 2
            wait_for(lambda: len(_pool_digests(state).get("bob", {})) >= grown)  # noqa: B023 - called at once
            pools = wait_for(lambda: (p := _pool_digests(state)) and set(p["bob"]) <= set(p["alice"]) and p)
            common = set(pools["alice"]) & set(pools["bob"])
            assert len(common) >= grown - 1
            assert all(pools["alice"][b] == pools["bob"][b] for b in common)


def check_metrics_against_status(state_dir: Path, cluster: dict) -> None:
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    from qcinode.cluster.launcher import cluster_status

    for name, node in cluster["nodes"].items():
        assert node["metrics"].startswith("http://127.0.0.1:")
        stable = False
        for _attempt in range(60):
            before = cluster_status(state_dir)["nodes"][name]["links"][0]
            with urllib.request.urlopen(node["metrics"], timeout=5) as response:
                text = response.read().decode()
            after = cluster_status(state_dir)["nodes"][name]["links"][0]
            if before["blocks_done"] == after["blocks_done"] and before["blocks_aborted"] == after["blocks_aborted"]:
                stable = True  # no block ended while we looked: the figures must be equal
                break
        samples = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }
        labels = (("link", after["link_id"]), ("peer", after["peer"]), ("role", after["role"]))
        # Counters only grow: the scrape lies between the two status reads.
        assert before["secret_bits"] <= samples[("qcinode_link_secret_bits_total", labels)] <= after["secret_bits"]
        assert before["blocks_done"] <= samples[("qcinode_link_blocks_done_total", labels)] <= after["blocks_done"]
        if stable:
            assert samples[("qcinode_link_qber", labels)] == pytest.approx(after["qber"])
            assert samples[("qcinode_link_secret_bits_total", labels)] == after["secret_bits"]
            assert samples[("qcinode_link_pool_bits", labels)] == after["pool_bits"]
        else:  # blocks end faster than we can look twice: the latest QBER is at least plausible
            assert 0 < samples[("qcinode_link_qber", labels)] < 0.05
        assert ("process_resident_memory_bytes", ()) in samples


def test_eve_switched_on_at_runtime_raises_the_qber_and_stops_key(two_node_topology: Path, state_dir: Path) -> None:
    import time

    from qcinode.cluster.launcher import cluster_status

    up = qcinode("up", str(two_node_topology), "--state-dir", str(state_dir), "--detach", "--timeout", "90")
    assert up.returncode == 0, up.stderr
    refused = qcinode("eve", "--state-dir", str(state_dir), "--link", "alpha-beta", "--attack", "teleport")
    assert refused.returncode == 2 and "attack" in refused.stderr
    on = qcinode("eve", "--state-dir", str(state_dir), "--link", "alpha-beta", "--attack", "intercept-resend", "--fraction", "1")
    assert on.returncode == 0, on.stderr

    def link() -> dict:
        return cluster_status(state_dir)["links"]["alpha-beta"]

    assert link()["eavesdropper"] == "intercept-resend 1"
    # The operator sees it in the status table too, with a fault switched on at one end.
    assert qcinode("fault", "--state-dir", str(state_dir), "--link", "alpha-beta", "--kind", "delay", "--delay-ms", "1", "--end", "beta").returncode == 0
    table = qcinode("status", "--state-dir", str(state_dir), "--wide").stdout  # the 100-column table may cut the notes
    assert "eve intercept-resend 1; delay p=1 1ms at bob" in table, table
    assert qcinode("fault", "--state-dir", str(state_dir), "--link", "alpha-beta", "--off").returncode == 0
    start = link()
    deadline = time.monotonic() + 60
    while link()["blocks_aborted"] < start["blocks_aborted"] + 2 and time.monotonic() < deadline:
        time.sleep(0.5)
    attacked = link()
    assert attacked["blocks_aborted"] >= start["blocks_aborted"] + 2
    assert attacked["qber"] > 0.2  # 25 % on intercepted pulses, textbook p/4 with p = 1
    assert any("phase" in reason or "entropy" in reason or "correction" in reason for reason in attacked["aborts_by_reason"])
    # No key while Eve is on: at most the block in flight when she arrived.
    assert attacked["blocks_done"] <= start["blocks_done"] + 1
    off = qcinode("eve", "--state-dir", str(state_dir), "--link", "alpha-beta", "--off")
    assert off.returncode == 0, off.stderr
    resumed_from = link()["blocks_done"]
    deadline = time.monotonic() + 60
    while link()["blocks_done"] < resumed_from + 2 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert link()["blocks_done"] >= resumed_from + 2 and link()["qber"] < 0.05
