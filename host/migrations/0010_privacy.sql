-- 10: privacy (issue 19): consent per profile and category, the sync runs' "withheld: no
-- consent" count, and what undoing a merge needs: the merge log's snapshot of both sides, its
-- undone time, and the pairs of profiles an undone merge may not join again.
CREATE TABLE IF NOT EXISTS consent (
    profile_id TEXT NOT NULL,
    category TEXT NOT NULL,
    granted BIGINT NOT NULL,
    ts BIGINT NOT NULL,
    PRIMARY KEY (profile_id, category)
);
ALTER TABLE sync_runs ADD COLUMN withheld BIGINT NOT NULL DEFAULT 0;
ALTER TABLE merges ADD COLUMN undone_at BIGINT;
-- One row per thing a merge moved or overwrote: side 'from' (the merged-away profile) or 'into'
-- (the survivor, before the merge), item 'identifier' (name = kind), 'event' (name = message
-- id), 'trait', 'consent', 'group', 'merge' (an earlier merge re-pointed), 'profile' (created_at).
CREATE TABLE IF NOT EXISTS merge_items (
    merge_id TEXT NOT NULL,
    side TEXT NOT NULL,
    item TEXT NOT NULL,
    name TEXT NOT NULL,
    value TEXT,
    ts BIGINT
);
CREATE INDEX IF NOT EXISTS merge_items_by_merge ON merge_items (merge_id, side, item);
CREATE TABLE IF NOT EXISTS merge_blocks (
    profile_a TEXT NOT NULL,
    profile_b TEXT NOT NULL,
    merge_id TEXT NOT NULL,
    at BIGINT NOT NULL,
    PRIMARY KEY (profile_a, profile_b)
);
CREATE INDEX IF NOT EXISTS merge_blocks_b ON merge_blocks (profile_b);
CREATE INDEX IF NOT EXISTS events_by_ts ON events (ts);
