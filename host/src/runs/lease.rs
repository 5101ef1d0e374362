//! Run leases: at most one run of a sync, or of a source, at a time, across processes and hubs
//! sharing a database.
//!
//! A lease is a row naming the run that holds it and when it expires. The holder renews it every
//! third of its length; a run whose process died frees its sync or source once the row expires.
//! A renewal that fails (the database unreachable) is retried until the row would have expired:
//! only then may another run have taken over, and the lease counts as lost.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::bail;
use tracing::Instrument;

use super::RunError;
use crate::store::leases;
use crate::store::runs::{self as history, RunKind};
use crate::store::{now_millis, Conn, Store};

/// How long a lease lasts without renewal. `SWITCHYARD_LEASE_MS` overrides it (at least 300),
/// which tests use to see a dead run's lease expire quickly.
pub fn lease_ms() -> i64 {
    std::env::var("SWITCHYARD_LEASE_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|v| *v >= 300)
        .unwrap_or(15_000)
}

/// What a lease guards (its lease table and run history) and the noun messages use. A run that
/// was going when its holder died is marked `interrupted` when the lease is next taken.
#[derive(Debug, Clone, Copy)]
pub struct LeaseKind {
    /// `sync` or `source`, as messages call it.
    pub noun: &'static str,
    what: RunKind,
    /// The error an interrupted run's history row is given.
    interrupted: &'static str,
}

/// One run of a `[[syncs]]` entry at a time.
pub const SYNC: LeaseKind = LeaseKind {
    noun: "sync",
    what: RunKind::Sync,
    interrupted: "the hub stopped during this run; the next run resumed from what was acknowledged",
};

/// One run of a `[sources.NAME]` at a time.
pub const SOURCE: LeaseKind = LeaseKind {
    noun: "source",
    what: RunKind::Source,
    interrupted:
        "the run stopped before it finished; the next run resumed from the last committed page",
};

/// One replay of a stream's dead letters at a time (two would both send every letter). Held
/// in the syncs' lease table under `stream:NAME`, a name no sync can have.
pub const STREAM_REPLAY: LeaseKind = LeaseKind {
    noun: "the dead-letter replay of",
    what: RunKind::Sync,
    interrupted:
        "the replay stopped before it finished; its letters not yet sent are still pending",
};

/// The run holding `name`'s lease: the one whose lease is live now (`live`), or the last one
/// named in the row, expired or not.
pub async fn holder(
    store: &Store,
    kind: LeaseKind,
    name: &str,
    live: bool,
) -> anyhow::Result<Option<String>> {
    let row = leases::holder(store, kind.what, name).await?;
    Ok(row
        .filter(|(_, expires)| !live || *expires >= now_millis())
        .map(|(id, _)| id))
}

/// A held lease, renewed in the background until released.
pub struct Lease {
    kind: LeaseKind,
    name: String,
    run_id: String,
    lost: Arc<AtomicBool>,
    renew: tokio::task::JoinHandle<()>,
}

impl Lease {
    /// Takes the lease of `name` for the run `run_id`, or fails saying another run holds it.
    /// `holder` names this process in the row, for operators looking at the table. A run of
    /// `name` still `running` in the history is over (its process died): it is marked
    /// `interrupted`.
    pub async fn acquire(
        store: &Store,
        kind: LeaseKind,
        name: &str,
        holder: &str,
        run_id: &str,
    ) -> anyhow::Result<Lease> {
        let now = now_millis();
        let noun = kind.noun;
        let holder = format!("{holder}:{run_id}");
        let taken = leases::take(
            store,
            kind.what,
            name,
            &holder,
            run_id,
            now,
            now + lease_ms(),
        )
        .await?;
        if !taken {
            let run_id = leases::holder(store, kind.what, name)
                .await
                .ok()
                .flatten()
                .map(|(run, _)| run);
            return Err(RunError::AlreadyRunning {
                noun,
                name: name.to_string(),
                run_id,
            }
            .into());
        }
        history::interrupt_running(store, kind.what, name, now, kind.interrupted).await?;
        let lost = Arc::new(AtomicBool::new(false));
        let span = tracing::info_span!("lease", kind = noun, name = %name, run = %run_id);
        let renew = tokio::spawn(
            renew(
                store.clone(),
                kind,
                name.to_string(),
                run_id.to_string(),
                now + lease_ms(),
                lost.clone(),
            )
            .instrument(span),
        );
        Ok(Lease {
            kind,
            name: name.to_string(),
            run_id: run_id.to_string(),
            lost,
            renew,
        })
    }

    /// The run holding this lease.
    pub fn run_id(&self) -> &str {
        &self.run_id
    }

    /// Whether the lease may have passed to another run; the run must then stop.
    pub fn lost(&self) -> bool {
        self.lost.load(Ordering::SeqCst)
    }

    /// A flag that turns true when the lease is lost, for tasks that outlive a borrow of it.
    pub fn lost_flag(&self) -> Arc<AtomicBool> {
        self.lost.clone()
    }

    /// Renews the lease inside `tx`, failing when another run has taken it: the first statement
    /// of a transaction that must commit only while this run holds the lease (on SQLite it
    /// also takes the write lock before any read).
    pub async fn fence(&self, tx: &mut Conn) -> anyhow::Result<()> {
        let noun = self.kind.noun;
        let expires_at = now_millis() + lease_ms();
        let held =
            leases::renew_in(tx, self.kind.what, &self.name, &self.run_id, expires_at).await?;
        if !held {
            self.lost.store(true, Ordering::SeqCst);
            bail!(
                "the run lost its lease (another run of {noun} `{}` took over); nothing more of it was stored",
                self.name
            );
        }
        Ok(())
    }

    /// Stops renewing and frees the lease for the next run.
    pub async fn release(self, store: &Store) {
        self.renew.abort();
        let noun = self.kind.noun;
        if let Err(e) = leases::release(store, self.kind.what, &self.name, &self.run_id).await {
            tracing::warn!(kind = noun, name = %self.name, "could not release the lease (it expires by itself): {e}");
        }
    }
}

/// Renews the lease every third of its length until it is found taken, or has expired while
/// the database could not be reached.
async fn renew(
    store: Store,
    kind: LeaseKind,
    name: String,
    run_id: String,
    mut expires_at: i64,
    lost: Arc<AtomicBool>,
) {
    loop {
        tokio::time::sleep(Duration::from_millis((lease_ms() / 3) as u64)).await;
        let next = now_millis() + lease_ms();
        let renewed = leases::renew(&store, kind.what, &name, &run_id, next).await;
        match renewed {
            Ok(true) => expires_at = next,
            Ok(_) => {
                tracing::error!("another run took the lease; stopping this run");
                break;
            }
            Err(e) if now_millis() < expires_at => {
                tracing::warn!("renewing the lease failed, retrying while it lasts: {e}");
            }
            Err(e) => {
                tracing::error!(
                    "the lease expired while the database was unreachable ({e}); stopping this run"
                );
                break;
            }
        }
    }
    lost.store(true, Ordering::SeqCst);
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("lease.db").display());
        let store = Store::open(&url).await.unwrap();
        (dir, store)
    }

    #[tokio::test]
    async fn one_run_holds_a_lease_until_it_releases_it() {
        let (_dir, store) = store().await;
        let first = Lease::acquire(&store, SYNC, "s", "hub", "run-1")
            .await
            .unwrap();
        let refused = Lease::acquire(&store, SYNC, "s", "hub", "run-2")
            .await
            .err()
            .unwrap();
        assert_eq!(
            refused.to_string(),
            "sync `s` is already running (another run holds its lease); try again when it finishes"
        );
        // Leases of different kinds and names do not collide.
        let source = Lease::acquire(&store, SOURCE, "s", "hub", "run-3")
            .await
            .unwrap();
        let other = Lease::acquire(&store, SYNC, "t", "hub", "run-4")
            .await
            .unwrap();

        let mut conn = store.acquire().await.unwrap();
        first.fence(&mut conn).await.unwrap();
        assert!(!first.lost());
        first.release(&store).await;
        let second = Lease::acquire(&store, SYNC, "s", "hub", "run-2")
            .await
            .unwrap();
        assert_eq!(second.run_id(), "run-2");
        for lease in [second, source, other] {
            lease.release(&store).await;
        }
    }

    #[tokio::test]
    async fn a_run_whose_lease_was_taken_over_is_fenced_off_and_marked_lost() {
        let (_dir, store) = store().await;
        let stale = Lease::acquire(&store, SOURCE, "shop", "hub", "old")
            .await
            .unwrap();
        stale.renew.abort();
        // The row expires (the holder stalled); another run takes it.
        leases::expire(&store, RunKind::Source, "shop")
            .await
            .unwrap();
        let fresh = Lease::acquire(&store, SOURCE, "shop", "hub", "new")
            .await
            .unwrap();

        let mut conn = store.acquire().await.unwrap();
        let err = stale.fence(&mut conn).await.err().unwrap();
        assert!(err.to_string().contains("lost its lease"), "{err}");
        assert!(stale.lost());
        fresh.fence(&mut conn).await.unwrap();
        // Releasing the stale lease must not free the new holder's.
        stale.release(&store).await;
        assert!(Lease::acquire(&store, SOURCE, "shop", "hub", "third")
            .await
            .is_err());
        fresh.release(&store).await;
    }
}
