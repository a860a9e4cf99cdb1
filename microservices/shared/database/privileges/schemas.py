"""Schemas: each topology schema with its owner and no access for PUBLIC, and the shared
schema's objects (the append-only audit log, the RLS helper)."""

from __future__ import annotations

from psycopg import sql

from ..topology import Topology
from .statement import Statement

RLS_HELPER = "current_user_id"


def schema_statements(topology: Topology) -> list[Statement]:
    """Create every schema of *topology*, owned by its owner role, closed to PUBLIC."""
    out: list[Statement] = []
    for schema in topology.schemas:
        owner = topology.schema_owner(schema)
        out.append(Statement(f"Schema {schema}, owned by {owner}.",
                             sql.SQL("CREATE SCHEMA IF NOT EXISTS {} AUTHORIZATION {}").format(
                                 sql.Identifier(schema), sql.Identifier(owner))))
        out.append(Statement(f"Re-assert the owner of {schema} if it existed before.",
                             sql.SQL("ALTER SCHEMA {} OWNER TO {}").format(
                                 sql.Identifier(schema), sql.Identifier(owner))))
        out.append(Statement(f"No default access to {schema} for PUBLIC.",
                             sql.SQL("REVOKE ALL ON SCHEMA {} FROM PUBLIC").format(
                                 sql.Identifier(schema))))
    return out


def shared_object_statements(topology: Topology) -> list[Statement]:
    """The shared schema's objects, created as its owner role: the audit log and the RLS
    helper ``current_user_id()`` (who may use them: :mod:`.grants`)."""
    shared = topology.shared
    so = sql.Identifier(shared.owner_role)
    audit = sql.Identifier(shared.schema, shared.audit_table)
    helper = sql.Identifier(shared.schema, RLS_HELPER)
    return [
        Statement(f"Create shared objects as {shared.owner_role}, so it owns them.",
                  sql.SQL("SET LOCAL ROLE {}").format(so)),
        Statement("The append-only audit log.", sql.SQL(
            "CREATE TABLE IF NOT EXISTS {} (\n"
            "    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,\n"
            "    occurred_at timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),\n"
            "    db_role name NOT NULL DEFAULT CURRENT_USER,\n"
            "    service_name text NOT NULL,\n"
            "    action text NOT NULL,\n"
            "    resource_type text NOT NULL,\n"
            "    resource_id text,\n"
            "    user_id text,\n"
            "    details jsonb NOT NULL DEFAULT '{{}}'::jsonb\n"
            ")").format(audit)),
        Statement("Time-ordered appends: a BRIN index is tiny and fits the access pattern.",
                  sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} USING brin (occurred_at)").format(
                      sql.Identifier(f"{shared.audit_table}_occurred_at_brin"), audit)),
        Statement(
            "RLS helper: the request's user id, or NULL when none is set "
            "(policies then match nothing: fail closed).",
            sql.SQL(
                "CREATE OR REPLACE FUNCTION {}() RETURNS text\n"
                "    LANGUAGE sql STABLE\n"
                "    AS $fn$ SELECT NULLIF(pg_catalog.current_setting('app.current_user_id', "
                "true), '') $fn$"
            ).format(helper),
        ),
        Statement("Back to the provisioning admin.", sql.Composed([sql.SQL("RESET ROLE")])),
    ]
