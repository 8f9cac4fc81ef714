"""How records get into staging: validate, hash and COPY, in this process or in worker processes.

Every entity of a snapshot is staged into ``ingest_stage.s{snapshot}_{entity}``, an UNLOGGED
table created and filled by COPY ... FREEZE in one transaction (rows land frozen and
all-visible, so the merge's first read of them rewrites no page to set hint bits).

A large stream is staged by :class:`StagePool`: batches of records go from the run's process to
``workers`` processes over bounded queues (memory stays flat whatever the source's size); worker
``k`` validates, hashes and COPYs its batches into its own segment ``s{snapshot}_{entity}_{k}``,
created and frozen in its own transaction, and commits it after the last batch. The run's process
then creates ``s{snapshot}_{entity}`` empty and makes the segments its children (``INHERIT``), so
the merge reads the union as one table. Any worker failure, or the run being stopped, fails the
stage: the other workers are stopped (their open transactions roll back), and the snapshot's
discard drops the segments that committed; nothing reaches the merge.

Small streams (fewer than ``parallel_min`` records) stay in the run's process: starting workers
costs more than it saves; so does everything with ``workers`` 0.
"""

from __future__ import annotations

import collections
import contextlib
import enum
import gc
import hashlib
import itertools
import multiprocessing
import operator
import os
import pickle
import queue
import re
import secrets
import signal
import sys
import threading
import typing
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import orjson
import psycopg
import structlog
from pydantic import BaseModel, ValidationError

from ingest import errors
from ingest.errors import IngestError, SnapshotError
from ingest.memo import digest as memo_digest
from ingest.memo import index as memo_index
from ingest.memo import keys as memo_keys
from ingest.memo import narrow as memo_narrow
from ingest.memo import split as memo_split
from ingest.pages import PageSpec, Undecoded, loads
from ingest.records import Account, Assignment, Entitlement, Expense, LastActivity, NestedEntitlement, Resource

__all__ = ["ENTITIES", "Entity", "PARALLEL_MIN", "PARALLEL_MIN_BYTES", "Stager", "StagePool", "analyze_stage",
           "default_workers", "is_nested"]

log = structlog.get_logger("ingest.staging")
MAX_INVALID_SAMPLES = 20
PARALLEL_MIN = 5_000    # records a stream must reach before its staging goes to worker processes
# ... or bytes of pages handed on undecoded (a page counts its records before mapping: one group's
# page may hold thousands of memberships); about what 5,000 records of an average source take
PARALLEL_MIN_BYTES = 2 << 20
# the cyclic GC's thresholds while records are decoded and mapped (the run's process, during a run) or
# decoded and staged (a worker): the default collects the youngest generation every 700 allocations, and
# those records are millions of short-lived dicts freed by reference counting, without cycles
GC_THRESHOLD = (50_000, 20, 20)
QUEUE_DEPTH = 2         # batches waiting per worker (the run's process blocks beyond that)


def default_workers() -> int:
    """Staging processes when the config does not say: one per CPU, at most two. The run's process
    fetches; a stream whose pages go to the workers undecoded (:mod:`ingest.pages`) is decoded,
    mapped and staged there, so on 2 CPUs two workers keep both busy (measured, 300k SCIM users:
    day-2 run 22.6 -> 17.1 s against one worker with the pages decoded in the run's process); each
    costs ~65 MB, and more would break the memory promise (300 MB) for little."""
    return max(1, min(2, os.cpu_count() or 1))


@dataclass(frozen=True)
class Entity:
    name: str                    # as in changes.entity
    table: str | None            # ingest.<table>_history; None for last_activity (folded into accounts)
    model: type[BaseModel]
    key: tuple[str, ...]
    values: tuple[str, ...]      # hashed into row_hash
    extra_cols: tuple[str, ...] = ()  # staged, neither hashed nor versioned (last activity)

    @property
    def columns(self) -> tuple[str, ...]:
        return self.key + self.values + self.extra_cols

    @property
    def versioned(self) -> tuple[str, ...]:
        """The columns a version stores in ``*_history``."""
        return self.key + self.values


ENTITIES: dict[str, Entity] = {
    e.name: e
    for e in (
        Entity("account", "accounts", Account, ("account_id",),
               ("email", "username", "display_name", "given_name", "family_name", "status", "account_type",
                "custom_attributes", "extra"), ("last_activity_at",)),
        Entity("resource", "resources", Resource, ("resource_type", "resource_id"),
               ("label", "description", "parent_resource_type", "parent_resource_id", "extra")),
        Entity("entitlement", "entitlements", Entitlement, ("resource_type", "resource_id", "entitlement_id"),
               ("entitlement_type", "label", "description", "is_assignable", "extra")),
        Entity("assignment", "assignments", Assignment,
               ("account_id", "entitlement_id", "resource_type", "resource_id"), ()),
        Entity("nested_entitlement", "nested_entitlements", NestedEntitlement,
               ("entitlement_id", "member_entitlement_id"), ()),
        Entity("expense", "expenses", Expense, ("expense_id",),
               ("account_id", "amount", "currency", "merchant", "occurred_at", "category", "extra")),
        Entity("last_activity", None, LastActivity, ("account_id",), (), ("last_activity_at", "event_type")),
    )
}


def stage_schema() -> str:
    return "ingest_stage"


_JSON_OPTS = orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS
# a NUL in JSON text: \u0000 after an even number of backslashes (an odd one is text saying "\u0000")
_NUL = re.compile(rb"(?<!\\)(?:\\\\)*\\u0000")
_COPY_ESCAPED = re.compile("[\\\\\t\n\r]")  # what COPY's text format escapes in a value
_dumps, _Fragment = orjson.dumps, orjson.Fragment


class _Fast:
    """Accepts a dict whose values already have the model's exact types, without running pydantic.

    Staging validates every record, and pydantic costs about 4 us a SCIM user (as much as mapping
    it). This checks exactly what the models check for values of the exact type: plain strings
    (required or ``None``, with their length limits), enum members or values, dicts with string
    keys, bools, absent optional fields, and no key the model does not have. Anything else (a
    model, a value pydantic would convert, a datetime, a number) returns None and goes through
    pydantic, which gives the reason when it fails. The result holds what pydantic's would for
    staging: enums by value, missing fields at their defaults.
    """

    def __init__(self, model: type[BaseModel]) -> None:
        fields = model.model_fields
        self.allowed = frozenset(fields)
        self.required = frozenset(n for n, f in fields.items() if f.is_required())
        self.defaults = {n: d.value if isinstance(d := f.get_default(call_default_factory=True), enum.Enum) else d
                         for n, f in fields.items() if not f.is_required()}
        checks: list[tuple[str, str, Any]] = []
        self.key_only = True  # every field a plain string (assignments, nested groups)
        for n, f in fields.items():
            ann, args = f.annotation, typing.get_args(f.annotation)
            optional = type(None) in args
            base = next((a for a in args if a is not type(None)), ann) if optional else ann
            if base is str:
                lo = next((m.min_length for m in f.metadata if getattr(m, "min_length", None) is not None), 0)
                hi = next((m.max_length for m in f.metadata if getattr(m, "max_length", None) is not None), 1 << 62)
                checks.append((n, "str?" if optional else "str", (lo, hi)))
                self.key_only &= not optional
                continue
            self.key_only = False
            if isinstance(base, type) and issubclass(base, enum.Enum) and issubclass(base, str) and not optional:
                checks.append((n, "enum", frozenset(m.value for m in base)))
            elif typing.get_origin(base) is dict and typing.get_args(base)[:1] == (str,) and not optional:
                checks.append((n, "dict", None))
            elif base is bool and not optional:
                checks.append((n, "bool", None))
            else:  # datetime, Decimal, ...: only absent or None here
                checks.append((n, "none" if optional else "never", None))
        self.check = self._compile(checks)

    def _compile(self, checks: list[tuple[str, str, Any]]) -> Callable[[Any], dict[str, Any] | None]:
        """The check as one function of straight-line code, a test per field (a loop over ``checks``
        that dispatched on each field's kind cost the worker 2.9 us a SCIM user; this, about 1)."""
        env: dict[str, Any] = {"allowed": self.allowed, "required": self.required, "defaults": self.defaults,
                               "Enum": enum.Enum, "isinstance": isinstance, "type": type, "len": len,
                               "str": str, "dict": dict, "bool": bool, "all": all}
        lines = ["def check(item):",
                 "    if type(item) is not dict or not (item.keys() <= allowed): return None",
                 f"    d = {{**defaults, **item}} if len(item) < {len(self.allowed)} else item",
                 "    if not required <= d.keys(): return None",
                 "    converted = None"]
        for i, (n, kind, arg) in enumerate(checks):
            lines.append(f"    v = d[{n!r}]")
            if kind in ("str", "str?"):
                lo, hi = arg
                bad = "type(v) is not str" + (f" or not {lo} <= len(v) <= {hi}" if (lo, hi) != (0, 1 << 62) else "")
                lines.append(f"    if {bad}: return None" if kind == "str"
                             else f"    if v is not None and ({bad}): return None")
            elif kind == "enum":
                env[f"values_{i}"] = arg
                lines += ["    if type(v) is not str:",
                          f"        if not isinstance(v, Enum) or v.value not in values_{i}: return None",
                          "        converted = converted or {}",
                          f"        converted[{n!r}] = v.value",
                          f"    elif v not in values_{i}: return None"]
            elif kind == "dict":
                lines.append("    if type(v) is not dict or not all(type(k) is str for k in v): return None")
            elif kind == "bool":
                lines.append("    if type(v) is not bool: return None")
            elif kind == "never":
                lines.append("    return None")
            else:  # "none"
                lines.append("    if v is not None: return None")
        lines.append("    return {**d, **converted} if converted else d")
        exec("\n".join(lines), env)  # noqa: S102 - built from the model's own field names, repr-quoted
        return env["check"]


_VALIDATE = {name: _Fast(e.model) for name, e in ENTITIES.items()}
_FAST = {name: f.check for name, f in _VALIDATE.items() if f.key_only}  # staged by the hot loop of _copy_plain
# how a batch is handed to a worker as JSON: anything orjson would turn into something else raises instead;
# entities with a number field are pickled (JSON has no NaN: a NaN amount must reach the worker as it is)
_HAND_OVER = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_SUBCLASS | orjson.OPT_PASSTHROUGH_DATACLASS
_AS_JSON = frozenset(name for name, e in ENTITIES.items()
                     if not any(t in str(f.annotation) for f in e.model.model_fields.values() for t in ("float", "Decimal")))


def _column_kinds(ent: Entity) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Which of ``ent.values`` hold JSON (dicts, lists) and which enums, by position."""
    fields = ent.model.model_fields
    json_cols = tuple(i for i, c in enumerate(ent.values)
                      if any(k in str(fields[c].annotation) for k in ("dict", "list", "Any")))
    enum_cols = tuple(i for i, c in enumerate(ent.values)
                      if any(isinstance(a, type) and issubclass(a, enum.Enum)
                             for a in (fields[c].annotation, *typing.get_args(fields[c].annotation))))
    return json_cols, enum_cols


_COLUMN_KINDS = {name: _column_kinds(e) for name, e in ENTITIES.items()}


def _getter(cols: tuple[str, ...]) -> Callable[[dict[str, Any]], tuple]:
    """The fields ``cols`` of a dict, as a tuple (``()`` for none)."""
    if not cols:
        return lambda d: ()
    get = operator.itemgetter(*cols)
    return get if len(cols) > 1 else lambda d: (get(d),)


# per entity, what row() takes from a record: key, hashed values (None: key-only), extra columns, kinds
_ROW_PARTS = {name: (_getter(e.key), _getter(e.values) if e.values else None, _getter(e.extra_cols),
                     *_COLUMN_KINDS[name]) for name, e in ENTITIES.items()}


def json_columns(ent: Entity) -> tuple[str, ...]:
    """The columns of ``ent`` that hold JSON (``jsonb`` in its history).

    Staging may hold them as ``text`` (``json_text``): PostgreSQL then stores what the worker wrote
    without parsing it (parsing ``jsonb`` is most of what a COPY of an account costs it: measured,
    9.0 -> 2.8 us a SCIM user), and the merge parses only the rows it writes (``CAST(... AS jsonb)``).
    A re-run, which writes a small part of what it stages, does that; a first load, which writes every
    row, parses them in the COPY, which runs beside the fetching instead of in the merge after it.
    """
    return tuple(ent.values[i] for i in _COLUMN_KINDS[ent.name][0])


STAGE_STATISTICS = 10  # default_statistics_target for ANALYZE of staging (PostgreSQL's default: 100)


def analyze_stage(conn: psycopg.Connection, table: str) -> None:
    """ANALYZE a staging table from a small sample (3,000 rows instead of 30,000).

    The merge plans by its row count and by the width of its rows (the diff hashes the narrower side);
    neither needs a fine histogram. The sample was most of what it cost (measured, 300k SCIM users:
    0.93 s with PostgreSQL's default, 0.35 s for the keys and hashes alone, 0.07 s for every column
    from the small sample); without the values' widths the planner once hashed the wide staging
    side of the diff, spilling ~2 GB at 1M accounts."""
    with conn.transaction():
        conn.execute(f"SET LOCAL default_statistics_target = {STAGE_STATISTICS}")
        conn.execute(f"ANALYZE {table}")


class _EntityStats:
    __slots__ = ("fetched", "invalid", "samples", "reused", "memo")

    def __init__(self) -> None:
        self.fetched = 0
        self.invalid = 0
        self.reused = 0  # records staged from the memo (counted in fetched too)
        self.memo = 0  # rows staged with a src (the next run's memo)
        self.samples: list[dict[str, str]] = []



class _Copies:
    """The one COPY open on a cursor at a time: ``get(sql)`` ends the open one if it is another."""

    def __init__(self, cur: psycopg.Cursor) -> None:
        self.cur = cur
        self.sql: str | None = None
        self._cm: Any = None
        self.copy: Any = None

    def get(self, sql: str) -> Any:
        if sql != self.sql:
            self.end()
            self._cm = self.cur.copy(sql)
            self.copy, self.sql = self._cm.__enter__(), sql
        return self.copy

    def end(self) -> None:
        cm, self._cm, self.copy, self.sql = self._cm, None, None, None
        if cm is not None:
            cm.__exit__(None, None, None)

    def __enter__(self) -> _Copies:
        return self

    def __exit__(self, *exc: Any) -> None:
        cm, self._cm, self.copy, self.sql = self._cm, None, None, None
        if cm is not None:
            cm.__exit__(*exc)


class Stager:
    """Validates records, computes their staging rows and COPYs them into one staging table."""

    def __init__(self, connector: str, snapshot_id: int, *, log_invalid: bool = True) -> None:
        self.connector = connector
        self.snapshot_id = snapshot_id
        self.log_invalid = log_invalid  # a worker returns samples instead (its logs would reach no one)
        self._digests: dict[str, bytes | None] = {}  # per page spec: see ingest.memo.digest

    @staticmethod
    def create(conn: psycopg.Connection, ent: Entity, table: str, json_text: bool = False) -> None:
        """(Re)create an empty staging table of ``ent``'s shape (``page_seq``: the page of its stream a
        row came in; checkpoints cover pages, see :mod:`ingest.checkpoints`; ``src``: the record bytes it
        came from, and ``hit``: a narrow row standing for the memo's row of its ``src``, see :mod:`ingest.memo`).

        ``json_text``: the JSON columns are ``text``, not ``jsonb`` (see :func:`json_columns`).

        The column types come from the catalog, not from a query of the history table: a commit
        that holds that table locked (a first load, merged ahead while its later streams stage)
        does not hold up another connector's staging."""
        conn.execute(f"DROP TABLE IF EXISTS {table} CASCADE")
        if ent.table is None:  # last activity: not versioned, its own shape
            conn.execute(f"CREATE UNLOGGED TABLE {table} (account_id text, last_activity_at timestamptz, "
                         "event_type text, key_hash uuid, row_hash uuid, page_seq integer, src uuid, hit boolean)")
            return
        types = dict(conn.execute(
            "SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a "
            "WHERE a.attrelid = to_regclass(%s) AND a.attnum > 0 AND NOT a.attisdropped",
            (f"ingest.{ent.table}_history",)).fetchall())
        as_text = json_columns(ent) if json_text else ()
        cols = ", ".join(f"{c} {'text' if c in as_text else types[c]}" for c in ent.columns + ("key_hash", "row_hash"))
        conn.execute(f"CREATE UNLOGGED TABLE {table} ({cols}, page_seq integer, src uuid, hit boolean)")

    def copy_into(self, conn: psycopg.Connection, ent: Entity, table: str, batches: Iterable[Any],
                  stats: _EntityStats, progress: Callable[[str, int], None] | None = None, *,
                  create: bool = True, json_text: bool = False,
                  divert: list[tuple[int, list[Any]]] | None = None, memo: str | None = None) -> None:
        """COPY every batch into ``table`` in ``conn``'s transaction (``create``: a new table, FREEZE).

        A batch's ``seq`` attribute (default 0) is its rows' ``page_seq``; a ``(seq, records)`` tuple
        says the same (how batches reach a worker). An :class:`~ingest.pages.Undecoded` page is a
        batch of its own, decoded here, record by record where its stream can be memoised (each row
        gets its ``src``; ``memo``, the connector's memo of ``ent``, gives the rows of the records it
        already has: :mod:`ingest.memo`). ``divert`` (staging assignments): nested groups among the
        records are not staged but added to it, as ``(seq, records)``."""
        cols = ", ".join(ent.columns + ("key_hash", "row_hash", "page_seq"))
        if create:
            self.create(conn, ent, table, json_text)
        freeze = " (FREEZE)" if create else ""
        copy_sql, memo_copy_sql = (f"COPY {table} ({cols}{extra}) FROM STDIN{freeze}" for extra in ("", ", src"))
        if memo is not None:  # whatever the memo's statistics say, its index: never a scan of it for each page
            conn.execute("SET LOCAL enable_seqscan = off")
        plain = ent.name in _FAST
        memoised = stats.memo
        with conn.cursor() as cur, _Copies(cur) as copies:
            for batch in batches:
                if type(batch) is tuple:
                    seq, batch = batch
                else:
                    seq = getattr(batch, "seq", 0)
                if type(batch) is Undecoded:
                    raws = None
                    if divert is None and (dig := self._digest(batch.spec, ent)) is not None:
                        raws = memo_split(batch.spec, batch.body, batch.skip)
                    if raws is not None:
                        self._stage_memoised(conn, copies, ent, table, batch.spec, raws, dig, seq, stats,
                                             memo_copy_sql, memo)
                        if progress is not None:
                            progress(ent.name, stats.fetched)
                        continue
                    batch = batch.records()
                if divert is not None:
                    batch = _without_nested(batch, seq, divert)
                copy = copies.get(copy_sql)
                stats.fetched += len(batch)
                if plain:
                    self._copy_plain(ent, batch, stats, copy.write_row, seq, copy.write)
                else:
                    self._copy_records(ent, batch, stats, copy.write_row, seq)
                if progress is not None:
                    progress(ent.name, stats.fetched)
        if stats.memo > memoised:  # what the next run's memo looks up (see ingest.memo.keep)
            conn.execute(memo_index(table, ent, f"{table.rpartition('.')[2]}_src"))

    def _digest(self, spec: PageSpec, ent: Entity) -> bytes | None:
        try:
            return self._digests[spec.key]
        except KeyError:
            got = self._digests[spec.key] = memo_digest(spec, self.connector, ent.name)
            return got

    def _stage_memoised(self, conn: psycopg.Connection, copies: _Copies, ent: Entity, table: str, spec: PageSpec,
                        raws: list[Any], dig: bytes, seq: int, stats: _EntityStats, copy_sql: str,
                        memo: str | None) -> None:
        """Stage a page's records (their bytes) with their ``src``: those the memo has as hit rows (an
        INSERT from its index), the others decoded, mapped and COPYed. A record that maps to more (or fewer) than one record
        is staged without a ``src`` (the memo would not give them all back)."""
        srcs = memo_keys(raws, dig, spec.ignored)
        hits: set[str] | frozenset[str] = frozenset()
        if memo is not None and srcs:
            ask = srcs
            if len(set(srcs)) < len(srcs):  # a record twice in the page: both the full way (both are staged)
                seen = collections.Counter(srcs)
                ask = [x for x in srcs if seen[x] == 1]
            copies.end()
            hits = {x for (x,) in conn.execute(self._memo_insert(ent, table, memo), (seq, ",".join(ask)),
                                               prepare=True)}
            stats.fetched += len(hits)
            stats.reused += len(hits)
            stats.memo += len(hits)
        fn = spec.map
        validate, row = self.validate, self.row
        write = None  # the COPY, opened at the page's first row to write (after the memo's INSERT)
        try:
            for r, src in zip(raws, srcs):
                if src in hits:
                    continue
                try:
                    record = orjson.loads(memoryview(r))
                except ValueError:
                    record = loads(bytes(r))
                got = record if fn is None else fn(record)
                if got is None:
                    continue
                if type(got) is dict or isinstance(got, (dict, BaseModel)):
                    items: Any = (got,)
                else:
                    items, src = list(got), None
                for item in items:
                    stats.fetched += 1
                    fields = validate(ent, item, stats)
                    if fields is None:
                        continue
                    try:
                        values = row(ent, fields)
                    except ValueError as e:
                        self._invalid(ent, item, stats, str(e))
                        continue
                    if write is None:
                        write = copies.get(copy_sql).write_row
                    write((*values, seq, src))
                    if src is not None:
                        stats.memo += 1
        except IngestError as e:
            e.stream = e.stream or spec.stream
            raise

    def _memo_insert(self, ent: Entity, table: str, memo: str) -> str:
        """A hit row (:mod:`ingest.memo`) for each of a page's records the memo has, with this page's seq;
        their src returned."""
        cols = ", ".join((*memo_narrow(ent), "key_hash", "row_hash"))
        return (f"INSERT INTO {table} ({cols}, page_seq, src, hit) "
                f"SELECT DISTINCT ON (src) {cols}, %s, src, true FROM {memo} "
                # the srcs as one text (psycopg dumps a list of 1,000 strings element by element)
                "WHERE src = ANY(CAST(string_to_array(%s, ',') AS uuid[])) "
                "RETURNING replace(CAST(src AS text), '-', '')")

    def row(self, ent: Entity, d: dict[str, Any]) -> tuple:
        """The staging row of a validated record's fields: columns, key hash, row hash.

        ``row_hash`` is the md5 of the canonical JSON of the hashed columns (sorted keys).
        Raises ValueError for text PostgreSQL cannot store (NUL).
        """
        key_of, values_of, extra_of, json_cols, enum_cols = _ROW_PARTS[ent.name]
        key = key_of(d)
        key_text = self.connector + "\x1f" + "\x1f".join(key)
        if "\x00" in key_text:
            raise ValueError("contains a NUL character, which PostgreSQL cannot store")
        key_hash = hashlib.md5(key_text.encode()).hexdigest()
        extra = extra_of(d)
        if values_of is None:
            return (*key, *extra, key_hash, key_hash)
        values = values_of(d)
        cells = values
        if json_cols or enum_cols:  # JSON columns: serialised once, for the cell and the hash; enums by value
            cells, values = list(values), list(values)
            for i in json_cols:
                v = values[i]
                if type(v) is dict or type(v) is list:
                    text = _dumps(v, option=_JSON_OPTS, default=str)
                    values[i] = _Fragment(text)
                    cells[i] = text.decode()
            for i in enum_cols:
                if isinstance(v := cells[i], enum.Enum):
                    cells[i] = v.value
        blob = _dumps(values, option=_JSON_OPTS, default=str)  # what orjson gives for the values list as it was
        if b"\\" in blob and b"\\u0000" in blob and _NUL.search(blob):  # most rows have no escape at all
            raise ValueError("contains a NUL character, which PostgreSQL cannot store")
        return (*key, *cells, *extra, key_hash, hashlib.md5(blob).hexdigest())

    def _invalid(self, ent: Entity, item: Any, stats: _EntityStats, reason: str) -> None:
        stats.invalid += 1
        key = item.get(ent.key[0]) if isinstance(item, dict) else getattr(item, ent.key[0], None)
        if len(stats.samples) < MAX_INVALID_SAMPLES:
            stats.samples.append({"key": str(key)[:200], "reason": reason})
        if self.log_invalid:
            log.warning("record_invalid", entity=ent.name, key=str(key)[:200], reason=reason)

    def validate(self, ent: Entity, item: Any, stats: _EntityStats) -> dict[str, Any] | None:
        """The record's fields when ``item`` is valid; otherwise counts it as invalid and returns None."""
        if isinstance(item, ent.model):
            return item.__dict__
        d = _VALIDATE[ent.name].check(item)
        if d is not None:
            return d
        try:
            if isinstance(item, BaseModel):
                item = item.model_dump()
            return ent.model.model_validate(item).__dict__
        except ValidationError as e:
            err = e.errors()[0]
            self._invalid(ent, item, stats, f"{'.'.join(map(str, err['loc'])) or 'record'}: {err['msg']}")
            return None

    def _copy_records(self, ent: Entity, batch: list[Any], stats: _EntityStats, write: Callable,
                      seq: int = 0) -> None:
        validate, row = self.validate, self.row
        for item in batch:
            fields = validate(ent, item, stats)
            if fields is not None:
                try:
                    write((*row(ent, fields), seq))
                except ValueError as e:
                    self._invalid(ent, item, stats, str(e))

    def _copy_plain(self, ent: Entity, batch: list[Any], stats: _EntityStats, write: Callable,
                    seq: int = 0, write_text: Callable[[str], Any] | None = None) -> None:
        """The hot loop for key-only entities (assignments, nested groups): same result as
        ``_copy_records``, without per-record function layers.

        ``write_text`` (a COPY's ``write``): the batch's rows go to it as one piece of COPY text, each
        row a line of tab-separated values, instead of one ``write`` call per row (psycopg's per-row
        layers cost more than the line itself). A row with a character COPY's text format escapes
        (backslash, tab, newline, carriage return) goes through ``write``, which escapes it.

        Each step runs over the whole batch (``map``, comprehensions): a SCIM fan-out stages five million
        of these rows, and one loop body doing every step cost ~1.7 us a row against ~1.4 us."""
        fast, prefix = _FAST[ent.name], self.connector + "\x1f"
        checked = list(map(fast, batch))
        if None in checked:  # rare: what the quick check refuses goes the full way, ahead of the rest
            kept = [(item, d) for item, d in zip(batch, checked) if d is not None]
            self._copy_records(ent, [item for item, d in zip(batch, checked) if d is None], stats, write, seq)
            batch, checked = [item for item, _ in kept], [d for _, d in kept]
        if not checked:
            return
        values = list(map(_ROW_PARTS[ent.name][0], checked))
        join = "\x1f".join
        texts = [prefix + join(v) for v in values]  # what key_hash hashes
        every = "".join(texts)
        md5 = hashlib.md5
        if write_text is None or "\x00" in every or "\\" in every or "\t" in every or "\n" in every or "\r" in every:
            for item, text, v in zip(batch, texts, values):  # rare: those rows one by one
                if "\x00" in text:
                    self._invalid(ent, item, stats, "contains a NUL character, which PostgreSQL cannot store")
                    continue
                h = md5(text.encode()).hexdigest()
                if write_text is None or _COPY_ESCAPED.search(text):
                    write((*v, h, h, seq))
                else:
                    write_text("\t".join(v) + f"\t{h}\t{h}\t{seq}\n")
            return
        hashes = [md5(t.encode()).hexdigest() for t in texts]
        tail, tab = f"\t{seq}\n", "\t".join
        write_text("".join([f"{tab(v)}\t{h}\t{h}{tail}" for v, h in zip(values, hashes)]))


def is_nested(item: Any) -> bool:
    """An entitlement association that is a group in a group (not an account's assignment)."""
    if type(item) is dict:
        return "member_entitlement_id" in item
    return (getattr(item, "entity", None) == "nested_entitlement"
            or (isinstance(item, dict) and "member_entitlement_id" in item))


def _without_nested(batch: list[Any], seq: int, nested: list[tuple[int, list[Any]]]) -> list[Any]:
    """The assignments of a batch of entitlement associations; its nested groups go to ``nested``."""
    if not batch:
        return batch
    if set(map(type, batch)) == {dict}:  # plain dicts (most sources): looked at without a Python call each
        mixed = any(map(operator.contains, batch, itertools.repeat("member_entitlement_id")))
    else:
        mixed = any(map(is_nested, batch))
    if not mixed:
        return batch
    nested.append((seq, [item for item in batch if is_nested(item)]))
    return [item for item in batch if not is_nested(item)]


# -- worker processes ----------------------------------------------------------------------------------

_END = "end"  # after an entity's last batch
_SPEC = "spec"  # (_SPEC, key, pickled PageSpec): how the Undecoded pages that name ``key`` become records


def _worker(dsn: str, connector: str, snapshot_id: int, wid: int, tasks: Any, results: Any) -> None:
    """One staging process: for each entity, ``(entity, table, json_text, divert, memo)``, then batches (and
    the page specs they need), then ``_END``; ``None`` stops it. A batch is ``(seq, JSON)``,
    ``(seq, None, pickled records)`` or an undecoded page ``(seq, spec key, body, skip, pickled
    parent)``; a spec is ``(_SPEC, key, pickled PageSpec)``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the run's to handle: it stops the workers
    # see GC_THRESHOLD (decoding a handed-over SCIM user: 12 -> 4.4 us); what was imported stays out of the scans
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLD)
    stager = Stager(connector, snapshot_id, log_invalid=False)
    specs: dict[str, Any] = {}
    entity = None
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            while (msg := tasks.get()) is not None:
                entity, table, json_text, divert, memo = msg

                def batches() -> Iterator[tuple[int, list[Any]]]:
                    while (item := tasks.get()) != _END:
                        if len(item) == 2:  # records as JSON
                            yield item[0], orjson.loads(item[1])
                        elif item[0] == _SPEC:
                            specs[item[1]] = pickle.loads(item[2])
                        elif len(item) == 3:  # records pickled
                            yield item[0], pickle.loads(item[2])
                        else:  # an undecoded page
                            seq, key, body, skip, parent = item
                            yield seq, Undecoded(specs[key], body, skip, pickle.loads(parent), 0)

                stats = _EntityStats()
                nested: list[tuple[int, list[Any]]] | None = [] if divert else None
                with conn.transaction():  # created and filled in one transaction: COPY FREEZE
                    stager.copy_into(conn, ENTITIES[entity], table, batches(), stats, json_text=json_text,
                                     divert=nested, memo=memo)
                results.put(("done", wid, entity, table, stats.fetched, stats.invalid, stats.samples, nested,
                             stats.reused, stats.memo))
    except BaseException as e:  # reported to the run's process, which fails the stage
        kind = type(e).__name__ if isinstance(e, IngestError) else None
        results.put(("error", wid, entity, f"{type(e).__name__}: {e}",
                     (kind, e.message, e.stream) if kind else None))


def _raise_failed(msg: tuple) -> None:
    """A worker's error: the source's (an IngestError raised decoding or mapping its pages) as it was,
    anything else as a SnapshotError."""
    _, wid, entity, text, ingest = msg
    if ingest is not None:
        cls = getattr(errors, ingest[0], None)
        if isinstance(cls, type) and issubclass(cls, IngestError):
            try:
                error = cls(ingest[1], stream=ingest[2])
            except TypeError:  # an error class with arguments of its own
                pass
            else:
                raise error
    raise SnapshotError(f"staging {entity or 'records'} failed in worker {wid}: {text}; nothing was committed")


_MAIN_LOCK = threading.Lock()


@contextlib.contextmanager
def _main_not_reimported() -> Iterator[None]:
    """A spawned process first re-imports the parent's ``__main__`` (for ``ingest``, the console script:
    the whole CLI, seconds and tens of MB per worker). The workers need nothing from it: hide it while
    they start (start() sends what the child needs before it returns)."""
    main = sys.modules.get("__main__")
    if main is None:
        yield
        return
    with _MAIN_LOCK:  # runs of a daemon start their workers from several threads
        saved = {k: main.__dict__[k] for k in ("__file__", "__spec__") if k in main.__dict__}
        main.__spec__ = None
        main.__dict__.pop("__file__", None)
        try:
            yield
        finally:
            main.__dict__.update(saved)


class StagePool:
    """``workers`` staging processes of one snapshot, started once and reused for each large entity."""

    def __init__(self, dsn: str, connector: str, snapshot_id: int, workers: int) -> None:
        self.dsn = dsn
        ctx = multiprocessing.get_context("spawn")  # never fork a process that runs threads (fetch, HTTP)
        self.tasks = [ctx.Queue(maxsize=QUEUE_DEPTH) for _ in range(workers)]
        self.results = ctx.Queue()
        self.procs = [ctx.Process(target=_worker, name=f"ingest-stage-{k}", daemon=True,
                                  args=(dsn, connector, snapshot_id, k, self.tasks[k], self.results))
                      for k in range(workers)]
        with _main_not_reimported():
            for p in self.procs:
                p.start()
        self.closed = False
        self.specs: set[str] = set()  # keys of the page specs every worker has been sent
        self.calls = 0  # stage() calls; with the pool's tag, segment names never repeat (a resumed
        self.tag = secrets.token_hex(3)  # attempt adopts an earlier one's segments, renamed to its own id)

    def _failed(self) -> None:
        """Raise if a worker reported an error or died."""
        try:
            msg = self.results.get_nowait()
        except queue.Empty:
            msg = None
        if msg is not None:
            if msg[0] == "error":
                _raise_failed(msg)
            self._early.append(msg)
        for k, p in enumerate(self.procs):
            if not p.is_alive():
                raise SnapshotError(f"staging worker {k} stopped (exit code {p.exitcode}); nothing was committed")

    def _put(self, k: int, item: Any, check: Callable[[], None] | None) -> None:
        while True:
            try:
                self.tasks[k].put(item, timeout=0.2)
                return
            except queue.Full:
                self._failed()
                if check is not None:
                    check()

    def stage(self, ent: Entity, table: str, batches: Iterable[list[Any]], stats: _EntityStats,
              progress: Callable[[str, int], None] | None = None, check: Callable[[], None] | None = None, *,
              create: bool = True, then: Callable[[psycopg.Connection], None] | None = None,
              analyze: bool = True, json_text: bool = False,
              divert: list[tuple[int, list[Any]]] | None = None, memo: str | None = None) -> None:
        """Stage ``batches`` into ``table`` through the workers; raises SnapshotError if any of them fails
        (or the IngestError a worker met decoding the source's pages).

        Each worker commits its segment; then one transaction of the run's process (re)creates
        ``table`` (``create``), attaches the segments to it and runs ``then(conn)`` (a checkpoint
        commits with the rows it covers: a crash before that leaves segments no table inherits,
        which the snapshot's staging clean-up drops). ``divert``: as :meth:`Stager.copy_into`'s,
        filled before ``then`` runs. ``memo``: as :meth:`Stager.copy_into`'s.
        """
        n = len(self.procs)
        self._early: list[tuple] = []
        self.calls += 1
        segments = [f"{table}_{self.tag}_{self.calls}_{k}" for k in range(n)]
        for k in range(n):
            self._put(k, (ent.name, segments[k], json_text, divert is not None, memo), check)
        rotation = itertools.cycle(range(n))
        as_json = ent.name in _AS_JSON
        sent = 0  # records (an undecoded page: the records it holds before mapping), for progress
        for batch in batches:
            if not len(batch):  # a checkpoint's mark after a page handed on by itself
                continue
            sent += len(batch)
            seq = getattr(batch, "seq", 0)
            if type(batch) is Undecoded:
                spec = batch.spec
                if spec.key not in self.specs:  # every worker learns how to decode the stream's pages
                    self.specs.add(spec.key)
                    message = (_SPEC, spec.key, pickle.dumps(spec))
                    for k in range(n):
                        self._put(k, message, check)
                # pickled here, not in the queue's feeder thread (where an error would lose the page)
                item: tuple = (seq, spec.key, batch.body, batch.skip, pickle.dumps(batch.parent))
            else:
                # JSON bytes cost the run's process a fraction of pickling the same records (a ninth for plain
                # strings, about a third for decoded SCIM users); a batch with anything JSON would not give back
                # as it was (a model, a datetime, a subclass of dict / str / int, an int beyond 64 bits) is
                # pickled as it is, as a plain list (the runner's batches carry attributes workers need not),
                # here: in the queue's feeder thread an error would lose the batch without a word
                plain = batch if type(batch) is list else list(batch)  # the runner's _Batch is a list subclass
                payload = None
                if as_json:
                    try:
                        payload = _dumps(plain, option=_HAND_OVER)
                    except TypeError:
                        pass
                item = (seq, payload) if payload is not None else (seq, None, pickle.dumps(plain))
            k = next(rotation)
            for _ in range(n):  # the first worker with room, starting at the next in turn
                try:
                    self.tasks[k].put_nowait(item)
                    break
                except queue.Full:
                    k = next(rotation)
            else:
                self._put(k, item, check)
            if progress is not None:
                progress(ent.name, stats.fetched + sent)
        for k in range(n):
            self._put(k, _END, check)
        done = set()
        while len(done) < n:
            msg = self._early.pop() if self._early else None
            if msg is None:
                try:
                    msg = self.results.get(timeout=0.2)
                except queue.Empty:
                    self._failed()
                    if check is not None:
                        check()
                    continue
            if msg[0] == "error":
                _raise_failed(msg)
            _, wid, _entity, _table, fetched, invalid, samples, nested, reused, memoised = msg
            done.add(wid)
            stats.fetched += fetched
            stats.invalid += invalid
            stats.reused += reused
            stats.memo += memoised
            if nested:
                divert.extend(nested)
            for s in samples:
                if len(stats.samples) < MAX_INVALID_SAMPLES:
                    stats.samples.append(s)
                log.warning("record_invalid", entity=ent.name, key=s["key"], reason=s["reason"])
        # one table for the merge: the segments become children of the entity's staging table
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            with conn.transaction():
                if create:
                    Stager.create(conn, ent, table, json_text)
                for seg in segments:
                    conn.execute(f"ALTER TABLE {seg} INHERIT {table}")
                if then is not None:
                    then(conn)
            if analyze:
                analyze_stage(conn, table)

    def close(self) -> None:
        """Stop the workers: politely when they are idle, at once otherwise (an open COPY rolls back)."""
        if self.closed:
            return
        self.closed = True
        for k, p in enumerate(self.procs):
            if p.is_alive():
                try:
                    self.tasks[k].put_nowait(None)
                except queue.Full:
                    p.terminate()
        self._reap()

    def abort(self) -> None:
        """Stop every worker now (the stage failed or the run is stopping)."""
        self.closed = True
        for p in self.procs:
            if p.is_alive():
                p.terminate()
        self._reap()

    def _reap(self) -> None:
        """Wait for the stopping workers (killed if still alive after 5 s) and close the queues."""
        for p in self.procs:
            p.join(timeout=5)
            if p.is_alive():
                p.kill()
                p.join(timeout=5)
        for q in (*self.tasks, self.results):
            q.cancel_join_thread()
            q.close()
