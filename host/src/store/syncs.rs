//! The sync tables: `sync_records` (what each destination acknowledged), `sync_removed` (when
//! it last acknowledged a key's removal), `sync_runs` (history and counters), `dead_letters`,
//! `sync_meta` (last complete run) and `sync_cursors` (events).

use std::collections::{HashMap, HashSet};

use super::profiles::{Population, CHUNK};
use super::{col, Result, Store};

/// One run's history row.
#[derive(Debug, Clone)]
pub struct RunRow {
    pub id: String,
    pub sync: String,
    pub status: String,
    pub dry_run: bool,
    pub full_resync: bool,
    pub started_at: i64,
    pub finished_at: Option<i64>,
    pub planned_adds: i64,
    pub planned_changes: i64,
    pub planned_removals: i64,
    pub sent: i64,
    pub succeeded: i64,
    pub retried: i64,
    pub rejected: i64,
    pub dead_lettered: i64,
    /// Records and events held back because the profile lacks a consent the destination needs.
    pub withheld: i64,
    pub error: Option<String>,
}

/// Records a run as started (`running`).
pub async fn start_run(
    store: &Store,
    run_id: &str,
    sync: &str,
    started_at: i64,
    full_resync: bool,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO sync_runs (id, sync, status, started_at, dry_run, full_resync, planned_adds, planned_changes, planned_removals, sent, succeeded, retried, rejected, dead_lettered) \
         VALUES ($1, $2, 'running', $3, 0, $4, 0, 0, 0, 0, 0, 0, 0, 0)",
    )
    .bind(run_id)
    .bind(sync)
    .bind(started_at)
    .bind(full_resync as i64)
    .execute(store.pool())
    .await?;
    Ok(())
}

/// What a finished run planned, in the history.
pub struct Planned {
    pub adds: i64,
    pub changes: i64,
    pub removals: i64,
    /// Held back for lack of consent.
    pub withheld: i64,
}

/// Records what a run planned (its delivery counters were committed batch by batch; how it
/// ended is [`super::runs::finish_run`]).
pub async fn save_planned(store: &Store, run_id: &str, planned: &Planned) -> Result<()> {
    sqlx::query(
        "UPDATE sync_runs SET planned_adds = $1, planned_changes = $2, planned_removals = $3, withheld = $4 WHERE id = $5",
    )
    .bind(planned.adds)
    .bind(planned.changes)
    .bind(planned.removals)
    .bind(planned.withheld)
    .bind(run_id)
    .execute(store.pool())
    .await?;
    Ok(())
}

/// The newest runs of a sync, newest first.
pub async fn runs(store: &Store, sync: &str, limit: i64) -> Result<Vec<RunRow>> {
    let rows = sqlx::query(
        "SELECT id, sync, status, dry_run, full_resync, started_at, finished_at, planned_adds, planned_changes, planned_removals, \
         sent, succeeded, retried, rejected, dead_lettered, withheld, error FROM sync_runs WHERE sync = $1 ORDER BY started_at DESC, id LIMIT $2",
    )
    .bind(sync)
    .bind(limit)
    .fetch_all(store.pool())
    .await?;
    rows.iter()
        .map(|r| {
            Ok(RunRow {
                id: col(r, "id")?,
                sync: col(r, "sync")?,
                status: col(r, "status")?,
                dry_run: col::<i64>(r, "dry_run")? != 0,
                full_resync: col::<i64>(r, "full_resync")? != 0,
                started_at: col(r, "started_at")?,
                finished_at: col(r, "finished_at")?,
                planned_adds: col(r, "planned_adds")?,
                planned_changes: col(r, "planned_changes")?,
                planned_removals: col(r, "planned_removals")?,
                sent: col(r, "sent")?,
                succeeded: col(r, "succeeded")?,
                retried: col(r, "retried")?,
                rejected: col(r, "rejected")?,
                dead_lettered: col(r, "dead_lettered")?,
                withheld: col(r, "withheld")?,
                error: col(r, "error")?,
            })
        })
        .collect()
}

/// A dead letter's row.
#[derive(Debug, Clone)]
pub struct DeadLetterRow {
    pub id: String,
    pub sync: String,
    pub key: String,
    pub action: String,
    pub fields: String,
    pub attempts: i64,
    pub error: String,
    pub at: i64,
    pub replayed_at: Option<i64>,
}

/// Dead letters not yet replayed, of one sync or all, oldest first.
pub async fn dead_letters(
    store: &Store,
    sync: Option<&str>,
    limit: i64,
) -> Result<Vec<DeadLetterRow>> {
    // Two statements rather than `($1 = '' OR sync = $1)`, which no index can serve: one
    // sync's letters come from the (sync, replayed_at, at, id) index already in order.
    let columns = "id, sync, key, action, fields, attempts, error, at, replayed_at";
    let one = format!(
        "SELECT {columns} FROM dead_letters WHERE sync = $1 AND replayed_at IS NULL ORDER BY at, id LIMIT $2"
    );
    let all = format!(
        "SELECT {columns} FROM dead_letters WHERE replayed_at IS NULL ORDER BY at, id LIMIT $1"
    );
    let rows = match sync {
        Some(sync) => sqlx::query(&one).bind(sync),
        None => sqlx::query(&all),
    }
    .bind(limit)
    .fetch_all(store.pool())
    .await?;
    rows.iter()
        .map(|r| {
            Ok(DeadLetterRow {
                id: col(r, "id")?,
                sync: col(r, "sync")?,
                key: col(r, "key")?,
                action: col(r, "action")?,
                fields: col(r, "fields")?,
                attempts: col(r, "attempts")?,
                error: col(r, "error")?,
                at: col(r, "at")?,
                replayed_at: col(r, "replayed_at")?,
            })
        })
        .collect()
}

/// How many of a sync's dead letters are not yet replayed (a range of the pending index).
pub async fn pending_dead_letters(store: &Store, sync: &str) -> Result<i64> {
    let row = sqlx::query(
        "SELECT COUNT(*) AS n FROM dead_letters WHERE sync = $1 AND replayed_at IS NULL",
    )
    .bind(sync)
    .fetch_one(store.pool())
    .await?;
    col(&row, "n")
}

/// Marks a sync's dead letters replayed and forgets its last complete run (so the next run
/// compares in full); how many were marked.
pub async fn replay(store: &Store, sync: &str, now: i64) -> Result<u64> {
    let n = sqlx::query(
        "UPDATE dead_letters SET replayed_at = $1 WHERE sync = $2 AND replayed_at IS NULL",
    )
    .bind(now)
    .bind(sync)
    .execute(store.pool())
    .await?
    .rows_affected();
    sqlx::query("DELETE FROM sync_meta WHERE sync = $1")
        .bind(sync)
        .execute(store.pool())
        .await?;
    Ok(n)
}

/// The fingerprint of the sync's last complete run and when that run started.
pub async fn meta(store: &Store, sync: &str) -> Result<Option<(String, i64)>> {
    let row = sqlx::query("SELECT fingerprint, complete_started_at FROM sync_meta WHERE sync = $1")
        .bind(sync)
        .fetch_optional(store.pool())
        .await?;
    row.map(|r| Ok((col(&r, "fingerprint")?, col(&r, "complete_started_at")?)))
        .transpose()
}

/// Records a complete run's fingerprint and start.
pub async fn save_meta(
    store: &Store,
    sync: &str,
    fingerprint: &str,
    started_at: i64,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO sync_meta (sync, fingerprint, complete_started_at) VALUES ($1, $2, $3) \
         ON CONFLICT (sync) DO UPDATE SET fingerprint = excluded.fingerprint, complete_started_at = excluded.complete_started_at",
    )
    .bind(sync)
    .bind(fingerprint)
    .bind(started_at)
    .execute(store.pool())
    .await?;
    Ok(())
}

/// How many records the destination holds for this sync.
pub async fn record_count(store: &Store, sync: &str) -> Result<i64> {
    let row = sqlx::query("SELECT COUNT(*) AS n FROM sync_records WHERE sync = $1")
        .bind(sync)
        .fetch_one(store.pool())
        .await?;
    col(&row, "n")
}

/// (key, hash) of the sync's dead letters not yet replayed.
pub async fn parked(store: &Store, sync: &str) -> Result<HashSet<(String, String)>> {
    let rows =
        sqlx::query("SELECT key, hash FROM dead_letters WHERE sync = $1 AND replayed_at IS NULL")
            .bind(sync)
            .fetch_all(store.pool())
            .await?;
    rows.iter()
        .map(|r| Ok((col(r, "key")?, col(r, "hash")?)))
        .collect()
}

/// An acknowledged record: key, payload hash, payload, when acknowledged.
#[derive(Debug, Clone)]
pub struct AckedRow {
    pub key: String,
    pub hash: String,
    pub fields: String,
    pub acked_at: i64,
}

/// Acknowledged records the model no longer has, by key: those of profiles gone (merged away
/// or erased), or with `members_of`, those that are not members of that audience.
pub async fn removal_candidates(
    store: &Store,
    sync: &str,
    members_of: Option<&str>,
) -> Result<Vec<AckedRow>> {
    let rows = match members_of {
        Some(audience) => {
            sqlx::query(
                "SELECT key, hash, fields, acked_at FROM sync_records r WHERE r.sync = $1 \
                 AND NOT EXISTS (SELECT 1 FROM audience_members m WHERE m.audience = $2 AND m.profile_id = r.key) ORDER BY r.key",
            )
            .bind(sync)
            .bind(audience)
            .fetch_all(store.pool())
            .await?
        }
        None => {
            sqlx::query(
                "SELECT key, hash, fields, acked_at FROM sync_records r WHERE r.sync = $1 \
                 AND NOT EXISTS (SELECT 1 FROM profiles p WHERE p.id = r.key) ORDER BY r.key",
            )
            .bind(sync)
            .fetch_all(store.pool())
            .await?
        }
    };
    rows.iter()
        .map(|r| {
            Ok(AckedRow {
                key: col(r, "key")?,
                hash: col(r, "hash")?,
                fields: col(r, "fields")?,
                acked_at: col(r, "acked_at")?,
            })
        })
        .collect()
}

/// Profiles of the population the destination holds nothing of.
pub async fn missing(store: &Store, sync: &str, population: &Population) -> Result<Vec<String>> {
    let rows = match population {
        Population::All => {
            sqlx::query(
                "SELECT p.id AS id FROM profiles p WHERE NOT EXISTS (SELECT 1 FROM sync_records r WHERE r.sync = $1 AND r.key = p.id)",
            )
            .bind(sync)
            .fetch_all(store.pool())
            .await?
        }
        Population::Audience(a) => {
            sqlx::query(
                "SELECT m.profile_id AS id FROM audience_members m WHERE m.audience = $2 \
                 AND NOT EXISTS (SELECT 1 FROM sync_records r WHERE r.sync = $1 AND r.key = m.profile_id)",
            )
            .bind(sync)
            .bind(a)
            .fetch_all(store.pool())
            .await?
        }
    };
    rows.iter().map(|r| col(r, "id")).collect()
}

/// The acknowledged payload hashes of these keys.
pub async fn acked_hashes(
    store: &Store,
    sync: &str,
    keys: &[String],
) -> Result<HashMap<String, String>> {
    let mut found = HashMap::with_capacity(keys.len());
    for chunk in keys.chunks(CHUNK) {
        let sql = format!(
            "SELECT key, hash FROM sync_records WHERE sync = {} AND key IN {}",
            store.param(1),
            store.value_groups(2, 1, chunk.len())
        );
        let mut q = sqlx::query(&sql).bind(sync);
        for k in chunk {
            q = q.bind(k);
        }
        for row in q.fetch_all(store.pool()).await? {
            found.insert(col(&row, "key")?, col(&row, "hash")?);
        }
    }
    Ok(found)
}

/// What the destination acknowledged of a key, as a run diffs against it.
#[derive(Debug, Clone, PartialEq)]
pub struct Acked {
    pub hash: String,
    pub acked_at: i64,
    /// The acknowledged payload, when asked for (to tell a changed key field).
    pub fields: Option<String>,
}

/// The acknowledged state of these keys; with `with_fields`, their payloads too.
pub async fn acked_state(
    store: &Store,
    sync: &str,
    keys: &[String],
    with_fields: bool,
) -> Result<HashMap<String, Acked>> {
    let mut found = HashMap::with_capacity(keys.len());
    let columns = if with_fields {
        "key, hash, acked_at, fields"
    } else {
        "key, hash, acked_at"
    };
    for chunk in keys.chunks(CHUNK) {
        let sql = format!(
            "SELECT {columns} FROM sync_records WHERE sync = {} AND key IN {}",
            store.param(1),
            store.value_groups(2, 1, chunk.len())
        );
        let mut q = sqlx::query(&sql).bind(sync);
        for k in chunk {
            q = q.bind(k);
        }
        for row in q.fetch_all(store.pool()).await? {
            found.insert(
                col(&row, "key")?,
                Acked {
                    hash: col(&row, "hash")?,
                    acked_at: col(&row, "acked_at")?,
                    fields: if with_fields {
                        Some(col(&row, "fields")?)
                    } else {
                        None
                    },
                },
            );
        }
    }
    Ok(found)
}

/// When the destination last acknowledged the removal of each of these keys (those it did).
pub async fn removed_at(
    store: &Store,
    sync: &str,
    keys: &[String],
) -> Result<HashMap<String, i64>> {
    let mut found = HashMap::new();
    for chunk in keys.chunks(CHUNK) {
        let sql = format!(
            "SELECT key, removed_at FROM sync_removed WHERE sync = {} AND key IN {}",
            store.param(1),
            store.value_groups(2, 1, chunk.len())
        );
        let mut q = sqlx::query(&sql).bind(sync);
        for k in chunk {
            q = q.bind(k);
        }
        for row in q.fetch_all(store.pool()).await? {
            found.insert(col(&row, "key")?, col(&row, "removed_at")?);
        }
    }
    Ok(found)
}

/// Which of these keys the destination acknowledged.
pub async fn acked_keys(store: &Store, sync: &str, keys: &[String]) -> Result<HashSet<String>> {
    Ok(acked_hashes(store, sync, keys).await?.into_keys().collect())
}

/// Where an events sync stopped: (received_at, message_id) of the last event handled.
pub async fn event_cursor(store: &Store, sync: &str) -> Result<Option<(i64, String)>> {
    let row = sqlx::query("SELECT received_at, message_id FROM sync_cursors WHERE sync = $1")
        .bind(sync)
        .fetch_optional(store.pool())
        .await?;
    row.map(|r| Ok((col(&r, "received_at")?, col(&r, "message_id")?)))
        .transpose()
}

/// Moves an events sync's cursor.
pub async fn save_event_cursor(
    store: &Store,
    sync: &str,
    received_at: i64,
    message_id: &str,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO sync_cursors (sync, received_at, message_id) VALUES ($1, $2, $3) \
         ON CONFLICT (sync) DO UPDATE SET received_at = excluded.received_at, message_id = excluded.message_id",
    )
    .bind(sync)
    .bind(received_at)
    .bind(message_id)
    .execute(store.pool())
    .await?;
    Ok(())
}

/// A tracked event as an events sync reads it.
#[derive(Debug, Clone)]
pub struct EventRow {
    pub message_id: String,
    pub profile_id: String,
    pub received_at: i64,
    pub body: String,
}

/// Up to `limit` track events named `name` received after `(at, last_id)` and before
/// `horizon`, in the order received.
pub async fn events_after(
    store: &Store,
    name: &str,
    after: (i64, &str),
    horizon: i64,
    limit: i64,
) -> Result<Vec<EventRow>> {
    let rows = sqlx::query(
        "SELECT message_id, profile_id, received_at, body FROM events WHERE kind = 'track' AND name = $1 \
         AND (received_at > $2 OR (received_at = $2 AND message_id > $3)) AND received_at < $4 \
         ORDER BY received_at, message_id LIMIT $5",
    )
    .bind(name)
    .bind(after.0)
    .bind(after.1)
    .bind(horizon)
    .bind(limit)
    .fetch_all(store.pool())
    .await?;
    rows.iter()
        .map(|r| {
            Ok(EventRow {
                message_id: col(r, "message_id")?,
                profile_id: col(r, "profile_id")?,
                received_at: col(r, "received_at")?,
                body: col(r, "body")?,
            })
        })
        .collect()
}

/// A record given up on, for the dead-letter store.
pub struct DeadRow<'a> {
    pub key: &'a str,
    pub hash: &'a str,
    pub fields: &'a str,
    pub attempts: i64,
    pub reason: &'a str,
}

/// A run's delivery counters so far.
pub struct Counters {
    pub sent: i64,
    pub succeeded: i64,
    pub retried: i64,
    pub rejected: i64,
    pub dead_lettered: i64,
}

/// One batch's outcome: what the destination acknowledged (`action` `delete` removes the
/// records, anything else stores them with their payload), what went to the dead-letter store.
pub struct BatchOutcome<'a> {
    pub action: &'a str,
    pub acked: Vec<AckedRef<'a>>,
    pub dead: Vec<DeadRow<'a>>,
    pub counters: Counters,
}

/// An acknowledged record, borrowed.
pub struct AckedRef<'a> {
    pub key: &'a str,
    pub hash: &'a str,
    pub fields: &'a str,
}

/// Commits a batch's outcome: the acknowledged state, dead letters, and the run's counters,
/// in one transaction.
pub async fn commit_batch(
    store: &Store,
    sync: &str,
    run_id: &str,
    batch: &BatchOutcome<'_>,
    now: i64,
) -> Result<()> {
    let mut tx = store.begin().await?;
    // Multi-row statements: one per 200 records instead of one per record.
    for chunk in batch.acked.chunks(200) {
        if batch.action == "delete" || batch.action == "erase" {
            let sql = format!(
                "DELETE FROM sync_records WHERE sync = {} AND key IN {}",
                store.param(1),
                store.value_groups(2, 1, chunk.len())
            );
            let mut q = sqlx::query(&sql).bind(sync);
            for item in chunk {
                q = q.bind(item.key);
            }
            q.execute(&mut *tx).await?;
            // Remembered so that a later re-add of the key gets a new delivery id.
            let sql = format!(
                "INSERT INTO sync_removed (sync, key, removed_at) VALUES {} \
                 ON CONFLICT (sync, key) DO UPDATE SET removed_at = excluded.removed_at",
                store.value_groups(1, chunk.len(), 3)
            );
            let mut q = sqlx::query(&sql);
            for item in chunk {
                q = q.bind(sync).bind(item.key).bind(now);
            }
            q.execute(&mut *tx).await?;
        } else {
            let sql = format!(
                "INSERT INTO sync_records (sync, key, hash, fields, acked_at) VALUES {} \
                 ON CONFLICT (sync, key) DO UPDATE SET hash = excluded.hash, fields = excluded.fields, acked_at = excluded.acked_at",
                store.value_groups(1, chunk.len(), 5)
            );
            let mut q = sqlx::query(&sql);
            for item in chunk {
                q = q
                    .bind(sync)
                    .bind(item.key)
                    .bind(item.hash)
                    .bind(item.fields)
                    .bind(now);
            }
            q.execute(&mut *tx).await?;
        }
    }
    for dead in &batch.dead {
        sqlx::query(
            "INSERT INTO dead_letters (id, sync, key, action, hash, fields, attempts, error, at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(uuid::Uuid::new_v4().to_string())
        .bind(sync)
        .bind(dead.key)
        .bind(batch.action)
        .bind(dead.hash)
        .bind(dead.fields)
        .bind(dead.attempts)
        .bind(dead.reason)
        .bind(now)
        .execute(&mut *tx)
        .await?;
    }
    let c = &batch.counters;
    sqlx::query("UPDATE sync_runs SET sent = $1, succeeded = $2, retried = $3, rejected = $4, dead_lettered = $5 WHERE id = $6")
        .bind(c.sent)
        .bind(c.succeeded)
        .bind(c.retried)
        .bind(c.rejected)
        .bind(c.dead_lettered)
        .bind(run_id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}
