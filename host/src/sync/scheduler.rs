//! Starts scheduled sync runs inside `switchyard serve`: intervals, cron, and `continuous`
//! (whenever the model may have changed). A run already going, here or on another hub sharing
//! the database, is never started twice: the lease decides.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::{Engine, RunOptions};
use crate::config::{SyncConfig, SyncMode};
use crate::schedule::Schedule;
use crate::store::now_millis;

/// Polls once a second until the process ends.
pub async fn run(engine: Engine) {
    let running: Arc<Mutex<HashSet<String>>> = Arc::default();
    // Syncs whose run could not start (another run held the lease): look again next tick.
    let not_started: Arc<Mutex<HashSet<String>>> = Arc::default();
    // Per sync: when it last started here, and the newest change seen then (continuous).
    let mut last: HashMap<String, (DateTime<Utc>, i64)> = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let config = engine.config();
        for sync in &config.syncs {
            let Some(spec) = &sync.schedule else { continue };
            let Ok(schedule) = Schedule::parse(spec) else {
                continue;
            };
            if lock(&running).contains(&sync.name) {
                continue;
            }
            let now = Utc::now();
            if lock(&not_started).remove(&sync.name) {
                last.remove(&sync.name);
            }
            if !last.contains_key(&sync.name) {
                let latest = engine
                    .runs(&sync.name, 1)
                    .await
                    .ok()
                    .and_then(|mut r| r.pop());
                // A run cut short (the hub died) is resumed at once; the
                // acknowledged state makes it send only what had not landed.
                let unfinished = latest
                    .as_ref()
                    .is_some_and(|r| matches!(r.status.as_str(), "running" | "interrupted"));
                let previous = latest
                    .and_then(|r| DateTime::parse_from_rfc3339(&r.started_at).ok())
                    .map(|t| t.with_timezone(&Utc));
                if let (Some(p), false) = (previous, unfinished) {
                    last.insert(sync.name.clone(), (p, i64::MIN));
                }
            }
            let previous = last.get(&sync.name).copied();
            if schedule.next_after(previous.map(|p| p.0), now) > now {
                continue;
            }
            let mut newest = i64::MIN;
            if matches!(schedule, Schedule::Continuous) {
                newest = match newest_change(&engine, sync).await {
                    Ok(n) => n,
                    Err(e) => {
                        tracing::warn!(sync = %sync.name, "checking for changes: {e:#}");
                        continue;
                    }
                };
                // Run when something changed since the last look, and for a few seconds after
                // the newest change (messages committed just behind their timestamps).
                let seen = previous.map(|p| p.1).unwrap_or(i64::MIN);
                if previous.is_some()
                    && newest <= seen
                    && now_millis().saturating_sub(newest) > 5_000
                {
                    continue;
                }
            }
            last.insert(sync.name.clone(), (now, newest));
            lock(&running).insert(sync.name.clone());
            let engine = engine.clone();
            let running = running.clone();
            let not_started = not_started.clone();
            let name = sync.name.clone();
            tokio::spawn(async move {
                match engine.run(&name, RunOptions::default(), None).await {
                    Ok(r) if r.status == "blocked" || r.status == "failed" => {
                        tracing::warn!(sync = %name, status = %r.status, "scheduled run: {}", r.error.unwrap_or_default())
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::info!(sync = %name, "scheduled run not started: {e:#}");
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

/// The newest change a sync's model could see: profile updates, or received events.
async fn newest_change(engine: &Engine, sync: &SyncConfig) -> anyhow::Result<i64> {
    let events = matches!(sync.mode, SyncMode::Events);
    let max = crate::store::profiles::newest_change(engine.store(), events).await?;
    Ok(max.unwrap_or(i64::MIN))
}
