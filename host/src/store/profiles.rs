//! The profile tables (`profiles`, `traits`, `identifiers`, `events`, `merges`,
//! `suppressions`): bulk loads for audiences and syncs, and the reads of one profile (erasing one
//! is `store::erasure`).

use std::collections::{BTreeMap, HashMap};

use serde_json::{Map, Value};
use sqlx::any::AnyRow;

use super::{col, Backend, Result, Store};
use crate::identifier::Identifier;

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
pub async fn load(store: &Store, ids: &[String], with_events: bool) -> Result<Vec<ProfileData>> {
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
            let id: String = col(&row, "id")?;
            by_id.insert(
                id.clone(),
                ProfileData {
                    id,
                    created_at: col(&row, "created_at")?,
                    updated_at: col(&row, "updated_at")?,
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
            let pid: String = col(&row, "profile_id")?;
            let name: String = col(&row, "name")?;
            let value: String = col(&row, "value")?;
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
            let pid: String = col(&row, "profile_id")?;
            if let Some(p) = by_id.get_mut(&pid) {
                p.identifiers
                    .entry(col(&row, "kind")?)
                    .or_default()
                    .push(col(&row, "value")?);
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
                let pid: String = col(&row, "profile_id")?;
                if let Some(p) = by_id.get_mut(&pid) {
                    let body: String = col(&row, "body")?;
                    let properties = serde_json::from_str::<Value>(&body)
                        .ok()
                        .and_then(|b| b.get("properties").cloned())
                        .unwrap_or(Value::Object(Map::new()));
                    p.events.push(EventFact {
                        name: col::<Option<String>>(&row, "name")?.unwrap_or_default(),
                        ts: col(&row, "ts")?,
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
        Backend::Sqlite => (
            "(SELECT json_group_object(t.name, json(t.value)) FROM traits t WHERE t.profile_id = p.id) AS traits",
            "(SELECT json_group_array(json_array(i.kind, i.value)) FROM (SELECT kind, value FROM identifiers WHERE profile_id = p.id ORDER BY first_seen, value) i) AS identifiers",
        ),
        Backend::Postgres => (
            "(SELECT json_object_agg(t.name, t.value::json)::text FROM traits t WHERE t.profile_id = p.id) AS traits",
            "(SELECT json_agg(json_build_array(i.kind, i.value) ORDER BY i.first_seen, i.value)::text FROM identifiers i WHERE i.profile_id = p.id) AS identifiers",
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
) -> Result<Vec<ProfileData>> {
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
pub async fn changed(store: &Store, population: &Population, since: i64) -> Result<Vec<String>> {
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
    rows.iter().map(|r| col(r, "id")).collect()
}

/// Profiles by id (missing ones left out), traits and identifiers aggregated as in [`page`].
pub async fn by_ids(store: &Store, ids: &[String]) -> Result<Vec<ProfileData>> {
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

fn decode(rows: Vec<AnyRow>) -> Result<Vec<ProfileData>> {
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let traits: Option<String> = col(&row, "traits")?;
        let ids: Option<String> = col(&row, "identifiers")?;
        let mut identifiers: BTreeMap<String, Vec<String>> = BTreeMap::new();
        if let Some(ids) = ids {
            for pair in serde_json::from_str::<Vec<(String, String)>>(&ids).unwrap_or_default() {
                identifiers.entry(pair.0).or_default().push(pair.1);
            }
        }
        out.push(ProfileData {
            id: col(&row, "id")?,
            created_at: col(&row, "created_at")?,
            updated_at: col(&row, "updated_at")?,
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
pub async fn existing(store: &Store, ids: &[String]) -> Result<std::collections::HashSet<String>> {
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
            found.insert(col(&row, "id")?);
        }
    }
    Ok(found)
}

/// A profile's row with its identifiers and traits as `[kind, value]` / `[name, value]` pairs
/// (JSON text, sorted), as the Profiles API shows it.
#[derive(Debug, Clone)]
pub struct ProfileRow {
    pub id: String,
    pub created_at: i64,
    pub updated_at: i64,
    pub identifiers: Option<String>,
    pub traits: Option<String>,
}

/// The profile holding an identifier, with its identifiers and traits: one statement, so a
/// lookup costs one round trip to the store, not four.
pub async fn by_identifier(store: &Store, id: &Identifier) -> Result<Option<ProfileRow>> {
    let sql = format!(
        "SELECT p.id, p.created_at, p.updated_at, {} \
         FROM identifiers i JOIN profiles p ON p.id = i.profile_id WHERE i.kind = $1 AND i.value = $2",
        profile_columns(store)
    );
    let row = sqlx::query(&sql)
        .bind(&id.kind)
        .bind(&id.value)
        .fetch_optional(store.pool())
        .await?;
    row.map(|r| profile_row(&r)).transpose()
}

/// A profile by its id, as [`by_identifier`] reads it (the console's profile page).
pub async fn by_id(store: &Store, profile_id: &str) -> Result<Option<ProfileRow>> {
    let sql = format!(
        "SELECT p.id, p.created_at, p.updated_at, {} FROM profiles p WHERE p.id = $1",
        profile_columns(store)
    );
    let row = sqlx::query(&sql)
        .bind(profile_id)
        .fetch_optional(store.pool())
        .await?;
    row.map(|r| profile_row(&r)).transpose()
}

/// The lowest and highest profile id (the two ends of the primary key; one statement each, as
/// both engines answer a lone MIN or MAX from the index), None when there are no profiles.
pub async fn id_range(store: &Store) -> Result<Option<(String, String)>> {
    let row = sqlx::query(
        "SELECT (SELECT MIN(id) FROM profiles) AS lo, (SELECT MAX(id) FROM profiles) AS hi",
    )
    .fetch_one(store.pool())
    .await?;
    let lo: Option<String> = col(&row, "lo")?;
    let hi: Option<String> = col(&row, "hi")?;
    Ok(lo.zip(hi))
}

/// How many profiles there are.
pub async fn count(store: &Store) -> Result<i64> {
    let row = sqlx::query("SELECT COUNT(*) AS n FROM profiles")
        .fetch_one(store.pool())
        .await?;
    col(&row, "n")
}

fn profile_row(r: &sqlx::any::AnyRow) -> Result<ProfileRow> {
    Ok(ProfileRow {
        id: col(r, "id")?,
        created_at: col(r, "created_at")?,
        updated_at: col(r, "updated_at")?,
        identifiers: col(r, "identifiers")?,
        traits: col(r, "traits")?,
    })
}

/// The identifiers and traits of profile `p`, each as one JSON array of pairs.
fn profile_columns(store: &Store) -> &'static str {
    match store.backend() {
        Backend::Sqlite => "(SELECT json_group_array(json_array(x.kind, x.value)) FROM (SELECT kind, value FROM identifiers WHERE profile_id = p.id ORDER BY kind, value) x) AS identifiers, \
            (SELECT json_group_array(json_array(t.name, t.value)) FROM (SELECT name, value FROM traits WHERE profile_id = p.id ORDER BY name) t) AS traits",
        Backend::Postgres => "(SELECT json_agg(json_build_array(x.kind, x.value) ORDER BY x.kind, x.value)::text FROM identifiers x WHERE x.profile_id = p.id) AS identifiers, \
            (SELECT json_agg(json_build_array(t.name, t.value) ORDER BY t.name)::text FROM traits t WHERE t.profile_id = p.id) AS traits",
    }
}

/// A profile's traits (name, value as JSON text), by name.
pub async fn traits_of(store: &Store, profile_id: &str) -> Result<Vec<(String, String)>> {
    let rows = sqlx::query("SELECT name, value FROM traits WHERE profile_id = $1 ORDER BY name")
        .bind(profile_id)
        .fetch_all(store.pool())
        .await?;
    rows.iter()
        .map(|r| Ok((col(r, "name")?, col(r, "value")?)))
        .collect()
}

/// One stored event: (message id, ts, body as JSON text).
pub type EventRow = (String, i64, String);

/// Up to `limit` of a profile's events, newest first, before `(ts, message_id)` when given.
pub async fn events_of(
    store: &Store,
    profile_id: &str,
    before: Option<(i64, String)>,
    limit: i64,
) -> Result<Vec<EventRow>> {
    let rows = match before {
        None => {
            sqlx::query("SELECT message_id, ts, body FROM events WHERE profile_id = $1 ORDER BY ts DESC, message_id DESC LIMIT $2")
                .bind(profile_id)
                .bind(limit)
                .fetch_all(store.pool())
                .await?
        }
        Some((ts, mid)) => {
            sqlx::query(
                "SELECT message_id, ts, body FROM events WHERE profile_id = $1 AND (ts < $2 OR (ts = $2 AND message_id < $3)) \
                 ORDER BY ts DESC, message_id DESC LIMIT $4",
            )
            .bind(profile_id)
            .bind(ts)
            .bind(mid)
            .bind(limit)
            .fetch_all(store.pool())
            .await?
        }
    };
    rows.iter()
        .map(|r| Ok((col(r, "message_id")?, col(r, "ts")?, col(r, "body")?)))
        .collect()
}

/// One logged merge, as stored.
#[derive(Debug, Clone)]
pub struct MergeRow {
    pub id: String,
    pub from_profile: String,
    pub into_profile: String,
    pub reason: String,
    pub message_id: Option<String>,
    pub identifier: Option<Identifier>,
    pub at: i64,
    /// When `switchyard profiles unmerge` undid it.
    pub undone_at: Option<i64>,
}

/// Merges into or out of a profile, oldest first.
pub async fn merges_of(store: &Store, profile_id: &str) -> Result<Vec<MergeRow>> {
    let rows = sqlx::query(
        "SELECT id, from_profile, into_profile, reason, message_id, identifier_kind, identifier_value, at, undone_at FROM merges \
         WHERE into_profile = $1 OR from_profile = $1 ORDER BY at, id",
    )
    .bind(profile_id)
    .fetch_all(store.pool())
    .await?;
    rows.iter()
        .map(|r| {
            let kind: Option<String> = col(r, "identifier_kind")?;
            let value: Option<String> = col(r, "identifier_value")?;
            Ok(MergeRow {
                id: col(r, "id")?,
                from_profile: col(r, "from_profile")?,
                into_profile: col(r, "into_profile")?,
                reason: col(r, "reason")?,
                message_id: col(r, "message_id")?,
                identifier: kind
                    .zip(value)
                    .map(|(kind, value)| Identifier { kind, value }),
                at: col(r, "at")?,
                undone_at: col(r, "undone_at")?,
            })
        })
        .collect()
}

/// The newest change a sync's model could see: the latest profile update, or (events) the
/// latest received event.
pub async fn newest_change(store: &Store, events: bool) -> Result<Option<i64>> {
    let sql = if events {
        "SELECT MAX(received_at) AS newest FROM events"
    } else {
        "SELECT MAX(updated_at) AS newest FROM profiles"
    };
    let row = sqlx::query(sql).fetch_one(store.pool()).await?;
    col(&row, "newest")
}

/// Whether any profile was merged away or erased at or after `since` (ms).
pub async fn gone_since(store: &Store, since: i64) -> Result<bool> {
    for sql in [
        "SELECT 1 AS hit FROM merges WHERE at >= $1 LIMIT 1",
        "SELECT 1 AS hit FROM erasures WHERE requested_at >= $1 LIMIT 1",
    ] {
        let row = sqlx::query(sql)
            .bind(since)
            .fetch_optional(store.pool())
            .await?;
        if row.is_some() {
            return Ok(true);
        }
    }
    Ok(false)
}

/// One page of profile ids after `after`: all, or those updated at or after `since`.
pub async fn ids_page(
    store: &Store,
    since: Option<i64>,
    after: &str,
    limit: i64,
) -> Result<Vec<String>> {
    // A full pass walks the primary key; an incremental one starts from the updated_at
    // index (a full pass through that index would sort every page anew).
    let rows =
        match since {
            None => {
                sqlx::query("SELECT id FROM profiles WHERE id > $1 ORDER BY id LIMIT $2")
                    .bind(after)
                    .bind(limit)
                    .fetch_all(store.pool())
                    .await?
            }
            Some(since) => sqlx::query(
                "SELECT id FROM profiles WHERE updated_at >= $1 AND id > $2 ORDER BY id LIMIT $3",
            )
            .bind(since)
            .bind(after)
            .bind(limit)
            .fetch_all(store.pool())
            .await?,
        };
    rows.iter().map(|r| col(r, "id")).collect()
}
