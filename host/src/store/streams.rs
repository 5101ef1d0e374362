//! Event streams' rows: events read by their commit-ordered sequence number, each stream's
//! cursor and counters (committed together, with the batch's dead letters), and what
//! `streams list` shows.

use std::collections::BTreeMap;

use super::{col, Backend, Conn, Result, Store};

/// PostgreSQL advisory lock (two-key form, a key space apart from the one-key identifier locks)
/// that event-writing transactions take just before numbering their events, so numbers are
/// handed out in commit order across hubs. Held until the transaction ends.
const SEQ_LOCK: (i32, i32) = (0x5357_5351, 1);

/// The highest sequence number stored, read inside the writing transaction. On SQLite the
/// transaction already holds the database's write lock, so no other writer can commit in
/// between; on PostgreSQL the advisory lock [`SEQ_LOCK`] makes event writers queue here until
/// the previous one commits (READ COMMITTED: the MAX then sees its rows). Either way a number
/// handed out later is committed later, which is what lets a stream's cursor be one number.
pub async fn next_seq(conn: &mut Conn, backend: Backend) -> Result<i64> {
    if backend == Backend::Postgres {
        sqlx::query("SELECT pg_advisory_xact_lock($1, $2)")
            .bind(SEQ_LOCK.0)
            .bind(SEQ_LOCK.1)
            .execute(&mut *conn)
            .await?;
    }
    let row = sqlx::query("SELECT COALESCE(MAX(seq), 0) AS seq FROM events")
        .fetch_one(&mut *conn)
        .await?;
    col(&row, "seq")
}

/// The newest sequence number committed (0 when none).
pub async fn last_seq(store: &Store) -> Result<i64> {
    let row = sqlx::query("SELECT COALESCE(MAX(seq), 0) AS seq FROM events")
        .fetch_one(store.pool())
        .await?;
    col(&row, "seq")
}

/// A stored event as a stream reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamEvent {
    pub seq: i64,
    pub message_id: String,
    pub profile_id: String,
    pub source: String,
    pub received_at: i64,
    pub body: String,
}

/// The columns a [`StreamEvent`] is read from.
const EVENT_COLUMNS: &str = "seq, message_id, profile_id, source, received_at, body";

/// A [`StreamEvent`] from a row of [`EVENT_COLUMNS`], of the pool's driver (`Any`) or of a
/// reader's own SQLite connection.
fn stream_event<'r, R>(r: &'r R) -> Result<StreamEvent>
where
    R: sqlx::Row,
    &'static str: sqlx::ColumnIndex<R>,
    i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    Ok(StreamEvent {
        seq: r.try_get("seq")?,
        message_id: r.try_get("message_id")?,
        profile_id: r.try_get("profile_id")?,
        source: r.try_get("source")?,
        received_at: r.try_get("received_at")?,
        body: r.try_get("body")?,
    })
}

/// The query a stream reads its pages with ([`EVENT_COLUMNS`], written out: a `const` cannot
/// be put together from another).
const PAGE_QUERY: &str =
    "SELECT seq, message_id, profile_id, source, received_at, body FROM events WHERE seq > $1 ORDER BY seq LIMIT $2";

/// Up to `limit` events numbered after `after`, in commit order.
pub async fn events_after(store: &Store, after: i64, limit: i64) -> Result<Vec<StreamEvent>> {
    let rows = sqlx::query(PAGE_QUERY)
        .bind(after)
        .bind(limit)
        .fetch_all(store.pool())
        .await?;
    rows.iter().map(stream_event).collect()
}

/// Where a running stream reads its pages. On a SQLite file, a read-only connection of its
/// own: its statements run on the connection's thread, which the stream can then run at its
/// own (idle) priority ([`EventReader::open`]) rather than take a thread of the pool the
/// tracking API commits through; its rows come back in one hand-over per page rather than
/// 50 at a time, without the `Any` driver's copy of each value. On PostgreSQL (whose server
/// does the work) and in-memory databases, the store's pool.
pub struct EventReader {
    source: Source,
}

enum Source {
    /// Boxed: a store is several times the size of a connection.
    Pool(Box<Store>),
    Own(sqlx::SqliteConnection),
}

impl EventReader {
    /// A reader for pages of up to `page` events. `on_thread` runs once on the thread the
    /// reader's statements run on, and what it returns comes back: on SQLite that is the
    /// connection's own thread, so the caller can set its priority (None where the reader
    /// uses the pool).
    pub async fn open<T: Send + 'static>(
        store: &Store,
        page: usize,
        on_thread: impl FnOnce() -> T + Send + 'static,
    ) -> Result<(EventReader, Option<T>)> {
        use sqlx::ConnectOptions;
        let Some(options) = &store.own_connection else {
            return Ok((
                EventReader {
                    source: Source::Pool(Box::new(store.clone())),
                },
                None,
            ));
        };
        let mut conn = options
            .clone()
            .row_buffer_size(page.max(1))
            .thread_name(|n| format!("stream-read-{n}"))
            .connect()
            .await?;
        // SQLite calls a progress handler from inside a statement, so on the thread that
        // runs it.
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let mut on_thread = Some(on_thread);
        conn.lock_handle().await?.set_progress_handler(1, move || {
            if let Some(f) = on_thread.take() {
                let _ = tx.try_send(f());
            }
            true
        });
        sqlx::query("SELECT COUNT(*) FROM (SELECT 1 UNION ALL SELECT 2)")
            .fetch_one(&mut conn)
            .await?;
        conn.lock_handle().await?.remove_progress_handler();
        let noted = rx.try_recv().map_err(|_| {
            anyhow::anyhow!("SQLite did not call the progress handler of a stream's reader")
        })?;
        Ok((
            EventReader {
                source: Source::Own(conn),
            },
            Some(noted),
        ))
    }

    /// Up to `limit` events numbered after `after`, in commit order.
    pub async fn after(&mut self, after: i64, limit: i64) -> Result<Vec<StreamEvent>> {
        match &mut self.source {
            Source::Pool(store) => events_after(store, after, limit).await,
            Source::Own(conn) => {
                let rows = sqlx::query(PAGE_QUERY)
                    .bind(after)
                    .bind(limit)
                    .fetch_all(&mut *conn)
                    .await?;
                rows.iter().map(stream_event).collect()
            }
        }
    }
}

/// When the oldest event after `after` was received (None when the stream is caught up).
pub async fn oldest_after(store: &Store, after: i64) -> Result<Option<i64>> {
    let row = sqlx::query("SELECT received_at FROM events WHERE seq > $1 ORDER BY seq LIMIT 1")
        .bind(after)
        .fetch_optional(store.pool())
        .await?;
    row.map(|r| col(&r, "received_at")).transpose()
}

/// A stream's stored position.
#[derive(Debug, Clone)]
pub struct CursorRow {
    pub seq: i64,
    pub updated_at: i64,
    pub error: Option<String>,
}

pub async fn cursor(store: &Store, stream: &str) -> Result<Option<CursorRow>> {
    let row = sqlx::query("SELECT seq, updated_at, error FROM stream_cursors WHERE stream = $1")
        .bind(stream)
        .fetch_optional(store.pool())
        .await?;
    row.map(|r| {
        Ok(CursorRow {
            seq: col(&r, "seq")?,
            updated_at: col(&r, "updated_at")?,
            error: col(&r, "error")?,
        })
    })
    .transpose()
}

/// Creates a stream's cursor at `seq` unless it has one; the stored position either way.
pub async fn init_cursor(store: &Store, stream: &str, seq: i64, now: i64) -> Result<i64> {
    sqlx::query(
        "INSERT INTO stream_cursors (stream, seq, updated_at) VALUES ($1, $2, $3) \
         ON CONFLICT (stream) DO NOTHING",
    )
    .bind(stream)
    .bind(seq)
    .bind(now)
    .execute(store.pool())
    .await?;
    Ok(cursor(store, stream).await?.map(|c| c.seq).unwrap_or(seq))
}

/// Records (or clears, with None) the error that stops a stream, for `streams list`.
pub async fn set_error(store: &Store, stream: &str, error: Option<&str>, now: i64) -> Result<()> {
    sqlx::query("UPDATE stream_cursors SET error = $1, updated_at = $2 WHERE stream = $3")
        .bind(error)
        .bind(now)
        .bind(stream)
        .execute(store.pool())
        .await?;
    Ok(())
}

/// Events by message id, in commit order (those no longer stored — erased, or past retention
/// — are not there).
pub async fn events_by_id(store: &Store, ids: &[String]) -> Result<Vec<StreamEvent>> {
    let mut out = Vec::with_capacity(ids.len());
    for chunk in ids.chunks(500) {
        let text = format!(
            "SELECT {EVENT_COLUMNS} FROM events WHERE message_id IN ({})",
            (1..=chunk.len())
                .map(|n| store.param(n))
                .collect::<Vec<_>>()
                .join(",")
        );
        let mut q = sqlx::query(&text);
        for id in chunk {
            q = q.bind(id);
        }
        for r in q.fetch_all(store.pool()).await? {
            out.push(stream_event(&r)?);
        }
    }
    out.sort_by_key(|e| e.seq);
    Ok(out)
}

/// How a stream's dead letter came to be, in its `action` column.
pub mod letter_kind {
    /// The destination refused the mapped record (or it ran out of attempts): `fields` is the
    /// record as sent, `key` the message id (`MESSAGE_ID#N` for a transform's Nth copy).
    pub const RECORD: &str = "track";
    /// A transform failed on the message for good: `fields` is the message as that chain got
    /// it, `key` the message id.
    pub const TRANSFORM: &str = "transform";
}

/// A stream dead letter not yet replayed.
#[derive(Debug, Clone)]
pub struct PendingLetter {
    pub id: String,
    pub key: String,
    /// One of [`letter_kind`].
    pub kind: String,
}

/// Every dead letter of `dead_letter_name` (`stream:NAME`) not yet replayed, oldest first.
pub async fn pending_letters(store: &Store, dead_letter_name: &str) -> Result<Vec<PendingLetter>> {
    let rows = sqlx::query(
        "SELECT id, key, action FROM dead_letters WHERE sync = $1 AND replayed_at IS NULL ORDER BY at, id",
    )
    .bind(dead_letter_name)
    .fetch_all(store.pool())
    .await?;
    rows.iter()
        .map(|r| {
            Ok(PendingLetter {
                id: col(r, "id")?,
                key: col(r, "key")?,
                kind: col(r, "action")?,
            })
        })
        .collect()
}

/// A record a stream gave up on.
pub struct DeadEvent<'a> {
    /// One of [`letter_kind`].
    pub kind: &'a str,
    pub key: &'a str,
    pub hash: &'a str,
    pub fields: &'a str,
    pub attempts: i64,
    pub reason: &'a str,
}

/// What one finished batch of a stream commits, in one transaction: the new cursor (a live
/// batch) or the dead letters it sent again (a replay's), counter increments, and the dead
/// letters (stored under `dead_letter_name`, `stream:NAME`).
pub struct BatchCommit<'a> {
    pub stream: &'a str,
    pub dead_letter_name: &'a str,
    /// The cursor through this batch; None for a replay, which does not move it.
    pub seq: Option<i64>,
    /// Dead letters (ids) this batch replayed: marked replayed in the same transaction.
    pub replayed: &'a [String],
    pub counters: &'a [(String, i64)],
    pub dead: Vec<DeadEvent<'a>>,
}

/// Relaxed durability ([`Store::begin_write_relaxed`]): a power cut may take the last
/// batches' cursors back, and the stream re-sends them (at least once); a process crash,
/// SIGKILL included, loses nothing committed.
pub async fn commit_batch(store: &Store, batch: &BatchCommit<'_>, now: i64) -> Result<()> {
    let _turn = store.write_turn().await;
    let mut tx = store.begin_write_relaxed().await?;
    for dead in &batch.dead {
        sqlx::query(
            "INSERT INTO dead_letters (id, sync, key, action, hash, fields, attempts, error, at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(uuid::Uuid::new_v4().to_string())
        .bind(batch.dead_letter_name)
        .bind(dead.key)
        .bind(dead.kind)
        .bind(dead.hash)
        .bind(dead.fields)
        .bind(dead.attempts)
        .bind(dead.reason)
        .bind(now)
        .execute(&mut *tx)
        .await?;
    }
    // One statement for all of them: this transaction holds the write turn the tracking
    // API's group commit waits for, and each statement is a round trip to the connection's
    // thread. Summed by name first: PostgreSQL refuses an upsert that meets a row twice.
    let mut totals: BTreeMap<&str, i64> = BTreeMap::new();
    for (counter, by) in batch.counters.iter().filter(|(_, by)| *by != 0) {
        *totals.entry(counter.as_str()).or_default() += by;
    }
    if !totals.is_empty() {
        let sql = format!(
            "INSERT INTO stream_counters (stream, counter, value) VALUES {} \
             ON CONFLICT (stream, counter) DO UPDATE SET value = stream_counters.value + excluded.value",
            store.value_groups(1, totals.len(), 3)
        );
        let mut q = sqlx::query(&sql);
        for (counter, by) in &totals {
            q = q.bind(batch.stream).bind(*counter).bind(*by);
        }
        q.execute(&mut *tx).await?;
    }
    for id in batch.replayed {
        sqlx::query(
            "UPDATE dead_letters SET replayed_at = $1 WHERE id = $2 AND replayed_at IS NULL",
        )
        .bind(now)
        .bind(id)
        .execute(&mut *tx)
        .await?;
    }
    if let Some(seq) = batch.seq {
        sqlx::query(
            "INSERT INTO stream_cursors (stream, seq, updated_at, error) VALUES ($1, $2, $3, NULL) \
             ON CONFLICT (stream) DO UPDATE SET seq = excluded.seq, updated_at = excluded.updated_at, error = NULL",
        )
        .bind(batch.stream)
        .bind(seq)
        .bind(now)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// A stream's running totals, by counter name.
pub async fn counters(store: &Store, stream: &str) -> Result<BTreeMap<String, i64>> {
    let rows = sqlx::query("SELECT counter, value FROM stream_counters WHERE stream = $1")
        .bind(stream)
        .fetch_all(store.pool())
        .await?;
    rows.iter()
        .map(|r| Ok((col(r, "counter")?, col(r, "value")?)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn store_with_events(url: &str, n: i64) -> Store {
        let store = Store::open(url).await.unwrap();
        for seq in 1..=n {
            sqlx::query(
                "INSERT INTO events (message_id, profile_id, source, kind, name, ts, received_at, body, seq) \
                 VALUES ($1, 'p1', 'web', 'track', 'Clicked', $2, $2, $3, $2)",
            )
            .bind(format!("m{seq}"))
            .bind(seq)
            .bind(format!(r#"{{"type":"track","n":{seq}}}"#))
            .execute(store.pool())
            .await
            .unwrap();
        }
        store
    }

    /// On a SQLite file the reader reads on a thread of its own (which it names, so its
    /// priority can be set), reads what the pool reads, and cannot write.
    #[tokio::test]
    async fn a_reader_reads_the_pages_the_pool_reads_on_its_own_thread() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/r.db", dir.path().display());
        let store = store_with_events(&url, 5).await;
        let here = std::thread::current().id();
        let (mut reader, on) = EventReader::open(&store, 3, move || {
            let t = std::thread::current();
            (t.id(), t.name().map(str::to_string))
        })
        .await
        .unwrap();
        let (thread, name) = on.expect("a file store's reader has a thread of its own");
        assert_ne!(thread, here);
        assert!(name.unwrap_or_default().starts_with("stream-read-"));
        let seqs = |page: &[StreamEvent]| page.iter().map(|e| e.seq).collect::<Vec<_>>();
        let page = reader.after(1, 3).await.unwrap();
        assert_eq!(seqs(&page), [2, 3, 4]);
        let pooled = events_after(&store, 1, 3).await.unwrap();
        assert_eq!(page, pooled);
        assert_eq!(seqs(&reader.after(4, 3).await.unwrap()), [5]);
        assert!(reader.after(5, 3).await.unwrap().is_empty());
        // Reads only.
        let mut own = match reader.source {
            Source::Own(conn) => conn,
            Source::Pool(_) => unreachable!(),
        };
        assert!(sqlx::query("DELETE FROM events")
            .execute(&mut own)
            .await
            .is_err());
    }
}
