//! A fake of Slack's incoming webhooks (`POST https://hooks.slack.com/services/T…/B…/…`), answering
//! as Slack does, in plain text: `200 ok`; `400 invalid_payload` for a body that is not a JSON
//! object (or not `application/json`); `400 no_text` when `text`, `blocks` and `attachments` are
//! all missing or empty; `404 no_service` for an unknown or revoked webhook; `403 invalid_token`
//! when the team and bot ids are right but the token part is wrong; `404 channel_not_found` for
//! a `channel` override the workspace does not have.
//!
//! Knobs: [`Fake::fail_next`] answers the next N valid messages with a status, headers and body
//! (e.g. `429` + `Retry-After` + `rate_limited`, `500 rollup_error`, `400 invalid_payload`);
//! [`Fake::revoke`] disables a webhook.
//!
//! Where each refusal comes from (checked 2026-12-06): the plain-text error strings and their
//! statuses — https://api.slack.com/changelog/2016-05-17-changes-to-errors-for-incoming-webhooks
//! and https://api.slack.com/messaging/webhooks; `no_service` for a revoked webhook —
//! `slackapi/slack-github-action` issue #249; about one message per second, 429 with
//! `Retry-After` — https://api.slack.com/docs/rate-limits.

#![allow(dead_code)]

use std::collections::{HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::Router;

/// One posted message.
#[derive(Debug, Clone)]
pub struct Posted {
    pub path: String,
    pub body: serde_json::Value,
}

#[derive(Debug, Clone)]
struct Fault {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

#[derive(Default)]
struct Inner {
    hooks: HashSet<String>,
    channels: HashSet<String>,
    posted: Vec<Posted>,
    requests: usize,
    faults: VecDeque<Fault>,
}

#[derive(Clone)]
pub struct Fake {
    pub addr: SocketAddr,
    inner: Arc<Mutex<Inner>>,
}

/// Starts a fake knowing the webhook paths `hooks` (`/services/T…/B…/…`); the workspace has the
/// channels `#general` and `#alerts`.
pub async fn start(hooks: &[&str]) -> Fake {
    let inner = Arc::new(Mutex::new(Inner {
        hooks: hooks.iter().map(|h| h.to_string()).collect(),
        channels: ["#general", "#alerts"]
            .iter()
            .map(|c| c.to_string())
            .collect(),
        ..Inner::default()
    }));
    let app = Router::new()
        .fallback(any(handle))
        .with_state(inner.clone());
    let addr = crate::common::serve(app).await;
    Fake { addr, inner }
}

pub fn start_in_background(hooks: &[&str]) -> Fake {
    let hooks: Vec<String> = hooks.iter().map(|h| h.to_string()).collect();
    crate::common::in_background(move || async move {
        let refs: Vec<&str> = hooks.iter().map(String::as_str).collect();
        start(&refs).await
    })
}

impl Fake {
    pub fn host_port(&self) -> String {
        self.addr.to_string()
    }

    /// Messages Slack accepted, in order.
    pub fn posted(&self) -> Vec<Posted> {
        self.inner.lock().unwrap().posted.clone()
    }

    /// Every request that reached the fake, accepted or not.
    pub fn requests(&self) -> usize {
        self.inner.lock().unwrap().requests
    }

    pub fn revoke(&self, hook: &str) {
        self.inner.lock().unwrap().hooks.remove(hook);
    }

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

fn plain(status: u16, body: &str) -> Response {
    (
        StatusCode::from_u16(status).unwrap(),
        [("content-type", "text/html")],
        body.to_string(),
    )
        .into_response()
}

fn non_empty(v: &serde_json::Value) -> bool {
    match v {
        serde_json::Value::String(s) => !s.trim().is_empty(),
        serde_json::Value::Array(a) => !a.is_empty(),
        _ => false,
    }
}

async fn handle(
    State(inner): State<Arc<Mutex<Inner>>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut inner = inner.lock().unwrap();
    inner.requests += 1;
    let path = uri.path().to_string();
    // /services/T…/B…/TOKEN
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    if parts.len() != 4 || parts[0] != "services" {
        return plain(404, "no_service");
    }
    if !inner.hooks.contains(&path) {
        let prefix = format!("/services/{}/{}/", parts[1], parts[2]);
        return if inner.hooks.iter().any(|h| h.starts_with(&prefix)) {
            plain(403, "invalid_token")
        } else {
            plain(404, "no_service")
        };
    }
    if method != Method::POST {
        return plain(400, "invalid_payload");
    }
    let json_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    let parsed = serde_json::from_slice::<serde_json::Value>(&body).ok();
    let Some(message) = parsed.filter(|v| v.is_object() && json_type) else {
        return plain(400, "invalid_payload");
    };
    if !non_empty(&message["text"])
        && !non_empty(&message["blocks"])
        && !non_empty(&message["attachments"])
    {
        return plain(400, "no_text");
    }
    if let Some(channel) = message.get("channel") {
        match channel.as_str() {
            Some(c) if inner.channels.contains(c) => {}
            Some(_) => return plain(404, "channel_not_found"),
            None => return plain(400, "invalid_payload"),
        }
    }
    if let Some(fault) = inner.faults.pop_front() {
        let mut response = plain(fault.status, &fault.body);
        for (k, v) in &fault.headers {
            response.headers_mut().insert(
                axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        return response;
    }
    inner.posted.push(Posted {
        path,
        body: message,
    });
    plain(200, "ok")
}
