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

/// Loads the profiles with these ids (missing ones are left out), in the order given.
pub async fn load(
    store: &Store,
    ids: &[String],
    with_events: bool,
) -> anyhow::Result<Vec<ProfileData>> {
    let mut out = Vec::with_capacity(ids.len());
    for chunk in ids.chunks(CHUNK) {
        let list = store.value_groups(1, 1, chunk.len());
        let mut by_id: HashMap<String, ProfileData> = HashMap::with_capacity(chunk.len());

        let sql = format!("SELECT id, created_at, updated_at FROM profiles WHERE id IN {list}");
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

        let sql = format!("SELECT profile_id, name, value FROM traits WHERE profile_id IN {list}");
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
            "SELECT profile_id, kind, value FROM identifiers WHERE profile_id IN {list} ORDER BY first_seen, value"
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
                "SELECT profile_id, name, ts, body FROM events WHERE kind = 'track' AND profile_id IN {list} ORDER BY ts"
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

/// The profiles a sync or audience walks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Population {
    All,
    Audience(String),
}

fn aggregates(store: &Store) -> (&'static str, &'static str) {
    match store.backend() {
        crate::store::Backend::Sqlite => (
            "(SELECT json_group_object(t.name, json(t.value)) FROM traits t WHERE t.profile_id = p.id)",
            "(SELECT json_group_array(json_array(i.kind, i.value)) FROM (SELECT kind, value FROM identifiers WHERE profile_id = p.id ORDER BY first_seen, value) i)",
        ),
        crate::store::Backend::Postgres => (
            "(SELECT json_object_agg(t.name, t.value::json)::text FROM traits t WHERE t.profile_id = p.id)",
            "(SELECT json_agg(json_build_array(i.kind, i.value) ORDER BY i.first_seen, i.value)::text FROM identifiers i WHERE i.profile_id = p.id)",
        ),
    }
}

/// One page of a population in id order after `after`, traits and identifiers included, in a
/// single query (traits and identifiers aggregated to JSON by the database).
pub async fn page(
    store: &Store,
    population: &Population,
    after: &str,
    limit: i64,
) -> anyhow::Result<Vec<ProfileData>> {
    let (traits, identifiers) = aggregates(store);
    let rows = match population {
        Population::All => {
            sqlx::query(&format!(
                "SELECT p.id, p.created_at, p.updated_at, {traits}, {identifiers} FROM profiles p \
                 WHERE p.id > $1 ORDER BY p.id LIMIT $2"
            ))
            .bind(after)
            .bind(limit)
            .fetch_all(store.pool())
            .await?
        }
        Population::Audience(name) => {
            sqlx::query(&format!(
                // The page of member ids first (an index range, no sort), then the aggregates for
                // those only: otherwise SQLite may compute them for every remaining member
                // before sorting and cutting the page.
                "SELECT p.id, p.created_at, p.updated_at, {traits}, {identifiers} FROM \
                 (SELECT profile_id FROM audience_members WHERE audience = $1 AND profile_id > $2 ORDER BY profile_id LIMIT $3) m \
                 CROSS JOIN profiles p WHERE p.id = m.profile_id ORDER BY p.id"
            ))
            .bind(name)
            .bind(after)
            .bind(limit)
            .fetch_all(store.pool())
            .await?
        }
    };
    decode(rows)
}

/// Profiles of a population updated at or after `since` (through the `updated_at` index).
pub async fn changed(
    store: &Store,
    population: &Population,
    since: i64,
) -> anyhow::Result<Vec<String>> {
    let rows = match population {
        Population::All => {
            sqlx::query("SELECT id FROM profiles WHERE updated_at >= $1 ORDER BY id")
                .bind(since)
                .fetch_all(store.pool())
                .await?
        }
        Population::Audience(name) => {
            sqlx::query(
                "SELECT p.id FROM profiles p JOIN audience_members m ON m.profile_id = p.id AND m.audience = $1 \
                 WHERE p.updated_at >= $2 ORDER BY p.id",
            )
            .bind(name)
            .bind(since)
            .fetch_all(store.pool())
            .await?
        }
    };
    rows.iter().map(|r| Ok(r.try_get(0)?)).collect()
}

/// Profiles by id (missing ones left out), traits and identifiers aggregated as in [`page`].
pub async fn by_ids(store: &Store, ids: &[String]) -> anyhow::Result<Vec<ProfileData>> {
    let (traits, identifiers) = aggregates(store);
    let mut out = Vec::with_capacity(ids.len());
    for chunk in ids.chunks(CHUNK) {
        let list = store.value_groups(1, 1, chunk.len());
        let sql = format!(
            "SELECT p.id, p.created_at, p.updated_at, {traits}, {identifiers} FROM profiles p WHERE p.id IN {list} ORDER BY p.id"
        );
        let mut q = sqlx::query(&sql);
        for id in chunk {
            q = q.bind(id);
        }
        out.extend(decode(q.fetch_all(store.pool()).await?)?);
    }
    Ok(out)
}

fn decode(rows: Vec<sqlx::any::AnyRow>) -> anyhow::Result<Vec<ProfileData>> {
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let traits: Option<String> = row.try_get(3)?;
        let ids: Option<String> = row.try_get(4)?;
        let mut identifiers: BTreeMap<String, Vec<String>> = BTreeMap::new();
        if let Some(ids) = ids {
            for pair in serde_json::from_str::<Vec<(String, String)>>(&ids).unwrap_or_default() {
                identifiers.entry(pair.0).or_default().push(pair.1);
            }
        }
        out.push(ProfileData {
            id: row.try_get(0)?,
            created_at: row.try_get(1)?,
            updated_at: row.try_get(2)?,
            traits: traits
                .and_then(|t| serde_json::from_str(&t).ok())
                .unwrap_or_default(),
            identifiers,
            events: Vec::new(),
        });
    }
    Ok(out)
}

/// Which of these profile ids still exist.
pub async fn existing(
    store: &Store,
    ids: &[String],
) -> anyhow::Result<std::collections::HashSet<String>> {
    let mut found = std::collections::HashSet::new();
    for chunk in ids.chunks(CHUNK) {
        let sql = format!(
            "SELECT id FROM profiles WHERE id IN {}",
            store.value_groups(1, 1, chunk.len())
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
