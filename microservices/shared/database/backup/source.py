"""Which server a backup reads: ``EDULINK_DB_BACKUP_FROM``.

``primary`` (the default) dumps the writable server, which has every commit.
``replica`` dumps a standby instead, to keep pg_dump's reads off the primary; when no
standby answers, the primary is dumped and the manifest's notes say so (a backup taken
from the wrong server beats no backup).

On Patroni (``DATABASE_PATRONI_URLS``) the cluster's REST API names the leader and the
replicas, so a DATABASE_URL that lists one member still reaches whichever member leads
now.  Without it, a multi-host DATABASE_URL with ``target_session_attrs=read-write``
finds the primary, and replicas come from DATABASE_REPLICA_URLS.

A :class:`Source` only chooses; the dump then pins pg_dump to the very host and port
its snapshot connection reached (:func:`pinned`): pg_dump imports that connection's
snapshot, which exists on no other server.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg

from ..config import Settings, host_label, replica_admin_conninfos
from ..connections.direct import want_primary
from ..connections.patroni import Member, discovery_from_settings, member_params
from ..core.errors import DatabaseUnavailableError, PatroniDiscoveryError

# Connection keys that say where a server is; a pinned source replaces all of them.
_WHERE_KEYS = ("host", "hostaddr", "port", "target_session_attrs")


@dataclass(frozen=True)
class Source:
    """Connection parameters for the dump (admin credentials) and a line for the
    manifest's notes saying which server was chosen and why."""

    params: dict[str, Any]
    note: str


def _at(params: dict[str, Any], member: Member, attrs: str) -> dict[str, Any]:
    rest = {k: v for k, v in params.items() if k not in _WHERE_KEYS}
    return {**rest, **member_params(member), "target_session_attrs": attrs}


def backup_source(settings: Settings, admin: dict[str, Any]) -> Source:
    """The server to dump for *admin*'s database (its admin parameters as configured).

    Raises DatabaseUnavailableError when Patroni answers but reports no leader (a
    failover under way: ``backup auto`` waits and retries), never when the REST API is
    down: the multi-host URL is used as written then."""
    discovery = discovery_from_settings(settings)
    view = None
    if discovery is not None:
        try:
            view = discovery.view()
        except PatroniDiscoveryError:
            view = None  # REST API down: libpq's host list still finds the primary
    fallback = ""
    if settings.edulink_db_backup_from == "replica":
        chosen = _replica(settings, admin, view.replicas if view is not None else None)
        if chosen is not None:
            return chosen
        fallback = (" (EDULINK_DB_BACKUP_FROM=replica, but no replica within the lag "
                    "limit answered)")
    if view is not None:
        if view.leader is None:
            raise DatabaseUnavailableError(
                f"Patroni ({view.source}) reports no leader: a failover is under way. "
                "'backup auto' retries for EDULINK_DB_BACKUP_RETRY_FOR seconds; "
                "'patronictl list' shows the cluster.")
        leader = view.leader
        return Source(_at(admin, leader, "read-write"),
                      f"dumped from the Patroni leader {leader.name} "
                      f"({leader.host}:{leader.port}){fallback}")
    return Source(want_primary(admin), f"dumped from the primary{fallback}")


def _replica(settings: Settings, admin: dict[str, Any],
             members: tuple[Member, ...] | None) -> Source | None:
    """The first replica that accepts a standby session: Patroni's healthy replicas
    when there is a view, else DATABASE_REPLICA_URLS (admin credentials)."""
    if members is not None:
        candidates = [(_at(admin, m, "standby"), f"Patroni replica {m.name}") for m in members]
    else:
        candidates = [(p, "replica") for p in replica_admin_conninfos(settings)]
    for params, what in candidates:
        try:
            with psycopg.connect(**{"connect_timeout": 5, **params}, autocommit=True) as conn:
                row = conn.execute("SELECT pg_catalog.pg_last_wal_replay_lsn()::text"
                                   ).fetchone()
        except psycopg.Error:
            continue
        # A standby's backup is as of its replay point: the note says which one.
        return Source(params, f"dumped from {what} ({host_label(params)}), "
                              f"EDULINK_DB_BACKUP_FROM=replica, replayed up to "
                              f"{row[0] if row else 'unknown'} when chosen")
    return None


def pinned(params: dict[str, Any], conn: psycopg.Connection[Any]) -> dict[str, Any]:
    """*params* at the one server *conn* reached (its host and port), keeping their
    ``target_session_attrs``: a server that changed role since refuses pg_dump."""
    rest = {k: v for k, v in params.items() if k not in ("host", "hostaddr", "port")}
    return {**rest, "host": conn.info.host, "port": str(conn.info.port)}
