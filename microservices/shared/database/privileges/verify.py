"""Verification: read the catalog as the admin, compare it with the topology and, given
passwords, log in as every runtime role (:func:`verify`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psycopg

from ..connections.direct import connect
from ..topology import Topology
from .catalog import read_catalog
from .compare import compare as compare

# "X as X": the comparison, its expectations and the report objects live in compare,
# expected and report; they still import from here (re-exported), as before the split.
from .expected import NO_ACCESS as NO_ACCESS
from .expected import Access as Access
from .expected import expected_access as expected_access
from .expected import expected_connection_limits as expected_connection_limits
from .expected import expected_default_privileges as expected_default_privileges
from .expected import expected_relation_privileges as expected_relation_privileges
from .report import ExposureRow as ExposureRow
from .report import Problem as Problem
from .report import VerifyReport as VerifyReport


def verify_logins(
    topology: Topology,
    passwords: Callable[[Any], str | None],
    report: VerifyReport,
    *,
    conninfo_for: Callable[[Any, str], dict[str, Any]],
) -> None:
    """Log in as every runtime role and check who the server says we are."""
    for svc in topology.services:
        password = passwords(svc)
        if password is None:
            continue
        params = conninfo_for(svc, password)
        try:
            with psycopg.connect(**{"connect_timeout": 10, **params}, autocommit=True) as conn:
                row = conn.execute(
                    "SELECT current_user, current_schemas(false)").fetchone()
        except psycopg.Error as exc:
            report.problems.append(Problem(
                svc.runtime_role, svc.schema, "login", "LOGIN",
                f"cannot log in with the configured password ({str(exc).strip().splitlines()[0]});"
                " run 'edulink-db provision' to reset it"))
            continue
        report.logins_checked += 1
        assert row is not None
        user, schemas = row
        if user != svc.runtime_role:
            report.problems.append(Problem(svc.runtime_role, "", "login", "LOGIN",
                                           f"logged in as {user}"))
        if not schemas or schemas[0] != svc.schema:
            report.problems.append(Problem(
                svc.runtime_role, svc.schema, "login", "search_path",
                f"effective schemas after login are {schemas}; {svc.schema} must come first"))


def verify(
    admin: dict[str, Any],
    topology: Topology,
    *,
    passwords: Callable[[Any], str | None] | None = None,
    conninfo_for: Callable[[Any, str], dict[str, Any]] | None = None,
) -> VerifyReport:
    """Read the catalog as the admin, compare it with *topology*, optionally test logins."""
    with connect(admin, purpose="verify privileges") as conn:
        report = compare(read_catalog(conn, topology), topology)
    if passwords is not None and conninfo_for is not None:
        verify_logins(topology, passwords, report, conninfo_for=conninfo_for)
    return report
