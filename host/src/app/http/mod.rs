//! The hub's HTTP API, as one router: the tracking API ([`tracking`]), the Profiles API
//! ([`profiles`]), the sync and source admin APIs, webhooks, `/healthz` and `/metrics`.
//!
//! Admin routes take the [`AdminAuth`] extractor (the bearer token and the role the route needs,
//! checked once) and fail with [`ApiError`] (one mapping of typed errors to status codes).
//! State-changing ones write the audit log ([`audit`]).

mod audit;
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

pub use auth::{Access, Admin, AdminAuth, Need, Operator, Principal, Viewer};
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
    pub access: Access,
}

/// Every route of the hub.
pub fn router(s: Services) -> Router {
    Router::new()
        .route(
            "/healthz",
            get(|| async { Json(serde_json::json!({"status": "ok"})) }),
        )
        .route("/metrics", get(render_metrics).with_state(s.metrics))
        .merge(profiles::routes(s.profiles, s.erasures, s.access.clone()))
        .merge(streams::routes(s.streams, s.access.clone()))
        .merge(tracking::routes(s.tracking))
        .merge(audit::routes(s.access.clone()))
        .merge(crate::sync::api::routes(s.syncs, s.access.clone()))
        .merge(crate::sources::api::routes(s.sources.clone()))
        .merge(crate::sources::api::admin_routes(s.sources, s.access))
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
