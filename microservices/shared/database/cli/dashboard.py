"""``edulink-db dashboard``: the per-service web page."""

from __future__ import annotations

from typing import Annotated

import typer

from ..core.errors import EdulinkDBError
from .app import EXIT_BAD_INPUT, CaOption, TopologyOption, app, cli_settings, err, fail_cli


@app.command()
def dashboard(
    host: Annotated[str, typer.Option(help="Address to listen on; anything but loopback "
                                           "needs EDULINK_DB_DASHBOARD_TOKEN.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", "-p", min=1, max=65535,
                                      help="Port to listen on.")] = 8478,
    interval: Annotated[float, typer.Option(min=1.0, help="Seconds between the samples "
                                                          "behind the charts.")] = 10.0,
    topology: TopologyOption = None,
    ca: CaOption = None,
) -> None:
    """Serve a read-only web page: the database and each service's sessions, statements,
    queries, sizes, migrations, backups, privileges and replicas. Runs until Ctrl-C.

    Example:

        edulink-db dashboard --port 8478
    """
    from ..monitoring.dashboard import serve

    def ready(_server: object) -> None:
        err.print(f"serving the dashboard on http://{host}:{port}/ (Ctrl-C to stop)")

    try:
        serve(cli_settings(topology, ca), host=host, port=port, interval=interval, ready=ready)
    except KeyboardInterrupt:
        return
    except EdulinkDBError as exc:
        fail_cli(exc)
    except OSError as exc:
        err.print(f"[bold red]error:[/bold red] cannot listen on {host}:{port}: {exc}")
        raise typer.Exit(EXIT_BAD_INPUT) from None
