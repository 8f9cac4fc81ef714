"""Retries, backoff, Retry-After and rate-limit headers, and how every failure is classified."""

from __future__ import annotations

import email.utils
import time
from typing import Any

import httpx
import pytest
from structlog.testing import capture_logs

from ingest.errors import (
    AuthError,
    FatalError,
    NotFoundError,
    ProtocolError,
    RateLimitedError,
    RetryableError,
)
from ingest.http import HttpClient, HttpSettings, retry_after_seconds
from tests.servers.fake_api import FakeApi, Fault, fake_api  # noqa: F401

ITEMS = [{"id": i} for i in range(5)]


def client(api: FakeApi, **settings: Any) -> HttpClient:
    base = {"backoff_initial": 0.01, "backoff_max": 0.05, "timeout": 5.0}
    return HttpClient(api.base_url, settings=HttpSettings(**{**base, **settings}), connector="acme")


@pytest.fixture
def api(fake_api: FakeApi) -> FakeApi:
    fake_api.add_json("/items", {"items": ITEMS})
    return fake_api


def gaps(api: FakeApi) -> list[float]:
    """Seconds between consecutive requests, measured on the server."""
    at = [r.at for r in api.requests]
    return [b - a for a, b in zip(at, at[1:])]


class TestTransientFaults:
    @pytest.mark.parametrize("fault", [
        Fault.error(500), Fault.error(502), Fault.unavailable(retry_after=None), Fault.reset(), Fault.truncated(),
        Fault.cut(), Fault.rate_limited(retry_after=0), Fault.status(408),
    ], ids=lambda f: f"{f.kind}-{f.status}")
    def test_a_transient_fault_is_retried_and_the_call_succeeds(self, api: FakeApi, fault: Fault) -> None:
        api.script([fault, fault])
        with client(api) as http:
            assert http.get_json("/items") == {"items": ITEMS}
            assert http.stats.requests == 3 and http.stats.retries == 2
        assert [r.fault for r in api.requests] == [fault.kind, fault.kind, None]

    def test_stats_count_requests_retries_and_throttles(self, api: FakeApi) -> None:
        api.script([Fault.error(500), Fault.rate_limited(retry_after=0), Fault.reset(), Fault.cut()])
        with client(api) as http:
            assert http.get_json("/items")["items"] == ITEMS
            assert http.stats.as_dict() == {"requests": 5, "retries": 4, "throttled": 1}

    def test_a_timeout_is_retried(self, api: FakeApi) -> None:
        """A response slower than ``timeout`` is abandoned and asked for again."""
        api.script([Fault.slow(3)])
        with client(api, timeout=0.3) as http:
            started = time.monotonic()
            assert http.get_json("/items")["items"] == ITEMS
            assert time.monotonic() - started < 2.5
            assert http.stats.retries == 1

    def test_each_retry_is_logged_with_attempt_and_wait(self, api: FakeApi) -> None:
        api.script([Fault.error(503), Fault.error(503)])
        with client(api) as http, capture_logs() as logs:
            http.get_json("/items")
        retries = [e for e in logs if e["event"] == "request_retry"]
        assert [e["attempt"] for e in retries] == [1, 2]
        assert all(e["connector"] == "acme" and e["log_level"] == "warning" for e in retries)
        assert "-> 503" in retries[0]["error"]

    def test_backoff_grows_exponentially_with_jitter(self, api: FakeApi) -> None:
        """Waits are about initial * 2**n (between half and all of it), so retries spread out."""
        api.script([Fault.error(500)] * 4)
        with client(api, backoff_initial=0.1, backoff_max=10) as http:
            http.get_json("/items")
        waits = gaps(api)
        for n, wait in enumerate(waits):
            assert 0.1 * 2 ** n / 2 * 0.9 <= wait <= 0.1 * 2 ** n + 0.5, waits


class TestGivingUp:
    @pytest.mark.parametrize("fault, error, text", [
        (Fault.error(500), RetryableError, "server error: internal error"),
        (Fault.rate_limited(retry_after=0), RateLimitedError, "rate limited by the source"),
        (Fault.reset(), RetryableError, "connection failed"),
        (Fault.truncated(), RetryableError, "connection failed"),
        (Fault.cut(), RetryableError, "invalid or truncated JSON body"),
    ], ids=["500", "429", "reset", "truncated", "cut"])
    def test_persistent_faults_fail_after_max_retries(self, api: FakeApi, fault: Fault, error: type,
                                                      text: str) -> None:
        api.fault_share(fault, 1.0)
        with client(api, max_retries=2) as http:
            with pytest.raises(error, match=text) as info:
                http.get_json("/items")
            assert http.stats.requests == 3 and http.stats.retries == 2
        assert isinstance(info.value, RetryableError)
        assert "gave up after 3 attempts" in str(info.value)
        assert f"GET {api.base_url}/items" in str(info.value)
        assert info.value.connector == "acme"
        assert len(api.requests) == 3

    def test_persistent_timeouts_fail_with_a_clear_error(self, api: FakeApi) -> None:
        api.fault_share(Fault.slow(3), 1.0)
        with client(api, timeout=0.2, max_retries=1) as http, pytest.raises(RetryableError, match="timed out") as e:
            http.get_json("/items")
        assert "gave up after 2 attempts" in str(e.value)

    def test_max_retries_zero_means_one_attempt(self, api: FakeApi) -> None:
        api.script([Fault.error(500)])
        with client(api, max_retries=0) as http, pytest.raises(RetryableError) as e:
            http.get_json("/items")
        assert "gave up" not in str(e.value)
        assert len(api.requests) == 1

    def test_a_refused_connection_is_a_retryable_error(self) -> None:
        with FakeApi() as dead:
            url = dead.base_url
        http = HttpClient(url, settings=HttpSettings(max_retries=1, backoff_initial=0.01))
        with http, pytest.raises(RetryableError, match="connection failed"):
            http.get_json("/items")


class TestFatalAnswers:
    def test_401_is_an_auth_error_and_is_not_retried(self, api: FakeApi) -> None:
        api.script([Fault.unauthorized()])
        with client(api) as http, pytest.raises(AuthError, match="refused the credentials") as e:
            http.get_json("/items")
        assert e.value.status_code == 401
        assert 'Bearer realm="fake-api"' in str(e.value)  # the challenge says why
        assert len(api.requests) == 1 and http.stats.retries == 0

    def test_403_without_rate_limit_headers_is_an_auth_error(self, api: FakeApi) -> None:
        api.script([Fault.status(403, {"message": "Resource not accessible by integration"})])
        with client(api) as http, pytest.raises(AuthError, match="Resource not accessible"):
            http.get_json("/items")
        assert len(api.requests) == 1

    def test_404_is_not_found(self, api: FakeApi) -> None:
        with client(api) as http, pytest.raises(NotFoundError, match="is the base URL right") as e:
            http.get_json("/nope")
        assert e.value.status_code == 404 and len(api.requests) == 1

    def test_html_is_a_protocol_error(self, api: FakeApi) -> None:
        api.script([Fault.html()])
        with client(api) as http, pytest.raises(ProtocolError, match="HTML page"):
            http.get_json("/items")
        assert len(api.requests) == 1

    def test_an_html_error_page_on_a_5xx_is_retried_then_described(self, api: FakeApi) -> None:
        api.fault_share(Fault.html(502), 1.0)
        with client(api, max_retries=1) as http, pytest.raises(RetryableError, match="an HTML error page"):
            http.get_json("/items")

    def test_other_4xx_are_fatal_and_carry_the_error_message(self, api: FakeApi) -> None:
        api.script([Fault.status(400, {"error": {"message": "invalid filter"}})])
        with client(api) as http, pytest.raises(FatalError, match="request rejected: invalid filter") as e:
            http.get_json("/items")
        assert not isinstance(e.value, RetryableError)

    def test_501_is_not_retried(self, api: FakeApi) -> None:
        api.script([Fault.status(501)])
        with client(api) as http, pytest.raises(FatalError) as e:
            http.get_json("/items")
        assert not isinstance(e.value, RetryableError) and len(api.requests) == 1

    def test_non_json_content_is_a_protocol_error(self, fake_api: FakeApi) -> None:
        from tests.servers.fake_api import Reply

        fake_api.route("/csv", lambda _r: Reply(200, raw=b"id,name\n1,a\n", content_type="text/csv"))
        with client(fake_api) as http, pytest.raises(ProtocolError, match="text/csv, not JSON"):
            http.get_json("/csv")


class TestRetryAfter:
    def test_429_retry_after_seconds_is_honoured(self, api: FakeApi) -> None:
        api.script([Fault.rate_limited(retry_after=1)])
        with client(api) as http:
            http.get_json("/items")
            assert http.stats.throttled == 1
        assert gaps(api)[0] >= 0.9

    def test_429_retry_after_http_date_is_honoured(self, api: FakeApi) -> None:
        api.script([Fault.rate_limited(retry_after=1, http_date=True)])
        with client(api) as http:
            http.get_json("/items")
        assert gaps(api)[0] >= 0.9

    def test_503_retry_after_is_honoured(self, api: FakeApi) -> None:
        api.script([Fault.unavailable(retry_after=1)])
        with client(api) as http:
            http.get_json("/items")
            assert http.stats.throttled == 0
        assert gaps(api)[0] >= 0.9

    def test_github_403_with_remaining_zero_waits_for_the_reset(self, api: FakeApi) -> None:
        api.script([Fault.github_rate_limited(reset_in=1)])
        with client(api) as http:
            http.get_json("/items")
            assert http.stats.throttled == 1
        assert gaps(api)[0] >= 0.9

    def test_retry_after_is_capped_by_max_retry_after(self, api: FakeApi) -> None:
        api.script([Fault.rate_limited(retry_after=120)])
        with client(api, max_retry_after=0.2) as http:
            http.get_json("/items")
        assert 0.15 <= gaps(api)[0] < 2

    def test_an_exhausted_window_on_a_success_pauses_the_next_request(self, fake_api: FakeApi) -> None:
        """``RateLimit-Remaining: 0`` with ``RateLimit-Reset: 1`` on a 200 holds the next request back."""
        fake_api.add_json("/items", {"items": []}, headers={"RateLimit-Limit": "10", "RateLimit-Remaining": "0",
                                                            "RateLimit-Reset": "1"})
        with client(fake_api) as http, capture_logs() as logs:
            http.get_json("/items")
            http.get_json("/items")
        assert gaps(fake_api)[0] >= 0.9
        assert any(e["event"] == "rate_limit_window_exhausted" for e in logs)

    def test_a_429_pauses_every_thread_of_the_client(self, api: FakeApi) -> None:
        """After a 429 with Retry-After, a request from another thread waits too."""
        import threading

        api.script([Fault.rate_limited(retry_after=1)])
        with client(api, max_concurrency=4) as http:
            first = threading.Thread(target=http.get_json, args=("/items",))
            first.start()
            deadline = time.monotonic() + 5
            while not api.requests and time.monotonic() < deadline:
                time.sleep(0.01)
            time.sleep(0.1)  # the 429 has been answered and the pause set
            http.get_json("/items")
            first.join(5)
        assert api.requests[1].at - api.requests[0].at >= 0.9


def response(status: int = 200, **headers: str) -> httpx.Response:
    return httpx.Response(status, headers={k.replace("_", "-"): v for k, v in headers.items()})


class TestRetryAfterParsing:
    NOW = 1_700_000_000.0

    @pytest.mark.parametrize("headers, status, expected", [
        ({"Retry-After": "7"}, 429, 7.0),
        ({"Retry-After": "1.5"}, 503, 1.5),
        ({"Retry-After": email.utils.formatdate(NOW + 30, usegmt=True)}, 429, 30.0),
        ({"Retry-After": email.utils.formatdate(NOW - 30, usegmt=True)}, 429, 0.0),
        ({"Retry-After": "soon"}, 429, None),
        ({"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": str(int(NOW) + 42)}, 403, 42.0),
        ({"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": str(int(NOW + 42) * 1000)}, 429, 42.0),
        ({"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "12"}, 200, 12.0),
        ({"X-RateLimit-Remaining": "3", "X-RateLimit-Reset": "12"}, 200, None),
        ({"X-RateLimit-Reset": "12"}, 429, 12.0),
        ({"X-RateLimit-Reset": "12"}, 500, None),
        ({"RateLimit-Remaining": "0", "RateLimit-Reset": "9"}, 429, 9.0),
        ({"RateLimit": "limit=100, remaining=0, reset=5"}, 429, 5.0),
        ({"RateLimit": '"default";r=0;t=8'}, 200, 8.0),
        ({"RateLimit": '"default";r=10;t=8'}, 200, None),
        ({}, 429, None),
    ])
    def test_retry_after_seconds(self, headers: dict[str, str], status: int, expected: float | None) -> None:
        got = retry_after_seconds(httpx.Response(status, headers=headers), now=self.NOW)
        assert got == (pytest.approx(expected) if expected is not None else None)


class TestTransportEdgeCases:
    def test_a_redirect_loop_is_fatal(self) -> None:
        def loop(request: httpx.Request) -> httpx.Response:
            return httpx.Response(302, headers={"Location": str(request.url) + "x"})

        http = HttpClient("http://api.test", settings=HttpSettings(), transport=httpx.MockTransport(loop))
        with http, pytest.raises(FatalError, match="too many redirects") as e:
            http.get_json("/a")
        assert not isinstance(e.value, RetryableError)

    def test_a_corrupt_compressed_body_is_retried(self) -> None:
        bodies = iter([b"not gzip at all", None])

        def handler(request: httpx.Request) -> httpx.Response:
            body = next(bodies)
            if body is None:
                return httpx.Response(200, json={"ok": True})
            return httpx.Response(200, headers={"Content-Encoding": "gzip"}, content=body)

        http = HttpClient("http://api.test", settings=HttpSettings(backoff_initial=0.01),
                          transport=httpx.MockTransport(handler))
        with http:
            assert http.get_json("/a") == {"ok": True}
            assert http.stats.retries == 1

    def test_an_empty_200_body_is_treated_as_cut_short(self) -> None:
        answers = iter([httpx.Response(200, content=b""), httpx.Response(200, json=[1])])
        http = HttpClient("http://api.test", settings=HttpSettings(backoff_initial=0.01),
                          transport=httpx.MockTransport(lambda _r: next(answers)))
        with http:
            assert http.get_json("/a") == [1]
            assert http.stats.retries == 1
