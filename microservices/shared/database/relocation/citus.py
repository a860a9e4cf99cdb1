"""SQL for Citus schema-based sharding: the many-server alternative to move-service.

NOT TESTED HERE (no Citus in this environment, and Citus is not on hosted Supabase).
Citus 12+ distributes whole schemas across worker nodes with
``citus_schema_distribute``; run the output on the Citus coordinator.
"""

from __future__ import annotations

from psycopg import sql

from ..topology import Topology


def citus_sql(topology: Topology) -> list[sql.Composed]:
    """One ``citus_schema_distribute`` call per service schema (the shared schema stays
    on the coordinator as a reference, since every service reads it)."""
    statements = [sql.SQL("-- edulink-db: Citus schema-based sharding (not tested here)")]
    out = [sql.Composed(statements)]
    for svc in topology.services:
        out.append(sql.SQL("SELECT citus_schema_distribute({});").format(
            sql.Literal(svc.schema)))
    return out
