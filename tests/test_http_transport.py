"""The wire under the HTTP client (ingest.http._transport): HTTP/1.1 over http.client, kept alive,
failures as the httpx exceptions httpcore raises. Against a raw socket server on 127.0.0.1 that
answers exactly the bytes each test scripts, so every case is the wire as a real server may send it."""

from __future__ import annotations

import gzip
import socket
import socketserver
import threading
from collections.abc import Callable, Iterator

import httpx
import pytest

from ingest.errors import RetryableError
from ingest.http import HttpClient, HttpSettings
from ingest.http._transport import Transport
from ingest.testing._loopback import LoopbackServer, QuietServer

Answer = Callable[[int, bytes], bytes | None]  # (request number on the server, request head) -> bytes to send


class _RawHandler(socketserver.BaseRequestHandler):
    """Reads request heads off one connection and sends what the owner's ``answer`` scripts for each."""

    server: QuietServer

    def setup(self) -> None:
        self.request.settimeout(5)
        self.server.owner._track(self.request, True)

    def finish(self) -> None:
        self.server.owner._track(self.request, False)

    def handle(self) -> None:
        self.server.owner._serve(self.request)


class RawServer(LoopbackServer):
    """Answers, on 127.0.0.1, each request read on a connection with ``answer(n, head)`` (None: close the
    connection without answering). ``close_after``: requests a connection serves before the server
    closes it, silently (a keep-alive timeout)."""

    def __init__(self, answer: Answer, close_after: int | None = None) -> None:
        self.answer, self.close_after = answer, close_after
        self.connections = 0
        self.requests: list[bytes] = []
        self._lock = threading.Lock()

    def _make_server(self) -> QuietServer:
        return QuietServer(("127.0.0.1", 0), _RawHandler)

    def _serve(self, conn: socket.socket) -> None:
        with self._lock:
            self.connections += 1
        buf, served = b"", 0
        while True:
            while b"\r\n\r\n" not in buf:
                try:
                    got = conn.recv(65536)
                except OSError:
                    return
                if not got:
                    return
                buf += got
            head, _, buf = buf.partition(b"\r\n\r\n")
            with self._lock:
                self.requests.append(head)
                n = len(self.requests)
            reply = self.answer(n, head)
            if reply is None:
                return
            conn.sendall(reply)
            served += 1
            if self.close_after is not None and served >= self.close_after:
                return


def ok(body: bytes = b'{"ok": true}', *headers: str) -> bytes:
    head = "".join(f"{h}\r\n" for h in headers)
    return f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n{head}\r\n".encode() + body


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(transport=Transport(), timeout=httpx.Timeout(5, connect=2)) as c:
        yield c


def test_one_kept_alive_connection_serves_many_requests(client: httpx.Client) -> None:
    with RawServer(lambda n, head: ok(b'{"n": %d}' % n)) as srv:
        got = [client.get(f"{srv.root_url}/items/{i}").json()["n"] for i in range(1, 6)]
    assert got == [1, 2, 3, 4, 5]
    assert srv.connections == 1
    assert srv.requests[0].startswith(b"GET /items/1 HTTP/1.1\r\n")
    assert b"\r\nHost: 127.0.0.1:" in srv.requests[0]


def test_a_connection_the_server_closed_while_idle_is_replaced_and_the_request_sent_once(client: httpx.Client) -> None:
    with RawServer(lambda n, head: ok(b'{"n": %d}' % n), close_after=1) as srv:
        assert client.get(f"{srv.root_url}/a").json() == {"n": 1}
        assert client.get(f"{srv.root_url}/b").json() == {"n": 2}  # the kept connection was closed by then
        assert client.get(f"{srv.root_url}/c").json() == {"n": 3}
    assert [r.split(b" ")[1] for r in srv.requests] == [b"/a", b"/b", b"/c"]  # nothing sent twice
    assert srv.connections == 3


def test_connection_close_is_obeyed(client: httpx.Client) -> None:
    with RawServer(lambda n, head: ok(b"{}", "Connection: close")) as srv:
        for _ in range(3):
            assert client.get(srv.root_url + "/x").status_code == 200
    assert srv.connections == 3


def test_chunked_and_gzip_bodies_are_decoded(client: httpx.Client) -> None:
    body = gzip.compress(b'{"users": ["a", "b"]}')
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + 7]), body[i:i + 7]) for i in range(0, len(body), 7)) + b"0\r\n\r\n"
    reply = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Encoding: gzip\r\n"
             b"Transfer-Encoding: chunked\r\n\r\n" + chunked)
    with RawServer(lambda n, head: reply) as srv:
        r = client.get(srv.root_url + "/users")
        assert r.json() == {"users": ["a", "b"]}
        assert client.get(srv.root_url + "/users").json() == {"users": ["a", "b"]}  # and the connection was reused
    assert srv.connections == 1


def test_a_body_cut_short_is_a_protocol_error_and_the_connection_is_not_reused(client: httpx.Client) -> None:
    def answer(n: int, head: bytes) -> bytes | None:
        return b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b'{"partial"' if n == 1 else ok()

    with RawServer(answer, close_after=1) as srv:
        with pytest.raises(httpx.RemoteProtocolError, match="90 bytes before the end"):
            client.get(srv.root_url + "/cut")
        assert client.get(srv.root_url + "/next").json() == {"ok": True}
    assert srv.connections == 2


def test_an_answer_that_is_not_http_is_a_protocol_error(client: httpx.Client) -> None:
    with RawServer(lambda n, head: b"SSH-2.0-OpenSSH_9.6\r\n\r\n", close_after=1) as srv:
        with pytest.raises(httpx.RemoteProtocolError, match="malformed answer"):
            client.get(srv.root_url + "/")


def test_no_answer_on_a_new_connection_is_a_protocol_error_not_a_second_send(client: httpx.Client) -> None:
    with RawServer(lambda n, head: None) as srv:
        with pytest.raises(httpx.RemoteProtocolError, match="without answering"):
            client.get(srv.root_url + "/")
    assert len(srv.requests) == 1


def test_timeouts_and_refused_connections_map_to_httpx_errors() -> None:
    hang = threading.Event()

    def never(n: int, head: bytes) -> None:  # holds the answer back until the test is done with it
        hang.wait(3)

    with RawServer(never) as srv:
        with httpx.Client(transport=Transport(), timeout=httpx.Timeout(0.3, connect=2)) as c:
            with pytest.raises(httpx.ReadTimeout):
                c.get(srv.root_url + "/slow")
        hang.set()
    free = socket.create_server(("127.0.0.1", 0))
    port = free.getsockname()[1]
    free.close()  # nothing listens there now
    with httpx.Client(transport=Transport(), timeout=2) as c:
        with pytest.raises(httpx.ConnectError):
            c.get(f"http://127.0.0.1:{port}/")


def test_headers_and_body_of_a_post_go_as_httpx_built_them(client: httpx.Client) -> None:
    with RawServer(lambda n, head: ok()) as srv:
        client.post(srv.root_url + "/token", data={"grant_type": "client_credentials"}, headers={"X-Trace": "abc"})
    head = srv.requests[0]
    assert head.startswith(b"POST /token HTTP/1.1\r\n")
    assert b"\r\nX-Trace: abc" in head and b"\r\nContent-Length: 29" in head
    assert head.count(b"\r\nHost:") == 1 and head.count(b"Accept-Encoding") == 1  # httpx's, not doubled


def test_the_client_uses_it_and_retries_a_cut_body_as_before() -> None:
    def answer(n: int, head: bytes) -> bytes | None:
        return b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n{" if n == 1 else ok(b'{"id": 7}')

    with RawServer(answer, close_after=1) as srv:
        settings = HttpSettings(max_retries=2, backoff_initial=0.01, backoff_max=0.02)
        with HttpClient(srv.root_url, settings=settings, connector="raw") as http:
            assert isinstance(http._client._transport, Transport)
            assert http.get_json("/item") == {"id": 7}
            assert http.stats.retries == 1
    assert len(srv.requests) == 2


def test_a_cut_body_on_every_attempt_fails_as_a_retryable_connection_error() -> None:
    with RawServer(lambda n, head: b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n{", close_after=1) as srv:
        settings = HttpSettings(max_retries=1, backoff_initial=0.01, backoff_max=0.02)
        with HttpClient(srv.root_url, settings=settings, connector="raw") as http:
            with pytest.raises(RetryableError, match="connection failed"):
                http.get_json("/item")
