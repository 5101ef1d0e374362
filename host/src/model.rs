//! Profiles loaded in bulk for audiences and syncs: id, times, traits, identifiers and (when a
//! filter needs them) events, a page of profiles per few queries.

use std::collections::{BTreeMap, HashMap};

use serde_json::{Map, Value};
use sqlx::Row;

use crate::store::Store;

/// Everything an audience filter or a sync mapping can read about one profile.
#[derive(Debug, Clone, Default)]
pub struct ProfileData {
    pub id: String,
    pub created_at: i64,
    pub updated_at: i64,
    pub traits: Map<String, Value>,
    /// kind → values, earliest first.
    pub identifiers: BTreeMap<String, Vec<String>>,
    /// Track events (name, ts, properties), oldest first; empty unless asked for.
    pub events: Vec<EventFact>,
}

/// One tracked event as filters see it.
#[derive(Debug, Clone)]
pub struct EventFact {
    pub name: String,
    pub ts: i64,
    pub properties: Value,
}

/// Binds in one `IN (...)`: well under SQLite's and PostgreSQL's limits.
pub const CHUNK: usize = 500;

fn placeholders(from: usize, n: usize) -> String {
    (from..from + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Loads the profiles with these ids (missing ones are left out), in the order given.
pub async fn load(
    store: &Store,
    ids: &[String],
    with_events: bool,
) -> anyhow::Result<Vec<ProfileData>> {
    let mut out = Vec::with_capacity(ids.len());
    for chunk in ids.chunks(CHUNK) {
        let list = placeholders(1, chunk.len());
        let mut by_id: HashMap<String, ProfileData> = HashMap::with_capacity(chunk.len());

        let sql = format!("SELECT id, created_at, updated_at FROM profiles WHERE id IN ({list})");
        let mut q = sqlx::query(&sql);
        for id in chunk {
            q = q.bind(id);
        }
        for row in q.fetch_all(store.pool()).await? {
            let id: String = row.try_get(0)?;
            by_id.insert(
                id.clone(),
                ProfileData {
                    id,
                    created_at: row.try_get(1)?,
                    updated_at: row.try_get(2)?,
                    ..Default::default()
                },
            );
        }
        if by_id.is_empty() {
            continue;
        }

        let sql = format!("SELECT profile_id, name, value FROM traits WHERE profile_id IN ({list})");
        let mut q = sqlx::query(&sql);
        for id in chunk {
            q = q.bind(id);
        }
        for row in q.fetch_all(store.pool()).await? {
            let pid: String = row.try_get(0)?;
            let name: String = row.try_get(1)?;
            let value: String = row.try_get(2)?;
            if let Some(p) = by_id.get_mut(&pid) {
                p.traits.insert(
                    name,
                    serde_json::from_str(&value).unwrap_or(Value::String(value)),
                );
            }
        }

        let sql = format!(
            "SELECT profile_id, kind, value FROM identifiers WHERE profile_id IN ({list}) ORDER BY first_seen, value"
        );
        let mut q = sqlx::query(&sql);
        for id in chunk {
            q = q.bind(id);
        }
        for row in q.fetch_all(store.pool()).await? {
            let pid: String = row.try_get(0)?;
            if let Some(p) = by_id.get_mut(&pid) {
                p.identifiers
                    .entry(row.try_get(1)?)
                    .or_default()
                    .push(row.try_get(2)?);
            }
        }

        if with_events {
            let sql = format!(
                "SELECT profile_id, name, ts, body FROM events WHERE kind = 'track' AND profile_id IN ({list}) ORDER BY ts"
            );
            let mut q = sqlx::query(&sql);
            for id in chunk {
                q = q.bind(id);
            }
            for row in q.fetch_all(store.pool()).await? {
                let pid: String = row.try_get(0)?;
                if let Some(p) = by_id.get_mut(&pid) {
                    let body: String = row.try_get(3)?;
                    let properties = serde_json::from_str::<Value>(&body)
                        .ok()
                        .and_then(|b| b.get("properties").cloned())
                        .unwrap_or(Value::Object(Map::new()));
                    p.events.push(EventFact {
                        name: row.try_get::<Option<String>, _>(1)?.unwrap_or_default(),
                        ts: row.try_get(2)?,
                        properties,
                    });
                }
            }
        }

        for id in chunk {
            if let Some(p) = by_id.remove(id) {
                out.push(p);
            }
        }
    }
    Ok(out)
}

/// Which of these profile ids still exist.
pub async fn existing(store: &Store, ids: &[String]) -> anyhow::Result<std::collections::HashSet<String>> {
    let mut found = std::collections::HashSet::new();
    for chunk in ids.chunks(CHUNK) {
        let sql = format!(
            "SELECT id FROM profiles WHERE id IN ({})",
            placeholders(1, chunk.len())
        );
        let mut q = sqlx::query(&sql);
        for id in chunk {
            q = q.bind(id);
        }
        for row in q.fetch_all(store.pool()).await? {
            found.insert(row.try_get(0)?);
        }
    }
    Ok(found)
}
