"""Dynamic number pools: which web session holds which phone number, and when. Plain Python.

A pool is a set of phone numbers shown on web pages (``TRACKER_CALL_NUMBER_POOLS``). The beacon
reserves one for a web session; a call to that number while the reservation lasts belongs to that
session. Reservations live on a compacted Kafka topic with one partition, so every reader (each
beacon instance, each worker) applies them in the same order; :class:`PoolBook` is the state that
order builds, and the rules in :meth:`PoolBook.apply` are the arbiter of who holds a number.

A *claim* is one continuous hold of one number by one session. Its first record starts it; a
later record with the same claim id extends it (the session asked again). The topic's key is
``<pool>/<number>/<claim id>``, so compaction keeps the latest state of every claim, and with it
the history the worker needs to join a late call.

The rules, applied in log order to a record ``r`` for number ``n`` (holder: the claim that last
took ``n``):

1. ``r`` extends the holder's claim: accepted, the claim now ends later.
2. ``r`` belongs to a claim of ``n`` that was already superseded by another: rejected (its
   session's reservation had run out when another session took the number).
3. ``n`` has no holder, or the holder's claim ended by the time ``r``'s claim started: accepted,
   ``r``'s claim holds ``n``.
4. ``r``'s claim ended before the holder's started: kept as history only (a claim restored after
   compaction), it does not hold ``n``.
5. Otherwise two sessions want ``n`` at once: the later record is rejected.

Two beacon instances may pick the same free number at the same moment, each from its own view.
Both write; the log orders them; rule 5 rejects the second. Each writer reads its own record back
before it answers, sees the verdict every other reader will reach, and the loser withdraws its
record (a tombstone) and tries the next number.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import orjson

from tracker.bounds import parse_aware
from tracker.settings import CAMPAIGN_KEYS, NumberPool

__all__ = [
    "CAMPAIGN_KEYS",
    "START_GRACE",
    "NumberPool",
    "PoolBook",
    "Reservation",
]

# Providers stamp call times to the second, from clocks of their own: a call may seem to start a
# moment before the reservation whose number was dialled. Only when no window holds a call's start
# does a reservation starting this little after it claim the call.
START_GRACE: Final = timedelta(seconds=10)
_NEVER: Final = datetime.min.replace(tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Reservation:
    """One record of the reservations topic: a claim's state when it was written."""

    claim: str
    pool: str
    number: str
    session_id: str
    anonymous_id: str
    reserved_at: datetime  # when the claim started
    expires_at: datetime  # when it ends, unless extended again
    written_at: datetime  # when this record was written
    campaign: Mapping[str, str] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.pool}/{self.number}/{self.claim}"

    @property
    def extends(self) -> bool:
        """Whether this record extends a claim rather than starting it."""
        return self.written_at != self.reserved_at

    def covers(self, at: datetime) -> bool:
        return self.reserved_at <= at < self.expires_at

    def to_record(self) -> dict[str, Any]:
        return {
            "claim": self.claim,
            "pool": self.pool,
            "number": self.number,
            "session_id": self.session_id,
            "anonymous_id": self.anonymous_id,
            "campaign": dict(self.campaign),
            "reserved_at": self.reserved_at.isoformat(),
            "expires_at": self.expires_at.isoformat(),
            "written_at": self.written_at.isoformat(),
        }

    def to_bytes(self) -> bytes:
        return orjson.dumps(self.to_record())

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Reservation:
        """Raises ``KeyError``, ``TypeError`` or ``ValueError`` for a malformed record."""
        campaign = record.get("campaign") or {}
        if not isinstance(campaign, dict):
            raise TypeError("campaign must be an object")
        return cls(
            claim=str(record["claim"]),
            pool=str(record["pool"]),
            number=str(record["number"]),
            session_id=str(record["session_id"]),
            anonymous_id=str(record.get("anonymous_id") or ""),
            campaign={k: str(v) for k, v in campaign.items() if k in CAMPAIGN_KEYS and v},
            reserved_at=parse_aware(record["reserved_at"]),
            expires_at=parse_aware(record["expires_at"]),
            written_at=parse_aware(record["written_at"]),
        )


class PoolBook:
    """Every number's holder and claim history, built by applying the reservations topic in order.

    ``keep`` bounds the history: claims that ended longer ago than that are forgotten (the topic's
    retention is the same, so a restarted reader rebuilds the same history).
    """

    def __init__(self, keep: timedelta = timedelta(days=7)) -> None:
        self._keep = keep
        self._holders: dict[str, Reservation] = {}
        self._history: dict[str, dict[str, Reservation]] = {}  # number -> claim -> latest state
        self._sessions: dict[tuple[str, str], Reservation] = {}

    # -- reading the log ------------------------------------------------------------------------

    def apply_record(self, key: str, value: bytes | None) -> bool:
        """Apply one record of the topic (``None`` is a tombstone); True if it was accepted."""
        if value is None:
            self._withdraw(key)
            return False
        return self.apply(Reservation.from_record(orjson.loads(value)))

    def apply(self, record: Reservation) -> bool:
        number = record.number
        holder = self._holders.get(number)
        claims = self._history.setdefault(number, {})
        extends = holder is not None and holder.claim == record.claim  # rule 1
        if not extends:
            if record.claim in claims:
                return False  # rule 2: this claim was superseded
            if holder is not None and holder.expires_at > record.reserved_at:
                if record.expires_at <= holder.reserved_at:
                    claims[record.claim] = record  # rule 4: history only
                return False  # rule 5: a conflict; the earlier record holds the number
            # rule 3: the number is free for this claim
        claims[record.claim] = record
        self._holders[number] = record
        self._sessions[(record.pool, record.session_id)] = record
        self._prune(number, record.written_at)
        return True

    def _withdraw(self, key: str) -> None:
        """A tombstone: a claim withdrawn by its writer (it lost a race). Forget it entirely."""
        pool, _, rest = key.partition("/")
        number, _, claim = rest.rpartition("/")
        withdrawn = self._history.get(number, {}).pop(claim, None)
        if withdrawn is None:
            return
        if (held := self._holders.get(number)) is not None and held.claim == claim:
            del self._holders[number]
        session = (pool, withdrawn.session_id)
        if (latest := self._sessions.get(session)) is not None and latest.claim == claim:
            del self._sessions[session]

    def _prune(self, number: str, now: datetime) -> None:
        claims = self._history[number]
        if len(claims) < 64:
            return
        horizon = now - self._keep
        for claim in [c for c, r in claims.items() if r.expires_at < horizon]:
            del claims[claim]

    # -- questions ------------------------------------------------------------------------------

    def keys_held_by(self, anonymous_ids: Collection[str]) -> list[str]:
        """The topic keys of every claim made for one of ``anonymous_ids``: what forgetting
        those visitors tombstones (agents/forget.py)."""
        return sorted(
            r.key
            for claims in self._history.values()
            for r in claims.values()
            if r.anonymous_id in anonymous_ids
        )

    def holder(self, number: str) -> Reservation | None:
        return self._holders.get(number)

    def holds(self, record: Reservation) -> bool:
        """Whether ``record``'s claim holds its number: what a writer checks after reading back."""
        holder = self._holders.get(record.number)
        return holder is not None and holder.claim == record.claim

    def claim(self, number: str, claim: str) -> Reservation | None:
        """The latest accepted state of a claim."""
        return self._history.get(number, {}).get(claim)

    def attribute(self, number: str, at: datetime) -> Reservation | None:
        """The reservation of ``number`` whose window holds ``at``, else one starting at most
        :data:`START_GRACE` after ``at``; None when there is neither."""
        claims = self._history.get(number, {}).values()
        for record in claims:
            if record.covers(at):
                return record
        for record in claims:
            if at < record.reserved_at <= at + START_GRACE:
                return record
        return None

    def free(self, pool: NumberPool, now: datetime, busy: Iterable[str] = ()) -> list[str]:
        """The pool's numbers nobody holds at ``now``, least recently reserved first."""
        taken = set(busy)

        def last_reserved(number: str) -> tuple[datetime, str]:
            holder = self._holders.get(number)
            return (holder.expires_at if holder else _NEVER, number)

        free = [
            n
            for n in pool.numbers
            if n not in taken
            and ((holder := self._holders.get(n)) is None or holder.expires_at <= now)
        ]
        return sorted(free, key=last_reserved)

    def plan(
        self,
        pool: NumberPool,
        session_id: str,
        anonymous_id: str,
        campaign: Mapping[str, str],
        now: datetime,
        window: timedelta,
        busy: Iterable[str] = (),
    ) -> Reservation | None:
        """The record to write for a session asking for a number of ``pool``: an extension of its
        live claim, else a new claim on the least recently reserved free number; None when dry."""
        current = self._sessions.get((pool.name, session_id))
        if (
            current is not None
            and self.holds(current)
            and current.expires_at > now
            and current.number in pool.numbers
        ):
            return replace(current, expires_at=now + window, written_at=now)
        free = self.free(pool, now, busy)
        if not free:
            return None
        return Reservation(
            claim=uuid.uuid4().hex,
            pool=pool.name,
            number=free[0],
            session_id=session_id,
            anonymous_id=anonymous_id,
            campaign=dict(campaign or pool.campaign),
            reserved_at=now,
            expires_at=now + window,
            written_at=now,
        )
