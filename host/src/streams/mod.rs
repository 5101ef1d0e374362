//! Event streams (`[[streams]]`): every message a source commits, forwarded to a destination
//! within moments, filtered (CEL), honouring the message's `integrations`, transformed, mapped,
//! and delivered through the syncs' delivery (batches, the destination's token bucket, retries,
//! dead letters).
//!
//! A message's way, in Segment's order: its source's `transforms` → `integrations`, consent,
//! `filter` → the stream's `transforms` → `mapping` → the destination (see
//! [`StreamConfig::transforms`] for why). Transforms run over a whole page at once (one plugin
//! call per `max-batch-size`); a transient transform error retries the page where it stands
//! (the cursor does not move), a permanent one dead-letters only the messages it fails on.
//!
//! Guarantees, and how:
//! - **At least once, nothing acknowledged lost.** The tracking API answers 200 only after the
//!   commit ([`crate::ingest::writer`]), and a stream reads only committed events, numbered in
//!   commit order (`events.seq`, [`crate::store::streams::next_seq`]). A stream's cursor
//!   moves, with its counters and dead letters, in one transaction after each batch is
//!   delivered; that commit runs while the next batch is read and delivered, and lands before
//!   the next one starts, so a crash (even SIGKILL) re-sends at most the batch in flight and,
//!   if its commit had not landed yet, the one before it.
//! - **In order.** One batch in flight per stream, batches in sequence order; a record the
//!   destination itself asks to retry is re-sent after its batch-mates it accepted.
//! - **Low latency.** The writer's commit wakes every stream ([`Store::events_committed`]); a
//!   slow poll only catches events other processes (another hub, a CLI source run) commit. A
//!   woken stream lingers 20 ms ([`LINGER`]) so a burst makes one batch, and batch commits
//!   take turns with the tracking API's ([`Store::write_turn`]) on a connection that does not
//!   fsync ([`Store::begin_write_relaxed`]): neither waits out SQLite's busy handler, nor adds
//!   an fsync beside the other's.
//! - **Isolation.** Each stream is its own task with its own cursor: a destination that fails
//!   or hangs holds back only its stream.
//! - **The tracking API first.** Stream tasks run on a runtime of their own whose threads the
//!   kernel runs only when the hub's other threads leave a core free (`SCHED_IDLE`, raised
//!   again if that starves them; [`background`]), so forwarding takes spare CPU rather than
//!   time from acknowledgements. Batch commits run on the hub's runtime: they hold the write
//!   turn the tracking API's writer waits for.

mod background;
pub mod integrations;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context as _};
use serde::Serialize;
use serde_json::Value;
use tokio::sync::{broadcast, mpsc};
use tracing::Instrument as _;

use crate::config::compile::CompiledStream;
use crate::config::{Config, StreamConfig, StreamStart};
use crate::filter::Filter;
use crate::mapping::{Mapping, Subject};
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::runtime::bindings::Action;
use crate::store::profiles::{self as model, ProfileData};
use crate::store::streams as rows;
use crate::store::{now_millis, Store};
use crate::sync::delivery::{self, Abort, Item, Ledger, Stats, Target};
use crate::sync::payload_hash;
use crate::transform::{ChainOutput, Dropped, Kept, TransformChain, TransformError, Transforms};

/// Events read per query. A page is cut into batches of the destination's size; each batch is
/// committed on its own.
const PAGE: i64 = 1_000;

/// How often a stream looks for events committed by other processes when nothing woke it.
const POLL: Duration = Duration::from_secs(1);

/// How long a caught-up stream waits after a commit wakes it before it reads, and the least
/// time between two reads while it is not behind, so the commits of a burst are read, sent
/// and committed as one batch. Every batch's commit takes a turn at
/// the write lock ([`Store::write_turn`]) beside the tracking API's: one batch per tracking-API
/// commit per stream gave the ingest writer a third of the turns with two streams, and its
/// acknowledgements slowed tenfold. Costs at most this much latency.
const LINGER: Duration = Duration::from_millis(20);

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
    /// A transform (the source's or the stream's) dropped it; `transform:NAME:REASON` counts
    /// by transform and by the reason it gave.
    pub const TRANSFORM: &str = "transform";
    pub const DEAD_LETTER: &str = "dead_letter";
}

/// Runs the configured streams.
#[derive(Clone)]
pub struct StreamEngine {
    store: Store,
    /// Destination instances, their shared token buckets and the retry backoff.
    syncs: crate::sync::Engine,
    /// Where the streams' transform plugins are loaded from.
    registry: Arc<Registry>,
    /// The running streams' tasks, by name, with the settings they run with.
    tasks: Arc<Mutex<Tasks>>,
    metrics: Option<Metrics>,
    tails: Arc<Mutex<HashMap<String, broadcast::Sender<Arc<str>>>>>,
    /// Where the stream tasks run (see [`background`]), started with the first stream; None
    /// inside when it could not be started (they run on the hub's runtime then).
    background: Arc<std::sync::OnceLock<Option<Arc<background::Background>>>>,
    /// The hub's runtime, where batch commits run (they hold the write turn).
    home: tokio::runtime::Handle,
}

/// Running stream tasks by name, with the [`fingerprint`] of the settings each runs with.
type Tasks = HashMap<String, (String, tokio::task::JoinHandle<()>)>;

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
    /// Called on the hub's runtime: batch commits run there.
    pub fn new(store: Store, syncs: crate::sync::Engine, registry: Arc<Registry>) -> StreamEngine {
        StreamEngine {
            store,
            syncs,
            registry,
            tasks: Arc::default(),
            metrics: None,
            tails: Arc::default(),
            background: Arc::default(),
            home: tokio::runtime::Handle::current(),
        }
    }

    /// The runtime stream tasks run on: the background one, or the hub's if that could not
    /// be started.
    fn spawner(&self) -> tokio::runtime::Handle {
        let background = self.background.get_or_init(|| {
            background::Background::start(
                &self.home,
                self.metrics
                    .as_ref()
                    .map(|m| m.streams.threads_raised.clone()),
            )
            .map_err(|e| {
                tracing::warn!("event streams share the hub's threads: {e:#}");
            })
            .ok()
        });
        match background {
            Some(b) => b.handle().clone(),
            None => self.home.clone(),
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
        self.apply(&self.syncs.config()).await
    }

    /// SIGHUP: brings the running streams in line with `config` (which the sync engine already
    /// holds): a stream that is gone stops, a new one gets its cursor and starts, and one whose
    /// settings changed (its own, its destination's, the transforms and sources it reads,
    /// `[hub] consent_default`) stops and starts again from its cursor with them. Stopping
    /// lands between two awaits: a batch in flight is not committed and is re-sent by the new
    /// task (at least once, as after a crash). Unchanged streams are not touched.
    pub async fn reload(&self) -> anyhow::Result<()> {
        self.apply(&self.syncs.config()).await
    }

    async fn apply(&self, config: &Config) -> anyhow::Result<()> {
        let wanted: HashMap<&str, (String, &StreamConfig)> = config
            .streams
            .iter()
            .map(|s| (s.name.as_str(), (fingerprint(config, s), s)))
            .collect();
        let stopping: Vec<tokio::task::JoinHandle<()>> = {
            let mut tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
            let stale: Vec<String> = tasks
                .iter()
                .filter(|(name, (print, _))| {
                    wanted.get(name.as_str()).is_none_or(|(p, _)| p != print)
                })
                .map(|(name, _)| name.clone())
                .collect();
            stale
                .iter()
                .filter_map(|name| tasks.remove(name))
                .map(|(_, handle)| {
                    handle.abort();
                    handle
                })
                .collect()
        };
        for handle in stopping {
            // Wait until it is gone, so two tasks never forward the same stream.
            let _ = handle.await;
        }
        let mut starting = Vec::new();
        for (name, (print, stream)) in &wanted {
            let running = self
                .tasks
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains_key(*name);
            if running {
                continue;
            }
            let first = match stream.start {
                StreamStart::Now => rows::last_seq(&self.store).await?,
                StreamStart::Beginning => 0,
            };
            rows::init_cursor(&self.store, &stream.name, first, now_millis()).await?;
            starting.push((print.clone(), (*stream).clone()));
        }
        if starting.is_empty() {
            return Ok(());
        }
        let spawner = self.spawner();
        let mut tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        for (print, stream) in starting {
            let engine = self.clone();
            let name = stream.name.clone();
            let handle = spawner.spawn(async move { engine.supervise(stream).await });
            tasks.insert(name, (print, handle));
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

    /// Forwards from the stream's cursor, forever (or until an error, after which the last
    /// batch's commit is let land before the stream starts again).
    async fn run(&self, stream: &StreamConfig) -> anyhow::Result<()> {
        let mut pending: Pending = None;
        let result = self.forward_from_cursor(stream, &mut pending).await;
        let landed = settle(&mut pending).await;
        result.and(landed)
    }

    /// What forwarding a stream's messages needs, from the running project: its compiled
    /// filter and mapping, the destination (instance, token bucket, batch size), the names
    /// `integrations` may call it by, and the transform chains.
    async fn prepare(&self, stream: &StreamConfig) -> anyhow::Result<Prepared> {
        let config = self.syncs.config();
        let rule = config
            .stream(&stream.name)
            .with_context(|| format!("stream `{}` is not in the project", stream.name))?;
        let compiled = Compiled::new(&config, stream, rule);
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
        let (sources, chain) = Transforms::for_stream(&config, &self.registry, stream).await?;
        let chains = Chains {
            sources,
            stream: chain,
        };
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
        Ok(Prepared {
            compiled,
            names,
            target,
            chains,
        })
    }

    async fn forward_from_cursor(
        &self,
        stream: &StreamConfig,
        pending: &mut Pending,
    ) -> anyhow::Result<()> {
        let prepared = self.prepare(stream).await?;
        let mut cursor = rows::cursor(&self.store, &stream.name)
            .await?
            .map(|c| c.seq)
            .unwrap_or(0);
        // The reader's statements run on a thread of its own (SQLite), which does the
        // streams' work and so runs at their priority.
        let (mut reader, reads_on) =
            rows::EventReader::open(&self.store, PAGE as usize, background::current_thread).await?;
        let _adopted = match (self.background.get(), reads_on) {
            (Some(Some(background)), Some(thread)) => Some(background.adopt(thread)),
            _ => None,
        };
        let mut wake = self.store.subscribe_events();
        tracing::info!(position = cursor, "stream started");
        loop {
            // Mark the current commit seen before reading, so one that lands after the read
            // wakes the wait below.
            let _ = wake.borrow_and_update();
            let reading = std::time::Instant::now();
            let page = reader.after(cursor, PAGE).await?;
            if !page.is_empty() {
                tracing::debug!(
                    events = page.len(),
                    read_ms = reading.elapsed().as_secs_f64() * 1e3,
                    "page read"
                );
            }
            if page.is_empty() {
                // Caught up: let the last commit land (and say if it failed) before waiting.
                settle(pending).await?;
                if let Some(m) = &self.metrics {
                    m.streams.lag(&stream.name, 0.0);
                }
                tokio::select! {
                    changed = wake.changed() => {
                        if changed.is_err() {
                            tokio::time::sleep(POLL).await;
                        } else {
                            tokio::time::sleep(LINGER).await;
                        }
                    }
                    _ = tokio::time::sleep(POLL) => {}
                }
                continue;
            }
            if let (Some(Some(background)), Some(first)) = (self.background.get(), page.first()) {
                let waited = (now_millis() - first.received_at).max(0) as u64;
                background.waited(Duration::from_millis(waited));
            }
            let full = page.len() as i64 == PAGE;
            let last_received = page.last().map(|e| e.received_at).unwrap_or_default();
            cursor = self
                .forward(stream, &prepared, page, pending, &Pass::Live)
                .await?;
            if let Some(m) = &self.metrics {
                let lag = if full {
                    (now_millis() - last_received).max(0) as f64 / 1000.0
                } else {
                    0.0
                };
                m.streams.lag(&stream.name, lag);
            }
            if !full {
                // Not behind: read again no sooner than LINGER after this read began, so a
                // steady flow makes batches of LINGER's worth (at most 50 a second) rather
                // than one per tracking-API commit, each with its plugin call and commit.
                tokio::time::sleep_until((reading + LINGER).into()).await;
            }
        }
    }

    /// Forwards one page: passes each message through its source's transforms, decides it
    /// (integrations, consent, filter), passes what is kept through the stream's transforms,
    /// maps it, delivers batch by batch and commits the cursor after each batch. Returns the
    /// new cursor.
    async fn forward(
        &self,
        stream: &StreamConfig,
        prepared: &Prepared,
        page: Vec<rows::StreamEvent>,
        pending: &mut Pending,
        pass: &Pass,
    ) -> anyhow::Result<i64> {
        let Prepared {
            compiled,
            names,
            target,
            chains,
        } = prepared;
        let taken: Vec<&rows::StreamEvent> = page
            .iter()
            .filter(|e| compiled.takes_source(&e.source))
            .collect();
        let mut ids: Vec<String> = taken.iter().map(|e| e.profile_id.clone()).collect();
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
        let deciding = std::time::Instant::now();
        let mut outcomes: Vec<Outcome> = taken.iter().map(|_| Outcome::default()).collect();

        // 1. Each source's transforms, over that source's messages of the page at once.
        let mut messages: Vec<Message> = Vec::with_capacity(taken.len());
        let mut chained: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for (i, event) in taken.iter().enumerate() {
            if !chains.sources.for_source(&event.source).is_empty() {
                chained.entry(event.source.as_str()).or_default().push(i);
                continue;
            }
            match serde_json::from_str(&event.body) {
                Ok(body) => messages.push(Message {
                    event: i,
                    text: event.body.clone(),
                    body,
                }),
                Err(e) => outcomes[i].drop(reason::UNREADABLE, Some(e.to_string())),
            }
        }
        for (source, events) in &chained {
            let chain = chains.sources.for_source(source);
            let texts: Vec<String> = events.iter().map(|&i| taken[i].body.clone()).collect();
            let (out, failed) = self.transform(stream, target, &chain, &texts, pass).await?;
            for d in out.dropped {
                outcomes[events[d.input]].transform_drop(&d);
            }
            for (input, error) in failed {
                let event = taken[events[input]];
                outcomes[events[input]].dead_letter(compiled, event, event.body.clone(), error);
            }
            for kept in out.kept {
                let event = events[kept.input];
                match serde_json::from_str(&kept.message) {
                    Ok(body) => messages.push(Message {
                        event,
                        text: kept.message,
                        body,
                    }),
                    Err(e) => outcomes[event].drop(reason::UNREADABLE, Some(e.to_string())),
                }
            }
        }
        if !chained.is_empty() {
            messages.sort_by_key(|m| m.event);
        }

        // 2. Integrations, consent, the filter.
        messages.retain(|m| {
            let event = taken[m.event];
            match compiled.judge(event, &m.body, names, &profiles, &withheld) {
                None => true,
                Some((reason, detail)) => {
                    outcomes[m.event].drop(reason, detail);
                    false
                }
            }
        });

        // 3. The stream's own transforms, over what the filter kept.
        let kept: Vec<Message> = if chains.stream.is_empty() {
            messages
        } else {
            let (origins, texts): (Vec<usize>, Vec<String>) =
                messages.into_iter().map(|m| (m.event, m.text)).unzip();
            let (out, failed) = self
                .transform(stream, target, &chains.stream, &texts, pass)
                .await?;
            for d in out.dropped {
                outcomes[origins[d.input]].transform_drop(&d);
            }
            for (input, error) in failed {
                let i = origins[input];
                outcomes[i].dead_letter(compiled, taken[i], texts[input].clone(), error);
            }
            out.kept
                .into_iter()
                .filter_map(|k| {
                    let i = origins[k.input];
                    match serde_json::from_str(&k.message) {
                        Ok(body) => Some(Message {
                            event: i,
                            text: k.message,
                            body,
                        }),
                        Err(e) => {
                            outcomes[i].drop(reason::UNREADABLE, Some(e.to_string()));
                            None
                        }
                    }
                })
                .collect()
        };

        // 4. The mapping. A message the transforms fanned out into several gets one record
        // per copy, keyed `MESSAGE_ID#N` (stable across re-sends, as transforms are
        // deterministic); a single one keeps its message id as its key.
        let mut copies = vec![0usize; taken.len()];
        for m in &kept {
            copies[m.event] += 1;
        }
        let mut seen = vec![0usize; taken.len()];
        for Message {
            event: i,
            text,
            body,
        } in kept
        {
            let event = taken[i];
            let key = if copies[i] == 1 {
                event.message_id.clone()
            } else {
                seen[i] += 1;
                format!("{}#{}", event.message_id, seen[i])
            };
            let item = compiled.item(event, key, text, body, &profiles);
            outcomes[i].items.push(item);
        }

        tracing::debug!(
            events = taken.len(),
            decide_ms = deciding.elapsed().as_secs_f64() * 1e3,
            transforms = !chained.is_empty() || !chains.stream.is_empty(),
            "page decided, transformed and mapped"
        );

        // 5. Batches, in the page's order, each committed with the cursor through its last
        // message.
        let tail = self.tail_sender(&stream.name);
        let watched = tail.receiver_count() > 0;
        let size = target.batch_size.max(1);
        let mut batch = Batch::default();
        let mut cursor = page.first().map(|e| e.seq - 1).unwrap_or(0);
        let mut outcomes = outcomes.into_iter();
        for event in &page {
            cursor = event.seq;
            if !compiled.takes_source(&event.source) {
                continue;
            }
            let Some(outcome) = outcomes.next() else {
                bail!(
                    "stream `{}`: lost track of a message's outcome",
                    stream.name
                );
            };
            batch.read += 1;
            let mut items = outcome.items;
            if let Pass::Replay(replay) = pass {
                if let Some(letters) = replay.letters.get(&event.message_id) {
                    batch.replayed.extend(letters.ids.iter().cloned());
                    if let Some(keys) = &letters.keys {
                        // Only the copies that failed: the others were delivered.
                        items.retain(|i| keys.contains(&i.key));
                    }
                }
            }
            for item in items {
                batch.received.push(event.received_at);
                if watched {
                    batch.meta.push(meta(event));
                }
                batch.items.push(item);
            }
            for drop in outcome.drops {
                *batch.dropped.entry(drop.reason.to_string()).or_default() += 1;
                if let Some(counter) = drop.counter {
                    *batch.dropped_by.entry(counter).or_default() += 1;
                }
                if watched {
                    batch.lines.push(
                        serde_json::json!({
                            "seq": event.seq, "message_id": event.message_id,
                            "source": event.source, "outcome": "dropped", "reason": drop.reason,
                            "detail": drop.detail,
                        })
                        .to_string(),
                    );
                }
            }
            for (item, error) in outcome.dead {
                if watched {
                    batch.lines.push(
                        serde_json::json!({
                            "seq": event.seq, "message_id": event.message_id,
                            "source": event.source, "outcome": "dead_lettered", "reason": error,
                        })
                        .to_string(),
                    );
                }
                batch.dead.push((item, error));
            }
            if batch.items.len() >= size {
                self.finish(
                    stream,
                    target,
                    std::mem::take(&mut batch),
                    cursor,
                    &tail,
                    pending,
                    pass,
                )
                .await?;
            }
        }
        self.finish(stream, target, batch, cursor, &tail, pending, pass)
            .await?;
        Ok(cursor)
    }

    /// Runs `messages` through `chain`. A transient failure (the plugin says so, or timed out
    /// waiting on I/O) is retried, the same messages, after a pause that doubles up to a
    /// minute, for as long as it lasts: the cursor stays where it is, nothing is skipped, and
    /// `streams list` shows the error meanwhile. A failure only an operator can fix (config,
    /// credentials) stops the stream (the supervisor records it and starts again from the
    /// cursor). Any other failure is narrowed to the messages that cause it by running each
    /// alone; those come back with the error (to be dead-lettered), the others go on.
    async fn transform(
        &self,
        stream: &StreamConfig,
        target: &Target,
        chain: &TransformChain,
        messages: &[String],
        pass: &Pass,
    ) -> anyhow::Result<(ChainOutput, Vec<(usize, String)>)> {
        let mut pause = target.backoff.max(Duration::from_millis(10));
        loop {
            let result = match chain.apply(messages.to_vec()).await {
                Ok(out) => Ok((out, Vec::new())),
                Err(e) if e.is_transient() || e.needs_operator() => Err(e),
                Err(e) => {
                    tracing::warn!(
                        "{e}: running the batch's messages one by one to find the ones it fails on"
                    );
                    self.isolate(chain, messages).await
                }
            };
            match result {
                Ok(done) => return Ok(done),
                Err(e) if e.needs_operator() => {
                    bail!("stream `{}`: {e}; nothing of this page is counted, and the stream starts again from its last committed message", stream.name)
                }
                // A replay is a command someone waits on: it stops and says so; what it did
                // not finish stays pending for the next one.
                Err(e) if matches!(pass, Pass::Replay(_)) => {
                    bail!("stream `{}`: {e}; the dead letters not replayed yet stay pending: replay again later", stream.name)
                }
                Err(e) => {
                    let error =
                        format!("{e} (transient: the stream retries these messages in {pause:?})");
                    tracing::warn!(stream = %stream.name, "{error}");
                    if let Err(e) =
                        rows::set_error(&self.store, &stream.name, Some(&error), now_millis()).await
                    {
                        tracing::warn!(stream = %stream.name, "could not record the stream's error: {e}");
                    }
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(60));
                }
            }
        }
    }

    /// `messages` through `chain` one at a time: the outputs (inputs numbered as in
    /// `messages`) and the messages that fail permanently, with the error.
    async fn isolate(
        &self,
        chain: &TransformChain,
        messages: &[String],
    ) -> Result<(ChainOutput, Vec<(usize, String)>), TransformError> {
        let mut all = ChainOutput::default();
        let mut failed = Vec::new();
        for (input, message) in messages.iter().enumerate() {
            match chain.apply(vec![message.clone()]).await {
                Ok(out) => {
                    all.kept
                        .extend(out.kept.into_iter().map(|k| Kept { input, ..k }));
                    all.dropped
                        .extend(out.dropped.into_iter().map(|d| Dropped { input, ..d }));
                }
                Err(e) if e.is_transient() || e.needs_operator() => return Err(e),
                Err(e) => failed.push((input, e.to_string())),
            }
        }
        Ok((all, failed))
    }

    /// Delivers a batch and starts the commit of its outcome with the cursor `through` (after
    /// the previous batch's commit landed; see [`Pending`]).
    #[allow(clippy::too_many_arguments)] // the page's state, passed down from `forward`
    async fn finish(
        &self,
        stream: &StreamConfig,
        target: &Target,
        mut batch: Batch,
        through: i64,
        tail: &broadcast::Sender<Arc<str>>,
        pending: &mut Pending,
        pass: &Pass,
    ) -> anyhow::Result<()> {
        let ledger = Collect::default();
        let mut stats = Stats::default();
        let sent_keys: Vec<String> = batch.items.iter().map(|i| i.key.clone()).collect();
        let delivering = std::time::Instant::now();
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
        // Transform failures first (their messages never reached the destination), then the
        // records it refused.
        let mut dead: Vec<(&'static str, Item, String)> = std::mem::take(&mut batch.dead)
            .into_iter()
            .map(|(item, error)| (rows::letter_kind::TRANSFORM, item, error))
            .collect();
        dead.extend(
            ledger
                .dead
                .into_inner()
                .unwrap_or_else(|p| p.into_inner())
                .into_iter()
                .map(|(item, error)| (rows::letter_kind::RECORD, item, error)),
        );
        let acked = ledger.acked.into_inner().unwrap_or_else(|p| p.into_inner());
        let dead_name = format!("stream:{}", stream.name);
        let read = match pass {
            Pass::Live => ("in".to_string(), batch.read as i64),
            Pass::Replay(_) => ("replayed".to_string(), batch.replayed.len() as i64),
        };
        let mut counters: Vec<(String, i64)> = vec![
            read,
            ("out".into(), acked.len() as i64),
            ("retried".into(), stats.retried as i64),
        ];
        for (reason, n) in &batch.dropped {
            counters.push((format!("dropped:{reason}"), *n as i64));
        }
        for (counter, n) in &batch.dropped_by {
            counters.push((counter.clone(), *n as i64));
        }
        if !dead.is_empty() {
            counters.push((
                format!("dropped:{}", reason::DEAD_LETTER),
                dead.len() as i64,
            ));
        }
        let delivered = delivering.elapsed();
        // The previous batch's commit lands before this one's is started: cursors move in
        // order, and besides the batch being delivered at most one is delivered and not yet
        // committed. Its commit runs while the next batch is read and delivered, so a stream's
        // latency does not wait for its turn at the write lock.
        settle(pending).await?;
        if let Pass::Replay(replay) = pass {
            let mut tally = replay.tally.lock().unwrap_or_else(|p| p.into_inner());
            tally.letters += batch.replayed.len() as u64;
            tally.sent += acked.len() as u64;
            tally.dropped += batch.dropped.values().sum::<u64>();
            tally.dead_lettered += dead.len() as u64;
        }
        let owned = OwnedCommit {
            stream: stream.name.clone(),
            dead_letter_name: dead_name,
            seq: matches!(pass, Pass::Live).then_some(through),
            replayed: std::mem::take(&mut batch.replayed),
            counters,
            dead: dead.clone(),
        };
        let store = self.store.clone();
        let records = sent_keys.len();
        *pending = Some(
            self.home.spawn(
                async move {
                    let committing = std::time::Instant::now();
                    owned.commit(&store).await?;
                    tracing::debug!(
                        records,
                        deliver_ms = delivered.as_secs_f64() * 1e3,
                        commit_ms = committing.elapsed().as_secs_f64() * 1e3,
                        "batch delivered and committed"
                    );
                    Ok(())
                }
                .in_current_span(),
            ),
        );
        let now = now_millis();
        if let Some(m) = &self.metrics {
            let mut dropped: Vec<(&str, u64)> = batch
                .dropped
                .iter()
                .map(|(r, n)| (r.as_str(), *n))
                .collect();
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
                .chain(dead.iter().map(|(_, i, r)| (i.key.as_str(), r.as_str())))
                .collect();
            for line in batch.lines {
                let _ = tail.send(line.into());
            }
            let fields: HashMap<&str, &str> = acked
                .iter()
                .map(|i| (i.key.as_str(), i.fields.as_str()))
                .chain(
                    dead.iter()
                        .map(|(_, i, _)| (i.key.as_str(), i.fields.as_str())),
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

    /// Sends a stream's dead letters again, each the way its message goes now: the letters
    /// of messages a transform failed on go back through the whole chain (the source's
    /// transforms, `integrations`, consent and the filter, the stream's transforms, the
    /// mapping), and so do refused records, re-made from their stored message (so a fixed
    /// mapping or transform applies, and a profile that withdrew consent gets nothing);
    /// of a fanned-out message only the refused copies are sent. Letters whose message is no
    /// longer stored (erased, past retention) are marked replayed and counted `gone`; what
    /// fails again is dead-lettered anew. Each batch marks its letters replayed in the commit
    /// of its outcome, so a replay stopped midway leaves the rest pending; one replay per
    /// stream at a time (a lease), beside the live stream, whose cursor it does not touch.
    /// Replayed messages reach the destination after newer ones: a replay is out of order.
    pub async fn replay(&self, name: &str, holder: &str) -> anyhow::Result<ReplayReport> {
        let config = self.syncs.config();
        let stream = config
            .stream_named(name)
            .map_err(|e| crate::runs::RunError::NotFound(e.to_string()))?
            .clone();
        let scope = format!("stream:{name}");
        let run_id = uuid::Uuid::new_v4().to_string();
        let lease = crate::runs::lease::Lease::acquire(
            &self.store,
            crate::runs::lease::STREAM_REPLAY,
            &scope,
            holder,
            &run_id,
        )
        .await?;
        let span = tracing::info_span!("stream_replay", stream = %name, run = %run_id);
        let result = self.replay_letters(&stream, &scope).instrument(span).await;
        lease.release(&self.store).await;
        result
    }

    async fn replay_letters(
        &self,
        stream: &StreamConfig,
        scope: &str,
    ) -> anyhow::Result<ReplayReport> {
        let mut report = ReplayReport {
            stream: stream.name.clone(),
            ..ReplayReport::default()
        };
        // The letters pending now: what fails again is filed anew and waits for the next one.
        let letters = rows::pending_letters(&self.store, scope).await?;
        if letters.is_empty() {
            return Ok(report);
        }
        let prepared = self.prepare(stream).await?;
        // Settled after each page's forwarding: nothing is pending where `?` returns.
        let mut pending: Pending = None;
        for chunk in letters.chunks(PAGE as usize) {
            let mut ids: Vec<String> = chunk
                .iter()
                .flat_map(|l| {
                    let base = l.key.rsplit_once('#').map(|(id, _)| id.to_string());
                    std::iter::once(l.key.clone()).chain(base)
                })
                .collect();
            ids.sort();
            ids.dedup();
            let events = rows::events_by_id(&self.store, &ids).await?;
            let stored: HashSet<&str> = events.iter().map(|e| e.message_id.as_str()).collect();
            let (mut by_message, gone) = group_letters(chunk, &stored);
            // A message from a source the stream no longer reads is dropped now.
            let (page, unread): (Vec<_>, Vec<_>) = events
                .into_iter()
                .filter(|e| by_message.contains_key(&e.message_id))
                .partition(|e| prepared.compiled.takes_source(&e.source));
            let unread: Vec<String> = unread
                .iter()
                .filter_map(|e| by_message.remove(&e.message_id))
                .flat_map(|l| l.ids)
                .collect();
            if !gone.is_empty() || !unread.is_empty() {
                let mut closed = gone.clone();
                closed.extend(unread.iter().cloned());
                let counters = [
                    ("replayed".to_string(), closed.len() as i64),
                    ("replay:gone".to_string(), gone.len() as i64),
                    ("dropped:source".to_string(), unread.len() as i64),
                ];
                let commit = rows::BatchCommit {
                    stream: &stream.name,
                    dead_letter_name: scope,
                    seq: None,
                    replayed: &closed,
                    counters: &counters,
                    dead: Vec::new(),
                };
                rows::commit_batch(&self.store, &commit, now_millis()).await?;
                report.letters += closed.len() as u64;
                report.gone += gone.len() as u64;
                report.dropped += unread.len() as u64;
            }
            if page.is_empty() {
                continue;
            }
            let pass = Pass::Replay(Replay {
                letters: by_message,
                tally: Mutex::default(),
            });
            let forwarded = self
                .forward(stream, &prepared, page, &mut pending, &pass)
                .await;
            let landed = settle(&mut pending).await;
            if let Pass::Replay(replay) = pass {
                let tally = replay.tally.into_inner().unwrap_or_else(|p| p.into_inner());
                report.letters += tally.letters;
                report.sent += tally.sent;
                report.dropped += tally.dropped;
                report.dead_lettered += tally.dead_lettered;
            }
            forwarded.and(landed)?;
        }
        tracing::info!(
            letters = report.letters,
            sent = report.sent,
            dropped = report.dropped,
            dead_lettered = report.dead_lettered,
            gone = report.gone,
            "dead letters replayed"
        );
        Ok(report)
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

/// Everything a stream's task runs with, as text: when it changes, a reload restarts the
/// stream. (Secrets are compared as written, `${ENV}` and all.)
fn fingerprint(config: &Config, stream: &StreamConfig) -> String {
    let reads = |source: &str| stream.from.is_empty() || stream.from.iter().any(|f| f == source);
    let sources: Vec<(&String, &Vec<String>)> = config
        .sources
        .iter()
        .filter(|(name, _)| reads(name))
        .map(|(name, s)| (name, &s.transforms))
        .collect();
    format!(
        "{stream:?}\n{:?}\n{sources:?}\n{:?}\n{:?}",
        config.destinations.get(&stream.to),
        config.transforms,
        config.hub.consent_default
    )
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
    /// Drops by reason (the `dropped:REASON` counters and the metric's label).
    dropped: BTreeMap<String, u64>,
    /// Finer counters of some drops: `transform:NAME:REASON`.
    dropped_by: BTreeMap<String, u64>,
    /// Messages a transform failed on for good, dead-lettered with this batch.
    dead: Vec<(Item, String)>,
    /// A replay's batch: the dead letters (ids) its messages answer for.
    replayed: Vec<String>,
}

/// The commit of the last batch delivered, running while the next one is read and delivered.
type Pending = Option<tokio::task::JoinHandle<anyhow::Result<()>>>;

/// Waits for the pending commit, if any, and passes on its error.
async fn settle(pending: &mut Pending) -> anyhow::Result<()> {
    match pending.take() {
        None => Ok(()),
        Some(commit) => commit
            .await
            .map_err(|e| anyhow::anyhow!("a stream's batch commit stopped: {e}"))?,
    }
}

/// A batch's outcome to commit, owned so the commit can run on its own task.
struct OwnedCommit {
    stream: String,
    dead_letter_name: String,
    /// The cursor through the batch (None for a replay's).
    seq: Option<i64>,
    replayed: Vec<String>,
    counters: Vec<(String, i64)>,
    /// What was dead-lettered, with its [`rows::letter_kind`].
    dead: Vec<(&'static str, Item, String)>,
}

impl OwnedCommit {
    async fn commit(&self, store: &Store) -> anyhow::Result<()> {
        let hashes: Vec<String> = self
            .dead
            .iter()
            .map(|(_, item, _)| payload_hash(&item.fields))
            .collect();
        let commit = rows::BatchCommit {
            stream: &self.stream,
            dead_letter_name: &self.dead_letter_name,
            seq: self.seq,
            replayed: &self.replayed,
            counters: &self.counters,
            dead: self
                .dead
                .iter()
                .zip(&hashes)
                .map(|((kind, item, reason), hash)| rows::DeadEvent {
                    kind,
                    key: &item.key,
                    hash,
                    fields: &item.fields,
                    attempts: item.attempts.max(1) as i64,
                    reason,
                })
                .collect(),
        };
        rows::commit_batch(store, &commit, now_millis()).await?;
        Ok(())
    }
}

/// What [`StreamEngine::prepare`] gives a stream's forwarding.
struct Prepared {
    compiled: Compiled,
    names: Vec<String>,
    target: Target,
    chains: Chains,
}

/// Whose page is forwarded: the live stream's (its batches move the cursor) or a replay's
/// (its batches mark the dead letters they answer for replayed; the cursor stays).
enum Pass {
    Live,
    Replay(Replay),
}

/// A replay's page: per message id, the letters it answers for, and what it adds up to.
#[derive(Default)]
struct Replay {
    letters: HashMap<String, Letters>,
    tally: Mutex<ReplayReport>,
}

/// The dead letters of one message.
#[derive(Debug, Default, PartialEq)]
struct Letters {
    ids: Vec<String>,
    /// The records to send again: None for every record the message makes now (a transform
    /// failed on it, or its one record was refused); the refused copies' keys when a
    /// transform had fanned it out and only some were refused.
    keys: Option<HashSet<String>>,
}

/// What a replay of a stream's dead letters did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReplayReport {
    pub stream: String,
    /// Dead letters replayed, each marked so with its outcome's commit.
    pub letters: u64,
    /// Records the destination accepted.
    pub sent: u64,
    /// Messages the stream drops now (its filter, consent, `integrations`, a transform, a
    /// source it no longer reads).
    pub dropped: u64,
    /// Messages or records that failed again: new dead letters.
    pub dead_lettered: u64,
    /// Letters whose message is no longer stored (erased, or past retention): nothing sent.
    pub gone: u64,
}

/// The stored message a stream dead letter's key names: the key itself, or for the Nth copy
/// of a fanned-out message (`MESSAGE_ID#N`), the message id before the `#`.
fn message_of<'a>(key: &'a str, stored: &HashSet<&str>) -> Option<&'a str> {
    if stored.contains(key) {
        return Some(key);
    }
    let (id, n) = key.rsplit_once('#')?;
    (n.parse::<u32>().is_ok() && stored.contains(id)).then_some(id)
}

/// Groups a stream's pending letters by the message each names: what a replay sends for each,
/// and the letters whose message is no longer stored.
fn group_letters(
    letters: &[rows::PendingLetter],
    stored: &HashSet<&str>,
) -> (HashMap<String, Letters>, Vec<String>) {
    let mut by_message: HashMap<String, Letters> = HashMap::new();
    let mut gone = Vec::new();
    for letter in letters {
        let Some(id) = message_of(&letter.key, stored) else {
            gone.push(letter.id.clone());
            continue;
        };
        let entry = by_message.entry(id.to_string()).or_insert_with(|| Letters {
            ids: Vec::new(),
            keys: Some(HashSet::new()),
        });
        entry.ids.push(letter.id.clone());
        if letter.kind == rows::letter_kind::TRANSFORM || letter.key == id {
            entry.keys = None;
        } else if let Some(keys) = &mut entry.keys {
            keys.insert(letter.key.clone());
        }
    }
    (by_message, gone)
}

/// The chains a stream applies: its sources' (before the filter) and its own (after).
struct Chains {
    sources: Transforms,
    stream: TransformChain,
}

/// A message on its way through a page: the event it came from (an index into the page's
/// taken events), as text and parsed.
struct Message {
    event: usize,
    text: String,
    body: Value,
}

/// What became of one event of a page: the records it makes (several when a transform fans
/// it out), what was dropped and why, what was dead-lettered.
#[derive(Default)]
struct Outcome {
    items: Vec<Item>,
    drops: Vec<Discarded>,
    dead: Vec<(Item, String)>,
}

/// One drop: the reason counted (`dropped:REASON`), a finer counter, a detail for `tail`.
struct Discarded {
    reason: &'static str,
    counter: Option<String>,
    detail: Option<String>,
}

impl Outcome {
    fn drop(&mut self, reason: &'static str, detail: Option<String>) {
        self.drops.push(Discarded {
            reason,
            counter: None,
            detail,
        });
    }

    fn transform_drop(&mut self, dropped: &Dropped) {
        self.drops.push(Discarded {
            reason: reason::TRANSFORM,
            counter: Some(format!(
                "transform:{}:{}",
                dropped.transform, dropped.reason
            )),
            detail: Some(format!("{}: {}", dropped.transform, dropped.reason)),
        });
    }

    /// A message a transform failed on for good: `message` is filed as the dead letter's
    /// fields, under the event's message id.
    fn dead_letter(
        &mut self,
        compiled: &Compiled,
        event: &rows::StreamEvent,
        message: String,
        error: String,
    ) {
        let item = Item {
            delivery_id: crate::sync::delivery_id::for_event(&compiled.scope, &event.message_id),
            previous_fields: None,
            key: event.message_id.clone(),
            hash: String::new(),
            fields: message,
            attempts: 1,
            last_error: Some(error.clone()),
        };
        self.dead.push((item, error));
    }
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

/// What happens to one message (in the unit tests).
#[cfg(test)]
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
    /// The stream's own settings with its filter and mapping as the project compiled them.
    fn new(config: &Config, stream: &StreamConfig, rule: &CompiledStream) -> Compiled {
        let filter = rule.filter.clone();
        let mapping = rule.mapping.clone();
        let profile_paths = stream.mapping.values().any(|v| match v {
            crate::config::MappingValue::Path(p) => !p.starts_with("event."),
            _ => false,
        });
        let profile_filter = stream.filter.as_deref().is_some_and(|f| {
            ["traits", "identifiers", "events", "event_list"]
                .iter()
                .any(|name| mentions(f, name))
        });
        Compiled {
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
        }
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

    /// None when the message goes on; otherwise why it is dropped (a counter) and a detail
    /// for `tail`. `integrations` first, then consent, then the filter.
    fn judge(
        &self,
        event: &rows::StreamEvent,
        body: &Value,
        names: &[String],
        profiles: &HashMap<String, ProfileData>,
        withheld: &HashSet<String>,
    ) -> Option<(&'static str, Option<String>)> {
        if !integrations::enabled(body.get("integrations"), names) {
            return Some((reason::INTEGRATIONS, None));
        }
        if !self.consent.is_empty()
            && (withheld.contains(&event.profile_id)
                || !crate::consent::event_allows(body, &self.consent))
        {
            return Some((reason::CONSENT, None));
        }
        if let Some(filter) = &self.filter {
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
            match filter.matches(profile, Some(body)) {
                Ok(true) => {}
                Ok(false) => return Some((reason::FILTER, None)),
                Err(e) => return Some((reason::FILTER_ERROR, Some(e))),
            }
        }
        None
    }

    /// The record the message makes (as the transforms left it: `text`, and parsed, `body`),
    /// keyed `key`. Without a mapping, the message's own text: it parsed, and writing the
    /// parsed value out again only costs time.
    fn item(
        &self,
        event: &rows::StreamEvent,
        key: String,
        text: String,
        body: Value,
        profiles: &HashMap<String, ProfileData>,
    ) -> Item {
        let text = match &self.mapping {
            None => text,
            Some(mapping) => {
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
                Value::Object(mapping.apply(&Subject {
                    profile_id: &profile.id,
                    created_at: profile.created_at,
                    updated_at: profile.updated_at,
                    traits: &profile.traits,
                    identifiers: &profile.identifiers,
                    event: Some(&body),
                }))
                .to_string()
            }
        };
        Item {
            // Stable across retries and re-sends after a crash: derived from the record's key
            // (the message id), per stream, as events syncs derive theirs.
            delivery_id: crate::sync::delivery_id::for_event(&self.scope, &key),
            previous_fields: None,
            key,
            // A stream keeps no state of what it sent: the hash is only a dead letter's,
            // computed when one is filed (OwnedCommit).
            hash: String::new(),
            fields: text,
            attempts: 0,
            last_error: None,
        }
    }

    /// A message without transforms: judged, then mapped (the unit tests' shortcut).
    #[cfg(test)]
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
        match self.judge(event, &body, names, profiles, withheld) {
            Some((reason, detail)) => Decision::Drop(reason, detail),
            None => Decision::Forward(self.item(
                event,
                event.message_id.clone(),
                event.body.clone(),
                body,
                profiles,
            )),
        }
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
        let c = Compiled::new(
            &Config::default(),
            &s,
            &CompiledStream::compile(&s).unwrap(),
        );
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
        let c = Compiled::new(
            &config,
            &stream(None, &[]),
            &CompiledStream::compile(&stream(None, &[])).unwrap(),
        );
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
    fn a_replay_sends_what_each_letter_names_and_knows_the_gone_ones() {
        let letter = |id: &str, key: &str, kind: &str| rows::PendingLetter {
            id: id.into(),
            key: key.into(),
            kind: kind.into(),
        };
        let stored: HashSet<&str> = ["m1", "m#2", "m3", "m4"].into();
        let letters = [
            // The 2nd and 3rd copies of a fanned-out m1 were refused: only they go again.
            letter("a", "m1#2", rows::letter_kind::RECORD),
            letter("b", "m1#3", rows::letter_kind::RECORD),
            // A message id with a `#` of its own is itself, not a copy.
            letter("c", "m#2", rows::letter_kind::RECORD),
            // A transform failed on m3: everything it makes now goes.
            letter("d", "m3", rows::letter_kind::TRANSFORM),
            // m4's one record was refused, and later one of its copies: all of it goes.
            letter("e", "m4#1", rows::letter_kind::RECORD),
            letter("f", "m4", rows::letter_kind::RECORD),
            // Erased, or past retention.
            letter("g", "m5", rows::letter_kind::RECORD),
            letter("h", "m5#1", rows::letter_kind::RECORD),
        ];
        let (by_message, gone) = group_letters(&letters, &stored);
        assert_eq!(gone, ["g", "h"]);
        assert_eq!(by_message.len(), 4);
        assert_eq!(
            by_message["m1"],
            Letters {
                ids: vec!["a".into(), "b".into()],
                keys: Some(["m1#2".to_string(), "m1#3".to_string()].into()),
            }
        );
        assert_eq!(by_message["m#2"].keys, None);
        assert_eq!(by_message["m3"].keys, None);
        assert_eq!(by_message["m4"].ids, ["e", "f"]);
        assert_eq!(by_message["m4"].keys, None);
        assert_eq!(message_of("m1#x", &stored), None, "only a number is a copy");
    }

    #[test]
    fn without_a_mapping_the_message_itself_is_forwarded() {
        let c = Compiled::new(
            &Config::default(),
            &stream(None, &[]),
            &CompiledStream::compile(&stream(None, &[])).unwrap(),
        );
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
