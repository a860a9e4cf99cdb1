"""Monitoring commands: ``health``, ``top``, ``metrics``."""

from __future__ import annotations

import time
from typing import Annotated, Any

import typer
from rich.table import Table

from ..config import admin_conninfo
from ..core.errors import (
    EdulinkDBError,
)
from .app import (
    EXIT_BAD_INPUT,
    EXIT_DATABASE,
    EXIT_DIFFERS,
    EXIT_OK,
    CaOption,
    JsonOption,
    TopologyOption,
    app,
    cli_settings,
    err,
    fail_cli,
    out,
    print_json,
)

_STATUS_EXIT = {"healthy": EXIT_OK, "degraded": EXIT_DIFFERS, "unhealthy": EXIT_DATABASE}
_STATUS_STYLE = {"ok": "green", "healthy": "green", "degraded": "yellow", "unhealthy": "red"}


@app.command()
def health(topology: TopologyOption = None, ca: CaOption = None,
           json_out: JsonOption = False) -> None:
    """Database health: every check with its value and threshold, and suspicious patterns
    naming the service. Exit code: 0 healthy, 1 degraded, 3 unhealthy.

    Example:

        edulink-db health --json
    """
    from ..monitoring.monitor import get_database_health

    try:
        report = get_database_health(cli_settings(topology, ca))
    except EdulinkDBError as exc:
        fail_cli(exc)
    if json_out:
        print_json(report)
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
        _print_replication(report.get("replication") or {})
    raise typer.Exit(_STATUS_EXIT[report["overall_status"]])


def _print_replication(repl: dict[str, Any]) -> None:
    """A few lines: where we are connected, the standbys streaming from it with their
    lag, and the configured read replicas (hosts are host:port only, never a URL)."""
    if not repl:
        return
    lines = [f"primary: {repl.get('primary') or 'none (connected to a standby)'}"]
    def seconds(value: Any) -> str:
        return "n/a" if value is None else f"{float(value):.1f}s"

    for sb in repl.get("standbys") or []:
        behind = sb.get("replay_lag_bytes")
        lines.append(f"standby {sb.get('name')} ({sb.get('client_addr') or 'local'}): "
                     f"{sb.get('state')}, replay lag {seconds(sb.get('replay_lag_seconds'))}"
                     f", {'n/a' if behind is None else behind} bytes behind")
    for rp in repl.get("replicas") or []:
        lines.append(f"replica {rp.get('host')}: {rp.get('state')}, "
                     f"lag {seconds(rp.get('lag_seconds'))}")
    out.print("replication:", markup=False)
    for line in lines:
        out.print(f"  {line}", markup=False, highlight=False)


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
    ca: CaOption = None,
) -> None:
    """A live per-service view: sessions by state, long-running and blocked queries,
    statement rate and mean time (pg_stat_statements), schema sizes. Ctrl-C to stop.

    Example:

        edulink-db top --once
    """
    from rich.live import Live

    from ..connections.direct import connect
    from ..monitoring.health import collect

    try:
        settings = cli_settings(topology, ca)
        topo = settings.topology()
        with connect(admin_conninfo(settings), purpose="watch the database",
                     prefer_primary=True) as conn:
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
        fail_cli(exc)


@app.command("metrics")
def metrics_cmd(
    port: Annotated[int, typer.Option("--port", "-p", min=1, max=65535,
                                      help="Port to serve /metrics on.")] = 9187,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    topology: TopologyOption = None,
    ca: CaOption = None,
) -> None:
    """Serve Prometheus metrics: per-service database gauges (read at every scrape) and
    this process's query metrics. Runs until interrupted.

    Example:

        edulink-db metrics --port 9187
    """
    from prometheus_client import CollectorRegistry, start_http_server

    from ..monitoring.exporter import DatabaseCollector

    try:
        settings = cli_settings(topology, ca)
        registry = CollectorRegistry()
        registry.register(DatabaseCollector(settings))
        start_http_server(port, addr=host, registry=registry)
    except (EdulinkDBError, OSError) as exc:
        if isinstance(exc, EdulinkDBError):
            fail_cli(exc)
        err.print(f"[bold red]error:[/bold red] cannot listen on {host}:{port}: {exc}")
        raise typer.Exit(EXIT_BAD_INPUT) from None
    err.print(f"serving metrics on http://{host}:{port}/metrics (Ctrl-C to stop)")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        return
