"""Mirror of the links topic into ClickHouse ``links``: one row per change, deletes marked.

The row mapping is plain Python; :func:`add_links_mirror` only wires the topic to a sink.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import faust
import orjson

from agents.batches import BatchRunner, dead_letter_policy, run_batches
from agents.ingest import RawMessage
from tracker.kafka.topology import Topology
from tracker.settings import Settings
from tracker.store import ClickHouseStore
from tracker.store.sink import ClickHouseSink, Sink
from tracker.store.tables import LINKS

__all__ = ["add_links_mirror", "link_row", "mirror_links"]


def link_row(
    slug: str, value: bytes | None, timestamp_ms: int
) -> tuple[int, datetime, dict[str, Any]]:
    """(version, updated_at, row by column name) for one links record; a tombstone (``None``)
    marks a delete. The ``links`` table's columns are ``LINKS`` in tracker/store/tables.py."""
    if value is None:
        # After every version written before it: link versions are set before they are produced.
        version = (timestamp_ms + 1) * 1000
        at = datetime.fromtimestamp(timestamp_ms / 1000, UTC)
        gone: dict[str, Any] = {
            "slug": slug,
            "version": version,
            "deleted": True,
            "target": "",
            "status_code": 0,
            "tags": [],
            "campaign": "",
            "channel": "",
            "utm_source": "",
            "utm_medium": "",
            "utm_campaign": "",
            "utm_term": "",
            "utm_content": "",
            "forward_query": False,
            "valid_since": None,
            "valid_until": None,
            "fallback_url": "",
            "max_clicks": None,
            "disabled": False,
            "rules": "[]",
            "created_at": None,
            "updated_at": at,
        }
        return version, at, gone
    link = orjson.loads(value)
    utm = link.get("utm") or {}
    updated = _ts(link.get("updated_at")) or datetime.fromtimestamp(timestamp_ms / 1000, UTC)
    version = int(link.get("version") or timestamp_ms * 1000)
    row = {
        "slug": slug,
        "version": version,
        "deleted": False,
        "target": link["target"],
        "status_code": int(link.get("status_code", 302)),
        "tags": list(link.get("tags") or []),
        "campaign": link.get("campaign", ""),
        "channel": link.get("channel", ""),
        "utm_source": utm.get("source", ""),
        "utm_medium": utm.get("medium", ""),
        "utm_campaign": utm.get("campaign", ""),
        "utm_term": utm.get("term", ""),
        "utm_content": utm.get("content", ""),
        "forward_query": bool(link.get("forward_query", True)),
        "valid_since": _ts(link.get("valid_since")),
        "valid_until": _ts(link.get("valid_until")),
        "fallback_url": link.get("fallback_url") or "",  # null, as some records have it: none
        "max_clicks": link.get("max_clicks"),
        "disabled": bool(link.get("disabled", False)),
        "rules": orjson.dumps(link.get("rules") or []).decode(),
        "created_at": _ts(link.get("created_at")),
        "updated_at": updated,
    }
    return version, updated, row


async def mirror_links(sink: Sink, records: list[tuple[str, bytes | None, int]]) -> None:
    """Write a batch of (slug, value, timestamp ms) records; returns once ClickHouse has them."""
    for slug, value, timestamp_ms in records:
        version, updated, row = link_row(slug, value, timestamp_ms)
        sink.add(slug, updated, row, version)
    await sink.flush()


def add_links_mirror(
    app: faust.App, store: ClickHouseStore, topology: Topology, settings: Settings
) -> None:
    """Register the ``links`` agent on the Faust ``app``."""
    sink = ClickHouseSink(store, LINKS)
    topic = app.topic(topology.links.name, value_serializer="raw", key_serializer="raw")

    async def mirror(events: Sequence[Any]) -> None:
        await mirror_links(
            sink,
            [
                (e.key.decode(), e.value, int(e.message.timestamp * 1000))
                for e in events
                if e.key is not None
            ],
        )

    def source(event: Any) -> RawMessage:
        m = event.message
        return RawMessage(event.value or b"", m.topic, m.partition, m.offset)

    runner = BatchRunner("links", mirror, source, dead_letter_policy(store), discard=sink.discard)

    @app.agent(topic, name="links")
    async def links(stream: Any) -> None:
        await run_batches(
            stream,
            runner,
            settings.sink_batch_size,
            settings.sink_flush_seconds,
            compacted=True,  # its offsets have holes by design
        )


def _ts(raw: Any) -> datetime | None:
    if not raw:
        return None
    return datetime.fromisoformat(raw).astimezone(UTC)
