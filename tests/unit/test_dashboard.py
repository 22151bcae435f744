"""The Grafana dashboard only queries metrics that nodes really export."""

from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from qcinode.core.aborts import AbortReason
from qcinode.core.relay.messages import RefusalReason
from qcinode.core.roles import Role
from qcinode.node.metrics import NodeMetrics
from qcinode.status import LinkState, LinkStatus, NetworkStatus, NodeStatus

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "qcinode-dashboard.json"


def _exported_names() -> set[str]:
    link = LinkStatus(
        link_id="a-b", peer="b", role=Role.ALICE, state=LinkState.UP, qber=0.01, ec_efficiency=1.05, pool_bits=10,
        secret_key_rate_bps=1.0, emulated_s=1.0, pulses_sent=1, detections=1, sifted_bits=1, secret_bits=1, ec_leak_bits=1,
        blocks_done=1, aborts_by_reason={AbortReason.PHASE_ERROR: 1},
        block_stage_seconds={"estimation": 0.1, "reconciliation": 0.4, "confirmation": 0.1}, block_stage_blocks=1,
    )  # fmt: skip
    status = NodeStatus(node="a", uptime_s=1.0, links=(link,), network=NetworkStatus(relay_failures_by_reason={RefusalReason.NO_PATH: 1}))
    metrics = NodeMetrics(lambda: status)
    metrics.observe_request("enc_keys", 200, 0.01)
    names: set[str] = set()
    for family in text_string_to_metric_families(metrics.render().decode()):
        names.update(sample.name for sample in family.samples)
    return names


def test_every_dashboard_query_names_an_exported_metric() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exported = _exported_names()
    queried: set[str] = set()
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            queried.update(re.findall(r"\b((?:qcinode|process)_[a-z0-9_]+)", target["expr"]))
    assert queried, "the dashboard queries nothing"
    missing = sorted(queried - exported)
    assert missing == [], f"dashboard queries metrics no node exports: {missing}"
