"""Privacy by default: truncated IPs and salted identifier hashes."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import re
from functools import lru_cache
from typing import Final

import phonenumbers

from tracker.errors import TrackerError

__all__ = [
    "IDENTIFIER_KINDS",
    "InvalidIdentifier",
    "hash_identifier",
    "identifier_key",
    "normalize_email",
    "normalize_phone",
    "redact_emails",
    "truncate_ip",
]


IDENTIFIER_KINDS = ("user", "anon", "email", "phone", "click")
REDACTED_EMAIL: Final = "<redacted email>"
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
