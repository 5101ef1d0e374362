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

use std::collections::{HashMap, HashSet};

use super::{fits_limits, lock_key, Identifier, IdentityRules};
use crate::store::identity as rows;
pub use crate::store::identity::NewEvent;
use crate::store::{Backend, Conn};

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
    /// The erasure suppression key, read at the first lookup (inner None: nothing was ever
    /// erased).
    suppression_key: Option<Option<Vec<u8>>>,
    /// Who holds each looked-up identifier; absent: nobody yet.
    holder: HashMap<Identifier, String>,
    pending: Pending,
    created: usize,
    /// (profile, trait) → (value as JSON text, ts); later calls win ties, as `>=` does in the
    /// store.
    traits: HashMap<(String, String), (String, i64)>,
    /// (profile, consent category) → (granted, ts), the later message winning.
    consent: HashMap<(String, String), (bool, i64)>,
    events: Vec<NewEvent>,
}

impl<'r> Batch<'r> {
    /// Locks (PostgreSQL) and looks up the identifiers the batch will resolve. Identifiers not
    /// given here are looked up when first met, one statement each time.
    pub async fn prepare<'i>(
        conn: &mut Conn,
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
            suppression_key: None,
            holder: HashMap::new(),
            pending: Pending::default(),
            created: 0,
            traits: HashMap::new(),
            consent: HashMap::new(),
            events: Vec::new(),
        };
        let mut all: Vec<&Identifier> = ids.into_iter().collect();
        all.sort();
        all.dedup();
        batch.look_up(conn, &all).await?;
        Ok(batch)
    }

    async fn look_up(&mut self, conn: &mut Conn, ids: &[&Identifier]) -> anyhow::Result<()> {
        let ids: Vec<&Identifier> = ids
            .iter()
            .copied()
            .filter(|i| !self.looked_up.contains(*i))
            .collect();
        if ids.is_empty() {
            return Ok(());
        }
        lock_identifiers(conn, self.backend, &ids).await?;
        if self.suppression_key.is_none() {
            // Read once per batch: erasures made while it runs are caught by the next one.
            self.suppression_key = Some(rows::suppression_key(conn).await?);
        }
        let key = self.suppression_key.as_ref().and_then(|k| k.as_deref());
        let suppressed = rows::suppressed_among(conn, self.backend, key, &ids).await?;
        self.suppressed.extend(suppressed);
        let held = rows::holders_among(conn, self.backend, &ids).await?;
        self.holder.extend(held);
        self.looked_up.extend(ids.into_iter().cloned());
        Ok(())
    }

    /// Whether a privacy erasure suppresses any of these identifiers.
    pub async fn is_suppressed(
        &mut self,
        conn: &mut Conn,
        ids: &[Identifier],
    ) -> anyhow::Result<bool> {
        let refs: Vec<&Identifier> = ids.iter().collect();
        self.look_up(conn, &refs).await?;
        Ok(ids.iter().any(|i| self.suppressed.contains(i)))
    }

    /// Whether some profile holds this identifier, as of everything resolved so far.
    pub async fn is_held(&mut self, conn: &mut Conn, id: &Identifier) -> anyhow::Result<bool> {
        self.look_up(conn, &[id]).await?;
        Ok(self.holder.contains_key(id))
    }

    /// Resolves identifiers (highest priority first) to one profile; `None` when there are none.
    /// `message_id` and `reason` are recorded with any merge.
    pub async fn resolve(
        &mut self,
        conn: &mut Conn,
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
            let moved: Vec<_> = self.consent.drain().collect();
            for ((p, category), state) in moved {
                let p = if merged.contains(&p) {
                    profile.clone()
                } else {
                    p
                };
                self.put_consent(p, category, state);
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

    /// Records a profile's consent for a category as of `ts`, unless a later decision is known.
    pub fn set_consent(&mut self, profile: &str, category: &str, granted: bool, ts: i64) {
        self.put_consent(profile.to_string(), category.to_string(), (granted, ts));
    }

    fn put_consent(&mut self, profile: String, category: String, state: (bool, i64)) {
        let key = (profile, category);
        match self.consent.get(&key) {
            Some(old) if old.1 > state.1 => {}
            _ => {
                self.consent.insert(key, state);
            }
        }
    }

    /// Queues an event; an event whose message id is already stored is skipped at the end.
    pub fn add_event(&mut self, event: NewEvent) {
        self.events.push(event);
    }

    /// Writes everything decided; returns how many events were stored (not already there).
    pub async fn finish(mut self, conn: &mut Conn) -> anyhow::Result<u64> {
        self.pending.flush(conn, self.backend, self.now).await?;
        rows::write_traits(conn, self.backend, std::mem::take(&mut self.traits)).await?;
        crate::store::consent::write_all(conn, self.backend, std::mem::take(&mut self.consent))
            .await?;
        // The same event twice in one batch (a client or plugin repeating itself): keep the first.
        let mut seen = HashSet::new();
        let unique: Vec<&NewEvent> = self
            .events
            .iter()
            .filter(|e| seen.insert(e.message_id.as_str()))
            .collect();
        Ok(rows::write_events(conn, self.backend, &unique).await?)
    }
}

/// The message ids among `ids` already stored as events.
pub async fn stored_events(
    conn: &mut Conn,
    backend: Backend,
    ids: &[&str],
) -> anyhow::Result<HashSet<String>> {
    Ok(rows::stored_events(conn, backend, ids).await?)
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
async fn lock_identifiers(
    conn: &mut Conn,
    backend: Backend,
    ids: &[&Identifier],
) -> anyhow::Result<()> {
    let mut keys: Vec<i64> = ids.iter().map(|id| lock_key(id)).collect();
    keys.sort_unstable();
    keys.dedup();
    Ok(rows::lock_all(conn, backend, &keys).await?)
}

impl Pending {
    /// Writes the new profiles and identifiers and touches matched profiles, then starts over.
    async fn flush(&mut self, conn: &mut Conn, backend: Backend, now: i64) -> anyhow::Result<()> {
        rows::insert_profiles(conn, backend, &self.new_profiles, now).await?;
        rows::attach_all(conn, backend, &self.new_ids, now).await?;
        let touched: Vec<&String> = self.touched.iter().collect();
        rows::touch_all(conn, backend, &touched, now).await?;
        *self = Pending::default();
        Ok(())
    }
}
