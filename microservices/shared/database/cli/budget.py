"""``edulink-db budget``: how the server's connections are shared out."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from ..config import admin_conninfo, pooler_mode
from ..connections import budget as model
from ..connections.direct import connect
from ..core.errors import EdulinkDBError
from .app import (
    EXIT_DIFFERS,
    EXIT_OK,
    JsonOption,
    TopologyOption,
    app,
    cli_settings,
    fail_cli,
    out,
    print_json,
)


@app.command()
def budget(
    processes: Annotated[int | None, typer.Option(
        "--processes", "-n", min=1, show_default=False,
        help="Processes per service to plan for (default: EDULINK_DB_PROCESSES_PER_SERVICE "
             "and EDULINK_DB_<SERVICE>_PROCESSES).")] = None,
    topology: TopologyOption = None,
    json_out: JsonOption = False,
) -> None:
    """The connection budget: per runtime role its CONNECTION LIMIT, each process's pool,
    the processes that share the limit, and the headroom left for the admin, migrators
    and monitoring. Exit code 1 when a pool setting cannot fit.

    Example:

        edulink-db budget --processes 4
    """
    try:
        settings = cli_settings(topology)
        params = admin_conninfo(settings)
        with connect(params, purpose="read the connection budget") as conn:
            plan = model.read_budget(conn, settings.topology(), settings,
                                     pooler=pooler_mode(settings, params), procs=processes)
    except EdulinkDBError as exc:
        fail_cli(exc)
    problems = [r.problem for r in plan.roles if r.problem]
    if json_out:
        print_json(plan.as_dict())
        raise typer.Exit(EXIT_DIFFERS if problems else EXIT_OK)
    server = plan.server
    table = Table(title="Connection budget", title_justify="left")
    for column in ("service", "role", "limit", "from", "processes", "pool min",
                   "pool max", "all processes"):
        table.add_column(column, justify="left" if column in ("service", "role", "from")
                         else "right")
    for r in plan.roles:
        pool = r.pool
        table.add_row(r.service, r.role, str(r.limit), r.limit_from, str(r.processes),
                      str(pool.min_size) if pool else "-",
                      (str(pool.max_size) + (" (set)" if pool.explicit else "")) if pool
                      else "[red]does not fit[/red]", str(r.total) if pool else "-")
    out.print(table)
    out.print(f"server: max_connections {server.max_connections} - superuser_reserved "
              f"{server.superuser_reserved} - reserved {server.reserved} = usable "
              f"{server.usable}; role limits {plan.limits_total}, all pools full "
              f"{plan.runtime_total}; headroom {plan.spare} (planned {server.headroom}) for "
              "the admin, migrators and monitoring", highlight=False)
    if plan.pooler == model.TRANSACTION:
        out.print("behind a transaction pooler: these pools are the pooler's clients; size "
                  "the pooler's pool per user to the role's limit (docs/connection-budget.md)",
                  highlight=False)
    for problem in problems:
        out.print(f"[red]does not fit:[/red] {problem}", highlight=False)
    raise typer.Exit(EXIT_DIFFERS if problems else EXIT_OK)
