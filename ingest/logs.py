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
_HANDLER_NAME = "ingest"


def configure_logging(fmt: LogFormat | None = None, verbose: bool = False, force: bool = False,
                      quiet_console: bool = False) -> None:
    """Configure structlog for the process.

    ``fmt`` picks the renderer; ``None`` means console on a terminal, JSON
    otherwise. ``verbose`` lowers the level from INFO to DEBUG. ``quiet_console``
    raises it to WARNING when rendering for a person (the CLI's progress and
    summary say what happened). A second call is a no-op unless ``force`` is true.
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
    if quiet_console and fmt == "console" and not verbose:
        level = logging.WARNING

    renderer: structlog.typing.Processor
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer()
    else:
        # Tracebacks arrive pre-formatted (and redacted) in "exception": print them plainly.
        renderer = structlog.dev.ConsoleRenderer(colors=_isatty(stream),
                                                 exception_formatter=structlog.dev.plain_traceback)
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    # Redaction runs last before rendering so that nothing added earlier (a
    # bound context value, a formatted traceback) can carry a secret out.
    tail: list[structlog.typing.Processor] = [
        structlog.processors.StackInfoRenderer(),
        structlog.processors.format_exc_info,
        structlog_processor,
        renderer,
    ]
    structlog.configure(
        processors=[*shared, *tail],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        context_class=dict,
        logger_factory=structlog.PrintLoggerFactory(file=_Stderr()),
        cache_logger_on_first_use=False,
    )

    # Standard-library loggers (httpx, apscheduler, ...) go through the same chain.
    handler = logging.StreamHandler(_Stderr())  # type: ignore[arg-type]
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *tail],
    ))
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # httpx logs every request URL at INFO; our own http_request event (DEBUG) replaces it.
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
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
