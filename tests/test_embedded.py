"""The zero-setup database: an embedded PostgreSQL beside the config, shared and stopped cleanly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from ingest.db import EmbeddedDatabase

INGEST = [sys.executable, "-c", "from ingest.cli import main; main()"]


def _ingest(cfg: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("INGEST_DATABASE_URL", "INGEST_CONFIG")}
    return subprocess.run([*INGEST, "--config", str(cfg), "--log-format", "json", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=cfg.parent, env=env)


def _config(tmp_path: Path) -> Path:
    cfg = tmp_path / "schedules.yaml"
    cfg.write_text(json.dumps({"connectors": {
        name: {"type": "demo", "settings": {"users": 30, "groups": 5, "workspaces": 2, "day": 3}}
        for name in ("one", "two")}}))
    return cfg


def test_concurrent_processes_share_the_server_and_the_last_one_stops_it(tmp_path):
    cfg = _config(tmp_path)
    env = {k: v for k, v in os.environ.items() if k not in ("INGEST_DATABASE_URL", "INGEST_CONFIG")}
    procs = [subprocess.Popen([*INGEST, "--config", str(cfg), "--log-format", "json", "run", name, "--json"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path, env=env)
             for name in ("one", "two")]
    try:
        outs = [p.communicate(timeout=180) for p in procs]
    finally:
        for p in procs:
            p.kill()
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-2000:]
        assert json.loads(out)[0]["status"] == "succeeded"
    db = EmbeddedDatabase(tmp_path / ".ingest")
    assert (tmp_path / ".ingest" / "pgdata" / "PG_VERSION").exists()
    deadline = time.monotonic() + 15
    while db.is_running() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not db.is_running()
    # the data survives the stop: a later process sees both snapshots
    result = _ingest(cfg, "sql", "SELECT connector, status FROM ingest.snapshots ORDER BY connector", "--format", "json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == [{"connector": "one", "status": "succeeded"},
                                         {"connector": "two", "status": "succeeded"}]
    assert not db.is_running()


def test_db_start_keeps_the_server_up_across_runs_until_db_stop(tmp_path):
    cfg = _config(tmp_path)
    db = EmbeddedDatabase(tmp_path / ".ingest")
    try:
        assert _ingest(cfg, "db", "start").returncode == 0
        assert db.is_running()
        assert _ingest(cfg, "run", "one").returncode == 0
        assert db.is_running(), "a run must not stop a server that `ingest db start` keeps running"
        url = _ingest(cfg, "db", "url")
        assert url.returncode == 0 and url.stdout.strip().startswith("postgresql://")
        import psycopg

        with psycopg.connect(url.stdout.strip()) as conn:
            assert conn.execute("SELECT count(*) FROM ingest.accounts").fetchone()[0] > 0
    finally:
        stop = _ingest(cfg, "db", "stop")
    assert stop.returncode == 0 and "stopped" in stop.stdout
    assert not db.is_running()
    missing = _ingest(cfg, "db", "url")
    assert missing.returncode == 1 and "ingest db start" in missing.stderr
