"""edulink-db move-service: two real servers, a writer and a cross-service reader
running through the public connection API during the move."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from microservices.shared.database.config import load_settings, to_url
from microservices.shared.database.connection_manager import ConnectionManager
from microservices.shared.database.core.errors import MoveError
from microservices.shared.database.cross_schema_access import CrossSchemaAccessManager
from microservices.shared.database.migrations import MigrationManager
from microservices.shared.database.migrations.history import reference_migrations_dir
from microservices.shared.database.privileges.verify import verify
from microservices.shared.database.relocation import MoveContext, preflight, run_move
from microservices.shared.database.topology import default_topology

from .clusters import Cluster, debian_bin_dir
from .conftest import SERVICE_PASSWORD, do_provision, reachable_tempdir, service_env

TOPOLOGY = default_topology()
INST = TOPOLOGY.service("institution")
SETTINGS = {"max_slot_wal_keep_size": "1GB"}


@pytest.fixture(scope="module")
def root() -> Iterator[Path]:
    path = reachable_tempdir("edulink-move-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _p(c: Cluster) -> dict[str, Any]:
    """Admin parameters of *c* (connect helpers set their own timeout)."""
    return {k: v for k, v in c.params.items() if k != "connect_timeout"}


# EDULINK_TEST_MOVE_PG=15: run the two servers on Debian's PostgreSQL 15 binaries.
_MAJOR = os.environ.get("EDULINK_TEST_MOVE_PG")
BIN_DIR = debian_bin_dir(int(_MAJOR)) if _MAJOR else None
if _MAJOR and BIN_DIR is None:
    pytest.skip(f"PostgreSQL {_MAJOR} binaries are not installed", allow_module_level=True)


def _pair(root: Path, tag: str) -> tuple[Cluster, Cluster]:
    return (Cluster.create(root, f"{tag}a", bin_dir=BIN_DIR, settings=SETTINGS),
            Cluster.create(root, f"{tag}b", bin_dir=BIN_DIR, settings=SETTINGS))


def _setup_source(a: Cluster, monkeypatch: pytest.MonkeyPatch, tmp: Path) -> None:
    do_provision(_p(a), TOPOLOGY)
    service_env(monkeypatch, _p(a))
    mig = tmp / "migrations"
    shutil.copytree(reference_migrations_dir(), mig)
    MigrationManager(load_settings(), mig).run_service_migrations("institution")
    with a.connect() as conn:
        conn.execute("SET ROLE institution_service_owner")
        conn.execute("CREATE SEQUENCE institution_schema.bare_seq")  # not owned by a column
        conn.execute("SELECT nextval('institution_schema.bare_seq') FROM generate_series(1, 7)")
        conn.execute("INSERT INTO institution_schema.institutions_institution (code, name)"
                     " SELECT 'seed' || i, 'Seed ' || i FROM generate_series(1, 500) i")


def _ctx(a: Cluster, b: Cluster, **kw: Any) -> MoveContext:
    return MoveContext(topology=TOPOLOGY, service=INST, home=_p(a), source=_p(a),
                       target=_p(b), passwords=lambda _s: SERVICE_PASSWORD,
                       migrator_passwords=lambda _s: SERVICE_PASSWORD, **kw)


def _steps(ctx: MoveContext) -> str:
    return ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in ctx.steps[-1].items())


def _leftovers(c: Cluster) -> list[Any]:
    with c.connect() as conn:
        return [*conn.execute("SELECT 'slot', slot_name FROM pg_replication_slots"),
                *conn.execute("SELECT 'pub', pubname FROM pg_publication"),
                *conn.execute("SELECT 'sub', subname FROM pg_subscription"),
                *conn.execute("SELECT 'role', rolname FROM pg_roles"
                              " WHERE rolname LIKE 'edulink_move%'")]


def _codes(c: Cluster, schema: str = "institution_schema") -> set[str]:
    with c.connect() as conn:
        return {r[0] for r in conn.execute(sql.SQL("SELECT code FROM {}").format(
            sql.Identifier(schema, "institutions_institution")))}


def test_move_under_load(root: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    a, b = _pair(root, "load")
    try:
        _setup_source(a, monkeypatch, tmp_path)
        # A sync and an async pool of one service share the role's CONNECTION LIMIT
        # (14 with max_connections = 100): keep both small.
        monkeypatch.setenv("DATABASE_POOL_SIZE", "2")
        monkeypatch.setenv("DATABASE_MAX_OVERFLOW", "2")
        manager = ConnectionManager(load_settings())
        cross = CrossSchemaAccessManager(connections=manager)
        with manager.get_connection("institution") as conn:
            row = conn.execute("SELECT id FROM institutions_institution"
                               " WHERE code = 'seed1'").fetchone()
        assert row is not None
        inst_id = row[0]
        committed: list[str] = []
        errors: list[BaseException] = []
        reads = [0]
        longest = [0.0]
        stop = threading.Event()

        def writer() -> None:
            i = 0
            while not stop.is_set():
                code = f"w{i}"
                t0 = time.monotonic()
                try:
                    with manager.get_connection("institution") as conn:
                        conn.execute("INSERT INTO institutions_institution (code, name)"
                                     " VALUES (%s, %s)", [code, code])
                    committed.append(code)
                except BaseException as exc:
                    errors.append(exc)
                longest[0] = max(longest[0], time.monotonic() - t0)
                i += 1
                time.sleep(0.005)

        def reader() -> None:
            while not stop.is_set():
                try:
                    row = cross.get_institution_details(inst_id, "application")
                    assert row is not None and row["code"] == "seed1"
                    reads[0] += 1
                except BaseException as exc:
                    errors.append(exc)
                time.sleep(0.005)

        async def awriter() -> None:
            i = 0
            while not stop.is_set():
                code = f"a{i}"
                try:
                    async with manager.get_async_connection("institution") as conn:
                        await conn.execute("INSERT INTO institutions_institution (code, name)"
                                           " VALUES (%s, %s)", [code, code])
                    committed.append(code)
                except BaseException as exc:
                    errors.append(exc)
                i += 1
                await asyncio.sleep(0.005)

        threads = [threading.Thread(target=writer), threading.Thread(target=reader),
                   threading.Thread(target=asyncio.run, args=(awriter(),))]
        for t in threads:
            t.start()
        time.sleep(0.5)
        ctx = _ctx(a, b)
        run_move(ctx)
        time.sleep(0.5)
        moved_there = set(committed)
        # ... and back, through the CLI (--from: where the schema lives now), while the
        # same writers and reader keep going.
        back = _cli(a, a, "--from", to_url(_p(b)))
        out, err = back.communicate(timeout=300)
        assert back.returncode == 0, err
        assert "Traceback" not in err and SERVICE_PASSWORD not in out + err
        time.sleep(0.5)
        stop.set()
        for t in threads:
            t.join()
        print(f"\nmove under load: {len(committed)} writes, {reads[0]} reads, cutover pause "
              f"{ctx.pauses[0] * 1000:.0f} ms ({_steps(ctx)}), longest write "
              f"{longest[0] * 1000:.0f} ms")
        assert errors == []
        assert committed and reads[0] > 0
        assert any(c.startswith("a") for c in moved_there)  # the async writer ran
        assert manager.location_of("institution") is None  # home again
        on_home = _codes(a)
        assert set(committed) <= on_home
        # b keeps its copy aside, out of every service's reach (retired at epoch 2).
        assert moved_there <= _codes(b, "institution_schema_moved_2")
        assert {f"seed{i}" for i in range(1, 501)} <= on_home
        with manager.get_connection("institution") as conn:
            conn.execute("INSERT INTO institutions_institution (code, name) VALUES ('after', 'x')")
        assert "after" in _codes(a)
        with a.connect() as admin:
            seq = admin.execute("SELECT last_value FROM institution_schema.bare_seq").fetchone()
        assert seq == (7,)
        assert _leftovers(a) == [] and _leftovers(b) == []
        for c in (a, b):
            report = verify(_p(c), TOPOLOGY)
            assert report.ok, report.problems
        manager.close_all()
    finally:
        a.destroy()
        b.destroy()


def test_preflight_refuses(root: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No primary key, a cross-schema foreign key, unbounded WAL: each refused, nothing made."""
    a = Cluster.create(root, "pfa", bin_dir=BIN_DIR, settings={})
    b = Cluster.create(root, "pfb", bin_dir=BIN_DIR, settings=SETTINGS)
    try:
        _setup_source(a, monkeypatch, tmp_path)
        with a.connect() as conn:
            conn.execute("CREATE TABLE institution_schema.nopk (x int)")
            conn.execute("CREATE TABLE user_schema.fk_out (id int PRIMARY KEY, inst uuid"
                         " REFERENCES institution_schema.institutions_institution (id))")
        report = preflight(_p(a), _p(b), INST)
        text = "\n".join(report.problems)
        assert "nopk has no primary key" in text
        assert "fk_out" in text and "crosses the schema boundary" in text
        assert "max_slot_wal_keep_size is unlimited" in text
        with pytest.raises(MoveError, match="Preflight refused"):
            run_move(_ctx(a, b))
        assert _leftovers(a) == [] and _leftovers(b) == []
    finally:
        a.destroy()
        b.destroy()


def _cli(a: Cluster, b: Cluster, *args: str, hold: str | None = None) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "EDULINK_DB"))}
    env["DATABASE_URL"] = to_url(_p(a))
    for svc in TOPOLOGY.services:
        env[f"EDULINK_DB_{svc.name.upper()}_PASSWORD"] = SERVICE_PASSWORD
        env[f"EDULINK_DB_{svc.name.upper()}_MIGRATOR_PASSWORD"] = SERVICE_PASSWORD
    env["EDULINK_DB_MOVE_TO"] = to_url(_p(b))
    if hold:
        env["EDULINK_DB_MOVE_HOLD"] = hold
    return subprocess.Popen([sys.executable, "-m", "microservices.shared.database",
                             "move-service", "institution", *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _wait_output(proc: subprocess.Popen[str], needle: str, timeout: float = 120) -> None:
    assert proc.stderr is not None
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        seen.append(line)
        if needle in line:
            return
        if not line and proc.poll() is not None:
            break
    raise AssertionError(f"{needle!r} never printed: {''.join(seen)[-2000:]}")


@pytest.mark.parametrize("phase,then", [("prepare", "abort"), ("copy", "abort"),
                                        ("cutover", "abort"), ("cutover", "resume"),
                                        ("cleanup", "resume")])
def test_kill_9_then_resume_or_abort(root: Path, monkeypatch: pytest.MonkeyPatch,
                                     tmp_path: Path, phase: str, then: str) -> None:
    a, b = _pair(root, f"k{phase[:3]}{then[:2]}")
    try:
        _setup_source(a, monkeypatch, tmp_path)
        proc = _cli(a, b, hold=phase)
        _wait_output(proc, f"holding at phase {phase}")
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        finish = _cli(a, b, f"--{then}")
        out, err = finish.communicate(timeout=300)
        assert finish.returncode == 0, err
        assert "Traceback" not in err and SERVICE_PASSWORD not in out + err
        assert _leftovers(a) == [] and _leftovers(b) == []
        manager = ConnectionManager(load_settings())
        code = f"after-{uuid.uuid4().hex[:6]}"
        with manager.get_connection("institution") as conn:
            conn.execute("INSERT INTO institutions_institution (code, name) VALUES (%s, 'x')",
                         [code])
        manager.close_all()
        moved = then == "resume"
        assert code in _codes(b if moved else a)
        assert "seed500" in _codes(b if moved else a)
        for c in (a, b):
            assert verify(_p(c), TOPOLOGY).ok
    finally:
        a.destroy()
        b.destroy()


def test_citus_sql() -> None:
    proc = subprocess.run([sys.executable, "-m", "microservices.shared.database",
                           "move-service", "--citus-sql"], capture_output=True, text=True,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    assert "SELECT citus_schema_distribute('institution_schema');" in proc.stdout
    assert "not tested" in proc.stdout


def test_queued_writer_gets_service_moved_error(root: Path, monkeypatch: pytest.MonkeyPatch,
                                                tmp_path: Path) -> None:
    """A statement checked out before the freeze and sent while the cutover holds the
    locks queues behind them; once the routing flipped it is refused (its INSERT
    privilege revoked), and the pool turns that into ServiceMovedError: nothing written,
    safe to retry, and every committed row is on the target."""
    from microservices.shared.database.core.errors import ServiceMovedError
    from microservices.shared.database.relocation import mover

    a, b = _pair(root, "queued")
    try:
        _setup_source(a, monkeypatch, tmp_path)
        manager = ConnectionManager(load_settings())
        with manager.get_connection("institution") as conn:
            conn.execute("INSERT INTO institutions_institution (code, name) VALUES ('pre', 'x')")
        ready, go = threading.Event(), threading.Event()
        outcome: list[BaseException | None] = []

        def queued_writer() -> None:
            try:
                with manager.get_connection("institution") as conn:
                    ready.set()
                    go.wait(30)
                    conn.execute("INSERT INTO institutions_institution (code, name)"
                                 " VALUES ('queued', 'x')")
                outcome.append(None)
            except BaseException as exc:
                outcome.append(exc)

        real_flush = mover._flush_barrier

        def flush_once_queued(conn: Any, name: str) -> None:
            # The cutover holds its locks here: let the writer queue behind them.
            go.set()
            with a.connect() as admin:
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline and not admin.execute(
                        "SELECT 1 FROM pg_locks WHERE NOT granted AND relation ="
                        " 'institution_schema.institutions_institution'::regclass").fetchone():
                    time.sleep(0.01)
            real_flush(conn, name)

        monkeypatch.setattr(mover, "_flush_barrier", flush_once_queued)
        thread = threading.Thread(target=queued_writer)
        thread.start()
        assert ready.wait(10)
        run_move(_ctx(a, b))
        thread.join(30)
        assert len(outcome) == 1 and isinstance(outcome[0], ServiceMovedError), outcome
        assert "run it again" in str(outcome[0])
        assert "queued" not in _codes(b)
        assert "queued" not in _codes(a, "institution_schema_moved_1")
        assert "pre" in _codes(b)
        # The retry the error asks for lands on the target.
        with manager.get_connection("institution") as conn:
            conn.execute("INSERT INTO institutions_institution (code, name)"
                         " VALUES ('queued', 'x')")
        assert "queued" in _codes(b)
        manager.close_all()
    finally:
        a.destroy()
        b.destroy()


def test_abort_refused_after_cutover(root: Path, monkeypatch: pytest.MonkeyPatch,
                                     tmp_path: Path) -> None:
    a, b = _pair(root, "noabort")
    try:
        _setup_source(a, monkeypatch, tmp_path)
        proc = _cli(a, b, hold="cleanup")
        _wait_output(proc, "holding at phase cleanup")
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        refused = _cli(a, b, "--abort")
        out, err = refused.communicate(timeout=120)
        assert refused.returncode != 0
        assert "has cut over already" in err and "--resume" in err
        assert "Traceback" not in err and SERVICE_PASSWORD not in out + err
        # The refusal changed nothing: the target stays authoritative, the move finishes.
        assert "seed500" in _codes(b)
        finish = _cli(a, b, "--resume")
        out, err = finish.communicate(timeout=300)
        assert finish.returncode == 0, err
        assert "seed500" in _codes(b)
        assert _leftovers(a) == [] and _leftovers(b) == []
    finally:
        a.destroy()
        b.destroy()


def test_open_write_transaction_blocks_slot_creation(
        root: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """An idle-in-transaction session holding an xid makes slot creation wait: the move
    stops after slot_timeout_s naming its pid, leaves no slot, publication or role
    behind, and resumes once the session is gone."""
    a, b = _pair(root, "idle")
    try:
        _setup_source(a, monkeypatch, tmp_path)
        blocker = a.connect()
        blocker.autocommit = False
        blocker.execute("INSERT INTO institution_schema.institutions_institution (code, name)"
                        " VALUES ('open', 'x')")
        pid = blocker.info.backend_pid
        ctx = _ctx(a, b, slot_timeout_s=1.5)
        with pytest.raises(MoveError, match=rf"pid {pid} \(") as info:
            run_move(ctx)
        assert "idle in transaction" in str(info.value)
        assert "nothing was left behind" in str(info.value)
        assert _leftovers(a) == [] and _leftovers(b) == []
        blocker.commit()
        blocker.close()
        run_move(_ctx(a, b), resume=True)
        assert "open" in _codes(b)
        assert _leftovers(a) == [] and _leftovers(b) == []
    finally:
        a.destroy()
        b.destroy()


def test_preflight_names_what_a_supabase_like_admin_lacks(
        createrole_admin: dict[str, Any], unique_topology: Any) -> None:
    """A non-superuser admin (CREATEROLE CREATEDB): the preflight names exactly the
    privileges it lacks on each side, and refuses."""
    admin = createrole_admin
    do_provision(admin, unique_topology)
    svc = unique_topology.services[0]  # provisioning made the admin a member of its owner
    target_db = f"{admin['dbname']}_target"
    with psycopg.connect(**admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(target_db)))
        version = conn.info.server_version
    # The target is the test server: what it lacks depends on its major version.
    target_lacks = (
        "the target admin lacks pg_create_subscription (PostgreSQL 16+): GRANT "
        "pg_create_subscription TO <admin> as a superuser" if version >= 160000 else
        "the target runs PostgreSQL 15 or older: CREATE SUBSCRIPTION needs a superuser "
        "there; the target admin is not one")
    try:
        report = preflight(admin, {**admin, "dbname": target_db}, svc)
        privileges = sorted(p for p in report.problems if "admin" in p)
        print("\n" + "\n".join(report.problems))
        assert privileges == sorted([
            f"the source admin needs REPLICATION, BYPASSRLS (PostgreSQL {version // 10000}: "
            "the replication slot and the subscription's login need REPLICATION, reading "
            "every row needs BYPASSRLS): ALTER ROLE <admin> REPLICATION BYPASSRLS as a "
            "superuser",
            target_lacks,
        ])
        assert not report.ok
    finally:
        with psycopg.connect(**admin, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(
                sql.Identifier(target_db)))
