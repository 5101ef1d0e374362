//! `audit_log`: one row per state-changing action asked of the admin API or the console, written
//! when the action is decided (refused, failed, done or started), never updated.

use super::{col, Result, Store};

/// One entry. `id` is time-ordered text so that entries written in the same millisecond keep
/// their order, and is the cursor of [`list`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AuditEntry {
    pub id: String,
    /// Unix milliseconds.
    pub at: i64,
    /// The token's name (`admin` for `[hub] admin_token`).
    pub actor: String,
    pub role: String,
    /// What was asked, e.g. `profile.erase`, `sync.run`, `dead_letters.replay`.
    pub action: String,
    /// What it was asked of: a sync or source name, `profile:<id>` (never an identifier value,
    /// which would keep personal data an erasure removed).
    pub target: String,
    /// `ok`, `started`, `denied`, `not_found`, `conflict` or `failed`.
    pub outcome: String,
    /// More about it: options, counts, the error.
    pub detail: Option<String>,
}

/// Writes `entry` (its `id` is used as given).
pub async fn record(store: &Store, entry: &AuditEntry) -> Result<()> {
    sqlx::query(
        "INSERT INTO audit_log (id, at, actor, role, action, target, outcome, detail) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(&entry.id)
    .bind(entry.at)
    .bind(&entry.actor)
    .bind(&entry.role)
    .bind(&entry.action)
    .bind(&entry.target)
    .bind(&entry.outcome)
    .bind(entry.detail.as_deref())
    .execute(store.pool())
    .await?;
    Ok(())
}

/// Up to `limit` entries, newest first, older than the entry `before` when given.
pub async fn list(store: &Store, limit: i64, before: Option<&str>) -> Result<Vec<AuditEntry>> {
    let rows = match before {
        Some(id) => {
            sqlx::query(
                "SELECT id, at, actor, role, action, target, outcome, detail FROM audit_log \
                 WHERE id < $1 ORDER BY id DESC LIMIT $2",
            )
            .bind(id)
            .bind(limit)
            .fetch_all(store.pool())
            .await?
        }
        None => {
            sqlx::query(
                "SELECT id, at, actor, role, action, target, outcome, detail FROM audit_log \
                 ORDER BY id DESC LIMIT $1",
            )
            .bind(limit)
            .fetch_all(store.pool())
            .await?
        }
    };
    rows.iter()
        .map(|r| {
            Ok(AuditEntry {
                id: col(r, "id")?,
                at: col(r, "at")?,
                actor: col(r, "actor")?,
                role: col(r, "role")?,
                action: col(r, "action")?,
                target: col(r, "target")?,
                outcome: col(r, "outcome")?,
                detail: col(r, "detail")?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str, action: &str) -> AuditEntry {
        AuditEntry {
            id: id.into(),
            at: 1_000,
            actor: "ops".into(),
            role: "operator".into(),
            action: action.into(),
            target: "nightly".into(),
            outcome: "ok".into(),
            detail: None,
        }
    }

    #[tokio::test]
    async fn lists_newest_first_and_pages_by_id() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&format!("sqlite://{}/a.db", dir.path().display()))
            .await
            .unwrap();
        for (id, action) in [
            ("0001", "sync.run"),
            ("0002", "dead_letters.replay"),
            ("0003", "profile.erase"),
        ] {
            record(&store, &entry(id, action)).await.unwrap();
        }
        let mut third = entry("0003", "profile.erase");
        third.detail = None;
        let all = list(&store, 10, None).await.unwrap();
        assert_eq!(
            all.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
            ["0003", "0002", "0001"]
        );
        assert_eq!(all[0], third);
        let page = list(&store, 1, Some("0003")).await.unwrap();
        assert_eq!(page.len(), 1);
        assert_eq!(page[0].action, "dead_letters.replay");
    }
}
