from __future__ import annotations

import threading
from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict, Field


class HttpSettings(BaseModel):
    """Settings every HTTP connector accepts (connector settings models subclass this)."""

    model_config = ConfigDict(extra="forbid")

    timeout: float = Field(30.0, gt=0, description="Seconds to wait for a response.")
    connect_timeout: float = Field(10.0, gt=0, description="Seconds to wait for a connection.")
    request_deadline: float = Field(300.0, gt=0, description="Longest time one request may take in all "
                                    "(connection, sending, every byte of the answer); a slower one is retried.")
    verify_ssl: bool = Field(True, description="Verify the server's TLS certificate.")
    ca_bundle: str | None = Field(None, description="Path to a PEM CA bundle to trust.")
    proxy: str | None = Field(None, description="HTTP(S) proxy URL.")
    max_retries: int = Field(5, ge=0, le=50, description="Retries of a failed request.")
    backoff_initial: float = Field(0.5, ge=0, description="First backoff delay in seconds.")
    backoff_max: float = Field(60.0, ge=0, description="Longest backoff delay in seconds.")
    max_retry_after: float = Field(300.0, ge=0, description="Longest Retry-After honoured, in seconds.")
    requests_per_second: float | None = Field(None, gt=0, description="Client-side request rate limit.")
    max_concurrency: int = Field(4, ge=1, le=64, description="Requests in flight at once.")


@dataclass
class HttpStats:
    """Counters for ``snapshots.stats.http`` (thread-safe)."""

    requests: int = 0
    retries: int = 0
    throttled: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            setattr(self, name, getattr(self, name) + n)

    def as_dict(self) -> dict[str, int]:
        return {"requests": self.requests, "retries": self.retries, "throttled": self.throttled}
