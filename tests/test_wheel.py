"""A built wheel works: it ships every sql/*.sql (as ingest.sql) and `ingest run demo` runs from a fresh venv.

The wheel is built offline from a copy of the source tree with the test venv's setuptools
(no build isolation) and installed --no-deps into a fresh venv that borrows this venv's
dependencies through a .pth line (so no package index is needed and ingest itself comes
only from the wheel).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("wheel")
    src = work / "src"
    src.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    for name in ("ingest", "connectors", "sql"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    dist = work / "dist"
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                            "-w", str(dist), str(src)], capture_output=True, text=True, timeout=240)
    assert build.returncode == 0, build.stderr[-3000:]
    assert "BuildBackendWarning: `project.license`" not in build.stderr, "license is an SPDX string"
    [wheel] = dist.glob("ingest-*.whl")
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    purelib = subprocess.run([str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                             capture_output=True, text=True, check=True).stdout.strip()
    # this venv's dependencies, as a plain path entry: its .pth files (the editable ingest) are not processed
    Path(purelib, "deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    install = subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install",
                              "--no-deps", "--no-index", str(wheel)], capture_output=True, text=True, timeout=240)
    assert install.returncode == 0, install.stderr[-3000:]
    return venv


def _ingest(venv: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("INGEST_CONFIG", "INGEST_DATABASE_URL", "PYTHONPATH")}
    return subprocess.run([str(venv / "bin" / "ingest"), *args], capture_output=True, text=True, timeout=240,
                          cwd=cwd, env=env)


def test_the_wheel_ships_every_migration_and_runs_the_demo(installed, tmp_path, database_url):
    where = subprocess.run([str(installed / "bin" / "python"), "-c",
                            "import ingest, importlib.resources as r; print(ingest.__file__); "
                            "print(sorted(f.name for f in r.files('ingest.sql').iterdir() if f.name.endswith('.sql')))"],
                           capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert where.returncode == 0, where.stderr
    module, shipped = where.stdout.splitlines()
    assert str(installed) in module, "ingest comes from the wheel, not the source tree"
    assert eval(shipped) == sorted(p.name for p in (ROOT / "sql").glob("*.sql"))  # every sql/*.sql, whoever added it

    cfg = tmp_path / "schedules.yaml"
    cfg.write_text(json.dumps({"connectors": {"demo": {"type": "demo", "settings": {"users": 40, "groups": 4,
                                                                                   "workspaces": 2}}}}))
    run = _ingest(installed, tmp_path, "--config", str(cfg), "--database-url", database_url, "run", "demo", "--json")
    assert run.returncode == 0, run.stderr[-3000:]
    assert json.loads(run.stdout)[0]["status"] == "succeeded"
    applied = _ingest(installed, tmp_path, "--config", str(cfg), "--database-url", database_url, "sql",
                      "SELECT count(*) AS n FROM ingest.schema_migrations", "--format", "json")
    assert json.loads(applied.stdout) == [{"n": len(list((ROOT / "sql").glob("*.sql")))}]


def test_an_installation_without_migrations_fails_loudly(installed, tmp_path, database_url):
    broken = tmp_path / "venv"
    shutil.copytree(installed, broken, symlinks=True)
    purelib = next(broken.glob("lib/python*/site-packages"))
    for f in (purelib / "ingest" / "sql").glob("*.sql"):
        f.unlink()
    # the copied console script points at the original interpreter; run the module with the copy's
    cfg = tmp_path / "schedules.yaml"
    cfg.write_text("connectors: {}\n")
    env = {k: v for k, v in os.environ.items() if k not in ("INGEST_CONFIG", "INGEST_DATABASE_URL", "PYTHONPATH")}
    result = subprocess.run([str(broken / "bin" / "python"), "-c", "from ingest.cli import main; main()",
                             "--config", str(cfg), "--database-url", database_url, "db", "migrate"],
                            capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env)
    assert result.returncode == 1
    assert "no schema migrations found" in result.stderr
