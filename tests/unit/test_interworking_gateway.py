"""The interworking driver's rules without sockets: retry or void, release only on ``relayed``, checks before 202."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from qcinode.core.relay.messages import RefusalReason
from qcinode.errors import InsufficientKeyMaterial, PeerUnavailable
from qcinode.kme.etsi020.protocol import AckContainer, AckStatus, ExtKey, ExtKeysRequest, Problem, VoidRequest, parse_acks
from qcinode.node.interworking import Gateway
from qcinode.topology import parse_topology

TOPOLOGY = parse_topology(
    """
name: alpha
nodes:
  - {name: a1, saes: [alpha-app]}
  - {name: gw-a, saes: [gw-app]}
links: [{between: [a1, gw-a], length_km: 10}]
interworking:
  - node: gw-a
    listen: 127.0.0.1:18020
    ack_timeout_s: 0.2
    retries: 1
    peer: {network: beta, kme: gw-b, url: "https://127.0.0.1:28020", ca: /nonexistent.pem, saes: [beta-app]}
"""
)
KEY_ID = "550e8400-e29b-41d4-a716-446655440000"
KEY = bytes(range(32))


class FakeClient:
    """The other KME: answers from a script, records every call."""

    def __init__(self, ext_keys: list[int | Exception], on_accept: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.script = list(ext_keys)
        self.on_accept = on_accept
        self.calls: list[tuple[str, Any]] = []

    async def ext_keys(self, body: dict[str, Any]) -> tuple[int, Any]:
        self.calls.append(("ext_keys", body))
        answer = self.script.pop(0)
        if isinstance(answer, Exception):
            raise answer
        if answer == 202 and self.on_accept is not None:
            asyncio.get_running_loop().call_soon(self.on_accept, body)
        return answer, None if answer == 202 else {"type": "x", "title": "refused", "details": {"why": "test"}}

    async def void(self, body: dict[str, Any]) -> tuple[int, Any]:
        self.calls.append(("void", body))
        return 202, None

    async def ack(self, url: str, body: list[dict[str, Any]]) -> tuple[int, Any]:
        self.calls.append(("ack", (url, body)))
        return 200, None

    def names(self) -> list[str]:
        return [name for name, _ in self.calls]


class FakeNetwork:
    def __init__(self, capacity: int = 10, fail: bool = False) -> None:
        self.capacity, self.fail = capacity, fail
        self.relayed: list[tuple[str, tuple[str, ...], list[tuple[str, bytes]]]] = []

    def available_keys(self, master: str, slave: str, bits: int) -> int:
        return self.capacity

    async def relay_keys(self, master: str, slaves: tuple[str, ...], keys: list[tuple[str, bytes]]) -> list[Any]:
        await asyncio.sleep(0)
        if self.fail:
            raise InsufficientKeyMaterial("no path inside alpha")
        self.relayed.append((master, slaves, keys))
        return []


def gateway(client: FakeClient, network: FakeNetwork | None = None) -> Gateway:
    g = Gateway(TOPOLOGY.interworking[0], "gw-a", TOPOLOGY, network or FakeNetwork(), None, Path("c"), Path("k"))  # type: ignore[arg-type]
    g._client = client  # type: ignore[assignment]
    return g


def ack(status: AckStatus) -> Callable[[Gateway], Callable[[dict[str, Any]], None]]:
    def bind(g: Gateway) -> Callable[[dict[str, Any]], None]:
        return lambda body: g.accept_acks([AckContainer((KEY_ID,), status, body["initiator_sae_id"], tuple(body["target_sae_ids"]))])

    return bind


async def hand_off(client: FakeClient, acking: Callable[[Gateway], Callable[[dict[str, Any]], None]] | None = None) -> Any:
    g = gateway(client)
    if acking is not None:
        client.on_accept = acking(g)
    return await g.hand_off(KEY_ID, "alpha-app", ("beta-app",), KEY), g


def test_a_key_is_released_only_once_acknowledged_relayed() -> None:
    client = FakeClient([202])
    refusal, _ = asyncio.run(hand_off(client, ack(AckStatus.RELAYED)))
    assert refusal is None
    assert client.names() == ["ext_keys"]
    body = client.calls[0][1]
    assert body["ack_callback_url"] == "https://127.0.0.1:18020/kmapi/v1/ext_keys/ack"
    assert body["keys"][0]["key_id"] == KEY_ID and body["initiator_sae_id"] == "alpha-app"


def test_no_answer_and_503_are_retried_then_the_key_is_voided() -> None:
    client = FakeClient([PeerUnavailable("refused"), 503])
    refusal, _ = asyncio.run(hand_off(client))
    assert refusal is not None and refusal.reason is RefusalReason.PEER_UNAVAILABLE
    assert client.names() == ["ext_keys", "ext_keys", "void"]
    assert client.calls[2][1]["key_ids"] == [KEY_ID]


def test_400_means_the_peer_kept_nothing_so_nothing_is_voided() -> None:
    client = FakeClient([400])
    refusal, _ = asyncio.run(hand_off(client))
    assert refusal is not None and refusal.reason is RefusalReason.PEER_REFUSED
    assert client.names() == ["ext_keys"]


@pytest.mark.parametrize("status", [AckStatus.FAILED, AckStatus.KEY_NOT_PRESENT])
def test_a_failed_relay_in_the_other_network_is_voided_and_refused(status: AckStatus) -> None:
    client = FakeClient([202])
    refusal, _ = asyncio.run(hand_off(client, ack(status)))
    assert refusal is not None and refusal.reason is RefusalReason.PEER_REFUSED and status.value in refusal.detail
    assert client.names() == ["ext_keys", "void"]


def test_no_acknowledgement_in_time_is_voided_and_refused() -> None:
    client = FakeClient([202])
    refusal, _ = asyncio.run(hand_off(client))
    assert refusal is not None and refusal.reason is RefusalReason.TIMEOUT
    assert client.names() == ["ext_keys", "void"]


def test_the_same_key_handed_over_twice_is_sent_once_and_another_key_under_its_id_is_refused() -> None:
    async def scenario() -> None:
        client = FakeClient([202])
        g = gateway(client)
        client.on_accept = ack(AckStatus.RELAYED)(g)
        first, second = await asyncio.gather(g.hand_off(KEY_ID, "alpha-app", ("beta-app",), KEY), g.hand_off(KEY_ID, "alpha-app", ("beta-app",), KEY))
        assert first is None and second is None and client.names() == ["ext_keys"]
        other = await g.hand_off(KEY_ID, "alpha-app", ("beta-app",), bytes(32))
        assert other is not None and other.reason is RefusalReason.DUPLICATE

    asyncio.run(scenario())


def test_an_ack_for_a_key_never_handed_over_is_400_key_not_present() -> None:
    g = gateway(FakeClient([]))
    with pytest.raises(Problem) as caught:
        g.accept_acks([AckContainer((KEY_ID,), AckStatus.RELAYED, "alpha-app", ("beta-app",))])
    assert caught.value.status == 400 and caught.value.kind == "key-not-present"


# -- incoming: the other network's keys for this network's SAEs -------------------------------


def incoming(
    targets: tuple[str, ...] = ("alpha-app",), initiator: str = "beta-app", callback: str | None = "https://127.0.0.1:28020/kmapi/v1/ext_keys/ack"
) -> ExtKeysRequest:
    return ExtKeysRequest((ExtKey(KEY_ID, KEY),), initiator, targets, callback)


@pytest.mark.parametrize(
    ("request_", "status", "detail"),
    [
        (incoming(initiator="nobody"), 400, "initiator_sae_id_not_recognized"),
        (incoming(targets=("beta-app",), initiator="beta-app"), 400, "invalid_routing"),
        (incoming(targets=("ghost",)), 400, "target_sae_id_not_recognized"),
    ],
)
def test_routes_are_checked_before_202(request_: ExtKeysRequest, status: int, detail: str) -> None:
    g = gateway(FakeClient([]))
    with pytest.raises(Problem) as caught:
        g.start_ext_keys(request_)
    assert caught.value.status == status and detail in caught.value.details
    assert not g._incoming  # nothing retained after a 400


def test_no_capacity_now_is_503_insufficient_key_material() -> None:
    g = gateway(FakeClient([]), FakeNetwork(capacity=0))
    with pytest.raises(Problem) as caught:
        g.start_ext_keys(incoming())
    assert caught.value.status == 503 and caught.value.kind == "insufficient-key-material"


def test_incoming_keys_are_relayed_under_their_ids_and_acknowledged() -> None:
    async def scenario() -> None:
        client, network = FakeClient([]), FakeNetwork()
        g = gateway(client, network)
        acks = await g.start_ext_keys(incoming())
        assert network.relayed == [("beta-app", ("alpha-app",), [(KEY_ID, KEY)])]
        assert [(a.status, a.key_ids) for a in acks] == [(AckStatus.RELAYED, (KEY_ID,))]
        ((name, (url, body)),) = client.calls
        assert name == "ack" and url.endswith("/ext_keys/ack") and parse_acks(body) == acks
        # A retried ext_keys for the same key gets the same outcome, and relays nothing again.
        again = await g.start_ext_keys(incoming())
        assert [a.status for a in again] == [AckStatus.RELAYED] and len(network.relayed) == 1
        # It reached another node of this network: it cannot be voided any more.
        (voided,) = await g.start_void(VoidRequest((KEY_ID,), "beta-app", ("alpha-app",)))
        assert voided.status is AckStatus.FAILED_TO_VOID

    asyncio.run(scenario())


def test_a_failed_incoming_relay_is_acknowledged_failed_and_then_voided() -> None:
    async def scenario() -> None:
        client = FakeClient([])
        g = gateway(client, FakeNetwork(fail=True))
        (failed,) = await g.start_ext_keys(incoming(callback=None))  # the synchronous mode: the outcome is the answer
        assert failed.status is AckStatus.FAILED and "no path inside alpha" in (failed.message or "")
        assert client.calls == []  # no callback in the synchronous mode
        (voided,) = await g.start_void(VoidRequest((KEY_ID,), "beta-app", ("alpha-app",)))
        assert voided.status is AckStatus.VOIDED
        with pytest.raises(Problem) as caught:  # a voided key cannot come back
            g.start_ext_keys(incoming())
        assert caught.value.status == 503
        (unknown,) = await g.start_void(VoidRequest(("373b0b2c-d841-4765-af6f-c6232cda6531",), "beta-app", ("alpha-app",)))
        assert unknown.status is AckStatus.KEY_NOT_PRESENT

    asyncio.run(scenario())
