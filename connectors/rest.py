"""``type: rest``: a connector declared in YAML for any JSON API (PRODUCT.md, Connectors → ``rest``).

    connectors:
      acme:
        type: rest
        settings:
          base_url: https://api.acme.example/v2
          paginator: {type: cursor, cursor_path: meta.next, cursor_param: cursor}   # default for every stream
          streams:
            accounts:
              path: /users
              params: {limit: 200}
              selector: data
              map:
                account_id: id
                display_name: "{profile.first} {profile.last}"
                status: {path: state, values: {active: ACTIVE, locked: SUSPENDED}, default: ACTIVE}
            entitlements:
              path: /groups
              paginator: {type: link_header}
              map: {entitlement_id: id, label: name, entitlement_type: {const: group}}
            assignments:
              for_each: entitlements
              path: /groups/{parent.entitlement_id}/members
              paginator: {type: offset, limit: 100, total_path: total}
              selector: items
              map: {account_id: user_id, entitlement_id: "{parent.entitlement_id}"}
        auth:
          bearer_token: ${ACME_TOKEN}

Streams are keyed by the entity they produce (:data:`ENTITIES`); each becomes
an :class:`ingest.streams.Stream`, so paging, fan-out (``for_each``: one
listing per record of another stream, ``{parent.<field>}`` naming the parent's
mapped fields), concurrency, retries and end-of-listing checks are the
engine's. A ``map`` value is a dotted path into the record, a ``"{template}"``
(``{a.b}`` from the record, ``{parent.x}`` from the parent), ``{const: v}``, or
``{path: p, values: {...}, default: d}``. Targets are the entity's fields,
plus ``custom_attributes.<name>`` and ``extra.<name>`` (accounts, ...).

The configuration is checked when it is loaded: every error names the stream
and the key (``streams.assignments.map.account_id: ...``) and an unknown name
lists the known ones (entities, paginators and their parameters, parent
streams, fields). A record whose mapping yields no key is handed on without
it, so the engine counts it invalid with the reason.
"""

from __future__ import annotations

import functools
import inspect
import re
import types
import typing
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from ingest.connector import Connector
from ingest.credentials import KINDS, credentials
from ingest.errors import ConfigError
from ingest.http import PAGINATORS, HttpClient, HttpSettings, Paginator, json_path, make_paginator
from ingest.records import ENTITY_MODELS
from ingest.streams import Stream, StreamReader

__all__ = ["ENTITIES", "RestConnector", "RestSettings", "StreamSpec", "compile_map"]

# stream key -> (record entity, capability that yields it)
ENTITIES: dict[str, tuple[str, str]] = {
    "accounts": ("account", "list_accounts"),
    "resources": ("resource", "list_resources"),
    "entitlements": ("entitlement", "list_entitlements"),
    "assignments": ("assignment", "find_entitlement_associations"),
    "nested_entitlements": ("nested_entitlement", "find_entitlement_associations"),
    "expenses": ("expense", "list_expenses"),
}
_OPEN = ("custom_attributes", "extra")  # dict fields a map may fill key by key
_PLACEHOLDER = re.compile(r"\{([^{}]+)\}")

_MAP_SCHEMA = {
    "type": "object",
    "description": "normalized field -> dotted path | \"{template}\" | {const: v} | {path, values, default}",
    "additionalProperties": {"anyOf": [
        {"type": "string", "description": "a dotted path into the record, or a template such as "
                                          "\"{profile.first} {profile.last}\" ({parent.x}: the parent's field)"},
        {"type": "object", "properties": {"const": {}}, "required": ["const"], "additionalProperties": False},
        {"type": "object", "properties": {"path": {"type": "string"}, "values": {"type": "object"}, "default": {}},
         "required": ["path"], "additionalProperties": False},
    ]},
}


class StreamSpec(BaseModel):
    """One stream of a ``rest`` connector."""

    model_config = ConfigDict(extra="forbid")

    path: str = Field(description="Path under base_url (or an absolute URL on its origin); "
                                  "{parent.<field>} with for_each.")
    params: dict[str, Any] = Field(default_factory=dict, description="Query parameters ({parent.<field>} allowed).")
    selector: str | None = Field(None, description="Dotted path to the record list; omitted: the body is the list.")
    paginator: dict[str, Any] | None = Field(None, description="{type: NAME, ...parameters}; omitted: the "
                                             "connector's default paginator, else a single page.")
    map: dict[str, Any] = Field(json_schema_extra=_MAP_SCHEMA, description="normalized field -> expression")
    for_each: str | None = Field(None, description="Another stream: one listing per record of it.")


class RestSettings(HttpSettings):
    """Where the API is, its default paginator, and the streams (keyed by entity)."""

    base_url: str = Field(description="The API root, e.g. https://api.acme.example/v2.")
    paginator: dict[str, Any] | None = Field(None, description="Default paginator of every stream: {type: NAME, "
                                             f"...}}; NAME one of {', '.join(PAGINATORS)}.")
    streams: dict[str, StreamSpec] = Field(description=f"Streams keyed by entity: {', '.join(ENTITIES)}.")

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, v: str) -> str:
        v = v.strip()
        if not v.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return v.rstrip("/")

    @classmethod
    def model_validate(cls, obj: Any, *args: Any, **kw: Any) -> RestSettings:
        """Pydantic's checks, then the cross-references (entities, paginators, parents, fields), each error
        located at its key (``streams.assignments.map.account_id``)."""
        settings = super().model_validate(obj, *args, **kw)
        errors = _check(settings)
        if errors:
            raise ValidationError.from_exception_data(cls.__name__, [
                InitErrorDetails(type=PydanticCustomError("rest_config", "{message}", {"message": message}),
                                 loc=loc, input=None) for loc, message in errors])
        return settings


# -- checks ----------------------------------------------------------------------------------------

def _fields(entity: str) -> dict[str, Any]:
    return dict(ENTITY_MODELS[entity].model_fields)


def _required(entity: str) -> list[str]:
    return [n for n, f in ENTITY_MODELS[entity].model_fields.items() if f.is_required()]


def _paginator_error(spec: Any) -> str | None:
    if not isinstance(spec, dict):
        return "must be a mapping such as {type: cursor, cursor_path: next}"
    name = spec.get("type")
    if name not in PAGINATORS:
        return f"unknown paginator {name!r}; known: {', '.join(sorted(PAGINATORS))}"
    params = inspect.signature(PAGINATORS[name]).parameters
    unknown = sorted(set(spec) - {"type"} - set(params))
    if unknown:
        return (f"unknown parameter {unknown[0]!r} of paginator {name!r}; known: "
                f"{', '.join(p for p in params if p != 'self') or 'none'}")
    try:
        make_paginator(spec)
    except (ConfigError, TypeError, ValueError) as e:
        return f"paginator {name!r}: {getattr(e, 'message', None) or e}"
    return None


def _expression_error(value: Any) -> str | None:
    if isinstance(value, str):
        if not value.strip():
            return "is empty: give a dotted path, a \"{template}\", {const: v} or {path, values, default}"
        if value.count("{") != value.count("}"):
            return f"unbalanced braces in template {value!r}"
        return None
    if isinstance(value, dict):
        keys = set(value)
        if "const" in keys:
            return None if keys == {"const"} else "{const: v} takes nothing else"
        if "path" in keys:
            extra = sorted(keys - {"path", "values", "default"})
            if extra:
                return f"unknown key {extra[0]!r}; known: path, values, default"
            if not isinstance(value["path"], str) or not value["path"]:
                return "path must be a dotted path"
            if "values" in value and not isinstance(value["values"], dict):
                return "values must be a mapping of source value -> normalized value"
            return None
        return "a mapping must be {const: v} or {path: p, values: {...}, default: d}"
    if isinstance(value, (int, float, bool)) or value is None:
        return f"{value!r} is not an expression; for a fixed value write {{const: {value!r}}}"
    return "must be a dotted path, a \"{template}\", {const: v} or {path, values, default}"


def _check(s: RestSettings) -> list[tuple[tuple[str | int, ...], str]]:
    errors: list[tuple[tuple[str | int, ...], str]] = []
    if s.paginator is not None and (msg := _paginator_error(s.paginator)):
        errors.append((("paginator",), msg))
    if not s.streams:
        errors.append((("streams",), f"declare at least one stream; known: {', '.join(ENTITIES)}"))
    for key, spec in s.streams.items():
        where = ("streams", key)
        if key not in ENTITIES:
            errors.append((where, f"unknown stream {key!r}; streams are keyed by entity, known: "
                                  f"{', '.join(ENTITIES)}"))
            continue
        if spec.paginator is not None and (msg := _paginator_error(spec.paginator)):
            errors.append(((*where, "paginator"), msg))
        if spec.for_each is not None:
            if spec.for_each == key:
                errors.append(((*where, "for_each"), "a stream cannot fan out over itself"))
            elif spec.for_each not in s.streams:
                errors.append(((*where, "for_each"), f"unknown parent stream {spec.for_each!r}; known: "
                                                     f"{', '.join(k for k in s.streams if k != key) or 'none'}"))
            elif _cycle(s, key):
                errors.append(((*where, "for_each"), f"for_each makes a cycle ({' -> '.join(_cycle(s, key))})"))
        uses_parent = "{parent." in spec.path or any("{parent." in str(v) for v in spec.params.values()) or any(
            "{parent." in str(v) for v in spec.map.values())
        if uses_parent and spec.for_each is None:
            errors.append(((*where, "for_each"), "{parent.<field>} is used but the stream has no for_each"))
        entity = ENTITIES[key][0]
        fields = _fields(entity)
        for target, value in spec.map.items():
            head = target.split(".", 1)[0]
            if head not in fields or ("." in target and head not in _OPEN):
                known = ", ".join([*fields, *(f"{o}.<name>" for o in _OPEN if o in fields)])
                errors.append(((*where, "map", target), f"unknown field of {entity}; known: {known}"))
                continue
            if msg := _expression_error(value):
                errors.append(((*where, "map", target), msg))
        for name in _required(entity):
            if name not in spec.map:
                errors.append(((*where, "map", name), f"required: every {entity} needs {name} "
                                                      f"(a path, a template or {{const: ...}})"))
    return errors


def _cycle(s: RestSettings, start: str) -> list[str] | None:
    seen, key = [start], s.streams[start].for_each
    while key is not None and key in s.streams:
        if key in seen:
            return [*seen, key]
        seen.append(key)
        key = s.streams[key].for_each
    return None


# -- mapping (pure) ----------------------------------------------------------------------------------

def _lookup(path: str, record: Any, parent: Any) -> Any:
    if path.startswith("parent."):
        return json_path(parent, path[len("parent."):]) if parent is not None else None
    return json_path(record, path)


def _expression(value: Any) -> Callable[[Any, Any], Any]:
    if isinstance(value, dict) and "const" in value:
        const = value["const"]
        return lambda record, parent: const
    if isinstance(value, dict):
        path, values, has_default, default = value["path"], value.get("values") or {}, "default" in value, \
            value.get("default")

        def mapped(record: Any, parent: Any) -> Any:
            v = _lookup(path, record, parent)
            key = v if isinstance(v, str) else None if v is None else str(v).lower() if isinstance(v, bool) else str(v)
            if key is not None and key in values:
                return values[key]
            if v is None or values:
                return default if has_default else v
            return v

        return mapped
    if "{" in value:
        parts = _PLACEHOLDER.split(value)  # text, path, text, path, ...

        def template(record: Any, parent: Any) -> Any:
            out, found = [], False
            for i, part in enumerate(parts):
                if i % 2 == 0:
                    out.append(part)
                    continue
                v = _lookup(part.strip(), record, parent)
                if v is not None and not isinstance(v, (dict, list)):
                    found = True
                    out.append(str(v))
            text = " ".join("".join(out).split()) if found else ""
            return text or None

        return template
    return lambda record, parent: _lookup(value, record, parent)


def _string_fields(entity: str) -> set[str]:
    out = set()
    for name, f in ENTITY_MODELS[entity].model_fields.items():
        ann = f.annotation
        args = typing.get_args(ann) if isinstance(ann, types.UnionType) or typing.get_origin(ann) is typing.Union \
            else (ann,)
        if str in args:
            out.add(name)
    return out


def compile_map(entity: str, spec: dict[str, Any]) -> Callable[[Any, Any], dict[str, Any]]:
    """A pure function ``(record, parent) -> dict`` of the entity's fields from a validated ``map``.

    Fields that come out empty are left out (so a missing key is reported by the engine as missing);
    numbers for text fields (ids, mostly) become text.
    """
    compiled = [(target.split(".", 1), _expression(value)) for target, value in spec.items()]
    strings = _string_fields(entity)
    always = {"member_entitlement_id"} if entity == "nested_entitlement" else set()  # routes the record

    def build(record: Any, parent: Any) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for target, fn in compiled:
            v = fn(record, parent)
            if len(target) == 2:
                if v is not None:
                    out.setdefault(target[0], {})[target[1]] = v
                continue
            name = target[0]
            if v is None:
                if name in always:
                    out[name] = None
                continue
            if name in strings and isinstance(v, (int, float)) and not isinstance(v, bool):
                v = str(v)
            out[name] = v
        return out

    return build


# -- the connector -------------------------------------------------------------------------------------

class RestConnector(Connector):
    """Any JSON API, declared in YAML."""

    type: ClassVar[str] = "rest"
    name: ClassVar[str] = "REST (declared)"
    description: ClassVar[str] = ("Any JSON API: streams declared in YAML (path, params, selector, paginator, map, "
                                  "for_each), paged, fanned out and checked by ingest's engine.")
    Settings: ClassVar[type[BaseModel]] = RestSettings
    Auth: ClassVar[type[BaseModel]] = credentials(*KINDS)
    resumable: ClassVar[bool] = True  # every capability is declared streams (parents listed again)

    @functools.cached_property
    def http(self) -> HttpClient:
        return self.ctx.http_client(self.settings.base_url,
                                    auth=self.auth.httpx_auth(self.ctx.credentials, self.ctx.name))

    @functools.cached_property
    def declared(self) -> dict[str, Stream]:
        """The settings' streams as engine streams (parents first)."""
        s: RestSettings = self.settings
        default = make_paginator(s.paginator) if s.paginator else None
        built: dict[str, Stream] = {}

        def build(key: str) -> Stream:
            if key in built:
                return built[key]
            spec = s.streams[key]
            paginator: Paginator | None = make_paginator(spec.paginator) if spec.paginator else default
            build_record = compile_map(ENTITIES[key][0], spec.map)
            built[key] = Stream(key, spec.path, params=dict(spec.params), selector=spec.selector,
                                paginator=paginator, map=build_record,
                                for_each=build(spec.for_each) if spec.for_each else None)
            return built[key]

        for key in s.streams:
            build(key)
        return built

    @functools.cached_property
    def reader(self) -> StreamReader:
        parents = {s.for_each for s in self.declared.values() if isinstance(s.for_each, Stream)}
        return StreamReader(self.http, keep=parents)

    def validate_credentials(self) -> dict[str, Any]:
        """One page of the first declared stream without a parent."""
        stream = next((s for s in self.declared.values() if s.for_each is None), None)
        sample = None
        if stream is not None:
            page = next(iter(self.reader._listing(stream, None, None, 1)), [])
            sample = len(page)
        return {"base_url": self.settings.base_url, "auth": getattr(self.auth, "kind", None),
                "streams": list(self.declared), "first_page_records": sample}

    def _records(self, *keys: str) -> Iterator[Any]:
        for key in keys:
            if key in self.declared:
                yield from self.reader.records(self.declared[key])

    def list_accounts(self) -> Iterator[Any]:
        return self._records("accounts")

    def list_resources(self) -> Iterator[Any]:
        return self._records("resources")

    def list_entitlements(self) -> Iterator[Any]:
        return self._records("entitlements")

    def find_entitlement_associations(self) -> Iterator[Any]:
        return self._records("assignments", "nested_entitlements")

    def list_expenses(self) -> Iterator[Any]:
        return self._records("expenses")

    def streams(self) -> Iterator[tuple[str, Any]]:
        """Only the capabilities this instance declares streams for."""
        wanted = {ENTITIES[k][1] for k in self.settings.streams}
        for capability, records in super().streams():
            if capability in wanted:
                yield capability, records

    @classmethod
    def instance_info(cls, settings: RestSettings) -> dict[str, Any]:
        """What ``ingest info NAME`` shows of a configured instance: its streams."""
        return {"streams": {
            key: {"entity": ENTITIES[key][0], "path": spec.path, "for_each": spec.for_each,
                  "paginator": (spec.paginator or settings.paginator or {"type": "single_page"}).get("type"),
                  "selector": spec.selector, "fields": sorted(spec.map)}
            for key, spec in settings.streams.items()}}
