"""The SQL Server script: generated from the topology, checked in, parseable as T-SQL.

No SQL Server runs on these machines; this checks what can be checked here.
"""

from __future__ import annotations

import re
from importlib import resources

import pytest

from microservices.shared.database.privileges.sqlserver import (
    password_variable,
    render_sqlserver_script,
    split_batches,
)
from microservices.shared.database.topology import Topology, default_topology, parse_topology

sqlglot = pytest.importorskip("sqlglot")


def checked_in() -> str:
    return (resources.files("microservices.shared.database")
            / "sqlserver_schema_setup.sql").read_text(encoding="utf-8")


def code_of(batch: str) -> str:
    return "\n".join(line for line in batch.splitlines() if not line.strip().startswith("--"))


def test_checked_in_script_matches_the_generator() -> None:
    assert checked_in() == render_sqlserver_script(default_topology()), (
        "sqlserver_schema_setup.sql is stale: run 'edulink-db sql --dialect sqlserver "
        "-o microservices/shared/database/sqlserver_schema_setup.sql'")


@pytest.mark.parametrize("topology_name", ["default", "seven services"])
def test_every_batch_parses_as_tsql(topology_name: str) -> None:
    topology = default_topology() if topology_name == "default" else seven()
    batches = split_batches(render_sqlserver_script(topology))
    assert len(batches) > 20
    for batch in batches:
        sqlglot.parse(code_of(batch), read="tsql")  # raises on a syntax error
        # The statements run through sp_executesql parse too, where sqlglot knows them.
        for inner in re.findall(r"sp_executesql N'((?:[^']|'')*)'", batch):
            statement = inner.replace("''", "'")
            if statement.startswith(("CREATE TABLE", "CREATE FUNCTION", "GRANT", "CREATE ROLE")):
                sqlglot.parse(statement, read="tsql")


def seven() -> Topology:
    from microservices.shared.database.topology import default_topology_text

    return parse_topology(default_topology_text()
                          + '\n[services.analytics]\nreads = ["application"]\n')


@pytest.mark.parametrize("topology", [default_topology(), seven()],
                         ids=["default", "seven services"])
def test_everything_the_topology_implies_is_present(topology: Topology) -> None:
    script = render_sqlserver_script(topology)
    for svc in topology.services:
        role = svc.runtime_role
        assert f"CREATE SCHEMA [{svc.schema}] AUTHORIZATION [{svc.owner_role}]" in script
        assert f"CREATE ROLE [{svc.owner_role}]" in script
        assert f"CREATE LOGIN [{role}] WITH PASSWORD = " in script
        assert f"$({password_variable(svc)})" in script
        assert (f"CREATE USER [{role}] FOR LOGIN [{role}] WITH DEFAULT_SCHEMA = "
                f"[{svc.schema}]") in script
        assert (f"GRANT SELECT, INSERT, UPDATE, DELETE, EXECUTE ON SCHEMA::[{svc.schema}] "
                f"TO [{role}]") in script
        for other in topology.services:
            # Never a schema-level read: it would cover every column and future table.
            assert f"GRANT SELECT ON SCHEMA::[{other.schema}] TO [{role}]" not in script
            for table, columns in other.exposes:
                for column in columns:
                    grant = (f"GRANT SELECT ([{column}]) ON OBJECT::[{other.schema}]."
                             f"[{table}] TO [{role}]")
                    assert (grant in script) == (other.name in svc.reads), (role, grant)
        assert f"DENY ALTER, CONTROL, TAKE OWNERSHIP ON SCHEMA::[{svc.schema}] TO [{role}]" \
            in script
        assert f"GRANT INSERT ON [shared_schema].[audit_log] TO [{role}]" in script
        assert f"DENY SELECT, UPDATE, DELETE, ALTER ON [shared_schema].[audit_log] TO [{role}]" \
            in script
    assert "password_hash" not in script and "token_hash" not in script
    assert "SESSION_CONTEXT(N''current_user_id'')" in script
    assert "CREATE SECURITY POLICY [user_schema].[user_profile_policy]" in script
    assert "CHECK (db_role = USER_NAME())" in script


def test_no_password_is_ever_written() -> None:
    script = render_sqlserver_script(default_topology())
    for line in script.splitlines():
        if line.startswith("--"):
            continue
        if "PASSWORD" in line.upper() and "CREATE LOGIN" not in line:
            assert "$(" in line or "-v " in line or "Set the password" in line, line
    assert re.search(r"PASSWORD\s*=\s*N'[^$']", script) is None


def test_cli_prints_it() -> None:
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "microservices.shared.database", "sql",
                             "--dialect", "sqlserver"], capture_output=True, text=True,
                            check=False, timeout=60)
    assert result.returncode == 0 and result.stdout == checked_in()
