//! The Segment-compatible HTTP Tracking API: `/v1/identify`, `/v1/track`, `/v1/page`,
//! `/v1/screen`, `/v1/group`, `/v1/alias` and `/v1/batch`, so Segment's and RudderStack's SDKs
//! work unchanged when pointed at the hub.

pub mod message;
pub mod writer;

use std::collections::HashMap;
use std::io::Read;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use base64::Engine as _;

use message::{Limits, MessageType};
use writer::{Ingestor, SubmitError};

use crate::metrics::{Metrics, RequestLabels};

/// What the tracking routes share.
#[derive(Clone)]
pub struct IngestState {
    pub ingestor: Ingestor,
    /// Write key → source name.
    pub write_keys: Arc<HashMap<String, String>>,
    pub limits: Arc<Limits>,
    pub metrics: Metrics,
}

pub fn routes(state: IngestState) -> Router {
    Router::new()
        .route(
            "/v1/identify",
            post(|s, h, b| handle(s, h, b, Some(MessageType::Identify))),
        )
        .route(
            "/v1/track",
            post(|s, h, b| handle(s, h, b, Some(MessageType::Track))),
        )
        .route(
            "/v1/page",
            post(|s, h, b| handle(s, h, b, Some(MessageType::Page))),
        )
        .route(
            "/v1/screen",
            post(|s, h, b| handle(s, h, b, Some(MessageType::Screen))),
        )
        .route(
            "/v1/group",
            post(|s, h, b| handle(s, h, b, Some(MessageType::Group))),
        )
        .route(
            "/v1/alias",
            post(|s, h, b| handle(s, h, b, Some(MessageType::Alias))),
        )
        .route("/v1/batch", post(|s, h, b| handle(s, h, b, None)))
        // Bodies are checked against Segment's 500 KB limit after decompression, with a 400
        // naming the limit; this only stops absurd uploads early.
        .layer(axum::extract::DefaultBodyLimit::max(8 << 20))
        .with_state(state)
}

fn error(status: StatusCode, message: &str, field: Option<&str>) -> Response {
    let mut body = serde_json::json!({"success": false, "error": message});
    if let Some(f) = field {
        body["field"] = serde_json::Value::String(f.to_string());
    }
    (status, Json(body)).into_response()
}

async fn handle(
    State(state): State<IngestState>,
    headers: HeaderMap,
    body: Bytes,
    endpoint: Option<MessageType>,
) -> Response {
    let route = endpoint.map(|e| e.as_str()).unwrap_or("batch");
    let span = tracing::debug_span!("tracking_request", route);
    let _enter = span.enter();
    let response = handle_inner(&state, &headers, body, endpoint).await;
    state
        .metrics
        .requests
        .get_or_create(&RequestLabels {
            route: format!("/v1/{route}"),
            status: response.status().as_u16(),
        })
        .inc();
    response
}

async fn handle_inner(
    state: &IngestState,
    headers: &HeaderMap,
    body: Bytes,
    endpoint: Option<MessageType>,
) -> Response {
    let received_at = chrono::Utc::now();
    let basic_key = match basic_auth_user(headers) {
        Ok(k) => k,
        Err(e) => return error(StatusCode::UNAUTHORIZED, &e, None),
    };
    if let Some(key) = &basic_key {
        if !state.write_keys.contains_key(key) {
            state.metrics.reject("unknown_write_key", 1);
            return error(StatusCode::UNAUTHORIZED, "unknown write key", None);
        }
    }
    let body = match decode_body(headers, &body, state.limits.max_request_bytes) {
        Ok(b) => b,
        Err(e) => {
            state.metrics.reject("bad_body", 1);
            return error(StatusCode::BAD_REQUEST, &e, None);
        }
    };
    let parsed = match endpoint {
        Some(kind) => message::parse_single(&body, kind, received_at, &state.limits).map(|m| {
            let key = m.write_key.clone();
            (vec![m], key)
        }),
        None => message::parse_batch(&body, received_at, &state.limits).map(|b| {
            let key = b
                .write_key
                .clone()
                .or_else(|| b.messages.iter().find_map(|m| m.write_key.clone()));
            (b.messages, key)
        }),
    };
    let (messages, body_key) = match parsed {
        Ok(p) => p,
        Err(e) => {
            state.metrics.reject("invalid", 1);
            return (StatusCode::BAD_REQUEST, Json(e.to_json())).into_response();
        }
    };
    let key = match basic_key.or(body_key) {
        Some(k) => k,
        None => {
            state
                .metrics
                .reject("missing_write_key", messages.len() as u64);
            return error(
                StatusCode::UNAUTHORIZED,
                "missing write key: send it as the HTTP Basic user name or as writeKey",
                None,
            );
        }
    };
    let Some(source) = state.write_keys.get(&key) else {
        state
            .metrics
            .reject("unknown_write_key", messages.len() as u64);
        return error(StatusCode::UNAUTHORIZED, "unknown write key", None);
    };
    let n = messages.len() as u64;
    match state.ingestor.submit(source, messages).await {
        Ok(_) => (StatusCode::OK, Json(serde_json::json!({"success": true}))).into_response(),
        Err(SubmitError::QueueFull(waiting)) => {
            state.metrics.reject("queue_full", n);
            let mut r = error(
                StatusCode::TOO_MANY_REQUESTS,
                &format!("the hub is busy ({waiting} messages waiting to be written); retry after 1 second"),
                None,
            );
            r.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
            r
        }
        Err(e) => {
            tracing::error!("storing tracking messages failed: {e}");
            state.metrics.reject("store_error", n);
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "storing the messages failed; nothing of this request was stored, retry",
                None,
            )
        }
    }
}

/// The write key from `Authorization: Basic base64(key:)`, if that header is there.
fn basic_auth_user(headers: &HeaderMap) -> Result<Option<String>, String> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let text = value
        .to_str()
        .map_err(|_| "Authorization header is not text".to_string())?;
    let Some(encoded) = text
        .strip_prefix("Basic ")
        .or_else(|| text.strip_prefix("basic "))
    else {
        return Err("Authorization must be HTTP Basic with the write key as user name".into());
    };
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .map_err(|_| "Authorization: Basic credentials are not base64".to_string())?;
    let decoded = String::from_utf8(decoded)
        .map_err(|_| "Authorization: Basic credentials are not UTF-8".to_string())?;
    let user = decoded.split_once(':').map(|(u, _)| u).unwrap_or(&decoded);
    Ok(Some(user.to_string()))
}

/// The request body, gunzipped when `Content-Encoding: gzip`, refusing more than `limit` bytes
/// of content (so a small gzip bomb cannot inflate past the limit).
fn decode_body(headers: &HeaderMap, body: &[u8], limit: usize) -> Result<Vec<u8>, String> {
    let encoding = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("identity");
    match encoding.trim().to_ascii_lowercase().as_str() {
        "gzip" | "x-gzip" => {
            let mut out = Vec::new();
            flate2::read::GzDecoder::new(body)
                .take(limit as u64 + 1)
                .read_to_end(&mut out)
                .map_err(|e| format!("the gzip body could not be decompressed: {e}"))?;
            if out.len() > limit {
                return Err(format!(
                    "request body is over the {} KB limit after decompression",
                    limit / 1024
                ));
            }
            Ok(out)
        }
        "identity" | "" => {
            if body.len() > limit {
                return Err(format!(
                    "request body is {} bytes, over the {} KB limit",
                    body.len(),
                    limit / 1024
                ));
            }
            Ok(body.to_vec())
        }
        other => Err(format!(
            "unsupported Content-Encoding `{other}`: send gzip or no encoding"
        )),
    }
}
