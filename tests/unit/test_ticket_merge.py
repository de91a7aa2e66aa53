"""Merging a ticket's callbacks: any order, any retries, one record; its touchpoints, its CSAT
answer, and the frictions the journey rules see in it. Pure logic, in-memory sinks."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from agents.customer import rules_from_settings
from agents.forget import ForgottenIdentifiers
from agents.ingest import RawMessage, enriched
from agents.journey import FrictionRules, frictions, stage_changes
from agents.stitching import journey_event
from agents.tickets import (
    TicketsPipeline,
    csat_touchpoint,
    merge_callbacks,
    ticket_event_id,
    ticket_touchpoint,
)
from collectors.helpdesk.records import SupportCallback
from tracker.settings import Settings
from tracker.store.sink import MemorySink
from tracker.store.tables import TICKETS, TOUCHPOINTS

T0 = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)


def callback(callback_id: str, event: str, minutes: float, **fields: Any) -> SupportCallback:
    return SupportCallback(
        provider=fields.pop("provider", "zendesk"),
        kind=fields.pop("kind", "ticket"),
        ticket_id=fields.pop("ticket_id", "35436"),
        callback_id=callback_id,
        event=event,
        event_ts=T0 + timedelta(minutes=minutes),
        received_ts=T0 + timedelta(minutes=minutes, seconds=2),
        **fields,
    )


LIFECYCLE = [
    callback("z1", "opened", 0, email_hash="h-ada", via="email", status="new", opened_at=T0),
    callback("z2", "replied", 90, agent="agent-7", status="open"),
    callback("z3", "solved", 300, status="solved"),
    callback("z4", "customer_replied", 24 * 60, status="open"),  # the requester writes again
    callback("z5", "solved", 26 * 60, status="solved"),
    callback("z6", "rated", 26 * 60 + 5, rating=1.0, status="solved"),
]


def test_a_ticket_s_lifecycle_merges_to_the_record_people_expect() -> None:
    record = merge_callbacks(LIFECYCLE)
    assert record.version == 6
    assert (record.status, record.provider_status, record.reopens) == ("solved", "solved", 1)
    assert record.opened_at == T0
    assert record.first_reply_seconds == 90 * 60
    # Resolution runs to the last solve, after the reopen.
    assert record.resolution_seconds == 26 * 3600
    assert (record.email_hash, record.agent, record.via) == ("h-ada", "agent-7", "email")
    assert (record.rating, record.rated_at) == (1.0, T0 + timedelta(minutes=26 * 60 + 5))


def test_a_reopened_ticket_is_open_until_solved_again() -> None:
    record = merge_callbacks([*LIFECYCLE[:3], callback("r", "reopened", 400)])
    assert (record.status, record.solved_at, record.resolution_seconds) == ("open", None, None)
    assert record.reopens == 1


def test_the_provider_s_own_reopen_count_is_kept_when_it_knows_more() -> None:
    record = merge_callbacks([callback("i1", "opened", 0, reopens=3)])
    assert record.reopens == 3


@settings(max_examples=60, deadline=None)
@given(st.permutations(LIFECYCLE), st.lists(st.sampled_from(LIFECYCLE), max_size=6))
def test_any_order_and_any_retries_give_the_same_record(
    order: list[SupportCallback], retries: list[SupportCallback]
) -> None:
    assert merge_callbacks([*order, *retries]) == merge_callbacks(LIFECYCLE)


def test_the_ticket_touchpoint_and_its_csat_answer() -> None:
    record = merge_callbacks(LIFECYCLE)
    ticket = ticket_touchpoint(record)
    assert ticket.event_id == ticket_event_id("zendesk", "35436")
    assert (ticket.type, ticket.channel, ticket.source) == ("ticket", "helpdesk", "support_webhook")
    assert (ticket.ts, ticket.version, ticket.email_hash) == (T0, 6, "h-ada")
    assert ticket.properties["first_reply_seconds"] == "5400"
    assert ticket.properties["reopens"] == "1"
    csat = csat_touchpoint(record)
    assert csat is not None
    assert csat.type == "survey_response" and csat.channel == "helpdesk"
    assert csat.survey == {"kind": "csat", "score": 1.0, "touchpoint_id": ticket.event_id}
    assert csat.email_hash == "h-ada"
    row = TOUCHPOINTS.named(enriched(csat))
    assert (row["survey_kind"], row["survey_score"]) == ("csat", 1.0)
    assert row["survey_touchpoint_id"] == ticket.event_id
    assert csat_touchpoint(merge_callbacks(LIFECYCLE[:3])) is None


def test_a_chat_lands_on_the_chat_channel() -> None:
    chat = ticket_touchpoint(merge_callbacks([callback("c1", "opened", 0, kind="chat")]))
    assert (chat.type, chat.channel, chat.name) == ("chat", "chat", "chat open")


def _frictions(record_callbacks: list[SupportCallback], rules: FrictionRules) -> list[str]:
    touchpoint = ticket_touchpoint(merge_callbacks(record_callbacks))
    event = journey_event(enriched(touchpoint))
    return sorted(f.reason for f in frictions([event], [], rules))


def test_slow_first_reply_slow_resolution_and_reopens_are_frictions() -> None:
    assert _frictions(LIFECYCLE, FrictionRules()) == [
        "reopened",
        "slow_first_reply",
        "slow_resolution",
    ]
    # A quick ticket is none.
    quick = [LIFECYCLE[0], replace(LIFECYCLE[1], event_ts=T0 + timedelta(minutes=5))]
    assert _frictions(quick, FrictionRules()) == []


def test_friction_thresholds_come_from_the_settings() -> None:
    settings = Settings.from_env(
        {
            "TRACKER_FRICTION_THRESHOLDS": orjson.dumps(
                {
                    "ticket_first_reply_minutes": 120,
                    "ticket_resolution_hours": 48,
                    "reopens": 2,
                    "chat_first_reply_seconds": 30,
                }
            ).decode()
        }
    )
    rules = rules_from_settings(settings).frictions
    assert _frictions(LIFECYCLE, rules) == []
    # A chat answered after a minute is slow by the chat's own threshold.
    chat = [
        callback("c1", "opened", 0, kind="chat"),
        callback("c2", "replied", 1, kind="chat"),
    ]
    assert _frictions(chat, rules) == ["slow_first_reply"]
    assert _frictions(chat, FrictionRules()) == []


def _messages(callbacks: list[SupportCallback]) -> list[RawMessage]:
    return [
        RawMessage(orjson.dumps(c.to_wire()), "helpdesk.callbacks", 0, offset)
        for offset, c in enumerate(callbacks)
    ]


def _pipeline(forgotten: ForgottenIdentifiers | None = None) -> TicketsPipeline:
    return TicketsPipeline(MemorySink(), MemorySink(), MemorySink(), forgotten)


async def test_the_pipeline_writes_each_version_once_and_a_replay_changes_nothing() -> None:
    pipeline = _pipeline()
    state: dict[str, Any] = {}
    await pipeline.handle(_messages(LIFECYCLE[:2]), state)
    await pipeline.handle(_messages(LIFECYCLE[2:]), state)
    tickets, touchpoints = pipeline.tickets, pipeline.touchpoints
    assert isinstance(tickets, MemorySink) and isinstance(touchpoints, MemorySink)
    versions = sorted(v for (_, v) in tickets.rows)
    assert versions == [2, 6]
    row = tickets.rows[(ticket_event_id("zendesk", "35436"), 6)]
    latest = TICKETS.named(row)
    assert (latest["status"], latest["reopens"], latest["rating"]) == ("solved", 1, 1.0)
    written = len(tickets.added), len(touchpoints.added)

    await pipeline.handle(_messages(LIFECYCLE), state)  # the provider retries every callback

    assert (len(tickets.added), len(touchpoints.added)) == written
    assert list(state) == ["zendesk:35436"] and len(state["zendesk:35436"]) == 6


async def test_a_malformed_record_is_a_dead_letter_and_its_batch_mates_go_on() -> None:
    pipeline = _pipeline()
    bad = RawMessage(b'{"provider": "zendesk"}', "helpdesk.callbacks", 0, 99)
    await pipeline.handle([bad, *_messages(LIFECYCLE[:1])], {})
    dead, tickets = pipeline.dead_letters, pipeline.tickets
    assert isinstance(dead, MemorySink) and isinstance(tickets, MemorySink)
    assert len(dead.rows) == 1 and len(tickets.rows) == 1


async def test_a_forgotten_requester_s_tickets_are_not_stored_again() -> None:
    pipeline = _pipeline(ForgottenIdentifiers(["email:h-ada"]))
    await pipeline.handle(_messages(LIFECYCLE), {})
    tickets, touchpoints = pipeline.tickets, pipeline.touchpoints
    assert isinstance(tickets, MemorySink) and isinstance(touchpoints, MemorySink)
    assert not tickets.rows and not touchpoints.rows


def test_callbacks_survive_their_wire_form() -> None:
    for c in LIFECYCLE:
        assert SupportCallback.from_wire(orjson.loads(orjson.dumps(c.to_wire()))) == c


def test_tickets_and_chats_put_the_customer_in_the_support_stage_whatever_their_queue() -> None:
    for kind in ("ticket", "chat"):
        record = merge_callbacks([callback("s1", "opened", 0, kind=kind, queue="Billing")])
        event = journey_event(enriched(ticket_touchpoint(record)))
        assert [c.stage for c in stage_changes([event])] == ["support"]
