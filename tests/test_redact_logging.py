"""configure_logging: one chain for structlog and stdlib, redaction last before the renderer, stderr."""

from __future__ import annotations

import json
import logging

import pytest
import structlog

from ingest.logs import configure_logging
from ingest.redact import structlog_processor


def test_json_is_one_line_per_event_on_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("json", verbose=False, force=True)
    with structlog.contextvars.bound_contextvars(connector="acme", snapshot_id=7):
        structlog.get_logger().info("page_fetched", records=100)
    out = capsys.readouterr()
    assert out.out == ""
    lines = out.err.splitlines()
    assert len(lines) == 1
    event = json.loads(lines[0])
    assert event["event"] == "page_fetched" and event["records"] == 100
    assert event["level"] == "info"
    assert event["connector"] == "acme" and event["snapshot_id"] == 7
    assert event["timestamp"].endswith("Z") and "T" in event["timestamp"]


def test_info_by_default_debug_when_verbose(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("json", verbose=False, force=True)
    structlog.get_logger().debug("hidden")
    assert capsys.readouterr().err == ""
    configure_logging("json", verbose=True, force=True)
    structlog.get_logger().debug("shown")
    assert json.loads(capsys.readouterr().err)["event"] == "shown"


def test_console_format(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("console", verbose=False, force=True)
    structlog.get_logger().warning("request_retry", attempt=2)
    err = capsys.readouterr().err
    assert "request_retry" in err and "attempt=2" in err and "warning" in err
    assert not err.lstrip().startswith("{")


def test_without_a_format_a_non_terminal_gets_json(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(None, verbose=False, force=True)
    structlog.get_logger().info("hello")
    assert json.loads(capsys.readouterr().err)["event"] == "hello"


def test_redaction_is_the_last_processor_before_the_renderer() -> None:
    for fmt in ("json", "console"):
        configure_logging(fmt, verbose=False, force=True)
        processors = structlog.get_config()["processors"]
        assert processors[-2] is structlog_processor
        assert structlog.contextvars.merge_contextvars in processors


def test_stdlib_loggers_share_the_chain(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("json", verbose=False, force=True)
    logging.getLogger("apscheduler.scheduler").warning("job %s missed", "daily")
    logging.getLogger("httpx").info("HTTP Request: GET https://api/x?token=abc")  # quietened to WARNING
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1
    event = json.loads(lines[0])
    assert event == {**event, "event": "job daily missed", "level": "warning", "logger": "apscheduler.scheduler"}


def test_reconfiguring_replaces_the_handler_instead_of_stacking() -> None:
    configure_logging("json", verbose=False, force=True)
    configure_logging("console", verbose=False, force=True)
    assert [h.get_name() for h in logging.getLogger().handlers].count("ingest") == 1


def test_a_second_call_without_force_keeps_the_configuration() -> None:
    configure_logging("json", verbose=False, force=True)
    before = structlog.get_config()["processors"]
    configure_logging("console", verbose=True)
    assert structlog.get_config()["processors"] == before


def test_an_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown log format 'xml'"):
        configure_logging("xml", verbose=False, force=True)  # type: ignore[arg-type]
