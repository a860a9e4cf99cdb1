"""Writes and reads through a switchover and a failover of a real Patroni cluster,
against a bare psycopg writer in the same run (the baseline).

    python benchmarks/patroni_failover.py [--runs 5] [--sync on,off] [--kinds switchover,failover]

Starts a three-node Patroni cluster (scripts/patroni-cluster.sh: PostgreSQL 15, etcd,
ttl 10) once per synchronous mode, provisions the default topology, and runs each event
*--runs* times under the load of tests/ha_load.py: a writer through get_connection, a
replica reader, a primary reader, and a bare psycopg writer on the same multi-host URL
that reconnects at once.  After a failover the killed node is started again (it
rejoins as a replica) before the next run.

Printed per mode and event (min / median / max over the runs): how long writes paused
(longest gap between two acknowledged writes) for ours and for the bare writer, the
ratio ours/bare, how soon ours resumed after the promotion, the longest gap of replica
reads, and how many acknowledged writes the new leader lacks.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.ha_load import Outcome, prepare, run_event
from tests.patroni import PatroniCluster, ensure_installed, wait_for


def spread(values: list[float], unit: str = "s") -> str:
    if not values:
        return "-"
    return (f"{min(values):.2f} / {statistics.median(values):.2f} / "
            f"{max(values):.2f}{' ' + unit if unit else ''}")


def run_mode(sync: bool, kinds: list[str], runs: int) -> dict[str, list[Outcome]]:
    root = Path(tempfile.mkdtemp(prefix="edulink-patroni-bench-"))
    root.chmod(0o711)
    cluster = PatroniCluster(root / "cluster")
    results: dict[str, list[Outcome]] = {kind: [] for kind in kinds}
    try:
        cluster.start(sync=sync)
        admin = prepare(cluster)
        for kind in kinds:
            for run in range(1, runs + 1):
                wait_for(cluster.ready, 120)
                time.sleep(1)
                outcome = run_event(cluster, admin, kind)
                print(f"  run {run}: {outcome.line()}", flush=True)
                results[kind].append(outcome)
                if kind == "failover":
                    cluster.start_node(outcome.old_leader)
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--sync", default="on,off", help="synchronous_mode values to run")
    parser.add_argument("--kinds", default="switchover,failover")
    args = parser.parse_args()
    ensure_installed()
    kinds = [k for k in args.kinds.split(",") if k]
    table = []
    for mode in args.sync.split(","):
        sync = mode == "on"
        print(f"synchronous_mode {mode}:", flush=True)
        for kind, outcomes in run_mode(sync, kinds, args.runs).items():
            table.append((mode, kind, outcomes))
    print("\n| sync | event | writes paused: ours | bare psycopg | ours/bare | resumed after "
          "promotion | replica reads' longest gap | lost (acknowledged) |")
    print("|---|---|---|---|---|---|---|---|")
    for mode, kind, outcomes in table:
        ours = [o.pause_ours for o in outcomes]
        bare = [o.pause_bare for o in outcomes]
        ratio = [o.pause_ours / o.pause_bare for o in outcomes if o.pause_bare > 0]
        lost = [o.lost_ours + o.lost_bare for o in outcomes]
        acked = sum(o.acked for o in outcomes)
        print(f"| {mode} | {kind} | {spread(ours)} | {spread(bare)} | {spread(ratio, '')} | "
              f"{spread([o.resumed_after_promotion for o in outcomes])} | "
              f"{spread([o.read_gap_replica for o in outcomes])} | "
              f"{sum(lost)} of {acked} (per run {min(lost)} / "
              f"{statistics.median(lost):g} / {max(lost)}) |")


if __name__ == "__main__":
    main()
