"""Migration commands: ``migrate`` and the ``migrations`` group."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from ..core.errors import (
    EdulinkDBError,
    MigrationLintError,
    MigrationValidationError,
)
from ..migrations.manager import MigrationManager
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
)

ServicesArgument = Annotated[
    list[str] | None,
    typer.Argument(help="Services to act on (default: all in the topology).",
                   show_default=False),
]
DirOption = Annotated[
    Path | None,
    typer.Option("--dir", "-d", envvar="EDULINK_DB_MIGRATIONS",
                 help="Migrations root, one folder per service (default: ./migrations "
                      "made by 'edulink-db init', else the reference Edulink schema shipped "
                      "with edulink-db).", show_default=False),
]


def _manager(topology: Path | None, directory: Path | None, quiet: bool,
             ca: Path | None = None) -> MigrationManager:
    return MigrationManager(cli_settings(topology, ca), directory,
                            progress=(lambda _m: None) if quiet else cli_progress())


@app.command()
def migrate(
    services: ServicesArgument = None,
    directory: DirOption = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show what would run.")] = False,
    topology: TopologyOption = None,
    ca: CaOption = None,
    json_out: JsonOption = False,
    strict: Annotated[bool, typer.Option(
        "--strict", help="Also refuse on lint warnings (lock hazards), not only on "
                         "contract breaks.")] = False,
) -> None:
    """Apply pending migrations, service by service, each file in its own transaction.

    Safe to run from many processes at once: a per-schema lock makes every file apply
    exactly once. Validates first: an edited or missing applied file stops the run (exit 1),
    and so does a pending file that breaks another service's reads (see 'migrations lint').

    Example:

        edulink-db migrate user --dry-run
    """
    try:
        results = _manager(topology, directory, json_out, ca).run_all_migrations(
            services=services or None, dry_run=dry_run, strict=strict)
    except MigrationLintError as exc:  # findings contain [brackets]: escape, not markup
        err.print(f"[bold red]error:[/bold red] {escape(str(exc))}", highlight=False,
                  soft_wrap=True)
        raise typer.Exit(EXIT_DIFFERS) from None
    except EdulinkDBError as exc:
        fail_cli(exc)
    if json_out:
        print_json(results)
        return
    for name, r in results.items():
        if dry_run:
            out.print(f"{name}: {len(r['pending'])} pending"
                      + (": " + ", ".join(r["pending"]) if r["pending"] else ""), highlight=False)
        else:
            done = r["applied"] + r["resumed"]
            out.print(f"{name}: {len(done)} applied"
                      + (f", {len(r['skipped'])} already applied by another process"
                         if r["skipped"] else "")
                      + (": " + ", ".join(done) if done else ""), highlight=False)


migrations_app = typer.Typer(
    help="Inspect and maintain migration history (status, validate, repair, baseline).\n\n"
         "Example:\n\n    edulink-db migrations status",
    no_args_is_help=True)
app.add_typer(migrations_app, name="migrations")


@migrations_app.command("status")
def migrations_status(
    services: ServicesArgument = None,
    directory: DirOption = None,
    topology: TopologyOption = None,
    ca: CaOption = None,
    json_out: JsonOption = False,
) -> None:
    """Applied and pending migrations per service (exit 1 if history and files disagree).

    Example:

        edulink-db migrations status user
    """
    try:
        statuses = _manager(topology, directory, True, ca).statuses(services or None)
    except EdulinkDBError as exc:
        fail_cli(exc)
    data = [st.as_dict() for st in statuses]
    if json_out:
        print_json(data)
    else:
        table = Table(title="Migrations", title_justify="left")
        for col in ("service", "schema", "applied", "last", "pending", "problems"):
            table.add_column(col)
        for st, d in zip(statuses, data, strict=True):
            table.add_row(d["service"], d["schema"], str(d["applied_count"]),
                          d["last_applied_version"] or "-",
                          ", ".join(d["pending_migrations"]) or "-",
                          "[red]" + "; ".join(st.problems) + "[/red]" if st.problems else "ok")
        out.print(table)
    raise typer.Exit(EXIT_OK if all(d["ok"] for d in data) else EXIT_DIFFERS)


@migrations_app.command("validate")
def migrations_validate(
    services: ServicesArgument = None,
    directory: DirOption = None,
    topology: TopologyOption = None,
) -> None:
    """Check that every applied migration file is unchanged and present (exit 1 if not).

    Example:

        edulink-db migrations validate
    """
    try:
        statuses = _manager(topology, directory, True).validate(services or None)
    except MigrationValidationError as exc:
        err.print(f"[red]validate failed:[/red]\n{exc}", highlight=False)
        raise typer.Exit(EXIT_DIFFERS) from None
    except EdulinkDBError as exc:
        fail_cli(exc)
    out.print(f"validate: OK ({len(statuses)} services)")


@migrations_app.command("repair")
def migrations_repair(
    services: ServicesArgument = None,
    directory: DirOption = None,
    topology: TopologyOption = None,
    ca: CaOption = None,
) -> None:
    """Accept the files as they are now: re-record checksums of edited files, mark
    applied files that were deleted, and remove failed entries. Deliberate; prints each change.

    Example:

        edulink-db migrations repair user
    """
    try:
        results = _manager(topology, directory, False, ca).repair(services or None)
    except EdulinkDBError as exc:
        fail_cli(exc)
    changes = [f"{svc}: {c}" for svc, items in results.items() for c in items]
    for line in changes:
        out.print(line, highlight=False)
    out.print(f"repair: {len(changes)} change(s)")


@migrations_app.command("baseline")
def migrations_baseline(
    service: Annotated[str, typer.Argument(help="The service whose schema already exists.")],
    version: Annotated[str, typer.Option("--version", "-v",
                                         help="Files up to this version count as applied.")],
    topology: TopologyOption = None,
    ca: CaOption = None,
) -> None:
    """Start history for a schema created before edulink-db: files up to VERSION are
    treated as applied without running them.

    Example:

        edulink-db migrations baseline user --version 3
    """
    try:
        _manager(topology, None, False, ca).baseline(service, version)
    except EdulinkDBError as exc:
        fail_cli(exc)
    out.print(f"{service}: baselined at version {version}")
