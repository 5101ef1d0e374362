//! The Segment-compatible HTTP Tracking API: `/v1/identify`, `/v1/track`, `/v1/page`,
//! `/v1/screen`, `/v1/group`, `/v1/alias` and `/v1/batch`, and the short paths analytics.js
//! and the mobile SDKs use (`/v1/i|t|p|s|g|a|b`), so Segment's and RudderStack's SDKs work
//! unchanged when pointed at the hub, from servers, apps and browsers (CORS per source, see
//! [`cors`]; the settings analytics.js fetches, see [`settings`]). It owns the write-key and
//! origin checks; parsing is `ingest::message`, storing is `ingest::writer`.

pub mod cors;
mod settings;

use std::collections::HashMap;
use std::io::Read;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use tracing::Instrument as _;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, FromRequestParts, State};
use axum::http::{header, request::Parts, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;

use crate::config::web::TrustedProxies;
use crate::ingest::message::{self, Limits, MessageType};
use crate::ingest::writer::{Ingestor, SubmitError};
use crate::metrics::{Metrics, RequestLabels};

/// What the tracking routes share.
#[derive(Clone)]
pub struct TrackingState {
    pub ingestor: Ingestor,
    /// Write key → source name.
    pub write_keys: Arc<HashMap<String, String>>,
    pub limits: Arc<Limits>,
    pub metrics: Metrics,
    /// Which browser origins each source takes.
    pub origins: Arc<cors::OriginPolicy>,
    /// Peers whose `X-Forwarded-For` is believed, for `context.ip`.
    pub proxies: Arc<TrustedProxies>,
}

impl TrackingState {
    /// A request from a browser page (it has an `Origin` header) whose origin `source` does not
    /// allow gets a 403 naming the setting; requests without `Origin` (servers, apps) pass.
    fn check_origin(&self, source: &str, headers: &HeaderMap) -> Result<(), Response> {
        let Some(origin) = headers.get(header::ORIGIN) else {
            return Ok(());
        };
        let origin = origin.to_str().unwrap_or("(not text)");
        if self.origins.allows(source, origin) {
            return Ok(());
        }
        Err(error(
            StatusCode::FORBIDDEN,
            &format!(
                "origin {origin} may not send events of source `{source}`: add it to [sources.{source}] allowed_origins"
            ),
            None,
        ))
    }
}

/// The peer's address, when the server was started with connect info (`switchyard serve` is;
/// a router driven in-process may not be).
pub(crate) struct ClientAddr(Option<SocketAddr>);

impl<S: Send + Sync> FromRequestParts<S> for ClientAddr {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(ClientAddr(
            parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0),
        ))
    }
}

/// The path letter analytics.js and the mobile SDKs use for each call type.
fn short_path(kind: MessageType) -> &'static str {
    match kind {
        MessageType::Identify => "/v1/i",
        MessageType::Track => "/v1/t",
        MessageType::Page => "/v1/p",
        MessageType::Screen => "/v1/s",
        MessageType::Group => "/v1/g",
        MessageType::Alias => "/v1/a",
    }
}

pub fn routes(state: TrackingState) -> Router {
    let mut router = Router::new();
    for kind in MessageType::ALL {
        let handler = post(move |s, c, h, b| handle(s, c, h, b, Some(kind)));
        router = router
            .route(&format!("/v1/{kind}"), handler.clone())
            .route(short_path(kind), handler);
    }
    let batch = post(|s, c, h, b| handle(s, c, h, b, None));
    router
        .route("/v1/batch", batch.clone())
        .route("/v1/b", batch)
        .route("/v1/projects/{write_key}/settings", get(settings::get))
        // Bodies are checked against Segment's 500 KB limit after decompression, with a 400
        // naming the limit; this only stops absurd uploads early.
        .layer(axum::extract::DefaultBodyLimit::max(8 << 20))
        .layer(state.origins.clone().layer())
        .with_state(state)
}

pub(crate) fn error(status: StatusCode, message: &str, field: Option<&str>) -> Response {
    let mut body = serde_json::json!({"success": false, "error": message});
    if let Some(f) = field {
        body["field"] = serde_json::Value::String(f.to_string());
    }
    (status, Json(body)).into_response()
}

async fn handle(
    State(state): State<TrackingState>,
    peer: ClientAddr,
    headers: HeaderMap,
    body: Bytes,
    endpoint: Option<MessageType>,
) -> Response {
    let route = endpoint.map(|e| e.as_str()).unwrap_or("batch");
    // Instrumented, not entered: a guard held across an await runs other tasks inside the span
    // and closes it out of order (tracing-subscriber then panics on a debug-level filter).
    let span = tracing::debug_span!("tracking_request", route);
    let response = handle_inner(&state, peer, &headers, body, endpoint)
        .instrument(span)
        .await;
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

/// RudderStack's `AnonymousId` header: JS SDK v3 sends it base64-encoded, other clients plain.
/// Taken as base64 only when it decodes to printable text.
fn header_anonymous_id(headers: &HeaderMap) -> Option<String> {
    let raw = headers.get("anonymousid")?.to_str().ok()?.trim();
    if raw.is_empty() {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(raw)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .filter(|s| !s.trim().is_empty() && !s.chars().any(char::is_control));
    Some(decoded.unwrap_or_else(|| raw.to_string()))
}

/// The client's address for `context.ip`: the peer, or through `[hub] trusted_proxies` the
/// `X-Forwarded-For` hop they vouch for.
fn client_ip(state: &TrackingState, peer: &ClientAddr, headers: &HeaderMap) -> Option<IpAddr> {
    let peer = peer.0?.ip();
    let forwarded = headers.get("x-forwarded-for").and_then(|v| v.to_str().ok());
    Some(state.proxies.client_ip(peer, forwarded))
}

async fn handle_inner(
    state: &TrackingState,
    peer: ClientAddr,
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
    // The body is JSON whatever the Content-Type says: browsers send `text/plain` (no
    // preflight, and `sendBeacon` can send nothing else), servers `application/json`.
    let anonymous_id = header_anonymous_id(headers);
    let anonymous_id = anonymous_id.as_deref();
    let limits = &state.limits;
    let parsed = match endpoint {
        Some(kind) => {
            message::parse_single(&body, kind, received_at, limits, anonymous_id).map(|m| {
                let key = m.write_key.clone();
                (vec![m], key)
            })
        }
        None => message::parse_batch(&body, received_at, limits, anonymous_id).map(|b| {
            let key = b
                .write_key
                .clone()
                .or_else(|| b.messages.iter().find_map(|m| m.write_key.clone()));
            (b.messages, key)
        }),
    };
    let (mut messages, body_key) = match parsed {
        Ok(p) => p,
        Err(e) => {
            state.metrics.reject("invalid", 1);
            let answer = e.to_json();
            let source = basic_key.as_ref().and_then(|k| state.write_keys.get(k));
            let why = answer["error"]
                .as_str()
                .map_or_else(|| answer.to_string(), str::to_string);
            state
                .ingestor
                .tap()
                .refused(source.map(String::as_str), "invalid", &why, &body);
            return (StatusCode::BAD_REQUEST, Json(answer)).into_response();
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
    if let Err(refused) = state.check_origin(source, headers) {
        state
            .metrics
            .reject("origin_not_allowed", messages.len() as u64);
        state.ingestor.tap().refused(
            Some(source),
            "origin_not_allowed",
            "this page's origin is not in the source's allowed_origins",
            &body,
        );
        return refused;
    }
    if let Some(ip) = client_ip(state, &peer, headers) {
        let ip = ip.to_string();
        for m in &mut messages {
            m.default_ip(&ip);
        }
    }
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
