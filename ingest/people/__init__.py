"""People and effective access: the derived stage after every successful snapshot.

It reads the snapshots (the current views and the ``*_at`` functions) and writes its own tables:
``ingest.identities``, ``identity_accounts``, ``entitlement_paths`` (behind the ``effective_access``
view) and ``findings``. Connectors and the writer never know about it; the runner calls
:func:`refresh_after_commit` once a snapshot has committed.
"""

from __future__ import annotations

import sqlalchemy as sa
import structlog

from ingest.config import IdentityConfig
from ingest.people._findings import FINDING_KINDS
from ingest.people._refresh import ensure_functions, mark_stale, refresh

__all__ = ["FINDING_KINDS", "ensure_functions", "refresh", "refresh_after_commit"]

log = structlog.get_logger("ingest.people")


def refresh_after_commit(engine: sa.Engine, cfg: IdentityConfig | None, snapshot_id: int, connector: str) -> bool:
    """:func:`refresh`, never raising: the snapshot is committed whatever happens here.

    A failure is logged (``people_refresh_failed``) and the people tables keep their previous state,
    to be brought up to date by the next snapshot of any connector.
    """
    try:
        refresh(engine, cfg, snapshot_id, connector)
        return True
    except Exception as e:  # noqa: BLE001 - logged, the snapshot stands
        from ingest.redact import redact

        log.error("people_refresh_failed", snapshot_id=snapshot_id, error=redact(f"{type(e).__name__}: {e}"))
        try:
            mark_stale(engine)
        except Exception:  # noqa: BLE001 - the database may be what failed
            pass
        return False
