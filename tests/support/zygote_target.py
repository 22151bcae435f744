"""A zygote for tests: the real fork server and the node's imports, with small programs in place of a node.

``python -m tests.support.zygote_target [--thread]`` runs
:func:`qcinode.cluster.zygote.serve` with :func:`qcinode.cli.preload_node`
(``--thread``: a preload that also starts a thread, which the zygote must
refuse). Each forked child runs the program its argv names:

* ``exit CODE``: exits with CODE;
* ``sleep SECONDS``: sleeps, then exits 0;
* ``report PATH``: writes what the child looks like from inside (session,
  descriptors, signal handlers, working directory, a value from every source
  of randomness a node draws from) to PATH as JSON, prints a line to stdout
  and to stderr, and exits 0.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import secrets
import signal
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from qcinode.cli import preload_node
from qcinode.cluster.zygote import serve, thread_count
from qcinode.core.randomness import CsprngGenerator


def _handler_name(sig: int) -> str:
    handler = signal.getsignal(sig)
    if handler is signal.default_int_handler:
        return "default_int_handler"
    if isinstance(handler, signal.Handlers):
        return handler.name
    return repr(handler)


def report() -> dict[str, Any]:
    """The child as seen from inside, before it opens anything of its own."""
    fds = {}
    for fd in sorted(os.listdir("/proc/self/fd"), key=int):
        try:
            fds[fd] = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            pass  # the directory listing's own descriptor, closed by now
    wakeup = signal.set_wakeup_fd(-1)
    seeds = np.random.SeedSequence()
    return {
        "pid": os.getpid(),
        "sid": os.getsid(0),
        "fds": fds,
        "signals": {s.name: _handler_name(s) for s in (signal.SIGCHLD, signal.SIGINT, signal.SIGTERM, signal.SIGPIPE)},
        "wakeup_fd": wakeup,
        "cwd": os.getcwd(),
        "env": {name: value for name, value in os.environ.items() if name.startswith("QCINODE_TEST_")},
        "argv": sys.argv[1:],
        "threads": thread_count(),
        "frozen_objects": gc.get_freeze_count(),
        "random": {
            "os.urandom": os.urandom(16).hex(),
            "secrets": secrets.token_hex(16),
            "uuid4": uuid.uuid4().hex,
            "CsprngGenerator": CsprngGenerator().bytes(16).hex(),
            "SeedSequence()": str(seeds.entropy),
            "default_rng()": int(np.random.default_rng().integers(1 << 62)),
            "random.Random()": random.Random().random(),
            "random module": random.random(),
            "numpy legacy global": float(np.random.random()),
        },
    }


def run_child(argv: list[str]) -> int:
    program, *rest = argv
    if program == "exit":
        return int(rest[0])
    if program == "sleep":
        time.sleep(float(rest[0]))
        return 0
    if program == "report":
        data = report()
        Path(rest[0]).write_text(json.dumps(data))
        print(f"stdout of {os.getpid()}", flush=True)
        print(f"stderr of {os.getpid()}", file=sys.stderr, flush=True)
        return 0
    print(f"unknown program {program!r}", file=sys.stderr)
    return 2


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--control-fd", type=int, required=True)
    p.add_argument("--thread", action="store_true", help="start a thread while preloading (the zygote must refuse)")
    args = p.parse_args()

    def preload() -> None:
        preload_node()
        if args.thread:
            threading.Thread(target=time.sleep, args=(60,), daemon=True, name="left-running").start()

    argv = serve(args.control_fd, preload)
    return 0 if argv is None else run_child(argv)


if __name__ == "__main__":
    sys.exit(main())
