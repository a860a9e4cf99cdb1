"""The history table of a service schema and its status against the migration files:
what is applied, pending, edited or missing.  Read-only; :mod:`.runner` writes."""


from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from ..topology import Service
from .files import MigrationFile, parse_version

HISTORY_TABLE = "edulink_schema_history"
# First key of every migration advisory lock ('EDLK'); the second is the hash of
# the quoted history table name, as Flyway keys its lock.
LOCK_CLASS = 0x45444C4B
LOCK_RETRIES = 5
Progress = Callable[[str], None]


def no_notice(_msg: str) -> None:
    pass


def reference_migrations_dir() -> Path:
    """The reference Edulink schema shipped with the package (one folder per service)."""
    return Path(str(resources.files(__package__) / "reference_migrations"))


@dataclass(frozen=True)
class AppliedRow:
    """One row of a schema's migration history."""

    rank: int
    version: tuple[int, ...] | None
    description: str
    kind: str  # versioned | repeatable | baseline | deleted
    script: str
    checksum: str | None
    success: bool


@dataclass
class ServiceStatus:
    """Files versus history for one service; computed without changing anything."""

    service: str
    schema: str
    history_exists: bool
    rows: list[AppliedRow]
    files: list[MigrationFile]
    pending: list[MigrationFile] = field(default_factory=list)
    resumable: list[MigrationFile] = field(default_factory=list)
    mismatches: list[dict[str, str]] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    out_of_order: list[str] = field(default_factory=list)

    @property
    def applied(self) -> list[AppliedRow]:
        return [r for r in self.rows if r.success and r.kind in ("versioned", "baseline")]

    @property
    def failed(self) -> list[AppliedRow]:
        return [r for r in self.rows if not r.success]

    @property
    def last_version(self) -> tuple[int, ...] | None:
        versions = [r.version for r in self.applied if r.version is not None]
        return max(versions) if versions else None

    @property
    def problems(self) -> list[str]:
        out = [f"{m['script']}: applied with checksum {m['applied']}, file now has "
               f"{m['current']} (edited after it was applied; revert the edit, or run "
               "'edulink-db migrations repair' to accept it)" for m in self.mismatches]
        out += [f"{s}: applied, but the file is gone (restore it, or 'migrations repair' "
                "to mark it deleted)" for s in self.missing]
        out += [f"{s}: never applied, but older than the last applied version "
                f"{_vtext(self.last_version)} (give it a newer version)" for s in self.out_of_order]
        return out

    def as_dict(self) -> dict[str, Any]:
        return {
            "service": self.service,
            "schema": self.schema,
            "history_exists": self.history_exists,
            "applied_count": len(self.applied),
            "pending_count": len(self.pending),
            "pending_migrations": [f.script for f in self.pending],
            "last_applied_version": _vtext(self.last_version),
            "checksum_mismatches": self.mismatches,
            "missing_files": self.missing,
            "out_of_order": self.out_of_order,
            "failed": [r.script for r in self.failed],
            "resumable": [f.script for f in self.resumable],
            "ok": not self.problems,
        }


def first_code_line(text: str, line: int) -> tuple[str, int]:
    """The first line of a statement that is not a comment, and its line number."""
    for offset, content in enumerate(text.splitlines()):
        stripped = content.strip()
        if stripped and not stripped.startswith("--"):
            return stripped[:100], line + offset
    return text[:100], line


def _vtext(version: tuple[int, ...] | None) -> str | None:
    return None if version is None else ".".join(map(str, version))


def compute_status(service: Service, files: list[MigrationFile], rows: list[AppliedRow],
                   history_exists: bool) -> ServiceStatus:
    status = ServiceStatus(service=service.name, schema=service.schema,
                           history_exists=history_exists, rows=rows, files=files)
    by_version = {f.version: f for f in files if f.kind == "versioned"}
    baseline = max((r.version for r in rows if r.kind == "baseline" and r.version), default=None)
    applied_versions: set[tuple[int, ...]] = set()
    for row in rows:
        if row.kind != "versioned" or row.version is None:
            continue
        file = by_version.get(row.version)
        if not row.success:
            if file is not None:
                status.resumable.append(file)
            continue
        applied_versions.add(row.version)
        if file is None:
            status.missing.append(row.script)
        elif row.checksum != file.checksum:
            status.mismatches.append({"script": file.script, "version": _vtext(row.version) or "",
                                      "applied": row.checksum or "", "current": file.checksum})
    last = status.last_version
    for file in files:
        if file.kind != "versioned":
            continue
        assert file.version is not None
        if file.version in applied_versions or (baseline and file.version <= baseline):
            continue
        if file in status.resumable:
            status.pending.append(file)
        elif last is not None and file.version < last:
            status.out_of_order.append(file.script)
        else:
            status.pending.append(file)
    last_repeatable = {}
    for row in rows:
        if row.kind == "repeatable" and row.success:
            last_repeatable[row.description] = row.checksum
    status.pending += [f for f in files if f.kind == "repeatable"
                       and last_repeatable.get(f.description) != f.checksum]
    return status


def read_histories(conn: psycopg.Connection[Any], services: list[Service]
                   ) -> dict[str, tuple[bool, list[AppliedRow]]]:
    """The history of every service, in two queries whatever the number of services."""
    exists = {r[0] for r in conn.execute(
        "SELECT n.nspname FROM pg_catalog.pg_class c"
        " JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
        " WHERE c.relname = %s AND n.nspname = ANY(%s)",
        [HISTORY_TABLE, [s.schema for s in services]]).fetchall()}
    out: dict[str, tuple[bool, list[AppliedRow]]] = {
        s.schema: (s.schema in exists, []) for s in services}
    with_history = [s.schema for s in services if s.schema in exists]
    if not with_history:
        return out
    union = sql.SQL(" UNION ALL ").join(
        sql.SQL("SELECT %s::text, installed_rank, version, description, type, script,"
                " checksum, success FROM {}").format(sql.Identifier(schema, HISTORY_TABLE))
        for schema in with_history)
    rows = conn.execute(sql.SQL("{} ORDER BY 1, 2").format(union), with_history).fetchall()
    for schema, rank, version, description, kind, script, checksum, success in rows:
        out[schema][1].append(AppliedRow(
            rank=rank, version=parse_version(version) if version else None,
            description=description, kind=kind, script=script, checksum=checksum,
            success=success))
    return out


def switch_hint(statuses: list[ServiceStatus]) -> str:
    """How to get out of the commonest disagreement: a database migrated from one set of
    files (e.g. the reference schema 'up' applies) now pointed at another."""
    if not any(st.missing or st.mismatches for st in statuses):
        return ""
    return (
        "\nIf these files are meant to replace the ones applied (e.g. the reference schema "
        "'edulink-db up' applied before you pointed it at your own migrations):\n"
        "  - to build on what is applied: 'edulink-db init' copies the reference files into "
        "./migrations (never overwriting); keep them and add yours as newer versions;\n"
        "  - if the schema already holds what your files create: 'edulink-db migrations "
        "repair' records your files as they are (it runs nothing; a removed file is marked "
        "deleted), then 'edulink-db migrate' runs only newer versions;\n"
        "  - for a schema edulink-db never migrated, 'edulink-db migrations baseline SERVICE "
        "--version V' counts your files up to V as applied.\n"
        "See README.md, 'Your own migrations'.")
