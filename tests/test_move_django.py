"""Django services follow move-service: the engine django_settings emits
(microservices.shared.database.django_backend) consults the location registry."""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import django
import psycopg
import pytest

from microservices.shared.database.relocation import MoveContext, run_move
from microservices.shared.database.topology import default_topology

from .clusters import Cluster
from .conftest import SERVICE_PASSWORD, do_provision, reachable_tempdir
from .test_django import env_for, run, scenario

pytest.importorskip("django")

TOPOLOGY = default_topology()
SETTINGS = {"max_slot_wal_keep_size": "1GB"}


def _p(c: Cluster) -> dict[str, Any]:
    return {k: v for k, v in c.params.items() if k != "connect_timeout"}


@pytest.fixture(scope="module")
def moved() -> Iterator[tuple[Cluster, Cluster, str]]:
    """Django-migrated services on a; a profile; then 'user' moved to b."""
    root: Path = reachable_tempdir("edulink-movedj-")
    a = Cluster.create(root, "a", settings=SETTINGS)
    b = Cluster.create(root, "b", settings=SETTINGS)
    try:
        do_provision(_p(a), TOPOLOGY)
        for service in ("auth", "user", "application"):
            result = run(["-m", "django", "migrate", "--noinput"],
                         env_for(_p(a), service, migrate=True))
            assert result.returncode == 0, result.stderr
        do_provision(_p(a), TOPOLOGY)
        user_id = "6f1c2d1e-0000-4000-8000-000000000001"
        assert scenario(_p(a), "user", "user_creates_profile", user_id)["count"] == 1
        run_move(MoveContext(topology=TOPOLOGY, service=TOPOLOGY.service("user"), home=_p(a),
                             source=_p(a), target=_p(b),
                             passwords=lambda _s: SERVICE_PASSWORD,
                             migrator_passwords=lambda _s: SERVICE_PASSWORD))
        yield a, b, user_id
    finally:
        a.destroy()
        b.destroy()
        shutil.rmtree(root, ignore_errors=True)


def where(admin: dict[str, Any], service: str, user_id: str, **extra: str) -> dict[str, Any]:
    env = {**env_for(admin, service), **extra}
    result = run(["move_scenarios.py", "where", user_id], env)
    assert result.returncode == 0, result.stderr
    data: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return data


@pytest.mark.parametrize("pool", [
    "0", pytest.param("1", marks=pytest.mark.skipif(django.VERSION < (5, 1),
                                                    reason="Django's pool needs Django 5.1"))])
def test_django_service_follows_its_move(moved: tuple[Cluster, Cluster, str], pool: str
                                         ) -> None:
    """Configured for a (DATABASE_URL), the user service's Django connections go to b,
    as its runtime role, and find its data there; with Django's pool too."""
    a, b, user_id = moved
    found = where(_p(a), "user", user_id, EDULINK_DJANGO_POOL=pool)
    assert found["port"] == b.port
    assert found["role"] == "user_service_role"
    assert found["profiles"] == 1
    # A service that did not move stays on a.
    assert where(_p(a), "auth", "-")["port"] == a.port


def test_django_cross_service_alias_follows_the_move(moved: tuple[Cluster, Cluster, str]
                                                     ) -> None:
    """application reads user's schema through its 'user' alias: on b now, with the
    same exposure contract (reads granted, writes and other schemas refused)."""
    a, _, user_id = moved
    result = scenario(_p(a), "application", "application_works", user_id)
    assert result["read"] == "Grace" and result["read_alias"] == "user"
    assert "permission denied for table profiles_profile" in result["db_write"]
    assert "permission denied for schema notification_schema" in result["other_read"]


def test_django_connection_waits_out_a_freeze(moved: tuple[Cluster, Cluster, str]) -> None:
    """While the registry announces a freeze of 'user', a new Django connection of the
    user service is made only after the freeze ends (4 s: longer than the subprocess
    takes to start, so a backend that did not wait would connect before it)."""
    a, b, user_id = moved
    with psycopg.connect(**_p(a), autocommit=True) as conn:
        row = conn.execute(
            "UPDATE edulink_db_meta.service_location SET frozen_until = clock_timestamp()"
            " + interval '4 s' WHERE service = 'user' RETURNING frozen_until::text"
        ).fetchone()
    assert row is not None
    found = where(_p(a), "user", user_id)
    assert found["port"] == b.port
    with psycopg.connect(**_p(a)) as conn:
        later = conn.execute("SELECT %s::timestamptz >= %s::timestamptz",
                             [found["connected_at"], row[0]]).fetchone()
    assert later == (True,), (found["connected_at"], row[0])


@pytest.mark.parametrize("pool", [
    "0", pytest.param("1", marks=pytest.mark.skipif(django.VERSION < (5, 1),
                                                    reason="Django's pool needs Django 5.1"))])
def test_moved_connections_are_initialised_and_pooled_like_home(
        moved: tuple[Cluster, Cluster, str], pool: str) -> None:
    """Each connection Django gets after the move has the session time zone Django's
    init sets (UTC with USE_TZ), not the server's (Asia/Tokyo here); with pool=True,
    20 checkouts reuse the few sessions of a pool at the new location (psycopg_pool's
    min_size, 4), as at home; without, each makes its own."""
    a, b, _user_id = moved
    for c in (a, b):
        with c.connect() as conn:
            conn.execute("ALTER DATABASE postgres SET TimeZone = 'Asia/Tokyo'")
    sessions = {}
    try:
        for service, server in (("user", b), ("auth", a)):  # moved, and at home
            result = run(["move_scenarios.py", "initialised", "20"],
                         {**env_for(_p(a), service), "EDULINK_DJANGO_POOL": pool})
            assert result.returncode == 0, result.stderr
            found = json.loads(result.stdout.strip().splitlines()[-1])
            assert found["port"] == server.port
            assert found["zones"] == ["UTC"], (service, found)
            sessions[service] = found["sessions"]
        if pool == "1":  # at most the pool's min_size (4): how many exist yet varies
            assert 1 <= sessions["user"] <= 4 and 1 <= sessions["auth"] <= 4, sessions
        else:
            assert sessions == {"user": 20, "auth": 20}
    finally:
        for c in (a, b):
            with c.connect() as conn:
                conn.execute("ALTER DATABASE postgres RESET TimeZone")


class _CountingProxy:
    """A TCP forwarder in front of a real server that counts connections made to it."""

    def __init__(self, port: int) -> None:
        self.target = port
        self.accepted = 0
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            upstream = socket.create_connection(("127.0.0.1", self.target))
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(src, dst), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self.sock.close()


def test_a_failed_connection_is_tried_once_and_says_why(
        moved: tuple[Cluster, Cluster, str]) -> None:
    """A service at home whose login fails: one connection attempt, the server's own
    reason (server, role, cause) and no warning about the location registry."""
    a, _b, _user_id = moved
    proxy = _CountingProxy(a.port)
    try:
        env = {**env_for({**_p(a), "port": proxy.port}, "auth"),
               "EDULINK_DB_AUTH_PASSWORD": "not-the-password"}
        result = run(["move_scenarios.py", "where", "-"], env)
    finally:
        proxy.close()
    assert result.returncode != 0
    assert 'password authentication failed for user "auth_service_role"' in result.stderr
    assert f"port {proxy.port}" in result.stderr
    assert "registry" not in result.stderr
    assert "not-the-password" not in result.stderr
    assert proxy.accepted == 1, result.stderr
