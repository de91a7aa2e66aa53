"""Forgetting a person: the identifiers forgotten, and erasing what is stored under them.

A forget is recorded for good on the compacted ``privacy.forgotten`` topic first, so that events
still in Kafka, replays and new events carrying the identifier are dropped by ingest; then the
rows already stored are deleted. Plain Python; agents/worker.py wires it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from tracker.store import ClickHouseStore
from tracker.touchpoint import Touchpoint

__all__ = ["ERASED_COLUMNS", "Erasure", "ForgottenIdentifiers", "erase"]

# Where each kind of identifier is stored in `touchpoints`.
ERASED_COLUMNS = {
    "user": "user_id",
    "anon": "anonymous_id",
    "email": "email_hash",
    "phone": "phone_hash",
    "click": "click_id",
}


class ForgottenIdentifiers:
    """The identifier keys (``kind:value``) whose events are never stored again."""

    def __init__(self, keys: Iterable[str] = ()) -> None:
        self._keys = set(keys)

    def add(self, key: str) -> None:
        self._keys.add(key)

    def __contains__(self, key: object) -> bool:
        return key in self._keys

    def __len__(self) -> int:
        return len(self._keys)

    def forgets(self, touchpoint: Touchpoint) -> bool:
        return bool(self._keys) and not self._keys.isdisjoint(touchpoint.identifier_keys())


@dataclass(frozen=True, slots=True)
class Erasure:
    identifier: str
    touchpoints: int
    dead_letters: int


async def erase(store: ClickHouseStore, key: str) -> Erasure:
    """Delete the touchpoints stored under ``key`` (and, for a phone, the call records naming
    it; for an email, phone or user id, the ticket records of that requester), the identity records of it, and dead letters whose payload names it.

    Dead letters never hold a clear email or phone (the collectors redact them), so for those
    only touchpoints are searched.
    """
    kind, _, value = key.partition(":")
    column = ERASED_COLUMNS[kind]
    where = f"{column} = {{value:String}}"
    found = await store.query(f"SELECT count() FROM touchpoints WHERE {where}", {"value": value})
    touchpoints = int(found.rows[0][0])
    if touchpoints:
        await store.command_with(f"DELETE FROM touchpoints WHERE {where}", {"value": value})
        # and the copy ordered by identity key that journey lookups read
        await store.command_with(
            f"DELETE FROM touchpoints_by_customer WHERE {where}", {"value": value}
        )
    if kind == "phone":  # call records name both numbers, and hold their transcripts (0013)
        numbers = "caller_hash = {value:String} OR called_hash = {value:String}"
        found = await store.query(f"SELECT count() FROM calls WHERE {numbers}", {"value": value})
        if int(found.rows[0][0]):
            await store.command_with(f"DELETE FROM calls WHERE {numbers}", {"value": value})
    if kind in ("email", "phone", "user"):  # ticket records name their requester
        await store.command_with(f"DELETE FROM tickets WHERE {where}", {"value": value})
    # The identity graph's records of the identifier, and the links refused because of it.
    named_key = "identifier = {key:String}"
    found = await store.query(f"SELECT count() FROM identities WHERE {named_key}", {"key": key})
    if int(found.rows[0][0]):
        await store.command_with(f"DELETE FROM identities WHERE {named_key}", {"key": key})
    in_conflict = "left_identifier = {key:String} OR right_identifier = {key:String}"
    found = await store.query(
        f"SELECT count() FROM identity_conflicts WHERE {in_conflict}", {"key": key}
    )
    if int(found.rows[0][0]):
        await store.command_with(
            f"DELETE FROM identity_conflicts WHERE {in_conflict}", {"key": key}
        )
    dead_letters = 0
    if kind not in ("email", "phone"):
        # The payload is the event's JSON: match the value as a whole JSON string, not a part.
        named = "position(payload, concat('\"', {value:String}, '\"')) > 0"
        found = await store.query(
            f"SELECT count() FROM dead_letters WHERE {named}", {"value": value}
        )
        dead_letters = int(found.rows[0][0])
        if dead_letters:
            await store.command_with(f"DELETE FROM dead_letters WHERE {named}", {"value": value})
    return Erasure(key, touchpoints, dead_letters)
