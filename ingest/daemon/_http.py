"""``/healthz`` and ``/metrics`` (Prometheus text format) on ``daemon.listen``.

Per-connector gauges are read from the database at scrape time, so every
daemon sharing a database reports the same truth whichever of them ran the
connector; counters (``ingest_daemon_*``) count what this daemon did.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

import structlog
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily

from ingest.errors import ConfigError, IngestError
from ingest.schedule import failure_streaks

if TYPE_CHECKING:
    from ingest.daemon._service import Daemon
    from ingest.runner import RunResult

__all__ = ["DaemonMetrics", "ObservabilityServer", "parse_listen"]

log = structlog.get_logger("ingest.daemon")
STATUSES = ("succeeded", "failed", "rejected", "interrupted")
KINDS = ("fetched", "added", "modified", "removed", "unchanged", "invalid")


def parse_listen(listen: str) -> tuple[str, int]:
    """``"127.0.0.1:9464"``, ``"[::1]:9464"`` or ``":9464"`` (all interfaces) -> (host, port)."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"daemon.listen: {listen!r} is not host:port (e.g. 127.0.0.1:9464)")
    return host.strip("[]") or "0.0.0.0", int(port)


class _SnapshotCollector:
    """Gauges from ``ingest.snapshots``: the truth shared by every daemon."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon

    def describe(self) -> list:
        return []  # collected on scrape only (no database query at registration)

    def collect(self):
        d = self.daemon
        loaded = d.loaded
        names = list(loaded.connectors)
        up = GaugeMetricFamily("ingest_database_up", "1 when the database answered this scrape.")
        try:
            runs = d.claims.last_runs()
            successes = d.claims.last_successes()
            streaks = failure_streaks(d.claims.engine, loaded.config.timezone,
                                      loaded.config.daemon.failing_after_days, names)
        except Exception as e:  # noqa: BLE001 - a scrape must not fail because the database did
            log.warning("metrics_database_error", error=str(e).splitlines()[0] if str(e) else type(e).__name__)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up

        def g(name: str, doc: str, labels: tuple[str, ...] = ("connector",)) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, doc, labels=list(labels))

        enabled = g("ingest_connector_enabled", "1 when the connector is enabled in the config.")
        last_ok = g("ingest_connector_last_success_timestamp_seconds", "End of the last successful snapshot.")
        last_end = g("ingest_connector_last_run_timestamp_seconds", "End of the last finished snapshot.")
        duration = g("ingest_connector_last_run_duration_seconds", "Duration of the last finished snapshot.")
        status = g("ingest_connector_last_run_status", "1 for the status of the last finished snapshot.",
                   ("connector", "status"))
        records = g("ingest_connector_last_run_records", "Records of the last finished snapshot, per entity.",
                    ("connector", "entity", "kind"))
        http = {k: g(f"ingest_connector_last_run_http_{k}", doc) for k, doc in (
            ("requests", "HTTP requests made by the last finished snapshot."),
            ("retries", "HTTP requests retried by the last finished snapshot."),
            ("throttled", "HTTP 429 (rate-limited) answers in the last finished snapshot."))}
        failures = g("ingest_connector_consecutive_failures", "Failed or rejected runs since the last success.")
        days = g("ingest_connector_failed_days", "Days with failed runs since the last success.")
        failing = g("ingest_connector_failing", "1 when failed days reached daemon.failing_after_days.")
        next_run = g("ingest_connector_next_run_timestamp_seconds", "Next start planned by this daemon.")
        planned = d.planned()
        for name in names:
            rc = loaded.connectors[name]
            enabled.add_metric([name], 1 if rc.enabled else 0)
            if name in successes and successes[name] is not None:
                last_ok.add_metric([name], successes[name].timestamp())
            run = runs.get(name)
            if run is not None:
                stats = run.stats or {}
                if run.finished_at is not None:
                    last_end.add_metric([name], run.finished_at.timestamp())
                dur = stats.get("duration_s")
                if dur is None and run.finished_at is not None:
                    dur = (run.finished_at - run.started_at).total_seconds()
                if dur is not None:
                    duration.add_metric([name], float(dur))
                for st in STATUSES:
                    status.add_metric([name, st], 1 if run.status == st else 0)
                for entity, counts in stats.items():
                    if isinstance(counts, dict) and entity != "http":
                        for kind in KINDS:
                            if kind in counts:
                                records.add_metric([name, entity, kind], float(counts[kind]))
                for k, fam in http.items():
                    fam.add_metric([name], float((stats.get("http") or {}).get(k, 0)))
            s = streaks[name]
            failures.add_metric([name], s["consecutive_failures"])
            days.add_metric([name], s["failed_days"])
            failing.add_metric([name], 1 if s["failing"] else 0)
            if name in planned:
                next_run.add_metric([name], planned[name].timestamp())
        yield from (enabled, last_ok, last_end, duration, status, records, *http.values(), failures, days, failing,
                    next_run)


class DaemonMetrics:
    """A dedicated registry: this daemon's counters plus the shared snapshot gauges."""

    def __init__(self, daemon: Daemon) -> None:
        self.registry = r = CollectorRegistry()
        self.runs = Counter("ingest_daemon_runs", "Runs this daemon finished, by status.",
                            ["connector", "status"], registry=r)
        self.retries = Counter("ingest_daemon_run_retries", "Failed runs this daemon scheduled a retry of.",
                               ["connector"], registry=r)
        self.http = {k: Counter(f"ingest_daemon_http_{k}", f"HTTP {k} of this daemon's runs.", ["connector"],
                                registry=r) for k in ("requests", "retries", "throttled")}
        self.claimed = Counter("ingest_daemon_slots_claimed", "Slots this daemon claimed.", ["connector"], registry=r)
        self.skipped = Counter("ingest_daemon_slots_skipped", "Slots this daemon did not run, by reason.",
                               ["connector", "reason"], registry=r)
        self.takeovers = Counter("ingest_daemon_lease_takeovers", "Expired claims this daemon took over.",
                                 ["connector"], registry=r)
        self.reloads = Counter("ingest_daemon_config_reloads", "Config reloads, by result.", ["result"], registry=r)
        Gauge("ingest_daemon_active_runs", "Runs in progress in this daemon.", registry=r).set_function(
            lambda: len(daemon.active_runs()))
        Gauge("ingest_daemon_start_time_seconds", "When this daemon started.", registry=r).set(daemon.started_at)
        r.register(_SnapshotCollector(daemon))

    def observe(self, connector: str, result: RunResult) -> None:
        self.runs.labels(connector, result.status).inc()
        for k, c in self.http.items():
            c.labels(connector).inc(int((result.stats.get("http") or {}).get(k, 0)))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class ObservabilityServer:
    """A threaded HTTP server on a background thread; ``port`` is the bound one (``:0`` picks a free port)."""

    def __init__(self, listen: str, daemon: Daemon) -> None:
        host, port = parse_listen(listen)
        daemon_ref = daemon

        class Handler(BaseHTTPRequestHandler):
            server_version = "ingest-daemon"

            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/healthz":
                    health = daemon_ref.health()
                    self._send(200 if health["ok"] else 503, "application/json",
                               json.dumps(health).encode())
                elif path == "/metrics":
                    self._send(200, CONTENT_TYPE_LATEST, daemon_ref.metrics.render())
                else:
                    self._send(404, "application/json", b'{"error": "not found; try /healthz or /metrics"}')

            def _send(self, code: int, ctype: str, body: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:  # access logs stay out of the event stream
                pass

        try:
            self._server = ThreadingHTTPServer((host, port), Handler)
        except OSError as e:
            raise IngestError(f"daemon.listen: cannot listen on {listen}: {e.strerror}") from None
        self._server.daemon_threads = True
        self.host, self.port = self._server.server_address[:2]
        self._thread = threading.Thread(target=self._server.serve_forever, name="ingest-http", daemon=True)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        if self._thread.is_alive():
            self._server.shutdown()
        self._server.server_close()
