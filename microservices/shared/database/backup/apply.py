"""Restoring one archive into one database: the script pg_restore writes, run by psql
in one transaction that commits only when the row counts match (restore.py)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from psycopg import sql

from ..connections.direct import connect
from ..core.errors import BackupError
from ..server.pg_tools import find_tool, libpq_env, needs_tls
from .archive import ArchiveListings, toc_entry
from .restore import RestoreOutcomeUnknownError, count_check_sql, preamble_sql, run_restore
from .store import BackupStore, Manifest

Progress = Callable[[str], None]

RESTORE_LOCK_TIMEOUT = "60s"
# Settings newer pg_restore versions put in a script's header: (first major, name).
_VERSIONED_SETTINGS = [(17, "transaction_timeout")]


def psql_env(target: dict[str, Any]) -> dict[str, str]:
    """psql's environment: the target's credentials, and a restore that waits for locks
    only so long (it replaces whole schemas, so it needs them all)."""
    env = libpq_env(target)
    env["PGOPTIONS"] = f"-c lock_timeout={RESTORE_LOCK_TIMEOUT}"
    return env


def restore_into(store: BackupStore, archives: ArchiveListings, progress: Progress,
                 manifest: Manifest, target: dict[str, Any], schemas: list[str],
                 *, fresh: bool, replace: list[str] | None = None,
                 scratch: bool = False, safety: str | None = None) -> None:
    """Restore *schemas* of *manifest* into *target* in one transaction that commits
    only after pg_restore exited 0 and every table holds the manifest's row count
    (see restore.py); *archives* reads its listing, *progress* is told each step.
    *fresh*: apply the preamble first, in the same transaction.
    *scratch*: a throwaway database; cluster-wide role settings are left alone."""
    directory = store.path(manifest.backup_id)
    major = int(manifest.tool_version)
    opening = b""
    if fresh:
        progress("applying the backup's preamble (roles, schemas, grants)")
        opening += preamble_sql(directory / "preamble.sql", keep_role_settings=not scratch)
    drop = [s for s in (replace if replace is not None else schemas) if s != "public"]
    if "public" in (replace or []):
        # The public schema is never created by pg_dump's script (every database has
        # one): empty it by recreating it as a new database has it.
        opening += (b"DROP SCHEMA public CASCADE;\nCREATE SCHEMA public;\n"
                    b"ALTER SCHEMA public OWNER TO pg_database_owner;\n"
                    b"GRANT USAGE ON SCHEMA public TO PUBLIC;\n")
    if not scratch and archives.has_blobs(manifest):
        # Large objects belong to the database, not to a schema: a restore that holds
        # them replaces them all (pg_restore recreates each with its own OID).
        opening += (b"SELECT pg_catalog.lo_unlink(oid) FROM "
                    b"pg_catalog.pg_largeobject_metadata;\n")
    # The restore replaces whole schemas: objects created after the backup go too;
    # and pg_restore recreates the schemas the preamble created already if fresh.
    for schema in dict.fromkeys(drop + ([s for s in schemas if s != "public"]
                                        if fresh else [])):
        opening += sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE;\n").format(
            sql.Identifier(schema)).as_string(None).encode()
    # pg_restore writes a script (no connection); psql runs it over the connection,
    # which may need TLS (a psql other than the embedded wheel's).
    pg_restore = find_tool("pg_restore", major)
    psql = find_tool("psql", major, tls=needs_tls(target))
    # The schemas being restored were dropped above, so pg_restore's own --clean is
    # not needed, and it would break a schema holding a view that pg_dump split into
    # a placeholder and a _RETURN rule (the rule's "drop" is a CREATE OR REPLACE
    # VIEW in a schema that is gone).
    restore_args = [str(pg_restore), "--file=-", "--single-transaction"]
    toc: Path | None = None
    if set(schemas) != set(manifest.schemas):
        toc = archives.toc_for(manifest, schemas)
        restore_args.append(f"--use-list={toc}")
    restore_args.append(str(directory / manifest.archive))
    progress(f"restoring {', '.join(schemas)} in one transaction")
    matviews = sorted(f"{e[1]}.{e[2]}" for line in archives.listing(manifest)
                      if (e := toc_entry(line)) is not None
                      and e[0] == "MATERIALIZED VIEW DATA" and e[1] in schemas)
    if matviews:
        # pg_dump keeps a materialized view's query, not its rows.
        progress(f"materialized views are refreshed from the restored tables, not "
                      f"restored as they were: {', '.join(matviews)}")
    with connect(target, purpose="restore") as conn:
        target_major = conn.info.server_version // 10000
    # pg_restore 18 writing a script cannot know the server, and emits settings
    # (e.g. transaction_timeout, PostgreSQL 17+) that older servers reject.
    unknown = [name.encode() for since, name in _VERSIONED_SETTINGS if target_major < since]
    psql_args = [str(psql), "-X", "-q", "-v", "ON_ERROR_STOP=1",
                 "-f", "-"]
    try:
        run_restore(restore_args, psql_args, psql_env(target), opening=opening,
                    check=count_check_sql(manifest.row_counts, schemas),
                    drop_settings=unknown)
    except RestoreOutcomeUnknownError:
        raise
    except BackupError as exc:
        undo = (f" The schemas as they were before are also saved in backup {safety}."
                if safety else "")
        raise BackupError(
            f"Restore of {manifest.backup_id} failed and was rolled back; the database "
            f"is unchanged. {str(exc).rstrip('.')}.{undo}") from None
    finally:
        if toc is not None:
            toc.unlink(missing_ok=True)
