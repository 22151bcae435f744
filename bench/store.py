"""Cost of saving one link's state as its pool grows.

What is measured
----------------
A :class:`~qcinode.node.runtime.LinkRuntime` with a real
:class:`~qcinode.keys.linkstore.LinkStore` (SQLite WAL, ``synchronous=FULL``,
AES-256-GCM) in a temporary directory, its pool holding N blocks of
``--block-bytes`` (12,500 bytes: a 10⁵-bit block). Each sample reserves and
commits 40 bytes (one relay hop's pad for a 256-bit key) and calls
``persist()`` — what a node does before every relay hop leaves it and after
every block. The link's MAC-key reserve holds ``--auth-bytes`` (57,344: about
what a running link holds) as a bootstrap key and refills of 2,048 bytes.
Printed per N: milliseconds per save (wall clock and CPU, mean of
``--saves``), the size of the saved state's JSON, and the database size on
disk (WAL included).

Since key halves and closed-block summaries are stored once as blobs, a save
writes only the open blocks' ledgers and the closed blocks' IDs; before that,
every save rewrote the whole pool (1 / 100 / 800 blocks: 0.84 / 35 / 283 ms per save; then 0.39 /
1.6 / 9.8 ms on the 2-core machine this project is built on, with a 2 kB MAC-key reserve).
Since the MAC-key reserve's chunks are blobs too, a save no longer rewrites
the unused MAC keys as hex: with 57 kB of them, 1 / 100 / 800 blocks cost
1.31 / 2.05 / 8.15 ms of CPU per save and 115 / 133 / 263 kB of state before,
0.32 / 1.16 / 7.21 ms and 1.0 / 19 / 149 kB after.

Run ``python bench/store.py [--blocks 1 100 800] [--saves 20] [--auth-bytes 57344]``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from qcinode.keys.linkstore import LinkStore
from qcinode.node.runtime import LinkRuntime
from qcinode.topology import parse_topology

#: MAC-key bytes a block refills (``auth_refill_keys`` 64 × 32 bytes).
REFILL_BYTES = 64 * 32

TOPOLOGY = """
name: bench
nodes: [{name: alpha}, {name: beta}]
links: [{between: [alpha, beta], length_km: 10}]
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--blocks", type=int, nargs="+", default=[1, 100, 800])
    parser.add_argument("--block-bytes", type=int, default=12_500)
    parser.add_argument("--saves", type=int, default=20)
    parser.add_argument("--auth-bytes", type=int, default=57_344, help="MAC keys held, in refills of 2,048 bytes")
    args = parser.parse_args()
    link = parse_topology(TOPOLOGY).links_of("alpha")[0]
    print(f"MAC-key reserve: {args.auth_bytes:,} bytes")
    print(f"{'blocks':>7} {'pool MB':>8} {'ms/save':>9} {'CPU ms/save':>12} {'state B':>9} {'db MB':>7}")
    for n in args.blocks:
        with tempfile.TemporaryDirectory() as tmp:
            data_dir = Path(tmp)
            rt = LinkRuntime(link, "alpha", os.urandom(min(args.auth_bytes, REFILL_BYTES)), LinkStore(data_dir, "alpha"))
            for _ in range(max(0, args.auth_bytes - REFILL_BYTES) // REFILL_BYTES):
                rt.auth.refill(os.urandom(REFILL_BYTES))  # as promoted refills from accepted blocks
            for i in range(n):
                rt.pool.add_block(f"{link.link_id}/{i}", os.urandom(args.block_bytes))
            rt.persist()
            start, cpu_start = time.perf_counter(), time.process_time()
            for _ in range(args.saves):
                rt.pool.commit(rt.pool.reserve(40))
                rt.persist()
            per_save = (time.perf_counter() - start) / args.saves
            cpu_per_save = (time.process_time() - cpu_start) / args.saves
            state_bytes = len(json.dumps(rt._snapshot().state, separators=(",", ":")))
            size = sum(f.stat().st_size for f in data_dir.iterdir())
            assert rt.store is not None
            rt.store.close()
        print(
            f"{n:>7} {n * args.block_bytes / 1e6:>8.2f} {per_save * 1000:>9.2f} {cpu_per_save * 1000:>12.2f}"
            f" {state_bytes:>9,} {size / 1e6:>7.1f}"
        )


if __name__ == "__main__":
    main()
