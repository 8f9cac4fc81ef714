"""The fake API helper itself: the shapes it serves are the real APIs' shapes, and it always stops."""

from __future__ import annotations

import socket
import time

import httpx
import pytest

from tests.servers.fake_api import SCIM_LIST, FakeApi, Fault, fake_api  # noqa: F401

RECORDS = [{"id": str(i)} for i in range(5)]


_client: httpx.Client | None = None


@pytest.fixture(autouse=True, scope="module")
def _shared_client():
    global _client
    with httpx.Client(trust_env=False) as _client:
        yield


def get(url: str, **kw: object) -> httpx.Response:
    assert _client is not None
    return _client.get(url, **kw)  # type: ignore[arg-type]


def test_link_style_is_githubs(fake_api: FakeApi) -> None:
    fake_api.serve_records("/repos", RECORDS, style="link")
    r = get(fake_api.url("/repos"), params={"per_page": 2, "page": 2})
    base = fake_api.url("/repos")
    assert r.json() == RECORDS[2:4]
    assert r.headers["Link"] == (f'<{base}?per_page=2&page=1>; rel="first", <{base}?per_page=2&page=1>; rel="prev", '
                                 f'<{base}?per_page=2&page=3>; rel="next", <{base}?per_page=2&page=3>; rel="last"')
    last = get(fake_api.url("/repos"), params={"per_page": 2, "page": 3})
    assert "next" not in last.links and last.json() == RECORDS[4:]


def test_scim_style_is_a_list_response(fake_api: FakeApi) -> None:
    fake_api.serve_records("/Users", RECORDS, style="scim")
    r = get(fake_api.url("/Users"), params={"startIndex": 2, "count": 2})
    assert r.headers["Content-Type"] == "application/scim+json"
    assert r.json() == {"schemas": [SCIM_LIST], "totalResults": 5, "itemsPerPage": 2, "startIndex": 2,
                        "Resources": RECORDS[1:3]}


@pytest.mark.parametrize("style, params, body", [
    ("offset", {"offset": 4, "limit": 2}, {"items": RECORDS[4:], "offset": 4, "limit": 2, "total": 5}),
    ("page", {"page": 3, "per_page": 2}, {"data": RECORDS[4:], "page": 3, "per_page": 2, "total": 5,
                                          "total_pages": 3}),
    ("next_url", {"page": 3, "page_size": 2}, {"count": 5, "next": None, "results": RECORDS[4:]}),
    ("cursor", {"limit": 5}, {"data": RECORDS, "next_cursor": None}),
])
def test_body_shapes(fake_api: FakeApi, style: str, params: dict, body: dict) -> None:
    fake_api.serve_records("/x", RECORDS, style=style)
    got = get(fake_api.url("/x"), params=params).json()
    assert {k: got[k] for k in body} == body


def test_requests_are_recorded(fake_api: FakeApi) -> None:
    fake_api.add_json("/me", {"id": 1})
    get(fake_api.url("/me"), params={"a": "1"}, headers={"Authorization": "Bearer x"})
    seen = fake_api.requests[0]
    assert (seen.method, seen.path, seen.query, seen.header("authorization")) == ("GET", "/me", {"a": "1"},
                                                                                  "Bearer x")
    assert seen.at <= time.monotonic()


def test_rate_limited_fault_headers(fake_api: FakeApi) -> None:
    fake_api.add_json("/me", {})
    fake_api.script([Fault.rate_limited(retry_after=2), Fault.rate_limited(retry_after=2, http_date=True)])
    first, second = get(fake_api.url("/me")), get(fake_api.url("/me"))
    assert first.status_code == 429 and first.headers["Retry-After"] == "2"
    assert first.headers["X-RateLimit-Remaining"] == "0" and int(first.headers["X-RateLimit-Reset"]) > time.time()
    assert second.headers["Retry-After"].endswith("GMT")


def test_script_and_share_pick_faults(fake_api: FakeApi) -> None:
    fake_api.add_json("/a", {})
    fake_api.add_json("/b", {})
    fake_api.script([Fault.error(500)], path="/b")
    assert get(fake_api.url("/a")).status_code == 200
    assert get(fake_api.url("/b")).status_code == 500
    fake_api.fault_share(Fault.error(502), 0.5, seed=3)
    codes = [get(fake_api.url("/a")).status_code for _ in range(40)]
    assert 5 < codes.count(502) < 35 and codes.count(200) == 40 - codes.count(502)


def test_stop_is_prompt_even_with_a_slow_response_in_flight() -> None:
    api = FakeApi().start()
    api.add_json("/me", {})
    api.fault_share(Fault.slow(10), 1.0)
    with pytest.raises(httpx.ReadTimeout):
        get(api.url("/me"), timeout=0.2)
    started = time.monotonic()
    port = api.port
    api.stop()
    assert time.monotonic() - started < 3
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        pass
