"""What a database holds, as a backup's manifest records it (leaf row counts,
materialized views, sequences, large objects), and the comparison of a restore with
its manifest."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

from ..core.errors import BackupError
from .store import Manifest


def count_rows(conn: psycopg.Connection[Any], schemas: list[str]) -> dict[str, int]:
    """Rows of every leaf table of *schemas* on *conn*, by ``schema.table``."""
    # Leaf by leaf: every table that holds rows itself (partitions at any depth,
    # default partitions, inheritance children, unlogged tables), each FROM ONLY.
    # A partitioned parent holds none (pg_dump writes its rows under the leaves),
    # and an inheritance parent's count(*) would include its children's rows.
    tables = conn.execute(
        "SELECT n.nspname, c.relname FROM pg_catalog.pg_class c"
        " JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
        " WHERE c.relkind = 'r' AND n.nspname = ANY(%s)"
        " ORDER BY 1, 2", [schemas]).fetchall()
    if not tables:
        return {}
    union = sql.SQL(" UNION ALL ").join(
        sql.SQL("SELECT %s, count(*) FROM ONLY {}").format(sql.Identifier(s, t))
        for s, t in tables)
    rows = conn.execute(union, [f"{s}.{t}" for s, t in tables]).fetchall()
    return {name: int(n) for name, n in rows}

def matview_states(conn: psycopg.Connection[Any], schemas: list[str]) -> dict[str, bool]:
    """Whether each materialized view of *schemas* is populated."""
    return {f"{s}.{n}": bool(p) for s, n, p in conn.execute(
        "SELECT n.nspname, c.relname, c.relispopulated FROM pg_catalog.pg_class c"
        " JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
        " WHERE c.relkind = 'm' AND n.nspname = ANY(%s) ORDER BY 1, 2", [schemas])}

def sequence_values(conn: psycopg.Connection[Any], schemas: list[str]) -> dict[str, int]:
    """Each sequence's last value (None never called: left out). Sequences are not
    transactional: this is read while pg_dump runs, so the dumped value may only be
    higher (a nextval in between), never lower."""
    names = conn.execute(
        "SELECT n.nspname, c.relname FROM pg_catalog.pg_class c"
        " JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
        " WHERE c.relkind = 'S' AND n.nspname = ANY(%s) ORDER BY 1, 2",
        [schemas]).fetchall()
    if not names:
        return {}
    union = sql.SQL(" UNION ALL ").join(
        sql.SQL("SELECT %s, last_value, is_called FROM {}").format(sql.Identifier(s, n))
        for s, n in names)
    return {name: int(value) for name, value, called in
            conn.execute(union, [f"{s}.{n}" for s, n in names]).fetchall() if called}

def large_object_count(conn: psycopg.Connection[Any]) -> int:
    """How many large objects the database of *conn* holds."""
    row = conn.execute("SELECT count(*) FROM pg_catalog.pg_largeobject_metadata").fetchone()
    return int(row[0]) if row else 0


def restored_problems(manifest: Manifest, conn: psycopg.Connection[Any]
                      ) -> tuple[list[str], dict[str, int]]:
    """What makes a restore of *manifest* on *conn* differ from the backup, one line
    per object (and the leaf counts found).  The one definition of "this backup
    restores as it was taken", used by deep verify and by drills (and so by
    ``backup auto``, which verifies what it takes)."""
    counts = count_rows(conn, manifest.schemas)
    problems = [f"table {t}: manifest {n} rows, restored {counts.get(t)}"
                for t, n in sorted(manifest.row_counts.items()) if counts.get(t) != n]
    if manifest.matviews:
        found = matview_states(conn, manifest.schemas)
        problems += [f"materialized view {v}: "
                     + ("populated at backup, not after the restore" if was else
                        "unpopulated at backup, populated after the restore")
                     for v, was in sorted(manifest.matviews.items()) if found.get(v) != was]
    if manifest.sequences:
        now = sequence_values(conn, manifest.schemas)
        problems += [f"sequence {q}: last value {v} at backup, "
                     + (f"{now[q]} after the restore" if q in now else
                        "never called after the restore")
                     for q, v in sorted(manifest.sequences.items())
                     if now.get(q, -2**63) < v]
    if manifest.large_object_count is not None:
        found_blobs = large_object_count(conn)
        if found_blobs != manifest.large_object_count:
            problems.append(f"large objects: {manifest.large_object_count} at backup, "
                            f"{found_blobs} after the restore")
    return problems, counts


def require_rls_bypass(conn: psycopg.Connection[Any], schemas: list[str], action: str, *,
                       archive_has_rls: bool = False) -> None:
    """Refuse, before anything happens, a dump or restore that row-level security would
    break: pg_dump and pg_restore turn row_security off and fail on tables whose policies
    apply to them. (``--enable-row-security`` would instead dump only the rows the admin
    may see: a silently incomplete backup.)"""
    row = conn.execute("SELECT current_user, rolsuper OR rolbypassrls FROM pg_catalog.pg_roles"
                       " WHERE rolname = current_user").fetchone()
    assert row is not None
    user, bypass = row
    if bypass:
        return
    tables = [r[0] for r in conn.execute(
        "SELECT n.nspname || '.' || c.relname FROM pg_catalog.pg_class c"
        " JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = ANY(%s) AND c.relrowsecurity"
        " AND (c.relforcerowsecurity OR NOT pg_catalog.pg_has_role(c.relowner, 'USAGE'))"
        " ORDER BY 1", [schemas]).fetchall()]
    if tables or archive_has_rls:
        what = ", ".join(tables) if tables else "tables with row-level security in the backup"
        raise BackupError(
            f"{action} {', '.join(schemas)} needs an admin that bypasses row-level security, "
            f"and {user} does not: {what}. A superuser can run ALTER ROLE {user} BYPASSRLS "
            "(Supabase's postgres has it), or use such a role for backups. Nothing was done.")
