"""``ingest connector TYPE CAPABILITY``: ingest's own connectors answer in the Lumos SDK's on-prem CLI shape,
checked against the SDK's own response models (connector-sdk-types)."""

from __future__ import annotations

import gzip
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from connector_sdk_types.generated import (
    ErrorResponse,
    FindEntitlementAssociationsResponse,
    GetLastActivityResponse,
    ListAccountsResponse,
    ListEntitlementsResponse,
    ListExpensesResponse,
    ListResourcesResponse,
    ValidateCredentialsResponse,
)
from typer.testing import CliRunner

from ingest.cli import app
from tests.engine import cli, output, people

MODELS = {"list_accounts": ListAccountsResponse, "list_resources": ListResourcesResponse,
          "list_entitlements": ListEntitlementsResponse,
          "find_entitlement_associations": FindEntitlementAssociationsResponse,
          "get_last_activity": GetLastActivityResponse, "list_expenses": ListExpensesResponse}
ROOT = Path(__file__).resolve().parent.parent


def call(type_name: str, capability: str, request: dict[str, Any] | None = None, *extra: str) -> dict[str, Any]:
    args = ["connector", type_name, capability]
    if request is not None:
        args += ["--json", json.dumps(request)]
    res = CliRunner().invoke(app, [*args, *extra])
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


def pages(type_name: str, capability: str, request: dict[str, Any], size: int) -> list[dict[str, Any]]:
    """Every page of a listing, each validated by the SDK's response model; returns them in order."""
    got, token = [], None
    for _ in range(1000):
        doc = call(type_name, capability, {**request, "page": {"token": token, "size": size}})
        MODELS[capability].model_validate(doc)
        assert "is_error" not in doc, doc
        got.append(doc)
        token = (doc.get("page") or {}).get("token")
        if token is None:
            return got
    raise AssertionError("the listing did not end")


@pytest.fixture
def demo_request(tmp_path) -> dict[str, Any]:
    return {"settings": {"users": 40, "groups": 6, "workspaces": 10, "day": 0, "state_dir": str(tmp_path)}}


class TestShapes:
    @pytest.mark.parametrize("capability", ["list_accounts", "list_resources", "list_entitlements",
                                            "find_entitlement_associations"])
    def test_demo_pages_are_valid_sdk_responses_and_add_up_to_the_whole_listing(self, demo_request, capability):
        whole = call("demo", capability, demo_request)
        MODELS[capability].model_validate(whole)
        assert whole["page"] is None and len(whole["response"]) > 7
        paged = pages("demo", capability, demo_request, size=7)
        assert len(paged) == -(-len(whole["response"]) // 7)
        assert [r for p in paged for r in p["response"]] == whole["response"]
        assert all(p["page"]["size"] == 7 for p in paged[:-1]) and paged[-1]["page"] is None

    def test_records_carry_the_normalized_fields_under_the_sdk_names(self, tmp_path, database_url):
        data = {"account": people(2), "entitlement": [
            {"entitlement_type": "role", "resource_type": "workspace", "resource_id": "w1", "entitlement_id": "owner",
             "label": "Owner"}],
            "resource": [{"resource_type": "workspace", "resource_id": "w1", "label": "Main"}],
            "assignment": [{"account_id": "u1", "entitlement_id": "owner", "resource_type": "workspace",
                            "resource_id": "w1"}],
            "nested_entitlement": [{"entitlement_id": "owner", "member_entitlement_id": "g"}]}
        path = tmp_path / "org.json"
        path.write_text(json.dumps(data))
        req = {"settings": {"path": str(path)}}
        [acc] = call("file", "list_accounts", {**req, "page": {"size": 1}})["response"]
        assert acc == {"integration_specific_id": "u0", "email": "user0@example.com", "given_name": None,
                       "family_name": None, "username": "user0", "user_status": "ACTIVE", "account_type": "user",
                       "extra_data": {"display_name": "User 0"}, "custom_attributes": {"department": "sales"}}
        [ent] = call("file", "list_entitlements", req)["response"]
        assert (ent["integration_specific_id"], ent["integration_specific_resource_id"], ent["entitlement_type"]) == (
            "owner", "w1", "role")
        grants = call("file", "find_entitlement_associations", req)
        FindEntitlementAssociationsResponse.model_validate(grants)
        assert grants["response"] == [{"account_id": "u1", "integration_specific_entitlement_id": "owner",
                                       "integration_specific_resource_id": "w1"}]  # nesting has no SDK model

    def test_info_and_validate_credentials(self, tmp_path):
        path = tmp_path / "org.json"
        path.write_text(json.dumps({"account": people(3), "token": "tok-good-8c7b6a"}))
        info = call("file", "info")["response"]
        assert info["app_id"] == "file" and "list_accounts" in info["capabilities"]
        ok = call("file", "validate_credentials", {"settings": {"path": str(path)},
                                                   "auth": {"token": "tok-good-8c7b6a"}})
        ValidateCredentialsResponse.model_validate(ok)
        assert ok["response"]["valid"] is True


class TestErrors:
    def _error(self, doc: dict[str, Any]) -> dict[str, Any]:
        ErrorResponse.model_validate(doc)
        assert doc["is_error"] is True
        return doc["error"]

    def test_refused_credentials_are_unauthorized_and_refreshable_without_the_secret(self, tmp_path):
        path = tmp_path / "org.json"
        path.write_text(json.dumps({"account": people(1), "token": "tok-good-8c7b6a"}))
        res = CliRunner().invoke(app, ["connector", "file", "validate_credentials", "--json", json.dumps(
            {"settings": {"path": str(path)}, "auth": {"token": "tok-wrong-1f2e3d"}})])
        assert res.exit_code == 0  # like the SDK's CLI: the error is in the answer
        err = self._error(json.loads(res.stdout))
        assert err["error_code"] == "unauthorized" and err["status_code"] == 401
        assert err["error_metadata"]["refreshable"] is True and err["app_id"] == "file"
        assert "tok-wrong-1f2e3d" not in res.output

    @pytest.mark.parametrize("capability, request_, code, text", [
        ("assign_entitlement", {}, "unsupported_operation", "has no capability 'assign_entitlement'"),
        ("list_accounts", {"settings": {}}, "bad_request", "settings.path: Field required"),
        ("list_accounts", {"settings": {"path": "x"}, "auth": {"password": "p"}}, "bad_request", "auth.password"),
        ("list_accounts", {"settings": {"path": "{path}"}, "page": {"token": "not-ours"}}, "invalid_page_token",
         "not issued by this listing"),
        ("list_accounts", {"settings": {"path": "{path}"}, "page": {"size": 0}}, "bad_request", "page.size"),
    ])
    def test_bad_requests_answer_with_the_sdk_error_codes(self, tmp_path, capability, request_, code, text):
        path = tmp_path / "org.json"
        path.write_text(json.dumps({"account": people(2)}))
        request_ = json.loads(json.dumps(request_).replace("{path}", str(path)))
        err = self._error(call("file", capability, request_))
        assert err["error_code"] == code and text in err["message"]

    def test_a_source_failing_mid_listing_is_a_retryable_bad_gateway(self, tmp_path):
        path = tmp_path / "org.json"
        path.write_text(json.dumps({"account": people(5)}))
        err = self._error(call("file", "list_accounts", {"settings": {"path": str(path), "fail_in": "account",
                                                                      "fail_after": 2}}))
        assert err["error_code"] == "bad_gateway" and err["error_metadata"]["retryable"] is True

    def test_usage_errors_exit_2(self, tmp_path):
        res = CliRunner().invoke(app, ["connector", "nosuchtype", "list_accounts", "--json", "{}"])
        assert res.exit_code == 2 and "unknown connector type 'nosuchtype'" in output(res)
        res = CliRunner().invoke(app, ["connector", "file", "list_accounts"])
        assert res.exit_code == 2 and "--json" in output(res)
        res = CliRunner().invoke(app, ["connector", "file", "list_accounts", "--json", "{}",
                                       "--result-file-path", str(tmp_path / "out.json")])
        assert res.exit_code == 2 and "must end in .gz" in output(res)


def test_json_file_in_and_gzipped_result_out_as_the_sdk_cli_does(tmp_path):
    path = tmp_path / "org.json"
    path.write_text(json.dumps({"account": people(3)}))
    req, out = tmp_path / "req.json", tmp_path / "out.json.gz"
    req.write_text(json.dumps({"settings": {"path": str(path)}, "page": {"size": 2}}))
    res = CliRunner().invoke(app, ["connector", "file", "list_accounts", "--json-file", str(req),
                                   "--result-file-path", str(out)])
    assert res.exit_code == 0 and res.stdout == ""
    doc = json.loads(gzip.decompress(out.read_bytes()))
    ListAccountsResponse.model_validate(doc)
    assert [a["integration_specific_id"] for a in doc["response"]] == ["u0", "u1"] and doc["page"]["token"]


def test_an_ingest_connector_served_this_way_is_a_source_for_the_lumos_connector(tmp_path, database_url, monkeypatch):
    """Round trip: `ingest connector file ...` as the on-prem executable of a `lumos` connector."""
    entry = ("from ingest import registry; registry.BUILTIN['file'] = 'tests.fakes:FileConnector'; "
             "from ingest.cli import main; main()")
    data = {"account": people(5),
            "entitlement": [{"entitlement_type": "group", "entitlement_id": "g1", "label": "G1"}],
            "assignment": [{"account_id": f"u{i}", "entitlement_id": "g1"} for i in range(3)]}
    (tmp_path / "org.json").write_text(json.dumps(data))
    command = f"{sys.executable} -c \"{entry}\" connector file"
    cfg = tmp_path / "schedules.yaml"
    cfg.write_text(yaml.safe_dump({"connectors": {
        "direct": {"type": "file", "settings": {"path": str(tmp_path / "org.json")}},
        "relayed": {"type": "lumos", "settings": {"command": command, "page_size": 2,
                                                  "connector_settings": {"path": str(tmp_path / "org.json")}}}}}))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p))
    for name in ("direct", "relayed"):
        res = cli(cfg, database_url, "run", name)
        assert res.exit_code == 0, output(res)
    from tests.engine import query

    def rows(connector: str) -> list[dict[str, Any]]:
        return query(database_url, "SELECT account_id, email, username, display_name, status FROM ingest.accounts "
                                   "WHERE connector = %s ORDER BY account_id", connector)

    assert rows("relayed") == rows("direct") and len(rows("direct")) == 5
    grants = query(database_url, "SELECT connector, count(*) AS n FROM ingest.assignments GROUP BY connector "
                                 "ORDER BY connector")
    assert grants == [{"connector": "direct", "n": 3}, {"connector": "relayed", "n": 3}]
