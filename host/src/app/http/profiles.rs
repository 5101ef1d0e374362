//! The Profiles API: a profile by any of its identifiers (`KIND:VALUE`), its traits, events and
//! merges (any role; personal data masked below `admin`), and erasing it (`admin`).

use axum::extract::{FromRef, Path, Query, State};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

use super::{Access, AdminAuth, ApiError, Principal, Viewer};
use crate::app::mask::mask_json;
use crate::identity::Identifier;
use crate::profiles::{InvalidCursor, Profiles};

#[derive(Clone)]
struct ProfilesState {
    profiles: Profiles,
    access: Access,
}

impl FromRef<ProfilesState> for Access {
    fn from_ref(s: &ProfilesState) -> Access {
        s.access.clone()
    }
}

pub fn routes(profiles: Profiles, access: Access) -> Router {
    Router::new()
        .route("/v1/profiles/{id}", get(get_profile).delete(delete_profile))
        .route("/v1/profiles/{id}/traits", get(get_traits))
        .route("/v1/profiles/{id}/events", get(get_events))
        .route("/v1/profiles/{id}/merges", get(get_merges))
        .with_state(ProfilesState { profiles, access })
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

/// Erases the profile; the audit log records the profile's id, not the identifier it was found
/// by (that would keep the personal data the erasure removes).
async fn delete_profile(
    auth: AdminAuth,
    State(s): State<ProfilesState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = identifier(&id)?;
    let Some(profile) = s.profiles.find(&id).await? else {
        s.access
            .audit(
                &auth.who,
                "profile.erase",
                &format!("{}:…", id.kind),
                "not_found",
                None,
            )
            .await;
        return Err(no_profile(&id));
    };
    let target = format!("profile:{profile}");
    match s.profiles.delete(&id).await {
        Ok(Some(erased)) => {
            s.access
                .audit(&auth.who, "profile.erase", &target, "ok", None)
                .await;
            Ok(Json(json!({ "deleted": erased })))
        }
        Ok(None) => {
            s.access
                .audit(&auth.who, "profile.erase", &target, "not_found", None)
                .await;
            Err(no_profile(&id))
        }
        Err(e) => {
            s.access
                .audit(
                    &auth.who,
                    "profile.erase",
                    &target,
                    "failed",
                    Some(format!("{e:#}")),
                )
                .await;
            Err(ApiError::Internal(e))
        }
    }
}
