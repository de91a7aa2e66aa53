"""Short-link click batches in, ``link_click`` touchpoints out. Plain Python, no Faust.

Each record of ``links.click_batches`` holds many clicks (:mod:`collectors.links.records`). Every click
becomes the touchpoint the links service used to build itself, with an ``event_id`` derived from
the click, so a replayed batch is written once. A click the touchpoint schema refuses, or a record
that is not a batch, becomes a dead letter with the reason.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import orjson

from agents.ingest import RawMessage, undeliverable
from collectors.links.records import click_event_id, click_touchpoint, decode_batch
from tracker.deadletter import DeadLetter
from tracker.errors import ValidationError
from tracker.privacy import PiiRules
from tracker.touchpoint import Touchpoint

__all__ = ["expand_batches"]

log = logging.getLogger(__name__)


def expand_batches(
    records: Sequence[RawMessage], hash_salt: str, pii: PiiRules | None = None
) -> tuple[list[tuple[Touchpoint, RawMessage]], list[DeadLetter]]:
    """The touchpoints of every click in ``records``, each with where it came from (one click of
    one record), and the dead letters of what could not become one."""
    touchpoints: list[tuple[Touchpoint, RawMessage]] = []
    rejected: list[DeadLetter] = []
    for record in records:
        try:
            clicks = decode_batch(record.value)
        except (KeyError, TypeError, ValueError, IndexError, orjson.JSONDecodeError) as exc:
            rejected.append(undeliverable(record, f"click batch is malformed: {exc!r}"))
            continue
        for item, click in enumerate(clicks):
            source = RawMessage(
                click.to_json(), record.topic, record.partition, record.offset, item
            )
            try:
                touchpoints.append((click_touchpoint(click, hash_salt, pii), source))
            except ValidationError as exc:
                log.warning("click not recordable", extra={"slug": click.slug, "error": str(exc)})
                rejected.append(
                    undeliverable(
                        source,
                        f"click is not a valid touchpoint: {exc}",
                        exc.errors,
                        click_event_id(click.slug, click.token),
                    )
                )
    return touchpoints, rejected
