"""Plivo voice callbacks, signed with signature V3.

``X-Plivo-Signature-V3`` is base64 HMAC-SHA256, keyed by the auth token, over
``<url>.<nonce>``, where for a POST the URL is the callback URL (its own query sorted), then
``?`` (and ``.`` after a query), then every form parameter as name and value, sorted by name.
``X-Plivo-Signature-V3-Nonce`` is the nonce; the header may list several signatures.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from urllib.parse import parse_qs, urlsplit, urlunsplit

from collectors.calls._common import (
    Malformed,
    Provider,
    Unauthorized,
    WebhookRequest,
    iso_time,
    numbers,
    same,
    seconds,
    secret_or_refuse,
    single,
    text,
)
from collectors.calls.records import CallCallback
from tracker.errors import FieldError
from tracker.settings import Settings

__all__ = ["PROVIDER", "signed_url"]

_STATUS = {
    "ringing": "ringing",
    "in-progress": "answered",
    "completed": "completed",
    "busy": "busy",
    "failed": "failed",
    "timeout": "no-answer",
    "no-answer": "no-answer",
    "cancel": "canceled",
}
_HANGUP_BY = {"Caller": "caller", "Callee": "callee"}


def signed_url(url: str, params: dict[str, list[str]]) -> str:
    parts = urlsplit(url)
    base = urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))
    query = parse_qs(parts.query, keep_blank_values=True)
    sorted_query = "&".join(
        f"{name}={value}" for name in sorted(query) for value in sorted(query[name])
    )
    if sorted_query or params:
        base += "?" + sorted_query
    if sorted_query and params:
        base += "."
    return base + "".join(name + value for name in sorted(params) for value in sorted(params[name]))


def authenticate(request: WebhookRequest, settings: Settings) -> None:
    token = secret_or_refuse(settings.plivo_auth_token, "plivo", "TRACKER_PLIVO_AUTH_TOKEN")
    signatures = request.header("X-Plivo-Signature-V3")
    nonce = request.header("X-Plivo-Signature-V3-Nonce")
    if not signatures or not nonce:
        raise Unauthorized("X-Plivo-Signature-V3 and X-Plivo-Signature-V3-Nonce are required")
    params = request.form() if request.method == "POST" else {}
    message = f"{signed_url(request.url, params)}.{nonce}".encode()
    expected = base64.b64encode(hmac.new(token.encode(), message, hashlib.sha256).digest())
    if not any(same(expected, s.strip()) for s in signatures.split(",")):
        raise Unauthorized("X-Plivo-Signature-V3 does not match this request")


def normalize(request: WebhookRequest, settings: Settings) -> list[CallCallback]:
    data = single(request.form())
    call_uuid, raw_status = text(data, "CallUUID"), text(data, "CallStatus")
    if not call_uuid or not raw_status:
        raise Malformed(
            [FieldError(n, "is required") for n in ("CallUUID", "CallStatus") if not text(data, n)]
        )
    status = _STATUS.get(raw_status)
    if status is None:
        raise Malformed([FieldError("CallStatus", f"is not a Plivo call status: {raw_status!r}")])
    if status == "completed" and text(data, "Machine").lower() == "true":
        status = "voicemail"
    a_leg = text(data, "ALegUUID")
    is_b_leg = bool(a_leg) and a_leg != call_uuid
    direction = "" if is_b_leg else text(data, "Direction")
    direction = direction if direction in ("inbound", "outbound") else ""
    parties = numbers(direction, text(data, "From"), text(data, "To"), settings)
    answered_at = iso_time(data, "AnswerTime", request)
    ended_at = iso_time(data, "EndTime", request)
    event_ts = (
        ended_at or answered_at or iso_time(data, "StartTime", request) or request.received_ts
    )
    return [
        CallCallback(
            provider="plivo",
            call_id=a_leg or call_uuid,
            leg_id=call_uuid,
            callback_id=f"{call_uuid}:{text(data, 'Event')}:{raw_status}",
            status=status,
            event_ts=event_ts,
            received_ts=request.received_ts,
            direction=direction,
            caller_hash="" if is_b_leg else parties.caller_hash,
            called_hash="" if is_b_leg else parties.called_hash,
            tracking_number="" if is_b_leg else parties.tracking_number,
            started_at=iso_time(data, "StartTime", request),
            answered_at=answered_at or (event_ts if status == "answered" else None),
            ended_at=ended_at,
            talk_seconds=seconds(data, "BillDuration") if answered_at else None,
            hangup_by=_HANGUP_BY.get(text(data, "HangupSource"), ""),
        )
    ]


PROVIDER = Provider("plivo", authenticate, normalize)
