//! The sources' HTTP routes: the admin API of source runs (Bearer admin token), like the one
//! syncs have, and the webhook route of push sources.
//!
//! Admin API: `GET /v1/sources` (every plugin source with its streams, schedule and last run),
//! `POST /v1/sources/{name}/run?full_refresh=` (202; the run goes on in the background, poll
//! `/runs`), `GET /v1/sources/{name}/runs?limit=` (history, newest first) and
//! `GET /v1/sources/{name}/cursors` (where each stream's next run starts). An unknown source, or
//! one without a plugin, is a 404; a run asked for while another holds the source's lease is a 409.
//!
//! `POST /v1/webhooks/{source}`: push sources. The raw request (method, path and query,
//! headers, the exact body bytes) goes to the source plugin's `webhook` export, which verifies
//! the sender's signature; only a verified delivery is stored, through the same identity
//! resolution and page commit as pull runs.
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
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use tracing::Instrument as _;

use super::{RunOptions, SourceEngine};
use crate::app::http::{json_error, Access, AdminAuth, Operator, Viewer};
use crate::runs::lease;
use crate::runs::RunError;
use crate::runtime::bindings::{SourceRecord, WebhookError, WebhookRequest};
use crate::store::now_millis;

/// The webhook routes, merged into the hub's router.
pub fn routes(engine: SourceEngine) -> Router {
    Router::new()
        .route("/v1/webhooks/{source}", post(webhook))
        .with_state(engine)
}

/// The admin routes of source runs, merged into the hub's router: reading needs any role,
/// running `operator` (see `app::http::auth`).
pub fn admin_routes(engine: SourceEngine, access: Access) -> Router {
    Router::new()
        .route("/v1/sources", get(list))
        .route("/v1/sources/{name}/run", post(run))
        .route("/v1/sources/{name}/runs", get(runs))
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

/// How long `POST .../run` waits for the run to take the source's lease, so that it can answer
/// with the run's id (or a 409). Taking a lease is one statement; this only bounds a stuck store.
const START_WAIT: Duration = Duration::from_secs(5);

/// 404 for an unknown source or one without a plugin (the engine's message lists the plugin
/// sources), 409 for a run refused because another one holds the lease, else 500.
fn failed(e: anyhow::Error) -> Response {
    let text = format!("{e:#}");
    match RunError::of(&e) {
        Some(RunError::NotFound(_)) => json_error(StatusCode::NOT_FOUND, &text),
        Some(RunError::AlreadyRunning { .. }) => json_error(StatusCode::CONFLICT, &text),
        None => {
            tracing::error!("sources API: {text}");
            json_error(StatusCode::INTERNAL_SERVER_ERROR, &text)
        }
    }
}

/// Checks that `name` is a plugin source: the response to send otherwise.
fn known(s: &AdminState, name: &str) -> Result<(), Response> {
    s.engine.source(name).map(|_| ()).map_err(failed)
}

async fn list(_: AdminAuth<Viewer>, State(s): State<AdminState>) -> Response {
    let config = s.engine.config();
    let mut out = Vec::new();
    for (name, source) in config.sources.iter().filter(|(_, c)| c.plugin.is_some()) {
        let last = match s.engine.runs(name, 1).await {
            Ok(mut r) => r.pop(),
            Err(e) => return failed(e),
        };
        out.push(serde_json::json!({
            "name": name,
            "plugin": source.plugin,
            "version": source.version,
            "schedule": source.schedule,
            "streams": source.streams.keys().collect::<Vec<_>>(),
            "last_run": last,
        }));
    }
    Json(serde_json::json!({ "sources": out })).into_response()
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
) -> anyhow::Result<Option<String>> {
    lease::holder(engine.store(), lease::SOURCE, source, live).await
}

fn conflict(source: &str, run_id: &str) -> Response {
    (
        StatusCode::CONFLICT,
        Json(serde_json::json!({
            "error": format!("source `{source}` is already running (run {run_id} holds its lease); try again when it finishes"),
            "run_id": run_id,
            "runs": format!("/v1/sources/{source}/runs"),
        })),
    )
        .into_response()
}

/// Starts a run and answers 202 once it holds the source's lease (with its id), or 409 when
/// another run holds it. The run itself goes on in the background, since reading a large source
/// takes a while: poll `/runs`.
async fn run(
    auth: AdminAuth<Operator>,
    State(s): State<AdminState>,
    Path(name): Path<String>,
    Query(q): Query<RunQuery>,
) -> Response {
    let response = start_run(&s, &name, &q).await;
    let outcome = match response.status() {
        StatusCode::ACCEPTED => "started",
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::CONFLICT => "conflict",
        _ => "failed",
    };
    let detail = q.full_refresh.then(|| "full_refresh".to_string());
    s.access
        .audit(&auth.who, "source.run", &name, outcome, detail)
        .await;
    response
}

/// [`run`]'s work, whose answer the audit log records.
async fn start_run(s: &AdminState, name: &str, q: &RunQuery) -> Response {
    if let Err(r) = known(s, name) {
        return r;
    }
    let name = name.to_string();
    let span = tracing::info_span!("source_api_run", source = %name, full_refresh = q.full_refresh);
    async {
        // A run going (here, on another hub, or from the CLI) answers at once; the engine's own
        // lease check below catches one that starts in between.
        let previous = match lease_holder(&s.engine, &name, false).await {
            Ok(p) => p,
            Err(e) => return failed(e),
        };
        match lease_holder(&s.engine, &name, true).await {
            Ok(Some(holder)) => return conflict(&name, &holder),
            Ok(None) => {}
            Err(e) => return failed(e),
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
                Json(serde_json::json!({
                    "source": name,
                    "run_id": run_id,
                    "status": status,
                    "full_refresh": q.full_refresh,
                    "runs": format!("/v1/sources/{name}/runs"),
                })),
            )
                .into_response()
        };
        let deadline = Instant::now() + START_WAIT;
        loop {
            tokio::select! {
                result = &mut finished => {
                    return match result {
                        // Already over (a small source): still 202, with how it ended.
                        Ok(Ok(report)) => accepted(Some(&report.id), report.status.as_str()),
                        Ok(Err(e)) => failed(e),
                        Err(_) => json_error(
                            StatusCode::INTERNAL_SERVER_ERROR,
                            "the run stopped unexpectedly; see the hub's log",
                        ),
                    };
                }
                _ = tokio::time::sleep(Duration::from_millis(10)) => {}
            }
            // The lease taken by a run other than the one that held it before is this run (a run
            // started on another hub in these milliseconds would make this one fail with a
            // conflict, logged above; the id answered is then the run actually going).
            match lease_holder(&s.engine, &name, true).await {
                Ok(Some(id)) if previous.as_deref() != Some(id.as_str()) => {
                    return accepted(Some(&id), "running")
                }
                Ok(_) => {}
                Err(e) => tracing::warn!("reading the source's lease: {e:#}"),
            }
            if Instant::now() >= deadline {
                return accepted(None, "starting");
            }
        }
    }
    .instrument(span)
    .await
}

#[derive(Deserialize)]
struct Limit {
    #[serde(default = "default_limit")]
    limit: i64,
}

fn default_limit() -> i64 {
    50
}

async fn runs(
    _: AdminAuth<Viewer>,
    State(s): State<AdminState>,
    Path(name): Path<String>,
    Query(q): Query<Limit>,
) -> Response {
    if let Err(r) = known(&s, &name) {
        return r;
    }
    match s.engine.runs(&name, q.limit.clamp(1, 1000)).await {
        Ok(runs) => Json(serde_json::json!({ "runs": runs })).into_response(),
        Err(e) => failed(e),
    }
}

async fn cursors(
    _: AdminAuth<Viewer>,
    State(s): State<AdminState>,
    Path(name): Path<String>,
) -> Response {
    if let Err(r) = known(&s, &name) {
        return r;
    }
    match s.engine.cursors(&name).await {
        Ok(list) => {
            let cursors: Vec<_> = list
                .into_iter()
                .map(|(stream, cursor, done)| {
                    serde_json::json!({"stream": stream, "cursor": cursor, "done": done})
                })
                .collect();
            Json(serde_json::json!({ "source": name, "cursors": cursors })).into_response()
        }
        Err(e) => failed(e),
    }
}

async fn webhook(
    State(engine): State<SourceEngine>,
    Path(source): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let span = tracing::info_span!("webhook", source = %source, bytes = body.len());
    let outcome = async {
        if engine.source(&source).is_err() {
            return (
                "unknown",
                json_error(
                    StatusCode::NOT_FOUND,
                    &format!("no source `{source}` with a plugin is configured"),
                ),
            );
        }
        let instance = match engine.instance(&source).await {
            Ok(i) => i,
            Err(e) => {
                tracing::error!("webhook for source `{source}`: {e:#}");
                return (
                    "error",
                    json_error(
                        StatusCode::SERVICE_UNAVAILABLE,
                        &format!("source `{source}` cannot take webhooks now: {e:#}"),
                    ),
                );
            }
        };
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
        let delivery = match instance.webhook(&request).await {
            Ok(Ok(d)) => d,
            Ok(Err(WebhookError::Unauthorized(reason))) => {
                tracing::warn!("webhook refused: {reason}");
                return (
                    "unauthorized",
                    json_error(StatusCode::UNAUTHORIZED, &reason),
                );
            }
            Ok(Err(WebhookError::BadRequest(reason))) => {
                tracing::warn!("webhook refused: {reason}");
                return ("bad_request", json_error(StatusCode::BAD_REQUEST, &reason));
            }
            Err(e) => {
                tracing::error!("webhook: {e}");
                return (
                    "error",
                    json_error(StatusCode::INTERNAL_SERVER_ERROR, &format!("{e}")),
                );
            }
        };
        match store(
            &engine,
            &source,
            delivery.delivery_id.as_deref(),
            &delivery.records,
        )
        .await
        {
            Ok(Some(applied)) => {
                if let Some(m) = &engine.metrics {
                    let read = delivery.records.len() as u64;
                    m.sources
                        .page(&source, "webhook", read, applied.records, applied.events);
                }
                (
                    "applied",
                    Json(serde_json::json!({
                        "status": "applied",
                        "delivery_id": delivery.delivery_id,
                        "records": applied.records,
                        "events": applied.events,
                        "skipped": applied.skipped + applied.suppressed,
                    }))
                    .into_response(),
                )
            }
            Ok(None) => (
                "duplicate",
                Json(serde_json::json!({
                    "status": "duplicate",
                    "delivery_id": delivery.delivery_id,
                    "message": "this delivery was already applied; nothing was stored again",
                }))
                .into_response(),
            ),
            Err(e) => {
                tracing::error!("storing a webhook delivery: {e:#}");
                (
                    "error",
                    json_error(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "storing the delivery failed; see the hub's log (the sender may retry)",
                    ),
                )
            }
        }
    }
    .instrument(span.clone())
    .await;
    let (label, response) = outcome;
    if let Some(m) = &engine.metrics {
        m.sources.webhook(&source, label);
    }
    let _guard = span.enter();
    tracing::info!(
        outcome = label,
        status = response.status().as_u16(),
        "webhook handled"
    );
    response
}

/// Stores a verified delivery's records in one transaction with its delivery id; None when the
/// id was already applied.
async fn store(
    engine: &SourceEngine,
    source: &str,
    delivery_id: Option<&str>,
    records: &[crate::runtime::bindings::StreamRecord],
) -> anyhow::Result<Option<super::Applied>> {
    let mut tx = engine.store.begin().await?;
    // A write first: it takes SQLite's write lock before any read, and claims the delivery id
    // (a concurrent duplicate waits here, then finds it taken).
    let id = match delivery_id {
        Some(id) if !id.is_empty() => id.to_string(),
        _ => format!("anonymous:{}", uuid::Uuid::new_v4()),
    };
    let claimed = crate::store::sources::claim_delivery(
        &mut tx,
        source,
        &id,
        records.len() as i64,
        now_millis(),
    )
    .await?;
    if !claimed {
        tx.rollback().await?;
        return Ok(None);
    }
    let list: Vec<(&str, &SourceRecord)> = records
        .iter()
        .map(|r| (r.stream.as_str(), &r.record))
        .collect();
    let applied = engine.apply(&mut tx, source, &list).await?;
    tx.commit().await?;
    if applied.events > 0 {
        engine.store.events_committed();
    }
    Ok(Some(applied))
}
