"""The seed's Python snippets, extracted from the seed itself when it is present.

The seed (the original design document) sits next to the repository in this workplace
and in CI: ``<clone>/../shared/seed/edulink-database-README.md`` (the nearest such path
above the clone, so a git worktree finds it too). A verbatim copy of its
``python`` blocks is checked in as ``tests/data/seed_snippets.md`` so the snippets still
run where the seed is absent; ``test_cli.py`` checks that the copy equals the seed.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
_SEED_PATH = Path("shared", "seed", "edulink-database-README.md")
# Next to the clone (CI, /work/main), or above a git worktree of it (/work/wt/<name>).
SEED = next((d / _SEED_PATH for d in ROOT.parents if (d / _SEED_PATH).is_file()),
            ROOT.parent / _SEED_PATH)
COPY = Path(__file__).resolve().parent / "data" / "seed_snippets.md"

# A fenced python block, possibly indented (the seed nests some in a numbered list);
# the closing fence has the same indent as the opening one.
_BLOCK = re.compile(r"^([ \t]*)```python[ \t]*\n(.*?)^\1```[ \t]*$", re.DOTALL | re.MULTILINE)


def extract_python_blocks(markdown: str) -> list[str]:
    """Every ```python block of *markdown*, in order, dedented by its fence's indent and
    otherwise unchanged (trailing spaces included)."""
    blocks = []
    for match in _BLOCK.finditer(markdown):
        indent, body = match.group(1), match.group(2)
        lines = [line[len(indent):] if line.startswith(indent) else line
                 for line in body.split("\n")]
        blocks.append("\n".join(lines).rstrip("\n") + "\n")
    return blocks


def seed_snippets() -> list[str]:
    """The seed's python blocks: from the seed when present, else from the copy."""
    source = SEED if SEED.is_file() else COPY
    return extract_python_blocks(source.read_text(encoding="utf-8"))
