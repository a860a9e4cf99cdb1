"""Behind a real PgBouncer in transaction mode: no session state, no leaks.

The tests start PgBouncer themselves (Debian's package; .ci/run installs it).
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from microservices.shared.database.connection_manager import ConnectionManager
from microservices.shared.database.topology import default_topology

from .conftest import SERVICE_PASSWORD
from .ports import PortTaken, start_on_free_port


def _start_pgbouncer(binary: str, workdir: Path, port: int, databases: str,
                     user: str | None) -> subprocess.Popen[bytes]:
    """Start PgBouncer on *port*; raise PortTaken if another process holds the port."""
    config = workdir / "pgbouncer.ini"
    config.write_text(
        f"[databases]\n{databases}"
        "[pgbouncer]\nlisten_addr = 127.0.0.1\n"
        f"listen_port = {port}\nunix_socket_dir =\nauth_type = scram-sha-256\n"
        f"auth_file = {workdir}/userlist.txt\npool_mode = transaction\n"
        "max_client_conn = 500\ndefault_pool_size = 2\n"
        f"logfile = {workdir}/pgbouncer.log\npidfile = {workdir}/pgbouncer.pid\n"
    )
    if user is not None:
        import pwd

        entry = pwd.getpwnam(user)
        for path in [workdir, *workdir.iterdir()]:
            os.chown(path, entry.pw_uid, entry.pw_gid)
    proc = subprocess.Popen([binary, str(config)], user=user,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    log = workdir / "pgbouncer.log"
    deadline = time.monotonic() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                if proc.poll() is None:
                    proc.terminate()
                    proc.wait(timeout=10)
                output = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
                text = (log.read_text() if log.exists() else "") + output
                log.unlink(missing_ok=True)
                if "Address already in use" in text:
                    raise PortTaken(port) from None
                raise RuntimeError(f"pgbouncer did not start: {text}") from None
            time.sleep(0.1)


@pytest.fixture
def pgbouncer(provisioned_db: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """PgBouncer (transaction mode) in front of the test database.

    Two database entries: ``<db>`` with 2 server connections, shared by many
    clients, and ``<db>_one`` with a single server connection.
    """
    binary = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
    if not os.path.exists(binary):
        if os.environ.get("CI"):
            pytest.fail("pgbouncer is not installed; .ci/run installs it with apt-get")
        pytest.skip("pgbouncer is not installed (apt-get install pgbouncer)")
    workdir = Path(tempfile.mkdtemp(prefix="edulink-pgbouncer-"))
    db = provisioned_db["dbname"]
    server = f"host={provisioned_db['host']} port={provisioned_db['port']} dbname={db}"
    users = "\n".join(f'"{r}" "{SERVICE_PASSWORD}"' for r in default_topology().runtime_roles)
    (workdir / "userlist.txt").write_text(users + "\n")
    databases = f"{db} = {server} pool_size=2\n{db}_one = {server} pool_size=1\n"
    user = "nobody" if os.geteuid() == 0 else None  # PgBouncer refuses to run as root
    port, proc = start_on_free_port(
        lambda p: _start_pgbouncer(binary, workdir, p, databases, user))
    try:
        yield {**provisioned_db, "host": "127.0.0.1", "port": str(port)}
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        shutil.rmtree(workdir, ignore_errors=True)


def _as_user_role(params: dict[str, Any], dbname: str) -> dict[str, Any]:
    return {**params, "dbname": dbname, "user": "user_service_role",
            "password": SERVICE_PASSWORD}


def test_control_session_state_does_leak_through_a_transaction_pooler(
    pgbouncer: dict[str, Any],
) -> None:
    """Why the design avoids session state: here, one client's SET reaches another.

    (This is what makes the leak test below able to fail.)"""
    one = _as_user_role(pgbouncer, pgbouncer["dbname"] + "_one")
    with psycopg.connect(**one, autocommit=True, prepare_threshold=None) as a, \
            psycopg.connect(**one, autocommit=True, prepare_threshold=None) as b:
        a.execute("SELECT set_config('app.current_user_id', 'u1', false)")  # session-level
        leaked = b.execute("SELECT current_setting('app.current_user_id', true)").fetchone()
        assert leaked == ("u1",)


def test_many_concurrent_users_see_only_their_own_rows(
    pgbouncer: dict[str, Any], manager_for: Any
) -> None:
    manager: ConnectionManager = manager_for(
        pgbouncer, DATABASE_POOLER="transaction", EDULINK_DB_USER_POOL_SIZE="8",
        EDULINK_DB_APPLICATION_POOL_SIZE="4")
    failures: list[str] = []
    counts = {"user": 0, "anonymous": 0, "writes": 0, "other_service": 0}
    lock = threading.Lock()

    def request(rng: random.Random) -> None:
        roll = rng.random()
        if roll < 0.1:
            with manager.get_connection("user") as conn:
                rows = conn.execute("SELECT owner_id FROM notes").fetchall()
            if rows:
                failures.append(f"request without user_id saw {len(rows)} rows")
            key = "anonymous"
        elif roll < 0.2:
            with manager.get_connection("application") as conn:
                row = conn.execute("SELECT current_user, current_schema()").fetchone()
            if row != ("application_service_role", "application_schema"):
                failures.append(f"application request ran as {row}")
            key = "other_service"
        else:
            user = f"u{rng.randrange(10)}"
            with manager.get_connection("user", user_id=user) as conn:
                rows = conn.execute("SELECT owner_id, current_schema() FROM notes").fetchall()
                if rng.random() < 0.3:
                    with conn.transaction():
                        conn.execute("INSERT INTO notes (owner_id, body) VALUES (%s, 'tmp')",
                                     [user])
                        n = conn.execute("SELECT count(*) FROM notes").fetchone()
                        conn.execute("DELETE FROM notes WHERE body = 'tmp'")
                    if n != (4,):
                        failures.append(f"{user} saw {n} rows inside its transaction")
                    with lock:
                        counts["writes"] += 1
                again = conn.execute("SELECT count(*) FROM notes").fetchone()
            owners = {r[0] for r in rows}
            if owners != {user} or len(rows) != 3 or {r[1] for r in rows} != {"user_schema"}:
                failures.append(f"{user} saw {rows}")
            if again != (3,):
                failures.append(f"{user}'s second statement saw {again}")
            key = "user"
        with lock:
            counts[key] += 1

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        try:
            for _ in range(60):
                request(rng)
        except Exception as exc:  # reported below
            failures.append(f"{type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures, failures[:10]
    assert counts["user"] + counts["anonymous"] + counts["other_service"] == 16 * 60
    assert min(counts.values()) > 0, counts
    # More client connections than PgBouncer's 2 server connections: really multiplexed.
    assert int(manager.get_pool_stats("user")["size"]) > 2


def test_readonly_and_async_through_the_pooler(pgbouncer: dict[str, Any],
                                              manager_for: Any) -> None:
    import asyncio

    manager: ConnectionManager = manager_for(pgbouncer, DATABASE_POOLER="transaction")
    with manager.get_connection("user", user_id="u5", readonly=True) as conn:
        assert conn.execute("SELECT count(*) FROM notes").fetchone() == (3,)
        # Role-level settings hold behind the pooler (no SET, no startup options).
        assert conn.execute("SHOW statement_timeout").fetchone() == ("30s",)
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            conn.execute("DELETE FROM notes")

    async def main() -> list[bool]:
        async def one(i: int) -> bool:
            user = f"u{i % 10}"
            async with manager.get_async_connection("user", user_id=user) as conn:
                cur = await conn.execute("SELECT DISTINCT owner_id FROM notes")
                return await cur.fetchall() == [(user,)]
        try:
            return await asyncio.gather(*[one(i) for i in range(100)])
        finally:
            await manager.aclose_all()

    assert all(asyncio.run(main()))
