"""Declarative streams (ingest.streams) against the loopback fake API: paging styles, fan-out per parent
record, mapping forms, parents deleted since they were listed, errors naming the stream, cancellation."""

from __future__ import annotations

import dataclasses
import threading
import time

import pytest

from ingest.errors import Cancelled, FatalError, NotFoundError, ProtocolError
from ingest.http import (
    CancelToken,
    CursorPaginator,
    HttpClient,
    HttpSettings,
    LinkHeaderPaginator,
    OffsetPaginator,
    PageNumberPaginator,
)
from ingest.records import Account
from ingest.streams import Stream, StreamReader, render
from tests.servers.fake_api import FakeApi, Reply, fake_api  # noqa: F401

USERS = [{"id": f"u{i}", "login": f"user{i}", "profile": {"first": f"F{i}", "last": f"L{i}"}} for i in range(23)]
GROUPS = [{"id": f"g-{i}", "name": f"Group {i}"} for i in range(7)]


def members_of(i: int) -> list[dict]:
    return [{"user_id": f"u{(i * 3 + k) % 23}"} for k in range(i * 3)]  # group 0 is empty, group 6 has 18


def client(api: FakeApi, **kw) -> HttpClient:
    return HttpClient(api.base_url, settings=HttpSettings(max_retries=1, backoff_initial=0.01, backoff_max=0.02,
                                                          **kw), connector="acme")


def serve(api: FakeApi) -> None:
    api.serve_records("/users", USERS, style="cursor", page_size=5)
    api.serve_records("/groups", GROUPS, style="link", page_size=3)
    for i, g in enumerate(GROUPS):
        api.serve_records(f"/groups/{g['id']}/members", members_of(i), style="offset", page_size=5)


GROUP_STREAM = Stream("entitlements", "/groups", paginator=LinkHeaderPaginator(),
                      map=lambda g: {"entitlement_id": g["id"], "label": g["name"]})
MEMBER_STREAM = Stream("assignments", "/groups/{parent.entitlement_id}/members", for_each=GROUP_STREAM,
                       paginator=OffsetPaginator(limit=5, total_path="total"), selector="items",
                       map=lambda m, parent: {"account_id": m["user_id"], "entitlement_id": parent["entitlement_id"]})


def expected_members() -> list[dict]:
    return [{"account_id": m["user_id"], "entitlement_id": g["id"]}
            for i, g in enumerate(GROUPS) for m in members_of(i)]


def test_a_flat_stream_pages_and_maps(fake_api: FakeApi) -> None:
    serve(fake_api)
    users = Stream("accounts", "/users", params={"limit": 5}, selector="data",
                   paginator=CursorPaginator("next_cursor", "cursor"),
                   map=lambda u: Account(account_id=u["id"], username=u["login"]))
    with client(fake_api) as http:
        got = list(StreamReader(http).records(users))
    assert [a.account_id for a in got] == [u["id"] for u in USERS]
    assert len(fake_api.requests) == 5


@pytest.mark.parametrize("ordered", [True, False])
def test_for_each_lists_every_parent_concurrently_within_the_limit(ordered: bool) -> None:
    with FakeApi(latency=0.05) as api:
        serve(api)
        stream = dataclasses.replace(MEMBER_STREAM, ordered=ordered, concurrency=3)
        with client(api, max_concurrency=3) as http:
            got = list(StreamReader(http).records(stream))
        if ordered:
            assert got == expected_members()
        else:
            assert sorted(map(str, got)) == sorted(map(str, expected_members()))
        assert api.max_in_flight <= 3
        assert api.max_in_flight >= 2, "parents are listed at once"
        member_requests = [r for r in api.requests if r.path.endswith("/members")]
        assert {r.path for r in member_requests} == {f"/groups/{g['id']}/members" for g in GROUPS}


def test_kept_parents_are_not_listed_twice(fake_api: FakeApi) -> None:
    serve(fake_api)
    with client(fake_api) as http:
        reader = StreamReader(http, keep=[GROUP_STREAM])
        groups = list(reader.records(GROUP_STREAM))
        members = list(reader.records(MEMBER_STREAM))
    assert len(groups) == 7 and members == expected_members()
    assert sum(r.path == "/groups" for r in fake_api.requests) == 3  # three pages, once


def test_a_parent_deleted_since_it_was_listed_gives_no_records_when_allowed(fake_api: FakeApi) -> None:
    serve(fake_api)
    fake_api.route("/groups/g-3/members", lambda _r: Reply(404, {"error": "not_found"}))
    with client(fake_api) as http:
        got = list(StreamReader(http).records(dataclasses.replace(MEMBER_STREAM, skip_missing=True)))
        assert got == [m for m in expected_members() if m["entitlement_id"] != "g-3"]
        with pytest.raises(NotFoundError) as e:
            list(StreamReader(http).records(MEMBER_STREAM))
        assert e.value.stream == "assignments"


def test_a_failing_parent_stops_the_fan_out_and_names_the_stream(fake_api: FakeApi) -> None:
    serve(fake_api)
    fake_api.route("/groups/g-2/members", lambda _r: Reply(400, {"message": "bad group"}))
    with client(fake_api) as http, pytest.raises(FatalError, match="bad group") as e:
        list(StreamReader(http).records(MEMBER_STREAM))
    assert e.value.stream == "assignments" and e.value.connector == "acme"
    assert not [t for t in threading.enumerate() if t.name.startswith("ingest-stream-")]


def test_map_may_return_several_records_or_none(fake_api: FakeApi) -> None:
    fake_api.serve_records("/things", [{"id": i, "tags": ["a", "b"][: i % 3]} for i in range(9)],
                           style="page", page_size=4)
    stream = Stream("resources", "/things", selector="data", paginator=PageNumberPaginator(size=4),
                    map=lambda t: ({"id": t["id"], "tag": tag} for tag in t["tags"]) if t["tags"] else None)
    with client(fake_api) as http:
        got = list(StreamReader(http).records(stream))
    assert got == [{"id": i, "tag": tag} for i in range(9) for tag in ["a", "b"][: i % 3]]


def test_templates_quote_path_values_and_keep_param_types() -> None:
    parent = {"id": "a/b c", "n": 7, "meta": {"org": "x"}}
    assert render("/g/{parent.id}/m", parent, in_path=True) == "/g/a%2Fb%20c/m"
    assert render("{parent.n}", parent) == 7
    assert render("org-{parent.meta.org}", parent) == "org-x"
    with pytest.raises(ProtocolError, match="no value at 'missing' for params.q"):
        render("{parent.missing}", parent, stream="assignments", key="params.q")


def test_the_run_token_stops_a_fan_out_sleeping_on_retry_after() -> None:
    with FakeApi() as api:
        serve(api)
        for g in GROUPS:
            api.route(f"/groups/{g['id']}/members", lambda _r: Reply(429, {}, {"Retry-After": "3600"}))
        token = CancelToken()
        http = HttpClient(api.base_url, settings=HttpSettings(max_retries=3), cancel=token)
        threading.Timer(0.5, token.cancel, kwargs={"message": "daemon stopping"}).start()
        t0 = time.monotonic()
        with http, pytest.raises(Cancelled, match="daemon stopping"):
            list(StreamReader(http).records(MEMBER_STREAM))
        assert time.monotonic() - t0 < 5


def test_a_hand_written_fan_out_stops_when_one_listing_fails_even_while_another_sleeps() -> None:
    """Tasks of a Fetcher run under its token: a fetch that names no token still stops with the fetcher."""
    from connectors._fanout import fan_out

    with FakeApi() as api:
        api.route("/a", lambda _r: Reply(429, {}, {"Retry-After": "3600"}))
        api.route("/b", lambda _r: Reply(400, {"message": "bad parent"}))
        # two clients: a 429 pauses the whole client it came to
        clients = {p: HttpClient(api.base_url, settings=HttpSettings(max_retries=3)) for p in ("/a", "/b")}
        t0 = time.monotonic()

        def pages(path: str):
            if path == "/b":
                time.sleep(0.3)  # /a is asleep on Retry-After by now
            yield [clients[path].get_json(path)]

        with pytest.raises(FatalError, match="bad parent"):
            list(fan_out(["/a", "/b"], pages, workers=2))
        assert time.monotonic() - t0 < 5
        for c in clients.values():
            c.close()
