//! A Standard Webhooks v1.0.0 receiver, as a faithful receiving endpoint verifies deliveries:
//! all three headers present, `webhook-timestamp` within the tolerance (5 minutes, the reference
//! libraries' default), a `v1` signature (HMAC-SHA256 over `{id}.{timestamp}.{body}` with the
//! base64-decoded `whsec_` secret) matching in constant time, over the raw bytes, and the body
//! JSON. Missing or malformed headers answer 400; a stale timestamp or a bad signature 401. A
//! message whose `webhook-id` was already accepted is acknowledged (200) and not stored again:
//! the id is the idempotency key.
//!
//! Knobs: [`Fake::fail_next`] answers the next N verified requests with a status, headers and
//! body (429 + Retry-After, 500, 410, 422 ...); [`Fake::accept_then_fail`] applies the next N
//! messages and then answers with an error (a receiver that committed the batch but whose answer
//! was lost — the case an idempotency key exists for). `GET` answers 405, as a POST-only
//! endpoint does.
//!
//! What it refuses, and where the spec says so (Standard Webhooks v1.0.0,
//! `standard-webhooks/standard-webhooks` `spec/standard-webhooks.md`, https://www.standardwebhooks.com/,
//! checked 2026-12-06; tolerance and header checks as `libraries/python/standardwebhooks/webhooks.py`):
//! - a missing header (400), a timestamp more than 5 minutes off (401), no matching `v1`
//!   signature (401): "Verifying signatures" and the reference library;
//! - a `webhook-id` it already applied is acknowledged and not applied again: "Use the
//!   `webhook-id` header as an idempotency key to prevent accidentally processing the same
//!   webhook more than once"; the id "remains the same no matter how many times a webhook that
//!   has failed is retried" ("Webhook metadata"). This fake remembers ids for its lifetime (the
//!   spec's example keeps them 5 minutes; a test runs well within that).
//! - 410 Gone (a knob): "the server is no longer interested in receiving webhooks from this
//!   source. Sender should disable the webhook endpoint" ("Delivery success and failure").

#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::Router;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Seconds a timestamp may differ from the receiver's clock.
pub const TOLERANCE_SECS: i64 = 5 * 60;

/// One accepted message.
#[derive(Debug, Clone)]
pub struct Message {
    pub path: String,
    pub id: String,
    pub timestamp: i64,
    pub signature: String,
    pub body: serde_json::Value,
    pub raw: Bytes,
}

#[derive(Debug, Clone)]
struct Fault {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

#[derive(Default)]
struct Inner {
    key: Vec<u8>,
    messages: Vec<Message>,
    seen_ids: HashMap<String, usize>,
    duplicates: usize,
    refused: Vec<(u16, String)>,
    faults: VecDeque<Fault>,
    /// Apply the next N messages, then answer with this fault.
    after_accept: VecDeque<Fault>,
    /// `webhook-id` of every verified request, in order (retries included).
    attempt_ids: Vec<String>,
}

/// A running receiver.
#[derive(Clone)]
pub struct Fake {
    pub addr: SocketAddr,
    inner: Arc<Mutex<Inner>>,
}

fn key_of(secret: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(secret.strip_prefix("whsec_").unwrap_or(secret))
        .expect("the fake's secret is base64")
}

/// Starts a receiver that verifies with `secret` (`whsec_...`).
pub async fn start(secret: &str) -> Fake {
    let inner = Arc::new(Mutex::new(Inner {
        key: key_of(secret),
        ..Inner::default()
    }));
    let app = Router::new()
        .fallback(any(handle))
        .with_state(inner.clone());
    let addr = crate::common::serve(app).await;
    Fake { addr, inner }
}

/// Starts a receiver on its own runtime thread, for tests that drive the binary.
pub fn start_in_background(secret: &str) -> Fake {
    let secret = secret.to_string();
    crate::common::in_background(move || async move { start(&secret).await })
}

impl Fake {
    pub fn host_port(&self) -> String {
        self.addr.to_string()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Accepted messages, in order.
    pub fn messages(&self) -> Vec<Message> {
        self.inner.lock().unwrap().messages.clone()
    }

    /// Deliveries acknowledged as duplicates of an accepted `webhook-id`.
    pub fn duplicates(&self) -> usize {
        self.inner.lock().unwrap().duplicates
    }

    /// Refused requests: (status, reason).
    pub fn refused(&self) -> Vec<(u16, String)> {
        self.inner.lock().unwrap().refused.clone()
    }

    /// `webhook-id` of every verified request, in order, retries included.
    pub fn attempt_ids(&self) -> Vec<String> {
        self.inner.lock().unwrap().attempt_ids.clone()
    }

    /// Applies the next `n` new messages, then answers `status` (a lost acknowledgement).
    pub fn accept_then_fail(&self, n: usize, status: u16, body: &str) {
        let mut inner = self.inner.lock().unwrap();
        for _ in 0..n {
            inner.after_accept.push_back(Fault {
                status,
                headers: vec![],
                body: body.to_string(),
            });
        }
    }

    /// Answers the next `n` verified requests with `status`, `headers` and `body`.
    pub fn fail_next(&self, n: usize, status: u16, headers: &[(&str, &str)], body: &str) {
        let mut inner = self.inner.lock().unwrap();
        for _ in 0..n {
            inner.faults.push_back(Fault {
                status,
                headers: headers
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                body: body.to_string(),
            });
        }
    }
}

/// `v1,<base64 HMAC-SHA256>`, for tests that sign requests themselves.
pub fn sign(secret: &str, id: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&key_of(secret)).unwrap();
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    )
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn refuse(inner: &mut Inner, status: StatusCode, reason: &str) -> Response {
    inner.refused.push((status.as_u16(), reason.to_string()));
    (status, axum::Json(serde_json::json!({ "message": reason }))).into_response()
}

async fn handle(
    State(inner): State<Arc<Mutex<Inner>>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut inner = inner.lock().unwrap();
    if method != Method::POST {
        return (StatusCode::METHOD_NOT_ALLOWED, "POST only").into_response();
    }
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let (Some(id), Some(ts), Some(sigs)) = (
        header("webhook-id"),
        header("webhook-timestamp"),
        header("webhook-signature"),
    ) else {
        return refuse(
            &mut inner,
            StatusCode::BAD_REQUEST,
            "missing required headers",
        );
    };
    let Ok(timestamp) = ts.trim().parse::<i64>() else {
        return refuse(
            &mut inner,
            StatusCode::BAD_REQUEST,
            "invalid webhook-timestamp",
        );
    };
    if (now() - timestamp).abs() > TOLERANCE_SECS {
        return refuse(
            &mut inner,
            StatusCode::UNAUTHORIZED,
            "message timestamp outside the tolerance",
        );
    }
    // Any `v1,<sig>` in the space-delimited list may match (key rotation).
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&inner.key).unwrap();
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(&body);
    let matched = sigs.split(' ').any(|entry| {
        let Some(("v1", sig)) = entry.split_once(',') else {
            return false;
        };
        let Ok(sig) = base64::engine::general_purpose::STANDARD.decode(sig) else {
            return false;
        };
        // verify_slice compares in constant time.
        mac.clone().verify_slice(&sig).is_ok()
    });
    if !matched {
        return refuse(
            &mut inner,
            StatusCode::UNAUTHORIZED,
            "no matching signature found",
        );
    }
    let Ok(json) = serde_json::from_slice::<serde_json::Value>(&body) else {
        return refuse(&mut inner, StatusCode::BAD_REQUEST, "body is not JSON");
    };
    if !json["type"].is_string() || !json["data"].is_object() {
        return refuse(
            &mut inner,
            StatusCode::BAD_REQUEST,
            "body must have a string `type` and an object `data`",
        );
    }
    inner.attempt_ids.push(id.clone());
    if let Some(fault) = inner.faults.pop_front() {
        let mut response = (
            StatusCode::from_u16(fault.status).unwrap(),
            fault.body.clone(),
        )
            .into_response();
        for (k, v) in &fault.headers {
            response.headers_mut().insert(
                axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        return response;
    }
    if inner.seen_ids.contains_key(&id) {
        inner.duplicates += 1;
        return (
            StatusCode::OK,
            axum::Json(serde_json::json!({"duplicate": true})),
        )
            .into_response();
    }
    let index = inner.messages.len();
    inner.seen_ids.insert(id.clone(), index);
    inner.messages.push(Message {
        path: uri.path().to_string(),
        id,
        timestamp,
        signature: sigs,
        body: json,
        raw: body,
    });
    if let Some(fault) = inner.after_accept.pop_front() {
        return (StatusCode::from_u16(fault.status).unwrap(), fault.body).into_response();
    }
    StatusCode::NO_CONTENT.into_response()
}
