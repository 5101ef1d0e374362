//! The single writer behind the tracking API. Requests queue their validated messages; the
//! writer takes everything waiting, resolves identities and stores it in one transaction (one
//! fsync for many requests: group commit), then answers each request. A full queue is refused
//! at once (429) rather than accepted and dropped.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{mpsc, oneshot};

use super::message::{Message, MessageType};
use crate::identity::{self, Identifier, IdentityRules};
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
    messages: Vec<Message>,
    reply: oneshot::Sender<Result<Stored, String>>,
}

/// Hands messages to the writer task.
#[derive(Clone)]
pub struct Ingestor {
    tx: mpsc::UnboundedSender<Job>,
    queued: Arc<AtomicUsize>,
    capacity: usize,
    metrics: Metrics,
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
        tokio::spawn(run(store, rules, rx, queued.clone(), metrics.clone()));
        Ingestor {
            tx,
            queued,
            capacity,
            metrics,
        }
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
    rules: IdentityRules,
    mut rx: mpsc::UnboundedReceiver<Job>,
    queued: Arc<AtomicUsize>,
    metrics: Metrics,
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
        let _enter = span.enter();
        let results: Vec<Result<Stored, String>> = match commit(&store, &rules, &jobs).await {
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
        };
        metrics
            .commit_seconds
            .observe(started.elapsed().as_secs_f64());
        let left = queued
            .fetch_sub(count, Ordering::SeqCst)
            .saturating_sub(count);
        metrics.queue_depth.set(left as i64);
        for (job, result) in jobs.into_iter().zip(results) {
            if let Ok(stored) = &result {
                metrics.events_accepted.inc_by(stored.accepted as u64);
            }
            let _ = job.reply.send(result);
        }
    }
}

/// Stores every job's messages in one transaction.
async fn commit(store: &Store, rules: &IdentityRules, jobs: &[Job]) -> anyhow::Result<Vec<Stored>> {
    let mut tx = store.pool().begin().await?;
    let mut seen: HashSet<&str> = HashSet::new();
    let mut results = Vec::with_capacity(jobs.len());
    for job in jobs {
        let mut stored = Stored::default();
        for message in &job.messages {
            if !seen.insert(message.message_id.as_str())
                || already_stored(&mut tx, &message.message_id).await?
            {
                stored.duplicates += 1;
                continue;
            }
            match apply(&mut tx, store, rules, &job.source, message).await? {
                true => stored.accepted += 1,
                false => stored.suppressed += 1,
            }
        }
        results.push(stored);
    }
    tx.commit().await?;
    Ok(results)
}

async fn already_stored(conn: &mut sqlx::AnyConnection, message_id: &str) -> anyhow::Result<bool> {
    let row: Option<(i64,)> = sqlx::query_as("SELECT 1 FROM events WHERE message_id = $1")
        .bind(message_id)
        .fetch_optional(&mut *conn)
        .await?;
    Ok(row.is_some())
}

/// Applies one message; false when a privacy erasure suppresses its identifiers.
async fn apply(
    conn: &mut sqlx::AnyConnection,
    store: &Store,
    rules: &IdentityRules,
    source: &str,
    m: &Message,
) -> anyhow::Result<bool> {
    let now = now_millis();
    let ids = if m.kind == MessageType::Alias {
        identity::alias_identifiers(conn, rules, m).await?
    } else {
        rules.identifiers(m)
    };
    if is_suppressed(conn, &ids).await? {
        return Ok(false);
    }
    let reason = m.kind.as_str();
    let Some(resolution) = identity::resolve(
        conn,
        store.backend(),
        rules,
        ids,
        &m.message_id,
        reason,
        now,
    )
    .await?
    else {
        return Ok(false);
    };
    let profile = &resolution.profile_id;
    let ts = m.timestamp.timestamp_millis();
    if m.kind == MessageType::Identify {
        for (name, value) in &m.traits {
            sqlx::query(
                "INSERT INTO traits (profile_id, name, value, ts) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (profile_id, name) DO UPDATE SET value = excluded.value, ts = excluded.ts \
                 WHERE excluded.ts >= traits.ts",
            )
            .bind(profile)
            .bind(name)
            .bind(value.to_string())
            .bind(ts)
            .execute(&mut *conn)
            .await?;
        }
    }
    if m.kind == MessageType::Group {
        if let Some(group) = &m.group_id {
            sqlx::query(
                "INSERT INTO account_groups (group_id, traits, ts) VALUES ($1, $2, $3) \
                 ON CONFLICT (group_id) DO UPDATE SET traits = excluded.traits, ts = excluded.ts WHERE excluded.ts >= account_groups.ts",
            )
            .bind(group)
            .bind(serde_json::Value::Object(m.traits.clone()).to_string())
            .bind(ts)
            .execute(&mut *conn)
            .await?;
            sqlx::query("INSERT INTO profile_groups (profile_id, group_id) VALUES ($1, $2) ON CONFLICT (profile_id, group_id) DO NOTHING")
                .bind(profile)
                .bind(group)
                .execute(&mut *conn)
                .await?;
        }
    }
    let name = m.event.clone().or_else(|| m.name.clone());
    sqlx::query(
        "INSERT INTO events (message_id, profile_id, source, kind, name, ts, received_at, body) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (message_id) DO NOTHING",
    )
    .bind(&m.message_id)
    .bind(profile)
    .bind(source)
    .bind(m.kind.as_str())
    .bind(name)
    .bind(ts)
    .bind(m.received_at.timestamp_millis())
    .bind(m.raw.to_string())
    .execute(&mut *conn)
    .await?;
    Ok(true)
}

async fn is_suppressed(conn: &mut sqlx::AnyConnection, ids: &[Identifier]) -> anyhow::Result<bool> {
    for id in ids {
        let row: Option<(i64,)> =
            sqlx::query_as("SELECT 1 FROM suppressions WHERE kind = $1 AND value = $2")
                .bind(&id.kind)
                .bind(&id.value)
                .fetch_optional(&mut *conn)
                .await?;
        if row.is_some() {
            return Ok(true);
        }
    }
    Ok(false)
}
