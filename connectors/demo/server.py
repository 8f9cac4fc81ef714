"""The demo organisation's HTTP API: a small, stateless SaaS-style JSON API.

Every answer is computed from the request alone (the organisation's parameters
come from the query string, defaulting to the server's own), so memory stays
flat however large the organisation, and any page can be asked for directly.

    GET /api/org                                  {"id", "name", "domain", "day", "date", "users"}
    GET /api/users?limit=&cursor=                 {"data": [...], "next_cursor": "..." | null}
    GET /api/memberships?limit=&cursor=           {"data": [...], "next_cursor": "..." | null}
        both also take user_from=&user_to=        (users with index in [from, to): lets a client
                                                   page partitions in parallel)
    GET /api/groups?offset=&limit=                {"items": [...], "offset", "limit", "total"}
    GET /api/roles?page=&per_page=                [...] with a ``Link: <...>; rel="next"`` header
    GET /api/workspaces?page=&per_page=           {"workspaces": [...], "page", "per_page", "total_pages", "total"}
    GET /api/licenses                             {"licenses": [...]}

Organisation parameters (all optional): ``seed``, ``day``, ``users``, ``groups``,
``roles``, ``workspaces``, ``memberships_per_user``, ``churn``.

Every request needs ``Authorization: Bearer <token>`` (the token comes from the
environment variable ``DEMO_API_TOKEN``, default ``demo-token``); otherwise 401.

Run it on its own with ``python -m connectors.demo.server --port 8080``; it prints
``listening http://HOST:PORT`` on its first line of output.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import functools
import hmac
import json
import os
import sys
import threading
from dataclasses import fields, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlencode, urlsplit

from connectors.demo.org import Org, OrgSpec, day_date, get_org

__all__ = ["ApiError", "DemoApi", "decode_cursor", "encode_cursor", "main", "make_server"]

DEFAULT_TOKEN = "demo-token"
MAX_LIMIT = 10_000
ROUTES = ("org", "users", "memberships", "groups", "roles", "workspaces", "licenses")
_SPEC_TYPES = {f.name: (float if f.name in ("memberships_per_user", "churn") else int) for f in fields(OrgSpec)}


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def encode_cursor(kind: str, *position: int) -> str:
    """An opaque cursor: base64url of ``kind:a:b``."""
    raw = ":".join([kind, *map(str, position)]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str, kind: str, arity: int) -> tuple[int, ...]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        name, *position = raw.split(":")
        values = tuple(int(p) for p in position)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise ApiError(400, "invalid_cursor", "the cursor is not one this API issued") from None
    if name != kind or len(values) != arity or min(values) < 0:
        raise ApiError(400, "invalid_cursor", "the cursor is not one this API issued")
    return values


@functools.lru_cache(maxsize=16)
def _headcount(spec: OrgSpec) -> int:
    return get_org(spec).count_users()


class DemoApi:
    """Request -> response, without HTTP (the handler below is a thin shell around ``handle``)."""

    def __init__(self, defaults: OrgSpec | None = None, token: str | None = DEFAULT_TOKEN) -> None:
        self.defaults = defaults or OrgSpec()
        self.token = token

    # -- helpers -------------------------------------------------------------
    def _spec(self, q: dict[str, str]) -> OrgSpec:
        changes = {}
        for name, typ in _SPEC_TYPES.items():
            if name in q:
                try:
                    changes[name] = typ(q[name])
                except ValueError:
                    raise ApiError(400, "invalid_parameter", f"{name} must be a number") from None
        try:
            return replace(self.defaults, **changes)
        except ValueError as e:
            raise ApiError(400, "invalid_parameter", str(e)) from None

    @staticmethod
    def _int(q: dict[str, str], name: str, default: int, lo: int = 0, hi: int | None = None) -> int:
        try:
            v = int(q.get(name, default))
        except ValueError:
            raise ApiError(400, "invalid_parameter", f"{name} must be an integer") from None
        if v < lo or (hi is not None and v > hi):
            raise ApiError(400, "invalid_parameter", f"{name} must be between {lo} and {hi}")
        return v

    def _authorised(self, authorization: str | None) -> bool:
        if not authorization or not authorization.startswith("Bearer "):
            return False
        given = authorization[7:].strip()
        if not given:
            return False
        return self.token is None or hmac.compare_digest(given.encode(), self.token.encode())

    # -- entry point -----------------------------------------------------------
    def handle(self, method: str, target: str, authorization: str | None,
               host: str = "127.0.0.1") -> tuple[int, dict[str, str], bytes]:
        """(status, headers, body) for one request."""
        try:
            if method not in ("GET", "HEAD"):
                raise ApiError(405, "method_not_allowed", "this API is read-only")
            if not self._authorised(authorization):
                raise ApiError(401, "invalid_token", "missing or invalid bearer token")
            parts = urlsplit(target)
            q = dict(parse_qsl(parts.query, keep_blank_values=True))
            name = parts.path[5:].rstrip("/") if parts.path.startswith("/api/") else ""
            if name not in ROUTES:
                raise ApiError(404, "not_found", f"no such endpoint: {parts.path}")
            route = getattr(self, "_" + name)
            headers: dict[str, str] = {}
            body = route(q, headers, f"http://{host}{parts.path}")
            if not isinstance(body, str):
                body = json.dumps(body, separators=(",", ":"))
            return 200, headers, body.encode()
        except ApiError as e:
            extra = {"WWW-Authenticate": 'Bearer realm="demo"'} if e.status == 401 else {}
            return e.status, extra, json.dumps({"error": e.code, "message": e.message}).encode()

    # -- endpoints ---------------------------------------------------------------
    def _org(self, q, headers, url):
        spec = self._spec(q)
        org = get_org(spec)
        return {"id": f"org-{spec.seed}", "name": org.name, "domain": org.domain, "day": spec.day,
                "date": day_date(spec.day), "users": _headcount(spec)}

    def _users(self, q, headers, url):
        org = get_org(self._spec(q))
        limit = self._int(q, "limit", 100, 1, MAX_LIMIT)
        lo = self._int(q, "user_from", 0)
        hi = self._int(q, "user_to", 0) if "user_to" in q else None
        start = decode_cursor(q["cursor"], "users", 1)[0] if q.get("cursor") else lo
        page, nxt = org.users_page_json(max(start, lo), limit, hi)
        cursor = json.dumps(encode_cursor("users", nxt)) if nxt is not None else "null"
        return '{"data":[' + ",".join(page) + '],"next_cursor":' + cursor + "}"

    def _memberships(self, q, headers, url):
        org = get_org(self._spec(q))
        limit = self._int(q, "limit", 100, 1, MAX_LIMIT)
        lo = self._int(q, "user_from", 0)
        hi = self._int(q, "user_to", 0) if "user_to" in q else None
        start, slot = decode_cursor(q["cursor"], "memberships", 2) if q.get("cursor") else (lo, 0)
        page, nxt = org.memberships_page_json(max(start, lo), slot, limit, hi)
        cursor = json.dumps(encode_cursor("memberships", *nxt)) if nxt is not None else "null"
        return '{"data":[' + ",".join(page) + '],"next_cursor":' + cursor + "}"

    def _groups(self, q, headers, url):
        spec = self._spec(q)
        org = get_org(spec)
        offset = self._int(q, "offset", 0)
        limit = self._int(q, "limit", 100, 1, MAX_LIMIT)
        items = [org.group(k) for k in range(offset, min(offset + limit, spec.groups))]
        return {"items": items, "offset": offset, "limit": limit, "total": spec.groups}

    def _roles(self, q, headers, url):
        spec = self._spec(q)
        page = self._int(q, "page", 1, 1)
        per_page = self._int(q, "per_page", 30, 1, MAX_LIMIT)
        first = (page - 1) * per_page
        last_page = max(1, -(-spec.roles // per_page))
        links = []
        if page < last_page:
            links.append(f'<{url}?{urlencode({**q, "page": page + 1})}>; rel="next"')
        links.append(f'<{url}?{urlencode({**q, "page": last_page})}>; rel="last"')
        headers["Link"] = ", ".join(links)
        return [get_org(spec).role(r) for r in range(first, min(first + per_page, spec.roles))]

    def _workspaces(self, q, headers, url):
        spec = self._spec(q)
        org = get_org(spec)
        page = self._int(q, "page", 1, 1)
        per_page = self._int(q, "per_page", 50, 1, MAX_LIMIT)
        first = (page - 1) * per_page
        items = [org.workspace(k) for k in range(first, min(first + per_page, spec.workspaces))]
        return {"workspaces": items, "page": page, "per_page": per_page,
                "total_pages": -(-spec.workspaces // per_page), "total": spec.workspaces}

    def _licenses(self, q, headers, url):
        self._spec(q)
        return {"licenses": Org.licenses()}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive
    disable_nagle_algorithm = True
    server_version = "demo-api/1"
    api: DemoApi  # set on the subclass made by make_server

    def do_GET(self) -> None:
        status, headers, body = self.api.handle(self.command, self.path, self.headers.get("Authorization"),
                                                self.headers.get("Host") or "127.0.0.1")
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_HEAD = do_GET

    def _refuse(self) -> None:
        self.do_GET()  # DemoApi answers 405 for anything but GET/HEAD

    do_POST = do_PUT = do_PATCH = do_DELETE = _refuse

    def log_message(self, format: str, *args) -> None:  # quiet: this is a demo backend
        pass


def make_server(host: str = "127.0.0.1", port: int = 0, api: DemoApi | None = None) -> ThreadingHTTPServer:
    """A threaded HTTP/1.1 server for ``api`` (not started: call ``serve_forever``)."""
    handler = type("DemoHandler", (_Handler,), {"api": api or DemoApi()})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    return server


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m connectors.demo.server", description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    for f in fields(OrgSpec):
        p.add_argument("--" + f.name.replace("_", "-"), type=_SPEC_TYPES[f.name], default=f.default,
                       help=f"default organisation {f.name} (default {f.default})")
    p.add_argument("--exit-on-stdin-eof", action="store_true",
                   help="stop when standard input closes (used when a connector starts the server)")
    args = p.parse_args(argv)
    defaults = OrgSpec(**{f.name: getattr(args, f.name) for f in fields(OrgSpec)})
    server = make_server(args.host, args.port, DemoApi(defaults, os.environ.get("DEMO_API_TOKEN") or DEFAULT_TOKEN))
    host, port = server.server_address[:2]
    print(f"listening http://{host}:{port}", flush=True)
    if args.exit_on_stdin_eof:
        def watch() -> None:
            sys.stdin.buffer.read()  # returns at EOF: the parent closed the pipe or died
            os._exit(0)

        threading.Thread(target=watch, name="stdin-watch", daemon=True).start()
    try:
        server.serve_forever(poll_interval=0.5)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
