"""Vonage Voice API event webhooks, signed with a JWT.

Vonage sends ``Authorization: Bearer <JWT>``, HS256-signed with the account's signature secret.
Its ``payload_hash`` claim is the hex SHA-256 of the body, which binds the token to the body.
"""

from __future__ import annotations

import hashlib

import jwt

from collectors.calls._common import (
    Ignored,
    Malformed,
    Provider,
    Unauthorized,
    WebhookRequest,
    iso_time,
    numbers,
    require,
    same,
    seconds,
    secret_or_refuse,
    text,
)
from collectors.calls.records import CallCallback
from tracker.errors import FieldError
from tracker.settings import Settings

__all__ = ["PROVIDER"]

_STATUS = {
    "started": "initiated",
    "ringing": "ringing",
    "answered": "answered",
    "human": "answered",
    "machine": "voicemail",
    "busy": "busy",
    "cancelled": "canceled",
    "unanswered": "no-answer",
    "timeout": "no-answer",
    "rejected": "failed",
    "failed": "failed",
    "disconnected": "completed",
    "completed": "completed",
}
_NOT_PROGRESS = {"transfer", "input", "record", "request"}


def authenticate(request: WebhookRequest, settings: Settings) -> None:
    secret = secret_or_refuse(
        settings.vonage_signature_secret, "vonage", "TRACKER_VONAGE_SIGNATURE_SECRET"
    )
    scheme, _, token = request.header("Authorization").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("Authorization: Bearer <JWT> is missing")
    try:
        claims = jwt.decode(
            token.strip(),
            secret,
            algorithms=["HS256"],
            options={"require": ["iat", "payload_hash"], "verify_aud": False},
            leeway=settings.call_signature_tolerance_seconds,
        )
    except jwt.InvalidTokenError as exc:
        raise Unauthorized(f"the JWT is not valid: {exc}") from None
    if not same(hashlib.sha256(request.body).hexdigest(), str(claims["payload_hash"])):
        raise Unauthorized("the JWT's payload_hash does not match the body")


def normalize(request: WebhookRequest, settings: Settings) -> list[CallCallback]:
    data = request.json_object()
    raw_status = text(data, "status")
    if raw_status in _NOT_PROGRESS:
        raise Ignored(f"a {raw_status} event says nothing about the call's progress")
    require(data, "uuid", "conversation_uuid", "status")
    status = _STATUS.get(raw_status)
    if status is None:
        raise Malformed([FieldError("status", f"is not a Vonage call status: {raw_status!r}")])
    event_ts = iso_time(data, "timestamp", request) or request.received_ts
    direction = (
        text(data, "direction") if text(data, "direction") in ("inbound", "outbound") else ""
    )
    parties = numbers(direction, text(data, "from"), text(data, "to"), settings)
    leg = text(data, "uuid")
    return [
        CallCallback(
            provider="vonage",
            call_id=text(data, "conversation_uuid"),
            leg_id=leg,
            callback_id=f"{leg}:{raw_status}:{text(data, 'timestamp')}",
            status=status,
            event_ts=event_ts,
            received_ts=request.received_ts,
            direction=direction,
            caller_hash=parties.caller_hash,
            called_hash=parties.called_hash,
            tracking_number=parties.tracking_number,
            started_at=iso_time(data, "start_time", request),
            answered_at=event_ts if status == "answered" else None,
            ended_at=iso_time(data, "end_time", request),
            talk_seconds=seconds(data, "duration") if status == "completed" else None,
        )
    ]


PROVIDER = Provider("vonage", authenticate, normalize)
