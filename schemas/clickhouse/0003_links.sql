-- Short links, mirrored from the compacted links topic by the worker's "links" agent. Every change
-- to a link is a row with a higher version; a deleted link gets a row with deleted = 1. Read the
-- current state with FINAL (or argMax(..., version)), and leave out deleted = 1.
CREATE TABLE IF NOT EXISTS {db}.links
(
    slug          String,
    version       UInt64 COMMENT 'microseconds since the epoch of the change; higher replaces lower',
    deleted       Bool,
    target        String,
    status_code   UInt16,
    tags          Array(String),
    campaign      LowCardinality(String),
    channel       LowCardinality(String),
    utm_source    LowCardinality(String),
    utm_medium    LowCardinality(String),
    utm_campaign  LowCardinality(String),
    utm_term      String,
    utm_content   String,
    forward_query Bool,
    valid_since   Nullable(DateTime64(3, 'UTC')),
    valid_until   Nullable(DateTime64(3, 'UTC')),
    fallback_url  String,
    max_clicks    Nullable(UInt64),
    disabled      Bool,
    rules         String COMMENT 'targeting rules as JSON',
    created_at    Nullable(DateTime64(3, 'UTC')),
    updated_at    DateTime64(3, 'UTC'),
    inserted_at   DateTime64(3, 'UTC') DEFAULT now64(3)
)
-- sharding key: cityHash64(slug)
ENGINE = ReplacingMergeTree(version)
ORDER BY slug;
