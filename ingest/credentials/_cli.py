"""What ``ingest auth`` does (cli.py only registers the command)."""

from __future__ import annotations

import os
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

from ingest.credentials._store import CredentialStore
from ingest.errors import ConfigError

__all__ = ["store_for", "auth_command"]


def store_for(state: Any, loaded: Any) -> CredentialStore:
    """The credential store of the CLI's database; the database starts only when a token is needed."""
    embedded = not (state.database_url or (loaded.config.database_url if loaded else None)
                    or os.environ.get("INGEST_DATABASE_URL"))
    return CredentialStore(lambda: state.engine(loaded), data_dir=loaded.data_dir if loaded else None,
                           embedded=embedded)


def _when(ts: datetime | float | None) -> str:
    if ts is None:
        return "never"
    if not isinstance(ts, datetime):
        ts = datetime.fromtimestamp(ts, UTC)
    left = (ts - datetime.now(UTC)).total_seconds()
    stamp = ts.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    if left >= 0:
        return f"{stamp} (in {_duration(left)})"
    return f"{stamp} ({_duration(-left)} ago)"


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    if seconds < 172800:
        return f"{seconds // 3600} h"
    return f"{seconds // 86400} days"


def auth_command(state: Any, loaded: Any, name: str, *, paste: bool, status: bool, forget: bool, timeout: float,
                 out: Any, err: Any, stdin: TextIO | None = None) -> int:
    """``ingest auth NAME``: consent (listener or --paste), or --status / --forget. Returns the exit code."""
    from ingest.credentials._consent import authorization_request, code_from_redirect, exchange, wait_for_callback

    rc = loaded.connector(name)
    cred = getattr(rc.auth, "credential", rc.auth)
    store = store_for(state, loaded)
    if status:
        held = store.status(name)
        if held is None:
            out.print(f"{name}: nothing stored" + (f" (run `ingest auth {name}`)" if cred.needs_consent else ""))
            return 0
        out.print(f"{name}: {held.kind}", highlight=False)
        if not held.readable:
            out.print("  stored tokens: cannot be read with the current key (INGEST_SECRET_KEY / secret.key)",
                      highlight=False)
        out.print(f"  scopes: {held.scope or '(not reported)'}", highlight=False)
        out.print(f"  access token expires: {_when(held.expires_at)}", highlight=False)
        out.print(f"  refresh token: {'stored' if held.has_refresh_token else 'none'}", highlight=False)
        out.print(f"  updated: {_when(held.updated_at)}", highlight=False)
        return 0
    if forget:
        gone = store.forget(name)
        out.print(f"{name}: stored tokens deleted" if gone else f"{name}: nothing stored")
        return 0
    if getattr(cred, "kind", None) != "oauth2_authorization_code":
        raise ConfigError(f"{loaded.path}: connectors.{name}.auth: `ingest auth` is for oauth2_authorization_code "
                          f"credentials; {name} uses {getattr(cred, 'kind', 'none')}, which needs no consent")
    problem = store.unavailable()
    if problem is not None:
        raise problem
    request = authorization_request(cred)
    err.print(f"Open this URL in a browser, sign in and allow access for {name}:", highlight=False)
    out.print(request.url, highlight=False, soft_wrap=True)
    sys.stdout.flush()
    if paste:
        err.print("Then paste the address the browser was sent to (it starts with "
                  f"{request.redirect_uri}):", highlight=False)
        sys.stderr.flush()
        line = (stdin or sys.stdin).readline()
        redirected = line.strip()
    else:
        err.print(f"Waiting for the redirect on {request.redirect_uri} (up to {timeout:g} s; or run again with "
                  "--paste)...", highlight=False)
        sys.stderr.flush()
        redirected = wait_for_callback(request, timeout)
    code = code_from_redirect(request, redirected)
    token = exchange(cred, request, code, connector=name, store=store, settings=rc.settings)
    out.print(f"[green]{name}: authorized[/]", highlight=False)
    out.print(f"  scopes: {token.scope or '(not reported)'}", highlight=False)
    out.print(f"  access token expires: {_when(token.expires_at)}", highlight=False)
    if token.refresh_token:
        out.print("  refresh token: stored", highlight=False)
    else:
        out.print("  refresh token: none (offline access not granted)", highlight=False)
        err.print(f"[yellow]warning:[/] without a refresh token, runs of {name} fail once the access token "
                  "expires: ask for the provider's offline scope (offline_access, or its equivalent) in `scopes`",
                  highlight=False)
    return 0
