-- Re-attribution at query time (journey stitching, docs/journeys.md).
--
-- A touchpoint keeps the customer_id it was stitched with. The worker routes every event by its
-- identity key: the most durable identifier it carries (user, then crm:<system>, email, phone,
-- anon, click; junk values such as 'null' or 'anonymous' never count). Wherever a merge or a split
-- has since moved that identifier, its row in identities FINAL names the customer the touchpoint
-- belongs to now. Joining on own_customer_id finds merges but not splits; the identity key finds both.

-- The identifier the worker routed the touchpoint by, as identities stores it (kind:value); empty
-- for an event without a usable identifier or without analytics consent (never stitched). Computed
-- when read, so it costs nothing to store. Keep in step with agents/identity.py (identifiers_of,
-- is_junk, _PRIORITY) and agents/stitching.py (consent): tests compare the two.
ALTER TABLE {db}.touchpoints
    ADD COLUMN IF NOT EXISTS identity_key String ALIAS if(
        ifNull(consent_analytics, true),
        arrayStringConcat(arrayMap(
        c -> concat(c.2, ':', c.3),
        arraySlice(arraySort(arrayFilter(
            c -> c.3 != '' AND NOT (
                lowerUTF8(trimBoth(c.3, ' \t\n\r\x0b\x0c')) IN (
                    '', '-1', '0', '00000000-0000-0000-0000-000000000000', '[object object]',
                    'anon', 'anonymous', 'false', 'guest', 'n/a', 'na', 'nan', 'nil', 'none',
                    'null', 'test', 'true', 'undefined', 'unknown')
                OR (lengthUTF8(trimBoth(c.3, ' \t\n\r\x0b\x0c')) > 3
                    AND length(arrayDistinct(ngrams(lowerUTF8(trimBoth(c.3, ' \t\n\r\x0b\x0c')), 1))) = 1)),
            arrayConcat(
                [(0, 'user', user_id), (2, 'email', email_hash), (3, 'phone', phone_hash),
                 (4, 'anon', anonymous_id), (5, 'click', click_id)],
                arrayMap((name, value) -> (1, concat('crm:', substring(name, 5)), value),
                    mapKeys(mapFilter((name, value) -> startsWith(name, 'crm.'), properties)),
                    mapValues(mapFilter((name, value) -> startsWith(name, 'crm.'), properties)))))),
            1, 1))), '')
    COMMENT 'the identifier the touchpoint was routed by (kind:value), as in identities; empty if none'
    AFTER customer_id;

-- Every touchpoint (its current version) with the customer it belongs to now. Analysts group by
-- current_customer_id; customer_id stays what it was when the touchpoint was stitched.
CREATE VIEW IF NOT EXISTS {db}.customer_touchpoints AS
SELECT
    t.*,
    t.identity_key AS identity_key,
    if(i.customer_id != '', i.customer_id, t.customer_id) AS current_customer_id
FROM {db}.touchpoints AS t FINAL
LEFT JOIN (SELECT identifier, customer_id FROM {db}.identities FINAL) AS i
    ON i.identifier = t.identity_key;
