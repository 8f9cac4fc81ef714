"""A loopback authorization server for RFC 7523 and GitHub App tokens, verifying every assertion it gets.

Assertions are verified with joserfc (the JOSE library authlib itself builds on):
signature against the registered public key, then ``iss``, ``sub``, ``aud``
and ``exp`` (plus ``iat``/``exp`` bounds for GitHub's 10-minute app JWT).

    POST /token                                   grant_type=client_credentials + client_assertion (private_key_jwt)
                                                  grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer + assertion
    POST /app/installations/{id}/access_tokens    Authorization: Bearer <RS256 app JWT>   -> 201 {"token", "expires_at"}
    GET  /api/me                                  Authorization: Bearer <an issued token> -> {"sub", "scope"}

Refusals answer like the real servers (``{"error": "invalid_client" | "invalid_grant", ...}``,
GitHub's ``{"message": ...}`` with 401) and are kept in ``refusals``.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from joserfc import jwt
from joserfc.errors import ExpiredTokenError, InvalidClaimError, JoseError
from joserfc.jwk import RSAKey

from tests.servers._loopback import LoopbackServer

CLIENT_ASSERTION = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"


def rsa_pem() -> tuple[str, str]:
    """A fresh RSA key pair: (private PEM, public PEM)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    return private, public


class TokenServer(LoopbackServer):
    thread_name = "token-server"

    def __init__(self, *, token_ttl: int = 3600) -> None:
        self.clients: dict[str, dict[str, Any]] = {}       # client_id -> {"public_key", "kid"}
        self.service_accounts: dict[str, dict[str, Any]] = {}  # client_email -> {"public_key", "subjects"}
        self.apps: dict[str, dict[str, Any]] = {}           # app_id -> {"public_key", "installations"}
        self.issued: dict[str, dict[str, Any]] = {}         # token -> {"sub", "scope"}
        self.refusals: list[str] = []
        self.requests: list[tuple[str, str]] = []
        self.token_ttl = token_ttl
        self.required_scope: str | None = None  # /api/me answers 403 insufficient_scope without it
        self._lock = threading.Lock()

    # -- registration -----------------------------------------------------------
    def add_client(self, client_id: str, public_pem: str, kid: str | None = None) -> None:
        self.clients[client_id] = {"public_key": public_pem, "kid": kid}

    def add_service_account(self, email: str, public_pem: str, subjects: set[str]) -> None:
        self.service_accounts[email] = {"public_key": public_pem, "subjects": subjects}

    def add_app(self, app_id: str, public_pem: str, installations: set[str]) -> None:
        self.apps[app_id] = {"public_key": public_pem, "installations": installations}

    @property
    def token_url(self) -> str:
        return f"{self.root_url}/token"

    # -- verification --------------------------------------------------------------
    def _verify(self, token: str, public_pem: str, **expect: Any) -> dict[str, Any]:
        key = RSAKey.import_key(public_pem)
        decoded = jwt.decode(token, key, algorithms=["RS256"])  # signature
        options = {"exp": {"essential": True}}
        for claim, value in expect.items():
            options[claim] = {"essential": True, "value": value}
        jwt.JWTClaimsRegistry(leeway=0, **options).validate(decoded.claims)  # iss, sub, aud, exp
        return decoded.claims

    def _issue(self, sub: str, scope: str | None) -> dict[str, Any]:
        token = "at-" + secrets.token_urlsafe(24)
        with self._lock:
            self.issued[token] = {"sub": sub, "scope": scope}
        body = {"access_token": token, "token_type": "Bearer", "expires_in": self.token_ttl}
        if scope:
            body["scope"] = scope
        return body

    def token(self, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        grant = form.get("grant_type")
        if grant == "client_credentials":
            if form.get("client_assertion_type") != CLIENT_ASSERTION or "client_assertion" not in form:
                return self._refuse(401, "invalid_client", "private_key_jwt client assertion required")
            client_id = form.get("client_id", "")
            client = self.clients.get(client_id)
            if client is None:
                return self._refuse(401, "invalid_client", "unknown client")
            try:
                self._verify(form["client_assertion"], client["public_key"], iss=client_id, sub=client_id,
                             aud=self.token_url)
            except (JoseError, ValueError) as e:
                return self._refuse(401, "invalid_client", f"client assertion rejected: {type(e).__name__} {e}")
            return 200, self._issue(client_id, form.get("scope"))
        if grant == JWT_BEARER:
            assertion = form.get("assertion", "")
            claims, account, last = None, None, "unknown service account"
            for email, candidate in self.service_accounts.items():
                try:
                    claims = self._verify(assertion, candidate["public_key"], iss=email, aud=self.token_url)
                    account = candidate
                    break
                except (ExpiredTokenError, InvalidClaimError) as e:
                    last = ("Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable "
                            f"timeframe. Check your iat and exp values in the JWT claim. ({type(e).__name__})")
                    break
                except (JoseError, ValueError) as e:
                    last = f"assertion rejected: {type(e).__name__} {e}"
            if account is None:
                return self._refuse(400, "invalid_grant", last)
            iss = claims["iss"]
            sub = claims.get("sub")
            if sub is not None and sub not in account["subjects"]:
                return self._refuse(401, "unauthorized_client",
                                    "Client is unauthorized to retrieve access tokens using this method, or client "
                                    "not authorized for any of the scopes requested.")
            return 200, self._issue(sub or iss, claims.get("scope"))
        return self._refuse(400, "unsupported_grant_type", f"grant_type {grant!r}")

    def installation_token(self, installation: str, authorization: str | None) -> tuple[int, dict[str, Any]]:
        if not authorization or not authorization.startswith("Bearer "):
            return self._refuse_github("A JSON web token could not be decoded")
        app_jwt = authorization[7:]
        for app_id, app in self.apps.items():
            try:
                claims = self._verify(app_jwt, app["public_key"], iss=app_id)
            except (JoseError, ValueError):
                continue
            if claims["exp"] - claims["iat"] > 600:
                return self._refuse_github("'Expiration time' claim ('exp') is too far in the future")
            if installation not in app["installations"]:
                return 404, {"message": "Not Found"}
            body = self._issue(f"app:{app_id}", "members:read")
            expires = datetime.fromtimestamp(time.time() + self.token_ttl, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            return 201, {"token": body["access_token"], "expires_at": expires,
                         "permissions": {"members": "read"}, "repository_selection": "all"}
        return self._refuse_github("A JSON web token could not be decoded")

    def _refuse(self, status: int, error: str, description: str) -> tuple[int, dict[str, Any]]:
        self.refusals.append(f"{error}: {description}")
        return status, {"error": error, "error_description": description}

    def _refuse_github(self, message: str) -> tuple[int, dict[str, Any]]:
        self.refusals.append(message)
        return 401, {"message": message, "documentation_url": "https://docs.github.com/rest"}

    def _make_server(self) -> ThreadingHTTPServer:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length).decode()
                server.requests.append(("POST", self.path))
                if self.path == "/token":
                    self._send(*server.token(dict(parse_qsl(raw))))
                elif self.path.startswith("/app/installations/") and self.path.endswith("/access_tokens"):
                    installation = self.path.split("/")[3]
                    self._send(*server.installation_token(installation, self.headers.get("Authorization")))
                else:
                    self._send(404, {"message": "Not Found"})

            def do_GET(self) -> None:  # noqa: N802
                server.requests.append(("GET", self.path))
                auth = self.headers.get("Authorization") or ""
                grant = server.issued.get(auth[7:]) if auth.startswith("Bearer ") else None
                scopes = ((grant or {}).get("scope") or "").split()
                if self.path == "/api/me" and grant is not None and server.required_scope not in (None, *scopes):
                    data = json.dumps({"error": "insufficient_scope",
                                       "error_description": f"the {server.required_scope} scope is required"})
                    self.send_response(403)
                    self.send_header("WWW-Authenticate", f'Bearer error="insufficient_scope", '
                                                         f'scope="{server.required_scope}"')
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data.encode())
                elif self.path == "/api/me" and grant is not None:
                    self._send(200, grant)
                elif self.path == "/api/me":
                    self._send(401, {"error": "invalid_token"})
                else:
                    self._send(404, {"message": "Not Found"})

        return ThreadingHTTPServer(("127.0.0.1", 0), Handler)
