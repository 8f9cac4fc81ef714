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

It is the engine's one concurrent-fetch primitive, :class:`ingest.http.Fetcher`, in its interleaved
mode; a connector declared with :mod:`ingest.streams` gets the same through ``for_each``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

from ingest.http import Fetcher

__all__ = ["fan_out"]

P = TypeVar("P")


def fan_out(parents: Iterable[P], pages: Callable[[P], Iterable[list[Any]]], *, workers: int,
            name: str = "ingest-fan-out") -> Iterator[list[Any]]:
    """Pages of every parent's listing, interleaved (see the module docstring); the engine's
    :class:`~ingest.http.Fetcher` (``ordered=False``) does the work."""
    with Fetcher(lambda parent, stop: pages(parent), parents, width=max(1, workers), ordered=False,
                 name=name) as fetcher:
        for _, page in fetcher:
            yield page
