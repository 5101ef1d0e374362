//! The audience tables: `audience_members` (who is in), `audience_state` (the filter last
//! evaluated and how far), `audience_changes` (when membership last changed).

use std::collections::HashSet;

use anyhow::Context as _;

use super::{col, profiles::CHUNK, Result, Store};

/// The filter an audience was last evaluated with and up to when (ms).
pub async fn state(store: &Store, name: &str) -> Result<Option<(String, i64)>> {
    let row =
        sqlx::query("SELECT filter, evaluated_through FROM audience_state WHERE audience = $1")
            .bind(name)
            .fetch_optional(store.pool())
            .await?;
    row.map(|r| Ok((col(&r, "filter")?, col(&r, "evaluated_through")?)))
        .transpose()
}

/// Records the evaluation: its filter, evaluated through `through`, and (when `full_at > 0`)
/// when it was last computed in full.
pub async fn save_state(
    store: &Store,
    name: &str,
    filter: &str,
    through: i64,
    full_at: i64,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO audience_state (audience, filter, evaluated_through, full_at) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (audience) DO UPDATE SET filter = excluded.filter, evaluated_through = excluded.evaluated_through, \
         full_at = CASE WHEN excluded.full_at > 0 THEN excluded.full_at ELSE audience_state.full_at END",
    )
    .bind(name)
    .bind(filter)
    .bind(through)
    .bind(full_at)
    .execute(store.pool())
    .await
    .context("saving audience state")?;
    Ok(())
}

/// Takes profiles that no longer exist out of the audience; how many left.
pub async fn drop_gone(store: &Store, name: &str) -> Result<u64> {
    let gone = sqlx::query(
        "DELETE FROM audience_members WHERE audience = $1 AND profile_id NOT IN (SELECT id FROM profiles)",
    )
    .bind(name)
    .execute(store.pool())
    .await?;
    Ok(gone.rows_affected())
}

/// Which of these profiles are members.
pub async fn members_among(store: &Store, name: &str, ids: &[String]) -> Result<HashSet<String>> {
    let mut found = HashSet::new();
    for chunk in ids.chunks(CHUNK) {
        let sql = format!(
            "SELECT profile_id FROM audience_members WHERE audience = {} AND profile_id IN {}",
            store.param(1),
            store.value_groups(2, 1, chunk.len())
        );
        let mut q = sqlx::query(&sql).bind(name);
        for id in chunk {
            q = q.bind(id);
        }
        for row in q.fetch_all(store.pool()).await? {
            found.insert(col(&row, "profile_id")?);
        }
    }
    Ok(found)
}

/// Members join (since `now`) and leave, in one transaction.
pub async fn apply(
    store: &Store,
    name: &str,
    join: &[String],
    leave: &[String],
    now: i64,
) -> Result<()> {
    let mut tx = store.begin().await?;
    for chunk in join.chunks(300) {
        let sql = format!(
            "INSERT INTO audience_members (audience, profile_id, since) VALUES {} ON CONFLICT (audience, profile_id) DO NOTHING",
            store.value_groups(1, chunk.len(), 3)
        );
        let mut q = sqlx::query(&sql);
        for id in chunk {
            q = q.bind(name).bind(id).bind(now);
        }
        q.execute(&mut *tx).await?;
    }
    for chunk in leave.chunks(300) {
        let sql = format!(
            "DELETE FROM audience_members WHERE audience = {} AND profile_id IN {}",
            store.param(1),
            store.value_groups(2, 1, chunk.len())
        );
        let mut q = sqlx::query(&sql).bind(name);
        for id in chunk {
            q = q.bind(id);
        }
        q.execute(&mut *tx).await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Records that the audience's membership changed at `at`.
pub async fn mark_changed(store: &Store, name: &str, at: i64) -> Result<()> {
    sqlx::query(
        "INSERT INTO audience_changes (audience, changed_at) VALUES ($1, $2) \
         ON CONFLICT (audience) DO UPDATE SET changed_at = excluded.changed_at",
    )
    .bind(name)
    .bind(at)
    .execute(store.pool())
    .await?;
    Ok(())
}

/// When the audience's membership last changed (ms), if ever recorded.
pub async fn changed_at(store: &Store, name: &str) -> Result<Option<i64>> {
    let row = sqlx::query("SELECT changed_at FROM audience_changes WHERE audience = $1")
        .bind(name)
        .fetch_optional(store.pool())
        .await?;
    row.map(|r| col(&r, "changed_at")).transpose()
}

/// When the audience was last recomputed in full (ms), if ever.
pub async fn last_full(store: &Store, name: &str) -> Result<Option<i64>> {
    let row = sqlx::query("SELECT full_at FROM audience_state WHERE audience = $1")
        .bind(name)
        .fetch_optional(store.pool())
        .await?;
    Ok(row
        .map(|r| col::<i64>(&r, "full_at"))
        .transpose()?
        .filter(|t| *t > 0))
}

/// Size and up to `sample` members, newest first.
pub async fn preview(store: &Store, name: &str, sample: i64) -> Result<(i64, Vec<String>)> {
    let row = sqlx::query("SELECT COUNT(*) AS n FROM audience_members WHERE audience = $1")
        .bind(name)
        .fetch_one(store.pool())
        .await?;
    let size = col(&row, "n")?;
    let rows = sqlx::query("SELECT profile_id FROM audience_members WHERE audience = $1 ORDER BY since DESC, profile_id LIMIT $2")
        .bind(name)
        .bind(sample)
        .fetch_all(store.pool())
        .await?;
    let ids = rows
        .iter()
        .map(|r| col(r, "profile_id"))
        .collect::<Result<_>>()?;
    Ok((size, ids))
}
