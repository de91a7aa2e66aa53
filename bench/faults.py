"""Faults under load: what `tracker up` survives, and how long each takes to recover.

    python bench/faults.py [--rate 200] [--phase-seconds 40] [--refuse-seconds 20]
    python bench/faults.py --faults worker,poison   # some of them

It runs ``tracker up`` (whose supervision restarts what dies) on a temporary data folder with its
own local Kafka broker and embedded ClickHouse, then, one fault at a time, offers steady load and
injects the fault a quarter of the way into it:

- ``broker``: the Kafka broker SIGKILLed; supervision starts it again;
- ``worker``: the worker SIGKILLed mid-batch (under steady load it always has one in hand);
- ``clickhouse``: the real engine refuses writes for ``--refuse-seconds``: the touchpoints
  table's folder is made immutable (``chattr +i``: no file can be made in it, even by root), then
  writable again;
- ``beacon``: the beacon collector SIGKILLed; supervision starts it again;
- ``poison``: records no stage can read produced straight onto the raw topic among good ones.

The load, for each fault: t.js-like page batches to the beacon at ``--rate`` events/s (the
end-to-end benchmark's generator, bench/e2e.py), short-link redirects and signed call webhooks
(the soak's, bench/soak.py), and a tracer: batches of 10 events whose ids are kept, each refused
batch sent again after its Retry-After as a client does, so every tracer event ends acknowledged
and is looked up by id.

Recovery is the time from the fault's end (the kill, for the kills; the folder writable again;
the poison acknowledged by Kafka) until ClickHouse holds, stitched, as many of the beacon's
events as the raw topic held then: the backlog the fault left is drained. After each fault's load
it waits for everything to be stored and counts: acknowledged events (the beacon's 200s, calls'
2xx, redirects, the good records produced), stored events, rows written twice (``count()``
against distinct ``(event_id, version)``), events stored without a customer, dead letters.

Results go to stdout and bench/results/faults.json. The exit code is non-zero when an
acknowledged event was lost, an event was written twice, a healthy event became a dead letter,
or tracker up died; never for a recovery time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from e2e import run_generator
from run import (
    RESULTS,
    ROOT,
    BenchError,
    Processes,
    http_get,
    start_logging,
    tail,
    tracker_env,
    write_results,
)
from soak import GENERIC_SECRET, SLUG, TOKEN, Paced, _request, call, click, console_query

log = logging.getLogger("bench.faults")

FAULTS_RESULTS = RESULTS.with_name("faults.json")
FAULTS = ("broker", "worker", "clickhouse", "beacon", "poison")
READY_LIMIT = 180.0
DRAIN_LIMIT = 300.0
POISON_RECORDS = 20
GOOD_RECORDS = 200
TRACER_BATCH = 10
TRACER_PAUSE = 0.5  # seconds between tracer batches: 20 events/s
IMMUTABLE: set[Path] = set()  # folders made immutable, made writable again on any way out


# -- tracker up ------------------------------------------------------------------------------------


def _two_free_ports() -> int:
    """A port whose next one is free too: the local broker's controller listens on port + 1."""
    import socket

    from tracker.cli.kafka_local import free_port

    while True:
        port = free_port()
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port


class Up:
    """A running ``tracker up`` and what its log says about its components."""

    def __init__(self, work: Path, processes: Processes) -> None:
        from tracker.cli.kafka_local import free_port

        self.work = work
        self.processes = processes
        self.log_path = work / "up.log"
        self.ports = {
            name: free_port()
            for name in ("console", "beacon", "links", "calls", "email", "helpdesk")
        }
        self.env = {
            "TRACKER_DATA_DIR": str(work / "data"),
            "TRACKER_KAFKA_LOCAL_PORT": str(_two_free_ports()),
            "TRACKER_HASH_SALT": "faults-salt",
            "TRACKER_API_TOKEN": TOKEN,
            "TRACKER_GENERIC_WEBHOOK_SECRET": GENERIC_SECRET,
            "TRACKER_RATE_LIMITS": "off",  # the load comes from one address
            **{f"TRACKER_{name.upper()}_PORT": str(port) for name, port in self.ports.items()},
        }
        self.pid = 0
        self._read_to = 0
        self._supervision: list[dict[str, Any]] = []

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.env['TRACKER_KAFKA_LOCAL_PORT']}"

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.ports[name]}"

    def start(self) -> None:
        self.pid = self.processes.start(
            "tracker up",
            [sys.executable, "-m", "tracker", "up"],
            tracker_env(**self.env),
            self.log_path,
        )
        deadline = time.monotonic() + READY_LIMIT
        while not self.entries("tracker is ready"):
            self.check_alive()
            if time.monotonic() > deadline:
                raise BenchError(
                    f"tracker up was not ready in {READY_LIMIT:.0f}s:\n{tail(self.log_path)}"
                )
            time.sleep(0.5)

    def check_alive(self) -> None:
        if not self.processes.alive(self.pid):
            raise BenchError(f"tracker up exited; its log:\n{tail(self.log_path, 40)}")

    def entries(self, msg: str, component: str | None = None) -> list[dict[str, Any]]:
        """The supervisor's log entries ``msg`` (of ``component``), read on from where it left."""
        with contextlib.suppress(OSError), self.log_path.open("rb") as log_file:
            log_file.seek(self._read_to)
            chunk = log_file.read()
            complete = chunk.rfind(b"\n") + 1
            self._read_to += complete
            for line in chunk[:complete].splitlines():
                if line.startswith(b"{") and (b'"component' in line or b"tracker is ready" in line):
                    with contextlib.suppress(orjson.JSONDecodeError):
                        self._supervision.append(orjson.loads(line))
        return [
            e
            for e in self._supervision
            if e.get("msg") == msg and component in (None, e.get("component"))
        ]

    def component_pid(self, component: str) -> int:
        started = self.entries("component started", component)
        restarted = self.entries("component restarted", component)
        return int((started + restarted)[-1]["pid"])

    def ready(self, name: str) -> bool:
        with contextlib.suppress(OSError):
            return http_get(f"{self.url(name)}/readyz", timeout=2)[0] == 200
        return False

    def query(self, sql: str) -> str:
        return console_query(self.ports["console"], sql)


# -- Kafka -----------------------------------------------------------------------------------------


def raw_topic(up: Up) -> str:
    from tracker.kafka.topology import Topology
    from tracker.settings import Settings

    return Topology.from_settings(Settings.from_env(up.env)).raw.name


def raw_end(up: Up, topic: str, limit: float = 120.0) -> int:
    """The distinct events on the raw topic now, once the broker answers (it may be restarting):
    records whose value is a JSON object with a string ``event_id``. A client that resends a
    batch after a 503 may put an event there twice, and a poison record is no event, so the
    count of records would be a target the store can never reach."""
    from aiokafka import AIOKafkaConsumer, TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient

    async def read() -> int:
        admin = AIOKafkaAdminClient(bootstrap_servers=up.bootstrap, request_timeout_ms=5000)
        consumer = AIOKafkaConsumer(
            bootstrap_servers=up.bootstrap, request_timeout_ms=5000, auto_offset_reset="earliest"
        )
        try:
            async with asyncio.timeout(60):
                await admin.start()
                [described] = await admin.describe_topics([topic])
                partitions = [
                    TopicPartition(topic, p["partition"]) for p in described["partitions"]
                ]
                if not partitions:
                    raise BenchError(f"{topic} has no partitions")
                await consumer.start()
                consumer.assign(partitions)
                ends = await consumer.end_offsets(partitions)
                events: set[str] = set()
                while any([await consumer.position(p) < ends[p] for p in partitions]):
                    for records in (await consumer.getmany(timeout_ms=1000)).values():
                        for record in records:
                            with contextlib.suppress(orjson.JSONDecodeError, TypeError):
                                value = orjson.loads(record.value or b"")
                                if isinstance(value, dict) and isinstance(
                                    value.get("event_id"), str
                                ):
                                    events.add(value["event_id"])
                return len(events)
        finally:
            with contextlib.suppress(Exception):
                await consumer.stop()
            with contextlib.suppress(Exception):
                await admin.close()

    deadline = time.monotonic() + limit
    while True:
        try:
            return asyncio.run(read())
        except Exception as exc:
            if time.monotonic() > deadline:
                raise BenchError(f"the raw topic's events: {exc!r}") from None
            time.sleep(0.5)


def produce_poison(up: Up, topic: str, tag: str) -> dict[str, int]:
    """``POISON_RECORDS`` records no stage can read among ``GOOD_RECORDS`` touchpoints, as the
    beacon would write them, all acknowledged by Kafka before this returns."""
    from aiokafka import AIOKafkaProducer

    from tracker.touchpoint import Touchpoint

    poison = (b"[1, 2", b'{"event_id": 5}', b"\xff\xfe not json", b'{"type": "page_view"}')
    records: list[tuple[bytes, bytes]] = []
    every = GOOD_RECORDS // POISON_RECORDS
    for n in range(GOOD_RECORDS):
        now = datetime.now(UTC)
        anonymous = f"faults-{tag}-{n}"
        good = Touchpoint(
            event_id=str(uuid.uuid4()),
            type="page_view",
            name="",
            source="web_beacon",
            channel="web",
            ts=now,
            device_ts=now,
            received_ts=now,
            anonymous_id=anonymous,
            page={"url": "https://shop.example.com/"},
        )
        records.append((anonymous.encode(), orjson.dumps(good.to_wire())))
        if n % every == 0:
            records.append((f"poison-{n}".encode(), poison[(n // every) % len(poison)]))

    async def send() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=up.bootstrap, acks="all")
        await producer.start()
        try:
            for key, value in records:
                await producer.send_and_wait(topic, value, key=key)
        finally:
            await producer.stop()

    asyncio.run(send())
    return {"good": GOOD_RECORDS, "poison": len(records) - GOOD_RECORDS}


# -- the tracer -------------------------------------------------------------------------------------


class Tracer(threading.Thread):
    """Batches of events whose ids are kept; a refused batch is sent again, ids and all, after
    its Retry-After (or a second when the beacon does not answer), so each ends acknowledged."""

    def __init__(self, beacon: str, tag: str) -> None:
        super().__init__(name="tracer", daemon=True)
        self.url = f"{beacon}/v1/events"
        self.tag = tag
        self.stop = threading.Event()
        self.acknowledged: list[str] = []
        self.refused: dict[str, int] = {}

    def run(self) -> None:
        n = 0
        while not self.stop.is_set():
            batch: list[dict[str, Any]] = []
            for _ in range(TRACER_BATCH):
                now = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
                batch.append(
                    {
                        "event_id": str(uuid.uuid4()),
                        "type": "page_view",
                        "ts": now,
                        "anonymous_id": f"tracer-{self.tag}-{n % 50}",
                        "page": {"url": "https://shop.example.com/tracer"},
                    }
                )
                n += 1
            body = orjson.dumps(batch)
            # Once a batch is made it is sent until acknowledged, even while stopping.
            while (
                status := _request(self.url, body, {"Content-Type": "application/json"}, "POST")
            ) != 200:
                self.refused[str(status)] = self.refused.get(str(status), 0) + 1
                time.sleep(1.0)
            self.acknowledged += [str(e["event_id"]) for e in batch]
            self.stop.wait(TRACER_PAUSE)


# -- counting ----------------------------------------------------------------------------------------


def totals(up: Up) -> dict[str, int]:
    answer = up.query(
        "SELECT uniqExact(event_id), count(), uniqExact(event_id, version), "
        "uniqExactIf(event_id, source = 'web_beacon'), uniqExactIf(event_id, customer_id = '') "
        "FROM touchpoints"
    ).split()
    letters = up.query("SELECT count() FROM dead_letters").split()
    distinct, rows, versions, beacon, unstitched = (int(v) for v in answer)
    return {
        "events": distinct,
        "rows": rows,
        "row_versions": versions,
        "beacon_events": beacon,
        "unstitched": unstitched,
        "dead_letters": int(letters[0]),
    }


def stored_beacon(up: Up) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        return int(up.query("SELECT uniqExactIf(event_id, source = 'web_beacon') FROM touchpoints"))
    return None  # the worker, which serves the console, may be restarting


def wait_stored(up: Up, target: int, since: float, limit: float = DRAIN_LIMIT) -> float | None:
    """Seconds from ``since`` until ClickHouse holds ``target`` beacon events; None past ``limit``."""
    while True:
        up.check_alive()
        stored = stored_beacon(up)
        if stored is not None and stored >= target:
            return time.monotonic() - since
        if time.monotonic() - since > limit:
            return None
        time.sleep(0.25)


def tracer_check(up: Up, ids: Sequence[str]) -> dict[str, int]:
    stored = doubled = 0
    for start in range(0, len(ids), 2000):
        chunk = ",".join(f"'{i}'" for i in ids[start : start + 2000])
        answer = up.query(
            f"SELECT uniqExact(event_id), count() - uniqExact(event_id, version) "
            f"FROM touchpoints WHERE event_id IN ({chunk})"
        ).split()
        stored += int(answer[0])
        doubled += int(answer[1])
    return {
        "acknowledged": len(ids),
        "stored": stored,
        "missing": len(ids) - stored,
        "doubled": doubled,
    }


# -- the faults ----------------------------------------------------------------------------------------


def table_folder(up: Up, table: str) -> Path:
    """Where the embedded engine keeps ``table``'s parts, as system.tables says."""
    path = up.query(
        f"SELECT arrayJoin(data_paths) FROM system.tables WHERE database = 'tracker' AND name = '{table}'"
    ).strip()
    if not path:
        raise BenchError(f"system.tables has no data path for {table}")
    return Path(path)


def chattr(flag: str, folder: Path) -> None:
    done = subprocess.run(
        ["chattr", flag, str(folder)], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise BenchError(
            f"chattr {flag} {folder} failed (needs root with CAP_LINUX_IMMUTABLE): {done.stderr}"
        )


def kill(up: Up, component: str) -> dict[str, Any]:
    """SIGKILL a component; return once supervision has started it again and it is ready."""
    pid = up.component_pid(component)
    restarts = len(up.entries("component restarted", component))
    killed = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    while len(up.entries("component restarted", component)) <= restarts:
        up.check_alive()
        if time.monotonic() - killed > READY_LIMIT:
            raise BenchError(f"supervision did not restart {component} in {READY_LIMIT:.0f}s")
        time.sleep(0.1)
    restarted = time.monotonic()
    name = {"worker": "console", "kafka": None}.get(component, component)
    while name is not None and not up.ready(name):
        up.check_alive()
        if time.monotonic() - killed > READY_LIMIT:
            raise BenchError(f"{component} was not ready {READY_LIMIT:.0f}s after the kill")
        time.sleep(0.1)
    return {
        "killed_pid": pid,
        "new_pid": up.component_pid(component),
        "restarted_after_s": round(restarted - killed, 2),
        "ready_after_s": round(time.monotonic() - killed, 2),
        "since": killed,
    }


def inject(fault: str, up: Up, topic: str, refuse_seconds: float, tag: str) -> dict[str, Any]:
    """Inject ``fault``; return what happened, with ``since`` (the fault's end, or the kill) and
    ``poison`` (records on the raw topic that are not events)."""
    if fault in ("broker", "worker", "beacon"):
        return kill(up, "kafka" if fault == "broker" else fault) | {"poison": 0}
    if fault == "poison":
        produced = produce_poison(up, topic, tag)
        return {"since": time.monotonic(), **produced}
    folder = table_folder(up, "touchpoints")
    before = stored_beacon(up)
    chattr("+i", folder)
    IMMUTABLE.add(folder)
    began = time.monotonic()
    reported: list[str] = []
    try:
        while time.monotonic() - began < refuse_seconds:
            with contextlib.suppress(OSError):
                status, body = http_get(f"{up.url('console')}/readyz", timeout=2)
                if status == 503 and not reported:
                    reported = [r for r in orjson.loads(body)["reasons"] if "refuses writes" in r]
                    if reported:
                        log.info(
                            "the worker's /readyz after %.1fs: %s",
                            time.monotonic() - began,
                            reported[0][:160],
                        )
            time.sleep(0.5)
        during = stored_beacon(up)
    finally:
        chattr("-i", folder)
        IMMUTABLE.discard(folder)
    return {
        "since": time.monotonic(),
        "poison": 0,
        "refused_seconds": round(time.monotonic() - began, 1),
        "stored_before": before,
        "stored_at_end_of_refusal": during,
        "readyz_reported": reported[:1],
    }


def run_fault(
    fault: str,
    up: Up,
    topic: str,
    rate: float,
    seconds: float,
    refuse_seconds: float,
    work: Path,
    processes: Processes,
) -> dict[str, Any]:
    tag = f"{fault}-{secrets.token_hex(3)}"
    before = totals(up)
    tracer = Tracer(up.url("beacon"), tag)
    side = [
        Paced("clicks", 10, click(up.url("links"), tag)),
        Paced("calls", 3, call(up.url("calls"), tag)),
    ]
    outcome: dict[str, Any] = {}
    failure: list[BaseException] = []

    def fault_thread() -> None:
        try:
            time.sleep(seconds / 4)
            log.info("%s: injecting", fault)
            outcome.update(inject(fault, up, topic, refuse_seconds, tag))
            target = raw_end(up, topic)
            if target <= 0:
                raise BenchError(f"{topic} reads as empty: nothing to measure recovery by")
            outcome["target_beacon_events"] = target
            recovered = wait_stored(up, target, float(outcome["since"]))
            outcome["recovery_s"] = None if recovered is None else round(recovered, 2)
            log.info("%s: recovered in %s s", fault, outcome["recovery_s"])
        except BaseException as exc:  # reported after the load
            failure.append(exc)

    def while_loaded(done: Callable[[], bool]) -> None:
        for thread in (tracer, *side):
            thread.start()
        while not done():
            time.sleep(0.2)
        tracer.stop.set()
        for paced in side:
            paced.stop.set()
        for thread in (tracer, *side):
            thread.join(120)

    injector = threading.Thread(target=fault_thread, name=f"fault-{fault}", daemon=True)
    injector.start()
    load, _ = run_generator(
        f"{up.url('beacon')}/v1/events",
        rate,
        seconds,
        int.from_bytes(secrets.token_bytes(4)),
        work,
        tag,
        processes,
        while_loaded,
    )
    injector.join(DRAIN_LIMIT + READY_LIMIT)
    if failure:
        raise BenchError(f"{fault}: {failure[0]!r}")
    good = int(outcome.get("good", 0))
    acknowledged = {
        "beacon_events": load["accepted"],
        "tracer_events": len(tracer.acknowledged),
        "clicks": side[0].accepted,
        "calls": side[1].accepted,
        "produced_good_records": good,
    }
    expected = before["events"] + sum(acknowledged.values())
    drained_at = time.monotonic()
    while True:  # everything acknowledged in this phase stored, and the raw topic's backlog too
        after = totals(up)
        if after["events"] >= expected and after["beacon_events"] >= raw_end(up, topic):
            break
        if time.monotonic() - drained_at > DRAIN_LIMIT:
            log.error("%s: not everything stored in %.0fs", fault, DRAIN_LIMIT)
            break
        time.sleep(1.0)
    time.sleep(3.0)  # late copies, if any were written twice, land now
    after = totals(up)
    stored = after["events"] - before["events"]
    letters = after["dead_letters"] - before["dead_letters"]
    return {
        "fault": fault,
        "seconds": seconds,
        "offered_events_per_second": rate,
        "injected": {k: v for k, v in outcome.items() if k != "since"},
        "recovery_s": outcome.get("recovery_s"),
        "acknowledged": acknowledged,
        "acknowledged_total": sum(acknowledged.values()),
        "stored": stored,
        "lost": max(0, sum(acknowledged.values()) - stored),
        "stored_beyond_acknowledged": max(0, stored - sum(acknowledged.values())),
        "duplicated_rows": (after["rows"] - after["row_versions"])
        - (before["rows"] - before["row_versions"]),
        "unstitched": after["unstitched"] - before["unstitched"],
        "dead_letters": letters,
        "poison_produced": int(outcome.get("poison", 0)),
        "tracer": tracer_check(up, tracer.acknowledged) | {"refused": tracer.refused},
        "beacon_statuses": load["statuses"],
        "beacon_errors": load["errors"],
        "ack_latency_ms": load["ack_latency_ms"],
    }


# -- report ---------------------------------------------------------------------------------------------


def table(results: Sequence[dict[str, Any]]) -> str:
    head = (
        "| fault | recovery, s | acknowledged | stored | lost | duplicates | unstitched "
        "| dead letters (poison sent) | tracer: acked / stored once |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    )
    lines = []
    for r in results:
        recovery = "-" if r["recovery_s"] is None else f"{r['recovery_s']:.1f}"
        t = r["tracer"]
        lines.append(
            f"| {r['fault']} | {recovery} | {r['acknowledged_total']:,} | {r['stored']:,} | {r['lost']} "
            f"| {r['duplicated_rows']} | {r['unstitched']} | {r['dead_letters']} ({r['poison_produced']}) "
            f"| {t['acknowledged']:,} / {t['stored'] - t['doubled']:,} |"
        )
    return head + "\n".join(lines) + "\n"


def failures(results: Sequence[dict[str, Any]]) -> list[str]:
    found = []
    for r in results:
        t = r["tracer"]
        if r["lost"] or t["missing"]:
            found.append(
                f"{r['fault']}: acknowledged events lost ({r['lost']}; tracer {t['missing']})"
            )
        if r["duplicated_rows"] or t["doubled"]:
            found.append(f"{r['fault']}: rows written twice ({r['duplicated_rows']})")
        if r["dead_letters"] != r["poison_produced"]:
            found.append(
                f"{r['fault']}: {r['dead_letters']} dead letters for {r['poison_produced']} poison records"
            )
        if r["unstitched"]:
            found.append(f"{r['fault']}: {r['unstitched']} events stored without a customer")
    return found


def run(faults: Sequence[str], rate: float, seconds: float, refuse_seconds: float) -> int:
    if "clickhouse" in faults and shutil.which("chattr") is None:
        raise BenchError("chattr (e2fsprogs) is needed to make ClickHouse refuse writes")
    work = Path(tempfile.mkdtemp(prefix="tracker-bench-faults-"))
    processes = Processes()
    up = Up(work, processes)
    results: list[dict[str, Any]] = []
    started = time.monotonic()
    ok = False
    try:
        up.start()
        status = _request(
            f"{up.url('links')}/api/links",
            orjson.dumps({"target": "https://shop.example/landing", "slug": SLUG}),
            {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
            "POST",
        )
        if status not in (200, 201):
            raise BenchError(f"creating the short link answered {status}")
        topic = raw_topic(up)
        for fault in faults:
            result = run_fault(fault, up, topic, rate, seconds, refuse_seconds, work, processes)
            results.append(result)
            log.info(
                "%s: %s",
                fault,
                {
                    k: result[k]
                    for k in (
                        "recovery_s",
                        "acknowledged_total",
                        "stored",
                        "lost",
                        "duplicated_rows",
                        "dead_letters",
                    )
                },
            )
        ok = not failures(results)
    finally:
        for folder in list(IMMUTABLE):  # a run stopped mid-fault leaves no folder it cannot delete
            subprocess.run(["chattr", "-i", str(folder)], check=False)
        with contextlib.suppress(Exception):
            if up.pid and processes.alive(up.pid):
                os.kill(up.pid, signal.SIGINT)  # tracker up stops its children in order
                for _ in range(120):
                    if not processes.alive(up.pid):
                        break
                    time.sleep(0.5)
        processes.stop_all()
        if ok:
            shutil.rmtree(work, ignore_errors=True)
        else:
            log.error("kept %s for its logs", work)
    write_results(FAULTS_RESULTS, started, results=results)
    problems = failures(results)
    sys.stdout.write("\n" + table(results))
    for problem in problems:
        sys.stdout.write(f"FAILED: {problem}\n")
    sys.stdout.write(f"JSON in {FAULTS_RESULTS.relative_to(ROOT)}\n")
    return 1 if problems else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--faults", default=",".join(FAULTS), help=f"some of {','.join(FAULTS)}")
    parser.add_argument("--rate", type=float, default=200.0, help="beacon events/s offered")
    parser.add_argument("--phase-seconds", type=float, default=40.0, help="load per fault")
    parser.add_argument("--refuse-seconds", type=float, default=20.0, help="ClickHouse refusing")
    args = parser.parse_args(argv)
    faults = [f for f in args.faults.split(",") if f]
    unknown = sorted(set(faults) - set(FAULTS))
    if unknown:
        parser.error(f"unknown faults {unknown}; choose from {', '.join(FAULTS)}")
    start_logging(kafka_level=logging.CRITICAL)
    try:
        return run(faults, args.rate, args.phase_seconds, args.refuse_seconds)
    except BenchError as exc:
        log.error("benchmark failed: %s", exc)
        return 1


if __name__ == "__main__":
    sys.exit(main())
