"""The pure parts of `tracker journey`: which touchpoints belong, and how a journey reads."""

from __future__ import annotations

import re
from dataclasses import replace
from datetime import UTC, datetime

import orjson
import pytest

from tracker.cli.journey import (
    Journey,
    TimelineEvent,
    belongs,
    render_json,
    render_text,
    stored_key,
)
from tracker.errors import TrackerError
from tracker.privacy import hash_identifier
from tracker.settings import Settings

T0 = datetime(2026, 11, 20, 9, 30, tzinfo=UTC)
HASH = "3f2a9c1b0d4e" + "7" * 52


def journey() -> Journey:
    return Journey(
        customer_id="c-1",
        identifiers={"email": [HASH], "anon": ["v-1", "v-2"]},
        merged_customer_ids=["c-0"],
        summary={
            "first_seen": T0,
            "last_seen": T0.replace(minute=35),
            "channels": ["email", "web"],
            "stage": "consideration",
            "stage_since": T0.replace(minute=35),
            "value": 49.9,
            "events": 2,
            "sessions": 1,
            "conversions": 1,
            "frictions": 1,
            "late_events": 0,
        },
        events=[
            TimelineEvent(
                "e1",
                T0,
                "page_view",
                "",
                "email",
                "web_beacon",
                "5b7e1f00aa",
                "awareness",
                None,
                "c-0",
            ),
            TimelineEvent(
                "e2",
                T0.replace(minute=35),
                "purchase",
                "order 7",
                "web",
                "server",
                "5b7e1f00aa",
                "purchase",
                49.9,
                "c-1",
                (("error_page", "low", "500"),),
            ),
        ],
    )


def test_text_shows_the_customer_then_one_line_an_event_in_order() -> None:
    text = render_text(journey())

    assert text.splitlines()[:3] == [
        "customer     c-1",
        "identifiers  anon: v-1, v-2",
        "             email: 3f2a9c1b0d4e…",
    ]
    assert "events       2 in 1 session" in text
    assert "conversions  1, value 49.9" in text
    assert "merged from  c-0" in text
    assert HASH not in text
    table = text.split("\n\n", 1)[1].splitlines()
    assert table[0].split() == [
        "time",
        "(UTC)",
        "type",
        "name",
        "channel/source",
        "session",
        "stage",
        "frictions",
    ]
    assert table[1].split() == [
        "2026-11-20",
        "09:30:00",
        "page_view",
        "-",
        "email/web_beacon",
        "5b7e1f00",
        "awareness",
        "-",
    ]
    assert re.split(r"\s{2,}", table[2])[-2:] == ["purchase", "error_page (low: 500)"]
    assert table[2].index("order 7") == table[0].index("name")  # columns line up


def test_text_before_the_journey_is_summarized_and_without_events() -> None:
    text = render_text(replace(journey(), summary=None, events=[]))

    assert "journey      not summarized yet" in text
    assert text.endswith("no touchpoints stored for this customer yet\n")


def test_json_keeps_identifiers_whole_and_times_in_rfc3339() -> None:
    answer = orjson.loads(render_json(journey()))

    assert answer["identifiers"]["email"] == [HASH]
    assert answer["journey"]["first_seen"] == "2026-11-20T09:30:00Z"
    assert [e["event_id"] for e in answer["timeline"]] == ["e1", "e2"]
    assert answer["timeline"][1]["frictions"] == [
        {"reason": "error_page", "severity": "low", "detail": "500"}
    ]


@pytest.mark.parametrize(
    ("identity_key", "stitched", "resolved", "expected"),
    [
        ("anon:v-1", "c-9", {}, True),  # one of the customer's identifiers: wherever stitched
        ("email:e", "c-0", {"email:e": "c-2"}, False),  # split away since
        ("email:e", "c-0", {"email:e": "c-1"}, True),
        ("", "c-0", {}, True),  # no identifier: stays where it was stitched
        ("", "c-5", {}, False),
        ("click:k", "c-1", {}, True),  # identities has not caught up yet
    ],
)
def test_a_touchpoint_belongs_where_its_identity_key_resolves(
    identity_key: str, stitched: str, resolved: dict[str, str], expected: bool
) -> None:
    keys = {"anon:v-1"}
    assert belongs(identity_key, stitched, "c-1", keys, {"c-1", "c-0"}, resolved) is expected


def test_stored_key_hashes_like_the_collectors_and_passes_crm_ids() -> None:
    settings = Settings.from_env({"TRACKER_HASH_SALT": "s"})

    assert stored_key("email: Ada@Example.com", settings) == "email:" + hash_identifier(
        "email", "ada@example.com", "s"
    )
    assert stored_key("crm:sf:0031", settings) == "crm:sf:0031"
    with pytest.raises(TrackerError, match="is not an email address"):
        stored_key("email:nope", settings)
    with pytest.raises(TrackerError, match="crm:<system>:<id>"):
        stored_key("crm:0031", settings)


def test_stored_key_refuses_to_guess_a_salt(tmp_path: object) -> None:
    settings = Settings.from_env({"TRACKER_DATA_DIR": str(tmp_path)})

    with pytest.raises(TrackerError, match="TRACKER_HASH_SALT"):
        stored_key("phone:+1 415 555 0100", settings)
    assert stored_key("user:42", settings) == "user:42"


def test_a_bare_email_or_phone_number_is_recognised_and_customer_ids_stay_as_typed() -> None:
    from tracker.cli.journey import typed_identifier

    assert typed_identifier("jane@example.com") == "email:jane@example.com"
    assert typed_identifier(" +14155550132 ") == "phone:+14155550132"
    assert typed_identifier("(415) 555-0132") == "phone:(415) 555-0132"
    assert typed_identifier("email:ada@example.com") == "email:ada@example.com"
    assert typed_identifier("1c9e5a0e-4d1b-5b8e-9f0a-2c6d1e7a3b40") == (
        "1c9e5a0e-4d1b-5b8e-9f0a-2c6d1e7a3b40"
    )
    assert typed_identifier("12345678-1234-5234-8234-123456789012") == (
        "12345678-1234-5234-8234-123456789012"  # a customer id of digits is no phone number
    )
    assert typed_identifier("42") == "42"
