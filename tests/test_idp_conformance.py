"""The identity-provider connectors and their fakes against the vendors' machine-readable API
descriptions: every path and query parameter a connector sends exists there, and the fakes'
answers validate against its schemas (so the fakes cannot drift into an API of their own).

- Okta: the management API description in the npm package ``@okta/openapi`` (Swagger 2.0,
  installed by ``make node-deps`` into tests/node/node_modules).
- Google: the Directory API discovery document shipped in google-api-python-client
  (``googleapiclient/discovery_cache/documents/admin.directory_v1.json``).
- Microsoft Graph: no installable description is small enough to ship, so :data:`GRAPH_V1` transcribes
  the v1.0 reference pages of the operations used (their "HTTP request" and "Optional query
  parameters" sections, and the resource types' property tables).
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

from connectors.entra import EntraAuth, EntraConnector, EntraSettings
from connectors.google_workspace import SCOPES as GOOGLE_SCOPES
from connectors.google_workspace import GoogleWorkspaceConnector
from connectors.okta import OktaAuth, OktaConnector, OktaSettings
from ingest.connector import ConnectorContext
from tests.servers import google_directory_server as gds
from tests.servers import graph_server
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


# -- Microsoft Graph v1.0 ------------------------------------------------------------------------------

_ODATA = {"$count", "$expand", "$filter", "$orderby", "$search", "$select", "$top", "$skiptoken"}
# operation (path template) -> (query parameters the reference lists, + $skiptoken of nextLink; resource type)
GRAPH_V1: dict[str, tuple[set[str], str]] = {
    "/v1.0/organization": ({"$select"}, "organization"),                                   # organization-list
    "/v1.0/users": (_ODATA, "user"),                                                       # user-list
    "/v1.0/groups": (_ODATA, "group"),                                                     # group-list
    "/v1.0/groups/{id}/members": (_ODATA - {"$orderby"}, "directoryObject"),               # group-list-members
    "/v1.0/roleManagement/directory/roleDefinitions": ({"$filter", "$select"}, "unifiedRoleDefinition"),
    "/v1.0/roleManagement/directory/roleAssignments": ({"$filter", "$expand", "$select", "$skiptoken"},
                                                       "unifiedRoleAssignment"),           # rbacapplication-list-...
    "/v1.0/servicePrincipals": (_ODATA, "servicePrincipal"),                               # serviceprincipal-list
    "/v1.0/servicePrincipals/{id}/appRoleAssignedTo": (_ODATA - {"$search"}, "appRoleAssignment"),
}
# resource type -> properties (v1.0 "Properties" tables, the ones a fake may send)
GRAPH_TYPES: dict[str, dict[str, Any]] = {
    "organization": {"id": str, "displayName": str, "tenantType": str, "verifiedDomains": list},
    "user": {"id": str, "displayName": str, "givenName": str, "surname": str, "userPrincipalName": str, "mail": str,
             "accountEnabled": bool, "userType": str, "jobTitle": str, "department": str, "employeeId": str,
             "createdDateTime": str, "signInActivity": dict},
    "signInActivity": {"lastSignInDateTime": str, "lastSignInRequestId": str, "lastNonInteractiveSignInDateTime": str,
                       "lastNonInteractiveSignInRequestId": str, "lastSuccessfulSignInDateTime": str,
                       "lastSuccessfulSignInRequestId": str},
    "group": {"id": str, "displayName": str, "description": str, "groupTypes": list, "securityEnabled": bool,
              "mailEnabled": bool, "mail": str, "membershipRule": str, "membershipRuleProcessingState": str,
              "createdDateTime": str, "visibility": str},
    "unifiedRoleDefinition": {"id": str, "displayName": str, "description": str, "isBuiltIn": bool,
                              "isEnabled": bool, "templateId": str},
    "unifiedRoleAssignment": {"id": str, "principalId": str, "roleDefinitionId": str, "directoryScopeId": str,
                              "principal": dict},
    "servicePrincipal": {"id": str, "appId": str, "displayName": str, "accountEnabled": bool,
                         "servicePrincipalType": str, "appOwnerOrganizationId": str, "tags": list, "appRoles": list},
    "appRole": {"id": str, "displayName": str, "description": str, "value": str, "isEnabled": bool,
                "allowedMemberTypes": list, "origin": str},
    "appRoleAssignment": {"id": str, "appRoleId": str, "createdDateTime": str, "deletedDateTime": str,
                          "principalDisplayName": str, "principalId": str, "principalType": str,
                          "resourceDisplayName": str, "resourceId": str},
}


def graph_operation(path: str) -> str | None:
    for template in GRAPH_V1:
        if _template_rx(template).match(path):
            return template
    return None


def check_graph_object(obj: dict[str, Any], rtype: str) -> None:
    """Every property is one the reference lists for the type (or its subtype for directoryObject),
    with the documented JSON type (null allowed: Graph sends null for unset properties)."""
    if rtype == "directoryObject":
        kind = obj["@odata.type"].rsplit(".", 1)[-1]
        assert kind in ("user", "group", "servicePrincipal", "device", "orgContact"), kind
        rtype = kind
    props = GRAPH_TYPES[rtype]
    for k, v in obj.items():
        if k.startswith("@odata."):
            continue
        assert k in props, f"{rtype} has no property {k!r} in the v1.0 reference"
        assert v is None or isinstance(v, props[k]), f"{rtype}.{k} should be {props[k].__name__}, is {v!r}"
    if rtype == "user" and isinstance(obj.get("signInActivity"), dict):
        check_graph_object(obj["signInActivity"], "signInActivity")
    if rtype == "servicePrincipal":
        for role in obj.get("appRoles") or []:
            check_graph_object(role, "appRole")


class TestGraph:
    def _run(self, premium: bool = True) -> graph_server.GraphServer:
        t = graph_server.make_tenant(n_users=1100, n_groups=5, n_apps=3, big_group=1050, premium=premium)
        server = graph_server.GraphServer(t).start()
        try:
            s = EntraSettings(tenant_id=t.tenant_id, graph_url=server.root_url, authority=server.root_url)
            with EntraConnector(ConnectorContext("entra", s, EntraAuth(client_id="app-1",
                                                                       client_secret="s3cret-1"))) as c:
                c.validate_credentials()
                for cap in ("list_accounts", "list_resources", "list_entitlements", "find_entitlement_associations",
                            "get_last_activity"):
                    list(getattr(c, cap)())
        finally:
            server.stop()
        return server

    @pytest.mark.parametrize("premium", [True, False])
    def test_every_request_the_connector_sends_is_a_documented_operation_and_parameter(self, premium):
        server = self._run(premium)
        seen = set()
        for req in server.requests:
            if req.method == "POST":
                assert req.path == f"/{server.tenant.tenant_id}/oauth2/v2.0/token"
                assert req.form()["scope"] == "https://graph.microsoft.com/.default"
                assert req.form()["grant_type"] == "client_credentials"
                continue
            assert req.method == "GET"
            template = graph_operation(req.path)
            assert template, f"GET {req.path} is not a v1.0 operation ingest may use"
            params, rtype = GRAPH_V1[template]
            assert set(req.query) <= params, f"{template}: {set(req.query) - params}"
            if "$top" in req.query:
                assert 1 <= int(req.query["$top"]) <= 999
            if "$select" in req.query:  # only what is mapped, and only documented properties
                fields = set(req.query["$select"].split(","))
                assert fields <= set(GRAPH_TYPES[rtype if rtype != "directoryObject" else "user"]), fields
            seen.add(template)
        assert seen == set(GRAPH_V1)

    def test_the_fake_answers_have_the_documented_shape(self):
        t = graph_server.make_tenant(n_users=30, n_groups=6, n_apps=2)
        with graph_server.GraphServer(t) as server:
            tok = httpx.post(server.url(f"/{t.tenant_id}/oauth2/v2.0/token"), data={
                "grant_type": "client_credentials", "client_id": "app-1", "client_secret": "s3cret-1",
                "scope": "https://graph.microsoft.com/.default"}).json()
            assert set(tok) == {"token_type", "expires_in", "ext_expires_in", "access_token"}
            h = {"Authorization": f"Bearer {tok['access_token']}"}
            group = next(g for g, ms in t.members.items() if any(m in t.groups for m in ms))
            sp = sorted(t.service_principals)[0]
            for template, (_, rtype) in GRAPH_V1.items():
                path = template.replace("{id}", sp if "servicePrincipals" in template else group)
                params = {"$select": ",".join(GRAPH_TYPES["user"])} if template == "/v1.0/users" else {}
                params.update({"$expand": "principal"} if "roleAssignments" in template else {})
                body = httpx.get(server.url(path), headers=h, params=params).json()
                assert set(body) <= {"@odata.context", "value", "@odata.nextLink"}, body
                assert body["value"], f"{template}: an empty answer proves nothing"
                for obj in body["value"]:
                    check_graph_object(obj, rtype)
            err = httpx.get(server.url("/v1.0/users"), headers={"Authorization": "Bearer nope"})
            assert err.status_code == 401 and set(err.json()["error"]) == {"code", "message", "innerError"}


# -- Google Directory API (discovery document) ------------------------------------------------------------

def _discovery() -> dict[str, Any]:
    import googleapiclient

    path = Path(googleapiclient.__file__).parent / "discovery_cache" / "documents" / "admin.directory_v1.json"
    return _load(path, "install the test extra (google-api-python-client)")


@pytest.fixture(scope="module")
def directory() -> dict[str, Any]:
    return _discovery()


def discovery_methods(doc: dict[str, Any]) -> list[dict[str, Any]]:
    out = []

    def walk(resources: dict[str, Any]) -> None:
        for res in resources.values():
            out.extend(res.get("methods", {}).values())
            walk(res.get("resources", {}))

    walk(doc["resources"])
    return out


def discovery_schema(doc: dict[str, Any], name: str) -> dict[str, Any]:
    """A discovery schema as JSON Schema: ``$ref: Name`` -> ``#/definitions/Name``; objects are strict
    (a fake may not invent properties); ``format: int64`` values are strings, as the API sends them."""

    def conv(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                return {"$ref": f"#/definitions/{node['$ref']}"}
            out = {k: conv(v) for k, v in node.items() if k in ("type", "items", "additionalProperties", "enum")}
            if "properties" in node:
                out["properties"] = {name: conv(prop) for name, prop in node["properties"].items()}
            if out.get("type") == "object" and "properties" in out and "additionalProperties" not in out:
                out["additionalProperties"] = False
            if node.get("type") == "any":
                out.pop("type", None)
            return out
        return node

    return {"definitions": {k: conv(v) for k, v in doc["schemas"].items()}, "$ref": f"#/definitions/{name}"}


class TestGoogle:
    def test_every_request_the_connector_sends_is_a_method_with_its_parameters(self, directory):
        t = gds.make_tenant(n_users=700, n_groups=5, big_group=450)
        key = gds.service_account_key("http://placeholder/token")
        server = gds.GoogleDirectoryServer(t).start()
        key["token_uri"] = server.token_uri
        server.trust(key)
        try:
            c = GoogleWorkspaceConnector
            ctx = ConnectorContext("gws", c.Settings(api_url=server.root_url), c.Auth.model_validate(
                {"service_account_json": json.dumps(key), "subject": "user0@acme.test"}))
            with c(ctx) as conn:
                conn.validate_credentials()
                for cap in ("list_accounts", "list_entitlements", "find_entitlement_associations",
                            "get_last_activity"):
                    list(getattr(conn, cap)())
        finally:
            server.stop()
        methods = [(m, _template_rx("/" + m["path"].replace("{+", "{"))) for m in discovery_methods(directory)]
        seen = set()
        for req in server.requests:
            if req.path == "/token":
                continue
            assert req.method == "GET"
            found = [m for m, rx in methods if m["httpMethod"] == "GET" and rx.match(req.path)]
            assert found, f"GET {req.path} is not a Directory API method"
            method = min(found, key=lambda m: m["path"].count("{"))
            params = method.get("parameters", {})
            assert set(req.query) <= set(params) | set(directory["parameters"]), (method["id"], req.query)
            for name, value in req.query.items():
                spec = params.get(name, {})
                if "maximum" in spec:
                    assert int(value) <= int(spec["maximum"]), (method["id"], name, value)
                if "enum" in spec:
                    assert value in spec["enum"]
            assert set(method["scopes"]) & set(GOOGLE_SCOPES.values()), f"{method['id']}: no read-only scope"
            seen.add(method["id"])
        assert seen == {"directory.customers.get", "directory.users.list", "directory.groups.list",
                        "directory.members.list", "directory.roles.list", "directory.roleAssignments.list"}

    @pytest.mark.parametrize("path, schema", [
        ("/admin/directory/v1/customers/my_customer", "Customer"),
        ("/admin/directory/v1/users?customer=my_customer&maxResults=500", "Users"),
        ("/admin/directory/v1/groups?customer=my_customer", "Groups"),
        ("/admin/directory/v1/groups/{group}/members", "Members"),
        ("/admin/directory/v1/customer/my_customer/roles", "Roles"),
        ("/admin/directory/v1/customer/my_customer/roleassignments", "RoleAssignments"),
    ])
    def test_the_fake_answers_validate_against_the_discovery_schemas(self, directory, path, schema):
        t = gds.make_tenant(n_users=40, n_groups=4)
        key = gds.service_account_key("http://placeholder/token")
        with gds.GoogleDirectoryServer(t) as server:
            key["token_uri"] = server.token_uri
            server.trust(key)
            import jwt as pyjwt
            now = int(__import__("time").time())
            assertion = pyjwt.encode({"iss": key["client_email"], "sub": "user0@acme.test", "aud": server.token_uri,
                                      "iat": now, "exp": now + 600, "scope": " ".join(gds.SCOPES.values())},
                                     key["private_key"], algorithm="RS256")
            token = httpx.post(server.token_uri, data={"grant_type": gds.JWT_BEARER, "assertion": assertion}).json()
            group = sorted(g for g, ms in t.members.items() if ms)[0]
            r = httpx.get(server.url(path.format(group=group)),
                          headers={"Authorization": f"Bearer {token['access_token']}"})
        assert r.status_code == 200, r.text
        body = r.json()
        jsonschema.Draft4Validator(discovery_schema(directory, schema)).validate(body)
        assert len(body) > 2, "an empty answer proves nothing"
