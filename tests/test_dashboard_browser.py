"""The dashboard in a real browser: Playwright for Python driving Debian's Chromium
(browser downloads are impossible here: ``executable_path=/usr/bin/chromium``).

Skipped, with the reason, only where chromium or playwright is missing locally; with
CI=true it fails instead (.ci/run installs both).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from wsgiref.simple_server import make_server

import psycopg
import pytest

from microservices.shared.database.monitoring.dashboard import DashboardApp, make_app
from microservices.shared.database.monitoring.dashboard.app import _QuietHandler, _ThreadingServer
from microservices.shared.database.topology import default_topology

from .conftest import SERVICE_PASSWORD, service_params
from .test_dashboard import LITERAL_NUMBER, LITERAL_TEXT, PARAM_TEXT, TOKEN, dash_env, traffic

__all__ = ["dash_env"]  # the fixture, re-used

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]


def _browser_or_skip() -> Any:
    missing = []
    if not Path(CHROMIUM).exists():
        missing.append(f"{CHROMIUM} (apt-get install chromium)")
    sync_playwright: Any = None
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing.append("the playwright package (pip install playwright)")
    if missing:
        reason = "browser test needs " + " and ".join(missing)
        if os.environ.get("CI", "").lower() not in ("", "0", "false"):
            pytest.fail(reason + " -- in CI it must run (.ci/run installs both)")
        pytest.skip(reason)
    return sync_playwright


@pytest.fixture
def served(dash_env: dict[str, Any]) -> Iterator[tuple[str, DashboardApp]]:
    app = make_app(token=TOKEN, interval=1.0, start_sampler=False)
    server = make_server("127.0.0.1", 0, app, server_class=_ThreadingServer,
                         handler_class=_QuietHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", app
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def shots() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="edulink-dashboard-shots-"))
    yield path
    print(f"dashboard screenshots in {path}")


def test_pages_in_chromium_show_each_services_figures(
        served: tuple[str, DashboardApp], dash_env: dict[str, Any], shots: Path) -> None:
    sync_playwright = _browser_or_skip()
    from playwright.sync_api import expect
    base, app = served
    topology = default_topology()
    user, institution = topology.service("user"), topology.service("institution")
    # Two services at work; two of user's sessions stay open and idle.
    app.data.sampler.sample_once()
    traffic(dash_env, "user", 40)
    traffic(dash_env, "institution", 15)
    idle = [psycopg.connect(**service_params(dash_env, user), autocommit=True)
            for _ in range(2)]
    import time

    time.sleep(0.6)  # samples are kept at least half an interval apart
    app.data.sampler.sample_once()
    with psycopg.connect(**dash_env, autocommit=True) as conn:
        expected = dict(conn.execute(
            "SELECT r.rolname::text, sum(s.calls)::bigint FROM pg_stat_statements s"
            " JOIN pg_roles r ON r.oid = s.userid WHERE r.rolname = ANY(%s)"
            " AND s.dbid = (SELECT oid FROM pg_database WHERE datname = current_database())"
            " GROUP BY 1", [[user.runtime_role, institution.runtime_role]]).fetchall())
    assert expected[user.runtime_role] >= 80 and expected[institution.runtime_role] >= 30

    profile = tempfile.mkdtemp(prefix="edulink-chromium-")
    problems: list[str] = []
    try:
        with sync_playwright() as pw:
            context = pw.chromium.launch_persistent_context(
                profile, executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS,
                viewport={"width": 1400, "height": 1000})
            page = context.new_page()
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(str(e)))
            page.on("requestfailed", lambda r: problems.append(f"failed: {r.url}"))

            # Without the token: refused.
            denied = context.request.get(base + "/")
            assert denied.status == 401 and TOKEN not in denied.text()
            # First visit with ?token= sets the cookie and drops the token from the URL.
            page.goto(base + f"/?token={TOKEN}")
            assert page.url == base + "/"
            assert page.evaluate("document.cookie") == ""  # HttpOnly: no script reads it
            row = page.locator('tr[data-service="user"]')
            assert row.locator('td[data-k="calls"]').inner_text() == str(
                expected[user.runtime_role])
            assert row.locator('td[data-k="idle"]').inner_text() == "2"
            assert page.locator('tr[data-service="institution"] td[data-k="calls"]'
                                ).inner_text() == str(expected[institution.runtime_role])
            page.wait_for_selector('tr[data-service="user"] .chart[data-drawn="1"]')
            page.screenshot(path=str(shots / "dashboard-index.png"), full_page=True)

            page.click('header nav a:text-is("user")')
            page.wait_for_url(base + "/service/user")
            assert page.locator('[data-figure="connections"] td[data-k="idle"]'
                                ).inner_text() == "2"
            assert page.locator('[data-figure="statements"] td[data-k="calls"]'
                                ).inner_text() == str(expected[user.runtime_role])
            # expect() polls without eval, which the page's CSP forbids.
            expect(page.locator('.charts .chart[data-drawn="1"]')).to_have_count(3)
            assert page.locator("#top-statements").inner_text().count("SELECT") >= 2
            page.screenshot(path=str(shots / "dashboard-user.png"), full_page=True)

            page.goto(base + "/service/institution")
            assert page.locator('[data-figure="statements"] td[data-k="calls"]'
                                ).inner_text() == str(expected[institution.runtime_role])
            html = page.content()
            context.close()
    finally:
        for conn in idle:
            conn.close()
        shutil.rmtree(profile, ignore_errors=True)
    # No CSP violation, script error or failed request (uPlot and data all local).
    assert problems == []
    for secret in (LITERAL_TEXT, LITERAL_NUMBER, PARAM_TEXT, SERVICE_PASSWORD, TOKEN):
        assert secret not in html
    assert (shots / "dashboard-user.png").stat().st_size > 10_000


def test_the_content_security_policy_blocks_injected_inline_script(
        served: tuple[str, DashboardApp]) -> None:
    """Were a database string ever to reach the page unescaped, the CSP is the second
    wall: an inline <script> and an inline event handler do not run."""
    sync_playwright = _browser_or_skip()
    base, _app = served
    profile = tempfile.mkdtemp(prefix="edulink-chromium-")
    try:
        with sync_playwright() as pw:
            context = pw.chromium.launch_persistent_context(
                profile, executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
            page = context.new_page()
            page.goto(base + f"/?token={TOKEN}")
            # page.evaluate runs through DevTools (exempt); what it inserts is not.
            page.evaluate("""() => {
                window.__violations = [];
                document.addEventListener('securitypolicyviolation',
                    (e) => window.__violations.push(e.violatedDirective));
                const s = document.createElement('script');
                s.textContent = 'window.__injected = 1';
                document.body.appendChild(s);
                const d = document.createElement('div');
                d.innerHTML = '<img src="data:," onerror="window.__handler = 1">';
                document.body.appendChild(d);
            }""")
            page.wait_for_timeout(500)  # lets the violation events arrive
            assert page.evaluate("typeof window.__injected") == "undefined"
            assert page.evaluate("typeof window.__handler") == "undefined"
            violations = page.evaluate("window.__violations")
            assert any(v.startswith("script-src") for v in violations), violations
            context.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)
