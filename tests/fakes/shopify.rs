//! A fake of Shopify's Admin REST API (`GET /admin/api/{version}/customers.json` and
//! `orders.json`) for one shop, behaving like the real one where a source plugin can tell:
//! `X-Shopify-Access-Token` auth with Shopify's 401 text, `limit` 1-250 (default 50), cursor
//! pagination through `Link: <...page_info=...>; rel="next"` headers whose `page_info` carries the
//! filters (so only `limit` and `fields` may accompany it, and a forged one is refused),
//! `updated_at_min/max`, `created_at_min/max`, `since_id`, `ids`, `order=FIELD asc|desc`, orders'
//! `status` (default `open`), Shopify's `{"errors": ...}` shapes, and the leaky bucket: 40 calls
//! leaking 2 per second, reported in `X-Shopify-Shop-Api-Call-Limit`, 429 with
//! `Retry-After: 2.0` when full. Knobs: fill the bucket, throttle the next N requests, 500s,
//! the supported API versions.
//!
//! API versions, as Shopify serves them (checked 2026-12-06): every response names the version
//! that served it in `X-Shopify-API-Version`; a request for a version past its support window is
//! not refused but answered as the oldest supported version ("Shopify falls forward when your
//! selected version becomes inaccessible", https://shopify.dev/docs/api/usage/versioning;
//! "Requests for the 2019-04 or 2019-07 versions will no longer receive them. Instead, these
//! requests receive version 2019-10", https://shopify.dev/changelog/api-versions-2019-04-and-2019-10-upcoming-end-of-support;
//! 2025-07 stopped being served on 2026-07-16 and pinned apps silently got 2025-10,
//! https://dev.to/flarecanary/shopify-retires-api-version-2025-07-on-july-16-pinned-apps-dont-error-they-silently-fall-2hfi).
//! Each stable version is supported for at least 12 months, so on 2026-12-06 the supported
//! ones are 2026-01, 2026-04, 2026-07 and 2026-10 ([`SUPPORTED`]).

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::State as AxState;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::Router;
use base64::Engine as _;
use serde_json::{json, Value};

pub const BUCKET_SIZE: f64 = 40.0;
/// Stable versions Shopify serves as asked (December 2026), oldest first.
pub const SUPPORTED: &[&str] = &["2026-01", "2026-04", "2026-07", "2026-10"];
pub const LEAK_PER_SECOND: f64 = 2.0;

#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub uri: String,
    pub query: Vec<(String, String)>,
    pub token: Option<String>,
    pub status: u16,
    /// The version that served it (`X-Shopify-API-Version`).
    pub api_version: Option<String>,
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
    pub shop: String,
    pub token: String,
    pub customers: Vec<Value>,
    pub orders: Vec<Value>,
    pub requests: Vec<Seen>,
    /// Calls in the leaky bucket, as of `leaked_at`.
    pub bucket: f64,
    pub leaked_at: Instant,
    /// Answer the next N authenticated requests with 429 whatever the bucket says.
    pub throttle: usize,
    /// Answer the next N authenticated requests with 500.
    pub fail_500: usize,
    /// Versions served as asked, oldest first; older ones are answered as the oldest.
    pub supported: Vec<String>,
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
    pub fn add_customer(&self, c: Value) {
        self.state.lock().unwrap().customers.push(c);
    }
    pub fn add_order(&self, o: Value) {
        self.state.lock().unwrap().orders.push(o);
    }
    /// Changes a customer in place (and its `updated_at`), as an edit in the Shopify admin does.
    pub fn update_customer(&self, id: u64, field: &str, value: Value, updated_at: &str) {
        let mut s = self.state.lock().unwrap();
        let c = s
            .customers
            .iter_mut()
            .find(|c| c["id"] == id)
            .expect("no such customer");
        c[field] = value;
        c["updated_at"] = json!(updated_at);
    }
    /// Sets the bucket to `used` calls.
    pub fn fill_bucket(&self, used: f64) {
        let mut s = self.state.lock().unwrap();
        s.bucket = used;
        s.leaked_at = Instant::now();
    }
}

/// A customer as Shopify returns it.
pub fn customer(id: u64, email: &str, first: &str, last: &str, updated_at: &str) -> Value {
    json!({
        "id": id, "email": email, "created_at": "2023-06-01T09:00:00-04:00", "updated_at": updated_at,
        "first_name": first, "last_name": last, "orders_count": 1, "state": "enabled", "total_spent": "199.00",
        "last_order_id": null, "note": null, "verified_email": true, "multipass_identifier": null,
        "tax_exempt": false, "tags": "vip", "last_order_name": null, "currency": "USD", "phone": "+16135551111",
        "addresses": [], "email_marketing_consent": {"state": "subscribed", "opt_in_level": "single_opt_in", "consent_updated_at": null},
        "sms_marketing_consent": null, "admin_graphql_api_id": format!("gid://shopify/Customer/{id}"),
        "default_address": {"id": id + 1, "customer_id": id, "city": "Ottawa", "country_code": "CA", "default": true}
    })
}

/// An order as Shopify returns it: `items` line items of 19.99 each, quantity 1.
pub fn order(
    id: u64,
    number: u64,
    customer_id: u64,
    email: &str,
    items: usize,
    updated_at: &str,
) -> Value {
    let line_items: Vec<Value> = (0..items)
        .map(|i| json!({"id": id * 10 + i as u64, "product_id": 632910392 + i as u64, "variant_id": 808950810 + i as u64,
                         "sku": format!("SKU-{i}"), "name": format!("Product {i}"), "title": format!("Product {i}"),
                         "price": "19.99", "quantity": 1}))
        .collect();
    let total = format!("{:.2}", 19.99 * items as f64);
    json!({
        "id": id, "admin_graphql_api_id": format!("gid://shopify/Order/{id}"), "name": format!("#{number}"),
        "order_number": number, "email": email, "contact_email": email, "created_at": updated_at, "updated_at": updated_at,
        "processed_at": updated_at, "cancelled_at": null, "cancel_reason": null, "closed_at": null, "currency": "USD",
        "financial_status": "paid", "fulfillment_status": null, "total_price": total, "subtotal_price": total,
        "total_tax": "0.00", "line_items": line_items,
        "customer": {"id": customer_id, "email": email}
    })
}

pub async fn start(shop: &str, token: &str) -> Fake {
    let state = Arc::new(Mutex::new(State {
        shop: shop.to_string(),
        token: token.to_string(),
        customers: vec![],
        orders: vec![],
        requests: vec![],
        bucket: 0.0,
        leaked_at: Instant::now(),
        throttle: 0,
        fail_500: 0,
        supported: SUPPORTED.iter().map(|v| v.to_string()).collect(),
    }));
    let app = Router::new()
        .fallback(any(handle))
        .with_state(state.clone());
    let addr = crate::common::serve(app).await;
    Fake { addr, state }
}

pub fn start_in_background(shop: &str, token: &str) -> Fake {
    let (shop, token) = (shop.to_string(), token.to_string());
    crate::common::in_background(move || async move { start(&shop, &token).await })
}

fn errors(status: StatusCode, errors: Value) -> Response {
    (status, axum::Json(json!({ "errors": errors }))).into_response()
}

fn ts(v: &Value, field: &str) -> i64 {
    v[field]
        .as_str()
        .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
        .map(|d| d.timestamp())
        .unwrap_or(0)
}

/// What a `page_info` carries: the first request's filters and where the last page ended.
fn encode_page_info(filters: &[(String, String)], last: (i64, u64), direction: &str) -> String {
    let v = json!({"filters": filters, "last_value": last.0, "last_id": last.1, "direction": direction});
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
}

/// What a `page_info` token carries: the list's filters, the position after which the next page
/// starts (`updated_at`, id) and the sort direction.
type PageInfo = (Vec<(String, String)>, (i64, u64), String);

fn decode_page_info(s: &str) -> Option<PageInfo> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s)
        .ok()?;
    let v: Value = serde_json::from_slice(&bytes).ok()?;
    let filters = serde_json::from_value(v["filters"].clone()).ok()?;
    Some((
        filters,
        (v["last_value"].as_i64()?, v["last_id"].as_u64()?),
        v["direction"].as_str()?.to_string(),
    ))
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
    let mut s = state.lock().unwrap();
    let mut response = answer(&mut s, &method, &uri, &query, &headers);
    let served = served_version(&s.supported, uri.path());
    if let Some(v) = &served {
        response
            .headers_mut()
            .insert("x-shopify-api-version", v.parse().unwrap());
    }
    let used = s.bucket.ceil() as u64;
    if response.status() != StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(
            "x-shopify-shop-api-call-limit",
            format!("{used}/{}", BUCKET_SIZE as u64).parse().unwrap(),
        );
    }
    let seen = Seen {
        method: method.to_string(),
        uri: uri.to_string(),
        query,
        token: headers
            .get("x-shopify-access-token")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
        status: response.status().as_u16(),
        api_version: served,
    };
    s.requests.push(seen);
    response
}

/// The version that answers a request for `/admin/api/{version}/...`: itself while supported (or
/// newer, a release candidate), else the oldest supported one — Shopify falls forward.
fn served_version(supported: &[String], path: &str) -> Option<String> {
    let asked = path.strip_prefix("/admin/api/")?.split('/').next()?;
    let oldest = supported.first()?;
    Some(if asked < oldest.as_str() {
        oldest.clone()
    } else {
        asked.to_string()
    })
}

fn answer(
    s: &mut State,
    method: &Method,
    uri: &Uri,
    query: &[(String, String)],
    headers: &HeaderMap,
) -> Response {
    // 1. Authentication.
    let token = headers
        .get("x-shopify-access-token")
        .and_then(|v| v.to_str().ok());
    if token != Some(s.token.as_str()) {
        return errors(
            StatusCode::UNAUTHORIZED,
            json!("[API] Invalid API key or access token (unrecognized login or wrong password)"),
        );
    }
    // 2. The leaky bucket: leak, then take a slot or refuse.
    let now = Instant::now();
    s.bucket =
        (s.bucket - now.duration_since(s.leaked_at).as_secs_f64() * LEAK_PER_SECOND).max(0.0);
    s.leaked_at = now;
    if s.throttle > 0 || s.bucket + 1.0 > BUCKET_SIZE {
        s.throttle = s.throttle.saturating_sub(1);
        let mut r = errors(
            StatusCode::TOO_MANY_REQUESTS,
            json!("Exceeded 2 calls per second for api client. Reduce request rates to resume uninterrupted service."),
        );
        r.headers_mut()
            .insert("retry-after", "2.0".parse().unwrap());
        return r;
    }
    s.bucket += 1.0;
    if s.fail_500 > 0 {
        s.fail_500 -= 1;
        return errors(
            StatusCode::INTERNAL_SERVER_ERROR,
            json!("Internal Server Error"),
        );
    }
    // 3. Method and path.
    let path = uri.path();
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let resource = match (method.as_str(), parts.as_slice()) {
        ("GET", ["admin", "api", version, file])
            if version.len() == 7
                && version.as_bytes()[4] == b'-'
                && (*file == "customers.json" || *file == "orders.json") =>
        {
            file.trim_end_matches(".json").to_string()
        }
        _ => return errors(StatusCode::NOT_FOUND, json!("Not Found")),
    };
    // 4. Parameters.
    let get = |name: &str| {
        query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let limit = match get("limit").map(|l| l.parse::<i64>()) {
        None => 50,
        Some(Ok(n)) if (1..=250).contains(&n) => n as usize,
        Some(_) => {
            return errors(
                StatusCode::BAD_REQUEST,
                json!({"limit": "Limit must be between 1 and 250"}),
            )
        }
    };
    let (filters, after, direction) = match get("page_info") {
        Some(page_info) => {
            if let Some((extra, _)) = query
                .iter()
                .find(|(k, _)| !matches!(k.as_str(), "page_info" | "limit" | "fields"))
            {
                return errors(
                    StatusCode::BAD_REQUEST,
                    json!({"page_info": format!("cannot be combined with `{extra}`: only limit and fields may be sent with page_info")}),
                );
            }
            match decode_page_info(page_info) {
                Some((f, last, d)) => (f, Some(last), d),
                None => {
                    return errors(
                        StatusCode::BAD_REQUEST,
                        json!({"page_info": "Invalid value."}),
                    )
                }
            }
        }
        None => (
            query
                .iter()
                .filter(|(k, _)| !matches!(k.as_str(), "limit" | "fields"))
                .cloned()
                .collect(),
            None,
            "next".to_string(),
        ),
    };
    let filter = |name: &str| {
        filters
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let mut bounds = Vec::new();
    for name in [
        "updated_at_min",
        "updated_at_max",
        "created_at_min",
        "created_at_max",
    ] {
        if let Some(v) = filter(name) {
            match chrono::DateTime::parse_from_rfc3339(v) {
                Ok(d) => bounds.push((name, d.timestamp())),
                Err(_) => {
                    return errors(
                        StatusCode::BAD_REQUEST,
                        json!({ name: "is not a valid date" }),
                    )
                }
            }
        }
    }
    let since_id: u64 = filter("since_id").and_then(|v| v.parse().ok()).unwrap_or(0);
    let ids: Option<Vec<u64>> =
        filter("ids").map(|v| v.split(',').filter_map(|i| i.trim().parse().ok()).collect());
    let status = filter("status").unwrap_or("open");
    let (order_field, descending) =
        match filter("order").map(|o| o.split_whitespace().collect::<Vec<_>>()) {
            Some(o)
                if o.len() == 2
                    && ["updated_at", "created_at", "id"].contains(&o[0])
                    && ["asc", "desc"].contains(&o[1]) =>
            {
                (o[0].to_string(), o[1] == "desc")
            }
            _ => ("id".to_string(), false),
        };
    let source = if resource == "customers" {
        &s.customers
    } else {
        &s.orders
    };
    let key = |v: &Value| -> (i64, u64) {
        let id = v["id"].as_u64().unwrap_or(0);
        if order_field == "id" {
            (id as i64, id)
        } else {
            (ts(v, &order_field), id)
        }
    };
    let mut items: Vec<&Value> = source
        .iter()
        .filter(|v| {
            bounds.iter().all(|(name, t)| match *name {
                "updated_at_min" => ts(v, "updated_at") >= *t,
                "updated_at_max" => ts(v, "updated_at") <= *t,
                "created_at_min" => ts(v, "created_at") >= *t,
                _ => ts(v, "created_at") <= *t,
            }) && v["id"].as_u64().unwrap_or(0) > since_id
                && ids
                    .as_ref()
                    .is_none_or(|ids| ids.contains(&v["id"].as_u64().unwrap_or(0)))
                && (resource != "orders"
                    || match status {
                        "any" => true,
                        "cancelled" => !v["cancelled_at"].is_null(),
                        "closed" => !v["closed_at"].is_null(),
                        _ => v["cancelled_at"].is_null() && v["closed_at"].is_null(),
                    })
        })
        .collect();
    items.sort_by_key(|v| key(v));
    if descending {
        items.reverse();
    }
    let forward = direction == "next";
    if let Some(last) = after {
        items.retain(|v| {
            let k = key(v);
            let beyond = if descending { k < last } else { k > last };
            if forward {
                beyond
            } else {
                !beyond && k != last
            }
        });
    }
    let page: Vec<Value> = if forward {
        items.iter().take(limit).map(|v| (*v).clone()).collect()
    } else {
        items[items.len().saturating_sub(limit)..]
            .iter()
            .map(|v| (*v).clone())
            .collect()
    };
    let has_next = if forward {
        items.len() > page.len()
    } else {
        true
    };
    let base = format!("https://{}{}", s.shop, path);
    let mut links = Vec::new();
    if after.is_some() {
        if let Some(first) = page.first() {
            links.push(format!(
                "<{base}?limit={limit}&page_info={}>; rel=\"previous\"",
                encode_page_info(&filters, key(first), "prev")
            ));
        }
    }
    if has_next {
        if let Some(last) = page.last() {
            links.push(format!(
                "<{base}?limit={limit}&page_info={}>; rel=\"next\"",
                encode_page_info(&filters, key(last), "next")
            ));
        }
    }
    let mut response = axum::Json(json!({ resource.as_str(): page })).into_response();
    if !links.is_empty() {
        response
            .headers_mut()
            .insert("link", links.join(", ").parse().unwrap());
    }
    response
}
