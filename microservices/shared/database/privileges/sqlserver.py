"""The SQL Server setup script, generated from the same topology as the PostgreSQL one.

``edulink-db sql --dialect sqlserver`` prints it; ``sqlserver_schema_setup.sql`` is
the checked-in copy for the default topology (a test compares them). Run it with
sqlcmd, giving every service's password as a variable, never in the file:

    sqlcmd -S host -d edulink -i sqlserver_schema_setup.sql \\
        -v AUTH_SERVICE_PASSWORD="..." USER_SERVICE_PASSWORD="..." ...

The privilege model matches PostgreSQL's:

==========================  ===============================================
PostgreSQL                  SQL Server
==========================  ===============================================
NOLOGIN owner role          database role owning the schema
LOGIN runtime role          login + database user (DEFAULT_SCHEMA = own)
role-level search_path      the user's DEFAULT_SCHEMA
GRANT ... ON ALL TABLES +   GRANT ... ON SCHEMA:: (covers later tables too)
ALTER DEFAULT PRIVILEGES
no CREATE on any schema     DENY ALTER/CONTROL on schemas, DENY CREATE ... on the database
append-only audit log       GRANT INSERT, DENY UPDATE/DELETE; CHECK (db_role = USER_NAME())
RLS + current_user_id()     SECURITY POLICY + inline predicate on SESSION_CONTEXT
==========================  ===============================================

Every statement is guarded (``IF ... IS NULL`` / ``NOT EXISTS``), so the script is
safe to run again. Statements that T-SQL requires to start a batch (CREATE SCHEMA,
CREATE FUNCTION, CREATE SECURITY POLICY) run through ``sp_executesql``. Identifiers
are validated by the topology and bracket-quoted; passwords are sqlcmd variables
and the script refuses to run if one was not given.
"""

from __future__ import annotations

from ..topology import Service, Topology

PASSWORD_VARIABLE = "{name}_SERVICE_PASSWORD"  # noqa: S105 - a sqlcmd variable name
PREDICATE_FUNCTION = "fn_current_user_predicate"


def q(name: str) -> str:
    """Bracket-quote a (validated) identifier."""
    return "[" + name.replace("]", "]]") + "]"


def n(text: str) -> str:
    """An N'...' literal."""
    return "N'" + text.replace("'", "''") + "'"


def _exec(statement: str) -> str:
    return f"EXEC sys.sp_executesql {n(statement)};"


def _guarded(condition: str, *statements: str) -> str:
    body = "\n".join(f"    {s}" for s in statements)
    return f"IF {condition}\nBEGIN\n{body}\nEND"


def password_variable(service: Service) -> str:
    return PASSWORD_VARIABLE.format(name=service.name.upper())


def _login(service: Service) -> str:
    role, var = service.runtime_role, password_variable(service)
    return _guarded(
        f"NOT EXISTS (SELECT 1 FROM sys.server_principals WHERE name = {n(role)})",
        f"DECLARE @password NVARCHAR(128) = N'$({var})';",
        # Compared with the token built in two pieces, which sqlcmd leaves alone: when the
        # variable was not given, the password would be the literal token.
        f"IF @password = N'$' + N'({var})' OR @password = N'' RAISERROR(N'Set the password "
        f"of {role}: sqlcmd -v {var}=...', 16, 1);",
        f"DECLARE @sql NVARCHAR(MAX) = N'CREATE LOGIN {q(role)} WITH PASSWORD = ' "
        f"+ QUOTENAME(@password, N'''') + N', CHECK_POLICY = ON';",
        "EXEC sys.sp_executesql @sql;",
    )


def column_grant(schema: str, table: str, column: str, role: str) -> str:
    """GRANT SELECT on one exposed column, if the table and the column exist yet.

    As on PostgreSQL, a column grant never covers columns added later; tables are
    created by migrations after this script, so run it again after migrating.
    """
    return (f"IF COL_LENGTH({n(f'{q(schema)}.{q(table)}')}, {n(column)}) IS NOT NULL "
            + _exec(f"GRANT SELECT ({q(column)}) ON OBJECT::{q(schema)}.{q(table)} "
                    f"TO {q(role)}"))


def _principal_exists(name: str) -> str:
    return f"NOT EXISTS (SELECT 1 FROM sys.database_principals WHERE name = {n(name)})"


def batches(topology: Topology) -> list[tuple[str, str]]:
    """(comment, batch) pairs in order; each batch ends with GO in the script."""
    shared = topology.shared
    out: list[tuple[str, str]] = [("Run with sqlcmd so that passwords come from -v variables.",
                                   "SET NOCOUNT ON;")]
    for owner in topology.owner_roles:
        out.append((f"Owner role {owner}: owns a schema; no login.",
                    _guarded(_principal_exists(owner), _exec(f"CREATE ROLE {q(owner)}"))))
    for svc in topology.services:
        out.append((f"Login of service {svc.name} (server level).", _login(svc)))
    for schema in topology.schemas:
        owner = topology.schema_owner(schema)
        out.append((f"Schema {schema}, owned by {owner}.",
                    _guarded(f"SCHEMA_ID({n(schema)}) IS NULL",
                             _exec(f"CREATE SCHEMA {q(schema)} AUTHORIZATION {q(owner)}"))))
    for svc in topology.services:
        role = svc.runtime_role
        out.append((f"Database user of {svc.name}: DEFAULT_SCHEMA is PostgreSQL's search_path.",
                    _guarded(_principal_exists(role),
                             _exec(f"CREATE USER {q(role)} FOR LOGIN {q(role)} "
                                   f"WITH DEFAULT_SCHEMA = {q(svc.schema)}"))))
        grants = [
            _exec(f"GRANT SELECT, INSERT, UPDATE, DELETE, EXECUTE ON SCHEMA::{q(svc.schema)} "
                  f"TO {q(role)}"),
            # Readers get the exposed columns, never the schema: a schema-level SELECT
            # would cover every column and every table created later.  REVOKE drops the
            # schema-level grant an older script made.
            *[_exec(f"REVOKE SELECT ON SCHEMA::{q(other.schema)} FROM {q(role)}")
              for other in topology.readable_services(svc)],
            *[column_grant(other.schema, table, column, role)
              for other in topology.readable_services(svc)
              for table, columns in other.exposes for column in columns],
            # No DDL: not on its own schema, nor anywhere in the database.
            *[_exec(f"DENY ALTER, CONTROL, TAKE OWNERSHIP ON SCHEMA::{q(schema)} TO {q(role)}")
              for schema in topology.schemas],
            _exec(f"DENY CREATE TABLE, CREATE VIEW, CREATE PROCEDURE, CREATE FUNCTION, "
                  f"CREATE SCHEMA TO {q(role)}"),
        ]
        out.append((f"{role}: its own schema, the schemas it may read "
                    f"({', '.join(svc.reads) or 'none'}), and no DDL.",
                    _guarded(f"USER_ID({n(role)}) IS NOT NULL", *grants)))
    audit = f"{q(shared.schema)}.{q(shared.audit_table)}"
    out.append(("The append-only audit log; the CHECK makes db_role the real inserter.",
                _guarded(f"OBJECT_ID({n(f'{shared.schema}.{shared.audit_table}')}, N'U') IS NULL",
                         _exec(
                             f"CREATE TABLE {audit} ("
                             "id BIGINT IDENTITY(1, 1) NOT NULL PRIMARY KEY, "
                             "occurred_at DATETIMEOFFSET NOT NULL DEFAULT SYSDATETIMEOFFSET(), "
                             "db_role SYSNAME NOT NULL DEFAULT USER_NAME(), "
                             "service_name NVARCHAR(100) NOT NULL, "
                             "action NVARCHAR(200) NOT NULL, "
                             "resource_type NVARCHAR(200) NOT NULL, "
                             "resource_id NVARCHAR(200) NULL, "
                             "user_id NVARCHAR(200) NULL, "
                             "details NVARCHAR(MAX) NOT NULL DEFAULT N'{}', "
                             f"CONSTRAINT {q(shared.audit_table + '_db_role_is_inserter')} "
                             "CHECK (db_role = USER_NAME()), "
                             f"CONSTRAINT {q(shared.audit_table + '_details_json')} "
                             "CHECK (ISJSON(details) = 1))"))))
    for svc in topology.services:
        role = svc.runtime_role
        out.append((f"{role} may append to the audit log; never change or remove entries.",
                    _guarded(f"USER_ID({n(role)}) IS NOT NULL",
                             _exec(f"GRANT INSERT ON {audit} TO {q(role)}"),
                             # ALTER would allow TRUNCATE; security predicates need no
                             # EXECUTE grant, so nothing else in the shared schema is granted.
                             _exec(f"DENY SELECT, UPDATE, DELETE, ALTER ON {audit} "
                                   f"TO {q(role)}"))))
    predicate = f"{q(shared.schema)}.{q(PREDICATE_FUNCTION)}"
    out.append((
        "RLS predicate: the counterpart of current_user_id(); SESSION_CONTEXT is set per "
        "request with sp_set_session_context @key = N'current_user_id'.",
        _guarded(f"OBJECT_ID({n(f'{shared.schema}.{PREDICATE_FUNCTION}')}) IS NULL",
                 _exec(f"CREATE FUNCTION {predicate}(@user_id NVARCHAR(200)) RETURNS TABLE "
                       "WITH SCHEMABINDING AS RETURN SELECT 1 AS allowed "
                       "WHERE @user_id = CAST(SESSION_CONTEXT(N'current_user_id') "
                       "AS NVARCHAR(200))"))))
    user = next((s for s in topology.services if s.name == "user"), None)
    if user is not None:
        table = f"{q(user.schema)}.{q('profiles_userprofile')}"
        policy = f"{q(user.schema)}.{q('user_profile_policy')}"
        out.append((
            "The seed's policy on profiles, once the reference schema created the table "
            "(run the script again after migrating): filter and block predicates.",
            _guarded(
                f"OBJECT_ID({n(f'{user.schema}.profiles_userprofile')}, N'U') IS NOT NULL "
                f"AND OBJECT_ID({n(f'{user.schema}.user_profile_policy')}) IS NULL",
                _exec(f"CREATE SECURITY POLICY {policy} "
                      f"ADD FILTER PREDICATE {predicate}(CAST([user_id] AS NVARCHAR(200))) "
                      f"ON {table}, "
                      f"ADD BLOCK PREDICATE {predicate}(CAST([user_id] AS NVARCHAR(200))) "
                      f"ON {table} AFTER INSERT WITH (STATE = ON)"))))
    return out


def render_sqlserver_script(topology: Topology) -> str:
    """The whole script, batches separated by GO."""
    lines = [
        "-- edulink-db: SQL Server schema and role setup.",
        "-- GENERATED from the topology by `edulink-db sql --dialect sqlserver`; do not edit.",
        "-- Services: " + ", ".join(f"{s.name} ({s.schema})" for s in topology.services),
        "--",
        "-- Run with sqlcmd, passwords as variables (never written here):",
        "--   sqlcmd -S HOST -d DATABASE -i sqlserver_schema_setup.sql -v "
        + " ".join(f"{password_variable(s)}=..." for s in topology.services),
        "-- Idempotent. NOT TESTED AGAINST A REAL SQL SERVER: see DATABASE_COMPATIBILITY.md.",
        "",
    ]
    for comment, batch in batches(topology):
        lines.append(f"-- {comment}")
        lines.append(batch)
        lines.append("GO")
        lines.append("")
    return "\n".join(lines)


def split_batches(script: str) -> list[str]:
    """The batches of a script (the text between GO lines), comments included."""
    out: list[str] = []
    current: list[str] = []
    for line in script.splitlines():
        if line.strip().upper() == "GO":
            out.append("\n".join(current).strip())
            current = []
        else:
            current.append(line)
    tail = "\n".join(current).strip()
    if tail and not all(x.startswith("--") for x in tail.splitlines() if x.strip()):
        out.append(tail)
    return [b for b in out if b]
