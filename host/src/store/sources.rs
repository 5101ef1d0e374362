//! The source tables: `source_runs` (history and counters), `source_cursors` (per stream,
//! committed with each page) and `source_deliveries` (webhook deliveries already applied).

use super::{col, Backend, Conn, Result, Store, Tx};

/// One run's history row.
#[derive(Debug, Clone)]
pub struct RunRow {
    pub id: String,
    pub source: String,
    pub status: String,
    pub full_refresh: bool,
    pub started_at: i64,
    pub finished_at: Option<i64>,
    pub pages: i64,
    pub records: i64,
    pub events: i64,
    pub retries: i64,
    pub error: Option<String>,
}

/// Records a run as started (`running`).
pub async fn start_run(
    store: &Store,
    run_id: &str,
    source: &str,
    started_at: i64,
    full_refresh: bool,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO source_runs (id, source, status, started_at, full_refresh, pages, records, events, retries) \
         VALUES ($1, $2, 'running', $3, $4, 0, 0, 0, 0)",
    )
    .bind(run_id)
    .bind(source)
    .bind(started_at)
    .bind(full_refresh as i64)
    .execute(store.pool())
    .await?;
    Ok(())
}

/// The newest runs of a source, newest first.
pub async fn runs(store: &Store, source: &str, limit: i64) -> Result<Vec<RunRow>> {
    let rows = sqlx::query(
        "SELECT id, source, status, full_refresh, started_at, finished_at, pages, records, events, retries, error \
         FROM source_runs WHERE source = $1 ORDER BY started_at DESC, id LIMIT $2",
    )
    .bind(source)
    .bind(limit)
    .fetch_all(store.pool())
    .await?;
    rows.iter()
        .map(|r| {
            Ok(RunRow {
                id: col(r, "id")?,
                source: col(r, "source")?,
                status: col(r, "status")?,
                full_refresh: col::<i64>(r, "full_refresh")? != 0,
                started_at: col(r, "started_at")?,
                finished_at: col(r, "finished_at")?,
                pages: col(r, "pages")?,
                records: col(r, "records")?,
                events: col(r, "events")?,
                retries: col(r, "retries")?,
                error: col(r, "error")?,
            })
        })
        .collect()
}

/// Counts a retried read in the run's row.
pub async fn count_retry(store: &Store, run_id: &str) -> Result<()> {
    sqlx::query("UPDATE source_runs SET retries = retries + 1 WHERE id = $1")
        .bind(run_id)
        .execute(store.pool())
        .await?;
    Ok(())
}

/// The stored cursor of each stream of a source: (stream, cursor, done).
pub async fn cursors(store: &Store, source: &str) -> Result<Vec<(String, Option<String>, bool)>> {
    let rows = sqlx::query(
        "SELECT stream, cursor, done FROM source_cursors WHERE source = $1 ORDER BY stream",
    )
    .bind(source)
    .fetch_all(store.pool())
    .await?;
    rows.iter()
        .map(|r| {
            Ok((
                col(r, "stream")?,
                col(r, "cursor")?,
                col::<i64>(r, "done")? != 0,
            ))
        })
        .collect()
}

/// Where a stream's next read starts (None: from the beginning).
pub async fn cursor(store: &Store, source: &str, stream: &str) -> Result<Option<String>> {
    let row = sqlx::query("SELECT cursor FROM source_cursors WHERE source = $1 AND stream = $2")
        .bind(source)
        .bind(stream)
        .fetch_optional(store.pool())
        .await?;
    Ok(row
        .map(|r| col::<Option<String>>(&r, "cursor"))
        .transpose()?
        .flatten())
}

/// The transaction of one page.
pub async fn begin_page(store: &Store) -> Result<Tx> {
    let mut tx = store.begin().await?;
    if store.backend() == Backend::Sqlite {
        // A page of thousands of new profiles touches more B-tree pages than SQLite's default
        // 2 MB page cache holds, which then spills mid-transaction; give the page's
        // connection room (per connection; it stays for later use of the connection).
        sqlx::query("PRAGMA cache_size = -32768")
            .execute(&mut *tx)
            .await?;
    }
    Ok(tx)
}

/// Inside a page's transaction: the stream's new cursor and the run's counters.
pub async fn commit_page_rows(
    conn: &mut Conn,
    source: &str,
    stream: &str,
    page: (Option<&str>, bool),
    run_id: &str,
    applied: (i64, i64),
    now: i64,
) -> Result<()> {
    let (cursor, done) = page;
    sqlx::query(
        "INSERT INTO source_cursors (source, stream, cursor, done, updated_at) VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (source, stream) DO UPDATE SET cursor = excluded.cursor, done = excluded.done, updated_at = excluded.updated_at",
    )
    .bind(source)
    .bind(stream)
    .bind(cursor)
    .bind(done as i64)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    sqlx::query("UPDATE source_runs SET pages = pages + 1, records = records + $1, events = events + $2 WHERE id = $3")
        .bind(applied.0)
        .bind(applied.1)
        .bind(run_id)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Claims a webhook delivery id inside the caller's transaction; false when it was already
/// applied. A write first: it takes SQLite's write lock before any read (a concurrent
/// duplicate waits here, then finds it taken).
pub async fn claim_delivery(
    conn: &mut Conn,
    source: &str,
    delivery_id: &str,
    records: i64,
    now: i64,
) -> Result<bool> {
    let claimed = sqlx::query(
        "INSERT INTO source_deliveries (source, delivery_id, records, at) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (source, delivery_id) DO NOTHING",
    )
    .bind(source)
    .bind(delivery_id)
    .bind(records)
    .bind(now)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    Ok(claimed == 1)
}
