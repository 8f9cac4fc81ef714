"""Run the demo API in a child process (so JSON rendering uses the other CPU core)."""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from ingest.errors import FatalError

__all__ = ["DemoServerProcess"]

_ROOT = str(Path(__file__).resolve().parents[2])  # the directory holding the ``connectors`` package


class DemoServerProcess:
    """``python -m connectors.demo.server`` on 127.0.0.1 and a free port; ``stop()`` ends it.

    The child also exits by itself when its standard input closes, so it never
    outlives the process that started it. The token reaches it through the
    environment, never the command line (which other users can read).
    """

    def __init__(self, token: str, start_timeout: float = 30.0) -> None:
        self.token = token
        self.start_timeout = start_timeout
        self.proc: subprocess.Popen | None = None
        self.url: str | None = None
        self._stderr = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def start(self) -> str:
        env = dict(os.environ)
        env["DEMO_API_TOKEN"] = self.token
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_ROOT, env.get("PYTHONPATH")) if p)
        self._stderr = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "connectors.demo.server", "--host", "127.0.0.1", "--port", "0",
             "--exit-on-stdin-eof"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr, env=env, close_fds=True,
        )
        lines: queue.Queue = queue.Queue()
        threading.Thread(target=lambda: lines.put(self.proc.stdout.readline()), daemon=True).start()
        try:
            line = lines.get(timeout=self.start_timeout).decode(errors="replace").strip()
        except queue.Empty:
            line = ""
        if not line.startswith("listening "):
            detail = self._stderr_tail()
            self.stop()
            raise FatalError(f"the demo server did not start{': ' + detail if detail else ''}")
        self.url = line.split(" ", 1)[1]
        return self.url

    def _stderr_tail(self) -> str:
        if self._stderr is None:
            return ""
        try:
            self._stderr.seek(0)
            return self._stderr.read()[-2000:].decode(errors="replace").strip()
        except (OSError, ValueError):
            return ""

    def stop(self, timeout: float = 5.0) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            try:
                if proc.stdin:
                    proc.stdin.close()  # the server exits on EOF
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.terminate()
                try:
                    proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            finally:
                if proc.stdout:
                    proc.stdout.close()
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None
