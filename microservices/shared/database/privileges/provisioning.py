"""Provisioning: apply the provisioning statements to a database in one transaction, then
repair drift and set passwords (:func:`provision`)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import psycopg

from ..config import LoginKind, derive_service_conninfo, login_role
from ..connections.direct import connect
from ..core.errors import ForeignRoleError, ProvisioningError
from ..topology import Service, Topology

# "X as X": the statements and the script live in roles, schemas, grants and script;
# they still import from here (re-exported), as before the split.
from .grants import AUDIT_INSERT_COLUMNS as AUDIT_INSERT_COLUMNS
from .grants import exposure_grant as exposure_grant
from .grants import reader_statements as reader_statements
from .grants import routine_statements as routine_statements
from .roles import RoleCreation as RoleCreation
from .roles import claim_roles
from .roles import managed_roles as managed_roles
from .roles import migrator_statements as migrator_statements
from .roles import set_role_password as set_role_password
from .schemas import RLS_HELPER as RLS_HELPER
from .script import PROVISION_LOCK as PROVISION_LOCK
from .script import provisioning_statements as provisioning_statements
from .script import render_postgresql_script as render_postgresql_script
from .statement import Statement as Statement

log = logging.getLogger(__name__)


@dataclass
class ProvisionReport:
    """What a provisioning run did."""

    database: str
    admin: str
    server_version: int
    statements: int = 0
    created_roles: list[str] = field(default_factory=list)
    adopted_roles: list[str] = field(default_factory=list)
    passwords_set: list[str] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)
    unrepaired: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    changed: bool = False
    duration_s: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "database": self.database,
            "admin": self.admin,
            "server_version": self.server_version,
            "statements": self.statements,
            "created_roles": self.created_roles,
            "adopted_roles": self.adopted_roles,
            "passwords_set": self.passwords_set,
            "repaired": self.repaired,
            "unrepaired": self.unrepaired,
            "notes": self.notes,
            "changed": self.changed,
            "duration_s": round(self.duration_s, 3),
        }


def _diagnose(exc: psycopg.Error) -> str:
    diag = exc.diag
    text = diag.message_primary or str(exc).strip()
    if diag.message_detail:
        text += f" ({diag.message_detail})"
    if diag.sqlstate == "42501" and ("superuser" in text.lower() or "attribute may" in text):
        # 15: "must be superuser to change bypassrls attribute"; 16+: "Only roles with the
        # BYPASSRLS attribute may change the BYPASSRLS attribute."
        text += (". This repair needs a superuser (on PostgreSQL 16+, or an admin that has "
                 "the attribute itself): have one run the statement")
    elif diag.sqlstate == "42501" and "role" in text:
        text += (
            ". On PostgreSQL 16+ a CREATEROLE admin may only alter roles it created or "
            "holds ADMIN OPTION on: have the role's creator run "
            "GRANT <role> TO <admin> WITH ADMIN OPTION, or drop the role and provision again"
        )
    return text


def check_admin(conn: psycopg.Connection[Any]) -> tuple[str, str, int]:
    """Fail early, with a clear message, if the admin cannot provision."""
    row = conn.execute(
        "SELECT current_user, current_database(), rolsuper, rolcreaterole,"
        " pg_catalog.has_database_privilege(current_database(), 'CREATE'),"
        " current_setting('server_version_num')::int"
        " FROM pg_catalog.pg_roles WHERE rolname = current_user"
    ).fetchone()
    assert row is not None
    user, database, is_super, createrole, can_create, version = row
    if not (is_super or createrole):
        raise ProvisioningError(
            f"The admin role {user!r} needs CREATEROLE to create service roles "
            "(superuser is not required). Run: ALTER ROLE "
            f"{user} CREATEROLE; as a role that may, or use another admin in DATABASE_URL."
        )
    if not can_create:
        raise ProvisioningError(
            f"The admin role {user!r} cannot create schemas in database {database!r}. "
            f"Run: GRANT CREATE ON DATABASE {database} TO {user};"
        )
    return user, database, version



def _repair_drift(
    conn: psycopg.Connection[Any],
    topology: Topology,
    report: ProvisionReport,
    progress: Callable[[str], None],
) -> None:
    """Remove what the grants above cannot: privileges the topology does not declare
    (granted by hand, or left over from an older topology).

    Runs inside the provisioning transaction, after the GRANTs, and only issues
    statements for differences that exist, so the common case costs one catalog
    read.  Each repair runs in a savepoint: one the admin may not perform (e.g.
    NOBYPASSRLS needs a superuser) is reported instead of aborting the run;
    ``verify`` will still fail on it.
    """
    from .catalog import read_catalog
    from .compare import compare

    # A repair can uncover another difference: REVOKE SELECT ON a table also revokes
    # the column grants on it, so a reader's hand-made table grant, once revoked,
    # leaves its exposed columns to grant again.  So look again after repairing, a
    # bounded number of times, never repeating a statement.
    attempted: set[str] = set()
    for _round in range(3):
        repaired_any = False
        for problem in compare(read_catalog(conn, topology), topology).problems:
            if problem.repair is None:
                continue
            statement = problem.repair.as_string(conn)
            if statement in attempted:
                continue
            attempted.add(statement)
            try:
                with conn.transaction():
                    conn.execute(problem.repair)
            except psycopg.Error as exc:
                report.unrepaired.append(f"{statement}: {_diagnose(exc)}")
                continue
            repaired_any = True
            report.repaired.append(statement)
            progress(f"repaired: {statement}")
        if not repaired_any:
            return


def _enable_statement_statistics(conn: psycopg.Connection[Any], report: ProvisionReport) -> None:
    """Install pg_stat_statements where we may (monitoring reads it per role).

    Best effort: it needs a superuser (or a platform that ships it installed, as
    Supabase does) and shared_preload_libraries; without it monitoring degrades
    gracefully, so a refusal is a note, not an error.
    """
    try:
        with conn.transaction():
            exists = conn.execute("SELECT 1 FROM pg_catalog.pg_extension"
                                  " WHERE extname = 'pg_stat_statements'").fetchone()
            if exists is None:
                conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
                report.notes.append("installed pg_stat_statements")
    except psycopg.Error as exc:
        report.notes.append("pg_stat_statements not installed "
                            f"({exc.diag.message_primary}); monitoring works without it")
    conn.commit()


def _can_log_in(params: dict[str, Any]) -> bool:
    try:
        with psycopg.connect(**{"connect_timeout": 10, **params}, autocommit=True):
            return True
    except psycopg.OperationalError as exc:
        # 28P01 invalid_password; libpq reports it only in the message text.
        if "password authentication failed" in str(exc) or getattr(
                getattr(exc, "diag", None), "sqlstate", None) == "28P01":
            return False
        raise


def _logins(
    topology: Topology,
    passwords: Callable[[Service], str | None],
    migrator_passwords: Callable[[Service], str | None] | None,
) -> list[tuple[Service, LoginKind, str]]:
    """Every LOGIN role whose password edulink-db manages: (service, kind, password)."""
    out: list[tuple[Service, LoginKind, str]] = []
    sources: list[tuple[LoginKind, Callable[[Service], str | None] | None]] = [
        ("runtime", passwords), ("migrator", migrator_passwords)]
    for kind, source in sources:
        if source is None:
            continue
        for svc in topology.services:
            password = source(svc)
            if password is not None:
                out.append((svc, kind, password))
    return out


def provision(
    admin: dict[str, Any],
    topology: Topology,
    passwords: Callable[[Service], str | None],
    *,
    migrator_passwords: Callable[[Service], str | None] | None = None,
    rotate: Iterable[str] = (),
    adopt: Iterable[str] = (),
    progress: Callable[[str], None] = lambda _msg: None,
) -> ProvisionReport:
    """Bring the database at *admin* in line with *topology*.

    *passwords* returns the password a service should log in with (``None``
    when the service is configured with its own URL and manages its own
    credentials); *migrator_passwords* likewise for its migrator role (without
    it, migrator roles get no password and cannot log in until one is set).
    Runtime and migrator roles get their password when created, when their
    service is listed in *rotate*, or when logging in with the configured
    password fails.
    All DDL runs in one transaction: on any error nothing is changed.

    Only roles edulink-db created (marked with :data:`MANAGED_COMMENT`) are
    touched.  A topology role that exists unmarked raises ForeignRoleError
    before anything changes, unless it is listed in *adopt*: then it is marked
    and managed like the others.  Superusers, the admin itself, platform roles
    and roles with BYPASSRLS, REPLICATION, CREATEROLE or CREATEDB are never
    adopted.

    The statements are :func:`.script.provisioning_statements`: idempotent, and the
    run holds their transaction-level advisory lock, so concurrent deploys serialise
    and a second run changes nothing.  It needs CREATEROLE and CREATE on the database,
    not superuser: that is what Supabase's ``postgres`` user has.
    """
    from .catalog import read_catalog

    started = time.perf_counter()
    rotate_set = set(rotate)
    logins = _logins(topology, passwords, migrator_passwords)
    with connect(admin, purpose="provision", autocommit=False, primary=True) as conn:
        user, database, version = check_admin(conn)
        conn.commit()
        report = ProvisionReport(database=database, admin=user, server_version=version)
        before = read_catalog(conn, topology)
        conn.commit()
        statements = provisioning_statements(topology)
        roles = managed_roles(statements)
        existing: set[str] = set()
        current = "checking existing roles"
        try:
            for index, stmt in enumerate(statements):
                current = stmt.comment
                conn.execute(stmt.query)
                if index == 0:  # holding the lock: now see which roles exist, and whose
                    current = "checking that the existing roles are edulink-db's"
                    try:
                        existing = claim_roles(conn, roles, adopt, report.adopted_roles,
                                           progress)
                    except ForeignRoleError:
                        conn.rollback()
                        raise
                    progress(f"provisioning {len(topology.services)} services in {database}")
            report.statements = len(statements)
            current = "repairing privileges that differ from the topology"
            _repair_drift(conn, topology, report, progress)
            report.created_roles = [r for r in roles if r not in existing]
            for svc, kind, password in logins:
                role = login_role(svc, kind)
                if role not in existing or svc.name in rotate_set:
                    current = f"setting the password of {role}"
                    set_role_password(conn, role, password)
                    report.passwords_set.append(role)
            conn.commit()
        except psycopg.Error as exc:
            conn.rollback()
            raise ProvisioningError(
                f"Provisioning failed at: {current}\n  {_diagnose(exc)}\n"
                "Nothing was changed (the transaction was rolled back)."
            ) from None

        # A role that existed already keeps its password unless the configured
        # one no longer works (e.g. the secrets file was replaced).
        for svc, kind, password in logins:
            role = login_role(svc, kind)
            if role in report.passwords_set:
                continue
            params = derive_service_conninfo(admin, svc, password, kind=kind)
            if not _can_log_in(params):
                progress(f"configured password of {role} was rejected: resetting it")
                set_role_password(conn, role, password)
                conn.commit()
                report.passwords_set.append(role)

        _enable_statement_statistics(conn, report)
        after = read_catalog(conn, topology)
        conn.commit()
    report.changed = before != after or bool(report.passwords_set)
    for item in report.unrepaired:
        log.warning("could not repair %s", item)
    report.duration_s = time.perf_counter() - started
    return report
