//! The hub's HTTP server: the tracking API, the Profiles API (admin token), `/healthz` and
//! `/metrics`.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};

use crate::config::Config;
use crate::identity::{Identifier, IdentityRules};
use crate::ingest::message::Limits;
use crate::ingest::writer::Ingestor;
use crate::ingest::{self, IngestState};
use crate::metrics::Metrics;
use crate::profiles::Profiles;
use crate::store::Store;

#[derive(Clone)]
struct AdminState {
    profiles: Profiles,
    token: Option<Arc<str>>,
    metrics: Metrics,
}

/// Everything the server needs, built from the config.
pub struct Hub {
    pub store: Store,
    pub metrics: Metrics,
    pub router: Router,
    /// Runs syncs; the scheduler and the admin API share it.
    pub engine: crate::sync::Engine,
    /// Runs source plugins and applies their webhooks; the scheduler and the webhook route share it.
    pub sources: crate::sources::SourceEngine,
}

impl Hub {
    pub async fn build(config: &Config) -> anyhow::Result<Hub> {
        let store = config.hub.open_store().await?;
        let metrics = Metrics::new();
        let runtime = crate::runtime::Runtime::new(config.hub.plugin_limits.limits()?)?;
        let registry = Arc::new(crate::registry::Registry::open(
            &config.hub.plugins_dir,
            runtime,
        )?);
        let sources = crate::sources::SourceEngine::new(
            store.clone(),
            registry.clone(),
            Arc::new(config.clone()),
        )
        .with_metrics(metrics.clone());
        let engine = crate::sync::Engine::new(store.clone(), registry, Arc::new(config.clone()))
            .with_metrics(metrics.clone());
        let rules = IdentityRules::new(&config.identity);
        let ingestor = Ingestor::start(
            store.clone(),
            rules,
            config.hub.ingest_queue,
            metrics.clone(),
        );
        let write_keys: Arc<HashMap<String, String>> =
            Arc::new(config.write_keys()?.into_iter().collect());
        if write_keys.is_empty() {
            tracing::warn!("no [sources.*] write_keys configured: the tracking API will answer 401 to everything");
        }
        let token = config.admin_token()?;
        if token.is_none() {
            tracing::warn!("no [hub] admin_token: the Profiles API is disabled");
        }
        let origins = config
            .sources
            .iter()
            .map(|(name, source)| (name.clone(), source.allowed_origins.clone()))
            .collect();
        let ingest = ingest::routes(IngestState {
            ingestor,
            origins: Arc::new(ingest::cors::OriginPolicy::new(origins, write_keys.clone())),
            write_keys,
            limits: Arc::new(Limits::default()),
            metrics: metrics.clone(),
            proxies: Arc::new(config.hub.trusted_proxies.clone()),
        });
        let admin = AdminState {
            profiles: Profiles::new(store.clone()),
            token: token.map(Arc::from),
            metrics: metrics.clone(),
        };
        let router = Router::new()
            .route(
                "/healthz",
                get(|| async { Json(serde_json::json!({"status": "ok"})) }),
            )
            .route("/metrics", get(render_metrics))
            .route("/v1/profiles/{id}", get(get_profile).delete(delete_profile))
            .route("/v1/profiles/{id}/traits", get(get_traits))
            .route("/v1/profiles/{id}/events", get(get_events))
            .route("/v1/profiles/{id}/merges", get(get_merges))
            .with_state(admin.clone())
            .merge(ingest)
            .merge(crate::sync::api::routes(
                engine.clone(),
                admin.token.clone(),
            ))
            .merge(crate::sources::api::routes(sources.clone()))
            .merge(crate::sources::api::admin_routes(
                sources.clone(),
                admin.token.clone(),
            ));
        Ok(Hub {
            store,
            metrics,
            router,
            engine,
            sources,
        })
    }
}

async fn render_metrics(State(admin): State<AdminState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        admin.metrics.render(),
    )
        .into_response()
}

pub(crate) fn json_error(status: StatusCode, message: &str) -> Response {
    (status, Json(serde_json::json!({"error": message}))).into_response()
}

/// Checks the bearer token and parses `{kind}:{value}`.
fn authorise(admin: &AdminState, headers: &HeaderMap, id: &str) -> Result<Identifier, Response> {
    check_token(admin.token.as_deref(), headers)?;
    Identifier::parse(id).ok_or_else(|| {
        json_error(
            StatusCode::BAD_REQUEST,
            "profile ids are written KIND:VALUE, e.g. email:ada@example.com",
        )
    })
}

/// The admin bearer token check shared by every admin route.
pub(crate) fn check_token(token: Option<&str>, headers: &HeaderMap) -> Result<(), Response> {
    let Some(token) = token else {
        return Err(json_error(
            StatusCode::FORBIDDEN,
            "the admin API is disabled: set [hub] admin_token",
        ));
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if !given.is_some_and(|g| constant_time_eq(g.as_bytes(), token.as_bytes())) {
        return Err(json_error(
            StatusCode::UNAUTHORIZED,
            "missing or wrong admin token (Authorization: Bearer ...)",
        ));
    }
    Ok(())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn internal(e: anyhow::Error) -> Response {
    tracing::error!("profiles API: {e:#}");
    json_error(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal error; see the hub's log",
    )
}

fn not_found(id: &Identifier) -> Response {
    json_error(StatusCode::NOT_FOUND, &format!("no profile has {id}"))
}

/// Authorises the request and finds the profile holding `{kind}:{value}`: the profile id, or
/// the response to send (401/400/404/500).
async fn locate(admin: &AdminState, headers: &HeaderMap, id: &str) -> Result<String, Response> {
    let id = authorise(admin, headers, id)?;
    match admin.profiles.find(&id).await {
        Ok(Some(profile)) => Ok(profile),
        Ok(None) => Err(not_found(&id)),
        Err(e) => Err(internal(e)),
    }
}

async fn get_profile(
    State(admin): State<AdminState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let id = match authorise(&admin, &headers, &id) {
        Ok(id) => id,
        Err(r) => return r,
    };
    match admin.profiles.get(&id).await {
        Ok(Some(p)) => Json(p).into_response(),
        Ok(None) => not_found(&id),
        Err(e) => internal(e),
    }
}

async fn get_traits(
    State(admin): State<AdminState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let profile = match locate(&admin, &headers, &id).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    match admin.profiles.traits_of(&profile).await {
        Ok(t) => Json(serde_json::json!({"traits": t})).into_response(),
        Err(e) => internal(e),
    }
}

#[derive(serde::Deserialize)]
struct EventsQuery {
    limit: Option<usize>,
    cursor: Option<String>,
}

async fn get_events(
    State(admin): State<AdminState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<EventsQuery>,
) -> Response {
    let profile = match locate(&admin, &headers, &id).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    match admin
        .profiles
        .events(&profile, q.limit.unwrap_or(50), q.cursor.as_deref())
        .await
    {
        Ok(page) => Json(page).into_response(),
        Err(e) if e.to_string().contains("invalid cursor") => {
            json_error(StatusCode::BAD_REQUEST, "invalid cursor")
        }
        Err(e) => internal(e),
    }
}

async fn get_merges(
    State(admin): State<AdminState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let profile = match locate(&admin, &headers, &id).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    match admin.profiles.merges(&profile).await {
        Ok(m) => Json(serde_json::json!({"merges": m})).into_response(),
        Err(e) => internal(e),
    }
}

async fn delete_profile(
    State(admin): State<AdminState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let id = match authorise(&admin, &headers, &id) {
        Ok(id) => id,
        Err(r) => return r,
    };
    match admin.profiles.delete(&id).await {
        Ok(Some(p)) => Json(serde_json::json!({"deleted": p})).into_response(),
        Ok(None) => not_found(&id),
        Err(e) => internal(e),
    }
}
