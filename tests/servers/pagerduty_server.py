"""A loopback fake of PagerDuty's REST API v2 (the read endpoints the pagerduty connector uses),
after PagerDuty's API reference:

    GET /users, /teams, /teams/{id}/members, /escalation_policies, /schedules

Requests need ``Authorization: Token token=<key>`` and ``Accept:
application/vnd.pagerduty+json;version=2``. Classic paging: ``offset`` and ``limit`` (default 25,
capped at 100), answers ``{"<collection>": [...], "offset", "limit", "more", "total": null}``;
``offset + limit`` above 10,000 is a 400 (``Offset must be less than 10001``, code 2001) as
PagerDuty does. Errors are ``{"error": {"message", "code", "errors"}}``: 401 code 2006, 429 code 2020
("Rate Limit Exceeded"), with ``ratelimit-limit/-remaining/-reset`` when ``rate_headers`` is on and
without them otherwise (PagerDuty sends both kinds).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from tests.servers._vendor import Reply, SeenRequest, VendorServer

__all__ = ["PagerDutyAccount", "PagerDutyServer", "make_account"]

ACCEPT = "application/vnd.pagerduty+json;version=2"


@dataclass
class PagerDutyAccount:
    users: dict[str, dict[str, Any]] = field(default_factory=dict)      # id -> {name, email, role}
    teams: dict[str, dict[str, Any]] = field(default_factory=dict)      # id -> {name, parent, members: {uid: role}}
    policies: dict[str, dict[str, Any]] = field(default_factory=dict)   # id -> {name, rules: [[(type, id)]]}
    schedules: dict[str, dict[str, Any]] = field(default_factory=dict)  # id -> {name, users: [uid]}
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)


def make_account(n_users: int = 230, n_teams: int = 6) -> PagerDutyAccount:
    acc = PagerDutyAccount()
    roles = ("user", "admin", "limited_user", "observer", "read_only_user", "restricted_access")
    for i in range(n_users):
        acc.users[f"PU{i:05d}"] = {"name": f"Person {i}", "email": f"p{i}@example.com",
                                   "role": "owner" if i == 0 else roles[i % len(roles)]}
    ids = sorted(acc.users)
    for t in range(n_teams):
        tid = f"PT{t:03d}"
        acc.teams[tid] = {"name": f"Team {t}", "parent": "PT000" if t in (1, 2) else None,
                          "members": {ids[(t * 17 + k) % n_users]: ("manager", "responder", "observer")[k % 3]
                                      for k in range(25 + t * 20)}}
    for s in range(4):
        acc.schedules[f"PS{s:03d}"] = {"name": f"Rotation {s}", "users": [ids[(s * 11 + k) % n_users] for k in range(5)]}
    for p in range(3):
        acc.policies[f"PE{p:03d}"] = {"name": f"Policy {p}", "rules": [
            [("schedule_reference", f"PS{p:03d}")], [("user_reference", ids[p + 1]), ("user_reference", ids[p + 2])]]}
    return acc


class PagerDutyServer(VendorServer):
    thread_name = "pagerduty-fake"

    def __init__(self, account: PagerDutyAccount, token: str, *, rate_headers: bool = True,
                 latency: float = 0.0) -> None:
        self.account, self.token, self.rate_headers = account, token, rate_headers
        super().__init__(latency=latency)

    def routes(self):
        return [("GET", r"/users", self.list_users), ("GET", r"/teams", self.list_teams),
                ("GET", r"/teams/(?P<id>[^/]+)/members", self.list_members),
                ("GET", r"/escalation_policies", self.list_policies), ("GET", r"/schedules", self.list_schedules)]

    def throttle(self, path_pattern: str, reset: float | None = None) -> None:
        """The next request to ``path_pattern`` gets a 429, with ``ratelimit-*`` headers when ``reset``."""
        headers = {"ratelimit-limit": "960", "ratelimit-remaining": "0", "ratelimit-reset": f"{reset:g}"} \
            if reset is not None else {}
        self.inject(path_pattern, [Reply(429, error(2020, "Rate Limit Exceeded"), headers=headers)])

    def dispatch(self, req: SeenRequest) -> Reply:
        if req.header("authorization") != f"Token token={self.token}":
            return Reply(401, error(2006, "Invalid Credentials"))
        if req.header("accept") != ACCEPT:
            return Reply(406, error(2001, "Invalid Input Provided", ["Unsupported Accept header"]))
        reply = super().dispatch(req)
        if self.rate_headers and reply.status == 200:
            reply.headers.update({"ratelimit-limit": "960", "ratelimit-remaining": "900", "ratelimit-reset": "42"})
        return reply

    def page(self, req: SeenRequest, key: str, items: list[Any], build=None) -> Reply:
        """One page of ``items`` (each passed through ``build`` when given: only the page's are built)."""
        try:
            offset = int(req.query.get("offset", 0))
            limit = min(100, max(1, int(req.query.get("limit", 25))))
        except ValueError:
            return Reply(400, error(2001, "Invalid Input Provided", ["Offset and limit must be integers."]))
        if offset + limit > 10_000:
            return Reply(400, error(2001, "Invalid Input Provided", ["Offset must be less than 10001."]))
        chunk = items[offset: offset + limit]
        if build is not None:
            chunk = [build(i) for i in chunk]
        return Reply(200, {key: chunk, "offset": offset, "limit": limit, "more": offset + limit < len(items),
                           "total": None})

    def _user(self, uid: str) -> dict[str, Any]:
        u = self.account.users[uid]
        teams = [{"id": t, "type": "team_reference", "summary": v["name"]}
                 for t, v in sorted(self.account.teams.items()) if uid in v["members"]]
        return {"id": uid, "type": "user", "summary": u["name"], "name": u["name"], "email": u["email"],
                "role": u["role"], "time_zone": "Europe/Berlin", "job_title": None, "invitation_sent": False,
                "teams": teams, "html_url": f"https://acme.pagerduty.example/users/{uid}"}

    def list_users(self, req, m):
        with self.account.lock:
            return self.page(req, "users", sorted(self.account.users), self._user)

    def list_teams(self, req, m):
        with self.account.lock:
            return self.page(req, "teams", [
                {"id": t, "type": "team", "name": v["name"], "summary": v["name"], "description": None,
                 "parent": {"id": v["parent"], "type": "team_reference"} if v["parent"] else None}
                for t, v in sorted(self.account.teams.items())])

    def list_members(self, req, m):
        with self.account.lock:
            team = self.account.teams.get(m.group("id"))
            if team is None:
                return Reply(404, error(2100, "Not Found"))
            return self.page(req, "members", [{"user": {"id": u, "type": "user_reference"}, "role": r}
                                              for u, r in sorted(team["members"].items())])

    def list_policies(self, req, m):
        with self.account.lock:
            return self.page(req, "escalation_policies", [
                {"id": p, "type": "escalation_policy", "name": v["name"], "num_loops": 0, "teams": [],
                 "escalation_rules": [{"id": f"R{p}{n}", "escalation_delay_in_minutes": 30,
                                       "targets": [{"id": i, "type": t} for t, i in rule]}
                                      for n, rule in enumerate(v["rules"])]}
                for p, v in sorted(self.account.policies.items())])

    def list_schedules(self, req, m):
        with self.account.lock:
            return self.page(req, "schedules", [
                {"id": s, "type": "schedule", "name": v["name"], "time_zone": "UTC", "teams": [],
                 "users": [{"id": u, "type": "user_reference"} for u in v["users"]]}
                for s, v in sorted(self.account.schedules.items())])


def error(code: int, message: str, errors: list[str] | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "code": code, "errors": errors or []}}


