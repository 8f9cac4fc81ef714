"""The ``ingest`` command line (typer + rich). Exit codes: 0 ok, 1 a run or check failed, 2 usage/config."""

from __future__ import annotations

import csv
import json
import os
import shutil
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Optional

import sqlalchemy as sa
import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text
from typer.core import TyperGroup

from ingest import __version__
from ingest.errors import AlreadyRunningError, ConfigError, IngestError


class _Group(TyperGroup):
    """Turns the errors every command can meet into a clear line and the right exit code."""

    def invoke(self, ctx):
        from ingest.redact import redact

        try:
            return super().invoke(ctx)
        except ConfigError as e:
            _error(redact(str(e)))
            raise typer.Exit(2) from None
        except (sa.exc.OperationalError, sa.exc.InterfaceError) as e:
            msg = str(getattr(e, "orig", e)).strip().splitlines()[0]
            _error(f"cannot use the database: {redact(msg)}")
            raise typer.Exit(1) from None
        except IngestError as e:
            _error(redact(str(e)))
            raise typer.Exit(1) from None


app = typer.Typer(cls=_Group, add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                  pretty_exceptions_enable=False,
                  help="ingest: a daily, queryable record of who has access to what.")
db_app = typer.Typer(cls=_Group, no_args_is_help=True, help="The database: migrate, url, shell, start, stop.")
app.add_typer(db_app, name="db")

# markup off: what a source or a user wrote ("[/x]", "[connector=…]") prints as text; styles go through Text
out = Console(soft_wrap=True, markup=False)
err = Console(stderr=True, soft_wrap=True, markup=False)
ENTITY_ORDER = ("account", "resource", "entitlement", "assignment", "nested_entitlement", "expense")
LABELS = {"nested_entitlement": "nested group"}


@dataclass
class State:
    config_path: Optional[str]
    database_url: Optional[str]

    def loaded(self):
        from ingest.config import load_config

        return load_config(self.config_path)

    def loaded_or_none(self):
        """The config, or None when no file exists and none was asked for (db commands work without one)."""
        from ingest.config import load_config

        path = self.config_path or os.environ.get("INGEST_CONFIG")
        if path is None and not Path("schedules.yaml").exists():
            return None
        return load_config(path)

    def url(self, loaded=None, start: bool = True) -> str:
        from ingest.db import resolve_database_url

        loaded = loaded if loaded is not None else self.loaded_or_none()
        data_dir = loaded.data_dir if loaded else Path.cwd() / ".ingest"
        config_url = loaded.config.database_url if loaded else None
        return resolve_database_url(self.database_url, config_url, data_dir, start=start)

    def engine(self, loaded=None):
        from ingest.db import get_engine, migrate

        engine = get_engine(self.url(loaded))
        migrate(engine)
        return engine


def _state(ctx: typer.Context) -> State:
    return ctx.obj


def _error(message: str) -> None:
    err.print(Text.assemble(("error:", "bold red"), " ", message), highlight=False)


def _fail(message: str, code: int) -> None:
    _error(message)
    raise typer.Exit(code)


def _choice(option: str, value: str, allowed: tuple[str, ...]) -> None:
    """A bad option value is quoted back with the allowed ones (exit 2)."""
    if value not in allowed:
        _fail(f"{option} {value!r}: must be one of {', '.join(allowed)}", 2)


def _known(st: State, name: str, engine=None) -> None:
    """Exit 2 naming ``name`` when it is neither configured nor in the database's history."""
    from ingest.queries import has_snapshots

    loaded = st.loaded_or_none()
    if loaded is not None and name in loaded.connectors:
        return
    if engine is not None and has_snapshots(engine, name):
        return
    known = ", ".join(sorted(loaded.connectors)) if loaded is not None and loaded.connectors else "none"
    _fail(f"no connector named {name!r} (configured: {known})", 2)


@app.callback()
def main_options(
    ctx: typer.Context,
    config: Optional[str] = typer.Option(None, "--config", "-c", help="schedules.yaml (env INGEST_CONFIG)."),
    database_url: Optional[str] = typer.Option(None, "--database-url", help="PostgreSQL URL (env INGEST_DATABASE_URL)."),
    log_format: Optional[str] = typer.Option(None, "--log-format", help="console or json (default: console on a terminal)."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging."),
    version: bool = typer.Option(False, "--version", help="Print the version and exit."),
) -> None:
    from ingest.logs import configure_logging

    if version:
        out.print(__version__)
        raise typer.Exit(0)
    if log_format is not None:
        _choice("--log-format", log_format, ("console", "json"))
    configure_logging(log_format, verbose=verbose, force=True,
                      quiet_console=ctx.invoked_subcommand != "daemon")
    ctx.obj = State(config, database_url)


# -- run -----------------------------------------------------------------------

def _progress_display():
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    return Progress(SpinnerColumn(), TextColumn("{task.description:<22}"), TextColumn("{task.fields[n]:>10,} records"),
                    TextColumn("{task.fields[rate]:>9,.0f}/s"), TextColumn("{task.fields[requests]:>7,} requests"),
                    TimeElapsedColumn(), console=err, transient=True)


class _RunProgress:
    """Live bars on a terminal: records and rate per entity of one run."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.bars = _progress_display()
        self.tasks: dict[str, Any] = {}
        self.started: dict[str, float] = {}

    def update(self, entity: str, n: int, requests: int) -> None:
        import time

        if entity not in self.tasks:
            self.tasks[entity] = self.bars.add_task(f"{self.name} {LABELS.get(entity, entity)}", n=0, rate=0.0,
                                                    requests=0)
            self.started[entity] = time.monotonic()
        rate = n / max(time.monotonic() - self.started[entity], 1e-6)
        self.bars.update(self.tasks[entity], n=n, rate=rate, requests=requests)


def _summary_table(name: str, result) -> Table:
    t = Table(title=f"{name}: snapshot {result.snapshot_id} {result.status} in {result.duration:.1f} s",
              title_justify="left")
    for col in ("entity", "fetched", "added", "modified", "removed", "unchanged", "invalid"):
        t.add_column(col, justify="left" if col == "entity" else "right")
    for ent in ENTITY_ORDER:
        s = result.stats.get(ent)
        if isinstance(s, dict):
            t.add_row(LABELS.get(ent, ent), *(f"{s.get(k, 0):,}" for k in ("fetched", "added", "modified", "removed", "unchanged", "invalid")))
    return t


@app.command()
def run(
    ctx: typer.Context,
    names: list[str] = typer.Argument(None, help="Connector instance names."),
    all_: bool = typer.Option(False, "--all", help="Every enabled connector."),
    allow_mass_delete: bool = typer.Option(False, "--allow-mass-delete", help="Accept a run that removes more than max_deletion_ratio."),
    json_out: bool = typer.Option(False, "--json", help="Print results as JSON."),
    fresh: bool = typer.Option(False, "--fresh", help="Start over: do not continue an interrupted or failed "
                               "run of the connector from what it had staged."),
) -> None:
    """Take one snapshot of each named connector now.

    A run that died (interrupted, failed) less than 12 hours ago with the same settings is continued
    from what it had staged, for connectors that checkpoint their streams (README "Resume")."""
    from ingest.runner import run as run_one

    st = _state(ctx)
    loaded = st.loaded()
    if all_:
        names = [n for n, c in loaded.connectors.items() if c.enabled]
    if not names:
        _fail("name at least one connector, or pass --all", 2)
    for n in names:
        loaded.connector(n)
    url = st.url(loaded)

    results, ok = [], True
    for name in names:
        display = _RunProgress(name) if err.is_terminal and not json_out else None
        try:
            if display:
                with display.bars:
                    result = run_one(loaded, name, database_url=url, allow_mass_delete=allow_mass_delete,
                                     progress=display.update, fresh=fresh)
            else:
                result = run_one(loaded, name, database_url=url, allow_mass_delete=allow_mass_delete, fresh=fresh)
        except KeyboardInterrupt:  # Ctrl-C: the runner marked the snapshot interrupted
            err.print(f"{name}: interrupted", style="yellow", markup=False, highlight=False)
            raise typer.Exit(130) from None
        except AlreadyRunningError as e:
            ok = False
            results.append({"connector": name, "status": "skipped", "error": str(e)})
            err.print(f"{name}: {e}", style="yellow", highlight=False)
            continue
        ok = ok and result.ok
        results.append({"connector": name, "snapshot_id": result.snapshot_id, "status": result.status,
                        "duration_s": round(result.duration, 3), "stats": result.stats, "error": result.error})
        if not json_out:
            out.print(_summary_table(name, result))
            if result.error:
                err.print(f"{name}: {result.status}: {result.error}", style="red", highlight=False)
    if json_out:
        out.print_json(json.dumps(results, default=str))
    raise typer.Exit(0 if ok else 1)


# -- check / connectors / info ----------------------------------------------------

@app.command()
def check(ctx: typer.Context, name: str = typer.Argument(..., help="Connector instance name.")) -> None:
    """Validate credentials and settings against the live source."""
    from ingest.connector import ConnectorContext

    st = _state(ctx)
    loaded = st.loaded()
    _known(st, name)
    rc = loaded.connector(name)
    from ingest.credentials._cli import store_for

    try:
        ctx = ConnectorContext(name=rc.name, settings=rc.settings, auth=rc.auth, state_dir=str(rc.data_dir),
                               credentials=store_for(st, loaded))
        with rc.cls(ctx) as connector:
            info = connector.validate_credentials() or {}
    except ConfigError:
        raise
    except Exception as e:  # noqa: BLE001 - one line and what to do, never a traceback
        from ingest.credentials._diagnose import explain

        reason, todo = explain(e, name, getattr(rc.auth, "credential", rc.auth))
        err.print(Text.assemble(("error: ", "bold red"), f"{name}: check failed: {reason}"))
        err.print(Text(f"  what to do: {todo}"))
        raise typer.Exit(1) from None
    out.print(Text.assemble((f"{name}: OK", "green"), f" ({rc.type})"))
    for k, v in info.items():
        out.print(f"  {k}: {v}", highlight=False)


def _all_types() -> list[tuple[str, Any, str | None]]:
    from ingest.registry import connector_types, get_connector_class

    rows = []
    for type_name in sorted(connector_types()):
        try:
            rows.append((type_name, get_connector_class(type_name), None))
        except Exception as e:  # a broken plugin must not hide the others
            rows.append((type_name, None, f"{type(e).__name__}: {e}"))
    return rows


@app.command()
def connectors(json_out: bool = typer.Option(False, "--json")) -> None:
    """List connector types (built-in and plugins) with their capabilities."""
    rows = _all_types()
    if json_out:
        out.print_json(json.dumps([
            {"type": t, "name": c.name if c else None, "capabilities": c.info()["capabilities"] if c else [],
             "error": e} for t, c, e in rows]))
        return
    table = Table("type", "name", "capabilities")
    for t, c, e in rows:
        table.add_row(t, c.name if c else Text(e, style="red"), ", ".join(c.capabilities()) if c else "")
    out.print(table)


@app.command()
def info(ctx: typer.Context, type_name: str = typer.Argument(..., metavar="TYPE|NAME"),
         json_out: bool = typer.Option(False, "--json")) -> None:
    """A connector type's self-description (the Lumos SDK `info` document); for an instance also its settings."""
    from ingest.credentials._form import describe_instance
    from ingest.registry import connector_types, get_connector_class

    instance = None
    if type_name not in connector_types():
        loaded = _state(ctx).loaded_or_none()
        if loaded is not None and type_name in loaded.connectors:
            instance = describe_instance(loaded, type_name)
            type_name = instance["type"]
            rc = loaded.connectors[instance["name"]]
            if hasattr(rc.cls, "instance_info"):  # what the instance declares (the streams of a rest connector)
                instance.update(rc.cls.instance_info(rc.settings))
    doc = get_connector_class(type_name).info()
    if json_out:
        out.print_json(json.dumps({**doc, "instance": instance} if instance else doc))
        return
    out.print(Text.assemble((doc["user_friendly_name"], "bold"), f" ({doc['app_id']})\n{doc['description']}\n"))
    out.print("capabilities: " + ", ".join(doc["capabilities"]))
    for title, key in (("settings", "request_settings_schema"), ("auth", "authentication_schema")):
        schema = doc[key]
        branches = [schema] if "properties" in schema else [
            schema.get("$defs", {}).get(b.get("$ref", "").rsplit("/", 1)[-1], b) for b in schema.get("oneOf", [])]
        for branch in branches:
            required = set(branch.get("required", []))
            label = title if len(branches) == 1 else f"{title} ({branch.get('title', '')})"
            table = Table("field", "type", "default", "section", "description", title=label, title_justify="left")
            for field, spec in branch.get("properties", {}).items():
                typ = spec.get("type") or " | ".join(x.get("type", "?") for x in spec.get("anyOf", []))
                secret = " (secret)" if spec.get("writeOnly") else ""
                table.add_row(field + (" *" if field in required else ""), str(typ) + secret,
                              "" if "default" not in spec else json.dumps(spec["default"]), spec.get("x-section", ""),
                              spec.get("description", ""))
            out.print(table)
    if doc["resource_types"]:
        out.print("resource types: " + ", ".join(r["type_id"] for r in doc["resource_types"]))
    if doc["entitlement_types"]:
        out.print("entitlement types: " + ", ".join(e["type_id"] for e in doc["entitlement_types"]))
    if instance and instance.get("declares"):
        own = instance["declares"]
        out.print(Text(f"{instance['name']} declares: {own.get('user_friendly_name') or own.get('app_id')} "
                       f"({own.get('app_id')} {own.get('version') or ''}); capabilities: "
                       + ", ".join(own.get("capabilities") or [])))
    if instance:
        for title in ("settings", "auth"):
            label = f"{instance['name']}: {title}" + (f" ({instance['auth_kind']})" if title == "auth"
                                                      and instance["auth_kind"] else "")
            table = Table("field", "value", "from", title=label, title_justify="left")
            for row in instance[title]:
                value = row["value"] if isinstance(row["value"], str) else json.dumps(row["value"])
                table.add_row(row["field"], Text(value), Text(row["source"]))
            out.print(table)
        for stream, spec in instance.get("streams", {}).items():
            parent = f" for each {spec['for_each']}" if spec.get("for_each") else ""
            out.print(f"stream {stream}: GET {spec['path']}{parent} ({spec['paginator']}) -> {spec['entity']}: "
                      f"{', '.join(spec['fields'])}", highlight=False, markup=False, soft_wrap=True)


# -- status / snapshots / diff ------------------------------------------------------

def _fmt_time(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, datetime):
        return v.astimezone(UTC).strftime("%Y-%m-%d %H:%M")
    return str(v)


def _placement(item: dict[str, Any]) -> str:
    """Where a connector runs: its labels (or unlabelled daemons) and the live daemons planning it."""
    labels = ", ".join(item["runs_on"]) or "unlabelled"
    hosts = ", ".join(":".join(d.split(":")[:2]) for d in item["daemons"])
    return f"{labels} ({hosts})" if hosts else labels


@app.command()
def status(ctx: typer.Context, json_out: bool = typer.Option(False, "--json")) -> None:
    """Per configured connector: schedule, next run, last snapshot, last success, failing."""
    from ingest.queries import last_snapshots, last_successes
    from ingest.schedule import failure_streaks, next_run_times, planned_by

    st = _state(ctx)
    loaded = st.loaded()
    engine = st.engine(loaded)
    last, success = last_snapshots(engine), last_successes(engine)
    nexts = next_run_times(loaded, engine)
    try:
        where = planned_by(engine)
    except Exception:  # noqa: BLE001 - status works without daemon state
        where = {}
    streaks = failure_streaks(engine, loaded.config.timezone, loaded.config.daemon.failing_after_days,
                              list(loaded.connectors))
    items = []
    for name, rc in loaded.connectors.items():
        last_, ok_ = last.get(name), success.get(name)
        items.append({
            "connector": name, "type": rc.type, "enabled": rc.enabled, "schedule": rc.schedule,
            "next_run": nexts.get(name), "runs_on": list(rc.runs_on), "daemons": where.get(name, []),
            "last_snapshot": None if not last_ else {
                "snapshot_id": last_["snapshot_id"], "status": last_["status"], "started_at": last_["started_at"],
                "finished_at": last_["finished_at"], "duration_s": (last_["stats"] or {}).get("duration_s"),
                "counts": {k: v for k, v in (last_["stats"] or {}).items() if k in ENTITY_ORDER},
                "error": last_["error"]},
            "last_success": None if not ok_ else {"snapshot_id": ok_["snapshot_id"], "finished_at": ok_["finished_at"]},
            **streaks[name],  # failing, consecutive_failures, failed_days
        })
    if json_out:
        out.print_json(json.dumps(items, default=str))
        return
    table = Table("connector", "type", "schedule", "runs on", "next run (UTC)", "last snapshot", "took", "accounts",
                  "grants", "last success")
    for it in items:
        snap = it["last_snapshot"]
        color = {"succeeded": "green", "failed": "red", "rejected": "red", "interrupted": "yellow"}.get(
            snap["status"] if snap else "", "white")
        counts = {k: v.get("added", 0) + v.get("modified", 0) + v.get("unchanged", 0)
                  for k, v in (snap["counts"] if snap else {}).items()}
        table.add_row(
            Text.assemble(it["connector"], (f" (failing {it['failed_days']} days)" if it["failing"] else "", "red")),
            it["type"], it["schedule"] + ("" if it["enabled"] else " (disabled)"), _placement(it),
            _fmt_time(it["next_run"]),
            Text.assemble((f"#{snap['snapshot_id']} {snap['status']}", color), f" {_fmt_time(snap['started_at'])}")
            if snap else "never",
            f"{snap['duration_s']:.1f} s" if snap and snap["duration_s"] is not None else "",
            f"{counts['account']:,}" if "account" in counts else "",
            f"{counts['assignment']:,}" if "assignment" in counts else "",
            _fmt_time(it["last_success"]["finished_at"]) if it["last_success"] else "never",
        )
    out.print(table)


@app.command()
def snapshots(ctx: typer.Context, name: str, limit: int = typer.Option(50, "--limit"),
              json_out: bool = typer.Option(False, "--json")) -> None:
    """A connector's snapshots, newest first."""
    from ingest.queries import snapshots_of

    st = _state(ctx)
    engine = st.engine()
    _known(st, name, engine)
    rows = snapshots_of(engine, name, limit)
    if json_out:
        out.print_json(json.dumps(rows, default=str))
        return
    table = Table("id", "status", "trigger", "started", "duration", "added", "modified", "removed", "error")
    for r in rows:
        s = r["stats"] or {}
        tot = {k: sum(v.get(k, 0) for e, v in s.items() if e in ENTITY_ORDER and isinstance(v, dict))
               for k in ("added", "modified", "removed")}
        dur = (r["finished_at"] - r["started_at"]).total_seconds() if r["finished_at"] else None
        table.add_row(str(r["snapshot_id"]), r["status"], r["trigger"], _fmt_time(r["started_at"]),
                      f"{dur:.1f} s" if dur is not None else "", f"{tot['added']:,}", f"{tot['modified']:,}",
                      f"{tot['removed']:,}", (r["error"] or "")[:80])
    out.print(table)


@app.command()
def diff(ctx: typer.Context, name: str, from_id: Optional[str] = typer.Option(None, "--from", help="Snapshot id."),
         to_id: Optional[str] = typer.Option(None, "--to", help="Snapshot id."), limit: int = typer.Option(10, "--limit", help="Rows shown per entity and change."),
         json_out: bool = typer.Option(False, "--json")) -> None:
    """What was added, removed or changed between two snapshots (default: the last two successful)."""
    from ingest.diff import DiffError, diff_snapshots

    from_, to = _snapshot_id("--from", from_id), _snapshot_id("--to", to_id)
    st = _state(ctx)
    engine = st.engine()
    _known(st, name, engine)
    try:
        result = diff_snapshots(engine, name, from_, to)
    except DiffError as e:
        _fail(str(e), 1)
    if json_out:
        out.print_json(json.dumps(result, default=str))
        return
    out.print(Text.assemble((name, "bold"), f": snapshot {result['from']} -> {result['to']}"))
    for ent in ENTITY_ORDER:
        changes = result["changes"].get(ent, [])
        by = {k: [c for c in changes if c["change"] == k] for k in ("added", "removed", "modified")}
        out.print(f"  {ent}s: +{len(by['added']):,} added, -{len(by['removed']):,} removed, ~{len(by['modified']):,} modified")
        for kind, mark in (("added", "+"), ("removed", "-"), ("modified", "~")):
            for c in by[kind][:limit]:
                detail = ""
                if kind == "modified":
                    fields = [k for k in (c["after"] or {}) if (c["before"] or {}).get(k) != c["after"].get(k)]
                    detail = "  " + ", ".join(f"{f}: {_short(c['before'].get(f))} -> {_short(c['after'].get(f))}" for f in fields)
                label = c.get("label") or ""  # who and what: an email, "u366 (j.doe) -> Standard licence"
                shown = label if label and ent in ("assignment", "nested_entitlement") else f"{c['key']} {label}".rstrip()
                out.print(f"      {mark} {shown}{detail}", highlight=False)
            if len(by[kind]) > limit:
                out.print(f"      … {len(by[kind]) - limit:,} more {kind}", highlight=False)


def _snapshot_id(option: str, value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        _fail(f"{option} {value!r}: must be a snapshot id (a whole number; see `ingest snapshots NAME`)", 2)


def _short(v: Any) -> str:
    s = json.dumps(v, default=str, ensure_ascii=False) if not isinstance(v, str) else v
    return s if len(s) <= 60 else s[:57] + "..."


# -- sql ----------------------------------------------------------------------------

@app.command("sql")
def sql_cmd(ctx: typer.Context, query: str, fmt: str = typer.Option("table", "--format", help="table, csv or json"),
            write: bool = typer.Option(False, "--write", help="Allow changes (default: a read-only transaction).")) -> None:
    """Run one query and print the result (read-only unless --write)."""
    import psycopg

    from ingest.queries import run_sql

    _choice("--format", fmt, ("table", "csv", "json"))
    st = _state(ctx)
    engine = st.engine()
    try:
        cols, rows = run_sql(engine, query, write=write)
    except psycopg.errors.ReadOnlySqlTransaction as e:
        _fail(f"{str(e).strip()} (ingest sql is read-only; pass --write to change data)", 1)
    except (psycopg.Error, sa.exc.DBAPIError) as e:
        _fail(str(getattr(e, "orig", e)).strip(), 1)
    if fmt == "json":
        sys.stdout.write(json.dumps([dict(zip(cols, r)) for r in rows], default=str, ensure_ascii=False) + "\n")
    elif fmt == "csv":
        w = csv.writer(sys.stdout)
        w.writerow(cols)
        for r in rows:
            w.writerow(["" if v is None else (json.dumps(v) if isinstance(v, (dict, list)) else v) for v in r])
    else:
        table = Table(*cols)
        for r in rows:
            table.add_row(*("" if v is None else (json.dumps(v, default=str) if isinstance(v, (dict, list)) else str(v)) for v in r))
        out.print(table)
        out.print(f"({len(rows)} row{'s' if len(rows) != 1 else ''})", style="dim")


# -- auth -------------------------------------------------------------------------------

@app.command()
def auth(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="Connector instance name."),
    paste: bool = typer.Option(False, "--paste", help="Read the redirected URL from stdin instead of listening."),
    status_: bool = typer.Option(False, "--status", help="Show what is stored (never the token)."),
    forget: bool = typer.Option(False, "--forget", help="Delete the stored tokens."),
    timeout: float = typer.Option(300.0, "--timeout", help="Seconds to wait for the browser's redirect."),
) -> None:
    """OAuth 2.0 consent for a connector: prints the URL, receives the callback, stores the tokens."""
    from ingest.credentials._cli import auth_command

    st = _state(ctx)
    raise typer.Exit(auth_command(st, st.loaded(), name, paste=paste, status=status_, forget=forget,
                                  timeout=timeout, out=out, err=err))


# -- people: who / report -------------------------------------------------------------

@app.command()
def who(ctx: typer.Context, query: str = typer.Argument(..., metavar="EMAIL_OR_ID"),
        json_out: bool = typer.Option(False, "--json")) -> None:
    """One person: their accounts in every connector, effective access (with the path), findings."""
    from ingest.people._cli import show_person

    st = _state(ctx)
    loaded = st.loaded_or_none()
    show_person(st.engine(loaded), loaded.config.identity if loaded else None, query, out, json_out)


@app.command()
def report(ctx: typer.Context, out_dir: Path = typer.Option(Path("access-review"), "--out", help="Directory to write into.")) -> None:
    """The access review: one self-contained HTML page plus one CSV file per finding kind."""
    from ingest.people._cli import make_report

    st = _state(ctx)
    loaded = st.loaded_or_none()
    make_report(st.engine(loaded), loaded.config.identity if loaded else None, out_dir, out)


# -- connector (the Lumos SDK's on-prem CLI style) -----------------------------------

@app.command("connector")
def connector_call(
    ctx: typer.Context,
    type_name: str = typer.Argument(..., metavar="TYPE", help="A connector type (ingest connectors)."),
    capability: str = typer.Argument(..., help="info, validate_credentials, list_accounts, ..."),
    json_text: str | None = typer.Option(None, "--json", help="The request: {settings, auth, request, page}."),
    json_file: Path | None = typer.Option(None, "--json-file", help="Read the request from this file."),
    result_file_path: Path | None = typer.Option(None, "--result-file-path", help="Write the answer gzipped here (.gz)."),
) -> None:
    """Call one capability of a connector type as the Lumos SDK's on-prem CLI does ({response, page} or {is_error, error})."""
    import gzip

    from ingest.sdk_cli import call

    if capability != "info" and (json_text is None) == (json_file is None):
        _fail("give the request with exactly one of --json or --json-file", 2)
    if result_file_path is not None and not str(result_file_path).endswith(".gz"):
        _fail(f"--result-file-path {str(result_file_path)!r}: the name must end in .gz", 2)
    if json_file is not None:
        try:
            json_text = json_file.read_text()
        except OSError as e:
            _fail(f"--json-file {str(json_file)!r}: {e.strerror}", 2)
    loaded = _state(ctx).loaded_or_none()
    answer = call(type_name, capability, json_text or "{}",
                  state_dir=str(loaded.data_dir) if loaded else None)
    body = json.dumps(answer, default=str)
    if result_file_path is not None:
        result_file_path.write_bytes(gzip.compress(body.encode()))
    else:
        sys.stdout.write(body + "\n")


# -- new-connector -------------------------------------------------------------------

@app.command("new-connector")
def new_connector(
    name: str = typer.Argument(..., metavar="NAME", help="The connector type: lowercase letters and digits, words joined by single underscores (acme_hr)."),
    target: Optional[Path] = typer.Option(None, "--dir", "-d", help="Where to write the package (default ./ingest-NAME)."),
    force: bool = typer.Option(False, "--force", help="Overwrite the generated files in an existing directory."),
) -> None:
    """Scaffold a connector plugin package (entry point, declarative streams, a fake server, a conformance test)."""
    from ingest.scaffold import new_connector as scaffold

    made = scaffold(name, target, force=force)
    out.print(Text.assemble("wrote ", (made.package, "bold"), f" into {made.root}:"))
    for path in made.files:
        out.print(f"  {path.relative_to(made.root)}", highlight=False)
    out.print(f"next: cd {made.root} && pip install -e '.[test]' && pytest   (then: ingest info {name})",
              highlight=False)


# -- daemon -------------------------------------------------------------------------

@app.command()
def daemon(ctx: typer.Context, watch_config: bool = typer.Option(False, "--watch-config", help="Reload schedules.yaml when it changes."),
           label: list[str] = typer.Option([], "--label", "-l", help="Run only the connectors placed on this label (runs_on); repeatable."),
           listen: Optional[str] = typer.Option(None, "--listen", help="host:port of /healthz and /metrics for this daemon "
                                                "(overrides daemon.listen; 'off' turns it off).")) -> None:
    """Run forever: fire every enabled connector on its schedule (with --label: those placed on the labels)."""
    from ingest.config import validate_label
    from ingest.daemon import serve

    for value in label:
        try:
            validate_label(value)
        except ValueError as e:
            raise typer.BadParameter(str(e), param_hint="--label") from None
    st = _state(ctx)
    loaded = st.loaded()
    url = st.url(loaded)
    raise typer.Exit(serve(st.config_path, loaded, url, watch_config=watch_config or loaded.config.daemon.watch_config,
                           labels=label, listen=None if listen is None else ("" if listen == "off" else listen)))


# -- db -------------------------------------------------------------------------------

def _embedded(st: State):
    from ingest.db import EmbeddedDatabase

    loaded = st.loaded_or_none()
    return EmbeddedDatabase(loaded.data_dir if loaded else Path.cwd() / ".ingest"), loaded


@db_app.command("migrate")
def db_migrate(ctx: typer.Context) -> None:
    """Apply pending schema migrations."""
    from ingest.db import get_engine, migrate

    st = _state(ctx)
    applied = migrate(get_engine(st.url()))
    out.print("applied: " + ", ".join(applied) if applied else "schema is up to date")


@db_app.command("url")
def db_url(ctx: typer.Context, show_password: bool = typer.Option(
        False, "--show-password", help="Print a configured password in clear (default: ***).")) -> None:
    """Print the database URL (a configured password masked unless --show-password)."""
    from ingest.db import libpq_url, url_without_password

    st = _state(ctx)
    url = libpq_url(st.url(start=False))
    out.print(url if show_password else url_without_password(url, mask="***")[0], highlight=False, soft_wrap=True)


@db_app.command("shell")
def db_shell(ctx: typer.Context) -> None:
    """Open psql on the database (a configured password goes to psql as PGPASSWORD, not on its command line)."""
    from ingest.db import libpq_url, url_without_password

    st = _state(ctx)
    url, password = url_without_password(libpq_url(st.url()))
    psql = shutil.which("psql")
    if psql is None:
        from ingest.embedded import _bin

        psql = _bin("psql")
    env = dict(os.environ)
    if password is not None:  # through the environment, never argv (ps shows argv to every user)
        env["PGPASSWORD"] = password
    os.execve(psql, [psql, url], env)


@db_app.command("start")
def db_start(ctx: typer.Context) -> None:
    """Keep the embedded server running in the background."""
    from ingest.db import libpq_url

    st = _state(ctx)
    embedded, loaded = _embedded(st)
    if loaded is not None and (st.database_url or loaded.config.database_url):
        _fail("a database_url is configured; `ingest db start` manages only the embedded server", 2)
    url = embedded.start(keep_running=True)
    out.print(f"embedded PostgreSQL running; connect with: {libpq_url(url)}", highlight=False)


@db_app.command("stop")
def db_stop(ctx: typer.Context, force: bool = typer.Option(False, "--force", help="Stop even while processes use it.")) -> None:
    """Stop the embedded server (with processes attached: when the last one exits, unless --force)."""
    st = _state(ctx)
    embedded, _ = _embedded(st)
    stopped, attached = embedded.stop(force=force)
    if attached and not stopped:
        pids = ", ".join(str(p) for p in attached)
        err.print(f"{len(attached)} process(es) still use the embedded server (pid {pids}); it stops when the "
                  "last one exits (--force stops it now)", highlight=False)
        raise typer.Exit(1)
    out.print("stopped" if stopped else "the embedded server was not running")


def main() -> None:
    try:
        app(standalone_mode=True)
    except ConfigError as e:
        err.print(f"error: {e}", highlight=False, markup=False)
        sys.exit(2)
