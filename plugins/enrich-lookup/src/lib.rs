//! `enrich-lookup`: a transform that adds fields to messages from a static table given in its
//! config (a product id → category, a store code → region), the work RudderStack users do with
//! a transformation and a lookup object, as a sandboxed plugin with no network access.
//!
//! The table crosses into the plugin with the config on every call and is parsed once per
//! batch: a table of some thousands of rows costs little at batches of 1,000; a catalogue of
//! millions belongs in a lookup service, not in `switchyard.toml`.

use switchyard_sdk::{CallError, Capabilities, Context, Plugin, Transform, TransformResult};

mod lookup;

use lookup::{Config, Enricher, Outcome};

struct EnrichLookup;

impl Plugin for EnrichLookup {
    type Config = Config;

    fn capabilities() -> Capabilities {
        Capabilities::new()
            .name("enrich-lookup")
            .max_batch_size(1_000)
    }

    /// Parses every lookup's paths, so `switchyard plugin check` and `switchyard validate`
    /// report a bad one before any message flows.
    fn check(ctx: &Context<Config>) -> Result<(), CallError> {
        Enricher::new(&ctx.config)
            .map(|_| ())
            .map_err(CallError::InvalidConfig)
    }
}

impl Transform for EnrichLookup {
    fn transform(
        ctx: &Context<Config>,
        batch: Vec<String>,
    ) -> Result<Vec<TransformResult>, CallError> {
        let enricher = Enricher::new(&ctx.config).map_err(CallError::InvalidConfig)?;
        Ok(batch
            .iter()
            .map(|message| match enricher.apply(message) {
                Outcome::Keep(text) => TransformResult::Keep(vec![text]),
                Outcome::Drop(reason) => TransformResult::Drop(reason),
            })
            .collect())
    }
}

switchyard_sdk::export_transform!(EnrichLookup);
