"""``edulink-db move-service``: move one service's schema to its own server, online."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from psycopg.conninfo import conninfo_to_dict

from .. import lifecycle
from ..backup.placement import remember_location_admin
from ..config import Settings, admin_conninfo, apply_tls, mask_dsn
from ..connections.patroni import discovery_from_settings
from ..core.errors import ConfigError, EdulinkDBError
from ..relocation import MoveContext, abort, citus_sql, run_move
from .app import CaOption, TopologyOption, app, cli_progress, cli_settings, fail_cli, out


def _url(value: str, option: str, settings: Settings) -> dict[str, Any]:
    try:
        params = dict(conninfo_to_dict(value))
    except Exception:
        raise ConfigError(f"{option} is not a valid PostgreSQL connection string; expected "
                          "postgresql://ADMIN:PASSWORD@HOST:PORT/DBNAME") from None
    if not params.get("host") or not params.get("dbname"):
        raise ConfigError(f"{option} must name a host and a database.")
    return apply_tls(params, settings)


@app.command("move-service")
def move_service(
    service: Annotated[str | None, typer.Argument(help="The service to move.")] = None,
    to: Annotated[str | None, typer.Option(
        "--to", envvar="EDULINK_DB_MOVE_TO", show_default=False,
        help="Admin URL of the target server (or EDULINK_DB_MOVE_TO).")] = None,
    source: Annotated[str | None, typer.Option(
        "--from", envvar="EDULINK_DB_MOVE_FROM", show_default=False,
        help="Admin URL of where the schema lives now, when it is not DATABASE_URL "
             "(moving a service back).")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue a killed move.")] = False,
    abort_: Annotated[bool, typer.Option(
        "--abort", help="Undo a move that has not cut over.")] = False,
    allow_unbounded_wal: Annotated[bool, typer.Option(
        "--allow-unbounded-wal", help="Move even if max_slot_wal_keep_size is -1.")] = False,
    allow_slot_loss: Annotated[bool, typer.Option(
        "--allow-slot-loss", help="Move a Patroni source whose permanent slots do not "
                                  "include the move's slot (a switchover or failover "
                                  "during the move then means --abort and again).")] = False,
    sync_timeout: Annotated[float, typer.Option(
        "--sync-timeout", help="Seconds to wait for the copy to catch up.")] = 600.0,
    citus_sql_: Annotated[bool, typer.Option(
        "--citus-sql", help="Print citus_schema_distribute SQL per service schema (not "
                            "tested here) and exit.")] = False,
    topology: TopologyOption = None,
    ca: CaOption = None,
) -> None:
    """Move SERVICE's schema to the server at --to, online, with logical replication.

    Phases: preflight, prepare the target, copy and catch up, cut over, clean up.
    Running pools follow the move through the location registry; see
    docs/move-service.md.  A killed run is finished with --resume or undone with --abort.

    Example:

        edulink-db move-service user --to postgresql://admin@db2.internal:5432/edulink
    """
    try:
        settings = cli_settings(topology, ca)
        topo = settings.topology()
        if citus_sql_:
            conn_free = [s.as_string(None) for s in citus_sql(topo)]
            out.print("\n".join(conn_free), highlight=False, markup=False)
            return
        if service is None or to is None:
            raise ConfigError("move-service needs SERVICE and --to URL.")
        svc = topo.service(service)
        home = admin_conninfo(settings)
        ctx = MoveContext(
            topology=topo, service=svc, home=home,
            source=_url(source, "--from", settings) if source else home,
            target=_url(to, "--to", settings),
            passwords=lambda s: lifecycle.service_password(settings, s),
            migrator_passwords=lambda s: lifecycle.migrator_password(settings, s),
            progress=cli_progress(), allow_unbounded_wal=allow_unbounded_wal,
            sync_timeout_s=sync_timeout, allow_slot_loss=allow_slot_loss,
            # DATABASE_PATRONI_URLS describes DATABASE_URL's cluster, not a --from server.
            source_patroni=None if source else discovery_from_settings(settings))
        if abort_:
            abort(ctx)
            out.print(f"aborted: {svc.name} stays on {mask_dsn(ctx.source)}", highlight=False)
            return
        run_move(ctx, resume=resume)
        if ctx.target_location is not None:
            # Backups and restores of the service now reach its data there.
            remember_location_admin(settings, ctx.target)
        out.print(f"moved: {svc.name} now lives on {mask_dsn(ctx.target)}", highlight=False)
        # Backups taken before the move hold the old copy: none covers the service now.
        out.print(f"{svc.schema} is in no backup taken where it lives now: run "
                  "'edulink-db backup auto' (or 'backup schema') next", highlight=False)
    except EdulinkDBError as exc:
        fail_cli(exc)
