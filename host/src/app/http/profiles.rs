//! The Profiles API (admin token): a profile by any of its identifiers (`KIND:VALUE`), its
//! traits, events and merges; erasing it (by an identifier or its id), and the erasures'
//! receipts (`/v1/erasures`).

use axum::extract::{FromRef, Path, Query, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

use super::{AdminAuth, AdminToken, ApiError};
use crate::erasure::{Erasures, Receipt};
use crate::identity::unmerge::{UnmergeError, Unmerged};
use crate::identity::Identifier;
use crate::profiles::{EventPage, InvalidCursor, Profile, Profiles};
use crate::store::erasure::ProfileRef;

#[derive(Clone)]
struct ProfilesState {
    profiles: Profiles,
    erasures: Erasures,
    token: AdminToken,
}

impl FromRef<ProfilesState> for AdminToken {
    fn from_ref(s: &ProfilesState) -> AdminToken {
        s.token.clone()
    }
}

pub fn routes(profiles: Profiles, erasures: Erasures, token: AdminToken) -> Router {
    Router::new()
        .route("/v1/profiles/{id}", get(get_profile).delete(delete_profile))
        .route("/v1/profiles/{id}/traits", get(get_traits))
        .route("/v1/profiles/{id}/events", get(get_events))
        .route("/v1/profiles/{id}/merges", get(get_merges))
        .route("/v1/merges/{merge_id}/unmerge", post(unmerge))
        .route("/v1/erasures", get(list_erasures))
        .route("/v1/erasures/{id}", get(get_erasure))
        .with_state(ProfilesState {
            profiles,
            erasures,
            token,
        })
}

/// `{kind}:{value}` from the path.
fn identifier(id: &str) -> Result<Identifier, ApiError> {
    Identifier::parse(id).ok_or_else(|| {
        ApiError::BadRequest(
            "profile ids are written KIND:VALUE, e.g. email:ada@example.com".into(),
        )
    })
}

fn no_profile(id: &Identifier) -> ApiError {
    ApiError::NotFound(format!("no profile has {id}"))
}

/// The id of the profile holding `{kind}:{value}`.
async fn locate(s: &ProfilesState, id: &str) -> Result<String, ApiError> {
    let id = identifier(id)?;
    s.profiles.find(&id).await?.ok_or_else(|| no_profile(&id))
}

async fn get_profile(
    _: AdminAuth,
    State(s): State<ProfilesState>,
    Path(id): Path<String>,
) -> Result<Json<Profile>, ApiError> {
    let id = identifier(&id)?;
    let profile = s.profiles.get(&id).await?.ok_or_else(|| no_profile(&id))?;
    Ok(Json(profile))
}

async fn get_traits(
    _: AdminAuth,
    State(s): State<ProfilesState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let profile = locate(&s, &id).await?;
    let traits = s.profiles.traits_of(&profile).await?;
    Ok(Json(json!({ "traits": traits })))
}

#[derive(serde::Deserialize)]
struct EventsQuery {
    limit: Option<usize>,
    cursor: Option<String>,
}

async fn get_events(
    _: AdminAuth,
    State(s): State<ProfilesState>,
    Path(id): Path<String>,
    Query(q): Query<EventsQuery>,
) -> Result<Json<EventPage>, ApiError> {
    let profile = locate(&s, &id).await?;
    s.profiles
        .events(&profile, q.limit.unwrap_or(50), q.cursor.as_deref())
        .await
        .map(Json)
        .map_err(|e| match e.downcast_ref::<InvalidCursor>() {
            Some(invalid) => ApiError::BadRequest(invalid.to_string()),
            None => ApiError::Internal(e),
        })
}

async fn get_merges(
    _: AdminAuth,
    State(s): State<ProfilesState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let profile = locate(&s, &id).await?;
    let merges = s.profiles.merges(&profile).await?;
    Ok(Json(json!({ "merges": merges })))
}

/// Erases a profile (`KIND:VALUE`, or the profile's id): in the hub at once, in every
/// destination it was sent to in the background. Answers the receipt as it stands, with
/// `deleted` (the profile id) as before.
async fn delete_profile(
    _: AdminAuth,
    State(s): State<ProfilesState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let target = if id.contains(':') {
        ProfileRef::Identifier(identifier(&id)?)
    } else {
        ProfileRef::Id(id.clone())
    };
    let receipt = s
        .erasures
        .erase(&target)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no profile has {id}")))?;
    Ok(Json(
        json!({ "deleted": receipt.profile_id, "erasure": receipt }),
    ))
}

#[derive(serde::Deserialize)]
struct ListQuery {
    limit: Option<i64>,
}

async fn list_erasures(
    _: AdminAuth,
    State(s): State<ProfilesState>,
    Query(q): Query<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    let erasures = s.erasures.recent(q.limit.unwrap_or(50)).await?;
    Ok(Json(json!({ "erasures": erasures })))
}

async fn get_erasure(
    _: AdminAuth,
    State(s): State<ProfilesState>,
    Path(id): Path<String>,
) -> Result<Json<Receipt>, ApiError> {
    s.erasures
        .receipt(&id)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::NotFound(format!("no erasure {id}")))
}

#[derive(serde::Deserialize)]
struct UnmergeQuery {
    #[serde(default)]
    allow_rejoin: bool,
}

/// `POST /v1/merges/{merge_id}/unmerge[?allow_rejoin=true]`: undoes a merge; 404 for an unknown
/// merge, 409 for one already undone or whose profile is gone.
async fn unmerge(
    _: AdminAuth,
    State(s): State<ProfilesState>,
    Path(merge_id): Path<String>,
    Query(q): Query<UnmergeQuery>,
) -> Result<Json<Unmerged>, ApiError> {
    s.profiles
        .unmerge(&merge_id, q.allow_rejoin)
        .await
        .map(Json)
        .map_err(|e| match e {
            UnmergeError::NotFound(_) => ApiError::NotFound(e.to_string()),
            UnmergeError::AlreadyUndone(_)
            | UnmergeError::HolderGone { .. }
            | UnmergeError::Conflict { .. } => ApiError::Conflict {
                message: e.to_string(),
                run_id: None,
                runs: None,
            },
            UnmergeError::Other(e) => ApiError::Internal(e),
        })
}
