"""The connector interface (after the Lumos connector SDK).

A connector describes itself with class attributes, validates credentials, and
implements the read capabilities its source has. Each capability is a
generator of records (:mod:`ingest.records` models or dicts of their shape);
the engine validates, counts and writes them. Connectors never touch the
database and never write to the source.

    class Acme(Connector):
        type = "acme"
        name = "Acme"
        description = "Acme SaaS users and roles."
        Settings = AcmeSettings          # pydantic model, includes HttpSettings
        Auth = BearerTokenAuth           # pydantic model of credentials (SecretStr)

        def validate_credentials(self):
            return self.http.get_json("/me")

        def list_accounts(self):
            for raw in self.http.records("/users", paginator=CursorPaginator("next"), selector="data"):
                yield map_user(raw)       # a pure function, tested without HTTP
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import structlog
from pydantic import BaseModel, ConfigDict

from ingest.http import CancelToken, HttpClient, HttpSettings, HttpStats, compile_read_only

__all__ = [
    "CAPABILITIES",
    "Connector",
    "ConnectorContext",
    "NoAuth",
    "NoSettings",
    "ResourceType",
    "EntitlementType",
]

# Capability name -> entity it yields (the order is the order a run fetches in).
CAPABILITIES: dict[str, str | None] = {
    "list_accounts": "account",
    "list_resources": "resource",
    "list_entitlements": "entitlement",
    "find_entitlement_associations": "assignment",  # also yields nested_entitlement
    "list_expenses": "expense",
    "get_last_activity": "last_activity",
    "list_custom_attributes_schema": None,
}


class NoSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")


class NoAuth(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ResourceType(BaseModel):
    type_id: str
    type_label: str


class EntitlementType(BaseModel):
    type_id: str
    type_label: str
    resource_type_id: str = ""
    min: int = 0
    max: int | None = None


@dataclass
class ConnectorContext:
    """What the engine hands a connector: its instance name, validated settings and auth."""

    name: str
    settings: BaseModel
    auth: BaseModel
    stats: HttpStats = field(default_factory=HttpStats)
    state_dir: str | None = None  # a directory for small connector state files (beside the embedded database)
    credentials: Any = None  # the CredentialStore tokens go to (ingest.credentials); None: in memory only
    cancel: CancelToken | None = None  # the run's cancellation: Ctrl-C, shutdown, timeout (see ingest.http)
    # the connector class's read_only_requests (set by Connector.__init__): the HTTP guard lets these out
    read_only_requests: tuple[tuple[str, ...], ...] = ()

    @property
    def log(self):
        return structlog.get_logger("ingest.connector").bind(connector=self.name)

    def http_client(self, base_url: str, **kw: Any) -> HttpClient:
        """The one way a connector gets an HTTP client (timeouts, retries, limits, read-only guard)."""
        settings = self.settings if isinstance(self.settings, HttpSettings) else HttpSettings()
        bind = getattr(kw.get("auth"), "bind", None)
        if bind is not None and self.credentials is not None:
            bind(self.credentials, self.name)  # tokens it obtains are stored and refreshed single-flight
        kw.setdefault("cancel", self.cancel)
        kw.setdefault("read_only_requests", self.read_only_requests)
        return HttpClient(base_url, settings=settings, connector=self.name, stats=self.stats, **kw)


class Connector:
    """Base class of every connector; subclasses set the class attributes and capabilities."""

    type: ClassVar[str]
    name: ClassVar[str]
    description: ClassVar[str] = ""
    app_id: ClassVar[str | None] = None  # defaults to ``type``
    logo_url: ClassVar[str | None] = None
    Settings: ClassVar[type[BaseModel]] = NoSettings
    Auth: ClassVar[type[BaseModel]] = NoAuth
    resource_types: ClassVar[list[ResourceType]] = []
    entitlement_types: ClassVar[list[EntitlementType]] = []
    # Requests other than GET/HEAD that only read: (method, path regex[, body regex]), matched with re.search
    # against the path as sent and the body, e.g. ("POST", r"/\.search$") or an OAuth token endpoint
    # ("POST", r"/oauth2/v2\.0/token$"). The one declaration: the HTTP guard of ctx.http_client lets these
    # (on base_url's origin; the auth's token_url wherever it is) and only these out besides GET/HEAD, and the
    # conformance kit (ingest.testing) checks nothing else reached the source.
    read_only_requests: ClassVar[tuple[tuple[str, ...], ...]] = ()
    # The run checkpoints each stream and a later attempt continues from what was staged (ingest.checkpoints).
    # Set it only when every capability reads declared streams (ingest.streams) record by record as it
    # yields them, and none relies on what another capability read in the same process.
    resumable: ClassVar[bool] = False

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        compile_read_only(cls.read_only_requests)  # a malformed declaration fails at import, naming the entry

    def __init__(self, ctx: ConnectorContext) -> None:
        ctx.read_only_requests = type(self).read_only_requests  # the clients it builds guard with the declaration
        self.ctx = ctx
        self.settings = ctx.settings
        self.auth = ctx.auth
        self.log = ctx.log

    # -- lifecycle ---------------------------------------------------------
    def validate_credentials(self) -> dict[str, Any]:
        """One cheap authenticated call; returns tenant info to print. Raises on failure."""
        raise NotImplementedError

    def close(self) -> None:
        """Release clients, servers, connections."""
        http = self.__dict__.get("http")
        if http is not None:
            http.close()

    def __enter__(self) -> Connector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- read capabilities (override those the source has) ----------------
    def list_accounts(self) -> Iterable[Any]:
        raise NotImplementedError

    def list_resources(self) -> Iterable[Any]:
        raise NotImplementedError

    def list_entitlements(self) -> Iterable[Any]:
        raise NotImplementedError

    def find_entitlement_associations(self) -> Iterable[Any]:
        raise NotImplementedError

    def list_expenses(self) -> Iterable[Any]:
        raise NotImplementedError

    def get_last_activity(self) -> Iterable[Any]:
        raise NotImplementedError

    def list_custom_attributes_schema(self) -> Iterable[Any]:
        raise NotImplementedError

    # -- self-description ---------------------------------------------------
    @classmethod
    def capabilities(cls) -> list[str]:
        return [c for c in CAPABILITIES if getattr(cls, c) is not getattr(Connector, c)]

    @classmethod
    def info(cls) -> dict[str, Any]:
        """The Lumos SDK ``info`` document; every setting carries its form section (``x-section``)."""
        from ingest.credentials._form import mark_sections

        return {
            "app_id": cls.app_id or cls.type,
            "type": cls.type,
            "user_friendly_name": cls.name,
            "description": cls.description,
            "logo_url": cls.logo_url,
            "authentication_schema": mark_sections(cls.Auth.model_json_schema()),
            "request_settings_schema": mark_sections(cls.Settings.model_json_schema()),
            "capabilities": ["validate_credentials", *cls.capabilities()],
            "resource_types": [r.model_dump() for r in cls.resource_types],
            "entitlement_types": [e.model_dump() for e in cls.entitlement_types],
        }

    def streams(self) -> Iterator[tuple[str, Iterable[Any]]]:
        """(capability, record iterable) for every read capability, in fetch order."""
        for cap, entity in CAPABILITIES.items():
            if entity and cap in self.capabilities():
                yield cap, getattr(self, cap)()


def cached_client(fn):
    """Decorator for a connector property that builds its HttpClient once."""
    return functools.cached_property(fn)
