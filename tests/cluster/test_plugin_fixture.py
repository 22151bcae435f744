"""The ``qci_network`` fixture, used exactly as the README shows a user's test."""

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
