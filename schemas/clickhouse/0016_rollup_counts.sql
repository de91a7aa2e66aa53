-- Rollups that read in less time (docs/reports.md#rollups). 0009 kept `events` as a `uniq` state,
-- which holds a hash of every touchpoint up to 65,536: merging a month of them took half a
-- second on 10 million touchpoints, and `events` was itself an estimate above 65,536. Now:
--
-- - `events` is a sum, exact: a touchpoint of one version (every web, link and email event is
--   version 0) is written once, so each of its rows is one touchpoint. A touchpoint written in
--   versions (a call or ticket learning its outcome, version 1 and up) counts in
--   `versioned_events`, a `uniq` of its event_id, so its versions count once. Read events as
--   sumMerge(events) + uniqMerge(versioned_events).
-- - `customers` stays a `uniq` of identity keys: exact up to 65,536 a row, within about 1 %
--   beyond. A fixed-size sketch (uniqCombined(12)) merges ten times faster but is an estimate
--   from a few hundred keys on, and reach is the denominator of a conversion rate whose
--   numerator is exact.
-- - The survey sums are kept on the touchpoint an answer rates (its day and bot flag are the
--   answer's), from the rated touchpoint's place the journey agent now writes on the answer.
--   0009 kept them on the answer's own row, and the scorecard found the rated touchpoint at query
--   time, an `event_id` lookup that touched every granule of `touchpoints`.
--
-- The table is made again and filled from what is stored, as 0009 did; answers stored before
-- this migration have no place and add up under type '(unrated)'.

-- A touchpoint's columns, for a survey answer: the place of the touchpoint it rates, as the journey
-- agent held it when it stitched the answer (empty when it held none), so that the rollup sums
-- each answer where the scorecard shows it.
ALTER TABLE {db}.touchpoints
    ADD COLUMN IF NOT EXISTS rated_channel LowCardinality(String) DEFAULT ''
    COMMENT 'for a survey answer: the channel of the touchpoint it rates, if the journey held it'
    AFTER survey_touchpoint_id;

ALTER TABLE {db}.touchpoints
    ADD COLUMN IF NOT EXISTS rated_type LowCardinality(String) DEFAULT ''
    COMMENT 'for a survey answer: the type of the touchpoint it rates; empty if unknown'
    AFTER rated_channel;

ALTER TABLE {db}.touchpoints
    ADD COLUMN IF NOT EXISTS rated_name String DEFAULT ''
    COMMENT 'for a survey answer: the name of the touchpoint it rates (a page view: its path)'
    AFTER rated_type;

ALTER TABLE {db}.touchpoints
    ADD COLUMN IF NOT EXISTS rated_stage LowCardinality(String) DEFAULT ''
    COMMENT 'for a survey answer: the stage of the touchpoint it rates'
    AFTER rated_name;

-- touchpoints_by_customer (0008) keeps every touchpoint column: the same four, and its view made
-- again to copy them.
ALTER TABLE {db}.touchpoints_by_customer
    ADD COLUMN IF NOT EXISTS rated_channel LowCardinality(String) DEFAULT ''
    COMMENT 'for a survey answer: the channel of the touchpoint it rates, if the journey held it'
    AFTER survey_touchpoint_id;

ALTER TABLE {db}.touchpoints_by_customer
    ADD COLUMN IF NOT EXISTS rated_type LowCardinality(String) DEFAULT ''
    COMMENT 'for a survey answer: the type of the touchpoint it rates; empty if unknown'
    AFTER rated_channel;

ALTER TABLE {db}.touchpoints_by_customer
    ADD COLUMN IF NOT EXISTS rated_name String DEFAULT ''
    COMMENT 'for a survey answer: the name of the touchpoint it rates (a page view: its path)'
    AFTER rated_type;

ALTER TABLE {db}.touchpoints_by_customer
    ADD COLUMN IF NOT EXISTS rated_stage LowCardinality(String) DEFAULT ''
    COMMENT 'for a survey answer: the stage of the touchpoint it rates'
    AFTER rated_name;

DROP VIEW IF EXISTS {db}.touchpoints_by_customer_mv;

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.touchpoints_by_customer_mv TO {db}.touchpoints_by_customer AS
SELECT
    identity_key,
    event_id, version, schema, type, name, source,
    channel, ts, device_ts, sent_ts, received_ts, customer_id,
    anonymous_id, user_id, email_hash, phone_hash, session_id, client_session_id,
    click_id, ad_click_ids, stage, seq, conversion, page_url,
    page_host, page_path, page_title, referrer, referrer_host, campaign_source,
    campaign_medium, campaign_name, campaign_term, campaign_content, properties, value,
    currency, survey_kind, survey_score, survey_comment, survey_touchpoint_id,
    rated_channel, rated_type, rated_name, rated_stage, consent_analytics,
    consent_marketing, ip, user_agent, device_type, os, browser,
    is_bot, bot_reason, locale, timezone, screen, library,
    inserted_at
FROM {db}.touchpoints;

-- A row a writer stored while the view was made again is copied again: what the last minutes
-- stored, of which ReplacingMergeTree removes the copies the view made too.
INSERT INTO {db}.touchpoints_by_customer
SELECT
    identity_key,
    event_id, version, schema, type, name, source,
    channel, ts, device_ts, sent_ts, received_ts, customer_id,
    anonymous_id, user_id, email_hash, phone_hash, session_id, client_session_id,
    click_id, ad_click_ids, stage, seq, conversion, page_url,
    page_host, page_path, page_title, referrer, referrer_host, campaign_source,
    campaign_medium, campaign_name, campaign_term, campaign_content, properties, value,
    currency, survey_kind, survey_score, survey_comment, survey_touchpoint_id,
    rated_channel, rated_type, rated_name, rated_stage, consent_analytics,
    consent_marketing, ip, user_agent, device_type, os, browser,
    is_bot, bot_reason, locale, timezone, screen, library,
    inserted_at
FROM {db}.touchpoints
WHERE inserted_at >= now64(3) - toIntervalMinute(10);

DROP VIEW IF EXISTS {db}.touchpoint_daily_touchpoints_mv;

DROP VIEW IF EXISTS {db}.touchpoint_daily_frictions_mv;

DROP TABLE IF EXISTS {db}.touchpoint_daily;

CREATE TABLE IF NOT EXISTS {db}.touchpoint_daily
(
    day              Date,
    channel          LowCardinality(String),
    type             LowCardinality(String),
    touchpoint_name  String COMMENT 'the touchpoint name; for a page view, its path',
    stage            LowCardinality(String),
    is_bot           Bool,
    events           AggregateFunction(sum, UInt64) COMMENT 'touchpoints written in one version (version 0): each row is one',
    versioned_events AggregateFunction(uniq, UUID) COMMENT 'touchpoints written in versions (calls, tickets): each once',
    customers        AggregateFunction(uniq, String) COMMENT 'distinct identity keys',
    conversions      AggregateFunction(sum, UInt64),
    conversion_value AggregateFunction(sum, Float64) COMMENT 'value of the conversions',
    frictions        AggregateFunction(sum, Int64) COMMENT 'frictions detected less those retracted',
    nps_n            AggregateFunction(sum, UInt64),
    nps_sum          AggregateFunction(sum, Float64),
    nps_promoters    AggregateFunction(sum, UInt64) COMMENT 'scores 9 and 10',
    nps_detractors   AggregateFunction(sum, UInt64) COMMENT 'scores 0 to 6',
    csat_n           AggregateFunction(sum, UInt64),
    csat_sum         AggregateFunction(sum, Float64),
    csat_satisfied   AggregateFunction(sum, UInt64) COMMENT 'scores 4 and 5',
    ces_n            AggregateFunction(sum, UInt64),
    ces_sum          AggregateFunction(sum, Float64),
    ces_sum_squares  AggregateFunction(sum, Float64)
)
-- sharding key: cityHash64(day, channel, type, touchpoint_name)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(day)
ORDER BY (day, channel, type, touchpoint_name, stage, is_bot);

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.touchpoint_daily_touchpoints_mv TO {db}.touchpoint_daily AS
SELECT
    toDate(ts) AS day,
    channel,
    type,
    if(type = 'page_view', page_path, name) AS touchpoint_name,
    stage,
    is_bot,
    sumState(toUInt64(version = 0)) AS events,
    uniqStateIf(event_id, version > 0) AS versioned_events,
    uniqStateIf(identity_key, identity_key != '') AS customers,
    sumState(toUInt64(conversion != '')) AS conversions,
    sumState(if(conversion != '', ifNull(toFloat64(value), 0.), 0.)) AS conversion_value
FROM {db}.touchpoints
GROUP BY day, channel, type, touchpoint_name, stage, is_bot;

-- What was stored before this migration, each touchpoint's current version once.
INSERT INTO {db}.touchpoint_daily (
    day, channel, type, touchpoint_name, stage, is_bot, events, versioned_events, customers, conversions,
    conversion_value)
SELECT
    toDate(ts) AS day,
    channel,
    type,
    if(type = 'page_view', page_path, name) AS touchpoint_name,
    stage,
    is_bot,
    sumState(toUInt64(version = 0)) AS events,
    uniqStateIf(event_id, version > 0) AS versioned_events,
    uniqStateIf(identity_key, identity_key != '') AS customers,
    sumState(toUInt64(conversion != '')) AS conversions,
    sumState(if(conversion != '', ifNull(toFloat64(value), 0.), 0.)) AS conversion_value
FROM {db}.touchpoints FINAL
GROUP BY day, channel, type, touchpoint_name, stage, is_bot;

-- A survey answer's scores add up on the touchpoint it rates (rated_*), on the day of the answer
-- and with the answer's bot flag; an answer whose touchpoint the journey did not hold adds up
-- under type '(unrated)', where the scorecard looks for it at query time. An answer never stitched
-- to a customer (no consent) rates nothing, as in the scorecard.
CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.touchpoint_daily_surveys_mv TO {db}.touchpoint_daily AS
SELECT
    toDate(ts) AS day,
    if(rated_type != '', rated_channel, '') AS channel,
    if(rated_type != '', rated_type, '(unrated)') AS type,
    if(rated_type != '', rated_name, '') AS touchpoint_name,
    if(rated_type != '', rated_stage, '') AS stage,
    is_bot,
    sumState(toUInt64(survey_kind = 'nps' AND survey_score IS NOT NULL)) AS nps_n,
    sumState(toFloat64(if(survey_kind = 'nps', ifNull(survey_score, 0), 0))) AS nps_sum,
    sumState(toUInt64(survey_kind = 'nps' AND ifNull(survey_score, -1) >= 9)) AS nps_promoters,
    sumState(toUInt64(survey_kind = 'nps' AND ifNull(survey_score, 99) <= 6)) AS nps_detractors,
    sumState(toUInt64(survey_kind = 'csat' AND survey_score IS NOT NULL)) AS csat_n,
    sumState(toFloat64(if(survey_kind = 'csat', ifNull(survey_score, 0), 0))) AS csat_sum,
    sumState(toUInt64(survey_kind = 'csat' AND ifNull(survey_score, -1) >= 4)) AS csat_satisfied,
    sumState(toUInt64(survey_kind = 'ces' AND survey_score IS NOT NULL)) AS ces_n,
    sumState(toFloat64(if(survey_kind = 'ces', ifNull(survey_score, 0), 0))) AS ces_sum,
    sumState(toFloat64(if(survey_kind = 'ces', pow(ifNull(survey_score, 0), 2), 0))) AS ces_sum_squares
FROM {db}.touchpoints
WHERE survey_kind != '' AND survey_score IS NOT NULL AND customer_id != ''
GROUP BY day, channel, type, touchpoint_name, stage, is_bot;

-- The answers stored before this migration: none has its touchpoint's place yet.
INSERT INTO {db}.touchpoint_daily (
    day, channel, type, touchpoint_name, stage, is_bot, nps_n, nps_sum, nps_promoters,
    nps_detractors, csat_n, csat_sum, csat_satisfied, ces_n, ces_sum, ces_sum_squares)
SELECT
    toDate(ts) AS day,
    '' AS channel,
    '(unrated)' AS type,
    '' AS touchpoint_name,
    '' AS stage,
    is_bot,
    sumState(toUInt64(survey_kind = 'nps' AND survey_score IS NOT NULL)) AS nps_n,
    sumState(toFloat64(if(survey_kind = 'nps', ifNull(survey_score, 0), 0))) AS nps_sum,
    sumState(toUInt64(survey_kind = 'nps' AND ifNull(survey_score, -1) >= 9)) AS nps_promoters,
    sumState(toUInt64(survey_kind = 'nps' AND ifNull(survey_score, 99) <= 6)) AS nps_detractors,
    sumState(toUInt64(survey_kind = 'csat' AND survey_score IS NOT NULL)) AS csat_n,
    sumState(toFloat64(if(survey_kind = 'csat', ifNull(survey_score, 0), 0))) AS csat_sum,
    sumState(toUInt64(survey_kind = 'csat' AND ifNull(survey_score, -1) >= 4)) AS csat_satisfied,
    sumState(toUInt64(survey_kind = 'ces' AND survey_score IS NOT NULL)) AS ces_n,
    sumState(toFloat64(if(survey_kind = 'ces', ifNull(survey_score, 0), 0))) AS ces_sum,
    sumState(toFloat64(if(survey_kind = 'ces', pow(ifNull(survey_score, 0), 2), 0))) AS ces_sum_squares
FROM {db}.touchpoints FINAL
WHERE survey_kind != '' AND survey_score IS NOT NULL AND customer_id != ''
GROUP BY day, channel, type, touchpoint_name, stage, is_bot;

-- A friction adds one where its touchpoint is; its retraction (a row with retracted = true)
-- takes it away again.
CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.touchpoint_daily_frictions_mv TO {db}.touchpoint_daily AS
SELECT
    toDate(ts) AS day,
    channel,
    type,
    name AS touchpoint_name,
    stage,
    is_bot,
    sumState(toInt64(if(retracted, -1, 1))) AS frictions
FROM {db}.frictions
GROUP BY day, channel, type, touchpoint_name, stage, is_bot;

-- Frictions stored before this migration, less those retracted: on the touchpoint each names
-- (0009 on), else found by its event_id (frictions stored before 0009).
INSERT INTO {db}.touchpoint_daily (day, channel, type, touchpoint_name, stage, is_bot, frictions)
SELECT
    toDate(ts) AS day,
    channel,
    type,
    name AS touchpoint_name,
    stage,
    is_bot,
    sumState(toInt64(1)) AS frictions
FROM {db}.frictions FINAL
WHERE NOT retracted AND channel != ''
GROUP BY day, channel, type, touchpoint_name, stage, is_bot;

INSERT INTO {db}.touchpoint_daily (day, channel, type, touchpoint_name, stage, is_bot, frictions)
SELECT
    toDate(f.ts) AS day,
    t.channel AS channel,
    t.type AS type,
    if(t.type = 'page_view', t.page_path, t.name) AS touchpoint_name,
    t.stage AS stage,
    t.is_bot AS is_bot,
    sumState(toInt64(1)) AS frictions
FROM (SELECT event_id, ts FROM {db}.frictions FINAL WHERE NOT retracted AND channel = '') AS f
INNER JOIN (SELECT toString(event_id) AS event_id, channel, type, name, page_path, stage, is_bot
            FROM {db}.touchpoints FINAL) AS t ON t.event_id = f.event_id
GROUP BY day, channel, type, touchpoint_name, stage, is_bot;
