"""Cross-service reads, checked against the topology and enforced by PostgreSQL.

    from microservices.shared.database.cross_schema_access import (
        get_user_profile_with_auth, get_institution_details, create_audit_log)

    user_data = get_user_profile_with_auth(user_id="123", requesting_service="application_service")

Every read runs on the **requesting** service's own pool, logged in as its own
role, in a read-only transaction: the Python check gives an early, clear
error, and PostgreSQL's grants are what actually decide.  Each helper is one
round trip (the request context is pipelined with the query, see
:mod:`.request_context`).  The helpers read the reference Edulink schema
(``reference_migrations/``); the schema names come from the topology.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from typing import Any

from cachetools import TTLCache
from psycopg import sql
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from .config import Settings, admin_conninfo, load_settings
from .connection_manager import ConnectionManager, connection_manager
from .direct import connect
from .errors import CrossServiceAccessError
from .topology import Service, Topology

READ_ONLY, READ_WRITE = "read_only", "read_write"


class CrossSchemaAccessManager:
    """Topology-checked access to other services' data.

    *cache_ttl* (seconds) turns on a small in-process cache of the read helpers'
    results, keyed by helper, id and requesting service; off by default.  Call
    :meth:`invalidate` when the data changes.
    """

    def __init__(self, connections: ConnectionManager | None = None,
                 settings: Settings | None = None, cache_ttl: float | None = None,
                 cache_size: int = 4096) -> None:
        self._connections = connections
        self._settings = settings
        self._cache: TTLCache[Hashable, Any] | None = (
            TTLCache(maxsize=cache_size, ttl=cache_ttl) if cache_ttl else None)
        self._cache_lock = threading.Lock()

    @property
    def connections(self) -> ConnectionManager:
        return self._connections or connection_manager

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = (self._connections.settings if self._connections
                              else load_settings())
        return self._settings

    @property
    def topology(self) -> Topology:
        return self.settings.topology()

    # -- checks ------------------------------------------------------------------
    def _schema_service(self, schema: str) -> Service | None:
        svc = self.topology.service_for_schema(schema)
        if svc is None and schema != self.topology.shared.schema:
            # Also accept a service name where a schema is expected ('auth').
            try:
                svc = self.topology.service(schema)
            except KeyError:
                return None
        return svc

    def validate_access(self, service: str, schema: str, level: str = READ_ONLY) -> bool:
        """Whether *service* may access *schema* at *level* ('read_only' or 'read_write'),
        answered from the topology (the database enforces the same)."""
        if level not in (READ_ONLY, READ_WRITE):
            raise ValueError(f"level must be {READ_ONLY!r} or {READ_WRITE!r}, got {level!r}")
        svc = self.topology.service(service)
        owner = self._schema_service(schema)
        if owner is None:
            return False
        if owner.name == svc.name:
            return True
        return level == READ_ONLY and owner.name in svc.reads

    def require_access(self, service: str, schema: str, level: str = READ_ONLY) -> None:
        """Raise CrossServiceAccessError unless :meth:`validate_access` allows it."""
        if not self.validate_access(service, schema, level):
            svc = self.topology.service(service)
            raise CrossServiceAccessError(
                f"Service {svc.name!r} has no {level} access to schema {schema!r} "
                f"(it may read: {', '.join(svc.reads) or 'no other service'}).")

    # -- cache ---------------------------------------------------------------------
    def _cached(self, key: Hashable, load: Callable[[], Any]) -> Any:
        if self._cache is None:
            return load()
        with self._cache_lock:
            if key in self._cache:
                return self._cache[key]
        value = load()
        with self._cache_lock:
            self._cache[key] = value
        return value

    def invalidate(self, kind: str | None = None, key: str | None = None) -> None:
        """Drop cached results: all, all of one *kind* ('user_profile', 'institution'),
        or one id of a kind."""
        if self._cache is None:
            return
        with self._cache_lock:
            for cached in list(self._cache.keys()):
                assert isinstance(cached, tuple)
                if (kind is None or cached[0] == kind) and (key is None or cached[1] == key):
                    del self._cache[cached]

    # -- reads ----------------------------------------------------------------------
    def get_user_profile_with_auth(self, user_id: str,
                                   requesting_service: str) -> dict[str, Any] | None:
        """The user's profile joined with their auth account, or None.

        Needs read access to the user and auth schemas. Runs with the request's
        user id set, so the profile's RLS policy lets exactly this user's row through.
        """
        topology = self.topology
        user, auth = topology.service("user"), topology.service("auth")
        requester = topology.service(requesting_service)
        for schema in (user.schema, auth.schema):
            self.require_access(requester.name, schema, READ_ONLY)
        query = sql.SQL(
            "SELECT p.id, p.user_id, p.first_name, p.last_name, p.phone, p.bio,"
            " p.created_at, p.updated_at,"
            " u.email, u.is_active, u.is_staff, u.last_login"
            " FROM {profiles} p LEFT JOIN {users} u ON u.id = p.user_id"
            " WHERE p.user_id::text = %s").format(
            profiles=sql.Identifier(user.schema, "profiles_userprofile"),
            users=sql.Identifier(auth.schema, "authentication_user"))

        def load() -> dict[str, Any] | None:
            with self.connections.get_connection(requester.name, user_id=str(user_id),
                                                 readonly=True) as conn, \
                    conn.cursor(row_factory=dict_row) as cur:
                row = cur.execute(query, [str(user_id)]).fetchone()
            if row is None:
                return None
            auth_keys = ("email", "is_active", "is_staff", "last_login")
            profile = {k: v for k, v in row.items() if k not in auth_keys}
            profile["auth"] = {k: row[k] for k in auth_keys}
            return profile

        result: dict[str, Any] | None = self._cached(
            ("user_profile", str(user_id), requester.name), load)
        return result

    def get_institution_details(self, institution_id: str,
                                requesting_service: str) -> dict[str, Any] | None:
        """The institution with its programs, or None."""
        topology = self.topology
        inst = topology.service("institution")
        requester = topology.service(requesting_service)
        self.require_access(requester.name, inst.schema, READ_ONLY)
        query = sql.SQL(
            "SELECT i.id, i.code, i.name, i.kind, i.country, i.website, i.created_at,"
            " coalesce((SELECT json_agg(json_build_object('id', p.id, 'code', p.code,"
            "  'name', p.name, 'level', p.level, 'duration_years', p.duration_years)"
            "  ORDER BY p.name) FROM {programs} p WHERE p.institution_id = i.id),"
            " '[]'::json) AS programs"
            " FROM {institutions} i WHERE i.id::text = %s").format(
            institutions=sql.Identifier(inst.schema, "institutions_institution"),
            programs=sql.Identifier(inst.schema, "institutions_program"))

        def load() -> dict[str, Any] | None:
            with self.connections.get_connection(requester.name, readonly=True) as conn, \
                    conn.cursor(row_factory=dict_row) as cur:
                row: dict[str, Any] | None = cur.execute(query, [str(institution_id)]
                                                         ).fetchone()
            return row

        result: dict[str, Any] | None = self._cached(
            ("institution", str(institution_id), requester.name), load)
        return result

    # -- audit log ---------------------------------------------------------------------
    def create_audit_log(self, service_name: str, action: str, resource_type: str,
                         resource_id: str | None = None, user_id: str | None = None,
                         details: dict[str, Any] | None = None) -> None:
        """Append to the shared audit log as *service_name*'s own role.

        The database stamps each row with the time and the role that really
        wrote it; no service can change or remove rows.
        """
        svc = self.topology.service(service_name)
        table = sql.Identifier(self.topology.shared.schema, self.topology.shared.audit_table)
        query = sql.SQL(
            "INSERT INTO {} (service_name, action, resource_type, resource_id, user_id,"
            " details) VALUES (%s, %s, %s, %s, %s, %s)").format(table)
        with self.connections.get_connection(svc.name) as conn:
            conn.execute(query, [svc.name, action, resource_type,
                                 None if resource_id is None else str(resource_id),
                                 None if user_id is None else str(user_id),
                                 Jsonb(details or {})])

    def get_audit_trail(self, resource_type: str, resource_id: str, *,
                        limit: int = 100) -> list[dict[str, Any]]:
        """An entity's audit entries, oldest first.

        Services cannot read the audit log (append-only for them): this is an
        operator API and uses the admin credentials (DATABASE_URL).
        """
        table = sql.Identifier(self.topology.shared.schema, self.topology.shared.audit_table)
        query = sql.SQL(
            "SELECT id, occurred_at, db_role, service_name, action, resource_type,"
            " resource_id, user_id, details FROM {} WHERE resource_type = %s"
            " AND resource_id = %s ORDER BY occurred_at, id LIMIT %s").format(table)
        with connect(admin_conninfo(self.settings), purpose="read the audit trail") as conn, \
                conn.cursor(row_factory=dict_row) as cur:
            return cur.execute(query, [resource_type, str(resource_id), limit]).fetchall()


cross_schema_manager = CrossSchemaAccessManager()


def get_user_profile_with_auth(user_id: str, requesting_service: str) -> dict[str, Any] | None:
    return cross_schema_manager.get_user_profile_with_auth(user_id, requesting_service)


def get_institution_details(institution_id: str,
                            requesting_service: str) -> dict[str, Any] | None:
    return cross_schema_manager.get_institution_details(institution_id, requesting_service)


def create_audit_log(service_name: str, action: str, resource_type: str,
                     resource_id: str | None = None, user_id: str | None = None,
                     details: dict[str, Any] | None = None) -> None:
    cross_schema_manager.create_audit_log(service_name, action, resource_type, resource_id,
                                          user_id, details)


def get_audit_trail(resource_type: str, resource_id: str, *,
                    limit: int = 100) -> list[dict[str, Any]]:
    return cross_schema_manager.get_audit_trail(resource_type, resource_id, limit=limit)
