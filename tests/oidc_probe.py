"""A connector for the credential tests: reads the signed-in user from an OpenID Connect userinfo endpoint.

    type: oidc_probe
    settings: {base_url: http://127.0.0.1:PORT}      # the provider's issuer; GET /me with the access token
    auth: {client_id, client_secret, authorize_url, token_url, scopes: [openid, offline_access, email]}
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from ingest.connector import Connector, cached_client
from ingest.credentials import KINDS, credentials
from ingest.http import HttpSettings


class ProbeSettings(HttpSettings):
    base_url: str = Field(..., json_schema_extra={"x-section": "general"})


class OidcProbe(Connector):
    type = "oidc_probe"
    name = "OpenID Connect userinfo (tests)"
    description = "The signed-in user, from the userinfo endpoint."
    Settings = ProbeSettings
    Auth = credentials(*KINDS)  # every kind: the check tests use several

    @cached_client
    def http(self):
        return self.ctx.http_client(self.settings.base_url, auth=self.auth.httpx_auth())

    def validate_credentials(self) -> dict[str, Any]:
        me = self.http.get_json("/me")
        return {"user": me.get("sub") or me.get("id")}

    def list_accounts(self):
        me = self.http.get_json("/me")
        yield {"account_id": me["sub"], "email": me.get("email"), "username": me["sub"]}


def register() -> None:
    """Make ``type: oidc_probe`` known in this process (subprocesses call this before the CLI)."""
    from ingest import registry

    registry.BUILTIN["oidc_probe"] = "tests.oidc_probe:OidcProbe"
