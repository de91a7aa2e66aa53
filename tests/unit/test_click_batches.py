"""Short-link click batches: packed by the links service, expanded and stored by the worker."""

from __future__ import annotations

import secrets
import time

from agents.clicks import expand_batches
from agents.ingest import IngestPipeline, RawMessage
from collectors.links import parse_link
from collectors.links._clicks import BATCH_BYTES, Click, ClickBuffer, ClickIds
from collectors.links.records import decode_batch, encode_batch
from tracker.kafka.producer import MemoryPublisher
from tracker.store.sink import MemorySink
from tracker.store.tables import DEAD_LETTERS, TOUCHPOINTS

FIREFOX = "Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0"
LINK = parse_link(
    {"target": "https://shop.example/", "channel": "email", "utm": {"campaign": "w"}}, slug="w1"
)


def click(token: str, location: str = "https://shop.example/?tc_id=x", **fields: object) -> Click:
    link = fields.get("link", LINK.click_fields)
    return (
        link,  # type: ignore[return-value]
        token,
        time.time(),
        "GET",
        False,
        str(fields.get("outcome", "redirect")),
        location,
        "203.0.113.0",
        FIREFOX,
        "",
        "en-GB,en;q=0.8",
    )


def record(clicks: list[Click], offset: int = 0) -> RawMessage:
    return RawMessage(encode_batch("https://go.example", clicks), "links.click_batches", 0, offset)


def test_a_batch_expands_into_the_touchpoints_the_service_used_to_build() -> None:
    [(touchpoint, source)], rejected = expand_batches([record([click("tok123456789")])], "salt")
    assert rejected == []
    assert (touchpoint.type, touchpoint.source, touchpoint.name) == (
        "link_click",
        "shortlink",
        "w1",
    )
    assert touchpoint.channel == "email"
    assert touchpoint.click_id == "tok123456789"
    assert touchpoint.campaign == {"name": "w"}
    assert touchpoint.properties["short_url"] == "https://go.example/w1"
    assert touchpoint.context == {"user_agent": FIREFOX, "locale": "en-gb", "ip": "203.0.113.0"}
    assert source.coordinates == "links.click_batches/0/0/0"


def test_event_ids_follow_from_the_click_so_a_replay_is_stored_once() -> None:
    batch = record([click("a" * 12), click("b" * 12, outcome="expired")])
    first, _ = expand_batches([batch], "salt")
    again, _ = expand_batches([batch], "salt")
    assert [t.event_id for t, _ in first] == [t.event_id for t, _ in again]
    assert len({t.event_id for t, _ in first}) == 2
    assert [t.click_id for t, _ in first] == ["a" * 12, ""]  # not followed: no click id


async def test_bad_clicks_and_bad_records_become_dead_letters_with_the_reason() -> None:
    bad_link = ("w1", "Not A Channel", "", {}, ())
    batch = record([click("good56789012"), click("bad456789012", link=bad_link)], offset=7)
    broken = RawMessage(b"[1, 2", "links.click_batches", 1, 3)  # not even an LZ4 frame
    touchpoints, dead = MemorySink(), MemorySink()
    pipeline = IngestPipeline(touchpoints, dead)

    for _ in range(2):  # a replay stores nothing twice
        await pipeline.handle_decoded(*expand_batches([batch, broken], "salt"))

    assert len(touchpoints.rows) == 1
    letters = [DEAD_LETTERS.named(row) for row in dead.rows.values()]
    assert len(letters) == 2
    by_reason = {letter["reason"].split(":")[0]: letter for letter in letters}
    assert by_reason["click is not a valid touchpoint"]["error_fields"] == ["channel"]
    assert "bad456789012" in by_reason["click is not a valid touchpoint"]["payload"]
    assert by_reason["click batch is malformed"]["payload"] == "[1, 2"
    row = TOUCHPOINTS.named(next(iter(touchpoints.rows.values())))
    assert (row["type"], row["click_id"], row["ip"]) == (
        "link_click",
        "good56789012",
        "203.0.113.0",
    )


async def test_clicks_with_huge_urls_are_split_over_records_and_none_is_lost() -> None:
    publisher = MemoryPublisher()
    buffer = ClickBuffer(publisher, "https://go.example", bound=1000)
    ids = ClickIds(per_draw=8)
    tokens = [ids.take() for _ in range(60)]
    for token in tokens:  # random, so that compression cannot shrink them
        buffer.add(click(token, location="https://shop.example/?q=" + secrets.token_urlsafe(6000)))
    assert await buffer.drain_once() == 60
    assert len(publisher.click_batches) > 1
    assert all(len(value) <= BATCH_BYTES for value in publisher.click_batches)
    sent = [fact.token for value in publisher.click_batches for fact in decode_batch(value)]
    assert sent == tokens
    assert len(set(tokens)) == 60 and all(len(t) == 12 for t in tokens)
    assert buffer.depth() == 0
