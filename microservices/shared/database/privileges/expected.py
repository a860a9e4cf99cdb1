"""What the topology declares each role should hold: the expected side of verify's
comparison, derived from :mod:`.model` and the topology, never from provisioning."""

from __future__ import annotations

from dataclasses import dataclass

from ..connections import budget
from ..migrations.history import HISTORY_TABLE
from ..topology import Topology
from .catalog import TABLE_KINDS, CatalogState, Relation
from .model import OWN_SEQUENCE_PRIVILEGES, OWN_TABLE_PRIVILEGES


@dataclass(frozen=True)
class Access:
    """What a runtime role should have on one schema."""

    label: str
    usage: bool
    table: frozenset[str]
    sequence: frozenset[str]


NO_ACCESS = Access("-", False, frozenset(), frozenset())


def expected_access(topology: Topology) -> dict[tuple[str, str], Access]:
    """(runtime role, schema) -> the access the topology declares."""
    out: dict[tuple[str, str], Access] = {}
    for svc in topology.services:
        # A readable service that exposes nothing gives its readers nothing, not even
        # USAGE; the others give USAGE plus column grants (see compare._column_problems).
        readable = {s.schema for s in topology.readable_services(svc) if s.exposes}
        for schema in topology.schemas:
            if schema == svc.schema:
                acc = Access("rw", True, frozenset(OWN_TABLE_PRIVILEGES),
                             frozenset(OWN_SEQUENCE_PRIVILEGES))
            elif schema in readable:
                acc = Access("cols", True, frozenset(), frozenset())
            elif schema == topology.shared.schema:
                acc = Access("audit", True, frozenset(), frozenset())
            else:
                acc = NO_ACCESS
            out[(svc.runtime_role, schema)] = acc
    return out


def expected_relation_privileges(topology: Topology, rel: Relation, role: str) -> frozenset[str]:
    if rel.name == HISTORY_TABLE:
        return frozenset()  # migration history: the owner role's business only
    access = expected_access(topology).get((role, rel.schema), NO_ACCESS)
    if rel.schema == topology.shared.schema:
        is_audit = rel.name == topology.shared.audit_table and rel.kind in TABLE_KINDS
        return frozenset({"INSERT"}) if is_audit else frozenset()
    return access.sequence if rel.kind == "S" else access.table


def expected_default_privileges(topology: Topology) -> set[tuple[str, str, str, str, str]]:
    out: set[tuple[str, str, str, str, str]] = set()
    for svc in topology.services:
        for priv in OWN_TABLE_PRIVILEGES:
            out.add((svc.owner_role, svc.schema, "r", svc.runtime_role, priv))
        for priv in OWN_SEQUENCE_PRIVILEGES:
            out.add((svc.owner_role, svc.schema, "S", svc.runtime_role, priv))
        out.add((svc.owner_role, svc.schema, "f", svc.runtime_role, "EXECUTE"))
    return out


def expected_connection_limits(state: CatalogState, topology: Topology) -> dict[str, int]:
    """runtime role -> the CONNECTION LIMIT it should have on this server: the
    connection budget's model (connections/budget.py) applied to the server's numbers
    that the catalog read (the same formula the provisioning SQL ran there)."""
    if state.connection_budget is None:
        return {s.runtime_role: s.connection_limit if s.connection_limit is not None else -1
                for s in topology.services}
    max_conn, su_reserved, reserved = state.connection_budget[:3]
    return budget.role_limits(budget.Server(max_conn, su_reserved, reserved), topology)
