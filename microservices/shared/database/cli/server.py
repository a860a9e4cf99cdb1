"""Server commands: ``up``, ``init``, ``down``, ``status``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .. import lifecycle
from ..core.errors import (
    ConfigError,
    EdulinkDBError,
)
from ..server.embedded import EmbeddedServer
from .app import (
    EXIT_DATABASE,
    EXIT_DIFFERS,
    EXIT_OK,
    CaOption,
    JsonOption,
    TopologyOption,
    app,
    cli_progress,
    cli_settings,
    fail_cli,
    out,
    print_json,
    render_unrepaired,
    render_verify,
)


@app.command()
def up(
    topology: TopologyOption = None,
    ca: CaOption = None,
    json_out: JsonOption = False,
) -> None:
    """Bring up a working database: start, provision, migrate, verify.

    Starts the embedded PostgreSQL when no DATABASE_URL/DATABASE_HOST is set, creates every
    service's schema and roles from the topology, applies pending migrations (./migrations
    after 'edulink-db init', else the reference schema), and verifies what PostgreSQL grants.

    Safe to run again at any time (and from several processes at once): a second run
    changes nothing.

    Example:

        edulink-db up --json
    """
    try:
        settings = cli_settings(topology, ca)
        report = lifecycle.run_up(settings, progress=cli_progress())
    except EdulinkDBError as exc:
        fail_cli(exc)
    if json_out:
        print_json(report.as_dict())
    else:
        prov = report.provision
        out.print(f"database: {report.target}" + (" (embedded)" if report.embedded else ""),
                  highlight=False)
        applied = sum(len(m["applied"]) + len(m["resumed"]) for m in report.migrations.values())
        out.print(f"migrate: {applied} migration(s) applied", highlight=False)
        out.print(f"provision: {len(prov.created_roles)} roles created, "
                  f"{len(prov.passwords_set)} passwords set, "
                  f"{len(prov.repaired)} privileges repaired, "
                  f"{'changed' if prov.changed else 'no changes'} ({prov.duration_s:.2f}s)",
                  highlight=False)
        render_unrepaired(prov.unrepaired)
        render_verify(report.verify)
        if report.embedded:
            out.print("Next: 'edulink-db url user' shows a service's connection URL; "
                      "'edulink-db down' stops the embedded server.", style="dim")
    raise typer.Exit(EXIT_OK if report.verify.ok else EXIT_DIFFERS)


@app.command()
def init(
    directory: Annotated[Path, typer.Argument(
        help="The project directory (default: the current one).")] = Path("."),
    empty: Annotated[bool, typer.Option(
        "--empty", help="Empty service folders instead of the reference migrations.")] = False,
    topology: TopologyOption = None,
    json_out: JsonOption = False,
) -> None:
    """Start a project: migrations/<service>/ for every service (the reference migrations
    that 'up' applies, or empty with --empty), a commented .env.example and topology.toml.

    Never overwrites: existing files and service folders are kept as they are. 'up' and
    'migrate' then use ./migrations. No database is needed.

    Example:

        edulink-db init --empty
    """
    from ..migrations.scaffold import init_project

    try:
        report = init_project(directory, cli_settings(topology), empty=empty)
    except EdulinkDBError as exc:
        fail_cli(exc)
    if json_out:
        print_json(report.as_dict())
        return
    out.print(f"init: {report.directory}", highlight=False)
    for path in report.created:
        out.print(f"  created {path}", highlight=False)
    for path in report.kept:
        out.print(f"  [dim]kept    {path} (exists)[/dim]", highlight=False)
    for note in report.notes:
        out.print(f"note: {note}", style="dim", highlight=False)
    out.print("Next: 'edulink-db up' applies ./migrations; add your changes as new files "
              "(migrations/<service>/V2__<change>.sql); settings are in .env.example.",
              highlight=False)


@app.command()
def down() -> None:
    """Stop the embedded PostgreSQL server (data is kept; 'up' starts it again).

    Example:

        edulink-db down
    """
    try:
        settings = cli_settings(None)
        if not settings.uses_embedded:
            raise ConfigError("DATABASE_URL/DATABASE_HOST is set: 'down' only stops the "
                              "embedded server, and edulink-db never stops a server it did "
                              "not start.")
        stopped = EmbeddedServer(settings.home).stop(cli_progress())
    except EdulinkDBError as exc:
        fail_cli(exc)
    out.print("stopped" if stopped else "not running")


@app.command()
def status(topology: TopologyOption = None, ca: CaOption = None,
           json_out: JsonOption = False) -> None:
    """Show which database is in use, whether it is reachable, and whether it is provisioned.

    Exit code 0 when reachable and provisioned, 3 otherwise.

    Example:

        edulink-db status --json
    """
    try:
        report = lifecycle.run_status(cli_settings(topology, ca))
    except EdulinkDBError as exc:
        fail_cli(exc)
    healthy = report.running and report.provisioned_roles == report.expected_roles
    if json_out:
        print_json(report.as_dict())
    else:
        kind = "embedded" if report.embedded else "configured"
        out.print(f"database: {report.target or '(embedded, not running)'} [{kind}]",
                  highlight=False)
        out.print(f"home: {report.home}", highlight=False)
        if report.running:
            out.print(f"server: PostgreSQL {report.server_version}, reachable")
            out.print(f"roles: {report.provisioned_roles}/{report.expected_roles} provisioned")
        else:
            out.print(f"server: not reachable{': ' + report.error if report.error else ''}"
                      + ("  (start it with 'edulink-db up')" if report.embedded else ""),
                      highlight=False)
        for warning in report.warnings:
            out.print(f"[yellow]warning:[/yellow] {warning}", highlight=False)
    raise typer.Exit(EXIT_OK if healthy else EXIT_DATABASE)
