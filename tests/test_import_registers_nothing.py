"""Importing the package registers nothing globally (issue 29): edulink-db's Prometheus
metrics appear in the default registry only once monitoring is turned on."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

PROGRAM = """
import json, sys
from prometheus_client import REGISTRY

def ours():
    return sorted(n for n in REGISTRY._names_to_collectors if n.startswith("edulink_db"))

import microservices.shared.database
import microservices.shared.database.connection_manager
from microservices.shared.database.connection_manager import connection_manager
from microservices.shared.database.connections.manager import connection_manager as same
imported = ours()
monitoring_loaded = sorted(m for m in sys.modules if ".monitoring" in m)

from microservices.shared.database.connections import hooks
hooks.instrumentation()  # what the first pool opened with monitoring on does
print(json.dumps({"imported": imported, "monitoring_loaded": monitoring_loaded,
                  "same": connection_manager is same, "enabled": ours()}))
"""


def test_importing_registers_no_metric_until_monitoring_is_on() -> None:
    out = subprocess.run([sys.executable, "-c", PROGRAM], cwd=ROOT, capture_output=True,
                         text=True, timeout=120, check=True).stdout
    seen = json.loads(out)
    assert seen["imported"] == []
    assert seen["monitoring_loaded"] == []
    assert seen["same"] is True
    assert "edulink_db_query_errors_total" in seen["enabled"]
    assert "edulink_db_pool_connections" in seen["enabled"]
    assert "edulink_db_replica_reads" in seen["enabled"]
    assert "edulink_db_query_duration_seconds" in seen["enabled"]
