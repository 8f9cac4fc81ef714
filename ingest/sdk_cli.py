"""``ingest connector TYPE CAPABILITY --json JSON``: ingest's own connectors in the Lumos SDK's on-prem CLI style.

A Lumos on-prem agent calls ``<app> <capability> --json '{...}'`` and reads one
JSON document; this answers the same way for every ingest connector type::

    request   {"settings": {...}, "auth": {...}, "request": {...}, "page": {"token": T | null, "size": N}}
    response  {"response": [FoundAccountData, ...], "page": {"token": "next" | null, "size": N}}
    error     {"is_error": true, "error": {"message", "status_code", "error_code", "app_id", "raised_by",
               "raised_in", "error_metadata": {"fault", "category", "retryable", "throttled", "refreshable",
               "retry_after_seconds", "hint"}}}

Records are the SDK's ``Found*`` shapes (the inverse of the ``lumos`` connector's
mapping). ingest's connectors stream a whole listing, so a page token is an
offset into it: page *k* reads the listing up to its end. Like the SDK's CLI,
an error response is still a successful call (exit 0): read ``is_error``.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ValidationError

from ingest.connector import CAPABILITIES, ConnectorContext
from ingest.errors import (
    AuthError,
    ConfigError,
    IngestError,
    NotFoundError,
    PaginationLoopError,
    ProtocolError,
    RateLimitedError,
    RetryableError,
    SourceError,
)
from ingest.redact import redact, register_secret

__all__ = ["call", "to_sdk"]

_MAX_PAGE = 10_000


class SdkError(Exception):
    def __init__(self, code: str, message: str, *, status: int | None = None, hint: str | None = None,
                 retry_after: float | None = None) -> None:
        super().__init__(message)
        self.code, self.status, self.hint, self.retry_after = code, status, hint, retry_after


# -- ingest records -> the SDK's Found* shapes -------------------------------------------------------

def _value(v: Any) -> Any:
    if isinstance(v, datetime):
        return v.isoformat()
    if hasattr(v, "value"):  # enums
        return v.value
    return v


def to_sdk(entity: str, r: dict[str, Any]) -> dict[str, Any] | None:
    """One normalized record as the SDK's model of it (None for what the SDK has no model of: nested groups)."""
    r = {k: _value(v) for k, v in r.items()}
    if entity == "account":
        return {"integration_specific_id": r["account_id"], "email": r.get("email"),
                "given_name": r.get("given_name"), "family_name": r.get("family_name"), "username": r.get("username"),
                "user_status": r.get("status") or "ACTIVE", "account_type": r.get("account_type") or "user",
                "extra_data": {**(r.get("extra") or {}), **({"display_name": r["display_name"]}
                                                              if r.get("display_name") else {})},
                "custom_attributes": {k: str(v) for k, v in (r.get("custom_attributes") or {}).items()}}
    if entity == "resource":
        extra = dict(r.get("extra") or {})
        if r.get("parent_resource_id"):
            extra.update(parent_resource_type=r.get("parent_resource_type"), parent_resource_id=r["parent_resource_id"])
        return {"integration_specific_id": r["resource_id"], "label": r.get("label") or r["resource_id"],
                "resource_type": r["resource_type"], "description": r.get("description"), "extra_data": extra}
    if entity == "entitlement":
        return {"entitlement_type": r["entitlement_type"], "integration_specific_id": r["entitlement_id"],
                "integration_specific_resource_id": r.get("resource_id") or "",
                "label": r.get("label") or r["entitlement_id"], "is_assignable": r.get("is_assignable", True),
                "description": r.get("description"), "extra_data": r.get("extra") or {}}
    if entity == "assignment":
        return {"account_id": r["account_id"], "integration_specific_entitlement_id": r["entitlement_id"],
                "integration_specific_resource_id": r.get("resource_id") or ""}
    if entity == "last_activity":
        return {"account_id": r["account_id"], "event_type": r.get("event_type") or "activity",
                "happened_at": r["last_activity_at"]}
    if entity == "expense":
        extra = r.get("extra") or {}
        return {"id": r["expense_id"], "transaction_date": r.get("occurred_at") or "",
                "total_amount": {"amount": str(r.get("amount") or "0"), "currency": r.get("currency") or ""},
                "seller": {"name": r.get("merchant")}, "description": extra.get("description") or "",
                "submitter": {"id": r.get("account_id")}, "type": r.get("category") or "card_transaction",
                "approval_status": {"normalized_value": extra.get("approval_status") or "approved"},
                "payment_status": {"normalized_value": extra.get("payment_status") or "paid"}}
    return None


# -- pages: an offset into the listing ------------------------------------------------------------------

def _token(offset: int) -> str:
    return base64.urlsafe_b64encode(json.dumps({"offset": offset}).encode()).decode()


def _offset(token: str | None) -> int:
    if not token:
        return 0
    try:
        offset = json.loads(base64.urlsafe_b64decode(token.encode()))["offset"]
        if isinstance(offset, int) and offset >= 0:
            return offset
    except (ValueError, KeyError, TypeError):
        pass
    raise SdkError("invalid_page_token", f"page token {token[:40]!r} was not issued by this listing", status=400)


def _page(records: Iterable[tuple[str, dict[str, Any]]], page: dict[str, Any]) -> tuple[list[Any], dict | None]:
    size = page.get("size")
    if size is not None and (not isinstance(size, int) or not 1 <= size <= _MAX_PAGE):
        raise SdkError("bad_request", f"page.size must be an integer from 1 to {_MAX_PAGE}", status=400)
    start = _offset(page.get("token"))
    out: list[Any] = []
    seen = 0
    for entity, rec in records:
        doc = to_sdk(entity, rec)
        if doc is None:
            continue
        if seen >= start:
            if size is not None and len(out) == size:
                return out, {"token": _token(seen), "size": size}  # there is at least one more
            out.append(doc)
        seen += 1
    return out, None


# -- errors in the SDK's vocabulary ----------------------------------------------------------------

def _classify(e: BaseException) -> SdkError:
    msg = redact(str(e))
    if isinstance(e, SdkError):
        return e
    if isinstance(e, RateLimitedError):
        return SdkError("rate_limit", msg, status=429, retry_after=e.retry_after)
    if isinstance(e, AuthError):
        status = getattr(e, "status_code", None) or 401
        return SdkError("permission_denied" if status == 403 else "unauthorized", msg, status=status)
    if isinstance(e, NotFoundError):
        return SdkError("not_found", msg, status=404)
    if isinstance(e, RetryableError):
        return SdkError("bad_gateway", msg, status=getattr(e, "status_code", None) or 502)
    if isinstance(e, ProtocolError | PaginationLoopError):
        return SdkError("invalid_response", msg, status=502)
    if isinstance(e, ConfigError):
        return SdkError("bad_request", msg, status=400)
    if isinstance(e, SourceError):
        return SdkError("api_error", msg, status=getattr(e, "status_code", None))
    if isinstance(e, IngestError):
        return SdkError("unexpected_error", msg)
    return SdkError("unexpected_error", redact(f"{type(e).__name__}: {e}"))


_METADATA = {  # error_code -> (fault, category, retryable, throttled, refreshable), the SDK's enums
    "rate_limit": ("upstream", "transient", True, True, False),
    "unauthorized": ("upstream", "authentication", False, False, True),
    "permission_denied": ("upstream", "authorization", False, False, False),
    "not_found": ("upstream", "client", False, False, False),
    "bad_gateway": ("upstream", "transient", True, False, False),
    "invalid_response": ("upstream", "internal", False, False, False),
    "api_error": ("upstream", "internal", False, False, False),
    "bad_request": ("caller", "client", False, False, False),
    "invalid_page_token": ("caller", "client", False, False, False),
    "unsupported_operation": ("caller", "client", False, False, False),
}


def _error_doc(err: SdkError, app_id: str, capability: str) -> dict[str, Any]:
    fault, category, retryable, throttled, refreshable = _METADATA.get(
        err.code, ("connector", "internal", False, False, False))
    return {"is_error": True, "error": {
        "message": str(err), "status_code": err.status, "app_error_code": None, "error_code": err.code,
        "app_id": app_id, "raised_by": type(err).__name__, "raised_in": f"ingest.connector:{capability}",
        "error_metadata": {"fault": fault, "category": category, "retryable": retryable, "throttled": throttled,
                           "refreshable": refreshable, "retry_after_seconds":
                               int(err.retry_after) if err.retry_after is not None else None, "hint": err.hint}}}


# -- one call -----------------------------------------------------------------------------------------

def _validated(model: type[BaseModel], data: Any, what: str) -> BaseModel:
    try:
        return model.model_validate(data or {})
    except ValidationError as e:
        first = e.errors()[0]
        loc = ".".join(str(x) for x in first["loc"])
        raise SdkError("bad_request", f"{what}{'.' + loc if loc else ''}: {first['msg']}", status=400) from None


def _register(model: BaseModel) -> None:
    from pydantic import SecretStr

    for v in model.__dict__.values():
        if isinstance(v, SecretStr):
            register_secret(v.get_secret_value())
        elif isinstance(v, BaseModel):
            _register(v)


def call(type_name: str, capability: str, request_text: str, *, state_dir: str | None = None) -> dict[str, Any]:
    """Answer one SDK-style call; never raises for what the caller sent or the source did (an error document)."""
    from ingest.registry import get_connector_class

    cls = get_connector_class(type_name)  # an unknown type is a usage error (ConfigError), raised
    app_id = cls.app_id or cls.type
    try:
        if capability == "info":
            return {"response": cls.info()}
        try:
            doc = json.loads(request_text)
        except ValueError as e:
            raise SdkError("bad_request", f"--json is not JSON: {e}", status=400) from None
        if not isinstance(doc, dict):
            raise SdkError("bad_request", "the request must be a JSON object", status=400)
        offered = ["validate_credentials", *cls.capabilities()]
        if capability not in offered:
            raise SdkError("unsupported_operation", f"{type_name} has no capability {capability!r} "
                           f"(it has: {', '.join(offered)})", status=400)
        settings = _validated(cls.Settings, doc.get("settings"), "settings")
        auth = _validated(cls.Auth, doc.get("auth"), "auth")
        _register(auth)
        ctx = ConnectorContext(name=f"{type_name}-sdk", settings=settings, auth=auth, state_dir=state_dir)
        with cls(ctx) as connector:
            if capability == "validate_credentials":
                tenant = connector.validate_credentials()
                tenant_id = next((str(v) for k, v in (tenant or {}).items() if "tenant" in k or k == "base_url"), None)
                return {"response": {"valid": True, "unique_tenant_id": tenant_id or app_id}, "page": None}
            records = getattr(connector, capability)()
            entity = CAPABILITIES[capability]
            request = doc.get("request") or {}
            if capability == "get_last_activity" and request.get("account_ids") is not None:
                wanted = set(request["account_ids"])
                records = (r for r in records if _field(r, "account_id") in wanted)
            tagged = _normalized(entity, records)
            items, page = _page(tagged, doc.get("page") or {})
            return {"response": items, "page": page}
    except Exception as e:  # noqa: BLE001 - every failure becomes the SDK's error document
        return _error_doc(_classify(e), app_id, capability)


def _normalized(entity: str, records: Iterable[Any]) -> Iterable[tuple[str, dict[str, Any]]]:
    """(entity, fields) of each valid record, as the writer would see it; an invalid one is logged and left out."""
    import structlog

    from ingest.records import ENTITY_MODELS

    log = structlog.get_logger("ingest.sdk_cli")
    for r in records:
        name = _entity(entity, r)
        model = ENTITY_MODELS[name]
        try:
            rec = r if isinstance(r, model) else model.model_validate(r.model_dump() if isinstance(r, BaseModel) else r)
        except ValidationError as e:
            log.warning("record_invalid", entity=name, reason=str(e.errors()[0]["msg"]))
            continue
        yield name, dict(rec.__dict__)


def _field(r: Any, name: str) -> Any:
    return getattr(r, name, None) if isinstance(r, BaseModel) else r.get(name)


def _entity(default: str | None, r: Any) -> str:
    if getattr(r, "entity", None) == "nested_entitlement" or (isinstance(r, dict) and "member_entitlement_id" in r):
        return "nested_entitlement"
    return default or ""
