"""Cost of the password re-read a pool does before each new connection (not per checkout).

    python benchmarks/credentials.py [--calls 50000]

A pool given ``EDULINK_DB_CREDENTIALS_FILE`` stats the file before each connection it
makes and re-reads it only when it changed; one on the secrets store (development) reads
and parses ``secrets.json``.  Both are compared with what they precede: a new
PostgreSQL connection (a loopback connect with SCRAM to the embedded server measured
a median 14 ms on this machine kind, 50 connects), so the goal is <= 50 us, well under
1 % of a connect.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import timeit
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from microservices.shared.database.core import credentials
from microservices.shared.database.core.secrets_store import SecretStore


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=50_000)
    calls = parser.parse_args().calls
    directory = Path(tempfile.mkdtemp(prefix="edulink-bench-"))
    path = directory / "user.json"
    credentials.write_private(path, json.dumps({
        credentials.FORMAT_KEY: credentials.FORMAT_VERSION, "service": "user",
        "connection": {"host": "h", "dbname": "d", "user": "u", "password": "p" * 43}}))
    store = SecretStore(directory / "home" / "secrets.json")
    for i in range(12):  # six services, runtime and migrator
        store.set(f"service:role{i}", "p" * 43)
    credentials.load(path)
    file_us = timeit.timeit(lambda: credentials.load(path), number=calls) / calls * 1e6
    store_us = timeit.timeit(lambda: store.get("service:role3"), number=calls) / calls * 1e6
    print(f"credential file, unchanged (stat + cache hit): {file_us:6.1f} us per new connection")
    print(f"secrets store (stat + read + JSON parse):     {store_us:6.1f} us per new connection")
    print(f"goal: <= 50 us each: {'met' if max(file_us, store_us) <= 50 else 'MISSED'}")


if __name__ == "__main__":
    main()
