"""The database-side metrics ``edulink-db metrics`` serves, read at every scrape."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ..config import Settings, admin_conninfo
from ..connections.direct import connect
from ..core.errors import EdulinkDBError
from .health import collect, evaluate
from .metrics import PREFIX

_STATUS_VALUE = {"healthy": 0, "degraded": 1, "unhealthy": 2}


class DatabaseCollector(Collector):
    """Per-service (= per-role) gauges and counters from the server's statistics."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def collect(self) -> Iterable[Metric]:
        yield from self._backup_metrics()  # from the backup folder: even if the db is down
        topology = self.settings.topology()
        up = GaugeMetricFamily(f"{PREFIX}_up", "1 if the database answered this scrape.")
        try:
            with connect(admin_conninfo(self.settings), purpose="collect metrics",
                         prefer_primary=True) as conn:
                stats = collect(conn, topology, self.settings)
        except EdulinkDBError:
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        health = evaluate(stats, self.settings, topology, [])
        status = GaugeMetricFamily(f"{PREFIX}_health_status",
                                   "0 healthy, 1 degraded, 2 unhealthy.")
        status.add_metric([], _STATUS_VALUE[health["overall_status"]])
        yield status
        conns = GaugeMetricFamily(f"{PREFIX}_connections", "Sessions per service and state.",
                                  labels=["service", "state"])
        long_running = GaugeMetricFamily(f"{PREFIX}_long_running_queries",
                                         "Queries running longer than the threshold.",
                                         labels=["service"])
        blocked = GaugeMetricFamily(f"{PREFIX}_blocked_queries", "Queries waiting for a lock.",
                                    labels=["service"])
        size = GaugeMetricFamily(f"{PREFIX}_schema_size_bytes", "Tables, indexes and TOAST.",
                                 labels=["service"])
        dead = GaugeMetricFamily(f"{PREFIX}_dead_tuples", "Dead tuples in the schema.",
                                 labels=["service"])
        calls = CounterMetricFamily(f"{PREFIX}_statement_calls",
                                    "Statements executed (pg_stat_statements).",
                                    labels=["service"])
        seconds = CounterMetricFamily(f"{PREFIX}_statement_seconds",
                                      "Time spent executing statements (pg_stat_statements).",
                                      labels=["service"])
        for svc in topology.services:
            role = stats.roles.get(svc.runtime_role, {})
            for state in ("active", "idle", "idle_in_transaction", "other"):
                conns.add_metric([svc.name, state], role.get(state, 0))
            long_running.add_metric([svc.name], role.get("long_running", 0))
            blocked.add_metric([svc.name], role.get("blocked", 0))
            schema = stats.schemas.get(svc.schema, {})
            size.add_metric([svc.name], schema.get("size_bytes", 0))
            dead.add_metric([svc.name], schema.get("dead_tuples", 0))
            st = (stats.statements or {}).get(svc.runtime_role)
            if st is not None:
                calls.add_metric([svc.name], st["calls"])
                seconds.add_metric([svc.name], st["total_time_s"])
        yield from (conns, long_running, blocked, size, dead, calls, seconds)
        cache = GaugeMetricFamily(f"{PREFIX}_cache_hit_ratio", "Buffer cache hit ratio.")
        cache.add_metric([], stats.cache_hit_ratio or 0.0)
        xid = GaugeMetricFamily(f"{PREFIX}_transaction_id_age", "age(datfrozenxid).")
        xid.add_metric([], stats.xid_age)
        used = GaugeMetricFamily(f"{PREFIX}_connections_used_ratio",
                                 "Client sessions / max_connections.")
        used.add_metric([], stats.connections / max(stats.max_connections, 1))
        yield from (cache, xid, used)
        yield from _replication_metrics(stats.replication)

    def _backup_metrics(self) -> Iterable[Metric]:
        """Per schema: whether a verified backup covers it where it lives now, and the
        age of that backup; and the last drill's result. A moved schema that no backup
        taken at its new server covers has covered 0 and, as its age, the time since it
        moved (its data has been in no backup since then)."""
        from datetime import datetime

        import psycopg

        from ..backup.schedule import current_where, newest_verified, read_state, store_for
        from ..backup.store import now_utc

        try:
            store = store_for(self.settings, create_key=False)
            backups = store.backups() if store.has_key else []
            schemas = self.settings.topology().schemas
        except EdulinkDBError:
            return
        try:
            where = current_where(self.settings, store.root)
        except (EdulinkDBError, psycopg.Error):
            where = None
        now = now_utc()
        age = GaugeMetricFamily(f"{PREFIX}_backup_age_seconds",
                                "Age of the newest verified backup covering the schema where"
                                " it lives now (moved and uncovered: seconds since the move).",
                                labels=["schema"])
        covered = GaugeMetricFamily(f"{PREFIX}_backup_covered",
                                    "1 if a verified backup covers the schema where it lives"
                                    " now, else 0.", labels=["schema"])
        for schema in schemas:
            newest = newest_verified(backups, schema, where)
            covered.add_metric([schema], 0.0 if newest is None else 1.0)
            placement = where.placed.get(schema) if where is not None else None
            if newest is not None:
                age.add_metric([schema], (now - newest.finished).total_seconds())
            elif placement is not None and placement.moved_at is not None:
                age.add_metric([schema], (now - placement.moved_at).total_seconds())
        yield from (age, covered)
        drill = read_state(store.root).get("last_drill")
        if isinstance(drill, dict) and drill.get("at"):
            ok = GaugeMetricFamily(f"{PREFIX}_backup_drill_success",
                                   "1 if the last restore drill succeeded.")
            ok.add_metric([], 1.0 if drill.get("ok") else 0.0)
            at = GaugeMetricFamily(f"{PREFIX}_backup_drill_timestamp_seconds",
                                   "When the last restore drill ran (Unix time).")
            at.add_metric([], datetime.fromisoformat(drill["at"]).timestamp())
            yield from (ok, at)
            if drill.get("restore_seconds") is not None:
                rto = GaugeMetricFamily(f"{PREFIX}_backup_drill_restore_seconds",
                                        "How long the last drill's restore took (RTO).")
                rto.add_metric([], float(drill["restore_seconds"]))
                yield rto


_REPLICA_STATES = ("ok", "lagging", "down", "not-a-standby")


def _replication_metrics(repl: dict[str, Any]) -> Iterable[Metric]:
    """Which server is the primary, whether its standbys stream, each replica's state.
    Labels are host:port and standby names: a handful per deployment."""
    if not repl:
        return
    recovery = GaugeMetricFamily(f"{PREFIX}_in_recovery",
                                 "1 if the admin connection reached a standby.")
    recovery.add_metric([], 1.0 if repl["in_recovery"] else 0.0)
    primary = GaugeMetricFamily(f"{PREFIX}_primary_info",
                                "1, labelled with the host:port that is the primary.",
                                labels=["host"])
    if repl["primary"]:
        primary.add_metric([repl["primary"]], 1.0)
    streaming = GaugeMetricFamily(f"{PREFIX}_standby_streaming",
                                  "1 if the standby streams from the primary.",
                                  labels=["standby"])
    lag = GaugeMetricFamily(f"{PREFIX}_standby_replay_lag_seconds",
                            "Replay lag of each standby (pg_stat_replication).",
                            labels=["standby"])
    lag_bytes = GaugeMetricFamily(f"{PREFIX}_standby_replay_lag_bytes",
                                  "WAL not yet replayed by each standby.", labels=["standby"])
    for standby in repl["standbys"]:
        name = str(standby["name"])
        streaming.add_metric([name], 1.0 if standby["state"] == "streaming" else 0.0)
        lag.add_metric([name], standby["replay_lag_seconds"] or 0.0)
        if standby["replay_lag_bytes"] is not None:
            lag_bytes.add_metric([name], float(standby["replay_lag_bytes"]))
    state = GaugeMetricFamily(f"{PREFIX}_replica_state",
                              "1 for the state each configured read replica is in.",
                              labels=["replica", "state"])
    replica_lag = GaugeMetricFamily(f"{PREFIX}_replica_lag_seconds",
                                    "Replay lag of each configured read replica.",
                                    labels=["replica"])
    for replica in repl["replicas"]:
        for name in _REPLICA_STATES:
            state.add_metric([replica["host"], name], 1.0 if replica["state"] == name else 0.0)
        if replica["lag_seconds"] is not None:
            replica_lag.add_metric([replica["host"]], float(replica["lag_seconds"]))
    yield from (recovery, primary, streaming, lag, lag_bytes, state, replica_lag)
