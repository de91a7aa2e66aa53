"""Ingest: raw touchpoints in, enriched rows out, each event_id once. Plain Python, no Faust."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from agents.enrich import enrich
from agents.forget import ForgottenIdentifiers
from tracker.bounds import time_range_error
from tracker.deadletter import DeadLetter
from tracker.errors import FieldError
from tracker.metrics import WORKER_EVENTS, observe_stage_lag
from tracker.store.sink import Sink
from tracker.touchpoint import Touchpoint

__all__ = [
    "DEAD_LETTER_COLUMNS",
    "TOUCHPOINT_COLUMNS",
    "IngestPipeline",
    "RawMessage",
    "dead_letter_row",
    "touchpoint_row",
    "undeliverable",
]

log = logging.getLogger(__name__)

TOUCHPOINT_COLUMNS = (
    "event_id",
    "version",
    "schema",
    "type",
    "name",
    "source",
    "channel",
    "ts",
    "device_ts",
    "sent_ts",
    "received_ts",
    "customer_id",
    "anonymous_id",
    "user_id",
    "email_hash",
    "phone_hash",
    "session_id",
    "client_session_id",
    "click_id",
    "ad_click_ids",
    "stage",
    "seq",
    "page_url",
    "page_host",
    "page_path",
    "page_title",
    "referrer",
    "referrer_host",
    "campaign_source",
    "campaign_medium",
    "campaign_name",
    "campaign_term",
    "campaign_content",
    "properties",
    "value",
    "currency",
    "survey_kind",
    "survey_score",
    "survey_comment",
    "consent_analytics",
    "consent_marketing",
    "ip",
    "user_agent",
    "device_type",
    "os",
    "browser",
    "is_bot",
    "bot_reason",
    "locale",
    "timezone",
    "screen",
    "library",
    "conversion",
    "survey_touchpoint_id",
)
DEAD_LETTER_COLUMNS = (
    "dead_letter_id",
    "received_ts",
    "source",
    "stage",
    "reason",
    "error_fields",
    "event_id",
    "payload",
)
_WORKER = "worker"
_DEAD_LETTER_NAMESPACE = uuid.UUID("6f1c2a0e-2f4b-4f3e-9a57-3c1d2b8e7a10")


@dataclass(frozen=True, slots=True)
class RawMessage:
    """A Kafka record as the pipeline needs it: the bytes and where they came from."""

    value: bytes
    topic: str
    partition: int
    offset: int
    item: int | None = None
    """Which event of a record holding many (a click batch); ``None`` for a record of one."""

    @property
    def coordinates(self) -> str:
        where = f"{self.topic}/{self.partition}/{self.offset}"
        return where if self.item is None else f"{where}/{self.item}"


class IngestPipeline:
    """Decodes a batch, enriches it, and writes it through the sinks. Returns once it is stored."""

    def __init__(
        self, touchpoints: Sink, dead_letters: Sink, forgotten: ForgottenIdentifiers | None = None
    ) -> None:
        self.touchpoints = touchpoints
        self.dead_letters = dead_letters
        self.forgotten = ForgottenIdentifiers() if forgotten is None else forgotten

    async def handle_touchpoints(self, messages: Sequence[RawMessage]) -> None:
        decoded: list[tuple[Touchpoint, RawMessage]] = []
        rejected: list[DeadLetter] = []
        for message in messages:
            try:
                decoded.append((_decode_touchpoint(message.value), message))
            except (KeyError, TypeError, ValueError, orjson.JSONDecodeError) as exc:
                rejected.append(undeliverable(message, f"raw event is malformed: {exc!r}"))
        await self.handle_decoded(decoded, rejected)

    async def handle_decoded(
        self,
        touchpoints: Sequence[tuple[Touchpoint, RawMessage]],
        rejected: Sequence[DeadLetter] = (),
    ) -> None:
        """Store touchpoints that are already decoded, each with the record it came from (its
        dead letter if ClickHouse refuses the row), and the dead letters of those that were not.
        Returns once both are stored: commit offsets only after this."""
        observe_stage_lag("ingest", (touchpoint.received_ts for touchpoint, _ in touchpoints))
        forgotten = 0
        sources: dict[tuple[str, int], RawMessage] = {}
        for letter in rejected:
            self._add_dead_letter(letter)
        for touchpoint, message in touchpoints:
            if self.forgotten.forgets(touchpoint):
                forgotten += 1
                continue
            sources.setdefault((touchpoint.event_id, touchpoint.version), message)
            self.touchpoints.add(
                touchpoint.event_id, touchpoint.ts, touchpoint_row(touchpoint), touchpoint.version
            )
        dead = await self.dead_letters.flush()
        stored = await self.touchpoints.flush()
        for key, reason in stored.refused.items():
            self._add_dead_letter(
                undeliverable(sources[key], f"ClickHouse refused the row: {reason}")
            )
        if stored.refused:
            dead = await self.dead_letters.flush()
        WORKER_EVENTS.labels("written").inc(stored.written)
        WORKER_EVENTS.labels("forwarded").inc(stored.forwarded)
        WORKER_EVENTS.labels("forgotten").inc(forgotten)
        WORKER_EVENTS.labels("duplicate").inc(
            len(touchpoints) - forgotten - stored.written - stored.forwarded - len(stored.refused)
        )
        WORKER_EVENTS.labels("dead_letter").inc(len(rejected) + len(stored.refused))
        for reason in dead.refused.values():
            log.error("ClickHouse refused a dead letter", extra={"reason": reason})

    def discard(self) -> None:
        """Forget the rows a failed attempt added and did not write."""
        self.touchpoints.discard()
        self.dead_letters.discard()

    async def handle_dead_letters(self, messages: Sequence[RawMessage]) -> None:
        for message in messages:
            try:
                letter = DeadLetter.from_wire(orjson.loads(message.value))
            except (KeyError, TypeError, ValueError, orjson.JSONDecodeError) as exc:
                letter = undeliverable(message, f"dead letter is malformed: {exc!r}")
            self._add_dead_letter(letter)
        result = await self.dead_letters.flush()
        for reason in result.refused.values():
            log.error("ClickHouse refused a dead letter", extra={"reason": reason})

    def _add_dead_letter(self, letter: DeadLetter) -> None:
        self.dead_letters.add(letter.dead_letter_id, letter.received_ts, dead_letter_row(letter))


def _decode_touchpoint(value: bytes) -> Touchpoint:
    wire = orjson.loads(value)
    if not isinstance(wire, dict):
        raise TypeError("raw event is not a JSON object")
    touchpoint = Touchpoint.from_wire(wire)
    uuid.UUID(touchpoint.event_id)
    # The edge checks this; a record produced around it must not reach the journey arithmetic.
    if (why := time_range_error(touchpoint.ts, touchpoint.received_ts)) is not None:
        raise ValueError(f"ts {why}")
    return touchpoint


def undeliverable(
    message: RawMessage,
    reason: str,
    errors: Sequence[FieldError] = (),
    event_id: str = "",
    stage: str = "ingest",
) -> DeadLetter:
    """The dead letter of a record (or one event of it) the worker cannot store. Its id follows
    from where the record is, so a replay of the same record is one dead letter."""
    return DeadLetter(
        dead_letter_id=str(uuid.uuid5(_DEAD_LETTER_NAMESPACE, message.coordinates)),
        source=_WORKER,
        stage=stage,
        reason=reason,
        errors=tuple(errors) or (FieldError("$", reason),),
        event_id=event_id,
        payload=message.value.decode("utf-8", errors="replace"),
        received_ts=datetime.now(UTC),
    )


def touchpoint_row(t: Touchpoint) -> tuple[Any, ...]:
    e = enrich(t)
    page, survey, consent, context = t.page, t.survey, t.consent, t.context
    return (
        t.event_id,
        t.version,
        "tracker/touchpoint/1-0-0",
        t.type,
        t.name,
        t.source,
        e.channel,
        t.ts,
        t.device_ts,
        t.sent_ts,
        t.received_ts,
        "",
        t.anonymous_id,
        t.user_id,
        t.email_hash,
        t.phone_hash,
        "",
        t.session_id,
        t.click_id,
        e.ad_click_ids,
        "",
        0,
        page.get("url", ""),
        e.page_host,
        e.page_path,
        page.get("title", ""),
        page.get("referrer", ""),
        e.referrer_host,
        e.campaign.get("source", ""),
        e.campaign.get("medium", ""),
        e.campaign.get("name", ""),
        e.campaign.get("term", ""),
        e.campaign.get("content", ""),
        t.properties,
        t.value,
        t.currency,
        survey.get("kind", ""),
        survey.get("score"),
        survey.get("comment", ""),
        consent.get("analytics"),
        consent.get("marketing"),
        context.get("ip", ""),
        context.get("user_agent", ""),
        e.device_type,
        e.os,
        e.browser,
        e.is_bot,
        e.bot_reason,
        context.get("locale", ""),
        context.get("timezone", ""),
        context.get("screen", ""),
        context.get("library", ""),
        "",  # conversion: decided when stitched
        survey.get("touchpoint_id", "").lower(),  # the rated touchpoint, if the client named it
    )


def dead_letter_row(d: DeadLetter) -> tuple[Any, ...]:
    return (
        d.dead_letter_id,
        d.received_ts,
        d.source,
        d.stage,
        d.reason,
        [e.field for e in d.errors],
        d.event_id,
        d.payload,
    )
