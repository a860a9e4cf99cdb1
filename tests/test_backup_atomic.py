"""A restore commits all or nothing, even when pg_restore dies halfway.

Before: psql --single-transaction committed whatever part of the script it had read when
pg_restore died, and the command then said the database was unchanged.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import psycopg
import pytest

from microservices.shared.database.core.errors import BackupError

from .test_backup import db, manager, scalar  # noqa: F401 - db is a fixture

PROFILES = "user_schema.profiles_userprofile"
ROWS = 150_000

# A pg_restore that runs the real one and misbehaves: 'kill' dies by SIGKILL after N
# bytes of script (at a line end); 'truncate' stops after N bytes and exits 0 (a lying tool);
# 'droprows' passes everything but the rows marked 'drop-me' and exits 0.
WRAPPER = """#!{python}
import os, signal, subprocess, sys
REAL, MODE, LIMIT = {real!r}, {mode!r}, {limit}
args = sys.argv[1:]
if "--file=-" not in args:
    os.execv(REAL, [REAL, *args])
proc = subprocess.Popen([REAL, *args], stdout=subprocess.PIPE)
out = sys.stdout.buffer
sent = 0
for line in proc.stdout:
    if MODE == "droprows":
        if b"drop-me" not in line:
            out.write(line)
        continue
    if sent + len(line) > LIMIT:  # stop at a line end: psql sees no broken row
        out.flush()
        proc.kill()
        if MODE == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        sys.exit(0)
    out.write(line)
    sent += len(line)
out.flush()
sys.exit(proc.wait())
"""


def _fill(admin: dict[str, Any], rows: int) -> None:
    with psycopg.connect(**admin, autocommit=True) as conn:
        conn.execute(f"INSERT INTO {PROFILES} (user_id, first_name)"  # noqa: S608
                     " SELECT gen_random_uuid(), 'row ' || i || CASE WHEN i %% 1000 = 0"
                     " THEN ' drop-me' ELSE '' END FROM generate_series(1, %s) i", [rows])


def _change_after_backup(admin: dict[str, Any]) -> int:
    """Changes made after the backup, which a failed restore must leave in place."""
    with psycopg.connect(**admin, autocommit=True) as conn:
        conn.execute(f"DELETE FROM {PROFILES} WHERE first_name LIKE 'row 1__'")  # noqa: S608
        conn.execute(f"INSERT INTO {PROFILES} (user_id, first_name)"  # noqa: S608
                     " VALUES (gen_random_uuid(), 'written after the backup')")
    return int(scalar(admin, f"SELECT count(*) FROM {PROFILES}"))  # noqa: S608


def _wrapper_bin(tmp_path: Path, mode: str, limit: int) -> Path:
    from microservices.shared.database.server.pg_tools import find_tool

    real = find_tool("pg_restore", 18)
    bindir = tmp_path / f"bin-{mode}"
    bindir.mkdir()
    script = bindir / "pg_restore"
    script.write_text(WRAPPER.format(python=sys.executable, real=str(real), mode=mode,
                                     limit=limit))
    script.chmod(0o755)
    return bindir


@pytest.mark.parametrize("mode", ["kill", "truncate", "droprows"])
def test_restore_fed_by_a_failing_pg_restore_changes_nothing(
    db: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,  # noqa: F811
    mode: str,
) -> None:
    _fill(db, ROWS)
    m = manager()
    backup = m.create_schema_backup(["user_schema"])
    assert backup.row_counts[PROFILES] == ROWS + 50
    before = _change_after_backup(db)
    # Half of the script: the profiles' COPY is cut in the middle.
    monkeypatch.setenv("EDULINK_DB_PG_BIN", str(_wrapper_bin(tmp_path, mode, 3_000_000)))
    with pytest.raises(BackupError) as exc:
        manager().restore(backup.backup_id)
    # The data first: the old code committed the half it had read (about 20,000 rows).
    assert scalar(db, f"SELECT count(*) FROM {PROFILES}") == before  # noqa: S608
    assert scalar(db, f"SELECT count(*) FROM {PROFILES}"  # noqa: S608
                  " WHERE first_name = 'written after the backup'") == 1
    message = str(exc.value)
    assert "rolled back; the database is unchanged" in message
    expected = {"kill": "pg_restore was killed by signal 9",
                "truncate": "did not end with its COMMIT",
                "droprows": "restored row counts differ from the manifest"}[mode]
    assert expected in message
    assert "are also saved in backup prerestore_" in message  # where to find the data
    # And with the real pg_restore, the same backup restores in full.
    monkeypatch.delenv("EDULINK_DB_PG_BIN")
    manager().restore(backup.backup_id, safety_backup=False)
    assert scalar(db, f"SELECT count(*) FROM {PROFILES}") == ROWS + 50  # noqa: S608


def test_kill_9_of_pg_restore_during_a_cli_restore(db: dict[str, Any]) -> None:  # noqa: F811
    """A real SIGKILL of the real pg_restore, mid-COPY of a 300,000-row table."""
    _fill(db, 300_000)
    backup = manager().create_schema_backup(["user_schema"])
    before = _change_after_backup(db)
    cli = subprocess.Popen(
        [sys.executable, "-m", "microservices.shared.database", "restore", backup.backup_id,
         "--no-safety-backup"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "COLUMNS": "300"})
    killed = None
    try:
        with psycopg.connect(**db, autocommit=True) as watch:
            deadline = time.monotonic() + 120
            while killed is None and cli.poll() is None and time.monotonic() < deadline:
                copying = watch.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                    " AND state = 'active' AND query LIKE 'COPY user_schema.profiles%%'"
                ).fetchone()
                if copying and copying[0]:
                    for child in psutil.Process(cli.pid).children(recursive=True):
                        if child.name() == "pg_restore":
                            child.send_signal(signal.SIGKILL)
                            killed = child.pid
                time.sleep(0.005)
        _out, err = cli.communicate(timeout=120)
    finally:
        if cli.poll() is None:
            cli.kill()
    assert killed is not None, "the restore ended before its COPY could be interrupted"
    assert cli.returncode != 0
    assert "rolled back; the database is unchanged" in err
    assert "killed by signal 9" in err and "Traceback" not in err
    assert scalar(db, f"SELECT count(*) FROM {PROFILES}") == before  # noqa: S608
