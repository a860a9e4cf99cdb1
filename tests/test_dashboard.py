"""The dashboard: access control, headers, read-only, value-free pages, locks.

The WSGI app is called in-process with real WSGI environs against a real provisioned
database; nothing about the database is mocked.
"""

from __future__ import annotations

import io
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any
from wsgiref.util import setup_testing_defaults

import psycopg
import pytest

from microservices.shared.database.core.errors import ConfigError
from microservices.shared.database.monitoring.dashboard import (
    DashboardApp,
    Sampler,
    make_app,
    serve,
)
from microservices.shared.database.monitoring.dashboard.app import CSP
from microservices.shared.database.monitoring.health import DatabaseStats

from .conftest import SERVICE_PASSWORD, service_env, service_params

TOKEN = "t0k-" + "A1b2C3d4E5f6G7h8J9k0"
LITERAL_TEXT = "zq-literal-8841-pii"
LITERAL_NUMBER = "987654321987"
PARAM_TEXT = "zq-param-5521-pii"
ALL_INTERFACES = "0.0.0.0"  # noqa: S104 - the bind the tests expect to be refused


class Response:
    def __init__(self, status: str, headers: list[tuple[str, str]], body: bytes) -> None:
        self.status = int(status.split()[0])
        self.headers = {k.lower(): v for k, v in headers}
        self.body = body
        self.text = body.decode()


def call(app: DashboardApp, path: str, *, method: str = "GET", remote: str = "127.0.0.1",
         host: str = "127.0.0.1:8478", headers: dict[str, str] | None = None,
         script_name: str = "", scheme: str = "http") -> Response:
    path, _, query = path.partition("?")
    environ: dict[str, Any] = {"REQUEST_METHOD": method, "PATH_INFO": path,
                               "QUERY_STRING": query, "REMOTE_ADDR": remote,
                               "HTTP_HOST": host, "SCRIPT_NAME": script_name,
                               "wsgi.input": io.BytesIO(b""), "wsgi.url_scheme": scheme}
    for key, value in (headers or {}).items():
        environ["HTTP_" + key.upper().replace("-", "_")] = value
    setup_testing_defaults(environ)
    seen: dict[str, Any] = {}

    def start_response(status: str, hdrs: list[tuple[str, str]]) -> None:
        seen["status"], seen["headers"] = status, hdrs

    body = b"".join(app(environ, start_response))
    return Response(seen["status"], seen["headers"], body)


@pytest.fixture
def dash_env(provisioned_db: dict[str, Any], monkeypatch: pytest.MonkeyPatch,
             tmp_path: Any) -> dict[str, Any]:
    service_env(monkeypatch, provisioned_db,
                extra={"EDULINK_DB_HOME": str(tmp_path / "home"),
                       "EDULINK_DB_MIGRATIONS": str(tmp_path / "migrations")})
    (tmp_path / "migrations").mkdir()
    return provisioned_db


@pytest.fixture
def app(dash_env: dict[str, Any]) -> Iterator[DashboardApp]:
    made = make_app(token=None, interval=1.0, start_sampler=False)
    yield made
    made.data.sampler.stop()


@pytest.fixture
def token_app(dash_env: dict[str, Any]) -> Iterator[DashboardApp]:
    made = make_app(token=TOKEN, interval=1.0, start_sampler=False)
    yield made
    made.data.sampler.stop()


def traffic(admin: dict[str, Any], service: str, n: int) -> None:
    """Statements with inline literals (which pg_stat_statements normalises and the
    dashboard must not show) and bound parameters, as the service's runtime role."""
    from microservices.shared.database.topology import default_topology

    svc = default_topology().service(service)
    with psycopg.connect(**service_params(admin, svc), autocommit=True) as conn:
        for i in range(n):
            conn.execute(f"SELECT '{LITERAL_TEXT}' AS a, {LITERAL_NUMBER} + {i} AS b")
            conn.execute("SELECT %s::text, pg_catalog.pg_sleep(0.001)", [PARAM_TEXT])


# -- binding and tokens (no database needed) ----------------------------------------
@pytest.mark.parametrize("host", [ALL_INTERFACES, "192.0.2.10", "::", "example.org"])
def test_non_loopback_bind_without_token_refuses_to_start(
        host: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from microservices.shared.database.config import load_settings

    monkeypatch.delenv("EDULINK_DB_DASHBOARD_TOKEN", raising=False)
    with pytest.raises(ConfigError, match="EDULINK_DB_DASHBOARD_TOKEN"):
        serve(load_settings(), host=host, port=1)


@pytest.mark.parametrize("bad", ["short", "x" * 15, "a" * 20 + " ", "a" * 20 + ";b=c",
                                 "ä" * 20])
def test_weak_or_unsafe_tokens_are_refused(bad: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from microservices.shared.database.config import load_settings

    monkeypatch.setenv("EDULINK_DB_DASHBOARD_TOKEN", bad)
    with pytest.raises(ConfigError, match="at least 16") as info:
        serve(load_settings(), host=ALL_INTERFACES, port=1)
    assert bad not in str(info.value)


def test_cli_refuses_public_bind_without_token_with_a_clear_error(tmp_path: Any) -> None:
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith(("EDULINK_DB_",
                                                                     "DATABASE_"))}
    env["EDULINK_DB_HOME"] = str(tmp_path)
    done = subprocess.run(
        [sys.executable, "-m", "microservices.shared.database", "dashboard", "--host",
         ALL_INTERFACES, "--port", "1"], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert "EDULINK_DB_DASHBOARD_TOKEN" in done.stderr
    assert "Traceback" not in done.stderr


# -- access control on a real database ----------------------------------------------
def test_token_is_required_on_every_path_and_never_echoed(token_app: DashboardApp) -> None:
    paths = ["/", "/service/user", "/api/series.json", "/api/series/user.json",
             "/static/dashboard.js", "/nope"]
    for path in paths:
        for headers in ({}, {"Authorization": "Bearer wrong-token-0123456789"},
                        {"Authorization": f"Basic {TOKEN}"},
                        {"Cookie": "edulink_db_dashboard=wrong-token-0123456789"},
                        {"Authorization": f"Bearer {TOKEN[:-1]}"}):
            # Even a loopback client needs the token once one is set.
            r = call(token_app, path, headers=headers)
            assert r.status == 401, (path, headers)
            assert TOKEN not in r.text and "wrong-token" not in r.text
    ok = call(token_app, "/service/user", headers={"Authorization": f"Bearer {TOKEN}"})
    assert ok.status == 200 and TOKEN not in ok.text
    # From anywhere, with the token.
    assert call(token_app, "/api/series.json", remote="203.0.113.9", host="dash.example",
                headers={"Authorization": f"Bearer {TOKEN}"}).status == 200


def test_url_token_is_traded_for_a_cookie_and_dropped_from_the_url(
        token_app: DashboardApp) -> None:
    wrong = call(token_app, "/service/user?token=guess-guess-guess-guess")
    assert wrong.status == 401 and "guess" not in wrong.text
    assert "set-cookie" not in wrong.headers
    r = call(token_app, f"/service/user?token={TOKEN}", script_name="/dash")
    assert r.status == 303
    assert r.headers["location"] == "/dash/service/user"
    cookie = r.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/dash" in cookie
    assert TOKEN not in r.text
    # No open redirect: only a plain local path goes back into Location.
    for evil in ("//evil.example/x", "/\\evil.example", "/x?y"):
        r = call(token_app, f"{evil}?token={TOKEN}" if "?" not in evil else f"/x?token={TOKEN}")
        assert r.status == 303 and r.headers["location"] in ("/", "/x"), evil
    assert "Secure" not in r.headers["set-cookie"]
    https = call(token_app, f"/?token={TOKEN}", scheme="https")
    assert https.headers["set-cookie"].endswith("; Secure")
    value = cookie.split(";")[0].split("=", 1)[1]
    page = call(token_app, "/service/user",
                headers={"Cookie": f"other=1; edulink_db_dashboard={value}"})
    assert page.status == 200 and TOKEN not in page.text


def test_without_token_only_loopback_clients_and_hosts_are_answered(app: DashboardApp
                                                                    ) -> None:
    assert call(app, "/api/series.json").status == 200
    assert call(app, "/api/series.json", host="localhost:8478").status == 200
    assert call(app, "/api/series.json", remote="::1", host="[::1]:8478").status == 200
    # Another machine (e.g. mounted in an app that listens publicly).
    assert call(app, "/api/series.json", remote="10.1.2.3").status == 403
    # A DNS-rebinding page: the browser connects to 127.0.0.1 but sends its own name.
    assert call(app, "/api/series.json", host="evil.example:8478").status == 403
    assert call(app, "/api/series.json", host="127.0.0.1.evil.example").status == 403


def test_read_only_every_other_method_is_405(app: DashboardApp) -> None:
    for method in ("POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"):
        r = call(app, "/", method=method)
        assert r.status == 405, method
        assert r.headers["allow"] == "GET, HEAD"
    head = call(app, "/api/series.json", method="HEAD")
    assert head.status == 200 and head.body == b""


def test_security_headers_on_every_answer(app: DashboardApp, token_app: DashboardApp
                                          ) -> None:
    answers = [call(app, "/"), call(app, "/service/user"), call(app, "/static/uPlot.iife.min.js"),
               call(app, "/nope"), call(app, "/", method="POST"),
               call(app, "/", remote="10.0.0.1"), call(token_app, "/"),
               call(token_app, f"/?token={TOKEN}")]
    for r in answers:
        assert r.headers["content-security-policy"] == CSP
        assert "script-src 'self'" in CSP and "unsafe-inline" not in CSP
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["x-frame-options"] == "DENY"
        assert r.headers["referrer-policy"] == "no-referrer"
        assert r.headers["cache-control"] == "no-store"
    page = answers[0].text
    # No inline script or style for the CSP to block: every <script> has a src.
    assert "<script>" not in page and "style=" not in page and "<style" not in page
    assert "/static/uPlot.iife.min.js" in page and "http" not in page.split("<body>")[0]


def test_static_files_are_a_fixed_list(app: DashboardApp) -> None:
    for path in ("/static/../app.py", "/static/%2e%2e/app.py", "/static/data.py",
                 "/static/", "/static/templates/base.html", "/static//etc/passwd"):
        assert call(app, path).status == 404, path
    lic = call(app, "/static/uPlot.LICENSE.txt")
    assert lic.status == 200 and "MIT" in lic.text
    assert call(app, "/service/no_such_service").status == 404
    assert call(app, "/service/<script>").status == 404


def test_mounted_under_a_prefix_links_stay_under_it(app: DashboardApp) -> None:
    page = call(app, "/", script_name="/ops/db").text
    assert 'href="/ops/db/service/user"' in page
    assert 'src="/ops/db/static/dashboard.js"' in page


# -- what the pages show --------------------------------------------------------------
def test_pages_show_per_service_figures_without_values_or_secrets(
        app: DashboardApp, dash_env: dict[str, Any]) -> None:
    traffic(dash_env, "user", 30)
    traffic(dash_env, "institution", 12)
    app.data.sampler.sample_once()
    index = call(app, "/")
    user = call(app, "/service/user")
    institution = call(app, "/service/institution")
    series = call(app, "/api/series.json")
    assert index.status == user.status == institution.status == series.status == 200
    stats = app.data.live()["stats"]
    assert stats.statements is not None, stats.statements_note
    user_calls = stats.statements["user_service_role"]["calls"]
    assert user_calls >= 60
    # The slowest statements are shown as fingerprints: the shape, never the values.
    assert "top-statements" in user.text
    assert "<code>SELECT $1 AS a, $2 + $3 AS b</code>" in user.text
    assert "<td>30</td>" in user.text and "<td>12</td>" in institution.text
    assert "top-statements" in institution.text
    admin_password = str(dash_env.get("password") or "")
    for r in (index, user, institution, series):
        for secret in (LITERAL_TEXT, LITERAL_NUMBER, PARAM_TEXT, SERVICE_PASSWORD,
                       admin_password):
            if secret:
                assert secret not in r.text, (secret, r.text[:200])
        assert "postgresql://" not in r.text
    # Panels present: migrations, backups, privileges, exposure, replicas.
    assert 'data-figure="migrations"' in user.text
    assert 'data-figure="backup"' in user.text
    assert "Privilege matrix" in index.text and "user_service_role" in index.text
    assert 'data-figure="replicas">no standbys streaming; no read replicas configured' \
        in index.text


def test_charts_are_rates_and_mean_times_from_deltas() -> None:
    def stats(calls: int, total_s: float, active: int) -> DatabaseStats:
        s = DatabaseStats()
        s.statements = {"r": {"calls": calls, "total_time_s": total_s, "mean_ms": 0.0,
                              "slow_statements": 0}}
        s.roles = {"r": {"active": active, "idle": 1, "idle_in_transaction": 0, "other": 0}}
        return s

    sampler = Sampler(lambda: stats(0, 0, 0), ["r"], interval=10, window_s=60)
    for at, calls, total in ((0, 100, 1.0), (10, 300, 1.4), (20, 300, 1.4), (30, 50, 0.1)):
        sampler.record(stats(calls, total, 2), at=at)
    series = sampler.series("r")
    assert series["t"] == [10, 20, 30]
    assert series["calls_per_s"] == [20.0, 0.0, None]  # the last: a statistics reset
    assert series["mean_ms"] == [2.0, None, None]
    assert series["sessions"] == [3, 3, 3]
    # Page views between samples do not crowd the hour out of the ring buffer.
    sampler.record(stats(60, 0.2, 0), at=31)
    assert len(sampler.series("r")["t"]) == 3
    for at in range(40, 400, 10):
        sampler.record(stats(at, 0.0, 0), at=at)
    assert len(sampler.series("r")["t"]) == 60 // 10 + 1


def test_replicas_panel_renders_what_issue_16_provides(app: DashboardApp) -> None:
    template = app._env.get_template("macros.html")
    html = template.module.replicas({  # type: ignore[attr-defined]
        "in_recovery": False, "primary": "",
        "standbys": [{"name": "s1", "client_addr": "127.0.0.1", "state": "streaming",
                      "replay_lag_seconds": 0.25, "replay_lag_bytes": 512}],
        "replicas": [{"host": "replica-1", "state": "ok", "lag_seconds": 1.5}]})
    assert "streaming" in str(html) and "0.25 s / 512 B" in str(html)
    assert "replica-1" in str(html) and "1.5 s" in str(html)
    assert "not configured" in str(template.module.replicas(None))  # type: ignore[attr-defined]


def test_page_stays_correct_while_a_migration_holds_an_exclusive_lock(
        app: DashboardApp, dash_env: dict[str, Any]) -> None:
    from microservices.shared.database.topology import default_topology

    traffic(dash_env, "user", 3)
    user = default_topology().service("user")
    locker = psycopg.connect(**dash_env)
    waiter_done = threading.Event()

    def blocked_reader() -> None:
        try:
            with psycopg.connect(**service_params(dash_env, user), autocommit=True) as c:
                # The waiting statement carries a literal; pg_stat_activity shows it raw.
                waiting = ("SELECT count(*) FROM user_schema.notes WHERE body <> "  # noqa: S608
                           f"'{LITERAL_TEXT}' AND id <> {LITERAL_NUMBER}")
                c.execute(waiting)
        except psycopg.Error:
            pass
        finally:
            waiter_done.set()

    try:
        locker.execute("SET ROLE user_service_owner")
        locker.execute("LOCK TABLE user_schema.notes IN ACCESS EXCLUSIVE MODE")
        reader = threading.Thread(target=blocked_reader, daemon=True)
        reader.start()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if any(b["role"] == "user_service_role" for b in app.data.live()["blocked"]):
                break
            time.sleep(0.1)
        result: dict[str, Response] = {}
        render = threading.Thread(target=lambda: result.update(
            page=call(app, "/service/user"), index=call(app, "/")), daemon=True)
        render.start()
        render.join(timeout=60)
        assert not render.is_alive(), "the page waited on the migration's lock"
        page, index = result["page"], result["index"]
        assert page.status == 200 and index.status == 200
        # Correct, not just alive: the blocked reader is shown, sizes still read.
        assert "blocked by pid" in page.text and "user_service_role" in page.text
        assert 'data-k="size"' in page.text
        assert 'class="bad">1<' in index.text  # the user row's blocked count
        assert "body &lt;&gt; ? AND id &lt;&gt; ?" in page.text
        for r in (page, index):
            assert LITERAL_TEXT not in r.text and LITERAL_NUMBER not in r.text
    finally:
        locker.rollback()
        locker.close()
        waiter_done.wait(10)


def test_statement_text_cannot_inject_markup(app: DashboardApp, dash_env: dict[str, Any]
                                             ) -> None:
    from microservices.shared.database.topology import default_topology

    svc = default_topology().service("user")
    with psycopg.connect(**service_params(dash_env, svc), autocommit=True) as conn:
        conn.execute('SELECT 1 AS "<script>alert(1)</script>", 2 AS "x"" onmouseover=""y"')
    page = call(app, "/service/user").text
    assert "<script>alert" not in page and 'onmouseover="y' not in page
    # A quoted identifier is a name, not a value: shown, escaped, unchanged.
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page


# -- red-team findings (issue 19 follow-up) ------------------------------------------
class Served:
    """serve() in a thread, as the CLI runs it; stopped on exit."""

    def __init__(self, host: str, **kwargs: Any) -> None:
        from microservices.shared.database.config import load_settings

        self.server: Any = None
        self.error: BaseException | None = None
        up = threading.Event()

        def ready(server: Any) -> None:
            self.server = server
            up.set()

        def run() -> None:
            try:
                serve(load_settings(), host=host, port=0, ready=ready, **kwargs)
            except BaseException as exc:  # reported to the test
                self.error = exc
                up.set()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        up.wait(30)

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def __enter__(self) -> Served:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.server is not None:
            self.server.shutdown()
        self.thread.join(10)


def test_an_ipv6_loopback_literal_can_be_served(dash_env: dict[str, Any]) -> None:
    import http.client

    with Served("::1") as served:
        assert served.error is None, served.error
        conn = http.client.HTTPConnection("::1", served.port, timeout=30)
        conn.request("GET", "/static/dashboard.css", headers={"Host": f"[::1]:{served.port}"})
        assert conn.getresponse().status == 200
        conn.close()


def test_a_client_that_never_finishes_its_request_is_dropped(
        dash_env: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    from microservices.shared.database.monitoring.dashboard import app as app_module

    assert app_module._QuietHandler.timeout is not None
    monkeypatch.setattr(app_module._QuietHandler, "timeout", 0.5)
    with Served("127.0.0.1") as served:
        assert served.error is None, served.error
        with socket.create_connection(("127.0.0.1", served.port), timeout=30) as slow:
            slow.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # ...and nothing more
            # The server closes the connection instead of holding a thread for it forever
            # (without a timeout, recv waits until the test's own 30 s run out).
            assert slow.recv(1024) == b""


def test_without_token_a_local_reverse_proxy_does_not_make_clients_local(
        app: DashboardApp) -> None:
    # nginx's default proxy_pass sends Host: 127.0.0.1:<port> from 127.0.0.1.
    for header in ("X-Forwarded-For", "Forwarded", "X-Real-IP", "X-Forwarded-Host"):
        r = call(app, "/api/series.json", headers={header: "203.0.113.5"})
        assert r.status == 403, header
        assert "proxy" in r.text


def test_an_unexpected_failure_keeps_the_headers_and_shows_no_message(
        app: DashboardApp, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken() -> dict[str, Any]:
        raise RuntimeError(f"boom {LITERAL_TEXT}")

    monkeypatch.setattr(app.data, "live", broken)
    r = call(app, "/service/user")
    assert r.status == 500
    assert r.headers["content-security-policy"] == CSP
    assert LITERAL_TEXT not in r.text and "Traceback" not in r.text


def test_the_dashboards_own_session_cannot_write(app: DashboardApp) -> None:
    from microservices.shared.database.monitoring.dashboard.data import _admin_params

    with psycopg.connect(**_admin_params(app.data.settings), autocommit=True) as conn:
        assert conn.execute("SHOW lock_timeout").fetchone() == ("1s",)
        assert conn.execute("SHOW statement_timeout").fetchone() == ("10s",)
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            conn.execute("CREATE TABLE public.dashboard_write_probe ()")


def test_concurrent_page_views_share_one_database_session(
        app: DashboardApp, dash_env: dict[str, Any]) -> None:
    assert call(app, "/").status == 200  # the cached panels (migrations...) are read now
    views = 12

    def sessions(conn: psycopg.Connection[Any]) -> int:
        conn.execute("SELECT pg_catalog.pg_stat_clear_snapshot()")
        row = conn.execute("SELECT sessions FROM pg_catalog.pg_stat_database"
                           " WHERE datname = current_database()").fetchone()
        assert row is not None
        return int(row[0])

    with psycopg.connect(**dash_env, autocommit=True) as probe:
        before = sessions(probe)
        start = threading.Barrier(views)
        statuses: list[int] = []

        def view() -> None:
            start.wait()
            statuses.append(call(app, "/service/user").status)

        threads = [threading.Thread(target=view) for _ in range(views)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert statuses == [200] * views
        # One read serves the burst (two if it straddles the 1 s reuse window), instead
        # of one session per request, which a burst could use to exhaust max_connections.
        assert sessions(probe) - before <= 2


def test_file_errors_on_the_page_do_not_name_backup_paths() -> None:
    from microservices.shared.database.monitoring.dashboard.data import error_reason

    # What the backups panel shows when the store cannot be read (e.g. EACCES as a
    # service user; the tests run as root, so the error is built here).
    shown = error_reason(PermissionError(13, "Permission denied", "/srv/secret-backups/x.json"))
    assert shown == "PermissionError: Permission denied"


def test_a_supabase_like_admin_gets_the_page_and_is_told_what_it_lacks(
        createrole_admin: dict[str, Any], unique_topology: Any,
        monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    from .conftest import do_provision
    from .test_monitoring import _toml_of

    do_provision(createrole_admin, unique_topology)
    service_env(monkeypatch, createrole_admin, unique_topology,
                extra={"EDULINK_DB_HOME": str(tmp_path / "home"),
                       "EDULINK_DB_MIGRATIONS": str(tmp_path / "migrations")})
    (tmp_path / "migrations").mkdir()
    topo_file = tmp_path / "topology.toml"
    topo_file.write_text(_toml_of(unique_topology))
    monkeypatch.setenv("EDULINK_DB_TOPOLOGY", str(topo_file))
    made = make_app(token=None, interval=1.0, start_sampler=False)
    svc = unique_topology.services[0]
    for path in ("/", f"/service/{svc.name}"):
        page = call(made, path)
        assert page.status == 200, page.text[:500]
        assert 'id="privilege-note"' in page.text and "pg_read_all_stats" in page.text
        assert createrole_admin["password"] not in page.text


def test_an_admin_with_full_statistics_sees_no_privilege_note(app: DashboardApp) -> None:
    assert 'id="privilege-note"' not in call(app, "/").text


def test_pages_stay_correct_while_a_table_in_every_schema_is_locked(
        app: DashboardApp, dash_env: dict[str, Any]) -> None:
    """Every schema at once (a migration per service), and a blocked statement whose
    text pg_stat_activity cuts off inside a literal (track_activity_query_size)."""
    from psycopg import sql

    from microservices.shared.database.topology import default_topology

    topology = default_topology()
    user = topology.service("user")
    with psycopg.connect(**dash_env, autocommit=True) as conn:
        row = conn.execute("SELECT setting::int FROM pg_catalog.pg_settings"
                           " WHERE name = 'track_activity_query_size'").fetchone()
        assert row is not None
        size = int(row[0])
        for svc in topology.services:
            conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(svc.owner_role)))
            conn.execute(sql.SQL("CREATE TABLE {} (id int)").format(
                sql.Identifier(svc.schema, "locked_by_migration")))
            conn.execute("RESET ROLE")
    secret = "zqtrunc-secret-" + "s" * 80
    head = "SELECT count(*) FROM user_schema.notes WHERE id <> 1"
    filler = " AND id <> 2" * ((size - len(head) - 30) // len(" AND id <> 2"))
    waiting = f"{head}{filler} AND body <> '{secret}'"
    assert waiting.index(secret) < size - 1 < waiting.index(secret) + len(secret)
    locker = psycopg.connect(**dash_env)
    done = threading.Event()

    def blocked_reader() -> None:
        try:
            with psycopg.connect(**service_params(dash_env, user), autocommit=True) as c:
                c.execute(waiting)
        except psycopg.Error:
            pass
        finally:
            done.set()

    try:
        for svc in topology.services:
            locker.execute(sql.SQL("LOCK TABLE {}, {} IN ACCESS EXCLUSIVE MODE").format(
                sql.Identifier(svc.schema, "locked_by_migration"),
                sql.Identifier("user_schema", "notes")))
        threading.Thread(target=blocked_reader, daemon=True).start()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not any(
                b["role"] == user.runtime_role for b in app.data.live()["blocked"]):
            time.sleep(0.2)
        pages: dict[str, Response] = {}

        def render() -> None:
            pages["/"] = call(app, "/")
            for svc in topology.services:
                pages[svc.name] = call(app, f"/service/{svc.name}")

        renderer = threading.Thread(target=render, daemon=True)
        renderer.start()
        renderer.join(120)
        assert not renderer.is_alive(), "a page waited on a migration's lock"
        for name, page in pages.items():
            assert page.status == 200, name
            assert "zqtrunc" not in page.text, name
            if name != "/":
                assert 'data-k="size"' in page.text and 'data-figure="migrations"' in page.text
                assert "unreadable" not in page.text, name
        assert "blocked by pid" in pages["user"].text
        assert "Privilege matrix" in pages["/"].text
    finally:
        locker.rollback()
        locker.close()
        done.wait(10)


def test_the_cookie_is_not_the_token(token_app: DashboardApp) -> None:
    # Browsers send a host's cookies to all its ports: other apps there see the cookie.
    r = call(token_app, f"/?token={TOKEN}")
    assert TOKEN not in r.headers["set-cookie"]
    value = r.headers["set-cookie"].split(";")[0].split("=", 1)[1]
    assert call(token_app, "/api/series.json", headers={"Authorization": f"Bearer {value}"}
                ).status == 401
    assert call(token_app, "/api/series.json",
                headers={"Cookie": f"edulink_db_dashboard={value}"}).status == 200


def test_index_shows_the_connection_budget(app: DashboardApp, dash_env: dict[str, Any]) -> None:
    from microservices.shared.database.connections import budget

    index = call(app, "/")
    assert index.status == 200 and 'id="budget"' in index.text
    with psycopg.connect(**dash_env) as conn:
        plan = budget.read_budget(conn, app.data.topology, app.data.settings)
    user = next(r for r in plan.roles if r.service == "user")
    assert user.pool is not None
    row = index.text.split('<tr data-service="user"><td>user</td>', 1)[1].split("</tr>")[0]
    assert (f"<td>{user.limit}</td><td>{user.processes}</td>\n"
            f"<td>{user.pool.min_size}-{user.pool.max_size}</td><td>{user.total}</td>") in row
    assert f"every pool full {plan.runtime_total}" in index.text
