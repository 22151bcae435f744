"""How ``links.sqlite3``, ``storage.key`` and ``expected.json`` here were made (not a test).

They are a node's link store as schema version 1 wrote it: the store of
qcinode before each open block's ledger had a row of its own, when a link's
row held its whole state. ``tests/unit/test_linkstore_ledgers.py`` opens a copy
with the current store. To make them again, run this with that older qcinode
importable (it refuses any other) and this directory as its argument.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from qcinode.core.pool import KeyRange, LinkKeyPool
from qcinode.keys.linkstore import SCHEMA_VERSION, LinkStore
from qcinode.node.runtime import LinkRuntime
from qcinode.topology import parse_topology

TOPOLOGY = """
name: pair
nodes: [{name: alpha}, {name: beta}]
links: [{between: [alpha, beta], length_km: 10}]
"""


def main(out: Path) -> None:
    if SCHEMA_VERSION != 1:
        raise SystemExit(f"this is the schema version {SCHEMA_VERSION} store; the fixture needs version 1")
    link = parse_topology(TOPOLOGY).links_of("alpha")[0]
    rng = np.random.default_rng(2026)
    store = LinkStore(out, "alpha")
    rt = LinkRuntime(link, "alpha", rng.bytes(32 * 16), store)
    peer = LinkKeyPool(link.link_id, rt.role.peer)
    for seq in range(5):
        data = rng.bytes(256)
        rt.pool.add_block(f"{link.link_id}/{seq}", data)
        peer.add_block(f"{link.link_id}/{seq}", data)
    rt.pool.commit(rt.pool.reserve(128 + 40))  # block 0's half used up, 40 bytes of block 1's
    theirs = peer.reserve(128 + 7)
    peer.commit(theirs)
    rt.pool.consume_ranges(theirs.ranges, peer.role)  # block 0 closes; 7 bytes of block 1's other half
    rt.pool.consume_ranges([KeyRange(f"{link.link_id}/3", 128, 16)], peer.role)
    rt.auth.take(3)
    rt.next_block_seq, rt.next_frame_id = 5, 11
    rt.counters.blocks_done = 5
    rt.persist()
    store.save("alpha-gamma", {"v": 1, "note": "a state without a pool"})
    expected = {"alpha-beta": store.load(link.link_id), "alpha-gamma": store.load("alpha-gamma")}
    store.close()
    (out / "expected.json").write_text(json.dumps(expected, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
