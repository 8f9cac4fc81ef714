"""A real OAuth 2.0 / OpenID Connect server for the credential tests: the npm package ``oidc-provider``.

``tests/node/oidc-provider.mjs`` runs it on 127.0.0.1 with refresh-token rotation and reuse
detection (a consumed refresh token presented again revokes the whole grant), PKCE required,
short access-token lifetimes, and its development login and consent pages, which
:meth:`OidcProvider.sign_in` drives over HTTP as a person in a browser would. ``make node-deps``
installs it into tests/node/node_modules.

    with OidcProvider(clients=[...], access_token_ttl=2) as op:
        redirected = op.sign_in(authorization_url, login="alice")   # -> http://127.0.0.1:PORT/callback?code=..
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Self

import httpx

from ingest.credentials._consent import free_loopback_port
from ingest.testing._loopback import Managed

NODE_DIR = Path(__file__).resolve().parent.parent / "node"
SCRIPT = NODE_DIR / "oidc-provider.mjs"


class OidcProvider(Managed):
    def __init__(self, clients: list[dict[str, Any]], *, access_token_ttl: int = 2, start_timeout: float = 30.0) -> None:
        self.clients = clients
        self.access_token_ttl = access_token_ttl
        self.start_timeout = start_timeout
        self.port = free_loopback_port()
        self.issuer = f"http://127.0.0.1:{self.port}"
        self._proc: subprocess.Popen[str] | None = None
        self.log: list[str] = []

    def start(self) -> Self:
        if not (NODE_DIR / "node_modules" / "oidc-provider").is_dir():
            raise RuntimeError(f"oidc-provider is not installed in {NODE_DIR}/node_modules: run `make node-deps`")
        env = {**os.environ, "OIDC_TEST_CONFIG": json.dumps({"clients": self.clients,
                                                             "access_token_ttl": self.access_token_ttl})}
        self._proc = subprocess.Popen(["node", str(SCRIPT), str(self.port)], cwd=NODE_DIR, env=env, text=True,
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        ready = threading.Event()

        def pump() -> None:
            assert self._proc is not None and self._proc.stdout is not None
            for line in self._proc.stdout:
                self.log.append(line.rstrip())
                if line.startswith("listening "):
                    ready.set()

        threading.Thread(target=pump, name="oidc-provider-log", daemon=True).start()
        if not ready.wait(self.start_timeout):
            self.stop()
            raise RuntimeError("oidc-provider did not start:\n" + "\n".join(self.log[-20:]))
        return self

    def stop(self) -> None:
        if self._proc is not None:
            if self._proc.stdin:
                self._proc.stdin.close()  # the script stops when its stdin closes
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(10)
            self._proc = None

    @property
    def authorize_url(self) -> str:
        return f"{self.issuer}/auth"

    @property
    def token_url(self) -> str:
        return f"{self.issuer}/token"

    def sign_in(self, authorization_url: str, login: str = "alice", *, deliver: bool = False) -> str:
        """Open the URL, sign in and consent on the provider's pages; return where it redirects (the callback).

        ``deliver=True`` also GETs that callback URL, as the browser would (to reach a loopback listener).
        """
        with httpx.Client(follow_redirects=False, timeout=10) as browser:
            response = browser.get(authorization_url)
            for _ in range(10):
                if response.status_code in (302, 303):
                    location = str(httpx.URL(self.issuer).join(response.headers["location"]))
                    if not location.startswith(self.issuer):
                        if deliver:
                            browser.get(location)
                        return location
                    response = browser.get(location)
                    continue
                if response.status_code != 200:
                    raise AssertionError(f"the provider answered {response.status_code}: {response.text[:300]}")
                form = response.text
                action = re.search(r'<form[^>]*action="([^"]+)"', form)
                if action is None:
                    raise AssertionError(f"no form on the provider's page: {form[:300]}")
                fields = dict(re.findall(r'<input[^>]*name="([^"]+)"[^>]*value="([^"]*)"', form))
                if 'name="login"' in form:
                    fields.update(login=login, password="any")
                response = browser.post(action.group(1), data=fields)
        raise AssertionError("the provider never redirected back")

    def revoke(self, token: str, client_id: str, client_secret: str) -> None:
        """RFC 7009: revoke a token (a refresh token revokes its grant)."""
        response = httpx.post(f"{self.issuer}/token/revocation", timeout=10,
                              data={"token": token, "client_id": client_id, "client_secret": client_secret})
        assert response.status_code == 200, response.text

    def introspect(self, token: str, client_id: str, client_secret: str) -> dict[str, Any]:
        response = httpx.post(f"{self.issuer}/token/introspection", timeout=10,
                              data={"token": token, "client_id": client_id, "client_secret": client_secret})
        response.raise_for_status()
        return response.json()


def wait_until(predicate, timeout: float = 10.0, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()
