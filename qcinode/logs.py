"""structlog set-up: JSON lines when not on a terminal, console rendering on one.

Configure once per process with :func:`configure`. Key material is never
logged: :func:`redact_secrets` replaces any field whose name says it holds a
key or a secret, whatever a caller passes. Records of the standard
``logging`` module (aiohttp, asyncio, grpc's Python side) go through the same
renderer, so every line of a node's log is one JSON object: a traceback is a
field of its line, never lines of its own.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

_SECRET_FIELDS = frozenset({"key", "keys", "secret", "key_bytes", "secret_key", "psk", "auth_key"})


def redact_secrets(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """A structlog processor that blanks fields that could hold key material."""
    for name in list(event_dict):
        if name.lower() in _SECRET_FIELDS:
            event_dict[name] = "[redacted]"
    return event_dict


def configure(level: str = "info", json: bool | None = None) -> None:
    """Configures structlog for this process.

    Args:
        level: minimum level name.
        json: force JSON (True) or console (False) output; default: JSON unless
            stderr is a terminal.
    """
    if json is None:
        json = not sys.stderr.isatty()
    renderer: Any = structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer()
    numeric_level = logging.getLevelNamesMapping()[level.upper()]
    # The standard library's loggers: the same renderer, exceptions formatted into the line.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[
                structlog.stdlib.add_log_level,
                structlog.stdlib.add_logger_name,
                structlog.processors.TimeStamper(fmt="iso", utc=True),
                redact_secrets,
            ],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(max(numeric_level, logging.WARNING))  # libraries say little worth a line below that
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            redact_secrets,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level.upper()]),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
