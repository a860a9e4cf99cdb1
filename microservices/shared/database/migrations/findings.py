"""What the linter reports: :class:`Finding`, its severities, and where each rule is
documented (docs/lint-rules.md, one anchor per rule; squawk's rules on squawk's site)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

ERROR, WARNING = "error", "warning"

DOCS_URL = "docs/lint-rules.md"  # in the edulink-db repository
SQUAWK_DOCS_URL = "https://squawkhq.com/docs/"


def rule_url(rule: str) -> str:
    """The docs page of *rule*: ``squawk/<name>`` on squawk's site, ours by anchor."""
    family, _, name = rule.partition("/")
    if family == "squawk":
        return SQUAWK_DOCS_URL + name
    return f"{DOCS_URL}#{family}-{name}"


@dataclass(frozen=True)
class Finding:
    """One lint finding.  *line* and *column* are 1-based; *rule* is stable
    (``contract/...``, ``squawk/...``, ``lint/...``)."""

    file: str
    line: int
    rule: str
    severity: str
    message: str
    column: int = 1

    @property
    def url(self) -> str:
        return rule_url(self.rule)

    def as_dict(self) -> dict[str, Any]:
        return {"file": self.file, "line": self.line, "column": self.column,
                "rule": self.rule, "severity": self.severity, "message": self.message,
                "url": self.url}

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.severity} [{self.rule}] {self.message}"
