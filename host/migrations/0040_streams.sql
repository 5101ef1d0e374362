-- 40: event streams. Every event stored from now on gets a sequence number in commit order
-- (assigned inside the writing transaction, under SQLite's write lock or a PostgreSQL advisory
-- lock), so a stream's cursor is one number and nothing committed later can land behind it.
-- Events stored before this migration have none and are not streamed.
ALTER TABLE events ADD COLUMN seq BIGINT;
CREATE INDEX IF NOT EXISTS events_by_seq ON events (seq);
-- Per stream: the last sequence number it finished with (forwarded, dropped or dead-lettered),
-- and the last error that stopped it, committed with each batch.
CREATE TABLE IF NOT EXISTS stream_cursors (
    stream TEXT PRIMARY KEY,
    seq BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    error TEXT
);
-- Per stream, running totals (in, out, dropped by reason, retried), committed in the same
-- transaction as the cursor, so they count each event once whatever crashes.
CREATE TABLE IF NOT EXISTS stream_counters (
    stream TEXT NOT NULL,
    counter TEXT NOT NULL,
    value BIGINT NOT NULL,
    PRIMARY KEY (stream, counter)
);
