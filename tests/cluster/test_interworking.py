"""Two independently started networks joined at an interworking site (ETSI GS QKD 020), through the CLI.

Each network has its own topology, CA and ``qcinode up`` run. A recording
proxy sits on the 020 interface in both directions (it holds both
interworking KMEs' certificates, as a test may), so every 020 request and
response that crossed it is validated against ETSI's OpenAPI description
with a schema-validation library.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from qcinode.cluster.launcher import free_ports
from qcinode.kme.client import EtsiClient
from tests.etsi020_openapi import OpenApi

pytestmark = pytest.mark.slow

NETWORK = """
name: {name}
defaults:
  source: {{rate_hz: 1.0e9}}
  detector: {{efficiency: 0.1, dark_count_probability: 1.0e-6, misalignment_error: 0.01}}
  postprocessing: {{block_bits: 50000}}
emulation: {{speed: max}}
interfaces: {{etsi004: false, skip: false}}
nodes:
  - name: {inner}
    saes: [{app}]
  - name: {gateway}
links:
  - between: [{inner}, {gateway}]
    length_km: 10
interworking:
  - node: {gateway}
    listen: 127.0.0.1:{listen}
    url: https://127.0.0.1:{callback}
    ack_timeout_s: 10
    retries: 1
    peer:
      network: {peer_name}
      kme: {peer_gateway}
      url: https://127.0.0.1:{peer_url}
      ca: {peer_ca}
      saes: [{peer_app}]
"""


def qcinode(*args: str, timeout: float = 150) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "qcinode", *args], capture_output=True, text=True, timeout=timeout, check=False)


# -- a recording 020 proxy ------------------------------------------------------------------


class Recorder:
    """Two TLS proxies on the 020 interface, one per direction, recording every exchange."""

    def __init__(self) -> None:
        self.exchanges: list[dict[str, Any]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None

    def start(self, routes: list[tuple[int, ssl.SSLContext, str, ssl.SSLContext, str]]) -> None:
        """``routes``: (listen port, server context, target URL, client context, target server name)."""
        self._thread = threading.Thread(target=self._run, args=(routes,), daemon=True)
        self._thread.start()
        assert self._ready.wait(10), "proxy did not start"
        if self.error is not None:
            raise self.error

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(10)

    def _run(self, routes: list[tuple[int, ssl.SSLContext, str, ssl.SSLContext, str]]) -> None:
        try:
            asyncio.run(self._main(routes))
        except BaseException as exc:  # noqa: BLE001 - reported to the test
            self.error = exc
            self._ready.set()

    async def _main(self, routes: list[tuple[int, ssl.SSLContext, str, ssl.SSLContext, str]]) -> None:
        import aiohttp
        from aiohttp import web

        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        runners = []
        sessions = []
        for port, server_ctx, target, client_ctx, server_name in routes:
            session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=client_ctx))
            sessions.append(session)

            async def forward(
                request: web.Request, target: str = target, session: aiohttp.ClientSession = session, server_name: str = server_name
            ) -> web.Response:
                body = await request.read()
                headers = {"Content-Type": request.headers["Content-Type"]} if "Content-Type" in request.headers else {}
                async with session.request(request.method, target + request.path_qs, data=body or None, headers=headers, server_hostname=server_name) as answer:
                    raw = await answer.read()
                    status = answer.status
                self.exchanges.append(
                    {
                        "method": request.method,
                        "path": request.path,
                        "request": json.loads(body) if body else None,
                        "status": status,
                        "response": json.loads(raw) if raw else None,
                    }
                )
                return web.Response(status=status, body=raw, content_type="application/json" if raw else None)

            app = web.Application()
            app.router.add_route("*", "/{tail:.*}", forward)
            runner = web.AppRunner(app, access_log=None, handle_signals=False)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", port, ssl_context=server_ctx).start()
            runners.append(runner)
        self._ready.set()
        await self._stop.wait()
        for runner in runners:
            await runner.cleanup()
        for session in sessions:
            await session.close()


def _server_ctx(certs: Path, node: str, client_ca: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(certs / "nodes" / f"{node}.pem", certs / "nodes" / f"{node}.key")
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(client_ca)
    return ctx


def _client_ctx(certs: Path, node: str, server_ca: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_cert_chain(certs / "nodes" / f"{node}.pem", certs / "nodes" / f"{node}.key")
    ctx.load_verify_locations(server_ca)
    return ctx


# -- the two networks -----------------------------------------------------------------------


@pytest.fixture
def two_networks(tmp_path: Path) -> Iterator[dict[str, Any]]:
    alpha, beta = tmp_path / "alpha", tmp_path / "beta"
    listen_a, listen_b, proxy_ab, proxy_ba = free_ports(4)
    # Each network's topology: its own gateway, the other's KME behind the recording proxy.
    files = {}
    for name, inner, gateway, app, listen, callback, peer_name, peer_gateway, peer_url, peer_state, peer_app in (
        ("alpha", "a1", "gw-a", "alpha-app", listen_a, proxy_ba, "beta", "gw-b", proxy_ab, beta, "beta-app"),
        ("beta", "b1", "gw-b", "beta-app", listen_b, proxy_ab, "alpha", "gw-a", proxy_ba, alpha, "alpha-app"),
    ):
        path = tmp_path / f"{name}.yaml"
        path.write_text(
            NETWORK.format(
                name=name,
                inner=inner,
                gateway=gateway,
                app=app,
                listen=listen,
                callback=callback,
                peer_name=peer_name,
                peer_gateway=peer_gateway,
                peer_url=peer_url,
                peer_ca=peer_state / "certs" / "ca.pem",
                peer_app=peer_app,
            )  # fmt: skip
        )
        files[name] = path
    # The operators make their CAs first and exchange them (here: both state directories are ours).
    for name, state in (("alpha", alpha), ("beta", beta)):
        made = qcinode("certs", "--topology", str(files[name]), "--out", str(state / "certs"))
        assert made.returncode == 0, made.stderr
    recorder = Recorder()
    ca_a, ca_b = alpha / "certs" / "ca.pem", beta / "certs" / "ca.pem"
    recorder.start(
        [
            (proxy_ab, _server_ctx(beta / "certs", "gw-b", ca_a), f"https://127.0.0.1:{listen_b}", _client_ctx(alpha / "certs", "gw-a", ca_b), "gw-b"),
            (proxy_ba, _server_ctx(alpha / "certs", "gw-a", ca_b), f"https://127.0.0.1:{listen_a}", _client_ctx(beta / "certs", "gw-b", ca_a), "gw-a"),
        ]
    )
    ups = [
        subprocess.Popen(
            [sys.executable, "-m", "qcinode", "up", str(files[name]), "--state-dir", str(state), "--detach", "--timeout", "120"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name, state in (("alpha", alpha), ("beta", beta))
    ]
    try:
        for up in ups:
            _, err = up.communicate(timeout=180)
            assert up.returncode == 0, err
        yield {"alpha": alpha, "beta": beta, "recorder": recorder}
    finally:
        for up in ups:
            if up.poll() is None:
                up.kill()
        for state in (alpha, beta):
            if (state / "cluster.json").exists():
                qcinode("down", "--state-dir", str(state))
        recorder.stop()


def _client(state: Path, sae: str) -> tuple[EtsiClient, dict[str, Any]]:
    cluster = json.loads((state / "cluster.json").read_text())
    info = cluster["saes"][sae]
    return EtsiClient(state / cluster["ca"], state / info["cert"], state / info["key"]), cluster


def _enc(state: Path, master: str, slave: str) -> tuple[int, Any]:
    client, cluster = _client(state, master)
    url = cluster["nodes"][cluster["saes"][master]["node"]]["etsi014"]
    return client.enc_keys(url, slave, number=1, size_bits=256)


def _dec(state: Path, slave: str, master: str, key_id: str) -> tuple[int, Any]:
    client, cluster = _client(state, slave)
    url = cluster["nodes"][cluster["saes"][slave]["node"]]["etsi014"]
    return client.dec_keys(url, master, [key_id])


def _wait_for(predicate: Any, timeout_s: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError("timed out")


def test_a_key_crosses_two_independent_networks_and_a_failure_in_the_second_is_voided(two_networks: dict[str, Any]) -> None:
    alpha, beta, recorder = two_networks["alpha"], two_networks["beta"], two_networks["recorder"]
    openapi = OpenApi()

    # 1. enc_keys in alpha for an SAE of beta; dec_keys in beta: the same key.
    status, body = _enc(alpha, "alpha-app", "beta-app")
    assert status == 200, body
    (key,) = body["keys"]
    assert key["key_ID_extension"]["paths"] == [["a1", "gw-a"]]  # inside alpha up to the interworking node
    status, redeemed = _dec(beta, "beta-app", "alpha-app", key["key_ID"])
    assert status == 200, redeemed
    assert redeemed["keys"] == [{"key_ID": key["key_ID"], "key": key["key"]}]
    # Once only.
    assert _dec(beta, "beta-app", "alpha-app", key["key_ID"])[0] == 400
    sent = [e for e in recorder.exchanges if e["path"] == "/kmapi/v1/ext_keys"]
    assert [e["status"] for e in sent] == [202]
    assert sent[0]["request"]["keys"][0]["value"] == key["key"]  # the value crossed as the standard's base64
    assert sent[0]["request"]["ack_callback_url"].endswith("/kmapi/v1/ext_keys/ack")
    # The proxy records an exchange once its answer came back, which may be just after the key did.
    acks = _wait_for(lambda: [e for e in recorder.exchanges if e["path"] == "/kmapi/v1/ext_keys/ack"])
    assert [(a["status"], a["request"][0]["ack_status"]) for a in acks] == [(200, "relayed")]

    # 2. A failure inside beta during the relay: every relay hop out of beta's gateway is lost.
    fault = qcinode("fault", "--link", "b1-gw-b", "--kind", "drop", "--channel", "relay", "--end", "gw-b", "--state-dir", str(beta))
    assert fault.returncode == 0, fault.stderr
    before = len(recorder.exchanges)
    status, body = _enc(alpha, "alpha-app", "beta-app")
    assert status == 503, body  # never released in alpha
    assert "keys" not in body
    voids = _wait_for(lambda: [e for e in recorder.exchanges[before:] if e["path"] == "/kmapi/v1/ext_keys/void"])
    failed_key = voids[0]["request"]["key_ids"][0]
    assert voids[0]["status"] == 202
    new_acks = _wait_for(
        lambda: [e for e in recorder.exchanges[before:] if e["path"] == "/kmapi/v1/ext_keys/ack" and e["request"][0]["ack_status"] == "voided"]
    )
    assert new_acks[0]["request"][0]["key_id_container"] == [{"key_id": failed_key}]
    statuses = [e["request"][0]["ack_status"] for e in recorder.exchanges[before:] if e["path"] == "/kmapi/v1/ext_keys/ack"]
    assert statuses[0] == "failed"
    # The voided key is refused by dec_keys in beta (it never reached b1, and never will).
    assert _dec(beta, "beta-app", "alpha-app", failed_key)[0] == 400

    # 3. GET /kmapi/versions through the proxy, and every message validated against the OpenAPI description.
    _versions_through(recorder, beta)
    assert {e["path"] for e in recorder.exchanges} >= {"/kmapi/versions", "/kmapi/v1/ext_keys", "/kmapi/v1/ext_keys/ack", "/kmapi/v1/ext_keys/void"}
    problems = {f"{i} {e['method']} {e['path']} {e['status']}": openapi.validate(e) for i, e in enumerate(recorder.exchanges)}
    assert not any(problems.values()), problems


def _versions_through(recorder: Recorder, beta: Path) -> None:
    """Asks beta's interworking KME for its versions, as alpha's KME would (through the proxy)."""
    cluster = json.loads((beta / "cluster.json").read_text())
    topology = yaml.safe_load((beta / "topology.yaml").read_text())
    callback = topology["interworking"][0]["url"]  # alpha reaches beta's KME at this proxy port
    alpha_certs = Path(topology["interworking"][0]["peer"]["ca"]).parent
    ctx = _client_ctx(alpha_certs, "gw-a", beta / cluster["ca"])

    import urllib.request

    request = urllib.request.Request(f"{callback}/kmapi/versions")
    ctx.check_hostname = False  # the proxy's port is reached by address; the certificate is checked against the CA
    with urllib.request.urlopen(request, context=ctx, timeout=10) as answer:
        versions = json.loads(answer.read())
    assert versions["versions"] == ["v1"] and "synchronous_mode" in versions["capabilities"]
