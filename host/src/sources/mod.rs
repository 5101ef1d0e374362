//! Source runs: records read by a source plugin (pull, page by page) or pushed to it (webhooks)
//! become profiles, traits and events through the same identity resolution as the tracking API.
//!
//! Each page is committed in one transaction together with the stream's new cursor, so a run
//! killed at any moment resumes from the last committed page: nothing is lost (the cursor never
//! moves past records that are not stored) and nothing is applied twice (events carry
//! deterministic message ids, traits are last-writer-wins by the record's own update time, and
//! identity resolution of the same identifiers is idempotent). One run per source at a time,
//! across hubs too: a lease row in the database, renewed while the run goes and checked inside
//! every page's transaction.
//!
//! A run is capped in pages and in wall time (`max_pages_per_run`, `max_run_time`): a source
//! that never says it is done stops as `capped` with what it read committed, and the next run
//! resumes from its cursor.

pub mod scheduler;
pub mod webhook;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use serde::Serialize;
use serde_json::Value;
use tracing::Instrument as _;

use crate::config::compile::Project;
use crate::config::{RunCaps, SourceConfig, SourceStreamConfig};
use crate::identity::batch::{Batch, NewEvent};
use crate::identity::{Identifier, IdentityRules};
use crate::metrics::Metrics;
use crate::registry::Registry;
pub use crate::runs::iso;
use crate::runs::lease::{self, Lease};
use crate::runs::{RunError, RunStatus};
use crate::runtime::bindings::{CallError, Page, SourceRecord};
use crate::runtime::{PluginError, PluginInstance};
use crate::store::runs::RunKind;
use crate::store::sources as rows;
use crate::store::{now_millis, Conn, Store};

/// Attempts per page when `read` fails transiently (429, 5xx, network);
/// `SWITCHYARD_SOURCE_ATTEMPTS` overrides it.
fn max_attempts() -> u32 {
    std::env::var("SWITCHYARD_SOURCE_ATTEMPTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|v| *v >= 1)
        .unwrap_or(5)
}

/// The longest wait honoured for one retry, whatever the API asks (a day-long Retry-After would
/// otherwise hold the lease for a day).
const MAX_WAIT: Duration = Duration::from_secs(120);

/// Options of one run.
#[derive(Debug, Clone, Copy, Default)]
pub struct RunOptions {
    /// Read every stream from the beginning instead of from its stored cursor.
    pub full_refresh: bool,
}

/// One run, as recorded in the history.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    pub id: String,
    pub source: String,
    /// `running`, `succeeded`, `failed`, `capped` (it reached `max_pages_per_run` or
    /// `max_run_time`; what it read is committed and the next run resumes from the stored
    /// cursor) or `interrupted` (its process died; the next run resumed from the last
    /// committed page).
    pub status: RunStatus,
    pub full_refresh: bool,
    pub started_at: String,
    pub finished_at: Option<String>,
    pub duration_ms: Option<i64>,
    pub pages: i64,
    pub records: i64,
    pub events: i64,
    pub retries: i64,
    pub error: Option<String>,
}

/// Why a run stopped before its streams were done: one of its caps. Callers tell it from a
/// failure by downcasting (the run's status is then `capped`).
#[derive(Debug, thiserror::Error)]
pub enum RunCapped {
    #[error("stopped at the cap of {pages} pages per run ([sources.{name}] max_pages_per_run); every page read is committed and the next run resumes from the stored cursor")]
    Pages { name: String, pages: u64 },
    #[error("stopped at the cap of {} per run ([sources.{name}] max_run_time); every page read is committed and the next run resumes from the stored cursor", humantime::format_duration(*.limit))]
    Time { name: String, limit: Duration },
}

/// Progress of a run, for a terminal's progress bar.
pub trait Progress: Send + Sync {
    /// Records committed so far in this run, and the stream being read.
    fn records(&self, stream: &str, done: u64);
}

/// Runs sources and applies webhook deliveries against the store and the installed plugins.
#[derive(Clone)]
pub struct SourceEngine {
    store: Store,
    registry: Arc<Registry>,
    /// The config runs and webhooks start with, and its identity rules; swapped by `reload`.
    loaded: Arc<RwLock<Arc<Loaded>>>,
    metrics: Option<Metrics>,
    holder: Arc<str>,
    /// Configured instances by source name, built on first use (webhooks call them often).
    instances: Arc<Mutex<HashMap<String, PluginInstance>>>,
    /// First retry delay when the plugin names none.
    pub backoff: Duration,
}

/// A config and the identity rules compiled from it.
struct Loaded {
    config: Arc<Project>,
    rules: IdentityRules,
}

impl Loaded {
    fn new(config: Arc<Project>) -> Arc<Loaded> {
        Arc::new(Loaded {
            rules: IdentityRules::new(&config.identity),
            config,
        })
    }
}

/// What applying a batch of records did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Applied {
    /// Records resolved to a profile and stored.
    pub records: u64,
    /// Events stored for the first time (re-reads of the same event are not counted).
    pub events: u64,
    /// Records without any mapped identifier (or of an unmapped stream): nothing to join on.
    pub skipped: u64,
    /// Records whose identifiers a privacy erasure suppressed.
    pub suppressed: u64,
}

impl SourceEngine {
    pub fn new(store: Store, registry: Arc<Registry>, config: Arc<Project>) -> SourceEngine {
        let backoff = std::env::var("SWITCHYARD_RETRY_BASE_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .map(Duration::from_millis)
            .unwrap_or(Duration::from_millis(500));
        SourceEngine {
            store,
            registry,
            loaded: Arc::new(RwLock::new(Loaded::new(config))),
            metrics: None,
            holder: uuid::Uuid::new_v4().to_string().into(),
            instances: Arc::default(),
            backoff,
        }
    }

    pub fn with_metrics(mut self, metrics: Metrics) -> SourceEngine {
        self.metrics = Some(metrics);
        self
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    fn loaded(&self) -> Arc<Loaded> {
        match self.loaded.read() {
            Ok(l) => l.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// The config runs and webhooks start with; runs in flight keep the one they started with.
    pub fn config(&self) -> Arc<Project> {
        self.loaded().config.clone()
    }

    /// Swaps in a new config (SIGHUP); in-flight runs are not disturbed. Plugin instances are
    /// built again from the new config when next used.
    pub fn reload(&self, config: Arc<Project>) {
        let loaded = Loaded::new(config);
        match self.loaded.write() {
            Ok(mut l) => *l = loaded,
            Err(poisoned) => *poisoned.into_inner() = loaded,
        }
        lock(&self.instances).clear();
    }

    /// The `[sources.NAME]` block of a plugin source, or [`RunError::NotFound`] listing them.
    pub fn source(&self, name: &str) -> anyhow::Result<SourceConfig> {
        let config = self.config();
        let defined = || {
            let v: Vec<&str> = config
                .sources
                .iter()
                .filter(|(_, s)| s.plugin.is_some())
                .map(|(n, _)| n.as_str())
                .collect();
            if v.is_empty() {
                "none".to_string()
            } else {
                v.join(", ")
            }
        };
        let missing = match config.sources.get(name) {
            Some(s) if s.plugin.is_some() => return Ok(s.clone()),
            Some(_) => format!(
                "[sources.{name}] has no plugin (it only holds tracking-API write keys); plugin sources: {}",
                defined()
            ),
            None => format!("no source named `{name}` (plugin sources: {})", defined()),
        };
        Err(RunError::NotFound(missing).into())
    }

    /// The configured plugin instance of a source (built once per process).
    pub async fn instance(&self, name: &str) -> anyhow::Result<PluginInstance> {
        if let Some(i) = lock(&self.instances).get(name) {
            return Ok(i.clone());
        }
        let source = self.source(name)?;
        let block = source
            .block(name)
            .with_context(|| format!("[sources.{name}] has no `plugin` to read with"))?;
        let instance = self.registry.instance(&block).await?;
        lock(&self.instances).insert(name.to_string(), instance.clone());
        Ok(instance)
    }

    /// Runs a source now: every configured stream, page by page. Fails at once if another run
    /// of it holds the lease.
    pub async fn run(
        &self,
        name: &str,
        options: RunOptions,
        progress: Option<Arc<dyn Progress>>,
    ) -> anyhow::Result<RunReport> {
        let source = self.source(name)?;
        // The caps compiled with the project (defaults for a source not in it any more).
        let caps = self
            .config()
            .source(name)
            .map(|c| c.caps)
            .unwrap_or_default();
        let span =
            tracing::info_span!("source_run", source = %name, full_refresh = options.full_refresh);
        self.run_inner(name, &source, caps, options, progress)
            .instrument(span)
            .await
    }

    async fn run_inner(
        &self,
        name: &str,
        source: &SourceConfig,
        caps: RunCaps,
        options: RunOptions,
        progress: Option<Arc<dyn Progress>>,
    ) -> anyhow::Result<RunReport> {
        let run_id = uuid::Uuid::new_v4().to_string();
        let started = Instant::now();
        let started_at = now_millis();
        let lease = Lease::acquire(&self.store, lease::SOURCE, name, &self.holder, &run_id).await?;
        rows::start_run(&self.store, &run_id, name, started_at, options.full_refresh).await?;
        let mut ctx = RunContext {
            engine: self,
            source_name: name,
            run_id: &run_id,
            lease: &lease,
            total: Applied::default(),
            progress,
            caps,
            deadline: tokio::time::Instant::now() + caps.time,
            pages: 0,
        };
        let result = ctx.read_streams(source, options).await;
        let (status, error) = match &result {
            Ok(()) => (RunStatus::Succeeded, None),
            Err(e) if e.downcast_ref::<RunCapped>().is_some() => {
                (RunStatus::Capped, Some(format!("{e:#}")))
            }
            Err(e) => (RunStatus::Failed, Some(format!("{e:#}"))),
        };
        crate::store::runs::finish_run(
            &self.store,
            RunKind::Source,
            &run_id,
            status.as_str(),
            now_millis(),
            error.as_deref(),
        )
        .await?;
        lease.release(&self.store).await;
        if let Some(m) = &self.metrics {
            m.sources
                .run(name, status.as_str(), started.elapsed().as_secs_f64());
        }
        let report = self
            .runs(name, 5)
            .await?
            .into_iter()
            .find(|r| r.id == run_id)
            .context("the run's history row is missing")?;
        match &report.error {
            None => tracing::info!(
                pages = report.pages,
                records = report.records,
                events = report.events,
                "source run finished"
            ),
            Some(e) => tracing::warn!(
                pages = report.pages,
                records = report.records,
                "source run failed: {e}"
            ),
        }
        Ok(report)
    }

    /// The newest runs of a source, newest first.
    pub async fn runs(&self, source: &str, limit: i64) -> anyhow::Result<Vec<RunReport>> {
        let history = rows::runs(&self.store, source, limit).await?;
        Ok(history
            .into_iter()
            .map(|r| RunReport {
                duration_ms: r.finished_at.map(|f| f - r.started_at),
                started_at: iso(r.started_at),
                finished_at: r.finished_at.map(iso),
                id: r.id,
                source: r.source,
                status: RunStatus::parse(&r.status),
                full_refresh: r.full_refresh,
                pages: r.pages,
                records: r.records,
                events: r.events,
                retries: r.retries,
                error: r.error,
            })
            .collect())
    }

    /// The stored cursor of each stream of a source: (stream, cursor, done).
    pub async fn cursors(
        &self,
        source: &str,
    ) -> anyhow::Result<Vec<(String, Option<String>, bool)>> {
        Ok(rows::cursors(&self.store, source).await?)
    }

    /// Applies records (of one page or one webhook delivery) inside the caller's transaction.
    pub(crate) async fn apply(
        &self,
        conn: &mut Conn,
        source: &str,
        records: &[(&str, &SourceRecord)],
    ) -> anyhow::Result<Applied> {
        let loaded = self.loaded();
        let mappings = &self.source(source)?.streams;
        apply_records(
            conn,
            self.store.backend(),
            &loaded.rules,
            source,
            mappings,
            records,
        )
        .await
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

struct RunContext<'a> {
    engine: &'a SourceEngine,
    source_name: &'a str,
    run_id: &'a str,
    lease: &'a Lease,
    total: Applied,
    progress: Option<Arc<dyn Progress>>,
    caps: RunCaps,
    /// When the run reaches `max_run_time`.
    deadline: tokio::time::Instant,
    /// Pages committed in this run, all streams together.
    pages: u64,
}

impl RunContext<'_> {
    async fn read_streams(
        &mut self,
        source: &SourceConfig,
        options: RunOptions,
    ) -> anyhow::Result<()> {
        let engine = self.engine;
        let name = self.source_name;
        let instance = engine.instance(name).await?;
        let offered = instance
            .streams()
            .await
            .with_context(|| format!("listing the streams of source `{name}`"))?;
        for stream in source.streams.keys() {
            if !offered.iter().any(|s| &s.name == stream) {
                bail!(
                    "[sources.{name}.streams.{stream}]: plugin `{}` offers no stream `{stream}` (it offers: {})",
                    instance.plugin().name(),
                    offered.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(", ")
                );
            }
        }
        for stream in source.streams.keys() {
            let span = tracing::info_span!("source_stream", stream = %stream);
            self.read_stream(&instance, stream, options)
                .instrument(span)
                .await?;
        }
        Ok(())
    }

    async fn read_stream(
        &mut self,
        instance: &PluginInstance,
        stream: &str,
        options: RunOptions,
    ) -> anyhow::Result<()> {
        let engine = self.engine;
        let name = self.source_name;
        self.check_caps()?;
        let mut cursor: Option<String> = if options.full_refresh {
            None
        } else {
            rows::cursor(&engine.store, name, stream).await?
        };
        // One page read ahead: the plugin reads page N+1 (on another thread) while page N is
        // being committed. Only committed pages move the stored cursor, so a crash still
        // resumes after the last committed page; a read-ahead page is simply read again.
        let mut page_no = 1u64;
        let mut pending = self.spawn_read(instance, stream, cursor.clone(), page_no);
        loop {
            // A read (with its retries and waits) is cut short at the run's deadline.
            let page = match tokio::time::timeout_at(self.deadline, &mut pending).await {
                Ok(read) => read.context("the page reader stopped")??,
                Err(_) => {
                    pending.abort();
                    return Err(self.time_capped().into());
                }
            };
            if !page.done && page.cursor.is_none() {
                bail!(
                    "plugin `{}` broke the contract: stream `{stream}` returned a page that is not `done` but has no cursor to continue from",
                    instance.plugin().name()
                );
            }
            if !page.done && page.records.is_empty() && page.cursor == cursor {
                bail!(
                    "plugin `{}` broke the contract: stream `{stream}` returned an empty page with the same cursor and not `done`; stopping rather than looping",
                    instance.plugin().name()
                );
            }
            // No page is read ahead past the page cap.
            let next = (!page.done && self.pages + 1 < self.caps.pages)
                .then(|| self.spawn_read(instance, stream, page.cursor.clone(), page_no + 1));
            let span =
                tracing::debug_span!("source_page", page = page_no, records = page.records.len());
            let applied = match self.commit_page(stream, &page).instrument(span).await {
                Ok(a) => a,
                Err(e) => {
                    if let Some(n) = next {
                        n.abort();
                    }
                    return Err(e);
                }
            };
            self.pages += 1;
            self.total.records += applied.records;
            self.total.events += applied.events;
            self.total.skipped += applied.skipped;
            self.total.suppressed += applied.suppressed;
            if let Some(m) = &engine.metrics {
                let read = page.records.len() as u64;
                m.sources
                    .page(name, stream, read, applied.records, applied.events);
            }
            if let Some(p) = &self.progress {
                p.records(
                    stream,
                    self.total.records + self.total.skipped + self.total.suppressed,
                );
            }
            cursor = page.cursor;
            if page.done {
                return Ok(());
            }
            if let Err(capped) = self.check_caps() {
                if let Some(n) = next {
                    n.abort();
                }
                return Err(capped.into());
            }
            match next {
                Some(n) => pending = n,
                None => return Err(self.page_capped().into()),
            }
            page_no += 1;
        }
    }

    /// Whether the run may read another page.
    fn check_caps(&self) -> Result<(), RunCapped> {
        if self.pages >= self.caps.pages {
            return Err(self.page_capped());
        }
        if tokio::time::Instant::now() >= self.deadline {
            return Err(self.time_capped());
        }
        Ok(())
    }

    fn page_capped(&self) -> RunCapped {
        tracing::warn!(pages = self.pages, "source run reached its page cap");
        RunCapped::Pages {
            name: self.source_name.to_string(),
            pages: self.caps.pages,
        }
    }

    fn time_capped(&self) -> RunCapped {
        tracing::warn!(pages = self.pages, "source run reached its time cap");
        RunCapped::Time {
            name: self.source_name.to_string(),
            limit: self.caps.time,
        }
    }

    /// Reads one page on its own task, waiting and retrying on transient errors.
    fn spawn_read(
        &self,
        instance: &PluginInstance,
        stream: &str,
        cursor: Option<String>,
        page_no: u64,
    ) -> tokio::task::JoinHandle<anyhow::Result<Page>> {
        let span = tracing::debug_span!(
            "source_read",
            stream,
            page = page_no,
            resumed_from = cursor.is_some()
        );
        let reader = Reader {
            engine: self.engine.clone(),
            instance: instance.clone(),
            source: self.source_name.to_string(),
            run_id: self.run_id.to_string(),
            stream: stream.to_string(),
        };
        tokio::spawn(async move { reader.read(cursor.as_deref()).await }.instrument(span))
    }

    /// Stores a page's records and the stream's new cursor in one transaction.
    async fn commit_page(&mut self, stream: &str, page: &Page) -> anyhow::Result<Applied> {
        let engine = self.engine;
        let now = now_millis();
        let mut tx = rows::begin_page(&engine.store).await?;
        // First statement a write: on SQLite it takes the write lock before any read, and it
        // fences the page on the lease (a run that lost its lease commits nothing more).
        self.lease.fence(&mut tx).await?;
        let records: Vec<(&str, &SourceRecord)> =
            page.records.iter().map(|r| (stream, r)).collect();
        let applied = engine.apply(&mut tx, self.source_name, &records).await?;
        rows::commit_page_rows(
            &mut tx,
            self.source_name,
            stream,
            (page.cursor.as_deref(), page.done),
            self.run_id,
            (applied.records as i64, applied.events as i64),
            now,
        )
        .await?;
        tx.commit().await.context("committing a page")?;
        if applied.events > 0 {
            engine.store.events_committed();
        }
        tracing::debug!(
            records = applied.records,
            events = applied.events,
            skipped = applied.skipped,
            "page committed"
        );
        Ok(applied)
    }
}

/// Reads pages of one stream for a run.
struct Reader {
    engine: SourceEngine,
    instance: PluginInstance,
    source: String,
    run_id: String,
    stream: String,
}

impl Reader {
    /// One page, waiting and retrying on transient errors (429s with the API's wait, 5xx and
    /// network errors with exponential backoff and jitter), a bounded number of times.
    async fn read(&self, cursor: Option<&str>) -> anyhow::Result<Page> {
        let stream = self.stream.as_str();
        let attempts = max_attempts();
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.instance.read(stream, cursor).await {
                Ok(page) => return Ok(page),
                Err(PluginError::Plugin {
                    error: CallError::Transient(retry),
                    ..
                }) if attempt < attempts => {
                    let wait = match retry.after_ms {
                        Some(ms) => Duration::from_millis(ms),
                        None => {
                            let base = self
                                .engine
                                .backoff
                                .saturating_mul(1 << (attempt - 1).min(10));
                            base + base.mul_f64(fastrand::f64() * 0.5)
                        }
                    }
                    .min(MAX_WAIT);
                    tracing::warn!(
                        stream,
                        attempt,
                        wait_ms = wait.as_millis() as u64,
                        "read failed transiently, retrying: {}",
                        retry.reason
                    );
                    rows::count_retry(&self.engine.store, &self.run_id).await?;
                    if let Some(m) = &self.engine.metrics {
                        m.sources.retry(&self.source, stream);
                    }
                    tokio::time::sleep(wait).await;
                }
                Err(e) => {
                    let after = if attempt > 1 {
                        format!(" after {attempt} attempts")
                    } else {
                        String::new()
                    };
                    return Err(
                        anyhow::Error::new(e).context(format!("reading stream `{stream}`{after}"))
                    );
                }
            }
        }
    }
}

/// The value at a dotted path (`customer.email`, `emails.0`) of a record's data.
fn at_path<'v>(data: &'v Value, path: &str) -> Option<&'v Value> {
    let mut v = data;
    for part in path.split('.') {
        v = match v {
            Value::Object(m) => m.get(part)?,
            Value::Array(a) => a.get(part.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(v)
}

fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if !s.trim().is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn parse_time(text: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| t.timestamp_millis())
}

/// The identifiers a stream mapping picks from a record, highest priority first.
pub fn record_identifiers(
    rules: &IdentityRules,
    mapping: &SourceStreamConfig,
    data: &Value,
) -> Vec<Identifier> {
    rules.identifiers(mapping.identifiers.iter().filter_map(|(kind, path)| {
        at_path(data, path)
            .and_then(scalar)
            .map(|v| (kind.clone(), v))
    }))
}

/// A record ready for identity resolution.
struct Decoded<'a> {
    stream: &'a str,
    record: &'a SourceRecord,
    mapping: &'a SourceStreamConfig,
    data: Value,
    ids: Vec<Identifier>,
}

/// Resolves each record to a profile through an identity [`Batch`] (all of the page's
/// identifiers looked up at once, the common cases decided in memory), then writes the page's
/// profiles, identifiers, traits and events with a few multi-row statements.
async fn apply_records(
    conn: &mut Conn,
    backend: crate::store::Backend,
    rules: &IdentityRules,
    source: &str,
    mappings: &BTreeMap<String, SourceStreamConfig>,
    records: &[(&str, &SourceRecord)],
) -> anyhow::Result<Applied> {
    let now = now_millis();
    let mut applied = Applied::default();
    let mut decoded = Vec::with_capacity(records.len());
    for (stream, record) in records {
        let Some(mapping) = mappings.get(*stream) else {
            applied.skipped += 1;
            continue;
        };
        let data: Value = match serde_json::from_str(&record.data) {
            Ok(v @ Value::Object(_)) => v,
            _ => {
                tracing::warn!(stream, record = %record.id, "record data is not a JSON object; skipped");
                applied.skipped += 1;
                continue;
            }
        };
        let ids = record_identifiers(rules, mapping, &data);
        if ids.is_empty() {
            tracing::debug!(stream, record = %record.id, "no mapped identifier in the record; skipped");
            applied.skipped += 1;
            continue;
        }
        decoded.push(Decoded {
            stream,
            record,
            mapping,
            data,
            ids,
        });
    }
    let mut batch = Batch::prepare(
        conn,
        backend,
        rules,
        decoded.iter().flat_map(|d| d.ids.iter()),
        &[],
        None,
        now,
    )
    .await?;
    for d in decoded {
        let (stream, record) = (d.stream, d.record);
        if batch.is_suppressed(conn, &d.ids).await? {
            applied.suppressed += 1;
            continue;
        }
        let message_id = format!("src:{source}:{stream}:{}", record.id);
        let Some(profile) = batch.resolve(conn, &d.ids, &message_id, "source").await? else {
            applied.skipped += 1;
            continue;
        };
        let ts = record
            .updated_at
            .as_deref()
            .and_then(parse_time)
            .unwrap_or(now);
        for (name, path) in &d.mapping.traits {
            if let Some(value) = at_path(&d.data, path) {
                batch.set_trait(&profile, name, value.to_string(), ts);
            }
        }
        for (i, event) in record.events.iter().enumerate() {
            let local = if event.message_id.is_empty() {
                i.to_string()
            } else {
                event.message_id.clone()
            };
            let id = format!("src:{source}:{stream}:{}:{local}", record.id);
            let at = parse_time(&event.timestamp).unwrap_or(ts);
            let properties = match serde_json::from_str::<Value>(&event.properties) {
                Ok(v @ Value::Object(_)) => v,
                _ => Value::Object(Default::default()),
            };
            let body = serde_json::json!({
                "type": "track",
                "event": event.name,
                "messageId": id,
                "timestamp": iso(at),
                "properties": properties,
                "context": {"source": {"name": source, "stream": stream, "record_id": record.id}},
            });
            batch.add_event(NewEvent {
                message_id: id,
                profile: profile.clone(),
                source: source.to_string(),
                kind: "track",
                name: Some(event.name.clone()),
                ts: at,
                received_at: now,
                body: body.to_string(),
            });
        }
        applied.records += 1;
    }
    applied.events = batch.finish(conn).await?;
    Ok(applied)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_identifiers() {
        let data = serde_json::json!({"email": " Ada@Example.com ", "customer": {"id": 42}, "tags": ["a", "b"], "phone": ""});
        assert_eq!(at_path(&data, "customer.id"), Some(&serde_json::json!(42)));
        assert_eq!(at_path(&data, "tags.1"), Some(&serde_json::json!("b")));
        assert_eq!(at_path(&data, "customer.missing"), None);
        let rules = IdentityRules::new(&crate::config::IdentityConfig::default());
        let mapping = SourceStreamConfig {
            identifiers: BTreeMap::from([
                ("email".to_string(), "email".to_string()),
                ("user_id".to_string(), "customer.id".to_string()),
                ("phone".to_string(), "phone".to_string()),
                ("nonexistent".to_string(), "email".to_string()),
            ]),
            traits: BTreeMap::new(),
        };
        let ids = record_identifiers(&rules, &mapping, &data);
        assert_eq!(
            ids,
            vec![
                Identifier::new("user_id", "42"),
                Identifier::new("email", "ada@example.com")
            ]
        );
    }

    fn record(id: &str, data: Value, updated_at: &str, event: Option<&str>) -> SourceRecord {
        SourceRecord {
            id: id.to_string(),
            data: data.to_string(),
            updated_at: Some(updated_at.to_string()),
            events: event
                .map(|name| crate::runtime::bindings::SourceEvent {
                    name: name.to_string(),
                    message_id: format!("e-{id}"),
                    timestamp: updated_at.to_string(),
                    properties: r#"{"total": 1}"#.to_string(),
                })
                .into_iter()
                .collect(),
        }
    }

    async fn scalar_query(store: &Store, sql: &str) -> i64 {
        store.scalar(sql).await.unwrap()
    }

    /// The batched path decides new and exactly-matched records in memory and hands attaches,
    /// merges and limit conflicts to `identity::resolve`, within one page, in order.
    #[tokio::test]
    async fn a_page_creates_attaches_merges_and_respects_limits() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&format!("sqlite://{}/t.db", dir.path().display()))
            .await
            .unwrap();
        let identity = crate::config::IdentityConfig::default();
        let rules = IdentityRules::new(&identity);
        let mapping = SourceStreamConfig {
            identifiers: BTreeMap::from([
                ("email".to_string(), "email".to_string()),
                ("user_id".to_string(), "user".to_string()),
            ]),
            traits: BTreeMap::from([("name".to_string(), "name".to_string())]),
        };
        let mappings = BTreeMap::from([("people".to_string(), mapping)]);
        let page = [
            record(
                "a",
                serde_json::json!({"email": "a@x.com", "name": "A old"}),
                "2024-01-01T00:00:00Z",
                Some("Order Completed"),
            ),
            record(
                "b",
                serde_json::json!({"email": "A@x.com", "name": "A new"}),
                "2024-01-02T00:00:00Z",
                None,
            ),
            record(
                "c",
                serde_json::json!({"email": "b@x.com", "user": "u1"}),
                "2024-01-01T00:00:00Z",
                Some("Order Completed"),
            ),
            // Joins the profiles of a@ and u1: a merge, through `resolve`.
            record(
                "d",
                serde_json::json!({"email": "a@x.com", "user": "u1"}),
                "2024-01-01T00:00:00Z",
                None,
            ),
            // u1 known, c@ new: an attach, through `resolve`.
            record(
                "e",
                serde_json::json!({"email": "c@x.com", "user": "u1"}),
                "2024-01-01T00:00:00Z",
                None,
            ),
            // A second user id for a@'s profile would break user_id's limit of 1: u2 wins alone.
            record(
                "f",
                serde_json::json!({"email": "a@x.com", "user": "u2"}),
                "2024-01-01T00:00:00Z",
                None,
            ),
            record(
                "g",
                serde_json::json!({"name": "nobody"}),
                "2024-01-01T00:00:00Z",
                None,
            ),
        ];
        let refs: Vec<(&str, &SourceRecord)> = page.iter().map(|r| ("people", r)).collect();
        let mut tx = store.begin().await.unwrap();
        let applied = apply_records(&mut tx, store.backend(), &rules, "crm", &mappings, &refs)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        assert_eq!(
            applied,
            Applied {
                records: 6,
                events: 2,
                skipped: 1,
                suppressed: 0
            }
        );
        assert_eq!(
            scalar_query(&store, "SELECT COUNT(*) FROM profiles").await,
            2
        );
        let mut conn = store.acquire().await.unwrap();
        let main = crate::identity::profile_of(&mut conn, &Identifier::new("email", "a@x.com"))
            .await
            .unwrap()
            .unwrap();
        for id in [
            ("email", "b@x.com"),
            ("email", "c@x.com"),
            ("user_id", "u1"),
        ] {
            let p = crate::identity::profile_of(&mut conn, &Identifier::new(id.0, id.1))
                .await
                .unwrap();
            assert_eq!(p.as_deref(), Some(main.as_str()), "{id:?}");
        }
        let other = crate::identity::profile_of(&mut conn, &Identifier::new("user_id", "u2"))
            .await
            .unwrap()
            .unwrap();
        assert_ne!(other, main);
        let traits = crate::store::profiles::traits_of(&store, &main)
            .await
            .unwrap();
        let name = traits
            .iter()
            .find(|(n, _)| n == "name")
            .map(|t| t.1.as_str());
        assert_eq!(name, Some("\"A new\""), "the newer record's trait wins");
        let n = scalar_query(
            &store,
            &format!("SELECT COUNT(*) FROM events WHERE profile_id = '{main}'"),
        )
        .await;
        assert_eq!(n, 2, "both events on the surviving profile");
        let merges = scalar_query(&store, "SELECT COUNT(*) FROM merges").await;
        assert_eq!(merges, 1);
        drop(conn);

        // The same page again: nothing new, nothing twice.
        let mut tx = store.begin().await.unwrap();
        let again = apply_records(&mut tx, store.backend(), &rules, "crm", &mappings, &refs)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        assert_eq!(again.events, 0);
        assert_eq!(
            scalar_query(&store, "SELECT COUNT(*) FROM profiles").await,
            2
        );
        assert_eq!(
            scalar_query(&store, "SELECT COUNT(*) FROM identifiers").await,
            5
        );
        assert_eq!(scalar_query(&store, "SELECT COUNT(*) FROM events").await, 2);
    }
}
