"""The local multi-process cluster behind ``qcinode up``, ``status`` and ``down``.

Each node runs as its own OS process (``python -m qcinode node ...``) on a
loopback port chosen here; ``cluster.json`` in the state directory records
where everything is (DESIGN.md §2 fixes its field names).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..pki import cert_plan, make_certificates
from ..topology import Topology, load_topology, topology_to_mapping
from .admin import health_check, node_status

CLUSTER_FILE = "cluster.json"


def free_ports(count: int) -> list[int]:
    """``count`` distinct free loopback ports.

    The sockets are held open until all are bound, so the kernel cannot hand
    the same port out twice (one at a time, a port released by one call could
    come back from the next, and a node's KME and metrics servers then
    collided on it).
    """
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) for _ in range(count)]
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in socks]


def _private_log(path: Path) -> Any:
    """Open a node's log for appending, mode 0600 whatever the umask (logs hold key IDs)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.fchmod(fd, 0o600)  # also an older log created with looser permissions
    return os.fdopen(fd, "ab")  # owned by the child once passed to Popen


def read_cluster(state_dir: Path) -> dict[str, Any]:
    path = state_dir / CLUSTER_FILE
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"--state-dir: no cluster at {path} (start one with `qcinode up --detach`)") from None
    return data


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still answers kill(0); treat it as dead.
    with contextlib.suppress(OSError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            return False
    return True


class Cluster:
    """A running local cluster: node processes plus the state directory describing them."""

    def __init__(self, topology_path: Path, state_dir: Path, *, speed: str | None = None, seed: int | None = None) -> None:
        self.state_dir = state_dir.resolve()
        self.topology = load_topology(topology_path)
        self.topology_path = topology_path
        self.speed = speed
        self.seed = seed
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.ports: dict[str, int] = {}
        self.kme_ports: dict[str, int] = {}
        self.metrics_ports: dict[str, int] = {}

    @property
    def certs_dir(self) -> Path:
        return self.state_dir / "certs"

    def prepare(self) -> None:
        # Private: certificates and keys, node data and logs (which hold key IDs) live here.
        self.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.state_dir, 0o700)
        if (self.state_dir / CLUSTER_FILE).exists():
            old = read_cluster(self.state_dir)
            alive = [n for n, info in old.get("nodes", {}).items() if pid_alive(int(info.get("pid", 0)))]
            if alive:
                raise ConfigError(f"--state-dir: a cluster is already running in {self.state_dir} (nodes {', '.join(alive)}); `qcinode down` first")
        for private in (self.state_dir / "logs", self.state_dir / "data"):
            private.mkdir(mode=0o700, exist_ok=True)
            os.chmod(private, 0o700)
        topo_text = self.topology_path.read_text()
        if self.speed is not None:
            import yaml

            data = topology_to_mapping(self.topology)
            data["emulation"]["speed"] = self.speed if self.speed == "max" else float(self.speed)
            topo_text = yaml.safe_dump(data, sort_keys=False)
        (self.state_dir / "topology.yaml").write_text(topo_text)
        self.topology = load_topology(self.state_dir / "topology.yaml")
        make_certificates(cert_plan(self.topology), self.certs_dir)
        names = [node.name for node in self.topology.nodes]
        ports = iter(free_ports(3 * len(names)))
        self.ports = {name: next(ports) for name in names}
        self.kme_ports = {name: next(ports) for name in names}
        self.metrics_ports = {name: next(ports) for name in names}

    def start(self) -> None:
        for node in self.topology.nodes:
            self.start_node(node.name)
        self.write_cluster_file()

    def start_node(self, name: str) -> subprocess.Popen[bytes]:
        args = [
            sys.executable, "-m", "qcinode", "node",
            "--topology", str(self.state_dir / "topology.yaml"),
            "--name", name,
            "--certs", str(self.certs_dir),
            "--data-dir", str(self.state_dir / "data" / name),
            "--listen", f"127.0.0.1:{self.ports[name]}",
            "--kme-listen", f"127.0.0.1:{self.kme_ports[name]}",
            "--metrics-listen", f"127.0.0.1:{self.metrics_ports[name]}",
        ]  # fmt: skip
        for peer in self.topology.neighbours(name):
            args += ["--peer", f"{peer}=127.0.0.1:{self.ports[peer]}"]
        if self.seed is not None:
            args += ["--seed", str(self.seed + sorted(self.ports).index(name))]
        log_file = _private_log(self.state_dir / "logs" / f"{name}.log")
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        proc = subprocess.Popen(args, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True)
        log_file.close()
        self.processes[name] = proc
        return proc

    def write_cluster_file(self) -> None:
        data = {
            "topology": self.topology.name,
            "ca": "certs/ca.pem",
            "admin": {"cert": "certs/admin.pem", "key": "certs/admin.key"},
            "nodes": {
                name: {
                    "pid": proc.pid,
                    "grpc": f"127.0.0.1:{self.ports[name]}",
                    "etsi014": f"https://127.0.0.1:{self.kme_ports[name]}",
                    "metrics": f"http://127.0.0.1:{self.metrics_ports[name]}/metrics",
                    "log": f"logs/{name}.log",
                }
                for name, proc in self.processes.items()
            },
            "saes": {
                sae: {"node": node.name, "cert": f"certs/saes/{sae}.pem", "key": f"certs/saes/{sae}.key"}
                for node in self.topology.nodes
                for sae in node.saes
            },
        }
        tmp = self.state_dir / (CLUSTER_FILE + ".tmp")
        tmp.write_text(json.dumps(data, indent=2) + "\n")
        os.replace(tmp, self.state_dir / CLUSTER_FILE)

    def wait_healthy(self, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        pending = set(self.processes)
        while pending:
            for name in sorted(pending):
                proc = self.processes[name]
                if proc.poll() is not None:
                    raise ConfigError(f"node {name} exited with code {proc.returncode}; see {self.state_dir / 'logs' / (name + '.log')}")
                if health_check(f"127.0.0.1:{self.ports[name]}", name, self.certs_dir, timeout_s=1.0):
                    pending.discard(name)
            if pending and time.monotonic() > deadline:
                raise ConfigError(f"nodes not healthy after {timeout_s:.0f} s: {', '.join(sorted(pending))}")
            if pending:
                time.sleep(0.2)

    def stop(self, grace_s: float = 10.0) -> None:
        stop_processes({name: proc.pid for name, proc in self.processes.items()}, grace_s)
        for proc in self.processes.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=1)


def stop_processes(pids: dict[str, int], grace_s: float = 10.0) -> None:
    """SIGTERM every node, then SIGKILL whatever is still alive after ``grace_s``."""
    for pid in pids.values():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(pid_alive(pid) for pid in pids.values()):
        time.sleep(0.1)
    for pid in pids.values():
        if pid_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def cluster_status(state_dir: Path, digests: bool = False, ledger: bool = False) -> dict[str, Any]:
    """Status of every node and link of the cluster in ``state_dir``."""
    cluster = read_cluster(state_dir)
    certs = state_dir / "certs"
    nodes: dict[str, Any] = {}
    links: dict[str, Any] = {}
    for name, info in cluster["nodes"].items():
        entry: dict[str, Any] = {"pid": info["pid"], "alive": pid_alive(int(info["pid"])), "grpc": info["grpc"]}
        try:
            status = node_status(info["grpc"], name, certs, timeout_s=3.0, digests=digests, ledger=ledger)
        except Exception as exc:  # noqa: BLE001 - any failure means "unreachable" here
            entry["error"] = str(getattr(exc, "details", lambda: exc)())
            status = {"links": []}
        entry["uptime_s"] = status.get("uptime_s")
        entry["links"] = status["links"]
        entry["network"] = status.get("network", {})
        nodes[name] = entry
        for link in status["links"]:
            view = links.setdefault(link["link_id"], {})
            view[link["role"]] = link
    merged: dict[str, Any] = {}
    for link_id, views in links.items():
        main = dict(views.get("alice") or views.get("bob") or {})
        main.pop("role", None)
        main.pop("peer", None)
        main.pop("blocks", None)
        main.pop("ledger", None)
        main["attacks"] = _attacks(views)
        main["alice_pool_bits"] = views.get("alice", {}).get("pool_bits")
        main["bob_pool_bits"] = views.get("bob", {}).get("pool_bits")
        if "alice" not in views or "bob" not in views:
            main["state"] = "down"
        merged[link_id] = main
    return {"topology": cluster["topology"], "nodes": nodes, "links": merged}


def _attacks(views: dict[str, Any]) -> str:
    """What is switched on against a link: its eavesdropper and each end's classical fault ("" if nothing)."""
    parts = []
    eve = (views.get("alice") or {}).get("eavesdropper", "")
    if eve and not eve.startswith("none"):
        parts.append(f"eve {eve}")
    for role in ("alice", "bob"):
        view = views.get(role) or {}
        if view.get("fault"):
            parts.append(f"{view['fault']} at {role}")
    return "; ".join(parts)


def render_table(status: dict[str, Any]) -> str:
    """The live status table: one row per link."""
    header = (
        f"{'link':<26}{'state':<12}{'QBER':>8}{'SKR bit/s':>13}{'pool bits':>12}{'blocks':>8}{'aborted':>9}{'f_EC':>7}{'emul. s':>9}"
        "  attacks"
    )
    rows = [f"topology {status['topology']}", header, "-" * len(header)]
    for link_id, link in sorted(status["links"].items()):
        rows.append(
            f"{link_id:<26}{link.get('state', '?'):<12}{100 * float(link.get('qber', 0)):>7.2f}%"
            f"{float(link.get('secret_key_rate_bps', 0)):>13.4g}{int(link.get('pool_bits', 0)):>12}"
            f"{int(link.get('blocks_done', 0)):>8}{int(link.get('blocks_aborted', 0)):>9}"
            f"{float(link.get('ec_efficiency', 0)):>7.3f}{float(link.get('emulated_s', 0)):>9.1f}"
            f"  {link.get('attacks') or '-'}"
        )
    node_header = f"{'node':<14}{'relays ok':>10}{'failed':>8}{'forwarded':>10}  ETSI 014 requests (endpoint status: count)"
    rows += ["", node_header, "-" * len(node_header)]
    for name, info in status["nodes"].items():
        net = info.get("network") or {}
        requests = ", ".join(f"{k}: {v}" for k, v in sorted((net.get("etsi014_requests") or {}).items())) or "-"
        rows.append(
            f"{name:<14}{int(net.get('relays_delivered', 0)):>10}{int(net.get('relays_failed', 0)):>8}"
            f"{int(net.get('relays_forwarded', 0)):>10}  {requests}"
        )
    down = [n for n, info in status["nodes"].items() if not info["alive"] or "error" in info]
    if down:
        rows.append(f"nodes not answering: {', '.join(sorted(down))}")
    return "\n".join(rows)


def all_links_have_key(status: dict[str, Any], topology: Topology) -> bool:
    for link in topology.links:
        view = status["links"].get(link.link_id)
        if not view or int(view.get("blocks_done", 0)) < 1 or not view.get("bob_pool_bits"):
            return False
    return True


@contextlib.contextmanager
def running_cluster(topology_path: Path, state_dir: Path, **kwargs: Any) -> Iterator[Cluster]:
    """Starts a cluster and always stops it (tests and the pytest fixture)."""
    cluster = Cluster(topology_path, state_dir, **kwargs)
    cluster.prepare()
    try:
        cluster.start()
        cluster.wait_healthy()
        yield cluster
    finally:
        cluster.stop()


def remove_state(state_dir: Path) -> None:
    shutil.rmtree(state_dir, ignore_errors=True)
