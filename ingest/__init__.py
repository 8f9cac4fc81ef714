"""ingest: a daily, queryable record of who has access to what.

The names a connector author needs are re-exported here; everything else is
implementation. Connectors subclass :class:`Connector`, yield the records of
:mod:`ingest.records`, and fetch through :class:`HttpClient`.
"""

__version__ = "0.1.0"

from ingest.connector import Connector, ConnectorContext, EntitlementType, ResourceType  # noqa: E402
from ingest.errors import (  # noqa: E402
    AuthError,
    ConfigError,
    FatalError,
    IngestError,
    NotFoundError,
    ProtocolError,
    RetryableError,
    SourceError,
)
from ingest.http import HttpClient, HttpSettings  # noqa: E402
from ingest.records import (  # noqa: E402
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
