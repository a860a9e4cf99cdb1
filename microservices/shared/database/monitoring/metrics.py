"""Prometheus metrics of edulink-db: names, labels and exposition.

One prefix (``edulink_db_``), base units (seconds, bytes), ``_total`` on counters,
a histogram for query durations (it aggregates across a service's processes), and
only low-cardinality labels: ``service`` and ``query_type``, never query text or ids.

Nothing is registered at import: :func:`enable` registers the metrics in
prometheus_client's default registry, once, when monitoring is turned on (the first
pool opened with ``DATABASE_MONITORING_ENABLED``, the first per-service monitor, or
serving the metrics).  Mount them in a service process:

    from microservices.shared.database.monitoring.metrics import (
        metrics_wsgi_app, start_metrics_server)
    start_metrics_server(9187)                 # or mount metrics_wsgi_app() / metrics_asgi_app()

``edulink-db metrics --port N`` serves them plus the database-side gauges of
:mod:`.health`, read at every scrape.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter
from prometheus_client import make_asgi_app as _make_asgi_app
from prometheus_client import make_wsgi_app as _make_wsgi_app
from prometheus_client import start_http_server as _start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

PREFIX = "edulink_db"
# Loopback round trips are ~40 us; the buckets resolve from there up to slow reports.
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
           10.0, 30.0)

# The query-duration histogram is kept by monitoring.ServiceMonitor and exposed by its
# collector (one lock per statement instead of prometheus_client's three).
QUERY_DURATION_NAME = f"{PREFIX}_query_duration_seconds"


@dataclass(frozen=True)
class Counters:
    """The counters monitoring increments (prometheus_client keeps their values)."""

    query_errors: Counter
    slow_queries: Counter
    permission_errors: Counter


_lock = threading.Lock()
_enabled: Counters | None = None


__all__ = ["BUCKETS", "PREFIX", "QUERY_DURATION_NAME", "Collector", "Counters",
           "HistogramMetricFamily", "HistogramRow", "Metric", "PoolCollector",
           "QueryDurationCollector", "ReplicaReadCollector", "enable", "metrics_asgi_app",
           "metrics_wsgi_app", "register", "set_histogram_source", "start_metrics_server"]


def enable() -> Counters:
    """Register edulink-db's metrics in the default registry, the first time only, and
    return the counters: the query-error, slow-query and permission-error counters, the
    query-duration histograms of the per-service monitors, and the pool and replica-read
    gauges of this process's connection managers (read at scrape time)."""
    global _enabled
    if _enabled is not None:
        return _enabled
    with _lock:
        if _enabled is None:
            # Imported here: monitor imports this module, and the connection layer is
            # only needed once something is exposed.
            from ..connections.manager import open_pool_stats, replica_reads

            counters = Counters(
                query_errors=Counter(f"{PREFIX}_query_errors_total",
                                     "Statements that raised an error.",
                                     ["service", "query_type"]),
                slow_queries=Counter(f"{PREFIX}_slow_queries_total",
                                     "Statements slower than the service's slow-query "
                                     "threshold.", ["service"]),
                permission_errors=Counter(f"{PREFIX}_permission_errors_total",
                                          "Statements refused for lack of privilege "
                                          "(SQLSTATE 42501).", ["service"]))
            register(QueryDurationCollector())
            register(PoolCollector(open_pool_stats))
            register(ReplicaReadCollector(replica_reads))
            _enabled = counters
    return _enabled


def register(collector: Collector) -> None:
    """Register *collector* in the default registry (where the metrics above live)."""
    REGISTRY.register(collector)


class PoolCollector(Collector):
    """Pool gauges of the connection managers in this process, read at scrape time."""

    def __init__(self, pools: Callable[[], Iterable[dict[str, Any]]]) -> None:
        self._pools = pools

    def collect(self) -> Iterable[Metric]:
        conns = GaugeMetricFamily(f"{PREFIX}_pool_connections",
                                  "Connections of a service's pool by state.",
                                  labels=["service", "state"])
        waiting = GaugeMetricFamily(f"{PREFIX}_pool_waiting_requests",
                                    "Requests waiting for a connection.", labels=["service"])
        for stats in self._pools():
            svc = str(stats["service"])
            conns.add_metric([svc, "checked_out"], float(stats["checked_out"]))
            conns.add_metric([svc, "available"], float(stats["available"]))
            conns.add_metric([svc, "size"], float(stats["size"]))
            waiting.add_metric([svc], float(stats["waiting"]))
        yield conns
        yield waiting


class ReplicaReadCollector(Collector):
    """``replica=True`` checkouts of this process by service and by where they were
    served (``replica`` or ``primary``, the fallback), read at scrape time."""

    def __init__(self, counts: Callable[[], Iterable[tuple[str, str, int]]]) -> None:
        self._counts = counts

    def collect(self) -> Iterable[Metric]:
        reads = CounterMetricFamily(f"{PREFIX}_replica_reads",
                                    "Checkouts with replica=True by where they were served.",
                                    labels=["service", "served_by"])
        for service, served_by, count in self._counts():
            reads.add_metric([service, served_by], float(count))
        yield reads


# (service, query_type, count per bucket of BUCKETS plus +Inf, sum of durations)
HistogramRow = tuple[str, str, list[int], float]
_histograms: Callable[[], Iterable[HistogramRow]] = tuple


def set_histogram_source(source: Callable[[], Iterable[HistogramRow]]) -> None:
    """Where :class:`QueryDurationCollector` reads the histograms: the per-service
    monitors set it when the first one is made (before that there are none)."""
    global _histograms
    _histograms = source


class QueryDurationCollector(Collector):
    """Exposes the monitors' query-duration histograms (edulink_db_query_duration_seconds)."""

    def collect(self) -> Iterable[Metric]:
        family = HistogramMetricFamily(
            QUERY_DURATION_NAME, "Duration of statements run through the connection manager.",
            labels=["service", "query_type"])
        for service, query_type, counts, total in _histograms():
            cumulative, running = [], 0
            for bound, count in zip(BUCKETS, counts, strict=False):
                running += count
                cumulative.append((repr(float(bound)), running))
            cumulative.append(("+Inf", running + counts[-1]))
            family.add_metric([service, query_type], cumulative, sum_value=total)
        yield family


def metrics_wsgi_app(registry: CollectorRegistry = REGISTRY) -> Any:
    """A WSGI app serving the metrics (mount it at /metrics)."""
    enable()
    return _make_wsgi_app(registry)


def metrics_asgi_app(registry: CollectorRegistry = REGISTRY) -> Any:
    """An ASGI app serving the metrics."""
    enable()
    return _make_asgi_app(registry)


def start_metrics_server(port: int, addr: str = "0.0.0.0",  # noqa: S104 - a scrape target
                         registry: CollectorRegistry = REGISTRY) -> Any:
    """Serve the metrics on *port* from a background thread."""
    enable()
    return _start_http_server(port, addr=addr, registry=registry)
