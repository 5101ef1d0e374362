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
use crate::store::erasure::KnownKey;
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
    /// The process's copy of the key, when the caller keeps one: given, the first lookup
    /// need not read it (and checks suppressions in the same statement).
    known_key: Option<&'r KnownKey>,
    /// Message ids given to [`Batch::prepare`] already stored as events.
    stored: HashSet<String>,
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
    /// Locks (PostgreSQL) and looks up the identifiers the batch will resolve, and which of
    /// `message_ids` are stored already ([`Batch::stored`]), at once (one statement on
    /// SQLite). Identifiers not given here are looked up when first met, one statement each
    /// time. `known_key`: the caller's copy of the suppression key, kept up to date here.
    pub async fn prepare<'i>(
        conn: &mut Conn,
        backend: Backend,
        rules: &'r IdentityRules,
        ids: impl IntoIterator<Item = &'i Identifier>,
        message_ids: &[&str],
        known_key: Option<&'r KnownKey>,
        now: i64,
    ) -> anyhow::Result<Batch<'r>> {
        let mut batch = Batch {
            backend,
            rules,
            now,
            looked_up: HashSet::new(),
            suppressed: HashSet::new(),
            suppression_key: None,
            known_key,
            stored: HashSet::new(),
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
        batch.look_up(conn, &all, message_ids).await?;
        Ok(batch)
    }

    /// The message ids given to [`Batch::prepare`] that are stored as events already.
    pub fn stored(&self) -> &HashSet<String> {
        &self.stored
    }

    async fn look_up(
        &mut self,
        conn: &mut Conn,
        ids: &[&Identifier],
        message_ids: &[&str],
    ) -> anyhow::Result<()> {
        let ids: Vec<&Identifier> = ids
            .iter()
            .copied()
            .filter(|i| !self.looked_up.contains(*i))
            .collect();
        if ids.is_empty() && message_ids.is_empty() {
            return Ok(());
        }
        lock_identifiers(conn, self.backend, &ids).await?;
        // Read once per batch (erasures made while it runs are caught by the next one), or
        // not at all once the process knows it: the key never changes once made.
        let key = match &self.suppression_key {
            Some(k) => k.as_deref(),
            None => self.known_key.and_then(KnownKey::get),
        };
        let found = rows::lookup_batch(conn, self.backend, message_ids, &ids, key).await?;
        if let (Some(k), Some(known)) = (&found.key, self.known_key) {
            known.remember(k);
        }
        self.suppression_key = Some(found.key);
        self.stored.extend(found.stored);
        self.suppressed.extend(found.suppressed);
        self.holder.extend(found.holders);
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
        self.look_up(conn, &refs, &[]).await?;
        Ok(ids.iter().any(|i| self.suppressed.contains(i)))
    }

    /// Whether some profile holds this identifier, as of everything resolved so far.
    pub async fn is_held(&mut self, conn: &mut Conn, id: &Identifier) -> anyhow::Result<bool> {
        self.look_up(conn, &[id], &[]).await?;
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
        self.look_up(conn, &refs, &[]).await?;
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
    pub async fn finish(self, conn: &mut Conn) -> anyhow::Result<u64> {
        // The same event twice in one batch (a client or plugin repeating itself): keep the first.
        let mut seen = HashSet::new();
        let events: Vec<&NewEvent> = self
            .events
            .iter()
            .filter(|e| seen.insert(e.message_id.as_str()))
            .collect();
        let traits: Vec<_> = self.traits.into_iter().collect();
        let consent: Vec<_> = self.consent.into_iter().collect();
        let touched: Vec<&String> = self.pending.touched.iter().collect();
        let writes = rows::Writes {
            profiles: &self.pending.new_profiles,
            identifiers: &self.pending.new_ids,
            touched: &touched,
            traits: &traits,
            consent: &consent,
            events: &events,
        };
        Ok(rows::write_batch(conn, self.backend, &writes, self.now).await?)
    }
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
        let touched: Vec<&String> = self.touched.iter().collect();
        let writes = rows::Writes {
            profiles: &self.new_profiles,
            identifiers: &self.new_ids,
            touched: &touched,
            ..Default::default()
        };
        rows::write_batch(conn, backend, &writes, now).await?;
        *self = Pending::default();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::erasure::{self, ProfileRef};
    use crate::store::testing::{rows, PgDatabase};
    use crate::store::Store;

    /// A SQLite store in a temporary directory, and a PostgreSQL one in a database of its own.
    async fn stores(tag: &str) -> (tempfile::TempDir, Vec<Store>, PgDatabase) {
        let dir = tempfile::tempdir().unwrap();
        let sqlite = Store::open(&format!("sqlite://{}", dir.path().join("b.db").display()))
            .await
            .unwrap();
        let pg = PgDatabase::create(tag).await;
        let stores = vec![sqlite, pg.open().await];
        (dir, stores, pg)
    }

    fn event(id: &str, profile: &str, ts: i64) -> NewEvent {
        NewEvent {
            message_id: id.to_string(),
            profile: profile.to_string(),
            source: "web".to_string(),
            kind: "track",
            name: (id != "e-unnamed").then(|| "Clicked".to_string()),
            ts,
            received_at: ts + 1,
            body: format!(r#"{{"messageId":"{id}","properties":{{"q":"it's \"quoted\""}}}}"#),
        }
    }

    async fn text(store: &Store, sql: &str) -> Vec<String> {
        rows::<(String,)>(store, sql)
            .await
            .into_iter()
            .map(|(t,)| t)
            .collect()
    }

    /// A message for [`run`]: id, identifiers, traits, consent, timestamp.
    type Msg<'a> = (
        &'a str,
        &'a [Identifier],
        &'a [(&'a str, &'a str)],
        &'a [(&'a str, bool)],
        i64,
    );

    /// One batch as the tracking API runs it; returns (stored ids seen, events stored).
    async fn run(
        store: &Store,
        rules: &IdentityRules,
        messages: &[Msg<'_>],
    ) -> (HashSet<String>, u64) {
        let mut tx = store.begin_write().await.unwrap();
        let ids: Vec<&str> = messages.iter().map(|m| m.0).collect();
        let mut batch = Batch::prepare(
            &mut tx,
            store.backend(),
            rules,
            messages.iter().flat_map(|m| m.1.iter()),
            &ids,
            Some(store.known_erasure_key()),
            1_000,
        )
        .await
        .unwrap();
        let already = batch.stored().clone();
        for (id, identifiers, traits, consent, ts) in messages {
            if already.contains(*id) || batch.is_suppressed(&mut tx, identifiers).await.unwrap() {
                continue;
            }
            let profile = batch
                .resolve(&mut tx, identifiers, id, "track")
                .await
                .unwrap()
                .unwrap();
            for (name, value) in *traits {
                batch.set_trait(&profile, name, value.to_string(), *ts);
            }
            for (category, granted) in *consent {
                batch.set_consent(&profile, category, *granted, *ts);
            }
            batch.add_event(event(id, &profile, *ts));
        }
        let stored = batch.finish(&mut tx).await.unwrap();
        tx.commit().await.unwrap();
        (already, stored)
    }

    #[tokio::test]
    async fn a_batch_reads_once_and_writes_what_one_message_at_a_time_would() {
        let (_dir, stores, pg) = stores("batch_write").await;
        let rules = IdentityRules::new(&crate::config::IdentityConfig::default());
        let u1 = [Identifier::new("user_id", "u1")];
        let u2 = [
            Identifier::new("user_id", "u2"),
            Identifier::new("email", "u2@example.com"),
        ];
        for store in &stores {
            let backend = store.backend();
            // New users: profiles, identifiers, traits, consent and events in one write.
            let (already, stored) = run(
                store,
                &rules,
                &[
                    ("e1", &u1, &[("plan", "\"pro\"")], &[("ads", true)], 10),
                    ("e2", &u2, &[("plan", "\"free\"")], &[], 10),
                    ("e-unnamed", &u1, &[], &[], 11),
                ],
            )
            .await;
            assert!(already.is_empty(), "{backend:?}");
            assert_eq!(stored, 3, "{backend:?}");
            // Known users: a duplicate found by the read, an older trait that stays, a newer
            // consent that wins, an identifier attached to a known profile.
            let u1_more = [
                Identifier::new("user_id", "u1"),
                Identifier::new("email", "u1@example.com"),
            ];
            let (already, stored) = run(
                store,
                &rules,
                &[
                    ("e2", &u2, &[], &[], 12),
                    ("e3", &u1, &[("plan", "\"old\"")], &[("ads", false)], 5),
                    ("e4", &u1_more, &[], &[("ads", false)], 20),
                    ("e5", &u2, &[("plan", "\"team\"")], &[], 10),
                ],
            )
            .await;
            assert_eq!(already, HashSet::from(["e2".to_string()]), "{backend:?}");
            assert_eq!(stored, 3, "{backend:?}");
            assert_eq!(
                text(store, "SELECT message_id FROM events ORDER BY seq").await,
                ["e1", "e2", "e-unnamed", "e3", "e4", "e5"],
                "{backend:?}: sequence numbers follow the batches and the order within them"
            );
            let seqs: Vec<(i64, i64)> =
                rows(store, "SELECT MAX(seq), COUNT(DISTINCT seq) FROM events").await;
            assert_eq!(seqs, [(6, 6)], "{backend:?}");
            assert_eq!(
                text(
                    store,
                    "SELECT t.value FROM traits t JOIN identifiers i ON i.profile_id = t.profile_id \
                     WHERE i.kind = 'user_id' ORDER BY i.value"
                )
                .await,
                ["\"pro\"", "\"team\""],
                "{backend:?}: an older trait stays, a same-time later one wins"
            );
            let granted: Vec<(i64,)> = rows(store, "SELECT granted FROM consent").await;
            assert_eq!(granted, [(0,)], "{backend:?}");
            assert_eq!(
                text(
                    store,
                    "SELECT value FROM identifiers WHERE kind = 'email' ORDER BY value"
                )
                .await,
                ["u1@example.com", "u2@example.com"],
                "{backend:?}"
            );
            assert_eq!(
                store.scalar("SELECT COUNT(*) FROM profiles").await.unwrap(),
                2
            );
            let unnamed: Vec<(Option<String>, i64, String)> = rows(
                store,
                "SELECT name, ts, body FROM events WHERE message_id = 'e-unnamed'",
            )
            .await;
            assert_eq!(unnamed, [(None, 11, event("e-unnamed", "", 11).body)]);
        }
        pg.drop_with(stores).await;
    }

    #[tokio::test]
    async fn suppressions_are_found_before_and_after_the_key_is_known() {
        let (_dir, stores, pg) = stores("batch_suppress").await;
        let rules = IdentityRules::new(&crate::config::IdentityConfig::default());
        let gone = [Identifier::new("email", "gone@example.com")];
        let kept = [Identifier::new("email", "kept@example.com")];
        for store in &stores {
            let backend = store.backend();
            // Nothing erased yet: no key.
            let (_, stored) = run(
                store,
                &rules,
                &[("k0", &kept, &[], &[], 1), ("g0", &gone, &[], &[], 1)],
            )
            .await;
            assert_eq!(stored, 2);
            assert!(store.known_erasure_key().get().is_none());
            // The second profile erased (as by another hub: this store's copy of the key is
            // still empty): the key is made and the identifier kept as its digest.
            let profile = ProfileRef::Identifier(gone[0].clone());
            let erased = erasure::erase(store, &profile, &|_| None, 5).await.unwrap();
            assert!(erased.is_some(), "{backend:?}");
            let mut conn = store.acquire().await.unwrap();
            let key = erasure::key(&mut conn).await.unwrap().unwrap();
            drop(conn);
            // The key is read and kept; the digest is checked either way.
            for round in ["key read", "key known"] {
                let (_, stored) = run(
                    store,
                    &rules,
                    &[
                        (&format!("g-{round}"), &gone, &[], &[], 2),
                        (&format!("k-{round}"), &kept, &[], &[], 2),
                    ],
                )
                .await;
                assert_eq!(stored, 1, "{backend:?}, {round}");
                assert_eq!(store.known_erasure_key().get(), Some(&key[..]));
            }
            assert_eq!(
                store
                    .scalar("SELECT COUNT(*) FROM identifiers WHERE value = 'gone@example.com'")
                    .await
                    .unwrap(),
                0,
                "{backend:?}"
            );
        }
        pg.drop_with(stores).await;
    }
}
