-- Journey stitching (agents/stitching.py). Every table here is versioned: ReplacingMergeTree keeps
-- the highest version of a key, so read with FINAL (or argMax(..., version)) for what is current.

-- Where the touchpoint stood in its customer's journey when it was stitched.
ALTER TABLE {db}.touchpoints
    ADD COLUMN IF NOT EXISTS seq UInt32 DEFAULT 0
    COMMENT 'position in the customer''s journey, in event time, when stitched; 0 if not stitched'
    AFTER stage;

-- session_id is now the journey's session (the sessions table); the client's own session id,
-- as sent, moves to client_session_id.
ALTER TABLE {db}.touchpoints
    ADD COLUMN IF NOT EXISTS client_session_id String DEFAULT ''
    COMMENT 'the session id the client sent, as sent'
    AFTER session_id;

-- One row per identifier: the customer it resolves to now. A touchpoint stitched before a merge
-- or a split keeps the customer_id it had; the view customer_touchpoints (0006) re-attributes it
-- through the identifier it was routed by.
CREATE TABLE IF NOT EXISTS {db}.identities
(
    identifier      String COMMENT 'kind:value; email and phone values are salted hashes',
    kind            LowCardinality(String) COMMENT 'anon, user, email, phone, click or crm:<system>',
    customer_id     String COMMENT 'the customer the identifier resolves to now',
    own_customer_id String COMMENT 'the customer id the identifier would have on its own',
    version         UInt64 COMMENT 'position in the identity log of the change; higher replaces lower',
    ts              DateTime64(3, 'UTC') COMMENT 'event time of the event that made the change',
    updated_at      DateTime64(3, 'UTC') DEFAULT now64(3),
    INDEX customer_bloom customer_id TYPE bloom_filter(0.01) GRANULARITY 4,
    INDEX own_customer_bloom own_customer_id TYPE bloom_filter(0.01) GRANULARITY 4
)
-- sharding key: cityHash64(identifier)
ENGINE = ReplacingMergeTree(version)
ORDER BY identifier;

-- Links the rules refused (two user ids, a per-type limit, a split), kept for review.
CREATE TABLE IF NOT EXISTS {db}.identity_conflicts
(
    conflict_id      String,
    event_id         String COMMENT 'the event whose link was refused',
    ts               DateTime64(3, 'UTC'),
    left_identifier  String,
    right_identifier String,
    rule             LowCardinality(String),
    recorded_at      DateTime64(3, 'UTC') DEFAULT now64(3)
)
-- sharding key: cityHash64(conflict_id)
ENGINE = ReplacingMergeTree
ORDER BY conflict_id;

-- Sessions per customer in event time. A late event writes a corrected version; a session that
-- no longer exists (its events moved by a merge, or a late event joined it to another) gets a
-- version with retired = true.
CREATE TABLE IF NOT EXISTS {db}.sessions
(
    session_id   String,
    version      UInt64,
    customer_id  String,
    start        DateTime64(3, 'UTC'),
    end          DateTime64(3, 'UTC'),
    events       UInt32,
    page_views   UInt32,
    channel      LowCardinality(String) COMMENT 'of the first event',
    campaign     LowCardinality(String) COMMENT 'the first campaign named in the session',
    is_bounce    Bool,
    event_ids    Array(String),
    retired      Bool,
    updated_at   DateTime64(3, 'UTC') DEFAULT now64(3)
)
-- sharding key: cityHash64(session_id)
ENGINE = ReplacingMergeTree(version)
ORDER BY session_id;

-- One current row per customer. A customer merged into another gets a last row naming it.
CREATE TABLE IF NOT EXISTS {db}.journeys
(
    customer_id  String,
    version      UInt64,
    as_of        DateTime64(3, 'UTC') COMMENT 'last_seen, or the epoch for a merged customer',
    first_seen   Nullable(DateTime64(3, 'UTC')),
    last_seen    Nullable(DateTime64(3, 'UTC')),
    events       UInt64,
    sessions     UInt64,
    channels     Array(LowCardinality(String)),
    stage        LowCardinality(String),
    stage_since  Nullable(DateTime64(3, 'UTC')),
    conversions  UInt64,
    value        Float64,
    frictions    UInt64,
    late_events  UInt64 COMMENT 'events later than the allowed lateness: kept, not sessionized',
    merged_into  String COMMENT 'set when this customer was merged into another',
    updated_at   DateTime64(3, 'UTC') DEFAULT now64(3)
)
-- sharding key: cityHash64(customer_id)
ENGINE = ReplacingMergeTree(version)
ORDER BY customer_id;

-- Friction as detected: one row per event and reason. retracted = true when a later event
-- shows it was not (a late event that turns a bounce into a longer visit).
CREATE TABLE IF NOT EXISTS {db}.frictions
(
    friction_id  String,
    version      UInt64,
    customer_id  String,
    event_id     String,
    ts           DateTime64(3, 'UTC'),
    reason       LowCardinality(String),
    severity     LowCardinality(String),
    detail       String,
    retracted    Bool,
    updated_at   DateTime64(3, 'UTC') DEFAULT now64(3)
)
-- sharding key: cityHash64(friction_id)
ENGINE = ReplacingMergeTree(version)
ORDER BY friction_id;
