//! Delivery of planned records through a destination plugin: batches of the plugin's size, a
//! token bucket per destination instance, bounded concurrency, per-record results, retries with
//! exponential backoff, jitter and any Retry-After, then the dead-letter store. Every batch's
//! outcome is committed (through the [`Ledger`]) before the next is counted as done, so a
//! crash loses at most the batches in flight, which the next run re-plans.

use std::collections::VecDeque;
use std::future::Future;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::Instrument as _;

use crate::runtime::bindings::{Action, CallError, OutboundRecord, RecordResult};
use crate::runtime::{PluginError, PluginInstance};

/// One record on its way out.
#[derive(Debug, Clone)]
pub struct Item {
    pub key: String,
    /// Hash of `fields`, what the state remembers as acknowledged.
    pub hash: String,
    pub fields: String,
    /// The id of this change of the record (see [`super::delivery_id`]), the same on every
    /// retry.
    pub delivery_id: String,
    /// The fields last acknowledged for the key, when a field the destination keys contacts by
    /// changed since (`outbound-record.previous-fields`).
    pub previous_fields: Option<String>,
    pub attempts: u32,
    pub last_error: Option<String>,
}

/// What delivery sends batches through: a destination plugin's instance, or in tests a fake.
pub trait Destination: Send + Sync + 'static {
    fn deliver(
        &self,
        action: Action,
        batch: &[OutboundRecord],
    ) -> impl Future<Output = Result<Vec<RecordResult>, PluginError>> + Send;
}

impl Destination for PluginInstance {
    fn deliver(
        &self,
        action: Action,
        batch: &[OutboundRecord],
    ) -> impl Future<Output = Result<Vec<RecordResult>, PluginError>> + Send {
        PluginInstance::deliver(self, action, batch)
    }
}

/// How one destination instance is driven.
pub struct Target<D = PluginInstance> {
    pub instance: Arc<D>,
    pub limiter: Arc<DefaultDirectRateLimiter>,
    pub concurrency: usize,
    pub batch_size: usize,
    pub max_attempts: u32,
    /// First retry delay; doubles per attempt up to a minute.
    pub backoff: Duration,
}

impl<D> Clone for Target<D> {
    fn clone(&self) -> Self {
        Target {
            instance: self.instance.clone(),
            limiter: self.limiter.clone(),
            concurrency: self.concurrency,
            batch_size: self.batch_size,
            max_attempts: self.max_attempts,
            backoff: self.backoff,
        }
    }
}

/// A token bucket of `per_second` requests with a burst of one second's worth.
pub fn limiter(per_second: f64) -> Arc<DefaultDirectRateLimiter> {
    let quota = if per_second >= 1.0 {
        let n = NonZeroU32::new(per_second.round().min(u32::MAX as f64) as u32)
            .unwrap_or(NonZeroU32::MIN);
        Quota::per_second(n)
    } else {
        let period = Duration::from_secs_f64(1.0 / per_second.max(0.001));
        Quota::with_period(period).unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
    };
    Arc::new(RateLimiter::direct(quota))
}

/// Where outcomes go: committed per batch.
#[allow(async_fn_in_trait)]
pub trait Ledger {
    /// Records the destination acknowledged, and records that are finished without success
    /// (rejected, or out of attempts) with their reason. Must be durable when it returns.
    async fn commit(
        &self,
        action: Action,
        acked: &[Item],
        dead: &[(Item, String)],
        stats: &Stats,
    ) -> anyhow::Result<()>;
}

/// Counters of one delivery.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Stats {
    /// Records handed to the plugin, retries included.
    pub sent: u64,
    pub succeeded: u64,
    /// Retry results (a record retried twice counts twice).
    pub retried: u64,
    pub rejected: u64,
    pub dead_lettered: u64,
}

impl From<&Stats> for crate::metrics::RecordCounts {
    fn from(s: &Stats) -> Self {
        crate::metrics::RecordCounts {
            sent: s.sent,
            succeeded: s.succeeded,
            retried: s.retried,
            rejected: s.rejected,
            dead_lettered: s.dead_lettered,
        }
    }
}

/// Why delivery stopped before every record was finished.
#[derive(Debug, thiserror::Error)]
pub enum Abort {
    /// The destination refused the credentials or config: retrying cannot help.
    #[error("{0}")]
    Destination(String),
    #[error("{0:#}")]
    Commit(anyhow::Error),
}

struct Batch {
    items: Vec<Item>,
    not_before: Instant,
}

/// What the delivery loop waits for next.
enum Next<T> {
    Page(Option<Vec<Item>>),
    Finished(Option<T>),
}

enum Outcome {
    Results(Vec<RecordResult>),
    /// Every record of the batch is retryable, after at least this long.
    RetryAll(String, Option<u64>),
    Fatal(String),
}

/// Delivers every page received from `pages` (with `action`) until the sender is dropped, taking the next page
/// while the last batches of the previous one are still in flight, so the planner that fills
/// the channel works while the destination does. Returns when each record is acknowledged or
/// dead-lettered, or at the first fatal outcome (dropping `pages`, which stops the sender).
pub async fn deliver_pages<L: Ledger, D: Destination>(
    target: &Target<D>,
    action: Action,
    mut pages: mpsc::Receiver<Vec<Item>>,
    ledger: &L,
    stats: &mut Stats,
    mut progress: impl FnMut(&Stats),
) -> Result<(), Abort> {
    let size = target.batch_size.max(1);
    let mut queue: VecDeque<Batch> = VecDeque::new();
    let enqueue = |queue: &mut VecDeque<Batch>, mut items: Vec<Item>| {
        while !items.is_empty() {
            let rest = items.split_off(items.len().min(size));
            queue.push_back(Batch {
                items,
                not_before: Instant::now(),
            });
            items = rest;
        }
    };
    let mut open = true;
    let mut inflight: JoinSet<(Vec<Item>, Outcome)> = JoinSet::new();
    let mut fatal: Option<String> = None;
    loop {
        while fatal.is_none() && inflight.len() < target.concurrency.max(1) {
            let Some(batch) = queue.pop_front() else {
                break;
            };
            stats.sent += batch.items.len() as u64;
            let target = target.clone();
            let span = tracing::info_span!("batch", records = batch.items.len(), ?action);
            inflight.spawn(
                async move {
                    tokio::time::sleep_until(batch.not_before).await;
                    target.limiter.until_ready().await;
                    let records: Vec<OutboundRecord> = batch
                        .items
                        .iter()
                        .map(|i| OutboundRecord {
                            key: i.key.clone(),
                            fields: i.fields.clone(),
                            delivery_id: i.delivery_id.clone(),
                            previous_fields: i.previous_fields.clone(),
                        })
                        .collect();
                    let outcome = match target.instance.deliver(action, &records).await {
                        Ok(results) => Outcome::Results(results),
                        Err(e) => classify(e),
                    };
                    (batch.items, outcome)
                }
                .instrument(span),
            );
        }
        let next = if open && fatal.is_none() && queue.is_empty() {
            // Out of work: take the next page, or a finished batch if one comes first.
            if inflight.is_empty() {
                Next::Page(pages.recv().await)
            } else {
                tokio::select! {
                    page = pages.recv() => Next::Page(page),
                    joined = inflight.join_next() => Next::Finished(joined),
                }
            }
        } else {
            Next::Finished(inflight.join_next().await)
        };
        let joined = match next {
            Next::Page(Some(items)) => {
                enqueue(&mut queue, items);
                continue;
            }
            Next::Page(None) => {
                open = false;
                continue;
            }
            Next::Finished(Some(joined)) => joined,
            Next::Finished(None) => break,
        };
        let (batch, outcome) = match joined {
            Ok(v) => v,
            Err(e) => return Err(Abort::Destination(format!("delivery task failed: {e}"))),
        };
        let mut acked = Vec::new();
        let mut dead = Vec::new();
        let mut retry: Vec<(Item, u64)> = Vec::new();
        match outcome {
            Outcome::Fatal(reason) => {
                // Nothing of this batch was acknowledged; the next run plans it again.
                fatal.get_or_insert(reason);
                continue;
            }
            Outcome::RetryAll(reason, after) => {
                for item in batch {
                    retry.push((with_error(item, &reason), after.unwrap_or(0)));
                }
            }
            Outcome::Results(results) => {
                for (item, result) in batch.into_iter().zip(results) {
                    match result {
                        RecordResult::Ok => acked.push(item),
                        RecordResult::Rejected(reason) => {
                            dead.push((item, format!("rejected: {reason}")))
                        }
                        RecordResult::Retry(r) => {
                            retry.push((with_error(item, &r.reason), r.after_ms.unwrap_or(0)))
                        }
                    }
                }
            }
        }
        stats.succeeded += acked.len() as u64;
        stats.rejected += dead.len() as u64;
        stats.retried += retry.len() as u64;
        let mut again = Vec::new();
        let mut wait_ms = 0u64;
        for (mut item, after) in retry {
            item.attempts += 1;
            if item.attempts >= target.max_attempts {
                let reason = format!(
                    "gave up after {} attempts: {}",
                    item.attempts,
                    item.last_error.clone().unwrap_or_default()
                );
                dead.push((item, reason));
            } else {
                wait_ms = wait_ms.max(backoff_ms(target.backoff, item.attempts, after));
                again.push(item);
            }
        }
        stats.dead_lettered += dead.len() as u64;
        if !acked.is_empty() || !dead.is_empty() {
            ledger
                .commit(action, &acked, &dead, stats)
                .await
                .map_err(Abort::Commit)?;
        }
        if !again.is_empty() {
            tracing::debug!(records = again.len(), wait_ms, "retrying");
            queue.push_back(Batch {
                items: again,
                not_before: Instant::now() + Duration::from_millis(wait_ms),
            });
        }
        progress(stats);
    }
    match fatal {
        Some(reason) => Err(Abort::Destination(reason)),
        None => Ok(()),
    }
}

fn with_error(mut item: Item, reason: &str) -> Item {
    item.last_error = Some(reason.to_string());
    item
}

/// Exponential backoff with jitter, never shorter than what the destination asked for.
fn backoff_ms(base: Duration, attempt: u32, retry_after_ms: u64) -> u64 {
    let exp = base.as_millis() as u64 * 2u64.saturating_pow(attempt.saturating_sub(1).min(16));
    let capped = exp.min(60_000);
    let jittered = (capped as f64 * (0.5 + fastrand::f64() * 0.5)) as u64;
    jittered.max(retry_after_ms)
}

fn classify(e: PluginError) -> Outcome {
    match e {
        PluginError::Plugin { error, .. } => match error {
            CallError::Transient(r) => Outcome::RetryAll(r.reason, r.after_ms),
            CallError::Failed(m) => Outcome::RetryAll(format!("failed: {m}"), None),
            CallError::Unauthorized(m) => {
                Outcome::Fatal(format!("the destination refused the credentials: {m}"))
            }
            CallError::InvalidConfig(m) => {
                Outcome::Fatal(format!("the destination says its config is invalid: {m}"))
            }
        },
        PluginError::MissingExport { .. } => Outcome::Fatal(e.to_string()),
        // Traps, deadlines, memory and contract breaches are this call's failure: retry.
        other => Outcome::RetryAll(other.to_string(), None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_honours_retry_after_and_is_capped() {
        let base = Duration::from_millis(500);
        for _ in 0..50 {
            let a1 = backoff_ms(base, 1, 0);
            assert!((250..=500).contains(&a1), "{a1}");
            let a3 = backoff_ms(base, 3, 0);
            assert!((1000..=2000).contains(&a3), "{a3}");
            assert!(backoff_ms(base, 30, 0) <= 60_000);
            assert_eq!(backoff_ms(base, 1, 7_000), 7_000);
        }
    }

    use std::collections::HashMap;
    use std::sync::Mutex;

    use crate::runtime::bindings::Retry;

    /// A destination that answers each record by its key's first word: `ok…`, `bad…`
    /// (rejected), `busy…` (retried until `busy_for` attempts have passed), `down` (the whole
    /// batch fails transiently), `denied` (the credentials are refused).
    struct FakeDestination {
        busy_for: u32,
        calls: Mutex<HashMap<String, u32>>,
        batches: Mutex<Vec<usize>>,
        /// (key, delivery id) of every record sent, retries included.
        sent: Mutex<Vec<(String, String)>>,
    }

    impl FakeDestination {
        fn new(busy_for: u32) -> Arc<FakeDestination> {
            Arc::new(FakeDestination {
                busy_for,
                calls: Mutex::default(),
                batches: Mutex::default(),
                sent: Mutex::default(),
            })
        }
    }

    impl Destination for FakeDestination {
        async fn deliver(
            &self,
            _action: Action,
            batch: &[OutboundRecord],
        ) -> Result<Vec<RecordResult>, PluginError> {
            self.batches.lock().unwrap().push(batch.len());
            self.sent
                .lock()
                .unwrap()
                .extend(batch.iter().map(|r| (r.key.clone(), r.delivery_id.clone())));
            let plugin = "fake".to_string();
            if batch.iter().any(|r| r.key == "denied") {
                return Err(PluginError::Plugin {
                    plugin,
                    error: CallError::Unauthorized("bad key".into()),
                });
            }
            if batch.iter().any(|r| r.key == "down") {
                return Err(PluginError::Plugin {
                    plugin,
                    error: CallError::Failed("503".into()),
                });
            }
            let mut calls = self.calls.lock().unwrap();
            Ok(batch
                .iter()
                .map(|r| {
                    let n = calls.entry(r.key.clone()).or_default();
                    *n += 1;
                    if r.key.starts_with("bad") {
                        RecordResult::Rejected("invalid email".into())
                    } else if r.key.starts_with("busy") && *n <= self.busy_for {
                        RecordResult::Retry(Retry {
                            reason: "429".into(),
                            after_ms: Some(1),
                        })
                    } else {
                        RecordResult::Ok
                    }
                })
                .collect())
        }
    }

    /// Remembers every commit, as the run's ledger would store it.
    #[derive(Default)]
    struct FakeLedger {
        acked: Mutex<Vec<String>>,
        dead: Mutex<Vec<(String, String)>>,
        commits: Mutex<u32>,
    }

    impl Ledger for FakeLedger {
        async fn commit(
            &self,
            _action: Action,
            acked: &[Item],
            dead: &[(Item, String)],
            _stats: &Stats,
        ) -> anyhow::Result<()> {
            *self.commits.lock().unwrap() += 1;
            self.acked
                .lock()
                .unwrap()
                .extend(acked.iter().map(|i| i.key.clone()));
            self.dead
                .lock()
                .unwrap()
                .extend(dead.iter().map(|(i, r)| (i.key.clone(), r.clone())));
            Ok(())
        }
    }

    fn item(key: &str) -> Item {
        Item {
            key: key.to_string(),
            hash: format!("h-{key}"),
            fields: "{}".to_string(),
            delivery_id: format!("dlv-{key}"),
            previous_fields: None,
            attempts: 0,
            last_error: None,
        }
    }

    fn target(destination: Arc<FakeDestination>, batch_size: usize) -> Target<FakeDestination> {
        Target {
            instance: destination,
            limiter: limiter(10_000.0),
            concurrency: 2,
            batch_size,
            max_attempts: 3,
            backoff: Duration::from_millis(1),
        }
    }

    async fn deliver(
        target: &Target<FakeDestination>,
        pages: Vec<Vec<Item>>,
        ledger: &FakeLedger,
    ) -> (Result<(), Abort>, Stats) {
        let (tx, rx) = mpsc::channel(pages.len().max(1));
        for page in pages {
            tx.try_send(page).unwrap();
        }
        drop(tx);
        let mut stats = Stats::default();
        let result = deliver_pages(target, Action::Upsert, rx, ledger, &mut stats, |_| {}).await;
        (result, stats)
    }

    #[tokio::test]
    async fn every_record_ends_acknowledged_or_dead_lettered_with_its_reason() {
        let destination = FakeDestination::new(1);
        let ledger = FakeLedger::default();
        let pages = vec![
            vec![item("ok-1"), item("bad-1"), item("busy-1")],
            vec![item("ok-2"), item("ok-3")],
        ];
        let (result, stats) = deliver(&target(destination.clone(), 2), pages, &ledger).await;
        result.unwrap();
        let mut acked = ledger.acked.lock().unwrap().clone();
        acked.sort();
        assert_eq!(acked, ["busy-1", "ok-1", "ok-2", "ok-3"]);
        assert_eq!(
            *ledger.dead.lock().unwrap(),
            [("bad-1".to_string(), "rejected: invalid email".to_string())]
        );
        assert_eq!(stats.succeeded, 4);
        assert_eq!(stats.rejected, 1);
        assert_eq!(stats.retried, 1);
        assert_eq!(stats.dead_lettered, 1);
        // Five records and one retry, in batches of at most two.
        assert_eq!(stats.sent, 6);
        assert!(destination.batches.lock().unwrap().iter().all(|n| *n <= 2));
    }

    #[tokio::test]
    async fn records_out_of_attempts_go_to_the_dead_letters() {
        let destination = FakeDestination::new(10);
        let ledger = FakeLedger::default();
        let (result, stats) = deliver(
            &target(destination, 10),
            vec![vec![item("busy-x"), item("ok")]],
            &ledger,
        )
        .await;
        result.unwrap();
        assert_eq!(*ledger.acked.lock().unwrap(), ["ok"]);
        let dead = ledger.dead.lock().unwrap().clone();
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].0, "busy-x");
        assert_eq!(dead[0].1, "gave up after 3 attempts: 429");
        assert_eq!(stats.retried, 3);
        assert_eq!(stats.dead_lettered, 1);
    }

    #[tokio::test]
    async fn a_retried_record_is_sent_again_with_its_delivery_id() {
        let destination = FakeDestination::new(2);
        let ledger = FakeLedger::default();
        let (result, _) = deliver(
            &target(destination.clone(), 10),
            vec![vec![item("busy-a"), item("ok-b")]],
            &ledger,
        )
        .await;
        result.unwrap();
        let sent = destination.sent.lock().unwrap().clone();
        let of = |key: &str| -> Vec<String> {
            sent.iter()
                .filter(|(k, _)| k == key)
                .map(|(_, id)| id.clone())
                .collect()
        };
        assert_eq!(of("busy-a"), ["dlv-busy-a"; 3]);
        assert_eq!(of("ok-b"), ["dlv-ok-b"]);
    }

    #[tokio::test]
    async fn a_whole_batch_failing_transiently_is_retried_then_dead_lettered() {
        let ledger = FakeLedger::default();
        let (result, stats) = deliver(
            &target(FakeDestination::new(0), 10),
            vec![vec![item("down")]],
            &ledger,
        )
        .await;
        result.unwrap();
        assert!(ledger.acked.lock().unwrap().is_empty());
        assert_eq!(
            *ledger.dead.lock().unwrap(),
            [(
                "down".to_string(),
                "gave up after 3 attempts: failed: 503".to_string()
            )]
        );
        assert_eq!(stats.sent, 3);
    }

    #[tokio::test]
    async fn refused_credentials_stop_delivery_and_commit_nothing_of_the_batch() {
        let ledger = FakeLedger::default();
        let (result, _) = deliver(
            &target(FakeDestination::new(0), 10),
            vec![vec![item("denied"), item("ok")]],
            &ledger,
        )
        .await;
        match result {
            Err(Abort::Destination(reason)) => {
                assert_eq!(reason, "the destination refused the credentials: bad key")
            }
            other => panic!("expected a destination abort, got {other:?}"),
        }
        assert_eq!(*ledger.commits.lock().unwrap(), 0);
    }
}
