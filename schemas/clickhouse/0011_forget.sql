-- One row per erasure (`tracker forget`, POST /api/forget): who asked, when, the kind of
-- identifier and how many rows each table lost. Never the identifier, nor any of the person's
-- other identifiers or customer ids: the audit outlives the person and names nobody.
CREATE TABLE IF NOT EXISTS {db}.forget_audit
(
    forget_id        UUID,
    requested_at     DateTime64(3, 'UTC'),
    requested_by     String COMMENT 'the console token''s name (TRACKER_API_TOKEN_NAME), or cli',
    identifier_kind  LowCardinality(String) COMMENT 'user, anon, email, phone or click',
    scope            LowCardinality(String) COMMENT 'person, or identifier (--identifier-only)',
    identifiers      UInt32 COMMENT 'identifiers suppressed for good',
    customers        UInt32 COMMENT 'customer ids erased',
    rows             Map(String, UInt64) COMMENT 'rows deleted, per table',
    state_tombstones Map(String, UInt64) COMMENT 'compacted-topic keys tombstoned, per state'
)
-- sharding key: cityHash64(forget_id)
ENGINE = MergeTree
ORDER BY (requested_at, forget_id);
