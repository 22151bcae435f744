"""The relay engine's own cost, in one process, without sockets or disks.

What is measured
----------------
The in-process harness (:func:`qcinode.core.relay.harness.relay_network`)
runs the relay engines of a chain of nodes (and, for two shares, a ring)
over real link key pools: every hop's pad bookkeeping, one-time-pad sealing
and Poly1305 tag, header validation, routing (path choice and debits), the
share collector and an in-memory key store. No gRPC, no SQLite, no fsync: the
figures are what the pure core costs per hop, to compare with a hop's cost
in a running node (``bench/relay.py``, milliseconds per hop).

For each case, ``--requests`` requests of ``--number`` 256-bit keys are
relayed one request after the other (the keys of a request concurrently, as
the node does). Printed: keys per second, hops per second and microseconds
per hop (wall clock, best of ``--repeat`` runs).

How to run
----------
::

    python bench/relay_engine.py              # requests 100, number 16, repeat 3: a few seconds
    python bench/relay_engine.py --requests 20

Nothing is asserted.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence

from qcinode.core.relay.context import RelaySettings
from qcinode.core.relay.harness import relay_network
from qcinode.core.relay.messages import DeliverKeys


def run_case(hops: int, shares: int, requests: int, number: int) -> tuple[float, int, int]:
    """Seconds, keys and hops for one case."""
    if shares == 1:
        nodes = [f"n{i}" for i in range(hops + 1)]
        links = list(zip(nodes, nodes[1:], strict=False))
    else:  # a ring of 2 * hops nodes: two node-disjoint paths of ``hops`` hops from n0 to n{hops}
        nodes = [f"n{i}" for i in range(2 * hops)]
        links = list(zip(nodes, nodes[1:] + nodes[:1], strict=True))
    net = relay_network(
        links, {"master": nodes[0], "slave": nodes[hops]}, seed=1, block_bytes=1 << 20, blocks=8,
        settings=RelaySettings(multipath_shares=shares),
    )  # fmt: skip
    start = time.perf_counter()
    for _ in range(requests):
        outcome = net.relay("master", ["slave"], number=number)
        if not isinstance(outcome, DeliverKeys):
            raise SystemExit(f"relay failed: {outcome.refusal}")
    return time.perf_counter() - start, requests * number, len(net.sent)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=100, help="requests per case")
    p.add_argument("--number", type=int, default=16, help="keys per request")
    p.add_argument("--repeat", type=int, default=3, help="runs per case; the best is printed")
    args = p.parse_args(argv)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"relay engine bench: {os.cpu_count()} CPUs, load avg {load:.2f}; {args.requests} requests x {args.number} keys of 256 bits")
    print(f"  {'hops':>4} {'shares':>6} {'keys':>6} {'hop msgs':>8} {'keys/s':>9} {'hops/s':>9} {'us/hop':>8}")
    for hops, shares in ((1, 1), (3, 1), (5, 1), (3, 2)):
        best = min(run_case(hops, shares, args.requests, args.number) for _ in range(args.repeat))
        seconds, keys, hop_count = best
        print(f"  {hops:>4} {shares:>6} {keys:>6} {hop_count:>8} {keys / seconds:>9.0f} {hop_count / seconds:>9.0f} {1e6 * seconds / hop_count:>8.0f}")
    print("  wall clock, best run; pads, seals, tags, routing and an in-memory store; no gRPC, no disk")
    return 0


if __name__ == "__main__":
    sys.exit(main())
