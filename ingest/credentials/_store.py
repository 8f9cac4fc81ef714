"""``ingest.credentials``: tokens ingest obtained itself, AES-GCM encrypted, refreshed single-flight.

The key: ``INGEST_SECRET_KEY`` (32 random bytes, URL-safe base64), else
``secret.key`` beside the embedded database, created with mode 0600 on first
use. A configured database URL without ``INGEST_SECRET_KEY`` (and no
``secret.key`` in the data directory) is a :class:`ConfigError` the moment a
token has to be stored or read: every process sharing the database must use
the same key, so ingest will not invent one.

    store = CredentialStore.for_database(engine, database_url, data_dir)
    with store.locked("jira") as slot:       # pg_advisory_lock(8004, hashtext('jira'))
        token = slot.load(kind, binding)     # re-read under the lock
        slot.save(kind, binding, new_token)  # committed at once
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import os
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
import structlog
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ingest.credentials._token import Token
from ingest.errors import ConfigError

__all__ = ["CredentialStore", "StoredCredential", "load_secret_key", "KEY_ENV", "KEY_FILE"]

log = structlog.get_logger("ingest.credentials")
KEY_ENV = "INGEST_SECRET_KEY"
KEY_FILE = "secret.key"
_LOCK_NS = 8004  # advisory lock namespace: (8004, hashtext(connector)) = "refreshing this connector's tokens"
_VERSION = b"\x01"
_HOW = (f"set {KEY_ENV} to 32 random bytes in URL-safe base64 (for example the output of "
        "`python3 -c \"import base64, secrets; print(base64.urlsafe_b64encode(secrets.token_bytes(32)).decode())\"`), "
        "the same value for every process that shares this database")


def _decode_key(text: str, where: str) -> bytes:
    text = text.strip()
    raw = None
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        pass
    if raw is None or len(raw) != 32:
        try:
            raw = bytes.fromhex(text)
        except ValueError:
            raw = None
    if raw is None or len(raw) != 32:
        raise ConfigError(f"{where} is not a 32-byte key: {_HOW}")
    return raw


def load_secret_key(data_dir: Path | None, *, embedded: bool) -> bytes:
    """The store's key: ``INGEST_SECRET_KEY``, else ``<data_dir>/secret.key`` (created 0600 for the embedded database)."""
    env = os.environ.get(KEY_ENV)
    if env:
        return _decode_key(env, KEY_ENV)
    if data_dir is not None:
        path = Path(data_dir) / KEY_FILE
        if path.exists():
            return _decode_key(path.read_text(), str(path))
        if embedded:
            return _create_key_file(path)
    raise ConfigError(f"the credential store needs a key and none is configured for this database: {_HOW}")


def _create_key_file(path: Path) -> bytes:
    """Write a new key with mode 0600 atomically; another process creating it first wins."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode() + "\n"
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)  # fails if another process made it first
            log.info("secret_key_created", path=str(path))
        except FileExistsError:
            pass
    finally:
        tmp.unlink(missing_ok=True)
    return _decode_key(path.read_text(), str(path))


@dataclass
class StoredCredential:
    """What ``ingest auth --status`` shows: never the token."""

    connector: str
    kind: str
    expires_at: datetime | None
    updated_at: datetime
    scope: str | None
    has_refresh_token: bool
    readable: bool  # False: encrypted with another key


class _Slot:
    """Reads and writes of one connector's row while its advisory lock is held (each write commits)."""

    def __init__(self, store: CredentialStore, conn: sa.Connection, connector: str) -> None:
        self.store, self.conn, self.connector = store, conn, connector

    def load(self, kind: str, binding: str) -> Token | None:
        return self.store._load(self.conn, self.connector, kind, binding)

    def save(self, kind: str, binding: str, token: Token) -> None:
        self.store._save(self.conn, self.connector, kind, binding, token)


class CredentialStore:
    """Encrypted token storage in ``ingest.credentials``; the key is resolved lazily (see the module doc)."""

    def __init__(self, engine: sa.Engine | Callable[[], sa.Engine], key: bytes | None = None, *,
                 data_dir: Path | None = None, embedded: bool = False, lock_timeout_s: float = 120.0) -> None:
        self._engine = engine  # or a function that starts / migrates the database on first use
        self._key = key
        self._data_dir = Path(data_dir) if data_dir is not None else None
        self._embedded = embedded
        self._lock_timeout_ms = int(lock_timeout_s * 1000)

    @property
    def engine(self) -> sa.Engine:
        if not isinstance(self._engine, sa.Engine):
            self._engine = self._engine()
        return self._engine

    @classmethod
    def for_engine(cls, engine: sa.Engine, data_dir: Path) -> CredentialStore:
        """The store of a database: embedded when ``engine`` is the embedded server of ``data_dir``."""
        from ingest.db import EmbeddedDatabase, sqlalchemy_url

        try:
            running = EmbeddedDatabase(data_dir).running_url()
            embedded = running is not None and (sa.make_url(sqlalchemy_url(running)).render_as_string(False)
                                                == engine.url.render_as_string(False))
        except Exception:  # noqa: BLE001 - no embedded server: a URL database
            embedded = False
        return cls(engine, data_dir=data_dir, embedded=embedded)

    # -- the key --------------------------------------------------------------
    @property
    def key(self) -> bytes:
        if self._key is None:
            self._key = load_secret_key(self._data_dir, embedded=self._embedded)
        return self._key

    def unavailable(self) -> ConfigError | None:
        """None when the store can be used, else the error that says how to configure its key."""
        try:
            _ = self.key
        except ConfigError as e:
            return e
        return None

    @staticmethod
    def _aad(connector: str, kind: str) -> bytes:
        return f"ingest.credentials|{connector}|{kind}".encode()

    def _encrypt(self, connector: str, kind: str, doc: dict[str, Any]) -> bytes:
        nonce = secrets.token_bytes(12)
        return _VERSION + nonce + AESGCM(self.key).encrypt(nonce, json.dumps(doc).encode(), self._aad(connector, kind))

    def _decrypt(self, connector: str, kind: str, payload: bytes) -> dict[str, Any]:
        payload = bytes(payload)
        if payload[:1] != _VERSION:
            raise ConfigError(f"the stored credentials of {connector!r} are in an unknown format: "
                              f"run `ingest auth {connector} --forget`")
        try:
            plain = AESGCM(self.key).decrypt(payload[1:13], payload[13:], self._aad(connector, kind))
        except InvalidTag:
            raise ConfigError(
                f"the stored credentials of {connector!r} were encrypted with another key: set {KEY_ENV} "
                f"(or secret.key) to the key they were stored with, or run `ingest auth {connector} --forget` "
                f"and sign in again") from None
        return json.loads(plain)

    # -- rows -------------------------------------------------------------------
    def _load(self, conn: sa.Connection, connector: str, kind: str, binding: str) -> Token | None:
        row = conn.execute(sa.text("SELECT kind, payload FROM ingest.credentials WHERE connector = :c"),
                           {"c": connector}).first()
        if row is None or row.kind != kind:
            return None
        doc = self._decrypt(connector, kind, row.payload)
        if doc.get("binding") != binding:
            log.info("stored_token_for_other_config", connector=connector, kind=kind)
            return None
        return Token.from_payload(doc["token"])

    def _save(self, conn: sa.Connection, connector: str, kind: str, binding: str, token: Token) -> None:
        payload = self._encrypt(connector, kind, {"binding": binding, "token": token.to_payload()})
        expires = datetime.fromtimestamp(token.expires_at, UTC) if token.expires_at else None
        conn.execute(sa.text(
            "INSERT INTO ingest.credentials (connector, kind, payload, expires_at, updated_at) "
            "VALUES (:c, :k, :p, :e, now()) ON CONFLICT (connector) DO UPDATE SET kind = excluded.kind, "
            "payload = excluded.payload, expires_at = excluded.expires_at, updated_at = now()"),
            {"c": connector, "k": kind, "p": payload, "e": expires})
        if conn.in_transaction():
            conn.commit()

    @contextlib.contextmanager
    def locked(self, connector: str) -> Iterator[_Slot]:
        """Hold ``connector``'s refresh lock (a session advisory lock) on a connection of its own."""
        _ = self.key  # a missing key fails before anything is locked
        with self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(sa.text(f"SET lock_timeout = {self._lock_timeout_ms}"))
            conn.execute(sa.text("SELECT pg_advisory_lock(:ns, hashtext(:c))"), {"ns": _LOCK_NS, "c": connector})
            try:
                yield _Slot(self, conn, connector)
            finally:
                conn.execute(sa.text("SELECT pg_advisory_unlock(:ns, hashtext(:c))"),
                             {"ns": _LOCK_NS, "c": connector})

    def save(self, connector: str, kind: str, binding: str, token: Token) -> None:
        with self.locked(connector) as slot:
            slot.save(kind, binding, token)

    def load(self, connector: str, kind: str, binding: str) -> Token | None:
        with self.engine.connect() as conn:
            return self._load(conn, connector, kind, binding)

    def status(self, connector: str) -> StoredCredential | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.text("SELECT kind, payload, expires_at, updated_at FROM ingest.credentials "
                                       "WHERE connector = :c"), {"c": connector}).first()
        if row is None:
            return None
        scope, has_refresh, readable = None, False, True
        try:
            token = self._decrypt(connector, row.kind, row.payload)["token"]
            scope, has_refresh = token.get("scope"), bool(token.get("refresh_token"))
        except ConfigError:
            readable = False
        return StoredCredential(connector, row.kind, row.expires_at, row.updated_at, scope, has_refresh, readable)

    def forget(self, connector: str) -> bool:
        with self.engine.begin() as conn:
            return conn.execute(sa.text("DELETE FROM ingest.credentials WHERE connector = :c"),
                                {"c": connector}).rowcount > 0
