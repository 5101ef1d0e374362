//! A loaded plugin and its configured instances; every call runs in a fresh instance.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::WasmContext as _;
use tracing::Instrument;
use wasmtime::component::{Component, InstancePre};
use wasmtime::Store;

use super::bindings::{
    destination, meta, source, transform, Action, CallError, OutboundRecord, Page, PluginConfig,
    PluginKind, PluginManifest, RecordResult, SourceRecord, StreamInfo, TransformResult,
    WebhookError, WebhookOutcome, WebhookRequest,
};
use super::net::HttpPolicy;
use super::outbound::PluginHttpHooks;
use super::secrets::{self, Scrubber};
use super::state::{LogBudget, PluginState};
use super::v1_0;
use super::{Limits, RuntimeInner};

/// Why a call produced no answer from the plugin. A [`CallError`] the plugin returned on purpose
/// is `Plugin`; everything else is the sandbox stopping it.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error("plugin `{plugin}` returned an error: {}", describe(.error))]
    Plugin { plugin: String, error: CallError },
    #[error("plugin `{plugin}` ran past its CPU time limit of {ms} ms (time spent running, not waiting on I/O; [hub.plugin_limits] cpu_time) and was stopped")]
    CpuDeadline { plugin: String, ms: u128 },
    #[error("plugin `{plugin}` ran past its wall-clock limit of {ms} ms (waiting on I/O included; [hub.plugin_limits] wall_time) and was stopped")]
    Timeout { plugin: String, ms: u128 },
    #[error("plugin `{plugin}` hit its memory cap of {mib} MiB and was stopped")]
    MemoryCap { plugin: String, mib: usize },
    #[error("plugin `{plugin}` returned {bytes} bytes, over the cap of {cap} bytes")]
    OutputTooLarge {
        plugin: String,
        bytes: usize,
        cap: usize,
    },
    #[error("plugin `{plugin}` crashed: {reason}")]
    Trap { plugin: String, reason: String },
    #[error("plugin `{plugin}` broke the contract: {reason}")]
    Contract { plugin: String, reason: String },
    #[error("plugin `{plugin}` does not export `{export}`: it is not a {export} plugin")]
    MissingExport {
        plugin: String,
        export: &'static str,
    },
    /// The plugin's manifest does not list the action (a plugin built against plugin API 1.0.0
    /// never lists `erase`): nothing was sent.
    #[error("plugin `{plugin}` cannot {action}: its manifest does not list the `{action}` action{}", if *.action == "erase" { " (a plugin built against plugin API 1.0.0 never can; upgrade the plugin, or remove the person in the provider by hand)" } else { "" })]
    UnsupportedAction {
        plugin: String,
        action: &'static str,
    },
}

fn describe(e: &CallError) -> String {
    match e {
        CallError::InvalidConfig(m) => format!("invalid config: {m}"),
        CallError::Unauthorized(m) => format!("unauthorized: {m}"),
        CallError::Transient(r) => format!("transient: {}", r.reason),
        CallError::Failed(m) => m.clone(),
    }
}

/// Runs `$body` (an async block using `$store: &mut Store` and `$instance`) in a fresh instance
/// under the runtime's limits. A macro rather than a closure so the store outlives the timed
/// future: after a trap or timeout its limiter and stdio still say what happened.
macro_rules! plugin_call {
    ($this:expr, $what:literal, |$store:ident, $instance:ident| $body:expr) => {{
        let this: &PluginInstance = &$this;
        let started = Instant::now();
        let span = tracing::info_span!("plugin_call", plugin = %this.plugin.name, call = $what);
        let (mut store, clock) = this.new_store();
        let outcome = {
            let $store = &mut store;
            let run = async {
                let $instance = this.plugin.pre.instantiate_async(&mut *$store).await?;
                $body
            };
            let mut run = std::pin::pin!(run.instrument(span.clone()));
            // Time inside `poll` is the call running; time between polls is waiting on I/O.
            let metered = std::future::poll_fn(|cx| clock.running_while(|| std::future::Future::poll(run.as_mut(), cx)));
            tokio::time::timeout(this.plugin.rt.limits.wall_timeout, metered).await
        };
        this.finish(store, outcome, started, &span)
    }};
}

/// A compiled, pre-instantiated plugin and its manifest.
pub struct Plugin {
    rt: Arc<RuntimeInner>,
    name: Arc<str>,
    manifest: PluginManifest,
    pre: InstancePre<PluginState>,
    exports: Exports,
}

/// Where a plugin's exports are, by the plugin API version it was built against.
enum Exports {
    /// The newest contract (1.1.0): called directly.
    Current {
        meta: meta::GuestIndices,
        destination: Option<destination::GuestIndices>,
        source: Option<source::GuestIndices>,
        transform: Option<transform::GuestIndices>,
    },
    /// Plugin API 1.0.0: arguments and results are converted (see [`v1_0`]).
    V1_0 {
        meta: v1_0::bindings::meta::GuestIndices,
        destination: Option<v1_0::bindings::destination::GuestIndices>,
        source: Option<v1_0::bindings::source::GuestIndices>,
    },
}

/// The plugin API version of the component's `plugin` export, read from the exact export name:
/// wasmtime resolves an export by name semver-compatibly (a lookup of `plugin@1.1.0` finds
/// `plugin@1.0.0`), so the version must be known before choosing bindings.
fn exported_api_version(
    pre: &InstancePre<PluginState>,
    engine: &wasmtime::Engine,
) -> Option<String> {
    pre.component()
        .component_type()
        .exports(engine)
        .find_map(|(name, _)| {
            name.strip_prefix("switchyard:plugin/plugin@")
                .map(str::to_string)
        })
}

impl Exports {
    fn find(
        pre: &InstancePre<PluginState>,
        engine: &wasmtime::Engine,
    ) -> anyhow::Result<(Exports, PluginKind)> {
        let kind = |d: bool, s: bool, t: bool| {
            match (d, s, t) {
            (true, false, false) => Ok(PluginKind::Destination),
            (false, true, false) => Ok(PluginKind::Source),
            (false, false, true) => Ok(PluginKind::Transform),
            _ => Err(anyhow::anyhow!(
                "a plugin must export exactly one of `delivery` (destination), `intake` (source) and `transformation` (transform)"
            )),
        }
        };
        let version = exported_api_version(pre, engine);
        if version.as_deref() == Some(super::inspect::CURRENT_API_VERSION) {
            let meta = meta::GuestIndices::new(pre)
                .wasm_context("reading the plugin's `plugin` export")?;
            let destination = destination::GuestIndices::new(pre).ok();
            let source = source::GuestIndices::new(pre).ok();
            let transform = transform::GuestIndices::new(pre).ok();
            let kind = kind(destination.is_some(), source.is_some(), transform.is_some())?;
            return Ok((
                Exports::Current {
                    meta,
                    destination,
                    source,
                    transform,
                },
                kind,
            ));
        }
        if version.as_deref() == Some(v1_0::API_VERSION) {
            let meta = v1_0::bindings::meta::GuestIndices::new(pre)
                .wasm_context("reading the plugin's `plugin` export")?;
            let destination = v1_0::bindings::destination::GuestIndices::new(pre).ok();
            let source = v1_0::bindings::source::GuestIndices::new(pre).ok();
            let kind = kind(destination.is_some(), source.is_some(), false)?;
            return Ok((
                Exports::V1_0 {
                    meta,
                    destination,
                    source,
                },
                kind,
            ));
        }
        anyhow::bail!(
            "the component exports neither switchyard:plugin/plugin@{} nor @{}: it is not a plugin of an API version this hub loads ({})",
            super::inspect::CURRENT_API_VERSION,
            v1_0::API_VERSION,
            super::inspect::SUPPORTED_API_VERSIONS.join(", ")
        )
    }
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin").field("name", &self.name).finish()
    }
}

impl Plugin {
    pub(crate) async fn load(
        rt: Arc<RuntimeInner>,
        component: Component,
    ) -> anyhow::Result<Plugin> {
        let pre = rt
            .linker
            .instantiate_pre(&component)
            .wasm_context("the component imports something the hub does not provide")?;
        let (exports, exported) = Exports::find(&pre, &rt.engine)?;
        let loading = Arc::new(Plugin {
            rt,
            name: Arc::from("(loading)"),
            manifest: empty_manifest(),
            pre,
            exports,
        });
        let probe = PluginInstance::new(
            loading.clone(),
            PluginConfig {
                config: "{}".into(),
                secrets: vec![],
            },
            HttpPolicy::deny_all(),
        );
        let manifest = plugin_call!(probe, "manifest", |store, instance| {
            match &probe.plugin.exports {
                Exports::Current { meta, .. } => {
                    let guest = meta.load(&mut *store, &instance)?;
                    guest.call_manifest(&mut *store).await
                }
                Exports::V1_0 { meta, .. } => {
                    let guest = meta.load(&mut *store, &instance)?;
                    guest.call_manifest(&mut *store).await.map(v1_0::manifest)
                }
            }
        })
        .map_err(anyhow::Error::from)?;
        drop(probe);
        let mut plugin = Arc::try_unwrap(loading)
            .map_err(|_| anyhow::anyhow!("plugin still in use while loading"))?;
        if manifest.kind != exported {
            anyhow::bail!(
                "the manifest says {:?} but the component exports the {:?} world",
                manifest.kind,
                exported
            );
        }
        if manifest.name.is_empty() || manifest.max_batch_size == 0 {
            anyhow::bail!("the manifest needs a name and a max-batch-size of at least 1");
        }
        plugin.name = Arc::from(manifest.name.as_str());
        plugin.manifest = manifest;
        Ok(plugin)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn manifest(&self) -> &PluginManifest {
        &self.manifest
    }

    pub fn kind(&self) -> PluginKind {
        self.manifest.kind
    }

    /// The plugin API version the component was built against.
    pub fn api_version(&self) -> &'static str {
        match self.exports {
            Exports::Current { .. } => super::inspect::CURRENT_API_VERSION,
            Exports::V1_0 { .. } => v1_0::API_VERSION,
        }
    }
}

fn empty_manifest() -> PluginManifest {
    PluginManifest {
        name: String::new(),
        version: String::new(),
        kind: PluginKind::Destination,
        description: String::new(),
        config_schema: "{}".into(),
        secrets: vec![],
        allowed_hosts: vec![],
        max_batch_size: 1,
        default_rate_per_second: 1.0,
        actions: vec![],
        key_fields: vec![],
    }
}

/// A plugin with one operator configuration (config, secrets, HTTP grants): what a
/// `[destinations.NAME]` or `[sources.NAME]` block becomes.
#[derive(Clone)]
pub struct PluginInstance {
    plugin: Arc<Plugin>,
    /// What the plugin receives: placeholders for its secrets, except those its manifest
    /// declares it needs the value of.
    config: Arc<PluginConfig>,
    policy: Arc<HttpPolicy>,
    /// The secrets' values, for filling placeholders in outgoing headers.
    secrets: Arc<Vec<(String, String)>>,
    scrubber: Arc<Scrubber>,
    limits: Arc<Limits>,
    /// Its calls' connections open between requests.
    kept: Arc<super::outbound::KeptConnections>,
}

impl PluginInstance {
    /// `config.secrets` holds the resolved values; the plugin gets them by reference unless
    /// its manifest declares otherwise (see [`secrets`]).
    pub fn new(plugin: Arc<Plugin>, config: PluginConfig, policy: HttpPolicy) -> Self {
        let raw = secrets::raw_value_names(&plugin.manifest);
        let given = config
            .secrets
            .iter()
            .map(|(name, value)| {
                let seen = if raw.contains(name) {
                    value.clone()
                } else {
                    secrets::placeholder(name)
                };
                (name.clone(), seen)
            })
            .collect();
        let scrubber = Scrubber::new(&config.secrets);
        let limits = Arc::new(plugin.rt.limits.clone());
        PluginInstance {
            plugin,
            config: Arc::new(PluginConfig {
                config: config.config,
                secrets: given,
            }),
            policy: Arc::new(policy),
            secrets: Arc::new(config.secrets),
            scrubber,
            limits,
            kept: Arc::default(),
        }
    }

    pub fn plugin(&self) -> &Plugin {
        &self.plugin
    }

    fn new_store(&self) -> (Store<PluginState>, Arc<CpuClock>) {
        let plugin = &*self.plugin;
        let limits = &plugin.rt.limits;
        let state = PluginState::new(
            plugin.name.clone(),
            PluginHttpHooks {
                plugin: plugin.name.clone(),
                policy: self.policy.clone(),
                secrets: self.secrets.clone(),
                scrubber: self.scrubber.clone(),
                hub_connections: plugin.rt.outbound.clone(),
                limits: self.limits.clone(),
                requests_made: 0,
                budget: None,
                kept: self.kept.clone(),
            },
            limits.memory_bytes,
            limits.max_stdio_bytes,
            self.scrubber.clone(),
            LogBudget::new(limits.log_lines, limits.log_bytes),
        );
        let mut store = Store::new(&plugin.rt.engine, state);
        store.limiter(|s| &mut s.memory);
        // The epoch is global and keeps ticking while the guest waits on HTTP, so an absolute
        // deadline would count waiting as CPU. Instead the deadline is one tick ahead, and at
        // each tick the guest is seen running the call's clock (time inside `poll` only) is
        // compared with the limit: waiting costs nothing, however many requests a call makes.
        // Under the limit the call yields to the executor before going on: guest code that
        // computes without waiting on I/O would otherwise hold its tokio worker (and every
        // task queued behind it: tracking requests, the ingest writer) until it finishes, up
        // to the whole CPU deadline. So it holds one for at most a tick.
        let clock = Arc::new(CpuClock::new());
        let deadline = limits.cpu_deadline;
        let running = clock.clone();
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(move |_| {
            if running.running() >= deadline {
                Err(wasmtime::Trap::Interrupt.into())
            } else {
                Ok(wasmtime::UpdateDeadline::YieldCustom(
                    1,
                    Box::pin(tokio::task::yield_now()),
                ))
            }
        });
        (store, clock)
    }

    fn finish<R>(
        &self,
        mut store: Store<PluginState>,
        outcome: Result<wasmtime::Result<R>, tokio::time::error::Elapsed>,
        started: Instant,
        span: &tracing::Span,
    ) -> Result<R, PluginError> {
        let _enter = span.enter();
        let limits = &self.plugin.rt.limits;
        let plugin = self.plugin.name.to_string();
        let last_stderr = store.data_mut().flush_stdio();
        let memory_hit = store.data().memory.hit;
        match outcome {
            Ok(Ok(value)) => {
                tracing::debug!(
                    elapsed_us = started.elapsed().as_micros() as u64,
                    memory_kib = store.data().memory.peak >> 10,
                    log_lines_dropped = store.data().log.dropped,
                    "call done"
                );
                Ok(value)
            }
            Err(_) => {
                tracing::warn!(
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "wall-clock timeout"
                );
                Err(PluginError::Timeout {
                    plugin,
                    ms: limits.wall_timeout.as_millis(),
                })
            }
            Ok(Err(err)) => {
                let error =
                    if err.downcast_ref::<wasmtime::Trap>() == Some(&wasmtime::Trap::Interrupt) {
                        PluginError::CpuDeadline {
                            plugin,
                            ms: limits.cpu_deadline.as_millis(),
                        }
                    } else if memory_hit {
                        PluginError::MemoryCap {
                            plugin,
                            mib: limits.memory_bytes >> 20,
                        }
                    } else {
                        // The trap code, or the cause a host function raised, not wasmtime's
                        // multi-line guest backtrace.
                        let mut reason = match err.downcast_ref::<wasmtime::Trap>() {
                            Some(trap) => trap.to_string(),
                            None => cause(&err),
                        };
                        if let Some(line) = last_stderr {
                            reason = format!("{line} ({reason})");
                        }
                        PluginError::Trap {
                            plugin,
                            reason: self.scrubber.scrub(&reason).into_owned(),
                        }
                    };
                tracing::warn!("{error}");
                Err(error)
            }
        }
    }

    /// Calls `check`.
    pub async fn check(&self) -> Result<(), PluginError> {
        let result = plugin_call!(self, "check", |store, instance| {
            match &self.plugin.exports {
                Exports::Current { meta, .. } => {
                    let guest = meta.load(&mut *store, &instance)?;
                    guest.call_check(&mut *store, &self.config).await
                }
                Exports::V1_0 { meta, .. } => {
                    let guest = meta.load(&mut *store, &instance)?;
                    guest
                        .call_check(&mut *store, &v1_0::config(&self.config))
                        .await
                        .map(|r| r.map_err(v1_0::call_error))
                }
            }
        })?;
        result.map_err(|error| PluginError::Plugin {
            plugin: self.plugin.name.to_string(),
            error: self.scrub_error(error),
        })
    }

    /// Delivers a batch and returns exactly one result per record, in order. `erase` goes only
    /// to a plugin whose manifest lists it ([`PluginError::UnsupportedAction`] otherwise, before
    /// any call); a plugin built against 1.0.0 receives the records without their delivery id
    /// and previous fields.
    pub async fn deliver(
        &self,
        action: Action,
        batch: &[OutboundRecord],
    ) -> Result<Vec<RecordResult>, PluginError> {
        let name = self.plugin.name.to_string();
        if action == Action::Erase && !self.plugin.manifest.actions.contains(&Action::Erase) {
            return Err(PluginError::UnsupportedAction {
                plugin: name,
                action: "erase",
            });
        }
        let missing = || PluginError::MissingExport {
            plugin: name.clone(),
            export: "destination",
        };
        let result = match &self.plugin.exports {
            Exports::Current { destination, .. } => {
                let idx = destination.as_ref().ok_or_else(missing)?;
                plugin_call!(self, "deliver", |store, instance| {
                    let guest = idx.load(&mut *store, &instance)?;
                    guest
                        .call_deliver(&mut *store, &self.config, action, batch)
                        .await
                })?
            }
            Exports::V1_0 { destination, .. } => {
                let idx = destination.as_ref().ok_or_else(missing)?;
                let Some(old_action) = v1_0::action(action) else {
                    return Err(PluginError::UnsupportedAction {
                        plugin: name,
                        action: "erase",
                    });
                };
                let records: Vec<_> = batch.iter().map(v1_0::record).collect();
                let config = v1_0::config(&self.config);
                plugin_call!(self, "deliver", |store, instance| {
                    let guest = idx.load(&mut *store, &instance)?;
                    guest
                        .call_deliver(&mut *store, &config, old_action, &records)
                        .await
                        .map(|r| {
                            r.map(|results| results.into_iter().map(v1_0::record_result).collect())
                                .map_err(v1_0::call_error)
                        })
                })?
            }
        };
        let mut results = result.map_err(|error| PluginError::Plugin {
            plugin: name.clone(),
            error: self.scrub_error(error),
        })?;
        if results.len() != batch.len() {
            return Err(PluginError::Contract {
                plugin: name,
                reason: format!(
                    "deliver returned {} results for a batch of {}",
                    results.len(),
                    batch.len()
                ),
            });
        }
        self.check_output(results.iter().map(result_size).sum())?;
        if !self.scrubber.is_empty() {
            for result in &mut results {
                match result {
                    RecordResult::Ok => {}
                    RecordResult::Retry(retry) => self.scrubber.scrub_in_place(&mut retry.reason),
                    RecordResult::Rejected(ref mut reason) => self.scrubber.scrub_in_place(reason),
                }
            }
        }
        Ok(results)
    }

    /// Lists a source's streams.
    pub async fn streams(&self) -> Result<Vec<StreamInfo>, PluginError> {
        let name = self.plugin.name.to_string();
        let missing = || PluginError::MissingExport {
            plugin: name.clone(),
            export: "source",
        };
        let result = match &self.plugin.exports {
            Exports::Current { source, .. } => {
                let idx = source.as_ref().ok_or_else(missing)?;
                plugin_call!(self, "streams", |store, instance| {
                    let guest = idx.load(&mut *store, &instance)?;
                    guest.call_streams(&mut *store, &self.config).await
                })?
            }
            Exports::V1_0 { source, .. } => {
                let idx = source.as_ref().ok_or_else(missing)?;
                let config = v1_0::config(&self.config);
                plugin_call!(self, "streams", |store, instance| {
                    let guest = idx.load(&mut *store, &instance)?;
                    guest.call_streams(&mut *store, &config).await.map(|r| {
                        r.map(|s| s.into_iter().map(v1_0::stream_info).collect())
                            .map_err(v1_0::call_error)
                    })
                })?
            }
        };
        let mut streams = result.map_err(|error| PluginError::Plugin {
            plugin: name,
            error: self.scrub_error(error),
        })?;
        for stream in &mut streams {
            self.scrubber.scrub_in_place(&mut stream.name);
            self.scrubber.scrub_in_place(&mut stream.description);
        }
        Ok(streams)
    }

    /// Reads one page of a stream from `cursor`.
    pub async fn read(&self, stream: &str, cursor: Option<&str>) -> Result<Page, PluginError> {
        let name = self.plugin.name.to_string();
        let missing = || PluginError::MissingExport {
            plugin: name.clone(),
            export: "source",
        };
        let result = match &self.plugin.exports {
            Exports::Current { source, .. } => {
                let idx = source.as_ref().ok_or_else(missing)?;
                plugin_call!(self, "read", |store, instance| {
                    let guest = idx.load(&mut *store, &instance)?;
                    guest
                        .call_read(&mut *store, &self.config, stream, cursor)
                        .await
                })?
            }
            Exports::V1_0 { source, .. } => {
                let idx = source.as_ref().ok_or_else(missing)?;
                let config = v1_0::config(&self.config);
                plugin_call!(self, "read", |store, instance| {
                    let guest = idx.load(&mut *store, &instance)?;
                    guest
                        .call_read(&mut *store, &config, stream, cursor)
                        .await
                        .map(|r| r.map(v1_0::page).map_err(v1_0::call_error))
                })?
            }
        };
        let mut page = result.map_err(|error| PluginError::Plugin {
            plugin: name,
            error: self.scrub_error(error),
        })?;
        let bytes = page
            .records
            .iter()
            .map(|r| {
                r.id.len()
                    + r.data.len()
                    + r.events
                        .iter()
                        .map(|e| e.name.len() + e.properties.len() + e.message_id.len())
                        .sum::<usize>()
            })
            .sum();
        self.check_output(bytes)?;
        if !self.scrubber.is_empty() {
            if let Some(cursor) = &mut page.cursor {
                self.scrubber.scrub_in_place(cursor);
            }
            for record in &mut page.records {
                self.scrub_record(record);
            }
        }
        Ok(page)
    }

    /// Hands a pushed request to the plugin's `webhook` export. The inner result is the plugin's
    /// verdict (refusals included); the outer one the sandbox's.
    pub async fn webhook(
        &self,
        request: &WebhookRequest,
    ) -> Result<Result<WebhookOutcome, WebhookError>, PluginError> {
        let name = self.plugin.name.to_string();
        let missing = || PluginError::MissingExport {
            plugin: name.clone(),
            export: "source",
        };
        let verdict = match &self.plugin.exports {
            Exports::Current { source, .. } => {
                let idx = source.as_ref().ok_or_else(missing)?;
                plugin_call!(self, "webhook", |store, instance| {
                    let guest = idx.load(&mut *store, &instance)?;
                    guest.call_webhook(&mut *store, &self.config, request).await
                })?
            }
            Exports::V1_0 { source, .. } => {
                let idx = source.as_ref().ok_or_else(missing)?;
                let config = v1_0::config(&self.config);
                let request = v1_0::webhook_request(request);
                plugin_call!(self, "webhook", |store, instance| {
                    let guest = idx.load(&mut *store, &instance)?;
                    guest
                        .call_webhook(&mut *store, &config, &request)
                        .await
                        .map(v1_0::webhook_verdict)
                })?
            }
        };
        if self.scrubber.is_empty() {
            return Ok(verdict);
        }
        Ok(match verdict {
            Ok(mut outcome) => {
                if let Some(id) = &mut outcome.delivery_id {
                    self.scrubber.scrub_in_place(id);
                }
                for r in &mut outcome.records {
                    self.scrubber.scrub_in_place(&mut r.stream);
                    self.scrub_record(&mut r.record);
                }
                Ok(outcome)
            }
            Err(WebhookError::Unauthorized(mut m)) => {
                self.scrubber.scrub_in_place(&mut m);
                Err(WebhookError::Unauthorized(m))
            }
            Err(WebhookError::BadRequest(mut m)) => {
                self.scrubber.scrub_in_place(&mut m);
                Err(WebhookError::BadRequest(m))
            }
        })
    }

    /// Transforms a batch of messages (each a JSON object as text, Segment's shape) and returns
    /// exactly one result per message, in order, under the same limits, deadline, tracing and
    /// scrubbing as [`PluginInstance::deliver`]: what it keeps is scrubbed of this instance's
    /// secret values before it goes anywhere.
    pub async fn transform(&self, batch: &[String]) -> Result<Vec<TransformResult>, PluginError> {
        let name = self.plugin.name.to_string();
        let idx = match &self.plugin.exports {
            Exports::Current {
                transform: Some(idx),
                ..
            } => idx,
            _ => {
                return Err(PluginError::MissingExport {
                    plugin: name,
                    export: "transform",
                })
            }
        };
        let result = plugin_call!(self, "transform", |store, instance| {
            let guest = idx.load(&mut *store, &instance)?;
            guest.call_transform(&mut *store, &self.config, batch).await
        })?;
        let mut results = result.map_err(|error| PluginError::Plugin {
            plugin: name.clone(),
            error: self.scrub_error(error),
        })?;
        if results.len() != batch.len() {
            return Err(PluginError::Contract {
                plugin: name,
                reason: format!(
                    "transform returned {} results for a batch of {}",
                    results.len(),
                    batch.len()
                ),
            });
        }
        let bytes = results
            .iter()
            .map(|r| match r {
                TransformResult::Keep(messages) => messages.iter().map(String::len).sum(),
                TransformResult::Drop(reason) => reason.len(),
            })
            .sum();
        self.check_output(bytes)?;
        if !self.scrubber.is_empty() {
            for result in &mut results {
                match result {
                    TransformResult::Keep(messages) => {
                        for m in messages {
                            self.scrubber.scrub_in_place(m);
                        }
                    }
                    TransformResult::Drop(reason) => self.scrubber.scrub_in_place(reason),
                }
            }
        }
        Ok(results)
    }

    /// A call error with every secret value of this instance scrubbed.
    fn scrub_error(&self, error: CallError) -> CallError {
        let s = &self.scrubber;
        match error {
            CallError::InvalidConfig(m) => CallError::InvalidConfig(s.scrub(&m).into_owned()),
            CallError::Unauthorized(m) => CallError::Unauthorized(s.scrub(&m).into_owned()),
            CallError::Transient(mut retry) => {
                s.scrub_in_place(&mut retry.reason);
                CallError::Transient(retry)
            }
            CallError::Failed(m) => CallError::Failed(s.scrub(&m).into_owned()),
        }
    }

    fn scrub_record(&self, record: &mut SourceRecord) {
        let s = &self.scrubber;
        s.scrub_in_place(&mut record.id);
        s.scrub_in_place(&mut record.data);
        for e in &mut record.events {
            s.scrub_in_place(&mut e.name);
            s.scrub_in_place(&mut e.message_id);
            s.scrub_in_place(&mut e.properties);
        }
    }

    fn check_output(&self, bytes: usize) -> Result<(), PluginError> {
        let cap = self.plugin.rt.limits.max_output_bytes;
        if bytes > cap {
            return Err(PluginError::OutputTooLarge {
                plugin: self.plugin.name.to_string(),
                bytes,
                cap,
            });
        }
        Ok(())
    }
}

/// The time one call has spent running: inside `poll` of its future (guest code and the host's
/// synchronous work for it), not between polls (waiting on I/O).
struct CpuClock {
    base: Instant,
    /// Nanoseconds since `base` at which the current poll started.
    poll_started: AtomicU64,
    /// Nanoseconds spent in earlier polls.
    spent: AtomicU64,
}

impl CpuClock {
    fn new() -> Self {
        CpuClock {
            base: Instant::now(),
            poll_started: AtomicU64::new(0),
            spent: AtomicU64::new(0),
        }
    }

    fn now(&self) -> u64 {
        self.base.elapsed().as_nanos() as u64
    }

    fn running_while<R>(&self, poll: impl FnOnce() -> R) -> R {
        let start = self.now();
        self.poll_started.store(start, Ordering::Relaxed);
        let result = poll();
        self.spent
            .fetch_add(self.now().saturating_sub(start), Ordering::Relaxed);
        result
    }

    /// Time run so far, the current poll included (read from inside a poll).
    fn running(&self) -> Duration {
        let current = self
            .now()
            .saturating_sub(self.poll_started.load(Ordering::Relaxed));
        Duration::from_nanos(self.spent.load(Ordering::Relaxed) + current)
    }
}

/// What a host function's error says, without the guest backtrace wasmtime wraps it in: each
/// message of the chain, first lines only, joined with `: `.
fn cause(err: &wasmtime::Error) -> String {
    let parts: Vec<String> = err
        .chain()
        .map(|e| e.to_string())
        .filter(|m| !m.starts_with("error while executing at wasm backtrace"))
        .map(|m| m.lines().next().unwrap_or_default().trim().to_string())
        .filter(|m| !m.is_empty())
        .collect();
    if parts.is_empty() {
        err.to_string()
    } else {
        parts.join(": ")
    }
}

fn result_size(r: &RecordResult) -> usize {
    match r {
        RecordResult::Ok => 1,
        RecordResult::Retry(retry) => retry.reason.len() + 8,
        RecordResult::Rejected(reason) => reason.len(),
    }
}
