//! The erasure tables (`erasure_keys`, `erased_identifiers`, `erasures`,
//! `erasure_destinations`): erasing one profile with every trace of its identifiers in one
//! transaction, the keyed hashes that suppress re-creation, and the per-destination queue of
//! erase calls with its receipt.
//!
//! Why a keyed hash: refusing a returning email needs to recognise it, but keeping the email
//! (even in a "suppressions" list) is keeping the personal data the person asked to erase. An
//! HMAC-SHA256 under a random key kept in the database is enough to recognise the same
//! identifier again, and unlike a plain SHA-256 of an email it cannot be reversed with a
//! precomputed table of common addresses by whoever gets a copy of the hashes alone.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::{col, Backend, Conn, Result, Store, StoreError};
use crate::identifier::Identifier;

/// Binds in one `IN (...)`.
const CHUNK: usize = 500;

/// The name of the key row that suppression digests are made with.
pub(super) const SUPPRESSION_KEY: &str = "suppression";

/// A destination's erase: waiting (or retrying), done, or not possible.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TargetStatus {
    /// Queued, or retrying after a failure (see `last_error`, `next_attempt_at`).
    Pending,
    /// The destination confirmed the erase.
    Erased,
    /// The destination cannot erase: its plugin's manifest lacks `erase` (every plugin built
    /// against contract 1.0.0, and Slack, whose messages cannot be unsent), or its sync is no
    /// longer configured. The operator must erase the person there by hand. (A `delete`
    /// instead is not sent: for some destinations, Slack for one, it would post the person's
    /// data once more.)
    CannotErase,
    /// The destination refused the erase for good (rejected); `last_error` says why.
    Failed,
}

impl TargetStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            TargetStatus::Pending => "pending",
            TargetStatus::Erased => "erased",
            TargetStatus::CannotErase => "cannot_erase",
            TargetStatus::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> TargetStatus {
        match s {
            "erased" => TargetStatus::Erased,
            "cannot_erase" => TargetStatus::CannotErase,
            "failed" => TargetStatus::Failed,
            _ => TargetStatus::Pending,
        }
    }
}

/// Which profile to erase.
#[derive(Debug, Clone)]
pub enum ProfileRef {
    /// The profile holding this identifier.
    Identifier(Identifier),
    /// The profile with this id.
    Id(String),
}

/// One record a destination acknowledged for the erased profile: what its erase call gets.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SentRecord {
    pub sync: String,
    pub key: String,
    /// The fields last acknowledged (JSON text).
    pub fields: String,
}

/// What erasing a profile recorded.
#[derive(Debug, Clone)]
pub struct Erased {
    pub erasure_id: String,
    pub profile_id: String,
}

/// An erasure's row.
#[derive(Debug, Clone)]
pub struct ErasureRow {
    pub id: String,
    pub profile_id: String,
    pub requested_at: i64,
    pub identifiers: i64,
    pub events: i64,
}

/// One destination of an erasure.
#[derive(Debug, Clone)]
pub struct TargetRow {
    pub erasure_id: String,
    pub destination: String,
    pub syncs: Vec<String>,
    pub status: TargetStatus,
    /// Still to erase; empty once done.
    pub records: Vec<SentRecord>,
    pub attempts: i64,
    pub next_attempt_at: i64,
    pub last_error: Option<String>,
    pub done_at: Option<i64>,
}

/// A digest of an identifier under the suppression key: hex HMAC-SHA256 of `kind`, a newline
/// and the (normalised) value.
pub fn digest(key: &[u8], id: &Identifier) -> String {
    // HMAC takes keys of any length; `new_from_slice` cannot fail for it.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(id.kind.as_bytes());
    mac.update(b"\n");
    mac.update(id.value.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// The suppression key, if one was ever made (none before the first erasure).
pub async fn key(conn: &mut Conn) -> Result<Option<Vec<u8>>> {
    let row = sqlx::query("SELECT secret FROM erasure_keys WHERE name = $1")
        .bind(SUPPRESSION_KEY)
        .fetch_optional(&mut *conn)
        .await?;
    match row {
        None => Ok(None),
        Some(r) => decode_key(&col::<String>(&r, "secret")?).map(Some),
    }
}

/// The suppression key from its stored (hex) form.
pub(super) fn decode_key(text: &str) -> Result<Vec<u8>> {
    hex::decode(text).map_err(|e| StoreError::Other(anyhow::anyhow!("erasure key is not hex: {e}")))
}

/// The suppression key once a hub has read it. It is made at the first erasure and never
/// changed nor removed, so once known it need not be read again: the tracking API's group
/// commits then look up suppressions with the rest of their reads (see
/// [`super::identity::lookup_batch`]). Shared by the clones of a [`Store`].
#[derive(Debug, Clone, Default)]
pub struct KnownKey(std::sync::Arc<std::sync::OnceLock<Vec<u8>>>);

impl KnownKey {
    pub fn get(&self) -> Option<&[u8]> {
        self.0.get().map(Vec::as_slice)
    }

    pub fn remember(&self, key: &[u8]) {
        let _ = self.0.set(key.to_vec());
    }
}

/// The suppression key, made (32 random bytes) on first use. Two hubs racing to make it agree
/// on whichever row landed first.
async fn ensure_key(conn: &mut Conn, now: i64) -> Result<Vec<u8>> {
    if let Some(k) = key(conn).await? {
        return Ok(k);
    }
    // Two v4 UUIDs: 244 bits from the OS's random source (uuid uses getrandom).
    let mut secret = Vec::with_capacity(32);
    secret.extend_from_slice(uuid::Uuid::new_v4().as_bytes());
    secret.extend_from_slice(uuid::Uuid::new_v4().as_bytes());
    sqlx::query(
        "INSERT INTO erasure_keys (name, secret, created_at) VALUES ($1, $2, $3) ON CONFLICT (name) DO NOTHING",
    )
    .bind(SUPPRESSION_KEY)
    .bind(hex::encode(&secret))
    .bind(now)
    .execute(&mut *conn)
    .await?;
    key(conn)
        .await?
        .ok_or_else(|| StoreError::Other(anyhow::anyhow!("the erasure key was not stored")))
}

/// Which of these identifiers an erasure suppressed. `key` is [`key`]'s (None: nothing was
/// ever erased, so nothing is suppressed and no query is made). Identifiers suppressed by a
/// hub older than the hashed table (plain rows in `suppressions`) count too.
pub async fn suppressed_among(
    conn: &mut Conn,
    backend: Backend,
    key: Option<&[u8]>,
    ids: &[&Identifier],
) -> Result<HashSet<Identifier>> {
    let mut found = HashSet::new();
    let Some(key) = key else {
        return Ok(found);
    };
    let digests: Vec<(String, &Identifier)> = ids.iter().map(|i| (digest(key, i), *i)).collect();
    for chunk in digests.chunks(CHUNK) {
        let sql = format!(
            "SELECT digest FROM erased_identifiers WHERE digest IN {}",
            backend.value_groups(1, 1, chunk.len())
        );
        let mut q = sqlx::query(&sql);
        for (d, _) in chunk {
            q = q.bind(d);
        }
        let hits: HashSet<String> = q
            .fetch_all(&mut *conn)
            .await?
            .iter()
            .map(|r| col(r, "digest"))
            .collect::<Result<_>>()?;
        found.extend(
            chunk
                .iter()
                .filter(|(d, _)| hits.contains(d))
                .map(|(_, i)| (*i).clone()),
        );
    }
    Ok(found)
}

/// Replaces plain suppressions left by older hubs (`suppressions`: kind and value in clear)
/// with their digests, so no erased identifier stays readable. Cheap when there are none.
pub async fn adopt_plain_suppressions(store: &Store) -> Result<u64> {
    // A plain read first: every start of the hub or the CLI comes here, and a write
    // transaction would wait for the write lock of a busy SQLite file.
    if sqlx::query("SELECT 1 AS hit FROM suppressions LIMIT 1")
        .fetch_optional(store.pool())
        .await?
        .is_none()
    {
        return Ok(0);
    }
    let mut tx = store.begin_write().await?;
    let rows = sqlx::query("SELECT kind, value, at FROM suppressions")
        .fetch_all(&mut *tx)
        .await?;
    if rows.is_empty() {
        return Ok(0);
    }
    let key = ensure_key(&mut tx, super::now_millis()).await?;
    for r in &rows {
        let id = Identifier {
            kind: col(r, "kind")?,
            value: col(r, "value")?,
        };
        let at: i64 = col(r, "at")?;
        sqlx::query(
            "INSERT INTO erased_identifiers (digest, at) VALUES ($1, $2) ON CONFLICT (digest) DO NOTHING",
        )
        .bind(digest(&key, &id))
        .bind(at)
        .execute(&mut *tx)
        .await?;
    }
    sqlx::query("DELETE FROM suppressions")
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(rows.len() as u64)
}

/// Runs `sql` (which ends in `IN `) once per chunk of `values`, binding them.
async fn each_chunk(conn: &mut Conn, backend: Backend, sql: &str, values: &[String]) -> Result<()> {
    for chunk in values.chunks(CHUNK) {
        let text = format!("{sql}{}", backend.value_groups(1, 1, chunk.len()));
        let mut q = sqlx::query(&text);
        for v in chunk {
            q = q.bind(v);
        }
        q.execute(&mut *conn).await?;
    }
    Ok(())
}

/// Erases a profile (privacy request) in one transaction, so that nothing is half-erased and
/// no destination's erase is lost:
///
/// * its identifiers are remembered only as digests ([`digest`]), which refuse re-creation;
/// * what any destination acknowledged for it (sync ledger rows keyed by its id, by the id of a
///   profile merged into it, or by one of its events) becomes a queued erase per destination,
///   grouped with `destination_of(sync)` (None: the sync is no longer configured, and that
///   destination is recorded as one that cannot be erased);
/// * its events, traits, identifiers, groups, audience memberships, the merge log rows naming
///   it or its identifiers, the profiles merged into it, the ledger rows and dead letters of
///   all of these go.
///
/// None when no profile matches.
pub async fn erase(
    store: &Store,
    profile: &ProfileRef,
    destination_of: &(dyn Fn(&str) -> Option<String> + Send + Sync),
    now: i64,
) -> Result<Option<Erased>> {
    let backend = store.backend();
    let mut tx = store.begin_write().await?;
    let profile_id = match profile {
        ProfileRef::Identifier(id) => super::identity::profile_of(&mut tx, id).await?,
        ProfileRef::Id(id) => sqlx::query("SELECT id FROM profiles WHERE id = $1")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?
            .map(|r| col::<String>(&r, "id"))
            .transpose()?,
    };
    let Some(profile_id) = profile_id else {
        return Ok(None);
    };

    // The profile and every profile merged into it (the merge log repoints earlier merges to
    // the survivor, so one level is all of them).
    let mut profiles: Vec<String> = vec![profile_id.clone()];
    for r in sqlx::query("SELECT from_profile FROM merges WHERE into_profile = $1")
        .bind(&profile_id)
        .fetch_all(&mut *tx)
        .await?
    {
        profiles.push(col(&r, "from_profile")?);
    }
    profiles.sort();
    profiles.dedup();

    let identifiers = super::identity::identifiers_of(&mut tx, &profile_id).await?;
    let key = ensure_key(&mut tx, now).await?;
    for id in &identifiers {
        sqlx::query(
            "INSERT INTO erased_identifiers (digest, at) VALUES ($1, $2) ON CONFLICT (digest) DO NOTHING",
        )
        .bind(digest(&key, id))
        .bind(now)
        .execute(&mut *tx)
        .await?;
    }

    let mut message_ids: Vec<String> = Vec::new();
    for r in sqlx::query("SELECT message_id FROM events WHERE profile_id = $1")
        .bind(&profile_id)
        .fetch_all(&mut *tx)
        .await?
    {
        message_ids.push(col(&r, "message_id")?);
    }

    // What destinations were sent: ledger rows keyed by a profile (audience and all-profile
    // syncs) or by an event (events syncs).
    let mut sent: Vec<(SentRecord, i64, bool)> = Vec::new();
    for (keys, by_event) in [(&profiles, false), (&message_ids, true)] {
        for chunk in keys.chunks(CHUNK) {
            let sql = format!(
                "SELECT sync, key, fields, acked_at FROM sync_records WHERE key IN {} ORDER BY acked_at DESC, sync, key",
                backend.value_groups(1, 1, chunk.len())
            );
            let mut q = sqlx::query(&sql);
            for k in chunk {
                q = q.bind(k);
            }
            for r in q.fetch_all(&mut *tx).await? {
                sent.push((
                    SentRecord {
                        sync: col(&r, "sync")?,
                        key: col(&r, "key")?,
                        fields: col(&r, "fields")?,
                    },
                    col(&r, "acked_at")?,
                    by_event,
                ));
            }
        }
    }
    let targets = group_targets(sent, destination_of);

    let erasure_id = format!("era_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(
        "INSERT INTO erasures (id, profile_id, requested_at, identifiers, events) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(&erasure_id)
    .bind(&profile_id)
    .bind(now)
    .bind(identifiers.len() as i64)
    .bind(message_ids.len() as i64)
    .execute(&mut *tx)
    .await?;
    for t in &targets {
        let (status, error, done_at) = if t.known {
            (TargetStatus::Pending, None, None)
        } else {
            (
                TargetStatus::CannotErase,
                Some(format!(
                    "sync `{}` is no longer in the project file, so its destination is unknown: erase the person there by hand",
                    t.syncs.join("`, `")
                )),
                Some(now),
            )
        };
        let records = if t.known {
            Some(serde_json::to_string(&t.records).map_err(|e| StoreError::Other(e.into()))?)
        } else {
            None
        };
        sqlx::query(
            "INSERT INTO erasure_destinations (erasure_id, destination, syncs, status, records, attempts, next_attempt_at, last_error, done_at) \
             VALUES ($1, $2, $3, $4, $5, 0, $6, $7, $8)",
        )
        .bind(&erasure_id)
        .bind(&t.destination)
        .bind(serde_json::to_string(&t.syncs).map_err(|e| StoreError::Other(e.into()))?)
        .bind(status.as_str())
        .bind(records)
        .bind(now)
        .bind(error)
        .bind(done_at)
        .execute(&mut *tx)
        .await?;
    }

    // Every trace: ledger rows and dead letters of the profiles and events, then the rows.
    let mut keys = profiles.clone();
    keys.extend(message_ids.iter().cloned());
    each_chunk(
        &mut tx,
        backend,
        "DELETE FROM sync_records WHERE key IN ",
        &keys,
    )
    .await?;
    each_chunk(
        &mut tx,
        backend,
        "DELETE FROM dead_letters WHERE key IN ",
        &keys,
    )
    .await?;
    // A stream's letters for the copies a transform fanned a message out into are keyed
    // `MESSAGE_ID#N` (few: only refused copies).
    let copies = sqlx::query(
        "SELECT id, key FROM dead_letters WHERE sync LIKE 'stream:%' AND key LIKE '%#%'",
    )
    .fetch_all(&mut *tx)
    .await?;
    let events: HashSet<&str> = message_ids.iter().map(|m| m.as_str()).collect();
    let mut gone = Vec::new();
    for r in &copies {
        let key: String = col(r, "key")?;
        if key
            .rsplit_once('#')
            .is_some_and(|(id, _)| events.contains(id))
        {
            gone.push(col::<String>(r, "id")?);
        }
    }
    each_chunk(
        &mut tx,
        backend,
        "DELETE FROM dead_letters WHERE id IN ",
        &gone,
    )
    .await?;
    // The audiences they were in shrink by them (sizes are kept, not counted).
    for chunk in profiles.chunks(CHUNK) {
        let text = format!(
            "UPDATE audience_sizes SET size = size - (SELECT COUNT(*) FROM audience_members m \
             WHERE m.audience = audience_sizes.audience AND m.profile_id IN {})",
            backend.value_groups(1, 1, chunk.len())
        );
        let mut q = sqlx::query(&text);
        for v in chunk {
            q = q.bind(v);
        }
        q.execute(&mut *tx).await?;
    }
    for table in [
        "events",
        "traits",
        "identifiers",
        "profile_groups",
        "audience_members",
    ] {
        each_chunk(
            &mut tx,
            backend,
            &format!("DELETE FROM {table} WHERE profile_id IN "),
            &profiles,
        )
        .await?;
    }
    // Consent, merge blocks and merge snapshots (privacy's tables), while the merge log still
    // says which merges these profiles and identifiers took part in.
    super::merges::forget(&mut tx, &profiles, &identifiers).await?;
    each_chunk(
        &mut tx,
        backend,
        "DELETE FROM merges WHERE into_profile IN ",
        &profiles,
    )
    .await?;
    each_chunk(
        &mut tx,
        backend,
        "DELETE FROM merges WHERE from_profile IN ",
        &profiles,
    )
    .await?;
    for id in &identifiers {
        // A merge elsewhere that this identifier joined (it names the identifier in clear).
        sqlx::query("DELETE FROM merges WHERE identifier_kind = $1 AND identifier_value = $2")
            .bind(&id.kind)
            .bind(&id.value)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM suppressions WHERE kind = $1 AND value = $2")
            .bind(&id.kind)
            .bind(&id.value)
            .execute(&mut *tx)
            .await?;
    }
    each_chunk(
        &mut tx,
        backend,
        "DELETE FROM profiles WHERE id IN ",
        &profiles,
    )
    .await?;
    tx.commit().await?;
    Ok(Some(Erased {
        erasure_id,
        profile_id,
    }))
}

/// One destination's share of an erasure, before it is stored.
#[derive(Debug, Clone, PartialEq)]
struct NewTarget {
    destination: String,
    syncs: Vec<String>,
    records: Vec<SentRecord>,
    /// False when the sync is no longer configured (the destination is then `sync:NAME`).
    known: bool,
}

/// Groups what was sent by destination. Every profile-keyed record is kept (a profile merged
/// into the erased one may be known to the destination under another email); of the records
/// of an events sync only the newest is kept, since one is enough to name the person and a
/// person with thousands of events would otherwise mean thousands of erase calls. Records with
/// the same fields are sent once.
fn group_targets(
    sent: Vec<(SentRecord, i64, bool)>,
    destination_of: &(dyn Fn(&str) -> Option<String> + Send + Sync),
) -> Vec<NewTarget> {
    let mut by_dest: BTreeMap<String, NewTarget> = BTreeMap::new();
    let mut event_syncs_seen: BTreeSet<String> = BTreeSet::new();
    let mut sent = sent;
    // Newest first, so the kept event record of each sync is its newest.
    sent.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.key.cmp(&b.0.key)));
    for (record, _, by_event) in sent {
        if by_event && !event_syncs_seen.insert(record.sync.clone()) {
            continue;
        }
        let (destination, known) = match destination_of(&record.sync) {
            Some(d) => (d, true),
            None => (format!("sync:{}", record.sync), false),
        };
        let t = by_dest
            .entry(destination.clone())
            .or_insert_with(|| NewTarget {
                destination,
                syncs: Vec::new(),
                records: Vec::new(),
                known,
            });
        if !t.syncs.contains(&record.sync) {
            t.syncs.push(record.sync.clone());
        }
        if !t.records.iter().any(|r| r.fields == record.fields) {
            t.records.push(record);
        }
    }
    by_dest.into_values().collect()
}

fn target_row(r: &sqlx::any::AnyRow) -> Result<TargetRow> {
    let syncs: String = col(r, "syncs")?;
    let records: Option<String> = col(r, "records")?;
    Ok(TargetRow {
        erasure_id: col(r, "erasure_id")?,
        destination: col(r, "destination")?,
        syncs: serde_json::from_str(&syncs).unwrap_or_default(),
        status: TargetStatus::parse(&col::<String>(r, "status")?),
        records: records
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default(),
        attempts: col(r, "attempts")?,
        next_attempt_at: col(r, "next_attempt_at")?,
        last_error: col(r, "last_error")?,
        done_at: col(r, "done_at")?,
    })
}

const TARGET_COLUMNS: &str = "erasure_id, destination, syncs, status, records, attempts, next_attempt_at, last_error, done_at";

/// Pending destination erases due at `now` (of one erasure, or all), oldest first.
pub async fn due(
    store: &Store,
    erasure_id: Option<&str>,
    now: i64,
    limit: i64,
) -> Result<Vec<TargetRow>> {
    let rows = sqlx::query(&format!(
        "SELECT {TARGET_COLUMNS} FROM erasure_destinations WHERE status = 'pending' AND next_attempt_at <= $1 \
         AND ($2 = '' OR erasure_id = $2) ORDER BY next_attempt_at, erasure_id, destination LIMIT $3"
    ))
    .bind(now)
    .bind(erasure_id.unwrap_or(""))
    .bind(limit)
    .fetch_all(store.pool())
    .await?;
    rows.iter().map(target_row).collect()
}

/// Claims a due erase for `hold_ms` (pushing its next attempt out), so that of several hubs
/// sharing a database only one calls the destination. False when another got it first.
pub async fn claim(store: &Store, t: &TargetRow, until: i64) -> Result<bool> {
    let n = sqlx::query(
        "UPDATE erasure_destinations SET next_attempt_at = $1 WHERE erasure_id = $2 AND destination = $3 \
         AND status = 'pending' AND next_attempt_at = $4",
    )
    .bind(until)
    .bind(&t.erasure_id)
    .bind(&t.destination)
    .bind(t.next_attempt_at)
    .execute(store.pool())
    .await?
    .rows_affected();
    Ok(n == 1)
}

/// Records an attempt's outcome: the records still to erase (none: the erase is finished with
/// `status`), the attempt count, when to try again and the last error. Finished erases keep no
/// records: the fields (the person's email and the like) go with the last confirmation.
#[allow(clippy::too_many_arguments)]
pub async fn record_attempt(
    store: &Store,
    erasure_id: &str,
    destination: &str,
    status: TargetStatus,
    remaining: &[SentRecord],
    attempts: i64,
    next_attempt_at: i64,
    last_error: Option<&str>,
    now: i64,
) -> Result<()> {
    let finished = status != TargetStatus::Pending;
    let records = if finished || remaining.is_empty() {
        None
    } else {
        Some(serde_json::to_string(remaining).map_err(|e| StoreError::Other(e.into()))?)
    };
    sqlx::query(
        "UPDATE erasure_destinations SET status = $1, records = $2, attempts = $3, next_attempt_at = $4, last_error = $5, done_at = $6 \
         WHERE erasure_id = $7 AND destination = $8",
    )
    .bind(status.as_str())
    .bind(records)
    .bind(attempts)
    .bind(next_attempt_at)
    .bind(last_error)
    .bind(finished.then_some(now))
    .bind(erasure_id)
    .bind(destination)
    .execute(store.pool())
    .await?;
    Ok(())
}

fn erasure_row(r: &sqlx::any::AnyRow) -> Result<ErasureRow> {
    Ok(ErasureRow {
        id: col(r, "id")?,
        profile_id: col(r, "profile_id")?,
        requested_at: col(r, "requested_at")?,
        identifiers: col(r, "identifiers")?,
        events: col(r, "events")?,
    })
}

/// An erasure and its destinations.
pub async fn receipt(store: &Store, id: &str) -> Result<Option<(ErasureRow, Vec<TargetRow>)>> {
    let Some(row) = sqlx::query(
        "SELECT id, profile_id, requested_at, identifiers, events FROM erasures WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(store.pool())
    .await?
    else {
        return Ok(None);
    };
    let erasure = erasure_row(&row)?;
    let targets = sqlx::query(&format!(
        "SELECT {TARGET_COLUMNS} FROM erasure_destinations WHERE erasure_id = $1 ORDER BY destination"
    ))
    .bind(id)
    .fetch_all(store.pool())
    .await?
    .iter()
    .map(target_row)
    .collect::<Result<_>>()?;
    Ok(Some((erasure, targets)))
}

/// The newest erasures' ids, newest first.
pub async fn recent(store: &Store, limit: i64) -> Result<Vec<String>> {
    sqlx::query("SELECT id FROM erasures ORDER BY requested_at DESC, id LIMIT $1")
        .bind(limit)
        .fetch_all(store.pool())
        .await?
        .iter()
        .map(|r| col(r, "id"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(sync: &str, key: &str, fields: &str) -> SentRecord {
        SentRecord {
            sync: sync.into(),
            key: key.into(),
            fields: fields.into(),
        }
    }

    #[test]
    fn digests_depend_on_key_kind_and_value_and_hide_the_value() {
        let email = Identifier::new("email", "Ada@Example.com");
        let d = digest(b"k1", &email);
        assert_eq!(d.len(), 64);
        assert!(!d.contains("ada"));
        assert_eq!(
            d,
            digest(b"k1", &Identifier::new("email", "ada@example.com"))
        );
        assert_ne!(d, digest(b"k2", &email));
        assert_ne!(
            d,
            digest(b"k1", &Identifier::new("user_id", "ada@example.com"))
        );
    }

    #[tokio::test]
    async fn plain_suppressions_of_older_hubs_become_digests_that_still_suppress() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/t.db", dir.path().display());
        let store = Store::open(&url).await.unwrap();
        sqlx::query(
            "INSERT INTO suppressions (kind, value, at) VALUES ('email', 'old@example.com', 5)",
        )
        .execute(store.pool())
        .await
        .unwrap();
        drop(store);
        // The next start hashes it.
        let store = Store::open(&url).await.unwrap();
        assert_eq!(
            store
                .scalar("SELECT COUNT(*) FROM suppressions")
                .await
                .unwrap(),
            0
        );
        assert_eq!(
            store
                .scalar("SELECT COUNT(*) FROM erased_identifiers WHERE at = 5")
                .await
                .unwrap(),
            1
        );
        let mut conn = store.acquire().await.unwrap();
        let key = key(&mut conn).await.unwrap();
        let old = Identifier::new("email", "OLD@example.com");
        let other = Identifier::new("email", "new@example.com");
        let hit = suppressed_among(&mut conn, store.backend(), key.as_deref(), &[&old, &other])
            .await
            .unwrap();
        assert_eq!(hit, HashSet::from([old]));
        assert_eq!(adopt_plain_suppressions(&store).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn of_two_hubs_only_one_claims_a_due_erase_and_a_finished_one_keeps_no_records() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&format!("sqlite://{}/t.db", dir.path().display()))
            .await
            .unwrap();
        let records = serde_json::to_string(&[rec("s", "p1", r#"{"email":"a@x"}"#)]).unwrap();
        sqlx::query(
            "INSERT INTO erasure_destinations (erasure_id, destination, syncs, status, records, attempts, next_attempt_at) \
             VALUES ('era_1', 'd', '[\"s\"]', 'pending', $1, 0, 100)",
        )
        .bind(&records)
        .execute(store.pool())
        .await
        .unwrap();
        assert!(
            due(&store, None, 99, 10).await.unwrap().is_empty(),
            "not due yet"
        );
        // Both hubs read the row as due; the first claim wins, the second finds it moved.
        let seen_by_a = due(&store, None, 150, 10).await.unwrap();
        let seen_by_b = due(&store, Some("era_1"), 150, 10).await.unwrap();
        assert_eq!(seen_by_a.len(), 1);
        assert_eq!(seen_by_a[0].records, [rec("s", "p1", r#"{"email":"a@x"}"#)]);
        assert!(claim(&store, &seen_by_a[0], 10_000).await.unwrap());
        assert!(!claim(&store, &seen_by_b[0], 10_000).await.unwrap());
        assert!(
            due(&store, None, 150, 10).await.unwrap().is_empty(),
            "held by the claim"
        );

        record_attempt(
            &store,
            "era_1",
            "d",
            TargetStatus::Erased,
            &[],
            1,
            0,
            None,
            200,
        )
        .await
        .unwrap();
        assert_eq!(
            store
                .scalar("SELECT COUNT(*) FROM erasure_destinations WHERE records IS NULL AND status = 'erased' AND done_at = 200")
                .await
                .unwrap(),
            1
        );
    }

    #[tokio::test]
    async fn a_streams_letters_go_with_the_events_they_name_copies_included() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/t.db", dir.path().display());
        let store = Store::open(&url).await.unwrap();
        for sql in [
            "INSERT INTO profiles (id, created_at, updated_at) VALUES ('prf_a', 1, 1), ('prf_b', 1, 1)",
            "INSERT INTO events (message_id, profile_id, source, kind, ts, received_at, body) VALUES \
             ('m1', 'prf_a', 'web', 'track', 1, 1, '{}'), ('m2', 'prf_b', 'web', 'track', 1, 1, '{}')",
        ] {
            sqlx::query(sql).execute(store.pool()).await.unwrap();
        }
        for (id, key) in [
            ("d1", "m1"),
            ("d2", "m1#2"),
            ("d3", "m2#1"),
            ("d4", "m11#1"),
        ] {
            sqlx::query(
                "INSERT INTO dead_letters (id, sync, key, action, hash, fields, attempts, error, at) \
                 VALUES ($1, 'stream:s', $2, 'track', 'h', '{}', 1, 'refused', 1)",
            )
            .bind(id)
            .bind(key)
            .execute(store.pool())
            .await
            .unwrap();
        }
        let erased = erase(&store, &ProfileRef::Id("prf_a".into()), &|_| None, 5)
            .await
            .unwrap();
        assert!(erased.is_some());
        let left: Vec<String> = sqlx::query("SELECT id FROM dead_letters ORDER BY id")
            .fetch_all(store.pool())
            .await
            .unwrap()
            .iter()
            .map(|r| col(r, "id").unwrap())
            .collect();
        assert_eq!(
            left,
            ["d3", "d4"],
            "m1's letter and its copy's are gone, no other"
        );
    }

    #[test]
    fn targets_group_by_destination_keep_merged_profiles_and_one_event_per_sync() {
        let dest = |sync: &str| match sync {
            "to-sg" | "sg-events" => Some("sendgrid".to_string()),
            "to-hook" => Some("hook".to_string()),
            _ => None,
        };
        let sent = vec![
            (rec("to-sg", "p1", r#"{"email":"a@x"}"#), 5, false),
            (rec("to-sg", "p0", r#"{"email":"old@x"}"#), 3, false),
            (rec("sg-events", "m1", r#"{"email":"a@x"}"#), 9, true),
            (rec("sg-events", "m2", r#"{"email":"a@x","n":2}"#), 10, true),
            (rec("to-hook", "p1", r#"{"email":"a@x"}"#), 4, false),
            (rec("gone-sync", "p1", r#"{}"#), 1, false),
        ];
        let targets = group_targets(sent, &dest);
        assert_eq!(targets.len(), 3);
        let sg = targets
            .iter()
            .find(|t| t.destination == "sendgrid")
            .unwrap();
        assert_eq!(sg.syncs, ["sg-events", "to-sg"]);
        // The newest event record only, then both profiles' records.
        assert_eq!(
            sg.records
                .iter()
                .map(|r| r.key.as_str())
                .collect::<Vec<_>>(),
            ["m2", "p1", "p0"]
        );
        let gone = targets
            .iter()
            .find(|t| t.destination == "sync:gone-sync")
            .unwrap();
        assert!(!gone.known);
        assert!(
            targets
                .iter()
                .find(|t| t.destination == "hook")
                .unwrap()
                .known
        );
    }
}
