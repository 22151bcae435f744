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
* the protocol process's CPU time (``/proc/PID/stat``) and, of it, the
  steps' own work, each part timed on the thread that does it
  (``time.thread_time``): inside :meth:`LinkSteps.handle` and the ends of
  steps whose physics ran beside (main thread), the work done ahead while
  the process waits (main thread: privacy amplification's hash, Bob's
  Cascade tables), and the physics beside (its own thread: Alice's
  emission, Bob's measurement); the rest is the process's side of the
  crossing (reading, unpickling, pickling, sending);
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
import threading
import time
from collections.abc import Callable, Sequence
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

#: CPU seconds of the steps' own work in the protocol process, by part (each counted on its own thread).
_spent = {"inside": 0.0, "ahead": 0.0, "beside": 0.0}
_spent_lock = threading.Lock()


def _timed(part: str, method: Callable[..., Any]) -> Callable[..., Any]:
    """``method``, adding the CPU time of the thread that runs it to ``_spent[part]`` (installed before the fork)."""

    def timed(*args: Any) -> Any:
        start = time.thread_time()
        try:
            return method(*args)
        finally:
            with _spent_lock:
                _spent[part] += time.thread_time() - start

    return timed


def _counts(_steps: protocol_worker.LinkSteps) -> tuple[dict[str, float], float]:
    """The protocol process's steps' CPU time by part, and its whole CPU time, asked for as a request."""
    with _spent_lock:
        return dict(_spent), time.process_time()


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
    protocol_worker.LinkSteps.handle = _timed("inside", protocol_worker.LinkSteps.handle)  # type: ignore[method-assign]
    protocol_worker.LinkSteps.finish_beside = _timed("inside", protocol_worker.LinkSteps.finish_beside)  # type: ignore[method-assign]
    protocol_worker.LinkSteps.work_ahead = _timed("ahead", protocol_worker.LinkSteps.work_ahead)  # type: ignore[method-assign]
    protocol_worker._Beside.run = _timed("beside", protocol_worker._Beside.run)  # type: ignore[method-assign]
    protocol_worker._OPS["bench_counts"] = _counts
    runner = protocol_worker.ProcessRunner("bench", fork=True)
    try:
        await pump_remote(await open_pair(runner, config, BOOTSTRAP, seed + 1), frame_slots=slots, blocks=1)  # warm-up
        pair = await open_pair(runner, config, BOOTSTRAP, seed)
        spent0, child0 = await runner.call("bench_counts")
        loop0 = time.process_time()
        await pump_remote(pair, frame_slots=slots, blocks=blocks)
        loop_s = time.process_time() - loop0
        spent1, child1 = await runner.call("bench_counts")
    finally:
        runner.close()
    parts = {part: spent1[part] - spent0[part] for part in spent1}
    bits = sum(8 * len(e.key) for e in pair.alice_events if isinstance(e, BlockAccepted))
    return {"loop_s": loop_s, "child_s": child1 - child0, **parts, "bits": bits, "blocks": len(pair.alice_events)}


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
    work = r["inside"] + r["ahead"] + r["beside"]
    crossing = r["loop_s"] + r["child_s"] - work
    total = r["loop_s"] + r["child_s"]
    print(f"== crossing to the protocol process: GYS 10 km, block {args.block_bits:.3g} key bits, {r['blocks']:.0f} blocks, pid {os.getpid()} ==")
    print(f"  event loop CPU s                      {r['loop_s']:.3f}")
    print(
        f"  protocol process CPU s                {r['child_s']:.3f}  (steps {r['inside']:.3f}, worked ahead {r['ahead']:.3f},"
        f" physics beside {r['beside']:.3f}; crossing {r['child_s'] - work:.3f})"
    )
    print(f"  crossing CPU s (loop + process rest)  {crossing:.3f}  ({100 * crossing / total:.1f} % of {total:.3f})")
    print(f"  secret bits per CPU-second            {r['bits'] / total:.4g}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
