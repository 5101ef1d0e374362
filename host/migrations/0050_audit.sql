-- 50: the audit log: every state-changing action through the admin API or the console (who,
-- with which role, what, on what, when, and how it ended), refused attempts included
CREATE TABLE IF NOT EXISTS audit_log (
    id TEXT PRIMARY KEY,
    at BIGINT NOT NULL,
    actor TEXT NOT NULL,
    role TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    outcome TEXT NOT NULL,
    detail TEXT
);
CREATE INDEX IF NOT EXISTS audit_log_by_time ON audit_log (at, id);
