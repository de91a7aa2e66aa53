"""Forgetting a person end to end: a customer known by email, phone, user id and device, with a
purchase, a survey answer, a call, a helpdesk ticket, a friction and a dead letter, forgotten by the email through
`tracker forget`, on a real Kafka broker and the real ClickHouse engine; then the raw topics
replayed from offset 0 by a new consumer group, and nothing of the person comes back."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from tests.conftest import Pipeline, component_env, make_event
from tests.integration.test_calls import GENERIC_SECRET, generic_callback
from tests.integration.test_helpdesk import zendesk
from tests.unit.test_helpdesk_webhooks import ZENDESK_SECRET
from tracker.cli.kafka_local import LocalKafka
from tracker.kafka.topology import Topology
from tracker.privacy import identifier_key
from tracker.settings import Settings

pytestmark = pytest.mark.integration

SALT = "test-salt"
ADA_EMAIL, ADA_PHONE, ADA_USER, ADA_ANON = "ada@example.com", "+14155550132", "ada-1", "ada-laptop"
BOB_EMAIL, BOB_ANON = "bob@example.com", "bob-phone"
EMAIL_KEY = identifier_key(f"email:{ADA_EMAIL}", SALT, "US")
PHONE_KEY = identifier_key(f"phone:{ADA_PHONE}", SALT, "US")
ADA_KEYS = [EMAIL_KEY, PHONE_KEY, f"user:{ADA_USER}", f"anon:{ADA_ANON}"]
ADA_TICKET, ADA_CALL = "4711", "call-ada-7f3c"


@pytest.fixture
def forget_pipeline(kafka: LocalKafka, tmp_path: Path) -> Iterator[Pipeline]:
    env = component_env(
        kafka.bootstrap,
        tmp_path,
        TRACKER_GENERIC_WEBHOOK_SECRET=GENERIC_SECRET,
        TRACKER_ZENDESK_WEBHOOK_SECRET=ZENDESK_SECRET,
    )
    running = Pipeline(env, tmp_path).start()
    running.components.append(running.calls().start())
    running.components.append(running.helpdesk().start())
    yield running
    running.stop()


def stamp(ts: datetime) -> str:
    return ts.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _in(values: list[str]) -> str:
    return "(" + ",".join(f"'{v}'" for v in values) + ")"


def ada_rows(ids: list[str]) -> dict[str, str]:
    """Each table's rows of Ada, by every way a table can name her, written out here apart
    from the forget list so that a table the list misses shows."""
    email, phone = EMAIL_KEY.split(":", 1)[1], PHONE_KEY.split(":", 1)[1]
    touchpoint = (
        f"anonymous_id = '{ADA_ANON}' OR user_id = '{ADA_USER}' OR email_hash = '{email}' "
        f"OR phone_hash = '{phone}' OR customer_id IN {_in(ids)}"
    )
    return {
        "touchpoints": touchpoint,
        "touchpoints_by_customer": touchpoint,
        "sessions": f"customer_id IN {_in(ids)}",
        "journeys": f"customer_id IN {_in(ids)} OR merged_into IN {_in(ids)}",
        "frictions": f"customer_id IN {_in(ids)}",
        "identities": f"identifier IN {_in(ADA_KEYS)} OR customer_id IN {_in(ids)}",
        "identity_conflicts": (
            f"left_identifier IN {_in(ADA_KEYS)} OR right_identifier IN {_in(ADA_KEYS)}"
        ),
        "calls": f"caller_hash = '{phone}' OR called_hash = '{phone}'",
        "tickets": f"email_hash = '{email}' OR phone_hash = '{phone}'",
        "dead_letters": f"position(payload, '{ADA_ANON}') > 0",
    }


def counts(p: Pipeline, conditions: dict[str, str]) -> dict[str, int]:
    return {
        table: int(p.query(f"SELECT count() FROM {table} WHERE {where}").strip())
        for table, where in conditions.items()
    }


def answers(p: Pipeline, queries: dict[str, str]) -> dict[str, str]:
    return {name: p.query(sql).strip() for name, sql in queries.items()}


def latest(bootstrap: str, topic: str) -> dict[bytes, bytes | None]:
    """The last value of every key of a compacted topic, None for a tombstone."""

    async def read() -> dict[bytes, bytes | None]:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            (described,) = await admin.describe_topics([topic])
        finally:
            await admin.close()
        partitions = [TopicPartition(topic, p["partition"]) for p in described["partitions"]]
        assert partitions, topic
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
        await consumer.start()
        try:
            consumer.assign(partitions)
            await consumer.seek_to_beginning(*partitions)
            ends = await consumer.end_offsets(partitions)
            found: dict[bytes, bytes | None] = {}
            while any([await consumer.position(p) < ends[p] for p in partitions]):
                for records in (await consumer.getmany(timeout_ms=1000)).values():
                    found.update({r.key: r.value for r in records if r.key is not None})
            return found
        finally:
            await consumer.stop()

    return asyncio.run(read())


def tell_the_story(p: Pipeline) -> datetime:
    """Ada: a visit that gives her email and user id, her phone by a CRM update, a purchase, an
    unhappy NPS answer (a friction), a call from her phone, a helpdesk ticket from her email and
    an event refused for its time (a dead letter). Bob: a visit, his email, a purchase."""
    start = datetime.now(UTC) - timedelta(minutes=30)

    def at(minutes: float) -> str:
        return stamp(start + timedelta(minutes=minutes))

    ada = [
        make_event(ts=at(0), anonymous_id=ADA_ANON),
        make_event(ts=at(1), type="identify", anonymous_id=ADA_ANON, email=ADA_EMAIL),
        make_event(ts=at(2), type="identify", anonymous_id=ADA_ANON, user_id=ADA_USER),
        make_event(ts=at(3), type="identify", user_id=ADA_USER, phone=ADA_PHONE),
        make_event(ts=at(4), type="purchase", anonymous_id=ADA_ANON, value=120.0, currency="EUR"),
        make_event(ts=at(5), type="survey_response", survey={"kind": "nps", "score": 2}),
    ]
    ada[-1]["email"] = ADA_EMAIL
    ada[-1].pop("anonymous_id")
    bob = [
        make_event(ts=at(0), anonymous_id=BOB_ANON),
        make_event(ts=at(1), type="identify", anonymous_id=BOB_ANON, email=BOB_EMAIL),
        make_event(ts=at(2), type="purchase", anonymous_id=BOB_ANON, value=40.0, currency="EUR"),
    ]
    for event in ada + bob:  # one by one: each link is made in the order a person made it
        assert p.post([event])[0] == 200
    refused = make_event(ts="last tuesday", anonymous_id=ADA_ANON)
    assert p.post([refused])[0] == 400
    call: dict[str, object] = {
        "call_id": ADA_CALL,
        "direction": "inbound",
        "from": ADA_PHONE,
        "to": "+18005550100",
        "timestamp": at(6),
        "status": "completed",
        "answered_at": at(6),
        "talk_seconds": 120,
    }
    assert generic_callback(p, ADA_CALL, call) == 200
    status, _ = zendesk(
        p,
        ticket_id=ADA_TICKET,
        event="opened",
        status="New",
        requester_email=ADA_EMAIL,
        created_at=at(7),
        updated_at=at(7),
    )
    assert status == 200
    return start


def test_forgetting_an_email_erases_the_whole_person_and_a_replay_brings_nothing_back(
    forget_pipeline: Pipeline,
) -> None:
    p = forget_pipeline
    start = tell_the_story(p)
    assert p.wait_for("SELECT count() FROM touchpoints", "11", timeout=60) == "11"  # 8 + 3
    p.wait_until_handled()
    found = p.query(
        "SELECT arrayJoin(arrayConcat(groupUniqArray(customer_id), groupUniqArray(own_customer_id)))"
        f" FROM identities FINAL WHERE identifier IN {_in(ADA_KEYS)}"
    )
    ada_ids = sorted(set(found.split()))
    bob_ids = p.query(
        f"SELECT DISTINCT customer_id FROM touchpoints WHERE anonymous_id = '{BOB_ANON}'"
    ).split()
    assert ada_ids and bob_ids and not set(ada_ids) & set(bob_ids)
    before = counts(p, ada_rows(ada_ids))
    tables = ("touchpoints", "sessions", "journeys", "frictions", "identities", "calls", "tickets")
    for table in tables:
        assert before[table] > 0, (table, before)
    assert before["dead_letters"] == 1
    bob = {  # what Bob is, however many versions of his rows a replay writes
        "touchpoints": f"SELECT uniqExact(event_id) FROM touchpoints WHERE customer_id IN {_in(bob_ids)}",
        "journey events": f"SELECT sum(events) FROM journeys FINAL WHERE customer_id IN {_in(bob_ids)}",
        "identities": f"SELECT uniqExact(identifier) FROM identities WHERE customer_id IN {_in(bob_ids)}",
    }
    bob_before = answers(p, bob)
    assert bob_before["touchpoints"] == "3" and bob_before["journey events"] == "3"
    bob_events = p.query(
        "SELECT sum(events) FROM journeys FINAL WHERE customer_id IN " + _in(bob_ids)
    )

    forgotten = subprocess.run(
        [sys.executable, "-m", "tracker", "forget", "email:Ada@Example.com"],
        env=p.env,
        capture_output=True,
        check=True,
        timeout=120,
    ).stdout.decode()

    assert "forgotten: the person (" in forgotten
    assert f"touchpoints\t{before['touchpoints']} rows deleted" in forgotten
    assert counts(p, ada_rows(ada_ids)) == dict.fromkeys(before, 0)
    # The journey summary counts Bob's events alone; Bob is untouched.
    assert p.query("SELECT sum(events) FROM journeys FINAL").strip() == bob_events.strip()
    assert answers(p, bob) == bob_before

    # The audit says who, what kind and how much, and names nobody.
    audit = p.query(
        "SELECT requested_by, identifier_kind, scope, rows['touchpoints'], rows['calls'] "
        "FROM forget_audit"
    )
    assert audit.strip() == f"cli\temail\tperson\t{before['touchpoints']}\t{before['calls']}"
    everything = p.query("SELECT * FROM forget_audit FORMAT TSV")
    for secret in (*ADA_KEYS, *(k.split(":", 1)[1] for k in ADA_KEYS), *ada_ids):
        assert secret not in everything

    # The worker state naming her is tombstoned: her journey state and her aliases.
    settings = Settings.from_env(p.env)
    journey_state = latest(
        settings.bootstrap_servers, f"{settings.worker_id}-journey_state-changelog"
    )
    tombstoned = {key for key, value in journey_state.items() if value is None}
    assert {f'"{c}"'.encode() for c in ada_ids if f'"{c}"'.encode() in journey_state} <= tombstoned
    assert any(f'"{c}"'.encode() in tombstoned for c in ada_ids)
    aliases = latest(settings.bootstrap_servers, Topology.from_settings(settings).aliases.name)
    assert all(aliases.get(k.encode(), None) is None for k in ADA_KEYS)
    # Her call's and her ticket's merged callbacks, which hold her hashes, are tombstoned too.
    for table, key in (
        ("call_state", f"generic:{ADA_CALL}"),
        ("ticket_state", f"zendesk:{ADA_TICKET}"),
    ):
        state = latest(settings.bootstrap_servers, f"{settings.worker_id}-{table}-changelog")
        assert f'"{key}"'.encode() in state and state[f'"{key}"'.encode()] is None, table

    # Late events and a late call naming any of her identifiers are not stored.
    late = make_event(ts=stamp(start + timedelta(minutes=20)), phone=ADA_PHONE)
    assert p.post([late])[0] == 200
    call_id = "call-" + uuid.uuid4().hex
    call: dict[str, object] = {
        "call_id": call_id,
        "direction": "inbound",
        "from": ADA_PHONE,
        "to": "+18005550100",
        "timestamp": stamp(start + timedelta(minutes=21)),
        "status": "completed",
    }
    assert generic_callback(p, call_id, call) == 200
    p.wait_until_handled()
    assert counts(p, ada_rows(ada_ids)) == dict.fromkeys(before, 0)

    # A new consumer group reads every topic again from offset 0, into the same database.
    p.components[0].stop()
    replay_env = {**p.env, "TRACKER_WORKER_ID": p.env["TRACKER_WORKER_ID"] + "-replay"}
    replay = Pipeline(replay_env, p.data_dir)
    p.components[0] = replay.worker().start()
    replay.wait_until_handled(timeout=120)
    assert counts(replay, ada_rows(ada_ids)) == dict.fromkeys(before, 0)
    assert answers(replay, bob) == bob_before
