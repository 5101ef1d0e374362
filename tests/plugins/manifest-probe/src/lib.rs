//! A destination whose manifest is not a constant: it depends on how much memory the host lets
//! it allocate, the one input a `manifest()` call sees that a test can set exactly (a runtime's
//! memory cap). Under the default 64 MiB it asks for `api.example.com`; under 16-40 MiB it asks
//! for `elsewhere.example.net` instead, as a plugin that changes its grants between loads would;
//! under less it declares a bloated manifest (a 1 MiB description and 1,000 hosts) for the
//! manifest caps to refuse.

use serde::Deserialize;
use switchyard_sdk::{
    schemars, Action, CallError, Capabilities, Context, Destination, OutboundRecord, Plugin,
    RecordResult,
};

#[derive(Deserialize, schemars::JsonSchema)]
struct Config {}

/// Whether `mib` MiB more can be allocated now (the allocation is released at once).
fn can_allocate(mib: usize) -> bool {
    let mut v: Vec<u8> = Vec::new();
    v.try_reserve_exact(mib << 20).is_ok()
}

struct ManifestProbe;

impl Plugin for ManifestProbe {
    type Config = Config;
    fn capabilities() -> Capabilities {
        let caps = Capabilities::new().name("manifest-probe");
        if can_allocate(40) {
            caps.allowed_host("api.example.com")
        } else if can_allocate(8) {
            caps.allowed_host("elsewhere.example.net")
        } else {
            let mut caps = caps.description(&"bloat ".repeat(1 << 18));
            for i in 0..1000 {
                caps = caps.allowed_host(&format!("h{i}.example.com"));
            }
            caps
        }
    }
}

impl Destination for ManifestProbe {
    fn deliver(
        _ctx: &Context<Config>,
        _action: Action,
        batch: Vec<OutboundRecord>,
    ) -> Result<Vec<RecordResult>, CallError> {
        Ok(vec![RecordResult::Ok; batch.len()])
    }
}

switchyard_sdk::export_destination!(ManifestProbe);
