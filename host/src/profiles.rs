//! Reading and erasing profiles: what the Profiles API and `switchyard profiles` show.

use anyhow::Context as _;
use chrono::{TimeZone, Utc};
use serde::Serialize;
use serde_json::{Map, Value};

use crate::identity::{self, Identifier};
use crate::store::{now_millis, Backend, Store};

/// A profile as the API returns it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Profile {
    pub id: String,
    pub identifiers: Vec<Identifier>,
    pub traits: Map<String, Value>,
    pub created_at: String,
    pub updated_at: String,
}

/// One page of a profile's events, newest first.
#[derive(Debug, Clone, Serialize)]
pub struct EventPage {
    pub data: Vec<Value>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub cursor: Option<String>,
}

/// One logged merge.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Merge {
    pub from_profile: String,
    pub into_profile: String,
    pub reason: String,
    pub message_id: Option<String>,
    pub identifier: Option<Identifier>,
    pub at: String,
}

/// A stored trait value: JSON text, or (written by something older) a plain string.
fn trait_value(text: String) -> Value {
    serde_json::from_str(&text).unwrap_or(Value::String(text))
}

fn rfc3339(ms: i64) -> String {
    Utc.timestamp_millis_opt(ms)
        .single()
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

/// A profile's row with its identifiers and traits aggregated as JSON text:
/// (id, created_at, updated_at, identifiers, traits).
type ProfileRow = (String, i64, i64, Option<String>, Option<String>);

/// Reads profiles.
#[derive(Clone)]
pub struct Profiles {
    store: Store,
}

impl Profiles {
    pub fn new(store: Store) -> Profiles {
        Profiles { store }
    }

    /// The profile holding `id`, if any.
    pub async fn find(&self, id: &Identifier) -> anyhow::Result<Option<String>> {
        let mut conn = self.store.pool().acquire().await?;
        identity::profile_of(&mut conn, id).await
    }

    /// One statement, so a lookup costs one round trip to the store, not four.
    pub async fn get(&self, id: &Identifier) -> anyhow::Result<Option<Profile>> {
        let (identifiers, traits) = match self.store.backend() {
            Backend::Sqlite => (
                "(SELECT json_group_array(json_array(x.kind, x.value)) FROM (SELECT kind, value FROM identifiers WHERE profile_id = p.id ORDER BY kind, value) x)",
                "(SELECT json_group_array(json_array(t.name, t.value)) FROM (SELECT name, value FROM traits WHERE profile_id = p.id ORDER BY name) t)",
            ),
            Backend::Postgres => (
                "(SELECT json_agg(json_build_array(x.kind, x.value) ORDER BY x.kind, x.value)::text FROM identifiers x WHERE x.profile_id = p.id)",
                "(SELECT json_agg(json_build_array(t.name, t.value) ORDER BY t.name)::text FROM traits t WHERE t.profile_id = p.id)",
            ),
        };
        let sql = format!(
            "SELECT p.id, p.created_at, p.updated_at, {identifiers}, {traits} \
             FROM identifiers i JOIN profiles p ON p.id = i.profile_id WHERE i.kind = $1 AND i.value = $2"
        );
        let row: Option<ProfileRow> = sqlx::query_as(&sql)
            .bind(&id.kind)
            .bind(&id.value)
            .fetch_optional(self.store.pool())
            .await?;
        let Some((profile_id, created, updated, identifiers, traits)) = row else {
            return Ok(None);
        };
        let pairs = |text: Option<String>, what: &str| -> anyhow::Result<Vec<(String, String)>> {
            match text {
                None => Ok(Vec::new()),
                Some(t) => serde_json::from_str(&t)
                    .with_context(|| format!("reading the {what} of profile {profile_id}")),
            }
        };
        let identifiers = pairs(identifiers, "identifiers")?
            .into_iter()
            .map(|(kind, value)| Identifier { kind, value })
            .collect();
        let traits = pairs(traits, "traits")?
            .into_iter()
            .map(|(name, value)| (name, trait_value(value)))
            .collect();
        Ok(Some(Profile {
            id: profile_id,
            identifiers,
            traits,
            created_at: rfc3339(created),
            updated_at: rfc3339(updated),
        }))
    }

    pub async fn traits_of(&self, profile_id: &str) -> anyhow::Result<Map<String, Value>> {
        let rows: Vec<(String, String)> =
            sqlx::query_as("SELECT name, value FROM traits WHERE profile_id = $1 ORDER BY name")
                .bind(profile_id)
                .fetch_all(self.store.pool())
                .await?;
        Ok(rows
            .into_iter()
            .map(|(name, value)| (name, trait_value(value)))
            .collect())
    }

    /// Events newest first; `cursor` is the last page's.
    pub async fn events(
        &self,
        profile_id: &str,
        limit: usize,
        cursor: Option<&str>,
    ) -> anyhow::Result<EventPage> {
        let limit = limit.clamp(1, 1000) as i64;
        let rows: Vec<(String, i64, String)> = match cursor.map(parse_cursor).transpose()? {
            None => {
                sqlx::query_as("SELECT message_id, ts, body FROM events WHERE profile_id = $1 ORDER BY ts DESC, message_id DESC LIMIT $2")
                    .bind(profile_id)
                    .bind(limit + 1)
                    .fetch_all(self.store.pool())
                    .await?
            }
            Some((ts, mid)) => {
                sqlx::query_as(
                    "SELECT message_id, ts, body FROM events WHERE profile_id = $1 AND (ts < $2 OR (ts = $2 AND message_id < $3)) \
                     ORDER BY ts DESC, message_id DESC LIMIT $4",
                )
                .bind(profile_id)
                .bind(ts)
                .bind(mid)
                .bind(limit + 1)
                .fetch_all(self.store.pool())
                .await?
            }
        };
        let more = rows.len() as i64 > limit;
        let rows: Vec<_> = rows.into_iter().take(limit as usize).collect();
        let cursor = if more {
            rows.last().map(|(mid, ts, _)| format!("{ts}.{mid}"))
        } else {
            None
        };
        let data = rows
            .into_iter()
            .map(|(_, _, body)| serde_json::from_str(&body).unwrap_or(Value::Null))
            .collect();
        Ok(EventPage { data, cursor })
    }

    /// Merges into or out of a profile, oldest first.
    pub async fn merges(&self, profile_id: &str) -> anyhow::Result<Vec<Merge>> {
        type Row = (
            String,
            String,
            String,
            Option<String>,
            Option<String>,
            Option<String>,
            i64,
        );
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT from_profile, into_profile, reason, message_id, identifier_kind, identifier_value, at FROM merges \
             WHERE into_profile = $1 OR from_profile = $1 ORDER BY at, id",
        )
        .bind(profile_id)
        .fetch_all(self.store.pool())
        .await?;
        Ok(rows
            .into_iter()
            .map(
                |(from_profile, into_profile, reason, message_id, kind, value, at)| Merge {
                    from_profile,
                    into_profile,
                    reason,
                    message_id,
                    identifier: kind
                        .zip(value)
                        .map(|(kind, value)| Identifier { kind, value }),
                    at: rfc3339(at),
                },
            )
            .collect())
    }

    /// Erases a profile (privacy request): its events, traits and identifiers go, and its
    /// identifiers are suppressed so later messages carrying them create nothing.
    pub async fn delete(&self, id: &Identifier) -> anyhow::Result<Option<String>> {
        let mut tx = self.store.pool().begin().await?;
        let Some(profile_id) = identity::profile_of(&mut tx, id).await? else {
            return Ok(None);
        };
        let ids = identity::identifiers_of(&mut tx, &profile_id).await?;
        let now = now_millis();
        for i in &ids {
            sqlx::query("INSERT INTO suppressions (kind, value, at) VALUES ($1, $2, $3) ON CONFLICT (kind, value) DO NOTHING")
                .bind(&i.kind)
                .bind(&i.value)
                .bind(now)
                .execute(&mut *tx)
                .await?;
        }
        for table in ["events", "traits", "identifiers", "profile_groups"] {
            sqlx::query(&format!("DELETE FROM {table} WHERE profile_id = $1"))
                .bind(&profile_id)
                .execute(&mut *tx)
                .await
                .with_context(|| format!("erasing {table}"))?;
        }
        sqlx::query("DELETE FROM profiles WHERE id = $1")
            .bind(&profile_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        tracing::info!(profile = %profile_id, identifiers = ids.len(), "profile erased and its identifiers suppressed");
        Ok(Some(profile_id))
    }
}

/// An events cursor this API did not hand out (the Profiles API answers 400).
#[derive(Debug, thiserror::Error)]
#[error("invalid cursor")]
pub struct InvalidCursor;

fn parse_cursor(cursor: &str) -> Result<(i64, String), InvalidCursor> {
    let (ts, mid) = cursor.split_once('.').ok_or(InvalidCursor)?;
    Ok((ts.parse().map_err(|_| InvalidCursor)?, mid.to_string()))
}
