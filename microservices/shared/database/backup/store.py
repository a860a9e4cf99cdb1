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

**Authenticity.** Checksums prove integrity, not origin: whoever can write a
directory into the backup folder can recompute them. So every manifest carries an
HMAC-SHA256 under a key the folder does not hold (``EDULINK_DB_BACKUP_KEY``, else a
key generated into the secrets store), and a backup is only read when its manifest's
HMAC matches, its directory and files are real (no symbolic links) and owned by the
user running edulink-db. Anything else is refused with :class:`BackupUntrustedError`
before any of its files is read by pg_restore or psql.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import re
import secrets
import shutil
import stat
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..core.errors import BackupCorruptError, BackupNotFoundError, BackupUntrustedError, ConfigError
from ..core.secrets_store import ensure_private_dir

if TYPE_CHECKING:
    from ..config import Settings

MANIFEST = "manifest.json"
MANIFEST_VERSION = 1
BACKUP_ID_MAX = 128
# Letters, digits, '_', '-', '.'; not starting with '.' (partials and state files).
_BACKUP_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
SIGNING_KEY_ENTRY = "backup_manifest_hmac_key"
KEY_MIN_LENGTH = 32
_HMAC_DOMAIN = b"edulink-db backup manifest v1\n"


def validate_backup_id(backup_id: str) -> str:
    """*backup_id* if it is a well-formed id, else BackupNotFoundError saying why."""
    if (not isinstance(backup_id, str) or len(backup_id) > BACKUP_ID_MAX
            or not _BACKUP_ID.fullmatch(backup_id) or backup_id.endswith(".partial")):
        shown = backup_id[:40] + "..." if len(backup_id) > 40 else backup_id
        raise BackupNotFoundError(
            f"{shown!r} is not a backup id: ids are up to {BACKUP_ID_MAX} letters, digits, "
            "'_', '-' or '.', e.g. full_20240115_143022. 'edulink-db backups list' shows them.")
    return backup_id


def backup_key(settings: Settings, *, create: bool) -> bytes | None:
    """The manifest signing key: EDULINK_DB_BACKUP_KEY, else the one in the secrets store
    (generated there on first use when *create*). Never stored in the backup folder."""
    if settings.edulink_db_backup_key is not None:
        value = settings.edulink_db_backup_key.get_secret_value()
        if len(value) < KEY_MIN_LENGTH:
            raise ConfigError(
                f"EDULINK_DB_BACKUP_KEY is shorter than {KEY_MIN_LENGTH} characters; use a "
                "random one, e.g. the output of: openssl rand -hex 32")
        return value.encode()
    store = settings.secret_store
    root = Path(settings.edulink_db_backup_dir or (settings.home / "backups")).expanduser()
    if store.path.resolve().is_relative_to(root.resolve()):
        raise ConfigError(
            f"The secrets store {store.path} is inside the backup folder {root}: the key that "
            "signs backups must not travel with them. Point EDULINK_DB_BACKUP_DIR elsewhere, "
            "or set EDULINK_DB_BACKUP_KEY.")
    if create:
        value = store.get_or_create(SIGNING_KEY_ENTRY, lambda: secrets.token_hex(32))
    else:
        found = store.get(SIGNING_KEY_ENTRY)
        if found is None:
            return None
        value = found
    return value.encode()


def key_id(key: bytes) -> str:
    """A short public name of a key (to tell keys apart in messages; reveals nothing)."""
    return hashlib.sha256(b"edulink-db key id\n" + key).hexdigest()[:12]


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
    # "schema.view" -> populated, in the dump's snapshot (pg_dump stores no matview rows:
    # a restore refreshes the populated ones, so only this flag can be checked).
    matviews: dict[str, bool] = field(default_factory=dict)
    # "schema.sequence" -> last value (called ones), read while pg_dump ran; a restore
    # must bring back at least that much.
    sequences: dict[str, int] = field(default_factory=dict)
    # Backup sets (see manager.py): the server this archive was dumped from, as a
    # location string (host, port, dbname, sslmode: never a password); in a part, the
    # id of its set's home backup; in a set's home backup, every schema of the set:
    # {schema: {"source": location string, "backup_id": the backup holding it}}.
    source: str = ""
    set_id: str = ""
    set_schemas: dict[str, dict[str, str]] = field(default_factory=dict)
    large_objects: bool = False  # pg_dump --large-objects: the database's large objects
    large_object_count: int | None = None  # how many, in the dump's snapshot
    notes: list[str] = field(default_factory=list)
    manifest_version: int = MANIFEST_VERSION
    key_id: str = ""
    hmac: str = ""  # HMAC-SHA256 of every other field (see BackupStore.sign)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def signed_bytes(self) -> bytes:
        # Fields added after the first signed manifests are signed only when they hold
        # something: a manifest written before they existed keeps its signature.
        body = {k: v for k, v in self.as_dict().items() if k != "hmac"
                and not (k in _LATER_FIELDS and v == _LATER_FIELDS[k])}
        return _HMAC_DOMAIN + json.dumps(body, sort_keys=True, separators=(",", ":"),
                                         ensure_ascii=True).encode()

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
    with os.fdopen(os.open(path, os.O_RDONLY | os.O_NOFOLLOW), "rb") as fh:
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


def _owned_real(path: Path, what: str, fix: str) -> os.stat_result:
    """lstat *path*; refuse a symbolic link or something another user owns."""
    st = path.lstat()
    if stat.S_ISLNK(st.st_mode):
        raise BackupUntrustedError(
            f"{what} {path} is a symbolic link; edulink-db only reads backups that are real "
            f"directories and files in the backup folder. {fix}")
    if st.st_uid != os.geteuid():
        raise BackupUntrustedError(
            f"{what} {path} is owned by uid {st.st_uid}, not by the user running edulink-db "
            f"(uid {os.geteuid()}); someone else could have written it. {fix}")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        # Checksums are checked before pg_restore reads the files: another user who may
        # write here could swap a file in between, and pg_restore's SQL runs as the admin.
        raise BackupUntrustedError(
            f"{what} {path} is writable by other users (mode "
            f"{stat.S_IMODE(st.st_mode):04o}); one of them could replace it after it was "
            f"checked. If you trust its content, run chmod -R go-w on it; otherwise: {fix}")
    return st


# Manifest fields newer than manifest_version 1's first release -> their "empty" value.
_LATER_FIELDS: dict[str, Any] = {
    "matviews": {}, "sequences": {}, "source": "", "set_id": "", "set_schemas": {},
    "large_objects": False, "large_object_count": None, "notes": []}

class BackupStore:
    """The backup directory: create, list, load, check and delete backups.

    *key* signs manifests and checks their signatures; without one, no backup loads.
    """

    def __init__(self, root: Path, key: bytes | None = None) -> None:
        self.root = root
        self._key = key

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

    # -- signatures ------------------------------------------------------------
    @property
    def has_key(self) -> bool:
        return self._key is not None

    def _require_key(self) -> bytes:
        if self._key is None:
            raise BackupUntrustedError(
                "No backup signing key: set EDULINK_DB_BACKUP_KEY to the key the backups were "
                "signed with, or take a backup (which generates one into the secrets store).")
        return self._key

    def sign(self, manifest: Manifest) -> None:
        key = self._require_key()
        manifest.key_id = key_id(key)
        manifest.hmac = hmac.new(key, manifest.signed_bytes(), hashlib.sha256).hexdigest()

    def _check_signature(self, manifest: Manifest) -> None:
        fix = (f"If you took {manifest.backup_id} yourself and trust it, run "
               f"'edulink-db backups sign {manifest.backup_id}'; otherwise delete it.")
        if not manifest.hmac:
            raise BackupUntrustedError(
                f"Backup {manifest.backup_id} is not signed (taken by an older edulink-db, or "
                f"not by edulink-db at all), so it is not used. {fix}")
        key = self._require_key()
        expected = hmac.new(key, manifest.signed_bytes(), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, manifest.hmac):
            other = (f" It names signing key {manifest.key_id}, this key is {key_id(key)}: if "
                     "the key changed, set EDULINK_DB_BACKUP_KEY to the old one."
                     if manifest.key_id and manifest.key_id != key_id(key) else "")
            raise BackupUntrustedError(
                f"Backup {manifest.backup_id}'s manifest signature does not match: it was "
                f"edited or signed with another key, so it is not used.{other} {fix}")

    def save(self, manifest: Manifest) -> None:
        """Sign *manifest* and write it over the backup's manifest (atomically)."""
        self._write_manifest(self.path(manifest.backup_id), manifest)

    def _write_manifest(self, directory: Path, manifest: Manifest) -> None:
        self.sign(manifest)
        tmp = directory / f".{MANIFEST}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(json.dumps(manifest.as_dict(), indent=2) + "\n")
        os.replace(tmp, directory / MANIFEST)

    def complete(self, work: Path, manifest: Manifest) -> Path:
        self._write_manifest(work, manifest)
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
        return self.root / validate_backup_id(backup_id)

    def load(self, backup_id: str, *, signed: bool = True) -> Manifest:
        """The manifest of a complete backup, after checking that the backup is ours:
        a real directory and manifest owned by this user, signed with our key (unless
        *signed* is False: only for 'backups sign'). Raises BackupNotFoundError,
        BackupUntrustedError or BackupCorruptError."""
        directory = self.path(backup_id)
        manifest = directory / MANIFEST
        try:
            _owned_real(directory, "Backup directory", f"Delete it, or move the backup into "
                        f"{self.root} as a real directory (cp -a).")
            st = _owned_real(manifest, "Manifest", "Delete the backup.")
        except FileNotFoundError:
            known = ", ".join(m.backup_id for m in self.backups()[-5:]) or "none"
            raise BackupNotFoundError(
                f"No backup {backup_id!r} in {self.root} (newest: {known}). "
                "'edulink-db backups list' shows them all.") from None
        if not stat.S_ISREG(st.st_mode):
            raise BackupNotFoundError(f"{backup_id!r} in {self.root} has no manifest file.")
        try:
            fd = os.open(manifest, os.O_RDONLY | os.O_NOFOLLOW)
            with os.fdopen(fd) as fh:
                loaded = Manifest.from_dict(json.loads(fh.read()))
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise BackupCorruptError(
                f"{manifest} is not a valid edulink-db manifest ({exc}); the backup cannot "
                "be trusted.") from None
        if loaded.backup_id != backup_id:
            raise BackupUntrustedError(
                f"{manifest} describes backup {loaded.backup_id!r}, not {backup_id!r}: it was "
                "renamed or copied from elsewhere. Delete it.")
        if signed:
            self._check_signature(loaded)
        return loaded

    def scan(self) -> tuple[list[Manifest], list[tuple[str, str]]]:
        """(complete trusted backups oldest first, [(name, why refused)])."""
        if not self.root.is_dir():
            return [], []
        out, refused = [], []
        for directory in self.root.iterdir():
            if directory.name.startswith(".") or not (
                    directory.is_dir() or directory.is_symlink()):
                continue
            try:
                out.append(self.load(directory.name))
            except BackupNotFoundError:
                continue  # not a backup (no manifest), e.g. someone's notes
            except (BackupCorruptError, BackupUntrustedError) as exc:
                refused.append((directory.name, str(exc)))
        return sorted(out, key=lambda m: (m.finished_at, m.backup_id)), sorted(refused)

    def backups(self) -> list[Manifest]:
        """Complete, trusted backups, oldest first (refused ones: see :meth:`scan`)."""
        return self.scan()[0]

    def partials(self) -> list[Path]:
        if not self.root.is_dir():
            return []
        return [p for p in self.root.iterdir() if p.name.endswith(".partial")]

    def check_files(self, manifest: Manifest) -> None:
        """Every file present, of the recorded size and SHA-256; raise BackupCorruptError."""
        directory = self.path(manifest.backup_id)
        problems = []
        for entry in manifest.files:
            parts = Path(entry.name).parts
            if not parts or Path(entry.name).is_absolute() or ".." in parts:
                raise BackupUntrustedError(
                    f"Backup {manifest.backup_id} lists a file outside its directory "
                    f"({entry.name!r}). Delete it.")
            path = directory / entry.name
            try:
                # Every component: a link anywhere would let pg_restore read elsewhere.
                for i in range(1, len(parts)):
                    _owned_real(directory.joinpath(*parts[:i]), "Backup directory",
                                "Delete the backup.")
                st = _owned_real(path, "Backup file", "Delete the backup.")
            except FileNotFoundError:
                problems.append(f"{entry.name} is missing")
                continue
            if not stat.S_ISREG(st.st_mode):
                problems.append(f"{entry.name} is not a regular file")
            elif st.st_size != entry.size:
                problems.append(f"{entry.name} is {st.st_size} bytes, the manifest "
                                f"says {entry.size} (truncated or overwritten)")
            elif (digest := sha256_file(path)) != entry.sha256:
                problems.append(f"{entry.name} has SHA-256 {digest[:16]}..., the "
                                f"manifest says {entry.sha256[:16]}... (corrupted)")
        if problems:
            raise BackupCorruptError(
                f"Backup {manifest.backup_id} is damaged: " + "; ".join(problems)
                + ". Nothing was restored; use another backup.")

    def record_verification(self, manifest: Manifest, *, deep: bool, ok: bool) -> None:
        manifest.verified = {"at": now_utc().isoformat(), "deep": deep, "ok": ok}
        self.save(manifest)

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
