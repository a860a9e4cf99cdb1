"""The benchmark scripts keep working (they are run by hand; timings are not asserted)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_connection_benchmark_runs() -> None:
    env = dict(os.environ)
    if "EDULINK_TEST_DATABASE_URL" in env:
        env["EDULINK_BENCH_DATABASE_URL"] = env["EDULINK_TEST_DATABASE_URL"]
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "connections.py"),
         "--seconds", "0.02", "--rounds", "1", "--threads", "2"],
        capture_output=True, text=True, timeout=300, env=env, check=False)
    assert result.returncode == 0, result.stderr
    for path in ("a held connection", "b psycopg_pool", "c SQLAlchemy QueuePool",
                 "d get_connection", "e get_connection(user_id)"):
        assert path in result.stdout
    assert "ratio to (a)" in result.stdout and "goals:" in result.stdout


def test_migration_benchmark_runs() -> None:
    env = dict(os.environ)
    if "EDULINK_TEST_DATABASE_URL" in env:
        env["EDULINK_BENCH_DATABASE_URL"] = env["EDULINK_TEST_DATABASE_URL"]
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "migrations.py"),
         "--files", "3", "--rounds", "1", "--schemas", "3"],
        capture_output=True, text=True, timeout=300, env=env, check=False)
    assert result.returncode == 0, result.stderr
    assert "yoyo-migrations (baseline)" in result.stdout
    assert "history round trips" in result.stdout


def test_backup_benchmark_runs() -> None:
    env = dict(os.environ)
    if "EDULINK_TEST_DATABASE_URL" in env:
        env["EDULINK_BENCH_DATABASE_URL"] = env["EDULINK_TEST_DATABASE_URL"]
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "backup.py"), "--mb", "2", "--rounds", "1"],
        capture_output=True, text=True, timeout=300, env=env, check=False)
    assert result.returncode == 0, result.stderr
    assert "backup   plain" in result.stdout and "restore  plain" in result.stdout


def test_monitoring_benchmark_runs() -> None:
    env = dict(os.environ)
    if "EDULINK_TEST_DATABASE_URL" in env:
        env["EDULINK_BENCH_DATABASE_URL"] = env["EDULINK_TEST_DATABASE_URL"]
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "monitoring.py"),
         "--seconds", "0.02", "--rounds", "2", "--threads", "2"],
        capture_output=True, text=True, timeout=300, env=env, check=False)
    assert result.returncode == 0, result.stderr
    assert "on/off" in result.stdout and "goal" in result.stdout
