"""The relay path's own cost: a key over 1..N hops with every node in one process and the links idle.

What is measured
----------------
``bench/relay.py`` measures what an application sees from real node
processes whose links run flat out, where most of a request's time is spent
waiting for a CPU. This bench measures the floor under it: what relaying
costs when nothing else runs.

A chain ``n0 - n1 - ... - nN`` (10 km links, 1 GHz sources, 100,000-bit
blocks, ``emulation: {speed: max}``) runs as real :class:`~qcinode.node.node.Node`
objects on one event loop, with real gRPC over mutual TLS between them and
their stores on disk (each node's own storage and protocol threads: in-process
nodes step their links in a thread, not a process). The
links first make key until n0 can send ``--requests`` keys to the far end;
then a 60 s delay fault on every link's post-processing messages (with a
stage timeout longer than that) holds the links: their sessions stay up, so
routing keeps every path, but they compute nothing more. Then, for each hop
count, ``--requests`` sequential requests of ``--number`` 256-bit keys go
from n0's SAE to the SAE at that distance through
:meth:`~qcinode.node.network.NetworkService.deliver` (what the ETSI 014
``enc_keys`` handler calls: path search, pads, one-time MACs, every hop's
ledger save, the key stored at the destination before the answer).

Printed per hop count: the wall time of a request (p50 / p90 / p99 / max,
milliseconds) and the CPU time of the whole process per request (all the
nodes' threads: the relay's CPU summed over every hop). There is no HTTPS
client and no ``dec_keys``: ``bench/relay.py`` adds those.

How to run
----------
::

    python bench/relay_floor.py                 # 5 hops, 200 requests of 1 key per hop count
    python bench/relay_floor.py --number 16     # 16 keys per request

Progress goes to stderr, the table to stdout. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import tempfile
import time
from pathlib import Path

import yaml
from relay import WARMUP_REQUESTS, chain_topology, log, percentile  # bench/relay.py, beside this file

from qcinode import logs
from qcinode.kme.handlers import EncRequest
from qcinode.node.node import Node, NodeSettings
from qcinode.pki import cert_plan, make_certificates
from qcinode.topology import FaultConfig, load_topology

#: Longer than the hold fault's delay: a held link waits for its peer without giving up the session.
HELD_STAGE_TIMEOUT_S = 600.0
HOLD = FaultConfig(kind="delay", probability=1.0, delay_ms=60_000, channel="postprocessing")
BLOCK_BITS = 100_000


async def run(args: argparse.Namespace, work: Path) -> list[tuple[int, list[float], float]]:
    names = [f"n{i}" for i in range(args.hops + 1)]
    mapping = chain_topology("relay-floor", names, {n: [f"{n}-app"] for n in names}, speed="max", rate_hz=1e9)
    mapping["defaults"]["postprocessing"]["block_bits"] = BLOCK_BITS
    (work / "topology.yaml").write_text(yaml.safe_dump(mapping, sort_keys=False))
    topology = load_topology(work / "topology.yaml")
    make_certificates(cert_plan(topology), work / "certs", bootstrap_key_bytes=8192)
    peers: dict[str, dict[str, str]] = {n: {} for n in names}
    nodes: dict[str, Node] = {}
    try:
        for name in reversed(names):
            node = Node(
                NodeSettings(
                    topology=topology,
                    name=name,
                    certs_dir=work / "certs",
                    data_dir=work / name,
                    peers=peers[name],
                    stage_timeout_s=HELD_STAGE_TIMEOUT_S,
                )
            )
            nodes[name] = node
            port = await node.start()
            for other in names:
                if other != name:
                    peers[other][name] = f"127.0.0.1:{port}"
        source = nodes[names[0]].network
        want = args.hops * (args.requests + 10) * args.number  # n0-n1 carries every hop count's requests
        log(f"relay floor: {len(names)} nodes started; waiting until n0 can send {want} keys over {args.hops} hops")
        deadline = time.monotonic() + args.stock_timeout
        while source.available_keys(f"{names[0]}-app", f"{names[-1]}-app", 256) < want:
            if time.monotonic() > deadline:
                raise SystemExit(f"no stock of {want} keys within {args.stock_timeout} s")
            await asyncio.sleep(0.5)
        for node in nodes.values():
            for link in topology.links:
                if node.settings.name in link.between:
                    node.faults.set(link.link_id, HOLD)
        await asyncio.sleep(2.0)  # the frames and messages in flight settle
        cpu0 = time.process_time()
        await asyncio.sleep(1.0)
        log(f"relay floor: links held (the process idle: {100 * (time.process_time() - cpu0):.1f} % of a core); measuring")
        results = []
        for hops in range(1, args.hops + 1):
            request = EncRequest(master_sae=f"{names[0]}-app", slave_saes=(f"{names[hops]}-app",), number=args.number, size_bits=256)
            for _ in range(WARMUP_REQUESTS):  # first channel use, first save of each link
                await source.deliver(request)
            walls: list[float] = []
            cpu0 = time.process_time()
            for _ in range(args.requests):
                t0 = time.perf_counter()
                await source.deliver(request)
                walls.append(1e3 * (time.perf_counter() - t0))
            results.append((hops, walls, 1e3 * (time.process_time() - cpu0) / args.requests))
        return results
    finally:
        for node in nodes.values():
            await node.stop(0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hops", type=int, default=5, help="longest path (the chain has hops + 1 nodes)")
    parser.add_argument("--requests", type=int, default=200, help="timed requests per hop count (after 5 warm-up)")
    parser.add_argument("--number", type=int, default=1, help="256-bit keys per request")
    parser.add_argument("--stock-timeout", type=float, default=300.0, help="seconds to wait for the links' key")
    args = parser.parse_args()
    logs.configure("error")
    work = Path(tempfile.mkdtemp(prefix="qcinode-bench-relay-floor-"))
    try:
        results = asyncio.run(run(args, work))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"== relay floor: chain of {args.hops + 1} nodes in one process, links held; {args.requests} requests of {args.number} x 256-bit key ==")
    print("  hops   wall p50    p90    p99    max   CPU per request (all nodes)   ms")
    for hops, walls, cpu_ms in results:
        print(f"  {hops:4d}   {percentile(walls, 50):8.2f} {percentile(walls, 90):6.2f} {percentile(walls, 99):6.2f} {max(walls):6.2f}   {cpu_ms:8.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
