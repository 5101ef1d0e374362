//! The run's ledger: what delivery commits per batch (acknowledged state, dead letters, the
//! run's counters) goes to `store::syncs` in one transaction.

use super::delivery::{Item, Ledger, Stats};
use crate::runtime::bindings::Action;
use crate::store::syncs as rows;
use crate::store::{now_millis, Store};

/// Commits a batch's outcome: the acknowledged state, dead letters, and the run's counters,
/// in one transaction.
pub(super) struct RunLedger<'a> {
    pub(super) store: &'a Store,
    pub(super) sync: &'a str,
    pub(super) run_id: &'a str,
}

impl Ledger for RunLedger<'_> {
    async fn commit(
        &self,
        action: Action,
        acked: &[Item],
        dead: &[(Item, String)],
        stats: &Stats,
    ) -> anyhow::Result<()> {
        let batch = rows::BatchOutcome {
            action: action_name(action),
            acked: acked
                .iter()
                .map(|i| rows::AckedRef {
                    key: &i.key,
                    hash: &i.hash,
                    fields: &i.fields,
                })
                .collect(),
            dead: dead
                .iter()
                .map(|(i, reason)| rows::DeadRow {
                    key: &i.key,
                    hash: &i.hash,
                    fields: &i.fields,
                    attempts: i.attempts.max(1) as i64,
                    reason,
                })
                .collect(),
            counters: rows::Counters {
                sent: stats.sent as i64,
                succeeded: stats.succeeded as i64,
                retried: stats.retried as i64,
                rejected: stats.rejected as i64,
                dead_lettered: stats.dead_lettered as i64,
            },
        };
        rows::commit_batch(self.store, self.sync, self.run_id, &batch, now_millis()).await?;
        Ok(())
    }
}

fn action_name(a: Action) -> &'static str {
    match a {
        Action::Upsert => "upsert",
        Action::Delete => "delete",
        Action::Track => "track",
        Action::Erase => "erase",
    }
}
