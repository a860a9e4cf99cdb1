"""Server outages of a plain PostgreSQL server (stopped, then started again): how fast
the service pools come back, what a statement in flight raises, what a checkout during
the outage does, and what is logged (issue 30).

Each outage runs a writer through ``get_connection`` beside a bare psycopg writer that
reconnects at once, so the pools are measured against the best a client can do.  Run
with ``-s`` to see the numbers.  The bounds asserted are correctness bounds (a pool
that still backed off for seconds, as psycopg_pool's default 1-2-4-8 s schedule does,
fails them), not benchmarks.
"""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import django
import psycopg
import pytest

from microservices.shared.database.config import load_settings
from microservices.shared.database.connection_manager import ConnectionManager
from microservices.shared.database.connections import outage
from microservices.shared.database.core.errors import (
    EdulinkDBError,
    ServerConnectionLostError,
    ServiceConnectionError,
)

from .clusters import Cluster
from .conftest import service_env, service_params
from .test_django import PROJECT, env_for
from .test_failover import DB, make_pair

LOGGER = "microservices.shared.database.connection_manager"


@pytest.fixture(scope="module")
def server() -> Iterator[Cluster]:
    primary, _ = make_pair("edulink-reconnect-", standbys=0)
    try:
        yield primary
    finally:
        primary.destroy()


@pytest.fixture
def manager(server: Cluster, monkeypatch: pytest.MonkeyPatch) -> Iterator[ConnectionManager]:
    if not (server.pgdata / "postmaster.pid").exists():
        server.start()  # a failed test left it stopped
    service_env(monkeypatch, {**server.params, "dbname": DB},
                extra={"DATABASE_POOL_SIZE": "3", "DATABASE_MAX_OVERFLOW": "1",
                       "DATABASE_POOL_TIMEOUT": "5"})
    made = ConnectionManager(load_settings())
    yield made
    made.close_all()


@dataclass
class Writer:
    """Writes in a loop until stopped; records successes and the errors' classes."""

    name: str
    successes: list[float] = field(default_factory=list)
    errors: list[BaseException] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def resumed_after(self, moment: float) -> float:
        after = [t for t in self.successes if t > moment]
        assert after, f"{self.name}: no write after the server came back; " \
                      f"errors: {[type(e).__name__ for e in self.errors[-5:]]}"
        return after[0] - moment


def pool_writer(manager: ConnectionManager, writer: Writer) -> None:
    while not writer.stop.is_set():
        try:
            with manager.get_connection("user") as conn:
                conn.execute("INSERT INTO ticks (writer) VALUES ('pool')")
            writer.successes.append(time.monotonic())
        except (psycopg.Error, EdulinkDBError) as exc:
            writer.errors.append(exc)
        time.sleep(0.005)


def bare_writer(params: dict[str, Any], writer: Writer) -> None:
    """The best a client can do: reconnect at once, as often as it takes."""
    conn: psycopg.Connection[Any] | None = None
    while not writer.stop.is_set():
        try:
            if conn is None or conn.closed:
                conn = psycopg.connect(**{**params, "connect_timeout": 2}, autocommit=True)
            conn.execute("INSERT INTO user_schema.ticks (writer) VALUES ('bare')")
            writer.successes.append(time.monotonic())
        except psycopg.Error as exc:
            writer.errors.append(exc)
            if conn is not None:
                conn.close()
            time.sleep(0.005)
        time.sleep(0.005)
    if conn is not None:
        conn.close()


@pytest.mark.parametrize("seconds", [1, 10, 30])
def test_writes_resume_at_once_after_an_outage(
        server: Cluster, manager: ConnectionManager, seconds: int,
        caplog: pytest.LogCaptureFixture) -> None:
    ours, bare = Writer("get_connection"), Writer("bare psycopg")
    user = next(s for s in load_settings().topology().services if s.name == "user")
    params = service_params({**server.params, "dbname": DB}, user)
    threads = [threading.Thread(target=pool_writer, args=(manager, ours), daemon=True),
               threading.Thread(target=bare_writer, args=(params, bare), daemon=True)]
    for thread in threads:
        thread.start()
    try:
        deadline = time.monotonic() + 10
        while (len(ours.successes) < 20 or len(bare.successes) < 20) \
                and time.monotonic() < deadline:
            time.sleep(0.02)
        caplog.clear()
        caplog.set_level(logging.INFO)
        stopped_at = time.monotonic()
        server.stop()
        time.sleep(seconds)
        server.start()  # pg_ctl -w: returns once the server accepts connections
        back_at = time.monotonic()
        deadline = back_at + 15
        while time.monotonic() < deadline and not (
                any(t > back_at for t in ours.successes)
                and any(t > back_at for t in bare.successes)):
            time.sleep(0.01)
        time.sleep(0.2)
    finally:
        ours.stop.set()
        bare.stop.set()
        for thread in threads:
            thread.join(timeout=15)
    ours_resumed, bare_resumed = ours.resumed_after(back_at), bare.resumed_after(back_at)
    raw = [e for e in ours.errors if not isinstance(e, EdulinkDBError)]
    starts = [r for r in caplog.records if r.name == LOGGER and "cannot connect" in r.message]
    ends = [r for r in caplog.records if r.name == LOGGER and "reconnected to" in r.message]
    per_attempt = [r for r in caplog.records if r.name == "psycopg.pool"]
    print(f"\noutage {seconds} s (down {back_at - stopped_at:.2f} s): writes resumed "
          f"{ours_resumed:.3f} s after the server was back (bare psycopg {bare_resumed:.3f} "
          f"s); {len(ours.errors)} failed checkouts/statements "
          f"({sorted({type(e).__name__ for e in ours.errors})}); log: {len(starts)} outage "
          f"line(s), {len(ends)} recovery line(s), {len(per_attempt)} per-attempt records")
    assert not raw, f"raw driver errors escaped: {raw[:3]}"
    assert ours_resumed < bare_resumed + outage.MAX_DELAY_S * (1 + outage.JITTER) + 0.5
    assert len(starts) == 1 and "\n" not in starts[0].getMessage()
    assert len(ends) == 1 and len(per_attempt) == 0


def test_a_statement_in_flight_raises_the_documented_error(
        server: Cluster, manager: ConnectionManager) -> None:
    """A fast shutdown (what Patroni does at a switchover) ends a running statement
    with AdminShutdown: the caller gets ServerConnectionLostError naming the server."""
    caught: list[BaseException] = []

    def sleeper() -> None:
        try:
            with manager.get_connection("user") as conn:
                conn.execute("SELECT pg_sleep(60)")
        except BaseException as exc:
            caught.append(exc)

    thread = threading.Thread(target=sleeper, daemon=True)
    thread.start()
    time.sleep(0.5)
    server.stop()
    thread.join(timeout=30)
    server.start()
    (exc,) = caught
    assert isinstance(exc, ServerConnectionLostError), repr(exc)
    assert isinstance(exc, psycopg.OperationalError)  # handlers of psycopg's error still work
    assert f"127.0.0.1:{server.port}" in str(exc)
    assert "terminating connection due to administrator command" in str(exc)
    assert isinstance(exc.__cause__, psycopg.errors.AdminShutdown)


def test_a_terminated_session_and_an_async_checkout_raise_it_too(
        server: Cluster, manager: ConnectionManager) -> None:
    async def run() -> BaseException:
        try:
            async with manager.get_async_connection("user") as conn:
                cur = await conn.execute("SELECT pg_backend_pid()")
                row = await cur.fetchone()
                assert row is not None
                with server.connect(dbname=DB) as admin:
                    # wait: the backend exits after the signal, not at once
                    admin.execute("SELECT pg_terminate_backend(%s, 10000)", (row[0],))
                await conn.execute("SELECT 1")
        except BaseException as exc:
            return exc
        finally:
            await manager.aclose_all()
        raise AssertionError("the statement on a terminated session succeeded")

    exc = asyncio.run(run())
    assert isinstance(exc, ServerConnectionLostError), repr(exc)
    assert f"127.0.0.1:{server.port}" in str(exc)


def test_a_statement_timeout_is_not_a_lost_connection(manager: ConnectionManager) -> None:
    with pytest.raises(psycopg.errors.QueryCanceled) as caught, \
            manager.get_connection("user") as conn:
        conn.execute("SET statement_timeout = '50ms'")
        conn.execute("SELECT pg_sleep(1)")
    assert not isinstance(caught.value, ServerConnectionLostError)
    with manager.get_connection("user") as conn:  # the pool is fine
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_a_checkout_during_an_outage_waits_the_pool_timeout_then_says_why(
        server: Cluster, manager: ConnectionManager) -> None:
    with manager.get_connection("user") as conn:
        conn.execute("SELECT 1")
    server.stop()
    try:
        started = time.monotonic()
        with pytest.raises(ServiceConnectionError) as caught, \
                manager.get_connection("user") as conn:
            conn.execute("SELECT 1")
        waited = time.monotonic() - started
    finally:
        server.start()
    print(f"\ncheckout during an outage raised after {waited:.2f} s "
          f"(DATABASE_POOL_TIMEOUT=5): {caught.value}")
    assert not isinstance(caught.value, ServerConnectionLostError)
    message = str(caught.value)
    assert "cannot reach the database" in message and "waited 5 s" in message
    assert "Connection refused" in message or "connection refused" in message.lower()
    assert 4.5 < waited < 8
    with manager.get_connection("user") as conn:  # and it comes back without a restart
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_backoff_is_bounded_and_jittered() -> None:
    attempt = outage.Backoff(timeout=300)
    delays = []
    now = 0.0
    for _ in range(20):
        attempt.update_delay(now)
        delays.append(attempt.delay)
        now += attempt.delay
    assert outage.INITIAL_DELAY_S * (1 - outage.JITTER) <= delays[0] \
        <= outage.INITIAL_DELAY_S * (1 + outage.JITTER)
    assert max(delays) <= outage.MAX_DELAY_S * (1 + outage.JITTER)
    assert len({round(d, 6) for d in delays[-10:]}) > 1  # jittered, not in step
    short = outage.Backoff(timeout=1.0)
    short.update_delay(0.0)
    for _ in range(10):
        short.update_delay(0.5)
    assert short.delay <= 0.5  # never past reconnect_timeout


def _django(server: Cluster, pool: str, *args: str) -> subprocess.Popen[str]:
    env = {**env_for({**server.params, "dbname": DB}, "user"), "EDULINK_DJANGO_POOL": pool}
    return subprocess.Popen([sys.executable, "outage_scenarios.py", *args], cwd=PROJECT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def _wait_ready(proc: subprocess.Popen[str]) -> None:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.strip() == "ready", f"{line}{proc.stderr.read() if proc.stderr else ''}"


def _result(proc: subprocess.Popen[str]) -> dict[str, Any]:
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    data: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return data


DJANGO_POOLS = ["0", pytest.param("1", marks=pytest.mark.skipif(
    django.VERSION < (5, 1), reason="Django's pool needs Django 5.1"))]


@pytest.mark.parametrize("pool", DJANGO_POOLS)
def test_a_django_statement_in_flight_raises_the_documented_error(
        server: Cluster, manager: ConnectionManager, pool: str) -> None:
    proc = _django(server, pool, "inflight")
    try:
        _wait_ready(proc)
        time.sleep(0.5)
        server.stop()
        found = _result(proc)
    finally:
        server.start()
    assert found["lost"] and found["django"], found  # both classes, one exception
    assert f"127.0.0.1:{server.port}" in found["message"]
    assert "terminating connection due to administrator command" in found["message"]


@pytest.mark.parametrize("pool", DJANGO_POOLS)
def test_a_django_service_resumes_at_once_after_an_outage(
        server: Cluster, manager: ConnectionManager, pool: str) -> None:
    """With Django's pool, the pool edulink-db builds in its place reconnects at once
    (Django's plain psycopg_pool would back off to 4 s by then); without it, each
    request connects anew."""
    proc = _django(server, pool, "writer", "14")
    try:
        _wait_ready(proc)
        server.stop()
        time.sleep(5)
        server.start()
        back_at = time.time()
        found = _result(proc)
    finally:
        if not (server.pgdata / "postmaster.pid").exists():
            server.start()
    after = [t for t in found["successes"] if t > back_at]
    assert after, found["errors"][-3:]
    resumed = after[0] - back_at
    kinds = sorted({e["class"] for e in found["errors"]})
    print(f"\nDjango (pool={pool}) resumed {resumed:.3f} s after the server was back; "
          f"errors: {kinds}")
    assert all(e["django"] for e in found["errors"])
    assert resumed < outage.MAX_DELAY_S * (1 + outage.JITTER) + 0.5
