"""Pages handed on undecoded: a large listing's pages go to the staging workers as the bytes they came in.

Decoding a page and mapping its records was most of what the run's process spent on a large
listing (measured at 300k SCIM users: about 19 us of its time holding the GIL per user, for the
decode, the mapping and the JSON it handed the worker), while the staging worker decoded that JSON
again. For a stream whose records the connector passes on untouched (``Stream(pass_through=True)``)
and whose selector and map are module-level (picklable), the run's process now reads only what
paging needs (:func:`light_decode`: every top-level field, with a list of objects reduced to their
ids, by msgspec without building the records) and hands on each page as an :class:`Undecoded`:
its body, the records the paginator dropped (``skip``), the parent of a fan-out and the stream's
:class:`PageSpec`. A staging worker decodes it with the same decoder the HTTP layer uses, selects
and maps its records (:func:`decode`) and stages them. Where anything is unusual (a body msgspec
refuses, records that are not objects, a record without an id in a counted listing, a paginator
that reads more than totals and ids) the page is decoded in the run's process as before.

This module imports nothing of the HTTP layer: a worker loads it, the stream's mapping module and
nothing else.
"""

from __future__ import annotations

import contextvars
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec
import orjson

__all__ = ["PageSpec", "Undecoded", "accepting", "decode", "hand_on", "json_path", "light_decode", "loads",
           "map_page"]

_ACCEPTING: contextvars.ContextVar[bool] = contextvars.ContextVar("ingest_undecoded_pages", default=False)


def hand_on(accept: bool) -> None:
    """Whether what reads streams in this context (the runner's fetch thread) takes pages undecoded."""
    _ACCEPTING.set(accept)


def accepting() -> bool:
    return _ACCEPTING.get()


def loads(content: bytes) -> Any:
    """orjson (several times faster on big pages), else the stdlib for what orjson refuses
    (NaN, integers beyond 64 bits); ValueError when it is not JSON at all."""
    try:
        return orjson.loads(content)
    except ValueError:
        return json.loads(content)


def json_path(data: Any, path: str | None) -> Any:
    """Follow a dotted path (``"meta.next"``) into parsed JSON; None when absent."""
    if not path:
        return data
    if isinstance(data, dict) and path in data:  # a key that itself has dots: "@odata.nextLink"
        return data[path]
    for part in path.split("."):
        if isinstance(data, dict):
            data = data.get(part)
        elif isinstance(data, list) and part.isdigit() and int(part) < len(data):
            data = data[int(part)]
        else:
            return None
    return data


@dataclass(frozen=True, eq=False)
class PageSpec:
    """How a stream's page becomes records, as a worker needs it: picklable (module-level functions,
    ``functools.partial`` of them). ``key`` names it among the specs a worker has been sent."""

    key: str
    stream: str
    selector: str | Callable[[Any], list] | None
    map: Callable[..., Any] | None
    with_parent: bool
    ignored: tuple[str, ...] = ()  # fields the map never reads (Stream.ignored_fields; see ingest.memo)


class Undecoded:
    """One page of a stream, not yet decoded: staged as a batch of its own (``len`` is the number of
    records the page holds, ``seq`` and ``mark`` as a runner's batch has them)."""

    __slots__ = ("spec", "body", "skip", "parent", "count", "seq", "mark")

    def __init__(self, spec: PageSpec, body: bytes, skip: tuple[int, ...], parent: Any, count: int) -> None:
        self.spec, self.body, self.skip, self.parent, self.count = spec, body, skip, parent, count
        self.seq = 0
        self.mark: dict[str, Any] | None = None

    def __len__(self) -> int:
        return self.count

    def records(self) -> list[Any]:
        return decode(self.spec, self.body, self.skip, self.parent)


def decode(spec: PageSpec, body: bytes, skip: tuple[int, ...], parent: Any) -> list[Any]:
    """The page's mapped records, as the run's process would have mapped them (see the module docstring)."""
    from ingest.errors import IngestError, ProtocolError

    try:
        data = loads(body)
    except ValueError:
        raise ProtocolError(f"a page of {spec.stream} is not JSON any more once decoded in full",
                            stream=spec.stream) from None
    try:
        sel = spec.selector
        records = sel(data) if callable(sel) else json_path(data, sel)
        if records is None:
            records = []
        if not isinstance(records, list):
            raise ProtocolError(f"expected a list at {sel!r}, got {type(records).__name__}")
        if skip:
            dropped = set(skip)
            records = [r for i, r in enumerate(records) if i not in dropped]
        return map_page(spec.map, spec.with_parent, records, parent)
    except IngestError as e:
        e.stream = e.stream or spec.stream
        raise


def map_page(fn: Callable[..., Any] | None, with_parent: bool, raw: list[Any], parent: Any) -> list[Any]:
    """A page's records through a stream's ``map`` (None: as they are); see :mod:`ingest.streams`."""
    if fn is None:
        return raw
    from pydantic import BaseModel

    out: list[Any] = []
    for record in raw:
        got = fn(record, parent) if with_parent else fn(record)
        if got is None:
            continue
        if type(got) is dict or isinstance(got, (dict, BaseModel)):
            out.append(got)
        else:
            out.extend(got)
    return out


# -- the light decode --------------------------------------------------------------------------------------

_TOP = msgspec.json.Decoder(dict[str, msgspec.Raw])
_ANY = msgspec.json.Decoder()
_IDS: dict[str, msgspec.json.Decoder] = {}


class _Object(msgspec.Struct):
    """An object of a list, read for no field (a paginator that reads no ids: only how many there are)."""


_OBJECTS = msgspec.json.Decoder(list[_Object])


def _ids_decoder(id_field: str) -> msgspec.json.Decoder:
    dec = _IDS.get(id_field)
    if dec is None:
        ids = msgspec.defstruct("Ids", [("value", Any, msgspec.field(default=None, name=id_field))])
        dec = _IDS[id_field] = msgspec.json.Decoder(list[ids])
    return dec


def _light_value(raw: Any, id_field: str | None) -> Any:
    if memoryview(raw)[:1] == b"[":
        try:
            if id_field is None:
                return _OBJECTS.decode(raw)
            return [{id_field: r.value} for r in _ids_decoder(id_field).decode(raw)]
        except msgspec.ValidationError:  # not a list of objects: decoded as it is
            pass
    return _ANY.decode(raw)


def light_decode(body: bytes, id_field: str | None) -> Any:
    """What paging reads of a JSON page, or None when it cannot be had this way (the caller decodes it).

    A top-level object comes back with every field decoded, except that a field holding a list of
    objects holds ``{id_field: id}`` for each (None when the object has none); a top-level list of
    objects the same way. The records of the page are then those reduced objects: a paginator or
    a selector sees the same shapes, counts and ids it would in the full page. Without an
    ``id_field`` (a paginator that reads no ids) each object is an empty placeholder.
    """
    head = body[:64].lstrip()[:1]
    if head not in (b"{", b"["):
        return None
    try:
        if head == b"[":
            return _light_value(body, id_field)
        return {k: _light_value(v, id_field) for k, v in _TOP.decode(body).items()}
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
        return None

