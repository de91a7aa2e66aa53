"""Journey stitching: events/s through identity and journey on one worker, against a pass-through.

    python bench/journey.py [--customers 20000] [--rounds 2]

bench/README.md (section 4) explains it. In short:

- **Input.** A synthetic mix of customers (page views on one or two devices, identifies that link
  an anonymous id to an email, short-link clicks, calls with a phone number, CRM identifies that
  join a phone to an email, purchases), built as ingest builds them (``accept`` then
  ``enriched`` then ``EnrichedTouchpoint.to_wire``) and pre-loaded onto the identity log, in event-time
  order. Ingest itself is bench/run.py's business; this measures what comes after it.
- **Product.** ``python -m tracker worker``: the real Faust app of ``agents.worker.build_worker``,
  so the identity agent, the journey topic, the journey agent and its changelog-backed tables,
  and ClickHouse (embedded chDB) for touchpoints, identities, sessions, journeys and frictions.
  It is done when ``touchpoints`` holds every event and the live ``journeys`` rows add up to
  every event (restitches after merges included).
- **Baseline.** ``journey.py passthrough``: a Faust app with one agent on the same identity log
  (same records, same single partition, its own consumer group) that forwards every record,
  key and value unchanged, to another topic. It batches and acknowledges as the product's agents
  do (``noack_take(5000, within=1 s)``) and produces through the worker's own ``Outbox``.
- **Timing, the same for both:** the rows after the first output batch, over the time from the
  first output batch to the last (ClickHouse ``inserted_at``/``updated_at`` for the product,
  the moment each forwarded batch is acknowledged for the baseline). Start-up, group joins and
  the first fetch are left out on both sides.
- **State memory per customer:** the bytes of the two changelog-backed tables as Kafka keeps
  them (the last value of each key), and the Python heap the same state takes (tracemalloc,
  after an in-process replay of the same events through ``IdentityStage`` and ``JourneyStage``).

The bar: product events/s >= 50 % of the baseline's. Figures go to stdout (logging) and to
bench/results/journey.json. The exit code is non-zero when something could not be measured,
never for a missed bar.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import hashlib
import logging
import os
import random
import secrets
import shutil
import sys
import tempfile
import time
import tracemalloc
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
from run import (
    RESULTS,
    ROOT,
    BenchError,
    Figure,
    Processes,
    console_query,
    machine,
    start_logging,
    table,
    tail,
    tracker_env,
    write_results,
)

log = logging.getLogger("bench.journey")

JOURNEY_RESULTS = RESULTS.with_name("journey.json")
CUSTOMERS = 20_000
ROUNDS = 2
BAR = 0.50
BATCH = 5000  # TRACKER_SINK_BATCH_SIZE's default: the agents' noack_take size
SALT = "bench-salt"
STARTED = datetime(2026, 11, 16, tzinfo=UTC)  # event times spread over the two days after

USER_AGENT = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36"
)
PAGES = ("/", "/products/{n}", "/products/{n}", "/pricing", "/blog/{n}", "/compare", "/cart")


# -- the events ---------------------------------------------------------------------------------


@dataclass(slots=True)
class Mix:
    """What the generator made, so the run can check what landed."""

    events: int = 0
    customers: int = 0
    expected_journeys: int = 0
    by_type: dict[str, int] = field(default_factory=dict)
    second_device: int = 0
    callers: int = 0
    callers_joined: int = 0
    link_clicks: int = 0
    purchases: int = 0


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _iso(ts: datetime) -> str:
    return ts.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def customer_events(i: int, rng: random.Random, mix: Mix) -> list[dict[str, Any]]:
    """One customer's touchpoints, as clients send them."""
    events: list[dict[str, Any]] = []
    email = f"customer{i}@example.com"
    user = f"u{i:07d}" if rng.random() < 0.5 else ""
    anon_a = f"a{i:07d}-{rng.getrandbits(32):08x}"
    t = STARTED + timedelta(seconds=rng.uniform(0, 2 * 86_400))

    def add(ts: datetime, kind: str, **fields: Any) -> None:
        event = {"event_id": _uuid(rng), "type": kind, "ts": _iso(ts), **fields}
        events.append(event)
        mix.by_type[kind] = mix.by_type.get(kind, 0) + 1

    def page(ts: datetime, anon: str, **fields: Any) -> None:
        path = rng.choice(PAGES).format(n=rng.randrange(1, 500))
        add(
            ts,
            "page_view",
            source="web_beacon",
            channel="web",
            anonymous_id=anon,
            page={"url": f"https://shop.example.com{path}", "title": path},
            context={"user_agent": USER_AGENT},
            **fields,
        )

    def later(low: float, high: float) -> datetime:
        nonlocal t
        t += timedelta(seconds=rng.uniform(low, high))
        return t

    click = ""
    if rng.random() < 0.2:  # arrives through an email campaign's short link
        mix.link_clicks += 1
        click = f"c{i:07d}"
        add(later(0, 1), "link_click", source="shortlink", channel="email", click_id=click)
    for n in range(rng.randint(1, 4)):  # browses on device A; now and then a pause ends a session
        extra = {"click_id": click} if click and n == 0 else {}
        page(later(2400, 7200) if rng.random() < 0.15 else later(20, 600), anon_a, **extra)
    identify = {"anonymous_id": anon_a, "email": email, **({"user_id": user} if user else {})}
    add(later(20, 300), "identify", source="web_beacon", channel="web", **identify)
    if rng.random() < 0.4:  # a second device, anonymous first, then signed in: a merge
        mix.second_device += 1
        anon_b = f"b{i:07d}-{rng.getrandbits(32):08x}"
        later(3600, 6 * 3600)
        for _ in range(rng.randint(1, 3)):
            page(later(20, 600), anon_b)
        add(later(20, 300), "identify", source="web_beacon", channel="web",
            anonymous_id=anon_b, email=email)  # fmt: skip
    joined = True
    if rng.random() < 0.3:  # calls in: known by the phone number alone until the CRM joins it
        mix.callers += 1
        phone = f"+1 415 {2000000 + i:07d}"
        abandoned = rng.random() < 0.1
        properties = {
            "queue": rng.choice(("support", "sales")),
            "disposition": "abandoned" if abandoned else "answered",
            "queue_seconds": str(rng.randint(5, 400)),
        }
        add(later(600, 4 * 3600), "call", source="call_webhook", channel="phone",
            phone=phone, properties=properties)  # fmt: skip
        joined = rng.random() < 2 / 3
        if joined:
            mix.callers_joined += 1
            add(later(30, 120), "identify", source="server", channel="phone",
                email=email, phone=phone, properties={"crm.salesforce": f"SF{i:07d}"})  # fmt: skip
    if rng.random() < 0.25:
        mix.purchases += 1
        who = {"user_id": user} if user else {"email": email}
        add(later(60, 3600), "purchase", source="web_beacon", channel="web",
            anonymous_id=anon_a, value=round(rng.uniform(10, 400), 2), **who)  # fmt: skip
    mix.customers += 1
    mix.expected_journeys += 1 if joined else 2
    return events


def touchpoint_rows(customers: int, seed: int) -> tuple[list[Any], Mix]:
    """The touchpoints ingest makes of the mix (``accept`` then ``enriched``), in event-time
    order."""
    from agents.ingest import enriched
    from tracker.touchpoint import RequestContext, accept

    rng = random.Random(seed)
    mix = Mix()
    payloads = [e for i in range(customers) for e in customer_events(i, rng, mix)]
    payloads.sort(key=lambda e: (e["ts"], e["event_id"]))
    received = datetime.now(UTC)
    contexts = {
        source: RequestContext(
            source=source, received_ts=received, ip="203.0.113.7", hash_salt=SALT
        )
        for source in ("web_beacon", "shortlink", "call_webhook", "server")
    }
    rows = [enriched(accept(p, contexts[p["source"]])) for p in payloads]
    mix.events = len(rows)
    return rows, mix


def identity_log_records(rows: Sequence[Any]) -> list[tuple[bytes, bytes]]:
    """``(key, value)`` pairs as ingest forwarded every touchpoint to the identity log before
    the direct path: the baseline's input."""
    return [(row.event_id.encode(), row.to_wire()) for row in rows]


@dataclass(slots=True)
class Routed:
    """The touchpoints as ingest hands them to stitching: the few that may link identifiers
    on the identity log, the rest straight on the journey topic."""

    identity: list[tuple[bytes, bytes]]
    journey: list[tuple[bytes, bytes]]

    @property
    def ordered_share(self) -> float:
        return len(self.identity) / (len(self.identity) + len(self.journey))


def routed_records(rows: Sequence[Any]) -> Routed:
    """Each row routed by ingest's own router (``StitchRouter.route``) with a replica that
    knows nothing yet, as a worker that has just started on an empty aliases topic: every event
    that carries two identifiers or more takes the identity log. A replica that keeps up sends
    repeated identifier sets direct too (the in-process replay measures that share)."""
    from agents.identity import AliasReplica
    from agents.stitching import StitchRouter

    router = StitchRouter(None, "identity", "journey", AliasReplica())  # type: ignore[arg-type]
    routed = Routed([], [])
    for row in rows:
        record = router.route(row)
        assert record.value is not None
        (routed.identity if record.topic == "identity" else routed.journey).append(
            (record.key, record.value)
        )
    return routed


# -- Kafka helpers ------------------------------------------------------------------------------


async def produce(bootstrap: str, topic: str, records: Sequence[tuple[bytes, bytes]]) -> None:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        enable_idempotence=True,
        linger_ms=5,
        max_batch_size=1_048_576,
    )
    await producer.start()
    try:
        pending = []
        for key, value in records:
            pending.append(await producer.send(topic, value, key=key))
            if len(pending) >= 5000:
                await asyncio.gather(*pending)
                pending = []
        await asyncio.gather(*pending)
    finally:
        await producer.stop()


async def create_topic(bootstrap: str, name: str, partitions: int) -> None:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, partitions, 1)])
    finally:
        await admin.close()


async def compacted_bytes(bootstrap: str, topic: str) -> dict[str, int]:
    """What a compacted topic holds once compacted: the last value of each key, tombstones gone."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        found = consumer.partitions_for_topic(topic)
        for _ in range(50):
            if found:
                break
            await consumer._client.force_metadata_update()
            await asyncio.sleep(0.1)
            found = consumer.partitions_for_topic(topic)
        if not found:
            raise BenchError(f"no changelog topic {topic}")
        partitions = [TopicPartition(topic, p) for p in found]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        last: dict[bytes, int] = {}
        records = 0
        while [p for p, end in ends.items() if await consumer.position(p) < end]:
            for batch in (await consumer.getmany(timeout_ms=1000)).values():
                for record in batch:
                    records += 1
                    if record.value is None:
                        last.pop(record.key, None)
                    else:
                        last[record.key] = len(record.key) + len(record.value)
    finally:
        await consumer.stop()
    return {"keys": len(last), "bytes": sum(last.values()), "records": records}


# -- the baseline: a pass-through Faust agent ---------------------------------------------------


def passthrough(
    bootstrap: str, topic: str, out: str, total: int, app_id: str, result: Path
) -> None:
    """A Faust worker whose one agent forwards each record of ``topic`` to ``out`` unchanged,
    batched and acknowledged as the product's agents are. Writes ``result`` when it has
    forwarded ``total`` records, and runs until it is stopped."""
    import faust

    from agents.stitching import Outbox, Outgoing
    from tracker.settings import Settings

    settings = Settings.from_env(
        {
            "TRACKER_KAFKA_BOOTSTRAP": bootstrap,
            "TRACKER_WORKER_ID": app_id,
            "TRACKER_DATA_DIR": str(result.parent / app_id),
        }
    )
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    app = faust.App(  # the settings of agents.worker.build_worker
        app_id,
        broker=f"kafka://{bootstrap}",
        store="memory://",
        web_enabled=False,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        broker_commit_interval=1.0,
        broker_session_timeout=10.0,
        broker_heartbeat_interval=3.0,
        datadir=str(settings.data_dir / "faust"),
    )
    outbox = Outbox(settings)
    source = app.topic(topic, value_serializer="raw", key_serializer="raw")
    done: list[tuple[int, float]] = []  # (records forwarded so far, when), per batch
    written: list[bool] = []

    @app.agent(source, name="passthrough")
    async def forward(stream: Any) -> None:
        async for events in stream.noack_take(BATCH, within=settings.sink_flush_seconds):
            await outbox.send_all([Outgoing(out, e.key, e.value) for e in events])
            for event in events:
                await stream.ack(event)
            done.append(((done[-1][0] if done else 0) + len(events), time.time()))
            if done[-1][0] >= total and not written:
                written.append(True)
                await asyncio.to_thread(result.write_bytes, orjson.dumps({"batches": done}))

    worker = faust.Worker(app, outbox, loglevel="warning", quiet=True, redirect_stdouts=False)
    worker.execute_from_commandline()


def batch_span(batches: Sequence[Sequence[float]]) -> dict[str, Any]:
    """The baseline's figures, timed as the product's: rows after the first batch over the time
    from the first batch to the last."""
    (first_rows, first_ts), (rows, last_ts) = batches[0], batches[-1]
    span = last_ts - first_ts
    if len(batches) < 3 or span <= 0:
        raise BenchError(f"too few batches ({len(batches)}) to time the steady state")
    return {
        "rows": int(rows),
        "batches": len(batches),
        "first_batch_rows": int(first_rows),
        "span_seconds": span,
        "events_per_second": (rows - first_rows) / span,
    }


def measure_passthrough(
    bootstrap: str, topic: str, out: str, total: int, work: Path, tag: str, processes: Processes
) -> dict[str, Any]:
    result = work / f"passthrough-{tag}.json"
    logfile = work / f"passthrough-{tag}.log"
    launched = time.monotonic()
    pid = processes.start(
        "passthrough",
        [
            sys.executable,
            str(Path(__file__).resolve()),
            "passthrough",
            "--bootstrap",
            bootstrap,
            "--topic",
            topic,
            "--out",
            out,
            "--total",
            str(total),
            "--app-id",
            f"bench-{tag}-passthrough",
            "--result",
            str(result),
        ],
        tracker_env(),
        logfile,
    )
    deadline = time.monotonic() + 600
    while not result.exists():
        if not processes.alive(pid):
            raise BenchError(f"the pass-through exited; its log:\n{tail(logfile)}")
        if time.monotonic() > deadline:
            raise BenchError("the pass-through did not forward every record in 600s")
        time.sleep(0.5)
    time.sleep(0.2)  # the file is written in one call; let it close
    processes.stop(pid)
    batches = orjson.loads(result.read_bytes())["batches"]
    figures = batch_span(batches)
    figures["launch_to_done_seconds"] = time.monotonic() - launched
    log.info(
        "pass-through: %.0f events/s over %.1fs (%d batches)",
        figures["events_per_second"],
        figures["span_seconds"],
        figures["batches"],
    )
    return figures


# -- the product: python -m tracker worker ------------------------------------------------------

SPAN_SQL = (
    "SELECT count(), "
    "toUnixTimestamp64Milli(min(inserted_at)), "
    "greatest(toUnixTimestamp64Milli(max(inserted_at)), "
    "  (SELECT toUnixTimestamp64Milli(max(updated_at)) FROM journeys)), "
    "countIf(inserted_at = (SELECT min(inserted_at) FROM touchpoints)), "
    "uniqExact(inserted_at) FROM touchpoints"
)
LIVE_JOURNEYS_SQL = (
    "SELECT count(), sum(events), countIf(sessions > 1), sum(conversions), sum(frictions) "
    "FROM journeys FINAL WHERE merged_into = ''"
)
OUTPUT_SQL = (
    "SELECT (SELECT count() FROM identities FINAL), (SELECT count() FROM sessions FINAL "
    "WHERE NOT retired), (SELECT count() FROM frictions FINAL WHERE NOT retracted), "
    "(SELECT count() FROM journeys FINAL WHERE merged_into != ''), "
    "(SELECT count() FROM identity_conflicts)"
)


def metric_value(port: int, name: str, labels: str) -> float:
    from run import http_get

    _, body = http_get(f"http://127.0.0.1:{port}/metrics")
    for line in body.decode().splitlines():
        if line.startswith(f"{name}{{{labels}}} "):
            return float(line.split()[-1])
    return 0.0


def measure_worker(
    bootstrap: str,
    prefix: str,
    mix: Mix,
    work: Path,
    tag: str,
    processes: Processes,
    stitchers: int = 0,
) -> dict[str, Any]:
    """One fresh worker (own groups, own tables, own chDB) until every event is stitched; or,
    with ``stitchers``, that many ``--role stitch`` workers and one ``--role write`` worker."""
    from tracker.cli.kafka_local import free_port

    console = free_port()
    worker_id = f"bench-{tag}-worker"
    logfile = work / f"worker-{tag}.log"
    launched = time.monotonic()
    env = tracker_env(
        TRACKER_KAFKA_BOOTSTRAP=bootstrap,
        TRACKER_TOPIC_PREFIX=prefix,
        TRACKER_WORKER_ID=worker_id,
        TRACKER_CLICKHOUSE_URL=f"chdb://{work / f'worker-ch-{tag}'}",
        TRACKER_CONSOLE_PORT=str(console),
        TRACKER_DATA_DIR=str(work / f"worker-{tag}"),
        TRACKER_SINK_BATCH_SIZE=str(BATCH),
        TRACKER_HASH_SALT=SALT,
    )
    role = ["--role", "write"] if stitchers else []
    pids = [
        processes.start("worker", [sys.executable, "-m", "tracker", "worker", *role], env, logfile)
    ]
    # The stitching metrics are read where the stitching runs.
    ports = [console]
    if stitchers:
        ports = [free_port() for _ in range(stitchers)]
        for n, port in enumerate(ports):
            pids.append(
                processes.start(
                    f"stitch-{n}",
                    [sys.executable, "-m", "tracker", "worker", "--role", "stitch"],
                    {
                        **env,
                        "TRACKER_WORKER_HEALTH_PORT": str(port),
                        "TRACKER_DATA_DIR": str(work / f"worker-{tag}-stitch-{n}"),
                    },
                    work / f"worker-{tag}-stitch-{n}.log",
                )
            )

    def stitched(step: str, name: str = "tracker_stitch_records_total") -> float:
        total = 0.0
        for port in ports:
            with contextlib.suppress(OSError, ValueError):
                total += metric_value(port, name, f'step="{step}"')
        return total

    first_seen: float | None = None
    count = events = 0
    handled, quiet_since = -1.0, time.monotonic()
    deadline = time.monotonic() + 900
    while count < mix.events or events < mix.events:
        if not all(processes.alive(pid) for pid in pids):
            raise BenchError(f"a worker exited; its log:\n{tail(logfile)}")
        if time.monotonic() > deadline:
            raise BenchError(
                f"in 900s the worker stitched {count} of {mix.events} touchpoints, "
                f"and its journeys hold {events}; its log:\n{tail(logfile)}"
            )
        time.sleep(0.5)
        with contextlib.suppress(OSError, ValueError):
            count = int(console_query(console, "SELECT count() FROM touchpoints").strip())
            if count and first_seen is None:
                first_seen = time.monotonic()
            if count < mix.events:
                continue  # each read costs the worker CPU: the journeys only once all are in
            events = int(console_query(console, LIVE_JOURNEYS_SQL).split()[1] or 0)
            now = stitched("journey")
            if now != handled:
                handled, quiet_since = now, time.monotonic()
            elif events == mix.events and time.monotonic() - quiet_since > 10:
                break  # every event is in a journey and the journey step is idle
    done = time.monotonic()
    if count != mix.events or events != mix.events:
        for pid in pids:
            processes.stop(pid)
        raise BenchError(
            f"the worker is idle with {count} of {mix.events} touchpoints stored, and journeys "
            f"that hold {events} events: touchpoints were lost"
        )
    rows, first_ms, last_ms, first_batch, inserts = (
        int(v) for v in console_query(console, SPAN_SQL).split()
    )
    span = (last_ms - first_ms) / 1000
    if inserts < 3 or span <= 0:
        raise BenchError(f"too few inserts ({inserts}) to time the steady state")
    journeys = [float(v) for v in console_query(console, LIVE_JOURNEYS_SQL).split()]
    outputs = [int(v) for v in console_query(console, OUTPUT_SQL).split()]
    result: dict[str, Any] = {
        "rows": rows,
        "inserts": inserts,
        "first_insert_rows": first_batch,
        "span_seconds": span,
        "events_per_second": (rows - first_batch) / span,
        "startup_to_first_rows_seconds": (first_seen or done) - launched,
        "first_rows_to_last_polled_seconds": done - (first_seen or done),
        "live_journeys": int(journeys[0]),
        "expected_live_journeys": mix.expected_journeys,
        "journeys_with_several_sessions": int(journeys[2]),
        "conversions": int(journeys[3]),
        "frictions_in_journeys": int(journeys[4]),
        "identities": outputs[0],
        "sessions": outputs[1],
        "frictions": outputs[2],
        "merged_customers": outputs[3],
        "identity_conflicts": outputs[4],
        "stitch_records": {step: stitched(step) for step in ("identity", "journey")},
        # Pre-filled: the worker's own ingest routed nothing, so this is None unless it did.
        "ordered_share": routes_share(console) if not stitchers else None,
        "stitch_workers": stitchers,
        # CPU of each process from its start, per 1,000 events: startup is in it, on both runs.
        "cpu_seconds_per_1000_events": {
            name: cpu_seconds(pid) * 1000 / mix.events
            for name, pid in zip(
                ["writer" if stitchers else "worker"] + [f"stitch-{n}" for n in range(stitchers)],
                pids,
                strict=True,
            )
        },
    }
    for pid in pids:
        processes.stop(pid)
    for table_name in ("journey_state", "identity_links"):
        result[f"{table_name}_changelog"] = asyncio.run(
            compacted_bytes(bootstrap, f"{worker_id}-{table_name}-changelog")
        )
    log.info(
        "%s: %.0f events/s over %.1fs (%d inserts; startup %.1fs); %d live journeys "
        "(%d expected), %d merged away",
        f"{stitchers} stitch workers + writer" if stitchers else "worker",
        result["events_per_second"],
        span,
        inserts,
        result["startup_to_first_rows_seconds"],
        result["live_journeys"],
        mix.expected_journeys,
        result["merged_customers"],
    )
    return result


def cpu_seconds(pid: int) -> float:
    """User and system CPU a running process has used (Linux /proc), children excluded."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def routes_share(port: int) -> float | None:
    """The share of touchpoints the worker's ingest sent to the identity log, from
    ``tracker_stitch_routes_total``; ``None`` if it routed none."""
    ordered = metric_value(port, "tracker_stitch_routes_total", 'path="ordered"')
    direct = metric_value(port, "tracker_stitch_routes_total", 'path="direct"')
    return ordered / (ordered + direct) if ordered + direct else None


# -- state memory, in process -------------------------------------------------------------------


class _NullSink:
    """Takes rows and forgets them: the replay measures state, not output."""

    def add(self, key: str, ts: datetime, record: Any, version: int = 0) -> None:
        pass

    def discard(self) -> None:
        pass

    async def flush(self) -> Any:
        from tracker.store.sink import FlushResult

        return FlushResult(0, 0)


class _Loopback:
    """An outbox that keeps what is sent, so journey records go round to the journey stage."""

    def __init__(self) -> None:
        self.sent: list[Any] = []

    async def send_all(self, records: Sequence[Any]) -> None:
        self.sent.extend(records)


async def replay(rows: Sequence[Any], traced: bool) -> dict[str, Any]:
    """Every row routed as ingest routes it (with a replica that reads every alias at once),
    then through IdentityStage and JourneyStage in batches, as the worker does, with the
    outputs thrown away; then the heap the state holds (tracemalloc, when ``traced``)."""
    from agents.customer import JourneyRules
    from agents.identity import AliasReplica
    from agents.ingest import RawMessage
    from agents.stitching import IdentityStage, JourneyStage, StitchRouter

    outbox = _Loopback()
    if traced:
        gc.collect()
        tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0] if traced else 0
    replica = AliasReplica()
    router = StitchRouter(outbox, "identity", "journey", replica)  # type: ignore[arg-type]
    identity = IdentityStage(
        outbox,  # type: ignore[arg-type]
        "journey",
        "aliases",
        identities=_NullSink(),
        conflicts=_NullSink(),
    )
    journey = JourneyStage(
        outbox,  # type: ignore[arg-type]
        "journey",
        touchpoints=_NullSink(),
        sessions=_NullSink(),
        journeys=_NullSink(),
        frictions=_NullSink(),
        dead_letters=_NullSink(),
        rules=JourneyRules(),
    )
    links: dict[str, Any] = {}
    state: dict[str, Any] = {}
    offset = identity_offset = ordered = 0
    route_seconds = identity_seconds = journey_seconds = 0.0

    def take(topic: str) -> list[Any]:
        taken = [r for r in outbox.sent if r.topic == topic]
        outbox.sent = [r for r in outbox.sent if r.topic != topic]
        return taken

    for start in range(0, len(rows), BATCH):
        began = time.perf_counter()
        for record in take("aliases"):
            replica.apply("aliases", record.key.decode(), record.value)
        for row in rows[start : start + BATCH]:
            router.add(row.event_id, row.ts, row, row.version)
        await router.flush()
        route_seconds += time.perf_counter() - began
        began = time.perf_counter()
        batch = []
        for record in take("identity"):
            batch.append((record.value, identity_offset))
            identity_offset += 1
        ordered += len(batch)
        await identity.handle(batch, links)
        identity_seconds += time.perf_counter() - began
        began = time.perf_counter()
        while sent := take("journey"):
            journey_records = []
            for record in sent:
                journey_records.append(
                    (
                        orjson.loads(record.key),
                        record.value,
                        RawMessage(record.value, "journey", 0, offset),
                    )
                )
                offset += 1
            await journey.handle(journey_records, state)
        journey_seconds += time.perf_counter() - began
    result: dict[str, Any] = {
        "route_seconds": route_seconds,
        "identity_seconds": identity_seconds,
        "journey_seconds": journey_seconds,
        "journey_records": offset,
        "ordered_share": ordered / len(rows),
        "events_per_second": len(rows) / (route_seconds + identity_seconds + journey_seconds),
        "customers": len(state),
    }
    if traced:
        gc.collect()
        with_state = tracemalloc.get_traced_memory()[0]
        state_json = sum(len(v) + len(k) for k, v in state.items())  # the stage keeps JSON
        del state
        gc.collect()
        without_journeys = tracemalloc.get_traced_memory()[0]
        links_json = sum(len(orjson.dumps(v)) + len(k) for k, v in links.items())
        del identity, links
        gc.collect()
        without_identity = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        result.update(
            {
                "heap_bytes_journey_state": with_state - without_journeys,
                "heap_bytes_identity": without_journeys - without_identity,
                "heap_bytes_before": before,
                "json_bytes_journey_state": state_json,
                "json_bytes_identity_links": links_json,
            }
        )
    return result


# -- orchestration ------------------------------------------------------------------------------


def run_bench(customers: int, rounds: int, worker_only: bool = False) -> int:
    from tracker.cli.kafka_local import LocalKafka, free_port
    from tracker.kafka.topology import Topology, ensure_topics
    from tracker.settings import Settings

    started = time.monotonic()
    run_tag = secrets.token_hex(3)
    work = Path(tempfile.mkdtemp(prefix="tracker-bench-journey-"))
    processes = Processes()
    kafka = LocalKafka(work / "kafka", port=free_port())
    seed = int.from_bytes(hashlib.sha256(run_tag.encode()).digest()[:4])
    log.info("building %d customers' events", customers)
    rows, mix = touchpoint_rows(customers, seed)
    records = identity_log_records(rows)
    routed = routed_records(rows)
    event_bytes = sum(len(v) for _, v in records) / len(records)
    log.info(
        "%d events (%.0f bytes each on the identity log): %s",
        mix.events,
        event_bytes,
        ", ".join(f"{k} {v}" for k, v in sorted(mix.by_type.items())),
    )
    log.info(
        "ordered path share: %.1f %% (%d of %d events take the identity log; the rest go "
        "straight to the journey topic)",
        100 * routed.ordered_share,
        len(routed.identity),
        mix.events,
    )
    workers: list[dict[str, Any]] = []
    scaled: list[dict[str, Any]] = []
    baselines: list[dict[str, Any]] = []
    ok = False
    try:
        kafka.start()
        log.info("Kafka on %s (data in %s)", kafka.bootstrap, work)
        for round_ in range(1, rounds + 1):
            # Each round gets its own topics: the worker's journey topic must start empty.
            prefix = f"bench-{run_tag}-journey{round_}."
            settings = Settings.from_env(
                {
                    "TRACKER_KAFKA_BOOTSTRAP": kafka.bootstrap,
                    "TRACKER_TOPIC_PREFIX": prefix,
                    "TRACKER_DATA_DIR": str(work / "topics"),
                }
            )
            asyncio.run(ensure_topics(settings))
            topology = Topology.from_settings(settings)
            out = f"bench-{run_tag}-passthrough{round_}.out"
            asyncio.run(create_topic(kafka.bootstrap, out, topology.journey.partitions))
            # The baseline reads every event from one partition, as the identity log held them
            # all before the direct path; the worker reads them as ingest routes them now.
            source = f"bench-{run_tag}-passthrough{round_}.in"
            asyncio.run(create_topic(kafka.bootstrap, source, topology.identity.partitions))
            began = time.perf_counter()
            asyncio.run(produce(kafka.bootstrap, source, records))
            asyncio.run(produce(kafka.bootstrap, topology.identity.name, routed.identity))
            asyncio.run(produce(kafka.bootstrap, topology.journey.name, routed.journey))
            log.info(
                "round %d: %s, %s and %s pre-filled in %.1fs",
                round_,
                source,
                topology.identity.name,
                topology.journey.name,
                time.perf_counter() - began,
            )
            if worker_only:  # a quick check of the product alone: no baseline, no JSON
                product = measure_worker(
                    kafka.bootstrap, prefix, mix, work, f"{run_tag}-{round_}", processes
                )
                log.info(
                    "one worker (no baseline measured): %.0f events/s; CPU-seconds per 1,000 "
                    "events %.2f",
                    product["events_per_second"],
                    product["cpu_seconds_per_1000_events"]["worker"],
                )
                continue
            log.info("round %d: baseline, a pass-through Faust agent", round_)
            baselines.append(
                measure_passthrough(
                    kafka.bootstrap,
                    source,
                    out,
                    mix.events,
                    work,
                    f"{run_tag}-{round_}",
                    processes,
                )
            )
            log.info("round %d: python -m tracker worker", round_)
            workers.append(
                measure_worker(kafka.bootstrap, prefix, mix, work, f"{run_tag}-{round_}", processes)
            )
            # The same events on topics of their own (the journey topic must start empty).
            two = f"bench-{run_tag}-journey{round_}-two."
            settings = settings.with_overrides(topic_prefix=two)
            asyncio.run(ensure_topics(settings))
            topology = Topology.from_settings(settings)
            asyncio.run(produce(kafka.bootstrap, topology.identity.name, routed.identity))
            asyncio.run(produce(kafka.bootstrap, topology.journey.name, routed.journey))
            log.info("round %d: two stitch workers and the writer", round_)
            scaled.append(
                measure_worker(
                    kafka.bootstrap,
                    two,
                    mix,
                    work,
                    f"{run_tag}-{round_}-two",
                    processes,
                    stitchers=2,
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

    if worker_only:
        return 0
    log.info("in-process replay of the same events (state memory)")
    logic = asyncio.run(replay(rows, traced=False))
    # tracemalloc slows every allocation: a quarter of the customers is enough for per-customer
    # figures, since no state is shared between customers.
    sample, _ = touchpoint_rows(max(customers // 4, 1), seed)
    traced = asyncio.run(replay(sample, traced=True))
    logic["traced_sample"] = traced
    baseline = max(baselines, key=lambda r: float(r["events_per_second"]))
    product = max(workers, key=lambda r: float(r["events_per_second"]))
    two_workers = max(scaled, key=lambda r: float(r["events_per_second"]))
    live = product["live_journeys"]
    changelog = product["journey_state_changelog"]
    links_log = product["identity_links_changelog"]
    figures = [
        Figure(
            "journey",
            "identity log to stitched touchpoints",
            "events/s",
            product["events_per_second"],
            baseline["events_per_second"],
            BAR,
            details={"worker_rounds": workers, "baseline_rounds": baselines},
        ),
        Figure(
            "journey, 2 workers",
            "the same, two stitch workers and the writer",
            "events/s",
            two_workers["events_per_second"],
            baseline["events_per_second"],
            BAR,
            details={"worker_rounds": scaled},
        ),
    ]
    memory = {
        "journey_state changelog, bytes/customer": changelog["bytes"] / live,
        "identity_links changelog, bytes/customer": links_log["bytes"] / live,
        "journey state heap, bytes/customer": traced["heap_bytes_journey_state"]
        / traced["customers"],
        "identity heap (resolver + links), bytes/customer": traced["heap_bytes_identity"]
        / traced["customers"],
    }
    report = write_results(
        JOURNEY_RESULTS,
        started,
        machine=machine_without_wrk(),
        mix={**asdict(mix), "event_bytes": event_bytes, "seed": seed},
        figures=[f.as_dict() for f in figures],
        memory_per_customer=memory,
        live_customers=live,
        in_process_replay=logic,
        ordered_share={
            "cold_replica": routed.ordered_share,
            "replica_keeping_up": logic["ordered_share"],
            "worker_metric": product["ordered_share"],
        },
    )
    log.info("results\n%s", table(figures))
    for name, value in memory.items():
        log.info("state memory: %s: %.0f", name, value)
    for label, run in (("one worker", product), ("two stitch workers + writer", two_workers)):
        log.info(
            "CPU-seconds per 1,000 events, %s: %s",
            label,
            ", ".join(f"{k} {v:.2f}" for k, v in run["cpu_seconds_per_1000_events"].items()),
        )
    log.info(
        "ordered path share: %.1f %% as pre-filled (a replica that knows nothing), %.1f %% with "
        "a replica that keeps up (in-process replay)",
        100 * routed.ordered_share,
        100 * logic["ordered_share"],
    )
    log.info(
        "in-process replay (routing and stages, no Kafka, no ClickHouse): %.0f events/s "
        "(routing %.1fs, identity %.1fs, journey %.1fs for %d journey records)",
        logic["events_per_second"],
        logic["route_seconds"],
        logic["identity_seconds"],
        logic["journey_seconds"],
        logic["journey_records"],
    )
    log.info(
        "%d events, %d customers (%d live journeys), %s CPUs, commit %s, %.0fs; JSON in %s",
        mix.events,
        mix.customers,
        live,
        report["machine"]["cpus"],
        report["machine"]["commit"],
        report["seconds"],
        JOURNEY_RESULTS.relative_to(ROOT),
    )
    return 0


def machine_without_wrk() -> dict[str, Any]:
    """bench/run.py's machine note; this benchmark does not need wrk."""
    try:
        return machine()
    except FileNotFoundError:  # no wrk installed
        return {"cpus": os.cpu_count(), "commit": "", "python": sys.version.split()[0]}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--customers", type=int, default=CUSTOMERS)
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    parser.add_argument(
        "--worker-only",
        action="store_true",
        help="measure one worker only, without the baseline or two workers (a quick check)",
    )
    commands = parser.add_subparsers(dest="command")
    through = commands.add_parser("passthrough", help="(internal) the baseline's Faust worker")
    through.add_argument("--bootstrap", required=True)
    through.add_argument("--topic", required=True)
    through.add_argument("--out", required=True)
    through.add_argument("--total", type=int, required=True)
    through.add_argument("--app-id", required=True)
    through.add_argument("--result", type=Path, required=True)
    args = parser.parse_args(argv)

    start_logging()  # the pass-through's Faust worker puts its own signal handlers in place
    if args.command == "passthrough":
        passthrough(args.bootstrap, args.topic, args.out, args.total, args.app_id, args.result)
        return 0
    try:
        return run_bench(args.customers, args.rounds, args.worker_only)
    except BenchError as exc:
        log.error("benchmark failed: %s", exc)
        return 1


if __name__ == "__main__":
    sys.exit(main())
