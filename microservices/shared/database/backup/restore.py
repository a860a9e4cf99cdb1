"""One restore, one transaction, committed only when it is known to be complete.

``psql --single-transaction`` commits when its input ends, and input also ends when
pg_restore feeding it dies (out of memory, an I/O error, ``kill -9``): psql would
commit a half-restored schema. So edulink-db drives psql itself, without
``--single-transaction``:

1. it writes ``BEGIN``, the preamble (when the target needs it) and the drops of the
   schemas being replaced;
2. it streams pg_restore's script (``pg_restore --single-transaction --file=-``, whose
   only transaction control is the ``BEGIN`` it opens with and the ``COMMIT`` it
   ends with), holding back the last few kilobytes: the ``COMMIT`` is in them;
3. only when pg_restore has exited 0 does it forward the held tail without that
   ``COMMIT``, then a check that every restored table has exactly the manifest's row
   count (it raises otherwise), then its own ``COMMIT``.

Any failure before step 3's ``COMMIT`` ends psql's input with ``ROLLBACK`` (or with
nothing, if edulink-db itself dies): PostgreSQL discards the transaction, and the
database is as it was.
"""

from __future__ import annotations

import contextlib
import io
import secrets
import subprocess
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import IO, cast

from psycopg import sql

from ..core.errors import BackupError

# Defined in core/errors.py (every error class lives there); importable here as before.
from ..core.errors import RestoreOutcomeUnknownError as RestoreOutcomeUnknownError
from ..core.tls import explain

# The end of pg_restore's script (COMMIT, "dump complete" comments, \unrestrict KEY) is a
# few hundred bytes; hold back more than that, so the COMMIT never reaches psql early.
HOLD_BACK = 16 * 1024
_CHUNK = 1 << 20
_COMMIT_LINE = b"COMMIT;\n"
# Signs that psql lost its connection: then the outcome of a COMMIT is unknown.
_CONNECTION_LOST = ("connection to server was lost", "server closed the connection",
                    "terminating connection")


def preamble_sql(path: Path, *, keep_role_settings: bool) -> bytes:
    """The backup's preamble, without its own BEGIN/COMMIT (it runs inside the restore's
    transaction). Without *keep_role_settings*, ``ALTER ROLE ... SET`` lines are left out:
    role settings are cluster-wide, and a scratch restore must not change live roles."""
    out = []
    for line in path.read_text().splitlines():
        if line.strip() in ("BEGIN;", "COMMIT;"):
            continue
        if not keep_role_settings and line.startswith("ALTER ROLE ") and line.endswith(";"):
            continue
        out.append(line)
    return ("\n".join(out) + "\n").encode()


def count_check_sql(row_counts: dict[str, int], schemas: Iterable[str]) -> bytes:
    """A DO block raising an error unless every table of *schemas* in *row_counts* holds
    exactly its count. Runs inside the restore's transaction, before COMMIT."""
    chosen = set(schemas)
    checks = []
    for table, expected in sorted(row_counts.items()):
        schema, name = table.split(".", 1)
        if schema not in chosen:
            continue
        checks.append(sql.SQL(
            "  SELECT count(*) INTO n FROM ONLY {};\n"
            "  IF n <> {} THEN bad := bad || pg_catalog.format("
            "'%s: manifest %s, restored %s; ', {}, {}, n); END IF;\n").format(
                sql.Identifier(schema, name), sql.Literal(expected), sql.Literal(table),
                sql.Literal(expected)))
    if not checks:
        return b""
    # A random dollar-quote tag: no table name can close the block early.
    tag = sql.SQL(f"$edulink_{secrets.token_hex(8)}$")
    block = sql.SQL(
        "DO {tag} DECLARE n bigint; bad text := ''; BEGIN\n{checks}"
        "  IF bad <> '' THEN RAISE EXCEPTION 'edulink-db: restored row counts differ from "
        "the manifest: %', bad; END IF;\nEND {tag};\n").format(
            tag=tag, checks=sql.SQL("").join(checks))
    return block.as_string(None).encode()


def _strip_final_commit(tail: bytes) -> bytes | None:
    """*tail* without pg_restore's closing COMMIT line (None if there is none)."""
    at = tail.rfind(b"\n" + _COMMIT_LINE)
    if at >= 0:
        return tail[:at + 1] + tail[at + 1 + len(_COMMIT_LINE):]
    if tail.startswith(_COMMIT_LINE):
        return tail[len(_COMMIT_LINE):]
    return None


def _read(fh: IO[bytes]) -> str:
    fh.seek(0)
    return fh.read().decode(errors="replace").strip()


def _last_lines(text: str, n: int = 3) -> str:
    return " ".join(text.splitlines()[-n:])


def run_restore(restore_args: list[str], psql_args: list[str], env: dict[str, str], *,
                opening: bytes, check: bytes, drop_settings: list[bytes]) -> None:
    """Run pg_restore (``--single-transaction --file=-``) into psql as described above.

    *opening* runs first in the transaction; *check* runs last, before COMMIT;
    header lines ``SET <name> ...`` for *drop_settings* are left out. Returns when the
    restore is committed; raises BackupError when it was rolled back, and
    RestoreOutcomeUnknownError when psql lost its connection during COMMIT.
    """
    with tempfile.TemporaryFile() as psql_err, tempfile.TemporaryFile() as restore_err:
        producer = subprocess.Popen(restore_args, stdout=subprocess.PIPE, stderr=restore_err,
                                    stdin=subprocess.DEVNULL)
        consumer = subprocess.Popen(psql_args, env=env, stdin=subprocess.PIPE,
                                    stdout=subprocess.DEVNULL, stderr=psql_err)
        assert producer.stdout is not None and consumer.stdin is not None
        source, sink = cast(io.BufferedReader, producer.stdout), consumer.stdin
        commit_sent = False
        failure: str | None = None
        try:
            try:
                sink.write(b"BEGIN;\n" + opening)
                dropped_begin = False
                for _ in range(200):  # the header: \restrict, BEGIN and settings come first
                    line = source.readline()
                    if not line:
                        break
                    if not dropped_begin and line == b"BEGIN;\n":
                        dropped_begin = True  # ours is open already
                        continue
                    if any(line.startswith(b"SET " + name + b" ") for name in drop_settings):
                        continue
                    sink.write(line)
                    if line.startswith(b"SET row_security"):
                        break  # the last header setting
                held = b""
                while chunk := source.read1(_CHUNK):
                    held += chunk
                    if len(held) > HOLD_BACK:
                        sink.write(held[:-HOLD_BACK])
                        held = held[-HOLD_BACK:]
                code = producer.wait()
                if code != 0:
                    how = f"was killed by signal {-code}" if code < 0 else f"exited {code}"
                    failure = f"pg_restore {how} before the end of the backup"
                    detail = _last_lines(_read(restore_err))
                    if detail:
                        failure += f": {detail}"
                else:
                    tail = _strip_final_commit(held)
                    if tail is None:
                        failure = "pg_restore's script did not end with its COMMIT"
                    else:
                        sink.write(tail + check + _COMMIT_LINE)
                        commit_sent = True
            except BrokenPipeError:
                pass  # psql stopped at an error: its exit code and stderr say which
            finally:
                if not commit_sent:
                    with contextlib.suppress(BrokenPipeError, OSError):
                        sink.write(b"ROLLBACK;\n")
                with contextlib.suppress(BrokenPipeError, OSError):
                    sink.close()
            psql_code = consumer.wait()
        finally:
            # Reached with an exception too (e.g. Ctrl-C): never leave either running.
            for proc in (producer, consumer):
                if proc.poll() is None:
                    proc.kill()
                proc.wait()
        psql_text = _read(psql_err)
        if psql_code != 0 and failure is None:
            failure = _last_lines(psql_text) or f"psql exited {psql_code}"
            if producer.returncode not in (0, None) and not commit_sent:
                failure += f" (pg_restore exited {producer.returncode})"
        if failure is None:
            return
        if commit_sent and any(s in psql_text for s in _CONNECTION_LOST):
            raise RestoreOutcomeUnknownError(
                f"The connection was lost while the restore committed ({failure}); whether "
                "it is in cannot be known from here. Check the restored schemas' row counts "
                "against 'edulink-db backups list'.")
        raise BackupError(explain(failure))
