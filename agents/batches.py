"""Taking records a batch at a time, so that no record can stop a stage.

Every stage of the worker (raw ingest, click batches, dead letters, calls, the links mirror,
identity, journey) hands its batches to a :class:`BatchRunner`. The happy path is one call of
the stage's handler. Only after a failure does the runner look closer:

- a *retriable* error (ClickHouse or Kafka away, :func:`is_retriable`) retries the batch with
  backoff: a delay, never a loss;
- any other error is a *poison* record somewhere in the batch: the runner bisects the batch,
  re-running the halves in order, down to the record that fails on its own, and writes it as a
  dead letter with the stage and the reason (:class:`DeadLetterPolicy`). Its batch-mates go on,
  and the batch is then acknowledged, so the offending record is committed past.

Re-running part of a batch is safe because every stage writes its outputs first (to idempotent
sinks and an idempotent producer) and its state last: a failed attempt leaves no state behind,
and what it wrote is skipped or read as one row when written again. ``discard`` drops what a
failed attempt left in memory (rows not yet flushed, a graph built ahead of its saved state).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, Generic, TypeVar

from aiokafka.errors import (
    CorruptRecordException,
    InvalidTimestampError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    ProducerClosed,
    RecordListTooLargeError,
    RecordTooLargeError,
)

from agents.ingest import RawMessage, undeliverable
from tracker.deadletter import DeadLetter
from tracker.metrics import POISON_RECORDS, STAGE_RETRIES
from tracker.store import ClickHouseStore
from tracker.store.sink import ClickHouseSink, Sink
from tracker.store.tables import DEAD_LETTERS

__all__ = [
    "BatchRunner",
    "Checkpoint",
    "DeadLetterPolicy",
    "acked_batches",
    "dead_letter_policy",
    "is_record_refused",
    "is_retriable",
    "run_batches",
]

log = logging.getLogger(__name__)

R = TypeVar("R")

_MAX_REASON = 1000


class Checkpoint(Generic[R]):
    """The one order in which every consumer of the worker ends a batch:

    1. **outputs**: what the batch makes is stored (the ClickHouse sinks, the next stage's topic
       acknowledged by Kafka);
    2. **state**: the stage's state is saved (a Faust table's entries);
    3. **producer**: flushed, so that what the state wrote (the table's changelog) is on Kafka;
    4. **commit**: the batch's offsets.

    Steps 1 and 2 are the stage's handler, run by its :class:`BatchRunner` (every stage writes
    its outputs first and its state last); :meth:`after` does 3 and 4. A step that raises stops
    the steps after it, so a crash anywhere replays the batch from the state before it.
    """

    def __init__(
        self,
        commit: Callable[[Sequence[R]], Awaitable[None]],
        producer: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._commit = commit
        self._producer = producer

    async def run(
        self, batch: Sequence[R], handle: Callable[[Sequence[R]], Awaitable[None]]
    ) -> None:
        await handle(batch)  # outputs, then state
        await self.after(batch)

    async def after(self, batch: Sequence[R]) -> None:
        """Once the batch's outputs and state are stored: flush the producer, then commit."""
        if self._producer is not None:
            await self._producer()
        await self._commit(batch)


def stream_checkpoint(stream: Any) -> Checkpoint[Any]:
    """The checkpoint of a Faust agent's stream: its app's producer (carrying the tables'
    changelogs), then the events acknowledged, which Faust commits once all before are."""

    async def acknowledge(events: Sequence[Any]) -> None:
        for event in events:
            await stream.ack(event)

    app = getattr(stream, "app", None)
    if app is None:
        return Checkpoint(acknowledge)
    producer = app.producer

    async def flush() -> None:
        # Faust buffers each table write and its buffer's own flush waits for them one at a
        # time (a wait_for per message): hand them all to the producer at once, then flush.
        pending = producer.buffer.pending
        while not pending.empty():
            message = pending.get_nowait()
            await message.message.channel.publish_message(message, wait=False)
        await producer.flush()

    return Checkpoint(acknowledge, flush)


async def acked_batches(stream: Any, size: int, within: float) -> AsyncIterator[list[Any]]:
    """Batches of up to ``size`` events, or what came ``within`` seconds. The loop body handles
    a batch (outputs, then state); when it asks for the next one the batch is checkpointed
    (:class:`Checkpoint`), so a body that raises (or a worker that dies in it) leaves the batch to
    be delivered again."""
    checkpoint = stream_checkpoint(stream)
    async for events in stream.noack_take(size, within=within):
        yield events
        await checkpoint.after(events)


async def run_batches(stream: Any, runner: BatchRunner[Any], size: int, within: float) -> None:
    """Run a Faust stream's batches through ``runner``, acknowledging each once it is handled."""
    async for events in acked_batches(stream, size, within):
        await runner.run(events)


def is_record_refused(exc: BaseException) -> bool:
    """Whether Kafka refused a record for what it is (too large, malformed): sending it again
    cannot help, so the batch runner dead-letters it. Other Kafka errors are waited out."""
    return isinstance(
        exc,
        MessageSizeTooLargeError
        | RecordTooLargeError
        | RecordListTooLargeError
        | CorruptRecordException
        | InvalidTimestampError,
    )


def is_retriable(exc: BaseException) -> bool:
    """Whether ``exc`` says "try again later" (a dependency is away) rather than "this record
    cannot be processed". Tracker's and aiokafka's errors carry a ``retriable`` flag; a produce
    that timed out, a closed producer and a lost connection are outages too."""
    if isinstance(exc, KafkaTimeoutError | ProducerClosed | ConnectionError | TimeoutError):
        return True
    return getattr(exc, "retriable", False) is True


class DeadLetterPolicy:
    """The one place a stage's unprocessable record becomes a stored dead letter.

    Dead letters are keyed by where their record is (:func:`agents.ingest.undeliverable`), so
    writing one again after a replay stores it once.
    """

    def __init__(self, sink: Sink) -> None:
        self._sink = sink

    def add(self, letter: DeadLetter) -> None:
        self._sink.add(letter.dead_letter_id, letter.received_ts, letter)

    async def flush(self) -> None:
        """Returns once every letter added is stored; retries while ClickHouse is away."""
        result = await self._sink.flush()
        for reason in result.refused.values():
            log.error("ClickHouse refused a dead letter", extra={"reason": reason})

    async def poison(self, message: RawMessage, stage: str, exc: BaseException) -> None:
        """Store the dead letter of a record ``stage`` could not process because of ``exc``."""
        reason = f"{stage} could not process the record: {exc!r}"[:_MAX_REASON]
        self.add(undeliverable(message, reason, stage=stage))
        await self.flush()


def dead_letter_policy(store: ClickHouseStore) -> DeadLetterPolicy:
    """The policy writing to ClickHouse ``dead_letters``: one per stage, since stages run
    side by side and each sink buffers one batch."""
    return DeadLetterPolicy(ClickHouseSink(store, DEAD_LETTERS))


class BatchRunner(Generic[R]):
    """Runs one stage's batches so that a poison record is dead-lettered and the rest go on.

    ``handle`` processes a batch (outputs first, state last) and returns once it is stored;
    ``source`` names the Kafka record a batch item came from, for its dead letter; ``discard``
    forgets what a failed attempt left in memory. ``stopping`` tells a retry loop to give up
    (raising the last error) because the worker is shutting down: the batch is then not
    acknowledged and is delivered again.
    """

    def __init__(
        self,
        stage: str,
        handle: Callable[[Sequence[R]], Awaitable[None]],
        source: Callable[[R], RawMessage],
        dead_letters: DeadLetterPolicy,
        *,
        discard: Callable[[], None] | None = None,
        stopping: Callable[[], bool] | None = None,
        initial_backoff: float = 0.2,
        max_backoff: float = 10.0,
    ) -> None:
        self.stage = stage
        self._handle = handle
        self._source = source
        self._dead_letters = dead_letters
        self._discard = discard
        self._stopping = stopping
        self._initial_backoff = initial_backoff
        self._max_backoff = max_backoff

    async def run(self, records: Sequence[R]) -> None:
        """Returns once every record is handled or dead-lettered: acknowledge the batch then."""
        if not records:
            return
        try:
            await self._handle(records)
        except Exception as exc:
            await self._recover(records, exc)

    async def _recover(self, records: Sequence[R], exc: Exception) -> None:
        backoff = self._initial_backoff
        while True:
            self._forget()
            if not is_retriable(exc):
                break
            if self._stopping is not None and self._stopping():
                raise exc
            STAGE_RETRIES.labels(self.stage).inc()
            log.warning(
                "stage failed for a reason that passes; retrying",
                extra={
                    "stage": self.stage,
                    "records": len(records),
                    "error": repr(exc)[:_MAX_REASON],
                    "retry_in": backoff,
                },
            )
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self._max_backoff)
            try:
                await self._handle(records)
                return
            except Exception as again:
                exc = again
        if len(records) == 1:
            await self._poison(records[0], exc)
            return
        # Somewhere in here is a record that cannot be processed: halve, in order, until alone.
        middle = len(records) // 2
        await self.run(records[:middle])
        await self.run(records[middle:])

    async def _poison(self, record: R, exc: Exception) -> None:
        message = self._source(record)
        POISON_RECORDS.labels(self.stage).inc()
        log.error(
            "a record the stage cannot process goes to dead letters",
            extra={
                "stage": self.stage,
                "record": message.coordinates,
                "error": repr(exc)[:_MAX_REASON],
            },
            exc_info=exc,
        )
        await self._dead_letters.poison(message, self.stage, exc)

    def _forget(self) -> None:
        if self._discard is not None:
            self._discard()
