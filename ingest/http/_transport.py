"""The HTTP/1.1 transport under the client: the standard library's ``http.client`` connections, kept alive.

httpx's own transport (httpcore + h11) is correct and slow for what ingest does most: many small GETs
to one origin. Measured on this project's 2-CPU machine against a local server, one GET of a 25 KB
SCIM group: httpx over httpcore ~340 us of CPU, httpx's client layer alone (a transport that answers
at once) ~85 us, ``http.client`` alone ~100 us. A SCIM fan-out sends one GET per group (20,000 at the
bench's large size), all from the run's process, so the transport was the largest single cost of that
process on a re-run. :class:`Transport` keeps httpx's client (auth flows, hooks, redirects, cookies,
decoding of compressed bodies, its exceptions) and replaces only the wire: it speaks HTTP/1.1 through
``http.client`` (C-accelerated reads, one parse of the status line and headers) and maps every failure
to the httpx exception httpcore would have raised, so the client's error handling sees no difference:

- connecting: ``httpx.ConnectTimeout``, ``httpx.ConnectError`` (a TLS verification failure is its
  cause, as with httpcore);
- sending and reading: ``httpx.WriteTimeout`` / ``httpx.ReadTimeout``, ``httpx.WriteError`` /
  ``httpx.ReadError``, ``httpx.RemoteProtocolError`` (a malformed status line or headers, a body cut
  short);
- a request httpx built that ``http.client`` refuses to send (a header it finds illegal):
  ``httpx.LocalProtocolError``.

A connection is reused only once its answer was read to the end and the server did not ask to close
it. A reused connection the server closed while it was idle fails at the first send or at the status
line; the request then goes once more on a new connection (what a browser does; the answer never
started, so nothing was received twice). Proxies stay with httpx's transport (see ``HttpClient``).
"""

from __future__ import annotations

import http.client
import ssl
import threading
from collections.abc import Iterator
from typing import Any

import httpx

__all__ = ["Transport"]

_CHUNK = 1 << 16
# raised by a kept-alive connection the server closed while it was idle, before any byte of the answer
_STALE = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError, ConnectionAbortedError)


class _Body(httpx.SyncByteStream):
    """A response body read from its connection; the connection goes back to the pool once read to the end."""

    def __init__(self, response: http.client.HTTPResponse, conn: http.client.HTTPConnection,
                 release: Any) -> None:
        self._response, self._conn, self._release = response, conn, release

    def __iter__(self) -> Iterator[bytes]:
        read = self._response.read1
        while True:
            try:
                chunk = read(_CHUNK)
            except TimeoutError as e:
                raise httpx.ReadTimeout(str(e) or "timed out reading the answer") from e
            except http.client.IncompleteRead as e:
                raise httpx.RemoteProtocolError("the server closed the connection before the end of the body") from e
            except http.client.HTTPException as e:
                raise httpx.RemoteProtocolError(f"malformed answer body: {e}") from e
            except OSError as e:
                raise httpx.ReadError(_said(e)) from e
            if not chunk:
                if self._response.length:  # read1 ends quietly where the connection did: the body is short
                    raise httpx.RemoteProtocolError(
                        f"the server closed the connection {self._response.length} bytes before the end of the body")
                if not self._response.isclosed():  # all its Content-Length read: read() marks it complete
                    self._response.read()
                return
            yield chunk

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        response = self._response
        reusable = response.isclosed() and not response.will_close  # read to the end, and keep-alive
        if not response.isclosed():
            response.close()
        self._release(conn, reusable)


class Transport(httpx.BaseTransport):
    """HTTP/1.1 over pooled ``http.client`` connections (see the module docstring)."""

    def __init__(self, verify: ssl.SSLContext | bool = True, max_keepalive: int = 10) -> None:
        self._ssl = httpx.create_ssl_context(verify=verify) if not isinstance(verify, ssl.SSLContext) else verify
        self._max_keepalive = max(1, max_keepalive)
        self._idle: dict[tuple[str, str, int], list[http.client.HTTPConnection]] = {}
        self._lock = threading.Lock()
        self._closed = False

    # -- the pool ------------------------------------------------------------------------------
    def _take(self, key: tuple[str, str, int]) -> http.client.HTTPConnection | None:
        with self._lock:
            idle = self._idle.get(key)
            return idle.pop() if idle else None

    def _release(self, key: tuple[str, str, int], conn: http.client.HTTPConnection, reusable: bool) -> None:
        if reusable:
            with self._lock:  # close() takes the lock too: a connection released after it is closed, not kept
                idle = self._idle.setdefault(key, [])
                if not self._closed and len(idle) < self._max_keepalive:
                    idle.append(conn)
                    return
        conn.close()

    def _connect(self, key: tuple[str, str, int], timeouts: dict[str, Any]) -> http.client.HTTPConnection:
        scheme, host, port = key
        connect = timeouts.get("connect")
        conn: http.client.HTTPConnection
        if scheme == "https":
            conn = http.client.HTTPSConnection(host, port, timeout=connect, context=self._ssl)
        else:
            conn = http.client.HTTPConnection(host, port, timeout=connect)
        try:
            conn.connect()
        except TimeoutError as e:
            conn.close()
            raise httpx.ConnectTimeout(str(e) or "timed out connecting") from e
        except OSError as e:  # refused, unreachable, a name that does not resolve, TLS (ssl.SSLError)
            conn.close()
            raise httpx.ConnectError(_said(e)) from e
        return conn

    # -- one exchange ----------------------------------------------------------------------------
    def handle_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        if url.scheme not in ("http", "https"):
            raise httpx.UnsupportedProtocol(f"unsupported URL scheme {url.scheme!r}")
        key = (url.scheme, url.host, url.port or (443 if url.scheme == "https" else 80))
        timeouts = request.extensions.get("timeout", {})
        body = request.read()
        target = url.raw_path.decode("ascii")
        conn = self._take(key)
        if conn is not None:
            try:
                return self._exchange(key, conn, request, target, body, timeouts)
            except _Stale:
                pass  # closed by the server while idle: once more, on a new connection
        return self._exchange(key, self._connect(key, timeouts), request, target, body, timeouts, fresh=True)

    def _exchange(self, key: tuple[str, str, int], conn: http.client.HTTPConnection, request: httpx.Request,
                  target: str, body: bytes, timeouts: dict[str, Any], fresh: bool = False) -> httpx.Response:
        sock = conn.sock
        try:
            if sock is not None:
                sock.settimeout(timeouts.get("write"))
            chunked = request.headers.get("transfer-encoding", "").lower() == "chunked"
            try:
                conn.putrequest(request.method, target, skip_host=True, skip_accept_encoding=True)
                for name, value in request.headers.raw:
                    conn.putheader(name, value)
            except ValueError as e:  # a header or target http.client will not send as it is
                raise httpx.LocalProtocolError(str(e)) from e
            try:
                conn.endheaders(body or None, encode_chunked=chunked)
            except TimeoutError as e:
                raise httpx.WriteTimeout(str(e) or "timed out sending the request") from e
            except OSError as e:
                if isinstance(e, _STALE) and not fresh:
                    raise _Stale() from e
                raise httpx.WriteError(_said(e)) from e
            if conn.sock is not None:
                conn.sock.settimeout(timeouts.get("read"))
            try:
                response = conn.getresponse()
            except TimeoutError as e:
                raise httpx.ReadTimeout(str(e) or "timed out waiting for the answer") from e
            except _STALE as e:
                if not fresh:
                    raise _Stale() from e
                raise httpx.RemoteProtocolError("the server closed the connection without answering") from e
            except http.client.HTTPException as e:  # a status line or headers that are not HTTP
                raise httpx.RemoteProtocolError(f"malformed answer: {type(e).__name__}: {e}") from e
            except OSError as e:
                raise httpx.ReadError(_said(e)) from e
        except BaseException:
            conn.close()
            raise
        version = b"HTTP/1.0" if response.version == 10 else b"HTTP/1.1"
        return httpx.Response(
            response.status,
            headers=response.getheaders(),
            stream=_Body(response, conn, lambda c, ok: self._release(key, c, ok)),
            extensions={"http_version": version, "reason_phrase": (response.reason or "").encode("latin-1", "replace")},
        )

    def close(self) -> None:
        with self._lock:
            self._closed = True
            conns = [c for idle in self._idle.values() for c in idle]
            self._idle.clear()
        for c in conns:
            c.close()


def _said(e: BaseException) -> str:
    """An OS error's message, or its kind when it has none."""
    return str(e) or type(e).__name__


class _Stale(Exception):
    """A kept-alive connection the server had closed (internal: the request goes again)."""
