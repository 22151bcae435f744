"""What ``ps`` shows as a forked process's command line (Linux).

A node forked from the launcher's zygote, and a protocol process forked from
its node, inherit the command line of the process they were forked from: in
``ps`` every node of a cluster read ``python -m qcinode zygote --state-dir
...``, and every protocol process its node's line. The kernel reads a
process's command line (``/proc/PID/cmdline``) from the memory its arguments
were first placed in, between the addresses ``/proc/self/stat`` gives as
``arg_start`` and ``arg_end`` (proc(5), fields 48 and 49); CPython has
copied its arguments out of it at start-up and never reads it again. So a
forked process may write its own line there, within that space (a longer
one is cut), as ``setproctitle`` does without its extension module.
"""

from __future__ import annotations

import ctypes
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["retitle"]

#: Fields of ``/proc/self/stat`` after the command name's closing parenthesis that precede ``arg_start``
#: (proc(5) numbers it 48; the state, field 3, is the first after the parenthesis).
_ARG_START_AFTER_NAME = 48 - 3


def retitle(words: Sequence[str]) -> bool:
    """Shows ``words`` as this process's command line; whether it could (Linux with a readable ``/proc``).

    The words (empty ones left out) are separated by NUL bytes as a command
    line's arguments are, and cut to the space the process's original
    arguments took; the rest of that space is zeroed.
    """
    if sys.platform != "linux":
        return False
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        start, end = int(fields[_ARG_START_AFTER_NAME]), int(fields[_ARG_START_AFTER_NAME + 1])
    except (OSError, IndexError, ValueError):
        return False
    size = end - start
    if size <= 1:
        return False
    line = b"\0".join(word.encode(errors="replace") for word in words if word)[: size - 1]
    ctypes.memmove(start, line.ljust(size, b"\0"), size)
    return True
