//! The sources' HTTP routes: the admin API of source runs (admin token), like the one syncs
//! have, and the webhook route of push sources. Errors are [`ApiError`]s.
//!
//! Admin API: `GET /v1/sources` (every plugin source with its streams, schedule and last run),
//! `POST /v1/sources/{name}/run?full_refresh=` (202; the run goes on in the background, poll
//! `/runs`), `GET /v1/sources/{name}/runs?limit=` (history, newest first) and
//! `GET /v1/sources/{name}/cursors` (where each stream's next run starts). An unknown source, or
//! one without a plugin, is a 404; a run asked for while another holds the source's lease is a 409.
//!
//! `POST /v1/webhooks/{source}`: push sources. The raw request (method, path and query,
//! headers, the exact body bytes) goes to [`SourceEngine::webhook`], whose plugin verifies the
//! sender's signature; only a verified delivery is stored.
//!
//! Answers: `200 {"status": "applied", ...}`; `200 {"status": "duplicate"}` for a delivery id
//! this source already applied (nothing stored again: senders such as Stripe and Shopify retry
//! any non-2xx answer for days, so a 409 would only make them redeliver what is already stored);
//! `401` for a missing or wrong signature or a stale timestamp, `400` for a payload the sender
//! does not document, `404` for a source without a plugin; nothing is stored on any of these.

use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{FromRef, Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use tracing::Instrument as _;

use super::{history, Access, AdminAuth, ApiError, Operator, RunHistory, Viewer};
use crate::runs::lease;
use crate::runtime::bindings::WebhookRequest;
use crate::sources::webhook::{Delivered, Refused};
use crate::sources::{RunOptions, SourceEngine};

/// The webhook routes (no admin token: the plugin verifies the sender).
pub fn webhook_routes(engine: SourceEngine) -> Router {
    Router::new()
        .route("/v1/webhooks/{source}", post(webhook))
        .with_state(engine)
}

/// The admin routes of source runs: reading needs any role, running `operator` (see
/// `app::http::auth`).
pub fn admin_routes(engine: SourceEngine, access: Access) -> Router {
    Router::new()
        .route("/v1/sources", get(list))
        .route("/v1/sources/{name}/run", post(run))
        .route("/v1/sources/{name}/runs", get(history::<AdminState>))
        .route("/v1/sources/{name}/cursors", get(cursors))
        .with_state(AdminState { engine, access })
}

#[derive(Clone)]
struct AdminState {
    engine: SourceEngine,
    access: Access,
}

impl FromRef<AdminState> for Access {
    fn from_ref(s: &AdminState) -> Access {
        s.access.clone()
    }
}

impl RunHistory for AdminState {
    const PREFIX: &'static str = "/v1/sources";

    fn known(&self, name: &str) -> anyhow::Result<()> {
        self.engine.source(name).map(|_| ())
    }

    async fn runs(&self, name: &str, limit: i64) -> anyhow::Result<Value> {
        Ok(serde_json::to_value(self.engine.runs(name, limit).await?)?)
    }
}

/// How long `POST .../run` waits for the run to take the source's lease, so that it can answer
/// with the run's id (or a 409). Taking a lease is one statement; this only bounds a stuck store.
const START_WAIT: Duration = Duration::from_secs(5);

fn runs_of(source: &str) -> String {
    format!("{}/{source}/runs", AdminState::PREFIX)
}

/// The engine's error as an answer; a 409 points at the source's history.
fn failed(name: &str) -> impl FnOnce(anyhow::Error) -> ApiError + '_ {
    move |e| ApiError::of_run(e, || runs_of(name))
}

/// 404 unless `name` is a plugin source (the engine's message lists the plugin sources).
fn known(s: &AdminState, name: &str) -> Result<(), ApiError> {
    s.known(name).map_err(failed(name))
}

async fn list(_: AdminAuth<Viewer>, State(s): State<AdminState>) -> Result<Json<Value>, ApiError> {
    let config = s.engine.config();
    let mut out = Vec::new();
    for (name, source) in config.sources.iter().filter(|(_, c)| c.plugin.is_some()) {
        let last = s.engine.runs(name, 1).await.map_err(failed(name))?.pop();
        out.push(json!({
            "name": name,
            "plugin": source.plugin,
            "version": source.version,
            "schedule": source.schedule,
            "streams": source.streams.keys().collect::<Vec<_>>(),
            "last_run": last,
        }));
    }
    Ok(Json(json!({ "sources": out })))
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RunQuery {
    full_refresh: bool,
}

/// The run of the source's lease, when one holds it now (`live`) or held it last (any).
async fn lease_holder(
    engine: &SourceEngine,
    source: &str,
    live: bool,
) -> Result<Option<String>, ApiError> {
    lease::holder(engine.store(), lease::SOURCE, source, live)
        .await
        .map_err(ApiError::Internal)
}

fn conflict(source: &str, run_id: &str) -> ApiError {
    ApiError::Conflict {
        message: format!("source `{source}` is already running (run {run_id} holds its lease); try again when it finishes"),
        run_id: Some(run_id.to_string()),
        runs: Some(runs_of(source)),
    }
}

/// Starts a run and answers 202 once it holds the source's lease (with its id), or 409 when
/// another run holds it. The run itself goes on in the background, since reading a large source
/// takes a while: poll `/runs`.
async fn run(
    auth: AdminAuth<Operator>,
    State(s): State<AdminState>,
    Path(name): Path<String>,
    Query(q): Query<RunQuery>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let answer = start_run(&s, &name, &q).await;
    let outcome = match &answer {
        Ok(_) => "started",
        Err(ApiError::NotFound(_)) => "not_found",
        Err(ApiError::Conflict { .. }) => "conflict",
        Err(_) => "failed",
    };
    let detail = q.full_refresh.then(|| "full_refresh".to_string());
    s.access
        .audit(&auth.who, "source.run", &name, outcome, detail)
        .await;
    answer
}

/// [`run`]'s work, whose answer the audit log records.
async fn start_run(
    s: &AdminState,
    name: &str,
    q: &RunQuery,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    known(s, name)?;
    let name = name.to_string();
    let span = tracing::info_span!("source_api_run", source = %name, full_refresh = q.full_refresh);
    async {
        // A run going (here, on another hub, or from the CLI) answers at once; the engine's own
        // lease check below catches one that starts in between.
        let previous = lease_holder(&s.engine, &name, false).await?;
        if let Some(holder) = lease_holder(&s.engine, &name, true).await? {
            return Err(conflict(&name, &holder));
        }
        let (tx, mut finished) = tokio::sync::oneshot::channel();
        let engine = s.engine.clone();
        let source = name.clone();
        let options = RunOptions {
            full_refresh: q.full_refresh,
        };
        tokio::spawn(
            async move {
                let result = engine.run(&source, options, None).await;
                match &result {
                    Ok(r) if r.status.needs_attention() => tracing::warn!(
                        "run requested through the API {}: {}",
                        r.status,
                        r.error.as_deref().unwrap_or_default()
                    ),
                    Ok(_) => {}
                    Err(e) => tracing::warn!("run requested through the API did not start: {e:#}"),
                }
                // The request may have been answered already; then nobody listens.
                let _ = tx.send(result);
            }
            .instrument(tracing::Span::current()),
        );
        let accepted = |run_id: Option<&str>, status: &str| {
            (
                StatusCode::ACCEPTED,
                Json(json!({
                    "source": name,
                    "run_id": run_id,
                    "status": status,
                    "full_refresh": q.full_refresh,
                    "runs": runs_of(&name),
                })),
            )
        };
        let deadline = Instant::now() + START_WAIT;
        loop {
            tokio::select! {
                result = &mut finished => {
                    return match result {
                        // Already over (a small source): still 202, with how it ended.
                        Ok(Ok(report)) => Ok(accepted(Some(&report.id), report.status.as_str())),
                        Ok(Err(e)) => Err(failed(&name)(e)),
                        Err(_) => Err(ApiError::Failed(
                            "the run stopped unexpectedly; see the hub's log".into(),
                        )),
                    };
                }
                _ = tokio::time::sleep(Duration::from_millis(10)) => {}
            }
            // The lease taken by a run other than the one that held it before is this run (a run
            // started on another hub in these milliseconds would make this one fail with a
            // conflict, logged above; the id answered is then the run actually going).
            match lease::holder(s.engine.store(), lease::SOURCE, &name, true).await {
                Ok(Some(id)) if previous.as_deref() != Some(id.as_str()) => {
                    return Ok(accepted(Some(&id), "running"))
                }
                Ok(_) => {}
                Err(e) => tracing::warn!("reading the source's lease: {e:#}"),
            }
            if Instant::now() >= deadline {
                return Ok(accepted(None, "starting"));
            }
        }
    }
    .instrument(span)
    .await
}

async fn cursors(
    _: AdminAuth<Viewer>,
    State(s): State<AdminState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    known(&s, &name)?;
    let cursors: Vec<_> = s
        .engine
        .cursors(&name)
        .await
        .map_err(failed(&name))?
        .into_iter()
        .map(|(stream, cursor, done)| json!({"stream": stream, "cursor": cursor, "done": done}))
        .collect();
    Ok(Json(json!({ "source": name, "cursors": cursors })))
}

async fn webhook(
    State(engine): State<SourceEngine>,
    Path(source): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let request = WebhookRequest {
        method: method.to_string(),
        path: uri
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_else(|| uri.path().to_string()),
        headers: headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_ascii_lowercase(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body: body.to_vec(),
    };
    match engine.webhook(&source, request).await {
        Ok(Delivered::Applied {
            delivery_id,
            applied,
        }) => Ok(Json(json!({
            "status": "applied",
            "delivery_id": delivery_id,
            "records": applied.records,
            "events": applied.events,
            "skipped": applied.skipped + applied.suppressed,
        }))),
        Ok(Delivered::Duplicate { delivery_id }) => Ok(Json(json!({
            "status": "duplicate",
            "delivery_id": delivery_id,
            "message": "this delivery was already applied; nothing was stored again",
        }))),
        Err(refused) => Err(match refused {
            Refused::UnknownSource(_) => ApiError::NotFound(refused.to_string()),
            Refused::Unavailable { .. } => ApiError::Unavailable(refused.to_string()),
            Refused::Unauthorized(reason) => ApiError::Unauthenticated(reason),
            Refused::BadRequest(reason) => ApiError::BadRequest(reason),
            // Logged by the engine already, with the cause.
            Refused::Plugin(_) | Refused::Store(_) => ApiError::Failed(refused.to_string()),
        }),
    }
}
