"""Helpers for engine tests: a JSON-file organisation and the CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import sqlalchemy as sa
import yaml
from typer.testing import CliRunner

from ingest.cli import app


class Org:
    """A small organisation in a JSON file served by the ``file`` connector."""

    def __init__(self, tmp_path: Path, database_url: str, name: str = "acme", **connector: Any) -> None:
        self.path = tmp_path / f"{name}.json"
        self.config = tmp_path / "schedules.yaml"
        self.url = database_url
        self.name = name
        self.data: dict[str, list[dict[str, Any]]] = {
            "account": [], "resource": [], "entitlement": [], "assignment": [], "nested_entitlement": [],
        }
        self.connector = {"type": "file", "settings": {"path": str(self.path)}, **connector}
        self.save()

    def save(self) -> None:
        self.path.write_text(json.dumps(self.data))
        existing = yaml.safe_load(self.config.read_text()) if self.config.exists() else {"connectors": {}}
        existing["connectors"][self.name] = self.connector
        self.config.write_text(yaml.safe_dump(existing))

    def cli(self, *args: str):
        return CliRunner().invoke(app, ["--config", str(self.config), "--database-url", self.url, *args])

    def run(self, *flags: str):
        return self.cli("run", self.name, *flags)

    def query(self, sql: str, **params: Any) -> list[dict[str, Any]]:
        from ingest.db import get_engine

        with get_engine(self.url).connect() as conn:
            return [dict(r._mapping) for r in conn.execute(sa.text(sql), params)]

    def last_snapshot(self) -> dict[str, Any]:
        return self.query("SELECT * FROM ingest.snapshots WHERE connector = :c ORDER BY snapshot_id DESC LIMIT 1",
                          c=self.name)[0]


def people(n: int, start: int = 0) -> list[dict[str, Any]]:
    return [{"account_id": f"u{i}", "email": f"user{i}@example.com", "username": f"user{i}",
             "display_name": f"User {i}", "custom_attributes": {"department": "eng" if i % 2 else "sales"}}
            for i in range(start, start + n)]


def cli(cfg: Path, database_url: str, *args: str):
    """``ingest --config CFG --database-url URL ARGS...`` in-process."""
    return CliRunner().invoke(app, ["--config", str(cfg), "--database-url", database_url, *args])


def output(result) -> str:
    """Everything a CLI invocation printed (stdout, and stderr where the runner keeps it apart)."""
    text = result.output or ""
    try:
        text += result.stderr or ""
    except ValueError:
        pass
    return text


def query(database_url: str, sql: str, *params: Any) -> list[dict[str, Any]]:
    import psycopg
    from psycopg.rows import dict_row

    with psycopg.connect(database_url.replace("+psycopg", ""), row_factory=dict_row) as conn:
        return conn.execute(sql, params).fetchall()


def last_snapshot(database_url: str, connector: str) -> dict[str, Any]:
    return query(database_url, "SELECT * FROM ingest.snapshots WHERE connector = %s "
                               "ORDER BY snapshot_id DESC LIMIT 1", connector)[0]


def spy_stage_pool(monkeypatch) -> list[str]:
    """The entities staged through worker processes (``StagePool.stage``), in order, as the test runs."""
    from ingest.staging import StagePool

    pooled: list[str] = []
    stage = StagePool.stage
    monkeypatch.setattr(StagePool, "stage", lambda self, ent, *a, **kw: (pooled.append(ent.name),
                                                                           stage(self, ent, *a, **kw))[1])
    return pooled
