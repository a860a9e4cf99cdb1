"""What verify reports: the problems, the exposure rows and the role x schema matrix of
privileges actually held."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from psycopg import sql

from ..topology import Topology
from .catalog import CatalogState
from .model import OWN_TABLE_PRIVILEGES


@dataclass(frozen=True)
class Problem:
    """One difference between the database and the topology.

    ``repair`` is the statement that removes the difference, where one exists
    that an admin can run; ``edulink-db provision`` applies it.  Differences
    that provisioning's own GRANTs fix (a missing privilege) carry none.
    """

    role: str
    schema: str
    object: str
    privilege: str
    message: str
    repair: sql.Composed | None = field(default=None, compare=False)

    def as_dict(self) -> dict[str, str | None]:
        return {"role": self.role, "schema": self.schema, "object": self.object,
                "privilege": self.privilege, "message": self.message,
                "repair": self.repair.as_string(None) if self.repair is not None else None}



@dataclass(frozen=True)
class ExposureRow:
    """One exposed relation as the database has it: which columns its readers get."""

    service: str
    schema: str
    table: str
    columns: tuple[str, ...]
    readers: tuple[str, ...]
    state: str  # 'granted', 'differs' or 'not created yet'

    def as_dict(self) -> dict[str, Any]:
        return {"service": self.service, "schema": self.schema, "table": self.table,
                "columns": list(self.columns), "readers": list(self.readers),
                "state": self.state}


@dataclass
class VerifyReport:
    problems: list[Problem] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    matrix: dict[str, dict[str, str]] = field(default_factory=dict)
    catalog_queries: int = 0
    logins_checked: int = 0
    exposure: list[ExposureRow] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "matrix": self.matrix,
            "exposure": [e.as_dict() for e in self.exposure],
            "problems": [p.as_dict() for p in self.problems],
            "warnings": self.warnings,
            "catalog_queries": self.catalog_queries,
            "logins_checked": self.logins_checked,
        }


def _label(privs: set[str], usage: bool, create: bool) -> str:
    own = set(OWN_TABLE_PRIVILEGES)
    if own <= privs:
        base, extra = "rw", privs - own
    elif privs == {"SELECT"}:
        base, extra = "r", set()
    elif not privs:
        base, extra = ("usage" if usage else "-"), set()
    else:
        base, extra = "", privs
    if extra:
        base = "+".join([b for b in [base] if b] + sorted(p.lower() for p in extra))
    if create:
        base += "+CREATE"
    return base


def privilege_matrix(state: CatalogState, topology: Topology) -> dict[str, dict[str, str]]:
    """role -> schema -> label, derived from the privileges actually held."""
    matrix: dict[str, dict[str, str]] = {}
    for role in topology.runtime_roles:
        row: dict[str, str] = {}
        for schema in topology.schemas:
            usage = (role, schema, "USAGE") in state.schema_privileges
            create = (role, schema, "CREATE") in state.schema_privileges
            privs = {p for (r, s, _n, p) in state.relation_privileges
                     if r == role and s == schema and p != "USAGE"}
            privs |= {p for (_o, s, t, g, p) in state.default_privileges
                      if g == role and s == schema and t == "r"}
            columns = any(r == role and s == schema and not whole
                          for (r, s, _n, _c), whole in state.column_reads.items())
            if schema == topology.shared.schema and privs == {"INSERT"} and usage:
                row[schema] = "append"
            elif not usage and not privs and not create and not columns:
                row[schema] = "-"
            elif columns and not privs:
                row[schema] = "cols" + ("+CREATE" if create else "")
            else:
                row[schema] = _label(privs, usage, create) + ("+cols" if columns else "")
        matrix[role] = row
    return matrix
