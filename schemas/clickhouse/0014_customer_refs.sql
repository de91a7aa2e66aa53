-- Journey lookups on one granule range a table (docs/reports.md, bench/analytics.py). A journey
-- reads a customer's identifiers, the touchpoints stitched to its customer ids, its sessions and
-- its frictions; those tables are ordered by identifier, identity key, session id and friction id,
-- and bloom filters on customer_id still read one filter per granule (90 ms for touchpoints on 10
-- million rows). This narrow table names, per customer id, what to look up in each, in customer
-- order: a lookup reads it first (a granule or two), then each table by its own primary key.
--
-- A row is a hint, never the truth: an identifier or a session that has moved to another customer
-- since leaves its old row here, so every read checks the current row of the table it points into
-- (identities FINAL, sessions FINAL, frictions FINAL), and a touchpoint follows its identity key.
CREATE TABLE IF NOT EXISTS {db}.customer_refs
(
    customer_id  String COMMENT 'a customer id, current or one it had before a merge',
    kind         LowCardinality(String) COMMENT 'identifier, key (a touchpoint''s identity key), session or friction',
    ref          String COMMENT 'the identifier, identity key, session_id or friction_id'
)
-- sharding key: cityHash64(customer_id)
ENGINE = ReplacingMergeTree
ORDER BY (customer_id, kind, ref);

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.customer_refs_identities_mv TO {db}.customer_refs AS
SELECT DISTINCT customer_id, 'identifier' AS kind, identifier AS ref
FROM {db}.identities;

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.customer_refs_touchpoints_mv TO {db}.customer_refs AS
SELECT DISTINCT customer_id, 'key' AS kind, identity_key AS ref
FROM {db}.touchpoints
WHERE customer_id != '' AND identity_key != '';

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.customer_refs_sessions_mv TO {db}.customer_refs AS
SELECT DISTINCT customer_id, 'session' AS kind, session_id AS ref
FROM {db}.sessions
WHERE customer_id != '';

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.customer_refs_frictions_mv TO {db}.customer_refs AS
SELECT DISTINCT customer_id, 'friction' AS kind, friction_id AS ref
FROM {db}.frictions
WHERE customer_id != '';

-- What was stored before this migration; a row a view also copied meanwhile is a duplicate that
-- ReplacingMergeTree removes.
INSERT INTO {db}.customer_refs (customer_id, kind, ref)
SELECT DISTINCT customer_id, 'identifier', identifier FROM {db}.identities;

INSERT INTO {db}.customer_refs (customer_id, kind, ref)
SELECT DISTINCT customer_id, 'key', identity_key FROM {db}.touchpoints
WHERE customer_id != '' AND identity_key != '';

INSERT INTO {db}.customer_refs (customer_id, kind, ref)
SELECT DISTINCT customer_id, 'session', session_id FROM {db}.sessions WHERE customer_id != '';

INSERT INTO {db}.customer_refs (customer_id, kind, ref)
SELECT DISTINCT customer_id, 'friction', friction_id FROM {db}.frictions WHERE customer_id != '';
