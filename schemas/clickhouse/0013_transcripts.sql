-- Call transcripts (collectors/calls/transcripts.py): the topics their phrases flag, and, only
-- with TRACKER_CALL_TRANSCRIPTS=store, the text with numbers and email addresses redacted.
-- `tracker forget phone:...` deletes the call rows, and these columns with them.

ALTER TABLE {db}.calls
    ADD COLUMN IF NOT EXISTS topics Array(LowCardinality(String)) DEFAULT []
    COMMENT 'topics the call''s transcript flags (TRACKER_CALL_TOPICS)'
    AFTER callbacks;

ALTER TABLE {db}.calls
    ADD COLUMN IF NOT EXISTS transcribed Bool DEFAULT false
    COMMENT 'whether a transcript of the call arrived (with TRACKER_CALL_TRANSCRIPTS on)'
    AFTER topics;

ALTER TABLE {db}.calls
    ADD COLUMN IF NOT EXISTS transcript String DEFAULT ''
    COMMENT 'the transcript, redacted; empty unless TRACKER_CALL_TRANSCRIPTS=store'
    AFTER transcribed;
