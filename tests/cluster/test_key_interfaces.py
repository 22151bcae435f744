"""SKIP and ETSI GS QKD 004 on real node processes, next to ETSI 014, backed by the same key store and relay."""

from __future__ import annotations

import importlib
import json
import socket
import ssl
import subprocess
import sys
import time
import types
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from qcinode.kme.client import EtsiClient

pytestmark = pytest.mark.slow


def qcinode(*args: str, timeout: float = 150) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "qcinode", *args], capture_output=True, text=True, timeout=timeout, check=False)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    from tests.support.topologies import TWO_NODES

    tmp = tmp_path_factory.mktemp("interfaces")
    topology = tmp / "pair.yaml"
    topology.write_text(TWO_NODES)
    state = tmp / "state"
    up = qcinode("up", str(topology), "--state-dir", str(state), "--detach", "--timeout", "120")
    assert up.returncode == 0, up.stderr
    try:
        doc = json.loads((state / "cluster.json").read_text())
        doc["state"] = state
        yield doc
    finally:
        qcinode("down", "--state-dir", str(state))


def sae_files(cluster: dict[str, Any], sae: str) -> tuple[Path, Path, Path]:
    state: Path = cluster["state"]
    info = cluster["saes"][sae]
    return state / cluster["ca"], state / info["cert"], state / info["key"]


def context(cluster: dict[str, Any], sae: str) -> ssl.SSLContext:
    ca, cert, key = sae_files(cluster, sae)
    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.load_cert_chain(str(cert), str(key))
    return ctx


def node_url(cluster: dict[str, Any], sae: str, interface: str) -> str:
    return str(cluster["nodes"][cluster["saes"][sae]["node"]][interface])


# -- SKIP ------------------------------------------------------------------------------------


def skip_get(cluster: dict[str, Any], sae: str, path: str) -> tuple[int, Any]:
    """A request as the draft's examples write them: GET, query parameters, JSON back."""
    try:
        with urllib.request.urlopen(node_url(cluster, sae, "skip") + path, context=context(cluster, sae), timeout=30) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"null")


def test_skip_requests_from_the_drafts_examples(cluster: dict[str, Any]) -> None:
    status, caps = skip_get(cluster, "alpha-app", "/capabilities")
    assert status == 200
    assert caps["localSystemID"] == "alpha-app" and caps["remoteSystemID"] == ["beta-app"]
    assert caps["entropy"] is True and caps["key"] is True

    status, key = skip_get(cluster, "alpha-app", "/key?remoteSystemID=beta-app&size=256")
    assert status == 200, key
    assert len(key["keyId"]) == 32 and len(bytes.fromhex(key["key"])) == 32
    status, same = skip_get(cluster, "beta-app", f"/key/{key['keyId']}?remoteSystemID=alpha-app")
    assert status == 200 and same == key
    assert skip_get(cluster, "beta-app", f"/key/{key['keyId']}?remoteSystemID=alpha-app")[0] == 404  # handed out once

    status, entropy = skip_get(cluster, "alpha-app", "/entropy?minentropy=128")
    assert status == 200 and entropy["minentropy"] == 128 and len(bytes.fromhex(entropy["randomStr"])) == 16

    assert skip_get(cluster, "alpha-app", "/key?remoteSystemID=nobody")[0] == 400
    assert skip_get(cluster, "alpha-app", "/key?remoteSystemID=beta-app&size=12")[0] == 400
    assert skip_get(cluster, "beta-app", "/key/zz?remoteSystemID=alpha-app")[0] == 400


def test_a_key_handed_out_through_one_interface_is_never_handed_out_through_another(cluster: dict[str, Any]) -> None:
    alpha_014 = EtsiClient(*sae_files(cluster, "alpha-app"))
    beta_014 = EtsiClient(*sae_files(cluster, "beta-app"))
    # SKIP first, then ETSI 014 dec_keys for the same key: refused.
    status, key = skip_get(cluster, "alpha-app", "/key?remoteSystemID=beta-app")
    assert status == 200
    key_id = str(uuid.UUID(hex=key["keyId"]))
    assert skip_get(cluster, "beta-app", f"/key/{key['keyId']}?remoteSystemID=alpha-app")[0] == 200
    status, body = beta_014.dec_keys(node_url(cluster, "beta-app", "etsi014"), "alpha-app", [key_id])
    assert status == 400, body
    # ETSI 014 enc_keys, redeemed through SKIP, then dec_keys: refused.
    status, body = alpha_014.enc_keys(node_url(cluster, "alpha-app", "etsi014"), "beta-app")
    assert status == 200, body
    (entry,) = body["keys"]
    status, via_skip = skip_get(cluster, "beta-app", f"/key/{uuid.UUID(entry['key_ID']).hex}?remoteSystemID=alpha-app")
    assert status == 200 and bytes.fromhex(via_skip["key"]) == __import__("base64").b64decode(entry["key"])
    assert beta_014.dec_keys(node_url(cluster, "beta-app", "etsi014"), "alpha-app", [entry["key_ID"]])[0] == 400
    # And a key redeemed with dec_keys is gone for SKIP.
    status, body = alpha_014.enc_keys(node_url(cluster, "alpha-app", "etsi014"), "beta-app")
    (entry,) = body["keys"]
    assert beta_014.dec_keys(node_url(cluster, "beta-app", "etsi014"), "alpha-app", [entry["key_ID"]])[0] == 200
    assert skip_get(cluster, "beta-app", f"/key/{uuid.UUID(entry['key_ID']).hex}?remoteSystemID=alpha-app")[0] == 404


def test_skip_with_the_independent_skip_qkd_client(cluster: dict[str, Any]) -> None:
    # skip-qkd (PyPI) imports sslpsk3, a C extension without wheels, for its TLS-PSK mode only;
    # its mTLS mode (used here) never touches it, so a stand-in module lets it import.
    if importlib.util.find_spec("skip_qkd") is None:
        pytest.skip("skip-qkd is not installed: pip install --no-deps skip-qkd==1.0.0 (its sslpsk3 dependency has no wheel)")
    if importlib.util.find_spec("sslpsk3") is None:
        sys.modules.setdefault("sslpsk3", types.SimpleNamespace(SSLPSKContext=None))  # type: ignore[arg-type]
    from skip_qkd import MTLSConfig, SkipQKDClient

    def client(sae: str) -> Any:
        ca, cert, key = sae_files(cluster, sae)
        address = node_url(cluster, sae, "skip").removeprefix("https://")
        return SkipQKDClient(server_address=address, server_id=sae, mtls_config=MTLSConfig(str(ca), str(cert), str(key)))

    assert client("alpha-app").capabilities()["remoteSystemID"] == ["beta-app"]
    key = client("alpha-app").request_key("beta-app", size=512)
    assert len(bytes.fromhex(key["key"])) == 64
    assert client("beta-app").fetch_key_by_id(key["keyId"], "alpha-app") == key
    with pytest.raises(RuntimeError, match="404"):
        client("beta-app").fetch_key_by_id(key["keyId"], "alpha-app")
    assert len(bytes.fromhex(client("beta-app").entropy(256)["randomStr"])) == 32


# -- ETSI GS QKD 004: the JSON dialect, as QUBIP's driver speaks it --------------------------


class Qkd004:
    """One connection, one JSON object per request, the answer read back (no delimiter needed)."""

    def __init__(self, cluster: dict[str, Any], sae: str) -> None:
        host, port = node_url(cluster, sae, "etsi004").rsplit(":", 1)
        raw = socket.create_connection((host, int(port)), timeout=30)
        self.sock = context(cluster, sae).wrap_socket(raw, server_hostname=host)
        self.sae = sae
        self._buffer = b""

    def call(self, command: str, **data: Any) -> dict[str, Any]:
        self.sock.sendall(json.dumps({"command": command, "data": data}).encode())
        while b"\n" not in self._buffer:
            chunk = self.sock.recv(65536)
            assert chunk, "connection closed"
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        answer: dict[str, Any] = json.loads(line)
        return answer

    def open(self, peer: str, ksid: str | None = None, **qos: Any) -> dict[str, Any]:
        data: dict[str, Any] = {"source": f"qkd://{self.sae}", "destination": f"qkd://{peer}", "qos": {"key_chunk_size": 32, "timeout": 5000, **qos}}
        if ksid is not None:
            data["key_stream_id"] = ksid
        return self.call("OPEN_CONNECT", **data)

    def close(self) -> None:
        self.sock.close()


def test_004_both_saes_read_equal_keys_and_the_statuses(cluster: dict[str, Any]) -> None:
    alice, bob = Qkd004(cluster, "alpha-app"), Qkd004(cluster, "beta-app")
    try:
        opened = alice.open("beta-app")
        assert opened["status"] == 1, opened  # successful, peer not connected
        ksid = opened["key_stream_id"]
        assert alice.call("GET_KEY", key_stream_id=ksid, index=0)["status"] == 3  # GET_KEY: peer not connected
        joined = bob.open("alpha-app", ksid)
        assert joined["status"] == 0, joined
        ours = [alice.call("GET_KEY", key_stream_id=ksid, index=i) for i in range(4)]
        theirs = [bob.call("GET_KEY", key_stream_id=ksid, index=i) for i in range(4)]
        assert [a["status"] for a in ours + theirs] == [0] * 8, ours + theirs
        assert [a["key_buffer"] for a in ours] == [b["key_buffer"] for b in theirs]
        assert len({a["key_buffer"] for a in ours}) == 4
        assert alice.call("CLOSE", key_stream_id=ksid)["status"] == 0
        assert alice.call("GET_KEY", key_stream_id=ksid, index=5)["status"] == 4

        # QoS above what the link carries: refused with the counter-proposal.
        greedy = alice.open("beta-app", min_bps=10**9, max_bps=2 * 10**9)
        assert greedy["status"] == 7 and greedy["qos"]["min_bps"] < 10**9
        assert greedy["qos"]["max_bps"] == greedy["qos"]["min_bps"]

        # TTL: a stream of one second is gone after it.
        short = alice.open("beta-app", ttl=1)
        assert short["status"] == 1 and short["qos"]["ttl"] == 1
        time.sleep(1.5)
        assert alice.call("GET_KEY", key_stream_id=short["key_stream_id"], index=0)["status"] == 4
    finally:
        alice.close()
        bob.close()
