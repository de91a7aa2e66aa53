-- Journey lookups in one read of one table (docs/reports.md, bench/analytics.py). 0014 named
-- what to read per customer id, but a lookup still read six tables, each a whole granule of
-- 8,192 rows for a handful. This table holds, per owner, what a journey shows, as JSON:
--
--   owner = an identifier:          part 'identity'   (the identifier's row of identities)
--   owner = a customer id:          part 'identifier' (an identifier that resolved to it)
--                                   part 'session', 'friction', 'journey' (its rows)
--   owner = a customer id or a      part 'touchpoint' (a touchpoint stitched to that customer,
--           touchpoint's identity key                  or routed by that key: stored under both)
--
-- Every row keeps its version and ReplacingMergeTree keeps the highest per (owner, part, id), as
-- the source tables do. Rows under a customer are hints where things move: an identifier that
-- moved to another customer leaves its 'identifier' row, so a lookup checks it against the
-- identifier's own 'identity' row, and a touchpoint follows its identity key. Small granules:
-- a lookup reads a few dozen rows under a few owners.
CREATE TABLE IF NOT EXISTS {db}.journey_lookup
(
    owner    String COMMENT 'a customer id, an identifier or a touchpoint''s identity key',
    part     LowCardinality(String) COMMENT 'identity, identifier, touchpoint, session, friction or journey',
    id       String COMMENT 'the identifier, event_id, session_id, friction_id, or the customer id of a journey',
    version  UInt64,
    link     String COMMENT 'identity: the customer the identifier resolves to; identifier: the customer id it had on its own',
    doc      String COMMENT 'the source row''s columns a journey shows, as one JSON object'
)
-- sharding key: cityHash64(owner)
ENGINE = ReplacingMergeTree(version)
ORDER BY (owner, part, id)
SETTINGS index_granularity = 256;

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.journey_lookup_identities_mv TO {db}.journey_lookup AS
SELECT
    owner_part.1 AS owner,
    owner_part.2 AS part,
    identifier AS id,
    version,
    if(owner_part.2 = 'identity', customer_id, own_customer_id) AS link,
    formatRowNoNewline('JSONEachRow', identifier, kind, customer_id, own_customer_id) AS doc
FROM {db}.identities
ARRAY JOIN [(identifier, 'identity'), (customer_id, 'identifier')] AS owner_part
WHERE owner_part.1 != '';

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.journey_lookup_touchpoints_mv TO {db}.journey_lookup AS
SELECT
    owner,
    'touchpoint' AS part,
    toString(event_id) AS id,
    version,
    formatRowNoNewline('JSONEachRow', event_id, ts, type, name, channel,
        source, session_id, stage, value, customer_id, identity_key, survey_kind,
        survey_score) AS doc
FROM {db}.touchpoints_by_customer
ARRAY JOIN arrayDistinct(arrayFilter(o -> o != '', [customer_id, identity_key])) AS owner;

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.journey_lookup_sessions_mv TO {db}.journey_lookup AS
SELECT
    customer_id AS owner,
    'session' AS part,
    session_id AS id,
    version,
    formatRowNoNewline('JSONEachRow', customer_id, event_ids, retired) AS doc
FROM {db}.sessions
WHERE customer_id != '';

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.journey_lookup_frictions_mv TO {db}.journey_lookup AS
SELECT
    customer_id AS owner,
    'friction' AS part,
    friction_id AS id,
    version,
    formatRowNoNewline('JSONEachRow', customer_id, event_id, ts, reason, severity, detail,
        retracted) AS doc
FROM {db}.frictions
WHERE customer_id != '';

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.journey_lookup_journeys_mv TO {db}.journey_lookup AS
SELECT
    customer_id AS owner,
    'journey' AS part,
    customer_id AS id,
    version,
    formatRowNoNewline('JSONEachRow', customer_id, first_seen, last_seen, events, sessions,
        channels, stage, stage_since, conversions, value, frictions, late_events,
        merged_into) AS doc
FROM {db}.journeys
WHERE customer_id != '';

-- What was stored before this migration; a row a view also copied meanwhile is a duplicate that
-- ReplacingMergeTree removes.
INSERT INTO {db}.journey_lookup (owner, part, id, version, link, doc)
SELECT owner_part.1, owner_part.2, identifier, version,
       if(owner_part.2 = 'identity', customer_id, own_customer_id),
       formatRowNoNewline('JSONEachRow', identifier, kind, customer_id, own_customer_id)
FROM {db}.identities
ARRAY JOIN [(identifier, 'identity'), (customer_id, 'identifier')] AS owner_part
WHERE owner_part.1 != '';

INSERT INTO {db}.journey_lookup (owner, part, id, version, doc)
SELECT owner, 'touchpoint', toString(event_id), version,
       formatRowNoNewline('JSONEachRow', event_id, ts, type, name, channel,
           source, session_id, stage, value, customer_id, identity_key, survey_kind, survey_score)
FROM {db}.touchpoints_by_customer
ARRAY JOIN arrayDistinct(arrayFilter(o -> o != '', [customer_id, identity_key])) AS owner;

INSERT INTO {db}.journey_lookup (owner, part, id, version, doc)
SELECT customer_id, 'session', session_id, version,
       formatRowNoNewline('JSONEachRow', customer_id, event_ids, retired)
FROM {db}.sessions WHERE customer_id != '';

INSERT INTO {db}.journey_lookup (owner, part, id, version, doc)
SELECT customer_id, 'friction', friction_id, version,
       formatRowNoNewline('JSONEachRow', customer_id, event_id, ts, reason, severity, detail,
           retracted)
FROM {db}.frictions WHERE customer_id != '';

INSERT INTO {db}.journey_lookup (owner, part, id, version, doc)
SELECT customer_id, 'journey', customer_id, version,
       formatRowNoNewline('JSONEachRow', customer_id, first_seen, last_seen, events, sessions,
           channels, stage, stage_since, conversions, value, frictions, late_events, merged_into)
FROM {db}.journeys WHERE customer_id != '';

-- customer_refs (0014) is read no more: its views go, so that writes stop filling it, and the
-- table with them.
DROP VIEW IF EXISTS {db}.customer_refs_identities_mv;

DROP VIEW IF EXISTS {db}.customer_refs_touchpoints_mv;

DROP VIEW IF EXISTS {db}.customer_refs_sessions_mv;

DROP VIEW IF EXISTS {db}.customer_refs_frictions_mv;

DROP TABLE IF EXISTS {db}.customer_refs;
