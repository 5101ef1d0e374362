//! The `consent` table: each profile's latest consent per category (granted 1/0, as of the
//! message timestamp that said so), written by the tracking API's group commits and read by
//! the sync engine before it maps or sends anything.

use std::collections::HashMap;

use anyhow::Context as _;

use super::identity::ROWS;
use super::profiles::CHUNK;
use super::syncs::AckedRow;
use super::{col, Backend, Conn, Result, Store};

/// A consent state to store: (profile, category) → (granted, ts).
pub type ConsentRow = ((String, String), (bool, i64));

/// Consent states ((profile, category) → (granted, ts)); a stored state newer than the one
/// given stays, so a late message never overrides a later decision.
pub async fn write_all(conn: &mut Conn, backend: Backend, states: &[ConsentRow]) -> Result<()> {
    for chunk in states.chunks(ROWS) {
        let sql = format!(
            "INSERT INTO consent (profile_id, category, granted, ts) VALUES {} \
             ON CONFLICT (profile_id, category) DO UPDATE SET granted = excluded.granted, ts = excluded.ts \
             WHERE excluded.ts >= consent.ts",
            backend.value_groups(1, chunk.len(), 4)
        );
        let mut q = sqlx::query(&sql);
        for ((profile, category), (granted, ts)) in chunk {
            q = q
                .bind(profile)
                .bind(category)
                .bind(*granted as i64)
                .bind(*ts);
        }
        q.execute(&mut *conn).await.context("storing consent")?;
    }
    Ok(())
}

/// The consent states of these profiles: profile → category → granted. Profiles that never
/// sent a consent object are absent.
pub async fn states_of(
    store: &Store,
    ids: &[String],
) -> Result<HashMap<String, HashMap<String, bool>>> {
    let mut out: HashMap<String, HashMap<String, bool>> = HashMap::new();
    for chunk in ids.chunks(CHUNK) {
        let sql = format!(
            "SELECT profile_id, category, granted FROM consent WHERE profile_id IN {}",
            store.value_groups(1, 1, chunk.len())
        );
        let mut q = sqlx::query(&sql);
        for id in chunk {
            q = q.bind(id);
        }
        for row in q.fetch_all(store.pool()).await? {
            out.entry(col(&row, "profile_id")?)
                .or_default()
                .insert(col(&row, "category")?, col::<i64>(&row, "granted")? != 0);
        }
    }
    Ok(out)
}

/// One profile's consent: (category, granted, ts), by category.
pub async fn of_profile(store: &Store, profile: &str) -> Result<Vec<(String, bool, i64)>> {
    let rows = sqlx::query(
        "SELECT category, granted, ts FROM consent WHERE profile_id = $1 ORDER BY category",
    )
    .bind(profile)
    .fetch_all(store.pool())
    .await?;
    rows.iter()
        .map(|r| {
            Ok((
                col(r, "category")?,
                col::<i64>(r, "granted")? != 0,
                col(r, "ts")?,
            ))
        })
        .collect()
}

/// Records a sync's destination holds for profiles that exist but no longer grant every one of
/// `required` (normalised category names): withdrawn, or (with `default_allow` false) never
/// given. They are removed on the next run, in upsert mode too. With `changed_since`, only
/// profiles updated since then are looked at (a consent change moves a profile's `updated_at`),
/// through the `profiles_by_updated` index: a full look at a million records takes seconds.
pub async fn acked_without_consent(
    store: &Store,
    sync: &str,
    required: &[String],
    default_allow: bool,
    changed_since: Option<i64>,
) -> Result<Vec<AckedRow>> {
    if required.is_empty() {
        return Ok(Vec::new());
    }
    let list = (0..required.len())
        .map(|i| format!("${}", i + 2))
        .collect::<Vec<_>>()
        .join(", ");
    let signal = if default_allow {
        // No consent object at all: not enforced.
        " AND EXISTS (SELECT 1 FROM consent s WHERE s.profile_id = r.key)"
    } else {
        ""
    };
    let from = match changed_since {
        Some(_) => format!(
            // CROSS JOIN: SQLite keeps this join order (the changed profiles first, by index);
            // PostgreSQL plans it as any inner join.
            "profiles p CROSS JOIN sync_records r WHERE p.updated_at >= ${} AND r.sync = $1 AND r.key = p.id",
            required.len() + 2
        ),
        None => "sync_records r JOIN profiles p ON p.id = r.key WHERE r.sync = $1".to_string(),
    };
    let sql = format!(
        "SELECT r.key AS key, r.hash AS hash, r.fields AS fields, r.acked_at AS acked_at FROM {from} \
         AND (SELECT COUNT(*) FROM consent c WHERE c.profile_id = r.key AND c.granted = 1 AND c.category IN ({list})) < {n}{signal} \
         ORDER BY r.key",
        n = required.len()
    );
    let mut q = sqlx::query(&sql).bind(sync);
    for c in required {
        q = q.bind(c);
    }
    if let Some(since) = changed_since {
        q = q.bind(since);
    }
    let rows = q
        .fetch_all(store.pool())
        .await
        .context("finding records whose consent was withdrawn")?;
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

#[cfg(test)]
mod tests {
    use super::*;

    async fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("c.db").display());
        (dir, Store::open(&url).await.unwrap())
    }

    async fn exec(store: &Store, sql: &str) {
        sqlx::query(sql).execute(store.pool()).await.unwrap();
    }

    #[tokio::test]
    async fn withdrawn_and_never_given_consent_are_found_by_the_default() {
        let (_dir, store) = store().await;
        for p in ["yes", "no", "silent", "partial", "gone"] {
            if p != "gone" {
                exec(
                    &store,
                    &format!(
                        "INSERT INTO profiles (id, created_at, updated_at) VALUES ('{p}', 0, 0)"
                    ),
                )
                .await;
            }
            exec(&store, &format!("INSERT INTO sync_records (sync, key, hash, fields, acked_at) VALUES ('s', '{p}', 'h', '{{}}', 0)")).await;
        }
        let mut states = HashMap::new();
        states.insert(("yes".to_string(), "marketing".to_string()), (true, 5));
        states.insert(("yes".to_string(), "ads".to_string()), (true, 5));
        states.insert(("no".to_string(), "marketing".to_string()), (false, 5));
        states.insert(("no".to_string(), "ads".to_string()), (true, 5));
        states.insert(("partial".to_string(), "marketing".to_string()), (true, 5));
        let mut conn = store.acquire().await.unwrap();
        let states: Vec<_> = states.into_iter().collect();
        write_all(&mut conn, store.backend(), &states)
            .await
            .unwrap();
        // An older "no" does not override the newer "yes".
        let late: HashMap<_, _> =
            [(("yes".to_string(), "marketing".to_string()), (false, 4))].into();
        let late: Vec<_> = late.into_iter().collect();
        write_all(&mut conn, store.backend(), &late).await.unwrap();
        drop(conn);
        let req = vec!["marketing".to_string(), "ads".to_string()];
        let keys = |rows: Vec<AckedRow>| rows.into_iter().map(|r| r.key).collect::<Vec<_>>();
        assert_eq!(
            keys(
                acked_without_consent(&store, "s", &req, false, None)
                    .await
                    .unwrap()
            ),
            vec!["no", "partial", "silent"]
        );
        assert_eq!(
            keys(
                acked_without_consent(&store, "s", &req, true, None)
                    .await
                    .unwrap()
            ),
            vec!["no", "partial"]
        );
        // Incremental: only profiles updated since.
        exec(
            &store,
            "UPDATE profiles SET updated_at = 10 WHERE id = 'no'",
        )
        .await;
        assert_eq!(
            keys(
                acked_without_consent(&store, "s", &req, false, Some(5))
                    .await
                    .unwrap()
            ),
            vec!["no"]
        );
        assert!(acked_without_consent(&store, "s", &[], false, None)
            .await
            .unwrap()
            .is_empty());
        let states = states_of(&store, &["yes".to_string(), "silent".to_string()])
            .await
            .unwrap();
        assert!(states["yes"]["marketing"]);
        assert!(!states.contains_key("silent"));
    }
}
