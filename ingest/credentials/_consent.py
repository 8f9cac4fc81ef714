"""``ingest auth NAME``: OAuth 2.0 authorization-code consent with PKCE (Lumos's get_authorization_url +
handle_authorization_callback).

1. :func:`authorization_request` makes a fresh ``state`` and PKCE verifier and
   the authorization URL (authlib builds it and the S256 challenge).
2. The redirect comes back either to a one-shot loopback listener on the
   ``redirect_uri`` (:func:`wait_for_callback`: 127.0.0.1 only, one request,
   bounded wait) or pasted by the user (``--paste``). :func:`code_from_redirect`
   checks ``state`` and turns an ``error=`` answer into a clear AuthError.
3. :func:`exchange` trades the code (and verifier) for tokens through the
   shared HTTP layer and commits them to the credential store.
"""

from __future__ import annotations

import http.server
import socket
import threading
import time
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx
import structlog
from authlib.common.security import generate_token
from authlib.oauth2.rfc6749.errors import MismatchingStateException, MissingCodeException
from authlib.oauth2.rfc6749.parameters import parse_authorization_code_response, prepare_grant_uri
from authlib.oauth2.rfc7636 import create_s256_code_challenge

from ingest.credentials._kinds import OAuth2AuthorizationCode
from ingest.credentials._token import AuthorizationCodeGrant, Token
from ingest.errors import AuthError, ConfigError
from ingest.redact import register_secret

__all__ = ["AuthorizationRequest", "authorization_request", "code_from_redirect", "wait_for_callback", "exchange"]

log = structlog.get_logger("ingest.credentials")
_LOOPBACK = {"127.0.0.1", "localhost", "[::1]", "::1"}


@dataclass
class AuthorizationRequest:
    url: str
    state: str
    code_verifier: str
    redirect_uri: str

    def __repr__(self) -> str:
        return f"AuthorizationRequest(url={self.url!r})"


def authorization_request(cred: OAuth2AuthorizationCode) -> AuthorizationRequest:
    """A fresh state and PKCE (S256, always) verifier, and the URL to open in a browser."""
    state, verifier = generate_token(32), generate_token(64)
    register_secret(verifier)
    params = dict(cred.authorize_params)
    if "offline_access" in cred.scopes:
        params.setdefault("prompt", "consent")  # OpenID Connect grants offline_access only with prompt=consent
    url = prepare_grant_uri(cred.authorize_url, cred.client_id, "code", redirect_uri=cred.redirect_uri,
                            scope=" ".join(cred.scopes) or None, state=state,
                            code_challenge=create_s256_code_challenge(verifier), code_challenge_method="S256",
                            **params)
    return AuthorizationRequest(url, state, verifier, cred.redirect_uri)


def code_from_redirect(request: AuthorizationRequest, redirected: str) -> str:
    """The code in the URL the provider redirected to, after checking ``state``; errors name what to do."""
    redirected = redirected.strip()
    query = dict(parse_qsl(urlsplit(redirected).query))
    if not query:
        raise AuthError("that is not the redirected URL: paste the whole address the browser went to "
                        f"(it starts with {request.redirect_uri} and has ?code=...)")
    if "error" in query:
        description = query.get("error_description", "")
        hint = " (the consent was declined)" if query["error"] == "access_denied" else ""
        raise AuthError(f"the provider refused the authorization: {query['error']}"
                        f"{': ' + description if description else ''}{hint}")
    try:
        params = parse_authorization_code_response(redirected, request.state)
    except MismatchingStateException:
        raise AuthError("the redirect's state does not match this request (an old or forged link): "
                        "start `ingest auth` again and use the URL it prints") from None
    except MissingCodeException:
        raise AuthError("the redirected URL has no code: finish the sign-in in the browser first") from None
    register_secret(params["code"])
    return params["code"]


def _loopback_address(redirect_uri: str) -> tuple[str, int, str]:
    parts = urlsplit(redirect_uri)
    if parts.scheme != "http" or (parts.hostname or "") not in _LOOPBACK or parts.port is None:
        raise ConfigError(f"redirect_uri {redirect_uri!r} is not a loopback address with a port "
                          "(http://127.0.0.1:PORT/path): ingest auth can only listen on this machine; "
                          "use --paste for any other redirect URI")
    return "127.0.0.1", parts.port, parts.path or "/"


def wait_for_callback(request: AuthorizationRequest, timeout: float) -> str:
    """Listen on the loopback ``redirect_uri`` for the one callback; returns the redirected URL.

    Only 127.0.0.1 is bound; requests to other paths get a 404 and do not count; the
    wait is bounded by ``timeout`` seconds.
    """
    host, port, path = _loopback_address(request.redirect_uri)
    got: list[str] = []
    done = threading.Event()

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802
            if urlsplit(self.path).path != path or done.is_set():
                self.send_error(404)
                return
            got.append(f"{request.redirect_uri.split('?')[0]}?{urlsplit(self.path).query}")
            ok = "code=" in self.path and "error=" not in self.path
            body = (b"<!doctype html><title>ingest</title><p>Signed in. You can close this window and return "
                    b"to the terminal.</p>" if ok else
                    b"<!doctype html><title>ingest</title><p>The sign-in did not complete; see the terminal.</p>")
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            done.set()

    class Server(http.server.HTTPServer):
        allow_reuse_address = True

    try:
        server = Server((host, port), Handler)
    except OSError as e:
        raise ConfigError(f"cannot listen on {request.redirect_uri}: {e.strerror} (is another `ingest auth` "
                          "running? use --paste, or another redirect_uri port)") from None
    server.timeout = 0.2
    deadline = time.monotonic() + timeout
    try:
        while not done.is_set():
            if time.monotonic() > deadline:
                raise AuthError(f"no callback on {request.redirect_uri} within {timeout:g} s: run `ingest auth` "
                                "again (or --paste the redirected URL)")
            server.handle_request()
    finally:
        server.server_close()
    return got[0]


class _Exchange(httpx.Auth):
    """Sends the grant's token request in place of the placeholder request (so the HTTP layer's TLS, proxy,
    guard and retries apply) and keeps the parsed token."""

    requires_response_body = True

    def __init__(self, grant: AuthorizationCodeGrant) -> None:
        self.grant = grant
        self.token_url = grant.token_url
        self.token: Token | None = None

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        token_request = self.grant.request(None)
        timeout = request.extensions.get("timeout")
        if timeout is not None:
            token_request.extensions["timeout"] = timeout
        response = yield token_request
        self.token = self.grant.parse(response, None)


def exchange(cred: OAuth2AuthorizationCode, request: AuthorizationRequest, code: str, *, connector: str,
             store: Any, settings: Any = None) -> Token:
    """Trade the code for tokens and commit them to ``store`` (under the binding later refreshes use)."""
    from ingest.http import HttpClient, HttpSettings

    grant = AuthorizationCodeGrant(cred.token_url, cred.client_auth(), " ".join(cred.scopes) or None, connector,
                                   code=code, redirect_uri=request.redirect_uri, code_verifier=request.code_verifier)
    auth = _Exchange(grant)
    http_settings = settings if isinstance(settings, HttpSettings) else HttpSettings()
    http_settings = http_settings.model_copy(update={"max_retries": min(http_settings.max_retries, 2)})
    with HttpClient(cred.token_url, settings=http_settings, connector=connector, auth=auth) as client:
        client.request("POST", cred.token_url)  # a code is single-use: a refused one is not retried (4xx)
    token = auth.token
    assert token is not None
    store.save(connector, cred.kind, cred.grant(connector).binding, token)
    log.info("consent_stored", connector=connector, scope=token.scope, refresh_token=token.refresh_token is not None)
    return token


def free_loopback_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
