-- 4: per sync, the model and mapping fingerprint of its last completed run and when that run
-- started, and per audience when its membership last changed, so an unchanged re-run only
-- looks at profiles changed since
CREATE TABLE IF NOT EXISTS sync_meta (
    sync TEXT PRIMARY KEY,
    fingerprint TEXT NOT NULL,
    complete_started_at BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS audience_changes (
    audience TEXT PRIMARY KEY,
    changed_at BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS merges_by_time ON merges (at);
CREATE INDEX IF NOT EXISTS suppressions_by_time ON suppressions (at);
