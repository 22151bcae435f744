"""Keys across several hops, through the ETSI 014 API of real node processes."""

from __future__ import annotations

import base64
import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from qcinode.testing import QciNetwork, start_network

LINK_DEFAULTS = """
defaults:
  postprocessing: {block_bits: 50000}
emulation: {speed: max}
"""

CHAIN = "name: chain\n" + LINK_DEFAULTS + """
nodes:
  - {name: n1, saes: [app-1]}
  - {name: n2}
  - {name: n3}
  - {name: n4}
  - {name: n5, saes: [app-5]}
links:
  - {between: [n1, n2], length_km: 10}
  - {between: [n2, n3], length_km: 10}
  - {between: [n3, n4], length_km: 10}
  - {between: [n4, n5], length_km: 10}
"""

RING = "name: ring\n" + LINK_DEFAULTS + """
nodes:
  - {name: r1, saes: [app-a]}
  - {name: r2}
  - {name: r3, saes: [app-c]}
  - {name: r4}
links:
  - {between: [r1, r2], length_km: 10}
  - {between: [r2, r3], length_km: 10}
  - {between: [r3, r4], length_km: 10}
  - {between: [r4, r1], length_km: 10}
"""


def _network(tmp_path: Path, text: str) -> Iterator[QciNetwork]:
    topology = tmp_path / "topology.yaml"
    topology.write_text(text)
    network = start_network(topology, tmp_path / "state", ready_timeout_s=90)
    try:
        yield network
    finally:
        network.cluster.stop()


@pytest.fixture
def chain(tmp_path: Path) -> Iterator[QciNetwork]:
    yield from _network(tmp_path, CHAIN)


@pytest.fixture
def ring(tmp_path: Path) -> Iterator[QciNetwork]:
    yield from _network(tmp_path, RING)


def get_keys(
    network: QciNetwork, master: str, slave: str, number: int = 1, size: int = 256, retry_s: float = 0.0
) -> tuple[int, list[dict], list[dict]]:
    """enc_keys then dec_keys; with ``retry_s``, a 503 (not enough key yet on the path) is retried as an application would."""
    m, s = network.sae(master), network.sae(slave)
    deadline = time.monotonic() + retry_s
    while True:
        status, enc = network.client(master).enc_keys(m.kme_url, slave, number=number, size_bits=size)
        if status != 503 or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    if status != 200:
        return status, [], []
    ids = [k["key_ID"] for k in enc["keys"]]
    status, dec = network.client(slave).dec_keys(s.kme_url, master, ids)
    assert status == 200, dec
    return 200, enc["keys"], dec["keys"]


def test_chain_of_five_delivers_identical_keys_over_four_hops(chain: QciNetwork) -> None:
    status, enc, dec = get_keys(chain, "app-1", "app-5", number=4, size=512, retry_s=30)
    assert status == 200
    assert [k["key_ID"] for k in enc] == [k["key_ID"] for k in dec]
    assert [k["key"] for k in enc] == [k["key"] for k in dec]
    assert all(len(base64.b64decode(k["key"])) == 64 for k in enc)
    assert enc[0]["key_ID_extension"]["paths"] == [["n1", "n2", "n3", "n4", "n5"]]
    # And the other way round, from the far end, 16 keys relayed concurrently.
    status, enc, dec = get_keys(chain, "app-5", "app-1", number=16, retry_s=30)
    assert status == 200 and [k["key"] for k in enc] == [k["key"] for k in dec]
    assert len({k["key"] for k in enc}) == len({k["key_ID"] for k in enc}) == 16
    # A key is redeemed once.
    again = chain.client("app-5").dec_keys(chain.sae("app-5").kme_url, "app-1", [enc[0]["key_ID"]])
    assert again[0] == 400
    # Ledger audit: both ends of every hop used exactly the same pool bytes, and some were used.
    from qcinode.cluster.launcher import cluster_status

    views: dict[str, dict[str, list]] = {}
    for node in cluster_status(chain.state_dir, ledger=True)["nodes"].values():
        for link in node["links"]:
            views.setdefault(link["link_id"], {})[link["role"]] = link["ledger"]
    assert set(views) == {"n1-n2", "n2-n3", "n3-n4", "n4-n5"}
    for link_id, ends in views.items():
        assert ends["alice"] == ends["bob"], f"the two ends of {link_id} disagree on which key bits were used"
        assert ends["alice"], f"{link_id} carried relays but its ledger is empty"
    # No node logged key material: neither the keys' base64 nor their hex.
    logs = "".join(p.read_text(errors="replace") for p in (chain.state_dir / "logs").glob("*.log"))
    # The destination logs the keys that arrive together in one line; together the lines name every key.
    delivered = [json.loads(line) for line in logs.splitlines() if '"relay.delivered"' in line]
    assert delivered and all(entry["count"] == len(entry["key_ids"]) for entry in delivered)
    assert {k["key_ID"] for k in enc} <= {key_id for entry in delivered for key_id in entry["key_ids"]}
    assert any(entry["count"] > 1 for entry in delivered), "16 keys relayed together were logged one by one"
    for key in enc:
        raw = base64.b64decode(key["key"])
        assert key["key"] not in logs and raw.hex() not in logs
    # ... nor link key: the one-time MAC keys of the first blocks come from the bootstrap keys.
    for path in (chain.state_dir / "certs" / "links").glob("*.key"):
        bootstrap = path.read_bytes()
        for offset in range(0, 32 * 16, 32):
            chunk = bootstrap[offset : offset + 32]
            assert chunk.hex() not in logs and base64.b64encode(chunk).decode() not in logs


def test_ring_reroutes_around_a_killed_node_and_never_mismatches(ring: QciNetwork) -> None:
    delivered: dict[str, str] = {}
    failures = 0
    killed = None
    for i in range(24):
        if i == 6:
            # Kill a node on the path the keys have been taking.
            status, enc, _ = get_keys(ring, "app-a", "app-c", retry_s=30)
            assert status == 200
            via = enc[0]["key_ID_extension"]["paths"][0][1]
            killed = ring.cluster.processes[via]
            os.kill(killed.pid, signal.SIGKILL)
        status, enc, dec = get_keys(ring, "app-a", "app-c")
        if status != 200:
            assert status == 503
            failures += 1
            time.sleep(0.5)
            continue
        for e, d in zip(enc, dec):
            assert e["key_ID"] == d["key_ID"] and e["key"] == d["key"]
            assert e["key_ID"] not in delivered, "a key ID was delivered twice"
            delivered[e["key_ID"]] = e["key"]
            if i > 6:
                assert via not in e["key_ID_extension"]["paths"][0]
    assert killed is not None
    assert len(delivered) >= 15, f"only {len(delivered)} keys, {failures} refused"
    assert len(set(delivered.values())) == len(delivered)


def test_slave_node_killed_between_enc_and_dec_still_redeems(chain: QciNetwork) -> None:
    m, s = chain.sae("app-1"), chain.sae("app-5")
    deadline = time.monotonic() + 30
    while (result := chain.client("app-1").enc_keys(m.kme_url, "app-5", number=2))[0] == 503 and time.monotonic() < deadline:
        time.sleep(0.3)
    status, enc = result
    assert status == 200
    victim = chain.cluster.processes["n5"]
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait(timeout=10)
    chain.cluster.start_node("n5")
    chain.cluster.wait_healthy()
    status, dec = chain.client("app-5").dec_keys(s.kme_url, "app-1", [k["key_ID"] for k in enc["keys"]])
    assert status == 200
    assert [k["key"] for k in dec["keys"]] == [k["key"] for k in enc["keys"]]


def test_refusals_consume_no_key_material(chain: QciNetwork) -> None:
    from qcinode.cluster.launcher import cluster_status

    client, url = chain.client("app-1"), chain.sae("app-1").kme_url

    def pools() -> int:
        return sum(int(link["pool_bits"]) for node in cluster_status(chain.state_dir)["nodes"].values() for link in node["links"])

    # Let the links fill a little, then freeze growth by comparing before/after within one status read each.
    before = pools()
    cases = [
        client.request("POST", f"{url}/api/v1/keys/app-5/enc_keys", {"number": 10**6}),
        client.request("POST", f"{url}/api/v1/keys/app-5/enc_keys", {"number": 1, "size": 12}),
        client.request("POST", f"{url}/api/v1/keys/nobody/enc_keys", {"number": 1}),
        client.request("POST", f"{url}/api/v1/keys/app-5/enc_keys", {"number": 1, "extension_mandatory": [{"x": 1}]}),
        chain.client("app-5").request("POST", f"{url}/api/v1/keys/app-5/enc_keys", {"number": 1}),
        client.request("POST", f"{chain.sae('app-5').kme_url}/api/v1/keys/app-1/dec_keys", {"key_IDs": [{"key_ID": "6f1c3b52-0b5e-4d0e-9f57-3c2b7d9e8a10"}]}),
    ]
    statuses = [status for status, _ in cases]
    assert statuses == [400, 400, 400, 400, 401, 401], cases
    assert all(body.get("message") for _, body in cases)
    after = pools()
    # Pools only grow while nothing is consumed (links keep adding blocks).
    assert after >= before
    # An exhausted network answers 503: more key than the links can hold right now.
    status, body = client.enc_keys(url, "app-5", number=128, size_bits=8192)
    assert status in (200, 503)
    if status == 503:
        assert body["message"]


def test_multipath_relay_splits_each_key_over_node_disjoint_paths(tmp_path: Path) -> None:
    for network in _network(tmp_path, RING.replace("name: ring\n", "name: ring\nrelay: {paths: 2}\n")):
        status, enc, dec = get_keys(network, "app-a", "app-c", number=3, retry_s=30)
        assert status == 200
        assert [k["key"] for k in enc] == [k["key"] for k in dec]
        for key in enc:
            paths = key["key_ID_extension"]["paths"]
            assert sorted(paths) == [["r1", "r2", "r3"], ["r1", "r4", "r3"]]
            inner = [set(p[1:-1]) for p in paths]
            assert not inner[0] & inner[1], "shares must not meet at a trusted node"


def test_no_path_with_key_is_503_and_consumes_nothing(tmp_path: Path) -> None:
    from qcinode.cluster.launcher import cluster_status, running_cluster
    from qcinode.kme.client import EtsiClient

    topology = tmp_path / "dead-end.yaml"
    topology.write_text("name: dead-end\n" + LINK_DEFAULTS + """
nodes:
  - {name: d1, saes: [app-1]}
  - {name: d2}
  - {name: d3, saes: [app-3]}
links:
  - {between: [d1, d2], length_km: 10}
  - {between: [d2, d3], length_km: 400}   # dark counts only: QBER 50 %, never any key
""")
    with running_cluster(topology, tmp_path / "state") as cluster:
        state = cluster.state_dir

        def first_hop_pool() -> int:
            links = cluster_status(state)["links"]
            return int(links.get("d1-d2", {}).get("alice_pool_bits") or 0)

        deadline = time.monotonic() + 60
        while first_hop_pool() == 0 and time.monotonic() < deadline:
            time.sleep(0.3)
        assert first_hop_pool() > 0
        info = __import__("json").loads((state / "cluster.json").read_text())
        client = EtsiClient(state / info["ca"], state / info["saes"]["app-1"]["cert"], state / info["saes"]["app-1"]["key"])
        url = info["nodes"]["d1"]["etsi014"]
        status, body = client.status(url, "app-3")
        assert status == 200 and body["stored_key_count"] == 0
        before = first_hop_pool()
        status, body = client.enc_keys(url, "app-3", number=1)
        assert status == 503 and body["message"]
        assert first_hop_pool() >= before, "a refused request must not spend the first hop's key"
        assert cluster_status(state)["nodes"]["d1"]["network"]["relay_hops_sent"] == 0


def test_keys_nobody_redeems_expire_after_the_ttl(tmp_path: Path) -> None:
    text = "name: ttl\n" + LINK_DEFAULTS + """
relay: {key_ttl_s: 2}
nodes:
  - {name: a, saes: [app-a]}
  - {name: b, saes: [app-b]}
links:
  - {between: [a, b], length_km: 10}
"""
    from qcinode.cluster.launcher import cluster_status

    for network in _network(tmp_path, text):
        m, s = network.sae("app-a"), network.sae("app-b")
        status, enc = network.client("app-a").enc_keys(m.kme_url, "app-b", number=2)
        assert status == 200
        kept, left = enc["keys"]
        # Redeemed in time: fine.
        status, dec = network.client("app-b").dec_keys(s.kme_url, "app-a", [kept["key_ID"]])
        assert status == 200 and dec["keys"][0]["key"] == kept["key"]
        deadline = time.monotonic() + 15
        while cluster_status(network.state_dir)["nodes"]["b"]["network"].get("keys_expired", 0) < 1:
            assert time.monotonic() < deadline, "the unredeemed key never expired"
            time.sleep(0.3)
        status, body = network.client("app-b").dec_keys(s.kme_url, "app-a", [left["key_ID"]])
        assert status == 400 and left["key_ID"] in json.dumps(body)
