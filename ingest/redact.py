"""Keep secrets out of logs, errors, the terminal and the database.

Two layers: every secret value the config loads is registered here and masked
wherever it appears in a log event; URLs lose credentials in their userinfo
and in query parameters whose names look secret.
"""

from __future__ import annotations

import re
import threading
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

__all__ = ["register_secret", "redact", "redact_url", "structlog_processor", "MASK"]

MASK = "***"
_SECRET_PARAM = re.compile(r"(token|key|secret|password|passwd|pwd|signature|sig|auth|credential|code)", re.I)
_lock = threading.Lock()
_secrets: set[str] = set()
_pattern: re.Pattern[str] | None = None


def register_secret(value: str | None) -> None:
    """Mask ``value`` (and its common encodings) wherever it shows up from now on."""
    global _pattern
    if not value or len(value) < 4:
        return
    import base64
    from urllib.parse import quote

    variants = {value, quote(value, safe=""), base64.b64encode(value.encode()).decode()}
    with _lock:
        _secrets.update(variants)
        alternatives = sorted(_secrets, key=len, reverse=True)
        _pattern = re.compile("|".join(re.escape(s) for s in alternatives))


def redact(text: Any) -> Any:
    """Replace every registered secret in a string (other values pass through)."""
    if not isinstance(text, str) or _pattern is None:
        return text
    return _pattern.sub(MASK, text)


def redact_url(url: Any) -> str:
    """A URL safe to print: no userinfo password, secret-looking query values masked."""
    parts = urlsplit(str(url))
    netloc = parts.netloc
    if "@" in netloc:
        netloc = MASK + "@" + netloc.rsplit("@", 1)[1]
    query = urlencode(
        [(k, MASK if _SECRET_PARAM.search(k) else v) for k, v in parse_qsl(parts.query, keep_blank_values=True)],
        safe="*",
    )
    return redact(urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment)))


def _scrub(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: _scrub(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_scrub(v) for v in value)
    if isinstance(value, BaseException):
        return redact(f"{type(value).__name__}: {value}")
    return value


def structlog_processor(logger: Any, method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """structlog processor: mask registered secrets in every field of every event."""
    return {k: _scrub(v) for k, v in event_dict.items()}
