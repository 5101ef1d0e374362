//! The audience tables: `audience_members` (who is in), `audience_state` (the filter last
//! evaluated and how far), `audience_changes` (when membership last changed), `audience_sizes`
//! (how many are in, kept by every write to the members, so that no page has to count them)
//! and `audience_size_history` (the size over time, a point per refresh that changed it).

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
    let mut tx = store.begin().await?;
    let gone = sqlx::query(
        "DELETE FROM audience_members WHERE audience = $1 AND profile_id NOT IN (SELECT id FROM profiles)",
    )
    .bind(name)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    resize(&mut tx, name, -(gone as i64), super::now_millis()).await?;
    tx.commit().await?;
    Ok(gone)
}

/// Moves the audience's kept size by `delta` (members just added or removed in `tx`); the first
/// time, counts the members instead (an audience that has no size yet).
async fn resize(tx: &mut super::Tx, name: &str, delta: i64, now: i64) -> Result<()> {
    let moved =
        sqlx::query("UPDATE audience_sizes SET size = size + $1, at = $2 WHERE audience = $3")
            .bind(delta)
            .bind(now)
            .bind(name)
            .execute(&mut **tx)
            .await?
            .rows_affected();
    if moved == 0 {
        sqlx::query(
            "INSERT INTO audience_sizes (audience, size, at) \
             SELECT $1, COUNT(*), $2 FROM audience_members WHERE audience = $1 \
             ON CONFLICT (audience) DO NOTHING",
        )
        .bind(name)
        .bind(now)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
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
    let mut delta = 0i64;
    for chunk in join.chunks(300) {
        let sql = format!(
            "INSERT INTO audience_members (audience, profile_id, since) VALUES {} ON CONFLICT (audience, profile_id) DO NOTHING",
            store.value_groups(1, chunk.len(), 3)
        );
        let mut q = sqlx::query(&sql);
        for id in chunk {
            q = q.bind(name).bind(id).bind(now);
        }
        delta += q.execute(&mut *tx).await?.rows_affected() as i64;
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
        delta -= q.execute(&mut *tx).await?.rows_affected() as i64;
    }
    resize(&mut tx, name, delta, now).await?;
    tx.commit().await?;
    Ok(())
}

/// The audience's size as its refresh at `at` leaves it: counted again when `recount` (a full
/// refresh, which read every profile anyway, corrects any drift), and added to its history
/// when it differs from the last point recorded.
pub async fn record_size(store: &Store, name: &str, at: i64, recount: bool) -> Result<i64> {
    let mut tx = store.begin_write().await?;
    if recount {
        sqlx::query(
            "INSERT INTO audience_sizes (audience, size, at) \
             SELECT $1, COUNT(*), $2 FROM audience_members WHERE audience = $1 \
             ON CONFLICT (audience) DO UPDATE SET size = excluded.size, at = excluded.at",
        )
        .bind(name)
        .bind(at)
        .execute(&mut *tx)
        .await?;
    } else {
        resize(&mut tx, name, 0, at).await?;
    }
    let row = sqlx::query("SELECT size FROM audience_sizes WHERE audience = $1")
        .bind(name)
        .fetch_one(&mut *tx)
        .await?;
    let size: i64 = col(&row, "size")?;
    let last = sqlx::query(
        "SELECT size FROM audience_size_history WHERE audience = $1 ORDER BY at DESC LIMIT 1",
    )
    .bind(name)
    .fetch_optional(&mut *tx)
    .await?
    .map(|r| col::<i64>(&r, "size"))
    .transpose()?;
    if last != Some(size) {
        sqlx::query(
            "INSERT INTO audience_size_history (audience, at, size) VALUES ($1, $2, $3) \
             ON CONFLICT (audience, at) DO UPDATE SET size = excluded.size",
        )
        .bind(name)
        .bind(at)
        .bind(size)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(size)
}

/// The audience's kept size and as of when (ms); None before its first refresh.
pub async fn size(store: &Store, name: &str) -> Result<Option<(i64, i64)>> {
    let row = sqlx::query("SELECT size, at FROM audience_sizes WHERE audience = $1")
        .bind(name)
        .fetch_optional(store.pool())
        .await?;
    row.map(|r| Ok((col(&r, "size")?, col(&r, "at")?)))
        .transpose()
}

/// Every audience's kept size, by name (the audiences list, in one read).
pub async fn sizes(store: &Store) -> Result<std::collections::HashMap<String, i64>> {
    let rows = sqlx::query("SELECT audience, size FROM audience_sizes")
        .fetch_all(store.pool())
        .await?;
    rows.iter()
        .map(|r| Ok((col(r, "audience")?, col(r, "size")?)))
        .collect()
}

/// The audience's size over time as (ms, size), oldest first: the last point before `since`
/// (the size when the window opens) and every point after it, at most `limit` of the newest.
pub async fn size_history(
    store: &Store,
    name: &str,
    since: i64,
    limit: i64,
) -> Result<Vec<(i64, i64)>> {
    let before = sqlx::query(
        "SELECT at, size FROM audience_size_history WHERE audience = $1 AND at < $2 ORDER BY at DESC LIMIT 1",
    )
    .bind(name)
    .bind(since)
    .fetch_optional(store.pool())
    .await?;
    let rows = sqlx::query(
        "SELECT at, size FROM audience_size_history WHERE audience = $1 AND at >= $2 ORDER BY at DESC LIMIT $3",
    )
    .bind(name)
    .bind(since)
    .bind(limit)
    .fetch_all(store.pool())
    .await?;
    let mut out = rows
        .iter()
        .map(|r| Ok((col(r, "at")?, col(r, "size")?)))
        .collect::<Result<Vec<(i64, i64)>>>()?;
    if let Some(r) = before {
        out.push((col(&r, "at")?, col(&r, "size")?));
    }
    out.reverse();
    Ok(out)
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

/// Size (the kept one; counted for an audience never refreshed since it was kept) and up to
/// `sample` members, newest first.
pub async fn preview(store: &Store, name: &str, sample: i64) -> Result<(i64, Vec<String>)> {
    let size = match size(store, name).await? {
        Some((n, _)) => n,
        None => {
            let row = sqlx::query("SELECT COUNT(*) AS n FROM audience_members WHERE audience = $1")
                .bind(name)
                .fetch_one(store.pool())
                .await?;
            col(&row, "n")?
        }
    };
    // Both descending, so the (audience, since, profile_id) index gives them in order.
    let rows = sqlx::query("SELECT profile_id FROM audience_members WHERE audience = $1 ORDER BY since DESC, profile_id DESC LIMIT $2")
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

#[cfg(test)]
mod tests {
    use super::*;

    async fn store_with_profiles(dir: &tempfile::TempDir, ids: &[&str]) -> Store {
        let store = Store::open(&format!("sqlite://{}/a.db", dir.path().display()))
            .await
            .unwrap();
        for id in ids {
            sqlx::query("INSERT INTO profiles (id, created_at, updated_at) VALUES ($1, 1, 1)")
                .bind(*id)
                .execute(store.pool())
                .await
                .unwrap();
        }
        store
    }

    fn ids(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[tokio::test]
    async fn the_kept_size_follows_every_change_and_its_history_records_each_new_size() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_with_profiles(&dir, &["p1", "p2", "p3", "p4"]).await;
        assert_eq!(size(&store, "vip").await.unwrap(), None);

        apply(&store, "vip", &ids(&["p1", "p2", "p3", "p4"]), &[], 1_000)
            .await
            .unwrap();
        // Joining again (another refresh got there first) changes nothing.
        apply(&store, "vip", &ids(&["p1"]), &[], 1_500)
            .await
            .unwrap();
        apply(&store, "vip", &[], &ids(&["p2", "p9"]), 2_000)
            .await
            .unwrap();
        assert_eq!(size(&store, "vip").await.unwrap().unwrap().0, 3);
        assert_eq!(record_size(&store, "vip", 2_000, false).await.unwrap(), 3);
        assert_eq!(record_size(&store, "vip", 2_500, false).await.unwrap(), 3);

        // A profile merged away leaves at the next refresh; an erased one at once.
        sqlx::query("DELETE FROM profiles WHERE id = 'p3'")
            .execute(store.pool())
            .await
            .unwrap();
        assert_eq!(drop_gone(&store, "vip").await.unwrap(), 1);
        assert_eq!(record_size(&store, "vip", 3_000, false).await.unwrap(), 2);
        let erased = crate::store::erasure::erase(
            &store,
            &crate::store::erasure::ProfileRef::Id("p4".into()),
            &|_| None,
            3_500,
        )
        .await
        .unwrap();
        assert!(erased.is_some());
        assert_eq!(size(&store, "vip").await.unwrap().unwrap().0, 1);
        assert_eq!(record_size(&store, "vip", 4_000, false).await.unwrap(), 1);

        // A full refresh counts again, whatever the kept size said.
        sqlx::query("UPDATE audience_sizes SET size = 99")
            .execute(store.pool())
            .await
            .unwrap();
        assert_eq!(record_size(&store, "vip", 5_000, true).await.unwrap(), 1);

        // One point per new size; a window starts with the size it opened on.
        assert_eq!(
            size_history(&store, "vip", 0, 100).await.unwrap(),
            [(2_000, 3), (3_000, 2), (4_000, 1)]
        );
        assert_eq!(
            size_history(&store, "vip", 3_500, 100).await.unwrap(),
            [(3_000, 2), (4_000, 1)]
        );
        assert_eq!(
            size_history(&store, "vip", 0, 1).await.unwrap(),
            [(4_000, 1)],
            "the newest points when there are more"
        );
        assert_eq!(sizes(&store).await.unwrap().get("vip"), Some(&1));
        assert_eq!(preview(&store, "vip", 10).await.unwrap(), (1, ids(&["p1"])));
    }
}
