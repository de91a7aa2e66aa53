"""Enrichment: user agent, bots, referrer and campaign to channel, ad click ids. Plain Python."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import parse_qsl, urlsplit

from crawlerdetect import CrawlerDetect
from ua_parser import parse as parse_user_agent

from tracker.touchpoint import AD_CLICK_ID_PARAMS, Touchpoint

__all__ = [
    "Enrichment",
    "acquisition_channel",
    "classify_user_agent",
    "derive_channel",
    "email_image_proxy",
    "enrich",
]

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
# Sites by registrable name: "facebook" matches facebook.com, m.facebook.com and facebook.co.uk.
_SOCIAL_SITES = frozenset(
    {
        "facebook",
        "fb",
        "instagram",
        "twitter",
        "x",
        "t",
        "linkedin",
        "lnkd",
        "reddit",
        "youtube",
        "tiktok",
        "pinterest",
        "threads",
        "mastodon",
        "snapchat",
        "quora",
    }
)
_SEARCH_SITES = frozenset(
    {"google", "bing", "duckduckgo", "yahoo", "baidu", "yandex", "ecosia", "brave"}
)
_WEBMAIL_HOSTS = frozenset(
    {
        "mail.google.com",
        "outlook.live.com",
        "outlook.office.com",
        "outlook.office365.com",
        "mail.yahoo.com",
        "mail.proton.me",
        "mail.aol.com",
        "app.fastmail.com",
    }
)
_SECOND_LEVEL_SUFFIXES = frozenset({"co", "com", "org", "net", "ac", "gov", "edu"})
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
# Mail providers that fetch an email's images for their readers, each by the user agent it sends.
# They never run JavaScript, so one reaching the beacon fetched the pixel (GET /v1/p.gif): an
# email open by a person behind the proxy, not a crawler. Apple's Mail Privacy Protection sends
# nothing but "Mozilla/5.0"; no browser does.
_EMAIL_IMAGE_PROXIES = (
    ("googleimageproxy", "gmail"),
    ("yahoomailproxy", "yahoo"),
)
_APPLE_MAIL_PROXY_AGENT = "mozilla/5.0"
_SOURCE_CHANNEL = {
    "email_webhook": "email",
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
    page_host, page_path, query = _url_parts(url)
    from_url = {_UTM[k]: v for k, v in query.items() if k in _UTM and v}
    if "campaign" in from_url:
        from_url["name"] = from_url.pop("campaign")
    campaign = {**from_url, **touchpoint.campaign}  # what the client sent wins
    ad_click_ids = dict(touchpoint.ad_click_ids)
    for param in AD_CLICK_ID_PARAMS:
        if query.get(param):
            ad_click_ids.setdefault(param, query[param])
    referrer_host, _, _ = _url_parts(touchpoint.page.get("referrer", ""))
    user_agent = touchpoint.context.get("user_agent", "")
    agent = classify_user_agent(user_agent)
    if touchpoint.source == "web_beacon" and (proxy := email_image_proxy(user_agent)):
        # The proxy's own user agent says nothing of the reader's device.
        agent = UserAgentInfo("unknown", "", "", False, f"proxy:{proxy}")
    is_bot, bot_reason = agent.is_bot, agent.bot_reason
    if touchpoint.context.get("source_kind") == "server":
        is_bot, bot_reason = False, ""  # an authenticated server source (write key) is trusted
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
        if referrer_host in _WEBMAIL_HOSTS:
            return "email"
        site = _site_name(referrer_host)
        if site in _SOCIAL_SITES:
            return "social"
        if site in _SEARCH_SITES and not referrer_host.startswith(("mail.", "news.", "maps.")):
            return "search"
        return "referral"
    return _SOURCE_CHANNEL.get(source, "web")


def email_image_proxy(user_agent: str) -> str:
    """``gmail``, ``yahoo`` or ``apple`` when the user agent is that mail provider's image
    proxy; empty otherwise."""
    lowered = user_agent.strip().lower()
    if lowered == _APPLE_MAIL_PROXY_AGENT:
        return "apple"
    for token, provider in _EMAIL_IMAGE_PROXIES:
        if token in lowered:
            return provider
    return ""


# Channels that name the event's own medium rather than where the customer came from.
_MEDIUM_ONLY = frozenset({"", "web"})


def acquisition_channel(
    channel: str,
    source: str,
    medium: str,
    has_ad_click: bool,
    referrer_host: str,
    page_host: str,
) -> str:
    """Where the customer who started a session came from, from the session's first event.

    A web event (channel ``web`` or none, also when the client named ``web`` itself) is
    derived from its campaign medium, ad click ids and referrer as :func:`derive_channel` does,
    and is ``direct`` without any of them. Link clicks, calls and every other channel keep
    the channel the touchpoint has."""
    if channel not in _MEDIUM_ONLY or source == "shortlink":
        return channel
    derived = derive_channel(source, medium, has_ad_click, referrer_host, page_host)
    return "direct" if derived == "web" else derived


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


@lru_cache(maxsize=16384)
def _url_parts(url: str) -> tuple[str, str, dict[str, str]]:
    """Host (without www.), path and query of a URL; landing pages repeat, so this is cached."""
    if not url:
        return "", "", {}
    try:
        parts = urlsplit(url)
        query = dict(parse_qsl(parts.query)) if parts.query else {}
    except ValueError:
        return "", "", {}
    host = (parts.hostname or "").lower()
    return host.removeprefix("www."), parts.path or "/", query


def _site_name(host: str) -> str:
    """The registrable name: shop.example.co.uk gives "example", t.co gives "t"."""
    labels = host.split(".")
    if len(labels) >= 3 and labels[-2] in _SECOND_LEVEL_SUFFIXES and len(labels[-1]) == 2:
        return labels[-3]
    return labels[-2] if len(labels) >= 2 else host
