#!/usr/bin/env python3
"""Run Django's own test suite against our Django engine (docs/django-suite.md).

    python scripts/django_suite.py [--modes stock,home,...] [--modules a,b] [--json FILE]

Downloads the source distribution of the installed Django (pinned sha256 in
scripts/django-suite-hashes.txt), runs a fixed list of its test modules with
``tests/runtests.py`` once per mode against a real PostgreSQL -- the test server:
embedded PostgreSQL 18, or ``EDULINK_TEST_DATABASE_URL`` -- and reports, per mode,
passed/failed/skipped and the failures the ``stock`` baseline does not share
(regressions).  Exit status 1 when any mode has a regression (or did not finish),
2 when the baseline itself did not finish.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import django
import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

warnings.filterwarnings("ignore", module="platformdirs")  # XDG_RUNTIME_DIR unset (root, CI)

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # tests.clusters, tests.django_suite

from microservices.shared.database.connections.location import (  # noqa: E402
    LOCATION_TABLE,
    META_OWNER,
    META_SCHEMA,
    location_string,
)
from microservices.shared.database.relocation.meta import ensure_meta  # noqa: E402
from tests.django_suite.common import (  # noqa: E402
    ALIASES,
    SERVER_ENV,
    SERVICE,
    test_database_name,
)

HASHES = ROOT / "scripts" / "django-suite-hashes.txt"
CACHE_ENV = "EDULINK_DJANGO_SUITE_CACHE"
DEFAULT_CACHE = ROOT / ".cache" / "django-suite"

MODULES = [
    "backends", "basic", "queries", "expressions", "aggregation", "transactions",
    "transaction_hooks", "select_for_update", "timezones", "datetimes", "db_functions",
    "model_fields", "bulk_create", "update", "delete", "prefetch_related", "migrations",
    "schema", "introspection", "inspectdb", "postgres_tests", "servers", "test_utils", "cache",
]
MODES = ("stock", "home", "moved", "moved-pool", "rls")
BASELINE = "stock"
MOVED_MODES = ("moved", "moved-pool")
# The rls mode also runs this module of ours: it fails unless every test really runs
# inside the user context.
RLS_CHECK = "tests.django_suite.rls_check"
RLS_CHECK_TESTS = 4  # the tests in rls_check.py
# One mode's run is killed after this long (a hung test must not hold CI for hours).
MODE_TIMEOUT_S = 40 * 60


class SuiteError(Exception):
    """A refusal worth one line (bad hash, no pin, download failed)."""


# -- the source distribution ---------------------------------------------------------------

def pinned_hashes(path: Path = HASHES) -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            version, digest = line.split()
            pins[version] = digest.lower()
    return pins


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch_suite(version: str, cache: Path) -> Path:
    """Django *version*'s ``tests`` directory from its verified sdist, extracted in *cache*."""
    pins = pinned_hashes()
    expected = pins.get(version)
    cache.mkdir(parents=True, exist_ok=True)
    sdist = cache / f"django-{version}.tar.gz"
    if not sdist.exists():
        # pip resolves the index (and any mirror configured for it) as it does for
        # every other package; --no-binary gives the sdist, which has tests/.
        result = subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary",
             ":all:", f"Django=={version}", "-d", str(cache)],
            capture_output=True, text=True, check=False)
        if result.returncode != 0 or not sdist.exists():
            raise SuiteError(f"pip download of the Django {version} sdist failed: "
                             f"{(result.stderr or result.stdout).strip().splitlines()[-1:]}")
    actual = sha256(sdist)
    if expected != actual:
        raise SuiteError(
            f"Django {version} sdist {sdist}: sha256 {actual} does not match the pin "
            f"{expected or '(none: add a line to ' + str(HASHES.relative_to(ROOT)) + ')'}")
    tree = cache / f"django-{version}"
    marker = tree / ".edulink-verified"
    # The marker names the sdist's hash: a tree from another download is not reused.
    if not (marker.exists() and marker.read_text() == actual):
        shutil.rmtree(tree, ignore_errors=True)
        with tarfile.open(sdist) as tar:
            tar.extractall(cache, filter="data")  # no absolute paths, links out, devices
        marker.write_text(actual)
    return tree / "tests"


# -- servers -------------------------------------------------------------------------------

def reachable_tempdir(prefix: str) -> Path:
    """A temporary directory the embedded server's OS user may pass through (as root the
    servers run as another user; mkdtemp is 0700): as tests/conftest.py does."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o711)
    return path


# Extensions the chosen modules' migrations create: without one, Django's migrate of the
# test database fails and not a single test of any module runs.
EXTENSIONS = {
    "db_functions": ["pgcrypto"],
    "postgres_tests": ["bloom", "btree_gin", "btree_gist", "citext", "hstore", "pg_trgm",
                       "unaccent", "uuid-ossp"],
}


def needed_extensions(modules: list[str]) -> set[str]:
    return {ext for label in modules for ext in EXTENSIONS.get(label.split(".")[0], [])}


def missing_extensions(params: dict[str, Any], needed: set[str]) -> list[str]:
    with psycopg.connect(**params, autocommit=True) as conn:
        have = {r[0] for r in conn.execute("SELECT name FROM pg_catalog.pg_available_extensions")}
    return sorted(needed - have)


def newest_debian_bin_dir() -> Path | None:
    from tests.clusters import debian_bin_dir

    base = Path("/usr/lib/postgresql")
    versions = sorted((int(p.name) for p in base.glob("[0-9]*") if p.name.isdigit()),
                      reverse=True)
    return next((d for v in versions if (d := debian_bin_dir(v)) is not None), None)


@contextlib.contextmanager
def home_server(modules: list[str], notes: list[str]) -> Iterator[dict[str, Any]]:
    """Superuser parameters of the test server: ``EDULINK_TEST_DATABASE_URL``, or a
    fresh embedded server, stopped afterwards.  The embedded wheel is built without
    OpenSSL and libuuid (no pgcrypto, no uuid-ossp), which db_functions and
    postgres_tests create: then the server is a throwaway cluster of the newest
    Debian PostgreSQL installed instead (tests/clusters.py), said in the notes."""
    needed = needed_extensions(modules)
    url = os.environ.get("EDULINK_TEST_DATABASE_URL")
    if url:
        params = {**conninfo_to_dict(url), "dbname": "postgres"}
        missing = missing_extensions(params, needed)
        if missing:
            raise SuiteError(f"the server of EDULINK_TEST_DATABASE_URL lacks the extensions "
                             f"{', '.join(missing)} that the chosen modules' migrations create")
        yield params
        return
    from microservices.shared.database.server.embedded import EmbeddedServer
    from tests.ports import free_port

    home = reachable_tempdir("edulink-django-suite-") / ".edulink-db"
    emb = EmbeddedServer(home, port=free_port())
    try:
        params = emb.admin_params(emb.start())
        missing = missing_extensions(params, needed)
        if not missing:
            yield params
            return
        emb.stop()
        debian = newest_debian_bin_dir()
        if debian is None:
            raise SuiteError(f"the embedded PostgreSQL lacks the extensions {', '.join(missing)}"
                             " that the chosen modules' migrations create, and no Debian "
                             "PostgreSQL is installed: set EDULINK_TEST_DATABASE_URL")
        from tests.clusters import Cluster

        notes.append(f"the embedded PostgreSQL lacks {', '.join(missing)}: the home server is "
                     f"a throwaway cluster from {debian}")
        with Cluster.create(home.parent, "home", bin_dir=debian) as cluster:
            yield {**cluster.params}
    finally:
        emb.stop()
        shutil.rmtree(home.parent, ignore_errors=True)


def server_version(params: dict[str, Any]) -> int:
    with psycopg.connect(**params, autocommit=True) as conn:
        return conn.info.server_version


class SecondServer:
    """The moved modes' second server: a throwaway cluster (tests/clusters.py) of the home
    server's major version where one is installed, with the home superuser's name and
    password, so the engine's located connections log in there as they do at home."""

    def __init__(self, home: dict[str, Any]) -> None:
        from tests.clusters import SUPERUSER, Cluster, debian_bin_dir

        self.notes: list[str] = []
        major = server_version(home) // 10000
        from microservices.shared.database.server.embedded import bin_dir as embedded_bin

        embedded = embedded_bin()
        bin_dir: Path | None = None
        probe = subprocess.run([str(embedded / "postgres"), "--version"],
                               capture_output=True, text=True, check=False)
        if probe.stdout.split()[-1].split(".")[0] != str(major):
            bin_dir = debian_bin_dir(major)
            if bin_dir is None:
                self.notes.append(f"second server: PostgreSQL {probe.stdout.split()[-1]} "
                                  f"(embedded), home is {major}")
        self.root = reachable_tempdir("edulink-django-suite-2nd-")
        self.cluster = Cluster.create(self.root, "second", bin_dir=bin_dir)
        user, password = str(home["user"]), str(home.get("password") or "")
        with self.cluster.connect() as conn:
            if user == SUPERUSER:
                conn.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(
                    sql.Identifier(user), sql.Literal(password)))
            else:
                conn.execute(sql.SQL("CREATE ROLE {} LOGIN SUPERUSER PASSWORD {}").format(
                    sql.Identifier(user), sql.Literal(password)))
        self.params: dict[str, Any] = {**self.cluster.params, "user": user,
                                       "password": password}

    def close(self) -> None:
        self.cluster.destroy()
        shutil.rmtree(self.root, ignore_errors=True)


# Django's PostgreSQL features name this ICU collation for its collation tests, and the
# suite's models use it (model_fields, inspectdb): without it migrate fails and no test
# runs.  The embedded PostgreSQL is built without ICU.
TEST_COLLATION = "sv-x-icu"


@contextlib.contextmanager
def stand_in_collation(server: dict[str, Any], notes: list[str], label: str) -> Iterator[None]:
    """On a server without :data:`TEST_COLLATION`, a stand-in copied from "C" in
    template1 (which Django's test databases and ours are created from) for as long as
    the block runs: the suite's models can then be created, and only tests that depend
    on Swedish ordering fail -- in every mode alike, the baseline included."""
    template = {**server, "dbname": "template1"}
    name = sql.Identifier(TEST_COLLATION)
    with psycopg.connect(**template, autocommit=True) as conn:
        made = conn.execute("SELECT 1 FROM pg_catalog.pg_collation WHERE collname = %s",
                            [TEST_COLLATION]).fetchone() is None
        if made:
            conn.execute(sql.SQL('CREATE COLLATION {} FROM "C"').format(name))
            notes.append(f"{label}: no ICU; collation {TEST_COLLATION} is a stand-in "
                         "copied from C in template1 during the run")
    try:
        yield
    finally:
        if made:
            with psycopg.connect(**template, autocommit=True) as conn:
                conn.execute(sql.SQL("DROP COLLATION IF EXISTS {}").format(name))


def recreate_database(server: dict[str, Any], name: str) -> None:
    with psycopg.connect(**server, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
            sql.Identifier(name)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def drop_database(server: dict[str, Any], name: str) -> None:
    with psycopg.connect(**server, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
            sql.Identifier(name)))


def meta_owner_exists(server: dict[str, Any]) -> bool:
    with psycopg.connect(**server, autocommit=True) as conn:
        return conn.execute("SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = %s",
                            [META_OWNER]).fetchone() is not None


def prepare_moved(mode: str, home: dict[str, Any], second: SecondServer) -> list[str]:
    """Create each alias's test database on both servers and, in the home one, the
    registry (as ``move-service`` does: relocation.meta.ensure_meta, owned by the NOLOGIN
    meta owner role) with a row saying SERVICE lives in the same-named database on the
    second server.  Django then finds the databases (``--keepdb``) and migrates them
    through the engine, which follows the registry to the second server."""
    names = [test_database_name(mode, alias) for alias in ALIASES]
    for name in names:
        recreate_database(home, name)
        recreate_database(second.params, name)
        with psycopg.connect(**{**home, "dbname": name}, autocommit=True) as conn:
            ensure_meta(conn)
            where = location_string({**second.params, "dbname": name})
            conn.execute(sql.SQL(
                "INSERT INTO {} (service, location, epoch, moved_at) VALUES (%s, %s, 1, now())"
            ).format(sql.Identifier(META_SCHEMA, LOCATION_TABLE)), [SERVICE, where])
    return names


def routing_problems(home: dict[str, Any], second: SecondServer, names: list[str]) -> list[str]:
    """Where the moved modes' tables went: Django's tables (django_migrations, made by the
    test run's migrate) must be on the second server only; the home databases hold the
    registry and nothing else.  Otherwise the run did not test a moved service.  (Django
    sets up ``other`` only when a chosen test uses it: only ``default`` must be there.)"""
    problems = []
    count = sql.SQL("SELECT count(*) FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n"
                    " ON n.oid = c.relnamespace WHERE c.relkind IN ('r', 'p')"
                    " AND n.nspname NOT IN ('pg_catalog', 'information_schema', {})").format(
        sql.Literal(META_SCHEMA))
    for name in names:
        with psycopg.connect(**{**home, "dbname": name}, autocommit=True) as conn:
            at_home = conn.execute(count).fetchone()
        with psycopg.connect(**{**second.params, "dbname": name}, autocommit=True) as conn:
            there = conn.execute("SELECT pg_catalog.to_regclass('django_migrations') IS NOT NULL"
                                 ).fetchone()
        if at_home and at_home[0]:
            problems.append(f"{at_home[0]} table(s) in {name} on the home server")
        if name == names[0] and not (there and there[0]):
            problems.append(f"no django_migrations in {name} on the second server")
    return problems


# -- running and parsing -------------------------------------------------------------------

@dataclass
class ModeResult:
    mode: str
    status: str = "ok"  # ok | failed | crashed | timeout | skipped
    ran: int = 0
    passed: int = 0
    failures: int = 0
    errors: int = 0
    skipped: int = 0
    expected_failures: int = 0
    unexpected_successes: int = 0
    time_s: float = 0.0
    failing: list[str] = field(default_factory=list)
    regressions: list[str] = field(default_factory=list)
    log: str = ""
    note: str = ""
    routing: list[str] = field(default_factory=list)  # moved modes: misplaced tables

    @property
    def failed(self) -> int:
        return self.failures + self.errors + self.unexpected_successes


_RAN = re.compile(r"^Ran (\d+) tests? in [\d.]+s$", re.MULTILINE)
_VERDICT = re.compile(r"^(OK|FAILED)(?: \((.*)\))?$", re.MULTILINE)
_HEADER = re.compile(r"^(FAIL|ERROR|UNEXPECTED SUCCESS): (\S+) \(([^)]*)\)", re.MULTILINE)


def parse_output(text: str, result: ModeResult) -> None:
    """Fill *result* from unittest's summary at the end of runtests.py's output."""
    ran = _RAN.findall(text)
    verdicts = _VERDICT.findall(text)
    if not ran or not verdicts:
        result.status = "crashed"
        return
    result.ran = int(ran[-1])
    verdict, counts = verdicts[-1]
    for part in filter(None, (p.strip() for p in counts.split(","))):
        key, _eq, value = part.partition("=")
        attr = key.strip().replace(" ", "_")
        if hasattr(result, attr) and value.isdigit():
            setattr(result, attr, int(value))
    names = set()
    for _kind, method, where in _HEADER.findall(text):
        # Python >= 3.11 prints "test_x (module.Class.test_x)"; class and module fixtures
        # ("setUpClass (module.Class)") and older Pythons give the class only.
        names.add(where if where.endswith("." + method) else f"{where}.{method}")
    result.failing = sorted(names)
    # Expected failures are Django's own bookkeeping (they pass as expected).
    result.passed = max(0, result.ran - result.failures - result.errors - result.skipped
                        - result.unexpected_successes)
    result.status = "ok" if verdict == "OK" else "failed"


def settings_module(mode: str) -> str:
    return "tests.django_suite." + mode.replace("-", "_")


def run_mode(mode: str, suite: Path, home: dict[str, Any], modules: list[str], parallel: int,
             logs: Path, timeout_s: float) -> ModeResult:
    moved = mode in MOVED_MODES
    labels = list(modules) + ([RLS_CHECK] if mode == "rls" else [])
    # -v 2: one "name ... ok" line per test (the rls check counts its own).
    argv = [sys.executable, "runtests.py", f"--settings={settings_module(mode)}", "--noinput",
            "--verbosity=2",
            # Clones made for --parallel would be made at home, not where the registry
            # points: the moved modes run serially in the databases made for them.
            f"--parallel={1 if moved else parallel}", *(["--keepdb"] if moved else []),
            *labels]
    env = {**os.environ,
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
           SERVER_ENV: json.dumps({k: home.get(k) for k in ("host", "port", "user", "password")}),
           "PYTHONUNBUFFERED": "1"}
    log = logs / f"{mode}.log"
    result = ModeResult(mode, log=str(log))
    start = time.monotonic()
    with log.open("w") as out:
        out.write("$ " + " ".join(argv) + "\n")
        out.flush()
        proc = subprocess.Popen(argv, cwd=suite, env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            # Its own session: the parallel workers go with it.
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            result.status, result.note = "timeout", f"killed after {timeout_s:.0f}s"
    result.time_s = round(time.monotonic() - start, 1)
    if result.status != "timeout":
        text = log.read_text(errors="replace")
        parse_output(text, result)
        if result.status == "crashed":
            result.note = f"exit status {proc.returncode}, no unittest summary (see the log)"
        elif mode == "rls":
            passed = len(re.findall(r"^\S+ \(" + re.escape(RLS_CHECK) + r"\.\S+\) \.\.\. ok$",
                                    text, re.MULTILINE))
            result.note = (f"context check {passed}/{RLS_CHECK_TESTS} passed"
                           if passed == RLS_CHECK_TESTS else
                           f"CONTEXT CHECK FAILED: {passed}/{RLS_CHECK_TESTS} of rls_check passed,"
                           " the results do not show the RLS layer")
    return result


def find_regressions(results: dict[str, ModeResult]) -> None:
    base = results.get(BASELINE)
    known = set(base.failing) if base is not None and base.status in ("ok", "failed") else None
    for mode, res in results.items():
        if mode == BASELINE or res.status == "skipped":
            continue
        # Without a finished baseline every failure counts: nothing says it is Django's.
        res.regressions = [n for n in res.failing if known is None or n not in known]


# -- the report ----------------------------------------------------------------------------

def report(results: dict[str, ModeResult], header: str) -> str:
    lines = [header, f"{'mode':<11} {'passed':>7} {'failed':>7} {'skipped':>7} "
                     f"{'time':>8}  status"]
    for res in results.values():
        note = f" ({res.note})" if res.note else ""
        lines.append(f"{res.mode:<11} {res.passed:>7} {res.failed:>7} {res.skipped:>7} "
                     f"{res.time_s:>7.0f}s  {res.status}{note}")
    for res in results.values():
        if res.mode == BASELINE or res.status == "skipped":
            continue
        if res.status in ("crashed", "timeout"):
            lines.append(f"{res.mode}: did not finish ({res.note}); log: {res.log}")
        lines.append(f"{res.mode}: {len(res.regressions)} regression(s) against {BASELINE}"
                     + (":" if res.regressions else ""))
        lines += [f"  {name}" for name in res.regressions]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--modes", default=",".join(MODES),
                        help=f"comma-separated, from {', '.join(MODES)} (default: all)")
    parser.add_argument("--modules", default=None,
                        help="comma- or space-separated test labels (default: the fixed list)")
    parser.add_argument("--parallel", type=int, default=os.cpu_count() or 1,
                        help="processes for the modes that may run in parallel (default: CPUs)")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument("--timeout", type=float, default=MODE_TIMEOUT_S,
                        help="seconds before one mode's run is killed")
    args = parser.parse_args(argv)

    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        parser.error(f"unknown mode(s) {', '.join(unknown)}; choose from {', '.join(MODES)}")
    modules = args.modules.replace(",", " ").split() if args.modules else list(MODULES)
    cache = Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE)
    version = django.get_version()
    try:
        suite = fetch_suite(version, cache)
    except SuiteError as exc:
        print(f"django_suite: {exc}", file=sys.stderr)
        return 2
    logs = cache / "logs" / version
    logs.mkdir(parents=True, exist_ok=True)

    results: dict[str, ModeResult] = {}
    notes: list[str] = []
    with contextlib.ExitStack() as stack:
        try:
            home = stack.enter_context(home_server(modules, notes))
        except SuiteError as exc:
            print(f"django_suite: {exc}", file=sys.stderr)
            return 2
        pg = server_version(home)
        header = (f"Django {version} suite, {len(modules)} module(s), PostgreSQL "
                  f"{pg // 10000}.{pg % 10000} at {home['host']}:{home['port']}")
        print(header, flush=True)
        stack.enter_context(stand_in_collation(home, notes, "home server"))
        second: SecondServer | None = None
        for mode in modes:
            if mode == "moved-pool" and django.VERSION < (5, 1):
                results[mode] = ModeResult(mode, status="skipped",
                                           note="Django < 5.1 has no connection pool")
                continue
            made: list[str] = []
            owner_existed = True
            if mode in MOVED_MODES:
                if second is None:
                    second = SecondServer(home)
                    stack.callback(second.close)
                    notes += second.notes
                    stack.enter_context(stand_in_collation(second.params, notes, "second server"))
                owner_existed = meta_owner_exists(home)
                made = prepare_moved(mode, home, second)
            print(f"--- {mode}: running", flush=True)
            try:
                res = run_mode(mode, suite, home, modules, args.parallel, logs, args.timeout)
                if made and second is not None:
                    problems = routing_problems(home, second, made)
                    res.routing = problems
                    res.note = "; ".join(filter(None, [res.note, *problems])) or \
                        "tables on the second server only"
            finally:
                for name in made:
                    drop_database(home, name)
                    if second is not None:
                        drop_database(second.params, name)
                if made and not owner_existed:
                    # The meta owner role is cluster-wide; it owned only what was dropped.
                    with psycopg.connect(**home, autocommit=True) as conn:
                        conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(
                            sql.Identifier(META_OWNER)))
            results[mode] = res
            print(f"--- {mode}: {res.status}, ran {res.ran}, failed {res.failed}, "
                  f"skipped {res.skipped}, {res.time_s:.0f}s", flush=True)
    find_regressions(results)
    text = report(results, header)
    for note in notes:
        text += f"\nnote: {note}"
    print(text)
    if args.json:
        args.json.write_text(json.dumps({
            "django": version, "postgresql": pg, "modules": modules, "notes": notes,
            "modes": {m: {**asdict(r), "failed": r.failed} for m, r in results.items()},
        }, indent=2) + "\n")
    base = results.get(BASELINE)
    if base is not None and base.status not in ("ok", "failed"):
        return 2
    bad = [r for m, r in results.items() if m != BASELINE and
           (r.regressions or r.routing or r.status in ("crashed", "timeout")
            or "CONTEXT CHECK FAILED" in r.note)]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
