"""The hand-off between stitch workers and the writer, when workers scale out.

With embedded chDB only one process can hold ClickHouse. Workers of role ``stitch`` run ingest,
identity and journey and give each record they would have written to an :class:`OutputSink`,
which sends it through Kafka (the ``outputs`` topic, keyed by table and record key so that a
record's versions stay on one partition, in order). The ``write`` worker reads that topic with
:class:`Writer`: it decodes each typed record, writes a batch through the same idempotent
ClickHouse sinks the ``all`` worker uses, and its consumer commits only after the insert
(the one checkpoint order, agents/services.py).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Protocol

import orjson

from agents.ingest import RawMessage, undeliverable
from agents.stitching import Outgoing
from tracker.metrics import WORKER_EVENTS
from tracker.store.sink import FlushResult, Sink
from tracker.store.tables import DEAD_LETTERS, TABLES, TOUCHPOINTS, Table

__all__ = ["OutputSink", "Sender", "Writer", "is_touchpoint", "output_record"]

log = logging.getLogger(__name__)


class Sender(Protocol):
    async def send_all(self, records: Sequence[Any]) -> None: ...


def _wire(record: Any) -> bytes:
    wire = record.to_wire()
    return wire if isinstance(wire, bytes) else orjson.dumps(wire)


def output_record(table: Table, key: str, version: int, record: Any) -> tuple[bytes, bytes]:
    """The (key, value) of one record on the outputs topic."""
    head = orjson.dumps({"table": table.name, "key": key, "version": version})
    return f"{table.name}|{key}".encode(), head[:-1] + b',"record":' + _wire(record) + b"}"


_TOUCHPOINT_PREFIX = f"{TOUCHPOINTS.name}|".encode()


def is_touchpoint(key: bytes | None) -> bool:
    """Whether an outputs record (keyed by :func:`output_record`) is a touchpoint's."""
    return key is not None and key.startswith(_TOUCHPOINT_PREFIX)


class OutputSink:
    """A :class:`Sink` for one table that hands its records to the writer through Kafka.
    ``flush`` returns once Kafka has acknowledged them all."""

    def __init__(self, outbox: Sender, topic: str, table: Table) -> None:
        self._outbox = outbox
        self._topic = topic
        self._table = table
        self._records: dict[tuple[str, int], Any] = {}

    def add(self, key: str, ts: datetime, record: Any, version: int = 0) -> None:
        self._records.setdefault((key, version), record)

    def discard(self) -> None:
        self._records = {}

    async def flush(self) -> FlushResult:
        records, self._records = self._records, {}
        if records:
            await self._outbox.send_all(
                [
                    Outgoing(self._topic, *output_record(self._table, key, version, record))
                    for (key, version), record in records.items()
                ]
            )
        return FlushResult(written=0, duplicates=0, forwarded=len(records))


class Writer:
    """Writes what stitch workers sent, a batch at a time, through one sink per table.
    ``handle`` returns once every record is stored (or, refused by ClickHouse on its own, kept
    as a dead letter): commit the batch's offsets only then."""

    def __init__(self, sinks: Mapping[str, Sink]) -> None:
        self._sinks = sinks

    def discard(self) -> None:
        """Forget what a failed attempt added and did not write."""
        for sink in self._sinks.values():
            sink.discard()

    async def handle(self, messages: Sequence[RawMessage]) -> None:
        sources: dict[tuple[str, int], RawMessage] = {}
        letters = self._sinks[DEAD_LETTERS.name]
        for message in messages:
            try:
                wire = orjson.loads(message.value)
                table = TABLES[wire["table"]]
                if table.record is None:
                    raise ValueError(f"{table.name} does not come through Kafka")
                record = table.record(wire["record"])
                key, version = str(wire["key"]), int(wire["version"])
            except (KeyError, TypeError, ValueError) as exc:
                letter = undeliverable(
                    message, f"output record is malformed: {exc!r}", stage="write"
                )
                letters.add(letter.dead_letter_id, letter.received_ts, letter)
                continue
            if table is TOUCHPOINTS:
                sources[(key, version)] = message
            self._sinks[table.name].add(key, getattr(record, table.time), record, version)
        stored = await self._sinks[TOUCHPOINTS.name].flush()
        for (event_id, version), reason in stored.refused.items():
            letter = undeliverable(
                sources[(event_id, version)],
                f"ClickHouse refused the row: {reason}",
                event_id=event_id,
                stage="write",
            )
            letters.add(letter.dead_letter_id, letter.received_ts, letter)
        WORKER_EVENTS.labels("written").inc(stored.written)
        WORKER_EVENTS.labels("duplicate").inc(stored.duplicates)
        WORKER_EVENTS.labels("dead_letter").inc(len(stored.refused))
        for name, sink in self._sinks.items():
            if name != TOUCHPOINTS.name:
                result = await sink.flush()
                for reason in result.refused.values():
                    log.error("ClickHouse refused a row", extra={"table": name, "reason": reason})
