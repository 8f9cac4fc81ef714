"""Keep secrets out of logs, errors, the terminal and the database.

Three layers, applied to every log event by :func:`structlog_processor` and
to every error message the HTTP layer builds:

1. Every secret value ingest knows about is registered here
   (:func:`register_secret`: the config loader registers each ``SecretStr``,
   and each auth object registers what it puts on the wire) and masked
   wherever it appears, in plain, URL-encoded and base64 form.
2. Credentials that were never registered but have a recognisable shape are
   masked too: ``Bearer <token>`` / ``Basic <b64>`` and ``password=...``-like
   pairs in free text.
3. URLs lose the userinfo and the values of query parameters whose names look
   secret (:func:`redact_url`).

    >>> register_secret("s3cr3t-token")
    >>> redact("Authorization: Bearer s3cr3t-token")
    'Authorization: Bearer ***'
    >>> redact_url("https://bob:pw@api.example.com/users?api_key=abc&page=2")
    'https://***@api.example.com/users?api_key=***&page=2'
"""

from __future__ import annotations

import base64
import re
import threading
from typing import Any
from urllib.parse import parse_qsl, quote, quote_plus, urlencode, urlsplit, urlunsplit

__all__ = ["register_secret", "redact", "redact_url", "structlog_processor", "MASK"]

MASK = "***"
_SECRET_PARAM = re.compile(r"(token|key|secret|password|passwd|pwd|signature|sig|auth|credential|code)", re.I)
# Shapes of credentials in free text, masked even when never registered.
_SHAPES = [
    # "Bearer <token>": a run of 8+ token characters holding a digit (so prose like "Basic auth" stays)
    (re.compile(r"(?i)\b(bearer|basic|token|ssws|apikey)(\s+)(?=[A-Za-z0-9._~+/=-]*\d)[A-Za-z0-9._~+/=-]{8,}"),
     r"\1\2" + MASK),
    (
        re.compile(
            r"""(?ix)\b([a-z_-]*(?:password|passwd|secret|api[_-]?key|access[_-]?token|refresh[_-]?token|client[_-]?secret))
                (["']?\s*[:=]\s*["']?)([^\s"'&,;}]+)"""
        ),
        r"\1\2" + MASK,
    ),
]
_MIN_SECRET = 4

_lock = threading.Lock()
_secrets: set[str] = set()
_pattern: re.Pattern[str] | None = None


def register_secret(value: str | None) -> None:
    """Mask ``value`` (and its URL-encoded and base64 forms) wherever it shows up from now on.

    Values shorter than four characters are ignored: masking them would mangle
    ordinary text.
    """
    global _pattern
    if not isinstance(value, str) or len(value) < _MIN_SECRET:
        return
    raw = value.encode()
    variants = {
        value,
        quote(value, safe=""),
        quote_plus(value, safe=""),
        base64.b64encode(raw).decode(),
        base64.urlsafe_b64encode(raw).decode(),
        base64.b64encode(raw).decode().rstrip("="),
    }
    variants = {v for v in variants if len(v) >= _MIN_SECRET}
    with _lock:
        if variants <= _secrets:
            return
        _secrets.update(variants)
        alternatives = sorted(_secrets, key=len, reverse=True)
        _pattern = re.compile("|".join(re.escape(s) for s in alternatives))


def redact(text: Any) -> Any:
    """Mask registered secrets and credential-shaped substrings in a string (other values pass through)."""
    if not isinstance(text, str):
        return text
    pattern = _pattern
    if pattern is not None:
        text = pattern.sub(MASK, text)
    for shape, replacement in _SHAPES:
        text = shape.sub(replacement, text)
    return text


def redact_url(url: Any) -> str:
    """A URL safe to print: no userinfo, secret-looking query (and fragment) values masked."""
    parts = urlsplit(str(url))
    netloc = parts.netloc
    if "@" in netloc:
        netloc = MASK + "@" + netloc.rsplit("@", 1)[1]
    return redact(urlunsplit((parts.scheme, netloc, parts.path, _mask_params(parts.query),
                              _mask_params(parts.fragment) if "=" in parts.fragment else parts.fragment)))


def _mask_params(query: str) -> str:
    if not query:
        return query
    pairs = parse_qsl(query, keep_blank_values=True)
    return urlencode([(k, MASK if _SECRET_PARAM.search(k) else v) for k, v in pairs], safe="*$:/,")


def _scrub(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, dict):
        return {k: _scrub(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_scrub(v) for v in value]
    if isinstance(value, BaseException):
        return redact(f"{type(value).__name__}: {value}")
    if isinstance(value, (bytes, bytearray)):
        text = bytes(value).decode("utf-8", "replace")
        masked = redact(text)
        return masked if masked != text else value
    # Anything else is rendered with str()/repr() later on: mask it now if that text holds a secret.
    text = str(value)
    masked = redact(text)
    return masked if masked != text else value


def structlog_processor(logger: Any, method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """structlog processor: mask secrets in every field of every event (run it last before rendering)."""
    return {k: _scrub(v) for k, v in event_dict.items()}
