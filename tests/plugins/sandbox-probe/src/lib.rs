//! A destination that does what its config's `mode` says, so tests can prove the sandbox holds:
//! `loop`, `alloc`, `panic`, `fetch` (GET `url`), `socket` (TCP to `url` as host:port),
//! `read-file`, `read-env`, `big-output` (1 MiB of reasons), `secrets` (says what it received
//! for its secrets), `leak` (logs, prints and returns its declared secret), `log-flood`
//! (`count` lines of `line_len` bytes), `flood` (`count` requests at once to `url`'s authority,
//! held `hold_ms`, then counts how they ended), `many-fetch` (`count` GETs of `url` one after
//! another), `host-error` (a WASI call the host refuses with a trap), and `map` (a normal
//! call: the benchmark's `Value` mapping, shared with `bench-mapper`).

use serde::Deserialize;
use switchyard_sdk::{
    http::Request, schemars, Action, CallError, Capabilities, Context, Destination, OutboundRecord,
    Plugin, RecordResult,
};

#[path = "../../bench-mapper/src/map.rs"]
#[allow(dead_code)] // the typed mapping is only bench-mapper's
mod map;

#[derive(Deserialize, schemars::JsonSchema)]
struct Config {
    mode: String,
    #[serde(default)]
    url: String,
    #[serde(default)]
    count: u32,
    #[serde(default)]
    line_len: usize,
    #[serde(default)]
    hold_ms: u64,
}

struct Probe;

impl Plugin for Probe {
    type Config = Config;
    fn capabilities() -> Capabilities {
        Capabilities::new()
            .name("sandbox-probe")
            .allowed_host("*")
            .secret("token", "A secret the probe gets by reference", false)
            .secret_value(
                "signing_secret",
                "A secret the probe declares it needs the value of",
                false,
            )
            .max_batch_size(10_000)
            .actions(&[Action::Upsert, Action::Delete])
    }
}

impl Destination for Probe {
    fn deliver(
        ctx: &Context<Config>,
        _action: Action,
        batch: Vec<OutboundRecord>,
    ) -> Result<Vec<RecordResult>, CallError> {
        let note = |text: String| Ok(vec![RecordResult::Rejected(text); batch.len()]);
        match ctx.config.mode.as_str() {
            "ok" => Ok(vec![RecordResult::Ok; batch.len()]),
            "map" => {
                let mut out = Vec::with_capacity(batch.len() * 128);
                let results = batch
                    .iter()
                    .map(|r| match map::map_record(&r.key, &r.fields, &mut out) {
                        Ok(()) => RecordResult::Ok,
                        Err(e) => RecordResult::Rejected(e),
                    })
                    .collect();
                std::hint::black_box(&out);
                Ok(results)
            }
            "loop" => {
                let mut x: u64 = 0;
                loop {
                    x = std::hint::black_box(x.wrapping_add(1));
                }
            }
            "alloc" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            "panic" => panic!("probe was told to panic"),
            "fetch" => match Request::get(&ctx.config.url).send() {
                Ok(resp) => note(format!("fetched: HTTP {}", resp.status)),
                Err(e) => note(format!("fetch failed: {e}")),
            },
            "read-file" => {
                let file = std::fs::read_to_string("/etc/passwd");
                let dir = std::fs::read_dir("/").map(|d| d.count());
                let cwd = std::env::current_dir();
                note(format!(
                    "file: {:?}; dir: {:?}; cwd: {:?}",
                    file.map(|s| s.len()),
                    dir,
                    cwd
                ))
            }
            "socket" => match std::net::TcpStream::connect(ctx.config.url.as_str()) {
                Ok(_) => note("socket: connected".into()),
                Err(e) => note(format!("socket: {e}")),
            },
            "big-output" => note("x".repeat(1 << 20)),
            "read-env" => {
                let vars: Vec<String> = std::env::vars().map(|(k, _)| k).collect();
                note(format!(
                    "env vars: {}; HOME={:?}",
                    vars.len(),
                    std::env::var("HOME").ok()
                ))
            }
            "secrets" => {
                let seen = |name: &str| match ctx.secret(name) {
                    Err(_) => format!("{name}=absent"),
                    Ok(v) if *v == ctx.secret_placeholder(name) => format!("{name}=placeholder"),
                    // Reversed, so that the host's scrubbing of the value does not hide it.
                    Ok(v) => format!("{name}=value:{}", v.chars().rev().collect::<String>()),
                };
                note(format!("{}; {}", seen("token"), seen("signing_secret")))
            }
            "leak" => {
                let secret = ctx.secret("signing_secret")?;
                switchyard_sdk::warn!("leaking via host.log: {secret}");
                println!("leaking via stdout: {secret}");
                eprintln!("leaking via stderr: {secret}");
                note(format!("leaking via a rejection reason: {secret}"))
            }
            "leak-error" => Err(CallError::Failed(format!(
                "leaking via a call error: {}",
                ctx.secret("signing_secret")?
            ))),
            "log-flood" => {
                let line = "x".repeat(ctx.config.line_len);
                for i in 0..ctx.config.count {
                    switchyard_sdk::info!("flood {i} {line}");
                }
                Ok(vec![RecordResult::Ok; batch.len()])
            }
            "many-fetch" => {
                for i in 0..ctx.config.count {
                    if let Err(e) = Request::get(&ctx.config.url).send() {
                        return note(format!("fetch {i} failed: {e}"));
                    }
                }
                note(format!("fetched {} times", ctx.config.count))
            }
            "flood" => note(flood(&ctx.config)),
            "host-error" => {
                use switchyard_sdk::bindings::wasi::http::types::{Fields, OutgoingRequest};
                // The host allows at most 4096 bytes per blocking write and traps past that.
                let request = OutgoingRequest::new(Fields::new());
                let body = request
                    .body()
                    .map_err(|_| CallError::Failed("no body".into()))?;
                let stream = body
                    .write()
                    .map_err(|_| CallError::Failed("no stream".into()))?;
                let result = stream.blocking_write_and_flush(&[b'x'; 5000]);
                note(format!("host accepted an oversized write: {result:?}"))
            }
            other => Err(CallError::InvalidConfig(format!("unknown mode `{other}`"))),
        }
    }
}

/// Starts `count` GETs of `url` (http://HOST:PORT) at once without waiting for any, holds them
/// `hold_ms`, then says how many failed at once (and why), answered, or are still pending.
fn flood(config: &Config) -> String {
    use std::collections::BTreeMap;
    use switchyard_sdk::bindings::wasi::clocks::monotonic_clock;
    use switchyard_sdk::bindings::wasi::http::outgoing_handler;
    use switchyard_sdk::bindings::wasi::http::types::{Fields, OutgoingRequest, Scheme};

    let authority = config
        .url
        .trim_start_matches("http://")
        .trim_end_matches('/');
    let mut pending = Vec::new();
    let mut errors: BTreeMap<String, u32> = BTreeMap::new();
    for _ in 0..config.count {
        let request = OutgoingRequest::new(Fields::new());
        let _ = request.set_scheme(Some(&Scheme::Http));
        let _ = request.set_authority(Some(authority));
        let _ = request.set_path_with_query(Some("/flood"));
        match outgoing_handler::handle(request, None) {
            Ok(future) => pending.push(future),
            Err(code) => *errors.entry(format!("{code:?}")).or_default() += 1,
        }
    }
    monotonic_clock::subscribe_duration(config.hold_ms * 1_000_000).block();
    let (mut answered, mut waiting) = (0, 0);
    for future in &pending {
        // A future becomes ready to `get` once its pollable has seen it so.
        let _ = future.subscribe().ready();
        match future.get() {
            None => waiting += 1,
            Some(Ok(Ok(_))) => answered += 1,
            Some(Ok(Err(code))) => *errors.entry(format!("{code:?}")).or_default() += 1,
            Some(Err(())) => *errors.entry("taken".into()).or_default() += 1,
        }
    }
    let failed: u32 = errors.values().sum();
    format!(
        "started {}; failed {failed}; answered {answered}; pending {waiting}; errors {errors:?}",
        config.count
    )
}

switchyard_sdk::export_destination!(Probe);
