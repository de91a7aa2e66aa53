"""Vonage Voice API event webhooks, signed with a JWT.

Vonage sends ``Authorization: Bearer <JWT>``, HS256-signed with the account's signature secret.
Its ``payload_hash`` claim is the hex SHA-256 of the body, which binds the token to the body.
"""

from __future__ import annotations

import hashlib
from typing import Any

import jwt

from collectors.calls._common import (
    MAX_STRING_LENGTH,
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
from collectors.calls.transcripts import transcript_callback
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
    if "speech" in data or "channels" in data or text(data, "type") == "transcription":
        return [_transcript(data, request, settings)]
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


def _transcript(data: dict[str, Any], request: WebhookRequest, settings: Settings) -> CallCallback:
    """What a caller said: the speech recognized by an ``input`` action (its best result), or a
    recording's transcription document (``channels[].transcript[].sentence``) posted with the
    call's ``conversation_uuid``. The bare "transcription ready" notice carries no text."""
    require(data, "conversation_uuid")
    conversation = text(data, "conversation_uuid")
    if "speech" in data:
        speech = data["speech"]
        results = speech.get("results") if isinstance(speech, dict) else None
        if not isinstance(results, list) or not all(isinstance(r, dict) for r in results):
            raise Malformed([FieldError("speech.results", "must be a list of results")])
        if not results:
            raise Ignored("speech input without a result carries no text")
        texts = [text(results[0], "text", at="speech.results.0", limit=MAX_STRING_LENGTH)]
        callback_id = f"{text(data, 'uuid')}:speech:{text(data, 'timestamp')}"
    elif "channels" in data:
        channels = data["channels"]
        if not isinstance(channels, list) or not all(isinstance(c, dict) for c in channels):
            raise Malformed([FieldError("channels", "must be a list of channels")])
        texts = []
        for c, channel in enumerate(channels):
            sentences = channel.get("transcript") or []
            if not isinstance(sentences, list) or not all(isinstance(s, dict) for s in sentences):
                raise Malformed([FieldError(f"channels.{c}.transcript", "must be a list")])
            texts.extend(
                text(s, "sentence", at=f"channels.{c}.transcript.{i}", limit=MAX_STRING_LENGTH)
                for i, s in enumerate(sentences)
            )
        recording = text(data, "recording_uuid") or text(data, "uuid")
        callback_id = f"{conversation}:transcription:{recording}"
    else:
        raise Ignored(
            "a transcription is ready: Tracker takes the transcription document, posted with "
            "conversation_uuid (docs/calls.md)"
        )
    return transcript_callback(
        settings,
        provider="vonage",
        call_id=conversation,
        leg_id=text(data, "uuid"),
        callback_id=callback_id,
        texts=texts,
        event_ts=iso_time(data, "timestamp", request) or request.received_ts,
        received_ts=request.received_ts,
    )


PROVIDER = Provider("vonage", authenticate, normalize)
