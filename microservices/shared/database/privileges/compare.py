"""Comparing the catalog with the topology: every difference as a :class:`.report.Problem`
(role, schema, object, privilege, the repair where one exists), in :func:`compare`."""

from __future__ import annotations

from psycopg import sql

from ..connections.location import LOCATION_TABLE, META_OWNER, META_SCHEMA
from ..topology import ROLE_SETTINGS, Topology
from .catalog import (
    ATTRIBUTE_KEYWORDS,
    DANGEROUS_ATTRIBUTES,
    KIND_NAMES,
    CatalogState,
    RoleState,
)
from .expected import (
    expected_access,
    expected_connection_limits,
    expected_default_privileges,
    expected_relation_privileges,
)
from .model import meta_readers, search_path_for
from .report import ExposureRow, Problem, VerifyReport, privilege_matrix


def _q(template: str, *parts: sql.Composable) -> sql.Composed:
    """Compose a repair statement; *template* holds only constant SQL keywords."""
    return sql.SQL(template).format(*parts)


def _grantee(role: str) -> sql.Composable:
    return sql.SQL("PUBLIC") if role == "PUBLIC" else sql.Identifier(role)


def _role_problems(state: CatalogState, topology: Topology) -> list[Problem]:
    problems: list[Problem] = []
    for svc in topology.services:
        rs = state.roles.get(svc.runtime_role)
        if rs is None:
            problems.append(Problem(svc.runtime_role, "", "role", "",
                                    "runtime role does not exist; run 'edulink-db provision'"))
            continue
        rid = sql.Identifier(rs.name)
        if not rs.attr("rolcanlogin"):
            problems.append(Problem(rs.name, "", "role", "LOGIN",
                                    "runtime role cannot log in (NOLOGIN)",
                                    _q("ALTER ROLE {} LOGIN", rid)))
        for attr in DANGEROUS_ATTRIBUTES:
            if rs.attr(attr):
                keyword = ATTRIBUTE_KEYWORDS[attr]
                problems.append(Problem(rs.name, "", "role", keyword,
                                        f"runtime role has {keyword}; it must not",
                                        _q(f"ALTER ROLE {{}} NO{keyword}", rid)))
        for granted in rs.member_of:
            problems.append(Problem(rs.name, "", "role", f"MEMBER OF {granted}",
                                    f"runtime role is a member of {granted} and inherits or can "
                                    "assume its privileges",
                                    _q("REVOKE {} FROM {}", sql.Identifier(granted), rid)))
        want_path = ", ".join(search_path_for(svc, topology))
        if rs.search_path != want_path:
            in_db = _in_database(state, rs, "search_path")
            repair = (_q("ALTER ROLE {}{} RESET search_path", rid, in_db) if in_db
                      else _q("ALTER ROLE {} SET search_path = {}", rid, sql.SQL(", ").join(
                          sql.Identifier(s) for s in search_path_for(svc, topology))))
            problems.append(Problem(rs.name, svc.schema, "role setting", "search_path",
                                    f"search_path is {rs.search_path!r}, expected {want_path!r}",
                                    repair))
        have, want = dict(rs.settings), dict(svc.role_settings)
        for key in sorted(ROLE_SETTINGS):
            if have.get(key) == want.get(key):
                continue
            in_db = _in_database(state, rs, key)
            repair = (_q(f"ALTER ROLE {{}}{{}} RESET {key}", rid, in_db) if in_db
                      else _q(f"ALTER ROLE {{}} SET {key} = {{}}", rid, sql.Literal(want[key]))
                      if key in want else _q(f"ALTER ROLE {{}} RESET {key}", rid))
            problems.append(Problem(rs.name, "", "role setting", key,
                                    f"{key} is {have.get(key)!r}, expected {want.get(key)!r}",
                                    repair))
    for owner in topology.owner_roles:
        os_ = state.roles.get(owner)
        if os_ is None:
            problems.append(Problem(owner, "", "role", "",
                                    "owner role does not exist; run 'edulink-db provision'"))
            continue
        oid_ = sql.Identifier(owner)
        if os_.attr("rolcanlogin"):
            problems.append(Problem(owner, "", "role", "LOGIN",
                                    "owner role can log in; it must be NOLOGIN",
                                    _q("ALTER ROLE {} NOLOGIN", oid_)))
        for attr in DANGEROUS_ATTRIBUTES:
            if os_.attr(attr):
                keyword = ATTRIBUTE_KEYWORDS[attr]
                problems.append(Problem(owner, "", "role", keyword, f"owner role has {keyword}",
                                        _q(f"ALTER ROLE {{}} NO{keyword}", oid_)))
        # Every migration runs as the owner role, with whatever it inherits: a membership
        # in pg_read_all_data, pg_execute_server_program or another service's role
        # would hand that to every migration file.  Owner roles are members of nothing.
        for granted in os_.member_of:
            problems.append(Problem(owner, "", "role", f"MEMBER OF {granted}",
                                    f"owner role is a member of {granted}; every migration "
                                    "runs as the owner and would inherit its privileges",
                                    _q("REVOKE {} FROM {}", sql.Identifier(granted), oid_)))
    return problems


def _in_database(state: CatalogState, rs: RoleState, key: str) -> sql.Composed | None:
    """`` IN DATABASE <this one>`` when *key* is set there (it overrides the role-level
    value, so that is where a repair must act), else None."""
    if key in rs.database_setting_keys:
        return _q(" IN DATABASE {}", sql.Identifier(state.database))
    return None


def _ownership_mark_problems(state: CatalogState) -> list[Problem]:
    """Topology roles that exist but that edulink-db neither created nor adopted."""
    return [
        Problem(rs.name, "", "role", "NOT MANAGED",
                "role exists but edulink-db did not create it (no 'edulink-db managed' "
                "comment): provision refuses to touch it; rename it in the topology or run "
                f"'edulink-db provision --adopt {rs.name}'")
        for rs in sorted(state.roles.values(), key=lambda r: r.name) if not rs.managed
    ]


def _connection_budget_problems(state: CatalogState, topology: Topology,
                                warnings: list[str]) -> list[Problem]:
    problems: list[Problem] = []
    for role, want in expected_connection_limits(state, topology).items():
        rs = state.roles.get(role)
        if rs is None or rs.connection_limit == want:
            continue
        have = "unlimited" if rs.connection_limit < 0 else str(rs.connection_limit)
        problems.append(Problem(role, "", "role", "CONNECTION LIMIT",
                                f"connection limit is {have}, expected {want}",
                                _q("ALTER ROLE {} CONNECTION LIMIT {}", sql.Identifier(role),
                                   sql.Literal(want))))
    if state.connection_budget is None:
        return problems
    max_conn, su_reserved, reserved, usable, headroom, _derived = state.connection_budget
    present = [state.roles[r] for r in topology.runtime_roles if r in state.roles]
    unlimited = [rs.name for rs in present if rs.connection_limit < 0]
    total = sum(rs.connection_limit for rs in present if rs.connection_limit >= 0)
    server = (f"max_connections {max_conn} - superuser_reserved_connections {su_reserved}"
              f" - reserved_connections {reserved} = {usable}")
    if unlimited or total > usable:
        what = (f"{', '.join(unlimited)} may open unlimited connections" if unlimited
                else f"the runtime roles' connection limits add up to {total}")
        problems.append(Problem(
            "*", "", "connection budget", "CONNECTION LIMIT",
            f"{what}, more than the server allows non-superusers ({server}): one busy "
            "service can then lock the others (and the admin) out. Lower connection_limit "
            "in the topology, or raise max_connections."))
    elif total > usable - headroom:
        warnings.append(f"the runtime roles' connection limits add up to {total}, leaving "
                        f"{usable - total} of {usable} usable connections ({server}) for the "
                        f"admin, migrations and monitoring; the recommended headroom is "
                        f"{headroom}")
    return problems


def _migrator_problems(state: CatalogState, topology: Topology) -> list[Problem]:
    """Migrator roles, as strictly as runtime roles: LOGIN, no dangerous attribute,
    NOINHERIT, exactly one membership (its owner role, not inherited), ``role``
    and ``search_path`` defaults, and no privilege or object of its own."""
    problems: list[Problem] = []
    for svc in topology.services:
        name = svc.migrator_role
        rs = state.roles.get(name)
        if rs is None:
            problems.append(Problem(name, "", "role", "",
                                    "migrator role does not exist; run 'edulink-db provision'"))
            continue
        mid, oid_ = sql.Identifier(name), sql.Identifier(svc.owner_role)
        if not rs.attr("rolcanlogin"):
            problems.append(Problem(name, "", "role", "LOGIN",
                                    "migrator role cannot log in (NOLOGIN)",
                                    _q("ALTER ROLE {} LOGIN", mid)))
        for attr in DANGEROUS_ATTRIBUTES:
            if rs.attr(attr):
                keyword = ATTRIBUTE_KEYWORDS[attr]
                problems.append(Problem(name, "", "role", keyword,
                                        f"migrator role has {keyword}; it must not",
                                        _q(f"ALTER ROLE {{}} NO{keyword}", mid)))
        if rs.attr("rolinherit"):
            problems.append(Problem(name, "", "role", "INHERIT",
                                    "migrator role has INHERIT; it must act only by being "
                                    f"{svc.owner_role} (NOINHERIT)",
                                    _q("ALTER ROLE {} NOINHERIT", mid)))
        for granted in sorted(set(rs.member_of) - {svc.owner_role}):
            problems.append(Problem(name, "", "role", f"MEMBER OF {granted}",
                                    f"migrator role is a member of {granted}; its only "
                                    f"membership must be {svc.owner_role}",
                                    _q("REVOKE {} FROM {}", sql.Identifier(granted), mid)))
        if svc.owner_role not in rs.member_of:
            problems.append(Problem(name, "", "role", f"MEMBER OF {svc.owner_role}",
                                    f"migrator role is not a member of {svc.owner_role}, so "
                                    "migrations cannot run",
                                    _q("GRANT {} TO {}", oid_, mid)))
        elif (name, svc.owner_role) in state.inheriting_grants:
            problems.append(Problem(name, "", "role", f"INHERIT {svc.owner_role}",
                                    f"migrator role inherits {svc.owner_role}'s privileges; "
                                    "the membership must be WITH INHERIT FALSE",
                                    _q("GRANT {} TO {} WITH INHERIT FALSE", oid_, mid)))
        have = dict(rs.settings)
        if have.get("role") != svc.owner_role:
            problems.append(Problem(name, "", "role setting", "role",
                                    f"role is {have.get('role')!r}, expected "
                                    f"{svc.owner_role!r}",
                                    _q("ALTER ROLE {} SET role = {}", mid,
                                       sql.Literal(svc.owner_role))))
        want_path = search_path_for(svc, topology)
        if rs.search_path != ", ".join(want_path):
            problems.append(Problem(name, svc.schema, "role setting", "search_path",
                                    f"search_path is {rs.search_path!r}, expected "
                                    f"{', '.join(want_path)!r}",
                                    _q("ALTER ROLE {} SET search_path = {}", mid,
                                       sql.SQL(", ").join(map(sql.Identifier, want_path)))))
        if rs.attr("rolinherit") or (name, svc.owner_role) in state.inheriting_grants:
            continue  # what it holds comes from the owner: fix the inheritance first
        for role, kind, schema, obj, priv in sorted(state.migrator_privileges):
            if role != name:
                continue
            repair: sql.Composed | None = None
            # priv and kind come from constants in the catalog query, never from names.
            if kind == "schema":
                repair = _q(f"REVOKE {priv} ON SCHEMA {{}} FROM {{}}",
                            sql.Identifier(schema), mid)
            elif kind in ("TABLE", "SEQUENCE"):
                repair = _q(f"REVOKE {priv} ON {kind} {{}} FROM {{}}",
                            sql.Identifier(schema, obj), mid)
            problems.append(Problem(name, schema, f"{kind.lower()} {obj}".strip(), priv,
                                    f"migrator role itself has {priv}; it must hold nothing "
                                    f"but its membership in {svc.owner_role}", repair))
    return problems


def _schema_problems(
    state: CatalogState, topology: Topology, warnings: list[str]
) -> list[Problem]:
    problems: list[Problem] = []
    access = expected_access(topology)
    for schema in topology.schemas:
        want_owner = topology.schema_owner(schema)
        got_owner = state.schema_owners.get(schema)
        if got_owner is None:
            problems.append(Problem("", schema, "schema", "",
                                    "schema does not exist; run 'edulink-db provision'"))
        elif got_owner != want_owner:
            problems.append(Problem(got_owner, schema, "schema", "OWNER",
                                    f"schema is owned by {got_owner}, expected {want_owner}",
                                    _q("ALTER SCHEMA {} OWNER TO {}", sql.Identifier(schema),
                                       sql.Identifier(want_owner))))
    for schema, priv in sorted(state.public_schema_privileges):
        problems.append(Problem("PUBLIC", schema, "schema", priv,
                                f"PUBLIC has {priv} on the schema",
                                _q(f"REVOKE {priv} ON SCHEMA {{}} FROM PUBLIC",
                                   sql.Identifier(schema))))
    for role in topology.runtime_roles:
        for schema in topology.schemas:
            usage = (role, schema, "USAGE") in state.schema_privileges
            if usage != access[(role, schema)].usage and schema in state.schema_owners:
                verb = "REVOKE USAGE ON SCHEMA {} FROM {}" if usage else \
                    "GRANT USAGE ON SCHEMA {} TO {}"
                problems.append(Problem(role, schema, "schema", "USAGE",
                                        ("has USAGE, which the topology does not grant" if usage
                                         else "lacks USAGE, which the topology grants"),
                                        _q(verb, sql.Identifier(schema), sql.Identifier(role))))
    for role, schema, priv in sorted(state.schema_privileges):
        if priv == "CREATE":
            repair = (_q("REVOKE CREATE ON SCHEMA {} FROM {}", sql.Identifier(schema),
                         sql.Identifier(role)) if schema in topology.schemas else None)
            problems.append(Problem(role, schema, "schema", "CREATE",
                                    "runtime role may create objects (DDL) in this schema",
                                    repair))
        elif schema not in topology.schemas and schema not in ("public", META_SCHEMA):
            # META_SCHEMA's grants are the project's own: _meta_problems checks them.
            warnings.append(f"{role} has USAGE on schema {schema}, which is outside the "
                            "topology (check what it grants)")
    return problems


def _relation_problems(state: CatalogState, topology: Topology) -> list[Problem]:
    problems: list[Problem] = []
    own_schema = {s.runtime_role: s.schema for s in topology.services}
    held: dict[tuple[str, str, str], set[str]] = {}
    for role, schema, name, priv in state.relation_privileges:
        held.setdefault((role, schema, name), set()).add(priv)
    for rel in sorted(state.relations, key=lambda r: (r.schema, r.name)):
        obj = f"{KIND_NAMES[rel.kind]} {rel.name}"
        qualified = sql.Identifier(rel.schema, rel.name)
        on = "SEQUENCE" if rel.kind == "S" else "TABLE"
        want_owner = topology.schema_owner(rel.schema)
        if rel.owner != want_owner:
            # ALTER TABLE ... OWNER TO also applies to views, sequences and foreign tables.
            problems.append(Problem(rel.owner, rel.schema, obj, "OWNER",
                                    f"owned by {rel.owner}, expected {want_owner}",
                                    _q("ALTER TABLE {} OWNER TO {}", qualified,
                                       sql.Identifier(want_owner))))
        for role in topology.runtime_roles:
            want = expected_relation_privileges(topology, rel, role)
            got = held.get((role, rel.schema, rel.name), set())
            if rel.kind != "S" and rel.schema != own_schema[role]:
                got = got - {"SELECT"}  # reads outside its own schema: _column_problems
            for priv in sorted(got - want):
                problems.append(Problem(role, rel.schema, obj, priv,
                                        f"has {priv}, which the topology does not grant",
                                        _q(f"REVOKE {priv} ON {on} {{}} FROM {{}}", qualified,
                                           sql.Identifier(role))))
            for priv in sorted(want - got):
                problems.append(Problem(role, rel.schema, obj, priv,
                                        f"lacks {priv}, which the topology grants"))
    kinds = {(r.schema, r.name): r.kind for r in state.relations}
    for schema, name, priv in sorted(state.public_relation_privileges):
        on = "SEQUENCE" if kinds.get((schema, name)) == "S" else "TABLE"
        problems.append(Problem("PUBLIC", schema, name, priv, f"PUBLIC has {priv}",
                                _q(f"REVOKE {priv} ON {on} {{}} FROM PUBLIC",
                                   sql.Identifier(schema, name))))
    return problems


def _column_list(columns: list[str]) -> sql.Composable:
    return sql.SQL(", ").join(map(sql.Identifier, columns))


def _column_problems(state: CatalogState, topology: Topology,
                     warnings: list[str]) -> tuple[list[Problem], list[ExposureRow]]:
    """Reads outside each runtime role's own schema, against the exposure.

    A reader may SELECT exactly the exposed columns of the services it reads, and
    only through column grants: a table-level SELECT is drift even when the table
    has no other column today, because it covers every column added later.
    """
    problems: list[Problem] = []
    readable: dict[tuple[str, str, str], tuple[list[str], bool]] = {}
    public: dict[tuple[str, str], list[str]] = {}
    for (role, schema, name, column), whole in state.column_reads.items():
        if role == "PUBLIC":
            public.setdefault((schema, name), []).append(column)
            continue
        cols, was_whole = readable.get((role, schema, name), ([], False))
        cols.append(column)
        readable[(role, schema, name)] = (cols, was_whole or whole)
    for (schema, name), cols in sorted(public.items()):
        problems.append(Problem(
            "PUBLIC", schema, f"table {name}", f"SELECT ({', '.join(cols)})",
            f"every role can read {name}.({', '.join(cols)}) through a column grant to PUBLIC",
            _q("REVOKE SELECT ({}) ON TABLE {} FROM PUBLIC", _column_list(cols),
               sql.Identifier(schema, name))))
    for svc in topology.services:
        role = svc.runtime_role
        reads = {s.schema: s for s in topology.readable_services(svc)}
        for (r, schema, name), (cols, whole) in sorted(readable.items()):
            if r != role:
                continue
            owner = reads.get(schema)
            exposed = set(dict(owner.exposes).get(name, ())) if owner else set()
            table = sql.Identifier(schema, name)
            extra = [c for c in cols if c not in exposed]
            whose = (f"{owner.name} exposes to it only ({', '.join(sorted(exposed))})"
                     if owner is not None and exposed else f"{name} is not exposed to {svc.name}")
            if whole:
                problems.append(Problem(
                    role, schema, f"table {name}", "SELECT",
                    "has table-level SELECT: every column, and every column added later, "
                    f"is readable, including ({', '.join(extra) or 'none today'}); {whose}",
                    _q("REVOKE SELECT ON TABLE {} FROM {}", table, sql.Identifier(role))))
            elif extra:
                problems.append(Problem(
                    role, schema, f"table {name}", f"SELECT ({', '.join(extra)})",
                    f"can read {name}.({', '.join(extra)}) beyond the exposure; {whose}",
                    _q("REVOKE SELECT ({}) ON TABLE {} FROM {}", _column_list(extra), table,
                       sql.Identifier(role))))
    rows: list[ExposureRow] = []
    for owner in topology.services:
        readers = [r.runtime_role for r in topology.readers_of(owner)]
        for name, columns in owner.exposes:
            present = state.exposed_relation_columns.get((owner.schema, name))
            if present is None:
                rows.append(ExposureRow(owner.name, owner.schema, name, columns,
                                        tuple(readers), "not created yet"))
                continue
            absent = [c for c in columns if c not in present]
            if absent:
                warnings.append(f"{owner.name} exposes {owner.schema}.{name}.("
                                f"{', '.join(absent)}), which does not exist: readers get "
                                "the other exposed columns; fix the topology or the migrations")
            state_label = "granted"
            for role in readers:
                cols, _whole = readable.get((role, owner.schema, name), ([], False))
                missing = [c for c in columns if c in present and c not in cols]
                if missing:
                    state_label = "differs"
                    problems.append(Problem(
                        role, owner.schema, f"table {name}", f"SELECT ({', '.join(missing)})",
                        f"cannot read {name}.({', '.join(missing)}), which {owner.name} "
                        "exposes to it",
                        _q("GRANT SELECT ({}) ON TABLE {} TO {}", _column_list(missing),
                           sql.Identifier(owner.schema, name), sql.Identifier(role))))
            if any(p.schema == owner.schema and p.object == f"table {name}"
                   and p.role in readers for p in problems):
                state_label = "differs"
            rows.append(ExposureRow(owner.name, owner.schema, name, columns, tuple(readers),
                                    state_label))
    return problems, rows


_OBJECT_TYPES = {"r": "tables", "S": "sequences", "f": "functions", "T": "types", "n": "schemas"}


def _default_privilege_problems(state: CatalogState, topology: Topology) -> list[Problem]:
    problems: list[Problem] = []
    want = expected_default_privileges(topology)
    for owner, schema, objtype, grantee, priv in sorted(want - state.default_privileges):
        problems.append(Problem(grantee, schema, f"default privileges of {owner}", priv,
                                f"future {_OBJECT_TYPES.get(objtype, objtype)} will lack {priv}"))
    for owner, schema, objtype, grantee, priv in sorted(state.default_privileges - want):
        objects = _OBJECT_TYPES.get(objtype, objtype)
        in_schema = _q(" IN SCHEMA {}", sql.Identifier(schema)) if schema else sql.SQL("")
        repair = _q(f"ALTER DEFAULT PRIVILEGES FOR ROLE {{}}{{}} REVOKE {priv} "
                    f"ON {objects.upper()} FROM {{}}",
                    sql.Identifier(owner), in_schema, _grantee(grantee))
        problems.append(Problem(grantee, schema or "(all schemas)",
                                f"default privileges of {owner}", priv,
                                f"future {objects} will get {priv}, "
                                "which the topology does not grant", repair))
    return problems


def _routine_problems(state: CatalogState) -> list[Problem]:
    """PUBLIC EXECUTE on a service's routines: any reader of an exposed table whose
    policy, view or default calls one would run it with the reader's privileges."""
    problems = [
        Problem("PUBLIC", schema, f"routine {signature}", "EXECUTE",
                "PUBLIC may execute it: another service reading this schema could be made "
                "to run it with its own privileges",
                # By oid: PostgreSQL spells the signature (quoting included) itself.
                _q("DO $do$ BEGIN EXECUTE 'REVOKE EXECUTE ON ROUTINE ' || "
                   "{}::pg_catalog.regprocedure::text || ' FROM PUBLIC'; END $do$",
                   sql.Literal(oid)))
        for schema, signature, oid in sorted(state.public_routines)
    ]
    problems += [
        Problem("PUBLIC", "(all schemas)", f"default privileges of {owner}", "EXECUTE",
                f"routines {owner} creates will be executable by PUBLIC",
                _q("ALTER DEFAULT PRIVILEGES FOR ROLE {} REVOKE EXECUTE ON ROUTINES FROM PUBLIC",
                   sql.Identifier(owner)))
        for owner in sorted(state.owners_with_public_routines)
    ]
    return problems


def _ownership_problems(state: CatalogState) -> list[Problem]:
    problems = [
        Problem(role, "", f"{kind_name} {name}", "OWNER",
                "runtime role owns an object: owners bypass RLS and can run DDL")
        for role, kind_name, name in sorted(state.runtime_owned)
    ]
    problems += [
        Problem(role, "", "database", priv, "runtime role may create schemas in the database",
                _q(f"REVOKE {priv} ON DATABASE {{}} FROM {{}}", sql.Identifier(state.database),
                   sql.Identifier(role)))
        for role, priv in sorted(state.database_privileges)
    ]
    return problems


def _meta_problems(state: CatalogState, topology: Topology) -> list[Problem]:
    """The project's meta schema (move-service's registry and journal), when present:
    owned by META_OWNER; USAGE on the schema and SELECT on the registry for
    :func:`.model.meta_readers` and nothing else for anyone (a PUBLIC grant from an
    earlier version, any write grant, any grant on the journal); and no member of
    META_OWNER that is not admin-class (it could redirect every pool)."""
    problems: list[Problem] = []
    readers = set(meta_readers(topology))
    owner = sql.Identifier(META_OWNER)
    for obj, got in sorted(state.meta_owners.items()):
        if got != META_OWNER:
            what = "schema" if obj == "schema" else f"table {obj}"
            repair = (_q("ALTER SCHEMA {} OWNER TO {}", sql.Identifier(META_SCHEMA), owner)
                      if obj == "schema" else
                      _q("ALTER TABLE {} OWNER TO {}", sql.Identifier(META_SCHEMA, obj), owner))
            problems.append(Problem(got, META_SCHEMA, what, "OWNER",
                                    f"owned by {got}, expected {META_OWNER}", repair))
    for obj, grantee, priv in sorted(state.meta_privileges):
        expected = grantee in readers and (
            (obj == "schema" and priv == "USAGE") or (obj == LOCATION_TABLE and priv == "SELECT"))
        if expected:
            continue
        if obj == "schema":
            what, repair = "schema", _q(f"REVOKE {priv} ON SCHEMA {{}} FROM {{}}",
                                        sql.Identifier(META_SCHEMA), _grantee(grantee))
        else:
            what, repair = f"table {obj}", _q(f"REVOKE {priv} ON TABLE {{}} FROM {{}}",
                                              sql.Identifier(META_SCHEMA, obj), _grantee(grantee))
        problems.append(Problem(grantee, META_SCHEMA, what, priv,
                                f"has {priv} on move-service's metadata, which only the "
                                "topology's roles may read (the registry) and only "
                                f"{META_OWNER} may write", repair))
    for member in sorted(state.meta_non_admin_members):
        problems.append(Problem(member, META_SCHEMA, f"role {META_OWNER}", "MEMBER",
                                f"is a member of {META_OWNER} but not an admin (superuser or "
                                "CREATEROLE): it can write the location registry",
                                _q("REVOKE {} FROM {}", owner, sql.Identifier(member))))
    return problems


def compare(state: CatalogState, topology: Topology) -> VerifyReport:
    """Every difference between *state* and what *topology* declares, and the role x
    schema matrix.  Anything the topology does not declare is a problem, including a
    privilege granted by hand."""
    report = VerifyReport(catalog_queries=state.queries)
    report.problems += _role_problems(state, topology)
    report.problems += _ownership_mark_problems(state)
    report.problems += _connection_budget_problems(state, topology, report.warnings)
    report.problems += _migrator_problems(state, topology)
    report.problems += _schema_problems(state, topology, report.warnings)
    report.problems += _relation_problems(state, topology)
    column_problems, report.exposure = _column_problems(state, topology, report.warnings)
    report.problems += column_problems
    report.problems += _default_privilege_problems(state, topology)
    report.problems += _routine_problems(state)
    report.problems += _ownership_problems(state)
    report.problems += _meta_problems(state, topology)
    report.matrix = privilege_matrix(state, topology)
    flagged = {(p.role, p.schema) for p in report.problems}
    for role, row in report.matrix.items():
        for schema in row:
            if (role, schema) in flagged:
                row[schema] += " !"
    return report
