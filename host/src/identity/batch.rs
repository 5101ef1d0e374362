//! Identity resolution in bulk, for the tracking API's group commits and source pages.
//!
//! Resolving message by message costs a few round trips each (look up every identifier, read the
//! profile's identifiers, insert, update). A [`Batch`] looks up all of a transaction's identifiers
//! (and suppressions) at once, decides the two common cases in memory (no identifier known: a new
//! profile; every identifier already held by one profile: nothing to attach), and writes the
//! results with a few multi-row statements when it finishes. Everything else (attaching a new
//! identifier, which may break a kind's limit, or identifiers spread over several profiles, a
//! merge) goes through [`super::resolve`] itself, in order, after writing what was decided so
//! far, so the outcome is exactly what resolving one message at a time gives.
//!
//! Concurrency: on SQLite the caller's transaction must already hold the write lock (start it
//! with a write); on PostgreSQL [`Batch::prepare`] takes the identifiers' advisory locks, the
//! very keys `resolve` takes, all at once in key order.

use std::collections::{BTreeMap, HashMap, HashSet};

use anyhow::Context as _;
use sqlx::{AnyConnection, Row};

use super::{fits_limits, lock_key, Identifier, IdentityRules};
use crate::store::Backend;

/// Rows per multi-row statement (well under SQLite's and PostgreSQL's bind limits).
const ROWS: usize = 200;

/// An event to store when the batch finishes.
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

/// Profiles created and identifiers attached by the fast path, not yet written.
#[derive(Default)]
struct Pending {
    new_profiles: Vec<String>,
    new_ids: Vec<(Identifier, String)>,
    /// Existing profiles a message matched exactly (their `updated_at` moves to now).
    touched: HashSet<String>,
}

/// The identity state of one transaction; see the module doc.
pub struct Batch<'r> {
    backend: Backend,
    rules: &'r IdentityRules,
    now: i64,
    /// Identifiers whose holder (or absence of one) and suppression are known.
    looked_up: HashSet<Identifier>,
    suppressed: HashSet<Identifier>,
    /// Who holds each looked-up identifier; absent: nobody yet.
    holder: HashMap<Identifier, String>,
    pending: Pending,
    created: usize,
    /// (profile, trait) → (value as JSON text, ts); later calls win ties, as `>=` does in the
    /// store.
    traits: HashMap<(String, String), (String, i64)>,
    events: Vec<NewEvent>,
}

impl<'r> Batch<'r> {
    /// Locks (PostgreSQL) and looks up the identifiers the batch will resolve. Identifiers not
    /// given here are looked up when first met, one statement each time.
    pub async fn prepare<'i>(
        conn: &mut AnyConnection,
        backend: Backend,
        rules: &'r IdentityRules,
        ids: impl IntoIterator<Item = &'i Identifier>,
        now: i64,
    ) -> anyhow::Result<Batch<'r>> {
        let mut batch = Batch {
            backend,
            rules,
            now,
            looked_up: HashSet::new(),
            suppressed: HashSet::new(),
            holder: HashMap::new(),
            pending: Pending::default(),
            created: 0,
            traits: HashMap::new(),
            events: Vec::new(),
        };
        let mut all: Vec<&Identifier> = ids.into_iter().collect();
        all.sort();
        all.dedup();
        batch.look_up(conn, &all).await?;
        Ok(batch)
    }

    async fn look_up(
        &mut self,
        conn: &mut AnyConnection,
        ids: &[&Identifier],
    ) -> anyhow::Result<()> {
        let ids: Vec<&Identifier> = ids
            .iter()
            .copied()
            .filter(|i| !self.looked_up.contains(*i))
            .collect();
        if ids.is_empty() {
            return Ok(());
        }
        if self.backend == Backend::Postgres {
            lock_identifiers(conn, &ids).await?;
        }
        let suppressed = lookup(conn, self.backend, &ids, "suppressions", "kind").await?;
        self.suppressed.extend(suppressed.into_keys());
        let held = lookup(conn, self.backend, &ids, "identifiers", "profile_id").await?;
        self.holder.extend(held);
        self.looked_up.extend(ids.into_iter().cloned());
        Ok(())
    }

    /// Whether a privacy erasure suppresses any of these identifiers.
    pub async fn is_suppressed(
        &mut self,
        conn: &mut AnyConnection,
        ids: &[Identifier],
    ) -> anyhow::Result<bool> {
        let refs: Vec<&Identifier> = ids.iter().collect();
        self.look_up(conn, &refs).await?;
        Ok(ids.iter().any(|i| self.suppressed.contains(i)))
    }

    /// Whether some profile holds this identifier, as of everything resolved so far.
    pub async fn is_held(
        &mut self,
        conn: &mut AnyConnection,
        id: &Identifier,
    ) -> anyhow::Result<bool> {
        self.look_up(conn, &[id]).await?;
        Ok(self.holder.contains_key(id))
    }

    /// Resolves identifiers (highest priority first) to one profile; `None` when there are none.
    /// `message_id` and `reason` are recorded with any merge.
    pub async fn resolve(
        &mut self,
        conn: &mut AnyConnection,
        ids: &[Identifier],
        message_id: &str,
        reason: &str,
    ) -> anyhow::Result<Option<String>> {
        if ids.is_empty() {
            return Ok(None);
        }
        let refs: Vec<&Identifier> = ids.iter().collect();
        self.look_up(conn, &refs).await?;
        let mut matched: Vec<&String> = ids.iter().filter_map(|i| self.holder.get(i)).collect();
        matched.sort();
        matched.dedup();
        match matched.len() {
            0 if fits_limits(self.rules, ids, std::iter::empty()) => {
                let p = ordered_profile_id(self.now, self.created);
                self.created += 1;
                self.pending.new_profiles.push(p.clone());
                for id in ids {
                    self.holder.insert(id.clone(), p.clone());
                    self.pending.new_ids.push((id.clone(), p.clone()));
                }
                return Ok(Some(p));
            }
            1 if ids.iter().all(|i| self.holder.contains_key(i)) => {
                let p = matched[0].clone();
                self.pending.touched.insert(p.clone());
                return Ok(Some(p));
            }
            _ => {}
        }
        // `resolve` must see what the fast path decided so far.
        self.pending.flush(conn, self.backend, self.now).await?;
        let Some(resolution) = super::resolve(
            conn,
            self.backend,
            self.rules,
            ids.to_vec(),
            message_id,
            reason,
            self.now,
        )
        .await?
        else {
            return Ok(None);
        };
        let profile = resolution.profile_id;
        if !resolution.merged.is_empty() {
            // Profiles merged away: whatever still points at them belongs to the survivor.
            let merged = &resolution.merged;
            for p in self.holder.values_mut() {
                if merged.contains(p) {
                    *p = profile.clone();
                }
            }
            let moved: Vec<_> = self.traits.drain().collect();
            for ((p, name), value) in moved {
                let p = if merged.contains(&p) {
                    profile.clone()
                } else {
                    p
                };
                self.put_trait(p, name, value);
            }
            for e in &mut self.events {
                if merged.contains(&e.profile) {
                    e.profile = profile.clone();
                }
            }
        }
        for id in ids.iter().filter(|i| !resolution.dropped.contains(i)) {
            self.holder.insert(id.clone(), profile.clone());
        }
        Ok(Some(profile))
    }

    /// Sets a profile's trait (`value` as JSON text) as of `ts`, unless a later value is known.
    pub fn set_trait(&mut self, profile: &str, name: &str, value: String, ts: i64) {
        self.put_trait(profile.to_string(), name.to_string(), (value, ts));
    }

    fn put_trait(&mut self, profile: String, name: String, value: (String, i64)) {
        let key = (profile, name);
        match self.traits.get(&key) {
            Some(old) if old.1 > value.1 => {}
            _ => {
                self.traits.insert(key, value);
            }
        }
    }

    /// Queues an event; an event whose message id is already stored is skipped at the end.
    pub fn add_event(&mut self, event: NewEvent) {
        self.events.push(event);
    }

    /// Writes everything decided; returns how many events were stored (not already there).
    pub async fn finish(mut self, conn: &mut AnyConnection) -> anyhow::Result<u64> {
        self.pending.flush(conn, self.backend, self.now).await?;
        write_traits(conn, self.backend, std::mem::take(&mut self.traits)).await?;
        write_events(conn, self.backend, &self.events).await
    }
}

/// The message ids among `ids` already stored as events.
pub async fn stored_events(
    conn: &mut AnyConnection,
    backend: Backend,
    ids: &[&str],
) -> anyhow::Result<HashSet<String>> {
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
            found.insert(row.try_get(0)?);
        }
    }
    Ok(found)
}

/// A new profile id in the store's format (`prf_` and 32 hex digits) that sorts by creation:
/// the time, then the position in the batch, then randomness. A batch's thousands of new
/// profiles (and their traits and identifier index entries, keyed by profile) then land at the
/// end of the B-trees instead of all over them, which is most of what a SQLite commit writes.
fn ordered_profile_id(now_ms: i64, seq: usize) -> String {
    let random = uuid::Uuid::new_v4().simple().to_string();
    format!(
        "prf_{:012x}{:06x}{}",
        now_ms.max(0) as u64 & 0xffff_ffff_ffff,
        seq & 0xff_ffff,
        &random[..14]
    )
}

/// Takes the PostgreSQL advisory locks of identifiers, the very keys `resolve` takes, in
/// ascending order (so hubs resolving the same identifiers wait for each other and never
/// deadlock); held until the transaction ends.
async fn lock_identifiers(conn: &mut AnyConnection, ids: &[&Identifier]) -> anyhow::Result<()> {
    let mut keys: Vec<i64> = ids.iter().map(|id| lock_key(id)).collect();
    keys.sort_unstable();
    keys.dedup();
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

/// For each identifier found in `table` (by kind and value), the value of `column`.
async fn lookup(
    conn: &mut AnyConnection,
    backend: Backend,
    ids: &[&Identifier],
    table: &str,
    column: &str,
) -> anyhow::Result<HashMap<Identifier, String>> {
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
                    "SELECT value, {column} FROM {table} WHERE kind = ? AND value IN {}",
                    backend.value_groups(2, 1, chunk.len())
                ),
                // A join against the list, not `IN ($2, $3, ...)`: PostgreSQL cannot hash a list
                // of parameters, and a table it still believes empty (not yet analysed) gets a
                // sequential scan, each row compared with every value: quadratic.
                Backend::Postgres => format!(
                    "SELECT t.value, t.{column} FROM (VALUES {}) AS v(value) JOIN {table} t ON t.kind = $1 AND t.value = v.value",
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
                        value: row.try_get(0)?,
                    },
                    row.try_get(1)?,
                );
            }
        }
    }
    Ok(found)
}

impl Pending {
    /// Writes the new profiles and identifiers and touches matched profiles, then starts over.
    async fn flush(
        &mut self,
        conn: &mut AnyConnection,
        backend: Backend,
        now: i64,
    ) -> anyhow::Result<()> {
        for chunk in self.new_profiles.chunks(ROWS) {
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
        for chunk in self.new_ids.chunks(ROWS) {
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
        let touched: Vec<&String> = self.touched.iter().collect();
        for chunk in touched.chunks(ROWS * 2) {
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
        *self = Pending::default();
        Ok(())
    }
}

async fn write_traits(
    conn: &mut AnyConnection,
    backend: Backend,
    traits: HashMap<(String, String), (String, i64)>,
) -> anyhow::Result<()> {
    let rows: Vec<_> = traits.into_iter().collect();
    for chunk in rows.chunks(ROWS) {
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

async fn write_events(
    conn: &mut AnyConnection,
    backend: Backend,
    events: &[NewEvent],
) -> anyhow::Result<u64> {
    // The same event twice in one batch (a client or plugin repeating itself): keep the first.
    let mut seen = HashSet::new();
    let unique: Vec<&NewEvent> = events
        .iter()
        .filter(|e| seen.insert(e.message_id.as_str()))
        .collect();
    let mut stored = 0;
    for chunk in unique.chunks(ROWS / 2) {
        let sql = format!(
            "INSERT INTO events (message_id, profile_id, source, kind, name, ts, received_at, body) VALUES {} \
             ON CONFLICT (message_id) DO NOTHING",
            backend.value_groups(1, chunk.len(), 8)
        );
        let mut q = sqlx::query(&sql);
        for e in chunk {
            q = q
                .bind(&e.message_id)
                .bind(&e.profile)
                .bind(&e.source)
                .bind(e.kind)
                .bind(&e.name)
                .bind(e.ts)
                .bind(e.received_at)
                .bind(&e.body);
        }
        stored += q
            .execute(&mut *conn)
            .await
            .context("storing events")?
            .rows_affected();
    }
    Ok(stored)
}
