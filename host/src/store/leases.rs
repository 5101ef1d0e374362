//! Lease rows: `sync_leases` and `source_leases`, one row per sync or source naming the run
//! that holds it and when that expires. What a lease means is `runs::lease`'s business.

use super::{col, Conn, Result, Store};

use super::runs::RunKind;

/// Moves a held lease's expiry: `$1` new expiry, `$2` name, `$3` run id.
fn renew_sql(kind: RunKind) -> String {
    let (table, column) = kind.lease_names();
    format!("UPDATE {table} SET expires_at = $1 WHERE {column} = $2 AND run_id = $3")
}

/// Takes the lease of `name` for `run_id` unless an unexpired row holds it; whether it was taken.
pub async fn take(
    store: &Store,
    kind: RunKind,
    name: &str,
    holder: &str,
    run_id: &str,
    now: i64,
    expires_at: i64,
) -> Result<bool> {
    let (table, column) = kind.lease_names();
    let taken = sqlx::query(&format!(
        "INSERT INTO {table} ({column}, holder, run_id, expires_at) VALUES ($1, $2, $3, $4) \
         ON CONFLICT ({column}) DO UPDATE SET holder = excluded.holder, run_id = excluded.run_id, expires_at = excluded.expires_at \
         WHERE {table}.expires_at < $5"
    ))
    .bind(name)
    .bind(holder)
    .bind(run_id)
    .bind(expires_at)
    .bind(now)
    .execute(store.pool())
    .await?
    .rows_affected();
    Ok(taken == 1)
}

/// Moves the expiry of the lease `run_id` holds; false when it no longer holds it.
pub async fn renew(
    store: &Store,
    kind: RunKind,
    name: &str,
    run_id: &str,
    expires_at: i64,
) -> Result<bool> {
    let held = sqlx::query(&renew_sql(kind))
        .bind(expires_at)
        .bind(name)
        .bind(run_id)
        .execute(store.pool())
        .await?
        .rows_affected();
    Ok(held == 1)
}

/// [`renew`] inside the caller's transaction.
pub async fn renew_in(
    conn: &mut Conn,
    kind: RunKind,
    name: &str,
    run_id: &str,
    expires_at: i64,
) -> Result<bool> {
    let held = sqlx::query(&renew_sql(kind))
        .bind(expires_at)
        .bind(name)
        .bind(run_id)
        .execute(conn)
        .await?
        .rows_affected();
    Ok(held == 1)
}

/// Frees the lease if `run_id` still holds it.
pub async fn release(store: &Store, kind: RunKind, name: &str, run_id: &str) -> Result<()> {
    let (table, column) = kind.lease_names();
    sqlx::query(&format!(
        "DELETE FROM {table} WHERE {column} = $1 AND run_id = $2"
    ))
    .bind(name)
    .bind(run_id)
    .execute(store.pool())
    .await?;
    Ok(())
}

/// The run named in the lease row and when it expires, if there is a row.
pub async fn holder(store: &Store, kind: RunKind, name: &str) -> Result<Option<(String, i64)>> {
    let (table, column) = kind.lease_names();
    let row = sqlx::query(&format!(
        "SELECT run_id, expires_at FROM {table} WHERE {column} = $1"
    ))
    .bind(name)
    .fetch_optional(store.pool())
    .await?;
    row.map(|r| Ok((col(&r, "run_id")?, col(&r, "expires_at")?)))
        .transpose()
}

/// Ends a lease at once (tests: a holder that stalled).
#[doc(hidden)]
pub async fn expire(store: &Store, kind: RunKind, name: &str) -> Result<()> {
    let (table, column) = kind.lease_names();
    sqlx::query(&format!(
        "UPDATE {table} SET expires_at = 0 WHERE {column} = $1"
    ))
    .bind(name)
    .execute(store.pool())
    .await?;
    Ok(())
}
