-- One row per ticket (or chat conversation) record version. Every callback a helpdesk sends about
-- a ticket is merged by the worker into one record; each merge that learns something writes a
-- higher version, and ReplacingMergeTree keeps the highest. Read with FINAL for the latest.
-- No time partition: a ticket's opening time can move earlier as late callbacks arrive, and the
-- versions of one ticket must stay in one part to replace each other.
CREATE TABLE IF NOT EXISTS {db}.tickets
(
    ticket_uuid          UUID COMMENT 'the event_id of the ticket touchpoint: uuid5 of provider:ticket_id',
    version              UInt64 COMMENT 'distinct callbacks merged so far; higher replaces lower',
    provider             LowCardinality(String) COMMENT 'zendesk, intercom, or the tool a generic sender names',
    ticket_id            String COMMENT 'the provider''s id of the ticket or conversation',
    kind                 LowCardinality(String) COMMENT 'ticket or chat',
    channel              LowCardinality(String) COMMENT 'helpdesk or chat',
    opened_at            DateTime64(3, 'UTC'),
    status               LowCardinality(String) COMMENT 'open or solved, as Tracker reads the lifecycle',
    provider_status      LowCardinality(String) COMMENT 'the provider''s own status word, last sent',
    email_hash           String COMMENT 'salted hash of the requester''s email',
    phone_hash           String COMMENT 'salted hash of the requester''s E.164 number',
    user_id              String COMMENT 'the requester''s id in the business''s own systems',
    agent                String,
    queue                String COMMENT 'group, team or inbox',
    priority             LowCardinality(String),
    via                  LowCardinality(String) COMMENT 'how the ticket came in: email, web, chat...',
    first_reply_at       Nullable(DateTime64(3, 'UTC')),
    solved_at            Nullable(DateTime64(3, 'UTC')) COMMENT 'the last solve, while the ticket stays solved',
    first_reply_seconds  Nullable(Float64),
    resolution_seconds   Nullable(Float64),
    reopens              UInt32,
    rating               Nullable(Float32) COMMENT 'CSAT from 1 to 5, the requester''s latest rating',
    rated_at             Nullable(DateTime64(3, 'UTC')),
    callbacks            UInt32 COMMENT 'distinct provider callbacks merged into this version',
    inserted_at          DateTime64(3, 'UTC') DEFAULT now64(3),
    INDEX ticket_uuid_bloom ticket_uuid TYPE bloom_filter(0.01) GRANULARITY 4,
    INDEX email_bloom email_hash TYPE bloom_filter(0.01) GRANULARITY 4,
    INDEX phone_bloom phone_hash TYPE bloom_filter(0.01) GRANULARITY 4
)
-- sharding key: cityHash64(ticket_uuid)
ENGINE = ReplacingMergeTree(version)
ORDER BY (provider, ticket_id, ticket_uuid);
