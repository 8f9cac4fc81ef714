"""The credential store: AES-GCM at rest, the key file, tokens cached across runs, single-flight refresh, no secret in any row."""

from __future__ import annotations

import base64
import os
import secrets
import stat
import threading

import pytest
import sqlalchemy as sa

from ingest.credentials import CredentialStore, Token, credentials, load_secret_key
from ingest.db import get_engine, migrate
from ingest.errors import ConfigError
from ingest.http import HttpClient, HttpSettings
from tests.servers.token_server import TokenServer, rsa_pem

KEY = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()


@pytest.fixture
def engine(database_url: str) -> sa.Engine:
    engine = get_engine(database_url)
    migrate(engine)
    return engine


@pytest.fixture
def token_server():
    with TokenServer() as server:
        yield server


def _store(engine: sa.Engine, key: str = KEY) -> CredentialStore:
    return CredentialStore(engine, base64.urlsafe_b64decode(key))


def _all_rows(engine: sa.Engine) -> str:
    """Every column of every row in the ingest schema's tables, as text (bytea in hex and as decoded text)."""
    with engine.connect() as conn:
        tables = conn.execute(sa.text("SELECT table_name FROM information_schema.tables "
                                      "WHERE table_schema = 'ingest' AND table_type = 'BASE TABLE'")).scalars().all()
        dump = []
        for t in tables:
            for row in conn.execute(sa.text(f'SELECT * FROM ingest."{t}"')):
                for v in row:
                    if isinstance(v, (bytes, memoryview)):
                        dump.append(bytes(v).hex())
                        dump.append(bytes(v).decode("latin-1"))
                    else:
                        dump.append(str(v))
    return "\n".join(dump)


class TestKey:
    def test_key_file_is_created_0600_beside_the_embedded_database_and_reused(self, tmp_path, monkeypatch) -> None:
        monkeypatch.delenv("INGEST_SECRET_KEY", raising=False)
        key = load_secret_key(tmp_path, embedded=True)
        path = tmp_path / "secret.key"
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert len(key) == 32
        assert load_secret_key(tmp_path, embedded=True) == key

    def test_processes_racing_to_create_the_key_agree(self, tmp_path, monkeypatch) -> None:
        monkeypatch.delenv("INGEST_SECRET_KEY", raising=False)
        got: list[bytes] = []
        threads = [threading.Thread(target=lambda: got.append(load_secret_key(tmp_path, embedded=True)))
                   for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        assert len(set(got)) == 1 and len(got) == 8
        assert [p.name for p in tmp_path.iterdir()] == ["secret.key"]

    def test_a_url_database_without_a_key_is_a_clear_error(self, tmp_path, monkeypatch) -> None:
        monkeypatch.delenv("INGEST_SECRET_KEY", raising=False)
        with pytest.raises(ConfigError, match="INGEST_SECRET_KEY") as e:
            load_secret_key(tmp_path, embedded=False)
        assert "token_bytes(32)" in str(e.value)
        assert not (tmp_path / "secret.key").exists()

    def test_the_environment_key_wins_and_a_bad_one_is_named(self, tmp_path, monkeypatch) -> None:
        monkeypatch.setenv("INGEST_SECRET_KEY", KEY)
        assert load_secret_key(tmp_path, embedded=True) == base64.urlsafe_b64decode(KEY)
        assert not (tmp_path / "secret.key").exists()
        monkeypatch.setenv("INGEST_SECRET_KEY", "too-short")
        with pytest.raises(ConfigError, match="INGEST_SECRET_KEY is not a 32-byte key"):
            load_secret_key(tmp_path, embedded=True)


class TestStore:
    def test_round_trip_and_nothing_readable_in_the_row(self, engine: sa.Engine) -> None:
        store = _store(engine)
        token = Token("access-abc-123456", expires_at=2_000_000_000.0, refresh_token="refresh-xyz-987654",
                      scope="openid offline_access")
        store.save("jira", "oauth2_authorization_code", "b1", token)
        assert store.load("jira", "oauth2_authorization_code", "b1").refresh_token == "refresh-xyz-987654"
        rows = _all_rows(engine)
        for secret in ("access-abc-123456", "refresh-xyz-987654", "offline_access"):
            assert secret not in rows
        status = store.status("jira")
        assert (status.kind, status.scope, status.has_refresh_token, status.readable) == (
            "oauth2_authorization_code", "openid offline_access", True, True)

    def test_the_store_is_useless_without_its_key(self, engine: sa.Engine) -> None:
        _store(engine).save("jira", "oauth2_authorization_code", "b1", Token("access-abc-123456"))
        other = _store(engine, base64.urlsafe_b64encode(secrets.token_bytes(32)).decode())
        with pytest.raises(ConfigError, match="encrypted with another key") as e:
            other.load("jira", "oauth2_authorization_code", "b1")
        assert "access-abc-123456" not in str(e.value)
        assert other.status("jira").readable is False

    def test_a_row_copied_to_another_connector_does_not_decrypt(self, engine: sa.Engine) -> None:
        store = _store(engine)
        store.save("jira", "bearer", "b1", Token("access-abc-123456"))
        with engine.begin() as conn:
            conn.execute(sa.text("INSERT INTO ingest.credentials (connector, kind, payload) "
                                 "SELECT 'evil', kind, payload FROM ingest.credentials WHERE connector = 'jira'"))
        with pytest.raises(ConfigError, match="encrypted with another key"):
            store.load("evil", "bearer", "b1")

    def test_a_token_for_other_settings_is_not_used(self, engine: sa.Engine) -> None:
        store = _store(engine)
        store.save("jira", "oauth2_client_credentials", "binding-a", Token("access-abc-123456"))
        assert store.load("jira", "oauth2_client_credentials", "binding-b") is None

    def test_forget(self, engine: sa.Engine) -> None:
        store = _store(engine)
        store.save("jira", "bearer", "b1", Token("access-abc-123456"))
        assert store.forget("jira") is True
        assert store.status("jira") is None and store.forget("jira") is False


def _client_credentials(server: TokenServer):
    private, public = rsa_pem()
    server.add_client("svc-app", public)
    return credentials("oauth2_client_credentials").model_validate(
        {"client_id": "svc-app", "private_key": private, "token_url": server.token_url}), private


def _client(server: TokenServer, auth) -> HttpClient:
    return HttpClient(server.root_url, settings=HttpSettings(max_retries=0), connector="svc", auth=auth)


class TestCachedTokens:
    def test_a_later_run_reuses_the_stored_access_token(self, engine: sa.Engine, token_server: TokenServer) -> None:
        config, private = _client_credentials(token_server)
        for _ in range(3):  # three runs, each with a fresh auth object and store, as separate processes have
            with _client(token_server, config.httpx_auth(_store(engine), "svc")) as c:
                c.get_json("/api/me")
        assert token_server.requests.count(("POST", "/token")) == 1
        rows = _all_rows(engine)
        assert next(iter(token_server.issued)) not in rows
        assert private.splitlines()[1] not in rows

    def test_threads_and_processes_refresh_once(self, engine: sa.Engine, token_server: TokenServer) -> None:
        """Eight clients (own auth object and store each, like processes) find no token at the same moment."""
        config, _ = _client_credentials(token_server)
        barrier = threading.Barrier(8)
        errors: list[BaseException] = []

        def one() -> None:
            try:
                with _client(token_server, config.httpx_auth(_store(engine), "svc")) as c:
                    barrier.wait(10)
                    c.get_json("/api/me")
            except BaseException as e:  # noqa: BLE001
                errors.append(e)

        threads = [threading.Thread(target=one) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert errors == []
        assert token_server.requests.count(("POST", "/token")) == 1
        assert token_server.requests.count(("GET", "/api/me")) == 8

    def test_a_401_with_the_stored_token_refreshes_once(self, engine: sa.Engine, token_server: TokenServer) -> None:
        config, _ = _client_credentials(token_server)
        with _client(token_server, config.httpx_auth(_store(engine), "svc")) as c:
            c.get_json("/api/me")
        token_server.issued.clear()  # the provider revoked every token early
        with _client(token_server, config.httpx_auth(_store(engine), "svc")) as c:
            assert c.get_json("/api/me")["sub"] == "svc-app"
        assert token_server.requests == [("POST", "/token"), ("GET", "/api/me"), ("GET", "/api/me"),
                                         ("POST", "/token"), ("GET", "/api/me")]

    def test_without_a_key_client_credentials_still_work_in_memory(self, engine: sa.Engine, token_server: TokenServer,
                                                                   monkeypatch) -> None:
        monkeypatch.delenv("INGEST_SECRET_KEY", raising=False)
        config, _ = _client_credentials(token_server)
        with _client(token_server, config.httpx_auth(CredentialStore(engine), "svc")) as c:
            assert c.get_json("/api/me")["sub"] == "svc-app"
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT count(*) FROM ingest.credentials")).scalar() == 0
