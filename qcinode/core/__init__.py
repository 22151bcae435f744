"""Pure protocol logic: synchronous, deterministic given an injected rng.

Nothing in this package may import asyncio, grpc, structlog or
``qcinode.transport``; ``tests/unit/test_layering.py`` enforces it.
"""
