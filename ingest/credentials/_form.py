"""Form metadata: the ``x-section`` of every setting, and a configured instance's values with their origin.

Sections (as a connection form groups them):

- ``general``: what identifies the source and the credential: required fields, ``base_url``,
  tenant / domain / org, user names and secrets.
- ``additional``: optional settings that change what is read (scopes, filters, roles).
- ``advanced``: tuning with safe defaults (timeouts, retries, rate limits, page sizes,
  token endpoints).
- ``relay``: how the machine running ingest reaches the source (proxy, CA bundle, TLS
  verification): what a relay inside a private network sets.

A field that says its own section (``json_schema_extra={"x-section": ...}``) keeps it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

__all__ = ["SECTIONS", "mark_sections", "describe_instance", "MASK"]

SECTIONS = ("general", "additional", "advanced", "relay")
MASK = "••••"
_RELAY = {"proxy", "ca_bundle", "verify_ssl"}
_ADVANCED = {"timeout", "connect_timeout", "max_retries", "backoff_initial", "backoff_max", "max_retry_after",
             "requests_per_second", "max_concurrency", "request_deadline", "page_size", "concurrency", "token_url",
             "authorize_url", "redirect_uri", "auth_method", "algorithm", "extra"}
_GENERAL = {"base_url", "domain", "tenant_id", "org", "customer", "host", "port", "base_dn", "endpoint_url",
            "region", "integration", "command"}
_VAR = re.compile(r"\$\{([^}]*)\}")


def _section(name: str, spec: dict[str, Any], required: set[str]) -> str:
    if spec.get("writeOnly") or name in _GENERAL or name in required:
        return "general"
    if name in _RELAY:
        return "relay"
    if name in _ADVANCED:
        return "advanced"
    return "additional"


def _mark_object(schema: dict[str, Any]) -> None:
    required = set(schema.get("required", []))
    for name, spec in (schema.get("properties") or {}).items():
        if not isinstance(spec, dict):
            continue
        if any(isinstance(b, dict) and b.get("writeOnly") for b in spec.get("anyOf", [])):
            spec["writeOnly"] = True  # an optional SecretStr: locked in the form like a required one
        if "x-section" not in spec:
            spec["x-section"] = _section(name, spec, required)


def mark_sections(schema: dict[str, Any]) -> dict[str, Any]:
    """Give every property (top level and in ``$defs``) an ``x-section``; returns the schema (changed in place)."""
    _mark_object(schema)
    for sub in (schema.get("$defs") or {}).values():
        if isinstance(sub, dict):
            _mark_object(sub)
    return schema


def _origin(raw: Any) -> str:
    """Where a value in schedules.yaml came from: ``${VAR}``, ``${file:PATH}`` or the file itself."""
    if isinstance(raw, str):
        found = _VAR.findall(raw)
        if found:
            return ", ".join("${" + f + "}" for f in found)
    return "schedules.yaml"


def _rows(model: Any, raw: dict[str, Any], secret_names: set[str]) -> list[dict[str, Any]]:
    from pydantic import SecretStr

    rows = []
    fields = type(model).model_fields
    for name, field in fields.items():
        key = field.alias or name
        value = getattr(model, name, None)
        secret = isinstance(value, SecretStr) or name in secret_names
        given = key in raw
        if secret:
            shown = MASK if value is not None else None
        elif hasattr(value, "model_dump"):
            shown = value.model_dump(mode="json")
        elif isinstance(value, (list, dict)):  # may hold models (a rest connector's streams)
            from pydantic_core import to_jsonable_python

            shown = to_jsonable_python(value)
        elif isinstance(value, (str, int, float, bool)) or value is None:
            shown = value
        else:
            shown = str(value)
        if name == "type" and key == "kind" and value is None:
            continue
        rows.append({"field": key, "value": shown, "secret": secret,
                     "source": _origin(raw[key]) if given else "default"})
    return rows


def describe_instance(loaded: Any, name: str) -> dict[str, Any]:
    """A configured connector's settings and auth: values (secrets as ``••••``) and where each came from."""
    rc = loaded.connector(name)
    try:
        raw_doc = yaml.safe_load(Path(loaded.path).read_text()) or {}
    except (OSError, yaml.YAMLError):
        raw_doc = {}
    raw = ((raw_doc.get("connectors") or {}).get(name) or {})
    cred = getattr(rc.auth, "credential", rc.auth)
    kind = getattr(cred, "kind", None)
    return {
        "name": name,
        "type": rc.type,
        "auth_kind": kind if isinstance(kind, str) else None,
        "settings": _rows(rc.settings, raw.get("settings") or {}, set()),
        "auth": _rows(cred, raw.get("auth") or {}, set()),
    }
