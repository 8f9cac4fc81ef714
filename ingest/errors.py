"""Every error ingest raises, in one tree.

    IngestError
    ├── ConfigError                 bad schedules.yaml, unknown connector, bad settings (exit 2)
    ├── SourceError                 the source app misbehaved or refused
    │   ├── RetryableError          worth another try: connection errors, timeouts, 5xx, 429, truncated bodies
    │   │   └── RateLimitedError    429 (or a rate-limit header at zero), with ``retry_after``
    │   ├── ListingChangedError     a listing came back with fewer distinct records than the source announced
    │   └── FatalError              retrying will not help
    │       ├── AuthError           401 / 403, bad credentials, failed bind
    │       ├── NotFoundError       404, wrong base URL
    │       ├── ProtocolError       the answer is not what the protocol promises (not SCIM, not JSON, ...)
    │       ├── PaginationLoopError the source handed back a page token it already gave
    │       └── ReadOnlyViolation   a connector tried to write to the source
    ├── SnapshotError               the snapshot could not be committed
    │   └── MassDeletionError       the run would remove too much; snapshot ``rejected``
    ├── AlreadyRunningError         another run of the same connector holds its lock
    └── Cancelled                   the run was stopped from outside (Ctrl-C, shutdown, its timeout)

An error carries the connector, the stream and a redacted request line, never a secret.
"""

from __future__ import annotations

__all__ = [
    "IngestError",
    "ConfigError",
    "SourceError",
    "RetryableError",
    "RateLimitedError",
    "ListingChangedError",
    "FatalError",
    "AuthError",
    "NotFoundError",
    "ProtocolError",
    "PaginationLoopError",
    "ReadOnlyViolation",
    "SnapshotError",
    "MassDeletionError",
    "AlreadyRunningError",
    "Cancelled",
]


class IngestError(Exception):
    """Base of every error ingest raises on purpose."""

    def __init__(self, message: str, *, connector: str | None = None, stream: str | None = None,
                 request: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.connector = connector
        self.stream = stream
        self.request = request

    def __str__(self) -> str:
        parts = [self.message]
        where = ", ".join(f"{k}={v}" for k, v in (("connector", self.connector), ("stream", self.stream)) if v)
        if where:
            parts.append(f"[{where}]")
        if self.request:
            parts.append(f"(request: {self.request})")
        return " ".join(parts)


class ConfigError(IngestError):
    """The configuration is wrong; the message names the file, connector and field."""


class SourceError(IngestError):
    """The source app answered with something we cannot use."""

    def __init__(self, message: str, *, status_code: int | None = None, **kw) -> None:
        super().__init__(message, **kw)
        self.status_code = status_code


class RetryableError(SourceError):
    """A transient fault: retried with backoff by the HTTP layer."""

    def __init__(self, message: str, *, retry_after: float | None = None, **kw) -> None:
        super().__init__(message, **kw)
        self.retry_after = retry_after


class RateLimitedError(RetryableError):
    """The source throttled us (429 or an exhausted rate-limit header)."""


class ListingChangedError(SourceError):
    """Offset / startIndex paging received fewer distinct records than the source's total: records
    deleted while paging shifted later pages. The run lists the stream again (bounded) or fails;
    a short listing never becomes removals."""

    def __init__(self, message: str, *, received: int = 0, announced: int = 0, **kw) -> None:
        super().__init__(message, **kw)
        self.received, self.announced = received, announced


class FatalError(SourceError):
    """A fault that another try will not fix."""


class AuthError(FatalError):
    """The source refused the credentials."""


class NotFoundError(FatalError):
    """The URL or object does not exist (often a wrong base URL)."""


class ProtocolError(FatalError):
    """The source does not speak the protocol the connector expects."""


class PaginationLoopError(FatalError):
    """The source returned the same page token twice."""


class ReadOnlyViolation(FatalError):
    """A request would have changed the source; ingest never writes to a source."""


class SnapshotError(IngestError):
    """The snapshot could not be committed."""


class MassDeletionError(SnapshotError):
    """The run would remove more than ``max_deletion_ratio`` of an entity's rows."""


class AlreadyRunningError(IngestError):
    """Another run of this connector is in progress."""


class Cancelled(IngestError):
    """The run was stopped from outside; ``status`` is what its snapshot becomes: ``interrupted``
    (Ctrl-C, a daemon shutting down) or ``failed`` (the run's timeout)."""

    def __init__(self, message: str = "cancelled", status: str = "interrupted", **kw) -> None:
        super().__init__(message, **kw)
        self.status = status
