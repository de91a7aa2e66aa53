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

from aiokafka.partitioner import murmur2
from faust.stores import STORES
from faust.stores.rocksdb import Store

__all__ = ["STORE_SCHEME", "KeyedRocksDBStore"]

STORE_SCHEME = "keyed-rocksdb"


class KeyedRocksDBStore(Store):
    def _partition_of(self, key: bytes) -> int:
        partitions = self.table.partitions or self.app.conf.topic_partitions
        return int((murmur2(key) & 0x7FFFFFFF) % partitions)

    def _set(self, key: bytes, value: bytes | None) -> None:
        partition = self._partition_of(key)
        self._key_index[key] = partition
        self._db_for_partition(partition).put(key, value)

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


STORES.aliases[STORE_SCHEME] = f"{__name__}:KeyedRocksDBStore"
