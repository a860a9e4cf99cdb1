"""Make the README's dashboard screenshots (docs/img/dashboard*.png).

    .venv/bin/python scripts/dashboard-screenshot.py [--seconds 40]

Against the six-service reference database of benchmarks/dashboard.py (provisioned,
reference migrations applied) with traffic from two services, sampled every second
for *--seconds* so that the charts have a shape; then Debian's Chromium (Playwright)
photographs the main page and the user service's page.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path
from wsgiref.simple_server import make_server

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.dashboard import reference_dashboard, traffic
from microservices.shared.database.monitoring.dashboard import make_app
from microservices.shared.database.monitoring.dashboard.app import (
    _QuietHandler,
    _ThreadingServer,
)
from tests.test_dashboard_browser import CHROMIUM, CHROMIUM_FLAGS

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=int, default=40)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "img")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    home = Path(tempfile.mkdtemp(prefix="edulink-dash-shot-"))
    with reference_dashboard(home) as (admin, topology, password):
        app = make_app(token=None, interval=1.0, start_sampler=True)
        server = make_server("127.0.0.1", 0, app, server_class=_ThreadingServer,
                             handler_class=_QuietHandler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            for second in range(args.seconds):  # a load that rises and falls
                traffic(admin, topology, password, 5 + 4 * (second % 12))
                time.sleep(0.5)
            base = f"http://127.0.0.1:{server.server_port}"
            args.out.mkdir(parents=True, exist_ok=True)
            with sync_playwright() as pw:
                context = pw.chromium.launch_persistent_context(
                    tempfile.mkdtemp(prefix="edulink-chromium-"), executable_path=CHROMIUM,
                    headless=True, args=CHROMIUM_FLAGS,
                    viewport={"width": 1400, "height": 900})
                page = context.new_page()
                for path, name in (("/", "dashboard.png"),
                                   ("/service/user", "dashboard-user.png")):
                    page.goto(base + path)
                    # Every chart drawn (or saying why not); polled from here, since the
                    # page's CSP rightly forbids the string eval of wait_for_function.
                    pending = page.locator(".chart:not([data-drawn]):not(.empty)")
                    for _ in range(100):
                        if pending.count() == 0:
                            break
                        time.sleep(0.1)
                    page.screenshot(path=str(args.out / name), full_page=True)
                    print(args.out / name)
                context.close()
        finally:
            app.data.sampler.stop()
            server.shutdown()
            server.server_close()


if __name__ == "__main__":
    main()
