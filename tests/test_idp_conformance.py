"""The identity-provider connectors and their fakes against the vendors' machine-readable API
descriptions: every path and query parameter a connector sends exists there, and the fakes'
answers validate against its schemas (so the fakes cannot drift into an API of their own).

- Okta: the management API description in the npm package ``@okta/openapi`` (Swagger 2.0,
  installed by ``make node-deps`` into tests/node/node_modules).
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest

from connectors.okta import OktaAuth, OktaConnector, OktaSettings
from ingest.connector import ConnectorContext
from tests.servers.okta_server import OktaServer, make_tenant

NODE = Path(__file__).parent / "node" / "node_modules"
OKTA_SPEC = NODE / "@okta" / "openapi" / "dist" / "spec.json"

# Okta endpoints newer than the last published @okta/openapi (2.15.0): operation -> query parameters,
# from Okta's current management API reference (Role Assignment API, "List all users with role assignments").
OKTA_NEWER = {"/api/v1/iam/assignees/users": {"after", "limit"}}


def _load(path: Path, how: str) -> dict[str, Any]:
    assert path.exists(), f"{path} is missing: {how}"
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def okta_spec() -> dict[str, Any]:
    return _load(OKTA_SPEC, "run `make node-deps` (npm ci in tests/node)")


def _template_rx(template: str) -> re.Pattern:
    return re.compile("^" + re.sub(r"\\{[^}]+\\}", "[^/]+", re.escape(template)) + "$")


def operation_for(spec: dict[str, Any], method: str, path: str) -> tuple[str, dict[str, Any]] | None:
    """The description's (template, operation) for a concrete request path; literal segments win."""
    matches = [(t, ops) for t, ops in spec["paths"].items() if _template_rx(t).match(path)]
    matches.sort(key=lambda m: m[0].count("{"))
    for template, ops in matches:
        if method.lower() in ops:
            return template, ops[method.lower()]
    return None


def _nullable(schema: Any) -> Any:
    """Swagger 2.0 cannot say "nullable"; Okta sends null for unset values (lastLogin, activated, ...).
    And Okta writes free-form maps (profiles, ``_links``) as ``additionalProperties: {type: object}``
    where the live API has strings and numbers too: read that as "any value"."""
    if isinstance(schema, dict):
        out = {k: _nullable(v) for k, v in schema.items()}
        if out.get("additionalProperties") == {"type": "object"}:
            out["additionalProperties"] = {}
        if isinstance(out.get("type"), str) and out["type"] != "object":
            out["type"] = [out["type"], "null"]
        if "enum" in out:
            out["enum"] = [*out["enum"], None]
        return out
    if isinstance(schema, list):
        return [_nullable(s) for s in schema]
    return schema


def swagger_validator(spec: dict[str, Any], definition: str, array: bool) -> jsonschema.Validator:
    ref = {"$ref": f"#/definitions/{definition}"}
    root = {"definitions": _nullable(copy.deepcopy(spec["definitions"])),
            **({"type": "array", "items": ref} if array else ref)}
    return jsonschema.Draft4Validator(root)


class TestOkta:
    def test_every_request_the_connector_sends_is_in_the_description(self, okta_spec):
        t = make_tenant(n_users=260, n_groups=6, n_apps=3, big_group=100)
        with OktaServer(t) as server:
            ctx = ConnectorContext("okta", OktaSettings(domain=server.root_url), OktaAuth(api_key="ssws-test-token"))
            with OktaConnector(ctx) as c:
                c.validate_credentials()
                for cap in ("list_accounts", "list_resources", "list_entitlements", "find_entitlement_associations",
                            "get_last_activity"):
                    list(getattr(c, cap)())
        seen: set[str] = set()
        for req in server.requests:
            assert req.method == "GET", f"{req.method} {req.path}: ingest only reads"
            if req.path in OKTA_NEWER:
                assert set(req.query) <= OKTA_NEWER[req.path], (req.path, req.query)
                seen.add(req.path)
                continue
            found = operation_for(okta_spec, "GET", req.path)
            assert found, f"GET {req.path} is not in @okta/openapi"
            template, op = found
            names = {p["name"] for p in op.get("parameters", []) if p.get("in") == "query"}
            assert set(req.query) <= names, f"GET {template}: {set(req.query) - names} not among {sorted(names)}"
            seen.add(template)
        assert {"/api/v1/users", "/api/v1/groups", "/api/v1/groups/{groupId}/users", "/api/v1/apps",
                "/api/v1/apps/{appId}/users", "/api/v1/apps/{appId}/groups", "/api/v1/users/{userId}/roles",
                "/api/v1/groups/{groupId}/roles", "/api/v1/org", "/api/v1/iam/assignees/users"} <= seen

    @pytest.mark.parametrize("path, definition, array", [
        ("/api/v1/org", "OrgSetting", False),
        ("/api/v1/users", "User", True),
        ("/api/v1/users?filter=status%20eq%20%22DEPROVISIONED%22", "User", True),
        ("/api/v1/groups", "Group", True),
        ("/api/v1/groups/{group}/users", "User", True),
        ("/api/v1/groups/{group}/roles", "Role", True),
        ("/api/v1/apps", "Application", True),
        ("/api/v1/apps/{app}/users", "AppUser", True),
        ("/api/v1/apps/{app}/groups", "ApplicationGroupAssignment", True),
        ("/api/v1/users/{admin}/roles", "Role", True),
    ])
    def test_the_fake_answers_validate_against_the_description(self, okta_spec, path, definition, array):
        t = make_tenant(n_users=60, n_groups=5, n_apps=3)
        group = sorted(t.group_roles)[0]
        ids = {"group": group, "app": sorted(t.apps)[0], "admin": sorted(t.user_roles)[0]}
        with OktaServer(t) as server:
            r = httpx.get(server.url(path.format(**ids)), headers={"Authorization": "SSWS ssws-test-token"})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body, "an empty answer proves nothing"
        swagger_validator(okta_spec, definition, array).validate(body)
        props = set(okta_spec["definitions"][definition]["properties"])
        for item in body if array else [body]:
            assert set(item) <= props, f"the fake invents {set(item) - props} in {definition}"

    def test_the_fake_errors_have_okta_error_shape(self):
        with OktaServer(make_tenant(n_users=5, n_groups=2, n_apps=1)) as server:
            r = httpx.get(server.url("/api/v1/users"), headers={"Authorization": "SSWS wrong"})
        assert r.status_code == 401
        assert set(r.json()) == {"errorCode", "errorSummary", "errorLink", "errorId", "errorCauses"}
        assert r.json()["errorCode"] == "E0000011"
