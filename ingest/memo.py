"""The staging memo: a re-run stages a record it already staged, byte for byte, without decoding it.

On a daily re-run almost every record is the one of yesterday, to the byte, and the worker's path
for it (decode, map, validate, hash, COPY: ~20 us of Python and ~4 us of PostgreSQL's COPY a SCIM
user) produces yesterday's staging row again. Telling such a record by a hash of its bytes costs
~1.5 us, so for a stream whose pages go to staging undecoded (:mod:`ingest.pages`):

- each page is split into its records' bytes (msgspec), without decoding them;
- every staged row remembers where it came from: ``src``, a SHA-256 of the record's bytes and of
  :func:`digest` (the code and settings that turn those bytes into a row); only a record that
  mapped to exactly one valid row has one;
- the connector keeps a memo of such an entity, ``ingest_stage.m{snapshot}_{entity}``: the rows of
  every record it staged in full, each table of it indexed on ``src`` with what a hit needs beside
  it (:func:`index`);
- the next run asks the memo for a page's ``src`` values and stages, for each record it has, a
  *hit*: a narrow row (the key, :func:`narrow` columns, ``key_hash``, ``row_hash``, this run's
  ``page_seq``, ``src``, ``hit``) read from the memo's index alone (``INSERT ... SELECT ...
  RETURNING``, in PostgreSQL); only the other records are decoded, mapped and COPYed in full.

A hit row stands for the memo's row of its ``src``: the merge diffs it by its hashes like any row,
and reads the rest of its columns from the memo only for the few hits that open a version (a
record back to what it was some days ago; the losing copy of a duplicate key): see
``SnapshotWriter._fill_hits``. Measured at 1M SCIM users, copying the whole row from the memo cost
PostgreSQL 16.3 s of CPU and wrote 1.5 GB of staging; a hit costs it 5.5 s and 96 MB.

So the memo outlives a run: the commit adds the rows this run staged in full (:func:`keep`), and
drops what no run has asked for once that is most of it. A memo is only ever a cache: a stale one
(other code, other settings, another connector name) matches nothing because its ``src`` values
differ, and the commit then starts a new one from the run's staging; a memo PostgreSQL emptied (it
is UNLOGGED, like staging) matches nothing; a memo of another shape (an older version's columns) is
not used. Mapping functions must be pure (``STYLE.md``): the memo holds what they returned for the
same bytes.
"""

from __future__ import annotations

import hashlib
import inspect
import pickle
import sys
from typing import Any

import msgspec

from ingest.pages import PageSpec

__all__ = ["digest", "find", "index", "keep", "keys", "narrow", "readable", "split"]

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
    """Each record's ``src``: the SHA-256 (its first 128 bits, in hex) of ``dig`` and of its bytes, or,
    with ``ignored`` fields (top-level or one level down: ``"meta.lastModified"``), of its other fields,
    each as its key and its value's bytes.

    SHA-256, not MD5: where the CPU has SHA extensions (x86 since 2019-2020, ARMv8) it is about twice
    as fast on a SCIM user's ~1.4 KB (measured, 1.4 against 2.5 us), and no one can make two records
    collide (MD5 collisions can be made, and a record's bytes are partly its users' to choose)."""
    base = hashlib.sha256(dig)
    out = []
    append = out.append
    if not ignored:
        for r in raws:
            h = base.copy()
            h.update(r)
            append(h.hexdigest()[:32])
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
            append(h.hexdigest()[:32])
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
        h.update(encode(fields))  # the Raw values verbatim, in the record's order: one piece to hash
        append(h.hexdigest()[:32])
    return out


def narrow(ent: Any) -> tuple[str, ...]:
    """The columns of entity ``ent`` (:class:`~ingest.staging.Entity`) a hit row carries besides its
    hashes: the key (what duplicates report) and the last activity (what the commit upserts into
    ``ingest.last_activity``); every column of an entity that is not versioned (last activity)."""
    if ent.table is None:
        return ent.columns
    return (*ent.key, *(c for c in ("last_activity_at",) if c in ent.columns and c not in ent.key))


def index(table: str, ent: Any, name: str | None = None) -> str:
    """The statement that indexes memo (or staging) ``table`` on ``src``, with everything a hit reads
    of it: a hit is then an index-only scan where the table's pages are all-visible (COPY FREEZE
    leaves them so). A string, so that a staging worker needs no SQLAlchemy to run it."""
    cols = ", ".join(dict.fromkeys(("key_hash", "row_hash", *narrow(ent))))
    return f"CREATE INDEX {'IF NOT EXISTS ' + name if name else ''} ON {table} (src) INCLUDE ({cols})"


def find(conn: Any, connector: str, entity: str, columns: tuple[str, ...]) -> str | None:
    """The connector's memo of ``entity`` (``ingest_stage.m{snapshot}_{entity}``), if it has one of
    this version's shape: ``columns``, ``src`` and ``hit``. ``conn``: a SQLAlchemy connection."""
    import sqlalchemy as sa

    row = conn.execute(sa.text(
        "SELECT t.tablename, array_agg(a.attname::text) FROM pg_tables t "
        "JOIN ingest.snapshots s ON t.tablename = 'm' || s.snapshot_id || '_' || :e "
        "JOIN pg_attribute a ON a.attrelid = ('ingest_stage.' || quote_ident(t.tablename))::regclass "
        "AND a.attnum > 0 AND NOT a.attisdropped "
        "WHERE t.schemaname = 'ingest_stage' AND s.connector = :c AND s.status = 'succeeded' "
        "GROUP BY s.snapshot_id, t.tablename ORDER BY s.snapshot_id DESC LIMIT 1"),
        {"c": connector, "e": entity}).first()
    if row is None or not {*columns, "src", "hit"} <= set(row[1]):
        return None
    return f"ingest_stage.{row[0]}"


def readable(conn: Any, connector: str, entity: str, table: str) -> bool:
    """Whether every hit row of staging ``table`` can be read back from the connector's memo (a resumed
    attempt's staging, whose hits an earlier process staged). ``conn``: a SQLAlchemy connection."""
    import sqlalchemy as sa

    from ingest.staging import ENTITIES

    used = find(conn, connector, entity, ENTITIES[entity].columns + ("key_hash", "row_hash"))
    if used is None:
        return not conn.execute(sa.text(f"SELECT EXISTS (SELECT 1 FROM {table} WHERE hit)")).scalar()
    return not conn.execute(sa.text(
        f"SELECT EXISTS (SELECT 1 FROM {table} s WHERE s.hit AND NOT EXISTS (SELECT 1 FROM {used} m WHERE m.src = s.src))"
    )).scalar()


GARBAGE = 0.5  # a memo more than this share of which no run asked for is cleared of it


def keep(conn: Any, connector: str, snapshot_id: int, entities: list[tuple[Any, str | None, int]]) -> None:
    """In the commit's transaction: what the connector keeps as its memo of each of ``entities`` (those
    whose staging has rows with a ``src``), as ``(entity, the memo the run used or None, its hits)``;
    every other memo of the connector is dropped. ``conn``: a SQLAlchemy connection.

    - No hits (a first run, other code): the staging becomes the memo (it holds only full rows).
    - Hits: the memo the run used gains the rows staged in full (those with a ``src``, cast to its
      JSON kind); when more than :data:`GARBAGE` of it is rows this run did not ask for (records
      changed or gone since), those are deleted first. It is renamed after this snapshot.
    - Hits, but the memo they came from is gone: nothing is kept (the hits cannot be re-read).

    Every table of a memo that holds rows is indexed (:func:`index`)."""
    import sqlalchemy as sa

    from ingest.checkpoints import rename_staging

    kept: list[str] = []  # the memos' tables, segments included
    for ent, used, hits in entities:
        stage = f"ingest_stage.s{snapshot_id}_{ent.name}"
        name = f"m{snapshot_id}_{ent.name}"
        if conn.execute(sa.text("SELECT to_regclass(:t)"), {"t": stage}).scalar() is None:
            continue
        if hits and (used is None or conn.execute(sa.text("SELECT to_regclass(:t)"), {"t": used}).scalar() is None):
            continue
        if not hits:
            tables = rename_staging(conn, stage.partition(".")[2], name)
        else:
            _collect(conn, used, stage, hits)
            kinds = dict(conn.execute(sa.text(
                "SELECT attname::text, format_type(atttypid, atttypmod) FROM pg_attribute "
                "WHERE attrelid = CAST(:t AS regclass) AND attnum > 0 AND NOT attisdropped"), {"t": used}).all())
            cols = (*ent.columns, "key_hash", "row_hash", "page_seq", "src")
            picked = ", ".join(f"CAST({c} AS {kinds[c]})" if kinds.get(c) in ("jsonb", "text") else c for c in cols)
            conn.execute(sa.text(f"INSERT INTO {used} ({', '.join(cols)}) SELECT {picked} FROM {stage} "
                                 "WHERE src IS NOT NULL AND hit IS NOT TRUE"))
            tables = rename_staging(conn, used.partition(".")[2], name)
        kept.extend(tables)
        for table in tables:
            full = f'ingest_stage."{table}"'
            indexed = conn.execute(sa.text(
                "SELECT EXISTS (SELECT 1 FROM pg_index WHERE indrelid = CAST(:t AS regclass))"), {"t": full}).scalar()
            if not indexed and conn.execute(sa.text(f"SELECT EXISTS (SELECT 1 FROM ONLY {full})")).scalar():
                conn.execute(sa.text(index(full, ent)))
    old = conn.execute(sa.text(
        "SELECT t.tablename FROM pg_tables t JOIN ingest.snapshots s ON t.tablename LIKE 'm' || s.snapshot_id || '\\_%' "
        "WHERE t.schemaname = 'ingest_stage' AND s.connector = :c ORDER BY length(t.tablename)"),
        {"c": connector}).scalars().all()
    for table in old:  # a parent first: CASCADE takes its segments along
        if table not in kept:
            conn.execute(sa.text(f'DROP TABLE IF EXISTS ingest_stage."{table}" CASCADE'))


def _collect(conn: Any, memo: str, stage: str, hits: int) -> None:
    """Delete the rows of ``memo`` no row of ``stage`` asked for, once they are more than
    :data:`GARBAGE` of it. Its size is its tables' ``reltuples`` (set by the index builds and ANALYZE;
    rows added since are not in it, so it errs towards keeping them; ``n_live_tup`` counts a COPY
    twice when ANALYZE ran in its transaction)."""
    import sqlalchemy as sa

    rows = conn.execute(sa.text(
        "SELECT coalesce(sum(greatest(c.reltuples, 0)), 0)::bigint FROM pg_class c "
        "WHERE c.oid = CAST(:t AS regclass) OR c.oid IN (SELECT inhrelid FROM pg_inherits "
        "WHERE inhparent = CAST(:t AS regclass))"), {"t": memo}).scalar()
    if rows * (1 - GARBAGE) <= hits:
        return
    conn.execute(sa.text(f"DELETE FROM {memo} m WHERE NOT EXISTS (SELECT 1 FROM {stage} s WHERE s.src = m.src)"))
    conn.execute(sa.text(f"ANALYZE {memo}"))  # its size for the next run's question
