"""Phase 2 of a move, prepare: provision the topology on the target and copy the
schema's DDL there; the fingerprint that later phases compare against."""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path
from typing import Any

import psycopg

from ..config import mask_dsn
from ..connections.direct import connect
from ..core.errors import MoveError
from ..core.tls import explain
from ..privileges.provisioning import provision
from ..server.pg_tools import find_tool, libpq_env, needs_tls
from .context import MoveContext, relations


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



def provision_topology(ctx: MoveContext, admin: dict[str, Any]) -> None:
    """Provision ctx.topology on the server *admin* connects to (idempotent)."""
    provision(admin, ctx.topology, ctx.passwords, migrator_passwords=ctx.migrator_passwords,
              progress=ctx.progress)


def _copy_ddl(ctx: MoveContext) -> None:
    """pg_dump --schema-only of the schema onto the target, minus what provisioning made
    there already (the schema, its grants and default privileges)."""
    schema = ctx.service.schema
    with connect(ctx.target, purpose="inspect the target") as conn:
        if relations(conn, schema, ("r", "p", "S", "v", "m")):
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
        run_tool([str(pg_dump), "-Fc", "--schema-only", "-n", schema, "-f", str(dump),
              "-d", str(ctx.source.get("dbname", ""))], ctx.source, "pg_dump of the schema")
        toc = run_tool([str(pg_restore), "-l", str(dump)], ctx.source, "pg_restore -l")
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
        run_tool([str(pg_restore), "-L", str(listing), "-f", str(script), str(dump)], ctx.source,
             "pg_restore of the schema's DDL to a script")
        if target_major < 17:
            # pg_dump 17+ sets transaction_timeout, which older servers reject.
            script.write_text("".join(
                line for line in script.read_text().splitlines(keepends=True)
                if not line.startswith("SET transaction_timeout")))
        run_tool([str(psql), "-X", "-q", "-v", "ON_ERROR_STOP=1", "--single-transaction",
              "-f", str(script), "-d", str(ctx.target.get("dbname", ""))], ctx.target,
             "applying the schema's DDL on the target")


def run_tool(argv: list[str], params: dict[str, Any], what: str) -> str:
    """Run a PostgreSQL client tool with *params*' libpq environment; return its stdout,
    or raise MoveError naming *what* failed (the DSN masked)."""
    proc = subprocess.run(argv, env=libpq_env(params), capture_output=True, text=True,
                          check=False)
    if proc.returncode != 0:
        raise MoveError(f"{what} failed ({mask_dsn(params)}): "
                        f"{explain(proc.stderr.strip()[-800:])}")
    return proc.stdout


def prepare(ctx: MoveContext) -> str:
    """Provision the topology on the target and copy the DDL; return the fingerprint."""
    ctx.progress(f"provisioning the topology on the target {mask_dsn(ctx.target)}")
    provision_topology(ctx, ctx.target)
    ctx.progress(f"copying the DDL of {ctx.service.schema}")
    _copy_ddl(ctx)
    with connect(ctx.source, purpose="fingerprint the schema") as conn:
        return fingerprint(conn, ctx.service.schema)

