//! Event streams (`[[streams]]`): every message a source commits, forwarded to a destination
//! within moments, filtered (CEL), honouring the message's `integrations`, mapped, and
//! delivered through the syncs' delivery (batches, the destination's token bucket, retries,
//! dead letters).
//!
//! Guarantees, and how:
//! - **At least once, nothing acknowledged lost.** The tracking API answers 200 only after the
//!   commit ([`crate::ingest::writer`]), and a stream reads only committed events, numbered in
//!   commit order (`events.seq`, [`crate::store::streams::next_seq`]). A stream's cursor
//!   moves, with its counters and dead letters, in one transaction after each batch is
//!   finished, so a crash (even SIGKILL) re-sends at most the batch in flight.
//! - **In order.** One batch in flight per stream, batches in sequence order; a record the
//!   destination itself asks to retry is re-sent after its batch-mates it accepted.
//! - **Low latency.** The writer's commit wakes every stream ([`Store::events_committed`]); a
//!   slow poll only catches events other processes (another hub, a CLI source run) commit.
//! - **Isolation.** Each stream is its own task with its own cursor: a destination that fails
//!   or hangs holds back only its stream.

pub mod integrations;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context as _};
use serde::Serialize;
use serde_json::Value;
use tokio::sync::{broadcast, mpsc};
use tracing::Instrument as _;

use crate::config::{Config, StreamConfig, StreamStart};
use crate::filter::Filter;
use crate::mapping::{Mapping, Subject};
use crate::metrics::Metrics;
use crate::runtime::bindings::Action;
use crate::store::profiles::{self as model, ProfileData};
use crate::store::streams as rows;
use crate::store::{now_millis, Store};
use crate::sync::delivery::{self, Abort, Item, Ledger, Stats, Target};
use crate::sync::payload_hash;

/// Events read per query. A page is cut into batches of the destination's size; each batch is
/// committed on its own.
const PAGE: i64 = 1_000;

/// How often a stream looks for events committed by other processes when nothing woke it.
const POLL: Duration = Duration::from_secs(1);

/// Lines buffered per `tail` watcher; a watcher further behind is told how many it missed.
const TAIL_BUFFER: usize = 4_096;

/// Why a message was not forwarded: the counter (`dropped:REASON`) and metric label.
pub mod reason {
    pub const FILTER: &str = "filter";
    pub const FILTER_ERROR: &str = "filter_error";
    pub const INTEGRATIONS: &str = "integrations";
    /// The profile has not granted (or withdrew) a category the destination's `consent`
    /// requires, or the message's own consent stamp says no.
    pub const CONSENT: &str = "consent";
    pub const UNREADABLE: &str = "unreadable";
    pub const DEAD_LETTER: &str = "dead_letter";
}

/// Runs the configured streams.
#[derive(Clone)]
pub struct StreamEngine {
    store: Store,
    /// Destination instances, their shared token buckets and the retry backoff.
    syncs: crate::sync::Engine,
    metrics: Option<Metrics>,
    tails: Arc<Mutex<HashMap<String, broadcast::Sender<Arc<str>>>>>,
}

/// A stream as `streams list` and `GET /v1/streams` show it.
#[derive(Debug, Clone, Serialize)]
pub struct StreamStatus {
    pub name: String,
    pub from: Vec<String>,
    pub to: String,
    /// The sequence number of the last message it finished (forwarded, dropped or
    /// dead-lettered); None before its first start.
    pub position: Option<i64>,
    /// Messages committed after its position.
    pub behind: i64,
    /// Seconds since the oldest message it has not finished arrived (0 when caught up).
    pub lag_seconds: f64,
    /// `in`, `out`, `retried`, `dropped:REASON` (`filter`, `integrations`, `dead_letter`, ...).
    pub counters: BTreeMap<String, i64>,
    /// What stopped it last, until a batch succeeds again.
    pub error: Option<String>,
}

impl StreamEngine {
    pub fn new(store: Store, syncs: crate::sync::Engine) -> StreamEngine {
        StreamEngine {
            store,
            syncs,
            metrics: None,
            tails: Arc::default(),
        }
    }

    pub fn with_metrics(mut self, metrics: Metrics) -> StreamEngine {
        self.metrics = Some(metrics);
        self
    }

    /// Gives every configured stream its cursor (a new one starts at the newest committed
    /// message, or the first with `start = "beginning"`), then starts one task per stream.
    /// Cursors are placed before this returns, so a message committed after `serve` listens
    /// is never behind a new stream's starting point.
    pub async fn start(&self) -> anyhow::Result<()> {
        let config = self.syncs.config();
        for stream in &config.streams {
            let first = match stream.start {
                StreamStart::Now => rows::last_seq(&self.store).await?,
                StreamStart::Beginning => 0,
            };
            rows::init_cursor(&self.store, &stream.name, first, now_millis()).await?;
        }
        for stream in config.streams.iter().cloned() {
            let engine = self.clone();
            tokio::spawn(async move { engine.supervise(stream).await });
        }
        Ok(())
    }

    /// Runs a stream until the process ends: a failure (the destination refusing its
    /// credentials, the store unreachable) is recorded for `streams list`, and the stream
    /// starts again from its cursor after a pause that doubles up to a minute.
    async fn supervise(self, stream: StreamConfig) {
        let mut pause = Duration::from_secs(1);
        loop {
            let started = tokio::time::Instant::now();
            let span = tracing::info_span!("stream", stream = %stream.name, to = %stream.to);
            let result = self.run(&stream).instrument(span).await;
            let error = match result {
                Ok(()) => return,
                Err(e) => format!("{e:#}"),
            };
            if started.elapsed() > Duration::from_secs(60) {
                pause = Duration::from_secs(1);
            }
            tracing::error!(stream = %stream.name, "stream stopped, starting again in {pause:?}: {error}");
            if let Err(e) =
                rows::set_error(&self.store, &stream.name, Some(&error), now_millis()).await
            {
                tracing::warn!(stream = %stream.name, "could not record the stream's error: {e}");
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(60));
        }
    }

    /// Forwards from the stream's cursor, forever (or until an error).
    async fn run(&self, stream: &StreamConfig) -> anyhow::Result<()> {
        let config = self.syncs.config();
        let compiled = Compiled::new(&config, stream)?;
        let dest = config.destinations.get(&stream.to).with_context(|| {
            format!("stream `{}`: no [destinations.{}]", stream.name, stream.to)
        })?;
        let instance = Arc::new(self.syncs.destination(&stream.to, dest).await?);
        let manifest = instance.plugin().manifest().clone();
        if !manifest.actions.contains(&Action::Track) {
            bail!(
                "stream `{}`: plugin `{}` cannot take events (it supports {:?}); stream to a destination whose plugin supports `track`",
                stream.name,
                manifest.name,
                manifest.actions
            );
        }
        let names = compiled.names(&stream.to, &manifest.name);
        let rate = dest
            .rate_per_second
            .unwrap_or(manifest.default_rate_per_second);
        let target = Target {
            instance,
            limiter: self
                .syncs
                .limiter(&stream.to, if rate > 0.0 { rate } else { 1000.0 }),
            // One batch in flight keeps the stream in order.
            concurrency: 1,
            batch_size: stream
                .batch_size
                .unwrap_or(usize::MAX)
                .min(manifest.max_batch_size.max(1) as usize),
            max_attempts: stream.max_attempts,
            backoff: self.syncs.backoff,
        };
        let mut cursor = rows::cursor(&self.store, &stream.name)
            .await?
            .map(|c| c.seq)
            .unwrap_or(0);
        let mut wake = self.store.subscribe_events();
        tracing::info!(position = cursor, "stream started");
        loop {
            // Mark the current commit seen before reading, so one that lands after the read
            // wakes the wait below.
            let _ = wake.borrow_and_update();
            let page = rows::events_after(&self.store, cursor, PAGE).await?;
            if page.is_empty() {
                if let Some(m) = &self.metrics {
                    m.streams.lag(&stream.name, 0.0);
                }
                tokio::select! {
                    changed = wake.changed() => {
                        if changed.is_err() {
                            tokio::time::sleep(POLL).await;
                        }
                    }
                    _ = tokio::time::sleep(POLL) => {}
                }
                continue;
            }
            let full = page.len() as i64 == PAGE;
            let last_received = page.last().map(|e| e.received_at).unwrap_or_default();
            cursor = self
                .forward(stream, &compiled, &names, &target, page)
                .await?;
            if let Some(m) = &self.metrics {
                let lag = if full {
                    (now_millis() - last_received).max(0) as f64 / 1000.0
                } else {
                    0.0
                };
                m.streams.lag(&stream.name, lag);
            }
        }
    }

    /// Forwards one page: decides each message, delivers the kept ones batch by batch and
    /// commits the cursor after each batch. Returns the new cursor.
    async fn forward(
        &self,
        stream: &StreamConfig,
        compiled: &Compiled,
        names: &[String],
        target: &Target,
        page: Vec<rows::StreamEvent>,
    ) -> anyhow::Result<i64> {
        let mut ids: Vec<String> = page
            .iter()
            .filter(|e| compiled.takes_source(&e.source))
            .map(|e| e.profile_id.clone())
            .collect();
        ids.sort();
        ids.dedup();
        let profiles: HashMap<String, ProfileData> = if compiled.needs_profile {
            model::load(&self.store, &ids, compiled.uses_events())
                .await?
                .into_iter()
                .map(|p| (p.id.clone(), p))
                .collect()
        } else {
            HashMap::new()
        };
        // Consent, as events syncs judge it: the profile's latest state and the message's own
        // stamp (crate::consent).
        let withheld: HashSet<String> = if compiled.consent.is_empty() {
            HashSet::new()
        } else {
            let states = crate::store::consent::states_of(&self.store, &ids).await?;
            ids.iter()
                .filter(|id| {
                    !crate::consent::allows(
                        states.get(*id),
                        &compiled.consent,
                        compiled.consent_default,
                    )
                })
                .cloned()
                .collect()
        };
        let tail = self.tail_sender(&stream.name);
        let watched = tail.receiver_count() > 0;
        let size = target.batch_size.max(1);
        let mut batch = Batch::default();
        let mut cursor = page.first().map(|e| e.seq - 1).unwrap_or(0);
        for event in page {
            cursor = event.seq;
            if !compiled.takes_source(&event.source) {
                continue;
            }
            batch.read += 1;
            let decided = compiled.decide(&event, names, &profiles, &withheld);
            match decided {
                Decision::Forward(item) => {
                    batch.received.push(event.received_at);
                    if watched {
                        batch.meta.push(meta(&event));
                    }
                    batch.items.push(item);
                }
                Decision::Drop(reason, detail) => {
                    *batch.dropped.entry(reason).or_default() += 1;
                    if watched {
                        batch.lines.push(
                            serde_json::json!({
                                "seq": event.seq, "message_id": event.message_id,
                                "source": event.source, "outcome": "dropped", "reason": reason,
                                "detail": detail,
                            })
                            .to_string(),
                        );
                    }
                }
            }
            if batch.items.len() >= size {
                self.finish(stream, target, std::mem::take(&mut batch), cursor, &tail)
                    .await?;
            }
        }
        self.finish(stream, target, batch, cursor, &tail).await?;
        Ok(cursor)
    }

    /// Delivers a batch and commits its outcome with the cursor `through`.
    async fn finish(
        &self,
        stream: &StreamConfig,
        target: &Target,
        mut batch: Batch,
        through: i64,
        tail: &broadcast::Sender<Arc<str>>,
    ) -> anyhow::Result<()> {
        let ledger = Collect::default();
        let mut stats = Stats::default();
        let sent_keys: Vec<String> = batch.items.iter().map(|i| i.key.clone()).collect();
        if !batch.items.is_empty() {
            let (tx, rx) = mpsc::channel(1);
            let items = std::mem::take(&mut batch.items);
            // Capacity one and nothing queued yet: this cannot fail.
            let _ = tx.try_send(items);
            drop(tx);
            match delivery::deliver_pages(target, Action::Track, rx, &ledger, &mut stats, |_| {})
                .await
            {
                Ok(()) => {}
                Err(Abort::Destination(reason)) => bail!(
                    "stream `{}`: {reason}; nothing of this batch is counted as sent, and the stream starts again from its last committed message",
                    stream.name
                ),
                Err(Abort::Commit(e)) => return Err(e),
            }
        }
        let dead = ledger.dead.into_inner().unwrap_or_else(|p| p.into_inner());
        let acked = ledger.acked.into_inner().unwrap_or_else(|p| p.into_inner());
        let dead_name = format!("stream:{}", stream.name);
        let mut counters: Vec<(String, i64)> = vec![
            ("in".into(), batch.read as i64),
            ("out".into(), acked.len() as i64),
            ("retried".into(), stats.retried as i64),
        ];
        for (reason, n) in &batch.dropped {
            counters.push((format!("dropped:{reason}"), *n as i64));
        }
        if !dead.is_empty() {
            counters.push((
                format!("dropped:{}", reason::DEAD_LETTER),
                dead.len() as i64,
            ));
        }
        let commit = rows::BatchCommit {
            stream: &stream.name,
            dead_letter_name: &dead_name,
            seq: through,
            counters: &counters,
            dead: dead
                .iter()
                .map(|(item, reason)| rows::DeadEvent {
                    key: &item.key,
                    hash: &item.hash,
                    fields: &item.fields,
                    attempts: item.attempts.max(1) as i64,
                    reason,
                })
                .collect(),
        };
        rows::commit_batch(&self.store, &commit, now_millis()).await?;
        let now = now_millis();
        if let Some(m) = &self.metrics {
            let mut dropped: Vec<(&str, u64)> =
                batch.dropped.iter().map(|(r, n)| (*r, *n)).collect();
            dropped.push((reason::DEAD_LETTER, dead.len() as u64));
            m.streams.batch(
                &stream.name,
                batch.read,
                acked.len() as u64,
                stats.retried,
                &dropped,
            );
            for received in &batch.received {
                m.streams
                    .delivered_after(&stream.name, (now - received).max(0) as f64 / 1000.0);
            }
        }
        if tail.receiver_count() > 0 {
            let outcome: HashMap<&str, &str> = acked
                .iter()
                .map(|i| (i.key.as_str(), "forwarded"))
                .chain(dead.iter().map(|(i, r)| (i.key.as_str(), r.as_str())))
                .collect();
            for line in batch.lines {
                let _ = tail.send(line.into());
            }
            let fields: HashMap<&str, &str> = acked
                .iter()
                .map(|i| (i.key.as_str(), i.fields.as_str()))
                .chain(
                    dead.iter()
                        .map(|(i, _)| (i.key.as_str(), i.fields.as_str())),
                )
                .collect();
            for (key, meta) in sent_keys.iter().zip(batch.meta) {
                let result = outcome.get(key.as_str()).copied().unwrap_or("unknown");
                let mut line = meta;
                if result == "forwarded" {
                    line["outcome"] = "forwarded".into();
                } else {
                    line["outcome"] = "dead_lettered".into();
                    line["reason"] = result.into();
                }
                if let Some(f) = fields.get(key.as_str()) {
                    line["fields"] = serde_json::from_str(f).unwrap_or(Value::Null);
                }
                let _ = tail.send(line.to_string().into());
            }
        }
        Ok(())
    }

    fn tail_sender(&self, stream: &str) -> broadcast::Sender<Arc<str>> {
        let mut tails = self.tails.lock().unwrap_or_else(|p| p.into_inner());
        tails
            .entry(stream.to_string())
            .or_insert_with(|| broadcast::channel(TAIL_BUFFER).0)
            .clone()
    }

    /// Live lines of what the stream forwards and drops (JSON, one per message), or None
    /// for a stream the running config does not have.
    pub fn tail(&self, stream: &str) -> Option<broadcast::Receiver<Arc<str>>> {
        let config = self.syncs.config();
        config.streams.iter().find(|s| s.name == stream)?;
        Some(self.tail_sender(stream).subscribe())
    }

    /// Every configured stream's position, lag, counters and last error.
    pub async fn list(&self) -> anyhow::Result<Vec<StreamStatus>> {
        status(&self.store, &self.syncs.config()).await
    }
}

/// Every configured stream's position, lag, counters and last error, from the store (what
/// `switchyard streams list` prints without a running hub).
pub async fn status(store: &Store, config: &Config) -> anyhow::Result<Vec<StreamStatus>> {
    let newest = rows::last_seq(store).await?;
    let now = now_millis();
    let mut out = Vec::new();
    for stream in &config.streams {
        let cursor = rows::cursor(store, &stream.name).await?;
        let position = cursor.as_ref().map(|c| c.seq);
        let lag_seconds = match position {
            Some(seq) => rows::oldest_after(store, seq)
                .await?
                .map(|at| (now - at).max(0) as f64 / 1000.0)
                .unwrap_or(0.0),
            None => 0.0,
        };
        out.push(StreamStatus {
            name: stream.name.clone(),
            from: stream.from.clone(),
            to: stream.to.clone(),
            position,
            behind: position.map(|p| (newest - p).max(0)).unwrap_or(0),
            lag_seconds,
            counters: rows::counters(store, &stream.name).await?,
            error: cursor.and_then(|c| c.error),
        });
    }
    Ok(out)
}

/// What a tail line says about a message before its outcome is known.
fn meta(event: &rows::StreamEvent) -> Value {
    let body: Value = serde_json::from_str(&event.body).unwrap_or(Value::Null);
    serde_json::json!({
        "seq": event.seq,
        "message_id": event.message_id,
        "source": event.source,
        "type": body.get("type"),
        "event": body.get("event").or_else(|| body.get("name")),
        "received_at": crate::mapping::iso(event.received_at),
    })
}

/// A batch being put together, and what it dropped on the way.
#[derive(Default)]
struct Batch {
    items: Vec<Item>,
    /// When each item's message arrived, for the delivery-time histogram.
    received: Vec<i64>,
    /// Tail lines' start, per item (only while someone tails).
    meta: Vec<Value>,
    /// Tail lines of dropped messages.
    lines: Vec<String>,
    read: u64,
    dropped: BTreeMap<&'static str, u64>,
}

/// A stream's ledger: the outcome of its one batch, held until the cursor commit that writes
/// it in the same transaction (a crash before then re-sends the batch; that is the "at most
/// the batch in flight").
#[derive(Default)]
struct Collect {
    acked: Mutex<Vec<Item>>,
    dead: Mutex<Vec<(Item, String)>>,
}

impl Ledger for Collect {
    async fn commit(
        &self,
        _action: Action,
        acked: &[Item],
        dead: &[(Item, String)],
        _stats: &Stats,
    ) -> anyhow::Result<()> {
        self.acked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(acked);
        self.dead
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(dead);
        Ok(())
    }
}

/// What happens to one message.
#[derive(Debug)]
enum Decision {
    Forward(Item),
    /// Not forwarded: the reason (a counter) and a detail for `tail`.
    Drop(&'static str, Option<String>),
}

/// A stream's config compiled once.
struct Compiled {
    /// `stream:NAME`: where its dead letters are filed and what its delivery ids derive from.
    scope: String,
    sources: Option<HashSet<String>>,
    filter: Option<Filter>,
    mapping: Option<Mapping>,
    extra_names: Vec<String>,
    /// The destination's required consent categories (`[destinations.NAME] consent`).
    consent: Vec<String>,
    consent_default: crate::consent::ConsentDefault,
    /// The filter or the mapping reads the profile (traits, identifiers).
    needs_profile: bool,
}

impl Compiled {
    fn new(config: &Config, stream: &StreamConfig) -> anyhow::Result<Compiled> {
        let filter = stream
            .filter
            .as_deref()
            .map(Filter::compile)
            .transpose()
            .map_err(|e| anyhow::anyhow!("stream `{}` filter: {e}", stream.name))?;
        let mapping = if stream.mapping.is_empty() {
            None
        } else {
            Some(
                Mapping::compile(&stream.mapping, true)
                    .map_err(|e| anyhow::anyhow!("stream `{}` mapping.{e}", stream.name))?,
            )
        };
        let profile_paths = stream.mapping.values().any(|v| match v {
            crate::config::MappingValue::Path(p) => !p.starts_with("event."),
            _ => false,
        });
        let profile_filter = stream.filter.as_deref().is_some_and(|f| {
            ["traits", "identifiers", "events", "event_list"]
                .iter()
                .any(|name| mentions(f, name))
        });
        Ok(Compiled {
            scope: format!("stream:{}", stream.name),
            sources: if stream.from.is_empty() {
                None
            } else {
                Some(stream.from.iter().cloned().collect())
            },
            filter,
            mapping,
            extra_names: stream.integration_names.clone(),
            consent: config
                .destinations
                .get(&stream.to)
                .map(|d| {
                    d.consent
                        .iter()
                        .map(|c| crate::consent::category(c))
                        .collect()
                })
                .unwrap_or_default(),
            consent_default: config.hub.consent_default,
            needs_profile: profile_paths || profile_filter,
        })
    }

    fn uses_events(&self) -> bool {
        self.filter.as_ref().is_some_and(|f| f.uses_events)
    }

    fn takes_source(&self, source: &str) -> bool {
        self.sources.as_ref().is_none_or(|s| s.contains(source))
    }

    /// The names a message's `integrations` may call this stream's destination by.
    fn names(&self, destination: &str, plugin: &str) -> Vec<String> {
        let mut names = vec![destination.to_string(), plugin.to_string()];
        names.extend(self.extra_names.iter().cloned());
        names
    }

    fn decide(
        &self,
        event: &rows::StreamEvent,
        names: &[String],
        profiles: &HashMap<String, ProfileData>,
        withheld: &HashSet<String>,
    ) -> Decision {
        let body: Value = match serde_json::from_str(&event.body) {
            Ok(v) => v,
            Err(e) => return Decision::Drop(reason::UNREADABLE, Some(e.to_string())),
        };
        if !integrations::enabled(body.get("integrations"), names) {
            return Decision::Drop(reason::INTEGRATIONS, None);
        }
        if !self.consent.is_empty()
            && (withheld.contains(&event.profile_id)
                || !crate::consent::event_allows(&body, &self.consent))
        {
            return Decision::Drop(reason::CONSENT, None);
        }
        let empty;
        let profile = match profiles.get(&event.profile_id) {
            Some(p) => p,
            None => {
                empty = ProfileData {
                    id: event.profile_id.clone(),
                    ..Default::default()
                };
                &empty
            }
        };
        if let Some(filter) = &self.filter {
            match filter.matches(profile, Some(&body)) {
                Ok(true) => {}
                Ok(false) => return Decision::Drop(reason::FILTER, None),
                Err(e) => return Decision::Drop(reason::FILTER_ERROR, Some(e)),
            }
        }
        let fields = match &self.mapping {
            None => body,
            Some(mapping) => Value::Object(mapping.apply(&Subject {
                profile_id: &profile.id,
                created_at: profile.created_at,
                updated_at: profile.updated_at,
                traits: &profile.traits,
                identifiers: &profile.identifiers,
                event: Some(&body),
            })),
        };
        let text = fields.to_string();
        Decision::Forward(Item {
            // Stable across retries and re-sends after a crash: derived from the message id,
            // per stream, as events syncs derive theirs.
            delivery_id: crate::sync::delivery_id::for_event(&self.scope, &event.message_id),
            previous_fields: None,
            key: event.message_id.clone(),
            hash: payload_hash(&text),
            fields: text,
            attempts: 0,
            last_error: None,
        })
    }
}

/// Whether a CEL expression names the variable `name` (a word, not part of one, and not a
/// field after a dot like `event.traits`).
fn mentions(expr: &str, name: &str) -> bool {
    let bytes = expr.as_bytes();
    let word = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    expr.match_indices(name).any(|(at, _)| {
        let before = if at == 0 { None } else { Some(bytes[at - 1]) };
        let after = bytes.get(at + name.len()).copied();
        !before.is_some_and(|b| word(b) || b == b'.') && !after.is_some_and(word)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mentions_finds_variables_not_fields() {
        assert!(mentions("traits.plan == 'pro'", "traits"));
        assert!(mentions(
            "event.type == 'track' && identifiers.email.size() > 0",
            "identifiers"
        ));
        assert!(!mentions("event.traits.plan == 'pro'", "traits"));
        assert!(!mentions("event.properties.my_traits == 1", "traits"));
    }

    fn event(seq: i64, body: Value) -> rows::StreamEvent {
        rows::StreamEvent {
            seq,
            message_id: format!("m{seq}"),
            profile_id: "p1".into(),
            source: "web".into(),
            received_at: 0,
            body: body.to_string(),
        }
    }

    fn stream(filter: Option<&str>, mapping: &[(&str, &str)]) -> StreamConfig {
        let mut text = String::from("name = \"s\"\nto = \"d\"\n");
        if let Some(f) = filter {
            text.push_str(&format!("filter = {f:?}\n"));
        }
        text.push_str("[mapping]\n");
        for (k, v) in mapping {
            text.push_str(&format!("{k} = {v:?}\n"));
        }
        toml::from_str(&text).unwrap()
    }

    #[test]
    fn decides_by_integrations_then_filter_then_maps() {
        let s = stream(
            Some("event.type == 'track' && event.properties.total > 10.0"),
            &[("name", "event.name"), ("plan", "traits.plan")],
        );
        let c = Compiled::new(&Config::default(), &s).unwrap();
        assert!(c.needs_profile, "the mapping reads a trait");
        let names = c.names("meta", "meta-conversions");
        let mut profiles = HashMap::new();
        let mut p = ProfileData {
            id: "p1".into(),
            ..Default::default()
        };
        p.traits.insert("plan".into(), "pro".into());
        profiles.insert("p1".to_string(), p);
        let big = serde_json::json!({"type": "track", "event": "Order Completed", "properties": {"total": 42.0}});
        match c.decide(&event(1, big.clone()), &names, &profiles, &HashSet::new()) {
            Decision::Forward(item) => {
                assert_eq!(item.key, "m1");
                let fields: Value = serde_json::from_str(&item.fields).unwrap();
                assert_eq!(
                    fields,
                    serde_json::json!({"name": "Order Completed", "plan": "pro"})
                );
            }
            other => panic!("expected forward, got {other:?}"),
        }
        let small = serde_json::json!({"type": "track", "event": "Order Completed", "properties": {"total": 2.0}});
        assert!(matches!(
            c.decide(&event(2, small), &names, &profiles, &HashSet::new()),
            Decision::Drop(reason::FILTER, None)
        ));
        let mut off = big.clone();
        off["integrations"] = serde_json::json!({"All": false});
        assert!(matches!(
            c.decide(&event(3, off), &names, &profiles, &HashSet::new()),
            Decision::Drop(reason::INTEGRATIONS, None)
        ));
        let mut only_meta = big;
        only_meta["integrations"] = serde_json::json!({"All": false, "meta-conversions": true});
        assert!(matches!(
            c.decide(&event(4, only_meta), &names, &profiles, &HashSet::new()),
            Decision::Forward(_)
        ));
    }

    #[test]
    fn consent_the_destination_requires_is_enforced_per_profile_and_per_message() {
        let config: Config =
            toml::from_str("[destinations.d]\nplugin = \"p\"\nconsent = [\"Advertising\"]\n")
                .unwrap();
        let c = Compiled::new(&config, &stream(None, &[])).unwrap();
        assert_eq!(c.consent, ["advertising"]);
        let plain = serde_json::json!({"type": "track", "event": "Order Completed"});
        let none = HashMap::new();
        let withheld: HashSet<String> = ["p1".to_string()].into();
        assert!(matches!(
            c.decide(&event(1, plain.clone()), &[], &none, &withheld),
            Decision::Drop(reason::CONSENT, None)
        ));
        assert!(matches!(
            c.decide(&event(2, plain), &[], &none, &HashSet::new()),
            Decision::Forward(_)
        ));
        let said_no = serde_json::json!({"type": "track", "event": "Order Completed",
            "context": {"consent": {"categoryPreferences": {"Advertising": false}}}});
        assert!(matches!(
            c.decide(&event(3, said_no), &[], &none, &HashSet::new()),
            Decision::Drop(reason::CONSENT, None)
        ));
    }

    #[test]
    fn without_a_mapping_the_message_itself_is_forwarded() {
        let c = Compiled::new(&Config::default(), &stream(None, &[])).unwrap();
        assert!(!c.needs_profile);
        let body =
            serde_json::json!({"type": "identify", "userId": "u1", "traits": {"plan": "pro"}});
        match c.decide(
            &event(1, body.clone()),
            &[],
            &HashMap::new(),
            &HashSet::new(),
        ) {
            Decision::Forward(item) => {
                assert_eq!(serde_json::from_str::<Value>(&item.fields).unwrap(), body)
            }
            other => panic!("expected forward, got {other:?}"),
        }
    }
}
