//! Events syncs: each matching track event once, in the order received, from where the
//! sync's cursor stopped; the cursor moves after each delivered page.

use std::collections::HashMap;

use anyhow::bail;

use super::delivery::{Item, Target};
use super::delivery_id;
use super::{payload_hash, ConsentRule, RunContext, RunOptions, SAMPLES};
use crate::config::compile::Project;
use crate::config::SyncFrom;
use crate::mapping::Subject;
use crate::runtime::bindings::Action;
use crate::store::now_millis;
use crate::store::profiles::{self as model, ProfileData};
use crate::store::syncs as rows;

impl RunContext<'_> {
    /// Events syncs: each matching event once, in the order received.
    pub(super) async fn run_events(
        &mut self,
        config: &Project,
        target: &Target,
        options: &RunOptions,
    ) -> anyhow::Result<()> {
        let consent = ConsentRule::of(config, self.sync);
        let store = &self.engine.store;
        let sync = self.sync;
        let (event_name, filter) = match &sync.from {
            SyncFrom::Events { events, .. } => {
                (events.clone(), self.compiled.event_filter.as_ref())
            }
            _ => bail!(
                "sync `{}`: mode = \"events\" needs from = {{ events = ... }}",
                sync.name
            ),
        };
        let mapping = &self.compiled.mapping;
        let cursor = if options.full_resync {
            None
        } else {
            rows::event_cursor(store, &sync.name).await?
        };
        let (mut at, mut last_id) = cursor.unwrap_or((i64::MIN, String::new()));
        // Messages are stamped before their commit lands: leave the last moments for next time.
        let horizon = now_millis() - 2_000;
        let page = (target.batch_size * target.concurrency.max(1) * 4).clamp(100, 20_000) as i64;
        loop {
            let page_rows =
                rows::events_after(store, &event_name, (at, &last_id), horizon, page).await?;
            if page_rows.is_empty() {
                break;
            }
            let fetched = page_rows.len();
            let events: Vec<(String, String, i64, serde_json::Value)> = page_rows
                .into_iter()
                .map(|r| {
                    let body = serde_json::from_str(&r.body).unwrap_or_default();
                    (r.message_id, r.profile_id, r.received_at, body)
                })
                .collect();
            let mut ids: Vec<String> = events.iter().map(|e| e.1.clone()).collect();
            ids.sort();
            ids.dedup();
            let profiles: HashMap<String, ProfileData> =
                model::load(store, &ids, filter.as_ref().is_some_and(|f| f.uses_events))
                    .await?
                    .into_iter()
                    .map(|p| (p.id.clone(), p))
                    .collect();
            // Consent first: the profile's latest state, and the event's own stamp if it has one.
            let withheld = consent.withheld(store, &ids).await?;
            let keys: Vec<String> = events.iter().map(|e| e.0.clone()).collect();
            let done = rows::acked_keys(store, &sync.name, &keys).await?;
            let mut items = Vec::new();
            for (message_id, profile_id, _, body) in &events {
                if done.contains(message_id) {
                    self.plan.unchanged += 1;
                    continue;
                }
                if !consent.required.is_empty()
                    && (withheld.contains(profile_id)
                        || !crate::consent::event_allows(body, &consent.required))
                {
                    self.plan.withheld += 1;
                    continue;
                }
                let empty = ProfileData {
                    id: profile_id.clone(),
                    ..Default::default()
                };
                let p = profiles.get(profile_id).unwrap_or(&empty);
                if let Some(f) = &filter {
                    match f.matches(p, Some(body)) {
                        Ok(true) => {}
                        Ok(false) => continue,
                        Err(e) => {
                            tracing::warn!(message_id = %message_id, "event filter failed: {e}");
                            continue;
                        }
                    }
                }
                let fields = mapping.apply(&Subject {
                    profile_id: &p.id,
                    created_at: p.created_at,
                    updated_at: p.updated_at,
                    traits: &p.traits,
                    identifiers: &p.identifiers,
                    event: Some(body),
                });
                let text = serde_json::to_string(&fields)?;
                self.plan.adds += 1;
                if self.plan.sample_adds.len() < SAMPLES {
                    self.plan
                        .sample_adds
                        .push(serde_json::json!({"key": message_id, "fields": fields}));
                }
                items.push(Item {
                    delivery_id: delivery_id::for_event(&sync.name, message_id),
                    previous_fields: None,
                    key: message_id.clone(),
                    hash: payload_hash(&text),
                    fields: text,
                    attempts: 0,
                    last_error: None,
                });
            }
            let last = events.last().map(|e| (e.2, e.0.clone()));
            if !options.dry_run {
                if let Some(p) = &self.progress {
                    p.planned(self.plan.adds);
                }
                self.deliver(target, Action::Track, items).await?;
                if let Some((received, id)) = &last {
                    rows::save_event_cursor(store, &sync.name, *received, id).await?;
                }
            }
            match last {
                Some((received, id)) => {
                    at = received;
                    last_id = id;
                }
                None => break,
            }
            if (fetched as i64) < page {
                break;
            }
        }
        Ok(())
    }
}
