"""The github connector and the GitHub fake against GitHub's own OpenAPI description (npm
``@octokit/openapi``, ``generated/api.github.com.json``, installed by ``make node-deps``): every
request the connector sends is an operation there with only the query parameters (and enum values)
it declares, and every answer of the fake validates against that operation's response schema."""

from __future__ import annotations

import copy
import json
import re
import uuid
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from tests.servers.github_server import GithubServer, make_org
from tests.test_github import app_key, connector, expected_state, read_state

SPEC = Path(__file__).parent / "node" / "node_modules" / "@octokit" / "openapi" / "generated" / "api.github.com.json"


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    assert SPEC.exists(), f"{SPEC} is missing: run `make node-deps` (npm ci in tests/node)"
    return json.loads(SPEC.read_text())


@pytest.fixture(scope="module")
def components(spec) -> dict[str, Any]:
    return {"components": {"schemas": _nullable(copy.deepcopy(spec["components"]["schemas"]))}}


def _nullable(schema: Any) -> Any:
    """OpenAPI 3.0's ``nullable: true`` as JSON Schema (``type: [t, "null"]``, or ``anyOf`` with null)."""
    if isinstance(schema, dict):
        out = {k: _nullable(v) for k, v in schema.items() if k != "nullable"}
        if schema.get("nullable") is True:
            if isinstance(out.get("type"), str):
                out["type"] = [out["type"], "null"]
                if "enum" in out:
                    out["enum"] = [*out["enum"], None]
            else:
                out = {"anyOf": [out, {"type": "null"}]}
        return out
    if isinstance(schema, list):
        return [_nullable(s) for s in schema]
    return schema


def _resolve(spec: dict[str, Any], obj: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in obj:
        kind, name = obj["$ref"].split("/")[-2:]
        obj = spec["components"][kind][name]
    return obj


@pytest.fixture(scope="module")
def routes(spec) -> list[tuple[re.Pattern, str, dict[str, Any]]]:
    out = [(re.compile("^" + re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(t)) + "$"), t, ops)
           for t, ops in spec["paths"].items()]
    return sorted(out, key=lambda r: r[1].count("{"))  # literal segments win


def operation(routes, method: str, path: str) -> tuple[str, dict[str, Any]]:
    """The description's (template, operation) for a concrete path."""
    for rx, template, ops in routes:
        if method.lower() in ops and rx.match(path):
            return template, ops[method.lower()]
    raise AssertionError(f"{method} {path} is not an operation of GitHub's REST API")


class Recording(GithubServer):
    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.answers: list[tuple[Any, Any]] = []

    def dispatch(self, req):
        reply = super().dispatch(req)
        self.answers.append((req, reply))
        return reply


@pytest.fixture(scope="module")
def recorded() -> Recording:
    token = "ghp_" + uuid.uuid4().hex
    org = make_org(n_members=40, n_repos=12, n_teams=5)
    answers = []
    private, public = app_key()
    app = {"app_id": "4242", "installation_id": "77", "private_key": private}
    for marks, auth in ((True, token), (False, token), (True, app)):
        with Recording(org, token, member_marks=marks, app=("4242", "77", public)) as server:
            conn = connector(server, auth, per_page=15)
            assert conn.validate_credentials()["login"] == "octo-org"
            assert read_state(conn) == expected_state(org, marks)
            answers += server.answers
    return answers


def test_every_request_is_a_documented_operation_with_documented_parameters(spec, routes, recorded):
    seen = set()
    for req, _ in recorded:
        template, op = operation(routes, req.method, req.path)
        params = {p["name"]: p for p in (_resolve(spec, p) for p in op.get("parameters", [])) if p["in"] == "query"}
        for name, value in req.query.items():
            assert name in params, f"{req.method} {template}: {name!r} is not a documented query parameter"
            schema = params[name].get("schema", {})
            if "enum" in schema:
                assert value in schema["enum"], f"{template}: {name}={value!r} not in {schema['enum']}"
            if name == "per_page":
                assert 1 <= int(value) <= 100
        seen.add(template)
    assert seen == {
        "/orgs/{org}", "/orgs/{org}/members", "/orgs/{org}/outside_collaborators", "/orgs/{org}/teams",
        "/orgs/{org}/teams/{team_slug}/members", "/orgs/{org}/teams/{team_slug}/repos", "/orgs/{org}/repos",
        "/repos/{owner}/{repo}/collaborators", "/orgs/{org}/organization-roles",
        "/orgs/{org}/organization-roles/{role_id}/users", "/orgs/{org}/organization-roles/{role_id}/teams",
        "/app/installations/{installation_id}/access_tokens"}


def test_every_answer_of_the_fake_validates_against_the_description(spec, routes, components, recorded):
    checked = 0
    validators: dict[tuple[str, int], jsonschema.Validator] = {}
    for req, reply in recorded:
        template, op = operation(routes, req.method, req.path)
        if (template, reply.status) not in validators:
            response = _resolve(spec, op["responses"][str(reply.status)])
            schema = response["content"]["application/json"]["schema"]
            validators[template, reply.status] = jsonschema.Draft4Validator(
                {**components, **_nullable(copy.deepcopy(schema))})
        validator = validators[template, reply.status]
        errors = sorted(validator.iter_errors(reply.body), key=lambda e: list(e.path))
        assert not errors, f"{template}: {errors[0].message} at {list(errors[0].path)}"
        checked += 1
    assert checked == len(recorded) > 50
