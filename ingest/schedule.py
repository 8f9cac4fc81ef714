"""Schedule arithmetic shared by the daemon and ``ingest status``."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

__all__ = ["trigger_for", "next_run_times"]


def trigger_for(schedule: str, tz: str):
    from apscheduler.triggers.cron import CronTrigger

    return CronTrigger.from_crontab(schedule, timezone=tz)


def next_run_times(loaded: Any, engine: Any = None, now: datetime | None = None) -> dict[str, datetime | None]:
    """Next fire time of each enabled connector (the daemon may refine it with jitter)."""
    now = now or datetime.now(timezone.utc)
    result: dict[str, datetime | None] = {}
    for name, rc in loaded.connectors.items():
        if not rc.enabled:
            result[name] = None
            continue
        result[name] = trigger_for(rc.schedule, loaded.config.timezone).get_next_fire_time(None, now)
    return result
