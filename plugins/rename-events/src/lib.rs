//! `rename-events`: a transform that renames track events to a tracking plan's names and, when
//! configured, drops the events the plan does not name (what Segment Protocols calls blocking
//! unplanned events, as a sandboxed plugin).

use switchyard_sdk::{CallError, Capabilities, Context, Plugin, Transform, TransformResult};

mod plan;

use plan::{Config, Outcome, Plan};

struct RenameEvents;

impl Plugin for RenameEvents {
    type Config = Config;

    fn capabilities() -> Capabilities {
        Capabilities::new()
            .name("rename-events")
            .max_batch_size(1_000)
    }

    /// Compiles the plan, so a name claimed twice is reported before any message flows.
    fn check(ctx: &Context<Config>) -> Result<(), CallError> {
        Plan::new(&ctx.config)
            .map(|_| ())
            .map_err(CallError::InvalidConfig)
    }
}

impl Transform for RenameEvents {
    fn transform(
        ctx: &Context<Config>,
        batch: Vec<String>,
    ) -> Result<Vec<TransformResult>, CallError> {
        let plan = Plan::new(&ctx.config).map_err(CallError::InvalidConfig)?;
        Ok(batch
            .iter()
            .map(|message| match plan.apply(message) {
                Outcome::Keep(text) => TransformResult::Keep(vec![text]),
                Outcome::Drop(reason) => TransformResult::Drop(reason),
            })
            .collect())
    }
}

switchyard_sdk::export_transform!(RenameEvents);
