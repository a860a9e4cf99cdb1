"""The topology: which services exist, what they own, and what they may read.

This is the single source of truth of edulink-db.  Provisioning, the generated
PostgreSQL and SQL Server scripts, ``verify``, the Django settings and router,
and monitoring all derive from a :class:`Topology`; nothing else in the package
knows the list of services.

A topology is declared in TOML (see ``default_topology.toml``) and validated as
a whole before anything uses it: an invalid topology raises
:class:`~.errors.TopologyError` before any SQL runs.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

from ..core.errors import TopologyError, UnknownServiceError
from ..core.identifiers import validate_identifier
from ..core.platform import PLATFORM_ROLES, platform_name_problem

ALL_OTHERS = "*"

# Server settings a topology may pin on a runtime role.  Role-level settings are
# applied by PostgreSQL at login, so they hold behind transaction poolers, where
# session SETs and startup options do not.
ROLE_SETTINGS = frozenset({"statement_timeout", "lock_timeout",
                           "idle_in_transaction_session_timeout"})
_DURATION = re.compile(r"(0|[1-9][0-9]{0,8})(us|ms|s|min|h|d)?")

# CONNECTION LIMIT of a runtime role; when absent, provisioning derives it from the
# server's max_connections (see connections/budget.py).
CONNECTION_LIMIT = "connection_limit"
# Far above any real max_connections (PostgreSQL caps it at 262143); a typo guard.
MAX_CONNECTION_LIMIT = 262_143

# Roles that other software on the same cluster owns (DESIGN.md, "Roles: least
# privilege enforced by PostgreSQL"); the one list is core/platform.py.  PostgreSQL's own
# pg_* roles are refused by identifiers.identifier_problem.
PLATFORM_RESERVED_ROLES = PLATFORM_ROLES

_SERVICE_KEYS = frozenset({"schema", "runtime_role", "owner_role", "reads", "django_apps",
                           "migrator_role", CONNECTION_LIMIT, "exposes"} | ROLE_SETTINGS)
_SHARED_KEYS = frozenset({"schema", "owner_role", "audit_table"})
_TOP_KEYS = frozenset({"services", "shared", "defaults"})


@dataclass(frozen=True)
class Service:
    """One microservice: the schema it owns and the roles that act for it.

    ``runtime_role`` is the LOGIN role the service's processes connect as; it
    never owns anything, so row-level security always applies to it.
    ``owner_role`` is a NOLOGIN role that owns the schema and every object in
    it; migrations act as it.  ``reads`` names the services whose schemas the
    runtime role may SELECT from.

    ``migrator_role`` is the LOGIN role migrations connect as.  Its only
    membership is ``owner_role`` (NOINHERIT, with ``role`` defaulting to the
    owner at login), so whatever SQL a migration file runs, it can never act
    with more than the owner's authority.
    """

    name: str
    schema: str
    runtime_role: str
    owner_role: str
    migrator_role: str
    reads: tuple[str, ...] = ()
    django_apps: tuple[str, ...] = ()
    role_settings: tuple[tuple[str, str], ...] = ()
    # CONNECTION LIMIT of runtime_role; None: derived from the server's max_connections.
    connection_limit: int | None = None
    # Keep this the last field (column-level exposure, issue 12): the tables and
    # columns this service lets its readers SELECT, in declaration order.
    exposes: tuple[tuple[str, tuple[str, ...]], ...] = ()


@dataclass(frozen=True)
class SharedSchema:
    """The schema every service may use: the audit log and the RLS helper."""

    schema: str = "shared_schema"
    owner_role: str = "shared_schema_owner"
    audit_table: str = "audit_log"


@dataclass(frozen=True)
class Topology:
    """A validated set of services plus the shared schema.

    Construct with :meth:`from_mapping`, :func:`load_topology` or
    :func:`default_topology`; the constructor itself does not validate.
    """

    services: tuple[Service, ...]
    shared: SharedSchema = field(default_factory=SharedSchema)

    # -- lookup -----------------------------------------------------------
    def service(self, name: str) -> Service:
        """Return the service called *name*.

        Accepts the bare name (``'user'``), the seed's ``'user_service'`` form
        and the runtime role name (``'user_service_role'``).
        """
        for svc in self.services:
            if name in (svc.name, f"{svc.name}_service", svc.runtime_role):
                return svc
        known = ", ".join(s.name for s in self.services)
        raise UnknownServiceError(
            f"Unknown service {name!r}. The topology declares: {known}. "
            "Use one of these names (or '<name>_service')."
        )

    def service_names(self) -> list[str]:
        return [s.name for s in self.services]

    def service_for_schema(self, schema: str) -> Service | None:
        for svc in self.services:
            if svc.schema == schema:
                return svc
        return None

    def readable_services(self, service: Service) -> list[Service]:
        """Other services whose schema *service* may read, in topology order."""
        return [s for s in self.services if s.name in service.reads]

    def readers_of(self, service: Service) -> list[Service]:
        """Services granted read access to *service*'s schema."""
        return [s for s in self.services if service.name in s.reads]

    def exposed_columns(self, service: Service | str) -> dict[str, tuple[str, ...]]:
        """The tables *service* exposes to its readers and, per table, the columns.

        Everything not listed is private to the service: readers get no grant on it,
        and migrations may change it freely.
        """
        svc = service if isinstance(service, Service) else self.service(service)
        return dict(self.service(svc.name).exposes)

    @property
    def schemas(self) -> list[str]:
        """Every schema the topology manages: service schemas, then the shared one."""
        return [s.schema for s in self.services] + [self.shared.schema]

    @property
    def runtime_roles(self) -> list[str]:
        return [s.runtime_role for s in self.services]

    @property
    def migrator_roles(self) -> list[str]:
        return [s.migrator_role for s in self.services]

    @property
    def owner_roles(self) -> list[str]:
        return [s.owner_role for s in self.services] + [self.shared.owner_role]

    def schema_owner(self, schema: str) -> str:
        if schema == self.shared.schema:
            return self.shared.owner_role
        svc = self.service_for_schema(schema)
        if svc is None:
            raise UnknownServiceError(f"Schema {schema!r} is not managed by the topology.")
        return svc.owner_role

    # -- construction -----------------------------------------------------
    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], *, source: str = "topology") -> Topology:
        """Build and validate a topology from parsed TOML (or any mapping)."""
        _reject_unknown_keys(data, _TOP_KEYS, source)
        raw_services = data.get("services")
        if not isinstance(raw_services, Mapping) or not raw_services:
            raise TopologyError(
                f"{source}: declare at least one service as a [services.<name>] table."
            )
        names = [validate_identifier(n, f"service name in {source}") for n in raw_services]

        shared_raw = data.get("shared", {})
        if not isinstance(shared_raw, Mapping):
            raise TopologyError(f"{source}: [shared] must be a table.")
        _reject_unknown_keys(shared_raw, _SHARED_KEYS, f"{source} [shared]")
        shared_defaults = SharedSchema()
        shared = SharedSchema(
            schema=validate_identifier(
                shared_raw.get("schema", shared_defaults.schema), f"[shared] schema in {source}"
            ),
            owner_role=validate_identifier(
                shared_raw.get("owner_role", shared_defaults.owner_role),
                f"[shared] owner_role in {source}",
            ),
            audit_table=validate_identifier(
                shared_raw.get("audit_table", shared_defaults.audit_table),
                f"[shared] audit_table in {source}",
            ),
        )

        defaults = data.get("defaults", {})
        if not isinstance(defaults, Mapping):
            raise TopologyError(f"{source}: [defaults] must be a table.")
        _reject_unknown_keys(defaults, ROLE_SETTINGS | {CONNECTION_LIMIT}, f"{source} [defaults]")
        services = [
            _parse_service(name, raw_services[name], names, source, defaults) for name in names
        ]
        services = [replace(s, exposes=_parse_exposes(s.name, raw_services[s.name], source))
                    for s in services]
        topology = cls(services=tuple(services), shared=shared)
        _check_unique(topology, source)
        return topology


def _reject_unknown_keys(data: Mapping[str, Any], allowed: frozenset[str], where: str) -> None:
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise TopologyError(
            f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; "
            f"allowed keys are {', '.join(sorted(allowed))}."
        )


def _string_list(value: object, what: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise TopologyError(f"{what} must be a list of strings, got {value!r}.")
    return list(value)


def _role_settings(raw: Mapping[str, Any], defaults: Mapping[str, Any],
                   where: str) -> tuple[tuple[str, str], ...]:
    out: dict[str, str] = {}
    for key in sorted(ROLE_SETTINGS):
        value = raw.get(key, defaults.get(key))
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise TopologyError(f"{key} in {where} must be a duration like \"30s\", got {value!r}.")
        text = str(value)
        if not _DURATION.fullmatch(text):
            raise TopologyError(
                f"{key} in {where} must be a duration: a number with an optional unit "
                f"(us, ms, s, min, h, d), e.g. \"30s\"; got {text!r}. Use \"0\" to disable."
            )
        out[key] = text
    return tuple(out.items())


def _parse_service(name: str, raw: object, all_names: list[str], source: str,
                   defaults: Mapping[str, Any]) -> Service:
    where = f"{source} [services.{name}]"
    if not isinstance(raw, Mapping):
        raise TopologyError(f"{where} must be a table.")
    _reject_unknown_keys(raw, _SERVICE_KEYS, where)
    schema = validate_identifier(raw.get("schema", f"{name}_schema"), f"schema in {where}")
    runtime_role = validate_identifier(
        raw.get("runtime_role", f"{name}_service_role"), f"runtime_role in {where}"
    )
    owner_role = validate_identifier(
        raw.get("owner_role", f"{name}_service_owner"), f"owner_role in {where}"
    )
    migrator_role = validate_identifier(
        raw.get("migrator_role", f"{name}_service_migrator"), f"migrator_role in {where}"
    )
    reads_raw = _string_list(raw.get("reads", []), f"reads in {where}")
    if ALL_OTHERS in reads_raw:
        if reads_raw != [ALL_OTHERS]:
            raise TopologyError(f"reads in {where}: '*' already means every other service; "
                                "list nothing else beside it.")
        reads = [n for n in all_names if n != name]
    else:
        reads = []
        for target in reads_raw:
            if target == name:
                raise TopologyError(
                    f"reads in {where}: a service always has full access to its own schema; "
                    f"remove {name!r} from its reads."
                )
            if target not in all_names:
                raise TopologyError(
                    f"reads in {where}: {target!r} is not a service in the topology "
                    f"(known: {', '.join(all_names)})."
                )
            if target in reads:
                raise TopologyError(f"reads in {where}: {target!r} is listed twice.")
            reads.append(target)
        # Topology order, so generated SQL and matrices are stable.
        reads = [n for n in all_names if n in reads]
    apps = _string_list(raw.get("django_apps", []), f"django_apps in {where}")
    for app in apps:
        if not app.isidentifier():
            raise TopologyError(f"django_apps in {where}: {app!r} is not a valid app label.")
    return Service(
        name=name,
        schema=schema,
        runtime_role=runtime_role,
        owner_role=owner_role,
        reads=tuple(reads),
        django_apps=tuple(apps),
        role_settings=_role_settings(raw, defaults, where),
        connection_limit=_connection_limit(raw, defaults, where),
        migrator_role=migrator_role,
    )


def _connection_limit(raw: Mapping[str, Any], defaults: Mapping[str, Any],
                      where: str) -> int | None:
    value = raw.get(CONNECTION_LIMIT, defaults.get(CONNECTION_LIMIT))
    if value is None:
        return None
    # bool is an int in Python; `connection_limit = true` is a mistake, not 1.
    if isinstance(value, bool) or not isinstance(value, int) \
            or not 1 <= value <= MAX_CONNECTION_LIMIT:
        raise TopologyError(
            f"{CONNECTION_LIMIT} in {where} must be a whole number of connections between 1 "
            f"and {MAX_CONNECTION_LIMIT}, got {value!r}. Leave it out to derive it from the "
            "server's max_connections.")
    return value


# -- column-level exposure (issue 12) ---------------------------------------------
SECRET_OK_MARKER = "!secret-ok"  # noqa: S105 - a marker in TOML, not a password
# Name parts that suggest a credential.  Matched per underscore-separated word (so
# "shipping" is not a "pin"), plus compounds written as one word ("passwordhash").
_SECRET_WORDS = frozenset({
    "password", "passwd", "pwd", "passphrase", "token", "secret", "hash", "hashed", "key",
    "apikey", "otp", "totp", "hotp", "mfa", "salt", "pin", "private", "credential",
    "credentials", "cred", "creds", "nonce",
})
_SECRET_STEMS = ("password", "passwd", "secret", "token", "credential", "apikey", "privatekey")


def looks_secret(column: str) -> bool:
    """Whether a column name suggests a credential (password, token, key, salt...)."""
    words = column.lower().split("_")
    return any(w in _SECRET_WORDS or any(stem in w for stem in _SECRET_STEMS)
               for w in words if w)


def _parse_exposes(name: str, raw: Mapping[str, Any],
                   source: str) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """``[services.<name>.exposes]``: ``table = ["col", "secret_col!secret-ok", ...]``."""
    where = f"{source} [services.{name}.exposes]"
    value = raw.get("exposes", {})
    if not isinstance(value, Mapping):
        raise TopologyError(
            f"{where} must be a table of table = [\"column\", ...] entries, got {value!r}.")
    out: list[tuple[str, tuple[str, ...]]] = []
    for table, raw_columns in value.items():
        validate_identifier(table, f"table name in {where}")
        entries = _string_list(raw_columns, f"{where} {table}")
        if not entries:
            raise TopologyError(
                f"{where} {table}: an empty column list exposes nothing; remove the entry.")
        columns: list[str] = []
        # A set beside the list: `in` on the list made loading quadratic in the number of
        # columns (200,000 took minutes).
        seen: set[str] = set()
        for entry in entries:
            column, marked = entry, entry.endswith(SECRET_OK_MARKER)
            if marked:
                column = entry[:-len(SECRET_OK_MARKER)]
            if column == "*":
                raise TopologyError(
                    f"{where} {table}: '*' is not allowed; list the columns readers need, "
                    "so that columns added later stay private.")
            validate_identifier(column, f"column of table {table!r} in {where}")
            if looks_secret(column) and not marked:
                raise TopologyError(
                    f"Service {name!r} exposes {table}.{column}, whose name looks like a "
                    f"secret (password, token, hash, key, salt...). Remove it from {where}, "
                    f"or, if readers really need it, mark it explicitly: "
                    f"{table} = [..., \"{column}{SECRET_OK_MARKER}\"].")
            if column in seen:
                raise TopologyError(f"{where} {table}: column {column!r} is listed twice.")
            seen.add(column)
            columns.append(column)
        out.append((table, tuple(columns)))
    return tuple(out)


def _first_duplicate(pairs: Iterable[tuple[str, str]]) -> tuple[str, str, str] | None:
    seen: dict[str, str] = {}
    for value, owner in pairs:
        if value in seen:
            return value, seen[value], owner
        seen[value] = owner
    return None


def _check_unique(topology: Topology, source: str) -> None:
    schemas = [(s.schema, f"service {s.name!r}") for s in topology.services]
    schemas.append((topology.shared.schema, "[shared]"))
    for schema, what in schemas:
        problem = platform_name_problem(schema, "schema")
        if problem:
            raise TopologyError(f"{source}: the schema of {what} is {problem}.")
    dup = _first_duplicate(schemas)
    if dup:
        raise TopologyError(f"{source}: schema {dup[0]!r} is used by both {dup[1]} and {dup[2]}; "
                            "every service needs a schema of its own.")
    roles: list[tuple[str, str]] = []
    for s in topology.services:
        roles.append((s.runtime_role, f"runtime_role of service {s.name!r}"))
        roles.append((s.owner_role, f"owner_role of service {s.name!r}"))
        roles.append((s.migrator_role, f"migrator_role of service {s.name!r}"))
    roles.append((topology.shared.owner_role, "[shared] owner_role"))
    for role, what in roles:
        problem = platform_name_problem(role, "role")
        if problem:
            raise TopologyError(f"{source}: {what} is {problem}.")
    dup = _first_duplicate(roles)
    if dup:
        raise TopologyError(f"{source}: role {dup[0]!r} is used as both {dup[1]} and {dup[2]}; "
                            "every role must be distinct so privileges stay separate.")
    apps = [(a, f"service {s.name!r}") for s in topology.services for a in s.django_apps]
    dup = _first_duplicate(apps)
    if dup:
        raise TopologyError(f"{source}: Django app {dup[0]!r} is claimed by both {dup[1]} and "
                            f"{dup[2]}; an app's tables live in exactly one schema.")


def load_topology(path: str | Path | None = None) -> Topology:
    """Load and validate a topology from a TOML file, or the default when *path* is None."""
    if path is None:
        return default_topology()
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TopologyError(
            f"Topology file {str(p)!r} does not exist. Check EDULINK_DB_TOPOLOGY / --topology."
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise TopologyError(f"Cannot read topology file {str(p)!r}: {exc}") from None
    return parse_topology(text, source=str(p))


def parse_topology(text: str, *, source: str = "topology") -> Topology:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise TopologyError(f"{source} is not valid TOML: {exc}") from None
    return Topology.from_mapping(data, source=source)


def default_topology_text() -> str:
    return (resources.files(__package__) / "default_topology.toml").read_text(encoding="utf-8")


def default_topology() -> Topology:
    """Edulink's six services with the seed's grants (``default_topology.toml``)."""
    return parse_topology(default_topology_text(), source="default topology")
