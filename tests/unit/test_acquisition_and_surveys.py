"""The data reports stand on: a session's acquisition channel, email image proxies, the
touchpoint a survey answer rates, conversions and where frictions sit. Pure rules."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from agents.customer import CustomerJourney, JourneyRules, StoredEvent
from agents.enrich import acquisition_channel, derive_channel, email_image_proxy, enrich
from agents.journey import JourneyEvent, SessionRules, rated_touchpoints, sessionize
from tracker.touchpoint import Touchpoint

T0 = datetime(2026, 11, 20, 9, 30, tzinfo=UTC)
# User agents as the proxies send them.
GMAIL_PROXY = (
    "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)"
)
YAHOO_PROXY = "YahooMailProxy; https://help.yahoo.com/kb/yahoo-mail-proxy-SLN28749.html"
APPLE_PROXY = "Mozilla/5.0"
SAFARI = "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Safari/605.1.15"

_MEDIA = ["", "email", "cpc", "social", "newsletter", "sms", "qr", "weird"]
_HOSTS = ["", "shop.example", "www.google.com", "facebook.com", "mail.google.com", "blog.other"]


# -- acquisition channel ---------------------------------------------------------------------


@given(
    channel=st.sampled_from(["", "web", "email", "phone", "chat", "in_store", "paid"]),
    source=st.sampled_from(["web_beacon", "server", "shortlink", "call_webhook"]),
    medium=st.sampled_from(_MEDIA),
    ad_click=st.booleans(),
    referrer=st.sampled_from(_HOSTS),
    page=st.sampled_from(_HOSTS),
)
def test_a_session_channel_says_where_the_customer_came_from(
    channel: str, source: str, medium: str, ad_click: bool, referrer: str, page: str
) -> None:
    got = acquisition_channel(channel, source, medium, ad_click, referrer, page)
    derived = derive_channel(source, medium, ad_click, referrer, page)
    if channel not in ("", "web") or source == "shortlink":
        assert got == channel  # calls, link clicks and every named channel keep theirs
    elif derived == "web":
        assert got == "direct"  # no campaign, ad click or external referrer
    else:
        assert got == derived  # also when the client named the event's medium, web
    assert got != "web" or source == "shortlink"


def test_acquisition_examples() -> None:
    assert acquisition_channel("web", "web_beacon", "", False, "", "shop.example") == "direct"
    assert acquisition_channel("web", "web_beacon", "", False, "shop.example", "shop.example") == (
        "direct"  # an internal referrer is no acquisition
    )
    assert acquisition_channel("web", "web_beacon", "email", False, "", "shop.example") == "email"
    assert acquisition_channel("web", "server", "", True, "", "") == "paid"
    assert acquisition_channel("web", "web_beacon", "", False, "www.google.com", "s.ex") == "search"
    assert acquisition_channel("phone", "call_webhook", "", False, "", "") == "phone"
    assert acquisition_channel("web", "shortlink", "", False, "", "") == "web"


def _event(event_id: str, minutes: int, **fields: Any) -> JourneyEvent:
    return JourneyEvent(
        event_id, T0 + timedelta(minutes=minutes), fields.pop("type", "page_view"), **fields
    )


def test_sessions_take_the_acquisition_channel_of_their_first_event() -> None:
    events = [
        _event("a", 0, channel="web", acquisition="direct"),
        _event("b", 5, channel="web", acquisition="search"),  # not first: ignored
        _event("c", 90, channel="email", acquisition="email"),
        _event("d", 200, channel="web"),  # state written before acquisition existed
    ]
    sessions = sessionize("c1", events, SessionRules())
    assert [s.channel for s in sessions] == ["direct", "email", "web"]


def test_a_stored_event_keeps_its_acquisition_and_rated_touchpoint_through_state() -> None:
    event = _event("s", 0, acquisition="social", survey_touchpoint_id="t-1", survey_kind="nps")
    stored = StoredEvent(event, 1, "anon:a")
    assert StoredEvent.from_state(stored.to_state()) == stored
    old = stored.to_state()[:22]  # written before these fields
    assert StoredEvent.from_state(old).event.acquisition == ""


# -- email image proxies -----------------------------------------------------------------------


def _pixel(user_agent: str, source: str = "web_beacon") -> Touchpoint:
    return Touchpoint(
        event_id="e",
        type="email_open",
        name="",
        source=source,
        channel="",
        ts=T0,
        device_ts=T0,
        received_ts=T0,
        context={"user_agent": user_agent},
    )


def test_email_image_proxies_fetching_the_pixel_are_opens_marked_as_proxied() -> None:
    for agent, reason in (
        (GMAIL_PROXY, "proxy:gmail"),
        (YAHOO_PROXY, "proxy:yahoo"),
        (APPLE_PROXY, "proxy:apple"),
    ):
        e = enrich(_pixel(agent))
        assert (e.is_bot, e.bot_reason, e.device_type) == (False, reason, "unknown"), agent


def test_proxies_elsewhere_and_real_crawlers_stay_bots_and_browsers_stay_people() -> None:
    assert enrich(_pixel(YAHOO_PROXY, source="shortlink")).is_bot  # a link scanned, no open
    assert enrich(_pixel("Googlebot/2.1 (+http://www.google.com/bot.html)")).is_bot
    browser = enrich(_pixel(SAFARI))
    assert (browser.is_bot, browser.bot_reason) == (False, "")
    assert email_image_proxy(SAFARI) == "" and email_image_proxy("") == ""


# -- surveys -----------------------------------------------------------------------------------


def test_a_survey_rates_the_touchpoint_it_names_else_the_last_non_survey_before_it() -> None:
    events = [
        _event("call", 0, type="call"),
        _event("chat", 10, type="chat"),
        _event("s1", 20, type="survey_response", survey_kind="csat"),
        _event("s2", 21, type="survey_response", survey_kind="nps", survey_touchpoint_id="call"),
        _event("s3", 22, type="survey_response", survey_kind="ces"),
        _event("late_page", 15),  # arrived last, happened before s1
    ]
    assert rated_touchpoints(events) == {"s1": "late_page", "s2": "call", "s3": "late_page"}
    assert rated_touchpoints([_event("s", 0, survey_kind="nps")]) == {"s": ""}


@given(st.lists(st.tuples(st.integers(0, 500), st.booleans()), min_size=1, max_size=30))
def test_a_survey_never_rates_a_survey_nor_a_later_touchpoint(spec: list[tuple[int, bool]]) -> None:
    events = [
        _event(f"e{i}", minute, survey_kind="nps" if survey else "")
        for i, (minute, survey) in enumerate(spec)
    ]
    by_id = {e.event_id: e for e in events}
    rated = rated_touchpoints(events)
    assert set(rated) == {e.event_id for e in events if e.is_survey}
    for survey_id, target in rated.items():
        if target:
            assert not by_id[target].is_survey
            assert by_id[target].order < by_id[survey_id].order


# -- what the journey stage writes -------------------------------------------------------------


def test_stitched_touchpoints_carry_their_conversion_and_rated_touchpoint() -> None:
    journey = CustomerJourney("c1", JourneyRules())
    journey.add(_event("home", 0, channel="web", page_path="/"), 1, "user:u")
    journey.add(_event("p", 1, type="purchase", name="order", value=30.0), 1, "user:u")
    journey.add(_event("free", 2, type="purchase", name="sample", value=0.0), 1, "user:u")
    journey.add(
        _event("s", 3, type="survey_response", survey_kind="csat", survey_score=2.0), 1, "user:u"
    )
    answer = dict(type="survey_response", survey_kind="nps", survey_score=9.0)
    journey.add(_event("s-home", 4, survey_touchpoint_id="home", **answer), 1, "user:u")
    journey.add(_event("s-gone", 5, survey_touchpoint_id="elsewhere", **answer), 1, "user:u")
    stitched = journey.stitched_all()
    assert stitched["p"].conversion == "purchase" and stitched["free"].conversion == ""
    assert stitched["s"].survey_touchpoint_id == "free"
    # Each answer carries where the rollups count its score: the rated touchpoint's channel,
    # type, name (a page's path) and stage; nothing for a touchpoint the journey does not hold.
    assert stitched["s"].rated == ("", "purchase", "sample", stitched["free"].stage)
    assert stitched["s-home"].rated == ("web", "page_view", "/", stitched["home"].stage)
    assert stitched["home"].stage != stitched["free"].stage
    assert stitched["s-gone"].survey_touchpoint_id == "elsewhere"
    assert stitched["s-gone"].rated == ("", "", "", "")
    assert stitched["home"].rated == ("", "", "", "")
    for event_id in ("s", "s-home", "s-gone"):
        assert journey.stitched(event_id) == stitched[event_id]


def test_frictions_are_placed_on_their_touchpoint_and_retractions_where_they_were() -> None:
    journey = CustomerJourney("c1", JourneyRules())
    journey.add(_event("home", 0, channel="web", page_path="/"), 1, "anon:a")
    journey.add(_event("later", 60, channel="email", page_path="/pricing"), 1, "anon:a")
    first = journey.update()
    assert [f.reason for f in first.frictions] == ["bounce"]
    bounce = first.frictions[0]
    place = ["web", "page_view", "/", "awareness", False]
    assert list(first.friction_places.values()) == [place]
    # a late event joins the first session: the bounce is retracted, from where it was counted
    journey.add(_event("second", 10, channel="web", page_path="/about"), 1, "anon:a")
    again = CustomerJourney.from_state("c1", JourneyRules(), journey.to_state()).update()
    assert [f.reason for f in again.retracted_frictions] == [bounce.reason]
    assert list(again.friction_places.values()) == [place]
