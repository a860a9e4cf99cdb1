"""Django integration: DATABASES and a router generated from the topology.

    from microservices.shared.database.django_settings import (
        configure_service_database,
        configure_cross_service_databases,
        get_database_router,
    )

    DATABASES = configure_service_database('user')
    DATABASES.update(configure_cross_service_databases('user', ['auth', 'institution']))
    DATABASE_ROUTERS = [get_database_router()]

* ``'default'`` logs in as the service's runtime role.  Its search_path comes
  from the role, so unqualified table names land in the service's schema, also
  behind a transaction pooler.
* ``manage.py migrate`` needs DDL, which runtime roles cannot do: run it with
  ``EDULINK_DB_DJANGO_MIGRATE=1`` (or ``configure_service_database(...,
  migrate=True)``).  ``'default'`` then logs in as the service's migrator role
  (``EDULINK_DB_<SERVICE>_MIGRATOR_PASSWORD`` or the generated one), whose
  role-level defaults make it the owner role with search_path set to its schema:
  tables get the right owner and schema, the runtime role gets its grants
  through default privileges, and the admin's credentials never reach Django.
* A cross-service alias (named after the other service) still logs in as the
  *requesting* service's role, so PostgreSQL's grants decide what it may read.
  It is a Django test mirror of ``'default'``: the same database.  Models of
  another service must name their table with its schema:
  ``db_table = service_table('user', 'profiles_userprofile')``.
* The router maps app labels to services (the topology's ``django_apps``,
  overridden by the ``EDULINK_DB_APP_SERVICES`` setting; an app in neither
  belongs to the ``'default'`` alias's service). Reads go to the owning service's
  alias. Writes to another service's data raise ``CrossServiceWriteError``, and
  PostgreSQL refuses them too. Relations are only allowed within one service, and
  each service migrates only its own apps, on its own alias.

* With read replicas configured (``DATABASE_REPLICA_URLS``, see
  docs/high-availability.md), ``configure_service_database`` adds a read-only
  ``'replica'`` alias (``'replica_2'``... for more).  The router sends a read there only
  when it is outside a transaction on ``'default'``, no write happened earlier in the
  request (read-your-writes: after a write, the rest of the request reads the primary;
  :class:`ReplicaPinningMiddleware` scopes that to one request, :func:`pin_to_primary`
  to a block of code, e.g. a background task) and the replica's replay lag is within
  ``DATABASE_REPLICA_MAX_LAG``; otherwise it reads ``'default'``.

Supported: Django 4.2 LTS (the first with psycopg 3) to 6.1. Django's own pool
(``pool=True``) needs Django 5.1+.
"""

from __future__ import annotations

import contextvars
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from ..config import (
    Settings,
    load_settings,
    pooler_mode,
    replica_conninfos,
    service_conninfo,
)
from ..core.errors import ConfigError, CrossServiceAccessError, CrossServiceWriteError
from ..topology import Service, Topology

SERVICE_KEY = "EDULINK_SERVICE"  # which service's data an alias reaches
READONLY_KEY = "EDULINK_READONLY"  # True for cross-service aliases
TRACE_KEY = "EDULINK_TRACE"  # span attributes, only when DATABASE_TRACING_ENABLED
REPLICA_KEY = "EDULINK_REPLICA"  # True for read-replica aliases of 'default'
# The service's credential file, which the engine re-reads for each new connection.
CREDENTIALS_KEY = "EDULINK_CREDENTIALS_FILE"
MIGRATE_ENV = "EDULINK_DB_DJANGO_MIGRATE"
APP_SERVICES_SETTING = "EDULINK_DB_APP_SERVICES"
_TRUE = {"1", "true", "yes", "on"}


def _settings(settings: Settings | None) -> Settings:
    return settings or load_settings()


def _django_version() -> tuple[int, int]:
    try:
        import django
    except ImportError:  # pragma: no cover - the [django] extra
        raise ConfigError("Django is not installed: pip install 'edulink-db[django]'") from None
    return django.VERSION[0], django.VERSION[1]


def service_table(service: str, table: str, *, settings: Settings | None = None) -> str:
    """A schema-qualified ``db_table`` for a model of *service* used by another service.

    Django passes a name that is already quoted through unchanged, so this
    reaches ``"user_schema"."profiles_userprofile"`` whatever role is logged in.
    """
    from ..core.identifiers import validate_identifier

    schema = _settings(settings).topology().service(service).schema
    validate_identifier(table, f"table name for service {service!r}")
    return f'"{schema}"."{table}"'


def _alias(params: dict[str, Any], *, service: str, readonly: bool,
           options: dict[str, Any], pool: bool | dict[str, Any]) -> dict[str, Any]:
    opts = dict(options)
    for key in ("sslmode", "sslrootcert"):  # verify-full needs both (core/tls.py)
        if params.get(key):
            opts[key] = params[key]
    if pool:
        if _django_version() < (5, 1):
            raise ConfigError("Django's connection pool (pool=True) needs Django 5.1 or "
                              "newer; drop pool= or upgrade Django.")
        opts["pool"] = pool if isinstance(pool, dict) else True
    return {
        "ENGINE": "microservices.shared.database.django_backend",
        "NAME": params.get("dbname", "postgres"),
        "USER": params.get("user", ""),
        "PASSWORD": params.get("password", ""),
        "HOST": params.get("host", ""),
        "PORT": str(params.get("port", "")),
        "OPTIONS": opts,
        # Django's pool requires CONN_MAX_AGE = 0; without it, connections are per request.
        "CONN_MAX_AGE": 0,
        SERVICE_KEY: service,
        READONLY_KEY: readonly,
    }


def configure_service_database(
    service: str,
    *,
    engine: str = "postgresql",
    pool: bool | dict[str, Any] = False,
    migrate: bool | None = None,
    settings: Settings | None = None,
) -> dict[str, dict[str, Any]]:
    """``{'default': ...}`` for *service*: its runtime role, or its owner role for
    ``migrate`` (default: the ``EDULINK_DB_DJANGO_MIGRATE`` environment variable).

    *pool* turns on Django's psycopg pool (True, or a dict of psycopg_pool
    arguments).  ``engine='mssql'`` emits settings for mssql-django instead.
    """
    settings = _settings(settings)
    svc = settings.topology().service(service)
    if engine == "mssql":
        return {"default": _mssql_alias(svc.name, svc.runtime_role, settings)}
    if engine != "postgresql":
        raise ConfigError(f"Unknown engine {engine!r}; use 'postgresql' or 'mssql'.")
    if migrate is None:
        migrate = os.environ.get(MIGRATE_ENV, "").strip().lower() in _TRUE
    options: dict[str, Any] = {}
    if migrate:
        # The owner switch and search_path are the migrator's role-level defaults
        # (provisioning sets them), so nothing here can be talked out of them.
        params = service_conninfo(svc, settings, kind="migrator")
        if pooler_mode(settings, params) == "transaction":
            raise ConfigError(
                "Django migrations need a direct connection: DATABASE_URL points at a "
                "transaction pooler (port 6543). Use the direct connection string.")
    else:
        params = service_conninfo(svc, settings)
        if pooler_mode(settings, params) == "transaction":
            # No server-side prepared statements behind a transaction pooler.
            options["prepare_threshold"] = None
    out = {"default": _alias(params, service=svc.name, readonly=False, options=options,
                             pool=pool)}
    if not migrate and settings.edulink_db_credentials_file is not None:
        out["default"][CREDENTIALS_KEY] = str(settings.edulink_db_credentials_file.expanduser())
    if not migrate:
        for index, replica in enumerate(replica_conninfos(svc, settings), 1):
            alias = _alias(replica, service=svc.name, readonly=True,
                           options={**options, "options": replica["options"],
                                    "target_session_attrs": replica["target_session_attrs"]},
                           pool=pool)
            alias[REPLICA_KEY] = True
            # Tests see one database: the replica alias mirrors 'default' there.
            alias["TEST"] = {"MIRROR": "default"}
            out["replica" if index == 1 else f"replica_{index}"] = alias
    if settings.database_tracing_enabled:
        for alias in out.values():
            _trace(alias, svc)
    return out


def _trace(alias: dict[str, Any], service: Service, **extra: str) -> None:
    """Let the engine trace this alias's statements (django_backend reads TRACE_KEY)."""
    from ..connections import tracing

    params = {"user": alias["USER"], "host": alias["HOST"], "port": alias["PORT"],
              "dbname": alias["NAME"]}
    alias[TRACE_KEY] = {**tracing.service_attributes(service, params), **extra}


def configure_cross_service_databases(
    service: str, targets: list[str], *, settings: Settings | None = None
) -> dict[str, dict[str, Any]]:
    """One read-only alias per service in *targets*, logged in as *service*'s role.

    Raises CrossServiceAccessError at settings time for a target the topology
    does not let *service* read.
    """
    settings = _settings(settings)
    topology = settings.topology()
    svc = topology.service(service)
    params = service_conninfo(svc, settings)
    options: dict[str, Any] = {}
    if pooler_mode(settings, params) == "transaction":
        options["prepare_threshold"] = None
    out: dict[str, dict[str, Any]] = {}
    for name in targets:
        target = topology.service(name)
        if target.name not in svc.reads:
            raise CrossServiceAccessError(
                f"Service {svc.name!r} may not read service {target.name!r} "
                f"({target.schema}): the topology grants it {', '.join(svc.reads) or 'none'}. "
                f"Add {target.name!r} to reads of [services.{svc.name}] if it should.")
        alias = _alias(params, service=target.name, readonly=True, options=options, pool=False)
        alias["TEST"] = {"MIRROR": "default"}  # the same database, seen through svc's role
        if settings.edulink_db_credentials_file is not None:
            alias[CREDENTIALS_KEY] = str(settings.edulink_db_credentials_file.expanduser())
        if settings.database_tracing_enabled:
            _trace(alias, svc, **{"edulink.reads": target.name})
        out[target.name] = alias
    return out


def _mssql_alias(service: str, user: str, settings: Settings) -> dict[str, Any]:
    host = settings.database_host or "localhost"
    return {
        "ENGINE": "mssql",
        "NAME": settings.database_name,
        "USER": user,
        "PASSWORD": settings.service_override(
            settings.topology().service(service), "PASSWORD") or "",
        "HOST": host,
        "PORT": str(settings.database_port if settings.database_port != 5432 else 1433),
        "OPTIONS": {"driver": "ODBC Driver 18 for SQL Server", "extra_params": "Encrypt=yes"},
        SERVICE_KEY: service,
        READONLY_KEY: False,
    }


# True once the current request (or pin_to_primary block) wrote: its reads then go to
# the primary, which has its writes; a replica may not have replayed them yet.
_pinned: contextvars.ContextVar[bool] = contextvars.ContextVar("edulink_db_pinned",
                                                               default=False)


@contextmanager
def pin_to_primary() -> Iterator[None]:
    """Within the block, every read goes to the primary (e.g. a background task that
    must see what it or the request that queued it just wrote)."""
    token = _pinned.set(True)
    try:
        yield
    finally:
        _pinned.reset(token)


class ReplicaPinningMiddleware:
    """Django middleware: each request starts unpinned, and a write pins the rest of
    that request to the primary.  Without it, a pin set by a write lasts for the rest
    of the thread's or task's context -- safe (reads the primary), but wasteful."""

    def __init__(self, get_response: Callable[[Any], Any]) -> None:
        self.get_response = get_response

    def __call__(self, request: Any) -> Any:
        token = _pinned.set(False)
        try:
            return self.get_response(request)
        finally:
            _pinned.reset(token)


class EdulinkRouter:
    """Django database router derived from the topology (a duck-typed router)."""

    def __init__(self, topology: Topology | None = None) -> None:
        self._topology = topology
        self._replicas: Any = None  # connections.replicas.ReplicaSet[str] of the aliases

    @property
    def topology(self) -> Topology:
        if self._topology is None:
            self._topology = load_settings().topology()
        return self._topology

    # -- lookups ----------------------------------------------------------------
    @staticmethod
    def _databases() -> dict[str, dict[str, Any]]:
        from django.conf import settings

        dbs: dict[str, dict[str, Any]] = settings.DATABASES
        return dbs

    def own_service(self) -> str | None:
        default = self._databases().get("default", {})
        service = default.get(SERVICE_KEY)
        return str(service) if service else None

    def app_service(self, app_label: str) -> str | None:
        from django.conf import settings

        overrides: dict[str, str] = getattr(settings, APP_SERVICES_SETTING, {}) or {}
        if app_label in overrides:
            return self.topology.service(overrides[app_label]).name
        for svc in self.topology.services:
            if app_label in svc.django_apps:
                return svc.name
        return self.own_service()  # an app nobody claims belongs to this project

    def alias_for(self, service: str | None) -> str | None:
        if service is None or service == self.own_service():
            return "default"
        for alias, conf in self._databases().items():
            if conf.get(SERVICE_KEY) == service:
                return alias
        return None

    def replica_alias(self) -> str | None:
        """A replica alias of 'default' that may serve a read now, else None."""
        if self._replicas is None:
            from ..connections.replicas import ReplicaSet

            aliases = [(name, conf) for name, conf in self._databases().items()
                       if conf.get(REPLICA_KEY)]
            entries = [({"host": c["HOST"], "port": c["PORT"], "dbname": c["NAME"],
                         "user": c["USER"], "password": c["PASSWORD"],
                         **{k: v for k, v in c["OPTIONS"].items()
                            if k in ("options", "sslmode", "sslrootcert",
                                     "target_session_attrs")}}, name)
                       for name, c in aliases]
            own = self.own_service()
            self._replicas = ReplicaSet(
                str(own), entries, load_settings().database_replica_max_lag,
                schema=None if own is None else self.topology.service(own).schema)
        if not self._replicas.replicas:
            return None
        chosen = self._replicas.choose()
        return None if chosen is None else str(chosen.pool)

    # -- Django's router protocol ----------------------------------------------------
    def db_for_read(self, model: Any, **hints: Any) -> str | None:
        service = self.app_service(model._meta.app_label)
        alias = self.alias_for(service)
        if alias is None:
            raise CrossServiceAccessError(
                f"{model._meta.label} belongs to service {service!r}, which this project "
                f"({self.own_service()!r}) has no database alias for: add it with "
                f"configure_cross_service_databases({self.own_service()!r}, [{service!r}]).")
        if alias == "default" and not _pinned.get():
            from django.db import connections

            # Inside atomic() the transaction must see its own writes and one snapshot.
            if not connections["default"].in_atomic_block:
                return self.replica_alias() or alias
        return alias

    def db_for_write(self, model: Any, **hints: Any) -> str | None:
        service = self.app_service(model._meta.app_label)
        own = self.own_service()
        if service is not None and own is not None and service != own:
            raise CrossServiceWriteError(
                f"Service {own!r} may not write {model._meta.label}: it belongs to service "
                f"{service!r} ({self.topology.service(service).schema}). Ask that service "
                "to make the change.")
        _pinned.set(True)  # read-your-writes: the rest of the request reads the primary
        return "default"

    def allow_relation(self, obj1: Any, obj2: Any, **hints: Any) -> bool | None:
        return bool(self.app_service(obj1._meta.app_label)
                    == self.app_service(obj2._meta.app_label))

    def allow_migrate(self, db: str, app_label: str, model_name: str | None = None,
                      **hints: Any) -> bool | None:
        # `migrate` asks the router before its post_migrate signal fires; connecting
        # here (not in __init__, which runs while settings are imported) keeps Django's
        # models out of settings time.  The dispatch_uid makes it once per process.
        from django.db.models.signals import post_migrate

        post_migrate.connect(_grant_exposure_after_migrate,
                             dispatch_uid="edulink-db:grant-exposed-columns")
        conf = self._databases().get(db, {})
        if conf.get(READONLY_KEY):
            return False
        alias_service = conf.get(SERVICE_KEY) or self.own_service()
        return bool(self.app_service(app_label) == alias_service)


def _grant_exposure_after_migrate(sender: Any, using: str = "default", **kwargs: Any) -> None:
    """After ``migrate`` as a service's migrator: give the services that read it the
    exposed columns of the tables Django just created (provisioning ran before they
    existed), as edulink-db's own migration runner does after every file."""
    from django.db import connections

    from ..migrations.runner import grant_exposed_columns

    conn = connections[using]
    user = conn.settings_dict.get("USER")
    topology = load_settings().topology()
    service = next((s for s in topology.services if s.migrator_role == user), None)
    if service is None:  # not a migrator login: nothing of ours to grant
        return
    conn.ensure_connection()
    grant_exposed_columns(conn.connection, topology, service)


def get_database_router() -> EdulinkRouter:
    """The router for ``DATABASE_ROUTERS`` (an instance; Django accepts those)."""
    return EdulinkRouter()
