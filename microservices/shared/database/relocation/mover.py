"""The phases of a move, each idempotent, journalled on the home server."""

from __future__ import annotations

import os
import secrets
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from ..config import mask_dsn
from ..connections.direct import connect
from ..connections.location import (
    IDLE_TTL_S,
    TTL_S,
    location_string,
    server_key,
)
from ..core.errors import MoveError
from ..core.tls import explain
from ..migrations.history import LOCK_CLASS as MIGRATION_LOCK_CLASS
from ..privileges.provisioning import provision
from ..server.pg_tools import find_tool, libpq_env, needs_tls
from ..topology import Service, Topology
from .meta import JOURNAL, REGISTRY, ensure_meta, use_meta
from .preflight import (
    PreflightReport,
    migration_lock_key,
    preflight,
    replication_login,
)

PHASES = ("prepare", "copy", "cutover", "cleanup")
# How long the registry announces a freeze; a killed cutover frees writers after it.
FREEZE_S = 5.0
# Beyond the registry's TTL: time for a statement checked out just before a process
# saw the freeze to finish before the tables are locked (it would otherwise queue on
# the lock and get ServiceMovedError).
GRACE_S = 0.02
# How long processes read the registry every TTL_S once a cutover is announced: the
# wait before the freeze, the freeze itself and the flip fit well inside it.
WATCH_S = 30.0
# Lag (bytes) under which the copy phase counts as caught up.
CAUGHT_UP_BYTES = 1024 * 1024
HOLD_ENV = "EDULINK_DB_MOVE_HOLD"  # tests: sleep at the start of this phase (to kill -9)


@dataclass
class MoveContext:
    """Everything a move needs.  *home* holds the registry and journal; *source* is
    where the schema lives now (usually home); *target* where it goes."""

    topology: Topology
    service: Service
    home: dict[str, Any]
    source: dict[str, Any]
    target: dict[str, Any]
    passwords: Callable[[Service], str | None]
    migrator_passwords: Callable[[Service], str | None]
    progress: Callable[[str], None] = lambda _m: None
    allow_unbounded_wal: bool = False
    sync_timeout_s: float = 600.0
    barrier_timeout_s: float = 10.0
    slot_timeout_s: float = 30.0
    pauses: list[float] = field(default_factory=list)
    # Per cutover: seconds spent in each step (grace, lock, barrier, setval, commit).
    steps: list[dict[str, float]] = field(default_factory=list)
    # Seconds each phase took in this run (benchmarks/move_service.py reports them).
    phase_s: dict[str, float] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """The publication, slot, subscription and temporary role of this move."""
        return f"edulink_move_{self.service.name}"[:63]

    @property
    def target_location(self) -> str | None:
        loc = location_string(self.target)
        return None if loc == location_string(self.home) else loc


def journal_get(ctx: MoveContext) -> tuple[str, str, str | None] | None:
    """(target, phase, fingerprint) of the move of ctx.service in progress, or None."""
    with connect(ctx.home, purpose="read the move journal") as conn:
        use_meta(conn)
        try:
            row = conn.execute(sql.SQL("SELECT target, phase, fingerprint FROM {}"
                                       " WHERE service = %s").format(JOURNAL),
                               [ctx.service.name]).fetchone()
        except psycopg.errors.UndefinedTable:
            return None
    return (row[0], row[1], row[2]) if row else None


def _journal_set(conn: psycopg.Connection[Any], ctx: MoveContext, phase: str,
                 fingerprint: str | None = None) -> None:
    conn.execute(sql.SQL(
        "INSERT INTO {} (service, target, phase, fingerprint) VALUES (%s, %s, %s, %s)"
        " ON CONFLICT (service) DO UPDATE SET phase = EXCLUDED.phase,"
        " fingerprint = coalesce(EXCLUDED.fingerprint, {}.fingerprint), updated_at = now()"
    ).format(JOURNAL, JOURNAL), [ctx.service.name, location_string(ctx.target), phase,
                                 fingerprint])


def journal_set(ctx: MoveContext, phase: str, fingerprint: str | None = None) -> None:
    with connect(ctx.home, purpose="write the move journal") as conn:
        ensure_meta(conn, ctx.topology)
        _journal_set(conn, ctx, phase, fingerprint)


def _hold(ctx: MoveContext, phase: str) -> None:
    if os.environ.get(HOLD_ENV) == phase:
        ctx.progress(f"holding at phase {phase} ({HOLD_ENV})")
        time.sleep(3600)


def fingerprint(conn: psycopg.Connection[Any], schema: str) -> str:
    """A digest of the schema's tables and columns: DDL is not replicated, so any change
    between prepare and cutover must stop the move."""
    value = conn.execute(
        "SELECT md5(coalesce(string_agg(c.relname || ':' || a.attnum || ':' || a.attname"
        " || ':' || format_type(a.atttypid, a.atttypmod), ',' ORDER BY c.relname, a.attnum),"
        " '')) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped"
        " WHERE n.nspname = %s AND c.relkind IN ('r', 'p')", [schema]).fetchone()
    return str(value[0]) if value else ""


def _tables(conn: psycopg.Connection[Any], schema: str, kinds: tuple[str, ...] = ("r",),
            *, persistence: str | None = None) -> list[str]:
    """Relations of *schema* of the given kinds (and relpersistence, when given)."""
    return [r[0] for r in conn.execute(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = %s AND c.relkind = ANY(%s::\"char\"[])"
        " AND (%s::\"char\" IS NULL OR c.relpersistence = %s::\"char\") ORDER BY 1",
        [schema, list(kinds), persistence, persistence])]


# -- phase 2: prepare the target --------------------------------------------------------


def _provision(ctx: MoveContext, admin: dict[str, Any]) -> None:
    provision(admin, ctx.topology, ctx.passwords, migrator_passwords=ctx.migrator_passwords,
              progress=ctx.progress)


def _copy_ddl(ctx: MoveContext) -> None:
    """pg_dump --schema-only of the schema onto the target, minus what provisioning made
    there already (the schema, its grants and default privileges)."""
    schema = ctx.service.schema
    with connect(ctx.target, purpose="inspect the target") as conn:
        if _tables(conn, schema, ("r", "p", "S", "v", "m")):
            return  # already copied by an earlier run of this phase
        target_major = conn.info.server_version // 10000
    with connect(ctx.source, purpose="inspect the source") as conn:
        major = max(target_major, conn.info.server_version // 10000)
    # One client version for all three (a pg_restore reads only archives of its own
    # version or older); psql applies the script, newer psql talks to older servers.
    pg_dump = find_tool("pg_dump", major, tls=needs_tls(ctx.source) or needs_tls(ctx.target))
    pg_restore, psql = pg_dump.with_name("pg_restore"), pg_dump.with_name("psql")
    with tempfile.TemporaryDirectory(prefix="edulink-move-") as tmp:
        dump, listing = Path(tmp) / "schema.dump", Path(tmp) / "list"
        _run([str(pg_dump), "-Fc", "--schema-only", "-n", schema, "-f", str(dump),
              "-d", str(ctx.source.get("dbname", ""))], ctx.source, "pg_dump of the schema")
        toc = _run([str(pg_restore), "-l", str(dump)], ctx.source, "pg_restore -l")
        keep = []
        for line in toc.splitlines():
            parts = line.split()
            if line.startswith(";") or len(parts) < 4:
                keep.append(line)
                continue
            # Provisioning made the schema, its grants and default privileges already.
            if parts[3] == "SCHEMA" or parts[3:5] == ["DEFAULT", "ACL"] or (
                    parts[3] in ("ACL", "COMMENT") and parts[5:6] == ["SCHEMA"]):
                continue
            keep.append(line)
        listing.write_text("\n".join(keep) + "\n")
        script = Path(tmp) / "schema.sql"
        _run([str(pg_restore), "-L", str(listing), "-f", str(script), str(dump)], ctx.source,
             "pg_restore of the schema's DDL to a script")
        if target_major < 17:
            # pg_dump 17+ sets transaction_timeout, which older servers reject.
            script.write_text("".join(
                line for line in script.read_text().splitlines(keepends=True)
                if not line.startswith("SET transaction_timeout")))
        _run([str(psql), "-X", "-q", "-v", "ON_ERROR_STOP=1", "--single-transaction",
              "-f", str(script), "-d", str(ctx.target.get("dbname", ""))], ctx.target,
             "applying the schema's DDL on the target")


def _run(argv: list[str], params: dict[str, Any], what: str) -> str:
    proc = subprocess.run(argv, env=libpq_env(params), capture_output=True, text=True,
                          check=False)
    if proc.returncode != 0:
        raise MoveError(f"{what} failed ({mask_dsn(params)}): "
                        f"{explain(proc.stderr.strip()[-800:])}")
    return proc.stdout


def prepare(ctx: MoveContext) -> str:
    """Provision the topology on the target and copy the DDL; return the fingerprint."""
    ctx.progress(f"provisioning the topology on the target {mask_dsn(ctx.target)}")
    _provision(ctx, ctx.target)
    ctx.progress(f"copying the DDL of {ctx.service.schema}")
    _copy_ddl(ctx)
    with connect(ctx.source, purpose="fingerprint the schema") as conn:
        return fingerprint(conn, ctx.service.schema)


# -- phase 3: copy and catch up ----------------------------------------------------------


def _exists(conn: psycopg.Connection[Any], query: str, name: str) -> bool:
    return conn.execute(query, [name]).fetchone() is not None


def _subscription_conninfo(ctx: MoveContext, user: str, password: str) -> str:
    params = {k: ctx.source[k] for k in ("host", "port", "dbname", "sslmode")
              if ctx.source.get(k)}
    # The target *server* opens this connection: our root certificate's path means
    # nothing on its file system, and verify-full without one fails.  Encrypted, not
    # authenticated (docs/tls.md).
    if params.get("sslmode") in ("verify-ca", "verify-full"):
        params["sslmode"] = "require"
    params.update(user=user, password=password)
    return make_conninfo(**{k: str(v) for k, v in params.items()})


def _published(conn: psycopg.Connection[Any], schema: str) -> list[str]:
    """The tables a publication of *schema* lists: top-level ones only (a partitioned
    table is published through its root, so partitions attached later follow), not
    unlogged ones (they cannot be published; the cutover copies them)."""
    return [r[0] for r in conn.execute(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = %s AND c.relkind IN ('r', 'p') AND NOT c.relispartition"
        " AND c.relpersistence = 'p' ORDER BY 1", [schema])]


def copy(ctx: MoveContext) -> None:
    """Publish the schema's tables, create the slot and subscribe on the target; wait
    until caught up.  The subscription logs in as a temporary replication role, or --
    when the source admin may not create one (PostgreSQL 15 without a superuser) but has
    REPLICATION and BYPASSRLS itself -- as the source admin (preflight checked which)."""
    schema, name = ctx.service.schema, ctx.name
    password = secrets.token_urlsafe(24)
    with connect(ctx.source, purpose="publish the schema") as conn:
        tables = _published(conn, schema)
        login, problem = replication_login(conn)
        if problem:
            raise MoveError(f"Cannot replicate from the source: {problem}; then --resume "
                            "(or --abort).")
        role = sql.Identifier(name)
        if login == "admin":
            user, password = str(ctx.source.get("user", "")), str(ctx.source.get("password", ""))
            ctx.progress(f"the subscription logs in as the source admin {user} (it may not "
                         "create a replication role here): its password sits in the target's "
                         "pg_subscription, readable by superusers only, until the clean-up")
        else:
            user = name
            if _exists(conn, "SELECT 1 FROM pg_roles WHERE rolname = %s", name):
                conn.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(
                    role, sql.Literal(password)))
            else:
                conn.execute(sql.SQL("CREATE ROLE {} LOGIN REPLICATION BYPASSRLS PASSWORD {}"
                                     ).format(role, sql.Literal(password)))
                conn.execute(sql.SQL("COMMENT ON ROLE {} IS {}").format(
                    role, sql.Literal("edulink-db move-service temporary replication role")))
            conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(
                sql.Identifier(schema), role))
            conn.execute(sql.SQL("GRANT SELECT ON ALL TABLES IN SCHEMA {} TO {}").format(
                sql.Identifier(schema), role))
        if not _exists(conn, "SELECT 1 FROM pg_publication WHERE pubname = %s", name):
            stmt = sql.SQL("CREATE PUBLICATION {}").format(sql.Identifier(name))
            if tables:
                stmt = sql.SQL("{} FOR TABLE {}").format(stmt, sql.SQL(", ").join(
                    sql.Identifier(schema, t) for t in tables))
            if conn.info.server_version >= 130000:
                # Changes to a partition are published as the root's: the target's
                # partitioning routes them, partitions attached later are covered, and
                # the initial copy reads each root with its partitions.
                stmt = sql.SQL("{} WITH (publish_via_partition_root = true)").format(stmt)
            conn.execute(stmt)
        if not _exists(conn, "SELECT 1 FROM pg_replication_slots WHERE slot_name = %s", name):
            _create_slot(ctx, conn)
    with connect(ctx.target, purpose="subscribe on the target") as conn:
        conninfo = _subscription_conninfo(ctx, user, password)
        if _exists(conn, "SELECT 1 FROM pg_subscription WHERE subname = %s", name):
            conn.execute(sql.SQL("ALTER SUBSCRIPTION {} CONNECTION {}").format(
                sql.Identifier(name), sql.Literal(conninfo)))
            conn.execute(sql.SQL("ALTER SUBSCRIPTION {} ENABLE").format(sql.Identifier(name)))
        else:
            # synchronous_commit: the apply worker reports a position as flushed only
            # once its local commit is flushed; 'off' (the default) delays that report,
            # hence the cutover's barrier, by up to wal_writer_delay.
            # run_as_owner (16+): apply as the admin, not as each table's owner, whom a
            # FORCE ROW LEVEL SECURITY table would refuse ("cannot replicate into
            # relation with row-level security enabled"); 15 always applies as the
            # subscription owner (a superuser there).
            as_owner = sql.SQL(", run_as_owner = true") \
                if conn.info.server_version >= 160000 else sql.SQL("")
            conn.execute(sql.SQL(
                "CREATE SUBSCRIPTION {} CONNECTION {} PUBLICATION {} WITH (create_slot = false,"
                " slot_name = {}, copy_data = true, synchronous_commit = 'on'{})").format(
                sql.Identifier(name), sql.Literal(conninfo), sql.Identifier(name),
                sql.Literal(name), as_owner))
    wait_caught_up(ctx)


# Sessions whose transaction holds an xid: creating a logical slot waits for them.
_SLOT_BLOCKERS = ("SELECT pid, usename, state, now() - xact_start FROM pg_stat_activity"
                  " WHERE backend_xid IS NOT NULL AND pid <> pg_backend_pid() ORDER BY pid")


def _create_slot(ctx: MoveContext, conn: psycopg.Connection[Any]) -> None:
    """Create the move's slot, waiting at most ctx.slot_timeout_s for the open write
    transactions it must see end.  On timeout name them, and drop the publication and
    temporary role this phase made, so nothing is left behind."""
    ctx.progress("creating the replication slot (waits for open write transactions)")
    try:
        conn.execute(sql.SQL("SET statement_timeout = {}").format(
            sql.Literal(f"{int(ctx.slot_timeout_s * 1000)}ms")))
        conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", [ctx.name])
    except psycopg.errors.QueryCanceled:
        blockers = conn.execute(_SLOT_BLOCKERS).fetchall()
        conn.execute("RESET statement_timeout")
        conn.execute(sql.SQL("DROP PUBLICATION IF EXISTS {}").format(sql.Identifier(ctx.name)))
        _drop_move_role(conn, ctx)
        raise MoveError(
            f"Creating the replication slot waited {ctx.slot_timeout_s:g} s for open write "
            "transactions to end: "
            + (", ".join(f"pid {p} ({u}, {s}, open {age})" for p, u, s, age in blockers)
               or "none left now")
            + ". End them (pg_terminate_backend(pid)) or let them finish, then --resume; "
            "nothing was left behind.") from None
    conn.execute("RESET statement_timeout")


def _drop_move_role(conn: psycopg.Connection[Any], ctx: MoveContext) -> None:
    """Drop the temporary replication role, if any.  Revoke its grants rather than
    DROP OWNED BY: on 16+ a non-superuser admin that created it holds ADMIN OPTION on
    it but not its privileges, which DROP OWNED BY requires."""
    if not _exists(conn, "SELECT 1 FROM pg_roles WHERE rolname = %s", ctx.name):
        return
    role, schema = sql.Identifier(ctx.name), sql.Identifier(ctx.service.schema)
    if _exists(conn, "SELECT 1 FROM pg_namespace WHERE nspname = %s", ctx.service.schema):
        conn.execute(sql.SQL("REVOKE ALL ON ALL TABLES IN SCHEMA {} FROM {}").format(
            schema, role))
        conn.execute(sql.SQL("REVOKE ALL ON SCHEMA {} FROM {}").format(schema, role))
    try:
        conn.execute(sql.SQL("DROP ROLE {}").format(role))
    except psycopg.errors.DependentObjectsStillExist:
        conn.execute(sql.SQL("DROP OWNED BY {}").format(role))
        conn.execute(sql.SQL("DROP ROLE {}").format(role))


def lag(ctx: MoveContext) -> tuple[int, int, int, float | None, str]:
    """(tables ready, tables, lag bytes, lag seconds, wal_status) of the move."""
    with connect(ctx.target, purpose="read the subscription's progress") as conn:
        ready, total = conn.execute(
            "SELECT count(*) FILTER (WHERE r.srsubstate IN ('r', 's')), count(*)"
            " FROM pg_subscription_rel r JOIN pg_subscription s ON s.oid = r.srsubid"
            " WHERE s.subname = %s", [ctx.name]).fetchone() or (0, 0)
        failures = conn.execute(
            "SELECT apply_error_count + sync_error_count FROM pg_stat_subscription_stats"
            " WHERE subname = %s", [ctx.name]).fetchone()
    if failures and failures[0]:
        ctx.progress(f"the subscription's workers on the target failed {failures[0]} times "
                     "so far (they retry): see the target's server log")
    with connect(ctx.source, purpose="read the slot's lag") as conn:
        row = conn.execute(
            "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint,"
            " wal_status, (SELECT extract(epoch FROM replay_lag)::float8 FROM pg_stat_replication"
            "  WHERE application_name = %s LIMIT 1)"
            " FROM pg_replication_slots WHERE slot_name = %s", [ctx.name, ctx.name]).fetchone()
    if row is None:
        raise MoveError(f"The replication slot {ctx.name} is gone from the source: --abort, "
                        "then start the move again.")
    return int(ready), int(total), int(row[0] or 0), row[2], str(row[1])


def wait_caught_up(ctx: MoveContext) -> None:
    deadline = time.monotonic() + ctx.sync_timeout_s
    shown = 0.0
    while True:
        ready, total, behind, seconds, wal_status = lag(ctx)
        if wal_status == "lost":
            raise MoveError("The source dropped WAL the move still needed "
                            "(max_slot_wal_keep_size reached): --abort, then retry with a "
                            "larger cap or when the source is quieter.")
        if ready == total and behind < CAUGHT_UP_BYTES:
            ctx.progress(f"caught up: {ready}/{total} tables synced, lag {behind} bytes")
            return
        if time.monotonic() - shown > 1.0:
            ctx.progress(f"copying: {ready}/{total} tables synced, lag {behind} bytes"
                         + (f", {seconds:.1f} s" if seconds is not None else ""))
            shown = time.monotonic()
        if time.monotonic() > deadline:
            raise MoveError(f"The copy has not caught up after {ctx.sync_timeout_s:g} s "
                            f"({ready}/{total} tables, lag {behind} bytes); it keeps running: "
                            "--resume later, or --abort.")
        time.sleep(0.2)


# -- phase 4: cut over -------------------------------------------------------------------


def _announce_freeze(conn: psycopg.Connection[Any], ctx: MoveContext,
                     seconds: float | None) -> None:
    """Announce (or lift, *seconds* None) a freeze of ctx.service in the registry on
    *conn* (the home server, meta schema ensured); the caller commits."""
    conn.execute(sql.SQL(
        "INSERT INTO {} (service, frozen_until) VALUES (%s, now() + make_interval("
        "secs => %s)) ON CONFLICT (service) DO UPDATE SET frozen_until ="
        " EXCLUDED.frozen_until").format(REGISTRY), [ctx.service.name, seconds])


def _flip(conn: psycopg.Connection[Any], ctx: MoveContext) -> None:
    conn.execute(sql.SQL(
        "INSERT INTO {} (service, location, epoch, moved_at) VALUES (%s, %s, 1, now())"
        " ON CONFLICT (service) DO UPDATE SET location = EXCLUDED.location,"
        " epoch = {}.epoch + 1, frozen_until = NULL, moved_at = now()").format(
        REGISTRY, REGISTRY), [ctx.service.name, ctx.target_location])
    _journal_set(conn, ctx, "cleanup")


def _writers(conn: psycopg.Connection[Any], schema: str) -> list[sql.Composable]:
    """Every role that may write a table of *schema* (PUBLIC included), bar the owner."""
    rows = conn.execute(
        "SELECT DISTINCT a.grantee FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " CROSS JOIN LATERAL aclexplode(c.relacl) a"
        " WHERE n.nspname = %s AND c.relkind IN ('r', 'p', 'v', 'f')"
        "  AND a.privilege_type IN ('INSERT', 'UPDATE', 'DELETE', 'TRUNCATE')"
        "  AND a.grantee <> c.relowner"
        " UNION SELECT DISTINCT a.grantee FROM pg_attribute t"
        " JOIN pg_class c ON c.oid = t.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace"
        " CROSS JOIN LATERAL aclexplode(t.attacl) a"
        " WHERE n.nspname = %s AND a.privilege_type IN ('INSERT', 'UPDATE')",
        [schema, schema]).fetchall()
    names: list[sql.Composable] = []
    for (oid,) in rows:
        if oid == 0:
            names.append(sql.SQL("PUBLIC"))
        else:
            role = conn.execute("SELECT rolname FROM pg_roles WHERE oid = %s", [oid]).fetchone()
            if role:
                names.append(sql.Identifier(role[0]))
    return names


def cutover(ctx: MoveContext, expected_fingerprint: str | None) -> float:
    """Freeze, barrier, sequences, flip, unfreeze.  Returns the write pause in seconds
    (ctx.steps gets its breakdown).  Any failure before the flip rolls the freeze back:
    the source stays authoritative."""
    schema, svc = ctx.service.schema, ctx.service
    steps: dict[str, float] = {}
    mark = started = time.monotonic()

    def step(name: str) -> None:
        nonlocal mark
        now = time.monotonic()
        steps[name] = now - mark
        mark = now

    # Connect first: connecting is not part of the pause.
    opened: list[psycopg.Connection[Any]] = []
    try:
        src = connect(ctx.source, purpose="freeze the schema", autocommit=False)
        opened.append(src)
        flusher = connect(ctx.source, purpose="flush the barrier")
        opened.append(flusher)
        tgt = connect(ctx.target, purpose="set the sequences")
        opened.append(tgt)
        home = src if location_string(ctx.source) == location_string(ctx.home) else connect(
            ctx.home, purpose="flip the routing", autocommit=False)
        opened.append(home)
    except BaseException:
        for conn in opened:
            conn.close()
        raise
    flipped = False
    try:
        # Not part of the pause: the target's rows are current up to the catch-up, and
        # a materialized view is a snapshot anyway.  Before the flip, so no process
        # ever reads an unpopulated view on the target.
        _refresh_matviews(ctx, src, tgt)
        ensure_meta(home, ctx.topology)
        # Processes read the registry once a second until a cutover is announced: set
        # watch_until, and let every process see it (and switch to reading it every
        # TTL_S) before the freeze; this wait is not part of the write pause.
        home.execute(sql.SQL(
            "INSERT INTO {} (service, watch_until) VALUES (%s, now() + make_interval("
            "secs => %s)) ON CONFLICT (service) DO UPDATE SET watch_until ="
            " EXCLUDED.watch_until").format(REGISTRY), [svc.name, WATCH_S])
        home.commit()
        time.sleep(IDLE_TTL_S + TTL_S)
        mark = started = time.monotonic()
        _announce_freeze(home, ctx, FREEZE_S)
        home.commit()
        # Every process re-reads the registry within TTL_S: after this, new checkouts of
        # the service wait instead of writing into the freeze, and the few checked out
        # just before have had GRACE_S to finish their statement.
        time.sleep(TTL_S + GRACE_S)
        step("grace")
        src.execute("SET LOCAL lock_timeout = '2s'")
        tables = _tables(src, schema)
        if tables:
            src.execute(sql.SQL("LOCK TABLE {} IN EXCLUSIVE MODE").format(
                sql.SQL(", ").join(sql.Identifier(schema, t) for t in tables)))
        # A migration holding the runner's lock would change DDL that is not
        # replicated; holding it ourselves until the flip commits keeps new ones out.
        row = src.execute("SELECT pg_try_advisory_xact_lock(%s, hashtext(%s))",
                          [MIGRATION_LOCK_CLASS, migration_lock_key(svc)]).fetchone()
        if not (row and row[0]):
            raise MoveError(f"A migration of {svc.name} is running on the source (it holds "
                            "the migration lock); nothing changed: let it finish, then "
                            "--resume.")
        if expected_fingerprint is not None and fingerprint(src, schema) != expected_fingerprint:
            raise MoveError(f"The tables of {schema} changed (DDL) since the copy began; DDL "
                            "is not replicated: --abort, then move again.")
        # The owner role too: it holds its privileges by ownership, and through it a
        # migrator session opened before the cutover, a SECURITY DEFINER function or a
        # view it owns would still commit on the source after the flip.  (A superuser
        # session cannot be stopped this way: see docs/move-service.md.)  CASCADE: a
        # writer holding a grant option may have passed the privilege on.
        writers = [*_writers(src, schema), sql.Identifier(svc.owner_role)]
        src.execute(sql.SQL("REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON ALL TABLES IN "
                            "SCHEMA {} FROM {} CASCADE").format(
            sql.Identifier(schema), sql.SQL(", ").join(writers)))
        # The migrator must not start new sessions (DDL) either: no logins until cleanup.
        src.execute(sql.SQL("ALTER ROLE {} NOLOGIN").format(sql.Identifier(svc.migrator_role)))
        step("lock")
        # Every write to the schema committed before the lock was granted, so its commit
        # record lies before the insert position.  A committed transaction flushes the
        # WAL past it now (not at the next wal_writer_delay); a transactional logical
        # message (ignored by the subscription) makes the walsender pass it on at once:
        # measured ~8 ms to confirmation, against 30-300 ms for an empty transaction.
        barrier = src.execute("SELECT pg_current_wal_insert_lsn()").fetchone()
        assert barrier is not None
        _flush_barrier(flusher, ctx.name)
        _wait_barrier(ctx, flusher, str(barrier[0]))
        step("barrier")
        seqs = _tables(src, schema, ("S",))
        if seqs:
            values = src.execute(sql.SQL(" UNION ALL ").join(
                sql.SQL("SELECT {}, last_value, is_called FROM {}").format(
                    sql.Literal(sql.Identifier(schema, q).as_string(src)),
                    sql.Identifier(schema, q)) for q in seqs)).fetchall()
            tgt.execute(sql.SQL("SELECT {}").format(sql.SQL(", ").join(
                sql.SQL("setval({}::regclass, {}, {})").format(
                    sql.Literal(n), sql.Literal(v), sql.Literal(c)) for n, v, c in values)))
        step("setval")
        unlogged = _tables(src, schema, ("r",), persistence="u")
        if unlogged:
            _copy_unlogged(src, tgt, schema, unlogged)
            step("unlogged")
        _verify_copy(src, tgt, schema)
        step("verify")
        _hold(ctx, "cutover")
        _flip(home, ctx)
        if home is not src:
            home.commit()
        src.commit()
        flipped = True
        step("commit")
    except psycopg.errors.LockNotAvailable:
        raise MoveError(f"Could not lock the tables of {schema} within 2 s (a long "
                        "transaction holds them); nothing changed: --resume to retry.") from None
    finally:
        if not flipped:
            src.rollback()
            if home is not src:
                home.rollback()
            _announce_freeze(home, ctx, None)
            home.commit()
        for conn in opened:
            conn.close()
    pause = time.monotonic() - started
    ctx.pauses.append(pause)
    ctx.steps.append(steps)
    return pause


def _refresh_matviews(ctx: MoveContext, src: psycopg.Connection[Any],
                      tgt: psycopg.Connection[Any]) -> None:
    """REFRESH on the target every materialized view populated on the source
    (pg_dump --schema-only creates them empty), as its owner: ownership stays with the
    topology's owner role, who can REFRESH it later.  A view never populated on the
    source stays unpopulated.  Creation (oid) order on the target is pg_dump's
    dependency order, so a view over another view is refreshed after it."""
    schema = ctx.service.schema
    populated = set(_matviews(src, schema, populated_only=True))
    if src.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
        src.rollback()  # src is not autocommit: do not hold a snapshot until the lock
    todo = [(m, owner) for m, owner, is_pop in _matview_rows(tgt, schema)
            if m in populated and not is_pop]
    for view, owner in todo:
        ctx.progress(f"refreshing the materialized view {schema}.{view} on the target")
        tgt.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(owner)))
        try:
            tgt.execute(sql.SQL("REFRESH MATERIALIZED VIEW {}").format(
                sql.Identifier(schema, view)))
        finally:
            tgt.execute("RESET ROLE")


def _matview_rows(conn: psycopg.Connection[Any], schema: str) -> list[tuple[str, str, bool]]:
    return [(r[0], r[1], bool(r[2])) for r in conn.execute(
        "SELECT c.relname, pg_get_userbyid(c.relowner), c.relispopulated FROM pg_class c"
        " JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = %s AND c.relkind = 'm' ORDER BY c.oid", [schema])]


def _matviews(conn: psycopg.Connection[Any], schema: str, *, populated_only: bool
              ) -> list[str]:
    return [m for m, _o, pop in _matview_rows(conn, schema) if pop or not populated_only]


def _copy_unlogged(src: psycopg.Connection[Any], tgt: psycopg.Connection[Any], schema: str,
                   tables: list[str]) -> None:
    """Copy unlogged tables (never published) in the freeze: *src* holds their locks,
    so the rows read are the final ones.  The target's copy is replaced wholesale;
    its triggers are skipped where the target admin may (session_replication_role),
    as the subscription's apply skips them."""
    tgt.execute("BEGIN")
    try:
        try:
            tgt.execute("SET LOCAL session_replication_role = replica")
        except psycopg.errors.InsufficientPrivilege:
            tgt.execute("ROLLBACK")
            tgt.execute("BEGIN")
        for table in tables:
            ident = sql.Identifier(schema, table)
            tgt.execute(sql.SQL("TRUNCATE ONLY {}").format(ident))
            with src.cursor().copy(sql.SQL("COPY (SELECT * FROM ONLY {}) TO STDOUT").format(
                    ident)) as out, tgt.cursor().copy(sql.SQL("COPY {} FROM STDIN").format(
                    ident)) as into:
                for chunk in out:
                    into.write(chunk)
        tgt.execute("COMMIT")
    except BaseException:
        tgt.execute("ROLLBACK")
        raise


def _counts(conn: psycopg.Connection[Any], schema: str, tables: list[str]
            ) -> dict[str, int]:
    """Rows of each table FROM ONLY (a partitioned root or inheritance parent would
    count its children too), in one statement."""
    if not tables:
        return {}
    rows = conn.execute(sql.SQL(" UNION ALL ").join(
        sql.SQL("SELECT {}::text, count(*) FROM ONLY {}").format(
            sql.Literal(t), sql.Identifier(schema, t)) for t in tables)).fetchall()
    return {str(t): int(n) for t, n in rows}


def _verify_copy(src: psycopg.Connection[Any], tgt: psycopg.Connection[Any],
                 schema: str) -> None:
    """In the freeze, before the flip: every leaf table (plain, partition, inheritance
    child, unlogged) holds as many rows on the target as on the source, every sequence
    on the target is at least the source's, and materialized views are populated
    exactly where they are on the source.  Both sides count at once (two threads, one
    statement each), so the pause grows by the slower count, not their sum.  Raises
    MoveError naming the first difference; the caller rolls the freeze back."""
    tables = _tables(src, schema, ("r",))
    found: dict[str, dict[str, int]] = {}
    failed: list[BaseException] = []

    def count_target() -> None:
        try:
            found["target"] = _counts(tgt, schema, tables)
        except BaseException as exc:
            failed.append(exc)

    worker = threading.Thread(target=count_target)
    worker.start()
    try:
        source = _counts(src, schema, tables)
    finally:
        worker.join()
    if failed:
        raise MoveError(f"Counting the rows on the target failed ({failed[0]}); nothing "
                        "changed, the source stays authoritative: --resume to retry.")
    target = found["target"]
    for table in tables:
        if source[table] != target.get(table):
            raise MoveError(
                f"Row counts differ in the freeze: {schema}.{table} has {source[table]} rows "
                f"on the source, {target.get(table)} on the target; nothing was flipped, the "
                "source stays authoritative: --abort, then move again.")
    seqs = _tables(src, schema, ("S",))
    if seqs:
        query = sql.SQL(" UNION ALL ").join(
            sql.SQL("SELECT {}::text, last_value FROM {}").format(
                sql.Literal(q), sql.Identifier(schema, q)) for q in seqs)
        theirs = {str(q): int(v) for q, v in tgt.execute(query)}
        for q, v in src.execute(query):
            if theirs.get(q, v - 1) < v:
                raise MoveError(f"Sequence {schema}.{q} is at {theirs.get(q)} on the target, "
                                f"behind the source's {v}; nothing was flipped: --resume.")
    want = set(_matviews(src, schema, populated_only=True))
    have = set(_matviews(tgt, schema, populated_only=True))
    if want != have:
        raise MoveError(f"Materialized views of {schema} populated on the source "
                        f"({', '.join(sorted(want)) or 'none'}) differ from the target's "
                        f"({', '.join(sorted(have)) or 'none'}); nothing was flipped: --resume.")


def _flush_barrier(conn: psycopg.Connection[Any], name: str) -> None:
    conn.execute("SET synchronous_commit = on")
    try:
        conn.execute("SELECT pg_logical_emit_message(true, %s, 'barrier')", [name])
    except psycopg.errors.InsufficientPrivilege:
        conn.execute("SELECT pg_current_xact_id()")  # slower, but needs no privilege


def _wait_barrier(ctx: MoveContext, conn: psycopg.Connection[Any], barrier: str) -> None:
    deadline = time.monotonic() + ctx.barrier_timeout_s
    while True:
        row = conn.execute("SELECT confirmed_flush_lsn >= %s::pg_lsn FROM"
                           " pg_replication_slots WHERE slot_name = %s",
                           [barrier, ctx.name]).fetchone()
        if row and row[0]:
            return
        if time.monotonic() > deadline:
            raise MoveError(f"The target did not confirm the barrier LSN {barrier} "
                            f"within {ctx.barrier_timeout_s:g} s; the freeze was lifted "
                            "and nothing changed: --resume to retry.")
        time.sleep(0.002)


# -- phase 5: clean up ---------------------------------------------------------------------


def drop_replication(ctx: MoveContext) -> None:
    """Drop subscription, slot, publication and temporary role, wherever they exist."""
    name = sql.Identifier(ctx.name)
    try:
        with connect(ctx.target, purpose="drop the subscription") as conn:
            if _exists(conn, "SELECT 1 FROM pg_subscription WHERE subname = %s", ctx.name):
                conn.execute(sql.SQL("ALTER SUBSCRIPTION {} DISABLE").format(name))
                conn.execute(sql.SQL("ALTER SUBSCRIPTION {} SET (slot_name = NONE)").format(name))
                conn.execute(sql.SQL("DROP SUBSCRIPTION {}").format(name))
    except MoveError:
        raise
    with connect(ctx.source, purpose="drop the slot and publication") as conn:
        deadline = time.monotonic() + 30
        while True:
            row = conn.execute("SELECT active_pid FROM pg_replication_slots WHERE slot_name"
                               " = %s", [ctx.name]).fetchone()
            if row is None:
                break
            if row[0] is None:
                conn.execute("SELECT pg_drop_replication_slot(%s)", [ctx.name])
                break
            if time.monotonic() > deadline:
                conn.execute("SELECT pg_terminate_backend(%s)", [row[0]])
            time.sleep(0.1)
        conn.execute(sql.SQL("DROP PUBLICATION IF EXISTS {}").format(name))
        _drop_move_role(conn, ctx)


def retire_source(ctx: MoveContext, epoch: int) -> None:
    """Rename the source's stale copy aside (kept, readable by the admin only) and
    re-provision an empty schema there, so `verify` passes and a process still writing
    to the old location gets an error (42P01) that its pool turns into a retry."""
    schema = ctx.service.schema
    retired = f"{schema}_moved_{epoch}"[:63]
    time.sleep(TTL_S * 2)  # every process has re-read the registry by now
    with connect(ctx.source, purpose="retire the source's copy", autocommit=False) as conn:
        if _tables(conn, schema, ("r", "p", "S", "v", "m")) and not _exists(
                conn, "SELECT 1 FROM pg_namespace WHERE nspname = %s", retired):
            conn.execute(sql.SQL("ALTER SCHEMA {} RENAME TO {}").format(
                sql.Identifier(schema), sql.Identifier(retired)))
            roles = sql.SQL(", ").join(
                [sql.SQL("PUBLIC"), *(sql.Identifier(s.runtime_role)
                                      for s in ctx.topology.services)])
            for what in ("ALL TABLES", "ALL SEQUENCES", "ALL FUNCTIONS"):
                conn.execute(sql.SQL("REVOKE ALL ON {} IN SCHEMA {} FROM {}").format(
                    sql.SQL(what), sql.Identifier(retired), roles))
            conn.execute(sql.SQL("REVOKE ALL ON SCHEMA {} FROM {}").format(
                sql.Identifier(retired), roles))
            for obj in ("TABLES", "SEQUENCES", "FUNCTIONS"):
                conn.execute(sql.SQL("ALTER DEFAULT PRIVILEGES FOR ROLE {} IN SCHEMA {} "
                                     "REVOKE ALL ON {} FROM {}").format(
                    sql.Identifier(ctx.service.owner_role), sql.Identifier(retired),
                    sql.SQL(obj), roles))
        conn.execute(sql.SQL("ALTER ROLE {} LOGIN").format(
            sql.Identifier(ctx.service.migrator_role)))
        conn.commit()
    _provision(ctx, ctx.source)


def cleanup(ctx: MoveContext) -> None:
    drop_replication(ctx)
    with connect(ctx.home, purpose="read the registry") as conn:
        row = conn.execute(sql.SQL("SELECT epoch FROM {} WHERE service = %s").format(REGISTRY),
                           [ctx.service.name]).fetchone()
    retire_source(ctx, int(row[0]) if row else 0)
    with connect(ctx.home, purpose="close the journal") as conn:
        conn.execute(sql.SQL("DELETE FROM {} WHERE service = %s").format(JOURNAL),
                     [ctx.service.name])


# -- orchestration --------------------------------------------------------------------------


def current_location(ctx: MoveContext) -> str:
    """Where the registry on the home server says ctx.service lives now (a location
    string; home's when it never moved or moved back)."""
    with connect(ctx.home, purpose="read the registry") as conn:
        use_meta(conn)
        try:
            row = conn.execute(sql.SQL("SELECT location FROM {} WHERE service = %s").format(
                REGISTRY), [ctx.service.name]).fetchone()
        except psycopg.errors.UndefinedTable:
            row = None
    return row[0] if row and row[0] else location_string(ctx.home)


def _check_source_is_current(ctx: MoveContext) -> None:
    """Refuse to move from a server the service has left: its schema there is the
    empty one the clean-up re-provisioned, and moving it would point every pool at an
    empty copy, the data left behind."""
    where = current_location(ctx)
    # sslmode may differ between the URL given to one move and the one given to the next.
    if server_key(where) != server_key(ctx.source):
        raise MoveError(
            f"{ctx.service.name} lives on {where} now (the registry on the home server), "
            f"not on {location_string(ctx.source)}: pass that server's admin URL as --from "
            "to move it from there.")


# Session advisory lock on the home server, (class, hashtext(service)): one run of
# move-service (move, resume or abort) per service at a time.  A killed run's session
# ends with it, and so does its lock.
_LOCK_CLASS = 0x6D6F7665  # "move"


@contextmanager
def move_lock(ctx: MoveContext) -> Iterator[None]:
    """Hold ctx.service's move lock on the home server, or raise MoveError naming the
    session that holds it.  Without it two deploys' ``--resume`` (or a resume and an
    abort) both pass the journal check and undo each other's replication."""
    conn = connect(ctx.home, purpose="lock the move")
    try:
        row = conn.execute("SELECT pg_try_advisory_lock(%s, hashtext(%s))",
                           [_LOCK_CLASS, ctx.service.name]).fetchone()
        if not (row and row[0]):
            holders = [str(r[0]) for r in conn.execute(
                "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted"
                " AND classid = %s::bigint::oid"
                " AND objid = (hashtext(%s)::bigint & 4294967295)::oid AND objsubid = 2",
                [_LOCK_CLASS, ctx.service.name])]
            raise MoveError(
                f"another move-service run of {ctx.service.name} is in progress (server "
                f"pid {', '.join(holders) or 'unknown'} on the home server): let it finish; "
                "if it was killed, its session ends with it -- retry in a moment.")
        yield
    finally:
        conn.close()


def run_move(ctx: MoveContext, *, resume: bool = False) -> PreflightReport | None:
    """Run (or resume) the move of ctx.service; returns the preflight report of a new
    move.  Raises MoveError (with what to do) when it refuses or stops, or when
    another run of this service's move holds its lock."""
    with move_lock(ctx):
        return _run_move(ctx, resume=resume)


def _run_move(ctx: MoveContext, *, resume: bool) -> PreflightReport | None:
    entry = journal_get(ctx)
    target = location_string(ctx.target)
    if entry is not None and not resume:
        raise MoveError(f"A move of {ctx.service.name} to {entry[0]} is in progress (phase "
                        f"{entry[1]}): finish it with --resume, or undo it with --abort.")
    if entry is None and resume:
        raise MoveError(f"No move of {ctx.service.name} is in progress; nothing to resume.")
    if entry is not None and entry[0] != target:
        raise MoveError(f"The move in progress goes to {entry[0]}, not {target}: pass the "
                        "same --to to resume or abort it.")
    report = None
    phase, expected = (entry[1], entry[2]) if entry else (None, None)
    if phase is None:
        _check_source_is_current(ctx)
        report = preflight(ctx.source, ctx.target, ctx.service,
                           allow_unbounded_wal=ctx.allow_unbounded_wal)
        for note in report.notes:
            ctx.progress(note)
        ctx.progress(f"{len(report.tables)} tables, {len(report.sequences)} sequences, "
                     f"{report.size_bytes / 1e6:.1f} MB: about {report.estimate_s:.0f} s to copy")
        if not report.ok:
            raise MoveError("Preflight refused the move:\n  - " + "\n  - ".join(report.problems))
        journal_set(ctx, "prepare")
        phase = "prepare"
    if phase == "prepare":
        _hold(ctx, "prepare")
        t0 = time.monotonic()
        expected = prepare(ctx)
        ctx.phase_s["prepare"] = time.monotonic() - t0
        journal_set(ctx, "copy", expected)
        phase = "copy"
    if phase == "copy":
        _hold(ctx, "copy")
        t0 = time.monotonic()
        copy(ctx)
        ctx.phase_s["copy"] = time.monotonic() - t0
        journal_set(ctx, "cutover")
        phase = "cutover"
    if phase == "cutover":
        ctx.progress("cutting over")
        t0 = time.monotonic()
        wait_caught_up(ctx)
        pause = cutover(ctx, expected)
        ctx.phase_s["cutover"] = time.monotonic() - t0
        ctx.progress(f"routing flipped; writes paused {pause * 1000:.0f} ms ("
                     + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in ctx.steps[-1].items())
                     + ")")
        phase = "cleanup"
    if phase == "cleanup":
        _hold(ctx, "cleanup")
        t0 = time.monotonic()
        cleanup(ctx)
        ctx.phase_s["cleanup"] = time.monotonic() - t0
        ctx.progress("cleaned up: no slot, publication, subscription or temporary role left")
    return report


def abort(ctx: MoveContext) -> None:
    """Undo a move that has not cut over: drop what it created on both servers and lift
    any freeze.  The source stays authoritative; the target's copy is dropped.  Refused
    while another run of this service's move holds its lock."""
    with move_lock(ctx):
        _abort(ctx)


def _abort(ctx: MoveContext) -> None:
    entry = journal_get(ctx)
    if entry is not None and entry[1] == "cleanup":
        raise MoveError(f"The move of {ctx.service.name} has cut over already; finish it "
                        "with --resume, then move the service back (see docs/move-service.md).")
    if entry is not None and entry[0] != location_string(ctx.target):
        raise MoveError(f"The move in progress goes to {entry[0]}: pass that as --to.")
    drop_replication(ctx)
    if entry is not None:
        with connect(ctx.home, purpose="lift the freeze") as conn:
            _announce_freeze(conn, ctx, None)
        with connect(ctx.target, purpose="drop the target's copy") as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(
                sql.Identifier(ctx.service.schema)))
        _provision(ctx, ctx.target)
        with connect(ctx.home, purpose="close the journal") as conn:
            conn.execute(sql.SQL("DELETE FROM {} WHERE service = %s").format(JOURNAL),
                         [ctx.service.name])
