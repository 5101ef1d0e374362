//! Reading profiles: what the Profiles API and `switchyard profiles` show, shaped from the rows
//! `store::profiles` reads. Erasing one is [`crate::erasure`].

use anyhow::Context as _;
use chrono::{TimeZone, Utc};
use serde::Serialize;
use serde_json::{Map, Value};

use crate::identity::{self, Identifier};
use crate::store::{self, Store};

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
    /// The id `switchyard profiles unmerge` takes.
    pub id: String,
    pub from_profile: String,
    pub into_profile: String,
    pub reason: String,
    pub message_id: Option<String>,
    pub identifier: Option<Identifier>,
    pub at: String,
    /// When the merge was undone, if it was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub undone_at: Option<String>,
}

/// A profile with its consent and merge history (`switchyard profiles show`).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ProfileDetail {
    #[serde(flatten)]
    pub profile: Profile,
    /// Category → its latest state.
    pub consent: Map<String, Value>,
    /// Merges into or out of it, oldest first, undone ones included.
    pub merges: Vec<Merge>,
}

/// A profile row shaped for the API.
fn shape(row: store::profiles::ProfileRow) -> anyhow::Result<Profile> {
    let store::profiles::ProfileRow {
        id: profile_id,
        created_at: created,
        updated_at: updated,
        identifiers,
        traits,
    } = row;
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
    Ok(Profile {
        id: profile_id,
        identifiers,
        traits,
        created_at: rfc3339(created),
        updated_at: rfc3339(updated),
    })
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
        let mut conn = self.store.acquire().await?;
        identity::profile_of(&mut conn, id).await
    }

    /// One statement, so a lookup costs one round trip to the store, not four.
    pub async fn get(&self, id: &Identifier) -> anyhow::Result<Option<Profile>> {
        store::profiles::by_identifier(&self.store, id)
            .await?
            .map(shape)
            .transpose()
    }

    /// A profile by its own id (the console links profiles by id, not by an identifier, so
    /// personal data stays out of URLs and logs).
    pub async fn by_id(&self, profile_id: &str) -> anyhow::Result<Option<Profile>> {
        store::profiles::by_id(&self.store, profile_id)
            .await?
            .map(shape)
            .transpose()
    }

    /// How many profiles the store holds.
    pub async fn count(&self) -> anyhow::Result<i64> {
        Ok(store::profiles::count(&self.store).await?)
    }

    /// [`Profiles::get`] with the profile's consent and merge history.
    pub async fn show(&self, id: &Identifier) -> anyhow::Result<Option<ProfileDetail>> {
        let Some(profile) = self.get(id).await? else {
            return Ok(None);
        };
        let consent = store::consent::of_profile(&self.store, &profile.id)
            .await?
            .into_iter()
            .map(|(category, granted, ts)| {
                (
                    category,
                    serde_json::json!({"granted": granted, "at": rfc3339(ts)}),
                )
            })
            .collect();
        let merges = self.merges(&profile.id).await?;
        Ok(Some(ProfileDetail {
            profile,
            consent,
            merges,
        }))
    }

    /// Undoes a merge (see [`identity::unmerge`]).
    pub async fn unmerge(
        &self,
        merge_id: &str,
        allow_rejoin: bool,
    ) -> Result<identity::unmerge::Unmerged, identity::unmerge::UnmergeError> {
        identity::unmerge::unmerge(&self.store, merge_id, allow_rejoin, store::now_millis()).await
    }

    pub async fn traits_of(&self, profile_id: &str) -> anyhow::Result<Map<String, Value>> {
        let rows = store::profiles::traits_of(&self.store, profile_id).await?;
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
        let before = cursor.map(parse_cursor).transpose()?;
        let rows = store::profiles::events_of(&self.store, profile_id, before, limit + 1).await?;
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
        let rows = store::profiles::merges_of(&self.store, profile_id).await?;
        Ok(rows
            .into_iter()
            .map(|m| Merge {
                id: m.id,
                from_profile: m.from_profile,
                into_profile: m.into_profile,
                reason: m.reason,
                message_id: m.message_id,
                identifier: m.identifier,
                at: rfc3339(m.at),
                undone_at: m.undone_at.map(rfc3339),
            })
            .collect())
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
