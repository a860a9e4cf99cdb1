"""The database's view of every service, read per role (= per service).

On Supabase the pooler overwrites ``application_name``, so work is attributed to
services by role: each service has its own. :func:`collect` reads, in a fixed
number of queries, whatever the number of services:

* connections per role and state, idle-in-transaction age, long-running and
  blocked queries (``pg_stat_activity``);
* statement statistics per role from ``pg_stat_statements`` when it is installed
  (provisioning installs it where it can); otherwise that part says why it is
  missing, and everything else still works;
* schema sizes and dead tuples; cache hit ratio of tables and indexes; transaction-ID
  age; connections against ``max_connections``;
* replication: whether the server is the primary (and which host:port it is, for a
  multi-host ``DATABASE_URL``), its standbys from ``pg_stat_replication``, and each
  ``DATABASE_REPLICA_URLS`` entry's state and lag (one short connection per replica);
  under Patroni (``DATABASE_PATRONI_URLS``), the cluster's members, roles, states, lag
  and its last leader change from the REST API (``GET /cluster``, ``GET /history``).

Reading other roles' sessions and statements in full needs ``pg_read_all_stats``
(the admin has it; so does ``pg_monitor``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql

from ..config import Settings, host_label, pooler_mode
from ..connections import budget
from ..core.errors import ConfigError, EdulinkDBError
from ..topology import Service, Topology
from .fingerprint import fingerprint

OK, DEGRADED, UNHEALTHY = "ok", "degraded", "unhealthy"
_RANK = {OK: 0, DEGRADED: 1, UNHEALTHY: 2}
XID_AGE_UNHEALTHY = 1_500_000_000
CONNECTIONS_UNHEALTHY = 0.95


@dataclass
class DatabaseStats:
    server_version: str = ""
    max_connections: int = 0
    reserved_connections: int = 0  # superuser_reserved_connections + reserved_connections
    connections: int = 0
    cache_hit_ratio: float | None = None
    cache_blocks: int = 0  # blks_hit + blks_read: the sample behind cache_hit_ratio
    xid_age: int = 0
    roles: dict[str, dict[str, Any]] = field(default_factory=dict)
    long_running: list[dict[str, Any]] = field(default_factory=list)
    schemas: dict[str, dict[str, int]] = field(default_factory=dict)
    statements: dict[str, dict[str, Any]] | None = None
    statements_note: str | None = None
    connection_limits: dict[str, int] = field(default_factory=dict)  # role -> rolconnlimit
    queries: int = 0
    # {"in_recovery": bool, "primary": "host:port" | None, "standbys": [{"name",
    # "client_addr", "state", "replay_lag_seconds", "replay_lag_bytes"}], "replicas":
    # [{"host", "state", "lag_seconds"}]}: see :func:`read_replication`.
    replication: dict[str, Any] = field(default_factory=dict)


def _empty_role() -> dict[str, Any]:
    return {"active": 0, "idle": 0, "idle_in_transaction": 0, "other": 0,
            "idle_in_transaction_max_s": 0.0, "long_running": 0, "blocked": 0}


def collect(conn: psycopg.Connection[Any], topology: Topology,
            settings: Settings | None = None) -> DatabaseStats:
    """Read the server's statistics for the topology's roles and schemas."""
    from ..config import load_settings

    settings = settings or load_settings()
    stats = DatabaseStats()
    roles = topology.runtime_roles
    long_s = settings.database_long_query_seconds
    # Never hang: a health check that waits on a lock is worse than one that fails.
    conn.execute("SELECT pg_catalog.set_config('lock_timeout', '1s', false),"
                 " pg_catalog.set_config('statement_timeout', '10s', false)")

    def q(query: str | sql.Composed, params: list[Any]) -> list[tuple[Any, ...]]:
        stats.queries += 1
        return conn.execute(query, params).fetchall()

    (stats.server_version, stats.max_connections, stats.reserved_connections,
     stats.connections, stats.cache_hit_ratio, stats.cache_blocks, stats.xid_age,
     limit_roles, limits, in_recovery, standbys) = q(
        "SELECT current_setting('server_version'), current_setting('max_connections')::int,"
        " current_setting('superuser_reserved_connections')::int"
        " + coalesce(current_setting('reserved_connections', true)::int, 0),"
        " (SELECT count(*) FROM pg_catalog.pg_stat_activity"
        "   WHERE backend_type = 'client backend')::int,"
        # Tables and indexes only, as PgHero measures it: pg_stat_database also counts
        # catalog reads, and provisioning a fresh database reads ~50,000 catalog blocks
        # at 0.988-0.990 (cold-start misses), which says nothing about the data's cache.
        " (SELECT sum(h)::float8 / nullif(sum(h + r), 0) FROM ("
        "   SELECT heap_blks_hit + coalesce(idx_blks_hit, 0) + coalesce(toast_blks_hit, 0) h,"
        "     heap_blks_read + coalesce(idx_blks_read, 0) + coalesce(toast_blks_read, 0) r"
        "   FROM pg_catalog.pg_statio_user_tables) t),"
        " (SELECT coalesce(sum(heap_blks_hit + heap_blks_read + coalesce(idx_blks_hit, 0)"
        "   + coalesce(idx_blks_read, 0) + coalesce(toast_blks_hit, 0)"
        "   + coalesce(toast_blks_read, 0)), 0)::bigint"
        "   FROM pg_catalog.pg_statio_user_tables),"
        " (SELECT age(datfrozenxid) FROM pg_catalog.pg_database"
        "   WHERE datname = current_database()),"
        # Each runtime role's CONNECTION LIMIT, in the same round trip.
        " ARRAY(SELECT rolname::text FROM pg_catalog.pg_roles WHERE rolname = ANY(%s)"
        "   ORDER BY 1),"
        " ARRAY(SELECT rolconnlimit FROM pg_catalog.pg_roles WHERE rolname = ANY(%s)"
        "   ORDER BY rolname),"
        # Replication, valid on a primary and on a standby: pg_current_wal_lsn() raises
        # during recovery, so a (cascading) standby measures against what it replayed.
        " pg_catalog.pg_is_in_recovery(), coalesce((SELECT json_agg(json_build_object("
        " 'name', application_name, 'client_addr', host(client_addr), 'state', state,"
        " 'replay_lag_seconds', extract(epoch FROM replay_lag)::float8,"
        " 'replay_lag_bytes', pg_catalog.pg_wal_lsn_diff(CASE WHEN pg_catalog.pg_is_in_recovery()"
        "   THEN pg_catalog.pg_last_wal_replay_lsn() ELSE pg_catalog.pg_current_wal_lsn() END,"
        "   replay_lsn)::bigint) ORDER BY application_name, pid)"
        " FROM pg_catalog.pg_stat_replication), '[]'::json)", [roles, roles])[0]
    stats.connection_limits = dict(zip(limit_roles, limits, strict=True))
    stats.replication = replication_view(in_recovery, standbys, conn, settings)

    for role in roles:
        stats.roles[role] = _empty_role()
    for usename, state, n, idle_tx_max, long_running, blocked in q(
        "SELECT usename, coalesce(state, 'unknown'), count(*)::int,"
        " coalesce(max(extract(epoch FROM now() - state_change))"
        "   FILTER (WHERE state LIKE 'idle in transaction%%'), 0)::float8,"
        " (count(*) FILTER (WHERE state = 'active'"
        "   AND now() - query_start > make_interval(secs => %s)))::int,"
        " (count(*) FILTER (WHERE wait_event_type = 'Lock'))::int"
        " FROM pg_catalog.pg_stat_activity"
        " WHERE backend_type = 'client backend' AND usename = ANY(%s) GROUP BY 1, 2",
        [long_s, roles],
    ):
        entry = stats.roles[usename]
        key = ("idle_in_transaction" if state.startswith("idle in transaction")
               else state if state in ("active", "idle") else "other")
        entry[key] += n
        entry["idle_in_transaction_max_s"] = max(entry["idle_in_transaction_max_s"],
                                                 idle_tx_max)
        entry["long_running"] += long_running
        entry["blocked"] += blocked

    for usename, seconds, query in q(
        "SELECT usename, extract(epoch FROM now() - query_start)::float8, query"
        " FROM pg_catalog.pg_stat_activity WHERE state = 'active'"
        " AND backend_type = 'client backend' AND pid <> pg_backend_pid()"
        " AND now() - query_start > make_interval(secs => %s)"
        " ORDER BY 2 DESC LIMIT 10", [long_s],
    ):
        query_hash, _kind, text = fingerprint(query or "")
        stats.long_running.append({"role": usename, "seconds": round(seconds, 1),
                                   "fingerprint": query_hash, "query": text[:200]})

    # Sizes from pg_class.relpages (kept current by VACUUM/ANALYZE), not
    # pg_total_relation_size(): that takes a lock on every table and would make the
    # health check wait behind any ACCESS EXCLUSIVE lock, e.g. a migration's.
    for schema, size, dead, live in q(
        "SELECT n.nspname,"
        " (coalesce(sum(c.relpages + coalesce(t.relpages, 0)), 0)"
        "   * current_setting('block_size')::bigint)::bigint,"
        " coalesce(sum(s.n_dead_tup), 0)::bigint, coalesce(sum(s.n_live_tup), 0)::bigint"
        " FROM pg_catalog.pg_namespace n"
        " LEFT JOIN pg_catalog.pg_class c ON c.relnamespace = n.oid"
        "   AND c.relkind IN ('r', 'p', 'm', 'i')"
        " LEFT JOIN pg_catalog.pg_class t ON t.oid = c.reltoastrelid"
        " LEFT JOIN pg_catalog.pg_stat_user_tables s ON s.relid = c.oid"
        " WHERE n.nspname = ANY(%s) GROUP BY 1", [topology.schemas],
    ):
        stats.schemas[schema] = {"size_bytes": int(size), "dead_tuples": int(dead),
                                 "live_tuples": int(live)}

    ext = q("SELECT extnamespace::regnamespace::text FROM pg_catalog.pg_extension"
            " WHERE extname = 'pg_stat_statements'", [])
    if not ext:
        stats.statements_note = ("pg_stat_statements is not installed in this database "
                                 "(CREATE EXTENSION pg_stat_statements needs a superuser "
                                 "or a platform that provides it, as Supabase does)")
        return stats
    try:
        with conn.transaction():
            rows = q(sql.SQL(
                "SELECT r.rolname, sum(s.calls)::bigint, sum(s.total_exec_time)::float8,"
                " (count(*) FILTER (WHERE s.calls >= %s AND s.mean_exec_time >= %s))::int"
                " FROM {}.pg_stat_statements s JOIN pg_catalog.pg_roles r ON r.oid = s.userid"
                " WHERE r.rolname = ANY(%s)"
                " AND s.dbid = (SELECT oid FROM pg_catalog.pg_database"
                "   WHERE datname = current_database())"
                " GROUP BY 1").format(sql.Identifier(ext[0][0])),
                [settings.database_slow_statement_min_calls,
                 settings.database_slow_statement_ms, roles])
    except psycopg.Error as exc:
        stats.statements_note = f"pg_stat_statements unreadable: {exc.diag.message_primary}"
        return stats
    stats.statements = {role: {"calls": 0, "total_time_s": 0.0, "mean_ms": 0.0,
                               "slow_statements": 0} for role in roles}
    for role, calls, total_ms, slow in rows:
        stats.statements[role] = {
            "calls": int(calls), "total_time_s": total_ms / 1000.0,
            "mean_ms": (total_ms / calls) if calls else 0.0, "slow_statements": int(slow)}
    return stats


def replication_view(in_recovery: bool, standby_rows: list[dict[str, Any]] | None,
                     conn: psycopg.Connection[Any], settings: Settings) -> dict[str, Any]:
    """Where *conn* landed and what replicates from it, plus the configured replicas.

    ``primary`` is the ``host:port`` libpq connected to (with a multi-host URL, the
    one that accepted), or None when that server is a standby.  ``replicas`` probes
    each ``DATABASE_REPLICA_URLS`` entry as the replica selector does (state ``ok``,
    ``lagging``, ``down`` or ``not-a-standby``).  No user names or passwords appear.
    """
    from ..config import replica_admin_conninfos
    from ..connections.replicas import probe_once

    in_recovery, standbys = bool(in_recovery), list(standby_rows or [])
    for standby in standbys:
        lag = standby.get("replay_lag_seconds")
        standby["replay_lag_seconds"] = None if lag is None else float(lag)
    primary = None if in_recovery else host_label({"host": conn.info.host,
                                                    "port": conn.info.port})
    patroni = patroni_view(settings)
    # Under Patroni, DATABASE_URL lists every member and each may serve replica reads
    # while it is a replica: the leader (by Patroni, or the server we are connected
    # to) is not a read replica, and probing it as one would report it not-a-standby.
    leading = {primary} | ({patroni["leader"]["host"]} if patroni and patroni["leader"]
                           else set())
    from_members = settings.database_patroni_urls is not None \
        and settings.database_replica_urls is None
    replicas = []
    for params in replica_admin_conninfos(settings):
        if from_members and host_label(params) in leading:
            continue
        state, lag = probe_once(params, settings.database_replica_max_lag)
        replicas.append({"host": host_label(params), "state": state, "lag_seconds": lag})
    out: dict[str, Any] = {"in_recovery": in_recovery, "primary": primary,
                           "standbys": standbys, "replicas": replicas}
    if patroni is not None:
        out["patroni"] = patroni
    return out


def patroni_view(settings: Settings) -> dict[str, Any] | None:
    """The Patroni cluster as its REST API (``DATABASE_PATRONI_URLS``) reports it now:
    ``leader`` and ``members`` (``name``, ``host`` as host:port, ``role``, ``state``,
    ``lag_bytes``, ``timeline``), ``skipped`` members, ``source`` endpoint, endpoint
    ``problems``, the ``last_leader_change`` (``timeline`` it started, ``at``,
    ``new_leader``, ``reason``) and ``error`` when no endpoint answered.  None without
    Patroni.  One fresh fetch of each (health is not on the request path)."""
    from ..connections.patroni import discovery_from_settings, member_params
    from ..core.errors import PatroniDiscoveryError

    discovery = discovery_from_settings(settings)
    if discovery is None:
        return None
    out: dict[str, Any] = {"leader": None, "members": [], "skipped": [], "source": None,
                           "problems": {}, "last_leader_change": None, "error": None,
                           "max_lag_bytes": settings.database_patroni_max_lag_bytes}
    try:
        view = discovery.view()
    except PatroniDiscoveryError as exc:
        out["error"] = str(exc)
        return out

    def member(m: Any) -> dict[str, Any]:
        # The same label as the probes' (host_label), so the two can be compared.
        return {"name": m.name, "host": host_label(member_params(m)), "role": m.role,
                "state": m.state, "lag_bytes": m.lag_bytes, "timeline": m.timeline}

    out.update(leader=member(view.leader) if view.leader else None,
               members=[member(m) for m in view.members], skipped=list(view.skipped),
               source=view.source, problems=discovery.problems())
    try:
        changes = discovery.leader_changes()
    except PatroniDiscoveryError as exc:
        out["problems"] = {**out["problems"], "history": str(exc)}
    else:
        if changes:
            last = changes[-1]
            out["last_leader_change"] = {"timeline": last.timeline + 1, "at": last.at,
                                         "new_leader": last.new_leader,
                                         "reason": last.reason}
    return out


def _replication_checks(checks: dict[str, dict[str, Any]], stats: DatabaseStats,
                        settings: Settings) -> None:
    repl = stats.replication
    if not repl:
        return
    if repl["in_recovery"]:
        checks["primary"] = _check(
            DEGRADED, None, None, "connected to a standby (in recovery), not the primary: "
            "list the primary in DATABASE_URL, with target_session_attrs=read-write")
    else:
        streaming = sum(1 for s in repl["standbys"] if s["state"] == "streaming")
        checks["primary"] = _check(
            OK, repl["primary"], None, f"primary at {repl['primary']}; "
            f"{streaming} of {len(repl['standbys'])} standby(s) streaming")
    for standby in repl["standbys"]:
        if standby["state"] != "streaming":
            checks[f"standby:{standby['name']}"] = _check(
                DEGRADED, standby["state"], "streaming",
                f"standby {standby['name']} ({standby['client_addr']}) is "
                f"{standby['state']}, not streaming")
    for replica in repl["replicas"]:
        if replica["state"] != "ok":
            lag = replica["lag_seconds"]
            checks[f"replica:{replica['host']}"] = _check(
                DEGRADED, lag, settings.database_replica_max_lag,
                f"read replica {replica['host']} is {replica['state']}"
                + (f" (lag {lag:.1f}s)" if lag is not None else "")
                + ": replica reads go to the other replicas or the primary")


def _patroni_checks(checks: dict[str, dict[str, Any]], repl: dict[str, Any]) -> None:
    """``patroni``: a leader, and it is the server DATABASE_URL reached; one
    ``patroni_member:<name>`` per member that cannot serve (not running, lag unknown or
    over DATABASE_PATRONI_MAX_LAG_BYTES) and per member left out of the view."""
    from ..connections.patroni import READ_ROLES, READ_STATES

    cluster = (repl or {}).get("patroni")
    if cluster is None:
        return
    if cluster["error"]:
        checks["patroni"] = _check(
            DEGRADED, None, None, f"{cluster['error']} The pools keep their last view, "
            "so a failover now would not be followed until the REST API answers again.")
        return
    leader = cluster["leader"]
    change = cluster["last_leader_change"]
    since = (f"; last leader change: timeline {change['timeline']}"
             + (f" at {change['at']}" if change["at"] else "")
             + (f" to {change['new_leader']}" if change["new_leader"] else "")
             if change else "; no leader change recorded")
    if leader is None:
        checks["patroni"] = _check(
            DEGRADED, None, "a leader", f"Patroni ({cluster['source']}) reports no leader: "
            f"a failover is under way or no member can lead; writes wait{since}")
    elif repl.get("primary") in {m["host"] for m in cluster["members"]} - {leader["host"]}:
        # A member Patroni does not call leader accepted a read-write session.  (A
        # primary named differently in DATABASE_URL -- a DNS name for Patroni's
        # connect address -- is no sign of anything: the pools use Patroni's address.)
        checks["patroni"] = _check(
            DEGRADED, leader["host"], repl["primary"], f"Patroni's leader is "
            f"{leader['name']} ({leader['host']}), but {repl['primary']}, which Patroni "
            f"does not call leader, accepted a read-write session: two primaries{since}")
    else:
        serving = sum(1 for m in cluster["members"] if m["role"] in READ_ROLES
                      and m["state"] in READ_STATES and m["lag_bytes"] is not None)
        checks["patroni"] = _check(
            OK, leader["name"], None, f"leader {leader['name']} ({leader['host']}), "
            f"{serving} of {len(cluster['members']) - 1} replica(s) running{since}")
    limit = cluster["max_lag_bytes"]
    for m in cluster["members"]:
        if m["role"] == "leader":
            continue
        why = (f"is {m['state']}" if m["state"] not in READ_STATES
               else f"has role {m['role']}" if m["role"] not in READ_ROLES
               else "reports its lag as unknown" if m["lag_bytes"] is None
               else f"is {m['lag_bytes']} bytes behind (limit {limit})"
               if limit is not None and m["lag_bytes"] > limit else None)
        if why:
            checks[f"patroni_member:{m['name']}"] = _check(
                DEGRADED, m["lag_bytes"], limit, f"Patroni member {m['name']} "
                f"({m['host']}) {why}: it serves no replica reads")
    for i, skipped in enumerate(cluster["skipped"], 1):
        checks[f"patroni_skipped:{i}"] = _check(DEGRADED, None, None, f"Patroni cluster: "
                                                f"{skipped}")


def _check(status: str, value: Any, threshold: Any, message: str,
           service: str | None = None) -> dict[str, Any]:
    out = {"status": status, "value": value, "threshold": threshold, "message": message}
    if service:
        out["service"] = service
    return out


def _pooler(settings: Settings) -> str:
    """The pooler mode of the configured server (services derive their connection from
    the admin's), "none" when that cannot be told."""
    from ..config import admin_conninfo

    try:
        return pooler_mode(settings, admin_conninfo(settings))
    except EdulinkDBError:
        return "none"


def _connection_limit_checks(checks: dict[str, dict[str, Any]], stats: DatabaseStats,
                            settings: Settings, svc: Service) -> None:
    """The service's processes' pools (connections/budget.py) against its role's
    CONNECTION LIMIT (-1 = none)."""
    limit = stats.connection_limits.get(svc.runtime_role, -1)
    if limit < 0:
        return
    try:
        budget.pool_size(settings, svc, limit, pooler=_pooler(settings))
    except budget.PoolDoesNotFit as exc:
        checks[f"connection_limit:{svc.name}"] = _check(DEGRADED, exc.connections, limit,
                                                        str(exc), svc.name)
    except ConfigError:
        pass  # opening the pool reports the bad setting itself; health must not raise
    role = stats.roles.get(svc.runtime_role, _empty_role())
    in_use = sum(role[k] for k in ("active", "idle", "idle_in_transaction", "other"))
    if in_use >= limit:
        checks[f"connections_at_limit:{svc.name}"] = _check(
            DEGRADED, in_use, limit,
            f"{svc.runtime_role} holds {in_use} connections, its CONNECTION LIMIT is {limit}: "
            "new connections of this service are refused", svc.name)


def _connections_warn_ratio(stats: DatabaseStats, settings: Settings,
                            topology: Topology) -> float:
    """DATABASE_CONNECTIONS_WARN_RATIO when set; else at least its default, or more where
    the connection budget plans for more: the runtime roles' limits are what the
    services may hold by construction, so every pool full is no warning.  Degraded once
    the other sessions (admin, migrators, monitoring) have used half the headroom the
    budget keeps for them."""
    mc = stats.max_connections
    limits = [stats.connection_limits.get(r, -1) for r in topology.runtime_roles]
    if (not mc or any(limit < 0 for limit in limits)
            or "database_connections_warn_ratio" in settings.model_fields_set):
        return settings.database_connections_warn_ratio
    server = budget.Server(mc, stats.reserved_connections)
    planned = (sum(limits) + server.headroom // 2) / mc
    # Degraded still comes two connections before unhealthy.
    latest = (math.ceil(CONNECTIONS_UNHEALTHY * mc) - 2) / mc
    return round(max(settings.database_connections_warn_ratio, min(planned, latest)), 3)


def _cache_hit_check(stats: DatabaseStats, settings: Settings) -> dict[str, Any]:
    """Degraded below DATABASE_CACHE_HIT_MIN, but only once the ratio rests on at least
    DATABASE_CACHE_HIT_MIN_BLOCKS block reads: before that it is ok, "not enough data yet"
    (a database that just started has read a few hundred blocks, mostly from disk).
    Counted over tables, indexes and TOAST (pg_statio_user_tables), not the catalogs."""
    hit, blocks = stats.cache_hit_ratio, stats.cache_blocks
    minimum, need = settings.database_cache_hit_min, settings.database_cache_hit_min_blocks
    value = None if hit is None else round(hit, 4)
    if hit is None or blocks < need:
        return _check(OK, value, minimum,
                      f"not enough data yet: {blocks} block reads of the {need} needed "
                      "(DATABASE_CACHE_HIT_MIN_BLOCKS) before the ratio is judged")
    return _check(DEGRADED if hit < minimum else OK, value, minimum,
                  f"share of {blocks} table and index block reads served from shared "
                  "buffers")


def evaluate(stats: DatabaseStats | None, settings: Settings, topology: Topology,
             suspicious: list[dict[str, str]], error: str | None = None,
             tls_warning: str | None = None) -> dict[str, Any]:
    """Turn statistics into checks and an overall status (*tls_warning*: the server is
    not authenticated, core/tls.py)."""
    checks: dict[str, dict[str, Any]] = {}
    if stats is None:
        checks["connection"] = _check(UNHEALTHY, False, True, error or "database unreachable")
        return {"overall_status": UNHEALTHY, "checks": checks, "suspicious": suspicious,
                "services": {}}
    checks["connection"] = _check(OK, True, True, f"PostgreSQL {stats.server_version}")
    ratio = stats.connections / stats.max_connections if stats.max_connections else 0.0
    warn = _connections_warn_ratio(stats, settings, topology)
    checks["connections"] = _check(
        UNHEALTHY if ratio >= CONNECTIONS_UNHEALTHY else DEGRADED if ratio >= warn else OK,
        round(ratio, 3), warn,
        f"{stats.connections} of max_connections {stats.max_connections}")
    if ratio >= warn:
        suspicious = [*suspicious, {"service": "*", "pattern": "connections_near_max",
                                    "detail": checks["connections"]["message"]}]
    checks["cache_hit_ratio"] = _cache_hit_check(stats, settings)
    checks["transaction_id_age"] = _check(
        UNHEALTHY if stats.xid_age > XID_AGE_UNHEALTHY
        else DEGRADED if stats.xid_age > settings.database_xid_age_warn else OK,
        stats.xid_age, settings.database_xid_age_warn,
        "age of the oldest unfrozen transaction ID (wraparound at 2^31)")
    services: dict[str, dict[str, Any]] = {}
    for svc in topology.services:
        role = stats.roles.get(svc.runtime_role, _empty_role())
        schema = stats.schemas.get(svc.schema, {"size_bytes": 0, "dead_tuples": 0,
                                                "live_tuples": 0})
        statements = (stats.statements or {}).get(svc.runtime_role)
        services[svc.name] = {"connections": role, "schema": schema, "statements": statements}
        idle = role["idle_in_transaction_max_s"]
        if role["idle_in_transaction"] and idle > settings.database_idle_in_transaction_seconds:
            checks[f"idle_in_transaction:{svc.name}"] = _check(
                DEGRADED, round(idle, 1), settings.database_idle_in_transaction_seconds,
                f"{svc.name} holds {role['idle_in_transaction']} connection(s) idle in a "
                f"transaction, the oldest for {idle:.0f}s", svc.name)
            suspicious = [*suspicious, {"service": svc.name, "pattern": "idle_in_transaction",
                                        "detail": checks[f"idle_in_transaction:{svc.name}"][
                                            "message"]}]
        if role["long_running"]:
            checks[f"long_running:{svc.name}"] = _check(
                DEGRADED, role["long_running"], settings.database_long_query_seconds,
                f"{svc.name} has {role['long_running']} query(ies) running for over "
                f"{settings.database_long_query_seconds:g}s", svc.name)
        if role["blocked"]:
            checks[f"blocked:{svc.name}"] = _check(
                DEGRADED, role["blocked"], 0, f"{svc.name} has {role['blocked']} query(ies) "
                "waiting for a lock", svc.name)
        _connection_limit_checks(checks, stats, settings, svc)
        dead, live = schema["dead_tuples"], schema["live_tuples"]
        if dead > 1000 and dead / max(dead + live, 1) > settings.database_dead_tuple_ratio:
            checks[f"dead_tuples:{svc.name}"] = _check(
                DEGRADED, round(dead / (dead + live), 3), settings.database_dead_tuple_ratio,
                f"{svc.schema} has {dead} dead tuples ({dead / (dead + live):.0%}); is "
                "autovacuum keeping up?", svc.name)
        if statements and statements["slow_statements"]:
            checks[f"slow_statements:{svc.name}"] = _check(
                DEGRADED, statements["slow_statements"], settings.database_slow_statement_ms,
                f"{svc.name} has {statements['slow_statements']} statement(s) averaging over "
                f"{settings.database_slow_statement_ms:g} ms across "
                f">= {settings.database_slow_statement_min_calls} calls", svc.name)
    checks["pg_stat_statements"] = _check(
        OK, stats.statements is not None, True,
        stats.statements_note or "per-role statement statistics available")
    checks["backup_freshness"] = _backup_check(settings, stats)
    _replication_checks(checks, stats, settings)
    _patroni_checks(checks, stats.replication)
    if tls_warning:
        checks["tls"] = _check(DEGRADED, False, True, tls_warning)
    for item in suspicious:
        key = f"suspicious:{item['pattern']}:{item['service']}"
        checks.setdefault(key, _check(DEGRADED, item["detail"], None, item["detail"],
                                      None if item["service"] == "*" else item["service"]))
    overall = max((c["status"] for c in checks.values()), key=lambda s: _RANK[s])
    return {"overall_status": "healthy" if overall == OK else overall, "checks": checks,
            "suspicious": suspicious, "services": services,
            "long_running_queries": stats.long_running, "catalog_queries": stats.queries,
            "replication": stats.replication}


def _first_migrations(settings: Settings, schemas: list[str]) -> dict[str, datetime]:
    """When each schema's migration history began: its earliest known age (PostgreSQL
    records no creation time). Two queries on a connection of their own, made only for
    schemas without a verified backup, so the statistics above stay a fixed set."""
    from ..config import admin_conninfo
    from ..connections.direct import connect

    with connect(admin_conninfo(settings), purpose="date schemas for backup freshness") as c:
        # Only histories the admin may read: a health check never fails on privileges.
        histories = [r[0] for r in c.execute(
            "SELECT n.nspname FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n"
            " ON n.oid = c.relnamespace WHERE c.relname = 'edulink_schema_history'"
            " AND c.relkind = 'r' AND n.nspname = ANY(%s)"
            " AND pg_catalog.has_schema_privilege(n.oid, 'USAGE')"
            " AND pg_catalog.has_table_privilege(c.oid, 'SELECT')", [schemas]).fetchall()]
        if not histories:
            return {}
        rows = c.execute(sql.SQL(" UNION ALL ").join(
            sql.SQL("SELECT %s, min(installed_at) FROM {}").format(
                sql.Identifier(schema, "edulink_schema_history")) for schema in histories),
            histories).fetchall()
    return {schema: first for schema, first in rows if first is not None}


def _backup_check(settings: Settings, stats: DatabaseStats) -> dict[str, Any]:
    """Degraded when a schema's newest verified backup is older than twice its policy
    interval (a schema younger than that is not overdue: see schedule.py)."""
    from ..backup.schedule import backup_freshness
    from ..core.errors import EdulinkDBError

    try:
        fresh = backup_freshness(settings, sorted(stats.schemas),
                                 lambda schemas: _first_migrations(settings, schemas))
    except (EdulinkDBError, psycopg.Error) as exc:
        return _check(DEGRADED, None, None, f"backup freshness unknown: {exc}")
    overdue = [f for f in fresh if f.overdue]
    ages = [f.age_s for f in fresh if f.age_s is not None]
    oldest = round(max(ages)) if ages else None
    if overdue:
        return _check(DEGRADED, oldest, "2x policy interval",
                      "backups overdue: " + "; ".join(f.message for f in overdue))
    return _check(OK, oldest, "2x policy interval",
                  f"{len(fresh)} schema(s) within their backup policy")
