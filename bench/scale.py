"""Many node processes on one machine: start-up, routing convergence, memory, CPU, adverts, a long relay path.

What is measured
----------------
A mesh of ``--nodes`` nodes (default 100) as a grid of about sqrt(N) x sqrt(N)
nodes, each linked to its right and lower neighbour (10 x 10: 180 links,
18 hops between opposite corners), or the topology given with
``--topology``. Every link: ``--length-km`` (10) of fibre, a
``--rate-hz`` (100 kHz) source, ``postprocessing.block_bits`` ``--block-bits``
(50,000), at ``emulation.speed`` ``--speed`` (1.0, real time). At 1 MHz a
link end costs about 1.3 % of a core, so the 360 link ends of a 10 x 10 grid
would need two and a half cores; at 100 kHz about 0.45 % (the fixed cost of
one frame a second), which two cores carry. Two SAEs sit
at the two ends of the longest shortest path (the grid's opposite corners).

The nodes are started by the project's launcher
(:class:`qcinode.cluster.launcher.Cluster`, what ``qcinode up`` runs) in a
temporary state directory and always stopped at the end (also on Ctrl-C).
Printed:

1. **Start-up**: seconds to write the state directory (certificates), to
   launch the nodes, until each node serves (its ``--port-file`` written) and
   until every node answers its gRPC health check (the launcher's
   ``wait_healthy``, what ``qcinode up`` waits for); how the launcher started
   the nodes (``QCINODE_LAUNCH``: forked from its zygote, or exec'd) and the
   CPU seconds each node had used by then (robust to the machine's load,
   unlike the wall-clock figure), and the zygote's.
2. **Routing converged**: seconds from the start until every node's
   link-state database holds every node (``qcinode_routing_known_nodes`` on
   each node's ``/metrics``) and every link as up at both ends
   (``qcinode_routing_links_up``). Every node is scraped at once (``SCRAPERS``
   threads) about once a second, so the figure is late by at most a round
   of scrapes, not by a serial pass over a hundred busy nodes.
3. **Per node** over a ``--window`` (60 s) once routing converged: resident
   memory (RSS from ``/proc/PID/status``; PSS from
   ``/proc/PID/smaps_rollup``: shared library pages divided among the
   processes that map them, what the machine really spends per node; USS,
   the pages of the process alone), threads, CPU
   (% of one core, from ``/proc/PID/stat``), and routing advert messages
   per second (``qcinode_routing_adverts_total{kind="sent"}``: adverts sent,
   and ``kind="calls"``: the Advertise and AdvertiseMany calls that carried
   them), as min / median / max over the nodes, and originations by reason;
   the machine's load and free memory.
4. **ETSI 014 across the longest path**: once ``enc_keys`` stops answering
   503 (every hop has key), ``--requests`` round trips of one 256-bit key:
   ``enc_keys`` at the master's node, ``dec_keys`` at the slave's; whether
   the two copies match, the hop count of the path the key took, latency
   p50 / p99.

Nothing is asserted. Run it once, not in a loop: a 100-node run takes a few
minutes of both cores.

How to run
----------
::

    python bench/scale.py                       # 100 nodes, grid 10 x 10
    python bench/scale.py --nodes 30 --window 30
    python bench/scale.py --topology my.yaml --master-node a --slave-node b
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import math
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml
from link import process_cpu_seconds, protocol_process

from qcinode.cluster.launcher import Cluster
from qcinode.cluster.zygote import launch_mode
from qcinode.core.routing import ORIGINATION_REASONS
from qcinode.errors import ConfigError
from qcinode.kme.client import EtsiClient
from qcinode.topology import load_topology

#: Nodes scraped or health-checked at the same time (the bench waits on their answers, it computes little).
SCRAPERS = 16
MASTER_SAE, SLAVE_SAE = "sae-master", "sae-slave"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- topology


def grid_topology(n: int, *, rate_hz: float, block_bits: int, length_km: float, speed: float | str) -> tuple[dict[str, Any], str, str]:
    """A grid mesh of ``n`` nodes; returns it and the two opposite corners."""
    cols = max(2, math.ceil(math.sqrt(n)))
    names = [f"g{i:03d}" for i in range(n)]
    links = []
    for i in range(n):
        r, c = divmod(i, cols)
        if c + 1 < cols and i + 1 < n:
            links.append({"between": [names[i], names[i + 1]], "length_km": length_km})
        if i + cols < n:
            links.append({"between": [names[i], names[i + cols]], "length_km": length_km})
    master, slave = names[0], names[-1]
    nodes = [{"name": name, **({"saes": [MASTER_SAE]} if name == master else {"saes": [SLAVE_SAE]} if name == slave else {})} for name in names]
    mapping = {
        "name": f"bench-scale-{n}",
        "defaults": {"source": {"rate_hz": float(rate_hz)}, "postprocessing": {"block_bits": block_bits}},
        "emulation": {"speed": speed},
        "nodes": nodes,
        "links": links,
    }
    return mapping, master, slave


def hop_distance(mapping: dict[str, Any], source: str, destination: str) -> int:
    """Hops of the shortest path (breadth first)."""
    graph: dict[str, set[str]] = collections.defaultdict(set)
    for link in mapping["links"]:
        a, b = link["between"]
        graph[a].add(b)
        graph[b].add(a)
    seen = {source: 0}
    queue = collections.deque([source])
    while queue:
        u = queue.popleft()
        for v in graph[u]:
            if v not in seen:
                seen[v] = seen[u] + 1
                queue.append(v)
    return seen.get(destination, -1)


# --------------------------------------------------------------------------- per-process figures


def rss_pss_uss_mb(pid: int) -> tuple[float, float, float]:
    """Resident memory (RSS), its proportional share (PSS) and the part no other process maps (USS), in MB."""
    rss = pss = uss = math.nan
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) / 1024
        private = 0
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                pss = int(line.split()[1]) / 1024
            if line.startswith(("Private_Clean:", "Private_Dirty:")):
                private += int(line.split()[1])
        uss = private / 1024
    except OSError:
        pass
    return rss, pss, uss


def with_protocol(pid: int, protocol: int | None, figure: Callable[[int], float]) -> float:
    """``figure`` of a node process plus that of its protocol process (if any)."""
    return figure(pid) + (figure(protocol) if protocol is not None else 0.0)


def threads(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/task"))
    except OSError:
        return 0


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one process (its threads included); NaN for a process gone meanwhile."""
    try:
        return process_cpu_seconds(pid)
    except OSError:
        return math.nan


_METRIC = re.compile(
    r'^(qcinode_routing_known_nodes|qcinode_routing_links_up|qcinode_routing_adverts_total|qcinode_routing_originations_total)'
    r'(\{(?:kind|reason)="(\w+)"\})? ([0-9.e+-]+)$',
    re.M,
)


def scrape(port: int) -> dict[str, float]:
    """The routing figures of one node's /metrics (empty if it does not answer)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            text = response.read().decode()
    except OSError:
        return {}
    out = {}
    for name, _, kind, value in _METRIC.findall(text):
        out[f"{name}:{kind}" if kind else name] = float(value)
    return out


def scrape_all(ports: dict[str, int]) -> dict[str, tuple[float, dict[str, float]]]:
    """:func:`scrape` of every node at once (threads: one slow node does not delay the others' figures); each with when it was read."""

    def one(port: int) -> tuple[float, dict[str, float]]:
        figures = scrape(port)
        return time.monotonic(), figures

    with concurrent.futures.ThreadPoolExecutor(SCRAPERS) as pool:
        return dict(zip(ports, pool.map(one, ports.values())))


def spread(values: Sequence[float], fmt: str = "{:.1f}") -> str:
    finite = [v for v in values if not math.isnan(v)]
    if not finite:
        return "n/a"
    return " / ".join(fmt.format(x) for x in (min(finite), statistics.median(finite), max(finite)))


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q / 100 * len(ordered))) - 1]


def mem_available_mb() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 1024
    return math.nan


# --------------------------------------------------------------------------- the run


def run(args: argparse.Namespace) -> int:
    work = Path(tempfile.mkdtemp(prefix="qcinode-bench-scale-"))
    cluster: Cluster | None = None
    try:
        if args.topology:
            mapping = yaml.safe_load(Path(args.topology).read_text())
            master_node, slave_node = args.master_node, args.slave_node
            if not master_node or not slave_node:
                log("--topology needs --master-node and --slave-node")
                return 2
            for node in mapping["nodes"]:
                if node["name"] == master_node:
                    node.setdefault("saes", []).append(MASTER_SAE)
                if node["name"] == slave_node:
                    node.setdefault("saes", []).append(SLAVE_SAE)
        else:
            mapping, master_node, slave_node = grid_topology(
                args.nodes, rate_hz=args.rate_hz, block_bits=args.block_bits, length_km=args.length_km, speed=args.speed
            )
        topology_file = work / "topology-source.yaml"
        topology_file.write_text(yaml.safe_dump(mapping, sort_keys=False))
        topology = load_topology(topology_file)
        n_nodes, n_links = len(topology.nodes), len(topology.links)
        hops = hop_distance(mapping, master_node, slave_node)
        print(
            f"qcinode scale bench: {os.cpu_count()} CPUs, load avg {os.getloadavg()[0]:.2f}, {mem_available_mb():.0f} MB available; "
            f"{n_nodes} nodes, {n_links} links, {master_node} -> {slave_node} {hops} hops; "
            f"rate_hz {args.rate_hz:.3g}, block_bits {args.block_bits}, speed {args.speed}; launch {launch_mode()}"
        )
        t0 = time.monotonic()
        cluster = Cluster(topology_file, work / "state")
        cluster.prepare()
        t_prepared = time.monotonic()
        log(f"state directory and certificates in {t_prepared - t0:.1f} s; starting {n_nodes} nodes")
        wall_launch = time.time()
        cluster.start()
        t_launched = time.monotonic()
        try:
            # The launcher's own wait (qcinode up's): each node asked once its port file says it serves.
            cluster.wait_healthy(timeout_s=args.start_timeout)
        except ConfigError as exc:
            print(f"  NOT HEALTHY: {exc}")
        t_healthy = time.monotonic()
        start_cpu = [with_protocol(proc.pid, protocol_process(proc.pid), cpu_seconds) for proc in cluster.processes.values()]
        zygote_cpu = cpu_seconds(cluster.zygote.pid) if cluster.zygote is not None else math.nan
        serving = [cluster.port_file(name).stat().st_mtime - wall_launch for name in cluster.processes if cluster.port_file(name).exists()]
        print(
            f"1. start-up: certificates {t_prepared - t0:.1f} s; {len(cluster.processes)} nodes launched in {t_launched - t_prepared:.1f} s; "
            f"every node healthy {t_healthy - t_prepared:.1f} s after the launch"
        )
        print(f"   each node serving (its port file written) {spread(serving)} s after the launch")
        print(
            f"   CPU s per node until then {spread(start_cpu, '{:.2f}')} (sum {sum(c for c in start_cpu if not math.isnan(c)):.0f} CPU-s)"
            + (f"; the zygote {zygote_cpu:.2f} CPU-s" if not math.isnan(zygote_cpu) else "")
        )

        # 2. routing
        converged_at = math.nan
        started_figures: dict[str, tuple[float, dict[str, float]]] | None = None
        # At least a minute after the last node is up: a slow start must not leave routing unmeasured.
        deadline = max(t_prepared + args.converge_timeout, t_healthy + 60.0)
        while time.monotonic() < deadline:
            scraped = scrape_all(cluster.metrics_ports)
            known = [figures.get("qcinode_routing_known_nodes", 0.0) for _, figures in scraped.values()]
            links_up = [figures.get("qcinode_routing_links_up", 0.0) for _, figures in scraped.values()]
            started_figures = scraped
            if all(k >= n_nodes for k in known) and all(u >= n_links for u in links_up):
                converged_at = max(at for at, _ in scraped.values())  # the last node read: an upper bound
                break
            done = sum(k >= n_nodes and u >= n_links for k, u in zip(known, links_up))
            log(
                f"routing: {done}/{n_nodes} nodes know every node and every link up both ways (least {min(known):.0f} nodes, "
                f"{min(links_up):.0f} links) at {time.monotonic() - t_prepared:.0f} s"
            )
            time.sleep(1.0)
        if math.isnan(converged_at):
            print(f"2. routing: NOT converged within {deadline - t_prepared:.0f} s of the launch")
        else:
            print(f"2. routing converged {converged_at - t_prepared:.1f} s after the launch ({converged_at - t_healthy:.1f} s after every node was healthy)")

        # 3. per node over a window
        pids = {name: proc.pid for name, proc in cluster.processes.items()}
        # Each node computes its links' protocol steps in a child process of its own: counted with it.
        protocols = {name: protocol_process(pid) for name, pid in pids.items()}
        log(f"measuring every node for {args.window:g} s")
        # Each figure is timed where it is read: scraping 100 nodes of a busy machine takes a while.
        cpu0 = {name: (time.monotonic(), with_protocol(pid, protocols[name], cpu_seconds)) for name, pid in pids.items()}
        proto0 = {name: cpu_seconds(child) if child is not None else math.nan for name, child in protocols.items()}
        adverts0 = scrape_all(cluster.metrics_ports)
        w0 = time.monotonic()
        time.sleep(args.window)
        cpu1 = {name: (time.monotonic(), with_protocol(pid, protocols[name], cpu_seconds)) for name, pid in pids.items()}
        proto1 = {name: cpu_seconds(child) if child is not None else math.nan for name, child in protocols.items()}
        adverts1 = scrape_all(cluster.metrics_ports)
        w1 = time.monotonic()
        memory = {name: rss_pss_uss_mb(pid) for name, pid in pids.items()}
        nan3 = (math.nan, math.nan, math.nan)
        proto_memory = {name: rss_pss_uss_mb(child) if child is not None else nan3 for name, child in protocols.items()}
        span = w1 - w0
        cpu_pct = [100 * (cpu1[n][1] - cpu0[n][1]) / (cpu1[n][0] - cpu0[n][0]) for n in pids]
        proto_pct = [100 * (proto1[n] - proto0[n]) / (cpu1[n][0] - cpu0[n][0]) for n in pids]

        def per_second(kind: str, family: str = "qcinode_routing_adverts_total") -> list[float]:
            key = f"{family}:{kind}"
            return [(adverts1[n][1].get(key, math.nan) - adverts0[n][1].get(key, math.nan)) / (adverts1[n][0] - adverts0[n][0]) for n in pids]

        advert_rate, received_rate, originated_rate = per_second("sent"), per_second("received"), per_second("originated")
        call_rate = per_second("calls")
        exchange_rate = per_second("exchanges")
        print(f"3. per node over {span:.0f} s (min / median / max over {len(pids)} nodes):")
        print(f"   RSS MB        {spread([m[0] for m in memory.values()])}")
        print(f"   PSS MB        {spread([m[1] for m in memory.values()])}   (shared pages divided among the processes)")
        print(f"   USS MB        {spread([m[2] for m in memory.values()])}   (pages of this process alone: what stopping it frees)")
        print(f"   threads       {spread([float(threads(pid)) for pid in pids.values()], '{:.0f}')}")
        found = sum(child is not None for child in protocols.values())
        print(f"   protocol process (each node's child that computes its links' steps; {found} of {len(pids)} nodes have one):")
        print(f"     RSS MB      {spread([m[0] for m in proto_memory.values()])}")
        print(f"     PSS MB      {spread([m[1] for m in proto_memory.values()])}")
        print(f"     USS MB      {spread([m[2] for m in proto_memory.values()])}")
        both = [m[1] + p[1] for m, p in zip(memory.values(), proto_memory.values())]
        print(f"   PSS MB of node + protocol process {spread(both)}   (sum {sum(b for b in both if not math.isnan(b)):.0f} MB)")
        print(f"   CPU % of core {spread(cpu_pct)}   (sum {sum(c for c in cpu_pct if not math.isnan(c)):.0f} %; node + protocol process)")
        print(f"     of which the protocol process {spread(proto_pct)}")
        print(
            f"   adverts sent/s {spread(advert_rate, '{:.2f}')}   received/s {spread(received_rate, '{:.2f}')}   "
            f"Advertise(Many) calls made/s {spread(call_rate, '{:.2f}')}"
        )
        print(f"   adverts originated/s {spread(originated_rate, '{:.3f}')}   database exchanges/s {spread(exchange_rate, '{:.3f}')}")
        by_reason = {
            reason: [r for r in per_second(reason, "qcinode_routing_originations_total") if not math.isnan(r)]
            for reason in ORIGINATION_REASONS
        }
        print(
            "   originations/s per node by reason (mean): "
            + ", ".join(f"{reason} {statistics.fmean(rates) if rates else math.nan:.4f}" for reason, rates in by_reason.items())
        )
        if started_figures is not None:
            counts = collections.Counter[str]()
            for _, figures in started_figures.values():
                for reason in ORIGINATION_REASONS:
                    counts[reason] += int(figures.get(f"qcinode_routing_originations_total:{reason}", 0))
            print(f"   originations in the whole network until routing converged: {dict(counts)}")
            sums = {
                kind: sum(figures.get(f"qcinode_routing_adverts_total:{kind}", 0.0) for _, figures in started_figures.values())
                for kind in ("sent", "calls", "new", "exchanges")
            }
            print("   until then: " + ", ".join(f"{kind} {value:.0f}" for kind, value in sums.items()))
        total_sent = sum(r for r in advert_rate if not math.isnan(r))
        total_calls = sum(r for r in call_rate if not math.isnan(r))
        print(
            f"   adverts sent in the whole network: {total_sent:.1f}/s ({total_sent / max(1, n_nodes):.2f} per node) "
            f"in {total_calls:.1f} calls/s"
        )
        print(f"   machine: load avg {os.getloadavg()[0]:.1f}, {mem_available_mb():.0f} MB available")

        # 4. ETSI 014 across the longest path
        state = cluster.state_dir
        client_m = EtsiClient(state / "certs/ca.pem", state / f"certs/saes/{MASTER_SAE}.pem", state / f"certs/saes/{MASTER_SAE}.key")
        client_s = EtsiClient(state / "certs/ca.pem", state / f"certs/saes/{SLAVE_SAE}.pem", state / f"certs/saes/{SLAVE_SAE}.key")
        url_m = f"https://127.0.0.1:{cluster.kme_ports[master_node]}"
        url_s = f"https://127.0.0.1:{cluster.kme_ports[slave_node]}"
        deadline = time.monotonic() + args.key_timeout
        first_key = math.nan
        latencies: list[float] = []
        matched = mismatched = refused = 0
        path_hops: collections.Counter[int] = collections.Counter()
        other: collections.Counter[str] = collections.Counter()
        while time.monotonic() < deadline and matched + mismatched < args.requests:
            t = time.perf_counter()
            try:
                status, enc = client_m.enc_keys(url_m, SLAVE_SAE, number=1, size_bits=256)
            except OSError as exc:
                other[f"enc {type(exc).__name__}"] += 1
                time.sleep(1.0)
                continue
            if status != 200:
                refused += status == 503
                if status != 503:
                    other[f"enc {status}"] += 1
                time.sleep(1.0)
                continue
            ids = [k["key_ID"] for k in enc["keys"]]
            try:
                dstatus, dec = client_s.dec_keys(url_s, MASTER_SAE, ids)
            except OSError as exc:
                other[f"dec {type(exc).__name__}"] += 1
                continue
            elapsed = time.perf_counter() - t
            if math.isnan(first_key):
                first_key = time.monotonic()
            if dstatus != 200:
                other[f"dec {dstatus}"] += 1
                continue
            latencies.append(elapsed)
            if [k["key"] for k in enc["keys"]] == [k["key"] for k in dec["keys"]]:
                matched += 1
            else:
                mismatched += 1
            for k in enc["keys"]:
                for path in (k.get("key_ID_extension") or {}).get("paths") or []:
                    path_hops[len(path) - 1] += 1
        print(f"4. ETSI 014 {MASTER_SAE}@{master_node} -> {SLAVE_SAE}@{slave_node} (shortest path {hops} hops):")
        if math.isnan(first_key):
            print(f"   NO KEY within {args.key_timeout:g} s of the measurement ({refused} answers 503: some hop had no key yet)")
        else:
            print(f"   first key {first_key - t_prepared:.0f} s after the launch ({refused} answers 503 before)")
            print(
                f"   {matched + mismatched} round trips: {matched} keys match at both ends, {mismatched} DO NOT; "
                f"path hops {dict(path_hops)}; enc+dec p50 {1e3 * percentile(latencies, 50):.0f} ms, p99 {1e3 * percentile(latencies, 99):.0f} ms"
            )
        if other:
            print(f"   other answers: {dict(other)}")
        exits = {name: proc.poll() for name, proc in cluster.processes.items() if proc.poll() is not None}
        if exits:
            print(f"   NODES THAT EXITED: {exits}")
        return 0
    finally:
        if cluster is not None:
            log("stopping the cluster")
            cluster.stop()
            alive = [name for name, proc in cluster.processes.items() if proc.poll() is None]
            if alive:
                print(f"  still running after stop: {alive}")
        if args.keep:
            log(f"state kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nodes", type=int, default=100, help="nodes of the generated grid mesh")
    p.add_argument("--topology", help="a topology file instead of the generated mesh (with --master-node, --slave-node)")
    p.add_argument("--master-node", help="with --topology: the node of the master SAE")
    p.add_argument("--slave-node", help="with --topology: the node of the slave SAE")
    p.add_argument("--rate-hz", type=float, default=1e5, help="source.rate_hz of every link")
    p.add_argument("--block-bits", type=int, default=50_000, help="postprocessing.block_bits of every link")
    p.add_argument("--length-km", type=float, default=10.0, help="fibre length of every link")
    p.add_argument("--speed", default=1.0, type=lambda s: s if s == "max" else float(s), help="emulation.speed (a number or max)")
    p.add_argument("--window", type=float, default=60.0, help="seconds over which CPU and adverts are measured")
    p.add_argument("--requests", type=int, default=10, help="ETSI 014 round trips across the longest path")
    p.add_argument("--start-timeout", type=float, default=600.0, help="seconds to wait for every node to be healthy")
    p.add_argument("--converge-timeout", type=float, default=300.0, help="seconds (from the launch) to wait for routing")
    p.add_argument("--key-timeout", type=float, default=600.0, help="seconds to wait for a key across the longest path")
    p.add_argument("--keep", action="store_true", help="keep the state directory (logs)")
    args = p.parse_args(argv)
    started = time.monotonic()
    try:
        code = run(args)
    except KeyboardInterrupt:
        log("interrupted; the cluster was stopped")
        return 130
    print(f"total wall time {time.monotonic() - started:.0f} s")
    return code


if __name__ == "__main__":
    sys.exit(main())
