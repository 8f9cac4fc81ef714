"""A loopback fake JSON API for connector and HTTP-layer tests.

``FakeApi`` is a real HTTP/1.1 server (``ThreadingHTTPServer`` on 127.0.0.1,
port 0) run in a background thread by a context manager that always shuts it
down. It serves lists of records under every pagination style ingest knows,
with the body shapes and headers real APIs use, and injects faults on demand::

    with FakeApi() as api:
        api.serve_records("/users", users, style="link", page_size=30)
        api.script([Fault.rate_limited(retry_after=1), None, Fault.reset()])
        api.require_header("Authorization", "Bearer t0ken")
        client = HttpClient(api.url("/"), auth=BearerAuth("t0ken"))
        ...
        assert api.requests[1].at - api.requests[0].at >= 0.9

Pagination styles (``serve_records(path, records, style=...)``), each a
faithful copy of a well-known API's shape:

=============  =========================================================================
``offset``     ``?offset=0&limit=N`` -> ``{"items": [...], "offset": 0, "limit": N, "total": T}``
``page``       ``?page=1&per_page=N`` -> ``{"data": [...], "page": 1, "per_page": N,
               "total_pages": P, "total": T}``
``cursor``     ``?cursor=C&limit=N`` -> ``{"data": [...], "next_cursor": "opaque" | null}``
``next_url``   ``?page=2`` -> ``{"count": T, "next": "http://..." | null, "previous": ...,
               "results": [...]}`` (Django REST framework)
``link``       ``?page=2&per_page=N`` -> a JSON array plus
               ``Link: <...?page=3&per_page=N>; rel="next", <...>; rel="last"`` (GitHub)
``scim``       ``?startIndex=1&count=N`` -> SCIM ListResponse (RFC 7644 §3.4.2)
=============  =========================================================================

``max_page_size`` caps the page size silently, as many APIs do;
``repeat_cursor`` / ``ignore_start_index`` make a misbehaving server.

Faults (:class:`Fault`) are applied to requests by a script (a queue consumed
in order, ``None`` meaning "answer normally") or by share (a seeded random
fraction of requests). Every request is recorded (:class:`SeenRequest`:
method, path, query, headers, body, arrival time on the server) and the most
requests ever in flight at once is kept in ``api.max_in_flight``.

``ForwardProxy`` is a tiny plain-HTTP forward proxy (absolute-URI requests to
loopback targets only), and ``self_signed_cert`` makes a certificate for
``FakeApi(tls=...)`` with the ``openssl`` command-line tool.
"""

from __future__ import annotations

import base64
import email.utils
import http.client
import json
import math
import random
import socket
import ssl
import struct
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import pytest

from ingest.testing._loopback import LoopbackServer, QuietHandler, QuietServer

__all__ = [
    "FakeApi",
    "Fault",
    "Reply",
    "SeenRequest",
    "ForwardProxy",
    "self_signed_cert",
    "fake_api",
    "STYLES",
]

STYLES = ("offset", "page", "cursor", "next_url", "link", "scim")
SCIM_LIST = "urn:ietf:params:scim:api:messages:2.0:ListResponse"
SCIM_ERROR = "urn:ietf:params:scim:api:messages:2.0:Error"
REQUEST_TIMEOUT = 10.0  # seconds a handler waits on an idle or stalled connection
MAX_DELAY = 15.0  # the longest a slow fault may hold a response


@dataclass
class SeenRequest:
    """One request as the server saw it."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # names lower-cased
    body: bytes
    at: float  # time.monotonic() when the request was read
    fault: str | None = None

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    def json(self) -> Any:
        return json.loads(self.body)

    def form(self) -> dict[str, str]:
        return dict(parse_qsl(self.body.decode()))


@dataclass
class Reply:
    """A normal answer: JSON (``body`` any JSON value) or raw bytes (``raw``)."""

    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    raw: bytes | None = None
    content_type: str = "application/json"
    chunk_delay: float = 0.0  # > 0: the body trickles out 64 bytes at a time, this many seconds apart

    def payload(self) -> bytes:
        if self.raw is not None:
            return self.raw
        return b"" if self.body is None and self.status == 204 else json.dumps(self.body).encode()


@dataclass(frozen=True)
class Fault:
    """A fault to inject. Build one with the class methods."""

    kind: str
    status: int = 500
    retry_after: float | None = None
    http_date: bool = False
    delay: float = 0.0
    headers: tuple[tuple[str, str], ...] = ()
    message: str = "injected fault"

    @classmethod
    def error(cls, status: int = 500, message: str = "internal error") -> Fault:
        """A JSON error body: ``{"error": {"code": "...", "message": "..."}}``."""
        return cls("error", status=status, message=message)

    @classmethod
    def unavailable(cls, retry_after: float | None = 1, http_date: bool = False) -> Fault:
        """503 Service Unavailable with ``Retry-After``."""
        return cls("error", status=503, retry_after=retry_after, http_date=http_date, message="service unavailable")

    @classmethod
    def rate_limited(cls, retry_after: float | None = 1, http_date: bool = False,
                     headers: dict[str, str] | None = None) -> Fault:
        """429 with ``Retry-After`` (seconds, or an HTTP date) and ``X-RateLimit-*`` at zero."""
        return cls("rate_limited", status=429, retry_after=retry_after, http_date=http_date,
                   headers=tuple((headers or {}).items()), message="rate limit exceeded")

    @classmethod
    def github_rate_limited(cls, reset_in: float = 1) -> Fault:
        """GitHub's primary limit: 403, ``X-RateLimit-Remaining: 0``, ``X-RateLimit-Reset: <epoch>``."""
        return cls("github_rate_limited", status=403, retry_after=reset_in,
                   message="API rate limit exceeded for 127.0.0.1.")

    @classmethod
    def reset(cls) -> Fault:
        """Send the status line, headers and half the body, then reset the connection (RST)."""
        return cls("reset")

    @classmethod
    def truncated(cls) -> Fault:
        """Announce a longer ``Content-Length`` than is sent, then close the connection."""
        return cls("truncated")

    @classmethod
    def cut(cls) -> Fault:
        """A complete HTTP response whose JSON body is cut in half (Content-Length matches)."""
        return cls("cut")

    @classmethod
    def slow(cls, seconds: float) -> Fault:
        """Wait ``seconds`` before answering normally (to trip client timeouts)."""
        return cls("slow", delay=min(seconds, MAX_DELAY))

    @classmethod
    def html(cls, status: int = 200) -> Fault:
        """An HTML page (a login portal, a proxy's error page)."""
        return cls("html", status=status)

    @classmethod
    def unauthorized(cls, challenge: str = 'Bearer realm="fake-api", error="invalid_token"') -> Fault:
        """401 with a ``WWW-Authenticate`` challenge."""
        return cls("unauthorized", status=401, headers=(("WWW-Authenticate", challenge),))

    @classmethod
    def status(cls, status: int, body: Any = None, headers: dict[str, str] | None = None) -> Fault:
        """Any status with a JSON body (``{"error": ...}`` by default)."""
        return cls("status", status=status, headers=tuple((headers or {}).items()),
                   message=json.dumps(body if body is not None else {"error": f"HTTP {status}"}))


Handler = Callable[[SeenRequest], Reply]


class _Server(QuietServer):
    allow_reuse_address = True


class _RequestHandler(QuietHandler):
    timeout = REQUEST_TIMEOUT
    server: _Server

    def setup(self) -> None:
        if isinstance(self.request, ssl.SSLSocket):
            self.request.settimeout(REQUEST_TIMEOUT)
            self.request.do_handshake()
        super().setup()

    def _any(self) -> None:
        self.server.owner._handle(self)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _any


class FakeApi(LoopbackServer):
    """A loopback fake API (see the module docstring). Use it as a context manager."""

    thread_name = "fake-api"

    def __init__(self, *, tls: tuple[Path, Path] | None = None, latency: float = 0.0, port: int = 0) -> None:
        self.tls = tls
        self.listen_port = port  # 0: any free port (tests); a fixed one for a demo server a user starts
        self.latency = latency
        self.requests: list[SeenRequest] = []
        self.max_in_flight = 0
        self.tokens_issued: list[str] = []
        self._in_flight = 0
        self._routes: dict[tuple[str, str], Handler] = {}
        self._script: deque[tuple[str | None, Fault | None]] = deque()
        self._shares: list[tuple[str | None, Fault, float]] = []
        self._rng = random.Random(0)
        self._required: dict[str, Callable[[str | None], bool]] = {}
        self._token_paths: set[str] = set()
        self._lock = threading.Lock()
        self._stopping = threading.Event()

    # -- lifecycle -----------------------------------------------------------
    def _make_server(self) -> _Server:
        server = _Server(("127.0.0.1", self.listen_port), _RequestHandler)
        if self.tls:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(str(self.tls[0]), str(self.tls[1]))
            server.socket = ctx.wrap_socket(server.socket, server_side=True, do_handshake_on_connect=False)
        return server

    def stop(self) -> None:
        self._stopping.set()  # delays and trickled answers stop waiting
        super().stop()

    @property
    def base_url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def url(self, path: str = "/") -> str:
        return self.base_url + "/" + path.lstrip("/")

    # -- configuration -------------------------------------------------------
    def route(self, path: str, handler: Handler, method: str = "GET") -> None:
        """Answer ``method path`` (query string ignored) with ``handler(request) -> Reply``."""
        self._routes[(method.upper(), path)] = handler

    def add_json(self, path: str, body: Any, status: int = 200, headers: dict[str, str] | None = None,
                 method: str = "GET") -> None:
        """Answer ``method path`` with a fixed JSON body."""
        self.route(path, lambda _req: Reply(status, body, dict(headers or {})), method)

    def require_header(self, name: str, value: str | Callable[[str | None], bool]) -> None:
        """Answer 401 (with ``WWW-Authenticate``) unless the header matches; token endpoints are exempt."""
        self._required[name.lower()] = value if callable(value) else (lambda got, want=value: got == want)

    def require_bearer(self, token: str) -> None:
        self.require_header("Authorization", f"Bearer {token}")

    def require_basic(self, username: str, password: str) -> None:
        pair = base64.b64encode(f"{username}:{password}".encode()).decode()
        self.require_header("Authorization", f"Basic {pair}")

    def token_endpoint(self, path: str = "/oauth2/token", *, client_id: str, client_secret: str,
                       expires_in: int = 3600, prefix: str = "at-") -> None:
        """An OAuth 2.0 client-credentials token endpoint (RFC 6749 §4.4, secret by form or Basic).

        Every issued token is appended to ``tokens_issued``; API calls must then
        carry the latest one (``Authorization: Bearer <token>``).
        """

        def issue(req: SeenRequest) -> Reply:
            form = req.form()
            cid, secret = form.get("client_id"), form.get("client_secret")
            basic = req.header("Authorization") or ""
            if basic.startswith("Basic "):
                from urllib.parse import unquote_plus

                cid, _, secret = base64.b64decode(basic[6:]).decode().partition(":")
                cid, secret = unquote_plus(cid), unquote_plus(secret)
            if form.get("grant_type") != "client_credentials":
                return Reply(400, {"error": "unsupported_grant_type"})
            if cid != client_id or secret != client_secret:
                return Reply(401, {"error": "invalid_client", "error_description": "Client authentication failed"},
                             {"WWW-Authenticate": 'Basic realm="fake-api"'})
            with self._lock:
                token = f"{prefix}{len(self.tokens_issued) + 1}-{random.Random().getrandbits(48):012x}"
                self.tokens_issued.append(token)
            return Reply(200, {"access_token": token, "token_type": "Bearer", "expires_in": expires_in},
                         {"Cache-Control": "no-store"})

        self.route(path, issue, "POST")
        self._token_paths.add(path)
        self.require_header("Authorization", lambda got: bool(self.tokens_issued)
                            and got == f"Bearer {self.tokens_issued[-1]}")

    def script(self, faults: Sequence[Fault | None], path: str | None = None) -> None:
        """Apply ``faults`` to the next requests (to ``path`` only, when given), in order; None = normal."""
        with self._lock:
            self._script.extend((path, f) for f in faults)

    def fault_share(self, fault: Fault, share: float, *, path: str | None = None, seed: int = 0) -> None:
        """Apply ``fault`` to a random ``share`` (0..1) of requests (to ``path`` only, when given)."""
        with self._lock:
            self._rng = random.Random(seed)
            self._shares.append((path, fault, share))

    def clear_faults(self) -> None:
        with self._lock:
            self._script.clear()
            self._shares.clear()

    def serve_records(
        self,
        path: str,
        records: Sequence[Any],
        *,
        style: str = "offset",
        page_size: int = 50,
        max_page_size: int | None = None,
        repeat_cursor: bool = False,
        ignore_start_index: bool = False,
        relative_next: bool = False,
        total: bool = True,
    ) -> None:
        """Serve ``records`` at ``path`` paginated in ``style`` (see the module docstring).

        ``page_size`` is the default when the client names none; ``max_page_size``
        caps what a client may ask for; ``total=False`` leaves out totals
        (``total``, ``total_pages``, ``count``; SCIM's ``totalResults`` stays,
        the RFC requires it).
        """
        if style not in STYLES:
            raise ValueError(f"unknown style {style!r}; known: {', '.join(STYLES)}")
        records = list(records)
        n = len(records)

        def size(req: SeenRequest, name: str) -> int:
            asked = _int(req.query.get(name), page_size)
            asked = max(1, asked)
            return min(asked, max_page_size) if max_page_size else asked

        def link_to(req: SeenRequest, **params: Any) -> str:
            query = urlencode({**req.query, **params})
            if relative_next:
                return f"{path}?{query}"
            host = req.header("Host") or f"127.0.0.1:{self.port}"
            return f"{'https' if self.tls else 'http'}://{host}{path}?{query}"

        def offset(req: SeenRequest) -> Reply:
            o, lim = max(0, _int(req.query.get("offset"), 0)), size(req, "limit")
            body = {"items": records[o:o + lim], "offset": o, "limit": lim}
            if total:
                body["total"] = n
            return Reply(200, body)

        def page(req: SeenRequest) -> Reply:
            p, per = max(1, _int(req.query.get("page"), 1)), size(req, "per_page")
            body: dict[str, Any] = {"data": records[(p - 1) * per:p * per], "page": p, "per_page": per}
            if total:
                body.update(total=n, total_pages=math.ceil(n / per))
            return Reply(200, body)

        def cursor(req: SeenRequest) -> Reply:
            raw = req.query.get("cursor")
            o = _decode_cursor(raw) if raw else 0
            if o is None:
                return Reply(400, {"error": "invalid_cursor", "message": "cursor is not valid"})
            lim = size(req, "limit")
            nxt = o + lim
            if repeat_cursor:
                nxt = lim  # always the cursor of the second page
            cursor_out = _encode_cursor(nxt) if o + lim < n else None
            return Reply(200, {"data": records[o:o + lim], "next_cursor": cursor_out})

        def next_url(req: SeenRequest) -> Reply:
            p, per = max(1, _int(req.query.get("page"), 1)), size(req, "page_size")
            body: dict[str, Any] = {
                "next": link_to(req, page=p + 1) if p * per < n else None,
                "previous": link_to(req, page=p - 1) if p > 1 else None,
                "results": records[(p - 1) * per:p * per],
            }
            if total:
                body = {"count": n, **body}
            return Reply(200, body)

        def link(req: SeenRequest) -> Reply:
            p, per = max(1, _int(req.query.get("page"), 1)), size(req, "per_page")
            last = max(1, math.ceil(n / per))
            rels = []
            if p < last:
                rels.append((p + 1, "next"))
                rels.append((last, "last"))
            if p > 1:
                rels.insert(0, (p - 1, "prev"))
                rels.insert(0, (1, "first"))
            headers = {"Link": ", ".join(f'<{link_to(req, page=q, per_page=per)}>; rel="{r}"' for q, r in rels)}
            if not rels:
                headers = {}
            return Reply(200, records[(p - 1) * per:p * per], headers)

        def scim(req: SeenRequest) -> Reply:
            start = 1 if ignore_start_index else max(1, _int(req.query.get("startIndex"), 1))
            count = max(0, min(_int(req.query.get("count"), page_size), max_page_size or 10**9))
            items = records[start - 1:start - 1 + count]
            return Reply(200, {"schemas": [SCIM_LIST], "totalResults": n, "itemsPerPage": len(items),
                               "startIndex": start, "Resources": items},
                         content_type="application/scim+json")

        self.route(path, {"offset": offset, "page": page, "cursor": cursor, "next_url": next_url,
                          "link": link, "scim": scim}[style])

    # -- serving -------------------------------------------------------------
    def _pick_fault(self, path: str) -> Fault | None:
        with self._lock:
            for i, (only, fault) in enumerate(self._script):
                if only is None or only == path:
                    del self._script[i]
                    return fault
            for only, fault, share in self._shares:
                if (only is None or only == path) and self._rng.random() < share:
                    return fault
        return None

    def _handle(self, h: _RequestHandler) -> None:
        parts = urlsplit(h.path)
        length = _int(h.headers.get("Content-Length"), 0)
        body = h.rfile.read(length) if length > 0 else b""
        req = SeenRequest(
            method=h.command,
            path=parts.path,
            query=dict(parse_qsl(parts.query, keep_blank_values=True)),
            headers={k.lower(): v for k, v in h.headers.items()},
            body=body,
            at=time.monotonic(),
        )
        fault = self._pick_fault(req.path)
        req.fault = fault.kind if fault else None
        with self._lock:
            self.requests.append(req)
            self._in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self._in_flight)
        left = False

        def answered() -> None:  # no longer in flight once the answer can be complete at the client's end
            nonlocal left
            if not left:
                left = True
                with self._lock:
                    self._in_flight -= 1

        h.answered = answered
        try:
            if self.latency:
                self._stopping.wait(self.latency)
            if fault is not None and fault.kind == "slow":
                self._stopping.wait(fault.delay)
                fault = None
            if fault is not None:
                self._fault(h, req, fault)
            else:
                self._send(h, self._answer(req))
        except OSError:
            h.close_connection = True
        finally:
            answered()

    def _answer(self, req: SeenRequest) -> Reply:
        handler = self._routes.get((req.method, req.path))
        if handler is None:
            if any(p == req.path for _, p in self._routes):
                return Reply(405, {"error": "method_not_allowed", "message": f"{req.method} not allowed"})
            return Reply(404, {"error": "not_found", "message": f"no route {req.path}"})
        if req.path not in self._token_paths:
            for name, ok in self._required.items():
                if not ok(req.header(name)):
                    return Reply(401, {"error": "invalid_token", "message": "authentication required"},
                                 {"WWW-Authenticate": 'Bearer realm="fake-api", error="invalid_token"'})
        return handler(req)

    def _send(self, h: _RequestHandler, reply: Reply, payload: bytes | None = None,
              content_length: int | None = None) -> None:
        payload = reply.payload() if payload is None else payload
        h.send_response(reply.status)
        if payload or reply.status != 204:
            h.send_header("Content-Type", reply.content_type)
        for k, v in reply.headers.items():
            h.send_header(k, v)
        h.send_header("Content-Length", str(len(payload) if content_length is None else content_length))
        h.answered()  # before the last bytes: a fast client sends its next request at once
        h.end_headers()
        if h.command != "HEAD" and reply.chunk_delay:
            for i in range(0, len(payload), 64):
                h.wfile.write(payload[i:i + 64])
                h.wfile.flush()
                if self._stopping.wait(reply.chunk_delay):
                    break
        elif h.command != "HEAD":
            h.wfile.write(payload)

    def _fault(self, h: _RequestHandler, req: SeenRequest, fault: Fault) -> None:
        kind = fault.kind
        retry = {}
        if fault.retry_after is not None:
            if fault.http_date:
                retry["Retry-After"] = email.utils.formatdate(math.ceil(time.time() + fault.retry_after), usegmt=True)
            else:
                retry["Retry-After"] = f"{fault.retry_after:g}"
        if kind == "error":
            body = {"error": {"code": "server_error" if fault.status >= 500 else "error", "message": fault.message}}
            self._send(h, Reply(fault.status, body, retry))
        elif kind == "rate_limited":
            reset = math.ceil(time.time() + (fault.retry_after or 1))
            headers = {"X-RateLimit-Limit": "100", "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": str(reset),
                       **retry, **dict(fault.headers)}
            self._send(h, Reply(429, {"error": {"code": "rate_limited", "message": fault.message}}, headers))
        elif kind == "github_rate_limited":
            reset = math.ceil(time.time() + (fault.retry_after or 1))
            headers = {"X-RateLimit-Limit": "5000", "X-RateLimit-Remaining": "0", "X-RateLimit-Used": "5000",
                       "X-RateLimit-Reset": str(reset), "X-RateLimit-Resource": "core"}
            body = {"message": fault.message,
                    "documentation_url": "https://docs.github.com/rest/overview/rate-limits-for-the-rest-api"}
            self._send(h, Reply(403, body, headers))
        elif kind == "unauthorized":
            self._send(h, Reply(401, {"error": "invalid_token", "message": "the access token is invalid"},
                                dict(fault.headers)))
        elif kind == "status":
            self._send(h, Reply(fault.status, raw=fault.message.encode(), headers=dict(fault.headers)))
        elif kind == "html":
            page = (b"<!DOCTYPE html>\n<html><head><title>Sign in</title></head>"
                    b"<body><h1>Please sign in</h1><form action='/login'></form></body></html>\n")
            self._send(h, Reply(fault.status, raw=page, content_type="text/html; charset=utf-8"))
        elif kind in ("reset", "truncated", "cut"):
            reply = self._answer(req)
            payload = reply.payload()
            half = payload[: max(1, len(payload) // 2)]
            if kind == "cut":
                self._send(h, reply, payload=half)
                return
            self._send(h, reply, payload=half, content_length=len(payload))
            h.wfile.flush()
            h.close_connection = True
            if kind == "reset":
                h.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                h.connection.close()
        else:  # pragma: no cover - guarded by the constructors
            raise ValueError(kind)

    # -- assertions helpers --------------------------------------------------
    def requests_to(self, path: str) -> list[SeenRequest]:
        return [r for r in self.requests if r.path == path]


def _int(value: Any, default: int) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def _encode_cursor(offset: int) -> str:
    return base64.urlsafe_b64encode(json.dumps({"o": offset}).encode()).decode().rstrip("=")


def _decode_cursor(raw: str) -> int | None:
    try:
        return int(json.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))["o"])
    except (ValueError, KeyError, TypeError):
        return None


# -- a forward proxy -----------------------------------------------------------
class _ProxyHandler(QuietHandler):
    timeout = REQUEST_TIMEOUT

    def _forward(self) -> None:
        proxy: ForwardProxy = self.server.owner  # type: ignore[attr-defined]
        target = urlsplit(self.path)
        length = _int(self.headers.get("Content-Length"), 0)
        body = self.rfile.read(length) if length > 0 else None
        with proxy._lock:
            proxy.seen.append(self.path)
        if target.scheme != "http" or target.hostname not in ("127.0.0.1", "localhost"):
            self._reply(403, b"only plain-HTTP loopback targets are forwarded")
            return
        headers = {k: v for k, v in self.headers.items()
                   if k.lower() not in ("proxy-connection", "proxy-authorization", "connection", "keep-alive")}
        conn = http.client.HTTPConnection(target.hostname, target.port or 80, timeout=REQUEST_TIMEOUT)
        try:
            conn.request(self.command, target.path + (f"?{target.query}" if target.query else ""), body, headers)
            upstream = conn.getresponse()
            payload = upstream.read()
            self.send_response(upstream.status)
            for k, v in upstream.getheaders():
                if k.lower() not in ("connection", "keep-alive", "transfer-encoding", "content-length"):
                    self.send_header(k, v)
            self.send_header("Via", "1.1 fake-proxy")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
        except OSError:
            self._reply(502, b"bad gateway")
        finally:
            conn.close()

    def _reply(self, status: int, text: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(text)))
        self.end_headers()
        self.wfile.write(text)

    do_GET = do_POST = do_HEAD = _forward


class ForwardProxy(LoopbackServer):
    """A plain-HTTP forward proxy on 127.0.0.1 (absolute-URI requests to loopback only).

    ``seen`` lists the absolute URIs it forwarded.
    """

    thread_name = "fake-proxy"

    def __init__(self) -> None:
        self.seen: list[str] = []
        self._lock = threading.Lock()

    def _make_server(self) -> QuietServer:
        return QuietServer(("127.0.0.1", 0), _ProxyHandler)

    @property
    def url(self) -> str:
        return self.root_url


def self_signed_cert(directory: Path, host: str = "127.0.0.1") -> tuple[Path, Path]:
    """A self-signed certificate and key for ``host`` (an IP SAN), made with the openssl CLI.

    The certificate is its own CA (CA:TRUE, keyCertSign), so a client trusts
    it by pointing ``ca_bundle`` at the certificate file.
    """
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", f"/CN={host}",
         "-addext", f"subjectAltName=IP:{host}",
         "-addext", "basicConstraints=critical,CA:TRUE",
         "-addext", "keyUsage=critical,digitalSignature,keyCertSign"],
        check=True, capture_output=True, timeout=30,
    )
    return cert, key


@contextmanager
def _running(api: FakeApi) -> Iterator[FakeApi]:
    with api:
        yield api


@pytest.fixture
def fake_api() -> Iterator[FakeApi]:
    """A running FakeApi, stopped after the test (import this fixture into a test module)."""
    with _running(FakeApi()) as api:
        yield api
