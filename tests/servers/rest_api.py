"""A fake "Acme" JSON API for the ``rest`` connector tests: one organisation, a different pagination on
every endpoint, served by :class:`~tests.servers.fake_api.FakeApi` (bearer token required)::

    /users                     cursor in the body   {"data": [...], "next_cursor": "..." | null}
    /groups                    RFC 8288 Link header (a JSON array per page)
    /groups/{id}/members       offset + total       {"items": [...], "total": T}
    /groups/{id}/subgroups     single page          {"groups": [...]}
    /apps                      page number          {"data": [...], "total_pages": P}

``AcmeOrg`` is pure data; ``serve(api, org)`` (re)publishes it, so a test changes the organisation
between two runs by editing it (``next_day``) and serving again. ``CONFIG`` is the ``rest`` block of
``examples/rest.yaml``, which a user runs against ``python -m tests.servers.rest_api --port 8089``.
"""

from __future__ import annotations

import argparse
import copy
import signal
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.servers.fake_api import FakeApi, Reply

TOKEN = "acme-rest-token-4c1d"


@dataclass
class AcmeOrg:
    users: list[dict[str, Any]] = field(default_factory=list)
    groups: list[dict[str, Any]] = field(default_factory=list)
    members: dict[str, list[str]] = field(default_factory=dict)  # group id -> user ids
    subgroups: dict[str, list[str]] = field(default_factory=dict)  # group id -> group ids
    apps: list[dict[str, Any]] = field(default_factory=list)

    def copy(self) -> AcmeOrg:
        return copy.deepcopy(self)


def make_org(n_users: int = 130, n_groups: int = 9) -> AcmeOrg:
    users = [{"id": 1000 + i, "login": f"user{i}",
              "profile": {"first": f"First{i}", "last": f"Last{i}", "email": f"user{i}@acme.example"},
              "state": "locked" if i % 17 == 0 else "active", "last_login": "2026-11-30T08:00:00Z"}
             for i in range(n_users)]
    groups = [{"id": f"grp-{g}", "name": f"Team {g}", "kind": "team"} for g in range(n_groups)]
    members = {g["id"]: [str(1000 + (k * 7 + j) % n_users) for j in range(k * 11)] for k, g in enumerate(groups)}
    members = {gid: sorted(set(ids), key=ids.index) for gid, ids in members.items()}
    subgroups = {"grp-0": ["grp-1", "grp-2"], "grp-3": ["grp-4"]}
    apps = [{"app_id": f"app{a}", "title": f"App {a}"} for a in range(23)]
    return AcmeOrg(users, groups, members, subgroups, apps)


def serve(api: FakeApi, org: AcmeOrg) -> None:
    api.require_bearer(TOKEN)
    api.serve_records("/users", org.users, style="cursor", page_size=25)
    api.serve_records("/groups", org.groups, style="link", page_size=4)
    for g in org.groups:
        api.serve_records(f"/groups/{g['id']}/members", [{"user_id": u} for u in org.members.get(g["id"], [])],
                          style="offset", page_size=10)
        subs = [{"id": s} for s in org.subgroups.get(g["id"], [])]
        api.route(f"/groups/{g['id']}/subgroups", lambda _r, subs=subs: Reply(200, {"groups": subs}))
    api.serve_records("/apps", org.apps, style="page", page_size=10)


EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "rest.yaml"


def example_settings() -> dict[str, Any]:
    """``examples/rest.yaml``'s settings without its ``base_url``: the tests run the README's example."""
    settings = yaml.safe_load(EXAMPLE.read_text())["connectors"]["acme"]["settings"]
    return {k: v for k, v in settings.items() if k != "base_url"}


CONFIG: dict[str, Any] = example_settings()


def next_day(org: AcmeOrg) -> AcmeOrg:
    """The organisation a day later: a user leaves, one joins, one is locked, a group renamed, a membership
    changes, an app removed."""
    day2 = org.copy()
    del day2.users[5]
    day2.users.append({"id": 9999, "login": "newbie", "profile": {"first": "New", "last": "Bie",
                                                                 "email": "newbie@acme.example"}, "state": "active"})
    day2.users[7]["state"] = "locked"
    day2.groups[2]["name"] = "Team Two (renamed)"
    day2.members["grp-1"] = day2.members["grp-1"][1:] + ["9999"]
    day2.apps.pop()
    return day2


def main(argv: list[str] | None = None) -> None:
    """``python -m tests.servers.rest_api --port 8089 [--day 2]``: the Acme demo API of examples/rest.yaml on
    127.0.0.1 until Ctrl-C (or ``--seconds``)."""
    ap = argparse.ArgumentParser(prog="python -m tests.servers.rest_api", description=main.__doc__)
    ap.add_argument("--port", type=int, default=8089, help="port on 127.0.0.1 (0: any free port)")
    ap.add_argument("--day", type=int, choices=(1, 2), default=1, help="2 serves the next day's changes")
    ap.add_argument("--seconds", type=float, default=None, help="stop after this many seconds")
    args = ap.parse_args(argv)
    org = make_org()
    with FakeApi(port=args.port) as api:
        serve(api, next_day(org) if args.day == 2 else org)
        print(f"Acme demo API (day {args.day}) on {api.base_url}, bearer token {TOKEN}; Ctrl-C stops it",
              flush=True)
        wait_for_stop(args.seconds)


def wait_for_stop(seconds: float | None) -> None:
    """Block until Ctrl-C, SIGTERM or ``seconds`` (a demo server a user starts by hand)."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        stop.wait(seconds)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
