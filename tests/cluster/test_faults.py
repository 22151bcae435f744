"""Classical-channel faults on relay hops and a partitioned link, on real node
processes switched with `qcinode fault`: forged, lost and replayed hops are
refused or rerouted, a cut link is routed around and resumes when restored,
and every invariant holds — keys equal at both SAEs, no key ID twice, no pool
byte used by one end that the other did not (the ledger audit)."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from qcinode.cluster.audit import audit_ledgers
from qcinode.cluster.launcher import cluster_status
from qcinode.testing import QciNetwork, start_network

from .test_network import RING


@pytest.fixture
def ring(tmp_path: Path) -> Iterator[QciNetwork]:
    topology = tmp_path / "topology.yaml"
    topology.write_text(RING)
    network = start_network(topology, tmp_path / "state", ready_timeout_s=90)
    try:
        yield network
    finally:
        network.cluster.stop()


def qcinode_fault(network: QciNetwork, *args: str, ok: bool = True) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "qcinode", "fault", "--state-dir", str(network.state_dir), *args],
        capture_output=True, text=True, timeout=60, check=False,
    )
    if not ok:
        assert result.returncode != 0, result.stdout
        return result.stderr
    assert result.returncode == 0, result.stderr
    return result.stdout


class Ledger:
    """Every key the two SAEs got, checked as it arrives."""

    def __init__(self, network: QciNetwork) -> None:
        self.network = network
        self.keys: dict[str, str] = {}
        self.paths: list[list[str]] = []

    def get(self, retry_s: float = 30.0) -> list[str]:
        """One key app-a -> app-c; returns the path it took."""
        net = self.network
        deadline = time.monotonic() + retry_s
        while (result := net.client("app-a").enc_keys(net.sae("app-a").kme_url, "app-c", number=1))[0] == 503:
            assert time.monotonic() < deadline, f"no key within {retry_s} s: {result[1]}"
            time.sleep(0.3)
        status, enc = result
        assert status == 200, enc
        (key,) = enc["keys"]
        status, dec = net.client("app-c").dec_keys(net.sae("app-c").kme_url, "app-a", [key["key_ID"]])
        assert status == 200 and dec["keys"][0]["key"] == key["key"], "the slave got a different key"
        assert key["key_ID"] not in self.keys, "a key ID was delivered twice"
        self.keys[key["key_ID"]] = key["key"]
        path = key["key_ID_extension"]["paths"][0]
        self.paths.append(path)
        return path


def _relay_failures(network: QciNetwork, node: str) -> int:
    status = cluster_status(network.state_dir)
    return int(sum(status["nodes"][node]["network"].get("relay_failures_by_reason", {}).values()))


def _tampered(network: QciNetwork, node: str, link_id: str) -> int:
    """Messages ``node``'s fault on ``link_id`` has tampered with so far."""
    (link,) = [ln for ln in cluster_status(network.state_dir)["nodes"][node]["links"] if ln["link_id"] == link_id]
    return int(link.get("fault_affected", 0))


def _link(network: QciNetwork, link_id: str) -> dict:
    return cluster_status(network.state_dir)["links"][link_id]


def _until(predicate, timeout_s: float = 60.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.3)


def test_forged_lost_and_replayed_hops_and_a_partition(ring: QciNetwork) -> None:
    # Bad requests name what is wrong and change nothing.
    assert "--link: no link 'r1-r3'" in qcinode_fault(ring, "--link", "r1-r3", "--kind", "drop", ok=False)
    assert "unknown fault 'explode'" in qcinode_fault(ring, "--link", "r1-r2", "--kind", "explode", ok=False)
    assert "fault.probability" in qcinode_fault(ring, "--link", "r1-r2", "--kind", "drop", "--probability", "3", ok=False)
    assert "--end: 'r3' is not an end of r1-r2" in qcinode_fault(ring, "--link", "r1-r2", "--kind", "drop", "--end", "r3", ok=False)
    assert all(not link["fault"] for node in cluster_status(ring.state_dir)["nodes"].values() for link in node["links"])

    keys = Ledger(ring)
    first = keys.get()
    via = first[1]
    other = "r4" if via == "r2" else "r2"
    link = "r1-r2" if via == "r2" else "r4-r1"

    # Forged hops: r1 flips a bit of every relay hop it sends on the link. The
    # next node refuses each (its tag fails before any pad is used there), and
    # r1 carries the key over the other path. Routing picks either path, so
    # keys are asked for until three hops have been forged.
    qcinode_fault(ring, "--link", link, "--kind", "flip", "--channel", "relay", "--end", "r1")
    refused_before, tampered_before = _relay_failures(ring, via), _tampered(ring, "r1", link)
    for _ in range(30):
        assert keys.get()[1] == other, "a key crossed a hop whose every message was forged"
        if _tampered(ring, "r1", link) >= tampered_before + 3:
            break
    forged = _tampered(ring, "r1", link) - tampered_before
    assert forged >= 3 and _relay_failures(ring, via) >= refused_before + forged
    assert _link(ring, link)["state"] == "up", "a relay fault must not touch the link's own session"

    # Lost hops: the pad is spent at r1, never at the next node; rerouted.
    qcinode_fault(ring, "--link", link, "--kind", "drop", "--channel", "relay", "--end", "r1")
    tampered_before = _tampered(ring, "r1", link)
    for _ in range(30):
        assert keys.get()[1] == other, "a key crossed a hop that was never sent"
        if _tampered(ring, "r1", link) >= tampered_before + 2:
            break
    assert _tampered(ring, "r1", link) >= tampered_before + 2

    # Replayed hops: delivered once; the copy is refused downstream.
    qcinode_fault(ring, "--link", link, "--kind", "replay", "--channel", "relay", "--end", "r1")
    refused_before, tampered_before = _relay_failures(ring, via), _tampered(ring, "r1", link)
    for _ in range(30):
        keys.get()
        if _tampered(ring, "r1", link) >= tampered_before + 3:
            break
    replayed = _tampered(ring, "r1", link) - tampered_before
    assert replayed >= 3 and _relay_failures(ring, via) >= refused_before + replayed

    # A partition, at both ends: the link goes down, adverts say so, keys go
    # around it; when it is restored the link resumes and grows key again.
    out = qcinode_fault(ring, "--link", link, "--kind", "partition")
    assert out.count("partition") == 2
    _until(lambda: _link(ring, link)["state"] != "up")
    for _ in range(3):
        assert keys.get()[1] == other
    qcinode_fault(ring, "--link", link, "--off")
    blocks = int(_link(ring, link)["blocks_done"])
    _until(lambda: _link(ring, link)["state"] == "up" and int(_link(ring, link)["blocks_done"]) >= blocks + 2)

    # The audit across both ends of every link.
    audit = audit_ledgers(cluster_status(ring.state_dir, ledger=True))
    assert audit.ok, audit.violations or audit.missing_ends
    assert audit.links[link].bytes_initiator_only > 0, "forged and lost hops spent pad only at r1"
    assert len(set(keys.keys.values())) == len(keys.keys) >= 12
