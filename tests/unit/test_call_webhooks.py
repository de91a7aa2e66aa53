"""The calls collector: each provider's authentication, checked with the provider's own signing
code where one exists, and what a verified callback becomes. Kafka is an in-memory publisher."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import jwt
import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from plivo.utils.signature_v3 import construct_post_url, get_signature_v3, validate_v3_signature
from standardwebhooks import Webhook
from twilio.request_validator import RequestValidator
from vonage_jwt.verify_jwt import verify_signature

from collectors.calls import PROVIDERS, create_app
from collectors.calls._common import WebhookRequest
from collectors.calls.records import CallCallback, hash_number
from tests.conftest import scraped
from tracker.kafka.producer import MemoryPublisher
from tracker.settings import Settings

PUBLIC = "https://calls.example.com"
SALT = "test-salt"
TWILIO_TOKEN = "12345678901234567890123456789012"
VONAGE_SECRET = "vonage-signature-secret-0123456789abcdef"
PLIVO_TOKEN = "MzY1ZGQ5ZWUtZmQ2Ni00ZjVhLWE1ZGUt"
ASTERISK_SECRET = "asterisk-shipper-secret"
GENERIC_SECRET = "whsec_" + base64.b64encode(b"generic-webhook-secret-32-bytes!").decode()
TELNYX_KEY = Ed25519PrivateKey.generate()
TELNYX_PUBLIC = base64.b64encode(
    TELNYX_KEY.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
).decode()
CUSTOMER, TRACKING = "+14155550132", "+18005550100"


def settings_for(tmp_path: Path, **overrides: str) -> Settings:
    env = {
        "TRACKER_DATA_DIR": str(tmp_path),
        "TRACKER_HASH_SALT": SALT,
        "TRACKER_CALLS_PUBLIC_URL": PUBLIC,
        "TRACKER_TWILIO_AUTH_TOKEN": TWILIO_TOKEN,
        "TRACKER_VONAGE_SIGNATURE_SECRET": VONAGE_SECRET,
        "TRACKER_TELNYX_PUBLIC_KEY": TELNYX_PUBLIC,
        "TRACKER_PLIVO_AUTH_TOKEN": PLIVO_TOKEN,
        "TRACKER_FREESWITCH_USERNAME": "cdr",
        "TRACKER_FREESWITCH_PASSWORD": "cdr-password",
        "TRACKER_ASTERISK_SIGNING_SECRET": ASTERISK_SECRET,
        "TRACKER_GENERIC_WEBHOOK_SECRET": GENERIC_SECRET,
    }
    env.update(overrides)
    return Settings.from_env(env)


@pytest.fixture
def publisher() -> MemoryPublisher:
    return MemoryPublisher()


@pytest.fixture
async def client(publisher: MemoryPublisher, tmp_path: Path) -> AsyncIterator[TestClient[Any, Any]]:
    async with TestClient(TestServer(create_app(settings_for(tmp_path), publisher))) as c:
        yield c


def customer_hash(number: str = CUSTOMER) -> str:
    return hash_number(number, "US", SALT)


# -- Twilio ------------------------------------------------------------------------------------

TWILIO_COMPLETED = {
    "AccountSid": "AC0123456789abcdef0123456789abcdef",
    "ApiVersion": "2010-04-01",
    "CallSid": "CA1111111111111111111111111111111a",
    "CallStatus": "completed",
    "CallDuration": "42",
    "Direction": "inbound",
    "From": CUSTOMER,
    "To": TRACKING,
    "Caller": CUSTOMER,
    "Called": TRACKING,
    "CallbackSource": "call-progress-events",
    "SequenceNumber": "2",
    "Timestamp": "Sun, 22 Nov 2026 10:05:42 +0000",
}


async def test_twilio_form_callback_signed_by_twilio_is_accepted_and_normalized(
    client: TestClient[Any, Any], publisher: MemoryPublisher
) -> None:
    url = f"{PUBLIC}/v1/calls/twilio"
    signature = RequestValidator(TWILIO_TOKEN).compute_signature(url, TWILIO_COMPLETED)

    response = await client.post(
        "/v1/calls/twilio",
        data=urlencode(TWILIO_COMPLETED),
        headers={
            "X-Twilio-Signature": signature,
            "Content-Type": "application/x-www-form-urlencoded",
        },
    )

    assert response.status == 200 and await response.json() == {"accepted": 1}
    [callback] = publisher.calls
    assert (callback.provider, callback.call_id, callback.status) == (
        "twilio",
        "CA1111111111111111111111111111111a",
        "completed",
    )
    assert callback.direction == "inbound" and callback.talk_seconds == 42.0
    assert callback.caller_hash == customer_hash() and callback.tracking_number == TRACKING
    assert callback.event_ts == datetime(2026, 11, 22, 10, 5, 42, tzinfo=UTC)
    assert CUSTOMER not in orjson.dumps(callback.to_wire()).decode()


async def test_twilio_signature_over_the_url_with_its_default_port_is_accepted(
    client: TestClient[Any, Any], publisher: MemoryPublisher
) -> None:
    signature = RequestValidator(TWILIO_TOKEN).compute_signature(
        f"{PUBLIC}:443/v1/calls/twilio", TWILIO_COMPLETED
    )
    response = await client.post(
        "/v1/calls/twilio",
        data=urlencode(TWILIO_COMPLETED),
        headers={"X-Twilio-Signature": signature},
    )
    assert response.status == 200 and len(publisher.calls) == 1


async def test_twilio_json_callback_is_checked_with_body_sha256(
    client: TestClient[Any, Any], publisher: MemoryPublisher
) -> None:
    body = orjson.dumps({**TWILIO_COMPLETED, "CallStatus": "in-progress"})
    path = f"/v1/calls/twilio?bodySHA256={hashlib.sha256(body).hexdigest()}"
    validator = RequestValidator(TWILIO_TOKEN)
    signature = validator.compute_signature(PUBLIC + path, {})
    assert validator.validate(PUBLIC + path, body.decode(), signature)

    response = await client.post(
        path,
        data=body,
        headers={"X-Twilio-Signature": signature, "Content-Type": "application/json"},
    )
    assert response.status == 200
    assert publisher.calls[0].status == "answered"

    tampered = body.replace(b'"42"', b'"4200"')
    response = await client.post(
        path,
        data=tampered,
        headers={"X-Twilio-Signature": signature, "Content-Type": "application/json"},
    )
    assert response.status == 401 and "bodySHA256" in (await response.json())["error"]
    assert len(publisher.calls) == 1


async def test_twilio_tampered_and_unsigned_callbacks_are_refused_and_produce_nothing(
    client: TestClient[Any, Any], publisher: MemoryPublisher
) -> None:
    url = f"{PUBLIC}/v1/calls/twilio"
    signature = RequestValidator(TWILIO_TOKEN).compute_signature(url, TWILIO_COMPLETED)
    tampered = {**TWILIO_COMPLETED, "CallDuration": "4200"}

    forged = await client.post(
        "/v1/calls/twilio", data=urlencode(tampered), headers={"X-Twilio-Signature": signature}
    )
    unsigned = await client.post("/v1/calls/twilio", data=urlencode(TWILIO_COMPLETED))

    assert forged.status == 401 and unsigned.status == 401
    assert "X-Twilio-Signature" in (await unsigned.json())["error"]
    assert publisher.calls == [] and publisher.dead_letters == []


async def test_a_child_leg_joins_its_parent_call(
    client: TestClient[Any, Any], publisher: MemoryPublisher
) -> None:
    child = {
        **TWILIO_COMPLETED,
        "CallSid": "CA2222222222222222222222222222222b",
        "ParentCallSid": "CA1111111111111111111111111111111a",
        "Direction": "outbound-dial",
    }
    signature = RequestValidator(TWILIO_TOKEN).compute_signature(f"{PUBLIC}/v1/calls/twilio", child)
    response = await client.post(
        "/v1/calls/twilio", data=urlencode(child), headers={"X-Twilio-Signature": signature}
    )
    assert response.status == 200
    [callback] = publisher.calls
    assert callback.call_id == "CA1111111111111111111111111111111a"
    assert callback.leg_id == "CA2222222222222222222222222222222b"
    assert callback.direction == "" and callback.caller_hash == ""


# -- Vonage ------------------------------------------------------------------------------------

VONAGE_ANSWERED = {
    "from": "14155550132",
    "to": "18005550100",
    "uuid": "63f61863-4a51-4f6b-86e1-46edebcf9356",
    "conversation_uuid": "CON-f972836a-550f-45fa-956c-12a2ab5b7d22",
    "status": "answered",
    "direction": "inbound",
    "timestamp": "2026-11-22T10:00:03.000Z",
}


def vonage_token(body: bytes, secret: str = VONAGE_SECRET, **claims: Any) -> str:
    payload = {
        "iat": int(time.time()),
        "jti": "c5ba8f24-1a14-4c10-bfdf-3fbe8ce511b5",
        "iss": "Vonage",
        "payload_hash": hashlib.sha256(body).hexdigest(),
        "api_key": "abcd1234",
        "application_id": "aaaaaaaa-bbbb-cccc-dddd-0123456789ab",
        **claims,
    }
    return jwt.encode(payload, secret, algorithm="HS256")


async def test_vonage_event_with_a_signed_jwt_is_accepted(
    client: TestClient[Any, Any], publisher: MemoryPublisher
) -> None:
    body = orjson.dumps(VONAGE_ANSWERED)
    token = vonage_token(body)
    assert verify_signature(token, VONAGE_SECRET)  # Vonage's own check agrees

    response = await client.post(
        "/v1/calls/vonage",
        data=body,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )

    assert response.status == 200
    [callback] = publisher.calls
    assert callback.call_id == "CON-f972836a-550f-45fa-956c-12a2ab5b7d22"
    assert callback.status == "answered" and callback.answered_at == callback.event_ts
    assert callback.caller_hash == customer_hash() and callback.tracking_number == TRACKING


async def test_vonage_refuses_a_body_that_does_not_match_payload_hash_or_a_wrong_secret(
    client: TestClient[Any, Any], publisher: MemoryPublisher
) -> None:
    body = orjson.dumps(VONAGE_ANSWERED)
    tampered = body.replace(b"answered", b"busy")

    swapped = await client.post(
        "/v1/calls/vonage", data=tampered, headers={"Authorization": f"Bearer {vonage_token(body)}"}
    )
    wrong_secret = await client.post(
        "/v1/calls/vonage",
        data=body,
        headers={"Authorization": f"Bearer {vonage_token(body, secret='x' * 40)}"},
    )
    unsigned = await client.post("/v1/calls/vonage", data=body)

    assert "payload_hash" in (await swapped.json())["error"]
    assert [swapped.status, wrong_secret.status, unsigned.status] == [401, 401, 401]
    assert publisher.calls == []


# -- Telnyx ------------------------------------------------------------------------------------


def telnyx_event(event_type: str, **payload: Any) -> dict[str, Any]:
    return {
        "data": {
            "event_type": event_type,
            "id": f"0ccc7b54-4df3-4bca-a65a-3da1ecc777f{len(event_type) % 10}",
            "occurred_at": "2026-11-22T10:00:00.000000Z",
            "payload": {
                "call_control_id": "v3:MdI91X4lWFEs7IgbBEOT9M4AigoY08M0WWZFISt1Yw2axZ_IiE4pqg",
                "call_leg_id": "428c31b6-7af4-4bcb-b7f5-5013ef9657c1",
                "call_session_id": "428c31b6-abf3-4bcb-b7f5-5013ef9657c1",
                "connection_id": "1240401930086254526",
                "direction": "incoming",
                "from": CUSTOMER,
                "to": TRACKING,
                "state": "parked",
                **payload,
            },
            "record_type": "event",
        },
        "meta": {"attempt": 1, "delivered_to": f"{PUBLIC}/v1/calls/telnyx"},
    }


def telnyx_headers(body: bytes, timestamp: int | None = None) -> dict[str, str]:
    stamp = str(timestamp if timestamp is not None else int(time.time()))
    signature = TELNYX_KEY.sign(stamp.encode() + b"|" + body)
    return {
        "telnyx-signature-ed25519": base64.b64encode(signature).decode(),
        "telnyx-timestamp": stamp,
        "Content-Type": "application/json",
    }


async def test_telnyx_hangup_signed_with_ed25519_is_accepted(
    client: TestClient[Any, Any], publisher: MemoryPublisher
) -> None:
    body = orjson.dumps(
        telnyx_event(
            "call.hangup",
            hangup_cause="normal_clearing",
            hangup_source="caller",
            start_time="2026-11-22T09:58:00.000000Z",
            end_time="2026-11-22T10:00:00.000000Z",
        )
    )
    response = await client.post("/v1/calls/telnyx", data=body, headers=telnyx_headers(body))
    assert response.status == 200
    [callback] = publisher.calls
    assert callback.status == "completed" and callback.hangup_by == "caller"
    assert callback.call_id == "428c31b6-abf3-4bcb-b7f5-5013ef9657c1"
    assert callback.started_at == datetime(2026, 11, 22, 9, 58, tzinfo=UTC)


async def test_telnyx_refuses_replayed_and_tampered_requests(
    client: TestClient[Any, Any], publisher: MemoryPublisher
) -> None:
    body = orjson.dumps(telnyx_event("call.answered"))
    replayed = await client.post(
        "/v1/calls/telnyx", data=body, headers=telnyx_headers(body, int(time.time()) - 3600)
    )
    tampered = await client.post(
        "/v1/calls/telnyx",
        data=body.replace(b"incoming", b"outgoing"),
        headers=telnyx_headers(body),
    )
    assert "replay" in (await replayed.json())["error"]
    assert (replayed.status, tampered.status) == (401, 401)
    assert publisher.calls == []


async def test_telnyx_events_that_are_not_about_calls_are_acknowledged_and_ignored(
    client: TestClient[Any, Any], publisher: MemoryPublisher
) -> None:
    event = telnyx_event("call.answered")
    event["data"]["event_type"] = "message.sent"
    body = orjson.dumps(event)
    response = await client.post("/v1/calls/telnyx", data=body, headers=telnyx_headers(body))
    assert response.status == 200 and (await response.json())["accepted"] == 0
    assert publisher.calls == []


# -- Plivo -------------------------------------------------------------------------------------

PLIVO_HANGUP = {
    "CallUUID": "e2d5ba5a-7a8c-11ee-9b4e-0242ac110002",
    "CallStatus": "completed",
    "Direction": "inbound",
    "Event": "Hangup",
    "From": "14155550132",
    "To": "18005550100",
    "Duration": "65",
    "BillDuration": "60",
    "StartTime": "2026-11-22 10:00:00",
    "AnswerTime": "2026-11-22 10:00:05",
    "EndTime": "2026-11-22 10:01:05",
    "HangupCause": "NORMAL_CLEARING",
    "HangupSource": "Callee",
}


def plivo_headers(params: dict[str, str], nonce: str = "12345678901234567890") -> dict[str, str]:
    url = construct_post_url(f"{PUBLIC}/v1/calls/plivo", dict(params)).decode()
    signature = get_signature_v3(PLIVO_TOKEN, url, nonce).decode()
    assert validate_v3_signature(
        "POST", f"{PUBLIC}/v1/calls/plivo", nonce, PLIVO_TOKEN, signature, dict(params)
    )
    return {"X-Plivo-Signature-V3": signature, "X-Plivo-Signature-V3-Nonce": nonce}


async def test_plivo_hangup_with_signature_v3_is_accepted(
    client: TestClient[Any, Any], publisher: MemoryPublisher
) -> None:
    response = await client.post(
        "/v1/calls/plivo", data=urlencode(PLIVO_HANGUP), headers=plivo_headers(PLIVO_HANGUP)
    )
    assert response.status == 200
    [callback] = publisher.calls
    assert callback.talk_seconds == 60.0 and callback.hangup_by == "callee"
    assert callback.answered_at == datetime(2026, 11, 22, 10, 0, 5, tzinfo=UTC)
    assert callback.tracking_number == TRACKING


async def test_plivo_refuses_a_signature_made_for_another_nonce(
    client: TestClient[Any, Any], publisher: MemoryPublisher
) -> None:
    headers = plivo_headers(PLIVO_HANGUP)
    headers["X-Plivo-Signature-V3-Nonce"] = "another-nonce"
    response = await client.post("/v1/calls/plivo", data=urlencode(PLIVO_HANGUP), headers=headers)
    assert response.status == 401 and publisher.calls == []


# -- FreeSWITCH --------------------------------------------------------------------------------

FREESWITCH_CDR = {
    "core-uuid": "b0b6ac3e-8a09-4b4e-9a6c-2f1f3a0d3c11",
    "switchname": "pbx-1",
    "channel_data": {"state": "CS_REPORTING", "direction": "inbound"},
    "variables": {
        "uuid": "6f2b2ea6-0e4c-4a1d-9d5c-7b0c0f1e9a01",
        "call_uuid": "6f2b2ea6-0e4c-4a1d-9d5c-7b0c0f1e9a01",
        "direction": "inbound",
        "caller_id_number": "4155550132",
        "destination_number": "18005550100",
        "start_epoch": "1795341600",
        "answer_epoch": "1795341612",
        "end_epoch": "1795341732",
        "progresssec": "12",
        "billsec": "120",
        "hold_accum_seconds": "30",
        "hangup_cause": "NORMAL_CLEARING",
        "sip_hangup_disposition": "recv_bye",
        "cc_queue": "support@default",
        "cc_agent": "1001@default",
        "record_path": "/recordings/6f2b2ea6.wav",
    },
    "callflow": [
        {"caller_profile": {"caller_id_number": "4155550132"}, "times": {"transfer_time": "0"}},
        {"caller_profile": {}, "times": {"transfer_time": "1795341700000000"}},
    ],
}


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


async def test_freeswitch_cdr_with_basic_auth_becomes_a_full_callback(
    client: TestClient[Any, Any], publisher: MemoryPublisher
) -> None:
    response = await client.post(
        "/v1/calls/freeswitch",
        data=orjson.dumps(FREESWITCH_CDR),
        headers={**basic("cdr", "cdr-password"), "Content-Type": "application/json"},
    )
    assert response.status == 200
    [c] = publisher.calls
    assert (c.status, c.talk_seconds, c.hold_seconds, c.ring_seconds) == (
        "completed",
        120.0,
        30.0,
        12.0,
    )
    assert (c.queue, c.agent, c.recording, c.hangup_by) == (
        "support@default",
        "1001@default",
        True,
        "caller",
    )
    assert len(c.transfer_ids) == 1 and c.transfer_kind == "cold"
    assert c.caller_hash == customer_hash()


async def test_freeswitch_refuses_wrong_credentials(
    client: TestClient[Any, Any], publisher: MemoryPublisher
) -> None:
    wrong = await client.post(
        "/v1/calls/freeswitch",
        data=orjson.dumps(FREESWITCH_CDR),
        headers=basic("cdr", "guess"),
    )
    missing = await client.post("/v1/calls/freeswitch", data=orjson.dumps(FREESWITCH_CDR))
    assert (wrong.status, missing.status) == (401, 401) and publisher.calls == []


# -- Asterisk ----------------------------------------------------------------------------------

ASTERISK_CDR = {
    "accountcode": "",
    "src": "4155550132",
    "dst": "18005550100",
    "dcontext": "from-pstn",
    "clid": '"Ada" <4155550132>',
    "channel": "PJSIP/trunk-00000001",
    "dstchannel": "PJSIP/1001-00000002",
    "lastapp": "Dial",
    "lastdata": "PJSIP/1001,30",
    "start": "2026-11-22 10:00:00",
    "answer": "2026-11-22 10:00:08",
    "end": "2026-11-22 10:03:08",
    "duration": "188",
    "billsec": "180",
    "disposition": "ANSWERED",
    "amaflags": "DOCUMENTATION",
    "uniqueid": "1795341600.1",
    "linkedid": "1795341600.1",
    "sequence": "1",
    "direction": "inbound",
}


def asterisk_headers(body: bytes, timestamp: int | None = None) -> dict[str, str]:
    stamp = timestamp if timestamp is not None else int(time.time())
    digest = hmac.new(ASTERISK_SECRET.encode(), f"{stamp}.".encode() + body, hashlib.sha256)
    return {
        "X-Tracker-Timestamp": str(stamp),
        "X-Tracker-Signature": f"v1={digest.hexdigest()}",
        "Content-Type": "application/json",
    }


async def test_asterisk_cdr_signed_by_the_shipper_is_accepted(
    client: TestClient[Any, Any], publisher: MemoryPublisher
) -> None:
    body = orjson.dumps(ASTERISK_CDR)
    response = await client.post("/v1/calls/asterisk", data=body, headers=asterisk_headers(body))
    assert response.status == 200
    [c] = publisher.calls
    assert (c.status, c.talk_seconds, c.ring_seconds) == ("completed", 180.0, 8.0)
    assert c.call_id == "1795341600.1" and c.tracking_number == TRACKING


async def test_asterisk_refuses_a_replayed_signature(
    client: TestClient[Any, Any], publisher: MemoryPublisher
) -> None:
    body = orjson.dumps(ASTERISK_CDR)
    old = await client.post(
        "/v1/calls/asterisk", data=body, headers=asterisk_headers(body, int(time.time()) - 900)
    )
    assert old.status == 401 and publisher.calls == []


# -- Generic (Standard Webhooks) ---------------------------------------------------------------


def generic_headers(
    body: bytes, msg_id: str = "msg_2Kq9m3Xb", at: datetime | None = None
) -> dict[str, str]:
    stamp = at or datetime.now(UTC)
    signature = Webhook(GENERIC_SECRET).sign(msg_id, stamp, body.decode())
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(stamp.timestamp())),
        "webhook-signature": signature,
        "Content-Type": "application/json",
    }


GENERIC_CALL = {
    "call_id": "call-77",
    "leg_id": "leg-1",
    "status": "completed",
    "timestamp": "2026-11-22T10:10:00Z",
    "direction": "inbound",
    "from": CUSTOMER,
    "to": TRACKING,
    "answered_at": "2026-11-22T10:00:20Z",
    "talk_seconds": 580,
    "transfers": [{"id": "t1", "kind": "warm"}],
    "agent": "agent-7",
    "recording": True,
    "hangup_by": "callee",
}


async def test_generic_standard_webhook_is_accepted(
    client: TestClient[Any, Any], publisher: MemoryPublisher
) -> None:
    body = orjson.dumps(GENERIC_CALL)
    headers = generic_headers(body)
    Webhook(GENERIC_SECRET).verify(body, headers)  # the reference verifier agrees

    response = await client.post("/v1/calls/generic", data=body, headers=headers)

    assert response.status == 200
    [c] = publisher.calls
    assert c.callback_id == "msg_2Kq9m3Xb"
    assert (c.transfer_ids, c.transfer_kind, c.agent, c.recording) == (
        ("t1",),
        "warm",
        "agent-7",
        True,
    )


async def test_generic_refuses_replayed_and_tampered_requests(
    client: TestClient[Any, Any], publisher: MemoryPublisher
) -> None:
    body = orjson.dumps(GENERIC_CALL)
    old = await client.post(
        "/v1/calls/generic",
        data=body,
        headers=generic_headers(body, at=datetime.fromtimestamp(time.time() - 3600, tz=UTC)),
    )
    tampered = await client.post(
        "/v1/calls/generic",
        data=body.replace(b"agent-7", b"agent-8"),
        headers=generic_headers(body),
    )
    assert (old.status, tampered.status) == (401, 401) and publisher.calls == []


# -- What every provider shares ----------------------------------------------------------------


async def test_a_signed_but_malformed_callback_is_400_with_the_reason_and_a_dead_letter(
    client: TestClient[Any, Any], publisher: MemoryPublisher
) -> None:
    broken = {k: v for k, v in TWILIO_COMPLETED.items() if k != "CallSid"}
    signature = RequestValidator(TWILIO_TOKEN).compute_signature(
        f"{PUBLIC}/v1/calls/twilio", broken
    )
    response = await client.post(
        "/v1/calls/twilio", data=urlencode(broken), headers={"X-Twilio-Signature": signature}
    )
    body = await response.json()
    assert response.status == 400
    assert body["errors"] == [{"field": "CallSid", "reason": "is required"}]
    [letter] = publisher.dead_letters
    assert letter.reason == "CallSid: is required" and letter.source == "calls"
    assert "4155550132" not in letter.payload and "8005550100" not in letter.payload
    assert "CallStatus=completed" in letter.payload
    assert "AC0123456789abcdef0123456789abcdef" in letter.payload  # ids stay, to trace it
    assert publisher.calls == []


async def test_unknown_provider_is_404(client: TestClient[Any, Any]) -> None:
    response = await client.post("/v1/calls/skype", data=b"{}")
    assert response.status == 404 and "twilio" in (await response.json())["error"]


async def test_a_provider_without_its_secret_refuses_everything_and_names_the_variable(
    tmp_path: Path, publisher: MemoryPublisher
) -> None:
    settings = settings_for(tmp_path, TRACKER_TWILIO_AUTH_TOKEN="", TRACKER_FREESWITCH_PASSWORD="")
    async with TestClient(TestServer(create_app(settings, publisher))) as unconfigured:
        twilio = await unconfigured.post(
            "/v1/calls/twilio",
            data=urlencode(TWILIO_COMPLETED),
            headers={"X-Twilio-Signature": "x"},
        )
        freeswitch = await unconfigured.post(
            "/v1/calls/freeswitch", data=b"{}", headers=basic("cdr", "")
        )
        assert twilio.status == 503
        assert "TRACKER_TWILIO_AUTH_TOKEN" in (await twilio.json())["error"]
        assert freeswitch.status == 503
        assert "TRACKER_FREESWITCH_PASSWORD" in (await freeswitch.json())["error"]
    assert publisher.calls == []


async def test_kafka_unavailable_answers_503_with_retry_after(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, TRACKER_RETRY_AFTER_SECONDS="7")
    publisher = MemoryPublisher(retry_after_seconds=settings.retry_after_seconds)
    publisher.unavailable = True
    body = orjson.dumps(GENERIC_CALL)
    async with TestClient(TestServer(create_app(settings, publisher))) as client:
        response = await client.post("/v1/calls/generic", data=body, headers=generic_headers(body))
        # The wait configured in TRACKER_RETRY_AFTER_SECONDS, in the header and the body.
        assert (response.status, response.headers["Retry-After"]) == (503, "7")
        assert (await response.json())["retry_after"] == 7


async def test_health_and_metrics_routes(client: TestClient[Any, Any]) -> None:
    assert (await client.get("/healthz")).status == 200
    assert (await client.get("/readyz")).status == 200
    accepted = 'tracker_call_webhooks_total{outcome="accepted",provider="generic"}'
    before = await scraped(client, accepted)
    body = orjson.dumps(GENERIC_CALL)
    await client.post("/v1/calls/generic", data=body, headers=generic_headers(body))
    assert await scraped(client, accepted) == before + 1


# -- How provider-specific callbacks read ------------------------------------------------------


async def twilio_post(client: TestClient[Any, Any], params: dict[str, str]) -> int:
    signature = RequestValidator(TWILIO_TOKEN).compute_signature(
        f"{PUBLIC}/v1/calls/twilio", params
    )
    response = await client.post(
        "/v1/calls/twilio", data=urlencode(params), headers={"X-Twilio-Signature": signature}
    )
    return response.status


async def test_twilio_recording_and_answering_machine_callbacks(
    client: TestClient[Any, Any], publisher: MemoryPublisher
) -> None:
    recording = {
        "AccountSid": TWILIO_COMPLETED["AccountSid"],
        "CallSid": TWILIO_COMPLETED["CallSid"],
        "RecordingSid": "RE0123456789abcdef0123456789abcdef",
        "RecordingStatus": "completed",
        "RecordingDuration": "40",
    }
    machine = {**TWILIO_COMPLETED, "AnsweredBy": "machine_end_beep", "SequenceNumber": "4"}
    assert await twilio_post(client, recording) == 200
    assert await twilio_post(client, machine) == 200
    assert [(c.status, c.recording) for c in publisher.calls] == [
        ("updated", True),
        ("voicemail", None),
    ]


async def test_telnyx_busy_and_machine_detection(
    client: TestClient[Any, Any], publisher: MemoryPublisher
) -> None:
    for event in (
        telnyx_event("call.hangup", hangup_cause="user_busy"),
        telnyx_event("call.machine.detection.ended", result="machine"),
    ):
        body = orjson.dumps(event)
        response = await client.post("/v1/calls/telnyx", data=body, headers=telnyx_headers(body))
        assert response.status == 200
    assert [c.status for c in publisher.calls] == ["busy", "voicemail"]


async def test_plivo_b_leg_joins_the_a_leg_call(
    client: TestClient[Any, Any], publisher: MemoryPublisher
) -> None:
    b_leg = {
        **PLIVO_HANGUP,
        "CallUUID": "f1a2b3c4-7a8c-11ee-9b4e-0242ac110002",
        "ALegUUID": PLIVO_HANGUP["CallUUID"],
        "Direction": "outbound",
    }
    response = await client.post(
        "/v1/calls/plivo", data=urlencode(b_leg), headers=plivo_headers(b_leg)
    )
    assert response.status == 200
    [c] = publisher.calls
    assert (c.call_id, c.leg_id, c.direction) == (
        PLIVO_HANGUP["CallUUID"],
        "f1a2b3c4-7a8c-11ee-9b4e-0242ac110002",
        "",
    )


async def test_freeswitch_form_encoded_cdr_of_an_unanswered_call(
    client: TestClient[Any, Any], publisher: MemoryPublisher
) -> None:
    variables = {
        **FREESWITCH_CDR["variables"],  # type: ignore[dict-item]
        "answer_epoch": "0",
        "billsec": "0",
        "hangup_cause": "NO_ANSWER",
    }
    cdr = {**FREESWITCH_CDR, "variables": variables}
    response = await client.post(
        "/v1/calls/freeswitch",
        data=urlencode({"cdr": orjson.dumps(cdr).decode()}),
        headers={
            **basic("cdr", "cdr-password"),
            "Content-Type": "application/x-www-form-urlencoded",
        },
    )
    assert response.status == 200
    [c] = publisher.calls
    assert (c.status, c.answered_at) == ("no-answer", None)


async def test_vonage_events_that_are_not_call_progress_are_ignored(
    client: TestClient[Any, Any], publisher: MemoryPublisher
) -> None:
    body = orjson.dumps({**VONAGE_ANSWERED, "status": "input", "dtmf": {"digits": "1"}})
    response = await client.post(
        "/v1/calls/vonage", data=body, headers={"Authorization": f"Bearer {vonage_token(body)}"}
    )
    assert response.status == 200 and (await response.json())["accepted"] == 0
    assert publisher.calls == []


async def test_generic_callback_with_an_unknown_status_names_the_field(
    client: TestClient[Any, Any], publisher: MemoryPublisher
) -> None:
    body = orjson.dumps({**GENERIC_CALL, "status": "on-hold"})
    response = await client.post("/v1/calls/generic", data=body, headers=generic_headers(body))
    assert response.status == 400
    assert (await response.json())["errors"][0]["field"] == "status"
    assert publisher.calls == [] and len(publisher.dead_letters) == 1


async def test_a_payload_no_rule_foresaw_is_400_and_a_dead_letter_not_a_500(
    client: TestClient[Any, Any], publisher: MemoryPublisher, monkeypatch: pytest.MonkeyPatch
) -> None:
    def unforeseen(request: WebhookRequest, settings: Settings) -> list[CallCallback]:
        raise TypeError("'list' object is not a mapping")

    provider = PROVIDERS["twilio"]
    monkeypatch.setitem(PROVIDERS, "twilio", replace(provider, normalize=unforeseen))

    assert await twilio_post(client, TWILIO_COMPLETED) == 400
    assert "could not be read" in publisher.dead_letters[0].reason
    assert publisher.calls == []


async def test_freeswitch_channel_data_of_the_wrong_shape_is_tolerated(
    client: TestClient[Any, Any], publisher: MemoryPublisher
) -> None:
    cdr = {**FREESWITCH_CDR, "channel_data": ["unexpected"]}
    response = await client.post(
        "/v1/calls/freeswitch",
        data=orjson.dumps(cdr),
        headers={**basic("cdr", "cdr-password"), "Content-Type": "application/json"},
    )
    assert response.status == 200 and publisher.calls[0].direction == "inbound"
