"""Paginators end to end against the loopback fake API: every record exactly once, in order, and no loops."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from ingest.errors import ConfigError, PaginationLoopError, ProtocolError
from ingest.http import (
    PAGINATORS,
    CursorPaginator,
    HttpClient,
    HttpSettings,
    LinkHeaderPaginator,
    NextUrlPaginator,
    OffsetPaginator,
    PageNumberPaginator,
    Paginator,
    ScimPaginator,
    SinglePage,
    json_path,
    make_paginator,
)
from tests.servers.fake_api import STYLES, FakeApi, fake_api  # noqa: F401

RECORDS = [{"id": f"u{i:03d}", "userName": f"user{i}"} for i in range(123)]


def client(api: FakeApi, **settings: Any) -> HttpClient:
    return HttpClient(api.base_url, settings=HttpSettings(backoff_initial=0.01, backoff_max=0.05, **settings),
                      connector="test")


def pager_for(style: str, size: int, *, totals: bool = True) -> tuple[Paginator, str | None, dict]:
    """The client-side configuration that matches each fake-API style."""
    if style == "offset":
        return OffsetPaginator(limit=size, total_path="total" if totals else None), "items", {}
    if style == "page":
        return (PageNumberPaginator(size=size, total_pages_path="total_pages" if totals else None), "data", {})
    if style == "cursor":
        return CursorPaginator("next_cursor", "cursor"), "data", {"limit": size}
    if style == "next_url":
        return NextUrlPaginator("next"), "results", {"page_size": size}
    if style == "link":
        return LinkHeaderPaginator(), None, {"per_page": size}
    if style == "scim":
        return ScimPaginator(count=size), "Resources", {}
    raise AssertionError(style)


class TestEveryStyle:
    @pytest.mark.parametrize("style", STYLES)
    def test_every_record_exactly_once_in_order(self, fake_api: FakeApi, style: str) -> None:
        """Each pagination style walks the whole list once, in order, and stops by itself."""
        fake_api.serve_records("/users", RECORDS, style=style)
        paginator, selector, params = pager_for(style, 20)
        with client(fake_api) as http:
            pages = list(http.paginate("/users", paginator=paginator, selector=selector, params=params))
        assert [r for page in pages for r in page] == RECORDS
        assert [len(p) for p in pages] == [20] * 6 + [3]
        assert len(fake_api.requests) == 7

    @pytest.mark.parametrize("style", STYLES)
    def test_server_capping_the_page_size_loses_nothing(self, fake_api: FakeApi, style: str) -> None:
        """A server that silently serves fewer records than asked (ask 50, get 20) is still read in full."""
        fake_api.serve_records("/users", RECORDS, style=style, max_page_size=20, total=False)
        paginator, selector, params = pager_for(style, 50, totals=False)
        with client(fake_api) as http:
            assert list(http.records("/users", paginator=paginator, selector=selector, params=params)) == RECORDS

    @pytest.mark.parametrize("style", ["offset", "page"])
    def test_page_size_paging_without_totals_stops_on_a_short_or_empty_page(self, fake_api: FakeApi,
                                                                           style: str) -> None:
        """Without totals, offset and page-number paging end on an empty page or a page shorter than before."""
        fake_api.serve_records("/users", RECORDS, style=style, total=False)
        paginator, selector, params = pager_for(style, 20, totals=False)
        with client(fake_api) as http:
            assert list(http.records("/users", paginator=paginator, selector=selector)) == RECORDS
        assert len(fake_api.requests) == 7  # 6 full pages and a short one; no extra request
        fake_api.requests.clear()
        fake_api.serve_records("/few", RECORDS[:7], style=style, total=False)
        with client(fake_api) as http:
            assert list(http.records("/few", paginator=paginator, selector=selector)) == RECORDS[:7]
        assert len(fake_api.requests) == 2  # a first short page may be a cap: one more request confirms

    def test_relative_next_links_resolve_against_the_page_they_came_in(self, fake_api: FakeApi) -> None:
        """``"next": "/users?page=2"`` is resolved against the current page's URL."""
        fake_api.serve_records("/users", RECORDS, style="next_url", relative_next=True, page_size=40)
        with client(fake_api) as http:
            assert list(http.records("/users", paginator=NextUrlPaginator(), selector="results")) == RECORDS

    def test_link_header_keeps_the_query_of_the_next_link(self, fake_api: FakeApi) -> None:
        """The next request is the Link URL as given; parameters of the first request ride inside it."""
        fake_api.serve_records("/repos", RECORDS, style="link")
        with client(fake_api) as http:
            got = list(http.records("/repos", paginator=LinkHeaderPaginator(), params={"per_page": 50, "q": "x"}))
        assert got == RECORDS
        assert [r.query for r in fake_api.requests] == [
            {"per_page": "50", "q": "x"},
            {"per_page": "50", "q": "x", "page": "2"},
            {"per_page": "50", "q": "x", "page": "3"},
        ]

    def test_one_paginator_serves_many_streams(self, fake_api: FakeApi) -> None:
        """``paginate`` uses a fresh copy of the paginator, so a configured one can be reused."""
        fake_api.serve_records("/a", RECORDS, style="cursor")
        fake_api.serve_records("/b", RECORDS[:30], style="cursor")
        pager = CursorPaginator()
        with client(fake_api) as http:
            assert list(http.records("/a", paginator=pager, selector="data", params={"limit": 25})) == RECORDS
            assert list(http.records("/b", paginator=pager, selector="data", params={"limit": 25})) == RECORDS[:30]
            assert list(http.records("/a", paginator=pager, selector="data", params={"limit": 25})) == RECORDS

    def test_single_page_makes_one_request(self, fake_api: FakeApi) -> None:
        fake_api.add_json("/me", {"items": [{"id": 1}]})
        with client(fake_api) as http:
            assert list(http.paginate("/me", paginator=SinglePage(), selector="items")) == [[{"id": 1}]]
        assert len(fake_api.requests) == 1

    def test_a_selector_that_is_not_a_list_is_a_protocol_error(self, fake_api: FakeApi) -> None:
        fake_api.add_json("/me", {"items": {"id": 1}})
        with client(fake_api) as http, pytest.raises(ProtocolError, match="expected a list at 'items'"):
            list(http.records("/me", selector="items"))


class TestLoops:
    def test_a_repeated_cursor_raises_instead_of_looping(self, fake_api: FakeApi) -> None:
        """A server that hands back the same cursor twice ends in PaginationLoopError, not an endless loop."""
        fake_api.serve_records("/users", RECORDS, style="cursor", repeat_cursor=True)
        with client(fake_api) as http, pytest.raises(PaginationLoopError, match="already gave") as e:
            list(http.records("/users", paginator=CursorPaginator(), selector="data", params={"limit": 20}))
        assert e.value.connector == "test"
        assert e.value.request.startswith(f"GET {fake_api.base_url}/users?limit=20&cursor=")
        assert len(fake_api.requests) == 2  # page 2 repeats the cursor page 1 gave: stop before asking again

    def test_a_next_link_pointing_back_raises(self, fake_api: FakeApi) -> None:
        fake_api.add_json("/users", {"results": [{"id": 1}], "next": "/users"})
        with client(fake_api) as http, pytest.raises(PaginationLoopError):
            list(http.records("/users", paginator=NextUrlPaginator(), selector="results"))
        assert len(fake_api.requests) == 1

    def test_scim_provider_ignoring_start_index_fails_instead_of_looping_or_truncating(self, fake_api: FakeApi) -> None:
        """A SCIM provider that serves page one for every startIndex ends the stream after one repeat,
        and because totalResults says items are missing, it fails: no loop, no silently short snapshot."""
        fake_api.serve_records("/Users", RECORDS, style="scim", ignore_start_index=True)
        got = []
        with client(fake_api) as http, pytest.raises(ProtocolError, match="ignore startIndex"):
            for record in http.records("/Users", paginator=ScimPaginator(count=20), selector="Resources",
                                       concurrency=1):  # pages fetched ahead: tests/test_http_concurrent.py
                got.append(record)
        assert got == RECORDS[:20]
        assert len(fake_api.requests) == 2

    def test_scim_stops_at_total_results_even_with_short_pages(self, fake_api: FakeApi) -> None:
        """``startIndex`` advances by what arrived, and ``totalResults`` ends the stream."""
        fake_api.serve_records("/Users", RECORDS, style="scim", max_page_size=7)
        with client(fake_api) as http:
            assert list(http.records("/Users", paginator=ScimPaginator(count=100), selector="Resources")) == RECORDS
        assert [int(r.query["startIndex"]) for r in fake_api.requests][:3] == [1, 8, 15]
        assert len(fake_api.requests) == 18  # ceil(123 / 7); no trailing empty page

    def test_a_next_link_to_another_host_is_not_followed(self, fake_api: FakeApi) -> None:
        """Credentials never follow a next-page link to a host the connector did not name."""
        other = f"http://localhost:{fake_api.port}/users?page=2"
        fake_api.add_json("/users", {"results": [{"id": 1}], "next": other})
        with client(fake_api) as http, pytest.raises(ProtocolError, match="another origin"):
            list(http.records("/users", paginator=NextUrlPaginator(), selector="results"))
        assert len(fake_api.requests) == 1


class TestPaginatorUnits:
    def test_make_paginator_builds_by_type_name(self) -> None:
        pager = make_paginator({"type": "cursor", "cursor_path": "meta.next", "cursor_param": "after"})
        assert isinstance(pager, CursorPaginator)
        assert (pager.cursor_path, pager.cursor_param) == ("meta.next", "after")
        assert set(PAGINATORS) == {"single_page", "offset", "page_number", "cursor", "next_url", "link_header", "scim"}

    def test_make_paginator_lists_the_known_names(self) -> None:
        with pytest.raises(ConfigError, match="unknown paginator 'pages'; known: cursor, link_header"):
            make_paginator({"type": "pages"})

    def test_json_path(self) -> None:
        data = {"meta": {"next": "x"}, "@odata.nextLink": "y", "list": [{"a": 1}]}
        assert json_path(data, "meta.next") == "x"
        assert json_path(data, "@odata.nextLink") == "y"
        assert json_path(data, "list.0.a") == 1
        assert json_path(data, "meta.missing.deeper") is None
        assert json_path(data, None) is data

    def test_cursor_that_is_an_object_is_a_protocol_error(self) -> None:
        pager = CursorPaginator().fresh()
        response = httpx.Response(200, request=httpx.Request("GET", "http://h/x"))
        with pytest.raises(ProtocolError, match="not a string"):
            pager.update_state(response, {"next_cursor": {"a": 1}}, [])

    def test_empty_cursor_ends(self) -> None:
        pager = CursorPaginator().fresh()
        response = httpx.Response(200, request=httpx.Request("GET", "http://h/x"))
        pager.update_state(response, {"next_cursor": ""}, [1])
        assert not pager.has_next


def test_the_end_of_listing_check_counts_distinct_records_exactly_in_8_bytes_each():
    import random
    import sys

    from ingest.http._client import DistinctCount, _record_hash

    rng = random.Random(7)
    ids = [f"user-{rng.randrange(200_000)}" for _ in range(300_000)]   # many repeats, spread over every bucket
    count = DistinctCount()
    count.update(_record_hash("id", {"id": i}) for i in ids)
    count.update([_record_hash(None, {"no": "id"}), _record_hash(None, {"no": "id"})])   # whole-record identity
    assert len(count) == len(set(ids)) + 1
    held = sum(sys.getsizeof(b) for b in count._buckets)
    assert held < 12 * len(ids)   # a set of the same hashes holds ~70 bytes a record
