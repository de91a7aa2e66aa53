"""The local broker `tracker up` runs: it starts whatever its random cluster id or a taken
controller port, and keeps data."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

import tracker.cli.kafka_local as kafka_local
from tracker.cli.kafka_local import LocalKafka, free_port

pytestmark = pytest.mark.integration


async def _produce(bootstrap: str, value: bytes) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        await producer.send_and_wait("kept", value)
    finally:
        await producer.stop()


async def _read_all(bootstrap: str) -> list[bytes]:
    consumer = AIOKafkaConsumer("kept", bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    try:
        fetched = await consumer.getmany(timeout_ms=5000)
        return [r.value for records in fetched.values() for r in records]
    finally:
        await consumer.stop()


def test_a_cluster_id_starting_with_a_dash_formats_and_data_survives_a_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(kafka_local, "_cluster_id", lambda: "-q7bW3kT0Rj2mZ9xYp4cVLg")
    broker = LocalKafka(tmp_path / "kafka", free_port())
    broker.start()
    try:
        asyncio.run(_produce(broker.bootstrap, b"before restart"))
        broker.stop()
        broker.start()
        assert asyncio.run(_read_all(broker.bootstrap)) == [b"before restart"]
    finally:
        broker.stop()


def test_a_broker_whose_controller_port_was_taken_starts_on_another_and_keeps_its_data(
    tmp_path: Path,
) -> None:
    """`tracker up` puts the controller on the client port + 1, which anything may hold (9093
    on a developer's machine); the supervisor's restart finds it taken as well."""
    broker = LocalKafka(tmp_path / "kafka", free_port(), controller_port=free_port())
    broker.start()
    try:
        asyncio.run(_produce(broker.bootstrap, b"before restart"))
        broker.stop()
        with socket.socket() as squatter:
            # Address reuse: the broker's own connections may linger in TIME_WAIT on the port.
            squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            squatter.bind(("127.0.0.1", broker.controller_port))
            squatter.listen()
            broker.start()
            assert asyncio.run(_read_all(broker.bootstrap)) == [b"before restart"]
    finally:
        broker.stop()


def test_a_controller_port_taken_while_the_broker_starts_does_not_stop_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The port was free when checked and taken before Kafka bound it: start launches again."""
    checks = []
    port_free = kafka_local._port_free

    def free_when_first_checked(port: int) -> bool:
        checks.append(port)
        return len(checks) == 1 or port_free(port)

    monkeypatch.setattr(kafka_local, "_port_free", free_when_first_checked)
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        broker = LocalKafka(tmp_path / "kafka", free_port(), controller_port=taken)
        try:
            broker.start()
            asyncio.run(_produce(broker.bootstrap, b"started"))
            assert broker.controller_port != taken
            assert asyncio.run(_read_all(broker.bootstrap)) == [b"started"]
        finally:
            broker.stop()
