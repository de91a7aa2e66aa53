"""Twilio call status callbacks (form-encoded, or JSON with ``bodySHA256``), X-Twilio-Signature.

The signature is base64 HMAC-SHA1, keyed by the account's auth token, over the full URL Twilio
requested followed by each form parameter's name and value, sorted by name. For a JSON body the
URL carries ``bodySHA256`` (hex SHA-256 of the body) and only the URL is signed. Twilio is not
consistent about the default port in the signed URL, so both forms are tried.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from typing import Any
from urllib.parse import parse_qs, urlsplit, urlunsplit

from collectors.calls._common import (
    MAX_STRING_LENGTH,
    MAX_URL_LENGTH,
    Ignored,
    Malformed,
    Provider,
    Unauthorized,
    WebhookRequest,
    numbers,
    rfc2822_time,
    same,
    seconds,
    secret_or_refuse,
    single,
    text,
)
from collectors.calls.records import CallCallback
from collectors.calls.transcripts import transcript_callback
from tracker.errors import FieldError
from tracker.settings import Settings

__all__ = ["PROVIDER", "url_variants"]

_STATUS = {
    "queued": "queued",
    "initiated": "initiated",
    "ringing": "ringing",
    "in-progress": "answered",
    "answered": "answered",
    "completed": "completed",
    "busy": "busy",
    "no-answer": "no-answer",
    "canceled": "canceled",
    "failed": "failed",
}


def url_variants(url: str) -> tuple[str, str]:
    """The URL without, and with, the scheme's default port (unless it names another port)."""
    parts = urlsplit(url)
    if parts.port:
        without = parts._replace(netloc=parts.netloc.rsplit(":", 1)[0])
        return urlunsplit(without), url
    port = 443 if parts.scheme == "https" else 80
    return url, urlunsplit(parts._replace(netloc=f"{parts.netloc}:{port}"))


def _signature(token: bytes, url: str, params: dict[str, list[str]]) -> str:
    signed = url + "".join(
        name + value for name in sorted(params) for value in sorted(set(params[name]))
    )
    return base64.b64encode(hmac.new(token, signed.encode(), hashlib.sha1).digest()).decode()


def authenticate(request: WebhookRequest, settings: Settings) -> None:
    token = secret_or_refuse(
        settings.twilio_auth_token, "twilio", "TRACKER_TWILIO_AUTH_TOKEN"
    ).encode()
    signature = request.header("X-Twilio-Signature")
    if not signature:
        raise Unauthorized("X-Twilio-Signature is missing")
    params: dict[str, list[str]] = {}
    if request.is_json:
        claimed = parse_qs(urlsplit(request.url).query).get("bodySHA256", [""])[0]
        if not claimed:
            raise Unauthorized("a JSON callback must carry bodySHA256 in its URL")
        if not same(hashlib.sha256(request.body).hexdigest(), claimed):
            raise Unauthorized("bodySHA256 does not match the body")
    else:
        params = request.form()
    if not any(same(_signature(token, u, params), signature) for u in url_variants(request.url)):
        raise Unauthorized("X-Twilio-Signature does not match this request")


def normalize(request: WebhookRequest, settings: Settings) -> list[CallCallback]:
    data = request.json_object() if request.is_json else single(request.form())
    if "TranscriptionSid" in data or "TranscriptionStatus" in data:
        return [_transcription(data, request, settings)]
    if "sentences" in data:
        return [_sentences(data, request, settings)]
    if "transcript_sid" in data and not text(data, "CallSid"):
        raise Ignored(
            "a Voice Intelligence transcript is ready: Tracker takes its sentences, "
            "posted with CallSid (docs/calls.md)"
        )
    call_sid = text(data, "CallSid")
    if not call_sid:
        raise Malformed([FieldError("CallSid", "is required")])
    raw_status = text(data, "CallStatus")
    recording = (
        bool(text(data, "RecordingSid") or text(data, "RecordingUrl", limit=MAX_URL_LENGTH)) or None
    )
    if raw_status:
        status = _STATUS.get(raw_status)
        if status is None:
            raise Malformed(
                [FieldError("CallStatus", f"is not a Twilio call status: {raw_status!r}")]
            )
    elif recording:
        status = "updated"  # a recording status callback
    else:
        raise Malformed([FieldError("CallStatus", "is required")])
    if status == "completed" and text(data, "AnsweredBy").startswith("machine"):
        status = "voicemail"

    parent = text(data, "ParentCallSid")
    event_ts = rfc2822_time(data, "Timestamp", request) or request.received_ts
    # A child leg (a <Dial>ed agent, say) is part of its parent's call: the parent's direction
    # and numbers describe the call, the child adds its progress.
    direction = "" if parent else _direction(text(data, "Direction"))
    parties = numbers(direction, text(data, "From"), text(data, "To"), settings)
    sequence = text(data, "SequenceNumber") or text(data, "Timestamp")
    return [
        CallCallback(
            provider="twilio",
            call_id=parent or call_sid,
            leg_id=call_sid,
            callback_id=f"{call_sid}:{raw_status or 'recording:' + text(data, 'RecordingSid')}:{sequence}",
            status=status,
            event_ts=event_ts,
            received_ts=request.received_ts,
            direction=direction,
            caller_hash="" if parent else parties.caller_hash,
            called_hash="" if parent else parties.called_hash,
            tracking_number="" if parent else parties.tracking_number,
            answered_at=event_ts if status == "answered" else None,
            ended_at=event_ts if status in ("completed", "voicemail") else None,
            talk_seconds=seconds(data, "CallDuration"),
            queue_seconds=seconds(data, "QueueTime"),
            queue=text(data, "QueueSid"),
            recording=recording,
        )
    ]


def _transcription(
    data: dict[str, Any], request: WebhookRequest, settings: Settings
) -> CallCallback:
    """A <Record transcribe> transcription callback: its text, or nothing when it failed."""
    call_sid = text(data, "CallSid")
    if not call_sid:
        raise Malformed([FieldError("CallSid", "is required")])
    status = text(data, "TranscriptionStatus")
    if status != "completed":
        raise Ignored(f"a transcription {status or 'without a status'} carries no text")
    key = text(data, "TranscriptionSid") or text(data, "RecordingSid")
    return transcript_callback(
        settings,
        provider="twilio",
        call_id=call_sid,
        callback_id=f"{call_sid}:transcription:{key}",
        texts=[text(data, "TranscriptionText", limit=MAX_STRING_LENGTH)],
        event_ts=request.received_ts,
        received_ts=request.received_ts,
    )


_TRANSCRIPT_SID = re.compile(r"/Transcripts/(GT[0-9a-fA-F]{32})/")


def _sentences(data: dict[str, Any], request: WebhookRequest, settings: Settings) -> CallCallback:
    """A page of a Voice Intelligence transcript's sentences, as Twilio's Sentences list
    resource returns it; the call is named by CallSid in the signed URL (or customer_key)."""
    query = single(parse_qs(urlsplit(request.url).query))
    call_sid = text(query, "CallSid") or text(data, "customer_key")
    if not call_sid:
        raise Malformed([FieldError("CallSid", "is required in the URL (or customer_key)")])
    sentences = data["sentences"]
    if not isinstance(sentences, list) or not all(isinstance(s, dict) for s in sentences):
        raise Malformed([FieldError("sentences", "must be a list of sentence objects")])
    meta: dict[str, Any] = data["meta"] if isinstance(data.get("meta"), dict) else {}
    found = _TRANSCRIPT_SID.search(text(meta, "url", at="meta", limit=MAX_URL_LENGTH))
    transcript = text(query, "TranscriptSid") or (found.group(1) if found else "")
    ordered = sorted(enumerate(sentences), key=lambda s: (_index(s[1].get("sentence_index")), s[0]))
    return transcript_callback(
        settings,
        provider="twilio",
        call_id=call_sid,
        callback_id=f"{call_sid}:sentences:{transcript}:{text(meta, 'page', at='meta') or '0'}",
        texts=[
            text(s, "transcript", at=f"sentences.{i}", limit=MAX_STRING_LENGTH) for i, s in ordered
        ],
        event_ts=request.received_ts,
        received_ts=request.received_ts,
    )


def _index(raw: Any) -> int:
    return raw if isinstance(raw, int) and not isinstance(raw, bool) else 0


def _direction(raw: str) -> str:
    if raw == "inbound":
        return "inbound"
    if raw.startswith("outbound"):
        return "outbound"
    return ""


PROVIDER = Provider("twilio", authenticate, normalize)
