"""Telnyx Call Control webhooks, signed with Ed25519.

Telnyx signs ``"<telnyx-timestamp>|<raw body>"`` with its Ed25519 key and sends the base64
signature in ``telnyx-signature-ed25519``. We check it with the account's public key (base64, from
the Telnyx portal) and refuse timestamps outside the replay window.
"""

from __future__ import annotations

import base64
import binascii
from functools import lru_cache
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from collectors.calls._common import (
    MAX_STRING_LENGTH,
    Ignored,
    Malformed,
    NotConfigured,
    Provider,
    Unauthorized,
    WebhookRequest,
    fresh_timestamp,
    iso_time,
    numbers,
    require,
    secret_or_refuse,
    text,
)
from collectors.calls.records import CallCallback
from collectors.calls.transcripts import transcript_callback
from tracker.errors import FieldError
from tracker.settings import Settings

__all__ = ["PROVIDER"]

_EVENT_STATUS = {
    "call.initiated": "initiated",
    "call.answered": "answered",
    "call.bridged": "answered",
    "call.hangup": "completed",
    "call.recording.saved": "updated",
}
# call.hangup's hangup_cause, for calls that ended without a conversation.
_HANGUP_STATUS = {
    "user_busy": "busy",
    "timeout": "no-answer",
    "no_answer": "no-answer",
    "originator_cancel": "canceled",
    "call_rejected": "failed",
    "unallocated_number": "failed",
    "destination_out_of_order": "failed",
}


@lru_cache(maxsize=4)
def _public_key(encoded: str) -> Ed25519PublicKey:
    try:
        return Ed25519PublicKey.from_public_bytes(base64.b64decode(encoded, validate=True))
    except (binascii.Error, ValueError):
        raise NotConfigured(
            "telnyx", "TRACKER_TELNYX_PUBLIC_KEY (the base64 Ed25519 public key)"
        ) from None


def authenticate(request: WebhookRequest, settings: Settings) -> None:
    key = _public_key(
        secret_or_refuse(settings.telnyx_public_key, "telnyx", "TRACKER_TELNYX_PUBLIC_KEY")
    )
    signature, timestamp = (
        request.header("telnyx-signature-ed25519"),
        request.header("telnyx-timestamp"),
    )
    if not signature or not timestamp:
        raise Unauthorized("telnyx-signature-ed25519 and telnyx-timestamp are required")
    fresh_timestamp(
        timestamp,
        "telnyx-timestamp",
        request.received_ts,
        settings.call_signature_tolerance_seconds,
    )
    try:
        key.verify(base64.b64decode(signature), timestamp.encode() + b"|" + request.body)
    except (InvalidSignature, binascii.Error, ValueError):
        raise Unauthorized("telnyx-signature-ed25519 does not match this request") from None


def normalize(request: WebhookRequest, settings: Settings) -> list[CallCallback]:
    envelope = request.json_object()
    data = envelope.get("data")
    if not isinstance(data, dict):
        raise Malformed([FieldError("data", "is required and must be an object")])
    event_type = text(data, "event_type", at="data")
    if not event_type.startswith("call."):
        raise Ignored(f"{event_type or 'an event without event_type'} is not about a call")
    payload = data.get("payload")
    if not isinstance(payload, dict):
        raise Malformed([FieldError("data.payload", "is required and must be an object")])
    require(data, "id", at="data")
    if not text(payload, "call_session_id", at="data.payload"):
        raise Malformed([FieldError("data.payload.call_session_id", "is required")])
    if event_type == "call.transcription":
        return [_transcription(data, payload, request, settings)]
    status = _EVENT_STATUS.get(event_type, "updated")
    if event_type == "call.hangup":
        status = _HANGUP_STATUS.get(text(payload, "hangup_cause", at="data.payload"), "completed")
    if (
        event_type == "call.machine.detection.ended"
        and text(payload, "result", at="data.payload") == "machine"
    ):
        status = "voicemail"
    event_ts = iso_time(data, "occurred_at", request, at="data") or request.received_ts
    direction = {"incoming": "inbound", "outgoing": "outbound"}.get(
        text(payload, "direction", at="data.payload"), ""
    )
    parties = numbers(
        direction,
        text(payload, "from", at="data.payload"),
        text(payload, "to", at="data.payload"),
        settings,
    )
    return [
        CallCallback(
            provider="telnyx",
            call_id=text(payload, "call_session_id", at="data.payload"),
            leg_id=text(payload, "call_leg_id", at="data.payload")
            or text(payload, "call_control_id", at="data.payload"),
            callback_id=text(data, "id", at="data"),
            status=status,
            event_ts=event_ts,
            received_ts=request.received_ts,
            direction=direction,
            caller_hash=parties.caller_hash,
            called_hash=parties.called_hash,
            tracking_number=parties.tracking_number,
            started_at=iso_time(payload, "start_time", request, at="data.payload"),
            answered_at=event_ts if status == "answered" else None,
            ended_at=iso_time(payload, "end_time", request, at="data.payload"),
            recording=True if event_type == "call.recording.saved" else None,
            hangup_by={"caller": "caller", "callee": "callee"}.get(
                text(payload, "hangup_source", at="data.payload"), ""
            ),
        )
    ]


def _transcription(
    data: dict[str, Any], payload: dict[str, Any], request: WebhookRequest, settings: Settings
) -> CallCallback:
    """A call.transcription event: one utterance, kept once Telnyx calls it final."""
    at = "data.payload.transcription_data"
    transcription = payload.get("transcription_data")
    if not isinstance(transcription, dict):
        raise Malformed([FieldError(at, "is required and must be an object")])
    if transcription.get("is_final") is False:
        raise Ignored("an interim transcription: Tracker keeps the final one")
    return transcript_callback(
        settings,
        provider="telnyx",
        call_id=text(payload, "call_session_id", at="data.payload"),
        leg_id=text(payload, "call_leg_id", at="data.payload"),
        callback_id=text(data, "id", at="data"),
        texts=[text(transcription, "transcript", at=at, limit=MAX_STRING_LENGTH)],
        event_ts=iso_time(data, "occurred_at", request, at="data") or request.received_ts,
        received_ts=request.received_ts,
    )


PROVIDER = Provider("telnyx", authenticate, normalize)
