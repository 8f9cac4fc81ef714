"""The daemon: APScheduler says *when*, PostgreSQL says *who*, :func:`ingest.runner.run` does the work.

Jobs, per enabled connector (APScheduler ids):

    slot:NAME       its schedule (SlotTrigger: cron slot + stable jitter); claims the current slot
    catchup:NAME    once, at start or reload: a slot missed while no daemon ran (see schedule.catch_up)
    retry:NAME      a failed attempt's retry, with backoff, within the slot's period
    takeover:NAME   an expired claim taken over from a dead (or shut down) daemon

A coordinator thread renews this daemon's leases and heartbeat every
``lease/3`` seconds and sweeps for expired claims every ``lease/2`` seconds.
Every decision is one structlog event.
"""

from __future__ import annotations

import functools
import logging
import os
import secrets
import signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import structlog
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.jobstores.base import JobLookupError
from apscheduler.schedulers import SchedulerNotRunningError
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.schedulers.base import STATE_RUNNING
from apscheduler.triggers.date import DateTrigger

from ingest import __version__
from ingest.config import LoadedConfig, ResolvedConnector, load_config
from ingest.daemon._claims import Claims
from ingest.daemon._http import DaemonMetrics, ObservabilityServer
from ingest.db import get_engine, migrate
from ingest.errors import AlreadyRunningError, ConfigError, IngestError
from ingest.redact import redact
from ingest.runner import RunResult, run
from ingest.schedule import (
    SlotTrigger,
    catch_up,
    current_slot,
    fire_time,
    is_misfire,
    jitter_offset,
    next_slot,
    retry_delay,
)

__all__ = ["Daemon", "serve"]

JOB_KINDS = ("slot", "catchup", "retry", "takeover")
_RECHECK_AFTER_ERROR = 30.0  # seconds before a slot that met a database error is looked at again


def _brief(e: BaseException) -> str:
    """One redacted line naming an unexpected error."""
    text = str(e).strip()
    return redact(f"{type(e).__name__}: {text.splitlines()[0]}" if text else type(e).__name__)


def _iso(t: datetime | None) -> str | None:
    return None if t is None else t.astimezone(UTC).isoformat()


@dataclass
class _Active:
    slot: datetime
    attempt: int
    cancel: threading.Event = field(default_factory=threading.Event)
    started: float = field(default_factory=time.monotonic)


def _job(fn: Callable[..., None]) -> Callable[..., None]:
    """A job never raises into APScheduler: a database error is logged and the slot looked at again."""

    @functools.wraps(fn)
    def wrapper(self: Daemon, name: str, *args: Any) -> None:
        try:
            fn(self, name, *args)
        except Exception as e:  # noqa: BLE001 - a job must not raise into APScheduler
            self.log.error("job_failed", job=fn.__name__.lstrip("_"), connector=name,
                           error=_brief(e))
            if not self.stopping.is_set():
                self._recheck_later(name)

    return wrapper


class Daemon:
    """A scheduler of every enabled connector in ``loaded``, coordinated with its peers through ``database_url``.

    ``start()`` and ``stop()`` are all a caller needs; :func:`serve` adds signals
    and config reloads around them. ``daemon.listen``, ``max_concurrent_runs`` and
    ``lease_seconds`` are read once at start; the rest of the config on each use.
    """

    def __init__(self, loaded: LoadedConfig, database_url: str, *, daemon_id: str | None = None,
                 clock: Callable[[], datetime] | None = None, labels: tuple[str, ...] | list[str] = (),
                 listen: str | None = None) -> None:
        self.loaded = loaded
        self.listen = listen if listen is not None else loaded.config.daemon.listen  # --listen wins; "" is off
        # placement: with labels, only the connectors whose runs_on names one of them; without, the unplaced ones
        self.labels = tuple(sorted(set(labels)))
        self.database_url = database_url
        self.settings = loaded.config.daemon
        self.daemon_id = daemon_id or f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self.clock = clock or (lambda: datetime.now(UTC))
        self.log = structlog.get_logger("ingest.daemon").bind(daemon_id=self.daemon_id)
        if self.labels:
            self.log = self.log.bind(labels=list(self.labels))
        self.claims = Claims(database_url, self.daemon_id, self.settings.lease_seconds)
        self.scheduler = BackgroundScheduler(
            timezone=UTC,
            executors={"runs": ThreadPoolExecutor(max_workers=self.settings.max_concurrent_runs),
                       "default": ThreadPoolExecutor(max_workers=1)},
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
        )
        self.stopping = threading.Event()
        self.started_at = time.time()
        self.http: ObservabilityServer | None = None
        self._lock = threading.RLock()
        self._active: dict[str, _Active] = {}
        self._triggers: dict[str, SlotTrigger] = {}
        self._coord_stop = threading.Event()
        self._coord_wake = threading.Event()  # set with _coord_stop, or when the plan changed
        self._plan_changed = False
        self._coord = threading.Thread(target=self._coordinate, name="ingest-coordinator", daemon=True)
        self._last_heartbeat: float | None = None
        self.metrics = DaemonMetrics(self)

    # -- life cycle ---------------------------------------------------------------------
    def start(self) -> None:
        logging.getLogger("apscheduler").setLevel(logging.WARNING)
        migrate(get_engine(self.database_url))
        if self.listen:
            try:
                self.http = ObservabilityServer(self.listen, self)
            except ConfigError:
                raise
            except IngestError as e:  # the port is taken (a second daemon on this host): schedule anyway
                self.log.error("metrics_listen_failed", listen=self.listen, error=str(e),
                               hint="this daemon keeps scheduling without /healthz and /metrics; "
                                    "give each daemon on a host its own `ingest daemon --listen HOST:PORT`")
        self.claims.register(listen=self.http.address if self.http else None, config_path=str(self.loaded.path),
                             version=__version__)
        if self.http:
            self.http.start()
            self.log.info("http_listening", address=self.http.address, port=self.http.port)
        self.scheduler.start()
        self._apply(self.loaded)
        self._heartbeat()
        self._coord.start()
        elsewhere = sorted(n for n, rc in self.loaded.connectors.items() if rc.enabled and not self._placed(rc))
        self.log.info("daemon_started", pid=os.getpid(), host=socket.gethostname(),
                      connectors=len(self._triggers), placed_elsewhere=elsewhere, max_concurrent_runs=self.settings.max_concurrent_runs,
                      lease_seconds=self.settings.lease_seconds, config=str(self.loaded.path))

    def stop(self, hurry: Callable[[], bool] | None = None) -> bool:
        """Stop scheduling, give runs ``grace_period`` to finish, cancel the rest; True when none is left."""
        grace = self.loaded.config.daemon.grace_period
        with self._lock:
            if self.stopping.is_set():
                return not self._active
            self.stopping.set()
            active = sorted(self._active)
        self.log.info("shutdown_started", grace_period_s=grace, active_runs=active)
        try:
            self.scheduler.shutdown(wait=False)
        except SchedulerNotRunningError:
            pass
        deadline = time.monotonic() + grace
        while self.active_runs() and time.monotonic() < deadline and not (hurry and hurry()):
            time.sleep(0.05)
        left = self.active_runs()
        if left:
            self.log.warning("shutdown_cancelling_runs", connectors=sorted(left))
            for a in left.values():
                a.cancel.set()
            deadline = time.monotonic() + max(30.0, grace)
            while self.active_runs() and time.monotonic() < deadline:
                time.sleep(0.05)
        self._coord_stop.set()
        self._coord_wake.set()
        if self._coord.is_alive():
            self._coord.join(timeout=10)
        if self.active_runs():
            self._mark_stuck_interrupted(sorted(self.active_runs()))
        released = 0
        try:
            released = self.claims.release_all()
            self.claims.stopped()
        except Exception as e:  # noqa: BLE001 - the database may be down: shutdown goes on
            self.log.error("shutdown_database_error", error=_brief(e))
        if self.http:
            self.http.stop()
        stuck = sorted(self.active_runs())
        self.log.info("shutdown_finished", released_claims=released, stuck_runs=stuck)
        self.claims.close()
        return not stuck

    def _mark_stuck_interrupted(self, names: list[str]) -> None:
        """Runs that ignored their cancel token: their snapshots become ``interrupted``, never left ``running``."""
        import sqlalchemy as sa

        try:
            with get_engine(self.database_url).begin() as conn:
                conn.execute(sa.text(
                    "UPDATE ingest.snapshots SET status = 'interrupted', finished_at = now(), "
                    "error = coalesce(error, 'the daemon shut down before the run stopped') "
                    "WHERE status = 'running' AND host = :h AND pid = :p AND connector = ANY(:names)"),
                    {"h": socket.gethostname(), "p": os.getpid(), "names": names})
        except Exception as e:  # noqa: BLE001 - the database may be down: shutdown goes on
            self.log.error("shutdown_database_error", error=_brief(e))

    def reload(self, reason: str = "SIGHUP") -> bool:
        """Re-read the config file; an invalid one is reported and the running config kept."""
        path = self.loaded.path
        try:
            new = load_config(path)
        except Exception as e:  # noqa: BLE001 - any reason the file cannot be loaded is reported
            self.log.error("config_reload_failed", path=str(path), reason=reason, error=redact(str(e)),
                           hint="the running configuration is kept")
            self.metrics.reloads.labels("failed").inc()
            return False
        needs_restart = [f for f in ("listen", "max_concurrent_runs", "lease_seconds")
                         if getattr(new.config.daemon, f) != getattr(self.settings, f)]
        changes = self._apply(new)
        self.log.info("config_reloaded", path=str(path), reason=reason, **changes)
        if needs_restart:
            self.log.warning("config_restart_needed", fields=needs_restart,
                             hint="these daemon settings take effect at the next start")
        self.metrics.reloads.labels("ok").inc()
        try:
            self._heartbeat()
        except Exception as e:  # noqa: BLE001 - the coordinator publishes again soon
            self.log.warning("heartbeat_failed", error=_brief(e))
        return True

    # -- state ---------------------------------------------------------------------------
    def active_runs(self) -> dict[str, _Active]:
        with self._lock:
            return dict(self._active)

    def planned(self) -> dict[str, datetime]:
        """Next start per connector: the earliest of its jobs (schedule, catch-up, retry, takeover)."""
        if self.stopping.is_set():
            return {}
        found: dict[str, datetime] = {}
        for job in self._jobs():
            kind, _, name = job.id.partition(":")
            t = getattr(job, "next_run_time", None)
            if kind in JOB_KINDS and t is not None and (name not in found or t < found[name]):
                found[name] = t.astimezone(UTC)
        return found

    def _jobs(self) -> list[Any]:
        return [] if self.stopping.is_set() else self.scheduler.get_jobs()

    def health(self) -> dict[str, Any]:
        scheduler_ok = (self.scheduler.state == STATE_RUNNING and not self.stopping.is_set()
                        and self._coord.is_alive())
        try:
            database_ok = self.claims.ping()
        except Exception:  # noqa: BLE001 - unreachable, whatever the reason
            database_ok = False
        age = None if self._last_heartbeat is None else round(time.monotonic() - self._last_heartbeat, 1)
        return {"ok": scheduler_ok and database_ok, "scheduler": scheduler_ok, "database": database_ok,
                "daemon_id": self.daemon_id, "active_runs": sorted(self.active_runs()),
                "last_heartbeat_age_s": age}

    def _placed(self, rc: ResolvedConnector) -> bool:
        return rc.placed_on(self.labels)

    # -- jobs ------------------------------------------------------------------------------
    def _apply(self, new: LoadedConfig) -> dict[str, list[str]]:
        tz, jitter = new.config.timezone, new.config.daemon.jitter
        want = {n: SlotTrigger(rc.schedule, tz, jitter_offset(n, jitter, rc.schedule, tz))
                for n, rc in new.connectors.items() if rc.enabled and self._placed(rc)}
        with self._lock:
            old, have = self.loaded, dict(self._triggers)
            self.loaded, self._triggers = new, want
        removed = sorted(set(have) - set(want))
        for n in removed:
            for kind in JOB_KINDS:
                self._remove_job(f"{kind}:{n}")
            rc = new.connectors.get(n)
            reason = ("removed from the config" if rc is None else "disabled" if not rc.enabled
                      else f"placed on other daemons (runs_on: {', '.join(rc.runs_on) or 'none'})")
            self.log.info("job_removed", connector=n, reason=reason)
        added, rescheduled = [], []
        successes: dict[str, datetime] | None = None
        for n, trig in want.items():
            if have.get(n) == trig:
                continue
            if n in have:
                self.scheduler.reschedule_job(f"slot:{n}", trigger=trig)
                self._remove_job(f"catchup:{n}")
                rescheduled.append(n)
            else:
                self.scheduler.add_job(self._on_slot, trigger=trig, args=[n], id=f"slot:{n}", name=f"slot:{n}",
                                       executor="runs", replace_existing=True)
                added.append(n)
            job = self.scheduler.get_job(f"slot:{n}")
            self.log.info("job_scheduled", connector=n, schedule=trig.schedule, timezone=tz,
                          jitter_offset_s=trig.offset, next_run=_iso(job.next_run_time if job else None))
            if successes is None:
                successes = self.claims.last_successes()
            self._plan_catch_up(n, trig, successes.get(n))
        if removed:
            self.claims.abandon_mine(removed)
        changed = sorted(n for n in want if n in old.connectors and n not in added and n not in rescheduled
                         and _differs(old.connectors[n], new.connectors[n]))
        return {"added": added, "removed": removed, "rescheduled": rescheduled, "changed": changed}

    def _remove_job(self, job_id: str) -> None:
        try:
            self.scheduler.remove_job(job_id)
        except JobLookupError:
            pass

    def _add_once(self, kind: str, name: str, at: datetime, fn: Callable[..., None], *args: Any) -> None:
        if self.stopping.is_set():
            return
        self.scheduler.add_job(fn, trigger=DateTrigger(run_date=at, timezone=UTC), args=[name, *args],
                               id=f"{kind}:{name}", name=f"{kind}:{name}", executor="runs", replace_existing=True)
        self._publish_soon()

    def _publish_soon(self) -> None:
        """The plan changed: let the coordinator publish it now rather than at the next heartbeat."""
        self._plan_changed = True
        self._coord_wake.set()

    def _plan_catch_up(self, name: str, trig: SlotTrigger, last_success: datetime | None) -> None:
        now = self.clock()
        plan = catch_up(trig.schedule, trig.tz, trig.offset, now, last_success,
                        self.loaded.config.daemon.misfire_grace_time)
        if plan is None:
            return
        slot, at = plan
        self._add_once("catchup", name, at, self._on_catch_up, slot)
        self.log.info("catch_up_scheduled", connector=name, scheduled_for=_iso(slot), run_at=_iso(at),
                      last_success=_iso(last_success))

    def _recheck_later(self, name: str) -> None:
        with self._lock:
            trig = self._triggers.get(name)
        if trig is None:
            return
        at = self.clock() + timedelta(seconds=_RECHECK_AFTER_ERROR)
        self._add_once("catchup", name, at, self._on_recheck)
        self.log.info("slot_recheck_scheduled", connector=name, run_at=_iso(at))

    @_job
    def _on_slot(self, name: str) -> None:
        """The schedule fired: claim the connector's current slot."""
        with self._lock:
            trig = self._triggers.get(name)
        if trig is None or self.stopping.is_set():
            return
        now = self.clock()
        slot = current_slot(trig.schedule, trig.tz, trig.offset, now)
        if slot is None:
            return
        self._remove_job(f"catchup:{name}")  # this slot supersedes any older one still waiting
        fire = fire_time(slot, trig.offset)
        if is_misfire(fire, now, self.loaded.config.daemon.misfire_grace_time):
            self.log.warning("slot_misfired", connector=name, scheduled_for=_iso(slot),
                             late_s=round((now - fire).total_seconds(), 1))
            self.metrics.skipped.labels(name, "misfired").inc()
            return
        self._claim_and_run(name, slot, "schedule")

    @_job
    def _on_catch_up(self, name: str, slot: datetime) -> None:
        """A missed slot: run it if it is still the current one and the last success is still too old."""
        with self._lock:
            trig = self._triggers.get(name)
        if trig is None or self.stopping.is_set():
            return
        last = self.claims.last_success(name)
        plan = catch_up(trig.schedule, trig.tz, trig.offset, self.clock(), last,
                        self.loaded.config.daemon.misfire_grace_time)
        if plan is None or plan[0] != slot:
            self.log.info("catch_up_skipped", connector=name, scheduled_for=_iso(slot), last_success=_iso(last))
            return
        if plan[1] > self.clock() + timedelta(seconds=1):  # a success arrived meanwhile: later, if at all
            self._add_once("catchup", name, plan[1], self._on_catch_up, slot)
            return
        self._claim_and_run(name, slot, "catch_up")

    @_job
    def _on_recheck(self, name: str) -> None:
        """After a database error at fire time: run the current slot now if nobody did."""
        with self._lock:
            trig = self._triggers.get(name)
        if trig is None or self.stopping.is_set():
            return
        plan = catch_up(trig.schedule, trig.tz, trig.offset, self.clock(), self.claims.last_success(name),
                        self.loaded.config.daemon.misfire_grace_time)
        if plan is not None:
            self._add_once("catchup", name, plan[1], self._on_catch_up, plan[0])

    @_job
    def _on_retry(self, name: str, slot: datetime, attempt: int) -> None:
        if self.stopping.is_set():
            return
        self._attempt(name, slot, attempt)

    @_job
    def _on_takeover(self, name: str, slot: datetime, attempt: int) -> None:
        if self.stopping.is_set():
            self.claims.release(name, slot)
            return
        self._attempt(name, slot, attempt)

    def _claim_and_run(self, name: str, slot: datetime, via: str) -> None:
        if self.stopping.is_set():
            return
        if not self.claims.claim(name, slot):
            self.log.info("slot_skipped_already_claimed", connector=name, scheduled_for=_iso(slot), via=via)
            self.metrics.skipped.labels(name, "already_claimed").inc()
            return
        self.log.info("slot_claimed", connector=name, scheduled_for=_iso(slot), via=via)
        self.metrics.claimed.labels(name).inc()
        self._attempt(name, slot, 1)

    def _attempt(self, name: str, slot: datetime, attempt: int) -> None:
        """Run the connector for a slot this daemon holds; then retry, finish or release the claim."""
        with self._lock:
            loaded = self.loaded
            rc = loaded.connectors.get(name)
            stopping, busy = self.stopping.is_set(), name in self._active
            if rc is not None and rc.enabled and self._placed(rc) and not stopping and not busy:
                active = self._active[name] = _Active(slot, attempt)
        if rc is not None and rc.enabled and not self._placed(rc):
            self.claims.release(name, slot)  # moved to other daemons by a reload: one of them takes it over
            self.log.info("slot_released", connector=name, scheduled_for=_iso(slot),
                          reason="the connector is placed on other daemons now")
            return
        if rc is None or not rc.enabled:
            self.claims.finish(name, slot, "abandoned", None)
            self.log.info("slot_abandoned", connector=name, scheduled_for=_iso(slot),
                          reason="the connector is no longer enabled")
            return
        if stopping or busy:
            self.claims.release(name, slot)
            if busy:
                self.log.info("run_skipped_already_running", connector=name, scheduled_for=_iso(slot),
                              hint="released; it runs when the current run ends")
                self.metrics.skipped.labels(name, "already_running").inc()
            return
        try:
            if not self.claims.start_attempt(name, slot, attempt):
                self.log.warning("slot_lost", connector=name, scheduled_for=_iso(slot),
                                 hint="another daemon took the claim over")
                return
            self.log.info("run_started", connector=name, scheduled_for=_iso(slot), attempt=attempt,
                          timeout_s=rc.timeout)
            try:
                result = run(loaded, name, database_url=self.database_url, trigger="schedule", scheduled_for=slot,
                             cancel=active.cancel, timeout=rc.timeout,
                             on_snapshot=lambda sid: self.claims.set_snapshot(name, slot, sid))
            except AlreadyRunningError:
                self.claims.release(name, slot)
                self.log.info("run_skipped_already_running", connector=name, scheduled_for=_iso(slot),
                              hint="another process holds the run lock; released")
                self.metrics.skipped.labels(name, "already_running").inc()
                return
            except Exception as e:  # the runner records failures itself; this is a database outage or a bug
                self.log.exception("run_crashed", connector=name, scheduled_for=_iso(slot))
                result = RunResult(name, None, "failed", error=redact(f"{type(e).__name__}: {e}"))
        finally:
            with self._lock:
                if self._active.get(name) is active:
                    del self._active[name]
        self._after(name, rc, slot, attempt, result)

    def _after(self, name: str, rc: ResolvedConnector, slot: datetime, attempt: int, result: RunResult) -> None:
        self.metrics.observe(name, result)
        self.log.info("run_finished", connector=name, scheduled_for=_iso(slot), attempt=attempt,
                      status=result.status, snapshot_id=result.snapshot_id, duration_s=round(result.duration, 3),
                      error=result.error)
        if result.status == "interrupted":
            self.claims.release(name, slot, result.snapshot_id)
            return
        if result.status == "failed":
            policy = self.loaded.config.daemon
            if attempt <= policy.retries:
                delay = retry_delay(attempt, policy.retry_backoff)
                at = self.clock() + timedelta(seconds=delay)
                nxt = next_slot(rc.schedule, self.loaded.config.timezone, slot + timedelta(microseconds=1))
                offset = jitter_offset(name, policy.jitter, rc.schedule, self.loaded.config.timezone)
                if nxt is None or at < fire_time(nxt, offset):
                    self.claims.wait_retry(name, slot, at, result.snapshot_id)
                    self._add_once("retry", name, at, self._on_retry, slot, attempt + 1)
                    self.metrics.retries.labels(name).inc()
                    self.log.info("run_retry_scheduled", connector=name, scheduled_for=_iso(slot),
                                  attempt=attempt + 1, run_at=_iso(at), delay_s=delay)
                    return
                self.log.info("retry_skipped", connector=name, scheduled_for=_iso(slot),
                              reason="the next slot comes first")
            else:
                self.log.warning("retries_exhausted", connector=name, scheduled_for=_iso(slot), attempts=attempt)
        self.claims.finish(name, slot, result.status, result.snapshot_id)
        self._publish_soon()

    # -- coordination -------------------------------------------------------------------
    def _heartbeat(self) -> None:
        """Publish the plan and renew the leases of the slots this daemon is working on.

        Only connectors with a run in progress or a retry / takeover pending keep
        their lease: a claim this daemon holds but no longer works on (a job that
        met a database error) lapses, and the sweep picks it up again.
        """
        planned = {n: t.isoformat() for n, t in self.planned().items()}
        working = set(self.active_runs())
        working.update(job.id.partition(":")[2] for job in self._jobs() if job.id.startswith(("retry:", "takeover:")))
        self.claims.heartbeat(planned, sorted(working))
        self._last_heartbeat = time.monotonic()

    def _coordinate(self) -> None:
        lease = self.settings.lease_seconds
        beat_every, sweep_every = max(0.2, min(lease / 3, 10.0)), max(0.2, lease / 2)
        next_beat = time.monotonic() + beat_every
        next_sweep = time.monotonic()  # at once: claims released by a daemon that just stopped
        while not self._coord_stop.is_set():
            now = time.monotonic()
            if now >= next_beat or self._plan_changed:
                self._plan_changed = False
                try:
                    self._heartbeat()
                except Exception as e:  # noqa: BLE001 - logged; the next beat retries
                    self.log.error("heartbeat_failed", error=_brief(e))
                next_beat = now + beat_every
            if now >= next_sweep:
                if not self.stopping.is_set():
                    try:
                        self._sweep()
                    except Exception as e:  # noqa: BLE001 - logged; the next sweep retries
                        self.log.error("sweep_failed", error=_brief(e))
                next_sweep = now + sweep_every
            self._coord_wake.wait(max(0.05, min(next_beat, next_sweep) - time.monotonic()))
            self._coord_wake.clear()

    def _sweep(self) -> None:
        """Take over claims whose lease has passed while their slot is still current."""
        with self._lock:
            free = self.settings.max_concurrent_runs - len(self._active)
            names = [n for n in self._triggers if n not in self._active]
        if free <= 0 or not names:
            return
        pending = {job.id for job in self._jobs()}
        for row in self.claims.expired(names):
            if free <= 0 or self.stopping.is_set():
                return
            name, slot = row.connector, row.scheduled_for
            with self._lock:
                trig = self._triggers.get(name)
                busy = name in self._active
            if trig is None or busy or f"takeover:{name}" in pending or f"retry:{name}" in pending:
                continue
            now = self.clock()
            current = current_slot(trig.schedule, trig.tz, trig.offset, now)
            if current is None or slot < current:
                if self.claims.abandon(name, slot):
                    self.log.info("slot_abandoned", connector=name, scheduled_for=_iso(slot),
                                  previous_daemon=row.daemon_id, reason="a newer slot has come")
                continue
            if slot > current or not self.claims.lock_free(name):
                continue
            done = self.claims.slot_outcome(name, slot)
            if done is not None:
                self.claims.finish(name, slot, done[1], done[0])
                continue
            if not self.claims.take_over(row):
                continue
            event = "slot_resumed" if row.daemon_id == self.daemon_id else "lease_expired_takeover"
            self.log.warning(event, connector=name, scheduled_for=_iso(slot), previous_daemon=row.daemon_id,
                             previous_status=row.status, expired_for_s=round(float(row.expired_for), 1),
                             attempts=row.attempts)
            self.metrics.takeovers.labels(name).inc()
            self._add_once("takeover", name, now, self._on_takeover, slot, row.attempts + 1)
            free -= 1


def _differs(a: ResolvedConnector, b: ResolvedConnector) -> bool:
    return (a.type, a.settings, a.auth, a.timeout, a.max_deletion_ratio) != (
        b.type, b.settings, b.auth, b.timeout, b.max_deletion_ratio)


def _file_state(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def serve(config_path: str | None, loaded: LoadedConfig, database_url: str, watch_config: bool = False,
          labels: tuple[str, ...] | list[str] = (), listen: str | None = None) -> int:
    """``ingest daemon``: run until SIGTERM / SIGINT (exit 0); SIGHUP or a changed file reloads the config."""
    daemon = Daemon(loaded, database_url, labels=labels, listen=listen)
    path = loaded.path
    wake = threading.Event()
    received = {"term": 0, "hup": 0}

    def on_term(signum: int, frame: Any) -> None:
        received["term"] += 1
        wake.set()

    def on_hup(signum: int, frame: Any) -> None:
        received["hup"] += 1
        wake.set()

    previous = {s: signal.signal(s, h) for s, h in
                ((signal.SIGTERM, on_term), (signal.SIGINT, on_term), (signal.SIGHUP, on_hup))}
    try:
        try:
            daemon.start()
        except BaseException:
            daemon.stop()
            raise
        seen, handled = _file_state(path), 0
        while not received["term"]:
            wake.wait(1.0)
            wake.clear()
            if received["term"]:
                break
            if received["hup"] != handled:
                handled = received["hup"]
                seen = _file_state(path)
                daemon.reload("SIGHUP")
            elif watch_config and (state := _file_state(path)) != seen:
                seen = state
                daemon.reload("file changed")
        clean = daemon.stop(hurry=lambda: received["term"] > 1)
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    if not clean:  # a run ignored its cancel event: do not hang on its thread at exit
        import sys

        sys.stderr.flush()
        os._exit(1)
    return 0
