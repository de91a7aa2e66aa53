"""The batch runner every worker stage uses: a poison record is dead-lettered once and its
batch-mates are handled once; an outage is waited out, never dead-lettered."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Sequence
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agents.batches import BatchRunner, DeadLetterPolicy, is_retriable
from agents.ingest import RawMessage
from tracker.errors import StateTooLarge, StoreError
from tracker.store.sink import FlushResult, MemorySink


class Outage(StoreError):
    def __init__(self) -> None:
        super().__init__("ClickHouse is away", retriable=True)


class Stage:
    """A stage as the worker's are built: outputs to an idempotent sink first, state last.

    Record ``n`` is poison if ``n`` is in ``poison``; it fails midway through the batch, after
    the outputs of the records before it were written. The first ``outages`` calls fail with a
    retriable error before doing anything."""

    def __init__(self, poison: set[int], outages: int = 0) -> None:
        self.poison = poison
        self.outages = outages
        self.outputs = MemorySink()
        self.state: Counter[int] = Counter()  # how many times each record was committed
        self.calls = 0
        self.discards = 0

    async def handle(self, records: Sequence[int]) -> None:
        self.calls += 1
        if self.outages:
            self.outages -= 1
            raise Outage()
        for n in records:
            if n in self.poison:
                await self.outputs.flush()  # what came before it is written, and stays
                raise OverflowError(f"record {n} is out of range")
            self.outputs.add(str(n), _ts(), (n,))
        await self.outputs.flush()
        self.state.update(records)  # state last: a failed attempt leaves none

    def discard(self) -> None:
        self.discards += 1
        self.outputs.discard()


class CountingSink(MemorySink):
    """Counts every dead letter flushed, so a letter written twice would show."""

    def __init__(self) -> None:
        super().__init__()
        self.flushed: list[Any] = []

    async def flush(self) -> FlushResult:
        self.flushed.extend(self._pending.values())
        return await super().flush()


def _ts() -> Any:
    from datetime import UTC, datetime

    return datetime(2026, 11, 20, tzinfo=UTC)


def source(n: int) -> RawMessage:
    return RawMessage(f'{{"n": {n}}}'.encode(), "raw", 0, n)


def runner(stage: Stage, letters: CountingSink, **kwargs: Any) -> BatchRunner[int]:
    return BatchRunner(
        "journey",
        stage.handle,
        source,
        DeadLetterPolicy(letters),
        discard=stage.discard,
        initial_backoff=0.0,
        **kwargs,
    )


@settings(max_examples=300, deadline=None)
@given(
    size=st.integers(min_value=1, max_value=64),
    data=st.data(),
    outages=st.integers(min_value=0, max_value=2),
)
def test_exactly_the_good_records_are_handled_once_and_each_poison_one_dead_lettered_once(
    size: int, data: st.DataObject, outages: int
) -> None:
    records = list(range(size))
    poison = set(data.draw(st.lists(st.sampled_from(records), unique=True)))
    stage, letters = Stage(poison, outages), CountingSink()

    asyncio.run(runner(stage, letters).run(records))

    good = [n for n in records if n not in poison]
    assert stage.state == Counter(good)  # each good record committed once, no poison one
    assert sorted(int(key) for key, _ in stage.outputs.rows) == good
    dead = Counter(row.payload for row in letters.flushed)
    assert dead == Counter(source(n).value.decode() for n in poison)
    assert all(row.stage == "journey" for row in letters.flushed)
    assert all("out of range" in row.reason for row in letters.flushed)


def test_a_batch_without_poison_is_handled_in_one_call() -> None:
    stage, letters = Stage(set()), CountingSink()
    asyncio.run(runner(stage, letters).run(list(range(100))))
    assert stage.calls == 1 and stage.discards == 0
    assert not letters.flushed


def test_an_outage_is_waited_out_and_never_dead_lettered() -> None:
    stage, letters = Stage(set(), outages=5), CountingSink()
    asyncio.run(runner(stage, letters).run(list(range(10))))
    assert stage.state == Counter(range(10))
    assert not letters.flushed
    assert stage.discards == 5  # what each failed attempt left behind was dropped


def test_an_outage_at_shutdown_leaves_the_batch_unacknowledged() -> None:
    stage, letters = Stage(set(), outages=1), CountingSink()
    with pytest.raises(Outage):
        asyncio.run(runner(stage, letters, stopping=lambda: True).run([1, 2, 3]))
    assert not stage.state and not letters.flushed


def test_the_dead_letter_of_a_replayed_poison_record_is_one_letter() -> None:
    letters = CountingSink()
    for _ in range(2):  # a crash after the letter, before the commit: the record comes again
        asyncio.run(runner(Stage({3}), letters).run([1, 2, 3, 4]))
    assert len(letters.rows) == 1


@pytest.mark.parametrize(
    ("error", "retriable"),
    [
        (StoreError("refused", retriable=False), False),
        (StoreError("unreachable"), True),
        (StateTooLarge("a journey", 2_000_000, 262_144), False),
        (OverflowError("date value out of range"), False),
        (ConnectionResetError(), True),
        (TimeoutError(), True),
    ],
)
def test_only_outages_are_retriable(error: Exception, retriable: bool) -> None:
    assert is_retriable(error) is retriable


def test_kafka_errors_follow_their_flag_and_a_timed_out_produce_is_an_outage() -> None:
    from aiokafka.errors import KafkaConnectionError, KafkaTimeoutError, MessageSizeTooLargeError

    assert is_retriable(KafkaConnectionError())
    assert is_retriable(KafkaTimeoutError())
    assert not is_retriable(MessageSizeTooLargeError())


def test_the_journey_stage_stitches_the_batch_mates_of_an_event_its_rules_cannot_take() -> None:
    """The issue's year-1 event, reaching the journey stage itself: before, OverflowError."""
    from datetime import UTC, datetime, timedelta

    from agents.customer import JourneyRules
    from agents.ingest import enriched
    from agents.stitching import JourneyStage, Outgoing, journey_key
    from tracker.records import RoutedEvent
    from tracker.touchpoint import Touchpoint

    class Outbox:
        async def send_all(self, records: Sequence[Outgoing]) -> None:
            return None

    def record(n: int, ts: datetime) -> tuple[str, bytes, RawMessage]:
        t = Touchpoint(
            event_id=f"00000000-0000-4000-8000-{n:012d}",
            type="page_view",
            name="",
            source="web_beacon",
            channel="web",
            ts=ts,
            device_ts=ts,
            received_ts=ts,
            anonymous_id="a-1",
        )
        value = RoutedEvent("anon:a-1", 0, True, enriched(t)).to_wire()
        return (journey_key("cust-1").decode().strip('"'), value, RawMessage(value, "j", 0, n))

    t0 = datetime(2026, 11, 20, tzinfo=UTC)
    records = [record(n, t0 + timedelta(minutes=n)) for n in range(4)]
    records.insert(0, record(9, datetime(1, 1, 1, tzinfo=UTC)))  # first: nothing newer yet
    touchpoints, letters = MemorySink(), CountingSink()
    state: dict[str, Any] = {}
    stage = JourneyStage(
        Outbox(),  # type: ignore[arg-type]
        "journey",
        touchpoints,
        MemorySink(),
        MemorySink(),
        MemorySink(),
        MemorySink(),
        JourneyRules(),
    )

    async def handle(batch: Sequence[tuple[str, bytes, RawMessage]]) -> None:
        await stage.handle(batch, state)

    journey = BatchRunner(
        "journey", handle, lambda r: r[2], DeadLetterPolicy(letters), discard=stage.discard
    )
    asyncio.run(journey.run(records))

    assert sorted(key for key, _ in touchpoints.rows) == [
        f"00000000-0000-4000-8000-{n:012d}" for n in range(4)
    ]
    assert len(letters.flushed) == 1 and "OverflowError" in letters.flushed[0].reason
    assert len(orjson.loads(state["cust-1"])["events"]) == 4
