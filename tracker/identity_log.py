"""Record formats of the identity log (``Topology.identity``) that come from outside the worker.

The identity log carries touchpoint rows (written by the worker's ingest) and, from people,
*split* records asking to unlink two identifiers. The identity agent reads both; the CLI writes
splits, so the format lives here in the core rather than in ``agents/``.
"""

from __future__ import annotations

from datetime import UTC, datetime

import orjson

__all__ = ["split_command", "split_key"]


def split_command(left: str, right: str, requested_at: datetime | None = None) -> bytes:
    """The identity-log record that asks to unlink two identifiers (``kind:value`` keys, email
    and phone values hashed): ``{"split": [left, right], "requested_at": RFC 3339}``."""
    when = requested_at or datetime.now(UTC)
    return orjson.dumps({"split": [left, right], "requested_at": when})


def split_key(left: str, right: str) -> bytes:
    """The Kafka key of a split record: the same for the same pair, whichever order it is given."""
    return ("split|" + "|".join(sorted((left, right)))).encode()
