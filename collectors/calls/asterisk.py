"""Asterisk CDRs, posted by a shipper and signed with HMAC-SHA256.

Asterisk does not sign webhooks itself, so Tracker defines the scheme for the shipper that posts
its CDRs (see docs/calls.md):

    X-Tracker-Timestamp: <unix seconds>
    X-Tracker-Signature: v1=<hex HMAC-SHA256(TRACKER_ASTERISK_SIGNING_SECRET, "<timestamp>.<body>")>

The body is one CDR as a JSON object with Asterisk's CDR field names, times in UTC.
"""

from __future__ import annotations

import hashlib
import hmac

from collectors.calls._common import (
    MAX_URL_LENGTH,
    Malformed,
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
from collectors.calls.records import CallCallback
from tracker.errors import FieldError
from tracker.settings import Settings

__all__ = ["PROVIDER", "SIGNATURE_HEADER", "TIMESTAMP_HEADER", "sign"]

TIMESTAMP_HEADER = "X-Tracker-Timestamp"
SIGNATURE_HEADER = "X-Tracker-Signature"
_DISPOSITION = {
    "ANSWERED": "completed",
    "NO ANSWER": "no-answer",
    "BUSY": "busy",
    "FAILED": "failed",
    "CONGESTION": "failed",
}


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The signature header's value: what a shipper sends, and what we expect."""
    message = str(timestamp).encode() + b"." + body
    return "v1=" + hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def authenticate(request: WebhookRequest, settings: Settings) -> None:
    secret = secret_or_refuse(
        settings.asterisk_signing_secret, "asterisk", "TRACKER_ASTERISK_SIGNING_SECRET"
    )
    timestamp, signatures = request.header(TIMESTAMP_HEADER), request.header(SIGNATURE_HEADER)
    if not timestamp or not signatures:
        raise Unauthorized(f"{TIMESTAMP_HEADER} and {SIGNATURE_HEADER} are required")
    stamp = fresh_timestamp(
        timestamp, TIMESTAMP_HEADER, request.received_ts, settings.call_signature_tolerance_seconds
    )
    expected = sign(secret, stamp, request.body)
    # Several signatures, comma-separated, let a shipper roll its secret without a gap.
    if not any(same(expected, s.strip()) for s in signatures.split(",")):
        raise Unauthorized(f"{SIGNATURE_HEADER} does not match this request")


def normalize(request: WebhookRequest, settings: Settings) -> list[CallCallback]:
    cdr = request.json_object()
    require(cdr, "uniqueid", "start", "disposition")
    raw = text(cdr, "disposition").upper()
    status = _DISPOSITION.get(raw)
    if status is None:
        raise Malformed([FieldError("disposition", f"is not an Asterisk disposition: {raw!r}")])
    direction = text(cdr, "direction") if text(cdr, "direction") in ("inbound", "outbound") else ""
    parties = numbers(direction, text(cdr, "src"), text(cdr, "dst"), settings)
    started, answered, ended = (
        iso_time(cdr, "start", request),
        iso_time(cdr, "answer", request),
        iso_time(cdr, "end", request),
    )
    duration, billsec = seconds(cdr, "duration"), seconds(cdr, "billsec")
    unique = text(cdr, "uniqueid")
    return [
        CallCallback(
            provider="asterisk",
            call_id=text(cdr, "linkedid") or unique,
            leg_id=unique,
            callback_id=f"{unique}:{text(cdr, 'sequence')}",
            status=status,
            event_ts=ended or started or request.received_ts,
            received_ts=request.received_ts,
            direction=direction,
            caller_hash=parties.caller_hash,
            called_hash=parties.called_hash,
            tracking_number=parties.tracking_number,
            started_at=started,
            answered_at=answered if status == "completed" else None,
            ended_at=ended,
            ring_seconds=duration - billsec
            if duration is not None and billsec is not None
            else None,
            talk_seconds=billsec,
            queue=text(cdr, "queue"),
            agent=text(cdr, "agent"),
            recording=bool(text(cdr, "recordingfile", limit=MAX_URL_LENGTH)) or None,
        )
    ]


PROVIDER = Provider("asterisk", authenticate, normalize)
