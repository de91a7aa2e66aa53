"""Any other phone system, through the Standard Webhooks scheme and Tracker's own call format.

Signed content is ``"<webhook-id>.<webhook-timestamp>.<body>"``, HMAC-SHA256 keyed by the base64
part of the ``whsec_...`` secret; ``webhook-signature`` lists ``v1,<base64>`` signatures separated
by spaces. ``webhook-id`` is the idempotency key: a retry reuses it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from typing import Any

from collectors.calls._common import (
    MAX_STRING_LENGTH,
    Malformed,
    NotConfigured,
    Provider,
    Unauthorized,
    WebhookRequest,
    fresh_timestamp,
    iso_time,
    numbers,
    require,
    same,
    seconds,
    secret_or_refuse,
    text,
)
from collectors.calls.records import CALL_STATUSES, MAX_ID_LENGTH, MAX_TRANSFERS, CallCallback
from collectors.calls.transcripts import transcript_callback
from tracker.errors import FieldError
from tracker.settings import Settings

__all__ = ["PROVIDER"]


def _key(secret: str) -> bytes:
    try:
        return base64.b64decode(secret.removeprefix("whsec_"), validate=True)
    except binascii.Error:
        raise NotConfigured(
            "generic", "TRACKER_GENERIC_WEBHOOK_SECRET (whsec_ followed by base64)"
        ) from None


def authenticate(request: WebhookRequest, settings: Settings) -> None:
    key = _key(
        secret_or_refuse(
            settings.generic_webhook_secret, "generic", "TRACKER_GENERIC_WEBHOOK_SECRET"
        )
    )
    msg_id = request.header("webhook-id")
    timestamp = request.header("webhook-timestamp")
    signatures = request.header("webhook-signature")
    if not (msg_id and timestamp and signatures):
        raise Unauthorized("webhook-id, webhook-timestamp and webhook-signature are required")
    fresh_timestamp(
        timestamp,
        "webhook-timestamp",
        request.received_ts,
        settings.call_signature_tolerance_seconds,
    )
    signed = f"{msg_id}.{timestamp}.".encode() + request.body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest())
    for candidate in signatures.split(" "):
        version, _, value = candidate.partition(",")
        if version == "v1" and same(expected, value.encode()):
            return
    raise Unauthorized("webhook-signature does not match this request")


def normalize(request: WebhookRequest, settings: Settings) -> list[CallCallback]:
    data = request.json_object()
    if "transcript" in data:
        return [_transcript(data, request, settings)]
    require(data, "call_id", "status", "timestamp")
    status = text(data, "status")
    if status not in CALL_STATUSES:
        raise Malformed([FieldError("status", f"must be one of {', '.join(CALL_STATUSES)}")])
    direction = text(data, "direction")
    if direction not in ("", "inbound", "outbound"):
        raise Malformed([FieldError("direction", "must be inbound or outbound")])
    event_ts = iso_time(data, "timestamp", request)
    if event_ts is None:  # require() has seen it present; kept for the type checker
        raise Malformed([FieldError("timestamp", "is required")])
    parties = numbers(direction, text(data, "from"), text(data, "to"), settings)
    transfers, kind = _transfers(data.get("transfers"))
    hangup_by = text(data, "hangup_by")
    if hangup_by not in ("", "caller", "callee", "system"):
        raise Malformed([FieldError("hangup_by", "must be caller, callee or system")])
    if len(request.header("webhook-id")) > MAX_ID_LENGTH:
        raise Malformed([FieldError("webhook-id", f"must be at most {MAX_ID_LENGTH} characters")])
    recording = data.get("recording")
    if recording is not None and not isinstance(recording, bool):
        raise Malformed([FieldError("recording", "must be true or false")])
    return [
        CallCallback(
            provider="generic",
            call_id=text(data, "call_id"),
            leg_id=text(data, "leg_id"),
            callback_id=request.header("webhook-id"),
            status=status,
            event_ts=event_ts,
            received_ts=request.received_ts,
            direction=direction,
            caller_hash=parties.caller_hash,
            called_hash=parties.called_hash,
            tracking_number=parties.tracking_number,
            started_at=iso_time(data, "started_at", request),
            answered_at=iso_time(data, "answered_at", request),
            ended_at=iso_time(data, "ended_at", request),
            ring_seconds=seconds(data, "ring_seconds"),
            queue_seconds=seconds(data, "queue_seconds"),
            talk_seconds=seconds(data, "talk_seconds"),
            hold_seconds=seconds(data, "hold_seconds"),
            transfer_ids=transfers,
            transfer_kind=kind,
            queue=text(data, "queue"),
            agent=text(data, "agent"),
            recording=recording,
            hangup_by=hangup_by,
        )
    ]


def _transfers(raw: Any) -> tuple[tuple[str, ...], str]:
    if raw is None:
        return (), ""
    if not isinstance(raw, list) or len(raw) > MAX_TRANSFERS:
        raise Malformed([FieldError("transfers", f"must be a list of at most {MAX_TRANSFERS}")])
    for index, transfer in enumerate(raw):
        if not isinstance(transfer, dict) or transfer.get("kind", "cold") not in ("cold", "warm"):
            raise Malformed(
                [FieldError(f"transfers.{index}", 'must be {"id": ..., "kind": "cold" or "warm"}')]
            )
        require(transfer, "id", at=f"transfers.{index}")
    kinds = {t.get("kind", "cold") for t in raw}
    ids = tuple(text(t, "id", at=f"transfers.{index}") for index, t in enumerate(raw))
    return ids, ("warm" if "warm" in kinds else "cold") if raw else ""


def _transcript(data: dict[str, Any], request: WebhookRequest, settings: Settings) -> CallCallback:
    """``{"call_id", "timestamp", "transcript": "..."}``: what was said in (part of) a call."""
    require(data, "call_id", "timestamp")
    if not isinstance(data["transcript"], str):
        raise Malformed([FieldError("transcript", "must be a string")])
    if len(request.header("webhook-id")) > MAX_ID_LENGTH:
        raise Malformed([FieldError("webhook-id", f"must be at most {MAX_ID_LENGTH} characters")])
    event_ts = iso_time(data, "timestamp", request)
    if event_ts is None:  # require() has seen it present
        raise Malformed([FieldError("timestamp", "is required")])
    return transcript_callback(
        settings,
        provider="generic",
        call_id=text(data, "call_id"),
        leg_id=text(data, "leg_id"),
        callback_id=request.header("webhook-id"),
        texts=[text(data, "transcript", limit=MAX_STRING_LENGTH)],
        event_ts=event_ts,
        received_ts=request.received_ts,
    )


PROVIDER = Provider("generic", authenticate, normalize)
