"""The ordered provisioning statements for a topology, and the psql script that prints
them (``postgresql_schema_setup.sql``)."""

from __future__ import annotations

from psycopg import sql

from ..topology import Topology
from .grants import service_grant_statements, shared_object_grants, shared_usage_statement
from .model import HEADROOM_MIN, HEADROOM_PERCENT, MANAGED_COMMENT
from .roles import foreign_role_guard, managed_roles, role_statements
from .schemas import schema_statements, shared_object_statements
from .statement import Statement

PROVISION_LOCK = "edulink-db:provision"


def provisioning_statements(topology: Topology) -> list[Statement]:
    """Every statement that brings a database in line with *topology*, in order.

    :func:`.provisioning.provision` executes them in a single transaction, and
    :func:`render_postgresql_script` prints the same statements as the checked-in
    ``postgresql_schema_setup.sql``, so the script and what ``edulink-db provision``
    does cannot drift apart (a test compares them).

    What it creates, per service: a NOLOGIN owner role that owns the schema and
    everything in it; a LOGIN runtime role with a role-level ``search_path`` (own
    schema first, then the shared schema) and exactly the grants the topology
    declares, including ALTER DEFAULT PRIVILEGES so that tables the owner creates
    later are covered; PUBLIC's default access to the schema revoked.  Other
    services' runtime roles get column-level SELECT on exactly the columns the
    topology exposes (``reader_statements``), never a table-level grant.  Plus the
    shared schema with the append-only audit log and the RLS helper
    ``current_user_id()``.

    Every statement is idempotent, and the first one takes a transaction-level
    advisory lock, so concurrent deploys serialise and a second run changes nothing.
    """
    out: list[Statement] = [
        Statement(
            "Serialise concurrent provisioning runs (released at COMMIT).",
            sql.SQL("SELECT pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtext({}))").format(
                sql.Literal(PROVISION_LOCK)
            ),
        )
    ]
    out += role_statements(topology)
    out += schema_statements(topology)
    for svc in topology.services:
        out += service_grant_statements(svc, topology)
    out.append(shared_usage_statement(topology))
    out += shared_object_statements(topology)
    out += shared_object_grants(topology)
    # Right after the lock, before any statement touches a role: refuse roles that
    # exist but were not created by edulink-db (nor adopted).
    out.insert(1, Statement(
        "Refuse to touch roles edulink-db did not create (they belong to someone else).",
        foreign_role_guard(managed_roles(out))))
    return out


def render_postgresql_script(topology: Topology) -> str:
    """The provisioning statements as a psql-ready script (``postgresql_schema_setup.sql``)."""
    lines = [
        "-- edulink-db: PostgreSQL schema and role setup.",
        "-- GENERATED from the topology by `edulink-db sql --dialect postgresql`; do not edit.",
        "-- Services: " + ", ".join(
            f"{s.name} ({s.schema})" for s in topology.services),
        "--",
        "-- Run as a role with CREATEROLE and CREATE on the database (Supabase's `postgres`",
        "-- user is enough; superuser is not needed). Idempotent: safe to run again.",
        "-- Runtime and migrator roles are created WITHOUT passwords: `edulink-db provision`",
        "-- sets them (SCRAM verifiers computed client-side), or set them yourself with psql's",
        "-- \\password <role>.  `edulink-db provision` additionally checks each service",
        "-- can log in, and `edulink-db verify` compares the result with the topology.",
        "--",
        "-- Roles: every role created here is marked with the comment",
        f"-- '{MANAGED_COMMENT}'.",
        "-- The script stops (and changes nothing) if a role it would create already exists",
        "-- without that mark: it belongs to someone else. Adopt one deliberately with",
        "-- `edulink-db provision --adopt ROLE`.",
        "--",
        "-- Connection limits: a service's `connection_limit` from the topology is written",
        "-- below as a number. For the others the script cannot know this server's",
        "-- max_connections, so it computes the limit when it runs, on the server itself:",
        "-- (max_connections - superuser_reserved_connections - reserved_connections",
        f"--  - headroom) / number of such services, headroom = max({HEADROOM_MIN}, "
        f"{HEADROOM_PERCENT}% of the rest),",
        "-- the same formula `edulink-db provision` and `edulink-db verify` use.",
        "",
        "BEGIN;",
        "",
    ]
    for stmt in provisioning_statements(topology):
        lines.append(f"-- {stmt.comment}")
        lines.append(stmt.query.as_string(None) + ";")
        lines.append("")
    lines.append("COMMIT;")
    return "\n".join(lines) + "\n"
