"""Waiting in async tests: poll a condition until it holds, or fail after a deadline."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any


async def until(predicate: Callable[[], Any], timeout_s: float = 45.0) -> None:
    """Returns once ``predicate()`` is true (polled every 50 ms); ``TimeoutError`` after ``timeout_s``."""
    async with asyncio.timeout(timeout_s):
        while not predicate():
            await asyncio.sleep(0.05)
