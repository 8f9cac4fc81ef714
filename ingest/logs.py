"""Logging setup: structlog, one event per thing that happened, secrets masked.

``configure_logging`` is called once by the CLI (and by the test suite) before
anything logs. Every event passes through the same chain:

    contextvars merge -> level -> ISO timestamp -> exception info
    -> ingest.redact.structlog_processor (always last before rendering)
    -> ConsoleRenderer (a terminal) or JSONRenderer (one line per event)

Output goes to stderr so that command output on stdout stays machine-readable.
"""

from __future__ import annotations

import logging
import sys
from typing import Literal

import structlog

from ingest.redact import structlog_processor

__all__ = ["configure_logging"]

LogFormat = Literal["console", "json"]

_configured = False


def configure_logging(fmt: LogFormat | None = None, verbose: bool = False, force: bool = False) -> None:
    """Configure structlog for the process.

    ``fmt`` picks the renderer; ``None`` means console on a terminal, JSON
    otherwise. ``verbose`` lowers the level from INFO to DEBUG. A second call
    is a no-op unless ``force`` is true.
    """
    global _configured
    if _configured and not force:
        return
    if fmt not in (None, "console", "json"):
        raise ValueError(f"unknown log format {fmt!r}; known: console, json")
    stream = sys.stderr
    if fmt is None:
        fmt = "console" if _isatty(stream) else "json"
    level = logging.DEBUG if verbose else logging.INFO

    renderer: structlog.typing.Processor
    processors: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
    ]
    if fmt == "json":
        processors.append(structlog.processors.format_exc_info)
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=_isatty(stream))
    # Redaction runs last before rendering so that nothing added above (a
    # bound context value, a formatted traceback) can carry a secret out.
    processors.append(structlog_processor)
    processors.append(renderer)

    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(level),
        context_class=dict,
        logger_factory=structlog.PrintLoggerFactory(file=_Stderr()),
        cache_logger_on_first_use=False,
    )
    _configured = True


class _Stderr:
    """Whatever ``sys.stderr`` is at write time (test runners swap it)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def _isatty(stream: object) -> bool:
    try:
        return bool(stream.isatty())  # type: ignore[attr-defined]
    except (AttributeError, ValueError):
        return False
