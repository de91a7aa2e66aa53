"""Number pools: allocation, reservation windows and the log's arbitration, in plain Python."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest
from prometheus_client import REGISTRY

from agents.calls import CallsPipeline, PoolAttribution
from agents.ingest import RawMessage
from collectors.calls.pools import NumberPool, PoolBook, Reservation
from collectors.calls.records import CallCallback
from tracker.errors import ConfigError
from tracker.settings import Settings
from tracker.store.sink import MemorySink
from tracker.store.tables import CALLS, TOUCHPOINTS

POOL = NumberPool("spring", ("+18005550101", "+18005550102", "+18005550103"), "+18005550100")
WINDOW = timedelta(minutes=30)
T0 = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)


def reserve(book: PoolBook, session: str, at: datetime, pool: NumberPool = POOL) -> Reservation:
    """Plan and apply a reservation, as one beacon instance would."""
    record = book.plan(pool, session, f"anon-{session}", {"source": "news"}, at, WINDOW)
    assert record is not None, "the pool is dry"
    assert book.apply(record)
    return record


def test_a_session_gets_the_least_recently_reserved_free_number() -> None:
    book = PoolBook()
    first = reserve(book, "s1", T0)
    second = reserve(book, "s2", T0 + timedelta(minutes=1))
    assert (first.number, second.number) == ("+18005550101", "+18005550102")
    # s1's number frees at 10:30, s2's at 10:31; the never-reserved one is least recent of all.
    third = reserve(book, "s3", T0 + timedelta(minutes=40))
    assert third.number == "+18005550103"
    fourth = reserve(book, "s4", T0 + timedelta(minutes=41))
    assert fourth.number == "+18005550101"


def test_the_same_session_keeps_its_number_and_extends_the_reservation() -> None:
    book = PoolBook()
    first = reserve(book, "s1", T0)
    again = reserve(book, "s1", T0 + timedelta(minutes=20))
    assert again.number == first.number and again.claim == first.claim
    assert again.reserved_at == T0 and again.extends
    assert again.expires_at == T0 + timedelta(minutes=50)
    # Extended, the number is still held at 10:40, when the first window would have ended.
    other = reserve(book, "s2", T0 + timedelta(minutes=40))
    assert other.number != first.number


def test_a_session_whose_reservation_ran_out_gets_a_new_claim() -> None:
    book = PoolBook()
    first = reserve(book, "s1", T0)
    later = reserve(book, "s1", T0 + timedelta(minutes=31))
    assert later.claim != first.claim and not later.extends
    assert later.reserved_at == T0 + timedelta(minutes=31)


def test_a_pool_runs_dry_when_every_number_is_held_and_recovers_as_windows_end() -> None:
    book = PoolBook()
    for index in range(3):
        reserve(book, f"s{index}", T0)
    assert book.plan(POOL, "late", "", {}, T0 + timedelta(minutes=5), WINDOW) is None
    assert book.free(POOL, T0 + timedelta(minutes=5)) == []
    assert book.plan(POOL, "late", "", {}, T0 + timedelta(minutes=30), WINDOW) is not None


def test_numbers_being_written_by_this_instance_are_not_offered_again() -> None:
    book = PoolBook()
    planned = book.plan(POOL, "s1", "", {}, T0, WINDOW)
    assert planned is not None
    other = book.plan(POOL, "s2", "", {}, T0, WINDOW, busy={planned.number})
    assert other is not None and other.number != planned.number


def test_the_page_campaign_wins_and_the_pool_campaign_is_the_default() -> None:
    pool = replace(POOL, campaign={"source": "google", "medium": "cpc"})
    book = PoolBook()
    from_page = book.plan(pool, "s1", "", {"source": "news"}, T0, WINDOW)
    default = book.plan(pool, "s2", "", {}, T0, WINDOW)
    assert from_page is not None and dict(from_page.campaign) == {"source": "news"}
    assert default is not None and dict(default.campaign) == {"source": "google", "medium": "cpc"}


def test_the_first_record_in_the_log_wins_a_race_between_instances() -> None:
    book = PoolBook()
    # Two instances, each from a view without the other's record, pick the same free number.
    a = book.plan(POOL, "s1", "", {}, T0, WINDOW)
    b = book.plan(POOL, "s2", "", {}, T0 + timedelta(milliseconds=3), WINDOW)
    assert a is not None and b is not None and a.number == b.number
    assert book.apply(a) and not book.apply(b)
    assert book.holds(a) and not book.holds(b)
    # The loser withdraws its record; the winner keeps the number.
    book.apply_record(b.key, None)
    assert book.holds(a)
    retry = book.plan(POOL, "s2", "", {}, T0 + timedelta(milliseconds=5), WINDOW)
    assert retry is not None and retry.number != a.number


def test_every_reader_reaches_the_same_verdicts_from_the_same_log() -> None:
    log: list[tuple[str, bytes | None]] = []
    writer = PoolBook()
    a = reserve(writer, "s1", T0)
    log.append((a.key, a.to_bytes()))
    b = replace(a, claim="other", session_id="s2", written_at=T0 + timedelta(minutes=1))
    b = replace(b, reserved_at=b.written_at)
    log.append((b.key, b.to_bytes()))
    replayed = PoolBook()
    verdicts = [replayed.apply_record(key, value) for key, value in log]
    assert verdicts == [True, False]
    assert replayed.holder(a.number) == a


def test_an_extension_after_another_session_took_the_number_is_refused() -> None:
    book = PoolBook()
    a = reserve(book, "s1", T0)
    late = T0 + timedelta(minutes=31)
    b = book.plan(POOL, "s2", "", {}, late, WINDOW)
    assert b is not None
    # s2 is offered s1's number only if it is the least recently reserved free one; force it.
    b = replace(b, number=a.number)
    assert book.apply(b)
    # An instance whose clock ran behind extends s1's claim, in the log after s2's claim.
    stale = replace(a, expires_at=late + WINDOW, written_at=T0 + timedelta(minutes=29))
    assert not book.apply(stale)
    assert book.holds(b)
    assert book.claim(a.number, a.claim) == a  # the last accepted state, to write back


def test_compaction_keeps_history_a_restored_claim_is_not_a_holder() -> None:
    book = PoolBook()
    late = T0 + timedelta(minutes=31)
    a = Reservation("a", "spring", "+18005550101", "s1", "", T0, T0 + WINDOW, T0)
    b = Reservation("b", "spring", "+18005550101", "s2", "", late, late + WINDOW, late)
    # After compaction a's only surviving record may come after b's in the log.
    assert book.apply(b)
    assert not book.apply(a)
    assert book.holds(b)
    assert book.attribute("+18005550101", T0 + timedelta(minutes=10)) == a


def test_a_call_joins_the_reservation_whose_window_holds_its_start() -> None:
    book = PoolBook()
    first = reserve(book, "s1", T0)
    number = first.number
    assert book.attribute(number, T0 - timedelta(seconds=11)) is None
    # Provider timestamps are whole seconds from another clock: a hair early still joins.
    assert book.attribute(number, T0 - timedelta(seconds=1)) == first
    assert book.attribute(number, T0) == first
    assert book.attribute(number, T0 + timedelta(minutes=29, seconds=59)) == first
    assert book.attribute(number, T0 + timedelta(minutes=30)) is None  # the window is half-open
    second = replace(
        first,
        claim="c2",
        session_id="s2",
        reserved_at=T0 + timedelta(minutes=45),
        written_at=T0 + timedelta(minutes=45),
        expires_at=T0 + timedelta(minutes=75),
    )
    assert book.apply(second)
    assert book.attribute(number, T0 + timedelta(minutes=50)) == second
    # The grace never takes a call from the window that holds it.
    early = T0 + timedelta(minutes=44, seconds=55)
    assert book.attribute(number, early) == second
    third = replace(
        second,
        claim="c3",
        reserved_at=T0 + timedelta(minutes=75),
        written_at=T0 + timedelta(minutes=75),
        expires_at=T0 + timedelta(minutes=105),
    )
    assert book.apply(third)
    assert book.attribute(number, T0 + timedelta(minutes=74, seconds=55)) == second
    assert book.attribute(number, T0 + timedelta(minutes=5)) == first
    assert book.attribute("+18005550199", T0) is None


def test_a_reservation_record_round_trips_and_is_keyed_by_pool_number_and_claim() -> None:
    record = reserve(PoolBook(), "s1", T0)
    assert Reservation.from_record(orjson.loads(record.to_bytes())) == record
    assert record.key == f"spring/{record.number}/{record.claim}"
    with pytest.raises(ValueError):
        Reservation.from_record({**record.to_record(), "reserved_at": "2026-11-22T10:00:00"})


# -- settings -------------------------------------------------------------------------------------


def settings(tmp_path: Path, **env: str) -> Settings:
    return Settings.from_env({"TRACKER_DATA_DIR": str(tmp_path), "TRACKER_HASH_SALT": "s", **env})


def test_pools_are_read_with_numbers_in_any_notation(tmp_path: Path) -> None:
    pools = {
        "spring-search": {
            "numbers": ["+1 800 555 0101", "(800) 555-0102"],
            "fallback": "800.555.0100",
            "campaign": {"source": "google", "medium": "cpc", "name": "spring"},
            "channel": "paid",
        }
    }
    loaded = settings(
        tmp_path,
        TRACKER_CALL_NUMBER_POOLS=orjson.dumps(pools).decode(),
        TRACKER_CALL_POOL_RESERVATION_MINUTES="45",
    )
    pool = loaded.call_number_pools["spring-search"]
    assert pool.numbers == ("+18005550101", "+18005550102")
    assert pool.fallback == "+18005550100" and pool.channel == "paid"
    assert dict(pool.campaign) == {"source": "google", "medium": "cpc", "name": "spring"}
    assert loaded.call_pool_reservation_minutes == 45
    assert settings(tmp_path).call_pool_reservation_minutes == 30


def test_pools_may_come_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "pools.json"
    path.write_bytes(orjson.dumps({"p": {"numbers": ["+18005550101"], "fallback": "+18005550100"}}))
    assert settings(tmp_path, TRACKER_CALL_NUMBER_POOLS=str(path)).call_number_pools[
        "p"
    ].numbers == ("+18005550101",)


@pytest.mark.parametrize(
    ("pools", "message"),
    [
        ("[1]", "must be a JSON object of pool name to pool"),
        ('{"Spring!": {"numbers": ["+18005550101"], "fallback": "+18005550100"}}', "pool name"),
        ('{"p": {"numbers": [], "fallback": "+18005550100"}}', "non-empty list of numbers"),
        ('{"p": {"numbers": ["+18005550101"]}}', "needs a fallback number"),
        ('{"p": {"numbers": ["not a number"], "fallback": "+18005550100"}}', "'not a number'"),
        (
            '{"p": {"numbers": ["+18005550101"], "fallback": "+18005550100", "size": 3}}',
            "keys among",
        ),
        (
            '{"p": {"numbers": ["+18005550101"], "fallback": "+18005550100"},'
            ' "q": {"numbers": ["+1 800 555 0101"], "fallback": "+18005550100"}}',
            "listed twice",
        ),
        ('{"p": {"numbers": ["+18005550101"], "fallback": "+18005550101"}}', "is a pool number"),
        (
            '{"p": {"numbers": ["+18005550101"], "fallback": "+18005550100", "campaign": {"x": "y"}}}',
            "campaign must be",
        ),
    ],
)
def test_a_malformed_pool_setting_names_the_variable(
    tmp_path: Path, pools: str, message: str
) -> None:
    with pytest.raises(ConfigError) as raised:
        settings(tmp_path, TRACKER_CALL_NUMBER_POOLS=pools)
    assert "TRACKER_CALL_NUMBER_POOLS" in str(raised.value) and message in str(raised.value)


def test_a_pool_number_cannot_also_be_a_static_tracking_number(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="also a static number"):
        settings(
            tmp_path,
            TRACKER_CALL_TRACKING_NUMBERS='{"+18005550101": {"source": "billboard"}}',
            TRACKER_CALL_NUMBER_POOLS='{"p": {"numbers": ["+18005550101"], "fallback": "+18005550100"}}',
        )


def test_the_reservation_window_must_be_a_positive_number_of_minutes(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="TRACKER_CALL_POOL_RESERVATION_MINUTES"):
        settings(tmp_path, TRACKER_CALL_POOL_RESERVATION_MINUTES="0")


# -- the worker's join ------------------------------------------------------------------------------


def pool_callbacks(call_id: str, at: datetime, number: str) -> list[CallCallback]:
    base = {"provider": "twilio", "call_id": call_id, "direction": "inbound"}
    return [
        CallCallback(
            **base,
            callback_id=f"{call_id}-1",
            status="ringing",
            event_ts=at,
            received_ts=at,
            caller_hash="h-caller",
            tracking_number=number,
        ),
        CallCallback(
            **base,
            callback_id=f"{call_id}-2",
            status="completed",
            event_ts=at + timedelta(minutes=3),
            received_ts=at + timedelta(minutes=3),
            talk_seconds=170.0,
        ),
    ]


def messages(callbacks: list[CallCallback]) -> list[RawMessage]:
    return [RawMessage(orjson.dumps(c.to_wire()), "calls", 0, i) for i, c in enumerate(callbacks)]


def pool_metric(outcome: str) -> float:
    value = REGISTRY.get_sample_value(
        "tracker_call_pool_calls_total", {"pool": "spring", "outcome": outcome}
    )
    return value or 0.0


async def test_a_call_inside_a_reservation_joins_the_web_session_and_its_campaign() -> None:
    book = PoolBook()
    held = reserve(book, "s1", T0)
    calls, touchpoints, dead = MemorySink(), MemorySink(), MemorySink()
    pipeline = CallsPipeline(
        calls, touchpoints, dead, {}, pools=PoolAttribution({"spring": POOL}, book)
    )
    before = pool_metric("attributed")

    await pipeline.handle(
        messages(pool_callbacks("CA1", T0 + timedelta(minutes=12), held.number)), {}
    )

    [row] = [TOUCHPOINTS.named(r) for r in touchpoints.rows.values()]
    assert (row["anonymous_id"], row["client_session_id"]) == ("anon-s1", "s1")
    assert row["phone_hash"] == "h-caller"  # so identity stitching links the two
    assert row["campaign_source"] == "news"
    assert row["properties"]["pool"] == "spring"
    assert row["properties"]["pool_attribution"] == "session"
    assert row["properties"]["web_session_id"] == "s1"
    [call] = [CALLS.named(r) for r in calls.rows.values()]
    assert (call["campaign_source"], call["channel"]) == ("news", "phone")
    assert pool_metric("attributed") == before + 1


async def test_a_call_outside_every_reservation_is_kept_unattributed_and_counted() -> None:
    book = PoolBook()
    held = reserve(book, "s1", T0)
    calls, touchpoints, dead = MemorySink(), MemorySink(), MemorySink()
    pools = PoolAttribution({"spring": replace(POOL, channel="paid")}, book)
    pipeline = CallsPipeline(calls, touchpoints, dead, {}, pools=pools)
    before = pool_metric("unattributed")

    await pipeline.handle(messages(pool_callbacks("CA2", T0 + timedelta(hours=2), held.number)), {})

    [row] = [TOUCHPOINTS.named(r) for r in touchpoints.rows.values()]
    assert (row["anonymous_id"], row["client_session_id"], row["campaign_source"]) == ("", "", "")
    assert row["properties"]["pool_attribution"] == "none"
    [call] = [CALLS.named(r) for r in calls.rows.values()]
    assert (call["campaign_source"], call["channel"]) == ("", "paid")
    assert pool_metric("unattributed") == before + 1


async def test_calls_to_other_numbers_are_untouched_by_pools() -> None:
    calls, touchpoints, dead = MemorySink(), MemorySink(), MemorySink()
    tracking = {"+18005550199": {"source": "billboard"}}
    pipeline = CallsPipeline(
        calls, touchpoints, dead, tracking, pools=PoolAttribution({"spring": POOL}, PoolBook())
    )
    await pipeline.handle(messages(pool_callbacks("CA3", T0, "+18005550199")), {})
    [row] = [TOUCHPOINTS.named(r) for r in touchpoints.rows.values()]
    assert row["campaign_source"] == "billboard" and "pool" not in row["properties"]
