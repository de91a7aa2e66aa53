"""Who clicked a short link: previewers, scanners and crawlers are kept but flagged, with a reason."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest

from agents.enrich import classify_user_agent, enrich
from collectors.links.records import ClickFacts, click_touchpoint

# User agents as these fetchers send them.
PREVIEWERS_AND_CRAWLERS = [
    ("Slackbot-LinkExpanding 1.0 (+https://api.slack.com/robots)", "slackbot"),
    ("Twitterbot/1.0", "twitterbot"),
    (
        "facebookexternalhit/1.1 (+http://www.facebook.com/externalhit_uatext.php)",
        "facebookexternalhit",
    ),
    (
        "LinkedInBot/1.0 (compatible; Mozilla/5.0; Apache-HttpClient +http://www.linkedin.com)",
        "linkedinbot",
    ),
    ("Mozilla/5.0 (compatible; Discordbot/2.0; +https://discordapp.com)", "discordbot"),
    ("WhatsApp/2.23.20.0", "whatsapp"),
    ("TelegramBot (like TwitterBot)", "telegrambot"),
    (
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) SkypeUriPreview Preview/0.5",
        "skypeuripreview",
    ),
    ("Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)", "googlebot"),
    ("Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)", "bingbot"),
    ("DuckDuckBot/1.1; (+http://duckduckgo.com/duckduckbot.html)", "duckduckbot"),
    ("Mozilla/5.0 (compatible; Applebot/0.1; +http://www.apple.com/go/applebot)", "applebot"),
    # Outlook and Microsoft 365 fetching a link before (or instead of) the person
    (
        "Microsoft Office/16.0 (Windows NT 10.0; Microsoft Outlook 16.0.17328; Pro)",
        "microsoft office",
    ),
    ("Mozilla/4.0 (compatible; ms-office; MSOffice 16)", "microsoft_office"),
]

PEOPLE = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36 Edg/124.0.0.0",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10.15; rv:125.0) Gecko/20100101 Firefox/125.0",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Linux; Android 14; SAMSUNG SM-S921B) AppleWebKit/537.36 (KHTML, like Gecko) SamsungBrowser/24.0 Chrome/117.0.0.0 Mobile Safari/537.36",
]


@pytest.mark.parametrize(("agent", "name"), PREVIEWERS_AND_CRAWLERS)
def test_previewers_scanners_and_crawlers_are_bots_with_a_reason(agent: str, name: str) -> None:
    info = classify_user_agent(agent)
    assert info.is_bot
    assert name in info.bot_reason


@pytest.mark.parametrize("agent", PEOPLE)
def test_browsers_are_people(agent: str) -> None:
    assert not classify_user_agent(agent).is_bot


def _click(method: str, user_agent: str, location: str = "") -> ClickFacts:
    return ClickFacts(
        slug="s1",
        channel="",
        campaign="",
        utm={"medium": "email"},
        tags=(),
        short_url="https://go.example/s1",
        token="clickid12345",
        ts=time.time(),
        method=method,
        qr=False,
        outcome="redirect",
        location=location or "https://shop.example/?utm_medium=email&tc_id=clickid12345",
        ip="203.0.113.77",
        user_agent=user_agent,
        referrer="",
        accept_language="",
    )


def test_a_head_request_is_kept_as_a_bot_click() -> None:
    touchpoint = click_touchpoint(_click("HEAD", PEOPLE[0]), "salt")
    enriched = enrich(touchpoint)
    assert (enriched.is_bot, enriched.bot_reason) == (True, "head_request")
    assert touchpoint.context["ip"] == "203.0.113.0"


def test_a_person_clicking_is_not_a_bot_and_lands_in_the_links_channel() -> None:
    touchpoint = click_touchpoint(_click("GET", PEOPLE[3]), "salt")
    enriched = enrich(touchpoint)
    assert not enriched.is_bot
    assert enriched.channel == "email"  # from the link's utm_medium
    assert enriched.device_type == "mobile"
    assert touchpoint.ts.utcoffset() == timedelta(0)


def test_a_click_with_a_huge_query_is_still_recorded() -> None:
    click = _click("GET", PEOPLE[0], "https://shop.example/?q=" + "x" * 10_000)
    touchpoint = click_touchpoint(click, "salt")
    assert len(touchpoint.page["url"]) == 4096
