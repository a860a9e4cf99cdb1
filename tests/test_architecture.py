"""The allowed import directions (pyproject.toml [tool.importlinter], docs/architecture.md)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parent.parent
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def _lint_imports(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(LINT_IMPORTS), "--no-cache", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=240)


def test_import_contracts_are_kept() -> None:
    result = _lint_imports()
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Layers of microservices.shared.database KEPT" in result.stdout
    assert "Layers of microservices.shared.database.django_support KEPT" in result.stdout
    assert "verify reads the catalog without the code that changes it KEPT" in result.stdout
    assert "Layers of microservices.shared.database.connections KEPT" in result.stdout
    assert "0 broken" in result.stdout


def test_a_broken_contract_is_reported(tmp_path: Path) -> None:
    # The contracts above only mean something if lint-imports sees the real import graph:
    # a contract that the code does break (provisioning imports the shared model) must fail.
    config = tmp_path / "importlinter.ini"
    config.write_text(
        "[importlinter]\n"
        "root_package = microservices.shared.database\n\n"
        "[importlinter:contract:probe]\n"
        "name = probe\n"
        "type = forbidden\n"
        "source_modules = microservices.shared.database.privileges.provisioning\n"
        "forbidden_modules = microservices.shared.database.privileges.model\n")
    result = _lint_imports("--config", str(config))
    assert result.returncode != 0, result.stdout
    assert "probe BROKEN" in result.stdout


def private_reach(package: Path) -> list[str]:
    """Each place where a module of *package* imports another module's underscore name
    (``from .x import _y``) or reads one through an imported module (``x._y``)."""
    found = []
    for path in sorted(package.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        imported: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (
                    node.level or (node.module or "").startswith("microservices")):
                for alias in node.names:
                    if alias.name.startswith("_") and not alias.name.startswith("__"):
                        found.append(f"{path.relative_to(package)}:{node.lineno}: "
                                     f"imports {alias.name}")
                    imported.add(alias.asname or alias.name)
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and node.value.id in imported and node.attr.startswith("_")
                    and not node.attr.startswith("__")):
                found.append(f"{path.relative_to(package)}:{node.lineno}: "
                             f"reads {node.value.id}.{node.attr}")
    return found


def test_no_module_uses_another_modules_private_names() -> None:
    assert private_reach(ROOT / "microservices" / "shared" / "database") == []


def test_private_reach_is_found(tmp_path: Path) -> None:
    (tmp_path / "a.py").write_text("_hidden = 1\n")
    (tmp_path / "b.py").write_text("from .a import _hidden\nfrom . import a\nx = a._hidden\n")
    assert private_reach(tmp_path) == ["b.py:1: imports _hidden", "b.py:3: reads a._hidden"]


def import_cycles(graph: grimp.ImportGraph, root: str) -> list[list[str]]:
    """The import cycles among *root*'s modules (strongly connected components of the
    direct-import graph).  A package's ``__init__`` re-exporting its own submodules,
    and a submodule importing its package, are not counted."""
    modules = sorted(m for m in graph.modules if m == root or m.startswith(root + "."))
    edges = {m: sorted(d for d in graph.find_modules_directly_imported_by(m)
                       if d.startswith(root) and d != m and not d.startswith(m + ".")
                       and not m.startswith(d + "."))
             for m in modules}
    order: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []
    for start in modules:  # Tarjan's algorithm, iterative (no recursion limit)
        if start in order:
            continue
        work = [(start, 0)]
        while work:
            node, i = work.pop()
            if i == 0:
                order[node] = low[node] = len(order)
                stack.append(node)
            targets = edges[node]
            if i < len(targets):
                work.append((node, i + 1))
                nxt = targets[i]
                if nxt not in order:
                    work.append((nxt, 0))
                elif nxt in stack:
                    low[node] = min(low[node], order[nxt])
                continue
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == order[node]:
                component = []
                while True:
                    member = stack.pop()
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    cycles.append(sorted(component))
    return cycles


def test_no_import_cycle_among_modules() -> None:
    graph = grimp.build_graph("microservices", include_external_packages=False)
    assert import_cycles(graph, "microservices.shared.database") == []


def test_an_import_cycle_is_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package = tmp_path / "cyc"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("def f() -> None:\n    from . import b  # noqa\n")
    (package / "b.py").write_text("from . import c\n")
    (package / "c.py").write_text("from . import a\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    graph = grimp.build_graph("cyc")
    assert import_cycles(graph, "cyc") == [["cyc.a", "cyc.b", "cyc.c"]]
