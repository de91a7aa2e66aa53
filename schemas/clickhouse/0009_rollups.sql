-- Rollups: what every report sums, kept up to date as touchpoints and frictions land, so that a
-- scorecard reads a few thousand rows instead of every touchpoint. One row per day and
-- touchpoint (channel, type, name: a page view's name is its path), stage and bot flag; read
-- with the -Merge of each column's function, grouped as the report needs (docs/reports.md):
--
--   SELECT channel, uniqMerge(events) AS events, uniqMerge(customers) AS customers,
--          sumMerge(conversions) AS conversions, sumMerge(frictions) AS frictions
--   FROM touchpoint_daily WHERE day BETWEEN '2026-11-01' AND '2026-11-30' AND NOT is_bot
--   GROUP BY channel
--
-- Customers are counted by identity key, the identifier each touchpoint was routed by: a merge
-- or a split moves identity keys between customers but never changes a touchpoint's key, so the
-- count stays right whatever merges happen later, with nothing to rewrite.
CREATE TABLE IF NOT EXISTS {db}.touchpoint_daily
(
    day              Date,
    channel          LowCardinality(String),
    type             LowCardinality(String),
    touchpoint_name  String COMMENT 'the touchpoint name; for a page view, its path',
    stage            LowCardinality(String),
    is_bot           Bool,
    events           AggregateFunction(uniq, UUID) COMMENT 'distinct touchpoints (versions count once)',
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
    uniqState(event_id) AS events,
    uniqStateIf(identity_key, identity_key != '') AS customers,
    sumState(toUInt64(conversion != '')) AS conversions,
    sumState(if(conversion != '', ifNull(toFloat64(value), 0.), 0.)) AS conversion_value,
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
GROUP BY day, channel, type, touchpoint_name, stage, is_bot;

-- What was stored before this migration, each touchpoint's current version once.
INSERT INTO {db}.touchpoint_daily (
    day, channel, type, touchpoint_name, stage, is_bot, events, customers, conversions,
    conversion_value, nps_n, nps_sum, nps_promoters, nps_detractors, csat_n, csat_sum,
    csat_satisfied, ces_n, ces_sum, ces_sum_squares)
SELECT
    toDate(ts) AS day,
    channel,
    type,
    if(type = 'page_view', page_path, name) AS touchpoint_name,
    stage,
    is_bot,
    uniqState(event_id) AS events,
    uniqStateIf(identity_key, identity_key != '') AS customers,
    sumState(toUInt64(conversion != '')) AS conversions,
    sumState(if(conversion != '', ifNull(toFloat64(value), 0.), 0.)) AS conversion_value,
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

-- Frictions stored before this migration, on their touchpoints, less those retracted.
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
