"""End to end: lag and throughput from the beacon to stitched rows in ClickHouse, at a fixed rate.

    python bench/e2e.py [--rates 1000,2000] [--seconds 60]
    python bench/e2e.py --seconds 15      # a short check, about 3 minutes

bench/README.md (section "End to end") explains it. In short: on its own local Kafka broker, each
offered rate gets a fresh product, run as a user runs it (``python -m tracker serve beacon`` and
``python -m tracker worker``, one data directory, embedded chDB, default settings). A load
generator in its own process posts valid touchpoints to ``POST /v1/events`` the way t.js sends
them (a page's events in one request; anonymous visitors, some who identify with an email, some
of them returning on a new device, some purchases), open-loop: requests are scheduled by the
clock at the offered rate and never wait for earlier answers. Then, in ClickHouse, through the
console's ``POST /api/query``:

- lag: ``inserted_at`` of an event's stitched ``touchpoints`` row minus its ``received_ts``
  (both ``DateTime64(3)``, the beacon's and the worker's clocks on this one machine);
- accepted (the beacon's 200 answers) against stored (``uniqExact(event_id)``) and rows
  (``count()``): nothing lost, nothing duplicated;
- held: the rate of stored rows over the last two thirds of the load is within 5 % of the
  accepted rate, and the median lag of the events received in the last third is not more than
  that of the first third plus max(1 s, half of it).

The baseline, measured in the same run, is what the edge took: the rate the beacon acknowledged,
the raw topic's end offsets over the same window, and the time from a request's scheduled start
to the beacon's 200 (the event is in Kafka then). The bars (issue 10): p95 lag at most 2 s at
1,000 events/s offered; 2,000 events/s held. Results go to stdout and bench/results/e2e.json.
The exit code is non-zero when something could not be measured (a process died, events were
lost or written twice, the worker did not finish within the drain limit), never for a missed bar.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import platform
import random
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson
from journey import metric_value
from run import (
    RESULTS,
    ROOT,
    USER_AGENTS,
    BenchError,
    Processes,
    console_query,
    http_get,
    percentile,
    start_logging,
    tail,
    tracker_env,
    wait_until,
    write_results,
)

log = logging.getLogger("bench.e2e")

E2E_RESULTS = RESULTS.with_name("e2e.json")
RATES = (1000, 2000)
SECONDS = 60.0
CONNECTIONS = 32
SALT = "bench-salt"
WARMUP_RATE = 100
WARMUP_SECONDS = 3.0
DRAIN_LIMIT = 600.0  # after the load, the worker has this long to store every accepted event
IDLE_LIMIT = 90.0  # ... and gives up earlier if nothing more is stored for this long
P95_BAR_SECONDS = 2.0  # at 1,000 events/s offered
P95_BAR_RATE = 1000
HELD_RATIO = 0.95  # stored/s over accepted/s, last two thirds of the load
HELD_LAG_GROWTH = 1.0  # seconds (or half the first third's median lag, if more)


# -- the visitors -------------------------------------------------------------------------------

CAMPAIGNS = (("google", "cpc"), ("newsletter", "email"), ("facebook", "social"), ("bing", "cpc"))
PATHS = ("/", "/products/{n}", "/products/{n}", "/products/{n}", "/pricing", "/blog/{n}", "/cart")
INTERACTIONS = (("click", "add_to_cart"), ("click", "cta"), ("custom", "scroll_75"))
EXTRA_WEIGHTS = (0.45, 0.30, 0.15, 0.10)  # 0-3 interaction events flushed with a page view
LOCALES = (("en-US", "America/New_York"), ("de-DE", "Europe/Berlin"), ("en-GB", "Europe/London"))
SCREENS = ("1920x1080", "1440x900", "390x844", "412x915")
IDENTIFY_SHARE = 0.25  # visitors who sign in or leave an email
RETURNING_SHARE = 0.30  # of those: an email seen before, on a new device (a merge)
USER_ID_SHARE = 0.5  # of the emails: also a user id, which t.js then sends with every event
PURCHASE_SHARE = 0.40  # of identified visitors; anonymous visitors buy less often
ANONYMOUS_PURCHASE_SHARE = 0.03
CLICK_ID_SHARE = 0.10  # arrived through a short link


@dataclass(slots=True)
class Visitor:
    """One browser: its identifiers and the requests t.js will send, one per page."""

    anonymous_id: str
    session_id: str
    user_agent: str
    context: dict[str, str]
    click_id: str
    pages: list[tuple[dict[str, str], list[tuple[str, dict[str, Any]]]]]
    sent: int = 0


@dataclass(slots=True)
class Population:
    """Active visitors; one that has sent its last page is replaced by a new one."""

    rng: random.Random
    tag: str
    size: int
    visitors: list[Visitor] = field(default_factory=list)
    emails: list[str] = field(default_factory=list)
    user_ids: dict[str, str] = field(default_factory=dict)
    made: int = 0
    counts: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.visitors = [self.new_visitor() for _ in range(self.size)]

    def uuid4(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def new_visitor(self) -> Visitor:
        rng = self.rng
        number = self.made
        self.made += 1
        locale, timezone = rng.choice(LOCALES)
        pages = 1 + min(int(rng.expovariate(1 / 2.0)), 11)
        identify_at = rng.randrange(pages) if rng.random() < IDENTIFY_SHARE else -1
        identity: dict[str, Any] = {}
        if identify_at >= 0:
            if self.emails and rng.random() < RETURNING_SHARE:
                email = rng.choice(self.emails)
                self.counts["visitors_returning"] = self.counts.get("visitors_returning", 0) + 1
            else:
                email = f"v{self.tag}-{number}@example.com"
                self.emails.append(email)
                if rng.random() < USER_ID_SHARE:
                    self.user_ids[email] = f"u{self.tag}-{number}"
            identity = {"email": email}
            if email in self.user_ids:
                identity["user_id"] = self.user_ids[email]
        buys = rng.random() < (PURCHASE_SHARE if identify_at >= 0 else ANONYMOUS_PURCHASE_SHARE)
        source, medium = rng.choice(CAMPAIGNS)
        utm = (
            f"?utm_source={source}&utm_medium={medium}&utm_campaign=spring"
            if rng.random() < 0.4
            else ""
        )
        referrer = "https://www.google.com/"
        user_id = ""
        planned = []
        for page in range(pages):
            path = rng.choice(PATHS).format(n=rng.randrange(1, 2000))
            if buys and page == pages - 1:
                path = "/checkout/done"
            url = f"https://shop.example.com{path}{utm if page == 0 else ''}"
            events: list[tuple[str, dict[str, Any]]] = [("page_view", {})]
            extras = rng.choices(range(len(EXTRA_WEIGHTS)), EXTRA_WEIGHTS)[0]
            events += [
                (kind, {"name": name})
                for kind, name in (rng.choice(INTERACTIONS) for _ in range(extras))
            ]
            if page == identify_at:
                events.append(("identify", identity))
            if buys and page == pages - 1:
                value = round(rng.uniform(10, 400), 2)
                events.append(("purchase", {"name": "order_completed", "value": value, "currency": "EUR"}))  # fmt: skip
            for kind, fields in events:
                if user_id:  # t.js keeps the user id and sends it with every later event
                    fields.setdefault("user_id", user_id)
                if kind == "identify":
                    user_id = identity.get("user_id", "")
            planned.append(({"url": url, "referrer": referrer, "title": path}, events))
            referrer = url
        return Visitor(
            anonymous_id=self.uuid4(),
            session_id=self.uuid4(),
            user_agent=rng.choice(USER_AGENTS),
            context={
                "library": "tracker-js/0.1",
                "locale": locale,
                "timezone": timezone,
                "screen": rng.choice(SCREENS),
            },
            click_id=f"c{self.tag}{number:x}" if rng.random() < CLICK_ID_SHARE else "",
            pages=planned,
        )

    def next_request(self) -> tuple[str, list[dict[str, Any]]]:
        """A random active visitor's next page: its User-Agent and the events t.js would send."""
        index = self.rng.randrange(len(self.visitors))
        visitor = self.visitors[index]
        page, planned = visitor.pages[visitor.sent]
        visitor.sent += 1
        if visitor.sent == len(visitor.pages):
            self.visitors[index] = self.new_visitor()
        now = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        events = []
        for kind, fields in planned:
            event: dict[str, Any] = {
                "event_id": self.uuid4(),
                "schema": "tracker/touchpoint/1-0-0",
                "type": kind,
                "ts": now,
                "sent_ts": now,
                "page": page,
                "context": visitor.context,
                "anonymous_id": visitor.anonymous_id,
                "session_id": visitor.session_id,
            }
            if visitor.click_id:
                event["click_id"] = visitor.click_id
            event.update(fields)
            events.append(event)
            self.counts[kind] = self.counts.get(kind, 0) + 1
        return visitor.user_agent, events


# -- the load generator (its own process) -------------------------------------------------------


@dataclass(slots=True)
class LoadState:
    requests: int = 0
    events_sent: int = 0
    accepted: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)  # scheduled start to answer, seconds
    acked_per_second: dict[int, int] = field(default_factory=dict)
    late_starts: int = 0  # requests sent more than 50 ms after their scheduled time
    max_start_delay: float = 0.0
    in_flight: int = 0
    max_in_flight: int = 0


async def generate(
    url: str, rate: float, seconds: float, seed: int, connections: int
) -> dict[str, Any]:
    """Post t.js-like batches at ``rate`` events/s for ``seconds``, open-loop, then wait for the answers.

    A request is due at its slot on the clock; it waits in a queue for the first free one of
    ``connections`` keep-alive connections, and its latency counts from the slot, so a slow
    beacon shows in the latency instead of lowering the offered rate. The client is a few lines
    of HTTP/1.1 on asyncio streams: its CPU is taken from the product it measures, and at
    2,000 events/s it used 22 % of a core where aiohttp's client used 35 %.
    """
    target = urlsplit(url)
    host, port = target.hostname or "127.0.0.1", target.port or 80
    rng = random.Random(seed)
    population = Population(rng, f"{seed:08x}", max(50, int(rate * 5)))
    state = LoadState()
    queue: asyncio.Queue[tuple[bytes, float] | None] = asyncio.Queue()
    head = f"POST {target.path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: text/plain\r\n"

    def answered(status: int, answer: bytes, due: float) -> None:
        done = time.perf_counter()
        state.statuses[str(status)] = state.statuses.get(str(status), 0) + 1
        if status == 200:
            accepted = int(orjson.loads(answer)["accepted"])
            state.accepted += accepted
            state.latencies.append(done - due)
            second = int(done - started)
            state.acked_per_second[second] = state.acked_per_second.get(second, 0) + accepted

    async def connection() -> None:
        streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        while (item := await queue.get()) is not None:
            request, due = item
            state.in_flight += 1
            state.max_in_flight = max(state.max_in_flight, state.in_flight)
            try:
                if streams is None:
                    streams = await asyncio.open_connection(host, port)
                reader, writer = streams
                writer.write(request)
                status_line, *headers = (await reader.readuntil(b"\r\n\r\n")).split(b"\r\n")
                length = next(
                    int(h.split(b":", 1)[1])
                    for h in headers
                    if h.lower().startswith(b"content-length:")
                )
                answered(int(status_line.split()[1]), await reader.readexactly(length), due)
            except (OSError, asyncio.IncompleteReadError, StopIteration, ValueError) as exc:
                state.errors[type(exc).__name__] = state.errors.get(type(exc).__name__, 0) + 1
                if streams is not None:
                    streams[1].close()
                streams = None
            finally:
                state.in_flight -= 1
        if streams is not None:
            streams[1].close()

    clients = [asyncio.create_task(connection()) for _ in range(connections)]
    cpu_before = os.times()
    wall_started = time.time()
    started = due = time.perf_counter()
    ends = started + seconds
    while due < ends:
        now = time.perf_counter()
        if due > now + 0.001:  # uvloop's timers tick in milliseconds: do not spin on less
            await asyncio.sleep(due - now)
            continue
        user_agent, events = population.next_request()
        body = orjson.dumps(events)
        request = (
            f"{head}User-Agent: {user_agent}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body
        )
        late = time.perf_counter() - due
        state.max_start_delay = max(state.max_start_delay, late)
        state.late_starts += late > 0.05
        queue.put_nowait((request, due))
        state.requests += 1
        state.events_sent += len(events)
        due += len(events) / rate
    wall_sent = time.time()
    cpu_sent = os.times()
    for _ in clients:
        queue.put_nowait(None)
    await asyncio.wait_for(asyncio.gather(*clients), 120)
    wall_done = time.time()
    latencies = sorted(state.latencies)
    cpu = (cpu_sent.user - cpu_before.user) + (cpu_sent.system - cpu_before.system)
    return {
        "offered_rate": rate,
        "start_ms": int(wall_started * 1000),
        "end_ms": int(wall_sent * 1000),
        "answers_done_ms": int(wall_done * 1000),
        "seconds": wall_sent - wall_started,
        "requests": state.requests,
        "events_sent": state.events_sent,
        "events_per_request": state.events_sent / max(state.requests, 1),
        "accepted": state.accepted,
        "statuses": state.statuses,
        "errors": state.errors,
        "ack_latency_ms": (
            {f"p{q}": percentile(latencies, q) * 1000 for q in (50, 95, 99)}
            | {"max": latencies[-1] * 1000}
        )
        if latencies
        else {},
        "acked_per_second": [state.acked_per_second.get(s, 0) for s in range(int(seconds) + 1)],
        "late_starts": state.late_starts,
        "max_start_delay_ms": state.max_start_delay * 1000,
        "max_in_flight": state.max_in_flight,
        "generator_cpu_seconds": cpu,
        "generator_cpu_share": cpu / max(wall_sent - wall_started, 1e-9),
        "visitors": population.made,
        "mix": population.counts,
    }


# -- measuring the product ----------------------------------------------------------------------


def process_group_cpu(pgid: int) -> float:
    """CPU seconds (user + system) of every live process in a process group."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid:  # fields after the name: state, ppid, pgrp, ...
                total += int(fields[11]) + int(fields[12])
    return total / ticks


def machine_busy_cpu() -> float:
    """CPU seconds the whole machine has spent busy (not idle, not waiting on I/O) since boot."""
    ticks = os.sysconf("SC_CLK_TCK")
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return (sum(fields) - fields[3] - fields[4]) / ticks


def kafka_pgid(folder: Path) -> int | None:
    """The local broker's process group, found by its data folder on its command line."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            command = (entry / "cmdline").read_bytes()
            if b"kafka.Kafka" in command and str(folder).encode() in command:
                return os.getpgid(int(entry.name))
    return None


async def sample_edge(
    bootstrap: str, topic: str, until: Callable[[], bool], every: float = 1.0
) -> list[tuple[int, int]]:
    """(wall ms, sum of the topic's end offsets), every ``every`` seconds until ``until()``."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    samples = []
    try:
        found = consumer.partitions_for_topic(topic)
        for _ in range(50):
            if found:
                break
            await consumer._client.force_metadata_update()
            await asyncio.sleep(0.1)
            found = consumer.partitions_for_topic(topic)
        if not found:
            raise BenchError(f"no topic {topic}")
        partitions = [TopicPartition(topic, p) for p in found]
        while True:
            asked = time.time()
            ends = await consumer.end_offsets(partitions)
            samples.append((int((asked + time.time()) * 500), sum(ends.values())))
            if until():
                break
            await asyncio.sleep(every)
    finally:
        await consumer.stop()
    return samples


def edge_rate(samples: Sequence[tuple[int, int]], start_ms: int, end_ms: int) -> float:
    """Events/s the raw topic took, between the first and the last sample inside the load."""
    inside = [s for s in samples if start_ms <= s[0] <= end_ms]
    if len(inside) < 2:
        return 0.0
    (first_ms, first), (last_ms, last) = inside[0], inside[-1]
    return (last - first) / ((last_ms - first_ms) / 1000)


def stored_count(console: int) -> int:
    return int(console_query(console, "SELECT uniqExact(event_id) FROM touchpoints").strip())


def wait_stored(
    console: int, expected: int, what: str, alive: Callable[[], bool], logfile: Path
) -> tuple[int, float]:
    """Poll until ``expected`` events are stored; fail if nothing moves for IDLE_LIMIT seconds."""
    began = time.monotonic()
    stored, moved = -1, began
    while True:
        if not alive():
            raise BenchError(f"{what}: the worker exited; its log:\n{tail(logfile)}")
        with contextlib.suppress(OSError, ValueError):
            now = stored_count(console)
            if now != stored:
                stored, moved = now, time.monotonic()
        if stored >= expected:
            return stored, time.monotonic() - began
        if time.monotonic() - moved > IDLE_LIMIT or time.monotonic() - began > DRAIN_LIMIT:
            raise BenchError(
                f"{what}: {stored} of {expected} accepted events stored after "
                f"{time.monotonic() - began:.0f}s; the worker's log:\n{tail(logfile)}"
            )
        time.sleep(1.0)


def query_rows(console: int, sql: str) -> list[list[str]]:
    return [line.split("\t") for line in console_query(console, sql).splitlines() if line]


# lag of an event: its first stitched row's inserted_at minus its received_ts, in milliseconds
PER_EVENT = (
    "SELECT event_id, toUnixTimestamp64Milli(min(received_ts)) AS rcv, "
    "toUnixTimestamp64Milli(min(inserted_at)) - rcv AS lag FROM touchpoints GROUP BY event_id"
)


def lag_stats(console: int, start_ms: int, end_ms: int) -> dict[str, Any]:
    """Lag percentiles in seconds over the load, per third of it, and over 5-second slices.

    Every event received after ``start_ms`` belongs to the load, including those of requests
    sent before ``end_ms`` that the beacon took in only after it; they count in the last third.
    """
    third = (end_ms - start_ms) / 3
    part = (
        f"multiIf(rcv < {start_ms}, 'warmup', rcv < {start_ms + third:.0f}, 'first', "
        f"rcv < {start_ms + 2 * third:.0f}, 'middle', 'last')"
    )
    stats: dict[str, Any] = {}
    sql = (
        f"SELECT {part} AS part, count(), quantilesExact(0.5, 0.95, 0.99)(lag), max(lag) "
        f"FROM ({PER_EVENT}) GROUP BY part"
    )
    window = (
        "SELECT 'all', count(), quantilesExact(0.5, 0.95, 0.99)(lag), max(lag) "
        f"FROM ({PER_EVENT}) WHERE rcv >= {start_ms}"
    )
    for name, events, quantiles, worst in query_rows(console, sql) + query_rows(console, window):
        p50, p95, p99 = (v / 1000 for v in orjson.loads(quantiles))
        stats[name] = {
            "events": int(events),
            "p50": p50,
            "p95": p95,
            "p99": p99,
            "max": int(worst) / 1000,
        }
    slices = query_rows(
        console,
        f"SELECT intDiv(rcv - {start_ms}, 5000) * 5 AS s, count(), "
        f"quantilesExact(0.5, 0.95)(lag) FROM ({PER_EVENT}) "
        f"WHERE rcv >= {start_ms} GROUP BY s ORDER BY s",
    )
    stats["by_5s"] = [
        {"from_s": int(s), "events": int(n), "p50": q[0] / 1000, "p95": q[1] / 1000}
        for s, n, q in ((s, n, orjson.loads(q)) for s, n, q in slices)
    ]
    return stats


def stored_rate(console: int, start_ms: int, end_ms: int) -> dict[str, Any]:
    """Stored rows/s over the last two thirds of the load, between whole inserts: the rows of
    the inserts after the first in that window, over the time from the first to the last."""
    inserts = [
        (int(t), int(n))
        for t, n in query_rows(
            console,
            "SELECT toUnixTimestamp64Milli(inserted_at) AS t, count() FROM touchpoints "
            "GROUP BY t ORDER BY t",
        )
    ]
    since = start_ms + (end_ms - start_ms) / 3
    window = [(t, n) for t, n in inserts if since <= t <= end_ms]
    result: dict[str, Any] = {
        "inserts_total": len(inserts),
        "inserts_in_window": len(window),
        "last_insert_after_load_s": (inserts[-1][0] - end_ms) / 1000 if inserts else None,
    }
    if len(window) < 2 or window[-1][0] <= window[0][0]:
        result["rows_per_second"] = 0.0
        return result
    rows = sum(n for _, n in window[1:])
    result["rows_per_second"] = rows / ((window[-1][0] - window[0][0]) / 1000)
    per_second: dict[int, int] = {}
    for t, n in inserts:
        if start_ms <= t:
            per_second[(t - start_ms) // 1000] = per_second.get((t - start_ms) // 1000, 0) + n
    result["rows_by_second"] = [per_second.get(s, 0) for s in range(max(per_second) + 1)]
    return result


def run_generator(
    url: str,
    rate: float,
    seconds: float,
    seed: int,
    work: Path,
    tag: str,
    processes: Processes,
    while_running: Callable[[Callable[[], bool]], Any] | None = None,
) -> tuple[dict[str, Any], Any]:
    result = work / f"load-{tag}.json"
    logfile = work / f"load-{tag}.log"
    pid = processes.start(
        "load",
        [
            sys.executable,
            str(Path(__file__).resolve()),
            "load",
            "--url",
            url,
            "--rate",
            str(rate),
            "--seconds",
            str(seconds),
            "--seed",
            str(seed),
            "--connections",
            str(CONNECTIONS),
            "--result",
            str(result),
        ],
        tracker_env(),
        logfile,
    )
    deadline = time.monotonic() + seconds + 120

    def finished() -> bool:
        if time.monotonic() > deadline:
            raise BenchError(f"the load generator ran past {seconds + 120:.0f}s")
        return not processes.alive(pid)

    sampled = while_running(finished) if while_running else None
    while not finished():
        time.sleep(0.2)
    processes.stop(pid)
    if not result.exists():
        raise BenchError(f"the load generator failed; its log:\n{tail(logfile)}")
    return orjson.loads(result.read_bytes()), sampled


def measure_rate(
    rate: int,
    seconds: float,
    bootstrap: str,
    kafka_group: int | None,
    work: Path,
    run_tag: str,
    processes: Processes,
) -> dict[str, Any]:
    """A fresh beacon and worker; warm up; the load at ``rate``; drain; measure in ClickHouse."""
    from tracker.cli.kafka_local import free_port
    from tracker.kafka.topology import Topology, ensure_topics
    from tracker.settings import Settings

    tag = f"{run_tag}-{rate}"
    data = work / f"data-{rate}"
    env = {
        "TRACKER_KAFKA_BOOTSTRAP": bootstrap,
        "TRACKER_TOPIC_PREFIX": f"bench-{tag}.",
        "TRACKER_DATA_DIR": str(data),
        "TRACKER_HASH_SALT": SALT,
        "TRACKER_WORKER_ID": f"bench-{tag}",
        "TRACKER_BEACON_PORT": str(free_port()),
        "TRACKER_CONSOLE_PORT": str(free_port()),
        "TRACKER_RATE_LIMITS": "off",  # the load comes from one address
    }
    settings = Settings.from_env(env)
    asyncio.run(ensure_topics(settings))  # as `tracker up` does before it starts the services
    raw_topic = Topology.from_settings(settings).raw.name
    beacon = f"http://127.0.0.1:{env['TRACKER_BEACON_PORT']}"
    console = int(env["TRACKER_CONSOLE_PORT"])
    worker_log, beacon_log = work / f"worker-{rate}.log", work / f"beacon-{rate}.log"
    worker = processes.start(
        "worker", [sys.executable, "-m", "tracker", "worker"], tracker_env(**env), worker_log
    )
    beacon_pid = processes.start(
        "beacon",
        [sys.executable, "-m", "tracker", "serve", "beacon"],
        tracker_env(**env),
        beacon_log,
    )
    for name, url, pid, logfile in (
        ("beacon", beacon, beacon_pid, beacon_log),
        ("worker", f"http://127.0.0.1:{console}", worker, worker_log),
    ):
        try:
            wait_until(
                f"{name} /readyz",
                lambda url=url: http_get(f"{url}/readyz")[0] == 200,  # type: ignore[misc]
                120,
                lambda pid=pid: processes.alive(pid),  # type: ignore[misc]
            )
        except BenchError as exc:
            raise BenchError(f"{exc}; {name} log:\n{tail(logfile)}") from None

    def worker_alive() -> bool:
        return processes.alive(worker)

    log.info("%d/s: warm-up, %d events/s for %.0fs", rate, WARMUP_RATE, WARMUP_SECONDS)
    seed = int.from_bytes(secrets.token_bytes(4))
    warmup, _ = run_generator(
        f"{beacon}/v1/events", WARMUP_RATE, WARMUP_SECONDS, seed, work, f"{tag}-warmup", processes
    )
    _, warmed = wait_stored(console, warmup["accepted"], "warm-up", worker_alive, worker_log)
    log.info("%d/s: %d warm-up events stored %.1fs later", rate, warmup["accepted"], warmed)

    pgids = {"beacon": beacon_pid, "worker": worker, "kafka": kafka_group}
    cpu_before = {k: process_group_cpu(v) for k, v in pgids.items() if v}
    cpu_before["machine"] = machine_busy_cpu()
    log.info("%d/s: load for %.0fs", rate, seconds)
    load, samples = run_generator(
        f"{beacon}/v1/events",
        rate,
        seconds,
        seed + 1,
        work,
        tag,
        processes,
        lambda done: asyncio.run(sample_edge(bootstrap, raw_topic, done)),
    )
    cpu_load = {k: process_group_cpu(v) - cpu_before[k] for k, v in pgids.items() if v}
    cpu_load["machine"] = machine_busy_cpu() - cpu_before["machine"]
    # everything else: other sessions' jobs, this orchestrator, the generator's start-up
    cpu_load["others"] = (
        cpu_load["machine"]
        - sum(v for k, v in cpu_load.items() if k != "machine")
        - load["generator_cpu_seconds"]
    )
    expected = warmup["accepted"] + load["accepted"]
    log.info(
        "%d/s: %d events accepted (%.0f/s), %d requests, statuses %s, errors %s; generator CPU %.0f%%",
        rate,
        load["accepted"],
        load["accepted"] / load["seconds"],
        load["requests"],
        load["statuses"],
        load["errors"],
        load["generator_cpu_share"] * 100,
    )
    _, drained = wait_stored(console, expected, f"{rate}/s", worker_alive, worker_log)
    cpu_total = {k: process_group_cpu(v) - cpu_before[k] for k, v in pgids.items() if v}
    cpu_total["machine"] = machine_busy_cpu() - cpu_before["machine"]
    rows, distinct, versions = (
        int(v)
        for v in console_query(
            console,
            "SELECT count(), uniqExact(event_id), uniqExact(event_id, version) FROM touchpoints",
        ).split()
    )
    start_ms, end_ms = int(load["start_ms"]), int(load["end_ms"])
    lag = lag_stats(console, start_ms, end_ms)
    storing = stored_rate(console, start_ms, end_ms)
    beacon_counted = metric_value(
        int(env["TRACKER_BEACON_PORT"]),
        "tracker_collector_events_total",
        'collector="beacon",outcome="accepted"',
    )
    processes.stop(beacon_pid)
    processes.stop(worker)

    accepted_rate = load["accepted"] / load["seconds"]
    first, last = lag["first"]["p50"], lag["last"]["p50"]
    growth = last - first
    held = (
        storing["rows_per_second"] >= HELD_RATIO * accepted_rate
        and growth <= max(HELD_LAG_GROWTH, first / 2)
        and not load["errors"]
        and set(load["statuses"]) == {"200"}
    )
    result = {
        "offered_rate": rate,
        "seconds": load["seconds"],
        "accepted": load["accepted"],
        "accepted_rate": accepted_rate,
        "raw_topic_rate": edge_rate(samples, start_ms, end_ms),
        "stored_rate": storing["rows_per_second"],
        "stored_over_accepted": storing["rows_per_second"] / accepted_rate if accepted_rate else 0,
        "lag_seconds": lag,
        "lag_growth_p50_seconds": growth,
        "held": held,
        "edge_ack_latency_ms": load["ack_latency_ms"],
        "expected_events": expected,
        "stored_events": distinct,
        "rows": rows,
        "row_versions": versions,
        "lost": expected - distinct,
        "duplicated_rows": rows - versions,
        "beacon_counted_accepted": beacon_counted,
        "drain_seconds_after_load": drained,
        "worker_cpu_ms_per_event": cpu_total["worker"] * 1000 / max(load["accepted"], 1),
        "cpu_seconds_during_load": cpu_load,
        "cpu_seconds_load_and_drain": cpu_total,
        "storing": storing,
        "edge_samples": samples,
        "load": load,
        "warmup": warmup,
    }
    if distinct < expected or rows != versions:
        raise BenchError(
            f"{rate}/s: {expected} events accepted, {distinct} stored in {rows} rows "
            f"({versions} distinct event versions): events were lost or written twice"
        )
    log.info(
        "%d/s: stored %.0f/s (accepted %.0f/s); lag p50 %.2fs p95 %.2fs p99 %.2fs max %.2fs; "
        "first third p50 %.2fs, last third p50 %.2fs; drained %.1fs after the load; held: %s",
        rate,
        storing["rows_per_second"],
        accepted_rate,
        lag["all"]["p50"],
        lag["all"]["p95"],
        lag["all"]["p99"],
        lag["all"]["max"],
        first,
        last,
        drained,
        "yes" if held else "no",
    )
    return result


# -- report -------------------------------------------------------------------------------------


def verdicts(result: dict[str, Any]) -> list[str]:
    found = []
    if result["offered_rate"] == P95_BAR_RATE:
        ok = result["lag_seconds"]["all"]["p95"] <= P95_BAR_SECONDS
        found.append(f"p95 ≤ {P95_BAR_SECONDS:g} s: {'PASS' if ok else 'FAIL'}")
    if result["offered_rate"] >= 2 * P95_BAR_RATE:
        found.append(f"held: {'PASS' if result['held'] else 'FAIL'}")
    return found


def table(results: Sequence[dict[str, Any]]) -> str:
    header = (
        "offered/s",
        "accepted/s",
        "raw topic/s",
        "stored/s",
        "stored÷acc",
        "lag p50",
        "p95",
        "p99",
        "max",
        "edge p99",
        "held",
        "bar",
    )
    rows = [header]
    for r in results:
        lag = r["lag_seconds"]["all"]
        rows.append(
            (
                f"{r['offered_rate']:,}",
                f"{r['accepted_rate']:,.0f}",
                f"{r['raw_topic_rate']:,.0f}",
                f"{r['stored_rate']:,.0f}",
                f"{r['stored_over_accepted']:.2f}",
                f"{lag['p50']:.2f} s",
                f"{lag['p95']:.2f} s",
                f"{lag['p99']:.2f} s",
                f"{lag['max']:.2f} s",
                f"{r['edge_ack_latency_ms'].get('p99', float('nan')) / 1000:.3f} s",
                "yes" if r["held"] else "no",
                "; ".join(verdicts(r)) or "-",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = []
    for index, row in enumerate(rows):
        lines.append("  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)).rstrip())
        if index == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines) + "\n"


def machine_info() -> dict[str, Any]:
    """bench/run.py's machine note without wrk, which this benchmark does not use."""
    from tracker.cli.kafka_local import KAFKA_VERSION

    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=False
        )
        return done.stdout.strip()

    return {
        "commit": git("rev-parse", "--short", "HEAD"),
        "uncommitted_product_files": len(
            git("status", "--porcelain", "--", ".", ":!bench").splitlines()
        ),
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "kafka": KAFKA_VERSION,
    }


def run_bench(rates: Sequence[int], seconds: float) -> int:
    from tracker.cli.kafka_local import LocalKafka, free_port

    started = time.monotonic()
    run_tag = secrets.token_hex(3)
    work = Path(tempfile.mkdtemp(prefix="tracker-bench-e2e-"))
    processes = Processes()
    kafka = LocalKafka(work / "kafka", port=free_port())
    results: list[dict[str, Any]] = []
    ok = False
    try:
        kafka.start()
        log.info("Kafka on %s (data in %s)", kafka.bootstrap, work)
        group = kafka_pgid(work / "kafka")
        for rate in rates:
            results.append(
                measure_rate(rate, seconds, kafka.bootstrap, group, work, run_tag, processes)
            )
        ok = True
    finally:
        processes.stop_all()
        kafka.stop()
        if ok:
            shutil.rmtree(work, ignore_errors=True)
        else:
            log.error("kept %s for its logs", work)
    report = write_results(
        E2E_RESULTS,
        started,
        machine=machine_info(),
        load_seconds=seconds,
        connections=CONNECTIONS,
        bars={
            "p95_lag_seconds_at_1000": P95_BAR_SECONDS,
            "held_stored_over_accepted": HELD_RATIO,
            "held_lag_growth_seconds": HELD_LAG_GROWTH,
        },
        results=results,
    )
    sys.stdout.write("\n" + table(results))
    for r in results:
        load = r["load"]
        cpu = r["cpu_seconds_during_load"]
        sys.stdout.write(
            f"{r['offered_rate']:,}/s: {r['expected_events']:,} accepted (warm-up included), "
            f"{r['stored_events']:,} stored in {r['rows']:,} rows; lag p50 first third {r['lag_seconds']['first']['p50']:.2f} s, "
            f"last third {r['lag_seconds']['last']['p50']:.2f} s; drained "
            f"{r['drain_seconds_after_load']:.0f} s after the load; "
            f"{load['events_per_request']:.1f} events/request; generator CPU "
            f"{load['generator_cpu_share']:.0%}, CPU-s in the load: "
            + ", ".join(f"{k} {v:.0f}" for k, v in cpu.items())
            + f"; worker {r['worker_cpu_ms_per_event']:.2f} CPU-ms per event (load and drain)\n"
        )
    sys.stdout.write(
        f"{report['machine']['cpus']} CPUs, commit {report['machine']['commit']}, "
        f"{report['seconds']:.0f}s; JSON in {E2E_RESULTS.relative_to(ROOT)}\n"
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--rates", default=",".join(str(r) for r in RATES), help="offered events/s, e.g. 1000,2000"
    )
    parser.add_argument("--seconds", type=float, default=SECONDS, help="load time per rate")
    commands = parser.add_subparsers(dest="command")
    load = commands.add_parser("load", help="(internal) the load generator")
    load.add_argument("--url", required=True)
    load.add_argument("--rate", type=float, required=True)
    load.add_argument("--seconds", type=float, required=True)
    load.add_argument("--seed", type=int, required=True)
    load.add_argument("--connections", type=int, required=True)
    load.add_argument("--result", type=Path, required=True)
    args = parser.parse_args(argv)

    start_logging()
    try:
        if args.command == "load":
            import uvloop

            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                result = runner.run(
                    generate(args.url, args.rate, args.seconds, args.seed, args.connections)
                )
            args.result.write_bytes(orjson.dumps(result))
            return 0
        rates = [int(r) for r in args.rates.split(",") if r.strip()]
        return run_bench(rates, args.seconds)
    except BenchError as exc:
        log.error("benchmark failed: %s", exc)
        return 1


if __name__ == "__main__":
    sys.exit(main())
