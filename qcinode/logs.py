"""structlog set-up: JSON lines when not on a terminal, console rendering on one.

Configure once per process with :func:`configure`. Key material is never
logged: :func:`redact_secrets` replaces any field whose name says it holds a
key or a secret, whatever a caller passes.
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
