"""The privilege model that provisioning and verify share.

Provisioning writes these roles, attributes, privileges, marks and budgets into the
catalog; verify reads the catalog and compares it with the same definitions.  Keeping
them here (and not in provisioning) is what lets verify stay independent of the code
that changes the database: ``privileges.verify`` must not import
``privileges.provisioning`` nor its parts (an import-linter contract in pyproject.toml).
"""

from __future__ import annotations

from psycopg import sql

from ..connections.budget import HEADROOM_MIN as HEADROOM_MIN
from ..connections.budget import HEADROOM_PERCENT as HEADROOM_PERCENT
from ..connections.budget import connection_budget_query as connection_budget_query
from ..topology import Service, Topology

OWN_TABLE_PRIVILEGES = ("SELECT", "INSERT", "UPDATE", "DELETE")
OWN_SEQUENCE_PRIVILEGES = ("USAGE", "SELECT")
RUNTIME_ROLE_ATTRIBUTES = "LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS"
OWNER_ROLE_ATTRIBUTES = "NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS"
# NOINHERIT: the migrator holds no privilege of its own, not even through its
# membership; it only acts by *being* the owner role (SET ROLE).  So a migration
# that escapes the owner role (SET ROLE NONE, set_config('role', 'none', ...))
# is left with nothing.  On PostgreSQL 16+ the attribute also makes the
# membership grant default to INHERIT FALSE; on 15 the attribute itself is what
# counts.  One statement, same meaning on both.
MIGRATOR_ROLE_ATTRIBUTES = (
    "LOGIN NOINHERIT NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS")

# Every role edulink-db creates gets this comment, in the transaction that creates
# it; provisioning touches no existing role without it (DESIGN.md: other software
# owns roles on the same cluster).  Why a comment and not membership in a marker role:
# - Who can forge it.  COMMENT ON ROLE needs CREATEROLE (PostgreSQL 15) or CREATEROLE
#   plus ADMIN OPTION on that role (16+), and a superuser to comment on a superuser.
#   Runtime and owner roles are NOCREATEROLE, so a compromised service cannot mark
#   anything, itself included.  Whoever can forge it could already ALTER that role
#   directly (same privilege), so forging gains nothing.  GRANT of a marker role needs
#   ADMIN on the marker, which every CREATEROLE role holds on 15: no stronger.
# - What it carries.  A comment carries no privilege.  A marker role is a real role:
#   anything granted to it flows to every managed role, it can be dropped, and it would
#   show up as a membership that verify must then exempt.
# - Failure mode.  Someone overwriting the comment makes the role "foreign": provisioning
#   then refuses it (fail closed) until `--adopt` marks it again.
MANAGED_MARKER = "edulink-db managed"
MANAGED_COMMENT = (f"{MANAGED_MARKER}: created by edulink-db provision; "
                   "provisioning refuses roles without this comment")
# Adopting a role that has any of these (and that edulink-db did not create) would
# strip powers some other software relies on: refused even with --adopt.
UNADOPTABLE_ATTRIBUTES = ("rolsuper", "rolbypassrls", "rolreplication", "rolcreaterole",
                          "rolcreatedb")

# The connection budget (each runtime role's CONNECTION LIMIT) is one model shared with
# the pools, health and `edulink-db budget`: connections/budget.py.


def managed_mark_sql(oid_expr: str) -> sql.Composed:
    """SQL that is true when the role with OID *oid_expr* carries the edulink-db mark."""
    # oid_expr is a constant column reference, never config.
    return sql.SQL("coalesce(pg_catalog.starts_with(pg_catalog.shobj_description({}, "
                   "'pg_authid'), {}), false)").format(sql.SQL(oid_expr),
                                                       sql.Literal(MANAGED_MARKER))


def search_path_for(service: Service, topology: Topology) -> list[str]:
    """The role-level search_path of *service*'s runtime role."""
    return [service.schema, topology.shared.schema]


def meta_readers(topology: Topology) -> list[str]:
    """The roles that get USAGE on the meta schema and SELECT on the location registry
    (relocation/meta.py), which verify therefore expects: every runtime role (its
    pools, and its readers' pools, read the registry as the service's own role) and
    every owner and migrator role (``manage.py migrate`` through the Django engine
    reads it on the migrator's connection, whose role-level default makes it the owner
    role).  Nobody else, PUBLIC included (on Supabase, anon and authenticated)."""
    return [*topology.runtime_roles, *topology.owner_roles, *topology.migrator_roles]
