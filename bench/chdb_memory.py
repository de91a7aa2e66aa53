"""How much the embedded ClickHouse engine (chDB) alone adds to a process's memory as rows arrive.

    python bench/chdb_memory.py [--rows 200000] [--batch 500]

The worker holds chDB in its own process, so its RSS in bench/soak.py counts the engine's memory
with the heap's. This inserts touchpoints the way the worker's sinks do (a batch at a time; two
page views per customer, with a journey row per customer) into a fresh embedded store with the
project's migrations, and every 20 batches runs the soak's counting queries and prints the
process's RSS and ClickHouse's own tracked memory (``MemoryTracking``). No Kafka, no worker.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def run(rows: int, batch: int, folder: Path) -> None:
    from tracker.store import ClickHouseStore

    store = ClickHouseStore(f"chdb://{folder}", "tracker")
    store.run_sync(store.migrate_sync)

    def value(sql: str) -> int:
        return int(store.run_sync(store.query_sync, sql).rows[0][0])

    def tracked() -> float:
        sql = "SELECT value FROM system.metrics WHERE metric = 'MemoryTracking'"
        return value(sql) / 2**20

    out = sys.stdout
    out.write(f"start: RSS {rss_mib():.0f} MiB, tracked by ClickHouse {tracked():.0f} MiB\n")
    out.write("rows  customers  RSS MiB  tracked MiB\n")
    for number in range(rows // batch):
        first = number * batch
        customer = f"concat('c-', toString(intDiv({first} + number, 2)))"
        store.run_sync(
            store.command_sync,
            "INSERT INTO touchpoints (event_id, ts, received_ts, customer_id, anonymous_id, "
            "type, page_url, source, channel) "
            f"SELECT generateUUIDv4(), now64(3), now64(3), {customer}, "
            f"concat('a-', toString(intDiv({first} + number, 2))), 'page_view', "
            "concat('https://shop.example.com/products/', toString(number % 7)), "
            f"'web_beacon', 'direct' FROM numbers({batch})",
        )
        store.run_sync(
            store.command_sync,
            f"INSERT INTO journeys (customer_id, version) SELECT {customer}, 1 "
            f"FROM numbers({batch}) WHERE number % 2 = 0",
        )
        if number % 20 == 19:
            stored = value("SELECT uniqExact(event_id) FROM touchpoints")
            customers = value("SELECT uniqExact(customer_id) FROM touchpoints")
            out.write(f"{stored:7d} {customers:9d} {rss_mib():8.0f} {tracked():11.0f}\n")
            out.flush()
    store.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=500)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="tracker-bench-chdb-") as folder:
        run(args.rows, args.batch, Path(folder) / "clickhouse")
    return 0


if __name__ == "__main__":
    sys.exit(main())
