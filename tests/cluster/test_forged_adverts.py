"""Holding one node's certificate, forge routing adverts against a real cluster: every one is refused.

The attack the signatures stop: with a neighbour's certificate, a single
advert naming another origin with sequence 2^63 - 1 and no links used to
replace the real origin's advert and, kept as its floor, make every later
real advert of it stale: two healthy, directly linked nodes then answered
503 until a restart.

Here ``mallory``'s key is stolen: the test kills mallory's process and takes
its place on its port with its certificate, so alpha floods it the real,
signed adverts of gamma. Then it sends alpha, as mallory: an advert of gamma
signed with mallory's key, the same unsigned, one with a huge sequence,
gamma's real advert with its links altered, an old real advert of gamma
replayed, and mallory's own advert with a huge sequence. Each is refused with
``routing.advert_rejected`` and its reason in alpha's log, while alpha-app
and gamma-app do ETSI 014 round trips throughout and afterwards, all served,
with no restart.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from qcinode.cluster.launcher import cluster_status
from qcinode.core.routing import MAX_SEQUENCE, LinkAdvert, LinkStateAdvert, advert_bytes
from qcinode.pki import NodeAdvertSigner
from qcinode.testing import QciNetwork, start_network
from qcinode.transport.network import advert_from_pb, advert_to_pb
from qcinode.transport.pb import network_pb2 as pb
from qcinode.transport.pb import network_pb2_grpc as pb_grpc

TOPOLOGY = """
name: trust
defaults:
  postprocessing: {block_bits: 50000}
emulation: {speed: max}
nodes:
  - {name: alpha, saes: [alpha-app]}
  - {name: gamma, saes: [gamma-app]}
  - {name: mallory}
links:
  - {between: [alpha, gamma], length_km: 10}
  - {between: [mallory, alpha], length_km: 10}
"""


@pytest.fixture
def network(tmp_path: Path) -> Iterator[QciNetwork]:
    topology = tmp_path / "topology.yaml"
    topology.write_text(TOPOLOGY)
    net = start_network(topology, tmp_path / "state", ready_timeout_s=90)
    try:
        yield net
    finally:
        net.cluster.stop()


class Impostor(pb_grpc.NetworkServicer):
    """Mallory's port, served by the attacker with mallory's certificate: collects what alpha floods."""

    def __init__(self) -> None:
        self.adverts: list[pb.LinkStateAdvert] = []

    async def Advertise(self, request: pb.LinkStateAdvert, context: Any) -> pb.AdvertAck:
        self.adverts.append(request)
        return pb.AdvertAck()

    async def AdvertiseMany(self, request: pb.LinkStateAdverts, context: Any) -> pb.AdvertAck:
        self.adverts.extend(request.adverts)
        return pb.AdvertAck()

    def of(self, origin: str) -> list[pb.LinkStateAdvert]:
        return [a for a in self.adverts if a.origin == origin]


class RoundTrips(threading.Thread):
    """alpha-app -> gamma-app enc_keys / dec_keys, one after another, until stopped."""

    def __init__(self, net: QciNetwork) -> None:
        super().__init__(daemon=True)
        self.net = net
        self.results: list[tuple[int, int, str]] = []
        self.halt = threading.Event()

    def run(self) -> None:
        net = self.net
        while not self.halt.is_set():
            status, enc = net.client("alpha-app").enc_keys(net.sae("alpha-app").kme_url, "gamma-app", number=1)
            dec_status, same = 0, ""
            if status == 200:
                (key,) = enc["keys"]
                dec_status, dec = net.client("gamma-app").dec_keys(net.sae("gamma-app").kme_url, "alpha-app", [key["key_ID"]])
                same = "same" if dec_status == 200 and dec["keys"][0]["key"] == key["key"] else "differs"
            else:
                same = str(enc)
            self.results.append((status, dec_status, same))
            time.sleep(0.1)


def _rejections(log_file: Path) -> list[dict[str, Any]]:
    found = []
    for line in log_file.read_text().splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue  # (gRPC's C core writes its own lines to stderr)
        if event.get("event") == "routing.advert_rejected":
            found.append(event)
    return found


def test_forged_adverts_are_refused_and_keys_keep_flowing(network: QciNetwork, tmp_path: Path) -> None:
    cluster = network.cluster
    certs = cluster.certs_dir
    mallory_port = cluster.ports["mallory"]
    alpha_address = f"127.0.0.1:{cluster.ports['alpha']}"
    signer = NodeAdvertSigner((certs / "nodes" / "mallory.key").read_bytes(), (certs / "nodes" / "mallory.pem").read_bytes())

    # The stolen identity: mallory's process goes, the attacker takes its port.
    os.kill(cluster.processes["mallory"].pid, signal.SIGKILL)
    cluster.processes["mallory"].wait(timeout=10)
    impostor = Impostor()
    trips = RoundTrips(network)

    async def attack() -> dict[str, str]:
        server = grpc.aio.server()
        pb_grpc.add_NetworkServicer_to_server(impostor, server)
        server_creds = grpc.ssl_server_credentials(
            [((certs / "nodes" / "mallory.key").read_bytes(), (certs / "nodes" / "mallory.pem").read_bytes())],
            root_certificates=(certs / "ca.pem").read_bytes(),
            require_client_auth=True,
        )
        assert server.add_secure_port(f"127.0.0.1:{mallory_port}", server_creds) == mallory_port
        await server.start()
        try:
            async with asyncio.timeout(60):
                while len(impostor.of("gamma")) < 3:  # alpha floods gamma's real, signed adverts to "mallory"
                    await asyncio.sleep(0.2)
            first = advert_from_pb(impostor.of("gamma")[0])
            latest = advert_from_pb(impostor.of("gamma")[-1])
            assert first.signature and first.certificate and latest.sequence > first.sequence
            now_ms = int(time.time() * 1000)

            def signed(advert: LinkStateAdvert) -> pb.LinkStateAdvert:
                return advert_to_pb(dataclasses.replace(advert, signature=signer.sign(advert_bytes(advert)), certificate=signer.certificate))

            lure = (LinkAdvert("gamma-mallory", "mallory", True, 10**12),)
            forged = {
                "wrong_origin": signed(LinkStateAdvert("gamma", now_ms + 5_000, lure)),
                "unsigned": advert_to_pb(LinkStateAdvert("gamma", now_ms + 5_000, lure)),
                "future_sequence": signed(LinkStateAdvert("gamma", MAX_SEQUENCE, ())),
                "bad_signature": advert_to_pb(dataclasses.replace(latest, sequence=latest.sequence + 5_000, links=())),
                "stale": impostor.of("gamma")[0],
                "future_sequence_own": signed(LinkStateAdvert("mallory", MAX_SEQUENCE, ())),
            }
            creds = grpc.ssl_channel_credentials(
                (certs / "ca.pem").read_bytes(), (certs / "nodes" / "mallory.key").read_bytes(), (certs / "nodes" / "mallory.pem").read_bytes()
            )
            answers: dict[str, str] = {}
            async with grpc.aio.secure_channel(alpha_address, creds, options=[("grpc.ssl_target_name_override", "alpha")]) as channel:
                stub = pb_grpc.NetworkStub(channel)
                for name, advert in forged.items():
                    try:
                        await stub.Advertise(advert, timeout=10)
                        answers[name] = "accepted"
                    except grpc.aio.AioRpcError as exc:
                        answers[name] = f"{exc.code().name}: {exc.details()}"
                    await asyncio.sleep(1.0)  # round trips go on between the forgeries
            await asyncio.sleep(3.0)  # and afterwards
            return answers
        finally:
            await server.stop(0)

    trips.start()
    try:
        answers = asyncio.run(attack())
    finally:
        trips.halt.set()
        trips.join(timeout=60)

    for name, answer in answers.items():
        reason = name.removesuffix("_own")
        assert answer == f"INVALID_ARGUMENT: advert rejected: {reason}", (name, answer)
    logged = _rejections(cluster.state_dir / "logs" / "alpha.log")
    by_origin = {(e["origin"], e["reason"]) for e in logged if e["peer_id"] == "mallory"}
    assert by_origin >= {
        ("gamma", "wrong_origin"),
        ("gamma", "unsigned"),
        ("gamma", "future_sequence"),
        ("gamma", "bad_signature"),
        ("gamma", "stale"),
        ("mallory", "future_sequence"),
    }, logged
    # Key delivery between alpha and gamma never failed, during the attack and after it.
    assert len(trips.results) >= 10
    assert all(result == (200, 200, "same") for result in trips.results), trips.results
    # Routing still believes gamma's real adverts, and counts what it refused.
    status = cluster_status(cluster.state_dir)
    routing = status["nodes"]["alpha"]["network"]["routing"]
    assert any(link["peer"] == "alpha" and link["up"] for link in routing["origins"]["gamma"]["links"])
    assert routing["origins"]["gamma"]["sequence"] < MAX_SEQUENCE
    assert routing["rejected"]["future_sequence"] >= 2 and routing["rejected"]["wrong_origin"] >= 1
    net = network
    status_code, enc = net.client("alpha-app").enc_keys(net.sae("alpha-app").kme_url, "gamma-app", number=4)
    assert status_code == 200, enc
