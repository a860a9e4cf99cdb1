"""Monitoring: per-service query metrics in process, database health from the server.

    from microservices.shared.database.monitoring import (
        record_query_execution, get_database_health, get_service_performance)

* Every statement run through the connection manager is recorded automatically
  (see :mod:`.instrumentation`): duration, query type and fingerprint. Values are
  never recorded. Statements slower than the service's threshold
  (``DATABASE_SLOW_QUERY_LOG_MS``, per service ``EDULINK_DB_<SERVICE>_SLOW_QUERY_LOG_MS``)
  are logged with their fingerprint. ``DATABASE_MONITORING_ENABLED=false`` turns
  it all off.
* :func:`get_service_performance` reads this process's numbers;
  :func:`get_database_health` combines the server's view (every process of every
  service: see :mod:`.health`) with the suspicious patterns seen here.
"""

from __future__ import annotations

import logging
import threading
import time
from bisect import bisect_left
from collections import deque
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from ..config import Settings, admin_conninfo, load_settings
from . import metrics
from .fingerprint import fingerprint

log = logging.getLogger(__name__)
RESERVOIR = 10_000
FINGERPRINT_CACHE = 5_000
RECENT_S, BASELINE_S = 60.0, 900.0


class ServiceMonitor:
    """What this process has seen of one service's statements.

    ``record_statement`` is on every query's path: it is kept to a dict lookup,
    one histogram observation and a few counter updates under a lock.
    """

    def __init__(self, service: str, slow_threshold_s: float) -> None:
        self.service = service
        self.slow_threshold_s = slow_threshold_s
        self._fingerprints: dict[str, tuple[str, str, str]] = {}
        # Histogram buckets per query type, kept here under the counters' lock and
        # exposed by MonitorCollector at scrape time: prometheus_client's own
        # Histogram.observe would take two more locks on every statement.
        self.buckets: dict[str, list[int]] = {}
        self.sums: dict[str, float] = {}
        self._lock = threading.Lock()
        self.calls = 0
        self.errors = 0
        self.slow = 0
        self.total_time = 0.0
        self.started = time.monotonic()
        # (monotonic time, duration, succeeded) of the latest statements.
        self.samples: deque[tuple[float, float, bool]] = deque(maxlen=RESERVOIR)
        self.permission_errors: deque[tuple[float, str]] = deque(maxlen=1000)
        # A monitor exists only with monitoring on: the metrics are registered now.
        counters = metrics.enable()
        metrics.set_histogram_source(histograms)
        self._errors_counter = counters.query_errors
        self._slow_counter = counters.slow_queries.labels(self.service)
        self._permission_counter = counters.permission_errors.labels(self.service)

    def _fingerprint(self, query: Any, conn: Any) -> tuple[str, str, str]:
        text = query if isinstance(query, str) else None
        if text is not None:
            found = self._fingerprints.get(text)
            if found is not None:
                return found
        else:
            try:  # psycopg.sql.Composed: render it (values in it are literals: normalised)
                text = query.as_string(conn)
            except Exception:
                text = str(query)
        assert text is not None
        found = fingerprint(text)
        if len(self._fingerprints) >= FINGERPRINT_CACHE:
            self._fingerprints.clear()
        self._fingerprints[text] = found
        return found

    def record_statement(self, query: Any, duration: float, sqlstate: str | None,
                         conn: Any = None, message: str | None = None) -> None:
        query_hash, query_type, text = self._fingerprint(query, conn)
        self.record(query_hash, query_type, duration, sqlstate is None, sqlstate, text,
                    message)

    def record(self, query_hash: str, query_type: str, duration: float, success: bool,
               sqlstate: str | None = None, text: str | None = None,
               message: str | None = None) -> None:
        index = bisect_left(metrics.BUCKETS, duration)
        now = time.monotonic()
        slow = duration > self.slow_threshold_s
        with self._lock:
            self.calls += 1
            self.total_time += duration
            buckets = self.buckets.get(query_type)
            if buckets is None:
                buckets = self.buckets[query_type] = [0] * (len(metrics.BUCKETS) + 1)
                self.sums[query_type] = 0.0
            buckets[index] += 1
            self.sums[query_type] += duration
            if not success:
                self.errors += 1
            if slow:
                self.slow += 1
        self.samples.append((now, duration, success))
        if not success:
            self._errors_counter.labels(self.service, query_type).inc()
            if sqlstate == "42501":
                self._permission_counter.inc()
                self.permission_errors.append((now, message or "permission denied"))
        if slow:
            self._slow_counter.inc()
            log.warning("slow query in %s: %.1f ms (threshold %.0f ms), fingerprint %s: %s",
                        self.service, duration * 1000, self.slow_threshold_s * 1000,
                        query_hash, (text or "")[:300])

    # -- reading -------------------------------------------------------------------
    def performance(self) -> dict[str, Any]:
        durations = sorted(d for _t, d, _ok in list(self.samples))
        now = time.monotonic()
        window = min(RECENT_S, max(now - self.started, 1e-9))
        recent = sum(1 for t, _d, _ok in list(self.samples) if now - t <= RECENT_S)

        def pct(p: float) -> float:
            if not durations:
                return 0.0
            return durations[min(len(durations) - 1, round(p * (len(durations) - 1)))]

        with self._lock:
            calls, errors, slow, total = self.calls, self.errors, self.slow, self.total_time
        return {
            "service": self.service,
            "calls": calls,
            "avg_execution_time": total / calls if calls else 0.0,
            "p50_execution_time": pct(0.50),
            "p95_execution_time": pct(0.95),
            "p99_execution_time": pct(0.99),
            "errors": errors,
            "slow_queries": slow,
            "queries_per_second": recent / window,
            "slow_query_threshold": self.slow_threshold_s,
        }

    def suspicious(self, permission_threshold: int) -> list[dict[str, str]]:
        """Patterns worth a human's look, from this process's recent statements."""
        now = time.monotonic()
        out = []
        recent_denials = [m for t, m in list(self.permission_errors) if now - t <= 300]
        if len(recent_denials) >= permission_threshold:
            out.append({"service": self.service, "pattern": "permission_errors",
                        "detail": f"{len(recent_denials)} permission errors in 5 min, e.g. "
                                  f"{recent_denials[-1]}"})
        samples = list(self.samples)
        recent = [(d, ok) for t, d, ok in samples if now - t <= RECENT_S]
        base = [(d, ok) for t, d, ok in samples if RECENT_S < now - t <= BASELINE_S]
        if len(recent) >= 20 and len(base) >= 20:
            r_err = sum(1 for _d, ok in recent if not ok) / len(recent)
            b_err = sum(1 for _d, ok in base if not ok) / len(base)
            if r_err > 3 * b_err + 0.05 and sum(1 for _d, ok in recent if not ok) >= 5:
                out.append({"service": self.service, "pattern": "error_rate_jump",
                            "detail": f"error rate {r_err:.0%} in the last minute, "
                                      f"{b_err:.0%} before"})
            r95 = sorted(d for d, _ok in recent)[int(0.95 * (len(recent) - 1))]
            b95 = sorted(d for d, _ok in base)[int(0.95 * (len(base) - 1))]
            if r95 > 3 * b95 and r95 > 0.01:
                out.append({"service": self.service, "pattern": "latency_jump",
                            "detail": f"p95 {r95 * 1000:.1f} ms in the last minute, "
                                      f"{b95 * 1000:.1f} ms before"})
        return out


class MonitorRegistry:
    """The ServiceMonitors of this process, one per service."""

    def __init__(self) -> None:
        self._monitors: dict[str, ServiceMonitor] = {}
        self._lock = threading.Lock()

    def get(self, service: str, settings: Settings | None = None) -> ServiceMonitor:
        """The service's monitor; given *settings*, its slow-query threshold follows them."""
        monitor = self._monitors.get(service)
        if monitor is not None:
            if settings is not None:
                monitor.slow_threshold_s = slow_threshold(settings, service)
            return monitor
        with self._lock:
            monitor = self._monitors.get(service)
            if monitor is None:
                monitor = ServiceMonitor(service, slow_threshold(settings or load_settings(),
                                                                 service))
                self._monitors[service] = monitor
            return monitor

    def all(self) -> list[ServiceMonitor]:
        return list(self._monitors.values())


def slow_threshold(settings: Settings, service: str) -> float:
    svc = settings.topology().service(service)
    raw = settings.service_override(svc, "SLOW_QUERY_LOG_MS")
    try:
        ms = float(raw) if raw is not None else settings.database_slow_query_log_ms
    except ValueError:
        from ..core.errors import ConfigError

        raise ConfigError(f"EDULINK_DB_{svc.name.upper()}_SLOW_QUERY_LOG_MS must be a number "
                          f"of milliseconds, got {raw!r}.") from None
    return ms / 1000.0


monitors = MonitorRegistry()


def histograms() -> Iterator[metrics.HistogramRow]:
    """Each monitor's query-duration histogram per query type, for
    :class:`.metrics.QueryDurationCollector` (read at scrape time)."""
    for monitor in monitors.all():
        with monitor._lock:
            snapshot = {k: (list(v), monitor.sums[k]) for k, v in monitor.buckets.items()}
        for query_type, (counts, total) in snapshot.items():
            yield monitor.service, query_type, counts, total


# -- the seed's API ------------------------------------------------------------------
def record_query_execution(service_name: str, schema_name: str, query_hash: str,
                           execution_time: float, success: bool,
                           query_type: str = "OTHER") -> None:
    """Record a statement run outside the connection manager (seconds)."""
    settings = load_settings()
    if not settings.database_monitoring_enabled:
        return
    service = settings.topology().service(service_name).name
    monitors.get(service, settings).record(query_hash, query_type.upper(), execution_time,
                                           success)


def get_service_performance(service: str) -> dict[str, Any]:
    """calls, avg/p50/p95/p99_execution_time (s), errors, slow_queries,
    queries_per_second: what this process has seen of *service*."""
    settings = load_settings()
    name = settings.topology().service(service).name
    return monitors.get(name, settings).performance()


def get_database_health(settings: Settings | None = None) -> dict[str, Any]:
    """``overall_status`` (healthy | degraded | unhealthy) and every check with its
    value and threshold, plus suspicious patterns naming the service.

    Uses the admin credentials (or any role with pg_monitor) to see every
    service's sessions; never raises for an unreachable database: that is a check.
    """
    from ..connections.direct import connect
    from ..core.errors import EdulinkDBError
    from ..core.tls import unauthenticated_warning
    from .health import collect, evaluate

    settings = settings or load_settings()
    topology = settings.topology()
    tls_warning = None
    try:
        admin = admin_conninfo(settings)
        tls_warning = unauthenticated_warning(admin)
        with connect(admin, purpose="check database health", prefer_primary=True) as conn:
            stats = collect(conn, topology)
        error = None
    except EdulinkDBError as exc:
        stats, error = None, str(exc)
    names = set(topology.service_names())
    suspicious = [s for m in monitors.all() if m.service in names
                  for s in m.suspicious(settings.database_permission_error_threshold)]
    health = evaluate(stats, settings, topology, suspicious, error, tls_warning)
    health["checked_at"] = datetime.now(UTC).isoformat()
    return health
