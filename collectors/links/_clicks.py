"""Clicks become touchpoints after the redirect is answered.

The redirect path only appends a :class:`Click` to a bounded in-memory queue. A background task
turns clicks into touchpoints (validation, IP truncation and the rest of
:func:`tracker.touchpoint.accept`) and produces them, retrying while Kafka is away. A slow or
down Kafka therefore never slows a redirect; clicks wait in the queue, and are dropped (counted
and logged as errors) only when the queue is full.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from collectors.links._model import Link, languages
from tracker.errors import BackpressureError, ValidationError
from tracker.metrics import LINK_CLICK_QUEUE, LINK_CLICKS_DROPPED
from tracker.producer import Publisher
from tracker.touchpoint import RequestContext, Touchpoint, accept

__all__ = ["Click", "ClickBuffer", "click_touchpoint"]

log = logging.getLogger(__name__)

BATCH = 32
# Batches in flight to Kafka at once: small batches keep the loop free, several keep up the rate.
DRAINERS = 8
# Clicks turned into touchpoints between two turns of the event loop: redirects come first.
_CHUNK = 8
_IDLE_SECONDS = 0.05
_DROP_LOG_SECONDS = 10.0


@dataclass(slots=True)
class Click:
    """What the redirect path records: raw request facts, no parsing."""

    link: Link
    click_id: str
    ts: float
    method: str
    qr: bool
    outcome: str
    location: str
    ip: str
    user_agent: str
    referrer: str
    accept_language: str


def click_touchpoint(click: Click, short_url: str, hash_salt: str) -> Touchpoint:
    """The ``link_click`` touchpoint of one click, through the same validation as any event."""
    link = click.link
    received = datetime.fromtimestamp(click.ts, UTC)
    campaign = {k if k != "campaign" else "name": v for k, v in link.utm.items() if v}
    if link.campaign and "name" not in campaign:
        campaign["name"] = link.campaign
    properties = {
        "slug": link.slug,
        "short_url": short_url,
        "outcome": click.outcome,
        "qr": "true" if click.qr else "false",
        "http_method": click.method,
    }
    if link.tags:
        properties["tags"] = ",".join(link.tags)
    if link.campaign:
        properties["link_campaign"] = link.campaign
    page = {"url": (click.location or short_url)[:4096]}  # a long passed-on query is cut, not lost
    if click.referrer:
        page["referrer"] = click.referrer[:4096]
    payload: dict[str, Any] = {
        "event_id": str(uuid.uuid4()),
        "type": "link_click",
        "name": link.slug,
        "source": "shortlink",
        "ts": received.isoformat(),
        "page": page,
        "properties": properties,
    }
    if link.channel:
        payload["channel"] = link.channel
    if campaign:
        payload["campaign"] = campaign
    if click.click_id:
        payload["click_id"] = click.click_id
    preferred = languages(click.accept_language[:256])
    context = {"user_agent": click.user_agent[:1024]}
    if preferred:
        context["locale"] = preferred[0][:35]
    payload["context"] = context
    request = RequestContext(
        source="shortlink", received_ts=received, ip=click.ip, hash_salt=hash_salt
    )
    return accept(payload, request)


class ClickBuffer:
    """A bounded queue of clicks, drained to Kafka in batches by :meth:`run`."""

    def __init__(self, publisher: Publisher, base_url: str, hash_salt: str, bound: int) -> None:
        self._publisher = publisher
        self._base_url = base_url
        self._hash_salt = hash_salt
        self._bound = bound
        self._queue: deque[Click] = deque()
        self._in_flight = 0
        self._last_drop_log = 0.0
        self.dropped = 0
        LINK_CLICK_QUEUE.set_function(self.depth)

    def depth(self) -> int:
        return len(self._queue) + self._in_flight

    def add(self, click: Click) -> None:
        if len(self._queue) < self._bound:
            self._queue.append(click)
            return
        self.dropped += 1
        LINK_CLICKS_DROPPED.inc()
        now = time.monotonic()
        if now - self._last_drop_log > _DROP_LOG_SECONDS:
            self._last_drop_log = now
            log.error(
                "click buffer full: clicks are being DROPPED; Kafka has not taken them in time",
                extra={"bound": self._bound, "dropped_so_far": self.dropped},
            )

    async def run(self) -> None:
        """Drain forever: batches retried until Kafka acknowledges them, a few in flight at once."""
        async with asyncio.TaskGroup() as group:
            for _ in range(DRAINERS):
                group.create_task(self._drain_forever())

    async def _drain_forever(self) -> None:
        while True:
            if not await self.drain_once():
                await asyncio.sleep(_IDLE_SECONDS)

    async def drain_once(self, retry_seconds: float = 0.5) -> int:
        """Send up to one batch; return how many clicks it held (0: the queue was empty)."""
        queue = self._queue
        if not queue:
            return 0
        clicks = [queue.popleft() for _ in range(min(BATCH, len(queue)))]
        self._in_flight += len(clicks)
        try:
            touchpoints = await self._touchpoints(clicks)
            await self._publish(touchpoints, retry_seconds)
        except asyncio.CancelledError:
            queue.extendleft(reversed(clicks))  # shutting down: flush() gets them
            raise
        finally:
            self._in_flight -= len(clicks)
        return len(clicks)

    async def _touchpoints(self, clicks: list[Click]) -> list[Touchpoint]:
        touchpoints = []
        for index, click in enumerate(clicks, 1):
            short_url = f"{self._base_url}/{click.link.slug}"
            try:
                touchpoints.append(click_touchpoint(click, short_url, self._hash_salt))
            except ValidationError as exc:  # a link field the schema refuses: log, go on
                log.error(
                    "click not recordable", extra={"slug": click.link.slug, "error": str(exc)}
                )
            if index % _CHUNK == 0:
                await asyncio.sleep(0)
        return touchpoints

    async def _publish(self, touchpoints: list[Touchpoint], retry_seconds: float) -> None:
        delay = retry_seconds
        while True:
            try:
                await self._publisher.publish(touchpoints)
                return
            except BackpressureError as exc:
                log.warning(
                    "clicks wait for kafka",
                    extra={"queued": self.depth(), "error": str(exc), "retry_in": delay},
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def flush(self, within: float) -> None:
        """On shutdown: give what is queued a bounded time to reach Kafka, and say what did not."""
        try:
            async with asyncio.timeout(within):
                while await self.drain_once(retry_seconds=0.2):
                    pass
        except TimeoutError:
            log.error("clicks not delivered before shutdown", extra={"lost": self.depth()})
