"""Preflight of a move: read-only checks on both servers that fail closed."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import psycopg

from ..connections.direct import connect
from ..connections.patroni import PatroniDiscovery
from ..core.errors import PatroniDiscoveryError
from ..migrations.history import HISTORY_TABLE
from ..migrations.history import LOCK_CLASS as MIGRATION_LOCK_CLASS
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
    unlogged: list[str] = field(default_factory=list)
    # Who the subscription logs in as on the source: "role" (a temporary replication
    # role) or "admin" (the source admin itself, when it cannot create that role).
    replication_login: str = "role"
    # Whether the source conninfo carries a password (the subscription needs one).
    source_has_password: bool = True

    @property
    def ok(self) -> bool:
        return not self.problems


def _one(conn: psycopg.Connection[Any], query: str, params: Any = None) -> Any:
    row = conn.execute(query, params).fetchone()
    return row[0] if row else None


def migration_lock_key(svc: Service) -> str:
    """The key the migration runner hashes for *svc*'s advisory lock (runner.py)."""
    return f'"{svc.schema}"."{HISTORY_TABLE}"'


# Leaf tables (plain tables and partitions, not partitioned parents: UPDATE/DELETE
# check the replica identity of the leaf a row lives in) that would be published
# (unlogged tables are not), with their replica identity, whether they have a primary
# key and whether the index REPLICA IDENTITY USING INDEX named still exists.
_IDENTITIES = """
SELECT c.relname, c.relreplident::text,
       EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary),
       EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisreplident)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = %s AND c.relkind = 'r' AND c.relpersistence = 'p'
ORDER BY 1
"""


def replica_identity_problems(conn: psycopg.Connection[Any], schema: str) -> list[str]:
    """One line per published leaf table whose UPDATE/DELETE would fail on the live
    source once published, naming the real cause and the fix."""
    out = []
    for name, ident, has_pk, has_replident in conn.execute(_IDENTITIES, [schema]):
        table = f"{schema}.{name}"
        if ident == "n":
            out.append(
                f"table {table} has REPLICA IDENTITY NOTHING"
                + (" (its primary key is not used)" if has_pk else "")
                + ": UPDATE/DELETE would fail once published; ALTER TABLE ... REPLICA "
                + ("IDENTITY DEFAULT" if has_pk else "IDENTITY FULL (or add a primary key)")
                + ", then retry")
        elif ident == "d" and not has_pk:
            out.append(
                f"table {table} has no primary key (REPLICA IDENTITY DEFAULT uses it): add a "
                "primary key, or ALTER TABLE ... REPLICA IDENTITY FULL/USING INDEX, then retry")
        elif ident == "i" and not has_replident:
            out.append(
                f"table {table} has REPLICA IDENTITY USING INDEX, but that index was dropped: "
                "ALTER TABLE ... REPLICA IDENTITY "
                + ("DEFAULT" if has_pk else "USING INDEX <a unique index> (or FULL)")
                + ", then retry")
    return out


def replication_login(conn: psycopg.Connection[Any]) -> tuple[str, str | None]:
    """("role" | "admin", problem or None): whether the source admin on *conn* can
    create the move's temporary LOGIN REPLICATION BYPASSRLS role, or else can serve as
    the subscription's login itself.  PostgreSQL 15 lets only a superuser create a role
    with REPLICATION or BYPASSRLS; 16+ lets a CREATEROLE role grant them when it has
    them itself."""
    row = conn.execute("SELECT rolsuper, rolcreaterole, rolreplication, rolbypassrls,"
                       " rolcanlogin FROM pg_roles WHERE rolname = current_user").fetchone()
    su, createrole, replication, bypassrls, login = row or (False,) * 5
    if su:
        return "role", None
    major = conn.info.server_version // 10000
    has_both = replication and bypassrls
    if has_both and createrole and major >= 16:
        return "role", None
    if has_both and login:
        return "admin", None
    missing = [w for w, has in (("REPLICATION", replication), ("BYPASSRLS", bypassrls))
               if not has]
    return "role", (
        f"the source admin needs {', '.join(missing)} (PostgreSQL {major}: the replication "
        "slot and the subscription's login need REPLICATION, reading every row needs "
        f"BYPASSRLS): ALTER ROLE <admin> {' '.join(missing)} as a superuser")


def source_checks(conn: psycopg.Connection[Any], svc: Service, report: PreflightReport,
                  *, allow_unbounded_wal: bool) -> None:
    schema = svc.schema
    report.tables = [r[0] for r in conn.execute(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = %s AND c.relkind IN ('r', 'p') AND NOT c.relispartition"
        " AND c.relpersistence = 'p' ORDER BY 1", [schema])]
    report.sequences = [r[0] for r in conn.execute(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = %s AND c.relkind = 'S' ORDER BY 1", [schema])]
    if _one(conn, "SELECT count(*) FROM pg_namespace WHERE nspname = %s", [schema]) == 0:
        report.problems.append(f"schema {schema} does not exist on the source")
        return
    report.unlogged = [r[0] for r in conn.execute(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = %s AND c.relkind = 'r' AND c.relpersistence = 'u' ORDER BY 1",
        [schema])]
    report.problems.extend(replica_identity_problems(conn, schema))
    holder = _one(conn, "SELECT string_agg(pid::text, ', ') FROM pg_locks"
                        " WHERE locktype = 'advisory' AND granted AND classid = %s::bigint::oid"
                        " AND objid = (hashtext(%s)::bigint & 4294967295)::oid"
                        " AND objsubid = 2", [MIGRATION_LOCK_CLASS, migration_lock_key(svc)])
    if holder:
        report.problems.append(
            f"a migration of {svc.name} is running on the source (server pid {holder} holds "
            "its migration lock): DDL is not replicated; let it finish, then retry")
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
    report.rls_tables = [r[0] for r in conn.execute(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = %s AND c.relkind IN ('r', 'p') AND c.relrowsecurity ORDER BY 1",
        [schema])]
    report.replication_login, problem = replication_login(conn)
    if problem:
        report.problems.append(problem)
    elif report.replication_login == "admin":
        report.notes.append(
            f"PostgreSQL {conn.info.server_version // 10000}: the source admin cannot create "
            "a role with REPLICATION and BYPASSRLS (that needs a superuser before 16), so the "
            "subscription will connect as the source admin itself; its password sits in the "
            "target's pg_subscription (readable by superusers only) until the clean-up")
    superuser = bool(_one(conn, "SELECT rolsuper FROM pg_roles WHERE rolname = current_user"))
    if not superuser:
        if not _one(conn, "SELECT pg_has_role(current_user, %s, 'USAGE')", [svc.owner_role]):
            report.problems.append(f"the source admin must be a member of {svc.owner_role} "
                                   "to publish its tables (a publication FOR TABLE needs the "
                                   f"table owner): GRANT {svc.owner_role} TO <admin>")
        if not _one(conn, "SELECT has_database_privilege(current_database(), 'CREATE')"):
            report.problems.append(
                "the source admin lacks CREATE on the source database (CREATE PUBLICATION "
                "needs it): GRANT CREATE ON DATABASE <db> TO <admin>")
    report.size_bytes = int(_one(
        conn, "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c"
              " JOIN pg_namespace n ON n.oid = c.relnamespace"
              " WHERE n.nspname = %s AND c.relkind = 'r'", [schema]) or 0)
    report.estimate_s = report.size_bytes / ESTIMATE_BYTES_PER_S
    if report.unlogged:
        report.notes.append(
            "unlogged tables cannot be published; their rows are copied during the freeze "
            f"(the write pause grows with them): {', '.join(report.unlogged)}")
    blockers = conn.execute(
        "SELECT pid, usename, now() - xact_start FROM pg_stat_activity"
        " WHERE backend_xid IS NOT NULL AND xact_start < now() - interval '1 minute'"
        " AND pid <> pg_backend_pid()").fetchall()
    for pid, user, age in blockers:
        report.notes.append(f"transaction of pid {pid} ({user}) open for {age}: creating the "
                            "replication slot waits for it to end")


def slot_survival_checks(conn: psycopg.Connection[Any], slot: str,
                         patroni: PatroniDiscovery | None, report: PreflightReport, *,
                         allow_slot_loss: bool) -> None:
    """Whether the move's logical slot outlives a promotion of one of the source's
    standbys.  PostgreSQL before 17 keeps a logical slot on the primary only: after a
    switchover or failover the new primary has no slot, the subscription cannot go on,
    and the move must be aborted and started again.  On Patroni the slot survives when
    it is one of the cluster's permanent slots (Patroni creates it on the leader,
    copies it to the replicas and advances it there); anything else is refused unless
    *allow_slot_loss*."""
    database = _one(conn, "SELECT current_database()")
    if patroni is None:
        standbys = _one(conn, "SELECT count(*) FROM pg_catalog.pg_stat_replication r WHERE"
                              " NOT EXISTS (SELECT 1 FROM pg_catalog.pg_replication_slots s"
                              " WHERE s.active_pid = r.pid AND s.slot_type = 'logical')")
        if standbys:
            report.notes.append(
                f"the source streams to {standbys} physical standby(s); the move's slot "
                f"{slot} lives on the primary only, so if a standby is promoted during the "
                "move, run move-service --abort and start it again (under Patroni, set "
                "DATABASE_PATRONI_URLS so the preflight checks the permanent slots)")
        return
    try:
        config = patroni.dynamic_config()
    except PatroniDiscoveryError as exc:
        report.problems.append(f"cannot read Patroni's configuration to check that the "
                               f"move's slot survives a failover: {exc}")
        return
    slots, postgresql = config.get("slots"), config.get("postgresql")
    entry = slots.get(slot) if isinstance(slots, dict) else None
    use_slots = postgresql.get("use_slots", True) if isinstance(postgresql, dict) else True
    wanted = {"type": "logical", "database": database, "plugin": "pgoutput"}
    if isinstance(entry, dict) and all(entry.get(k) == v for k, v in wanted.items()) \
            and use_slots is not False:
        report.notes.append(
            f"the move's slot {slot} is a permanent slot of the Patroni cluster: Patroni "
            "copies it to the replicas, so the move goes on after a switchover or failover "
            "of the source (remove the slot from Patroni's configuration once the move "
            "is done)")
        return
    fix = " ".join(f"-s 'slots.{slot}.{k}={v}'" for k, v in wanted.items())
    why = (f"Patroni's configuration names slot {slot} as {entry!r}, not {wanted!r}"
           if entry is not None else
           "postgresql.use_slots is off in Patroni's configuration (permanent slots need "
           "it)" if use_slots is False else
           f"the move's logical slot {slot} is not one of the Patroni cluster's permanent "
           "slots")
    message = (f"{why}: PostgreSQL {conn.info.server_version // 10000} keeps a logical "
               "slot on the leader only, so a switchover or failover during the move would "
               "lose it and the move would have to start over.  Make it permanent, then "
               f"run the move again: patronictl -c <patroni.yml> edit-config --force {fix}")
    if allow_slot_loss:
        report.notes.append(message + " (going on: --allow-slot-loss)")
    else:
        report.problems.append(message + "; or pass --allow-slot-loss to move without it")


def target_checks(conn: psycopg.Connection[Any], svc: Service, report: PreflightReport) -> None:
    version = conn.info.server_version
    superuser = bool(_one(conn, "SELECT rolsuper FROM pg_roles WHERE rolname = current_user"))
    if report.replication_login == "admin" and not report.source_has_password:
        report.problems.append(
            "the subscription must log in as the source admin, but the source URL carries "
            "no password: put the admin's password in the source URL")
    if not superuser:
        if not _one(conn, "SELECT rolcreaterole FROM pg_roles WHERE rolname = current_user"):
            report.problems.append(
                "the target admin lacks CREATEROLE (provisioning creates the topology's "
                "roles there): ALTER ROLE <admin> CREATEROLE as a superuser")
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
                        " AND c.relkind IN ('r', 'p', 'S', 'v', 'm')", [svc.schema])
    if tables:
        report.problems.append(
            f"schema {svc.schema} on the target already has {tables} tables, views or "
            "sequences: "
            "the target must be empty (abort an earlier move with --abort, or drop them)")


# Which database a session is in, as the server sees it (no privilege needed).
_WHO = ("SELECT inet_server_addr()::text, current_setting('port'), current_database(),"
        " current_setting('cluster_name')")


def preflight(source: dict[str, Any], target: dict[str, Any], svc: Service, *,
              allow_unbounded_wal: bool = False, target_prepared: bool = False,
              slot: str | None = None, patroni: PatroniDiscovery | None = None,
              allow_slot_loss: bool = False) -> PreflightReport:
    """Check both servers; never changes anything.  *target_prepared*: a resumed move
    has already copied the DDL, so the target's tables are expected.  *slot*: the
    move's slot, checked for surviving a promotion (*patroni*: the source's cluster,
    see :func:`slot_survival_checks`)."""
    report = PreflightReport(service=svc.name, source_has_password=bool(
        source.get("password")))
    with connect(source, purpose="preflight the source of the move") as conn:
        source_checks(conn, svc, report, allow_unbounded_wal=allow_unbounded_wal)
        if slot is not None:
            slot_survival_checks(conn, slot, patroni, report, allow_slot_loss=allow_slot_loss)
        source_id = conn.execute(_WHO).fetchone()
    with connect(target, purpose="preflight the target of the move") as conn:
        if not target_prepared:
            target_checks(conn, svc, report)
        target_id = conn.execute(_WHO).fetchone()
        if target_id == source_id:
            report.problems.append("the target is the source database itself")
    return report
