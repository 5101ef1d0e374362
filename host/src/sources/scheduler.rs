//! Starts scheduled source runs inside `switchyard serve`. A source whose last run did not finish
//! (its process died) is resumed at once; a run already going, here or on another hub sharing the
//! database, is never started twice: the lease decides.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::{RunOptions, SourceEngine};
use crate::schedule::Schedule;

/// Polls once a second until the process ends.
pub async fn run(engine: SourceEngine) {
    let running: Arc<Mutex<HashSet<String>>> = Arc::default();
    let mut last: HashMap<String, DateTime<Utc>> = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        for (name, source) in &engine.config().sources {
            let (Some(_), Some(spec)) = (&source.plugin, &source.schedule) else {
                continue;
            };
            let Ok(schedule) = Schedule::parse(spec) else {
                continue;
            };
            if super::lock(&running).contains(name) {
                continue;
            }
            let now = Utc::now();
            if !last.contains_key(name) {
                let latest = match engine.runs(name, 1).await {
                    Ok(mut r) => r.pop(),
                    Err(e) => {
                        tracing::warn!(source = %name, "reading the run history: {e:#}");
                        continue;
                    }
                };
                let unfinished = latest
                    .as_ref()
                    .is_some_and(|r| matches!(r.status.as_str(), "running" | "interrupted"));
                let previous = latest
                    .and_then(|r| DateTime::parse_from_rfc3339(&r.started_at).ok())
                    .map(|t| t.with_timezone(&Utc));
                if let (Some(p), false) = (previous, unfinished) {
                    last.insert(name.clone(), p);
                }
            }
            if schedule.next_after(last.get(name).copied(), now) > now {
                continue;
            }
            last.insert(name.clone(), now);
            super::lock(&running).insert(name.clone());
            let (engine, running, name) = (engine.clone(), running.clone(), name.clone());
            tokio::spawn(async move {
                match engine.run(&name, RunOptions::default(), None).await {
                    Ok(r) if r.status == "failed" || r.status == "capped" => {
                        tracing::warn!(source = %name, "scheduled run {}: {}", r.status, r.error.unwrap_or_default())
                    }
                    Ok(_) => {}
                    Err(e) => tracing::info!(source = %name, "scheduled run not started: {e:#}"),
                }
                super::lock(&running).remove(&name);
            });
        }
    }
}
