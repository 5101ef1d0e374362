//! What one plugin instance's store holds: WASI and wasi:http contexts that grant nothing
//! beyond the plugin's HTTP policy, its memory limiter, its captured stdio, and its log budget.
//! Everything it logs is scrubbed of its instance's secret values first.

use std::sync::Arc;

use wasmtime::component::ResourceTable;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use super::bindings::switchyard::plugin::host::{Host as LogHost, LogLevel};
use super::outbound::PluginHttpHooks;
use super::secrets::Scrubber;

/// Longest log line kept from a plugin; longer ones are cut.
const MAX_LOG_LINE: usize = 4096;

/// The state of one plugin instance, alive for one call.
pub struct PluginState {
    pub(crate) plugin: Arc<str>,
    wasi: WasiCtx,
    http: WasiHttpCtx,
    table: ResourceTable,
    pub(crate) hooks: PluginHttpHooks,
    pub(crate) memory: MemoryCap,
    pub(crate) stdout: MemoryOutputPipe,
    pub(crate) stderr: MemoryOutputPipe,
    pub(crate) scrubber: Arc<Scrubber>,
    pub(crate) log: LogBudget,
}

impl PluginState {
    pub(crate) fn new(
        plugin: Arc<str>,
        hooks: PluginHttpHooks,
        memory_bytes: usize,
        stdio_bytes: usize,
        scrubber: Arc<Scrubber>,
        log: LogBudget,
    ) -> Self {
        let stdout = MemoryOutputPipe::new(stdio_bytes);
        let stderr = MemoryOutputPipe::new(stdio_bytes);
        let wasi = WasiCtxBuilder::new()
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        PluginState {
            plugin,
            wasi,
            http: WasiHttpCtx::new(),
            table: ResourceTable::new(),
            hooks,
            memory: MemoryCap {
                limit: memory_bytes,
                hit: false,
                peak: 0,
            },
            stdout,
            stderr,
            scrubber,
            log,
        }
    }

    /// Sends what the plugin printed to the log, one event per line within the call's log
    /// budget, and returns what best explains a crash: a Rust panic's message, else the last
    /// line of stderr. Secret values are scrubbed from both.
    pub(crate) fn flush_stdio(&mut self) -> Option<String> {
        let mut last = None;
        let mut panic_message = None;
        let mut after_panic = false;
        for (stream, pipe) in [("stdout", &self.stdout), ("stderr", &self.stderr)] {
            let bytes = pipe.contents();
            if bytes.is_empty() {
                continue;
            }
            let text = String::from_utf8_lossy(&bytes);
            let text = self.scrubber.scrub(&text);
            for line in text.lines().filter(|l| !l.trim().is_empty()) {
                let line = truncate(line);
                if self.log.admit(&self.plugin, line.len()) {
                    tracing::info!(plugin = %self.plugin, stream, "{line}");
                }
                if stream == "stderr" {
                    if after_panic && panic_message.is_none() {
                        panic_message = Some(format!("panicked: {line}"));
                    }
                    after_panic = line.contains("panicked at");
                    last = Some(line.to_string());
                }
            }
        }
        panic_message.or(last)
    }
}

fn truncate(s: &str) -> &str {
    if s.len() <= MAX_LOG_LINE {
        return s;
    }
    let mut end = MAX_LOG_LINE;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

impl WasiView for PluginState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for PluginState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.hooks,
        }
    }
}

impl LogHost for PluginState {
    async fn log(&mut self, level: LogLevel, message: String) {
        let plugin = &*self.plugin;
        let enabled = match level {
            LogLevel::Trace => tracing::enabled!(tracing::Level::TRACE),
            LogLevel::Debug => tracing::enabled!(tracing::Level::DEBUG),
            LogLevel::Info => tracing::enabled!(tracing::Level::INFO),
            LogLevel::Warn => tracing::enabled!(tracing::Level::WARN),
            LogLevel::Error => tracing::enabled!(tracing::Level::ERROR),
        };
        // Lines nobody would see cost no budget.
        if !enabled {
            return;
        }
        let message = truncate(&message);
        if !self.log.admit(plugin, message.len()) {
            return;
        }
        let message = self.scrubber.scrub(message);
        match level {
            LogLevel::Trace => tracing::trace!(plugin, "{message}"),
            LogLevel::Debug => tracing::debug!(plugin, "{message}"),
            LogLevel::Info => tracing::info!(plugin, "{message}"),
            LogLevel::Warn => tracing::warn!(plugin, "{message}"),
            LogLevel::Error => tracing::error!(plugin, "{message}"),
        }
    }
}

/// What one call may still log: lines and bytes. Once either runs out, one warning says so and
/// the rest of the call's lines are dropped (and counted).
#[derive(Debug, Clone)]
pub(crate) struct LogBudget {
    lines: u32,
    bytes: usize,
    line_cap: u32,
    byte_cap: usize,
    /// Lines dropped after the budget ran out.
    pub dropped: u64,
}

impl LogBudget {
    pub fn new(lines: u32, bytes: usize) -> Self {
        LogBudget {
            lines,
            bytes,
            line_cap: lines,
            byte_cap: bytes,
            dropped: 0,
        }
    }

    /// Whether a line of `len` bytes may be logged; the first refusal logs the one
    /// "log budget exhausted" line.
    fn admit(&mut self, plugin: &str, len: usize) -> bool {
        if self.dropped == 0 && self.lines > 0 && len <= self.bytes {
            self.lines -= 1;
            self.bytes -= len;
            return true;
        }
        if self.dropped == 0 {
            tracing::warn!(
                plugin,
                "log budget exhausted: a call may log {} lines or {} bytes ([hub.plugin_limits] log_lines, log_bytes); the rest of this call's lines are dropped",
                self.line_cap,
                self.byte_cap
            );
        }
        self.dropped += 1;
        false
    }
}

/// Caps linear memory and remembers that the cap was hit, so the trap that follows (an
/// allocation failure) is reported as what it is.
pub(crate) struct MemoryCap {
    pub limit: usize,
    pub hit: bool,
    /// Largest linear memory granted during the call, for the call's log event.
    pub peak: usize,
}

impl wasmtime::ResourceLimiter for MemoryCap {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.limit {
            self.hit = true;
            return Ok(false);
        }
        self.peak = self.peak.max(desired);
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }
}
