"""Paginators: small stateful objects the HTTP layer drives (after dlt's BasePaginator).

The engine owns the loop::

    paginator.init_request(request)
    while True:
        response = fetch(request)
        records = select(response)
        kept = paginator.update_state(response, data, records)   # may drop records already seen
        yield kept if kept is not None else records
        if not paginator.has_next: break
        paginator.update_request(request)   # base class refuses a request it has already sent

Each ``paginate()`` call uses a fresh copy (``paginator.fresh()``), so one
configured paginator can serve many streams.

After the first page, ``paginator.plan(request)`` may name every later page
(offset or page number with a total, SCIM with a trusted ``totalResults``);
the engine then fetches those concurrently, but still runs the loop above page
by page and uses a fetched page only when it is the request ``update_request``
makes. The plan is a guess the sequential state checks: a short page or an
early end drops the rest of the plan and paging goes on one page at a time.

End-of-listing check: a paginator that reads a total of records (offset with
``total_path``, SCIM's ``totalResults``) sets ``counted``; the engine then
counts the DISTINCT records it received (by ``id_field``, else the whole
record) and, when the listing ends with fewer than the largest total the
source announced (:meth:`Paginator.announced_total`), raises
:class:`~ingest.errors.ListingChangedError`: records deleted while paging
shift later pages, so a record that still exists was never fetched.

Resume (a run that died continues where it had staged, see ``ingest.runner``): ``state()`` is the
paginator's position after the last page handed on, as JSON; ``restore(state)`` on a fresh copy
and then ``update_request`` give the request of the next page. ``resumable`` says whether that
continuation is exact: cursors and next links are (while the source still honours them; one it
refuses makes the stream start over), positions counted in records or pages (offset, page number,
SCIM ``startIndex``) are not over a list that changed in between (records deleted before the
position shift others past it), so those streams start over.

Page-size paginators (offset, page number) never stop on a page merely
shorter than asked: many APIs cap the page size silently (ask for 500, get
100), and stopping there would drop data without a word. They stop on an empty
page, on ``total``, or on a page shorter than the largest page already seen.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urljoin

import httpx

from ingest.errors import PaginationLoopError, ProtocolError
from ingest.pages import json_path

__all__ = [
    "PageRequest",
    "Paginator",
    "SinglePage",
    "OffsetPaginator",
    "PageNumberPaginator",
    "CursorPaginator",
    "NextUrlPaginator",
    "LinkHeaderPaginator",
    "ScimPaginator",
    "PAGINATORS",
    "make_paginator",
    "json_path",
]


@dataclass
class PageRequest:
    url: str
    params: dict[str, Any] = field(default_factory=dict)

    def signature(self) -> tuple:
        return (self.url, tuple(sorted((k, str(v)) for k, v in self.params.items())))


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value) if value is not None and not isinstance(value, bool) else None
    except (TypeError, ValueError):
        return None


class Paginator:
    """Base class: subclasses implement ``update_state`` and ``_next``; loop detection lives here."""

    has_next: bool = True
    counted: bool = False  # the source announces a total of records: the engine checks the listing against it
    id_field: str | None = None  # what makes two records the same, for that check (None: the whole record)

    resumable: bool = False  # a listing may continue from ``state()`` in a later process (module docstring)
    # reads of a page no more than its top-level fields and its records' count and ids (``id_field``): its
    # pages may be handed on undecoded (ingest.pages; paging reads the page's light decode)
    light: bool = False
    _state_fields: tuple[str, ...] = ()  # what ``state()`` saves and ``restore()`` sets

    def state(self) -> dict[str, Any]:
        """Where the next page is, as JSON (``restore`` on a fresh copy continues from there)."""
        return {f: getattr(self, f) for f in self._state_fields}

    def restore(self, state: dict[str, Any]) -> None:
        """Continue from ``state()`` of an earlier listing; the engine then calls ``update_request``."""
        for f in self._state_fields:
            if f in state:
                setattr(self, f, state[f])
        self.has_next = True

    def fresh(self) -> Paginator:
        clone = copy.copy(self)
        clone.has_next = True
        clone._seen = set()
        clone._announced = None
        clone._reset()
        return clone

    def _announce(self, total: int | None) -> None:
        if total is not None:
            previous = getattr(self, "_announced", None)
            self._announced = total if previous is None else max(previous, total)

    def announced_total(self) -> int | None:
        """The largest number of records the source announced during this listing (None: it named none)."""
        return getattr(self, "_announced", None)

    def _reset(self) -> None:
        pass

    def init_request(self, request: PageRequest) -> None:
        self._seen = {request.signature()}

    def update_state(self, response: httpx.Response, data: Any, records: list[Any]) -> list[Any] | None:
        """Read where the next page is; return a replacement record list to drop records, else None."""
        raise NotImplementedError

    def _next(self, request: PageRequest) -> None:
        raise NotImplementedError

    def plan(self, request: PageRequest) -> Iterable[PageRequest] | None:
        """Every request after the first page's, when the first page is enough to know them.

        Called once, after ``update_state`` of the first page (``request`` is
        the first page's request). None (the default) when each page names the
        next one: cursors, next links, or a total the paginator does not trust.
        """
        return None

    def update_request(self, request: PageRequest) -> None:
        self._next(request)
        sig = request.signature()
        if sig in self._seen:
            raise PaginationLoopError(
                f"the source sent a page token it already gave ({type(self).__name__}); stopping instead of looping"
            )
        self._seen.add(sig)


class SinglePage(Paginator):
    """No pagination: one request."""

    light = True

    def update_state(self, response, data, records):
        self.has_next = False


def _planned(request: PageRequest, param: str, values: Iterable[int]) -> Iterator[PageRequest]:
    """``request`` with ``param`` set to each of ``values`` (lazily: a long plan costs no memory)."""
    return (PageRequest(request.url, {**request.params, param: v}) for v in values)


class _PageSize:
    """Shared stop rule of offset and page-number paging (see the module docstring)."""

    def _short_page_ends(self, n: int, asked: int) -> bool:
        largest = getattr(self, "_largest", 0)
        self._largest = max(largest, n)
        return n == 0 or (n < asked and n < largest)


class OffsetPaginator(_PageSize, Paginator):
    """``?offset=0&limit=100`` answered by ``{"items": [...], "total": 250}``.

    The offset advances by the records received. Stops at ``total`` (when
    ``total_path`` names it), on an empty page, or on a page shorter than an
    earlier one (so a server that caps ``limit`` is paged through in full).
    """

    def __init__(self, limit: int = 100, offset_param: str = "offset", limit_param: str = "limit",
                 total_path: str | None = None, start: int = 0, id_field: str | None = "id") -> None:
        self.limit, self.offset_param, self.limit_param = limit, offset_param, limit_param
        self.total_path, self.start, self.id_field = total_path, start, id_field
        self.counted = total_path is not None
        self._reset()

    _state_fields = ("offset", "_largest")

    def _reset(self) -> None:
        self.offset = self.start
        self._largest = 0
        self._total: int | None = None

    def init_request(self, request):
        request.params[self.offset_param] = self.offset
        request.params[self.limit_param] = self.limit
        super().init_request(request)

    def update_state(self, response, data, records):
        self.offset += len(records)
        self._total = total = _int_or_none(json_path(data, self.total_path)) if self.total_path else None
        self._announce(total)
        ends = self._short_page_ends(len(records), self.limit)
        if total is not None:
            self.has_next = bool(records) and self.offset < total
        else:
            self.has_next = not ends

    def _next(self, request):
        request.params[self.offset_param] = self.offset

    def plan(self, request):
        """With ``total``, and a first page of ``limit`` records: offsets ``limit`` apart up to ``total``."""
        if self._total is None or self.offset - self.start != self.limit:
            return None  # no total, or a short first page (a capped limit): page by what arrives
        return _planned(request, self.offset_param, range(self.offset, self._total, self.limit))


class PageNumberPaginator(_PageSize, Paginator):
    """``?page=1&per_page=100`` answered by ``{"data": [...], "total_pages": 3}``.

    Stops after ``total_pages`` (when ``total_pages_path`` names it), on an
    empty page, or on a page shorter than an earlier one.
    """

    def __init__(self, size: int = 100, page_param: str = "page", size_param: str | None = "per_page",
                 start: int = 1, total_pages_path: str | None = None) -> None:
        self.size, self.page_param, self.size_param = size, page_param, size_param
        self.start, self.total_pages_path = start, total_pages_path
        self._reset()

    _state_fields = ("page", "_largest")

    def _reset(self) -> None:
        self.page = self.start
        self._largest = 0
        self._total_pages: int | None = None

    def init_request(self, request):
        request.params[self.page_param] = self.page
        if self.size_param:
            request.params[self.size_param] = self.size
        super().init_request(request)

    def update_state(self, response, data, records):
        total_pages = _int_or_none(json_path(data, self.total_pages_path)) if self.total_pages_path else None
        self._total_pages = total_pages
        ends = self._short_page_ends(len(records), self.size)
        if total_pages is not None:
            self.has_next = bool(records) and self.page - self.start + 1 < total_pages
        else:
            self.has_next = not ends
        self.page += 1

    def _next(self, request):
        request.params[self.page_param] = self.page

    def plan(self, request):
        """With ``total_pages``: every page number up to it."""
        if self._total_pages is None:
            return None
        return _planned(request, self.page_param, range(self.page, self.start + self._total_pages))


class CursorPaginator(Paginator):
    """A token in the body sent back as a parameter: ``{"data": [...], "next_cursor": "abc"}`` -> ``?cursor=abc``.

    ``cursor_path`` is dotted (``"response_metadata.next_cursor"``); a missing,
    null or empty token ends the stream; a token already sent raises
    PaginationLoopError.
    """

    def __init__(self, cursor_path: str = "next_cursor", cursor_param: str = "cursor") -> None:
        self.cursor_path, self.cursor_param = cursor_path, cursor_param
        self.cursor = None

    resumable = True
    _state_fields = ("cursor",)

    def _reset(self):
        self.cursor = None

    def update_state(self, response, data, records):
        cursor = json_path(data, self.cursor_path)
        if cursor is not None and not isinstance(cursor, (str, int)):
            raise ProtocolError(f"page token at {self.cursor_path!r} is a {type(cursor).__name__}, not a string")
        self.cursor = cursor
        self.has_next = cursor is not None and cursor != ""

    def _next(self, request):
        request.params[self.cursor_param] = self.cursor


class NextUrlPaginator(Paginator):
    """The next page's URL in the body: ``{"results": [...], "next": "https://api/x?page=2"}``.

    Absolute or relative to the page it came in; ``next_path`` is dotted and
    may be ``"@odata.nextLink"`` style (``json_path`` treats a key with dots
    that exists as is first). Null, empty or missing ends the stream.
    """

    def __init__(self, next_path: str = "next") -> None:
        self.next_path = next_path
        self.next_url: str | None = None

    resumable = True
    _state_fields = ("next_url",)

    def _reset(self):
        self.next_url = None

    def update_state(self, response, data, records):
        self.next_url = json_path(data, self.next_path)
        if self.next_url is not None and not isinstance(self.next_url, str):
            raise ProtocolError(f"next-page link at {self.next_path!r} is not a URL")
        self.has_next = bool(self.next_url)
        if self.has_next:
            self.next_url = urljoin(str(response.request.url), self.next_url)

    def _next(self, request):
        request.url, request.params = self.next_url, {}


class LinkHeaderPaginator(Paginator):
    """RFC 8288 ``Link: <https://api/x?page=2>; rel="next", <https://api/x?page=9>; rel="last"``
    (GitHub, Okta, ...). No ``rel="next"`` ends the stream."""

    def __init__(self, rel: str = "next") -> None:
        self.rel = rel
        self.next_url: str | None = None

    resumable = True
    _state_fields = ("next_url",)

    def _reset(self):
        self.next_url = None

    def update_state(self, response, data, records):
        link = response.links.get(self.rel)
        self.next_url = urljoin(str(response.request.url), link["url"]) if link else None
        self.has_next = bool(self.next_url)

    def _next(self, request):
        request.url, request.params = self.next_url, {}


class ScimPaginator(Paginator):
    """SCIM 2.0 (RFC 7644 §3.4.2.4): ``?startIndex=1&count=100``; body
    ``{"schemas": ["urn:ietf:params:scim:api:messages:2.0:ListResponse"], "totalResults": 250,
    "itemsPerPage": 100, "startIndex": 1, "Resources": [...]}``.

    It never ends a stream short without saying so:

    - the next ``startIndex`` advances by the items actually received
      (providers may send fewer than asked);
    - records whose ``id`` was on the previous page are dropped, and a page with
      nothing new ends the stream (only one page of ids is kept: memory stays flat);
    - ``totalResults`` ends the stream only once it has proved to count the
      collection, not the page (it was larger than a page): some providers
      report the page length there. Until then paging goes on to an empty page,
      which costs one request for a collection that fits in one page;
    - a page with nothing new while ``totalResults`` says items are still missing
      is a :class:`~ingest.errors.ProtocolError` (the provider ignores
      ``startIndex``): a failed run, never a silently truncated snapshot.

    Pages can be fetched concurrently (:meth:`plan`) once the first page came
    back full (``count`` items) with a trusted ``totalResults``: startIndex
    ``1 + k * count`` up to it. The engine uses each only if it is the page the
    rules above ask for next, so a provider that caps the page below ``count``
    is paged one page after another from the first short page on.
    """

    counted = True
    light = True
    _state_fields = ("start_index", "received", "unique")

    def __init__(self, count: int = 100, id_field: str = "id") -> None:
        self.count, self.id_field = count, id_field
        self._reset()

    def _reset(self):
        self.start_index, self.received, self.unique = 1, 0, 0
        self._previous: set[Any] = set()
        self._total_trusted = False
        self._total: int | None = None

    def init_request(self, request):
        request.params["startIndex"] = self.start_index
        request.params["count"] = self.count
        super().init_request(request)

    def update_state(self, response, data, records):
        ids = {r.get(self.id_field) for r in records if isinstance(r, dict)} - {None}
        kept = [r for r in records if not (isinstance(r, dict) and r.get(self.id_field) in self._previous)]
        self._previous = ids
        self.received += len(records)
        self.unique += len(kept)
        self.start_index += len(records)
        self._total = total = _int_or_none(data.get("totalResults")) if isinstance(data, dict) else None
        self._announce(total)
        if total is not None and total > len(records):
            self._total_trusted = True
        if not records:
            self.has_next = False
        elif not kept:
            self.has_next = False
            if self._total_trusted and total is not None and self.unique < total:
                raise ProtocolError(
                    f"the provider answered startIndex={self.start_index - len(records)} with the items it had "
                    f"just sent: got {self.unique} of the {total} it announces (it seems to ignore startIndex)")
        elif self._total_trusted and total is not None and total >= self.received:
            self.has_next = self.received < total
        else:
            self.has_next = True  # totalResults missing, unproven or smaller than what arrived: page until empty
        return kept if len(kept) != len(records) else None

    def _next(self, request):
        request.params["startIndex"] = self.start_index

    def plan(self, request):
        """With a trusted ``totalResults`` and a full first page: startIndex ``count`` apart up to it."""
        if not self._total_trusted or self._total is None or self.received != self.count:
            return None
        return _planned(request, "startIndex", range(self.start_index, self._total + 1, self.count))


PAGINATORS: dict[str, type[Paginator]] = {
    "single_page": SinglePage,
    "offset": OffsetPaginator,
    "page_number": PageNumberPaginator,
    "cursor": CursorPaginator,
    "next_url": NextUrlPaginator,
    "link_header": LinkHeaderPaginator,
    "scim": ScimPaginator,
}


def make_paginator(spec: dict[str, Any]) -> Paginator:
    """Build a paginator from config: ``{"type": "link_header"}``; unknown names list the known ones."""
    spec = dict(spec)
    name = spec.pop("type", None)
    if name not in PAGINATORS:
        from ingest.errors import ConfigError

        raise ConfigError(f"unknown paginator {name!r}; known: {', '.join(sorted(PAGINATORS))}")
    return PAGINATORS[name](**spec)
