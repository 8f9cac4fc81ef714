"""Cancellation is bounded (issue 7 item 6): a run's ``timeout``, Ctrl-C on ``ingest run`` and SIGTERM on
the daemon hold while a request sleeps on ``Retry-After: 3600``; the snapshot ends ``failed`` (timeout) or
``interrupted``, never ``running``. Real child processes, a loopback source that only ever answers 429.

The time bounds are generous correctness bounds (a run that ignores its token sleeps 300 s per retry),
not performance figures.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ingest.errors import Cancelled
from ingest.http import CancelToken, HttpClient, HttpSettings, OffsetPaginator, RateLimiter
from tests.engine import query
from tests.servers.fake_api import FakeApi, Reply
from tests.test_daemon import past_daily
from tests.test_daemon import write_config as daemon_config
from tests.test_daemon_processes import DaemonProcess

ROOT = Path(__file__).resolve().parent.parent
ENTRY = "from ingest.cli import main; main()"
BOUND = 60.0  # seconds: a correctness bound (a child interpreter starting on a loaded machine)


@pytest.fixture
def throttling() -> Iterator[FakeApi]:
    """A SCIM base URL whose every answer is 429 with Retry-After: 3600."""
    with FakeApi() as api:
        for path in ("/scim/v2/ServiceProviderConfig", "/scim/v2/Users", "/scim/v2/Groups"):
            api.route(path, lambda _r: Reply(429, {"detail": "slow down"}, {"Retry-After": "3600"}))
        yield api


def scim(api: FakeApi, **extra) -> dict:
    return {"type": "scim", "settings": {"base_url": api.url("/scim/v2"), "max_retries": 3},
            "auth": {"bearer_token": "tok-cancel-1"}, **extra}


def snapshots(database_url: str) -> list[dict]:
    return query(database_url, "SELECT status, error, trigger FROM ingest.snapshots WHERE connector = 'acme' "
                               "ORDER BY snapshot_id")


def wait_for(fn, what: str, timeout: float = BOUND) -> None:
    deadline = time.monotonic() + timeout
    while not fn():
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {timeout} s")
        time.sleep(0.05)


def ingest_run(cfg: Path, database_url: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", ENTRY, "--config", str(cfg), "--database-url", database_url,
                             "--log-format", "json", "run", "acme"],
                            cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen) -> tuple[int, float, str]:
    started = time.monotonic()
    try:
        out, err = proc.communicate(timeout=BOUND + 10)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"the process did not stop:\n{err[-3000:]}") from None
    return proc.returncode, time.monotonic() - started, out + err


def test_a_run_timeout_holds_while_the_source_asks_to_wait_an_hour(tmp_path, database_url, throttling):
    cfg = tmp_path / "schedules.yaml"
    cfg.write_text(json.dumps({"connectors": {"acme": scim(throttling, timeout=2)}}))
    code, _, text = finish(ingest_run(cfg, database_url))
    ended = time.monotonic()
    assert code == 1, text
    took = ended - throttling.requests[0].at  # from the first request (not the process start-up)
    assert took < BOUND, f"took {took:.1f} s"
    print(f"\ntimeout 2 s under Retry-After: 3600: the process ended {took:.1f} s after its first request")
    [snap] = snapshots(database_url)
    assert snap["status"] == "failed" and "timed out after 2 s" in snap["error"]
    assert len(throttling.requests) >= 1


def test_ctrl_c_on_ingest_run_marks_the_snapshot_interrupted_and_exits_non_zero(tmp_path, database_url,
                                                                               throttling):
    cfg = tmp_path / "schedules.yaml"
    cfg.write_text(json.dumps({"connectors": {"acme": scim(throttling)}}))
    proc = ingest_run(cfg, database_url)
    try:
        wait_for(lambda: len(throttling.requests) >= 1, "request")
        time.sleep(0.3)  # now sleeping on Retry-After
        proc.send_signal(signal.SIGINT)
        code, took, text = finish(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert code == 130, text
    assert took < BOUND
    print(f"\nCtrl-C under Retry-After: 3600: exit 130 after {took:.1f} s")
    [snap] = snapshots(database_url)
    assert snap["status"] == "interrupted" and "Ctrl-C" in snap["error"], snap


def test_sigterm_on_the_daemon_interrupts_a_run_sleeping_on_retry_after_and_exits_0(tmp_path, database_url,
                                                                                   throttling):
    cfg = daemon_config(tmp_path, {"acme": scim(throttling, schedule=past_daily(2))}, grace_period=1)
    d = DaemonProcess(cfg, database_url)
    try:
        d.wait_event("run_started", connector="acme")
        wait_for(lambda: len(throttling.requests) >= 1, "request")
        time.sleep(0.3)
        d.signal(signal.SIGTERM)
        t0 = time.monotonic()
        assert d.wait(timeout=BOUND + 10) == 0, "".join(d.raw[-20:])
        took = time.monotonic() - t0
    finally:
        d.stop()
    assert took < BOUND
    print(f"\nSIGTERM (grace_period 1 s) under Retry-After: 3600: exit 0 after {took:.1f} s")
    assert [s["status"] for s in snapshots(database_url)] == ["interrupted"]
    assert d.find("shutdown_finished", stuck_runs=[])


# -- the token inside the HTTP layer (in process) -----------------------------------------------------

def test_a_single_request_sleeping_on_retry_after_stops_with_the_token(throttling):
    token = CancelToken()
    http = HttpClient(throttling.url("/scim/v2"), settings=HttpSettings(max_retries=3), cancel=token)
    threading.Timer(0.5, token.cancel, kwargs={"message": "stop now"}).start()
    t0 = time.monotonic()
    with http, pytest.raises(Cancelled, match="stop now"):
        http.get_json("Users")
    assert time.monotonic() - t0 < 5
    assert len(throttling.requests) == 1


def test_the_rate_limiter_and_the_look_ahead_stop_with_the_token() -> None:
    limiter = RateLimiter(None)
    limiter.pause(3600)
    token = CancelToken(deadline=time.monotonic() + 0.3)
    t0 = time.monotonic()
    limiter.acquire(token)
    assert time.monotonic() - t0 < 2 and token.reason == ("timed out", "failed")

    with FakeApi() as api:
        def offsets(req):
            offset = int(req.query.get("offset", 0))
            if offset == 0:
                return Reply(200, {"items": [{"id": i} for i in range(10)], "total": 100})
            return Reply(429, {}, {"Retry-After": "3600"})

        api.route("/items", offsets)
        token = CancelToken(deadline=time.monotonic() + 1)
        http = HttpClient(api.base_url, settings=HttpSettings(max_concurrency=4), cancel=token)
        t0 = time.monotonic()
        with http, pytest.raises(Cancelled) as e:
            list(http.records("/items", paginator=OffsetPaginator(limit=10, total_path="total"), selector="items"))
        assert time.monotonic() - t0 < 5
        assert e.value.status == "failed"


def test_a_request_has_an_overall_deadline() -> None:
    """A source that trickles its answer never holds a request past request_deadline."""
    with FakeApi() as api:
        api.route("/slow", lambda _r: Reply(200, {"items": ["x" * 50] * 40}, chunk_delay=0.2))
        http = HttpClient(api.base_url, settings=HttpSettings(request_deadline=1, max_retries=0))
        t0 = time.monotonic()
        with http, pytest.raises(Exception, match="request_deadline"):
            http.get_json("/slow")
        assert time.monotonic() - t0 < 5
