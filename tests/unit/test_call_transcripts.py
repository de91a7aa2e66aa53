"""Call transcripts: the topic matcher, redaction, the three modes, each provider's transcript
webhook signed its own way, and merging with the call in any order. No broker, no ClickHouse."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import given
from hypothesis import strategies as st
from twilio.request_validator import RequestValidator

from agents.calls import CallsPipeline, call_row, call_touchpoint, merge_callbacks
from agents.customer import StoredEvent, friction_id
from agents.ingest import RawMessage, enriched
from agents.journey import JourneyEvent, frictions
from agents.stitching import journey_event
from collectors.calls import create_app
from collectors.calls.records import CallCallback
from collectors.calls.transcripts import (
    REDACTED_NUMBER,
    TopicMatcher,
    TranscriptsOff,
    redact_transcript,
    transcript_callback,
)
from tests.conftest import scraped
from tests.unit.test_call_webhooks import (
    CUSTOMER,
    PUBLIC,
    TRACKING,
    TWILIO_TOKEN,
    generic_headers,
    settings_for,
    telnyx_event,
    telnyx_headers,
    vonage_token,
)
from tracker.errors import ConfigError
from tracker.kafka.producer import MemoryPublisher
from tracker.settings import CALL_TOPICS, Settings
from tracker.store.sink import MemorySink
from tracker.store.tables import CALLS

T0 = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)
CALL_SID = "CA2222222222222222222222222222222b"
TOPICS = {
    "cancel": ("cancel", "kündigen", "résilier"),
    "refund": ("refund", "money back"),
    "manager": ("speak to a manager",),
    "解約": ("解約",),
}

# -- matching ------------------------------------------------------------------------------------


def test_the_matcher_finds_whole_phrases_in_any_case_language_and_spacing() -> None:
    matcher = TopicMatcher(TOPICS)
    assert matcher.topics("Hi, I want to CANCEL my plan.") == ("cancel",)
    assert matcher.topics("Ich möchte KÜNDIGEN") == ("cancel",)
    assert matcher.topics("je veux RÉSILIER") == ("cancel",)
    assert matcher.topics("can I speak\n to  a   Manager, and get my money back") == (
        "manager",
        "refund",
    )
    assert matcher.topics("契約を解約したいです") == ("解約",)  # no spaces between words here
    assert matcher.topics("the cancellation policy, a refundable fee") == ()
    assert matcher.topics("") == ()


# Letters of scripts written with spaces, ß among them (its upper case is "SS").
LETTER = st.sampled_from("abcdefghijklmnopqrstuvwxyzäöüßéèçñøåαβγδεζηθλμπσωжшщыэюяё")  # noqa: RUF001
WORD = st.text(LETTER, min_size=1, max_size=8)
SPACE = st.sampled_from([" ", "  ", "\n", "\t", " \u00a0"])
PUNCTUATION = st.sampled_from([" ", "\n", ", ", ". ", "! ", "? ", " - ", " (", "\u3001"])


@given(
    words=st.lists(WORD, min_size=1, max_size=3),
    before=st.lists(WORD, max_size=3),
    after=st.lists(WORD, max_size=3),
    case=st.sampled_from([str.upper, str.lower, str.title, str.swapcase]),
    space=SPACE,
    edge=PUNCTUATION,
)
def test_a_phrase_is_found_whatever_its_case_spacing_and_surroundings(
    words: list[str],
    before: list[str],
    after: list[str],
    case: Any,
    space: str,
    edge: str,
) -> None:
    said = edge.join([*before, case(space.join(words)), *after])
    assert TopicMatcher({"topic": (" ".join(words),)}).topics(said) == ("topic",)


@given(words=st.lists(WORD, min_size=1, max_size=3), left=WORD, right=WORD, edge=st.integers(0, 2))
def test_a_phrase_inside_a_longer_word_is_not_found(
    words: list[str], left: str, right: str, edge: int
) -> None:
    phrase = " ".join(words)
    glued = [left + phrase + right, left + phrase, phrase + right][edge]
    assert TopicMatcher({"topic": (phrase,)}).topics(f"» {glued} «") == ()


# -- redaction and modes -------------------------------------------------------------------------


def test_redaction_removes_numbers_and_email_addresses_and_keeps_the_words() -> None:
    said = (
        "call me at +1 (415) 555-0132 or 415 555 0132, card 4111-1111-1111-1111, "
        "mail ada@example.com; order 12, since 2024"
    )
    redacted = redact_transcript(said)
    assert "555" not in redacted and "4111" not in redacted and "ada@" not in redacted
    assert redacted.count(REDACTED_NUMBER) == 3
    assert "order 12, since 2024" in redacted and "call me at" in redacted


def settings(tmp_path: Path, mode: str, **env: str) -> Settings:
    return settings_for(tmp_path, TRACKER_CALL_TRANSCRIPTS=mode, **env)


def transcript(s: Settings, said: str) -> CallCallback:
    return transcript_callback(
        s,
        provider="generic",
        call_id="call-1",
        callback_id="t1",
        texts=[said],
        event_ts=T0,
        received_ts=T0,
    )


def test_off_keeps_nothing_topics_keeps_flags_store_keeps_redacted_text(tmp_path: Path) -> None:
    said = "I want to cancel, call me on 415 555 0132"
    with pytest.raises(TranscriptsOff):
        transcript(settings(tmp_path, "off"), said)
    flags = transcript(settings(tmp_path, "topics"), said)
    assert (flags.topics, flags.transcript, flags.transcribed) == (("cancel",), "", True)
    assert "cancel" not in orjson.dumps(flags.to_wire()).decode().replace('"cancel"', "")
    kept = transcript(settings(tmp_path, "store"), said)
    assert kept.transcript == f"I want to cancel, call me on {REDACTED_NUMBER}"


def test_transcripts_are_off_by_default_and_the_settings_are_checked(tmp_path: Path) -> None:
    defaults = settings_for(tmp_path)
    assert defaults.call_transcripts == "off" and defaults.call_topics == dict(CALL_TOPICS)
    custom = settings(tmp_path, "topics", TRACKER_CALL_TOPICS='{"churn": ["kündigen"]}')
    assert custom.call_topics == {"churn": ("kündigen",)}
    for bad in ('{"a,b": ["x"]}', '{"churn": []}', '{"churn": [" "]}', "[]"):
        with pytest.raises(ConfigError, match="TRACKER_CALL_TOPICS"):
            settings(tmp_path, "topics", TRACKER_CALL_TOPICS=bad)
    with pytest.raises(ConfigError, match="TRACKER_CALL_TRANSCRIPTS"):
        settings(tmp_path, "always")


# -- the providers' webhooks ---------------------------------------------------------------------


@pytest.fixture
def publisher() -> MemoryPublisher:
    return MemoryPublisher()


async def client_for(
    s: Settings, publisher: MemoryPublisher
) -> AsyncIterator[TestClient[Any, Any]]:
    async with TestClient(TestServer(create_app(s, publisher))) as c:
        yield c


@pytest.fixture
async def store_client(
    publisher: MemoryPublisher, tmp_path: Path
) -> AsyncIterator[TestClient[Any, Any]]:
    topics = orjson.dumps(
        {
            "cancel": ["cancel", "kündigen"],
            "refund": ["refund", "money back"],
            "complaint": ["complaint"],
            "manager": ["speak to a manager", "mit einem Manager sprechen"],
        }
    ).decode()
    async for c in client_for(settings(tmp_path, "store", TRACKER_CALL_TOPICS=topics), publisher):
        yield c


TWILIO_TRANSCRIPTION = {
    "AccountSid": "AC0123456789abcdef0123456789abcdef",
    "ApiVersion": "2010-04-01",
    "CallSid": CALL_SID,
    "CallStatus": "completed",
    "From": CUSTOMER,
    "To": TRACKING,
    "RecordingSid": "RE0123456789abcdef0123456789abcdef",
    "RecordingUrl": "https://api.twilio.com/2010-04-01/Accounts/AC0/Recordings/RE0",
    "TranscriptionSid": "TR0123456789abcdef0123456789abcdef",
    "TranscriptionStatus": "completed",
    "TranscriptionText": "Hello, I want to cancel. My email is ada@example.com",
    "TranscriptionUrl": "https://api.twilio.com/2010-04-01/Accounts/AC0/Transcriptions/TR0",
}


def twilio_form(params: dict[str, str]) -> dict[str, Any]:
    signature = RequestValidator(TWILIO_TOKEN).compute_signature(
        f"{PUBLIC}/v1/calls/twilio", params
    )
    return {
        "data": urlencode(params),
        "headers": {
            "X-Twilio-Signature": signature,
            "Content-Type": "application/x-www-form-urlencoded",
        },
    }


async def test_twilio_transcription_callback_joins_its_call(
    store_client: TestClient[Any, Any], publisher: MemoryPublisher
) -> None:
    response = await store_client.post("/v1/calls/twilio", **twilio_form(TWILIO_TRANSCRIPTION))

    assert response.status == 200 and await response.json() == {"accepted": 1}
    [c] = publisher.calls
    assert (c.call_key, c.status, c.topics) == (f"twilio:{CALL_SID}", "updated", ("cancel",))
    assert c.transcript == "Hello, I want to cancel. My email is <redacted email>"
    # A transcription is not a call's progress: its CallStatus says nothing new.
    assert c.direction == "" and c.ended_at is None


async def test_twilio_transcription_that_failed_or_is_forged_lands_nothing(
    store_client: TestClient[Any, Any], publisher: MemoryPublisher
) -> None:
    failed = {**TWILIO_TRANSCRIPTION, "TranscriptionStatus": "failed", "TranscriptionText": ""}
    response = await store_client.post("/v1/calls/twilio", **twilio_form(failed))
    assert response.status == 200 and (await response.json())["accepted"] == 0

    forged = twilio_form(TWILIO_TRANSCRIPTION)
    forged["data"] = forged["data"].replace("cancel", "renew")
    response = await store_client.post("/v1/calls/twilio", **forged)
    assert response.status == 401 and publisher.calls == []


async def test_twilio_voice_intelligence_sentences_join_their_call_in_order(
    store_client: TestClient[Any, Any], publisher: MemoryPublisher
) -> None:
    transcript_sid = "GT" + "0" * 31 + "1"
    body = orjson.dumps(
        {
            "sentences": [
                {"sentence_index": 1, "media_channel": 2, "transcript": "I'd like a refund."},
                {"sentence_index": 0, "media_channel": 1, "transcript": "How can I help?"},
            ],
            "meta": {
                "page": 0,
                "url": f"https://intelligence.twilio.com/v2/Transcripts/{transcript_sid}/Sentences",
            },
        }
    )
    path = f"/v1/calls/twilio?CallSid={CALL_SID}&bodySHA256={hashlib.sha256(body).hexdigest()}"
    signature = RequestValidator(TWILIO_TOKEN).compute_signature(PUBLIC + path, {})
    headers = {"X-Twilio-Signature": signature, "Content-Type": "application/json"}

    response = await store_client.post(path, data=body, headers=headers)
    notice = orjson.dumps(
        {"transcript_sid": transcript_sid, "event_type": "voice_intelligence_transcript_available"}
    )
    notice_path = f"/v1/calls/twilio?bodySHA256={hashlib.sha256(notice).hexdigest()}"
    notice_headers = {
        "X-Twilio-Signature": RequestValidator(TWILIO_TOKEN).compute_signature(
            PUBLIC + notice_path, {}
        ),
        "Content-Type": "application/json",
    }
    ready = await store_client.post(notice_path, data=notice, headers=notice_headers)

    assert response.status == 200
    [c] = publisher.calls
    assert c.call_id == CALL_SID and c.callback_id == f"{CALL_SID}:sentences:{transcript_sid}:0"
    assert (c.transcript, c.topics) == ("How can I help? I'd like a refund.", ("refund",))
    assert ready.status == 200 and "sentences" in (await ready.json())["ignored"]


async def test_telnyx_final_transcription_joins_the_call_session(
    store_client: TestClient[Any, Any], publisher: MemoryPublisher
) -> None:
    final = orjson.dumps(
        telnyx_event(
            "call.transcription",
            transcription_data={
                "confidence": 0.97,
                "is_final": True,
                "transcript": "Kann ich bitte mit einem Manager sprechen? Ich will KÜNDIGEN.",
            },
        )
    )
    interim = final.replace(b'"is_final":true', b'"is_final":false')

    response = await store_client.post(
        "/v1/calls/telnyx", data=final, headers=telnyx_headers(final)
    )
    skipped = await store_client.post(
        "/v1/calls/telnyx", data=interim, headers=telnyx_headers(interim)
    )
    forged = await store_client.post(
        "/v1/calls/telnyx",
        data=final.replace(b"Manager", b"Freund"),
        headers=telnyx_headers(final),
    )

    assert response.status == 200 and skipped.status == 200 and forged.status == 401
    [c] = publisher.calls
    assert c.call_key == "telnyx:428c31b6-abf3-4bcb-b7f5-5013ef9657c1"
    assert c.topics == ("cancel", "manager") and c.event_ts == datetime(
        2026, 11, 22, 10, tzinfo=UTC
    )


async def test_vonage_speech_and_transcription_document_join_the_conversation(
    store_client: TestClient[Any, Any], publisher: MemoryPublisher
) -> None:
    conversation = "CON-f972836a-550f-45fa-956c-12a2ab5b7d22"
    speech = orjson.dumps(
        {
            "speech": {"results": [{"confidence": "0.9", "text": "I want my money back"}]},
            "dtmf": {"digits": None, "timed_out": False},
            "uuid": "aaaaaaaa-bbbb-cccc-dddd-0123456789ab",
            "conversation_uuid": conversation,
            "timestamp": "2026-11-22T10:00:03.000Z",
        }
    )
    document = orjson.dumps(
        {
            "conversation_uuid": conversation,
            "recording_uuid": "rec-1",
            "channels": [{"transcript": [{"sentence": "I will file a complaint"}]}],
        }
    )
    ready = orjson.dumps(
        {
            "conversation_uuid": conversation,
            "type": "transcription",
            "status": "transcribed",
            "transcription_url": "https://api.nexmo.com/v1/files/x",
        }
    )
    answers = []
    for body in (speech, document, ready):
        token = vonage_token(body)
        answers.append(
            await store_client.post(
                "/v1/calls/vonage",
                data=body,
                headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
            )
        )

    assert [a.status for a in answers] == [200, 200, 200]
    assert (await answers[2].json())["accepted"] == 0
    assert [(c.call_id, c.topics) for c in publisher.calls] == [
        (conversation, ("refund",)),
        (conversation, ("complaint",)),
    ]


async def test_generic_transcript_signed_with_standard_webhooks(
    store_client: TestClient[Any, Any], publisher: MemoryPublisher
) -> None:
    body = orjson.dumps(
        {"call_id": "call-77", "timestamp": "2026-11-22T10:10:00Z", "transcript": "cancel it"}
    )
    response = await store_client.post(
        "/v1/calls/generic", data=body, headers=generic_headers(body, msg_id="msg_t1")
    )
    not_text = orjson.dumps({"call_id": "c", "timestamp": "2026-11-22T10:10:00Z", "transcript": 7})
    bad = await store_client.post(
        "/v1/calls/generic", data=not_text, headers=generic_headers(not_text, msg_id="msg_t2")
    )

    assert response.status == 200
    [c] = publisher.calls
    assert (c.call_key, c.callback_id, c.topics) == ("generic:call-77", "msg_t1", ("cancel",))
    assert bad.status == 400 and "transcript" in (await bad.json())["error"]


async def test_with_transcripts_off_a_transcript_is_acknowledged_and_nothing_is_produced(
    publisher: MemoryPublisher, tmp_path: Path
) -> None:
    dropped = 'tracker_call_transcripts_total{outcome="off",provider="twilio"}'
    async for client in client_for(settings_for(tmp_path), publisher):
        before = await scraped(client, dropped)
        response = await client.post("/v1/calls/twilio", **twilio_form(TWILIO_TRANSCRIPTION))
        assert response.status == 200
        assert "TRACKER_CALL_TRANSCRIPTS" in (await response.json())["ignored"]
        assert await scraped(client, dropped) == before + 1
    assert publisher.calls == [] and publisher.dead_letters == []


# -- merging -------------------------------------------------------------------------------------


def call_callbacks() -> list[CallCallback]:
    def cb(callback_id: str, status: str, offset: float, **fields: Any) -> CallCallback:
        return CallCallback(
            provider="twilio",
            call_id=CALL_SID,
            callback_id=callback_id,
            status=status,
            event_ts=T0 + timedelta(seconds=offset),
            received_ts=T0 + timedelta(seconds=offset + 1),
            **fields,
        )

    return [
        cb("c1", "ringing", 0, direction="inbound", caller_hash="h-caller", queue="support"),
        cb("c2", "answered", 5),
        cb("c3", "completed", 125, talk_seconds=120.0),
        cb("t2", "updated", 300, transcribed=True, topics=("refund",), transcript="and a refund"),
        cb(
            "t1",
            "updated",
            130,
            transcribed=True,
            topics=("cancel",),
            transcript="I want to cancel",
        ),
    ]


def test_a_transcript_adds_topics_and_text_and_never_moves_the_call() -> None:
    without = merge_callbacks(call_callbacks()[:3])
    record = merge_callbacks(call_callbacks())
    assert (record.topics, record.transcribed) == (("cancel", "refund"), True)
    assert record.transcript == "I want to cancel\nand a refund"
    assert replace(record, topics=(), transcribed=False, transcript="", version=3) == without
    # A transcript alone (before any callback of the call) still gives a record; it never
    # places the call's start at the time the transcript was made, once the call is known.
    alone = merge_callbacks(call_callbacks()[3:])
    assert alone.topics == ("cancel", "refund") and alone.status == "updated"


def pipeline() -> tuple[CallsPipeline, MemorySink, MemorySink]:
    calls, touchpoints = MemorySink(), MemorySink()
    return CallsPipeline(calls, touchpoints, MemorySink(), {}), calls, touchpoints


@given(order=st.permutations(range(5)), cut=st.integers(0, 5))
async def test_transcript_before_or_after_the_calls_end_converges_to_one_record(
    order: list[int], cut: int
) -> None:
    """Callbacks in any order, in any two batches (the calls topic keeps one call's callbacks
    in order on its partition; a provider may still deliver them in any order)."""
    callbacks = [call_callbacks()[i] for i in order]
    messages = [
        RawMessage(orjson.dumps(c.to_wire()), "calls", 0, offset)
        for offset, c in enumerate(callbacks)
    ]
    stage, calls, _ = pipeline()
    state: dict[str, Any] = {}
    await stage.handle(messages[:cut], state)
    await stage.handle(messages[cut:], state)

    record = merge_callbacks(call_callbacks())
    latest = max(k for k in calls.rows if k[0] == record.event_id)
    row = CALLS.named(calls.rows[latest])
    assert (row["topics"], row["transcribed"], row["version"]) == (["cancel", "refund"], True, 5)
    assert row["transcript"] == "I want to cancel\nand a refund"
    assert row["status"] == "completed" and row["call_ts"] == T0


def test_the_call_touchpoint_carries_the_topics_and_never_the_text() -> None:
    touchpoint = call_touchpoint(merge_callbacks(call_callbacks()), {})
    assert touchpoint.properties["topics"] == "cancel,refund"
    assert "I want" not in orjson.dumps(touchpoint.properties).decode()


def test_each_flagged_topic_is_its_own_negative_call_topic_friction() -> None:
    event = JourneyEvent(
        "e-call", T0, "call", channel="phone", call_topics=("cancel", "refund"), queue="support"
    )
    found = [f for f in frictions([event], []) if f.reason == "negative_call_topic"]
    assert [(f.detail, f.event_id) for f in found] == [("cancel", "e-call"), ("refund", "e-call")]
    assert len({friction_id(f) for f in found}) == 2


def test_a_call_flagging_many_topics_lists_as_many_as_a_touchpoint_property_holds() -> None:
    many = tuple(f"topic-{i:02d}-" + "x" * 50 for i in range(64))
    record = replace(merge_callbacks(call_callbacks()), topics=many)
    listed = call_touchpoint(record, {}).properties["topics"]
    assert len(listed) <= 1024 and listed.split(",") == list(many[: len(listed.split(","))])
    assert CALLS.named(call_row(record, {}))["topics"] == list(many)


def test_a_calls_topics_survive_the_journey_state_so_a_restart_keeps_its_frictions() -> None:
    event = JourneyEvent("e-call", T0, "call", channel="phone", call_topics=("cancel",))
    stored = StoredEvent(event, 2, "phone:h")
    assert StoredEvent.from_state(stored.to_state()) == stored
    before_topics = stored.to_state()[:28]  # state written before call topics existed
    assert StoredEvent.from_state(before_topics).event.call_topics == ()


def test_the_journey_reads_a_call_touchpoints_topics() -> None:
    touchpoint = call_touchpoint(merge_callbacks(call_callbacks()), {})
    event = journey_event(enriched(touchpoint))
    assert event.call_topics == ("cancel", "refund")
    assert [f.detail for f in frictions([event], []) if f.reason == "negative_call_topic"] == [
        "cancel",
        "refund",
    ]
