//! The Profiles API: a profile by any of its identifiers (`KIND:VALUE`), its traits, events and
//! merges (any role; personal data masked below `admin`); erasing it (by an identifier or its
//! id), and the erasures' receipts (`/v1/erasures`) (`admin`).

use axum::extract::{FromRef, Path, Query, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

use super::{Access, AdminAuth, ApiError, Principal, Viewer};
use crate::app::mask::mask_json;
use crate::erasure::{Erasures, Receipt};
use crate::identity::unmerge::{UnmergeError, Unmerged};
use crate::identity::Identifier;
use crate::profiles::{InvalidCursor, Profiles};
use crate::store::erasure::ProfileRef;

#[derive(Clone)]
struct ProfilesState {
    profiles: Profiles,
    erasures: Erasures,
    access: Access,
}

impl FromRef<ProfilesState> for Access {
    fn from_ref(s: &ProfilesState) -> Access {
        s.access.clone()
    }
}

pub fn routes(profiles: Profiles, erasures: Erasures, access: Access) -> Router {
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
            access,
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

/// `v` as JSON, personal data masked unless `who` may see it.
fn shown<T: serde::Serialize>(who: &Principal, v: T) -> Result<Json<Value>, ApiError> {
    let mut v = serde_json::to_value(v).map_err(|e| ApiError::Internal(e.into()))?;
    if !who.sees_pii() {
        mask_json(&mut v);
    }
    Ok(Json(v))
}

/// The id of the profile holding `{kind}:{value}`.
async fn locate(s: &ProfilesState, id: &str) -> Result<String, ApiError> {
    let id = identifier(id)?;
    s.profiles.find(&id).await?.ok_or_else(|| no_profile(&id))
}

async fn get_profile(
    auth: AdminAuth<Viewer>,
    State(s): State<ProfilesState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = identifier(&id)?;
    let profile = s.profiles.get(&id).await?.ok_or_else(|| no_profile(&id))?;
    shown(&auth.who, profile)
}

async fn get_traits(
    auth: AdminAuth<Viewer>,
    State(s): State<ProfilesState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let profile = locate(&s, &id).await?;
    let traits = s.profiles.traits_of(&profile).await?;
    shown(&auth.who, json!({ "traits": traits }))
}

#[derive(serde::Deserialize)]
struct EventsQuery {
    limit: Option<usize>,
    cursor: Option<String>,
}

async fn get_events(
    auth: AdminAuth<Viewer>,
    State(s): State<ProfilesState>,
    Path(id): Path<String>,
    Query(q): Query<EventsQuery>,
) -> Result<Json<Value>, ApiError> {
    let profile = locate(&s, &id).await?;
    let page = s
        .profiles
        .events(&profile, q.limit.unwrap_or(50), q.cursor.as_deref())
        .await
        .map_err(|e| match e.downcast_ref::<InvalidCursor>() {
            Some(invalid) => ApiError::BadRequest(invalid.to_string()),
            None => ApiError::Internal(e),
        })?;
    shown(&auth.who, page)
}

async fn get_merges(
    auth: AdminAuth<Viewer>,
    State(s): State<ProfilesState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let profile = locate(&s, &id).await?;
    let merges = s.profiles.merges(&profile).await?;
    shown(&auth.who, json!({ "merges": merges }))
}

/// Erases a profile (`KIND:VALUE`, or the profile's id): in the hub at once, in every
/// destination it was sent to in the background. Answers the receipt as it stands, with
/// `deleted` (the profile id) as before. The audit log records the profile's id, never the
/// identifier it was found by (that would keep the personal data the erasure removes).
async fn delete_profile(
    auth: AdminAuth,
    State(s): State<ProfilesState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let target = if id.contains(':') {
        ProfileRef::Identifier(identifier(&id)?)
    } else {
        ProfileRef::Id(id.clone())
    };
    let found = match &target {
        ProfileRef::Identifier(i) => s.profiles.find(i).await?,
        ProfileRef::Id(p) => Some(p.clone()),
    };
    let logged = found.map_or_else(|| "profile:?".to_string(), |p| format!("profile:{p}"));
    match s.erasures.erase(&target).await {
        Ok(Some(receipt)) => {
            s.access
                .audit(
                    &auth.who,
                    "profile.erase",
                    &format!("profile:{}", receipt.profile_id),
                    "ok",
                    None,
                )
                .await;
            Ok(Json(
                json!({ "deleted": receipt.profile_id, "erasure": receipt }),
            ))
        }
        Ok(None) => {
            s.access
                .audit(&auth.who, "profile.erase", &logged, "not_found", None)
                .await;
            Err(ApiError::NotFound(format!("no profile has {id}")))
        }
        Err(e) => {
            s.access
                .audit(
                    &auth.who,
                    "profile.erase",
                    &logged,
                    "failed",
                    Some(format!("{e:#}")),
                )
                .await;
            Err(e.into())
        }
    }
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
