"""Every provider's callback within documented bounds: what a signed sender may not send is a 400
with a reason and a dead letter, never a 200 the worker then chokes on, nor a 500."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import given, settings
from hypothesis import strategies as st
from twilio.request_validator import RequestValidator

from collectors.calls import create_app
from collectors.calls._common import (
    MAX_DEPTH,
    MAX_ITEMS,
    MAX_KEYS,
    MAX_STRING_LENGTH,
    Malformed,
    WebhookRequest,
    check_shape,
    epoch_time,
    iso_time,
    rfc2822_time,
    seconds,
)
from collectors.calls.records import MAX_ID_LENGTH, MAX_SECONDS, CallCallback
from tests.unit.test_call_webhooks import (
    ASTERISK_CDR,
    FREESWITCH_CDR,
    GENERIC_CALL,
    PUBLIC,
    TWILIO_COMPLETED,
    TWILIO_TOKEN,
    asterisk_headers,
    basic,
    generic_headers,
    settings_for,
    telnyx_event,
    telnyx_headers,
)
from tracker.kafka.producer import MemoryPublisher

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
REQUEST = WebhookRequest("POST", PUBLIC, {}, b"", NOW, timedelta(days=730))


@pytest.fixture
def publisher() -> MemoryPublisher:
    return MemoryPublisher()


@pytest.fixture
async def client(publisher: MemoryPublisher, tmp_path: Path) -> AsyncIterator[TestClient[Any, Any]]:
    async with TestClient(TestServer(create_app(settings_for(tmp_path), publisher))) as c:
        yield c


async def post_generic(client: TestClient[Any, Any], call: dict[str, Any]) -> tuple[int, Any]:
    body = orjson.dumps(call)
    response = await client.post("/v1/calls/generic", data=body, headers=generic_headers(body))
    return response.status, await response.json()


def fields_of(answer: dict[str, Any]) -> set[str]:
    assert answer["errors"] and all(e["reason"] for e in answer["errors"]), answer
    return {e["field"] for e in answer["errors"]}


async def test_a_generic_call_id_of_500000_characters_is_400_and_a_dead_letter(
    client: TestClient[Any, Any], publisher: MemoryPublisher
) -> None:
    status, answer = await post_generic(client, {**GENERIC_CALL, "call_id": "c" * 500_000})
    assert status == 400
    assert fields_of(answer) == {"call_id"}
    assert publisher.calls == []
    [letter] = publisher.dead_letters
    assert "call_id" in letter.reason and len(letter.payload) < 300_000


async def test_a_generic_call_id_just_over_the_bound_is_400_and_at_the_bound_is_kept(
    client: TestClient[Any, Any], publisher: MemoryPublisher
) -> None:
    over, answer = await post_generic(
        client, {**GENERIC_CALL, "call_id": "c" * (MAX_ID_LENGTH + 1)}
    )
    at, _ = await post_generic(client, {**GENERIC_CALL, "call_id": "c" * MAX_ID_LENGTH})
    assert (over, at) == (400, 200)
    assert fields_of(answer) == {"call_id"}
    assert [c.call_id for c in publisher.calls] == ["c" * MAX_ID_LENGTH]


@pytest.mark.parametrize(
    "timestamp",
    [
        "0001-01-01T00:00:00+14:00",
        "9999-12-31T23:59:59-14:00",
        "9999-06-01T00:00:00Z",
        " ",
        "1969-12-31T23:59:59Z",
        "2001-01-01T00:00:00Z",  # older than TRACKER_MAX_EVENT_AGE_DAYS
        "not a time",
    ],
)
async def test_a_generic_timestamp_outside_the_range_is_400_naming_it(
    client: TestClient[Any, Any], publisher: MemoryPublisher, timestamp: str
) -> None:
    status, answer = await post_generic(client, {**GENERIC_CALL, "timestamp": timestamp})
    assert status == 400
    assert fields_of(answer) == {"timestamp"}
    assert publisher.calls == [] and len(publisher.dead_letters) == 1


@pytest.mark.parametrize("name", ["started_at", "answered_at", "ended_at"])
async def test_every_generic_time_is_held_to_the_range(
    client: TestClient[Any, Any], name: str
) -> None:
    status, answer = await post_generic(client, {**GENERIC_CALL, name: "9999-12-31T23:59:59-14:00"})
    assert status == 400 and fields_of(answer) == {name}


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"agent": "a" * (MAX_ID_LENGTH + 1)}, "agent"),
        ({"queue": "q" * (MAX_ID_LENGTH + 1)}, "queue"),
        ({"leg_id": "l" * (MAX_ID_LENGTH + 1)}, "leg_id"),
        ({"talk_seconds": "inf"}, "talk_seconds"),
        ({"talk_seconds": "nan"}, "talk_seconds"),
        ({"talk_seconds": MAX_SECONDS + 1}, "talk_seconds"),
        ({"transfers": [{"id": f"t{i}"} for i in range(65)]}, "transfers"),
        ({"transfers": [{"id": "t" * (MAX_ID_LENGTH + 1)}]}, "transfers.0.id"),
        ({"transfers": [{"id": " "}]}, "transfers.0.id"),
        ({"extra": "x" * (MAX_STRING_LENGTH + 1)}, "extra"),
        ({"extra": {f"k{i}": 1 for i in range(MAX_KEYS + 1)}}, "extra"),
        ({"extra": list(range(MAX_ITEMS + 1))}, "extra"),
    ],
)
async def test_every_field_and_shape_of_a_generic_call_is_bounded(
    client: TestClient[Any, Any], change: dict[str, Any], field: str
) -> None:
    status, answer = await post_generic(client, {**GENERIC_CALL, **change})
    assert status == 400 and fields_of(answer) == {field}


async def test_a_payload_nested_1000_deep_is_400_not_a_recursion_error(
    client: TestClient[Any, Any],
) -> None:
    nested = b"[" * 1000 + b'"bottom"' + b"]" * 1000  # deeper than orjson.dumps would write
    body = b'{"call_id":"c1","status":"completed","timestamp":"2026-11-29T10:00:00Z","x":' + (
        nested + b"}"
    )
    response = await client.post("/v1/calls/generic", data=body, headers=generic_headers(body))
    assert response.status == 400
    assert (await response.json())["errors"][0]["reason"]


async def test_a_webhook_id_over_the_bound_is_400(client: TestClient[Any, Any]) -> None:
    body = orjson.dumps(GENERIC_CALL)
    headers = generic_headers(body, msg_id="m" * (MAX_ID_LENGTH + 1))
    response = await client.post("/v1/calls/generic", data=body, headers=headers)
    assert response.status == 400 and fields_of(await response.json()) == {"webhook-id"}


@pytest.mark.parametrize("stamp", ["9" * 400, "-" + "9" * 30, "1e400"])
async def test_an_absurd_signature_timestamp_is_401_not_500(
    client: TestClient[Any, Any], stamp: str
) -> None:
    body = orjson.dumps(GENERIC_CALL)
    headers = {**generic_headers(body), "webhook-timestamp": stamp}
    response = await client.post("/v1/calls/generic", data=body, headers=headers)
    assert response.status == 401


async def test_twilio_timestamp_in_year_9999_is_400(client: TestClient[Any, Any]) -> None:
    params = {**TWILIO_COMPLETED, "Timestamp": "Fri, 31 Dec 9999 23:59:59 -1400"}
    signature = RequestValidator(TWILIO_TOKEN).compute_signature(
        f"{PUBLIC}/v1/calls/twilio", params
    )
    response = await client.post(
        "/v1/calls/twilio", data=urlencode(params), headers={"X-Twilio-Signature": signature}
    )
    assert response.status == 400 and fields_of(await response.json()) == {"Timestamp"}


async def test_twilio_call_sid_over_the_bound_is_400(client: TestClient[Any, Any]) -> None:
    params = {**TWILIO_COMPLETED, "CallSid": "CA" + "1" * 500}
    signature = RequestValidator(TWILIO_TOKEN).compute_signature(
        f"{PUBLIC}/v1/calls/twilio", params
    )
    response = await client.post(
        "/v1/calls/twilio", data=urlencode(params), headers={"X-Twilio-Signature": signature}
    )
    assert response.status == 400 and fields_of(await response.json()) == {"CallSid"}


@pytest.mark.parametrize(
    ("occurred_at", "session"),
    [("9999-12-31T23:59:59-14:00", "s1"), ("2026-11-29T10:00:00Z", "s" * 300)],
)
async def test_telnyx_fields_are_named_by_their_path(
    client: TestClient[Any, Any], occurred_at: str, session: str
) -> None:
    event = telnyx_event("call.hangup", call_session_id=session)
    event["data"]["occurred_at"] = occurred_at
    body = orjson.dumps(event)
    response = await client.post("/v1/calls/telnyx", data=body, headers=telnyx_headers(body))
    expected = "data.occurred_at" if session == "s1" else "data.payload.call_session_id"
    assert response.status == 400 and fields_of(await response.json()) == {expected}


@pytest.mark.parametrize(
    ("name", "value"),
    [("start_epoch", "1e20"), ("start_uepoch", "-1"), ("end_epoch", "253402300800")],
)
async def test_freeswitch_epoch_times_outside_the_range_are_400(
    client: TestClient[Any, Any], name: str, value: str
) -> None:
    cdr = {**FREESWITCH_CDR, "variables": {**FREESWITCH_CDR["variables"], name: value}}  # type: ignore[dict-item]
    response = await client.post(
        "/v1/calls/freeswitch",
        data=orjson.dumps(cdr),
        headers={**basic("cdr", "cdr-password"), "Content-Type": "application/json"},
    )
    assert response.status == 400
    assert fields_of(await response.json()) == {f"variables.{name}"}


async def test_asterisk_start_beyond_the_range_is_400(client: TestClient[Any, Any]) -> None:
    body = orjson.dumps({**ASTERISK_CDR, "start": "0001-01-01T00:00:00+14:00"})
    response = await client.post("/v1/calls/asterisk", data=body, headers=asterisk_headers(body))
    assert response.status == 400 and fields_of(await response.json()) == {"start"}


def test_a_record_outside_the_bounds_is_refused_when_read_back() -> None:
    callback = CallCallback("generic", "c1", "m1", "completed", NOW, NOW)
    wire = callback.to_wire()
    with pytest.raises(ValueError, match="call_id"):
        CallCallback.from_wire({**wire, "call_id": "c" * 500_000})
    with pytest.raises(ValueError):
        CallCallback.from_wire({**wire, "event_ts": "0001-01-01T00:00:00+14:00"})
    assert CallCallback.from_wire(wire) == callback


@settings(max_examples=400, derandomize=True)
@given(st.text(max_size=60))
def test_time_parsers_answer_a_time_in_range_none_or_malformed(value: str) -> None:
    for parse in (
        lambda: iso_time({"t": value}, "t", REQUEST),
        lambda: rfc2822_time({"t": value}, "t", REQUEST),
        lambda: epoch_time({"t": value}, "t", REQUEST),
        lambda: epoch_time({"t": value}, "t", REQUEST, 1e6),
    ):
        try:
            parsed = parse()
        except Malformed as exc:
            assert exc.errors[0].field == "t" and exc.errors[0].reason
            continue
        if parsed is not None:
            assert parsed.tzinfo is not None
            assert datetime(1970, 1, 1, tzinfo=UTC) <= parsed <= NOW + timedelta(days=1)


@settings(max_examples=300, derandomize=True)
@given(st.one_of(st.text(max_size=30), st.floats(), st.integers(), st.booleans(), st.none()))
def test_seconds_are_finite_and_within_the_bound_or_malformed(value: object) -> None:
    try:
        number = seconds({"s": value}, "s")
    except Malformed as exc:
        assert exc.errors[0].field == "s"
        return
    assert number is None or 0 <= number <= MAX_SECONDS


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=30,
)


@settings(max_examples=300, derandomize=True)
@given(_JSON)
def test_check_shape_accepts_small_payloads(payload: object) -> None:
    check_shape(payload)


def test_check_shape_refuses_depth_beyond_the_bound_without_recursing() -> None:
    nested: Any = []
    for _ in range(100_000):
        nested = [nested]
    with pytest.raises(Malformed, match=f"more than {MAX_DEPTH} levels"):
        check_shape(nested)
