"""``edulink-db lint`` (also ``edulink-db migrations lint``): every finding of every
migration file, as text, JSON or GitHub annotations."""

from __future__ import annotations

import functools
import json
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from ..core.errors import EdulinkDBError, MigrationFileError
from ..migrations.findings import ERROR, Finding
from ..migrations.manager import MigrationManager
from .app import TopologyOption, app, cli_settings, fail_cli, out
from .migrations import DirOption, ServicesArgument, migrations_app

# Exit codes of lint (docs/lint-rules.md): 0 clean (or warnings only, without --strict),
# 1 warnings with --strict, 2 errors (and bad input, like every command).
EXIT_CLEAN, EXIT_WARNINGS, EXIT_ERRORS = 0, 1, 2


class Format(StrEnum):
    text = "text"
    json = "json"
    github = "github"


def _github_escape(value: str, *, prop: bool = False) -> str:
    # GitHub's workflow-command escaping (actions/toolkit, command.ts).
    value = value.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
    return value.replace(":", "%3A").replace(",", "%2C") if prop else value


def render(findings: list[Finding], files: int, fmt: Format) -> str:
    """*findings* in *fmt*; text ends with a one-line summary."""
    if fmt is Format.json:
        return json.dumps([f.as_dict() for f in findings], indent=2) + "\n"
    lines = []
    for f in findings:
        if fmt is Format.github:
            level = "error" if f.severity == ERROR else "warning"
            lines.append(f"::{level} file={_github_escape(f.file, prop=True)},line={f.line},"
                         f"col={f.column},title={_github_escape(f.rule, prop=True)}::"
                         f"{_github_escape(f'{f.message} ({f.url})')}")
        else:
            lines.append(f"{f.file}:{f.line}:{f.column}: {f.severity} [{f.rule}] {f.message} "
                         f"({f.url})")
    if fmt is Format.text:
        errors = sum(f.severity == ERROR for f in findings)
        lines.append(f"lint: {files} file(s), {errors} error(s), "
                     f"{len(findings) - errors} warning(s)")
    return "".join(line + "\n" for line in lines)


def lint_command(
    services: ServicesArgument = None,
    directory: DirOption = None,
    topology: TopologyOption = None,
    output_format: Annotated[Format, typer.Option(
        "--format", "-f", help="text (file:line:column: ...), json, or github (workflow "
                               "annotations).")] = Format.text,
    json_out: Annotated[bool, typer.Option("--json", help="Same as --format json.")] = False,
    strict: Annotated[bool, typer.Option(
        "--strict", help="Exit 1 on warnings too (errors always exit 2).")] = False,
) -> None:
    """Check every migration file without a database and report every finding, each with
    file:line:column, a rule id, a reason and the rule's docs (docs/lint-rules.md):
    contract breaks, psql meta-commands, session settings that undo the runner's
    timeouts, SECURITY DEFINER without search_path (errors) and lock hazards from squawk
    (warnings). Silence one statement with '-- edulink-db: ignore RULE reason'.
    Exit 0 clean, 1 warnings with --strict, 2 errors.

    Example:

        edulink-db lint auth --format github --strict
    """
    from ..migrations.lint import collect_directory, lint

    fmt = Format.json if json_out else output_format
    try:
        settings = cli_settings(topology)
        topo = settings.topology()
        manager = MigrationManager(settings, directory)
        if not manager.root.is_dir():
            raise MigrationFileError(f"Migrations directory {manager.root} does not exist.")
        chosen = [topo.service(s) for s in services] if services else list(topo.services)
        items, problems = [], []
        for svc in chosen:
            folder: Path = manager.migrations_dir(svc)
            if folder.is_dir():
                files, bad = collect_directory(folder)
                items += [(svc, f) for f in files]
                problems += bad
        findings = sorted(problems + lint(topo, items),
                          key=lambda f: (f.file, f.line, f.column, f.rule))
    except EdulinkDBError as exc:
        fail_cli(exc)
    checked = {str(f.path) for _, f in items} | {p.file for p in problems}
    text = render(findings, len(checked), fmt)
    if fmt is Format.text:
        out.print(escape(text.rstrip("\n")), highlight=False, soft_wrap=True)
    else:
        sys.stdout.write(text)
    errors = any(f.severity == ERROR for f in findings)
    raise typer.Exit(EXIT_ERRORS if errors else EXIT_WARNINGS if strict and findings
                     else EXIT_CLEAN)


app.command("lint")(lint_command)


def migrations_lint_command(*args: Any, **kwargs: Any) -> None:
    lint_command(*args, **kwargs)


# The same command under 'migrations', with its own example (typer reads the
# signature through __wrapped__).
functools.update_wrapper(migrations_lint_command, lint_command)
migrations_lint_command.__doc__ = (lint_command.__doc__ or "").replace(
    "edulink-db lint ", "edulink-db migrations lint ")
migrations_app.command("lint")(migrations_lint_command)
