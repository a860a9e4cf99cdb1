"""Splitting a migration file: this splitter against the previous one, side by side.

    python benchmarks/split.py [--sizes 10000 20000 40000] [--rounds 1]

For each size N a file of N statements (a comment line, an INSERT with a ';' inside a
string literal) is split by

  baseline   the previous splitter: sqlparse.split(), then text.find() and
             text.count('\\n', 0, start) per statement (quadratic: every statement
             recounts the lines from the start of the file);
  sqlparse   sqlparse.split() alone (a floor: no positions or line numbers at all);
  ours       migration_files.split_statements().

It prints the median time per size and, per splitter, the growth from the smallest to the
largest size (linear: about the size ratio; quadratic: its square), and ours / baseline.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import sqlparse

from microservices.shared.database.migrations.files import (
    SqlStatement,
    _strip_comments,
    split_statements,
)


def baseline_split(text: str) -> list[SqlStatement]:
    """The splitter before the fix, verbatim."""
    out: list[SqlStatement] = []
    position = 0
    for chunk in sqlparse.split(text):
        code = _strip_comments(chunk)
        start = text.find(chunk, position)
        if start < 0:
            start = position
        position = start + len(chunk)
        if not code or code == ";":
            continue
        out.append(SqlStatement(text=chunk.strip(), line=text.count("\n", 0, start) + 1,
                                code=code))
    return out


def make_file(n: int) -> str:
    return "".join(f"-- statement {i}\nINSERT INTO t VALUES ({i}, 'a;b');\n"
                   for i in range(n))


def median_time(split: Callable[[str], Any], text: str, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        split(text)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 20_000, 40_000])
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    sizes: list[int] = sorted(args.sizes)
    splitters: dict[str, Callable[[str], Any]] = {
        "baseline": baseline_split, "sqlparse": sqlparse.split, "ours": split_statements}
    results: dict[str, list[float]] = {name: [] for name in splitters}
    print(f"{'statements':>10}  " + "  ".join(f"{name:>10}" for name in splitters)
          + "  ours/baseline")
    for n in sizes:
        text = make_file(n)
        assert split_statements(text) == baseline_split(text)  # same output, or no comparison
        # Alternate the order per size so neither splitter always runs on a warmer cache.
        order = list(splitters) if n % 2 == 0 else list(reversed(splitters))
        row = {name: median_time(splitters[name], text, args.rounds) for name in order}
        for name in splitters:
            results[name].append(row[name])
        print(f"{n:>10}  " + "  ".join(f"{row[name]:>9.3f}s" for name in splitters)
              + f"  {row['ours'] / row['baseline']:>12.2f}")
    if len(sizes) > 1:
        factor = sizes[-1] / sizes[0]
        print(f"growth from {sizes[0]} to {sizes[-1]} statements (x{factor:g}; linear ~{factor:g},"
              f" quadratic ~{factor * factor:g}):")
        for name in splitters:
            print(f"  {name:<9} x{results[name][-1] / results[name][0]:.1f}")


if __name__ == "__main__":
    main()
