from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tracker.errors import ValidationError
from tracker.privacy import hash_identifier
from tracker.touchpoint import RequestContext, Touchpoint, accept

RECEIVED = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)
CONTEXT = RequestContext(
    source="web_beacon",
    received_ts=RECEIVED,
    ip="203.0.113.77",
    user_agent="UA/1",
    hash_salt="salt",
)


def event(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "event_id": "0b8f3c2e-5d7a-4e1b-9c3f-2a6d8e4f1b7c",
        "type": "page_view",
        "ts": "2026-11-22T09:59:00Z",
    }
    base.update(fields)
    return base


def rejection(payload: Any) -> list[tuple[str, str]]:
    with pytest.raises(ValidationError) as caught:
        accept(payload, CONTEXT)
    return [(e.field, e.reason) for e in caught.value.errors]


def test_minimal_event_gets_defaults_from_the_collector() -> None:
    touchpoint = accept(event(), CONTEXT)
    assert touchpoint.name == "page_view"
    assert touchpoint.source == "web_beacon"
    assert touchpoint.received_ts == RECEIVED
    assert touchpoint.context == {"user_agent": "UA/1", "ip": "203.0.113.0"}


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        ({"type": "page_view", "ts": "2026-11-22T09:59:00Z"}, [("event_id", "is required")]),
        (
            event(event_id="42"),
            [
                (
                    "event_id",
                    "must be a UUID made by the client, e.g. 0b8f3c2e-5d7a-4e1b-9c3f-2a6d8e4f1b7c",
                )
            ],
        ),
        (event(page={"url": 7}), [("page.url", "must be string")]),
        (event(pgae={}), [("pgae", "is not a touchpoint field; see docs/touchpoint.md")]),
        (
            event(page={"uri": "x"}),
            [("page.uri", "is not a touchpoint field; see docs/touchpoint.md")],
        ),
        (
            event(source="fax"),
            [
                (
                    "source",
                    "must be one of ['web_beacon', 'shortlink', 'call_webhook', 'email_webhook', 'server']",
                )
            ],
        ),
        (
            event(ts="2026-11-22T09:59:00"),
            [("ts", "must carry a UTC offset, such as a trailing Z")],
        ),
        (
            event(ts="soon"),
            [("ts", "must be an RFC 3339 timestamp such as 2026-11-22T10:00:00Z, got 'soon'")],
        ),
        (
            event(survey={"kind": "nps", "score": 11}),
            [("survey.score", "must be smaller than or equal to 10")],
        ),
        (
            event(survey={"kind": "csat", "score": 0}),
            [("survey.score", "must be bigger than or equal to 1")],
        ),
        (event(email="not-an-address"), [("email", "is not an email address")]),
        (event(phone="call me"), [("phone", "is not a phone number")]),
        (event(phone="+1 555"), [("phone", "is not a possible phone number")]),
        ([1, 2], [("$", "an event must be a JSON object")]),
    ],
)
def test_rejections_name_the_field_and_the_reason(
    payload: Any, expected: list[tuple[str, str]]
) -> None:
    assert rejection(payload) == expected


def test_every_survey_scale_accepts_its_own_range() -> None:
    for kind, low, high in (("nps", 0, 10), ("csat", 1, 5), ("ces", 1, 7)):
        for score in (low, high):
            assert (
                accept(event(survey={"kind": kind, "score": score}), CONTEXT).survey["score"]
                == score
            )


def test_device_clock_skew_is_corrected_with_sent_ts() -> None:
    # The device clock runs two hours fast; the event happened 30 s before the batch was sent.
    touchpoint = accept(event(ts="2026-11-22T11:59:30Z", sent_ts="2026-11-22T12:00:00Z"), CONTEXT)
    assert touchpoint.ts == RECEIVED - timedelta(seconds=30)
    assert touchpoint.device_ts == datetime(2026, 11, 22, 11, 59, 30, tzinfo=UTC)


def test_sent_before_the_event_is_rejected() -> None:
    assert (
        rejection(event(ts="2026-11-22T09:59:00Z", sent_ts="2026-11-22T09:58:00Z"))[0][0]
        == "sent_ts"
    )


def test_event_far_in_the_future_is_rejected() -> None:
    assert rejection(event(ts="2026-11-24T10:00:00Z"))[0] == (
        "ts",
        "must not be more than 24 hours ahead of the server's clock",
    )


def test_offsets_are_converted_to_utc() -> None:
    touchpoint = accept(event(ts="2026-11-22T10:59:00+01:00"), CONTEXT)
    assert touchpoint.ts == datetime(2026, 11, 22, 9, 59, tzinfo=UTC)


def test_email_and_phone_are_only_kept_as_salted_hashes() -> None:
    touchpoint = accept(event(email=" Ada@Example.COM ", phone="(415) 555-0100"), CONTEXT)
    assert touchpoint.email_hash == hash_identifier("email", "ada@example.com", "salt")
    assert touchpoint.phone_hash == hash_identifier("phone", "+14155550100", "salt")
    wire = str(touchpoint.to_wire())
    assert "ada@example.com" not in wire.lower() and "555" not in wire


def test_without_analytics_consent_nothing_ties_the_event_to_a_person() -> None:
    touchpoint = accept(
        event(
            anonymous_id="a1",
            user_id="u1",
            email="ada@example.com",
            click_id="c1",
            ad_click_ids={"gclid": "g"},
            consent={"analytics": False},
        ),
        CONTEXT,
    )
    assert (touchpoint.anonymous_id, touchpoint.user_id, touchpoint.email_hash) == ("", "", "")
    assert touchpoint.click_id == "" and touchpoint.ad_click_ids == {}
    assert "ip" not in touchpoint.context
    assert touchpoint.identity_hint == f"event:{touchpoint.event_id}"


def test_without_analytics_consent_ad_click_ids_leave_the_urls_too() -> None:
    touchpoint = accept(
        event(
            page={
                "url": "https://shop.example/?utm_source=g&gclid=abc&fbclid=def",
                "referrer": "https://r.example/?msclkid=x",
            },
            consent={"analytics": False},
        ),
        CONTEXT,
    )
    assert touchpoint.page == {
        "url": "https://shop.example/?utm_source=g",
        "referrer": "https://r.example/",
    }


def test_identity_hint_prefers_the_strongest_identifier() -> None:
    assert accept(event(anonymous_id="a1", user_id="u1"), CONTEXT).identity_hint == "user:u1"
    assert accept(event(anonymous_id="a1"), CONTEXT).identity_hint == "anon:a1"


def test_wire_form_round_trips() -> None:
    touchpoint = accept(
        event(
            sent_ts="2026-11-22T09:59:30Z",
            anonymous_id="a1",
            page={"url": "https://x.example/", "title": "X"},
            campaign={"source": "news"},
            properties={"plan": "pro"},
            value=12.5,
            currency="EUR",
            survey={"kind": "ces", "score": 3},
            consent={"analytics": True, "marketing": False},
        ),
        CONTEXT,
    )
    assert Touchpoint.from_wire(touchpoint.to_wire()) == touchpoint


def test_event_ids_are_case_insensitive() -> None:
    upper = accept(event(event_id="0B8F3C2E-5D7A-4E1B-9C3F-2A6D8E4F1B7C"), CONTEXT)
    assert upper.event_id == "0b8f3c2e-5d7a-4e1b-9c3f-2a6d8e4f1b7c"
