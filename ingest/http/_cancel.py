"""Cancellation of one run, shared by every wait the HTTP layer makes.

    token = CancelToken(deadline=time.monotonic() + 3600, timeout_message="timed out after 3600 s")
    token = CancelToken(parent=shutdown_event, parent_message="stopped: the daemon is shutting down")
    token.wait(30)          # sleeps up to 30 s; True (at once) when the token is cancelled meanwhile
    token.check()           # raises ingest.errors.Cancelled (with the reason and the snapshot status)
    token.cancel("interrupted (Ctrl-C)")
    child = token.child()   # cancelled with its parent, or on its own (a look-ahead that stops)

The token in effect (:func:`current_token`, a context variable) is the one the
HTTP layer obeys when a call names none: the runner sets the run's token for
the fetch thread, and each task of a :class:`~ingest.http.Fetcher` runs under
the fetcher's own token (a child), so a hand-written fan-out stops with the run
and when one of its fetches fails, without passing tokens around.

A token is cancelled when :meth:`cancel` is called, when its deadline
passes, or when its parent (another token or a ``threading.Event``, such as
the daemon's per-run cancel event) is. The HTTP layer waits through
:meth:`wait` (Retry-After and backoff sleeps, the rate limiter, a turn for a
connection) and checks the token before each request and between the chunks
of a body, so a run stops within a fraction of a second of its token, however
long the source asked it to wait.
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
import time
from collections.abc import Iterator

from ingest.errors import Cancelled

__all__ = ["CancelToken", "current_token", "using_token"]

_SLICE = 0.05  # seconds between looks at a parent or a deadline while waiting
_CURRENT: contextvars.ContextVar[CancelToken | None] = contextvars.ContextVar("ingest_cancel_token", default=None)


def current_token() -> CancelToken | None:
    """The token in effect in this thread / task (see the module docstring)."""
    return _CURRENT.get()


@contextlib.contextmanager
def using_token(token: CancelToken | None) -> Iterator[None]:
    """Make ``token`` the one in effect inside the block."""
    reset = _CURRENT.set(token)
    try:
        yield
    finally:
        _CURRENT.reset(reset)


class CancelToken:
    """See the module docstring. Thread-safe; cancelling is idempotent (the first reason wins)."""

    def __init__(self, *, deadline: float | None = None, timeout_message: str = "timed out",
                 parent: CancelToken | threading.Event | None = None,
                 parent_message: str = "cancelled") -> None:
        self.deadline = deadline
        self._timeout_message = timeout_message
        self._parent = parent
        self._parent_message = parent_message
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._reason: tuple[str, str] | None = None

    def cancel(self, message: str = "cancelled", status: str = "interrupted") -> None:
        """Cancel (``status`` is what the snapshot becomes: ``interrupted``, or ``failed`` for a timeout)."""
        with self._lock:
            if self._reason is None:
                self._reason = (message, status)
        self._event.set()

    def child(self, message: str = "cancelled") -> CancelToken:
        return CancelToken(parent=self, parent_message=message)

    def is_set(self) -> bool:
        if self._event.is_set():
            return True
        if self.deadline is not None and time.monotonic() >= self.deadline:
            self.cancel(self._timeout_message, "failed")
            return True
        if self._parent is not None and self._parent.is_set():
            if isinstance(self._parent, CancelToken):
                message, status = self._parent.reason or (self._parent_message, "interrupted")
            else:
                message, status = self._parent_message, "interrupted"
            self.cancel(message, status)
            return True
        return False

    @property
    def reason(self) -> tuple[str, str] | None:
        """(message, snapshot status) once cancelled."""
        return self._reason

    def remaining(self) -> float | None:
        return None if self.deadline is None else max(0.0, self.deadline - time.monotonic())

    def wait(self, seconds: float | None = None) -> bool:
        """Sleep ``seconds`` (None: until cancelled), returning early, with True, once cancelled."""
        end = None if seconds is None else time.monotonic() + max(0.0, seconds)
        while not self.is_set():
            left = _SLICE if end is None else end - time.monotonic()
            if left <= 0:
                return False
            if self._parent is None and self.deadline is None:
                self._event.wait(left if end is not None else None)
            else:
                self._event.wait(min(left, _SLICE))
        return True

    def check(self) -> None:
        """Raise :class:`ingest.errors.Cancelled` once cancelled."""
        if self.is_set():
            message, status = self._reason or ("cancelled", "interrupted")
            raise Cancelled(message, status=status)
