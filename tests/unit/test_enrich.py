from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from agents.enrich import classify_user_agent, derive_channel, enrich
from tracker.touchpoint import Touchpoint

NOW = datetime(2026, 11, 22, tzinfo=UTC)
CHROME = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36"
IPHONE = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1"
IPAD = "Mozilla/5.0 (iPad; CPU OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1"


def touchpoint(**fields: Any) -> Touchpoint:
    return Touchpoint(
        event_id="e",
        type="page_view",
        name="page_view",
        source=fields.pop("source", "web_beacon"),
        channel=fields.pop("channel", ""),
        ts=NOW,
        device_ts=NOW,
        received_ts=NOW,
        **fields,
    )


def test_utm_parameters_and_ad_click_ids_come_from_the_landing_url() -> None:
    e = enrich(
        touchpoint(
            page={
                "url": "https://www.shop.example/kettles?utm_source=google&utm_medium=cpc&utm_campaign=kettles&gclid=abc"
            }
        )
    )
    assert e.campaign == {"source": "google", "medium": "cpc", "name": "kettles"}
    assert e.ad_click_ids == {"gclid": "abc"}
    assert (e.channel, e.page_host, e.page_path) == ("paid", "shop.example", "/kettles")


def test_campaign_sent_by_the_client_wins_over_the_url() -> None:
    e = enrich(
        touchpoint(
            page={"url": "https://x.example/?utm_source=a"},
            campaign={"source": "b", "medium": "email"},
        )
    )
    assert e.campaign == {"source": "b", "medium": "email"} and e.channel == "email"


def test_channel_sent_by_the_client_is_kept() -> None:
    assert enrich(touchpoint(channel="in_store")).channel == "in_store"


@pytest.mark.parametrize(
    ("source", "medium", "ad_click", "referrer", "channel"),
    [
        ("web_beacon", "Email", False, "", "email"),
        ("web_beacon", "social", False, "", "social"),
        ("web_beacon", "", True, "", "paid"),
        ("web_beacon", "", False, "l.instagram.com", "social"),
        ("web_beacon", "", False, "t.co", "social"),
        ("web_beacon", "", False, "google.com", "search"),
        ("web_beacon", "", False, "news.example.org", "referral"),
        ("web_beacon", "", False, "t.company.com", "referral"),
        ("web_beacon", "", False, "google.co.uk", "search"),
        ("web_beacon", "", False, "mail.google.com", "email"),
        ("web_beacon", "", False, "shop.example", "web"),
        ("call_webhook", "", False, "", "phone"),
    ],
)
def test_channel_derivation(
    source: str, medium: str, ad_click: bool, referrer: str, channel: str
) -> None:
    assert derive_channel(source, medium, ad_click, referrer, "shop.example") == channel


@pytest.mark.parametrize(
    ("agent", "reason"),
    [
        (
            "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
            "crawler:googlebot",
        ),
        ("Slackbot-LinkExpanding 1.0 (+https://api.slack.com/robots)", "crawler:slackbot"),
        (
            "facebookexternalhit/1.1 (+http://www.facebook.com/externalhit_uatext.php)",
            "crawler:facebookexternalhit",
        ),
    ],
)
def test_crawlers_are_flagged_with_a_reason(agent: str, reason: str) -> None:
    info = classify_user_agent(agent)
    assert info.is_bot and info.bot_reason == reason and info.device_type == "bot"


@pytest.mark.parametrize(
    ("agent", "device", "os"),
    [(CHROME, "desktop", "Windows"), (IPHONE, "mobile", "iOS"), (IPAD, "tablet", "iOS")],
)
def test_people_are_not_bots(agent: str, device: str, os: str) -> None:
    info = classify_user_agent(agent)
    assert not info.is_bot and (info.device_type, info.os) == (device, os)
