//! The plugin runtime: wasmtime with the component model, one pooled, pre-instantiated
//! component per plugin and a fresh instance per call.
//!
//! A call gets no filesystem, environment or sockets; outbound HTTP only through
//! [`net::HttpPolicy`]; a memory cap; a CPU deadline (epoch interruption, counting only the
//! ticks in which guest code runs, so waiting on a slow API is not CPU) paired with a
//! wall-clock timeout for everything; and a cap on what it may return. Any trap is an error of
//! that call alone.

pub mod inspect;
pub mod net;
mod outbound;
mod plugin;
pub mod secrets;
mod state;
pub mod v1_0;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use wasmtime::component::{Component, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

pub use plugin::{Plugin, PluginError, PluginInstance};
pub use state::PluginState;

/// Generated from the newest contract in `plugin-sdk/wit` (`switchyard:plugin@1.1.0`): the
/// host's `host` import and the four plugin exports, looked up one by one so a component needs
/// only those of its world. Plugins built against an older version are loaded through
/// [`v1_0`] and converted to these types, so the rest of the hub sees only these.
pub mod bindings {
    wasmtime::component::bindgen!({
        path: "../plugin-sdk/wit",
        inline: "
            package switchyard:hub;
            world hub {
                import switchyard:plugin/host@1.1.0;
                export switchyard:plugin/plugin@1.1.0;
                export switchyard:plugin/delivery@1.1.0;
                export switchyard:plugin/intake@1.1.0;
                export switchyard:plugin/transformation@1.1.0;
            }
        ",
        world: "switchyard:hub/hub",
        imports: { default: async },
        exports: { default: async },
    });

    pub use self::switchyard::plugin::types::*;
    pub use exports::switchyard::plugin::{
        delivery as destination, intake as source, plugin as meta, transformation as transform,
    };
}

/// The limits every call runs under: the host's defaults, which the operator may set in
/// `[hub.plugin_limits]`. They are also the ceilings: the plugin manifest has no field for a
/// plugin to ask for less.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Linear memory one instance may grow to.
    pub memory_bytes: usize,
    /// CPU time one call may spend running (guest code and the host's work for it; time spent
    /// waiting on I/O is not counted).
    pub cpu_deadline: Duration,
    /// Wall-clock time one call may take, waiting on I/O included.
    pub wall_timeout: Duration,
    /// Bytes of data a call may return (JSON text and strings summed).
    pub max_output_bytes: usize,
    /// Instances that may be alive at once (sizes the pooling allocator).
    pub max_instances: u32,
    /// Bytes of stdout/stderr kept per call for the log.
    pub max_stdio_bytes: usize,
    /// Lines one call may log (`host.log`, stdout and stderr together); then one
    /// "log budget exhausted" line and the rest of the call's lines are dropped.
    pub log_lines: u32,
    /// Bytes one call may log, counted as for `log_lines`.
    pub log_bytes: usize,
    /// Outgoing connections one call may have open at once.
    pub connections_per_call: usize,
    /// Outgoing requests one call may make in all.
    pub requests_per_call: u32,
    /// Response bytes one call may receive in all.
    pub received_bytes_per_call: u64,
    /// Outgoing connections all plugin calls together may have open; None: half the process's
    /// file descriptor limit (at most 4,096), so the hub keeps the other half for its
    /// listeners, database and clients.
    pub hub_connections: Option<usize>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory_bytes: 64 << 20,
            cpu_deadline: Duration::from_secs(5),
            wall_timeout: Duration::from_secs(60),
            max_output_bytes: 16 << 20,
            max_instances: 64,
            max_stdio_bytes: 64 << 10,
            log_lines: 1_000,
            log_bytes: 256 << 10,
            connections_per_call: 32,
            requests_per_call: 2_000,
            received_bytes_per_call: 256 << 20,
            hub_connections: None,
        }
    }
}

impl Limits {
    /// Outgoing connections all plugin calls may hold, given the process's file descriptor
    /// limit now.
    pub fn hub_connections(&self) -> usize {
        self.hub_connections.unwrap_or_else(|| {
            let soft = rlimit::getrlimit(rlimit::Resource::NOFILE)
                .map(|(soft, _)| soft)
                .unwrap_or(1024);
            (soft / 2).clamp(16, 4096) as usize
        })
    }
}

/// Raises the soft file descriptor limit to the hard one, at hub start: plugin calls get half
/// of it at most (see [`Limits::hub_connections`]). Returns the new soft limit.
pub fn raise_fd_limit() -> std::io::Result<u64> {
    rlimit::increase_nofile_limit(u64::MAX)
}

/// How often the epoch advances; the CPU deadline is counted in these ticks.
const EPOCH_TICK: Duration = Duration::from_millis(5);

/// The engine, linker and epoch ticker shared by every plugin.
#[derive(Clone)]
pub struct Runtime {
    inner: Arc<RuntimeInner>,
}

pub(crate) struct RuntimeInner {
    pub engine: Engine,
    pub linker: Linker<PluginState>,
    pub limits: Limits,
    /// Outgoing connections all calls together may still open (see [`Limits::hub_connections`]).
    pub outbound: Arc<tokio::sync::Semaphore>,
    stop_ticker: Arc<AtomicBool>,
}

impl Drop for RuntimeInner {
    fn drop(&mut self) {
        self.stop_ticker.store(true, Ordering::Relaxed);
    }
}

impl Runtime {
    pub fn new(limits: Limits) -> anyhow::Result<Runtime> {
        let engine =
            Engine::new(&engine_config(&limits)).wasm_context("creating the wasm engine")?;
        let mut linker = Linker::<PluginState>::new(&engine);
        // All of WASI p2 is linked so that any toolchain's component instantiates, but the
        // context grants nothing: no preopened dirs, no env, no sockets, no name lookup.
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).wasm_context("linking WASI")?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)
            .wasm_context("linking wasi:http")?;
        bindings::switchyard::plugin::host::add_to_linker::<
            PluginState,
            wasmtime::component::HasSelf<PluginState>,
        >(&mut linker, |s| s)
        .wasm_context("linking the switchyard host interface")?;
        // Plugins built against plugin API 1.0.0 import the same functions under that version.
        v1_0::bindings::switchyard::plugin::host::add_to_linker::<
            PluginState,
            wasmtime::component::HasSelf<PluginState>,
        >(&mut linker, |s| s)
        .wasm_context("linking the switchyard host interface 1.0.0")?;

        let stop_ticker = Arc::new(AtomicBool::new(false));
        let ticker_engine = engine.weak();
        let stop = stop_ticker.clone();
        std::thread::Builder::new()
            .name("switchyard-epoch".into())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    match ticker_engine.upgrade() {
                        Some(engine) => engine.increment_epoch(),
                        None => break,
                    }
                }
            })
            .context("starting the epoch ticker")?;

        Ok(Runtime {
            inner: Arc::new(RuntimeInner {
                engine,
                linker,
                outbound: Arc::new(tokio::sync::Semaphore::new(limits.hub_connections())),
                limits,
                stop_ticker,
            }),
        })
    }

    pub fn engine(&self) -> &Engine {
        &self.inner.engine
    }

    pub fn limits(&self) -> &Limits {
        &self.inner.limits
    }

    /// Compiles a component's bytes with Cranelift (seconds for a large plugin: done once, at
    /// install, then cached).
    pub fn compile(&self, wasm: &[u8]) -> anyhow::Result<Component> {
        Component::new(&self.inner.engine, wasm).wasm_context("compiling the component")
    }

    /// Compiles to the engine's native artefact, for the on-disk cache.
    pub fn precompile(&self, wasm: &[u8]) -> anyhow::Result<Vec<u8>> {
        self.inner
            .engine
            .precompile_component(wasm)
            .wasm_context("precompiling the component")
    }

    /// A key naming artefacts this engine can load: its compatibility hash.
    pub fn compatibility_key(&self) -> String {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        self.inner
            .engine
            .precompile_compatibility_hash()
            .hash(&mut hasher);
        format!("{:016x}", hasher.finish())
    }

    /// Loads an artefact produced by [`Runtime::precompile`].
    ///
    /// # Safety
    /// Only for files this host wrote: wasmtime trusts precompiled code.
    pub unsafe fn load_precompiled(&self, path: &std::path::Path) -> anyhow::Result<Component> {
        unsafe { Component::deserialize_file(&self.inner.engine, path) }
            .wasm_context(&format!("loading precompiled plugin {}", path.display()))
    }

    /// Pre-instantiates a component and reads its manifest.
    pub async fn load(&self, component: Component) -> anyhow::Result<Plugin> {
        Plugin::load(self.inner.clone(), component).await
    }
}

fn engine_config(limits: &Limits) -> Config {
    let mut config = Config::new();
    config.wasm_component_model(true);
    config.epoch_interruption(true);
    let mut pool = PoolingAllocationConfig::default();
    let n = limits.max_instances.max(1);
    pool.total_component_instances(n);
    // Components made by wit-component hold a few core instances (the module, shims, fix-ups).
    pool.total_core_instances(n * 8);
    pool.total_memories(n * 2);
    pool.total_tables(n * 4);
    pool.max_memory_size(limits.memory_bytes);
    // Reset a slot's pages with memset instead of returning them to the kernel, so a fresh
    // instance does not page-fault its way through the heap it touches on every call. With
    // PAGEMAP_SCAN (Linux 6.7+) only the pages the last call dirtied are reset: a Rust guest's
    // 1 MiB shadow stack sits below its data and is mostly untouched, and memsetting all of it
    // was a third of the cost of a fresh instance.
    pool.pagemap_scan(wasmtime::Enabled::Auto);
    pool.linear_memory_keep_resident(4 << 20);
    pool.table_keep_resident(64 << 10);
    // Whatever must still go back to the kernel goes in batches of madvise calls.
    pool.decommit_batch_size(16);
    config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    // `perf` can name plugin functions when the JIT writes /tmp/perf-PID.map.
    if std::env::var("SWITCHYARD_WASM_PROFILER").as_deref() == Ok("perfmap") {
        config.profiler(wasmtime::ProfilingStrategy::PerfMap);
    }
    config
}

/// `.context()` for wasmtime's own error type, which is not `std::error::Error`.
pub(crate) trait WasmContext<T> {
    fn wasm_context(self, what: &str) -> anyhow::Result<T>;
}

impl<T> WasmContext<T> for Result<T, wasmtime::Error> {
    fn wasm_context(self, what: &str) -> anyhow::Result<T> {
        self.map_err(|e| anyhow::Error::from(e).context(what.to_string()))
    }
}
