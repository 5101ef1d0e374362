//! The admin API of syncs: list, history and dead letters (any role); run, plan, approve
//! removals and replay (`operator`, through [`crate::app::operate`], as the console does).
//! Bearer token; state-changing calls go to the audit log.
//! Errors are [`ApiError`]s: an unknown sync is a 404, a run refused by the lease a 409.

use axum::extract::{FromRef, Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{history, Access, AdminAuth, ApiError, Operator, RunHistory, Viewer};
use crate::sync::{Engine, RunOptions};

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
        .route("/v1/syncs/{name}/runs", get(history::<SyncState>))
        .route("/v1/dead-letters", get(dead_letters))
        .route("/v1/dead-letters/replay", post(replay))
        .with_state(SyncState { engine, access })
}

impl RunHistory for SyncState {
    const PREFIX: &'static str = "/v1/syncs";

    fn known(&self, name: &str) -> anyhow::Result<()> {
        self.engine
            .sync_config(&self.engine.config(), name)
            .map(|_| ())
    }

    async fn runs(&self, name: &str, limit: i64) -> anyhow::Result<Value> {
        Ok(serde_json::to_value(self.engine.runs(name, limit).await?)?)
    }
}

/// The engine's error as an answer; a 409 points at the sync's history.
fn failed(name: &str) -> impl FnOnce(anyhow::Error) -> ApiError + '_ {
    move |e| ApiError::of_run(e, || format!("{}/{name}/runs", SyncState::PREFIX))
}

/// 404 unless `name` is a configured sync.
fn known(s: &SyncState, name: &str) -> Result<(), ApiError> {
    s.known(name).map_err(failed(name))
}

async fn list(_: AdminAuth<Viewer>, State(s): State<SyncState>) -> Result<Json<Value>, ApiError> {
    let config = s.engine.config();
    let mut out = Vec::new();
    for sync in &config.syncs {
        let last = s
            .engine
            .runs(&sync.name, 1)
            .await
            .map_err(failed(&sync.name))?
            .pop();
        out.push(json!({
            "name": sync.name,
            "from": format!("{:?}", sync.from),
            "to": sync.to,
            "mode": format!("{:?}", sync.mode).to_lowercase(),
            "schedule": sync.schedule,
            "last_run": last,
        }));
    }
    Ok(Json(json!({ "syncs": out })))
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
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let action = if q.dry_run {
        "sync.plan"
    } else if q.approve_removals {
        "sync.approve_removals"
    } else {
        "sync.run"
    };
    if let Err(e) = known(&s, &name) {
        s.access
            .audit(&auth.who, action, &name, "not_found", None)
            .await;
        return Err(e);
    }
    let detail = q.full_resync.then(|| "full_resync".to_string());
    let options = RunOptions {
        dry_run: q.dry_run,
        full_resync: q.full_resync,
        approve_removals: q.approve_removals,
    };
    if q.dry_run {
        let report = s
            .engine
            .run(&name, options, None)
            .await
            .map_err(failed(&name))?;
        return Ok((
            StatusCode::OK,
            Json(serde_json::to_value(report).map_err(anyhow::Error::from)?),
        ));
    }
    crate::app::operate::start_run(
        &s.engine, &s.access, &auth.who, &name, options, action, detail,
    )
    .await;
    Ok((
        StatusCode::ACCEPTED,
        Json(
            json!({"sync": name, "status": "started", "runs": format!("{}/{name}/runs", SyncState::PREFIX)}),
        ),
    ))
}

/// `?sync=&limit=` of the dead-letter routes.
#[derive(Deserialize)]
struct DeadLetterQuery {
    #[serde(default = "DeadLetterQuery::default_limit")]
    limit: i64,
    #[serde(default)]
    sync: Option<String>,
}

impl DeadLetterQuery {
    fn default_limit() -> i64 {
        50
    }
}

async fn dead_letters(
    auth: AdminAuth<Viewer>,
    State(s): State<SyncState>,
    Query(q): Query<DeadLetterQuery>,
) -> Result<Json<Value>, ApiError> {
    let sync = q.sync.as_deref();
    let dead = s
        .engine
        .dead_letters(sync, q.limit.clamp(1, 10_000))
        .await
        .map_err(failed(sync.unwrap_or_default()))?;
    let mut body = json!({ "dead_letters": dead });
    if !auth.who.sees_pii() {
        crate::app::mask::mask_json(&mut body);
    }
    Ok(Json(body))
}

/// Marks the sync's dead letters for replay and starts the run that sends them again (the
/// console's "replay" does the same, through [`crate::app::operate::replay`]); 202 with how
/// many, or 200 when there were none.
async fn replay(
    auth: AdminAuth<Operator>,
    State(s): State<SyncState>,
    Query(q): Query<DeadLetterQuery>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let Some(sync) = q.sync else {
        return Err(ApiError::BadRequest(
            "say which sync: /v1/dead-letters/replay?sync=NAME".into(),
        ));
    };
    if let Some(stream) = sync.strip_prefix("stream:") {
        return Err(ApiError::BadRequest(format!(
            "`{sync}` holds a stream's dead letters: replay them with POST /v1/streams/{stream}/replay"
        )));
    }
    let done = crate::app::operate::replay(&s.engine, &s.access, &auth.who, &sync)
        .await
        .map_err(failed(&sync))?;
    let runs = format!("{}/{sync}/runs", SyncState::PREFIX);
    Ok(match done.run_asked {
        Some(_) => (
            StatusCode::ACCEPTED,
            Json(json!({ "sync": sync, "replayed": done.letters, "run": "started", "runs": runs })),
        ),
        None => (StatusCode::OK, Json(json!({ "sync": sync, "replayed": 0 }))),
    })
}
