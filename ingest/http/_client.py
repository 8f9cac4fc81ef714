"""The one HTTP client factory: timeouts, User-Agent, limits, retries, redaction, read-only guard.

Every response is classified once (:meth:`HttpClient._classify`)::

    2xx                                   ok (an exhausted rate-limit window pauses the client)
    429, 403 with a rate limit at zero    RateLimitedError  (retried after Retry-After / reset)
    403 with Retry-After (GitHub)         RateLimitedError
    408, 5xx except 501                   RetryableError    (retried with backoff, or Retry-After)
    401, 403                              AuthError
    404                                   NotFoundError
    anything else                         FatalError
    connection errors, timeouts,
    a truncated or cut JSON body          RetryableError
    TLS certificate not trusted           FatalError (retrying will not fix it)
    HTML, or another non-JSON type        ProtocolError

Only ``RetryableError`` is retried, at most ``max_retries`` times, waiting
``Retry-After`` (capped by ``max_retry_after``) when the source names a wait,
else an exponential backoff with jitter.
"""

from __future__ import annotations

import email.utils
import functools
import json
import logging
import os
import random
import re
import ssl
import threading
import time
from array import array
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from urllib.parse import urljoin

import httpx
import orjson
import structlog
import tenacity

from ingest import __version__
from ingest.errors import (
    AuthError,
    Cancelled,
    ConfigError,
    FatalError,
    IngestError,
    ListingChangedError,
    NotFoundError,
    ProtocolError,
    RateLimitedError,
    ReadOnlyViolation,
    RetryableError,
    SourceError,
)
from ingest.http._cancel import CancelToken, current_token
from ingest.http._fetcher import END, Fetcher
from ingest.http._paginators import PageRequest, Paginator, SinglePage, json_path
from ingest.http._readonly import READ_METHODS, ReadOnlyRequests, compile_read_only, is_read_only
from ingest.http._settings import HttpSettings, HttpStats
from ingest.http._transport import Transport
from ingest.pages import light_decode
from ingest.pages import loads as _loads
from ingest.redact import redact, redact_url, register_secret

__all__ = ["HttpClient", "RateLimiter", "retry_after_seconds"]

log = structlog.get_logger("ingest.http")
_EPOCH = 1e9  # a reset value above this is a Unix time, below it a number of seconds


def _number(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return float(value.strip())
    except ValueError:
        return None


def _structured_ratelimit(value: str | None) -> tuple[float | None, float | None]:
    """``RateLimit: limit=100, remaining=0, reset=30`` (draft -07) or ``"default";r=0;t=30`` (draft -08+)."""
    if not value:
        return None, None
    fields = dict(re.findall(r"\b(remaining|reset|r|t)\s*=\s*(\d+(?:\.\d+)?)", value))
    remaining = fields.get("remaining", fields.get("r"))
    reset = fields.get("reset", fields.get("t"))
    return _number(remaining), _number(reset)


def _rate_limit(response: httpx.Response) -> tuple[float | None, float | None]:
    """(remaining, reset) from the rate-limit headers the source sends, if any."""
    h = response.headers
    remaining = _number(h.get("X-RateLimit-Remaining") or h.get("RateLimit-Remaining")
                        or h.get("X-Rate-Limit-Remaining"))
    reset = _number(h.get("X-RateLimit-Reset") or h.get("RateLimit-Reset") or h.get("X-Rate-Limit-Reset"))
    if remaining is None and reset is None:
        remaining, reset = _structured_ratelimit(h.get("RateLimit"))
    return remaining, reset


def retry_after_seconds(response: httpx.Response, now: float | None = None) -> float | None:
    """Seconds the source asks us to wait, or None when it names no wait.

    ``Retry-After`` first (delta seconds or an HTTP date, RFC 9110 §10.2.3);
    else, when the rate-limit window is exhausted (remaining 0) or the answer
    is a 429, its reset: ``X-RateLimit-Reset`` as epoch seconds (GitHub; epoch
    milliseconds are recognised too) or a delta, ``RateLimit-Reset`` as a
    delta (IETF draft), or the ``reset``/``t`` of a structured ``RateLimit``.
    """
    now = time.time() if now is None else now
    value = response.headers.get("Retry-After")
    if value:
        seconds = _number(value)
        if seconds is not None:
            return max(0.0, seconds)
        try:
            when = email.utils.parsedate_to_datetime(value.strip())
            return max(0.0, when.timestamp() - now)
        except (TypeError, ValueError, IndexError, OverflowError):
            pass
    remaining, reset = _rate_limit(response)
    if reset is None or not (remaining == 0 or response.status_code == 429):
        return None
    if reset > _EPOCH * 1000:  # epoch milliseconds
        reset = reset / 1000.0
    return max(0.0, reset - now) if reset > _EPOCH else max(0.0, reset)


class RateLimiter:
    """Spaces requests to ``per_second`` across the threads of one client; the source can impose a pause."""

    def __init__(self, per_second: float | None) -> None:
        self.interval = 1.0 / per_second if per_second else 0.0
        self._next = 0.0
        self._pause_until = 0.0
        self._pace_interval = 0.0
        self._pace_until = 0.0
        self._lock = threading.Lock()

    def pause(self, seconds: float) -> None:
        """Hold every request of this client back for ``seconds`` (a 429, an exhausted window)."""
        with self._lock:
            self._pause_until = max(self._pause_until, time.monotonic() + max(0.0, seconds))

    def pace(self, remaining: float, reset_in: float) -> bool:
        """Spread the ``remaining`` requests of a nearly used-up window over the ``reset_in`` seconds
        left of it, so the window is not exhausted (Okta, GitHub); the spacing lasts until the reset.
        Returns True when this starts pacing (it was not pacing before)."""
        if remaining <= 0 or reset_in <= 0:
            return False
        with self._lock:
            now = time.monotonic()
            started = now >= self._pace_until
            self._pace_interval = reset_in / remaining
            self._pace_until = now + reset_in
        return started

    def acquire(self, cancel: CancelToken | threading.Event | None = None) -> float:
        """Wait for this request's slot (or until ``cancel`` is set); returns the seconds waited."""
        with self._lock:
            now = time.monotonic()
            slot = max(now, self._next, self._pause_until)
            paced = self._pace_interval if slot < self._pace_until else 0.0
            self._next = slot + max(self.interval, paced)
        if slot > now:
            if cancel is None:
                time.sleep(slot - now)
            else:
                cancel.wait(slot - now)
        return max(0.0, slot - now)


def _without_query(url: httpx.URL | str) -> str:
    # an httpx.URL is already parsed and normalised: cut its text (parsing a long next-page link again, twice a
    # request, was a good part of the connector's CPU)
    text = str(url if isinstance(url, httpx.URL) else httpx.URL(str(url)))
    return text.split("#", 1)[0].split("?", 1)[0]


_DEFAULT_PORTS = {"http": 80, "https": 443}


def origin(url: httpx.URL | str) -> tuple[str, str, int | None]:
    """(scheme, host, port) of a URL, the port made explicit: what "the same origin" compares."""
    u = url if isinstance(url, httpx.URL) else httpx.URL(str(url))
    return u.scheme, u.host, u.port or _DEFAULT_PORTS.get(u.scheme)


def _origin_text(o: tuple[str, str, int | None]) -> str:
    return f"{o[0]}://{o[1]}:{o[2]}"


def _tls_failure(exc: BaseException) -> ssl.SSLCertVerificationError | None:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, ssl.SSLCertVerificationError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


class _Cookies(httpx.Cookies):
    """The client's cookie jar, skipping responses that set no cookie.

    httpx hands every response to urllib's cookie machinery (compatibility request and response
    objects, the URL parsed again), Set-Cookie or not: 11 % of the client's CPU for a small GET
    (a SCIM fan-out sends one per group). Cookies a source does set are kept and sent as before.
    """

    def extract_cookies(self, response: httpx.Response) -> None:
        if "set-cookie" in response.headers:
            super().extract_cookies(response)


class HttpClient:
    """An HTTP client for one connector. Build it with ``ConnectorContext.http_client``.

    ``read_only_requests`` is the connector class's declaration of the
    non-GET/HEAD requests that only read (``Connector.read_only_requests``:
    ``(method, path regex[, body regex])``, see :mod:`ingest.http._readonly`;
    ``ConnectorContext.http_client`` passes it): those, on the origin of
    ``base_url``, and a POST to the auth's ``token_url`` are the only requests
    other than GET/HEAD the client lets out. Any other is refused before it is
    sent.

    Every request (redirects, next-page links, absolute URLs and the auth
    flow's own requests included) goes to the origin of ``base_url`` (scheme,
    host and port) or is a POST to the auth's ``token_url``: credentials are
    never sent to an origin the connector did not name, and never over http
    when ``base_url`` is https.

    ``classify`` reads a source's own error answers before the generic rules:
    it returns the error to raise (e.g. a ``RateLimitedError`` with the wait
    the source's documentation prescribes) or None to leave the answer to them.
    """

    def __init__(
        self,
        base_url: str,
        *,
        settings: HttpSettings | None = None,
        connector: str | None = None,
        stats: HttpStats | None = None,
        auth: httpx.Auth | None = None,
        headers: dict[str, str] | None = None,
        read_only_requests: ReadOnlyRequests = (),
        transport: httpx.BaseTransport | None = None,
        cancel: CancelToken | None = None,
        classify: Callable[[httpx.Response], IngestError | None] | None = None,
    ) -> None:
        self.settings = s = settings or HttpSettings()
        self.cancel = cancel  # the run's token: every wait and every request of this client obeys it
        self.connector = connector
        self.stats = stats or HttpStats()
        self.base_url = base_url.rstrip("/") + "/"
        self._source_classify = classify  # a source's own reading of its answers (GitHub's secondary limits)
        if isinstance(auth, httpx.BasicAuth):
            register_secret(str(getattr(auth, "_auth_header", "")).partition(" ")[2])
        token_urls = [u for u in (getattr(auth, "token_url", None),) if u]
        self._token_urls = frozenset(_without_query(self.url(u)) for u in token_urls)
        compile_read_only(read_only_requests)  # a malformed declaration fails here, not at the first request
        self._read_only_requests = read_only_requests
        self.origin = origin(self.base_url)
        if transport is None:
            transport = self._transport(s)
        self._client = httpx.Client(
            auth=auth,
            headers={"User-Agent": f"ingest/{__version__}", "Accept": "application/json", **(headers or {})},
            timeout=httpx.Timeout(s.timeout, connect=s.connect_timeout),
            transport=transport,
            follow_redirects=True,
            max_redirects=5,
            event_hooks={"request": [self._guard], "response": [self._same_origin_redirects]},
        )
        if type(getattr(self._client, "_cookies", None)) is httpx.Cookies:  # see _Cookies
            self._client._cookies = _Cookies()
        self._slots = threading.BoundedSemaphore(s.max_concurrency)
        self.limiter = RateLimiter(s.requests_per_second)

    def _token(self) -> CancelToken | None:
        """The token a call obeys when it names none: the one in effect (a fetcher task's, the run's), else
        the client's own."""
        return current_token() or self.cancel

    def _transport(self, s: HttpSettings) -> httpx.BaseTransport:
        verify: ssl.SSLContext | bool = s.verify_ssl
        if s.verify_ssl and s.ca_bundle:
            path = os.path.expanduser(s.ca_bundle)
            try:
                if os.path.isdir(path):
                    verify = ssl.create_default_context(capath=path)
                else:
                    verify = ssl.create_default_context(cafile=path)
            except (OSError, ssl.SSLError) as e:
                raise ConfigError(f"ca_bundle {s.ca_bundle!r} cannot be loaded: {e}", connector=self.connector) from None
        elif not s.verify_ssl:
            log.warning("tls_verification_disabled", connector=self.connector)
        if not s.proxy:  # the wire without a proxy: http.client's connections (see ingest.http._transport)
            return Transport(verify, max_keepalive=s.max_concurrency)
        register_secret(httpx.URL(s.proxy).password if "://" in s.proxy else None)
        try:
            return httpx.HTTPTransport(verify=verify, proxy=s.proxy,
                                       limits=httpx.Limits(max_connections=s.max_concurrency,
                                                           max_keepalive_connections=s.max_concurrency))
        except (ValueError, TypeError, httpx.InvalidURL) as e:
            raise ConfigError(f"proxy {redact_url(s.proxy)!r} is not usable: {redact(str(e))}",
                              connector=self.connector) from None

    # -- guards (run for every request httpx sends: auth flows and redirects too) ---
    def _declared_read_only(self, request: httpx.Request) -> bool:
        try:
            body: bytes | None = request.content
        except httpx.RequestNotRead:  # a streamed body: only a declaration without a body pattern can match it
            body = None
        path = request.url.raw_path.split(b"?", 1)[0].decode("ascii", "replace")
        return is_read_only(self._read_only_requests, request.method, path, body)

    def _guard(self, request: httpx.Request) -> None:
        target = origin(request.url)
        read = request.method in READ_METHODS
        token_url = ((not read or target != self.origin) and bool(self._token_urls)
                     and _without_query(request.url) in self._token_urls)
        if not read and not (request.method == "POST" and token_url) and not self._declared_read_only(request):
            raise ReadOnlyViolation(
                f"refused {request.method} {redact_url(request.url)}: ingest never writes to a source "
                "(a request that only reads is declared in the connector class's read_only_requests)",
                connector=self.connector,
            )
        if target != self.origin and not token_url:
            downgrade = self.origin[0] == "https" and target[0] == "http"
            raise FatalError(
                f"refused {request.method} {redact_url(request.url)}: "
                + ("https -> http downgrade; " if downgrade else "")
                + f"it is not on the origin of base_url ({_origin_text(self.origin)}), so the credentials "
                "would leave it",
                connector=self.connector,
            )

    def _same_origin_redirects(self, response: httpx.Response) -> None:
        if response.has_redirect_location:
            source = response.request.url
            target = source.join(response.headers["Location"])
            if origin(target) != origin(source):
                downgrade = source.scheme == "https" and target.scheme == "http"
                raise FatalError(
                    f"refusing to follow a redirect to another origin ({redact_url(target)}"
                    + (", an https -> http downgrade" if downgrade else "")
                    + "): scheme, host and port must stay the same",
                    request=f"{response.request.method} {redact_url(source)} -> {response.status_code}",
                    connector=self.connector, status_code=response.status_code,
                )

    def url(self, path: str) -> str:
        """``path`` under ``base_url`` (a leading slash does not escape it); absolute URLs pass through."""
        return path if path.startswith(("http://", "https://")) else urljoin(self.base_url, path.lstrip("/"))

    # -- one request -------------------------------------------------------
    def _send_once(self, method: str, url: str, params: dict | None,
                   cancel: CancelToken | threading.Event | None = None, **kw: Any) -> httpx.Response:
        cancel = cancel if cancel is not None else self._token()
        try:
            target = httpx.URL(url)
            if params:  # merge: httpx would replace a query string already in the URL (a next-page link)
                target = target.copy_merge_params(params)
            request = self._client.build_request(method, target, **kw)
        except httpx.InvalidURL as e:
            raise FatalError(f"invalid URL: {redact(str(e))}", request=f"{method} {redact_url(url)}",
                             connector=self.connector) from None
        def line() -> str:  # redacted when needed (an error, a debug event): most requests never need it
            return f"{method} {redact_url(request.url)}"

        self._guard(request)  # before counting or waiting: a refused request never leaves
        self.limiter.acquire(cancel)
        _stop_if_cancelled(cancel)
        while not self._slots.acquire(timeout=0.1):  # a turn for a connection, or the run stops
            _stop_if_cancelled(cancel)
        try:
            _stop_if_cancelled(cancel)  # the stream stopped while this page waited its turn
            self.stats.add("requests")
            started = time.monotonic()
            deadline = started + self.settings.request_deadline
            try:
                response = self._client.send(request, stream=True)
                try:
                    # the whole answer within request_deadline; the run's token looked at between chunks
                    # (the run's token, not a look-ahead's: a page already in flight is still read)
                    response.stream = _BoundedStream(response.stream, deadline, self.cancel,
                                                     self.settings.request_deadline)
                    response.read()
                finally:
                    response.close()
            except httpx.TimeoutException as e:
                raise RetryableError(f"timed out ({type(e).__name__})", request=line(),
                                     connector=self.connector) from None
            except (httpx.UnsupportedProtocol, httpx.LocalProtocolError) as e:
                raise FatalError(f"cannot send the request: {redact(str(e))}", request=line(),
                                 connector=self.connector) from None
            except httpx.TransportError as e:
                tls = _tls_failure(e)
                if tls is not None:
                    raise FatalError(
                        f"TLS certificate verification failed: {redact(tls.verify_message or str(tls))}; "
                        "set ca_bundle to the CA that signed the server's certificate",
                        request=line(), connector=self.connector,
                    ) from None
                raise RetryableError(f"connection failed: {redact(str(e)) or type(e).__name__}",
                                     request=line(), connector=self.connector) from None
            except httpx.TooManyRedirects:
                raise FatalError("too many redirects", request=line(), connector=self.connector) from None
            except httpx.DecodingError as e:  # a corrupt compressed body: a cut connection, most likely
                raise RetryableError(f"could not decode the body: {redact(str(e))}", request=line(),
                                     connector=self.connector) from None
            except _TooSlow:
                raise RetryableError(f"the answer took longer than request_deadline "
                                     f"({self.settings.request_deadline:g} s)", request=line(),
                                     connector=self.connector) from None
        finally:
            self._slots.release()
        if _debug_enabled():
            log.debug("http_request", connector=self.connector, request=line(), status=response.status_code,
                      ms=round((time.monotonic() - started) * 1000, 1))
        self._classify(response, line)
        return response

    def _classify(self, response: httpx.Response, line: Callable[[], str]) -> None:
        """Raise the ingest error a response means (``line()``: the request, redacted); pace on rate limits."""
        code = response.status_code
        if self._source_classify is not None:
            error = self._source_classify(response)
            if error is not None:
                error.connector = error.connector or self.connector
                error.request = error.request or f"{line()} -> {code}"
                if isinstance(error, SourceError):
                    error.status_code = error.status_code or code
                if isinstance(error, RateLimitedError):
                    self.stats.add("throttled")
                raise error
        remaining, _ = _rate_limit(response)
        if 200 <= code < 300:  # the rate-limit headers read once; the wait only when the window is spent
            if remaining == 0:
                wait = retry_after_seconds(response)
                if wait:
                    log.info("rate_limit_window_exhausted", connector=self.connector, wait=round(wait, 3))
                    self.limiter.pause(min(wait, self.settings.max_retry_after))
            elif remaining is not None and remaining > 0:
                self._pace(response, remaining)
            return
        wait = retry_after_seconds(response)
        kw: dict[str, Any] = {"request": f"{line()} -> {code}", "connector": self.connector, "status_code": code}
        detail = _detail(response)
        if code == 429 or (code == 403 and (remaining == 0 or "Retry-After" in response.headers)):
            self.stats.add("throttled")
            raise RateLimitedError(f"rate limited by the source{detail}", retry_after=wait, **kw)
        if code == 408 or (code >= 500 and code != 501):
            raise RetryableError(f"server error{detail}", retry_after=wait, **kw)
        if code in (401, 403):
            challenge = response.headers.get("WWW-Authenticate")
            extra = f" ({redact(challenge)})" if challenge else ""
            raise AuthError(f"the source refused the credentials{extra}{detail}", **kw)
        if code == 404:
            raise NotFoundError(f"not found (is the base URL right?){detail}", **kw)
        raise FatalError(f"request rejected{detail}", **kw)

    def _pace(self, response: httpx.Response, remaining: float) -> None:
        """Below a reserve of the window (twice the concurrency, or a tenth of ``X-Rate-Limit-Limit``),
        space the requests left over the time until the window resets instead of running into a 429."""
        limit = _number(response.headers.get("X-Rate-Limit-Limit") or response.headers.get("X-RateLimit-Limit"))
        reserve = max(2 * self.settings.max_concurrency, (limit or 0) / 10)
        if remaining > reserve:
            return
        _, reset = _rate_limit(response)
        if reset is None:
            return
        reset_in = max(0.0, reset - time.time()) if reset > _EPOCH else reset
        reset_in = min(reset_in, self.settings.max_retry_after)
        if reset_in > 0 and self.limiter.pace(remaining, reset_in):
            log.info("rate_limit_pacing", connector=self.connector, remaining=remaining,
                     interval=round(reset_in / remaining, 3))

    def _wait(self, state: tenacity.RetryCallState) -> float:
        s = self.settings
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, RetryableError) and exc.retry_after is not None:
            wait = min(exc.retry_after, s.max_retry_after)
        else:
            base = min(s.backoff_max, s.backoff_initial * 2 ** (state.attempt_number - 1))
            wait = base / 2 + random.uniform(0, base / 2)  # "equal jitter": spread out, never zero
        if isinstance(exc, RateLimitedError):
            self.limiter.pause(wait)  # the whole client waits, not just this thread
        return wait

    def _before_sleep(self, state: tenacity.RetryCallState) -> None:
        self.stats.add("retries")
        exc = state.outcome.exception() if state.outcome else None
        log.warning("request_retry", connector=self.connector, attempt=state.attempt_number,
                    error=str(exc), sleep=round(state.upcoming_sleep, 3))

    def _with_retries(self, fn: Callable[[], Any], cancel: CancelToken | threading.Event | None = None) -> Any:
        cancel = cancel if cancel is not None else self._token()
        _stop_if_cancelled(cancel)
        try:  # the first attempt, without building the retry machinery (most requests need no second)
            return fn()
        except RetryableError as e:
            failed: RetryableError | None = e
        attempts = 0

        def attempt() -> Any:
            nonlocal attempts, failed
            attempts += 1
            if failed is not None:  # tenacity sees the first attempt's failure as its own first attempt
                error, failed = failed, None
                raise error
            _stop_if_cancelled(cancel)
            return fn()

        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception_type(RetryableError),
            stop=tenacity.stop_after_attempt(self.settings.max_retries + 1),
            wait=self._wait,
            before_sleep=self._before_sleep,
            sleep=cancel.wait if cancel is not None else time.sleep,  # a stopped stream stops waiting
            reraise=True,
        )
        try:
            return retrying(attempt)
        except RetryableError as e:
            if attempts > 1:
                e.message = f"{e.message} (gave up after {attempts} attempts)"
            raise

    def request(self, method: str, path: str, params: dict | None = None, **kw: Any) -> httpx.Response:
        """Send with retries on RetryableError; returns a 2xx response or raises an ingest error."""
        url, method = self.url(path), method.upper()
        return self._with_retries(lambda: self._send_once(method, url, params, **kw))

    def _get_parsed(self, method: str, url: str, params: dict | None,
                    cancel: CancelToken | threading.Event | None = None,
                    **kw: Any) -> tuple[httpx.Response, Any]:
        def attempt() -> tuple[httpx.Response, Any]:
            response = self._send_once(method, url, params, cancel, **kw)
            data = self._parse(response, lambda: f"{method} {redact_url(response.request.url)}")
            # httpx keeps a Response <-> stream reference cycle: without this, every page body
            # stays in memory until the cyclic GC runs (122 MB -> 69 MB peak at 2M records).
            response.stream = httpx.ByteStream(b"")
            return response, data

        return self._with_retries(attempt, cancel)

    def _parse(self, response: httpx.Response, line: Callable[[], str]) -> Any:
        if response.status_code == 204:
            return None
        ctype = response.headers.get("content-type", "").lower()
        head = response.content[:256].lstrip().lower()
        if "html" in ctype or head.startswith((b"<!doctype html", b"<html")):
            raise ProtocolError("the source answered with an HTML page, not JSON (is the base URL right?)",
                                request=line(), connector=self.connector, status_code=response.status_code)
        try:
            return _loads(response.content)
        except ValueError:
            if ctype and "json" not in ctype and response.content:
                raise ProtocolError(f"the source answered with {ctype.split(';')[0]}, not JSON",
                                    request=line(), connector=self.connector,
                                    status_code=response.status_code) from None
            raise RetryableError(f"invalid or truncated JSON body ({len(response.content)} bytes)",
                                 request=line(), connector=self.connector) from None

    def get_json(self, path: str, params: dict | None = None) -> Any:
        """GET and parse JSON (retried as a whole when the body is cut short)."""
        return self._get_parsed("GET", self.url(path), params)[1]

    def post_json(self, path: str, json_body: Any = None, params: dict | None = None) -> Any:
        """POST to an endpoint the connector class declares in ``read_only_requests`` (e.g. a search API)."""
        return self._get_parsed("POST", self.url(path), params, json=json_body)[1]

    # -- pages ---------------------------------------------------------------
    def paginate(
        self,
        path: str,
        *,
        paginator: Paginator | None = None,
        selector: str | Callable[[Any], list] | None = None,
        params: dict[str, Any] | None = None,
        concurrency: int | None = None,
        cancel: CancelToken | None = None,
        resume: dict[str, Any] | None = None,
        on_page: Callable[[dict[str, Any]], None] | None = None,
        undecoded: Callable[[bytes, tuple[int, ...], int], Any] | None = None,
    ) -> Iterator[list[Any]]:
        """Yield each page's records, in order; the paginator decides where the next page is.

        ``selector`` is a dotted path into the body (``"data"``, ``"Resources"``)
        or a function of the body; None means the body is the list.

        When the first page lets the paginator name every later page
        (:meth:`Paginator.plan`: offset or page number with a total, SCIM), up
        to ``concurrency`` pages (default ``max_concurrency``) are fetched at
        once, at most twice that many ahead of the consumer. Each is used only
        if it is the request the paginator asks for next, so a wrong guess (a
        short page, a changed total) costs the pages fetched ahead, never a
        record. Cursors and links page one after another. Rate limits, the
        in-flight bound and retries apply to every page. ``cancel`` (default: the
        client's token) stops the listing.

        ``resume``: a paginator ``state()`` saved by an earlier listing; paging continues at the page after
        it (no look-ahead plan then). ``on_page(state)`` is called once the consumer has taken a page that
        has a next one, with the paginator's state at that point (what a later ``resume`` continues from).

        ``undecoded(body, skip, count)``: when the paginator reads no more than a page's top-level fields
        and its records' ids (``Paginator.light``), a page that :func:`ingest.pages.light_decode` can read
        is not decoded: what ``undecoded`` makes of its body, the indexes of the records the paginator
        dropped and the number of records left is yielded instead of its records (other pages come as
        records, as without it).
        """
        cancel = cancel if cancel is not None else self._token()
        pager = (paginator or SinglePage()).fresh()
        request = PageRequest(self.url(path), dict(params or {}))
        pager.init_request(request)
        page = 0
        if resume is not None:
            first = request.url
            pager.restore(resume)
            pager.update_request(request)
            if origin(request.url) != origin(first):
                raise ProtocolError(f"the saved next-page link points to another origin ({redact_url(request.url)})",
                                    connector=self.connector)
            page = 1  # no look-ahead plan: that is made from the first page only
        width = self.settings.max_concurrency if concurrency is None else max(1, concurrency)
        ahead: Fetcher[PageRequest, tuple[httpx.Response, Any]] | None = None
        distinct = DistinctCount() if pager.counted else None
        # pages handed on undecoded are read for their paging fields and the ids a count needs (a counted
        # listing without an id field tells records apart by their content: its pages are decoded)
        readable = undecoded is not None and pager.light and (pager.id_field is not None or not pager.counted)
        ids = pager.id_field if pager.counted else None
        try:
            while True:
                if ahead is not None and ((planned_next := ahead.next_item()) is END
                                          or planned_next.signature() != request.signature()):
                    # the plan is used up, or a page was not what it foresaw (short, or the end came early)
                    log.debug("pages_ahead_stopped", connector=self.connector, page=page + 1,
                              url=redact_url(request.url))
                    ahead.close()
                    ahead = None
                if ahead is not None:
                    response, data = self._parsed_ahead(ahead.take()[1], request, cancel, readable, ids)
                elif readable:
                    response = self._with_retries(
                        lambda: self._send_once("GET", request.url, request.params, cancel), cancel)
                    response, data = self._parsed_ahead(response, request, cancel, True, ids)
                else:
                    response, data = self._get_parsed("GET", request.url, request.params, cancel)
                page += 1
                light = type(data) is _Light
                if light:
                    data = data.data
                selected = self._selected(response, data, selector)
                if light and pager.counted and not _ids_usable(selected, pager.id_field):
                    # a record without an id is told from others by its whole content: decode the page
                    response, data = self._parsed_ahead(response, request, cancel)
                    light, selected = False, self._selected(response, data, selector)
                records = self._page_records(pager, response, data, selected, page)
                if distinct is not None:
                    distinct.update(map(functools.partial(_record_hash, pager.id_field), records))
                if page == 1 and width > 1 and pager.has_next:
                    planned = pager.plan(request)
                    if planned is not None:
                        ahead = Fetcher(self._fetch_ahead, planned, width=width, cancel=cancel,
                                        name=f"ingest-pages-{self.connector or 'http'}")
                if light:
                    skip = () if records is selected else _dropped(selected, records)
                    yield undecoded(response.content, skip, len(records))
                else:
                    yield records
                if not pager.has_next:
                    if distinct is not None and resume is None:  # a resumed listing saw only its tail
                        self._check_complete(pager, len(distinct), response)
                    return
                if on_page is not None:
                    on_page(pager.state())
                previous = request.url
                try:
                    pager.update_request(request)
                except IngestError as e:
                    raise self._located(e, response) from None
                if origin(request.url) != origin(previous):
                    raise ProtocolError(
                        f"the next-page link points to another origin ({redact_url(request.url)}: scheme, host "
                        "or port differ); not following it",
                        request=f"GET {redact_url(response.request.url)}", connector=self.connector)
        finally:
            if ahead is not None:
                ahead.close()

    def _check_complete(self, pager: Paginator, received: int, response: httpx.Response) -> None:
        """The end-of-listing check (see :mod:`ingest.http._paginators`)."""
        announced = pager.announced_total()
        if announced is None or received >= announced:
            return
        log.warning("listing_short", connector=self.connector, received=received, announced=announced,
                    url=redact_url(response.request.url))
        raise ListingChangedError(
            f"the listing ended with {received} distinct records but the source announced {announced}: records "
            "deleted while paging shift later pages, so some that still exist were not fetched",
            received=received, announced=announced, connector=self.connector,
            request=f"GET {redact_url(response.request.url)}")

    def _fetch_ahead(self, request: PageRequest, stop: CancelToken) -> list[httpx.Response]:
        """A page fetched ahead: only its bytes. It is decoded when the listing takes it, in the listing's
        thread: decoding is CPU under the GIL wherever it runs, and a page decoded there is mapped while its
        objects are still in the cache (decoded here, up to twice ``width`` pages of objects waited, cold)."""
        return [self._with_retries(lambda: self._send_once("GET", request.url, request.params, stop), stop)]

    def _parsed_ahead(self, response: httpx.Response, request: PageRequest,
                      cancel: CancelToken, light: bool = False, ids: str | None = None
                      ) -> tuple[httpx.Response, Any]:
        """A page fetched ahead, decoded; a body that is not valid JSON is fetched again, retried as
        ``_get_parsed`` retries it (the page fetched ahead was its first attempt). ``light``: what
        :func:`~ingest.pages.light_decode` reads of it (records reduced to their ``ids`` field), as a
        ``_Light``, when it can."""
        ahead = [response]

        def attempt() -> tuple[httpx.Response, Any]:
            got = ahead.pop() if ahead else self._send_once("GET", request.url, request.params, cancel)
            if light and got.status_code != 204:
                data = light_decode(got.content, ids)
                if data is not None:
                    got.stream = httpx.ByteStream(b"")  # see _get_parsed
                    return got, _Light(data)
            data = self._parse(got, lambda: f"GET {redact_url(got.request.url)}")
            got.stream = httpx.ByteStream(b"")  # see _get_parsed
            return got, data

        return self._with_retries(attempt, cancel)

    def _selected(self, response: httpx.Response, data: Any, selector: str | Callable[[Any], list] | None
                  ) -> list[Any]:
        """The page's records, as the selector finds them."""
        records = selector(data) if callable(selector) else json_path(data, selector)
        if records is None:
            records = []
        if not isinstance(records, list):
            raise ProtocolError(f"expected a list at {selector!r}, got {type(records).__name__}",
                                request=f"GET {redact_url(response.request.url)}", connector=self.connector)
        return records

    def _page_records(self, pager: Paginator, response: httpx.Response, data: Any, records: list[Any],
                      page: int) -> list[Any]:
        """The page's records after the paginator has read the page (it may drop records already seen)."""
        try:
            kept = pager.update_state(response, data, records)
        except IngestError as e:
            raise self._located(e, response) from None
        if kept is not None:
            if records and not kept:
                log.warning("page_repeated", connector=self.connector, page=page,
                            url=redact_url(response.request.url),
                            hint="the source served records it already sent; stopping")
            records = kept
        if _debug_enabled():
            log.debug("page_fetched", connector=self.connector, page=page, url=redact_url(response.request.url),
                      records=len(records))
        return records

    def _located(self, error: IngestError, response: httpx.Response) -> IngestError:
        """Name the connector and the page a paginator's error came from."""
        error.connector = error.connector or self.connector
        error.request = error.request or f"GET {redact_url(response.request.url)}"
        return error

    def records(self, path: str, **kw: Any) -> Iterator[Any]:
        """Every record of every page (see :meth:`paginate`)."""
        for page in self.paginate(path, **kw):
            yield from page

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> HttpClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Light:
    """What :func:`~ingest.pages.light_decode` read of a page (its records reduced to their ids)."""

    __slots__ = ("data",)

    def __init__(self, data: Any) -> None:
        self.data = data


def _ids_usable(records: list[Any], id_field: str) -> bool:
    """Every reduced record has an id that tells it apart (see ``_record_hash``)."""
    for r in records:
        if type(r) is dict:
            v = r.get(id_field)
            if v is None or isinstance(v, (dict, list)):
                return False
    return True


def _dropped(selected: list[Any], kept: list[Any]) -> tuple[int, ...]:
    """The indexes in ``selected`` of the records not in ``kept`` (a subset, by identity)."""
    keep = set(map(id, kept))
    return tuple(i for i, r in enumerate(selected) if id(r) not in keep)


def _debug_enabled() -> bool:
    """Whether DEBUG events are kept (their fields, redacted URLs, are not worth building otherwise)."""
    return logging.getLogger().isEnabledFor(logging.DEBUG)


def _stop_if_cancelled(cancel: CancelToken | threading.Event | None) -> None:
    if cancel is None:
        return
    if isinstance(cancel, CancelToken):
        cancel.check()
    elif cancel.is_set():
        raise Cancelled()


class _TooSlow(Exception):
    pass


class _BoundedStream(httpx.SyncByteStream):
    """A response body read against an overall deadline, stopping when the run's token is cancelled."""

    def __init__(self, inner: Any, deadline: float, cancel: CancelToken | threading.Event | None,
                 limit: float) -> None:
        self._inner, self._deadline, self._cancel, self._limit = inner, deadline, cancel, limit

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self._inner:
            _stop_if_cancelled(self._cancel)
            if time.monotonic() > self._deadline:
                raise _TooSlow()
            yield chunk

    def close(self) -> None:
        self._inner.close()


class DistinctCount:
    """An exact count of distinct 64-bit hashes in 8 bytes each (a set of Python ints costs ~70 a member,
    66 MB for a listing of a million users): hashes go to 256 arrays by their low byte, and counting
    builds one array's set at a time."""

    __slots__ = ("_buckets",)

    def __init__(self) -> None:
        self._buckets = [array("q") for _ in range(256)]

    def update(self, hashes: Iterable[int]) -> None:
        buckets = self._buckets
        for h in hashes:
            buckets[h & 255].append(h)

    def __len__(self) -> int:
        return sum(len(set(b)) for b in self._buckets)


def _record_hash(id_field: str | None, record: Any) -> int:
    """What makes two records of a listing the same: their id, else their whole content."""
    if id_field and isinstance(record, dict):
        value = record.get(id_field)
        if value is not None and not isinstance(value, (dict, list)):
            return hash(("id", str(value)))
    try:
        return hash(orjson.dumps(record, option=orjson.OPT_SORT_KEYS))
    except TypeError:
        return hash(repr(record))


def _detail(response: httpx.Response) -> str:
    """A short, redacted excerpt of an error body: the JSON error message when there is one."""
    if not response.content:
        return ""
    text = ""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        for key in ("detail", "error_description", "message", "error", "errors", "errorSummary"):
            value = body.get(key)
            if isinstance(value, dict):
                value = value.get("message") or value
            if value:
                text = value if isinstance(value, str) else json.dumps(value)[:300]
                break
    if not text:
        ctype = response.headers.get("content-type", "").lower()
        if "html" in ctype or response.content.lstrip()[:1] == b"<":
            return " (an HTML error page)"
        text = response.text
    text = " ".join(text.split())[:300]
    return f": {redact(text)}" if text else ""
