"""The worker tables' on-disk store: Faust's RocksDB store, filing each key by its own hash.

Faust's RocksDB store files a key under the partition of the event being processed, and refuses
a write made outside one. The worker's tables place each key by its hash (``use_partitioner``)
and are written once per batch, after it: this store files a key where its changelog record goes
(the producer's murmur2 partitioner), so that each partition's database holds exactly what that
changelog partition recovers when the partition moves to another worker. It also gives the
store the ``update`` that Faust's serialized stores lack.
"""

from __future__ import annotations

from typing import Any

from faust.stores import STORES
from faust.stores.rocksdb import Store

from tracker.kafka.clients import key_hash

__all__ = ["STORE_SCHEME", "KeyedRocksDBStore"]

STORE_SCHEME = "keyed-rocksdb"


class KeyedRocksDBStore(Store):
    def _partition_of(self, key: bytes) -> int:
        partitions = self.table.partitions or self.app.conf.topic_partitions
        return int(key_hash(key) % partitions)

    def _set(self, key: bytes, value: bytes | None) -> None:
        # Faust's key index (a locked LRU) only saves the search that _get and _contains here
        # do not make: a key's partition is its hash.
        self._db_for_partition(self._partition_of(key)).put(key, value)

    def update(self, *args: Any, **kwargs: Any) -> None:
        """Faust's serialized stores inherit an ``update`` that needs an in-memory dict."""
        for mapping in (*args, kwargs):
            for key, value in mapping.items():
                self[key] = value

    def _get(self, key: bytes) -> Any:
        db = self._dbs.get(self._partition_of(key))
        if db is None:  # not a partition of this worker's
            return None
        return db.get(key)

    def _contains(self, key: bytes) -> bool:
        """Faust's asks every partition's database when a key is not in its index."""
        return self._get(key) is not None

    def _del(self, key: bytes) -> None:
        db = self._dbs.get(self._partition_of(key))
        if db is not None:
            db.delete(key)


STORES.aliases[STORE_SCHEME] = f"{__name__}:KeyedRocksDBStore"
