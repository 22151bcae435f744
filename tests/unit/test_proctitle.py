"""What `ps` shows as a forked process's command line (qcinode.node.proctitle)."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the command line is read from /proc on Linux")

_SCRIPT = """
import sys
from pathlib import Path
from qcinode.node.proctitle import retitle
shown = retitle(sys.argv[1].split(","))
print(shown, Path("/proc/self/cmdline").read_bytes().hex())
"""


def _retitled(words: str, *padding: str) -> tuple[bool, bytes, int]:
    """Runs a process that retitles itself as ``words``; what it said, its command line after, and its length before."""
    argv = [sys.executable, "-c", _SCRIPT, words, *padding]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=True).stdout.split()
    return out[0] == "True", bytes.fromhex(out[1]), len(b"\0".join(a.encode() for a in argv)) + 1


def test_a_process_shows_the_words_it_gives_in_the_space_of_its_arguments() -> None:
    shown, line, before = _retitled("qcinode,node,,alice,--name,alice")  # an empty word is left out
    assert shown and len(line) == before  # the same space, the rest zeroed
    assert line.rstrip(b"\0").split(b"\0") == [b"qcinode", b"node", b"alice", b"--name", b"alice"]


def test_a_line_longer_than_the_space_is_cut_and_still_ends_in_nul() -> None:
    words = ",".join(["qcinode", "node", "x" * 20_000])
    shown, line, before = _retitled(words)
    assert shown and len(line) == before and line.endswith(b"\0")
    assert line.startswith(b"qcinode\0node\0xxxx") and set(line.rstrip(b"\0")[len(b"qcinode\0node\0") :]) == {ord("x")}
