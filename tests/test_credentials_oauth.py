"""Authorization code + PKCE + rotating refresh tokens against a real OAuth server (oidc-provider, reuse detection on).

Consent through `ingest auth --paste` and through the loopback listener, daily runs that
refresh, two processes refreshing at the same moment, revocation, a wrong client secret,
and no secret in the output, the logs or any database row.
"""

from __future__ import annotations

import base64
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
import structlog
import yaml

from ingest.config import load_config
from ingest.credentials import CredentialStore
from ingest.credentials._consent import authorization_request, code_from_redirect, exchange, free_loopback_port
from ingest.db import get_engine, migrate
from ingest.runner import run
from tests.oidc_probe import register
from tests.servers.oidc_provider import OidcProvider

ROOT = Path(__file__).resolve().parent.parent
CLIENT_ID, SECRET = "ingest-app", "app-secret-" + secrets.token_hex(8)
KEY = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()
TTL = 2  # seconds an access token lives
SCOPES = ["openid", "offline_access", "email"]
PASTE_PORT, LISTEN_PORT = free_loopback_port(), free_loopback_port()
CLI = ("import os, sys, time\n"
       "from tests.oidc_probe import register\n"
       "register()\n"
       "start = float(os.environ.get('START_AT', '0'))\n"
       "time.sleep(max(0.0, start - time.time()))\n"
       "from ingest.cli import main\n"
       "sys.argv = ['ingest'] + sys.argv[1:]\n"
       "main()\n")


@pytest.fixture(scope="module")
def provider():
    client = {"client_id": CLIENT_ID, "client_secret": SECRET, "grant_types": ["authorization_code", "refresh_token"],
              "response_types": ["code"], "token_endpoint_auth_method": "client_secret_post",
              "redirect_uris": [f"http://127.0.0.1:{PASTE_PORT}/callback", f"http://127.0.0.1:{LISTEN_PORT}/callback"]}
    with OidcProvider([client], access_token_ttl=TTL) as op:
        yield op


@pytest.fixture(autouse=True)
def _env(monkeypatch):
    register()
    monkeypatch.setenv("INGEST_SECRET_KEY", KEY)
    monkeypatch.setenv("PROBE_SECRET", SECRET)


def write_config(tmp_path: Path, provider: OidcProvider, database_url: str, *, port: int = PASTE_PORT,
                 secret: str = "${PROBE_SECRET}") -> Path:
    path = tmp_path / "schedules.yaml"
    path.write_text(yaml.safe_dump({"database_url": database_url, "connectors": {"probe": {
        "type": "oidc_probe", "settings": {"base_url": provider.issuer, "max_retries": 0},
        "auth": {"client_id": CLIENT_ID, "client_secret": secret, "authorize_url": provider.authorize_url,
                 "token_url": provider.token_url, "scopes": SCOPES,
                 "redirect_uri": f"http://127.0.0.1:{port}/callback"}}}}))
    return path


def cli(config: Path, *args: str, env: dict[str, str] | None = None, **kw) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", CLI, "--config", str(config), *args], cwd=ROOT, text=True,
                            env={**os.environ, **(env or {})}, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, **kw)


def read_url(proc: subprocess.Popen[str], provider: OidcProvider) -> str:
    assert proc.stdout is not None
    for _ in range(20):
        line = proc.stdout.readline()
        if line.startswith(provider.authorize_url):
            return line.strip()
        if not line:
            break
    proc.kill()
    raise AssertionError(f"no authorization URL printed: {proc.stderr.read() if proc.stderr else ''}")


def consent(config: Path, provider: OidcProvider):
    """Consent in-process (the library calls `ingest auth` makes); returns the loaded config."""
    loaded = load_config(config)
    cred = loaded.connector("probe").auth.credential
    request = authorization_request(cred)
    code = code_from_redirect(request, provider.sign_in(request.url))
    engine = get_engine(loaded.config.database_url)
    migrate(engine)
    exchange(cred, request, code, connector="probe", store=CredentialStore(engine), settings=None)
    return loaded


def stored(database_url: str):
    loaded_engine = get_engine(database_url)
    store = CredentialStore(loaded_engine)
    cred_binding = None
    with loaded_engine.connect() as conn:
        kind = conn.execute(sa.text("SELECT kind FROM ingest.credentials WHERE connector = 'probe'")).scalar()
    assert kind == "oauth2_authorization_code"
    row = store._decrypt("probe", kind, _payload(loaded_engine))
    cred_binding = row["binding"]
    return store.load("probe", kind, cred_binding)


def _payload(engine: sa.Engine) -> bytes:
    with engine.connect() as conn:
        return conn.execute(sa.text("SELECT payload FROM ingest.credentials WHERE connector = 'probe'")).scalar()


def all_rows(engine: sa.Engine) -> str:
    with engine.connect() as conn:
        tables = conn.execute(sa.text("SELECT table_name FROM information_schema.tables WHERE table_schema = "
                                      "'ingest' AND table_type = 'BASE TABLE'")).scalars().all()
        out = []
        for t in tables:
            for row in conn.execute(sa.text(f'SELECT * FROM ingest."{t}"')):
                out.extend(bytes(v).decode("latin-1") if isinstance(v, (bytes, memoryview)) else str(v) for v in row)
    return "\n".join(out)


class TestConsent:
    def test_paste_stores_tokens_and_prints_scopes_and_expiry(self, tmp_path, provider, database_url) -> None:
        config = write_config(tmp_path, provider, database_url)
        proc = cli(config, "auth", "probe", "--paste")
        url = read_url(proc, provider)
        assert "code_challenge_method=S256" in url and "code_challenge=" in url and "state=" in url
        redirected = provider.sign_in(url)
        stdout, stderr = proc.communicate(redirected + "\n", timeout=60)
        assert proc.returncode == 0, stderr
        assert "probe: authorized" in stdout
        assert "scopes: openid offline_access email" in stdout
        assert "access token expires: " in stdout and "refresh token: stored" in stdout
        token = stored(database_url)
        for secret in (token.access_token, token.refresh_token, SECRET):
            assert secret not in stdout + stderr
        status = cli(config, "auth", "probe", "--status")
        out, err = status.communicate(timeout=60)
        assert status.returncode == 0, err
        assert "oauth2_authorization_code" in out and "refresh token: stored" in out
        assert token.access_token not in out + err and token.refresh_token not in out + err
        assert token.refresh_token not in all_rows(get_engine(database_url))

    def test_the_loopback_listener_receives_the_redirect(self, tmp_path, provider, database_url) -> None:
        config = write_config(tmp_path, provider, database_url, port=LISTEN_PORT)
        proc = cli(config, "auth", "probe", "--timeout", "30")
        url = read_url(proc, provider)
        provider.sign_in(url, deliver=True)  # the browser follows the redirect to 127.0.0.1:LISTEN_PORT
        stdout, stderr = proc.communicate(timeout=60)
        assert proc.returncode == 0, stderr
        assert "probe: authorized" in stdout
        assert stored(database_url).refresh_token

    def test_a_forged_state_is_refused(self, tmp_path, provider, database_url) -> None:
        config = write_config(tmp_path, provider, database_url)
        proc = cli(config, "auth", "probe", "--paste")
        url = read_url(proc, provider)
        redirected = provider.sign_in(url).replace("state=", "state=x")
        stdout, stderr = proc.communicate(redirected + "\n", timeout=60)
        assert proc.returncode == 1
        assert "state does not match" in stderr and "Traceback" not in stderr

    def test_a_wrong_client_secret_is_a_clear_error_without_the_secret(self, tmp_path, provider,
                                                                       database_url) -> None:
        wrong = "wrong-secret-" + secrets.token_hex(6)
        config = write_config(tmp_path, provider, database_url, secret=wrong)
        proc = cli(config, "auth", "probe", "--paste")
        url = read_url(proc, provider)
        stdout, stderr = proc.communicate(provider.sign_in(url) + "\n", timeout=60)
        assert proc.returncode == 1
        assert "invalid_client" in stderr and "Traceback" not in stderr
        assert wrong not in stdout + stderr

    def test_a_run_without_consent_says_to_run_ingest_auth(self, tmp_path, provider, database_url) -> None:
        loaded = load_config(write_config(tmp_path, provider, database_url))
        result = run(loaded, "probe", database_url=database_url)
        assert result.status == "failed"
        assert "run `ingest auth probe`" in result.error


class TestRefresh:
    def test_three_daily_runs_refresh_and_rotate(self, tmp_path, provider, database_url) -> None:
        loaded = consent(write_config(tmp_path, provider, database_url), provider)
        refresh_tokens = [stored(database_url).refresh_token]
        with structlog.testing.capture_logs() as logs:
            for _ in range(3):
                time.sleep(TTL + 0.1)  # the access token expired overnight
                result = run(loaded, "probe", database_url=database_url)
                assert result.status == "succeeded", result.error
                refresh_tokens.append(stored(database_url).refresh_token)
        refreshed = [e for e in logs if e["event"] == "token_refreshed"]
        # one refresh a run (a loaded machine may take longer than the 2 s TTL and refresh again mid-run)
        assert len(refreshed) >= 3 and all(e["rotated"] for e in refreshed)
        assert len(set(refresh_tokens)) == 4  # rotated on every run's refresh, each new one stored
        for token in refresh_tokens:
            assert token not in repr(logs)
        with get_engine(database_url).connect() as conn:
            assert conn.execute(sa.text("SELECT username FROM ingest.accounts WHERE connector = 'probe'")
                                ).scalar() == "alice"
        rows = all_rows(get_engine(database_url))
        assert all(t not in rows for t in refresh_tokens) and SECRET not in rows

    def test_two_processes_refreshing_at_the_same_moment_keep_the_grant(self, tmp_path, provider,
                                                                         database_url) -> None:
        config = write_config(tmp_path, provider, database_url)
        loaded = consent(config, provider)
        before = stored(database_url).refresh_token
        time.sleep(TTL + 0.1)
        start = str(time.time() + 3.0)  # both processes wake at this instant, token expired
        procs = [cli(config, "check", "probe", env={"START_AT": start}) for _ in range(2)]
        results = [p.communicate(timeout=60) for p in procs]
        assert [p.returncode for p in procs] == [0, 0], results
        assert all("probe: OK" in out for out, _ in results)
        after = stored(database_url).refresh_token
        assert after != before
        # The grant survived: had both used `before`, the provider would have revoked it.
        assert provider.introspect(after, CLIENT_ID, SECRET)["active"] is True
        time.sleep(TTL + 0.1)
        assert run(loaded, "probe", database_url=database_url).status == "succeeded"

    def test_revoked_consent_fails_the_run_with_what_to_do(self, tmp_path, provider, database_url) -> None:
        config = write_config(tmp_path, provider, database_url)
        loaded = consent(config, provider)
        provider.revoke(stored(database_url).refresh_token, CLIENT_ID, SECRET)
        time.sleep(TTL + 0.1)
        result = run(loaded, "probe", database_url=database_url)
        assert result.status == "failed"
        assert "expired or was revoked" in result.error and "run `ingest auth probe` again" in result.error
        proc = cli(config, "check", "probe")
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 1
        assert "ingest auth probe" in err and "Traceback" not in err


def test_a_token_endpoints_429_carries_its_retry_after() -> None:
    """The HTTP layer waits what a rate-limited token request was told (the conformance kit found token
    requests retried 0.04 s after a ``Retry-After: 1``)."""
    import httpx

    from ingest.credentials._token import token_error
    from ingest.errors import RateLimitedError

    request = httpx.Request("POST", "https://login.example.com/t/oauth2/v2.0/token")
    err = token_error(httpx.Response(429, headers={"Retry-After": "7"}, request=request), "client credentials",
                      str(request.url))
    assert isinstance(err, RateLimitedError) and err.retry_after == 7
    assert token_error(httpx.Response(429, request=request), "client credentials", str(request.url)).retry_after is None
