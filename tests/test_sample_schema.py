"""The test material itself: it loads, and holds every object kind it promises."""

from __future__ import annotations

from typing import Any

import pytest

from microservices.shared.database.topology import default_topology

from .conftest import do_provision
from .sample_schema import PAGILA, load_pagila, load_sample_schema, make_supabase_like, snapshot

INST = default_topology().service("institution")


def test_sample_schema_loads_every_kind(fresh_db: dict[str, Any]) -> None:
    do_provision(fresh_db, default_topology())
    load_sample_schema(fresh_db, INST.schema, INST.owner_role)
    snap = snapshot(fresh_db, INST.schema)
    assert snap.rows["campus"] == 2000
    assert sum(n for t, n in snap.rows.items() if t.startswith("event_log")) == 6025
    assert snap.rows["event_log_2026_02a"] > 0 and snap.rows["event_log_default"] > 0
    assert snap.rows["note"] == 1000 and snap.rows["note_archive"] == 500
    assert snap.rows["session_cache"] == 300
    assert snap.matviews == {"campus_stats": True, "campus_cold": False}
    assert snap.sequences["ticket_seq"] == 4242
    assert snap.objects["relkind p"] == 3  # event_log, event_log_2026_02, payment
    assert snap.objects["inheritance"] == 1


@pytest.mark.skipif(PAGILA is None, reason="shared/data/pagila is not beside the checkout")
def test_pagila_loads(fresh_db: dict[str, Any], bin_dir: Any) -> None:
    do_provision(fresh_db, default_topology())
    load_pagila(fresh_db, INST.schema, INST.owner_role, bin_dir / "psql")
    snap = snapshot(fresh_db, INST.schema)
    assert snap.rows["rental"] > 15000
    assert snap.matviews.get("rental_by_category") is True


def test_supabase_like(fresh_db: dict[str, Any]) -> None:
    supa = make_supabase_like(fresh_db)
    assert {"auth", "storage", "vault", "supabase_migrations"} <= set(supa.platform_schemas)
