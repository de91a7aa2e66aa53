"""Mirror of the links topic into ClickHouse ``links``: one row per change, deletes marked.

The row mapping is plain Python; :func:`add_links_mirror` only wires the topic to a sink.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import faust
import orjson

from agents.batches import acked_batches
from tracker.kafka.topology import Topology
from tracker.settings import Settings
from tracker.store import ClickHouseStore
from tracker.store.sink import ClickHouseSink, Sink

__all__ = ["LINK_COLUMNS", "add_links_mirror", "link_row", "mirror_links"]

LINK_COLUMNS = (
    "slug",
    "version",
    "deleted",
    "target",
    "status_code",
    "tags",
    "campaign",
    "channel",
    "utm_source",
    "utm_medium",
    "utm_campaign",
    "utm_term",
    "utm_content",
    "forward_query",
    "valid_since",
    "valid_until",
    "fallback_url",
    "max_clicks",
    "disabled",
    "rules",
    "created_at",
    "updated_at",
)


def link_row(
    slug: str, value: bytes | None, timestamp_ms: int
) -> tuple[int, datetime, tuple[Any, ...]]:
    """(version, updated_at, row) for one links record; a tombstone (``None``) marks a delete."""
    if value is None:
        # After every version written before it: link versions are set before they are produced.
        version = (timestamp_ms + 1) * 1000
        at = datetime.fromtimestamp(timestamp_ms / 1000, UTC)
        row: tuple[Any, ...] = (
            slug,
            version,
            True,
            "",
            0,
            [],
            "",
            "",
            "",
            "",
            "",
            "",
            "",
            False,
            None,
            None,
            "",
            None,
            False,
            "[]",
            None,
            at,
        )
        return version, at, row
    link = orjson.loads(value)
    utm = link.get("utm") or {}
    updated = _ts(link.get("updated_at")) or datetime.fromtimestamp(timestamp_ms / 1000, UTC)
    version = int(link.get("version") or timestamp_ms * 1000)
    row = (
        slug,
        version,
        False,
        link["target"],
        int(link.get("status_code", 302)),
        list(link.get("tags") or []),
        link.get("campaign", ""),
        link.get("channel", ""),
        utm.get("source", ""),
        utm.get("medium", ""),
        utm.get("campaign", ""),
        utm.get("term", ""),
        utm.get("content", ""),
        bool(link.get("forward_query", True)),
        _ts(link.get("valid_since")),
        _ts(link.get("valid_until")),
        link.get("fallback_url") or "",  # null, as some records have it, is no fallback
        link.get("max_clicks"),
        bool(link.get("disabled", False)),
        orjson.dumps(link.get("rules") or []).decode(),
        _ts(link.get("created_at")),
        updated,
    )
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
    sink = ClickHouseSink(
        store, "links", LINK_COLUMNS, "slug", "updated_at", version_column="version"
    )
    topic = app.topic(topology.links.name, value_serializer="raw", key_serializer="raw")

    @app.agent(topic, name="links")
    async def links(stream: Any) -> None:
        async for events in acked_batches(
            stream, settings.sink_batch_size, settings.sink_flush_seconds
        ):
            await mirror_links(
                sink,
                [
                    (e.key.decode(), e.value, int(e.message.timestamp * 1000))
                    for e in events
                    if e.key is not None
                ],
            )


def _ts(raw: Any) -> datetime | None:
    if not raw:
        return None
    return datetime.fromisoformat(raw).astimezone(UTC)
