"""Probing what a runtime role can really do, with real statements.

Used by the provisioning tests: a probe table is created in every schema by
the schema's owner *after* provisioning (so default privileges are exercised
too), then every runtime role tries every operation on every schema.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

from microservices.shared.database.topology import Topology

OPERATIONS = ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "CREATE", "ALTER")


def create_probe_tables(admin: dict[str, Any], topology: Topology) -> None:
    with psycopg.connect(**admin, autocommit=True) as conn:
        for svc in topology.services:
            conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(svc.owner_role)))
            conn.execute(sql.SQL(
                "CREATE TABLE IF NOT EXISTS {}.probe (id serial PRIMARY KEY, v text)").format(
                sql.Identifier(svc.schema)))
            conn.execute(sql.SQL("INSERT INTO {}.probe (v) VALUES ('seed')").format(
                sql.Identifier(svc.schema)))
            conn.execute("RESET ROLE")


def _statement(op: str, schema: str, topology: Topology) -> sql.Composed:
    s = sql.Identifier(schema)
    if schema == topology.shared.schema:
        t = sql.Identifier(schema, topology.shared.audit_table)
        return {
            "SELECT": sql.SQL("SELECT count(*) FROM {}").format(t),
            "INSERT": sql.SQL("INSERT INTO {} (service_name, action, resource_type) "
                              "VALUES ('probe', 'probe', 'probe')").format(t),
            "UPDATE": sql.SQL("UPDATE {} SET action = 'x'").format(t),
            "DELETE": sql.SQL("DELETE FROM {}").format(t),
            "TRUNCATE": sql.SQL("TRUNCATE {}").format(t),
            "CREATE": sql.SQL("CREATE TABLE {}.intruder (x int)").format(s),
            "ALTER": sql.SQL("ALTER TABLE {} ADD COLUMN intruder int").format(t),
        }[op]
    t = sql.Identifier(schema, "probe")
    return {
        "SELECT": sql.SQL("SELECT count(*) FROM {}").format(t),
        "INSERT": sql.SQL("INSERT INTO {} (v) VALUES ('probe')").format(t),  # uses the sequence
        "UPDATE": sql.SQL("UPDATE {} SET v = 'x'").format(t),
        "DELETE": sql.SQL("DELETE FROM {}").format(t),
        "TRUNCATE": sql.SQL("TRUNCATE {}").format(t),
        "CREATE": sql.SQL("CREATE TABLE {}.intruder (x int)").format(s),
        "ALTER": sql.SQL("ALTER TABLE {} ADD COLUMN intruder int").format(t),
    }[op]


def probe(conn: psycopg.Connection[Any], op: str, schema: str, topology: Topology) -> bool:
    """True if *op* on *schema* succeeds for the connected role (always rolled back)."""
    try:
        with conn.transaction(force_rollback=True):
            conn.execute(_statement(op, schema, topology))
        return True
    except psycopg.errors.InsufficientPrivilege:
        return False
    except psycopg.errors.UndefinedTable:  # schema not visible at all
        return False


def expected_operations(topology: Topology, role: str, schema: str) -> set[str]:
    svc = topology.service(role)
    if schema == svc.schema:
        return {"SELECT", "INSERT", "UPDATE", "DELETE"}
    readable = {s.schema: s for s in topology.readable_services(svc)}
    if schema in readable:
        # Readers get column grants on exposed tables only; the probe table is never
        # exposed, so even a reader can do nothing with it.
        return {"SELECT"} if "probe" in dict(readable[schema].exposes) else set()
    if schema == topology.shared.schema:
        return {"INSERT"}
    return set()
