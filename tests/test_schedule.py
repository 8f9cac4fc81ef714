"""Scheduling decisions as pure functions of a clock: slots across DST, jitter, catch-up, misfires, retries."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from ingest.schedule import (
    SlotTrigger,
    catch_up,
    current_slot,
    fire_time,
    is_misfire,
    jitter_offset,
    next_slot,
    previous_slot,
    retry_delay,
    schedule_period,
    slot_period,
)

BERLIN = "Europe/Berlin"


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def slots(schedule: str, tz: str, start: datetime, end: datetime) -> list[datetime]:
    found, t = [], start
    while (s := next_slot(schedule, tz, t)) is not None and s < end:
        found.append(s)
        t = s + timedelta(microseconds=1)
    return found


def local_dates(times: list[datetime], tz: str) -> list[str]:
    return [t.astimezone(ZoneInfo(tz)).date().isoformat() for t in times]


class TestSlots:
    def test_a_daily_slot_is_at_the_wall_clock_time_in_the_config_timezone(self):
        """0 2 * * * in Berlin is 01:00 UTC in winter and 00:00 UTC in summer."""
        assert next_slot("0 2 * * *", BERLIN, utc(2026, 1, 10)) == utc(2026, 1, 10, 1)
        assert next_slot("0 2 * * *", BERLIN, utc(2026, 7, 10)) == utc(2026, 7, 10, 0)

    def test_spring_forward_runs_a_missing_time_once_right_after_the_change(self):
        """02:30 does not exist on 2026-03-29 in Berlin: that day's slot is 03:30 CEST, once."""
        found = slots("30 2 * * *", BERLIN, utc(2026, 3, 27), utc(2026, 3, 31))
        assert found == [utc(2026, 3, 27, 1, 30), utc(2026, 3, 28, 1, 30), utc(2026, 3, 29, 1, 30),
                         utc(2026, 3, 30, 0, 30)]
        assert found[2].astimezone(ZoneInfo(BERLIN)).strftime("%H:%M %Z") == "03:30 CEST"
        assert local_dates(found, BERLIN) == ["2026-03-27", "2026-03-28", "2026-03-29", "2026-03-30"]

    def test_fall_back_runs_a_repeated_time_once_at_its_first_occurrence(self):
        """02:30 happens twice on 2026-10-25 in Berlin: one slot, at 02:30 CEST (00:30 UTC)."""
        found = slots("30 2 * * *", BERLIN, utc(2026, 10, 23), utc(2026, 10, 27))
        assert found == [utc(2026, 10, 23, 0, 30), utc(2026, 10, 24, 0, 30), utc(2026, 10, 25, 0, 30),
                         utc(2026, 10, 26, 1, 30)]
        assert local_dates(found, BERLIN) == ["2026-10-23", "2026-10-24", "2026-10-25", "2026-10-26"]

    def test_an_hourly_wildcard_fires_in_both_occurrences_of_the_repeated_hour(self):
        """With * in the hour field the repeated hour is real time: every half hour fires."""
        found = slots("*/30 * * * *", BERLIN, utc(2026, 10, 24, 23), utc(2026, 10, 25, 3))
        assert found == [utc(2026, 10, 24, 23) + timedelta(minutes=30 * i) for i in range(8)]

    def test_previous_slot_is_the_last_one_at_or_before_a_time(self):
        assert previous_slot("30 2 * * *", BERLIN, utc(2026, 10, 25, 12)) == utc(2026, 10, 25, 0, 30)
        assert previous_slot("30 2 * * *", BERLIN, utc(2026, 10, 25, 0, 30)) == utc(2026, 10, 25, 0, 30)
        assert previous_slot("30 2 * * *", BERLIN, utc(2026, 10, 25, 0, 29)) == utc(2026, 10, 24, 0, 30)
        assert previous_slot("0 0 1 1 *", "UTC", utc(2026, 10, 25)) == utc(2026, 1, 1)
        assert previous_slot("* * * * *", "UTC", utc(2026, 10, 25, 1, 0, 30)) == utc(2026, 10, 25, 1, 0)

    def test_the_period_is_the_gap_to_the_next_slot(self):
        assert slot_period("0 2 * * *", "UTC", utc(2026, 5, 1, 2)) == timedelta(days=1)
        assert slot_period("0 2 * * 1-5", "UTC", utc(2026, 5, 1, 2)) == timedelta(days=3)  # a Friday
        assert slot_period("30 2 * * *", BERLIN, utc(2026, 3, 29, 1, 30)) == timedelta(hours=23)

    def test_the_trigger_fires_at_slot_plus_offset_and_never_returns_a_missed_time(self):
        trig = SlotTrigger("0 2 * * *", "UTC", 90.0)
        assert trig.get_next_fire_time(None, utc(2026, 5, 1, 2, 1)) == utc(2026, 5, 1, 2, 1, 30)
        assert trig.get_next_fire_time(None, utc(2026, 5, 1, 2, 2)) == utc(2026, 5, 2, 2, 1, 30)
        # a scheduler that slept through three days coalesces: the next fire time is in the future
        assert trig.get_next_fire_time(utc(2026, 5, 1, 2, 1, 30), utc(2026, 5, 4, 12)) == utc(2026, 5, 5, 2, 1, 30)
        # and is strictly after the previous one, even when that equals now
        t = utc(2026, 5, 1, 2, 1, 30)
        assert trig.get_next_fire_time(t, t) == utc(2026, 5, 2, 2, 1, 30)

    @pytest.mark.parametrize(("weekday", "expected"), [
        ("1-5", ["Fri", "Mon", "Tue", "Wed", "Thu", "Fri"]),
        ("0", ["Sun"] * 6),
        ("7", ["Sun"] * 6),
        ("5-7", ["Fri", "Sat", "Sun", "Fri", "Sat", "Sun"]),
        ("*/2", ["Sat", "Sun", "Tue", "Thu", "Sat", "Sun"]),
        ("mon,wed", ["Mon", "Wed", "Mon", "Wed", "Mon", "Wed"]),
    ])
    def test_weekdays_count_from_sunday_as_in_crontab(self, weekday, expected):
        """APScheduler 3 counts 0 as Monday; the config speaks crontab (0 and 7 are Sunday)."""
        found = slots(f"0 2 * * {weekday}", "UTC", utc(2026, 5, 1), utc(2026, 7, 1))[:6]  # 2026-05-01 is a Friday
        assert [s.strftime("%a") for s in found] == expected

    def test_day_of_month_and_weekday_together_match_either(self):
        """Crontab: ``0 2 1 * 1`` is the 1st of the month and every Monday."""
        found = slots("0 2 1 * 1", "UTC", utc(2026, 5, 1), utc(2026, 6, 2))
        assert [s.day for s in found] == [1, 4, 11, 18, 25, 1]

    def test_an_impossible_weekday_is_refused(self):
        from ingest.config import validate_cron

        with pytest.raises(ValueError, match="day of week"):
            validate_cron("0 2 * * 8")
        with pytest.raises(ValueError, match="5-field"):
            validate_cron("0 0 2 * * *")

    def test_current_slot_accounts_for_the_offset(self):
        assert current_slot("0 2 * * *", "UTC", 90.0, utc(2026, 5, 1, 2, 1)) == utc(2026, 4, 30, 2)
        assert current_slot("0 2 * * *", "UTC", 90.0, utc(2026, 5, 1, 2, 1, 30)) == utc(2026, 5, 1, 2)


class TestJitter:
    def test_the_offset_is_stable_for_a_name(self):
        assert jitter_offset("github", 300) == jitter_offset("github", 300)
        assert jitter_offset("github", 300) != jitter_offset("gitlab", 300)

    def test_no_jitter_means_no_offset(self):
        assert jitter_offset("github", 0) == 0.0

    def test_the_offset_never_exceeds_a_quarter_of_the_schedule_period(self):
        """The default 300 s on `* * * * *` would start each minute's run after the next minute began."""
        assert schedule_period("* * * * *", "UTC") == 60
        assert schedule_period("*/5 * * * *", "UTC") == 300
        assert schedule_period("0 2 * * *", "UTC") == 86400
        for schedule, cap in (("* * * * *", 15), ("*/5 * * * *", 75), ("0 * * * *", 300), ("0 2 * * *", 300)):
            offsets = [jitter_offset(f"conn-{i}", 300, schedule, "UTC") for i in range(500)]
            assert all(0 <= o < cap for o in offsets), schedule
            assert max(offsets) > cap * 0.9, "the whole capped window is used"
        assert jitter_offset("github", 300, "0 2 * * *", BERLIN) == jitter_offset("github", 300)

    def test_each_minute_run_fires_within_its_own_minute(self):
        trig = SlotTrigger("* * * * *", "UTC", jitter_offset("acme", 300, "* * * * *", "UTC"))
        now = utc(2026, 5, 1, 12, 0, 30)
        fire = trig.get_next_fire_time(None, now)
        assert utc(2026, 5, 1, 12, 1) <= fire < utc(2026, 5, 1, 12, 1, 15)

    def test_offsets_stay_within_the_window(self):
        offsets = [jitter_offset(f"conn-{i}", 300) for i in range(1000)]
        assert all(0 <= o < 300 for o in offsets)

    def test_a_thousand_connectors_on_one_schedule_are_spread_over_the_window(self):
        """No second gets more than a handful of starts, and every tenth of the window gets its share."""
        offsets = [jitter_offset(f"conn-{i}", 300) for i in range(1000)]
        per_second = Counter(int(o) for o in offsets)
        assert max(per_second.values()) <= 12
        assert len(per_second) >= 240  # of 300 seconds
        deciles = Counter(int(o // 30) for o in offsets)
        assert sorted(deciles) == list(range(10))
        assert all(60 <= n <= 140 for n in deciles.values()), deciles
        trig_times = {SlotTrigger("0 2 * * *", "UTC", o).get_next_fire_time(None, utc(2026, 5, 1)) for o in offsets}
        assert min(trig_times) >= utc(2026, 5, 1, 2) and max(trig_times) < utc(2026, 5, 1, 2, 5)


class TestCatchUp:
    """A daemon that comes back runs the latest missed slot once, and only if the data is older than a period."""

    DAILY = "0 2 * * *"

    def test_after_three_days_down_only_the_latest_slot_runs_once_now(self):
        now = utc(2026, 5, 4, 9)
        assert catch_up(self.DAILY, "UTC", 0, now, utc(2026, 5, 1, 2, 5), 86400) == (utc(2026, 5, 4, 2), now)

    def test_a_connector_that_never_succeeded_runs_now(self):
        now = utc(2026, 5, 4, 9)
        assert catch_up(self.DAILY, "UTC", 0, now, None, 86400) == (utc(2026, 5, 4, 2), now)

    def test_a_recent_success_means_no_catch_up(self):
        """Succeeded at 03:00 (a manual run, or a peer): nothing to do until the next slot."""
        assert catch_up(self.DAILY, "UTC", 0, utc(2026, 5, 4, 9), utc(2026, 5, 4, 3), 86400) is None

    def test_a_success_younger_than_a_period_waits_until_it_is_a_period_old(self):
        """Back at 02:10 after yesterday's run ended at 02:20: run at 02:20, when that data is a day old."""
        plan = catch_up(self.DAILY, "UTC", 0, utc(2026, 5, 4, 2, 10), utc(2026, 5, 3, 2, 20), 86400)
        assert plan == (utc(2026, 5, 4, 2), utc(2026, 5, 4, 2, 20))

    def test_the_jitter_offset_shifts_what_counts_as_missed(self):
        """At 02:01 with a 90 s offset today's slot has not fired yet: the schedule will run it."""
        assert catch_up(self.DAILY, "UTC", 90, utc(2026, 5, 4, 2, 1), utc(2026, 5, 3, 2, 2), 86400) is None
        assert catch_up(self.DAILY, "UTC", 90, utc(2026, 5, 4, 2, 2), utc(2026, 5, 3, 2, 1, 40), 86400) == (
            utc(2026, 5, 4, 2), utc(2026, 5, 4, 2, 2))

    def test_a_slot_missed_by_more_than_the_grace_time_is_a_misfire(self):
        """Weekly on Monday, back on Thursday with a one-day grace: skipped; with a week's grace: run."""
        weekly, now, last = "0 2 * * 1", utc(2026, 5, 7, 9), utc(2026, 4, 27, 2, 5)
        assert catch_up(weekly, "UTC", 0, now, last, 86400) is None
        assert catch_up(weekly, "UTC", 0, now, last, 7 * 86400) == (utc(2026, 5, 4, 2), now)

    def test_every_minute_with_minutes_of_downtime_runs_once(self):
        now = utc(2026, 5, 4, 9, 7, 20)
        assert catch_up("* * * * *", "UTC", 0, now, utc(2026, 5, 4, 9, 0, 3), 3600) == (utc(2026, 5, 4, 9, 7), now)


class TestMisfireAndRetry:
    def test_a_late_start_within_the_grace_time_runs(self):
        assert not is_misfire(utc(2026, 5, 4, 2), utc(2026, 5, 4, 2, 10), 3600)
        assert is_misfire(utc(2026, 5, 4, 2), utc(2026, 5, 4, 3, 0, 1), 3600)

    def test_fire_time_is_slot_plus_offset_in_utc_across_dst(self):
        slot = next_slot("30 2 * * *", BERLIN, utc(2026, 3, 29))
        assert fire_time(slot, 120.5) == utc(2026, 3, 29, 1, 32, 0) + timedelta(milliseconds=500)

    @pytest.mark.parametrize(("attempt", "delay"), [(1, 300), (2, 600), (3, 1200)])
    def test_retry_backoff_doubles(self, attempt, delay):
        assert retry_delay(attempt, 300) == delay
