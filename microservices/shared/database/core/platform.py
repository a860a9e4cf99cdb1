"""Schemas and roles that belong to the hosting platform, not to the project.

Supabase puts its own services' data in the project's database (auth, storage,
realtime, ...). They are the platform's to back up and restore: a dump of them does
not restore into a plain PostgreSQL (their owners, extensions and event triggers are
Supabase's), so a full backup that includes them fails its drill, verify and
restore. This is the one list of them; backups and anything else that must tell the
project's schemas from the platform's use :func:`is_platform_schema`.

Roles are cluster-wide: Supabase's ``supautils`` extension refuses changes to its
reserved roles (``supautils.reserved_roles`` in supabase/postgres' configuration:
supabase_admin, supabase_auth_admin, supabase_storage_admin, supabase_read_only_user,
supabase_realtime_admin, supabase_replication_admin, dashboard_user, pgbouncer,
service_role, authenticator, authenticated, anon), and Supabase creates more
(``supabase_*``, ``pgsodium_*``).  A topology naming one fails at provisioning on Supabase
only, so :func:`platform_name_problem` refuses them everywhere, before any SQL runs.
"""

from __future__ import annotations

# Supabase's platform schemas (supabase/postgres, supabase/cli's dump exclusions).
PLATFORM_SCHEMAS: tuple[str, ...] = (
    "auth", "storage", "realtime", "_realtime", "extensions", "graphql", "graphql_public",
    "vault", "pgsodium", "pgsodium_masks", "supabase_functions", "supabase_migrations",
    "net", "cron", "pgbouncer", "_analytics",
)
# Any schema starting with one of these is the platform's too (Supabase adds more).
PLATFORM_SCHEMA_PREFIXES: tuple[str, ...] = ("supabase_",)


def is_platform_schema(name: str) -> bool:
    """True when *name* is one of the hosting platform's schemas."""
    return name in PLATFORM_SCHEMAS or name.startswith(PLATFORM_SCHEMA_PREFIXES)


# supautils' reserved roles, the other roles Supabase, PgBouncer and PostgREST own, and
# the bootstrap superuser.
PLATFORM_ROLES: frozenset[str] = frozenset({
    "postgres", "anon", "authenticated", "service_role", "authenticator", "dashboard_user",
    "pgbouncer", "pgsodium_keyholder", "pgsodium_keyiduser", "pgsodium_keymaker",
    "pgtle_admin", "supabase_admin", "supabase_auth_admin", "supabase_storage_admin",
    "supabase_functions_admin", "supabase_realtime_admin", "supabase_replication_admin",
    "supabase_read_only_user",
})
PLATFORM_ROLE_PREFIXES: tuple[str, ...] = ("supabase_", "pgsodium_")


def is_platform_role(name: str) -> bool:
    """True when *name* is (or is named like) one of the hosting platform's roles."""
    return name in PLATFORM_ROLES or name.startswith(PLATFORM_ROLE_PREFIXES)


def platform_name_problem(name: str, kind: str) -> str | None:
    """Why *name* cannot be a project's *kind* ("schema" or "role"), or None."""
    if kind == "schema" and is_platform_schema(name):
        examples = ", ".join(PLATFORM_SCHEMAS[:6])
        return (f"{name!r} is a schema the platform reserves (Supabase: {examples}, ..., "
                f"{PLATFORM_SCHEMA_PREFIXES[0]}*); choose a name of your own")
    if kind == "role" and is_platform_role(name):
        return (f"{name!r} is a role the platform owns or reserves (Supabase's supautils "
                "reserved roles, supabase_*, pgsodium_*, PostgREST's and PgBouncer's): "
                "provisioning would take it over, and Supabase refuses it; choose a name of "
                "your own")
    return None
