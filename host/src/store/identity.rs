//! The statements of identity resolution, inside the caller's transaction: who holds an
//! identifier, creating, touching, attaching and merging profiles, and the batch writes.

use std::collections::{BTreeMap, HashMap, HashSet};

use anyhow::Context as _;

use super::{col, Backend, Conn, Result};
use crate::identifier::Identifier;

/// Rows per multi-row statement (well under SQLite's and PostgreSQL's bind limits).
pub const ROWS: usize = 200;

/// A trait to store: (profile, name) → (value as JSON text, ts).
pub type TraitRow = ((String, String), (String, i64));

/// An event to store when an identity batch finishes.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub message_id: String,
    pub profile: String,
    pub source: String,
    /// `track`, `identify`, `page`, ...
    pub kind: &'static str,
    /// The track event's or page's name.
    pub name: Option<String>,
    pub ts: i64,
    pub received_at: i64,
    /// The stored message, as JSON text.
    pub body: String,
}

/// PostgreSQL: takes these advisory locks one statement each, in the order given, held until
/// the transaction ends. SQLite (one writer at a time): nothing to do.
pub async fn lock_each(conn: &mut Conn, backend: Backend, keys: &[i64]) -> Result<()> {
    if backend != Backend::Postgres {
        return Ok(());
    }
    for key in keys {
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(*key)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// PostgreSQL: takes these advisory locks (sorted, deduplicated) in ascending order, a thousand
/// per statement, held until the transaction ends. SQLite: nothing to do.
pub async fn lock_all(conn: &mut Conn, backend: Backend, keys: &[i64]) -> Result<()> {
    if backend != Backend::Postgres {
        return Ok(());
    }
    for chunk in keys.chunks(ROWS * 5) {
        let values = (1..=chunk.len())
            .map(|i| format!("(${i}::bigint)"))
            .collect::<Vec<_>>()
            .join(",");
        // The sorted subquery feeds the aggregate row by row: locks are taken in key order.
        let sql = format!(
            "SELECT COUNT(pg_advisory_xact_lock(k)) FROM (SELECT k FROM (VALUES {values}) AS v(k) ORDER BY k) AS sorted"
        );
        let mut q = sqlx::query(&sql);
        for k in chunk {
            q = q.bind(*k);
        }
        q.execute(&mut *conn)
            .await
            .context("locking the batch's identifiers")?;
    }
    Ok(())
}

/// The profile holding an identifier.
pub async fn profile_of(conn: &mut Conn, id: &Identifier) -> Result<Option<String>> {
    let row = sqlx::query("SELECT profile_id FROM identifiers WHERE kind = $1 AND value = $2")
        .bind(&id.kind)
        .bind(&id.value)
        .fetch_optional(&mut *conn)
        .await?;
    row.map(|r| col(&r, "profile_id")).transpose()
}

/// A profile's identifiers, by kind and value.
pub async fn identifiers_of(conn: &mut Conn, profile: &str) -> Result<Vec<Identifier>> {
    let rows = sqlx::query(
        "SELECT kind, value FROM identifiers WHERE profile_id = $1 ORDER BY kind, value",
    )
    .bind(profile)
    .fetch_all(&mut *conn)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(Identifier {
                kind: col(r, "kind")?,
                value: col(r, "value")?,
            })
        })
        .collect()
}

/// When a profile was created; NotFound when it does not exist.
pub async fn created_at(conn: &mut Conn, profile: &str) -> Result<i64> {
    let row = sqlx::query("SELECT created_at FROM profiles WHERE id = $1")
        .bind(profile)
        .fetch_one(&mut *conn)
        .await?;
    col(&row, "created_at")
}

/// A new, empty profile.
pub async fn create_profile(conn: &mut Conn, profile: &str, now: i64) -> Result<()> {
    sqlx::query("INSERT INTO profiles (id, created_at, updated_at) VALUES ($1, $2, $3)")
        .bind(profile)
        .bind(now)
        .bind(now)
        .execute(&mut *conn)
        .await
        .context("creating a profile")?;
    Ok(())
}

/// Moves a profile's `updated_at`.
pub async fn touch_profile(conn: &mut Conn, profile: &str, now: i64) -> Result<()> {
    sqlx::query("UPDATE profiles SET updated_at = $1 WHERE id = $2")
        .bind(now)
        .bind(profile)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Gives an identifier to a profile (taking it from any other).
pub async fn attach(conn: &mut Conn, id: &Identifier, profile: &str, now: i64) -> Result<()> {
    sqlx::query(
        "INSERT INTO identifiers (kind, value, profile_id, first_seen) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (kind, value) DO UPDATE SET profile_id = excluded.profile_id",
    )
    .bind(&id.kind)
    .bind(&id.value)
    .bind(profile)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Whether an undone merge keeps any two of these profiles apart.
pub async fn merges_blocked(conn: &mut Conn, profiles: &[&str]) -> Result<bool> {
    super::merges::any_blocked(conn, profiles).await
}

/// Why two profiles were merged, for the merge log.
pub struct MergeCause<'a> {
    pub reason: &'a str,
    pub message_id: &'a str,
    pub joined_by: &'a Identifier,
    pub now: i64,
}

/// Folds `from` into `into`: identifiers, events and groups move; traits merge last writer
/// wins; earlier merges into `from` now name `into`; `from` goes; the merge is logged.
pub async fn merge(conn: &mut Conn, into: &str, from: &str, cause: &MergeCause<'_>) -> Result<()> {
    let merge_id = format!("mrg_{}", uuid::Uuid::new_v4().simple());
    // What each side had, so the merge can be undone (`identity::unmerge`).
    super::merges::snapshot(conn, &merge_id, into, from).await?;
    super::merges::fold(conn, into, from).await?;
    for sql in [
        "UPDATE identifiers SET profile_id = $1 WHERE profile_id = $2",
        "UPDATE events SET profile_id = $1 WHERE profile_id = $2",
        "INSERT INTO traits (profile_id, name, value, ts) SELECT $1, name, value, ts FROM traits WHERE profile_id = $2 \
         ON CONFLICT (profile_id, name) DO UPDATE SET value = excluded.value, ts = excluded.ts WHERE excluded.ts > traits.ts",
    ] {
        sqlx::query(sql)
            .bind(into)
            .bind(from)
            .execute(&mut *conn)
            .await?;
    }
    sqlx::query("DELETE FROM traits WHERE profile_id = $1")
        .bind(from)
        .execute(&mut *conn)
        .await?;
    sqlx::query(
        "INSERT INTO profile_groups (profile_id, group_id) SELECT $1, group_id FROM profile_groups WHERE profile_id = $2 \
         ON CONFLICT (profile_id, group_id) DO NOTHING",
    )
    .bind(into)
    .bind(from)
    .execute(&mut *conn)
    .await?;
    sqlx::query("DELETE FROM profile_groups WHERE profile_id = $1")
        .bind(from)
        .execute(&mut *conn)
        .await?;
    sqlx::query("UPDATE merges SET into_profile = $1 WHERE into_profile = $2")
        .bind(into)
        .bind(from)
        .execute(&mut *conn)
        .await?;
    sqlx::query("DELETE FROM profiles WHERE id = $1")
        .bind(from)
        .execute(&mut *conn)
        .await?;
    sqlx::query(
        "INSERT INTO merges (id, from_profile, into_profile, reason, message_id, identifier_kind, identifier_value, at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(&merge_id)
    .bind(from)
    .bind(into)
    .bind(cause.reason)
    .bind(cause.message_id)
    .bind(&cause.joined_by.kind)
    .bind(&cause.joined_by.value)
    .bind(cause.now)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// The message ids among `ids` already stored as events.
pub async fn stored_events(
    conn: &mut Conn,
    backend: Backend,
    ids: &[&str],
) -> Result<HashSet<String>> {
    let mut found = HashSet::new();
    for chunk in ids.chunks(ROWS * 2) {
        let sql = match backend {
            Backend::Sqlite => format!(
                "SELECT message_id FROM events WHERE message_id IN {}",
                backend.value_groups(1, 1, chunk.len())
            ),
            // A join, for the reason given in `lookup`.
            Backend::Postgres => format!(
                "SELECT e.message_id FROM (VALUES {}) AS v(id) JOIN events e ON e.message_id = v.id",
                backend.value_groups(1, chunk.len(), 1)
            ),
        };
        let mut q = sqlx::query(&sql);
        for id in chunk {
            q = q.bind(*id);
        }
        for row in q
            .fetch_all(&mut *conn)
            .await
            .context("looking up stored message ids")?
        {
            found.insert(col(&row, "message_id")?);
        }
    }
    Ok(found)
}

/// Which of these identifiers a privacy erasure suppressed, by their keyed digests
/// (`store::erasure`); `key` is the suppression key as [`super::erasure::key`] read it.
pub async fn suppressed_among(
    conn: &mut Conn,
    backend: Backend,
    key: Option<&[u8]>,
    ids: &[&Identifier],
) -> Result<HashSet<Identifier>> {
    super::erasure::suppressed_among(conn, backend, key, ids).await
}

/// Who holds each of these identifiers (absent: nobody).
pub async fn holders_among(
    conn: &mut Conn,
    backend: Backend,
    ids: &[&Identifier],
) -> Result<HashMap<Identifier, String>> {
    lookup(conn, backend, ids, "identifiers", "profile_id").await
}

/// For each identifier found in `table` (by kind and value), the value of `column`.
async fn lookup(
    conn: &mut Conn,
    backend: Backend,
    ids: &[&Identifier],
    table: &str,
    column: &str,
) -> Result<HashMap<Identifier, String>> {
    let mut found = HashMap::new();
    let mut by_kind: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for id in ids {
        by_kind
            .entry(id.kind.as_str())
            .or_default()
            .push(id.value.as_str());
    }
    for (kind, values) in by_kind {
        for chunk in values.chunks(ROWS * 2) {
            let sql = match backend {
                Backend::Sqlite => format!(
                    "SELECT value, {column} AS found FROM {table} WHERE kind = ? AND value IN {}",
                    backend.value_groups(2, 1, chunk.len())
                ),
                // A join against the list, not `IN ($2, $3, ...)`: PostgreSQL cannot hash a list
                // of parameters, and a table it still believes empty (not yet analysed) gets a
                // sequential scan, each row compared with every value: quadratic.
                Backend::Postgres => format!(
                    "SELECT t.value, t.{column} AS found FROM (VALUES {}) AS v(value) JOIN {table} t ON t.kind = $1 AND t.value = v.value",
                    backend.value_groups(2, chunk.len(), 1)
                ),
            };
            let mut q = sqlx::query(&sql).bind(kind);
            for v in chunk {
                q = q.bind(*v);
            }
            for row in q
                .fetch_all(&mut *conn)
                .await
                .with_context(|| format!("looking up {table}"))?
            {
                found.insert(
                    Identifier {
                        kind: kind.to_string(),
                        value: col(&row, "value")?,
                    },
                    col(&row, "found")?,
                );
            }
        }
    }
    Ok(found)
}

/// New profiles, all created `now`.
pub async fn insert_profiles(
    conn: &mut Conn,
    backend: Backend,
    profiles: &[String],
    now: i64,
) -> Result<()> {
    for chunk in profiles.chunks(ROWS) {
        let sql = format!(
            "INSERT INTO profiles (id, created_at, updated_at) VALUES {}",
            backend.value_groups(1, chunk.len(), 3)
        );
        let mut q = sqlx::query(&sql);
        for p in chunk {
            q = q.bind(p).bind(now).bind(now);
        }
        q.execute(&mut *conn).await.context("creating profiles")?;
    }
    Ok(())
}

/// Identifiers given to profiles (taking them from any other), first seen `now`.
pub async fn attach_all(
    conn: &mut Conn,
    backend: Backend,
    ids: &[(Identifier, String)],
    now: i64,
) -> Result<()> {
    for chunk in ids.chunks(ROWS) {
        let sql = format!(
            "INSERT INTO identifiers (kind, value, profile_id, first_seen) VALUES {} \
             ON CONFLICT (kind, value) DO UPDATE SET profile_id = excluded.profile_id",
            backend.value_groups(1, chunk.len(), 4)
        );
        let mut q = sqlx::query(&sql);
        for (id, p) in chunk {
            q = q.bind(&id.kind).bind(&id.value).bind(p).bind(now);
        }
        q.execute(&mut *conn)
            .await
            .context("attaching identifiers")?;
    }
    Ok(())
}

/// Moves these profiles' `updated_at` to `now`.
pub async fn touch_all(
    conn: &mut Conn,
    backend: Backend,
    profiles: &[&String],
    now: i64,
) -> Result<()> {
    for chunk in profiles.chunks(ROWS * 2) {
        let sql = match backend {
            Backend::Sqlite => format!(
                "UPDATE profiles SET updated_at = ? WHERE id IN {}",
                backend.value_groups(2, 1, chunk.len())
            ),
            // A join, for the reason given in `lookup`.
            Backend::Postgres => format!(
                "UPDATE profiles SET updated_at = $1 FROM (VALUES {}) AS v(id) WHERE profiles.id = v.id",
                backend.value_groups(2, chunk.len(), 1)
            ),
        };
        let mut q = sqlx::query(&sql).bind(now);
        for p in chunk {
            q = q.bind(*p);
        }
        q.execute(&mut *conn).await.context("touching profiles")?;
    }
    Ok(())
}

/// Traits ((profile, name) → (value as JSON text, ts)); a stored value newer than the one
/// given stays.
pub async fn write_traits(conn: &mut Conn, backend: Backend, traits: &[TraitRow]) -> Result<()> {
    for chunk in traits.chunks(ROWS) {
        let sql = format!(
            "INSERT INTO traits (profile_id, name, value, ts) VALUES {} \
             ON CONFLICT (profile_id, name) DO UPDATE SET value = excluded.value, ts = excluded.ts WHERE excluded.ts >= traits.ts",
            backend.value_groups(1, chunk.len(), 4)
        );
        let mut q = sqlx::query(&sql);
        for ((profile, name), (value, ts)) in chunk {
            q = q.bind(profile).bind(name).bind(value).bind(*ts);
        }
        q.execute(&mut *conn).await.context("storing traits")?;
    }
    Ok(())
}

/// Events whose message id is not stored yet; how many were stored. Each gets the next
/// sequence number in commit order (event streams read by it, see
/// [`crate::store::streams::next_seq`]); a duplicate skipped by the insert leaves a gap.
pub async fn write_events(conn: &mut Conn, backend: Backend, events: &[&NewEvent]) -> Result<u64> {
    let mut stored = 0;
    if events.is_empty() {
        return Ok(0);
    }
    let mut seq = super::streams::next_seq(conn, backend).await?;
    for chunk in events.chunks(ROWS / 2) {
        let sql = format!(
            "INSERT INTO events (message_id, profile_id, source, kind, name, ts, received_at, body, seq) VALUES {} \
             ON CONFLICT (message_id) DO NOTHING",
            backend.value_groups(1, chunk.len(), 9)
        );
        let mut q = sqlx::query(&sql);
        for e in chunk {
            seq += 1;
            q = q
                .bind(&e.message_id)
                .bind(&e.profile)
                .bind(&e.source)
                .bind(e.kind)
                .bind(&e.name)
                .bind(e.ts)
                .bind(e.received_at)
                .bind(&e.body)
                .bind(seq);
        }
        stored += q
            .execute(&mut *conn)
            .await
            .context("storing events")?
            .rows_affected();
    }
    Ok(stored)
}

/// A `group` call: the account's traits (last writer wins) and the profile's link to it.
pub async fn join_group(
    conn: &mut Conn,
    profile: &str,
    group: &str,
    traits: &str,
    ts: i64,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO account_groups (group_id, traits, ts) VALUES ($1, $2, $3) \
         ON CONFLICT (group_id) DO UPDATE SET traits = excluded.traits, ts = excluded.ts WHERE excluded.ts >= account_groups.ts",
    )
    .bind(group)
    .bind(traits)
    .bind(ts)
    .execute(&mut *conn)
    .await?;
    sqlx::query("INSERT INTO profile_groups (profile_id, group_id) VALUES ($1, $2) ON CONFLICT (profile_id, group_id) DO NOTHING")
        .bind(profile)
        .bind(group)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// What an identity batch needs to know before it decides anything (see [`lookup_batch`]).
#[derive(Debug, Default)]
pub struct Found {
    /// The message ids among those asked about already stored as events.
    pub stored: HashSet<String>,
    /// The suppression key (None: nothing was ever erased).
    pub key: Option<Vec<u8>>,
    /// The identifiers an erasure suppressed.
    pub suppressed: HashSet<Identifier>,
    /// Who holds each identifier (absent: nobody).
    pub holders: HashMap<Identifier, String>,
}

/// SQLite: everything [`lookup_batch`] reads, in one statement and one row, its inputs as JSON
/// arrays: one round trip to the connection's worker thread instead of three to five (the
/// stored message ids, the key, the suppressions, the holders one statement per identifier
/// kind), and a text that never changes with the batch's size, so each connection prepares it
/// once. A round trip is a wake-up of that thread and then of the writer's task; on two busy
/// cores each cost 0.1-0.3 ms, and the tracking API's group commit is made of little else.
/// ?1 message ids, ?2 the key's name, ?3 digests (empty while the key is unknown), ?4
/// identifiers as `[kind, value]`. The plans search the primary keys (checked with `EXPLAIN
/// QUERY PLAN`, see the tests). The writes stay separate statements: one query of them all,
/// fed JSON the same way, cost batch ingest a tenth of its throughput (SQLite parsing the
/// events back out of JSON) and gained nothing measurable.
const SQLITE_LOOKUP: &str = "SELECT \
     (SELECT json_group_array(message_id) FROM events WHERE message_id IN (SELECT value FROM json_each(?1))) AS stored, \
     (SELECT secret FROM erasure_keys WHERE name = ?2) AS secret, \
     (SELECT json_group_array(digest) FROM erased_identifiers WHERE digest IN (SELECT value FROM json_each(?3))) AS suppressed, \
     (SELECT json_group_array(json_array(i.kind, i.value, i.profile_id)) FROM identifiers i \
      WHERE (i.kind, i.value) IN (SELECT value ->> 0, value ->> 1 FROM json_each(?4))) AS holders";

/// Which of `message_ids` are stored, the suppression key (read unless `key` gives it), which
/// of `ids` an erasure suppressed and who holds them. One statement on SQLite (two the first
/// time the key turns up); on PostgreSQL the separate look-ups, whose `VALUES` joins it plans
/// better than JSON.
pub async fn lookup_batch(
    conn: &mut Conn,
    backend: Backend,
    message_ids: &[&str],
    ids: &[&Identifier],
    key: Option<&[u8]>,
) -> Result<Found> {
    if backend == Backend::Postgres {
        let key = match key {
            Some(k) => Some(k.to_vec()),
            None => super::erasure::key(conn).await?,
        };
        return Ok(Found {
            stored: stored_events(conn, backend, message_ids).await?,
            suppressed: suppressed_among(conn, backend, key.as_deref(), ids).await?,
            holders: holders_among(conn, backend, ids).await?,
            key,
        });
    }
    let digests: Vec<(String, &Identifier)> = match key {
        Some(k) => ids
            .iter()
            .map(|i| (super::erasure::digest(k, i), *i))
            .collect(),
        None => Vec::new(),
    };
    let digest_texts: Vec<&str> = digests.iter().map(|(d, _)| d.as_str()).collect();
    let pairs: Vec<[&str; 2]> = ids
        .iter()
        .map(|i| [i.kind.as_str(), i.value.as_str()])
        .collect();
    let row = sqlx::query(SQLITE_LOOKUP)
        .bind(json_text(&message_ids)?)
        .bind(super::erasure::SUPPRESSION_KEY)
        .bind(json_text(&digest_texts)?)
        .bind(json_text(&pairs)?)
        .fetch_one(&mut *conn)
        .await
        .context("looking up the batch's messages and identifiers")?;
    let stored: HashSet<String> = from_json_column(&row, "stored")?;
    let hits: HashSet<String> = from_json_column(&row, "suppressed")?;
    let held: Vec<(String, String, String)> = from_json_column(&row, "holders")?;
    let holders = held
        .into_iter()
        .map(|(kind, value, profile)| (Identifier { kind, value }, profile))
        .collect();
    let secret: Option<String> = col(&row, "secret")?;
    let found_key = secret
        .as_deref()
        .map(super::erasure::decode_key)
        .transpose()?;
    let suppressed = match (key, &found_key) {
        // The key appeared (the first erasure) after the caller last knew it: the digests
        // could not be sent with the rest.
        (None, Some(k)) => suppressed_among(conn, backend, Some(k), ids).await?,
        _ => digests
            .into_iter()
            .filter(|(d, _)| hits.contains(d))
            .map(|(_, i)| i.clone())
            .collect(),
    };
    Ok(Found {
        stored,
        key: found_key,
        suppressed,
        holders,
    })
}

/// A value as JSON text, for a statement that reads its input with `json_each`.
fn json_text<T: serde::Serialize + ?Sized>(value: &T) -> Result<String> {
    Ok(serde_json::to_string(value).context("encoding a statement's input as JSON")?)
}

/// A column holding JSON text (a `json_group_array`), decoded.
fn from_json_column<T: serde::de::DeserializeOwned>(
    row: &sqlx::any::AnyRow,
    column: &str,
) -> Result<T> {
    let text: String = col(row, column)?;
    Ok(serde_json::from_str(&text)
        .with_context(|| format!("reading the JSON in column {column}"))?)
}

/// What an identity batch writes (see [`write_batch`]).
#[derive(Debug, Default)]
pub struct Writes<'a> {
    /// New profiles, created `now`.
    pub profiles: &'a [String],
    /// Identifiers given to profiles (taken from any other), first seen `now`.
    pub identifiers: &'a [(Identifier, String)],
    /// Existing profiles whose `updated_at` moves to `now`.
    pub touched: &'a [&'a String],
    /// (profile, name) → (value as JSON text, ts); a stored value newer than the one given stays.
    pub traits: &'a [TraitRow],
    /// (profile, category) → (granted, ts); a stored decision newer than the one given stays.
    pub consent: &'a [super::consent::ConsentRow],
    /// Events; one whose message id is stored already is skipped.
    pub events: &'a [&'a NewEvent],
}

/// Writes an identity batch's results in this order: profiles, identifiers, touches, traits,
/// consent, events. Returns how many events were stored (not already there).
pub async fn write_batch(
    conn: &mut Conn,
    backend: Backend,
    w: &Writes<'_>,
    now: i64,
) -> Result<u64> {
    insert_profiles(conn, backend, w.profiles, now).await?;
    attach_all(conn, backend, w.identifiers, now).await?;
    touch_all(conn, backend, w.touched, now).await?;
    write_traits(conn, backend, w.traits).await?;
    super::consent::write_all(conn, backend, w.consent).await?;
    write_events(conn, backend, w.events).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;

    /// The plan of each statement of a (multi-statement) SQLite query, one line per step.
    async fn plans(store: &Store, sql: &str) -> Vec<String> {
        let mut out = Vec::new();
        for statement in sql.split("; ") {
            let explain = format!("EXPLAIN QUERY PLAN {statement}");
            let mut q = sqlx::query(&explain);
            // Enough parameters for any of the statements (unused ones are ignored).
            for _ in 1..=4 {
                q = q.bind("[]");
            }
            for row in q.fetch_all(store.pool()).await.unwrap() {
                out.push(format!(
                    "{statement:.30}: {}",
                    col::<String>(&row, "detail").unwrap()
                ));
            }
        }
        out
    }

    #[tokio::test]
    async fn the_sqlite_batch_statements_search_the_keys_instead_of_scanning_tables() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("p.db").display());
        let store = Store::open(&url).await.unwrap();
        let all = plans(&store, SQLITE_LOOKUP).await;
        let scans: Vec<&String> = all
            .iter()
            .filter(|d| {
                // `json_each` is the input; anything else scanned is a whole table read.
                d.contains("SCAN ")
                    && !d.contains("SCAN json_each")
                    && !d.contains("SCAN CONSTANT ROW")
            })
            .collect();
        assert!(scans.is_empty(), "full scans: {scans:#?}\nplans: {all:#?}");
        // And each table the look-up reads is searched by its key.
        for index in [
            "SEARCH events USING COVERING INDEX sqlite_autoindex_events_1 (message_id=?)",
            "SEARCH erased_identifiers USING COVERING INDEX",
            "SEARCH i USING INDEX sqlite_autoindex_identifiers_1 (kind=? AND value=?)",
        ] {
            assert!(
                all.iter().any(|d| d.contains(index)),
                "no {index}: {all:#?}"
            );
        }
    }
}
