"""Taking a Faust stream a batch at a time, acknowledging a batch only once it is handled."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

__all__ = ["acked_batches"]


async def acked_batches(stream: Any, size: int, within: float) -> AsyncIterator[list[Any]]:
    """Batches of up to ``size`` events, or what came ``within`` seconds. Each batch is
    acknowledged when the loop body asks for the next one, so a body that raises (or a worker
    that dies in it) leaves the batch to be delivered again."""
    async for events in stream.noack_take(size, within=within):
        yield events
        for event in events:
            await stream.ack(event)
