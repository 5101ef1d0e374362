//! A fake of TikTok's Business API v1.3 for audiences, answering as TikTok does: HTTP 200 with the
//! envelope `{"code", "message", "request_id", "data"}`, a non-zero `code` for every logical error.
//!
//! - `POST /open_api/v1.3/segment/mapping/`: `Access-Token` header (no `Bearer`): missing →
//!   40104, wrong → 40105; JSON body; `advertiser_ids` must be the token's advertisers (40001
//!   otherwise); `action` `add` | `delete`; `id_schema` from the documented set, no repeats;
//!   `batch_data` non-empty, at most [`MAX_ROWS`] rows, each row as long as `id_schema`, each
//!   entry `{}` or `{"id": 64 lowercase hex, "audience_ids": [known audience]}`, at least one id per
//!   row (40002 otherwise). Adds and removes the hashes per audience and schema.
//! - `GET /open_api/v1.3/advertiser/info/?advertiser_ids=["…"]` and
//!   `GET /open_api/v1.3/dmp/custom_audience/get/?advertiser_id=…&custom_audience_ids=["…"]`.
//!
//! Each refusal and where it comes from (checked 2026-12-06):
//! - Everything answers HTTP 200 with a non-zero `code`; 40104 (no `Access-Token`) and 40105
//!   ("Access token is incorrect or has been revoked."): Segment treats `code !== 0` as failure
//!   (`segmentio/action-destinations` `tiktok-audiences/functions.ts`, 2026-08-21), RudderStack
//!   sends `Access-Token` without `Bearer` (`rudderlabs/rudder-transformer`
//!   `src/v0/destinations/tiktok_audience/recordTransform.ts`, 2026-08-06).
//! - `id_schema` values: `EMAIL_SHA256`, `PHONE_SHA256`, `IDFA_SHA256`, `AAID_SHA256`,
//!   `IDFA_MD5`, `AAID_MD5` (RudderStack `tiktok_audience/config.ts`; Braze's TikTok sync sends
//!   the four SHA-256 ones); `GAID_*` kept as accepted since TikTok's help pages name GAID, though
//!   no connector sends it. A `*_SHA256` id must be 64 lowercase hex and a `*_MD5` id 32
//!   lowercase hex (40002): TikTok's customer-file pages ask for hashes, lower case.
//! - Rate limit: HTTP 200, code 40100 "Too many requests", no `Retry-After` (api-contracts §5a;
//!   TikTok publishes QPS/QPM/QPD limits per app, not headers).
//! - The phone form inside a hash cannot be seen by TikTok or the fake: which form matches
//!   (digits vs `+E.164`) is documented in the plugin README, not enforced here.
//!
//! Knobs: [`Fake::rate_limit_next`] (code 40100), [`Fake::code_next`] (any code and message),
//! [`Fake::http_next`] (a raw HTTP status such as 500).

#![allow(dead_code)]

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::Router;
use serde_json::{json, Value};

/// Rows per request the fake accepts (TikTok publishes no limit; the plugin sends at most 1,000).
pub const MAX_ROWS: usize = 1000;

const SCHEMAS: &[&str] = &[
    "EMAIL_SHA256",
    "PHONE_SHA256",
    "IDFA_SHA256",
    "GAID_SHA256",
    "AAID_SHA256",
    "IDFA_MD5",
    "AAID_MD5",
    "GAID_MD5",
];

#[derive(Debug, Clone)]
enum Fault {
    Code(i64, String),
    Http(u16, String),
}

#[derive(Default)]
struct Inner {
    token: String,
    advertiser: String,
    audiences: Vec<String>,
    /// (audience, id_schema entry) -> hashes.
    members: HashMap<(String, String), BTreeSet<String>>,
    bodies: Vec<Value>,
    faults: VecDeque<Fault>,
    requests: usize,
}

#[derive(Clone)]
pub struct Fake {
    pub addr: SocketAddr,
    inner: Arc<Mutex<Inner>>,
}

pub async fn start(token: &str, advertiser: &str, audiences: &[&str]) -> Fake {
    let inner = Arc::new(Mutex::new(Inner {
        token: token.to_string(),
        advertiser: advertiser.to_string(),
        audiences: audiences.iter().map(|a| a.to_string()).collect(),
        ..Inner::default()
    }));
    let app = Router::new()
        .fallback(any(handle))
        .with_state(inner.clone());
    let addr = crate::common::serve(app).await;
    Fake { addr, inner }
}

pub fn start_in_background(token: &str, advertiser: &str, audiences: &[&str]) -> Fake {
    let (token, advertiser) = (token.to_string(), advertiser.to_string());
    let audiences: Vec<String> = audiences.iter().map(|a| a.to_string()).collect();
    crate::common::in_background(move || async move {
        let refs: Vec<&str> = audiences.iter().map(String::as_str).collect();
        start(&token, &advertiser, &refs).await
    })
}

impl Fake {
    pub fn host_port(&self) -> String {
        self.addr.to_string()
    }

    /// Hashes in `audience` under `schema` (e.g. `EMAIL_SHA256`).
    pub fn members(&self, audience: &str, schema: &str) -> BTreeSet<String> {
        self.inner
            .lock()
            .unwrap()
            .members
            .get(&(audience.to_string(), schema.to_string()))
            .cloned()
            .unwrap_or_default()
    }

    /// Accepted segment-mapping bodies.
    pub fn bodies(&self) -> Vec<Value> {
        self.inner.lock().unwrap().bodies.clone()
    }

    pub fn requests(&self) -> usize {
        self.inner.lock().unwrap().requests
    }

    /// The next `n` authorised requests answer code 40100.
    pub fn rate_limit_next(&self, n: usize) {
        self.code_next(n, 40100, "Too many requests. Please retry in some time.");
    }

    pub fn code_next(&self, n: usize, code: i64, message: &str) {
        let mut inner = self.inner.lock().unwrap();
        for _ in 0..n {
            inner
                .faults
                .push_back(Fault::Code(code, message.to_string()));
        }
    }

    pub fn http_next(&self, n: usize, status: u16, body: &str) {
        let mut inner = self.inner.lock().unwrap();
        for _ in 0..n {
            inner
                .faults
                .push_back(Fault::Http(status, body.to_string()));
        }
    }
}

fn envelope(code: i64, message: &str, data: Value) -> Response {
    let n = REQUEST_IDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    axum::Json(json!({
        "code": code,
        "message": message,
        "request_id": format!("2026010112000{n:06}"),
        "data": data,
    }))
    .into_response()
}

static REQUEST_IDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

fn bad(message: &str) -> Response {
    envelope(40002, message, json!({}))
}

fn is_lower_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

async fn handle(
    State(inner): State<Arc<Mutex<Inner>>>,
    method: Method,
    uri: Uri,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut inner = inner.lock().unwrap();
    inner.requests += 1;
    let path = uri.path();
    let known = matches!(
        (method.as_str(), path),
        ("POST", "/open_api/v1.3/segment/mapping/")
            | ("GET", "/open_api/v1.3/advertiser/info/")
            | ("GET", "/open_api/v1.3/dmp/custom_audience/get/")
    );
    if !known {
        return (StatusCode::NOT_FOUND, "404 page not found").into_response();
    }
    match headers.get("access-token").and_then(|v| v.to_str().ok()) {
        None | Some("") => {
            return envelope(
                40104,
                "Access token is null, you should pass it in the header.",
                json!({}),
            )
        }
        Some(t) if t != inner.token => {
            return envelope(
                40105,
                "Access token is incorrect or has been revoked.",
                json!({}),
            )
        }
        Some(_) => {}
    }
    if let Some(fault) = inner.faults.pop_front() {
        return match fault {
            Fault::Code(code, message) => envelope(code, &message, json!({})),
            Fault::Http(status, body) => {
                (StatusCode::from_u16(status).unwrap(), body).into_response()
            }
        };
    }
    match path {
        "/open_api/v1.3/advertiser/info/" => {
            let ids: Vec<String> = query
                .get("advertiser_ids")
                .and_then(|v| serde_json::from_str(v).ok())
                .unwrap_or_default();
            if ids.is_empty() {
                return bad("advertiser_ids: Missing data for required field.");
            }
            if ids.iter().any(|id| *id != inner.advertiser) {
                return envelope(
                    40001,
                    "No permission to operate advertiser, please confirm the advertiser authorization.",
                    json!({}),
                );
            }
            envelope(
                0,
                "OK",
                json!({"list": [{"advertiser_id": inner.advertiser, "name": "Fake Advertiser", "status": "STATUS_ENABLE"}]}),
            )
        }
        "/open_api/v1.3/dmp/custom_audience/get/" => {
            if query.get("advertiser_id") != Some(&inner.advertiser) {
                return envelope(40001, "No permission to operate advertiser.", json!({}));
            }
            let ids: Vec<String> = query
                .get("custom_audience_ids")
                .and_then(|v| serde_json::from_str(v).ok())
                .unwrap_or_default();
            let list: Vec<Value> = ids
                .iter()
                .filter(|id| inner.audiences.contains(id))
                .map(|id| json!({"audience_id": id, "name": format!("Audience {id}"), "is_valid": true}))
                .collect();
            envelope(0, "OK", json!({"list": list}))
        }
        _ => mapping(&mut inner, &body),
    }
}

fn mapping(inner: &mut Inner, body: &[u8]) -> Response {
    let Ok(body) = serde_json::from_slice::<Value>(body) else {
        return bad("Invalid JSON body.");
    };
    let advertisers = body["advertiser_ids"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if advertisers.is_empty() {
        return bad("advertiser_ids: Missing data for required field.");
    }
    if advertisers
        .iter()
        .any(|a| a.as_str() != Some(inner.advertiser.as_str()))
    {
        return envelope(
            40001,
            "No permission to operate advertiser, please confirm the advertiser authorization.",
            json!({}),
        );
    }
    let action = body["action"].as_str().unwrap_or("");
    if action != "add" && action != "delete" {
        return bad("action: Must be one of: add, delete.");
    }
    let Some(schema) = body["id_schema"].as_array() else {
        return bad("id_schema: Missing data for required field.");
    };
    let schema: Vec<&str> = schema.iter().filter_map(Value::as_str).collect();
    if schema.is_empty() || schema.iter().any(|s| !SCHEMAS.contains(s)) {
        return bad("id_schema: Invalid value.");
    }
    if schema.iter().collect::<BTreeSet<_>>().len() != schema.len() {
        return bad("id_schema: Duplicate value.");
    }
    let Some(rows) = body["batch_data"].as_array() else {
        return bad("batch_data: Missing data for required field.");
    };
    if rows.is_empty() {
        return bad("batch_data: Length must be at least 1.");
    }
    if rows.len() > MAX_ROWS {
        return bad(&format!("batch_data: Length must be at most {MAX_ROWS}."));
    }
    let mut changes = Vec::new();
    for (r, row) in rows.iter().enumerate() {
        let Some(entries) = row.as_array() else {
            return bad(&format!("batch_data[{r}]: Not a valid list."));
        };
        if entries.len() != schema.len() {
            return bad(&format!(
                "batch_data[{r}]: length {} does not match id_schema length {}.",
                entries.len(),
                schema.len()
            ));
        }
        let mut ids = 0;
        for (k, entry) in entries.iter().enumerate() {
            let Some(obj) = entry.as_object() else {
                return bad(&format!("batch_data[{r}][{k}]: Not a valid object."));
            };
            if obj.is_empty() {
                continue;
            }
            let id = obj.get("id").and_then(Value::as_str).unwrap_or("");
            if schema[k].ends_with("SHA256") && !is_lower_hex(id, 64) {
                return bad(&format!(
                    "batch_data[{r}][{k}]: id must be a lowercase SHA256 hex digest for {}.",
                    schema[k]
                ));
            }
            if schema[k].ends_with("MD5") && !is_lower_hex(id, 32) {
                return bad(&format!(
                    "batch_data[{r}][{k}]: id must be a lowercase MD5 hex digest for {}.",
                    schema[k]
                ));
            }
            let audiences = obj
                .get("audience_ids")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            if audiences.is_empty() {
                return bad(&format!("batch_data[{r}][{k}]: audience_ids is required."));
            }
            for a in &audiences {
                let shown = a
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| a.to_string());
                let Some(a) = a
                    .as_str()
                    .filter(|a| inner.audiences.iter().any(|x| x == a))
                else {
                    return bad(&format!("Audience {shown} does not exist."));
                };
                changes.push((a.to_string(), schema[k].to_string(), id.to_string()));
            }
            ids += 1;
        }
        if ids == 0 {
            return bad(&format!("batch_data[{r}]: at least one id is required."));
        }
    }
    for (audience, schema, id) in changes {
        let set = inner.members.entry((audience, schema)).or_default();
        if action == "add" {
            set.insert(id);
        } else {
            set.remove(&id);
        }
    }
    inner.bodies.push(body);
    envelope(0, "OK", json!({}))
}
