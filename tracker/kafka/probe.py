"""Whether Kafka can be reached now, known without waiting on a request: a metadata request every
few seconds from a background task, and at once after a failure someone reports.

A collector refuses fast (503 with ``Retry-After``) while :attr:`KafkaProbe.reachable` is false,
instead of waiting out the produce timeout on every request, and its ``/readyz`` says why.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from aiokafka.client import AIOKafkaClient
from aiokafka.errors import KafkaError

from tracker.kafka.clients import security
from tracker.metrics import KAFKA_REACHABLE
from tracker.settings import Settings

__all__ = ["KafkaProbe"]

log = logging.getLogger(__name__)


class KafkaProbe:
    def __init__(self, settings: Settings, client_id: str) -> None:
        """Looks every TRACKER_KAFKA_PROBE_SECONDS, giving up after
        TRACKER_PRODUCE_TIMEOUT_SECONDS, connected as every other client is."""
        self._bootstrap = settings.bootstrap_servers
        self._security = security(settings)
        self._interval = settings.kafka_probe_seconds
        self._timeout = settings.produce_timeout_seconds
        self._client_id = client_id
        self._client: AIOKafkaClient | None = None
        self._task: asyncio.Task[None] | None = None
        self._look_now = asyncio.Event()
        self.reachable = False
        self.reason = f"not connected to Kafka at {self._bootstrap} yet"
        KAFKA_REACHABLE.set(0)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._watch())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._close_client()

    def mark_down(self, reason: str) -> None:
        """A request failed: refuse fast from now until the probe sees Kafka answer again."""
        self._set(False, reason)
        self._look_now.set()

    async def _watch(self) -> None:
        while True:
            try:
                async with asyncio.timeout(self._timeout):
                    await self._ask()
            except (KafkaError, OSError, TimeoutError) as exc:
                detail = str(exc) or type(exc).__name__
                self._set(False, f"Kafka at {self._bootstrap} is unreachable: {detail}")
                await self._close_client()
            else:
                self._set(True, "")
            self._look_now.clear()
            # While Kafka is down, look again sooner: the circuit closes soon after it is back.
            wait = self._interval if self.reachable else min(self._interval, 1.0)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._look_now.wait(), timeout=wait)

    async def _ask(self) -> None:
        if self._client is None:
            client = AIOKafkaClient(
                bootstrap_servers=self._bootstrap,
                client_id=f"{self._client_id}-probe",
                request_timeout_ms=int(self._timeout * 1000),
                **self._security,
            )
            try:
                await client.bootstrap()
            except BaseException:
                await client.close()
                raise
            self._client = client
        else:
            await self._client.fetch_all_metadata()

    async def _close_client(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(KafkaError, OSError):
                await client.close()

    def _set(self, reachable: bool, reason: str) -> None:
        if reachable != self.reachable:
            if reachable:
                log.info("kafka reachable again", extra={"bootstrap": self._bootstrap})
            else:
                log.warning("kafka unavailable", extra={"reason": reason})
        self.reachable, self.reason = reachable, reason
        KAFKA_REACHABLE.set(1 if reachable else 0)
