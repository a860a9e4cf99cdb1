"""Cross-service reads, checked against the topology and enforced by PostgreSQL.

    from microservices.shared.database.cross_schema_access import (
        get_user_profile_with_auth, get_institution_details, create_audit_log)

    user_data = get_user_profile_with_auth(user_id="123", requesting_service="application_service")

Every read runs on the **requesting** service's own pool, logged in as its own
role, in a read-only transaction: the Python check gives an early, clear
error, and PostgreSQL's grants are what actually decide.  Each helper is one
round trip (the request context is pipelined with the query, see
:mod:`.connections.request_context`).  The helpers read the reference Edulink schema
(``reference_migrations/``); the schema names come from the topology.
"""

from __future__ import annotations

import json
import re
import threading
import uuid
from collections.abc import Callable, Hashable, Mapping
from typing import Any

from cachetools import TTLCache
from psycopg import sql
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from .config import Settings, admin_conninfo, load_settings
from .connection_manager import ConnectionManager, connection_manager
from .connections.direct import connect
from .core.errors import CrossServiceAccessError, InvalidIdentifierValueError
from .topology import Service, Topology

READ_ONLY, READ_WRITE = "read_only", "read_write"

Id = str | int | uuid.UUID  # an id stored as text (the audit log's resource_id, user_id)
MAX_ID_LENGTH = 255
MAX_AUDIT_TRAIL_LIMIT = 100_000
# C0 controls (NUL among them: PostgreSQL text cannot hold it), DEL and C1 controls.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
# The spellings of a UUID that PostgreSQL's uuid input accepts and Python's uuid reads alike.
_UUID = re.compile(r"\{?[0-9a-fA-F]{8}(-?[0-9a-fA-F]{4}){3}-?[0-9a-fA-F]{12}\}?")


def _text_arg(value: object, name: str) -> str:
    """*value* as id text: a str, UUID or int; non-empty, at most MAX_ID_LENGTH
    characters, no control characters."""
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise InvalidIdentifierValueError(
            f"{name} must be a string (or a UUID or an integer), not "
            f"{type(value).__name__}.")
    text = str(value)
    if not text:
        raise InvalidIdentifierValueError(f"{name} is empty; pass the id of the record.")
    if len(text) > MAX_ID_LENGTH:
        raise InvalidIdentifierValueError(
            f"{name} is {len(text)} characters long; ids are at most {MAX_ID_LENGTH}.")
    bad = _CONTROL.search(text)
    if bad is not None:
        raise InvalidIdentifierValueError(
            f"{name} contains the control character U+{ord(bad.group()):04X} at position "
            f"{bad.start()}; ids are printable text (check how the id was decoded).")
    return text


def _label_arg(value: object, name: str) -> str:
    """An audit label (action, resource_type): a str, else as :func:`_text_arg`."""
    if not isinstance(value, str):
        raise InvalidIdentifierValueError(
            f"{name} must be a string, not {type(value).__name__}.")
    return _text_arg(value, name)


def _uuid_arg(value: object, name: str) -> uuid.UUID | None:
    """The id of a uuid column: a UUID, or None for well-formed text that is not one
    (no row can have such an id, e.g. the README's user_id="123")."""
    if isinstance(value, uuid.UUID):
        return value
    if not isinstance(value, str):
        raise InvalidIdentifierValueError(
            f"{name} must be a string or a uuid.UUID, not {type(value).__name__}.")
    text = _text_arg(value, name)
    return uuid.UUID(text) if _UUID.fullmatch(text) else None


def _details_arg(details: object) -> dict[str, Any]:
    """Audit details: a JSON object without NUL characters (jsonb cannot store \\u0000)."""
    if details is None:
        return {}
    if not isinstance(details, Mapping):
        raise InvalidIdentifierValueError(
            f"details must be a dict (a JSON object), not {type(details).__name__}.")
    try:
        json.dumps(details, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidIdentifierValueError(
            f"details must be JSON-serialisable ({exc}); convert dates, UUIDs, decimals "
            "and the like to strings or numbers first.") from None
    stack: list[object] = [details]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                raise InvalidIdentifierValueError(
                    "details contains a NUL character (U+0000), which PostgreSQL's jsonb "
                    "cannot store; remove it or encode the value (e.g. base64).")
        elif isinstance(item, Mapping):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
    return dict(details)


def _limit_arg(limit: object) -> int:
    if isinstance(limit, bool) or not isinstance(limit, int) or not (
            1 <= limit <= MAX_AUDIT_TRAIL_LIMIT):
        raise InvalidIdentifierValueError(
            f"limit must be an integer from 1 to {MAX_AUDIT_TRAIL_LIMIT}.")
    return limit


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

    def invalidate(self, kind: str | None = None, key: str | uuid.UUID | None = None) -> None:
        """Drop cached results: all, all of one *kind* ('user_profile', 'institution'),
        or one id of a kind."""
        if self._cache is None:
            return
        if isinstance(key, uuid.UUID) or (isinstance(key, str) and _UUID.fullmatch(key)):
            key = str(uuid.UUID(str(key)))  # cached under the canonical spelling
        with self._cache_lock:
            for cached in list(self._cache.keys()):
                assert isinstance(cached, tuple)
                if (kind is None or cached[0] == kind) and (key is None or cached[1] == key):
                    del self._cache[cached]

    # -- reads ----------------------------------------------------------------------
    def get_user_profile_with_auth(self, user_id: str | uuid.UUID,
                                   requesting_service: str) -> dict[str, Any] | None:
        """The user's profile joined with their auth account, or None.

        Needs read access to the user and auth schemas. Runs with the request's
        user id set, so the profile's RLS policy lets exactly this user's row through.
        *user_id* is a UUID (str or uuid.UUID, any spelling PostgreSQL accepts); other
        well-formed text matches no user (None, no query); a malformed id (not a
        string, empty, too long, control characters) raises
        InvalidIdentifierValueError before any SQL.
        """
        topology = self.topology
        user, auth = topology.service("user"), topology.service("auth")
        requester = topology.service(requesting_service)
        for schema in (user.schema, auth.schema):
            self.require_access(requester.name, schema, READ_ONLY)
        user_uuid = _uuid_arg(user_id, "user_id")
        if user_uuid is None:
            return None
        # The canonical spelling: it is what the RLS policy compares user_id::text with.
        user_key = str(user_uuid)
        query = sql.SQL(
            "SELECT p.id, p.user_id, p.first_name, p.last_name, p.phone, p.bio,"
            " p.created_at, p.updated_at,"
            " u.email, u.is_active, u.is_staff, u.last_login"
            " FROM {profiles} p LEFT JOIN {users} u ON u.id = p.user_id"
            " WHERE p.user_id = %s").format(
            profiles=sql.Identifier(user.schema, "profiles_userprofile"),
            users=sql.Identifier(auth.schema, "authentication_user"))

        # Relocation hook (issue 17): read where the user schema lives now; the join
        # needs the auth schema on the same server.
        if self.connections.location_of(user.name, requester.name) != \
                self.connections.location_of(auth.name, requester.name):
            raise CrossServiceAccessError(
                f"Schemas {user.schema} and {auth.schema} now live on different servers "
                "(edulink-db move-service); this join cannot run: move them together.")

        def load() -> dict[str, Any] | None:
            with self.connections.get_reader_connection(requester.name, user.name,
                                                        user_id=user_key) as conn, \
                    conn.cursor(row_factory=dict_row) as cur:
                row = cur.execute(query, [user_uuid]).fetchone()
            if row is None:
                return None
            auth_keys = ("email", "is_active", "is_staff", "last_login")
            profile = {k: v for k, v in row.items() if k not in auth_keys}
            profile["auth"] = {k: row[k] for k in auth_keys}
            return profile

        result: dict[str, Any] | None = self._cached(
            ("user_profile", user_key, requester.name), load)
        return result

    def get_institution_details(self, institution_id: str | uuid.UUID,
                                requesting_service: str) -> dict[str, Any] | None:
        """The institution with its programs, or None.

        *institution_id* is validated as ``user_id`` is in
        :meth:`get_user_profile_with_auth`.
        """
        topology = self.topology
        inst = topology.service("institution")
        requester = topology.service(requesting_service)
        self.require_access(requester.name, inst.schema, READ_ONLY)
        inst_uuid = _uuid_arg(institution_id, "institution_id")
        if inst_uuid is None:
            return None
        query = sql.SQL(
            "SELECT i.id, i.code, i.name, i.kind, i.country, i.website, i.created_at,"
            " coalesce((SELECT json_agg(json_build_object('id', p.id, 'code', p.code,"
            "  'name', p.name, 'level', p.level, 'duration_years', p.duration_years)"
            "  ORDER BY p.name) FROM {programs} p WHERE p.institution_id = i.id),"
            " '[]'::json) AS programs"
            " FROM {institutions} i WHERE i.id = %s").format(
            institutions=sql.Identifier(inst.schema, "institutions_institution"),
            programs=sql.Identifier(inst.schema, "institutions_program"))

        def load() -> dict[str, Any] | None:
            with self.connections.get_reader_connection(requester.name, inst.name) as conn, \
                    conn.cursor(row_factory=dict_row) as cur:
                row: dict[str, Any] | None = cur.execute(query, [inst_uuid]).fetchone()
            return row

        result: dict[str, Any] | None = self._cached(
            ("institution", str(inst_uuid), requester.name), load)
        return result

    # -- audit log ---------------------------------------------------------------------
    def create_audit_log(self, service_name: str, action: str, resource_type: str,
                         resource_id: Id | None = None, user_id: Id | None = None,
                         details: dict[str, Any] | None = None) -> None:
        """Append to the shared audit log as *service_name*'s own role.

        The database stamps each row with the time and the role that really
        wrote it; no service can change or remove rows.  *action* and
        *resource_type* are strings, the ids strings, UUIDs or integers (stored as
        text), *details* a JSON object; anything malformed raises
        InvalidIdentifierValueError before any SQL.
        """
        svc = self.topology.service(service_name)
        values = [
            svc.name,
            _label_arg(action, "action"),
            _label_arg(resource_type, "resource_type"),
            None if resource_id is None else _text_arg(resource_id, "resource_id"),
            None if user_id is None else _text_arg(user_id, "user_id"),
            Jsonb(_details_arg(details)),
        ]
        table = sql.Identifier(self.topology.shared.schema, self.topology.shared.audit_table)
        query = sql.SQL(
            "INSERT INTO {} (service_name, action, resource_type, resource_id, user_id,"
            " details) VALUES (%s, %s, %s, %s, %s, %s)").format(table)
        with self.connections.get_connection(svc.name) as conn:
            conn.execute(query, values)

    def get_audit_trail(self, resource_type: str, resource_id: Id, *,
                        limit: int = 100) -> list[dict[str, Any]]:
        """An entity's audit entries, oldest first.

        Services cannot read the audit log (append-only for them): this is an
        operator API and uses the admin credentials (DATABASE_URL).  Arguments are
        checked as in :meth:`create_audit_log`; *limit* is 1..MAX_AUDIT_TRAIL_LIMIT.
        """
        params = [_label_arg(resource_type, "resource_type"),
                  _text_arg(resource_id, "resource_id"), _limit_arg(limit)]
        table = sql.Identifier(self.topology.shared.schema, self.topology.shared.audit_table)
        query = sql.SQL(
            "SELECT id, occurred_at, db_role, service_name, action, resource_type,"
            " resource_id, user_id, details FROM {} WHERE resource_type = %s"
            " AND resource_id = %s ORDER BY occurred_at, id LIMIT %s").format(table)
        with connect(admin_conninfo(self.settings), purpose="read the audit trail") as conn, \
                conn.cursor(row_factory=dict_row) as cur:
            return cur.execute(query, params).fetchall()


cross_schema_manager = CrossSchemaAccessManager()


def get_user_profile_with_auth(user_id: str | uuid.UUID,
                               requesting_service: str) -> dict[str, Any] | None:
    return cross_schema_manager.get_user_profile_with_auth(user_id, requesting_service)


def get_institution_details(institution_id: str | uuid.UUID,
                            requesting_service: str) -> dict[str, Any] | None:
    return cross_schema_manager.get_institution_details(institution_id, requesting_service)


def create_audit_log(service_name: str, action: str, resource_type: str,
                     resource_id: Id | None = None, user_id: Id | None = None,
                     details: dict[str, Any] | None = None) -> None:
    cross_schema_manager.create_audit_log(service_name, action, resource_type, resource_id,
                                          user_id, details)


def get_audit_trail(resource_type: str, resource_id: Id, *,
                    limit: int = 100) -> list[dict[str, Any]]:
    return cross_schema_manager.get_audit_trail(resource_type, resource_id, limit=limit)
