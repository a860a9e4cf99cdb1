"""The edulink-db command, run as a user would run it (real subprocesses, real servers)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import psycopg
import pytest

from microservices.shared.database.config import to_url
from microservices.shared.database.topology import Topology, default_topology

from .conftest import SERVICE_PASSWORD, drop_roles, unique_topology_text

CLI = [sys.executable, "-m", "microservices.shared.database"]


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("DATABASE_", "EDULINK_", "SUPABASE_"))}
    env.update(extra)
    return env


def run(args: list[str], cwd: Path, env: dict[str, str], timeout: float = 180
        ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)


def configured_env(admin: dict[str, Any], home: Path, topology: Topology) -> dict[str, str]:
    """DATABASE_URL for *admin* plus the shared test password for every service."""
    env = clean_env(DATABASE_URL=to_url(admin), EDULINK_DB_HOME=str(home))
    for svc in topology.services:
        env[f"EDULINK_DB_{svc.name.upper()}_PASSWORD"] = SERVICE_PASSWORD
        env[f"EDULINK_DB_{svc.name.upper()}_MIGRATOR_PASSWORD"] = SERVICE_PASSWORD
    return env


def test_embedded_up_status_snippet_down(tmp_path: Path) -> None:
    """README command (1): a fresh project gets a provisioned, verified embedded database."""
    project = tmp_path / "project"
    project.mkdir()
    env = clean_env()
    try:
        first = run(["up"], project, env)
        assert first.returncode == 0, first.stderr + first.stdout
        assert "verify: OK" in first.stdout
        secrets = json.loads((project / ".edulink-db" / "secrets.json").read_text())
        for secret in secrets.values():
            assert secret not in first.stdout + first.stderr

        again = run(["up", "--json"], project, env)
        assert again.returncode == 0, again.stderr
        report = json.loads(again.stdout)
        assert report["embedded"] and report["verify"]["ok"]
        assert report["provision"]["changed"] is False

        # The seed's snippet, as written, from a subdirectory of the project.
        service_dir = project / "services" / "user"
        service_dir.mkdir(parents=True)
        snippet = textwrap.dedent("""
            from microservices.shared.database.connection_manager import connection_manager

            with connection_manager.get_connection('user_service') as conn:
                with conn.cursor() as cursor:
                    cursor.execute("SELECT current_user, current_setting('search_path')")
                    results = cursor.fetchall()

            health = connection_manager.health_check('user_service')
            print(f"Database health: {health}")
            print(results[0][0], results[0][1])
            connection_manager.close_all()
        """)
        out = subprocess.run([sys.executable, "-c", snippet], cwd=service_dir, env=env,
                             capture_output=True, text=True, timeout=60, check=False)
        assert out.returncode == 0, out.stderr
        assert "Database health: True" in out.stdout
        assert "user_service_role user_schema, shared_schema" in out.stdout

        status = run(["status", "--json"], project, env)
        assert status.returncode == 0, status.stderr
        # owner, runtime and migrator role per service, plus the shared schema's owner
        assert json.loads(status.stdout)["provisioned_roles"] == 19
        url = run(["url", "user"], project, env)
        assert url.returncode == 0 and "user_service_role:****@127.0.0.1" in url.stdout
    finally:
        down = run(["down"], project, env)
    assert down.returncode == 0, down.stderr
    assert "stopped" in down.stdout
    status = run(["status"], project, env)
    assert status.returncode == 3 and "not running" in status.stdout
    # Restart reuses the data directory: nothing to create.
    try:
        again = run(["up", "--json"], project, env)
        assert again.returncode == 0, again.stderr
        assert json.loads(again.stdout)["provision"]["created_roles"] == []
    finally:
        run(["down"], project, env)


def test_configured_server_up_then_hand_grant_fails_verify(
    fresh_db: dict[str, Any], tmp_path: Path
) -> None:
    topology = default_topology()
    env = configured_env(fresh_db, tmp_path / "home", topology)
    up = run(["up"], tmp_path, env)
    assert up.returncode == 0, up.stderr + up.stdout
    assert "(embedded)" not in up.stdout
    assert str(fresh_db.get("password")) not in up.stdout + up.stderr
    assert SERVICE_PASSWORD not in up.stdout + up.stderr
    with psycopg.connect(**fresh_db, autocommit=True) as conn:
        conn.execute("GRANT INSERT ON ALL TABLES IN SCHEMA shared_schema TO auth_service_role")
        conn.execute("GRANT USAGE ON SCHEMA user_schema TO institution_service_role")
    verify = run(["verify"], tmp_path, env)
    assert verify.returncode == 1
    assert "institution_service_role" in verify.stdout and "USAGE" in verify.stdout
    as_json = json.loads(run(["verify", "--json"], tmp_path, env).stdout)
    assert {"role": "institution_service_role", "schema": "user_schema"}.items() <= \
        as_json["problems"][0].items() or any(
            p["role"] == "institution_service_role" for p in as_json["problems"])
    down = run(["down"], tmp_path, env)
    assert down.returncode == 2 and "never stops a server it did not start" in down.stderr


def test_up_as_createrole_only_admin(
    createrole_admin: dict[str, Any], server: dict[str, Any], tmp_path: Path
) -> None:
    """Done-when: up against a CREATEROLE-only admin succeeds, verify passes, and one extra
    privilege granted by hand makes verify fail and name the role."""
    topo_file = tmp_path / "topology.toml"
    topo_file.write_text(unique_topology_text(services=7))
    from microservices.shared.database.topology import load_topology

    topology = load_topology(topo_file)
    env = configured_env(createrole_admin, tmp_path / "home", topology)
    env["EDULINK_DB_TOPOLOGY"] = str(topo_file)
    try:
        up = run(["up"], tmp_path, env)
        assert up.returncode == 0, up.stderr + up.stdout
        assert run(["verify"], tmp_path, env).returncode == 0
        victim = topology.services[2]
        with psycopg.connect(**createrole_admin, autocommit=True) as conn:
            conn.execute(f"GRANT USAGE ON SCHEMA {topology.services[0].schema} "
                         f"TO {victim.runtime_role}")
        verify = run(["verify"], tmp_path, env)
        assert verify.returncode == 1
        assert victim.runtime_role in verify.stdout
    finally:
        drop_roles(server, topology.runtime_roles + topology.owner_roles
                   + topology.migrator_roles)


@pytest.mark.parametrize(
    ("args", "topology_text", "message"),
    [
        (["up"], '[services.user]\nschema = "user; DROP SCHEMA x"\n', "Invalid schema"),
        (["provision"], '[services.a]\nreads = ["nobody"]\n', "'nobody' is not a service"),
        (["verify"], '[services.a]\nrole = "x"\n', "unknown key(s) 'role'"),
        (["sql"], '[services.pg_a]\n', "'pg_'"),
    ],
)
def test_bad_topology_is_rejected_before_any_connection(
    tmp_path: Path, args: list[str], topology_text: str, message: str
) -> None:
    topo = tmp_path / "bad.toml"
    topo.write_text(topology_text)
    # Port 1 is closed: reaching the database would be a different error.
    env = clean_env(DATABASE_URL="postgresql://postgres:hunter2@127.0.0.1:1/postgres")
    result = run([*args, "--topology", str(topo)], tmp_path, env)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "hunter2" not in result.stderr + result.stdout


@pytest.mark.parametrize(
    ("args", "message", "code"),
    [
        (["sql", "--dialect", "mysql"], "Unknown dialect", 2),
        (["url", "billing"], "Unknown service 'billing'", 2),
        (["up", "--topology", "/nonexistent.toml"], "does not exist", 2),
        (["verify"], "Cannot connect to postgresql://postgres:****@127.0.0.1:1/postgres", 3),
    ],
)
def test_bad_arguments_and_unreachable_server(
    tmp_path: Path, args: list[str], message: str, code: int
) -> None:
    env = clean_env(DATABASE_URL="postgresql://postgres:hunter2@127.0.0.1:1/postgres")
    result = run(args, tmp_path, env)
    assert result.returncode == code, result.stderr
    assert message in result.stderr
    assert "hunter2" not in result.stderr + result.stdout


def test_help_teaches() -> None:
    result = subprocess.run([*CLI, "--help"], capture_output=True, text=True, check=False,
                            env=clean_env(COLUMNS="120"))
    assert result.returncode == 0
    for command in ("up", "down", "status", "provision", "verify", "sql", "url"):
        assert command in result.stdout
    assert "Exit codes" in result.stdout


def test_concurrent_up_on_a_fresh_project(tmp_path: Path) -> None:
    """Several pods starting at once is the normal case: all succeed, roles made once."""
    env = clean_env()
    procs = [subprocess.Popen([*CLI, "up", "--json"], cwd=tmp_path, env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for _ in range(3)]
    try:
        # communicate() before the exit code: waiting first could block on a full pipe.
        outputs = [p.communicate(timeout=180) for p in procs]
        for proc, (_stdout, stderr) in zip(procs, outputs, strict=True):
            assert proc.returncode == 0, stderr
        reports = [json.loads(stdout) for stdout, _stderr in outputs]
        assert all(r["verify"]["ok"] for r in reports)
        created = sorted(len(r["provision"]["created_roles"]) for r in reports)
        assert created == [0, 0, 19]  # 6 runtime, 6 migrator, 6 + 1 owner roles
    finally:
        run(["down"], tmp_path, env)


def test_up_recovers_after_the_server_was_killed(tmp_path: Path) -> None:
    import signal

    env = clean_env()
    try:
        assert run(["up"], tmp_path, env).returncode == 0
        pid = int((tmp_path / ".edulink-db" / "pgdata" / "postmaster.pid").read_text().split()[0])
        os.kill(pid, signal.SIGKILL)
        status = run(["status"], tmp_path, env)
        assert status.returncode == 3
        again = run(["up", "--json"], tmp_path, env)
        assert again.returncode == 0, again.stderr
        assert json.loads(again.stdout)["verify"]["ok"]
    finally:
        run(["down"], tmp_path, env)


# What the test runs around the seed's snippets (each of which runs verbatim, in order, in
# one process, as a service would run them): `datetime` for the seed's health_check(), a
# marker before each snippet so its output can be checked on its own, and afterwards a
# call of health_check() and a print of what the silent snippets produced.
SEED_PRELUDE = "from datetime import datetime\n"
SEED_EPILOGUE = """
print("### after")
try:
    print(health_check())
except Exception as exc:
    print(f"health_check(): {type(exc).__name__}: {exc}")
print(sorted(DATABASES), len(DATABASE_ROUTERS), len(results), user_data, institution,
      can_access, schema_backup.backup_id.split("_")[0], success)
connection_manager.close_all()
"""

# What each snippet prints, in seed order: one entry per line printed, which starts so.
SEED_OUTPUT: list[tuple[str, ...]] = [
    (),                                                   # Django settings
    ("Database health: True",),                           # connection management
    (),                                                   # cross-schema access
    ("Applied migrations: 1",),                           # migrations
    ("Overall status: healthy", "Average response time: "),  # monitoring
    ("Backup created: full_", "Total backups: 2"),        # backup and recovery
    ("Active connections: 0",),                           # troubleshooting: pool
    (),                                                   # troubleshooting: permissions
    (),                                                   # troubleshooting: migrations
    (),                                                   # logging
    (),                                                   # health_check() definition
]


def test_the_checked_in_seed_snippets_equal_the_seed() -> None:
    from .seed_snippets import COPY, SEED, extract_python_blocks

    if not SEED.is_file():
        pytest.skip(f"the seed is not at {SEED}; the checked-in copy is used as is")
    seed = extract_python_blocks(SEED.read_text(encoding="utf-8"))
    assert extract_python_blocks(COPY.read_text(encoding="utf-8")) == seed
    assert len(seed) == len(SEED_OUTPUT)


def test_seed_snippets_run_as_written_after_init_and_up(tmp_path: Path) -> None:
    """A new user's path: 'edulink-db init', 'edulink-db up', then every Python line of
    the seed's snippets, verbatim, from the project directory."""
    from .seed_snippets import seed_snippets

    pytest.importorskip("django")
    snippets = seed_snippets()
    assert len(snippets) == len(SEED_OUTPUT)
    script = SEED_PRELUDE + "".join(f"print('### snippet {i}', flush=True)\n{code}"
                                    for i, code in enumerate(snippets)) + SEED_EPILOGUE
    env = clean_env()
    try:
        init = run(["init"], tmp_path, env)
        assert init.returncode == 0, init.stderr
        up = run(["up"], tmp_path, env)
        assert up.returncode == 0, up.stderr + up.stdout
        assert "migrations: " + str(tmp_path / "migrations") in up.stderr
        assert "migrate: 7 migration(s) applied" in up.stdout
        # A fresh project is healthy, and its status says how to take the first backup.
        health = run(["health"], tmp_path, env)
        assert health.returncode == 0 and "overall: healthy" in health.stdout, health.stdout
        status = run(["status"], tmp_path, env)
        assert status.returncode == 0, status.stdout
        assert "no backups yet: take the first with 'edulink-db backup auto'" in status.stdout
        assert "backups verify" not in status.stdout
        result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env,
                                capture_output=True, text=True, timeout=180, check=False)
        assert result.returncode == 0, result.stderr
        sections = result.stdout.split("### ")[1:]
        assert [s.split("\n", 1)[0] for s in sections] == [
            *(f"snippet {i}" for i in range(len(snippets))), "after"]
        for i, expected in enumerate(SEED_OUTPUT):
            printed = sections[i].split("\n")[1:-1]
            assert len(printed) == len(expected), (i, printed)
            for line, start in zip(printed, expected, strict=True):
                assert line.startswith(start), (i, line)
        average = float(sections[4].split("Average response time: ")[1].split("s\n")[0])
        assert average > 0
        after = sections[-1].split("\n")[1:-1]
        # health_check() names a placeholder service: a clear error, not a traceback.
        assert after[0].startswith("health_check(): UnknownServiceError: ")
        assert "your_service" in after[0]
        assert after[1] == "['auth', 'default', 'institution'] 1 0 None None True schema False"
    finally:
        run(["down"], tmp_path, env)


def test_backup_cli_round_trip(fresh_db: dict[str, Any], tmp_path: Path) -> None:
    from .conftest import do_provision

    do_provision(fresh_db, default_topology())
    env = configured_env(fresh_db, tmp_path / "home", default_topology())
    made = run(["backup", "schema", "user_schema", "--json"], tmp_path, env)
    assert made.returncode == 0, made.stderr
    backup_id = json.loads(made.stdout)["backup_id"]
    assert run(["backups", "verify", backup_id, "--deep"], tmp_path, env).returncode == 0
    listed = json.loads(run(["backups", "list", "--json"], tmp_path, env).stdout)
    assert [b["backup_id"] for b in listed] == [backup_id]
    restored = run(["restore", backup_id, "--json"], tmp_path, env)
    assert restored.returncode == 0, restored.stderr
    assert json.loads(restored.stdout)["safety_backup"].startswith("prerestore_")
    archive = tmp_path / "home" / "backups" / backup_id / f"{backup_id}.dump"
    archive.write_bytes(archive.read_bytes()[:-10])
    broken = run(["backups", "verify", backup_id], tmp_path, env)
    assert broken.returncode == 1 and "truncated" in broken.stderr
    assert run(["restore", backup_id], tmp_path, env).returncode == 3
    assert run(["backup", "schema", "no_such_schema"], tmp_path, env).returncode == 2
    assert run(["restore", "full_20240115_143022"], tmp_path, env).returncode == 3
    assert run(["backup", "full", "--jobs", "2"], tmp_path, env).returncode == 2
