"""Pure functions from IAM's answers (as botocore parses them) to ingest records."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote

import orjson

__all__ = [
    "credential_report_activity",
    "inline_policy_id",
    "map_group",
    "map_inline_policy",
    "map_managed_policy",
    "map_role",
    "map_role_entitlement",
    "map_user",
    "policy_document",
    "trust_principals",
]

_ASSUME_ACTIONS = ("sts:assumerole", "sts:assumerolewithsaml", "sts:assumerolewithwebidentity", "sts:*", "*")


def _iso(value: Any) -> str | None:
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat()
    return str(value) if value is not None else None


def _tags(raw: dict[str, Any]) -> dict[str, str]:
    return {str(t.get("Key")): str(t.get("Value", "")) for t in raw.get("Tags") or [] if isinstance(t, dict)}


def policy_document(document: Any) -> Any:
    """A policy document as JSON: botocore decodes most; a URL-encoded string (RFC 3986, as IAM sends it)
    is decoded and parsed here, and text that is not JSON is kept as it is."""
    if isinstance(document, str):
        for text in (document, unquote(document)):
            try:
                return orjson.loads(text)
            except ValueError:
                continue
    return document


def inline_policy_id(owner_id: str, policy_name: str) -> str:
    """Inline policies have no id of their own: they are named within their user, group or role."""
    return f"inline:{owner_id}:{policy_name}"


def map_user(raw: dict[str, Any]) -> dict[str, Any]:
    """A ``UserDetail`` -> an Account (the e-mail from an ``email`` tag, when the account has one)."""
    tags = _tags(raw)
    email = next((v for k, v in tags.items() if k.lower() in ("email", "mail", "e-mail")), None)
    boundary = (raw.get("PermissionsBoundary") or {}).get("PermissionsBoundaryArn")
    return {
        "account_id": raw.get("UserId"),
        "username": raw.get("UserName"),
        "display_name": raw.get("UserName"),
        "email": email,
        "status": "ACTIVE",
        "account_type": "user",
        "custom_attributes": {"path": raw.get("Path"), **({"tags": tags} if tags else {})},
        "extra": {"arn": raw.get("Arn"), "path": raw.get("Path"), "created": _iso(raw.get("CreateDate")),
                  "permissions_boundary": boundary, "tags": tags},
    }


def map_role(raw: dict[str, Any]) -> dict[str, Any]:
    """A ``RoleDetail`` -> an Account of type service (``RoleLastUsed`` is last activity, not a change)."""
    tags = _tags(raw)
    boundary = (raw.get("PermissionsBoundary") or {}).get("PermissionsBoundaryArn")
    return {
        "account_id": raw.get("RoleId"),
        "username": raw.get("RoleName"),
        "display_name": raw.get("RoleName"),
        "status": "ACTIVE",
        "account_type": "service",
        "custom_attributes": {"path": raw.get("Path"), **({"tags": tags} if tags else {})},
        "extra": {"arn": raw.get("Arn"), "path": raw.get("Path"), "created": _iso(raw.get("CreateDate")),
                  "permissions_boundary": boundary, "tags": tags,
                  "instance_profiles": sorted(p.get("Arn", "") for p in raw.get("InstanceProfileList") or [])},
    }


def trust_principals(document: Any) -> dict[str, list[str]]:
    """Who a trust policy lets assume the role: ``{"AWS": [...], "Service": [...], "Federated": [...]}``
    from its Allow statements on ``sts:AssumeRole*`` (``"*"`` as principal is kept as ``{"AWS": ["*"]}``)."""
    document = policy_document(document)
    statements = document.get("Statement") if isinstance(document, dict) else None
    if isinstance(statements, dict):
        statements = [statements]
    found: dict[str, set[str]] = {}
    for st in statements or []:
        if not isinstance(st, dict) or st.get("Effect") != "Allow":
            continue
        actions = st.get("Action", [])
        actions = [actions] if isinstance(actions, str) else actions
        if not any(str(a).lower() in _ASSUME_ACTIONS for a in actions):
            continue
        principal = st.get("Principal")
        if principal == "*":
            principal = {"AWS": "*"}
        if not isinstance(principal, dict):
            continue
        for kind, values in principal.items():
            values = [values] if isinstance(values, str) else values
            found.setdefault(str(kind), set()).update(str(v) for v in values or [])
    return {k: sorted(v) for k, v in sorted(found.items())}


def map_role_entitlement(raw: dict[str, Any]) -> dict[str, Any]:
    """A role as an entitlement: permission to assume it, with its trust policy's principals."""
    document = policy_document(raw.get("AssumeRolePolicyDocument"))
    return {
        "entitlement_type": "role",
        "entitlement_id": raw.get("RoleId"),
        "label": raw.get("RoleName"),
        "description": f"Assume the IAM role {raw.get('Arn')}",
        "extra": {"arn": raw.get("Arn"), "trusted_principals": trust_principals(document),
                  "trust_policy": document},
    }


def map_group(raw: dict[str, Any]) -> dict[str, Any]:
    """A ``GroupDetail`` -> an Entitlement of type group (its members and policies are relations)."""
    return {
        "entitlement_type": "group",
        "entitlement_id": raw.get("GroupId"),
        "label": raw.get("GroupName"),
        "extra": {"arn": raw.get("Arn"), "path": raw.get("Path"), "created": _iso(raw.get("CreateDate"))},
    }


def map_managed_policy(raw: dict[str, Any], document: Any = None) -> dict[str, Any]:
    """A ``ManagedPolicyDetail`` (or ``Policy`` plus its default version's document) -> an Entitlement.

    Left out of ``extra`` on purpose: ``AttachmentCount`` and
    ``PermissionsBoundaryUsageCount`` (attachments are assignments) and the
    non-default versions (only the default one grants anything).
    """
    arn = raw.get("Arn")
    if document is None:
        default = next((v for v in raw.get("PolicyVersionList") or []
                        if v.get("IsDefaultVersion") or v.get("VersionId") == raw.get("DefaultVersionId")), None)
        document = default.get("Document") if default else None
    return {
        "entitlement_type": "managed_policy",
        "entitlement_id": arn,
        "label": raw.get("PolicyName") or (arn.rsplit("/", 1)[-1] if arn else None),
        "description": raw.get("Description") or None,
        "extra": {"arn": arn, "aws_managed": bool(arn and ":iam::aws:policy/" in arn),
                  "path": raw.get("Path"), "policy_id": raw.get("PolicyId"),
                  "default_version": raw.get("DefaultVersionId"), "document": policy_document(document)},
    }


def map_inline_policy(owner_kind: str, owner: dict[str, Any], owner_id: str, raw: dict[str, Any]) -> dict[str, Any]:
    """One entry of ``UserPolicyList`` / ``GroupPolicyList`` / ``RolePolicyList`` -> an Entitlement."""
    return {
        "entitlement_type": "inline_policy",
        "entitlement_id": inline_policy_id(owner_id, raw.get("PolicyName", "")),
        "label": raw.get("PolicyName"),
        "description": f"Inline policy of the IAM {owner_kind} {owner.get('Arn')}",
        "is_assignable": False,
        "extra": {"owner_kind": owner_kind, "owner_arn": owner.get("Arn"),
                  "document": policy_document(raw.get("PolicyDocument"))},
    }


_NEVER = frozenset({"", "N/A", "no_information", "not_supported"})


def _when(value: str | None) -> datetime | None:
    if value is None or value.strip() in _NEVER:
        return None
    try:
        return datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        return None


def credential_report_activity(content: bytes | str) -> Iterator[tuple[str, datetime]]:
    """(user ARN, latest use) from a credential report CSV: the latest of ``password_last_used`` and
    ``access_key_{1,2}_last_used_date``; users never seen (``N/A``, ``no_information``) and the
    ``<root_account>`` row are left out."""
    text = content.decode("utf-8") if isinstance(content, (bytes, bytearray)) else content
    for row in csv.DictReader(io.StringIO(text)):
        if row.get("user") == "<root_account>" or not row.get("arn"):
            continue
        seen = [t for t in (_when(row.get(c)) for c in ("password_last_used", "access_key_1_last_used_date",
                                                         "access_key_2_last_used_date")) if t is not None]
        if seen:
            yield row["arn"], max(seen)
