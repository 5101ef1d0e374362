//! A fake of Stripe's list API (`GET /v1/customers`, `GET /v1/charges`) that behaves like the
//! real one where a source plugin can tell: Bearer (or Basic) secret-key auth with Stripe's 401
//! bodies, `limit` 1-100, `starting_after` / `ending_before` cursors that must name an existing
//! object (else `resource_missing`), `created[gt|gte|lt|lte]` filters, `expand[]=data.customer`
//! on charges, unknown parameters refused, newest-first order, and Stripe's
//! `{"error":{"type","code","param","message"}}` error shape. Knobs answer the next N requests
//! with 429 (optionally with `Retry-After`) or 500.
//!
//! Where each refusal comes from (checked 2026-12-06): `limit` outside 1-100, the cursor
//! parameters and `created` ranges — https://docs.stripe.com/api/customers/list and
//! https://docs.stripe.com/api/pagination; the error shape, `resource_missing` and the 401 for a
//! missing or bad key — https://docs.stripe.com/api/errors; 429 without `X-RateLimit-*` headers —
//! https://docs.stripe.com/rate-limits; `expand[]` — https://docs.stripe.com/expand.

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

/// One request as the fake saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    /// Path and query, as sent.
    pub uri: String,
    /// Decoded query pairs.
    pub query: Vec<(String, String)>,
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

/// What the fake holds; tests change it between reads.
#[derive(Debug, Default)]
pub struct State {
    pub api_key: String,
    pub customers: Vec<Value>,
    pub charges: Vec<Value>,
    pub requests: Vec<Seen>,
    /// Answer the next N valid requests with 429.
    pub throttle: usize,
    /// `Retry-After` sent with those 429s (Stripe sends none by default).
    pub retry_after: Option<String>,
    /// Answer the next N valid requests with 500.
    pub fail_500: usize,
    request_counter: u64,
}

#[derive(Clone)]
pub struct Fake {
    pub addr: SocketAddr,
    pub state: Arc<Mutex<State>>,
}

impl Fake {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
    pub fn host_port(&self) -> String {
        self.addr.to_string()
    }
    pub fn requests(&self) -> Vec<Seen> {
        self.state.lock().unwrap().requests.clone()
    }
    pub fn clear_requests(&self) {
        self.state.lock().unwrap().requests.clear();
    }
    pub fn add_customer(&self, customer: Value) {
        self.state.lock().unwrap().customers.push(customer);
    }
    pub fn add_charge(&self, charge: Value) {
        self.state.lock().unwrap().charges.push(charge);
    }
    pub fn throttle(&self, n: usize, retry_after: Option<&str>) {
        let mut s = self.state.lock().unwrap();
        s.throttle = n;
        s.retry_after = retry_after.map(str::to_string);
    }
}

/// A customer object as Stripe returns it.
pub fn customer(id: &str, email: &str, name: &str, created: i64) -> Value {
    json!({
        "id": id, "object": "customer", "address": null, "balance": 0, "created": created,
        "currency": null, "default_source": null, "delinquent": false, "description": null,
        "discount": null, "email": email, "invoice_prefix": "ABC123", "livemode": false,
        "metadata": {"plan": "pro"}, "name": name, "phone": "+15555550100",
        "preferred_locales": [], "shipping": null, "tax_exempt": "none", "test_clock": null
    })
}

/// A charge object as Stripe returns it (customer not expanded).
pub fn charge(
    id: &str,
    customer: &str,
    amount: i64,
    currency: &str,
    status: &str,
    created: i64,
) -> Value {
    json!({
        "id": id, "object": "charge", "amount": amount, "amount_captured": amount,
        "amount_refunded": 0, "billing_details": {"email": null, "name": null, "phone": null},
        "captured": true, "created": created, "currency": currency, "customer": customer,
        "description": "Order", "failure_code": null, "failure_message": null, "livemode": false,
        "metadata": {}, "paid": status == "succeeded", "payment_intent": format!("pi_{id}"),
        "receipt_email": null, "refunded": false, "status": status
    })
}

pub async fn start(api_key: &str) -> Fake {
    let state = Arc::new(Mutex::new(State {
        api_key: api_key.to_string(),
        ..State::default()
    }));
    let app = Router::new()
        .fallback(any(handle))
        .with_state(state.clone());
    let addr = crate::common::serve(app).await;
    Fake { addr, state }
}

/// Starts the fake on its own runtime thread, for tests that drive the binary synchronously.
pub fn start_in_background(api_key: &str) -> Fake {
    let key = api_key.to_string();
    crate::common::in_background(move || async move { start(&key).await })
}

fn error(status: StatusCode, error: Value, request_id: &str) -> Response {
    (
        status,
        [("request-id", request_id.to_string())],
        axum::Json(json!({ "error": error })),
    )
        .into_response()
}

fn invalid(message: &str, param: Option<&str>, code: Option<&str>) -> Value {
    let mut e = json!({"type": "invalid_request_error", "message": message});
    if let Some(p) = param {
        e["param"] = json!(p);
    }
    if let Some(c) = code {
        e["code"] = json!(c);
        e["doc_url"] = json!(format!(
            "https://stripe.com/docs/error-codes/{}",
            c.replace('_', "-")
        ));
    }
    e
}

/// The key a request authenticates with: `Bearer KEY` or Basic with the key as user name.
fn presented_key(headers: &HeaderMap) -> Option<String> {
    let value = headers.get("authorization")?.to_str().ok()?.trim();
    if let Some(token) = value.strip_prefix("Bearer ") {
        return Some(token.trim().to_string());
    }
    let encoded = value.strip_prefix("Basic ")?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    Some(text.split(':').next().unwrap_or("").to_string())
}

fn masked(key: &str) -> String {
    let prefix: String = key.chars().take(8).collect();
    let suffix: String = key
        .chars()
        .rev()
        .take(4)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    format!(
        "{prefix}{}{suffix}",
        "*".repeat(key.len().saturating_sub(12))
    )
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
    s.request_counter += 1;
    let request_id = format!("req_{:014}", s.request_counter);
    let response = answer(&mut s, &method, &uri, &query, &headers, &request_id);
    let seen = Seen {
        method: method.to_string(),
        uri: uri.to_string(),
        query,
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
    request_id: &str,
) -> Response {
    // 1. Authentication.
    match presented_key(headers) {
        None => {
            return error(
                StatusCode::UNAUTHORIZED,
                invalid("You did not provide an API key. You need to provide your API key in the Authorization header, using Bearer auth (e.g. 'Authorization: Bearer YOUR_SECRET_KEY'). See https://stripe.com/docs/api#authentication for details, or we can help at https://support.stripe.com/.", None, None),
                request_id,
            )
        }
        Some(key) if key != s.api_key => {
            return error(
                StatusCode::UNAUTHORIZED,
                invalid(&format!("Invalid API Key provided: {}", masked(&key)), None, Some("api_key_invalid")),
                request_id,
            )
        }
        Some(_) => {}
    }
    // 2. Method and path.
    let (objects, noun, extra_params, expandable): (&Vec<Value>, &str, &[&str], &[&str]) = match (method.as_str(), uri.path()) {
        ("GET", "/v1/customers") => (&s.customers, "customer", &["email", "test_clock"], &["data.default_source", "data.test_clock"]),
        ("GET", "/v1/charges") => (&s.charges, "charge", &["customer", "payment_intent", "transfer_group"], &["data.customer", "data.invoice"]),
        _ => {
            return error(
                StatusCode::NOT_FOUND,
                invalid(&format!("Unrecognized request URL ({}: {}). Please see https://stripe.com/docs or we can help at https://support.stripe.com/.", method, uri.path()), None, None),
                request_id,
            )
        }
    };
    // 3. Parameters.
    let mut limit = 10i64;
    let mut starting_after = None;
    let mut ending_before = None;
    let mut created: Vec<(&str, i64)> = Vec::new();
    let mut expand = Vec::new();
    let mut filters: Vec<(&str, &str)> = Vec::new();
    for (k, v) in query {
        match k.as_str() {
            "limit" => match v.parse::<i64>() {
                Ok(n) if n < 1 => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        invalid(
                            "This value must be greater than or equal to 1.",
                            Some("limit"),
                            None,
                        ),
                        request_id,
                    )
                }
                Ok(n) if n > 100 => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        invalid(
                            "This value must be less than or equal to 100.",
                            Some("limit"),
                            None,
                        ),
                        request_id,
                    )
                }
                Ok(n) => limit = n,
                Err(_) => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        invalid(&format!("Invalid integer: {v}"), Some("limit"), None),
                        request_id,
                    )
                }
            },
            "starting_after" => starting_after = Some(v.as_str()),
            "ending_before" => ending_before = Some(v.as_str()),
            "created" | "created[gt]" | "created[gte]" | "created[lt]" | "created[lte]" => {
                match v.parse::<i64>() {
                    Ok(n) => created.push((k.as_str(), n)),
                    Err(_) => {
                        return error(
                            StatusCode::BAD_REQUEST,
                            invalid(&format!("Invalid integer: {v}"), Some(k), None),
                            request_id,
                        )
                    }
                }
            }
            "expand[]" => {
                if !expandable.contains(&v.as_str()) {
                    return error(
                        StatusCode::BAD_REQUEST,
                        invalid(
                            &format!("This property cannot be expanded ({v})."),
                            Some("expand"),
                            None,
                        ),
                        request_id,
                    );
                }
                expand.push(v.as_str());
            }
            other if extra_params.contains(&other) => filters.push((other, v.as_str())),
            other => {
                return error(
                    StatusCode::BAD_REQUEST,
                    invalid(
                        &format!("Received unknown parameter: {other}"),
                        Some(other),
                        Some("parameter_unknown"),
                    ),
                    request_id,
                )
            }
        }
    }
    if starting_after.is_some() && ending_before.is_some() {
        return error(
            StatusCode::BAD_REQUEST,
            invalid(
                "You may only specify one of these parameters: ending_before, starting_after.",
                Some("ending_before"),
                None,
            ),
            request_id,
        );
    }
    // Newest first; ties by id, descending.
    let mut sorted: Vec<&Value> = objects.iter().collect();
    sorted.sort_by(|a, b| {
        let key = |v: &Value| {
            (
                v["created"].as_i64().unwrap_or(0),
                v["id"].as_str().unwrap_or("").to_string(),
            )
        };
        key(b).cmp(&key(a))
    });
    let position = |cursor: &str, param: &str| -> Result<usize, Response> {
        sorted
            .iter()
            .position(|o| o["id"] == cursor)
            .ok_or_else(|| {
                error(
                    StatusCode::BAD_REQUEST,
                    invalid(
                        &format!("No such {noun}: '{cursor}'"),
                        Some(param),
                        Some("resource_missing"),
                    ),
                    request_id,
                )
            })
    };
    let keep = |o: &Value| {
        let c = o["created"].as_i64().unwrap_or(0);
        created.iter().all(|(op, n)| match *op {
            "created" => c == *n,
            "created[gt]" => c > *n,
            "created[gte]" => c >= *n,
            "created[lt]" => c < *n,
            _ => c <= *n,
        }) && filters.iter().all(|(k, v)| o[*k].as_str() == Some(*v))
    };
    let (page, has_more): (Vec<&Value>, bool) = if let Some(id) = ending_before {
        let end = match position(id, "ending_before") {
            Ok(p) => p,
            Err(r) => return r,
        };
        let before: Vec<&Value> = sorted[..end].iter().copied().filter(|o| keep(o)).collect();
        let start = before.len().saturating_sub(limit as usize);
        (before[start..].to_vec(), start > 0)
    } else {
        let start = match starting_after {
            Some(id) => match position(id, "starting_after") {
                Ok(p) => p + 1,
                Err(r) => return r,
            },
            None => 0,
        };
        let rest: Vec<&Value> = sorted[start..]
            .iter()
            .copied()
            .filter(|o| keep(o))
            .collect();
        let n = rest.len().min(limit as usize);
        (rest[..n].to_vec(), rest.len() > n)
    };
    let mut data: Vec<Value> = page.into_iter().cloned().collect();
    if expand.contains(&"data.customer") {
        for object in &mut data {
            if let Some(id) = object["customer"].as_str().map(str::to_string) {
                object["customer"] = s
                    .customers
                    .iter()
                    .find(|c| c["id"] == id.as_str())
                    .cloned()
                    .unwrap_or(Value::Null);
            }
        }
    }
    // 4. Rate limiting and faults, after validation.
    if s.throttle > 0 {
        s.throttle -= 1;
        let mut response = error(
            StatusCode::TOO_MANY_REQUESTS,
            json!({"type": "invalid_request_error", "code": "rate_limit",
                   "message": "Request rate limit exceeded. Learn more about rate limits here https://stripe.com/docs/rate-limits."}),
            request_id,
        );
        if let Some(after) = &s.retry_after {
            response
                .headers_mut()
                .insert("retry-after", after.parse().unwrap());
        }
        return response;
    }
    if s.fail_500 > 0 {
        s.fail_500 -= 1;
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            json!({"type": "api_error", "message": "An unknown error occurred"}),
            request_id,
        );
    }
    (
        [("request-id", request_id.to_string())],
        axum::Json(
            json!({"object": "list", "url": uri.path(), "has_more": has_more, "data": data}),
        ),
    )
        .into_response()
}
