"""One SAE looping ``enc_keys`` as fast as it can against a second SAE pair on the same path.

What is measured
----------------
Two real node processes (``qcinode.testing.start_network``: what ``qcinode
up`` runs), ``west`` and ``east``, one 10 km link at ``emulation: {speed:
max}``, ``postprocessing: {block_bits: 50000}``. Two SAE pairs share the
path: ``hog-app`` -> ``hog-peer`` and ``polite-app`` -> ``polite-peer``.

For ``--seconds`` (default 20): ``--hog-threads`` threads (default 4) call
``enc_keys`` for ``--hog-number`` keys of 256 bits (default 8) at
``hog-app``'s KME back to back, never waiting (on a 503 they ask again at
once); one thread asks one 256-bit key for ``polite-app`` every
``--polite-interval`` seconds (default 0.25) and redeems it with
``dec_keys`` at ``polite-peer``'s KME. Both run once with the topology's
``kme.fair_share: false`` (only the network's own up-front refusal) and once
with the default ``kme.fair_share: true``.

Printed per run: the polite pair's requests, how many were served (its
share of what it asked for), its p50 latency, its 503 messages (first
three); the hog's keys per second and 503 count (split into fair-share
refusals and others); the link's secret key rate in the same window.

How to run
----------
::

    python bench/fairness.py [--seconds 20] [--hog-threads 4] [--hog-number 8] [--polite-interval 0.25]

It needs two free CPU cores for the numbers to mean much; it asserts
nothing.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

from qcinode.cluster.launcher import cluster_status
from qcinode.testing import QciNetwork, start_network

TOPOLOGY = """
name: fairness
defaults:
  postprocessing: {{block_bits: 50000}}
emulation: {{speed: max}}
kme: {{fair_share: {fair}}}
nodes:
  - {{name: west, saes: [hog-app, polite-app]}}
  - {{name: east, saes: [hog-peer, polite-peer]}}
links:
  - {{between: [west, east], length_km: 10}}
"""


def run(fair: bool, seconds: float, hog_threads: int, hog_number: int, polite_interval: float) -> dict[str, object]:
    """One contest; returns the figures."""
    tmp = Path(tempfile.mkdtemp(prefix="qcinode-fairness-"))
    try:
        topology = tmp / "topology.yaml"
        topology.write_text(TOPOLOGY.format(fair="true" if fair else "false"))
        net = start_network(topology, tmp / "state", ready_timeout_s=120)
        try:
            return _contest(net, seconds, hog_threads, hog_number, polite_interval)
        finally:
            net.cluster.stop()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _contest(net: QciNetwork, seconds: float, hog_threads: int, hog_number: int, polite_interval: float) -> dict[str, object]:
    halt = threading.Event()
    hog_keys = Counter[str]()
    hog_refusals = Counter[str]()
    polite: list[tuple[int, float, str]] = []  # (status, latency_s, message)

    def hog() -> None:
        client = net.client("hog-app")
        url = net.sae("hog-app").kme_url
        while not halt.is_set():
            status, body = client.enc_keys(url, "hog-peer", number=hog_number)
            if status == 200:
                hog_keys["keys"] += len(body["keys"])
            else:
                hog_refusals["fair_share" if "fair share" in str(body.get("message")) else "other"] += 1

    def polite_pair() -> None:
        client, peer = net.client("polite-app"), net.client("polite-peer")
        url, peer_url = net.sae("polite-app").kme_url, net.sae("polite-peer").kme_url
        while not halt.is_set():
            started = time.perf_counter()
            status, body = client.enc_keys(url, "polite-peer", number=1)
            latency = time.perf_counter() - started
            if status == 200:
                (key,) = body["keys"]
                dec_status, dec = peer.dec_keys(peer_url, "polite-app", [key["key_ID"]])
                ok = dec_status == 200 and dec["keys"][0]["key"] == key["key"]
                polite.append((200 if ok else dec_status, latency, "" if ok else "dec_keys failed"))
            else:
                polite.append((status, latency, str(body.get("message"))))
            halt.wait(polite_interval)

    before = cluster_status(net.state_dir)["links"]["west-east"]
    threads = [threading.Thread(target=hog, daemon=True) for _ in range(hog_threads)] + [threading.Thread(target=polite_pair, daemon=True)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    time.sleep(seconds)
    halt.set()
    for thread in threads:
        thread.join(timeout=60)
    elapsed = time.monotonic() - started
    after = cluster_status(net.state_dir)["links"]["west-east"]
    served = [p for p in polite if p[0] == 200]
    return {
        "polite_asked": len(polite),
        "polite_served": len(served),
        "polite_p50_ms": 1000 * statistics.median(p[1] for p in served) if served else float("nan"),
        "polite_refusals": [p[2] for p in polite if p[0] != 200][:3],
        "hog_keys_per_s": hog_keys["keys"] / elapsed,
        "hog_refusals": dict(hog_refusals),
        "link_secret_kbit_per_s": (after["secret_bits"] - before["secret_bits"]) / elapsed / 1000,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--hog-threads", type=int, default=4)
    parser.add_argument("--hog-number", type=int, default=8)
    parser.add_argument("--polite-interval", type=float, default=0.25)
    args = parser.parse_args()
    for fair in (False, True):
        figures = run(fair, args.seconds, args.hog_threads, args.hog_number, args.polite_interval)
        share = figures["polite_served"] / max(1, figures["polite_asked"])  # type: ignore[operator]
        print(f"kme.fair_share: {str(fair).lower()}")
        print(f"  polite pair: {figures['polite_served']} of {figures['polite_asked']} requests served ({share:.0%}), p50 {figures['polite_p50_ms']:.0f} ms")
        if figures["polite_refusals"]:
            print(f"    refused, e.g.: {figures['polite_refusals']}")
        print(f"  hog: {figures['hog_keys_per_s']:.1f} keys/s, refusals {figures['hog_refusals']}")
        print(f"  link secret key growth: {figures['link_secret_kbit_per_s']:.1f} kbit/s")


if __name__ == "__main__":
    main()
