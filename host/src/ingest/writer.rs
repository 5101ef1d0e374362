//! The single writer behind the tracking API. Requests queue their validated messages; the
//! writer takes everything waiting, resolves identities and stores it in one transaction (one
//! fsync for many requests: group commit), then answers each request. A full queue is refused
//! at once (429) rather than accepted and dropped.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{mpsc, oneshot};
use tracing::Instrument as _;

use super::message::{Message, MessageType};
use super::tap::{self, Observed, Tap};
use crate::identity::batch::{Batch, NewEvent};
use crate::identity::{Identifier, IdentityRules};
use crate::metrics::Metrics;
use crate::store::{now_millis, Store};

/// Most messages one transaction takes.
const MAX_GROUP: usize = 10_000;

/// What storing a request's messages did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Stored {
    pub accepted: usize,
    pub duplicates: usize,
    pub suppressed: usize,
}

/// Why a request's messages were not stored.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error("the write queue is full ({0} messages waiting); retry shortly")]
    QueueFull(usize),
    #[error("storing failed: {0}")]
    Store(String),
    #[error("the writer has stopped")]
    Stopped,
}

struct Job {
    source: String,
    messages: Vec<Prepared>,
    reply: oneshot::Sender<Result<Stored, String>>,
}

/// A message reduced to what storing it takes: identifiers found, traits and the stored body
/// serialised. The request's own task prepares it (in parallel with other requests), so the
/// single writer only resolves identities and writes.
struct Prepared {
    message_id: String,
    kind: MessageType,
    /// The identifiers to resolve, highest priority first; for an alias, both readings of its
    /// previousId (see [`alias_identifiers`]).
    ids: Vec<Identifier>,
    /// Alias only: (userId, previousId).
    alias: Option<(Option<String>, Option<String>)>,
    /// Identify only: trait name → value as JSON text.
    traits: Vec<(String, String)>,
    /// Group only: (groupId, the account's traits as JSON text).
    group: Option<(String, String)>,
    /// Any message: Segment's `context.consent.categoryPreferences`, (category, granted).
    consent: Vec<(String, bool)>,
    name: Option<String>,
    ts: i64,
    received_at: i64,
    body: String,
}

impl Prepared {
    fn new(rules: &IdentityRules, m: Message) -> Prepared {
        let (ids, alias) = match m.kind {
            MessageType::Alias => (
                alias_candidates(&m),
                Some((m.user_id.clone(), m.previous_id.clone())),
            ),
            _ => (rules.identifiers(identifier_candidates(rules, &m)), None),
        };
        let traits = match m.kind {
            MessageType::Identify => m
                .traits
                .iter()
                .map(|(name, value)| (name.clone(), value.to_string()))
                .collect(),
            _ => Vec::new(),
        };
        let group = match (m.kind, &m.group_id) {
            (MessageType::Group, Some(group)) => Some((
                group.clone(),
                serde_json::Value::Object(m.traits.clone()).to_string(),
            )),
            _ => None,
        };
        let consent = m
            .context
            .as_object()
            .map(crate::consent::preferences)
            .unwrap_or_default();
        Prepared {
            ids,
            alias,
            traits,
            group,
            consent,
            name: m.event.clone().or_else(|| m.name.clone()),
            ts: m.timestamp.timestamp_millis(),
            received_at: m.received_at.timestamp_millis(),
            body: m.raw.to_string(),
            kind: m.kind,
            message_id: m.message_id,
        }
    }
}

/// Hands messages to the writer task.
#[derive(Clone)]
pub struct Ingestor {
    tx: mpsc::UnboundedSender<Job>,
    rules: Arc<IdentityRules>,
    queued: Arc<AtomicUsize>,
    capacity: usize,
    metrics: Metrics,
    tap: Tap,
}

impl Ingestor {
    /// Starts the writer task.
    pub fn start(
        store: Store,
        rules: IdentityRules,
        capacity: usize,
        metrics: Metrics,
    ) -> Ingestor {
        let (tx, rx) = mpsc::unbounded_channel();
        let queued = Arc::new(AtomicUsize::new(0));
        let rules = Arc::new(rules);
        let tap = Tap::default();
        tokio::spawn(run(
            store,
            rules.clone(),
            rx,
            queued.clone(),
            metrics.clone(),
            tap.clone(),
        ));
        Ingestor {
            tx,
            rules,
            queued,
            capacity,
            metrics,
            tap,
        }
    }

    /// What the writer commits, as it commits it (see [`Tap`]); refusals are sent to it by the
    /// tracking API.
    pub fn tap(&self) -> &Tap {
        &self.tap
    }

    /// Stores messages durably; returns once they are committed.
    pub async fn submit(
        &self,
        source: &str,
        messages: Vec<Message>,
    ) -> Result<Stored, SubmitError> {
        let n = messages.len();
        let before = self.queued.fetch_add(n, Ordering::SeqCst);
        if before + n > self.capacity && before > 0 {
            self.queued.fetch_sub(n, Ordering::SeqCst);
            return Err(SubmitError::QueueFull(before));
        }
        self.metrics.queue_depth.set((before + n) as i64);
        let messages = messages
            .into_iter()
            .map(|m| Prepared::new(&self.rules, m))
            .collect();
        let (reply, wait) = oneshot::channel();
        if self
            .tx
            .send(Job {
                source: source.to_string(),
                messages,
                reply,
            })
            .is_err()
        {
            self.queued.fetch_sub(n, Ordering::SeqCst);
            return Err(SubmitError::Stopped);
        }
        match wait.await {
            Ok(Ok(stored)) => Ok(stored),
            Ok(Err(e)) => Err(SubmitError::Store(e)),
            Err(_) => Err(SubmitError::Stopped),
        }
    }
}

async fn run(
    store: Store,
    rules: Arc<IdentityRules>,
    mut rx: mpsc::UnboundedReceiver<Job>,
    queued: Arc<AtomicUsize>,
    metrics: Metrics,
    tap: Tap,
) {
    while let Some(first) = rx.recv().await {
        let mut jobs = vec![first];
        let mut count = jobs[0].messages.len();
        while count < MAX_GROUP {
            match rx.try_recv() {
                Ok(job) => {
                    count += job.messages.len();
                    jobs.push(job);
                }
                Err(_) => break,
            }
        }
        let started = Instant::now();
        let span = tracing::debug_span!("ingest_commit", requests = jobs.len(), messages = count);
        // Instrumented, not entered: an entered guard held across the awaits below closed the
        // span out of order, and tracing-subscriber panicked (this task with it, so every
        // later request failed) whenever the hub logged at debug level.
        let results: Vec<Result<Stored, String>> = async {
            match commit(&store, &rules, &jobs).await {
                Ok(results) => results.into_iter().map(Ok).collect(),
                Err(e) => {
                    // One request's bad data must not fail the others: retry each on its own.
                    tracing::warn!("group commit failed, retrying request by request: {e:#}");
                    let mut results = Vec::with_capacity(jobs.len());
                    for job in &jobs {
                        let alone = commit(&store, &rules, std::slice::from_ref(job)).await;
                        results.push(alone.map(|mut r| r.remove(0)).map_err(|e| format!("{e:#}")));
                    }
                    results
                }
            }
        }
        .instrument(span)
        .await;
        metrics.committed(started.elapsed().as_secs_f64());
        let left = queued
            .fetch_sub(count, Ordering::SeqCst)
            .saturating_sub(count);
        metrics.queue_depth.set(left as i64);
        let watched = tap.active();
        for (job, result) in jobs.into_iter().zip(results) {
            if let Ok(stored) = &result {
                metrics.accept(stored.accepted as u64);
                metrics.events_suppressed.inc_by(stored.suppressed as u64);
                if watched {
                    observe(&tap, &job);
                }
            }
            let _ = job.reply.send(result);
        }
    }
}

/// Sends a committed job's messages to the tap.
fn observe(tap: &Tap, job: &Job) {
    let at = now_millis();
    for m in &job.messages {
        tap.send(Observed {
            at,
            source: Some(job.source.clone()),
            kind: m.kind.as_str().to_string(),
            name: m.name.clone(),
            message_id: Some(m.message_id.clone()),
            outcome: "accepted",
            reason: None,
            error: None,
            body: tap::cut(&m.body),
        });
    }
}

/// Stores every job's messages in one transaction, resolving their identities through one
/// identity [`Batch`] (all identifiers looked up at once, multi-row writes at the end).
async fn commit(store: &Store, rules: &IdentityRules, jobs: &[Job]) -> anyhow::Result<Vec<Stored>> {
    let backend = store.backend();
    let now = now_millis();
    // In turn with the event streams' commits (see `Store::write_turn`), then SQLite's write
    // lock up front (see `Store::begin_write`).
    let waiting = Instant::now();
    let _turn = store.write_turn().await;
    let turn = waiting.elapsed();
    let mut tx = store.begin_write().await?;
    let locked = waiting.elapsed();
    let message_ids: Vec<&str> = jobs
        .iter()
        .flat_map(|j| j.messages.iter().map(|m| m.message_id.as_str()))
        .collect();
    // Every message's identifiers, looked up with the stored message ids in one go; a
    // duplicate's are looked up for nothing, which costs less than a statement of its own. An
    // alias's previousId is looked up both as a user id and as an anonymous id, since which one
    // it is depends on who holds it.
    let ids: Vec<&Identifier> = jobs
        .iter()
        .flat_map(|j| j.messages.iter())
        .flat_map(|m| m.ids.iter())
        .collect();
    let mut batch = Batch::prepare(
        &mut tx,
        backend,
        rules,
        ids,
        &message_ids,
        Some(store.known_erasure_key()),
        now,
    )
    .await?;
    let read = waiting.elapsed();
    let mut seen: HashSet<&str> = HashSet::with_capacity(message_ids.len());
    let mut todo: Vec<(usize, &Prepared)> = Vec::with_capacity(message_ids.len());
    let mut results = vec![Stored::default(); jobs.len()];
    for (j, job) in jobs.iter().enumerate() {
        for m in &job.messages {
            let id = m.message_id.as_str();
            if !seen.insert(id) || batch.stored().contains(id) {
                results[j].duplicates += 1;
                continue;
            }
            todo.push((j, m));
        }
    }
    for (j, m) in todo {
        let alias_ids;
        let ids = match (&m.kind, &m.alias) {
            (MessageType::Alias, alias) => {
                alias_ids = alias_identifiers(&mut tx, &mut batch, rules, alias.as_ref()).await?;
                &alias_ids
            }
            _ => &m.ids,
        };
        if batch.is_suppressed(&mut tx, ids).await? {
            results[j].suppressed += 1;
            continue;
        }
        let Some(profile) = batch
            .resolve(&mut tx, ids, &m.message_id, m.kind.as_str())
            .await?
        else {
            results[j].suppressed += 1;
            continue;
        };
        for (name, value) in &m.traits {
            batch.set_trait(&profile, name, value.clone(), m.ts);
        }
        for (category, granted) in &m.consent {
            batch.set_consent(&profile, category, *granted, m.ts);
        }
        if let Some((group, traits)) = &m.group {
            crate::store::identity::join_group(&mut tx, &profile, group, traits, m.ts).await?;
        }
        batch.add_event(NewEvent {
            message_id: m.message_id.clone(),
            profile,
            source: jobs[j].source.clone(),
            kind: m.kind.as_str(),
            name: m.name.clone(),
            ts: m.ts,
            received_at: m.received_at,
            body: m.body.clone(),
        });
        results[j].accepted += 1;
    }
    let decided = waiting.elapsed();
    let stored = batch.finish(&mut tx).await?;
    let written = waiting.elapsed();
    tx.commit().await?;
    tracing::debug!(
        messages = message_ids.len(),
        turn_ms = turn.as_secs_f64() * 1e3,
        lock_ms = (locked - turn).as_secs_f64() * 1e3,
        read_ms = (read - locked).as_secs_f64() * 1e3,
        decide_ms = (decided - read).as_secs_f64() * 1e3,
        write_ms = (written - decided).as_secs_f64() * 1e3,
        commit_ms = (waiting.elapsed() - written).as_secs_f64() * 1e3,
        "ingest commit"
    );
    if stored > 0 {
        // Event streams forward from what is committed: wake them now.
        store.events_committed();
    }
    Ok(results)
}

/// What a message says about who sent it, as (kind, value) pairs: its user and anonymous ids,
/// email and phone, the traits `[identity.traits]` names, and `context.externalIds`. Identity
/// decides which of them count.
fn identifier_candidates(rules: &IdentityRules, m: &Message) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let fixed = [
        ("user_id", m.user_id.clone()),
        ("anonymous_id", m.anonymous_id.clone()),
        ("email", m.email()),
        ("phone", m.phone()),
    ];
    for (kind, value) in fixed {
        if let Some(v) = value {
            out.push((kind.to_string(), v));
        }
    }
    for (name, kind) in rules.trait_kinds() {
        let value = m
            .traits
            .get(name)
            .or_else(|| m.context.get("traits").and_then(|t| t.get(name)));
        if let Some(v) = value.and_then(json_scalar) {
            out.push((kind.to_string(), v));
        }
    }
    for (kind, value) in m.external_ids() {
        let kind = match kind.as_str() {
            "user_id" | "userId" => "user_id".to_string(),
            "anonymous_id" | "anonymousId" => "anonymous_id".to_string(),
            other => other.to_string(),
        };
        out.push((kind, value));
    }
    out
}

fn json_scalar(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Both readings of an alias's identifiers, for the batch's look-up.
fn alias_candidates(m: &Message) -> Vec<Identifier> {
    let mut ids = Vec::new();
    if let Some(user) = &m.user_id {
        ids.push(Identifier::new("user_id", user));
    }
    if let Some(previous) = &m.previous_id {
        ids.push(Identifier::new("user_id", previous));
        ids.push(Identifier::new("anonymous_id", previous));
    }
    ids
}

/// The identifiers an `alias` joins: its userId and its previousId, read as whichever kind
/// already holds it (a user id or an anonymous id), as of the messages before it.
async fn alias_identifiers(
    conn: &mut crate::store::Conn,
    batch: &mut Batch<'_>,
    rules: &IdentityRules,
    alias: Option<&(Option<String>, Option<String>)>,
) -> anyhow::Result<Vec<Identifier>> {
    let mut ids = Vec::new();
    let Some((user, previous)) = alias else {
        return Ok(ids);
    };
    if let Some(user) = user {
        ids.push(Identifier::new("user_id", user));
    }
    if let Some(previous) = previous {
        let as_user = Identifier::new("user_id", previous);
        if batch.is_held(conn, &as_user).await? {
            ids.push(as_user);
        } else {
            ids.push(Identifier::new("anonymous_id", previous));
        }
    }
    Ok(rules.ordered(ids))
}
