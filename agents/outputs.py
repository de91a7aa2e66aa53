"""The hand-off between stitch workers and the writer, when workers scale out.

With embedded chDB only one process can hold ClickHouse. Workers of role ``stitch`` run ingest,
identity and journey and give each record they would have written to an :class:`OutputSink`,
which sends a batch's rows of one table through Kafka (the ``outputs`` topic) in a few records
of up to :data:`CHUNK_BYTES` each: a Kafka record per row cost the stitch workers and the writer
more than the rows themselves. Rows are versioned and the sinks idempotent, so no order between
records is needed. The ``write`` worker reads that topic with :class:`Writer`: it decodes each
typed row, writes a batch through the same idempotent ClickHouse sinks the ``all`` worker uses,
and its consumer commits only after the insert (the one checkpoint order, agents/services.py).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any, Protocol

import orjson

from agents.ingest import RawMessage, undeliverable
from agents.stitching import Outgoing
from tracker.metrics import WORKER_EVENTS
from tracker.store.sink import FlushResult, Sink
from tracker.store.tables import DEAD_LETTERS, TABLES, TOUCHPOINTS, Table

__all__ = [
    "CHUNK_BYTES",
    "OutputSink",
    "Sender",
    "Writer",
    "output_records",
    "touchpoints_in",
]

log = logging.getLogger(__name__)


class Sender(Protocol):
    async def send_all(self, records: Sequence[Any]) -> None: ...


CHUNK_BYTES = 512 * 1024
"""The rows an outputs record holds, in bytes of their wire form: well under Kafka's 1 MB."""

TOUCHPOINTS_HEADER = "touchpoints"
"""The header saying how many touchpoints an outputs record holds: the writer's batch size."""
_TOUCHPOINT_KEY = f"{TOUCHPOINTS.name}|".encode()


def _wire(record: Any) -> bytes:
    wire = record.to_wire()
    return wire if isinstance(wire, bytes) else orjson.dumps(wire)


def _row(key: str, version: int, record: Any) -> bytes:
    head = orjson.dumps({"key": key, "version": version})
    return head[:-1] + b',"record":' + _wire(record) + b"}"


def output_records(
    table: Table, rows: Sequence[tuple[str, int, Any]], limit: int = CHUNK_BYTES
) -> list[tuple[bytes, bytes, int]]:
    """The (key, value, rows) of the outputs records holding ``rows`` (key, version, record)
    of ``table``: as few as keep each under ``limit`` bytes (a larger row goes alone)."""
    chunks: list[list[tuple[str, bytes]]] = [[]]
    size = 0
    for key, version, record in rows:
        row = _row(key, version, record)
        if chunks[-1] and size + len(row) > limit:
            chunks.append([])
            size = 0
        chunks[-1].append((key, row))
        size += len(row)
    head = b'{"table":' + orjson.dumps(table.name) + b',"rows":['
    return [
        (
            f"{table.name}|{chunk[0][0]}".encode(),
            head + b",".join(r for _, r in chunk) + b"]}",
            len(chunk),
        )
        for chunk in chunks
        if chunk
    ]


def touchpoints_in(key: bytes | None, headers: Sequence[tuple[str, bytes]] | None) -> int:
    """How many touchpoints an outputs record holds, from its header (or, for a record of one
    row as stitch workers sent before chunks, from its key)."""
    for name, value in headers or ():
        if name == TOUCHPOINTS_HEADER:
            with contextlib.suppress(ValueError):
                return max(0, int(value))
    return 1 if key is not None and key.startswith(_TOUCHPOINT_KEY) else 0


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
            counted = self._table is TOUCHPOINTS
            chunks = output_records(self._table, [(k, v, r) for (k, v), r in records.items()])
            await self._outbox.send_all(
                [
                    Outgoing(
                        self._topic,
                        key,
                        value,
                        ((TOUCHPOINTS_HEADER, str(rows).encode()),) if counted else (),
                    )
                    for key, value, rows in chunks
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

        def refuse(source: RawMessage, exc: Exception) -> None:
            letter = undeliverable(source, f"output record is malformed: {exc!r}", stage="write")
            letters.add(letter.dead_letter_id, letter.received_ts, letter)

        for message in messages:
            try:
                wire = orjson.loads(message.value)
                table = TABLES[wire["table"]]
                if table.record is None:
                    raise ValueError(f"{table.name} does not come through Kafka")
                # A record of many rows; a record of one, as stitch workers sent before chunks.
                chunked = "rows" in wire
                rows = wire["rows"] if chunked else [wire]
                if not isinstance(rows, list):
                    raise TypeError(f"rows must be a list, not {type(rows).__name__}")
            except (KeyError, TypeError, ValueError) as exc:
                refuse(message, exc)
                continue
            for item, row in enumerate(rows):
                source = replace(message, item=item) if chunked else message
                try:
                    record = table.record(row["record"])
                    key, version = str(row["key"]), int(row["version"])
                except (KeyError, TypeError, ValueError) as exc:
                    refuse(source, exc)
                    continue
                if table is TOUCHPOINTS:
                    sources[(key, version)] = source
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
