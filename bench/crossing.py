"""The CPU cost of crossing to the protocol process, apart from the steps' own work.

What is measured
----------------
A seeded link (the GYS settings of ``bench/link.py``, 10 km, ``--block-bits``
key bits a block) runs both its ends in one forked protocol process
(:class:`qcinode.node.protocol_worker.ProcessRunner`), driven from an event
loop as the node's link workers drive it (``tests/support/remote_pair.py``):
every frame and every classical message crosses the socket to the process
and back, without gRPC. The bootstrap key is 64 KiB, as a node's. After
one block to warm up (the compiled kernels load in the process), ``--blocks``
blocks are timed:

* the event loop's CPU time (``time.process_time``: pickling requests,
  reading answers, the futures; nothing else runs in this process);
* the protocol process's CPU time (``/proc/PID/stat``) and, of it, the time
  spent inside :meth:`LinkSteps.handle` (the steps' own work, timed in the
  process); the rest is the process's side of the crossing (reading,
  unpickling, pickling, sending);
* the crossing: the loop's time plus the process's rest, and its share of
  both processes' CPU time.

CPU seconds, so a busy machine inflates them less than wall time; run it
under the bench lock all the same, and alternate runs of the code compared.

How to run
----------
::

    python bench/crossing.py                    # 3 blocks of 10^6 key bits
    python bench/crossing.py --blocks 5 --block-bits 1e5

Nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.support, bench.link

from bench.link import topology_mapping  # noqa: E402
from qcinode.core.pipeline import BlockAccepted, LinkProtocolConfig  # noqa: E402
from qcinode.node import protocol_worker  # noqa: E402
from qcinode.node.runtime import frame_slots, protocol_config, tune_allocator_for_links  # noqa: E402
from qcinode.topology import load_topology  # noqa: E402
from tests.support.remote_pair import open_pair, pump_remote  # noqa: E402

#: A node's bootstrap key length (qcinode.pki's default): the MAC-key reserve that crosses with each message.
BOOTSTRAP = bytes(range(256)) * 256

_inside_s = 0.0
_handle = protocol_worker.LinkSteps.handle


def _timed_handle(self: protocol_worker.LinkSteps, op: str, args: tuple[Any, ...]) -> Any:
    """LinkSteps.handle, adding its CPU time to the process's count (installed before the fork)."""
    global _inside_s
    start = time.process_time()
    try:
        return _handle(self, op, args)
    finally:
        _inside_s += time.process_time() - start


def _counts(_steps: protocol_worker.LinkSteps) -> tuple[float, float]:
    """The protocol process's (time inside steps, CPU time), asked for as a request."""
    return _inside_s, time.process_time()


def link_config(block_bits: int) -> tuple[LinkProtocolConfig, int]:
    work = Path(tempfile.mkdtemp(prefix="qcinode-bench-crossing-"))
    try:
        source = work / "topology.yaml"
        source.write_text(yaml.safe_dump(topology_mapping(10.0, block_bits, True), sort_keys=False))
        link = load_topology(source).links[0]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    config = protocol_config(link)
    return config, frame_slots(config, link.source.rate_hz, None)


async def measure(block_bits: int, blocks: int, seed: int) -> dict[str, float]:
    config, slots = link_config(block_bits)
    tune_allocator_for_links(block_bits)  # as a node does, before its protocol process forks
    protocol_worker.LinkSteps.handle = _timed_handle  # type: ignore[method-assign]
    protocol_worker._OPS["bench_counts"] = _counts
    runner = protocol_worker.ProcessRunner("bench", fork=True)
    try:
        await pump_remote(await open_pair(runner, config, BOOTSTRAP, seed + 1), frame_slots=slots, blocks=1)  # warm-up
        pair = await open_pair(runner, config, BOOTSTRAP, seed)
        inside0, child0 = await runner.call("bench_counts")
        loop0 = time.process_time()
        await pump_remote(pair, frame_slots=slots, blocks=blocks)
        loop_s = time.process_time() - loop0
        inside1, child1 = await runner.call("bench_counts")
    finally:
        runner.close()
    child_s, inside_s = child1 - child0, inside1 - inside0
    bits = sum(8 * len(e.key) for e in pair.alice_events if isinstance(e, BlockAccepted))
    return {"loop_s": loop_s, "child_s": child_s, "inside_s": inside_s, "bits": bits, "blocks": len(pair.alice_events)}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--block-bits", type=float, default=1e6, help="postprocessing.block_bits")
    p.add_argument("--blocks", type=int, default=3, help="blocks timed (after one to warm up)")
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args(argv)
    if sys.platform != "linux":
        print("needs Linux (/proc, fork)", file=sys.stderr)
        return 2
    r = asyncio.run(measure(int(args.block_bits), args.blocks, args.seed))
    crossing = r["loop_s"] + r["child_s"] - r["inside_s"]
    total = r["loop_s"] + r["child_s"]
    print(f"== crossing to the protocol process: GYS 10 km, block {args.block_bits:.3g} key bits, {r['blocks']:.0f} blocks, pid {os.getpid()} ==")
    print(f"  event loop CPU s                      {r['loop_s']:.3f}")
    print(f"  protocol process CPU s                {r['child_s']:.3f}  (inside steps {r['inside_s']:.3f}, crossing {r['child_s'] - r['inside_s']:.3f})")
    print(f"  crossing CPU s (loop + process rest)  {crossing:.3f}  ({100 * crossing / total:.1f} % of {total:.3f})")
    print(f"  secret bits per CPU-second            {r['bits'] / total:.4g}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
