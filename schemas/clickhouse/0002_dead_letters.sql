-- Events that could not be accepted, with the reason a person can act on and the raw payload.
CREATE TABLE IF NOT EXISTS {db}.dead_letters
(
    dead_letter_id UUID,
    received_ts    DateTime64(3, 'UTC'),
    source         LowCardinality(String) COMMENT 'the component that refused it: beacon, worker, ...',
    stage          LowCardinality(String) COMMENT 'collect (at the HTTP edge) or ingest (in the worker)',
    reason         String,
    error_fields   Array(String),
    event_id       String,
    payload        String,
    inserted_at    DateTime64(3, 'UTC') DEFAULT now64(3)
)
-- sharding key: cityHash64(dead_letter_id)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(received_ts)
ORDER BY (toDate(received_ts), dead_letter_id);
