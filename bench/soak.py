"""A soak: mixed load on the whole product for minutes; memory, lag and losses over time.

    python bench/soak.py [--minutes 10] [--rate 300] [--clicks 20] [--calls 5]
    python bench/soak.py --minutes 3 --stores memory,rocksdb  # each table store, one after the other
    python bench/soak.py --visitors 100000 --rate 1000 --clicks 0 --calls 0  # memory per customer

On its own local Kafka broker it runs the product as a user runs it (``python -m tracker worker``
and ``serve beacon|links|calls``, one data directory, embedded chDB), then offers at once:

- page batches to the beacon at ``--rate`` events/s, from the end-to-end benchmark's load generator
  (bench/e2e.py): a rolling population of visitors, so new customers keep arriving;
- short-link redirects at ``--clicks``/s (every click logged, so each is a touchpoint);
- signed call webhooks (Standard Webhooks, the generic provider) at ``--calls``/s, each a new call.

Every 15 s it samples the resident memory (RSS) of the worker's process group and each collector,
the stored touchpoints and the lag of the last window (a stitched row's ``inserted_at`` minus its
``received_ts``). After the load it waits for everything accepted to be stored, then checks that
every accepted event is in ClickHouse exactly once: touchpoints ``uniqExact(event_id)`` against the
beacon's and redirects' 2xx answers plus the calls, and ``count()`` against the distinct versions.

With ``--visitors N`` the beacon load is N distinct anonymous visitors instead (``--per-visitor``
page views each, in batches of 100): each a new customer, so the samples show what a customer
adds to the worker's memory.

Memory is flat when the worker's RSS in the last third of the load is within 10 % (or 64 MiB) of
its RSS at the end of the first third, while the customers it holds keep growing. ``--stores``
runs the same load once per table store (``TRACKER_TABLE_STORE``; the default store, ``memory``,
keeps every customer's state on the heap, ``rocksdb`` on disk), the first one being the baseline.
Results go to stdout and bench/results/soak.json. The exit code is non-zero when something was
lost, written twice, or a process died, never for a missed bar.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import hmac
import logging
import os
import secrets
import shutil
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from e2e import PER_EVENT, kafka_pgid, run_generator
from run import (
    RESULTS,
    ROOT,
    BenchError,
    Processes,
    http_get,
    start_logging,
    tail,
    tracker_env,
    wait_until,
    write_results,
)

log = logging.getLogger("bench.soak")

SOAK_RESULTS = RESULTS.with_name("soak.json")
SAMPLE_SECONDS = 15.0
DRAIN_LIMIT = 900.0
FLAT_RATIO = 0.10
FLAT_SLACK_BYTES = 64 * 1024 * 1024
TOKEN = "soak-token"
SLUG = "soak"
GENERIC_SECRET = "whsec_" + base64.b64encode(b"soak-generic-secret-32-bytes!!!!").decode()


def console_query(port: int, sql: str) -> str:
    """The console's read-only SQL, with the API token this run sets for the links API."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/query",
        data=orjson.dumps({"sql": sql, "format": "tsv"}),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return bytes(response.read()).decode()


# -- processes ----------------------------------------------------------------------------------


def group_rss(pgid: int) -> int:
    """Resident bytes of every live process in a process group."""
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid:
                total += int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
    return total


# -- side loads: redirects and calls ------------------------------------------------------------


class Paced(threading.Thread):
    """Calls ``send`` ``rate`` times a second until stopped, counting 2xx answers."""

    def __init__(self, name: str, rate: float, send: Any) -> None:
        super().__init__(name=name, daemon=True)
        self.rate, self.send = rate, send
        self.stop = threading.Event()
        self.sent = self.accepted = 0
        self.statuses: dict[str, int] = {}

    def run(self) -> None:
        due = time.monotonic()
        while self.rate > 0 and not self.stop.is_set():
            wait = due - time.monotonic()
            if wait > 0:
                self.stop.wait(wait)
                continue
            status = self.send(self.sent)
            self.sent += 1
            self.statuses[str(status)] = self.statuses.get(str(status), 0) + 1
            self.accepted += 200 <= status < 400
            due += 1 / self.rate


def _request(url: str, body: bytes | None, headers: dict[str, str], method: str) -> int:
    request = urllib.request.Request(url, data=body, headers=headers, method=method)
    opener = urllib.request.build_opener(_NoRedirect)
    try:
        with opener.open(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def click(links: str, tag: str) -> Any:
    def send(n: int) -> int:
        agent = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/131.0 Safari/537.36"
        return _request(f"{links}/{SLUG}?n={tag}{n}", None, {"User-Agent": agent}, "GET")

    return send


def call(calls: str, tag: str) -> Any:
    key = base64.b64decode(GENERIC_SECRET.removeprefix("whsec_"))

    def send(n: int) -> int:
        now = datetime.now(UTC)
        body = orjson.dumps(
            {
                "call_id": f"soak-{tag}-{n}",
                "status": "completed",
                "timestamp": now.isoformat(timespec="seconds").replace("+00:00", "Z"),
                "direction": "inbound",
                "from": f"+1415555{n % 10000:04d}",
                "to": "+18005550100",
                "talk_seconds": 60 + n % 300,
            }
        )
        msg_id, stamp = f"msg_{tag}_{n}", str(int(now.timestamp()))
        signature = hmac.new(key, f"{msg_id}.{stamp}.".encode() + body, hashlib.sha256).digest()
        headers = {
            "Content-Type": "application/json",
            "webhook-id": msg_id,
            "webhook-timestamp": stamp,
            "webhook-signature": "v1," + base64.b64encode(signature).decode(),
        }
        return _request(f"{calls}/v1/calls/generic", body, headers, "POST")

    return send


class Visitors(threading.Thread):
    """``visitors`` distinct anonymous visitors, each sending ``per_visitor`` page views, at
    ``rate`` events/s in batches of ``BATCH`` events (a server sending for many browsers): every
    visitor is a new customer, so the worker's state grows by one customer per visitor."""

    BATCH = 100

    def __init__(self, url: str, rate: float, visitors: int, per_visitor: int, tag: str) -> None:
        super().__init__(name="visitors", daemon=True)
        self.url, self.rate, self.tag = url, rate, tag
        self.visitors, self.per_visitor = visitors, per_visitor
        self.stop = threading.Event()
        self.sent = self.accepted = 0
        self.statuses: dict[str, int] = {}
        self.start_ms = self.end_ms = 0

    def events(self) -> Any:
        """Each visitor's page views one after the other, ``BATCH`` to a request."""
        batch: list[dict[str, Any]] = []
        for visitor in range(self.visitors):
            for page in range(self.per_visitor):
                batch.append(
                    {
                        "event_id": str(uuid.uuid4()),
                        "type": "page_view",
                        "anonymous_id": f"soak-{self.tag}-{visitor}",
                        "page": {"url": f"https://shop.example.com/products/{page}"},
                    }
                )
                if len(batch) == self.BATCH:
                    yield batch
                    batch = []
        if batch:
            yield batch

    def run(self) -> None:
        self.start_ms = int(time.time() * 1000)
        due = time.monotonic()
        headers = {"Content-Type": "application/json", "User-Agent": "soak/1"}
        for batch in self.events():
            if self.stop.is_set():
                break
            wait = due - time.monotonic()
            if wait > 0 and self.stop.wait(wait):
                break
            now = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
            for event in batch:
                event["ts"] = event["sent_ts"] = now
            status = _request(self.url, orjson.dumps(batch), headers, "POST")
            self.statuses[str(status)] = self.statuses.get(str(status), 0) + 1
            self.sent += len(batch)
            self.accepted += len(batch) if status == 200 else 0
            due += len(batch) / self.rate
        self.end_ms = int(time.time() * 1000)


# -- one soak -------------------------------------------------------------------------------------


def soak(
    store: str,
    minutes: float,
    rate: float,
    clicks: float,
    calls: float,
    bootstrap: str,
    kafka_group: int | None,
    work: Path,
    processes: Processes,
    visitors: int = 0,
    per_visitor: int = 2,
) -> dict[str, Any]:
    from tracker.cli.kafka_local import free_port
    from tracker.kafka.topology import ensure_topics
    from tracker.settings import Settings

    tag = f"{store}-{secrets.token_hex(3)}"
    ports = {name: free_port() for name in ("console", "beacon", "links", "calls")}
    env = {
        "TRACKER_KAFKA_BOOTSTRAP": bootstrap,
        "TRACKER_TOPIC_PREFIX": f"soak-{tag}.",
        "TRACKER_DATA_DIR": str(work / f"data-{tag}"),
        "TRACKER_HASH_SALT": "soak-salt",
        "TRACKER_WORKER_ID": f"soak-{tag}",
        "TRACKER_TABLE_STORE": store,
        "TRACKER_API_TOKEN": TOKEN,
        "TRACKER_GENERIC_WEBHOOK_SECRET": GENERIC_SECRET,
        "TRACKER_LOG_LEVEL": "WARNING",
        "TRACKER_RATE_LIMITS": "off",  # the load comes from one address
        **{f"TRACKER_{name.upper()}_PORT": str(port) for name, port in ports.items()},
    }
    asyncio.run(ensure_topics(Settings.from_env(env)))
    urls = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
    pids: dict[str, int] = {}
    logs: dict[str, Path] = {}
    for name, args in (
        ("worker", ["worker"]),
        ("beacon", ["serve", "beacon"]),
        ("links", ["serve", "links"]),
        ("calls", ["serve", "calls"]),
    ):
        logs[name] = work / f"{name}-{tag}.log"
        pids[name] = processes.start(
            name, [sys.executable, "-m", "tracker", *args], tracker_env(**env), logs[name]
        )
    for name, pid in pids.items():
        url = urls["console" if name == "worker" else name]
        try:
            wait_until(
                f"{name} /readyz",
                lambda url=url: http_get(f"{url}/readyz")[0] == 200,  # type: ignore[misc]
                180,
                lambda pid=pid: processes.alive(pid),  # type: ignore[misc]
            )
        except BenchError as exc:
            raise BenchError(f"{exc}; {name} log:\n{tail(logs[name])}") from None
    status = _request(
        f"{urls['links']}/api/links",
        orjson.dumps({"target": "https://shop.example/landing", "slug": SLUG}),
        {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
        "POST",
    )
    if status not in (200, 201):
        raise BenchError(f"creating the short link answered {status}")

    seconds = visitors * per_visitor / rate if visitors else minutes * 60
    side = [
        Paced("clicks", clicks, click(urls["links"], tag)),
        Paced("calls", calls, call(urls["calls"], tag)),
    ]
    samples: list[dict[str, Any]] = []
    began = time.time()

    def sample_until(done: Any) -> None:
        for thread in side:
            thread.start()
        next_at = time.monotonic()
        while not done():
            if time.monotonic() >= next_at:
                samples.append(take_sample(pids, urls["console"], began))
                next_at += SAMPLE_SECONDS
            time.sleep(0.5)
        for thread in side:
            thread.stop.set()
            thread.join()
        samples.append(take_sample(pids, urls["console"], began))

    def take_sample(pids: dict[str, int], console: str, began: float) -> dict[str, Any]:
        stored = -1
        with contextlib.suppress(OSError, ValueError):
            stored = int(
                console_query(ports["console"], "SELECT uniqExact(event_id) FROM touchpoints")
            )
        customers = -1
        with contextlib.suppress(OSError, ValueError):
            customers = int(
                console_query(ports["console"], "SELECT uniqExact(customer_id) FROM touchpoints")
            )
        point = {
            "second": round(time.time() - began),
            "stored": stored,
            "customers": customers,
            **{f"rss_{name}": group_rss(pid) for name, pid in pids.items()},
        }
        log.info(
            "%s %4ds: stored %d of %d customers, worker RSS %.0f MiB",
            store,
            point["second"],
            stored,
            customers,
            point["rss_worker"] / 2**20,
        )
        return point

    log.info(
        "%s: %.0f s of load: %.0f events/s, %.0f clicks/s, %.0f calls/s",
        store,
        seconds,
        rate,
        clicks,
        calls,
    )
    if visitors:
        sender = Visitors(f"{urls['beacon']}/v1/events", rate, visitors, per_visitor, tag)
        sender.start()
        sample_until(lambda: not sender.is_alive())
        load: dict[str, Any] = {
            "accepted": sender.accepted,
            "statuses": sender.statuses,
            "start_ms": sender.start_ms,
            "end_ms": sender.end_ms,
        }
    else:
        load, _ = run_generator(
            f"{urls['beacon']}/v1/events",
            rate,
            seconds,
            int.from_bytes(secrets.token_bytes(4)),
            work,
            tag,
            processes,
            sample_until,
        )
    clicks_accepted, calls_accepted = side[0].accepted, side[1].accepted
    expected = load["accepted"] + clicks_accepted + calls_accepted
    drained = drain(
        ports["console"], expected, lambda: processes.alive(pids["worker"]), logs["worker"]
    )
    samples.append(take_sample(pids, urls["console"], began))
    rows, distinct, versions, calls_stored = (
        int(v)
        for v in console_query(
            ports["console"],
            "SELECT count(), uniqExact(event_id), uniqExact(event_id, version), "
            "uniqExactIf(event_id, type = 'call') FROM touchpoints",
        ).split()
    )
    customers = int(console_query(ports["console"], "SELECT uniqExact(customer_id) FROM journeys"))
    lag = lag_seconds(ports["console"], int(load["start_ms"]), int(load["end_ms"]))
    for pid in pids.values():
        processes.stop(pid)
    result = {
        "store": store,
        "minutes": seconds / 60,
        "visitors": visitors,
        "offered": {
            "events_per_second": rate,
            "clicks_per_second": clicks,
            "calls_per_second": calls,
        },
        "accepted": {
            "beacon_events": load["accepted"],
            "clicks": clicks_accepted,
            "calls": calls_accepted,
        },
        "statuses": {
            "beacon": load["statuses"],
            "clicks": side[0].statuses,
            "calls": side[1].statuses,
        },
        "expected_events": expected,
        "stored_events": distinct,
        "calls_stored": calls_stored,
        "rows": rows,
        "row_versions": versions,
        "lost": expected - distinct,
        "duplicated_rows": rows - versions,
        "customers": customers,
        "drain_seconds_after_load": drained,
        "lag_seconds": lag,
        "samples": samples,
        "memory": memory_verdict(samples, seconds),
    }
    if distinct != expected or rows != versions:
        raise BenchError(
            f"{store}: {expected} events accepted, {distinct} stored in {rows} rows "
            f"({versions} distinct versions): events were lost or written twice"
        )
    return result


def lag_seconds(console: int, start_ms: int, end_ms: int) -> dict[str, float]:
    """Quantiles of the lag of the events received during the load."""
    sql = (
        "SELECT quantilesExact(0.5, 0.95, 0.99)(lag), max(lag) "
        f"FROM ({PER_EVENT}) WHERE rcv BETWEEN {start_ms} AND {end_ms}"
    )
    quantiles, worst = console_query(console, sql).strip().split("\t")
    p50, p95, p99 = (float(v) / 1000 for v in quantiles.strip("[]").split(","))
    return {"p50": p50, "p95": p95, "p99": p99, "max": float(worst) / 1000}


def drain(console: int, expected: int, alive: Any, logfile: Path) -> float:
    began = time.monotonic()
    while True:
        if not alive():
            raise BenchError(f"the worker exited; its log:\n{tail(logfile)}")
        with contextlib.suppress(OSError, ValueError):
            if (
                int(console_query(console, "SELECT uniqExact(event_id) FROM touchpoints"))
                >= expected
            ):
                return time.monotonic() - began
        if time.monotonic() - began > DRAIN_LIMIT:
            raise BenchError(f"not all {expected} accepted events stored within {DRAIN_LIMIT:.0f}s")
        time.sleep(2.0)


def memory_verdict(samples: Sequence[dict[str, Any]], seconds: float) -> dict[str, Any]:
    """The worker's RSS at the end of the first third against the most in the last third."""
    during = [s for s in samples if s["second"] <= seconds + SAMPLE_SECONDS]
    first = [s["rss_worker"] for s in during if s["second"] <= seconds / 3]
    last = [s["rss_worker"] for s in during if s["second"] >= seconds * 2 / 3]
    if not first or not last:
        return {"flat": None}
    reference, peak = first[-1], max(last)
    growth = peak - reference
    # The slope: what each customer added to the worker's RSS after the first third.
    start, end = [s for s in during if s["second"] <= seconds / 3][-1], during[-1]
    new_customers = end.get("customers", -1) - start.get("customers", -1)
    per_customer = (
        (end["rss_worker"] - start["rss_worker"]) / new_customers if new_customers > 0 else None
    )
    return {
        "bytes_per_customer": per_customer,
        "rss_first_third_mib": reference / 2**20,
        "rss_last_third_peak_mib": peak / 2**20,
        "growth_mib": growth / 2**20,
        "growth_ratio": growth / reference,
        "flat": growth <= max(FLAT_RATIO * reference, FLAT_SLACK_BYTES),
    }


# -- report ---------------------------------------------------------------------------------------


def report(results: Sequence[dict[str, Any]]) -> str:
    lines = []
    for r in results:
        m, lag = r["memory"], r["lag_seconds"]
        lines.append(
            f"{r['store']}: {r['minutes']:.1f} min; accepted {r['accepted']['beacon_events']:,} beacon events, "
            f"{r['accepted']['clicks']:,} clicks, {r['accepted']['calls']:,} calls = {r['expected_events']:,}; "
            f"stored {r['stored_events']:,} in {r['rows']:,} rows: lost {r['lost']}, duplicated {r['duplicated_rows']}; "
            f"{r['customers']:,} customers; lag p50 {lag['p50']:.2f} s, p95 {lag['p95']:.2f} s, max {lag['max']:.2f} s; "
            f"drained {r['drain_seconds_after_load']:.0f} s after the load"
        )
        if m.get("flat") is not None:
            lines.append(
                f"  worker RSS {m['rss_first_third_mib']:.0f} MiB after the first third, "
                f"peak {m['rss_last_third_peak_mib']:.0f} MiB in the last third "
                f"({m['growth_ratio']:+.1%}): {'flat' if m['flat'] else 'GROWING'}"
            )
            if m.get("bytes_per_customer") is not None:
                lines.append(
                    f"  after the first third: {m['bytes_per_customer'] / 1024:.1f} KiB of worker RSS per new customer"
                )
        lines.append("  second  stored  customers  worker RSS MiB  beacon  links  calls")
        lines.extend(
            f"  {s['second']:6d} {s['stored']:7d} {s.get('customers', -1):10d} "
            f"{s['rss_worker'] / 2**20:15.0f} {s['rss_beacon'] / 2**20:7.0f} "
            f"{s['rss_links'] / 2**20:6.0f} {s['rss_calls'] / 2**20:6.0f}"
            for s in r["samples"]
        )
    if len(results) == 2:
        a, b = results
        ga, gb = a["memory"].get("growth_mib"), b["memory"].get("growth_mib")
        if ga is not None and gb is not None:
            lines.append(
                f"RSS growth, {a['store']} {ga:.0f} MiB against {b['store']} {gb:.0f} MiB (baseline)"
            )
    return "\n".join(lines) + "\n"


def run(
    minutes: float,
    rate: float,
    clicks: float,
    calls: float,
    stores: Sequence[str],
    visitors: int = 0,
    per_visitor: int = 2,
) -> int:
    from tracker.cli.kafka_local import LocalKafka, free_port

    work = Path(tempfile.mkdtemp(prefix="tracker-bench-soak-"))
    processes = Processes()
    kafka = LocalKafka(work / "kafka", port=free_port())
    results: list[dict[str, Any]] = []
    ok = False
    started = time.monotonic()
    try:
        kafka.start()
        group = kafka_pgid(work / "kafka")
        for store in stores:
            results.append(
                soak(
                    store,
                    minutes,
                    rate,
                    clicks,
                    calls,
                    kafka.bootstrap,
                    group,
                    work,
                    processes,
                    visitors,
                    per_visitor,
                )
            )
        ok = True
    finally:
        processes.stop_all()
        kafka.stop()
        if ok:
            shutil.rmtree(work, ignore_errors=True)
        else:
            log.error("kept %s for its logs", work)
    write_results(SOAK_RESULTS, started, results=results)
    sys.stdout.write("\n" + report(results) + f"JSON in {SOAK_RESULTS.relative_to(ROOT)}\n")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    global SAMPLE_SECONDS
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=300.0, help="beacon events/s")
    parser.add_argument("--clicks", type=float, default=20.0, help="short-link redirects/s")
    parser.add_argument("--calls", type=float, default=5.0, help="call webhooks/s")
    parser.add_argument(
        "--stores",
        default="memory",
        help="table stores to run the load with, one after the other (memory, rocksdb)",
    )
    parser.add_argument(
        "--visitors",
        type=int,
        default=0,
        help="instead of the page load, this many distinct anonymous visitors (new customers), "
        "--per-visitor page views each, at --rate events/s; the run lasts as long as that takes",
    )
    parser.add_argument("--per-visitor", type=int, default=2, help="page views per visitor")
    parser.add_argument(
        "--sample-seconds", type=float, default=SAMPLE_SECONDS, help="seconds between samples"
    )
    args = parser.parse_args(argv)
    SAMPLE_SECONDS = args.sample_seconds
    start_logging()
    try:
        return run(
            args.minutes,
            args.rate,
            args.clicks,
            args.calls,
            args.stores.split(","),
            args.visitors,
            args.per_visitor,
        )
    except BenchError as exc:
        log.error("benchmark failed: %s", exc)
        return 1


if __name__ == "__main__":
    sys.exit(main())
