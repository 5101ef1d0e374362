-- 20: privacy erasure. An erased identifier is remembered only as a keyed hash (HMAC-SHA256
-- with a random per-database key), so re-creation can be refused without keeping the email.
-- Each erasure has a receipt and, per destination the profile was ever sent to, a queued erase
-- retried until done; the queued records (the fields last acknowledged, which the provider needs
-- to find the person) are cleared as soon as that destination confirms.
CREATE TABLE IF NOT EXISTS erasure_keys (
    name TEXT PRIMARY KEY,
    secret TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS erased_identifiers (
    digest TEXT PRIMARY KEY,
    at BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS erasures (
    id TEXT PRIMARY KEY,
    profile_id TEXT NOT NULL,
    requested_at BIGINT NOT NULL,
    identifiers BIGINT NOT NULL,
    events BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS erasures_by_time ON erasures (requested_at);
CREATE TABLE IF NOT EXISTS erasure_destinations (
    erasure_id TEXT NOT NULL,
    destination TEXT NOT NULL,
    syncs TEXT NOT NULL,
    status TEXT NOT NULL,
    records TEXT,
    attempts BIGINT NOT NULL,
    next_attempt_at BIGINT NOT NULL,
    last_error TEXT,
    done_at BIGINT,
    PRIMARY KEY (erasure_id, destination)
);
CREATE INDEX IF NOT EXISTS erasure_destinations_due ON erasure_destinations (status, next_attempt_at);
