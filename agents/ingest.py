"""Ingest: raw touchpoints in, enriched touchpoints (:class:`~tracker.records.EnrichedTouchpoint`)
out, each event_id once. Plain Python, no Faust."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import orjson

from agents.enrich import enrich
from agents.forget import ForgottenIdentifiers
from tracker.bounds import time_range_error
from tracker.deadletter import DeadLetter
from tracker.errors import FieldError
from tracker.metrics import WORKER_EVENTS, observe_stage_lag
from tracker.records import TOUCHPOINT_SCHEMA, EnrichedTouchpoint
from tracker.store.sink import Sink
from tracker.touchpoint import Touchpoint

__all__ = ["IngestPipeline", "RawMessage", "enriched", "undeliverable"]

log = logging.getLogger(__name__)

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
                touchpoint.event_id, touchpoint.ts, enriched(touchpoint), touchpoint.version
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
        self.dead_letters.add(letter.dead_letter_id, letter.received_ts, letter)


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


def enriched(t: Touchpoint) -> EnrichedTouchpoint:
    """The touchpoint as the stages pass it on: enriched, not yet stitched."""
    e = enrich(t)
    page, survey, consent, context = t.page, t.survey, t.consent, t.context
    return EnrichedTouchpoint(
        event_id=t.event_id,
        version=t.version,
        schema=TOUCHPOINT_SCHEMA,
        type=t.type,
        name=t.name,
        source=t.source,
        channel=e.channel,
        ts=t.ts,
        device_ts=t.device_ts,
        sent_ts=t.sent_ts,
        received_ts=t.received_ts,
        customer_id="",
        anonymous_id=t.anonymous_id,
        user_id=t.user_id,
        email_hash=t.email_hash,
        phone_hash=t.phone_hash,
        session_id="",
        client_session_id=t.session_id,
        click_id=t.click_id,
        ad_click_ids=e.ad_click_ids,
        stage="",
        seq=0,
        page_url=page.get("url", ""),
        page_host=e.page_host,
        page_path=e.page_path,
        page_title=page.get("title", ""),
        referrer=page.get("referrer", ""),
        referrer_host=e.referrer_host,
        campaign_source=e.campaign.get("source", ""),
        campaign_medium=e.campaign.get("medium", ""),
        campaign_name=e.campaign.get("name", ""),
        campaign_term=e.campaign.get("term", ""),
        campaign_content=e.campaign.get("content", ""),
        properties=t.properties,
        value=t.value,
        currency=t.currency,
        survey_kind=survey.get("kind", ""),
        survey_score=survey.get("score"),
        survey_comment=survey.get("comment", ""),
        consent_analytics=consent.get("analytics"),
        consent_marketing=consent.get("marketing"),
        ip=context.get("ip", ""),
        user_agent=context.get("user_agent", ""),
        device_type=e.device_type,
        os=e.os,
        browser=e.browser,
        is_bot=e.is_bot,
        bot_reason=e.bot_reason,
        locale=context.get("locale", ""),
        timezone=context.get("timezone", ""),
        screen=context.get("screen", ""),
        library=context.get("library", ""),
        conversion="",  # decided when stitched
        survey_touchpoint_id=survey.get("touchpoint_id", "").lower(),  # if the client named it
    )
