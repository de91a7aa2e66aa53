"""``tracker demo``: a synthetic, multi-channel week of customer journeys sent to a running instance."""

from __future__ import annotations

import random
import time
import urllib.error
import urllib.request
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from tracker.cli.client import run_query
from tracker.errors import TrackerError
from tracker.settings import Settings

__all__ = ["demo_events", "run_demo"]

_SITE = "https://shop.example.com"
_PAGES = [
    "/",
    "/pricing",
    "/products/kettle",
    "/products/toaster",
    "/blog/brewing-guide",
    "/support",
    "/cart",
    "/checkout",
]
_AGENTS = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Safari/605.1.15",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Mobile Safari/537.36",
]
_BOT = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"
_ARRIVALS: list[tuple[str, dict[str, Any]]] = [
    ("email", {"query": "?utm_source=newsletter&utm_medium=email&utm_campaign=autumn_sale"}),
    ("paid", {"query": "?gclid=Cj0KCQiA&utm_source=google&utm_medium=cpc&utm_campaign=kettles"}),
    ("social", {"referrer": "https://www.instagram.com/"}),
    ("search", {"referrer": "https://www.google.com/"}),
    ("direct", {}),
]


def demo_events(customers: int, seed: int, now: datetime) -> list[dict[str, Any]]:
    """Journeys for ``customers`` people over the past week, plus a bot and three malformed events."""
    rng = random.Random(seed)
    events: list[dict[str, Any]] = []
    for n in range(customers):
        anonymous_id = str(uuid.UUID(int=rng.getrandbits(128)))
        agent = rng.choice(_AGENTS)
        t = now - timedelta(days=rng.uniform(3, 7))
        _, arrival = rng.choice(_ARRIVALS)

        def event(
            kind: str,
            at: datetime,
            anonymous_id: str = anonymous_id,
            agent: str = agent,
            **fields: Any,
        ) -> dict[str, Any]:
            return {
                "event_id": str(uuid.UUID(int=rng.getrandbits(128))),
                "type": kind,
                "ts": at.isoformat(),
                "anonymous_id": anonymous_id,
                "context": {"user_agent": agent, "library": "tracker-demo"},
                **fields,
            }

        landing = _SITE + rng.choice(_PAGES[:5]) + arrival.get("query", "")
        events.append(
            event(
                "page_view",
                t,
                page={
                    "url": landing,
                    "referrer": arrival.get("referrer", ""),
                    "title": "Kettles & more",
                },
            )
        )
        for _ in range(rng.randint(0, 4)):
            t += timedelta(seconds=rng.randint(10, 300))
            events.append(event("page_view", t, page={"url": _SITE + rng.choice(_PAGES)}))
        email = f"customer{n}@example.org"
        if rng.random() < 0.5:
            t += timedelta(minutes=rng.randint(1, 10))
            events.append(event("form_submit", t, name="newsletter_signup", email=email))
            events.append(event("identify", t, email=email, user_id=f"u{n:05d}"))
        if rng.random() < 0.2:
            t += timedelta(minutes=rng.randint(1, 30))
            events.append(
                event(
                    "purchase",
                    t,
                    name="order_completed",
                    value=round(rng.uniform(20, 300), 2),
                    currency="EUR",
                    user_id=f"u{n:05d}",
                )
            )
        if rng.random() < 0.15:
            t += timedelta(hours=rng.randint(1, 24))
            events.append(
                event(
                    "call",
                    t,
                    source="server",
                    channel="phone",
                    name="support_call",
                    phone=f"+1415555{n % 10000:04d}",
                    properties={
                        "queue": "support",
                        "disposition": rng.choice(["answered", "abandoned"]),
                    },
                )
            )
        if rng.random() < 0.3:
            t += timedelta(hours=rng.randint(1, 24))
            kind = rng.choice(["nps", "csat", "ces"])
            score = {
                "nps": rng.randint(0, 10),
                "csat": rng.randint(1, 5),
                "ces": rng.randint(1, 7),
            }[kind]
            events.append(
                event("survey_response", t, channel="email", survey={"kind": kind, "score": score})
            )
    crawler = now - timedelta(hours=3)
    events.append(
        {
            "event_id": str(uuid.UUID(int=rng.getrandbits(128))),
            "type": "page_view",
            "ts": crawler.isoformat(),
            "page": {"url": _SITE + "/"},
            "context": {"user_agent": _BOT},
        }
    )
    events.append({"type": "page_view", "ts": now.isoformat()})
    events.append(
        {
            "event_id": str(uuid.UUID(int=rng.getrandbits(128))),
            "type": "page_view",
            "ts": "yesterday",
        }
    )
    events.append(
        {
            "event_id": str(uuid.UUID(int=rng.getrandbits(128))),
            "type": "survey_response",
            "ts": now.isoformat(),
            "survey": {"kind": "nps", "score": 11},
        }
    )
    return events


def run_demo(settings: Settings, customers: int = 200, seed: int = 7, wait: float = 60.0) -> str:
    events = demo_events(customers, seed, datetime.now(UTC))
    before = _count(settings)
    accepted = rejected = 0
    url = f"http://127.0.0.1:{settings.beacon_port}/v1/events"
    for start in range(0, len(events), 50):
        accepted_now, rejected_now = _post(url, events[start : start + 50])
        accepted += accepted_now
        rejected += rejected_now
    deadline = time.monotonic() + wait
    landed = 0
    while time.monotonic() < deadline:
        landed = _count(settings) - before
        if landed >= accepted:
            break
        time.sleep(0.5)
    lines = [
        f"sent {len(events)} events for {customers} customers: {accepted} accepted, {rejected} rejected",
        f"landed in touchpoints: {landed}",
        "",
        "events by channel and type:",
        run_query(
            settings,
            "SELECT channel, type, count() FROM touchpoints GROUP BY channel, type "
            "ORDER BY channel, type",
            "pretty",
        ),
        "dead letters by reason:",
        run_query(
            settings,
            "SELECT reason, count() FROM dead_letters GROUP BY reason ORDER BY reason",
            "pretty",
        ),
    ]
    return "\n".join(lines) + "\n"


def _count(settings: Settings) -> int:
    return int(run_query(settings, "SELECT count() FROM touchpoints").strip() or 0)


def _post(url: str, batch: list[dict[str, Any]]) -> tuple[int, int]:
    for attempt in range(10):
        request = urllib.request.Request(
            url, data=orjson.dumps(batch), headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return int(orjson.loads(response.read())["accepted"]), 0
        except urllib.error.HTTPError as exc:
            if exc.code == 400:
                body = orjson.loads(exc.read())
                return int(body["accepted"]), len(body["rejected"])
            if exc.code not in (429, 503) or attempt == 9:  # busy, or sending too fast
                raise
            time.sleep(float(exc.headers.get("Retry-After", "1")))
        except urllib.error.URLError as exc:
            raise TrackerError(
                f"no beacon answers at {url} ({exc.reason}); start the pipeline with `tracker up`"
            ) from None
    return 0, 0
