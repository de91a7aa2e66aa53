"""Every field of the touchpoint is bounded at accept time, with the field named in the refusal."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tracker.errors import ValidationError
from tracker.touchpoint import MAX_EVENT_BYTES, RequestContext, accept

RECEIVED = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)
CONTEXT = RequestContext(
    source="web_beacon", received_ts=RECEIVED, user_agent="UA/1", hash_salt="salt"
)


def event(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "event_id": "0b8f3c2e-5d7a-4e1b-9c3f-2a6d8e4f1b7c",
        "type": "page_view",
        "ts": "2026-11-22T09:59:00Z",
    }
    base.update(fields)
    return base


def refused_fields(payload: Any, context: RequestContext = CONTEXT) -> list[str]:
    with pytest.raises(ValidationError) as caught:
        accept(payload, context)
    assert all(e.reason for e in caught.value.errors)
    return [e.field for e in caught.value.errors]


def nested(path: str, value: Any) -> dict[str, Any]:
    """An event with ``value`` at the dotted ``path``."""
    head, _, rest = path.partition(".")
    return event(**{head: {rest: value} if rest else value})


# (dotted field, its longest accepted length, a character that keeps the value otherwise valid)
STRING_LIMITS = [
    ("name", 256),
    ("anonymous_id", 128),
    ("session_id", 128),
    ("click_id", 128),
    ("user_id", 256),
    ("page.url", 4096),
    ("page.referrer", 4096),
    ("page.title", 256),
    ("campaign.source", 256),
    ("campaign.medium", 256),
    ("campaign.name", 256),
    ("campaign.term", 256),
    ("campaign.content", 256),
    ("ad_click_ids.gclid", 256),
    ("properties.plan", 1024),
    ("context.user_agent", 1024),
    ("context.locale", 35),
    ("context.timezone", 64),
    ("context.library", 256),
]


@pytest.mark.parametrize(("path", "limit"), STRING_LIMITS)
@settings(max_examples=25, deadline=None)
@given(extra=st.integers(min_value=1, max_value=5000), char=st.sampled_from("aZ9-é😀"))
def test_any_string_over_its_limit_is_refused_with_that_field_named(
    path: str, limit: int, extra: int, char: str
) -> None:
    assert refused_fields(nested(path, char * (limit + extra))) == [path]


@pytest.mark.parametrize(("path", "limit"), STRING_LIMITS)
def test_a_string_at_its_limit_is_accepted(path: str, limit: int) -> None:
    accept(nested(path, "a" * limit), CONTEXT)


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        (event(email="a@" + "b" * 320 + ".com"), "email"),
        (event(phone="1" * 65), "phone"),
        (event(survey={"kind": "nps", "score": 9, "comment": "x" * 4097}), "survey.comment"),
        (event(type="t" * 65), "type"),
        (event(channel="c" * 33), "channel"),
        (event(ts="2026-11-22T09:59:00" + "0" * 40 + "Z"), "ts"),
    ],
)
def test_other_strings_over_their_limits_are_refused(payload: dict[str, Any], field: str) -> None:
    assert refused_fields(payload) == [field]


def test_maps_are_bounded_in_entries_and_key_length() -> None:
    assert refused_fields(event(properties={str(i): "v" for i in range(51)})) == ["properties"]
    accept(event(properties={str(i): "v" for i in range(50)}), CONTEXT)
    assert refused_fields(event(properties={"k" * 129: "v"})) == ["properties"]
    assert refused_fields(event(ad_click_ids={f"id{i}": "v" for i in range(17)})) == [
        "ad_click_ids"
    ]


def test_an_event_over_32_kib_is_refused_as_a_whole() -> None:
    # Every field within its own limit, the sum over the event's.
    properties = {f"k{i}": "v" * 1024 for i in range(40)}
    with pytest.raises(ValidationError) as caught:
        accept(event(properties=properties), CONTEXT)
    (error,) = caught.value.errors
    assert error.field == "$" and str(MAX_EVENT_BYTES) in error.reason


def test_the_user_agent_header_is_held_to_the_schema_limit() -> None:
    context = RequestContext(source="web_beacon", received_ts=RECEIVED, user_agent="U" * 9000)
    assert accept(event(), context).context["user_agent"] == "U" * 1024


def test_the_nil_uuid_is_refused_as_an_event_id() -> None:
    with pytest.raises(ValidationError) as caught:
        accept(event(event_id="00000000-0000-0000-0000-000000000000"), CONTEXT)
    assert caught.value.errors[0].field == "event_id"
    assert "nil UUID" in caught.value.errors[0].reason


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"ts": "0001-01-01T00:00:00+14:00"}, "ts"),
        ({"ts": "9999-12-31T23:59:59-14:00"}, "ts"),
        ({"ts": "0001-01-01T00:00:00Z"}, "ts"),
        ({"ts": "9999-12-31T23:59:59Z"}, "ts"),
        ({"sent_ts": "9999-12-31T23:59:59Z"}, "sent_ts"),
        ({"sent_ts": "9999-12-31T23:59:59-14:00"}, "sent_ts"),
        ({"ts": "1971-03-01T00:00:00Z"}, "ts"),
        ({"ts": "1899-12-31T23:59:59Z"}, "ts"),
        ({"ts": "1000-01-01T00:00:00Z"}, "ts"),
        ({"ts": "1899-12-31T23:59:59Z", "sent_ts": "1899-12-31T23:59:59Z"}, "ts"),
        # Waited 40 years on the device, by its own clock.
        ({"ts": "1980-01-01T00:00:00Z", "sent_ts": "2020-01-01T00:00:00Z"}, "ts"),
    ],
)
def test_timestamps_outside_the_range_are_refused_before_any_arithmetic(
    fields: dict[str, str], field: str
) -> None:
    assert field in refused_fields(event(**fields))


def test_the_max_event_age_is_enforced() -> None:
    context = RequestContext(
        source="web_beacon", received_ts=RECEIVED, max_event_age=timedelta(days=7)
    )
    accept(event(ts="2026-11-16T10:00:00Z"), context)
    with pytest.raises(ValidationError) as caught:
        accept(event(ts="2026-11-14T10:00:00Z"), context)
    assert caught.value.errors[0].field == "ts"
    assert "TRACKER_MAX_EVENT_AGE_DAYS" in caught.value.errors[0].reason


def test_a_device_clock_years_behind_is_still_corrected_with_sent_ts() -> None:
    touchpoint = accept(event(ts="1975-01-01T00:00:00Z", sent_ts="1975-01-01T00:00:30Z"), CONTEXT)
    assert touchpoint.ts == RECEIVED - timedelta(seconds=30)
    assert touchpoint.device_ts == datetime(1975, 1, 1, tzinfo=UTC)


offsets = st.builds(
    lambda sign, h, m: f"{sign}{h:02d}:{m:02d}",
    st.sampled_from("+-"),
    st.integers(0, 23),
    st.integers(0, 59),
)
timestamps = st.builds(
    lambda dt, offset: dt.isoformat(timespec="seconds") + offset,
    st.datetimes(),
    st.one_of(st.just("Z"), offsets),
)


@settings(max_examples=500, deadline=None)
@given(ts=timestamps, sent_ts=st.none() | timestamps)
def test_any_timestamp_is_either_accepted_in_range_or_refused_with_a_reason(
    ts: str, sent_ts: str | None
) -> None:
    fields = {"ts": ts} if sent_ts is None else {"ts": ts, "sent_ts": sent_ts}
    try:
        touchpoint = accept(event(**fields), CONTEXT)
    except ValidationError as exc:
        assert {e.field for e in exc.errors} <= {"ts", "sent_ts"}
        return
    assert RECEIVED - CONTEXT.max_event_age <= touchpoint.ts <= RECEIVED + timedelta(hours=24)
