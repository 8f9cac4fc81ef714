"""The lifecycle every loopback test server shares: start in a thread, stop, port, URL.

Shipped with the kit so a connector package's own fake server can use it::

    class AcmeFake(LoopbackServer):
        def _make_server(self):
            return ThreadingHTTPServer(("127.0.0.1", 0), AcmeHandler)

    with AcmeFake() as fake:
        fake.root_url   # http://127.0.0.1:PORT
"""

from __future__ import annotations

import socketserver
import threading
from typing import Self


class LoopbackServer:
    """Subclasses build their ``socketserver`` bound to 127.0.0.1 port 0 in ``_make_server``."""

    thread_name = "loopback-server"
    _server: socketserver.BaseServer | None = None
    _thread: threading.Thread | None = None

    def _make_server(self) -> socketserver.BaseServer:
        raise NotImplementedError

    def start(self) -> Self:
        self._server = self._make_server()
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=self.thread_name, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=10)
            self._server = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._server is not None, f"{type(self).__name__} not started"
        return self._server.server_address[1]

    @property
    def root_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


class Serving(LoopbackServer):
    """A ready-made ``socketserver`` (e.g. ``wsgiref.make_server(...)``) run the same way."""

    def __init__(self, server: socketserver.BaseServer) -> None:
        self._ready = server

    def _make_server(self) -> socketserver.BaseServer:
        return self._ready
