"""The email collector: each provider's authentication, signed as the provider signs (SendGrid's
own helper checks our test signatures), and what a verified event becomes. Kafka is an
in-memory publisher."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509.oid import NameOID
from sendgrid.helpers.eventwebhook import EventWebhook

from agents.journey import JourneyEvent, frictions
from collectors.email import create_app
from collectors.email.records import email_event_id, proxied_open
from tracker.kafka.producer import MemoryPublisher
from tracker.privacy import hash_identifier
from tracker.settings import Settings

SALT = "test-salt"
ADA = "Ada.Lovelace@Example.com"
MAILGUN_KEY = "key-mailgun-webhook-signing-0123456789"
POSTMARK_USER, POSTMARK_PASSWORD = "postmark", "postmark-hook-password"
SES_TOPIC = "arn:aws:sns:eu-west-1:123456789012:ses-events"
SNS_CERT_NAME = "SimpleNotificationService-0123456789abcdef0123456789abcdef.pem"
SNS_CERT_URL = f"https://sns.eu-west-1.amazonaws.com/{SNS_CERT_NAME}"
APPLE_PROXY = "Mozilla/5.0"
GMAIL_PROXY = (
    "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)"
)
IPHONE = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Mobile/15E148"
)

# SendGrid signs with a P-256 key and shows its public half, base64 DER, as the verification key.
SENDGRID_KEY = ec.generate_private_key(ec.SECP256R1())
SENDGRID_PUBLIC = base64.b64encode(
    SENDGRID_KEY.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
).decode()
# SNS signs with the RSA key of the certificate at SigningCertURL.
SNS_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def sns_certificate() -> bytes:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sns.amazonaws.com")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(SNS_KEY.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=30))
        .sign(SNS_KEY, hashes.SHA256())
    )
    return cert.public_bytes(Encoding.PEM)


def email_settings(tmp_path: Path, **overrides: str) -> Settings:
    certificates = tmp_path / "sns-certificates"
    certificates.mkdir(exist_ok=True)
    (certificates / SNS_CERT_NAME).write_bytes(sns_certificate())
    env = {
        "TRACKER_DATA_DIR": str(tmp_path),
        "TRACKER_HASH_SALT": SALT,
        "TRACKER_SENDGRID_WEBHOOK_PUBLIC_KEY": SENDGRID_PUBLIC,
        "TRACKER_MAILGUN_WEBHOOK_SIGNING_KEY": MAILGUN_KEY,
        "TRACKER_POSTMARK_WEBHOOK_USERNAME": POSTMARK_USER,
        "TRACKER_POSTMARK_WEBHOOK_PASSWORD": POSTMARK_PASSWORD,
        "TRACKER_SES_SNS_TOPIC_ARNS": f"arn:aws:sns:us-east-1:123456789012:other, {SES_TOPIC}",
        "TRACKER_SES_SNS_CERTIFICATES": str(certificates),
    }
    env.update(overrides)
    return Settings.from_env(env)


@pytest.fixture
def publisher() -> MemoryPublisher:
    return MemoryPublisher()


@pytest.fixture
async def client(publisher: MemoryPublisher, tmp_path: Path) -> AsyncIterator[TestClient[Any, Any]]:
    async with TestClient(TestServer(create_app(email_settings(tmp_path), publisher))) as c:
        yield c


def email_hash(email: str = ADA) -> str:
    return hash_identifier("email", email.strip().lower(), SALT)


# -- signing, as each provider does --------------------------------------------------------------


def sendgrid_headers(body: bytes, stamp: int | None = None) -> dict[str, str]:
    timestamp = str(stamp if stamp is not None else int(time.time()))
    signature = base64.b64encode(
        SENDGRID_KEY.sign(timestamp.encode() + body, ec.ECDSA(hashes.SHA256()))
    ).decode()
    # SendGrid's own helper must accept what we sign, or the test signs wrongly.
    helper = EventWebhook()
    assert helper.verify_signature(
        body.decode(), signature, timestamp, helper.convert_public_key_to_ecdsa(SENDGRID_PUBLIC)
    )
    return {
        "Content-Type": "application/json",
        "X-Twilio-Email-Event-Webhook-Signature": signature,
        "X-Twilio-Email-Event-Webhook-Timestamp": timestamp,
    }


def mailgun_body(event: dict[str, Any], key: str = MAILGUN_KEY, stamp: int | None = None) -> bytes:
    timestamp = str(stamp if stamp is not None else int(time.time()))
    token = hashlib.sha256(orjson.dumps(event)).hexdigest()[:50]
    signature = hmac.new(key.encode(), (timestamp + token).encode(), hashlib.sha256).hexdigest()
    return orjson.dumps(
        {
            "signature": {"timestamp": timestamp, "token": token, "signature": signature},
            "event-data": event,
        }
    )


def postmark_headers(
    user: str = POSTMARK_USER, password: str = POSTMARK_PASSWORD
) -> dict[str, str]:
    credentials = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Content-Type": "application/json", "Authorization": f"Basic {credentials}"}


def sns_message(
    kind: str = "Notification", version: str = "1", topic: str = SES_TOPIC, **fields: str
) -> dict[str, Any]:
    """An SNS message signed as AWS documents: the type's fields in order, name\\nvalue\\n."""
    message: dict[str, Any] = {
        "Type": kind,
        "MessageId": fields.pop("MessageId", "4b7a4f0e-7c0e-5d4a-9e0b-1f2d3c4b5a69"),
        "TopicArn": topic,
        "Timestamp": "2026-11-22T10:00:00.000Z",
        "SignatureVersion": version,
        "SigningCertURL": SNS_CERT_URL,
        **fields,
    }
    order = (
        ["Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"]
        if kind == "Notification"
        else ["Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type"]
    )
    signed = "".join(f"{k}\n{message[k]}\n" for k in order if k in message).encode()
    digest = hashes.SHA1() if version == "1" else hashes.SHA256()
    message["Signature"] = base64.b64encode(
        SNS_KEY.sign(signed, padding.PKCS1v15(), digest)
    ).decode()
    return message


def ses_notification(event: dict[str, Any], **fields: str) -> bytes:
    return orjson.dumps(sns_message(Message=orjson.dumps(event).decode(), **fields))


def now_iso(offset: timedelta = timedelta()) -> str:
    return (datetime.now(UTC) + offset).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# -- SendGrid ------------------------------------------------------------------------------------


def sendgrid_event(event: str, n: int, **fields: Any) -> dict[str, Any]:
    return {
        "email": ADA,
        "timestamp": int(time.time()) - 60,
        "event": event,
        "sg_event_id": f"sg-event-{n}",
        "sg_message_id": "14c5d75ce93.dfd.64b469.filter0001.16648.5515E0B88.0",
        "category": ["autumn-sale", "newsletter"],
        **fields,
    }


async def test_sendgrid_batch_signed_as_sendgrid_signs_is_mapped_event_by_event(
    client: TestClient[Any, Any], publisher: MemoryPublisher
) -> None:
    events = [
        sendgrid_event("processed", 1),
        sendgrid_event("delivered", 2, response="250 OK"),
        sendgrid_event("deferred", 3, response="450 try later", attempt="1"),
        sendgrid_event("open", 4, useragent=IPHONE, ip="203.0.113.7"),
        sendgrid_event("open", 5, useragent=IPHONE, sg_machine_open=True),
        sendgrid_event(
            "click",
            6,
            url="https://shop.example.com/autumn?utm_source=news&utm_medium=email&utm_campaign=autumn-26",
            useragent=IPHONE,
        ),
        sendgrid_event(
            "bounce", 7, type="bounce", status="5.1.1", reason=f"550 5.1.1 <{ADA}>: unknown user"
        ),
        sendgrid_event("dropped", 8, reason="Bounced Address"),
        sendgrid_event("spamreport", 9),
        sendgrid_event("unsubscribe", 10),
        sendgrid_event("group_unsubscribe", 11, asm_group_id=42),
        sendgrid_event("group_resubscribe", 12, asm_group_id=42),
    ]
    body = orjson.dumps(events)

    response = await client.post("/v1/email/sendgrid", data=body, headers=sendgrid_headers(body))

    assert response.status == 200 and await response.json() == {"accepted": 12}
    by_id = {t.event_id: t for t in publisher.touchpoints}
    types = [by_id[email_event_id("sendgrid", f"sg-event-{n}")].type for n in range(1, 13)]
    assert types == [
        "email_sent",
        "email_delivered",
        "email_deferred",
        "email_open",
        "email_proxy_open",
        "email_click",
        "email_bounce",
        "email_dropped",
        "email_spam_report",
        "email_unsubscribe",
        "email_unsubscribe",
        "email_resubscribe",
    ]
    for touchpoint in publisher.touchpoints:
        assert (touchpoint.channel, touchpoint.source) == ("email", "email_webhook")
        assert touchpoint.email_hash == email_hash()
        assert touchpoint.properties["message_id"].startswith("14c5d75ce93")
    opened = by_id[email_event_id("sendgrid", "sg-event-4")]
    assert opened.campaign == {"name": "autumn-sale", "medium": "email"}
    assert opened.context["ip"] == "203.0.113.0"  # truncated like any client's IP
    assert by_id[email_event_id("sendgrid", "sg-event-5")].properties["proxied_open"] == "machine"
    clicked = by_id[email_event_id("sendgrid", "sg-event-6")]
    assert clicked.campaign == {"source": "news", "medium": "email", "name": "autumn-26"}
    assert clicked.properties["url"].startswith("https://shop.example.com/autumn")
    bounced = by_id[email_event_id("sendgrid", "sg-event-7")]
    assert bounced.properties["bounce_type"] == "bounce"
    assert (
        ADA not in bounced.properties["reason"] and "unknown user" in bounced.properties["reason"]
    )
    assert ADA.lower() not in orjson.dumps([t.to_wire() for t in publisher.touchpoints]).decode()


async def test_sendgrid_retry_of_a_batch_is_the_same_touchpoints(
    client: TestClient[Any, Any], publisher: MemoryPublisher
) -> None:
    body = orjson.dumps([sendgrid_event("delivered", 1), sendgrid_event("open", 2)])
    for _ in range(2):
        response = await client.post(
            "/v1/email/sendgrid", data=body, headers=sendgrid_headers(body)
        )
        assert response.status == 200
    first, second = publisher.touchpoints[:2], publisher.touchpoints[2:]
    assert [t.event_id for t in first] == [t.event_id for t in second]


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ("body", "X-Twilio-Email-Event-Webhook-Signature does not match this request"),
        ("stamp", "X-Twilio-Email-Event-Webhook-Timestamp is more than 300 s away from our clock"),
        ("missing", "X-Twilio-Email-Event-Webhook-Signature and"),
    ],
)
async def test_sendgrid_forged_or_replayed_batch_is_refused_401(
    client: TestClient[Any, Any], publisher: MemoryPublisher, change: str, reason: str
) -> None:
    body = orjson.dumps([sendgrid_event("delivered", 1)])
    headers = sendgrid_headers(body, int(time.time()) - 3600 if change == "stamp" else None)
    sent = body.replace(b"delivered", b"bounce") if change == "body" else body
    if change == "missing":
        del headers["X-Twilio-Email-Event-Webhook-Signature"]

    response = await client.post("/v1/email/sendgrid", data=sent, headers=headers)

    assert response.status == 401
    assert (await response.json())["error"].startswith(reason)
    assert publisher.touchpoints == [] and publisher.dead_letters == []


async def test_sendgrid_bad_event_is_refused_alone_with_its_field_and_kept_redacted(
    client: TestClient[Any, Any], publisher: MemoryPublisher
) -> None:
    events = [
        sendgrid_event("delivered", 1),
        sendgrid_event("open", 2, timestamp=253402300799),  # the year 9999
        sendgrid_event("click", 3, email="not an address"),
        {k: v for k, v in sendgrid_event("open", 4).items() if k != "sg_event_id"},
    ]
    body = orjson.dumps(events)

    response = await client.post("/v1/email/sendgrid", data=body, headers=sendgrid_headers(body))

    assert response.status == 400
    answer = await response.json()
    assert answer["accepted"] == 1
    assert [e["field"] for e in answer["errors"]] == [
        "[1].timestamp",
        "[3].sg_event_id",
        "[2].email",
    ]
    assert "ahead of the server's clock" in answer["errors"][0]["reason"]
    assert [t.event_id for t in publisher.touchpoints] == [email_event_id("sendgrid", "sg-event-1")]
    assert len(publisher.dead_letters) == 3
    assert all(ADA not in d.payload for d in publisher.dead_letters)


async def test_sendgrid_not_configured_answers_503_naming_the_variable(
    publisher: MemoryPublisher, tmp_path: Path
) -> None:
    settings = email_settings(tmp_path, TRACKER_SENDGRID_WEBHOOK_PUBLIC_KEY="")
    async with TestClient(TestServer(create_app(settings, publisher))) as client:
        body = orjson.dumps([sendgrid_event("delivered", 1)])
        response = await client.post(
            "/v1/email/sendgrid", data=body, headers=sendgrid_headers(body)
        )
        assert response.status == 503
        assert "TRACKER_SENDGRID_WEBHOOK_PUBLIC_KEY" in (await response.json())["error"]


# -- Mailgun -------------------------------------------------------------------------------------


def mailgun_event(event: str, n: int, **fields: Any) -> dict[str, Any]:
    return {
        "id": f"mg-{n}",
        "event": event,
        "timestamp": time.time() - 60,
        "recipient": ADA,
        "tags": ["welcome"],
        "message": {"headers": {"message-id": "20261122100000.1.ABC@mg.example.com"}},
        **fields,
    }


@pytest.mark.parametrize(
    ("event", "fields", "expected"),
    [
        ("accepted", {}, "email_sent"),
        ("delivered", {"delivery-status": {"code": 250, "message": "OK"}}, "email_delivered"),
        ("opened", {"client-info": {"user-agent": IPHONE}}, "email_open"),
        ("opened", {"client-info": {"user-agent": APPLE_PROXY}}, "email_proxy_open"),
        ("clicked", {"url": "https://shop.example.com/?utm_campaign=spring"}, "email_click"),
        ("failed", {"severity": "permanent", "reason": "bounce"}, "email_bounce"),
        ("failed", {"severity": "temporary", "reason": "generic"}, "email_deferred"),
        ("failed", {"severity": "permanent", "reason": "suppress-bounce"}, "email_dropped"),
        ("rejected", {}, "email_dropped"),
        ("complained", {}, "email_spam_report"),
        ("unsubscribed", {}, "email_unsubscribe"),
    ],
)
async def test_mailgun_signed_event_is_mapped(
    client: TestClient[Any, Any],
    publisher: MemoryPublisher,
    event: str,
    fields: dict[str, Any],
    expected: str,
) -> None:
    response = await client.post(
        "/v1/email/mailgun",
        data=mailgun_body(mailgun_event(event, 1, **fields)),
        headers={"Content-Type": "application/json"},
    )

    assert response.status == 200 and await response.json() == {"accepted": 1}
    [touchpoint] = publisher.touchpoints
    assert touchpoint.type == expected
    assert touchpoint.event_id == email_event_id("mailgun", "mg-1")
    assert touchpoint.email_hash == email_hash()
    assert touchpoint.properties["message_id"] == "20261122100000.1.ABC@mg.example.com"
    if expected == "email_proxy_open":
        assert touchpoint.properties["proxied_open"] == "apple"
    if expected == "email_click":
        assert touchpoint.campaign == {"name": "spring", "medium": "email"}
    else:
        assert touchpoint.campaign == {"name": "welcome", "medium": "email"}


async def test_mailgun_stored_event_is_acknowledged_and_ignored(
    client: TestClient[Any, Any], publisher: MemoryPublisher
) -> None:
    response = await client.post("/v1/email/mailgun", data=mailgun_body(mailgun_event("stored", 1)))
    assert response.status == 200 and await response.json() == {"accepted": 0, "ignored": 1}
    assert publisher.touchpoints == []


# Bodies are made when the test runs, not when it is collected: they are signed with the clock.
@pytest.mark.parametrize(
    ("make_body", "reason"),
    [
        (
            lambda: mailgun_body(mailgun_event("delivered", 1), key="another-key"),
            "signature.signature does not match",
        ),
        (
            lambda: mailgun_body(mailgun_event("delivered", 1), stamp=int(time.time()) - 3600),
            "signature.timestamp is more than",
        ),
        (lambda: b"event=delivered", "not a signed Mailgun JSON webhook"),
    ],
)
async def test_mailgun_forged_or_stale_event_is_refused_401(
    client: TestClient[Any, Any],
    publisher: MemoryPublisher,
    make_body: Callable[[], bytes],
    reason: str,
) -> None:
    response = await client.post("/v1/email/mailgun", data=make_body())
    assert response.status == 401
    assert (await response.json())["error"].startswith(reason)
    assert publisher.touchpoints == [] and publisher.dead_letters == []


async def test_mailgun_event_without_recipient_is_400_and_a_dead_letter(
    client: TestClient[Any, Any], publisher: MemoryPublisher
) -> None:
    event = mailgun_event("delivered", 1)
    del event["recipient"]
    response = await client.post("/v1/email/mailgun", data=mailgun_body(event))
    assert response.status == 400
    assert (await response.json())["errors"] == [
        {"field": "event-data.recipient", "reason": "is required"}
    ]
    [letter] = publisher.dead_letters
    assert letter.source == "email" and "mg-1" in letter.payload


# -- Postmark ------------------------------------------------------------------------------------


POSTMARK_EVENTS: list[tuple[dict[str, Any], str]] = [
    ({"RecordType": "Delivery", "Recipient": ADA, "DeliveredAt": "2026-11-22T10:00:01.9070259Z"}, "email_delivered"),
    ({"RecordType": "Bounce", "ID": 4323372036854775807, "Type": "HardBounce", "Email": ADA, "BouncedAt": "2026-11-22T10:00:02Z", "Description": "The server was unable to deliver your message"}, "email_bounce"),
    ({"RecordType": "Bounce", "ID": 77, "Type": "AutoResponder", "Email": ADA, "BouncedAt": "2026-11-22T10:00:02Z"}, ""),
    ({"RecordType": "SpamComplaint", "ID": 78, "Type": "SpamComplaint", "Email": ADA, "BouncedAt": "2026-11-22T10:00:03Z"}, "email_spam_report"),
    ({"RecordType": "Open", "Recipient": ADA, "ReceivedAt": "2026-11-22T10:00:04Z", "FirstOpen": True, "UserAgent": GMAIL_PROXY}, "email_proxy_open"),
    ({"RecordType": "Open", "Recipient": ADA, "ReceivedAt": "2026-11-22T10:00:05Z", "FirstOpen": False, "UserAgent": IPHONE}, "email_open"),
    ({"RecordType": "Click", "Recipient": ADA, "ReceivedAt": "2026-11-22T10:00:06Z", "OriginalLink": "https://shop.example.com/"}, "email_click"),
    ({"RecordType": "SubscriptionChange", "Recipient": ADA, "ChangedAt": "2026-11-22T10:00:07Z", "SuppressSending": True, "SuppressionReason": "ManualSuppression"}, "email_unsubscribe"),
    ({"RecordType": "SubscriptionChange", "Recipient": ADA, "ChangedAt": "2026-11-22T10:00:08Z", "SuppressSending": False}, "email_resubscribe"),
]  # fmt: skip


@pytest.mark.parametrize(("record", "expected"), POSTMARK_EVENTS)
async def test_postmark_event_with_its_basic_credentials_is_mapped(
    client: TestClient[Any, Any], publisher: MemoryPublisher, record: dict[str, Any], expected: str
) -> None:
    body = orjson.dumps(
        {"MessageID": "883953f4-6105-42a2-a16a-77a8eac79483", "Tag": "onboarding", **record}
    )
    response = await client.post("/v1/email/postmark", data=body, headers=postmark_headers())
    assert response.status == 200
    if not expected:
        assert await response.json() == {"accepted": 0, "ignored": 1}
        return
    [touchpoint] = publisher.touchpoints
    assert touchpoint.type == expected
    assert touchpoint.email_hash == email_hash()
    assert touchpoint.campaign == {"name": "onboarding", "medium": "email"}
    assert touchpoint.properties["message_id"] == "883953f4-6105-42a2-a16a-77a8eac79483"
    if expected == "email_proxy_open":
        assert touchpoint.properties["proxied_open"] == "gmail"


async def test_postmark_wrong_password_is_401_and_bad_time_is_400(
    client: TestClient[Any, Any], publisher: MemoryPublisher
) -> None:
    record = {"RecordType": "Delivery", "MessageID": "m-1", "Recipient": ADA}
    body = orjson.dumps({**record, "DeliveredAt": "2026-11-22T10:00:00Z"})
    refused = await client.post(
        "/v1/email/postmark", data=body, headers=postmark_headers(password="guess")
    )
    assert refused.status == 401
    assert "not the ones configured for postmark" in (await refused.json())["error"]

    bad = orjson.dumps({**record, "DeliveredAt": "yesterday"})
    response = await client.post("/v1/email/postmark", data=bad, headers=postmark_headers())
    assert response.status == 400
    [error] = (await response.json())["errors"]
    assert error["field"] == "DeliveredAt" and "ISO 8601" in error["reason"]
    assert publisher.touchpoints == [] and len(publisher.dead_letters) == 1


# -- Amazon SES through SNS ----------------------------------------------------------------------


def ses_event(
    kind: str, detail: dict[str, Any], destination: list[str] | None = None
) -> dict[str, Any]:
    event: dict[str, Any] = {
        "eventType": kind,
        "mail": {
            "timestamp": now_iso(timedelta(minutes=-5)),
            "messageId": "0100018c-ses-message-id",
            "destination": destination or [ADA],
            "tags": {"campaign": ["winter"], "ses:configuration-set": ["marketing"]},
        },
    }
    if detail:
        event[kind[0].lower() + kind[1:]] = detail
    return event


SES_EVENTS: list[tuple[dict[str, Any], list[str]]] = [
    (ses_event("Send", {}), ["email_sent"]),
    (ses_event("Delivery", {"timestamp": now_iso(), "recipients": [ADA], "smtpResponse": "250 ok"}), ["email_delivered"]),
    (ses_event("Bounce", {"timestamp": now_iso(), "bounceType": "Permanent", "bounceSubType": "General", "bouncedRecipients": [{"emailAddress": ADA}, {"emailAddress": "bob@example.com"}]}, [ADA, "bob@example.com"]), ["email_bounce", "email_bounce"]),
    (ses_event("Complaint", {"timestamp": now_iso(), "complainedRecipients": [{"emailAddress": ADA}], "complaintFeedbackType": "abuse"}), ["email_spam_report"]),
    (ses_event("Reject", {"reason": "Bad content"}), ["email_dropped"]),
    (ses_event("DeliveryDelay", {"timestamp": now_iso(), "delayType": "MailboxFull", "delayedRecipients": [{"emailAddress": ADA}]}), ["email_deferred"]),
    (ses_event("Open", {"timestamp": now_iso(), "userAgent": APPLE_PROXY, "ipAddress": "17.58.0.1"}), ["email_proxy_open"]),
    (ses_event("Click", {"timestamp": now_iso(), "link": "https://shop.example.com/", "userAgent": IPHONE}), ["email_click"]),
    (ses_event("Subscription", {"timestamp": now_iso(), "newTopicPreferences": {"unsubscribeAll": True}}), ["email_unsubscribe"]),
]  # fmt: skip


@pytest.mark.parametrize(("event", "expected"), SES_EVENTS)
async def test_ses_notification_signed_by_sns_is_mapped(
    client: TestClient[Any, Any],
    publisher: MemoryPublisher,
    event: dict[str, Any],
    expected: list[str],
) -> None:
    response = await client.post("/v1/email/ses", data=ses_notification(event))
    assert response.status == 200, await response.text()
    assert [t.type for t in publisher.touchpoints] == expected
    first = publisher.touchpoints[0]
    assert first.email_hash == email_hash()
    assert first.campaign == {"name": "winter", "medium": "email"}
    assert first.properties["message_id"] == "0100018c-ses-message-id"
    if len(expected) == 2:
        assert publisher.touchpoints[1].email_hash == email_hash("bob@example.com")
        assert len({t.event_id for t in publisher.touchpoints}) == 2


async def test_ses_signature_version_2_is_verified_with_sha256(
    client: TestClient[Any, Any], publisher: MemoryPublisher
) -> None:
    body = ses_notification(ses_event("Send", {}), version="2")
    assert (await client.post("/v1/email/ses", data=body)).status == 200
    assert [t.type for t in publisher.touchpoints] == ["email_sent"]


def _forged(change: str) -> bytes:
    event = orjson.dumps(ses_event("Send", {})).decode()
    if change == "topic":
        return orjson.dumps(sns_message(Message=event, topic="arn:aws:sns:eu-west-1:666:evil"))
    message = sns_message(Message=event)
    if change == "message":
        message["Message"] = event.replace("Send", "Bounce")
    elif change == "host":
        message["SigningCertURL"] = (
            f"https://sns.eu-west-1.amazonaws.com.evil.example/{SNS_CERT_NAME}"
        )
    elif change == "unknown_cert":
        message["SigningCertURL"] = (
            "https://sns.eu-west-1.amazonaws.com/SimpleNotificationService-new.pem"
        )
    return orjson.dumps(message)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ("message", "Signature does not match this message"),
        ("topic", "TopicArn is not one of TRACKER_SES_SNS_TOPIC_ARNS"),
        ("host", "SigningCertURL must be https://sns.<region>.amazonaws.com/"),
        (
            "unknown_cert",
            "no certificate SimpleNotificationService-new.pem in TRACKER_SES_SNS_CERTIFICATES",
        ),
    ],
)
async def test_ses_forged_message_is_refused_401(
    client: TestClient[Any, Any], publisher: MemoryPublisher, change: str, reason: str
) -> None:
    response = await client.post("/v1/email/ses", data=_forged(change))
    assert response.status == 401
    assert (await response.json())["error"].startswith(reason)
    assert publisher.touchpoints == [] and publisher.dead_letters == []


async def test_sns_subscription_confirmation_is_kept_for_an_operator_not_fetched(
    client: TestClient[Any, Any], publisher: MemoryPublisher
) -> None:
    subscribe = (
        "https://sns.eu-west-1.amazonaws.com/?Action=ConfirmSubscription"
        f"&TopicArn={SES_TOPIC}&Token=2336412f37fb687f5d51e6e2425"
    )
    body = orjson.dumps(
        sns_message(
            "SubscriptionConfirmation",
            Message=f"You have chosen to subscribe to the topic {SES_TOPIC}.",
            SubscribeURL=subscribe,
            Token="2336412f37fb687f5d51e6e2425",
        )
    )
    response = await client.post("/v1/email/ses", data=body)
    assert response.status == 200
    assert await response.json() == {"accepted": 0, "subscription": "awaiting confirmation"}
    [letter] = publisher.dead_letters
    assert (letter.source, letter.stage) == ("email", "confirm")
    assert orjson.loads(letter.payload)["SubscribeURL"] == subscribe
    assert "awaits confirmation" in letter.reason


async def test_ses_notification_with_unreadable_message_is_400_naming_it(
    client: TestClient[Any, Any], publisher: MemoryPublisher
) -> None:
    body = orjson.dumps(sns_message(Message="{not json"))
    response = await client.post("/v1/email/ses", data=body)
    assert response.status == 400
    [error] = (await response.json())["errors"]
    assert error["field"] == "Message" and "not valid JSON" in error["reason"]
    assert len(publisher.dead_letters) == 1


async def test_unknown_provider_is_404(client: TestClient[Any, Any]) -> None:
    response = await client.post("/v1/email/mailchimp", data=b"{}")
    assert response.status == 404
    assert "mailgun, postmark, sendgrid, ses" in (await response.json())["error"]


# -- rules ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("agent", "machine", "expected"),
    [
        (APPLE_PROXY, False, "apple"),
        (GMAIL_PROXY, False, "gmail"),
        (
            "Mozilla/5.0 (compatible; YahooMailProxy; https://help.yahoo.com/kb/yahoo-mail-proxy-SLN28749.html)",
            False,
            "yahoo",
        ),
        (IPHONE, True, "machine"),
        (IPHONE, False, ""),
        ("", False, ""),
    ],
)
def test_opens_by_privacy_proxies_are_told_from_a_persons(
    agent: str, machine: bool, expected: str
) -> None:
    assert proxied_open(agent, machine) == expected


def test_bounces_spam_reports_and_unsubscribes_are_frictions_and_opens_are_not() -> None:
    at = datetime(2026, 11, 22, 10, tzinfo=UTC)
    events = [
        JourneyEvent(f"e{i}", at + timedelta(minutes=i), kind, channel="email")
        for i, kind in enumerate(
            [
                "email_delivered",
                "email_open",
                "email_bounce",
                "email_spam_report",
                "email_unsubscribe",
            ]
        )
    ]
    found = {(f.reason, f.event_id) for f in frictions(events, [])}
    assert found == {
        ("email_bounce", "e2"),
        ("email_spam_report", "e3"),
        ("email_unsubscribe", "e4"),
    }


def test_email_settings_default_and_read() -> None:
    defaults = Settings.from_env({})
    assert defaults.email_port == 8004 and defaults.ses_sns_topic_arns == ()
    assert not defaults.sendgrid_webhook_public_key
    configured = Settings.from_env(
        {"TRACKER_EMAIL_PORT": "9004", "TRACKER_SES_SNS_TOPIC_ARNS": " a , b ,"}
    )
    assert configured.email_port == 9004 and configured.ses_sns_topic_arns == ("a", "b")
