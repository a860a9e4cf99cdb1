"""README.md stays true: its commands are the ones CI runs."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_ci_runs_the_readme_test_command() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    match = re.search(r'^test_command="(.+)"$', ci, re.MULTILINE)
    assert match, "no test_command in .ci/run"
    assert match.group(1) in (ROOT / "README.md").read_text()


def test_readme_starts_with_the_two_fresh_machine_commands() -> None:
    head = (ROOT / "README.md").read_text()[:2500]
    assert "edulink-db up" in head
    assert "pip install -e '.[test]'" in head


def test_ci_django_legs_name_tests_that_exist() -> None:
    """A renamed test must not silently drop out of (or break) the Django legs."""
    ci = (ROOT / ".ci" / "run").read_text()
    match = re.search(r'^django_tests="(.+)"$', ci, re.MULTILINE)
    assert match, "no django_tests in .ci/run"
    for item in match.group(1).split():
        path, _sep, name = item.partition("::")
        text = (ROOT / path).read_text()
        if name:
            assert f"def {name}(" in text, f".ci/run names {item}, which does not exist"
