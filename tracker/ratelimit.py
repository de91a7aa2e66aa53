"""Request rate limits: a token bucket per client (an address, a write key)."""

from __future__ import annotations

import time

__all__ = ["TokenBuckets"]


class TokenBuckets:
    """A token bucket per client address: ``rate`` requests a second, bursts up to ``burst``."""

    def __init__(self, rate: float, burst: int, max_clients: int = 100_000) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._max_clients = max_clients
        self._buckets: dict[str, tuple[float, float]] = {}

    def take(self, client: str, now: float | None = None) -> float:
        """0 when the request may go ahead, else the seconds until it may."""
        now = time.monotonic() if now is None else now
        tokens, last = self._buckets.get(client, (self._burst, now))
        tokens = min(self._burst, tokens + (now - last) * self._rate)
        if tokens < 1.0:
            self._buckets[client] = (tokens, now)
            return (1.0 - tokens) / self._rate
        if len(self._buckets) >= self._max_clients and client not in self._buckets:
            self._buckets.clear()  # crude bound on memory; full buckets are the default anyway
        self._buckets[client] = (tokens - 1.0, now)
        return 0.0
