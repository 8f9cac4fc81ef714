"""GitHub's rate limits, read the way GitHub documents them.

    primary    403 or 429 with ``x-ratelimit-remaining: 0``: wait until ``x-ratelimit-reset``
               (epoch seconds) -- left to the shared HTTP layer, which reads exactly that
    secondary  403 or 429 with ``retry-after``: wait that many seconds -- the shared layer too
               403 or 429 without it (the body says "You have exceeded a secondary rate limit"):
               wait at least a minute, then back off exponentially -- this module

A secondary limit's answer still carries ``x-ratelimit-reset`` of the *primary* window, up to an
hour away, with ``remaining`` above zero: reading that as the wait is how a peer slept an hour
(cloudquery #11820). Here the reset is never the wait of a secondary limit.
"""

from __future__ import annotations

import threading

import httpx

from ingest.errors import IngestError, RateLimitedError

__all__ = ["SecondaryRateLimits", "is_secondary_limit"]

_LONGEST = 15 * 60.0


def _message(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return ""
    return str(body.get("message") or "") if isinstance(body, dict) else ""


def is_secondary_limit(response: httpx.Response) -> bool:
    """A 403/429 that is a secondary limit without ``retry-after`` (the case the shared layer cannot read)."""
    if response.status_code not in (403, 429) or "retry-after" in response.headers:
        return False
    if response.headers.get("x-ratelimit-remaining", "").strip() == "0":
        return False  # the primary window is used up: wait for its reset
    message = _message(response).lower()
    return response.status_code == 429 or "secondary rate limit" in message or "abuse" in message


class SecondaryRateLimits:
    """The ``classify`` hook of the GitHub client: the n-th secondary limit in a row waits
    ``minimum * 2**(n-1)`` seconds (at most 15 minutes); a success starts the count again."""

    def __init__(self, minimum: float = 60.0) -> None:
        self.minimum = minimum
        self._strikes = 0
        self._lock = threading.Lock()

    def __call__(self, response: httpx.Response) -> IngestError | None:
        if response.status_code < 300:
            if self._strikes:
                with self._lock:
                    self._strikes = 0
            return None
        if not is_secondary_limit(response):
            return None
        with self._lock:
            self._strikes += 1
            wait = min(_LONGEST, self.minimum * 2 ** (self._strikes - 1))
        return RateLimitedError(f"GitHub secondary rate limit ({_message(response) or response.status_code}); "
                                f"waiting {wait:g} s", retry_after=wait)
