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

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use tracing::Instrument as _;

use super::SourceEngine;
use crate::api::json_error;
use crate::runtime::bindings::{SourceRecord, WebhookError, WebhookRequest};
use crate::store::now_millis;

/// The webhook routes, merged into the hub's router.
pub fn routes(engine: SourceEngine) -> Router {
    Router::new()
        .route("/v1/webhooks/{source}", post(webhook))
        .with_state(engine)
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
                    m.sources
                        .page(&source, "webhook", &applied, delivery.records.len() as u64);
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
    let mut tx = engine.store.pool().begin().await?;
    // A write first: it takes SQLite's write lock before any read, and claims the delivery id
    // (a concurrent duplicate waits here, then finds it taken).
    let id = delivery_id.map(str::to_string).unwrap_or_default();
    let claimed = sqlx::query(
        "INSERT INTO source_deliveries (source, delivery_id, records, at) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (source, delivery_id) DO NOTHING",
    )
    .bind(source)
    .bind(if id.is_empty() {
        format!("anonymous:{}", uuid::Uuid::new_v4())
    } else {
        id
    })
    .bind(records.len() as i64)
    .bind(now_millis())
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if claimed == 0 {
        tx.rollback().await?;
        return Ok(None);
    }
    let list: Vec<(&str, &SourceRecord)> = records
        .iter()
        .map(|r| (r.stream.as_str(), &r.record))
        .collect();
    let applied = engine.apply(&mut tx, source, &list).await?;
    tx.commit().await?;
    Ok(Some(applied))
}
