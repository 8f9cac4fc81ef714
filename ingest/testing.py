"""A conformance kit for connectors, shipped with ingest (in the spirit of the Singer SDK's standard tests).

A plugin author points it at a running test source and gets one test class::

    # tests/test_conformance.py of a connector package
    import pytest
    from ingest.testing import Source, conformance_tests

    @pytest.fixture
    def acme_source():
        with AcmeFake() as fake:                       # the package's own fake server
            yield Source("acme", settings={"base_url": fake.url}, auth={"api_key": "k-123456"},
                         bad_auth={"api_key": "wrong-98765"})

    TestAcmeConformance = conformance_tests("acme_source")

The class checks what every connector owes its users: ``info`` is valid JSON
Schema with every setting in a form section and every secret write-only;
every declared capability yields records that validate, and its listing ends
within ``max_records``; a bad credential fails ``check`` with an
:class:`~ingest.errors.IngestError` that does not quote the secret; no secret
reaches the logs. (jsonschema is needed: it is in ingest's test extra.)
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, SecretStr, ValidationError

__all__ = ["Source", "conformance_tests", "check_info", "read_all", "secrets_of"]

# credential fields that hold a secret, whichever connector uses them (the credential kinds' names)
SECRET_FIELDS = frozenset({"password", "api_key", "api_secret", "bearer_token", "token", "client_secret", "private_key",
                           "service_account_json", "secret_access_key", "session_token", "access_token",
                           "refresh_token"})


@dataclass
class Source:
    """A connector type and a test source it can read: settings, a working auth and (optionally) a bad one."""

    type: str
    settings: dict[str, Any] = field(default_factory=dict)
    auth: dict[str, Any] = field(default_factory=dict)
    bad_auth: dict[str, Any] | None = None
    max_records: int = 1_000_000
    timeout_s: float = 120.0


def _properties(schema: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    yield from (schema.get("properties") or {}).items()
    for sub in (schema.get("$defs") or {}).values():
        yield from (sub.get("properties") or {}).items()


def check_info(type_name: str) -> dict[str, Any]:
    """The type's ``info`` document, checked: SDK keys, valid JSON Schemas, sections, write-only secrets."""
    import jsonschema

    from ingest.credentials._form import SECTIONS
    from ingest.registry import get_connector_class

    info = get_connector_class(type_name).info()
    missing = {"app_id", "user_friendly_name", "description", "logo_url", "authentication_schema",
               "request_settings_schema", "capabilities", "resource_types", "entitlement_types"} - set(info)
    assert not missing, f"{type_name}: info lacks {sorted(missing)}"
    problems = []
    for key in ("request_settings_schema", "authentication_schema"):
        jsonschema.validators.validator_for(info[key]).check_schema(info[key])
        for name, spec in _properties(info[key]):
            if name != "kind" and spec.get("x-section") not in SECTIONS:
                problems.append(f"{key}.{name}: no x-section (one of {', '.join(SECTIONS)})")
    for name, spec in _properties(info["authentication_schema"]):
        if name in SECRET_FIELDS and spec.get("writeOnly") is not True:
            problems.append(f"authentication_schema.{name}: a secret that is not writeOnly")
    assert not problems, f"{type_name}: " + "; ".join(problems)
    return info


def secrets_of(model: BaseModel) -> list[str]:
    """Every SecretStr value inside a validated auth model."""
    found: list[str] = []

    def walk(v: Any) -> None:
        if isinstance(v, SecretStr):
            found.append(v.get_secret_value())
        elif isinstance(v, BaseModel):
            for x in v.__dict__.values():
                walk(x)
        elif isinstance(v, dict):
            for x in v.values():
                walk(x)
        elif isinstance(v, list):
            for x in v:
                walk(x)

    walk(model)
    return [s for s in found if s]


def _context(source: Source, auth: dict[str, Any], state_dir: str | None):
    from ingest.connector import ConnectorContext
    from ingest.registry import get_connector_class

    cls = get_connector_class(source.type)
    ctx = ConnectorContext(name=f"conformance-{source.type}", settings=cls.Settings.model_validate(source.settings),
                           auth=cls.Auth.model_validate(auth), state_dir=state_dir)
    return cls, ctx


def read_all(source: Source, state_dir: str | None = None) -> dict[str, list[Any]]:
    """Every record of every capability the connector runs, validated; raises AssertionError on a bad one,
    on a listing longer than ``max_records`` or slower than ``timeout_s``."""
    from ingest.records import ENTITY_MODELS
    from ingest.runner import _entity_of

    cls, ctx = _context(source, source.auth, state_dir)
    got: dict[str, list[Any]] = {}
    deadline = time.monotonic() + source.timeout_s
    with cls(ctx) as connector:
        for capability, records in connector.streams():
            n = 0
            for item in records:
                n += 1
                assert n <= source.max_records, f"{capability}: more than {source.max_records} records (paging loops?)"
                assert time.monotonic() < deadline, f"{capability}: not finished within {source.timeout_s:g} s"
                entity = _entity_of(capability, item)
                model = ENTITY_MODELS[entity]
                try:
                    rec = item if isinstance(item, model) else model.model_validate(
                        item.model_dump() if isinstance(item, BaseModel) else item)
                except ValidationError as e:
                    raise AssertionError(f"{capability}: invalid {entity} record: {e.errors()[0]}") from None
                got.setdefault(entity, []).append(rec)
            got.setdefault(capability, [])
    return got


def conformance_tests(source_fixture: str) -> type:
    """A test class over the :class:`Source` the named pytest fixture yields."""
    import pytest
    from structlog.testing import capture_logs

    from ingest.errors import IngestError
    from ingest.redact import structlog_processor

    def source(request) -> Source:
        return request.getfixturevalue(source_fixture)

    class ConformanceTests:
        def test_info_is_valid_json_schema_with_sections_and_locked_secrets(self, request):
            check_info(source(request).type)

        def test_every_capability_yields_valid_records_and_its_listing_ends(self, request, tmp_path):
            src = source(request)
            got = read_all(src, str(tmp_path))
            assert got.get("account"), f"{src.type}: list_accounts yielded no account from the test source"

        def test_a_bad_credential_fails_check_cleanly(self, request, tmp_path):
            src = source(request)
            if src.bad_auth is None:
                pytest.fail("the Source gives no bad_auth: every connector must fail `check` on a bad credential")
            cls, ctx = _context(src, src.bad_auth, str(tmp_path))
            with pytest.raises(IngestError) as e:
                with cls(ctx) as connector:
                    connector.validate_credentials()
            for secret in secrets_of(ctx.auth):
                assert secret not in str(e.value), f"{src.type}: the error quotes the secret"

        def test_no_secret_reaches_the_logs(self, request, tmp_path):
            src = source(request)
            with capture_logs(processors=[structlog_processor]) as logs:
                read_all(src, str(tmp_path))
            _, ctx = _context(src, src.auth, str(tmp_path))
            dumped = json.dumps(logs, default=str)
            for secret in secrets_of(ctx.auth):
                assert secret not in dumped, f"{src.type}: a secret reached the logs"

    ConformanceTests.__name__ = ConformanceTests.__qualname__ = f"Conformance[{source_fixture}]"
    return ConformanceTests
