"""Pages handed on undecoded (issue 13): the run's process reads only what paging needs of a page and a
staging worker decodes and maps it; the snapshot is the same as when every page is decoded where it
was fetched, and everything unusual is decoded there as before."""

from __future__ import annotations

import functools
import json
from typing import Any

import pytest
import sqlalchemy as sa

from connectors._scim_mapping import group_resource, list_response_resources, map_group_members, map_user
from ingest import pages
from ingest.db import get_engine, migrate
from ingest.errors import ProtocolError
from ingest.http import HttpClient, HttpSettings, OffsetPaginator, ScimPaginator, SinglePage
from ingest.pages import PageSpec, Undecoded, decode, json_path, light_decode
from ingest.streams import Stream, StreamReader
from ingest.writer import SnapshotWriter
from tests.engine import spy_stage_pool
from tests.servers.fake_api import SCIM_LIST, FakeApi, Reply, fake_api  # noqa: F401

USERS = [{"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "id": f"u{i:03d}", "userName": f"user{i}",
          "name": {"givenName": "Zoë", "familyName": f"N{i}"}, "emails": [{"value": f"u{i}@example.org",
                                                                          "primary": True}],
          "active": i % 7 != 0, "meta": {"location": f"https://x/Users/u{i:03d}", "lastModified": "2026"}}
         for i in range(57)]
USERS_SELECTOR = functools.partial(list_response_resources, what="GET /Users")


def client(api: FakeApi) -> HttpClient:
    return HttpClient(api.base_url, settings=HttpSettings(backoff_initial=0.01, backoff_max=0.05), connector="test")


def handed_on(body: bytes, skip: tuple[int, ...], count: int) -> tuple[bytes, tuple[int, ...], int]:
    return body, skip, count


# -- the light decode ---------------------------------------------------------------------------------------

class TestLightDecode:
    @pytest.mark.parametrize("body", [
        {"schemas": [SCIM_LIST], "totalResults": 3, "startIndex": 1, "Resources": USERS[:3]},
        {"data": [{"id": 1, "deep": {"x": [1, {"y": 2}]}}, {"id": "two"}], "meta": {"next": "c2"}, "n": None},
        [{"id": "a", "v": 1}, {"id": "b", "v": [1, 2]}],
        {"items": ["plain", "strings"], "total": 2, "ok": True, "f": 1.5},
        {"Resources": [{"userName": "no id"}, {"id": {"nested": "id"}}], "totalResults": 2},
        {"Resources": [], "totalResults": 0, "schemas": [SCIM_LIST]},
        {"members": [{"value": "u1"}], "id": "g1", "displayName": "Ünïcode ✓"},
    ])
    def test_paging_reads_of_a_light_decode_what_it_reads_of_the_whole_page(self, body: Any) -> None:
        full = json.loads(json.dumps(body))
        light = light_decode(json.dumps(body).encode(), "id")
        assert light is not None
        if isinstance(full, list):
            assert light == [{"id": r.get("id")} for r in full]
            return
        assert light.keys() == full.keys()
        for key, value in full.items():
            if isinstance(value, list) and value and all(isinstance(r, dict) for r in value):
                assert light[key] == [{"id": r.get("id")} for r in value], key  # records: their ids, in order
            else:
                assert light[key] == value, key                                  # the rest as it is

    @pytest.mark.parametrize("body", [
        b'{"Resources": [{"id": 1}', b"", b"<!doctype html><html>sign in</html>", b'"a string"', b"42",
        b'{"totalResults": NaN, "Resources": []}', b"not json", b'{"a": 1} trailing',
    ])
    def test_a_body_it_cannot_read_is_left_to_the_full_decode(self, body: bytes) -> None:
        assert light_decode(body, "id") is None

    def test_without_an_id_field_objects_are_only_counted(self) -> None:
        light = light_decode(b'{"members": [{"value": "u1"}, {"value": "u2"}], "id": "g1", "tags": ["a"]}', None)
        assert light["id"] == "g1" and light["tags"] == ["a"] and len(light["members"]) == 2

    def test_ids_are_read_under_the_paginators_id_field(self) -> None:
        light = light_decode(b'{"r": [{"uid": "a", "id": "x"}, {"uid": "b"}]}', "uid")
        assert light == {"r": [{"uid": "a"}, {"uid": "b"}]}


# -- the HTTP layer --------------------------------------------------------------------------------------------

def _records_of(http: HttpClient, path: str, spec: PageSpec, **kw: Any) -> tuple[list[Any], int]:
    """Every record of a listing read with ``undecoded``, decoded as a worker would; and the pages that came
    undecoded."""
    out, undecoded = [], 0
    for page in http.paginate(path, selector=spec.selector, undecoded=handed_on, **kw):
        if type(page) is tuple:
            body, skip, count = page
            got = decode(spec, body, skip, None)
            assert len(got) == count
            out.extend(got)
            undecoded += 1
        else:
            out.extend(spec.map(r) for r in page)
    return out, undecoded


class TestPaginate:
    def test_scim_pages_handed_on_undecoded_hold_the_records_of_a_decoded_listing(self, fake_api: FakeApi) -> None:
        fake_api.serve_records("/Users", USERS, style="scim", page_size=10)
        spec = PageSpec("k", "accounts", USERS_SELECTOR, map_user, False)
        with client(fake_api) as http:
            decoded = [map_user(r) for r in http.records("/Users", paginator=ScimPaginator(count=10),
                                                            selector=USERS_SELECTOR)]
            got, undecoded = _records_of(http, "/Users", spec, paginator=ScimPaginator(count=10))
        assert got == decoded and len(got) == 57
        assert undecoded == 6  # every page (the last, short one, ends the listing)

    def test_records_a_shifted_page_repeats_are_skipped_by_index(self, fake_api: FakeApi) -> None:
        """Users deleted while paging shift the next page back: its first records were on the page before."""
        def shifted(req) -> Reply:
            start = int(req.query.get("startIndex", 1))
            items = USERS[max(0, start - 3):start - 3 + 10] if start > 1 else USERS[:10]
            return Reply(200, {"schemas": [SCIM_LIST], "totalResults": 25, "startIndex": start, "Resources": items})

        fake_api.route("/Users", shifted)
        spec = PageSpec("k", "accounts", USERS_SELECTOR, map_user, False)
        with client(fake_api) as http:
            decoded = [map_user(r) for r in http.records("/Users", paginator=ScimPaginator(count=10),
                                                            selector=USERS_SELECTOR, concurrency=1)]
            pages_seen = [p for p in http.paginate("/Users", paginator=ScimPaginator(count=10),
                                                   selector=USERS_SELECTOR, undecoded=handed_on, concurrency=1)]
            got, _ = _records_of(http, "/Users", spec, paginator=ScimPaginator(count=10), concurrency=1)
        assert got == decoded
        assert [p[1] for p in pages_seen][:2] == [(), (0, 1)]  # the two repeated records of page 2
        assert len({r["account_id"] for r in got}) == len(got)

    def test_a_counted_listing_with_records_without_ids_is_decoded_here(self, fake_api: FakeApi) -> None:
        anonymous = [{"userName": f"n{i}"} for i in range(5)]
        fake_api.serve_records("/Users", anonymous, style="scim", page_size=10)
        with client(fake_api) as http:
            got = list(http.paginate("/Users", paginator=ScimPaginator(count=10), selector="Resources",
                                     undecoded=handed_on))
        # records, decoded: told apart by their content, as without undecoded (then an empty page ends it)
        assert got[0] == anonymous and [p[2] for p in got[1:]] == [0]

    def test_a_paginator_that_reads_more_than_totals_and_ids_decodes_every_page(self, fake_api: FakeApi) -> None:
        fake_api.serve_records("/items", USERS, style="offset", page_size=20)
        with client(fake_api) as http:
            got = list(http.paginate("/items", paginator=OffsetPaginator(limit=20, total_path="total"),
                                     selector="items", undecoded=handed_on))
        assert [r for page in got for r in page] == USERS

    def test_a_truncated_body_is_fetched_again_as_without_undecoded(self, fake_api: FakeApi) -> None:
        from tests.servers.fake_api import Fault

        fake_api.add_json("/Groups/g1", {"id": "g1", "members": [{"value": "u001"}]})
        fake_api.script([Fault.truncated()], path="/Groups/g1")
        with client(fake_api) as http:
            got = list(http.paginate("/Groups/g1", paginator=SinglePage(), selector=lambda b: [b],
                                     undecoded=handed_on))
            assert http.stats.retries == 1
        assert len(got) == 1 and json.loads(got[0][0]) == {"id": "g1", "members": [{"value": "u001"}]}


# -- streams ------------------------------------------------------------------------------------------------

class TestStreams:
    def _reader(self, api: FakeApi) -> tuple[StreamReader, Stream, Stream]:
        api.serve_records("/Groups", [{"id": "g1"}, {"id": "g2"}], style="scim", page_size=10)
        api.add_json("/Groups/g1", {"id": "g1", "members": [{"value": "u1"}, {"value": "g2", "type": "Group"}]})
        api.add_json("/Groups/g2", {"id": "g2", "members": [{"value": "u2"}]})
        groups = Stream("entitlements", "/Groups", paginator=ScimPaginator(count=10), selector="Resources",
                        map=lambda g: {"entitlement_id": g["id"]}, pass_through=True)
        members = Stream("assignments", "/Groups/{parent.entitlement_id}", for_each=groups, pass_through=True,
                         selector=functools.partial(group_resource, base_url="x"),
                         map=functools.partial(map_group_members, group_ids=frozenset({"g1", "g2"})))
        return StreamReader(client(api)), groups, members

    def test_a_run_that_takes_pages_undecoded_gets_them_for_pass_through_streams_only(self, fake_api) -> None:
        reader, groups, members = self._reader(fake_api)
        plain = list(reader.records(members))
        pages.hand_on(True)
        try:
            items = list(reader.records(members))
            listed = list(reader.records(groups))  # its map is a lambda: it cannot reach a worker
        finally:
            pages.hand_on(False)
        assert all(type(i) is Undecoded for i in items) and len(items) == 2
        assert [r for i in items for r in i.records()] == plain
        assert plain == [{"account_id": "u1", "entitlement_id": "g1", "resource_type": "", "resource_id": ""},
                         {"entitlement_id": "g1", "member_entitlement_id": "g2"},
                         {"account_id": "u2", "entitlement_id": "g2", "resource_type": "", "resource_id": ""}]
        assert listed == [{"entitlement_id": "g1"}, {"entitlement_id": "g2"}]  # the fan-out's parents: records

    def test_each_stream_gets_its_own_spec_even_where_a_gone_one_had_its_id(self, fake_api) -> None:
        """A connector builds its fan-out stream anew for a listing done again: the new one maps with its own
        group ids, whatever id() the old stream had."""
        reader, _, _ = self._reader(fake_api)

        def members(ids: set[str]) -> Stream:
            return Stream("assignments", "/Groups/{parent.entitlement_id}", pass_through=True,
                          selector=functools.partial(group_resource, base_url="x"),
                          map=functools.partial(map_group_members, group_ids=frozenset(ids)))

        for ids in ({"g1"}, {"g2"}, {"g3"}):  # each stream is gone before the next is made
            assert reader._page_spec(members(ids)).map.keywords["group_ids"] == frozenset(ids)

    def test_a_page_that_is_not_what_the_selector_wants_fails_in_the_run_process(self, fake_api) -> None:
        reader, _, members = self._reader(fake_api)
        fake_api.add_json("/Groups/g2", ["not", "a", "group"])
        pages.hand_on(True)
        try:
            with pytest.raises(ProtocolError, match="not a Group resource") as e:
                list(reader.records(members))
        finally:
            pages.hand_on(False)
        assert e.value.stream == "assignments"


# -- staging ------------------------------------------------------------------------------------------------

def _group_pages(n_groups: int, per_group: int) -> tuple[PageSpec, list[Undecoded]]:
    ids = frozenset(f"g{g}" for g in range(n_groups))
    spec = PageSpec(f"members-{n_groups}", "assignments", functools.partial(group_resource, base_url="x"),
                    functools.partial(map_group_members, group_ids=ids), True)
    out = []
    for g in range(n_groups):
        members = [{"value": f"u{(g * 7 + i) % 900:04d}", "type": "User"} for i in range(per_group)]
        if g % 5 == 0:
            members.append({"value": f"g{g + 1}", "type": "Group"})  # a nested group
        body = json.dumps({"id": f"g{g}", "members": members}).encode()
        page = Undecoded(spec, body, (), {"entitlement_id": f"g{g}"}, 1)
        page.seq = g
        out.append(page)
    return spec, out


def _snapshot(engine: sa.Engine, connector: str) -> int:
    migrate(engine)
    with engine.begin() as conn:
        return conn.execute(sa.text(
            "INSERT INTO ingest.snapshots (connector, connector_type, trigger, status) "
            "VALUES (:c, 'scim', 'manual', 'running') RETURNING snapshot_id"), {"c": connector}).scalar_one()


class TestStaging:
    @pytest.mark.parametrize("workers", [0, 2])
    def test_undecoded_pages_stage_the_rows_their_decoded_records_stage(self, database_url, workers) -> None:
        engine = get_engine(database_url)
        sids = [_snapshot(engine, c) for c in (f"undecoded{workers}", f"decoded{workers}")]
        _, undecoded = _group_pages(60, 120)
        decoded = [_page_records(p) for p in undecoded]
        rows = {}
        for sid, batches in zip(sids, (undecoded, decoded), strict=True):
            connector = f"undecoded{workers}" if sid == sids[0] else f"decoded{workers}"
            writer = SnapshotWriter(engine, connector, sid, workers=workers, parallel_min=500)
            nested: list[tuple[int, list[Any]]] = []

            def then(conn, writer=writer, nested=nested) -> None:
                writer.copy_into(conn, "nested_entitlement", nested, create=True)

            writer.stage("assignment", batches, then=then, divert=nested)
            stats = writer.commit(finish=lambda conn, s, sid=sid: conn.execute(sa.text(
                "UPDATE ingest.snapshots SET status = 'succeeded' WHERE snapshot_id = :s"), {"s": sid}))
            with engine.connect() as conn:
                rows[connector] = (
                    conn.execute(sa.text("SELECT account_id, entitlement_id FROM ingest.assignments "
                                         "WHERE connector = :c ORDER BY 1, 2"), {"c": connector}).all(),
                    conn.execute(sa.text("SELECT entitlement_id, member_entitlement_id FROM ingest.nested_entitlements "
                                         "WHERE connector = :c ORDER BY 1, 2"), {"c": connector}).all(),
                    {e: {k: stats[e][k] for k in ("fetched", "added")} for e in ("assignment", "nested_entitlement")})
        a, b = rows[f"undecoded{workers}"], rows[f"decoded{workers}"]
        assert a == b
        assert len(a[0]) == 60 * 120 and len(a[1]) == 12
        assert a[2]["assignment"] == {"fetched": 7200, "added": 7200}

    @pytest.mark.parametrize("min_bytes, pooled", [(100_000, True), (10**9, False)])
    def test_undecoded_pages_go_to_the_workers_by_their_bytes(self, database_url, monkeypatch, min_bytes,
                                                              pooled) -> None:
        """60 groups' pages count 60 records before mapping (7,200 memberships): the decision to stage in
        workers counts their bytes, or the run's process would hold every page until 5,000 groups."""
        monkeypatch.setattr("ingest.writer.PARALLEL_MIN_BYTES", min_bytes)
        used = spy_stage_pool(monkeypatch)
        engine = get_engine(database_url)
        sid = _snapshot(engine, f"bybytes{min_bytes}")
        _, undecoded = _group_pages(60, 120)
        assert sum(len(p.body) for p in undecoded) > 100_000
        writer = SnapshotWriter(engine, f"bybytes{min_bytes}", sid, workers=1, parallel_min=5_000)
        writer.stage("assignment", undecoded, divert=[])
        assert used == (["assignment"] if pooled else [])
        assert writer.staged["assignment"].fetched == 7_200
        writer.discard()

    def test_a_source_error_met_in_a_worker_fails_the_stage_as_that_error(self, database_url) -> None:
        engine = get_engine(database_url)
        sid = _snapshot(engine, "brokenpage")
        spec, undecoded = _group_pages(20, 50)
        bad = Undecoded(spec, b'{"id": "g99", "members": "everyone"}', (), {"entitlement_id": "g99"}, 1)
        writer = SnapshotWriter(engine, "brokenpage", sid, workers=1, parallel_min=10)
        with pytest.raises(ProtocolError, match="members is not a list") as e:
            writer.stage("assignment", [*undecoded, bad, *undecoded], divert=[])
        assert e.value.stream == "assignments"
        writer.discard()


    def test_a_batch_that_cannot_reach_a_worker_fails_the_stage_instead_of_vanishing(self, database_url) -> None:
        """Records JSON cannot carry are pickled in the run's process: a failure there is the stage's
        (in the queue's feeder thread it was printed, and the batch lost)."""
        engine = get_engine(database_url)
        sid = _snapshot(engine, "unpicklable")
        accounts = [{"account_id": f"u{i}", "extra": {"i": i}} for i in range(300)]
        accounts[150]["extra"] = {"callback": lambda: None}  # neither JSON nor picklable
        writer = SnapshotWriter(engine, "unpicklable", sid, workers=1, parallel_min=10)
        with pytest.raises(Exception, match="pickle|lambda"):
            writer.stage("account", [accounts[i:i + 50] for i in range(0, 300, 50)])
        writer.discard()
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT count(*) FROM pg_tables WHERE schemaname = 'ingest_stage' "
                                        "AND tablename LIKE :p"), {"p": f"s{sid}\\_%"}).scalar_one() == 0


def _page_records(page: Undecoded) -> list[Any]:
    from ingest.runner import _Batch

    batch = _Batch(page.seq)
    batch.extend(page.records())
    return batch


def test_json_path_is_the_one_the_http_layer_uses() -> None:
    from ingest.http import json_path as http_json_path

    assert http_json_path is json_path
    assert json_path({"meta": {"next": "c"}}, "meta.next") == "c" and json_path([1, [2]], "1.0") == 2
