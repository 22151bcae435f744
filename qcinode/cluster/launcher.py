"""The local multi-process cluster behind ``qcinode up``, ``status`` and ``down``.

Each node runs as its own OS process (``qcinode node ...``) on a loopback
port chosen here; ``cluster.json`` in the state directory records where
everything is (docs/design.md §2 fixes its field names). Nodes are forked
from a zygote that has imported everything once (:mod:`.zygote`), or, with
``QCINODE_LAUNCH=exec``, a wrapped command line or off Linux, started as
new interpreters (``python -m qcinode node ...``).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal, Protocol

from ..core.aborts import AbortReason, abort_reason
from ..core.roles import Role
from ..errors import ConfigError, NotRunning, TransportError
from ..pki import cert_plan, make_certificates
from ..status import ChannelStatus, ClusterLink, ClusterNode, ClusterStatus, LinkState, LinkStatus, NetworkStatus, NodeStatus
from ..topology import Topology, load_topology, parse_topology, topology_to_mapping, with_clock_anchor
from .admin import health_check, node_status
from .zygote import ForkedProcess, Zygote, ZygoteError, launch_mode, pid_alive

CLUSTER_FILE = "cluster.json"

#: Environment every node process starts with, unless the caller's environment sets the variable itself.
#: Many nodes share one machine: each process keeps at most two glibc malloc arenas (the
#: default is eight per core, one for each thread that allocates: gRPC's event-engine
#: threads, the protocol and storage threads), and numpy's OpenBLAS starts no thread pool of
#: its own (a node does no large linear algebra; its pool would be one idle thread and its
#: buffers per node).
NODE_ENVIRONMENT = {"MALLOC_ARENA_MAX": "2", "OPENBLAS_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


#: Seconds a serving node has to answer the launcher's health check (a saturated machine answers slowly).
HEALTH_TIMEOUT_S = 5.0
#: Health checks the launcher has in flight at once.
HEALTH_CHECKS_AT_ONCE = 8


def node_environment(base: dict[str, str]) -> dict[str, str]:
    """The environment of a node process: ``base`` with :data:`NODE_ENVIRONMENT` for what it does not set."""
    return {**NODE_ENVIRONMENT, **base, "PYTHONUNBUFFERED": "1"}


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
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--state-dir: cannot read {path}: {exc}") from None
    return data


def node_running(info: dict[str, Any]) -> bool:
    """Whether the node process recorded in ``cluster.json`` still runs.

    A PID reused by another program after the node died does not count: on
    Linux its command line must name qcinode.
    """
    pid = int(info.get("pid", 0))
    if pid <= 0 or not pid_alive(pid):
        return False
    try:
        return b"qcinode" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True  # no /proc: trust the PID


def require_running(state_dir: Path, nodes: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """``cluster.json`` of a cluster that runs, with ``nodes`` among its running nodes.

    Raises:
        ConfigError: No ``cluster.json`` in ``state_dir``.
        NotRunning: Every node has stopped (after Ctrl-C or ``qcinode down``
            the file stays), or one of ``nodes`` has.
    """
    cluster = read_cluster(state_dir)
    running = {name for name, info in cluster.get("nodes", {}).items() if node_running(info)}
    where = state_dir.resolve()
    if not running:
        raise NotRunning(f"the cluster in {where} is not running (its nodes have stopped); start it with `qcinode up`")
    stopped = [name for name in nodes if name not in running]
    if stopped:
        logs = ", ".join(str(where / "logs" / f"{name}.log") for name in stopped)
        raise NotRunning(f"node {', '.join(stopped)} of the cluster in {where} is not running (see {logs})")
    return cluster


def parse_speed(text: str) -> float | Literal["max"]:
    """``--speed``: ``max`` or a finite number > 0.

    Raises:
        ConfigError: Naming ``--speed`` and what was given.
    """
    if text.strip().lower() == "max":
        return "max"
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(f"--speed: expected a number > 0 (emulated seconds per wall second) or 'max', got {text!r}")
    return value


class NodeProcess(Protocol):
    """A node's process as the launcher's callers see it: a ``subprocess.Popen`` or a :class:`~.zygote.ForkedProcess`."""

    @property
    def pid(self) -> int: ...

    @property
    def returncode(self) -> int | None: ...

    def poll(self) -> int | None: ...

    def wait(self, timeout: float | None = None) -> int: ...


class Cluster:
    """A running local cluster: node processes plus the state directory describing them."""

    def __init__(self, topology_path: Path, state_dir: Path, *, speed: str | float | None = None, seed: int | None = None) -> None:
        self.state_dir = state_dir.resolve()
        self.topology_path = topology_path
        self.topology = load_topology(topology_path)
        self.topology_text = Path(topology_path).read_text()
        if speed is not None:
            # Checked here, before prepare() makes anything in the state directory.
            import yaml

            data = topology_to_mapping(self.topology)
            data["emulation"]["speed"] = parse_speed(str(speed))
            self.topology_text = yaml.safe_dump(data, sort_keys=False)
            self.topology = parse_topology(self.topology_text, "--speed")
        self.speed = speed
        self.seed = seed
        self.processes: dict[str, NodeProcess] = {}
        self.ports: dict[str, int] = {}
        self.kme_ports: dict[str, int] = {}
        self.metrics_ports: dict[str, int] = {}
        self.etsi004_ports: dict[str, int] = {}
        self.skip_ports: dict[str, int] = {}
        #: Rewrites a node's command line before it starts (``(name, argv) -> argv``): a test runs
        #: one node inside a mount namespace on a small disk. None: as it is.
        self.command_wrapper: Callable[[str, list[str]], list[str]] | None = None
        self._zygote: Zygote | None = None
        self._zygote_failed = False

    @property
    def certs_dir(self) -> Path:
        return self.state_dir / "certs"

    def _anchored_text(self) -> str:
        """The topology the nodes read: one network clock for all of them, restarts included.

        The emulation stands at its start when the cluster starts
        (``emulation.wall_start``, unless the file fixes it); loss-trace paths
        are absolute, as the file moves into the state directory.
        """
        anchored = with_clock_anchor(self.topology, time.time())
        traces = any(link.free_space is not None and link.free_space.loss_trace for link in anchored.links)
        if anchored == self.topology and not traces and not self.topology.interworking:
            return self.topology_text  # (the other operator's CA paths, too, must not stay relative)
        import yaml

        return str(yaml.safe_dump(topology_to_mapping(anchored), sort_keys=False))

    def prepare(self) -> None:
        """Writes the state directory: topology, certificates, log directory; picks the ports.

        A state directory this call creates is removed again if it fails, so a
        failed ``qcinode up`` leaves nothing half-made. It is private (0700):
        certificates and keys, node data and logs (which hold key IDs) live here.
        """
        if (self.state_dir / CLUSTER_FILE).exists():
            old = read_cluster(self.state_dir)
            alive = [n for n, info in old.get("nodes", {}).items() if node_running(info)]
            if alive:
                raise ConfigError(f"--state-dir: a cluster is already running in {self.state_dir} (nodes {', '.join(alive)}); `qcinode down` first")
        created = not self.state_dir.exists()
        try:
            self.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(self.state_dir, 0o700)
            for private in (self.state_dir / "logs", self.state_dir / "data", self.state_dir / "run"):
                private.mkdir(mode=0o700, exist_ok=True)
                os.chmod(private, 0o700)
            (self.state_dir / "topology.yaml").write_text(self._anchored_text())
            self.topology = load_topology(self.state_dir / "topology.yaml")
            make_certificates(cert_plan(self.topology), self.certs_dir)
        except BaseException:
            if created:
                shutil.rmtree(self.state_dir, ignore_errors=True)
            raise
        names = [node.name for node in self.topology.nodes]
        ports = iter(free_ports(5 * len(names)))
        self.ports = {name: next(ports) for name in names}
        self.kme_ports = {name: next(ports) for name in names}
        self.metrics_ports = {name: next(ports) for name in names}
        self.etsi004_ports = {name: next(ports) for name in names}
        self.skip_ports = {name: next(ports) for name in names}

    def start(self) -> None:
        for node in self.topology.nodes:
            self.start_node(node.name)
        self.write_cluster_file()

    def start_node(self, name: str) -> NodeProcess:
        """Starts node ``name`` (again) on its ports and data directory; its output goes to ``logs/NAME.log``.

        Forked from the zygote (started by the first call) unless
        ``QCINODE_LAUNCH=exec``, :attr:`command_wrapper` rewrites the node's
        command line, or the environment differs from the zygote's in what a
        process reads as it starts (:func:`~.zygote.start_time_environment`):
        then a new interpreter, as ``python -m qcinode node ...``.
        """
        args = [
            "node",
            "--topology", str(self.state_dir / "topology.yaml"),
            "--name", name,
            "--certs", str(self.certs_dir),
            "--data-dir", str(self.state_dir / "data" / name),
            "--listen", f"127.0.0.1:{self.ports[name]}",
            "--kme-listen", f"127.0.0.1:{self.kme_ports[name]}",
            "--metrics-listen", f"127.0.0.1:{self.metrics_ports[name]}",
            "--port-file", str(self.port_file(name)),
        ]  # fmt: skip
        if self.topology.interfaces.etsi004:
            args += ["--etsi004-listen", f"127.0.0.1:{self.etsi004_ports[name]}"]
        if self.topology.interfaces.skip:
            args += ["--skip-listen", f"127.0.0.1:{self.skip_ports[name]}"]
        for peer in self.topology.neighbours(name):
            args += ["--peer", f"{peer}=127.0.0.1:{self.ports[peer]}"]
        if self.seed is not None:
            args += ["--seed", str(self.seed + sorted(self.ports).index(name))]
        self.port_file(name).parent.mkdir(mode=0o700, exist_ok=True)
        self.port_file(name).unlink(missing_ok=True)  # a killed node's: wait_healthy waits for the new one
        command = [sys.executable, "-m", "qcinode", *args]
        wrapped = self.command_wrapper(name, command) if self.command_wrapper is not None else command
        env = node_environment(dict(os.environ))
        with _private_log(self.state_dir / "logs" / f"{name}.log") as log_file:
            proc: NodeProcess | None = self._fork(args, log_file.fileno(), env) if wrapped == command else None
            if proc is None:
                proc = subprocess.Popen(wrapped, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True)
        self.processes[name] = proc
        return proc

    @property
    def zygote(self) -> Zygote | None:
        """The zygote forking this cluster's nodes (None: none is running, or nodes start with exec)."""
        return self._zygote

    def zygote_command(self) -> list[str]:
        """The zygote's command line (``--state-dir`` names the cluster in ``ps``, and its topology is parsed once for all nodes)."""
        return [sys.executable, "-m", "qcinode", "zygote", "--state-dir", str(self.state_dir)]

    def _fork(self, args: list[str], log_fd: int, env: dict[str, str]) -> ForkedProcess | None:
        """``qcinode ARGS...`` forked from the zygote, or None where it is not to be used (start it with exec)."""
        for _ in range(2):  # a zygote found dead on the way is replaced once
            zygote = self._zygote_for(env)
            if zygote is None:
                return None
            try:
                return zygote.spawn(args, log_fd, env=env)
            except ZygoteError:
                if zygote.connected:
                    raise  # it is alive and refused: a bug to show, not to hide behind exec
        return None

    def _zygote_for(self, env: dict[str, str]) -> Zygote | None:
        """The running zygote for nodes with environment ``env``, started if there is none (None: use exec)."""
        if self._zygote_failed or launch_mode() != "fork":
            return None
        zygote = self._zygote
        if zygote is not None and zygote.connected:
            # What a process reads as it starts (glibc, OpenBLAS, the interpreter) is fixed at the
            # zygote's start: a node that needs other values there is started as a new process.
            return zygote if zygote.can_fork(env) else None
        log_path = self.state_dir / "logs" / "zygote.log"
        with _private_log(log_path) as log_file:
            try:
                self._zygote = Zygote.start(self.zygote_command(), env, log_file.fileno())
            except ZygoteError as exc:
                self._zygote_failed = True
                warnings.warn(f"qcinode: nodes start as new processes, not forked: {exc} (see {log_path})", RuntimeWarning, stacklevel=4)
                return None
        return self._zygote

    def release(self) -> None:
        """Lets the nodes run on without this launcher (``qcinode up --detach``).

        The zygote's control channel closes, so the zygote exits; the nodes
        it forked do not. Their handles in :attr:`processes` then see a node
        end only when its PID is gone. A later :meth:`start_node` starts a
        new zygote.
        """
        if self._zygote is not None:
            self._zygote.close()
            self._zygote = None

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
                    **({"etsi004": f"127.0.0.1:{self.etsi004_ports[name]}"} if self.topology.interfaces.etsi004 else {}),
                    **({"skip": f"https://127.0.0.1:{self.skip_ports[name]}"} if self.topology.interfaces.skip else {}),
                    **next(({"etsi020": f"https://{site.listen}"} for site in self.topology.interworking if site.node == name), {}),
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

    def port_file(self, name: str) -> Path:
        """Where node ``name`` writes its gRPC port once its servers and workers run (``--port-file``)."""
        return self.state_dir / "run" / f"{name}.port"

    def wait_healthy(self, timeout_s: float = 30.0) -> None:
        """Returns once every node answers its gRPC health check with SERVING.

        A node is asked once it has written its port file, a few at a time,
        with time to answer: on a machine that a hundred starting nodes
        saturate, asking every node every round (a TLS handshake each) with
        a one-second deadline kept the launcher waiting minutes for nodes
        that were long up.

        Raises:
            ConfigError: A node exited, or not every node was healthy within ``timeout_s``.
        """
        deadline = time.monotonic() + timeout_s
        pending = set(self.processes)

        def healthy(name: str) -> bool:
            return health_check(f"127.0.0.1:{self.ports[name]}", name, self.certs_dir, timeout_s=HEALTH_TIMEOUT_S)

        with concurrent.futures.ThreadPoolExecutor(HEALTH_CHECKS_AT_ONCE) as pool:
            while pending:
                for name in sorted(pending):
                    proc = self.processes[name]
                    if proc.poll() is not None:
                        raise ConfigError(f"node {name} exited with code {proc.returncode}; see {self.state_dir / 'logs' / (name + '.log')}")
                serving = sorted(name for name in pending if self.port_file(name).exists())
                pending -= {name for name, ok in zip(serving, pool.map(healthy, serving)) if ok}
                if pending and time.monotonic() > deadline:
                    raise ConfigError(f"nodes not healthy after {timeout_s:.0f} s: {', '.join(sorted(pending))}")
                if pending:
                    time.sleep(0.2)

    def stop(self, grace_s: float = 10.0) -> None:
        stop_processes({name: proc.pid for name, proc in self.processes.items()}, grace_s)
        for proc in self.processes.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=1)
        self.release()


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


def cluster_view(state_dir: Path, digests: bool = False, ledger: bool = False) -> ClusterStatus:
    """Status of every node and link of the cluster in ``state_dir``.

    Nodes whose process has stopped are not asked (``error`` says so); a
    link of the topology that no running node reports is listed as ``down``.
    ``speed`` is the cluster's ``emulation.speed`` (a number or ``"max"``).
    """
    cluster = read_cluster(state_dir)
    certs = state_dir / "certs"
    nodes: dict[str, ClusterNode] = {}
    views: dict[str, dict[Role, LinkStatus]] = {}
    for name, info in cluster["nodes"].items():
        alive = node_running(info)
        status: NodeStatus | None = None
        error: str | None = None if alive else "not running"
        if alive:
            try:
                status = node_status(info["grpc"], name, certs, timeout_s=3.0, digests=digests, ledger=ledger)
            except TransportError as exc:
                error = exc.details or str(exc)
            except Exception as exc:  # noqa: BLE001 - any failure means "unreachable" here
                error = str(exc)
        nodes[name] = ClusterNode(pid=int(info["pid"]), alive=alive, grpc=str(info["grpc"]), error=error, status=status)
        for reported in status.links if status is not None else ():
            views.setdefault(reported.link_id, {})[reported.role] = reported
    links: dict[str, ClusterLink] = {}
    for link_id, ends in views.items():
        shown = ends.get(Role.ALICE) or ends[Role.BOB]
        alice, bob = ends.get(Role.ALICE), ends.get(Role.BOB)
        links[link_id] = ClusterLink(
            view=shown,
            state=shown.state if alice is not None and bob is not None else LinkState.DOWN,
            attacks=_attacks(ends),
            alice_pool_bits=alice.pool_bits if alice is not None else None,
            bob_pool_bits=bob.pool_bits if bob is not None else None,
        )
    speed: float | str | None = None
    with contextlib.suppress(ConfigError):
        topology = load_topology(state_dir / "topology.yaml")
        speed = topology.emulation.speed
        for link in topology.links:
            links.setdefault(link.link_id, ClusterLink(view=None, state=LinkState.DOWN))
    return ClusterStatus(topology=str(cluster["topology"]), speed=speed, nodes=nodes, links=links)


def cluster_status(state_dir: Path, digests: bool = False, ledger: bool = False) -> dict[str, Any]:
    """:func:`cluster_view` as the ``qcinode status --json`` document (its field names are a contract)."""
    return cluster_view(state_dir, digests=digests, ledger=ledger).to_json()


def _attacks(ends: dict[Role, LinkStatus]) -> str:
    """What is switched on against a link: its eavesdropper and each end's classical fault ("" if nothing)."""
    parts = []
    alice = ends.get(Role.ALICE)
    eve = alice.eavesdropper if alice is not None else ""
    if eve and not eve.startswith("none"):
        parts.append(f"eve {eve}")
    for role in (Role.ALICE, Role.BOB):
        view = ends.get(role)
        if view is not None and view.fault:
            parts.append(f"{view.fault} at {role.value}")
    return "; ".join(parts)


#: A link whose emulated time runs below this share of ``emulation.speed`` is flagged as behind.
LAG_THRESHOLD = 0.95
#: Seconds of a session before its emulation speed is judged (the first frames come in a burst).
LAG_MIN_WINDOW_S = 10.0
#: With a network clock, a transmitter more than this many wall seconds of emulated time behind it is "behind".
LAG_BEHIND_WALL_S = 5.0
TABLE_WIDTH = 100


def short_reason(reason: str) -> str:
    """An abort reason's text in a few characters: ``s_Z1<=0``, ``session_lost``, ``phase error >= 1/2``.

    A reason this version knows is spelled as its :class:`~qcinode.core.aborts.AbortReason`
    says; another (a peer's words) is cut at its first colon, or at 24 characters.
    """
    kind = abort_reason(reason)
    if kind is not AbortReason.OTHER:
        return kind.short
    head = reason.split(":", 1)[0]
    return head if len(head) <= 24 else head[:23] + "…"


def lag(link: ClusterLink, speed: float | str | None) -> float | None:
    """The link's emulated seconds per wall second when it runs behind ``speed``, else None.

    Judged over the last minute of an ``up`` session (at least
    :data:`LAG_MIN_WINDOW_S` of it); never at ``speed: max``.
    """
    view = link.view
    if not isinstance(speed, (int, float)) or link.state is not LinkState.UP or view is None:
        return None
    if view.emulation_window_s < LAG_MIN_WINDOW_S:
        return None
    return view.emulation_rate if view.emulation_rate < LAG_THRESHOLD * speed else None


def _si(value: float) -> str:
    """A count or rate in at most 6 characters: 812, 23.1k, 1.20M."""
    for factor, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.3g}{suffix}"
    return f"{value:.3g}" if value else "0"


def _fit(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(0, width - 1)] + "…"


def _wrap(parts: list[str], width: int, max_lines: int = 3) -> list[str]:
    """Notes joined with "; " into lines of ``width`` (a part too long is cut, never split)."""
    width = max(width, 12)
    lines: list[str] = []
    for part in parts:
        if lines and len(lines[-1]) + 2 + len(part) <= width:
            lines[-1] += "; " + part
        else:
            lines.append(_fit(part, width))
    return lines[:max_lines]


def link_notes(link: ClusterLink, speed: float | str | None) -> list[str]:
    """What the table says about a link beyond its numbers, most urgent first.

    ``behind: 0.18x``: emulated seconds per wall second over the last minute,
    when below :data:`LAG_THRESHOLD` of ``speed``; what is switched on against
    the link (eavesdropper, faults); the reason of its last abort, while
    blocks abort (in the last minute).
    """
    notes = []
    view = link.view
    channel = view.channel if view is not None else None
    if channel is not None and channel.lag_s is not None:
        # The network clock says exactly how far the transmitter is behind.
        if isinstance(speed, (int, float)) and channel.lag_s > LAG_BEHIND_WALL_S * speed:
            notes.append(f"behind: {_duration(channel.lag_s)}")
    else:
        behind = lag(link, speed)
        if behind is not None:
            notes.append(f"behind: {behind:.2f}x")
    if channel is not None and channel.in_pass is not None:
        notes.append(space_note(channel))
    if link.attacks:
        notes.append(link.attacks)
    if view is not None and view.recent_aborts and view.aborted_last_minute > 0:
        notes.append(f"aborts: {short_reason(view.recent_aborts[-1])}")
    return notes


def space_note(channel: ChannelStatus) -> str:
    """A free-space link's pass in a few words: ``pass el 36° 812 km 26.4 dB`` or ``below mask, next pass 21:22Z (in 37 min)``."""
    if channel.in_pass:
        parts = ["pass"]
        if channel.elevation_deg is not None:
            parts.append(f"el {channel.elevation_deg:.0f}°")
        if channel.range_km is not None:
            parts.append(f"{channel.range_km:.0f} km")
        if channel.loss_db is not None:
            parts.append(f"{channel.loss_db:.1f} dB")
        if channel.note:
            parts.append(channel.note)
        return " ".join(parts)
    text = channel.note or "no pass"
    if channel.next_pass_utc:
        text += f", next pass {channel.next_pass_utc[11:16]}Z (in {_duration(channel.next_pass_in_s or 0.0)})"
    return text


def _duration(seconds: float) -> str:
    """Emulated seconds as ``42 s``, ``37 min`` or ``13.2 h``."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def render_table(status: ClusterStatus, *, wide: bool = False, width: int = TABLE_WIDTH) -> str:
    """The live status table: one row per link, then one per node.

    It fits ``width`` columns (long names are cut with "…", notes continue
    on a second line under the notes column);
    ``wide`` adds Cascade's f, the lifetime rate, emulated time and speed,
    both pools and every abort reason, and cuts nothing. Key rates are secret bits per emulated second,
    over the blocks of the last minute.
    """
    speed = status.speed
    links = sorted(status.links.items())
    name_w = max([len("link"), *(len(link_id) for link_id, _ in links)])
    if not wide:
        name_w = min(name_w, 24)  # node names may have 63 characters: long link IDs are cut
    state_w = max([len("state"), *(len(link.state.value) for _, link in links)])
    head = f"{'link':<{name_w}}  {'state':<{state_w}} {'QBER':>6} {'key bit/s':>9} {'pool bits':>9} {'blocks':>6} {'aborts':>6}"
    if wide:
        head += f" {'f_EC':>5} {'avg bit/s':>9} {'emul. s':>8} {'emul/wall':>9} {'alice pool':>10} {'bob pool':>9}"
    head += "  notes"
    speed_text = "as fast as the CPU allows" if speed == "max" else f"speed {speed:g} (emulated s per wall s)" if speed else "speed ?"
    title = f"topology {status.topology}, {speed_text}; key rates per emulated s over the last minute"
    rows = [title if wide else _fit(title, width), head]
    for link_id, link in links:
        view = link.view or LinkStatus(link_id=link_id, peer="", role=Role.ALICE, state=link.state)
        row = (
            f"{_fit(link_id, name_w):<{name_w}}  {link.state.value:<{state_w}} {100 * view.qber:>5.2f}%"
            f" {_si(view.current_key_rate_bps):>9} {_si(float(view.pool_bits)):>9}"
            f" {view.blocks_done:>6} {view.blocks_aborted:>6}"
        )
        notes = link_notes(link, speed)
        if wide:
            pools = [link.alice_pool_bits, link.bob_pool_bits]
            f_ec = view.ec_efficiency
            row += (
                f" {f'{f_ec:.3f}' if f_ec else '-':>5} {_si(view.secret_key_rate_bps):>9} {view.emulated_s:>8.1f}"
                f" {view.emulation_rate:>9.3f} {_si(float(pools[0])) if pools[0] is not None else '-':>10}"
                f" {_si(float(pools[1])) if pools[1] is not None else '-':>9}"
            )
            reasons = view.aborts_by_reason
            if reasons:
                notes.append("aborted: " + ", ".join(f"{r.short} x{n}" for r, n in sorted(reasons.items(), key=lambda kv: -kv[1])))
            rows.append(row + "  " + ("; ".join(notes) or "-"))
        else:
            lines = _wrap(notes or ["-"], width - len(row) - 2)
            rows.append(row + "  " + lines[0])
            rows += [" " * (len(row) + 2) + line for line in lines[1:]]
    name_w = max([len("node"), *(len(n) for n in status.nodes)])
    if not wide:
        name_w = min(name_w, 24)
    node_head = f"{'node':<{name_w}}  {'relays ok':>9} {'failed':>6} {'forwarded':>9}  ETSI 014 requests (endpoint status: count)"
    rows += ["", node_head]
    for name, info in status.nodes.items():
        net = info.status.network if info.status is not None else NetworkStatus()
        requests = ", ".join(f"{k}: {v}" for k, v in sorted(net.etsi014_requests.items())) or "-"
        if not info.alive:
            requests = "not running"
        elif info.error is not None:
            requests = f"not answering: {info.error}"
        row = f"{_fit(name, name_w):<{name_w}}  {net.relays_delivered:>9} {net.relays_failed:>6} {net.relays_forwarded:>9}  "
        rows.append(row + (requests if wide else _fit(requests, width - len(row))))
    return "\n".join(rows)


def links_without_key(status: ClusterStatus, topology: Topology) -> list[str]:
    """One phrase per link that has no key yet: its state, blocks and the reasons of its last aborts."""
    out = []
    for link in topology.links:
        merged = status.links.get(link.link_id)
        view = merged.view if merged is not None else None
        done = view.blocks_done if view is not None else 0
        if done >= 1 and merged is not None and merged.bob_pool_bits:
            continue
        aborted = view.blocks_aborted if view is not None else 0
        reasons = [short_reason(r) for r in (view.recent_aborts if view is not None else ())]
        counted = dict.fromkeys(reasons)
        why = ", ".join(r if len(counted) == 1 else f"{r} x{reasons.count(r)}" for r in counted)
        last = f"; the last {len(reasons)}: {why}" if len(reasons) > 1 else f"; the last: {why}" if why else ""
        state = merged.state.value if merged is not None else LinkState.DOWN.value
        out.append(f"{link.link_id} ({state}, {done} blocks done, {aborted} aborted{last})")
    return out


def nodes_without_routes(status: ClusterStatus, topology: Topology) -> list[str]:
    """Nodes whose routing database does not yet show key on every link, in both directions.

    Key in the pools is not enough for ``enc_keys``: a node routes on the
    adverts it has received (one a second per node), so right after the
    first blocks a request can still be refused for want of a path.
    """
    waiting = []
    for name, info in status.nodes.items():
        routing = info.status.network.routing if info.status is not None else None
        origins = routing.origins if routing is not None else {}
        known = {
            (origin, entry.link_id)
            for origin, advert in origins.items()
            for entry in advert.links
            if entry.up and entry.available_out_bytes > 0
        }
        if any((end, link.link_id) not in known for link in topology.links for end in link.between):
            waiting.append(name)
    return waiting


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

