"""Per-parent listings fetched concurrently, streamed page by page (the identity-provider
connectors' "members of each group", "users of each app").

    for page in fan_out(group_ids, lambda gid: (map_members(gid, p) for p in http.paginate(...)), workers=4):
        yield from page

``pages(parent)`` returns an iterator of pages (lists of records); ``workers`` parents are listed
at once and their pages go through one bounded queue (``2 x workers`` pages), so a group of any
size streams without being held in memory and a slow consumer holds the fetchers back. Pages of
different parents interleave; the records of one page stay together. The first error stops
every fetcher (each checks between pages) and is raised to the consumer; a consumer that stops
early stops the fetchers the same way. Every task runs in a copy of the caller's context, so
the run's log fields follow it.

This stands in for the engine's ``for_each`` fan-out until the declarative streams land.
"""

from __future__ import annotations

import contextvars
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

__all__ = ["fan_out"]

P = TypeVar("P")
_DONE = object()


class _Stopped(Exception):
    pass


def fan_out(parents: Iterable[P], pages: Callable[[P], Iterable[list[Any]]], *, workers: int,
            name: str = "ingest-fan-out") -> Iterator[list[Any]]:
    workers = max(1, workers)
    out: queue.Queue = queue.Queue(maxsize=2 * workers)
    stop = threading.Event()
    todo = iter(parents)
    todo_lock = threading.Lock()

    def put(item: Any) -> None:
        while not stop.is_set():
            try:
                out.put(item, timeout=0.1)
                return
            except queue.Full:
                continue
        raise _Stopped()

    def work() -> None:
        try:
            while not stop.is_set():
                with todo_lock:
                    parent = next(todo, _DONE)
                if parent is _DONE:
                    break
                for page in pages(parent):
                    put(page)
                    if stop.is_set():
                        raise _Stopped()
        except _Stopped:
            pass
        except BaseException as e:  # handed to the consumer, who raises it
            stop.set()
            try:
                out.put_nowait(e)
            except queue.Full:
                errors.append(e)
        finally:
            try:
                put(_DONE)
            except _Stopped:
                pass

    errors: list[BaseException] = []
    threads = [threading.Thread(target=contextvars.copy_context().run, args=(work,), name=f"{name}-{i}",
                                daemon=True) for i in range(workers)]
    for t in threads:
        t.start()
    finished = 0
    try:
        while finished < workers:
            if errors:
                raise errors[0]
            try:
                item = out.get(timeout=0.1)
            except queue.Empty:
                continue
            if item is _DONE:
                finished += 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield item
        if errors:
            raise errors[0]
    finally:
        stop.set()
        while any(t.is_alive() for t in threads):
            try:
                while True:
                    out.get_nowait()
            except queue.Empty:
                pass
            for t in threads:
                t.join(timeout=0.05)
