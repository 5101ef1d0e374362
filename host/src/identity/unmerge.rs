//! Undoing a merge: `switchyard profiles unmerge MERGE_ID` and `POST /v1/merges/{id}/unmerge`.
//!
//! A merge records a snapshot of both sides as it happens (`store::merges`). Undoing it
//! re-creates the merged-away profile under its old id and hands back, from the profile that
//! holds the merged data now (the survivor, or whoever absorbed it later):
//!
//! - the identifiers it had (those since erased or moved elsewhere stay where they are);
//! - its events, and events received after the merge whose message names only its
//!   identifiers (an event naming identifiers of both sides, such as the message that caused the
//!   merge, stays with the survivor);
//! - its traits and consent as they were, plus what identify calls moved back with it set
//!   later (last writer wins by the messages' own timestamps). Where the merge let one of its
//!   values win on the survivor, the survivor gets back its own value from before the merge
//!   (or loses the trait, if it had none);
//! - its groups, and the merges into it that this merge had re-pointed.
//!
//! Unless the operator allows it, the two profiles may not merge again: identity resolution
//! treats a message joining them like a limit conflict (the highest-priority match wins). Both
//! profiles' `updated_at` move, so the next sync run re-adds the restored profile and updates
//! the survivor (the mapped payload changed).

use std::collections::{HashMap, HashSet};

use serde::Serialize;
use serde_json::Value;

use super::{lock_key, Identifier};
use crate::store::merges::{self as rows, MergeItem};
use crate::store::{identity as id_rows, Store, StoreError};

/// What undoing a merge did.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Unmerged {
    pub merge_id: String,
    /// The merged-away profile, back under its old id.
    pub restored_profile: String,
    /// The profile it was split from.
    pub survivor_profile: String,
    pub identifiers: usize,
    pub events: u64,
    pub traits: usize,
    /// Whether the two may merge again (`--allow-rejoin`).
    pub rejoin_allowed: bool,
}

/// Why a merge could not be undone; the HTTP API maps these to 404 and 409.
#[derive(Debug, thiserror::Error)]
pub enum UnmergeError {
    #[error("no merge has id {0}; `switchyard profiles show KIND:VALUE` lists a profile's merges")]
    NotFound(String),
    #[error("merge {0} was already undone")]
    AlreadyUndone(String),
    #[error("merge {id} cannot be undone: the profile holding its data ({holder}) no longer exists (erased?)")]
    HolderGone { id: String, holder: String },
    #[error("merge {id} cannot be undone: {reason}")]
    Conflict { id: String, reason: String },
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

impl From<StoreError> for UnmergeError {
    fn from(e: StoreError) -> Self {
        UnmergeError::Other(e.into())
    }
}

/// Undoes the merge `merge_id` in one transaction; see the module doc.
pub async fn unmerge(
    store: &Store,
    merge_id: &str,
    allow_rejoin: bool,
    now: i64,
) -> Result<Unmerged, UnmergeError> {
    let backend = store.backend();
    let mut tx = store.begin_write().await?;
    let m = match rows::merge_row(&mut tx, merge_id).await {
        Ok(m) => m,
        Err(StoreError::NotFound(_)) => return Err(UnmergeError::NotFound(merge_id.into())),
        Err(e) => return Err(e.into()),
    };
    if m.undone_at.is_some() {
        return Err(UnmergeError::AlreadyUndone(m.id));
    }
    let holder = m.into_profile.clone();
    let restored = m.from_profile.clone();
    if let Err(e) = id_rows::created_at(&mut tx, &holder).await {
        return Err(match e {
            StoreError::NotFound(_) => UnmergeError::HolderGone { id: m.id, holder },
            e => e.into(),
        });
    }
    // Hubs resolving messages with these identifiers wait for the split (PostgreSQL).
    let held = id_rows::identifiers_of(&mut tx, &holder).await?;
    let mut keys: Vec<i64> = held.iter().map(lock_key).collect();
    keys.sort_unstable();
    keys.dedup();
    id_rows::lock_all(&mut tx, backend, &keys).await?;

    let items = rows::items(&mut tx, merge_id).await?;
    let of = |side: &str, item: &str| -> Vec<&MergeItem> {
        items
            .iter()
            .filter(|i| i.side == side && i.item == item)
            .collect()
    };
    let created = of("from", "profile")
        .first()
        .and_then(|i| i.ts)
        .unwrap_or(m.at);
    match rows::recreate_profile(&mut tx, &restored, created, now).await {
        Ok(()) => {}
        Err(StoreError::Conflict(reason)) => {
            return Err(UnmergeError::Conflict { id: m.id, reason })
        }
        Err(e) => return Err(e.into()),
    }

    // Identifiers.
    let mut moved_ids = HashSet::new();
    for i in of("from", "identifier") {
        let value = i.value.clone().unwrap_or_default();
        if rows::move_identifier(&mut tx, &i.name, &value, &holder, &restored).await? {
            moved_ids.insert(Identifier {
                kind: i.name.clone(),
                value,
            });
        }
    }
    let kept_ids: HashSet<Identifier> = id_rows::identifiers_of(&mut tx, &holder)
        .await?
        .into_iter()
        .collect();

    // Events: the snapshot's, then later ones that name only the restored side.
    let mut events = rows::move_snapshot_events(&mut tx, merge_id, &holder, &restored).await?;
    let mut later_traits: Vec<(String, String, i64)> = Vec::new();
    let mut later_consent: Vec<(String, bool, i64)> = Vec::new();
    for e in rows::events_since(&mut tx, &holder, m.at).await? {
        let body: Value = serde_json::from_str(&e.body).unwrap_or(Value::Null);
        let named = message_identifiers(&body);
        let restored_side = named.iter().any(|i| moved_ids.contains(i));
        let survivor_side = named.iter().any(|i| kept_ids.contains(i));
        if !restored_side || survivor_side {
            continue;
        }
        rows::move_event(&mut tx, &e.message_id, &restored).await?;
        events += 1;
        if e.kind == "identify" {
            for (name, value) in identify_traits(&body) {
                later_traits.push((name, value.to_string(), e.ts));
            }
        }
        if let Some(ctx) = body.get("context").and_then(Value::as_object) {
            for (c, granted) in crate::consent::preferences(ctx) {
                later_consent.push((c, granted, e.ts));
            }
        }
    }

    // Traits, by their own timestamps.
    let current: HashMap<String, (String, i64)> = rows::traits(&mut tx, &holder)
        .await?
        .into_iter()
        .map(|(n, v, ts)| (n, (v, ts)))
        .collect();
    let before: HashMap<&str, (&str, i64)> = of("into", "trait")
        .into_iter()
        .map(|i| {
            (
                i.name.as_str(),
                (i.value.as_deref().unwrap_or("null"), i.ts.unwrap_or(0)),
            )
        })
        .collect();
    let mut theirs: HashMap<String, (String, i64)> = HashMap::new();
    let snapshot_traits = of("from", "trait")
        .into_iter()
        .map(|i| {
            (
                i.name.clone(),
                i.value.clone().unwrap_or_else(|| "null".into()),
                i.ts.unwrap_or(0),
            )
        })
        .chain(later_traits);
    for (name, value, ts) in snapshot_traits {
        match theirs.get(&name) {
            Some((_, t)) if *t > ts => {}
            _ => {
                theirs.insert(name, (value, ts));
            }
        }
    }
    for (name, (value, ts)) in &theirs {
        rows::put_trait(&mut tx, &restored, name, Some((value, *ts))).await?;
        let won_on_survivor = current
            .get(name)
            .is_some_and(|(v, t)| v == value && t == ts)
            && before.get(name.as_str()) != Some(&(value.as_str(), *ts));
        if won_on_survivor {
            rows::put_trait(&mut tx, &holder, name, before.get(name.as_str()).copied()).await?;
        }
    }

    // Consent, the same way.
    let current: HashMap<String, (bool, i64)> = rows::consent(&mut tx, &holder)
        .await?
        .into_iter()
        .map(|(c, g, ts)| (c, (g, ts)))
        .collect();
    let granted = |i: &MergeItem| i.value.as_deref() == Some("1");
    let before: HashMap<&str, (bool, i64)> = of("into", "consent")
        .into_iter()
        .map(|i| (i.name.as_str(), (granted(i), i.ts.unwrap_or(0))))
        .collect();
    let mut their_consent: HashMap<String, (bool, i64)> = HashMap::new();
    let snapshot_consent = of("from", "consent")
        .into_iter()
        .map(|i| (i.name.clone(), granted(i), i.ts.unwrap_or(0)))
        .chain(later_consent);
    for (c, g, ts) in snapshot_consent {
        match their_consent.get(&c) {
            Some((_, t)) if *t > ts => {}
            _ => {
                their_consent.insert(c, (g, ts));
            }
        }
    }
    for (c, (g, ts)) in &their_consent {
        rows::put_consent(&mut tx, &restored, c, Some((*g, *ts))).await?;
        let won = current.get(c) == Some(&(*g, *ts)) && before.get(c.as_str()) != Some(&(*g, *ts));
        if won {
            rows::put_consent(&mut tx, &holder, c, before.get(c.as_str()).copied()).await?;
        }
    }

    // Groups and earlier merges.
    let names = |side: &str, item: &str| -> HashSet<String> {
        of(side, item).into_iter().map(|i| i.name.clone()).collect()
    };
    rows::split_groups(
        &mut tx,
        &holder,
        &restored,
        &names("from", "group"),
        &names("into", "group"),
    )
    .await?;
    rows::repoint_earlier_merges(&mut tx, merge_id, &holder, &restored).await?;
    rows::mark_undone(&mut tx, merge_id, &holder, &restored, allow_rejoin, now).await?;
    id_rows::touch_profile(&mut tx, &holder, now).await?;
    tx.commit().await.map_err(StoreError::from)?;
    tracing::info!(merge = %merge_id, restored = %restored, survivor = %holder, identifiers = moved_ids.len(), events, allow_rejoin, "merge undone");
    Ok(Unmerged {
        merge_id: merge_id.to_string(),
        restored_profile: restored,
        survivor_profile: holder,
        identifiers: moved_ids.len(),
        events,
        traits: theirs.len(),
        rejoin_allowed: allow_rejoin,
    })
}

/// The identifiers a stored message names: its user and anonymous ids, email and phone (in
/// `traits` or `context.traits`) and `context.externalIds`, as the tracking API reads them.
fn message_identifiers(body: &Value) -> Vec<Identifier> {
    let mut out = Vec::new();
    let text = |v: Option<&Value>| -> Option<String> {
        match v? {
            Value::String(s) if !s.trim().is_empty() => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        }
    };
    if let Some(u) = text(body.get("userId")) {
        out.push(Identifier::new("user_id", &u));
    }
    if let Some(a) = text(body.get("anonymousId")) {
        out.push(Identifier::new("anonymous_id", &a));
    }
    let traits = [
        body.get("traits"),
        body.get("context").and_then(|c| c.get("traits")),
    ];
    for kind in ["email", "phone"] {
        if let Some(v) = traits.iter().flatten().find_map(|t| text(t.get(kind))) {
            out.push(Identifier::new(kind, &v));
        }
    }
    if let Some(ext) = body
        .get("context")
        .and_then(|c| c.get("externalIds"))
        .and_then(Value::as_array)
    {
        for e in ext {
            if let (Some(kind), Some(id)) = (text(e.get("type")), text(e.get("id"))) {
                out.push(Identifier::new(&kind, &id));
            }
        }
    }
    out
}

/// An identify message's traits: `context.traits`, then `traits` winning per key.
fn identify_traits(body: &Value) -> serde_json::Map<String, Value> {
    let mut all = body
        .get("context")
        .and_then(|c| c.get("traits"))
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    if let Some(own) = body.get("traits").and_then(Value::as_object) {
        all.extend(own.clone());
    }
    all
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_the_identifiers_a_message_names() {
        let ids = message_identifiers(&json!({
            "userId": "u1", "anonymousId": "", "traits": {"email": "a@x.io"},
            "context": {"traits": {"phone": "+1555", "email": "b@x.io"},
                        "externalIds": [{"type": "crm_id", "id": 7}]}}));
        assert_eq!(
            ids,
            vec![
                Identifier::new("user_id", "u1"),
                Identifier::new("email", "a@x.io"),
                Identifier::new("phone", "+1555"),
                Identifier::new("crm_id", "7"),
            ]
        );
    }

    #[test]
    fn identify_traits_prefer_the_top_level() {
        let t = identify_traits(
            &json!({"traits": {"plan": "pro"}, "context": {"traits": {"plan": "free", "name": "Ada"}}}),
        );
        assert_eq!(t["plan"], "pro");
        assert_eq!(t["name"], "Ada");
    }
}
