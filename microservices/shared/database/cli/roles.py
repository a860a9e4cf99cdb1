"""Role and privilege commands: ``provision``, ``verify``, ``reads``, ``sql``, ``url``,
``topology``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from .. import lifecycle
from ..config import admin_conninfo, mask_dsn, service_conninfo
from ..core.errors import (
    ConfigError,
    EdulinkDBError,
)
from ..privileges.provisioning import render_postgresql_script
from .app import (
    EXIT_DIFFERS,
    EXIT_OK,
    CaOption,
    JsonOption,
    TopologyOption,
    app,
    cli_progress,
    cli_settings,
    err,
    fail_cli,
    out,
    print_json,
    render_unrepaired,
    render_verify,
)
from .output_file import write_output


@app.command()
def provision(
    topology: TopologyOption = None,
    ca: CaOption = None,
    rotate_passwords: Annotated[
        list[str] | None,
        typer.Option("--rotate-passwords", "-r", metavar="SERVICE",
                     help="Issue a new generated password to SERVICE (repeatable)."),
    ] = None,
    adopt: Annotated[
        list[str] | None,
        typer.Option("--adopt", metavar="ROLE",
                     help="Take over ROLE, a topology role that exists but that edulink-db "
                          "did not create: mark it and manage it from now on (repeatable). "
                          "Never allowed for superusers, the admin, platform roles, or roles "
                          "with BYPASSRLS, REPLICATION, CREATEROLE or CREATEDB."),
    ] = None,
    json_out: JsonOption = False,
) -> None:
    """Create or update schemas, roles and grants so the database matches the topology.

    Also revokes privileges the topology does not declare (granted by hand, or left by an
    older topology). Idempotent and transactional: on error nothing changes. Needs an admin
    with CREATEROLE and CREATE on the database (superuser not required).

    Example:

        edulink-db provision --rotate-passwords
    """
    try:
        report = lifecycle.run_provision(
            cli_settings(topology, ca), rotate=rotate_passwords or [], adopt=adopt or [],
            progress=cli_progress())
    except EdulinkDBError as exc:
        fail_cli(exc)
    if json_out:
        print_json(report.as_dict())
    else:
        adopted = (f"{len(report.adopted_roles)} adopted ({', '.join(report.adopted_roles)}), "
                   if report.adopted_roles else "")
        out.print(f"provisioned {report.database} as {report.admin}: "
                  f"{len(report.created_roles)} roles created, {adopted}"
                  f"{len(report.passwords_set)} passwords set, "
                  f"{len(report.repaired)} privileges repaired, "
                  f"{'changed' if report.changed else 'no changes'}", highlight=False)
        render_unrepaired(report.unrepaired)
        for note in report.notes:
            out.print(f"note: {note}", style="dim", highlight=False)


@app.command("verify")
def verify_cmd(
    topology: TopologyOption = None,
    ca: CaOption = None,
    json_out: JsonOption = False,
    logins: Annotated[bool, typer.Option(help="Also log in as every service role.")] = True,
) -> None:
    """Compare what PostgreSQL really grants with the topology.

    Prints the role x schema matrix and every difference (role, schema, object,
    privilege), including privileges granted by hand. Exit code 1 on any difference.

    Example:

        edulink-db verify --json
    """
    try:
        report = lifecycle.run_verify(cli_settings(topology, ca), logins=logins)
    except EdulinkDBError as exc:
        fail_cli(exc)
    if json_out:
        print_json(report.as_dict())
    else:
        render_verify(report)
    raise typer.Exit(EXIT_OK if report.ok else EXIT_DIFFERS)


@app.command("reads")
def reads_cmd(
    topology: TopologyOption = None,
    ca: CaOption = None,
    json_out: JsonOption = False,
) -> None:
    """Reads of other services' data that pg_stat_statements saw beyond the exposure.

    Parses every statement each runtime role ran in this database and lists, per role
    and table, the columns it read that the topology does not expose to it, with call
    counts and queryids (never query texts). Exit code 1 when there are any: the
    topology no longer matches the code.

    Example:

        edulink-db reads
    """
    from ..monitoring.observed_reads import observed_reads

    try:
        settings = cli_settings(topology, ca)
        report = observed_reads(admin_conninfo(settings), settings.topology())
    except EdulinkDBError as exc:
        fail_cli(exc)
    if json_out:
        print_json(report.as_dict())
    else:
        if report.note:
            out.print(f"note: {report.note}", style="dim", highlight=False)
        if report.available:
            out.print(f"{report.statements} statement(s) of runtime roles read, "
                      f"{report.unparsed} unparsable, {report.hidden} withheld",
                      highlight=False)
        if report.ok:
            out.print("[green]reads: nothing beyond the exposure[/green]")
        else:
            table = Table(title="Reads beyond the exposure (pg_stat_statements)",
                          title_justify="left")
            for column in ("role", "table", "columns", "calls", "why", "queryids"):
                table.add_column(column)
            for r in report.reads:
                table.add_row(r.role, f"{r.schema}.{r.table}",
                              ", ".join(r.columns) or "(the table)", str(r.calls),
                              escape(r.reason), ", ".join(map(str, r.queryids[:5])))
            out.print(table)
    raise typer.Exit(EXIT_OK if report.ok else EXIT_DIFFERS)


@app.command("sql")
def sql_cmd(
    topology: TopologyOption = None,
    ca: CaOption = None,
    dialect: Annotated[str, typer.Option(help="postgresql or sqlserver")] = "postgresql",
    output: Annotated[Path | None, typer.Option("--output", "-o",
                                                help="Write to a file instead of stdout.")] = None,
) -> None:
    """Print the setup script generated from the topology: postgresql_schema_setup.sql, or
    with --dialect sqlserver the T-SQL sqlserver_schema_setup.sql (sqlcmd, GO batches).

    Example:

        edulink-db sql --dialect sqlserver -o sqlserver_schema_setup.sql
    """
    try:
        settings = cli_settings(topology, ca)
        if dialect == "postgresql":
            script = render_postgresql_script(settings.topology())
        elif dialect == "sqlserver":
            from ..privileges.sqlserver import render_sqlserver_script

            script = render_sqlserver_script(settings.topology())
        else:
            raise ConfigError(f"Unknown dialect {dialect!r}; use postgresql or sqlserver.")
        if output:
            write_output(output, script)
    except EdulinkDBError as exc:
        fail_cli(exc)
    if output:
        err.print(f"wrote {output}")
    else:
        sys.stdout.write(script)


@app.command()
def url(
    service: Annotated[str | None, typer.Argument(
        help="Service name (e.g. user). Omit for the admin connection.")] = None,
    topology: TopologyOption = None,
    ca: CaOption = None,
) -> None:
    """Show the connection URL of a service's runtime role (password masked).

    Passwords are never printed: services read them from EDULINK_DB_<SERVICE>_PASSWORD
    or from the 0600 secrets file in the edulink-db home.

    Example:

        edulink-db url user
    """
    try:
        settings = cli_settings(topology, ca)
        if service is None:
            out.print(mask_dsn(admin_conninfo(settings)), highlight=False)
        else:
            svc = settings.topology().service(service)
            out.print(mask_dsn(service_conninfo(svc, settings)), highlight=False)
    except EdulinkDBError as exc:
        fail_cli(exc)


@app.command("topology")
def topology_cmd(topology: TopologyOption = None, json_out: JsonOption = False) -> None:
    """Show the services, schemas, roles and read grants of the topology in use.

    Example:

        edulink-db topology --topology topology.toml
    """
    try:
        topo = cli_settings(topology).topology()
    except EdulinkDBError as exc:
        fail_cli(exc)
    if json_out:
        print_json({
            "services": [s.__dict__ for s in topo.services],
            "shared": topo.shared.__dict__,
        })
        return
    table = Table(title="Topology", title_justify="left")
    for col in ("service", "schema", "runtime role", "owner role", "reads", "django apps"):
        table.add_column(col)
    for s in topo.services:
        table.add_row(s.name, s.schema, s.runtime_role, s.owner_role,
                      ", ".join(s.reads) or "-", ", ".join(s.django_apps) or "-")
    out.print(table)
    out.print(f"shared: {topo.shared.schema} (owner {topo.shared.owner_role}), append-only "
              f"{topo.shared.audit_table}", highlight=False)
