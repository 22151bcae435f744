"""The space segment with real processes: two ground stations joined only by a satellite.

A satellite node and two ground stations with no fibre between them; the
emulation runs 100x real time from a few emulated minutes before the
satellite's first night passes over Malta and Redu. Each downlink makes key
only while the satellite is above its station's mask, the pools survive a
restart of the satellite node, and keys between an SAE at each station
travel through the satellite and match.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from qcinode.cluster.launcher import cluster_status
from qcinode.core.orbit import parse_utc
from qcinode.space import downlink_channel
from qcinode.testing import QciNetwork, start_network
from qcinode.topology import load_topology

RATE_HZ = 2.0e7

SATELLITE = f"""
name: sat
emulation: {{speed: 100, start: "2027-03-21T20:00:00Z"}}  # 42 emulated minutes (25 s) before the first pass
defaults:
  source: {{rate_hz: {RATE_HZ}}}
  detector: {{efficiency: 0.5, dark_count_probability: 1.0e-6, misalignment_error: 0.01}}
  postprocessing: {{block_bits: 100000}}
  free_space: {{elevation_mask_deg: 15, beam_divergence_urad: 5.0}}
nodes:
  - {{name: redu, saes: [redu-app], location: {{latitude_deg: 50.0016, longitude_deg: 5.1456, altitude_m: 380}}}}
  - {{name: malta, saes: [malta-app], location: {{latitude_deg: 35.8989, longitude_deg: 14.5146, altitude_m: 50}}}}
  - name: eagle
    satellite:
      orbit: {{altitude_km: 525, sun_synchronous: true, ltan: "22:30", epoch: "2027-03-21T19:00:00Z"}}
links:
  - {{between: [eagle, redu]}}
  - {{between: [eagle, malta]}}
"""


@pytest.fixture
def space(tmp_path: Path) -> Iterator[QciNetwork]:
    topology = tmp_path / "sat.yaml"
    topology.write_text(SATELLITE)
    network = start_network(topology, tmp_path / "state", ready_timeout_s=240)
    try:
        yield network
    finally:
        network.cluster.stop()


def _links(network: QciNetwork) -> dict[str, dict]:
    return cluster_status(network.state_dir)["links"]


def _wait(predicate, timeout_s: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(0.5)


def _keys(network: QciNetwork, master: str, slave: str, number: int = 4) -> list[list[str]]:
    m, s = network.sae(master), network.sae(slave)
    status, enc = network.client(master).enc_keys(m.kme_url, slave, number=number, size_bits=256)
    assert status == 200, enc
    ids = [k["key_ID"] for k in enc["keys"]]
    status, dec = network.client(slave).dec_keys(s.kme_url, master, ids)
    assert status == 200, dec
    assert [k["key"] for k in dec["keys"]] == [k["key"] for k in enc["keys"]]
    return [path for k in enc["keys"] for path in k["key_ID_extension"]["paths"]]


def _pass_seconds_before(passes: tuple, t_utc: float) -> float:
    """Emulated seconds of passes before ``t_utc``: the only time the source sends pulses."""
    return sum(max(0.0, min(p.set_utc, t_utc) - p.rise_utc) for p in passes if p.rise_utc < t_utc)


@pytest.mark.slow
def test_two_stations_share_keys_through_the_satellite_grown_only_during_passes(space: QciNetwork) -> None:
    topology = load_topology(space.state_dir / "topology.yaml")
    start = parse_utc("2027-03-21T20:00:00Z")
    # The passes as the nodes compute them (the same pass finder, over the same chunks of time).
    passes = {link.link_id: tuple(downlink_channel(topology, link).passes(start, start + 86400)) for link in topology.links}
    assert set(passes) == {"eagle-redu", "eagle-malta"}
    seen: list[str] = []

    def first_passes_settled() -> bool:
        """Both transmitters past their first pass, every pulse sent so far counted in a finished block."""
        links = _links(space)
        done = True
        for link_id, link_passes_ in passes.items():
            link = links[link_id]
            position = (link.get("channel") or {}).get("emulated_utc")
            if position is None:
                return False
            t = parse_utc(position)
            expected = RATE_HZ * _pass_seconds_before(link_passes_, t)
            # Pulses cross the channel only during passes: as many as the pass time up to the
            # transmitter's position allows, to within the rounding of a pass's ends to whole
            # slots (emulated UTC ~1.8e9 s resolves ~0.24 us as a float).
            slack = sum(RATE_HZ * 1e-6 + 2 for p in link_passes_ if p.rise_utc < t)
            assert link["pulses_sent"] <= expected + slack, (link_id, position, link["pulses_sent"], expected)
            seen.append(f"{link_id} at {position}: {link['pulses_sent']} pulses of {expected:.0f}, {link['blocks_done']} blocks")
            done &= t >= link_passes_[0].set_utc - 1e-3 and expected - link["pulses_sent"] <= slack and link["blocks_done"] >= 1
        return done

    try:
        _wait(first_passes_settled, 240, "both downlinks to finish their first pass")
    finally:
        print("\n".join(seen[-6:]))
    links = _links(space)
    for link in links.values():
        assert link["alice_pool_bits"] > 0 and link["bob_pool_bits"] > 0
        assert link["state"] == "up"  # the classical channel stays up between passes (classical: always)

    # Malta and Redu share no fibre: their keys cross the satellite.
    assert _keys(space, "malta-app", "redu-app") == [["malta", "eagle", "redu"]] * 4
    assert _keys(space, "redu-app", "malta-app") == [["redu", "eagle", "malta"]] * 4

    # The satellite node restarts from its data directory: its pools are as they were
    # (between passes nothing adds to them; the relays above spent from both halves).
    before = {link_id: (link["alice_pool_bits"], link["bob_pool_bits"]) for link_id, link in _links(space).items()}
    in_pass = {link_id for link_id, link in _links(space).items() if (link.get("channel") or {}).get("in_pass")}
    space.restart("eagle")
    _wait(lambda: all(link["state"] == "up" for link in _links(space).values()), 60, "the links to come back up")
    after = {link_id: (link["alice_pool_bits"], link["bob_pool_bits"]) for link_id, link in _links(space).items()}
    for link_id in before:
        if link_id not in in_pass:
            assert after[link_id] == before[link_id], link_id
        else:  # a block of a pass under way may have been added or abandoned meanwhile
            assert after[link_id][0] >= before[link_id][0] * 0.5, link_id
    # Routing learns the restarted node's links again within a few adverts.
    _wait(lambda: _routing_ready(space), 30, "routing through the restarted satellite")
    assert _keys(space, "malta-app", "redu-app", number=2) == [["malta", "eagle", "redu"]] * 2


def _routing_ready(network: QciNetwork) -> bool:
    sae = network.sae("malta-app")
    status, body = network.client("malta-app").request("GET", f"{sae.kme_url}/api/v1/keys/redu-app/status", timeout_s=5)
    return status == 200 and body.get("stored_key_count", 0) >= 2


@pytest.mark.slow
def test_in_contact_mode_the_classical_channel_runs_only_during_passes(tmp_path: Path) -> None:
    """``classical: contact``: no ground network carries the satellite's traffic between passes."""
    from qcinode.cluster.launcher import running_cluster
    from qcinode.kme.client import EtsiClient

    topology_path = tmp_path / "sat.yaml"
    # A quarter of the other tests' speed: the pass lasts 14 wall seconds instead of 3.4, so a link
    # whose first block needs 2 s on an idle machine still makes one on a saturated one.
    topology_path.write_text(
        SATELLITE.replace("beam_divergence_urad: 5.0}", "beam_divergence_urad: 5.0, classical: contact}").replace(
            'emulation: {speed: 100, start: "2027-03-21T20:00:00Z"}', 'emulation: {speed: 25, start: "2027-03-21T20:35:00Z"}'
        )
    )
    assert "speed: 25" in topology_path.read_text()
    with running_cluster(topology_path, tmp_path / "state") as cluster:
        # Before the pass there is no contact: the link is down, however long we wait.
        links = cluster_status(cluster.state_dir)["links"]
        assert links["eagle-malta"]["state"] != "up" and links["eagle-malta"]["channel"]["note"] == "below mask"
        # During its pass the link comes up and makes key ...
        _wait(lambda: cluster_status(cluster.state_dir)["links"]["eagle-malta"]["blocks_done"] >= 1, 120, "a block during the pass")
        # ... and after it the link is cut again, its pools kept.
        def after_pass() -> bool:
            link = cluster_status(cluster.state_dir)["links"]["eagle-malta"]
            return link["state"] != "up" and link["channel"].get("next_pass_utc", "") > "2027-03-21T21"
        _wait(after_pass, 120, "the end of the pass")
        link = cluster_status(cluster.state_dir)["links"]["eagle-malta"]
        assert link["alice_pool_bits"] > 0 and link["bob_pool_bits"] > 0
        log = (cluster.state_dir / "logs" / "eagle.log").read_text()
        assert '"in_contact": true' in log and '"in_contact": false' in log
        # Between passes no key crosses the satellite: the KME says the network cannot carry it.
        info = json.loads((cluster.state_dir / "cluster.json").read_text())
        sae = info["saes"]["malta-app"]
        client = EtsiClient(cluster.state_dir / info["ca"], cluster.state_dir / sae["cert"], cluster.state_dir / sae["key"])
        status, body = client.enc_keys(info["nodes"]["malta"]["etsi014"], "redu-app", number=1, size_bits=256)
        assert status == 503, body
