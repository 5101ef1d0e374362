//! A fake of HubSpot's CRM v3 objects API for contacts and companies, behaving like the real one
//! where a source plugin can tell: Bearer private-app token (401 `INVALID_AUTHENTICATION`),
//! `GET /crm/v3/objects/{type}` with `limit` ≤ 100, an opaque `after` cursor (a forged one is
//! refused), `properties` (unknown names ignored; `hs_object_id`, `createdate` and the
//! last-modified property always returned), `archived`; `POST /crm/v3/objects/{type}/search` with
//! `filterGroups` (≤ 5 groups, ≤ 10 filters a group, ≤ 25 in all), operators EQ/NEQ/LT/LTE/GT/GTE/
//! HAS_PROPERTY/NOT_HAS_PROPERTY on dates in epoch ms or ISO 8601, one sort, `limit` ≤ 200, and no
//! paging past 10,000 results; HubSpot's error body
//! `{"status":"error","message","correlationId","category"}`; `X-HubSpot-RateLimit-*` headers on
//! list calls (not on search, as HubSpot's docs say); 429 `RATE_LIMIT` bodies. Knobs: throttle the
//! next N requests (with or without `Retry-After`), force `Remaining`, 500s, and records the
//! search index does not show yet.
//!
//! What it refuses or hides, and where the real API says so (checked 2026-12-06):
//! - Paging a search past 10,000 results: 400 `VALIDATION_ERROR`. "The search endpoints are
//!   limited to 10,000 total results for any given query. Attempting to page beyond 10,000 will
//!   result in a 400 error" — https://developers.hubspot.com/docs/api-reference/2026-03/crm/search-the-crm
//!   (Limitations), as connectors meet it: `airbytehq/airbyte` issue #43317 (≥10,000 records of
//!   one `lastmodifieddate` loop forever at the cap), AWS Glue's HubSpot connector limitations.
//! - More than one sort: 400. HubSpot's search guide (same page, "Sorting") allows one sorting
//!   rule per search; the snapshot read on 2026-12-06 did not show that section, so this is
//!   unverified here. Either way a connector splits one timestamp by a filter on
//!   `hs_object_id` and a sort on it alone (`airbytehq/airbyte` PR #44899), which needs one.
//! - Search is eventually consistent: a record can reach the search index after newer ones were
//!   returned (`airbytehq/airbyte` PR #69203, 2025-11, lookback window; `estuary/connectors`
//!   PR #2210, 1-hour horizon). [`Fake::hide_from_search`] models it; the list endpoint, which
//!   is not served by the search index, shows such records.
//! - More than 5 filter groups, 10 filters a group or 25 in all: 400 (HubSpot changelog
//!   "Expanded Filtering Capabilities … Search API", 2024-08-26); a `limit` above 200 (search)
//!   or 100 (list): 400.

#![allow(dead_code)]

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State as AxState;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::Router;
use base64::Engine as _;
use serde_json::{json, Value};

#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub uri: String,
    pub query: Vec<(String, String)>,
    pub body: Value,
    pub authorization: Option<String>,
    pub status: u16,
}

impl Seen {
    pub fn param(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Debug)]
pub struct State {
    pub token: String,
    pub contacts: Vec<Value>,
    pub companies: Vec<Value>,
    pub requests: Vec<Seen>,
    /// Answer the next N authenticated requests with 429 of this policy.
    pub throttle: usize,
    pub throttle_policy: String,
    /// `Retry-After` seconds sent with those 429s.
    pub retry_after: Option<String>,
    /// `X-HubSpot-RateLimit-Remaining` to report instead of the computed value.
    pub remaining_override: Option<u32>,
    /// `X-HubSpot-RateLimit-Interval-Milliseconds`.
    pub interval_ms: u64,
    pub fail_500: usize,
    /// Ids the search index does not show yet (lag); the list endpoint shows them.
    pub search_hidden: HashSet<String>,
    counter: u64,
}

#[derive(Clone)]
pub struct Fake {
    pub addr: SocketAddr,
    pub state: Arc<Mutex<State>>,
}

impl Fake {
    pub fn host_port(&self) -> String {
        self.addr.to_string()
    }
    pub fn requests(&self) -> Vec<Seen> {
        self.state.lock().unwrap().requests.clone()
    }
    pub fn clear_requests(&self) {
        self.state.lock().unwrap().requests.clear();
    }
    pub fn add_contact(&self, c: Value) {
        self.state.lock().unwrap().contacts.push(c);
    }
    pub fn add_company(&self, c: Value) {
        self.state.lock().unwrap().companies.push(c);
    }
    /// Sets a contact property and its modification time, as an edit in HubSpot does.
    pub fn update_contact(&self, id: &str, property: &str, value: &str, modified: &str) {
        let mut s = self.state.lock().unwrap();
        let c = s
            .contacts
            .iter_mut()
            .find(|c| c["id"] == id)
            .expect("no such contact");
        c["properties"][property] = json!(value);
        c["properties"]["lastmodifieddate"] = json!(modified);
        c["updatedAt"] = json!(modified);
    }
    /// Keeps a record out of search results until [`Fake::index`] (HubSpot's index lag).
    pub fn hide_from_search(&self, id: &str) {
        self.state
            .lock()
            .unwrap()
            .search_hidden
            .insert(id.to_string());
    }
    /// The search index catches up with a hidden record.
    pub fn index(&self, id: &str) {
        self.state.lock().unwrap().search_hidden.remove(id);
    }
    pub fn throttle(&self, n: usize, policy: &str, retry_after: Option<&str>) {
        let mut s = self.state.lock().unwrap();
        s.throttle = n;
        s.throttle_policy = policy.to_string();
        s.retry_after = retry_after.map(str::to_string);
    }
}

/// A contact as HubSpot stores it (all property values are strings).
pub fn contact(id: &str, email: &str, first: &str, last: &str, modified: &str) -> Value {
    json!({
        "id": id,
        "properties": {
            "email": email, "firstname": first, "lastname": last, "phone": "+1 617 555 0100",
            "company": "Acme", "lifecyclestage": "customer", "hs_object_id": id,
            "createdate": "2023-01-01T00:00:00.000Z", "lastmodifieddate": modified
        },
        "createdAt": "2023-01-01T00:00:00.000Z", "updatedAt": modified, "archived": false
    })
}

pub fn company(id: &str, name: &str, domain: &str, modified: &str) -> Value {
    json!({
        "id": id,
        "properties": {
            "name": name, "domain": domain, "industry": "COMPUTER_SOFTWARE", "city": "Cambridge",
            "country": "United States", "numberofemployees": "250", "hs_object_id": id,
            "createdate": "2022-05-01T00:00:00.000Z", "hs_lastmodifieddate": modified
        },
        "createdAt": "2022-05-01T00:00:00.000Z", "updatedAt": modified, "archived": false
    })
}

pub async fn start(token: &str) -> Fake {
    let state = Arc::new(Mutex::new(State {
        token: token.to_string(),
        contacts: vec![],
        companies: vec![],
        requests: vec![],
        throttle: 0,
        throttle_policy: "TEN_SECONDLY_ROLLING".into(),
        retry_after: None,
        remaining_override: None,
        interval_ms: 10_000,
        fail_500: 0,
        search_hidden: HashSet::new(),
        counter: 0,
    }));
    let app = Router::new()
        .fallback(any(handle))
        .with_state(state.clone());
    let addr = crate::common::serve(app).await;
    Fake { addr, state }
}

pub fn start_in_background(token: &str) -> Fake {
    let token = token.to_string();
    crate::common::in_background(move || async move { start(&token).await })
}

fn correlation(n: u64) -> String {
    format!("c033cdaa-2c40-4a64-ae48-{n:012}")
}

fn error(status: StatusCode, category: &str, message: &str, n: u64) -> Response {
    (
        status,
        axum::Json(json!({"status": "error", "message": message, "correlationId": correlation(n), "category": category})),
    )
        .into_response()
}

fn modified_property(object_type: &str) -> &'static str {
    if object_type == "contacts" {
        "lastmodifieddate"
    } else {
        "hs_lastmodifieddate"
    }
}

/// Dates in filters and properties: epoch milliseconds or ISO 8601.
fn as_ms(v: &str) -> Option<i64> {
    if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
        return v.parse().ok();
    }
    chrono::DateTime::parse_from_rfc3339(v)
        .ok()
        .map(|d| d.timestamp_millis())
}

/// The object with only the asked properties (plus those HubSpot always sends).
fn shaped(object: &Value, object_type: &str, asked: Option<&[String]>) -> Value {
    let defaults: &[&str] = if object_type == "contacts" {
        &[
            "createdate",
            "email",
            "firstname",
            "hs_object_id",
            "lastmodifieddate",
            "lastname",
        ]
    } else {
        &[
            "createdate",
            "domain",
            "hs_lastmodifieddate",
            "hs_object_id",
            "name",
        ]
    };
    let mut props = serde_json::Map::new();
    let always = ["hs_object_id", "createdate", modified_property(object_type)];
    let wanted: Vec<String> = match asked {
        Some(a) => a
            .iter()
            .cloned()
            .chain(always.iter().map(|s| s.to_string()))
            .collect(),
        None => defaults.iter().map(|s| s.to_string()).collect(),
    };
    for name in wanted {
        // Unknown properties are silently left out; known but unset ones come back as null.
        if let Some(v) = object["properties"].get(&name) {
            props.insert(name, v.clone());
        } else if [
            "phone",
            "company",
            "lifecyclestage",
            "industry",
            "city",
            "country",
            "numberofemployees",
        ]
        .contains(&name.as_str())
        {
            props.insert(name, Value::Null);
        }
    }
    let mut out = object.clone();
    out["properties"] = Value::Object(props);
    out
}

async fn handle(
    AxState(state): AxState<Arc<Mutex<State>>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let query: Vec<(String, String)> =
        url::form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
            .into_owned()
            .collect();
    let mut s = state.lock().unwrap();
    s.counter += 1;
    let response = answer(&mut s, &method, &uri, &query, &headers, &body);
    let seen = Seen {
        method: method.to_string(),
        uri: uri.to_string(),
        query,
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
        authorization: headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
        status: response.status().as_u16(),
    };
    s.requests.push(seen);
    response
}

fn answer(
    s: &mut State,
    method: &Method,
    uri: &Uri,
    query: &[(String, String)],
    headers: &HeaderMap,
    body: &[u8],
) -> Response {
    let n = s.counter;
    // 1. Authentication.
    let auth = headers.get("authorization").and_then(|v| v.to_str().ok());
    match auth.and_then(|a| a.strip_prefix("Bearer ")) {
        None => return error(StatusCode::UNAUTHORIZED, "INVALID_AUTHENTICATION", "Authentication credentials not found. This API supports OAuth 2.0 authentication and you can find more details at https://developers.hubspot.com/docs/methods/auth/oauth-overview", n),
        Some(t) if t != s.token => return error(StatusCode::UNAUTHORIZED, "INVALID_AUTHENTICATION", "The access token provided is invalid or has expired.", n),
        Some(_) => {}
    }
    // 2. Route.
    let parts: Vec<&str> = uri.path().trim_start_matches('/').split('/').collect();
    let (object_type, search) = match (method.as_str(), parts.as_slice()) {
        ("GET", ["crm", "v3", "objects", t]) if *t == "contacts" || *t == "companies" => {
            (t.to_string(), false)
        }
        ("POST", ["crm", "v3", "objects", t, "search"])
            if *t == "contacts" || *t == "companies" =>
        {
            (t.to_string(), true)
        }
        _ => {
            return error(
                StatusCode::NOT_FOUND,
                "OBJECT_NOT_FOUND",
                &format!("Unable to route {} {}", method, uri.path()),
                n,
            )
        }
    };
    // 3. Rate limit and faults.
    if s.throttle > 0 {
        s.throttle -= 1;
        let policy = s.throttle_policy.clone();
        let mut r = (
            StatusCode::TOO_MANY_REQUESTS,
            axum::Json(json!({"status": "error", "message": format!("You have reached your {} limit.", policy.to_lowercase()),
                              "errorType": "RATE_LIMIT", "correlationId": correlation(n), "policyName": policy,
                              "groupName": "api-calls:1234"})),
        )
            .into_response();
        if let Some(after) = &s.retry_after {
            r.headers_mut()
                .insert("retry-after", after.parse().unwrap());
        }
        if !search {
            r.headers_mut().insert(
                "x-hubspot-ratelimit-interval-milliseconds",
                s.interval_ms.to_string().parse().unwrap(),
            );
        }
        return r;
    }
    if s.fail_500 > 0 {
        s.fail_500 -= 1;
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "INTERNAL_ERROR",
            "internal error",
            n,
        );
    }
    let objects = if object_type == "contacts" {
        &s.contacts
    } else {
        &s.companies
    };
    let modified = modified_property(&object_type);
    let mut response = if search {
        let Ok(req) = serde_json::from_slice::<Value>(body) else {
            return error(
                StatusCode::BAD_REQUEST,
                "VALIDATION_ERROR",
                "Invalid input JSON on line 1: the body is not JSON",
                n,
            );
        };
        let limit = req
            .get("limit")
            .map(|l| l.as_i64().unwrap_or(-1))
            .unwrap_or(10);
        if !(1..=200).contains(&limit) {
            return error(
                StatusCode::BAD_REQUEST,
                "VALIDATION_ERROR",
                "limit must be between 1 and 200",
                n,
            );
        }
        let groups = req
            .get("filterGroups")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let total_filters: usize = groups
            .iter()
            .map(|g| g["filters"].as_array().map_or(0, Vec::len))
            .sum();
        if groups.len() > 5
            || total_filters > 25
            || groups
                .iter()
                .any(|g| g["filters"].as_array().map_or(0, Vec::len) > 10)
        {
            return error(StatusCode::BAD_REQUEST, "VALIDATION_ERROR", "Too many filter groups or filters: at most 5 groups, 10 filters per group and 25 filters in all", n);
        }
        let offset = match req.get("after") {
            None | Some(Value::Null) => 0,
            Some(a) => match a
                .as_str()
                .and_then(|a| a.parse::<u64>().ok())
                .or_else(|| a.as_u64())
            {
                Some(o) if o >= 10_000 => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "VALIDATION_ERROR",
                        "paging beyond 10,000 results is not supported",
                        n,
                    )
                }
                Some(o) => o as usize,
                None => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "VALIDATION_ERROR",
                        "after must be a number",
                        n,
                    )
                }
            },
        };
        let mut filters: Vec<Vec<(String, String, Option<String>)>> = Vec::new();
        for g in &groups {
            let mut group = Vec::new();
            for f in g["filters"].as_array().cloned().unwrap_or_default() {
                let op = f["operator"].as_str().unwrap_or("").to_string();
                if ![
                    "EQ",
                    "NEQ",
                    "LT",
                    "LTE",
                    "GT",
                    "GTE",
                    "HAS_PROPERTY",
                    "NOT_HAS_PROPERTY",
                ]
                .contains(&op.as_str())
                {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "VALIDATION_ERROR",
                        &format!("Unsupported operator {op}"),
                        n,
                    );
                }
                let Some(prop) = f["propertyName"].as_str() else {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "VALIDATION_ERROR",
                        "filters need a propertyName",
                        n,
                    );
                };
                let value = f.get("value").map(|v| {
                    v.as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| v.to_string())
                });
                if value.is_none() && !op.ends_with("HAS_PROPERTY") {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "VALIDATION_ERROR",
                        &format!("filter on {prop} needs a value"),
                        n,
                    );
                }
                group.push((prop.to_string(), op, value));
            }
            filters.push(group);
        }
        let sorts = req
            .get("sorts")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        if sorts.len() > 1 {
            return error(
                StatusCode::BAD_REQUEST,
                "VALIDATION_ERROR",
                "only one sort is supported",
                n,
            );
        }
        let matches = |o: &Value| {
            filters.is_empty()
                || filters.iter().any(|g| {
                    g.iter().all(|(prop, op, value)| {
                        let have = o["properties"][prop.as_str()].as_str();
                        match op.as_str() {
                            "HAS_PROPERTY" => have.is_some(),
                            "NOT_HAS_PROPERTY" => have.is_none(),
                            _ => {
                                let (Some(have), Some(want)) = (have, value.as_deref()) else {
                                    return false;
                                };
                                let ord = match (as_ms(have), as_ms(want)) {
                                    (Some(a), Some(b)) => a.cmp(&b),
                                    _ => have.cmp(want),
                                };
                                match op.as_str() {
                                    "EQ" => ord.is_eq(),
                                    "NEQ" => ord.is_ne(),
                                    "LT" => ord.is_lt(),
                                    "LTE" => ord.is_le(),
                                    "GT" => ord.is_gt(),
                                    _ => ord.is_ge(),
                                }
                            }
                        }
                    })
                })
        };
        let hidden = &s.search_hidden;
        let mut found: Vec<&Value> = objects
            .iter()
            .filter(|o| !o["id"].as_str().is_some_and(|id| hidden.contains(id)))
            .filter(|o| matches(o))
            .collect();
        if let Some(sort) = sorts.first() {
            let prop = sort["propertyName"].as_str().unwrap_or("").to_string();
            let key = |o: &Value| {
                let v = o["properties"][prop.as_str()]
                    .as_str()
                    .unwrap_or("")
                    .to_string();
                (as_ms(&v).unwrap_or(i64::MIN), v)
            };
            found.sort_by_key(|o| key(o));
            if sort["direction"] == "DESCENDING" {
                found.reverse();
            }
        } else {
            found.sort_by_key(|o| {
                o["id"]
                    .as_str()
                    .and_then(|i| i.parse::<u64>().ok())
                    .unwrap_or(0)
            });
        }
        let asked: Option<Vec<String>> = req.get("properties").and_then(Value::as_array).map(|a| {
            a.iter()
                .filter_map(|p| p.as_str().map(str::to_string))
                .collect()
        });
        let page: Vec<Value> = found
            .iter()
            .skip(offset)
            .take(limit as usize)
            .map(|o| shaped(o, &object_type, asked.as_deref()))
            .collect();
        let mut out = json!({"total": found.len(), "results": page});
        if offset + (limit as usize) < found.len() {
            let next = (offset + limit as usize).to_string();
            out["paging"] = json!({"next": {"after": next}});
        }
        axum::Json(out).into_response()
    } else {
        let get = |name: &str| {
            query
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        let limit = match get("limit").map(|l| l.parse::<i64>()) {
            None => 10,
            Some(Ok(l)) if (1..=100).contains(&l) => l as usize,
            Some(_) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "VALIDATION_ERROR",
                    "limit must be between 1 and 100",
                    n,
                )
            }
        };
        let archived = get("archived") == Some("true");
        let after_id: u64 = match get("after") {
            None => 0,
            Some(a) => match base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(a)
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .and_then(|t| t.strip_prefix("id:").and_then(|i| i.parse().ok()))
            {
                Some(id) => id,
                None => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "VALIDATION_ERROR",
                        &format!("Invalid input JSON: `after` cursor {a} is not valid"),
                        n,
                    )
                }
            },
        };
        let asked: Option<Vec<String>> = get("properties").map(|p| {
            p.split(',')
                .map(|x| x.trim().to_string())
                .filter(|x| !x.is_empty())
                .collect()
        });
        let id_of = |o: &Value| {
            o["id"]
                .as_str()
                .and_then(|i| i.parse::<u64>().ok())
                .unwrap_or(0)
        };
        let mut found: Vec<&Value> = objects
            .iter()
            .filter(|o| o["archived"].as_bool().unwrap_or(false) == archived && id_of(o) > after_id)
            .collect();
        found.sort_by_key(|o| id_of(o));
        let page: Vec<Value> = found
            .iter()
            .take(limit)
            .map(|o| shaped(o, &object_type, asked.as_deref()))
            .collect();
        let mut out = json!({"results": page});
        if found.len() > limit {
            if let Some(last) = page.last() {
                let cursor = base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .encode(format!("id:{}", id_of(last)));
                out["paging"] =
                    json!({"next": {"after": cursor, "link": format!("?after={cursor}")}});
            }
        }
        let mut r = axum::Json(out).into_response();
        let remaining = s.remaining_override.unwrap_or(189);
        for (k, v) in [
            ("x-hubspot-ratelimit-daily", "250000".to_string()),
            ("x-hubspot-ratelimit-daily-remaining", "249000".to_string()),
            (
                "x-hubspot-ratelimit-interval-milliseconds",
                s.interval_ms.to_string(),
            ),
            ("x-hubspot-ratelimit-max", "190".to_string()),
            ("x-hubspot-ratelimit-remaining", remaining.to_string()),
            ("x-hubspot-ratelimit-secondly", "19".to_string()),
            ("x-hubspot-ratelimit-secondly-remaining", "18".to_string()),
        ] {
            r.headers_mut().insert(k, v.parse().unwrap());
        }
        r
    };
    response
        .headers_mut()
        .insert("x-hubspot-correlation-id", correlation(n).parse().unwrap());
    let _ = modified;
    response
}
