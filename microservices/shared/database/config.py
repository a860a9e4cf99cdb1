"""Settings and connection targets.

Settings come from the environment and a ``.env`` file in the working
directory, the environment winning (pydantic-settings' precedence).  Every
variable of the seed's ``.env`` example is understood.

Connection targets, in order of precedence:

1. ``DATABASE_URL`` -- the admin (provisioning) connection;
2. ``DATABASE_HOST`` with ``DATABASE_PORT/NAME/USER/PASSWORD``;
3. otherwise the embedded PostgreSQL started by ``edulink-db up`` in the
   project's home directory (``EDULINK_DB_HOME``, default ``./.edulink-db``
   found in the working directory or any parent).

Services never use the admin credentials: :func:`service_conninfo` swaps in
the service's runtime role and its password (``EDULINK_DB_<SERVICE>_PASSWORD``,
else the generated one in ``<home>/secrets.json``), or takes a whole
``EDULINK_DB_<SERVICE>_URL`` for a service that lives on another server.
Migrations log in as the service's migrator role the same way
(``EDULINK_DB_<SERVICE>_MIGRATOR_PASSWORD`` / ``_MIGRATOR_URL``).

Passwords are held as ``SecretStr`` and masked by :func:`mask_dsn` wherever a
DSN is shown.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote, unquote, urlsplit

from dotenv import dotenv_values
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from .core import credentials
from .core.errors import ConfigError, DatabaseNotRunningError
from .core.secrets_store import SecretStore
from .core.tls import with_tls
from .topology import Service, Topology, load_topology

HOME_DIR_NAME = ".edulink-db"
MASK = "****"
PoolerMode = Literal["auto", "none", "session", "transaction"]
SUPABASE_TRANSACTION_POOLER_PORT = 6543


class Settings(BaseSettings):
    """Configuration of edulink-db, read from the environment and ``.env``."""

    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", case_sensitive=False
    )

    # Supabase project settings (used by services; kept here so one .env serves all).
    supabase_url: str | None = None
    supabase_anon_key: SecretStr | None = None
    supabase_service_role_key: SecretStr | None = None

    # Admin connection, used to provision, migrate and back up.
    database_url: SecretStr | None = None
    database_host: str | None = None
    database_port: int = Field(5432, ge=1, le=65535)
    database_name: str = "postgres"
    database_user: str = "postgres"
    database_password: SecretStr | None = None
    database_sslmode: str | None = Field(
        None, description="libpq sslmode; default 'require' for non-loopback hosts"
    )
    database_sslrootcert: Path | None = Field(
        None, description="root certificate (PEM): every connection then uses verify-full")

    # Pools (one per service and process).  Unset: sized from the connection budget
    # (connections/budget.py), so that every process of a service fits its role's limit.
    database_pool_size: int | None = Field(None, ge=1, description="min connections")
    database_max_overflow: int | None = Field(None, ge=0, description="beyond min")
    edulink_db_processes_per_service: int = Field(
        2, ge=1, description="processes per service, each with its own pool")
    database_pool_timeout: float = Field(30.0, gt=0)
    database_pool_max_lifetime: float = Field(3600.0, gt=0)
    database_pool_check: bool = False
    database_pooler: PoolerMode = "auto"

    # Read replicas (see connections/replicas.py): comma-separated libpq URLs with the
    # admin's credentials, from which each service's are derived as for DATABASE_URL.
    # A service may list its own with EDULINK_DB_<SERVICE>_REPLICA_URLS.
    database_replica_urls: SecretStr | None = None
    database_replica_max_lag: float = Field(
        5.0, ge=0, description="seconds of replay lag beyond which a replica is skipped")

    # Patroni (connections/patroni.py): comma-separated REST API endpoints of the cluster's
    # members, http(s)://HOST:PORT each (Patroni's restapi.listen, default port 8008),
    # optionally with basic-auth credentials (http://USER:PASSWORD@HOST:PORT), never shown.
    database_patroni_urls: SecretStr | None = None
    # 5 s: Patroni writes members' WAL positions to the DCS once per HA loop (loop_wait,
    # default 10 s), and 3.0.2's GET /cluster reads the DCS on every request; a failover is
    # noticed sooner anyway, through refresh() after a connection error.
    database_patroni_refresh_interval: float = Field(
        5.0, gt=0, le=3600, description="seconds between two reads of GET /cluster (±20%)")
    # 16 MiB, one default WAL segment: /cluster's lag compares two positions each sampled
    # once per HA loop, so a healthy replica of a busy primary may show a few MiB.
    database_patroni_max_lag_bytes: int | None = Field(
        16 * 1024 * 1024, ge=0,
        description="replay lag in bytes beyond which a replica is skipped; 'none': no limit")
    database_patroni_timeout: float = Field(
        1.0, gt=0, le=60, description="seconds per REST request (connect, then each read)")

    # Migrations.
    database_migration_lock_timeout: str = Field(
        "2s", pattern=r"^\d+(us|ms|s|min|h)?$",
        description="lock_timeout of migration transactions (a failed file is retried)")
    database_migration_statement_timeout: str = Field(
        "15min", pattern=r"^\d+(us|ms|s|min|h)?$")
    database_migration_lock_wait: float = Field(
        300.0, gt=0, description="seconds to wait for another process migrating a schema")

    # Monitoring (thresholds in the spirit of PgHero's defaults).
    database_monitoring_enabled: bool = True
    # OpenTelemetry spans per statement (connections/tracing.py); needs the [tracing] extra.
    database_tracing_enabled: bool = False
    database_slow_query_log_ms: float = Field(500.0, gt=0, description="log statements slower")
    database_slow_statement_ms: float = Field(20.0, gt=0, description="pg_stat_statements mean")
    database_slow_statement_min_calls: int = Field(100, ge=1)
    database_long_query_seconds: float = Field(60.0, gt=0)
    database_idle_in_transaction_seconds: float = Field(60.0, gt=0)
    database_connections_warn_ratio: float = Field(0.8, gt=0, le=1)
    database_cache_hit_min: float = Field(0.99, ge=0, le=1)
    database_xid_age_warn: int = Field(500_000_000, gt=0)
    database_dead_tuple_ratio: float = Field(0.2, gt=0, le=1)
    database_permission_error_threshold: int = Field(5, ge=1)
    # Minimum samples before a ratio is judged (PgHero-style): a fresh database has read
    # a few hundred blocks, and 0.988 of those says nothing about its cache.
    database_cache_hit_min_blocks: int = Field(
        10_000, ge=0, description="block reads (hit + read) before the cache hit ratio counts")

    # Backups.
    edulink_db_backup_dir: Path | None = None
    edulink_db_backup_verify: Literal["none", "basic", "deep"] = "none"
    edulink_db_backup_keep_last: int = Field(7, ge=1)
    edulink_db_backup_keep_days: float = Field(30.0, ge=0)
    edulink_db_backup_max_age_hours: float = Field(26.0, gt=0)
    # Which server a backup reads (backup/source.py): the primary, or a standby to keep
    # pg_dump's reads off the primary (the primary when no standby answers).
    edulink_db_backup_from: Literal["primary", "replica"] = "primary"
    # How long 'backup auto' keeps retrying when the server goes away (a failover, a
    # restart): longer than the failover manager needs to promote (Patroni: ttl + a loop).
    edulink_db_backup_retry_for: float = Field(
        120.0, ge=0, description="seconds 'backup auto' retries across a server outage")
    # Backup policy, signing and drills (see schedule.py; intervals like "24h", "90m",
    # "off"; a service's schema may override: EDULINK_DB_<SERVICE>_BACKUP_SCHEMA_EVERY).
    edulink_db_backup_full_every: str = Field(
        "24h", pattern=r"^\s*(off|\d+(\.\d+)?\s*(s|m|min|h|d)?)\s*$")
    edulink_db_backup_schema_every: str = Field(
        "1h", pattern=r"^\s*(off|\d+(\.\d+)?\s*(s|m|min|h|d)?)\s*$")
    edulink_db_backup_key: SecretStr | None = Field(
        None, description="HMAC key signing backup manifests (else generated into secrets)")
    edulink_db_drill_url: SecretStr | None = Field(
        None, description="server for 'backups drill' scratch databases (default: the admin's)")
    # Admin URLs of the servers moved services live on (comma-separated), matched to the
    # location registry by host, port and dbname; else move-service's saved credential.
    edulink_db_location_admin_urls: SecretStr | None = Field(
        None, description="admin URLs of moved services' servers, for backups and restores")

    # edulink-db itself.
    edulink_db_topology: Path | None = None
    edulink_db_home: Path | None = None
    edulink_db_migrations: Path | None = None
    # A service process's own credential (core/credentials.py), and which service it is.
    edulink_db_credentials_file: Path | None = None
    edulink_db_service: str | None = None

    def __repr_args__(self) -> Any:
        # DATABASE_URL shows as a masked URL (host and user stay readable), instead of
        # SecretStr's opaque '**********'.
        for key, value in super().__repr_args__():
            if key == "database_url" and value is not None:
                yield key, mask_dsn(value.get_secret_value())
            elif key in ("database_replica_urls", "edulink_db_location_admin_urls") and (
                    value is not None):
                yield key, ",".join(mask_dsn(u) for u in split_urls(value.get_secret_value()))
            elif key == "database_patroni_urls" and value is not None:
                yield key, mask_http_urls(value.get_secret_value())
            else:
                yield key, value

    @field_validator("database_patroni_urls")
    @classmethod
    def _check_patroni_urls(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value().strip():
            return None  # DATABASE_PATRONI_URLS= (empty): no Patroni
        try:
            parse_patroni_urls(value.get_secret_value())
        except ConfigError as exc:  # pydantic wants a ValueError; load_settings names it
            raise ValueError(str(exc).removeprefix("DATABASE_PATRONI_URLS: ").rstrip(".")
                             ) from None
        return value

    @field_validator("database_patroni_max_lag_bytes", mode="before")
    @classmethod
    def _no_lag_limit(cls, value: Any) -> Any:
        if isinstance(value, str) and value.strip().lower() in ("", "none", "off"):
            return None
        return value

    # -- derived --------------------------------------------------------
    @property
    def home(self) -> Path:
        """The project's edulink-db directory (embedded data, secrets, backups)."""
        if self.edulink_db_home is not None:
            return self.edulink_db_home.expanduser().resolve()
        return find_home(Path.cwd())

    @property
    def secret_store(self) -> SecretStore:
        return SecretStore(self.home / "secrets.json")

    @property
    def uses_embedded(self) -> bool:
        return self.database_url is None and self.database_host is None

    def topology(self) -> Topology:
        return load_topology(self.edulink_db_topology)

    def service_override(self, service: Service, key: str) -> str | None:
        """``EDULINK_DB_<SERVICE>_<KEY>`` from the environment, else from ``.env``."""
        name = f"EDULINK_DB_{service.name.upper()}_{key}"
        if name in os.environ:
            return os.environ[name]
        return _dotenv().get(name)


@lru_cache(maxsize=1)
def _dotenv() -> dict[str, str]:
    path = Path(".env")
    if not path.is_file():
        return {}
    return {k: v for k, v in dotenv_values(path).items() if v is not None}


def find_home(start: Path) -> Path:
    """The nearest ``.edulink-db`` directory at or above *start*, else ``start/.edulink-db``.

    Walking up lets a service started from a subdirectory of the project find
    the embedded database that ``edulink-db up`` started at the top.
    """
    start = start.resolve()
    for directory in (start, *start.parents):
        candidate = directory / HOME_DIR_NAME
        try:
            if (candidate / "state.json").is_file():
                return candidate
        except OSError:  # e.g. another user's unreadable .edulink-db in /tmp: not ours
            continue
    return start / HOME_DIR_NAME


def load_settings(**overrides: Any) -> Settings:
    """Read settings, turning validation failures into a ConfigError.

    The message names each bad variable and what was expected; it never echoes
    the value, which might be a secret.
    """
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']).upper()}: {err['msg']}"
            for err in exc.errors(include_input=False, include_url=False)
        )
        raise ConfigError(f"Invalid settings: {problems}.") from None


# -- DSNs ------------------------------------------------------------------


def mask_dsn(dsn: str | dict[str, Any]) -> str:
    """Render a DSN (URL, key=value string or dict) with its password masked."""
    try:
        params = dict(conninfo_to_dict(dsn)) if isinstance(dsn, str) else dict(dsn)
    except Exception:  # an unparseable DSN may still contain a password: show nothing
        return "<unparseable connection string>"
    if params.get("password"):
        params["password"] = MASK
    return to_url(params)


def to_url(params: dict[str, Any]) -> str:
    """Render connection parameters as a postgresql:// URL."""
    user = quote(str(params.get("user", "")), safe="")
    password = params.get("password")
    auth = f"{user}:{quote(str(password), safe='*')}@" if password else (f"{user}@" if user else "")
    # libpq's multi-host form: host=a,b port=p1,p2 is postgresql://a:p1,b:p2/ (one port
    # for all hosts applies to each).
    hosts = str(params.get("host", "")).split(",")
    ports = str(params.get("port", "") or "").split(",")
    if len(ports) == 1:
        ports = ports * len(hosts)
    netloc = []
    for h, p in zip(hosts, ports, strict=False):
        h = f"[{h}]" if ":" in h and not h.startswith("[") else h
        netloc.append(f"{h}:{p}" if p else h)
    host, port = ",".join(netloc), ""
    dbname = quote(str(params.get("dbname", "")), safe="")
    core = {"user", "password", "host", "port", "dbname"}
    rest = {k: v for k, v in params.items() if k not in core}
    query = "&".join(f"{k}={quote(str(v), safe='')}" for k, v in sorted(rest.items()))
    return f"postgresql://{auth}{host}{port}/{dbname}" + (f"?{query}" if query else "")


def apply_tls(params: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """*params* with the TLS settings (core/tls.py): every conninfo passes through here."""
    return with_tls(params, sslmode=settings.database_sslmode,
                    rootcert=settings.database_sslrootcert)


def admin_conninfo(settings: Settings | None = None) -> dict[str, Any]:
    """Connection parameters for the admin (provisioning) role."""
    settings = settings or load_settings()
    if settings.database_url is not None:
        try:
            params = dict(conninfo_to_dict(settings.database_url.get_secret_value()))
        except Exception:
            raise ConfigError(
                "DATABASE_URL is not a valid PostgreSQL connection string; expected "
                "postgresql://USER:PASSWORD@HOST:PORT/DBNAME"
            ) from None
    elif settings.database_host is not None:
        params = {
            "host": settings.database_host,
            "port": str(settings.database_port),
            "dbname": settings.database_name,
            "user": settings.database_user,
        }
        if settings.database_password is not None:
            params["password"] = settings.database_password.get_secret_value()
    else:
        from .server.embedded import EmbeddedServer  # local import: avoids a cycle

        server = EmbeddedServer(settings.home)
        info = server.running_info()
        if info is None:
            raise DatabaseNotRunningError(
                "No database is configured (DATABASE_URL / DATABASE_HOST are unset) and the "
                f"embedded PostgreSQL in {settings.home} is not running. Start it with "
                "'edulink-db up', or set DATABASE_URL."
            )
        # Our own server on loopback, built without TLS: DATABASE_SSLROOTCERT and
        # DATABASE_SSLMODE are for the configured server they sit next to in .env.
        return server.admin_params(info)
    return apply_tls(params, settings)


def service_user_name(admin_user: str, role: str) -> str:
    """The login name for *role* on the same server as *admin_user*.

    Supavisor identifies the tenant by a ``.<project-ref>`` suffix on the user
    name (``postgres.abcd``); services must keep it (``user_service_role.abcd``).
    Role names cannot contain dots (identifier validation), so this is unambiguous.
    """
    if "." in admin_user:
        return f"{role}.{admin_user.split('.', 1)[1]}"
    return role


# Which of a service's two LOGIN roles a connection is for: the runtime role the
# service's processes use, or the migrator that migrations use.
LoginKind = Literal["runtime", "migrator"]


def login_role(service: Service, kind: LoginKind = "runtime") -> str:
    """The LOGIN role of *service* for *kind*."""
    return service.migrator_role if kind == "migrator" else service.runtime_role


def login_override_key(kind: LoginKind, key: str) -> str:
    """The suffix of a per-service variable: ``PASSWORD`` or ``MIGRATOR_PASSWORD`` etc."""
    return f"MIGRATOR_{key}" if kind == "migrator" else key


def service_password_key(service: Service, kind: LoginKind = "runtime") -> str:
    """The secrets-store key of the generated password of *service*'s *kind* role."""
    return f"service:{login_role(service, kind)}"


def service_conninfo(service: Service, settings: Settings | None = None, *,
                     kind: LoginKind = "runtime") -> dict[str, Any]:
    """Connection parameters for *service*'s runtime role (or its migrator).

    ``EDULINK_DB_<SERVICE>_URL`` / ``_PASSWORD`` configure the runtime role,
    ``EDULINK_DB_<SERVICE>_MIGRATOR_URL`` / ``_MIGRATOR_PASSWORD`` the migrator.
    """
    settings = settings or load_settings()
    own = own_credential(service, settings) if kind == "runtime" else None
    if own is not None:
        params = apply_tls(dict(own.params), settings)
        if (params.get("sslmode") in ("verify-ca", "verify-full")
                and not params.get("sslrootcert")):
            raise ConfigError(
                f"The credential of service {service.name!r} asks for a verified server "
                f"(sslmode={params['sslmode']}): set DATABASE_SSLROOTCERT on this host to "
                "the server's root certificate (docs/tls.md).")
        return params
    variable = f"EDULINK_DB_{service.name.upper()}_{login_override_key(kind, 'URL')}"
    url = settings.service_override(service, login_override_key(kind, "URL"))
    if url:
        try:
            params = dict(conninfo_to_dict(url))
        except Exception:
            raise ConfigError(f"{variable} is not a valid connection string.") from None
        return apply_tls(params, settings)
    password = settings.service_override(
        service, login_override_key(kind, "PASSWORD")) or settings.secret_store.get(
        service_password_key(service, kind))
    if password is None:
        raise ConfigError(
            f"No password for {login_role(service, kind)}: set EDULINK_DB_"
            f"{service.name.upper()}_{login_override_key(kind, 'PASSWORD')}, or run "
            f"'edulink-db provision' to generate one into {settings.secret_store.path}."
        )
    return derive_service_conninfo(admin_conninfo(settings), service, password, kind=kind)


def own_credential(service: Service, settings: Settings) -> credentials.Credential | None:
    """*service*'s credential from ``EDULINK_DB_CREDENTIALS_FILE`` (None when unset).

    A process that says which service it is (``EDULINK_DB_SERVICE``) or holds a
    credential file is that service only: asking for another one is a ConfigError."""
    claimed = settings.edulink_db_service
    claimed = settings.topology().service(claimed).name if claimed else None
    path = settings.edulink_db_credentials_file
    if path is None:
        if claimed is not None and claimed != service.name:
            raise ConfigError(
                f"{credentials.SERVICE_ENV}={claimed} says this process is service "
                f"{claimed!r}; it cannot connect as service {service.name!r}.")
        return None
    credential = credentials.load(path.expanduser())
    owner = settings.topology().service(credential.service).name
    credentials.check_service(
        credentials.Credential(owner, credential.params), path, service.name, claimed)
    return credential


def password_source(service: Service, settings: Settings) -> Callable[[], str | None] | None:
    """Reads *service*'s runtime password again from where it came from -- the credential
    file or the secrets store -- so that a pool's next connection after a rotation uses
    the new one; None when the process cannot see it change (environment variables,
    ``.env``, a whole ``EDULINK_DB_<SERVICE>_URL``)."""
    if settings.edulink_db_credentials_file is not None:
        path = settings.edulink_db_credentials_file.expanduser()
        return lambda: credentials.load(path).params.get("password")
    if settings.service_override(service, "URL") or settings.service_override(
            service, "PASSWORD"):
        return None
    store, key = settings.secret_store, service_password_key(service)
    return lambda: store.get(key)


def derive_service_conninfo(
    admin: dict[str, Any], service: Service, password: str, *, kind: LoginKind = "runtime"
) -> dict[str, Any]:
    """The admin's connection parameters with the service's role and password swapped in."""
    params = dict(admin)
    params["user"] = service_user_name(str(params.get("user", "")), login_role(service, kind))
    params["password"] = password
    return params


def pooler_mode(settings: Settings, params: dict[str, Any]) -> str:
    """'none', 'session' or 'transaction': what sits between services and PostgreSQL.

    ``auto`` means ``transaction`` on port 6543 (Supabase's transaction pooler)
    and ``none`` otherwise.
    """
    if settings.database_pooler != "auto":
        return settings.database_pooler
    port = str(params.get("port", "5432")).split(",")[0]
    return "transaction" if port == str(SUPABASE_TRANSACTION_POOLER_PORT) else "none"


def conninfo_string(params: dict[str, Any]) -> str:
    return make_conninfo(**{k: str(v) for k, v in params.items()})



# -- read replicas ---------------------------------------------------------------

# Replica connections are read-only from their first statement: as a startup option,
# which a session-mode pooler passes on and no RESET ALL / DISCARD ALL can undo
# (a SET after connecting would be lost when a pooler swaps the server connection).
REPLICA_OPTIONS = "-c default_transaction_read_only=on"


def split_urls(text: str) -> list[str]:
    """The URLs of a comma-separated list.

    A multi-host URL has commas of its own (``postgresql://u@a:5432,b:5432/db``), so
    the list is split only before a ``postgresql://`` / ``postgres://`` scheme (or a
    key=value conninfo's ``host=``)."""
    import re

    parts = re.split(r",\s*(?=postgres(?:ql)?://|host=)", text.strip())
    return [p.strip() for p in parts if p.strip()]


def _read_only_params(params: dict[str, Any], variable: str = "DATABASE_REPLICA_URLS"
                      ) -> dict[str, Any]:
    """*params* made safe for replica reads: read-only sessions, and only on a standby.

    ``target_session_attrs=standby`` makes libpq refuse a server that is not in
    recovery (a primary listed by mistake, or a replica promoted since): a session
    there could ``SET default_transaction_read_only = off`` and write.  libpq's
    ``read-only`` would not do: our own ``default_transaction_read_only=on`` makes a
    primary's sessions count as read-only."""
    out = dict(params)
    options = str(out.get("options", "")).strip()
    out["options"] = f"{options} {REPLICA_OPTIONS}".strip() if options else REPLICA_OPTIONS
    wanted = str(out.get("target_session_attrs", "")).strip()
    if wanted in ("read-write", "primary"):
        raise ConfigError(
            f"{variable}: target_session_attrs={wanted} asks for a primary, but these are "
            "read replicas; drop it (edulink-db sets target_session_attrs=standby).")
    out["target_session_attrs"] = "standby"
    return out


def _check_url_parts(params: dict[str, Any], variable: str, index: int) -> None:
    """Refuse an entry whose host, port or database name holds what looks like part of
    a password (an unescaped ``@``, ``/`` or ``:`` in the password splits the URL at
    the wrong place).  The message names the part, never its value."""
    hosts = str(params.get("host", "") or "").split(",")
    ports = [p for p in str(params.get("port", "") or "").split(",") if p]
    bad = None
    if any("@" in h or ("/" in h and not h.startswith("/")) for h in hosts):
        bad = "a host name contains '@' or '/'"
    elif any(not p.strip().isdigit() or not 0 < int(p) < 65536 for p in ports):
        bad = "a port is not a number from 1 to 65535"
    elif "," in str(params.get("dbname", "") or ""):
        # "postgresql://u@a/db,b:5432": the list continues with something that is not
        # a URL, and would silently become part of the database name.
        bad = "the database name contains ',': each entry must be a whole postgresql:// URL"
    elif any(c in str(params.get("dbname", "") or "") for c in "@/"):
        bad = "the database name contains '@' or '/'"
    if bad is not None:
        raise ConfigError(
            f"{variable}: entry {index} is not a usable connection URL ({bad}). If the "
            "password has special "
            "characters, percent-encode them (@ as %40, / as %2F, : as %3A, # as %23); "
            "expected postgresql://USER:PASSWORD@HOST:PORT/DBNAME, comma-separated.")


def _parse_replica_urls(text: str, variable: str) -> list[dict[str, Any]]:
    out = []
    for index, url in enumerate(split_urls(text), 1):
        try:
            out.append(dict(conninfo_to_dict(url)))
        except Exception:  # the message must not echo the URL: it holds a password
            raise ConfigError(
                f"{variable}: entry {index} is not a valid PostgreSQL connection string; "
                "expected postgresql://USER:PASSWORD@HOST:PORT/DBNAME, comma-separated."
            ) from None
        _check_url_parts(out[-1], variable, index)
    return out


def parse_connection_urls(text: str, variable: str) -> list[dict[str, Any]]:
    """The connection parameters of each comma-separated URL in *text* (the value of
    the setting *variable*), as written.  Raises ConfigError naming *variable* and the
    entry's position, never the URL (it holds a password)."""
    return _parse_replica_urls(text, variable)


def replica_admin_conninfos(settings: Settings | None = None) -> list[dict[str, Any]]:
    """The parameters of each DATABASE_REPLICA_URLS entry as written (admin
    credentials), read-only; ``[]`` when none are configured."""
    settings = settings or load_settings()
    if settings.database_replica_urls is None:
        if settings.database_patroni_urls is not None and settings.database_url is not None:
            return [_read_only_params(p) for p in member_conninfos(admin_conninfo(settings))]
        return []
    return [_read_only_params(apply_tls(p, settings)) for p in _parse_replica_urls(
        settings.database_replica_urls.get_secret_value(), "DATABASE_REPLICA_URLS")]


def member_conninfos(params: dict[str, Any]) -> list[dict[str, Any]]:
    """One set of parameters per host of a multi-host *params* (a Patroni cluster's
    members in DATABASE_URL), without its ``target_session_attrs``: under Patroni every
    member may serve replica reads while it is a replica."""
    base = {k: v for k, v in params.items()
            if k not in ("host", "port", "hostaddr", "target_session_attrs")}
    return [{**base, "host": h, "port": p} for h, p in host_ports(params)]


def replica_conninfos(service: Service, settings: Settings | None = None) -> list[dict[str, Any]]:
    """Read-only connection parameters of *service*'s runtime role on each replica.

    ``EDULINK_DB_<SERVICE>_REPLICA_URLS`` (whole URLs, the service's own credentials)
    wins; otherwise each ``DATABASE_REPLICA_URLS`` entry with the service's role and
    password swapped in, as :func:`service_conninfo` does for the primary.  ``[]`` when
    neither is set.  Every set of parameters carries ``default_transaction_read_only``.
    """
    settings = settings or load_settings()
    own = settings.service_override(service, "REPLICA_URLS")
    if own:
        variable = f"EDULINK_DB_{service.name.upper()}_REPLICA_URLS"
        return [_read_only_params(apply_tls(p, settings), variable)
                for p in _parse_replica_urls(own, variable)]
    if settings.service_override(service, "URL") or own_credential(service, settings):
        # A process with its own credential has no admin's replica URLs to derive from.
        # The service lives on a server of its own: DATABASE_REPLICA_URLS replicate the
        # shared primary, not that server, and reading there would return other data.
        return []
    admins = replica_admin_conninfos(settings)
    if not admins:
        return []
    password = settings.service_override(service, "PASSWORD") or settings.secret_store.get(
        service_password_key(service))
    if password is None:
        raise ConfigError(
            f"No password for {service.runtime_role} on the read replicas: set EDULINK_DB_"
            f"{service.name.upper()}_PASSWORD or EDULINK_DB_{service.name.upper()}"
            "_REPLICA_URLS, or run 'edulink-db provision' to generate one.")
    return [derive_service_conninfo(a, service, password) for a in admins]


def host_ports(params: dict[str, Any]) -> list[tuple[str, str]]:
    """Each (host, port) of a connection target, several for a multi-host one (a single
    port applies to every host, as in libpq)."""
    hosts = str(params.get("host", "") or "localhost").split(",")
    ports = str(params.get("port", "") or "5432").split(",")
    if len(ports) == 1:
        ports = ports * len(hosts)
    return list(zip(hosts, ports, strict=False))


def host_label(params: dict[str, Any]) -> str:
    """``host:port`` of a connection target (several, comma-separated, for a multi-host
    one): what logs and health output name a server by -- never a user or password."""
    return ",".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in host_ports(params))


# -- Patroni REST endpoints ------------------------------------------------------


@dataclass(frozen=True)
class PatroniEndpoint:
    """One Patroni REST API endpoint: ``url`` is ``scheme://host:port`` without the
    credentials (what logs and errors name it by); ``username``/``password`` are the
    basic-auth credentials of the URL, if any, and never part of a repr."""

    url: str
    username: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)

    @property
    def masked(self) -> str:
        """The URL as configured, with the password shown as ``****``."""
        if self.username is None:
            return self.url
        scheme, rest = self.url.split("://", 1)
        secret = f":{MASK}" if self.password is not None else ""
        return f"{scheme}://{quote(self.username, safe='')}{secret}@{rest}"


def parse_patroni_url(text: str, variable: str = "DATABASE_PATRONI_URLS",
                      index: int = 1) -> PatroniEndpoint:
    """*text* as a Patroni REST endpoint, ``http(s)://[USER:PASSWORD@]HOST:PORT``.

    Raises ConfigError naming *variable*, the entry's position and what is wrong; never
    the entry itself (it may hold a password)."""
    def bad(why: str) -> ConfigError:
        return ConfigError(
            f"{variable}: entry {index} is not a Patroni REST endpoint ({why}); expected "
            "http://HOST:PORT or https://HOST:PORT (Patroni's restapi.listen, default port "
            "8008), optionally http://USER:PASSWORD@HOST:PORT with special characters of the "
            "password percent-encoded, comma-separated.")

    text = text.strip()
    if not text or any(c.isspace() for c in text):
        raise bad("empty, or contains spaces")
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        raise bad("the port is not a number from 0 to 65535, or a bracket is unbalanced"
                  ) from None
    if parts.scheme not in ("http", "https"):
        raise bad("the scheme must be http or https")
    if not parts.hostname:
        raise bad("no host")
    if port is None or port == 0:
        raise bad("no port")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise bad("a path, query or fragment: give the endpoint only, /cluster is added")
    if "@" in parts.hostname or "/" in parts.hostname:
        raise bad("the host contains '@' or '/': percent-encode them in the password")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return PatroniEndpoint(
        f"{parts.scheme}://{host}:{port}",
        None if parts.username is None else unquote(parts.username),
        None if parts.password is None else unquote(parts.password))


def parse_patroni_urls(text: str, variable: str = "DATABASE_PATRONI_URLS"
                       ) -> list[PatroniEndpoint]:
    """Each comma-separated endpoint of *text* (see :func:`parse_patroni_url`), in order,
    repeats dropped.  Raises ConfigError when there is none."""
    out: list[PatroniEndpoint] = []
    entries = text.split(",")
    for index, entry in enumerate(entries, 1):
        if not entry.strip() and len(entries) > 1 and index == len(entries):
            continue  # a trailing comma
        endpoint = parse_patroni_url(entry, variable, index)
        if endpoint not in out:
            out.append(endpoint)
    return out


def mask_http_urls(text: str) -> str:
    """The comma-separated endpoints of *text* with passwords masked (for reprs)."""
    try:
        return ",".join(e.masked for e in parse_patroni_urls(text))
    except ConfigError:  # an unparseable entry may still contain a password: show nothing
        return "<unparseable Patroni URLs>"
