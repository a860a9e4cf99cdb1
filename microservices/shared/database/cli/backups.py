"""Backup commands: the ``backup`` and ``backups`` groups, ``restore``."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from ..backup.manager import BackupInfo, BackupManager
from ..core.errors import (
    BackupError,
    BackupNotFoundError,
    EdulinkDBError,
)
from .app import (
    EXIT_DIFFERS,
    CaOption,
    JsonOption,
    app,
    cli_progress,
    cli_settings,
    err,
    fail_cli,
    out,
    print_json,
)

backup_app = typer.Typer(help="Take a backup: 'full' or 'schema SCHEMA...'.\n\n"
                              "Example:\n\n    edulink-db backup schema user_schema",
                         no_args_is_help=True)
backups_app = typer.Typer(help="List, verify and prune backups.\n\n"
                               "Example:\n\n    edulink-db backups list",
                          no_args_is_help=True)
app.add_typer(backup_app, name="backup")
app.add_typer(backups_app, name="backups")

FormatOption = Annotated[str, typer.Option(
    "--format", help="custom (one file) or directory (allows --jobs).")]
JobsOption = Annotated[int, typer.Option("--jobs", "-j", min=1,
                                         help="Parallel pg_dump jobs (directory format).")]
CompressOption = Annotated[bool, typer.Option("--compress/--no-compress",
                                              help="gzip level 6, or none.")]


def _backup_manager(quiet: bool = False, ca: Path | None = None) -> BackupManager:
    return BackupManager(cli_settings(None, ca), progress=(lambda _m: None) if quiet
                         else cli_progress())


def _print_backup(info: BackupInfo, json_out: bool) -> None:
    if json_out:
        print_json({"backup_id": info.backup_id, "kind": info.kind, "schemas": info.schemas,
                     "path": str(info.path), "size": info.size,
                     "duration_s": info.duration_s, "row_counts": info.row_counts,
                     "parts": info.parts})
    else:
        out.print(f"{info.backup_id}: {', '.join(info.schemas)} — {info.size / 1e6:.1f} MB, "
                  f"{sum(info.row_counts.values())} rows, {info.duration_s:.1f}s", highlight=False)
        if info.parts:
            out.print(f"  moved services, dumped where they live now: {', '.join(info.parts)}",
                      highlight=False)


@backup_app.command("full")
def backup_full(
    fmt: FormatOption = "custom", jobs: JobsOption = 1, compress: CompressOption = True,
    include_schema: Annotated[list[str] | None, typer.Option(
        "--include-schema", help="Also dump this schema of the home database (repeatable),"
                                 " e.g. a hosting platform's, which is left out by default.")
    ] = None,
    ca: CaOption = None,
    json_out: JsonOption = False,
) -> None:
    """Back up every service's schema, the project's metadata and large objects.

    Each schema is dumped from where it lives now: a service moved with move-service is
    dumped from its server into a part of the same backup set. A hosting platform's
    schemas (Supabase's auth, storage, realtime, ...) are left out unless named with
    --include-schema. Each server's dump has its own snapshot-consistent manifest.

    Example:

        edulink-db backup full
    """
    try:
        info = _backup_manager(json_out, ca).create_full_backup(
            compress, fmt=fmt, jobs=jobs, include_schemas=include_schema)
    except EdulinkDBError as exc:
        fail_cli(exc)
    _print_backup(info, json_out)


@backup_app.command("schema")
def backup_schema(
    schemas: Annotated[list[str], typer.Argument(help="Schemas, e.g. user_schema auth_schema.")],
    fmt: FormatOption = "custom", jobs: JobsOption = 1, compress: CompressOption = True,
    ca: CaOption = None,
    json_out: JsonOption = False,
) -> None:
    """Back up some schemas; the backup restores into a clean database too.

    Example:

        edulink-db backup schema user_schema auth_schema
    """
    try:
        info = _backup_manager(json_out, ca).create_schema_backup(schemas, compress, fmt=fmt,
                                                              jobs=jobs)
    except EdulinkDBError as exc:
        fail_cli(exc)
    _print_backup(info, json_out)


@backup_app.command("auto")
def backup_auto(
    every: Annotated[str | None, typer.Option(
        "--every", help="Keep running: check what is due this often (e.g. 1m), for "
                        "compose setups without cron.")] = None,
    ca: CaOption = None,
    json_out: JsonOption = False,
) -> None:
    """Take what the policy says is due (EDULINK_DB_BACKUP_FULL_EVERY, ..._SCHEMA_EVERY),
    verify it, prune by retention. Safe to run from cron every minute.

    Example:

        * * * * * cd /srv/edulink && edulink-db backup auto   (a crontab line)
    """
    from ..backup.schedule import parse_interval, run_auto

    try:
        pause = parse_interval(every, "--every") if every is not None else None
    except EdulinkDBError as exc:
        fail_cli(exc)
    while True:
        try:
            report = run_auto(_backup_manager(json_out, ca))
        except EdulinkDBError as exc:
            if pause is None:
                fail_cli(exc)
            err.print(f"[bold red]error:[/bold red] {exc}", highlight=False)
        else:
            if json_out:
                print_json(report.as_dict())
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
    ca: CaOption = None,
    json_out: JsonOption = False,
) -> None:
    """Restore a backup into a scratch database (EDULINK_DB_DRILL_URL's server, else the
    admin's), compare row counts, drop it. Exit 1 if the drill fails.

    Example:

        edulink-db backups drill full_20260101_020000
    """
    from ..backup.drill import run_drill

    try:
        report = run_drill(_backup_manager(json_out, ca), backup_id)
    except EdulinkDBError as exc:
        fail_cli(exc)
    if json_out:
        print_json(report.as_dict())
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
    with an old key). Refused if it is a link, not yours, or fails its checksums.

    Example:

        edulink-db backups sign full_20260101_020000
    """
    try:
        manifest = _backup_manager().sign(backup_id)
    except EdulinkDBError as exc:
        fail_cli(exc)
    out.print(f"{backup_id}: signed with key {manifest.key_id}", highlight=False)


@backups_app.command("list")
def backups_list(json_out: JsonOption = False) -> None:
    """Complete backups, oldest first (and any refused as untrusted or damaged).

    Example:

        edulink-db backups list --json
    """
    try:
        manager = _backup_manager(True)
        items = manager.list_backups()
        status_report = manager.status()
        refused = manager.store.scan()[1]
    except EdulinkDBError as exc:
        fail_cli(exc)
    if json_out:
        print_json(items)
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
    """Check a backup's checksums and archive listing (exit 1 if it is damaged).

    Example:

        edulink-db backups verify full_20260101_020000
    """
    try:
        result = _backup_manager().verify(backup_id, deep=deep)
    except BackupNotFoundError as exc:
        fail_cli(exc)
    except BackupError as exc:
        err.print(f"[red]verify failed:[/red] {exc}", highlight=False)
        raise typer.Exit(EXIT_DIFFERS) from None
    except EdulinkDBError as exc:
        fail_cli(exc)
    out.print(f"{backup_id}: OK ({result['tables']} tables"
              + (", restored and counted)" if deep else ")"), highlight=False)


@backups_app.command("prune")
def backups_prune(dry_run: Annotated[bool, typer.Option("--dry-run")] = False) -> None:
    """Delete old backups: keep EDULINK_DB_BACKUP_KEEP_LAST per kind and everything younger
    than EDULINK_DB_BACKUP_KEEP_DAYS; the newest verified backup is never deleted.

    Example:

        edulink-db backups prune --dry-run
    """
    try:
        doomed = _backup_manager().prune(dry_run=dry_run)
    except EdulinkDBError as exc:
        fail_cli(exc)
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
    ca: CaOption = None,
    json_out: JsonOption = False,
) -> None:
    """Replace schemas with a backup's contents, in one transaction.

    The backup is checked first (checksums, archive listing); a damaged one is refused
    untouched. What the restore replaces is saved first as a prerestore_* backup.

    Example:

        edulink-db restore full_20260101_020000 --schema user_schema
    """
    try:
        report = _backup_manager(json_out, ca).restore(backup_id, schemas=schema or None,
                                                   target_db=target_db,
                                                   safety_backup=safety_backup)
    except EdulinkDBError as exc:
        fail_cli(exc)
    if json_out:
        print_json(report.as_dict())
    else:
        out.print(f"restored {', '.join(report.schemas)} from {backup_id} into "
                  f"{report.target} ({report.duration_s:.1f}s)", highlight=False)
        if report.safety_backup:
            out.print(f"undo with: edulink-db restore {report.safety_backup}", highlight=False)
