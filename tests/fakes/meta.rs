//! A faithful fake of Meta's Graph API for Custom Audience users (api-contracts.md §3):
//! `POST|DELETE /v{N}.0/{audience_id}/users` and `GET /v{N}.0/{audience_id}?fields=...`.
//!
//! It enforces what Graph enforces, in Graph's order and error shape
//! (`{"error":{"message","type","code","error_subcode","fbtrace_id"}}`):
//! - the access token (as `access_token` in the query, a form body or a JSON body, or as
//!   `Authorization: Bearer|OAuth`): missing → code 104, unknown → code 190 (HTTP 400, as Graph);
//!   `appsecret_proof` = hex HMAC-SHA256(app secret, token) when the app requires it (code 100);
//! - the path: version `vNN.0`, an existing audience (code 100 / subcode 33), the `users` edge;
//! - `payload` (a JSON-encoded string in query/form, or an object in a JSON body): `schema` one
//!   of the single keys (`EMAIL_SHA256`, `PHONE_SHA256`, `MOBILE_ADVERTISER_ID`) with a flat
//!   `data`, or an array of known multi-key names without duplicates; `data` non-empty, at most
//!   10,000 rows, each row exactly as long as the schema (code 100 otherwise);
//! - `session` when given: `session_id` > 0, `batch_seq` ≥ 1 and unused in that session, no
//!   batches after `last_batch_flag` (code 100);
//! - hashing: every hashed key's value must be 64-char lowercase hex; other values, and rows with
//!   nothing in them, are counted in `num_invalid_entries` and quoted in `invalid_entry_samples`
//!   (`{entry: reason}`), and not stored, as Meta does. Valid rows are added (POST) to or removed
//!   (DELETE) from the audience's members.
//!
//! - `GET /v{N}.0/act_{account}?fields=tos_accepted`: the ad account's Custom Audience terms.
//!
//! Each refusal and where it comes from (checked 2026-12-06):
//! - DELETE parameters are read from the query string or a JSON body only; a form body on DELETE
//!   is ignored, so its `payload` is missing: "(#100) Missing required parameter: payload".
//!   facebook/facebook-python-business-sdk `facebook_business/api.py` (GET and DELETE send
//!   `params=`, only other methods `data=`), its issue #156 (a DELETE to `/{audience}/users` with
//!   a `session=…&payload=…` body answered that error), facebook-java-business-sdk#179 (support:
//!   "for DELETE requests, the payload is a part of the URL"). Segment sends DELETE with a JSON
//!   body (`facebook-custom-audiences/sync/functions.ts` `sendRequest`, `json: {payload}`,
//!   2026-08-21); RudderStack puts the payload in the query string or a JSON body
//!   (`fb_custom_audience/util.ts` `responseBuilderSimple`, `FB_CUSTOM_AUDIENCE_PAYLOAD_IN_BODY`,
//!   2026-08-06).
//! - A retired Marketing API version: HTTP 400 `{"code":2635,"type":"OAuthException","message":
//!   "(#2635) You are calling a deprecated version of the Ads API. Please update to the latest
//!   version: v27.0."}` (Meta blog "Upcoming change in Marketing API version deprecation",
//!   2024-04-16; body as quoted in maraujo/pySocialWatcher#25). Expiry dates from Meta's
//!   version history
//!   (https://developers.facebook.com/documentation/ads-commerce/marketing-api/marketing-api-changelog/versions):
//!   v22.0 2026-02-19, v23.0 2026-06-09, v24.0 2026-11-10, v25.0 2027-02-23; v26.0 and v27.0
//!   TBD. Refused from that day on, by the real clock. (Meta may instead upgrade calls to
//!   endpoints a version did not change; the fake models the refusal.)
//! - Custom Audience terms not accepted: writes answer `(#2663) Terms of service has not been
//!   accepted. To accept, go to https://www.facebook.com/customaudiences/app/tos/?act=…`
//!   (facebook-nodejs-business-sdk#26, facebook-php-business-sdk#43); the account reads
//!   `{"tos_accepted": {}}` ("Custom Audience Terms Of Service", section Check if you signed:
//!   https://developers.facebook.com/documentation/ads-commerce/marketing-api/audiences/reference/custom-audience-terms-of-service).
//! - A flagged audience: `operation_status` 471 on read, and writes answer 100/1713230 "Audience
//!   Upload Blocked" ("Custom Audience Users", updated 2025-10-08:
//!   https://developers.facebook.com/documentation/ads-commerce/marketing-api/reference/custom-audience/users).
//! - Rate limits: no 429; HTTP 400 with codes 4/17/613/80003 and `X-Business-Use-Case-Usage`
//!   (`estimated_time_to_regain_access` in minutes)
//!   (https://developers.facebook.com/docs/marketing-api/overview/rate-limiting), via
//!   [`Fault::rate_limited`].
//!
//! Knobs: [`Fake::fail_next`] answers the next requests with a Graph error (e.g. code 80003 with
//! `X-Business-Use-Case-Usage` and `estimated_time_to_regain_access`, transient code 2, 500);
//! [`Fake::mark_invalid`] makes the fake treat given entries as invalid with a reason (what Meta
//! does with hashes of unmatchable data); [`Fake::decline_terms`]; [`Fake::flag_audience`].

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::Router;
use hmac::{Hmac, Mac};
use serde_json::{json, Map, Value};
use sha2::Sha256;

pub const TOKEN: &str = "EAAfake-system-user-token-7f3Kq9";
pub const AUDIENCE_ID: &str = "23847000000000001";
pub const AUDIENCE_NAME: &str = "Switchyard VIPs";
/// The ad account that owns [`AUDIENCE_ID`].
pub const AD_ACCOUNT_ID: &str = "516848833";
/// The newest version Meta serves.
pub const LATEST_VERSION: &str = "v27.0";
/// A version Meta retired (2026-11-10).
pub const RETIRED_VERSION: &str = "v24.0";
/// Marketing API versions with a published expiry (`None`: TBD).
pub const EXPIRIES: &[(u32, Option<&str>)] = &[
    (22, Some("2026-02-19")),
    (23, Some("2026-06-09")),
    (24, Some("2026-11-10")),
    (25, Some("2027-02-23")),
    (26, None),
    (27, None),
];

/// `Some(true)` if Meta serves major version `n` today, `Some(false)` if it retired it, `None` if
/// it never existed.
pub fn served(n: u32) -> Option<bool> {
    let today = chrono::Utc::now().date_naive();
    match EXPIRIES.iter().find(|(v, _)| *v == n) {
        Some((_, None)) => Some(true),
        Some((_, Some(day))) => {
            Some(chrono::NaiveDate::parse_from_str(day, "%Y-%m-%d").is_ok_and(|d| today < d))
        }
        None if n < EXPIRIES[0].0 => Some(false),
        None => None,
    }
}
pub const MAX_ROWS: usize = 10_000;
/// Largest request body the fake reads (Graph's own cap is not published; 10,000 full rows fit).
pub const MAX_BODY_BYTES: usize = 64 << 20;

const MULTI_KEYS: &[&str] = &[
    "EXTERN_ID",
    "EMAIL",
    "PHONE",
    "GEN",
    "DOBY",
    "DOBM",
    "DOBD",
    "LN",
    "FN",
    "FI",
    "CT",
    "ST",
    "ZIP",
    "MADID",
    "COUNTRY",
    "LOOKALIKE_VALUE",
];
const UNHASHED: &[&str] = &[
    "EXTERN_ID",
    "MADID",
    "MOBILE_ADVERTISER_ID",
    "LOOKALIKE_VALUE",
];

/// One `/users` call that passed validation.
#[derive(Debug, Clone)]
pub struct Upload {
    pub method: String,
    pub audience_id: String,
    pub schema: Vec<String>,
    pub rows: Vec<Vec<String>>,
    pub session: Option<Value>,
    /// Where the token came from: `header`, `query`, `form` or `json`.
    pub token_via: String,
    pub num_invalid: usize,
}

/// A canned Graph error for the next request.
#[derive(Debug, Clone)]
pub struct Fault {
    pub status: u16,
    pub code: i64,
    pub subcode: Option<i64>,
    pub message: String,
    pub is_transient: bool,
    pub headers: Vec<(String, String)>,
}

impl Fault {
    /// Custom-audience business-use-case throttling (code 80003) with Meta's usage header.
    pub fn rate_limited(regain_minutes: u64) -> Fault {
        let usage = json!({ "act_1": [{
            "type": "custom_audience", "call_count": 100, "total_cputime": 12, "total_time": 15,
            "estimated_time_to_regain_access": regain_minutes
        }]});
        Fault {
            status: 400,
            code: 80003,
            subcode: None,
            message: "There have been too many calls to this ad-account. Wait a bit and try again."
                .into(),
            is_transient: true,
            headers: vec![("x-business-use-case-usage".into(), usage.to_string())],
        }
    }

    pub fn error(status: u16, code: i64, subcode: Option<i64>, message: &str) -> Fault {
        Fault {
            status,
            code,
            subcode,
            message: message.into(),
            is_transient: matches!(code, 1 | 2),
            headers: vec![],
        }
    }
}

#[derive(Default)]
pub struct FakeState {
    pub tokens: BTreeSet<String>,
    pub app_secret: Option<String>,
    pub audiences: BTreeMap<String, String>,
    /// Members per audience: each a row as schema key → value.
    pub members: BTreeMap<String, Vec<BTreeMap<String, String>>>,
    pub uploads: Vec<Upload>,
    /// session_id → (batch_seqs seen, finished).
    pub sessions: HashMap<u64, (BTreeSet<u64>, bool)>,
    /// Answers for the next requests that pass authentication: a fault, or None to serve it.
    pub faults: VecDeque<Option<Fault>>,
    pub invalid: BTreeMap<String, String>,
    pub requests: usize,
    pub terms_declined: bool,
    pub flagged: bool,
}

#[derive(Clone)]
pub struct Fake {
    pub addr: SocketAddr,
    pub state: Arc<Mutex<FakeState>>,
}

pub async fn start() -> Fake {
    let mut state = FakeState::default();
    state.tokens.insert(TOKEN.to_string());
    state
        .audiences
        .insert(AUDIENCE_ID.to_string(), AUDIENCE_NAME.to_string());
    let state = Arc::new(Mutex::new(state));
    let app = Router::new()
        .fallback(any(handle))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
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
    /// Answers the next (authenticated, routed) request with `fault`.
    pub fn fail_next(&self, fault: Fault) {
        self.state.lock().unwrap().faults.push_back(Some(fault));
    }
    /// Serves the next request normally (queue it before a `fail_next` to fail a later one).
    pub fn pass_next(&self) {
        self.state.lock().unwrap().faults.push_back(None);
    }
    pub fn mark_invalid(&self, entry: &str, reason: &str) {
        self.state
            .lock()
            .unwrap()
            .invalid
            .insert(entry.to_string(), reason.to_string());
    }
    /// The ad account has not accepted the Custom Audience terms.
    pub fn decline_terms(&self) {
        self.state.lock().unwrap().terms_declined = true;
    }
    /// The audience is flagged for integrity restrictions (operation_status 471).
    pub fn flag_audience(&self) {
        self.state.lock().unwrap().flagged = true;
    }
    pub fn require_appsecret_proof(&self, app_secret: &str) {
        self.state.lock().unwrap().app_secret = Some(app_secret.to_string());
    }
    pub fn members(&self) -> Vec<BTreeMap<String, String>> {
        self.state
            .lock()
            .unwrap()
            .members
            .get(AUDIENCE_ID)
            .cloned()
            .unwrap_or_default()
    }
    pub fn uploads(&self) -> Vec<Upload> {
        self.state.lock().unwrap().uploads.clone()
    }
    pub fn requests(&self) -> usize {
        self.state.lock().unwrap().requests
    }
}

fn fbtrace() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(1);
    format!("AfakeTrace{}", N.fetch_add(1, Ordering::Relaxed))
}

fn graph_error(
    status: u16,
    kind: &str,
    code: i64,
    subcode: Option<i64>,
    message: &str,
) -> Response {
    graph_error_full(status, kind, code, subcode, message, matches!(code, 1 | 2))
}

fn graph_error_full(
    status: u16,
    kind: &str,
    code: i64,
    subcode: Option<i64>,
    message: &str,
    transient: bool,
) -> Response {
    let mut error = json!({
        "message": message, "type": kind, "code": code, "fbtrace_id": fbtrace()
    });
    if let Some(s) = subcode {
        error["error_subcode"] = json!(s);
    }
    error["is_transient"] = json!(transient);
    (
        StatusCode::from_u16(status).unwrap(),
        [("content-type", "application/json")],
        json!({ "error": error }).to_string(),
    )
        .into_response()
}

fn invalid_param(message: &str) -> Response {
    graph_error(
        400,
        "OAuthException",
        100,
        None,
        &format!("(#100) {message}"),
    )
}

fn parse_pairs(s: &str) -> Vec<(String, String)> {
    url::form_urlencoded::parse(s.as_bytes())
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

    // Parameters: query, then a form or JSON body (values of a JSON body may be objects).
    let mut params: BTreeMap<String, Value> = BTreeMap::new();
    let mut token_via = String::new();
    for (k, v) in parse_pairs(uri.query().unwrap_or("")) {
        if k == "access_token" {
            token_via = "query".into();
        }
        params.insert(k, Value::String(v));
    }
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    if !body.is_empty() {
        if content_type.starts_with("application/json") {
            match serde_json::from_slice::<Value>(&body) {
                Ok(Value::Object(map)) => {
                    for (k, v) in map {
                        if k == "access_token" {
                            token_via = "json".into();
                        }
                        params.insert(k, v);
                    }
                }
                _ => return invalid_param("The request body is not a valid JSON object"),
            }
        } else if content_type.starts_with("application/x-www-form-urlencoded")
            && method == Method::DELETE
        {
            // Graph does not read a DELETE's form body: its parameters are simply absent.
        } else if content_type.starts_with("application/x-www-form-urlencoded") {
            let Ok(text) = std::str::from_utf8(&body) else {
                return invalid_param("The request body is not valid UTF-8");
            };
            for (k, v) in parse_pairs(text) {
                if k == "access_token" {
                    token_via = "form".into();
                }
                params.insert(k, Value::String(v));
            }
        } else {
            return invalid_param("Unsupported content type; use a form or JSON body");
        }
    }

    // 1. Authentication.
    let header_token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("OAuth "))
                .map(str::to_string)
        });
    let token = match (
        params.get("access_token").and_then(Value::as_str),
        header_token,
    ) {
        (Some(t), _) => t.to_string(),
        (None, Some(t)) => {
            token_via = "header".into();
            t
        }
        (None, None) => {
            return graph_error(
                400,
                "OAuthException",
                104,
                None,
                "An access token is required to request this resource.",
            )
        }
    };
    if !st.tokens.contains(&token) {
        return graph_error(
            400,
            "OAuthException",
            190,
            None,
            "Invalid OAuth access token - Cannot parse access token",
        );
    }
    if let Some(secret) = &st.app_secret {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(token.as_bytes());
        let expected = hex::encode(mac.finalize().into_bytes());
        match params.get("appsecret_proof").and_then(Value::as_str) {
            None => {
                return graph_error(
                    400,
                    "GraphMethodException",
                    100,
                    None,
                    "API calls from the server require an appsecret_proof argument",
                )
            }
            Some(p) if p != expected => {
                return graph_error(
                    400,
                    "GraphMethodException",
                    100,
                    None,
                    "Invalid appsecret_proof provided in the API argument",
                )
            }
            _ => {}
        }
    }

    // 2. Path: /vNN.0/{id}[/users].
    let segments: Vec<&str> = uri.path().trim_matches('/').split('/').collect();
    let version_ok = segments.first().is_some_and(|v| {
        v.strip_prefix('v')
            .and_then(|r| r.split_once('.'))
            .is_some_and(|(a, b)| {
                !a.is_empty() && a.bytes().all(|c| c.is_ascii_digit()) && b == "0"
            })
    });
    if !version_ok || segments.len() < 2 || segments.len() > 3 {
        return graph_error(400, "OAuthException", 2500, None, "Unknown path components");
    }
    let major: u32 = segments[0]
        .trim_start_matches('v')
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .unwrap_or(0);
    match served(major) {
        Some(true) => {}
        Some(false) => {
            return graph_error(
                400,
                "OAuthException",
                2635,
                None,
                &format!("(#2635) You are calling a deprecated version of the Ads API. Please update to the latest version: {LATEST_VERSION}."),
            )
        }
        None => {
            return graph_error(
                400,
                "OAuthException",
                2500,
                None,
                &format!("Unknown path components: /{}", segments[0]),
            )
        }
    }
    let id = segments[1].to_string();
    let edge = segments.get(2).copied();
    if let Some(account) = id.strip_prefix("act_") {
        if account != AD_ACCOUNT_ID || edge.is_some() || method != Method::GET {
            return graph_error(
                400,
                "GraphMethodException",
                100,
                Some(33),
                &format!("Unsupported {} request. Object with ID '{id}' does not exist, cannot be loaded due to missing permissions, or does not support this operation.", method.as_str().to_lowercase()),
            );
        }
        let tos = if st.terms_declined {
            json!({})
        } else {
            json!({"custom_audience_tos": 1})
        };
        return axum::Json(json!({"tos_accepted": tos, "id": id})).into_response();
    }
    if !st.audiences.contains_key(&id) {
        let verb = if method == Method::GET { "get" } else { "post" };
        return graph_error(
            400,
            "GraphMethodException",
            100,
            Some(33),
            &format!("Unsupported {verb} request. Object with ID '{id}' does not exist, cannot be loaded due to missing permissions, or does not support this operation."),
        );
    }

    // Faults (after auth, like Graph's throttling).
    if let Some(Some(f)) = st.faults.pop_front() {
        let mut r = graph_error_full(
            f.status,
            "OAuthException",
            f.code,
            f.subcode,
            &f.message,
            f.is_transient,
        );
        for (k, v) in &f.headers {
            r.headers_mut().insert(
                axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        return r;
    }

    match (method.as_str(), edge) {
        ("GET", None) => {
            let fields = params
                .get("fields")
                .and_then(Value::as_str)
                .unwrap_or("id")
                .to_string();
            let mut out = Map::new();
            for f in fields.split(',') {
                match f.trim() {
                    "id" => {
                        out.insert("id".into(), json!(id));
                    }
                    "name" => {
                        out.insert("name".into(), json!(st.audiences[&id]));
                    }
                    "account_id" => {
                        out.insert("account_id".into(), json!(AD_ACCOUNT_ID));
                    }
                    "operation_status" => {
                        out.insert(
                            "operation_status".into(),
                            if st.flagged {
                                json!({"code": 471, "description": "This audience has been flagged for integrity restrictions."})
                            } else {
                                json!({"code": 200, "description": "Normal"})
                            },
                        );
                    }
                    "" => {}
                    other => {
                        return invalid_param(&format!(
                        "Tried accessing nonexisting field ({other}) on node type (CustomAudience)"
                    ))
                    }
                }
            }
            out.entry("id").or_insert(json!(id));
            axum::Json(Value::Object(out)).into_response()
        }
        ("POST" | "DELETE", Some("users")) if st.terms_declined => graph_error(
            400,
            "OAuthException",
            2663,
            None,
            &format!("(#2663) Terms of service has not been accepted. To accept, go to https://www.facebook.com/customaudiences/app/tos/?act={AD_ACCOUNT_ID}"),
        ),
        ("POST" | "DELETE", Some("users")) if st.flagged => {
            let body = json!({"error": {"message": "Invalid parameter", "type": "OAuthException", "code": 100,
                "error_subcode": 1713230, "error_user_title": "Audience Upload Blocked",
                "error_user_msg": "Before updating user memberships, you must resolve integrity restrictions on this Data File Custom Audience. Go to Audience Manager to appeal the restrictions or create a new audience with updated data",
                "is_transient": false, "fbtrace_id": fbtrace()}});
            (
                StatusCode::BAD_REQUEST,
                [("content-type", "application/json")],
                body.to_string(),
            )
                .into_response()
        }
        ("POST" | "DELETE", Some("users")) => users(&mut st, &method, &id, params, token_via),
        (_, Some("users")) | (_, None) => graph_error(
            400,
            "GraphMethodException",
            100,
            None,
            &format!("Unsupported {} request.", method.as_str().to_lowercase()),
        ),
        (_, Some(other)) => graph_error(
            400,
            "OAuthException",
            2500,
            None,
            &format!("Unknown path components: /{other}"),
        ),
    }
}

/// A parameter that Graph takes either as JSON text (query/form) or as JSON (JSON body).
fn json_param(params: &BTreeMap<String, Value>, name: &str) -> Result<Option<Value>, Response> {
    match params.get(name) {
        None => Ok(None),
        Some(Value::String(s)) => serde_json::from_str(s)
            .map(Some)
            .map_err(|_| invalid_param(&format!("Param {name} must be a JSON object"))),
        Some(v @ Value::Object(_)) => Ok(Some(v.clone())),
        Some(_) => Err(invalid_param(&format!(
            "Param {name} must be a JSON object"
        ))),
    }
}

fn is_hash(v: &str) -> bool {
    v.len() == 64
        && v.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn users(
    st: &mut FakeState,
    method: &Method,
    id: &str,
    params: BTreeMap<String, Value>,
    token_via: String,
) -> Response {
    let payload = match json_param(&params, "payload") {
        Ok(Some(Value::Object(p))) => p,
        Ok(Some(_)) => return invalid_param("Param payload must be a JSON object"),
        Ok(None) => return invalid_param("Missing required parameter: payload"),
        Err(r) => return r,
    };
    let session = match json_param(&params, "session") {
        Ok(s) => s,
        Err(r) => return r,
    };

    // Schema: one of the single keys (flat data) or a multi-key array.
    let (schema, flat) = match payload.get("schema") {
        Some(Value::String(s)) => {
            if !["EMAIL_SHA256", "PHONE_SHA256", "MOBILE_ADVERTISER_ID"].contains(&s.as_str()) {
                return invalid_param(&format!("Invalid schema: {s}"));
            }
            (vec![s.clone()], true)
        }
        Some(Value::Array(keys)) if !keys.is_empty() => {
            let mut names = Vec::new();
            for k in keys {
                match k.as_str() {
                    Some(name) if MULTI_KEYS.contains(&name) => {
                        if names.iter().any(|n| n == name) {
                            return invalid_param(&format!("Duplicate key in schema: {name}"));
                        }
                        names.push(name.to_string());
                    }
                    _ => return invalid_param(&format!("Invalid key in schema: {k}")),
                }
            }
            (names, false)
        }
        _ => return invalid_param("The parameter payload[schema] is required"),
    };
    let Some(Value::Array(data)) = payload.get("data") else {
        return invalid_param("The parameter payload[data] is required");
    };
    if data.is_empty() {
        return invalid_param("payload[data] must not be empty");
    }
    if data.len() > MAX_ROWS {
        return invalid_param(&format!(
            "Too many users in payload: {} (at most {MAX_ROWS} per request)",
            data.len()
        ));
    }
    let mut rows: Vec<Vec<String>> = Vec::with_capacity(data.len());
    for (i, row) in data.iter().enumerate() {
        let cells: Vec<Value> = match (flat, row) {
            (true, v @ Value::String(_)) => vec![v.clone()],
            (false, Value::Array(cells)) => cells.clone(),
            _ => {
                return invalid_param(&format!(
                    "payload[data][{i}] must be {}",
                    if flat { "a string" } else { "an array" }
                ))
            }
        };
        if cells.len() != schema.len() {
            return invalid_param(&format!(
                "Number of fields in row {i} ({}) does not match the schema ({})",
                cells.len(),
                schema.len()
            ));
        }
        let mut out = Vec::with_capacity(cells.len());
        for c in cells {
            match c {
                Value::String(s) => out.push(s),
                Value::Number(n) => out.push(n.to_string()),
                _ => return invalid_param(&format!("payload[data][{i}] holds a non-string value")),
            }
        }
        rows.push(out);
    }

    // Session.
    if let Some(s) = &session {
        let sid = s
            .get("session_id")
            .and_then(Value::as_u64)
            .filter(|v| *v > 0);
        let seq = s
            .get("batch_seq")
            .and_then(Value::as_u64)
            .filter(|v| *v >= 1);
        let last = s.get("last_batch_flag").and_then(Value::as_bool);
        let (Some(sid), Some(seq), Some(last)) = (sid, seq, last) else {
            return invalid_param(
                "session needs a positive session_id, batch_seq >= 1 and a boolean last_batch_flag",
            );
        };
        if let Some(total) = s.get("estimated_num_total") {
            if total.as_u64().is_none() {
                return invalid_param("session[estimated_num_total] must be a number");
            }
        }
        let entry = st.sessions.entry(sid).or_default();
        if entry.1 {
            return invalid_param(&format!("Session {sid} has already finished"));
        }
        if !entry.0.insert(seq) {
            return invalid_param(&format!(
                "batch_seq {seq} was already sent in session {sid}"
            ));
        }
        if last {
            entry.1 = true;
        }
    }

    // Entries: hashed keys must be SHA-256 hex; marked entries are invalid too.
    let mut samples = Map::new();
    let mut invalid = 0usize;
    let mut valid_rows = Vec::new();
    for row in &rows {
        let mut problem: Option<(String, String)> = None;
        for (key, value) in schema.iter().zip(row) {
            if value.is_empty() {
                continue;
            }
            if let Some(reason) = st.invalid.get(value) {
                problem = Some((value.clone(), reason.clone()));
                break;
            }
            if !UNHASHED.contains(&key.as_str()) && !is_hash(value) {
                problem = Some((value.clone(), format!("{key} is not a SHA-256 hash")));
                break;
            }
        }
        if problem.is_none() && row.iter().all(String::is_empty) {
            problem = Some((String::new(), "The row has no values".into()));
        }
        match problem {
            Some((entry, reason)) => {
                invalid += 1;
                if samples.len() < 100 {
                    samples.insert(entry, Value::String(reason));
                }
            }
            None => valid_rows.push(
                schema
                    .iter()
                    .cloned()
                    .zip(row.iter().cloned())
                    .filter(|(_, v)| !v.is_empty())
                    .collect::<BTreeMap<String, String>>(),
            ),
        }
    }
    let members = st.members.entry(id.to_string()).or_default();
    if *method == Method::POST {
        let mut present: std::collections::HashSet<BTreeMap<String, String>> =
            members.iter().cloned().collect();
        for row in valid_rows {
            if present.insert(row.clone()) {
                members.push(row);
            }
        }
    } else {
        // Removal matches a member by any identifying value it shares with a removed row.
        const IDENTIFYING: [&str; 7] = [
            "EMAIL",
            "PHONE",
            "MADID",
            "EXTERN_ID",
            "EMAIL_SHA256",
            "PHONE_SHA256",
            "MOBILE_ADVERTISER_ID",
        ];
        let gone: std::collections::HashSet<(String, String)> = valid_rows
            .iter()
            .flat_map(|r| {
                IDENTIFYING
                    .iter()
                    .filter_map(|k| r.get(*k).map(|v| (k.to_string(), v.clone())))
            })
            .collect();
        let exact: std::collections::HashSet<&BTreeMap<String, String>> =
            valid_rows.iter().collect();
        members.retain(|m| {
            !exact.contains(m)
                && !IDENTIFYING.iter().any(|k| {
                    m.get(*k)
                        .is_some_and(|v| gone.contains(&(k.to_string(), v.clone())))
                })
        });
    }
    let session_id = session
        .as_ref()
        .and_then(|s| s.get("session_id"))
        .map(|v| v.to_string())
        .unwrap_or_else(|| "0".into());
    st.uploads.push(Upload {
        method: method.to_string(),
        audience_id: id.to_string(),
        schema,
        rows: rows.clone(),
        session,
        token_via,
        num_invalid: invalid,
    });
    axum::Json(json!({
        "audience_id": id,
        "session_id": session_id,
        "num_received": rows.len(),
        "num_invalid_entries": invalid,
        "invalid_entry_samples": samples,
    }))
    .into_response()
}
