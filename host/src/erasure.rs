//! Privacy erasure that reaches the destinations.
//!
//! [`Erasures::erase`] erases a profile in the hub (`store::erasure::erase`: every trace of
//! its identifiers, re-creation suppressed by keyed digests) and, in the same transaction,
//! queues one erase per destination the profile was ever sent to, read from the sync ledgers.
//! [`Erasures::attempt_due`] sends the queued erases through each destination's plugin
//! (`deliver` with `Action::Erase` and the fields the destination last acknowledged, so the
//! plugin can find the person, e.g. by email) and retries failures with exponential backoff
//! and jitter, honouring Retry-After, without a limit: an erasure is a legal obligation, so it
//! is retried until the destination confirms or refuses it for good, and each attempt's error
//! is in the receipt for the operator to act on. `serve` runs [`Erasures::run`], which does
//! that in the background; the CLI drives one erasure until done or a deadline.
//!
//! A destination whose plugin cannot erase (its manifest lacks `erase`: every plugin built
//! against contract 1.0.0, Slack) is `cannot_erase` at its first attempt, and the receipt says
//! the operator must erase the person there by hand. No `delete` is sent instead: for some
//! destinations (Slack) it would post the person's data once more.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::Notify;
use tracing::Instrument as _;

use crate::runs::iso;
use crate::runtime::bindings::{Action, CallError, OutboundRecord, RecordResult};
use crate::runtime::PluginError;
use crate::store::erasure::{self as rows, ProfileRef, SentRecord, TargetRow, TargetStatus};
use crate::store::{now_millis, Store};
use crate::sync::Engine;

/// The longest wait between two attempts of one destination's erase.
const MAX_BACKOFF_MS: u64 = 3_600_000;
/// How long an attempt holds its erase against other hubs (longer than a plugin call may take).
const CLAIM_MS: i64 = 5 * 60_000;

/// How often `drive` looks again at an erase it cannot attempt before its deadline.
const CLAIMED_POLL: Duration = Duration::from_millis(200);

/// One destination of an erasure, as the receipt shows it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DestinationReceipt {
    pub destination: String,
    /// The syncs that sent the profile there.
    pub syncs: Vec<String>,
    pub status: TargetStatus,
    /// When the destination confirmed (erased or removed), refused, or was found unable.
    pub done_at: Option<String>,
    pub attempts: i64,
    /// When the next attempt is due (pending only).
    pub next_attempt_at: Option<String>,
    pub last_error: Option<String>,
    /// What the status means for this destination, in a sentence.
    pub note: String,
}

/// What an erasure did and where it stands: the receipt.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Receipt {
    pub id: String,
    pub profile_id: String,
    pub requested_at: String,
    /// Identifiers erased (and suppressed) and events erased in the hub.
    pub identifiers_erased: i64,
    pub events_erased: i64,
    /// Whether every destination is finished (none pending).
    pub complete: bool,
    pub destinations: Vec<DestinationReceipt>,
}

fn note(t: &TargetRow) -> String {
    match t.status {
        TargetStatus::Pending if t.attempts == 0 => "erase queued".to_string(),
        TargetStatus::Pending => format!(
            "erase not confirmed yet after {} attempt(s); retried with backoff until it is",
            t.attempts
        ),
        TargetStatus::Erased => "the destination confirmed the erase".to_string(),
        TargetStatus::CannotErase => "this destination cannot erase (its plugin's manifest does not list `erase`, or its sync is gone from the project file): erase the person there by hand".to_string(),
        TargetStatus::Failed => "the destination refused the erase; see last_error, and erase the person there by hand".to_string(),
    }
}

impl Receipt {
    fn from_rows(e: rows::ErasureRow, targets: Vec<TargetRow>) -> Receipt {
        let destinations: Vec<DestinationReceipt> = targets
            .iter()
            .map(|t| DestinationReceipt {
                destination: t.destination.clone(),
                syncs: t.syncs.clone(),
                status: t.status,
                done_at: t.done_at.map(iso),
                attempts: t.attempts,
                next_attempt_at: (t.status == TargetStatus::Pending)
                    .then(|| iso(t.next_attempt_at)),
                last_error: t.last_error.clone(),
                note: note(t),
            })
            .collect();
        Receipt {
            complete: destinations
                .iter()
                .all(|d| d.status != TargetStatus::Pending),
            id: e.id,
            profile_id: e.profile_id,
            requested_at: iso(e.requested_at),
            identifiers_erased: e.identifiers,
            events_erased: e.events,
            destinations,
        }
    }
}

/// Erases profiles and drives their destinations' erases.
#[derive(Clone)]
pub struct Erasures {
    syncs: Engine,
    wake: Arc<Notify>,
    /// First retry delay (doubles per attempt up to an hour); the sync engine's
    /// (`SWITCHYARD_RETRY_BASE_MS`).
    backoff: Duration,
    /// How often [`Erasures::run`] looks for due erases when not woken;
    /// `SWITCHYARD_ERASURE_POLL_MS` (default 5 s).
    poll: Duration,
}

impl Erasures {
    pub fn new(syncs: Engine) -> Erasures {
        let poll = std::env::var("SWITCHYARD_ERASURE_POLL_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .map(Duration::from_millis)
            .unwrap_or(Duration::from_secs(5));
        Erasures {
            backoff: syncs.backoff,
            syncs,
            wake: Arc::new(Notify::new()),
            poll,
        }
    }

    fn store(&self) -> &Store {
        self.syncs.store()
    }

    /// Erases the profile in the hub and queues its destinations' erases; the receipt, or
    /// None when no profile matches.
    pub async fn erase(&self, profile: &ProfileRef) -> anyhow::Result<Option<Receipt>> {
        let config = self.syncs.config();
        let destination_of = move |sync: &str| config.sync(sync).ok().map(|s| s.to.clone());
        let Some(erased) =
            rows::erase(self.store(), profile, &destination_of, now_millis()).await?
        else {
            return Ok(None);
        };
        tracing::info!(erasure = %erased.erasure_id, profile = %erased.profile_id, "profile erased in the hub; destination erases queued");
        self.wake.notify_one();
        self.receipt(&erased.erasure_id).await
    }

    /// An erasure's receipt.
    pub async fn receipt(&self, id: &str) -> anyhow::Result<Option<Receipt>> {
        Ok(rows::receipt(self.store(), id)
            .await?
            .map(|(e, t)| Receipt::from_rows(e, t)))
    }

    /// The newest erasures' receipts, newest first.
    pub async fn recent(&self, limit: i64) -> anyhow::Result<Vec<Receipt>> {
        let mut out = Vec::new();
        for id in rows::recent(self.store(), limit.clamp(1, 1000)).await? {
            if let Some(r) = self.receipt(&id).await? {
                out.push(r);
            }
        }
        Ok(out)
    }

    /// Attempts every destination erase that is due (of one erasure, or all); how many were
    /// attempted.
    pub async fn attempt_due(&self, erasure: Option<&str>) -> anyhow::Result<usize> {
        let now = now_millis();
        let due = rows::due(self.store(), erasure, now, 100).await?;
        let mut attempted = 0;
        for target in due {
            if !rows::claim(self.store(), &target, now + CLAIM_MS).await? {
                continue;
            }
            attempted += 1;
            let span = tracing::info_span!("erase", erasure = %target.erasure_id, destination = %target.destination);
            if let Err(e) = self.attempt(&target).instrument(span).await {
                // The attempt could not even be recorded: put it back for a later pass.
                tracing::warn!(erasure = %target.erasure_id, destination = %target.destination, "erase attempt failed: {e:#}");
                rows::record_attempt(
                    self.store(),
                    &target.erasure_id,
                    &target.destination,
                    TargetStatus::Pending,
                    &target.records,
                    target.attempts + 1,
                    now_millis() + backoff_ms(self.backoff, (target.attempts + 1) as u32, 0) as i64,
                    Some(&format!("{e:#}")),
                    now_millis(),
                )
                .await?;
            }
        }
        Ok(attempted)
    }

    /// One attempt of one destination's erase, recorded.
    async fn attempt(&self, t: &TargetRow) -> anyhow::Result<()> {
        let config = self.syncs.config();
        let attempts = t.attempts + 1;
        let record = |status: TargetStatus,
                      remaining: &[SentRecord],
                      error: Option<String>,
                      after_ms: u64| {
            let store = self.store().clone();
            let (id, dest) = (t.erasure_id.clone(), t.destination.clone());
            let remaining = remaining.to_vec();
            let backoff = self.backoff;
            async move {
                let now = now_millis();
                let next = now + backoff_ms(backoff, attempts as u32, after_ms) as i64;
                rows::record_attempt(
                    &store,
                    &id,
                    &dest,
                    status,
                    &remaining,
                    attempts,
                    next,
                    error.as_deref(),
                    now,
                )
                .await
            }
        };
        let Some(dest) = config.destinations.get(&t.destination) else {
            record(
                TargetStatus::Pending,
                &t.records,
                Some(format!(
                    "[destinations.{}] is no longer in the project file; put it back (or erase the person there by hand)",
                    t.destination
                )),
                0,
            )
            .await?;
            return Ok(());
        };
        let instance = match self.syncs.destination(&t.destination, dest).await {
            Ok(i) => i,
            Err(e) => {
                record(
                    TargetStatus::Pending,
                    &t.records,
                    Some(format!("loading the destination's plugin: {e:#}")),
                    0,
                )
                .await?;
                return Ok(());
            }
        };
        let Some(action) = erase_action(&instance.plugin().manifest().actions) else {
            let plugin = &instance.plugin().manifest().name;
            record(
                TargetStatus::CannotErase,
                &[],
                Some(format!(
                    "plugin `{plugin}` cannot erase: its manifest does not list `erase`"
                )),
                0,
            )
            .await?;
            return Ok(());
        };
        let done = TargetStatus::Erased;
        if t.records.is_empty() {
            record(done, &[], None, 0).await?;
            return Ok(());
        }
        let batch: Vec<OutboundRecord> = t
            .records
            .iter()
            .map(|r| OutboundRecord {
                delivery_id: crate::sync::delivery_id::for_erase(
                    &t.erasure_id,
                    &t.destination,
                    &r.key,
                ),
                previous_fields: None,
                key: r.key.clone(),
                fields: r.fields.clone(),
            })
            .collect();
        match instance.deliver(action, &batch).await {
            Ok(results) => {
                let mut remaining = Vec::new();
                let mut rejected = Vec::new();
                let mut retry_reason = None;
                let mut after = 0u64;
                for (r, result) in t.records.iter().zip(results) {
                    match result {
                        RecordResult::Ok => {}
                        RecordResult::Retry(retry) => {
                            after = after.max(retry.after_ms.unwrap_or(0));
                            retry_reason.get_or_insert(retry.reason);
                            remaining.push(r.clone());
                        }
                        RecordResult::Rejected(reason) => rejected.push(reason),
                    }
                }
                if !remaining.is_empty() {
                    record(TargetStatus::Pending, &remaining, retry_reason, after).await?;
                } else if let Some(reason) = rejected.into_iter().next() {
                    record(
                        TargetStatus::Failed,
                        &[],
                        Some(format!("rejected: {reason}")),
                        0,
                    )
                    .await?;
                } else {
                    tracing::info!(erasure = %t.erasure_id, destination = %t.destination, status = done.as_str(), "destination erase confirmed");
                    record(done, &[], None, 0).await?;
                }
            }
            Err(e) => {
                let (reason, after) = describe(e);
                record(TargetStatus::Pending, &t.records, Some(reason), after).await?;
            }
        }
        Ok(())
    }

    /// Attempts one erasure's due destinations until none is pending or `wait` has passed;
    /// the receipt as it then stands.
    pub async fn drive(&self, erasure: &str, wait: Duration) -> anyhow::Result<Option<Receipt>> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            self.attempt_due(Some(erasure)).await?;
            let receipt = self.receipt(erasure).await?;
            let pending_next = match &receipt {
                Some(r) if !r.complete => {
                    rows::receipt(self.store(), erasure)
                        .await?
                        .and_then(|(_, t)| {
                            t.iter()
                                .filter(|t| t.status == TargetStatus::Pending)
                                .map(|t| t.next_attempt_at)
                                .min()
                        })
                }
                _ => None,
            };
            let Some(next) = pending_next else {
                return Ok(receipt);
            };
            let wait_ms = (next - now_millis()).max(10) as u64;
            let now = tokio::time::Instant::now();
            let mut wake_at = now + Duration::from_millis(wait_ms);
            if wake_at > deadline {
                if now >= deadline {
                    return Ok(receipt);
                }
                // Not due again before the deadline, but a serving hub may be at it this very
                // moment: its claim pushes the next attempt out by CLAIM_MS just as a retry
                // would. Answering at once returned "not yet" while `serve` was recording the
                // outcome; look at the receipt again until the deadline.
                wake_at = (now + CLAIMED_POLL).min(deadline);
            }
            tokio::time::sleep_until(wake_at).await;
        }
    }

    /// Sends due erases for as long as the hub runs: at once after an erasure, else every
    /// poll interval.
    pub async fn run(self) {
        loop {
            match self.attempt_due(None).await {
                // A full page: more may be due right away.
                Ok(n) if n >= 100 => continue,
                Ok(_) => {}
                Err(e) => tracing::warn!("erasure queue: {e:#}"),
            }
            let _ = tokio::time::timeout(self.poll, self.wake.notified()).await;
        }
    }
}

/// The action that erases, if the plugin's manifest lists it (plugin contract 1.1.0; a plugin
/// built against 1.0.0 never does, and its receipt says it cannot erase).
fn erase_action(actions: &[Action]) -> Option<Action> {
    actions.contains(&Action::Erase).then_some(Action::Erase)
}

/// A failed call as the receipt's error, and the Retry-After it asked for.
fn describe(e: PluginError) -> (String, u64) {
    match e {
        PluginError::Plugin { error, .. } => match error {
            CallError::Transient(r) => (r.reason, r.after_ms.unwrap_or(0)),
            CallError::Failed(m) => (format!("failed: {m}"), 0),
            CallError::Unauthorized(m) => (
                format!("the destination refused the credentials: {m}; fix the destination's secrets, the erase is retried"),
                0,
            ),
            CallError::InvalidConfig(m) => (
                format!("the destination says its config is invalid: {m}; fix [destinations] config, the erase is retried"),
                0,
            ),
        },
        other => (other.to_string(), 0),
    }
}

/// Exponential backoff with jitter, capped at an hour, never shorter than asked for.
fn backoff_ms(base: Duration, attempt: u32, retry_after_ms: u64) -> u64 {
    let exp = base.as_millis() as u64 * 2u64.saturating_pow(attempt.saturating_sub(1).min(24));
    let capped = exp.min(MAX_BACKOFF_MS);
    let jittered = (capped as f64 * (0.5 + fastrand::f64() * 0.5)) as u64;
    jittered.max(retry_after_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_is_capped_at_an_hour_and_honours_retry_after() {
        let base = Duration::from_millis(1000);
        for _ in 0..50 {
            assert!((500..=1000).contains(&backoff_ms(base, 1, 0)));
            assert!((2000..=4000).contains(&backoff_ms(base, 3, 0)));
            let late = backoff_ms(base, 40, 0);
            assert!(
                (MAX_BACKOFF_MS / 2..=MAX_BACKOFF_MS).contains(&late),
                "{late}"
            );
            assert_eq!(backoff_ms(base, 1, 30_000), 30_000);
        }
    }

    fn row(status: TargetStatus, attempts: i64) -> TargetRow {
        TargetRow {
            erasure_id: "era_1".into(),
            destination: "d".into(),
            syncs: vec!["s".into()],
            status,
            records: Vec::new(),
            attempts,
            next_attempt_at: 0,
            last_error: None,
            done_at: None,
        }
    }

    #[test]
    fn a_receipt_is_complete_only_when_no_destination_is_pending() {
        let e = rows::ErasureRow {
            id: "era_1".into(),
            profile_id: "p".into(),
            requested_at: 0,
            identifiers: 2,
            events: 3,
        };
        let r = Receipt::from_rows(
            e.clone(),
            vec![row(TargetStatus::Erased, 1), row(TargetStatus::Pending, 2)],
        );
        assert!(!r.complete);
        assert!(r.destinations[1].next_attempt_at.is_some());
        assert!(r.destinations[1].note.contains("2 attempt(s)"));
        let r = Receipt::from_rows(
            e,
            vec![
                row(TargetStatus::Erased, 1),
                row(TargetStatus::CannotErase, 0),
            ],
        );
        assert!(r.complete);
        assert!(r.destinations[1].note.contains("by hand"));
        assert_eq!(r.destinations[0].next_attempt_at, None);
    }
}
