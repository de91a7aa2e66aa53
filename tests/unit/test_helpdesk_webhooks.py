"""The helpdesk collector: each provider's signature, checked against signatures made here the
way each provider documents them (Zendesk, Intercom) or by the Standard Webhooks library, and
what a verified callback becomes. Kafka is an in-memory publisher."""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from standardwebhooks import Webhook

from collectors._webhooks import read_callbacks
from collectors.calls._common import Ignored, Malformed, WebhookRequest
from collectors.helpdesk import PROVIDERS, create_app
from collectors.helpdesk.records import SupportCallback, hash_email, hash_phone
from tracker.kafka.producer import MemoryPublisher
from tracker.settings import Settings

SALT = "test-salt"
ZENDESK_SECRET = "dGhpc19zZWNyZXRfaXNfZm9yX3Rlc3Rpbmdfb25seQ=="
INTERCOM_SECRET = "intercom-client-secret-0123456789"
GENERIC_SECRET = "whsec_" + base64.b64encode(b"helpdesk-webhook-secret-32bytes!").decode()
EMAIL = "Ada.Lovelace@Example.com"


def settings_for(tmp_path: Path, **overrides: str) -> Settings:
    env = {
        "TRACKER_DATA_DIR": str(tmp_path),
        "TRACKER_HASH_SALT": SALT,
        "TRACKER_ZENDESK_WEBHOOK_SECRET": ZENDESK_SECRET,
        "TRACKER_INTERCOM_CLIENT_SECRET": INTERCOM_SECRET,
        "TRACKER_HELPDESK_WEBHOOK_SECRET": GENERIC_SECRET,
        **overrides,
    }
    return Settings.from_env(env)


SETTINGS = Settings.from_env({"TRACKER_HASH_SALT": SALT})


@pytest.fixture
def publisher() -> MemoryPublisher:
    return MemoryPublisher()


@pytest.fixture
async def client(publisher: MemoryPublisher, tmp_path: Path) -> AsyncIterator[TestClient[Any, Any]]:
    async with TestClient(TestServer(create_app(settings_for(tmp_path), publisher))) as c:
        yield c


def stamp(ts: datetime) -> str:
    return ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def zendesk_headers(body: bytes, at: datetime | None = None) -> dict[str, str]:
    """As Zendesk documents it: base64(HMAC-SHA256(timestamp + body)) under the signing secret."""
    timestamp = stamp(at or datetime.now(UTC))
    digest = hmac.new(ZENDESK_SECRET.encode(), timestamp.encode() + body, hashlib.sha256).digest()
    return {
        "Content-Type": "application/json",
        "X-Zendesk-Webhook-Signature": base64.b64encode(digest).decode(),
        "X-Zendesk-Webhook-Signature-Timestamp": timestamp,
    }


def intercom_headers(body: bytes) -> dict[str, str]:
    """As Intercom documents it: sha1=<hex HMAC-SHA1 of the body> under the client secret."""
    digest = hmac.new(INTERCOM_SECRET.encode(), body, hashlib.sha1).hexdigest()
    return {"Content-Type": "application/json", "X-Hub-Signature": f"sha1={digest}"}


def generic_headers(body: bytes, msg_id: str = "msg_2Kx1") -> dict[str, str]:
    now = datetime.now(UTC)
    signature = Webhook(GENERIC_SECRET).sign(msg_id, now, body.decode())
    return {
        "Content-Type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": signature,
    }


def zendesk_trigger(**fields: Any) -> dict[str, Any]:
    """The body docs/helpdesk.md tells a Zendesk admin to give a trigger's webhook, rendered."""
    now = datetime.now(UTC)
    return {
        "ticket_id": "35436",
        "event": "opened",
        "status": "New",
        "requester_email": EMAIL,
        "requester_phone": "",
        "requester_external_id": "",
        "created_at": stamp(now - timedelta(minutes=5)),
        "updated_at": stamp(now),
        "via": "Mail",
        "group": "Billing",
        "assignee": "",
        "priority": "High",
        "satisfaction": "Unoffered",
        **fields,
    }


# -- Zendesk -------------------------------------------------------------------------------------


async def test_zendesk_trigger_webhook_becomes_a_ticket_callback(
    client: TestClient[Any, Any], publisher: MemoryPublisher
) -> None:
    body = orjson.dumps(zendesk_trigger())
    response = await client.post("/v1/helpdesk/zendesk", data=body, headers=zendesk_headers(body))
    assert response.status == 200 and await response.json() == {"accepted": 1}
    [callback] = publisher.tickets
    assert isinstance(callback, SupportCallback)
    assert (callback.provider, callback.kind, callback.ticket_id, callback.event) == (
        "zendesk",
        "ticket",
        "35436",
        "opened",
    )
    assert callback.ticket_key == "zendesk:35436"
    assert callback.email_hash == hash_email(EMAIL.lower(), SALT)
    assert (callback.queue, callback.priority, callback.via, callback.rating) == (
        "Billing",
        "high",
        "mail",
        None,
    )
    assert EMAIL.lower() not in orjson.dumps(callback.to_wire()).decode().lower()


async def test_zendesk_satisfaction_good_is_a_top_csat(
    client: TestClient[Any, Any], publisher: MemoryPublisher
) -> None:
    body = orjson.dumps(zendesk_trigger(event="rated", satisfaction="Good, I'm satisfied"))
    response = await client.post("/v1/helpdesk/zendesk", data=body, headers=zendesk_headers(body))
    assert response.status == 200
    assert publisher.tickets[0].rating == 5.0  # type: ignore[attr-defined]


async def test_zendesk_event_subscription_status_change_reopens(
    client: TestClient[Any, Any], publisher: MemoryPublisher
) -> None:
    now = stamp(datetime.now(UTC))
    event = {
        "type": "zen:event-type:ticket.status_changed",
        "account_id": 12514403,
        "id": "2b24ef10-19d4-4740-93cf-8f98ec4776c0",
        "time": now,
        "zendesk_event_version": "2022-11-06",
        "subject": "zen:ticket:35436",
        "detail": {"id": "35436", "status": "OPEN", "via": {"channel": "web"}, "created_at": now},
        "event": {"current": "OPEN", "previous": "SOLVED"},
    }
    body = orjson.dumps(event)
    response = await client.post("/v1/helpdesk/zendesk", data=body, headers=zendesk_headers(body))
    assert response.status == 200
    [callback] = publisher.tickets
    assert (callback.event, callback.callback_id) == (  # type: ignore[attr-defined]
        "reopened",
        "2b24ef10-19d4-4740-93cf-8f98ec4776c0",
    )


async def test_zendesk_forged_stale_and_unsigned_requests_get_401(
    client: TestClient[Any, Any], publisher: MemoryPublisher
) -> None:
    body = orjson.dumps(zendesk_trigger())
    headers = zendesk_headers(body)
    forged = body.replace(b"35436", b"35437")
    response = await client.post("/v1/helpdesk/zendesk", data=forged, headers=headers)
    assert response.status == 401
    assert (await response.json())["error"] == (
        "X-Zendesk-Webhook-Signature does not match this request"
    )
    stale = zendesk_headers(body, datetime.now(UTC) - timedelta(minutes=10))
    response = await client.post("/v1/helpdesk/zendesk", data=body, headers=stale)
    assert response.status == 401
    assert "away from our clock" in (await response.json())["error"]
    response = await client.post("/v1/helpdesk/zendesk", data=body)
    assert response.status == 401
    assert not publisher.tickets and not publisher.dead_letters


async def test_a_bad_body_gets_400_with_its_field_and_a_dead_letter_without_the_address(
    client: TestClient[Any, Any], publisher: MemoryPublisher
) -> None:
    body = orjson.dumps(zendesk_trigger(event="escalated", requester_phone="+14155550100"))
    response = await client.post("/v1/helpdesk/zendesk", data=body, headers=zendesk_headers(body))
    assert response.status == 400
    answer = await response.json()
    assert answer["errors"][0]["field"] == "event"
    assert not publisher.tickets
    [letter] = publisher.dead_letters
    assert "escalated" in letter.payload
    assert EMAIL.lower() not in letter.payload.lower() and "4155550100" not in letter.payload


async def test_a_requester_email_that_is_no_address_is_refused(
    client: TestClient[Any, Any], publisher: MemoryPublisher
) -> None:
    body = orjson.dumps(zendesk_trigger(requester_email="not an address"))
    response = await client.post("/v1/helpdesk/zendesk", data=body, headers=zendesk_headers(body))
    assert response.status == 400
    assert (await response.json())["errors"][0]["field"] == "requester_email"


async def test_a_provider_without_its_secret_is_turned_off(tmp_path: Path) -> None:
    publisher = MemoryPublisher()
    app = create_app(settings_for(tmp_path, TRACKER_ZENDESK_WEBHOOK_SECRET=""), publisher)
    async with TestClient(TestServer(app)) as c:
        body = orjson.dumps(zendesk_trigger())
        response = await c.post("/v1/helpdesk/zendesk", data=body, headers=zendesk_headers(body))
        assert response.status == 503
        assert "TRACKER_ZENDESK_WEBHOOK_SECRET" in (await response.json())["error"]


async def test_kafka_away_is_503_with_retry_after(
    client: TestClient[Any, Any], publisher: MemoryPublisher
) -> None:
    publisher.unavailable = True
    body = orjson.dumps(zendesk_trigger())
    response = await client.post("/v1/helpdesk/zendesk", data=body, headers=zendesk_headers(body))
    assert response.status == 503 and response.headers["Retry-After"] == "1"


# -- Intercom ------------------------------------------------------------------------------------


def intercom_notification(topic: str, **item: Any) -> dict[str, Any]:
    now = int(datetime.now(UTC).timestamp())
    return {
        "type": "notification_event",
        "app_id": "abc123",
        "id": f"notif_{topic}",
        "topic": topic,
        "created_at": now,
        "data": {
            "type": "notification_event_data",
            "item": {
                "type": "conversation",
                "id": "1911149811",
                "created_at": now - 600,
                "updated_at": now,
                "state": "open",
                "source": {
                    "type": "conversation",
                    "delivered_as": "customer_initiated",
                    "author": {"type": "user", "id": "5bc8f7", "email": EMAIL},
                },
                "contacts": {
                    "type": "contact.list",
                    "contacts": [{"type": "contact", "id": "5bc8f7", "external_id": "u-42"}],
                },
                "admin_assignee_id": 814860,
                "team_assignee_id": None,
                "statistics": {"first_admin_reply_at": now - 480, "count_reopens": 0},
                "conversation_rating": None,
                **item,
            },
        },
    }


async def test_intercom_conversation_becomes_a_chat_callback(
    client: TestClient[Any, Any], publisher: MemoryPublisher
) -> None:
    body = orjson.dumps(intercom_notification("conversation.admin.replied"))
    response = await client.post("/v1/helpdesk/intercom", data=body, headers=intercom_headers(body))
    assert response.status == 200 and await response.json() == {"accepted": 1}
    [callback] = publisher.tickets
    assert isinstance(callback, SupportCallback)
    assert (callback.kind, callback.channel, callback.event, callback.callback_id) == (
        "chat",
        "chat",
        "replied",
        "notif_conversation.admin.replied",
    )
    assert (callback.email_hash, callback.user_id, callback.agent) == (
        hash_email(EMAIL, SALT),
        "u-42",
        "814860",
    )
    assert callback.first_reply_at is not None and callback.reopens == 0


async def test_intercom_rating_is_a_csat_and_a_close_is_a_solve(
    client: TestClient[Any, Any], publisher: MemoryPublisher
) -> None:
    now = int(datetime.now(UTC).timestamp())
    rated = intercom_notification(
        "conversation.rating.added",
        state="closed",
        conversation_rating={"rating": 4, "remark": "thanks", "created_at": now},
        statistics={"last_close_at": now - 60, "count_reopens": 1},
    )
    body = orjson.dumps(rated)
    response = await client.post("/v1/helpdesk/intercom", data=body, headers=intercom_headers(body))
    assert response.status == 200
    [callback] = publisher.tickets
    assert (callback.event, callback.rating, callback.reopens) == (  # type: ignore[attr-defined]
        "rated",
        4.0,
        1,
    )
    assert callback.solved_at is not None  # type: ignore[attr-defined]


async def test_intercom_ping_and_other_topics_are_acknowledged_and_ignored(
    client: TestClient[Any, Any], publisher: MemoryPublisher
) -> None:
    for topic in ("ping", "contact.created"):
        body = orjson.dumps(intercom_notification(topic))
        response = await client.post(
            "/v1/helpdesk/intercom", data=body, headers=intercom_headers(body)
        )
        assert response.status == 200 and (await response.json())["accepted"] == 0
    assert not publisher.tickets


async def test_intercom_wrong_signature_gets_401(
    client: TestClient[Any, Any], publisher: MemoryPublisher
) -> None:
    body = orjson.dumps(intercom_notification("conversation.user.created"))
    headers = {**intercom_headers(body), "X-Hub-Signature": "sha1=" + "0" * 40}
    response = await client.post("/v1/helpdesk/intercom", data=body, headers=headers)
    assert response.status == 401 and not publisher.tickets


# -- generic (Standard Webhooks) -----------------------------------------------------------------


def generic_event(kind: str = "ticket.opened", **data: Any) -> dict[str, Any]:
    return {
        "type": kind,
        "timestamp": stamp(datetime.now(UTC)),
        "data": {
            "id": "T-1001",
            "tool": "freshdesk",
            "requester": {"email": EMAIL, "phone": "+1 415 555 0100"},
            "status": "Open",
            **data,
        },
    }


async def test_generic_signed_callback_is_read_with_its_webhook_id_as_callback_id(
    client: TestClient[Any, Any], publisher: MemoryPublisher
) -> None:
    body = orjson.dumps(generic_event("chat.rated", rating=2))
    response = await client.post(
        "/v1/helpdesk/generic", data=body, headers=generic_headers(body, "msg_rated")
    )
    assert response.status == 200
    [callback] = publisher.tickets
    assert isinstance(callback, SupportCallback)
    assert (callback.provider, callback.kind, callback.event, callback.rating) == (
        "freshdesk",
        "chat",
        "rated",
        2.0,
    )
    assert callback.callback_id == "msg_rated"
    assert callback.phone_hash == hash_phone("+14155550100", "US", SALT)


async def test_generic_tampered_body_gets_401_and_bad_type_400(
    client: TestClient[Any, Any], publisher: MemoryPublisher
) -> None:
    body = orjson.dumps(generic_event())
    headers = generic_headers(body)
    response = await client.post(
        "/v1/helpdesk/generic", data=body.replace(b"T-1001", b"T-1002"), headers=headers
    )
    assert response.status == 401
    bad = orjson.dumps(generic_event("ticket.escalated"))
    response = await client.post("/v1/helpdesk/generic", data=bad, headers=generic_headers(bad))
    assert response.status == 400
    assert (await response.json())["errors"][0]["field"] == "type"
    assert not publisher.tickets and len(publisher.dead_letters) == 1


async def test_unknown_provider_is_404(client: TestClient[Any, Any]) -> None:
    response = await client.post("/v1/helpdesk/freshdesk", data=b"{}")
    assert response.status == 404
    assert "generic, intercom, zendesk" in (await response.json())["error"]


# -- any body, signed: read or refused with a reason, never a crash ------------------------------

_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=12,
)
_FIELDS = {
    "zendesk": zendesk_trigger(),
    "intercom": intercom_notification("conversation.admin.closed"),
    "generic": generic_event(),
}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(sorted(_FIELDS)),
    st.lists(st.tuples(st.text(max_size=30), _JSON), max_size=4),
    st.booleans(),
)
def test_a_verified_body_of_any_shape_is_read_or_refused_with_a_reason(
    name: str, changes: list[tuple[str, Any]], nested: bool
) -> None:
    payload = orjson.loads(orjson.dumps(_FIELDS[name]))
    target = payload.get("data", payload) if nested else payload
    if isinstance(target, dict) and name == "intercom" and nested:
        target = target.get("item", target)
    for key, value in changes:
        target[key or "ticket_id"] = value
    body = orjson.dumps(payload)
    request = WebhookRequest(
        method="POST",
        url="https://helpdesk.example.com/v1/helpdesk/" + name,
        headers={"webhook-id": "msg_1"},
        body=body,
        received_ts=datetime.now(UTC),
        max_event_age=timedelta(days=730),
    )
    try:
        callbacks = read_callbacks(PROVIDERS[name], request, SETTINGS)
    except (Malformed, Ignored) as exc:
        assert str(exc)
        return
    for callback in callbacks:
        assert not callback.limit_errors()
        assert SupportCallback.from_wire(orjson.loads(orjson.dumps(callback.to_wire()))) == callback
