-- What the journey agent decides about a touchpoint when it stitches it, kept for the reports
-- and the rollups (0009): the conversion rule it matched and, for a survey answer, the
-- touchpoint it rates. Frictions carry the touchpoint they are on, so that they roll up by it.

ALTER TABLE {db}.touchpoints
    ADD COLUMN IF NOT EXISTS conversion LowCardinality(String) DEFAULT ''
    COMMENT 'the conversion rule the touchpoint matched when stitched; empty if none'
    AFTER seq;

ALTER TABLE {db}.touchpoints
    ADD COLUMN IF NOT EXISTS survey_touchpoint_id String DEFAULT ''
    COMMENT 'for a survey answer: the event_id of the touchpoint it rates; empty if none'
    AFTER survey_comment;

ALTER TABLE {db}.frictions
    ADD COLUMN IF NOT EXISTS channel LowCardinality(String) DEFAULT ''
    COMMENT 'the channel of the touchpoint the friction is on'
    AFTER retracted;

ALTER TABLE {db}.frictions
    ADD COLUMN IF NOT EXISTS type LowCardinality(String) DEFAULT ''
    COMMENT 'the type of the touchpoint the friction is on'
    AFTER channel;

ALTER TABLE {db}.frictions
    ADD COLUMN IF NOT EXISTS name String DEFAULT ''
    COMMENT 'the touchpoint name (for a page view, its path) the friction is on'
    AFTER type;

ALTER TABLE {db}.frictions
    ADD COLUMN IF NOT EXISTS stage LowCardinality(String) DEFAULT ''
    COMMENT 'the customer''s stage at the touchpoint the friction is on'
    AFTER name;

ALTER TABLE {db}.frictions
    ADD COLUMN IF NOT EXISTS is_bot Bool DEFAULT false
    COMMENT 'whether the touchpoint the friction is on came from a bot'
    AFTER stage;
