//! Identity resolution: every message resolves to exactly one profile.
//!
//! None of its identifiers known → a new profile; one profile → attach the new identifiers;
//! several → merge them. A resolution that would break a kind's limit (two different user ids
//! in one profile, say) drops the message's lowest-priority identifier and tries again, so the
//! highest-priority match wins and nothing is merged that should not be. Every merge is logged
//! with the message and the identifier that joined the two profiles.

pub mod batch;
pub mod unmerge;

use std::collections::{BTreeMap, HashMap};

use anyhow::Context as _;
use sha2::{Digest, Sha256};

use crate::config::{IdentityConfig, KindRule};
use crate::store::identity::{self as rows, MergeCause};
use crate::store::{Backend, Conn};

pub use crate::identifier::Identifier;

/// The operator's identity rules.
#[derive(Debug, Clone)]
pub struct IdentityRules {
    kinds: BTreeMap<String, KindRule>,
    trait_kinds: BTreeMap<String, String>,
}

impl IdentityRules {
    pub fn new(config: &IdentityConfig) -> IdentityRules {
        IdentityRules {
            kinds: config.kinds.clone(),
            trait_kinds: config.traits.clone(),
        }
    }

    fn priority(&self, kind: &str) -> u32 {
        self.kinds.get(kind).map(|r| r.priority).unwrap_or(u32::MAX)
    }

    fn limit(&self, kind: &str) -> u32 {
        self.kinds.get(kind).map(|r| r.limit).unwrap_or(0)
    }

    /// The identifiers of configured kinds among `candidates` (kind, value), blank values left
    /// out, highest priority first. The tracking API's writer and the source pages say what
    /// their messages and records carry; identity decides which count.
    pub fn identifiers<I>(&self, candidates: I) -> Vec<Identifier>
    where
        I: IntoIterator<Item = (String, String)>,
    {
        let ids = candidates
            .into_iter()
            .filter(|(kind, value)| self.kinds.contains_key(kind) && !value.trim().is_empty())
            .map(|(kind, value)| Identifier::new(&kind, &value))
            .collect();
        self.ordered(ids)
    }

    /// `[identity.traits]`: trait name → the identifier kind its value is.
    pub fn trait_kinds(&self) -> impl Iterator<Item = (&str, &str)> {
        self.trait_kinds
            .iter()
            .map(|(name, kind)| (name.as_str(), kind.as_str()))
    }

    /// Identifiers highest priority first, without repeats: the order resolution drops them in
    /// (last first) when a kind's limit would break.
    pub fn ordered(&self, mut ids: Vec<Identifier>) -> Vec<Identifier> {
        ids.sort_by_key(|i| (self.priority(&i.kind), i.kind.clone(), i.value.clone()));
        ids.dedup();
        ids
    }
}

/// What resolving one message did.
#[derive(Debug, Clone, PartialEq)]
pub struct Resolution {
    pub profile_id: String,
    pub created: bool,
    /// Profiles merged into `profile_id`.
    pub merged: Vec<String>,
    /// Message identifiers left out because attaching them would break a limit.
    pub dropped: Vec<Identifier>,
}

/// Resolves identifiers to one profile inside the caller's transaction, creating, attaching
/// and merging as needed. `reason` is recorded with any merge (e.g. `identify`, `alias`).
pub async fn resolve(
    conn: &mut Conn,
    backend: Backend,
    rules: &IdentityRules,
    mut ids: Vec<Identifier>,
    message_id: &str,
    reason: &str,
    now: i64,
) -> anyhow::Result<Option<Resolution>> {
    if ids.is_empty() {
        return Ok(None);
    }
    // Other hubs may resolve messages sharing these identifiers at the same moment: take
    // the identifiers' locks in a fixed order, held until this transaction ends.
    let mut keys: Vec<i64> = ids.iter().map(lock_key).collect();
    keys.sort_unstable();
    keys.dedup();
    rows::lock_each(conn, backend, &keys).await?;
    let mut dropped = Vec::new();
    let (matched, existing) = loop {
        let mut matched: Vec<(String, Identifier)> = Vec::new();
        for id in &ids {
            if let Some(profile) = profile_of(conn, id).await? {
                if !matched.iter().any(|(p, _)| *p == profile) {
                    matched.push((profile, id.clone()));
                }
            }
        }
        let mut existing: HashMap<String, Vec<Identifier>> = HashMap::new();
        for (profile, _) in &matched {
            existing.insert(profile.clone(), identifiers_of(conn, profile).await?);
        }
        // Profiles an undone merge separated stay apart (unless the operator allowed them to
        // rejoin): like a limit conflict, the highest-priority match wins.
        let profiles: Vec<&str> = matched.iter().map(|(p, _)| p.as_str()).collect();
        let apart = matched.len() > 1 && rows::merges_blocked(conn, &profiles).await?;
        if (!apart && fits_limits(rules, &ids, existing.values().flatten())) || ids.len() == 1 {
            break (matched, existing);
        }
        // The lowest-priority identifier goes; the highest-priority match wins.
        if let Some(last) = ids.pop() {
            dropped.push(last);
        }
    };

    let profile_id;
    let mut created = false;
    let mut merged = Vec::new();
    match matched.len() {
        0 => {
            profile_id = format!("prf_{}", uuid::Uuid::new_v4().simple());
            rows::create_profile(conn, &profile_id, now).await?;
            created = true;
        }
        _ => {
            // The oldest profile survives, so ids already handed out stay valid.
            let mut by_age = Vec::new();
            for (p, id) in &matched {
                let created_at = rows::created_at(conn, p)
                    .await
                    .with_context(|| format!("profile {p} of {id} is missing"))?;
                by_age.push((created_at, p.clone(), id.clone()));
            }
            by_age.sort();
            profile_id = by_age[0].1.clone();
            for (_, other, joined_by) in by_age.into_iter().skip(1) {
                merge(
                    conn,
                    &profile_id,
                    &other,
                    reason,
                    message_id,
                    &joined_by,
                    now,
                )
                .await?;
                merged.push(other);
            }
            rows::touch_profile(conn, &profile_id, now).await?;
        }
    }
    let known: Vec<&Identifier> = existing.values().flatten().collect();
    for id in &ids {
        if known.contains(&id) {
            continue;
        }
        rows::attach(conn, id, &profile_id, now).await?;
    }
    if !dropped.is_empty() {
        tracing::info!(profile = %profile_id, message_id, dropped = ?dropped.iter().map(|d| d.kind.as_str()).collect::<Vec<_>>(), "identifiers left out to respect identity limits");
    }
    Ok(Some(Resolution {
        profile_id,
        created,
        merged,
        dropped,
    }))
}

fn fits_limits<'a>(
    rules: &IdentityRules,
    message: &'a [Identifier],
    existing: impl Iterator<Item = &'a Identifier>,
) -> bool {
    let mut per_kind: BTreeMap<&str, std::collections::BTreeSet<&str>> = BTreeMap::new();
    for id in message.iter().chain(existing) {
        per_kind
            .entry(id.kind.as_str())
            .or_default()
            .insert(id.value.as_str());
    }
    per_kind
        .iter()
        .all(|(kind, values)| values.len() as u32 <= rules.limit(kind))
}

/// The PostgreSQL advisory lock key of an identifier. Everything that resolves identities in
/// bulk (source pages) takes these same keys, in ascending order, so it serialises with
/// [`resolve`] on other hubs without deadlocks.
pub fn lock_key(id: &Identifier) -> i64 {
    let digest = Sha256::digest(format!("{}\u{0}{}", id.kind, id.value).as_bytes());
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&digest[..8]);
    i64::from_be_bytes(bytes)
}

/// The profile holding an identifier.
pub async fn profile_of(conn: &mut Conn, id: &Identifier) -> anyhow::Result<Option<String>> {
    Ok(rows::profile_of(conn, id).await?)
}

/// A profile's identifiers.
pub async fn identifiers_of(conn: &mut Conn, profile: &str) -> anyhow::Result<Vec<Identifier>> {
    Ok(rows::identifiers_of(conn, profile).await?)
}

/// Folds `from` into `into` (see [`rows::merge`]) and logs it.
async fn merge(
    conn: &mut Conn,
    into: &str,
    from: &str,
    reason: &str,
    message_id: &str,
    joined_by: &Identifier,
    now: i64,
) -> anyhow::Result<()> {
    let cause = MergeCause {
        reason,
        message_id,
        joined_by,
        now,
    };
    rows::merge(conn, into, from, &cause).await?;
    tracing::info!(into, from, reason, message_id, identifier = %joined_by.kind, "merged profiles");
    Ok(())
}
