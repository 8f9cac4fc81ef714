"""An ordered, bounded, cancellable map: pages fetched ahead of the consumer, handed back in order.

    ahead = Ahead(fetch, planned_requests, width=4, key=PageRequest.signature)
    while ahead.next_is(wanted.signature()):
        result = ahead.take()        # the next result in order; raises the first error any fetch hit
    ahead.close()                    # stop: nothing new starts, the pool is gone when this returns

At most ``width`` fetches run at once and at most ``window`` (2 x width) are
submitted and not yet taken, so memory holds a handful of pages however long
the plan. ``stop`` is a :class:`CancelToken`, a child of ``cancel`` (the run's token)
when one is given. The first failing fetch sets ``stop``: fetches not yet started give
up before sending, retries stop waiting, and the consumer gets that error when
it reaches a page the failure cancelled (or the failed page itself).
"""

from __future__ import annotations

import contextvars
import threading
from collections import deque
from collections.abc import Callable, Hashable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Generic, TypeVar

from ingest.errors import Cancelled
from ingest.http._cancel import CancelToken

__all__ = ["Ahead", "Cancelled"]

T = TypeVar("T")
R = TypeVar("R")
_END = object()


class Ahead(Generic[T, R]):
    """Runs ``fetch(item, stop)`` for each of ``items`` ahead of the consumer (see the module docstring).

    ``fetch`` should raise :class:`Cancelled` once ``stop`` is set instead of
    starting a request or waiting for a retry.
    """

    def __init__(self, fetch: Callable[[T, CancelToken], R], items: Iterable[T], *, width: int,
                 window: int | None = None, key: Callable[[T], Hashable] = lambda item: item,
                 name: str = "ingest-ahead", cancel: CancelToken | threading.Event | None = None) -> None:
        self.stop = CancelToken(parent=cancel)
        self._fetch, self._key = fetch, key
        self._items = iter(items)
        self._window = max(1, window or 2 * width)
        self._queue: deque[tuple[T, Future[R]]] = deque()
        self._error: BaseException | None = None
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max(1, width), thread_name_prefix=name)
        self._fill()

    def _fill(self) -> None:
        while len(self._queue) < self._window and not self.stop.is_set():
            item = next(self._items, _END)
            if item is _END:
                return
            # each task runs in a copy of the caller's context: log fields bound per run follow the page
            future = self._pool.submit(contextvars.copy_context().run, self._fetch, item, self.stop)
            future.add_done_callback(self._done)
            self._queue.append((item, future))

    def _done(self, future: Future[R]) -> None:
        if future.cancelled():
            return
        error = future.exception()
        if error is not None and not isinstance(error, Cancelled):
            with self._lock:
                self._error = self._error or error
            self.stop.cancel("an earlier fetch failed")

    def next_is(self, key: Hashable) -> bool:
        """Whether ``take`` would return the result of the item with this key."""
        return bool(self._queue) and self._key(self._queue[0][0]) == key

    def take(self) -> R:
        """The next result, in order; raises that fetch's error, or the error that cancelled it."""
        _, future = self._queue.popleft()
        self._fill()
        try:
            return future.result()
        except Cancelled:
            with self._lock:
                error = self._error
            if error is None:
                self.stop.check()  # the run's own reason (a timeout, a shutdown) when it was that
                raise
            raise error from None

    def close(self) -> None:
        """Stop: queued fetches are cancelled, running ones give up at their next step; waits for them."""
        self.stop.cancel("the stream stopped")
        for _, future in self._queue:
            future.cancel()
        self._queue.clear()
        self._pool.shutdown(wait=True, cancel_futures=True)
