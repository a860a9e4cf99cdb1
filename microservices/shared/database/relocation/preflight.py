"""Preflight of a move: read-only checks on both servers that fail closed."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import psycopg

from ..connections.direct import connect
from ..topology import Service

# A rough copy rate for the time estimate (logical replication's initial COPY on this
# machine kind; benchmarks/move_service.py measures the real one).
ESTIMATE_BYTES_PER_S = 40 * 1024 * 1024


@dataclass
class PreflightReport:
    """What the preflight found; ``problems`` non-empty means the move is refused."""

    service: str
    tables: list[str] = field(default_factory=list)
    sequences: list[str] = field(default_factory=list)
    size_bytes: int = 0
    estimate_s: float = 0.0
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    rls_tables: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _one(conn: psycopg.Connection[Any], query: str, params: Any = None) -> Any:
    row = conn.execute(query, params).fetchone()
    return row[0] if row else None


def source_checks(conn: psycopg.Connection[Any], svc: Service, report: PreflightReport,
                  *, allow_unbounded_wal: bool) -> None:
    schema = svc.schema
    report.tables = [r[0] for r in conn.execute(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = %s AND c.relkind IN ('r', 'p') AND NOT c.relispartition"
        " ORDER BY 1", [schema])]
    report.sequences = [r[0] for r in conn.execute(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = %s AND c.relkind = 'S' ORDER BY 1", [schema])]
    if _one(conn, "SELECT count(*) FROM pg_namespace WHERE nspname = %s", [schema]) == 0:
        report.problems.append(f"schema {schema} does not exist on the source")
        return
    # UPDATE/DELETE on a published table without a replica identity fail on the
    # publisher: the live service would break. Refuse before publishing.
    for (name,) in conn.execute(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = %s AND c.relkind = 'r' AND (c.relreplident = 'n' OR"
            "  (c.relreplident = 'd' AND NOT EXISTS (SELECT 1 FROM pg_index i"
            "   WHERE i.indrelid = c.oid AND i.indisprimary))) ORDER BY 1", [schema]):
        report.problems.append(
            f"table {schema}.{name} has no primary key or replica identity: add a primary "
            f"key, or ALTER TABLE ... REPLICA IDENTITY FULL/USING INDEX, then retry")
    for (name,) in conn.execute(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = %s AND c.relkind = 'p'", [schema]):
        report.problems.append(f"table {schema}.{name} is partitioned: not supported by "
                               "move-service yet")
    for conname, src, dst in conn.execute(
            "SELECT con.conname, cn.nspname || '.' || c.relname, fn.nspname || '.' || f.relname"
            " FROM pg_constraint con"
            " JOIN pg_class c ON c.oid = con.conrelid"
            " JOIN pg_namespace cn ON cn.oid = c.relnamespace"
            " JOIN pg_class f ON f.oid = con.confrelid"
            " JOIN pg_namespace fn ON fn.oid = f.relnamespace"
            " WHERE con.contype = 'f' AND (cn.nspname = %s) <> (fn.nspname = %s)",
            [schema, schema]):
        report.problems.append(
            f"foreign key {conname} from {src} to {dst} crosses the schema boundary: "
            "a foreign key cannot span two servers; drop it (keep the check in the "
            "application) before moving")
    if _one(conn, "SHOW wal_level") != "logical":
        report.problems.append("the source has wal_level != logical: set wal_level = logical "
                               "and restart it (on Supabase it is already logical)")
    free_slots = _one(conn, "SELECT current_setting('max_replication_slots')::int -"
                            " (SELECT count(*) FROM pg_replication_slots)")
    if free_slots is not None and free_slots < 1:
        report.problems.append("no free replication slot on the source: raise "
                               "max_replication_slots or drop an unused slot")
    free_senders = _one(conn, "SELECT current_setting('max_wal_senders')::int -"
                              " (SELECT count(*) FROM pg_stat_replication)")
    if free_senders is not None and free_senders < 1:
        report.problems.append("no free WAL sender on the source: raise max_wal_senders")
    keep = _one(conn, "SHOW max_slot_wal_keep_size")
    if keep in ("-1", None):
        if allow_unbounded_wal:
            report.notes.append("max_slot_wal_keep_size is unlimited: a stuck slot could "
                                "fill the source's disk (allowed by --allow-unbounded-wal)")
        else:
            report.problems.append(
                "max_slot_wal_keep_size is unlimited on the source, so a stuck slot could "
                "fill the shared server's disk: set it (e.g. ALTER SYSTEM SET "
                "max_slot_wal_keep_size = '10GB'; SELECT pg_reload_conf()), or pass "
                "--allow-unbounded-wal")
    else:
        report.notes.append(f"WAL retention of the move's slot is capped at {keep} "
                            "(max_slot_wal_keep_size)")
    superuser = bool(_one(conn, "SELECT rolsuper FROM pg_roles WHERE rolname = current_user"))
    if not superuser:
        attrs = conn.execute("SELECT rolreplication, rolbypassrls, rolcreaterole FROM pg_roles"
                             " WHERE rolname = current_user").fetchone()
        missing = [what for what, has in zip(("REPLICATION", "BYPASSRLS", "CREATEROLE"),
                                             attrs or (False, False, False), strict=True)
                   if not has]
        if missing:
            report.problems.append(
                "the source admin needs " + ", ".join(missing) + " to create the move's "
                "temporary replication role (it reads every row, RLS included)")
        if not _one(conn, "SELECT pg_has_role(current_user, %s, 'USAGE')", [svc.owner_role]):
            report.problems.append(f"the source admin must be a member of {svc.owner_role} "
                                   "to publish its tables (a publication FOR TABLE needs the "
                                   "table owner)")
    report.rls_tables = [r[0] for r in conn.execute(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = %s AND c.relkind = 'r' AND c.relrowsecurity ORDER BY 1", [schema])]
    report.size_bytes = int(_one(
        conn, "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c"
              " JOIN pg_namespace n ON n.oid = c.relnamespace"
              " WHERE n.nspname = %s AND c.relkind = 'r'", [schema]) or 0)
    report.estimate_s = report.size_bytes / ESTIMATE_BYTES_PER_S
    blockers = conn.execute(
        "SELECT pid, usename, now() - xact_start FROM pg_stat_activity"
        " WHERE backend_xid IS NOT NULL AND xact_start < now() - interval '1 minute'"
        " AND pid <> pg_backend_pid()").fetchall()
    for pid, user, age in blockers:
        report.notes.append(f"transaction of pid {pid} ({user}) open for {age}: creating the "
                            "replication slot waits for it to end")


def target_checks(conn: psycopg.Connection[Any], svc: Service, report: PreflightReport) -> None:
    version = conn.info.server_version
    superuser = bool(_one(conn, "SELECT rolsuper FROM pg_roles WHERE rolname = current_user"))
    if not superuser:
        if version < 160000:
            report.problems.append(
                "the target runs PostgreSQL 15 or older: CREATE SUBSCRIPTION needs a "
                "superuser there; the target admin is not one")
        elif not _one(conn, "SELECT pg_has_role(current_user, 'pg_create_subscription',"
                            " 'USAGE')"):
            report.problems.append(
                "the target admin lacks pg_create_subscription (PostgreSQL 16+): GRANT "
                "pg_create_subscription TO <admin> as a superuser")
        if not _one(conn, "SELECT has_database_privilege(current_database(), 'CREATE')"):
            report.problems.append(
                "the target admin lacks CREATE on the target database (CREATE SUBSCRIPTION "
                "and provisioning need it): GRANT CREATE ON DATABASE <db> TO <admin>")
        rls = report.rls_tables
        if rls and not _one(conn, "SELECT rolbypassrls FROM pg_roles"
                                  " WHERE rolname = current_user"):
            report.problems.append(
                "the target admin applies the replicated rows and lacks BYPASSRLS, but "
                f"{', '.join(rls)} {'has' if len(rls) == 1 else 'have'} row-level security: "
                "ALTER ROLE <admin> BYPASSRLS as a superuser")
    tables = _one(conn, "SELECT count(*) FROM pg_class c JOIN pg_namespace n"
                        " ON n.oid = c.relnamespace WHERE n.nspname = %s"
                        " AND c.relkind IN ('r', 'p', 'S')", [svc.schema])
    if tables:
        report.problems.append(
            f"schema {svc.schema} on the target already has {tables} tables or sequences: "
            "the target must be empty (abort an earlier move with --abort, or drop them)")


# Which database a session is in, as the server sees it (no privilege needed).
_WHO = ("SELECT inet_server_addr()::text, current_setting('port'), current_database(),"
        " current_setting('cluster_name')")


def preflight(source: dict[str, Any], target: dict[str, Any], svc: Service, *,
              allow_unbounded_wal: bool = False, target_prepared: bool = False
              ) -> PreflightReport:
    """Check both servers; never changes anything.  *target_prepared*: a resumed move
    has already copied the DDL, so the target's tables are expected."""
    report = PreflightReport(service=svc.name)
    with connect(source, purpose="preflight the source of the move") as conn:
        source_checks(conn, svc, report, allow_unbounded_wal=allow_unbounded_wal)
        source_id = conn.execute(_WHO).fetchone()
    with connect(target, purpose="preflight the target of the move") as conn:
        if not target_prepared:
            target_checks(conn, svc, report)
        target_id = conn.execute(_WHO).fetchone()
        if target_id == source_id:
            report.problems.append("the target is the source database itself")
    return report
