"""Declarative streams: a stream is data, the engine owns every loop.

A connector declares what to list and how to map it; :class:`StreamReader`
does the paging (any paginator of :mod:`ingest.http`), the fan-out over parent
records, the concurrency (one :class:`~ingest.http.Fetcher`, within the
client's ``max_concurrency``), cancellation (the run's token) and the
end-of-listing checks (offset / SCIM totals, repeated page tokens)::

    from ingest.streams import Stream, StreamReader

    USERS = Stream("accounts", "/users", selector="data", paginator=CursorPaginator("meta.next"), map=map_user)
    GROUPS = Stream("entitlements", "/groups", paginator=LinkHeaderPaginator(), map=map_group)
    MEMBERS = Stream(
        "assignments", "/groups/{parent.entitlement_id}/members",     # one listing per parent record
        for_each=GROUPS, skip_missing=True,                            # a group deleted since: no members
        paginator=OffsetPaginator(limit=100, total_path="total"), selector="items",
        map=lambda m, parent: {"account_id": m["user_id"], "entitlement_id": parent["entitlement_id"]})

    class Acme(Connector):
        def list_accounts(self):
            return self.streams_reader.records(USERS)       # reader = StreamReader(self.http, keep=[GROUPS])

A :class:`Stream` has:

``name``
    what errors and logs call it (``accounts``, ``assignments``, ...).
``path``, ``params``
    under the client's ``base_url``; ``{parent.<dotted.path>}`` in either is
    the parent record's value (URL-quoted in the path; a param that is only a
    template keeps the value's type).
``selector``
    dotted path to the record list in each page (``"data"``), a function of the
    body, or None (the body is the list).
``paginator``
    a :class:`~ingest.http.Paginator` (each listing uses a fresh copy), or None
    for the reader's default (``SinglePage`` unless the reader names one).
``map``
    ``map(record)`` or ``map(record, parent)``: a pure function returning one
    record (a dict or a :mod:`ingest.records` model), several (a list or a
    generator), or None to drop it. None: records pass as they are.
``for_each``
    a parent :class:`Stream` (its mapped records; the reader reuses them when it
    already read that stream and was told to ``keep`` it) or a function
    returning parent records. Each parent gets its own listing; listings run
    ``concurrency`` at a time (default: the client's ``max_concurrency``), each
    paged one page after another, pages handed on in parent order (``ordered``)
    or as they arrive (``ordered=False``).
``skip_missing``
    a parent whose listing answers 404 (deleted since it was listed) gives no
    records instead of failing the run (``stream_parent_missing`` is logged).
``pass_through``
    the connector hands the stream's records on untouched (it returns
    ``reader.records(stream)`` or yields from it): when the run stages through
    worker processes, pages may then reach them undecoded, decoded and mapped
    there (:mod:`ingest.pages`; the ``selector`` and ``map`` must be module-level
    functions or ``functools.partial`` of them, else pages are decoded here). A
    ``selector`` function then sees each record reduced to its id: it must pick
    the records (and may check the page's top-level fields), not look into them.
``ignored_fields``
    fields of a record that its ``map`` never reads, top-level or one level down
    (``"groups"``, ``"meta.lastModified"``): a re-run tells a record it already
    staged by its bytes without them (:mod:`ingest.memo`), so one that changed
    only there (provider bookkeeping) is not decoded again. A field listed here
    that the map does read would leave its change out of the staging.

Errors raised while reading a stream carry its name (``IngestError.stream``).

When the run checkpoints the stream being read (:mod:`ingest.checkpoints`), the reader continues
each listing from its saved position (a paginator's state, or the parents a fan-out had done; a
listing that was done is skipped) and marks every page it hands on (a fan-out: every parent done,
in parent order). Listings read inside a tracked one (a fan-out's parents) are not tracked.
"""

from __future__ import annotations

import hashlib
import inspect
import pickle
import re
import secrets
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import structlog
from pydantic import BaseModel

from ingest.checkpoints import Position, ResumeRefused, current_position
from ingest.errors import AuthError, FatalError, IngestError, NotFoundError, ProtocolError
from ingest.http import HttpClient, Paginator, SinglePage, current_token, json_path
from ingest.http._fetcher import Fetcher
from ingest.pages import PageSpec, Undecoded, accepting, map_page

__all__ = ["Stream", "StreamReader", "render"]

log = structlog.get_logger("ingest.streams")
_PARENT_DONE = object()  # a tracked fan-out's listing of one parent ended
_TEMPLATE = re.compile(r"\{parent\.([^{}]+)\}")


@dataclass(frozen=True, eq=False)
class Stream:
    """One listing (or one per parent record) and its mapping; see the module docstring."""

    name: str
    path: str
    params: Mapping[str, Any] = field(default_factory=dict)
    selector: str | Callable[[Any], list] | None = None
    paginator: Paginator | None = None
    map: Callable[..., Any] | None = None
    for_each: Stream | Callable[[], Iterable[Any]] | None = None
    skip_missing: bool = False
    concurrency: int | None = None
    ordered: bool = True
    pass_through: bool = False
    ignored_fields: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        takes_parent = False
        if self.map is not None:
            try:
                params = [p for p in inspect.signature(self.map).parameters.values()
                          if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)]
                takes_parent = len(params) >= 2 or any(p.kind == p.VAR_POSITIONAL for p in params)
            except (TypeError, ValueError):  # a builtin without a signature: one argument
                takes_parent = False
        object.__setattr__(self, "_map_takes_parent", takes_parent)


def render(template: Any, parent: Any, *, stream: str = "", key: str = "", in_path: bool = False) -> Any:
    """``template`` with each ``{parent.<dotted.path>}`` replaced by the parent record's value."""
    if not isinstance(template, str) or "{parent." not in template:
        return template

    def value(path: str) -> Any:
        data = parent.model_dump() if isinstance(parent, BaseModel) else parent
        v = json_path(data, path)
        if v is None or isinstance(v, (dict, list)):
            raise ProtocolError(f"the parent record has no value at {path!r} for {key or 'the path'} "
                                f"(parent: {str(parent)[:200]})", stream=stream or None)
        return v

    whole = _TEMPLATE.fullmatch(template)
    if whole and not in_path:
        return value(whole.group(1))
    return _TEMPLATE.sub(lambda m: quote(str(value(m.group(1))), safe="") if in_path else str(value(m.group(1))),
                         template)


class StreamReader:
    """Reads declared streams through one :class:`~ingest.http.HttpClient` (see the module docstring).

    ``keep``: streams whose mapped records are remembered when read, because
    another stream fans out over them (``for_each``) later in the run.
    """

    def __init__(self, http: HttpClient, *, keep: Iterable[Stream] = (), paginator: Paginator | None = None) -> None:
        self.http = http
        self.default_paginator = paginator
        self._keep = {id(s) for s in keep}
        self._kept: dict[int, list[Any]] = {}

    # -- public -----------------------------------------------------------------------------------
    def records(self, stream: Stream) -> Iterator[Any]:
        """Every mapped record of the stream (for a ``pass_through`` stream read by a run that stages
        through workers, pages as :class:`~ingest.pages.Undecoded` items where they can be)."""
        spec = self._page_spec(stream) if stream.pass_through and accepting() else None
        for page in self._collected(stream, spec):
            if type(page) is Undecoded:
                yield page
            else:
                yield from page

    def pages(self, stream: Stream) -> Iterator[list[Any]]:
        """The stream's mapped records, a page at a time."""
        return self._collected(stream, None)

    def _page_spec(self, stream: Stream) -> PageSpec | None:
        """How a worker turns the stream's pages into records, if they can go to one (picklable)."""
        if id(stream) in self._keep:
            return None
        try:  # made once per stream, kept on it (an id() could name a newer stream once this one is gone)
            return stream._page_spec  # type: ignore[attr-defined]
        except AttributeError:
            pass
        spec: PageSpec | None = PageSpec(secrets.token_hex(6), stream.name, stream.selector, stream.map,
                                         getattr(stream, "_map_takes_parent", False), tuple(stream.ignored_fields))
        try:
            pickle.dumps(spec)
        except Exception as e:  # a closure, a lambda, a bound method of something that does not pickle
            log.debug("stream_pages_decoded_here", stream=stream.name, reason=f"{type(e).__name__}: {e}")
            spec = None
        object.__setattr__(stream, "_page_spec", spec)
        return spec

    def _collected(self, stream: Stream, spec: PageSpec | None) -> Iterator[Any]:
        keep = id(stream) in self._keep
        position = current_position()
        if keep and position is not None and position.depth == 0 and position.saved_for(stream.name):
            keep = False  # continued from a checkpoint: this process sees only part of it
        kept: list[Any] | None = [] if keep else None
        for page in self._pages(stream, spec):
            if kept is not None:
                kept.extend(page)
            yield page
        if kept is not None:
            self._kept[id(stream)] = kept

    def parents(self, stream: Stream) -> Iterable[Any]:
        """The parent records ``stream`` fans out over."""
        parent = stream.for_each
        if parent is None:
            return ()
        if isinstance(parent, Stream):
            kept = self._kept.get(id(parent))
            return kept if kept is not None else (r for page in self.pages(parent) for r in page)
        return parent()

    # -- engine -----------------------------------------------------------------------------------
    def _pages(self, stream: Stream, spec: PageSpec | None) -> Iterator[list[Any]]:
        position = current_position()
        if position is not None and position.depth == 0:
            position.depth += 1
            try:
                yield from self._tracked(stream, position, spec)
            finally:
                position.depth -= 1
            return
        if stream.for_each is None:
            yield from self._listing(stream, None, None, None, spec=spec)
            return
        width = stream.concurrency or self.http.settings.max_concurrency
        fetcher = Fetcher(lambda parent, stop: self._listing(stream, parent, stop, 1, spec=spec), self.parents(stream),
                          width=width, ordered=stream.ordered, cancel=current_token() or self.http.cancel,
                          name=f"ingest-stream-{stream.name}")
        with fetcher:
            for _, page in fetcher:
                yield page

    def _tracked(self, stream: Stream, position: Position, spec: PageSpec | None) -> Iterator[list[Any]]:
        """``_pages`` of a checkpointed stream: from its saved position, marking what it hands on."""
        name, saved = stream.name, position.saved_for(stream.name) or {}
        if saved.get("done"):
            log.info("stream_resumed", stream=name, connector=self.http.connector, skipped="done before")
            return
        if stream.for_each is None:
            pager = stream.paginator or self.default_paginator or SinglePage()
            position.begin(name, resumable=pager.resumable)
            resume = saved.get("state") if saved.get("resumable") else None
            pages = self._listing(stream, None, None, None, resume=resume,
                                  on_page=lambda state: position.page(name, state=state), spec=spec)
            if resume is not None:
                log.info("stream_resumed", stream=name, connector=self.http.connector, page_seq=position.seq)
                try:
                    first = next(pages)
                except StopIteration:
                    first = None
                except FatalError as e:
                    if isinstance(e, AuthError):
                        raise
                    raise ResumeRefused(f"the source refused the saved position of the listing ({e.message})",
                                        connector=self.http.connector, stream=name, request=e.request) from None
                if first is not None:
                    yield first
            yield from pages
            position.done(name)
            return
        if not stream.ordered:  # pages come as they arrive: no parent is known to be done before the end
            position.begin(name, resumable=False)
            yield from self._fan_out(stream, self.parents(stream), lambda parent, stop: self._listing(
                stream, parent, stop, 1, spec=spec), position=None)
            position.done(name)
            return
        position.begin(name, resumable=True)
        skip, last = saved.get("parents_done", 0), saved.get("last_parent")
        if skip:
            log.info("stream_resumed", stream=name, connector=self.http.connector, parents_done=skip)

        def numbered() -> Iterator[tuple[int, Any]]:
            i = -1
            for i, parent in enumerate(self.parents(stream)):
                if i < skip:
                    if i == skip - 1 and self._identity(stream, parent) != last:
                        raise ResumeRefused(f"parent {skip} of the fan-out is not the one the listing had done",
                                            connector=self.http.connector, stream=name)
                    continue
                yield i, parent
            if i < skip - 1:
                raise ResumeRefused(f"the fan-out has {i + 1} parents; {skip} were done before",
                                    connector=self.http.connector, stream=name)

        def listing(item: tuple[int, Any], stop: Any) -> Iterator[Any]:
            yield from self._listing(stream, item[1], stop, 1, spec=spec)
            yield _PARENT_DONE

        yield from self._fan_out(stream, numbered(), listing, position=position)
        position.done(name)

    def _fan_out(self, stream: Stream, parents: Iterable[Any], listing: Callable[[Any, Any], Iterator[Any]],
                 position: Position | None) -> Iterator[list[Any]]:
        width = stream.concurrency or self.http.settings.max_concurrency
        fetcher = Fetcher(listing, parents, width=width, ordered=stream.ordered,
                          cancel=current_token() or self.http.cancel, name=f"ingest-stream-{stream.name}")
        with fetcher:
            for item, page in fetcher:
                if page is _PARENT_DONE:
                    position.page(stream.name, parents_done=item[0] + 1,
                                  last_parent=self._identity(stream, item[1]))
                else:
                    yield page

    @staticmethod
    def _identity(stream: Stream, parent: Any) -> str:
        """What a fan-out's parent is, for a resume to check it finds the same parents (a hash: no data kept)."""
        path = render(stream.path, parent, stream=stream.name, key="path", in_path=True)
        params = sorted((k, str(render(v, parent, stream=stream.name))) for k, v in stream.params.items())
        return hashlib.md5(repr((path, params)).encode()).hexdigest()

    def _listing(self, stream: Stream, parent: Any, stop: Any, concurrency: int | None,
                 resume: dict[str, Any] | None = None, on_page: Callable[[dict[str, Any]], None] | None = None,
                 spec: PageSpec | None = None) -> Iterator[list[Any]]:
        """One listing: the stream's path (for one parent), every page, mapped (``spec``: or handed on
        undecoded, where the HTTP layer can page without decoding it)."""
        try:
            path = render(stream.path, parent, stream=stream.name, key="path", in_path=True)
            params = {k: render(v, parent, stream=stream.name, key=f"params.{k}") for k, v in stream.params.items()}
            undecoded = None
            if spec is not None:
                def undecoded(body: bytes, skip: tuple[int, ...], count: int) -> Undecoded:
                    return Undecoded(spec, body, skip, parent, count)
            pages = self.http.paginate(path, paginator=stream.paginator or self.default_paginator or SinglePage(),
                                       selector=stream.selector, params=params, concurrency=concurrency,
                                       cancel=stop, resume=resume, on_page=on_page, undecoded=undecoded)
            for raw in pages:
                yield raw if type(raw) is Undecoded else self._mapped(stream, raw, parent)
        except NotFoundError as e:
            if stream.skip_missing and parent is not None:
                log.warning("stream_parent_missing", stream=stream.name, path=path, connector=self.http.connector)
                return
            e.stream = e.stream or stream.name
            raise
        except IngestError as e:
            e.stream = e.stream or stream.name
            raise

    @staticmethod
    def _mapped(stream: Stream, raw: list[Any], parent: Any) -> list[Any]:
        return map_page(stream.map, getattr(stream, "_map_takes_parent", False), raw, parent)
