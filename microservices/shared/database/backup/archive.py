"""Reading a backup's archive: pg_restore's table of contents (parsed, cached per
manager) and what it says about the archive."""

from __future__ import annotations

import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

from ..core.errors import BackupError
from ..server.pg_tools import find_tool
from .store import BackupStore, Manifest

# Entry types of a pg_restore listing that are more than one word, longest first.
# pg_dump's own names (pg_dump.c, pg_backup_archiver.c); a name of one word needs no entry.
_TOC_TYPES = sorted([
    "TABLE DATA", "TABLE ATTACH", "INDEX ATTACH", "SEQUENCE SET", "SEQUENCE OWNED BY",
    "DEFAULT ACL", "FK CONSTRAINT", "CHECK CONSTRAINT", "ROW SECURITY",
    "MATERIALIZED VIEW DATA", "MATERIALIZED VIEW", "FOREIGN TABLE", "EVENT TRIGGER",
    "PUBLICATION TABLE", "PUBLICATION TABLES IN SCHEMA", "SUBSCRIPTION TABLE",
    "LARGE OBJECT", "BLOB METADATA", "BLOB DATA", "STATISTICS DATA", "SHELL TYPE",
    "PROCEDURAL LANGUAGE", "ACCESS METHOD", "OPERATOR CLASS", "OPERATOR FAMILY",
    "TEXT SEARCH CONFIGURATION", "TEXT SEARCH DICTIONARY", "TEXT SEARCH PARSER",
    "TEXT SEARCH TEMPLATE", "USER MAPPING", "FOREIGN DATA WRAPPER", "FOREIGN SERVER",
    "DATABASE PROPERTIES", "SECURITY LABEL", "DEFAULT",
], key=len, reverse=True)


def toc_entry(line: str) -> tuple[str, str | None, str] | None:
    """(DESC, NAMESPACE or None, NAME) of a ``pg_restore --list`` line, None for comments.

    The documented form is ``dumpId; tableoid oid DESC NAMESPACE NAME OWNER``: DESC may
    be several words (matched against pg_dump's list, longest first), NAMESPACE is ``-``
    for none, NAME may hold spaces, OWNER (possibly empty) is the last field.
    """
    if line.startswith(";") or ";" not in line:
        return None
    head, _, rest = line.partition("; ")
    fields = rest.split(" ", 2)
    if not head.strip().isdigit() or len(fields) < 3:
        return None
    body = fields[2]
    kind = next((k for k in _TOC_TYPES if body.startswith(k + " ")), body.split(" ")[0])
    tail = body[len(kind) + 1:]
    namespace, _, named = tail.partition(" ")
    name = named.rsplit(" ", 1)[0] if " " in named else named
    return kind, None if namespace == "-" else namespace, name


def toc_schema(line: str) -> str | None:
    """The schema a pg_restore --list line belongs to (None for comments and globals).

    A schema's own entries have namespace ``-``: ``SCHEMA - auth_schema owner``,
    ``ACL - SCHEMA auth_schema owner``.
    """
    entry = toc_entry(line)
    if entry is None:
        return None
    kind, namespace, name = entry
    if namespace is not None:
        return namespace
    if kind == "SCHEMA":
        return name
    if kind in ("ACL", "COMMENT", "SECURITY LABEL") and name.startswith("SCHEMA "):
        return name[len("SCHEMA "):]
    return None


class ArchiveListings:
    """Tables of contents by backup id.  A listing cannot go stale: backups never
    change, and check_files (checksums) runs before every use of one."""

    def __init__(self, store: Callable[[], BackupStore]) -> None:
        self._store = store
        self._cache: dict[str, list[str]] = {}

    def forget(self, backup_id: str) -> None:
        """Drop the cached listing of a deleted backup."""
        self._cache.pop(backup_id, None)

    def listing(self, manifest: Manifest) -> list[str]:
        """The archive's table of contents (``pg_restore --list``), read once per backup
        and manager: reading it proves the archive is readable, and restores, RLS checks
        and subset selection all work from it."""
        cached = self._cache.get(manifest.backup_id)
        if cached is not None:
            return cached
        directory = self._store().path(manifest.backup_id)
        pg_restore = find_tool("pg_restore", int(manifest.tool_version))
        result = subprocess.run([str(pg_restore), "--list", str(directory / manifest.archive)],
                                capture_output=True, text=True, check=False, timeout=600)
        if result.returncode != 0:
            raise BackupError(f"pg_restore cannot read {manifest.backup_id}: "
                              f"{result.stderr.strip()}")
        listing = self._cache[manifest.backup_id] = result.stdout.splitlines()
        return listing

    def tables(self, manifest: Manifest) -> set[str]:
        """The tables whose data the archive holds."""
        tables = set()
        for line in self.listing(manifest):
            entry = toc_entry(line)
            if entry is not None and entry[0] == "TABLE DATA" and entry[1] is not None:
                tables.add(f"{entry[1]}.{entry[2]}")
        return tables

    def has_blobs(self, manifest: Manifest) -> bool:
        return any((entry := toc_entry(line)) is not None
                   and entry[0] in ("BLOB", "BLOB METADATA", "LARGE OBJECT", "BLOBS")
                   for line in self.listing(manifest))

    def has_rls(self, manifest: Manifest, schemas: list[str]) -> bool:
        return any(" ROW SECURITY " in line and toc_schema(line) in schemas
                   for line in self.listing(manifest))

    def toc_for(self, manifest: Manifest, schemas: list[str]) -> Path:
        """A pg_restore list file with only *schemas*' entries.

        ``pg_restore --schema`` would restore the objects but not the schema itself or
        its ACL, so a subset is selected from the archive's table of contents instead.
        """
        kept = [line for line in self.listing(manifest) if toc_schema(line) in schemas]
        with tempfile.NamedTemporaryFile("w", suffix=".toc", delete=False) as fh:
            fh.write("\n".join(kept) + "\n")
        return Path(fh.name)
