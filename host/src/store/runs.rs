//! What the two run histories (`sync_runs`, `source_runs`) share: how a run ended, and the runs
//! a dead process left `running`. Each engine's own counters stay in `store::syncs` and
//! `store::sources`.

use super::{Result, Store};

/// What runs: a `[[syncs]]` entry or a `[sources.NAME]`. Each has a run history and a lease
/// table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunKind {
    Sync,
    Source,
}

impl RunKind {
    /// The run history table, and the column naming what ran.
    fn names(self) -> (&'static str, &'static str) {
        match self {
            RunKind::Sync => ("sync_runs", "sync"),
            RunKind::Source => ("source_runs", "source"),
        }
    }

    /// The lease table, and the column naming what it guards.
    pub(super) fn lease_names(self) -> (&'static str, &'static str) {
        match self {
            RunKind::Sync => ("sync_leases", "sync"),
            RunKind::Source => ("source_leases", "source"),
        }
    }
}

/// Records how a run ended.
pub async fn finish_run(
    store: &Store,
    kind: RunKind,
    run_id: &str,
    status: &str,
    finished_at: i64,
    error: Option<&str>,
) -> Result<()> {
    let (table, _) = kind.names();
    sqlx::query(&format!(
        "UPDATE {table} SET status = $1, finished_at = $2, error = $3 WHERE id = $4"
    ))
    .bind(status)
    .bind(finished_at)
    .bind(error)
    .bind(run_id)
    .execute(store.pool())
    .await?;
    Ok(())
}

/// Marks `name`'s runs still `running` as `interrupted` with `error`.
pub async fn interrupt_running(
    store: &Store,
    kind: RunKind,
    name: &str,
    now: i64,
    error: &str,
) -> Result<()> {
    let (table, column) = kind.names();
    sqlx::query(&format!(
        "UPDATE {table} SET status = 'interrupted', finished_at = $1, error = $2 WHERE {column} = $3 AND status = 'running'"
    ))
    .bind(now)
    .bind(error)
    .bind(name)
    .execute(store.pool())
    .await?;
    Ok(())
}
