"""Test material that nobody here designed for our code: real-shaped schemas.

- :func:`load_sample_schema` fills a service schema with ``tests/data/sample_schema.sql``
  (partitions at two levels, a default partition and one attached later, hash
  partitions, inheritance, an unlogged table, materialized views populated, stale and
  never populated, a view pg_dump splits into placeholder + rule, enums, domains,
  functions, triggers, RLS; about 13,000 rows).
- :func:`load_pagila` loads the Pagila sample database (a third party's, MIT-style
  licence) into a service schema, from ``EDULINK_TEST_PAGILA`` (a folder holding
  pagila-schema.sql and pagila-data.sql) or ``shared/data/pagila`` beside the checkout;
  :data:`PAGILA` is None (and its tests skip) without one. Its files are a third
  party's and stay out of this repository.
- :func:`make_supabase_like` gives a database the platform roles and schemas of a
  Supabase project and a non-superuser admin like Supabase's ``postgres``.
- :func:`snapshot` records what a schema holds (row counts of every leaf table,
  materialized views' state, sequences, object inventory) to compare before and
  after a backup-restore or a move.
"""

from __future__ import annotations

import os
import re
import secrets
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from microservices.shared.database.core.identifiers import validate_identifier

DATA = Path(__file__).parent / "data"
_pagila = Path(os.environ.get("EDULINK_TEST_PAGILA") or
               Path(__file__).resolve().parents[1].parent / "shared" / "data" / "pagila")
PAGILA: Path | None = _pagila if (_pagila / "pagila-schema.sql").is_file() else None


def _connect(params: dict[str, Any]) -> psycopg.Connection[Any]:
    return psycopg.connect(**params, autocommit=True)


def load_sample_schema(admin: dict[str, Any], schema: str, owner: str) -> None:
    """Create the sample objects and rows in *schema* (which must exist), as *owner*.
    *admin* must be able to SET ROLE *owner*."""
    text = (DATA / "sample_schema.sql").read_text().replace(
        "__SCHEMA__", sql.Identifier(validate_identifier(schema, "schema")).as_string(None))
    with _connect(admin) as conn:
        conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(owner)))
        conn.execute(text.encode())
        conn.execute("RESET ROLE")


def _rewrite_pagila(text: str, schema: str, owner: str) -> str:
    """Pagila's dump, aimed at *schema* and owned by *owner*; COPY data untouched."""
    out, in_copy = [], False
    for line in text.splitlines(keepends=True):
        if in_copy:
            in_copy = line != "\\.\n"
            out.append(line)
            continue
        if line.startswith("ALTER SCHEMA public") or line.startswith("COMMENT ON SCHEMA public"):
            continue
        line = line.replace("public.", f"{schema}.").replace("OWNER TO postgres",
                                                            f"OWNER TO {owner}")
        in_copy = line.startswith("COPY ") and line.rstrip().endswith("FROM stdin;")
        out.append(line)
    return "".join(out)


def load_pagila(admin: dict[str, Any], schema: str, owner: str, psql: Path) -> None:
    """Load Pagila's schema and data into *schema* with *psql*, objects owned by *owner*.
    *admin*: a superuser (Pagila's dump sets ownership of everything)."""
    assert PAGILA is not None
    validate_identifier(schema, "schema")
    validate_identifier(owner, "role")
    script = "".join(_rewrite_pagila((PAGILA / name).read_text(), schema, owner)
                     for name in ("pagila-schema.sql", "pagila-data.sql"))
    # Pagila creates its materialized view WITH NO DATA; an application would refresh it.
    script += f"\nREFRESH MATERIALIZED VIEW {schema}.rental_by_category;\n"
    env = {"PGPASSWORD": str(admin.get("password", "")), "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [str(psql), "-X", "-q", "-v", "ON_ERROR_STOP=1", "--single-transaction",
         "-h", str(admin["host"]), "-p", str(admin["port"]), "-U", str(admin["user"]),
         "-d", str(admin["dbname"])],
        input=script, capture_output=True, text=True, env=env, check=False, timeout=300)
    if result.returncode != 0:
        raise RuntimeError(f"loading Pagila failed: {result.stderr[-2000:]}")


@dataclass
class SchemaSnapshot:
    """What a schema holds, for comparison (``==``) across a backup-restore or a move."""

    rows: dict[str, int] = field(default_factory=dict)  # every leaf table, FROM ONLY
    matviews: dict[str, bool] = field(default_factory=dict)  # name -> populated
    sequences: dict[str, int] = field(default_factory=dict)  # name -> last_value
    objects: dict[str, int] = field(default_factory=dict)  # kind -> how many


_INVENTORY = """
SELECT 'relkind ' || c.relkind::text, count(*) FROM pg_class c
  JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %(s)s GROUP BY 1
UNION ALL SELECT 'partitions', count(*) FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
  JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %(s)s AND c.relispartition
UNION ALL SELECT 'inheritance', count(*) FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
  JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %(s)s AND NOT c.relispartition
UNION ALL SELECT 'functions', count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
  WHERE n.nspname = %(s)s
UNION ALL SELECT 'types', count(*) FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
  WHERE n.nspname = %(s)s AND t.typtype IN ('e', 'd', 'c') AND NOT EXISTS (
    SELECT 1 FROM pg_class c WHERE c.oid = t.typrelid AND c.relkind <> 'c')
UNION ALL SELECT 'triggers', count(*) FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
  JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %(s)s AND NOT t.tgisinternal
UNION ALL SELECT 'policies', count(*) FROM pg_policy p JOIN pg_class c ON c.oid = p.polrelid
  JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %(s)s
UNION ALL SELECT 'constraints', count(*) FROM pg_constraint k JOIN pg_namespace n
  ON n.oid = k.connamespace WHERE n.nspname = %(s)s
"""


def snapshot(params: dict[str, Any], schema: str) -> SchemaSnapshot:
    """Row counts of every leaf table (partitions, inheritance children and unlogged
    tables each on their own: ``FROM ONLY``), materialized views' populated flag,
    sequences' last values and the count of each object kind in *schema*.
    *params* must read every row (superuser, or an admin with BYPASSRLS)."""
    snap = SchemaSnapshot()
    with _connect(params) as conn:
        tables = conn.execute(
            "SELECT c.relname, c.relkind, c.relispopulated FROM pg_class c"
            " JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = %s AND c.relkind IN ('r', 'm', 'S') ORDER BY 1",
            [schema]).fetchall()
        for name, kind, populated in tables:
            ident = sql.Identifier(schema, name)
            if kind == "r":
                row = conn.execute(sql.SQL("SELECT count(*) FROM ONLY {}").format(ident))
                snap.rows[name] = int(row.fetchone()[0])  # type: ignore[index]
            elif kind == "m":
                snap.matviews[name] = bool(populated)
            else:
                row = conn.execute(sql.SQL("SELECT last_value FROM {}").format(ident))
                snap.sequences[name] = int(row.fetchone()[0])  # type: ignore[index]
        snap.objects = {k: int(n) for k, n in conn.execute(_INVENTORY, {"s": schema})}
    return snap


@dataclass
class SupabaseLike:
    """A database with Supabase's platform roles and schemas, and its admin."""

    admin: dict[str, Any]  # non-superuser: LOGIN CREATEROLE CREATEDB REPLICATION BYPASSRLS
    platform_schemas: list[str]


def make_supabase_like(superuser: dict[str, Any]) -> SupabaseLike:
    """Give the database of *superuser* (params with its dbname) Supabase's platform
    roles and schemas, and create an admin like Supabase's ``postgres``: not a
    superuser, CREATEROLE CREATEDB REPLICATION BYPASSRLS, CREATE on the database.
    Platform roles are cluster-wide and left in place (as on Supabase); drop the
    admin with conftest's ``drop_roles``."""
    text = (DATA / "supabase_platform.sql").read_text()
    name = f"supa_admin_{secrets.token_hex(3)}"
    password = secrets.token_urlsafe(16)
    with _connect(superuser) as conn:
        conn.execute(text.encode())
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN CREATEROLE CREATEDB REPLICATION BYPASSRLS"
                             " PASSWORD {}").format(sql.Identifier(name), sql.Literal(password)))
        conn.execute(sql.SQL("GRANT CREATE ON DATABASE {} TO {}").format(
            sql.Identifier(superuser["dbname"]), sql.Identifier(name)))
        # Supabase's postgres may read the platform's tables and act as its API roles.
        conn.execute(sql.SQL("GRANT anon, authenticated, service_role TO {}").format(
            sql.Identifier(name)))
        conn.execute(sql.SQL("GRANT SELECT ON ALL TABLES IN SCHEMA auth, storage TO {}").format(
            sql.Identifier(name)))
        schemas = [r[0] for r in conn.execute(
            "SELECT nspname FROM pg_namespace n JOIN pg_roles r ON r.oid = n.nspowner"
            " WHERE r.rolname IN ('supabase_admin', 'pgbouncer') ORDER BY 1")]
    return SupabaseLike(admin={**superuser, "user": name, "password": password},
                        platform_schemas=schemas)


def platform_regex() -> re.Pattern[str]:
    """Schema names of Supabase's platform (for asserting that none is in a backup)."""
    return re.compile(r"^(auth|storage|realtime|_realtime|extensions|graphql|graphql_public"
                      r"|vault|pgsodium|pgsodium_masks|supabase_\w+|net|cron|pgbouncer"
                      r"|_analytics)$")
