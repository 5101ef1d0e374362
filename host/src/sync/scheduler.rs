//! Syncs as the scheduler sees them ([`Scheduled`]): their schedules, last runs, and for
//! `continuous` ones the newest change their model could see.

use crate::config::SyncMode;
use crate::runs::scheduler::{self, LastRun, Outcome, Scheduled};
use crate::store::profiles;

use super::{Engine, RunOptions};

/// Starts scheduled sync runs until the process ends.
pub async fn run(engine: Engine) {
    scheduler::run(engine).await
}

impl Scheduled for Engine {
    const NOUN: &'static str = "sync";

    fn schedules(&self) -> Vec<(String, String)> {
        let config = self.config();
        config
            .syncs
            .iter()
            .filter_map(|s| Some((s.name.clone(), s.schedule.clone()?)))
            .collect()
    }

    async fn last_run(&self, name: &str) -> anyhow::Result<Option<LastRun>> {
        let latest = super::rows::runs(self.store(), name, 1).await?.pop();
        Ok(latest.map(|r| LastRun {
            status: crate::runs::RunStatus::parse(&r.status),
            started_at: r.started_at,
        }))
    }

    async fn newest_change(&self, name: &str) -> anyhow::Result<Option<i64>> {
        let config = self.config();
        let events = config
            .syncs
            .iter()
            .find(|s| s.name == name)
            .is_some_and(|s| matches!(s.mode, SyncMode::Events));
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
