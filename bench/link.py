"""Throughput of one link between two real node processes.

What is measured
----------------
For each fibre length (``--length-km``, default 10 then 50 km) a two-node
cluster is started through the real launcher
(:class:`qcinode.cluster.launcher.Cluster`, what ``qcinode up`` runs) in a
temporary state directory, from a generated topology: nodes ``alice`` and
``bob``, one link between them, ``emulation: {speed: max}``, the link settings
of the topology module's defaults (or the GYS set with ``--gys``) and
``postprocessing.block_bits`` from ``--block-bits``. The nodes talk gRPC over
mTLS on loopback and draw their secret randomness from the CSPRNG, as in a
real run.

After the first block has ended, a snapshot is taken; ``--seconds`` later a
second one. From the difference:

* secret bits per CPU-second of BOTH nodes: Alice's ``secret_bits``
  (``cluster_status``) over the utime + stime of both node PIDs and of each
  one's protocol process (its child named ``qcinode-proto``, which computes
  the links' steps) (``/proc/PID/stat``; the PIDs come from ``cluster.json``),
  and per wall second;
* blocks done / aborted in the window, Cascade round trips per block (from
  ``cascade_rounds_per_block`` times the block count at both snapshots);
* classical messages per block, ESTIMATED: the status has no message counter,
  so frames per block are taken as pulses per block / frame size
  (``qcinode.node.runtime.frame_slots``, the size the node uses), and
  messages = 2 x frames (DetectionReport + SiftReply) + 2 x Cascade rounds
  (query + reply) + 6 (TestBits, Estimate, Reconciled, Confirm, Verdict,
  Commit), the count of an accepted block; each frame also crosses the
  quantum stream as one PulseFrame plus one FrameAck;
* Cascade efficiency (``ec_efficiency``, cumulative since start) and the QBER
  of the last reconciled block;
* peak RSS of each node (``VmHWM`` in ``/proc/PID/status``, node process
  plus protocol process) and its CPU share of the window, with its CPU
  split between its protocol process (the link's steps) and its node
  process (the event loop: gRPC, crossings to the protocol process, saves).

The node logs are scanned for warnings, errors, tracebacks and failed
sessions (a failed dial before the first session is Alice starting before Bob
listens, and is reported as such). The cluster is always stopped at the end (``Cluster.stop``: SIGTERM, then
SIGKILL after a grace period), also on Ctrl-C or an exception.

How to run
----------
::

    python bench/link.py                          # 10 and 50 km, 30 s each
    python bench/link.py --seconds 20 --gys
    python bench/link.py --length-km 25 --block-bits 1e6 --seconds 120
    # real time: a 1 GHz GYS source at 10 km, emulation speed 1 (emulated s per wall s >= 0.95?)
    python bench/link.py --gys --length-km 10 --block-bits 1e6 --speed 1 --seconds 60
    # a long-haul classical channel: 100 ms one-way delay on the post-processing
    # session (links[0].fault: {kind: delay, delay_ms: 100, channel: postprocessing}),
    # Cascade against LDPC, with the textbook GYS source (0.48/0.1/0, 0.8/0.1/0.1):
    python bench/link.py --gys --textbook-source --length-km 25 --block-bits 1e6 \
        --delay-ms 100 --error-correction cascade --error-correction ldpc --seconds 120

With ``--core`` no process is started: both ends run in this process
(:func:`qcinode.core.pair.make_pair` and :func:`qcinode.core.pair.pump`,
the in-process twin of the link worker, frames through their byte
encoding), seeded, on the same topology-built link; it prints secret bits
per CPU-second of ``pump`` (``time.process_time``), the protocol core's
ceiling. ``--profile N`` adds the N most expensive functions of that run
(cProfile on CPU time, cumulative and own), ``--callers PATTERN`` who calls
the functions matching PATTERN::

    python bench/link.py --core --gys --length-km 10 --block-bits 1e6 --blocks 3
    python bench/link.py --core --gys --length-km 10 --block-bits 1e6 --blocks 3 --profile 25
    python bench/link.py --core --gys --length-km 10 --block-bits 1e6 --blocks 3 --kernels numpy

The compiled kernels (:mod:`qcinode.core.kernels`) are loaded before the
timed run, as a node loads them once at its first big block; the table says
what that took. ``--kernels numpy`` runs the numpy paths only (same keys).

With ``--delay-ms`` every post-processing message waits that long before it
leaves its node, at both ends (the ``delay`` fault), so each round trip
costs twice the delay; the summary then compares secret bits per wall
second between the methods.

Progress goes to stderr, the tables to stdout. Nothing is asserted; the last
line compares the 10 km figure with the target of 1e6 secret bits per
CPU-second.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from qcinode.cluster.launcher import Cluster, cluster_status, read_cluster
from qcinode.core import kernels
from qcinode.core.estimation import asymptotic_key_fraction, expected_key_length
from qcinode.node.runtime import expected_key_bits_per_slot, frame_slots, link_physics, protocol_config, tune_allocator_for_links
from qcinode.status import in_stage_order
from qcinode.topology import PostprocessingConfig, load_topology

TARGET_BITS_PER_CPU_S = 1e6
LINK_ID = "alice-bob"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

#: MQZL-style source most commercial systems use: 80 % signal pulses.
TEXTBOOK_SOURCE: dict[str, Any] = {
    "intensities": {"signal": 0.48, "decoy": 0.1, "vacuum": 0.0},
    "probabilities": {"signal": 0.8, "decoy": 0.1, "vacuum": 0.1},
    "basis_probabilities": {"z": 0.5, "x": 0.5},
}

GYS_SETTINGS: dict[str, Any] = {
    "source": {
        "intensities": {"signal": 0.48, "decoy": 0.2, "vacuum": 0.0},
        "probabilities": {"signal": 0.4, "decoy": 0.3, "vacuum": 0.3},
        "basis_probabilities": {"z": 0.5, "x": 0.5},
    },
    "fibre": {"attenuation_db_per_km": 0.21},
    "detector": {"efficiency": 0.045, "dark_count_probability": 1.7e-6, "misalignment_error": 0.033},
}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclasses.dataclass(frozen=True, slots=True)
class Variant:
    """What a run changes beside the distance: reconciliation, analysis, source, delay."""

    error_correction: str = "cascade"
    finite_key: str = "chernoff"
    textbook_source: bool = False
    delay_ms: float = 0.0
    ldpc_profile: str = "efficient"
    cascade_lookahead: int = 1

    @property
    def method(self) -> str:
        """The reconciliation as the summary names it: ``cascade``, ``ldpc`` or ``ldpc/fast``."""
        if self.error_correction != "ldpc" or self.ldpc_profile == "efficient":
            return self.error_correction
        return f"ldpc/{self.ldpc_profile}"

    def describe(self) -> str:
        delay = f", {self.delay_ms:g} ms delay" if self.delay_ms else ""
        lookahead = f", lookahead {self.cascade_lookahead}" if self.cascade_lookahead != PostprocessingConfig().cascade_lookahead else ""
        return f"{self.method}{lookahead}, {self.finite_key}{', textbook source' if self.textbook_source else ''}{delay}"


def topology_mapping(
    length_km: float, block_bits: int, gys: bool, variant: Variant = Variant(), speed: float | None = None
) -> dict[str, Any]:
    defaults: dict[str, Any] = dict(GYS_SETTINGS) if gys else {}
    if variant.textbook_source:
        defaults["source"] = TEXTBOOK_SOURCE
    defaults["postprocessing"] = {
        "block_bits": block_bits,
        "error_correction": variant.error_correction,
        "finite_key": variant.finite_key,
        "ldpc_profile": variant.ldpc_profile,
        "cascade_lookahead": variant.cascade_lookahead,
    }
    link: dict[str, Any] = {"between": ["alice", "bob"], "length_km": length_km}
    if variant.delay_ms:
        link["fault"] = {"kind": "delay", "delay_ms": variant.delay_ms, "channel": "postprocessing"}
    return {
        "name": "bench-link",
        "defaults": defaults,
        "emulation": {"speed": "max" if speed is None else speed},
        "nodes": [{"name": "alice"}, {"name": "bob"}],
        "links": [link],
    }


# --------------------------------------------------------------------------- /proc


def protocol_process(pid: int) -> int | None:
    """The PID of node ``pid``'s protocol process (its child named qcinode-proto, which computes the links' steps)."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        name, rest = stat.split("(", 1)[1].rsplit(")", 1)
        if name == "qcinode-proto" and int(rest.split()[1]) == pid:
            return int(entry)
    return None


def process_cpu_seconds(pid: int) -> float:
    """utime + stime of one process (all its threads), in seconds."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # fields 14 and 15 of proc(5)


def cpu_seconds(pid: int) -> tuple[float, float]:
    """CPU seconds of a node: its process (the event loop and its threads), and its protocol process."""
    child = protocol_process(pid)
    return process_cpu_seconds(pid), (process_cpu_seconds(child) if child is not None else 0.0)


def peak_rss_mib(pid: int) -> float:
    """Peak RSS of a node: its process's plus its protocol process's (shared pages counted in both)."""

    def one(p: int) -> float:
        match = re.search(r"^VmHWM:\s+(\d+)\s+kB", Path(f"/proc/{p}/status").read_text(), re.MULTILINE)
        return int(match.group(1)) / 1024 if match else math.nan

    child = protocol_process(pid)
    return one(pid) + (one(child) if child is not None else 0.0)


@dataclasses.dataclass(frozen=True, slots=True)
class Snapshot:
    wall_s: float
    cpu_s: dict[str, float]  # each node, its protocol process included
    link: dict[str, Any]
    bob_link: dict[str, Any]
    load_1min: float
    alice_link: dict[str, Any] = dataclasses.field(default_factory=dict)
    protocol_cpu_s: dict[str, float] = dataclasses.field(default_factory=dict)  # each node's protocol process

    @property
    def blocks(self) -> int:
        return int(self.link.get("blocks_done", 0)) + int(self.link.get("blocks_aborted", 0))

    @property
    def cascade_rounds(self) -> int:
        return round(float(self.link.get("cascade_rounds_per_block", 0.0)) * max(1, self.blocks))


def snapshot(state_dir: Path, pids: dict[str, int]) -> Snapshot:
    status = cluster_status(state_dir)
    wall = time.monotonic()
    split = {name: cpu_seconds(pid) for name, pid in pids.items()}
    cpu = {name: node + protocol for name, (node, protocol) in split.items()}
    bob_links = status["nodes"].get("bob", {}).get("links", [])
    alice_links = status["nodes"].get("alice", {}).get("links", [])
    return Snapshot(
        wall_s=wall,
        cpu_s=cpu,
        link=status["links"].get(LINK_ID, {}),
        bob_link=next((x for x in bob_links if x.get("link_id") == LINK_ID), {}),
        load_1min=os.getloadavg()[0],
        alice_link=next((x for x in alice_links if x.get("link_id") == LINK_ID), {}),
        protocol_cpu_s={name: protocol for name, (_, protocol) in split.items()},
    )


# --------------------------------------------------------------------------- one distance


@dataclasses.dataclass(slots=True)
class LinkResult:
    length_km: float
    block_bits: int
    variant: Variant = Variant()
    seconds: float = 0.0
    secret_bits: int = 0
    bob_secret_bits: int = 0
    cpu_s: dict[str, float] = dataclasses.field(default_factory=dict)
    protocol_cpu_s: dict[str, float] = dataclasses.field(default_factory=dict)  # of cpu_s, in the protocol processes
    peak_rss_mib: dict[str, float] = dataclasses.field(default_factory=dict)
    blocks_done: int = 0
    blocks_aborted: int = 0
    total_done: int = 0
    total_aborted: int = 0
    aborts_by_reason: dict[str, int] = dataclasses.field(default_factory=dict)
    cascade_rounds: int = 0
    pulses: int = 0
    sifted_bits: int = 0
    emulated_s: float = 0.0
    frame_slots: int = 0
    qber: float = 0.0
    ec_efficiency: float = 0.0
    warmup_s: float = 0.0
    load_1min: tuple[float, float] = (math.nan, math.nan)
    exit_codes: dict[str, int | None] = dataclasses.field(default_factory=dict)
    log_findings: dict[str, int] = dataclasses.field(default_factory=dict)
    error: str = ""
    #: emulation.speed (None: max).
    speed: float | None = None
    #: Secret bits per pulse of the finite-key formula (configured analysis, measured f, nominal block).
    formula_per_pulse: float = math.nan
    #: Infinite-block, infinite-decoy rate of the same source and f, per pulse.
    asymptotic_per_pulse: float = math.nan
    #: Wall seconds Alice's accepted blocks of the window spent in each post-processing stage, and how many blocks.
    stage_s: dict[str, float] = dataclasses.field(default_factory=dict)
    stage_blocks: int = 0

    @property
    def blocks(self) -> int:
        return self.blocks_done + self.blocks_aborted

    @property
    def measured_per_pulse(self) -> float:
        return self.secret_bits / self.pulses if self.pulses else math.nan

    @property
    def total_cpu_s(self) -> float:
        return sum(self.cpu_s.values())

    @property
    def bits_per_cpu_s(self) -> float:
        return self.secret_bits / self.total_cpu_s if self.total_cpu_s > 0 else 0.0

    @property
    def frames_per_block(self) -> float:
        return self.pulses / self.blocks / self.frame_slots if self.blocks and self.frame_slots else math.nan

    @property
    def rounds_per_block(self) -> float:
        return self.cascade_rounds / self.blocks if self.blocks else math.nan

    @property
    def messages_per_block(self) -> float:
        return 2 * self.frames_per_block + 2 * self.rounds_per_block + 6


def scan_logs(state_dir: Path) -> dict[str, int]:
    """Counts what in the node logs may be a problem.

    Warnings, errors, tracebacks and lines that are not JSON are counted; a
    ``link.session_failed`` before the link's first session is the startup
    race (Alice dials before Bob listens) and is counted apart.
    """
    found: Counter[str] = Counter()
    for path in sorted((state_dir / "logs").glob("*.log")):
        started = False
        for line in path.read_text(errors="replace").splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                found[f"{path.stem}:{'traceback' if 'Traceback' in line else 'non-JSON line'}"] += 1
                continue
            event, level = entry.get("event", "?"), entry.get("level", "info")
            if event == "link.session_started":
                started = True
            elif event == "link.session_failed" and not started:
                found[f"{path.stem}:session_failed before first session (startup race)"] += 1
            elif event == "link.session_failed" or level in ("warning", "error", "critical"):
                found[f"{path.stem}:{event} ({level})"] += 1
    return dict(found)


def run_link(
    length_km: float,
    *,
    block_bits: int,
    seconds: float,
    gys: bool,
    warmup_timeout_s: float,
    keep: bool,
    variant: Variant = Variant(),
    speed: float | None = None,
) -> LinkResult:
    result = LinkResult(length_km=length_km, block_bits=block_bits, variant=variant)
    work = Path(tempfile.mkdtemp(prefix=f"qcinode-bench-link-{length_km:g}km-"))
    source = work / "topology-source.yaml"
    source.write_text(yaml.safe_dump(topology_mapping(length_km, block_bits, gys, variant, speed), sort_keys=False))
    link = load_topology(source).links[0]
    result.speed = speed
    result.frame_slots = frame_slots(protocol_config(link), link.source.rate_hz, None)
    physics = link_physics(link)
    state_dir = work / "state"
    cluster = Cluster(source, state_dir)
    log(f"{length_km:g} km: starting two nodes in {state_dir}")
    try:
        cluster.prepare()
        cluster.start()
        started = time.monotonic()
        cluster.wait_healthy(timeout_s=min(warmup_timeout_s, 120.0))  # a loaded machine starts nodes slowly
        pids = {name: int(info["pid"]) for name, info in read_cluster(state_dir)["nodes"].items()}
        while True:
            first = snapshot(state_dir, pids)
            if first.blocks >= 1:
                break
            if time.monotonic() - started > warmup_timeout_s:
                raise TimeoutError(f"no block ended within {warmup_timeout_s:.0f} s of start")
            time.sleep(0.5)
        result.warmup_s = time.monotonic() - started
        log(f"{length_km:g} km: first block after {result.warmup_s:.1f} s; measuring for {seconds:g} s")
        deadline = first.wall_s + seconds
        while (left := deadline - time.monotonic()) > 0:
            time.sleep(min(left, 5.0))
            if time.monotonic() < deadline:
                # Light progress polling (one status RPC per node every 5 s).
                status = cluster_status(state_dir)["links"].get(LINK_ID, {})
                log(f"{length_km:g} km:   {status.get('blocks_done', 0)} blocks, {status.get('secret_bits', 0)} secret bits so far")
        last = snapshot(state_dir, pids)
        result.peak_rss_mib = {name: peak_rss_mib(pid) for name, pid in pids.items()}
        fill(result, first, last)
        f_ec = max(1.0, result.ec_efficiency or 1.1)
        per_slot = expected_key_bits_per_slot(physics)
        formula = expected_key_length(physics, block_bits, f_ec=f_ec, analysis=variant.finite_key)
        result.formula_per_pulse = formula.length_bits / block_bits * per_slot
        result.asymptotic_per_pulse = asymptotic_key_fraction(physics, f_ec) * per_slot
    except KeyboardInterrupt:
        result.error = "interrupted"
        raise
    except Exception as exc:  # noqa: BLE001 - reported in the table, the cluster is stopped below
        result.error = f"{type(exc).__name__}: {exc}"
        log(f"{length_km:g} km: FAILED: {result.error}")
    finally:
        log(f"{length_km:g} km: stopping the cluster")
        cluster.stop()
        result.exit_codes = {name: proc.returncode for name, proc in cluster.processes.items()}
        if state_dir.exists():
            result.log_findings = scan_logs(state_dir)
        if keep:
            log(f"{length_km:g} km: state kept in {state_dir}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return result


def fill(result: LinkResult, first: Snapshot, last: Snapshot) -> None:
    a, b = first.link, last.link
    result.seconds = last.wall_s - first.wall_s
    result.load_1min = (first.load_1min, last.load_1min)
    result.secret_bits = int(b.get("secret_bits", 0)) - int(a.get("secret_bits", 0))
    result.bob_secret_bits = int(last.bob_link.get("secret_bits", 0)) - int(first.bob_link.get("secret_bits", 0))
    result.cpu_s = {name: last.cpu_s[name] - first.cpu_s[name] for name in last.cpu_s}
    result.protocol_cpu_s = {name: last.protocol_cpu_s[name] - first.protocol_cpu_s[name] for name in last.protocol_cpu_s}
    result.blocks_done = int(b.get("blocks_done", 0)) - int(a.get("blocks_done", 0))
    result.blocks_aborted = int(b.get("blocks_aborted", 0)) - int(a.get("blocks_aborted", 0))
    result.total_done = int(b.get("blocks_done", 0))
    result.total_aborted = int(b.get("blocks_aborted", 0))
    result.aborts_by_reason = dict(b.get("aborts_by_reason") or {})
    result.cascade_rounds = last.cascade_rounds - first.cascade_rounds
    result.pulses = int(b.get("pulses_sent", 0)) - int(a.get("pulses_sent", 0))
    result.sifted_bits = int(b.get("sifted_bits", 0)) - int(a.get("sifted_bits", 0))
    result.emulated_s = float(b.get("emulated_s", 0.0)) - float(a.get("emulated_s", 0.0))
    result.qber = float(b.get("qber", 0.0))
    result.ec_efficiency = float(b.get("ec_efficiency", 0.0))
    before, after = first.alice_link.get("block_stage_seconds") or {}, last.alice_link.get("block_stage_seconds") or {}
    result.stage_s = in_stage_order({stage: float(after[stage]) - float(before.get(stage, 0.0)) for stage in after})
    result.stage_blocks = int(last.alice_link.get("block_stage_blocks", 0)) - int(first.alice_link.get("block_stage_blocks", 0))


# --------------------------------------------------------------------------- in process


@dataclasses.dataclass(slots=True)
class CoreResult:
    length_km: float
    block_bits: int
    blocks_done: int = 0
    blocks_aborted: int = 0
    secret_bits: int = 0
    cpu_s: float = 0.0
    wall_s: float = 0.0
    frames: int = 0
    messages: int = 0
    keys_match: bool = True
    aborts: tuple[str, ...] = ()
    kernels: str = ""
    hash_floor_s: float = 0.0  # CPU s of one privacy-amplification hash of this run's block (hash_floor_s())


def run_core(
    length_km: float,
    *,
    block_bits: int,
    blocks: int,
    gys: bool,
    seed: int,
    variant: Variant = Variant(),
    profile: int = 0,
    callers: Sequence[str] = (),
    raw_allocator: bool = False,
) -> CoreResult:
    """Both ends in this process (``pair.pump``), timed by the CPU time of the pump alone."""
    import cProfile
    import pstats

    from qcinode.core.pair import make_pair, pump
    from qcinode.core.pipeline import BlockAccepted

    work = Path(tempfile.mkdtemp(prefix="qcinode-bench-core-"))
    try:
        source = work / "topology.yaml"
        source.write_text(yaml.safe_dump(topology_mapping(length_km, block_bits, gys, variant), sort_keys=False))
        link = load_topology(source).links[0]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    config = protocol_config(link)
    slots = frame_slots(config, link.source.rate_hz, None)
    if not raw_allocator:
        tune_allocator_for_links(block_bits)  # as a node does for its links
    alice, bob = make_pair(config, bytes(range(256)) * 64, seed)
    # A node loads the compiled kernels once, at its first big block: outside the steady state timed here.
    warm0 = time.process_time()
    compiled = block_bits >= kernels.NUMBA_MIN_SIZE and kernels.warm_up()
    warm_s = time.process_time() - warm0
    profiler = cProfile.Profile(time.process_time) if profile else None  # CPU time: a busy machine does not inflate it
    cpu0, wall0 = time.process_time(), time.perf_counter()
    if profiler:
        profiler.enable()
    result = pump(alice, bob, frame_slots=slots, blocks=blocks, max_frames=100 * blocks + 100)
    if profiler:
        profiler.disable()
    out = CoreResult(length_km, block_bits, cpu_s=time.process_time() - cpu0, wall_s=time.perf_counter() - wall0)
    loaded = f"loaded in {warm_s:.2f} CPU s (not counted)" if compiled else "not used"
    out.kernels = f"{kernels.mode()}, compiled kernels {loaded}"
    out.frames, out.messages = result.frames, result.classical_messages
    bob_keys = {e.block_seq: e.key for e in result.bob_events if isinstance(e, BlockAccepted)}
    for event in result.alice_events:
        if isinstance(event, BlockAccepted):
            out.blocks_done += 1
            out.secret_bits += 8 * len(event.key)
            out.keys_match &= bob_keys.get(event.block_seq) == event.key
        else:
            out.blocks_aborted += 1
            out.aborts += (event.reason,)
    accepted = [e.stats for e in result.alice_events if isinstance(e, BlockAccepted)]
    if accepted:
        out.hash_floor_s = hash_floor_s(accepted[0].key_bits, accepted[0].secret_bits)
    if profiler:
        stats = pstats.Stats(profiler, stream=sys.stdout)
        for order in ("cumulative", "tottime"):
            print(f"\n-- profile, by {order} --")
            stats.sort_stats(order).print_stats(profile)
        for pattern in callers:
            print(f"\n-- who calls {pattern} --")
            stats.sort_stats("tottime").print_callers(pattern)
    return out


def hash_floor_s(key_bits: int, secret_bits: int, repeats: int = 5) -> float:
    """CPU seconds of one privacy-amplification hash (the Toeplitz FFT) of ``key_bits`` into ``secret_bits``:
    the fastest of ``repeats``, on random bits. Each end hashes every block once, so a block costs at least
    twice this, whatever else gets faster."""
    from qcinode.core.amplification import seed_bits_needed, toeplitz_hash

    rng = np.random.default_rng(0)
    key = rng.integers(0, 2, key_bits, dtype=np.uint8)
    seed = rng.integers(0, 2, seed_bits_needed(key_bits, secret_bits), dtype=np.uint8)
    best = math.inf
    for _ in range(repeats):
        cpu0 = time.process_time()
        toeplitz_hash(key, seed, secret_bits)
        best = min(best, time.process_time() - cpu0)
    return best


def print_core(r: CoreResult) -> None:
    rate = r.secret_bits / r.cpu_s if r.cpu_s > 0 else 0.0
    floor = ""
    if r.hash_floor_s > 0 and r.blocks_done:
        per_block = r.secret_bits / r.blocks_done
        floor = (
            f"\n  privacy amplification alone  {2 * r.hash_floor_s * 1e3:.0f} ms CPU per block (both ends' hashes):"
            f" at most {per_block / (2 * r.hash_floor_s):.3g} secret bits per CPU-second"
        )
    print(
        f"\n== in-process core (pair.pump), {r.length_km:g} km, block {r.block_bits:.3g} key bits ==\n"
        f"  blocks done / aborted        {r.blocks_done} / {r.blocks_aborted}"
        f"{'  (' + ', '.join(r.aborts) + ')' if r.aborts else ''}\n"
        f"  secret bits                  {r.secret_bits}  (keys equal at both ends: {'yes' if r.keys_match else 'NO'})\n"
        f"  frames / classical messages  {r.frames} / {r.messages}\n"
        f"  kernels                      {r.kernels}\n"
        f"  CPU s / wall s               {r.cpu_s:.2f} / {r.wall_s:.2f}\n"
        f"  secret bits per CPU-second   {rate:.4g}  (target for the core: >= 2e6)"
        f"{floor}"
    )


# --------------------------------------------------------------------------- output


def print_result(r: LinkResult) -> None:
    speed = "max" if r.speed is None else f"{r.speed:g}"
    realtime = "" if r.speed is None else f"  (speed {r.speed:g}: real time needs >= {0.95 * r.speed:.2f})"
    print(f"\n== link {LINK_ID}, {r.length_km:g} km, block {r.block_bits:.3g} key bits, speed {speed}, {r.variant.describe()} ==")
    if r.error:
        print(f"  ERROR: {r.error}")
    rows: list[tuple[str, str]] = [
        ("measured window", f"{r.seconds:.1f} s wall (first block ended {r.warmup_s:.1f} s after start)"),
        ("secret bits (Alice / Bob)", f"{r.secret_bits} / {r.bob_secret_bits}"),
        ("CPU s (alice + bob)", " + ".join(f"{r.cpu_s.get(n, 0):.1f}" for n in ("alice", "bob")) + f" = {r.total_cpu_s:.1f}"),
        (
            "  of which protocol process / node process",
            ", ".join(
                f"{n} {r.protocol_cpu_s.get(n, 0):.1f} / {r.cpu_s.get(n, 0) - r.protocol_cpu_s.get(n, 0):.1f}" for n in ("alice", "bob")
            ),
        ),
        (
            "CPU share of the window",
            ", ".join(f"{n} {100 * r.cpu_s.get(n, 0) / r.seconds:.0f} %" for n in ("alice", "bob")) if r.seconds else "-",
        ),
        ("machine load avg (1 min) start / end", f"{r.load_1min[0]:.2f} / {r.load_1min[1]:.2f}  (the two nodes alone add about 1)"),
        ("secret bits per CPU-second", f"{r.bits_per_cpu_s:.4g}"),
        ("secret bits per wall second", f"{r.secret_bits / r.seconds:.4g}" if r.seconds else "-"),
        ("secret bits per emulated s", f"{r.secret_bits / r.emulated_s:.4g}" if r.emulated_s else "-"),
        ("emulated s per wall s", f"{r.emulated_s / r.seconds:.3f}{realtime}" if r.seconds else "-"),
        (
            "secret bits per pulse: measured / formula / asymptotic",
            f"{r.measured_per_pulse:.4g} / {r.formula_per_pulse:.4g} / {r.asymptotic_per_pulse:.4g}  "
            f"(measured/formula {r.measured_per_pulse / r.formula_per_pulse if r.formula_per_pulse else math.nan:.3f}; "
            f"formula: {r.variant.finite_key} on a nominal block, measured f; asymptotic: infinite block and decoys)",
        ),
        ("blocks done / aborted (window)", f"{r.blocks_done} / {r.blocks_aborted}"),
        ("blocks done / aborted (total)", f"{r.total_done} / {r.total_aborted}"),
        ("abort reasons (total)", ", ".join(f"{k}: {v}" for k, v in r.aborts_by_reason.items()) or "none"),
        ("QBER (last block)", f"{100 * r.qber:.2f} %"),
        (f"{r.variant.method} f (cumulative)", f"{r.ec_efficiency:.3f}"),
        (f"{r.variant.method} round trips per block", f"{r.rounds_per_block:.1f}"),
        ("block stages at Alice, ms per block", stage_line(r)),
        ("frames per block (est.)", f"{r.frames_per_block:.2f} of {r.frame_slots:.3g} slots"),
        ("classical messages per block (est.)", f"{r.messages_per_block:.1f}  (2 x frames + 2 x rounds + 6)"),
        ("peak RSS MiB (alice / bob)", " / ".join(f"{r.peak_rss_mib.get(n, math.nan):.0f}" for n in ("alice", "bob"))),
        ("node exit codes after stop", ", ".join(f"{n} {c}" for n, c in r.exit_codes.items())),
        ("log findings", ", ".join(f"{k} x{v}" for k, v in r.log_findings.items()) or "none"),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"  {key:<{width}}  {value}")


def stage_line(r: LinkResult) -> str:
    """Where an accepted block's wall time went at Alice: each post-processing stage, and per round trip."""
    if not r.stage_blocks:
        return "-"
    per_block = {stage: 1e3 * seconds / r.stage_blocks for stage, seconds in r.stage_s.items()}
    line = ", ".join(f"{stage} {ms:.0f}" for stage, ms in per_block.items())
    rounds = r.rounds_per_block
    if "reconciliation" in per_block and rounds > 0:
        line += f"  (reconciliation per round trip: {per_block['reconciliation'] / rounds:.2f} ms)"
    return line


def print_summary(results: Sequence[LinkResult]) -> None:
    header = (
        f"{'L km':>6} {'method':>9} {'delay':>6} {'bits/CPU-s':>11} {'bits/wall-s':>11} {'CPU s':>7} {'done/ab':>8} "
        f"{'QBER':>7} {'f':>6} {'rounds':>7} {'msgs':>6} {'RSS MiB a/b':>12}"
    )
    print("\nsummary")
    print(header)
    print("-" * len(header))
    for r in results:
        wall = r.secret_bits / r.seconds if r.seconds else 0.0
        rss = "/".join(f"{r.peak_rss_mib.get(n, math.nan):.0f}" for n in ("alice", "bob"))
        print(
            f"{r.length_km:6.1f} {r.variant.method:>9} {r.variant.delay_ms:6g} "
            f"{r.bits_per_cpu_s:11.4g} {wall:11.4g} {r.total_cpu_s:7.1f} {r.blocks_done:>4}/{r.blocks_aborted:<3} "
            f"{100 * r.qber:6.2f}% {r.ec_efficiency:6.3f} {r.rounds_per_block:7.1f} {r.messages_per_block:6.1f} {rss:>12}"
        )


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--length-km", type=float, action="append", help="fibre length (repeatable; default 10 and 50)")
    p.add_argument("--seconds", type=float, default=30.0, help="measuring window after the first block")
    p.add_argument("--block-bits", type=float, default=100_000, help="postprocessing.block_bits")
    p.add_argument("--gys", action="store_true", help="GYS link parameters instead of the topology defaults")
    p.add_argument("--warmup-timeout", type=float, default=180.0, help="seconds to wait for the first block")
    p.add_argument("--keep", action="store_true", help="keep the state directories (logs) after the run")
    p.add_argument("--error-correction", action="append", choices=["cascade", "ldpc"], help="repeatable; default cascade")
    p.add_argument("--finite-key", default="chernoff", choices=["chernoff", "yin2020", "lim2014"])
    p.add_argument(
        "--ldpc-profile", action="append", choices=["efficient", "fast", "lean"], help="repeatable, for ldpc runs; default efficient"
    )
    p.add_argument("--textbook-source", action="store_true", help="source 0.48/0.1/0 with p 0.8/0.1/0.1, Z basis 0.5")
    p.add_argument("--delay-ms", type=float, default=0.0, help="one-way delay of every post-processing message (delay fault)")
    p.add_argument(
        "--cascade-lookahead",
        type=int,
        default=PostprocessingConfig().cascade_lookahead,
        help="postprocessing.cascade_lookahead (bisection levels per round trip in a thin batch; 1: textbook Cascade)",
    )
    p.add_argument("--speed", type=float, default=None, help="emulation.speed (emulated s per wall s; default max)")
    p.add_argument("--core", action="store_true", help="both ends in this process (pair.pump): the protocol core alone")
    p.add_argument("--blocks", type=int, default=3, help="with --core: blocks to run")
    p.add_argument("--seed", type=int, default=1, help="with --core: the pair's seed")
    p.add_argument("--profile", type=int, default=0, metavar="N", help="with --core: print the N costliest functions (cProfile)")
    p.add_argument("--callers", action="append", default=[], metavar="PATTERN", help="with --profile: who calls functions matching PATTERN")
    p.add_argument("--raw-allocator", action="store_true", help="with --core: keep glibc's malloc defaults (a node tunes them)")
    p.add_argument(
        "--kernels", choices=list(kernels.KERNEL_MODES), default=None, help="with --core: compiled kernels (QCINODE_KERNELS; default auto)"
    )
    args = p.parse_args(argv)
    lengths = args.length_km or [10.0, 50.0]
    block_bits = int(args.block_bits)
    if args.core:
        if args.kernels:
            kernels.set_mode(args.kernels)
        for length_km in lengths:
            variant = Variant(
                error_correction=(args.error_correction or ["cascade"])[0], finite_key=args.finite_key, cascade_lookahead=args.cascade_lookahead
            )
            print_core(
                run_core(
                    length_km,
                    block_bits=block_bits,
                    blocks=args.blocks,
                    gys=args.gys,
                    seed=args.seed,
                    variant=variant,
                    profile=args.profile,
                    callers=args.callers,
                    raw_allocator=args.raw_allocator,
                )
            )
        return 0
    variants = [
        Variant(
            error_correction=method,
            finite_key=args.finite_key,
            textbook_source=args.textbook_source,
            delay_ms=args.delay_ms,
            ldpc_profile=profile,
            cascade_lookahead=args.cascade_lookahead,
        )
        for method in (args.error_correction or ["cascade"])
        for profile in ((args.ldpc_profile or ["efficient"]) if method == "ldpc" else ["efficient"])
    ]
    print(
        f"two node processes, link parameters: {'GYS' if args.gys else 'qcinode.topology defaults'}; "
        f"block {block_bits:.3g} key bits; {args.seconds:g} s window after the first block; {os.cpu_count()} CPUs"
    )
    results: list[LinkResult] = []
    try:
        for length_km in lengths:
            for variant in variants:
                result = run_link(
                    length_km,
                    block_bits=block_bits,
                    seconds=args.seconds,
                    gys=args.gys,
                    warmup_timeout_s=args.warmup_timeout,
                    keep=args.keep,
                    variant=variant,
                    speed=args.speed,
                )
                results.append(result)
                print_result(result)
    except KeyboardInterrupt:
        log("interrupted; the cluster was stopped")
        print_summary(results)
        return 130
    print_summary(results)
    for length_km in lengths:
        by_method = {r.variant.method: r for r in results if r.length_km == length_km and not r.error and r.seconds}
        rate = {k: v.secret_bits / v.seconds for k, v in by_method.items()}
        for method in (k for k in rate if k.startswith("ldpc")):
            if "cascade" in rate:
                ratio = rate[method] / rate["cascade"] if rate["cascade"] else math.inf
                print(
                    f"{length_km:g} km: secret bits per wall second, {method} {rate[method]:.4g} / Cascade "
                    f"{rate['cascade']:.4g} = {ratio:.2f}x (goal with a 100 ms delay: >= 3x)"
                )
    at_10 = [r for r in results if r.length_km == 10.0 and not r.error]
    measured = f"{at_10[0].bits_per_cpu_s:.3g} measured" if at_10 else "10 km not run"
    print(f"\ntarget: >= 1e6 secret bits per CPU-second at 10 km ({measured})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
