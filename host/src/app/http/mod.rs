//! The hub's HTTP API, as one router: the tracking API ([`tracking`]), the Profiles API
//! ([`profiles`]), the sync and source admin APIs, webhooks, `/healthz` and `/metrics`.
//!
//! Admin routes take the [`AdminAuth`] extractor (the bearer token, checked once) and fail with
//! [`ApiError`] (one mapping of typed errors to status codes).

mod auth;
mod error;
mod profiles;
mod streams;
pub mod tracking;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};

pub use auth::{check_token, AdminAuth, AdminToken};
pub use error::{json_error, ApiError};

use crate::metrics::Metrics;
use crate::profiles::Profiles;
use crate::sources::SourceEngine;
use crate::sync::Engine;

/// What the routes serve from.
pub struct Services {
    pub tracking: tracking::TrackingState,
    pub profiles: Profiles,
    pub erasures: crate::erasure::Erasures,
    pub syncs: Engine,
    pub sources: SourceEngine,
    pub streams: crate::streams::StreamEngine,
    pub metrics: Metrics,
    pub token: AdminToken,
}

/// Every route of the hub.
pub fn router(s: Services) -> Router {
    Router::new()
        .route(
            "/healthz",
            get(|| async { Json(serde_json::json!({"status": "ok"})) }),
        )
        .route("/metrics", get(render_metrics).with_state(s.metrics))
        .merge(profiles::routes(s.profiles, s.erasures, s.token.clone()))
        .merge(streams::routes(s.streams, s.token.clone()))
        .merge(tracking::routes(s.tracking))
        .merge(crate::sync::api::routes(s.syncs, s.token.0.clone()))
        .merge(crate::sources::api::routes(s.sources.clone()))
        .merge(crate::sources::api::admin_routes(s.sources, s.token.0))
}

async fn render_metrics(State(metrics): State<Metrics>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        metrics.render(),
    )
        .into_response()
}
