"""The shipped EuroQCI example, as the README runs it: keys from Malta to Brussels cross the satellite."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest


def qcinode(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "qcinode", *args], capture_output=True, text=True, timeout=timeout, check=False)


@pytest.mark.slow
def test_keys_from_malta_to_brussels_cross_the_satellite(tmp_path: Path) -> None:
    state = str(tmp_path / "state")
    passes = qcinode("passes", "--example", "euroqci", "--hours", "3", "--json")
    assert passes.returncode == 0, passes.stderr
    stations = {p["station"] for p in json.loads(passes.stdout)}
    assert {"malta", "redu"} <= stations  # both see the satellite within 3 emulated hours (108 wall s at speed 100)
    up = subprocess.Popen([sys.executable, "-m", "qcinode", "up", "--example", "euroqci", "--state-dir", state, "--refresh", "5"],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while True:
            keys = qcinode("keys", "--state-dir", state, "--from", "malta-app", "--to", "brussels-app", "-n", "2")
            if keys.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(5)  # 503 until both downlinks have had a pass: retry, as an application would
        assert keys.returncode == 0, keys.stderr
        lines = keys.stdout.splitlines()
        assert sum("match  path malta > eagle > redu > namur > brussels" in line for line in lines) == 2, keys.stdout
        status = json.loads(qcinode("status", "--state-dir", state, "--json").stdout)
        malta = status["links"]["eagle-malta"]
        assert malta["blocks_done"] >= 1 and "in_pass" in malta["channel"]
    finally:
        up.send_signal(signal.SIGINT)  # Ctrl-C: `qcinode up` stops every node and exits
        try:
            up.wait(timeout=60)
        finally:
            qcinode("down", "--state-dir", state)
