//! A faithful fake of the GA4 Measurement Protocol: `POST /mp/collect` and its validation
//! server `POST /debug/mp/collect`, with `measurement_id` (web) or `firebase_app_id` (app) and
//! `api_secret` in the query.
//!
//! What it does as the real service does (checked 2026-12-06):
//! - `/mp/collect` answers 2xx (204, empty body) to every request it receives, valid or not, and
//!   silently drops what it cannot use: a wrong or missing `api_secret` drops the whole request,
//!   an invalid event is dropped, the rest kept ("The Measurement Protocol returns a 2xx status
//!   code if the HTTP request is received. The Measurement Protocol does not return an error
//!   code if the payload data was malformed", Measurement Protocol reference,
//!   https://developers.google.com/analytics/devguides/collection/protocol/ga4/reference).
//!   [`Fake::dropped`] says what was dropped and why, which the real service never tells.
//! - `/debug/mp/collect` never records anything and answers 200
//!   `{"validationMessages": [{"fieldPath", "description", "validationCode"}]}`; it does not
//!   check `api_secret` ("Validate events",
//!   https://developers.google.com/analytics/devguides/collection/protocol/ga4/validating-events;
//!   codes `VALUE_INVALID`, `VALUE_REQUIRED`, `NAME_INVALID`, `NAME_RESERVED`,
//!   `VALUE_OUT_OF_BOUNDS`, `EXCEEDED_MAX_ENTITIES`, `NAME_DUPLICATED`). The invalid-name
//!   message is the one Google's guide shows ("Event at index: [0] has invalid name
//!   [_badEventName]. Names must start with an alphabetic character.", fieldPath `events`);
//!   UNVERIFIED: the wording and fieldPath of the other messages, which the fake writes in the
//!   same style.
//! - The rules: `client_id` required for web streams, `app_instance_id` for app streams;
//!   `events` 1 to 25; event names ≤ 40 characters, a letter then letters, digits and
//!   underscores, not reserved (MP reference "Reserved names"); ≤ 25 params, names as event
//!   names without the `google_`/`ga_`/`firebase_` prefixes, string values ≤ 100 characters
//!   (`page_location` 1,000, `page_referrer` 420, `page_title` 300); ≤ 25 user properties,
//!   names ≤ 24, values ≤ 36, reserved names refused; `user_id` ≤ 256; `timestamp_micros` no
//!   more than 72 hours back; a body under 130 kB (GA4 event collection limits,
//!   https://support.google.com/analytics/answer/9267744; RudderStack
//!   `src/v0/destinations/ga4/utils.js`).
//! - Google documents no 429 or Retry-After for the Measurement Protocol;
//!   [`Fake::fail_next`] answers a 503 (an outage) so a test can show retries.

#![allow(dead_code)]

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::Router;
use serde_json::{json, Value};

pub const MEASUREMENT_ID: &str = "G-SWYD12345";
pub const API_SECRET: &str = "mp-secret_Zx81QvT";
const MAX_BODY: usize = 130_000;
const RESERVED_EVENTS: [&str; 38] = [
    "ad_activeview",
    "ad_click",
    "ad_exposure",
    "ad_impression",
    "ad_query",
    "ad_reward",
    "adunit_exposure",
    "app_background",
    "app_clear_data",
    "app_exception",
    "app_install",
    "app_remove",
    "app_store_refund",
    "app_store_subscription_cancel",
    "app_store_subscription_convert",
    "app_store_subscription_renew",
    "app_update",
    "app_upgrade",
    "dynamic_link_app_open",
    "dynamic_link_app_update",
    "dynamic_link_first_open",
    "error",
    "firebase_campaign",
    "firebase_in_app_message_action",
    "firebase_in_app_message_dismiss",
    "firebase_in_app_message_impression",
    "first_open",
    "first_visit",
    "in_app_purchase",
    "notification_dismiss",
    "notification_foreground",
    "notification_open",
    "notification_receive",
    "os_update",
    "screen_view",
    "session_start",
    "session_start_with_rollout",
    "user_engagement",
];
const RESERVED_PREFIXES: [&str; 3] = ["google_", "ga_", "firebase_"];
const RESERVED_USER_PROPERTIES: [&str; 5] = [
    "first_open_time",
    "first_visit_time",
    "last_deep_link_referrer",
    "user_id",
    "first_open_after_install",
];

/// One request `/mp/collect` kept (its valid events).
#[derive(Debug, Clone)]
pub struct Collected {
    pub host: String,
    pub body: Value,
    pub events: Vec<Value>,
}

#[derive(Default)]
pub struct FakeState {
    /// measurement id → its API secrets.
    pub secrets: BTreeMap<String, Vec<String>>,
    pub collected: Vec<Collected>,
    /// What `/mp/collect` dropped, with the reason.
    pub dropped: Vec<(String, Value)>,
    pub collect_requests: usize,
    pub debug_requests: usize,
    pub faults: VecDeque<u16>,
    /// How long each request waits before it is answered (GA4 answers in tens of
    /// milliseconds; a wait makes requests sent side by side overlap).
    pub latency: std::time::Duration,
    pub in_flight: usize,
    /// The most requests answered at once.
    pub max_in_flight: usize,
}

#[derive(Clone)]
pub struct Fake {
    pub addr: SocketAddr,
    pub state: Arc<Mutex<FakeState>>,
}

pub async fn start() -> Fake {
    let mut state = FakeState::default();
    state
        .secrets
        .insert(MEASUREMENT_ID.to_string(), vec![API_SECRET.to_string()]);
    let state = Arc::new(Mutex::new(state));
    let app = Router::new()
        .fallback(any(handle))
        .layer(DefaultBodyLimit::max(4 << 20))
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
    /// The next `n` requests to `/mp/collect` answer 503.
    pub fn fail_next(&self, n: usize) {
        let mut st = self.state.lock().unwrap();
        for _ in 0..n {
            st.faults.push_back(503);
        }
    }
    /// Every event kept, in order.
    pub fn events(&self) -> Vec<Value> {
        self.state
            .lock()
            .unwrap()
            .collected
            .iter()
            .flat_map(|c| c.events.clone())
            .collect()
    }
    pub fn collected(&self) -> Vec<Collected> {
        self.state.lock().unwrap().collected.clone()
    }
    pub fn dropped(&self) -> Vec<(String, Value)> {
        self.state.lock().unwrap().dropped.clone()
    }
    /// Each request waits `latency` before it is answered.
    pub fn answer_after(&self, latency: std::time::Duration) {
        self.state.lock().unwrap().latency = latency;
    }
    /// The most requests that were being answered at once.
    pub fn max_in_flight(&self) -> usize {
        self.state.lock().unwrap().max_in_flight
    }
    pub fn requests(&self) -> (usize, usize) {
        let st = self.state.lock().unwrap();
        (st.collect_requests, st.debug_requests)
    }
}

/// One validation message; `event` is the index it is about, if any.
#[derive(Debug, Clone)]
struct Problem {
    event: Option<usize>,
    message: Value,
}

fn problem(event: Option<usize>, path: &str, code: &str, description: String) -> Problem {
    Problem {
        event,
        message: json!({"fieldPath": path, "description": description, "validationCode": code}),
    }
}

fn name_problem(what: &str, name: &str, max: usize) -> Option<(&'static str, String)> {
    let first_ok = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic());
    if !first_ok {
        return Some((
            "NAME_INVALID",
            format!("has invalid name [{name}]. Names must start with an alphabetic character."),
        ));
    }
    if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Some((
            "NAME_INVALID",
            format!("has invalid name [{name}]. Only alphanumeric characters and underscores are allowed."),
        ));
    }
    if name.chars().count() > max {
        return Some((
            "VALUE_OUT_OF_BOUNDS",
            format!("has {what} [{name}] longer than {max} characters."),
        ));
    }
    None
}

/// Everything the validation server would say about `body`.
fn validate(body: &Value, app: bool, now_micros: i64) -> Vec<Problem> {
    let mut out = Vec::new();
    let id = if app { "app_instance_id" } else { "client_id" };
    if body[id].as_str().is_none_or(str::is_empty) {
        out.push(problem(
            None,
            id,
            "VALUE_REQUIRED",
            format!("Measurement requires an {id}."),
        ));
    }
    if body["user_id"]
        .as_str()
        .is_some_and(|u| u.chars().count() > 256)
    {
        out.push(problem(
            None,
            "user_id",
            "VALUE_OUT_OF_BOUNDS",
            "user_id is longer than 256 characters.".into(),
        ));
    }
    if let Some(props) = body["user_properties"].as_object() {
        if props.len() > 25 {
            out.push(problem(
                None,
                "user_properties",
                "EXCEEDED_MAX_ENTITIES",
                format!("{} user properties; at most 25.", props.len()),
            ));
        }
        for (name, v) in props {
            if RESERVED_USER_PROPERTIES.contains(&name.as_str())
                || RESERVED_PREFIXES.iter().any(|p| name.starts_with(p))
            {
                out.push(problem(
                    None,
                    "user_properties",
                    "NAME_RESERVED",
                    format!("User property [{name}] is reserved."),
                ));
            } else if let Some((code, text)) = name_problem("user property name", name, 24) {
                out.push(problem(
                    None,
                    "user_properties",
                    code,
                    format!("User property {text}"),
                ));
            }
            if v["value"].as_str().is_some_and(|s| s.chars().count() > 36) {
                out.push(problem(
                    None,
                    "user_properties",
                    "VALUE_OUT_OF_BOUNDS",
                    format!("User property [{name}] value is longer than 36 characters."),
                ));
            }
        }
    }
    let Some(events) = body["events"].as_array().filter(|e| !e.is_empty()) else {
        out.push(problem(
            None,
            "events",
            "VALUE_REQUIRED",
            "Measurement requires at least one event.".into(),
        ));
        return out;
    };
    if events.len() > 25 {
        out.push(problem(
            None,
            "events",
            "EXCEEDED_MAX_ENTITIES",
            format!("{} events; a request carries at most 25.", events.len()),
        ));
    }
    for (i, e) in events.iter().enumerate() {
        let name = e["name"].as_str().unwrap_or("");
        let at = format!("Event at index: [{i}]");
        // The name rules come first: Google answers NAME_INVALID for `_badEventName`.
        if let Some((code, text)) = name_problem("name", name, 40) {
            out.push(problem(Some(i), "events", code, format!("{at} {text}")));
        } else if RESERVED_EVENTS.contains(&name)
            || name.to_ascii_lowercase().starts_with("gtag.")
            || RESERVED_PREFIXES.iter().any(|p| name.starts_with(p))
        {
            out.push(problem(
                Some(i),
                "events",
                "NAME_RESERVED",
                format!("{at} has reserved name [{name}]."),
            ));
        }
        if let Some(t) = e["timestamp_micros"].as_i64() {
            if t < now_micros - 72 * 3_600_000_000 {
                out.push(problem(
                    Some(i),
                    "events",
                    "VALUE_OUT_OF_BOUNDS",
                    format!("{at} has timestamp_micros more than 72 hours in the past."),
                ));
            }
        }
        let Some(params) = e["params"].as_object() else {
            continue;
        };
        if params.len() > 25 {
            out.push(problem(
                Some(i),
                "events.params",
                "EXCEEDED_MAX_ENTITIES",
                format!("{at} has {} params; at most 25.", params.len()),
            ));
        }
        for (k, v) in params {
            if k == "firebase_conversion" || RESERVED_PREFIXES.iter().any(|p| k.starts_with(p)) {
                out.push(problem(
                    Some(i),
                    "events.params",
                    "NAME_RESERVED",
                    format!("{at} has reserved param [{k}]."),
                ));
            } else if let Some((code, text)) = name_problem("param name", k, 40) {
                out.push(problem(
                    Some(i),
                    "events.params",
                    code,
                    format!("{at} param {text}"),
                ));
            }
            let max = match k.as_str() {
                "page_location" => 1000,
                "page_referrer" => 420,
                "page_title" => 300,
                _ => 100,
            };
            match v {
                Value::String(s) if s.chars().count() > max => out.push(problem(
                    Some(i),
                    "events.params",
                    "VALUE_OUT_OF_BOUNDS",
                    format!("{at} param [{k}] value is longer than {max} characters."),
                )),
                Value::Array(_) if k != "items" => out.push(problem(
                    Some(i),
                    "events.params",
                    "VALUE_INVALID",
                    format!("{at} param [{k}] has an invalid value: only items may be a list."),
                )),
                Value::Object(_) => out.push(problem(
                    Some(i),
                    "events.params",
                    "VALUE_INVALID",
                    format!(
                        "{at} param [{k}] has an invalid value: nested objects are not allowed."
                    ),
                )),
                _ => {}
            }
        }
    }
    out
}

async fn handle(
    State(state): State<Arc<Mutex<FakeState>>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let latency = {
        let mut st = state.lock().unwrap();
        st.in_flight += 1;
        st.max_in_flight = st.max_in_flight.max(st.in_flight);
        st.latency
    };
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let mut st = state.lock().unwrap();
    st.in_flight -= 1;
    let debug = match uri.path() {
        "/mp/collect" => false,
        "/debug/mp/collect" => true,
        _ => return StatusCode::NOT_FOUND.into_response(),
    };
    if method != Method::POST {
        return StatusCode::METHOD_NOT_ALLOWED.into_response();
    }
    let query: BTreeMap<String, String> =
        url::form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
    let app = query.contains_key("firebase_app_id");
    let now_micros = chrono::Utc::now().timestamp_micros();
    let parsed: Option<Value> = serde_json::from_slice(&body).ok().filter(Value::is_object);
    if debug {
        st.debug_requests += 1;
        let messages: Vec<Value> = match &parsed {
            None => vec![
                json!({"fieldPath": "", "description": "Unable to parse the request body as JSON.", "validationCode": "VALUE_INVALID"}),
            ],
            Some(_) if body.len() >= MAX_BODY => vec![
                json!({"fieldPath": "", "description": "The request body is larger than 130kB.", "validationCode": "VALUE_OUT_OF_BOUNDS"}),
            ],
            Some(b) => validate(b, app, now_micros)
                .into_iter()
                .map(|p| p.message)
                .collect(),
        };
        return (
            StatusCode::OK,
            [("content-type", "application/json")],
            json!({ "validationMessages": messages }).to_string(),
        )
            .into_response();
    }

    st.collect_requests += 1;
    if let Some(status) = st.faults.pop_front() {
        return StatusCode::from_u16(status).unwrap().into_response();
    }
    let host = headers
        .get("host")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let no_content = StatusCode::NO_CONTENT.into_response();
    let Some(b) = parsed else {
        st.dropped
            .push(("body is not a JSON object".into(), Value::Null));
        return no_content;
    };
    let stream = query.get("measurement_id").or(query.get("firebase_app_id"));
    let secret_ok = stream
        .and_then(|s| st.secrets.get(s))
        .is_some_and(|secrets| query.get("api_secret").is_some_and(|s| secrets.contains(s)));
    if !secret_ok {
        st.dropped
            .push(("unknown stream or wrong api_secret".into(), b));
        return no_content;
    }
    if body.len() >= MAX_BODY {
        st.dropped.push(("body over 130 kB".into(), b));
        return no_content;
    }
    let problems = validate(&b, app, now_micros);
    if let Some(p) = problems.iter().find(|p| p.event.is_none()) {
        st.dropped.push((p.message.to_string(), b));
        return no_content;
    }
    let mut kept = Vec::new();
    for (i, e) in b["events"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .enumerate()
    {
        match problems.iter().find(|p| p.event == Some(i)) {
            Some(p) => st.dropped.push((p.message.to_string(), e)),
            None => kept.push(e),
        }
    }
    if !kept.is_empty() {
        st.collected.push(Collected {
            host,
            body: b,
            events: kept,
        });
    }
    no_content
}
