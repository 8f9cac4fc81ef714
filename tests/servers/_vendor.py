"""What the vendor fakes (Okta, Microsoft Graph, Google Directory) share: a threaded loopback
HTTP/1.1 server with a route table, a request log, added latency and scripted faults.

    class MyFake(VendorServer):
        def routes(self):
            return [("GET", r"/api/v1/users", self.list_users)]

        def list_users(self, req: SeenRequest, m: re.Match) -> Reply: ...

    with MyFake(latency=0.05) as fake:
        fake.inject(r"/api/v1/users", [Reply(429, {...}), None])   # next two requests to that path
        ...
        assert fake.count(r"/api/v1/users") == 3

A route's handler gets the request and the path match and returns a :class:`Reply` (from
``fake_api``). ``inject`` queues answers per path pattern, consumed in order before the route
runs (``None`` = answer normally). Every request is kept in ``requests``; ``max_in_flight`` is the
most requests ever served at once. A benchmark sets ``frozen`` once its tenant is built: each
listing (:meth:`listing`) is then sorted and filtered once, so a page costs a page.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections import deque
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import orjson

from tests.servers._loopback import LoopbackServer
from tests.servers.fake_api import Reply, SeenRequest

__all__ = ["Reply", "SeenRequest", "VendorServer"]

REQUEST_TIMEOUT = 10.0
Route = tuple[str, str, Callable[[SeenRequest, re.Match], Reply]]


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128


class VendorServer(LoopbackServer):
    thread_name = "vendor-fake"

    def __init__(self, latency: float = 0.0) -> None:
        self.latency = latency
        self.requests: list[SeenRequest] = []
        self.max_in_flight = 0
        self._in_flight = 0
        self._lock = threading.Lock()
        self._injected: list[tuple[re.Pattern, deque]] = []
        self._listings: dict[Any, Any] = {}
        # True once the tenant stops changing (a benchmark's): each listing is built once, not per page request
        self.frozen = False
        self._routes = [(method, re.compile(pattern + r"\Z"), fn) for method, pattern, fn in self.routes()]

    # -- to override -----------------------------------------------------------------------------------
    def routes(self) -> list[Route]:
        raise NotImplementedError

    def not_found(self, req: SeenRequest) -> Reply:
        return Reply(404, {"error": "not found"})

    # -- test controls ---------------------------------------------------------------------------------
    def inject(self, path_pattern: str, replies: list[Reply | None]) -> None:
        """The next requests whose path matches get these answers, in order (None: the normal answer)."""
        with self._lock:
            self._injected.append((re.compile(path_pattern + r"\Z"), deque(replies)))

    def count(self, path_pattern: str = ".*", method: str = "GET") -> int:
        rx = re.compile(path_pattern + r"\Z")
        return sum(1 for r in list(self.requests) if r.method == method and rx.match(r.path))

    def listing(self, key: Any, build: Callable[[], Any]) -> Any:
        """``build()``: the items a listing pages through (sorted, filtered). Built for every request while
        tests change the tenant between requests; built once per ``key`` when :attr:`frozen` (a benchmark's
        50,000-user listing would otherwise be sorted again for each of its 250 pages)."""
        if not self.frozen:
            return build()
        with self._lock:
            hit = self._listings.get(key)
        if hit is None:
            hit = build()
            with self._lock:
                self._listings[key] = hit
        return hit

    def url(self, path: str = "") -> str:
        return self.root_url + path

    def addressed(self, req: SeenRequest, path: str = "") -> str:
        """The URL the client addressed (its ``Host`` header): what a token endpoint checks an assertion's
        ``aud`` against; the same as :meth:`url` unless a proxy (the conformance kit's) stands between."""
        host = req.header("Host")
        return f"http://{host}{path}" if host else self.url(path)

    # -- serving ---------------------------------------------------------------------------------------
    def _injected_reply(self, path: str) -> Reply | None:
        with self._lock:
            for rx, queue in self._injected:
                if queue and rx.match(path):
                    return queue.popleft()
        return None

    def dispatch(self, req: SeenRequest) -> Reply:
        injected = self._injected_reply(req.path)
        if injected is not None:
            return injected
        for method, rx, fn in self._routes:
            m = rx.match(req.path)
            if m and method == req.method:
                return fn(req, m)
        return self.not_found(req)

    def _make_server(self) -> ThreadingHTTPServer:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            timeout = REQUEST_TIMEOUT
            disable_nagle_algorithm = True

            def log_message(self, *args: Any) -> None:
                pass

            def _handle(self) -> None:
                parts = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                req = SeenRequest(method=self.command, path=parts.path,
                                  query=dict(parse_qsl(parts.query, keep_blank_values=True)),
                                  headers={k.lower(): v for k, v in self.headers.items()}, body=body,
                                  at=time.monotonic())
                req.raw_query = parts.query  # type: ignore[attr-defined]
                with fake._lock:
                    fake.requests.append(req)
                    fake._in_flight += 1
                    fake.max_in_flight = max(fake.max_in_flight, fake._in_flight)
                try:
                    if fake.latency:
                        time.sleep(fake.latency)
                    reply = fake.dispatch(req)
                finally:
                    with fake._lock:
                        fake._in_flight -= 1
                # orjson: the fakes serve big pages (a benchmark's 500k memberships); the bytes are the same JSON
                payload = reply.raw if reply.raw is not None else (
                    b"" if reply.body is None and reply.status == 204 else orjson.dumps(reply.body))
                self.send_response(reply.status)
                self.send_header("Content-Type", reply.content_type)
                self.send_header("Content-Length", str(len(payload)))
                for k, v in reply.headers.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _handle

        return _Server(("127.0.0.1", 0), Handler)


def json_reply(status: int, body: Any, **headers: str) -> Reply:
    return Reply(status, body, headers=dict(headers))


def dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"))
