"""Privacy by default: truncated IPs, salted identifier hashes, and personal data kept out of
URLs and free text (:class:`PiiRules`, :func:`scrub_url`, :func:`scrub_text`)."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Final
from urllib.parse import quote, unquote, unquote_plus, urlsplit, urlunsplit

import phonenumbers

from tracker.errors import TrackerError

__all__ = [
    "DEFAULT_PII_QUERY_PARAMS",
    "IDENTIFIER_KINDS",
    "PII_MODES",
    "InvalidIdentifier",
    "PiiRules",
    "hash_identifier",
    "identifier_key",
    "identifier_keys",
    "normalize_email",
    "normalize_phone",
    "redact_emails",
    "scrub_properties",
    "scrub_text",
    "scrub_url",
    "truncate_ip",
]


IDENTIFIER_KINDS = ("user", "anon", "email", "phone", "click")
REDACTED_EMAIL: Final = "<redacted email>"
REDACTED_PHONE: Final = "<redacted phone>"
# In a URL the marker must stay a valid path or query character.
URL_REDACTED_EMAIL: Final = "redacted-email"
URL_REDACTED_PHONE: Final = "redacted-phone"
PII_MODES: Final = ("strip", "hash", "off")
# Query parameters (and property keys) whose value is personal or a secret, whatever it looks
# like. Compared lower-cased. Ad click ids (gclid, ...) are not here: enrichment reads them.
DEFAULT_PII_QUERY_PARAMS: Final = (
    "email",
    "e-mail",
    "e_mail",
    "email_address",
    "mail",
    "phone",
    "phone_number",
    "tel",
    "telephone",
    "mobile",
    "token",
    "access_token",
    "id_token",
    "refresh_token",
    "auth",
    "authorization",
    "password",
    "passwd",
    "pwd",
    "key",
    "api_key",
    "apikey",
    "secret",
    "client_secret",
    "ssn",
)
# Fewer digits than this cannot be a phone number: the matcher is not even asked.
_MIN_PHONE_DIGITS: Final = 7
# Properties that are identifiers by design are left as sent: CRM ids link customers, and an
# email's Message-ID (id@host, shaped like an address) ties its sent, open and click events.
_IDENTIFIER_PROPERTY_PREFIXES: Final = ("crm.",)
_IDENTIFIER_PROPERTIES: Final = frozenset({"message_id"})
# An address anywhere in a text. A match starts only where a run of local-part characters starts
# (the lookbehind), and no class overlaps the separator after it, so the scan stays linear.
_EMAIL_IN_TEXT = re.compile(
    r"(?<![A-Za-z0-9._%+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+"
)


class InvalidIdentifier(TrackerError, ValueError):
    """An email or phone number that cannot be normalized. Still a ``ValueError`` for callers
    that catch parse errors broadly."""


@lru_cache(maxsize=65536)  # pure, and the same visitors come back: keeps parsing off hot paths
def truncate_ip(raw: str) -> str:
    """Keep the network, drop the host: IPv4 to /24, IPv6 to /48. Unparseable input gives ``""``.

    Cached: every event of a batch, and every request of a visit, comes from the same address.
    """
    try:
        address = ipaddress.ip_address(raw.strip())
    except ValueError:
        return ""
    if address.version == 6 and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    prefix = 24 if address.version == 4 else 48
    return str(ipaddress.ip_network(f"{address}/{prefix}", strict=False).network_address)


def normalize_email(raw: str) -> str:
    email = raw.strip().lower()
    local, _, domain = email.partition("@")
    if not local or "." not in domain or " " in email:
        raise InvalidIdentifier("is not an email address")
    return email


def normalize_phone(raw: str, default_region: str) -> str:
    """E.164, so that the same number always hashes the same way."""
    try:
        number = phonenumbers.parse(raw, default_region)
    except phonenumbers.NumberParseException:
        raise InvalidIdentifier("is not a phone number") from None
    if not phonenumbers.is_possible_number(number):
        raise InvalidIdentifier("is not a possible phone number")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def redact_emails(text: str) -> str:
    """``text`` with every email address in it replaced by ``<redacted email>``."""
    return _EMAIL_IN_TEXT.sub(REDACTED_EMAIL, text) if "@" in text else text


def hash_identifier(kind: str, normalized: str, salt: str) -> str:
    """HMAC-SHA256 under the deployment's secret salt: stable for joins, useless without the salt."""
    message = f"{kind}:{normalized}".encode()
    return hmac.new(salt.encode(), message, hashlib.sha256).hexdigest()


def identifier_key(raw: str, salt: str, phone_region: str) -> str:
    """``kind:value`` as a person writes it (``email:ada@example.com``) to the form touchpoints
    store it under (``email:<salted hash>``)."""
    kind, _, value = raw.partition(":")
    kind, value = kind.strip().lower(), value.strip()
    if kind not in IDENTIFIER_KINDS or not value:
        raise InvalidIdentifier(
            f"must be kind:value with kind one of {', '.join(IDENTIFIER_KINDS)}, e.g. email:ada@example.com"
        )
    if kind == "email":
        return f"email:{hash_identifier('email', normalize_email(value), salt)}"
    if kind == "phone":
        return f"phone:{hash_identifier('phone', normalize_phone(value, phone_region), salt)}"
    return f"{kind}:{value}"


def identifier_keys(raw: str, salts: tuple[str, ...], phone_region: str) -> list[str]:
    """:func:`identifier_key` under each salt, the current one first, without repeats: during
    a salt rotation an identifier may be stored under the previous salt's hash."""
    keys: list[str] = []
    for salt in salts:
        key = identifier_key(raw, salt, phone_region)
        if key not in keys:
            keys.append(key)
    return keys


@dataclass(frozen=True, slots=True)
class PiiRules:
    """What is kept out of URLs and free text before storage (``TRACKER_PII_*``).

    ``strip`` drops a listed query parameter and replaces an email address or a phone number
    with a marker; ``hash`` replaces each with its salted hash instead (an email's is the
    ``email_hash`` a touchpoint carrying it would have, so the two can be joined); ``off``
    keeps everything as sent, which stores personal data and is unsafe.
    """

    mode: str = "strip"
    params: frozenset[str] = frozenset(DEFAULT_PII_QUERY_PARAMS)
    salt: str = ""
    phone_region: str = "US"

    @property
    def enabled(self) -> bool:
        return self.mode != "off"

    def listed(self, name: str) -> bool:
        return name.strip().lower() in self.params


def scrub_text(text: str, rules: PiiRules) -> str:
    """``text`` with each email address and phone number in it replaced (``rules.mode``)."""
    return _scrub(text, rules, in_url=False)


@lru_cache(maxsize=4096)  # pages repeat, and finding phone numbers costs ~0.1 ms per digit run
def scrub_url(url: str, rules: PiiRules) -> str:
    """``url`` without personal data: the listed query parameters dropped (or their values
    hashed), and emails and phone numbers in its path, query and fragment replaced.

    A URL without any is returned unchanged, byte for byte. Query pairs that are not touched
    keep their own encoding; a URL that does not parse is scrubbed as text.
    """
    if not rules.enabled or not url:
        return url
    try:
        parts = urlsplit(url)
    except ValueError:
        return _scrub(url, rules, in_url=True)
    path = _scrub_url_part(parts.path, rules)
    query = _scrub_query(parts.query, rules)
    fragment = _scrub_url_part(parts.fragment, rules)
    netloc = parts.netloc
    if "@" in netloc:  # user info: https://ada@example.com:secret@host/ is someone's login
        netloc = netloc.rpartition("@")[2]
    if (path, query, fragment, netloc) == (parts.path, parts.query, parts.fragment, parts.netloc):
        return url
    return urlunsplit(parts._replace(netloc=netloc, path=path, query=query, fragment=fragment))


def scrub_properties(properties: Mapping[str, str], rules: PiiRules) -> dict[str, str]:
    """Properties without personal data: a listed key dropped (or its value hashed), URLs
    scrubbed as URLs, other values as text; CRM ids (``crm.*``) and ``message_id`` kept, they
    are identifiers."""
    if not rules.enabled:
        return dict(properties)
    kept: dict[str, str] = {}
    for key, value in properties.items():
        if key in _IDENTIFIER_PROPERTIES or key.startswith(_IDENTIFIER_PROPERTY_PREFIXES):
            kept[key] = value
        elif rules.listed(key):
            if rules.mode == "hash":
                kept[key] = _value_hash(key, value, rules)
        elif value.startswith(("http://", "https://")):
            kept[key] = scrub_url(value, rules)
        else:
            kept[key] = _scrub(value, rules, in_url=False)
    return kept


def _scrub_query(query: str, rules: PiiRules) -> str:
    if not query:
        return query
    pairs = query.split("&")
    kept: list[str] = []
    changed = False
    for pair in pairs:
        raw_name, eq, raw_value = pair.partition("=")
        name = unquote_plus(raw_name)
        if rules.listed(name):
            changed = True
            if rules.mode == "hash":
                kept.append(f"{raw_name}={_value_hash(name, unquote_plus(raw_value), rules)}")
            continue
        value = unquote_plus(raw_value)
        scrubbed = _scrub(value, rules, in_url=True)
        if scrubbed != value:
            changed = True
            kept.append(f"{raw_name}{eq}{quote(scrubbed, safe='')}")
        else:
            kept.append(pair)
    return "&".join(kept) if changed else query


def _scrub_url_part(part: str, rules: PiiRules) -> str:
    """A path or fragment: searched decoded, re-encoded only where something was replaced."""
    if not part:
        return part
    decoded = unquote(part) if "%" in part else part
    scrubbed = _scrub(decoded, rules, in_url=True)
    if scrubbed == decoded:
        return part
    return quote(scrubbed, safe="/:;,=!$&'()*+~@-._")


def _value_hash(name: str, value: str, rules: PiiRules) -> str:
    """A listed parameter's value, hashed: an email or phone number as its identifier hash."""
    if "@" in value:
        try:
            return hash_identifier("email", normalize_email(value), rules.salt)
        except InvalidIdentifier:
            pass
    return hash_identifier(f"param:{name.strip().lower()}", value, rules.salt)


def _scrub(text: str, rules: PiiRules, in_url: bool) -> str:
    if not rules.enabled or not text:
        return text
    if "@" not in text and sum(c.isdigit() for c in text) < _MIN_PHONE_DIGITS:
        return text  # the common case, without a cache lookup
    return _scrub_found(text, rules, in_url)


@lru_cache(maxsize=4096)
def _scrub_found(text: str, rules: PiiRules, in_url: bool) -> str:
    if "@" in text:
        text = _EMAIL_IN_TEXT.sub(lambda m: _email_marker(m.group(0), rules, in_url), text)
    if sum(c.isdigit() for c in text) >= _MIN_PHONE_DIGITS:
        text = _scrub_phones(text, rules, in_url)
    return text


def _scrub_phones(text: str, rules: PiiRules, in_url: bool) -> str:
    found = list(phonenumbers.PhoneNumberMatcher(text, rules.phone_region))
    for match in reversed(found):  # from the end, so earlier offsets stay right
        if rules.mode == "hash":
            e164 = phonenumbers.format_number(match.number, phonenumbers.PhoneNumberFormat.E164)
            marker = hash_identifier("phone", e164, rules.salt)
        else:
            marker = URL_REDACTED_PHONE if in_url else REDACTED_PHONE
        text = text[: match.start] + marker + text[match.end :]
    return text


def _email_marker(address: str, rules: PiiRules, in_url: bool) -> str:
    if rules.mode == "hash":
        try:
            return hash_identifier("email", normalize_email(address), rules.salt)
        except InvalidIdentifier:
            pass
    return URL_REDACTED_EMAIL if in_url else REDACTED_EMAIL
