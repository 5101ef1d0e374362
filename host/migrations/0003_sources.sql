-- 3: source runs: per-stream cursors (committed with each page), run history, one lease per
-- source, and the webhook deliveries already applied (replay protection)
CREATE TABLE IF NOT EXISTS source_cursors (
    source TEXT NOT NULL,
    stream TEXT NOT NULL,
    cursor TEXT,
    done BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (source, stream)
);
CREATE TABLE IF NOT EXISTS source_runs (
    id TEXT PRIMARY KEY,
    source TEXT NOT NULL,
    status TEXT NOT NULL,
    started_at BIGINT NOT NULL,
    finished_at BIGINT,
    full_refresh BIGINT NOT NULL,
    pages BIGINT NOT NULL,
    records BIGINT NOT NULL,
    events BIGINT NOT NULL,
    retries BIGINT NOT NULL,
    error TEXT
);
CREATE INDEX IF NOT EXISTS source_runs_by_source ON source_runs (source, started_at);
CREATE TABLE IF NOT EXISTS source_leases (
    source TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    run_id TEXT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS source_deliveries (
    source TEXT NOT NULL,
    delivery_id TEXT NOT NULL,
    records BIGINT NOT NULL,
    at BIGINT NOT NULL,
    PRIMARY KEY (source, delivery_id)
);
