//! `pii-scrub`: a transform that removes or SHA-256-hashes named fields of every message
//! before it reaches a destination (the work of RudderStack's "PII masking" transformation
//! template and Segment's "Privacy Portal" blocking, as a sandboxed plugin).
//!
//! It never drops a message for what it contains; only a message that is not a JSON object is
//! dropped, since passing it on unscrubbed could leak what the operator asked to remove.

use switchyard_sdk::{CallError, Capabilities, Context, Plugin, Transform, TransformResult};

mod scrub;

use scrub::{Config, Outcome, Scrubber};

struct PiiScrub;

impl Plugin for PiiScrub {
    type Config = Config;

    fn capabilities() -> Capabilities {
        // No hosts: scrubbing is local work. Batches of 1,000 keep a call well inside the
        // default CPU deadline (about 5 µs a message in the plugin benchmark).
        Capabilities::new().name("pii-scrub").max_batch_size(1_000)
    }

    /// Parses the paths, so `switchyard plugin check` and `switchyard validate` report a bad
    /// path before any message flows.
    fn check(ctx: &Context<Config>) -> Result<(), CallError> {
        Scrubber::new(&ctx.config)
            .map(|_| ())
            .map_err(CallError::InvalidConfig)
    }
}

impl Transform for PiiScrub {
    fn transform(
        ctx: &Context<Config>,
        batch: Vec<String>,
    ) -> Result<Vec<TransformResult>, CallError> {
        let scrubber = Scrubber::new(&ctx.config).map_err(CallError::InvalidConfig)?;
        Ok(batch
            .iter()
            .map(|message| match scrubber.apply(message) {
                Outcome::Keep(text) => TransformResult::Keep(vec![text]),
                Outcome::Drop(reason) => TransformResult::Drop(reason),
            })
            .collect())
    }
}

switchyard_sdk::export_transform!(PiiScrub);
