"""Call transcripts: topic phrases found in what was said, and the text itself only if asked.

Free of HTTP, so the worker and the tests can use it. A transcript is personal data, so the
collector decides at the edge what leaves it (``TRACKER_CALL_TRANSCRIPTS``):

- ``off`` (the default): transcripts are acknowledged and dropped; nothing reaches Kafka.
- ``topics``: only the topics the phrase lists (``TRACKER_CALL_TOPICS``) find are kept.
- ``store``: the topics, and the text with numbers and email addresses redacted.

A transcript becomes a :class:`CallCallback` of status ``updated`` keyed by its call, so it
merges with the call's other callbacks in the same, order-free way.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from functools import lru_cache
from typing import Final

from collectors.calls._common import Ignored
from collectors.calls.records import MAX_TRANSCRIPT_LENGTH, CallCallback
from tracker.metrics import CALL_TRANSCRIPTS
from tracker.privacy import redact_emails
from tracker.settings import Settings

__all__ = [
    "MAX_TRANSCRIPT_LENGTH",
    "REDACTED_NUMBER",
    "TopicMatcher",
    "TranscriptsOff",
    "fold",
    "matcher_for",
    "redact_transcript",
    "transcript_callback",
]

REDACTED_NUMBER: Final = "<redacted number>"

# Digits with the separators people and recognizers put between them: any run holding five or
# more digits (a phone or card number, an order or account number) is redacted; a year is not.
_NUMBER_RUN = re.compile(r"\+?\d(?:[\s().\-/]{0,3}\d)+")
_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'", "\uff07": "'"})
# Scripts written without spaces between words: a phrase in them matches inside a run of text.
_UNSPACED_SCRIPTS: Final = (
    "CJK",
    "HIRAGANA",
    "KATAKANA",
    "THAI",
    "LAO",
    "KHMER",
    "MYANMAR",
    "TIBETAN",
)


class TranscriptsOff(Ignored):
    """``TRACKER_CALL_TRANSCRIPTS=off``: the transcript is acknowledged and not kept."""


def fold(text: str) -> str:
    """The form phrases and transcripts are compared in: NFKC, case-folded (so ``STRASSE``
    finds ``Straße``), typographic apostrophes as ``'``."""
    return unicodedata.normalize("NFKC", text).translate(_APOSTROPHES).casefold()


def _unspaced(char: str) -> bool:
    return unicodedata.name(char, "").startswith(_UNSPACED_SCRIPTS)


def _phrase_pattern(phrase: str) -> str:
    """Whole words: a phrase never matches inside a longer word (``cancel`` is not found in
    ``cancellation``), its words may be apart by any whitespace, and an edge in a script
    written without spaces needs no boundary."""
    words = fold(phrase).split()
    body = r"\s+".join(re.escape(w) for w in words)
    start = "" if _unspaced(words[0][0]) or not words[0][0].isalnum() else r"(?<!\w)"
    end = "" if _unspaced(words[-1][-1]) or not words[-1][-1].isalnum() else r"(?!\w)"
    return start + body + end


class TopicMatcher:
    """The topics whose phrases a text holds. Built once from ``TRACKER_CALL_TOPICS``."""

    def __init__(self, topics: Mapping[str, Sequence[str]]) -> None:
        self._patterns = {
            topic: re.compile("|".join(_phrase_pattern(p) for p in phrases if p.split()))
            for topic, phrases in topics.items()
            if any(p.split() for p in phrases)
        }

    def topics(self, text: str) -> tuple[str, ...]:
        folded = fold(text)
        return tuple(sorted(t for t, pattern in self._patterns.items() if pattern.search(folded)))


@lru_cache(maxsize=8)
def _cached(topics: tuple[tuple[str, tuple[str, ...]], ...]) -> TopicMatcher:
    return TopicMatcher(dict(topics))


def matcher_for(topics: Mapping[str, Sequence[str]]) -> TopicMatcher:
    return _cached(tuple(sorted((k, tuple(v)) for k, v in topics.items())))


def _redact_run(match: re.Match[str]) -> str:
    run = match.group(0)
    return REDACTED_NUMBER if sum(c.isdigit() for c in run) >= 5 else run


def redact_transcript(text: str) -> str:
    """``text`` without email addresses and without numbers of five digits or more."""
    return _NUMBER_RUN.sub(_redact_run, redact_emails(text))


def transcript_callback(
    settings: Settings,
    *,
    provider: str,
    call_id: str,
    callback_id: str,
    texts: Iterable[str],
    event_ts: datetime,
    received_ts: datetime,
    leg_id: str = "",
) -> CallCallback:
    """The callback a transcript becomes under the deployment's transcript setting.

    Raises :class:`TranscriptsOff` when transcripts are off: the caller acknowledges it.
    """
    if settings.call_transcripts == "off":
        CALL_TRANSCRIPTS.labels(provider, "off").inc()
        raise TranscriptsOff(
            "call transcripts are off on this server (TRACKER_CALL_TRANSCRIPTS=off)"
        )
    text = " ".join(t.strip() for t in texts if t.strip())
    topics = matcher_for(settings.call_topics).topics(text)
    CALL_TRANSCRIPTS.labels(provider, "flagged" if topics else "unflagged").inc()
    kept = ""
    if settings.call_transcripts == "store":
        kept = redact_transcript(text)[:MAX_TRANSCRIPT_LENGTH]
    return CallCallback(
        provider=provider,
        call_id=call_id,
        callback_id=callback_id,
        status="updated",
        event_ts=event_ts,
        received_ts=received_ts,
        leg_id=leg_id,
        topics=topics,
        transcript=kept,
        transcribed=True,
    )
