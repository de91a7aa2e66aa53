"""Journey rules: sessions, stages, friction and conversions for one customer's events."""

from __future__ import annotations

import itertools
import uuid
from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from agents.journey import (
    FrictionRules,
    JourneyEvent,
    SessionRules,
    conversions,
    frictions,
    name_uuid,
    sessionize,
    stage_changes,
)

T0 = datetime(2026, 11, 20, 9, 0, tzinfo=UTC)
RULES = SessionRules()


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def web(event_id: str, minutes: float, path: str = "/", **fields: object) -> JourneyEvent:
    return JourneyEvent(
        event_id,
        at(minutes),
        "page_view",
        channel="web",
        source="web_beacon",
        page_path=path,
        **fields,
    )  # type: ignore[arg-type]


events_strategy = st.lists(
    st.builds(
        lambda i, minute: web(f"e{i}", minute),
        st.integers(0, 40),
        st.integers(0, 24 * 60),
    ),
    min_size=1,
    max_size=40,
    unique_by=lambda e: e.event_id,
)


@settings(max_examples=200, deadline=None)
@given(events_strategy, st.randoms(use_true_random=False), st.integers(0, 3))
def test_sessions_are_the_same_for_any_arrival_order_and_any_duplicates(
    events: list[JourneyEvent], rng, copies: int
) -> None:  # type: ignore[no-untyped-def]
    arrived = events + [rng.choice(events) for _ in range(copies * len(events) // 2)]
    rng.shuffle(arrived)
    assert sessionize("c1", arrived, RULES) == sessionize("c1", events, RULES)


@settings(max_examples=200, deadline=None)
@given(events_strategy)
def test_sessions_split_exactly_at_thirty_minutes_of_silence(events: list[JourneyEvent]) -> None:
    sessions = sessionize("c1", events, RULES)
    by_id = {e.event_id: e for e in events}
    assert sorted(i for s in sessions for i in s.event_ids) == sorted(by_id)
    for session in sessions:
        times = [by_id[i].ts for i in session.event_ids]
        assert all(b - a <= timedelta(minutes=30) for a, b in itertools.pairwise(times))
    for earlier, later in itertools.pairwise(sessions):
        assert later.start - earlier.end > timedelta(minutes=30)


def test_a_late_event_that_bridges_two_sessions_merges_them() -> None:
    before = sessionize("c1", [web("a", 0), web("b", 50)], RULES)
    after = sessionize("c1", [web("a", 0), web("b", 50), web("late", 25)], RULES)
    assert len(before) == 2 and len(after) == 1
    assert after[0].session_id == before[0].session_id  # the session that started first lives on


def test_optional_splits_on_campaign_change_and_midnight() -> None:
    events = [web("a", 0, campaign="spring"), web("b", 5, campaign="autumn"), web("c", 10)]
    assert len(sessionize("c1", events, RULES)) == 1
    assert len(sessionize("c1", events, SessionRules(split_on_campaign_change=True))) == 2
    late = [
        JourneyEvent("x", datetime(2026, 11, 20, 23, 50, tzinfo=UTC), "page_view"),
        JourneyEvent("y", datetime(2026, 11, 21, 0, 5, tzinfo=UTC), "page_view"),
    ]
    assert len(sessionize("c1", late, SessionRules(split_at_midnight=True))) == 2


def scenario() -> list[JourneyEvent]:
    """Email link click, anonymous browsing, identify, a call, a purchase, an abandoned support call, low NPS."""
    return [
        JourneyEvent(
            "click", at(0), "link_click", channel="email", source="shortlink", campaign="autumn"
        ),
        web("landing", 0.5, "/products/kettle", campaign="autumn"),
        web("pricing", 3, "/pricing"),
        JourneyEvent("signup", at(6), "form_submit", channel="web", source="web_beacon"),
        JourneyEvent(
            "sales-call",
            at(12),
            "call",
            channel="phone",
            source="call_webhook",
            queue="sales",
            disposition="answered",
            queue_wait_seconds=30,
        ),
        JourneyEvent("order", at(60 * 3), "purchase", channel="web", source="server", value=129.0),
        JourneyEvent(
            "support-call",
            at(60 * 30),
            "call",
            channel="phone",
            source="call_webhook",
            queue="support",
            disposition="abandoned",
            queue_wait_seconds=400,
        ),
        JourneyEvent("nps", at(60 * 31), "survey_response", channel="email", source="web_beacon"),
    ]


def test_the_scenario_reads_as_a_journey() -> None:
    events = scenario()
    sessions = sessionize("c1", events, RULES)
    assert [s.event_ids for s in sessions] == [
        ("click", "landing", "pricing", "signup", "sales-call"),
        ("order",),
        ("support-call",),
        ("nps",),
    ]
    assert [(c.stage, c.event_id) for c in stage_changes(events)] == [
        ("awareness", "click"),
        ("consideration", "landing"),
        ("purchase", "order"),
        ("support", "support-call"),
        ("post_purchase", "nps"),
    ]
    assert [(f.reason, f.severity, f.event_id) for f in frictions(events, sessions)] == [
        ("web_to_phone", "low", "sales-call"),
        ("abandoned_call", "high", "support-call"),
        ("long_queue_wait", "medium", "support-call"),
    ]
    assert [(c.name, c.value) for c in conversions(events)] == [("purchase", 129.0)]


def test_friction_thresholds_are_configurable() -> None:
    call = JourneyEvent(
        "c", at(0), "call", queue_wait_seconds=90, hold_seconds=200, transfers=2, cold_transfers=1
    )
    reasons = {f.reason for f in frictions([call], [])}
    assert reasons == {"long_hold", "cold_transfer", "many_transfers"}
    strict = FrictionRules(
        long_queue_wait=timedelta(seconds=60), long_hold=timedelta(minutes=10), transfers=3
    )
    assert {f.reason for f in frictions([call], [], strict)} == {"long_queue_wait", "cold_transfer"}


def test_repeat_contacts_bounces_errors_and_abandoned_checkouts() -> None:
    events = [
        JourneyEvent("call1", at(0), "call"),
        JourneyEvent("chat", at(60 * 20), "chat"),
        web("bounce", 60 * 48),
        web("oops", 60 * 72, "/account", status_code=500),
        web("checkout", 60 * 72 + 1, "/checkout"),
    ]
    found = [(f.reason, f.event_id) for f in frictions(events, sessionize("c1", events, RULES))]
    assert found == [
        ("repeat_contact", "chat"),
        ("bounce", "bounce"),
        ("error_page", "oops"),
        ("abandoned_checkout", "checkout"),
    ]


def test_the_funnel_never_moves_back_and_support_is_a_side_stage() -> None:
    events = [
        web("a", 0, "/pricing"),
        web("b", 1, "/blog"),
        web("c", 2, "/help/returns"),
        web("d", 3, "/blog"),
    ]
    assert [(c.stage, c.event_id) for c in stage_changes(events)] == [
        ("consideration", "a"),
        ("support", "c"),
        ("consideration", "d"),
    ]


def test_a_purchase_without_value_is_no_conversion() -> None:
    assert conversions([JourneyEvent("p", at(0), "purchase")]) == []


@given(st.uuids(), st.text())
def test_ids_made_from_names_are_the_standard_name_based_uuids(
    namespace: uuid.UUID, name: str
) -> None:
    # Session and friction ids already stored were made by uuid.uuid5: they must not change.
    assert name_uuid(namespace, name) == str(uuid.uuid5(namespace, name))
