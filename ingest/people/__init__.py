"""People and effective access: the derived stage after every successful snapshot.

It reads the snapshots (the current views and the ``*_at`` functions) and writes its own tables:
``ingest.identities``, ``identity_accounts``, ``entitlement_paths`` (behind the ``effective_access``
view) and ``findings``. Connectors and the writer never know about it; the runner calls
:func:`refresh_after_commit` once a snapshot has committed.
"""

from __future__ import annotations

import threading

import sqlalchemy as sa
import structlog

from ingest.config import IdentityConfig
from ingest.people._findings import FINDING_KINDS
from ingest.people._refresh import ensure_functions, mark_stale, refresh

__all__ = ["FINDING_KINDS", "ensure_functions", "refresh", "refresh_after_commit"]

log = structlog.get_logger("ingest.people")


def refresh_after_commit(engine: sa.Engine, cfg: IdentityConfig | None, snapshot_id: int, connector: str,
                         cancel: threading.Event | None = None) -> bool:
    """:func:`refresh`, never raising: the snapshot is committed whatever happens here.

    A failure is logged (``people_refresh_failed``) and the people tables keep their previous state;
    the next refresh (after any connector's next snapshot) then recomputes everything. ``cancel``
    (the daemon shutting down) skips the refresh, or stops one under way at once: it is derived
    work that the next refresh redoes.
    """
    if cancel is not None and cancel.is_set():
        log.warning("people_refresh_skipped", snapshot_id=snapshot_id, reason="shutting down")
        _mark_stale(engine)
        return False
    backend: list[int] = []
    done = threading.Event()

    def watch() -> None:
        while not done.wait(0.1):
            if cancel.is_set() and backend:
                with engine.connect() as c:
                    c.execute(sa.text("SELECT pg_cancel_backend(:p)"), {"p": backend[0]})
                return

    watcher = None
    if cancel is not None:
        watcher = threading.Thread(target=watch, name="people-refresh-cancel", daemon=True)
        watcher.start()
    try:
        refresh(engine, cfg, snapshot_id, connector, on_backend=backend.append)
        return True
    except Exception as e:  # noqa: BLE001 - logged, the snapshot stands
        from ingest.redact import redact

        log.error("people_refresh_failed", snapshot_id=snapshot_id, error=redact(f"{type(e).__name__}: {e}"))
        _mark_stale(engine)
        return False
    finally:
        done.set()
        if watcher is not None:
            watcher.join(timeout=5)


def _mark_stale(engine: sa.Engine) -> None:
    try:
        mark_stale(engine)
    except Exception:  # noqa: BLE001 - the database may be what failed
        pass
