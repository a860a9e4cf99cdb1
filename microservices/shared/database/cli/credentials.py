"""``edulink-db credentials export``: one service's own credential, for its hosts only."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from ..core.credentials import write_private
from ..core.errors import ConfigError, EdulinkDBError
from ..credentials_export import FORMATS, render
from .app import TopologyOption, app, cli_settings, err, fail_cli
from .output_file import check_writable

credentials_app = typer.Typer(
    help="Per-service credentials: give each service's hosts its own password only.\n\n"
         "Example:\n\n    edulink-db credentials export user -o user.json",
    no_args_is_help=True)
app.add_typer(credentials_app, name="credentials")


@credentials_app.command("export")
def export(
    service: Annotated[str, typer.Argument(help="The service (e.g. user).")],
    fmt: Annotated[str, typer.Option(
        "--format", "-f", metavar="FORMAT",
        help="env, json, k8s-secret or django (see docs/credentials.md).")] = "json",
    output: Annotated[str | None, typer.Option(
        "--output", "-o", metavar="FILE",
        help="Write here (mode 0600, replacing FILE); '-' for stdout.")] = None,
    topology: TopologyOption = None,
) -> None:
    """Write SERVICE's connection settings and runtime password, and nothing else.

    Run it where the admin configuration is (DATABASE_URL and the secrets store); ship
    the file to SERVICE's hosts only. Other services' passwords and the admin's never
    appear in it. After 'edulink-db provision --rotate-passwords SERVICE', export again.

    Example:

        edulink-db credentials export user --format json -o /etc/edulink/user.json
    """
    try:
        if fmt not in FORMATS:
            raise ConfigError(f"--format {fmt!r} is not one of {', '.join(FORMATS)}.")
        if output is None:
            raise ConfigError("Say where to write the credential: -o FILE (written with "
                              "mode 0600), or -o - to print it on stdout.")
        path = Path(output).expanduser()
        if output != "-":
            check_writable(path, option="-o")
        settings = cli_settings(topology)
        svc = settings.topology().service(service)
        text = render(svc, settings, fmt)
        if output == "-":
            sys.stdout.write(text)
            return
        try:
            write_private(path, text)
        except OSError as exc:  # after the check: a full disk, a race
            raise ConfigError(f"-o {path}: cannot write it ({exc.strerror}); choose "
                              "another file.") from None
    except EdulinkDBError as exc:
        fail_cli(exc)
    err.print(f"wrote the credential of service {svc.name} ({fmt}) to {path} (mode 0600)",
              highlight=False)
