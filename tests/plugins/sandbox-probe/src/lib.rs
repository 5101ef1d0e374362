//! A destination that does what its config's `mode` says, so tests can prove the sandbox holds:
//! `loop`, `alloc`, `panic`, `fetch` (GET `url`), `socket` (TCP to `url` as host:port),
//! `read-file`, `read-env`, `big-output` (1 MiB of reasons), and `map` (a normal call: the
//! benchmark's `Value` mapping, shared with `bench-mapper`).

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
}

struct Probe;

impl Plugin for Probe {
    type Config = Config;
    fn capabilities() -> Capabilities {
        Capabilities::new()
            .name("sandbox-probe")
            .allowed_host("*")
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
            other => Err(CallError::InvalidConfig(format!("unknown mode `{other}`"))),
        }
    }
}

switchyard_sdk::export_destination!(Probe);
