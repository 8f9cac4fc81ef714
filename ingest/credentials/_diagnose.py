"""Why a check failed, in one line, and what to do about it (``ingest check``, the form's *Test* button).

    reason, todo = explain(error, "okta", credential)
    # ("the token endpoint refused the client credentials: invalid_client - ...",
    #  "check auth.client_id and auth.client_secret against the app registration")

The reason quotes the source's own words (already redacted); nothing here
ever includes a secret.
"""

from __future__ import annotations

import re
from typing import Any

from ingest.credentials._token import ConsentRequired
from ingest.errors import AuthError, ConfigError, IngestError, NotFoundError, RetryableError
from ingest.redact import redact

__all__ = ["explain"]

_CLOCK = re.compile(r"(?i)(clock|skew|issued at|\biat\b|\bnbf\b|not yet valid|in the future|too far in the future|"
                    r"RequestTimeTooSkewed|Signature expired|expiration time)")
_UNREACHABLE = re.compile(r"(?i)(name or service not known|nodename nor servname|temporary failure in name resolution|"
                          r"no address associated|connection refused|no route to host|network is unreachable|"
                          r"timed out|connecterror|connecttimeout)")
_SCOPE = re.compile(r"(?i)(insufficient_scope|invalid_scope|missing.{0,20}scope|scope.{0,40}(missing|required|not "
                    r"granted)|insufficient privileges|not authorized to perform|AccessDenied|Resource not accessible "
                    r"by integration|forbidden)")


def _secret_field(cred: Any) -> str:
    kind = getattr(cred, "kind", "")
    return {
        "basic": "auth.username and auth.password",
        "api_key": "auth.api_key (and header / prefix)",
        "bearer": "auth.bearer_token",
        "username_api_key": "auth.username and auth.api_key",
        "oauth2_client_credentials": ("auth.client_id and auth.private_key / key_id" if getattr(cred, "private_key", None)
                                      else "auth.client_id and auth.client_secret"),
        "oauth2_authorization_code": "auth.client_id and auth.client_secret",
        "service_account": "auth.service_account_json (is the key still active?)",
        "aws": "auth.access_key_id and auth.secret_access_key",
        "github_app": "auth.app_id and auth.private_key",
    }.get(kind, "the auth section")


def explain(error: BaseException, name: str, cred: Any) -> tuple[str, str]:
    """(one-line reason, what to do) for an exception raised by a connector's ``validate_credentials``."""
    text = redact(str(error)).replace("\n", " ")  # with [connector=...] and the redacted request line
    oauth = getattr(error, "oauth_error", None)
    fields = _secret_field(cred)
    if isinstance(error, ConsentRequired):
        return text, f"run `ingest auth {name}` and sign in"
    if isinstance(error, ConfigError):
        return text, "fix the configuration"
    if "TLS certificate verification failed" in text or "CERTIFICATE_VERIFY_FAILED" in text:
        return text.split(";")[0], ("set settings.ca_bundle to the CA that signed the server's certificate "
                                    "(or fix the server's certificate chain)")
    if isinstance(error, AuthError) and _CLOCK.search(text):
        return (f"clock skew? the source says a signed token's time is wrong: {text}",
                "sync this machine's clock (NTP); JWT assertions and AWS signatures are valid for minutes only")
    if oauth == "invalid_client":
        return text, f"check {fields} against the app registration"
    if oauth == "invalid_grant":
        if getattr(cred, "kind", "") == "service_account":
            return (text,
                    "check that the key is still active, the subject exists, and this machine's clock is right")
        return text, f"run `ingest auth {name}` again" if getattr(cred, "needs_consent", False) else f"check {fields}"
    if oauth == "invalid_scope":
        return (text, "check auth.scopes against what the app is allowed to ask for")
    if oauth == "unauthorized_client":
        return (text, "grant the app the scopes (for Google: domain-wide delegation for auth.subject) or allow the grant "
                "type in the app registration")
    status = getattr(error, "status_code", None)
    if isinstance(error, AuthError) and (status == 403 or _SCOPE.search(text)):
        todo = "grant the missing permission or scope to the credential's app or user"
        if getattr(cred, "needs_consent", False):
            todo += f", then run `ingest auth {name}` again to consent to it"
        return f"the credentials work but lack a permission or scope: {text}", todo
    if isinstance(error, AuthError):
        return text, f"check {fields}"
    if isinstance(error, NotFoundError):
        return text, "check settings.base_url (and the tenant / org settings)"
    if isinstance(error, RetryableError) and _UNREACHABLE.search(text):
        return (f"cannot reach the source: {text}",
                "check settings.base_url, DNS and the firewall, or set settings.proxy")
    if isinstance(error, RetryableError):
        return text, "the source had a transient problem: try again later"
    if isinstance(error, IngestError):
        return text, "see the message above"
    return f"{type(error).__name__}: {text}", "this is unexpected: run with -v and report it"
