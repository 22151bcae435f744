"""A pytest plugin that runs an emulated QKD network for users' integration tests.

Installed as the ``pytest11`` entry point ``qcinode``; any project that has
qcinode installed gets the ``qci_network`` fixture::

    def test_my_app_gets_keys(qci_network):
        master = qci_network.sae("brussels-app")
        slave = qci_network.sae("rotterdam-app")
        r = requests.post(f"{master.kme_url}/api/v1/keys/rotterdam-app/enc_keys",
                          json={"number": 1, "size": 256},
                          cert=(master.cert, master.key), verify=qci_network.ca)
        ...

Parametrise with a topology file through indirect parametrisation
(``@pytest.mark.parametrize("qci_network", ["my.yaml"], indirect=True)``) or
the ``qci_topology`` fixture; default: the built-in topology at
``emulation.speed: max``.

For failover and attack tests the network can be hurt:
``qci_network.kill(node)`` / ``restart(node)``,
``set_eavesdropper(link_id, attack)`` and ``set_fault(link_id, kind, ...)``
(``"none"`` removes either), as ``qcinode eve`` and ``qcinode fault`` do.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ..cluster.admin import set_eavesdropper, set_fault
from ..cluster.launcher import Cluster
from ..errors import ConfigError
from ..kme.client import EtsiClient
from ..topology import LinkConfig, builtin_topology_path, load_topology


@dataclasses.dataclass(frozen=True, slots=True)
class SaeCredentials:
    sae_id: str
    node: str
    kme_url: str
    cert: Path
    key: Path


@dataclasses.dataclass(frozen=True, slots=True)
class QciNetwork:
    """What a test needs to talk to the network as applications do."""

    state_dir: Path
    ca: Path
    kme_urls: dict[str, str]  # node -> https://127.0.0.1:PORT
    saes: dict[str, SaeCredentials]
    cluster: Cluster = dataclasses.field(repr=False)

    def sae(self, sae_id: str) -> SaeCredentials:
        return self.saes[sae_id]

    def client(self, sae_id: str) -> EtsiClient:
        """An ETSI 014 client presenting ``sae_id``'s certificate."""
        creds = self.saes[sae_id]
        return EtsiClient(self.ca, creds.cert, creds.key)

    # -- failures, for failover and attack tests --------------------------
    def kill(self, node: str) -> None:
        """SIGKILLs ``node``'s process (no clean shutdown) and waits until it is gone."""
        proc = self.cluster.processes[node]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)

    def restart(self, node: str, timeout_s: float = 30.0) -> None:
        """Starts ``node`` again on its ports and data directory and waits until it is healthy."""
        proc = self.cluster.processes[node]
        if proc.poll() is None:
            self.kill(node)
        self.cluster.start_node(node)
        self.cluster.write_cluster_file()
        self.cluster.wait_healthy(timeout_s)

    def _link(self, link_id: str) -> LinkConfig:
        try:
            return self.cluster.topology.link(link_id)
        except ConfigError as exc:
            raise KeyError(str(exc)) from None  # a lookup by name, as in a dict

    def _admin_address(self, node: str) -> str:
        return f"127.0.0.1:{self.cluster.ports[node]}"

    def set_eavesdropper(self, link_id: str, attack: str, fraction: float = 1.0) -> None:
        """Puts an eavesdropper on ``link_id`` (``attack="none"`` removes it), as ``qcinode eve`` does."""
        alice = self._link(link_id).alice
        set_eavesdropper(self._admin_address(alice), alice, self.cluster.certs_dir, link_id, attack, fraction)

    def set_fault(
        self, link_id: str, kind: str, *, probability: float = 1.0, delay_ms: float = 0.0, channel: str = "all", end: str | None = None
    ) -> None:
        """Switches a classical-channel fault on ``link_id`` (``kind="none"`` removes it), at both ends or at ``end``, as ``qcinode fault`` does."""
        for node in [end] if end else self._link(link_id).between:
            set_fault(self._admin_address(node), node, self.cluster.certs_dir, link_id, kind, probability, delay_ms, channel)


READY_KEYS = 16  # default-size keys every SAE pair must be able to get before the fixture yields


def start_network(topology: Path, state_dir: Path, *, speed: str | None = "max", ready_timeout_s: float = 120.0) -> QciNetwork:
    """Starts the network as real processes and waits until every SAE pair can get keys (``READY_KEYS`` of 256 bits).

    ``speed`` overrides the topology's ``emulation.speed`` (default ``max``),
    except for a topology with satellites, whose passes need its own clock.
    """
    if speed == "max" and load_topology(topology).has_satellites:
        speed = None
    cluster = Cluster(topology, state_dir, speed=speed)
    cluster.prepare()
    try:
        cluster.start()
        cluster.wait_healthy()
        info = json.loads((cluster.state_dir / "cluster.json").read_text())
        network = QciNetwork(
            state_dir=cluster.state_dir,
            ca=cluster.state_dir / info["ca"],
            kme_urls={name: node["etsi014"] for name, node in info["nodes"].items()},
            saes={
                sae: SaeCredentials(sae, s["node"], info["nodes"][s["node"]]["etsi014"], cluster.state_dir / s["cert"], cluster.state_dir / s["key"])
                for sae, s in info["saes"].items()
            },
            cluster=cluster,
        )
        _wait_until_keys_flow(network, ready_timeout_s)
        return network
    except BaseException:
        cluster.stop()
        raise


def _wait_until_keys_flow(network: QciNetwork, timeout_s: float) -> None:
    saes = sorted(network.saes)
    pairs = [(a, b) for a in saes for b in saes if a != b]
    deadline = time.monotonic() + timeout_s
    pending = set(pairs)
    while pending:
        for master, slave in sorted(pending):
            url = f"{network.saes[master].kme_url}/api/v1/keys/{slave}/status"
            try:
                status, body = network.client(master).request("GET", url, timeout_s=5)
            except OSError:
                continue
            if status == 200 and body.get("stored_key_count", 0) >= READY_KEYS:
                pending.discard((master, slave))
        if pending:
            if time.monotonic() > deadline:
                raise TimeoutError(f"SAE pairs still without key after {timeout_s:.0f} s: {sorted(pending)}")
            time.sleep(0.5)


@pytest.fixture
def qci_topology() -> Path:
    """The topology ``qci_network`` runs; override this fixture to use your own."""
    return builtin_topology_path()


@pytest.fixture
def qci_network(request: pytest.FixtureRequest, qci_topology: Path, tmp_path: Path) -> Iterator[QciNetwork]:
    """A running emulated QKD network; torn down after the test."""
    topology = Path(getattr(request, "param", qci_topology))
    network = start_network(topology, tmp_path / "qcinode")
    try:
        yield network
    finally:
        network.cluster.stop()
