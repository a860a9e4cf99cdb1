"""Migration files: naming, parsing, checksums and validation (the script directory).

A service's migrations are a directory of SQL files:

    V1__create_profiles.sql       versioned: applied once, in numeric order
    V1.1__add_index.sql           (V1_1 is the same version: Flyway's spelling)
    V10__later.sql                V2 sorts before V10
    R__reporting_views.sql        repeatable: re-applied whenever its content changes

Everything here happens before any connection is made: a directory with a bad
name, a duplicate version, an empty or non-UTF-8 file, or transaction control
inside a file is rejected as a whole with :class:`~.errors.MigrationFileError`.

Checksums are SHA-256 over the content with line endings normalised (CRLF and
CR become LF, a UTF-8 BOM is dropped), so a checkout on Windows does not look
like an edit.

A file runs in one transaction unless it contains a statement PostgreSQL
refuses inside one (CREATE INDEX CONCURRENTLY and friends) or says
``-- edulink:transaction=off``; ``-- edulink:transaction=on`` forces a
transaction (and PostgreSQL then rejects such statements).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property
from itertools import pairwise
from pathlib import Path
from typing import Any

from pglast import parser as pg
from sqlparse.engine import FilterStack

from ..core.errors import MigrationFileError

_VERSIONED = re.compile(r"V(?P<version>[0-9]+(?:[._][0-9]+)*)__(?P<description>[^/\\]+)\.sql")
_REPEATABLE = re.compile(r"R__(?P<description>[^/\\]+)\.sql")
_DIRECTIVE = re.compile(r"^\s*--\s*edulink:transaction\s*=\s*(?P<value>on|off)\s*$",
                        re.IGNORECASE | re.MULTILINE)

# Statements PostgreSQL refuses to run inside a transaction block.
_NON_TRANSACTIONAL = [
    re.compile(p, re.IGNORECASE | re.DOTALL) for p in (
        r"^CREATE\s+(UNIQUE\s+)?INDEX\s+CONCURRENTLY\b",
        r"^DROP\s+INDEX\s+CONCURRENTLY\b",
        r"^REINDEX\b.*\bCONCURRENTLY\b",
        r"^VACUUM\b",
        r"^(CREATE|DROP)\s+DATABASE\b",
        r"^(CREATE|DROP)\s+TABLESPACE\b",
        r"^ALTER\s+SYSTEM\b",
        r"^ALTER\s+TABLE\b.*\bDETACH\s+PARTITION\b.*\bCONCURRENTLY\b",
        r"^(CREATE|DROP)\s+SUBSCRIPTION\b",
    )
]
_TRANSACTION_CONTROL = re.compile(
    r"^(BEGIN|START\s+TRANSACTION|COMMIT|END|ROLLBACK|ABORT|PREPARE\s+TRANSACTION|"
    r"COMMIT\s+PREPARED|SAVEPOINT|RELEASE)\b", re.IGNORECASE)
_PSQL_META = re.compile(r"^\\[a-zA-Z]")


@dataclass(frozen=True)
class SqlStatement:
    """One statement of a file, the line it starts on (1-based), and its code without
    comments (for recognising the kind of statement)."""

    text: str
    line: int
    code: str


@dataclass(frozen=True)
class ParsedSql:
    statements: tuple[SqlStatement, ...]
    transactional: bool


@dataclass(frozen=True)
class MigrationFile:
    """A migration file: name, version and checksum are read when the directory is
    loaded (enough for status and validate); its statements are parsed -- and the
    file's SQL checked -- on first use, which ``migrate`` does for every pending
    file before it runs any."""

    path: Path
    kind: str  # "versioned" | "repeatable"
    version: tuple[int, ...] | None
    description: str
    checksum: str
    text: str = field(repr=False, compare=False)

    @cached_property
    def parsed(self) -> ParsedSql:
        return parse_sql(self.path, self.text)

    @property
    def statements(self) -> tuple[SqlStatement, ...]:
        return self.parsed.statements

    @property
    def transactional(self) -> bool:
        return self.parsed.transactional

    @property
    def script(self) -> str:
        return self.path.name

    @property
    def version_text(self) -> str | None:
        return None if self.version is None else ".".join(map(str, self.version))

    @property
    def label(self) -> str:
        return f"V{self.version_text}" if self.version is not None else f"R__{self.description}"


def normalise(text: str) -> str:
    return text.removeprefix("\ufeff").replace("\r\n", "\n").replace("\r", "\n")


def checksum(text: str) -> str:
    return hashlib.sha256(normalise(text).encode("utf-8")).hexdigest()


def parse_version(text: str) -> tuple[int, ...]:
    """'1.10' -> (1, 10); trailing zeros dropped so V1 and V1.0 are the same version."""
    parts = [int(p) for p in re.split(r"[._]", text)]
    while len(parts) > 1 and parts[-1] == 0:
        parts.pop()
    return tuple(parts)


_COMMENTS = re.compile(r"--[^\n]*|/\*.*?\*/", re.DOTALL)


def _strip_comments(chunk: str) -> str:
    # Only used to recognise what a statement starts with, so a '--' inside a string
    # literal later in the statement does no harm. (sqlparse.format(strip_comments=True)
    # does this too, about 100x slower.)
    return _COMMENTS.sub(" ", chunk).strip()


def split_statements(text: str) -> list[SqlStatement]:
    """Split SQL into statements (dollar quotes, comments and strings respected).

    Linear in the size of *text*: sqlparse's lexer is lossless, so its statements
    concatenate back to *text* (minus trailing whitespace) and each one starts where
    the previous one ended; the line number is carried along instead of being
    recounted from the start of the file for every statement.
    """
    out: list[SqlStatement] = []
    offset = 0  # where the current statement starts in text
    line = 1  # the line at offset
    # The same filter stack sqlparse.split() runs, minus its str().strip() per statement.
    statements: Iterator[Any] = FilterStack().run(text)  # type: ignore[no-untyped-call]
    for stmt in statements:
        raw = str(stmt)
        if not text.startswith(raw, offset):  # pragma: no cover - lexer was not lossless
            found = text.find(raw, offset)
            if found < 0:
                raise MigrationFileError(
                    "internal error: the SQL splitter lost track of the file's text; "
                    "please report this with the file.")
            line += text.count("\n", offset, found)
            offset = found
        chunk = raw.strip()
        code = _strip_comments(chunk)
        if code and code != ";":
            leading = len(raw) - len(raw.lstrip())
            out.append(SqlStatement(text=chunk, line=line + raw.count("\n", 0, leading),
                                    code=code))
        line += raw.count("\n")
        offset += len(raw)
    return out


def scan_statements(text: str) -> list[SqlStatement]:
    """The same statements as :func:`split_statements`, found by PostgreSQL's own
    scanner (pglast, about 100x faster than sqlparse); what the linter uses.  Falls back
    to sqlparse where the scanner gives up (an unterminated string or comment)."""
    try:
        slices = pg.split(text, with_parser=False, only_slices=True)
    except pg.ParseError:
        return split_statements(text)
    out: list[SqlStatement] = []
    line, offset = 1, 0
    for part in slices:
        raw = text[part]
        line += text.count("\n", offset, part.start)
        offset = part.start
        chunk = raw.strip()
        code = _strip_comments(chunk)
        if code:
            leading = len(raw) - len(raw.lstrip())
            out.append(SqlStatement(text=chunk, line=line + raw.count("\n", 0, leading),
                                    code=code))
    return out


def parse_file(path: Path) -> MigrationFile:
    name = path.name
    versioned = _VERSIONED.fullmatch(name)
    repeatable = _REPEATABLE.fullmatch(name)
    if not versioned and not repeatable:
        raise MigrationFileError(
            f"{path}: cannot parse the file name. Use V<version>__<description>.sql "
            "(e.g. V3__add_index.sql, V1.2__x.sql) or R__<description>.sql."
        )
    try:
        raw = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MigrationFileError(
            f"{path}: not valid UTF-8 (byte {exc.start}); save the file as UTF-8."
        ) from None
    text = normalise(raw)
    match = versioned or repeatable
    assert match is not None
    return MigrationFile(
        path=path,
        kind="versioned" if versioned else "repeatable",
        version=parse_version(versioned.group("version")) if versioned else None,
        description=match.group("description"),
        checksum=checksum(text),
        text=text,
    )


def _code_line(stmt: SqlStatement) -> int:
    """The line of the statement's first code: its text starts with the comments above
    it (pg_dump's header above \\restrict, a migration's header above BEGIN)."""
    lines = stmt.text.split("\n")
    skipped = next((i for i, text in enumerate(lines)
                    if text.strip() and not text.strip().startswith("--")), 0)
    return stmt.line + skipped


def parse_sql(path: Path, text: str, statements: list[SqlStatement] | None = None
              ) -> ParsedSql:
    """Check *text* (split into *statements*, by default with :func:`split_statements`)
    as a migration file's SQL; MigrationFileError (the first problem) if the runner would
    refuse it."""
    parsed, problems = check_sql(text, split_statements(text) if statements is None
                                 else statements)
    if problems:
        line, message = problems[0]
        raise MigrationFileError(f"{path}, line {line}: {message}" if line
                                 else f"{path}: {message}")
    return parsed


def check_sql(text: str, statements: list[SqlStatement]
              ) -> tuple[ParsedSql, list[tuple[int, str]]]:
    """The file's statements and whether it runs in a transaction, and every (line, why)
    the runner would refuse it for (line 0: the whole file)."""
    problems: list[tuple[int, str]] = []
    if not statements:
        problems.append((0, "the file has no SQL statements."))
    for stmt in statements:
        code = stmt.code
        if _PSQL_META.match(code):
            problems.append((_code_line(stmt), (
                f"psql meta-commands ({code.split()[0]}) are not SQL; write the SQL they "
                "stand for (pg_dump 17.6+ writes \\restrict: delete it). 'edulink-db lint' "
                "lists every such line.")))
        elif _TRANSACTION_CONTROL.match(code):
            problems.append((_code_line(stmt), (
                f"{code.split()[0].rstrip(';').upper()} -- edulink-db runs each file in its own "
                "transaction (or, for CONCURRENTLY and the like, statement by statement); "
                "remove transaction control from the file.")))
    detected = [s for s in statements if any(p.match(s.code) for p in _NON_TRANSACTIONAL)]
    directive = _DIRECTIVE.search(text)
    if directive is None:
        transactional = not detected
    else:
        transactional = directive.group("value").lower() == "on"
        if transactional and detected:
            problems.append((detected[0].line, (
                f"the file says edulink:transaction=on but "
                f"'{detected[0].code.split(chr(10))[0][:60]}' cannot run inside a "
                "transaction; remove the directive.")))
    return ParsedSql(statements=tuple(statements), transactional=transactional), problems


def load_directory(directory: Path) -> list[MigrationFile]:
    """All migrations in *directory*: versioned in version order, then repeatables.

    A missing directory means no migrations.  Files that are not ``.sql`` are
    ignored (READMEs, editor backups), but ``.sql`` files must be well named.
    """
    if not directory.exists():
        return []
    if not directory.is_dir():
        raise MigrationFileError(f"{directory} is not a directory.")
    files = [parse_file(p) for p in sorted(directory.iterdir())
             if p.is_file() and p.suffix == ".sql"]
    versioned = sorted((f for f in files if f.kind == "versioned"),
                       key=lambda f: f.version or ())
    for a, b in pairwise(versioned):
        if a.version == b.version:
            raise MigrationFileError(
                f"{directory}: {a.path.name} and {b.path.name} have the same version "
                f"{a.version_text}; give one of them a new version."
            )
    repeatable = sorted((f for f in files if f.kind == "repeatable"),
                        key=lambda f: f.description)
    for a, b in pairwise(repeatable):
        if a.description == b.description:
            raise MigrationFileError(f"{directory}: two repeatable files named {a.path.name}.")
    return versioned + repeatable
