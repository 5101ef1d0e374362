//! A fake paginated JSON API with the three common paging styles, for the generic `http-json`
//! source. It is strict the way real APIs are: auth required, page sizes capped, opaque cursors
//! that must be ones it issued, and 429s with `Retry-After`.
//!
//! - `GET /v1/items?limit=N&cursor=C&updated_since=T` (Bearer token): `{"data": {"items": [...],
//!   "next_cursor": "..." | null}}`; `limit` 1-100, a cursor it did not issue → 400.
//! - `GET /v2/items?page=P&per_page=N` (`X-Api-Key: token`): `{"results": [...], "page": P}`;
//!   `per_page` 1-50, `page` ≥ 1.
//! - `GET /v3/items?page=P&per_page=N` (Bearer token): a bare array with a
//!   `Link: <http://HOST/v3/items?page=P+1&per_page=N>; rel="next"` header while more remain.
//!
//! Items are returned ordered by (`updated_at`, `id`); `updated_since` keeps items updated at or
//! after the time (inclusive, as many APIs do). Errors are `{"error": {"code", "message"}}`.
//!
//! Misbehaviour on request, for the hub's source-run caps: `endless` makes `/v1/items` an API
//! that never says it is done (past the stored items it makes up new ones, and every page has a
//! `next_cursor`, as a feed that keeps growing or a paging bug does), and `delay_ms` answers
//! every request that much later.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::extract::State as AxState;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::Router;
use base64::Engine as _;
use serde_json::{json, Value};

#[derive(Debug, Clone)]
pub struct Seen {
    pub uri: String,
    pub query: Vec<(String, String)>,
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

#[derive(Debug, Default)]
pub struct State {
    pub token: String,
    pub items: Vec<Value>,
    pub requests: Vec<Seen>,
    pub throttle: usize,
    pub retry_after: String,
    /// `http://127.0.0.1:PORT`, for the Link headers.
    pub base: String,
    /// `/v1/items` never ends: made-up items past the stored ones, always a `next_cursor`.
    pub endless: bool,
    /// Every answer waits this long.
    pub delay_ms: u64,
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
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
    pub fn requests(&self) -> Vec<Seen> {
        self.state.lock().unwrap().requests.clone()
    }
    pub fn clear_requests(&self) {
        self.state.lock().unwrap().requests.clear();
    }
    pub fn add_item(&self, item: Value) {
        self.state.lock().unwrap().items.push(item);
    }
    pub fn update_item(&self, id: &str, field: &str, value: Value, updated_at: &str) {
        let mut s = self.state.lock().unwrap();
        let item = s
            .items
            .iter_mut()
            .find(|i| i["id"] == id)
            .expect("no such item");
        item[field] = value;
        item["updated_at"] = json!(updated_at);
    }
    /// Makes `/v1/items` endless (see the module docs).
    pub fn endless(&self) {
        self.state.lock().unwrap().endless = true;
    }
    /// Answers every request `ms` milliseconds late.
    pub fn delay(&self, ms: u64) {
        self.state.lock().unwrap().delay_ms = ms;
    }
    pub fn throttle(&self, n: usize, retry_after: &str) {
        let mut s = self.state.lock().unwrap();
        s.throttle = n;
        s.retry_after = retry_after.to_string();
    }
}

pub fn item(id: &str, email: &str, updated_at: &str) -> Value {
    json!({"id": id, "email": email, "name": format!("Item {id}"), "plan": "basic", "updated_at": updated_at})
}

pub async fn start(token: &str) -> Fake {
    let state = Arc::new(Mutex::new(State {
        token: token.to_string(),
        ..State::default()
    }));
    let app = Router::new()
        .fallback(any(handle))
        .with_state(state.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    state.lock().unwrap().base = format!("http://{addr}");
    tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    Fake { addr, state }
}

pub fn start_in_background(token: &str) -> Fake {
    let token = token.to_string();
    crate::common::in_background(move || async move { start(&token).await })
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        axum::Json(json!({"error": {"code": code, "message": message}})),
    )
        .into_response()
}

fn time(v: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(v)
        .ok()
        .map(|d| d.timestamp_millis())
}

async fn handle(
    AxState(state): AxState<Arc<Mutex<State>>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let query: Vec<(String, String)> =
        url::form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
            .into_owned()
            .collect();
    let delay = state.lock().unwrap().delay_ms;
    if delay > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
    }
    let mut s = state.lock().unwrap();
    let response = answer(&mut s, &method, &uri, &query, &headers);
    s.requests.push(Seen {
        uri: uri.to_string(),
        query,
        status: response.status().as_u16(),
    });
    response
}

fn answer(
    s: &mut State,
    method: &Method,
    uri: &Uri,
    query: &[(String, String)],
    headers: &HeaderMap,
) -> Response {
    let get = |name: &str| {
        query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let style = match (method.as_str(), uri.path()) {
        ("GET", "/v1/items") => 1,
        ("GET", "/v2/items") => 2,
        ("GET", "/v3/items") => 3,
        _ => {
            return error(
                StatusCode::NOT_FOUND,
                "not_found",
                &format!("no route for {} {}", method, uri.path()),
            )
        }
    };
    let authorised = match style {
        2 => header("x-api-key") == Some(s.token.as_str()),
        _ => header("authorization") == Some(format!("Bearer {}", s.token).as_str()),
    };
    if !authorised {
        return error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or invalid credentials",
        );
    }
    let since = match get("updated_since") {
        None => None,
        Some(t) => match time(t) {
            Some(ms) => Some(ms),
            None => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "invalid_parameter",
                    "updated_since must be an RFC 3339 time",
                )
            }
        },
    };
    let (size_param, max) = if style == 2 {
        ("per_page", 50)
    } else if style == 1 {
        ("limit", 100)
    } else {
        ("per_page", 100)
    };
    let size = match get(size_param).map(str::parse::<usize>) {
        None => 10,
        Some(Ok(n)) if (1..=max).contains(&n) => n,
        Some(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_parameter",
                &format!("{size_param} must be between 1 and {max}"),
            )
        }
    };
    let offset = if style == 1 {
        match get("cursor") {
            None => 0,
            Some(c) => match base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(c)
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .and_then(|t| {
                    t.strip_prefix("offset:")
                        .and_then(|o| o.parse::<usize>().ok())
                }) {
                Some(o) => o,
                None => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "invalid_cursor",
                        "cursor is malformed or expired",
                    )
                }
            },
        }
    } else {
        match get("page").map(str::parse::<usize>) {
            None => 0,
            Some(Ok(p)) if p >= 1 => (p - 1) * size,
            Some(_) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "invalid_parameter",
                    "page must be a number from 1",
                )
            }
        }
    };
    if s.throttle > 0 {
        s.throttle -= 1;
        let mut r = error(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "too many requests",
        );
        r.headers_mut()
            .insert("retry-after", s.retry_after.parse().unwrap());
        return r;
    }
    let mut items: Vec<&Value> = s
        .items
        .iter()
        .filter(|i| since.is_none_or(|t| i["updated_at"].as_str().and_then(time).unwrap_or(0) >= t))
        .collect();
    items.sort_by_key(|i| {
        (
            i["updated_at"].as_str().and_then(time).unwrap_or(0),
            i["id"].as_str().unwrap_or("").to_string(),
        )
    });
    let mut page: Vec<Value> = items
        .iter()
        .skip(offset)
        .take(size)
        .map(|v| (*v).clone())
        .collect();
    let mut more = offset + page.len() < items.len();
    if s.endless && style == 1 {
        for n in offset + page.len()..offset + size {
            let at = chrono::DateTime::from_timestamp(1_717_200_000 + n as i64, 0)
                .unwrap()
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
            page.push(item(
                &format!("gen_{n:06}"),
                &format!("gen{n}@example.com"),
                &at,
            ));
        }
        more = true;
    }
    match style {
        1 => {
            let next = more.then(|| {
                base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .encode(format!("offset:{}", offset + page.len()))
            });
            axum::Json(json!({"data": {"items": page, "next_cursor": next}})).into_response()
        }
        2 => axum::Json(json!({"results": page, "page": offset / size + 1})).into_response(),
        _ => {
            let mut r = axum::Json(Value::Array(page)).into_response();
            if more {
                let next = format!(
                    "<{}/v3/items?page={}&per_page={size}>; rel=\"next\"",
                    s.base,
                    offset / size + 2
                );
                r.headers_mut().insert("link", next.parse().unwrap());
            }
            r
        }
    }
}
