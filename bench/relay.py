"""Key delivery through trusted-node relay, measured through the ETSI 014 API of real node processes.

What is measured
----------------
Every figure comes from real node processes started by the real launcher
(:func:`qcinode.testing.start_network`, i.e. :class:`qcinode.cluster.launcher.Cluster`,
what ``qcinode up`` runs) in a temporary state directory, and from a client
that speaks ETSI GS QKD 014 over HTTPS with mutual TLS, standard library
only: parts 1 and 2 keep one connection open per client thread
(:class:`KeepAliveClient`, HTTP/1.1 keep-alive, as a real application
does; ``--new-connections`` opens one per request instead, as
:class:`qcinode.kme.client.EtsiClient` does), part 3 uses ``EtsiClient``.
Links are 10 km with the topology defaults. Parts 1 and 2 run the links
with ``postprocessing: {block_bits: 1000000}`` (``--block-bits``), the block
size of real systems and of ``bench/link.py``; part 3 with 50 000, so that
a link at 3 MHz fills a block in seconds. The block size matters at speed
max: every Cascade round trip of a block crosses both nodes' event loops,
which also serve the KME and the relay, and a 5·10⁴-bit block costs about
as many round trips as a 10⁶-bit one for a twentieth of the key (and a
smaller share of it secret: the finite-size penalty), so with small blocks
the loops spend more of the CPU on link traffic per key made.

1. **Latency per hop count.** A 6-node chain ``n0 - n1 - ... - n5`` at
   ``emulation: {speed: max}``, SAEs ``sae-n0`` (master) at n0 and
   ``sae-n1``, ``sae-n3``, ``sae-n5`` (slaves). For 1, 3 and 5 hops: 5
   warm-up requests, then ``--requests`` sequential requests of one 256-bit
   key: ``enc_keys`` at n0's KME (the key is relayed hop by hop and stored at
   the slave's node before the answer), then ``dec_keys`` at the slave's KME.
   Printed: p50 / p99 of ``enc_keys`` alone, ``dec_keys`` alone and
   enc_keys -> dec_keys, in milliseconds, over the successful requests; the
   number of 503 answers (a 503 is not retried; the client waits 50 ms and
   sends the next request); that enc and dec keys were equal and the path in
   ``key_ID_extension`` had the expected hop count.
   Then 5 hops again with the links paused (row ``5*``): every node's
   protocol process stopped (SIGSTOP, then SIGCONT), so that only what
   serves applications runs — the event loops and storage threads — and the
   figure is the relay path's own cost, the floor under the loaded rows.
2. **Keys per second one node serves.** Same cluster, pair n0 -> n1 (one
   hop): ``--concurrency`` client threads call ``enc_keys`` back to back for
   ``--seconds`` with ``number`` = 1, then with ``number`` = 16 (keys are not
   redeemed). Printed: keys/s, requests/s, 503 count (a thread that gets a
   503 waits 10 ms), request latency p50 / p99, and the n0-n1 link's secret
   key growth in the same window for comparison; also keys/s over the part
   of the window before the first 503 (while n0's half of the pool still
   had stock: what the node serves, as opposed to what the link makes).
   Before each run the bench waits (up to ``--stock-wait`` s) until n0's half
   holds ``--stock-bits`` (default 800 000 bits: about 1 500 one-hop keys, so
   the stocked part of the 16-key run rests on that many keys).
   Also printed: the request path's CPU per key served at n0 and n1
   (CPU-seconds of the node process's threads over the window, not its
   protocol process's, minus what the same threads spent on link traffic alone over
   3 s just before, per key), a figure the host's load does not swing as
   it swings the wall-clock ones.
   Pools running dry is a result, not an error.
3. **Delivered rate against the bottleneck link.** A 4-node chain
   ``m0 - m1 - m2 - m3`` (3 hops, SAEs ``sae-a`` at m0 and ``sae-b`` at m3) at
   ``emulation.speed`` 1.0 (real time) with ``source.rate_hz`` = ``--rate-hz``
   (default 3e6: at 10 km that is about 2.3 kbit/s of secret key per link,
   which two busy CPUs emulate in real time; at 2e8 they managed only 5-8 %
   of real time, and from 1e7 up one sequential client, not the links, is
   the limit — the printout says so when it happens). The stock of key that grew while the network started is drained first
   (requests until the first 503), then one client requests ``--rate-number``
   keys of ``--key-bits`` per ``enc_keys`` as fast as the network gives them
   (redeeming each with ``dec_keys``; on 503 it waits 50 ms) for
   ``--rate-seconds``. Printed: delivered key bits per second; per link the
   secret key rate over the same window from :func:`cluster_status`
   (delta ``secret_bits`` / delta ``emulated_s``, and per wall second, so a
   host that cannot keep real time is visible), the bottleneck, the ratio
   delivered / bottleneck and the theoretical ceiling
   ``bottleneck / 2 / (1 + 256 / key_bits)``: each relayed key bit spends one
   pad bit on every hop plus a 256-bit one-time Poly1305 key per hop
   (:func:`qcinode.core.relay.hop.pad_bytes_needed`), and a link's pool is split
   in halves, each end initiating only from its own half
   (:mod:`qcinode.core.pool`); every hop of this path is sent by the link's
   Alice, so only Alice's halves are spent.

After each cluster the node logs are scanned for warnings, errors and
tracebacks, and the per-node relay counters (``cluster_status``) are printed.
The clusters are always stopped (``Cluster.stop``) and the temporary
directories removed, also on Ctrl-C or an exception.

How to run
----------
::

    python bench/relay.py --quick        # requests 20, seconds 5, rate-seconds 10: about 4 minutes
    python bench/relay.py                # requests 100, seconds 10, rate-seconds 30
    python bench/relay.py --concurrency 8 --rate-hz 1e8 --key-bits 1024

Progress goes to stderr, the tables to stdout. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import dataclasses
import http.client
import json
import math
import os
import shutil
import signal
import ssl
import sys
import tempfile
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import yaml
from link import protocol_process

from qcinode.cluster.launcher import cluster_status
from qcinode.core.relay.hop import MAC_KEY_BYTES
from qcinode.testing import QciNetwork, start_network

LENGTH_KM = 10.0
BLOCK_BITS = 50_000  # part 3
CHAIN_BLOCK_BITS = 1_000_000  # parts 1 and 2 (--block-bits)
HOP_COUNTS = (1, 3, 5)
WARMUP_REQUESTS = 5
RETRY_AFTER_503_S = 0.05
HAMMER_BACKOFF_S = 0.01


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- topologies


def chain_topology(
    name: str, nodes: Sequence[str], saes: dict[str, list[str]], *, speed: float | str, rate_hz: float | None = None, block_bits: int = BLOCK_BITS
) -> dict[str, Any]:
    defaults: dict[str, Any] = {"postprocessing": {"block_bits": block_bits}}
    if rate_hz is not None:
        defaults["source"] = {"rate_hz": float(rate_hz)}
    return {
        "name": name,
        "defaults": defaults,
        "emulation": {"speed": speed},
        "nodes": [{"name": n, **({"saes": saes[n]} if n in saes else {})} for n in nodes],
        "links": [{"between": [a, b], "length_km": LENGTH_KM} for a, b in zip(nodes, nodes[1:])],
    }


def launch(work: Path, mapping: dict[str, Any], ready_timeout_s: float) -> QciNetwork:
    """Writes the topology and starts it; ``speed=None`` keeps the file's emulation speed."""
    topology = work / "topology-source.yaml"
    topology.write_text(yaml.safe_dump(mapping, sort_keys=False))
    return start_network(topology, work / "state", speed=None, ready_timeout_s=ready_timeout_s)


# --------------------------------------------------------------------------- a keep-alive ETSI 014 client


class KeepAliveClient:
    """An ETSI 014 client holding one HTTPS connection per KME open (HTTP/1.1 keep-alive); not thread-safe.

    Same answers as :class:`qcinode.kme.client.EtsiClient` (status, decoded
    JSON); a connection the server closed is opened again once per request.
    """

    def __init__(self, ca: Path, cert: Path, key: Path) -> None:
        self.context = ssl.create_default_context(cafile=str(ca))
        self.context.load_cert_chain(str(cert), str(key))
        self.connections: dict[str, http.client.HTTPSConnection] = {}

    def request(self, method: str, url: str, body: Any | None = None, timeout_s: float = 30.0) -> tuple[int, Any]:
        parts = urllib.parse.urlsplit(url)
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if data is not None else {}
        for attempt in (1, 2):
            conn = self.connections.get(parts.netloc)
            if conn is None:
                conn = self.connections[parts.netloc] = http.client.HTTPSConnection(parts.netloc, context=self.context, timeout=timeout_s)
            try:
                conn.request(method, parts.path + (f"?{parts.query}" if parts.query else ""), body=data, headers=headers)
                response = conn.getresponse()
                raw = response.read()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError, http.client.CannotSendRequest):
                conn.close()
                del self.connections[parts.netloc]
                if attempt == 2:
                    raise
                continue
            if response.will_close:
                conn.close()
                del self.connections[parts.netloc]
            try:
                return int(response.status), json.loads(raw or b"null")
            except ValueError:
                return int(response.status), {"message": raw.decode(errors="replace")}
        raise AssertionError("unreachable")

    def enc_keys(self, kme_url: str, slave_sae: str, number: int = 1, size_bits: int = 256) -> tuple[int, Any]:
        return self.request("POST", f"{kme_url}/api/v1/keys/{slave_sae}/enc_keys", {"number": number, "size": size_bits})

    def dec_keys(self, kme_url: str, master_sae: str, key_ids: list[str]) -> tuple[int, Any]:
        return self.request("POST", f"{kme_url}/api/v1/keys/{master_sae}/dec_keys", {"key_IDs": [{"key_ID": key_id} for key_id in key_ids]})


#: Whether parts 1 and 2 open a new connection per request (``--new-connections``).
NEW_CONNECTIONS = False
_clients = threading.local()


def client_for(network: QciNetwork, sae_id: str) -> Any:
    """This thread's client for ``sae_id``: a kept-alive connection, or EtsiClient with ``--new-connections``."""
    if NEW_CONNECTIONS:
        return network.client(sae_id)
    cache = getattr(_clients, "cache", None)
    if cache is None:
        cache = _clients.cache = {}
    if sae_id not in cache:
        creds = network.sae(sae_id)
        cache[sae_id] = KeepAliveClient(network.ca, creds.cert, creds.key)
    return cache[sae_id]


# --------------------------------------------------------------------------- helpers


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in [0, 100]); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def ms(values: Sequence[float]) -> str:
    return f"{1e3 * percentile(values, 50):8.1f} {1e3 * percentile(values, 99):8.1f}"


def scan_logs(state_dir: Path) -> tuple[dict[str, int], list[str]]:
    """Warnings, errors, tracebacks and non-JSON lines in the node logs, counted by node and event.

    Also returns, for each traceback, the node and its last line (the exception).
    """
    found: Counter[str] = Counter()
    samples: list[str] = []
    for path in sorted((state_dir / "logs").glob("*.log")):
        in_traceback = False
        last_plain = ""
        for line in path.read_text(errors="replace").splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                found[f"{path.stem}: {'traceback' if 'Traceback' in line else 'non-JSON line'}"] += 1
                in_traceback = in_traceback or "Traceback" in line
                last_plain = line.strip()
                continue
            if in_traceback:
                samples.append(f"{path.stem}: {last_plain[:200]}")
                in_traceback = False
            if not isinstance(entry, dict):
                continue
            level = entry.get("level", "info")
            event = entry.get("event", "?")
            if level in ("warning", "error", "critical") or event in ("link.session_failed", "relay.path_failed", "relay.hop_failed"):
                found[f"{path.stem}: {event} ({level})"] += 1
                if level in ("error", "critical") and entry.get("exception"):
                    samples.append(f"{path.stem}: {event}: {str(entry['exception']).strip().splitlines()[-1][:200]}")
        if in_traceback:
            samples.append(f"{path.stem}: {last_plain[:200]}")
    return dict(found), samples


def print_network_counters(status: dict[str, Any]) -> None:
    print("  per-node relay counters and ETSI 014 answers (cluster_status):")
    for name, info in status["nodes"].items():
        net = info.get("network") or {}
        if "error" in info:
            print(f"    {name}: NOT ANSWERING ({info['error']})")
            continue
        reasons = ", ".join(f"{k} {v}" for k, v in sorted((net.get("relay_failures_by_reason") or {}).items())) or "-"
        requests = ", ".join(f"{k}: {v}" for k, v in sorted((net.get("etsi014_requests") or {}).items())) or "-"
        print(
            f"    {name}: started {net.get('relays_started', 0)}, delivered {net.get('relays_delivered', 0)}, "
            f"failed {net.get('relays_failed', 0)} ({reasons}), forwarded {net.get('relays_forwarded', 0)}, "
            f"hops sent/received {net.get('relay_hops_sent', 0)}/{net.get('relay_hops_received', 0)}; ETSI: {requests}"
        )


def finish_cluster(network: QciNetwork | None, work: Path, keep: bool, label: str) -> None:
    """Stops the cluster, reports exit codes and log findings, removes the temp dir."""
    if network is not None:
        log(f"{label}: stopping the cluster")
        network.cluster.stop()
        codes = {name: proc.returncode for name, proc in network.cluster.processes.items()}
        odd = {n: c for n, c in codes.items() if c not in (0, None)}
        print(f"  node exit codes after stop: {', '.join(f'{n} {c}' for n, c in codes.items())}" + (f"  (non-zero: {odd})" if odd else ""))
    state_dir = work / "state"
    if state_dir.exists():
        findings, samples = scan_logs(state_dir)
        print("  log findings: " + (", ".join(f"{k} x{v}" for k, v in sorted(findings.items())) or "none"))
        for sample in samples[:10]:
            print(f"    exception in {sample}")
    if keep:
        log(f"{label}: state kept in {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)


# --------------------------------------------------------------------------- 1. latency


@dataclasses.dataclass(slots=True)
class LatencyResult:
    hops: int
    paused: bool = False  # measured with every link's protocol process stopped (links paused)
    enc_s: list[float] = dataclasses.field(default_factory=list)
    dec_s: list[float] = dataclasses.field(default_factory=list)
    total_s: list[float] = dataclasses.field(default_factory=list)
    enc_503: int = 0
    dec_503: int = 0
    other: Counter[str] = dataclasses.field(default_factory=Counter)
    mismatches: int = 0
    wrong_paths: Counter[str] = dataclasses.field(default_factory=Counter)


def one_key(network: QciNetwork, master: str, slave: str, result: LatencyResult | None, key_bits: int = 256) -> None:
    """enc_keys at the master's KME then dec_keys at the slave's; timings go to ``result``."""
    m, s = network.sae(master), network.sae(slave)
    t0 = time.perf_counter()
    status, enc = client_for(network, master).enc_keys(m.kme_url, slave, number=1, size_bits=key_bits)
    t1 = time.perf_counter()
    if status != 200:
        if result is not None:
            if status == 503:
                result.enc_503 += 1
            else:
                result.other[f"enc {status}: {str(enc)[:120]}"] += 1
        time.sleep(RETRY_AFTER_503_S)
        return
    ids = [k["key_ID"] for k in enc["keys"]]
    t2 = time.perf_counter()
    status, dec = client_for(network, slave).dec_keys(s.kme_url, master, ids)
    t3 = time.perf_counter()
    if result is None:
        return
    if status != 200:
        if status == 503:
            result.dec_503 += 1
        else:
            result.other[f"dec {status}: {str(dec)[:120]}"] += 1
        return
    result.enc_s.append(t1 - t0)
    result.dec_s.append(t3 - t2)
    result.total_s.append((t1 - t0) + (t3 - t2))
    if [k["key"] for k in enc["keys"]] != [k["key"] for k in dec["keys"]] or [k["key_ID"] for k in dec["keys"]] != ids:
        result.mismatches += 1
    for k in enc["keys"]:
        paths = (k.get("key_ID_extension") or {}).get("paths") or []
        if [len(p) - 1 for p in paths] != [result.hops]:
            result.wrong_paths[repr(paths)] += 1


def run_latency(network: QciNetwork, requests: int, *, paused_row: bool = True) -> list[LatencyResult]:
    results = []
    for hops in HOP_COUNTS:
        results.append(latency_row(network, requests, hops))
    if paused_row:
        hops = HOP_COUNTS[-1]
        with links_paused(network) as stopped:
            log(f"latency: {hops} hop(s) again with the links paused ({len(stopped)} protocol processes stopped)")
            results.append(latency_row(network, requests, hops, paused=True))
    return results


def latency_row(network: QciNetwork, requests: int, hops: int, *, paused: bool = False) -> LatencyResult:
    slave = f"sae-n{hops}"
    if not paused:
        log(f"latency: {hops} hop(s), sae-n0 -> {slave}: {WARMUP_REQUESTS} warm-up + {requests} requests")
    for _ in range(WARMUP_REQUESTS):
        one_key(network, "sae-n0", slave, None)
    result = LatencyResult(hops, paused=paused)
    for _ in range(requests):
        one_key(network, "sae-n0", slave, result)
    return result


def protocol_processes(network: QciNetwork) -> list[int]:
    """The PIDs of the running nodes' protocol processes."""
    running = [proc.pid for proc in network.cluster.processes.values() if proc.poll() is None]
    return [child for child in map(protocol_process, running) if child is not None]


@contextlib.contextmanager
def links_paused(network: QciNetwork) -> Iterator[list[int]]:
    """Stops every node's protocol process (SIGSTOP) for the block, and lets them go on after (SIGCONT).

    What is left running is what serves applications: each node's event loop
    (KME, relay, routing) and storage thread, with no link computing beside
    them: the relay path's own latency, the floor of the loaded figures. Link
    sessions just wait for their steps meanwhile (a pause of a few seconds
    is inside their deadlines); the pools keep the key they hold.
    """
    stopped = []
    try:
        for pid in protocol_processes(network):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
                stopped.append(pid)
        yield stopped
    finally:
        for pid in stopped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)


def connection_note() -> str:
    if NEW_CONNECTIONS:
        return "every request opens a new HTTPS+mTLS connection, as EtsiClient does"
    return "one kept-alive HTTPS+mTLS connection per client thread and KME"


def print_latency(results: Sequence[LatencyResult], requests: int) -> None:
    print(f"\n== 1. latency, chain n0..n5, 10 km links, speed max; {requests} sequential requests of 1 x 256-bit key (after {WARMUP_REQUESTS} warm-up) ==")
    print(f"   ({connection_note()}; latencies over successful requests)")
    header = (
        f"  {'hops':>4} {'pair':<16} {'ok':>4} {'enc p50':>8} {'enc p99':>8} {'dec p50':>8} {'dec p99':>8}"
        f" {'e+d p50':>8} {'e+d p99':>8} {'503 enc/dec':>12}  checks"
    )
    print(header)
    print("  " + "-" * (len(header) - 2))
    for r in results:
        checks = []
        checks.append("keys equal" if not r.mismatches else f"{r.mismatches} KEY MISMATCHES")
        checks.append("paths ok" if not r.wrong_paths else f"WRONG PATHS {dict(r.wrong_paths)}")
        if r.other:
            checks.append(f"other answers {dict(r.other)}")
        hops = f"{r.hops}*" if r.paused else str(r.hops)
        print(
            f"  {hops:>4} {'sae-n0->sae-n' + str(r.hops):<16} {len(r.total_s):>4} {ms(r.enc_s)} {ms(r.dec_s)} {ms(r.total_s)} "
            f"{r.enc_503:>6}/{r.dec_503:<5}  {'; '.join(checks)}"
        )
    print("  milliseconds; p99 is nearest-rank (with fewer than 100 samples it is the maximum or close to it)")
    if any(r.paused for r in results):
        print(
            "  * links paused: every node's protocol process stopped while measured, so the event loops (KME, relay,"
            " storage) have the machine to themselves: the relay path's own latency, the floor of the rows above"
        )


# --------------------------------------------------------------------------- 2. throughput


@dataclasses.dataclass(slots=True)
class ThroughputResult:
    number: int
    threads: int
    seconds: float = 0.0
    keys: int = 0
    requests_ok: int = 0
    requests_503: int = 0
    other: Counter[str] = dataclasses.field(default_factory=Counter)
    latencies_s: list[float] = dataclasses.field(default_factory=list)
    link_secret_bits: int = 0
    link_emulated_s: float = 0.0
    pool_bits: tuple[int, int] = (0, 0)
    total_pool_bits: tuple[int, int] = (0, 0)
    relays_delivered: int = 0
    errors: list[str] = dataclasses.field(default_factory=list)
    done_at: list[tuple[float, int]] = dataclasses.field(default_factory=list)  # (seconds into the window, keys) per answer
    relay_cpu_s: dict[str, float] = dataclasses.field(default_factory=dict)  # node -> CPU-s of the request path (relay_cpu)
    first_503_s: float = math.inf  # seconds into the window

    def before_first_503(self) -> tuple[int, float]:
        """Keys served before the first 503 and that span (the whole window if none)."""
        span = min(self.first_503_s, self.seconds)
        return sum(n for t, n in self.done_at if t <= span), span


def own_half_bits(status: dict[str, Any], node: str, link_id: str) -> int:
    """Bits ``node`` may still initiate from on ``link_id`` (its own half of the pool), from its last routing advert (<= 1 s old)."""
    origin = (((status["nodes"].get(node) or {}).get("network") or {}).get("routing") or {}).get("origins", {}).get(node) or {}
    for link in origin.get("links", []):
        if link.get("link_id") == link_id:
            return 8 * int(link.get("available_out_bytes", 0))
    return -1


def wait_for_stock(network: QciNetwork, bits: int, timeout_s: float) -> None:
    """Waits (at most ``timeout_s``) until n0's half of the n0-n1 pool holds ``bits``: part 2 measures the node, not the link."""
    deadline = time.monotonic() + timeout_s
    while True:
        have = own_half_bits(cluster_status(network.state_dir), "n0", "n0-n1")
        if have >= bits or time.monotonic() >= deadline:
            log(f"throughput: n0's half of the n0-n1 pool holds {have} bits (waited for {bits})")
            return
        time.sleep(2.0)


#: Nodes whose request-path CPU part 2 measures: the source and the destination of the one-hop relay.
CPU_NODES = ("n0", "n1")
#: Seconds of link traffic alone measured before each part-2 run, to subtract from the window's CPU.
CPU_BASELINE_S = 3.0


def request_path_cpu_s(pid: int) -> float:
    """CPU-seconds so far of a node process's threads at nice 0 (Linux /proc; NaN elsewhere).

    The links' protocol steps run in the node's protocol process (qcinode.node.protocol_worker), which
    is not counted, or in a protocol thread with a raised nice value (PROTOCOL_NICE there), which is
    skipped; what is counted is the event loop (KME, relay, link messages), the storage thread and the
    key writer.
    """
    total = 0
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[16]) == 0:  # nice (field 19 of stat)
                total += int(fields[11]) + int(fields[12])  # utime + stime (fields 14, 15)
    except OSError:
        return math.nan
    return total / os.sysconf("SC_CLK_TCK")


def relay_cpu(network: QciNetwork, window: Callable[[], None]) -> tuple[dict[str, float], float]:
    """Runs ``window()``; per node of :data:`CPU_NODES`, its request-path CPU-s in it minus what link traffic alone costs.

    The link-traffic rate is measured over :data:`CPU_BASELINE_S` just before. Returns the
    per-node figures and the window's length.
    """
    pids = {name: network.cluster.processes[name].pid for name in CPU_NODES}
    b0 = {name: request_path_cpu_s(pid) for name, pid in pids.items()}
    t0 = time.monotonic()
    time.sleep(CPU_BASELINE_S)
    b1 = {name: request_path_cpu_s(pid) for name, pid in pids.items()}
    t1 = time.monotonic()
    window()
    w1 = {name: request_path_cpu_s(pid) for name, pid in pids.items()}
    t2 = time.monotonic()
    rate = {name: (b1[name] - b0[name]) / (t1 - t0) for name in pids}
    return {name: w1[name] - b1[name] - rate[name] * (t2 - t1) for name in pids}, t2 - t1


def run_throughput(network: QciNetwork, number: int, threads: int, seconds: float) -> ThroughputResult:
    result = ThroughputResult(number, threads)
    m = network.sae("sae-n0")
    lock = threading.Lock()
    start = threading.Barrier(threads + 1)
    stop_at = [math.inf]
    t_start = [math.inf]

    def worker() -> None:
        client = client_for(network, "sae-n0")
        keys = ok = refused = 0
        other: Counter[str] = Counter()
        lat: list[float] = []
        done: list[tuple[float, int]] = []
        first_503 = math.inf
        start.wait()
        try:
            while time.monotonic() < stop_at[0]:
                t0 = time.perf_counter()
                try:
                    status, body = client.enc_keys(m.kme_url, "sae-n1", number=number, size_bits=256)
                except OSError as exc:
                    other[f"{type(exc).__name__}: {exc}"[:120]] += 1
                    time.sleep(HAMMER_BACKOFF_S)
                    continue
                dt = time.perf_counter() - t0
                if status == 200:
                    ok += 1
                    keys += len(body["keys"])
                    lat.append(dt)
                    done.append((time.monotonic() - t_start[0], len(body["keys"])))
                elif status == 503:
                    refused += 1
                    first_503 = min(first_503, time.monotonic() - t_start[0])
                    time.sleep(HAMMER_BACKOFF_S)
                else:
                    other[f"{status}: {str(body)[:120]}"] += 1
        except Exception as exc:  # noqa: BLE001 - reported
            with lock:
                result.errors.append(f"{type(exc).__name__}: {exc}")
        with lock:
            result.keys += keys
            result.requests_ok += ok
            result.requests_503 += refused
            result.other.update(other)
            result.latencies_s.extend(lat)
            result.done_at.extend(done)
            result.first_503_s = min(result.first_503_s, first_503)

    log(f"throughput: {threads} threads, number={number}, {seconds:g} s, sae-n0 -> sae-n1")
    workers = [threading.Thread(target=worker, daemon=True) for _ in range(threads)]
    statuses: list[dict[str, Any]] = []

    def window() -> None:
        statuses.append(cluster_status(network.state_dir))
        for t in workers:
            t.start()
        t_start[0] = time.monotonic()
        stop_at[0] = t_start[0] + seconds
        start.wait()
        for t in workers:
            t.join(timeout=seconds + 120)

    result.relay_cpu_s, _ = relay_cpu(network, window)
    t_end = time.monotonic()
    status_before = statuses[0]
    before = dict(status_before["links"].get("n0-n1", {}))
    status_after = cluster_status(network.state_dir)
    after = dict(status_after["links"].get("n0-n1", {}))
    result.seconds = t_end - t_start[0]
    result.link_secret_bits = int(after.get("secret_bits", 0)) - int(before.get("secret_bits", 0))
    result.link_emulated_s = float(after.get("emulated_s", 0.0)) - float(before.get("emulated_s", 0.0))
    result.pool_bits = (own_half_bits(status_before, "n0", "n0-n1"), own_half_bits(status_after, "n0", "n0-n1"))
    result.total_pool_bits = (int(before.get("alice_pool_bits") or 0), int(after.get("alice_pool_bits") or 0))
    net0, net1 = (st["nodes"]["n0"].get("network") or {} for st in (status_before, status_after))
    result.relays_delivered = int(net1.get("relays_delivered", 0)) - int(net0.get("relays_delivered", 0))
    if any(t.is_alive() for t in workers):
        result.errors.append("a client thread was still running 120 s after the window")
    return result


def print_throughput(results: Sequence[ThroughputResult]) -> None:
    print("\n== 2. keys per second served by one node: enc_keys at n0 for sae-n1 (1 hop), 256-bit keys, concurrent client threads ==")
    print(f"   (no dec_keys; a thread that gets 503 waits 10 ms; {connection_note()})")
    header = (
        f"  {'number':>6} {'threads':>7} {'window s':>8} {'keys':>7} {'keys/s':>8} {'req ok':>7} {'req/s':>7} {'503':>6} "
        f"{'p50 ms':>7} {'p99 ms':>7} {'key bits/s':>10} {'n0-n1 secret bit/s':>18} {'n0 half start->end':>20} {'both halves start->end':>23}"
    )
    print(header)
    print("  " + "-" * (len(header) - 2))
    for r in results:
        s = r.seconds or math.nan
        link_rate = r.link_secret_bits / s
        print(
            f"  {r.number:>6} {r.threads:>7} {r.seconds:>8.1f} {r.keys:>7} {r.keys / s:>8.1f} {r.requests_ok:>7} "
            f"{r.requests_ok / s:>7.1f} {r.requests_503:>6} {1e3 * percentile(r.latencies_s, 50):>7.1f} "
            f"{1e3 * percentile(r.latencies_s, 99):>7.1f} {256 * r.keys / s:>10.4g} {link_rate:>18.4g} "
            f"{r.pool_bits[0]:>9} -> {r.pool_bits[1]:<7} {r.total_pool_bits[0]:>9} -> {r.total_pool_bits[1]:<7}"
        )
        served, span = r.before_first_503()
        print(
            f"      before the first 503 ({span:.1f} s of the window, n0's half still had stock): {served} keys = "
            f"{served / span if span > 0 else math.nan:.1f} keys/s served"
        )
        if r.keys:
            cpu = ", ".join(f"{name} {1e3 * v / r.keys:.2f}" for name, v in r.relay_cpu_s.items())
            print(f"      request-path CPU per key served (ms; the node process, not its protocol process; link traffic subtracted): {cpu}")
        orphans = r.relays_delivered - r.keys
        if orphans:
            print(
                f"      {r.relays_delivered} keys were relayed to n1 in the window but only {r.keys} handed to the master: {orphans} keys\n"
                f"      ({orphans * 8 * (MAC_KEY_BYTES + 32)} bits of n0's pad) were spent for requests answered 503 (orphans at n1)"
            )
        for what, count in r.other.items():
            print(f"      other answer x{count}: {what}")
        for error in r.errors:
            print(f"      ERROR: {error}")
    print(
        "  link secret bit/s is per wall second of the window (speed max); a 256-bit key relayed over one hop spends\n"
        f"  {8 * (MAC_KEY_BYTES + 32)} bits of n0's half of the n0-n1 pool, so the link alone can feed at most\n"
        f"  (secret bit/s / 2) / {8 * (MAC_KEY_BYTES + 32)} keys/s plus what n0's half held at the start. 'n0 half' is what n0 may\n"
        "  initiate from (its routing advert, <= 1 s old); 'both halves' is the link's pool_bits as n0 sees it (n1's half is\n"
        "  not spent by traffic from n0, so it only grows). A 16-key request's keys travel together: one RelayKeys\n"
        "  message per hop (each key its own pad and tag), one ledger save at each end, one key-store transaction."
    )


# --------------------------------------------------------------------------- 3. delivered vs bottleneck


@dataclasses.dataclass(slots=True)
class RateResult:
    key_bits: int
    number: int
    rate_hz: float
    drain_s: float = 0.0
    drained_keys: int = 0
    seconds: float = 0.0
    keys: int = 0
    requests_ok: int = 0
    requests_503: int = 0
    dec_failures: Counter[str] = dataclasses.field(default_factory=Counter)
    other: Counter[str] = dataclasses.field(default_factory=Counter)
    mismatches: int = 0
    links: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)
    error: str = ""


RATE_NODES = ("m0", "m1", "m2", "m3")
RATE_LINKS = tuple(f"{a}-{b}" for a, b in zip(RATE_NODES, RATE_NODES[1:]))


def rate_client(network: QciNetwork, result: RateResult, until: float, *, count: bool) -> tuple[int, int]:
    """Requests keys until ``until`` (monotonic) or, when not counting, until the first 503.

    Returns (keys obtained, 503 answers).
    """
    m, s = network.sae("sae-a"), network.sae("sae-b")
    master, slave = network.client("sae-a"), network.client("sae-b")
    keys = refused = 0
    while time.monotonic() < until:
        try:
            status, enc = master.enc_keys(m.kme_url, "sae-b", number=result.number, size_bits=result.key_bits)
        except OSError as exc:
            result.other[f"enc {type(exc).__name__}: {exc}"[:120]] += 1
            time.sleep(RETRY_AFTER_503_S)
            continue
        if status == 503:
            refused += 1
            if not count:
                break
            time.sleep(RETRY_AFTER_503_S)
            continue
        if status != 200:
            result.other[f"enc {status}: {str(enc)[:120]}"] += 1
            time.sleep(RETRY_AFTER_503_S)
            continue
        keys += len(enc["keys"])
        if count:
            result.requests_ok += 1
        ids = [k["key_ID"] for k in enc["keys"]]
        try:
            dstatus, dec = slave.dec_keys(s.kme_url, "sae-a", ids)
        except OSError as exc:
            result.dec_failures[f"{type(exc).__name__}: {exc}"[:120]] += 1
            continue
        if dstatus != 200:
            result.dec_failures[f"{dstatus}: {str(dec)[:120]}"] += 1
        elif [k["key"] for k in dec["keys"]] != [k["key"] for k in enc["keys"]]:
            result.mismatches += 1
        elif any(len(base64.b64decode(k["key"])) * 8 != result.key_bits for k in enc["keys"]):
            result.mismatches += 1
    return keys, refused


def link_snapshot(state_dir: Path) -> tuple[float, dict[str, dict[str, Any]]]:
    """Per link of the path: its merged status plus ``own_half_bits``, what the hop's sender (Alice) may initiate from."""
    status = cluster_status(state_dir)
    now = time.monotonic()
    out = {}
    for lid in RATE_LINKS:
        view = dict(status["links"].get(lid, {}))
        view["own_half_bits"] = own_half_bits(status, lid.split("-")[0], lid)
        out[lid] = view
    return now, out


def run_rate(args: argparse.Namespace, keep: bool) -> RateResult:
    result = RateResult(key_bits=args.key_bits, number=args.rate_number, rate_hz=args.rate_hz)
    work = Path(tempfile.mkdtemp(prefix="qcinode-bench-relay-rate-"))
    network: QciNetwork | None = None
    mapping = chain_topology("bench-relay-rate", RATE_NODES, {"m0": ["sae-a"], "m3": ["sae-b"]}, speed=1.0, rate_hz=args.rate_hz)
    print(f"\n== 3. delivered key rate vs the bottleneck link: chain m0..m3 (3 hops), 10 km links, speed 1.0, rate_hz {args.rate_hz:.3g} ==")
    try:
        log(f"rate: starting 4 nodes in {work}")
        t0 = time.monotonic()
        network = launch(work, mapping, args.ready_timeout)
        log(f"rate: keys flow after {time.monotonic() - t0:.1f} s; draining the stock")
        t1 = time.monotonic()
        result.drained_keys, _ = rate_client(network, result, t1 + args.drain_timeout, count=False)
        result.drain_s = time.monotonic() - t1
        log(f"rate: drained {result.drained_keys} keys in {result.drain_s:.1f} s; measuring for {args.rate_seconds:g} s")
        w0, first = link_snapshot(network.state_dir)
        keys, refused = rate_client(network, result, w0 + args.rate_seconds, count=True)
        w1, last = link_snapshot(network.state_dir)
        result.seconds = w1 - w0
        result.keys, result.requests_503 = keys, refused
        for lid in RATE_LINKS:
            a, b = first.get(lid, {}), last.get(lid, {})
            result.links[lid] = {
                "secret_bits": int(b.get("secret_bits", 0)) - int(a.get("secret_bits", 0)),
                "emulated_s": float(b.get("emulated_s", 0.0)) - float(a.get("emulated_s", 0.0)),
                "blocks_done": int(b.get("blocks_done", 0)) - int(a.get("blocks_done", 0)),
                "blocks_aborted": int(b.get("blocks_aborted", 0)) - int(a.get("blocks_aborted", 0)),
                "pool_start": int(a.get("own_half_bits", -1)),
                "pool_end": int(b.get("own_half_bits", -1)),
                "state": b.get("state", "?"),
            }
        print_rate(result)
        print_network_counters(cluster_status(network.state_dir))
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # noqa: BLE001 - printed; the cluster is stopped below
        result.error = f"{type(exc).__name__}: {exc}"
        print(f"  ERROR: {result.error}")
    finally:
        finish_cluster(network, work, keep, "rate")
    return result


def print_rate(r: RateResult) -> None:
    s = r.seconds or math.nan
    delivered = r.keys * r.key_bits / s
    print(
        f"  stock drained before the window: {r.drained_keys} keys in {r.drain_s:.1f} s; window {r.seconds:.1f} s wall; "
        f"requests of {r.number} x {r.key_bits}-bit keys, enc_keys then dec_keys, 50 ms pause after a 503"
    )
    print(f"  delivered: {r.keys} keys in {r.requests_ok} requests ({r.requests_503} answers 503) = {delivered:.4g} key bits/s")
    if r.mismatches or r.dec_failures or r.other:
        print(f"  PROBLEMS: {r.mismatches} enc/dec key mismatches; dec_keys failures {dict(r.dec_failures)}; other answers {dict(r.other)}")
    header = (
        f"  {'link':<8} {'state':<6} {'secret bits':>11} {'emul. s':>8} {'emul/wall':>9} {'SKR bit/emul-s':>14}"
        f" {'SKR bit/wall-s':>14} {'blocks ok/ab':>12} {'Alice half bits start->end':>27}"
    )
    print(header)
    print("  " + "-" * (len(header) - 2))
    rates_emul: dict[str, float] = {}
    rates_wall: dict[str, float] = {}
    for lid, v in r.links.items():
        emul = v["emulated_s"]
        rates_emul[lid] = v["secret_bits"] / emul if emul > 0 else 0.0
        rates_wall[lid] = v["secret_bits"] / s
        print(
            f"  {lid:<8} {v['state']:<6} {int(v['secret_bits']):>11} {emul:>8.1f} {emul / s:>9.2f} {rates_emul[lid]:>14.4g} "
            f"{rates_wall[lid]:>14.4g} {int(v['blocks_done']):>6}/{int(v['blocks_aborted']):<5} {int(v['pool_start']):>13} -> {int(v['pool_end']):<11}"
        )
    if not rates_emul:
        return
    pace = sum(v["emulated_s"] for v in r.links.values()) / len(r.links) / s
    if pace < 0.8:
        print(
            f"  WARNING: the links ran at {pace:.2f} x real time, not 1.0: this host cannot emulate rate_hz {r.rate_hz:.3g} in\n"
            "  real time (try a smaller --rate-hz); compare the delivered rate with the per-wall-second bottleneck."
        )
    grew = all(v["pool_end"] > v["pool_start"] >= 0 for v in r.links.values())
    if r.requests_503 == 0 and grew:
        print(
            "  NOTE: no 503 in the window and every hop sender's half of the pool GREW: the links were not the limit;\n"
            "  delivery was bounded by the request path (client + KME + relay latency), so the ratios below are lower bounds."
        )
    mac_bits = 8 * MAC_KEY_BYTES
    overhead = 1 + mac_bits / r.key_bits
    for label, rates in (("per emulated second", rates_emul), ("per wall second", rates_wall)):
        link = min(rates, key=lambda k: rates[k])
        bottleneck = rates[link]
        ceiling = bottleneck / 2 / overhead
        ratio = delivered / bottleneck if bottleneck > 0 else math.nan
        print(
            f"  bottleneck {label}: {link} {bottleneck:.4g} bit/s; delivered / bottleneck = {ratio:.3f}; "
            f"ceiling = {bottleneck:.4g} / 2 / (1 + {mac_bits}/{r.key_bits}) = {ceiling:.4g} bit/s "
            f"(ratio {1 / 2 / overhead:.3f}); delivered / ceiling = {delivered / ceiling if ceiling > 0 else math.nan:.3f}"
        )
    print(
        "  why delivered < bottleneck: a relayed key is sent over EVERY hop as a one-time pad (key_bits of link key) plus a\n"
        f"  one-time Poly1305 key ({mac_bits} bits) per hop, so each hop's link spends key_bits + {mac_bits} bits per key_bits delivered;\n"
        "  each link's pool is split in halves and a hop's sender may initiate only from its own half, and on this chain every\n"
        "  hop is sent by the link's Alice, so only half of each link's secret key can carry relays in this direction.\n"
        f"  Ceiling = bottleneck / 2 / (1 + {mac_bits} / key_bits). At speed 1.0 emul/wall should be 1.00: a smaller figure\n"
        "  means the host cannot run the links in real time, and then the per-wall-second line is the one to compare with.\n"
        "  emulated_s advances once per finished block, so emul/wall and the rates are uncertain by about one block per link."
    )


# --------------------------------------------------------------------------- chain of six


def run_chain(args: argparse.Namespace) -> None:
    work = Path(tempfile.mkdtemp(prefix="qcinode-bench-relay-chain-"))
    network: QciNetwork | None = None
    nodes = [f"n{i}" for i in range(6)]
    saes = {"n0": ["sae-n0"], "n1": ["sae-n1"], "n3": ["sae-n3"], "n5": ["sae-n5"]}
    mapping = chain_topology("bench-relay-chain", nodes, saes, speed="max", block_bits=args.block_bits)
    try:
        log(f"chain: starting 6 nodes in {work}")
        t0 = time.monotonic()
        network = launch(work, mapping, args.ready_timeout)
        log(f"chain: every SAE pair has key after {time.monotonic() - t0:.1f} s")
        latency = run_latency(network, args.requests)
        print_latency(latency, args.requests)
        throughput = []
        for number in (1, 16):
            wait_for_stock(network, args.stock_bits, args.stock_wait)
            throughput.append(run_throughput(network, number, args.concurrency, args.seconds))
        print_throughput(throughput)
        print("\n== chain n0..n5 after parts 1 and 2 ==")
        print_network_counters(cluster_status(network.state_dir))
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # noqa: BLE001 - printed; the cluster is stopped below
        print(f"  ERROR (chain): {type(exc).__name__}: {exc}")
    finally:
        finish_cluster(network, work, args.keep, "chain")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=100, help="part 1: timed requests per hop count (after 5 warm-up)")
    p.add_argument("--concurrency", type=int, default=4, help="part 2: client threads")
    p.add_argument("--seconds", type=float, default=10.0, help="part 2: window per request size")
    p.add_argument("--rate-seconds", type=float, default=30.0, help="part 3: measuring window")
    p.add_argument(
        "--rate-hz",
        type=float,
        default=3e6,
        help="part 3: source.rate_hz of every link at speed 1.0 (default 3e6: real time on 2 busy CPUs, and the links, not the client, are the limit)",
    )
    p.add_argument("--key-bits", type=int, default=256, help="part 3: size of the keys requested")
    p.add_argument("--rate-number", type=int, default=1, help="part 3: keys per enc_keys request")
    p.add_argument("--drain-timeout", type=float, default=60.0, help="part 3: most seconds spent draining the start-up stock")
    p.add_argument("--ready-timeout", type=float, default=180.0, help="seconds to wait until every SAE pair can get a key")
    p.add_argument(
        "--block-bits", type=int, default=CHAIN_BLOCK_BITS,
        help="parts 1 and 2: the chain's postprocessing.block_bits (part 3 keeps the default)",
    )  # fmt: skip
    p.add_argument("--quick", action="store_true", help="requests 20, seconds 5, rate-seconds 10")
    p.add_argument("--skip", action="append", choices=("chain", "rate"), default=[], help="skip parts 1+2 (chain) or 3 (rate)")
    p.add_argument("--keep", action="store_true", help="keep the state directories (logs) after the run")
    p.add_argument("--stock-bits", type=int, default=800_000, help="part 2: n0's half of the n0-n1 pool to wait for before each run")
    p.add_argument("--stock-wait", type=float, default=150.0, help="part 2: most seconds to wait for that stock")
    p.add_argument("--new-connections", action="store_true", help="parts 1 and 2: a new HTTPS connection per request (as EtsiClient)")
    args = p.parse_args(argv)
    global NEW_CONNECTIONS
    NEW_CONNECTIONS = args.new_connections
    if args.quick:
        args.requests, args.seconds, args.rate_seconds = 20, 5.0, 10.0
    if args.key_bits % 8 or not 64 <= args.key_bits <= 8192:
        p.error("--key-bits must be a multiple of 8 within 64..8192 (the KME's limits)")
    print(
        f"qcinode relay bench: {os.cpu_count()} CPUs, load avg {os.getloadavg()[0]:.2f}; links {LENGTH_KM:g} km, "
        f"block_bits {args.block_bits} (part 3: {BLOCK_BITS}); requests {args.requests}, concurrency {args.concurrency}, seconds {args.seconds:g}, "
        f"rate-seconds {args.rate_seconds:g}, rate-hz {args.rate_hz:.3g}, key-bits {args.key_bits}"
    )
    started = time.monotonic()
    try:
        if "chain" not in args.skip:
            run_chain(args)
        if "rate" not in args.skip:
            run_rate(args, args.keep)
    except KeyboardInterrupt:
        log("interrupted; clusters were stopped")
        return 130
    print(f"\ntotal wall time {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
