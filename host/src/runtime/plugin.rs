//! A loaded plugin and its configured instances; every call runs in a fresh instance.

use std::sync::Arc;
use std::time::Instant;

use super::WasmContext as _;
use tracing::Instrument;
use wasmtime::component::{Component, InstancePre};
use wasmtime::Store;

use super::bindings::{
    destination, meta, source, Action, CallError, OutboundRecord, Page, PluginConfig, PluginKind,
    PluginManifest, RecordResult, StreamInfo, WebhookError, WebhookOutcome, WebhookRequest,
};
use super::net::HttpPolicy;
use super::outbound::PluginHttpHooks;
use super::state::PluginState;
use super::RuntimeInner;

/// Why a call produced no answer from the plugin. A [`CallError`] the plugin returned on purpose
/// is `Plugin`; everything else is the sandbox stopping it.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error("plugin `{plugin}` returned an error: {}", describe(.error))]
    Plugin { plugin: String, error: CallError },
    #[error("plugin `{plugin}` exceeded its CPU deadline of {ms} ms and was stopped")]
    CpuDeadline { plugin: String, ms: u128 },
    #[error("plugin `{plugin}` took longer than {ms} ms (wall clock) and was stopped")]
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
        let mut store = this.new_store();
        let outcome = {
            let $store = &mut store;
            let run = async {
                let $instance = this.plugin.pre.instantiate_async(&mut *$store).await?;
                $body
            };
            tokio::time::timeout(this.plugin.rt.limits.wall_timeout, run.instrument(span.clone())).await
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
    meta: meta::GuestIndices,
    destination: Option<destination::GuestIndices>,
    source: Option<source::GuestIndices>,
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
        let meta = meta::GuestIndices::new(&pre)
            .wasm_context("the component does not export switchyard:plugin/plugin@1.0.0")?;
        let destination = destination::GuestIndices::new(&pre).ok();
        let source = source::GuestIndices::new(&pre).ok();
        let exported = match (&destination, &source) {
            (Some(_), None) => PluginKind::Destination,
            (None, Some(_)) => PluginKind::Source,
            _ => anyhow::bail!("a plugin must export exactly one of `destination` and `source`"),
        };
        let loading = Arc::new(Plugin {
            rt,
            name: Arc::from("(loading)"),
            manifest: empty_manifest(),
            pre,
            meta,
            destination,
            source,
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
            let guest = probe.plugin.meta.load(&mut *store, &instance)?;
            guest.call_manifest(&mut *store).await
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
    }
}

/// A plugin with one operator configuration (config, secrets, HTTP grants): what a
/// `[destinations.NAME]` or `[sources.NAME]` block becomes.
#[derive(Clone)]
pub struct PluginInstance {
    plugin: Arc<Plugin>,
    config: Arc<PluginConfig>,
    policy: Arc<HttpPolicy>,
}

impl PluginInstance {
    pub fn new(plugin: Arc<Plugin>, config: PluginConfig, policy: HttpPolicy) -> Self {
        PluginInstance {
            plugin,
            config: Arc::new(config),
            policy: Arc::new(policy),
        }
    }

    pub fn plugin(&self) -> &Plugin {
        &self.plugin
    }

    fn new_store(&self) -> Store<PluginState> {
        let plugin = &*self.plugin;
        let limits = &plugin.rt.limits;
        let state = PluginState::new(
            plugin.name.clone(),
            PluginHttpHooks {
                plugin: plugin.name.clone(),
                policy: self.policy.clone(),
                secrets: Arc::new(self.config.secrets.clone()),
            },
            limits.memory_bytes,
            limits.max_stdio_bytes,
        );
        let mut store = Store::new(&plugin.rt.engine, state);
        store.limiter(|s| &mut s.memory);
        // The epoch is global and keeps ticking while the guest waits on HTTP, so an absolute
        // deadline would count waiting as CPU. Instead the deadline is one tick ahead and each
        // tick the guest is seen running is counted: time blocked in the host costs at most
        // one tick per wait.
        let budget =
            (limits.cpu_deadline.as_millis() / super::EPOCH_TICK.as_millis()).max(1) as u64;
        let mut running_ticks = 0u64;
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(move |_| {
            running_ticks += 1;
            if running_ticks >= budget {
                Err(wasmtime::Trap::Interrupt.into())
            } else {
                Ok(wasmtime::UpdateDeadline::Continue(1))
            }
        });
        store
    }

    fn finish<R>(
        &self,
        store: Store<PluginState>,
        outcome: Result<wasmtime::Result<R>, tokio::time::error::Elapsed>,
        started: Instant,
        span: &tracing::Span,
    ) -> Result<R, PluginError> {
        let _enter = span.enter();
        let limits = &self.plugin.rt.limits;
        let plugin = self.plugin.name.to_string();
        let last_stderr = store.data().flush_stdio();
        let memory_hit = store.data().memory.hit;
        match outcome {
            Ok(Ok(value)) => {
                tracing::debug!(
                    elapsed_us = started.elapsed().as_micros() as u64,
                    memory_kib = store.data().memory.peak >> 10,
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
                        // The trap code, not wasmtime's multi-line guest backtrace.
                        let mut reason = match err.downcast_ref::<wasmtime::Trap>() {
                            Some(trap) => trap.to_string(),
                            None => err.to_string(),
                        };
                        if let Some(line) = last_stderr {
                            reason = format!("{line} ({reason})");
                        }
                        PluginError::Trap { plugin, reason }
                    };
                tracing::warn!("{error}");
                Err(error)
            }
        }
    }

    /// Calls `check`.
    pub async fn check(&self) -> Result<(), PluginError> {
        let result = plugin_call!(self, "check", |store, instance| {
            let guest = self.plugin.meta.load(&mut *store, &instance)?;
            guest.call_check(&mut *store, &self.config).await
        })?;
        result.map_err(|error| PluginError::Plugin {
            plugin: self.plugin.name.to_string(),
            error,
        })
    }

    /// Delivers a batch and returns exactly one result per record, in order.
    pub async fn deliver(
        &self,
        action: Action,
        batch: &[OutboundRecord],
    ) -> Result<Vec<RecordResult>, PluginError> {
        let name = self.plugin.name.to_string();
        let Some(idx) = &self.plugin.destination else {
            return Err(PluginError::MissingExport {
                plugin: name,
                export: "destination",
            });
        };
        let result = plugin_call!(self, "deliver", |store, instance| {
            let guest = idx.load(&mut *store, &instance)?;
            guest
                .call_deliver(&mut *store, &self.config, action, batch)
                .await
        })?;
        let results = result.map_err(|error| PluginError::Plugin {
            plugin: name.clone(),
            error,
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
        Ok(results)
    }

    /// Lists a source's streams.
    pub async fn streams(&self) -> Result<Vec<StreamInfo>, PluginError> {
        let name = self.plugin.name.to_string();
        let Some(idx) = &self.plugin.source else {
            return Err(PluginError::MissingExport {
                plugin: name,
                export: "source",
            });
        };
        let result = plugin_call!(self, "streams", |store, instance| {
            let guest = idx.load(&mut *store, &instance)?;
            guest.call_streams(&mut *store, &self.config).await
        })?;
        result.map_err(|error| PluginError::Plugin {
            plugin: name,
            error,
        })
    }

    /// Reads one page of a stream from `cursor`.
    pub async fn read(&self, stream: &str, cursor: Option<&str>) -> Result<Page, PluginError> {
        let name = self.plugin.name.to_string();
        let Some(idx) = &self.plugin.source else {
            return Err(PluginError::MissingExport {
                plugin: name,
                export: "source",
            });
        };
        let result = plugin_call!(self, "read", |store, instance| {
            let guest = idx.load(&mut *store, &instance)?;
            guest
                .call_read(&mut *store, &self.config, stream, cursor)
                .await
        })?;
        let page = result.map_err(|error| PluginError::Plugin {
            plugin: name,
            error,
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
        Ok(page)
    }

    /// Hands a pushed request to the plugin's `webhook` export. The inner result is the plugin's
    /// verdict (refusals included); the outer one the sandbox's.
    pub async fn webhook(
        &self,
        request: &WebhookRequest,
    ) -> Result<Result<WebhookOutcome, WebhookError>, PluginError> {
        let name = self.plugin.name.to_string();
        let Some(idx) = &self.plugin.source else {
            return Err(PluginError::MissingExport {
                plugin: name,
                export: "source",
            });
        };
        plugin_call!(self, "webhook", |store, instance| {
            let guest = idx.load(&mut *store, &instance)?;
            guest.call_webhook(&mut *store, &self.config, request).await
        })
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

fn result_size(r: &RecordResult) -> usize {
    match r {
        RecordResult::Ok => 1,
        RecordResult::Retry(retry) => retry.reason.len() + 8,
        RecordResult::Rejected(reason) => reason.len(),
    }
}
