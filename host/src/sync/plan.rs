//! What a sync run plans: the counts and samples of adds, changes and removals, the payload
//! hash the diff compares, and the removal guardrail. Pure: no store, no plugin.

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::config::MaxRemovals;

/// What a run planned: counts and a few samples of each.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Plan {
    pub adds: u64,
    pub changes: u64,
    pub removals: u64,
    pub unchanged: u64,
    /// Records waiting in the dead-letter store with the same payload, not re-sent.
    pub parked: u64,
    /// Profiles or events held back because they lack a consent category the destination
    /// requires ("withheld: no consent"); never mapped, never sent.
    pub withheld: u64,
    pub sample_adds: Vec<serde_json::Value>,
    pub sample_changes: Vec<serde_json::Value>,
    pub sample_removals: Vec<serde_json::Value>,
}

impl Plan {
    /// Adds a later part of the same run's plan to this one.
    pub(super) fn absorb(&mut self, other: Plan) {
        self.adds += other.adds;
        self.changes += other.changes;
        self.removals += other.removals;
        self.unchanged += other.unchanged;
        self.parked += other.parked;
        self.withheld += other.withheld;
        for (mine, theirs) in [
            (&mut self.sample_adds, other.sample_adds),
            (&mut self.sample_changes, other.sample_changes),
            (&mut self.sample_removals, other.sample_removals),
        ] {
            let room = SAMPLES.saturating_sub(mine.len());
            mine.extend(theirs.into_iter().take(room));
        }
    }
}

/// The guardrail stopped a run.
#[derive(Debug)]
pub(super) struct Blocked {
    pub(super) plan: Plan,
    pub(super) message: String,
}

impl std::fmt::Display for Blocked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Blocked {}

/// Hash of a mapped payload, as the state remembers it.
pub fn payload_hash(fields: &str) -> String {
    hex::encode(&Sha256::digest(fields.as_bytes())[..16])
}

pub(super) const SAMPLES: usize = 5;

/// The removal guardrail: Err with the message that blocks the run when it would remove more of
/// the destination's `existing` records than `max_removals` allows and nobody approved it.
pub fn guardrail(
    sync: &str,
    max_removals: Option<MaxRemovals>,
    removals: u64,
    existing: i64,
    approved: bool,
) -> Result<(), String> {
    let Some(guard) = max_removals else {
        return Ok(());
    };
    let limit = guard.limit(existing as u64);
    if removals <= limit || approved {
        return Ok(());
    }
    Err(format!(
        "blocked by the guardrail: this run would remove {removals} of the destination's {existing} records, more than max_removals allows ({limit}). \
         Nothing was sent. If that is intended, run `switchyard sync run {sync} --approve-removals` (or POST /v1/syncs/{sync}/run?approve_removals=true), \
         or raise max_removals"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_guardrail_blocks_more_removals_than_allowed_unless_approved() {
        assert!(guardrail("s", None, 1_000, 1_000, false).is_ok());
        let pct = Some(MaxRemovals::Percent(10.0));
        assert!(guardrail("s", pct, 10, 100, false).is_ok());
        let blocked = guardrail("s", pct, 11, 100, false).unwrap_err();
        assert!(blocked.starts_with("blocked by the guardrail: this run would remove 11 of the destination's 100 records, more than max_removals allows (10)"), "{blocked}");
        assert!(blocked.contains("switchyard sync run s --approve-removals"));
        assert!(guardrail("s", pct, 11, 100, true).is_ok());
        assert!(guardrail("s", Some(MaxRemovals::Count(0)), 1, 5, false).is_err());
    }

    #[test]
    fn plans_add_up_and_keep_a_few_samples() {
        let mut plan = Plan {
            adds: 3,
            sample_adds: vec![serde_json::json!(1); 3],
            ..Plan::default()
        };
        plan.absorb(Plan {
            adds: 4,
            removals: 1,
            sample_adds: vec![serde_json::json!(2); 4],
            ..Plan::default()
        });
        assert_eq!((plan.adds, plan.removals), (7, 1));
        assert_eq!(plan.sample_adds.len(), SAMPLES);
    }

    #[test]
    fn the_payload_hash_is_stable_and_short() {
        assert_eq!(payload_hash("{}"), payload_hash("{}"));
        assert_ne!(payload_hash("{\"a\":1}"), payload_hash("{\"a\":2}"));
        assert_eq!(payload_hash("{}").len(), 32);
    }
}
