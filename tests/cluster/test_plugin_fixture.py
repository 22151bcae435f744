"""The ``qci_network`` fixture, used exactly as docs/operations.md shows a user's test."""

from __future__ import annotations

import ssl
from pathlib import Path

import aiohttp
import pytest

SMALL = """
name: small
defaults: {postprocessing: {block_bits: 50000}}
emulation: {speed: max}
nodes:
  - {name: alpha, saes: [alice-app]}
  - {name: hub}
  - {name: gamma, saes: [carol-app]}
links:
  - {between: [alpha, hub], length_km: 20}
  - {between: [hub, gamma], length_km: 30}
"""


@pytest.fixture
def qci_topology(tmp_path: Path) -> Path:
    path = tmp_path / "small.yaml"
    path.write_text(SMALL)
    return path


@pytest.mark.asyncio
async def test_users_application_gets_the_same_key_at_both_ends(qci_network) -> None:
    alice, carol = qci_network.sae("alice-app"), qci_network.sae("carol-app")

    def tls(sae) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(qci_network.ca))
        context.load_cert_chain(sae.cert, sae.key)
        return context

    async with aiohttp.ClientSession() as http:
        async with http.post(f"{alice.kme_url}/api/v1/keys/carol-app/enc_keys", json={"number": 2, "size": 256}, ssl=tls(alice)) as r:
            assert r.status == 200
            sent = (await r.json())["keys"]
        ids = {"key_IDs": [{"key_ID": k["key_ID"]} for k in sent]}
        async with http.post(f"{carol.kme_url}/api/v1/keys/alice-app/dec_keys", json=ids, ssl=tls(carol)) as r:
            assert r.status == 200
            received = (await r.json())["keys"]
    assert [k["key"] for k in received] == [k["key"] for k in sent]


def test_users_failover_test_can_cut_kill_and_restore_the_network(qci_network) -> None:
    """The fixture's failure helpers: a partitioned or dead trusted node means 503, and keys come back after."""
    import time

    alice = qci_network.sae("alice-app")
    client = qci_network.client("alice-app")

    def enc_status() -> int:
        return int(client.enc_keys(alice.kme_url, "carol-app", number=1)[0])

    def eventually(expected: int, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while enc_status() != expected:
            assert time.monotonic() < deadline, f"enc_keys never answered {expected}"
            time.sleep(0.3)

    assert enc_status() == 200
    qci_network.set_fault("hub-gamma", "partition")
    eventually(503)
    qci_network.set_fault("hub-gamma", "none")
    eventually(200)
    qci_network.kill("hub")
    eventually(503)
    qci_network.restart("hub")
    eventually(200, timeout_s=60)
    with pytest.raises(KeyError, match="no link 'alpha-gamma'"):
        qci_network.set_eavesdropper("alpha-gamma", "intercept-resend")
