"""The demo connector: mapping (pure), the day counter, and end to end over HTTP against its own server."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from pydantic import ValidationError

from connectors.demo import DayCounter, DemoAuth, DemoConnector, DemoSettings
from connectors.demo._parallel import interleave_pages
from connectors.demo._process import DemoServerProcess
from connectors.demo.mapping import (
    map_group,
    map_license,
    map_nested_group,
    map_user,
    map_workspace,
    map_workspace_role,
)
from connectors.demo.org import Org, OrgSpec
from connectors.demo.server import DemoApi, make_server
from ingest.connector import ConnectorContext
from ingest.errors import AuthError, ConfigError, FatalError
from ingest.records import (
    Account,
    Assignment,
    CustomAttribute,
    Entitlement,
    NestedEntitlement,
    Resource,
)
from ingest.registry import get_connector_class
from tests.servers._loopback import Serving

ROOT = Path(__file__).resolve().parents[1]
MODELS = {"list_accounts": Account, "list_resources": Resource, "list_entitlements": Entitlement}


def connector(tmp_path: Path, name: str = "demo", auth: dict | None = None, **settings) -> DemoConnector:
    settings.setdefault("state_dir", str(tmp_path / "state"))
    ctx = ConnectorContext(name, DemoSettings(**settings), DemoAuth(**(auth or {})))
    return DemoConnector(ctx)


def gone(pid: int, within: float = 10.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


def collect(c: DemoConnector) -> dict[str, list]:
    """Every stream validated into its record model (assignments and nested pairs split)."""
    out: dict[str, list] = {"account": [], "resource": [], "entitlement": [], "assignment": [], "nested": []}
    for cap, items in c.streams():
        for item in items:
            if cap == "find_entitlement_associations":
                if "member_entitlement_id" in item:
                    out["nested"].append(NestedEntitlement.model_validate(item))
                else:
                    out["assignment"].append(Assignment.model_validate(item))
            else:
                out[MODELS[cap].entity].append(MODELS[cap].model_validate(item))
    return out


@pytest.fixture
def live_api():
    """A demo API in a thread with its own token (for ``base_url`` mode)."""
    server = make_server("127.0.0.1", 0, DemoApi(OrgSpec(), token="other-token"))
    with Serving(server) as running:
        yield running.root_url


class TestDescription:
    def test_registered_as_demo_with_its_capabilities(self):
        assert get_connector_class("demo") is DemoConnector
        info = DemoConnector.info()
        assert info["app_id"] == "demo"
        assert set(info["capabilities"]) >= {"validate_credentials", "list_accounts", "list_resources",
                                             "list_entitlements", "find_entitlement_associations",
                                             "list_custom_attributes_schema"}
        props = info["request_settings_schema"]["properties"]
        assert {"users", "groups", "roles", "workspaces", "memberships_per_user", "churn", "seed", "day",
                "base_url", "page_size", "timeout", "max_retries"} <= set(props)
        assert info["authentication_schema"]["properties"]["api_token"]["writeOnly"] is True
        assert {e["type_id"] for e in info["entitlement_types"]} == {"group", "role", "license"}

    def test_settings_refuse_unknown_keys_and_bad_values(self):
        for bad in ({"userz": 5}, {"churn": 2}, {"day": -1}, {"page_size": 0}, {"page_size": 20_000}):
            with pytest.raises(ValidationError):
                DemoSettings(**bad)

    def test_the_token_is_a_secret_with_a_default(self):
        auth = DemoAuth()
        assert auth.api_token.get_secret_value() == "demo-token"
        assert "demo-token" not in repr(auth)

    def test_custom_attributes_schema_lists_the_profile_fields(self, tmp_path):
        names = [a.name for a in connector(tmp_path).list_custom_attributes_schema()]
        assert all(isinstance(a, CustomAttribute) for a in connector(tmp_path).list_custom_attributes_schema())
        assert names == ["department", "title", "cost_center", "manager", "location", "employee_id"]


class TestMapping:
    def test_a_person_maps_to_an_account_with_custom_attributes(self):
        org = Org(OrgSpec(users=50))
        raw = next(u for u in (org.user(i) for i in range(1, 50)) if u["type"] == "user")
        acc = Account.model_validate(map_user(raw))
        assert acc.account_id == raw["id"] and acc.email == raw["email"]
        assert acc.given_name == raw["first_name"] and acc.family_name == raw["last_name"]
        assert acc.account_type.value == "user"
        assert acc.custom_attributes == raw["profile"]
        assert set(acc.custom_attributes) == {"department", "title", "cost_center", "manager", "location",
                                              "employee_id"}
        assert acc.extra == {"created_at": raw["created_at"]}

    def test_a_service_account_and_a_suspended_user(self):
        raw = {"id": "u9", "type": "service", "username": "svc-ci-9", "email": None, "first_name": None,
               "display_name": "ci service account", "status": "suspended", "created_at": "2024-01-01T00:00:00Z",
               "last_login_at": "2025-01-02T03:04:05Z",
               "profile": {"department": "IT", "cost_center": "CC-1900"}}
        acc = Account.model_validate(map_user(raw))
        assert acc.account_type.value == "service" and acc.status.value == "SUSPENDED"
        assert acc.email is None and acc.given_name is None
        assert acc.custom_attributes == {"department": "IT", "cost_center": "CC-1900"}
        assert acc.last_activity_at.isoformat() == "2025-01-02T03:04:05+00:00"

    def test_an_unknown_status_is_not_swallowed(self):
        with pytest.raises(ValidationError):
            Account.model_validate(map_user({"id": "u1", "status": "weird"}))

    def test_workspaces_groups_roles_and_licences(self):
        org = Org(OrgSpec(workspaces=30, groups=60))
        child = next(org.workspace(k) for k in range(30) if org.workspace(k)["parent_id"])
        res = Resource.model_validate(map_workspace(child))
        assert (res.resource_type, res.parent_resource_type, res.parent_resource_id) == (
            "workspace", "workspace", child["parent_id"])
        top = Resource.model_validate(map_workspace(org.workspace(0)))
        assert top.parent_resource_type is None and top.parent_resource_id is None
        group = Entitlement.model_validate(map_group(org.group(3)))
        assert (group.entitlement_type, group.resource_id, group.entitlement_id) == ("group", "", "g3")
        nested = next(g for g in (org.group(k) for k in range(60)) if g["parent_id"])
        pair = NestedEntitlement.model_validate(map_nested_group(nested))
        assert (pair.entitlement_id, pair.member_entitlement_id) == (nested["parent_id"], nested["id"])
        assert map_nested_group(org.group(0)) is None
        role = Entitlement.model_validate(map_workspace_role(org.workspace(4), org.role(1)))
        assert (role.resource_type, role.resource_id, role.entitlement_id, role.label) == (
            "workspace", "w4", "admin", "Admin")
        lic = Entitlement.model_validate(map_license(org.licenses()[1]))
        assert (lic.entitlement_type, lic.entitlement_id) == ("license", "lic-pro")


class TestEndToEnd:
    def test_own_server_yields_valid_records_with_referential_integrity(self, tmp_path):
        c = connector(tmp_path, users=300, page_size=50, day=4, churn=0.05, groups=30, workspaces=40, roles=5)
        try:
            assert len(c.partitions()) == 3
            got = collect(c)
            pid = c._server.pid
            info = c.validate_credentials()
            requests = c.ctx.stats.requests
        finally:
            c.close()
        assert gone(pid)
        org = Org(OrgSpec(users=300, day=4, churn=0.05, groups=30, workspaces=40, roles=5))
        accounts = {a.account_id: a for a in got["account"]}
        assert len(accounts) == len(got["account"]) == org.count_users() == info["users"]
        assert info == {"organisation": org.name, "users": len(accounts), "day": 4, "date": "2025-01-05"}
        resources = {(r.resource_type, r.resource_id) for r in got["resource"]}
        assert len(resources) == 40
        assert all((r.parent_resource_type, r.parent_resource_id) in resources
                   for r in got["resource"] if r.parent_resource_id)
        entitlements = {(e.resource_type, e.resource_id, e.entitlement_id) for e in got["entitlement"]}
        assert len(entitlements) == len(got["entitlement"]) == 3 + 30 + 40 * 5
        assert all(("", "", n.entitlement_id) in entitlements and ("", "", n.member_entitlement_id) in entitlements
                   for n in got["nested"])
        assert got["nested"]
        grants = {(a.account_id, a.entitlement_id, a.resource_type, a.resource_id) for a in got["assignment"]}
        assert len(grants) == len(got["assignment"]) > 300
        for account_id, ent, rtype, rid in grants:
            assert account_id in accounts
            assert (rtype, rid, ent) in entitlements
        for acc in accounts.values():
            manager = acc.custom_attributes.get("manager")
            assert manager is None or manager in accounts
        assert requests > 10  # several pages of every list

    def test_the_same_day_gives_the_same_records_and_the_next_day_a_small_diff(self, tmp_path):
        def run(day: int) -> dict[str, set]:
            c = connector(tmp_path, users=400, page_size=100, day=day, churn=0.05)
            try:
                got = collect(c)
            finally:
                c.close()
            return {k: {r.model_dump_json() for r in v} for k, v in got.items()}

        first, again, tomorrow = run(6), run(6), run(7)
        assert first == again
        for entity in ("account", "assignment"):
            changed = first[entity] ^ tomorrow[entity]
            assert 0 < len(changed) < 0.2 * len(first[entity])

    def test_close_mid_stream_stops_the_server(self, tmp_path):
        c = connector(tmp_path, users=2000, page_size=100, day=0)
        items = c.list_accounts()
        first = next(iter(items))
        pid = c._server.pid
        items.close()
        c.close()
        assert first["account_id"] == "u0" or first["account_id"].startswith("u")
        assert gone(pid)
        c.close()  # idempotent

    def test_check_with_a_wrong_token_is_an_auth_error(self, tmp_path, live_api):
        c = connector(tmp_path, base_url=live_api, day=0, auth={"api_token": "demo-token"})
        try:
            with pytest.raises(AuthError):
                c.validate_credentials()
        finally:
            c.close()

    def test_an_existing_server_is_paged_without_starting_one(self, tmp_path, live_api):
        c = connector(tmp_path, base_url=live_api, users=120, day=1, page_size=40, auth={"api_token": "other-token"})
        try:
            accounts = [Account.model_validate(a) for a in c.list_accounts()]
            assert c._server is None
            assert c.validate_credentials()["users"] == len(accounts)
        finally:
            c.close()
        assert len(accounts) == Org(OrgSpec(users=120, day=1)).count_users()


class TestDays:
    def test_each_run_advances_one_day_and_check_does_not(self, tmp_path):
        days = []
        for _ in range(3):
            c = connector(tmp_path, users=50)
            try:
                peeked = c.validate_credentials()["day"]
                list(c.list_resources())
                days.append((peeked, c.day))
                assert c.validate_credentials()["day"] == c.day
            finally:
                c.close()
        assert days == [(0, 0), (1, 1), (2, 2)]
        assert (tmp_path / "state" / "demo-demo.day").read_text().strip() == "2"

    def test_a_pinned_day_leaves_the_counter_alone(self, tmp_path):
        c = connector(tmp_path, users=20, day=9)
        try:
            assert c.day == 9
        finally:
            c.close()
        assert not (tmp_path / "state").exists()

    def test_counters_are_per_connector_name(self, tmp_path):
        a, b = connector(tmp_path, name="east/1"), connector(tmp_path, name="west")
        assert (a.day, b.day) == (0, 0)
        assert a.counter.path.name == "demo-east_1.day"

    def test_a_corrupt_counter_is_a_config_error(self, tmp_path):
        counter = DayCounter(tmp_path / "x.day")
        counter.path.write_text("yesterday")
        with pytest.raises(ConfigError, match="delete it"):
            counter.advance()

    def test_the_counter_uses_the_engine_state_dir_when_there_is_one(self, tmp_path):
        ctx = ConnectorContext("demo", DemoSettings(users=5), DemoAuth())
        ctx.state_dir = str(tmp_path / "engine")  # what the runner may provide
        assert DemoConnector(ctx).counter.path == tmp_path / "engine" / "demo-demo.day"


class TestServerProcess:
    def test_the_server_exits_when_the_process_that_started_it_dies(self, tmp_path):
        code = ("import sys, time; from connectors.demo._process import DemoServerProcess; "
                "s = DemoServerProcess('t0ken'); s.start(); print(s.pid, flush=True); time.sleep(60)")
        parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                                  env={**os.environ, "PYTHONPATH": str(ROOT)})
        try:
            pid = int(parent.stdout.readline())
            assert not gone(pid, within=0.2)
        finally:
            parent.send_signal(signal.SIGKILL)
            parent.wait(timeout=10)
            parent.stdout.close()
        assert gone(pid)

    def test_a_server_that_cannot_start_is_a_clear_error(self, monkeypatch):
        monkeypatch.setattr(sys, "executable", "/bin/false")
        server = DemoServerProcess("t0ken", start_timeout=10)
        with pytest.raises(FatalError, match="did not start"):
            server.start()
        assert server.proc is None


class TestInterleave:
    def test_pages_of_all_sources_arrive_once(self):
        sources = [lambda n=n: iter([[n, i] for i in range(5)]) for n in range(3)]
        pages = list(interleave_pages(sources))
        assert sorted(map(tuple, pages)) == [(n, i) for n in range(3) for i in range(5)]

    def test_an_error_in_one_source_is_raised_and_stops_the_others(self):
        def boom():
            yield [1]
            raise FatalError("source broke")

        def endless():
            while True:
                yield [0]

        before = threading.active_count()
        with pytest.raises(FatalError, match="source broke"):
            list(interleave_pages([endless, boom]))
        deadline = time.monotonic() + 5
        while threading.active_count() > before and time.monotonic() < deadline:
            time.sleep(0.02)
        assert threading.active_count() == before

    def test_closing_early_stops_the_workers(self):
        closed = threading.Event()

        def endless():
            try:
                while True:
                    yield [0]
            finally:
                closed.set()

        pages = interleave_pages([endless, endless])
        next(pages)
        pages.close()
        assert closed.wait(5)
