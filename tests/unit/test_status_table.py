"""What ``qcinode status`` shows: the last minute's key rate and emulation speed, abort reasons, a table that fits."""

from __future__ import annotations

from typing import Any

import pytest

from qcinode.cluster.admin import message_to_dict
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
from qcinode.core.pipeline import BlockAborted, BlockAccepted, BlockStats
from qcinode.errors import ConfigError
from qcinode.node.runtime import LinkRuntime, RecentRates
from qcinode.topology import parse_topology
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
    assert status["current_key_rate_bps"] == pytest.approx(1_000 * 1e6 / 4_500_000)
    assert status["aborted_last_minute"] == 7
    assert len(status["recent_aborts"]) == 5 and status["recent_aborts"][-1] == "session_lost"
    assert status["blocks_aborted"] == 7 and status["aborts_by_reason"]["session_lost"] == 4
    # Every field reaches the admin message (the node builds one from this dict).
    fields = {k: v for k, v in status.items() if k not in ("blocks", "length_km")}
    message = admin_pb2.LinkStatus(**fields, fault="", fault_affected=0)
    assert message.recent_aborts[-1] == "session_lost"


def test_status_counts_are_numbers_not_strings() -> None:
    # The proto3 JSON mapping writes uint64 as strings; qcinode status must not.
    reply = admin_pb2.NodeStatus(node="alpha", uptime_s=1.5, links=[admin_pb2.LinkStatus(link_id="a-b", pulses_sent=2**40 + 1, blocks_done=3)])
    reply.links[0].aborts_by_reason["s_Z1<=0"] = 7
    reply.links[0].blocks.add(block_id="a-b/0", sha256=b"\x01\x02", bits=8)
    out = message_to_dict(reply)
    link = out["links"][0]
    assert link["pulses_sent"] == 2**40 + 1 and link["blocks_done"] == 3 and link["blocks_aborted"] == 0
    assert link["aborts_by_reason"] == {"s_Z1<=0": 7}
    assert link["blocks"] == [{"block_id": "a-b/0", "sha256": "0102", "bits": 8}]
    assert link["recent_aborts"] == [] and out["uptime_s"] == 1.5


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


def test_lag_is_flagged_below_95_percent_of_speed_and_never_at_max() -> None:
    link = {"state": "up", "emulation_rate": 0.18, "emulation_window_s": 60.0}
    assert lag(link, 1.0) == pytest.approx(0.18)
    assert lag({**link, "emulation_rate": 0.96}, 1.0) is None
    assert lag({**link, "emulation_rate": 9.0}, 10.0) == pytest.approx(9.0)
    assert lag(link, "max") is None
    assert lag({**link, "state": "down"}, 1.0) is None
    assert lag({**link, "emulation_window_s": LAG_MIN_WINDOW_S / 2}, 1.0) is None  # a session that just began


def _status() -> dict[str, Any]:
    link = {
        "state": "up", "qber": 0.2512, "current_key_rate_bps": 0.0, "secret_key_rate_bps": 3456.7, "pool_bits": 123_456_789,
        "blocks_done": 12_345, "blocks_aborted": 678, "ec_efficiency": 1.061, "emulated_s": 3600.0, "emulation_rate": 0.18,
        "emulation_window_s": 60.0, "alice_pool_bits": 123_456_789, "bob_pool_bits": 123_456_000,
        "attacks": "eve intercept-resend 1; delay p=1 1ms at bob; partition at alice",
        "recent_aborts": [estimation.REASON_PHASE_ERROR], "aborted_last_minute": 3,
        "aborts_by_reason": {estimation.REASON_PHASE_ERROR: 600, "session_lost": 78},
    }  # fmt: skip
    long_id = "a-very-long-node-name-of-a-site-antwerp-rotterdam-cross-border"
    return {
        "topology": "benelux",
        "speed": 1.0,
        "links": {"brussels-antwerp": link, long_id: {**link, "state": "storage_failed"}, "ghent-brussels": {"state": "down"}},
        "nodes": {
            "brussels": {"alive": True, "network": {"relays_delivered": 3, "etsi014_requests": {f"enc_keys {c}": 10 * c for c in range(200, 230)}}},
            "antwerp": {"alive": False, "error": "not running", "network": {}},
        },
    }


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
    status = {"links": {
        "alpha-beta": {"state": "up", "blocks_done": 0, "blocks_aborted": 516, "recent_aborts": [estimation.REASON_NO_SINGLE_PHOTON_KEY] * 5},
        "beta-gamma": {"state": "up", "blocks_done": 2, "bob_pool_bits": 100},
    }}  # fmt: skip
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

    def advert(*links: tuple[str, int]) -> dict[str, Any]:
        return {"links": [{"link_id": link_id, "up": True, "available_out_bytes": available} for link_id, available in links]}

    full = {"a": advert(("a-b", 10)), "b": advert(("a-b", 10), ("b-c", 10)), "c": advert(("b-c", 10))}
    status = {"nodes": {
        "a": {"network": {"routing": {"origins": full}}},
        "b": {"network": {"routing": {"origins": {**full, "c": advert(("b-c", 0))}}}},  # c's half of b-c still empty
        "c": {"network": {"routing": {"origins": {k: v for k, v in full.items() if k != "a"}}}},  # no advert from a yet
    }}  # fmt: skip
    assert nodes_without_routes(status, topology) == ["b", "c"]
