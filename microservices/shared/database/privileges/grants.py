"""Grants: what each runtime role may do in its own schema, the exposed columns its
readers get, EXECUTE on routines, and the shared audit log and RLS helper."""

from __future__ import annotations

from collections.abc import Iterable

from psycopg import sql

from ..migrations.history import HISTORY_TABLE
from ..topology import Service, Topology
from .model import OWN_SEQUENCE_PRIVILEGES, OWN_TABLE_PRIVILEGES
from .schemas import RLS_HELPER
from .statement import Statement, id_list, privilege_list

# Columns a service may set when it writes an audit entry.  id, occurred_at and
# db_role are filled by the database, so the log records who really wrote it.
AUDIT_INSERT_COLUMNS = (
    "service_name", "action", "resource_type", "resource_id", "user_id", "details",
)


def exposure_grant(schema: str, table: str, columns: Iterable[str],
                   readers: Iterable[str]) -> sql.Composed:
    """A DO block granting SELECT on those of *columns* that exist, when *table* exists.

    Migrations create the tables after provisioning, and a column may be exposed
    before the migration that adds it runs: the block grants what exists now and
    does nothing else (the migration runner grants the rest after each file).
    Every name reaches the block as an already-quoted constant (sql.Identifier),
    and the one dynamic statement is assembled from those with %s only.
    """
    qualified = sql.Identifier(schema, table).as_string(None)
    return sql.SQL(
        "DO $do$\n"
        "DECLARE cols text;\n"
        "BEGIN\n"
        "  SELECT pg_catalog.string_agg(pg_catalog.quote_ident(a.attname), ', '"
        " ORDER BY a.attnum)\n"
        "    INTO cols FROM pg_catalog.pg_attribute a\n"
        "    JOIN pg_catalog.pg_class c ON c.oid = a.attrelid\n"
        "   WHERE a.attrelid = pg_catalog.to_regclass({table}) AND a.attnum > 0\n"
        "     AND c.relkind = ANY('{{r,p,v,m,f}}'::\"char\"[])\n"
        "     AND NOT a.attisdropped AND a.attname = ANY({columns}::pg_catalog.name[]);\n"
        "  IF cols IS NOT NULL THEN\n"
        "    EXECUTE pg_catalog.format('GRANT SELECT (%s) ON TABLE %s TO %s', cols, {table},"
        " {readers});\n"
        "  END IF;\n"
        "END $do$"
    ).format(table=sql.Literal(qualified), columns=sql.Literal(list(columns)),
             readers=sql.Literal(id_list(readers).as_string(None)))


def reader_statements(svc: Service, topology: Topology) -> list[Statement]:
    """What *svc*'s readers get: exactly the exposed columns, never a whole table.

    Each run first takes away every SELECT the readers hold in the schema (REVOKE on
    a table also revokes its column grants) and then grants the exposure, in the
    same transaction, so nobody ever sees the gap.  That also upgrades a database
    provisioned with the old table-level grants and their ALTER DEFAULT PRIVILEGES.
    A column grant never covers a column added later: new columns stay private
    until the topology exposes them.
    """
    readers = [reader.runtime_role for reader in topology.readers_of(svc)]
    if not readers:
        return []
    s, o, rr = sql.Identifier(svc.schema), sql.Identifier(svc.owner_role), id_list(readers)
    who = ", ".join(readers)
    out = [
        Statement(f"Readers of {svc.schema} ({who}) get no table-level SELECT: drop any, "
                  "with the column grants it carries; the exposure is granted below.",
                  sql.SQL("REVOKE SELECT ON ALL TABLES IN SCHEMA {} FROM {}").format(s, rr)),
        Statement(f"...and no SELECT on tables {svc.owner_role} creates later "
                  "(the migration runner grants the exposed columns after each file).",
                  sql.SQL("ALTER DEFAULT PRIVILEGES FOR ROLE {} IN SCHEMA {} "
                          "REVOKE SELECT ON TABLES FROM {}").format(o, s, rr)),
    ]
    if not svc.exposes:
        out.append(Statement(f"{svc.name} exposes nothing: its readers need no USAGE on "
                             f"{svc.schema}.",
                             sql.SQL("REVOKE USAGE ON SCHEMA {} FROM {}").format(s, rr)))
        return out
    out.append(Statement(f"Cross-service readers of {svc.schema}: {who}.",
                         sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(s, rr)))
    for table, columns in svc.exposes:
        out.append(Statement(
            f"{svc.name} exposes {table} ({', '.join(columns)}) to {who}.",
            exposure_grant(svc.schema, table, columns, readers)))
    return out


def routine_statements(owner: str, schema: str, runtime_role: str | None) -> list[Statement]:
    """EXECUTE on *schema*'s functions and procedures for its own service only.

    PostgreSQL lets PUBLIC execute every new function.  A reader of an exposed
    table would then run the exposing service's code with the *reader's*
    privileges whenever a policy, view or default on that table calls it -- code
    that can read the reader's private tables.  Without EXECUTE such a read
    fails instead.  Per-schema default privileges can only add to the global
    ones, so PUBLIC's default is revoked for the owner role globally (it creates
    objects in its own schema only).
    """
    o, s = sql.Identifier(owner), sql.Identifier(schema)
    out = [
        Statement(f"No PUBLIC EXECUTE on the routines in {schema}: a reader would run "
                  "this service's code with its own privileges.",
                  sql.SQL("REVOKE EXECUTE ON ALL ROUTINES IN SCHEMA {} FROM PUBLIC").format(s)),
        Statement(f"...nor on the routines {owner} creates later.",
                  sql.SQL("ALTER DEFAULT PRIVILEGES FOR ROLE {} "
                          "REVOKE EXECUTE ON ROUTINES FROM PUBLIC").format(o)),
    ]
    if runtime_role is not None:
        r = sql.Identifier(runtime_role)
        out += [
            Statement(f"{runtime_role} may run its own service's routines.",
                      sql.SQL("GRANT EXECUTE ON ALL ROUTINES IN SCHEMA {} TO {}").format(s, r)),
            Statement("...including routines created later.",
                      sql.SQL("ALTER DEFAULT PRIVILEGES FOR ROLE {} IN SCHEMA {} "
                              "GRANT EXECUTE ON ROUTINES TO {}").format(o, s, r)),
        ]
    return out


def service_grant_statements(svc: Service, topology: Topology) -> list[Statement]:
    """*svc*'s runtime role on its own schema (now and for objects created later), its
    readers' exposure, and its migration history closed to everyone but the owner."""
    s, r, o = sql.Identifier(svc.schema), sql.Identifier(svc.runtime_role), sql.Identifier(
        svc.owner_role)
    own = privilege_list(OWN_TABLE_PRIVILEGES)
    seq = privilege_list(OWN_SEQUENCE_PRIVILEGES)
    out = [
        Statement(f"{svc.runtime_role} may use its own schema (no CREATE: no DDL).",
                  sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(s, r)),
        Statement(f"{svc.runtime_role} reads and writes its own tables.",
                  sql.SQL("GRANT {} ON ALL TABLES IN SCHEMA {} TO {}").format(own, s, r)),
        Statement(f"{svc.runtime_role} uses its own sequences.",
                  sql.SQL("GRANT {} ON ALL SEQUENCES IN SCHEMA {} TO {}").format(seq, s, r)),
        Statement(f"Tables {svc.owner_role} creates later are covered too.",
                  sql.SQL("ALTER DEFAULT PRIVILEGES FOR ROLE {} IN SCHEMA {} "
                          "GRANT {} ON TABLES TO {}").format(o, s, own, r)),
        Statement(f"Sequences {svc.owner_role} creates later are covered too.",
                  sql.SQL("ALTER DEFAULT PRIVILEGES FOR ROLE {} IN SCHEMA {} "
                          "GRANT {} ON SEQUENCES TO {}").format(o, s, seq, r)),
        *routine_statements(svc.owner_role, svc.schema, svc.runtime_role),
    ]
    out += reader_statements(svc, topology)

    history = sql.Identifier(svc.schema, HISTORY_TABLE)
    out.append(Statement(
        f"The migration history in {svc.schema} is the owner's alone: undo what the "
        "schema-wide grants just gave (same transaction, so never visible).",
        sql.SQL(
            "DO $do$ BEGIN\n"
            "  IF pg_catalog.to_regclass({name}) IS NOT NULL THEN\n"
            "    REVOKE ALL ON TABLE {history} FROM PUBLIC, {roles};\n"
            "  END IF;\n"
            "END $do$"
        ).format(name=sql.Literal(history.as_string(None)), history=history,
                 roles=id_list(topology.runtime_roles)),
    ))
    return out


def _service_roles(topology: Topology) -> sql.Composable:
    """Every service's runtime and owner role (not the shared schema's owner)."""
    return id_list(topology.runtime_roles + [s.owner_role for s in topology.services])


def shared_usage_statement(topology: Topology) -> Statement:
    """USAGE on the shared schema for every service's runtime and owner role."""
    return Statement("Every service (runtime and owner role) may use the shared schema.",
                     sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(
                         sql.Identifier(topology.shared.schema), _service_roles(topology)))


def shared_object_grants(topology: Topology) -> list[Statement]:
    """Who may use the shared objects: services call the RLS helper and append to the
    audit log (only the columns the database does not fill); PUBLIC gets nothing."""
    shared = topology.shared
    audit = sql.Identifier(shared.schema, shared.audit_table)
    helper = sql.Identifier(shared.schema, RLS_HELPER)
    return [
        Statement("Only services may call the RLS helper.",
                  sql.SQL("REVOKE ALL ON FUNCTION {}() FROM PUBLIC").format(helper)),
        Statement("...runtime roles in policies, owner roles when creating them.",
                  sql.SQL("GRANT EXECUTE ON FUNCTION {}() TO {}").format(
                      helper, _service_roles(topology))),
        *routine_statements(shared.owner_role, shared.schema, None),
        Statement("No PUBLIC access to the audit log.",
                  sql.SQL("REVOKE ALL ON TABLE {} FROM PUBLIC").format(audit)),
        Statement("Services may append to the audit log; no UPDATE, DELETE or TRUNCATE, and "
                  "id/occurred_at/db_role are always set by the database.",
                  sql.SQL("GRANT INSERT ({}) ON TABLE {} TO {}").format(
                      id_list(AUDIT_INSERT_COLUMNS), audit, id_list(topology.runtime_roles))),
    ]
