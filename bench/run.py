"""Tracker's foundation benchmarks. Run them all with ``bash bench/run``; bench/README.md explains each.

1. beacon: events/s and p50/p99 latency of ``POST /v1/events`` under wrk (16 connections, batches
   of 1 and 20), against a bare aiokafka produce loop with the same acks, idempotence and linger.
2. worker: events/s from the raw topic into ClickHouse, against a bare consume-and-insert loop.
3. validation: microseconds per event for ``tracker.touchpoint.accept``, against ``orjson.loads``.

Every figure is printed beside a baseline measured in the same run, and the ratio between them;
the bars are ratios because machines are noisy. Results also go to bench/results/latest.json.
The process exits non-zero on errors only, never on a missed bar.

The baselines run in subprocesses of this same script (``run.py produce-baseline`` and
``run.py consume-baseline``), so they never share a GIL with the orchestrator.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import platform
import random
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from types import FrameType
from typing import Any

import orjson

log = logging.getLogger("bench")

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
RESULTS = BENCH_DIR / "results" / "latest.json"
LUA_SCRIPT = BENCH_DIR / "touchpoints.lua"

CONNECTIONS = 16
BEACON_SECONDS = 10
WARMUP_SECONDS = 2
BEACON_BATCHES = (1, 20)
WORKER_EVENTS = 100_000
SINK_BATCH = 5000  # TRACKER_SINK_BATCH_SIZE's default; the worker runs with it
BEACON_BAR = 0.30
ROUNDS = 2  # each side is measured this often, alternately; the best round counts
WORKER_BAR = 0.50

USER_AGENTS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Safari/605.1.15",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Mobile Safari/537.36",
    "Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0",
)
CAMPAIGNS = (("google", "cpc"), ("newsletter", "email"), ("facebook", "social"), ("bing", "cpc"))


class BenchError(RuntimeError):
    """The benchmark could not measure what it set out to; the run fails."""


# -- the events ---------------------------------------------------------------------------------


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def sample_event(rng: random.Random, now: str) -> dict[str, Any]:
    """A typical web page view, the same shape bench/touchpoints.lua sends to the beacon."""
    customer = rng.randrange(100_000)
    product = rng.randrange(1, 5001)
    source, medium = CAMPAIGNS[customer % len(CAMPAIGNS)]
    return {
        "event_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
        "type": "page_view",
        "ts": now,
        "sent_ts": now,
        "anonymous_id": f"anon-{customer:06d}",
        "session_id": f"sess-{customer:06d}",
        "page": {
            "url": f"https://shop.example.com/products/{product}"
            f"?utm_source={source}&utm_medium={medium}&utm_campaign=spring_sale",
            "referrer": "https://www.google.com/",
            "title": f"Product {product}",
        },
        "context": {
            "user_agent": USER_AGENTS[customer % len(USER_AGENTS)],
            "locale": "en-US",
            "timezone": "Europe/Berlin",
            "screen": "1920x1080",
            "library": "t.js/1.0.0",
        },
    }


def wire_records(count: int, seed: int) -> Iterator[tuple[bytes, bytes]]:
    """``(key, value)`` pairs exactly as tracker/kafka/producer.py writes them to the raw topic."""
    from tracker.touchpoint import RequestContext, accept

    rng = random.Random(seed)
    now = now_rfc3339()
    context = RequestContext(
        source="web_beacon",
        received_ts=datetime.now(UTC),
        ip="203.0.113.7",
        hash_salt="bench-salt",
    )
    for _ in range(count):
        t = accept(sample_event(rng, now), context)
        yield t.identity_hint.encode(), orjson.dumps(t.to_wire())


# -- results ------------------------------------------------------------------------------------


@dataclass(slots=True)
class Figure:
    benchmark: str
    figure: str
    unit: str
    value: float
    baseline: float
    bar: float | None = None  # the least acceptable value/baseline; None: informational
    higher_is_better: bool = True
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        return self.value / self.baseline if self.baseline else float("nan")

    @property
    def verdict(self) -> str:
        if self.bar is None:
            return "info"
        return "PASS" if self.ratio >= self.bar else "FAIL"

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ratio": round(self.ratio, 4), "verdict": self.verdict}


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of already sorted values."""
    if not sorted_values:
        raise BenchError("no samples to take a percentile of")
    rank = max(1, round(q / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def _fmt(value: float) -> str:
    if value >= 1000:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}"


def table(figures: Sequence[Figure]) -> str:
    header = ("figure", "value", "baseline", "ratio", "bar", "result")
    rows = [header]
    for f in figures:
        bar = f"≥ {f.bar:.0%}" if f.bar is not None else "-"
        rows.append(
            (
                f"{f.benchmark}: {f.figure} ({f.unit})",
                _fmt(f.value),
                _fmt(f.baseline),
                f"{f.ratio:.2f}",
                bar,
                f.verdict,
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = []
    for index, row in enumerate(rows):
        cells = [row[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)
        ]
        lines.append("  ".join(cells).rstrip())
        if index == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines) + "\n"


# -- processes ----------------------------------------------------------------------------------


class Processes:
    """Every process this run starts, so that each is stopped, by its own handle, at the end."""

    def __init__(self) -> None:
        self._running: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(self, name: str, args: list[str], env: dict[str, str], logfile: Path) -> int:
        with logfile.open("wb") as out:
            process = subprocess.Popen(
                args,
                env=env,
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._running.append((name, process))
        log.info("started %s (pid %d)", name, process.pid)
        return process.pid

    def alive(self, pid: int) -> bool:
        return any(p.pid == pid and p.poll() is None for _, p in self._running)

    def stop(self, pid: int, timeout: float = 30.0) -> None:
        for entry in list(self._running):
            name, process = entry
            if process.pid != pid:
                continue
            self._running.remove(entry)
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout)
                except subprocess.TimeoutExpired:
                    log.warning("%s (pid %d) ignored SIGTERM; killing it", name, pid)
                    process.kill()
                    process.wait()
            log.info("stopped %s (pid %d, exit %s)", name, pid, process.returncode)

    def stop_all(self) -> None:
        for _, process in list(reversed(self._running)):
            self.stop(process.pid)


def tracker_env(**values: str) -> dict[str, str]:
    """This environment without any TRACKER_* of the caller's, plus ``values``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRACKER_")}
    env.update(values)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return int(response.status), bytes(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def wait_until(
    what: str, check: Callable[[], bool], timeout: float, alive: Callable[[], bool]
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive():
            raise BenchError(f"{what}: the process exited")
        with contextlib.suppress(OSError):
            if check():
                return
        time.sleep(0.2)
    raise BenchError(f"{what}: not within {timeout:.0f}s")


def run_json_subprocess(args: list[str], timeout: float) -> dict[str, Any]:
    """Run one of this script's baseline subcommands; it answers with one JSON object on stdout."""
    completed = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), *args],
        cwd=ROOT,
        env=tracker_env(),
        stdout=subprocess.PIPE,
        timeout=timeout,
        check=False,
        start_new_session=True,
    )
    if completed.returncode != 0:
        raise BenchError(f"baseline {args[0]} failed with exit code {completed.returncode}")
    result: dict[str, Any] = orjson.loads(completed.stdout)
    return result


def tail(path: Path, lines: int = 20) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return ""


# -- 1. beacon ----------------------------------------------------------------------------------

_UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def parse_wrk(output: str) -> dict[str, Any]:
    def number(pattern: str) -> str:
        match = re.search(pattern, output, re.MULTILINE)
        if not match:
            raise BenchError(f"wrk output lacks {pattern!r}:\n{output}")
        return match.group(1)

    def latency_ms(pct: str) -> float:
        match = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s|m)\s*$", output, re.MULTILINE)
        if not match:
            raise BenchError(f"wrk --latency output lacks the {pct}% line:\n{output}")
        return float(match.group(1)) * _UNIT_MS[match.group(2)]

    socket_errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    return {
        "requests": int(number(r"(\d+) requests in")),
        "requests_per_second": float(number(r"Requests/sec:\s+([\d.]+)")),
        "p50_ms": latency_ms("50"),
        "p99_ms": latency_ms("99"),
        "non_2xx": int(non_2xx.group(1)) if non_2xx else 0,
        "non_200": int(number(r"BENCH-SUMMARY requests=\d+ non200=(\d+)")),
        "socket_errors": [int(g) for g in socket_errors.groups()] if socket_errors else [0] * 4,
    }


def run_wrk(url: str, batch: int, seconds: int) -> dict[str, Any]:
    tag = secrets.token_hex(4)
    args = [
        "wrk",
        "-t1",
        f"-c{CONNECTIONS}",
        f"-d{seconds}s",
        "--latency",
        "-s",
        str(LUA_SCRIPT),
        url,
        "--",
        str(batch),
        tag,
    ]
    completed = subprocess.run(
        args, capture_output=True, text=True, timeout=seconds + 60, check=False
    )
    if completed.returncode != 0:
        raise BenchError(f"wrk failed ({completed.returncode}): {completed.stderr}")
    result = parse_wrk(completed.stdout)
    if result["non_2xx"] or result["non_200"] or any(result["socket_errors"]):
        raise BenchError(
            f"the beacon answered {result['non_200']} requests with a status other than 200 "
            f"(wrk: non-2xx {result['non_2xx']}, socket errors {result['socket_errors']}):\n"
            f"{completed.stdout}"
        )
    return result


def beacon_accepted(metrics_url: str) -> float:
    _, body = http_get(metrics_url)
    match = re.search(
        r'^tracker_collector_events_total\{collector="beacon",outcome="accepted"\} ([\d.e+]+)$',
        body.decode(),
        re.MULTILINE,
    )
    return float(match.group(1)) if match else 0.0


def _summary(result: dict[str, Any]) -> str:
    return (
        f"{result['events_per_second']:.0f} events/s, "
        f"p50 {result['p50_ms']:.2f} ms, p99 {result['p99_ms']:.2f} ms"
    )


def measure_beacon(base: str, batch: int) -> dict[str, Any]:
    """One wrk warm-up, then one measured wrk run, checked against the beacon's own counter."""
    run_wrk(f"{base}/v1/events", batch, WARMUP_SECONDS)
    accepted_before = beacon_accepted(f"{base}/metrics")
    result = run_wrk(f"{base}/v1/events", batch, BEACON_SECONDS)
    accepted = beacon_accepted(f"{base}/metrics") - accepted_before
    if accepted < result["requests"] * batch:
        raise BenchError(
            f"wrk saw {result['requests']} answers of {batch} events, "
            f"but the beacon counted only {accepted:.0f} accepted events"
        )
    return {
        **result,
        "events_per_second": result["requests_per_second"] * batch,
        "beacon_accepted_events": accepted,
    }


def bench_beacon(bootstrap: str, work: Path, run_tag: str, processes: Processes) -> list[Figure]:
    from tracker.cli.kafka_local import free_port
    from tracker.kafka.topology import Topology, ensure_topics
    from tracker.settings import Settings

    beacon_prefix, baseline_prefix = f"bench-{run_tag}-beacon.", f"bench-{run_tag}-produce."
    for prefix in (beacon_prefix, baseline_prefix):
        settings = Settings.from_env(
            {
                "TRACKER_KAFKA_BOOTSTRAP": bootstrap,
                "TRACKER_TOPIC_PREFIX": prefix,
                "TRACKER_DATA_DIR": str(work / "topics"),
            }
        )
        asyncio.run(ensure_topics(settings))
    baseline_topic = Topology.from_settings(settings).raw.name

    port = free_port()
    pid = processes.start(
        "beacon",
        [sys.executable, "-m", "tracker", "serve", "beacon"],
        tracker_env(
            TRACKER_KAFKA_BOOTSTRAP=bootstrap,
            TRACKER_BEACON_PORT=str(port),
            TRACKER_DATA_DIR=str(work / "beacon"),
            TRACKER_TOPIC_PREFIX=beacon_prefix,
            TRACKER_RATE_LIMITS="off",  # the load comes from one address
        ),
        work / "beacon.log",
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(
            "beacon /readyz",
            lambda: http_get(f"{base}/readyz")[0] == 200,
            60,
            lambda: processes.alive(pid),
        )
    except BenchError as exc:
        raise BenchError(f"{exc}; beacon log:\n{tail(work / 'beacon.log')}") from None

    figures: list[Figure] = []
    for batch in BEACON_BATCHES:
        baselines: list[dict[str, Any]] = []
        beacons: list[dict[str, Any]] = []
        for round_ in range(1, ROUNDS + 1):
            log.info("beacon, batch %d, round %d: baseline produce loop", batch, round_)
            baselines.append(
                run_json_subprocess(
                    [
                        "produce-baseline",
                        "--bootstrap",
                        bootstrap,
                        "--topic",
                        baseline_topic,
                        "--batch",
                        str(batch),
                        "--concurrency",
                        str(CONNECTIONS),
                        "--seconds",
                        str(BEACON_SECONDS),
                        "--warmup",
                        str(WARMUP_SECONDS),
                    ],
                    timeout=BEACON_SECONDS + WARMUP_SECONDS + 120,
                )
            )
            log.info("baseline: %s", _summary(baselines[-1]))
            log.info("beacon, batch %d, round %d: wrk", batch, round_)
            beacons.append(measure_beacon(base, batch))
            log.info("beacon: %s", _summary(beacons[-1]))
        baseline = max(baselines, key=lambda r: float(r["events_per_second"]))
        beacon = max(beacons, key=lambda r: float(r["events_per_second"]))
        details = {"beacon_rounds": beacons, "baseline_rounds": baselines}
        name = f"beacon batch={batch}"
        figures += [
            Figure(name, "events/s", "events/s", beacon["events_per_second"],
                   baseline["events_per_second"], BEACON_BAR, details=details),
            Figure(name, "p50 latency", "ms", beacon["p50_ms"], baseline["p50_ms"],
                   higher_is_better=False),
            Figure(name, "p99 latency", "ms", beacon["p99_ms"], baseline["p99_ms"],
                   higher_is_better=False),
        ]  # fmt: skip
    processes.stop(pid)
    return figures


@dataclass(slots=True)
class _ProduceState:
    measuring: bool = False
    stopping: bool = False
    events: int = 0
    latencies: list[float] = field(default_factory=list)


async def produce_baseline(
    bootstrap: str, topic: str, batch: int, concurrency: int, seconds: float, warmup: float
) -> dict[str, Any]:
    """The bare loop: ``concurrency`` tasks, each sending ``batch`` records and awaiting every ack."""
    from aiokafka import AIOKafkaProducer

    pool = list(wire_records(2000, seed=1))
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        enable_idempotence=True,
        linger_ms=5,
        max_batch_size=256 * 1024,  # as tracker/kafka/producer.py
        client_id="bench-baseline",
    )
    await producer.start()
    state = _ProduceState()

    async def client(index: int) -> None:
        position = index * 101
        while not state.stopping:
            started = time.perf_counter()
            pending = []
            for _ in range(batch):
                key, value = pool[position % len(pool)]
                position += 1
                pending.append(await producer.send(topic, value, key=key))
            await asyncio.gather(*pending)
            if state.measuring:
                state.latencies.append(time.perf_counter() - started)
                state.events += batch

    try:
        tasks = [asyncio.create_task(client(i)) for i in range(concurrency)]
        await asyncio.sleep(warmup)
        state.measuring = True
        began = time.perf_counter()
        await asyncio.sleep(seconds)
        state.measuring = False
        elapsed = time.perf_counter() - began
        state.stopping = True
        await asyncio.gather(*tasks)
    finally:
        await producer.stop()
    latencies = sorted(state.latencies)
    return {
        "events": state.events,
        "batches": len(latencies),
        "seconds": elapsed,
        "events_per_second": state.events / elapsed,
        "p50_ms": percentile(latencies, 50) * 1000,
        "p99_ms": percentile(latencies, 99) * 1000,
        "event_bytes": sum(len(v) for _, v in pool) / len(pool),
    }


# -- 2. worker ----------------------------------------------------------------------------------

# inserted_at is DEFAULT now64(3), evaluated once per INSERT, so every batch shares one value.
INSERT_SPAN_SQL = (
    "SELECT count(), toUnixTimestamp64Milli(min(inserted_at)), "
    "toUnixTimestamp64Milli(max(inserted_at)), "
    "countIf(inserted_at = (SELECT min(inserted_at) FROM touchpoints)), "
    "uniqExact(inserted_at) FROM touchpoints"
)


def insert_span(row: Sequence[Any]) -> dict[str, Any]:
    """Throughput between the first and the last insert: the batches after the first, over the time they took."""
    count, first_ms, last_ms, first_batch, inserts = (int(v) for v in row)
    span = (last_ms - first_ms) / 1000
    if inserts < 3 or span <= 0:
        raise BenchError(f"too few inserts ({inserts}) to time the steady state")
    return {
        "rows": count,
        "inserts": inserts,
        "first_insert_rows": first_batch,
        "span_seconds": span,
        "events_per_second": (count - first_batch) / span,
    }


async def prefill(bootstrap: str, topic: str, count: int) -> float:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        enable_idempotence=True,
        linger_ms=5,
        max_batch_size=256 * 1024,
    )
    await producer.start()
    sizes = 0
    try:
        pending = []
        for key, value in wire_records(count, seed=int.from_bytes(secrets.token_bytes(4))):
            sizes += len(value)
            pending.append(await producer.send(topic, value, key=key))
            if len(pending) >= 5000:
                await asyncio.gather(*pending)
                pending = []
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return sizes / count


def console_query(port: int, sql: str) -> str:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/query",
        data=orjson.dumps({"sql": sql, "format": "tsv"}),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return bytes(response.read()).decode()


def sink_flush_seconds(port: int) -> dict[str, float]:
    _, body = http_get(f"http://127.0.0.1:{port}/metrics")
    found = {}
    for stat in ("sum", "count"):
        match = re.search(
            rf'^tracker_sink_flush_seconds_{stat}\{{table="touchpoints"\}} ([\d.e+]+)$',
            body.decode(),
            re.MULTILINE,
        )
        found[stat] = float(match.group(1)) if match else 0.0
    return found


def measure_worker(
    bootstrap: str, prefix: str, work: Path, tag: str, processes: Processes
) -> dict[str, Any]:
    """Run one fresh worker (own group, own chDB) until it has stored the whole topic."""
    from tracker.cli.kafka_local import free_port

    console = free_port()
    logfile = work / f"worker-{tag}.log"
    launched = time.monotonic()
    pid = processes.start(
        "worker",
        [sys.executable, "-m", "tracker", "worker"],
        tracker_env(
            TRACKER_KAFKA_BOOTSTRAP=bootstrap,
            TRACKER_TOPIC_PREFIX=prefix,
            TRACKER_WORKER_ID=f"bench-{tag}-worker",
            TRACKER_CLICKHOUSE_URL=f"chdb://{work / f'worker-ch-{tag}'}",
            TRACKER_CONSOLE_PORT=str(console),
            TRACKER_DATA_DIR=str(work / f"worker-{tag}"),
            TRACKER_SINK_BATCH_SIZE=str(SINK_BATCH),
        ),
        logfile,
    )
    first_seen: float | None = None
    count = 0
    deadline = time.monotonic() + 300
    while count < WORKER_EVENTS:
        if not processes.alive(pid):
            raise BenchError(f"the worker exited; its log:\n{tail(logfile)}")
        if time.monotonic() > deadline:
            raise BenchError(f"the worker stored {count} of {WORKER_EVENTS} events in 300s")
        time.sleep(0.5)
        with contextlib.suppress(OSError, ValueError):
            count = int(console_query(console, "SELECT count() FROM touchpoints").strip())
            if count and first_seen is None:
                first_seen = time.monotonic()
    done = time.monotonic()
    if count != WORKER_EVENTS:
        raise BenchError(f"the worker stored {count} events, not {WORKER_EVENTS}")
    result = insert_span(console_query(console, INSERT_SPAN_SQL).split())
    result["startup_to_first_rows_seconds"] = (first_seen or done) - launched
    result["first_rows_to_last_polled_seconds"] = done - (first_seen or done)
    result["sink_flush_seconds"] = sink_flush_seconds(console)
    processes.stop(pid)
    log.info(
        "worker: %.0f events/s over %.1fs (%d inserts; startup %.1fs)",
        result["events_per_second"],
        result["span_seconds"],
        result["inserts"],
        result["startup_to_first_rows_seconds"],
    )
    return result


def bench_worker(bootstrap: str, work: Path, run_tag: str, processes: Processes) -> list[Figure]:
    from tracker.kafka.topology import Topology, ensure_topics
    from tracker.settings import Settings

    prefix = f"bench-{run_tag}-worker."
    settings = Settings.from_env(
        {
            "TRACKER_KAFKA_BOOTSTRAP": bootstrap,
            "TRACKER_TOPIC_PREFIX": prefix,
            "TRACKER_DATA_DIR": str(work / "topics"),
        }
    )
    asyncio.run(ensure_topics(settings))
    topic = Topology.from_settings(settings).raw.name
    log.info("worker: pre-filling %s with %d events", topic, WORKER_EVENTS)
    started = time.perf_counter()
    event_bytes = asyncio.run(prefill(bootstrap, topic, WORKER_EVENTS))
    log.info(
        "pre-filled in %.1fs (%.0f bytes per event)", time.perf_counter() - started, event_bytes
    )

    baselines: list[dict[str, Any]] = []
    workers: list[dict[str, Any]] = []
    for round_ in range(1, ROUNDS + 1):
        log.info("worker, round %d: baseline consume-and-insert loop", round_)
        baselines.append(
            run_json_subprocess(
                [
                    "consume-baseline",
                    "--bootstrap",
                    bootstrap,
                    "--topic",
                    topic,
                    "--total",
                    str(WORKER_EVENTS),
                    "--chdb",
                    str(work / f"baseline-ch-{round_}"),
                ],
                timeout=300,
            )
        )
        log.info(
            "baseline: %.0f events/s over %.1fs (%d inserts)",
            baselines[-1]["events_per_second"],
            baselines[-1]["span_seconds"],
            baselines[-1]["inserts"],
        )
        log.info("worker, round %d: python -m tracker worker", round_)
        workers.append(measure_worker(bootstrap, prefix, work, f"{run_tag}-{round_}", processes))
    baseline = max(baselines, key=lambda r: float(r["events_per_second"]))
    result = max(workers, key=lambda r: float(r["events_per_second"]))
    return [
        Figure(
            "worker",
            "raw topic to ClickHouse",
            "events/s",
            result["events_per_second"],
            baseline["events_per_second"],
            WORKER_BAR,
            details={
                "worker_rounds": workers,
                "baseline_rounds": baselines,
                "event_bytes": event_bytes,
            },
        )
    ]


async def consume_baseline(bootstrap: str, topic: str, total: int, url: str) -> dict[str, Any]:
    """The bare loop: consume, decode, build the worker's row (the worker's own enrichment, then
    the row by column name as the ClickHouse sink builds it), insert in batches, commit."""
    import clickhouse_connect
    from aiokafka import AIOKafkaConsumer

    from agents.ingest import enriched
    from tracker.settings import Settings
    from tracker.store import ClickHouseStore
    from tracker.store.tables import TOUCHPOINTS
    from tracker.touchpoint import Touchpoint

    window = Settings.from_env({}).sink_flush_seconds  # the worker's batch window, as it runs
    store = ClickHouseStore(url, "tracker")
    store.run_sync(store.migrate_sync)  # the project's own tables
    store.close()
    # chDB wants one thread: every call goes through this executor, as in the product's store.
    executor = ThreadPoolExecutor(max_workers=1)
    loop = asyncio.get_running_loop()
    client = await loop.run_in_executor(
        executor, lambda: clickhouse_connect.get_client(dsn=url, database="tracker")
    )
    columns = list(TOUCHPOINTS.columns)
    row = TOUCHPOINTS.row
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"bench-baseline-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    inserted = 0
    insert_seconds = 0.0
    try:
        while inserted < total:
            rows: list[tuple[Any, ...]] = []
            deadline = time.monotonic() + window
            while len(rows) < SINK_BATCH and (left := deadline - time.monotonic()) > 0:
                fetched = await consumer.getmany(
                    timeout_ms=int(left * 1000), max_records=SINK_BATCH - len(rows)
                )
                for records in fetched.values():
                    for record in records:
                        wire = orjson.loads(record.value)
                        rows.append(row(enriched(Touchpoint.from_wire(wire))))
            if rows:
                began = time.perf_counter()
                await loop.run_in_executor(
                    executor, partial(client.insert, "touchpoints", rows, column_names=columns)
                )
                insert_seconds += time.perf_counter() - began
                await consumer.commit()
                inserted += len(rows)
        result = await loop.run_in_executor(executor, lambda: client.query(INSERT_SPAN_SQL))
    finally:
        await consumer.stop()
        await loop.run_in_executor(executor, client.close)
        executor.shutdown()
    return {**insert_span(result.result_rows[0]), "insert_seconds": insert_seconds}


# -- 3. validation ------------------------------------------------------------------------------


def microseconds_per_call(fn: Callable[[], object], calls: int, repeats: int = 5) -> float:
    """The best of ``repeats`` timings of ``calls`` calls, per call, as timeit advises."""
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, time.perf_counter() - started)
    return best / calls * 1e6


def bench_validation() -> list[Figure]:
    from tracker.errors import ValidationError
    from tracker.touchpoint import RequestContext, accept

    context = RequestContext(
        source="web_beacon",
        received_ts=datetime.now(UTC),
        ip="203.0.113.7",
        user_agent=USER_AGENTS[0],
        hash_salt="bench-salt",
    )
    typical = sample_event(random.Random(3), now_rfc3339())
    rejected = {**typical, "event_id": "not-a-uuid"}  # the schema refuses it
    accept(typical, context)
    try:
        accept(rejected, context)
    except ValidationError:
        pass
    else:
        raise BenchError("the 'rejected' sample was accepted")

    def reject() -> None:
        with contextlib.suppress(ValidationError):
            accept(rejected, context)

    figures = []
    for name, event, call in (
        ("typical event", typical, lambda: accept(typical, context)),
        ("rejected event", rejected, reject),
    ):
        raw = orjson.dumps(event)
        calls = 20_000
        spent = microseconds_per_call(call, calls)
        loads = microseconds_per_call(lambda raw=raw: orjson.loads(raw), calls)  # type: ignore[misc]
        log.info("accept, %s: %.2f µs; orjson.loads: %.2f µs", name, spent, loads)
        figures.append(
            Figure(
                "validation",
                f"accept, {name}",
                "µs/event",
                spent,
                loads,
                higher_is_better=False,
                details={"event_bytes": len(raw), "calls": calls},
            )
        )
    return figures


# -- orchestration ------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    from tracker.cli.kafka_local import KAFKA_VERSION

    wrk = subprocess.run(["wrk", "--version"], capture_output=True, text=True, check=False)
    git = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    )
    changed = subprocess.run(
        ["git", "-C", str(ROOT), "status", "--porcelain", "--", ".", ":!bench"],
        capture_output=True,
        text=True,
        check=False,
    )
    return {
        "commit": git.stdout.strip(),
        "uncommitted_product_files": len(changed.stdout.splitlines()),
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "kafka": KAFKA_VERSION,
        "wrk": (wrk.stdout or wrk.stderr).splitlines()[0] if (wrk.stdout or wrk.stderr) else "",
    }


def run_all() -> int:
    from tracker.cli.kafka_local import LocalKafka, free_port

    if shutil.which("wrk") is None:
        raise BenchError("wrk is not installed; bash bench/run installs it")
    started = time.monotonic()
    run_tag = secrets.token_hex(3)
    work = Path(tempfile.mkdtemp(prefix="tracker-bench-"))
    processes = Processes()
    figures: list[Figure] = []
    kafka = LocalKafka(work / "kafka", port=free_port())
    ok = False
    try:
        log.info("validation micro-benchmark")
        figures += bench_validation()
        log.info("starting Kafka on %s (data in %s)", kafka.bootstrap, work)
        kafka.start()
        figures += bench_beacon(kafka.bootstrap, work, run_tag, processes)
        figures += bench_worker(kafka.bootstrap, work, run_tag, processes)
        ok = True
    finally:
        processes.stop_all()
        kafka.stop()
        if ok:
            shutil.rmtree(work, ignore_errors=True)
        else:
            log.error("kept %s for its logs", work)
    figures.sort(key=lambda f: ("beacon", "worker", "validation").index(f.benchmark.split()[0]))
    report = write_results(
        RESULTS, started, machine=machine(), figures=[f.as_dict() for f in figures]
    )
    sys.stdout.write("\n" + table(figures))
    sys.stdout.write(
        f"\n{report['machine']['cpus']} CPUs, Kafka {report['machine']['kafka']}, "
        f"commit {report['machine']['commit']} "
        f"({report['machine']['uncommitted_product_files']} uncommitted files outside bench/), "
        f"{report['seconds']:.0f}s; JSON in {RESULTS.relative_to(ROOT)}\n"
    )
    return 0


def _terminate(signum: int, _: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds through the finally blocks that stop processes


def start_logging(kafka_level: int = logging.WARNING) -> None:
    """Every benchmark's logging, set up once: timestamped lines on stderr, aiokafka quieter,
    and SIGTERM unwinding through the finally blocks that stop the benchmark's processes."""
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(name)s %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    logging.getLogger("aiokafka").setLevel(kafka_level)
    signal.signal(signal.SIGTERM, _terminate)


def write_results(path: Path, started: float, **fields: Any) -> dict[str, Any]:
    """Write a run's JSON report to ``path``: when it finished, how long it took, ``fields``."""
    report: dict[str, Any] = {
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
        "seconds": round(time.monotonic() - started, 1),
        **fields,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    commands = parser.add_subparsers(dest="command")
    produce = commands.add_parser("produce-baseline", help="(internal) the beacon's baseline")
    produce.add_argument("--bootstrap", required=True)
    produce.add_argument("--topic", required=True)
    produce.add_argument("--batch", type=int, required=True)
    produce.add_argument("--concurrency", type=int, required=True)
    produce.add_argument("--seconds", type=float, required=True)
    produce.add_argument("--warmup", type=float, required=True)
    consume = commands.add_parser("consume-baseline", help="(internal) the worker's baseline")
    consume.add_argument("--bootstrap", required=True)
    consume.add_argument("--topic", required=True)
    consume.add_argument("--total", type=int, required=True)
    consume.add_argument("--chdb", type=Path, required=True)
    args = parser.parse_args(argv)

    start_logging()
    try:
        if args.command == "produce-baseline":
            result = asyncio.run(
                produce_baseline(
                    args.bootstrap,
                    args.topic,
                    args.batch,
                    args.concurrency,
                    args.seconds,
                    args.warmup,
                )
            )
        elif args.command == "consume-baseline":
            result = asyncio.run(
                consume_baseline(
                    args.bootstrap, args.topic, args.total, f"chdb://{args.chdb.resolve()}"
                )
            )
        else:
            return run_all()
    except BenchError as exc:
        log.error("benchmark failed: %s", exc)
        return 1
    sys.stdout.write(orjson.dumps(result).decode() + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
