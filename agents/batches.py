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
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence
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
    "HandledOffsets",
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


class HandledOffsets:
    """Per partition, how far its records were handled, counted without a hole.

    A partition starts at its *floor*: the group's committed offset, or the partition's first
    offset when the group has committed none. A record is handled only at the partition's next
    offset (:meth:`admit`); one beyond it means the consumer skipped records (a fetch position
    kept from elsewhere, a jump Faust took for a gap), and the partition must be read again
    from :meth:`next`. Acknowledgements count only in the same order (:meth:`acknowledge`), and
    the offset to commit is the end of that unbroken run (:meth:`commit_point`): a commit can
    then never pass a record no stage handled.
    """

    HANDLE, SEEN, SKIPPED = "handle", "seen", "skipped"

    def __init__(self) -> None:
        self._next: dict[Any, int] = {}
        self._acked: dict[Any, int] = {}

    def knows(self, tp: Any) -> bool:
        return tp in self._next

    def start(self, tp: Any, floor: int) -> None:
        self._next[tp] = self._acked[tp] = floor

    def next(self, tp: Any) -> int:
        return self._next[tp]

    def admit(self, tp: Any, offset: int) -> str:
        """Whether the record at ``offset`` is the partition's next to handle, was handled
        already (a redelivery), or lies beyond records not yet read (the partition must be
        read again from :meth:`next`)."""
        expected = self._next[tp]
        if offset < expected:
            return self.SEEN
        if offset > expected:
            return self.SKIPPED
        self._next[tp] = offset + 1
        return self.HANDLE

    def acknowledge(self, tp: Any, offset: int) -> bool:
        """Counts the acknowledgement of ``offset`` only if every record before it is."""
        if self._acked.get(tp) != offset:
            return False
        self._acked[tp] = offset + 1
        return True

    def commit_point(self, tp: Any, committed: int | None) -> int | None:
        """The offset to commit: the end of the unbroken run, when it is past ``committed``."""
        point = self._acked.get(tp)
        if point is None or (committed is not None and point <= committed):
            return None
        return point

    def forget(self, tps: Iterable[Any]) -> None:
        """The partitions left this consumer: whoever reads them next starts from its floor."""
        for tp in tps:
            self._next.pop(tp, None)
            self._acked.pop(tp, None)


class AckGate:
    """Lets a Faust consumer commit only over records a :class:`Checkpoint` handled, in order.

    Faust, left to itself, can commit past records no stage has handled, and a worker that dies
    or gives up the partition before they come round again loses them (issue 10: a killed stitch
    worker's events missing downstream):

    - it acknowledges on its own a message its stream skips (one fetched before a rebalance and
      delivered after it, or one delivered while the flow is suspended);
    - it counts a jump in offsets as a gap already done, and with no committed offset it
      commits whatever run of acknowledgements it holds, wherever that run starts: a partition
      taken over at a late fetch position is committed past its first records.

    Through the gate, for each partition of our (non-compacted) topics: a batch keeps only the
    records at the partition's next offset, counted from the committed offset or, with none,
    from the partition's first offset (:class:`HandledOffsets`); a record beyond it sends the
    consumer back to read the skipped records, so a fault costs a delay, never a record. Only
    the checkpoint's acknowledgements count, in that order, and the offset committed is the end
    of their unbroken run. Compacted topics (the links mirror) have holes by design: there the
    gate counts the checkpoint's acknowledgements and Faust's own rule commits them.
    """

    def __init__(self, consumer: Any) -> None:
        self._consumer = consumer
        self._faust_ack: Callable[[Any], bool] = consumer.ack
        self._faust_new_offset: Callable[[Any], int | None] | None = getattr(
            consumer, "_new_offset", None
        )
        self._open: set[int] = set()
        self._compacted: set[str] = set()
        self.handled = HandledOffsets()
        self.refused = 0
        self.rewound = 0

    def __call__(self, message: Any) -> bool:
        """Faust's ``consumer.ack``: counts only what a checkpoint acknowledges, in order."""
        if id(message) not in self._open:
            return self._refuse(message, logging.INFO, "no stage has handled it")
        if message.topic not in self._compacted and not self.handled.acknowledge(
            message.tp, message.offset
        ):
            return self._refuse(
                message, logging.WARNING, "out of order: the partition is read again"
            )
        return self._faust_ack(message)

    def _refuse(self, message: Any, level: int, why: str) -> bool:
        self.refused += 1
        where = {"topic": message.topic, "partition": message.partition, "offset": message.offset}
        log.log(level, f"not acknowledging a message: {why}", extra=where)
        self._release(message)
        return False

    def _release(self, message: Any) -> None:
        """Lets Faust stop waiting for a message (a rebalance waits for every message it
        delivered) without counting its offset as handled."""
        message.acked = True
        unacked = getattr(self._consumer, "_unacked_messages", None)
        if unacked is not None:
            unacked.discard(message)

    def new_offset(self, tp: Any) -> int | None:
        """Faust's ``consumer._new_offset``: the offset to commit for ``tp``, the end of the
        run the checkpoint acknowledged, never a gap Faust counted as done."""
        if tp.topic in self._compacted and self._faust_new_offset is not None:
            return self._faust_new_offset(tp)
        consumer = self._consumer
        committed = consumer._committed_offset.get(tp)
        point = self.handled.commit_point(tp, committed)
        # Faust's own bookkeeping of what was acknowledged and of gaps plays no part.
        consumer._gap.pop(tp, None)
        through = point if point is not None else committed
        acked = consumer._acked.get(tp)
        if acked:
            done = [offset for offset in acked if through is None or offset < through]
            acked[:] = [offset for offset in acked if through is not None and offset >= through]
            consumer._acked_index[tp].difference_update(done)
        return point

    async def admit(self, events: Sequence[Any], *, compacted: bool = False) -> list[Any]:
        """The events of a batch the stage may handle: each partition's records in order from
        where handling stopped. A partition delivered from beyond that point is read again from
        it; a record handled already is not handled twice."""
        kept: list[Any] = []
        rewind: dict[Any, int] = {}
        for event in events:
            message = event.message
            if compacted:
                self._compacted.add(message.topic)
                kept.append(event)
                continue
            tp = message.tp
            if tp in rewind:
                self._release(message)
                continue
            if not self.handled.knows(tp):
                floor = await self._floor(tp)
                if floor is None:  # no longer this consumer's: its next owner reads it
                    self._release(message)
                    continue
                self.handled.start(tp, floor)
            verdict = self.handled.admit(tp, message.offset)
            if verdict == HandledOffsets.HANDLE:
                kept.append(event)
                continue
            self._release(message)
            if verdict == HandledOffsets.SKIPPED:
                rewind[tp] = self.handled.next(tp)
                log.warning(
                    "a partition was delivered past records not yet handled: reading them again",
                    extra={
                        "topic": message.topic,
                        "partition": message.partition,
                        "offset": message.offset,
                        "from_offset": rewind[tp],
                    },
                )
        for tp, offset in rewind.items():
            self.rewound += 1
            try:
                await self._consumer.seek_wait({tp: offset})
            except Exception as exc:  # revoked meanwhile: its next owner reads from the commit
                log.info("could not seek a partition", extra={"error": repr(exc)})
                self.handled.forget([tp])
        return kept

    async def _floor(self, tp: Any) -> int | None:
        """Where handling of ``tp`` starts: the group's committed offset, or the partition's
        first offset when the group has committed none. None if ``tp`` is not ours."""
        consumer = self._consumer
        if tp not in consumer.assignment():
            return None
        committed = consumer._committed_offset.get(tp)
        if committed is not None:
            return int(committed)
        earliest = await consumer.earliest_offsets(tp)
        return int(earliest.get(tp) or 0)

    async def _on_revoked(self, sender: Any, revoked: Iterable[Any], **kwargs: Any) -> None:
        self.handled.forget(revoked)

    @contextlib.contextmanager
    def opened(self, messages: Sequence[Any]) -> Iterator[None]:
        """Acknowledgements of ``messages`` count while this is open."""
        ids = {id(message) for message in messages}
        self._open |= ids
        try:
            yield
        finally:
            self._open -= ids

    @classmethod
    def install(cls, consumer: Any) -> AckGate:
        """The gate on a Faust consumer, put in place the first time."""
        gate = vars(consumer).get("ack")
        if isinstance(gate, AckGate):
            return gate
        gate = cls(consumer)
        consumer.ack = gate
        if gate._faust_new_offset is not None:
            consumer._new_offset = gate.new_offset
        app = getattr(consumer, "app", None)
        if app is not None:
            app.on_partitions_revoked.connect(gate._on_revoked)
        return gate


def _stream_gate(stream: Any) -> AckGate | None:
    consumer = getattr(getattr(stream, "app", None), "consumer", None)
    return AckGate.install(consumer) if consumer is not None else None


def stream_checkpoint(stream: Any) -> Checkpoint[Any]:
    """The checkpoint of a Faust agent's stream: its app's producer (carrying the tables'
    changelogs), then the events acknowledged, which Faust commits once all before are. Only
    these acknowledgements count (:class:`AckGate`)."""
    app = getattr(stream, "app", None)
    gate = _stream_gate(stream)

    async def acknowledge(events: Sequence[Any]) -> None:
        with gate.opened([e.message for e in events]) if gate else contextlib.nullcontext():
            for event in events:
                await stream.ack(event)

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


async def acked_batches(
    stream: Any, size: int, within: float, *, compacted: bool = False
) -> AsyncIterator[list[Any]]:
    """Batches of up to ``size`` events, or what came ``within`` seconds. The loop body handles
    a batch (outputs, then state); when it asks for the next one the batch is checkpointed
    (:class:`Checkpoint`), so a body that raises (or a worker that dies in it) leaves the batch to
    be delivered again. Each partition's records come in order from where handling stopped
    (:class:`AckGate`); ``compacted`` says the topic is compacted, its offsets with holes."""
    checkpoint = stream_checkpoint(stream)
    gate = _stream_gate(stream)
    async for events in stream.noack_take(size, within=within):
        kept = await gate.admit(events, compacted=compacted) if gate else events
        del events  # what the gate released must not be held while Faust waits at a rebalance
        if not kept:
            continue
        yield kept
        await checkpoint.after(kept)


async def run_batches(
    stream: Any, runner: BatchRunner[Any], size: int, within: float, *, compacted: bool = False
) -> None:
    """Run a Faust stream's batches through ``runner``, acknowledging each once it is handled."""
    async for events in acked_batches(stream, size, within, compacted=compacted):
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
