"""Soak: SAE pairs under load while nodes die and attackers come and go; then the invariants.

What it runs
------------
A topology (default: the built-in one, at its own emulation speed) as real
node processes started by the real launcher (what ``qcinode up`` runs). Then,
for ``--minutes``:

* **Load.** One client thread per ordered SAE pair (6 on the built-in
  topology) calls ``enc_keys`` at the master's KME (1 to ``--max-number``
  keys of 256 bits), then ``dec_keys`` at the slave's KME, then waits
  ``--pause-s``. Keys whose ``dec_keys`` fails (the slave's node is down,
  say) are kept and redeemed later. Every 5th key is also asked for by the
  wrong SAEs first — the master itself and the third SAE, at the slave's
  KME — which must be refused, and every 7th is redeemed a second time, which
  must be refused.
* **Kills.** Every ``--kill-every`` seconds one node (in turn) gets SIGKILL,
  stays down ``--down-s`` seconds and is restarted on the same ports and data
  directory.
* **Attacks.** Every ``--attack-every`` seconds the attacks toggle: on, one
  link (in turn) gets an eavesdropper (intercept-resend on every pulse and
  photon-number splitting, alternately; the decoy estimate exposes either and
  the link makes no key) and another link a classical fault at both ends, in
  turn (``FAULTS``): flip, drop or replay of 30 % of its relay hops, a
  partition, or flip, drop or reorder of 1 % of its post-processing messages;
  off, both are removed. A restarted node forgets runtime attacks, as a real
  one would.

At the end every attack is switched off, every node is running, the keys not
yet redeemed are redeemed (for up to ``--settle-s`` seconds), and these are
checked and printed:

1. every ``enc_keys`` key equals its ``dec_keys`` copy;
2. no key ID was delivered twice (by ``enc_keys``; ``dec_keys`` twice);
3. no key went to an SAE it was not meant for (wrong-SAE requests all refused);
4. no link-pool byte was used twice: the ledger audit across both ends of
   every link (:func:`qcinode.cluster.audit.audit_ledgers`) finds no byte used
   by one end that the other did not use first; pads of lost or refused hops
   (used only by their initiator) are counted;
5. no key was lost for a slave: every key ID ``enc_keys`` returned was
   redeemed by its slave;

with the numbers of requests served, refused with 503 and failed (connection
refused or reset because the node was down, timeouts, other statuses).
The exit status is 1 if any invariant failed.

Usage::

    python bench/soak.py --minutes 10 --kill-every 30 --attack-every 60
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import random
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from qcinode.cluster.admin import set_eavesdropper, set_fault
from qcinode.cluster.audit import audit_ledgers
from qcinode.cluster.launcher import cluster_status
from qcinode.testing import QciNetwork, start_network
from qcinode.topology import builtin_topology_path, load_topology

# The classical faults the soak switches on, in turn: (kind, channel, probability).
FAULTS: list[tuple[str, str, float]] = [
    ("flip", "relay", 0.3),
    ("drop", "relay", 0.3),
    ("replay", "relay", 0.3),
    ("partition", "all", 1.0),
    ("flip", "postprocessing", 0.01),
    ("drop", "postprocessing", 0.01),
    ("reorder", "postprocessing", 0.01),
]
NO_FAULT = ("none", "all", 1.0)


@dataclasses.dataclass
class Issued:
    master: str
    slave: str
    key: str
    redeemed: bool = False


class Soak:
    def __init__(self, network: QciNetwork, args: argparse.Namespace) -> None:
        self.net = network
        self.args = args
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.issued: dict[str, Issued] = {}
        self.counts: Counter[str] = Counter()
        self.violations: list[str] = []
        self.events: list[str] = []
        self.started = time.monotonic()
        self.topology = load_topology(network.state_dir / "topology.yaml")

    # -- bookkeeping ----------------------------------------------------
    def note(self, text: str) -> None:
        line = f"[{time.monotonic() - self.started:7.1f} s] {text}"
        with self.lock:
            self.events.append(line)
        if self.args.verbose:
            print(line, flush=True)

    def violation(self, text: str) -> None:
        with self.lock:
            self.violations.append(text)
        print(f"VIOLATION: {text}", flush=True)

    def count(self, what: str, n: int = 1) -> None:
        with self.lock:
            self.counts[what] += n

    # -- load ---------------------------------------------------------------
    def _request(self, sae: str, method: str, *args: Any) -> tuple[int, Any]:
        """An ETSI 014 call; a node that is down counts as status 0."""
        try:
            return getattr(self.net.client(sae), method)(*args)
        except OSError as exc:
            return 0, {"message": f"{type(exc).__name__}: {exc}"}

    def _redeem(self, key_id: str) -> bool:
        item = self.issued[key_id]
        status, body = self._request(item.slave, "dec_keys", self.net.sae(item.slave).kme_url, item.master, [key_id])
        if status != 200:
            self.count(f"dec_keys {status}")
            return False
        (got,) = body["keys"]
        if got["key_ID"] != key_id or got["key"] != item.key:
            self.violation(f"{item.slave} redeemed key {key_id} with different bytes than {item.master} got")
        with self.lock:
            item.redeemed = True
        self.count("keys redeemed")
        return True

    def _wrong_saes_refused(self, key_id: str) -> None:
        item = self.issued[key_id]
        slave_kme = self.net.sae(item.slave).kme_url
        for intruder in sorted(self.net.saes):
            if intruder == item.slave:
                continue
            status, body = self._request(intruder, "dec_keys", slave_kme, item.master, [key_id])
            if status == 200:
                self.violation(f"{intruder} got key {key_id} meant for {item.slave}")
            elif status != 0:
                self.count("wrong-SAE requests refused")

    def pair_worker(self, master: str, slave: str, seed: int) -> None:
        rng = random.Random(seed)
        pending: list[str] = []
        n = 0
        while not self.stop.is_set():
            pending = [k for k in pending if not self._redeem(k)]
            number = rng.randint(1, self.args.max_number)
            status, body = self._request(master, "enc_keys", self.net.sae(master).kme_url, slave, number, 256)
            self.count("requests")
            if status == 200:
                self.count("served")
                for key in body["keys"]:
                    with self.lock:
                        if key["key_ID"] in self.issued:
                            self.violation(f"key ID {key['key_ID']} delivered twice by enc_keys")
                            continue
                        self.issued[key["key_ID"]] = Issued(master, slave, key["key"])
                    self.count("keys issued")
                    n += 1
                    if n % 5 == 0:
                        self._wrong_saes_refused(key["key_ID"])
                    if not self._redeem(key["key_ID"]):
                        pending.append(key["key_ID"])
                    elif n % 7 == 0:
                        again, _ = self._request(slave, "dec_keys", self.net.sae(slave).kme_url, master, [key["key_ID"]])
                        if again == 200:
                            self.violation(f"key {key['key_ID']} redeemed twice")
                        elif again != 0:
                            self.count("second redemptions refused")
            elif status == 503:
                self.count("refused 503")
            else:
                self.count("failed")
                self.count(f"failed {status}")
            self.stop.wait(self.args.pause_s)

    # -- chaos ---------------------------------------------------------------
    def _admin(self, node: str) -> tuple[str, Path]:
        info = json.loads((self.net.state_dir / "cluster.json").read_text())
        return info["nodes"][node]["grpc"], self.net.state_dir / "certs"

    def _eve(self, link_id: str, attack: str) -> None:
        alice = self.topology.link(link_id).alice
        address, certs = self._admin(alice)
        with contextlib.suppress(Exception):  # the node may be down: it then has no attack anyway
            set_eavesdropper(address, alice, certs, link_id, attack, 1.0)

    def _fault(self, link_id: str, fault: tuple[str, str, float]) -> None:
        kind, channel, probability = fault
        for end in self.topology.link(link_id).between:
            address, certs = self._admin(end)
            with contextlib.suppress(Exception):
                set_fault(address, end, certs, link_id, kind, probability, 0.0, channel)

    def chaos(self) -> None:
        nodes = [n.name for n in self.topology.nodes]
        links = [lk.link_id for lk in self.topology.links]
        attacks = ["intercept-resend", "photon-number-splitting"]
        faults = FAULTS
        next_kill = self.started + self.args.kill_every
        next_attack = self.started + self.args.attack_every
        kills = toggles = 0
        attacked: tuple[str, str] | None = None
        while not self.stop.wait(0.2):
            now = time.monotonic()
            if self.args.kill_every and now >= next_kill:
                victim = nodes[kills % len(nodes)]
                kills += 1
                self._kill_and_restart(victim)
                next_kill = now + self.args.kill_every
            if self.args.attack_every and now >= next_attack:
                if attacked is None:
                    turn = toggles // 2  # the how-manieth time attacks go on
                    eve_link = links[turn % len(links)]
                    fault_link = links[(turn + 1) % len(links)]
                    attack, fault = attacks[turn % len(attacks)], faults[turn % len(faults)]
                    self._eve(eve_link, attack)
                    self._fault(fault_link, fault)
                    attacked = (eve_link, fault_link)
                    kind, channel, probability = fault
                    self.note(f"attack on: {attack} on {eve_link}; {kind} ({channel}, p={probability:g}) on {fault_link}")
                    self.count("attacks switched on")
                else:
                    self._eve(attacked[0], "none")
                    self._fault(attacked[1], NO_FAULT)
                    self.note(f"attack off: {attacked[0]}, {attacked[1]}")
                    attacked = None
                toggles += 1
                next_attack = now + self.args.attack_every
        if attacked is not None:
            self._eve(attacked[0], "none")
            self._fault(attacked[1], NO_FAULT)

    def _kill_and_restart(self, name: str) -> None:
        cluster = self.net.cluster
        proc = cluster.processes[name]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        self.note(f"killed {name} (pid {proc.pid})")
        self.count("kills")
        self.stop.wait(self.args.down_s)
        cluster.start_node(name)
        cluster.write_cluster_file()
        try:
            cluster.wait_healthy(timeout_s=30)
        except Exception as exc:  # noqa: BLE001 - reported, the soak goes on
            self.violation(f"{name} did not come back healthy: {exc}")
            return
        self.note(f"restarted {name} (pid {cluster.processes[name].pid})")

    # -- the end -----------------------------------------------------------
    def settle(self) -> None:
        deadline = time.monotonic() + self.args.settle_s
        while True:
            pending = [k for k, item in self.issued.items() if not item.redeemed]
            pending = [k for k in pending if not self._redeem(k)]
            if not pending or time.monotonic() > deadline:
                break
            time.sleep(1.0)

    def report(self, elapsed_s: float) -> dict[str, Any]:
        status = cluster_status(self.net.state_dir, ledger=True)
        audit = audit_ledgers(status)
        for v in audit.violations:
            self.violation(f"ledger: {v}")
        for link_id in audit.missing_ends:
            self.violation(f"ledger: an end of {link_id} did not answer the audit")
        lost = sorted(k for k, item in self.issued.items() if not item.redeemed)
        for key_id in lost:
            item = self.issued[key_id]
            self.violation(f"key {key_id} from {item.master} never redeemed by {item.slave}")
        values = [item.key for item in self.issued.values()]
        if len(set(values)) != len(values):
            self.violation("two key IDs carry the same key bytes")
        links = {
            link_id: {
                "bytes_used_at_both_ends": a.bytes_both,
                "bytes_spent_by_lost_or_refused_hops": a.bytes_initiator_only,
                "blocks_done": status["links"].get(link_id, {}).get("blocks_done"),
                "blocks_aborted": status["links"].get(link_id, {}).get("blocks_aborted"),
            }
            for link_id, a in audit.links.items()
        }
        relay = {
            name: {k: v for k, v in node.get("network", {}).items() if k.startswith("relay")}
            for name, node in status["nodes"].items()
        }
        return {
            "minutes": round(elapsed_s / 60, 2),
            "counts": dict(sorted(self.counts.items())),
            "invariants": {
                "enc_equals_dec": not any("different bytes" in v for v in self.violations),
                "no_key_id_twice": not any("twice" in v for v in self.violations),
                "no_wrong_sae_delivery": not any("meant for" in v for v in self.violations),
                "ledger_audit_clean": audit.ok,
                "no_key_lost_for_a_slave": not lost,
            },
            "violations": self.violations,
            "links": links,
            "relay": relay,
            "events": self.events,
        }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--topology", type=Path, default=builtin_topology_path())
    parser.add_argument("--speed", default=None, help="override emulation.speed (default: the topology's own)")
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--kill-every", type=float, default=30.0, help="seconds between kills (0: none)")
    parser.add_argument("--down-s", type=float, default=3.0, help="how long a killed node stays down")
    parser.add_argument("--attack-every", type=float, default=60.0, help="seconds between attack toggles (0: none)")
    parser.add_argument("--max-number", type=int, default=4, help="keys per enc_keys request: 1 to this")
    parser.add_argument("--pause-s", type=float, default=0.3, help="each pair's pause between requests")
    parser.add_argument("--settle-s", type=float, default=120.0, help="how long to keep redeeming at the end")
    parser.add_argument("--state-dir", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None, help="also write the report here")
    parser.add_argument("--verbose", action="store_true", help="print kills and attack toggles as they happen")
    args = parser.parse_args()

    state_dir = args.state_dir or Path(tempfile.mkdtemp(prefix="qcinode-soak-")) / "state"
    print(f"soak: topology {args.topology}, state {state_dir}, {args.minutes:g} min, kill every {args.kill_every:g} s, "
          f"attacks toggled every {args.attack_every:g} s", flush=True)
    network = start_network(args.topology, state_dir, speed=args.speed, ready_timeout_s=300)
    soak = Soak(network, args)
    saes = sorted(network.saes)
    pairs = [(m, s) for m in saes for s in saes if m != s]
    try:
        threads = [threading.Thread(target=soak.pair_worker, args=(m, s, i), daemon=True) for i, (m, s) in enumerate(pairs)]
        threads.append(threading.Thread(target=soak.chaos, daemon=True))
        start = time.monotonic()
        for t in threads:
            t.start()
        soak.stop.wait(args.minutes * 60)
        soak.stop.set()
        for t in threads:
            t.join(timeout=120)
        elapsed = time.monotonic() - start
        soak.settle()
        report = soak.report(elapsed)
    finally:
        network.cluster.stop()
    print(json.dumps({k: v for k, v in report.items() if k != "events"}, indent=2))
    print(f"events: {len(report['events'])} (kills and attack toggles; --verbose prints them)")
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    ok = all(report["invariants"].values()) and not report["violations"]
    print("soak: every invariant held" if ok else f"soak: {len(report['violations'])} violation(s)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
