"""The staging memo (issue 13): a re-run stages the records it already staged, byte for byte, from the
last snapshot's staging, and the staging it gets is the one the full path would have given."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
import sqlalchemy as sa

from ingest import memo
from ingest.db import get_engine, migrate
from ingest.pages import PageSpec, Undecoded
from ingest.staging import ENTITIES
from ingest.writer import SnapshotWriter


def map_record(raw: Any) -> Any:
    """A test stream's mapping: most records one account; some none, some two (never memoised)."""
    if not isinstance(raw, dict):
        return {"account_id": None}
    if raw.get("drop"):
        return None
    if raw.get("twice"):
        return [{"account_id": raw["id"] + "-a"}, {"account_id": raw["id"] + "-b"}]
    return {"account_id": raw.get("id"), "email": raw.get("email"), "display_name": raw.get("name"),
            "last_activity_at": raw.get("seen"), "custom_attributes": {"n": str(raw.get("n"))},
            "extra": {"raw": raw}}


def resources(data: Any) -> Any:
    return data["Resources"]


SPEC = PageSpec("memo-test", "accounts", resources, map_record, False)


def _users(n: int) -> list[dict[str, Any]]:
    return [{"id": f"u{i:04d}", "email": f"u{i}@example.org", "name": f"Zoë \"{i}\"\t\\", "n": i,
             "seen": f"2026-11-0{1 + i % 9}T10:00:00Z" if i % 3 else None} for i in range(n)]


def _pages(users: list[Any], size: int = 50) -> list[Undecoded]:
    out = []
    for seq, i in enumerate(range(0, len(users), size)):
        chunk = users[i:i + size]
        page = Undecoded(SPEC, orjson.dumps({"totalResults": len(users), "Resources": chunk}), (), None, len(chunk))
        page.seq = seq
        out.append(page)
    return out


def _snapshot(engine: sa.Engine, connector: str) -> int:
    with engine.begin() as conn:
        return conn.execute(sa.text(
            "INSERT INTO ingest.snapshots (connector, connector_type, trigger, status) "
            "VALUES (:c, 'scim', 'manual', 'running') RETURNING snapshot_id"), {"c": connector}).scalar_one()


def _finish(sid: int):
    def finish(conn, stats):
        conn.execute(sa.text("UPDATE ingest.snapshots SET status = 'succeeded', stats = CAST(:s AS jsonb) "
                             "WHERE snapshot_id = :sid"),
                     {"sid": sid, "s": orjson.dumps({k: v for k, v in stats.items() if k != "invalid_samples"}).decode()})
    return finish


_ROWS = ("SELECT account_id, email, username, display_name, status, account_type, CAST(custom_attributes AS jsonb), "
         "CAST(extra AS jsonb), last_activity_at, key_hash, row_hash, page_seq, src FROM {t}")


def _staged(engine: sa.Engine, writer: SnapshotWriter) -> list[tuple]:
    """The writer's account staging, each hit row read as the memo row it stands for (with its own
    ``page_seq`` and ``src``)."""
    ent = ENTITIES["account"]
    stage, used = writer.stage_table("account"), writer.memo(ent)
    if used is None or writer.staged["account"].reused == 0:
        table = stage
    else:
        kept = memo.narrow(ent)
        cols = ", ".join(f"s.{c}" if c in kept or c in ("key_hash", "row_hash", "page_seq", "src") else
                         f"CASE WHEN s.hit THEN CAST(m.{c} AS text) ELSE CAST(s.{c} AS text) END AS {c}"
                         for c in (*ent.columns, "key_hash", "row_hash", "page_seq", "src"))
        table = (f"(SELECT {cols} FROM {stage} s LEFT JOIN LATERAL (SELECT * FROM {used} m WHERE m.src = s.src "
                 "LIMIT 1) m ON s.hit) x")
    with engine.connect() as conn:
        return sorted(conn.execute(sa.text(_ROWS.format(t=table))).all(), key=repr)


def _hits(engine: sa.Engine, writer: SnapshotWriter) -> list[tuple]:
    """The hit rows of the writer's account staging, as they are."""
    with engine.connect() as conn:
        return conn.execute(sa.text(f"SELECT * FROM {writer.stage_table('account')} WHERE hit")).mappings().all()


def _memo_tables(engine: sa.Engine, connector: str) -> dict[str, bool]:
    """The connector's memo tables, each with whether it is indexed."""
    with engine.connect() as conn:
        return dict(conn.execute(sa.text(
            "SELECT c.relname, EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid) FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace JOIN ingest.snapshots s "
            "ON c.relname LIKE 'm' || s.snapshot_id || '\\_%' WHERE n.nspname = 'ingest_stage' AND c.relkind = 'r' "
            "AND s.connector = :c"), {"c": connector}).all())


def _day2(users: list[dict[str, Any]]) -> list[Any]:
    day2 = [dict(u) for u in users]
    day2[3]["email"] = "changed@example.org"           # changed bytes: the full path
    day2[4] = {**day2[4], "drop": True}                 # maps to nothing
    day2[5] = {**day2[5], "twice": True}                # maps to two records
    day2[6] = {"id": "", "email": "invalid"}            # invalid: counted, not staged
    del day2[8]                                          # gone
    day2.append({"id": "new1", "email": "n@example.org", "n": -1})
    day2.insert(60, dict(day2[61]))                     # the same record twice on one page (a duplicate key)
    day2.insert(200, dict(day2[10]))                    # ... and on another page
    day2[101] = "not an object"                         # invalid (not the first of its page: see TestSplit)
    day2[120] = {"id": "u\u0000nul"}                    # invalid: NUL
    return day2


@pytest.mark.parametrize("workers", [0, 2])
def test_a_rerun_stages_from_the_memo_exactly_what_the_full_path_stages(database_url, monkeypatch, workers):
    engine = get_engine(database_url)
    migrate(engine)
    connector = f"memo{workers}"
    users = _users(400)
    users[7] = {**users[7], "twice": True}  # never memoised: comes back the full way on day 2 too

    def stage(pages: list[Undecoded]) -> tuple[int, SnapshotWriter]:
        sid = _snapshot(engine, connector)
        writer = SnapshotWriter(engine, connector, sid, workers=workers, parallel_min=50)
        writer.stage("account", pages)
        return sid, writer

    sid1, w1 = stage(_pages(users))
    day1 = _staged(engine, w1)
    assert all(r.src is not None for r in day1 if not r.account_id.startswith("u0007-"))
    assert [r.src for r in day1 if r.account_id.startswith("u0007-")] == [None, None]
    w1.commit(finish=_finish(sid1))
    tables = _memo_tables(engine, connector)
    assert tables and all(tables[t] for t in tables if t.count("_") > 1 or workers == 0), tables

    day2 = _day2(users)
    # what the full path stages on day 2: the memo out of sight
    with monkeypatch.context() as m:
        m.setattr(memo, "find", lambda *a, **k: None)
        ref_sid, ref = stage(_pages(day2))
        expected, expected_stats = _staged(engine, ref), dict(vars_of(ref.staged["account"]))
        ref.discard()
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE ingest.snapshots SET status = 'failed' WHERE snapshot_id = :s"), {"s": ref_sid})

    sid2, w2 = stage(_pages(day2))
    got = _staged(engine, w2)
    # a re-run stages JSON as text (json_as_text), with a memo (day 1 staged jsonb) or not
    assert w2._json_text == {"account": True} and ref._json_text == {"account": True}
    stats = vars_of(w2.staged["account"])
    assert got == expected
    # a hit carries its key, hashes, last activity and where it came from; nothing else
    hits = _hits(engine, w2)
    assert len(hits) == stats["reused"]
    assert all(h["src"] and h["key_hash"] and h["row_hash"] and h["account_id"] for h in hits)
    assert any(h["last_activity_at"] for h in hits), [dict(h) for h in hits[:3]]
    assert {k for h in hits for k, v in h.items() if v is not None} == {
        "account_id", "last_activity_at", "key_hash", "row_hash", "page_seq", "src", "hit"}
    # every record of day 1 that is on day 2 as it was (to the byte), once on its page, and mapped to one
    # valid account on day 1
    memoised = {orjson.dumps(u) for u in users if not u.get("twice")}
    reused = 0
    for page in _pages(day2):
        records = [orjson.dumps(r) for r in orjson.loads(page.body)["Resources"]]
        reused += sum(1 for r in records if r in memoised and records.count(r) == 1)
    assert 300 < reused < len(day2) - 5
    assert stats["reused"] == reused
    assert {**stats, "reused": 0, "memo": 0} == {**expected_stats, "reused": 0, "memo": 0}
    assert expected_stats["reused"] == 0
    result = w2.commit(finish=_finish(sid2))
    assert result["account"]["reused"] == stats["reused"]
    assert result["account"]["duplicates"] == 2
    # the new snapshot's staging is now the memo; the older one is gone
    tables = _memo_tables(engine, connector)
    assert tables and all(t.startswith(f"m{sid2}_") for t in tables)
    with engine.connect() as conn:
        current = dict(conn.execute(sa.text(
            "SELECT account_id, email FROM ingest.accounts WHERE connector = :c"), {"c": connector}).all())
    assert current["u0003"] == "changed@example.org" and "u0008" not in current and current["new1"] == "n@example.org"
    assert "u0004" not in current and {"u0005-a", "u0005-b"} <= current.keys()


def map_ignoring(raw: dict[str, Any]) -> dict[str, Any]:
    """Leaves out ``bookkeeping`` and ``meta.lastModified``, as the stream below says."""
    extra = {k: v for k, v in raw.items() if k != "bookkeeping"}
    extra["meta"] = {k: v for k, v in raw["meta"].items() if k != "lastModified"}
    return {"account_id": raw["id"], "extra": extra}


IGNORING = PageSpec("memo-ignoring", "accounts", "Resources", map_ignoring, False, ("bookkeeping", "meta.lastModified"))


def test_a_record_that_changed_only_in_fields_its_map_ignores_comes_from_the_memo(database_url, monkeypatch):
    engine = get_engine(database_url)
    migrate(engine)

    def users(day: int) -> list[dict[str, Any]]:
        return [{"id": f"u{i}", "bookkeeping": day, "meta": {"created": "c", "lastModified": f"day {day}"},
                 "n": i} for i in range(300)]

    def pages(records: list[dict[str, Any]]) -> list[Undecoded]:
        out = []
        for seq, i in enumerate(range(0, len(records), 100)):
            page = Undecoded(IGNORING, orjson.dumps({"Resources": records[i:i + 100]}), (), None, 100)
            page.seq = seq
            out.append(page)
        return out

    sid = _snapshot(engine, "ign")
    w = SnapshotWriter(engine, "ign", sid, workers=0)
    w.stage("account", pages(users(1)))
    w.commit(finish=_finish(sid))
    day2 = users(2)
    day2[3]["meta"]["created"] = "other"  # read by the map: the full way
    day2[4]["n"] = -4
    with monkeypatch.context() as m:
        m.setattr(memo, "find", lambda *a, **k: None)
        ref_sid = _snapshot(engine, "ign")
        ref = SnapshotWriter(engine, "ign", ref_sid, workers=0)
        ref.stage("account", pages(day2))
        expected = _staged(engine, ref)
        ref.discard()
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE ingest.snapshots SET status = 'failed' WHERE snapshot_id = :s"), {"s": ref_sid})
    sid = _snapshot(engine, "ign")
    w = SnapshotWriter(engine, "ign", sid, workers=0)
    w.stage("account", pages(day2))
    assert w.staged["account"].reused == 298
    assert _staged(engine, w) == expected
    stats = w.commit(finish=_finish(sid))
    assert stats["account"] == {**stats["account"], "added": 0, "modified": 2, "unchanged": 298}


def vars_of(stats: Any) -> dict[str, Any]:
    """The stats' counts, and their invalid samples in order (workers report in the order they finish)."""
    out = {k: getattr(stats, k) for k in stats.__slots__}
    out["samples"] = sorted(out["samples"], key=repr)
    return out


def test_a_memo_of_other_code_or_another_shape_gives_nothing(database_url, monkeypatch):
    """The memo is a cache: other mapping code (its digest) matches nothing, and a memo whose columns are
    not this version's is not used at all; the rows are the full path's either way."""
    engine = get_engine(database_url)
    migrate(engine)
    users = _users(120)
    _run(engine, "other", _pages(users))
    monkeypatch.setattr(memo, "VERSION", b"ingest-memo-test")
    w = _run(engine, "other", _pages(users))
    assert w.staged["account"].reused == 0 and w.staged["account"].memo == 120

    table = next(iter(_memo_tables(engine, "other")))
    with engine.begin() as conn:
        conn.execute(sa.text(f'ALTER TABLE ingest_stage."{table}" DROP COLUMN display_name'))
    w = _run(engine, "other", _pages(users), commit=False)
    assert w.memo(ENTITIES["account"]) is None
    assert w.staged["account"].reused == 0 and w.staged["account"].fetched == 120


def _run(engine: sa.Engine, connector: str, pages: list[Undecoded], commit: bool = True) -> SnapshotWriter:
    """A snapshot of ``pages`` staged in this process, committed unless told not to."""
    sid = _snapshot(engine, connector)
    w = SnapshotWriter(engine, connector, sid, workers=0)
    w.stage("account", pages)
    if commit:
        w.result = w.commit(finish=_finish(sid))
    return w


@pytest.fixture
def engine(database_url: str) -> sa.Engine:
    """A migrated engine on the test's database."""
    got = get_engine(database_url)
    migrate(got)
    return got


def test_a_failed_run_leaves_the_memo_of_the_last_snapshot(engine):
    users = _users(100)
    _run(engine, "keep", _pages(users))
    before = _memo_tables(engine, "keep")
    w = _run(engine, "keep", _pages(users), commit=False)
    assert w.staged["account"].reused == 100
    w.discard()
    assert _memo_tables(engine, "keep") == before


class TestSplit:
    def test_the_records_of_a_page_as_their_bytes(self):
        body = b'{"schemas": ["urn:x"], "totalResults": 2, "Resources": [{"id": "a"} , {"id": "b", "x": [1]}]}'
        got = memo.split(PageSpec("k", "s", "Resources", None, False), body, ())
        assert [bytes(r) for r in got] == [b'{"id": "a"}', b'{"id": "b", "x": [1]}']
        assert [bytes(r) for r in memo.split(PageSpec("k", "s", resources, None, False), body, (0,))] == \
            [b'{"id": "b", "x": [1]}']
        assert [bytes(r) for r in memo.split(PageSpec("k", "s", None, None, False), b' [{"a": 1}]', ())] == [b'{"a": 1}']

    def test_a_selector_that_reads_the_records_or_builds_its_own_list_goes_the_full_way(self):
        body = b'{"Resources": [{"id": "a"}, {"id": "b"}]}'
        own = PageSpec("k", "s", lambda d: [r for r in d["Resources"] if isinstance(r, dict)], None, False)
        reads = PageSpec("k", "s", lambda d: [r["id"] for r in d["Resources"]] and d["Resources"], None, False)
        for spec in (own, reads):
            assert memo.split(spec, body, ()) is None
        # a list is taken for records when it starts with an object (a list of strings is decoded, as
        # "schemas" must be for a SCIM selector): a page whose first record is not an object goes the full way
        assert memo.split(PageSpec("k", "s", "Resources", None, False), b'{"Resources": [1, {"id": "a"}]}', ()) is None
        assert memo.split(PageSpec("k", "s", "Resources", None, False), b'{"Resources": [{"id": ', ()) is None
        assert memo.split(PageSpec("k", "s", "Resources", None, False), b'"text"', ()) is None

    def test_keys_leave_out_the_ignored_fields_and_nothing_else(self):
        import msgspec

        records = [b'{"id": "a", "meta": {"lastModified": "x", "created": "c"}, "groups": [1]}',
                   b'{"id": "a", "meta": {"created": "c", "lastModified": "y"}}',      # only ignored fields differ
                   b'{"id": "a", "meta": {"lastModified": "y", "created": "d"}}',      # meta.created differs
                   b'{"id": "a", "meta": "{}"}', b'{"id": "a", "meta": {}}', b'{"id": "a", "meta": "e30="}',
                   b'{"id": "a", "meta": {"created": "c"}, "groups": "x"}', b'5', b'"a"']
        raws = [msgspec.json.decode(r, type=msgspec.Raw) for r in records]
        keys = memo.keys(raws, b"digest", ("groups", "meta.lastModified"))
        assert keys[0] == keys[1] == keys[6]
        assert len(set(keys)) == len(keys) - 2
        assert len(set(memo.keys(raws, b"digest"))) == len(keys)  # without ignored fields: the bytes
        assert memo.keys(raws[:1], b"other") != keys[:1]

    def test_a_fan_out_is_never_memoised(self):
        assert memo.digest(PageSpec("k", "s", "members", map_record, True), "c", "assignment") is None
        a = memo.digest(SPEC, "c", "account")
        assert a is not None and a != memo.digest(SPEC, "d", "account") != memo.digest(SPEC, "c", "resource")


def _current(engine: sa.Engine, connector: str) -> list[tuple]:
    """The connector's current accounts: their values (not the connector, the snapshot ids or the hashes,
    which hash the connector's name too)."""
    with engine.connect() as conn:
        return sorted(conn.execute(sa.text(
            "SELECT account_id, email, username, display_name, status, account_type, custom_attributes, extra "
            "FROM ingest.accounts_history WHERE connector = :c AND valid_to IS NULL"),
            {"c": connector}).all(), key=repr)


def _memo_rows(engine: sa.Engine, connector: str) -> list[str]:
    with engine.connect() as conn:
        table = memo.find(conn, connector, "account", ENTITIES["account"].columns)
        return sorted(str(s) for s in conn.execute(sa.text(f"SELECT src FROM {table}")).scalars())


def test_a_record_back_to_an_older_version_opens_it_in_full_from_the_memo(engine, monkeypatch):
    """A hit whose row is not the current version opens a version with every column the memo has (user 3
    is back to day 1's bytes on day 3; user 5 comes as day 1's and day 2's records at once, and the copy
    the duplicate rule keeps is a hit): the history is the one the full path writes."""
    users = _users(120)
    day2 = [dict(u) for u in users]
    day2[3]["email"] = "new@example.org"
    day2[5] = {**users[5], "email": "zz-copy@example.org"}
    day3 = [dict(u) for u in users] + [day2[5]]  # both copies of u0005: hits of day 1 and of day 2

    def days(connector: str) -> list[dict[str, Any]]:
        out = []
        for records in (users, day2, day3):
            w = _run(engine, connector, _pages(records))
            out.append({"reused": w.staged["account"].reused, "stats": w.result})
        return out

    got = days("back")
    with monkeypatch.context() as m:
        m.setattr(memo, "find", lambda *a, **k: None)
        ref = days("full")
    assert [d["reused"] for d in got] == [0, 118, 121] and [d["reused"] for d in ref] == [0, 0, 0]
    assert [{**d["stats"]["account"], "reused": 0} for d in got] == [{**d["stats"]["account"], "reused": 0}
                                                                     for d in ref]
    assert got[2]["stats"]["account"]["modified"] in (1, 2) and got[2]["stats"]["account"]["duplicates"] == 1
    assert "account.fill" in got[2]["stats"]["merge_timings"]
    assert _current(engine, "back") == _current(engine, "full")
    with engine.connect() as conn:
        u3 = conn.execute(sa.text("SELECT email, extra FROM ingest.accounts WHERE connector = 'back' "
                                  "AND account_id = 'u0003'")).one()
    assert u3.email == "u3@example.org" and u3.extra["raw"] == users[3]


def test_the_memo_gains_the_new_rows_and_sheds_what_no_run_asks_for(engine):
    users = _users(100)
    _run(engine, "shed", _pages(users))
    day1 = _memo_rows(engine, "shed")
    assert len(day1) == 100
    # 10 changed: the memo keeps day 1's rows (most of it is still asked for) and gains the 10
    day2 = [dict(u, n=u["n"] + 1000) if i < 10 else u for i, u in enumerate(users)]
    w = _run(engine, "shed", _pages(day2))
    assert w.staged["account"].reused == 90
    assert len(_memo_rows(engine, "shed")) == 110 and set(day1) < set(_memo_rows(engine, "shed"))
    assert _memo_tables(engine, "shed") and all(t.startswith(f"m{w.snapshot_id}_")
                                                for t in _memo_tables(engine, "shed"))
    # 80 changed: what no run asked for is most of the memo now; it is dropped before the 80 are added
    day3 = [dict(u, n=u["n"] + 5000) if i < 80 else u for i, u in enumerate(day2)]
    w = _run(engine, "shed", _pages(day3))
    assert w.staged["account"].reused == 20
    after = _memo_rows(engine, "shed")
    w_again = _run(engine, "shed", _pages(day3))
    assert w_again.staged["account"].reused == 100 and len(after) == 100
    assert _current(engine, "shed") and len(_current(engine, "shed")) == 100


def test_a_resumed_attempt_keeps_its_hits_only_while_their_memo_is_there(engine):
    """An attempt that staged hits and failed is continued by the next (ingest.checkpoints.adopt): with
    the memo in place the hits stay and the commit gives the full path's history; with the memo gone
    the stream starts over."""
    from ingest import checkpoints

    users = _users(150)
    _run(engine, "res", _pages(users))
    day2 = [dict(u, email="x@example.org") if i % 10 == 0 else u for i, u in enumerate(users)]
    results = []
    for drop_memo in (False, True):
        w = _run(engine, "res", _pages(day2), commit=False)
        assert w.staged["account"].reused == (150 if drop_memo else 135)  # the second: after day 2 committed
        cp = checkpoints.Checkpoint("list_accounts", 2, True, {}, {"account": w.counts("account")})
        with engine.begin() as conn:
            checkpoints.save_sa(conn, w.snapshot_id, cp)
            conn.execute(sa.text("UPDATE ingest.snapshots SET status = 'failed' WHERE snapshot_id = :s"),
                         {"s": w.snapshot_id})
        w.discard(keep=True)
        if drop_memo:
            with engine.begin() as conn:
                conn.execute(sa.text(f"DROP TABLE {w.memo(ENTITIES['account'])} CASCADE"))
        sid = _snapshot(engine, "res")
        with engine.begin() as conn:
            kept = checkpoints.adopt(conn, w.snapshot_id, sid, lambda stream: ("account",))
        results.append(set(kept))
        if drop_memo:
            break
        again = SnapshotWriter(engine, "res", sid, workers=0)
        again.restore("account", kept["list_accounts"].counts["account"])
        stats = again.commit(finish=_finish(sid))
        assert stats["account"]["reused"] == 135 and stats["account"]["modified"] == 15
        assert stats["account"]["unchanged"] == 135
        with engine.connect() as conn:
            emails = dict(conn.execute(sa.text(
                "SELECT account_id, email FROM ingest.accounts WHERE connector = 'res'")).all())
        assert emails == {u["id"]: u["email"] for u in day2}
        assert len(_memo_rows(engine, "res")) == 165  # day 1's 150 and the 15 staged in full
    assert results == [{"list_accounts"}, set()]
