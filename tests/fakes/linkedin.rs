//! A fake of LinkedIn's Marketing API for DMP segment users, answering as LinkedIn does:
//!
//! - `POST /rest/dmpSegments/{id}/users`: `Authorization: Bearer <token>` (401
//!   `INVALID_ACCESS_TOKEN` otherwise); `LinkedIn-Version` present (400 `VERSION_MISSING`) and
//!   served today (426 `NONEXISTENT_VERSION`, see [`SUNSETS`]); `X-Restli-Protocol-Version:
//!   2.0.0` and `X-RestLi-Method: BATCH_CREATE` (400); a known segment (404); a JSON `elements`
//!   list of 1 to [`MAX_ELEMENTS`] (400). Then one status per element, in order: `201`, or `400`
//!   with an `error.message` for an action other than ADD/REMOVE, an unknown `idType`, a
//!   malformed `idValue` (SHA256_EMAIL = 64 lowercase hex, SHA512_EMAIL = 128, GOOGLE_AID a
//!   UUID), or no user ids without both names.
//! - `GET /rest/dmpSegments/{id}`: the segment, with the same header checks.
//!
//! Each refusal and where it comes from (checked 2026-12-06):
//! - 426 `{"status":426,"code":"NONEXISTENT_VERSION","message":"Requested version 202504 is not
//!   active"}` for a version past its sunset: the body LinkedIn sent for sunset versions in
//!   n8n-io/n8n#28600 (2026-04-17, 20250401), ComposioHQ/composio#3231 (2026-04-17) and #4320
//!   (2026-08-31); sunset dates from LinkedIn's migrations table
//!   (https://learn.microsoft.com/en-us/linkedin/marketing/integrations/migrations; rows 202510-202603
//!   read on the it-it copy, 202604-202607 on the copy in api-evangelist/linkedin-ads
//!   lifecycle/linkedin-ads-lifecycle.yml, generated 2026-08-13). A version is refused from its
//!   sunset day on, relative to the real clock, so a stale version turns into a red test.
//! - 429 without `Retry-After` or rate-limit headers: "DMP Segment Users", section Rate Limits
//!   (https://learn.microsoft.com/en-us/linkedin/marketing/matched-audiences/create-and-manage-segment-users):
//!   a 1-minute limit per member on the streaming endpoints; LinkedIn documents no headers.
//! - 404 on `/users` for a segment that exists but is new: same page ("After creating a DMP
//!   segment, wait 5 seconds") and Segment's connector, which retries a 404 because "Audiences are
//!   usually available to accept batches of data 1 - 2 minutes after they're created"
//!   (segmentio/action-destinations linkedin-audiences/updateAudience, 2026-08-21).
//! - 401 `{"status":401,"serviceErrorCode":65600,"code":"INVALID_ACCESS_TOKEN"}`: the shape
//!   LinkedIn clients parse (e.g. the LinkedIn Ads client verified against api.linkedin.com on
//!   2026-08-15 whose error type documents `serviceErrorCode` 65600 and `INVALID_ACCESS_TOKEN`).
//!
//! Knobs: [`Fake::throttle_next`] (429, no Retry-After, as LinkedIn), [`Fake::reject_id`] (an
//! element carrying that idValue gets a status and message), [`Fake::http_next`],
//! [`Fake::segment_is_new`] (the users endpoint answers 404 for the next requests while the
//! segment itself reads fine).

#![allow(dead_code)]

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::Router;
use serde_json::{json, Value};

/// Elements per request the fake accepts (LinkedIn does not document one; 5,000 is common).
pub const MAX_ELEMENTS: usize = 5000;
/// LinkedIn Marketing versions and their sunset day (`YYYY-MM-DD`): served before it, 426 from
/// it on. Versions not listed (202001, 202512: LinkedIn published none) are refused too.
pub const SUNSETS: &[(&str, &str)] = &[
    ("202504", "2026-04-15"),
    ("202505", "2026-05-15"),
    ("202506", "2026-06-15"),
    ("202507", "2026-07-15"),
    ("202508", "2026-08-17"),
    ("202509", "2026-09-15"),
    ("202510", "2026-10-15"),
    ("202511", "2026-11-16"),
    ("202601", "2027-01-15"),
    ("202602", "2027-02-15"),
    ("202603", "2027-03-16"),
    ("202604", "2027-04-15"),
    ("202605", "2027-05-15"),
    ("202606", "2027-06-15"),
    ("202607", "2027-07-15"),
];

/// Whether LinkedIn serves `version` today (UTC).
pub fn is_served(version: &str) -> bool {
    let today = chrono::Utc::now().date_naive();
    SUNSETS.iter().any(|(v, sunset)| {
        *v == version
            && chrono::NaiveDate::parse_from_str(sunset, "%Y-%m-%d").is_ok_and(|d| today < d)
    })
}

/// A version LinkedIn has sunset (for tests of the refusal).
pub const SUNSET_VERSION: &str = "202509";

#[derive(Default)]
struct Inner {
    token: String,
    segments: Vec<String>,
    /// segment -> (idType, idValue)
    members: HashMap<String, BTreeSet<(String, String)>>,
    /// segment -> (firstName, lastName) matched by name only
    named: HashMap<String, BTreeSet<(String, String)>>,
    bodies: Vec<Value>,
    headers: Vec<HeaderMap>,
    throttle: usize,
    http_faults: VecDeque<(u16, Value)>,
    rejects: HashMap<String, (u16, String)>,
    /// Requests to `/users` still answered 404 because the segment is new.
    fresh: usize,
}

#[derive(Clone)]
pub struct Fake {
    pub addr: SocketAddr,
    inner: Arc<Mutex<Inner>>,
}

pub async fn start(token: &str, segments: &[&str]) -> Fake {
    let inner = Arc::new(Mutex::new(Inner {
        token: token.to_string(),
        segments: segments.iter().map(|s| s.to_string()).collect(),
        ..Inner::default()
    }));
    let app = Router::new()
        .fallback(any(handle))
        .with_state(inner.clone());
    let addr = crate::common::serve(app).await;
    Fake { addr, inner }
}

pub fn start_in_background(token: &str, segments: &[&str]) -> Fake {
    let token = token.to_string();
    let segments: Vec<String> = segments.iter().map(|s| s.to_string()).collect();
    crate::common::in_background(move || async move {
        let refs: Vec<&str> = segments.iter().map(String::as_str).collect();
        start(&token, &refs).await
    })
}

impl Fake {
    pub fn host_port(&self) -> String {
        self.addr.to_string()
    }

    /// `(idType, idValue)` pairs in a segment.
    pub fn members(&self, segment: &str) -> BTreeSet<(String, String)> {
        self.inner
            .lock()
            .unwrap()
            .members
            .get(segment)
            .cloned()
            .unwrap_or_default()
    }

    /// Users matched by name only.
    pub fn named(&self, segment: &str) -> BTreeSet<(String, String)> {
        self.inner
            .lock()
            .unwrap()
            .named
            .get(segment)
            .cloned()
            .unwrap_or_default()
    }

    pub fn bodies(&self) -> Vec<Value> {
        self.inner.lock().unwrap().bodies.clone()
    }

    /// Headers of the accepted batch requests.
    pub fn headers(&self) -> Vec<HeaderMap> {
        self.inner.lock().unwrap().headers.clone()
    }

    pub fn throttle_next(&self, n: usize) {
        self.inner.lock().unwrap().throttle += n;
    }

    pub fn http_next(&self, status: u16, body: Value) {
        self.inner
            .lock()
            .unwrap()
            .http_faults
            .push_back((status, body));
    }

    /// The segment reads fine but the next `n` requests to its users endpoint answer 404, as a
    /// segment created moments ago does.
    pub fn segment_is_new(&self, n: usize) {
        self.inner.lock().unwrap().fresh += n;
    }

    /// Elements carrying `id_value` get `status` and `message`.
    pub fn reject_id(&self, id_value: &str, status: u16, message: &str) {
        self.inner
            .lock()
            .unwrap()
            .rejects
            .insert(id_value.to_string(), (status, message.to_string()));
    }
}

fn error(status: u16, code: &str, message: &str) -> Response {
    let mut body = json!({"status": status, "code": code, "message": message});
    if status == 401 {
        body["serviceErrorCode"] = json!(65600);
    }
    (StatusCode::from_u16(status).unwrap(), axum::Json(body)).into_response()
}

fn hex_of_len(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn is_uuid(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.iter().map(|p| p.len()).collect::<Vec<_>>() == [8, 4, 4, 4, 12]
        && parts
            .iter()
            .all(|p| p.bytes().all(|b| b.is_ascii_hexdigit()))
}

async fn handle(
    State(inner): State<Arc<Mutex<Inner>>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut inner = inner.lock().unwrap();
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let parts: Vec<&str> = uri.path().trim_matches('/').split('/').collect();
    let (segment, users) = match parts.as_slice() {
        ["rest", "dmpSegments", id] => (id.to_string(), false),
        ["rest", "dmpSegments", id, "users"] => (id.to_string(), true),
        _ => return error(404, "NOT_FOUND", "No resource found"),
    };
    if header("authorization") != Some(format!("Bearer {}", inner.token).as_str()) {
        return error(401, "INVALID_ACCESS_TOKEN", "Invalid access token");
    }
    match header("linkedin-version") {
        None => {
            return error(
                400,
                "VERSION_MISSING",
                "A version must be present. Please specify a version by adding the LinkedIn-Version header.",
            )
        }
        Some(v) if !is_served(v) => {
            return error(
                426,
                "NONEXISTENT_VERSION",
                &format!("Requested version {v} is not active"),
            )
        }
        Some(_) => {}
    }
    if header("x-restli-protocol-version") != Some("2.0.0") {
        return error(
            400,
            "ILLEGAL_ARGUMENT",
            "X-Restli-Protocol-Version 2.0.0 is required",
        );
    }
    if !inner.segments.contains(&segment) {
        return error(
            404,
            "NOT_FOUND",
            &format!("DmpSegment {segment} does not exist"),
        );
    }
    if !users {
        if method != Method::GET {
            return error(405, "METHOD_NOT_ALLOWED", "Method not allowed");
        }
        return axum::Json(json!({
            "id": segment.parse::<u64>().unwrap_or(0),
            "name": "Fake segment",
            "type": "USER",
            "status": "READY",
            "account": "urn:li:sponsoredAccount:516848833",
            "destinations": [{"destination": "LINKEDIN", "status": "READY"}]
        }))
        .into_response();
    }
    if method != Method::POST {
        return error(405, "METHOD_NOT_ALLOWED", "Method not allowed");
    }
    if header("x-restli-method")
        .map(str::to_ascii_uppercase)
        .as_deref()
        != Some("BATCH_CREATE")
    {
        return error(
            400,
            "ILLEGAL_ARGUMENT",
            "X-RestLi-Method: BATCH_CREATE is required for a batch of elements",
        );
    }
    if inner.fresh > 0 {
        inner.fresh -= 1;
        return error(
            404,
            "NOT_FOUND",
            &format!("DmpSegment {segment} is not available yet"),
        );
    }
    if inner.throttle > 0 {
        inner.throttle -= 1;
        return error(
            429,
            "TOO_MANY_REQUESTS",
            "Resource level throttle 1 MINUTE limit for calls to this resource is reached.",
        );
    }
    if let Some((status, body)) = inner.http_faults.pop_front() {
        return (StatusCode::from_u16(status).unwrap(), axum::Json(body)).into_response();
    }
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        return error(400, "ILLEGAL_ARGUMENT", "Invalid JSON in the request body");
    };
    let Some(elements) = body["elements"].as_array() else {
        return error(
            400,
            "ILLEGAL_ARGUMENT",
            "/elements :: field is required but not found",
        );
    };
    if elements.is_empty() || elements.len() > MAX_ELEMENTS {
        return error(
            400,
            "ILLEGAL_ARGUMENT",
            &format!(
                "/elements :: between 1 and {MAX_ELEMENTS} elements are allowed, got {}",
                elements.len()
            ),
        );
    }
    let mut statuses = Vec::with_capacity(elements.len());
    for element in elements {
        match check_element(&inner, element) {
            Err((status, message)) => statuses
                .push(json!({"status": status, "error": {"message": message, "status": status}})),
            Ok(()) => {
                let add = element["action"] == "ADD";
                let ids = element["userIds"].as_array().cloned().unwrap_or_default();
                for id in &ids {
                    let pair = (
                        id["idType"].as_str().unwrap_or("").to_string(),
                        id["idValue"].as_str().unwrap_or("").to_string(),
                    );
                    let set = inner.members.entry(segment.clone()).or_default();
                    if add {
                        set.insert(pair);
                    } else {
                        set.remove(&pair);
                    }
                }
                if ids.is_empty() {
                    let pair = (
                        element["firstName"].as_str().unwrap_or("").to_string(),
                        element["lastName"].as_str().unwrap_or("").to_string(),
                    );
                    let set = inner.named.entry(segment.clone()).or_default();
                    if add {
                        set.insert(pair);
                    } else {
                        set.remove(&pair);
                    }
                }
                statuses.push(json!({"status": 201}));
            }
        }
    }
    inner.bodies.push(body);
    inner.headers.push(headers.clone());
    axum::Json(json!({"elements": statuses})).into_response()
}

fn check_element(inner: &Inner, element: &Value) -> Result<(), (u16, String)> {
    let action = element["action"].as_str().unwrap_or("");
    if action != "ADD" && action != "REMOVE" {
        return Err((
            400,
            format!("/action :: \"{action}\" is not an enum symbol"),
        ));
    }
    let ids = element["userIds"].as_array().cloned().unwrap_or_default();
    for id in &ids {
        let value = id["idValue"].as_str().unwrap_or("");
        let ok = match id["idType"].as_str().unwrap_or("") {
            "SHA256_EMAIL" => hex_of_len(value, 64),
            "SHA512_EMAIL" => hex_of_len(value, 128),
            "GOOGLE_AID" => is_uuid(value),
            other => {
                return Err((
                    400,
                    format!("/userIds/idType :: \"{other}\" is not an enum symbol"),
                ))
            }
        };
        if !ok {
            return Err((
                400,
                format!(
                    "Invalid idValue for {}",
                    id["idType"].as_str().unwrap_or("")
                ),
            ));
        }
        if let Some((status, message)) = inner.rejects.get(value) {
            return Err((*status, message.clone()));
        }
    }
    if ids.is_empty()
        && (element["firstName"].as_str().unwrap_or("").is_empty()
            || element["lastName"].as_str().unwrap_or("").is_empty())
    {
        return Err((
            400,
            "firstName and lastName are required when no userIds are given".to_string(),
        ));
    }
    Ok(())
}
