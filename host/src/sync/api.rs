//! The admin API of syncs: list, history and dead letters (any role); run, plan, approve
//! removals and replay (`operator`). Bearer token; state-changing calls go to the audit log.

use axum::extract::{FromRef, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;

use super::{Engine, RunOptions};
use crate::app::http::{json_error, Access, AdminAuth, Operator, Viewer};
use crate::runs::RunError;

#[derive(Clone)]
struct SyncState {
    engine: Engine,
    access: Access,
}

impl FromRef<SyncState> for Access {
    fn from_ref(s: &SyncState) -> Access {
        s.access.clone()
    }
}

pub fn routes(engine: Engine, access: Access) -> Router {
    Router::new()
        .route("/v1/syncs", get(list))
        .route("/v1/syncs/{name}/run", post(run))
        .route("/v1/syncs/{name}/runs", get(runs))
        .route("/v1/dead-letters", get(dead_letters))
        .route("/v1/dead-letters/replay", post(replay))
        .with_state(SyncState { engine, access })
}

/// 404 for an unknown sync, 409 for a run refused because another holds the lease, else 500.
fn failed(e: anyhow::Error) -> Response {
    let text = format!("{e:#}");
    match RunError::of(&e) {
        Some(RunError::NotFound(_)) => json_error(StatusCode::NOT_FOUND, &text),
        Some(RunError::AlreadyRunning { .. }) => json_error(StatusCode::CONFLICT, &text),
        None => {
            tracing::error!("sync API: {text}");
            json_error(StatusCode::INTERNAL_SERVER_ERROR, &text)
        }
    }
}

async fn list(_: AdminAuth<Viewer>, State(s): State<SyncState>) -> Response {
    let config = s.engine.config();
    let mut out = Vec::new();
    for sync in &config.syncs {
        let last = match s.engine.runs(&sync.name, 1).await {
            Ok(mut r) => r.pop(),
            Err(e) => return failed(e),
        };
        out.push(serde_json::json!({
            "name": sync.name,
            "from": format!("{:?}", sync.from),
            "to": sync.to,
            "mode": format!("{:?}", sync.mode).to_lowercase(),
            "schedule": sync.schedule,
            "last_run": last,
        }));
    }
    Json(serde_json::json!({ "syncs": out })).into_response()
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RunQuery {
    dry_run: bool,
    full_resync: bool,
    approve_removals: bool,
}

/// A dry run answers with the plan; a real run answers 202 at once and runs in the background
/// (poll `/runs`), since delivering a large audience can take a while.
async fn run(
    auth: AdminAuth<Operator>,
    State(s): State<SyncState>,
    Path(name): Path<String>,
    Query(q): Query<RunQuery>,
) -> Response {
    let action = if q.dry_run {
        "sync.plan"
    } else if q.approve_removals {
        "sync.approve_removals"
    } else {
        "sync.run"
    };
    if let Err(e) = s.engine.sync_config(&s.engine.config(), &name) {
        s.access
            .audit(&auth.who, action, &name, "not_found", None)
            .await;
        return failed(e);
    }
    let detail = q.full_resync.then(|| "full_resync".to_string());
    let options = RunOptions {
        dry_run: q.dry_run,
        full_resync: q.full_resync,
        approve_removals: q.approve_removals,
    };
    if q.dry_run {
        return match s.engine.run(&name, options, None).await {
            Ok(report) => Json(report).into_response(),
            Err(e) => failed(e),
        };
    }
    s.access
        .audit(&auth.who, action, &name, "started", detail)
        .await;
    let engine = s.engine.clone();
    let sync = name.clone();
    tokio::spawn(async move {
        if let Err(e) = engine.run(&sync, options, None).await {
            tracing::warn!(sync = %sync, "run requested through the API failed: {e:#}");
        }
    });
    (
        StatusCode::ACCEPTED,
        Json(serde_json::json!({"sync": name, "status": "started", "runs": format!("/v1/syncs/{name}/runs")})),
    )
        .into_response()
}

#[derive(Deserialize)]
struct Limit {
    #[serde(default = "default_limit")]
    limit: i64,
    #[serde(default)]
    sync: Option<String>,
}

fn default_limit() -> i64 {
    50
}

async fn runs(
    _: AdminAuth<Viewer>,
    State(s): State<SyncState>,
    Path(name): Path<String>,
    Query(q): Query<Limit>,
) -> Response {
    if let Err(e) = s.engine.sync_config(&s.engine.config(), &name) {
        return failed(e);
    }
    match s.engine.runs(&name, q.limit.clamp(1, 1000)).await {
        Ok(runs) => Json(serde_json::json!({ "runs": runs })).into_response(),
        Err(e) => failed(e),
    }
}

async fn dead_letters(
    auth: AdminAuth<Viewer>,
    State(s): State<SyncState>,
    Query(q): Query<Limit>,
) -> Response {
    match s
        .engine
        .dead_letters(q.sync.as_deref(), q.limit.clamp(1, 10_000))
        .await
    {
        Ok(d) => {
            let mut v = serde_json::json!({ "dead_letters": d });
            if !auth.who.sees_pii() {
                crate::app::mask::mask_json(&mut v);
            }
            Json(v).into_response()
        }
        Err(e) => failed(e),
    }
}

async fn replay(
    auth: AdminAuth<Operator>,
    State(s): State<SyncState>,
    Query(q): Query<Limit>,
) -> Response {
    let Some(sync) = q.sync else {
        return json_error(
            StatusCode::BAD_REQUEST,
            "say which sync: /v1/dead-letters/replay?sync=NAME",
        );
    };
    match s.engine.replay(&sync).await {
        Ok(n) => {
            s.access
                .audit(
                    &auth.who,
                    "dead_letters.replay",
                    &sync,
                    "ok",
                    Some(format!("{n} replayed")),
                )
                .await;
            Json(serde_json::json!({ "sync": sync, "replayed": n })).into_response()
        }
        Err(e) => {
            let outcome = match RunError::of(&e) {
                Some(RunError::NotFound(_)) => "not_found",
                Some(RunError::AlreadyRunning { .. }) => "conflict",
                None => "failed",
            };
            s.access
                .audit(
                    &auth.who,
                    "dead_letters.replay",
                    &sync,
                    outcome,
                    Some(format!("{e:#}")),
                )
                .await;
            failed(e)
        }
    }
}
