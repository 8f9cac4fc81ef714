"""Page several partitions of one list at once (each with its own paginator), pages interleaved.

With one request in flight, server and client take turns: the server renders
a page while the client waits, then the client parses it while the server
waits. Two or three partitions in flight keep both busy. Pages arrive in no
fixed order across partitions; within one partition, in order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from ingest.http import Fetcher

__all__ = ["interleave_pages"]


def interleave_pages(sources: list[Callable[[], Iterator[list[Any]]]], depth: int | None = None
                     ) -> Iterator[list[Any]]:
    """Yield the pages of every source (each a function returning a page iterator), running them in
    threads; at most ``depth`` pages wait in memory. The first error stops the others and is raised.
    The engine's :class:`~ingest.http.Fetcher` (``ordered=False``) does the work."""
    if len(sources) == 1:
        yield from sources[0]()
        return
    with Fetcher(lambda make, stop: make(), sources, width=len(sources), window=depth or 1, ordered=False,
                 name="demo-fetch") as fetcher:
        for _, page in fetcher:
            yield page
