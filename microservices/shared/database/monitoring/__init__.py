"""Query monitoring and database health (public API, the seed's import path)::

    from microservices.shared.database.monitoring import get_database_health

The implementation: :mod:`.monitor` (per-service statistics), :mod:`.health` (health
checks), :mod:`.metrics` and :mod:`.exporter` (Prometheus), :mod:`.instrumentation`
(cursor hooks), :mod:`.fingerprint` (query normalisation), :mod:`.observed_reads`.
"""

from .monitor import (
    MonitorRegistry,
    ServiceMonitor,
    get_database_health,
    get_service_performance,
    monitors,
    record_query_execution,
)

__all__ = [
    "MonitorRegistry",
    "ServiceMonitor",
    "get_database_health",
    "get_service_performance",
    "monitors",
    "record_query_execution",
]
