"""Any other helpdesk or chat tool, through the Standard Webhooks scheme and Tracker's own
support format (docs/helpdesk.md#generic).

The signature is checked by the ``standardwebhooks`` library: HMAC-SHA256 of
``"<webhook-id>.<webhook-timestamp>.<body>"`` keyed by the ``whsec_...`` secret, a timestamp
within five minutes of our clock. ``webhook-id`` is the idempotency key: a retry reuses it.

The body::

    {"type": "ticket.opened", "timestamp": "2026-11-30T10:00:00Z",
     "data": {"id": "T-1001", "tool": "freshdesk",
              "requester": {"email": "ada@example.com", "phone": "+14155550100", "user_id": "u-1"},
              "status": "open", "agent": "a-7", "queue": "billing", "priority": "high",
              "via": "email", "opened_at": "...", "first_reply_at": "...", "solved_at": "...",
              "reopens": 0, "rating": 4}}
"""

from __future__ import annotations

import re
from typing import Final

from standardwebhooks import Webhook, WebhookVerificationError

from collectors.calls._common import (
    Malformed,
    NotConfigured,
    Unauthorized,
    WebhookRequest,
    require,
    secret_or_refuse,
    text,
)
from collectors.helpdesk._common import HelpdeskProvider, obj, rating, requester, when
from collectors.helpdesk.records import KINDS, LIFECYCLE, SupportCallback
from tracker.errors import FieldError
from tracker.settings import Settings

__all__ = ["PROVIDER"]

_TOOL: Final = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")


def authenticate(request: WebhookRequest, settings: Settings) -> None:
    secret = secret_or_refuse(
        settings.helpdesk_webhook_secret, "generic", "TRACKER_HELPDESK_WEBHOOK_SECRET"
    )
    try:
        verifier = Webhook(secret)
    except Exception:  # the library raises bare errors for a secret that is not base64
        raise NotConfigured(
            "generic", "TRACKER_HELPDESK_WEBHOOK_SECRET (whsec_ followed by base64)"
        ) from None
    try:
        verifier.verify(request.body, dict(request.headers), json_parse=False)
    except WebhookVerificationError as exc:
        raise Unauthorized(f"the Standard Webhooks signature does not hold: {exc}") from None
    except UnicodeDecodeError:  # the library signs text; a JSON body is UTF-8 (RFC 8259)
        raise Malformed(
            [FieldError("$", "the body is not UTF-8 text, so not a Standard Webhooks payload")]
        ) from None
    except ValueError:
        raise Unauthorized("webhook-signature is not a list of v1,<base64> signatures") from None


def normalize(request: WebhookRequest, settings: Settings) -> list[SupportCallback]:
    body = request.json_object()
    require(body, "type")
    kind, _, event = text(body, "type").partition(".")
    if kind not in KINDS or event not in LIFECYCLE:
        raise Malformed(
            [
                FieldError(
                    "type",
                    f"must be ticket.<event> or chat.<event>, event one of {', '.join(LIFECYCLE)}",
                )
            ]
        )
    data = obj(body, "data")
    require(data, "id", at="data")
    tool = text(data, "tool", at="data").lower() or "generic"
    if not _TOOL.match(tool):
        raise Malformed(
            [FieldError("data.tool", "must be a short lowercase name such as freshdesk")]
        )
    score = rating(data, "rating", at="data")
    if event == "rated" and score is None:
        raise Malformed([FieldError("data.rating", "is required for a rated event")])
    who = requester(obj(data, "requester", "data"), settings, at="data.requester")
    ts = when(body, "timestamp", request)
    if ts is None:
        raise Malformed([FieldError("timestamp", "is required")])
    reopens = data.get("reopens")
    if reopens is not None and (isinstance(reopens, bool) or not isinstance(reopens, int)):
        raise Malformed([FieldError("data.reopens", "must be a whole number")])
    return [
        SupportCallback(
            provider=tool,
            kind=kind,
            ticket_id=text(data, "id", at="data"),
            callback_id=request.header("webhook-id"),
            event=event,
            event_ts=ts,
            received_ts=request.received_ts,
            email_hash=who.email_hash,
            phone_hash=who.phone_hash,
            user_id=who.user_id,
            status=text(data, "status", at="data").lower(),
            agent=text(data, "agent", at="data"),
            queue=text(data, "queue", at="data"),
            priority=text(data, "priority", at="data").lower(),
            via=text(data, "via", at="data").lower(),
            opened_at=when(data, "opened_at", request, at="data"),
            first_reply_at=when(data, "first_reply_at", request, at="data"),
            solved_at=when(data, "solved_at", request, at="data"),
            reopens=reopens,
            rating=score,
        )
    ]


PROVIDER = HelpdeskProvider("generic", authenticate, normalize)
