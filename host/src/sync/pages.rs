//! The page planner of audience and all-profiles syncs: walks the model a page at a time and
//! plans each page against the acknowledged state (adds, changes; unchanged, parked, withheld).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use anyhow::bail;

use super::delivery::Item;
use super::delivery_id;
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
    /// The destination's `key-fields`: a change of one sends the previous fields along.
    pub(super) key_fields: Vec<String>,
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
        let state =
            rows::acked_state(store, &self.sync, &keys, !self.key_fields.is_empty()).await?;
        // Keys the destination does not hold: when it last acknowledged their removal, so a
        // re-add gets a delivery id of its own.
        let absent: Vec<String> = keys
            .iter()
            .filter(|k| !state.contains_key(*k))
            .cloned()
            .collect();
        let removed = if absent.is_empty() {
            HashMap::new()
        } else {
            rows::removed_at(store, &self.sync, &absent).await?
        };
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
            let acked = state.get(&p.id);
            let previous = acked.map(|a| &a.hash);
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
            let base = match (acked, removed.get(&p.id)) {
                (Some(a), _) => delivery_id::Base::Acked(a.acked_at),
                (None, Some(at)) => delivery_id::Base::Removed(*at),
                (None, None) => delivery_id::Base::New,
            };
            let previous_fields = acked
                .and_then(|a| a.fields.as_deref())
                .filter(|old| key_field_changed(&self.key_fields, old, &fields))
                .map(str::to_string);
            upserts.push(Item {
                delivery_id: delivery_id::for_change(&self.sync, &p.id, "upsert", &hash, base),
                previous_fields,
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

/// Whether a field the destination keys contacts by had a value in the acknowledged payload
/// `old` that the new payload does not have (changed or gone): then the plugin must rename or
/// remove the contact under the old value.
fn key_field_changed(
    key_fields: &[String],
    old: &str,
    new: &serde_json::Map<String, serde_json::Value>,
) -> bool {
    let Ok(serde_json::Value::Object(old)) = serde_json::from_str::<serde_json::Value>(old) else {
        return false;
    };
    key_fields.iter().any(|f| match old.get(f) {
        None | Some(serde_json::Value::Null) => false,
        Some(was) => new.get(f) != Some(was),
    })
}

#[cfg(test)]
mod tests {
    use super::key_field_changed;

    #[test]
    fn a_key_field_changed_or_gone_sends_the_previous_fields() {
        let keys = vec!["email".to_string()];
        let new = |v: serde_json::Value| v.as_object().unwrap().clone();
        let old = r#"{"email":"old@x.com","first_name":"Ada"}"#;
        assert!(key_field_changed(
            &keys,
            old,
            &new(serde_json::json!({"email": "new@x.com"}))
        ));
        assert!(key_field_changed(
            &keys,
            old,
            &new(serde_json::json!({"first_name": "Ada"}))
        ));
        assert!(!key_field_changed(
            &keys,
            old,
            &new(serde_json::json!({"email": "old@x.com", "first_name": "Ann"}))
        ));
        // Nothing to rename when there was no old value, or the destination keys by nothing.
        assert!(!key_field_changed(
            &keys,
            r#"{"email":null}"#,
            &new(serde_json::json!({"email": "a@x"}))
        ));
        assert!(!key_field_changed(
            &[],
            old,
            &new(serde_json::json!({"email": "new@x.com"}))
        ));
    }
}
