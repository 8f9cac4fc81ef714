"""ingest: a daily, queryable record of who has access to what.

The names a connector author needs are re-exported here; everything else is
implementation. Connectors subclass :class:`Connector`, yield the records of
:mod:`ingest.records`, and fetch through :class:`HttpClient`.
"""

__version__ = "0.1.0"

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ingest.connector import Connector, ConnectorContext, EntitlementType, ResourceType
    from ingest.errors import (
        AuthError,
        ConfigError,
        FatalError,
        IngestError,
        NotFoundError,
        ProtocolError,
        RetryableError,
        SourceError,
    )
    from ingest.http import HttpClient, HttpSettings
    from ingest.records import (
        Account,
        AccountStatus,
        AccountType,
        Assignment,
        CustomAttribute,
        Entitlement,
        Expense,
        LastActivity,
        NestedEntitlement,
        Resource,
    )

# Loaded on first use, so a process that needs one part of ingest (a staging worker) does not pay
# for all of it (pydantic models, the HTTP layer, the connector base).
_HOME = {
    **dict.fromkeys(("Connector", "ConnectorContext", "EntitlementType", "ResourceType"), "ingest.connector"),
    **dict.fromkeys(("AuthError", "ConfigError", "FatalError", "IngestError", "NotFoundError", "ProtocolError",
                     "RetryableError", "SourceError"), "ingest.errors"),
    **dict.fromkeys(("HttpClient", "HttpSettings"), "ingest.http"),
    **dict.fromkeys(("Account", "AccountStatus", "AccountType", "Assignment", "CustomAttribute", "Entitlement",
                     "Expense", "LastActivity", "NestedEntitlement", "Resource"), "ingest.records"),
}


def __getattr__(name: str):
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module 'ingest' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


__all__ = [
    "Account",
    "AccountStatus",
    "AccountType",
    "Assignment",
    "AuthError",
    "ConfigError",
    "Connector",
    "ConnectorContext",
    "CustomAttribute",
    "Entitlement",
    "EntitlementType",
    "FatalError",
    "HttpClient",
    "HttpSettings",
    "IngestError",
    "Expense",
    "LastActivity",
    "NestedEntitlement",
    "NotFoundError",
    "ProtocolError",
    "Resource",
    "ResourceType",
    "RetryableError",
    "SourceError",
    "__version__",
]
