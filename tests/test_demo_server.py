"""The demo HTTP API: routes, pagination styles, auth and errors (in-process and over loopback HTTP)."""

from __future__ import annotations

import json

import httpx
import pytest

from connectors.demo.org import Org, OrgSpec
from connectors.demo.server import DemoApi, decode_cursor, encode_cursor, make_server
from tests.servers._loopback import Serving

AUTH = "Bearer demo-token"


def get(api: DemoApi, target: str, auth: str | None = AUTH) -> tuple[int, dict[str, str], object]:
    status, headers, body = api.handle("GET", target, auth)
    return status, headers, json.loads(body)


@pytest.fixture
def api() -> DemoApi:
    return DemoApi(OrgSpec(users=230, groups=33, roles=5, workspaces=21, day=2))


@pytest.fixture
def live_server():
    """The API on a loopback port in a thread (stopped at the end)."""
    server = make_server("127.0.0.1", 0, DemoApi(OrgSpec(users=120), token="s3cret-token"))
    with Serving(server) as running:
        yield running.root_url


class TestAuth:
    @pytest.mark.parametrize("auth", [None, "", "Bearer ", "Bearer wrong", "Basic ZGVtbzpkZW1v", "demo-token"])
    def test_a_missing_or_wrong_token_gets_401(self, api, auth):
        status, headers, body = get(api, "/api/org", auth)
        assert status == 401 and body["error"] == "invalid_token"
        assert headers["WWW-Authenticate"].startswith("Bearer")

    def test_a_server_without_a_token_accepts_any_bearer_token(self):
        open_api = DemoApi(OrgSpec(users=5), token=None)
        assert get(open_api, "/api/org", "Bearer anything")[0] == 200
        assert get(open_api, "/api/org", None)[0] == 401


class TestErrors:
    def test_unknown_paths_are_404(self, api):
        for path in ("/api/nope", "/users", "/api/spec", "/"):
            status, _, body = get(api, path)
            assert status == 404 and body["error"] == "not_found"

    def test_writes_are_refused(self, api):
        status, _, body = api.handle("POST", "/api/users", AUTH)
        assert status == 405 and b"read-only" in body

    @pytest.mark.parametrize("target", ["/api/users?limit=0", "/api/users?limit=x", "/api/users?limit=10001",
                                        "/api/users?cursor=garbage!", "/api/groups?offset=-1",
                                        "/api/org?users=-5", "/api/org?churn=2", "/api/org?day=abc",
                                        "/api/roles?page=0",
                                        f"/api/memberships?cursor={encode_cursor('users', 3)}"])
    def test_bad_parameters_are_400(self, api, target):
        status, _, body = get(api, target)
        assert status == 400 and body["error"] in ("invalid_parameter", "invalid_cursor")


class TestEndpoints:
    def test_org_reports_name_day_and_headcount(self, api):
        status, _, body = get(api, "/api/org")
        assert status == 200
        assert body == {"id": "org-42", "name": Org(OrgSpec()).name, "domain": body["domain"], "day": 2,
                        "date": "2025-01-03", "users": Org(OrgSpec(users=230, day=2)).count_users()}

    def test_query_parameters_override_the_servers_organisation(self, api):
        body = get(api, "/api/org?users=50&day=0&seed=7")[2]
        assert body["users"] == 50 and body["day"] == 0 and body["id"] == "org-7"

    def test_users_page_with_an_opaque_cursor_until_it_is_null(self, api):
        ids, cursor, pages = [], None, 0
        while True:
            status, _, body = get(api, "/api/users?limit=40" + (f"&cursor={cursor}" if cursor else ""))
            assert status == 200 and len(body["data"]) <= 40
            ids += [u["id"] for u in body["data"]]
            pages += 1
            cursor = body["next_cursor"]
            if cursor is None:
                break
            assert not cursor.isdigit()
        org = Org(OrgSpec(users=230, groups=33, roles=5, workspaces=21, day=2))
        assert ids == [u["id"] for u in org.users_page(0, 10**6)[0]]
        assert pages >= 6

    def test_groups_page_by_offset_with_a_total(self, api):
        seen, offset = [], 0
        while True:
            body = get(api, f"/api/groups?offset={offset}&limit=10")[2]
            assert body["total"] == 33 and body["offset"] == offset
            seen += body["items"]
            offset += len(body["items"])
            if not body["items"] or offset >= body["total"]:
                break
        assert [g["id"] for g in seen] == [f"g{k}" for k in range(33)]

    def test_roles_page_with_a_link_header(self, api):
        status, headers, body = api.handle("GET", "/api/roles?per_page=2&day=2", AUTH, host="api.test:81")
        links = httpx.Response(200, headers={"Link": headers["Link"]}).links
        assert [r["id"] for r in json.loads(body)] == ["owner", "admin"]
        assert links["next"]["url"].startswith("http://api.test:81/api/roles?")
        assert "page=2" in links["next"]["url"] and "day=2" in links["next"]["url"]
        assert "page=3" in links["last"]["url"]
        _, headers, body = api.handle("GET", "/api/roles?per_page=2&page=3", AUTH)
        assert [r["id"] for r in json.loads(body)] == ["viewer"]
        assert 'rel="next"' not in headers["Link"]

    def test_workspaces_page_by_number_with_total_pages(self, api):
        body = get(api, "/api/workspaces?page=3&per_page=10")[2]
        assert body["total_pages"] == 3 and body["total"] == 21
        assert [w["id"] for w in body["workspaces"]] == ["w20"]
        assert get(api, "/api/workspaces?page=4&per_page=10")[2]["workspaces"] == []

    def test_licenses_are_one_list(self, api):
        assert [lic["id"] for lic in get(api, "/api/licenses")[2]["licenses"]] == [
            "lic-standard", "lic-pro", "lic-enterprise"]

    def test_memberships_are_assignment_shaped_and_partitionable(self, api):
        def fetch(extra: str) -> list[dict]:
            out, cursor = [], None
            while True:
                body = get(api, f"/api/memberships?limit=77{extra}" + (f"&cursor={cursor}" if cursor else ""))[2]
                out += body["data"]
                cursor = body["next_cursor"]
                if cursor is None:
                    return out

        whole = fetch("")
        assert set(whole[0]) == {"account_id", "entitlement_id", "resource_type", "resource_id"}
        parts = fetch("&user_to=100") + fetch("&user_from=100&user_to=180") + fetch("&user_from=180")
        assert parts == whole
        assert len(whole) > 500

    def test_cursors_round_trip_and_are_kind_checked(self):
        assert decode_cursor(encode_cursor("memberships", 12, 3), "memberships", 2) == (12, 3)


class TestOverHttp:
    def test_keep_alive_connection_serves_many_requests(self, live_server):
        with httpx.Client(base_url=live_server, headers={"Authorization": "Bearer s3cret-token"}) as client:
            responses = [client.get("/api/users", params={"limit": 50}) for _ in range(3)]
            body = client.get("/api/org").json()
        assert all(r.status_code == 200 and r.http_version == "HTTP/1.1" for r in responses)
        assert responses[0].headers["content-type"].startswith("application/json")
        assert int(responses[0].headers["content-length"]) == len(responses[0].content)
        assert len(responses[0].json()["data"]) == 50
        assert body["users"] == 120

    def test_wrong_token_over_http_is_401(self, live_server):
        r = httpx.get(live_server + "/api/org", headers={"Authorization": "Bearer demo-token"})
        assert r.status_code == 401
        assert httpx.post(live_server + "/api/org", headers={"Authorization": "Bearer s3cret-token"}
                          ).status_code == 405
