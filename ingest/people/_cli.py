"""What ``ingest who`` and ``ingest report`` print; ``ingest.cli`` only registers the commands."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from rich.console import Console
from rich.table import Table

from ingest.config import IdentityConfig
from ingest.people._queries import find_person, person_detail
from ingest.people._report import KIND_TITLES, write_report

__all__ = ["show_person", "make_report"]


def _when(v: Any) -> str:
    return v.astimezone(UTC).strftime("%Y-%m-%d %H:%M") if isinstance(v, datetime) else ("" if v is None else str(v))


def show_person(engine: sa.Engine, cfg: IdentityConfig | None, query: str, out: Console, json_out: bool) -> None:
    """One person: accounts in every connector, effective access with its path, findings.
    Raises :class:`PersonNotFound` (exit 1) when nobody or several people match."""
    with engine.connect() as conn:
        conn.execute(sa.text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY"))
        detail = person_detail(conn, find_person(conn, query)["identity_id"])
    if json_out:
        out.print_json(json.dumps(detail, default=str))
        return
    p = detail["person"]
    status = "[red]terminated[/]" if p["status"] == "terminated" else "[green]active[/]"
    out.print(f"[bold]{p['display_name'] or p['email']}[/] <{p['email'] or ''}>  {status}", highlight=False)
    out.print(f"identity {p['identity_id']}" + (f" · employee {p['employee_id']}" if p["employee_id"] else "")
              + (f" · source {p['source_connector']}" if p["source_connector"] else ""), style="dim", highlight=False)
    accounts = Table("connector", "account", "e-mail", "status", "type", "last activity", "matched by",
                     title="accounts", title_justify="left")
    for a in detail["accounts"]:
        accounts.add_row(a["connector"], a["username"] or a["account_id"], a["email"] or "",
                         a["status"] if a["status"] == "ACTIVE" else f"[yellow]{a['status']}[/]", a["account_type"],
                         _when(a["last_activity_at"]), a["matched_by"])
    out.print(accounts)
    access = Table("connector", "account", "entitlement", "resource", "through", title="effective access",
                   title_justify="left")
    for g in detail["access"]:
        through = "direct" if not g["depth"] else " → ".join(g["via_labels"]) + " → (this)"
        resource = g["resource_label"] or (f"{g['resource_type']}:{g['resource_id']}" if g["resource_id"] else "")
        access.add_row(g["connector"], g["account_id"], g["entitlement_label"] or g["entitlement_id"], resource,
                       through)
    out.print(access)
    findings = Table("finding", "connector", "account", "entitlement", "since snapshot", title="findings",
                     title_justify="left")
    for f in detail["findings"]:
        findings.add_row(KIND_TITLES.get(f["kind"], f["kind"]), f["connector"], f["account_id"],
                         f["entitlement_id"] or "", str(f["since"]))
    out.print(findings if detail["findings"] else "[green]no findings[/]")


def make_report(engine: sa.Engine, cfg: IdentityConfig | None, out_dir: Path, out: Console) -> None:
    files = write_report(engine, out_dir)
    out.print(f"access review: {files.html}", highlight=False)
    for kind, path in files.csv.items():
        out.print(f"  {kind}: {path}", highlight=False)
