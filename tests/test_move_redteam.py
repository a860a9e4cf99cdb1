"""Red-team cases for move-service: writes that bypass the cutover's REVOKE, concurrent
runs, and a location that would weaken TLS."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from microservices.shared.database.connections.location import located_params
from microservices.shared.database.relocation import mover, run_move

from .conftest import SERVICE_PASSWORD, reachable_tempdir
from .test_move_service import INST, TOPOLOGY, _codes, _ctx, _leftovers, _p, _pair, _setup_source


@pytest.fixture(scope="module")
def root() -> Iterator[Path]:
    path = reachable_tempdir("edulink-move3-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_owner_privileged_writes_refused_after_flip(
        root: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Between the flip and the clean-up the source's tables still exist.  The owner
    role holds its privileges by ownership, so the REVOKE from the writers did not
    touch it: a migrator session opened before the cutover (NOLOGIN stops only new
    logins) and a SECURITY DEFINER function owned by the owner role (EXECUTE is
    PUBLIC's by default) still committed rows on the source that the target never got.
    After the flip both must be refused."""
    a, b = _pair(root, "owner")
    try:
        _setup_source(a, monkeypatch, tmp_path)
        with a.connect() as conn:
            # A schema of the owner's outside the moved one (e.g. a helper schema).
            conn.execute("CREATE SCHEMA hooks AUTHORIZATION institution_service_owner")
            conn.execute("GRANT USAGE ON SCHEMA hooks TO PUBLIC")
            conn.execute("SET ROLE institution_service_owner")
            conn.execute(
                "CREATE FUNCTION hooks.add_institution(c text) RETURNS void"
                " LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog AS"
                " $$INSERT INTO institution_schema.institutions_institution (code, name)"
                " VALUES (c, c)$$")
        migrator = psycopg.connect(**{**a.params, "user": INST.migrator_role,
                                      "password": SERVICE_PASSWORD}, autocommit=True)
        other = next(s for s in TOPOLOGY.services if s.name != INST.name).runtime_role
        outcome: dict[str, BaseException | None] = {}
        real_cleanup = mover.cleanup

        def attempt(what: str, conn: psycopg.Connection[Any], query: str) -> None:
            try:
                conn.execute(query)
                outcome[what] = None
            except psycopg.Error as exc:
                outcome[what] = exc

        def writes_then_cleanup(ctx: mover.MoveContext) -> None:
            attempt("migrator", migrator, "INSERT INTO institution_schema."
                    "institutions_institution (code, name) VALUES ('by-migrator', 'x')")
            with psycopg.connect(**{**a.params, "user": other,
                                    "password": SERVICE_PASSWORD}, autocommit=True) as rt:
                attempt("definer", rt, "SELECT hooks.add_institution('by-definer')")
            real_cleanup(ctx)

        monkeypatch.setattr(mover, "cleanup", writes_then_cleanup)
        run_move(_ctx(a, b))
        migrator.close()
        assert set(outcome) == {"migrator", "definer"}
        for what, exc in outcome.items():
            assert isinstance(exc, psycopg.errors.InsufficientPrivilege), (what, exc)
        assert not {"by-migrator", "by-definer"} & _codes(a, "institution_schema_moved_1")
        assert "seed500" in _codes(b)
        assert _leftovers(a) == [] and _leftovers(b) == []
    finally:
        a.destroy()
        b.destroy()


@pytest.mark.parametrize("where,expected", [
    ("host=new port=5432 dbname=edulink", "verify-full"),          # no sslmode: keep home's
    ("host=new port=5432 dbname=edulink sslmode=disable", "verify-full"),  # never weaker
    ("host=new port=5432 dbname=edulink sslmode=prefer", "verify-full"),
])
def test_location_never_weakens_tls(where: str, expected: str) -> None:
    """A pool configured with sslmode=verify-full at home must not follow a move to a
    location without TLS verification: the registry's location comes from the admin's
    --to URL, whose sslmode (often absent) was chosen for the admin's session, and
    libpq's default, prefer, lets a man in the middle read every row (SCRAM keeps
    only the password safe)."""
    home = {"host": "home", "port": "5432", "dbname": "edulink", "user": "u",
            "password": "pw", "sslmode": "verify-full", "sslrootcert": "/ca.pem"}
    params = located_params(home, where)
    assert params["host"] == "new"
    assert params["sslmode"] == expected
    assert params["sslrootcert"] == "/ca.pem"


def test_location_may_strengthen_tls_and_drops_foreign_keys() -> None:
    """A location may ask for more (verify-full where home said nothing); keys outside
    the location's (a password, options, passfile, service) are never taken from it."""
    home = {"host": "home", "port": "5432", "dbname": "edulink", "user": "u",
            "password": "pw"}
    params = located_params(home, "host=new port=6000 dbname=d sslmode=verify-full "
                                  "password=evil user=postgres options='-c role=x' "
                                  "passfile=/etc/passwd service=evil")
    assert params == {"host": "new", "port": "6000", "dbname": "d", "sslmode": "verify-full",
                      "user": "u", "password": "pw", "require_auth": "scram-sha-256"}


def test_concurrent_runs_refused(root: Path, monkeypatch: pytest.MonkeyPatch,
                                 tmp_path: Path) -> None:
    """Two deploys both run ``--resume`` (or one aborts while the other resumes): the
    journal alone let both through, each re-keying the temporary role and dropping
    the other's replication.  While one run holds the move, others are refused."""
    import signal

    from microservices.shared.database.core.errors import MoveError
    from microservices.shared.database.relocation import abort

    from .test_move_service import _cli, _wait_output

    a, b = _pair(root, "twice")
    try:
        _setup_source(a, monkeypatch, tmp_path)
        first = _cli(a, b, hold="copy")
        _wait_output(first, "holding at phase copy")
        try:
            def resume() -> object:
                return run_move(_ctx(a, b), resume=True)

            def undo() -> object:
                abort(_ctx(a, b))
                return None

            for attempt in (resume, undo):
                with pytest.raises(MoveError, match="another move-service run") as info:
                    attempt()
                assert "server pid unknown" not in str(info.value)
                assert "institution" in str(info.value)
            assert "seed500" not in _codes(b)  # the refused resume copied nothing
        finally:
            first.send_signal(signal.SIGKILL)
            first.wait()
        # The killed run's session ended with it: its lock is gone, resume finishes.
        run_move(_ctx(a, b), resume=True)
        assert "seed500" in _codes(b)
        assert _leftovers(a) == [] and _leftovers(b) == []
    finally:
        a.destroy()
        b.destroy()


def test_moving_a_moved_service_from_its_old_server_refused(
        root: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """After a move the home server holds an empty re-provisioned schema.  A second
    ``move-service institution --to C`` without ``--from`` passed the preflight (no
    tables, nothing to refuse), copied that empty schema to C and flipped the registry
    there: the service's pools followed to an empty schema, its data left behind."""
    from psycopg import sql

    from microservices.shared.database.core.errors import MoveError

    a, b = _pair(root, "again")
    try:
        _setup_source(a, monkeypatch, tmp_path)
        run_move(_ctx(a, b))
        with a.connect() as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier("third")))
        third = {**_p(a), "dbname": "third"}
        ctx = _ctx(a, b)
        ctx.target = third
        with pytest.raises(MoveError, match=r"lives on .*--from") as info:
            run_move(ctx)
        assert "port=" in str(info.value) and SERVICE_PASSWORD not in str(info.value)
        with a.connect() as conn:
            row = conn.execute("SELECT location FROM edulink_db_meta.service_location"
                               " WHERE service = 'institution'").fetchone()
        assert row is not None and f"port={b.params['port']}" in row[0]
        assert "seed500" in _codes(b)
        assert _leftovers(a) == [] and _leftovers(b) == []
    finally:
        a.destroy()
        b.destroy()
