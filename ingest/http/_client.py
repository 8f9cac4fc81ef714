"""The one HTTP client factory: timeouts, User-Agent, limits, retries, redaction, read-only guard."""

from __future__ import annotations

import email.utils
import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urljoin

import httpx
import structlog
import tenacity

from ingest import __version__
from ingest.errors import (
    AuthError,
    FatalError,
    NotFoundError,
    ProtocolError,
    RateLimitedError,
    ReadOnlyViolation,
    RetryableError,
)
from ingest.http._paginators import PageRequest, Paginator, SinglePage, json_path
from ingest.http._settings import HttpSettings, HttpStats
from ingest.redact import redact, redact_url

__all__ = ["HttpClient", "RateLimiter", "retry_after_seconds"]

log = structlog.get_logger("ingest.http")
_READ_METHODS = frozenset({"GET", "HEAD"})


def retry_after_seconds(response: httpx.Response, now: float | None = None) -> float | None:
    """Seconds the source asks us to wait: ``Retry-After`` (seconds or HTTP date), else the reset
    of an exhausted ``X-RateLimit-*`` / ``RateLimit-*`` window (epoch seconds or a delta)."""
    now = time.time() if now is None else now
    h = response.headers
    value = h.get("Retry-After")
    if value:
        value = value.strip()
        if value.isdigit():
            return float(value)
        try:
            return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - now)
        except (TypeError, ValueError):
            pass
    remaining = h.get("X-RateLimit-Remaining") or h.get("RateLimit-Remaining")
    reset = h.get("X-RateLimit-Reset") or h.get("RateLimit-Reset") or h.get("X-Rate-Limit-Reset")
    if reset is not None and (remaining is None or remaining.strip() == "0" or response.status_code == 429):
        try:
            r = float(reset)
        except ValueError:
            return None
        return max(0.0, r - now) if r > 1e9 else r
    return None


class RateLimiter:
    """A token bucket shared by the threads of one client, plus a pause the source can impose."""

    def __init__(self, per_second: float | None) -> None:
        self.interval = 1.0 / per_second if per_second else 0.0
        self._next = 0.0
        self._pause_until = 0.0
        self._lock = threading.Lock()

    def pause(self, seconds: float) -> None:
        with self._lock:
            self._pause_until = max(self._pause_until, time.monotonic() + seconds)

    def acquire(self) -> None:
        with self._lock:
            now = time.monotonic()
            slot = max(now, self._next, self._pause_until)
            self._next = slot + self.interval
        if slot > now:
            time.sleep(slot - now)


class _ReadOnlyTransport(httpx.BaseTransport):
    """Refuses any method but GET/HEAD, except to token endpoints and declared read-only queries."""

    def __init__(self, inner: httpx.BaseTransport, allowed: Callable[[httpx.Request], bool]) -> None:
        self.inner, self.allowed = inner, allowed

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.method not in _READ_METHODS and not self.allowed(request):
            raise ReadOnlyViolation(
                f"refused {request.method} {redact_url(request.url)}: ingest never writes to a source"
            )
        return self.inner.handle_request(request)

    def close(self) -> None:
        self.inner.close()


class HttpClient:
    """An HTTP client for one connector. Build it with ``ConnectorContext.http_client``."""

    def __init__(
        self,
        base_url: str,
        *,
        settings: HttpSettings | None = None,
        connector: str | None = None,
        stats: HttpStats | None = None,
        auth: httpx.Auth | None = None,
        headers: dict[str, str] | None = None,
        read_only_queries: tuple[str, ...] = (),
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.settings = s = settings or HttpSettings()
        self.connector = connector
        self.stats = stats or HttpStats()
        self.base_url = base_url.rstrip("/") + "/"
        token_urls = {u for u in (getattr(auth, "token_url", None),) if u}
        self._write_ok = tuple(urljoin(self.base_url, q.lstrip("/")) for q in read_only_queries) + tuple(token_urls)
        verify: Any = s.verify_ssl
        if s.verify_ssl and s.ca_bundle:
            import ssl

            verify = ssl.create_default_context(cafile=s.ca_bundle)
        inner = transport or httpx.HTTPTransport(
            verify=verify, proxy=s.proxy, limits=httpx.Limits(max_connections=s.max_concurrency)
        )
        self._client = httpx.Client(
            auth=auth,
            headers={"User-Agent": f"ingest/{__version__}", "Accept": "application/json", **(headers or {})},
            timeout=httpx.Timeout(s.timeout, connect=s.connect_timeout),
            transport=_ReadOnlyTransport(inner, self._allowed),
            follow_redirects=True,
        )
        self._slots = threading.BoundedSemaphore(s.max_concurrency)
        self.limiter = RateLimiter(s.requests_per_second)

    def _allowed(self, request: httpx.Request) -> bool:
        url = str(request.url).split("?", 1)[0]
        return any(url == u.split("?", 1)[0] for u in self._write_ok)

    def url(self, path: str) -> str:
        return path if path.startswith(("http://", "https://")) else urljoin(self.base_url, path.lstrip("/"))

    # -- one request -------------------------------------------------------
    def _send_once(self, method: str, url: str, params: dict | None, **kw: Any) -> httpx.Response:
        line = f"{method} {redact_url(httpx.URL(url, params=params or {}))}"
        self.limiter.acquire()
        self.stats.add("requests")
        with self._slots:
            try:
                response = self._client.request(method, url, params=params, **kw)
            except httpx.TimeoutException as e:
                raise RetryableError(f"timed out ({type(e).__name__})", request=line, connector=self.connector)
            except httpx.TransportError as e:
                raise RetryableError(f"connection failed: {redact(str(e)) or type(e).__name__}",
                                     request=line, connector=self.connector)
        self._classify(response, line)
        return response

    def _classify(self, response: httpx.Response, line: str) -> None:
        code = response.status_code
        wait = retry_after_seconds(response)
        remaining = response.headers.get("X-RateLimit-Remaining") or response.headers.get("RateLimit-Remaining")
        if 200 <= code < 300:
            if wait and remaining is not None and remaining.strip() == "0":
                self.limiter.pause(min(wait, self.settings.max_retry_after))
            return
        kw = {"request": f"{line} -> {code}", "connector": self.connector, "status_code": code}
        detail = redact(response.text[:300].strip()) if response.content else ""
        if code == 429 or (code == 403 and remaining is not None and remaining.strip() == "0"):
            self.stats.add("throttled")
            raise RateLimitedError("rate limited by the source", retry_after=wait, **kw)
        if code >= 500 or code == 408:
            raise RetryableError(f"server error{': ' + detail if detail else ''}", retry_after=wait, **kw)
        if code in (401, 403):
            raise AuthError(f"the source refused the credentials{': ' + detail if detail else ''}", **kw)
        if code == 404:
            raise NotFoundError(f"not found (is the base URL right?){': ' + detail if detail else ''}", **kw)
        raise FatalError(f"request rejected{': ' + detail if detail else ''}", **kw)

    def _wait(self, state: tenacity.RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, RetryableError) and exc.retry_after is not None:
            return min(exc.retry_after, self.settings.max_retry_after)
        return tenacity.wait_exponential_jitter(initial=self.settings.backoff_initial,
                                                max=self.settings.backoff_max)(state)

    def _before_sleep(self, state: tenacity.RetryCallState) -> None:
        self.stats.add("retries")
        exc = state.outcome.exception()
        log.warning("request_retry", connector=self.connector, attempt=state.attempt_number,
                    error=str(exc), sleep=round(state.upcoming_sleep, 3))

    def _retrying(self) -> tenacity.Retrying:
        return tenacity.Retrying(
            retry=tenacity.retry_if_exception_type(RetryableError),
            stop=tenacity.stop_after_attempt(self.settings.max_retries + 1),
            wait=self._wait,
            before_sleep=self._before_sleep,
            reraise=True,
        )

    def request(self, method: str, path: str, params: dict | None = None, **kw: Any) -> httpx.Response:
        """Send with retries on RetryableError; returns a 2xx response or raises."""
        url = self.url(path)
        return self._retrying()(self._send_once, method.upper(), url, params, **kw)

    def _get_parsed(self, method: str, url: str, params: dict | None, **kw: Any) -> tuple[httpx.Response, Any]:
        def attempt() -> tuple[httpx.Response, Any]:
            response = self._send_once(method, url, params, **kw)
            return response, self._parse(response, method, url)

        return self._retrying()(attempt)

    def _parse(self, response: httpx.Response, method: str, url: str) -> Any:
        line = f"{method} {redact_url(url)}"
        ctype = response.headers.get("content-type", "")
        if "html" in ctype:
            raise ProtocolError("the source answered with an HTML page, not JSON (is the base URL right?)",
                                request=line, connector=self.connector)
        try:
            return json.loads(response.content)
        except ValueError:
            raise RetryableError(f"invalid or truncated JSON body ({len(response.content)} bytes)",
                                 request=line, connector=self.connector) from None

    def get_json(self, path: str, params: dict | None = None) -> Any:
        return self._get_parsed("GET", self.url(path), params)[1]

    def post_json(self, path: str, json_body: Any = None, params: dict | None = None) -> Any:
        """POST to an endpoint the connector declared in ``read_only_queries`` (e.g. a search API)."""
        return self._get_parsed("POST", self.url(path), params, json=json_body)[1]

    # -- pages ---------------------------------------------------------------
    def paginate(
        self,
        path: str,
        *,
        paginator: Paginator | None = None,
        selector: str | Callable[[Any], list] | None = None,
        params: dict[str, Any] | None = None,
    ) -> Iterator[list[Any]]:
        """Yield each page's records; the paginator decides where the next page is."""
        pager = (paginator or SinglePage()).fresh()
        request = PageRequest(self.url(path), dict(params or {}))
        pager.init_request(request)
        while True:
            response, data = self._get_parsed("GET", request.url, request.params)
            records = selector(data) if callable(selector) else json_path(data, selector)
            if records is None:
                records = []
            if not isinstance(records, list):
                raise ProtocolError(f"expected a list at {selector!r}, got {type(records).__name__}",
                                    request=f"GET {redact_url(request.url)}", connector=self.connector)
            log.debug("page_fetched", connector=self.connector, url=redact_url(request.url), records=len(records))
            pager.update_state(response, data, records)
            yield records
            if not pager.has_next:
                return
            pager.update_request(request)

    def records(self, path: str, **kw: Any) -> Iterator[Any]:
        for page in self.paginate(path, **kw):
            yield from page

    def close(self) -> None:
        self._client.close()
