//! Syncs: a model (an audience, all profiles, or matching events) delivered to a destination
//! instance. A run diffs the model against what the destination last acknowledged (per record
//! key, a hash of the mapped payload) and sends only the difference; what is acknowledged is
//! committed per batch, so a crash resumes where it stopped. One run per sync at a time, across
//! hubs too (a lease row in the database).

pub mod delivery;
pub mod delivery_id;
mod events;
mod ledger;
mod pages;
pub mod plan;
pub mod scheduler;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use serde::Serialize;
use tracing::Instrument as _;

use crate::audience;
use crate::config::compile::{CompiledSync, Project};
use crate::config::{Config, DestinationConfig, SyncConfig, SyncFrom, SyncMode};
use crate::consent::ConsentDefault;
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::runs::lease::{self, Lease};
use crate::runs::{iso, RunError, RunStatus};
use crate::runtime::bindings::Action;
use crate::runtime::PluginInstance;
use crate::store::profiles::{self as model, Population};
use crate::store::runs::RunKind;
use crate::store::syncs as rows;
use crate::store::{now_millis, Store};
use delivery::{Abort, Item, Stats, Target};
use ledger::RunLedger;
use pages::PagePlanner;
pub use plan::{payload_hash, Plan};
use plan::{Blocked, SAMPLES};

/// Options of one run.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Plan and report, send nothing.
    pub dry_run: bool,
    /// Send every record of the model again, changed or not.
    pub full_resync: bool,
    /// Let this run remove more than `max_removals`.
    pub approve_removals: bool,
}

/// One run, as recorded in the history.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    pub id: String,
    pub sync: String,
    /// `running`, `succeeded`, `completed_with_errors`, `failed`, `blocked`, `planned`
    /// (dry run) or `interrupted` (the hub stopped during it).
    pub status: RunStatus,
    pub dry_run: bool,
    pub full_resync: bool,
    pub started_at: String,
    pub finished_at: Option<String>,
    pub duration_ms: Option<i64>,
    pub planned_adds: i64,
    pub planned_changes: i64,
    pub planned_removals: i64,
    pub sent: i64,
    pub succeeded: i64,
    pub retried: i64,
    pub rejected: i64,
    pub dead_lettered: i64,
    /// Records or events held back because the profile lacks a consent category the
    /// destination requires ("withheld: no consent"); never mapped, never sent.
    pub withheld: i64,
    pub error: Option<String>,
    /// Samples (only on the run just made, not from history).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plan: Option<Plan>,
}

/// A record that could not be delivered.
#[derive(Debug, Clone, Serialize)]
pub struct DeadLetter {
    pub id: String,
    pub sync: String,
    pub key: String,
    pub action: String,
    pub fields: serde_json::Value,
    pub attempts: i64,
    pub error: String,
    pub at: String,
    pub replayed_at: Option<String>,
}

/// A destination instance's token bucket and the rate (requests/s) it was made for.
type RateLimiter = (f64, Arc<governor::DefaultDirectRateLimiter>);

/// Runs syncs against the store and the installed plugins.
#[derive(Clone)]
pub struct Engine {
    store: Store,
    registry: Arc<Registry>,
    config: Arc<RwLock<Arc<Project>>>,
    metrics: Option<Metrics>,
    holder: Arc<str>,
    /// One token bucket per destination instance, shared by every sync that delivers to it.
    limiters: Arc<std::sync::Mutex<HashMap<String, RateLimiter>>>,
    /// First retry delay.
    pub backoff: Duration,
    /// Profiles planned per page; `SWITCHYARD_SYNC_PAGE` overrides it (tests use small pages).
    page_size: usize,
}

/// Progress of a run, for a terminal's progress bar.
pub trait Progress: Send + Sync {
    fn planned(&self, total: u64);
    fn advanced(&self, done: u64);
}

impl Engine {
    pub fn new(store: Store, registry: Arc<Registry>, config: Arc<Project>) -> Engine {
        let backoff = std::env::var("SWITCHYARD_RETRY_BASE_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .map(Duration::from_millis)
            .unwrap_or(Duration::from_millis(500));
        let page_size = std::env::var("SWITCHYARD_SYNC_PAGE")
            .ok()
            .and_then(|v| v.parse().ok())
            .filter(|&n: &usize| n > 0)
            .unwrap_or(PagePlanner::PAGE);
        Engine {
            store,
            registry,
            config: Arc::new(RwLock::new(config)),
            metrics: None,
            holder: uuid::Uuid::new_v4().to_string().into(),
            limiters: Arc::default(),
            backoff,
            page_size,
        }
    }

    pub fn with_metrics(mut self, metrics: Metrics) -> Engine {
        self.metrics = Some(metrics);
        self
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The project runs start with; runs in flight keep the one they started with.
    pub fn config(&self) -> Arc<Project> {
        match self.config.read() {
            Ok(c) => c.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Swaps in a new config (SIGHUP); in-flight runs are not disturbed.
    pub fn reload(&self, config: Arc<Project>) {
        match self.config.write() {
            Ok(mut c) => *c = config,
            Err(poisoned) => *poisoned.into_inner() = config,
        }
    }

    /// The `[[syncs]]` entry named `name`, or [`RunError::NotFound`] listing the defined ones.
    pub fn sync_config(
        &self,
        config: &Project,
        name: &str,
    ) -> anyhow::Result<(SyncConfig, Arc<CompiledSync>)> {
        match config.compiled_sync(name) {
            Ok((s, c)) => Ok((s.clone(), c.clone())),
            Err(e) => Err(RunError::NotFound(format!("{e:#}")).into()),
        }
    }

    /// Builds a configured instance of a destination.
    pub async fn destination(
        &self,
        name: &str,
        dest: &DestinationConfig,
    ) -> anyhow::Result<PluginInstance> {
        self.registry.instance(&dest.block(name)).await
    }

    /// Runs a sync now. Fails at once if another run of it holds the lease.
    pub async fn run(
        &self,
        name: &str,
        options: RunOptions,
        progress: Option<Arc<dyn Progress>>,
    ) -> anyhow::Result<RunReport> {
        let config = self.config();
        let (sync, compiled) = self.sync_config(&config, name)?;
        let span = tracing::info_span!("sync_run", sync = %name, dry_run = options.dry_run, full_resync = options.full_resync);
        self.run_inner(&config, &sync, &compiled, options, progress)
            .instrument(span)
            .await
    }

    async fn run_inner(
        &self,
        config: &Project,
        sync: &SyncConfig,
        compiled: &CompiledSync,
        options: RunOptions,
        progress: Option<Arc<dyn Progress>>,
    ) -> anyhow::Result<RunReport> {
        let run_id = uuid::Uuid::new_v4().to_string();
        let started = Instant::now();
        let started_at = now_millis();
        let dest = config
            .destinations
            .get(&sync.to)
            .with_context(|| format!("sync `{}`: no [destinations.{}]", sync.name, sync.to))?;

        // A dry run only reads; a real run takes the lease first.
        let lease = if options.dry_run {
            None
        } else {
            Some(Lease::acquire(&self.store, lease::SYNC, &sync.name, &self.holder, &run_id).await?)
        };
        let result = async {
            if !options.dry_run {
                rows::start_run(
                    &self.store,
                    &run_id,
                    &sync.name,
                    started_at,
                    options.full_resync,
                )
                .await?;
            }
            let instance = Arc::new(self.destination(&sync.to, dest).await?);
            let manifest = instance.plugin().manifest().clone();
            let action = match sync.mode {
                SyncMode::Events => Action::Track,
                _ => Action::Upsert,
            };
            if !manifest.actions.contains(&action) {
                bail!(
                    "plugin `{}` does not support `{action:?}` (it supports {:?}); change the sync's mode",
                    manifest.name,
                    manifest.actions
                );
            }
            if sync.mode == SyncMode::Mirror && !manifest.actions.contains(&Action::Delete) {
                bail!("plugin `{}` cannot delete records, so mode = \"mirror\" cannot work; use mode = \"upsert\"", manifest.name);
            }
            let rate = dest.rate_per_second.unwrap_or(manifest.default_rate_per_second);
            let target = Target {
                instance,
                limiter: self.limiter(&sync.to, if rate > 0.0 { rate } else { 1000.0 }),
                concurrency: dest.concurrency,
                batch_size: sync
                    .batch_size
                    .unwrap_or(usize::MAX)
                    .min(manifest.max_batch_size.max(1) as usize),
                max_attempts: sync.max_attempts,
                backoff: self.backoff,
            };
            let mut ctx = RunContext {
                engine: self,
                sync,
                compiled,
                run_id: &run_id,
                lease: lease.as_ref(),
                stats: Stats::default(),
                progress,
                plan: Plan::default(),
            };
            match sync.mode {
                SyncMode::Events => ctx.run_events(config, &target, &options).await?,
                _ => ctx.run_profiles(config, &target, &options).await?,
            }
            Ok::<_, anyhow::Error>((ctx.plan, ctx.stats))
        }
        .await;

        let finished = now_millis();
        let (status, error, plan, stats) = match result {
            Ok((plan, stats)) => {
                let status = if options.dry_run {
                    RunStatus::Planned
                } else if stats.dead_lettered > 0 {
                    RunStatus::CompletedWithErrors
                } else {
                    RunStatus::Succeeded
                };
                (status, None, plan, stats)
            }
            Err(e) => {
                let (status, plan, stats) = match e.downcast_ref::<Blocked>() {
                    Some(b) => (RunStatus::Blocked, b.plan.clone(), Stats::default()),
                    None => (RunStatus::Failed, Plan::default(), Stats::default()),
                };
                (status, Some(format!("{e:#}")), plan, stats)
            }
        };
        if let (Some(m), false) = (&self.metrics, options.dry_run) {
            // Before the history says the run is over, so whoever sees it finished sees this.
            m.sync_withheld(&sync.name, plan.withheld);
        }
        if !options.dry_run {
            // Counters were committed batch by batch; read them back for the report.
            let planned = rows::Planned {
                adds: plan.adds as i64,
                changes: plan.changes as i64,
                removals: plan.removals as i64,
                withheld: plan.withheld as i64,
            };
            rows::save_planned(&self.store, &run_id, &planned).await?;
            crate::store::runs::finish_run(
                &self.store,
                RunKind::Sync,
                &run_id,
                status.as_str(),
                finished,
                error.as_deref(),
            )
            .await?;
        }
        if let Some(lease) = lease {
            lease.release(&self.store).await;
        }
        if let Some(m) = &self.metrics {
            m.sync_run(&sync.name, status.as_str(), started.elapsed().as_secs_f64());
        }
        let mut report = if options.dry_run {
            RunReport {
                id: run_id,
                sync: sync.name.clone(),
                status,
                dry_run: true,
                full_resync: options.full_resync,
                started_at: iso(started_at),
                finished_at: Some(iso(finished)),
                duration_ms: Some(finished - started_at),
                planned_adds: plan.adds as i64,
                planned_changes: plan.changes as i64,
                planned_removals: plan.removals as i64,
                sent: 0,
                succeeded: 0,
                retried: 0,
                rejected: 0,
                dead_lettered: 0,
                withheld: plan.withheld as i64,
                error,
                plan: None,
            }
        } else {
            let _ = stats;
            self.runs(&sync.name, 1)
                .await?
                .into_iter()
                .find(|r| r.id == run_id)
                .context("the run's history row is missing")?
        };
        tracing::info!(status = %report.status, sent = report.sent, succeeded = report.succeeded, dead_lettered = report.dead_lettered, withheld = report.withheld, "sync run finished");
        report.plan = Some(plan);
        Ok(report)
    }

    /// The destination instance's token bucket (a new one when its rate changed); event
    /// streams to the same destination share it with its syncs.
    pub fn limiter(&self, destination: &str, rate: f64) -> Arc<governor::DefaultDirectRateLimiter> {
        let mut all = self.limiters.lock().unwrap_or_else(|p| p.into_inner());
        match all.get(destination) {
            Some((r, l)) if *r == rate => l.clone(),
            _ => {
                let l = delivery::limiter(rate);
                all.insert(destination.to_string(), (rate, l.clone()));
                l
            }
        }
    }

    /// The newest runs of a sync, newest first.
    pub async fn runs(&self, sync: &str, limit: i64) -> anyhow::Result<Vec<RunReport>> {
        let history = rows::runs(&self.store, sync, limit).await?;
        Ok(history
            .into_iter()
            .map(|r| RunReport {
                duration_ms: r.finished_at.map(|f| f - r.started_at),
                started_at: iso(r.started_at),
                finished_at: r.finished_at.map(iso),
                id: r.id,
                sync: r.sync,
                status: RunStatus::parse(&r.status),
                dry_run: r.dry_run,
                full_resync: r.full_resync,
                planned_adds: r.planned_adds,
                planned_changes: r.planned_changes,
                planned_removals: r.planned_removals,
                sent: r.sent,
                succeeded: r.succeeded,
                retried: r.retried,
                rejected: r.rejected,
                dead_lettered: r.dead_lettered,
                withheld: r.withheld,
                error: r.error,
                plan: None,
            })
            .collect())
    }

    /// Dead letters not yet replayed, of one sync or all.
    pub async fn dead_letters(
        &self,
        sync: Option<&str>,
        limit: i64,
    ) -> anyhow::Result<Vec<DeadLetter>> {
        let letters = rows::dead_letters(&self.store, sync, limit).await?;
        Ok(letters
            .into_iter()
            .map(|r| DeadLetter {
                fields: serde_json::from_str(&r.fields)
                    .unwrap_or(serde_json::Value::String(r.fields)),
                id: r.id,
                sync: r.sync,
                key: r.key,
                action: r.action,
                attempts: r.attempts,
                error: r.error,
                at: iso(r.at),
                replayed_at: r.replayed_at.map(iso),
            })
            .collect())
    }

    /// Marks a sync's dead letters for replay: the next run plans them again (with the
    /// payload the model has then). Returns how many.
    pub async fn replay(&self, sync: &str) -> anyhow::Result<u64> {
        self.sync_config(&self.config(), sync)?;
        // Replayed records may be changes of unchanged profiles: the next run compares in full.
        Ok(rows::replay(&self.store, sync, now_millis()).await?)
    }
}

struct RunContext<'a> {
    engine: &'a Engine,
    sync: &'a SyncConfig,
    /// The sync's mapping, filter and schedule, compiled with the project.
    compiled: &'a CompiledSync,
    run_id: &'a str,
    lease: Option<&'a Lease>,
    stats: Stats,
    progress: Option<Arc<dyn Progress>>,
    plan: Plan,
}

const LEASE_LOST: &str =
    "the run lost its lease (another run took over, or the database was unreachable until it expired)";

/// A destination's consent requirement (`[destinations.NAME] consent`) and what no signal
/// means (`[hub] consent_default`).
#[derive(Debug, Clone)]
pub(crate) struct ConsentRule {
    pub(crate) required: Vec<String>,
    pub(crate) default: ConsentDefault,
}

impl ConsentRule {
    fn of(config: &Config, sync: &SyncConfig) -> ConsentRule {
        ConsentRule {
            required: config
                .destinations
                .get(&sync.to)
                .map(|d| d.consent.clone())
                .unwrap_or_default(),
            default: config.hub.consent_default,
        }
    }

    /// Of these profiles, those whose consent does not let them reach the destination.
    async fn withheld(&self, store: &Store, ids: &[String]) -> anyhow::Result<HashSet<String>> {
        if self.required.is_empty() {
            return Ok(HashSet::new());
        }
        let states = crate::store::consent::states_of(store, ids).await?;
        Ok(ids
            .iter()
            .filter(|id| !crate::consent::allows(states.get(*id), &self.required, self.default))
            .cloned()
            .collect())
    }
}

impl RunContext<'_> {
    /// Audience / all-profiles syncs: diff the model against the acknowledged state.
    ///
    /// Removals come first, from an anti-join of the state against the model (so the guardrail
    /// knows their number before anything is sent, and a merged-away profile's delete lands
    /// before the survivor's upsert). Then the model is walked page by page and each page's
    /// adds and changes are delivered before the next page is read, so memory stays flat.
    /// When the mapping and model are those of the last completed run, only profiles changed
    /// since that run started, and members the destination lacks, are looked at.
    async fn run_profiles(
        &mut self,
        config: &Project,
        target: &Target,
        options: &RunOptions,
    ) -> anyhow::Result<()> {
        let store = &self.engine.store;
        let sync = self.sync;
        let started_at = now_millis();
        let mapping = &self.compiled.mapping;

        // Refresh the audience's changed profiles (or all, when its full refresh is due).
        let population = match &sync.from {
            SyncFrom::Audience { audience } => {
                let rule = config
                    .audience(audience)
                    .with_context(|| format!("no [audiences.{audience}]"))?;
                let full_due = match &rule.full_refresh {
                    Some(schedule) => {
                        let last = audience::last_full(store, audience)
                            .await?
                            .and_then(chrono::DateTime::from_timestamp_millis);
                        let now = chrono::Utc::now();
                        schedule.next_after(last, now) <= now
                    }
                    None => false,
                };
                let r = audience::refresh(store, audience, rule, full_due).await?;
                if let Some(e) = r.first_error {
                    tracing::warn!(audience = %audience, errors = r.errors, "filter failed on some profiles: {e}");
                }
                Population::Audience(audience.clone())
            }
            _ => Population::All,
        };

        // A destination's consent rule is part of what the model is: adding or changing it makes
        // the next run look at every record again.
        let consent = ConsentRule::of(config, sync);
        let fingerprint = if consent.required.is_empty() {
            payload_hash(&format!("{:?}|{:?}", sync.from, sync.mapping))
        } else {
            payload_hash(&format!(
                "{:?}|{:?}|{:?}|{:?}",
                sync.from, sync.mapping, consent.required, consent.default
            ))
        };
        let meta = rows::meta(store, &sync.name).await?;
        let incremental_since = match meta {
            Some((f, at)) if f == fingerprint && !options.full_resync => Some(at - 10_000),
            _ => None,
        };
        let existing = rows::record_count(store, &sync.name).await?;
        let parked = rows::parked(store, &sync.name).await?;

        // In an incremental run, membership and existence can only have changed if the audience
        // changed or profiles went away since the last completed run; otherwise both anti-joins
        // over the whole state are skipped.
        let (check_removals, check_missing) = match incremental_since {
            None => (true, true),
            Some(since) => {
                let gone = audience::profiles_gone_since(store, since).await?;
                let joined_or_left = match &population {
                    Population::Audience(a) => audience::membership_changed_at(store, a)
                        .await?
                        .is_none_or(|t| t >= since),
                    // New profiles are among the changed ones.
                    Population::All => false,
                };
                (gone || joined_or_left, joined_or_left)
            }
        };

        // Removals: what the destination holds that the model no longer has. Upsert mode only
        // removes records whose profile is gone (merged away or erased).
        let candidates = match (&population, sync.mode) {
            _ if !check_removals => Vec::new(),
            (Population::Audience(a), SyncMode::Mirror) => {
                rows::removal_candidates(store, &sync.name, Some(a)).await?
            }
            _ => rows::removal_candidates(store, &sync.name, None).await?,
        };
        // Consent withdrawn (or, with `consent_default = "deny"`, never given): the destination
        // loses the profile in upsert mode too.
        let mut candidates = candidates;
        if !consent.required.is_empty() {
            let known: HashSet<String> = candidates.iter().map(|c| c.key.clone()).collect();
            let withdrawn = crate::store::consent::acked_without_consent(
                store,
                &sync.name,
                &consent.required,
                consent.default.allows(),
                incremental_since,
            )
            .await?;
            candidates.extend(withdrawn.into_iter().filter(|r| !known.contains(&r.key)));
        }
        let mut deletes = Vec::with_capacity(candidates.len());
        for rows::AckedRow {
            key,
            hash,
            fields,
            acked_at,
        } in candidates
        {
            if parked.contains(&(key.clone(), hash.clone())) {
                self.plan.parked += 1;
                continue;
            }
            if self.plan.sample_removals.len() < SAMPLES {
                self.plan.sample_removals.push(serde_json::json!({
                    "key": key,
                    "fields": serde_json::from_str::<serde_json::Value>(&fields).unwrap_or_default(),
                }));
            }
            deletes.push(Item {
                delivery_id: delivery_id::for_change(
                    &sync.name,
                    &key,
                    "delete",
                    &hash,
                    delivery_id::Base::Acked(acked_at),
                ),
                previous_fields: None,
                key,
                hash,
                fields,
                attempts: 0,
                last_error: None,
            });
        }
        self.plan.removals = deletes.len() as u64;
        if let Err(message) = plan::guardrail(
            &sync.name,
            sync.max_removals,
            self.plan.removals,
            existing,
            options.approve_removals,
        ) {
            return Err(Blocked {
                plan: std::mem::take(&mut self.plan),
                message,
            }
            .into());
        }
        if !options.dry_run {
            if let Some(p) = &self.progress {
                p.planned(deletes.len() as u64);
            }
            self.deliver(target, Action::Delete, deletes).await?;
        }

        // Adds and changes, page by page: the planner reads and diffs the next page while the
        // destination takes the last one.
        let pending_ids = match incremental_since {
            Some(since) => {
                let mut ids = model::changed(store, &population, since).await?;
                if check_missing {
                    ids.extend(rows::missing(store, &sync.name, &population).await?);
                }
                ids.sort();
                ids.dedup();
                tracing::debug!(candidates = ids.len(), "incremental diff");
                Some(ids.into_iter())
            }
            None => None,
        };
        let mut planner = PagePlanner {
            store: store.clone(),
            sync: sync.name.clone(),
            population,
            mapping: mapping.clone(),
            parked,
            full_resync: options.full_resync,
            lease_lost: self.lease.map(Lease::lost_flag),
            pending_ids,
            after: String::new(),
            page_size: self.engine.page_size,
            key_fields: target.instance.plugin().manifest().key_fields.clone(),
            consent,
            plan: Plan::default(),
        };
        if options.dry_run {
            while planner.next_page().await?.is_some() {}
            self.plan.absorb(planner.plan);
        } else {
            let (pages, received) = tokio::sync::mpsc::channel(1);
            let progress = self.progress.clone();
            let removals = self.plan.removals;
            let producer = tokio::spawn(
                async move {
                    while let Some(items) = planner.next_page().await? {
                        if let Some(p) = &progress {
                            p.planned(removals + planner.plan.adds + planner.plan.changes);
                        }
                        if pages.send(items).await.is_err() {
                            // Delivery stopped; it reports why.
                            break;
                        }
                    }
                    Ok::<_, anyhow::Error>(planner.plan)
                }
                .in_current_span(),
            );
            let delivered = self.deliver_pages(target, Action::Upsert, received).await;
            let planned = producer
                .await
                .context("the sync's planner task failed")
                .and_then(|r| r);
            delivered?;
            self.plan.absorb(planned?);
        }
        if !options.dry_run {
            rows::save_meta(store, &sync.name, &fingerprint, started_at).await?;
        }
        Ok(())
    }

    async fn deliver(
        &mut self,
        target: &Target,
        action: Action,
        items: Vec<Item>,
    ) -> anyhow::Result<()> {
        if items.is_empty() {
            return Ok(());
        }
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        // Room for this one page, and the receiver is right here.
        let _ = tx.try_send(items);
        drop(tx);
        self.deliver_pages(target, action, rx).await
    }

    /// Delivers every page from `pages` until its sender is dropped.
    async fn deliver_pages(
        &mut self,
        target: &Target,
        action: Action,
        pages: tokio::sync::mpsc::Receiver<Vec<Item>>,
    ) -> anyhow::Result<()> {
        if self.lease.is_some_and(|l| l.lost()) {
            bail!(LEASE_LOST);
        }
        let ledger = RunLedger {
            store: &self.engine.store,
            sync: &self.sync.name,
            run_id: self.run_id,
        };
        let progress = self.progress.clone();
        let metrics = self.engine.metrics.clone();
        let sync_name = self.sync.name.clone();
        let mut last = Stats::default();
        let result =
            delivery::deliver_pages(target, action, pages, &ledger, &mut self.stats, |s| {
                if let Some(p) = &progress {
                    p.advanced(s.succeeded + s.dead_lettered);
                }
                if let Some(m) = &metrics {
                    m.sync_records(&sync_name, s.into(), (&last).into());
                }
                last = s.clone();
            })
            .await;
        match result {
            Ok(()) => Ok(()),
            Err(Abort::Destination(reason)) => bail!(
                "{reason}; records not yet acknowledged will be planned again by the next run"
            ),
            Err(Abort::Commit(e)) => Err(e.context("committing a batch's outcome")),
        }
    }
}

/// Where the CLI finds the plugins of a config (its `[hub] plugins_dir`, unless overridden).
pub fn plugins_dir(config: &Config, cli: Option<PathBuf>) -> PathBuf {
    cli.unwrap_or_else(|| config.hub.plugins_dir.clone())
}
