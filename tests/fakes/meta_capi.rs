//! A faithful fake of Meta's Conversions API: `POST /v{N}.0/{pixel_id}/events` and
//! `GET /v{N}.0/{pixel_id}?fields=...`.
//!
//! It enforces what Graph enforces for the events edge, in Graph's error shape
//! (`{"error":{"message","type","code","error_subcode","error_user_title","error_user_msg",
//! "is_transient","fbtrace_id"}}`, HTTP 400), and, like the real API, **refuses the whole
//! request for one bad event, processing none of its events**. Each refusal and where it comes
//! from (checked 2026-12-06):
//! - the token (`access_token` parameter, or `Authorization: Bearer|OAuth`): missing → code 104,
//!   unknown → code 190 (Graph API error handling,
//!   https://developers.facebook.com/docs/graph-api/guides/error-handling/; RudderStack
//!   `src/v0/util/facebookUtils/networkHandler.js` maps 190 to an expired/invalid token);
//!   `appsecret_proof` = hex HMAC-SHA256(app secret, token) when the app requires it (code 100,
//!   Graph "Securing requests");
//! - the version: a retired one answers code 2635 (Meta blog "Upcoming change in Marketing API
//!   version deprecation", 2024-04-16; expiry dates from the Marketing API version history);
//! - the dataset: unknown → 100/33 "Unsupported post request. Object with ID ... does not exist"
//!   (RudderStack `networkHandler.js`, code 100 subcode 33);
//! - `data`: required, at most 1,000 events ("Using the API": up to 1,000 events per request);
//! - per event: `event_name`, an integer `event_time` no more than 7 days back (100/2804003,
//!   `error_user_title` "Event Timestamp Too Old": server-event parameters page, "If any
//!   event_time in data is greater than 7 days in the past, we return an error for the entire
//!   request and process no events"; subcode from RudderStack's `networkHandler.js` and
//!   production logs quoted in public code), `action_source` one of Meta's values, for
//!   `website` both `event_source_url` and `user_data.client_user_agent` (Parameters page:
//!   "Website events … require the client_user_agent, action_source, and event_source_url
//!   parameters"), `user_data` with at least one customer information parameter, contact
//!   fields (`em`, `ph`, `fn`, `ln`, `ge`, `db`, `ct`, `st`, `zp`, `country`) SHA-256 hashed
//!   (Customer Information Parameters: "Our systems are designed to not accept customer
//!   information that is unhashed Contact Information"), and a `Purchase` with
//!   `custom_data.currency` and `value` (Standard events reference: Purchase requires them).
//!   UNVERIFIED against the live API: the exact message text and subcode of every per-event
//!   refusal but 2804003, and the refusal of a future `event_time` (Meta documents the
//!   7-day window only); the fake answers code 100 with a descriptive `error_user_msg`.
//! - Rate limits: no 429; HTTP 400 with code 4 (application) or 80004 and
//!   `X-Business-Use-Case-Usage` (Marketing API rate limiting), via [`Fake::fail_next`].
//!
//! Accepted events are stored per dataset; an event whose `event_name` and `event_id` were
//! already received is counted as deduplicated (what Meta does with the pixel's copy), and
//! events sent with `test_event_code` are kept apart as test events.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::Router;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;

pub const TOKEN: &str = "EAAcapi-fake-dataset-token-9Qx2";
pub const PIXEL_ID: &str = "1234567890123456";
pub const PIXEL_NAME: &str = "Switchyard Shop";
pub const MAX_EVENTS: usize = 1_000;
const ACTION_SOURCES: [&str; 9] = [
    "email",
    "website",
    "app",
    "phone_call",
    "chat",
    "physical_store",
    "system_generated",
    "business_messaging",
    "other",
];
const HASHED: [&str; 10] = [
    "em", "ph", "fn", "ln", "ge", "db", "ct", "st", "zp", "country",
];
const CUSTOMER_INFO: [&str; 16] = [
    "em",
    "ph",
    "fn",
    "ln",
    "ge",
    "db",
    "ct",
    "st",
    "zp",
    "country",
    "external_id",
    "client_ip_address",
    "client_user_agent",
    "fbc",
    "fbp",
    "lead_id",
];

/// A canned Graph error for the next request.
#[derive(Debug, Clone)]
pub struct Fault {
    pub code: i64,
    pub message: String,
    pub headers: Vec<(String, String)>,
}

impl Fault {
    /// Application-level throttling (code 4), as Graph answers it.
    pub fn app_rate_limited() -> Fault {
        Fault {
            code: 4,
            message: "(#4) Application request limit reached".into(),
            headers: vec![(
                "x-app-usage".into(),
                r#"{"call_count":100,"total_cputime":25,"total_time":25}"#.into(),
            )],
        }
    }
}

/// One accepted `/events` request.
#[derive(Debug, Clone)]
pub struct Received {
    pub pixel_id: String,
    pub events: Vec<Value>,
    pub test_event_code: Option<String>,
    /// Where the token came from: `header` or `query`.
    pub token_via: String,
}

#[derive(Default)]
pub struct FakeState {
    pub tokens: BTreeSet<String>,
    pub app_secret: Option<String>,
    pub requests: usize,
    pub received: Vec<Received>,
    /// (pixel, event_name, event_id) already received.
    pub seen: BTreeSet<(String, String, String)>,
    pub deduplicated: usize,
    /// Refused requests: the error each got.
    pub refused: Vec<Value>,
    pub faults: VecDeque<Fault>,
    /// event_id → the `error_user_title` Meta refuses that event's requests with.
    pub refuse: BTreeMap<String, String>,
}

#[derive(Clone)]
pub struct Fake {
    pub addr: SocketAddr,
    pub state: Arc<Mutex<FakeState>>,
}

pub async fn start() -> Fake {
    let mut state = FakeState::default();
    state.tokens.insert(TOKEN.to_string());
    let state = Arc::new(Mutex::new(state));
    let app = Router::new()
        .fallback(any(handle))
        .layer(DefaultBodyLimit::max(32 << 20))
        .with_state(state.clone());
    let addr = crate::common::serve(app).await;
    Fake { addr, state }
}

/// Starts the fake on its own runtime thread, for tests that drive the binary.
pub fn start_in_background() -> Fake {
    crate::common::in_background(move || async move { start().await })
}

impl Fake {
    pub fn host_port(&self) -> String {
        self.addr.to_string()
    }
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
    /// Answers the next authenticated request with `fault`.
    pub fn fail_next(&self, fault: Fault) {
        self.state.lock().unwrap().faults.push_back(fault);
    }
    /// Refuses every request carrying the event `event_id` (code 100, `title`): what Meta does
    /// with an event it refuses for a reason a sender cannot check beforehand.
    pub fn refuse_event(&self, event_id: &str, title: &str) {
        self.state
            .lock()
            .unwrap()
            .refuse
            .insert(event_id.to_string(), title.to_string());
    }
    pub fn require_appsecret_proof(&self, app_secret: &str) {
        self.state.lock().unwrap().app_secret = Some(app_secret.to_string());
    }
    /// Every accepted event, in order.
    pub fn events(&self) -> Vec<Value> {
        self.state
            .lock()
            .unwrap()
            .received
            .iter()
            .flat_map(|r| r.events.clone())
            .collect()
    }
    pub fn received(&self) -> Vec<Received> {
        self.state.lock().unwrap().received.clone()
    }
    pub fn refused(&self) -> Vec<Value> {
        self.state.lock().unwrap().refused.clone()
    }
    pub fn requests(&self) -> usize {
        self.state.lock().unwrap().requests
    }
    pub fn deduplicated(&self) -> usize {
        self.state.lock().unwrap().deduplicated
    }
}

fn fbtrace() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(1);
    format!("AcapiTrace{}", N.fetch_add(1, Ordering::Relaxed))
}

/// Graph's error object, HTTP 400 unless `status` says otherwise.
fn graph_error(
    status: u16,
    code: i64,
    subcode: Option<i64>,
    message: &str,
    user: Option<(&str, &str)>,
    headers: &[(String, String)],
) -> (Value, Response) {
    let mut error = json!({
        "message": message, "type": "OAuthException", "code": code,
        "is_transient": matches!(code, 1 | 2 | 4), "fbtrace_id": fbtrace()
    });
    if let Some(s) = subcode {
        error["error_subcode"] = json!(s);
    }
    if let Some((title, msg)) = user {
        error["error_user_title"] = json!(title);
        error["error_user_msg"] = json!(msg);
    }
    let body = json!({ "error": error });
    let mut response = (
        StatusCode::from_u16(status).unwrap(),
        [("content-type", "application/json")],
        body.to_string(),
    )
        .into_response();
    for (k, v) in headers {
        response.headers_mut().insert(
            axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    (body, response)
}

/// An invalid-parameter refusal of the whole request, for one event.
fn bad_event(index: usize, title: &str, msg: &str) -> (Value, Response) {
    graph_error(
        400,
        100,
        None,
        "Invalid parameter",
        Some((title, &format!("{msg} (event at index {index})"))),
        &[],
    )
}

/// A non-empty string.
fn filled(v: &Value) -> bool {
    v.as_str().is_some_and(|s| !s.is_empty())
}

fn is_sha256(v: &Value) -> bool {
    let one = |s: &str| s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    match v {
        Value::String(s) => one(s),
        Value::Array(items) => {
            !items.is_empty() && items.iter().all(|i| i.as_str().is_some_and(one))
        }
        _ => false,
    }
}

/// Marketing API major versions Meta retired, by the day they stopped being served.
fn retired(major: u32) -> bool {
    let today = chrono::Utc::now().date_naive();
    let expiry = match major {
        0..=22 => return true,
        23 => "2026-06-09",
        24 => "2026-11-10",
        25 => "2027-02-23",
        _ => return false,
    };
    chrono::NaiveDate::parse_from_str(expiry, "%Y-%m-%d").is_ok_and(|d| today >= d)
}

fn query_pairs(uri: &Uri) -> BTreeMap<String, String> {
    url::form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

async fn handle(
    State(state): State<Arc<Mutex<FakeState>>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut st = state.lock().unwrap();
    st.requests += 1;
    let (refusal, response) = route(&mut st, &method, &uri, &headers, &body);
    if let Some(error) = refusal {
        st.refused.push(error);
    }
    response
}

fn route(
    st: &mut FakeState,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> (Option<Value>, Response) {
    let refuse = |(error, response): (Value, Response)| (Some(error), response);
    let query = query_pairs(uri);

    // 1. The token.
    let header_token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("OAuth "))
        })
        .map(str::to_string);
    let (token, token_via) = match (query.get("access_token"), header_token) {
        (Some(t), _) => (t.clone(), "query"),
        (None, Some(t)) => (t, "header"),
        (None, None) => {
            return refuse(graph_error(
                400,
                104,
                None,
                "An access token is required to request this resource.",
                None,
                &[],
            ))
        }
    };
    if !st.tokens.contains(&token) {
        return refuse(graph_error(
            400,
            190,
            None,
            "Invalid OAuth access token - Cannot parse access token",
            None,
            &[],
        ));
    }
    if let Some(secret) = &st.app_secret {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(token.as_bytes());
        let expected = hex::encode(mac.finalize().into_bytes());
        if query.get("appsecret_proof") != Some(&expected) {
            return refuse(graph_error(
                400,
                100,
                None,
                "The access token could not be decrypted / appsecret_proof is invalid or missing",
                None,
                &[],
            ));
        }
    }

    // 2. The path: /vNN.0/{pixel_id}[/events].
    let parts: Vec<&str> = uri.path().trim_matches('/').split('/').collect();
    let major = parts
        .first()
        .and_then(|v| v.strip_prefix('v'))
        .and_then(|v| v.strip_suffix(".0"))
        .and_then(|v| v.parse::<u32>().ok());
    let Some(major) = major else {
        return refuse(graph_error(
            400,
            2500,
            None,
            "Unknown path components",
            None,
            &[],
        ));
    };
    if retired(major) {
        return refuse(graph_error(
            400,
            2635,
            None,
            "(#2635) You are calling a deprecated version of the Ads API. Please update to the latest version: v27.0.",
            None,
            &[],
        ));
    }
    let pixel = parts.get(1).copied().unwrap_or("");
    if pixel != PIXEL_ID {
        return refuse(graph_error(
            400,
            100,
            Some(33),
            &format!("Unsupported post request. Object with ID '{pixel}' does not exist, cannot be loaded due to missing permissions, or does not support this operation."),
            None,
            &[],
        ));
    }
    if let Some(fault) = st.faults.pop_front() {
        return refuse(graph_error(
            400,
            fault.code,
            None,
            &fault.message,
            None,
            &fault.headers,
        ));
    }
    match (method.as_str(), parts.get(2).copied()) {
        ("GET", None) => (
            None,
            (
                StatusCode::OK,
                [("content-type", "application/json")],
                json!({"id": PIXEL_ID, "name": PIXEL_NAME}).to_string(),
            )
                .into_response(),
        ),
        ("POST", Some("events")) => events(st, &query, headers, body, token_via),
        _ => refuse(graph_error(
            400,
            100,
            None,
            "Unsupported request",
            None,
            &[],
        )),
    }
}

fn events(
    st: &mut FakeState,
    query: &BTreeMap<String, String>,
    headers: &HeaderMap,
    body: &[u8],
    token_via: &str,
) -> (Option<Value>, Response) {
    let refuse = |(error, response): (Value, Response)| (Some(error), response);
    let json_body = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    let params: serde_json::Map<String, Value> = if json_body {
        match serde_json::from_slice(body) {
            Ok(Value::Object(m)) => m,
            _ => {
                return refuse(graph_error(
                    400,
                    100,
                    None,
                    "The request body is not a valid JSON object",
                    None,
                    &[],
                ))
            }
        }
    } else {
        // A form body carries `data` as a JSON-encoded string.
        url::form_urlencoded::parse(body)
            .map(|(k, v)| {
                let v = serde_json::from_str::<Value>(&v).unwrap_or(Value::String(v.into_owned()));
                (k.into_owned(), v)
            })
            .collect()
    };
    let test_event_code = params
        .get("test_event_code")
        .and_then(Value::as_str)
        .map(str::to_string)
        .or_else(|| query.get("test_event_code").cloned());
    let Some(Value::Array(data)) = params.get("data") else {
        return refuse(graph_error(
            400,
            100,
            None,
            "(#100) The parameter data is required",
            None,
            &[],
        ));
    };
    if data.is_empty() || data.len() > MAX_EVENTS {
        return refuse(graph_error(
            400,
            100,
            None,
            "Invalid parameter",
            Some((
                "Too Many Events",
                &format!("{} events: a request carries 1 to {MAX_EVENTS}", data.len()),
            )),
            &[],
        ));
    }
    let now = chrono::Utc::now().timestamp();
    for (i, e) in data.iter().enumerate() {
        if let Err(refusal) = check_event(i, e, now) {
            return refuse(*refusal);
        }
        if let Some(title) = e["event_id"].as_str().and_then(|id| st.refuse.get(id)) {
            return refuse(bad_event(i, title, "this event was refused"));
        }
    }
    for e in data {
        let key = (
            PIXEL_ID.to_string(),
            e["event_name"].as_str().unwrap_or("").to_string(),
            e.get("event_id")
                .map(|v| v.as_str().map_or(v.to_string(), str::to_string))
                .unwrap_or_default(),
        );
        if !key.2.is_empty() && !st.seen.insert(key) {
            st.deduplicated += 1;
        }
    }
    st.received.push(Received {
        pixel_id: PIXEL_ID.to_string(),
        events: data.clone(),
        test_event_code,
        token_via: token_via.to_string(),
    });
    (
        None,
        (
            StatusCode::OK,
            [("content-type", "application/json")],
            json!({"events_received": data.len(), "messages": [], "fbtrace_id": fbtrace()})
                .to_string(),
        )
            .into_response(),
    )
}

fn check_event(i: usize, e: &Value, now: i64) -> Result<(), Box<(Value, Response)>> {
    if !filled(&e["event_name"]) {
        return Err(Box::new(bad_event(
            i,
            "Missing Event Name",
            "event_name is required",
        )));
    }
    let Some(t) = e["event_time"].as_i64() else {
        return Err(Box::new(bad_event(
            i,
            "Invalid Event Time",
            "event_time must be a Unix timestamp in seconds",
        )));
    };
    if t < now - 7 * 86_400 {
        return Err(Box::new(graph_error(
            400,
            100,
            Some(2804003),
            "Invalid parameter",
            Some((
                "Event Timestamp Too Old",
                "The timestamp for this event is too far in the past. Events need to be sent from your server within 7 days of when they occurred. Enter a timestamp that has occurred within the last 7 days.",
            )),
            &[],
        )));
    }
    if t > now + 60 {
        return Err(Box::new(bad_event(
            i,
            "Event Timestamp In Future",
            "event_time is in the future",
        )));
    }
    let source = e["action_source"].as_str().unwrap_or("");
    if !ACTION_SOURCES.contains(&source) {
        return Err(Box::new(bad_event(
            i,
            "Invalid Action Source",
            "action_source is required and must be one of Meta's values",
        )));
    }
    let Some(user) = e["user_data"].as_object() else {
        return Err(Box::new(bad_event(
            i,
            "Missing User Data",
            "user_data is required",
        )));
    };
    if !CUSTOMER_INFO.iter().any(|k| user.contains_key(*k)) {
        return Err(Box::new(bad_event(
            i,
            "Missing Customer Information",
            "user_data needs at least one customer information parameter",
        )));
    }
    for k in HASHED {
        if let Some(v) = user.get(k) {
            if !is_sha256(v) {
                return Err(Box::new(bad_event(
                    i,
                    "Unhashed Customer Information",
                    &format!("user_data.{k} must be a SHA-256 hash"),
                )));
            }
        }
    }
    if source == "website" {
        if !filled(&e["event_source_url"]) {
            return Err(Box::new(bad_event(
                i,
                "Missing Event Source URL",
                "event_source_url is required for website events",
            )));
        }
        if !user.get("client_user_agent").is_some_and(filled) {
            return Err(Box::new(bad_event(
                i,
                "Missing User Agent",
                "client_user_agent is required for website events",
            )));
        }
    }
    if e["event_name"] == "Purchase" {
        let custom = &e["custom_data"];
        if !custom["currency"].is_string() || !custom["value"].is_number() {
            return Err(Box::new(bad_event(
                i,
                "Missing Purchase Value",
                "Purchase events require custom_data.currency and custom_data.value",
            )));
        }
    }
    Ok(())
}
