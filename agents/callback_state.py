"""The versioned merge every callback stage runs (calls, tickets). Plain Python, no Faust.

A provider sends many callbacks about one thing (a call, a ticket), in any order and with retries.
The state of that thing is the set of its distinct callbacks, keyed by callback id; each stage
makes its record from that set. This module folds a batch of callbacks into that state, within
its bounds, and writes what the stage made: outputs first, dead letters for what ClickHouse
refused, state last, so a batch that fails midway leaves the state as it was.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, MutableMapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Generic, Protocol, TypeVar

import orjson

from agents.ingest import RawMessage
from tracker.deadletter import DeadLetter
from tracker.errors import FieldError, StateTooLarge
from tracker.metrics import STATE_FOLDED
from tracker.store.sink import Sink

__all__ = ["CallbackState", "Folded"]


class Callback(Protocol):
    @property
    def callback_id(self) -> str: ...

    def to_wire(self) -> dict[str, Any]: ...


C = TypeVar("C", bound=Callback)


@dataclass
class Folded:
    """A batch folded into state: each touched key's callbacks, the keys that gained one, and the
    keys this batch is the first to see."""

    touched: dict[str, dict[str, Any]] = field(default_factory=dict)
    changed: set[str] = field(default_factory=set)
    fresh: set[str] = field(default_factory=set)


@dataclass(frozen=True)
class CallbackState(Generic[C]):
    """How one stage folds its callbacks: ``stage`` and ``noun`` name it in dead letters and
    metrics (``noun`` is the label of STATE_FOLDED and reads "the call's first callback"),
    ``read`` makes a callback from its wire form, ``key`` says whose state it joins."""

    stage: str
    noun: str
    namespace: uuid.UUID
    read: Callable[[dict[str, Any]], C]
    key: Callable[[C], str]
    merged: (
        Any  # the stage's counter of callbacks by outcome: merged, duplicate, over_limit, over_size
    )
    max_callbacks: int
    max_state_bytes: int
    dead_letters: Sink

    def fold(self, messages: Sequence[RawMessage], state: MutableMapping[str, Any]) -> Folded:
        """The batch merged into copies of each key's state; ``state`` itself is not changed.
        A message that is no callback becomes a dead letter. Past ``max_callbacks`` or
        ``max_state_bytes`` a key keeps what it has and counts the rest."""
        folded = Folded()
        sizes: dict[str, int] = {}  # bytes of each touched key's state, as Kafka carries it
        for message in messages:
            try:
                callback = self.read(_object(message.value, self.noun))
            except (KeyError, TypeError, ValueError, orjson.JSONDecodeError) as exc:
                self._malformed(message, f"{self.noun} callback is malformed: {exc!r}")
                continue
            key = self.key(callback)
            known = folded.touched.get(key)
            if known is None:
                known = dict(state.get(key) or {})
                sizes[key] = len(key.encode()) + len(orjson.dumps(known))
                if not known:
                    folded.fresh.add(key)
            if callback.callback_id in known:
                self.merged.labels("duplicate").inc()
            elif len(known) >= self.max_callbacks:
                self.merged.labels("over_limit").inc()
            else:
                wire = callback.to_wire()
                grown = sizes[key] + len(orjson.dumps({callback.callback_id: wire}))
                if grown <= self.max_state_bytes:
                    known[callback.callback_id] = wire
                    sizes[key] = grown
                    folded.changed.add(key)
                    self.merged.labels("merged").inc()
                elif known:  # known well enough: further detail is counted, not kept
                    self.merged.labels("over_size").inc()
                    STATE_FOLDED.labels(self.noun).inc()
                else:
                    raise StateTooLarge(
                        f"the {self.noun}'s first callback", grown, self.max_state_bytes
                    )
            folded.touched[key] = known
        return folded

    async def write(
        self,
        outputs: Sequence[Sink],
        written: dict[str, dict[str, Any]],
        folded: Folded,
        state: MutableMapping[str, Any],
    ) -> None:
        """Flush the dead letters and ``outputs``, keep what ClickHouse refused as dead letters
        holding the record's callbacks (``written``: event id to callbacks), then the state."""
        await self.dead_letters.flush()
        refused: dict[tuple[str, int], str] = {}
        for sink in outputs:
            refused.update((await sink.flush()).refused)
        for (event_id, version), reason in refused.items():
            self._refused(event_id, version, reason, written.get(event_id, {}))
        if refused:
            await self.dead_letters.flush()
        for key in folded.changed:
            state[key] = folded.touched[key]

    def _malformed(self, message: RawMessage, reason: str) -> None:
        self._add(
            DeadLetter(
                dead_letter_id=str(uuid.uuid5(self.namespace, message.coordinates)),
                source="worker",
                stage=self.stage,
                reason=reason,
                errors=(FieldError("$", reason),),
                payload=message.value.decode("utf-8", errors="replace"),
                received_ts=datetime.now(UTC),
            )
        )

    def _refused(self, event_id: str, version: int, reason: str, callbacks: dict[str, Any]) -> None:
        self._add(
            DeadLetter(
                dead_letter_id=str(uuid.uuid5(self.namespace, f"refused:{event_id}:{version}")),
                source="worker",
                stage=self.stage,
                reason=f"ClickHouse refused the {self.noun} record: {reason}",
                errors=(FieldError("$", reason),),
                payload=orjson.dumps(list(callbacks.values())).decode(),
                received_ts=datetime.now(UTC),
                event_id=event_id,
            )
        )

    def _add(self, letter: DeadLetter) -> None:
        self.dead_letters.add(letter.dead_letter_id, letter.received_ts, letter)


def _object(value: bytes, noun: str) -> dict[str, Any]:
    wire = orjson.loads(value)
    if not isinstance(wire, dict):
        raise TypeError(f"a {noun} callback must be a JSON object")
    return wire
