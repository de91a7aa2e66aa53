"""``POST /v1/numbers``: the beacon reserves a pool phone number for a web session.

Reservations are records of the compacted, single-partition reservations topic
(:mod:`collectors.calls.pools` has the rules). Every beacon instance keeps a :class:`~collectors.calls.pools.PoolBook`
rebuilt from it; an answer with a reserved number comes only after Kafka acknowledged the
reservation and this instance has read it back and seen that it holds.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import orjson
import phonenumbers
from aiohttp import web

from collectors.calls.pools import NumberPool, PoolBook, Reservation
from tracker.errors import BackpressureError, FieldError, ValidationError
from tracker.http import json_error, json_response, read_body
from tracker.kafka.compacted import CompactedLog, CompactedState, MemoryLog
from tracker.kafka.producer import Publisher
from tracker.kafka.topology import Topology
from tracker.metrics import CALL_POOL_DRY, CALL_POOL_FREE, CALL_POOL_RESERVATIONS
from tracker.settings import Settings
from tracker.touchpoint import RequestContext, Touchpoint, accept

__all__ = ["NumberReservations", "numbers_handler"]

log = logging.getLogger(__name__)

# Fixed forever: a session's "pool dry" event is uuid5(this, "<pool>:<session_id>"), so it is
# stored once however often that session meets the dry pool.
POOL_DRY_NAMESPACE: Final = uuid.UUID("7a1e4c52-0b3d-4f6e-9a8c-2d5b1e7f3c94")
# A request that loses this many races in a row (other instances taking each number first) gets 503.
MAX_ATTEMPTS: Final = 5


class NumberReservations:
    """This beacon instance's view of every reservation, and the way to make one."""

    def __init__(
        self, settings: Settings, topology: Topology | None = None, *, memory: bool = False
    ) -> None:
        """``memory=True`` keeps the reservations in memory only, for unit tests."""
        topology = topology or Topology.from_settings(settings)
        self.pools: Mapping[str, NumberPool] = settings.call_number_pools
        self.window = timedelta(minutes=settings.call_pool_reservation_minutes)
        self.book = PoolBook()
        self._topic = topology.pool_reservations.name
        self.log: CompactedLog = (
            MemoryLog(self._apply, settings.retry_after_seconds)
            if memory
            else CompactedState(
                settings,
                [self._topic],
                self._apply,
                what="number reservations",
                client_id="tracker-beacon-numbers",
                topology=topology,
            )
        )
        self._busy: set[str] = set()  # numbers this instance is writing a new claim for
        self._inflight: dict[tuple[str, str], asyncio.Task[Reservation | None]] = {}

    @property
    def loaded(self) -> bool:
        return self.log.loaded

    def _apply(self, _topic: str, key: str, value: bytes | None) -> None:
        self.book.apply_record(key, value)

    async def reserve(
        self, pool: NumberPool, session_id: str, anonymous_id: str, campaign: Mapping[str, str]
    ) -> Reservation | None:
        """The session's reservation in ``pool``, new or extended; None when the pool is dry.

        Raises :class:`BackpressureError` when Kafka does not take it in time. Requests of one
        session on this instance share one attempt, so they get one number.
        """
        key = (pool.name, session_id)
        task = self._inflight.get(key)
        if task is None:
            task = asyncio.create_task(self._reserve(pool, session_id, anonymous_id, campaign))
            self._inflight[key] = task
            task.add_done_callback(lambda _: self._inflight.pop(key, None))
        return await asyncio.shield(task)

    async def _reserve(
        self, pool: NumberPool, session_id: str, anonymous_id: str, campaign: Mapping[str, str]
    ) -> Reservation | None:
        try:
            for _ in range(MAX_ATTEMPTS):
                now = datetime.now(UTC)
                record = self.book.plan(
                    pool, session_id, anonymous_id, campaign, now, self.window, self._busy
                )
                if record is None:
                    return None
                self._busy.add(record.number)
                try:
                    await self.log.write(self._topic, record.key, record.to_bytes())
                finally:
                    self._busy.discard(record.number)
                if self.book.holds(record):
                    CALL_POOL_RESERVATIONS.labels(
                        pool.name, "extended" if record.extends else "new"
                    ).inc()
                    return record
                # Another instance's record for this number came first in the log.
                CALL_POOL_RESERVATIONS.labels(pool.name, "lost_race").inc()
                await self._withdraw(record)
            raise BackpressureError("every free number was taken meanwhile; ask again", 1.0)
        finally:
            CALL_POOL_FREE.labels(pool.name).set(len(self.book.free(pool, datetime.now(UTC))))

    async def _withdraw(self, record: Reservation) -> None:
        """Take back a record that lost, so that compaction cannot later make it look as if it
        had won: a new claim is tombstoned; a refused extension is overwritten by its claim's
        last accepted state."""
        try:
            if not record.extends:
                await self.log.write(self._topic, record.key, None, wait=False)
            elif (last := self.book.claim(record.number, record.claim)) is not None:
                await self.log.write(self._topic, record.key, last.to_bytes(), wait=False)
        except BackpressureError as exc:
            log.warning("a lost reservation was not withdrawn", extra={"error": str(exc)})


_FIELDS: Final = ("pool", "anonymous_id", "session_id", "campaign")
Handler = Callable[[web.Request], Awaitable[web.Response]]


def numbers_handler(
    settings: Settings, publisher: Publisher, reservations: NumberReservations | None
) -> Handler:
    """``POST /v1/numbers``: reserve a number of a pool for a web session (docs/http-api.md)."""
    retry_after = settings.retry_after_seconds

    async def post_numbers(request: web.Request) -> web.Response:
        raw = await read_body(request, settings.max_body_bytes, settings.body_read_timeout_seconds)
        if isinstance(raw, web.Response):
            return raw
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            return json_error(400, f"body is not valid JSON: {exc}")
        if not isinstance(body, dict):
            return json_error(400, 'body must be a JSON object: {"pool": ..., "session_id": ...}')
        unknown = sorted(set(body) - set(_FIELDS))
        if unknown:
            return _invalid(
                [FieldError(name, "is not a field of this request") for name in unknown]
            )
        name = body.get("pool")
        if not isinstance(name, str) or not name:
            return _invalid([FieldError("pool", "is required: the name of a number pool")])
        pool = settings.call_number_pools.get(name)
        if pool is None:
            configured = ", ".join(sorted(settings.call_number_pools)) or "none"
            return json_error(404, f"no number pool named {name[:64]!r}; configured: {configured}")
        if not isinstance(body.get("session_id"), str) or not body["session_id"]:
            return _invalid([FieldError("session_id", "is required: the visit's session id")])
        try:
            dry_event = _dry_event(pool, body, datetime.now(UTC), settings)
        except ValidationError as exc:
            return _invalid(exc.errors)
        if reservations is None or not reservations.loaded:
            return json_error(
                503,
                "number reservations are still loading from Kafka",
                headers={"Retry-After": str(retry_after)},
                retry_after=retry_after,
            )
        try:
            reservation = await reservations.reserve(
                pool, dry_event.session_id, dry_event.anonymous_id, dry_event.campaign
            )
            if reservation is None:
                CALL_POOL_DRY.labels(pool.name).inc()
                log.warning("number pool is dry", extra={"pool": pool.name})
                await publisher.publish([dry_event])
        except BackpressureError as exc:
            retry = max(1, round(exc.retry_after))
            return json_error(503, str(exc), headers={"Retry-After": str(retry)}, retry_after=retry)
        if reservation is None:
            return json_response(
                {
                    "pool": pool.name,
                    **_formats(pool.fallback),
                    "reserved": False,
                    "reason": "pool_dry",
                }
            )
        return json_response(
            {
                "pool": pool.name,
                **_formats(reservation.number),
                "reserved": True,
                "expires_at": reservation.expires_at.isoformat().replace("+00:00", "Z"),
            }
        )

    return post_numbers


def _invalid(errors: list[FieldError]) -> web.Response:
    return json_error(
        400,
        "; ".join(f"{e.field}: {e.reason}" for e in errors),
        errors=[e.as_dict() for e in errors],
    )


def _formats(number: str) -> dict[str, str]:
    """The number as E.164 (for ``tel:`` links) and as people write it, nationally and abroad."""
    parsed = phonenumbers.parse(number)
    return {
        "number": number,
        "national": phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.NATIONAL),
        "international": phonenumbers.format_number(
            parsed, phonenumbers.PhoneNumberFormat.INTERNATIONAL
        ),
    }


def _dry_event(
    pool: NumberPool, body: dict[str, Any], received: datetime, settings: Settings
) -> Touchpoint:
    """The ``call_pool_dry`` event this request would raise. Building it also validates the
    request's ids and campaign by the touchpoint's own rules."""
    payload: dict[str, Any] = {
        "event_id": str(uuid.uuid5(POOL_DRY_NAMESPACE, f"{pool.name}:{body['session_id']}")),
        "type": "custom",
        "name": "call_pool_dry",
        "source": "server",
        "ts": received.isoformat(),
        "session_id": body["session_id"],
        "properties": {
            "pool": pool.name,
            "pool_size": str(len(pool.numbers)),
        },
    }
    if body.get("anonymous_id"):
        payload["anonymous_id"] = body["anonymous_id"]
    campaign = body.get("campaign")
    if isinstance(campaign, dict):
        campaign = {k: v for k, v in campaign.items() if v not in (None, "")}
    if campaign:
        payload["campaign"] = campaign
    touchpoint = accept(
        payload,
        RequestContext(
            source="server",
            received_ts=received,
            hash_salt=settings.hash_salt.value,
            previous_hash_salt=settings.hash_salt_previous.value,
            pii=settings.pii_rules,
            phone_region=settings.default_phone_region,
        ),
    )
    # The business's own configured number, set past the scrubbing that keeps people's out.
    touchpoint.properties["fallback_number"] = pool.fallback
    if not touchpoint.campaign:
        touchpoint.campaign = dict(pool.campaign)
    return touchpoint
