"""The one place Tracker's Kafka clients are made, so that every producer has the same delivery
settings and every client the same connection settings.

- :func:`producer`: ``acks=all`` and idempotence, always: a record acknowledged is on every
  in-sync replica, and a retried send is never stored twice. Callers tune batching and timeouts.
- :func:`consumer`: offsets are committed by the caller, after its outputs are stored (the
  checkpoint order, agents/batches.py), never automatically.
- :func:`admin`: topic management.

Each takes the connection from :class:`~tracker.settings.Settings` (:func:`connection`).
"""

from __future__ import annotations

import random
import ssl
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.partitioner import murmur2

from tracker.settings import Settings

__all__ = [
    "DELIVERY",
    "admin",
    "connection",
    "consumer",
    "key_hash",
    "partition_by_key",
    "producer",
    "security",
]

DELIVERY: dict[str, Any] = {"acks": "all", "enable_idempotence": True}
"""What every producer promises: not overridable by a caller."""


@lru_cache(maxsize=16_384)
def key_hash(key: bytes) -> int:
    """The Java client's positive murmur2 of a key, which places a keyed record. aiokafka's is
    pure Python (about 10 µs a key); the worker's keys (customers, identifiers) repeat."""
    return int(murmur2(key)) & 0x7FFFFFFF


def partition_by_key(key: bytes | None, all_partitions: Sequence[int], available: Any) -> int:
    """aiokafka's default partitioner (the Java client's placement), with :func:`key_hash`."""
    if key is None:
        return int(random.choice(available or all_partitions))
    return all_partitions[key_hash(key) % len(all_partitions)]


def connection(settings: Settings) -> dict[str, Any]:
    """Where and how every client connects: the bootstrap servers, and TLS and SASL as
    ``TRACKER_KAFKA_SECURITY_PROTOCOL`` says (docs/settings.md)."""
    options: dict[str, Any] = {"bootstrap_servers": settings.bootstrap_servers}
    return options | security(settings)


def security(settings: Settings) -> dict[str, Any]:
    """The clients' TLS and SASL options; empty for a plaintext cluster."""
    chosen = settings.kafka_security
    if chosen.protocol == "PLAINTEXT":
        return {}
    options: dict[str, Any] = {"security_protocol": chosen.protocol}
    if chosen.uses_tls:
        # The system's certificate authorities, or the cluster's own CA file.
        options["ssl_context"] = ssl.create_default_context(cafile=chosen.ssl_cafile or None)
    if chosen.uses_sasl:
        options |= {
            "sasl_mechanism": chosen.sasl_mechanism,
            "sasl_plain_username": chosen.sasl_username,
            "sasl_plain_password": chosen.sasl_password.value,
        }
    return options


def producer(settings: Settings, client_id: str, **tuning: Any) -> AIOKafkaProducer:
    """An idempotent producer acknowledged by all in-sync replicas. ``tuning``: batching and
    timeouts (``linger_ms``, ``max_batch_size``, ``request_timeout_ms``)."""
    refused = DELIVERY.keys() & tuning.keys()
    if refused:
        raise ValueError(f"a producer's delivery settings are fixed: {sorted(refused)}")
    tuning.setdefault("partitioner", partition_by_key)
    return AIOKafkaProducer(**connection(settings), client_id=client_id, **DELIVERY, **tuning)


def consumer(
    settings: Settings,
    *topics: str,
    client_id: str,
    group_id: str | None = None,
    **tuning: Any,
) -> AIOKafkaConsumer:
    """A consumer that never commits on its own, reading from the earliest offset a group has
    not committed. Without ``group_id`` it reads partitions it is assigned (followers)."""
    if tuning.get("enable_auto_commit"):
        raise ValueError("offsets are committed after the outputs are stored, never automatically")
    options: dict[str, Any] = {"auto_offset_reset": "earliest", **tuning}
    options["enable_auto_commit"] = False
    return AIOKafkaConsumer(
        *topics, **connection(settings), client_id=client_id, group_id=group_id, **options
    )


def admin(settings: Settings, client_id: str = "tracker-admin") -> AIOKafkaAdminClient:
    return AIOKafkaAdminClient(**connection(settings), client_id=client_id)
