//! Syncs as the scheduler sees them ([`Scheduled`]): their schedules, last runs, and for
//! `continuous` ones the newest change their model could see.

use crate::runs::scheduler::{self, LastRun, Outcome, Scheduled};
use crate::schedule::Schedule;
use crate::store::profiles;

use super::{Engine, RunOptions};

/// Starts scheduled sync runs until the process ends.
pub async fn run(engine: Engine) {
    scheduler::run(engine).await
}

impl Scheduled for Engine {
    const NOUN: &'static str = "sync";

    fn schedules(&self) -> Vec<(String, Schedule)> {
        self.config().sync_schedules()
    }

    async fn last_run(&self, name: &str) -> anyhow::Result<Option<LastRun>> {
        let latest = super::rows::runs(self.store(), name, 1).await?.pop();
        Ok(latest.map(|r| LastRun {
            status: crate::runs::RunStatus::parse(&r.status),
            started_at: r.started_at,
        }))
    }

    async fn newest_change(&self, name: &str) -> anyhow::Result<Option<i64>> {
        let events = self.config().is_events_sync(name);
        let max = profiles::newest_change(self.store(), events).await?;
        Ok(Some(max.unwrap_or(i64::MIN)))
    }

    async fn run_now(&self, name: &str) -> anyhow::Result<Outcome> {
        let report = Engine::run(self, name, RunOptions::default(), None).await?;
        Ok(Outcome {
            status: report.status,
            error: report.error,
        })
    }
}
