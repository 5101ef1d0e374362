-- 51: each audience's size, kept by its refresh (so no page counts a million members), and its
-- size over time (a point per refresh that changed it); indexes the console's pages read by
CREATE TABLE IF NOT EXISTS audience_sizes (
    audience TEXT PRIMARY KEY,
    size BIGINT NOT NULL,
    at BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS audience_size_history (
    audience TEXT NOT NULL,
    at BIGINT NOT NULL,
    size BIGINT NOT NULL,
    PRIMARY KEY (audience, at)
);
INSERT INTO audience_sizes (audience, size, at)
    SELECT audience, COUNT(*), MAX(since) FROM audience_members GROUP BY audience;
INSERT INTO audience_size_history (audience, at, size)
    SELECT audience, at, size FROM audience_sizes;
-- The newest members of an audience (its page's sample).
CREATE INDEX IF NOT EXISTS audience_members_by_since ON audience_members (audience, since, profile_id);
-- A profile's merge history names it on either side.
CREATE INDEX IF NOT EXISTS merges_from ON merges (from_profile);
-- A sync's pending dead letters, oldest first.
CREATE INDEX IF NOT EXISTS dead_letters_pending ON dead_letters (sync, replayed_at, at, id);
DROP INDEX IF EXISTS dead_letters_by_sync;
