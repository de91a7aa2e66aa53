"""``tracker journey``: a customer's stitched timeline, as a person sees it; and ``split``.

The timeline is read by ``tracker.journeys``, as the console's journey map reads it, through
the running instance's console for embedded chDB (as ``tracker query`` reads). A touchpoint keeps
the customer it was stitched with; it belongs now to whichever customer its identity key resolves
to in ``identities``, so merges and splits show at once without rewriting anything.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import orjson

from tracker import journeys
from tracker.cli.client import run_query
from tracker.errors import TrackerError
from tracker.identity_log import split_command, split_key
from tracker.journeys import (
    HASHED_KINDS,
    Journey,
    Reader,
    TimelineEvent,
    belongs,
    render_json,
    stored_key,
    typed_identifier,
)
from tracker.settings import Settings

__all__ = [
    "Journey",
    "TimelineEvent",
    "add_journey_commands",
    "belongs",
    "find_journey",
    "render_json",
    "render_text",
    "stored_key",
    "typed_identifier",
]


# -- the command -------------------------------------------------------------------------------


def add_journey_commands(commands: Any) -> None:
    journey = commands.add_parser(
        "journey",
        help="print a customer's stitched timeline; `journey split A B` removes a wrong link",
        usage=(
            "tracker journey [--format {text,json}] IDENTIFIER\n"
            "       tracker journey split LEFT RIGHT"
        ),
        description=(
            "tracker journey IDENTIFIER prints the stitched timeline of the customer an "
            "identifier (email:ada@example.com, phone:+1 415 555 0100, user:42, anon:..., "
            "click:..., crm:<system>:<id>; a bare email or phone number too) or a customer id "
            "belongs to. "
            "tracker journey split LEFT RIGHT unlinks two identifiers for good."
        ),
    )
    journey.add_argument(
        "words",
        nargs="+",
        metavar="IDENTIFIER | split LEFT RIGHT",
        help="kind:value or a customer id; or split followed by two identifiers",
    )
    journey.add_argument("--format", choices=["text", "json"], default="text")
    journey.set_defaults(run=_journey)


def _journey(settings: Settings, args: argparse.Namespace) -> int:
    words: list[str] = args.words
    if words[0] == "split":
        if len(words) != 3:
            raise TrackerError("usage: tracker journey split LEFT RIGHT (two identifiers)")
        return _split(settings, words[1], words[2])
    if len(words) != 1:
        raise TrackerError(
            "give one identifier, quoted if it has spaces: tracker journey 'phone:+1 415 555 0100'"
        )
    journey = find_journey(settings, words[0])
    if journey is None:
        sys.stderr.write(
            f"tracker: no customer is known by {words[0]}: no event carrying it has been "
            "stitched (yet), or it was forgotten\n"
        )
        return 1
    if args.format == "json":
        sys.stdout.write(render_json(journey).decode() + "\n")
    else:
        sys.stdout.write(render_text(journey))
    return 0


# -- reading it --------------------------------------------------------------------------------


def find_journey(settings: Settings, raw: str, read: Reader | None = None) -> Journey | None:
    """The journey of the customer ``raw`` belongs to (``tracker.journeys.find_journey``), read
    through the running instance's console by default."""

    def default_read(sql: str) -> list[dict[str, Any]]:
        output = run_query(settings, sql, "json")
        return [orjson.loads(line) for line in output.splitlines() if line.strip()]

    return journeys.find_journey(settings, raw, read or default_read)


# -- showing it --------------------------------------------------------------------------------


def render_text(journey: Journey) -> str:
    """A header about the customer, then the timeline in event time, one event a line."""
    header: list[tuple[str, str]] = [("customer", journey.customer_id)]
    for i, (kind, values) in enumerate(sorted(journey.identifiers.items())):
        shown = ", ".join(_short(kind, v) for v in values)
        header.append(("identifiers" if i == 0 else "", f"{kind}: {shown}"))
    if journey.merged_customer_ids:
        header.append(("merged from", ", ".join(journey.merged_customer_ids)))
    s = journey.summary
    if s is None:
        header.append(("journey", "not summarized yet"))
    else:
        header += [
            ("first seen", _when(s["first_seen"])),
            ("last seen", _when(s["last_seen"])),
            ("events", f"{s['events']} in {_plural(s['sessions'], 'session')}"),
            (
                "stage",
                (s["stage"] or "-")
                + (f" since {_when(s['stage_since'])}" if s["stage_since"] else ""),
            ),
            ("conversions", f"{s['conversions']}, value {s['value']:g}"),
            ("frictions", str(s["frictions"])),
        ]
        if s["late_events"]:
            header.append(("late events", f"{s['late_events']} (kept, not sessionized)"))
        if s["channels"]:
            header.append(("channels", ", ".join(s["channels"])))
    width = max(len(label) for label, _ in header) + 2
    lines = [f"{label:<{width}}{text}".rstrip() for label, text in header]
    lines.append("")
    if not journey.events:
        lines.append("no touchpoints stored for this customer yet")
        return "\n".join(lines) + "\n"
    table = [("time (UTC)", "type", "name", "channel/source", "session", "stage", "frictions")]
    for e in journey.events:
        table.append(
            (
                e.ts.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S"),
                e.type,
                e.name or "-",
                f"{e.channel or '-'}/{e.source or '-'}",
                e.session_id[:8] or "-",
                e.stage or "-",
                ", ".join(_friction(f) for f in e.frictions) or "-",
            )
        )
    lines += _columns(table)
    return "\n".join(lines) + "\n"


def _columns(table: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    return [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in table
    ]


def _short(kind: str, value: str) -> str:
    """Salted hashes are 64 hex digits: twelve tell them apart on a screen."""
    return value[:12] + "…" if kind in HASHED_KINDS and len(value) > 12 else value


def _friction(f: tuple[str, str, str]) -> str:
    reason, severity, detail = f
    return f"{reason} ({severity}{': ' + detail if detail else ''})"


def _when(value: datetime | None) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if value else "-"


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


# -- splitting ---------------------------------------------------------------------------------


def _split(settings: Settings, left_raw: str, right_raw: str) -> int:
    left, right = stored_key(left_raw, settings), stored_key(right_raw, settings)
    if left == right:
        raise TrackerError(f"{left_raw} and {right_raw} are the same identifier")
    asyncio.run(_produce_split(settings, left, right))
    sys.stdout.write(
        f"split requested: {left_raw} and {right_raw} will not be linked again "
        f"(stored as {_shown_key(left)} and {_shown_key(right)}).\n"
        "It takes effect within seconds, once the worker reads it; "
        f"`tracker journey {_shell_word(left_raw)}` shows the result.\n"
    )
    return 0


def _shown_key(key: str) -> str:
    kind, _, value = key.partition(":")
    return f"{kind}:{_short(kind, value)}"


def _shell_word(text: str) -> str:
    return f"'{text}'" if any(c in text for c in ' "$`\\') else text


async def _produce_split(settings: Settings, left: str, right: str) -> None:
    from aiokafka.errors import KafkaError

    from tracker.kafka import clients as kafka_clients
    from tracker.kafka.topology import Topology, ensure_topics

    topology = Topology.from_settings(settings)
    producer = kafka_clients.producer(
        settings, f"{settings.worker_id}-journey-split", request_timeout_ms=15_000
    )
    try:
        await asyncio.wait_for(ensure_topics(settings, topology), 30)
        await producer.start()
        try:
            await producer.send_and_wait(
                topology.identity.name, split_command(left, right), key=split_key(left, right)
            )
        finally:
            await producer.stop()
    except (KafkaError, OSError, TimeoutError) as exc:
        raise TrackerError(
            f"Kafka at {settings.bootstrap_servers} did not take the split ({exc or type(exc).__name__}); "
            "nothing was changed, run it again when Kafka is up"
        ) from None
