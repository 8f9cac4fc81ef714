"""Schedule arithmetic shared by the daemon and ``ingest status``: pure functions of a clock value.

A *slot* is one instant a 5-field cron expression names in the config's time
zone, kept in UTC (``snapshots.scheduled_for``). A connector's *fire time* for
a slot is the slot plus its stable jitter offset, a fraction of
``daemon.jitter`` derived from a hash of the connector's name, so a thousand
connectors on ``0 2 * * *`` start spread over the jitter window, each at the
same second every day.

Expressions mean what they mean to crontab: weekdays count from Sunday = 0
(7 too), and a day matching either a restricted day of month or a restricted
weekday fires. Daylight saving time follows cron too: a slot in the hour that does not exist
(spring forward) fires right after the change, and a slot in the hour that
happens twice (fall back) fires once, at its first occurrence, unless the
hour field is ``*`` (then every occurrence fires, as wall-clock minutes do).

    >>> slot = next_slot("30 2 * * *", "Europe/Berlin", datetime(2026, 3, 29, tzinfo=UTC))
    >>> slot.isoformat()   # 02:30 does not exist that night: 03:30 CEST
    '2026-03-29T01:30:00+00:00'
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any

from apscheduler.triggers.base import BaseTrigger

__all__ = [
    "SlotTrigger",
    "catch_up",
    "current_slot",
    "failure_streaks",
    "fire_time",
    "is_misfire",
    "jitter_offset",
    "schedule_period",
    "next_run_times",
    "next_slot",
    "previous_slot",
    "retry_delay",
    "slot_period",
    "trigger_for",
]

_TICK = timedelta(microseconds=1)
_MAX_LOOKBACK = timedelta(days=366 * 9)  # the longest gap a 5-field cron has: Feb 29th across 2100 (8 years)


_WEEKDAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")


def _weekday(token: str) -> int:
    token = token.strip().lower()
    if token[:3] in _WEEKDAYS and len(token) == 3:
        return _WEEKDAYS.index(token)
    if token.isdigit() and 0 <= int(token) <= 7:
        return int(token)
    raise ValueError(f"day of week {token!r} is not 0-7 (0 and 7 are Sunday) or sun..sat")


def _cron_weekdays(field: str) -> str:
    """A crontab day-of-week field (0 or 7 = Sunday, 1 = Monday) as APScheduler 3 weekday names.

    APScheduler 3 counts 0 as Monday (its ``from_crontab`` passes numbers through,
    issue #286): ``1-5`` would mean Tuesday to Saturday. Names are unambiguous.
    """
    if field == "*":
        return "*"
    days: set[int] = set()
    for part in field.split(","):
        rng, slash, step_s = part.partition("/")
        step = int(step_s) if slash else 1
        if step < 1:
            raise ValueError(f"day of week step in {part!r} must be at least 1")
        if rng == "*":
            lo, hi = 0, 6
        elif "-" in rng:
            a, b = rng.split("-", 1)
            lo, hi = _weekday(a), _weekday(b)
        else:
            lo = _weekday(rng)
            hi = 7 if slash else lo
        if hi < lo:
            raise ValueError(f"day of week range {rng!r} runs backwards")
        days.update(d % 7 for d in range(lo, hi + 1, step))
    return ",".join(_WEEKDAYS[d] for d in sorted(days))


@lru_cache(maxsize=4096)
def trigger_for(schedule: str, tz: str):
    """The APScheduler trigger of a 5-field crontab expression in ``tz`` (no jitter, no DST repeat rule).

    Crontab semantics, not APScheduler 3's: weekdays count from Sunday = 0 (7 too),
    and when both day of month and day of week are restricted a day matching
    either fires (``0 2 1 * 1``: the 1st and every Monday).
    """
    from apscheduler.triggers.combining import OrTrigger
    from apscheduler.triggers.cron import CronTrigger

    fields = schedule.split()
    if len(fields) != 5:
        raise ValueError(f"{schedule!r} is not a 5-field cron expression (minute hour day month weekday)")
    minute, hour, dom, month, dow = fields
    common = {"minute": minute, "hour": hour, "month": month, "timezone": tz}
    if not dom.startswith("*") and not dow.startswith("*"):
        return OrTrigger([CronTrigger(day=dom, **common), CronTrigger(day_of_week=_cron_weekdays(dow), **common)])
    return CronTrigger(day=dom, day_of_week=_cron_weekdays(dow), **common)


def _hour_is_wildcard(schedule: str) -> bool:
    return schedule.split()[1] in ("*", "*/1")


def _is_repeated_wall_time(t: datetime) -> bool:
    """True for the second occurrence of a wall-clock time that happens twice (DST fall back)."""
    if t.fold != 1:
        return False
    first = t.replace(fold=0)
    exists = t.astimezone(UTC).astimezone(t.tzinfo).replace(tzinfo=None) == t.replace(tzinfo=None)
    return exists and first.utcoffset() != t.utcoffset()


JITTER_PERIOD_FRACTION = 0.25  # a start is never spread by more than a quarter of the schedule's period


@lru_cache(maxsize=4096)
def schedule_period(schedule: str, tz: str = "UTC") -> float | None:
    """The shortest gap in seconds between two consecutive slots of ``schedule`` (None: fewer than two slots).

    Measured over the slots following a fixed instant, so it is the same on every call.
    """
    trig = trigger_for(schedule, tz)
    at, prev, gap = datetime(2026, 1, 4, tzinfo=UTC), None, None
    for _ in range(64):
        t = trig.get_next_fire_time(prev, at)
        if t is None:
            break
        if prev is not None:
            d = (t - prev).total_seconds()
            gap = d if gap is None else min(gap, d)
        prev, at = t, t + timedelta(seconds=1)
    return gap


def jitter_offset(name: str, jitter: float, schedule: str | None = None, tz: str = "UTC") -> float:
    """Seconds connector ``name`` starts after its slot: stable, uniform in ``[0, window)``.

    ``window`` is ``jitter``, capped at a quarter of the schedule's period when the schedule
    is given: ``* * * * *`` spreads over 15 s, never into the next minute's slot.
    """
    if schedule is not None:
        period = schedule_period(schedule, tz)
        if period is not None:
            jitter = min(jitter, period * JITTER_PERIOD_FRACTION)
    if jitter <= 0:
        return 0.0
    h = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big")
    return round(h / 2**64 * jitter, 3)


def next_slot(schedule: str, tz: str, at: datetime) -> datetime | None:
    """The first slot at or after ``at`` (UTC), or None when the expression names no more."""
    trig = trigger_for(schedule, tz)
    t = at.astimezone(UTC)
    while True:
        n = trig.get_next_fire_time(None, t)
        if n is None:
            return None
        if _is_repeated_wall_time(n) and not _hour_is_wildcard(schedule):
            t = n.astimezone(UTC) + _TICK
            continue
        return n.astimezone(UTC)


def previous_slot(schedule: str, tz: str, at: datetime) -> datetime | None:
    """The last slot at or before ``at`` (UTC), or None when there is none in nine years."""
    at = at.astimezone(UTC)
    lookback = timedelta(minutes=2)
    while lookback <= _MAX_LOOKBACK:
        s = next_slot(schedule, tz, at - lookback)
        if s is not None and s <= at:
            while True:
                n = next_slot(schedule, tz, s + _TICK)
                if n is None or n > at:
                    return s
                s = n
        lookback *= 4
    return None


def slot_period(schedule: str, tz: str, slot: datetime) -> timedelta | None:
    """Time from ``slot`` to the slot after it (a day for ``0 2 * * *``, three days Friday->Monday)."""
    n = next_slot(schedule, tz, slot + _TICK)
    return None if n is None else n - slot


def fire_time(slot: datetime, offset: float) -> datetime:
    return slot.astimezone(UTC) + timedelta(seconds=offset)


def current_slot(schedule: str, tz: str, offset: float, now: datetime) -> datetime | None:
    """The slot whose fire time is the latest one at or before ``now``."""
    return previous_slot(schedule, tz, now - timedelta(seconds=offset))


def is_misfire(fire: datetime, now: datetime, grace: float) -> bool:
    """A start later than ``grace`` seconds after its fire time is a misfire: skipped, not run late."""
    return (now - fire).total_seconds() > grace


def catch_up(schedule: str, tz: str, offset: float, now: datetime, last_success: datetime | None,
             grace: float) -> tuple[datetime, datetime] | None:
    """The slot a daemon that was down should still run, and when; or None.

    Only the latest slot whose fire time has passed counts (coalesced: once,
    not once per missed day), and only while the connector's last success is
    older than the schedule's period: at ``now`` if it already is, else at the
    moment it becomes so, if that comes before the next slot's fire time. A
    slot whose fire time lies more than ``grace`` seconds back is a misfire and
    is skipped.
    """
    slot = current_slot(schedule, tz, offset, now)
    if slot is None:
        return None
    period = slot_period(schedule, tz, slot)
    fire = fire_time(slot, offset)
    run_at = now if last_success is None or period is None else max(now, last_success + period)
    if period is not None and run_at >= fire_time(slot + period, offset):
        return None  # the next slot comes first and does the work
    if is_misfire(fire, run_at, grace):
        return None
    return slot, run_at


def retry_delay(attempt: int, backoff: float) -> float:
    """Seconds before retrying after failed attempt number ``attempt`` (1-based): backoff doubling."""
    return backoff * 2 ** (attempt - 1)


class SlotTrigger(BaseTrigger):
    """An APScheduler trigger firing at each slot of ``schedule`` plus a fixed ``offset`` (seconds).

    Missed fire times are never returned: the next fire time is always the first
    one at or after ``now``, so a late scheduler coalesces to the latest slot.
    """

    __slots__ = ("offset", "schedule", "tz")

    def __init__(self, schedule: str, tz: str, offset: float = 0.0) -> None:
        trigger_for(schedule, tz)  # validate early
        self.schedule, self.tz, self.offset = schedule, tz, offset

    def get_next_fire_time(self, previous_fire_time: datetime | None, now: datetime) -> datetime | None:
        start = now if previous_fire_time is None else max(now, previous_fire_time + _TICK)
        slot = next_slot(self.schedule, self.tz, start - timedelta(seconds=self.offset))
        return None if slot is None else fire_time(slot, self.offset)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SlotTrigger) and (self.schedule, self.tz, self.offset) == (
            other.schedule, other.tz, other.offset)

    def __hash__(self) -> int:
        return hash((self.schedule, self.tz, self.offset))

    def __str__(self) -> str:
        return f"cron[{self.schedule} {self.tz} +{self.offset:g}s]"

    def __repr__(self) -> str:
        return f"<SlotTrigger {self.schedule!r} tz={self.tz!r} offset={self.offset:g}>"


def _daemon_next_runs(engine: Any) -> dict[str, datetime]:
    """Earliest next run per connector among live daemons (heartbeat within two leases)."""
    import sqlalchemy as sa

    found: dict[str, datetime] = {}
    with engine.connect() as conn:
        if not conn.execute(sa.text("SELECT to_regclass('ingest.daemons') IS NOT NULL")).scalar():
            return found
        rows = conn.execute(sa.text(
            "SELECT next_runs FROM ingest.daemons WHERE stopped_at IS NULL "
            "AND heartbeat_at > now() - make_interval(secs => 2 * lease_seconds + 5)")).all()
    for (next_runs,) in rows:
        for name, value in (next_runs or {}).items():
            if value is None:
                continue
            t = datetime.fromisoformat(value)
            if name not in found or t < found[name]:
                found[name] = t
    return found


def planned_by(engine: Any) -> dict[str, list[str]]:
    """Per connector, the live daemons (ids, ``host:pid:…``) that have it in their plan: where it runs."""
    import sqlalchemy as sa

    found: dict[str, list[str]] = {}
    with engine.connect() as conn:
        if not conn.execute(sa.text("SELECT to_regclass('ingest.daemons') IS NOT NULL")).scalar():
            return found
        rows = conn.execute(sa.text(
            "SELECT daemon_id, next_runs FROM ingest.daemons WHERE stopped_at IS NULL "
            "AND heartbeat_at > now() - make_interval(secs => 2 * lease_seconds + 5) ORDER BY daemon_id")).all()
    for daemon_id, next_runs in rows:
        for name in next_runs or {}:
            found.setdefault(name, []).append(daemon_id)
    return found


def next_run_times(loaded: Any, engine: Any = None, now: datetime | None = None) -> dict[str, datetime | None]:
    """Next start of each enabled connector (None when disabled).

    What running daemons wrote to ``ingest.daemons`` wins (it includes their
    pending retries and catch-ups); otherwise the schedule's next slot plus the
    connector's stable jitter.
    """
    now = now or datetime.now(UTC)
    planned: dict[str, datetime] = {}
    if engine is not None:
        try:
            planned = _daemon_next_runs(engine)
        except Exception:  # noqa: BLE001 - status must work without daemon state
            planned = {}
    jitter = loaded.config.daemon.jitter
    result: dict[str, datetime | None] = {}
    for name, rc in loaded.connectors.items():
        if not rc.enabled:
            result[name] = None
        elif name in planned:
            result[name] = planned[name]
        else:
            trig = SlotTrigger(rc.schedule, loaded.config.timezone,
                               jitter_offset(name, jitter, rc.schedule, loaded.config.timezone))
            result[name] = trig.get_next_fire_time(None, now)
    return result


def failure_streaks(engine: Any, tz: str = "UTC", failing_after_days: int | None = None,
                    names: list[str] | None = None) -> dict[str, dict[str, Any]]:
    """Per connector: failed or rejected runs since its last success, and on how many days (in ``tz``).

    A connector is ``failing`` once those days reach ``failing_after_days``.
    Interrupted runs (shutdowns, crashed daemons) neither count nor break a streak.
    """
    import sqlalchemy as sa

    with engine.connect() as conn:
        rows = conn.execute(sa.text("""
            WITH last_ok AS (
                SELECT connector, max(snapshot_id) AS id FROM ingest.snapshots
                WHERE status = 'succeeded' GROUP BY connector)
            SELECT s.connector, count(*) AS failures,
                   count(DISTINCT (coalesce(s.scheduled_for, s.started_at) AT TIME ZONE :tz)::date) AS days
            FROM ingest.snapshots s LEFT JOIN last_ok l ON l.connector = s.connector
            WHERE s.status IN ('failed', 'rejected') AND s.snapshot_id > coalesce(l.id, 0)
            GROUP BY s.connector"""), {"tz": tz}).all()
    found = {r.connector: (int(r.failures), int(r.days)) for r in rows}
    keys = names if names is not None else list(found)
    result = {}
    for name in keys:
        failures, days = found.get(name, (0, 0))
        result[name] = {"consecutive_failures": failures, "failed_days": days,
                        "failing": failing_after_days is not None and days >= failing_after_days}
    return result
