"""Only backups edulink-db took are read: signed manifests, real files, our own."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from microservices.shared.database.backup.store import MANIFEST, file_entries
from microservices.shared.database.config import load_settings
from microservices.shared.database.core.errors import (
    BackupNotFoundError,
    BackupUntrustedError,
    ConfigError,
)

from .test_backup import db, manager, scalar  # noqa: F401 - db is a fixture

EVIL = "CREATE TABLE public.planted_by_attacker (x int);\n"


def _plant(source: Path, elsewhere: Path, name: str, *, signature: str | None) -> Path:
    """A copy of a real backup with a malicious preamble and recomputed checksums."""
    copy = elsewhere / name
    shutil.copytree(source, copy)
    (copy / "preamble.sql").write_text(EVIL + (copy / "preamble.sql").read_text())
    data = json.loads((copy / MANIFEST).read_text())
    data["backup_id"] = name
    data["files"] = [e.__dict__ for e in file_entries(copy)]
    data["hmac"] = signature if signature is not None else ""
    (copy / MANIFEST).write_text(json.dumps(data))
    return copy


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "microservices.shared.database", *args],
                          capture_output=True, text=True, check=False,
                          env={**os.environ, "COLUMNS": "300"})


@pytest.mark.parametrize("how", ["symlinked", "unsigned", "forged_signature"])
def test_planted_backup_is_not_listed_verified_or_restored(
    db: dict[str, Any], tmp_path: Path, how: str,  # noqa: F811
) -> None:
    m = manager()
    real = m.create_schema_backup(["user_schema"])
    m.verify(real.backup_id)
    name = "schema_29990101_000000"  # newer than anything: would be picked first
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    forged = "0" * 64 if how == "forged_signature" else None
    planted = _plant(real.path, elsewhere, name, signature=forged)
    data = json.loads((planted / MANIFEST).read_text())
    data["verified"] = {"ok": True, "deep": True, "at": "2999-01-01T00:00:00+00:00"}
    (planted / MANIFEST).write_text(json.dumps(data))
    if how == "symlinked":
        (m.store.root / name).symlink_to(planted, target_is_directory=True)
    else:
        shutil.move(str(planted), m.store.root / name)
    assert [b["backup_id"] for b in m.list_backups()] == [real.backup_id]
    refused = dict(m.store.scan()[1])
    assert {"symlinked": "symbolic link", "unsigned": "not signed",
            "forged_signature": "signature does not match"}[how] in refused[name]
    with pytest.raises(BackupUntrustedError) as exc:
        m.verify(name)
    fix = "cp -a" if how == "symlinked" else f"edulink-db backups sign {name}"
    assert fix in str(exc.value)
    with pytest.raises(BackupUntrustedError):
        m.restore(name)
    result = _cli("backups", "verify", name)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert scalar(db, "SELECT to_regclass('public.planted_by_attacker')") is None
    # The drill and the policy pick the real backup, not the planted newer one.
    from microservices.shared.database.backup.drill import run_drill

    assert run_drill(manager()).backup_id == real.backup_id
    assert scalar(db, "SELECT to_regclass('public.planted_by_attacker')") is None


def test_symlinked_file_inside_a_backup_is_refused(db: dict[str, Any],  # noqa: F811
                                                   tmp_path: Path) -> None:
    m = manager()
    backup = m.create_schema_backup(["user_schema"])
    outside = tmp_path / "preamble.sql"
    shutil.copy(backup.path / "preamble.sql", outside)  # same bytes: checksums still match
    (backup.path / "preamble.sql").unlink()
    (backup.path / "preamble.sql").symlink_to(outside)
    with pytest.raises(BackupUntrustedError, match="symbolic link"):
        m.verify(backup.backup_id)
    with pytest.raises(BackupUntrustedError, match="symbolic link"):
        m.restore(backup.backup_id)


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")
def test_backup_owned_by_someone_else_is_refused(db: dict[str, Any]) -> None:  # noqa: F811
    m = manager()
    backup = m.create_schema_backup(["user_schema"])
    os.chown(backup.path, 4242, 4242)
    with pytest.raises(BackupUntrustedError, match="owned by uid 4242"):
        m.verify(backup.backup_id)
    assert m.list_backups() == []


def test_unsigned_backup_can_be_signed_by_its_owner(db: dict[str, Any]) -> None:  # noqa: F811
    m = manager()
    backup = m.create_schema_backup(["user_schema"])
    path = backup.path / MANIFEST
    data = json.loads(path.read_text())
    data["hmac"] = ""  # as an older edulink-db wrote it
    path.write_text(json.dumps(data))
    with pytest.raises(BackupUntrustedError, match="not signed"):
        m.verify(backup.backup_id)
    result = _cli("backups", "sign", backup.backup_id)
    assert result.returncode == 0, result.stderr
    assert m.verify(backup.backup_id)["ok"]


def test_a_changed_key_is_named(db: dict[str, Any],  # noqa: F811
                                monkeypatch: pytest.MonkeyPatch) -> None:
    m = manager()
    backup = m.create_schema_backup(["user_schema"])
    monkeypatch.setenv("EDULINK_DB_BACKUP_KEY", "k" * 40)
    with pytest.raises(BackupUntrustedError, match="EDULINK_DB_BACKUP_KEY to the old one"):
        manager().verify(backup.backup_id)
    monkeypatch.setenv("EDULINK_DB_BACKUP_KEY", "short")
    with pytest.raises(ConfigError, match="openssl rand"):
        manager().verify(backup.backup_id)


def test_the_key_never_lives_in_the_backup_folder(db: dict[str, Any],  # noqa: F811
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    settings = load_settings()
    monkeypatch.setenv("EDULINK_DB_BACKUP_DIR", str(settings.home))
    with pytest.raises(ConfigError, match="must not travel with them"):
        manager().create_schema_backup(["user_schema"])
    monkeypatch.setenv("EDULINK_DB_BACKUP_DIR", str(settings.edulink_db_backup_dir))
    backup = manager().create_schema_backup(["user_schema"])
    secret_files = [p for p in backup.path.parent.rglob("*") if p.is_file()]
    key = settings.secret_store.get("backup_manifest_hmac_key")
    assert key and all(key not in p.read_text(errors="replace") for p in secret_files)


@pytest.mark.parametrize("bad", ["x" * 300, "../etc", ".hidden", "a/b", "", "ok\n", "x.partial"])
def test_backup_ids_are_validated(db: dict[str, Any], bad: str) -> None:  # noqa: F811
    with pytest.raises(BackupNotFoundError, match="is not a backup id"):
        manager().verify(bad)
    if bad and "\n" not in bad:
        result = _cli("restore", bad)
        assert result.returncode != 0 and "Traceback" not in result.stderr
        assert "not a backup id" in result.stderr
