"""Fuzz the ETSI GS QKD 014 API and every gRPC method of a real node.

What is run
-----------
* **ETSI 014.** A real KME server (``make_app`` + ``start_kme_server``, real
  TLS certificates, a real :class:`~qcinode.keys.keystore.SaeKeyStore` holding
  a few keys) on 127.0.0.1 port 0, with a key supplier that counts its calls
  and always refuses (503). Hypothesis generates request targets (valid and
  junk SAE IDs, traversal attempts, percent-encoded unicode), query strings,
  JSON bodies (random JSON, wrong types, huge numbers, deep nesting, NaN,
  invalid UTF-8), oversized bodies and wrong content types, sent by a raw
  HTTP/1.1 client over mutual TLS as SAE ``alice-app``, ``bob-app``, the node
  or the admin. Every answer must be 200 (``status`` only) or 400 / 401 / 404
  / 405 / 503 with a JSON body carrying a ``message``; no 4xx may have reached
  the supplier; the key store must be unchanged.
* **gRPC.** Two real nodes (``alpha`` transmits, ``beta`` receives) linked
  over mTLS on 127.0.0.1 port 0, growing key. Random and mutated protobuf
  bytes go to every method of both nodes (through generic
  ``unary_unary`` / ``stream_stream`` callables with identity serializers),
  as the neighbour node, an SAE, the admin, or with a certificate of another
  CA; PostProcessing.Session also gets out-of-order ClassicalMessage
  sequences. Every call must end with a gRPC status before its deadline; the
  link-pool ledgers (``used_bytes`` and ``audit()``) at both ends and the SAE
  key stores must be unchanged, and the nodes healthy.

Run ``python bench/fuzz.py [--etsi N] [--grpc N] [--seed S]``; it prints the
examples tried, crashes (server not answering / node unhealthy), key material
consumed (bytes) and per-status counts. ``tests/integration/test_fuzz.py``
uses the same generators and targets (``tests/support/fuzz.py``) with a
bounded number of examples.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

# The targets and generators are the test suite's (tests/support/fuzz.py): run from a checkout.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.fuzz import (  # noqa: E402
    ACCEPTED_GRPC,
    ENDED_WHILE_WRITING,
    EtsiTarget,
    GrpcTarget,
    HttpRequest,
    etsi_fuzz_one,
    grpc_examples,
    http_requests,
    out_of_order_sessions,
)

# ================================================================ runner ====


async def run_bench(etsi_n: int, grpc_n: int, seed: int) -> dict[str, Any]:
    """Run the fuzzers; returns the statistics printed by ``main``."""
    from hypothesis import seed as hypothesis_seed

    stats: dict[str, Any] = {"etsi": Counter(), "grpc": Counter(), "etsi_problems": [], "grpc_problems": [], "crashes": 0, "consumed": 0}
    loop = asyncio.get_running_loop()
    bench_settings = settings(
        max_examples=1, deadline=None, database=None, phases=[Phase.generate], suppress_health_check=list(HealthCheck)
    )

    def draw_many(strategy: st.SearchStrategy[Any], n: int) -> list[Any]:
        """N examples from hypothesis's own engine (not ``.example()``)."""
        out: list[Any] = []

        @hypothesis_seed(seed)
        @settings(bench_settings, max_examples=n)
        @given(strategy)
        def collect(value: Any) -> None:
            out.append(value)

        collect()
        return out

    with tempfile.TemporaryDirectory(prefix="qcinode-fuzz-") as tmp:
        etsi = EtsiTarget(Path(tmp) / "etsi")
        await etsi.start()
        try:
            started = time.perf_counter()
            requests = await loop.run_in_executor(None, draw_many, http_requests(), etsi_n)
            for request in requests:
                answer, problem = await etsi_fuzz_one(etsi, request)
                stats["etsi"][answer.status if answer.status is not None else f"no answer ({answer.error.split(':')[0]})"] += 1
                if problem is not None:
                    stats["etsi_problems"].append((request, problem))
                    if not await etsi.alive():
                        stats["crashes"] += 1
            stats["etsi_tried"] = len(requests)
            stats["etsi_s"] = time.perf_counter() - started
            stats["etsi_supplier_calls"] = etsi.supplier.deliver_calls
            for identity in (None, "other-ca"):
                answer = await etsi.send(HttpRequest("GET", "/api/v1/keys/bob-app/status", [], None, identity))
                stats[f"etsi_tls_{identity or 'no-cert'}"] = "refused at TLS" if answer.status is None else f"HTTP {answer.status}"
            stats["etsi_alive"] = await etsi.alive()
        finally:
            await etsi.stop()

        grpc_target = GrpcTarget(Path(tmp) / "grpc")
        await grpc_target.start()
        try:
            started = time.perf_counter()
            before = grpc_target.snapshot()
            examples = await loop.run_in_executor(None, draw_many, grpc_examples(), grpc_n)
            sessions = await loop.run_in_executor(None, draw_many, out_of_order_sessions(), max(grpc_n // 10, 1))
            for example in examples:
                code = await grpc_target.call(example.identity, example.node, example.method, example.messages)
                stats["grpc"][code] += 1
                if code not in ACCEPTED_GRPC:
                    stats["grpc_problems"].append((example, code))
            for messages in sessions:
                code = await grpc_target.call("alpha", "beta", "/qcinode.v1.PostProcessing/Session", messages)
                stats["grpc"][f"session-out-of-order {code}"] += 1
                if code not in ("FAILED_PRECONDITION", "PERMISSION_DENIED", ENDED_WHILE_WRITING):
                    stats["grpc_problems"].append((messages, code))
            big = await grpc_target.call("beta-app", "beta", "/qcinode.v1.Admin/Status", [b"\0" * (70 * 1024 * 1024)])
            stats["grpc_70MB"] = big
            after = grpc_target.snapshot()
            stats["consumed"] += after.consumed_since(before)
            stats["ledgers_unchanged"] = after.same_as(before)
            stats["grpc_tried"] = len(examples) + len(sessions) + 1
            for node in grpc_target.nodes:
                if not await grpc_target.healthy(node):
                    stats["crashes"] += 1
            done = grpc_target.rt("beta").counters.blocks_done
            try:
                await grpc_target.until(lambda: grpc_target.rt("beta").counters.blocks_done >= done + 2, 60)
                stats["link_grows_after"] = True
            except TimeoutError:
                stats["link_grows_after"] = False
                stats["crashes"] += 1
            stats["grpc_s"] = time.perf_counter() - started
        finally:
            await grpc_target.stop()
    return stats


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--etsi", type=int, default=2000, help="ETSI 014 examples (default 2000)")
    parser.add_argument("--grpc", type=int, default=500, help="gRPC examples (default 500)")
    parser.add_argument("--seed", type=int, default=0, help="hypothesis seed (default 0)")
    args = parser.parse_args(argv)
    import logging

    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    stats = asyncio.run(run_bench(args.etsi, args.grpc, args.seed))
    print(
        f"ETSI 014: {stats['etsi_tried']} examples in {stats['etsi_s']:.1f} s; "
        f"supplier.deliver called {stats['etsi_supplier_calls']} time(s) (all answered 503)"
    )
    print("  statuses: " + ", ".join(f"{k}: {v}" for k, v in sorted(stats["etsi"].items(), key=lambda kv: str(kv[0]))))
    print(
        f"  no client certificate: {stats['etsi_tls_no-cert']}; certificate of another CA: {stats['etsi_tls_other-ca']};"
        f" server alive after: {stats['etsi_alive']}"
    )
    print(f"  rule violations: {len(stats['etsi_problems'])}")
    for request, problem in stats["etsi_problems"][:10]:
        print(f"    {problem}\n      {request!r}"[:600])
    print(f"gRPC: {stats['grpc_tried']} examples in {stats['grpc_s']:.1f} s")
    print("  statuses: " + ", ".join(f"{k}: {v}" for k, v in sorted(stats["grpc"].items())))
    print(f"  70 MB request: {stats['grpc_70MB']}; link grows key after: {stats['link_grows_after']}; ledgers unchanged: {stats['ledgers_unchanged']}")
    print(f"  rule violations: {len(stats['grpc_problems'])}")
    for example, code in stats["grpc_problems"][:10]:
        print(f"    {code}: {example!r}"[:600])
    print(f"examples tried: {stats['etsi_tried'] + stats['grpc_tried']}")
    print(f"crashes: {stats['crashes']}")
    print(f"key material consumed: {stats['consumed']} bytes")
    bad = stats["crashes"] or stats["consumed"] or stats["etsi_problems"] or stats["grpc_problems"] or not stats["ledgers_unchanged"]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
