"""The demo organisation generator, without HTTP: determinism, daily change, integrity, O(page) cost."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
import tracemalloc
from collections import Counter
from pathlib import Path

import pytest

from connectors.demo.org import LICENSES, Org, OrgSpec, day_date, get_org, role_key

ROOT = Path(__file__).resolve().parents[1]


def snapshot(spec: OrgSpec) -> tuple[dict[str, dict], set[tuple[str, str, str, str]]]:
    """Every user and grant of the organisation on its day (small orgs only)."""
    org = Org(spec)
    users, grants = {}, set()
    for i in range(org.index_bound()):
        u = org.user(i)
        if u is not None:
            users[u["id"]] = u
            for ent, rtype, rid in org.memberships(i):
                grants.add((u["id"], ent, rtype, rid))
        else:
            assert org.slots(i) is None
    return users, grants


def records(chunks: list[str]) -> list[dict]:
    """The grants of a page of JSON chunks (a chunk may hold several)."""
    return json.loads("[" + ",".join(chunks) + "]")


def entitlement_keys(org: Org) -> set[tuple[str, str, str]]:
    s = org.spec
    keys = {("", "", lid) for lid, _, _ in LICENSES}
    keys |= {("", "", f"g{k}") for k in range(s.groups)}
    keys |= {("workspace", f"w{w}", role_key(r)) for w in range(s.workspaces) for r in range(s.roles)}
    return keys


class TestDeterminism:
    def test_same_seed_and_day_give_the_same_organisation(self):
        spec = OrgSpec(users=400, day=3)
        assert snapshot(spec) == snapshot(OrgSpec(users=400, day=3))

    def test_another_seed_gives_another_organisation(self):
        a, _ = snapshot(OrgSpec(users=200, seed=1))
        b, _ = snapshot(OrgSpec(users=200, seed=2))
        assert [u["display_name"] for u in a.values()] != [u["display_name"] for u in b.values()]

    def test_two_processes_with_different_hash_seeds_render_the_same_bytes(self):
        code = ("import hashlib; from connectors.demo.org import Org, OrgSpec; o = Org(OrgSpec(users=300, day=5)); "
                "p, _ = o.users_page_json(0, 1000); g, _ = o.memberships_page_json(0, 0, 10**6); "
                "print(hashlib.sha256(''.join(p + g).encode()).hexdigest())")
        digests = set()
        for hash_seed in ("0", "12345"):
            env = {**os.environ, "PYTHONHASHSEED": hash_seed, "PYTHONPATH": str(ROOT)}
            out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                                 timeout=60, check=True)
            digests.add(out.stdout.strip())
        org = Org(OrgSpec(users=300, day=5))
        p, _ = org.users_page_json(0, 1000)
        g, _ = org.memberships_page_json(0, 0, 10**6)
        digests.add(hashlib.sha256("".join(p + g).encode()).hexdigest())
        assert len(digests) == 1

    def test_get_org_caches_one_org_per_spec(self):
        assert get_org(OrgSpec(users=10)) is get_org(OrgSpec(users=10))


class TestShape:
    def test_day_zero_has_exactly_the_configured_users_and_about_the_configured_grants(self):
        users, grants = snapshot(OrgSpec(users=1000, memberships_per_user=6))
        assert len(users) == 1000
        assert 0.93 * 6000 <= len(grants) <= 1.07 * 6000

    def test_users_look_like_a_real_directory(self):
        users, _ = snapshot(OrgSpec(users=2000))
        kinds = Counter(u["type"] for u in users.values())
        assert 0.02 * 2000 < kinds["service"] < 0.09 * 2000
        suspended = sum(u["status"] == "suspended" for u in users.values())
        assert 0.005 * 2000 < suspended < 0.06 * 2000
        people = [u for u in users.values() if u["type"] == "user"]
        assert len({u["email"] for u in people}) == len(people)
        assert len({u["username"] for u in users.values()}) == len(users)
        for u in people:
            assert set(u["profile"]) == {"department", "title", "cost_center", "manager", "location",
                                         "employee_id"} - ({"manager"} if u["id"] == "u0" else set())
            assert u["display_name"] == f'{u["first_name"]} {u["last_name"]}'
        assert len({u["profile"]["department"] for u in people}) > 5
        assert any(u["last_login_at"] is None for u in users.values())
        assert sum(u["last_login_at"] is not None for u in users.values()) > 0.8 * len(users)
        service = next(u for u in users.values() if u["type"] == "service")
        assert service["email"] is None and service["username"].startswith("svc-")

    def test_managers_are_living_people_of_the_same_day_in_a_hierarchy(self):
        for day in (0, 40):
            users, _ = snapshot(OrgSpec(users=800, day=day, churn=0.05))
            managers = {u["id"]: u["profile"]["manager"] for u in users.values() if "manager" in u["profile"]}
            assert len(managers) == len(users) - 1  # all but the CEO
            for m in managers.values():
                assert m in users and users[m]["type"] == "user"
            for start in users:  # no cycles: every chain ends at the CEO
                seen, node = set(), start
                while node in managers:
                    assert node not in seen
                    seen.add(node)
                    node = managers[node]
                assert node == "u0"

    def test_every_grant_points_at_an_existing_entitlement_and_no_user_holds_one_twice(self):
        spec = OrgSpec(users=600, groups=15, roles=4, workspaces=5, memberships_per_user=9, day=7, churn=0.05)
        org = Org(spec)
        keys = entitlement_keys(org)
        seen = set()
        for i in range(org.index_bound()):
            grants = org.memberships(i)
            assert len(grants) == len(set(grants))
            for ent, rtype, rid in grants:
                assert (rtype, rid, ent) in keys
                seen.add((rtype, rid, ent))
        assert len(seen) > 0.9 * len(keys)  # grants spread over the entitlements

    def test_people_hold_one_licence_and_service_accounts_none(self):
        org = Org(OrgSpec(users=500, memberships_per_user=3))
        for i in range(500):
            licences = [e for e, _, _ in org.memberships(i) if e.startswith("lic-")]
            if org.is_service(i):
                assert licences == []
            elif org.slots(i):
                assert len(licences) == 1

    def test_a_tiny_universe_caps_the_grants_per_user(self):
        org = Org(OrgSpec(users=50, groups=2, roles=0, workspaces=0, memberships_per_user=20))
        for i in range(50):
            grants = org.memberships(i)
            assert len(grants) == len(set(grants)) <= 3

    def test_no_entitlements_and_no_memberships_are_fine(self):
        org = Org(OrgSpec(users=20, groups=0, roles=0, workspaces=0, memberships_per_user=0))
        assert all(org.memberships(i) == [] for i in range(20))
        page, nxt = org.memberships_page_json(0, 0, 100)
        assert page == [] and nxt is None

    def test_groups_nest_and_workspaces_form_a_tree(self):
        org = Org(OrgSpec(groups=200, workspaces=60))
        groups = [org.group(k) for k in range(200)]
        nested = [g for g in groups if g["parent_id"]]
        assert 5 <= len(nested) <= 40
        for g in nested:
            assert int(g["parent_id"][1:]) < int(g["id"][1:])  # parents come first: no cycles
        spaces = [org.workspace(k) for k in range(60)]
        children = [w for w in spaces if w["parent_id"]]
        assert 20 <= len(children) <= 50
        assert all(int(w["parent_id"][1:]) < int(w["id"][1:]) for w in children)

    def test_roles_beyond_the_named_ones_are_custom(self):
        assert Org.role(0)["id"] == "owner"
        assert Org.role(20)["id"] == role_key(20) == "custom-20"

    @pytest.mark.parametrize("bad", [{"users": -1}, {"churn": 1.5}, {"day": -2}, {"day": 10**6},
                                     {"memberships_per_user": -1}])
    def test_invalid_specs_are_refused(self, bad):
        with pytest.raises(ValueError):
            OrgSpec(**bad)


class TestDailyChange:
    def test_the_day_to_day_change_is_about_the_churn_and_has_every_kind_of_event(self):
        churn, n = 0.04, 3000
        kinds: Counter = Counter()
        for day in (10, 11, 12):
            u0, g0 = snapshot(OrgSpec(users=n, day=day, churn=churn))
            u1, g1 = snapshot(OrgSpec(users=n, day=day + 1, churn=churn))
            joined, left = u1.keys() - u0.keys(), u0.keys() - u1.keys()
            modified = {k for k in u0.keys() & u1.keys() if u0[k] != u1[k]}
            access = {a for a, *_ in g0 ^ g1} & (u0.keys() & u1.keys())
            changed = joined | left | modified | access
            assert 0.5 * churn < len(changed) / len(u0) < 1.6 * churn
            assert 0.9 * n < len(u1) < 1.1 * n
            kinds["join"] += len(joined)
            kinds["leave"] += len(left)
            kinds["access"] += len(access)
            for k in modified:
                a, b = u0[k], u1[k]
                kinds["rename"] += a["display_name"] != b["display_name"]
                kinds["suspend"] += a["status"] == "active" and b["status"] == "suspended"
                kinds["unsuspend"] += a["status"] == "suspended" and b["status"] == "active"
                kinds["login"] += a["last_login_at"] != b["last_login_at"]
                kinds["job"] += a["profile"].get("title") != b["profile"].get("title")
            assert all(g[0] in u1 for g in g1)  # grants of leavers are gone with them
        for kind in ("join", "leave", "access", "rename", "suspend", "unsuspend", "login", "job"):
            assert kinds[kind] > 0, kinds

    def test_a_joiner_keeps_its_id_and_appears_on_its_join_day(self):
        org = Org(OrgSpec(users=1000, day=30, churn=0.05))
        joiner = 1000 + 5
        day = org.join_day(joiner)
        assert day >= 1
        assert Org(OrgSpec(users=1000, day=day - 1, churn=0.05)).user(joiner) is None
        first = Org(OrgSpec(users=1000, day=day, churn=0.05)).user(joiner)
        assert first is not None and first["created_at"].startswith(day_date(day))
        assert Org(OrgSpec(users=1000, day=day + 3, churn=0.05)).user(joiner)["created_at"] == first["created_at"]

    def test_no_churn_means_no_change(self):
        assert snapshot(OrgSpec(users=300, day=0, churn=0)) == snapshot(OrgSpec(users=300, day=50, churn=0))

    def test_groups_and_workspaces_are_renamed_now_and_then(self):
        before = Org(OrgSpec(groups=100, workspaces=100, churn=0.05, day=0))
        after = Org(OrgSpec(groups=100, workspaces=100, churn=0.05, day=30))
        renamed = sum(before.group(k)["name"] != after.group(k)["name"] for k in range(100))
        renamed += sum(before.workspace(k)["name"] != after.workspace(k)["name"] for k in range(100))
        assert 0 < renamed < 120


class TestCost:
    def test_a_page_deep_in_a_huge_organisation_costs_only_the_page(self):
        spec = OrgSpec(users=50_000_000, groups=1000, workspaces=2000, roles=8, memberships_per_user=10)
        tracemalloc.start()
        try:
            started = time.perf_counter()
            org = Org(spec)
            users, nxt = org.users_page_json(40_000_000, 500)
            grants, cursor = org.memberships_page_json(45_000_000, 0, 2000)
            elapsed = time.perf_counter() - started
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert len(users) == 500 and nxt is not None
        assert len(records(grants)) == 2000 and cursor is not None
        assert elapsed < 5  # the seed tables (once per process) plus a few thousand records
        assert peak < 40 * 1024 * 1024  # seed tables and pre-rendered entitlements, no users

    def test_pages_chain_without_gaps_or_repeats(self):
        org = Org(OrgSpec(users=700, day=20, churn=0.05))
        ids, start = [], 0
        while start is not None:
            page, start = org.users_page(start, 64)
            ids += [u["id"] for u in page]
        grants, cursor = [], (0, 0)
        while cursor is not None:
            page, cursor = org.memberships_page_json(cursor[0], cursor[1], 97)
            assert len(records(page)) == 97 or cursor is None
            grants += records(page)
        whole = records(org.memberships_page_json(0, 0, 10**6)[0])
        assert grants == whole
        assert whole == [{"account_id": f"u{i}", "entitlement_id": e, "resource_type": t, "resource_id": r}
                         for i in range(org.index_bound()) for e, t, r in org.memberships(i)]
        assert len(ids) == len(set(ids)) == org.count_users()

    def test_long_runs_of_leavers_give_short_pages_not_slow_ones(self):
        org = Org(OrgSpec(users=1000, day=3000, churn=0.5))  # years of heavy churn: most indices gone
        assert org.index_bound() > 100 * 1000
        page, nxt = org.users_page(1000, 10)  # past the managers, who stay
        assert len(page) < 10 and nxt is not None  # stopped by the scan budget, not at the end
        ids, start = [], 0
        while start is not None:
            page, start = org.users_page(start, 500)
            ids += [u["id"] for u in page]
        assert len(ids) == len(set(ids)) == org.count_users()
        grants, cursor = [], (0, 0)
        while cursor is not None:
            page, cursor = org.memberships_page_json(cursor[0], cursor[1], 500)
            grants += records(page)
        assert len(grants) == sum(len(org.memberships(i)) for i in range(org.index_bound()))

    def test_user_ranges_partition_the_lists(self):
        org = Org(OrgSpec(users=500, day=9, churn=0.05))
        whole = records(org.memberships_page_json(0, 0, 10**6)[0])
        parts = []
        for lo, hi in ((0, 100), (100, 333), (333, None)):
            parts += records(org.memberships_page_json(lo, 0, 10**6, hi)[0])
        assert parts == whole
