"""The public surface is explicit and pinned (like httpx's test_exported_members)."""

from pathlib import Path

import ingest


def test_exported_members_are_exactly_the_public_api():
    assert sorted(ingest.__all__) == sorted([
        "Account", "AccountStatus", "AccountType", "Assignment", "AuthError", "ConfigError", "Connector",
        "ConnectorContext", "CustomAttribute", "Entitlement", "EntitlementType", "Expense", "FatalError", "HttpClient",
        "HttpSettings", "IngestError", "LastActivity", "NestedEntitlement", "NotFoundError", "ProtocolError",
        "Resource", "ResourceType", "RetryableError", "SourceError", "__version__",
    ])
    for name in ingest.__all__:
        assert getattr(ingest, name) is not None


def test_every_builtin_connector_describes_itself_with_valid_schemas():
    from ingest.registry import BUILTIN, get_connector_class

    for type_name in BUILTIN:
        cls = get_connector_class(type_name)
        info = cls.info()
        assert info["app_id"] and info["user_friendly_name"] and info["description"], type_name
        for key in ("authentication_schema", "request_settings_schema"):
            assert info[key]["type"] == "object", (type_name, key)
        assert "validate_credentials" in info["capabilities"]
        assert "list_accounts" in info["capabilities"], type_name


def test_the_projects_tests_package_is_not_shadowed_by_an_installed_one():
    """connector-py installs a top-level ``tests`` package; pytest must import this repository's."""
    import tests

    assert Path(tests.__file__).resolve().parent == Path(__file__).resolve().parent
