"""Request rate limits: a token bucket per client (a truncated address, a write key), per surface."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Final

__all__ = ["RATE_LIMIT_SURFACES", "RateLimit", "TokenBuckets", "retry_after"]


@dataclass(frozen=True, slots=True)
class RateLimit:
    """``rate`` requests a second per client, in bursts of up to ``burst``."""

    rate: float
    burst: int


# Every HTTP surface and its default limit per client (TRACKER_RATE_LIMITS overrides them).
# A client is a truncated address (IPv4 /24, IPv6 /48), so one limit is shared by a network's
# visitors: the defaults leave room for an office or a carrier's NAT.
RATE_LIMIT_SURFACES: Final = {
    "beacon": RateLimit(100.0, 400),  # /v1/events, the pixel, Segment's API, /v1/numbers, t.js
    "links": RateLimit(100.0, 400),  # short-link redirects
    "links_api": RateLimit(10.0, 40),  # /api/links: TRACKER_LINKS_API_RATE and _BURST
    "calls": RateLimit(200.0, 1000),  # call webhooks: providers send from few addresses
    "email": RateLimit(200.0, 1000),  # email webhooks, likewise
    "helpdesk": RateLimit(200.0, 1000),  # helpdesk and chat webhooks, likewise
    "console": RateLimit(5.0, 30),  # /api/query, /api/reports, /api/forget, the page
}


class TokenBuckets:
    """A token bucket per client: ``rate`` requests a second, bursts up to ``burst``."""

    def __init__(self, rate: float, burst: int, max_clients: int = 100_000) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._max_clients = max_clients
        self._buckets: dict[str, tuple[float, float]] = {}
        self._swept = float("-inf")

    @classmethod
    def of(cls, limit: RateLimit) -> TokenBuckets:
        return cls(limit.rate, limit.burst)

    def take(self, client: str, now: float | None = None) -> float:
        """0 when the request may go ahead, else the seconds until it may."""
        now = time.monotonic() if now is None else now
        tokens, last = self._buckets.get(client, (self._burst, now))
        tokens = min(self._burst, tokens + (now - last) * self._rate)
        if tokens < 1.0:
            self._buckets[client] = (tokens, now)
            return (1.0 - tokens) / self._rate
        if len(self._buckets) >= self._max_clients and client not in self._buckets:
            self._forget_refilled(now)
            if len(self._buckets) >= self._max_clients:
                return 0.0  # a new client's bucket is full anyway: let it by, untracked
        self._buckets[client] = (tokens - 1.0, now)
        return 0.0

    def _forget_refilled(self, now: float) -> None:
        """Bound memory by dropping the buckets that have refilled (a client that comes back
        starts full anyway), so that clients being held back keep their debt however many
        addresses a flood rotates through. At most once a second: a sweep reads every bucket."""
        if now - self._swept < 1.0:
            return
        self._swept = now
        refilled = [
            client
            for client, (tokens, last) in self._buckets.items()
            if tokens + (now - last) * self._rate >= self._burst
        ]
        for client in refilled:
            del self._buckets[client]


def retry_after(wait: float) -> int:
    """The whole seconds a ``Retry-After`` header says for a wait of ``wait`` seconds."""
    return max(1, math.ceil(wait))
