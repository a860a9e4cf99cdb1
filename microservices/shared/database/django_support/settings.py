"""Django integration: DATABASES generated from the topology (the router: :mod:`.router`).

The public path, which also re-exports :mod:`.router`'s names::

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
* With read replicas configured (``DATABASE_REPLICA_URLS``, see
  docs/high-availability.md), ``configure_service_database`` adds a read-only
  ``'replica'`` alias (``'replica_2'``... for more), which :mod:`.router` sends reads to
  when that is safe.

Supported: Django 4.2 LTS (the first with psycopg 3) to 6.1. Django's own pool
(``pool=True``) needs Django 5.1+.
"""

from __future__ import annotations

import os
from typing import Any

from ..config import (
    Settings,
    load_settings,
    pooler_mode,
    replica_conninfos,
    service_conninfo,
)
from ..core.errors import ConfigError, CrossServiceAccessError
from ..topology import Service

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
    # Under Patroni without DATABASE_REPLICA_URLS, the replica candidates are the
    # cluster's members, one of which is the leader at any time: a Django alias for
    # each would send the router's reads to a member that refuses them.
    patroni_members = settings.database_patroni_urls is not None \
        and settings.database_replica_urls is None \
        and not settings.service_override(svc, "REPLICA_URLS")
    if not migrate and not patroni_members:
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
    """Let the engine trace this alias's statements (backend/base.py reads TRACE_KEY)."""
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
