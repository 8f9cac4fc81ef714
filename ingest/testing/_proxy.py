"""A fault-injecting, recording HTTP reverse proxy on 127.0.0.1, for conformance and fault tests.

It forwards every request to ``upstream`` (an ``http://`` or ``https://`` origin; a loopback fake's
certificate is not verified) and records it in ``requests``, except that a request may get a fault
instead:

    500        ``500 Internal Server Error`` with a JSON body (upstream not asked)
    429        ``429 Too Many Requests`` with ``Retry-After`` (one of ``retry_after``; upstream not asked)
    reset      the connection is reset (TCP RST) without an answer
    drop       the connection is closed (FIN) without an answer
    truncate   forwards, then sends the headers and half the body and closes
               (the body is shorter than its Content-Length)
    cut_json   forwards, then sends the first half of the body as a complete
               response (a consistent Content-Length, invalid JSON)
    stall      holds the request unanswered until the client gives up (closes the connection) or
               ``stall_s`` passes, then answers it normally. With a short read timeout on the client
               (the conformance kit sets ``timeout: 1`` where the connector has the shared HTTP
               settings) it proves a source that stops answering costs one timeout and a retry, not
               a hung run; with a long one, that a slow answer is still read whole. Either way it
               costs at most ``stall_s`` (3 s) of wall time, and usually the client's timeout.

Which requests get a fault is decided two ways, both deterministic:

- ``plan``: ``{"GET /users?page=2": ["500"], ...}``, the faults for the 1st, 2nd, ... occurrence of
  that request (method, path and query as the client sent them, and a digest of a body: see
  :func:`request_key`). Keyed by request, not by arrival order, so a connector fetching
  concurrently meets the same faults on every run.
- ``rate``: a share of the other requests, drawn from ``random.Random(seed)`` (arrival order).

The ``Host`` header is forwarded as the client sent it (so signed requests, e.g. AWS SigV4, stay
valid, and a fake that builds links from ``Host`` builds them to the proxy). Answers are rewritten on
the way back: every origin in ``rewrite`` (by default the upstream's, to the proxy's own) is replaced
in the headers (``Location``, ``Link``) and in uncompressed bodies, so next-page links lead back
through the proxy; request lines, headers other than ``Host`` and bodies get the reverse rewrite.

``injected`` counts the faults of each kind, ``forwarded`` the requests that reached the upstream
unharmed, ``requests`` holds every request seen (:class:`SeenRequest`, the fault it got or None).

    with FaultProxy(server.root_url, rate=0.2, seed=3) as proxy:
        url = proxy.root_url + "/scim/v2"
"""

from __future__ import annotations

import hashlib
import http.client
import random
import select
import socket
import ssl
import struct
import threading
import time
from collections import Counter
from typing import NamedTuple
from urllib.parse import urlsplit

from ingest.testing._loopback import LoopbackServer, QuietHandler, QuietServer

__all__ = ["FAULTS", "FaultProxy", "SeenRequest", "recording_proxy", "request_key"]

FAULTS = ("500", "429", "reset", "drop", "truncate", "cut_json", "stall")
_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailers",
        "transfer-encoding", "upgrade", "host", "content-length"}


class SeenRequest(NamedTuple):
    """One request the proxy received (``target``: path and query as sent)."""

    method: str
    target: str
    body: bytes
    fault: str | None
    at: float = 0.0  # time.monotonic() when it arrived
    retry_after: str | None = None  # the Retry-After a 429 fault answered with

    @property
    def key(self) -> str:
        return request_key(self.method, self.target, self.body)

    @property
    def path(self) -> str:
        return urlsplit(self.target).path


def request_key(method: str, target: str, body: bytes = b"") -> str:
    """A request's identity in plans and in ``SeenRequest.key``: ``"GET /users?page=2"``; a request with a
    body adds the first 8 hex digits of its SHA-256 (``"POST / #1f2e3d4c"``: AWS's query-protocol calls
    differ only in their bodies)."""
    return f"{method} {target}" + (f" #{hashlib.sha256(body).hexdigest()[:8]}" if body else "")


class _Handler(QuietHandler):
    timeout = 30  # an idle keep-alive connection ends by itself; stop() shuts the open ones

    def _send(self, status: int, body: bytes, headers: list[tuple[str, str]] = (),
              length: int | None = None) -> None:
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        self.wfile.flush()

    def _forward(self, body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
        proxy: FaultProxy = self.server.owner
        # Host stays as the client sent it (a signed request, AWS SigV4, covers it), so a fake building
        # links from Host builds them to the proxy; other headers get the reverse rewrite
        headers = {k: proxy._to_upstream(v) for k, v in self.headers.items() if k.lower() not in _HOP}
        headers["Host"] = self.headers.get("Host") or proxy.upstream_netloc
        if proxy.upstream_scheme == "https":
            conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                proxy.upstream_host, proxy.upstream_port, timeout=60, context=ssl._create_unverified_context())
        else:
            conn = http.client.HTTPConnection(proxy.upstream_host, proxy.upstream_port, timeout=60)
        try:
            conn.request(self.command, proxy._to_upstream(self.path), body=proxy._to_upstream(body) or None,
                         headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            encoded = resp.getheader("Content-Encoding") not in (None, "", "identity")
            out = [(k, proxy._to_client(v)) for k, v in resp.getheaders() if k.lower() not in _HOP]
            if self.command == "HEAD":
                out.append(("Content-Length", resp.getheader("Content-Length") or "0"))
            return resp.status, out, data if encoded else proxy._to_client(data)
        finally:
            conn.close()

    def _reset(self) -> None:
        self.close_connection = True
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()  # with a zero linger: RST, not FIN
        except OSError:
            pass

    def _stall(self) -> bool:
        """Hold until the client closes the connection (True) or ``stall_s`` passes (False)."""
        proxy: FaultProxy = self.server.owner
        deadline = time.monotonic() + proxy.stall_s
        while not proxy._stopping.is_set() and (left := deadline - time.monotonic()) > 0:
            readable, _, _ = select.select([self.connection], [], [], min(left, 0.05))
            if readable:
                try:
                    if self.connection.recv(1, socket.MSG_PEEK) == b"":
                        return True
                except OSError:
                    return True
                return False  # the client sent more (pipelining): stop holding
        return proxy._stopping.is_set()

    def _handle(self) -> None:
        proxy: FaultProxy = self.server.owner
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        fault = proxy._draw(self.command, self.path, body)
        if fault == "500":
            self._send(500, b'{"status": "500", "detail": "injected server error"}',
                       [("Content-Type", "application/json")])
            return
        if fault == "429":
            self._send(429, b'{"status": "429", "detail": "slow down"}',
                       [("Content-Type", "application/json"), ("Retry-After", proxy.retry_after(self.path))])
            return
        if fault == "reset":
            self._reset()
            return
        if fault == "drop":
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        if fault == "stall" and self._stall():
            self.close_connection = True
            return
        status, headers, data = self._forward(body)
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

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = _handle


class FaultProxy(LoopbackServer):
    """A reverse proxy to ``upstream`` that records every request and injects faults (see the module docstring)."""

    thread_name = "fault-proxy"

    def __init__(self, upstream: str, *, rate: float = 0.0, seed: int = 0, faults: tuple[str, ...] = FAULTS,
                 plan: dict[str, list[str]] | None = None, retry_after: tuple[str, ...] = ("0", "1"),
                 stall_s: float = 3.0) -> None:
        unknown = set(faults) - set(FAULTS)
        if unknown:
            raise ValueError(f"unknown faults {sorted(unknown)}; known: {', '.join(FAULTS)}")
        parts = urlsplit(upstream)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"upstream {upstream!r} is not an http(s):// origin")
        self.upstream_scheme = parts.scheme
        self.upstream_host = parts.hostname
        self.upstream_port = parts.port or (443 if parts.scheme == "https" else 80)
        self.upstream_netloc = parts.netloc
        self.upstream = f"{parts.scheme}://{parts.netloc}"
        self.rate, self.faults, self._retry_after, self.stall_s = rate, tuple(faults), tuple(retry_after), stall_s
        self.random = random.Random(seed)
        self.lock = threading.Lock()
        self.plan: dict[str, list[str]] = {}
        self.arm(plan or {})
        self.rewrite: dict[str, str] = {}  # upstream origin -> proxy origin; start() adds its own
        self.injected: Counter[str] = Counter()
        self.forwarded = 0
        self.requests: list[SeenRequest] = []
        self._seen: Counter[str] = Counter()
        self._stopping = threading.Event()

    # -- faults ----------------------------------------------------------------------------------------
    def arm(self, plan: dict[str, list[str]], *, rate: float | None = None) -> None:
        """Set the planned faults (request line -> faults of its successive occurrences); counts restart."""
        unknown = {f for faults in plan.values() for f in faults} - set(FAULTS)
        if unknown:
            raise ValueError(f"unknown faults {sorted(unknown)}; known: {', '.join(FAULTS)}")
        with self.lock:
            self.plan = {k: list(v) for k, v in plan.items()}
            self._seen = Counter()
            if rate is not None:
                self.rate = rate

    def _draw(self, method: str, target: str, body: bytes) -> str | None:
        key = request_key(method, target, body)
        with self.lock:
            n = self._seen[key]
            self._seen[key] += 1
            planned = self.plan.get(key, ())
            fault = planned[n] if n < len(planned) else None
            if fault is None and key not in self.plan and self.rate > 0 and self.random.random() < self.rate:
                fault = self.random.choice(self.faults)
            if fault is not None:
                self.injected[fault] += 1
            wait = self.random.choice(self._retry_after) if fault == "429" else None
            self.requests.append(SeenRequest(method, target, body, fault, time.monotonic(), wait))
            return fault

    def retry_after(self, target: str) -> str:
        """The Retry-After the latest 429 on ``target`` was drawn with."""
        with self.lock:
            return next(r.retry_after for r in reversed(self.requests) if r.target == target and r.fault == "429")

    # -- rewriting -------------------------------------------------------------------------------------
    def _to_client(self, value):
        for up, mine in self.rewrite.items():
            value = _replace(value, up, mine)
        return value

    def _to_upstream(self, value):
        for up, mine in self.rewrite.items():
            value = _replace(value, mine, up)
        return value

    # -- lifecycle -------------------------------------------------------------------------------------
    def _make_server(self) -> QuietServer:
        return QuietServer(("127.0.0.1", self.listen_port), _Handler)

    def start(self) -> FaultProxy:
        self._stopping.clear()
        super().start()
        self.rewrite.setdefault(self.upstream, self.root_url)
        return self

    def stop(self) -> None:
        self._stopping.set()  # a stalled answer stops waiting
        super().stop()


def _replace(value, old: str, new: str):
    if isinstance(value, bytes):
        for o, n in ((old, new), (old.replace("/", "\\/"), new.replace("/", "\\/"))):
            value = value.replace(o.encode(), n.encode())
        return value
    return value.replace(old, new)


def recording_proxy(upstream: str) -> FaultProxy:
    """A proxy that injects nothing and records every request (``.requests``); start it (``with``)."""
    return FaultProxy(upstream, rate=0.0)
