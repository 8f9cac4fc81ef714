"""The staging memo: a re-run stages a record it already staged, byte for byte, without decoding it.

On a daily re-run almost every record is the one of yesterday, to the byte, and the worker's path
for it (decode, map, validate, hash, COPY: ~20 us of Python and ~4 us of PostgreSQL's COPY a SCIM
user) produces yesterday's staging row again. Telling such a record by the md5 of its bytes costs
~2 us, so for a stream whose pages go to staging undecoded (:mod:`ingest.pages`):

- each page is split into its records' bytes (msgspec), without decoding them;
- every staged row remembers where it came from: ``src``, the md5 of the record's bytes and of
  :func:`digest` (the code and settings that turn those bytes into a row); only a record that
  mapped to exactly one valid row has one;
- the commit keeps the snapshot's staging of such an entity as the connector's memo,
  ``ingest_stage.m{snapshot}_{entity}`` (its worker segments, each indexed on ``src``);
- the next run asks the memo for a page's ``src`` values and copies the rows it has, with this
  run's ``page_seq``, in PostgreSQL (``INSERT ... SELECT ... RETURNING``); only the other records
  are decoded, mapped and COPYed.

The staging then holds exactly the rows the full path would have staged, so the merge, last
activity, duplicates and counts are as they were. A memo is only ever a cache: a stale one (other
code, other settings, another connector name) matches nothing because its ``src`` values differ;
a memo PostgreSQL emptied (it is UNLOGGED, like staging) matches nothing; a memo of another shape
(an older version's columns) is not used. Mapping functions must be pure (``STYLE.md``): the memo
holds what they returned for the same bytes.
"""

from __future__ import annotations

import hashlib
import inspect
import pickle
import sys
from typing import Any

import msgspec

from ingest.pages import PageSpec

__all__ = ["digest", "find", "keep", "keys", "split"]

_TOP = msgspec.json.Decoder(dict[str, msgspec.Raw])
_ANY = msgspec.json.Decoder()
_RAWS = msgspec.json.Decoder(list[msgspec.Raw])
_ENCODE = msgspec.json.Encoder().encode
VERSION = b"ingest-memo-1"
# the modules whose code decides what a record's staging row is, beside the stream's own mapping
_ENGINE = ("ingest.pages", "ingest.records", "ingest.staging", "ingest.memo")
_sources: dict[str, bytes] = {}


def _source(module: str) -> bytes | None:
    got = _sources.get(module)
    if got is None:
        try:
            got = _sources[module] = inspect.getsource(sys.modules[module]).encode()
        except (KeyError, OSError, TypeError):
            return None
    return got


def digest(spec: PageSpec, connector: str, entity: str) -> bytes | None:
    """What, beside a record's bytes, decides its staging row; None when the stream's pages cannot be
    memoised (a fan-out, whose records are mapped with their parent; code whose source is not at hand).

    The stream's spec as pickled (its selector, its mapping function and the settings bound to them),
    the source of the mapping function's module and of the engine's staging code, the connector's name
    (in every key hash) and the entity."""
    if spec.with_parent:
        return None
    fn = spec.map
    while hasattr(fn, "func"):  # functools.partial
        fn = fn.func
    parts = [VERSION, connector.encode(), entity.encode()]
    try:
        parts.append(pickle.dumps((spec.selector, spec.map, spec.stream, spec.ignored)))
    except Exception:
        return None
    for module in (*_ENGINE, *((fn.__module__,) if fn is not None else ())):
        src = _source(module)
        if src is None:
            return None
        parts.append(src)
    return hashlib.md5(b"\x00".join(parts)).digest()


def split(spec: PageSpec, body: bytes, skip: tuple[int, ...]) -> list[msgspec.Raw] | None:
    """The bytes of each record of a page, as its selector would pick them (less ``skip``), or None
    when the page must be decoded in full instead.

    The selector is called on the page decoded with every top-level list of objects left as the
    records' bytes (``msgspec.Raw``); what it returns must be one of those lists itself (SCIM's
    ``Resources``, a top-level list). A selector that builds a list of its own, reads into the records
    or raises on what it sees goes the full way, where it sees the records decoded.
    """
    head = body[:64].lstrip()[:1]
    try:
        if head == b"[":
            data: Any = _RAWS.decode(body)
            lists = [data]
        elif head == b"{":
            data, lists = {}, []
            for k, v in _TOP.decode(body).items():
                if bytes(memoryview(v)[:64]).lstrip(b"[ \t\r\n")[:1] == b"{" and memoryview(v)[:1] == b"[":
                    data[k] = raws = _RAWS.decode(v)
                    lists.append(raws)
                else:
                    data[k] = _ANY.decode(v)
        else:
            return None
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
        return None
    sel = spec.selector
    try:
        if callable(sel):
            records = sel(data)
        elif sel is None:
            records = data
        elif isinstance(data, dict):
            records = data.get(sel)
        else:
            return None
    except Exception:  # the selector read the records themselves: decoded in full, it says what it says
        return None
    if not any(records is raws for raws in lists):
        return None
    if skip:
        dropped = set(skip)
        records = [r for i, r in enumerate(records) if i not in dropped]
    return records


def keys(raws: list[Any], dig: bytes, ignored: tuple[str, ...] = ()) -> list[str]:
    """Each record's ``src``: the md5 of ``dig`` and of its bytes, or, with ``ignored`` fields (top-level
    or one level down: ``"meta.lastModified"``), of its other fields, each as its key and its value's bytes."""
    base = hashlib.md5(dig)
    out = []
    if not ignored:
        for r in raws:
            h = base.copy()
            h.update(r)
            out.append(h.hexdigest())
        return out
    top = tuple(f for f in ignored if "." not in f)
    inner: dict[str, list[str]] = {}
    for f in ignored:
        if "." in f:
            k, _, sub = f.partition(".")
            inner.setdefault(k, []).append(sub)
    decode, encode = _TOP.decode, _ENCODE
    for r in raws:
        h = base.copy()
        try:
            fields = decode(r)
        except (msgspec.DecodeError, msgspec.ValidationError):  # not an object: its bytes as they are
            h.update(b"\x01")
            h.update(r)
            out.append(h.hexdigest())
            continue
        for k in top:
            fields.pop(k, None)
        for k, subs in inner.items():
            v = fields.get(k)
            if v is not None and memoryview(v)[:1] == b"{":
                nested = decode(v)
                for sub in subs:
                    nested.pop(sub, None)
                fields[k] = msgspec.Raw(encode(nested))  # the object without them, re-encoded
        h.update(encode(fields))  # the Raw values verbatim, in the record's order
        out.append(h.hexdigest())
    return out


def find(conn: Any, connector: str, entity: str, columns: tuple[str, ...]) -> str | None:
    """The connector's memo of ``entity`` (``ingest_stage.m{snapshot}_{entity}``), if it has one of
    this version's shape: ``columns`` and ``src``. ``conn``: a SQLAlchemy connection."""
    import sqlalchemy as sa

    row = conn.execute(sa.text(
        "SELECT t.tablename, array_agg(a.attname::text) FROM pg_tables t "
        "JOIN ingest.snapshots s ON t.tablename = 'm' || s.snapshot_id || '_' || :e "
        "JOIN pg_attribute a ON a.attrelid = ('ingest_stage.' || quote_ident(t.tablename))::regclass "
        "AND a.attnum > 0 AND NOT a.attisdropped "
        "WHERE t.schemaname = 'ingest_stage' AND s.connector = :c AND s.status = 'succeeded' "
        "GROUP BY s.snapshot_id, t.tablename ORDER BY s.snapshot_id DESC LIMIT 1"),
        {"c": connector, "e": entity}).first()
    if row is None or not {*columns, "src"} <= set(row[1]):
        return None
    return f"ingest_stage.{row[0]}"


def keep(conn: Any, connector: str, snapshot_id: int, entities: list[str]) -> None:
    """In the commit's transaction: the connector's older memos are dropped, and the staging of
    ``entities`` (those with rows that have a ``src``) becomes its memo, every table of it that
    holds rows indexed on ``src``. ``conn``: a SQLAlchemy connection."""
    import sqlalchemy as sa

    from ingest.checkpoints import rename_staging

    old = conn.execute(sa.text(
        "SELECT t.tablename FROM pg_tables t JOIN ingest.snapshots s ON t.tablename LIKE 'm' || s.snapshot_id || '\\_%' "
        "WHERE t.schemaname = 'ingest_stage' AND s.connector = :c ORDER BY length(t.tablename)"),
        {"c": connector}).scalars().all()
    for table in old:  # a parent first: CASCADE takes its segments along
        conn.execute(sa.text(f'DROP TABLE IF EXISTS ingest_stage."{table}" CASCADE'))
    for entity in entities:
        parent = f"s{snapshot_id}_{entity}"
        if conn.execute(sa.text("SELECT to_regclass(:t)"), {"t": f'ingest_stage."{parent}"'}).scalar() is None:
            continue
        for name in rename_staging(conn, parent, "m" + parent[1:]):
            indexed = conn.execute(sa.text(
                "SELECT EXISTS (SELECT 1 FROM pg_index WHERE indrelid = CAST(:t AS regclass))"),
                {"t": f'ingest_stage."{name}"'}).scalar()
            if not indexed and conn.execute(sa.text(f'SELECT EXISTS (SELECT 1 FROM ONLY ingest_stage."{name}")')).scalar():
                conn.execute(sa.text(f'CREATE INDEX ON ingest_stage."{name}" (src)'))
