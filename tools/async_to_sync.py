#!/usr/bin/env python3
"""Generate the sync twin of an async module (psycopg's way: one source, two APIs).

The async code is the source.  Each pair in :data:`PAIRS` names an async module and the
sync module generated from it: ``async`` before ``def``/``with``/``for`` and every
``await`` are dropped, and names are mapped (``AsyncConnection`` -> ``Connection``, any
``AsyncX`` -> ``X``, ``__aenter__`` -> ``__enter__``, plus each pair's own names).  The
rewrite works on Python's tokens, so strings and comments are never touched, and the
output keeps the source's layout line for line.  Imports are re-sorted with ruff, so the
generated file passes ``ruff check`` as the source does.

    python tools/async_to_sync.py          # write every generated module
    python tools/async_to_sync.py --check  # exit 1 if one is stale (tests/test_async_to_sync.py)

A line that must differ beyond that rewrite carries a trailing ``# sync: <code>``
comment in the source: the generated file has ``<code>`` there instead (same indentation).
"""

from __future__ import annotations

import argparse
import io
import re
import subprocess
import sys
import tokenize
from collections.abc import Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = Path("microservices/shared/database")

# (async source, generated sync module, names of this pair only), relative to ROOT.
PAIRS: list[tuple[Path, Path, dict[str, str]]] = []

# Names every pair maps; ``AsyncX`` -> ``X`` is implied for any X starting upper case.
NAMES: dict[str, str] = {
    "__aenter__": "__enter__",
    "__aexit__": "__exit__",
    "__aiter__": "__iter__",
    "__anext__": "__next__",
    "aclose": "close",
    "asynccontextmanager": "contextmanager",
    "asyncio": "time",  # asyncio.sleep -> time.sleep; anything else needs '# sync:'
    "StopAsyncIteration": "StopIteration",
    "AsyncIterator": "Iterator",
    "AsyncIterable": "Iterable",
    "AsyncGenerator": "Generator",
    "AsyncExitStack": "ExitStack",
    "Awaitable": "Callable",
}

_ASYNC_NAME = re.compile(r"Async(?=[A-Z])")
_SYNC_COMMENT = re.compile(r"#\s*sync:\s?(?P<code>.*)$")


def header(source: Path) -> str:
    return (f"# WARNING: this file is generated from {source.as_posix()} by "
            "tools/async_to_sync.py; do not edit.\n")


def convert(text: str, names: Mapping[str, str] | None = None) -> str:
    """The sync version of async module *text* (without the header)."""
    mapping = {**NAMES, **(names or {})}
    lines = text.splitlines(keepends=True)
    tokens = list(tokenize.generate_tokens(io.StringIO(text).readline))
    # (row, col_start, col_end, replacement), applied right to left per line.
    edits: list[tuple[int, int, int, str]] = []
    replaced_rows: dict[int, str] = {}
    for index, tok in enumerate(tokens):
        (row, col), (end_row, end_col) = tok.start, tok.end
        if tok.type == tokenize.COMMENT:
            found = _SYNC_COMMENT.search(tok.string)
            if found:
                line = lines[row - 1]
                indent = line[:len(line) - len(line.lstrip())]
                replaced_rows[row] = indent + found.group("code").rstrip() + "\n"
            continue
        if tok.type != tokenize.NAME:
            continue
        following = tokens[index + 1] if index + 1 < len(tokens) else None
        if tok.string == "await" or (tok.string == "async" and following is not None
                                     and following.string in ("def", "with", "for")):
            # Drop the keyword and the blanks after it (up to the next token).
            stop = following.start[1] if following and following.start[0] == row else end_col
            edits.append((row, col, stop, ""))
        elif tok.string in mapping:
            edits.append((row, col, end_col, mapping[tok.string]))
        elif _ASYNC_NAME.match(tok.string):
            edits.append((row, col, end_col, _ASYNC_NAME.sub("", tok.string, count=1)))
        del end_row
    out = list(lines)
    for row, start, stop, new in sorted(edits, key=lambda e: (e[0], e[1]), reverse=True):
        line = out[row - 1]
        out[row - 1] = line[:start] + new + line[stop:]
    for row, line in replaced_rows.items():
        out[row - 1] = line
    return "".join(out)


def _sorted_imports(text: str, target: Path) -> str:
    """*text* with its imports sorted as the project's ruff configuration wants."""
    ruff = Path(sys.executable).parent / "ruff"
    command = [str(ruff) if ruff.exists() else "ruff", "check", "--fix-only", "--quiet",
               "--select", "I,F401", "--stdin-filename", str(target), "-"]
    result = subprocess.run(command, input=text, capture_output=True, text=True,
                            cwd=ROOT, check=False)
    if result.returncode not in (0, 1) or not result.stdout:
        raise SystemExit(f"ruff could not sort the imports of {target}: {result.stderr}")
    return result.stdout


def generate(source: Path, target: Path, names: Mapping[str, str]) -> str:
    """The full text of *target* generated from *source* (paths relative to ROOT)."""
    text = (ROOT / source).read_text(encoding="utf-8")
    return _sorted_imports(header(source) + convert(text, names), target)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 if a generated module is stale")
    args = parser.parse_args(argv)
    stale = []
    for source, target, names in PAIRS:
        text = generate(source, target, names)
        path = ROOT / target
        current = path.read_text(encoding="utf-8") if path.exists() else None
        if current == text:
            continue
        if args.check:
            stale.append(target.as_posix())
        else:
            path.write_text(text, encoding="utf-8")
            print(f"wrote {target.as_posix()} from {source.as_posix()}")
    if stale:
        print("stale (run python tools/async_to_sync.py): " + ", ".join(stale),
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
