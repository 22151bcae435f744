"""ETSI GS QKD 004 key streams without sockets: two nodes' stream services over an in-memory relay."""

from __future__ import annotations

import asyncio
import math
import uuid
from typing import Any

import pytest

from qcinode.errors import InsufficientKeyMaterial
from qcinode.kme.etsi004 import MAC_KEY_BYTES, Qos, Status, StreamService, chunk_key_id, sae_of_uri

NODES = {"alice-app": "alpha", "bob-app": "beta"}


class Net:
    """Both nodes' key stores and the relay between them (a dict per node)."""

    def __init__(self, rate_bps: float = 1e6) -> None:
        self.stores: dict[str, dict[tuple[str, str, str], bytes]] = {"alpha": {}, "beta": {}}
        self.rate_bps = rate_bps
        self.fail = False
        self.relayed = 0

    def backend(self, node: str) -> Backend:
        return Backend(self, node)


class Backend:
    def __init__(self, net: Net, node: str) -> None:
        self.net, self.node = net, node

    def node_of(self, sae: str) -> str | None:
        return NODES.get(sae)

    async def relay(self, master_sae: str, slave_sae: str, keys: list[tuple[str, bytes]]) -> None:
        if self.net.fail:
            raise InsufficientKeyMaterial("no key on the path")
        for key_id, key in keys:
            self.net.stores[NODES[slave_sae]][(slave_sae, master_sae, key_id)] = key
        self.net.relayed += len(keys)

    def take(self, slave_sae: str, master_sae: str, key_id: str) -> bytes | None:
        return self.net.stores[self.node].pop((slave_sae, master_sae, key_id), None)

    def capacity_bps(self, master_sae: str, slave_sae: str) -> tuple[str, float]:
        return ("alpha-beta", self.net.rate_bps) if NODES[master_sae] != NODES[slave_sae] else ("", math.inf)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def services(net: Net, clock: Clock | None = None) -> tuple[StreamService, StreamService]:
    clock = clock or Clock()
    return (
        StreamService("alpha", net.backend("alpha"), clock=clock, ttl_max_s=3600),
        StreamService("beta", net.backend("beta"), clock=clock, ttl_max_s=3600),
    )


def open_request(source: str, destination: str, ksid: str | None = None, **qos: Any) -> dict[str, Any]:
    request: dict[str, Any] = {"source": f"qkd://{source}", "destination": f"qkd://{destination}", "qos": {"key_chunk_size": 32, "timeout": 200, **qos}}
    if ksid is not None:
        request["key_stream_id"] = ksid
    return request


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_the_status_table_is_v2_1_1s() -> None:
    assert [(s.name, int(s)) for s in Status] == [
        ("SUCCESSFUL", 0), ("PEER_NOT_CONNECTED", 1), ("INSUFFICIENT_KEY", 2), ("GET_KEY_PEER_NOT_CONNECTED", 3), ("NO_QKD_CONNECTION", 4),
        ("KSID_IN_USE", 5), ("TIMEOUT", 6), ("QOS_NOT_MET", 7), ("METADATA_TOO_SMALL", 8),
    ]  # fmt: skip


def test_addresses_name_saes_as_bare_ids_or_uri_hosts() -> None:
    assert sae_of_uri("alice-app") == "alice-app"
    assert sae_of_uri("qkd://alice-app") == "alice-app"
    assert sae_of_uri("hybrid://SPI_1@alice-app?x=1") == "alice-app"


def test_both_saes_read_the_same_keys_at_every_index_once() -> None:
    async def scenario() -> None:
        net = Net()
        alpha, beta = services(net)
        first = await alpha.open_connect("alice-app", open_request("alice-app", "bob-app"))
        assert first["status"] == Status.PEER_NOT_CONNECTED  # bob has not opened yet
        ksid = first["key_stream_id"]
        second = await beta.open_connect("bob-app", open_request("bob-app", "alice-app", ksid))
        assert second["status"] == Status.SUCCESSFUL and second["key_stream_id"] == ksid
        # bob waits for index 0 while alice (the generator: her ID sorts first) has not asked yet.
        waiting = asyncio.create_task(beta.get_key("bob-app", {"key_stream_id": ksid, "index": 0}))
        await asyncio.sleep(0.01)
        ours = [await alpha.get_key("alice-app", {"key_stream_id": ksid, "index": i}) for i in range(5)]
        theirs = [await waiting] + [await beta.get_key("bob-app", {"key_stream_id": ksid, "index": i}) for i in range(1, 5)]
        assert [a["status"] for a in ours + theirs] == [0] * 10
        assert [a["key_buffer"] for a in ours] == [b["key_buffer"] for b in theirs]
        assert len({a["key_buffer"] for a in ours}) == 5 and all(len(bytes.fromhex(a["key_buffer"])) == 32 for a in ours)
        assert [a["index"] for a in theirs] == list(range(5))
        again = await beta.get_key("bob-app", {"key_stream_id": ksid, "index": 3})
        assert again["status"] == Status.INSUFFICIENT_KEY  # an index is handed out once
        assert net.stores["beta"] == {} and net.stores["alpha"] == {}  # every relayed key was taken

    run(scenario())


def test_get_key_before_the_peer_opened_is_peer_not_connected_and_a_wait_times_out() -> None:
    async def scenario() -> None:
        net = Net()
        alpha, beta = services(net)
        ksid = str(uuid.uuid4())
        opened = await beta.open_connect("bob-app", open_request("bob-app", "alice-app", ksid, timeout=100))
        assert opened["status"] == Status.PEER_NOT_CONNECTED
        assert (await beta.get_key("bob-app", {"key_stream_id": ksid, "index": 0}))["status"] == Status.GET_KEY_PEER_NOT_CONNECTED
        await alpha.open_connect("alice-app", open_request("alice-app", "bob-app", ksid))
        # bob's node now knows alice opened, but nobody made index 0: the 100 ms timeout passes.
        assert (await beta.get_key("bob-app", {"key_stream_id": ksid, "index": 0}))["status"] == Status.TIMEOUT

    run(scenario())


def test_a_stream_above_the_links_capacity_gets_the_counter_proposal() -> None:
    async def scenario() -> None:
        rate = 12_000.0  # secret bits per wall second on the first hop
        alpha, _ = services(Net(rate_bps=rate))
        answer = await alpha.open_connect("alice-app", open_request("alice-app", "bob-app", min_bps=50_000, max_bps=80_000))
        assert answer["status"] == Status.QOS_NOT_MET
        carried = int(rate * 32 / (32 + MAC_KEY_BYTES))  # the pad also pays for each key's MAC
        assert answer["qos"]["min_bps"] == carried and answer["qos"]["max_bps"] == carried
        assert not alpha.streams  # refused: nothing open, nothing reserved
        # The counter-proposal is accepted as it stands, and then reserves the link.
        proposal = answer["qos"]
        accepted = await alpha.open_connect("alice-app", {"source": "alice-app", "destination": "bob-app", "qos": proposal})
        assert accepted["status"] == Status.PEER_NOT_CONNECTED
        other = await alpha.open_connect("alice-app", open_request("alice-app", "bob-app", min_bps=1))
        assert other["status"] == Status.QOS_NOT_MET and other["qos"]["max_bps"] == 0

    run(scenario())


def test_qos_out_of_limits_is_counter_proposed_within_them() -> None:
    async def scenario() -> None:
        alpha, _ = services(Net())
        answer = await alpha.open_connect("alice-app", open_request("alice-app", "bob-app", key_chunk_size=4096, ttl=10**6))
        assert answer["status"] == Status.QOS_NOT_MET
        assert answer["qos"]["key_chunk_size"] == 1024 and answer["qos"]["ttl"] == 3600
        bad = await alpha.open_connect("alice-app", {"source": "alice-app", "destination": "bob-app", "qos": {"key_chunk_size": -1}})
        assert bad["status"] == Status.QOS_NOT_MET

    run(scenario())


def test_a_stream_expires_after_its_ttl() -> None:
    async def scenario() -> None:
        net, clock = Net(), Clock()
        alpha, beta = services(net, clock)
        ksid = (await alpha.open_connect("alice-app", open_request("alice-app", "bob-app", ttl=60)))["key_stream_id"]
        await beta.open_connect("bob-app", open_request("bob-app", "alice-app", ksid, ttl=60))
        assert (await alpha.get_key("alice-app", {"key_stream_id": ksid, "index": 0}))["status"] == Status.SUCCESSFUL
        clock.now += 61
        assert (await alpha.get_key("alice-app", {"key_stream_id": ksid, "index": 1}))["status"] == Status.NO_QKD_CONNECTION
        assert alpha.status()["streams_expired"] == 1 and alpha.status()["streams_open"] == 0

    run(scenario())


def test_ksid_in_use_close_and_unknown_streams() -> None:
    async def scenario() -> None:
        alpha, beta = services(Net())
        ksid = (await alpha.open_connect("alice-app", open_request("alice-app", "bob-app")))["key_stream_id"]
        assert (await alpha.open_connect("alice-app", open_request("alice-app", "bob-app", ksid)))["status"] == Status.KSID_IN_USE
        assert (await beta.get_key("bob-app", {"key_stream_id": ksid, "index": 0}))["status"] == Status.NO_QKD_CONNECTION  # never opened at beta
        assert (await alpha.close("alice-app", {"key_stream_id": ksid}))["status"] == Status.SUCCESSFUL
        assert (await alpha.close("alice-app", {"key_stream_id": ksid}))["status"] == Status.NO_QKD_CONNECTION
        # Only the source may open for itself.
        assert (await alpha.open_connect("bob-app", open_request("alice-app", "bob-app")))["status"] == Status.NO_QKD_CONNECTION

    run(scenario())


def test_no_path_fails_the_open_and_a_short_metadata_buffer_gets_the_size() -> None:
    async def scenario() -> None:
        net = Net()
        alpha, beta = services(net)
        net.fail = True
        assert (await alpha.open_connect("alice-app", open_request("alice-app", "bob-app")))["status"] == Status.NO_QKD_CONNECTION
        net.fail = False
        ksid = (await alpha.open_connect("alice-app", open_request("alice-app", "bob-app")))["key_stream_id"]
        await beta.open_connect("bob-app", open_request("bob-app", "alice-app", ksid))
        short = await alpha.get_key("alice-app", {"key_stream_id": ksid, "index": 0, "metadata": {"size": 4}})
        assert short["status"] == Status.METADATA_TOO_SMALL and short["metadata"]["size"] > 4
        full = await alpha.get_key("alice-app", {"key_stream_id": ksid, "index": 0, "metadata": {"size": 1024}})
        assert full["status"] == Status.SUCCESSFUL and ksid in full["metadata"]["buffer"]
        assert chunk_key_id(ksid, 0) != chunk_key_id(ksid, 1)

    run(scenario())


@pytest.mark.parametrize("message", [[], {"command": "DANCE"}, {"command": "GET_KEY", "data": []}])
def test_malformed_requests_are_answered_with_a_status(message: object) -> None:
    alpha, _ = services(Net())
    assert run(alpha.handle("alice-app", message))["status"] == Status.NO_QKD_CONNECTION


def test_qos_round_trips_and_rejects_unknown_fields() -> None:
    qos = Qos(key_chunk_size=64, max_bps=1000, min_bps=10, jitter=1, priority=2, timeout=3, ttl=4)
    assert Qos.from_json(qos.to_json()) == qos
    with pytest.raises(ValueError, match="unknown"):
        Qos.from_json({"Key_chunk_size": 32})
