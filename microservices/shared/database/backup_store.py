"""Where backups live: one directory per backup, with a manifest.

    <backup dir>/
        full_20240115_143022/
            manifest.json        what the backup holds and how to check it
            full_20240115_143022.dump   (custom format) or .dir/ (directory format)
            preamble.sql         roles, schemas and grants, to restore into a clean database
        .full_20240115_150000.partial/   a backup in progress (or one that crashed)
        failures.jsonl           one line per failed backup

A backup is written under a ``.partial`` name and renamed when its manifest is
complete, so a crash never leaves something that looks like a backup.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .errors import BackupCorruptError, BackupNotFoundError
from .secrets_store import ensure_private_dir

MANIFEST = "manifest.json"
MANIFEST_VERSION = 1


@dataclass
class FileEntry:
    name: str
    size: int
    sha256: str


@dataclass
class Manifest:
    """Everything known about one backup."""

    backup_id: str
    kind: str  # full | schema | prerestore
    schemas: list[str]
    database: str
    format: str  # custom | directory
    compression: str
    server_version: str
    tool_version: str
    started_at: str
    finished_at: str
    duration_s: float
    files: list[FileEntry]
    row_counts: dict[str, int]
    snapshot: str
    verified: dict[str, Any] = field(default_factory=dict)  # {"at", "deep", "ok"}
    manifest_version: int = MANIFEST_VERSION

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        files = [FileEntry(**f) for f in data.pop("files")]
        return cls(files=files, **data)

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def finished(self) -> datetime:
        return datetime.fromisoformat(self.finished_at)

    @property
    def archive(self) -> str:
        """The pg_restore input: the dump file or directory."""
        return next(f.name.split("/")[0] for f in self.files if f.name != "preamble.sql")


def now_utc() -> datetime:
    return datetime.now(UTC)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


def file_entries(directory: Path) -> list[FileEntry]:
    """Every file under *directory* except the manifest, with size and SHA-256."""
    out = []
    for path in sorted(p for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST):
        out.append(FileEntry(name=str(path.relative_to(directory)), size=path.stat().st_size,
                             sha256=sha256_file(path)))
    return out


class BackupStore:
    """The backup directory: create, list, load, check and delete backups."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def __repr__(self) -> str:
        return f"BackupStore({str(self.root)!r})"

    def new_id(self, kind: str) -> str:
        stamp = now_utc().strftime("%Y%m%d_%H%M%S")
        candidate, n = f"{kind}_{stamp}", 1
        while (self.root / candidate).exists() or (self.root / f".{candidate}.partial").exists():
            n += 1
            candidate = f"{kind}_{stamp}_{n}"
        return candidate

    def start(self, backup_id: str) -> Path:
        ensure_private_dir(self.root)
        work = self.root / f".{backup_id}.partial"
        work.mkdir(mode=0o700)
        return work

    def complete(self, work: Path, manifest: Manifest) -> Path:
        (work / MANIFEST).write_text(json.dumps(manifest.as_dict(), indent=2) + "\n")
        final = self.root / manifest.backup_id
        os.replace(work, final)
        return final

    def abandon(self, work: Path, kind: str, error: str) -> None:
        shutil.rmtree(work, ignore_errors=True)
        ensure_private_dir(self.root)
        with (self.root / "failures.jsonl").open("a") as fh:
            fh.write(json.dumps({"at": now_utc().isoformat(), "kind": kind,
                                 "error": error}) + "\n")

    def failures(self) -> list[dict[str, Any]]:
        path = self.root / "failures.jsonl"
        if not path.exists():
            return []
        out = []
        for line in path.read_text().splitlines():
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
        return out

    def path(self, backup_id: str) -> Path:
        if "/" in backup_id or backup_id.startswith(".") or not backup_id:
            raise BackupNotFoundError(f"{backup_id!r} is not a backup id.")
        return self.root / backup_id

    def load(self, backup_id: str) -> Manifest:
        directory = self.path(backup_id)
        manifest = directory / MANIFEST
        if not manifest.is_file():
            known = ", ".join(m.backup_id for m in self.backups()[-5:]) or "none"
            raise BackupNotFoundError(
                f"No backup {backup_id!r} in {self.root} (newest: {known}). "
                "'edulink-db backups list' shows them all.")
        try:
            return Manifest.from_dict(json.loads(manifest.read_text()))
        except (ValueError, TypeError, KeyError) as exc:
            raise BackupCorruptError(
                f"{manifest} is not a valid edulink-db manifest ({exc}); the backup cannot "
                "be trusted.") from None

    def backups(self) -> list[Manifest]:
        """Complete backups, oldest first (unreadable manifests are skipped)."""
        if not self.root.is_dir():
            return []
        out = []
        for directory in self.root.iterdir():
            if directory.is_dir() and not directory.name.startswith(".") and (
                    directory / MANIFEST).is_file():
                with contextlib.suppress(BackupCorruptError):
                    out.append(self.load(directory.name))
        return sorted(out, key=lambda m: (m.finished_at, m.backup_id))

    def partials(self) -> list[Path]:
        if not self.root.is_dir():
            return []
        return [p for p in self.root.iterdir() if p.name.endswith(".partial")]

    def check_files(self, manifest: Manifest) -> None:
        """Every file present, of the recorded size and SHA-256; raise BackupCorruptError."""
        directory = self.path(manifest.backup_id)
        problems = []
        for entry in manifest.files:
            path = directory / entry.name
            if not path.is_file():
                problems.append(f"{entry.name} is missing")
            elif path.stat().st_size != entry.size:
                problems.append(f"{entry.name} is {path.stat().st_size} bytes, the manifest "
                                f"says {entry.size} (truncated or overwritten)")
            elif sha256_file(path) != entry.sha256:
                problems.append(f"{entry.name} has SHA-256 {sha256_file(path)[:16]}..., the "
                                f"manifest says {entry.sha256[:16]}... (corrupted)")
        if problems:
            raise BackupCorruptError(
                f"Backup {manifest.backup_id} is damaged: " + "; ".join(problems)
                + ". Nothing was restored; use another backup.")

    def record_verification(self, manifest: Manifest, *, deep: bool, ok: bool) -> None:
        manifest.verified = {"at": now_utc().isoformat(), "deep": deep, "ok": ok}
        directory = self.path(manifest.backup_id)
        tmp = directory / f".{MANIFEST}.tmp"
        tmp.write_text(json.dumps(manifest.as_dict(), indent=2) + "\n")
        os.replace(tmp, directory / MANIFEST)

    def delete(self, backup_id: str) -> None:
        shutil.rmtree(self.path(backup_id))

    def clean_partials(self, older_than_s: float = 3600) -> list[str]:
        """Remove crashed backups (a running one is younger than *older_than_s*)."""
        removed = []
        for path in self.partials():
            if time.time() - path.stat().st_mtime > older_than_s:
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path.name)
        return removed
