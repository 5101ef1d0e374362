//! Starts scheduled runs inside `switchyard serve`, the one loop for syncs and sources: intervals,
//! cron, and `continuous` (whenever what the run reads may have changed). A run whose last run
//! did not finish (its process died) is resumed at once; a run already going, here or on
//! another hub sharing the database, is never started twice: the lease decides.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::RunStatus;
use crate::schedule::Schedule;
use crate::store::now_millis;

/// The newest run of something, as the scheduler needs it.
#[derive(Debug, Clone, Copy)]
pub struct LastRun {
    pub status: RunStatus,
    /// Store milliseconds.
    pub started_at: i64,
}

/// How a scheduled run ended.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub status: RunStatus,
    pub error: Option<String>,
}

/// A run engine the scheduler drives: syncs or sources.
pub trait Scheduled: Clone + Send + Sync + 'static {
    /// `sync` or `source`, for the log.
    const NOUN: &'static str;

    /// What has a schedule now (the config may have been reloaded), as compiled with it.
    fn schedules(&self) -> Vec<(String, Schedule)>;

    /// The newest run of `name`.
    fn last_run(&self, name: &str) -> impl Future<Output = anyhow::Result<Option<LastRun>>> + Send;

    /// For `continuous` schedules: the newest change `name` could read (store ms), or None
    /// when this engine does not track changes (the schedule alone decides).
    fn newest_change(&self, name: &str)
        -> impl Future<Output = anyhow::Result<Option<i64>>> + Send;

    /// Runs `name` with default options; an error means the run did not start.
    fn run_now(&self, name: &str) -> impl Future<Output = anyhow::Result<Outcome>> + Send;
}

/// How long after the newest change a `continuous` schedule keeps running: messages are
/// committed a little behind their timestamps.
const SETTLE_MS: i64 = 5_000;

/// Polls once a second until the process ends.
pub async fn run<E: Scheduled>(engine: E) {
    let noun = E::NOUN;
    let running: Arc<Mutex<HashSet<String>>> = Arc::default();
    // Names whose run could not start (another run held the lease): look again next tick.
    let not_started: Arc<Mutex<HashSet<String>>> = Arc::default();
    // Per name: when it last started here, and the newest change seen then (continuous).
    let mut last: HashMap<String, (DateTime<Utc>, i64)> = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        for (name, schedule) in engine.schedules() {
            if lock(&running).contains(&name) {
                continue;
            }
            let now = Utc::now();
            if lock(&not_started).remove(&name) {
                last.remove(&name);
            }
            if !last.contains_key(&name) {
                let latest = match engine.last_run(&name).await {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::warn!(kind = noun, name = %name, "reading the run history: {e:#}");
                        continue;
                    }
                };
                // A run cut short (the hub died) is resumed at once; the committed state
                // makes it redo only what had not landed.
                if let Some(l) = latest.filter(|l| !l.status.unfinished()) {
                    if let Some(p) = DateTime::from_timestamp_millis(l.started_at) {
                        last.insert(name.clone(), (p, i64::MIN));
                    }
                }
            }
            let previous = last.get(&name).copied();
            if schedule.next_after(previous.map(|p| p.0), now) > now {
                continue;
            }
            let mut newest = i64::MIN;
            if matches!(schedule, Schedule::Continuous) {
                match engine.newest_change(&name).await {
                    Ok(Some(n)) => {
                        newest = n;
                        // Run when something changed since the last look, and for a few seconds
                        // after the newest change.
                        let seen = previous.map(|p| p.1).unwrap_or(i64::MIN);
                        if previous.is_some()
                            && newest <= seen
                            && now_millis().saturating_sub(newest) > SETTLE_MS
                        {
                            continue;
                        }
                    }
                    Ok(None) => {}
                    Err(e) => {
                        tracing::warn!(kind = noun, name = %name, "checking for changes: {e:#}");
                        continue;
                    }
                }
            }
            last.insert(name.clone(), (now, newest));
            lock(&running).insert(name.clone());
            let (engine, running, not_started) =
                (engine.clone(), running.clone(), not_started.clone());
            tokio::spawn(async move {
                match engine.run_now(&name).await {
                    Ok(o) if o.status.needs_attention() => {
                        tracing::warn!(kind = noun, name = %name, status = %o.status, "scheduled run: {}", o.error.unwrap_or_default())
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::info!(kind = noun, name = %name, "scheduled run not started: {e:#}");
                        lock(&not_started).insert(name.clone());
                    }
                }
                lock(&running).remove(&name);
            });
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
