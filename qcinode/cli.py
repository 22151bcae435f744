"""The ``qcinode`` command line (docs/design.md, "Contracts", fixes the command names).

Every error a user can cause ends the command with one line on stderr,
``qcinode: WHAT (what to do)``, and a non-zero exit code: 2 for bad input
(options, topology), 1 for everything else (a cluster that is not running, a
KME that refuses), 130 for Ctrl-C; a closed pipe (``qcinode status | head``)
ends it silently with 141, as for any command killed by SIGPIPE.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from . import __version__
from .errors import ConfigError, QcinodeError, TransportError
from .topology import EAVESDROPPER_ATTACKS, FAULT_CHANNELS, FAULT_KINDS

if TYPE_CHECKING:  # the node's modules load only when a node runs (the CLI starts fast)
    from .node.node import NodeSettings

DEFAULT_STATE_DIR = Path(".qcinode")
EXAMPLES = ("euroqci",)  # shipped topologies (qcinode/cluster/examples)
STATE_DIR_HELP = "the cluster's directory: cluster.json, topology, certificates, logs, node data (default ./.qcinode)"


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (usage is one ``--help`` away)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see `{self.prog} --help`)\n")


def _speed(text: str) -> float | str:
    from .cluster.launcher import parse_speed

    try:
        return parse_speed(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("--speed: ")) from None


def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(f"QCINODE_{name}", default)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="qcinode", description="Emulated QKD network node and local cluster.")
    p.add_argument("--version", action="version", version=f"qcinode {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="start every node of a topology on loopback and show a live status table")
    up.add_argument("topology", nargs="?", type=Path, help="topology YAML (default: the built-in topology)")
    up.add_argument("--example", choices=EXAMPLES, help="a shipped example topology instead of a file (euroqci: fibre and a satellite across the EU)")
    up.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR, help=STATE_DIR_HELP)
    up.add_argument("--detach", action="store_true", help="return once every link has key and every node knows it, leave the cluster running")
    up.add_argument("--speed", type=_speed, help="override emulation.speed: emulated seconds per wall second (> 0), or 'max'")
    up.add_argument("--timeout", type=float, default=300.0, help="--detach: seconds to wait for key on every link")
    up.add_argument("--refresh", type=float, default=1.0, help="seconds between table refreshes")
    up.add_argument("--wide", action="store_true", help="table with every column (wider than 100 characters)")

    st = sub.add_parser("status", help="status of a detached cluster")
    st.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR, help=STATE_DIR_HELP)
    st.add_argument("--json", action="store_true", help="print one JSON document")
    st.add_argument("--wide", action="store_true", help="table with every column (wider than 100 characters)")
    st.add_argument("--digests", action="store_true", help=argparse.SUPPRESS)

    down = sub.add_parser("down", help="stop a detached cluster")
    down.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR, help=STATE_DIR_HELP)

    node = sub.add_parser("node", help="run one node in the foreground (what a pod runs)")
    node.add_argument("--topology", type=Path, default=_env("TOPOLOGY"))
    node.add_argument("--name", default=_env("NAME"))
    node.add_argument(
        "--name-from-ordinal",
        action="store_true",
        help="StatefulSet pod: run the topology's N-th node, N = the pod name's ordinal suffix (QCINODE_POD_NAME, else the hostname)",
    )
    node.add_argument("--certs", type=Path, default=_env("CERTS", "certs"), help="directory made by `qcinode certs`")
    node.add_argument("--listen", default=_env("LISTEN", "0.0.0.0:50051"), help="gRPC host:port")
    node.add_argument("--peer", action="append", default=[], metavar="NAME=HOST:PORT", help="a neighbour's gRPC address (repeatable)")
    node.add_argument("--peer-template", default=_env("PEER_TEMPLATE", "{name}:50051"), help="address of neighbours not given with --peer")
    node.add_argument(
        "--data-dir", type=Path, default=_env("DATA_DIR"), help="link pools and SAE keys; {name} is replaced by the node name (default ./qcinode-data/NAME)"
    )
    node.add_argument(
        "--storage-key-file",
        type=Path,
        default=_env("STORAGE_KEY_FILE"),
        help="the key encrypting the data directory, kept outside it (created 0600 if absent); "
        "{name} is replaced by the node name (default: DATA_DIR/storage.key)",
    )
    node.add_argument("--kme-listen", default=_env("KME_LISTEN", "0.0.0.0:8443"), help="ETSI GS QKD 014 HTTPS host:port")
    node.add_argument("--metrics-listen", default=_env("METRICS_LISTEN", "0.0.0.0:9464"), help="Prometheus /metrics HTTP host:port")
    node.add_argument(
        "--health-listen", default=_env("HEALTH_LISTEN"), help="plaintext host:port serving only grpc.health.v1 (kubelet gRPC probes); default: none"
    )
    node.add_argument("--etsi004-listen", default=_env("ETSI004_LISTEN"), help="ETSI GS QKD 004 key streams (JSON over mutual TLS) host:port; default: none")
    node.add_argument("--skip-listen", default=_env("SKIP_LISTEN"), help="SKIP (draft-cisco-skip, HTTPS with mutual TLS) host:port; default: none")
    node.add_argument("--multipath", type=int, default=None, help="override the topology's relay.paths")
    node.add_argument("--port-file", type=Path, default=None, help="write the bound gRPC port here once serving")
    node.add_argument("--seed", type=int, default=None, help=argparse.SUPPRESS)  # tests: deterministic noise AND key bits
    node.add_argument("--log-level", default=_env("LOG_LEVEL", "info"))

    keys = sub.add_parser("keys", help="act as two SAEs: enc_keys at the master's node, dec_keys at the slave's, and check the keys match")
    keys.add_argument("--from", dest="master", required=True, metavar="SAE", help="master SAE (calls enc_keys)")
    keys.add_argument("--to", dest="slave", required=True, metavar="SAE", help="slave SAE (calls dec_keys)")
    keys.add_argument("-n", "--number", type=int, default=1)
    keys.add_argument("--size", type=int, default=256, help="key size in bits")
    keys.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR, help=STATE_DIR_HELP)
    keys.add_argument(
        "--to-state-dir",
        type=Path,
        default=None,
        help="the slave's cluster when it is another network (interworking, docs/interworking.md); default: --state-dir",
    )
    keys.add_argument("--show-keys", action="store_true", help="also print the keys (base64); off by default")
    keys.add_argument("--json", action="store_true")

    eve = sub.add_parser("eve", help="switch an eavesdropper on or off on a running link (needs the admin certificate)")
    eve.add_argument("--link", required=True, metavar="A-B", help="link ID as in `qcinode status`")
    group = eve.add_mutually_exclusive_group(required=True)
    attacks = [a for a in EAVESDROPPER_ATTACKS if a != "none"]
    group.add_argument("--attack", choices=attacks, help="the attack (as the topology's eavesdropper.attack)")
    group.add_argument("--off", action="store_true", help="remove the eavesdropper")
    eve.add_argument("--fraction", type=float, default=1.0, help="share of pulses attacked (0-1; intercept-resend only)")
    eve.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR, help=STATE_DIR_HELP)

    fault = sub.add_parser(
        "fault",
        help="switch a classical-channel fault (flip, drop, delay, reorder, replay, partition) on or off on a running link (needs the admin certificate)",
    )
    fault.add_argument("--link", required=True, metavar="A-B", help="link ID as in `qcinode status`")
    group = fault.add_mutually_exclusive_group(required=True)
    kinds = [k for k in FAULT_KINDS if k != "none"]
    group.add_argument("--kind", help=f"{' | '.join(kinds)} (as the topology's links[i].fault.kind)")
    group.add_argument("--off", action="store_true", help="remove the fault")
    fault.add_argument("--probability", type=float, default=1.0, help="share of outgoing messages affected (0-1); ignored by partition")
    fault.add_argument("--delay-ms", type=float, default=0.0, help="for delay: how late each affected message leaves")
    fault.add_argument("--channel", default="all", help=" | ".join(FAULT_CHANNELS))
    fault.add_argument("--end", metavar="NODE", help="only at this end of the link (default: both ends)")
    fault.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR, help=STATE_DIR_HELP)

    passes = sub.add_parser("passes", help="list the passes of every satellite over each of its ground stations")
    passes.add_argument("topology", nargs="?", type=Path, help="topology YAML (default: the built-in topology)")
    passes.add_argument("--example", choices=EXAMPLES, help="a shipped example topology instead of a file")
    passes.add_argument("--hours", type=float, default=24.0, help="how far ahead to look (default 24)")
    passes.add_argument("--start", metavar="UTC", help="ISO 8601 UTC start, e.g. 2027-03-21T18:00:00Z (default: emulation.start, else now)")
    passes.add_argument("--json", action="store_true", help="one JSON object per pass")

    certs = sub.add_parser("certs", help="make the cluster CA, node and SAE certificates and link bootstrap keys")
    certs.add_argument("--topology", type=Path, required=True)
    certs.add_argument("--out", type=Path, required=True)
    certs.add_argument("--dns-suffix", action="append", default=[], help="extra DNS name suffix for node certificates")
    certs.add_argument("--force", action="store_true", help="make a new CA and replace every file")

    deploy = sub.add_parser("deploy", help="render deployment manifests for a topology")
    targets = deploy.add_subparsers(dest="target", required=True)
    k8s = targets.add_parser("k8s", help="render a kustomize overlay (docs/kubernetes.md): apply with `kubectl apply -k OUT`")
    k8s.add_argument("--topology", type=Path, required=True)
    k8s.add_argument("--out", type=Path, required=True, help="overlay directory (self-contained; holds the CA key: keep it private)")
    k8s.add_argument("--namespace", default="qcinode")
    k8s.add_argument(
        "--image", default=None, help="container image, NAME[:TAG] or NAME@sha256:DIGEST (default localhost/qcinode:VERSION, what deploy/build-image.sh builds)"
    )
    k8s.add_argument("--cluster-domain", default="cluster.local", help="the cluster's DNS domain, for certificate names")
    k8s.add_argument("--base", type=Path, default=None, help="kustomize base to copy (default: deploy/k8s/base of this source tree)")

    # Internal: the launcher's fork server (qcinode/cluster/zygote.py), not a command for people.
    zygote = sub.add_parser("zygote")
    zygote.add_argument("--control-fd", type=int, required=True)
    zygote.add_argument("--state-dir", type=Path, default=None)  # names the cluster in `ps`; its topology.yaml is parsed once for every node
    sub.metavar = "{" + ",".join(name for name in sub.choices if name != "zygote") + "}"
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    handlers = {"passes": _passes, "up": _up, "status": _status, "down": _down, "node": _node, "certs": _certs, "keys": _keys, "deploy": _deploy}
    handler = {**handlers, "eve": _eve, "fault": _fault, "zygote": _zygote}[args.command]
    try:
        code = handler(args)
        sys.stdout.flush()  # here, not at exit: a closed pipe is then caught below
        return code
    except ConfigError as exc:
        return _fail(str(exc), 2)
    except QcinodeError as exc:
        return _fail(str(exc), 1)
    except BrokenPipeError:
        # `qcinode status | head`: the reader has gone. Nothing more to say,
        # and nothing for the interpreter to flush into the closed pipe.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    except KeyboardInterrupt:
        return _fail("interrupted", 128 + signal.SIGINT)
    except OSError as exc:  # a file or directory the user named cannot be used
        where = f": {exc.filename}" if exc.filename else ""
        return _fail(f"{exc.strerror or exc}{where}", 1)


def _fail(message: str, code: int) -> int:
    print(f"qcinode: {message}", file=sys.stderr)
    return code


def _topology_path(path: Path | None, example: str | None = None) -> Path:
    from .topology import builtin_topology_path, example_topology_path

    if example is not None:
        if path is not None:
            raise ConfigError(f"--example: give either a topology file ({path}) or --example {example}, not both")
        return example_topology_path(example)
    return path if path is not None else builtin_topology_path()


def _passes(args: argparse.Namespace) -> int:
    from .core.orbit import format_utc, parse_utc
    from .space import link_passes
    from .topology import load_topology

    topology = load_topology(_topology_path(args.topology, args.example))
    if args.hours <= 0 or args.hours > 24 * 366:
        raise ConfigError(f"--hours: must be in (0, {24 * 366}], got {args.hours:g}")
    if args.start is not None:
        try:
            start = parse_utc(args.start)
        except ConfigError as exc:
            raise ConfigError(f"--start: {exc}") from None
    else:
        start = topology.emulation.start_utc if topology.emulation.start_utc is not None else time.time()
    found = link_passes(topology, start, start + 3600.0 * args.hours)
    if not found:
        raise ConfigError(f"topology {topology.name!r} has no satellite-to-ground (free-space) link")
    rows = [{"link": lp.link_id, "satellite": lp.satellite, "station": lp.station, **p.to_mapping()} for lp in found for p in lp.passes]
    rows.sort(key=lambda r: (str(r["rise_utc"]), str(r["link"])))
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"passes from {format_utc(round(start))} for {args.hours:g} h (above each link's elevation mask)")
    print(f"{'link':<28} {'rise (UTC)':<21} {'culmination':<21} {'set':<21} {'max el':>7} {'min range':>10}")
    for r in rows:
        print(
            f"{r['link']:<28} {str(r['rise_utc'])[:19]:<21} {str(r['culmination_utc'])[:19]:<21} {str(r['set_utc'])[:19]:<21} "
            f"{r['max_elevation_deg']:>6.1f}° {r['min_range_km']:>7.0f} km"
        )
    if not rows:
        print("(no pass in this window)")
    return 0


def _up(args: argparse.Namespace) -> int:
    # SIGTERM (a process manager, `timeout`, a CI job's end) stops the cluster as Ctrl-C does: the
    # nodes run in sessions of their own and would otherwise outlive `up`. Only while `up` runs:
    # a program calling main() in-process keeps its own handler afterwards.
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        return _run_up(args)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run_up(args: argparse.Namespace) -> int:
    from .cluster.launcher import Cluster, cluster_view, links_without_key, nodes_without_routes, render_table

    cluster = Cluster(_topology_path(args.topology, args.example), args.state_dir, speed=args.speed)
    cluster.prepare()
    try:
        cluster.start()
        cluster.wait_healthy()
        print(f"qcinode: {len(cluster.processes)} nodes of topology {cluster.topology.name!r} running; state in {cluster.state_dir}", file=sys.stderr)
        if args.detach:
            deadline = time.monotonic() + args.timeout
            while True:
                status = cluster_view(cluster.state_dir)
                missing = links_without_key(status, cluster.topology)
                unrouted = [] if missing else nodes_without_routes(status, cluster.topology)
                if not missing and not unrouted:
                    print(render_table(status, wide=args.wide))
                    print(f"qcinode: every link has key; stop with `qcinode down --state-dir {args.state_dir}`", file=sys.stderr)
                    cluster.release()  # the nodes run on; the zygote that forked them exits
                    return 0
                if time.monotonic() > deadline:
                    print(render_table(status, wide=args.wide))
                    what = f"no key on {'; '.join(missing)}" if missing else f"nodes {', '.join(unrouted)} have not learnt every link's key"
                    raise QcinodeError(f"--timeout: within {args.timeout:g} s, {what}; cluster stopped, node logs in {cluster.state_dir / 'logs'}")
                time.sleep(1.0)
        tty = sys.stdout.isatty()
        while True:
            table = render_table(cluster_view(cluster.state_dir), wide=args.wide)
            print(("\x1b[H\x1b[2J" if tty else "") + table + ("\n(Ctrl-C stops the cluster)" if tty else "\n"), flush=True)
            time.sleep(args.refresh)
    except KeyboardInterrupt:
        print("\nqcinode: stopping", file=sys.stderr)
        _stop(cluster)
        return 0
    except BaseException:
        _stop(cluster)
        raise


def _interrupt(signum: int, frame: Any) -> None:
    """SIGTERM handler of a foreground ``up``: stop as after Ctrl-C."""
    raise KeyboardInterrupt


def _stop(cluster: Any) -> None:
    """Stops every node; a second Ctrl-C or SIGTERM does not cut that short (the nodes save their state on SIGTERM)."""
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        cluster.stop()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _status(args: argparse.Namespace) -> int:
    from .cluster.launcher import cluster_view, render_table, require_running

    require_running(args.state_dir)
    status = cluster_view(args.state_dir, digests=args.digests)
    print(json.dumps(status.to_json(), indent=2) if args.json else render_table(status, wide=args.wide))
    return 0


def _down(args: argparse.Namespace) -> int:
    from .cluster.launcher import node_running, read_cluster, stop_processes

    cluster = read_cluster(args.state_dir)
    alive = {name: int(info["pid"]) for name, info in cluster["nodes"].items() if node_running(info)}
    stop_processes(alive)
    print(f"qcinode: stopped {len(alive)} node(s)" if alive else f"qcinode: no node of the cluster in {args.state_dir.resolve()} was running", file=sys.stderr)
    return 0


def node_settings(argv: Sequence[str], *, pod_name: str | None = None) -> NodeSettings:
    """The settings ``qcinode node ARGV...`` runs a node with (what a pod runs), without running it.

    Args:
        argv: The arguments after ``qcinode`` (``["node", "--topology", ...]``).
        pod_name: For ``--name-from-ordinal``: the pod's name (default:
            ``QCINODE_POD_NAME``, else the hostname).

    Raises:
        ConfigError: A missing or impossible option, naming it.
    """
    args = _parser().parse_args(list(argv))
    if args.command != "node":
        raise ConfigError(f"node_settings: expected the node command, got {args.command!r}")
    return _node_settings(args, pod_name)


def _node_settings(args: argparse.Namespace, pod_name: str | None) -> NodeSettings:
    from .node.node import NodeSettings
    from .topology import load_topology

    if args.topology is None or (args.name is None and not args.name_from_ordinal):
        raise ConfigError("--topology and --name are required (or QCINODE_TOPOLOGY / QCINODE_NAME)")
    topology = load_topology(args.topology)
    name = args.name
    if args.name_from_ordinal:
        import socket

        from .cluster.k8s import node_for_pod

        name = node_for_pod(topology, pod_name or _env("POD_NAME") or socket.gethostname())
    peers: dict[str, str] = {}
    for item in args.peer:
        peer, sep, address = item.partition("=")
        if not sep or not peer or not address:
            raise ConfigError(f"--peer: expected NAME=HOST:PORT, got {item!r}")
        peers[peer] = address
    return NodeSettings(
        topology=topology,
        name=name,
        certs_dir=args.certs,
        listen=args.listen,
        peers=peers,
        peer_template=args.peer_template,
        data_dir=Path(str(args.data_dir).replace("{name}", name)) if args.data_dir else Path("qcinode-data") / name,
        storage_key_file=Path(str(args.storage_key_file).replace("{name}", name)) if args.storage_key_file else None,
        kme_listen=args.kme_listen,
        metrics_listen=args.metrics_listen,
        health_listen=args.health_listen,
        etsi004_listen=args.etsi004_listen,
        skip_listen=args.skip_listen,
        multipath_shares=args.multipath,
        seed=args.seed,
        protocol_runner="process",
    )


def _node(args: argparse.Namespace) -> int:
    from . import logs
    from .errors import StorageFailure
    from .node.node import run_node

    settings = _node_settings(args, None)
    logs.configure(args.log_level)
    try:
        asyncio.run(run_node(settings, port_file=args.port_file))
    except StorageFailure as exc:
        # One line naming the file or directory and the reason; at start-up
        # this comes before any port is bound (the stores open first).
        print(f"qcinode: node {settings.name}: {exc}", file=sys.stderr)
        return 1
    return 0


def preload_node() -> None:
    """Imports what a node process imports, for the zygote to fork nodes with it all loaded.

    The node's entry point and what it pulls in, then the modules a running
    node imports lazily on every start (found with ``python -X importtime``
    on the nodes of a running cluster): numpy's random, masked-array and
    FFT modules, the thread pool, the optional interfaces. Not numba: a node
    loads it only for large blocks, and it would add 80 MB to every node.
    """
    import concurrent.futures.thread  # noqa: F401
    import queue  # noqa: F401

    import numpy.fft  # noqa: F401
    import numpy.ma  # noqa: F401
    import numpy.random  # noqa: F401

    from . import logs  # noqa: F401
    from .node import interfaces, node  # noqa: F401
    from .topology import load_topology  # noqa: F401


def _zygote(args: argparse.Namespace) -> int:
    """The launcher's fork server; in each child it forks, the node it is asked for."""
    from .cluster.zygote import serve

    def preload() -> None:
        preload_node()
        if args.state_dir is not None:  # the nodes' topology, parsed once for all of them
            from .topology import preload_topology

            preload_topology(str(Path(args.state_dir) / "topology.yaml"))
            # Every node checks the others' certificates as their adverts arrive: once here, for all.
            from .pki import preverify_node_certificates

            preverify_node_certificates(Path(args.state_dir) / "certs")

    argv = serve(args.control_fd, preload)
    if argv is None:
        return 0  # the launcher has closed the control channel; the nodes run on
    from .node.proctitle import retitle

    # What `ps` shows: this node's command, not the zygote's; its name first (a long line is cut to the zygote's length).
    name = argv[argv.index("--name") + 1] if "--name" in argv[:-1] else ""
    retitle(["qcinode", *argv[:1], name, *argv[1:]])
    return main(argv)  # a forked child: exactly what `python -m qcinode node ...` runs


def _certs(args: argparse.Namespace) -> int:
    from .pki import cert_plan, make_certificates
    from .topology import load_topology

    topology = load_topology(args.topology)
    plan = cert_plan(topology)
    if args.dns_suffix:
        import dataclasses

        plan = dataclasses.replace(plan, extra_dns=tuple(args.dns_suffix))
    bundle = make_certificates(plan, args.out, force=args.force)
    print(f"qcinode: certificates and link keys for {len(plan.nodes)} nodes, {len(plan.saes)} SAEs, {len(plan.links)} links in {bundle.directory}")
    return 0


def _deploy(args: argparse.Namespace) -> int:
    from .cluster.k8s import render_overlay

    overlay = render_overlay(args.topology, args.out, namespace=args.namespace, image=args.image, cluster_domain=args.cluster_domain, base_dir=args.base)
    print(f"qcinode: kustomize overlay for {len(overlay.nodes)} nodes in {overlay.directory}; apply with `kubectl apply -k {overlay.directory}`")
    return 0


def _keys(args: argparse.Namespace) -> int:
    from .cluster.launcher import read_cluster, require_running
    from .kme.client import EtsiClient

    cluster = read_cluster(args.state_dir)
    state = args.state_dir
    # The slave may live in another network, started independently (its own state directory and CA).
    slave_state = args.to_state_dir or state
    slave_cluster = cluster if slave_state == state else read_cluster(slave_state)
    for role, sae, where in (("--from", args.master, cluster), ("--to", args.slave, slave_cluster)):
        if sae not in where["saes"]:
            raise ConfigError(f"{role}: unknown SAE {sae!r} (known: {', '.join(sorted(where['saes']))})")
    master, slave = cluster["saes"][args.master], slave_cluster["saes"][args.slave]
    require_running(state, (master["node"],) if slave_state != state else (master["node"], slave["node"]))
    if slave_state != state:
        require_running(slave_state, (slave["node"],))
    master_url = cluster["nodes"][master["node"]]["etsi014"]
    slave_url = slave_cluster["nodes"][slave["node"]]["etsi014"]
    master_client = EtsiClient(state / cluster["ca"], state / master["cert"], state / master["key"])
    slave_client = EtsiClient(slave_state / slave_cluster["ca"], slave_state / slave["cert"], slave_state / slave["key"])
    started = time.perf_counter()
    status, enc = _kme_call(master["node"], master_url, lambda: master_client.enc_keys(master_url, args.slave, number=args.number, size_bits=args.size))
    enc_s = time.perf_counter() - started
    if status != 200:
        raise QcinodeError(f"enc_keys at {master['node']} answered {status}: {_etsi_message(enc)}")
    key_ids = [k["key_ID"] for k in enc["keys"]]
    started = time.perf_counter()
    status, dec = _kme_call(slave["node"], slave_url, lambda: slave_client.dec_keys(slave_url, args.master, key_ids))
    dec_s = time.perf_counter() - started
    if status != 200:
        raise QcinodeError(f"dec_keys at {slave['node']} answered {status}: {_etsi_message(dec)}")
    got = {k["key_ID"]: k["key"] for k in dec["keys"]}
    rows = []
    for key in enc["keys"]:
        ext = key.get("key_ID_extension") or {}
        row = {"key_ID": key["key_ID"], "match": got.get(key["key_ID"]) == key["key"], "paths": ext.get("paths") or []}
        rows.append({**row, **({"key": key["key"]} if args.show_keys else {})})
    ok = all(r["match"] for r in rows) and len(got) == len(rows)
    if args.json:
        print(json.dumps({"master": args.master, "slave": args.slave, "enc_keys_s": enc_s, "dec_keys_s": dec_s, "keys": rows, "match": ok}, indent=2))
    else:
        for r in rows:
            path = " | ".join(" > ".join(p) for p in r["paths"]) or "local"
            print(f"{r['key_ID']}  {'match' if r['match'] else 'MISMATCH'}  path {path}" + (f"  {r['key']}" if args.show_keys else ""))
        print(f"{len(rows)} key(s) of {args.size} bits {args.master} -> {args.slave}: enc_keys {1000 * enc_s:.1f} ms, dec_keys {1000 * dec_s:.1f} ms")
    return 0 if ok else 1


def _kme_call(node: str, url: str, call: Any) -> Any:
    """Runs one ETSI 014 call; a KME that cannot be reached is a one-line QcinodeError."""
    try:
        return call()
    except OSError as exc:  # urllib's URLError, a refused or reset connection, a TLS failure
        reason = getattr(exc, "reason", None) or exc.strerror or exc
        raise QcinodeError(f"cannot reach the KME of node {node} at {url}: {reason}") from None


def _etsi_message(body: dict[str, Any]) -> str:
    """An ETSI 014 error body as one line: its message, then any details that add to it."""
    message = str(body.get("message") or "no message")
    details = [str(d) for d in body.get("details") or [] if str(d) and str(d) not in message]
    return "; ".join([message, *details])


def _running_link(state_dir: Path, link_id: str) -> tuple[dict[str, Any], Any]:
    """The cluster's description and its link ``link_id`` (ConfigError naming --link if unknown; NotRunning if stopped)."""
    from .cluster.launcher import read_cluster, require_running
    from .topology import load_topology

    read_cluster(state_dir)  # no cluster.json: say so before anything else
    try:
        link = load_topology(state_dir / "topology.yaml").link(link_id)
    except ConfigError as exc:
        raise ConfigError(f"--link: {exc}") from None
    return require_running(state_dir), link


def _admin_error(node: str, address: str, exc: TransportError) -> QcinodeError:
    """A refused or failed admin call as one line naming the node."""
    if exc.code in ("INVALID_ARGUMENT", "NOT_FOUND"):
        return ConfigError(exc.details)
    return QcinodeError(f"node {node} at {address} did not answer: {exc.details}")


def _fault(args: argparse.Namespace) -> int:
    from .cluster.admin import set_fault
    from .cluster.launcher import require_running

    cluster, link = _running_link(args.state_dir, args.link)
    ends = link.between
    if args.end is not None and args.end not in ends:
        raise ConfigError(f"--end: {args.end!r} is not an end of {args.link} (ends: {', '.join(ends)})")
    kind = "none" if args.off else args.kind
    require_running(args.state_dir, [args.end] if args.end else list(ends))
    for end in [args.end] if args.end else list(ends):
        address = cluster["nodes"][end]["grpc"]
        try:
            reply = set_fault(address, end, args.state_dir / "certs", args.link, kind, args.probability, args.delay_ms, args.channel)
        except TransportError as exc:
            raise _admin_error(end, address, exc) from None
        if reply["kind"] == "none":
            print(f"qcinode: no fault on {args.link} at {end}")
        else:
            channel = {"all": "post-processing and relay", "postprocessing": "post-processing"}.get(reply["channel"], reply["channel"])
            what = "partition" if reply["kind"] == "partition" else f"{reply['kind']} on {reply['probability']:.0%} of the {channel} messages"
            print(f"qcinode: {what} sent by {end} on {args.link}")
    return 0


def _eve(args: argparse.Namespace) -> int:
    from .cluster.admin import set_eavesdropper
    from .cluster.launcher import require_running

    if args.attack == "photon-number-splitting" and args.fraction != 1.0:
        raise ConfigError(f"--fraction: photon-number splitting acts on every pulse; leave --fraction at 1 (got {args.fraction:g})")
    cluster, link = _running_link(args.state_dir, args.link)
    alice = link.alice
    require_running(args.state_dir, [alice])
    address = cluster["nodes"][alice]["grpc"]
    try:
        reply = set_eavesdropper(address, alice, args.state_dir / "certs", args.link, "none" if args.off else args.attack, args.fraction)
    except TransportError as exc:
        raise _admin_error(alice, address, exc) from None
    if reply["attack"] == "none":
        print(f"qcinode: no eavesdropper on {args.link}")
    elif reply["attack"] == "photon-number-splitting":
        print(f"qcinode: photon-number splitting on every pulse of {args.link} (at {alice}, the transmitter)")
    else:
        print(f"qcinode: {reply['attack']} on {reply['fraction']:.0%} of the pulses of {args.link} (at {alice}, the transmitter)")
    return 0
