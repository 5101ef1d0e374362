//! The plugin benchmark's destination: maps and serialises every record of a batch and sends
//! nothing (`mode` = `map` or `map-typed`, see `map.rs`; `ok` answers without looking).
//!
//! It is kept apart from `sandbox-probe` on purpose: the probe reaches for files and sockets to
//! prove the sandbox refuses them, which links about 80 more WASI functions into it, and every
//! imported function is set up again for each fresh instance. A real destination imports only
//! HTTP, logging and clocks, like this one.

use serde::Deserialize;
use switchyard_sdk::{
    schemars, Action, CallError, Capabilities, Context, Destination, OutboundRecord, Plugin,
    RecordResult,
};

mod map;

#[derive(Deserialize, schemars::JsonSchema)]
struct Config {
    /// `ok`, `map` or `map-typed`.
    mode: String,
}

struct Mapper;

impl Plugin for Mapper {
    type Config = Config;
    fn capabilities() -> Capabilities {
        Capabilities::new()
            .name("bench-mapper")
            .max_batch_size(10_000)
            .actions(&[Action::Upsert, Action::Delete])
    }
}

impl Destination for Mapper {
    fn deliver(
        ctx: &Context<Config>,
        _action: Action,
        batch: Vec<OutboundRecord>,
    ) -> Result<Vec<RecordResult>, CallError> {
        let map_record = match ctx.config.mode.as_str() {
            "ok" => return Ok(vec![RecordResult::Ok; batch.len()]),
            "map" => map::map_record,
            "map-typed" => map::map_record_typed,
            other => {
                return Err(CallError::InvalidConfig(format!(
                    "unknown mode `{other}`: use `ok`, `map` or `map-typed`"
                )))
            }
        };
        let mut out = Vec::with_capacity(batch.len() * 128);
        let results = batch
            .iter()
            .map(|r| match map_record(&r.key, &r.fields, &mut out) {
                Ok(()) => RecordResult::Ok,
                Err(e) => RecordResult::Rejected(e),
            })
            .collect();
        std::hint::black_box(&out);
        Ok(results)
    }
}

switchyard_sdk::export_destination!(Mapper);
