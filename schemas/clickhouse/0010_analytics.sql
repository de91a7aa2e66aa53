-- Journey lookups that do not scan (docs/reports.md, bench/analytics.py): besides the
-- touchpoints (touchpoints_by_customer, 0008) and identities (bloom filters, 0005), a journey
-- reads the customer's sessions and the frictions on its touchpoints. Bloom filters on those
-- columns let both reads skip every granule without the customer, instead of scanning sessions
-- and frictions whole. MATERIALIZE builds them for the rows stored before this migration.
ALTER TABLE {db}.sessions
    ADD INDEX IF NOT EXISTS customer_bloom customer_id TYPE bloom_filter(0.01) GRANULARITY 1;

ALTER TABLE {db}.sessions MATERIALIZE INDEX customer_bloom;

ALTER TABLE {db}.frictions
    ADD INDEX IF NOT EXISTS event_bloom event_id TYPE bloom_filter(0.01) GRANULARITY 1;

ALTER TABLE {db}.frictions MATERIALIZE INDEX event_bloom;
