"""Short-link clicks in compact batches: the wire form, and the touchpoint each click becomes.

The links service answers a redirect, then records the click's raw facts. Its background task
packs many clicks into ONE record on the ``links.click_batches`` topic (:func:`encode_batch`), so
the serving process spends about a microsecond per click and never validates anything. The worker
reads the batches back (:func:`decode_batch`) and turns each click into a ``link_click`` touchpoint
with :func:`click_touchpoint`, through the same validation as any event
(:func:`tracker.touchpoint.accept`).

A batch record is an LZ4 frame (clicks repeat their link, user agents and URLs, so a batch
shrinks about tenfold, and moving bytes is what a Kafka send costs most) of this JSON::

    {"v": 1, "base_url": "https://go.example",
     "clicks": [[[slug, channel, campaign, {utm}, [tags]], token, ts, method, qr, outcome,
                 location, ip, user_agent, referrer, accept_language], ...]}

The link's fields are those it had when the click happened. Each click repeats them (about 100
bytes): the service then packs a batch with one ``orjson.dumps`` of what it holds already.

``token`` is the random id drawn for each request: it is the ``tc_id`` appended to the target when
the link was followed (``outcome`` ``redirect``), and with the slug it makes the touchpoint's
``event_id``, so a replayed batch yields the same ids and is written once. ``ip`` is already
truncated (IPv4 /24, IPv6 /48): Kafka never holds a full address. Long values are cut by
:func:`click_touchpoint`, in the worker.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any, Final

import lz4.frame
import orjson

from tracker.privacy import PiiRules
from tracker.touchpoint import RequestContext, Touchpoint, accept

__all__ = [
    "BATCH_VERSION",
    "ClickFacts",
    "ClickLink",
    "click_event_id",
    "click_touchpoint",
    "decode_batch",
    "encode_batch",
    "languages",
]

BATCH_VERSION: Final = 1
MAX_URL: Final = 4096
MAX_USER_AGENT: Final = 1024
MAX_ACCEPT_LANGUAGE: Final = 256
_EVENT_NAMESPACE = uuid.UUID("3b0f6c52-9a1e-4d2b-8f47-5e6a1c0d9b21")


@dataclass(frozen=True, slots=True)
class ClickFacts:
    """One click as the worker reads it back: the request's raw facts and the link's fields."""

    slug: str
    channel: str
    campaign: str
    utm: dict[str, str]
    tags: tuple[str, ...]
    short_url: str
    token: str
    ts: float
    method: str
    qr: bool
    outcome: str
    location: str
    ip: str
    user_agent: str
    referrer: str
    accept_language: str

    def to_json(self) -> bytes:
        """This click alone, for a dead letter's payload."""
        return orjson.dumps(
            {
                "slug": self.slug,
                "channel": self.channel,
                "campaign": self.campaign,
                "utm": self.utm,
                "tags": list(self.tags),
                "short_url": self.short_url,
                "token": self.token,
                "ts": self.ts,
                "method": self.method,
                "qr": self.qr,
                "outcome": self.outcome,
                "location": self.location,
                "ip": self.ip,
                "user_agent": self.user_agent,
                "referrer": self.referrer,
                "accept_language": self.accept_language,
            }
        )


ClickLink = tuple[str, str, str, dict[str, str], tuple[str, ...]]
"""The link fields a click carries: slug, channel, campaign, UTM, tags."""


def encode_batch(base_url: str, clicks: Sequence[Sequence[Any]]) -> bytes:
    """One batch record; ``clicks`` are rows in the order the module doc gives."""
    batch = orjson.dumps({"v": BATCH_VERSION, "base_url": base_url, "clicks": clicks})
    return bytes(lz4.frame.compress(batch))


def decode_batch(value: bytes) -> list[ClickFacts]:
    """Every click of a batch record. Raises ``ValueError``, ``KeyError``, ``TypeError`` or
    ``IndexError`` on a record that is not one."""
    try:
        batch = orjson.loads(lz4.frame.decompress(value))
    except RuntimeError as exc:  # what lz4 raises for a bad frame
        raise ValueError(f"not an LZ4 frame: {exc}") from None
    if not isinstance(batch, dict) or batch.get("v") != BATCH_VERSION:
        raise ValueError("not a version 1 click batch")
    base_url = str(batch["base_url"])
    facts = []
    for row in batch["clicks"]:
        link, token, ts, method, qr, outcome, location, ip, agent, referrer, language = row
        slug, channel, campaign, utm, tags = link
        facts.append(
            ClickFacts(
                slug=str(slug),
                channel=str(channel),
                campaign=str(campaign),
                utm=_str_map(utm),
                tags=tuple(str(t) for t in tags),
                short_url=f"{base_url}/{slug}",
                token=str(token),
                ts=float(ts),
                method=str(method),
                qr=bool(qr),
                outcome=str(outcome),
                location=str(location),
                ip=str(ip),
                user_agent=str(agent),
                referrer=str(referrer),
                accept_language=str(language),
            )
        )
    return facts


def click_event_id(slug: str, token: str) -> str:
    """The touchpoint's ``event_id``: the same for the same click, however often it is read."""
    return str(uuid.uuid5(_EVENT_NAMESPACE, f"{slug}/{token}"))


def click_touchpoint(click: ClickFacts, hash_salt: str, pii: PiiRules | None = None) -> Touchpoint:
    """The ``link_click`` touchpoint of one click, through the same validation as any event.

    Raises :class:`tracker.errors.ValidationError` when a field is refused.
    """
    received = datetime.fromtimestamp(click.ts, UTC)
    campaign = {k if k != "campaign" else "name": v for k, v in click.utm.items() if v}
    if click.campaign and "name" not in campaign:
        campaign["name"] = click.campaign
    properties = {
        "slug": click.slug,
        "short_url": click.short_url,
        "outcome": click.outcome,
        "qr": "true" if click.qr else "false",
        "http_method": click.method,
    }
    if click.tags:
        properties["tags"] = ",".join(click.tags)
    if click.campaign:
        properties["link_campaign"] = click.campaign
    # A long passed-on query is cut, not lost.
    page = {"url": (click.location or click.short_url)[:MAX_URL]}
    if click.referrer:
        page["referrer"] = click.referrer[:MAX_URL]
    payload: dict[str, Any] = {
        "event_id": click_event_id(click.slug, click.token),
        "type": "link_click",
        "name": click.slug,
        "source": "shortlink",
        "ts": received.isoformat(),
        "page": page,
        "properties": properties,
    }
    if click.channel:
        payload["channel"] = click.channel
    if campaign:
        payload["campaign"] = campaign
    if click.outcome == "redirect" and click.token:
        payload["click_id"] = click.token  # the tc_id the target received
    preferred = languages(click.accept_language[:MAX_ACCEPT_LANGUAGE])
    context = {"user_agent": click.user_agent[:MAX_USER_AGENT]}
    if preferred:
        context["locale"] = preferred[0][:35]
    payload["context"] = context
    request = RequestContext(
        source="shortlink", received_ts=received, ip=click.ip, hash_salt=hash_salt, pii=pii
    )
    return accept(payload, request)


@lru_cache(maxsize=1024)
def languages(accept_language: str) -> tuple[str, ...]:
    """Language tags from ``Accept-Language``, most preferred first, lower-cased; q=0 left out."""
    ranked: list[tuple[float, int, str]] = []
    for index, part in enumerate(accept_language.split(",")):
        tag, _, params = part.strip().partition(";")
        tag = tag.strip().lower()
        if not tag or tag == "*":
            continue
        quality = 1.0
        params = params.strip()
        if params.startswith("q="):
            try:
                quality = float(params[2:])
            except ValueError:
                quality = 0.0
        if quality > 0:
            ranked.append((-quality, index, tag))
    return tuple(tag for _, _, tag in sorted(ranked))


def _str_map(raw: Any) -> dict[str, str]:
    return {str(k): str(v) for k, v in (raw or {}).items()}
