"""Clicks are recorded after the redirect is answered, and shipped to Kafka in compact batches.

The redirect path only appends a :data:`Click` (a plain tuple of raw request facts) to a bounded
in-memory queue. A background task packs up to :data:`BATCH_CLICKS` clicks into ONE Kafka record
(:func:`collectors.links.records.encode_batch`: the raw facts plus the few link fields a touchpoint needs),
waiting up to :data:`LINGER_SECONDS` for a full batch, and produces it to ``links.click_batches``,
retrying while Kafka is away. No validation happens
here: the worker turns each click into a ``link_click`` touchpoint
(:func:`collectors.links.records.click_touchpoint`). So the serving process spends about a microsecond per
click, a slow or down Kafka never slows a redirect, and clicks are dropped (counted and logged as
errors) only when the queue is full.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import logging
import secrets
import time
import uuid
from collections import deque
from dataclasses import dataclass
from typing import Protocol

from collectors.links.records import ClickLink, encode_batch
from tracker.errors import BackpressureError
from tracker.metrics import LINK_CLICK_QUEUE, LINK_CLICKS_DROPPED

__all__ = ["Click", "ClickBuffer", "ClickIds", "ClickPublisher"]

log = logging.getLogger(__name__)

Click = tuple[ClickLink, str, float, str, bool, str, str, str, str, str, str]
"""What the redirect path records, in this order: the link's fields as they are now
(``Link.click_fields``), token (the click id drawn for the request), time (epoch seconds), HTTP
method, QR flag, outcome, location, client IP truncated, user agent, referrer, Accept-Language.
A tuple of what orjson writes natively: the batch is one ``orjson.dumps``, about 0.2 µs a
click, and building the tuple costs a fraction of a dataclass."""

# At most this many clicks, and this many bytes, go into one Kafka record.
BATCH_CLICKS = 1024
BATCH_BYTES = 192 * 1024
# Batches in flight to Kafka at once: enough to catch up quickly after an outage.
DRAINERS = 4
# Short of a full batch, wait this long for more: each Kafka send costs the serving process about
# half a millisecond (mostly the loopback socket write), so a batch should carry many clicks. It
# is also about how long a click waits in memory before it is sent, at low rates.
LINGER_SECONDS = 0.25
_DROP_LOG_SECONDS = 10.0


@dataclass(frozen=True, slots=True)
class _Part:
    clicks: list[Click]
    value: bytes


def _parts(base_url: str, clicks: list[Click]) -> list[_Part]:
    """``clicks`` packed into one record, or halved until each record is at most BATCH_BYTES
    (only clicks with very long URLs or headers take more than one)."""
    value = encode_batch(base_url, clicks)
    if len(value) <= BATCH_BYTES or len(clicks) == 1:
        return [_Part(clicks, value)]
    half = len(clicks) // 2
    return _parts(base_url, clicks[:half]) + _parts(base_url, clicks[half:])


class ClickPublisher(Protocol):
    """Where click batches go; ``publish_click_batch`` returns once Kafka acknowledged the record,
    or raises :class:`~tracker.errors.BackpressureError`."""

    async def publish_click_batch(self, value: bytes, key: str, clicks: int) -> None: ...


class ClickIds:
    """Random click ids of 12 URL-safe characters (72 bits), drawn from the OS in bulk: one
    ``secrets`` call per 4,096 ids instead of one per redirect."""

    def __init__(self, per_draw: int = 4096) -> None:
        self._per_draw = per_draw
        self._ids: list[str] = []

    def take(self) -> str:
        ids = self._ids
        if not ids:
            # 9 random bytes are exactly 12 base64 characters, so the ids line up.
            drawn = base64.urlsafe_b64encode(secrets.token_bytes(9 * self._per_draw)).decode()
            ids.extend(drawn[i : i + 12] for i in range(0, len(drawn), 12))
        return ids.pop()


class ClickBuffer:
    """A bounded queue of clicks, drained to Kafka in compact batches by :meth:`run`."""

    def __init__(
        self, publisher: ClickPublisher, base_url: str, bound: int, instance: str | None = None
    ) -> None:
        self._publisher = publisher
        self._base_url = base_url
        self.bound = bound
        self.queue: deque[Click] = deque()
        """The redirect path may append here directly while ``len(queue) < bound``, else it
        calls :meth:`drop`: :meth:`add` in line."""
        self._in_flight = 0
        self._last_drop_log = 0.0
        self._keys = (f"{instance or uuid.uuid4().hex[:12]}-{n}" for n in itertools.count())
        self.dropped = 0
        LINK_CLICK_QUEUE.set_function(self.depth)

    def depth(self) -> int:
        return len(self.queue) + self._in_flight

    def add(self, click: Click) -> None:
        if len(self.queue) < self.bound:
            self.queue.append(click)
        else:
            self.drop()

    def drop(self) -> None:
        """Count (and now and then log) a click lost because the queue is full."""
        self.dropped += 1
        LINK_CLICKS_DROPPED.inc()
        now = time.monotonic()
        if now - self._last_drop_log > _DROP_LOG_SECONDS:
            self._last_drop_log = now
            log.error(
                "click buffer full: clicks are being DROPPED; Kafka has not taken them in time",
                extra={"bound": self.bound, "dropped_so_far": self.dropped},
            )

    async def run(self) -> None:
        """Drain forever. One loop paces the batches: it waits up to LINGER_SECONDS for a full
        one, then sends what is queued, a few batches in flight at once (to catch up after an
        outage), each retried until Kafka acknowledges it."""
        sending: set[asyncio.Task[int]] = set()
        try:
            while True:
                if len(self.queue) < BATCH_CLICKS:
                    await asyncio.sleep(LINGER_SECONDS)
                while self.queue and len(sending) < DRAINERS:
                    task = asyncio.create_task(self.drain_once())
                    sending.add(task)
                    task.add_done_callback(sending.discard)
                    await asyncio.sleep(0)  # it takes its clicks from the queue
                if len(sending) >= DRAINERS:
                    await asyncio.wait(sending, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in list(sending):  # each puts back what Kafka has not acknowledged
                task.cancel()
            await asyncio.gather(*sending, return_exceptions=True)

    async def drain_once(self, retry_seconds: float = 0.5) -> int:
        """Send up to one batch; return how many clicks it held (0: the queue was empty)."""
        queue = self.queue
        clicks = [queue.popleft() for _ in range(min(BATCH_CLICKS, len(queue)))]
        self._in_flight += len(clicks)
        unsent = len(clicks)
        try:
            for part in _parts(self._base_url, clicks):
                await self._publish(part.value, len(part.clicks), retry_seconds)
                unsent -= len(part.clicks)
        except asyncio.CancelledError:
            # Shutting down: flush() gets what Kafka has not acknowledged.
            queue.extendleft(reversed(clicks[len(clicks) - unsent :]))
            raise
        finally:
            self._in_flight -= len(clicks)
        return len(clicks)

    async def _publish(self, value: bytes, clicks: int, retry_seconds: float) -> None:
        delay = retry_seconds
        key = next(self._keys)
        while True:
            try:
                await self._publisher.publish_click_batch(value, key, clicks)
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
