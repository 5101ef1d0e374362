-- 30: when each sync last removed a key from its destination. A record's delivery id derives
-- from the acknowledged state it changes (see host/src/sync/delivery_id.rs); once a delete is
-- acknowledged the key's `sync_records` row is gone, and this row keeps a re-added record from
-- reusing the id of the key's very first add.
CREATE TABLE IF NOT EXISTS sync_removed (
    sync TEXT NOT NULL,
    key TEXT NOT NULL,
    removed_at BIGINT NOT NULL,
    PRIMARY KEY (sync, key)
);
