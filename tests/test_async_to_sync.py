"""tools/async_to_sync.py: the sync modules are generated from their async sources."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent
TOOL = ROOT / "tools" / "async_to_sync.py"

SOURCE = '''"""A sample."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from psycopg import AsyncConnection


class AsyncThing:
    async def __aenter__(self) -> AsyncThing:
        await asyncio.sleep(0.1)  # the comment stays: await AsyncThing
        return self

    async def rows(self, conn: AsyncConnection) -> AsyncIterator[int]:
        async with conn.cursor() as cur:
            async for row in await cur.execute("SELECT 'await AsyncThing'"):
                yield row[0]
        await conn.aclose()  # sync: conn.close()  # closes at once

    async def _afollow(self) -> None:
        await self._afollow()
'''


def _tool() -> ModuleType:
    spec = importlib.util.spec_from_file_location("async_to_sync", TOOL)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_rewrite_drops_async_and_maps_names_but_never_strings() -> None:
    out = _tool().convert(SOURCE, {"_afollow": "_follow"})
    assert "async " not in out and "await " not in out.split("#")[0]
    assert "class Thing:" in out and "def __enter__(self) -> Thing:" in out
    assert "time.sleep(0.1)  # the comment stays: await AsyncThing" in out
    assert "def rows(self, conn: Connection) -> Iterator[int]:" in out
    assert "with conn.cursor() as cur:" in out
    assert """for row in cur.execute("SELECT 'await AsyncThing'"):""" in out
    assert "        conn.close()  # closes at once\n" in out
    assert "def _follow(self) -> None:\n        self._follow()" in out
    # Line for line: a traceback in the sync module points at the same line of the source.
    assert out.count("\n") == SOURCE.count("\n")


def test_every_generated_module_is_up_to_date() -> None:
    result = subprocess.run([sys.executable, str(TOOL), "--check"], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_check_fails_on_a_hand_edited_generated_module(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    tool = _tool()
    (tmp_path / "thing_async.py").write_text(SOURCE, encoding="utf-8")
    monkeypatch.setattr(tool, "ROOT", tmp_path)
    monkeypatch.setattr(tool, "PAIRS", [(Path("thing_async.py"), Path("thing.py"), {})])
    assert tool.main([]) == 0
    generated = (tmp_path / "thing.py").read_text(encoding="utf-8")
    assert generated.startswith("# WARNING: this file is generated from thing_async.py")
    compile(generated, "thing.py", "exec")
    assert tool.main(["--check"]) == 0
    (tmp_path / "thing.py").write_text(generated + "# a hand edit\n", encoding="utf-8")
    assert tool.main(["--check"]) == 1
    assert tool.main([]) == 0 and tool.main(["--check"]) == 0
