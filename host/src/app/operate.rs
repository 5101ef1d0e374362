//! What an operator does to a sync (or a stream's dead letters), by one code path whether the
//! admin API or the console asked: each action goes to the audit log (who, what, on what, how it ended), and runs start
//! in the background (delivering a large audience takes a while), waiting out the lease of a
//! run that is just letting go of it.

use std::time::{Duration, Instant};

use super::http::{Access, Principal};
use crate::runs::RunError;
use crate::store::now_millis;
use crate::streams::{ReplayReport, StreamEngine};
use crate::sync::{Engine, RunOptions};

/// How long a run asked for waits for the previous run's lease: a run that has just written
/// "finished" to the history still holds it for a moment, and a click on "run now" or
/// "approve" right then must not be lost. A run going on for longer still refuses it.
const LEASE_WAIT: Duration = Duration::from_secs(10);

/// The audit outcome of an action that failed.
fn outcome_of(e: &anyhow::Error) -> &'static str {
    match RunError::of(e) {
        Some(RunError::NotFound(_)) => "not_found",
        Some(RunError::AlreadyRunning { .. }) => "conflict",
        None => "failed",
    }
}

/// Starts a run of `sync` in the background, audited as `action` (`sync.run`,
/// `sync.approve_removals`) with outcome `started`. Returns when it was asked (Unix ms): the
/// run starts at or after it, which is how a page knows the run it is waiting for.
pub async fn start_run(
    engine: &Engine,
    access: &Access,
    who: &Principal,
    sync: &str,
    options: RunOptions,
    action: &str,
    detail: Option<String>,
) -> i64 {
    access.audit(who, action, sync, "started", detail).await;
    let asked = now_millis();
    let engine = engine.clone();
    let sync = sync.to_string();
    tokio::spawn(async move {
        let waiting = Instant::now();
        loop {
            match engine.run(&sync, options.clone(), None).await {
                Err(e)
                    if waiting.elapsed() < LEASE_WAIT
                        && matches!(RunError::of(&e), Some(RunError::AlreadyRunning { .. })) =>
                {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(e) => {
                    tracing::warn!(sync = %sync, "a run asked for failed: {e:#}");
                    break;
                }
                Ok(_) => break,
            }
        }
    });
    asked
}

/// What a replay did.
#[derive(Debug, Clone, Copy)]
pub struct Replayed {
    /// Dead letters marked for the next run.
    pub letters: u64,
    /// When the run that sends them again was asked (Unix ms); None when there was nothing
    /// to replay.
    pub run_asked: Option<i64>,
}

/// Replays a sync's dead letters: marks them so that a run plans them again with the payload
/// the model has now, and starts that run. Audited as `dead_letters.replay` (and the run as
/// `sync.run`, "after replay"); an unknown sync is the engine's `NotFound`.
pub async fn replay(
    engine: &Engine,
    access: &Access,
    who: &Principal,
    sync: &str,
) -> anyhow::Result<Replayed> {
    let letters = match engine.replay(sync).await {
        Ok(n) => n,
        Err(e) => {
            access
                .audit(
                    who,
                    "dead_letters.replay",
                    sync,
                    outcome_of(&e),
                    Some(format!("{e:#}")),
                )
                .await;
            return Err(e);
        }
    };
    access
        .audit(
            who,
            "dead_letters.replay",
            sync,
            "ok",
            Some(format!("{letters} replayed")),
        )
        .await;
    let run_asked = if letters > 0 {
        let options = RunOptions::default();
        let detail = Some("after replay".to_string());
        Some(start_run(engine, access, who, sync, options, "sync.run", detail).await)
    } else {
        None
    };
    Ok(Replayed { letters, run_asked })
}

/// Replays a stream's dead letters ([`StreamEngine::replay`]) to the end, on a task of its own
/// (a client that hangs up does not stop it halfway). Audited as `dead_letters.replay` on
/// `stream:NAME`, with what it did.
pub async fn replay_stream(
    streams: &StreamEngine,
    access: &Access,
    who: &Principal,
    stream: &str,
) -> anyhow::Result<ReplayReport> {
    let target = format!("stream:{stream}");
    let task = {
        let (streams, stream) = (streams.clone(), stream.to_string());
        tokio::spawn(async move { streams.replay(&stream, "api").await })
    };
    let result = task
        .await
        .map_err(|e| anyhow::anyhow!("the replay stopped: {e}"))
        .and_then(|r| r);
    let (outcome, detail) = match &result {
        Ok(r) => (
            "ok",
            format!(
                "{} replayed: sent {}, dropped {}, dead-lettered again {}, gone {}",
                r.letters, r.sent, r.dropped, r.dead_lettered, r.gone
            ),
        ),
        Err(e) => (outcome_of(e), format!("{e:#}")),
    };
    access
        .audit(who, "dead_letters.replay", &target, outcome, Some(detail))
        .await;
    result
}
