-- 1: profiles, identifiers, traits, events, merges, suppressions, groups
CREATE TABLE IF NOT EXISTS profiles (
    id TEXT PRIMARY KEY,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS identifiers (
    kind TEXT NOT NULL,
    value TEXT NOT NULL,
    profile_id TEXT NOT NULL,
    first_seen BIGINT NOT NULL,
    PRIMARY KEY (kind, value)
);
CREATE INDEX IF NOT EXISTS identifiers_by_profile ON identifiers (profile_id);
CREATE TABLE IF NOT EXISTS traits (
    profile_id TEXT NOT NULL,
    name TEXT NOT NULL,
    value TEXT NOT NULL,
    ts BIGINT NOT NULL,
    PRIMARY KEY (profile_id, name)
);
CREATE TABLE IF NOT EXISTS events (
    message_id TEXT PRIMARY KEY,
    profile_id TEXT NOT NULL,
    source TEXT NOT NULL,
    kind TEXT NOT NULL,
    name TEXT,
    ts BIGINT NOT NULL,
    received_at BIGINT NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_by_profile ON events (profile_id, ts, message_id);
CREATE TABLE IF NOT EXISTS merges (
    id TEXT PRIMARY KEY,
    from_profile TEXT NOT NULL,
    into_profile TEXT NOT NULL,
    reason TEXT NOT NULL,
    message_id TEXT,
    identifier_kind TEXT,
    identifier_value TEXT,
    at BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS merges_into ON merges (into_profile);
CREATE TABLE IF NOT EXISTS suppressions (
    kind TEXT NOT NULL,
    value TEXT NOT NULL,
    at BIGINT NOT NULL,
    PRIMARY KEY (kind, value)
);
CREATE TABLE IF NOT EXISTS account_groups (
    group_id TEXT PRIMARY KEY,
    traits TEXT NOT NULL,
    ts BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS profile_groups (
    profile_id TEXT NOT NULL,
    group_id TEXT NOT NULL,
    PRIMARY KEY (profile_id, group_id)
);
