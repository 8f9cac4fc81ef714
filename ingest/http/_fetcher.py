"""The one concurrent-fetch primitive: items fetched by ``width`` threads, their results streamed back.

    fetcher = Fetcher(fetch, items, width=4, cancel=run_token)      # fetch(item, stop) -> iterable of chunks
    for item, chunk in fetcher:                                       # ordered: item by item, in input order
        ...
    fetcher.close()                                                   # or leave the loop: stopped, threads gone

``fetch(item, stop)`` returns an iterable of chunks (pages, usually; a
single-result fetch returns ``[result]``). It runs with ``stop`` (a
:class:`~ingest.http.CancelToken`, child of ``cancel`` or of the token in
effect) in effect, so the HTTP calls it makes give up once the fetcher stops
(passing ``stop`` as their ``cancel`` does the same explicitly). Memory is bounded whatever the sizes:

- ``ordered=True`` (default): at most ``window`` items (default 2 x width) are
  started and not yet consumed, and each holds at most ``buffer`` chunks
  (default 2) until the consumer reaches it; chunks come item by item in input
  order. ``next_item()`` names the item whose chunks come next without waiting
  for them (paging ahead uses it to check that a planned page is the one the
  paginator asks for).
- ``ordered=False``: chunks of different items interleave through one queue of
  ``window`` chunks; the chunks of one item stay in order. For fan-outs where
  the order of parents does not matter (throughput over determinism).

The first failing fetch stops the fetcher: items not yet started are never
started, running ones stop at their next request, wait or chunk, and the
consumer gets that error (in ordered mode when it reaches the failed item or
one the failure cancelled). ``cancel`` (the run's token) stops it the same
way, with the run's reason. Each task runs in a copy of the caller's
``contextvars`` context, so log fields bound per run follow it.

It serves the look-ahead of planned pages (``HttpClient.paginate``), the
``for_each`` fan-out of declarative streams (:mod:`ingest.streams`) and any
connector that needs to fetch many things at once.
"""

from __future__ import annotations

import contextvars
import queue
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Generic, TypeVar

from ingest.errors import Cancelled
from ingest.http._cancel import _CURRENT, CancelToken, current_token

__all__ = ["Fetcher", "END"]

T = TypeVar("T")
R = TypeVar("R")
END: Any = object()  # what next_item() returns when nothing is left
_DONE = object()
_NOTHING = object()
_POLL = 0.05


class _Slot:
    __slots__ = ("item", "chunks", "finished", "error", "started", "peeked")

    def __init__(self, item: Any, buffer: int) -> None:
        self.item = item
        self.chunks: queue.Queue = queue.Queue(maxsize=buffer + 1)  # + the end marker
        self.finished = threading.Event()
        self.error: BaseException | None = None
        self.started = False  # the consumer took a chunk of it
        self.peeked: Any = _NOTHING


class Fetcher(Generic[T, R]):
    """See the module docstring."""

    def __init__(self, fetch: Callable[[T, CancelToken], Iterable[R]], items: Iterable[T], *, width: int,
                 window: int | None = None, buffer: int = 2, ordered: bool = True,
                 cancel: CancelToken | threading.Event | None = None, name: str = "ingest-fetch") -> None:
        # default parent: the token in effect (the run's, in a run); each task runs under self.stop
        self.stop = CancelToken(parent=cancel if cancel is not None else current_token())
        self._fetch = fetch
        self._items = iter(items)
        self._width = max(1, width)
        self._window = max(1, window or 2 * self._width)
        self._buffer = max(1, buffer)
        self._ordered = ordered
        self._error: BaseException | None = None
        self._lock = threading.Lock()
        self._closed = False
        self._pool = ThreadPoolExecutor(self._width, thread_name_prefix=name)
        if ordered:
            self._slots: deque[_Slot] = deque()
            self._fill()
        else:
            self._out: queue.Queue = queue.Queue(maxsize=self._window)
            self._running = self._width
            for _ in range(self._width):
                self._pool.submit(contextvars.copy_context().run, self._work_unordered)

    # -- shared ---------------------------------------------------------------------------------
    def _failed(self, error: BaseException) -> None:
        if isinstance(error, Cancelled) and self.stop.is_set():
            return
        with self._lock:
            self._error = self._error or error
        self.stop.cancel("an earlier fetch failed")

    def _put(self, q: queue.Queue, value: Any) -> None:
        while True:
            try:
                q.put(value, timeout=_POLL)
                return
            except queue.Full:
                if self.stop.is_set():
                    raise Cancelled("the fetcher stopped") from None

    def _drain(self, item: Any, q: queue.Queue, wrap: Callable[[Any], Any]) -> None:
        """Run one fetch, handing its chunks on; its iterator is closed however it ends."""
        chunks = self._fetch(item, self.stop)
        try:
            for chunk in chunks:
                if not self._ordered and self.stop.is_set():  # stopped: not one more page of this parent
                    raise Cancelled("the fetcher stopped")
                self._put(q, wrap(chunk))
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()

    def _raise(self, error: BaseException | None) -> None:
        with self._lock:
            first = self._error
        if first is not None:
            raise first
        self.stop.check()  # the run's reason (a timeout, a shutdown)
        if error is not None:
            raise error
        raise Cancelled("the fetcher stopped")

    # -- ordered --------------------------------------------------------------------------------
    def _fill(self) -> None:
        while len(self._slots) < self._window and not self.stop.is_set():
            item = next(self._items, _DONE)
            if item is _DONE:
                return
            slot = _Slot(item, self._buffer)
            self._pool.submit(contextvars.copy_context().run, self._work_ordered, slot)
            self._slots.append(slot)

    def _work_ordered(self, slot: _Slot) -> None:
        _CURRENT.set(self.stop)  # this task's copy of the context: its HTTP calls obey the fetcher
        try:
            self.stop.check()
            self._drain(slot.item, slot.chunks, lambda chunk: chunk)
        except BaseException as e:  # handed to the consumer
            slot.error = e
            self._failed(e)
        finally:
            slot.finished.set()
            try:
                self._put(slot.chunks, _DONE)
            except Cancelled:
                pass  # the consumer checks ``finished``

    def _next_of(self, slot: _Slot) -> Any:
        """The slot's next chunk or _DONE, waiting for it (the consumer's side)."""
        if slot.peeked is not _NOTHING:
            value, slot.peeked = slot.peeked, _NOTHING
            return value
        while True:
            try:
                return slot.chunks.get(timeout=_POLL)
            except queue.Empty:
                if slot.finished.is_set() and slot.chunks.empty():
                    return _DONE

    def next_item(self) -> Any:
        """The item whose chunks come next (ordered mode), or ``END``. Waits only to learn whether the
        item being consumed has more chunks, never for a fetch that has not started to answer."""
        while self._slots:
            slot = self._slots[0]
            if not slot.started:
                return slot.item
            slot.peeked = self._next_of(slot)
            if slot.peeked is not _DONE or slot.error is not None:
                return slot.item
            self._slots.popleft()
            self._fill()
        return END

    def take(self) -> tuple[T, R]:
        """The next (item, chunk); StopIteration at the end; raises the error that stopped the fetcher."""
        if not self._ordered:
            return self._take_unordered()
        while self._slots:
            slot = self._slots[0]
            got = self._next_of(slot)
            if got is _DONE:
                if slot.error is not None:
                    self._raise(slot.error)
                self._slots.popleft()
                self._fill()
                continue
            slot.started = True
            return slot.item, got
        if self.stop.is_set() and not self._closed:
            self._raise(None)
        raise StopIteration

    # -- unordered ------------------------------------------------------------------------------
    def _work_unordered(self) -> None:
        _CURRENT.set(self.stop)
        try:
            while not self.stop.is_set():
                with self._lock:
                    item = next(self._items, _DONE)
                if item is _DONE:
                    break
                self._drain(item, self._out, lambda chunk, item=item: (item, chunk))
        except BaseException as e:  # handed to the consumer
            self._failed(e)
        finally:
            try:
                self._put(self._out, _DONE)
            except Cancelled:
                pass

    def _take_unordered(self) -> tuple[T, R]:
        while True:
            if self._running == 0:
                if self.stop.is_set():
                    self._raise(None)
                raise StopIteration
            try:
                got = self._out.get(timeout=_POLL)
            except queue.Empty:
                if self.stop.is_set():
                    self._raise(None)
                continue
            if got is _DONE:
                self._running -= 1
                continue
            if self.stop.is_set():
                self._raise(None)
            return got

    # -- iteration and shutdown -------------------------------------------------------------------
    def __iter__(self) -> Iterator[tuple[T, R]]:
        try:
            while True:
                try:
                    yield self.take()
                except StopIteration:
                    return
        finally:
            self.close()

    def close(self) -> None:
        """Stop: nothing new starts, running fetches give up at their next step; waits for the threads."""
        if self._closed:
            return
        self._closed = True
        self.stop.cancel("the consumer stopped")
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> Fetcher[T, R]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
