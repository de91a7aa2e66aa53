"""FreeSWITCH mod_json_cdr: one CDR per leg, POSTed at hangup, with HTTP basic auth.

Configure mod_json_cdr with ``url`` pointing at ``/v1/calls/freeswitch`` and ``cred`` as
``<TRACKER_FREESWITCH_USERNAME>:<TRACKER_FREESWITCH_PASSWORD>``. The body is the CDR as JSON, or,
with ``encode`` on, a form whose ``cdr`` field holds it.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from collectors.calls._common import (
    MAX_URL_LENGTH,
    Malformed,
    NotConfigured,
    Provider,
    Unauthorized,
    WebhookRequest,
    epoch_time,
    json_object,
    numbers,
    same,
    seconds,
    single,
    text,
)
from collectors.calls.records import CallCallback
from tracker.errors import FieldError
from tracker.settings import Settings

__all__ = ["PROVIDER"]

_CAUSE_STATUS = {
    "USER_BUSY": "busy",
    "NO_ANSWER": "no-answer",
    "NO_USER_RESPONSE": "no-answer",
    "ALLOTTED_TIMEOUT": "no-answer",
    "ORIGINATOR_CANCEL": "canceled",
    "CALL_REJECTED": "failed",
    "UNALLOCATED_NUMBER": "failed",
    "NORMAL_TEMPORARY_FAILURE": "failed",
    "DESTINATION_OUT_OF_ORDER": "failed",
}


def authenticate(request: WebhookRequest, settings: Settings) -> None:
    if not settings.freeswitch_username or not settings.freeswitch_password:
        raise NotConfigured(
            "freeswitch", "TRACKER_FREESWITCH_USERNAME", "TRACKER_FREESWITCH_PASSWORD"
        )
    scheme, _, encoded = request.header("Authorization").partition(" ")
    if scheme.lower() != "basic" or not encoded:
        raise Unauthorized("HTTP basic authentication is required")
    try:
        username, _, password = base64.b64decode(encoded, validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        raise Unauthorized("the basic credentials are not base64 user:password") from None
    # Both compared, always, so timing does not tell which one was wrong.
    user_ok = same(username, settings.freeswitch_username)
    password_ok = same(password, settings.freeswitch_password.value)
    if not (user_ok and password_ok):
        raise Unauthorized("the basic credentials do not match")


def _cdr(request: WebhookRequest) -> dict[str, Any]:
    if request.body.lstrip().startswith(b"{"):
        return request.json_object()
    return json_object(single(request.form()).get("cdr", ""), "cdr")


def normalize(request: WebhookRequest, settings: Settings) -> list[CallCallback]:
    cdr = _cdr(request)
    variables = cdr.get("variables")
    if not isinstance(variables, dict):
        raise Malformed([FieldError("variables", "is required and must be an object")])
    leg = text(variables, "uuid", at="variables")
    if not leg:
        raise Malformed([FieldError("variables.uuid", "is required")])
    profile = _caller_profile(cdr)
    channel_data = cdr.get("channel_data")
    direction = text(variables, "direction", at="variables") or (
        text(channel_data, "direction", at="channel_data") if isinstance(channel_data, dict) else ""
    )
    direction = direction if direction in ("inbound", "outbound") else ""
    caller = text(variables, "caller_id_number", at="variables") or text(
        profile, "caller_id_number", at="callflow.caller_profile"
    )
    called = text(variables, "destination_number", at="variables") or text(
        profile, "destination_number", at="callflow.caller_profile"
    )
    parties = numbers(direction, caller, called, settings)
    started = epoch_time(variables, "start_uepoch", request, 1e6, at="variables") or epoch_time(
        variables, "start_epoch", request, at="variables"
    )
    answered = epoch_time(variables, "answer_uepoch", request, 1e6, at="variables") or epoch_time(
        variables, "answer_epoch", request, at="variables"
    )
    ended = epoch_time(variables, "end_uepoch", request, 1e6, at="variables") or epoch_time(
        variables, "end_epoch", request, at="variables"
    )
    cause = text(variables, "hangup_cause", at="variables")
    status = "completed" if answered else _CAUSE_STATUS.get(cause, "completed")
    transfers = _transfers(cdr, leg)
    return [
        CallCallback(
            provider="freeswitch",
            call_id=text(variables, "call_uuid", at="variables")
            or text(variables, "originating_leg_uuid", at="variables")
            or leg,
            leg_id=leg,
            callback_id=f"{leg}:cdr",
            status=status,
            event_ts=ended or started or request.received_ts,
            received_ts=request.received_ts,
            direction=direction,
            caller_hash=parties.caller_hash,
            called_hash=parties.called_hash,
            tracking_number=parties.tracking_number,
            started_at=started,
            answered_at=answered,
            ended_at=ended,
            ring_seconds=seconds(variables, "progresssec", at="variables") if answered else None,
            talk_seconds=seconds(variables, "billsec", at="variables"),
            hold_seconds=seconds(variables, "hold_accum_seconds", at="variables"),
            transfer_ids=transfers,
            transfer_kind=(
                "warm" if text(variables, "att_xfer_peer_uuid", at="variables") else "cold"
            )
            if transfers
            else "",
            queue=text(variables, "cc_queue", at="variables"),
            agent=text(variables, "cc_agent", at="variables"),
            recording=bool(
                text(variables, "record_path", at="variables", limit=MAX_URL_LENGTH)
                or text(variables, "record_file_path", at="variables", limit=MAX_URL_LENGTH)
            )
            or None,
            hangup_by=_hangup_by(
                direction, text(variables, "sip_hangup_disposition", at="variables")
            ),
        )
    ]


def _caller_profile(cdr: dict[str, Any]) -> dict[str, Any]:
    callflow = cdr.get("callflow")
    first = callflow[0] if isinstance(callflow, list) and callflow else callflow
    profile = first.get("caller_profile") if isinstance(first, dict) else None
    return profile if isinstance(profile, dict) else {}


def _transfers(cdr: dict[str, Any], leg: str) -> tuple[str, ...]:
    """Each callflow step entered by a transfer (``times.transfer_time`` set) is one transfer."""
    callflow = cdr.get("callflow")
    steps = callflow if isinstance(callflow, list) else [callflow]
    found = []
    for index, step in enumerate(steps):
        times = step.get("times") if isinstance(step, dict) else None
        if isinstance(times, dict) and str(times.get("transfer_time", "0")) not in ("", "0"):
            found.append(f"{leg}:{index}")
    return tuple(found)


def _hangup_by(direction: str, disposition: str) -> str:
    """Who sent the BYE, from this leg's point of view."""
    if disposition in ("recv_bye", "recv_cancel"):
        return "caller" if direction == "inbound" else "callee"
    if disposition == "send_bye":
        return "callee" if direction == "inbound" else "caller"
    if disposition in ("send_refuse", "send_cancel"):
        return "system"
    return ""


PROVIDER = Provider("freeswitch", authenticate, normalize)
