"""The zero-setup database: an embedded PostgreSQL beside the config, shared and stopped cleanly."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg
import pytest

from ingest.db import EmbeddedDatabase

INGEST = [sys.executable, "-c", "from ingest.cli import main; main()"]


def _ingest(cfg: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("INGEST_DATABASE_URL", "INGEST_CONFIG")}
    return subprocess.run([*INGEST, "--config", str(cfg), "--log-format", "json", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=cfg.parent, env=env)


@pytest.fixture
def home() -> Path:
    """A directory of the test's own that the server's account can traverse even as root (0711), removed after."""
    path = Path(tempfile.mkdtemp(prefix="ingest-embedded-"))
    path.chmod(0o711)
    yield path
    db = EmbeddedDatabase(path / ".ingest")
    if db.is_running():
        db.stop(force=True)
    shutil.rmtree(path, ignore_errors=True)


def _attach(data_dir: Path) -> subprocess.Popen:
    """A process that joins the embedded server and stays until its stdin closes (a daemon, for the server)."""
    code = ("import sys; from ingest.db import EmbeddedDatabase; db = EmbeddedDatabase(sys.argv[1]); "
            "print(db.start(), flush=True); sys.stdin.read()")
    proc = subprocess.Popen([sys.executable, "-c", code, str(data_dir)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = _line(proc, "postgresql://")
    assert line.startswith("postgresql://"), proc.stderr.read()
    return proc


def _line(proc: subprocess.Popen, prefix: str) -> str:
    """The first line of the process's stdout starting with ``prefix`` (log lines come before it), or ''."""
    for line in proc.stdout:
        if line.startswith(prefix):
            return line
    return ""


def _config(tmp_path: Path) -> Path:
    cfg = tmp_path / "schedules.yaml"
    cfg.write_text(json.dumps({"connectors": {
        name: {"type": "demo", "settings": {"users": 30, "groups": 5, "workspaces": 2, "day": 3}}
        for name in ("one", "two")}}))
    return cfg


def test_concurrent_processes_share_the_server_and_the_last_one_stops_it(home):
    tmp_path = home
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


def test_db_start_keeps_the_server_up_across_runs_until_db_stop(home):
    tmp_path = home
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


def test_processes_starting_at_once_in_a_fresh_directory_initialise_one_server(home):
    """Four processes race on initdb and start; the file lock makes one initialise and the others join."""
    data = home / ".ingest"
    code = ("import sys, psycopg; from ingest.db import EmbeddedDatabase; url = EmbeddedDatabase(sys.argv[1]).start(); "
            "print('started', psycopg.connect(url).execute('SELECT pg_postmaster_start_time()').fetchone()[0], "
            "flush=True); sys.stdin.read()")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(data)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(4)]
    try:
        started = [_line(p, "started") for p in procs]  # each stays attached until every one has started
    finally:
        for p in procs:
            p.stdin.close()
        for p in procs:
            p.wait(timeout=120)
    for p in procs:
        assert p.returncode == 0, p.stderr.read()[-2000:]
    assert all(s.startswith("started") for s in started), started
    assert len(set(started)) == 1, "every process must use the same server"
    deadline = time.monotonic() + 15
    while EmbeddedDatabase(data).is_running() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not EmbeddedDatabase(data).is_running(), "the last process out stops the server"


def test_db_start_after_a_daemon_attached_keeps_the_server_up_when_the_daemon_exits(home):
    cfg = _config(home)
    db = EmbeddedDatabase(home / ".ingest")
    daemon = _attach(home / ".ingest")
    try:
        assert _ingest(cfg, "db", "start").returncode == 0
    finally:
        daemon.stdin.close()
        daemon.wait(timeout=30)
    assert daemon.returncode == 0
    assert db.is_running(), "`ingest db start` keeps the server up after the daemon that started it exits"
    assert _ingest(cfg, "db", "stop").returncode == 0
    assert not db.is_running()


def test_db_stop_with_attached_processes_says_so_and_the_server_stops_when_they_leave(home):
    cfg = _config(home)
    db = EmbeddedDatabase(home / ".ingest")
    assert _ingest(cfg, "db", "start").returncode == 0
    daemon = _attach(home / ".ingest")
    try:
        stop = _ingest(cfg, "db", "stop")
        assert stop.returncode == 1
        assert f"pid {daemon.pid}" in stop.stderr and "still use the embedded server" in stop.stderr
        assert db.is_running(), "a process still uses it"
    finally:
        daemon.stdin.close()
        daemon.wait(timeout=30)
    assert not db.is_running(), "db stop removed the keep-running marker: the last process out stopped it"


class TestPrivacy:
    def test_data_socket_and_files_are_private_and_parents_untouched(self, home):
        parent = home / "org"
        parent.mkdir(mode=0o711)
        parent.chmod(0o711)
        data = parent / ".ingest"
        db = EmbeddedDatabase(data)
        proc = _attach(data)
        try:
            url = db.running_url()
            assert stat.S_IMODE(parent.stat().st_mode) == 0o711, "ingest never changes a parent's permissions"
            assert stat.S_IMODE(home.stat().st_mode) == 0o711
            assert stat.S_IMODE(db.pgdata.stat().st_mode) == 0o700
            assert stat.S_IMODE(data.stat().st_mode) == (0o711 if os.geteuid() == 0 else 0o700)
            socket_dir = Path(url.split("host=")[1].split("&")[0])
            assert socket_dir == data / "run"
            assert stat.S_IMODE(socket_dir.stat().st_mode) == 0o700
            for f in data.iterdir():
                if f.is_file():
                    assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
            with psycopg.connect(url) as conn:
                user, superuser = conn.execute(
                    "SELECT current_user, rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()
                assert (user, superuser) == ("ingest", False)
                assert conn.execute("SELECT inet_server_port()").fetchone()[0] is None, "no TCP listener"
        finally:
            proc.stdin.close()
            proc.wait(timeout=30)

    def test_a_path_too_long_for_a_socket_gets_a_fresh_private_socket_directory(self, home):
        deep = home / ("d" * 60) / ("e" * 60)
        deep.mkdir(parents=True)
        data = deep / ".ingest"
        proc = _attach(data)
        try:
            url = EmbeddedDatabase(data).running_url()
            socket_dir = Path(url.split("host=")[1].split("&")[0])
            assert len(str(socket_dir)) < 100
            assert socket_dir.owner() == (EmbeddedDatabase(data).pgdata.owner())
            assert stat.S_IMODE(socket_dir.stat().st_mode) == 0o700, "never a world-writable shared directory"
            assert socket_dir.name.startswith("ingest-pg-")
        finally:
            proc.stdin.close()
            proc.wait(timeout=30)
