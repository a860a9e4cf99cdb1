"""Schemas that belong to the hosting platform, not to the project.

Supabase puts its own services' data in the project's database (auth, storage,
realtime, ...). They are the platform's to back up and restore: a dump of them does
not restore into a plain PostgreSQL (their owners, extensions and event triggers are
Supabase's), so a full backup that includes them fails its drill, verify and
restore. This is the one list of them; backups and anything else that must tell the
project's schemas from the platform's use :func:`is_platform_schema`.
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
