-- One row per call record version. Every callback a provider sends about a call is merged by the
-- worker into one record; each merge that learns something writes a higher version, and
-- ReplacingMergeTree keeps the highest. Read with FINAL (or argMax(..., version)) for the latest.
-- No time partition: a call's start time can move earlier as late callbacks arrive, and the
-- versions of one call must stay in one part to replace each other.
CREATE TABLE IF NOT EXISTS {db}.calls
(
    call_uuid        UUID COMMENT 'the event_id of the call touchpoint: uuid5 of provider:call_id',
    version          UInt64 COMMENT 'distinct callbacks merged so far; higher replaces lower',
    provider         LowCardinality(String),
    call_id          String COMMENT 'the provider''s id of the whole call',
    leg_ids          Array(String),
    call_ts          DateTime64(3, 'UTC') COMMENT 'the call''s start, as far as known',
    direction        LowCardinality(String) COMMENT 'inbound or outbound',
    status           LowCardinality(String) COMMENT 'the furthest status reached',
    disposition      LowCardinality(String) COMMENT 'answered, abandoned, busy, no-answer, failed, voicemail; empty while the call goes on',
    caller_hash      String COMMENT 'salted hash of the caller''s E.164 number',
    called_hash      String COMMENT 'salted hash of the called E.164 number',
    tracking_number  String COMMENT 'the business''s number, E.164, in clear',
    campaign_source  LowCardinality(String),
    campaign_medium  LowCardinality(String),
    campaign_name    LowCardinality(String),
    channel          LowCardinality(String),
    started_at       Nullable(DateTime64(3, 'UTC')),
    answered_at      Nullable(DateTime64(3, 'UTC')),
    ended_at         Nullable(DateTime64(3, 'UTC')),
    ring_seconds     Nullable(Float64) COMMENT 'ringing and waiting before an answer, or until the caller gave up',
    queue_seconds    Nullable(Float64),
    talk_seconds     Nullable(Float64),
    hold_seconds     Nullable(Float64),
    transfer_count   UInt16,
    transfer_kind    LowCardinality(String) COMMENT 'cold, warm, or empty without transfers',
    queue            String,
    agent            String,
    recording        Bool,
    hangup_by        LowCardinality(String) COMMENT 'caller, callee or system',
    callbacks        UInt32 COMMENT 'distinct provider callbacks merged into this version',
    inserted_at      DateTime64(3, 'UTC') DEFAULT now64(3),
    INDEX call_uuid_bloom call_uuid TYPE bloom_filter(0.01) GRANULARITY 4
)
-- sharding key: cityHash64(call_uuid)
ENGINE = ReplacingMergeTree(version)
ORDER BY (provider, call_id, call_uuid);
