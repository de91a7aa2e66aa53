"""Enrichment: user agent, bots, referrer and campaign to channel, ad click ids. Plain Python."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import parse_qsl, urlsplit

from crawlerdetect import CrawlerDetect
from ua_parser import parse as parse_user_agent

from tracker.touchpoint import Touchpoint

__all__ = ["AD_CLICK_ID_PARAMS", "Enrichment", "classify_user_agent", "derive_channel", "enrich"]

AD_CLICK_ID_PARAMS = (
    "gclid",
    "gbraid",
    "wbraid",
    "dclid",
    "fbclid",
    "msclkid",
    "ttclid",
    "twclid",
    "li_fat_id",
    "epik",
    "rdt_cid",
    "sccid",
)
_UTM = {f"utm_{k}": k for k in ("source", "medium", "campaign", "term", "content")}
_MEDIUM_CHANNEL = {
    "email": "email",
    "e-mail": "email",
    "newsletter": "email",
    "cpc": "paid",
    "ppc": "paid",
    "paid": "paid",
    "paidsearch": "paid",
    "paid_search": "paid",
    "display": "paid",
    "cpm": "paid",
    "banner": "paid",
    "paid_social": "paid",
    "social": "social",
    "social-network": "social",
    "social_media": "social",
    "sm": "social",
    "sms": "sms",
    "text": "sms",
    "affiliate": "affiliate",
    "referral": "referral",
    "qr": "offline",
    "print": "offline",
    "offline": "offline",
    "chat": "chat",
}
_SOCIAL_HOSTS = (
    "facebook.",
    "instagram.",
    "t.co",
    "twitter.",
    "x.com",
    "linkedin.",
    "lnkd.in",
    "reddit.",
    "youtube.",
    "tiktok.",
    "pinterest.",
    "threads.net",
    "mastodon.",
)
_SEARCH_HOSTS = (
    "google.",
    "bing.",
    "duckduckgo.",
    "yahoo.",
    "baidu.",
    "yandex.",
    "ecosia.",
    "search.brave.com",
)
# Security gateways that fetch every link in an email, where their user agent gives them away.
# crawlerdetect knows the link-preview fetchers (Slackbot, Twitterbot, facebookexternalhit, ...)
# and search crawlers; these it does not. Scanners that send a browser's user agent cannot be
# told apart per request.
_SCANNER_TOKENS = (
    ("ms-office", "scanner:microsoft_office"),
    ("msoffice", "scanner:microsoft_office"),
    ("barracuda", "scanner:barracuda"),
    ("proofpoint", "scanner:proofpoint"),
    ("mimecast", "scanner:mimecast"),
    ("ciscosecureemail", "scanner:cisco_secure_email"),
)
_SOURCE_CHANNEL = {
    "call_webhook": "phone",
    "shortlink": "web",
    "web_beacon": "web",
    "server": "web",
}


@dataclass(frozen=True, slots=True)
class Enrichment:
    channel: str
    campaign: dict[str, str]
    ad_click_ids: dict[str, str]
    page_host: str
    page_path: str
    referrer_host: str
    device_type: str
    os: str
    browser: str
    is_bot: bool
    bot_reason: str


@dataclass(frozen=True, slots=True)
class UserAgentInfo:
    device_type: str
    os: str
    browser: str
    is_bot: bool
    bot_reason: str


def enrich(touchpoint: Touchpoint) -> Enrichment:
    url = touchpoint.page.get("url", "")
    query = _query(url)
    campaign = dict(touchpoint.campaign) or {
        _UTM[k]: v for k, v in query.items() if k in _UTM and v
    }
    if "campaign" in campaign:
        campaign["name"] = campaign.pop("campaign")
    ad_click_ids = dict(touchpoint.ad_click_ids)
    for param in AD_CLICK_ID_PARAMS:
        if query.get(param):
            ad_click_ids.setdefault(param, query[param])
    page_host, page_path = _host_and_path(url)
    referrer_host, _ = _host_and_path(touchpoint.page.get("referrer", ""))
    agent = classify_user_agent(touchpoint.context.get("user_agent", ""))
    is_bot, bot_reason = agent.is_bot, agent.bot_reason
    if not is_bot and touchpoint.properties.get("http_method") == "HEAD":
        # A short link fetched without its body: link checkers and previewers, never a person.
        is_bot, bot_reason = True, "head_request"
    channel = touchpoint.channel or derive_channel(
        touchpoint.source, campaign.get("medium", ""), bool(ad_click_ids), referrer_host, page_host
    )
    return Enrichment(
        channel=channel,
        campaign=campaign,
        ad_click_ids=ad_click_ids,
        page_host=page_host,
        page_path=page_path,
        referrer_host=referrer_host,
        device_type=agent.device_type,
        os=agent.os,
        browser=agent.browser,
        is_bot=is_bot,
        bot_reason=bot_reason,
    )


def derive_channel(
    source: str, medium: str, has_ad_click: bool, referrer_host: str, page_host: str
) -> str:
    """Where the customer came from: campaign medium first, then ad click ids, then the referrer."""
    if medium and (channel := _MEDIUM_CHANNEL.get(medium.lower())):
        return channel
    if has_ad_click:
        return "paid"
    if referrer_host and referrer_host != page_host:
        if _matches(referrer_host, _SOCIAL_HOSTS):
            return "social"
        if _matches(referrer_host, _SEARCH_HOSTS):
            return "search"
        return "referral"
    return _SOURCE_CHANNEL.get(source, "web")


@lru_cache(maxsize=8192)
def classify_user_agent(user_agent: str) -> UserAgentInfo:
    if not user_agent:
        return UserAgentInfo("unknown", "", "", False, "")
    parsed = parse_user_agent(user_agent)
    os_name = parsed.os.family if parsed.os else ""
    browser = parsed.user_agent.family if parsed.user_agent else ""
    device = parsed.device.family if parsed.device else ""
    detector = CrawlerDetect()
    if detector.isCrawler(user_agent):
        return UserAgentInfo(
            "bot", os_name, browser, True, f"crawler:{detector.getMatches()}".lower()[:64]
        )
    if device == "Spider":
        return UserAgentInfo("bot", os_name, browser, True, "crawler:ua-parser")
    lowered = user_agent.lower()
    for token, reason in _SCANNER_TOKENS:
        if token in lowered:
            return UserAgentInfo("bot", os_name, browser, True, reason)
    return UserAgentInfo(_device_type(device, os_name, user_agent), os_name, browser, False, "")


def _device_type(device: str, os_name: str, user_agent: str) -> str:
    lowered = user_agent.lower()
    if "ipad" in lowered or "tablet" in lowered or device.lower().startswith("ipad"):
        return "tablet"
    if "mobi" in lowered or os_name in ("iOS", "Android"):
        return "mobile"
    if os_name in ("Windows", "Mac OS X", "Linux", "Ubuntu", "Chrome OS", "Fedora"):
        return "desktop"
    return "other"


def _host_and_path(url: str) -> tuple[str, str]:
    if not url:
        return "", ""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "", ""
    host = (parts.hostname or "").lower()
    return host.removeprefix("www."), parts.path or "/"


def _query(url: str) -> dict[str, str]:
    if "?" not in url:
        return {}
    try:
        return dict(parse_qsl(urlsplit(url).query))
    except ValueError:
        return {}


def _matches(host: str, needles: tuple[str, ...]) -> bool:
    return any(host == n or host.startswith(n) or f".{n}" in f".{host}" for n in needles)
