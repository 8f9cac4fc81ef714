"""A real SCIM 2.0 server for the tests: the ``scim2-server`` package (Yaal Coop), run on 127.0.0.1.

``ScimServer`` serves scim2-server's own WSGI application (bearer-token auth,
in-memory storage, RFC 7643 schemas incl. the enterprise user extension) under
``http://127.0.0.1:PORT/scim/v2`` in a background thread. Only the ids are
made predictable (``uuid5`` of the userName / displayName), through the
storage's documented ``generate_id`` hook, so a test can build references
(managers, nested groups) before the server assigns them.

``make_org`` builds a synthetic organisation (pure data); ``load_org`` writes
it with the server's own API (``POST /Bulk`` for users, ``POST /Groups``)
using plain httpx. ``source_state`` reads what the server holds straight from
its storage, to compare a snapshot with.
"""

from __future__ import annotations

import random
import threading
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl
from wsgiref.simple_server import WSGIRequestHandler, make_server

import httpx
from scim2_models import ScimProvider
from scim2_server.memory import InMemoryStorage
from scim2_server.service import ScimService
from scim2_server.testserver.application import BEARER_TOKEN_SCHEME, BearerTokenApplication
from scim2_server.testserver.cli import ThreadingWSGIServer
from scim2_server.utils import (
    load_default_resource_types,
    load_default_schemas,
    load_default_service_provider_config,
)

from tests.servers._loopback import LoopbackServer

__all__ = ["ScimServer", "Org", "make_org", "load_org", "source_state", "user_id", "group_id",
           "CORE_USER", "CORE_GROUP", "ENTERPRISE", "PATCH_OP"]

CORE_USER = "urn:ietf:params:scim:schemas:core:2.0:User"
CORE_GROUP = "urn:ietf:params:scim:schemas:core:2.0:Group"
ENTERPRISE = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"
PATCH_OP = "urn:ietf:params:scim:api:messages:2.0:PatchOp"
BULK_REQUEST = "urn:ietf:params:scim:api:messages:2.0:BulkRequest"
_NS = uuid.UUID("5f0c3a53-0d0e-4a51-9a53-6b1b3c0de001")


def user_id(user_name: str) -> str:
    return uuid.uuid5(_NS, "User:" + user_name).hex


def group_id(display_name: str) -> str:
    return uuid.uuid5(_NS, "Group:" + display_name).hex


class _PredictableIds(InMemoryStorage):
    def generate_id(self, resource_type, resource) -> str:
        if resource_type.name == "User":
            return user_id(resource.user_name)
        if resource_type.name == "Group":
            return group_id(resource.display_name)
        return super().generate_id(resource_type, resource)


class _Quiet(WSGIRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass


class ScimServer(LoopbackServer):
    """scim2-server on 127.0.0.1 (port chosen by the OS), mounted under ``/scim``.

    Beside it, on the same port, ``/app/...`` is a web page (HTML for every
    path) and ``/api/...`` another JSON API: wrong base URLs a user could type.

    ``leak_auth_on_401`` makes 401 answers echo the Authorization header they
    refused (a hostile or careless provider), to test that ingest keeps the
    token out of errors, logs and the database anyway.
    """

    def __init__(self, token: str = "scim-test-token", *, max_results: int = 1000,
                 leak_auth_on_401: bool = False) -> None:
        self.token = token
        self.leak_auth_on_401 = leak_auth_on_401
        config = load_default_service_provider_config()
        config.authentication_schemes = [BEARER_TOKEN_SCHEME]
        config.filter.max_results = max_results
        provider = ScimProvider.from_discovery(
            load_default_schemas().values(), load_default_resource_types().values(), config=config
        )
        self.storage = _PredictableIds()
        self.app = BearerTokenApplication(
            self.storage, provider, service=ScimService(provider, secret="t" * 32), bearer_tokens=[token]
        )
        self._server: ThreadingWSGIServer | None = None
        self._thread: threading.Thread | None = None
        # called as after_request(path, query) once a request's answer is ready, before it is sent:
        # a test changes the source between two pages with it
        self.after_request: Callable[[str, dict[str, str]], None] | None = None

    # -- WSGI ---------------------------------------------------------------------------------------
    def _wsgi(self, environ: dict, start_response) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path.startswith("/app/"):  # a web application on the same host: HTML for everything
            start_response("200 OK", [("Content-Type", "text/html; charset=utf-8")])
            return [b"<!doctype html><html><body>Welcome! Please sign in.</body></html>"]
        if path.startswith("/api/"):  # another JSON API on the same host
            start_response("200 OK", [("Content-Type", "application/json")])
            return [b'{"status": "ok", "data": [{"name": "not scim"}]}']
        if path != "/scim" and not path.startswith("/scim/"):
            start_response("404 Not Found", [("Content-Type", "text/html")])
            return [b"<html><body>Not Found</body></html>"]
        environ["SCRIPT_NAME"], environ["PATH_INFO"] = "/scim", path[len("/scim"):]
        if self.after_request is not None:
            body = b"".join(self.app(environ, start_response))
            self.after_request(environ["PATH_INFO"], dict(parse_qsl(environ.get("QUERY_STRING", ""))))
            return [body]
        if not self.leak_auth_on_401:
            return self.app(environ, start_response)
        captured: dict[str, Any] = {}

        def capture(status, headers, exc_info=None):
            captured["status"], captured["headers"] = status, headers

        body = b"".join(self.app(environ, capture))
        if captured["status"].startswith("401"):
            body = (b'{"schemas":["urn:ietf:params:scim:api:messages:2.0:Error"],"status":"401",'
                    b'"detail":"refused Authorization: ' + environ.get("HTTP_AUTHORIZATION", "").encode() + b'"}')
            captured["headers"] = [(k, v) for k, v in captured["headers"] if k.lower() != "content-length"]
        start_response(captured["status"], captured["headers"])
        return [body]

    # -- lifecycle ----------------------------------------------------------------------------------
    thread_name = "scim2-server"

    def _make_server(self):
        return make_server("127.0.0.1", 0, self._wsgi, server_class=ThreadingWSGIServer, handler_class=_Quiet)

    @property
    def base_url(self) -> str:
        return f"{self.root_url}/scim/v2"

    def client(self) -> httpx.Client:
        """Plain httpx for the fixture (never the connector's client)."""
        return httpx.Client(base_url=self.base_url, headers={"Authorization": f"Bearer {self.token}"},
                            timeout=60)

    # -- writes through the API, for fixtures ----------------------------------------------------------
    def patch(self, client: httpx.Client, path: str, *operations: dict[str, Any]) -> None:
        r = client.patch(path, json={"schemas": [PATCH_OP], "Operations": list(operations)})
        assert r.status_code in (200, 204), r.text

    def delete_users(self, ids: Iterable[str]) -> None:
        """Delete users straight in the storage (as another admin would, while a run pages)."""
        gone = set(ids)
        with self.storage.lock:
            self.storage.resources = [r for r in self.storage.resources
                                      if not (r.meta.resource_type == "User" and r.id in gone)]

    def clear_users(self) -> None:
        """Forget every user at once, straight in the storage (a source that suddenly has none)."""
        with self.storage.lock:
            self.storage.resources = [r for r in self.storage.resources if r.meta.resource_type != "User"]


# -- the synthetic organisation -----------------------------------------------------------------------------

_GIVEN = ["Zoë", "Łukasz", "José", "Søren", "Ångström", "Müller", "Chloé", "Renée", "Žofia", "Ýrr",
          "Anna", "Ben", "Chen", "Dmitri", "Eve", "Fatima", "Giulia", "Hiro", "Ivan", "Jane",
          "明", "Ольга", "Αλέξανδρος", "محمد", "Nguyễn"]
_FAMILY = ["Ødegård", "Brontë", "Nuñez", "Çelik", "Dvořák", "Smith", "O'Brien", "van der Berg", "Schröder",
           "Lefèvre", "Kowalczyk", "Tanaka", "李", "Иванова", "Παπαδόπουλος", "Jones", "Øyen", "Ñandú"]
_DEPARTMENTS = ["Engineering", "Sales", "Finance", "Support", "Marketing", "Forschung & Entwicklung", "Légal"]


@dataclass
class Org:
    users: list[dict[str, Any]] = field(default_factory=list)
    groups: list[dict[str, Any]] = field(default_factory=list)

    @property
    def user_ids(self) -> list[str]:
        return [user_id(u["userName"]) for u in self.users]

    def group(self, name: str) -> dict[str, Any]:
        return next(g for g in self.groups if g["displayName"] == name)


def make_org(n_users: int = 1200, n_teams: int = 40, big_group_size: int = 1100, seed: int = 7) -> Org:
    """An organisation with every shape a real one has.

    - ``n_users`` users, most with the enterprise extension (manager = an earlier user);
    - non-ASCII names; every 13th user has no email; every 5th has a home address
      first and the primary work one second; every 7th has two non-primary addresses
      (home, then work); every 11th is inactive;
    - ``n_teams`` teams of 5-40 members, "All Staff" with ``big_group_size`` members,
      and "Engineering" whose members are two teams (one typed ``Group``, one untyped)
      and some users: nested groups.
    """
    rnd = random.Random(seed)
    org = Org()
    for i in range(n_users):
        given, family = rnd.choice(_GIVEN), rnd.choice(_FAMILY)
        user_name = f"user{i:05d}@example.org"
        u: dict[str, Any] = {
            "schemas": [CORE_USER],
            "userName": user_name,
            "name": {"givenName": given, "familyName": family, "formatted": f"{given} {family}"},
            "displayName": f"{given} {family}",
            "active": i % 11 != 5,
        }
        mail = f"{given.lower()}.{i}@example.org"
        if i % 13 == 3:
            pass  # no email at all
        elif i % 5 == 1:
            u["emails"] = [{"value": f"home{i}@example.net", "type": "home"},
                           {"value": mail, "type": "work", "primary": True}]
        elif i % 7 == 2:
            u["emails"] = [{"value": f"home{i}@example.net", "type": "home"}, {"value": mail, "type": "work"}]
        else:
            u["emails"] = [{"value": mail, "type": "work", "primary": True}]
        if i % 9 != 4:
            u["schemas"].append(ENTERPRISE)
            ent: dict[str, Any] = {"employeeNumber": f"E{i:05d}", "department": rnd.choice(_DEPARTMENTS),
                                   "costCenter": f"CC-{i % 17}", "organization": "Example Corp",
                                   "division": f"Division {i % 3}"}
            if i > 0:
                ent["manager"] = {"value": user_id(f"user{rnd.randrange(i):05d}@example.org")}
            u[ENTERPRISE] = ent
        if i % 4 == 0:
            u["title"] = rnd.choice(["Engineer", "Directrice", "Manager", "Analyst"])
        org.users.append(u)
    ids = org.user_ids
    for t in range(n_teams):
        members = rnd.sample(ids, rnd.randint(5, min(40, len(ids))))
        org.groups.append({"schemas": [CORE_GROUP], "displayName": f"Team {t:02d}",
                           "members": [{"value": m, "type": "User"} for m in members]})
    org.groups.append({"schemas": [CORE_GROUP], "displayName": "All Staff",
                       "members": [{"value": m, "type": "User"} for m in ids[:big_group_size]]})
    if n_teams >= 2:
        org.groups.append({"schemas": [CORE_GROUP], "displayName": "Engineering", "members": [
            {"value": group_id("Team 00"), "type": "Group"},
            {"value": group_id("Team 01")},  # untyped: a group because its value is a group id
            *({"value": m} for m in ids[-3:]),
        ]})
    return org


def load_org(server: ScimServer, org: Org, chunk: int = 400) -> None:
    """Write ``org`` into the server through its API (POST /Bulk for users, POST /Groups)."""
    with server.client() as c:
        for start in range(0, len(org.users), chunk):
            ops = [{"method": "POST", "path": "/Users", "bulkId": f"u{start + n}", "data": u}
                   for n, u in enumerate(org.users[start:start + chunk])]
            r = c.post("/Bulk", json={"schemas": [BULK_REQUEST], "Operations": ops})
            assert r.status_code == 200, r.text[:500]
            failed = [o for o in r.json()["Operations"] if not str(o.get("status", "")).startswith("2")]
            assert not failed, failed[:3]
        for g in org.groups:
            r = c.post("/Groups", json=g)
            assert r.status_code == 201, r.text[:500]


def source_state(server: ScimServer) -> dict[str, Any]:
    """What the server holds now, read from its storage: users and groups as SCIM JSON."""
    with server.storage.lock:
        resources = [r.model_dump() for r in server.storage.resources]
    users = {r["id"]: r for r in resources if r["meta"]["resourceType"] == "User"}
    groups = {r["id"]: r for r in resources if r["meta"]["resourceType"] == "Group"}
    memberships, nested = set(), set()
    for gid, g in groups.items():
        for m in g.get("members") or []:
            if m.get("type") == "Group" or m["value"] in groups:
                nested.add((gid, m["value"]))
            else:
                memberships.add((m["value"], gid))
    return {"users": users, "groups": groups, "assignments": memberships, "nested": nested}
