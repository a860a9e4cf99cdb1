"""Red-team tests for what issue 27 built: per-service credentials, the connection
budget, the CLI's output files, tracing.

Each break found is a test marked ``xfail(strict=True)`` whose reason says what is
wrong; it turns into a failure (XPASS) the day the product is fixed, so the marker must
then go.  Tests without the marker are attacks that held.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from microservices.shared.database.config import load_settings, to_url
from microservices.shared.database.connection_manager import ConnectionManager
from microservices.shared.database.connections import budget
from microservices.shared.database.core import credentials
from microservices.shared.database.core.errors import ConfigError, EmbeddedServerError
from microservices.shared.database.relocation.meta import ensure_meta
from microservices.shared.database.server.data_home import relocated_dir
from microservices.shared.database.server.embedded import EmbeddedServer
from microservices.shared.database.topology import default_topology

from .clusters import Cluster, debian_bin_dir
from .conftest import SERVICE_PASSWORD, reachable_tempdir, service_env, unique_topology_text
from .test_cli import configured_env, run
from .test_credentials import _export, _service_env, clean_env, project  # noqa: F401

CLI = [sys.executable, "-m", "microservices.shared.database"]
NOBODY = 65534
PG15 = debian_bin_dir(15)


def _cli(args: list[str], env: dict[str, str], cwd: Path, **kw: Any
         ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=120, check=False, **kw)


def _credential_text(password: str = SERVICE_PASSWORD) -> str:
    return json.dumps({"edulink_db_credential": 1, "service": "user",
                       "connection": {"host": "127.0.0.1", "port": "5432",
                                      "dbname": "postgres", "user": "user_service_role",
                                      "password": password}})


# -- credentials export -o: what the output path may be -----------------------------------


def test_export_onto_a_device_node_does_not_replace_it(project: dict[str, Any]  # noqa: F811
                                                        ) -> None:
    if os.geteuid() != 0:
        pytest.skip("mknod of a character device needs root")
    user = f"user_{project['suffix']}"
    node = project["dir"] / "null"
    os.mknod(node, stat.S_IFCHR | 0o666, os.makedev(1, 3))  # what /dev/null is
    fifo = project["dir"] / "pipe"
    os.mkfifo(fifo)
    results = [_export(project, user, "json", str(node)),
               _export(project, user, "json", str(fifo))]
    kinds = [stat.S_ISCHR(node.lstat().st_mode), stat.S_ISFIFO(fifo.lstat().st_mode)]
    # Either refused with a one-line error, or written *through* (as the shell's > does);
    # never the special file swapped for a regular file with the password in it.
    assert kinds == [True, True], [r.stderr for r in results]


def test_export_to_a_directory_is_one_line(project: dict[str, Any]) -> None:  # noqa: F811
    user = f"user_{project['suffix']}"
    target = project["dir"] / "somedir"
    target.mkdir()
    result = _export(project, user, "json", str(target))
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) <= 3, result.stderr


def test_export_with_a_leftover_temp_file_is_one_line(project: dict[str, Any]  # noqa: F811
                                                      ) -> None:
    user = f"user_{project['suffix']}"
    out = project["dir"] / "user.json"
    # The name the export will use for its temp file, planted by the process itself
    # just before it runs the CLI (another user could plant it for any pid).
    script = ("import os, sys\n"
              "from pathlib import Path\n"
              "from microservices.shared.database.cli import main\n"
              f"out = Path({str(out)!r})\n"
              "(out.parent / f'.{out.name}.{os.getpid()}.tmp').touch()\n"
              f"sys.argv = ['edulink-db', 'credentials', 'export', {user!r}, '-o', str(out)]\n"
              "main()\n")
    result = subprocess.run([sys.executable, "-c", script], cwd=project["dir"] / "admin",
                            env=project["env"], capture_output=True, text=True, timeout=120,
                            check=False)
    assert result.returncode != 0 or out.exists(), result.stderr
    assert "Traceback" not in result.stderr, result.stderr[-2000:]


def test_django_export_carries_no_admin_root_certificate_path(
        project: dict[str, Any]) -> None:  # noqa: F811
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl CLI")
    user = f"user_{project['suffix']}"
    ca_dir = project["dir"] / "admin-only-ca"
    ca_dir.mkdir()
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout",
                    "ca.key", "-out", "ca.crt", "-days", "2", "-subj", "/CN=attack27"],
                   cwd=ca_dir, check=True, capture_output=True, timeout=60)
    project["env"]["DATABASE_SSLROOTCERT"] = str(ca_dir / "ca.crt")
    texts = {}
    for fmt in ("json", "env", "django"):
        target = project["dir"] / f"user-{fmt}.out"
        result = _export(project, user, fmt, str(target))
        assert result.returncode == 0, result.stderr
        texts[fmt] = target.read_text(encoding="utf-8")
    assert "verify-full" in texts["django"]  # the attack applies: TLS is on
    leaked = [fmt for fmt, text in texts.items() if "admin-only-ca" in text]
    assert leaked == [], leaked


def test_export_replacing_a_symlink_does_not_write_through_it(
        project: dict[str, Any]) -> None:  # noqa: F811
    """Held: a symlink at the output path is replaced, its target is left alone."""
    user = f"user_{project['suffix']}"
    victim = project["dir"] / "victim.txt"
    victim.write_text("precious\n", encoding="utf-8")
    victim.chmod(0o644)
    link = project["dir"] / "link.json"
    link.symlink_to(victim)
    result = _export(project, user, "json", str(link))
    assert result.returncode == 0, result.stderr
    assert victim.read_text(encoding="utf-8") == "precious\n"
    assert not link.is_symlink() and stat.S_IMODE(link.stat().st_mode) == 0o600


# -- the credential file a service host is given ------------------------------------------


def test_a_symlink_to_a_world_readable_credential_is_refused(tmp_path: Path) -> None:
    """Held: the mode checked is the target's (stat follows the link)."""
    real = tmp_path / "real.json"
    real.write_text(_credential_text(), encoding="utf-8")
    real.chmod(0o644)
    link = tmp_path / "link.json"
    link.symlink_to(real)
    with pytest.raises(ConfigError, match="readable or writable by other users"):
        credentials.load(link)


def test_a_credential_file_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("chown to another user needs root")
    path = tmp_path / "user.json"
    path.write_text(_credential_text(), encoding="utf-8")
    path.chmod(0o600)
    os.chown(path, NOBODY, NOBODY)
    with pytest.raises(ConfigError):
        credentials.load(path)


def test_a_process_with_only_its_credential_sees_no_other_password(
        project: dict[str, Any]) -> None:  # noqa: F811
    """Held: asking a credential-only process for another service fails, and neither the
    error nor the repr of its settings show a password."""
    suffix = project["suffix"]
    user, auth = f"user_{suffix}", f"auth_{suffix}"
    out = project["dir"] / "user.json"
    assert _export(project, user, "json", str(out)).returncode == 0
    stored = json.loads((Path(project["env"]["EDULINK_DB_HOME"]) / "secrets.json"
                         ).read_text(encoding="utf-8"))
    script = (
        "from microservices.shared.database.config import load_settings\n"
        "from microservices.shared.database.connection_manager import ConnectionManager\n"
        "s = load_settings(); print(repr(s)); m = ConnectionManager(s)\n"
        f"try:\n    m.get_connection({auth!r}).__enter__()\n"
        "except Exception as e:\n    print(type(e).__name__, e)\n")
    env = _service_env(out, EDULINK_DB_TOPOLOGY=project["env"]["EDULINK_DB_TOPOLOGY"])
    result = subprocess.run([sys.executable, "-c", script], env=env, cwd=project["dir"],
                            capture_output=True, text=True, timeout=60, check=False)
    text = result.stdout + result.stderr
    assert "cannot connect as service" in text, text
    for password in stored.values():
        assert password not in text
    assert to_url(project["admin"]) not in text


def test_a_credential_alone_cannot_run_ddl_or_read_what_is_not_exposed(
        project: dict[str, Any]) -> None:  # noqa: F811
    """Held: logged in with nothing but its exported credential, a service cannot create
    or change tables (its own schema included), read another service's non-exposed
    column, the audit trail, the move journal, server files or password hashes."""
    suffix, topo = project["suffix"], project["topology"]
    user, auth = topo.service(f"user_{suffix}"), topo.service(f"auth_{suffix}")
    out = project["dir"] / "user.json"
    assert _export(project, user.name, "json", str(out)).returncode == 0
    params: dict[str, Any] = dict(credentials.load(out).params)
    own, other = sql.Identifier(user.schema), sql.Identifier(auth.schema)
    items = sql.Identifier(auth.schema, "items")
    attempts: dict[str, sql.SQL | sql.Composed] = {
        "ddl own schema": sql.SQL("CREATE TABLE {}.evil (x int)").format(own),
        "ddl other schema": sql.SQL("CREATE TABLE {}.evil (x int)").format(other),
        "alter other table": sql.SQL("ALTER TABLE {} ADD COLUMN x int").format(items),
        "non-exposed column": sql.SQL("SELECT secret FROM {}").format(items),
        "audit trail": sql.SQL("SELECT * FROM {}").format(
            sql.Identifier(topo.shared.schema, topo.shared.audit_table)),
        "move journal": sql.SQL("SELECT * FROM edulink_db_meta.service_move"),
        "server file": sql.SQL("SELECT pg_read_file('/etc/passwd')"),
        "password hashes": sql.SQL("SELECT rolpassword FROM pg_authid"),
        "become owner": sql.SQL("SET ROLE {}").format(sql.Identifier(user.owner_role)),
    }
    with psycopg.connect(**project["admin"], autocommit=True) as conn:
        ensure_meta(conn, topo)  # the registry and the journal exist, as after a move
    allowed, refused = [], {}
    for what, statement in attempts.items():
        with psycopg.connect(**params, autocommit=True) as conn:
            try:
                conn.execute(statement)
                allowed.append(what)
            except (psycopg.errors.InsufficientPrivilege,
                    psycopg.errors.UndefinedTable) as exc:
                refused[what] = type(exc).__name__
    assert allowed == []
    assert set(refused.values()) == {"InsufficientPrivilege"}, refused
    with psycopg.connect(**params) as conn:  # what it is given still works
        rows = conn.execute(sql.SQL("SELECT name FROM {}").format(items)).fetchall()
    assert rows == [("one",)]


# -- the connection budget ----------------------------------------------------------------


def test_budget_flags_more_processes_than_the_limit(server: dict[str, Any],
                                                    tmp_path: Path) -> None:
    env = clean_env(DATABASE_URL=to_url(server), EDULINK_DB_HOME=str(tmp_path / "h"))
    result = _cli(["budget", "--processes", "1000", "--json"], env, tmp_path)
    data = json.loads(result.stdout)
    # 1000 pools of 1 exceed every derived limit: each role is a problem, exit 1.
    assert result.returncode == 1, data
    assert all(r["problem"] and "CONNECTION LIMIT" in r["problem"] for r in data["roles"]), data


@pytest.fixture(scope="module")
def small_server() -> Iterator[dict[str, Any]]:
    """A PostgreSQL 15 cluster with max_connections 20, provisioned by 'edulink-db up':
    usable 17, headroom 10, so every runtime role gets CONNECTION LIMIT 1."""
    if PG15 is None:
        pytest.skip("Debian PostgreSQL 15 not installed")
    root = reachable_tempdir("attack27-small-")
    with Cluster.create(root, "s", bin_dir=PG15, settings={"max_connections": 20}) as made:
        home = root / "project"
        home.mkdir()
        home.chmod(0o711)
        env = configured_env(made.params, home / ".edulink-db", default_topology())
        up = run(["up"], home, env)
        assert up.returncode == 0, up.stderr + up.stdout
        yield {"admin": made.params, "env": env, "dir": home}
    shutil.rmtree(root, ignore_errors=True)


def test_a_small_server_keeps_two_processes_within_the_limit(
        small_server: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    table = json.loads(run(["budget", "--json"], small_server["dir"],
                           small_server["env"]).stdout)
    user = next(r for r in table["roles"] if r["service"] == "user")
    assert user["limit"] == 1  # the attack applies
    service_env(monkeypatch, small_server["admin"],
                extra={"DATABASE_POOL_TIMEOUT": "3"})
    with ExitStack() as stack:
        problems: list[str] = []
        for _ in range(2):  # two processes of the user service
            manager = ConnectionManager(load_settings())
            stack.callback(manager.close_all)
            try:
                stack.enter_context(manager.get_connection("user"))
            except ConfigError as exc:  # a refusal naming the budget is fine
                problems.append(str(exc))
            except Exception as exc:  # what the second process gets
                pytest.fail(f"{type(exc).__name__}: {exc}"[:400])
    assert problems or user["problem"], "two processes held 2 connections of a limit of 1"


def test_health_is_not_ok_while_a_role_is_at_its_limit(
        small_server: dict[str, Any]) -> None:
    """Held: with the one connection of user_service_role taken, health degrades."""
    admin = small_server["admin"]
    role = {**admin, "user": "user_service_role", "password": SERVICE_PASSWORD}
    with psycopg.connect(**role) as held:
        held.execute("SELECT 1")
        result = run(["health", "--json"], small_server["dir"], small_server["env"])
        report = json.loads(result.stdout)
        with pytest.raises(psycopg.OperationalError, match="too many connections"):
            psycopg.connect(**role).close()
    check = report["checks"].get("connections_at_limit:user")
    assert check is not None and check["status"] != "ok", report["checks"]
    assert report["overall_status"] != "healthy"


def test_budget_flags_a_topology_limit_the_processes_cannot_share(
        server: dict[str, Any], tmp_path: Path) -> None:
    suffix = "a27lim"
    text = unique_topology_text(6, suffix).replace(
        f"[services.user_{suffix}]\n", f"[services.user_{suffix}]\nconnection_limit = 1\n")
    topo = tmp_path / "topology.toml"
    topo.write_text(text, encoding="utf-8")
    env = clean_env(DATABASE_URL=to_url(server), EDULINK_DB_HOME=str(tmp_path / "h"))
    result = _cli(["budget", "--json", "--topology", str(topo)], env, tmp_path)
    data = json.loads(result.stdout)
    user = next(r for r in data["roles"] if r["service"] == f"user_{suffix}")
    assert (user["limit"], user["limit_from"], user["processes"]) == (1, "topology", 2)
    assert user["total"] <= user["limit"] or user["problem"] or result.returncode == 1, user


def test_a_role_at_its_limit_is_named_as_such(small_server: dict[str, Any],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    admin = small_server["admin"]
    role = {**admin, "user": "user_service_role", "password": SERVICE_PASSWORD}
    service_env(monkeypatch, admin, extra={"DATABASE_POOL_TIMEOUT": "3"})
    manager = ConnectionManager(load_settings())
    try:
        with psycopg.connect(**role) as held:
            held.execute("SELECT 1")
            with pytest.raises(Exception) as caught:  # judged by its words below
                manager.get_connection("user").__enter__()
    finally:
        manager.close_all()
    message = str(caught.value)
    assert SERVICE_PASSWORD not in message
    assert "cannot reach" not in message, message
    assert "CONNECTION LIMIT" in message or "edulink-db budget" in message, message


def test_explicit_pool_over_the_limit_is_refused(server: dict[str, Any],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Held: an explicit pool that cannot fit is refused with the numbers."""
    service_env(monkeypatch, server, extra={"DATABASE_POOL_SIZE": "50"})
    settings = load_settings()
    svc = default_topology().service("user")
    with pytest.raises(budget.PoolDoesNotFit, match="CONNECTION LIMIT 31"):
        budget.pool_size(settings, svc, 31)


# -- the root data home (server/data_home.py) --------------------------------------------


@pytest.fixture
def private_base() -> Iterator[Path]:
    """A fresh 0700 root-owned directory (like /root); relocated clusters of homes under
    it are stopped and removed afterwards."""
    if os.geteuid() != 0:
        pytest.skip("the relocated data home exists only as root")
    base = Path(tempfile.mkdtemp(prefix="attack27-root-"))
    yield base
    started: list[EmbeddedServer] = []
    for home in base.glob("*/.edulink-db"):
        server = EmbeddedServer(home)
        with contextlib.suppress(Exception):
            server.stop()
        started.append(server)
    for server in started:
        # The served cluster (after a rename, not the one the home's path names) too.
        for directory in (relocated_dir(server.home), server.served_pgdata.parent):
            if directory.parent == relocated_dir(server.home).parent:
                shutil.rmtree(directory, ignore_errors=True)
    shutil.rmtree(base, ignore_errors=True)


def _start(home: Path) -> tuple[EmbeddedServer, str]:
    said: list[str] = []
    server = EmbeddedServer(home)
    server.start(progress=said.append)
    return server, " ".join(said)


def test_a_copied_root_project_does_not_share_the_original_cluster(
        private_base: Path) -> None:
    """cp -a keeps the pgdata link: the copy's 'up' refuses to serve (and its 'down' to
    touch) the original's cluster, and says how to get one of its own."""
    original, _ = _start(private_base / "proj" / ".edulink-db")
    original.stop()
    shutil.copytree(private_base / "proj", private_base / "proj-copy", symlinks=True)
    with pytest.raises(EmbeddedServerError, match="the cluster of a project at another "
                                                  "path") as info:
        _start(private_base / "proj-copy" / ".edulink-db")
    assert "rm " in str(info.value) and "\n" not in str(info.value)
    again, _ = _start(private_base / "proj" / ".edulink-db")  # the original is intact
    again.stop()


def test_a_renamed_root_project_says_how_to_take_its_cluster_along(
        private_base: Path) -> None:
    first, _ = _start(private_base / "proj" / ".edulink-db")
    first.stop()
    (private_base / "proj").rename(private_base / "renamed")
    home = private_base / "renamed" / ".edulink-db"
    with pytest.raises(EmbeddedServerError, match="mv ") as info:
        _start(home)
    assert not (relocated_dir(home) / "pgdata").exists()  # no empty cluster announced
    linked = Path(os.readlink(home / "pgdata"))
    shutil.move(str(linked.parent), str(relocated_dir(home)))  # what the message says
    (home / "pgdata").unlink()
    (home / "pgdata").symlink_to(relocated_dir(home) / "pgdata", target_is_directory=True)
    moved, said = _start(home)
    moved.stop()
    assert str(relocated_dir(home) / "pgdata") in said, (said, str(info.value))


# -- tracing (connections/tracing.py) ----------------------------------------------------


@pytest.fixture
def spans() -> Iterator[Any]:
    """The spans the process's tracer provider finishes during the test (the provider
    can be set only once per process: reused when another module set it)."""
    pytest.importorskip("opentelemetry.sdk")
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    memory = InMemorySpanExporter()
    processor = SimpleSpanProcessor(memory)
    provider.add_span_processor(processor)
    yield memory
    memory.clear()
    processor.shutdown()


def _exported(spans: Any) -> str:
    return json.dumps([{"name": s.name, "attributes": dict(s.attributes or {}),
                        "status": str(s.status.description)}
                       for s in spans.get_finished_spans()])


def test_spans_carry_no_user_id_and_no_rendered_literal(
        provisioned_db: dict[str, Any], manager_for: Any, spans: Any) -> None:
    """Held: the RLS user id (fast path and pipeline path), a sql.Literal rendered into
    a Composed, and the password never reach a span."""
    manager = manager_for(provisioned_db, DATABASE_TRACING_ENABLED="true")
    victim = "victim-user-4711"
    with manager.get_connection("user", user_id=victim) as conn:
        conn.execute("SELECT count(*) FROM user_schema.notes").fetchone()
        conn.execute("SELECT %s::text", ("x",), binary=True).fetchone()  # pipeline path
        conn.execute(sql.SQL("SELECT {}::text").format(sql.Literal("comp0sed-secret")))
    text = _exported(spans)
    assert "SELECT" in text
    assert victim not in text and "comp0sed-secret" not in text
    assert SERVICE_PASSWORD not in text


def test_a_literal_with_backslash_escapes_does_not_reach_a_span(
        provisioned_db: dict[str, Any], manager_for: Any, spans: Any) -> None:
    manager = manager_for(provisioned_db, DATABASE_TRACING_ENABLED="true")
    with manager.get_connection("user") as conn:
        conn.execute("SET standard_conforming_strings = off")
        row = conn.execute("SELECT 'A\\'s3cretword' -- '").fetchone()
        conn.execute("RESET standard_conforming_strings")
    assert row == ("A's3cretword",)  # the server read one literal
    assert "s3cretword" not in _exported(spans)


# -- -o of the other commands -------------------------------------------------------------


def test_sql_output_failing_half_way_keeps_the_old_file(tmp_path: Path) -> None:
    out = tmp_path / "setup.sql"
    old = "-- the previous, reviewed setup script\n" * 10
    out.write_text(old, encoding="utf-8")
    limit = 2048  # bytes: smaller than the generated script

    def small_files() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    env = clean_env(EDULINK_DB_HOME=str(tmp_path / "h"))
    result = _cli(["sql", "-o", str(out)], env, tmp_path, preexec_fn=small_files)
    assert result.returncode != 0, "the script fits the limit: the attack did not apply"
    assert "Traceback" not in result.stderr
    assert out.read_text(encoding="utf-8") == old
