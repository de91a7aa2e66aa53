"""Short links as data: validation, slugs, targeting and the redirect location. Plain Python."""

from __future__ import annotations

import re
import secrets
import string
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any, Final, NamedTuple
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

from collectors.links.records import ClickLink, languages
from tracker.bounds import as_utc
from tracker.errors import FieldError, ValidationError

__all__ = [
    "CLICK_ID_PARAM",
    "QR_PARAM",
    "RESERVED_SLUGS",
    "Link",
    "Resolution",
    "TargetingRule",
    "device_and_os",
    "generate_slug",
    "languages",
    "parse_link",
    "validate_slug",
    "validate_target",
]

CLICK_ID_PARAM: Final = "tc_id"
QR_PARAM: Final = "qr"
REDIRECT_CODES: Final = (301, 302, 307, 308)
UTM_FIELDS: Final = ("source", "medium", "campaign", "term", "content")
DEVICES: Final = ("mobile", "tablet", "desktop")
OPERATING_SYSTEMS: Final = ("ios", "android", "windows", "macos", "linux", "chromeos")
RESERVED_SLUGS: Final = frozenset(
    {"api", "healthz", "readyz", "metrics", "admin", "static", "assets", "robots", "favicon"}
)
# Matched with fullmatch: "$" would let a final newline through.
_SLUG = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
_BASE62 = string.ascii_letters + string.digits
_CHANNEL = re.compile(r"[a-z][a-z0-9_]{0,31}")
_LANGUAGE = re.compile(r"[a-z]{2,3}(-[a-z0-9]{2,8})?")
GENERATED_SLUG_LENGTH: Final = 7
MAX_URL_LENGTH: Final = 4096
MAX_TAGS: Final = 32
MAX_TAG_LENGTH: Final = 64
MAX_TEXT_LENGTH: Final = 256  # campaign and each UTM value
MAX_RULES: Final = 32
MAX_RULE_LANGUAGES: Final = 32
MAX_CLICKS_LIMIT: Final = 10**12
# ClickHouse's DateTime64 stops at the end of 2299; validity is kept within it and after 1970.
EARLIEST_VALIDITY: Final = datetime(1970, 1, 1, tzinfo=UTC)
LATEST_VALIDITY: Final = datetime(2299, 12, 31, 23, 59, 59, tzinfo=UTC)


def validate_slug(slug: str) -> str | None:
    """Why ``slug`` cannot be a short link's path, or ``None`` when it can."""
    if not _SLUG.fullmatch(slug):
        return "must be 1-64 letters, digits, '-' or '_', starting with a letter or digit"
    if slug.lower() in RESERVED_SLUGS:
        return f"{slug!r} is reserved for the service's own endpoints"
    return None


def generate_slug(taken: Any, length: int = GENERATED_SLUG_LENGTH) -> str:
    """A random base62 slug (62^7 is about 3.5e12), drawn again while ``taken`` holds it."""
    while True:
        slug = "".join(secrets.choice(_BASE62) for _ in range(length))
        if slug not in taken and validate_slug(slug) is None:
            return slug


def validate_target(url: Any) -> str | None:
    """Why ``url`` may not be a redirect target, or ``None``. Only absolute http(s) URLs are allowed."""
    if not isinstance(url, str) or not url:
        return "must be an absolute http:// or https:// URL"
    if len(url) > MAX_URL_LENGTH:
        return f"must be at most {MAX_URL_LENGTH} characters"
    if any(c in url for c in "\r\n\t\x00") or url != url.strip():
        return "must not contain spaces at the ends or control characters"
    if not url.isascii():
        return "must be ASCII: percent-encode other characters, and give hosts in punycode"
    try:
        parts = urlsplit(url)
        port = parts.port  # raises for a port above 65535 or one that is not a number
    except ValueError:
        return "is not a URL: its host or port cannot be read (ports go from 1 to 65535)"
    if parts.scheme.lower() not in ("http", "https"):
        return "must use http or https; other schemes (javascript:, data:, ...) are refused"
    if not parts.hostname or "\\" in parts.netloc:
        return "must name a host, as in https://shop.example.com/page"
    if port == 0:
        return "must not use port 0"
    return None


@dataclass(frozen=True, slots=True)
class TargetingRule:
    """Send matching clicks elsewhere. An empty list matches anything; a rule matches when all do."""

    target: str
    devices: tuple[str, ...] = ()
    os: tuple[str, ...] = ()
    languages: tuple[str, ...] = ()

    def matches(self, device: str, os_name: str, accepted: tuple[str, ...]) -> bool:
        if self.devices and device not in self.devices:
            return False
        if self.os and os_name not in self.os:
            return False
        if self.languages:
            return any(
                lang == want or lang.split("-", 1)[0] == want
                for lang in accepted
                for want in self.languages
            )
        return True

    def as_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "devices": list(self.devices),
            "os": list(self.os),
            "languages": list(self.languages),
        }


class Resolution(NamedTuple):
    """What a click on a link leads to: a redirect (``location``) or a page (``status`` 404/410).

    A named tuple: one is made per redirect, and a frozen dataclass costs several times more."""

    status: int
    location: str = ""
    reason: str = ""
    counted: bool = False


@dataclass(frozen=True, slots=True)
class Link:
    slug: str
    target: str
    status_code: int = 302
    tags: tuple[str, ...] = ()
    campaign: str = ""
    channel: str = ""
    utm: dict[str, str] = field(default_factory=dict)
    forward_query: bool = True
    valid_since: datetime | None = None
    valid_until: datetime | None = None
    fallback_url: str = ""
    max_clicks: int | None = None
    disabled: bool = False
    rules: tuple[TargetingRule, ...] = ()
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    updated_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    version: int = 0
    # Precomputed so that a redirect only appends the click id: per target, the target plus UTM
    # without its fragment, whether it has a query, and the fragment ("#..." or "").
    _prefixes: dict[str, tuple[str, bool, str]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )
    _window: tuple[float, float] = field(
        default=(0.0, float("inf")), init=False, repr=False, compare=False
    )
    click_prefix: str | None = field(default=None, init=False, repr=False, compare=False)
    """For a link that is always on, untargeted and whose target has no fragment: where every
    click goes, but for the click id appended (and any query passed on). ``None`` for others:
    ask :meth:`resolve`."""
    click_fields: ClickLink = field(
        default=("", "", "", {}, ()), init=False, repr=False, compare=False
    )
    """What each click records of this link (collectors.links.records): slug, channel, campaign, UTM, tags."""

    def __post_init__(self) -> None:
        for url in (self.target, *(r.target for r in self.rules)):
            self._prefixes[url] = _prefix(url, self.utm)
        since = self.valid_since.timestamp() if self.valid_since else 0.0
        until = self.valid_until.timestamp() if self.valid_until else float("inf")
        object.__setattr__(self, "_window", (since, until))
        fields = (self.slug, self.channel, self.campaign, self.utm, self.tags)
        object.__setattr__(self, "click_fields", fields)
        if not (self.rules or self.disabled or self.valid_since or self.valid_until) and (
            self.max_clicks is None and not self._prefixes[self.target][2]
        ):
            prefix, has_query, _ = self._prefixes[self.target]
            joiner = "&" if has_query else "?"
            object.__setattr__(self, "click_prefix", f"{prefix}{joiner}{CLICK_ID_PARAM}=")

    def resolve(
        self,
        now: float,
        clicks: int,
        user_agent: str = "",
        accept_language: str = "",
        passed_query: list[tuple[str, str]] | None = None,
        click_id: str = "",
    ) -> Resolution:
        """Where this click goes. ``clicks`` is how many the link has had so far; ``click_id``
        must be URL-safe (``A-Z a-z 0-9 - _``), as :class:`collectors.links._clicks.ClickIds`
        draws them: it is appended as it is."""
        if self.click_prefix is not None and click_id and not passed_query:
            return Resolution(self.status_code, self.click_prefix + click_id, "", True)
        unavailable = self._unavailable(now, clicks)
        if unavailable is not None:
            status, reason = unavailable
            if self.fallback_url:
                return Resolution(302, self.fallback_url, reason)
            return Resolution(status, "", reason)
        target = self.target
        if self.rules:
            device, os_name = device_and_os(user_agent)
            accepted = languages(accept_language)
            for rule in self.rules:
                if rule.matches(device, os_name, accepted):
                    target = rule.target
                    break
        prefix, has_query, fragment = self._prefixes[target]
        if passed_query and self.forward_query:
            extra = urlencode(passed_query)
            if click_id:
                extra += f"&{CLICK_ID_PARAM}={click_id}"
        elif click_id:
            extra = f"{CLICK_ID_PARAM}={click_id}"
        else:
            return Resolution(self.status_code, prefix + fragment, "", True)
        # The query goes before the fragment: a browser never sends what follows "#".
        location = f"{prefix}{'&' if has_query else '?'}{extra}{fragment}"
        return Resolution(self.status_code, location, "", True)

    def _unavailable(self, now: float, clicks: int) -> tuple[int, str] | None:
        if self.disabled:
            return 410, "disabled"
        since, until = self._window
        if now < since:
            return 404, "not_yet_valid"
        if now >= until:
            return 410, "expired"
        if self.max_clicks is not None and clicks >= self.max_clicks:
            return 410, "exhausted"
        return None

    def to_record(self) -> dict[str, Any]:
        """The JSON form kept on the links topic and answered by the API."""
        return {
            "slug": self.slug,
            "target": self.target,
            "status_code": self.status_code,
            "tags": list(self.tags),
            "campaign": self.campaign,
            "channel": self.channel,
            "utm": dict(self.utm),
            "forward_query": self.forward_query,
            "valid_since": _format(self.valid_since),
            "valid_until": _format(self.valid_until),
            "fallback_url": self.fallback_url,
            "max_clicks": self.max_clicks,
            "disabled": self.disabled,
            "rules": [r.as_dict() for r in self.rules],
            "created_at": _format(self.created_at),
            "updated_at": _format(self.updated_at),
            "version": self.version,
        }

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Link:
        """Read a record back from the topic (trusted: it was validated when written)."""
        return cls(
            slug=record["slug"],
            target=record["target"],
            status_code=int(record.get("status_code", 302)),
            tags=tuple(record.get("tags") or ()),
            campaign=record.get("campaign", ""),
            channel=record.get("channel", ""),
            utm=dict(record.get("utm") or {}),
            forward_query=bool(record.get("forward_query", True)),
            valid_since=_parse(record.get("valid_since")),
            valid_until=_parse(record.get("valid_until")),
            fallback_url=record.get("fallback_url") or "",
            max_clicks=record.get("max_clicks"),
            disabled=bool(record.get("disabled", False)),
            rules=tuple(
                TargetingRule(
                    r["target"],
                    tuple(r.get("devices") or ()),
                    tuple(r.get("os") or ()),
                    tuple(r.get("languages") or ()),
                )
                for r in record.get("rules") or ()
            ),
            created_at=_parse(record.get("created_at")) or datetime.now(UTC),
            updated_at=_parse(record.get("updated_at")) or datetime.now(UTC),
            version=int(record.get("version", 0)),
        )


def parse_link(body: Any, existing: Link | None = None, slug: str | None = None) -> Link:
    """A new link from an API body, or ``existing`` with the body's fields changed.

    Raises :class:`ValidationError` naming every bad field.
    """
    if not isinstance(body, dict):
        raise ValidationError([FieldError("$", "the body must be a JSON object")])
    base: dict[str, Any] = existing.to_record() if existing else {}
    known = {name for name in Link.__dataclass_fields__ if not name.startswith("_")} - {
        "created_at",
        "updated_at",
        "version",
    }
    errors: list[FieldError] = [
        FieldError(name[:64] or '""', "is not a link field; see docs/links.md")
        for name in body
        if name not in known
    ]
    if existing is not None and "slug" in body and body["slug"] != existing.slug:
        errors.append(FieldError("slug", "cannot change; create a new link instead"))
    merged = {**base, **{k: v for k, v in body.items() if k in known}}
    if slug is not None:
        merged["slug"] = slug
    _check(merged, errors)
    if errors:
        raise ValidationError(errors)
    now = datetime.now(UTC)
    merged["created_at"] = existing.created_at.isoformat() if existing else now.isoformat()
    merged["updated_at"] = now.isoformat()
    # Versions order every write to a slug; the ClickHouse mirror keeps the highest.
    merged["version"] = max(time.time_ns() // 1000, (existing.version + 1) if existing else 0)
    return Link.from_record(merged)


def _check(link: dict[str, Any], errors: list[FieldError]) -> None:
    def bad(name: str, reason: str) -> None:
        errors.append(FieldError(name, reason))

    slug = link.get("slug")
    if not isinstance(slug, str):
        bad("slug", "must be a string")
    elif (reason := validate_slug(slug)) is not None:
        bad("slug", reason)
    if "target" not in link:
        bad("target", "is required")
    elif (reason := validate_target(link["target"])) is not None:
        bad("target", reason)
    if link.get("status_code", 302) not in REDIRECT_CODES:
        bad("status_code", f"must be one of {', '.join(map(str, REDIRECT_CODES))}")
    tags = link.get("tags", [])
    if not isinstance(tags, list) or len(tags) > MAX_TAGS:
        bad("tags", f"must be a list of at most {MAX_TAGS} strings")
    elif not all(isinstance(t, str) and 0 < len(t) <= MAX_TAG_LENGTH for t in tags):
        bad("tags", f"each tag must be a string of 1-{MAX_TAG_LENGTH} characters")
    campaign = link.get("campaign", "")
    if not isinstance(campaign, str) or len(campaign) > MAX_TEXT_LENGTH:
        bad("campaign", f"must be a string of at most {MAX_TEXT_LENGTH} characters")
    channel = link.get("channel", "")
    if not isinstance(channel, str) or (channel and not _CHANNEL.fullmatch(channel)):
        bad("channel", "must be lower-case letters, digits and '_', such as email or social")
    utm = link.get("utm", {})
    if not isinstance(utm, dict) or any(k not in UTM_FIELDS for k in utm):
        bad("utm", f"must be an object with any of {', '.join(UTM_FIELDS)}")
    elif not all(isinstance(v, str) and len(v) <= MAX_TEXT_LENGTH for v in utm.values()):
        bad("utm", f"values must be strings of at most {MAX_TEXT_LENGTH} characters")
    if not isinstance(link.get("forward_query", True), bool):
        bad("forward_query", "must be true or false")
    if not isinstance(link.get("disabled", False), bool):
        bad("disabled", "must be true or false")
    for name in ("valid_since", "valid_until"):
        value = link.get(name)
        if value is not None:
            try:
                link[name] = _format(_parse_strict(value))
            except ValueError as exc:
                bad(name, str(exc))
    since, until = _parse(link.get("valid_since")), _parse(link.get("valid_until"))
    if since is not None and until is not None and until <= since:
        bad("valid_until", "must be later than valid_since")
    fallback = link.get("fallback_url")
    if fallback is None:
        link["fallback_url"] = ""  # null and "" both mean: no fallback
    elif not isinstance(fallback, str):
        bad("fallback_url", "must be an absolute http:// or https:// URL, or null")
    elif fallback and (reason := validate_target(fallback)) is not None:
        bad("fallback_url", reason)
    max_clicks = link.get("max_clicks")
    if max_clicks is not None and (
        not isinstance(max_clicks, int)
        or isinstance(max_clicks, bool)
        or not 1 <= max_clicks <= MAX_CLICKS_LIMIT
    ):
        bad(
            "max_clicks",
            f"must be a whole number from 1 to {MAX_CLICKS_LIMIT:,}, or null for no limit",
        )
    _check_rules(link.get("rules", []), bad)


def _check_rules(rules: Any, bad: Any) -> None:
    if not isinstance(rules, list) or len(rules) > MAX_RULES:
        bad("rules", f"must be a list of at most {MAX_RULES} targeting rules")
        return
    for index, rule in enumerate(rules):
        where = f"rules.{index}"
        if not isinstance(rule, dict):
            bad(where, "must be an object with a target and devices, os or languages")
            continue
        unknown = set(rule) - {"target", "devices", "os", "languages"}
        if unknown:
            bad(f"{where}.{sorted(unknown)[0]}", "is not a rule field")
        if (reason := validate_target(rule.get("target"))) is not None:
            bad(f"{where}.target", reason)
        for name, allowed in (("devices", DEVICES), ("os", OPERATING_SYSTEMS)):
            values = rule.get(name, [])
            if (
                not isinstance(values, list)
                or len(values) > len(allowed)
                or any(v not in allowed for v in values)
            ):
                bad(f"{where}.{name}", f"must be a list of {', '.join(allowed)}, each at most once")
        langs = rule.get("languages", [])
        if not isinstance(langs, list) or len(langs) > MAX_RULE_LANGUAGES:
            bad(f"{where}.languages", f"must be a list of at most {MAX_RULE_LANGUAGES} tags")
        elif not all(isinstance(v, str) and _LANGUAGE.fullmatch(v.lower()) for v in langs):
            bad(f"{where}.languages", "must be a list of language tags such as fr or pt-br")
        else:
            rule["languages"] = [v.lower() for v in langs]


@lru_cache(maxsize=4096)
def device_and_os(user_agent: str) -> tuple[str, str]:
    """A cheap device class and OS from the user agent, for targeting on the redirect path."""
    ua = user_agent.lower()
    if "iphone" in ua or "ipod" in ua:
        return "mobile", "ios"
    if "ipad" in ua:
        return "tablet", "ios"
    if "android" in ua:
        return ("mobile" if "mobile" in ua else "tablet"), "android"
    if "windows phone" in ua:
        return "mobile", "windows"
    if "windows" in ua:
        return "desktop", "windows"
    if "cros" in ua:
        return "desktop", "chromeos"
    if "macintosh" in ua or "mac os x" in ua:
        return "desktop", "macos"
    if "linux" in ua:
        return ("mobile" if "mobile" in ua else "desktop"), "linux"
    return ("mobile" if "mobi" in ua else "desktop"), ""


def _prefix(url: str, utm: dict[str, str]) -> tuple[str, bool, str]:
    """The target with the link's UTM parameters merged in (they replace same-named ones) and
    its fragment taken off, whether that has a query, and the fragment (``"#..."`` or ``""``)."""
    base, hash_mark, fragment = url.partition("#")
    parts = urlsplit(base)
    if not utm:
        return base, bool(parts.query), hash_mark + fragment
    names = {f"utm_{k}" for k in utm}
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k not in names]
    query += [(f"utm_{k}", v) for k, v in utm.items() if v]
    encoded = urlencode(query, quote_via=quote)
    return urlunsplit(parts._replace(query=encoded)), bool(encoded), hash_mark + fragment


def _parse(value: Any) -> datetime | None:
    """A time kept on a record (validated when written), or ``None``."""
    if not value:
        return None
    try:
        return _read_time(value)
    except ValueError:
        return None


def _parse_strict(value: Any) -> datetime:
    """A validity time from the API, within the range the ``links`` table can hold."""
    utc = _read_time(value)
    if not EARLIEST_VALIDITY <= utc <= LATEST_VALIDITY:
        raise ValueError("must be between 1970-01-01T00:00:00Z and 2299-12-31T23:59:59Z")
    return utc


def _read_time(value: Any) -> datetime:
    if not isinstance(value, str):
        raise ValueError("must be an RFC 3339 timestamp such as 2026-12-01T00:00:00Z, or null")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(
            f"must be an RFC 3339 timestamp such as 2026-12-01T00:00:00Z, got {value[:40]!r}"
        ) from None
    return as_utc(parsed)


def _format(value: datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z") if value else None
