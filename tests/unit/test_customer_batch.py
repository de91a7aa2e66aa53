"""A batch asks where all its events stand at once; the answer is the one-at-a-time answer."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from agents.customer import CustomerJourney, JourneyRules
from agents.journey import JourneyEvent

T0 = datetime(2026, 11, 20, 9, 0, tzinfo=UTC)
PAGES = ("/", "/pricing", "/support", "/checkout", "/blog")
TYPES = ("page_view", "page_view", "identify", "purchase", "call", "survey_response")

events_strategy = st.lists(
    st.builds(
        lambda i, minute, kind, path: JourneyEvent(
            f"e{i}",
            T0 + timedelta(minutes=minute),
            kind,
            channel="phone" if kind == "call" else "web",
            source="call_webhook" if kind == "call" else "web_beacon",
            page_path=path,
            queue="support" if kind == "call" else "",
            value=50.0 if kind == "purchase" else None,
            survey_kind="nps" if kind == "survey_response" else "",
            survey_score=9.0 if kind == "survey_response" else None,
        ),
        st.integers(0, 60),
        st.integers(0, 6 * 60),
        st.sampled_from(TYPES),
        st.sampled_from(PAGES),
    ),
    min_size=1,
    max_size=30,
    unique_by=lambda e: e.event_id,
)


@settings(max_examples=200, deadline=None)
@given(events_strategy, st.integers(4, 40))
def test_stitched_all_is_stitched_for_each_event(
    events: list[JourneyEvent], max_events: int
) -> None:
    # A small lateness and max_events bring in late events and folded history too.
    rules = JourneyRules(allowed_lateness=timedelta(minutes=45), max_events=max_events)
    journey = CustomerJourney("c1", rules)
    for event in events:
        journey.add(event, 0, "anon:a")
        journey.update()  # folds the oldest sessions into history beyond max_events
    assert journey.stitched_all() == {i: journey.stitched(i) for i in journey.events}


def test_one_event_stands_where_the_rules_say() -> None:
    journey = CustomerJourney("c1", JourneyRules())
    journey.add(JourneyEvent("e1", T0, "page_view", channel="web", page_path="/pricing"), 0, "a")
    stitched = journey.stitched_all()["e1"]
    assert stitched == journey.stitched("e1")
    assert (stitched.seq, stitched.stage) == (1, "consideration")
