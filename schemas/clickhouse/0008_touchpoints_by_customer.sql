-- Journey lookups that do not scan: every touchpoint version again, ordered by the identifier
-- the worker routed it by (identity_key, computed once here instead of at every read). Looking up
-- a customer reads the few granules of its identifiers, not all of touchpoints; the view
-- customer_touchpoints reads from here. The versions of one event share its identity key, so
-- ReplacingMergeTree keeps the highest as it does in touchpoints. A migration that adds a column
-- to touchpoints adds it here and to the materialized view too (tests compare the two tables).
CREATE TABLE IF NOT EXISTS {db}.touchpoints_by_customer
(
    identity_key         String COMMENT 'the identifier the touchpoint was routed by (kind:value); empty if none',
    event_id             UUID,
    version              UInt64,
    schema               LowCardinality(String),
    type                 LowCardinality(String),
    name                 String,
    source               LowCardinality(String),
    channel              LowCardinality(String),
    ts                   DateTime64(3, 'UTC'),
    device_ts            DateTime64(3, 'UTC'),
    sent_ts              Nullable(DateTime64(3, 'UTC')),
    received_ts          DateTime64(3, 'UTC'),
    customer_id          String,
    anonymous_id         String,
    user_id              String,
    email_hash           String,
    phone_hash           String,
    session_id           String,
    client_session_id    String,
    click_id             String,
    ad_click_ids         Map(LowCardinality(String), String),
    stage                LowCardinality(String),
    seq                  UInt32,
    conversion           LowCardinality(String),
    page_url             String,
    page_host            LowCardinality(String),
    page_path            String,
    page_title           String,
    referrer             String,
    referrer_host        LowCardinality(String),
    campaign_source      LowCardinality(String),
    campaign_medium      LowCardinality(String),
    campaign_name        LowCardinality(String),
    campaign_term        String,
    campaign_content     String,
    properties           Map(String, String),
    value                Nullable(Float64),
    currency             LowCardinality(String),
    survey_kind          LowCardinality(String),
    survey_score         Nullable(Float32),
    survey_comment       String,
    survey_touchpoint_id String,
    consent_analytics    Nullable(Bool),
    consent_marketing    Nullable(Bool),
    ip                   String,
    user_agent           String,
    device_type          LowCardinality(String),
    os                   LowCardinality(String),
    browser              LowCardinality(String),
    is_bot               Bool,
    bot_reason           LowCardinality(String),
    locale               LowCardinality(String),
    timezone             LowCardinality(String),
    screen               LowCardinality(String),
    library              LowCardinality(String),
    inserted_at          DateTime64(3, 'UTC'),
    INDEX customer_bloom customer_id TYPE bloom_filter(0.01) GRANULARITY 1
)
-- sharding key: cityHash64(event_id)
ENGINE = ReplacingMergeTree(version)
ORDER BY (identity_key, event_id);

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.touchpoints_by_customer_mv TO {db}.touchpoints_by_customer AS
SELECT
    identity_key,
    event_id, version, schema, type, name, source,
    channel, ts, device_ts, sent_ts, received_ts, customer_id,
    anonymous_id, user_id, email_hash, phone_hash, session_id, client_session_id,
    click_id, ad_click_ids, stage, seq, conversion, page_url,
    page_host, page_path, page_title, referrer, referrer_host, campaign_source,
    campaign_medium, campaign_name, campaign_term, campaign_content, properties, value,
    currency, survey_kind, survey_score, survey_comment, survey_touchpoint_id, consent_analytics,
    consent_marketing, ip, user_agent, device_type, os, browser,
    is_bot, bot_reason, locale, timezone, screen, library,
    inserted_at
FROM {db}.touchpoints;

-- What was stored before this migration; a row the view also copied meanwhile is a duplicate
-- that ReplacingMergeTree removes.
INSERT INTO {db}.touchpoints_by_customer
SELECT
    identity_key,
    event_id, version, schema, type, name, source,
    channel, ts, device_ts, sent_ts, received_ts, customer_id,
    anonymous_id, user_id, email_hash, phone_hash, session_id, client_session_id,
    click_id, ad_click_ids, stage, seq, conversion, page_url,
    page_host, page_path, page_title, referrer, referrer_host, campaign_source,
    campaign_medium, campaign_name, campaign_term, campaign_content, properties, value,
    currency, survey_kind, survey_score, survey_comment, survey_touchpoint_id, consent_analytics,
    consent_marketing, ip, user_agent, device_type, os, browser,
    is_bot, bot_reason, locale, timezone, screen, library,
    inserted_at
FROM {db}.touchpoints;

-- The view now reads the table ordered by identity key: a filter on identity_key (or on
-- identity_key IN (SELECT identifier FROM identities FINAL WHERE customer_id = ...)) reads only
-- that customer's granules.
CREATE OR REPLACE VIEW {db}.customer_touchpoints AS
SELECT
    t.*,
    if(i.customer_id != '', i.customer_id, t.customer_id) AS current_customer_id
FROM {db}.touchpoints_by_customer AS t FINAL
LEFT JOIN (SELECT identifier, customer_id FROM {db}.identities FINAL) AS i
    ON i.identifier = t.identity_key;
