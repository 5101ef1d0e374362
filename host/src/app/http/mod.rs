//! The hub's HTTP API, as one router: the tracking API ([`tracking`]), the Profiles API
//! ([`profiles`]), the sync and source admin APIs ([`syncs`], [`sources`]), webhooks, `/healthz` and `/metrics`.
//!
//! Admin routes take the [`AdminAuth`] extractor (the bearer token and the role the route needs,
//! checked once) and fail with [`ApiError`] (one mapping of typed errors to status codes).
//! State-changing ones write the audit log ([`audit`]).

mod audit;
mod auth;
mod error;
mod profiles;
mod sources;
mod streams;
mod syncs;
pub mod tracking;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};

pub use auth::{Access, Admin, AdminAuth, Need, Operator, Principal, Viewer};
pub use error::ApiError;

use crate::metrics::Metrics;
use crate::profiles::Profiles;
use crate::sources::SourceEngine;
use crate::sync::Engine;

/// `?limit=` of the run-history routes (syncs and sources): how many runs, newest first.
#[derive(serde::Deserialize)]
struct HistoryQuery {
    #[serde(default = "HistoryQuery::default_limit")]
    limit: i64,
}

impl HistoryQuery {
    fn default_limit() -> i64 {
        50
    }

    /// The limit asked for, kept within 1..=1000 so one request cannot read a whole history.
    fn limit(&self) -> i64 {
        self.limit.clamp(1, 1000)
    }
}

/// What the run-history route needs of a run engine's admin state; syncs and sources answer
/// `GET /v1/{syncs,sources}/{name}/runs` with the one handler [`history`].
trait RunHistory: Clone + Send + Sync + 'static {
    /// The routes' prefix: `/v1/syncs` or `/v1/sources`.
    const PREFIX: &'static str;
    /// Fails with the engine's `RunError::NotFound` unless `name` is one of its things.
    fn known(&self, name: &str) -> anyhow::Result<()>;
    /// The newest `limit` runs of `name`, as the API shows them.
    fn runs(
        &self,
        name: &str,
        limit: i64,
    ) -> impl std::future::Future<Output = anyhow::Result<serde_json::Value>> + Send;
}

/// `GET {PREFIX}/{name}/runs?limit=`: the history, newest first; 404 for an unknown name.
async fn history<E: RunHistory>(
    _: AdminAuth<Viewer>,
    State(engine): State<E>,
    axum::extract::Path(name): axum::extract::Path<String>,
    axum::extract::Query(q): axum::extract::Query<HistoryQuery>,
) -> Result<Json<serde_json::Value>, ApiError>
where
    Access: axum::extract::FromRef<E>,
{
    let failed = |e| ApiError::of_run(e, || format!("{}/{name}/runs", E::PREFIX));
    engine.known(&name).map_err(failed)?;
    let runs = engine.runs(&name, q.limit()).await.map_err(failed)?;
    Ok(Json(serde_json::json!({ "runs": runs })))
}

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
        .merge(syncs::routes(s.syncs, s.access.clone()))
        .merge(sources::webhook_routes(s.sources.clone()))
        .merge(sources::admin_routes(s.sources, s.access))
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
