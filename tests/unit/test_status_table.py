"""What ``qcinode status`` shows: the last minute's key rate and emulation speed, abort reasons, a table that fits."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from qcinode.cluster.launcher import (
    LAG_MIN_WINDOW_S,
    TABLE_WIDTH,
    lag,
    links_without_key,
    nodes_without_routes,
    parse_speed,
    render_table,
    short_reason,
)
from qcinode.core import estimation
from qcinode.core.aborts import AbortReason
from qcinode.core.pipeline import BlockAborted, BlockAccepted, BlockStats
from qcinode.core.roles import Role
from qcinode.errors import ConfigError, RemoteProtocolError
from qcinode.keys.linkstore import LinkStore
from qcinode.node.runtime import LinkRuntime, RecentRates
from qcinode.status import (
    AdvertisedLink,
    ChannelStatus,
    ClusterLink,
    ClusterNode,
    ClusterStatus,
    HeldAdvert,
    LedgerEntry,
    LinkState,
    LinkStatus,
    NetworkStatus,
    NodeStatus,
    RoutingStatus,
)
from qcinode.topology import parse_topology
from qcinode.transport.admin import status_from_pb, status_to_pb
from qcinode.transport.pb import admin_pb2

TOPOLOGY = parse_topology("""
name: t
defaults: {source: {rate_hz: 1.0e6}}
nodes: [{name: alpha}, {name: beta}]
links: [{between: [alpha, beta], length_km: 10}]
""")


def stats(pulses: int, secret_bits: int = 0) -> BlockStats:
    return BlockStats(0, 1, pulses, 10, 100, 20, 1, 1, 10, 3, secret_bits, None)


def test_key_rate_is_the_last_minute_of_blocks_not_the_lifetime() -> None:
    rates = RecentRates(rate_hz=1e6, window_s=60.0)
    assert rates.key_rate_bps(now=0.0) == 0.0
    rates.block(2_000_000, 4_000, now=0.0)  # 2 emulated s, 2000 bit/s
    assert rates.key_rate_bps(now=1.0) == pytest.approx(2_000.0)
    rates.block(1_000_000, 0, aborted=True, now=70.0)  # an attack: blocks abort
    rates.block(1_000_000, 0, aborted=True, now=80.0)
    # The first block left the window: the rate is what the link makes now.
    assert rates.key_rate_bps(now=90.0) == 0.0
    assert rates.aborted(now=90.0) == 2
    # Nothing in the window: the last block speaks for the link.
    assert rates.key_rate_bps(now=1_000.0) == 0.0 and rates.aborted(now=1_000.0) == 0
    rates.block(1_000_000, 500, now=1_001.0)
    assert rates.key_rate_bps(now=5_000.0) == pytest.approx(500.0)


def test_emulation_rate_over_the_last_minute_of_the_session() -> None:
    rates = RecentRates(rate_hz=1e6, window_s=60.0)
    rates.session_started(now=0.0)
    for second in range(1, 121):  # 0.25 emulated s per wall second: a quarter of real time
        rates.frame(250_000, now=float(second))
    rate, covered = rates.emulation_rate(now=120.0)
    assert rate == pytest.approx(0.25) and covered == pytest.approx(60.0)
    # A reconnection restarts the window: time spent disconnected is not lag.
    rates.session_started(now=500.0)
    rates.frame(2_000_000, now=502.0)
    rate, covered = rates.emulation_rate(now=502.0)
    assert rate == pytest.approx(1.0) and covered == pytest.approx(2.0)


def test_runtime_status_reports_recent_rates_and_abort_reasons() -> None:
    rt = LinkRuntime(TOPOLOGY.links[0], "alpha", bootstrap_key=bytes(4096))
    rt.state = "up"
    rt.note_frame(1_000_000)
    rt.record([BlockAccepted(0, "alpha-beta/0", bytes(125), stats(1_000_000, 1_000))])
    for seq in range(7):
        rt.record([BlockAborted(seq + 1, estimation.REASON_NO_SINGLE_PHOTON_KEY if seq % 2 else "session_lost", stats(500_000))])
    status = rt.status()
    assert status.current_key_rate_bps == pytest.approx(1_000 * 1e6 / 4_500_000)
    assert status.aborted_last_minute == 7
    assert len(status.recent_aborts) == 5 and status.recent_aborts[-1] == "session_lost"
    # Counted by the closed vocabulary; the reason's own words stay in recent_aborts.
    assert status.blocks_aborted == 7
    assert status.aborts_by_reason == {AbortReason.SESSION_LOST: 4, AbortReason.NO_SINGLE_PHOTON_KEY: 3}
    assert status.recent_aborts[-2] == estimation.REASON_NO_SINGLE_PHOTON_KEY
    # Every field crosses the admin message and comes back the same (no JSON inside, no repair).
    node = NodeStatus(node="alpha", uptime_s=1.5, links=(status,))
    assert status_from_pb(status_to_pb(node)) == node


def test_block_stages_follow_alices_session_and_count_only_accepted_blocks() -> None:
    from qcinode.core.pipeline import LinkState as Phase

    rt = LinkRuntime(TOPOLOGY.links[0], "alpha", bootstrap_key=bytes(4096))
    accepted = [BlockAccepted(0, "alpha-beta/0", bytes(125), stats(1_000_000, 1_000))]
    aborted = [BlockAborted(1, "session_lost", stats(500_000))]
    steps = [
        (0.0, Phase.QUANTUM, []),  # sifting
        (2.0, Phase.ESTIMATING, []),  # the block closed
        (3.0, Phase.RECONCILING, []),  # test bits in, estimate out
        (7.5, Phase.CONFIRMING, []),  # Reconciled in, Confirm out
        (8.0, Phase.ESTIMATING, accepted),  # Verdict in, Commit out: the next block (it waited) opens
        (9.0, Phase.RECONCILING, []),
        (10.0, Phase.QUANTUM, aborted),  # it aborts: it counts for nothing
        (11.0, Phase.RECONCILING, []),  # a block whose estimation this end did not see begin (a new session)
        (12.0, Phase.CONFIRMING, []),
        (13.0, Phase.QUANTUM, accepted),  # incomplete: not counted either
    ]
    for now, state, events in steps:
        rt.stages.step(state, events, now)
    status = rt.status()
    assert status.block_stage_blocks == 1
    assert status.block_stage_seconds == {"estimation": 1.0, "reconciliation": 4.5, "confirmation": 0.5}
    node = NodeStatus(node="alpha", uptime_s=1.5, links=(status,))
    back = status_from_pb(status_to_pb(node))
    assert back == node and list(back.links[0].block_stage_seconds) == ["estimation", "reconciliation", "confirmation"]
    assert node.to_json()["links"][0]["block_stage_seconds"]["reconciliation"] == 4.5


def test_status_counts_are_numbers_not_strings() -> None:
    # The proto3 JSON mapping writes uint64 as strings; qcinode status must not.
    link_pb = admin_pb2.LinkStatus(link_id="a-b", role="alice", state="up", pulses_sent=2**40 + 1, blocks_done=3)
    reply = admin_pb2.NodeStatus(node="alpha", uptime_s=1.5, links=[link_pb])
    reply.links[0].aborts_by_reason["no_single_photon_key"] = 7
    reply.links[0].blocks.add(block_id="a-b/0", sha256=b"\x01\x02", bits=8)
    out = status_from_pb(reply).to_json()
    link = out["links"][0]
    assert link["pulses_sent"] == 2**40 + 1 and link["blocks_done"] == 3 and link["blocks_aborted"] == 0
    assert link["aborts_by_reason"] == {"no_single_photon_key": 7}
    assert link["blocks"] == [{"block_id": "a-b/0", "sha256": "0102", "bits": 8}]
    assert link["recent_aborts"] == [] and out["uptime_s"] == 1.5
    assert "channel" not in link and "ledger" not in link  # absent: not a fibre link's, not asked for


@pytest.mark.parametrize(("field", "value"), [("state", "dancing"), ("role", "eve")])
def test_a_state_or_role_this_version_does_not_know_is_refused_by_name(field: str, value: str) -> None:
    fields = {"link_id": "a-b", "role": "alice", "state": "up", field: value}
    with pytest.raises(RemoteProtocolError, match=f"{'link state' if field == 'state' else 'role'} '{value}' is not one of"):
        status_from_pb(admin_pb2.NodeStatus(node="alpha", links=[admin_pb2.LinkStatus(**fields)]))


@pytest.mark.parametrize(
    ("reason", "short"),
    [
        (estimation.REASON_NO_SINGLE_PHOTON_KEY, "s_Z1<=0"),
        (estimation.REASON_TAGGED_TEST, "s_X1<=0"),
        (estimation.REASON_PHASE_ERROR, "phase error >= 1/2"),
        ("session_lost", "session_lost"),
        ("no_usable_statistics: a very long explanation of what went wrong", "no_usable_statistics"),
    ],
)
def test_abort_reasons_are_short(reason: str, short: str) -> None:
    assert short_reason(reason) == short


def _link(state: LinkState = LinkState.UP, **fields: Any) -> ClusterLink:
    """A cluster link whose view has ``fields`` (the rest at their defaults)."""
    return ClusterLink(view=LinkStatus(link_id="a-b", peer="b", role=Role.ALICE, state=state, **fields), state=state)


def test_lag_is_flagged_below_95_percent_of_speed_and_never_at_max() -> None:
    fields: dict[str, Any] = {"emulation_rate": 0.18, "emulation_window_s": 60.0}
    link = _link(**fields)
    assert lag(link, 1.0) == pytest.approx(0.18)
    assert lag(_link(**{**fields, "emulation_rate": 0.96}), 1.0) is None
    assert lag(_link(**{**fields, "emulation_rate": 9.0}), 10.0) == pytest.approx(9.0)
    assert lag(link, "max") is None
    assert lag(_link(LinkState.DOWN, **fields), 1.0) is None
    assert lag(_link(**{**fields, "emulation_window_s": LAG_MIN_WINDOW_S / 2}), 1.0) is None  # a session that just began


def _status() -> ClusterStatus:
    view = LinkStatus(
        link_id="brussels-antwerp", peer="antwerp", role=Role.ALICE, state=LinkState.UP, qber=0.2512, current_key_rate_bps=0.0,
        secret_key_rate_bps=3456.7, pool_bits=123_456_789, blocks_done=12_345, blocks_aborted=678, ec_efficiency=1.061,
        emulated_s=3600.0, emulation_rate=0.18, emulation_window_s=60.0,
        recent_aborts=(estimation.REASON_PHASE_ERROR,), aborted_last_minute=3,
        aborts_by_reason={AbortReason.PHASE_ERROR: 600, AbortReason.SESSION_LOST: 78},
    )  # fmt: skip
    attacks = "eve intercept-resend 1; delay p=1 1ms at bob; partition at alice"
    link = ClusterLink(view=view, state=LinkState.UP, attacks=attacks, alice_pool_bits=123_456_789, bob_pool_bits=123_456_000)
    long_id = "a-very-long-node-name-of-a-site-antwerp-rotterdam-cross-border"
    requests = {f"enc_keys {c}": 10 * c for c in range(200, 230)}
    brussels = NodeStatus("brussels", 1.0, network=NetworkStatus(relays_delivered=3, etsi014_requests=requests))
    return ClusterStatus(
        topology="benelux",
        speed=1.0,
        links={
            "brussels-antwerp": link,
            long_id: ClusterLink(view=view, state=LinkState.STORAGE_FAILED, attacks=attacks, alice_pool_bits=123_456_789, bob_pool_bits=123_456_000),
            "ghent-brussels": ClusterLink(view=None, state=LinkState.DOWN),
        },
        nodes={
            "brussels": ClusterNode(pid=1, alive=True, grpc="127.0.0.1:1", status=brussels),
            "antwerp": ClusterNode(pid=2, alive=False, grpc="127.0.0.1:2", error="not running"),
        },
    )


def test_the_table_fits_100_columns_and_wide_cuts_nothing() -> None:
    table = render_table(_status())
    assert max(len(line) for line in table.splitlines()) <= TABLE_WIDTH, table
    row = next(line for line in table.splitlines() if line.startswith("brussels-antwerp"))
    assert "25.12%" in row and "123M" in row and "12345" in row and "678" in row
    assert "behind: 0.18x" in row  # the lag warning comes first
    assert "not running" in table
    wide = render_table(_status(), wide=True)
    assert max(len(line) for line in wide.splitlines()) > TABLE_WIDTH
    assert "partition at alice" in wide and "1.061" in wide and "phase error >= 1/2 x600" in wide and "session_lost x78" in wide
    assert "enc_keys 229: 2290" in wide


def test_detach_timeout_names_links_without_key_and_their_aborts() -> None:
    aborting = _link(blocks_done=0, blocks_aborted=516, recent_aborts=(estimation.REASON_NO_SINGLE_PHOTON_KEY,) * 5)
    keyed = ClusterLink(view=_link(blocks_done=2).view, state=LinkState.UP, bob_pool_bits=100)
    status = ClusterStatus(topology="t", speed=1.0, nodes={}, links={"alpha-beta": aborting, "beta-gamma": keyed})
    topology = parse_topology("""
name: t
nodes: [{name: alpha}, {name: beta}, {name: gamma}, {name: delta}]
links: [{between: [alpha, beta], length_km: 1}, {between: [beta, gamma], length_km: 1}, {between: [gamma, delta], length_km: 1}]
""")
    assert links_without_key(status, topology) == [
        "alpha-beta (up, 0 blocks done, 516 aborted; the last 5: s_Z1<=0)",
        "gamma-delta (down, 0 blocks done, 0 aborted)",
    ]


@pytest.mark.parametrize("text", ["fast", "0", "-1", "nan", "inf", ""])
def test_a_speed_must_be_positive_or_max(text: str) -> None:
    with pytest.raises(ConfigError, match="--speed"):
        parse_speed(text)
    assert parse_speed("max") == "max" and parse_speed("2.5") == 2.5


def test_detach_waits_until_every_node_can_route_over_every_link() -> None:
    topology = parse_topology("name: t\nnodes: [{name: a}, {name: b}, {name: c}]\nlinks: [{between: [a, b], length_km: 1}, {between: [b, c], length_km: 1}]\n")

    def advert(*links: tuple[str, int]) -> HeldAdvert:
        return HeldAdvert(1, 0.0, tuple(AdvertisedLink(link_id, "x", True, available) for link_id, available in links))

    def node(name: str, origins: dict[str, HeldAdvert]) -> ClusterNode:
        routing = RoutingStatus(local_node=name, max_age_s=6.0, origins=origins)
        return ClusterNode(pid=1, alive=True, grpc="", status=NodeStatus(name, 1.0, network=NetworkStatus(routing=routing)))

    full = {"a": advert(("a-b", 10)), "b": advert(("a-b", 10), ("b-c", 10)), "c": advert(("b-c", 10))}
    status = ClusterStatus(topology="t", speed=1.0, links={}, nodes={
        "a": node("a", full),
        "b": node("b", {**full, "c": advert(("b-c", 0))}),  # c's half of b-c still empty
        "c": node("c", {k: v for k, v in full.items() if k != "a"}),  # no advert from a yet
    })  # fmt: skip
    assert nodes_without_routes(status, topology) == ["b", "c"]


def test_a_free_space_channel_and_a_ledger_cross_the_admin_message_and_only_set_fields_are_shown() -> None:
    channel = ChannelStatus(
        emulated_utc="2027-03-21T18:00:00Z", lag_s=1.5, in_pass=True, note="daylight", loss_db=31.2, elevation_deg=36.0,
        azimuth_deg=120.5, range_km=812.0, sky="day", sun_elevation_deg=12.0, pass_ends_utc="2027-03-21T18:06:00Z",
    )  # fmt: skip
    ledger = (LedgerEntry("a-b/0", 0, 64, Role.ALICE), LedgerEntry("a-b/0", 2048, 64, Role.BOB))
    link = LinkStatus(link_id="a-b", peer="b", role=Role.BOB, state=LinkState.UP, channel=channel, ledger=ledger, ledger_folded_through=7)
    node = NodeStatus(node="b", uptime_s=3.0, links=(link,), network=NetworkStatus(kme_port=8443, metrics_port=None))
    assert status_from_pb(status_to_pb(node)) == node
    assert node.to_json()["links"][0]["ledger_folded_through"] == 7
    no_ledger = dataclasses.replace(node, links=(dataclasses.replace(link, ledger=None, ledger_folded_through=None),))
    assert status_from_pb(status_to_pb(no_ledger)) == no_ledger and "ledger_folded_through" not in no_ledger.to_json()["links"][0]
    shown = node.to_json()
    assert shown["links"][0]["channel"] == {k: v for k, v in dataclasses.asdict(channel).items() if v is not None}
    assert "next_pass_utc" not in shown["links"][0]["channel"]
    assert shown["links"][0]["ledger"] == [["a-b/0", 0, 64, "alice"], ["a-b/0", 2048, 64, "bob"]]
    # The document has always shown these two as null when absent.
    assert shown["network"]["kme_port"] == 8443 and shown["network"]["metrics_port"] is None


def test_abort_counters_saved_as_texts_by_an_older_version_are_counted_by_reason(tmp_path: Path) -> None:
    store = LinkStore(tmp_path, "alpha")
    rt = LinkRuntime(TOPOLOGY.links[0], "alpha", bootstrap_key=bytes(4096), store=store)
    rt.persist()
    saved = store.load(rt.link_id)
    assert saved is not None
    saved["counters"]["aborts_by_reason"] = {estimation.REASON_PHASE_ERROR: 3, "phase_error": 2, "a peer's own words": 1}
    rt._restore(saved, store.load_blobs(rt.link_id))  # noqa: SLF001 - what a restart reads
    assert rt.status().aborts_by_reason == {AbortReason.PHASE_ERROR: 5, AbortReason.OTHER: 1}
    store.close()
