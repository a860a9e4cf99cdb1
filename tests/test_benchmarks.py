"""The benchmark scripts keep working (they are run by hand; timings are not asserted)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_benchmark(script: str, *args: str) -> str:
    """Run benchmarks/<script> with tiny sizes on the test server; return its output."""
    env = dict(os.environ)
    if "EDULINK_TEST_DATABASE_URL" in env:
        env["EDULINK_BENCH_DATABASE_URL"] = env["EDULINK_TEST_DATABASE_URL"]
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args],
                            capture_output=True, text=True, timeout=300, env=env, check=False)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_connection_benchmark_runs() -> None:
    out = run_benchmark("connections.py", "--seconds", "0.02", "--rounds", "1",
                        "--threads", "2")
    for path in ("a held connection", "b psycopg_pool", "c SQLAlchemy QueuePool",
                 "d get_connection", "e get_connection(user_id)"):
        assert path in out
    assert "ratio to (a)" in out and "goals:" in out


def test_migration_benchmark_runs() -> None:
    out = run_benchmark("migrations.py", "--files", "3", "--rounds", "1", "--schemas", "3")
    assert "yoyo-migrations (baseline)" in out and "history round trips" in out


def test_backup_benchmark_runs() -> None:
    out = run_benchmark("backup.py", "--mb", "2", "--rounds", "1")
    assert "backup   plain" in out and "restore  plain" in out


def test_monitoring_benchmark_runs() -> None:
    out = run_benchmark("monitoring.py", "--ops", "100", "--threads", "2")
    assert "on/off" in out and "goal" in out


def test_lint_benchmark_runs() -> None:
    out = run_benchmark("lint.py", "--files", "10", "--rounds", "1", "--no-migrate")
    assert "squawk alone, one run per file (baseline)" in out and "10 files at once" in out


def test_credentials_benchmark_runs() -> None:
    out = run_benchmark("credentials.py", "--calls", "100")
    assert "credential file, unchanged" in out and "goal: <= 50 us each" in out


def test_tracing_benchmark_runs() -> None:
    out = run_benchmark("tracing.py", "--ops", "60", "--threads", "2")
    assert "off/baseline throughput" in out and "goal" in out
