"""The lifecycle every loopback test server shares: start in a thread, stop, port, URL.

Shipped with the kit so a connector package's own fake server can use it::

    class AcmeFake(LoopbackServer):
        def _make_server(self):
            return QuietServer(("127.0.0.1", self.listen_port), AcmeHandler)   # AcmeHandler(QuietHandler)

    with AcmeFake() as fake:
        fake.root_url   # http://127.0.0.1:PORT
"""

from __future__ import annotations

import socket
import socketserver
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Self


class Managed:
    """``start()`` / ``stop()`` as a context manager: every test server (threads, child processes) ends with
    the ``with`` block that started it."""

    def start(self) -> Self:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class LoopbackServer(Managed):
    """Subclasses build their ``socketserver`` bound to 127.0.0.1 in ``_make_server`` (port
    ``listen_port``, 0: any free one). Handlers that call ``_track`` (:class:`QuietHandler` does) have their
    open connections shut by ``stop``, so idle keep-alive connections do not outlive the server."""

    thread_name = "loopback-server"
    listen_port = 0
    _server: socketserver.BaseServer | None = None
    _thread: threading.Thread | None = None

    def _make_server(self) -> socketserver.BaseServer:
        raise NotImplementedError

    def _track(self, conn: socket.socket, open_: bool) -> None:
        with self._connections_lock:
            (self._connections.add if open_ else self._connections.discard)(conn)

    def start(self) -> Self:
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        self._server = self._make_server()
        self._server.owner = self  # type: ignore[attr-defined]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=self.thread_name, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            with self._connections_lock:
                connections = list(self._connections)
            for conn in connections:  # idle keep-alive connections: their handler threads end now
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            self._server.server_close()
            self._thread.join(timeout=10)
            self._server = None

    @property
    def port(self) -> int:
        assert self._server is not None, f"{type(self).__name__} not started"
        return self._server.server_address[1]

    @property
    def root_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


class QuietServer(ThreadingHTTPServer):
    """A threaded HTTP server that neither prints a handler's broken connection (faults break them on
    purpose) nor waits for handler threads; ``owner`` is its :class:`LoopbackServer`."""

    daemon_threads = True
    owner: LoopbackServer

    def handle_error(self, request, client_address) -> None:
        pass


class QuietHandler(BaseHTTPRequestHandler):
    """HTTP/1.1 keep-alive, no Nagle delay, no log lines; its connection is tracked by the owner."""

    protocol_version = "HTTP/1.1"
    server: QuietServer

    def setup(self) -> None:
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # no delay between writes
        super().setup()
        self.server.owner._track(self.request, True)

    def finish(self) -> None:
        try:
            super().finish()
        except OSError:
            pass
        finally:
            self.server.owner._track(self.request, False)

    def log_message(self, *args) -> None:
        pass


class Serving(LoopbackServer):
    """A ready-made ``socketserver`` (e.g. ``wsgiref.make_server(...)``) run the same way."""

    def __init__(self, server: socketserver.BaseServer) -> None:
        self._ready = server

    def _make_server(self) -> socketserver.BaseServer:
        return self._ready
