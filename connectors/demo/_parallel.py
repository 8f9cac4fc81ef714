"""Page several partitions of one list at once (each with its own paginator), pages interleaved.

With one request in flight, server and client take turns: the server renders
a page while the client waits, then the client parses it while the server
waits. Two or three partitions in flight keep both busy. Pages arrive in no
fixed order across partitions; within one partition, in order.
"""

from __future__ import annotations

import contextvars
import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["interleave_pages"]

_DONE = object()


def interleave_pages(sources: list[Callable[[], Iterator[list[Any]]]], depth: int | None = None
                     ) -> Iterator[list[Any]]:
    """Yield the pages of every source (each a function returning a page iterator), running them in
    threads; at most ``depth`` pages wait in memory. The first error stops the others and is raised."""
    if len(sources) == 1:
        yield from sources[0]()
        return
    q: queue.Queue = queue.Queue(maxsize=depth or 1)
    stop = threading.Event()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                pass
        return False

    def work(make: Callable[[], Iterator[list[Any]]]) -> None:
        pages = None
        try:
            pages = make()
            for page in pages:
                if not put(page):
                    return
            put(_DONE)
        except BaseException as e:  # handed to the consumer
            put(e)
        finally:
            close = getattr(pages, "close", None)
            if close is not None:
                close()

    threads = [threading.Thread(target=contextvars.copy_context().run, args=(work, make),
                                name=f"demo-fetch-{n}", daemon=True) for n, make in enumerate(sources)]
    for t in threads:
        t.start()
    try:
        running = len(threads)
        while running:
            item = q.get()
            if item is _DONE:
                running -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield item
    finally:
        stop.set()
        for t in threads:
            while t.is_alive():
                try:
                    q.get_nowait()
                except queue.Empty:
                    pass
                t.join(timeout=0.05)
