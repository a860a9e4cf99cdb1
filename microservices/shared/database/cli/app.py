"""The typer app of ``edulink-db`` and what every command group shares: options, output
consoles, exit codes (documented in :mod:`microservices.shared.database.cli`), error
rendering."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.table import Table

from .. import lifecycle
from ..config import Settings, load_settings
from ..core.errors import (
    ConfigError,
    EdulinkDBError,
    MigrationValidationError,
    VerificationError,
)
from ..privileges.verify import VerifyReport

EXIT_OK, EXIT_DIFFERS, EXIT_BAD_INPUT, EXIT_DATABASE = 0, 1, 2, 3

app = typer.Typer(
    name="edulink-db",
    help=(
        "The shared database layer of Edulink's microservices.\n\n"
        "Start here: 'edulink-db up' starts an embedded PostgreSQL in ./.edulink-db "
        "(or uses DATABASE_URL), creates every service's schema and roles from the "
        "topology, and verifies that PostgreSQL grants exactly what the topology declares.\n\n"
        "Configuration comes from the environment and ./.env (see docs/setup.md). "
        "Exit codes: 0 ok, 1 verify found differences, 2 bad input, 3 database error.\n\n"
        "Example:\n\n    edulink-db up"
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# Without a terminal (CI logs, pipes) rich would wrap the matrix at 80 columns.
out = Console(width=None if Console().is_terminal else 200)
err = Console(stderr=True, width=None if Console(stderr=True).is_terminal else 200)

TopologyOption = Annotated[
    Path | None,
    typer.Option("--topology", "-t", envvar="EDULINK_DB_TOPOLOGY",
                 help="Topology TOML file (default: Edulink's six services).",
                 show_default=False),
]
CaOption = Annotated[
    Path | None,
    typer.Option("--ca", show_default=False,
                 help="Root certificate (PEM) of the server: every connection then checks "
                      "who the server is (sslmode=verify-full). Default: "
                      "DATABASE_SSLROOTCERT. Example: --ca ./prod-ca-2021.crt"),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Machine-readable output on stdout.")]


def cli_settings(topology: Path | None, ca: Path | None = None) -> Settings:
    overrides: dict[str, Any] = {}
    if topology is not None:
        overrides["edulink_db_topology"] = topology
    if ca is not None:
        overrides["database_sslrootcert"] = ca
    return load_settings(**overrides)


def cli_progress() -> lifecycle.Progress:
    """Progress lines go to stderr, so that --json output on stdout stays parseable."""
    def show(msg: str) -> None:
        err.print(f"[dim]•[/dim] {msg}", highlight=False)
    return show


def fail_cli(exc: EdulinkDBError) -> NoReturn:
    code = EXIT_BAD_INPUT if isinstance(exc, ConfigError) else (
        EXIT_DIFFERS if isinstance(exc, VerificationError | MigrationValidationError)
        else EXIT_DATABASE)
    err.print(f"[bold red]error:[/bold red] {exc}", highlight=False, markup=True)
    raise typer.Exit(code)


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def render_verify(report: VerifyReport) -> None:
    schemas = list(next(iter(report.matrix.values()), {}).keys())
    table = Table(title="Privileges PostgreSQL grants (role x schema)", title_justify="left")
    table.add_column("runtime role")
    for schema in schemas:
        table.add_column(schema)
    for role, row in report.matrix.items():
        table.add_row(role, *[
            f"[red]{row[s]}[/red]" if row[s].endswith("!") else row[s] for s in schemas])
    out.print(table)
    out.print("rw = SELECT/INSERT/UPDATE/DELETE + sequences, r = SELECT, cols = SELECT on "
              "exposed columns only, usage = USAGE (no exposed table exists yet), append = "
              "INSERT into the audit log only, - = no access, ! = differs from the topology",
              style="dim")
    if report.exposure:
        exposure = Table(title="Exposure (column-level SELECT granted to readers)",
                         title_justify="left")
        for column in ("service", "table", "columns", "readers", "state"):
            exposure.add_column(column)
        for e in report.exposure:
            state = e.state if e.state != "differs" else f"[red]{e.state}[/red]"
            exposure.add_row(e.service, f"{e.schema}.{e.table}", ", ".join(e.columns),
                             ", ".join(e.readers) or "-", state)
        out.print(exposure)
    for warning in report.warnings:
        out.print(f"[yellow]warning:[/yellow] {warning}", highlight=False)
    if report.ok:
        out.print(f"[green]verify: OK[/green] — {report.catalog_queries} catalog queries, "
                  f"{report.logins_checked} service logins checked", highlight=False)
    else:
        out.print(f"[red]verify: {len(report.problems)} difference(s) from the topology[/red]")
        for p in report.problems:
            where = " ".join(x for x in (p.schema, p.object) if x)
            out.print(f"  [bold]{p.role or '-'}[/bold] {where} [cyan]{p.privilege}[/cyan]: "
                      f"{p.message}", highlight=False)


def render_unrepaired(items: list[str]) -> None:
    for item in items:
        out.print(f"[yellow]could not repair:[/yellow] {item} — run it as a superuser",
                  highlight=False)
