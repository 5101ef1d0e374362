-- 2: audiences, syncs (acknowledged state, runs, leases, event cursors), dead letters
CREATE TABLE IF NOT EXISTS audience_members (
    audience TEXT NOT NULL,
    profile_id TEXT NOT NULL,
    since BIGINT NOT NULL,
    PRIMARY KEY (audience, profile_id)
);
CREATE TABLE IF NOT EXISTS audience_state (
    audience TEXT PRIMARY KEY,
    filter TEXT NOT NULL,
    evaluated_through BIGINT NOT NULL,
    full_at BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS sync_records (
    sync TEXT NOT NULL,
    key TEXT NOT NULL,
    hash TEXT NOT NULL,
    fields TEXT NOT NULL,
    acked_at BIGINT NOT NULL,
    PRIMARY KEY (sync, key)
);
CREATE TABLE IF NOT EXISTS sync_runs (
    id TEXT PRIMARY KEY,
    sync TEXT NOT NULL,
    status TEXT NOT NULL,
    started_at BIGINT NOT NULL,
    finished_at BIGINT,
    dry_run BIGINT NOT NULL,
    full_resync BIGINT NOT NULL,
    planned_adds BIGINT NOT NULL,
    planned_changes BIGINT NOT NULL,
    planned_removals BIGINT NOT NULL,
    sent BIGINT NOT NULL,
    succeeded BIGINT NOT NULL,
    retried BIGINT NOT NULL,
    rejected BIGINT NOT NULL,
    dead_lettered BIGINT NOT NULL,
    error TEXT
);
CREATE INDEX IF NOT EXISTS sync_runs_by_sync ON sync_runs (sync, started_at);
CREATE TABLE IF NOT EXISTS sync_leases (
    sync TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    run_id TEXT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS sync_cursors (
    sync TEXT PRIMARY KEY,
    received_at BIGINT NOT NULL,
    message_id TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS dead_letters (
    id TEXT PRIMARY KEY,
    sync TEXT NOT NULL,
    key TEXT NOT NULL,
    action TEXT NOT NULL,
    hash TEXT NOT NULL,
    fields TEXT NOT NULL,
    attempts BIGINT NOT NULL,
    error TEXT NOT NULL,
    at BIGINT NOT NULL,
    replayed_at BIGINT
);
CREATE INDEX IF NOT EXISTS dead_letters_by_sync ON dead_letters (sync, replayed_at);
CREATE INDEX IF NOT EXISTS profiles_by_updated ON profiles (updated_at);
CREATE INDEX IF NOT EXISTS events_by_name ON events (kind, name, received_at, message_id);
