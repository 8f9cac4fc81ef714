"""A fault-injecting HTTP reverse proxy on 127.0.0.1, for fault tests.

It forwards every request to ``upstream`` except, on a configurable share of
requests (drawn from a seeded ``random.Random``), it answers with a fault:

    500        ``500 Internal Server Error`` with a JSON body (upstream not asked)
    429        ``429 Too Many Requests`` with ``Retry-After: 0`` or ``1``
    drop       closes the connection without answering
    truncate   forwards, then sends the headers and half the body and closes
               (the body is shorter than its Content-Length)
    cut_json   forwards, then sends the first half of the body as a complete
               response (a consistent Content-Length, invalid JSON)

``injected`` counts the faults of each kind, ``forwarded`` the requests that
reached the upstream unharmed.

    with FaultyProxy(server.root_url, rate=0.2, seed=3) as proxy:
        url = proxy.root_url + "/scim/v2"
"""

from __future__ import annotations

import http.client
import random
import socket
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

from tests.servers._loopback import LoopbackServer

__all__ = ["FaultyProxy", "FAULTS"]

FAULTS = ("500", "429", "drop", "truncate", "cut_json")
_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailers",
        "transfer-encoding", "upgrade", "host", "content-length"}


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    proxy: FaultyProxy


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, *args) -> None:
        pass

    def _send(self, status: int, body: bytes, headers: list[tuple[str, str]] = (),
              length: int | None = None) -> None:
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()

    def _forward(self) -> tuple[int, list[tuple[str, str]], bytes]:
        proxy = self.server.proxy
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0)) or None
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
        headers["Host"] = proxy.upstream_netloc
        conn = http.client.HTTPConnection(proxy.upstream_host, proxy.upstream_port, timeout=60)
        try:
            conn.request(self.command, self.path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            out = [(k, v) for k, v in resp.getheaders() if k.lower() not in _HOP]
            return resp.status, out, data
        finally:
            conn.close()

    def _handle(self) -> None:
        proxy = self.server.proxy
        fault = proxy.draw()
        if fault == "500":
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self._send(500, b'{"status": "500", "detail": "injected server error"}',
                       [("Content-Type", "application/json")])
            return
        if fault == "429":
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self._send(429, b'{"status": "429", "detail": "slow down"}',
                       [("Content-Type", "application/json"), ("Retry-After", proxy.retry_after())])
            return
        if fault == "drop":
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        status, headers, data = self._forward()
        if fault == "truncate":
            self.close_connection = True
            self._send(status, data[: len(data) // 2], headers, length=len(data))
            return
        if fault == "cut_json":
            self._send(status, data[: len(data) // 2], headers)
            return
        with proxy.lock:
            proxy.forwarded += 1
        self._send(status, data, headers)

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _handle


class FaultyProxy(LoopbackServer):
    """A reverse proxy to ``upstream`` (``http://127.0.0.1:PORT``) that injects faults on a share of requests."""

    def __init__(self, upstream: str, *, rate: float = 0.2, seed: int = 0, faults: tuple[str, ...] = FAULTS,
                 retry_after: tuple[str, ...] = ("0", "1")) -> None:
        unknown = set(faults) - set(FAULTS)
        if unknown:
            raise ValueError(f"unknown faults {sorted(unknown)}; known: {', '.join(FAULTS)}")
        parts = urlsplit(upstream)
        self.upstream_host, self.upstream_port = parts.hostname, parts.port or 80
        self.upstream_netloc = parts.netloc
        self.rate, self.faults, self._retry_after = rate, tuple(faults), tuple(retry_after)
        self.random = random.Random(seed)
        self.lock = threading.Lock()
        self.injected: Counter[str] = Counter()
        self.forwarded = 0
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def draw(self) -> str | None:
        with self.lock:
            if self.random.random() >= self.rate:
                return None
            fault = self.random.choice(self.faults)
            self.injected[fault] += 1
            return fault

    def retry_after(self) -> str:
        with self.lock:
            return self.random.choice(self._retry_after)

    thread_name = "faulty-proxy"

    def _make_server(self) -> _Server:
        server = _Server(("127.0.0.1", 0), _Handler)
        server.proxy = self
        return server
