"""move-service on real-shaped schemas (tests/sample_schema.py, Pagila): every object
kind arrives, every leaf table's rows match in the freeze, a mismatch stops the move
with the source authoritative, and a PostgreSQL 15 source run by a non-superuser
admin (Supabase's case) moves.  EDULINK_TEST_MOVE_PG=15 runs it on Debian's 15."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from microservices.shared.database.config import load_settings
from microservices.shared.database.connection_manager import ConnectionManager
from microservices.shared.database.core.errors import MoveError
from microservices.shared.database.migrations.history import LOCK_CLASS
from microservices.shared.database.relocation import MoveContext, abort, mover, preflight, run_move
from microservices.shared.database.relocation.preflight import migration_lock_key

from .clusters import Cluster
from .conftest import SERVICE_PASSWORD, do_provision, reachable_tempdir, service_env
from .sample_schema import (
    PAGILA,
    SchemaSnapshot,
    load_pagila,
    load_sample_schema,
    make_supabase_like,
    snapshot,
)
from .test_move_service import BIN_DIR, INST, SETTINGS, TOPOLOGY, _leftovers, _p

SCHEMA = INST.schema


@pytest.fixture(scope="module")
def root() -> Iterator[Path]:
    path = reachable_tempdir("edulink-move-real-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _pair(root: Path, tag: str) -> tuple[Cluster, Cluster]:
    return (Cluster.create(root, f"{tag}a", bin_dir=BIN_DIR, settings=SETTINGS),
            Cluster.create(root, f"{tag}b", bin_dir=BIN_DIR, settings=SETTINGS))


def _ctx(source: dict[str, Any], target: dict[str, Any], log: list[str]) -> MoveContext:
    return MoveContext(topology=TOPOLOGY, service=INST, home=source, source=source,
                       target=target, passwords=lambda _s: SERVICE_PASSWORD,
                       migrator_passwords=lambda _s: SERVICE_PASSWORD, progress=log.append)


def _capture_in_freeze(monkeypatch: pytest.MonkeyPatch, source: dict[str, Any],
                       target: dict[str, Any]) -> dict[str, SchemaSnapshot]:
    """Snapshots of both sides taken in the freeze (tables locked on the source, reads
    allowed), just before the move's own verification."""
    seen: dict[str, SchemaSnapshot] = {}
    real = mover._verify_copy

    def verify(src: Any, tgt: Any, schema: str) -> None:
        seen["source"], seen["target"] = snapshot(source, schema), snapshot(target, schema)
        real(src, tgt, schema)

    monkeypatch.setattr(mover, "_verify_copy", verify)
    return seen


def _assert_same(before: SchemaSnapshot, after: SchemaSnapshot) -> None:
    assert after.rows == before.rows
    assert after.matviews == before.matviews
    assert after.objects == before.objects
    assert set(after.sequences) == set(before.sequences)
    for name, value in before.sequences.items():
        assert after.sequences[name] >= value, name


class Writer:
    """The service's own pool writing campus and partitioned event_log rows."""

    def __init__(self) -> None:
        self.manager = ConnectionManager(load_settings())
        self.errors: list[BaseException] = []
        self.commits = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run)

    def run(self) -> None:
        i = 0
        while not self.stop.is_set():
            try:
                with self.manager.get_connection("institution") as conn:
                    conn.execute("INSERT INTO campus (code, name) VALUES (%s, 'w')", [f"w{i}"])
                    conn.execute("INSERT INTO event_log (campus_id, kind, created_at)"
                                 " VALUES (1, 'w', timestamptz '2026-01-01' + %s * interval"
                                 " '1 hour')", [i % 3000])
                self.commits += 1
            except BaseException as exc:
                self.errors.append(exc)
            i += 1
            time.sleep(0.005)

    def __enter__(self) -> Writer:
        self.thread.start()
        time.sleep(0.3)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()
        self.manager.close_all()


@pytest.mark.parametrize("admin", ["superuser", "supabase"])
def test_sample_schema_moves_under_a_writer(root: Path, monkeypatch: pytest.MonkeyPatch,
                                            admin: str) -> None:
    """Every leaf table's rows, matviews' state, sequences and object inventory match in
    the freeze; a non-superuser (Supabase-like) source admin moves too (PostgreSQL 15:
    the subscription logs in as that admin, it may not create a replication role)."""
    a, b = _pair(root, f"s{admin[:3]}")
    try:
        source = make_supabase_like(_p(a)).admin if admin == "supabase" else _p(a)
        do_provision(source, TOPOLOGY)
        load_sample_schema(source, SCHEMA, INST.owner_role)
        service_env(monkeypatch, source)
        seen = _capture_in_freeze(monkeypatch, _p(a), _p(b))
        log: list[str] = []
        with Writer() as writer:
            report = run_move(_ctx(source, _p(b), log))
            time.sleep(0.3)
        assert writer.errors == [] and writer.commits > 0
        assert report is not None and report.ok
        print("\nleaf rows in the freeze (source / target):", ", ".join(
            f"{t} {n}/{seen['target'].rows[t]}" for t, n in seen["source"].rows.items()))
        _assert_same(seen["source"], seen["target"])
        snap = seen["target"]
        assert snap.rows["session_cache"] == 300  # unlogged: copied in the freeze
        assert snap.matviews == {"campus_stats": True, "campus_cold": False}
        assert snap.rows["event_log_2026_03"] > 0 and snap.rows["note_archive"] == 500
        pg15_admin = admin == "supabase" and _major(a) < 16
        assert any("logs in as the source admin" in line for line in log) == bool(pg15_admin)
        # Every write committed before the flip is on the target; later ones too.
        after = snapshot(_p(b), SCHEMA)
        assert after.rows["campus"] >= seen["source"].rows["campus"]
        with b.connect() as conn:
            owner = conn.execute("SELECT pg_get_userbyid(relowner) FROM pg_class WHERE oid ="
                                 " 'institution_schema.campus_stats'::regclass").fetchone()
            assert owner == (INST.owner_role,)
            conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(INST.owner_role)))
            conn.execute("REFRESH MATERIALIZED VIEW institution_schema.campus_stats")
        assert _leftovers(a) == [] and _leftovers(b) == []
    finally:
        a.destroy()
        b.destroy()


def _major(c: Cluster) -> int:
    with c.connect() as conn:
        return conn.info.server_version // 10000


@pytest.mark.skipif(PAGILA is None, reason="shared/data/pagila is not beside the checkout")
def test_pagila_moves(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = _pair(root, "pagila")
    try:
        do_provision(_p(a), TOPOLOGY)
        load_pagila(_p(a), SCHEMA, INST.owner_role, a.bin_dir / "psql")
        service_env(monkeypatch, _p(a))
        seen = _capture_in_freeze(monkeypatch, _p(a), _p(b))
        run_move(_ctx(_p(a), _p(b), []))
        _assert_same(seen["source"], seen["target"])
        assert seen["target"].matviews.get("rental_by_category") is True
        assert _leftovers(a) == [] and _leftovers(b) == []
    finally:
        a.destroy()
        b.destroy()


def test_row_count_mismatch_stops_with_source_authoritative(
        root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A row written on the target behind the subscription's back: the move stops in
    the freeze naming the table and both counts; nothing flipped, freeze lifted, the
    service still writes the source; --abort leaves nothing behind."""
    a, b = _pair(root, "mismatch")
    try:
        do_provision(_p(a), TOPOLOGY)
        load_sample_schema(_p(a), SCHEMA, INST.owner_role)
        service_env(monkeypatch, _p(a))
        real = mover._refresh_matviews

        def sneak(ctx: MoveContext, src: Any, tgt: Any) -> None:
            with b.connect() as conn:
                conn.execute("INSERT INTO institution_schema.note_archive (campus_id,"
                             " owner_id, body) VALUES (1, 'x', 'behind its back')")
            real(ctx, src, tgt)

        monkeypatch.setattr(mover, "_refresh_matviews", sneak)
        ctx = _ctx(_p(a), _p(b), [])
        with pytest.raises(MoveError) as info:
            run_move(ctx)
        message = str(info.value)
        assert "\n" not in message
        assert "institution_schema.note_archive has 500 rows on the source, 501 on the target" \
            in message and "source stays authoritative" in message
        with a.connect() as conn:
            row = conn.execute("SELECT location, frozen_until > now() FROM"
                               " edulink_db_meta.service_location WHERE service = 'institution'"
                               ).fetchone()
        assert row is not None and row[0] is None and not row[1]
        manager = ConnectionManager(load_settings())
        with manager.get_connection("institution") as conn:
            conn.execute("INSERT INTO campus (code, name) VALUES ('still-home', 'x')")
        manager.close_all()
        abort(ctx)
        assert _leftovers(a) == [] and _leftovers(b) == []
        assert snapshot(_p(a), SCHEMA).rows["note_archive"] == 500
    finally:
        a.destroy()
        b.destroy()


def test_bad_input_refused_in_one_line(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Replica identities that break UPDATE/DELETE (named with their real cause), a
    migration in progress, a target that already holds the schema: each refused by the
    preflight, nothing made on either server."""
    a, b = _pair(root, "bad")
    try:
        do_provision(_p(a), TOPOLOGY)
        load_sample_schema(_p(a), SCHEMA, INST.owner_role)
        with a.connect() as conn:
            conn.execute("SET search_path = institution_schema")
            conn.execute("CREATE TABLE ri_nothing (id int PRIMARY KEY);"
                         " ALTER TABLE ri_nothing REPLICA IDENTITY NOTHING")
            conn.execute("CREATE TABLE ri_nopk (x int)")
            conn.execute("CREATE TABLE ri_gone (x int NOT NULL); CREATE UNIQUE INDEX ri_gone_x"
                         " ON ri_gone (x); ALTER TABLE ri_gone REPLICA IDENTITY USING INDEX"
                         " ri_gone_x; DROP INDEX ri_gone_x")
            conn.execute("CREATE TABLE ri_part (x int, d date) PARTITION BY RANGE (d);"
                         " CREATE TABLE ri_part_1 PARTITION OF ri_part DEFAULT")
        report = preflight(_p(a), _p(b), INST)
        text = "\n".join(report.problems)
        print("\n" + text)
        assert ("table institution_schema.ri_nothing has REPLICA IDENTITY NOTHING (its "
                "primary key is not used)") in text and "IDENTITY DEFAULT" in text
        assert "ri_nopk has no primary key" in text and "ri_part_1 has no primary key" in text
        assert "ri_part has" not in text  # the leaf is what matters
        assert "ri_gone has REPLICA IDENTITY USING INDEX, but that index was dropped" in text
        assert "partitioned" not in text and "event_log" not in text
        assert "unlogged tables cannot be published" in "\n".join(report.notes)
        assert len(report.problems) == 4
        with a.connect() as conn:
            conn.execute("DROP TABLE institution_schema.ri_nothing, institution_schema.ri_nopk,"
                         " institution_schema.ri_gone, institution_schema.ri_part")
        # A migration holds the runner's advisory lock.
        holder = a.connect()
        holder.execute("SELECT pg_advisory_lock(%s, hashtext(%s))",
                       [LOCK_CLASS, migration_lock_key(INST)])
        with pytest.raises(MoveError) as info:
            run_move(_ctx(_p(a), _p(b), []))
        assert f"a migration of institution is running on the source (server pid " \
               f"{holder.info.backend_pid} holds its migration lock)" in str(info.value)
        holder.close()
        # A target that already holds the schema.
        do_provision(_p(b), TOPOLOGY)
        load_sample_schema(_p(b), SCHEMA, INST.owner_role)
        with pytest.raises(MoveError) as info:
            run_move(_ctx(_p(a), _p(b), []))
        assert f"schema {SCHEMA} on the target already has" in str(info.value)
        assert "the target must be empty" in str(info.value)
        assert _leftovers(a) == [] and _leftovers(b) == []
        assert snapshot(_p(b), SCHEMA).rows["note"] == 1000  # untouched
        with psycopg.connect(**_p(a)) as conn:
            assert conn.execute("SELECT count(*) FROM pg_namespace WHERE nspname ="
                                " 'edulink_db_meta'").fetchone() in ((0,), (1,))
    finally:
        a.destroy()
        b.destroy()
