"""Backups of real-shaped schemas: partitions, inheritance, unlogged tables, materialized
views, a view pg_dump splits into placeholder + rule (tests/data/sample_schema.sql), and
Pagila when it lies beside the checkout.  verify, drill, auto and restore must agree, and
every leaf table must hold exactly its rows again."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import psycopg
import pytest

from microservices.shared.database.backup.drill import run_drill
from microservices.shared.database.backup.manager import BackupManager, toc_entry
from microservices.shared.database.backup.schedule import run_auto
from microservices.shared.database.backup.store import Manifest
from microservices.shared.database.config import load_settings, to_url
from microservices.shared.database.core.errors import BackupUntrustedError
from microservices.shared.database.topology import default_topology

from .clusters import Cluster
from .conftest import (
    _create_database,
    _drop_database,
    do_provision,
    reachable_tempdir,
    service_env,
)
from .sample_schema import (
    PAGILA,
    load_pagila,
    load_sample_schema,
    make_supabase_like,
    platform_regex,
    snapshot,
)
from .test_move_service import BIN_DIR, _p

TOPOLOGY = default_topology()
INST = TOPOLOGY.service("institution")


@pytest.fixture
def sample_db(fresh_db: dict[str, Any], monkeypatch: pytest.MonkeyPatch,
              tmp_path: Path) -> dict[str, Any]:
    do_provision(fresh_db, TOPOLOGY)
    service_env(monkeypatch, fresh_db, extra={"EDULINK_DB_BACKUP_DIR": str(tmp_path / "bk"),
                                              "EDULINK_DB_HOME": str(tmp_path / "home")})
    load_sample_schema(fresh_db, INST.schema, INST.owner_role)
    return fresh_db




def test_manifest_counts_leaves_and_every_check_agrees(sample_db: dict[str, Any]) -> None:
    before = snapshot(sample_db, INST.schema)
    m = BackupManager(load_settings())
    info = m.create_schema_backup([INST.schema])
    counts = {t.split(".", 1)[1]: n for t, n in info.row_counts.items()
              if t.startswith(INST.schema + ".")}
    assert counts == before.rows  # every leaf, FROM ONLY; no partitioned parent
    assert "event_log" not in counts and "payment" not in counts
    assert m.verify(info.backup_id, deep=True)["ok"]
    drill = run_drill(m, info.backup_id)
    assert drill.ok, drill.error
    report = run_auto(BackupManager(load_settings()))
    assert report.taken  # auto takes and verifies its own backup of the same schemas
    for backup_id in report.taken:
        assert m.verify(backup_id)["ok"]


def test_restore_in_place_and_into_scratch(sample_db: dict[str, Any],
                                           server: dict[str, Any]) -> None:
    before = snapshot(sample_db, INST.schema)
    m = BackupManager(load_settings())
    full = m.create_full_backup()
    kinds = {e[0] for line in m._listing(m.store.load(full.backup_id))
             if (e := toc_entry(line)) is not None}
    assert {"TABLE ATTACH", "INDEX ATTACH", "MATERIALIZED VIEW DATA", "RULE"} <= kinds
    # Whole-schema restore in place (the split view used to break it), then --schema.
    m.restore(full.backup_id, safety_backup=False)
    assert snapshot(sample_db, INST.schema) == before
    m.restore(full.backup_id, schemas=[INST.schema], safety_backup=False)
    after = snapshot(sample_db, INST.schema)
    assert after.rows == before.rows and after.matviews == before.matviews
    assert after.sequences == before.sequences and after.objects == before.objects
    scratch = _create_database(server)
    try:
        target = {**server, "dbname": scratch}
        m.restore(full.backup_id, schemas=[INST.schema], target_db=to_url(target))
        assert snapshot(target, INST.schema) == before
    finally:
        _drop_database(server, scratch)


@pytest.mark.skipif(PAGILA is None, reason="shared/data/pagila is not beside the checkout")
def test_pagila_round_trip(fresh_db: dict[str, Any], monkeypatch: pytest.MonkeyPatch,
                           tmp_path: Path, bin_dir: Path) -> None:
    do_provision(fresh_db, TOPOLOGY)
    service_env(monkeypatch, fresh_db, extra={"EDULINK_DB_BACKUP_DIR": str(tmp_path / "bk"),
                                              "EDULINK_DB_HOME": str(tmp_path / "home")})
    load_pagila(fresh_db, INST.schema, INST.owner_role, bin_dir / "psql")
    before = snapshot(fresh_db, INST.schema)
    m = BackupManager(load_settings())
    info = m.create_schema_backup([INST.schema])
    assert m.verify(info.backup_id, deep=True)["ok"]
    assert run_drill(m, info.backup_id).ok
    m.restore(info.backup_id, safety_backup=False)
    assert snapshot(fresh_db, INST.schema) == before


def test_cli_backup_auto_exits_0_on_partitioned_schema(sample_db: dict[str, Any]) -> None:
    import sys
    result = subprocess.run([sys.executable, "-m", "microservices.shared.database", "backup",
                             "auto"], capture_output=True, text=True, check=False, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr


def test_manifest_records_matviews_and_drill_skips_a_damaged_newest(
        sample_db: dict[str, Any]) -> None:
    m = BackupManager(load_settings())
    older = m.create_schema_backup([INST.schema]).backup_id
    newer = m.create_schema_backup([INST.schema]).backup_id
    assert m.store.load(older).matviews == {f"{INST.schema}.campus_cold": False,
                                            f"{INST.schema}.campus_stats": True}
    m.verify(older)
    m.verify(newer)
    dump = m.store.path(newer) / f"{newer}.dump"
    dump.write_bytes(dump.read_bytes()[:1000])  # truncated after it was verified
    report = run_drill(m)
    assert report.ok and report.backup_id == older
    with pytest.raises(Exception, match="truncated"):
        m.restore(newer, safety_backup=False)


def test_supabase_full_backup_leaves_the_platform_out(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """On a Supabase-like project (platform schemas and roles, a non-superuser admin) a
    full backup holds the topology's schemas, the project's metadata and large objects,
    and no platform schema; it verifies, drills and restores in place. A platform
    schema asked for by name is included, and the manifest says so. A server of its
    own: roles are cluster-wide, and the admin must create the topology's itself."""
    root = reachable_tempdir("edulink-supa-bk-")
    cluster = Cluster.create(root, "supabk", bin_dir=BIN_DIR)
    supa = make_supabase_like(_p(cluster))
    admin = supa.admin
    try:
        do_provision(admin, TOPOLOGY)
        service_env(monkeypatch, admin, extra={"EDULINK_DB_BACKUP_DIR": str(tmp_path / "bk"),
                                               "EDULINK_DB_HOME": str(tmp_path / "home")})
        load_sample_schema(admin, INST.schema, INST.owner_role)
        with psycopg.connect(**admin, autocommit=True) as conn:
            conn.execute("SELECT pg_catalog.lo_from_bytea(0, 'transcript.pdf')")
        before = snapshot(admin, INST.schema)
        m = BackupManager(load_settings())
        info = m.create_full_backup()
        manifest = m.store.load(info.backup_id)
        assert supa.platform_schemas and not [s for s in manifest.schemas
                                              if platform_regex().match(s)]
        assert set(TOPOLOGY.schemas) <= set(manifest.schemas) <= {*TOPOLOGY.schemas,
                                                                  "edulink_db_meta"}
        assert manifest.large_objects and manifest.large_object_count == 1
        assert manifest.sequences[f"{INST.schema}.ticket_seq"] == 4242
        assert m.verify(info.backup_id, deep=True)["ok"]
        drill = run_drill(m)
        assert drill.ok and drill.backup_id == info.backup_id, drill.error
        print(f"\nsupabase-like full backup: {', '.join(manifest.schemas)}; platform left "
              f"out: {', '.join(supa.platform_schemas)}; drill {drill.rows} rows")
        m.restore(info.backup_id, safety_backup=False)
        assert snapshot(admin, INST.schema) == before
        with psycopg.connect(**admin) as conn:
            assert conn.execute("SELECT count(*) FROM pg_catalog.pg_largeobject_metadata"
                                ).fetchone() == (1,)
            assert conn.execute("SELECT count(*) FROM auth.users").fetchone() is not None
        asked = m.store.load(m.create_full_backup(include_schemas=["auth"]).backup_id)
        assert "auth" in asked.schemas
        assert any(note.startswith("auth: a platform schema") for note in asked.notes)
    finally:
        cluster.destroy()
        shutil.rmtree(root, ignore_errors=True)


def test_old_manifests_keep_their_signature(sample_db: dict[str, Any]) -> None:
    """A manifest written before the set/sequence/large-object fields existed (no such
    keys in its JSON) still verifies: new fields are signed only when they hold data."""
    m = BackupManager(load_settings())
    info = m.create_schema_backup([INST.schema])
    path = m.store.path(info.backup_id) / "manifest.json"
    data = json.loads(path.read_text())
    for key in ("matviews", "sequences", "source", "set_id", "set_schemas",
                "large_objects", "large_object_count", "notes"):
        data.pop(key, None)
    manifest = Manifest.from_dict(dict(data))
    m.store.sign(manifest)
    data["key_id"], data["hmac"] = manifest.key_id, manifest.hmac
    path.write_text(json.dumps(data))
    assert m.store.load(info.backup_id).row_counts == info.row_counts
    data["row_counts"][f"{INST.schema}.campus"] = 1  # and an edit is still caught
    path.write_text(json.dumps(data))
    with pytest.raises(BackupUntrustedError):
        m.store.load(info.backup_id)
