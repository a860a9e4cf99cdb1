"""One credential per service (issue 27 item 2): ``edulink-db credentials export``, a
service process that holds only its own credential, and rotation of one service."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import stat
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from microservices.shared.database.config import load_settings, to_url
from microservices.shared.database.connection_manager import ConnectionManager
from microservices.shared.database.core.errors import ConfigError, ServiceAuthenticationError
from microservices.shared.database.lifecycle import run_provision
from microservices.shared.database.relocation.meta import ensure_meta
from microservices.shared.database.topology import parse_topology

from .conftest import _create_database, _drop_database, drop_roles, unique_topology_text

CLI = [sys.executable, "-m", "microservices.shared.database"]


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("DATABASE_", "EDULINK_", "SUPABASE_"))}
    env.update(extra)
    return env


@pytest.fixture
def project(server: dict[str, Any], tmp_path: Path) -> Iterator[dict[str, Any]]:
    """A database provisioned with a six-service topology of unique role names whose
    passwords are generated (each its own) into an admin-side secrets store; ``auth``
    exposes ``items(id, name)`` to ``user``, which has an RLS table ``notes``."""
    suffix = secrets.token_hex(3)
    text = unique_topology_text(6, suffix) + (
        f"\n[services.auth_{suffix}.exposes]\nitems = [\"id\", \"name\"]\n")
    topo_file = tmp_path / "topology.toml"
    topo_file.write_text(text, encoding="utf-8")
    topology = parse_topology(text)
    db = _create_database(server)
    admin = {**server, "dbname": db}
    admin_dir = tmp_path / "admin"
    admin_dir.mkdir()
    env = clean_env(DATABASE_URL=to_url(admin), EDULINK_DB_HOME=str(admin_dir / ".edulink-db"),
                    EDULINK_DB_TOPOLOGY=str(topo_file))
    auth, user = topology.service(f"auth_{suffix}"), topology.service(f"user_{suffix}")
    try:
        settings = _admin_settings(env)
        run_provision(settings)
        with psycopg.connect(**admin, autocommit=True) as conn:
            conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(auth.owner_role)))
            conn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, name text, secret text)"
                                 ).format(sql.Identifier(auth.schema, "items")))
            conn.execute(sql.SQL("INSERT INTO {} VALUES (1, 'one', 's')").format(
                sql.Identifier(auth.schema, "items")))
            conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(user.owner_role)))
            notes = sql.Identifier(user.schema, "notes")
            conn.execute(sql.SQL("CREATE TABLE {} (owner_id text, body text)").format(notes))
            conn.execute(sql.SQL("ALTER TABLE {} ENABLE ROW LEVEL SECURITY").format(notes))
            conn.execute(sql.SQL("CREATE POLICY own ON {} USING (owner_id = {}())").format(
                notes, sql.Identifier(topology.shared.schema, "current_user_id")))
            conn.execute(sql.SQL("INSERT INTO {} VALUES ('u1', 'a'), ('u1', 'b'), ('u2', 'c')"
                                 ).format(notes))
            conn.execute("RESET ROLE")
        run_provision(settings)  # grants the exposed columns of the table created since
        yield {"admin": admin, "env": env, "topology": topology, "suffix": suffix,
               "dir": tmp_path, "settings": settings}
    finally:
        _drop_database(server, db)
        drop_roles(server, topology.runtime_roles + topology.owner_roles
                   + topology.migrator_roles)


def _admin_settings(env: dict[str, str]) -> Any:
    old = dict(os.environ)
    try:
        os.environ.clear()
        os.environ.update(env)
        return load_settings()
    finally:
        os.environ.clear()
        os.environ.update(old)


def _stored_passwords(project: dict[str, Any]) -> dict[str, str]:
    path = Path(project["env"]["EDULINK_DB_HOME"]) / "secrets.json"
    data: dict[str, str] = json.loads(path.read_text(encoding="utf-8"))
    return data


def _export(project: dict[str, Any], service: str, fmt: str, output: str
            ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, "credentials", "export", service, "--format", fmt, "-o", output],
        cwd=project["dir"] / "admin", env=project["env"], capture_output=True, text=True,
        timeout=120, check=False)


def _service_env(credential: Path, **extra: str) -> dict[str, str]:
    """A service host's environment: its credential file and nothing of the admin's."""
    return clean_env(EDULINK_DB_CREDENTIALS_FILE=str(credential), **extra)


def test_export_writes_one_service_only_mode_0600_nothing_on_stdout(
        project: dict[str, Any]) -> None:
    user = f"user_{project['suffix']}"
    stored = _stored_passwords(project)
    mine = stored[f"service:{user}_service_role"]
    others = [v for k, v in stored.items() if k != f"service:{user}_service_role"]
    assert len(others) >= 11  # five other runtime roles, six migrators
    admin_password = str(project["admin"].get("password", "")) or None
    for fmt in ("json", "env", "k8s-secret", "django"):
        target = project["dir"] / f"user.{fmt}"
        result = _export(project, user, fmt, str(target))
        assert result.returncode == 0, result.stderr
        assert result.stdout == ""
        assert stat.S_IMODE(target.stat().st_mode) == 0o600
        text = target.read_text(encoding="utf-8")
        assert mine in text, fmt
        assert not any(p in text for p in others), fmt
        if admin_password:
            assert admin_password not in text
        assert mine not in result.stderr
    printed = _export(project, user, "env", "-")
    assert printed.returncode == 0 and mine in printed.stdout
    assert f"EDULINK_DB_{user.upper()}_URL=postgresql://{user}_service_role:" in printed.stdout
    missing = subprocess.run([*CLI, "credentials", "export", user], cwd=project["dir"],
                             env=project["env"], capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2 and missing.stdout == ""
    assert "-o FILE" in missing.stderr
    help_text = subprocess.run([*CLI, "credentials", "export", "--help"], env=project["env"],
                               capture_output=True, text=True, timeout=60).stdout
    assert "Example:" in help_text and "edulink-db credentials export" in help_text


SERVICE_SCRIPT = textwrap.dedent("""
    import json, sys
    import psycopg
    from prometheus_client import generate_latest
    from microservices.shared.database.config import admin_conninfo, load_settings
    from microservices.shared.database.connection_manager import connection_manager as cm
    from microservices.shared.database.django_settings import (
        configure_cross_service_databases, configure_service_database)
    from microservices.shared.database.core.errors import EdulinkDBError

    user, auth, schema, auth_schema = sys.argv[1:5]
    out = {}
    with cm.get_connection(user) as conn:
        out["role"] = conn.execute("SELECT current_user").fetchone()[0]
        out["db"] = conn.execute("SELECT current_database()").fetchone()[0]
    if sys.argv[5:] == ["where-only"]:
        print(json.dumps(out))
        sys.exit(0)
    with cm.get_connection(user, user_id="u1") as conn:
        out["rls"] = conn.execute(f"SELECT count(*) FROM {schema}.notes").fetchone()[0]
    with cm.get_reader_connection(user, auth) as conn:
        out["cross"] = conn.execute(f"SELECT name FROM {auth_schema}.items").fetchall()
        try:
            conn.execute(f"SELECT secret FROM {auth_schema}.items")
            out["secret"] = "read"
        except psycopg.errors.InsufficientPrivilege:
            out["secret"] = "refused"
    out["metrics"] = f'service="{user}"' in generate_latest().decode()
    out["django"] = sorted(configure_service_database(user)) + sorted(
        configure_cross_service_databases(user, [auth]))
    for name, attempt in (("other", lambda: cm.get_connection(auth).__enter__()),
                          ("admin", lambda: admin_conninfo(load_settings()))):
        try:
            attempt()
            out[name] = "connected"
        except EdulinkDBError as exc:
            out[name] = str(exc)
    print(json.dumps(out))
""")


def _run_service(project: dict[str, Any], env: dict[str, str], *flags: str
                 ) -> dict[str, Any]:
    s, topo = project["suffix"], project["topology"]
    host_dir = project["dir"] / "service-host"
    host_dir.mkdir(exist_ok=True)
    # The topology ships with the code; it holds no secret.
    env = {**env, "EDULINK_DB_HOME": str(host_dir / ".edulink-db"),
           "EDULINK_DB_TOPOLOGY": project["env"]["EDULINK_DB_TOPOLOGY"]}
    result = subprocess.run(
        [sys.executable, "-c", SERVICE_SCRIPT, f"user_{s}", f"auth_{s}",
         topo.service(f"user_{s}").schema, topo.service(f"auth_{s}").schema, *flags],
        cwd=host_dir, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def test_a_process_with_only_its_own_credential_does_its_job_and_no_more(
        project: dict[str, Any], server: dict[str, Any]) -> None:
    s, topo = project["suffix"], project["topology"]
    user = topo.service(f"user_{s}")
    credential = project["dir"] / "user.json"
    assert _export(project, user.name, "json", str(credential)).returncode == 0
    # The service was moved (a registry row on its home server, as move-service leaves
    # it): the process must find that through its own pool and follow it.
    moved_db = _create_database(server)
    try:
        moved_admin = {**project["admin"], "dbname": moved_db}
        run_provision(_admin_settings({**project["env"], "DATABASE_URL": to_url(moved_admin)}))
        with psycopg.connect(**project["admin"], autocommit=True) as conn:
            ensure_meta(conn, topo)
        for fmt, env in (("json", _service_env(credential)),
                         ("env", None), ("json+moved", _service_env(credential))):
            if fmt == "env":
                printed = _export(project, user.name, "env", "-").stdout
                env = clean_env(**dict(line.split("=", 1) for line in printed.splitlines()
                                       if line and not line.startswith("#")))
            if fmt == "json+moved":
                with psycopg.connect(**project["admin"], autocommit=True) as conn:
                    conn.execute(
                        "INSERT INTO edulink_db_meta.service_location (service, location, "
                        "epoch) VALUES (%s, %s, 1)",
                        [user.name, f"host={server['host']} port={server['port']} "
                                    f"dbname={moved_db}"])
            assert env is not None
            got = _run_service(project, env, *(["where-only"] if "moved" in fmt else []))
            assert got["role"] == user.runtime_role, fmt
            assert got["db"] == (moved_db if fmt == "json+moved" else project["admin"]["dbname"])
            if fmt == "json+moved":
                continue  # the moved database has no data of its own
            assert got["rls"] == 2, fmt
            assert got["cross"] == [["one"]] and got["secret"] == "refused", fmt
            assert got["metrics"] is True, fmt
            assert got["django"] == ["default", f"auth_{s}"], fmt
            assert "cannot connect as service" in got["other"], fmt
            assert got["admin"] != "connected" and "DATABASE_URL" in got["admin"], fmt
    finally:
        _drop_database(server, moved_db)
    # Nor can the credential log in as another service: its password is the user's.
    params = json.loads(credential.read_text())["connection"]
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(**{**params, "user": topo.service(f"auth_{s}").runtime_role}).close()


def test_bad_credential_files_are_refused_with_one_line(
        project: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    s = project["suffix"]
    credential = project["dir"] / "user.json"
    assert _export(project, f"user_{s}", "json", str(credential)).returncode == 0
    for key in list(os.environ):
        if key.startswith(("DATABASE_", "EDULINK_")):
            monkeypatch.delenv(key)
    monkeypatch.setenv("EDULINK_DB_TOPOLOGY", project["env"]["EDULINK_DB_TOPOLOGY"])
    monkeypatch.setenv("EDULINK_DB_CREDENTIALS_FILE", str(credential))
    manager = ConnectionManager(load_settings())
    credential.chmod(0o640)
    with pytest.raises(ConfigError, match=f"chmod 600 {credential}") as exc:
        manager.get_connection(f"user_{s}")
    assert "\n" not in str(exc.value)
    credential.chmod(0o600)
    monkeypatch.setenv("EDULINK_DB_SERVICE", f"auth_{s}")
    with pytest.raises(ConfigError, match=f"EDULINK_DB_CREDENTIALS_FILE={credential} holds "
                                          f"the credential of service 'user_{s}'") as exc:
        ConnectionManager(load_settings()).get_connection(f"user_{s}")
    assert "\n" not in str(exc.value)
    data = json.loads(credential.read_text())
    data["connection"]["password"] = "not-the-password"
    credential.write_text(json.dumps(data))
    monkeypatch.delenv("EDULINK_DB_SERVICE")
    with pytest.raises(ServiceAuthenticationError,
                       match=f"Check EDULINK_DB_CREDENTIALS_FILE={credential}") as auth:
        ConnectionManager(load_settings()).get_connection(f"user_{s}").__enter__()
    assert "not-the-password" not in str(auth.value)
    (project["dir"] / "bad.json").write_text('{"service": "x"}')
    (project["dir"] / "bad.json").chmod(0o600)
    monkeypatch.setenv("EDULINK_DB_CREDENTIALS_FILE", str(project["dir"] / "bad.json"))
    with pytest.raises(ConfigError, match="is not an edulink-db credential"):
        ConnectionManager(load_settings()).get_connection(f"user_{s}")


def test_rotating_one_service_leaves_the_others_and_running_pools_follow(
        project: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    s, topo = project["suffix"], project["topology"]
    user = topo.service(f"user_{s}")
    credential = project["dir"] / "user.json"
    assert _export(project, user.name, "json", str(credential)).returncode == 0
    before = _stored_passwords(project)
    for key in list(os.environ):
        if key.startswith(("DATABASE_", "EDULINK_")):
            monkeypatch.delenv(key)
    monkeypatch.setenv("EDULINK_DB_TOPOLOGY", project["env"]["EDULINK_DB_TOPOLOGY"])
    monkeypatch.setenv("EDULINK_DB_CREDENTIALS_FILE", str(credential))
    monkeypatch.setenv(f"EDULINK_DB_{user.name.upper()}_POOL_SIZE", "1")
    monkeypatch.setenv(f"EDULINK_DB_{user.name.upper()}_POOL_TIMEOUT", "5")
    manager = ConnectionManager(load_settings())

    async def check() -> None:
        async with manager.get_async_connection(user.name) as aconn:
            cur = await aconn.execute("SELECT current_user")
            assert await cur.fetchone() == (user.runtime_role,)

    async def scenario() -> None:
        with manager.get_connection(user.name) as conn:
            conn.execute("SELECT 1")
        await check()
        rotate = subprocess.run([*CLI, "provision", "--rotate-passwords", user.name],
                                cwd=project["dir"] / "admin", env=project["env"],
                                capture_output=True, text=True, timeout=180)
        assert rotate.returncode == 0, rotate.stderr
        after = _stored_passwords(project)
        changed = sorted(k for k in after if after[k] != before.get(k))
        assert changed == [f"service:{user.migrator_role}", f"service:{user.runtime_role}"]
        for svc in topo.services:  # the other five still log in with their passwords
            if svc is not user:
                params = {**project["admin"], "user": svc.runtime_role,
                          "password": after[f"service:{svc.runtime_role}"]}
                psycopg.connect(**params).close()
        assert _export(project, user.name, "json", str(credential)).returncode == 0
        # The pools' connections go away (a restart, max_lifetime): their replacements
        # must log in with the new password, read from the re-exported file.  The timeout
        # makes pg_terminate_backend wait for the backends to exit, so that no checkout
        # gets a connection whose backend is still on its way out.
        with psycopg.connect(**project["admin"], autocommit=True) as conn:
            conn.execute("SELECT pg_terminate_backend(pid, 5000)"
                         " FROM pg_stat_activity"
                         " WHERE usename = %s", [user.runtime_role])
        for _ in range(3):
            with manager.get_connection(user.name) as conn:
                assert conn.execute("SELECT current_user").fetchone() == (user.runtime_role,)
            await check()

    async def run() -> None:
        try:
            await scenario()
        finally:
            await manager.aclose_all()

    asyncio.run(run())


def test_pools_on_the_secrets_store_follow_a_rotation_too(
        project: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """Development: the password comes from the admin side's secrets store."""
    user = project["topology"].service(f"user_{project['suffix']}")
    for key in list(os.environ):
        if key.startswith(("DATABASE_", "EDULINK_")):
            monkeypatch.delenv(key)
    for key, value in project["env"].items():
        if key.startswith(("DATABASE_", "EDULINK_")):
            monkeypatch.setenv(key, value)
    monkeypatch.setenv(f"EDULINK_DB_{user.name.upper()}_POOL_SIZE", "1")
    monkeypatch.setenv(f"EDULINK_DB_{user.name.upper()}_POOL_TIMEOUT", "5")
    settings = load_settings()
    manager = ConnectionManager(settings)
    try:
        with manager.get_connection(user.name) as conn:
            conn.execute("SELECT 1")
        run_provision(settings, rotate=[user.name])
        with psycopg.connect(**project["admin"], autocommit=True) as conn:
            conn.execute("SELECT pg_terminate_backend(pid, 5000)"
                         " FROM pg_stat_activity"
                         " WHERE usename = %s", [user.runtime_role])
        with manager.get_connection(user.name) as conn:
            assert conn.execute("SELECT current_user").fetchone() == (user.runtime_role,)
    finally:
        manager.close_all()


DJANGO_SCRIPT = textwrap.dedent("""
    import sys
    import django
    from django.conf import settings
    from microservices.shared.database.django_settings import configure_service_database

    settings.configure(DATABASES=configure_service_database(sys.argv[1]), INSTALLED_APPS=[],
                       USE_TZ=True)
    django.setup()
    from django.db import connection

    def who():
        connection.close()  # each request of a CONN_MAX_AGE=0 site connects anew
        with connection.cursor() as cursor:
            cursor.execute("SELECT current_user")
            return cursor.fetchone()[0]

    print(who(), flush=True)
    sys.stdin.readline()  # the password is rotated and the file exported again
    print(who(), flush=True)
""")


def test_django_connections_follow_a_rotation_of_the_credential_file(
        project: dict[str, Any]) -> None:
    pytest.importorskip("django")
    user = project["topology"].service(f"user_{project['suffix']}")
    credential = project["dir"] / "user.json"
    assert _export(project, user.name, "json", str(credential)).returncode == 0
    host_dir = project["dir"] / "django-host"
    host_dir.mkdir()
    env = {**_service_env(credential), "EDULINK_DB_TOPOLOGY": project["env"]["EDULINK_DB_TOPOLOGY"],
           "EDULINK_DB_HOME": str(host_dir / ".edulink-db")}
    proc = subprocess.Popen([sys.executable, "-c", DJANGO_SCRIPT, user.name], cwd=host_dir,
                            env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdin is not None
        assert proc.stdout.readline().strip() == user.runtime_role
        rotate = subprocess.run([*CLI, "provision", "--rotate-passwords", user.name],
                                cwd=project["dir"] / "admin", env=project["env"],
                                capture_output=True, text=True, timeout=180)
        assert rotate.returncode == 0, rotate.stderr
        assert _export(project, user.name, "json", str(credential)).returncode == 0
        out, err = proc.communicate("\n", timeout=60)
        assert proc.returncode == 0, err
        assert out.strip() == user.runtime_role
    finally:
        proc.kill()
