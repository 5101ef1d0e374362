//! Sources as the scheduler sees them ([`Scheduled`]): the plugin sources with a schedule and
//! their last runs. Sources track no changes: their schedule alone decides.

use crate::runs::scheduler::{self, LastRun, Outcome, Scheduled};
use crate::runs::RunStatus;
use crate::schedule::Schedule;

use super::{RunOptions, SourceEngine};

/// Starts scheduled source runs until the process ends.
pub async fn run(engine: SourceEngine) {
    scheduler::run(engine).await
}

impl Scheduled for SourceEngine {
    const NOUN: &'static str = "source";

    fn schedules(&self) -> Vec<(String, Schedule)> {
        self.config().source_schedules()
    }

    async fn last_run(&self, name: &str) -> anyhow::Result<Option<LastRun>> {
        let latest = crate::store::sources::runs(self.store(), name, 1)
            .await?
            .pop();
        Ok(latest.map(|r| LastRun {
            status: RunStatus::parse(&r.status),
            started_at: r.started_at,
        }))
    }

    async fn newest_change(&self, _name: &str) -> anyhow::Result<Option<i64>> {
        Ok(None)
    }

    async fn run_now(&self, name: &str) -> anyhow::Result<Outcome> {
        let report = SourceEngine::run(self, name, RunOptions::default(), None).await?;
        Ok(Outcome {
            status: report.status,
            error: report.error,
        })
    }
}
