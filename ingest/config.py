"""``schedules.yaml``: parsed, substituted and validated against each connector's schemas.

``${VAR}`` reads the environment, ``${VAR:-default}`` gives a default,
``${file:PATH}`` reads a file (relative to the config, trailing newline
stripped). Unknown keys are errors; every error names the file, the connector
and the field, and is raised as :class:`ConfigError` (exit code 2).
"""

from __future__ import annotations

import os
import re
import zoneinfo
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from ingest.errors import ConfigError
from ingest.redact import register_secret

__all__ = [
    "Config",
    "ConnectorConfig",
    "DaemonConfig",
    "Defaults",
    "IdentityConfig",
    "ResolvedConnector",
    "load_config",
    "parse_config",
    "validate_cron",
    "validate_label",
]

_VAR = re.compile(r"\$\{([^}]*)\}")
_NAME = r"^[a-z][a-z0-9_-]{0,62}$"
_LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


def validate_label(label: str) -> str:
    """A placement label (``runs_on`` / ``ingest daemon --label``): letters, digits, ``_ . -``."""
    if not _LABEL.match(label):
        raise ValueError(f"label {label!r} must be letters, digits, '_', '.' or '-' (at most 63, "
                         "starting with a letter or digit)")
    return label


def validate_cron(expr: str, timezone: str = "UTC") -> str:
    fields = expr.split()
    if len(fields) != 5:
        raise ValueError(f"{expr!r} is not a 5-field cron expression (minute hour day month weekday)")
    from ingest.schedule import trigger_for  # crontab weekdays (0/7 = Sunday), not APScheduler 3's

    try:
        trigger_for(expr, timezone)
    except ValueError as e:
        raise ValueError(f"{expr!r} is not a valid cron expression: {e}") from None
    return expr


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Defaults(_Strict):
    schedule: str = "0 2 * * *"
    max_deletion_ratio: float = Field(0.5, ge=0, le=1)
    timeout: float | None = Field(None, gt=0, description="Seconds before a run is aborted (daemon).")
    stage_workers: int | None = Field(None, ge=0, le=64, description=(
        "Processes that validate and COPY a large stream into staging (default: one per CPU but one; "
        "0: none, the run's own process does it)."))

    _cron = field_validator("schedule")(lambda cls, v: validate_cron(v))


class DaemonConfig(_Strict):
    max_concurrent_runs: int = Field(4, ge=1)
    jitter: float = Field(300.0, ge=0, description="Max seconds a connector's start is spread by (stable per name).")
    misfire_grace_time: float = Field(86400.0, gt=0)
    grace_period: float = Field(60.0, ge=0, description="Seconds in-flight runs get to finish after SIGTERM.")
    retries: int = Field(2, ge=0, description="Retries of a failed run within its day.")
    retry_backoff: float = Field(300.0, ge=0, description="Seconds before the first retry; doubles each time.")
    failing_after_days: int = Field(3, ge=1, description="Consecutive failed days before a connector is 'failing'.")
    listen: str | None = Field("127.0.0.1:9464", description="host:port of /healthz and /metrics; null turns it off.")
    lease_seconds: float = Field(60.0, gt=0)
    watch_config: bool = False


class ConnectorConfig(_Strict):
    type: str
    enabled: bool = True
    schedule: str | None = None
    max_deletion_ratio: float | None = Field(None, ge=0, le=1)
    timeout: float | None = Field(None, gt=0)
    stage_workers: int | None = Field(None, ge=0, le=64)
    settings: dict[str, Any] = Field(default_factory=dict)
    auth: dict[str, Any] = Field(default_factory=dict)
    runs_on: list[str] = Field(default_factory=list, description=(
        "Labels of the daemons this connector runs on (`ingest daemon --label L`); empty: daemons without labels."))

    _cron = field_validator("schedule")(lambda cls, v: v if v is None else validate_cron(v))

    @field_validator("runs_on")
    @classmethod
    def _labels(cls, v: list[str]) -> list[str]:
        for label in v:
            validate_label(label)
        if len(set(v)) != len(v):
            raise ValueError(f"duplicate label in {v}")
        return v


MATCH_KEYS = ("email", "employee_id", "username")
# Where a match key lives on an account: a column of ingest.accounts, or a dotted path into
# custom_attributes / extra. Checked here so the people stage can put it into SQL as is.
_ATTRIBUTE_PATH = re.compile(r"^(email|username|display_name|account_id|given_name|family_name)$"
                             r"|^(custom_attributes|extra)(\.[A-Za-z0-9_:@-]+)+$")
DEFAULT_ATTRIBUTES = {"email": "email", "username": "username",
                      "employee_id": "custom_attributes.employeeNumber"}


def _check_path(path: str) -> str:
    if not _ATTRIBUTE_PATH.match(path):
        raise ValueError(f"{path!r} is not an account attribute: use a column (email, username, display_name, "
                         "account_id, given_name, family_name) or custom_attributes.NAME / extra.NAME")
    return path


class IdentityConfig(_Strict):
    """``identity:``: how accounts across connectors resolve to people (ingest.people)."""

    sources: list[str] = Field(default_factory=list,
                               description="Authoritative connectors, in priority order: their accounts are people.")
    match: list[Literal["email", "employee_id", "username"]] = Field(
        default_factory=lambda: ["email"], min_length=1, description="Keys tried in order to link an account.")
    attributes: dict[Literal["email", "employee_id", "username"], str | dict[str, str]] = Field(
        default_factory=dict,
        description="Where a key lives: one path for every connector, or {connector: path, '*': path}.")
    privileged: list[str] = Field(
        default_factory=lambda: ["(?i)admin", "(?i)owner", "(?i)root", "(?i)superuser"],
        description="Regular expressions (PostgreSQL syntax) matched against entitlement labels and ids.")
    dormant_after_days: int = Field(90, ge=1)

    @field_validator("sources", "match")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        dup = sorted({x for x in v if v.count(x) > 1})
        if dup:
            raise ValueError(f"{', '.join(map(repr, dup))} listed twice")
        return v

    @field_validator("attributes")
    @classmethod
    def _paths(cls, v: dict[str, str | dict[str, str]]) -> dict[str, str | dict[str, str]]:
        for key, spec in v.items():
            for where, path in ({"*": spec} if isinstance(spec, str) else spec).items():
                try:
                    _check_path(path)
                except ValueError as e:
                    raise ValueError(f"{key}" + ("" if isinstance(spec, str) else f".{where}") + f": {e}") from None
        return v

    @field_validator("privileged")
    @classmethod
    def _patterns(cls, v: list[str]) -> list[str]:
        for p in v:
            try:
                re.compile(p)
            except re.error as e:
                raise ValueError(f"{p!r} is not a regular expression: {e}") from None
        return v

    def path(self, key: str, connector: str) -> str:
        """The attribute path of ``key`` on ``connector``'s accounts."""
        spec = self.attributes.get(key)
        if isinstance(spec, dict):
            return spec.get(connector) or spec.get("*") or DEFAULT_ATTRIBUTES[key]
        return spec or DEFAULT_ATTRIBUTES[key]


class Config(_Strict):
    database_url: str | None = None
    data_dir: str | None = None
    timezone: str = "UTC"
    defaults: Defaults = Field(default_factory=Defaults)
    daemon: DaemonConfig = Field(default_factory=DaemonConfig)
    connectors: dict[str, ConnectorConfig] = Field(default_factory=dict)
    identity: IdentityConfig | None = None

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str) -> str:
        try:
            zoneinfo.ZoneInfo(v)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown timezone {v!r} (use an IANA name such as UTC or Europe/Paris)") from None
        return v

    @field_validator("connectors")
    @classmethod
    def _names(cls, v: dict[str, ConnectorConfig]) -> dict[str, ConnectorConfig]:
        for name in v:
            if not re.match(_NAME, name):
                raise ValueError(f"connector name {name!r} must be lowercase letters, digits, '_' or '-'")
        return v


@dataclass
class ResolvedConnector:
    """A configured connector with its settings and auth validated by its own models."""

    name: str
    type: str
    cls: type
    enabled: bool
    schedule: str
    max_deletion_ratio: float
    timeout: float | None
    settings: BaseModel
    auth: BaseModel
    config_dir: Path
    data_dir: Path  # where ingest keeps local state (the embedded database, connector state files)
    runs_on: tuple[str, ...] = ()  # placement labels; () = daemons started without --label
    stage_workers: int | None = None  # staging processes; None = one per CPU but one

    def placed_on(self, labels: frozenset[str] | set[str] | tuple[str, ...] = ()) -> bool:
        """Whether a daemon started with ``labels`` runs this connector (exactly one kind of daemon does)."""
        return bool(set(self.runs_on) & set(labels)) if labels else not self.runs_on


@dataclass
class LoadedConfig:
    path: Path
    config: Config
    connectors: dict[str, ResolvedConnector]

    @property
    def data_dir(self) -> Path:
        return self.path.parent / (self.config.data_dir or ".ingest")

    def connector(self, name: str) -> ResolvedConnector:
        if name not in self.connectors:
            known = ", ".join(sorted(self.connectors)) or "none"
            raise ConfigError(f"{self.path}: no connector named {name!r} (configured: {known})")
        return self.connectors[name]


def _substitute(value: Any, where: str, base: Path, path: Path) -> Any:
    if isinstance(value, dict):
        return {k: _substitute(v, f"{where}.{k}" if where else str(k), base, path) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, f"{where}[{i}]", base, path) for i, v in enumerate(value)]
    if not isinstance(value, str) or "${" not in value:
        return value

    def one(m: re.Match[str]) -> str:
        expr = m.group(1)
        if expr.startswith("file:"):
            target = (base / expr[5:]).expanduser()
            try:
                return target.read_text().rstrip("\n")
            except OSError as e:
                raise ConfigError(f"{path}: {where}: cannot read ${{file:{expr[5:]}}}: {e.strerror}") from None
        name, sep, default = expr.partition(":-")
        if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", name):
            raise ConfigError(f"{path}: {where}: bad substitution ${{{expr}}}")
        if name in os.environ:
            return os.environ[name]
        if sep:
            return default
        raise ConfigError(f"{path}: {where}: environment variable {name} is not set")

    return _VAR.sub(one, value)


def _format_validation(e: ValidationError, prefix: str) -> str:
    lines = []
    for err in e.errors():
        loc = ".".join(str(x) for x in err["loc"])
        field = f"{prefix}.{loc}" if prefix and loc else (prefix or loc)
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling)"
        lines.append(f"{field}: {msg}")
    return "; ".join(lines)


def _register_secrets(model: BaseModel) -> None:
    for value in model.__dict__.values():
        if isinstance(value, SecretStr):
            register_secret(value.get_secret_value())
        elif isinstance(value, BaseModel):
            _register_secrets(value)


def parse_config(data: Any, path: Path) -> LoadedConfig:
    from ingest.registry import get_connector_class

    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    data = _substitute(data, "", path.parent, path)
    try:
        config = Config.model_validate(data)
    except ValidationError as e:
        raise ConfigError(f"{path}: {_format_validation(e, '')}") from None

    resolved: dict[str, ResolvedConnector] = {}
    for name, c in config.connectors.items():
        where = f"connectors.{name}"
        try:
            cls = get_connector_class(c.type)
        except ConfigError as e:
            raise ConfigError(f"{path}: {where}.type: {e.message}") from None
        try:
            settings = cls.Settings.model_validate(c.settings)
        except ValidationError as e:
            raise ConfigError(f"{path}: {_format_validation(e, where + '.settings')}") from None
        try:
            auth = cls.Auth.model_validate(c.auth)
        except ValidationError as e:
            raise ConfigError(f"{path}: {_format_validation(e, where + '.auth')}") from None
        _register_secrets(auth)
        schedule = c.schedule or config.defaults.schedule
        try:
            validate_cron(schedule, config.timezone)
        except ValueError as e:
            raise ConfigError(f"{path}: {where}.schedule: {e}") from None
        resolved[name] = ResolvedConnector(
            name=name, type=c.type, cls=cls, enabled=c.enabled, schedule=schedule,
            max_deletion_ratio=c.max_deletion_ratio if c.max_deletion_ratio is not None
            else config.defaults.max_deletion_ratio,
            timeout=c.timeout if c.timeout is not None else config.defaults.timeout,
            settings=settings, auth=auth, config_dir=path.parent,
            data_dir=path.parent / (config.data_dir or ".ingest"), runs_on=tuple(c.runs_on),
            stage_workers=c.stage_workers if c.stage_workers is not None else config.defaults.stage_workers,
        )
    _check_identity(config, path)
    return LoadedConfig(path=path, config=config, connectors=resolved)


def _check_identity(config: Config, path: Path) -> None:
    """``identity:`` may only name configured connectors."""
    ident = config.identity
    if ident is None:
        return
    known = ", ".join(sorted(config.connectors)) or "none"
    for i, name in enumerate(ident.sources):
        if name not in config.connectors:
            raise ConfigError(f"{path}: identity.sources[{i}]: no connector named {name!r} (configured: {known})")
    for key, spec in ident.attributes.items():
        for name in spec if isinstance(spec, dict) else ():
            if name != "*" and name not in config.connectors:
                raise ConfigError(f"{path}: identity.attributes.{key}.{name}: no connector named {name!r} "
                                  f"(configured: {known})")


class _UniqueKeyLoader(yaml.SafeLoader):
    """safe_load that refuses a duplicated key (two connectors with one name) instead of keeping the last."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=deep)
                try:
                    first = seen.get(key)
                except TypeError:  # an unhashable key: SafeLoader reports it
                    continue
                if first is not None:
                    raise yaml.constructor.ConstructorError(
                        "while constructing a mapping", node.start_mark,
                        f"duplicated key {key!r} (first at line {first.line + 1})", key_node.start_mark)
                seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep=deep)


def load_config(path: str | os.PathLike[str] | None = None) -> LoadedConfig:
    """Read and validate ``path`` (default: ``$INGEST_CONFIG`` or ``./schedules.yaml``)."""
    path = Path(path or os.environ.get("INGEST_CONFIG") or "schedules.yaml").resolve()
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found (pass --config PATH or set INGEST_CONFIG)") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the config file: {e.strerror}") from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{path}: not valid YAML{at}: {getattr(e, 'problem', e)}") from None
    return parse_config(data, path)
