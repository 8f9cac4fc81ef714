"""``type: lumos``: any Lumos Connector SDK (``connector-py``) connector as a source.

The connector runs either in process (``integration: module:attribute``, its
``Integration`` object; ``await integration.dispatch(capability, json)``) or as
its on-prem executable (``command:``; ``<app> <capability> --json-file F
--result-file-path R.gz``). Either way ingest speaks the SDK's request and
response documents::

    request   {"request": {...}, "settings": {...}, "page": {"token": T, "size": N},
               "credentials": [{"id": "<app>_oauth", "oauth": {"access_token": ...}}]}   # or "auth": {...}
    response  {"response": [...], "page": {"token": "next" | null, "size": N}}
    error     {"is_error": true, "error": {"message", "error_code", "error_metadata": {...}, ...}}

The engine pages until the token is null, refuses a token it has already seen
and caps the pages. Found* records map one to one onto ingest's records (pure
functions below). Errors map by ``error_code`` / ``error_metadata``:
``rate_limit`` is retried after ``retry_after_seconds`` (or a backoff),
``unauthorized`` is refreshed once through the connector's own
``refresh_access_token``, other retryable faults are retried a few times, and
the rest fail the run cleanly (AuthError, NotFoundError, FatalError).
"""

from __future__ import annotations

import asyncio
import gzip
import importlib
import importlib.util
import json
import os
import shlex
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import structlog
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from ingest.connector import CAPABILITIES, Connector
from ingest.errors import (
    AuthError,
    ConfigError,
    FatalError,
    NotFoundError,
    PaginationLoopError,
    ProtocolError,
    RateLimitedError,
    RetryableError,
    SourceError,
)
from ingest.redact import redact, register_secret

__all__ = ["LumosConnector", "LumosSettings", "LumosAuth", "INSTALL_HINT"]

log = structlog.get_logger("ingest.connectors.lumos")

INSTALL_HINT = "type: lumos runs Lumos Connector SDK connectors in process: pip install 'ingest[lumos]'"
# Environment the connector sees beside ingest's own (LUMOS_LOG_LEVEL / LUMOS_LOG_DIRECTORY pass through as set).
SDK_ENV = {"DD_DOGSTATSD_DISABLE": "true"}
_READ = ("list_accounts", "list_resources", "list_entitlements", "find_entitlement_associations",
         "list_expenses", "get_last_activity")
_RETRYABLE = {"bad_gateway", "service_error", "request_timeout", "connection_timeout", "connection_closed",
              "connection_rejected", "internal_error"}
_AUTH = {"unauthorized", "unauthenticated", "authentication_expired", "creds_revoked", "permission_denied"}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LumosSettings(_Strict):
    integration: str | None = Field(None, description="The connector's Integration object, `module:attribute` "
                                    "(run in process).", json_schema_extra={"x-section": "general"})
    command: str | None = Field(None, description="The connector's on-prem executable, with arguments if any "
                                "(run as a process).", json_schema_extra={"x-section": "general"})
    connector_settings: dict[str, Any] = Field(default_factory=dict, description=(
        "The connector's own request settings (its info() `request_settings_schema`)."),
        json_schema_extra={"x-section": "general"})
    page_size: int = Field(100, ge=1, le=10_000, description="Records asked for per page.",
                           json_schema_extra={"x-section": "additional"})
    max_pages: int = Field(100_000, ge=1, description="A listing with more pages fails (a connector paging forever).",
                           json_schema_extra={"x-section": "advanced"})
    timeout: float = Field(600.0, gt=0, description="Seconds one call of the executable may take.",
                           json_schema_extra={"x-section": "advanced"})
    max_retries: int = Field(5, ge=0, le=50, description="Retries of a throttled or transiently failed call.",
                             json_schema_extra={"x-section": "advanced"})
    backoff_initial: float = Field(1.0, ge=0, description="First backoff delay in seconds (doubles each retry).",
                                   json_schema_extra={"x-section": "advanced"})
    max_retry_after: float = Field(300.0, ge=0, description="Longest retry_after_seconds honoured.",
                                   json_schema_extra={"x-section": "advanced"})
    activity_batch: int = Field(100, ge=1, le=10_000, description="Account ids per get_last_activity call.",
                                json_schema_extra={"x-section": "advanced"})

    @model_validator(mode="after")
    def _one_way_to_run(self) -> LumosSettings:
        if bool(self.integration) == bool(self.command):
            raise ValueError("set exactly one of `integration` (module:attribute, in process) or `command` "
                             "(the connector's executable)")
        if self.integration:
            module, sep, attr = self.integration.partition(":")
            if not (module and sep and attr):
                raise ValueError(f"integration {self.integration!r} must be module:attribute, "
                                 "e.g. pretend_app.integration:integration")
            if importlib.util.find_spec("connector") is None:
                raise ValueError(INSTALL_HINT)
        return self


_GENERAL = {"x-section": "general"}
_SECRET = {"x-section": "general", "writeOnly": True}


class OAuthSecret(_Strict):
    access_token: SecretStr = Field(..., json_schema_extra=_SECRET)
    refresh_token: SecretStr | None = Field(None, description="Used to refresh through refresh_access_token.",
                                            json_schema_extra=_SECRET)
    client_id: str | None = Field(None, description="For refresh_access_token.", json_schema_extra=_GENERAL)
    client_secret: SecretStr | None = Field(None, description="For refresh_access_token.", json_schema_extra=_SECRET)


class TokenSecret(_Strict):
    token: SecretStr = Field(..., json_schema_extra=_SECRET)


class BasicSecret(_Strict):
    username: str = Field(..., json_schema_extra=_GENERAL)
    password: SecretStr = Field(..., json_schema_extra=_SECRET)


def _seal(value: Any, key: str = "") -> Any:
    """Leaf strings of a given credential as SecretStr (except ids and user names)."""
    if isinstance(value, dict):
        return {k: _seal(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [_seal(v, key) for v in value]
    if isinstance(value, str) and key not in ("id", "username", "client_id", "token_type"):
        register_secret(value)
        return SecretStr(value)
    return value


def _reveal(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _reveal(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_reveal(v) for v in value]
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    return value


class LumosAuth(_Strict):
    """The connector's own credential: one of ``oauth``, ``token``, ``basic``, or ``credentials`` as given."""

    oauth: OAuthSecret | None = Field(None, description="An OAuth access token (and what refreshes it).",
                                      json_schema_extra=_GENERAL)
    token: TokenSecret | None = Field(None, description="A token credential.", json_schema_extra=_SECRET)
    basic: BasicSecret | None = Field(None, description="A user name and password.", json_schema_extra=_GENERAL)
    credentials: list[dict[str, Any]] | None = Field(None, description=(
        "The SDK's credentials list, sent as given: [{id, oauth | token | basic | ...: {...}}]; "
        "every value but ids and user names is a secret."), json_schema_extra=_SECRET)

    @field_validator("credentials")
    @classmethod
    def _given(cls, v: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
        if v is None:
            return v
        for i, cred in enumerate(v):
            if not isinstance(cred.get("id"), str) or len(cred) != 2:
                raise ValueError(f"credentials[{i}] must be {{id: <credential id>, <kind>: {{...}}}}")
        return [_seal(c) for c in v]

    @model_validator(mode="after")
    def _at_most_one(self) -> LumosAuth:
        given = [k for k in ("oauth", "token", "basic", "credentials") if getattr(self, k) is not None]
        if len(given) > 1:
            raise ValueError(f"give one credential, not {' and '.join(given)}")
        return self

    @property
    def kind(self) -> str | None:
        return next((k for k in ("oauth", "token", "basic") if getattr(self, k) is not None), None)


# -- mapping: pure functions from the SDK's Found* records to ingest's records ---------------------

_STATUS = {"ACTIVE": "ACTIVE", "INACTIVE": "INACTIVE", "SUSPENDED": "SUSPENDED", "DEPROVISIONED": "DEPROVISIONED",
           "PENDING": "PENDING", "DELETED": "DEPROVISIONED"}


def map_account(d: dict[str, Any]) -> dict[str, Any]:
    """FoundAccountData -> Account (``display_name`` from ``extra_data.display_name``, else given + family)."""
    given, family = d.get("given_name"), d.get("family_name")
    extra = dict(d.get("extra_data") or {})
    raw_status = d.get("user_status")
    if raw_status and _STATUS.get(raw_status) != raw_status:
        extra["user_status"] = raw_status
    if d.get("resource_id"):
        extra["resource_id"] = d["resource_id"]
    return {
        "account_id": d.get("integration_specific_id"),
        "email": d.get("email"),
        "username": d.get("username"),
        "display_name": extra.pop("display_name", None) or " ".join(p for p in (given, family) if p) or None,
        "given_name": given,
        "family_name": family,
        "status": _STATUS.get(raw_status or "ACTIVE", raw_status),
        "account_type": (d.get("account_type") or "user").lower(),
        "custom_attributes": d.get("custom_attributes") or {},
        "extra": extra,
    }


def map_resource(d: dict[str, Any]) -> dict[str, Any]:
    """FoundResourceData -> Resource."""
    return {"resource_type": d.get("resource_type"), "resource_id": d.get("integration_specific_id"),
            "label": d.get("label"), "description": d.get("description"), "extra": d.get("extra_data") or {}}


def map_entitlement(d: dict[str, Any], resource_type: str = "") -> dict[str, Any]:
    """FoundEntitlementData -> Entitlement (``resource_type`` of its resource; '' for the global one)."""
    resource_id = d.get("integration_specific_resource_id") or ""
    extra = dict(d.get("extra_data") or {})
    if d.get("custom_attributes"):
        extra["custom_attributes"] = d["custom_attributes"]
    return {"entitlement_type": d.get("entitlement_type"), "resource_type": resource_type if resource_id else "",
            "resource_id": resource_id, "entitlement_id": d.get("integration_specific_id"),
            "label": d.get("label"), "description": d.get("description"),
            "is_assignable": d.get("is_assignable") if d.get("is_assignable") is not None else True, "extra": extra}


def map_association(d: dict[str, Any], resource_type: str = "") -> dict[str, Any]:
    """FoundEntitlementAssociation -> Assignment."""
    resource_id = d.get("integration_specific_resource_id") or ""
    return {"account_id": d.get("account_id"), "entitlement_id": d.get("integration_specific_entitlement_id"),
            "resource_type": resource_type if resource_id else "", "resource_id": resource_id}


def map_activity(d: dict[str, Any], with_event_type: bool = False) -> dict[str, Any]:
    """LastActivityData -> LastActivity."""
    out = {"account_id": d.get("account_id"), "last_activity_at": d.get("happened_at")}
    if with_event_type:
        out["event_type"] = d.get("event_type")
    return out


def map_expense(d: dict[str, Any]) -> dict[str, Any]:
    """Expense (list_expenses) -> Expense: the amount owed, the seller, the submitter's account."""
    total = d.get("total_amount") or {}
    seller = d.get("seller") or {}
    submitter = d.get("submitter") or {}
    extra = {k: d[k] for k in ("report_id", "payment_date", "paid_amount", "description", "url", "attributes",
                               "custom_attributes") if d.get(k) is not None}
    for k in ("approval_status", "payment_status"):
        if d.get(k):
            extra[k] = (d[k] or {}).get("normalized_value")
    if seller.get("id"):
        extra["seller_id"] = seller["id"]
    if submitter.get("email"):
        extra["submitter_email"] = submitter["email"]
    return {"expense_id": d.get("id"), "account_id": submitter.get("id"), "amount": total.get("amount"),
            "currency": total.get("currency"), "merchant": seller.get("name"),
            "occurred_at": d.get("transaction_date"), "category": d.get("type"), "extra": extra}


# -- running the connector: in process or as its executable ------------------------------------------

class _InProcess:
    """``await integration.dispatch(capability, json)`` on a private event loop per call."""

    def __init__(self, spec: str) -> None:
        for k, v in SDK_ENV.items():
            os.environ[k] = v  # before the SDK is imported: it sends statsd packets otherwise
        module, _, attr = spec.partition(":")
        try:
            importlib.import_module("connector.oai.integration")
        except ImportError:
            raise ConfigError(INSTALL_HINT) from None
        try:
            obj = importlib.import_module(module)
            for part in attr.split("."):
                obj = getattr(obj, part)
        except (ImportError, AttributeError) as e:
            raise ConfigError(f"settings.integration: cannot load {spec!r}: {e}") from None
        if not hasattr(obj, "dispatch") or not hasattr(obj, "info"):
            raise ConfigError(f"settings.integration: {spec!r} is not a connector-py Integration "
                              f"(it has no dispatch/info)")
        self.integration = obj

    def info(self) -> dict[str, Any]:
        return self.integration.info().model_dump(mode="json")["response"]

    def call(self, capability: str, request: dict[str, Any]) -> dict[str, Any]:
        body = asyncio.run(self.integration.dispatch(capability, json.dumps(request)))
        return json.loads(body)


class _Executable:
    """``<app> <capability> --json-file F --result-file-path R.gz``, F mode 0600 in a private directory.

    The working directory is ``cwd`` (the SDK writes ``./logs/`` there unless
    ``LUMOS_LOG_DIRECTORY`` says otherwise); a relative executable path
    (``examples/.pretend/pretend``) is taken from ingest's own working directory. The CLI exits 0 on error responses:
    the result's ``is_error`` says what happened; a non-zero exit is a crash.
    """

    def __init__(self, command: str, timeout: float, cwd: Path) -> None:
        self.argv = shlex.split(command)
        if self.argv and os.sep in self.argv[0] and not os.path.isabs(self.argv[0]):
            # a relative path is where ingest was started from, not the working directory the call gets
            self.argv[0] = os.path.abspath(os.path.expanduser(self.argv[0]))
        self.timeout = timeout
        self.cwd = cwd
        self.env = {**os.environ, **SDK_ENV}

    def _run(self, args: list[str], request: dict[str, Any] | None) -> dict[str, Any]:
        self.cwd.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="ingest-lumos-") as tmp:  # mode 0700
            argv = [*self.argv, *args]
            if request is not None:
                path = os.path.join(tmp, "request.json")
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "w") as f:
                    json.dump(request, f)
                argv += ["--json-file", path]
            result = os.path.join(tmp, "result.json.gz")
            argv += ["--result-file-path", result]
            try:
                proc = subprocess.run(argv, cwd=self.cwd, env=self.env, stdin=subprocess.DEVNULL,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=self.timeout)
            except FileNotFoundError:
                raise ConfigError(f"settings.command: {self.argv[0]!r} not found") from None
            except subprocess.TimeoutExpired:
                raise RetryableError(f"{args[0]} did not finish within {self.timeout:g} s") from None
            if proc.returncode != 0:
                tail = proc.stderr.decode(errors="replace").strip().splitlines()[-3:]
                raise SourceError(f"{args[0]} exited with status {proc.returncode}: " + redact(" | ".join(tail)))
            try:
                with gzip.open(result, "rb") as f:
                    return json.loads(f.read())
            except (OSError, ValueError) as e:
                raise ProtocolError(f"{args[0]} wrote no readable result: {e}") from None

    def info(self) -> dict[str, Any]:
        doc = self._run(["info"], None)
        return doc.get("response", doc)

    def call(self, capability: str, request: dict[str, Any]) -> dict[str, Any]:
        return self._run([capability], request)


# -- tokens a refresh obtained ---------------------------------------------------------------------

class _Tokens:
    """Refreshed tokens per grant when there is no credential store (``ingest connector``, a store
    without its key): refreshed single-flight within this process, kept in memory only."""

    def __init__(self) -> None:
        self._tokens: dict[str, Any] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def lock(self, grant: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(grant, threading.Lock())

    def get(self, grant: str) -> Any:
        return self._tokens.get(grant)

    def put(self, grant: str, token: Any) -> None:
        self._tokens[grant] = token


TOKENS = _Tokens()
_STORE_KIND = "lumos_oauth"


class LumosConnector(Connector):
    type = "lumos"
    name = "Lumos Connector SDK connector"
    description = ("Any connector written with the Lumos Connector SDK (connector-py), run in process "
                   "or as its on-prem executable.")
    Settings = LumosSettings
    Auth = LumosAuth
    settings: LumosSettings
    auth: LumosAuth

    # the read capabilities a Lumos connector may have, in fetch order; streams() keeps those info() declares
    def list_accounts(self):
        ids = self._account_ids = []
        for rec in self._records("list_accounts", {}, map_account):
            if rec.get("account_id"):
                ids.append(rec["account_id"])
            yield rec

    def list_resources(self):
        for rec in self._records("list_resources", {}, map_resource):
            self._resource_types[rec.get("resource_id") or ""] = rec.get("resource_type") or ""
            yield rec

    def list_entitlements(self):
        types = {t.get("type_id"): t.get("resource_type_id") or "" for t in self.describe().get("entitlement_types") or []}

        def mapped(d: dict[str, Any]) -> dict[str, Any]:
            rid = d.get("integration_specific_resource_id") or ""
            rec = map_entitlement(d, self._resource_types.get(rid) or types.get(d.get("entitlement_type"), ""))
            self._entitlement_types[(rec["entitlement_id"], rid)] = rec["resource_type"]
            return rec

        return self._records("list_entitlements", {}, mapped)

    def find_entitlement_associations(self):
        def mapped(d: dict[str, Any]) -> dict[str, Any]:
            key = (d.get("integration_specific_entitlement_id"), d.get("integration_specific_resource_id") or "")
            rtype = self._entitlement_types.get(key) or self._resource_types.get(key[1], "")
            return map_association(d, rtype)

        return self._records("find_entitlement_associations", {}, mapped)

    def list_expenses(self):
        return self._records("list_expenses", {"filters": {}}, map_expense)

    def get_last_activity(self):
        from ingest.records import LastActivity

        with_type = "event_type" in LastActivity.model_fields
        ids = getattr(self, "_account_ids", None) or []
        batch = self.settings.activity_batch
        for i in range(0, len(ids), batch):
            yield from self._records("get_last_activity", {"account_ids": ids[i:i + batch]},
                                     lambda d: map_activity(d, with_type))

    def list_custom_attributes_schema(self):
        return self._records("list_custom_attributes_schema", {}, lambda d: d)

    _KIND_TITLES: ClassVar[dict[str, str]] = {"oauth": "OAuthCredential", "token": "TokenCredential",
                                              "basic": "BasicCredential"}

    def __init__(self, ctx) -> None:
        super().__init__(ctx)
        self._resource_types: dict[str, str] = {}
        self._entitlement_types: dict[tuple[str, str], str] = {}
        self._info: dict[str, Any] | None = None
        self._token: Any = None  # a refreshed token (ingest.credentials Token); False: none stored
        if self.settings.integration:
            self.transport: _InProcess | _Executable = _InProcess(self.settings.integration)
        else:
            base = Path(ctx.state_dir) if ctx.state_dir else Path(tempfile.gettempdir())
            self.transport = _Executable(self.settings.command, self.settings.timeout, base / "lumos" / ctx.name)

    # -- self-description --------------------------------------------------------------------
    @classmethod
    def capabilities(cls) -> list[str]:
        return list(_READ)

    @classmethod
    def instance_info(cls, settings: LumosSettings) -> dict[str, Any]:
        """For ``ingest info NAME``: the connector's own ``info()`` (what this instance declares)."""
        if settings.integration:
            return {"declares": _InProcess(settings.integration).info()}
        with tempfile.TemporaryDirectory(prefix="ingest-lumos-info-") as tmp:
            return {"declares": _Executable(settings.command, settings.timeout, Path(tmp)).info()}

    def describe(self) -> dict[str, Any]:
        """The connector's own ``info()`` (cached): app_id, capabilities, schemas, types, credential ids."""
        if self._info is None:
            self._info = self.transport.info()
        return self._info

    def streams(self) -> Iterator[tuple[str, Any]]:
        declared = set(self.describe().get("capabilities") or [])
        for cap, entity in CAPABILITIES.items():
            if entity and cap in declared:
                yield cap, getattr(self, cap)()

    def validate_credentials(self) -> dict[str, Any]:
        if "validate_credentials" not in (self.describe().get("capabilities") or []):
            raise FatalError(f"{self.describe().get('app_id')} has no validate_credentials capability",
                             connector=self.ctx.name)
        body = self._call("validate_credentials", lambda: self._request({}, None))
        resp = body.get("response") or {}
        if not resp.get("valid", False):
            raise AuthError("the connector says the credentials are not valid", connector=self.ctx.name)
        return {"app_id": self.describe().get("app_id"), "unique_tenant_id": resp.get("unique_tenant_id")}

    # -- requests ---------------------------------------------------------------------------------
    def _credential_id(self) -> str | None:
        schemas = self.describe().get("credentials_schema") or []
        if not schemas:
            return None
        title = self._KIND_TITLES.get(self.auth.kind or "")
        match = [s for s in schemas if s.get("title") == title] or (schemas if len(schemas) == 1 else [])
        if not match:
            ids = ", ".join(str(s.get("id")) for s in schemas)
            raise ConfigError(f"auth: {self.describe().get('app_id')} declares credentials {ids}; none takes "
                              f"{self.auth.kind!r}: give them as auth.credentials: [{{id, <kind>: ...}}]")
        return match[0].get("id")

    def _grant(self) -> str:
        """What a stored token belongs to: the configured tokens (a new configured grant starts afresh)."""
        import hashlib

        o = self.auth.oauth
        seed = "\x1f".join([o.access_token.get_secret_value(), o.refresh_token.get_secret_value()
                            if o.refresh_token else "", o.client_id or ""])
        return hashlib.sha256(seed.encode()).hexdigest()[:24]

    def _store(self) -> Any:
        """The credential store (ingest.credentials), or None when there is none or it has no key."""
        store = self.ctx.credentials
        if store is None:
            return None
        problem = store.unavailable()
        if problem is None:
            return store
        if not getattr(self, "_store_warned", False):
            self._store_warned = True
            self.log.warning("token_cache_unavailable", reason=problem.message,
                             hint="refreshed tokens are kept for this run only")
        return None

    def _access_token(self) -> str:
        if self._token is None:
            store = self._store()
            held = (store.load(self.ctx.name, _STORE_KIND, self._grant()) if store is not None
                    else TOKENS.get(f"{self.ctx.name}:{self._grant()}"))
            self._token = held if held is not None else False
        return self._token.access_token if self._token else self.auth.oauth.access_token.get_secret_value()

    def _secret(self) -> dict[str, Any] | None:
        kind = self.auth.kind
        if kind == "oauth":
            return {"oauth": {"access_token": self._access_token()}}
        if kind == "token":
            return {"token": {"token": self.auth.token.token.get_secret_value()}}
        if kind == "basic":
            return {"basic": {"username": self.auth.basic.username,
                              "password": self.auth.basic.password.get_secret_value()}}
        return None

    def _auth_part(self) -> dict[str, Any]:
        if self.auth.credentials is not None:
            return {"credentials": _reveal(self.auth.credentials)}
        secret = self._secret()
        if secret is None:
            return {}
        cred_id = self._credential_id()
        return {"credentials": [{"id": cred_id, **secret}]} if cred_id else {"auth": secret}

    def _request(self, request: dict[str, Any], token: str | None) -> dict[str, Any]:
        return {"request": request, "settings": self.settings.connector_settings,
                "page": {"token": token, "size": self.settings.page_size}, **self._auth_part()}

    def _records(self, capability: str, request: dict[str, Any],
                 mapper: Callable[[dict[str, Any]], dict[str, Any]]) -> Iterator[dict[str, Any]]:
        """Every record of a listing, page by page until the token is null."""
        token: str | None = None
        seen: set[str] = set()
        pages = 0
        while True:
            body = self._call(capability, lambda t=token: self._request(request, t))
            records = body.get("response")
            if not isinstance(records, list):
                raise ProtocolError(f"{capability} answered without a list in `response`", connector=self.ctx.name,
                                    stream=capability)
            pages += 1
            self.log.debug("lumos_page", stream=capability, page=pages, records=len(records))
            for d in records:
                yield mapper(d) if isinstance(d, dict) else d
            nxt = (body.get("page") or {}).get("token")
            if not nxt:
                return
            if nxt in seen or nxt == token:
                raise PaginationLoopError(f"{capability} handed back page token {nxt[:40]!r} a second time",
                                          connector=self.ctx.name, stream=capability)
            if pages >= self.settings.max_pages:
                raise FatalError(f"{capability} still had more after {pages} pages (settings.max_pages); the "
                                 "listing is refused rather than cut short", connector=self.ctx.name,
                                 stream=capability)
            seen.add(nxt)
            token = nxt

    def _call(self, capability: str, build: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """One capability call with the SDK's error responses handled: retry, refresh once, or raise."""
        stats, s = self.ctx.stats, self.settings
        refreshed = False
        attempt = 0
        while True:
            stats.add("requests")
            body = self.transport.call(capability, build())
            if not isinstance(body, dict):
                raise ProtocolError(f"{capability} answered with {type(body).__name__}, not a JSON object",
                                    connector=self.ctx.name, stream=capability)
            if not body.get("is_error"):
                return body
            err = body.get("error") or {}
            code = err.get("error_code") or "unexpected_error"
            meta = err.get("error_metadata") or {}
            message = redact(f"{capability}: {code}: {err.get('message') or 'no message'}")
            where = {"connector": self.ctx.name, "stream": capability}
            if code == "rate_limit" or meta.get("throttled"):
                stats.add("throttled")
                if attempt >= s.max_retries:
                    raise RateLimitedError(f"{message} (still throttled after {attempt} retries)", **where)
                delay = meta.get("retry_after_seconds")
                delay = min(float(delay) if delay else s.backoff_initial * 2 ** attempt, s.max_retry_after)
                self.log.warning("lumos_rate_limited", stream=capability, retry_in_s=delay, attempt=attempt + 1)
            elif (code in ("unauthorized", "unauthenticated", "authentication_expired") or meta.get("refreshable")) \
                    and not refreshed and self._can_refresh():
                self._refresh(self._access_token())
                refreshed = True
                stats.add("retries")
                continue
            elif (code in _RETRYABLE or meta.get("retryable")) and code not in _AUTH and attempt < s.max_retries:
                delay = min(s.backoff_initial * 2 ** attempt, s.max_retry_after)
                self.log.warning("lumos_retry", stream=capability, error_code=code, retry_in_s=delay, attempt=attempt + 1)
            elif code in _AUTH:
                hint = "" if self._can_refresh() or refreshed else (
                    " (no auth.oauth refresh_token, client_id and client_secret to refresh with)")
                raise AuthError(message + (" after a refresh" if refreshed else "") + hint, **where)
            elif code == "not_found":
                raise NotFoundError(message, **where)
            elif code in _RETRYABLE or meta.get("retryable"):
                raise RetryableError(f"{message} (after {attempt} retries)", **where)
            else:
                raise FatalError(message, **where)
            attempt += 1
            stats.add("retries")
            time.sleep(delay)

    # -- refresh ----------------------------------------------------------------------------------
    def _can_refresh(self) -> bool:
        o = self.auth.oauth
        return bool(o and o.refresh_token and o.client_id and o.client_secret
                    and "refresh_access_token" in (self.describe().get("capabilities") or []))

    def _refresh(self, used_token: str) -> None:
        """Refresh once, single-flight per connector: in the credential store under its lock (across
        processes), else in memory (within this process). A caller that waited uses the token the
        other one got; a rotated refresh token is stored before the new access token is used."""
        store = self._store()
        if store is None:
            key = f"{self.ctx.name}:{self._grant()}"
            with TOKENS.lock(key):
                self._token = self._renewed(TOKENS.get(key), used_token, lambda t: TOKENS.put(key, t))
            return
        with store.locked(self.ctx.name) as slot:
            held = slot.load(_STORE_KIND, self._grant())
            self._token = self._renewed(held, used_token, lambda t: slot.save(_STORE_KIND, self._grant(), t))

    def _renewed(self, held: Any, used_token: str, save: Callable[[Any], None]) -> Any:
        from ingest.credentials import Token

        if held is not None and held.access_token != used_token:
            return held  # refreshed by someone else while this run waited (or by an earlier run)
        o = self.auth.oauth
        refresh_token = (held.refresh_token if held is not None else None) or o.refresh_token.get_secret_value()
        request = {"request": {"client_id": o.client_id, "client_secret": o.client_secret.get_secret_value(),
                               "refresh_token": refresh_token, "credential_id": self._credential_id()},
                   "settings": self.settings.connector_settings}
        self.ctx.stats.add("requests")
        body = self.transport.call("refresh_access_token", request)
        if body.get("is_error"):
            err = body.get("error") or {}
            raise AuthError(redact(f"refresh_access_token: {err.get('error_code')}: {err.get('message')}"),
                            connector=self.ctx.name)
        resp = body.get("response") or {}
        if not resp.get("access_token"):
            raise AuthError("refresh_access_token returned no access_token", connector=self.ctx.name)
        token = Token(access_token=resp["access_token"], refresh_token=resp.get("refresh_token") or refresh_token,
                      token_type=resp.get("token_type") or "Bearer")
        save(token)
        self.log.info("lumos_token_refreshed", rotated=bool(resp.get("refresh_token")
                                                             and resp["refresh_token"] != refresh_token))
        return token
