"""Write keys: which source sent a request, and whether it may send now. HTTP-free.

Sources come from ``TRACKER_SOURCES`` (docs/sources.md). A key is a secret: it is compared in
constant time, against every source, and never logged or echoed.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import math

from tracker.errors import TrackerError
from tracker.ratelimit import TokenBuckets
from tracker.settings import Settings, Source

__all__ = ["Refused", "Sources"]


class Refused(TrackerError):
    """The request may not go ahead: 401 (no or a bad key) or 429 (too fast; ``retry_after``)."""

    def __init__(self, status: int, reason: str, retry_after: int = 0) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.retry_after = retry_after


class Sources:
    """The configured sources. With none configured the beacon is open, as ``/v1/events`` always
    was: any key or none is accepted and nothing is trusted as a server."""

    def __init__(self, settings: Settings) -> None:
        self._sources = settings.sources
        self._keys = [(s, s.write_key.value.encode()) for s in settings.sources]
        self._buckets = {
            s.name: TokenBuckets(s.rate or settings.source_rate, s.burst or settings.source_burst)
            for s in settings.sources
        }

    @property
    def open(self) -> bool:
        return not self._sources

    def authenticate(self, authorization: str | None, body_key: str | None = None) -> Source | None:
        """The source whose key the request carries: HTTP basic with the key as user name (the
        password is ignored), else ``writeKey`` in the body. ``None`` when the beacon is open.
        Raises :class:`Refused` (401) for a missing, unknown or revoked key."""
        if self.open:
            return None
        key = _basic_user(authorization) if authorization else body_key
        if not key:
            raise Refused(
                401,
                "a write key is required: HTTP basic authentication with the source's write key "
                "as user name and an empty password",
            )
        found = self._find(key.encode())
        if found is None:
            raise Refused(401, "the write key is not one of this collector's sources")
        if found.revoked:
            raise Refused(401, f"the write key of source {found.name!r} was revoked")
        return found

    def throttle(self, source: Source | None) -> None:
        """Raises :class:`Refused` (429) when ``source`` sent more than its rate allows."""
        if source is None:
            return
        wait = self._buckets[source.name].take(source.name)
        if wait > 0:
            raise Refused(
                429,
                f"source {source.name!r} sends faster than its limit; retry after the "
                "Retry-After seconds (TRACKER_SOURCE_RATE, TRACKER_SOURCE_BURST)",
                retry_after=max(1, math.ceil(wait)),
            )

    def _find(self, key: bytes) -> Source | None:
        found = None
        for source, expected in self._keys:  # every key, so timing tells nothing
            if hmac.compare_digest(key, expected):
                found = source
        return found


def _basic_user(authorization: str) -> str:
    scheme, _, encoded = authorization.strip().partition(" ")
    if scheme.lower() != "basic":
        raise Refused(401, "Authorization must be HTTP basic, with the write key as user name")
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        raise Refused(401, "Authorization is not valid HTTP basic (base64 of key:)") from None
    return decoded.partition(":")[0]
