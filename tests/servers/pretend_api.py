"""A loopback fake of "Pretend", the app behind the connector connector-py's scaffold generates.

``PretendApi`` is a real HTTP/1.1 server on 127.0.0.1 (port 0). The scaffolded
connector's ``BASE_URL`` is ``https://pretend.com``; the SDK's own
``connector.httpx_rewrite.proxy_settings(proxy_url=...)`` sends its requests here
with the original URL in ``X-Forward-To``, and this server answers as the
SDK's proxy does (``x-lumos-sip-status-code: 200``, the app's own status).

The API (bearer tokens; offset paging with a total, like many SaaS APIs)::

    GET  /users?limit=N&offset=O          {"users": [...], "total": T}
    GET  /workspaces                       {"workspaces": [...]}
    GET  /roles                            {"roles": [...]}          (global and per workspace)
    GET  /role_members?limit=N&offset=O    {"members": [...], "total": T}
    GET  /activity?user_ids=a,b            {"events": [...]}
    GET  /expenses?limit=N&offset=O        {"expenses": [...], "total": T}
    GET  /me                               {"tenant": "..."}
    POST /oauth/token                      grant_type=refresh_token -> {"access_token", "refresh_token", ...}

Faults: ``fail_next(path, status, headers)`` answers the next request to a path
with that status once (429 with ``Retry-After``, 500, ...); ``expire(token)``
makes a token answer 401 from then on. Every request is recorded.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.servers._loopback import LoopbackServer


@dataclass
class Seen:
    method: str
    path: str
    query: dict[str, list[str]]
    authorization: str | None
    at: float
    status: int = 0


@dataclass
class PretendData:
    users: list[dict[str, Any]] = field(default_factory=list)
    workspaces: list[dict[str, Any]] = field(default_factory=list)
    roles: list[dict[str, Any]] = field(default_factory=list)
    members: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    expenses: list[dict[str, Any]] = field(default_factory=list)


def sample(users: int = 5) -> PretendData:
    """A small tenant: users (one suspended), two workspaces, a global and a workspace role, grants, a login,
    two expenses."""
    return PretendData(
        users=[{"id": f"u{i}", "email": f"user{i}@pretend.test", "login": f"user{i}", "first": f"First{i}",
                "last": f"Last{i}", "state": "active" if i != 3 else "suspended", "plan": "pro"} for i in range(users)],
        workspaces=[{"id": "w1", "name": "Main"}, {"id": "w2", "name": "Labs"}],
        roles=[{"id": "admin", "name": "Administrator"}, {"id": "w1-editor", "name": "Editor", "workspace": "w1"}],
        members=[{"user_id": "u0", "role_id": "admin"}] + [
            {"user_id": f"u{i}", "role_id": "w1-editor", "workspace": "w1"} for i in range(users)],
        events=[{"user_id": "u1", "type": "login", "at": "2026-11-30T08:00:00+00:00"}],
        expenses=[{"id": "x1", "date": "2026-11-28", "amount": "42.10", "currency": "EUR", "merchant": "Figma",
                   "user_id": "u0", "email": "user0@pretend.test", "kind": "card_transaction"},
                  {"id": "x2", "date": "2026-11-29", "amount": "7.00", "currency": "USD", "merchant": "Taxi",
                   "user_id": "u2", "kind": "reimbursement"}],
    )


def next_day(d: PretendData) -> PretendData:
    """The tenant a day later (in place): u4 leaves with their grant, u9 joins as admin, u0's e-mail changes,
    expense x2 is corrected."""
    d.users = [u for u in d.users if u["id"] != "u4"] + [
        {"id": "u9", "email": "new@pretend.test", "login": "new", "state": "active"}]
    d.users[0]["email"] = "boss@pretend.test"
    d.members = [m for m in d.members if m["user_id"] != "u4"] + [{"user_id": "u9", "role_id": "admin"}]
    d.expenses[1]["amount"] = "7.50"
    return d


class PretendApi(LoopbackServer):
    thread_name = "pretend-api"

    def __init__(self, data: PretendData, *, tokens: set[str], client_id: str = "cid", client_secret: str = "csecret",
                 refresh_token: str = "r-0", max_page: int = 1000, port: int = 0) -> None:
        self.listen_port = port  # 0: any free port (tests); a fixed one for the demo a user starts
        self.data = data
        self.tokens = set(tokens)
        self.expired: set[str] = set()
        self.client = (client_id, client_secret)
        self.refresh_tokens = {refresh_token}
        self.max_page = max_page
        self.faults: dict[str, list[tuple[int, dict[str, str]]]] = {}
        self.requests: list[Seen] = []
        self.issued: list[str] = []
        self.lock = threading.Lock()

    # -- test controls ----------------------------------------------------------------
    def fail_next(self, path: str, status: int, headers: dict[str, str] | None = None) -> None:
        with self.lock:
            self.faults.setdefault(path, []).append((status, headers or {}))

    def expire(self, token: str) -> None:
        with self.lock:
            self.expired.add(token)

    def seen(self, path: str) -> list[Seen]:
        return [r for r in list(self.requests) if r.path == path]

    # -- server -------------------------------------------------------------------------
    def _make_server(self) -> ThreadingHTTPServer:
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a: Any) -> None:
                pass

            def _target(self) -> tuple[str, dict[str, list[str]]]:
                url = urlsplit(self.headers.get("X-Forward-To") or self.path)
                return url.path, parse_qs(url.query)

            def _send(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
                raw = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.send_header("x-lumos-sip-status-code", "200")  # the proxy itself is fine
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(raw)

            def do_POST(self) -> None:
                path, _ = self._target()
                length = int(self.headers.get("Content-Length") or 0)
                form = {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
                seen = Seen("POST", path, {}, None, time.monotonic())
                api.requests.append(seen)
                if path != "/oauth/token":
                    seen.status = 404
                    return self._send(404, {"error": "not_found"})
                with api.lock:
                    ok = (form.get("grant_type") == "refresh_token" and form.get("refresh_token") in api.refresh_tokens
                          and (form.get("client_id"), form.get("client_secret")) == api.client)
                    if not ok:
                        seen.status = 400
                        return self._send(400, {"error": "invalid_grant"})
                    api.refresh_tokens.discard(form["refresh_token"])  # rotated: one use each
                    access, refresh = f"a-{secrets.token_hex(8)}", f"r-{secrets.token_hex(8)}"
                    api.tokens.add(access)
                    api.refresh_tokens.add(refresh)
                    api.issued.append(access)
                seen.status = 200
                self._send(200, {"access_token": access, "refresh_token": refresh, "token_type": "bearer",
                                 "expires_in": 3600})

            def do_GET(self) -> None:
                path, query = self._target()
                auth = self.headers.get("Authorization")
                seen = Seen("GET", path, query, auth, time.monotonic())
                api.requests.append(seen)
                with api.lock:
                    fault = api.faults.get(path, [])
                    fault = fault.pop(0) if fault else None
                    token = (auth or "").removeprefix("Bearer ")
                    authorized = token in api.tokens and token not in api.expired
                if fault:
                    seen.status = fault[0]
                    return self._send(fault[0], {"error": "injected"}, fault[1])
                if not authorized:
                    seen.status = 401
                    return self._send(401, {"error": "invalid_token"}, {"WWW-Authenticate": 'Bearer error="invalid_token"'})
                seen.status = 200
                limit = min(int(query.get("limit", ["100"])[0]), api.max_page)
                offset = int(query.get("offset", ["0"])[0])
                d = api.data

                def paged(key: str, items: list[dict[str, Any]]) -> None:
                    self._send(200, {key: items[offset:offset + limit], "total": len(items)})

                if path == "/users":
                    return paged("users", d.users)
                if path == "/role_members":
                    return paged("members", d.members)
                if path == "/expenses":
                    return paged("expenses", d.expenses)
                if path == "/workspaces":
                    return self._send(200, {"workspaces": d.workspaces})
                if path == "/roles":
                    return self._send(200, {"roles": d.roles})
                if path == "/activity":
                    wanted = set((query.get("user_ids", [""])[0]).split(","))
                    return self._send(200, {"events": [e for e in d.events if e["user_id"] in wanted]})
                if path == "/me":
                    return self._send(200, {"tenant": "pretend-tenant-1"})
                seen.status = 404
                self._send(404, {"error": "not_found"})

        return ThreadingHTTPServer(("127.0.0.1", self.listen_port), Handler)


# the demo's credentials (examples/lumos.yaml's defaults): a fake tenant's, nothing real
DEMO_TOKEN, DEMO_REFRESH, DEMO_CLIENT, DEMO_SECRET = ("pretend-demo-token", "pretend-demo-refresh", "ingest-demo",
                                                      "pretend-demo-secret")


def main(argv: list[str] | None = None) -> None:
    """``python -m tests.servers.pretend_api --port 8090 [--day 2]``: the Pretend app of examples/lumos.yaml on
    127.0.0.1 until Ctrl-C (or ``--seconds``), and its connector: connector-py's scaffold made real
    (tests/lumos_pretend.py) in ``--connector-dir``, with its on-prem executable ``DIR/pretend-cli`` pointed at
    this server."""
    import argparse
    import contextlib
    import sys
    from pathlib import Path

    from tests.lumos_pretend import make_pretend, write_executable
    from tests.servers.rest_api import wait_for_stop

    ap = argparse.ArgumentParser(prog="python -m tests.servers.pretend_api", description=main.__doc__)
    ap.add_argument("--port", type=int, default=8090, help="port on 127.0.0.1")
    ap.add_argument("--day", type=int, choices=(1, 2), default=1, help="2 serves the next day's changes")
    ap.add_argument("--connector-dir", type=Path, default=Path("examples/.pretend"),
                    help="where the scaffolded connector goes (made once)")
    ap.add_argument("--seconds", type=float, default=None, help="stop after this many seconds")
    args = ap.parse_args(argv)
    root = args.connector_dir.resolve()
    if not (root / "pretend" / "integration.py").exists():
        with contextlib.redirect_stdout(sys.stderr):  # the scaffold lists every file it writes
            make_pretend(root)
    data = next_day(sample()) if args.day == 2 else sample()
    with PretendApi(data, tokens={DEMO_TOKEN}, client_id=DEMO_CLIENT, client_secret=DEMO_SECRET,
                    refresh_token=DEMO_REFRESH, port=args.port) as api:
        exe = write_executable(root, api.root_url + "/")
        print(f"Pretend app (day {args.day}) on {api.root_url}; its connector's executable: {exe}; "
              "Ctrl-C stops it", flush=True)
        wait_for_stop(args.seconds)


if __name__ == "__main__":
    main()
