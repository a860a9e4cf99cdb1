"""Help texts that re-flow to the terminal's width.

Docstrings are wrapped by hand at 100 columns; typer/rich keep those line breaks, so a
wide terminal showed sentences broken in the middle. :func:`reflow` rewrites the help
of every registered command (and group) once, after all command modules registered
theirs: each paragraph becomes one line that rich wraps to the terminal, while blank
lines between paragraphs, indented blocks (examples) and "- " list items stay as written.
"""

from __future__ import annotations

import inspect

import typer


def unwrap(text: str) -> str:
    """*text* with the hard line breaks inside each plain paragraph removed."""
    paragraphs = inspect.cleandoc(text).split("\n\n")
    return "\n\n".join(_unwrap_paragraph(p) for p in paragraphs)


def _unwrap_paragraph(paragraph: str) -> str:
    lines = paragraph.splitlines()
    if lines and lines[0][:1].isspace():
        return paragraph  # an indented block (an example): verbatim
    items: list[str] = []
    for line in lines:
        if line.startswith("- ") or not items:
            items.append(line.strip())
        else:
            items[-1] += " " + line.strip()
    return "\n".join(items)


def reflow(app: typer.Typer) -> None:
    """Unwrap the help of *app*, its commands and its groups, recursively."""
    if isinstance(app.info.help, str):
        app.info.help = unwrap(app.info.help)
    for command in app.registered_commands:
        doc = command.help or inspect.getdoc(command.callback)
        if doc:
            command.help = unwrap(doc)
    for group in app.registered_groups:
        if isinstance(group.help, str):
            group.help = unwrap(group.help)
        if group.typer_instance is not None:
            reflow(group.typer_instance)
