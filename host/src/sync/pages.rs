//! The page planner of audience and all-profiles syncs: walks the model a page at a time and
//! plans each page against the acknowledged state (adds, changes; unchanged, parked, withheld).

use std::collections::HashSet;
use std::sync::Arc;

use anyhow::bail;

use super::delivery::Item;
use super::plan::SAMPLES;
use super::{payload_hash, ConsentRule, Plan, LEASE_LOST};
use crate::mapping::{Mapping, Subject};
use crate::store::profiles::{self as model, Population};
use crate::store::syncs as rows;
use crate::store::Store;

/// Walks the model of an audience / all-profiles sync page by page and plans each page: the
/// records the destination lacks or holds with another payload. It owns what it needs so that
/// it can run as its own task, a page ahead of delivery.
pub(super) struct PagePlanner {
    pub(super) store: Store,
    pub(super) sync: String,
    pub(super) population: Population,
    pub(super) mapping: Mapping,
    /// (key, hash) of records parked in the dead-letter store, not planned again.
    pub(super) parked: HashSet<(String, String)>,
    pub(super) full_resync: bool,
    pub(super) lease_lost: Option<Arc<std::sync::atomic::AtomicBool>>,
    /// Incremental runs: the candidate ids still to look at. Full runs walk the population.
    pub(super) pending_ids: Option<std::vec::IntoIter<String>>,
    pub(super) after: String,
    pub(super) page_size: usize,
    /// The destination's consent requirement; profiles without it are withheld.
    pub(super) consent: ConsentRule,
    pub(super) plan: Plan,
}

impl PagePlanner {
    /// Profiles read per page by default.
    pub(super) const PAGE: usize = 20_000;

    /// The next page's adds and changes (possibly none); `None` once the model is walked.
    pub(super) async fn next_page(&mut self) -> anyhow::Result<Option<Vec<Item>>> {
        if self
            .lease_lost
            .as_ref()
            .is_some_and(|l| l.load(std::sync::atomic::Ordering::SeqCst))
        {
            bail!(LEASE_LOST);
        }
        let store = &self.store;
        let profiles = match self.pending_ids.as_mut() {
            Some(ids) => {
                let chunk: Vec<String> = ids.by_ref().take(self.page_size).collect();
                if chunk.is_empty() {
                    return Ok(None);
                }
                model::by_ids(store, &chunk).await?
            }
            None => {
                let page = model::page(store, &self.population, &self.after, self.page_size as i64)
                    .await?;
                match page.last() {
                    Some(last) => self.after = last.id.clone(),
                    None => return Ok(None),
                }
                page
            }
        };
        let keys: Vec<String> = profiles.iter().map(|p| p.id.clone()).collect();
        // Consent before anything else: a profile without it is not even mapped.
        let withheld = self.consent.withheld(store, &keys).await?;
        store.analyze_if_stale("sync_records").await?;
        let state = rows::acked_hashes(store, &self.sync, &keys).await?;
        let plan = &mut self.plan;
        let mut upserts = Vec::new();
        for p in profiles {
            if withheld.contains(&p.id) {
                plan.withheld += 1;
                continue;
            }
            let fields = self.mapping.apply(&Subject {
                profile_id: &p.id,
                created_at: p.created_at,
                updated_at: p.updated_at,
                traits: &p.traits,
                identifiers: &p.identifiers,
                event: None,
            });
            let text = serde_json::to_string(&fields)?;
            let hash = payload_hash(&text);
            let previous = state.get(&p.id);
            if previous == Some(&hash) && !self.full_resync {
                plan.unchanged += 1;
                continue;
            }
            if self.parked.contains(&(p.id.clone(), hash.clone())) {
                plan.parked += 1;
                continue;
            }
            let sample = || serde_json::json!({"key": p.id, "fields": fields});
            if previous.is_some() {
                plan.changes += 1;
                if plan.sample_changes.len() < SAMPLES {
                    plan.sample_changes.push(sample());
                }
            } else {
                plan.adds += 1;
                if plan.sample_adds.len() < SAMPLES {
                    plan.sample_adds.push(sample());
                }
            }
            upserts.push(Item {
                key: p.id,
                hash,
                fields: text,
                attempts: 0,
                last_error: None,
            });
        }
        Ok(Some(upserts))
    }
}
