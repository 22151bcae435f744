"""The ``qcinode`` command line (DESIGN.md §2 fixes the command names)."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from . import __version__
from .errors import ConfigError, QcinodeError

DEFAULT_STATE_DIR = Path(".qcinode")


def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(f"QCINODE_{name}", default)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="qcinode", description="Emulated QKD network node and local cluster.")
    p.add_argument("--version", action="version", version=f"qcinode {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="start every node of a topology on loopback and show a live status table")
    up.add_argument("topology", nargs="?", type=Path, help="topology YAML (default: the built-in topology)")
    up.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR)
    up.add_argument("--detach", action="store_true", help="return once every link has produced key, leave the cluster running")
    up.add_argument("--speed", help="override emulation.speed (a number or 'max')")
    up.add_argument("--timeout", type=float, default=300.0, help="--detach: seconds to wait for key on every link")
    up.add_argument("--refresh", type=float, default=1.0, help="seconds between table refreshes")

    st = sub.add_parser("status", help="status of a detached cluster")
    st.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR)
    st.add_argument("--json", action="store_true", help="print one JSON document")
    st.add_argument("--digests", action="store_true", help=argparse.SUPPRESS)

    down = sub.add_parser("down", help="stop a detached cluster")
    down.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR)

    node = sub.add_parser("node", help="run one node in the foreground (what a pod runs)")
    node.add_argument("--topology", type=Path, default=_env("TOPOLOGY"))
    node.add_argument("--name", default=_env("NAME"))
    node.add_argument("--name-from-ordinal", action="store_true", help="StatefulSet pod: run the topology's N-th node, N = the pod name's ordinal suffix (QCINODE_POD_NAME, else the hostname)")
    node.add_argument("--certs", type=Path, default=_env("CERTS", "certs"), help="directory made by `qcinode certs`")
    node.add_argument("--listen", default=_env("LISTEN", "0.0.0.0:50051"), help="gRPC host:port")
    node.add_argument("--peer", action="append", default=[], metavar="NAME=HOST:PORT", help="a neighbour's gRPC address (repeatable)")
    node.add_argument("--peer-template", default=_env("PEER_TEMPLATE", "{name}:50051"), help="address of neighbours not given with --peer")
    node.add_argument("--data-dir", type=Path, default=_env("DATA_DIR"), help="link pools and SAE keys; {name} is replaced by the node name (default ./qcinode-data/NAME)")
    node.add_argument("--storage-key-file", type=Path, default=_env("STORAGE_KEY_FILE"), help="the key encrypting the data directory, kept outside it (created 0600 if absent); {name} is replaced by the node name (default: DATA_DIR/storage.key)")
    node.add_argument("--kme-listen", default=_env("KME_LISTEN", "0.0.0.0:8443"), help="ETSI GS QKD 014 HTTPS host:port")
    node.add_argument("--metrics-listen", default=_env("METRICS_LISTEN", "0.0.0.0:9464"), help="Prometheus /metrics HTTP host:port")
    node.add_argument("--health-listen", default=_env("HEALTH_LISTEN"), help="plaintext host:port serving only grpc.health.v1 (kubelet gRPC probes); default: none")
    node.add_argument("--multipath", type=int, default=None, help="override the topology's relay.paths")
    node.add_argument("--port-file", type=Path, default=None, help="write the bound gRPC port here once serving")
    node.add_argument("--seed", type=int, default=None, help=argparse.SUPPRESS)  # tests: deterministic noise AND key bits
    node.add_argument("--log-level", default=_env("LOG_LEVEL", "info"))

    keys = sub.add_parser("keys", help="act as two SAEs: enc_keys at the master's node, dec_keys at the slave's, and check the keys match")
    keys.add_argument("--from", dest="master", required=True, metavar="SAE", help="master SAE (calls enc_keys)")
    keys.add_argument("--to", dest="slave", required=True, metavar="SAE", help="slave SAE (calls dec_keys)")
    keys.add_argument("-n", "--number", type=int, default=1)
    keys.add_argument("--size", type=int, default=256, help="key size in bits")
    keys.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR)
    keys.add_argument("--show-keys", action="store_true", help="also print the keys (base64); off by default")
    keys.add_argument("--json", action="store_true")

    eve = sub.add_parser("eve", help="switch an eavesdropper on or off on a running link (needs the admin certificate)")
    eve.add_argument("--link", required=True, metavar="A-B", help="link ID as in `qcinode status`")
    group = eve.add_mutually_exclusive_group(required=True)
    group.add_argument("--attack", help="attack name, as in the topology's eavesdropper.attack")
    group.add_argument("--off", action="store_true", help="remove the eavesdropper")
    eve.add_argument("--fraction", type=float, default=1.0, help="share of pulses attacked (0-1)")
    eve.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR)

    fault = sub.add_parser(
        "fault",
        help="switch a classical-channel fault (flip, drop, delay, reorder, replay, partition) on or off on a running link (needs the admin certificate)",
    )
    fault.add_argument("--link", required=True, metavar="A-B", help="link ID as in `qcinode status`")
    group = fault.add_mutually_exclusive_group(required=True)
    group.add_argument("--kind", help="flip | drop | delay | reorder | replay | partition (as the topology's links[i].fault.kind)")
    group.add_argument("--off", action="store_true", help="remove the fault")
    fault.add_argument("--probability", type=float, default=1.0, help="share of outgoing messages affected (0-1); ignored by partition")
    fault.add_argument("--delay-ms", type=float, default=0.0, help="for delay: how late each affected message leaves")
    fault.add_argument("--channel", default="all", help="all | postprocessing | relay")
    fault.add_argument("--end", metavar="NODE", help="only at this end of the link (default: both ends)")
    fault.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR)

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
    k8s.add_argument("--image", default=None, help="container image, NAME[:TAG] or NAME@sha256:DIGEST (default qcinode:VERSION)")
    k8s.add_argument("--cluster-domain", default="cluster.local", help="the cluster's DNS domain, for certificate names")
    k8s.add_argument("--base", type=Path, default=None, help="kustomize base to copy (default: deploy/k8s/base of this source tree)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        handler = {"up": _up, "status": _status, "down": _down, "node": _node, "certs": _certs, "keys": _keys, "deploy": _deploy, "eve": _eve, "fault": _fault}[args.command]
        return handler(args)
    except ConfigError as exc:
        print(f"qcinode: {exc}", file=sys.stderr)
        return 2
    except QcinodeError as exc:
        print(f"qcinode: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


def _topology_path(path: Path | None) -> Path:
    from .topology import builtin_topology_path

    return path if path is not None else builtin_topology_path()


def _up(args: argparse.Namespace) -> int:
    from .cluster.launcher import Cluster, all_links_have_key, cluster_status, render_table

    cluster = Cluster(_topology_path(args.topology), args.state_dir, speed=args.speed)
    cluster.prepare()
    cluster.start()
    try:
        cluster.wait_healthy()
        print(f"qcinode: {len(cluster.processes)} nodes of topology {cluster.topology.name!r} running; state in {cluster.state_dir}", file=sys.stderr)
        if args.detach:
            deadline = time.monotonic() + args.timeout
            while True:
                status = cluster_status(cluster.state_dir)
                if all_links_have_key(status, cluster.topology):
                    print(render_table(status))
                    print(f"qcinode: every link has key; stop with `qcinode down --state-dir {args.state_dir}`", file=sys.stderr)
                    return 0
                if time.monotonic() > deadline:
                    print(render_table(status))
                    raise ConfigError(f"--timeout: not every link produced key within {args.timeout:.0f} s")
                time.sleep(1.0)
        tty = sys.stdout.isatty()
        while True:
            table = render_table(cluster_status(cluster.state_dir))
            print(("\x1b[H\x1b[2J" if tty else "") + table + ("\n(Ctrl-C stops the cluster)" if tty else "\n"), flush=True)
            time.sleep(args.refresh)
    except KeyboardInterrupt:
        print("\nqcinode: stopping", file=sys.stderr)
        cluster.stop()
        return 0
    except BaseException:
        cluster.stop()
        raise


def _status(args: argparse.Namespace) -> int:
    from .cluster.launcher import cluster_status, render_table

    status = cluster_status(args.state_dir, digests=args.digests)
    print(json.dumps(status, indent=2) if args.json else render_table(status))
    return 0


def _down(args: argparse.Namespace) -> int:
    from .cluster.launcher import pid_alive, read_cluster, stop_processes

    cluster = read_cluster(args.state_dir)
    pids = {name: int(info["pid"]) for name, info in cluster["nodes"].items()}
    alive = {name: pid for name, pid in pids.items() if pid_alive(pid)}
    stop_processes(alive)
    print(f"qcinode: stopped {len(alive)} node(s)", file=sys.stderr)
    return 0


def _node(args: argparse.Namespace) -> int:
    from . import logs
    from .keys.keystore import StorageFailure
    from .node.node import NodeSettings, run_node
    from .topology import load_topology

    if args.topology is None or (args.name is None and not args.name_from_ordinal):
        raise ConfigError("--topology and --name are required (or QCINODE_TOPOLOGY / QCINODE_NAME)")
    topology = load_topology(args.topology)
    if args.name_from_ordinal:
        import socket

        from .cluster.k8s import node_for_pod

        args.name = node_for_pod(topology, _env("POD_NAME") or socket.gethostname())
    logs.configure(args.log_level)
    peers: dict[str, str] = {}
    for item in args.peer:
        name, sep, address = item.partition("=")
        if not sep or not name or not address:
            raise ConfigError(f"--peer: expected NAME=HOST:PORT, got {item!r}")
        peers[name] = address
    settings = NodeSettings(
        topology=topology,
        name=args.name,
        certs_dir=args.certs,
        listen=args.listen,
        peers=peers,
        peer_template=args.peer_template,
        data_dir=Path(str(args.data_dir).replace("{name}", args.name)) if args.data_dir else Path("qcinode-data") / args.name,
        storage_key_file=Path(str(args.storage_key_file).replace("{name}", args.name)) if args.storage_key_file else None,
        kme_listen=args.kme_listen,
        metrics_listen=args.metrics_listen,
        health_listen=args.health_listen,
        multipath_shares=args.multipath,
        seed=args.seed,
    )
    try:
        asyncio.run(run_node(settings, port_file=args.port_file))
    except StorageFailure as exc:
        # One line naming the file or directory and the reason; at start-up
        # this comes before any port is bound (the stores open first).
        print(f"qcinode: node {args.name}: {exc}", file=sys.stderr)
        return 1
    return 0


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

    overlay = render_overlay(
        args.topology, args.out, namespace=args.namespace, image=args.image, cluster_domain=args.cluster_domain, base_dir=args.base
    )
    print(f"qcinode: kustomize overlay for {len(overlay.nodes)} nodes in {overlay.directory}; apply with `kubectl apply -k {overlay.directory}`")
    return 0


def _keys(args: argparse.Namespace) -> int:
    from .cluster.launcher import read_cluster
    from .kme.client import EtsiClient

    cluster = read_cluster(args.state_dir)
    state = args.state_dir
    saes = cluster["saes"]
    for role, sae in (("--from", args.master), ("--to", args.slave)):
        if sae not in saes:
            raise ConfigError(f"{role}: unknown SAE {sae!r} (known: {', '.join(sorted(saes))})")
    master, slave = saes[args.master], saes[args.slave]
    master_url = cluster["nodes"][master["node"]]["etsi014"]
    slave_url = cluster["nodes"][slave["node"]]["etsi014"]
    ca = state / cluster["ca"]
    master_client = EtsiClient(ca, state / master["cert"], state / master["key"])
    slave_client = EtsiClient(ca, state / slave["cert"], state / slave["key"])
    started = time.perf_counter()
    status, enc = master_client.enc_keys(master_url, args.slave, number=args.number, size_bits=args.size)
    enc_s = time.perf_counter() - started
    if status != 200:
        raise QcinodeError(f"enc_keys at {master['node']} answered {status}: {enc.get('message')} {enc.get('details', '')}")
    key_ids = [k["key_ID"] for k in enc["keys"]]
    started = time.perf_counter()
    status, dec = slave_client.dec_keys(slave_url, args.master, key_ids)
    dec_s = time.perf_counter() - started
    if status != 200:
        raise QcinodeError(f"dec_keys at {slave['node']} answered {status}: {dec.get('message')} {dec.get('details', '')}")
    got = {k["key_ID"]: k["key"] for k in dec["keys"]}
    rows = []
    for key in enc["keys"]:
        ext = key.get("key_ID_extension") or {}
        rows.append({"key_ID": key["key_ID"], "match": got.get(key["key_ID"]) == key["key"], "paths": ext.get("paths") or [], **({"key": key["key"]} if args.show_keys else {})})
    ok = all(r["match"] for r in rows) and len(got) == len(rows)
    if args.json:
        print(json.dumps({"master": args.master, "slave": args.slave, "enc_keys_s": enc_s, "dec_keys_s": dec_s, "keys": rows, "match": ok}, indent=2))
    else:
        for r in rows:
            path = " | ".join(" > ".join(p) for p in r["paths"]) or "local"
            print(f"{r['key_ID']}  {'match' if r['match'] else 'MISMATCH'}  path {path}" + (f"  {r['key']}" if args.show_keys else ""))
        print(f"{len(rows)} key(s) of {args.size} bits {args.master} -> {args.slave}: enc_keys {1000 * enc_s:.1f} ms, dec_keys {1000 * dec_s:.1f} ms")
    return 0 if ok else 1


def _running_link(state_dir: Path, link_id: str) -> tuple[dict[str, Any], Any]:
    """The running cluster's description and its link ``link_id`` (ConfigError naming --link if unknown)."""
    from .cluster.launcher import read_cluster
    from .topology import load_topology

    cluster = read_cluster(state_dir)
    try:
        return cluster, load_topology(state_dir / "topology.yaml").link(link_id)
    except ConfigError as exc:
        raise ConfigError(f"--link: {exc}") from None


def _fault(args: argparse.Namespace) -> int:
    import grpc

    from .cluster.admin import set_fault

    cluster, link = _running_link(args.state_dir, args.link)
    ends = link.between
    if args.end is not None and args.end not in ends:
        raise ConfigError(f"--end: {args.end!r} is not an end of {args.link} (ends: {', '.join(ends)})")
    kind = "none" if args.off else args.kind
    for end in [args.end] if args.end else list(ends):
        try:
            reply = set_fault(
                cluster["nodes"][end]["grpc"], end, args.state_dir / "certs", args.link, kind, args.probability, args.delay_ms, args.channel
            )
        except grpc.RpcError as exc:
            raise ConfigError(f"{end}: {exc.details()}") from None
        if reply["kind"] == "none":
            print(f"qcinode: no fault on {args.link} at {end}")
        else:
            what = "partition" if reply["kind"] == "partition" else f"{reply['kind']} on {reply['probability']:.0%} of the {reply['channel']} messages"
            print(f"qcinode: {what} sent by {end} on {args.link}")
    return 0


def _eve(args: argparse.Namespace) -> int:
    import grpc

    from .cluster.admin import set_eavesdropper

    cluster, link = _running_link(args.state_dir, args.link)
    alice = link.alice
    try:
        reply = set_eavesdropper(
            cluster["nodes"][alice]["grpc"], alice, args.state_dir / "certs", args.link, "none" if args.off else args.attack, args.fraction
        )
    except grpc.RpcError as exc:
        raise ConfigError(f"{exc.details()}") from None
    if reply["attack"] == "none":
        print(f"qcinode: no eavesdropper on {args.link}")
    else:
        print(f"qcinode: {reply['attack']} on {reply['fraction']:.0%} of the pulses of {args.link} (at {alice}, the transmitter)")
    return 0
