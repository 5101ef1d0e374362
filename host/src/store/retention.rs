//! Event retention: deleting events older than `[hub] event_retention`, a bounded batch per
//! statement so a large purge never holds the write lock (SQLite) or a long transaction
//! (PostgreSQL) for long.

use super::{Result, Store};

/// Deletes up to `limit` events whose own timestamp is before `before` (Unix ms), oldest
/// first; returns how many went.
pub async fn purge_events_before(store: &Store, before: i64, limit: i64) -> Result<u64> {
    let done = sqlx::query(
        "DELETE FROM events WHERE message_id IN \
         (SELECT message_id FROM events WHERE ts < $1 ORDER BY ts LIMIT $2)",
    )
    .bind(before)
    .bind(limit)
    .execute(store.pool())
    .await?;
    Ok(done.rows_affected())
}

/// An event row with only what retention reads, for tests of the purge outside `store/`.
#[cfg(test)]
pub(crate) async fn insert_bare_event(
    store: &Store,
    message_id: &str,
    ts: i64,
    received_at: i64,
) -> Result<()> {
    sqlx::query("INSERT INTO events (message_id, profile_id, source, kind, name, ts, received_at, body) VALUES ($1, 'p', 's', 'track', 'e', $2, $3, '{}')")
        .bind(message_id)
        .bind(ts)
        .bind(received_at)
        .execute(store.pool())
        .await?;
    Ok(())
}
